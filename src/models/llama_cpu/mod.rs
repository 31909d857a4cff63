//! Our own llama-family forward pass for the CPU, on the quantized kernels of [`super::quant`].
//!
//! It serves several sequences at once: each has a slot with its own KV cache, and one
//! [`CausalLm::step`] runs any mix of prompt chunks and single decode tokens from different
//! slots as one batch, so every weight row is read once per step whatever the number of
//! sequences (continuous batching). Numerics follow llama.cpp's CPU path: activations quantized
//! to Q8_1 (Q8_0 against Q8_0 weights) before each matmul, K and V kept at f16 precision, the
//! query and the attention weights rounded to f16 before their products with K and V.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::quant::{quantize_row, round_f16, BlockQ8, Kernel, QMatrix, QK};
use super::{check_chunks, CausalLm, Chunk, ModelError};

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

fn load_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {e}", path.display()))
}

/// A tensor's raw bytes and its `(rows, cols)` (GGUF lists dimensions innermost first).
fn raw_tensor<R: Read + Seek>(
    content: &Content,
    file: &mut R,
    name: &str,
) -> Result<(GgmlDType, usize, usize, Vec<u8>), String> {
    let info = content
        .tensor_infos
        .get(name)
        .ok_or_else(|| format!("tensor {name} is missing"))?;
    let dims = info.shape.dims();
    let cols = *dims.last().ok_or_else(|| format!("{name} has no shape"))?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let bytes = match info.ggml_dtype {
        GgmlDType::F32 => rows * cols * 4,
        GgmlDType::Q4_1 => rows * cols / QK * 20,
        GgmlDType::Q8_0 => rows * cols / QK * 34,
        other => return Err(format!("{name}: type {other:?} is not supported here")),
    };
    let mut buf = vec![0u8; bytes];
    file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| format!("{name}: {e}"))?;
    Ok((info.ggml_dtype, rows, cols, buf))
}

fn read_matrix<R: Read + Seek>(
    path: &Path,
    content: &Content,
    file: &mut R,
    name: &str,
) -> Result<QMatrix, ModelError> {
    let (ty, rows, cols, bytes) = raw_tensor(content, file, name).map_err(|e| load_err(path, e))?;
    let id = match ty {
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 8,
        other => return Err(load_err(path, format!("{name}: {other:?} matrix"))),
    };
    QMatrix::from_bytes(id, rows, cols, &bytes).map_err(|e| load_err(path, e))
}

