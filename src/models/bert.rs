//! BERT-family sentence embeddings (all-MiniLM-L6-v2 and kin): on the CPU the padding-free
//! forward pass of [`super::bert_fast`], elsewhere candle's `BertModel`; then the pooling the model's sentence-transformers `1_Pooling/config.json` names, then L2
//! normalisation, so outputs match sentence-transformers.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use super::bert_fast::{FastBert, FastBertConfig};
use super::{Embedder, ModelError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

impl Pooling {
    /// Read a sentence-transformers pooling config.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
        let on = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        match (
            on("pooling_mode_mean_tokens"),
            on("pooling_mode_cls_token"),
            on("pooling_mode_max_tokens"),
        ) {
            (true, false, false) => Ok(Pooling::Mean),
            (false, true, false) => Ok(Pooling::Cls),
            (false, false, true) => Ok(Pooling::Max),
            _ => Err(ModelError::Load(format!(
                "{}: exactly one of mean, cls or max pooling is supported",
                path.display()
            ))),
        }
    }
}

/// candle-transformers' `BertModel` over a padded batch: the path for GPU devices, and the
/// baseline the CPU path is measured and tested against.
struct CandleBert {
    model: BertModel,
    device: Device,
    pad_id: u32,
}

enum Engine {
    /// The CPU forward pass without padding (`bert_fast`).
    Fast(Box<FastBert>),
    Candle(Box<CandleBert>),
}

pub struct BertEmbedder {
    engine: Engine,
    pooling: Pooling,
    normalize: bool,
    hidden_size: usize,
}

impl BertEmbedder {
    /// Load a BERT checkpoint: on the CPU the padding-free forward pass of `bert_fast`, on other
    /// devices (and for configurations it does not implement) candle-transformers' `BertModel`.
    pub fn load(
        weights: &Path,
        config: &Path,
        pooling: Pooling,
        normalize: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if !device.is_cpu() {
            return Self::load_candle(weights, config, pooling, normalize, device);
        }
        let (_, raw) = read_config(config)?;
        let cfg = match FastBertConfig::from_json(&raw) {
            Ok(cfg) => cfg,
            // What the CPU path does not implement (another activation, relative positions)
            // loads as it always has, with candle's `BertModel`.
            Err(e) => {
                tracing::info!(reason = %e, "BERT on candle's BertModel, not the CPU fast path");
                return Self::load_candle(weights, config, pooling, normalize, device);
            }
        };
        let bytes = read_weights(weights)?;
        let model = FastBert::load(&bytes, cfg)?;
        Ok(Self {
            hidden_size: model.hidden_size(),
            engine: Engine::Fast(Box::new(model)),
            pooling,
            normalize,
        })
    }

    /// Load with candle-transformers' `BertModel` on any device, padding each batch to its
    /// longest sequence (what [`BertEmbedder::load`] uses off the CPU; on the CPU, for
    /// comparisons).
    pub fn load_candle(
        weights: &Path,
        config: &Path,
        pooling: Pooling,
        normalize: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let load = |e: &dyn std::fmt::Display| ModelError::Load(e.to_string());
        let (cfg_text, raw) = read_config(config)?;
        let cfg: Config = serde_json::from_str(&cfg_text)
            .map_err(|e| ModelError::Load(format!("{}: {e}", config.display())))?;
        let hidden_size = raw
            .get("hidden_size")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| ModelError::Load("config.json has no hidden_size".into()))?
            as usize;
        let pad_id = raw
            .get("pad_token_id")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        let bytes = read_weights(weights)?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .map_err(|e| load(&e))?;
        let model = BertModel::load(vb, &cfg).map_err(|e| load(&e))?;
        Ok(Self {
            engine: Engine::Candle(Box::new(CandleBert {
                model,
                device: device.clone(),
                pad_id,
            })),
            pooling,
            normalize,
            hidden_size,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.hidden_size
    }
}

fn read_config(config: &Path) -> Result<(String, serde_json::Value), ModelError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| ModelError::Load(format!("{}: {e}", config.display())))?;
    let raw = serde_json::from_str(&text)
        .map_err(|e| ModelError::Load(format!("{}: {e}", config.display())))?;
    Ok((text, raw))
}

/// Read into memory rather than mmap: the file was just hashed, and this keeps it safe from
/// being changed under a live model.
fn read_weights(weights: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(weights).map_err(|e| ModelError::Load(format!("{}: {e}", weights.display())))
}

