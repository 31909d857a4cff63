//! Classification, as one module: the parameters a classifier takes (`top_k`,
//! `function_to_apply`) and zero-shot classification on embedding models
//! (`candidate_labels`, `hypothesis_template`), their validation, and the shaping of outputs
//! into `{"label", "score"}` lists, highest score first.
//!
//! The engine computes what is cacheable — a classifier's raw scores (logits), an embedding
//! model's vectors for the inputs and the candidate labels — and the shaping runs on the answer,
//! so a cached row serves requests with any `top_k` or `function_to_apply`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::Item;
use crate::error::ApiError;
use crate::spec::manifest::{ParamSpec, ParamType};

/// Most candidate labels in one zero-shot request.
pub const MAX_CANDIDATE_LABELS: usize = 64;

/// How raw scores become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Softmax,
    Sigmoid,
    /// The raw scores.
    None,
}

impl Function {
    pub(crate) fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "softmax" => Ok(Function::Softmax),
            "sigmoid" => Ok(Function::Sigmoid),
            "none" => Ok(Function::None),
            _ => Err(ApiError::invalid(
                "parameters.function_to_apply",
                "must be softmax, sigmoid or none",
            )),
        }
    }

    /// Scores from raw scores (computed in f64).
    pub fn apply(self, logits: &[f32]) -> Vec<f64> {
        let x: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        match self {
            Function::None => x,
            Function::Sigmoid => x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            Function::Softmax => {
                let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|v| v / sum).collect()
            }
        }
    }
}

/// What to do with the engine's outputs before they are answered.
#[derive(Debug, Clone)]
pub enum Shaping {
    /// A classifier's logits → ranked labels.
    Classify {
        labels: Arc<[String]>,
        function: Function,
        top_k: usize,
    },
    /// An embedding model's vectors: the first `inputs` are the inputs, the rest the candidate
    /// labels (in order); each input's labels ranked by cosine similarity.
    ZeroShot { inputs: usize, labels: Vec<String> },
}

/// A built-in parameter's spec (the task modules describe theirs).
pub(crate) fn spec(
    name: &str,
    kind: ParamType,
    default: Option<Value>,
    max: Option<f64>,
) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind,
        default,
        min: matches!(kind, ParamType::Integer | ParamType::StringList).then_some(1.0),
        max,
        description: None,
    }
}

/// The texts embedded for zero-shot candidate labels.
pub fn hypotheses(labels: &[String], template: Option<&str>) -> Vec<String> {
    labels
        .iter()
        .map(|l| match template {
            Some(t) => t.replacen("{}", l, 1),
            None => l.clone(),
        })
        .collect()
}

fn vector(item: &Item) -> Result<&[f32], ApiError> {
    match item {
        Item::Vector(v) => Ok(v),
        _ => Err(ApiError::internal("expected a vector output")),
    }
}

