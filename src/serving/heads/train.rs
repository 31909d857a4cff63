//! A training's run: tokenizing and embedding its examples on the background lane, fitting the
//! head, writing the version and loading it.

use std::sync::Arc;

use serde_json::Map;

use super::check::check;
use super::write::{next_version, write_version};
use super::{evaluate, split, HeadMetrics, HeadRequest, Plan, Training};
use crate::error::ApiError;
use crate::models::logreg;
use crate::models::text::EncodeError;
use crate::serving::{Caller, Core, Input, Item, ServeRequest};
use crate::spec::manifest::Manifest;

/// Longest inputs per embedding request of a training (shorter ones go more at a time, within
/// as many tokens, see `chunks`), one request in flight at a time: the engine's small
/// background batch. The batcher fills background batches while interactive
/// traffic has been quiet for `BACKGROUND_QUIET`, and an interactive request that arrives
/// during one waits for all of it: with larger requests queued, a training of long examples
/// kept the CPU in 32-input batches (seconds each) and interactive embeddings waited a batch
/// each (15 s p50 on two busy cores, against 20 ms idle; 0.6 s with this, one small batch
/// of 256-token inputs on those cores). With at most this many of the training's inputs
/// queued, a batch of it is at most this large, whatever the batcher decides.
pub const TRAIN_CHUNK: usize = crate::engine::batcher::BACKGROUND_BUSY_ITEMS;

/// The training's embedding requests: consecutive examples of at most `budget` tokens in all
/// (`TRAIN_CHUNK` inputs of the base's longest) and `max_inputs` examples, at least one each.
/// So a request of short sentences still carries many, and none computes for longer than a
/// small background batch.
pub(super) fn chunks(
    inputs: &[Vec<u32>],
    budget: usize,
    max_inputs: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, ids) in inputs.iter().enumerate() {
        if i > start && (tokens + ids.len() > budget || i - start >= max_inputs) {
            out.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += ids.len();
    }
    if start < inputs.len() {
        out.push(start..inputs.len());
    }
    out
}

/// Texts of this many bytes in all are tokenized on the async runtime; more on the blocking
/// pool (20,000 examples of 8 KB take seconds).
const INLINE_TOKENIZE_BYTES: usize = 64 * 1024;

/// Examples tokenized in the training task at a time (on the blocking pool), between requests
/// to the engine.
const TOKENIZE_BLOCK: usize = 64;

/// A training's examples: token ids (checked before the 202, with `truncate: false`), or texts
/// the training tokenizes a block at a time as it embeds them (`truncate: true` cuts long
/// ones, so none can fail on its length; 20,000 examples of 8 KB take longer to tokenize than
/// a request may last).
enum Examples {
    Tokens(Vec<Vec<u32>>),
    Texts(Vec<String>),
}

impl Examples {
    fn len(&self) -> usize {
        match self {
            Examples::Tokens(t) => t.len(),
            Examples::Texts(t) => t.len(),
        }
    }
}

/// Each example's token ids with the base model's tokenizer: cut to its `max_input_length`
/// with `truncate`, else a longer example is a 400 naming its index (`first` is the index of
/// `texts[0]`).
fn tokenize(
    frontend: &crate::models::Frontend,
    texts: &[String],
    truncate: bool,
    first: usize,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let codec = frontend
        .codec
        .as_ref()
        .ok_or_else(|| ApiError::internal("the base model has no tokenizer"))?;
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            codec.encode(text, truncate).map_err(|e| {
                let field = format!("examples[{}].text", first + i);
                let limit = codec.max_input_length();
                match e {
                    EncodeError::TooLong { tokens, .. } => ApiError::invalid(
                        field,
                        format!(
                            "{tokens} tokens; the base model takes at most {limit} \
                             (max_input_length); set truncate to true to cut longer examples"
                        ),
                    ),
                    EncodeError::TooManyBytes { bytes, .. } => ApiError::invalid(
                        field,
                        format!(
                            "{bytes} bytes, more than {limit} tokens can hold \
                             (max_input_length); set truncate to true to cut longer examples"
                        ),
                    ),
                    EncodeError::Tokenizer(msg) => ApiError::invalid(field, msg),
                }
            })
        })
        .collect()
}