impl Embedder for BertEmbedder {
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        match &mut self.engine {
            Engine::Fast(model) => {
                let (h, pooling, normalize) = (self.hidden_size, self.pooling, self.normalize);
                model.forward(batch, |hidden| {
                    pool_stacked(hidden, batch, h, pooling, normalize)
                })
            }
            Engine::Candle(m) => m.embed(batch, self.pooling, self.normalize),
        }
    }
}

/// Pool the stacked hidden states (`[total_tokens, hidden]`, sequence after sequence) into one
/// vector per sequence, L2-normalised if asked. An empty sequence pools to zeros.
fn pool_stacked(
    hidden: &[f32],
    batch: &[&[u32]],
    h: usize,
    pooling: Pooling,
    normalize: bool,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(batch.len());
    let mut start = 0;
    for seq in batch {
        let rows = &hidden[start * h..(start + seq.len()) * h];
        start += seq.len();
        let mut v = vec![0.0f32; h];
        match pooling {
            Pooling::Mean => {
                for row in rows.chunks_exact(h) {
                    for (a, &x) in v.iter_mut().zip(row) {
                        *a += x;
                    }
                }
                let inv = 1.0 / seq.len().max(1) as f32;
                v.iter_mut().for_each(|a| *a *= inv);
            }
            Pooling::Cls => {
                if let Some(first) = rows.chunks_exact(h).next() {
                    v.copy_from_slice(first);
                }
            }
            Pooling::Max => {
                if !rows.is_empty() {
                    v.fill(f32::NEG_INFINITY);
                    for row in rows.chunks_exact(h) {
                        for (a, &x) in v.iter_mut().zip(row) {
                            *a = a.max(x);
                        }
                    }
                }
            }
        }
        if normalize {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
        }
        out.push(v);
    }
    out
}

impl CandleBert {
    fn embed(
        &mut self,
        batch: &[&[u32]],
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let n = batch.len();
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_id; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, seq) in batch.iter().enumerate() {
            ids[row * len..row * len + seq.len()].copy_from_slice(seq);
            mask[row * len..row * len + seq.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, h)
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let pooled = match pooling {
            Pooling::Mean => {
                let sum = hidden.broadcast_mul(&mask_f)?.sum(1)?;
                let count = mask_f.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                sum.broadcast_div(&count)?
            }
            Pooling::Cls => hidden.i((.., 0, ..))?.contiguous()?,
            Pooling::Max => {
                // Padded positions must never win the max.
                let neg = ((mask_f.ones_like()? - &mask_f)? * -1e9f64)?;
                hidden.broadcast_add(&neg)?.max(1)?
            }
        };
        let out = if normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(out.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    /// A tiny random BERT written to disk the way a real one is (config.json + safetensors).
    fn tiny_bert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let config = serde_json::json!({
            "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 32, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
            "model_type": "bert"
        });
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, config.to_string()).unwrap();
        let cfg: Config = serde_json::from_value(config).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        BertModel::load(vb, &cfg).unwrap();
        let weights = dir.join("model.safetensors");
        varmap.save(&weights).unwrap();
        (weights, cfg_path)
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    }

    #[test]
    fn padding_does_not_change_a_sentence_and_outputs_are_unit_length() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = tiny_bert(dir.path());
        let mut m = BertEmbedder::load(&w, &c, Pooling::Mean, true, &Device::Cpu).unwrap();
        assert_eq!(m.dimensions(), 16);
        let short: &[u32] = &[2, 5, 7, 3];
        let long: &[u32] = &[2, 9, 9, 4, 11, 6, 8, 3];
        let alone = m.embed(&[short]).unwrap();
        let batched = m.embed(&[long, short]).unwrap();
        assert_eq!(batched.len(), 2);
        assert!(
            cos(&alone[0], &batched[1]) > 0.99999,
            "padding leaked into the pooled vector"
        );
        for v in &batched {
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        assert!(
            cos(&batched[0], &batched[1]) < 0.9999,
            "different inputs, different vectors"
        );
        assert!(m.embed(&[]).unwrap().is_empty());
    }

