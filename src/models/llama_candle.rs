//! A llama-family forward pass on candle tensors, for any device candle runs on: the GPU path
//! (CUDA), and the CPU too, where it is tested against [`super::llama_cpu`].
//!
//! Weights are dequantized from the GGUF once, at load, and kept as dense matrices: f16 on CUDA,
//! f32 on the CPU. candle's quantized CUDA matmul covers one activation row well (its `mmvq`
//! kernels) but not every format and not prompt chunks of several sequences in one call, so for
//! the small models anya serves a dense f16 copy (≈270 MB for SmolLM2-135M) on a GPU with tens
//! of GiB is the simpler and faster choice; cuBLAS then runs each step's matmuls at any batch.
//!
//! It serves several sequences at once exactly like the CPU llama: each slot has its own KV
//! cache on the device (`[kv_heads, capacity, head_dim]` per layer, grown by doubling), and one
//! [`CausalLm::step`] runs the matmuls of every token of every chunk (decode tokens and prompt
//! chunks from different slots) as one batch, so the scheduler's continuous batching drives it
//! unchanged. Attention runs per chunk over its own slot's cache, grouped-query heads without
//! copying K or V. The residual stream, norms, rope and softmax stay in f32.

use std::io::{Read, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::{DType, Device, Tensor};

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
    vocab: usize,
}

struct Layer {
    attn_norm: Tensor,
    /// q, k and v stacked: `[dim + 2 * kv_dim, dim]`.
    wqkv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    /// gate and up stacked: `[2 * ffn, dim]`.
    w13: Tensor,
    w2: Tensor,
}

/// One sequence's KV cache on the device: per layer, K and V as `[kv_heads, capacity, head_dim]`.
struct Slot {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    capacity: usize,
    len: usize,
}

pub struct CandleLlama {
    cfg: Config,
    device: Device,
    dtype: DType,
    /// `[vocab, dim]`; also the output head when the model ties them.
    embed: Tensor,
    output: Option<Tensor>,
    out_norm: Tensor,
    layers: Vec<Layer>,
    /// Rope tables `[context, head_dim / 2]` (f32).
    cos: Tensor,
    sin: Tensor,
    /// `None` until a sequence uses the slot, and again after [`CausalLm::release`].
    slots: Vec<Option<Slot>>,
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {e}", path.display()))
}

/// A norm's weights as a flat f32 vector.
fn f32_vec(path: &Path, t: Tensor, name: &str) -> Result<Tensor, ModelError> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .map_err(|e| load_err(path, format!("{name}: {e}")))
}

