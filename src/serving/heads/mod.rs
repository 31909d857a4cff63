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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map};
use utoipa::ToSchema;

use super::{Caller, Core, Input, Item, ServeRequest};
use crate::auth::{Principal, SCOPE_ADMIN};
use crate::cache::CachedOutput;
use crate::error::{ApiError, ErrorKind};
use crate::models::logreg;
use crate::models::text::EncodeError;
use crate::registry::VersionState;
use crate::spec::manifest::{sha256_file, FileEntry, HeadSpec, Manifest, Task, MANIFEST_FILE};

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

/// Most trainings whose status is kept (the oldest finished ones are forgotten first).
pub const MAX_KEPT: usize = 256;

/// A training and who started it.
#[derive(Debug)]
struct Entry {
    training: Training,
    /// The principal that started it (`Principal::sub`); `None` when the request had none.
    owner: Option<String>,
}

/// Trainings of this server, by id (kept in memory, at most `MAX_KEPT` finished ones).
#[derive(Debug, Default)]
pub struct Trainings {
    map: Mutex<HashMap<String, Entry>>,
    order: Mutex<std::collections::VecDeque<String>>,
}

impl Trainings {
    /// Record a new running training of `owner`, unless its model is training already or
    /// `MAX_RUNNING` trainings run (checked and inserted under one lock).
    fn start(&self, t: Training, owner: Option<String>) -> Result<(), ApiError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let running: Vec<&str> = map
            .values()
            .filter(|e| e.training.status == "running")
            .map(|e| e.training.model.as_str())
            .collect();
        if running.contains(&t.model.as_str()) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("a head for `{}` is training already", t.model),
            ));
        }
        if running.len() >= MAX_RUNNING {
            let mut e = ApiError::new(
                ErrorKind::Unavailable,
                format!("{MAX_RUNNING} trainings are running; try again later"),
            );
            e.retry_after_s = Some(30);
            return Err(e);
        }
        Self::insert(&mut map, &self.order, Entry { training: t, owner });
        Ok(())
    }

    /// Add `entry`, forgetting the oldest finished trainings beyond `MAX_KEPT`.
    fn insert(
        map: &mut HashMap<String, Entry>,
        order: &Mutex<std::collections::VecDeque<String>>,
        entry: Entry,
    ) {
        let mut order = order.lock().unwrap_or_else(|e| e.into_inner());
        order.push_back(entry.training.id.clone());
        map.insert(entry.training.id.clone(), entry);
        while order.len() > MAX_KEPT {
            let Some(pos) = order
                .iter()
                .position(|id| map.get(id).is_none_or(|e| e.training.status != "running"))
            else {
                break;
            };
            if let Some(id) = order.remove(pos) {
                map.remove(&id);
            }
        }
    }

    /// Training `id` of `model`, if `who` may see it: its owner, an admin, or anyone when
    /// the server has no principals (`who` is `None`). Another principal's is not found, as
    /// jobs and files are.
    pub fn get(&self, model: &str, id: &str, who: Option<&Principal>) -> Option<Training> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|e| e.training.model == model && visible_to(e.owner.as_deref(), who))
            .map(|e| e.training.clone())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Training)) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(id) {
            f(&mut e.training);
        }
    }

    fn running(&self) -> Vec<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|e| e.training.status == "running")
            .map(|e| e.training.model.clone())
            .collect()
    }
}

