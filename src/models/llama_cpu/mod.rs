//! Our own forward pass for the decoder-only GGUF architectures people download (`llama` —
//! Llama 2/3, Mistral, SmolLM —, `qwen2`, `qwen3`, `gemma3`, `phi3`) on the CPU, on the
//! quantized kernels of [`super::quant`].
//!
//! It serves several sequences at once: each has a slot with its own KV cache, and one
//! [`CausalLm::step`] runs any mix of prompt chunks and single decode tokens from different
//! slots as one batch, so every weight row is read once per step whatever the number of
//! sequences (continuous batching). Numerics follow llama.cpp's CPU path: activations quantized
//! to the weight type's partner format before each matmul, K and V kept at f16 precision, the
//! query and the attention weights rounded to f16 before their products with K and V, GELU read
//! from a table of f16 values as ggml does.
//!
//! The architectures differ only in pieces a layer switches on: biases on q/k/v (qwen2),
//! RMS norms of q and k per head (qwen3, gemma3), norms after attention and after the
//! feed-forward block (gemma3), GELU instead of SiLU (gemma3), a scaled embedding (gemma3),
//! sliding-window layers with their own rope base (gemma3), rope on adjacent pairs (llama) or
//! on the two halves of a head (the others), per-pair rope frequency factors (Llama 3's
//! `rope_freqs`), and fused q/k/v or gate/up tensors in the file (phi3).

mod load;
pub use load::{arch_of, ggml_type, supported_types};
mod ops;

#[cfg(test)]
mod tests;

use rayon::prelude::*;

use super::quant::{round_f16, Acts, Kernel, QMatrix, QuantError};
use super::{check_chunks, CausalLm, Chunk, ModelError};
use ops::{apply_rope, attend, gelu, gelu_table, rms_norm, rms_norm_in_place, rope_table, Head};

/// The architectures [`CpuLlama`] runs, by their `general.architecture` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

impl Arch {
    pub const NAMES: &'static [&'static str] =
        &["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"];

    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            _ => return None,
        })
    }
}

/// How positions turn into rotations.
#[derive(Debug, Clone)]
struct Rope {
    /// Rotate the two halves of a head (GPT-NeoX style) rather than adjacent pairs.
    neox: bool,
    base: f32,
    /// The base of sliding-window layers.
    base_swa: f32,
    /// Linear position scaling (1 = none).
    scale: f32,
    /// Per-pair frequency divisors (`rope_freqs.weight`, Llama 3.1's long-context scaling).
    factors: Option<Vec<f32>>,
}

/// The feed-forward block's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Silu,
    Gelu,
}

#[derive(Debug, Clone)]
struct Config {
    arch: Arch,
    layers: usize,
    dim: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    eps: f32,
    rope: Rope,
    context: usize,
    /// Multiply the token embeddings by this (gemma3: √dim).
    embed_scale: Option<f32>,
    /// Multiply the query by this before attention (gemma3, phi3); scores then unscaled.
    q_scale: Option<f32>,
    /// Scale of the attention scores.
    kq_scale: f32,
    /// Keys a sliding-window layer sees: the last `window` positions.
    window: Option<usize>,
    act: Act,
    /// Final logit soft-capping (`c * tanh(x / c)`).
    softcap: Option<f32>,
}

impl Config {
    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Matrices that read the same input, their outputs side by side (q, k and v; gate and up).
/// Stacked into one matrix when the file stores them in one type, else run one after another.
struct Proj {
    parts: Vec<QMatrix>,
    rows: usize,
}

impl Proj {
    fn new(parts: Vec<QMatrix>) -> Result<Proj, QuantError> {
        let rows = parts.iter().map(|m| m.rows).sum();
        let same = parts
            .windows(2)
            .all(|w| w[0].ggml_type() == w[1].ggml_type());
        let parts = if same && parts.len() > 1 {
            vec![QMatrix::concat(parts)?]
        } else {
            parts
        };
        Ok(Proj { parts, rows })
    }

    fn cols(&self) -> usize {
        self.parts.first().map_or(0, |m| m.cols)
    }

