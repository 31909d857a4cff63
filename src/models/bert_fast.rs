//! A BERT encoder forward pass for the CPU without padding: the tokens of every sequence in a
//! batch are stacked into one `[total_tokens, hidden]` matrix for the embeddings, LayerNorms
//! and all linear layers (query, key and value as one fused projection), and attention runs per
//! sequence, each sequence attending only to itself. Linear layers are candle matmuls (gemm);
//! the rest are the vectorised loops of [`super::kernels`].
//!
//! Loads the same safetensors weights as candle-transformers' `BertModel` (names with or
//! without a `bert.` prefix); token type ids are all zero, as the embedder has always used.

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Storage, Tensor};

use super::kernels::{self, AttentionScratch, AttentionShape};
use super::sgemm::{self, PackedLinear};
use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The exact GELU, x Φ(x).
    GeluErf,
    Relu,
}

/// What the forward pass needs from a BERT `config.json`.
#[derive(Debug, Clone)]
pub struct FastBertConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f32,
    pub activation: Activation,
    pub model_type: Option<String>,
}

impl FastBertConfig {
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ModelError> {
        let num = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::Load(format!("config.json has no {k}")))
        };
        let activation = match v.get("hidden_act").and_then(|a| a.as_str()) {
            Some("gelu") | None => Activation::GeluErf,
            Some("relu") => Activation::Relu,
            Some(other) => {
                return Err(ModelError::Load(format!(
                    "config.json: hidden_act {other:?} is not supported (gelu or relu)"
                )))
            }
        };
        if let Some(p) = v.get("position_embedding_type").and_then(|p| p.as_str()) {
            if p != "absolute" {
                return Err(ModelError::Load(format!(
                    "config.json: position_embedding_type {p:?} is not supported"
                )));
            }
        }
        let cfg = Self {
            hidden_size: num("hidden_size")?,
            num_attention_heads: num("num_attention_heads")?,
            intermediate_size: num("intermediate_size")?,
            max_position_embeddings: num("max_position_embeddings")?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-12) as f32,
            activation,
            model_type: v
                .get("model_type")
                .and_then(|x| x.as_str())
                .map(str::to_owned),
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(ModelError::Load(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// The checkpoint's query, key and value weights stacked, [3 * hidden, hidden]: one fused
    /// projection with query, key and value side by side in its output.
    qkv_w: PackedLinear,
    qkv_b: Vec<f32>,
    /// [hidden, hidden]
    attn_out_w: PackedLinear,
    attn_out_b: Vec<f32>,
    attn_norm: Norm,
    /// [intermediate, hidden]
    up_w: PackedLinear,
    up_b: Vec<f32>,
    /// [hidden, intermediate]
    down_w: PackedLinear,
    down_b: Vec<f32>,
    out_norm: Norm,
}

pub struct FastBert {
    cfg: FastBertConfig,
    /// [vocab, hidden]
    word: Vec<f32>,
    /// [max_positions, hidden], with the token-type-0 row already added.
    position_and_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    /// One attention scratch per thread.
    scratch: [AttentionScratch; 2],
    /// Threads for the element-wise work and attention (1 or 2).
    threads: usize,
    lens: Vec<usize>,
}

/// Weights by name, with the prefix the checkpoint uses.
struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: String,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .tensors
            .get(&full)
            .ok_or_else(|| ModelError::Load(format!("weights have no {full}")))?;
        if t.dims() != shape {
            return Err(ModelError::Load(format!(
                "{full}: shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    fn vec(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(self.get(name, &[len])?.to_vec1()?)
    }

    /// A `[out, in]` linear weight: packed for [`sgemm`] where the CPU runs it (and `pack`),
    /// else a transposed view for candle's `x.matmul(w)` (gemm reads it as fast as a contiguous
    /// `[in, out]` copy).
    fn linear(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        pack: bool,
    ) -> Result<PackedLinear, ModelError> {
        Ok(PackedLinear::new(&self.get(name, &[out, inp])?, pack)?)
    }

    fn norm(&self, name: &str, len: usize) -> Result<Norm, ModelError> {
        Ok(Norm {
            gamma: self.vec(&format!("{name}.weight"), len)?,
            beta: self.vec(&format!("{name}.bias"), len)?,
        })
    }
}

/// Run `f` on the f32 contents of a contiguous CPU tensor.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, ModelError> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(ModelError::Inference("expected a CPU tensor".into()));
    };
    let all = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| ModelError::Inference("expected a contiguous tensor".into()))?;
    Ok(f(&all[start..end]))
}

