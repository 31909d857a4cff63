//! Our own llama-family forward pass for the CPU, on the quantized kernels of [`super::quant`].
//!
//! It serves several sequences at once: each has a slot with its own KV cache, and one
//! [`CausalLm::step`] runs any mix of prompt chunks and single decode tokens from different
//! slots as one batch, so every weight row is read once per step whatever the number of
//! sequences (continuous batching). Numerics follow llama.cpp's CPU path: activations quantized
//! to Q8_1 (Q8_0 against Q8_0 weights) before each matmul, K and V kept at f16 precision, the
//! query and the attention weights rounded to f16 before their products with K and V.

mod load;
mod ops;

#[cfg(test)]
mod tests;

use rayon::prelude::*;

use super::quant::{round_f16, BlockQ8, Kernel, QMatrix};
use super::{check_chunks, CausalLm, Chunk, ModelError};
use ops::{apply_rope, attend, quantize_rows, rms_norm, rope_table, Head};

#[derive(Debug, Clone)]
struct Config {
    layers: usize,
    dim: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    eps: f32,
    rope_base: f32,
    context: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v stacked: `dim + 2 * kv_dim` rows.
    wqkv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// gate and up stacked: `2 * ffn` rows.
    w13: QMatrix,
    w2: QMatrix,
}

/// Positions per block of the K cache.
const KB: usize = 8;

/// One sequence's KV cache, stored as IEEE half floats (the bits of `half::f16`, as llama.cpp's
/// default f16 cache keeps them: 2 bytes per value). Per layer, V holds `len` rows of `kv_dim`
/// values; K is kept in blocks of [`KB`] positions, laid out `[block][kv_dim][KB]`, so the
/// scores of eight positions are computed side by side (one F16C conversion per head dimension),
/// each summed over the head in order like a plain dot product.
#[derive(Default)]
struct Slot {
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    len: usize,
}

/// Positions the KV cache of a sequence grows by at least (then by a quarter of what it holds):
/// a sequence's cache is not left with up to twice the room it uses, as `Vec`'s doubling would.
const KV_STEP: usize = 128;

/// Make room for `len` values in `c`, growing by `step` values or a quarter, whichever is more.
fn reserve_kv(c: &mut Vec<u16>, len: usize, step: usize) {
    if len > c.capacity() {
        let target = len
            .max(c.capacity() + step)
            .max(c.capacity() + c.capacity() / 4);
        c.reserve_exact(target - c.len());
    }
}

/// A value as stored in the KV cache.
#[inline]
fn to_f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

#[inline]
fn from_f16_bits(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// Buffers reused across steps.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    acts: Vec<BlockQ8>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gu: Vec<f32>,
    h: Vec<f32>,
    transpose: Vec<f32>,
}

pub struct CpuLlama {
    cfg: Config,
    kernel: Kernel,
    embed: QMatrix,
    output: Option<QMatrix>,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
    slots: Vec<Slot>,
    pool: rayon::ThreadPool,
    scratch: Scratch,
}

impl CpuLlama {
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn vocab_size(&self) -> usize {
        self.output.as_ref().unwrap_or(&self.embed).rows
    }