    /// `out[t * rows + r]` for every input row in `acts`.
    fn matmul(
        &self,
        kernel: Kernel,
        acts: &mut Acts,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        tmp: &mut Vec<f32>,
    ) {
        if let [m] = self.parts.as_slice() {
            m.matmul_acts(kernel, acts, out, scratch);
            return;
        }
        let n = acts.rows();
        let mut off = 0;
        for m in &self.parts {
            tmp.clear();
            tmp.resize(n * m.rows, 0.0);
            m.matmul_acts(kernel, acts, tmp, scratch);
            for (o, part) in out
                .chunks_exact_mut(self.rows)
                .zip(tmp.chunks_exact(m.rows))
            {
                o[off..off + m.rows].copy_from_slice(part);
            }
            off += m.rows;
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v: `q_dim + 2 * kv_dim` rows.
    qkv: Proj,
    /// Biases of q, k and v, side by side (qwen2).
    qkv_bias: Option<Vec<f32>>,
    /// RMS-norm weights applied to each head of q and of k (qwen3, gemma3).
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: QMatrix,
    /// Norm of the attention output before the residual (gemma3).
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// gate and up: `2 * ffn` rows.
    gate_up: Proj,
    down: QMatrix,
    /// Norm of the feed-forward output before the residual (gemma3).
    post_ffn_norm: Option<Vec<f32>>,
    /// A sliding-window layer.
    swa: bool,
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
    acts: Acts,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gu: Vec<f32>,
    h: Vec<f32>,
    transpose: Vec<f32>,
    part: Vec<f32>,
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

    pub fn arch(&self) -> Arch {
        self.cfg.arch
    }

    pub fn vocab_size(&self) -> usize {
        self.output.as_ref().unwrap_or(&self.embed).rows
    }

    fn check(&self, chunks: &[Chunk<'_>]) -> Result<(), ModelError> {
        let lens: Vec<usize> = self.slots.iter().map(|s| s.len).collect();
        check_chunks(chunks, &lens, self.cfg.context, self.embed.rows)
    }

    fn run(&mut self, chunks: &[Chunk<'_>]) -> Vec<Vec<f32>> {
        let cfg = &self.cfg;
        let dim = cfg.dim;
        // Each token's slot and position.
        let mut where_: Vec<(usize, usize)> = Vec::new();
        for c in chunks {
            self.slots[c.slot].len = c.start; // a restart drops what was cached after `start`
            where_.extend((0..c.tokens.len()).map(|i| (c.slot, c.start + i)));
        }
        let n = where_.len();
        let rope = rope_table(&where_, cfg.head_dim, cfg.rope.base, &cfg.rope);
        let rope_swa = if cfg.window.is_some() && cfg.rope.base_swa != cfg.rope.base {
            Some(rope_table(
                &where_,
                cfg.head_dim,
                cfg.rope.base_swa,
                &cfg.rope,
            ))
        } else {
            None
        };
        let s = &mut self.scratch;
        s.x.resize(n * dim, 0.0);
        let mut t = 0;
        for c in chunks {
            for &tok in c.tokens {
                let row = &mut s.x[t * dim..(t + 1) * dim];
                self.embed.dequantize_row(tok as usize, row);
                if let Some(k) = cfg.embed_scale {
                    row.iter_mut().for_each(|v| *v *= k);
                }
                t += 1;
            }
        }
        let slots = &mut self.slots;
        let layers = &self.layers;
        let kernel = self.kernel;
        self.pool.install(|| {
            for (l, layer) in layers.iter().enumerate() {
                let step = Step {
                    cfg,
                    kernel,
                    where_: &where_,
                    rope: match (&rope_swa, layer.swa) {
                        (Some(r), true) => r,
                        _ => &rope,
                    },
                };
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
        s.acts.load(&s.xn, dim);
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0.0; m * head.rows];
        let (acts, transpose) = (&mut s.acts, &mut s.transpose);
        self.pool
            .install(|| head.matmul_acts(kernel, acts, &mut logits, transpose));
        if let Some(c) = cfg.softcap {
            logits.iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
        }
        logits
            .chunks_exact(head.rows)
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// What every layer of one step reads: the model's shape, the kernel, and each token's slot,
/// position and rope table (the layer's own: sliding-window layers may have another base).
struct Step<'a> {
    cfg: &'a Config,
    kernel: Kernel,
    where_: &'a [(usize, usize)],
    rope: &'a [Vec<(f32, f32)>],
}

/// Add `y` to the residual `x`, through the norm `post` first where the layer has one.
fn add_residual(x: &mut [f32], y: &[f32], post: Option<&Vec<f32>>, eps: f32, tmp: &mut Vec<f32>) {
    let y = match post {
        Some(w) => {
            rms_norm(y, w, eps, tmp);
            &tmp[..]
        }
        None => y,
    };
    for (x, p) in x.iter_mut().zip(y) {
        *x += p;
    }
}

impl Step<'_> {
    /// Layer `l`'s attention block: q, k and v of every token (k and v into its slot's cache),
    /// attention per token and head, the output projection added to the residual `s.x`.
    fn attention(&self, l: usize, layer: &Layer, s: &mut Scratch, slots: &mut [Slot]) {
        let (cfg, kernel, where_) = (self.cfg, self.kernel, self.where_);
        let (dim, hd) = (cfg.dim, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_dim = q_dim + 2 * kv_dim;
        let group = cfg.heads / cfg.kv_heads;
        let n = where_.len();
        rms_norm(&s.x, &layer.attn_norm, cfg.eps, &mut s.xn);
        s.acts.load(&s.xn, dim);
        s.qkv.resize(n * qkv_dim, 0.0);
        layer.qkv.matmul(
            kernel,
            &mut s.acts,
            &mut s.qkv,
            &mut s.transpose,
            &mut s.part,
        );
        for (t, row) in s.qkv.chunks_exact_mut(qkv_dim).enumerate() {
            if let Some(b) = &layer.qkv_bias {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            let (q, kv) = row.split_at_mut(q_dim);
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(q, w, cfg.eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(&mut kv[..kv_dim], w, cfg.eps);
            }
            apply_rope(q, hd, &self.rope[t], cfg.rope.neox);
            apply_rope(&mut kv[..kv_dim], hd, &self.rope[t], cfg.rope.neox);
            if let Some(k) = cfg.q_scale {
                q.iter_mut().for_each(|v| *v *= k);
            }
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
        s.att.resize(n * q_dim, 0.0);
        let qkv = &s.qkv;
        let slots_ro: &[Slot] = slots;
        let window = if layer.swa { cfg.window } else { None };
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
                    start: window.map_or(0, |w| (pos + 1).saturating_sub(w)),
                    len: pos + 1,
                    scale: cfg.kq_scale,
                };
                attend(kernel, &head, scores, out);
            });
        s.acts.load(&s.att, q_dim);
        s.proj.resize(n * dim, 0.0);
        layer
            .wo
            .matmul_acts(kernel, &mut s.acts, &mut s.proj, &mut s.transpose);
        let post = layer.post_attn_norm.as_ref();
        add_residual(&mut s.x, &s.proj, post, cfg.eps, &mut s.xn);
    }

    /// A layer's feed-forward block (SwiGLU or GeGLU), added to the residual `s.x`.
    fn feed_forward(&self, layer: &Layer, s: &mut Scratch) {
        let (cfg, kernel) = (self.cfg, self.kernel);
        let (dim, n, ffn) = (cfg.dim, self.where_.len(), cfg.ffn);
        rms_norm(&s.x, &layer.ffn_norm, cfg.eps, &mut s.xn);
        s.acts.load(&s.xn, dim);
        s.gu.resize(n * 2 * ffn, 0.0);
        layer.gate_up.matmul(
            kernel,
            &mut s.acts,
            &mut s.gu,
            &mut s.transpose,
            &mut s.part,
        );
        s.h.resize(n * ffn, 0.0);
        for (h, gu) in s.h.chunks_exact_mut(ffn).zip(s.gu.chunks_exact(2 * ffn)) {
            let (g, u) = gu.split_at(ffn);
            match cfg.act {
                Act::Silu => {
                    for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                        *h = g / (1.0 + (-g).exp()) * u;
                    }
                }
                Act::Gelu => {
                    let table = gelu_table();
                    for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                        *h = gelu(table, g) * u;
                    }
                }
            }
        }
        s.acts.load(&s.h, ffn);
        layer
            .down
            .matmul_acts(kernel, &mut s.acts, &mut s.proj, &mut s.transpose);
        let post = layer.post_ffn_norm.as_ref();
        add_residual(&mut s.x, &s.proj, post, cfg.eps, &mut s.xn);
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
