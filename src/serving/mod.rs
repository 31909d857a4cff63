//! The serving core: what every protocol adapter calls. No axum, tonic or wire types here.
//!
//! A request (model, optional version, typed inputs, parameters, options) goes through the same
//! steps whatever protocol it came in on: resolve the model version, check that the caller may
//! use it, validate and tokenize (`validate`, off the async runtime when large), look up the
//! per-input cache, charge the token budget, run the engine (drained, or as a stream of text
//! deltas), store what was computed, and account for it (tokens, cost, usage, inference
//! metrics) when the answer — or the stream — ends.

pub mod admin;
pub mod breaker;
pub mod classify;
mod fallback;
mod fleet;
pub mod heads;
pub mod params;
mod shadow;
pub mod stream;
pub mod tasks;
pub mod tensor;
pub mod ticket;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::cache::{CacheKey, CachedOutput, ResponseCache};
use crate::engine::{Output, RunStats, Work};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Metrics, ModelLabel};
use crate::models::{ChatMessage, FinishReason, Generation};
use crate::ratelimit::RateLimits;
use crate::registry::{Registry, Resolved};
use crate::usage::{now_unix, UsageEvent, UsageStore};
pub use fallback::Route;
pub use stream::{AnswerStream, StreamItem};
pub use ticket::{Entry, Gate, Hold, Refusal, Ticket, Who};
pub use validate::Valid;

/// One input, as a protocol adapter hands it over.
#[derive(Debug, Clone)]
pub enum Input {
    /// Text: a sentence to embed, or a raw prompt.
    Text(String),
    /// A conversation; the model's chat template is applied.
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
    /// Anything else the native API received (echo models take any JSON; other tasks read a
    /// list of message objects as a conversation and refuse the rest).
    Json(Value),
}

impl Input {
    /// The native API's reading of a JSON input.
    pub fn from_json(v: Value) -> Input {
        match v {
            Value::String(s) => Input::Text(s),
            other => Input::Json(other),
        }
    }

    fn into_json(self) -> Value {
        match self {
            Input::Text(s) => Value::String(s),
            Input::Chat(m) => serde_json::to_value(m).unwrap_or(Value::Null),
            Input::Tokens(t) => Value::from(t),
            Input::Json(v) => v,
        }
    }

    /// Bytes of text, without allocating (decides where validation runs).
    fn text_bytes(&self) -> usize {
        match self {
            Input::Text(s) => s.len(),
            Input::Chat(m) => m.iter().map(|m| m.role.len() + m.content.len()).sum(),
            Input::Tokens(t) => t.len() * 4,
            Input::Json(v) => json_text_bytes(v),
        }
    }
}

fn json_text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(json_text_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + json_text_bytes(v)).sum(),
        _ => 8,
    }
}

/// A request to the core.
#[derive(Debug, Clone)]
pub struct ServeRequest {
    pub model: String,
    /// A pinned version; `None` for the model's default.
    pub version: Option<String>,
    pub inputs: Vec<Input>,
    /// Model parameters, checked against the manifest's schema.
    pub params: Map<String, Value>,
    /// Use the response cache (when the request is deterministic).
    pub cache: bool,
    /// Record log-probabilities of generated tokens, with this many alternatives.
    pub logprobs: Option<usize>,
    /// The request's headers (a sticky traffic policy reads its key from one); empty when the
    /// protocol has none.
    pub headers: http::HeaderMap,
    /// The client's end-user id (OpenAI's `user`), the sticky key when the header is absent.
    pub user: Option<String>,
    /// Run on the engine's background lane (batch jobs, head training): behind interactive
    /// requests, never refused for a full queue.
    pub background: bool,
}