fn ranked(mut pairs: Vec<(&str, f64)>, top_k: usize) -> Value {
    // Highest first; ties keep label order (a stable sort).
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
    pairs.truncate(top_k);
    Value::Array(
        pairs
            .into_iter()
            .map(|(label, score)| json!({"label": label, "score": score}))
            .collect(),
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

impl Shaping {
    /// The answer's items, shaped: one `[{"label", "score"}, ...]` per input.
    pub fn apply(&self, items: Vec<Item>) -> Result<Vec<Item>, ApiError> {
        match self {
            Shaping::Classify {
                labels,
                function,
                top_k,
            } => items
                .iter()
                .map(|item| {
                    let logits = vector(item)?;
                    if logits.len() != labels.len() {
                        return Err(ApiError::internal("a classifier row of the wrong size"));
                    }
                    let scores = function.apply(logits);
                    let pairs = labels.iter().map(String::as_str).zip(scores).collect();
                    Ok(Item::Value(ranked(pairs, *top_k)))
                })
                .collect(),
            Shaping::ZeroShot { inputs, labels } => {
                if items.len() != inputs + labels.len() {
                    return Err(ApiError::internal("zero-shot outputs of the wrong count"));
                }
                let (texts, hyps) = items.split_at(*inputs);
                let hyps = hyps.iter().map(vector).collect::<Result<Vec<_>, _>>()?;
                texts
                    .iter()
                    .map(|item| {
                        let v = vector(item)?;
                        let pairs = labels
                            .iter()
                            .map(String::as_str)
                            .zip(hyps.iter().map(|h| cosine(v, h)))
                            .collect();
                        Ok(Item::Value(ranked(pairs, labels.len())))
                    })
                    .collect()
            }
        }
    }
}

/// The native output schema of a classifier (and of zero-shot answers).
pub fn output_schema() -> Value {
    json!({"type": "array", "items": {"type": "array", "items": {
        "type": "object", "required": ["label", "score"],
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}}
    }}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec_item(v: &[f32]) -> Item {
        Item::Vector(v.to_vec().into())
    }

    fn scores(v: &Value) -> Vec<(String, f64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["label"].as_str().unwrap().to_string(),
                    x["score"].as_f64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn functions_match_their_definitions() {
        let s = Function::Softmax.apply(&[1.0, 2.0, 3.0]);
        let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
        let sum: f64 = e.iter().sum();
        for (a, b) in s.iter().zip(e) {
            assert!((a - b / sum).abs() < 1e-12);
        }
        let g = Function::Sigmoid.apply(&[0.0, 2.0]);
        assert!((g[0] - 0.5).abs() < 1e-12 && (g[1] - 1.0 / (1.0 + (-2f64).exp())).abs() < 1e-12);
        assert_eq!(Function::None.apply(&[-1.5]), vec![-1.5]);
        // Large logits do not overflow.
        assert!(Function::Softmax.apply(&[1000.0, 0.0])[0] > 0.999);
        assert!(Function::parse("tanh").is_err());
    }

    #[test]
    fn classify_ranks_highest_first_and_cuts_at_top_k() {
        let shaping = Shaping::Classify {
            labels: vec!["a".to_string(), "b".into(), "c".into()].into(),
            function: Function::None,
            top_k: 2,
        };
        let out = shaping
            .apply(vec![
                vec_item(&[0.5, 2.0, -1.0]),
                vec_item(&[3.0, 1.0, 4.0]),
            ])
            .unwrap();
        let Item::Value(first) = &out[0] else {
            panic!()
        };
        assert_eq!(
            scores(first),
            [("b".to_string(), 2.0), ("a".to_string(), 0.5)]
        );
        let Item::Value(second) = &out[1] else {
            panic!()
        };
        assert_eq!(scores(second)[0].0, "c");
        assert!(
            shaping.apply(vec![vec_item(&[1.0])]).is_err(),
            "wrong width"
        );
    }

    #[test]
    fn zero_shot_ranks_labels_by_cosine() {
        let shaping = Shaping::ZeroShot {
            inputs: 2,
            labels: vec!["x".into(), "y".into()],
        };
        let out = shaping
            .apply(vec![
                vec_item(&[1.0, 0.1]),
                vec_item(&[0.0, -2.0]),
                vec_item(&[2.0, 0.0]),
                vec_item(&[0.0, 1.0]),
            ])
            .unwrap();
        let Item::Value(first) = &out[0] else {
            panic!()
        };
        let s = scores(first);
        assert_eq!(s[0].0, "x");
        assert!((s[0].1 - 1.0 / (1.01f64).sqrt()).abs() < 1e-6);
        let Item::Value(second) = &out[1] else {
            panic!()
        };
        let s = scores(second);
        assert_eq!((s[0].0.as_str(), s[1].0.as_str()), ("x", "y"));
        assert!((s[1].1 + 1.0).abs() < 1e-9 && s[0].1.abs() < 1e-9);
        assert!(shaping.apply(vec![vec_item(&[1.0, 0.0])]).is_err());
    }

    #[test]
    fn hypotheses_fill_the_template() {
        let labels = vec!["sports".to_string(), "cooking".into()];
        assert_eq!(
            hypotheses(&labels, Some("This text is about {}.")),
            ["This text is about sports.", "This text is about cooking."]
        );
        assert_eq!(hypotheses(&labels, None), labels);
    }
}