/// Whether `who` may see a training started by `owner`: the same principal or an admin (as
/// `JobRecord::visible_to`); without a principal on either side, anyone.
fn visible_to(owner: Option<&str>, who: Option<&Principal>) -> bool {
    match (owner, who) {
        (_, None) => true,
        (owner, Some(who)) => {
            owner.is_none_or(|o| o == who.sub) || who.scopes.iter().any(|s| s == SCOPE_ADMIN)
        }
    }
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

fn check(
    core: &Core,
    principal: Option<&crate::auth::Principal>,
    model: &str,
    req: HeadRequest,
) -> Result<Plan, ApiError> {
    if !crate::spec::manifest::is_valid_id(model) {
        return Err(ApiError::invalid(
            "id",
            "a model id is letters, digits, `.`, `_` or `-`, starting with a letter or digit",
        ));
    }
    let share = req.validation_split.unwrap_or(0.2);
    if !(0.0..=0.5).contains(&share) {
        return Err(ApiError::invalid(
            "validation_split",
            "must be between 0 and 0.5",
        ));
    }
    let c = req.regularization.unwrap_or(1.0);
    if !(c.is_finite() && c > 0.0 && c <= 1e6) {
        return Err(ApiError::invalid(
            "regularization",
            "must be above 0 and at most 1000000 (inverse strength, scikit-learn's C)",
        ));
    }
    if req.examples.len() > MAX_EXAMPLES {
        return Err(ApiError::too_large(
            "examples",
            format!("{} examples; at most {MAX_EXAMPLES}", req.examples.len()),
        ));
    }
    for (i, e) in req.examples.iter().enumerate() {
        if e.text.is_empty() || e.text.len() > MAX_TEXT_BYTES {
            return Err(ApiError::invalid(
                format!("examples[{i}].text"),
                format!("must be 1 to {MAX_TEXT_BYTES} bytes"),
            ));
        }
        let chars = e.label.chars().count();
        if chars == 0 || chars > MAX_LABEL_CHARS {
            return Err(ApiError::invalid(
                format!("examples[{i}].label"),
                format!("must be 1 to {MAX_LABEL_CHARS} characters"),
            ));
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &req.examples {
        *counts.entry(e.label.as_str()).or_default() += 1;
    }
    if counts.len() < 2 || counts.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "examples",
            format!(
                "{} distinct labels; a head needs 2 to {MAX_LABELS}",
                counts.len()
            ),
        ));
    }
    if let Some((label, n)) = counts.iter().find(|(_, &n)| n < MIN_PER_LABEL) {
        return Err(ApiError::invalid(
            "examples",
            format!("label `{label}` has {n} examples; each label needs at least {MIN_PER_LABEL}"),
        ));
    }
    let classes: Vec<String> = counts.keys().map(|s| s.to_string()).collect();
    let labels = req
        .examples
        .iter()
        .map(|e| classes.iter().position(|c| *c == e.label).unwrap_or(0))
        .collect();
    // The base: an embedding model, loaded.
    let (base_id, base_version) = match req.base.split_once('@') {
        Some((id, v)) => (id, Some(v)),
        None => (req.base.as_str(), None),
    };
    if base_id == model {
        return Err(ApiError::invalid("base", "the base must be another model"));
    }
    if let Some(p) = principal {
        if !p.may_use(base_id) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("this token may not use model `{base_id}`"),
            ));
        }
    }
    let rec = core
        .registry
        .get(base_id)
        .ok_or_else(|| ApiError::invalid("base", format!("no model `{base_id}`")))?;
    let version = match base_version {
        Some(v) => semver::Version::parse(v)
            .map_err(|_| ApiError::invalid("base", format!("`{v}` is not a version")))?,
        None => rec.default_version.clone(),
    };
    let vr = rec.versions.get(&version).ok_or_else(|| {
        ApiError::invalid(
            "base",
            format!("model `{base_id}` has no version {version}"),
        )
    })?;
    if vr.manifest.task != Task::Embedding
        || vr.manifest.format != crate::spec::manifest::Format::Safetensors
    {
        return Err(ApiError::invalid(
            "base",
            format!("`{base_id}` is not an embedding model"),
        ));
    }
    let VersionState::Ready(handle) = &vr.state else {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            format!("base model `{base_id}` version {version} is not loaded"),
        ));
    };
    let frontend = handle.frontend().clone();
    // The model to write: new, or a classifier already.
    if let Some(existing) = core.registry.get(model) {
        if existing
            .versions
            .values()
            .any(|v| v.manifest.task != Task::Classification)
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("model `{model}` exists and is not a classifier"),
            ));
        }
    }
    // Checked again when the training is recorded (`Trainings::start`), after tokenizing;
    // here so a request that cannot run now is refused before that work.
    let running = core.heads.running();
    if running.iter().any(|m| m == model) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("a head for `{model}` is training already"),
        ));
    }
    if running.len() >= MAX_RUNNING {
        let mut e = ApiError::new(
            ErrorKind::Unavailable,
            format!("{MAX_RUNNING} trainings are running; try again later"),
        );
        e.retry_after_s = Some(30);
        return Err(e);
    }
    Ok(Plan {
        model: model.to_string(),
        base: vr.manifest.clone(),
        base_dir: vr.dir.clone(),
        frontend,
        truncate: req.truncate.unwrap_or(true),
        texts: req.examples.into_iter().map(|e| e.text).collect(),
        labels,
        classes,
        share,
        c,
    })
}

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
fn chunks(inputs: &[Vec<u32>], budget: usize, max_inputs: usize) -> Vec<std::ops::Range<usize>> {
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
        let budget = TRAIN_CHUNK * plan.base.max_input_length.max(1);
        let max_inputs = plan.base.max_inputs.clamp(1, 64);
        let total = examples.len();
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(total);
        for start in (0..total).step_by(TOKENIZE_BLOCK) {
            let end = (start + TOKENIZE_BLOCK).min(total);
            let block: Vec<Vec<u32>> = match &examples {
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
                        Item::Output(CachedOutput::Vector(v)) => vectors.push(v.to_vec()),
                        _ => return Err(ApiError::internal("the base model answered no vector")),
                    }
                }
                let done = vectors.len() as f64 / total as f64;
                self.heads.update(id, |t| t.progress = 0.8 * done);
            }
        }
        // 2. Fit on the training split, off the runtime.
        self.heads.update(id, |t| t.stage = "fitting");
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
        // 3. Write the version, manifest last; 4. load it.
        self.heads.update(id, |t| {
            t.stage = "writing";
            t.progress = 0.9;
        });
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
        self.heads.update(id, |t| {
            t.stage = "loading";
            t.progress = 0.95;
        });
        let v = manifest.version.to_string();
        self.load_version(&plan.model, &v).await?;
        Ok((v, metrics))
    }
}