impl ServeRequest {
    /// The key a sticky policy hashes: the named header, else `user`, else the principal.
    fn sticky_key(&self, header: &str, principal: Option<&Principal>) -> Option<String> {
        self.headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .or_else(|| self.user.clone().filter(|u| !u.is_empty()))
            .or_else(|| principal.map(|p| p.sub.clone()))
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub principal: Option<&'a Principal>,
}

/// One input's output in an answer, computed or from the cache — the core's own type (the
/// cache keeps `CachedOutput`s: vectors and complete generations only).
#[derive(Debug, Clone)]
pub enum Item {
    /// An embedding, or a classifier's raw scores before shaping.
    Vector(Arc<[f32]>),
    /// Generated text, with its tokens and finish reason.
    Generation(Arc<Generation>),
    /// Anything else: an echo's JSON, shaped labels.
    Value(Value),
}

impl Item {
    pub fn generation(&self) -> Option<&Arc<Generation>> {
        match self {
            Item::Generation(g) => Some(g),
            _ => None,
        }
    }

    /// What the cache may keep of this item: vectors and complete generations.
    fn cached(&self) -> Option<CachedOutput> {
        match self {
            Item::Vector(v) => Some(CachedOutput::Vector(v.clone())),
            Item::Generation(g) if g.finish_reason != FinishReason::Cancelled => {
                Some(CachedOutput::Generation(g.clone()))
            }
            _ => None,
        }
    }
}

impl From<CachedOutput> for Item {
    fn from(c: CachedOutput) -> Self {
        match c {
            CachedOutput::Vector(v) => Item::Vector(v),
            CachedOutput::Generation(g) => Item::Generation(g),
        }
    }
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub model: String,
    pub version: String,
    /// One per input, in order.
    pub items: Vec<Item>,
    pub stats: RunStats,
    /// Time in the server, from the request's arrival to its answer.
    pub latency: Duration,
    /// Inputs answered from the cache.
    pub cache_hits: usize,
    /// Whether the cache was consulted (`Some(true)`: every input was a hit).
    pub cache: Option<bool>,
    /// Tokens of every input, cached ones included (what a client is told it used).
    pub prompt_tokens: usize,
    /// Tokens of every generated output, cached ones included.
    pub completion_tokens: usize,
    /// Which target answered, after how many attempts, and what was tried before it.
    pub route: fallback::Route,
}

/// What the core needs; built once by the server and shared by every adapter.
pub struct Core {
    pub registry: Arc<Registry>,
    pub cache: Option<Arc<ResponseCache>>,
    pub limits: Option<Arc<RateLimits>>,
    pub metrics: Arc<Metrics>,
    pub usage: Arc<UsageStore>,
    pub monitoring: bool,
    pub request_timeout: Duration,
    /// Traffic policies: the routing step of requests that pin no version.
    pub traffic: Arc<crate::traffic::Traffic>,
    /// What loading a version needs (admin loads, repository polling).
    pub loading: admin::Loading,
    /// The other replicas, through Redis (none configured: this replica acts alone).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// A circuit breaker per target.
    pub breakers: breaker::Breakers,
    /// Breaker settings where a manifest gives none (`model.breaker`).
    pub breaker_defaults: crate::spec::manifest::BreakerSettings,
    /// Classification heads being trained or trained (`POST /models/{id}/heads`).
    pub heads: heads::Trainings,
    /// Drift windows of every model version (fed when monitoring is on).
    pub drift: Arc<crate::drift::DriftStore>,
    /// Admission and the books of every request, whatever carried it.
    pub gate: Arc<Gate>,
}

/// How long a background request may wait for the engine: behind interactive traffic it can
/// wait long, but a worker that never answers must not hold a job forever.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(600);

/// Requests with at most this many bytes of text are validated on the async runtime (a few
/// microseconds of tokenization); larger ones on the blocking pool.
const INLINE_VALIDATION_BYTES: usize = 4096;

/// Where a request stands after the steps before the engine.
struct Prepared {
    resolved: Resolved,
    valid_work: Option<Work>,
    keys: Vec<CacheKey>,
    items: Vec<Option<Item>>,
    missing: Vec<usize>,
    cache_used: bool,
    arrived: Instant,
    prompt_tokens: usize,
    /// A shadow copy of the request, when the policy picked one.
    shadow: Option<shadow::ShadowJob>,
    /// How outputs become the answer (classification, zero-shot).
    shaping: Option<classify::Shaping>,
    /// Tokens of each input (drift's length histogram), and unknown tokens of each.
    lengths: Vec<usize>,
    unknown: Vec<usize>,
    /// The request runs on the background lane.
    background: bool,
}

impl Core {
    /// The label of the version a request went to, for the HTTP metrics and the access log.
    fn label(resolved: &Resolved) -> ModelLabel {
        ModelLabel {
            model: resolved.manifest.id.clone(),
            version: resolved.manifest.version.to_string(),
            ..Default::default()
        }
    }

