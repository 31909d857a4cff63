//! Classification heads trained from labelled examples (`POST /models/{id}/heads`).
//!
//! The request is checked first (at least 2 labels, `MIN_PER_LABEL` examples of each, size
//! limits, an embedding model as the base, and without `truncate` every example tokenized
//! within the base's input limit); then a task off the request path embeds every example with the base
//! model through the serving core (so cached vectors are reused), `TRAIN_CHUNK` at a time on
//! the engine's background lane (so interactive requests wait at most for one small batch),
//! fits a multinomial logistic regression on the blocking pool
//! (`models::logreg`), measures accuracy and per-class precision, recall and F1 on the held-out
//! split, and writes a new version of `{id}` into the repository — the base model's files
//! (hard links where the file system allows), the head in safetensors, a manifest with
//! `task: classification`, the base's id and version, the classes, the metrics and every
//! file's sha256, written last — then loads it like any version.
//!
//! The split is deterministic: for each label, the last `round(n · validation_split)` of its
//! examples (at least one when the split is above 0) are held out, in the order given.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::spec::manifest::Manifest;

mod check;
mod train;
mod trainings;
mod write;

#[cfg(test)]
mod tests;

pub use train::TRAIN_CHUNK;
pub use trainings::{Trainings, MAX_KEPT};

/// Fewest examples per label.
pub const MIN_PER_LABEL: usize = 5;
/// Most examples in one training.
pub const MAX_EXAMPLES: usize = 20_000;
/// Most labels.
pub const MAX_LABELS: usize = 256;
/// Most bytes in one example's text, and characters in a label.
pub const MAX_TEXT_BYTES: usize = 8192;
pub const MAX_LABEL_CHARS: usize = 128;
/// Most trainings running at once on this server.
pub const MAX_RUNNING: usize = 2;

/// A training request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadRequest {
    /// The embedding model to train on: `id` (its default version) or `id@version`.
    pub base: String,
    /// Labelled texts.
    pub examples: Vec<Example>,
    /// Share of each label's examples held out for the metrics (0 to 0.5; default 0.2).
    #[serde(default)]
    pub validation_split: Option<f64>,
    /// Inverse L2 regularisation strength, scikit-learn's `C` (default 1.0).
    #[serde(default)]
    pub regularization: Option<f64>,
    /// Cut examples longer than the base model's `max_input_length` tokens to it (default
    /// true); false refuses the request (400 naming the example) instead.
    #[serde(default)]
    pub truncate: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub text: String,
    pub label: String,
}

/// Precision, recall and F1 of one class on the held-out split.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Held-out examples of this class.
    pub support: usize,
}

/// What training measured.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct HeadMetrics {
    /// Held-out accuracy (`null` without a held-out split).
    pub accuracy: Option<f64>,
    pub per_class: Vec<ClassMetrics>,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub regularization: f64,
    /// Solver iterations.
    pub iterations: usize,
}

/// A training's status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Training {
    pub id: String,
    /// The classifier model this training gives a version.
    pub model: String,
    pub base_model: String,
    pub base_version: String,
    /// `running`, `completed` or `failed`.
    pub status: &'static str,
    /// `embedding`, `fitting`, `writing`, `loading`, `done`.
    pub stage: &'static str,
    /// 0 to 1.
    pub progress: f64,
    pub examples: usize,
    pub classes: Vec<String>,
    /// The version written (once completed).
    pub version: Option<String>,
    pub metrics: Option<HeadMetrics>,
    pub error: Option<String>,
}

/// The examples split: indices of the training and held-out examples.
pub fn split(labels: &[usize], classes: usize, share: f64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for idx in by_class {
        let n = idx.len();
        let mut h = (n as f64 * share).round() as usize;
        if share > 0.0 {
            h = h.max(1);
        }
        h = h.min(n.saturating_sub(1));
        train.extend_from_slice(&idx[..n - h]);
        held.extend_from_slice(&idx[n - h..]);
    }
    train.sort_unstable();
    held.sort_unstable();
    (train, held)
}

/// Accuracy and per-class precision, recall, F1 (0 where undefined, as scikit-learn does).
pub fn evaluate(
    truth: &[usize],
    predicted: &[usize],
    classes: &[String],
) -> (f64, Vec<ClassMetrics>) {
    let n = truth.len().max(1) as f64;
    let right = truth.iter().zip(predicted).filter(|(a, b)| a == b).count() as f64;
    let per_class = classes
        .iter()
        .enumerate()
        .map(|(c, label)| {
            let tp = truth
                .iter()
                .zip(predicted)
                .filter(|&(&t, &p)| t == c && p == c)
                .count();
            let fp = truth
                .iter()
                .zip(predicted)
                .filter(|&(&t, &p)| t != c && p == c)
                .count();
            let support = truth.iter().filter(|&&t| t == c).count();
            let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let (precision, recall) = (ratio(tp, tp + fp), ratio(tp, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                label: label.clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    (right / n, per_class)
}

/// A checked request: labels as class indices (classes sorted by name).
struct Plan {
    model: String,
    base: Arc<Manifest>,
    base_dir: std::path::PathBuf,
    /// The base model's tokenizer and input limit.
    frontend: Arc<crate::models::Frontend>,
    truncate: bool,
    texts: Vec<String>,
    labels: Vec<usize>,
    classes: Vec<String>,
    share: f64,
    c: f64,
}