/// Every layer's weights, read with `dense` (q, k and v stacked; gate and up stacked) and
/// checked against the model's shape.
fn read_layers(
    path: &Path,
    cfg: &Config,
    dense: &mut impl FnMut(&str) -> Result<Tensor, ModelError>,
) -> Result<Vec<Layer>, ModelError> {
    let cat = |ts: &[Tensor]| Tensor::cat(ts, 0).map_err(|e| load_err(path, e));
    let mut layers = Vec::with_capacity(cfg.layers);
    let (dim, kv_dim) = (cfg.dim, cfg.kv_heads * cfg.head_dim);
    for l in 0..cfg.layers {
        let p = format!("blk.{l}.");
        let mut m = |n: &str| dense(&format!("{p}{n}.weight"));
        let attn_norm = f32_vec(path, m("attn_norm")?, "attn_norm")?;
        let ffn_norm = f32_vec(path, m("ffn_norm")?, "ffn_norm")?;
        let wqkv = cat(&[m("attn_q")?, m("attn_k")?, m("attn_v")?])?;
        let wo = m("attn_output")?;
        let w13 = cat(&[m("ffn_gate")?, m("ffn_up")?])?;
        let w2 = m("ffn_down")?;
        let shapes_ok = wqkv.dims() == [dim + 2 * kv_dim, dim]
            && wo.dims() == [dim, dim]
            && w13.dims() == [2 * cfg.ffn, dim]
            && w2.dims() == [dim, cfg.ffn]
            && attn_norm.dims() == [dim]
            && ffn_norm.dims() == [dim];
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
    Ok(layers)
}

impl CandleLlama {
    /// The weight type for a device: f16 on GPUs, f32 on the CPU.
    pub fn dtype_for(device: &Device) -> DType {
        if device.is_cpu() {
            DType::F32
        } else {
            DType::F16
        }
    }

    /// Load the weights of a GGUF already opened as `content` onto `device`, dequantized to
    /// `dtype` (see [`CandleLlama::dtype_for`]), with `slots` sequences able to run at once.
    pub fn load<R: Read + Seek>(
        path: &Path,
        content: &Content,
        file: &mut R,
        device: &Device,
        dtype: DType,
        slots: usize,
    ) -> Result<CandleLlama, ModelError> {
        let md = |k: &str| content.metadata.get(&format!("llama.{k}"));
        let num = |k: &str| -> Result<usize, ModelError> {
            md(k)
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
                .ok_or_else(|| load_err(path, format!("metadata llama.{k} is missing")))
        };
        let float = |k: &str, default: f32| md(k).and_then(|v| v.to_f32().ok()).unwrap_or(default);
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned());
        if arch.as_deref() != Some("llama") {
            return Err(load_err(path, "not a llama-architecture GGUF"));
        }
        let dim = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let kv_heads = md("attention.head_count_kv")
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 {
            return Err(load_err(path, "inconsistent head counts"));
        }
        let head_dim = dim / heads;
        if head_dim % 2 != 0 {
            return Err(load_err(path, "odd head size"));
        }
        // Read on the CPU, dequantize there (every GGUF format candle knows), convert, move.
        let mut dense = |name: &str| -> Result<Tensor, ModelError> {
            let q = content
                .tensor(file, name, &Device::Cpu)
                .map_err(|e| load_err(path, format!("{name}: {e}")))?;
            q.dequantize(&Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .and_then(|t| t.to_device(device))
                .map_err(|e| load_err(path, format!("{name}: {e}")))
        };
        let embed = dense("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(dense("output.weight")?)
        } else {
            None
        };
        let vocab = embed.dims().first().copied().unwrap_or(0);
        let cfg = Config {
            layers: num("block_count")?,
            dim,
            heads,
            kv_heads,
            head_dim,
            ffn: num("feed_forward_length")?,
            eps: float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: float("rope.freq_base", 10_000.0),
            context: md("context_length")
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
                .unwrap_or(2048),
            vocab,
        };
        let out_norm = f32_vec(path, dense("output_norm.weight")?, "output_norm")?;
        let layers = read_layers(path, &cfg, &mut dense)?;
        if embed.dims() != [vocab, dim]
            || output.as_ref().is_some_and(|o| o.dims() != [vocab, dim])
            || out_norm.dims() != [dim]
        {
            return Err(load_err(
                path,
                "embedding or output shapes differ from the model's",
            ));
        }
        let (cos, sin) = rope_tables(cfg.context, head_dim, cfg.rope_base, device)
            .map_err(|e| load_err(path, e))?;
        Ok(CandleLlama {
            cfg,
            device: device.clone(),
            dtype,
            embed,
            output,
            out_norm,
            layers,
            cos,
            sin,
            slots: (0..slots.max(1)).map(|_| None).collect(),
        })
    }

    /// Open `path` and load it onto `device` with its [`CandleLlama::dtype_for`].
    pub fn open(path: &Path, device: &Device, slots: usize) -> Result<CandleLlama, ModelError> {
        Self::open_as(path, device, Self::dtype_for(device), slots)
    }

    /// Open `path` and load it onto `device` as `dtype`.
    pub fn open_as(
        path: &Path,
        device: &Device,
        dtype: DType,
        slots: usize,
    ) -> Result<CandleLlama, ModelError> {
        let mut file = std::fs::File::open(path).map_err(|e| load_err(path, e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| load_err(path, e))?;
        Self::load(path, &content, &mut file, device, dtype, slots)
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn slot_len(&self, slot: usize) -> usize {
        self.slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.len)
    }

    /// Make `slot`'s cache hold at least `needed` positions, keeping its first `keep`.
    fn reserve(&mut self, slot: usize, needed: usize, keep: usize) -> candle_core::Result<()> {
        let cfg = &self.cfg;
        let have = self.slots[slot].as_ref().map_or(0, |s| s.capacity);
        if needed <= have {
            return Ok(());
        }
        let capacity = needed
            .next_power_of_two()
            .max(16)
            .min(cfg.context.max(needed));
        let shape = (cfg.kv_heads, capacity, cfg.head_dim);
        let mut k = Vec::with_capacity(cfg.layers);
        let mut v = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let nk = Tensor::zeros(shape, self.dtype, &self.device)?;
            let nv = Tensor::zeros(shape, self.dtype, &self.device)?;
            if let Some(old) = self.slots[slot].as_ref().filter(|_| keep > 0) {
                nk.slice_set(&old.k[l].narrow(1, 0, keep)?.contiguous()?, 1, 0)?;
                nv.slice_set(&old.v[l].narrow(1, 0, keep)?.contiguous()?, 1, 0)?;
            }
            k.push(nk);
            v.push(nv);
        }
        self.slots[slot] = Some(Slot {
            k,
            v,
            capacity,
            len: keep,
        });
        Ok(())
    }

    /// `x @ w^T` in the weight type, back to f32.
    fn linear(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        x.to_dtype(self.dtype)?
            .matmul(&w.t()?)?
            .to_dtype(DType::F32)
    }

    fn run(&mut self, chunks: &[Chunk<'_>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let cfg = self.cfg.clone();
        let (dim, hd) = (cfg.dim, cfg.head_dim);
        let kv_dim = cfg.kv_heads * hd;
        for c in chunks {
            let keep = c.start.min(self.slot_len(c.slot));
            self.reserve(c.slot, c.start + c.tokens.len(), keep)?;
        }
        let ids: Vec<u32> = chunks
            .iter()
            .flat_map(|c| c.tokens.iter().copied())
            .collect();
        let positions: Vec<u32> = chunks
            .iter()
            .flat_map(|c| (c.start..c.start + c.tokens.len()).map(|p| p as u32))
            .collect();
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let positions = Tensor::from_vec(positions, n, &self.device)?;
        // Rope angles per token: `[n, 1, head_dim / 2]`, one "batch" per token.
        let cos = self
            .cos
            .index_select(&positions, 0)?
            .reshape((n, 1, hd / 2))?;
        let sin = self
            .sin
            .index_select(&positions, 0)?
            .reshape((n, 1, hd / 2))?;
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let xn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.eps)?;
            let qkv = self.linear(&xn, &layer.wqkv)?;
            let rope = |t: Tensor, heads: usize| -> candle_core::Result<Tensor> {
                let t = t.contiguous()?.reshape((n, heads, 1, hd))?;
                candle_nn::rotary_emb::rope_i(&t, &cos, &sin)?.reshape((n, heads, hd))
            };
            let q = rope(qkv.narrow(1, 0, dim)?, cfg.heads)?;
            let k = rope(qkv.narrow(1, dim, kv_dim)?, cfg.kv_heads)?;
            let v = qkv
                .narrow(1, dim + kv_dim, kv_dim)?
                .contiguous()?
                .reshape((n, cfg.kv_heads, hd))?;
            let mut outs = Vec::with_capacity(chunks.len());
            let mut t0 = 0;
            for c in chunks {
                let len = c.tokens.len();
                let slot = self.slots[c.slot]
                    .as_ref()
                    .ok_or_else(|| candle_core::Error::Msg("slot not reserved".into()))?;
                let heads_first = |t: &Tensor| -> candle_core::Result<Tensor> {
                    t.narrow(0, t0, len)?
                        .transpose(0, 1)?
                        .contiguous()?
                        .to_dtype(self.dtype)
                };
                slot.k[l].slice_set(&heads_first(&k)?, 1, c.start)?;
                slot.v[l].slice_set(&heads_first(&v)?, 1, c.start)?;
                outs.push(attend(&cfg, slot, l, &heads_first(&q)?, c.start, len)?);
                t0 += len;
            }
            let att = Tensor::cat(&outs, 0)?.to_dtype(DType::F32)?;
            x = (x + self.linear(&att, &layer.wo)?)?;
            let xn = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.eps)?;
            let gu = self.linear(&xn, &layer.w13)?;
            let h = (candle_nn::ops::silu(&gu.narrow(1, 0, cfg.ffn)?)?
                * gu.narrow(1, cfg.ffn, cfg.ffn)?)?;
            x = (x + self.linear(&h, &layer.w2)?)?;
        }
        for c in chunks {
            if let Some(s) = self.slots[c.slot].as_mut() {
                s.len = c.start + c.tokens.len();
            }
        }
        // Logits for the last token of each chunk that asks for them.
        let mut last = Vec::new();
        let mut t = 0u32;
        for c in chunks {
            t += c.tokens.len() as u32;
            if c.logits {
                last.push(t - 1);
            }
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let m = last.len();
        let rows = x.index_select(&Tensor::from_vec(last, m, &self.device)?, 0)?;
        let xn = candle_nn::ops::rms_norm(&rows, &self.out_norm, cfg.eps)?;
        let head = self.output.as_ref().unwrap_or(&self.embed);
        self.linear(&xn, head)?.to_vec2::<f32>()
    }
}