/// Below this many tokens, element-wise work and attention stay on the calling thread: a thread
/// costs tens of microseconds to start, more than half of such work takes.
const PARALLEL_TOKENS: usize = 64;

/// Threads for the work outside gemm: 2 where the machine has them and `RAYON_NUM_THREADS`
/// (which candle's gemm follows too) does not say 1. More would not help the small, memory-bound
/// loops much and would oversubscribe the gemm's own threads.
fn worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rayon = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(cores);
    cores.min(rayon).clamp(1, 2)
}

/// Run `f(rows, first_row)` over `xs` (rows `width` wide), split in two halves on two threads
/// when there are enough rows.
fn split_rows(xs: &mut [f32], width: usize, threads: usize, f: impl Fn(&mut [f32], usize) + Sync) {
    let rows = xs.len() / width.max(1);
    if threads < 2 || rows < PARALLEL_TOKENS {
        f(xs, 0);
        return;
    }
    let half = rows / 2;
    let (a, b) = xs.split_at_mut(half * width);
    std::thread::scope(|s| {
        s.spawn(|| f(b, half));
        f(a, 0);
    });
}

/// [`kernels::attention`] over the sequences of a batch, on two threads (each with whole
/// sequences, split to even out the work, which grows with the square of a sequence's length)
/// when the batch is big enough.
#[allow(clippy::too_many_arguments)]
fn attention_split(
    shape: AttentionShape,
    qkv: &[f32],
    bias: &[f32],
    lens: &[usize],
    scratch: &mut [AttentionScratch; 2],
    ctx: &mut [f32],
    threads: usize,
) {
    let total: usize = lens.iter().sum();
    let [s0, s1] = scratch;
    if threads < 2 || lens.len() < 2 || total < PARALLEL_TOKENS {
        kernels::attention(shape, qkv, bias, lens, s0, ctx);
        return;
    }
    let work: usize = lens.iter().map(|l| l * l).sum();
    let (mut split, mut done, mut tokens) = (0, 0, 0);
    while split < lens.len() - 1 && 2 * (done + lens[split] * lens[split] / 2) < work {
        done += lens[split] * lens[split];
        tokens += lens[split];
        split += 1;
    }
    let hidden = shape.heads * shape.head_dim;
    let (q0, q1) = qkv.split_at(tokens * 3 * hidden);
    let (c0, c1) = ctx.split_at_mut(tokens * hidden);
    let (l0, l1) = lens.split_at(split);
    std::thread::scope(|s| {
        s.spawn(|| kernels::attention(shape, q1, bias, l1, s1, c1));
        kernels::attention(shape, q0, bias, l0, s0, c0);
    });
}

/// Up to this many tokens, `x Wᵀ` runs as `(W xᵀ)ᵀ`: with the big weight as gemm's left-hand
/// side a few dozen rows multiply ~20 % faster on an AVX2 machine; around a thousand rows the two
/// are the same (measured with all four of MiniLM's projection shapes).
const TRANSPOSED_MATMUL_TOKENS: usize = 128;

/// `x Wᵀ` for `x` `[tokens, in]` and a `[out, in]` weight, contiguous `[tokens, out]` out.
fn linear(x: &Tensor, w: &PackedLinear) -> candle_core::Result<Tensor> {
    let PackedLinear::Candle(w_t) = w else {
        return sgemm::linear(x, w);
    };
    if x.dim(0)? <= TRANSPOSED_MATMUL_TOKENS {
        w_t.t()?.matmul(&x.t()?)?.t()?.contiguous()
    } else {
        x.matmul(w_t)
    }
}

/// The f32 contents of a contiguous CPU storage, for the in-place ops.
fn f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous tensor".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => Err(candle_core::Error::Msg("expected f32".into())),
    }
}

fn f32_ref<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("expected a contiguous tensor".into()))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// `x = act(x + bias)` on the output of the intermediate projection, in place.
struct BiasActivation<'a> {
    bias: &'a [f32],
    act: Activation,
    threads: usize,
}

