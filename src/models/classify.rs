//! BERT sequence classifiers (`BertForSequenceClassification` and kin, in safetensors): the
//! padding-free CPU encoder of [`super::bert_fast`], then the pooler (the `[CLS]` row through a
//! dense layer and tanh) and the classifier layer, giving one row of raw scores (logits) per
//! input. Turning logits into ranked `{label, score}`s (softmax, sigmoid, top-k) is the serving
//! side's (`serving::classify`), so cached logits serve any such request.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::bert_fast::{FastBert, FastBertConfig};
use super::{Embedder, ModelError};

/// What a classifier's `config.json` says about its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierInfo {
    /// Label names, by class index (`id2label`; `LABEL_i` where it names none).
    pub labels: Vec<String>,
    /// `problem_type: multi_label_classification`: each label scored on its own (sigmoid).
    pub multi_label: bool,
}

impl ClassifierInfo {
    /// Read `id2label`, `num_labels` and `problem_type` from a `config.json`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, ModelError> {
        let mut by_id: Vec<(usize, String)> = Vec::new();
        if let Some(map) = v.get("id2label").and_then(|m| m.as_object()) {
            for (k, name) in map {
                let id = k.parse::<usize>().map_err(|_| {
                    ModelError::Load(format!("config.json: id2label key {k:?} is not a number"))
                })?;
                let name = name.as_str().ok_or_else(|| {
                    ModelError::Load(format!("config.json: id2label[{k}] is not a string"))
                })?;
                by_id.push((id, name.to_string()));
            }
        }
        by_id.sort();
        let n = v
            .get("num_labels")
            .and_then(|n| n.as_u64())
            .map(|n| n as usize)
            .unwrap_or(by_id.len());
        let n = n.max(by_id.len());
        if n == 0 {
            return Err(ModelError::Load(
                "config.json names no labels (id2label or num_labels)".into(),
            ));
        }
        let mut labels: Vec<String> = (0..n).map(|i| format!("LABEL_{i}")).collect();
        for (id, name) in by_id {
            let slot = labels.get_mut(id).ok_or_else(|| {
                ModelError::Load(format!("config.json: id2label has id {id} of {n} labels"))
            })?;
            *slot = name;
        }
        let multi_label = match v.get("problem_type").and_then(|p| p.as_str()) {
            None | Some("single_label_classification") | Some("regression") => false,
            Some("multi_label_classification") => true,
            Some(other) => {
                return Err(ModelError::Load(format!(
                    "config.json: problem_type {other:?} is not supported"
                )))
            }
        };
        Ok(Self {
            labels,
            multi_label,
        })
    }
}

/// A dense layer `y = W x + b`, `W` row-major `[out, in]`.
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    inputs: usize,
}