    #[test]
    fn max_and_cls_pooling_ignore_padding_too() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = tiny_bert(dir.path());
        for pooling in [Pooling::Max, Pooling::Cls] {
            let mut m = BertEmbedder::load(&w, &c, pooling, false, &Device::Cpu).unwrap();
            let short: &[u32] = &[2, 5, 3];
            let long: &[u32] = &[2, 9, 9, 4, 11, 3];
            let alone = m.embed(&[short]).unwrap();
            let batched = m.embed(&[long, short]).unwrap();
            for (a, b) in alone[0].iter().zip(&batched[1]) {
                assert!((a - b).abs() < 1e-4, "{pooling:?}: {a} vs {b}");
            }
        }
    }

    /// Mixed lengths in mixed order, as the worker batches requests.
    fn mixed_batch() -> Vec<Vec<u32>> {
        (0..9u32)
            .map(|i| {
                let len = [3usize, 17, 8, 1, 30, 12, 2, 25, 9][i as usize];
                let mut s = vec![2u32];
                s.extend((0..len).map(|j| 4 + (i * 7 + j as u32 * 5) % 27));
                s.push(3);
                s
            })
            .collect()
    }

    #[test]
    fn cpu_path_matches_candles_padded_bert_model() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = tiny_bert(dir.path());
        let seqs = mixed_batch();
        // 125 tokens (below 128, the projections run transposed) and 375 (they do not).
        let small: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let big: Vec<&[u32]> = small.iter().chain(&small).chain(&small).copied().collect();
        for (batch, (pooling, normalize)) in [small, big].into_iter().cycle().zip([
            (Pooling::Mean, true),
            (Pooling::Mean, false),
            (Pooling::Mean, true),
            (Pooling::Cls, false),
            (Pooling::Max, true),
            (Pooling::Max, false),
        ]) {
            let mut fast = BertEmbedder::load(&w, &c, pooling, normalize, &Device::Cpu).unwrap();
            let mut reference =
                BertEmbedder::load_candle(&w, &c, pooling, normalize, &Device::Cpu).unwrap();
            assert!(matches!(fast.engine, Engine::Fast(_)));
            let got = fast.embed(&batch).unwrap();
            let want = reference.embed(&batch).unwrap();
            assert_eq!(got.len(), batch.len());
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.len(), 16);
                for (a, b) in g.iter().zip(r) {
                    assert!(
                        (a - b).abs() < 2e-5 * b.abs().max(1.0),
                        "{pooling:?} sequence {i}: {a} vs {b}"
                    );
                }
            }
            // Alone, and in another order, each sequence gets the same vector.
            let reversed: Vec<&[u32]> = batch.iter().rev().copied().collect();
            let again = fast.embed(&reversed).unwrap();
            for (i, v) in again.iter().rev().enumerate() {
                assert!(cos(v, &got[i]) > 0.99999);
            }
            for (i, &seq) in batch.iter().enumerate().take(9) {
                assert!(cos(&fast.embed(&[seq]).unwrap()[0], &got[i]) > 0.99999);
            }
        }
    }

    #[test]
    fn configurations_the_cpu_path_lacks_load_on_candle() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = tiny_bert(dir.path());
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&c).unwrap()).unwrap();
        cfg["hidden_act"] = "geluapproximate".into();
        std::fs::write(&c, cfg.to_string()).unwrap();
        let mut m = BertEmbedder::load(&w, &c, Pooling::Mean, true, &Device::Cpu).unwrap();
        assert!(matches!(m.engine, Engine::Candle(_)));
        assert_eq!(m.embed(&[&[2, 5, 3]]).unwrap()[0].len(), 16);
    }

    #[test]
    fn cpu_path_rejects_bad_input_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let (w, c) = tiny_bert(dir.path());
        let mut m = BertEmbedder::load(&w, &c, Pooling::Mean, true, &Device::Cpu).unwrap();
        assert!(
            m.embed(&[&[2, 99, 3]]).is_err(),
            "token outside the vocabulary"
        );
        let long = vec![5u32; 65];
        assert!(m.embed(&[&long]).is_err(), "longer than the positions");
        let out = m.embed(&[&[], &[2, 5, 3]]).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[0].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn pooling_config_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        std::fs::write(
            &p,
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        assert_eq!(Pooling::from_file(&p).unwrap(), Pooling::Cls);
        std::fs::write(
            &p,
            r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#,
        )
        .unwrap();
        assert!(Pooling::from_file(&p).is_err());
    }
}