impl InplaceOp1 for BiasActivation<'_> {
    fn name(&self) -> &'static str {
        "bert-bias-activation"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let xs = f32_mut(s, l)?;
        let width = self.bias.len();
        split_rows(xs, width, self.threads, |xs, _| match self.act {
            Activation::GeluErf => kernels::gelu_bias(xs, self.bias),
            Activation::Relu => {
                for row in xs.chunks_exact_mut(width) {
                    for (v, &b) in row.iter_mut().zip(self.bias) {
                        *v = (*v + b).max(0.0);
                    }
                }
            }
        });
        Ok(())
    }
}

/// `x = LayerNorm(x + bias + residual)` on the output of a projection, in place.
struct AddNorm<'a> {
    bias: &'a [f32],
    norm: &'a Norm,
    eps: f32,
    threads: usize,
}

impl InplaceOp2 for AddNorm<'_> {
    fn name(&self) -> &'static str {
        "bert-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let residual = f32_ref(s2, l2)?;
        let xs = f32_mut(s1, l1)?;
        if xs.len() != residual.len() {
            return Err(candle_core::Error::Msg("residual of another shape".into()));
        }
        let width = self.bias.len();
        split_rows(xs, width, self.threads, |xs, first_row| {
            kernels::add_layer_norm(
                xs,
                self.bias,
                &residual[first_row * width..first_row * width + xs.len()],
                &self.norm.gamma,
                &self.norm.beta,
                self.eps,
            )
        });
        Ok(())
    }
}

impl FastBert {
    /// Load from safetensors bytes (weights of any float dtype are converted to f32).
    pub fn load(bytes: &[u8], cfg: FastBertConfig) -> Result<Self, ModelError> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let mut prefixes = vec![String::new()];
        if let Some(mt) = &cfg.model_type {
            prefixes.push(format!("{mt}."));
        }
        prefixes.push("bert.".into());
        let prefix = prefixes
            .into_iter()
            .find(|p| tensors.contains_key(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                ModelError::Load("weights have no embeddings.word_embeddings.weight".into())
            })?;
        let w = Weights { tensors, prefix };
        // ANYA_KERNEL=avx2 (or scalar) keeps candle's gemm for the projections, as it picks the
        // generation kernels: to compare the two.
        let pack = !matches!(
            std::env::var("ANYA_KERNEL").as_deref(),
            Ok("avx2") | Ok("scalar")
        );
        let h = cfg.hidden_size;
        let inter = cfg.intermediate_size;
        let word_t = w
            .tensors
            .get(&format!("{}embeddings.word_embeddings.weight", w.prefix))
            .ok_or_else(|| ModelError::Load("no word embeddings".into()))?;
        let vocab = word_t.dims().first().copied().unwrap_or(0);
        let word = w
            .get("embeddings.word_embeddings.weight", &[vocab, h])?
            .flatten_all()?
            .to_vec1()?;
        let max_pos = cfg.max_position_embeddings;
        let pos = w.get("embeddings.position_embeddings.weight", &[max_pos, h])?;
        let types = w.get("embeddings.token_type_embeddings.weight", &[2, h])?;
        let type0 = types.get(0)?.unsqueeze(0)?;
        let position_and_type = pos.broadcast_add(&type0)?.flatten_all()?.to_vec1()?;
        let emb_norm = w.norm("embeddings.LayerNorm", h)?;