impl Dense {
    fn load(
        tensors: &std::collections::HashMap<String, Tensor>,
        names: &[String],
        out: usize,
        inputs: usize,
    ) -> Result<Self, ModelError> {
        let name = names
            .iter()
            .find(|n| tensors.contains_key(&format!("{n}.weight")))
            .ok_or_else(|| ModelError::Load(format!("weights have no {}.weight", names[0])))?;
        let get = |suffix: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let full = format!("{name}.{suffix}");
            let t = tensors
                .get(&full)
                .ok_or_else(|| ModelError::Load(format!("weights have no {full}")))?;
            if t.dims() != shape {
                return Err(ModelError::Load(format!(
                    "{full}: shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        };
        Ok(Self {
            w: get("weight", &[out, inputs])?,
            b: get("bias", &[out])?,
            inputs,
        })
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.w
            .chunks_exact(self.inputs)
            .zip(&self.b)
            .map(|(row, b)| b + row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>())
            .collect()
    }
}

/// A BERT sequence classifier on the CPU; `embed` answers each input's logits.
pub struct BertClassifier {
    encoder: FastBert,
    pooler: Dense,
    classifier: Dense,
    info: ClassifierInfo,
}

impl BertClassifier {
    pub fn load(weights: &Path, config: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(config)
            .map_err(|e| ModelError::Load(format!("{}: {e}", config.display())))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Load(format!("{}: {e}", config.display())))?;
        Self::from_parts(
            &std::fs::read(weights)
                .map_err(|e| ModelError::Load(format!("{}: {e}", weights.display())))?,
            &raw,
        )
    }

    /// From the safetensors bytes and the parsed `config.json`.
    pub fn from_parts(bytes: &[u8], raw: &serde_json::Value) -> Result<Self, ModelError> {
        let info = ClassifierInfo::from_json(raw)?;
        let cfg = FastBertConfig::from_json(raw)?;
        let h = cfg.hidden_size;
        let model_type = cfg.model_type.clone().unwrap_or_else(|| "bert".into());
        let encoder = FastBert::load(bytes, cfg)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let pooler_names: Vec<String> = [format!("{model_type}."), "bert.".into(), String::new()]
            .iter()
            .map(|p| format!("{p}pooler.dense"))
            .collect();
        let pooler = Dense::load(&tensors, &pooler_names, h, h)?;
        let classifier = Dense::load(&tensors, &["classifier".into()], info.labels.len(), h)?;
        Ok(Self {
            encoder,
            pooler,
            classifier,
            info,
        })
    }

    pub fn info(&self) -> &ClassifierInfo {
        &self.info
    }
}

impl Embedder for BertClassifier {
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let h = self.encoder.hidden_size();
        let (pooler, classifier) = (&self.pooler, &self.classifier);
        self.encoder.forward(batch, |hidden| {
            let mut start = 0;
            batch
                .iter()
                .map(|seq| {
                    let cls = if seq.is_empty() {
                        vec![0.0; h]
                    } else {
                        hidden[start * h..(start + 1) * h].to_vec()
                    };
                    start += seq.len();
                    let pooled: Vec<f32> = pooler.apply(&cls).into_iter().map(f32::tanh).collect();
                    classifier.apply(&pooled)
                })
                .collect()
        })
    }
}

/// A linear head (trained by `POST /models/{id}/heads`) on an embedding model's vectors;
/// `embed` answers each input's logits.
pub struct HeadClassifier {
    base: super::bert::BertEmbedder,
    head: Dense,
    info: ClassifierInfo,
}

impl HeadClassifier {
    /// `head` holds `head.weight` `[classes, dim]` and `head.bias` `[classes]`.
    pub fn new(
        base: super::bert::BertEmbedder,
        head: &Path,
        classes: Vec<String>,
    ) -> Result<Self, ModelError> {
        let bytes = std::fs::read(head)
            .map_err(|e| ModelError::Load(format!("{}: {e}", head.display())))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let head = Dense::load(&tensors, &["head".into()], classes.len(), base.dimensions())?;
        Ok(Self {
            base,
            head,
            info: ClassifierInfo {
                labels: classes,
                multi_label: false,
            },
        })
    }

    pub fn info(&self) -> &ClassifierInfo {
        &self.info
    }
}

impl Embedder for HeadClassifier {
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let vectors = self.base.embed(batch)?;
        Ok(vectors.iter().map(|v| self.head.apply(v)).collect())
    }
}

/// Write a head's weights (`[classes, dim]` row-major, and biases) as safetensors.
pub fn save_head(path: &Path, weights: &[f32], bias: &[f32]) -> Result<(), ModelError> {
    let k = bias.len();
    let dim = weights.len() / k.max(1);
    let mut map = std::collections::HashMap::new();
    map.insert(
        "head.weight",
        Tensor::from_vec(weights.to_vec(), (k, dim), &Device::Cpu)?,
    );
    map.insert(
        "head.bias",
        Tensor::from_vec(bias.to_vec(), k, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_come_from_id2label_in_id_order() {
        let info = ClassifierInfo::from_json(&json!({
            "id2label": {"1": "positive", "0": "negative", "2": "neutral"},
            "num_labels": 3
        }))
        .unwrap();
        assert_eq!(info.labels, ["negative", "positive", "neutral"]);
        assert!(!info.multi_label);
        let info = ClassifierInfo::from_json(&json!({
            "num_labels": 2, "problem_type": "multi_label_classification"
        }))
        .unwrap();
        assert_eq!(info.labels, ["LABEL_0", "LABEL_1"]);
        assert!(info.multi_label);
    }

    /// The committed tiny classifier against its reference logits
    /// (`scripts/reference/classifier.py`), alone and batched.
    #[test]
    fn tiny_classifier_matches_the_reference_logits() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("classifier_reference.json")).unwrap(),
        )
        .unwrap();
        let tiny = dir.join("tiny_classifier");
        let mut m =
            BertClassifier::load(&tiny.join("model.safetensors"), &tiny.join("config.json"))
                .unwrap();
        assert_eq!(m.info().labels, ["sports", "cooking", "weather"]);
        let ids: Vec<Vec<u32>> = serde_json::from_value(reference["token_ids"].clone()).unwrap();
        let want: Vec<Vec<f64>> = serde_json::from_value(reference["logits"].clone()).unwrap();
        let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let got = m.embed(&batch).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), 3);
            for (a, b) in g.iter().zip(w) {
                assert!((f64::from(*a) - b).abs() < 1e-4, "sequence {i}: {a} vs {b}");
            }
            let alone = m.embed(&[batch[i]]).unwrap();
            for (a, b) in alone[0].iter().zip(g) {
                assert!((a - b).abs() < 1e-5, "alone {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_label_configs_are_refused() {
        assert!(ClassifierInfo::from_json(&json!({})).is_err());
        assert!(ClassifierInfo::from_json(&json!({"id2label": {"x": "a"}})).is_err());
        assert!(ClassifierInfo::from_json(&json!({"id2label": {"0": 3}})).is_err());
        assert!(
            ClassifierInfo::from_json(&json!({"id2label": {"5": "a"}, "num_labels": 2})).is_err(),
            "an id past num_labels"
        );
        assert!(ClassifierInfo::from_json(&json!({"num_labels": 2, "problem_type": "x"})).is_err());
    }
}