    /// The routing step (a pinned version bypasses the model's traffic policy) and the version
    /// it picked, with the shadow copy the policy asks for.
    fn plan_route(
        &self,
        caller: Caller<'_>,
        req: &ServeRequest,
    ) -> Result<(Resolved, Option<shadow::ShadowJob>), ApiError> {
        // The routing step: a pinned version bypasses the model's traffic policy.
        let (model, version, shadow_version) = match req.version.as_deref() {
            Some(_) => (req.model.clone(), req.version.clone(), None),
            None => match self.traffic.plan(
                &req.model,
                |header| req.sticky_key(header, caller.principal),
                rand::random::<f64>,
            ) {
                Some(plan) => (plan.model, plan.version, plan.shadow),
                None => (req.model.clone(), None, None),
            },
        };
        let resolved = self.registry.resolve(&model, version.as_deref())?;
        let shadow = shadow_version.map(|version| shadow::ShadowJob {
            model: req.model.clone(),
            version,
            inputs: req.inputs.clone(),
            params: req.params.clone(),
        });
        Ok((resolved, shadow))
    }

    /// Resolve, check access, validate, look up the cache, charge the token budget.
    async fn prepare(
        &self,
        caller: Caller<'_>,
        req: ServeRequest,
        charge: bool,
    ) -> Result<Prepared, (Option<ModelLabel>, ApiError)> {
        let arrived = Instant::now();
        let (resolved, shadow) = self.plan_route(caller, &req).map_err(|e| (None, e))?;
        let label = Self::label(&resolved);
        let fail = |e: ApiError| (Some(label.clone()), e);
        if let Some(p) = caller.principal {
            if !p.may_use(&resolved.manifest.id) {
                return Err(fail(ApiError::new(
                    ErrorKind::Forbidden,
                    format!("this token may not use model `{}`", resolved.manifest.id),
                )));
            }
        }
        let manifest = resolved.manifest.clone();
        let frontend = resolved.handle.frontend().clone();
        let unk = frontend
            .codec
            .as_ref()
            .and_then(|c| c.token_id("[UNK]").or_else(|| c.token_id("<unk>")));
        let bytes: usize = req.inputs.iter().map(Input::text_bytes).sum();
        let (inputs, params, logprobs) = (req.inputs, req.params, req.logprobs);
        let background = req.background;
        // Tokenizing and templating a large input takes milliseconds to seconds: off the async
        // runtime, so /health and small requests never wait behind it.
        let valid = if bytes <= INLINE_VALIDATION_BYTES {
            validate::validate(&manifest, &frontend, inputs, &params, logprobs)
        } else {
            tokio::task::spawn_blocking(move || {
                validate::validate(&manifest, &frontend, inputs, &params, logprobs)
            })
            .await
            .map_err(|e| fail(ApiError::internal(e)))?
        }
        .map_err(fail)?;
        let n = valid.work.items();
        let shaping = valid.shaping.clone();
        let lengths: Vec<usize> = valid.inputs().iter().map(|ids| ids.len()).collect();
        let unknown: Vec<usize> = match unk {
            Some(u) => valid
                .inputs()
                .iter()
                .map(|ids| ids.iter().filter(|&&t| t == u).count())
                .collect(),
            None => vec![],
        };
        let prompt_tokens = valid.work.input_tokens();
        let cache = self.cache.as_ref().filter(|_| req.cache && valid.cacheable);
        let (id, version) = (&resolved.manifest.id, resolved.manifest.version.to_string());
        let keys: Vec<CacheKey> = match cache {
            Some(_) => valid
                .inputs()
                .iter()
                .map(|ids| CacheKey::new(id, &version, valid.kind, ids, &valid.key_params))
                .collect(),
            None => Vec::new(),
        };
        let mut items: Vec<Option<Item>> = vec![None; n];
        if let Some(cache) = cache {
            let found = futures::future::join_all(keys.iter().map(|k| cache.get(k))).await;
            for (slot, hit) in items.iter_mut().zip(found) {
                *slot = hit.map(|(v, _tier)| Item::from(v));
            }
        }
        let missing: Vec<usize> = (0..n).filter(|&i| items[i].is_none()).collect();
        let work = match missing.len() {
            0 => None,
            m if m == n => Some(valid.work),
            _ => Some(valid.work.subset(&missing)),
        };
        if charge {
            self.charge_tokens(caller, work.as_ref())
                .await
                .map_err(fail)?;
        }
        Ok(Prepared {
            resolved,
            valid_work: work,
            keys,
            items,
            missing,
            cache_used: cache.is_some(),
            arrived,
            prompt_tokens,
            shadow,
            shaping,
            lengths,
            unknown,
            background,
        })
    }

