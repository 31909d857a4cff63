//! Shadow traffic: a share of a model's requests is run again on a shadow version after the
//! primary has answered; the shadow's answer is compared with the primary's (embeddings: cosine
//! similarity; generations: the same text; other outputs: equal) and discarded. It never delays
//! the primary (it starts once the answer is ready, on its own task) and it is dropped first
//! when the shadow version's queue is busy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::{items_of, validate, Answer, Core, Input, Item};

/// Vectors at least this similar count as the same answer.
pub const AGREE_COSINE: f32 = 0.999;

/// What the shadow needs: the request as it came, for another version of its model.
#[derive(Debug, Clone)]
pub struct ShadowJob {
    pub model: String,
    pub version: String,
    pub inputs: Vec<Input>,
    pub params: Map<String, Value>,
}

/// Whether two answers to the same input agree.
fn agree(primary: &Item, shadow: &Item) -> bool {
    match (primary, shadow) {
        (Item::Vector(a), Item::Vector(b)) => cosine(a, b) >= AGREE_COSINE,
        (Item::Generation(a), Item::Generation(b)) => a.text == b.text,
        (Item::Value(a), Item::Value(b)) => a == b,
        _ => false,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

impl Core {
    /// Start the shadow of a request whose primary answer is `primary` (never waits).
    pub(super) fn start_shadow(self: &Arc<Self>, job: ShadowJob, primary: &Answer) {
        let metrics = self.metrics.clone();
        let dropped = |why: &str| {
            tracing::debug!(model = %job.model, version = %job.version, why, "shadow dropped");
            metrics.observe_shadow(&job.model, &job.version, "dropped", None);
        };
        let resolved = match self.registry.resolve(&job.model, Some(&job.version)) {
            Ok(r) => r,
            Err(_) => return dropped("not ready"),
        };
        // Busy: the shadow would queue behind (or in front of) real traffic.
        if resolved.handle.queue_len() >= resolved.manifest.batching.max_batch_size.max(1) {
            return dropped("queue busy");
        }
        let primary_items = primary.items.clone();
        let primary_latency = primary.latency;
        let timeout = self.request_timeout;
        tokio::spawn(async move {
            let started = Instant::now();
            let ShadowJob {
                model,
                version,
                inputs,
                params,
            } = job;
            let (manifest, frontend) = (
                resolved.manifest.clone(),
                resolved.handle.frontend().clone(),
            );
            let valid = tokio::task::spawn_blocking(move || {
                validate::validate(&manifest, &frontend, inputs, &params, None)
            })
            .await;
            let result = match valid {
                Ok(Ok(valid)) => resolved
                    .handle
                    .infer(valid.work, timeout)
                    .await
                    .ok()
                    .map(|done| items_of(done.output)),
                _ => None,
            };
            let took: Duration = started.elapsed();
            match result {
                Some(items) => {
                    let same = items.len() == primary_items.len()
                        && primary_items.iter().zip(&items).all(|(a, b)| agree(a, b));
                    let verdict = if same { "agree" } else { "disagree" };
                    metrics.observe_shadow(
                        &model,
                        &version,
                        verdict,
                        Some((primary_latency, took)),
                    );
                }
                None => metrics.observe_shadow(&model, &version, "error", None),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{FinishReason, Generation};

    #[test]
    fn agreement_by_output_kind() {
        let v = |x: &[f32]| Item::Vector(x.to_vec().into());
        assert!(agree(&v(&[1.0, 0.0]), &v(&[2.0, 0.0])));
        assert!(!agree(&v(&[1.0, 0.0]), &v(&[0.0, 1.0])));
        assert!(!agree(&v(&[1.0]), &v(&[1.0, 0.0])));
        let g = |t: &str| {
            Item::Generation(Arc::new(Generation {
                text: t.into(),
                tokens: vec![],
                finish_reason: FinishReason::Length,
                time_to_first_token: 0.0,
                duration: 0.0,
                logprobs: Vec::new(),
                counted_tokens: 0,
            }))
        };
        assert!(agree(&g("a b"), &g("a b")));
        assert!(!agree(&g("a b"), &g("a c")));
        assert!(agree(
            &Item::Value(Value::from(1)),
            &Item::Value(Value::from(1))
        ));
        assert!(!agree(&Item::Value(Value::from(1)), &g("1")));
    }
}
