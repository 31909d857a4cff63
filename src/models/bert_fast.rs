//! A BERT encoder forward pass for the CPU without padding: the tokens of every sequence in a
//! batch are stacked into one `[total_tokens, hidden]` matrix for the embeddings, LayerNorms
//! and all linear layers (query, key and value as one fused projection), and attention runs per
//! sequence, each sequence attending only to itself. Linear layers are candle matmuls (gemm);
//! the rest are the vectorised loops of [`super::kernels`].
//!
//! Loads the same safetensors weights as candle-transformers' `BertModel` (names with or
//! without a `bert.` prefix); token type ids are all zero, as the embedder has always used.

use std::collections::HashMap;

use candle_core::{DType, Device, Storage, Tensor};

use super::kernels::{self, AttentionScratch, AttentionShape};
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
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
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
    /// [hidden, 3 * hidden]: query, key, value side by side.
    qkv_w: Tensor,
    qkv_b: Vec<f32>,
    /// [hidden, hidden]
    attn_out_w: Tensor,
    attn_out_b: Vec<f32>,
    attn_norm: Norm,
    /// [hidden, intermediate]
    up_w: Tensor,
    up_b: Vec<f32>,
    /// [intermediate, hidden]
    down_w: Tensor,
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
    scratch: AttentionScratch,
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

    /// A `[out, in]` linear weight as a contiguous `[in, out]` matrix for `x.matmul(w)`.
    fn linear_t(&self, name: &str, out: usize, inp: usize) -> Result<Tensor, ModelError> {
        Ok(self.get(name, &[out, inp])?.t()?.contiguous()?)
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
            let qkv_w = Tensor::cat(&[q, k, v], 0)?.t()?.contiguous()?;
            let mut qkv_b = w.vec(&format!("{a}.query.bias"), h)?;
            qkv_b.extend(w.vec(&format!("{a}.key.bias"), h)?);
            qkv_b.extend(w.vec(&format!("{a}.value.bias"), h)?);
            layers.push(Layer {
                qkv_w,
                qkv_b,
                attn_out_w: w.linear_t(&format!("{p}.attention.output.dense.weight"), h, h)?,
                attn_out_b: w.vec(&format!("{p}.attention.output.dense.bias"), h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                up_w: w.linear_t(&format!("{p}.intermediate.dense.weight"), inter, h)?,
                up_b: w.vec(&format!("{p}.intermediate.dense.bias"), inter)?,
                down_w: w.linear_t(&format!("{p}.output.dense.weight"), h, inter)?,
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
            scratch: AttentionScratch::default(),
            lens: Vec::new(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The last hidden states of every token of every sequence, stacked: `[total_tokens,
    /// hidden]`, sequence after sequence, in input order.
    pub fn forward(&mut self, batch: &[&[u32]]) -> Result<Vec<f32>, ModelError> {
        let h = self.cfg.hidden_size;
        let inter = self.cfg.intermediate_size;
        let vocab = self.word.len() / h;
        self.lens.clear();
        self.lens.extend(batch.iter().map(|s| s.len()));
        let total: usize = self.lens.iter().sum();
        if total == 0 {
            return Ok(Vec::new());
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
        let act = self.cfg.activation;
        let mut x = Tensor::from_vec(x, (total, h), &Device::Cpu)?;
        for layer in &self.layers {
            // Attention.
            let qkv = x.matmul(&layer.qkv_w)?;
            let mut ctx = vec![0.0f32; total * h];
            with_slice(&qkv, |qkv| {
                kernels::attention(
                    shape,
                    qkv,
                    &layer.qkv_b,
                    &self.lens,
                    &mut self.scratch,
                    &mut ctx,
                )
            })?;
            drop(qkv);
            let ctx = Tensor::from_vec(ctx, (total, h), &Device::Cpu)?;
            let attn = ctx.matmul(&layer.attn_out_w)?;
            drop(ctx);
            let mut h1 = vec![0.0f32; total * h];
            with_slice(&attn, |attn| {
                with_slice(&x, |res| {
                    let n = &layer.attn_norm;
                    kernels::add_layer_norm(
                        attn,
                        &layer.attn_out_b,
                        res,
                        &n.gamma,
                        &n.beta,
                        eps,
                        &mut h1,
                    )
                })
            })??;
            drop(attn);
            let h1 = Tensor::from_vec(h1, (total, h), &Device::Cpu)?;

            // Feed-forward.
            let up = h1.matmul(&layer.up_w)?;
            let mut act_out = vec![0.0f32; total * inter];
            with_slice(&up, |up| match act {
                Activation::GeluErf => kernels::gelu_bias(up, &layer.up_b, &mut act_out),
                Activation::Relu => {
                    for (row_in, row_out) in
                        up.chunks_exact(inter).zip(act_out.chunks_exact_mut(inter))
                    {
                        for ((o, &v), &b) in row_out.iter_mut().zip(row_in).zip(&layer.up_b) {
                            *o = (v + b).max(0.0);
                        }
                    }
                }
            })?;
            drop(up);
            let act_t = Tensor::from_vec(act_out, (total, inter), &Device::Cpu)?;
            let down = act_t.matmul(&layer.down_w)?;
            drop(act_t);
            let mut out = vec![0.0f32; total * h];
            with_slice(&down, |down| {
                with_slice(&h1, |res| {
                    let n = &layer.out_norm;
                    kernels::add_layer_norm(
                        down,
                        &layer.down_b,
                        res,
                        &n.gamma,
                        &n.beta,
                        eps,
                        &mut out,
                    )
                })
            })??;
            x = Tensor::from_vec(out, (total, h), &Device::Cpu)?;
        }
        with_slice(&x, |x| x.to_vec())
    }

    fn eps(&self) -> f32 {
        self.cfg.layer_norm_eps
    }
}