fn read_vector<R: Read + Seek>(
    path: &Path,
    content: &Content,
    file: &mut R,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, ModelError> {
    let (ty, rows, cols, bytes) = raw_tensor(content, file, name).map_err(|e| load_err(path, e))?;
    if ty != GgmlDType::F32 || rows * cols != len {
        return Err(load_err(path, format!("{name}: expected {len} f32 values")));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl CpuLlama {
    /// Whether this loader handles the GGUF (llama architecture with Q4_1 / Q8_0 matrices).
    pub fn supports(content: &Content) -> bool {
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned());
        arch.as_deref() == Some("llama")
            && content.tensor_infos.iter().all(|(_, t)| {
                matches!(
                    t.ggml_dtype,
                    GgmlDType::F32 | GgmlDType::Q4_1 | GgmlDType::Q8_0
                )
            })
    }

    /// Load the weights of a GGUF already opened as `content`. `slots` is how many sequences
    /// may run at once; `threads` the size of the compute pool.
    pub fn load<R: Read + Seek>(
        path: &Path,
        content: &Content,
        file: &mut R,
        slots: usize,
        threads: usize,
    ) -> Result<CpuLlama, ModelError> {
        let md = |k: &str| content.metadata.get(&format!("llama.{k}"));
        let num = |k: &str| -> Result<usize, ModelError> {
            md(k)
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
                .ok_or_else(|| load_err(path, format!("metadata llama.{k} is missing")))
        };
        let float = |k: &str, default: f32| md(k).and_then(|v| v.to_f32().ok()).unwrap_or(default);
        let dim = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let kv_heads = md("attention.head_count_kv")
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 {
            return Err(load_err(path, "inconsistent head counts"));
        }
        let cfg = Config {
            layers: num("block_count")?,
            dim,
            heads,
            kv_heads,
            head_dim: dim / heads,
            ffn: num("feed_forward_length")?,
            eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: float("rope.freq_base", 10_000.0),
            context: md("context_length")
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
                .unwrap_or(2048),
        };
        if !cfg.head_dim.is_multiple_of(2) {
            return Err(load_err(path, "odd head size"));
        }
        let embed = read_matrix(path, content, file, "token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(read_matrix(path, content, file, "output.weight")?)
        } else {
            None
        };
        let out_norm = read_vector(path, content, file, "output_norm.weight", dim)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("blk.{l}.");
            let attn_norm = read_vector(path, content, file, &format!("{p}attn_norm.weight"), dim)?;
            let ffn_norm = read_vector(path, content, file, &format!("{p}ffn_norm.weight"), dim)?;
            let mut m = |n: &str| read_matrix(path, content, file, &format!("{p}{n}.weight"));
            let wqkv = QMatrix::concat(vec![m("attn_q")?, m("attn_k")?, m("attn_v")?])
                .map_err(|e| load_err(path, e))?;
            let wo = m("attn_output")?;
            let w13 = QMatrix::concat(vec![m("ffn_gate")?, m("ffn_up")?])
                .map_err(|e| load_err(path, e))?;
            let w2 = m("ffn_down")?;
            let kv_dim = cfg.kv_heads * cfg.head_dim;
            let shapes_ok = wqkv.rows == dim + 2 * kv_dim
                && wqkv.cols == dim
                && wo.rows == dim
                && wo.cols == dim
                && w13.rows == 2 * cfg.ffn
                && w13.cols == dim
                && w2.rows == dim
                && w2.cols == cfg.ffn;
            if !shapes_ok {
                return Err(load_err(path, format!("layer {l}: unexpected shapes")));
            }
            layers.push(Layer {
                attn_norm,
                wqkv,
                wo,
                ffn_norm,
                w13,
                w2,
            });
        }
        if embed.cols != dim || output.as_ref().is_some_and(|o| o.cols != dim) {
            return Err(load_err(path, "embedding width differs from the model's"));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("anya-llama-{i}"))
            .build()
            .map_err(|e| load_err(path, e))?;
        let slots = (0..slots.max(1))
            .map(|_| Slot {
                k: vec![Vec::new(); cfg.layers],
                v: vec![Vec::new(); cfg.layers],
                len: 0,
            })
            .collect();
        Ok(CpuLlama {
            cfg,
            kernel: Kernel::detect(),
            embed,
            output,
            out_norm,
            layers,
            slots,
            pool,
            scratch: Scratch::default(),
        })
    }

    /// Open `path` and load it (see [`CpuLlama::load`]).
    pub fn open(path: &Path, slots: usize, threads: usize) -> Result<CpuLlama, ModelError> {
        let mut file = std::fs::File::open(path).map_err(|e| load_err(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| load_err(path, e))?;
        Self::load(path, &content, &mut file, slots, threads)
    }

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
        let (dim, hd) = (cfg.dim, cfg.head_dim);
        let kv_dim = cfg.kv_heads * hd;
        let qkv_dim = dim + 2 * kv_dim;
        let group = cfg.heads / cfg.kv_heads;
        let kernel = self.kernel;
        // Each token's slot and position.
        let mut where_: Vec<(usize, usize)> = Vec::new();
        for c in chunks {
            self.slots[c.slot].len = c.start; // a restart drops what was cached after `start`
            where_.extend((0..c.tokens.len()).map(|i| (c.slot, c.start + i)));
        }
        let n = where_.len();
        let rope = rope_table(&where_, hd, cfg.rope_base);
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
        self.pool.install(|| {
            for (l, layer) in layers.iter().enumerate() {
                // Attention block.
                rms_norm(&s.x, &layer.attn_norm, cfg.eps, &mut s.xn);
                quantize_rows(&s.xn, dim, &mut s.acts);
                s.qkv.resize(n * qkv_dim, 0.0);
                layer
                    .wqkv
                    .matmul(kernel, &s.acts, n, &mut s.qkv, &mut s.transpose);
                for (t, row) in s.qkv.chunks_exact_mut(qkv_dim).enumerate() {
                    let (q, kv) = row.split_at_mut(dim);
                    apply_rope(q, hd, &rope[t]);
                    apply_rope(&mut kv[..kv_dim], hd, &rope[t]);
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
                let where_ro = &where_;
                let scale = 1.0 / (hd as f32).sqrt();
                s.att
                    .par_chunks_mut(hd)
                    .enumerate()
                    .for_each_init(Vec::new, |scores, (i, out)| {
                        let (t, h) = (i / cfg.heads, i % cfg.heads);
                        let (slot, pos) = where_ro[t];
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
                // Feed-forward block.
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
        });
        for c in chunks {
            slots[c.slot].len = c.start + c.tokens.len();
        }
        // Logits for the last token of each chunk that asks for them.
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

/// `(cos, sin)` per rotated pair, per token (llama's "normal" rope: adjacent pairs), computed
/// the way ggml does: the angle of pair `i` is `pos * base^(-2i/d)` by repeated products.
fn rope_table(where_: &[(usize, usize)], hd: usize, base: f32) -> Vec<Vec<(f32, f32)>> {
    let scale = base.powf(-2.0 / hd as f32);
    where_
        .iter()
        .map(|&(_, pos)| {
            let mut theta = pos as f32;
            (0..hd / 2)
                .map(|_| {
                    let cs = (theta.cos(), theta.sin());
                    theta *= scale;
                    cs
                })
                .collect()
        })
        .collect()
}

fn apply_rope(x: &mut [f32], hd: usize, table: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(hd) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(table) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let dim = w.len();
    out.resize(x.len(), 0.0);
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

fn quantize_rows(x: &[f32], width: usize, out: &mut Vec<BlockQ8>) {
    out.resize(x.len() / QK, BlockQ8::default());
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width / QK)) {
        quantize_row(xr, or);
    }
}

/// One head of one query over `len` cached positions of a slot's K and V (columns
/// `off..off + head size` of each row).
struct Head<'a> {
    q: &'a [f32],
    k: &'a [u16],
    v: &'a [u16],
    kv_dim: usize,
    off: usize,
    len: usize,
    scale: f32,
}

/// With AVX2 and F16C: the same arithmetic in the same order on 8 lanes, converting the cache's
/// halves with F16C (separate multiply and add, no FMA contraction, so the results are the
/// same bits as the portable code).
fn attend(kernel: Kernel, head: &Head<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, Kernel::Avx2 | Kernel::Avx512) {
        // SAFETY: both are only detected on CPUs with AVX2, FMA and F16C (`Kernel::pick`).
        unsafe { attend_avx2(head, scores, out) };
        return;
    }
    let _ = kernel;
    attend_generic(head, scores, out);
}

/// Softmax of the scores in place; answers `1 / sum` (the weights are `score * inv`).
#[inline(always)]
fn softmax_unnormalized(scores: &mut [f32]) -> f32 {
    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s as f64;
    }
    (1.0 / sum) as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(head: &Head<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let Head {
        q,
        k,
        v,
        kv_dim,
        off,
        len,
        scale,
    } = *head;
    let hd = q.len();
    scores.clear();
    let mut lanes = [0.0f32; KB];
    for block in k.chunks_exact(kv_dim * KB).take(len.div_ceil(KB)) {
        let rows = &block[off * KB..(off + hd) * KB];
        let mut acc = _mm256_setzero_ps();
        for (&qd, kd) in q.iter().zip(rows.chunks_exact(KB)) {
            // SAFETY: `kd` holds KB = 8 halves (16 bytes); unaligned loads are allowed.
            let kf = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(kd.as_ptr().cast()) });
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(qd), kf));
        }
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        scores.extend(lanes.iter().map(|a| a * scale));
    }
    scores.truncate(len);
    let inv = softmax_unnormalized(scores);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let w = round_f16(w * inv);
        let vr = &v[p * kv_dim + off..p * kv_dim + off + hd];
        let wv = _mm256_set1_ps(w);
        let mut o8 = out.chunks_exact_mut(8);
        let mut v8 = vr.chunks_exact(8);
        for (o, x) in (&mut o8).zip(&mut v8) {
            // SAFETY: both chunks hold 8 elements; unaligned loads and stores are allowed.
            unsafe {
                let xf = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().cast()));
                let cur = _mm256_loadu_ps(o.as_ptr());
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_add_ps(cur, _mm256_mul_ps(wv, xf)));
            }
        }
        for (o, &x) in o8.into_remainder().iter_mut().zip(v8.remainder()) {
            *o += w * from_f16_bits(x);
        }
    }
}