impl Core {
    /// Check a training request and start it; answers the training's status. The caller must
    /// be allowed to use the base model.
    pub async fn start_training(
        self: &Arc<Self>,
        caller: Caller<'_>,
        model: &str,
        req: HeadRequest,
    ) -> Result<Training, ApiError> {
        let settings = self.load_settings()?;
        if settings.remote.is_some() {
            return Err(ApiError::invalid(
                "id",
                "this server's repository is an object store; heads are written to a local one",
            ));
        }
        let mut plan = check(self, caller.principal, model, req)?;
        let texts = std::mem::take(&mut plan.texts);
        let bytes: usize = texts.iter().map(String::len).sum();
        // Without truncation, every example's length is checked before the 202.
        let examples = if plan.truncate {
            Examples::Texts(texts)
        } else if bytes <= INLINE_TOKENIZE_BYTES {
            Examples::Tokens(tokenize(&plan.frontend, &texts, false, 0)?)
        } else {
            let frontend = plan.frontend.clone();
            Examples::Tokens(
                tokio::task::spawn_blocking(move || tokenize(&frontend, &texts, false, 0))
                    .await
                    .map_err(ApiError::internal)??,
            )
        };
        let training = Training {
            id: uuid::Uuid::new_v4().to_string(),
            model: plan.model.clone(),
            base_model: plan.base.id.clone(),
            base_version: plan.base.version.to_string(),
            status: "running",
            stage: "embedding",
            progress: 0.0,
            examples: examples.len(),
            classes: plan.classes.clone(),
            version: None,
            metrics: None,
            error: None,
        };
        let owner = caller.principal.map(|p| p.sub.clone());
        self.heads.start(training.clone(), owner)?;
        let core = self.clone();
        let id = training.id.clone();
        tokio::spawn(async move {
            let outcome = core.train(&id, plan, examples).await;
            core.heads.update(&id, |t| match outcome {
                Ok((version, metrics)) => {
                    t.status = "completed";
                    t.stage = "done";
                    t.progress = 1.0;
                    t.version = Some(version);
                    t.metrics = Some(metrics);
                }
                Err(e) => {
                    tracing::warn!(training = %t.id, error = %e.message, "head training failed");
                    t.status = "failed";
                    t.error = Some(e.message);
                }
            });
        });
        Ok(training)
    }

    async fn train(
        self: &Arc<Self>,
        id: &str,
        plan: Plan,
        examples: Examples,
    ) -> Result<(String, HeadMetrics), ApiError> {
        // 1. Tokenize (unless done before the 202) and embed every example with the base model
        // on the background lane, one small request at a time (`chunks`).
        let vectors = self.embed_examples(id, &plan, &examples).await?;
        // 2. Fit on the training split, off the runtime.
        self.heads.update(id, |t| t.stage = "fitting");
        let (fit, metrics) = fit_head(&plan, &vectors).await?;
        // 3. Write the version, manifest last; 4. load it.
        self.heads.update(id, |t| {
            t.stage = "writing";
            t.progress = 0.9;
        });
        let manifest = self.write_head(&plan, &fit, &metrics).await?;
        self.heads.update(id, |t| {
            t.stage = "loading";
            t.progress = 0.95;
        });
        let v = manifest.version.to_string();
        self.load_version(&plan.model, &v).await?;
        Ok((v, metrics))
    }