/// The next version of `model`: 1.0.0 for a new one, else the next minor of the highest seen
/// (registered or in the repository).
fn next_version(core: &Core, models_dir: &Path, model: &str) -> semver::Version {
    let mut seen: Vec<semver::Version> = core
        .registry
        .get(model)
        .map(|r| r.versions.keys().cloned().collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(models_dir.join(model)) {
        seen.extend(
            entries
                .flatten()
                .filter_map(|e| semver::Version::parse(&e.file_name().to_string_lossy()).ok()),
        );
    }
    match seen.into_iter().max() {
        Some(v) => semver::Version::new(v.major, v.minor + 1, 0),
        None => semver::Version::new(1, 0, 0),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_version(
    base: &Manifest,
    base_dir: &Path,
    dir: &Path,
    model: &str,
    version: semver::Version,
    first: bool,
    classes: Vec<String>,
    metrics: &HeadMetrics,
    weights: &[f32],
    bias: &[f32],
) -> Result<Manifest, ApiError> {
    let io = |e: std::io::Error| ApiError::internal(format!("writing {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for f in &base.files {
        let from = base
            .path_of(base_dir, &f.path)
            .map_err(ApiError::internal)?;
        let to = crate::spec::manifest::safe_join(dir, &f.path).map_err(ApiError::internal)?;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io)?;
        }
    }
    let head_file = "head.safetensors";
    crate::models::classify::save_head(&dir.join(head_file), weights, bias)
        .map_err(ApiError::internal)?;
    let mut files = base.files.clone();
    files.push(FileEntry {
        path: head_file.into(),
        sha256: sha256_file(&dir.join(head_file)).map_err(io)?,
    });
    let mut m = base.clone();
    m.id = model.to_string();
    m.version = version;
    m.default = first;
    m.task = Task::Classification;
    m.description = Some(format!(
        "a classification head ({}) on {}@{}, trained through the API",
        classes.join(", "),
        base.id,
        base.version
    ));
    m.signature = None;
    m.files = files;
    m.head = Some(HeadSpec {
        base_model: base.id.clone(),
        base_version: base.version.to_string(),
        weights: head_file.into(),
        classes,
        metrics: Some(json!(metrics)),
    });
    m.check().map_err(ApiError::internal)?;
    std::fs::write(dir.join(MANIFEST_FILE), m.to_yaml()).map_err(io)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_requests_stay_within_a_small_batch_of_tokens() {
        let len = |n: usize| vec![7u32; n];
        // Long examples: two at a time (a budget of two 256-token inputs).
        let long: Vec<Vec<u32>> = (0..5).map(|_| len(256)).collect();
        assert_eq!(chunks(&long, 512, 64), vec![0..2, 2..4, 4..5]);
        // Short ones: as many as the budget holds, at most max_inputs.
        let short: Vec<Vec<u32>> = (0..100).map(|_| len(10)).collect();
        assert_eq!(chunks(&short, 512, 64), vec![0..51, 51..100]);
        assert_eq!(chunks(&short, 512, 16)[0], 0..16);
        // Mixed, every example once, in order; one over the budget goes alone.
        let mixed = vec![len(10), len(600), len(10), len(500), len(10)];
        let got = chunks(&mixed, 512, 64);
        assert_eq!(got, vec![0..1, 1..2, 2..4, 4..5]);
        assert!(chunks(&[], 512, 64).is_empty());
    }

    #[test]
    fn split_holds_out_the_last_of_each_label() {
        let labels = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0];
        let (train, held) = split(&labels, 2, 0.2);
        // label 0: 7 examples, round(1.4) = 1 held (index 11); label 1: 5, round(1.0) = 1 (9).
        assert_eq!(held, vec![9, 11]);
        assert_eq!(train.len(), 10);
        let (_, none) = split(&labels, 2, 0.0);
        assert!(none.is_empty());
        // At least one held out, and at least one kept.
        let (train, held) = split(&[0, 0, 1, 1], 2, 0.01);
        assert_eq!((train, held), (vec![0, 2], vec![1, 3]));
    }

    #[test]
    fn finished_trainings_are_forgotten_oldest_first() {
        let t = Trainings::default();
        let training = |i: usize, status| Training {
            id: format!("t{i}"),
            model: "m".into(),
            base_model: "b".into(),
            base_version: "1.0.0".into(),
            status,
            stage: "done",
            progress: 1.0,
            examples: 10,
            classes: vec![],
            version: None,
            metrics: None,
            error: None,
        };
        t.start(training(0, "running"), None).unwrap();
        for i in 1..MAX_KEPT + 10 {
            let mut map = t.map.lock().unwrap();
            let training = training(i, "completed");
            Trainings::insert(
                &mut map,
                &t.order,
                Entry {
                    training,
                    owner: None,
                },
            );
        }
        assert_eq!(t.map.lock().unwrap().len(), MAX_KEPT);
        assert!(
            t.get("m", "t0", None).is_some(),
            "a running training is kept"
        );
        assert!(t.get("m", "t1", None).is_none() && t.get("m", "t10", None).is_none());
        assert!(t.get("m", &format!("t{}", MAX_KEPT + 9), None).is_some());
        assert!(t.get("other", "t0", None).is_none(), "ids are per model");
        // One running training per model, at most MAX_RUNNING in all.
        let e = t.start(training(1000, "running"), None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        let mut other = training(1001, "running");
        other.model = "n".into();
        t.start(other, None).unwrap();
        let mut third = training(1002, "running");
        third.model = "o".into();
        assert_eq!(
            t.start(third, None).unwrap_err().kind,
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn a_training_is_seen_by_its_owner_and_admins_only() {
        let principal = |sub: &str, scopes: &[&str]| Principal {
            sub: sub.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            tier: None,
            models: None,
            anonymous: false,
        };
        let t = Trainings::default();
        t.start(
            Training {
                id: "t".into(),
                model: "m".into(),
                base_model: "b".into(),
                base_version: "1.0.0".into(),
                status: "running",
                stage: "embedding",
                progress: 0.0,
                examples: 10,
                classes: vec![],
                version: None,
                metrics: None,
                error: None,
            },
            Some("alice".into()),
        )
        .unwrap();
        let (alice, bob) = (principal("alice", &["train"]), principal("bob", &["train"]));
        let admin = principal("root", &["admin"]);
        assert!(t.get("m", "t", Some(&alice)).is_some());
        assert!(t.get("m", "t", Some(&bob)).is_none(), "another principal's");
        assert!(t.get("m", "t", Some(&admin)).is_some());
        assert!(
            t.get("m", "t", None).is_some(),
            "a server without principals"
        );
    }

    #[test]
    fn metrics_follow_their_definitions() {
        let classes = vec!["a".to_string(), "b".into(), "c".into()];
        let (acc, per) = evaluate(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 1], &classes);
        assert!((acc - 0.6).abs() < 1e-12);
        assert_eq!(per[0].precision, 1.0);
        assert_eq!(per[0].recall, 0.5);
        assert!((per[0].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(per[1].precision, 0.5);
        assert_eq!(per[1].recall, 1.0);
        assert_eq!((per[2].f1, per[2].support), (0.0, 1));
    }
}