#[inline(always)]
fn attend_generic(head: &Head<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let Head {
        q,
        k,
        v,
        kv_dim,
        off,
        len,
        scale,
    } = *head;
    let hd = q.len();
    scores.clear();
    for block in k.chunks_exact(kv_dim * KB).take(len.div_ceil(KB)) {
        let mut acc = [0.0f32; KB];
        for (d, &qd) in q.iter().enumerate() {
            let kd = &block[(off + d) * KB..(off + d + 1) * KB];
            for (a, &kv) in acc.iter_mut().zip(kd) {
                *a += qd * from_f16_bits(kv);
            }
        }
        scores.extend(acc.iter().map(|a| a * scale));
    }
    scores.truncate(len);
    let inv = softmax_unnormalized(scores);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let w = round_f16(w * inv);
        let vr = &v[p * kv_dim + off..p * kv_dim + off + hd];
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += w * from_f16_bits(x);
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

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_file::Value;

    use crate::models::test_gguf::{tiny_gguf, VOCAB};

    fn chunk(slot: usize, start: usize, tokens: &[u32]) -> Chunk<'_> {
        Chunk {
            slot,
            start,
            tokens,
            logits: true,
        }
    }

    /// The F16C attention equals the portable one bit for bit, over whole and partial blocks
    /// and a head that is not the first.
    #[test]
    fn attention_on_the_half_float_cache_is_the_same_bits_on_every_kernel() {
        let (hd, kv_dim) = (64, 128);
        let mut seed = 0x2545_f491_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 2001) as f32 / 1000.0 - 1.0
        };
        for len in [1usize, 7, 8, 9, 33, 100] {
            let blocks = len.div_ceil(KB);
            let k: Vec<u16> = (0..blocks * kv_dim * KB)
                .map(|_| to_f16_bits(rnd()))
                .collect();
            let v: Vec<u16> = (0..len * kv_dim).map(|_| to_f16_bits(rnd())).collect();
            let q: Vec<f32> = (0..hd).map(|_| round_f16(rnd())).collect();
            let head = Head {
                q: &q,
                k: &k,
                v: &v,
                kv_dim,
                off: hd,
                len,
                scale: 0.125,
            };
            let (mut s1, mut s2) = (Vec::new(), Vec::new());
            let (mut portable, mut best) = (vec![0.0; hd], vec![0.0; hd]);
            attend(Kernel::Scalar, &head, &mut s1, &mut portable);
            attend(Kernel::detect(), &head, &mut s2, &mut best);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&portable), bits(&best), "len {len}");
            assert!(portable.iter().all(|x| x.is_finite() && x.abs() <= 1.0));
        }
    }

    #[test]
    fn batched_chunked_and_restarted_runs_equal_single_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut lm = CpuLlama::open(&tiny_gguf(dir.path()), 6, 2).unwrap();
        assert_eq!(
            (lm.max_sequences(), lm.context_length(), lm.vocab_size()),
            (6, 48, VOCAB)
        );
        let prompts: Vec<Vec<u32>> = (0..6u32)
            .map(|s| {
                (0..5 + s * 3)
                    .map(|i| (i * 7 + s * 11) % VOCAB as u32)
                    .collect()
            })
            .collect();
        // Each prompt alone, then two decode steps, in slot 0.
        let mut alone = Vec::new();
        for p in &prompts {
            let a = lm.forward(p, 0).unwrap();
            let b = lm.forward(&[3], p.len()).unwrap();
            let c = lm.forward(&[4], p.len() + 1).unwrap();
            assert!(a.iter().all(|v| v.is_finite()) && a != b && b != c);
            alone.push([a, b, c]);
        }
        // All six at once in their own slots (the four-activation kernels run here).
        let chunks: Vec<Chunk> = prompts
            .iter()
            .enumerate()
            .map(|(s, p)| chunk(s, 0, p))
            .collect();
        let first = lm.step(&chunks).unwrap();
        let second = lm
            .step(
                &(0..6)
                    .map(|s| chunk(s, prompts[s].len(), &[3]))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        for s in 0..6 {
            assert_eq!(first[s], alone[s][0], "prompt {s}");
            assert_eq!(second[s], alone[s][1], "decode {s}");
        }
        // A prompt in two chunks gives what it gives in one; only the last chunk asks.
        let p = &prompts[5];
        let none = lm
            .step(&[Chunk {
                logits: false,
                ..chunk(2, 0, &p[..8])
            }])
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(lm.step(&[chunk(2, 8, &p[8..])]).unwrap()[0], alone[5][0]);
        // Restarting inside what a slot holds replaces the rest.
        assert_eq!(lm.forward(&[9, 9, 9], 0).unwrap().len(), VOCAB);
        lm.forward(&prompts[1], 0).unwrap();
        lm.forward(&[50], prompts[1].len()).unwrap();
        assert_eq!(lm.forward(&[3], prompts[1].len()).unwrap(), alone[1][1]);
        lm.release(0);
        assert_eq!(lm.forward(&prompts[0], 0).unwrap(), alone[0][0]);
    }

    #[test]
    fn bad_steps_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut lm = CpuLlama::open(&tiny_gguf(dir.path()), 2, 1).unwrap();
        let ok = [1u32, 2];
        for bad in [
            vec![chunk(2, 0, &ok)],                   // no such slot
            vec![chunk(0, 0, &ok), chunk(0, 0, &ok)], // one slot twice
            vec![chunk(0, 0, &[])],                   // nothing to run
            vec![chunk(0, 5, &ok)],                   // a gap after the cached positions
            vec![chunk(0, 47, &ok)],                  // past the context
            vec![chunk(0, 0, &[VOCAB as u32])],       // outside the vocabulary
        ] {
            assert!(
                matches!(lm.step(&bad), Err(ModelError::Inference(_))),
                "{bad:?}"
            );
        }
        assert!(lm.step(&[chunk(0, 0, &ok)]).is_ok());
    }

    #[test]
    fn missing_tensors_and_unsupported_files_fail_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.gguf");
        let mut f = std::fs::File::create(&path).unwrap();
        let arch = Value::String("llama".into());
        gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
        assert!(matches!(
            CpuLlama::open(&path, 1, 1),
            Err(ModelError::Load(_))
        ));
        assert!(CpuLlama::open(&dir.path().join("absent.gguf"), 1, 1).is_err());
    }
}