    /// Every example's embedding by the base model, in order: tokenized `TOKENIZE_BLOCK` at a
    /// time (unless done before the 202) and embedded on the background lane in requests of
    /// `chunks`, training `id`'s progress going up to 0.8.
    async fn embed_examples(
        self: &Arc<Self>,
        id: &str,
        plan: &Plan,
        examples: &Examples,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let budget = TRAIN_CHUNK * plan.base.max_input_length.max(1);
        let max_inputs = plan.base.max_inputs.clamp(1, 64);
        let total = examples.len();
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(total);
        for start in (0..total).step_by(TOKENIZE_BLOCK) {
            let end = (start + TOKENIZE_BLOCK).min(total);
            let block: Vec<Vec<u32>> = match examples {
                Examples::Tokens(all) => all[start..end].to_vec(),
                Examples::Texts(texts) => {
                    let (frontend, texts) = (plan.frontend.clone(), texts[start..end].to_vec());
                    tokio::task::spawn_blocking(move || tokenize(&frontend, &texts, true, start))
                        .await
                        .map_err(ApiError::internal)??
                }
            };
            for range in chunks(&block, budget, max_inputs) {
                let (first, ids) = (start + range.start, &block[range]);
                let req = ServeRequest {
                    model: plan.base.id.clone(),
                    version: Some(plan.base.version.to_string()),
                    inputs: ids.iter().cloned().map(Input::Tokens).collect(),
                    params: Map::new(),
                    cache: true,
                    logprobs: None,
                    headers: Default::default(),
                    user: None,
                    background: true,
                };
                let (_, answer) = self.infer(Caller::default(), req).await;
                let answer = answer.map_err(|e| {
                    ApiError::new(
                        e.kind,
                        format!("embedding examples {first}..: {}", e.message),
                    )
                })?;
                for item in answer.items {
                    match item {
                        Item::Vector(v) => vectors.push(v.to_vec()),
                        _ => return Err(ApiError::internal("the base model answered no vector")),
                    }
                }
                let done = vectors.len() as f64 / total as f64;
                self.heads.update(id, |t| t.progress = 0.8 * done);
            }
        }
        Ok(vectors)
    }

    /// Write the fitted head as the next version of the plan's model (on the blocking pool);
    /// answers the version's manifest.
    async fn write_head(
        &self,
        plan: &Plan,
        fit: &logreg::LogReg,
        metrics: &HeadMetrics,
    ) -> Result<Manifest, ApiError> {
        let settings = self.load_settings()?.clone();
        let version = next_version(self, &settings.models_dir, &plan.model);
        let dir = settings
            .models_dir
            .join(&plan.model)
            .join(version.to_string());
        let first = self
            .registry
            .get(&plan.model)
            .is_none_or(|r| r.versions.is_empty());
        let manifest = {
            let (base, base_dir, dir) = (plan.base.clone(), plan.base_dir.clone(), dir.clone());
            let (model, classes, metrics) =
                (plan.model.clone(), plan.classes.clone(), metrics.clone());
            let (w, b): (Vec<f32>, Vec<f32>) = (
                fit.weights.iter().map(|&v| v as f32).collect(),
                fit.bias.iter().map(|&v| v as f32).collect(),
            );
            tokio::task::spawn_blocking(move || {
                write_version(
                    &base, &base_dir, &dir, &model, version, first, classes, &metrics, &w, &b,
                )
            })
            .await
            .map_err(ApiError::internal)??
        };
        Ok(manifest)
    }
}

/// Fit the head on the training split (on the blocking pool) and measure it on the held-out
/// one.
async fn fit_head(
    plan: &Plan,
    vectors: &[Vec<f32>],
) -> Result<(logreg::LogReg, HeadMetrics), ApiError> {
    let (train, held) = split(&plan.labels, plan.classes.len(), plan.share);
    let k = plan.classes.len();
    let c = plan.c;
    let (fit, held_x, held_y) = {
        let x: Vec<Vec<f32>> = train.iter().map(|&i| vectors[i].clone()).collect();
        let y: Vec<usize> = train.iter().map(|&i| plan.labels[i]).collect();
        let held_x: Vec<Vec<f32>> = held.iter().map(|&i| vectors[i].clone()).collect();
        let held_y: Vec<usize> = held.iter().map(|&i| plan.labels[i]).collect();
        let fit =
            tokio::task::spawn_blocking(move || logreg::fit(&x, &y, k, c, 1e-9, 5000, |_| {}))
                .await
                .map_err(ApiError::internal)?;
        (fit, held_x, held_y)
    };
    let predicted: Vec<usize> = held_x
        .iter()
        .map(|x| {
            let p = fit.predict_proba(x);
            (0..k).fold(0, |best, j| if p[j] > p[best] { j } else { best })
        })
        .collect();
    let (accuracy, per_class) = evaluate(&held_y, &predicted, &plan.classes);
    let metrics = HeadMetrics {
        accuracy: (!held.is_empty()).then_some(accuracy),
        per_class: if held.is_empty() { vec![] } else { per_class },
        train_examples: train.len(),
        validation_examples: held.len(),
        regularization: c,
        iterations: fit.iterations,
    };
    Ok((fit, metrics))
}