/// One chunk's attention over its slot's cache in layer `l`: `q` is `[heads, len, head_dim]`
/// for positions `start..start + len`; the cache already holds those positions. Returns
/// `[len, dim]`. Query heads that share a KV head are stacked as rows of one matmul.
fn attend(
    cfg: &Config,
    slot: &Slot,
    l: usize,
    q: &Tensor,
    start: usize,
    len: usize,
) -> candle_core::Result<Tensor> {
    let hd = cfg.head_dim;
    let group = cfg.heads / cfg.kv_heads;
    let total = start + len;
    let q = q.reshape((cfg.kv_heads, group * len, hd))?;
    let k = slot.k[l].narrow(1, 0, total)?;
    let v = slot.v[l].narrow(1, 0, total)?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    if len > 1 {
        // Causal: row `g * len + i` (position `start + i`) sees positions up to `start + i`.
        let mask: Vec<f32> = (0..group * len)
            .flat_map(|r| {
                let pos = start + r % len;
                (0..total).map(move |j| if j <= pos { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (group * len, total), q.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    probs
        .matmul(&v)? // [kv_heads, group * len, hd]
        .reshape((cfg.heads, len, hd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((len, cfg.dim))
}

/// `(cos, sin)` tables `[context, head_dim / 2]`, angles computed the way ggml does (pair `i` of
/// position `p` turns by `p * base^(-2i/d)`, by repeated products), as in the CPU llama.
fn rope_tables(
    context: usize,
    hd: usize,
    base: f32,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let scale = base.powf(-2.0 / hd as f32);
    let (mut cos, mut sin) = (
        Vec::with_capacity(context * hd / 2),
        Vec::with_capacity(context * hd / 2),
    );
    for pos in 0..context {
        let mut theta = pos as f32;
        for _ in 0..hd / 2 {
            cos.push(theta.cos());
            sin.push(theta.sin());
            theta *= scale;
        }
    }
    Ok((
        Tensor::from_vec(cos, (context, hd / 2), device)?,
        Tensor::from_vec(sin, (context, hd / 2), device)?,
    ))
}

impl CausalLm for CandleLlama {
    fn step(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let lens: Vec<usize> = (0..self.slots.len()).map(|s| self.slot_len(s)).collect();
        check_chunks(chunks, &lens, self.cfg.context, self.cfg.vocab)?;
        Ok(self.run(chunks)?)
    }

    fn context_length(&self) -> usize {
        self.cfg.context
    }

    fn max_sequences(&self) -> usize {
        self.slots.len()
    }

    fn release(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::llama_cpu::CpuLlama;
    use crate::models::test_gguf::{tiny_gguf, VOCAB};

    fn argmax(v: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best as u32
    }

    /// Largest difference relative to the largest magnitude of `a`.
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn chunk(slot: usize, start: usize, tokens: &[u32]) -> Chunk<'_> {
        Chunk {
            slot,
            start,
            tokens,
            logits: true,
        }
    }

    /// Greedy decoding of `steps` tokens after `prompt` in slot 0; the tokens and each step's
    /// logits.
    fn greedy(lm: &mut dyn CausalLm, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        let mut logits = vec![lm.forward(prompt, 0).unwrap()];
        let mut tokens = Vec::new();
        for i in 0..steps {
            let t = argmax(logits.last().unwrap());
            tokens.push(t);
            logits.push(lm.forward(&[t], prompt.len() + i).unwrap());
        }
        (tokens, logits)
    }

    #[test]
    fn greedy_tokens_and_logits_follow_the_cpu_llama() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_gguf(dir.path());
        let mut cpu = CpuLlama::open(&path, 1, 1).unwrap();
        let mut lm = CandleLlama::open(&path, &Device::Cpu, 1).unwrap();
        assert_eq!(lm.dtype(), DType::F32);
        assert_eq!(
            (lm.vocab_size(), lm.context_length(), lm.max_sequences()),
            (VOCAB, 48, 1)
        );
        let prompt: Vec<u32> = (0..7).map(|i| (i * 13 + 5) % VOCAB as u32).collect();
        let (want, want_logits) = greedy(&mut cpu, &prompt, 32);
        let (got, got_logits) = greedy(&mut lm, &prompt, 32);
        // Ours quantizes activations to 8 bits before each matmul; this one multiplies f32
        // activations by the dequantized weights: close, not equal.
        for (i, (a, b)) in want_logits.iter().zip(&got_logits).enumerate() {
            let d = rel_diff(a, b);
            assert!(d < 0.05, "step {i}: logits differ by {d}");
        }
        assert_eq!(got, want);
    }

    #[test]
    fn batched_chunked_and_restarted_runs_equal_single_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut lm = CandleLlama::open(&tiny_gguf(dir.path()), &Device::Cpu, 6).unwrap();
        let prompts: Vec<Vec<u32>> = (0..6u32)
            .map(|s| {
                (0..5 + s * 3)
                    .map(|i| (i * 7 + s * 11) % VOCAB as u32)
                    .collect()
            })
            .collect();
        let mut alone = Vec::new();
        for p in &prompts {
            let a = lm.forward(p, 0).unwrap();
            let b = lm.forward(&[3], p.len()).unwrap();
            assert!(a.iter().all(|v| v.is_finite()) && a != b);
            alone.push([a, b]);
        }
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
            assert!(rel_diff(&alone[s][0], &first[s]) < 1e-4, "prompt {s}");
            assert!(rel_diff(&alone[s][1], &second[s]) < 1e-4, "decode {s}");
        }
        // A prompt in two chunks; only the last asks for logits.
        let p = &prompts[5];
        let none = lm
            .step(&[Chunk {
                logits: false,
                ..chunk(2, 0, &p[..8])
            }])
            .unwrap();
        assert!(none.is_empty());
        let two = lm.step(&[chunk(2, 8, &p[8..])]).unwrap();
        assert!(rel_diff(&alone[5][0], &two[0]) < 1e-4);
        // Restarting inside what a slot holds replaces the rest; a released slot starts empty.
        lm.forward(&prompts[1], 0).unwrap();
        lm.forward(&[50], prompts[1].len()).unwrap();
        let again = lm.forward(&[3], prompts[1].len()).unwrap();
        assert!(rel_diff(&alone[1][1], &again) < 1e-4);
        lm.release(0);
        let fresh = lm.forward(&prompts[0], 0).unwrap();
        assert!(rel_diff(&alone[0][0], &fresh) < 1e-4);
    }

    #[test]
    fn the_cache_grows_and_keeps_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_gguf(dir.path());
        let mut lm = CandleLlama::open(&path, &Device::Cpu, 1).unwrap();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 5 + 1) % VOCAB as u32).collect();
        let whole = lm.forward(&prompt, 0).unwrap();
        lm.release(0);
        // 3 positions (capacity 16), then one at a time through 32 and 48.
        lm.forward(&prompt[..3], 0).unwrap();
        let mut last = Vec::new();
        for (i, &t) in prompt.iter().enumerate().skip(3) {
            last = lm.forward(&[t], i).unwrap();
        }
        assert_eq!(lm.slots[0].as_ref().map(|s| s.capacity), Some(48));
        assert!(rel_diff(&whole, &last) < 1e-4);
    }

    #[test]
    fn f16_weights_stay_close_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny_gguf(dir.path());
        let mut f32_lm = CandleLlama::open_as(&path, &Device::Cpu, DType::F32, 2).unwrap();
        let mut f16_lm = CandleLlama::open_as(&path, &Device::Cpu, DType::F16, 2).unwrap();
        let prompt: Vec<u32> = (0..9).map(|i| (i * 3 + 2) % VOCAB as u32).collect();
        let (_, want) = greedy(&mut f32_lm, &prompt, 8);
        let (_, got) = greedy(&mut f16_lm, &prompt, 8);
        for (i, (a, b)) in want.iter().zip(&got).enumerate().take(1) {
            let d = rel_diff(a, b);
            assert!(d < 0.01, "step {i}: f16 logits differ by {d}");
        }
        // Two sequences at once in f16 too.
        let out = f16_lm
            .step(&[chunk(0, 0, &prompt), chunk(1, 0, &prompt[..4])])
            .unwrap();
        assert!(rel_diff(&want[0], &out[0]) < 0.01);
    }

    #[test]
    fn bad_steps_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut lm = CandleLlama::open(&tiny_gguf(dir.path()), &Device::Cpu, 2).unwrap();
        let ok = [1u32, 2];
        for bad in [
            vec![chunk(2, 0, &ok)],
            vec![chunk(0, 0, &ok), chunk(0, 0, &ok)],
            vec![chunk(0, 0, &[])],
            vec![chunk(0, 5, &ok)],
            vec![chunk(0, 47, &ok)],
            vec![chunk(0, 0, &[VOCAB as u32])],
        ] {
            assert!(
                matches!(lm.step(&bad), Err(ModelError::Inference(_))),
                "{bad:?}"
            );
        }
        assert!(lm.step(&[chunk(0, 0, &ok)]).is_ok());
        let empty = dir.path().join("empty.gguf");
        let mut f = std::fs::File::create(&empty).unwrap();
        let arch = gguf_file::Value::String("llama".into());
        gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
        assert!(matches!(
            CandleLlama::open(&empty, &Device::Cpu, 1),
            Err(ModelError::Load(_))
        ));
    }
}