        let mut layers = Vec::new();
        for i in 0.. {
            let p = format!("encoder.layer.{i}");
            if !w
                .tensors
                .contains_key(&format!("{}{p}.attention.self.query.weight", w.prefix))
            {
                break;
            }
            let a = format!("{p}.attention.self");
            let q = w.get(&format!("{a}.query.weight"), &[h, h])?;
            let k = w.get(&format!("{a}.key.weight"), &[h, h])?;
            let v = w.get(&format!("{a}.value.weight"), &[h, h])?;
            let qkv_w = PackedLinear::new(&Tensor::cat(&[q, k, v], 0)?, pack)?;
            let mut qkv_b = w.vec(&format!("{a}.query.bias"), h)?;
            qkv_b.extend(w.vec(&format!("{a}.key.bias"), h)?);
            qkv_b.extend(w.vec(&format!("{a}.value.bias"), h)?);
            layers.push(Layer {
                qkv_w,
                qkv_b,
                attn_out_w: w.linear(&format!("{p}.attention.output.dense.weight"), h, h, pack)?,
                attn_out_b: w.vec(&format!("{p}.attention.output.dense.bias"), h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                up_w: w.linear(&format!("{p}.intermediate.dense.weight"), inter, h, pack)?,
                up_b: w.vec(&format!("{p}.intermediate.dense.bias"), inter)?,
                down_w: w.linear(&format!("{p}.output.dense.weight"), h, inter, pack)?,
                down_b: w.vec(&format!("{p}.output.dense.bias"), h)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        if layers.is_empty() {
            return Err(ModelError::Load("weights have no encoder layers".into()));
        }
        Ok(Self {
            cfg,
            word,
            position_and_type,
            emb_norm,
            layers,
            scratch: Default::default(),
            threads: worker_threads(),
            lens: Vec::new(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Run the encoder and hand `f` the last hidden states of every token of every sequence,
    /// stacked: `[total_tokens, hidden]`, sequence after sequence, in input order.
    pub fn forward<R>(
        &mut self,
        batch: &[&[u32]],
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, ModelError> {
        let h = self.cfg.hidden_size;
        let vocab = self.word.len() / h;
        self.lens.clear();
        self.lens.extend(batch.iter().map(|s| s.len()));
        let total: usize = self.lens.iter().sum();
        if total == 0 {
            return Ok(f(&[]));
        }
        if let Some(long) = batch
            .iter()
            .find(|s| s.len() > self.cfg.max_position_embeddings)
        {
            return Err(ModelError::Inference(format!(
                "sequence of {} tokens is longer than the model's {} positions",
                long.len(),
                self.cfg.max_position_embeddings
            )));
        }

        // Embeddings: word + position + type 0, then LayerNorm.
        let mut x = Vec::with_capacity(total * h);
        for seq in batch {
            for (pos, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    return Err(ModelError::Inference(format!(
                        "token id {id} is outside the vocabulary of {vocab}"
                    )));
                }
                let w = &self.word[id * h..(id + 1) * h];
                let p = &self.position_and_type[pos * h..(pos + 1) * h];
                x.extend(w.iter().zip(p).map(|(a, b)| a + b));
            }
        }
        kernels::layer_norm(
            &mut x,
            &self.emb_norm.gamma,
            &self.emb_norm.beta,
            self.eps(),
        );

        let shape = AttentionShape {
            heads: self.cfg.num_attention_heads,
            head_dim: h / self.cfg.num_attention_heads,
        };
        let eps = self.eps();
        let mut x = Tensor::from_vec(x, (total, h), &Device::Cpu)?;
        for layer in &self.layers {
            // Attention: one fused projection, then each sequence with itself.
            let qkv = linear(&x, &layer.qkv_w)?;
            let mut ctx = vec![0.0f32; total * h];
            with_slice(&qkv, |qkv| {
                attention_split(
                    shape,
                    qkv,
                    &layer.qkv_b,
                    &self.lens,
                    &mut self.scratch,
                    &mut ctx,
                    self.threads,
                )
            })?;
            drop(qkv);
            let ctx = Tensor::from_vec(ctx, (total, h), &Device::Cpu)?;
            let h1 = linear(&ctx, &layer.attn_out_w)?;
            drop(ctx);
            h1.inplace_op2(
                &x,
                &AddNorm {
                    bias: &layer.attn_out_b,
                    norm: &layer.attn_norm,
                    eps,
                    threads: self.threads,
                },
            )?;

            // Feed-forward.
            let up = linear(&h1, &layer.up_w)?;
            up.inplace_op1(&BiasActivation {
                bias: &layer.up_b,
                act: self.cfg.activation,
                threads: self.threads,
            })?;
            let down = linear(&up, &layer.down_w)?;
            drop(up);
            down.inplace_op2(
                &h1,
                &AddNorm {
                    bias: &layer.down_b,
                    norm: &layer.out_norm,
                    eps,
                    threads: self.threads,
                },
            )?;
            x = down;
        }
        with_slice(&x, f)
    }

    fn eps(&self) -> f32 {
        self.cfg.layer_norm_eps
    }
}