    fn check(&self, chunks: &[Chunk<'_>]) -> Result<(), ModelError> {
        let lens: Vec<usize> = self.slots.iter().map(|s| s.len).collect();
        check_chunks(chunks, &lens, self.cfg.context, self.embed.rows)
    }

    fn run(&mut self, chunks: &[Chunk<'_>]) -> Vec<Vec<f32>> {
        let cfg = self.cfg.clone();
        let dim = cfg.dim;
        // Each token's slot and position.
        let mut where_: Vec<(usize, usize)> = Vec::new();
        for c in chunks {
            self.slots[c.slot].len = c.start; // a restart drops what was cached after `start`
            where_.extend((0..c.tokens.len()).map(|i| (c.slot, c.start + i)));
        }
        let n = where_.len();
        let rope = rope_table(&where_, cfg.head_dim, cfg.rope_base);
        let s = &mut self.scratch;
        s.x.resize(n * dim, 0.0);
        let mut t = 0;
        for c in chunks {
            for &tok in c.tokens {
                self.embed
                    .dequantize_row(tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
                t += 1;
            }
        }
        let slots = &mut self.slots;
        let layers = &self.layers;
        let step = Step {
            cfg: &cfg,
            kernel: self.kernel,
            where_: &where_,
            rope: &rope,
        };
        self.pool.install(|| {
            for (l, layer) in layers.iter().enumerate() {
                step.attention(l, layer, s, slots);
                step.feed_forward(layer, s);
            }
        });
        for c in chunks {
            slots[c.slot].len = c.start + c.tokens.len();
        }
        self.logits(chunks)
    }

    /// Logits for the last token of each chunk that asks for them, from the last layer's
    /// output in the scratch buffers.
    fn logits(&mut self, chunks: &[Chunk<'_>]) -> Vec<Vec<f32>> {
        let (cfg, kernel) = (&self.cfg, self.kernel);
        let dim = cfg.dim;
        let s = &mut self.scratch;
        let mut last = Vec::new();
        let mut t = 0;
        for c in chunks {
            t += c.tokens.len();
            if c.logits {
                last.extend_from_slice(&s.x[(t - 1) * dim..t * dim]);
            }
        }
        let m = last.len() / dim;
        if m == 0 {
            return Vec::new();
        }
        rms_norm(&last, &self.out_norm, cfg.eps, &mut s.xn);
        quantize_rows(&s.xn, dim, &mut s.acts);
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0.0; m * head.rows];
        let acts = &s.acts;
        let transpose = &mut s.transpose;
        self.pool
            .install(|| head.matmul(kernel, acts, m, &mut logits, transpose));
        logits
            .chunks_exact(head.rows)
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// What every layer of one step reads: the model's shape, the kernel, and each token's slot,
/// position and rope table.
struct Step<'a> {
    cfg: &'a Config,
    kernel: Kernel,
    where_: &'a [(usize, usize)],
    rope: &'a [Vec<(f32, f32)>],
}

impl Step<'_> {
    /// Layer `l`'s attention block: q, k and v of every token (k and v into its slot's cache),
    /// attention per token and head, the output projection added to the residual `s.x`.
    fn attention(&self, l: usize, layer: &Layer, s: &mut Scratch, slots: &mut [Slot]) {
        let (cfg, kernel, where_) = (self.cfg, self.kernel, self.where_);
        let (dim, hd) = (cfg.dim, cfg.head_dim);
        let kv_dim = cfg.kv_heads * hd;
        let qkv_dim = dim + 2 * kv_dim;
        let group = cfg.heads / cfg.kv_heads;
        let n = where_.len();
        rms_norm(&s.x, &layer.attn_norm, cfg.eps, &mut s.xn);
        quantize_rows(&s.xn, dim, &mut s.acts);
        s.qkv.resize(n * qkv_dim, 0.0);
        layer
            .wqkv
            .matmul(kernel, &s.acts, n, &mut s.qkv, &mut s.transpose);
        for (t, row) in s.qkv.chunks_exact_mut(qkv_dim).enumerate() {
            let (q, kv) = row.split_at_mut(dim);
            apply_rope(q, hd, &self.rope[t]);
            apply_rope(&mut kv[..kv_dim], hd, &self.rope[t]);
            let (slot, pos) = where_[t];
            let sl = &mut slots[slot];
            let (kc, vc) = (&mut sl.k[l], &mut sl.v[l]);
            let (block, lane) = (pos / KB, pos % KB);
            reserve_kv(kc, (block + 1) * kv_dim * KB, KV_STEP * kv_dim);
            kc.resize((block + 1) * kv_dim * KB, 0);
            let kb = &mut kc[block * kv_dim * KB..];
            for (c, &v) in kv[..kv_dim].iter().enumerate() {
                kb[c * KB + lane] = to_f16_bits(v);
            }
            vc.truncate(pos * kv_dim);
            reserve_kv(vc, (pos + 1) * kv_dim, KV_STEP * kv_dim);
            vc.extend(kv[kv_dim..].iter().map(|&v| to_f16_bits(v)));
            for v in q.iter_mut() {
                *v = round_f16(*v);
            }
        }
        s.att.resize(n * dim, 0.0);
        let qkv = &s.qkv;
        let slots_ro: &[Slot] = slots;
        let scale = 1.0 / (hd as f32).sqrt();
        s.att
            .par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, (i, out)| {
                let (t, h) = (i / cfg.heads, i % cfg.heads);
                let (slot, pos) = where_[t];
                let q = &qkv[t * qkv_dim + h * hd..t * qkv_dim + (h + 1) * hd];
                let off = (h / group) * hd;
                let sl = &slots_ro[slot];
                let head = Head {
                    q,
                    k: &sl.k[l],
                    v: &sl.v[l],
                    kv_dim,
                    off,
                    len: pos + 1,
                    scale,
                };
                attend(kernel, &head, scores, out);
            });
        quantize_rows(&s.att, dim, &mut s.acts);
        s.proj.resize(n * dim, 0.0);
        layer
            .wo
            .matmul(kernel, &s.acts, n, &mut s.proj, &mut s.transpose);
        for (x, p) in s.x.iter_mut().zip(&s.proj) {
            *x += p;
        }
    }

    /// A layer's feed-forward block (SwiGLU), added to the residual `s.x`.
    fn feed_forward(&self, layer: &Layer, s: &mut Scratch) {
        let (cfg, kernel) = (self.cfg, self.kernel);
        let (dim, n) = (cfg.dim, self.where_.len());
        rms_norm(&s.x, &layer.ffn_norm, cfg.eps, &mut s.xn);
        quantize_rows(&s.xn, dim, &mut s.acts);
        s.gu.resize(n * 2 * cfg.ffn, 0.0);
        layer
            .w13
            .matmul(kernel, &s.acts, n, &mut s.gu, &mut s.transpose);
        s.h.resize(n * cfg.ffn, 0.0);
        for (h, gu) in
            s.h.chunks_exact_mut(cfg.ffn)
                .zip(s.gu.chunks_exact(2 * cfg.ffn))
        {
            let (g, u) = gu.split_at(cfg.ffn);
            for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                *h = g / (1.0 + (-g).exp()) * u;
            }
        }
        quantize_rows(&s.h, cfg.ffn, &mut s.acts);
        layer
            .w2
            .matmul(kernel, &s.acts, n, &mut s.proj, &mut s.transpose);
        for (x, p) in s.x.iter_mut().zip(&s.proj) {
            *x += p;
        }
    }
}

impl CausalLm for CpuLlama {
    fn step(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check(chunks)?;
        Ok(self.run(chunks))
    }

    fn context_length(&self) -> usize {
        self.cfg.context
    }

    fn max_sequences(&self) -> usize {
        self.slots.len()
    }

    fn release(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.len = 0;
            for c in s.k.iter_mut().chain(s.v.iter_mut()) {
                c.clear();
                c.shrink_to(4096);
            }
        }
    }
}