    /// Charge a generation's tokens (prompt + `max_tokens`) to the principal's budget.
    async fn charge_tokens(&self, caller: Caller<'_>, work: Option<&Work>) -> Result<(), ApiError> {
        let generates = matches!(
            work,
            Some(
                Work::Generate { .. }
                    | Work::Remote(crate::engine::remote::RemoteWork::Generate { .. })
            )
        );
        if let (true, Some(limits), Some(p), Some(w)) =
            (generates, &self.limits, caller.principal, work)
        {
            let tokens = u32::try_from(w.tokens()).unwrap_or(u32::MAX);
            if let Err(wait) = limits
                .charge_tokens(&p.sub, p.tier.as_deref(), tokens)
                .await
            {
                let mut e = ApiError::new(
                    ErrorKind::RateLimited,
                    "over this principal's generation token budget per minute (prompt + max_tokens)",
                );
                e.retry_after_s = Some(wait);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Run a request to its end, on the model it names or, when that fails for a reason worth
    /// another try, on its fallbacks (see `fallback`). Returns the label of the version that
    /// answered (once known) beside the outcome; the label carries tokens and cost for the
    /// access log and usage.
    pub async fn infer(
        self: &Arc<Self>,
        caller: Caller<'_>,
        req: ServeRequest,
    ) -> (Option<ModelLabel>, Result<Answer, ApiError>) {
        self.infer_routed(caller, req).await
    }

    /// One attempt on one prepared target: its computed answer.
    async fn run_prepared(
        &self,
        mut p: Prepared,
    ) -> (
        Prepared,
        ModelLabel,
        Result<RunStats, crate::engine::EngineError>,
    ) {
        let label = Self::label(&p.resolved);
        let mut stats = RunStats::default();
        if let Some(work) = p.valid_work.take() {
            let timeout = if p.background {
                BACKGROUND_TIMEOUT
            } else {
                self.request_timeout
            };
            match p
                .resolved
                .handle
                .infer_lane(work, timeout, p.background)
                .await
            {
                Ok(done) => {
                    stats = done.stats;
                    let computed = items_of(done.output);
                    self.store(&p, &computed).await;
                    let fresh: Vec<&Generation> = computed
                        .iter()
                        .filter_map(Item::generation)
                        .map(|g| g.as_ref())
                        .collect();
                    if self.monitoring {
                        self.metrics.observe_inference(&label, &stats, &fresh);
                    }
                    for (&slot, item) in p.missing.iter().zip(computed) {
                        p.items[slot] = Some(item);
                    }
                }
                Err(e) => return (p, label, Err(e)),
            }
        }
        (p, label, Ok(stats))
    }

    /// Put computed outputs in the cache (complete generations only).
    async fn store(&self, p: &Prepared, computed: &[Item]) {
        let Some(cache) = self.cache.as_ref().filter(|_| p.cache_used) else {
            return;
        };
        for (&slot, item) in p.missing.iter().zip(computed) {
            if let (Some(out), Some(key)) = (item.cached(), p.keys.get(slot)) {
                cache.put(key.clone(), out).await;
            }
        }
    }

    fn answer(
        &self,
        p: &Prepared,
        stats: RunStats,
        label: &mut ModelLabel,
    ) -> Result<Answer, ApiError> {
        let manifest = &p.resolved.manifest;
        label.batch_size = Some(stats.batch_size);
        label.tokens_input = stats.tokens_processed as u64;
        label.tokens_output = stats.tokens_generated as u64;
        label.cost = manifest
            .pricing
            .as_ref()
            .map(|pr| pr.cost(label.tokens_input, label.tokens_output))
            .unwrap_or(0.0);
        let n = p.items.len();
        let hits = n - p.missing.len();
        let remote = p.resolved.manifest.provider.is_some();
        let completion_tokens = p
            .items
            .iter()
            .flatten()
            .filter_map(Item::generation)
            .map(|g| g.token_count())
            .sum();
        // A remote model's provider counts the tokens (its `usage`).
        let prompt_tokens = if remote {
            stats.tokens_processed
        } else {
            p.prompt_tokens
        };
        let mut items: Vec<Item> = p.items.iter().flatten().cloned().collect();
        if let Some(shaping) = &p.shaping {
            items = shaping.apply(items)?;
        }
        Ok(Answer {
            prompt_tokens,
            completion_tokens,
            route: Route::default(),
            model: manifest.id.clone(),
            version: manifest.version.to_string(),
            items,
            stats,
            latency: p.arrived.elapsed(),
            cache_hits: hits,
            cache: p.cache_used.then_some(hits == n),
        })
    }

    /// Feed the version's drift windows: each input's token count, its embedding (embedding
    /// models), its top label and score (classifiers), its output length and finish reason
    /// (generation, streamed or not).
    fn observe_drift(&self, p: &Prepared, answer: &Answer) {
        let manifest = &p.resolved.manifest;
        let config = manifest.drift.clone().unwrap_or_default();
        let task = tasks::of(manifest.task);
        if !config.enabled || !task.drifts() {
            return;
        }
        let vectors = task.answers_vectors();
        let samples = answer
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                // An embedding model's vector of the input (a zero-shot answer's too).
                let vector = match p.items.get(i) {
                    Some(Some(Item::Vector(v))) if vectors => Some(v.to_vec()),
                    _ => None,
                };
                let label = match item {
                    Item::Value(Value::Array(ranked)) => ranked.first().and_then(|top| {
                        Some((top["label"].as_str()?.to_string(), top["score"].as_f64()?))
                    }),
                    _ => None,
                };
                let output = item.generation().map(|g| {
                    let why = match g.finish_reason {
                        FinishReason::Length => "length",
                        FinishReason::Stop => "stop",
                        FinishReason::Eos => "eos",
                        FinishReason::Cancelled => "cancelled",
                    };
                    (g.token_count(), why)
                });
                crate::drift::Sample {
                    tokens: p.lengths.get(i).copied().unwrap_or(0),
                    unknown: p.unknown.get(i).copied().unwrap_or(0),
                    vector,
                    label,
                    output,
                }
            })
            .collect();
        self.drift.observe(
            &manifest.id,
            &manifest.version.to_string(),
            &config,
            samples,
        );
    }

    /// Record usage for an answer whose accounting was deferred to its end (streams).
    pub(crate) fn record_usage(
        &self,
        label: &ModelLabel,
        principal: &str,
        latency: Duration,
        error: bool,
    ) {
        self.usage.record(
            &UsageEvent {
                model: &label.model,
                version: &label.version,
                principal,
                tokens_input: label.tokens_input,
                tokens_output: label.tokens_output,
                cost: label.cost,
                latency_ms: latency.as_secs_f64() * 1e3,
                error,
            },
            now_unix(),
        );
    }
}

/// The engine's output as items, one per computed input.
fn items_of(output: Output) -> Vec<Item> {
    match output {
        Output::Vectors(vs) => vs.into_iter().map(|v| Item::Vector(v.into())).collect(),
        Output::Generations(gs) => gs
            .into_iter()
            .map(|g| Item::Generation(Arc::new(g)))
            .collect(),
        Output::Values(vs) => vs.into_iter().map(Item::Value).collect(),
    }
}
