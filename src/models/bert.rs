//! BERT-family sentence embeddings (all-MiniLM-L6-v2 and kin): candle's `BertModel`, then the
//! pooling the model's sentence-transformers `1_Pooling/config.json` names, then L2
//! normalisation, so outputs match sentence-transformers.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

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

pub struct BertEmbedder {
    model: BertModel,
    pooling: Pooling,
    normalize: bool,
    device: Device,
    hidden_size: usize,
    pad_id: u32,
}

impl BertEmbedder {
    pub fn load(
        weights: &Path,
        config: &Path,
        pooling: Pooling,
        normalize: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let load = |e: &dyn std::fmt::Display| ModelError::Load(e.to_string());
        let cfg_text = std::fs::read_to_string(config).map_err(|e| load(&e))?;
        let cfg: Config = serde_json::from_str(&cfg_text)
            .map_err(|e| ModelError::Load(format!("{}: {e}", config.display())))?;
        let raw: serde_json::Value = serde_json::from_str(&cfg_text).map_err(|e| load(&e))?;
        let hidden_size = raw
            .get("hidden_size")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| ModelError::Load("config.json has no hidden_size".into()))?
            as usize;
        let pad_id = raw
            .get("pad_token_id")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        // Read into memory rather than mmap: the file was just hashed, and this keeps it safe
        // from being changed under a live model.
        let bytes = std::fs::read(weights).map_err(|e| load(&e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .map_err(|e| load(&e))?;
        let model = BertModel::load(vb, &cfg).map_err(|e| load(&e))?;
        Ok(Self {
            model,
            pooling,
            normalize,
            device: device.clone(),
            hidden_size,
            pad_id,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.hidden_size
    }
}

impl Embedder for BertEmbedder {
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
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
        let pooled = match self.pooling {
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
        let out = if self.normalize {
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
