//! `POST /models/{id}/predict`: the native inference API.
//!
//! Validation happens here, before queueing: the request becomes a `ValidRequest` (only
//! `validate` makes one), holding token ids that are within the model's limits, so the engine
//! never sees bad input.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath};
use super::params::{self, ValidParams};
use crate::auth::Principal;
use crate::cache::{CacheKey, CachedOutput};
use crate::engine::{Output, RunStats, Work};
use crate::error::{ApiError, ErrorEnvelope, ErrorKind};
use crate::metrics::ModelLabel;
use crate::models::generate::GenParams;
use crate::models::sampling::SamplingParams;
use crate::models::text::EncodeError;
use crate::models::{ChatMessage, FinishReason, Frontend};
use crate::registry::manifest::{Manifest, Task};
use crate::server::AppState;

/// A prediction request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// The inputs: for embedding models, strings; for text generation, strings (raw prompts)
    /// or lists of `{role, content}` messages (the model's chat template is applied); for echo,
    /// any JSON. A single value is taken as a list of one.
    #[schema(value_type = InputsDoc)]
    pub inputs: Value,
    /// Model parameters; see `GET /models/{id}` for names, types, defaults and ranges.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

/// The documented shape of `inputs` (parsing keeps a `Value`: echo models take any JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum InputsDoc {
    /// One input, taken as a list of one.
    One(InputDoc),
    /// One output per input, in order.
    Many(Vec<InputDoc>),
}

/// One input: a string (text, or a raw prompt), or a conversation (text generation).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum InputDoc {
    Text(String),
    Conversation(Vec<ChatMessage>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    /// One output per input: a vector (embedding), a string (text generation), or the input
    /// itself (echo).
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<Value>,
    pub model: String,
    pub model_version: String,
    pub metadata: PredictMetadata,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PredictMetadata {
    /// Input tokens the model processed.
    pub tokens_processed: usize,
    /// Tokens generated (text generation).
    pub tokens_generated: usize,
    /// Time in the server, from the request's arrival to its answer.
    pub latency_ms: f64,
    /// Time spent waiting for a batch.
    pub queue_ms: f64,
    /// Time of the batch's compute.
    pub compute_ms: f64,
    /// Inputs in the batch this request ran in.
    pub batch_size: usize,
    /// Per output, why generation ended: length, stop, eos or cancelled (text generation).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub finish_reasons: Option<Vec<FinishReason>>,
    /// Every output came from the response cache.
    pub cached: bool,
    /// Outputs that came from the cache (the others were computed; the token counts above are
    /// for those only).
    pub cache_hits: usize,
}

/// A request that passed validation; only `validate` makes one.
pub struct ValidRequest {
    work: Work,
    /// Deterministic: embeddings always, generation when greedy or seeded.
    cacheable: bool,
    /// Separates tasks in cache keys.
    kind: &'static str,
    /// The parameters that change the output, canonically encoded (for cache keys).
    key_params: Vec<u8>,
}

impl ValidRequest {
    /// Each input's token ids (the canonical form the cache keys on).
    fn inputs(&self) -> Vec<&[u32]> {
        match &self.work {
            Work::Embed { inputs } => inputs.iter().map(Vec::as_slice).collect(),
            Work::Generate { prompts, .. } => prompts.iter().map(Vec::as_slice).collect(),
            Work::Echo { .. } => Vec::new(),
        }
    }
}

#[utoipa::path(
    post,
    path = "/models/{id}/predict",
    params(("id" = String, Path, description = "Model id")),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "Outputs, one per input", body = PredictResponse),
        (status = 400, description = "Malformed JSON, wrong types, empty inputs, parameter out of range, input too long", body = ErrorEnvelope),
        (status = 404, description = "Unknown model", body = ErrorEnvelope),
        (status = 413, description = "Body or number of inputs over the limit", body = ErrorEnvelope),
        (status = 503, description = "Queue full or model not ready (see Retry-After)", body = ErrorEnvelope),
        (status = 504, description = "No answer within server.request_timeout_ms", body = ErrorEnvelope),
        (status = 500, description = "Inference failed", body = ErrorEnvelope),
    ),
    tag = "inference"
)]
pub async fn predict(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Response {
    let p = principal.map(|e| e.0);
    respond(run(&state, &id, None, p.as_ref(), no_cache(&headers), req).await)
}

#[utoipa::path(
    post,
    path = "/models/{id}/versions/{version}/predict",
    params(
        ("id" = String, Path, description = "Model id"),
        ("version" = String, Path, description = "Model version (semver)"),
    ),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "Outputs, one per input", body = PredictResponse),
        (status = 400, description = "Invalid request", body = ErrorEnvelope),
        (status = 404, description = "Unknown model or version", body = ErrorEnvelope),
        (status = 413, description = "Body or number of inputs over the limit", body = ErrorEnvelope),
        (status = 503, description = "Queue full or model not ready (see Retry-After)", body = ErrorEnvelope),
        (status = 504, description = "No answer within server.request_timeout_ms", body = ErrorEnvelope),
        (status = 500, description = "Inference failed", body = ErrorEnvelope),
    ),
    tag = "inference"
)]
pub async fn predict_version(
    State(state): State<AppState>,
    ApiPath((id, version)): ApiPath<(String, String)>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Response {
    let p = principal.map(|e| e.0);
    respond(
        run(
            &state,
            &id,
            Some(&version),
            p.as_ref(),
            no_cache(&headers),
            req,
        )
        .await,
    )
}

/// `Cache-Control: no-cache` (or `no-store`) asks for a fresh computation.
fn no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            matches!(
                d.trim().to_ascii_lowercase().as_str(),
                "no-cache" | "no-store"
            )
        })
}

/// The response, labelled with the model version for the metrics middleware.
type Outcome = Result<(PredictResponse, Option<&'static str>), ApiError>;

fn respond((label, result): (Option<ModelLabel>, Outcome)) -> Response {
    let mut response = match result {
        Ok((r, cache_status)) => {
            let mut resp = Json(r).into_response();
            if let Some(s) = cache_status {
                resp.headers_mut()
                    .insert("x-cache", HeaderValue::from_static(s));
            }
            resp
        }
        Err(e) => e.into_response(),
    };
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}

/// The one prediction path every protocol adapter calls. Returns the model version it went to
/// (once known) beside the outcome.
pub async fn run(
    state: &AppState,
    id: &str,
    version: Option<&str>,
    principal: Option<&Principal>,
    no_cache: bool,
    req: PredictRequest,
) -> (Option<ModelLabel>, Outcome) {
    let arrived = Instant::now();
    let resolved = match state.registry.resolve(id, version) {
        Ok(r) => r,
        Err(e) => return (None, Err(e.into())),
    };
    let mut label = ModelLabel {
        model: resolved.manifest.id.clone(),
        version: resolved.manifest.version.to_string(),
        ..Default::default()
    };
    let result = infer(
        state, &resolved, req, arrived, principal, no_cache, &mut label,
    )
    .await;
    (Some(label), result)
}

async fn infer(
    state: &AppState,
    resolved: &crate::registry::Resolved,
    mut req: PredictRequest,
    arrived: Instant,
    principal: Option<&Principal>,
    no_cache_header: bool,
    label: &mut ModelLabel,
) -> Result<(PredictResponse, Option<&'static str>), ApiError> {
    let cache_param = match req.parameters.remove("cache") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::invalid(
                "parameters.cache",
                "must be true or false",
            ))
        }
    };
    let manifest = &resolved.manifest;
    // Tokenizing and templating a large input takes milliseconds to seconds: off the async
    // runtime, so /health and small requests never wait behind it.
    let valid = if text_bytes(&req.inputs) <= INLINE_VALIDATION_BYTES {
        validate(manifest, resolved.handle.frontend(), req)?
    } else {
        let (m, f) = (manifest.clone(), resolved.handle.frontend().clone());
        tokio::task::spawn_blocking(move || validate(&m, &f, req))
            .await
            .map_err(ApiError::internal)??
    };
    let n = valid.work.items();
    let cache = state
        .cache
        .as_ref()
        .filter(|_| cache_param && !no_cache_header && valid.cacheable);
    let version = manifest.version.to_string();
    let keys: Vec<CacheKey> = match cache {
        Some(_) => valid
            .inputs()
            .iter()
            .map(|ids| CacheKey::new(&manifest.id, &version, valid.kind, ids, &valid.key_params))
            .collect(),
        None => Vec::new(),
    };
    let mut items: Vec<Option<Item>> = vec![None; n];
    if let Some(cache) = cache {
        let found = futures::future::join_all(keys.iter().map(|k| cache.get(k))).await;
        for (slot, hit) in items.iter_mut().zip(found) {
            *slot = hit.map(|(v, _tier)| Item::Output(v));
        }
    }
    let hits = items.iter().filter(|i| i.is_some()).count();
    let missing: Vec<usize> = (0..n).filter(|&i| items[i].is_none()).collect();
    let mut stats = RunStats::default();
    if !missing.is_empty() {
        let work = if missing.len() == n {
            valid.work
        } else {
            valid.work.subset(&missing)
        };
        if let (Some(limits), Some(p), Work::Generate { .. }) = (&state.limits, principal, &work) {
            let tokens = u32::try_from(work.tokens()).unwrap_or(u32::MAX);
            if let Err(wait) = limits.charge_tokens(&p.sub, p.tier.as_deref(), tokens) {
                let mut e = ApiError::new(
                    ErrorKind::RateLimited,
                    "over this principal's generation token budget per minute (prompt + max_tokens)",
                );
                e.retry_after_s = Some(wait);
                return Err(e);
            }
        }
        let done = resolved.handle.infer(work, state.request_timeout).await?;
        stats = done.stats;
        let computed: Vec<Item> = match done.output {
            Output::Vectors(vs) => vs
                .into_iter()
                .map(|v| Item::Output(CachedOutput::Vector(v.into())))
                .collect(),
            Output::Generations(gs) => gs
                .into_iter()
                .map(|g| Item::Output(CachedOutput::Generation(Arc::new(g))))
                .collect(),
            Output::Values(vs) => vs.into_iter().map(Item::Value).collect(),
        };
        let mut fresh_generations = Vec::new();
        for (&slot, item) in missing.iter().zip(computed) {
            if let Item::Output(out) = &item {
                if let CachedOutput::Generation(g) = out {
                    fresh_generations.push(g.clone());
                }
                let complete = !matches!(out, CachedOutput::Generation(g) if g.finish_reason == FinishReason::Cancelled);
                if let (Some(cache), true) = (cache, complete) {
                    cache.put(keys[slot].clone(), out.clone()).await;
                }
            }
            items[slot] = Some(item);
        }
        if state.settings.monitoring.enabled {
            let gens: Vec<&crate::models::Generation> =
                fresh_generations.iter().map(|g| g.as_ref()).collect();
            state.metrics.observe_inference(label, &stats, &gens);
        }
    }
    label.batch_size = Some(stats.batch_size);
    label.tokens_input = stats.tokens_processed as u64;
    label.tokens_output = stats.tokens_generated as u64;
    label.cost = manifest
        .pricing
        .as_ref()
        .map(|p| p.cost(label.tokens_input, label.tokens_output))
        .unwrap_or(0.0);

    let mut outputs = Vec::with_capacity(n);
    let mut finish_reasons = Vec::new();
    for item in items.into_iter().flatten() {
        outputs.push(match item {
            Item::Output(CachedOutput::Vector(v)) => Value::from(v.to_vec()),
            Item::Output(CachedOutput::Generation(g)) => {
                finish_reasons.push(g.finish_reason);
                Value::from(g.text.clone())
            }
            Item::Value(v) => v,
        });
    }
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let response = PredictResponse {
        outputs,
        model: manifest.id.clone(),
        model_version: version,
        metadata: PredictMetadata {
            tokens_processed: stats.tokens_processed,
            tokens_generated: stats.tokens_generated,
            latency_ms: ms(arrived.elapsed()),
            queue_ms: ms(stats.queue),
            compute_ms: ms(stats.compute),
            batch_size: stats.batch_size,
            finish_reasons: (!finish_reasons.is_empty()).then_some(finish_reasons),
            cached: cache.is_some() && hits == n,
            cache_hits: hits,
        },
    };
    let cache_status = cache.map(|_| if hits == n { "hit" } else { "miss" });
    Ok((response, cache_status))
}

/// Requests with at most this many bytes of text are validated on the async runtime (a few
/// microseconds of tokenization); larger ones on the blocking pool.
const INLINE_VALIDATION_BYTES: usize = 4096;

/// Bytes of text in a JSON value (strings, keys included), without allocating.
fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        _ => 8,
    }
}

/// One input's output, computed or from the cache.
#[derive(Debug, Clone)]
enum Item {
    Output(CachedOutput),
    Value(Value),
}

/// Check a request against the model's manifest and tokenizer.
pub fn validate(
    manifest: &Manifest,
    frontend: &Frontend,
    req: PredictRequest,
) -> Result<ValidRequest, ApiError> {
    let inputs = match req.inputs {
        Value::Array(items) => items,
        Value::Null => return Err(ApiError::invalid("inputs", "is required")),
        single => vec![single],
    };
    if inputs.is_empty() {
        return Err(ApiError::invalid("inputs", "must not be empty"));
    }
    if inputs.len() > manifest.max_inputs {
        return Err(ApiError::too_large(
            "inputs",
            format!(
                "{} inputs; this model takes at most {} per request (max_inputs)",
                inputs.len(),
                manifest.max_inputs
            ),
        ));
    }
    let params = params::validate(&manifest.parameters, &req.parameters)?;
    let (mut cacheable, mut kind, mut key_params) = (false, "echo", Vec::new());
    let work = match manifest.task {
        Task::Embedding => {
            let truncate = params.bool("truncate").unwrap_or(false);
            let ids = inputs
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let text = v.as_str().ok_or_else(|| {
                        ApiError::invalid(format!("inputs[{i}]"), "must be a string")
                    })?;
                    encode(frontend, text, truncate, i)
                })
                .collect::<Result<Vec<_>, _>>()?;
            (cacheable, kind) = (true, "embed");
            Work::Embed { inputs: ids }
        }
        Task::TextGeneration => {
            let gen = gen_params(&params);
            let prompts = inputs
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let prompt = prompt_text(frontend, v, i)?;
                    let ids = encode(frontend, &prompt, false, i)?;
                    if ids.is_empty() {
                        return Err(ApiError::invalid(
                            format!("inputs[{i}]"),
                            "the prompt is empty",
                        ));
                    }
                    Ok(ids)
                })
                .collect::<Result<Vec<_>, _>>()?;
            // Greedy, or sampling from a seed the client chose: the same request gives the
            // same text, so it may be cached.
            let greedy = gen.sampling.temperature <= 0.0;
            cacheable = greedy || params.u64("seed").is_some();
            kind = "generate";
            let canonical = if greedy {
                serde_json::json!([gen.max_tokens, gen.stop, 0.0])
            } else {
                serde_json::json!([
                    gen.max_tokens,
                    gen.stop,
                    gen.sampling.temperature,
                    gen.sampling.top_k,
                    gen.sampling.top_p,
                    gen.seed
                ])
            };
            key_params = canonical.to_string().into_bytes();
            Work::Generate {
                prompts,
                params: gen,
            }
        }
        Task::Echo => Work::Echo {
            inputs,
            delay: Duration::from_millis(params.u64("delay_ms").unwrap_or(0)),
        },
    };
    Ok(ValidRequest {
        work,
        cacheable,
        kind,
        key_params,
    })
}

fn encode(frontend: &Frontend, text: &str, truncate: bool, i: usize) -> Result<Vec<u32>, ApiError> {
    let codec = frontend
        .codec
        .as_ref()
        .ok_or_else(|| ApiError::internal("model without a tokenizer"))?;
    codec.encode(text, truncate).map_err(|e| match e {
        EncodeError::TooLong { tokens, limit } => ApiError::invalid(
            format!("inputs[{i}]"),
            format!(
                "{tokens} tokens; the limit is {limit} (max_input_length){}",
                if frontend.task == Task::Embedding {
                    "; set parameters.truncate to true to cut longer inputs"
                } else {
                    ""
                }
            ),
        ),
        EncodeError::TooManyBytes { bytes, limit } => ApiError::invalid(
            format!("inputs[{i}]"),
            format!(
                "{bytes} bytes; an input may have at most {limit} bytes (max_input_length {} tokens × {} bytes){}",
                codec.max_input_length(),
                crate::models::text::MAX_BYTES_PER_TOKEN,
                if frontend.task == Task::Embedding {
                    "; set parameters.truncate to true to cut longer inputs"
                } else {
                    ""
                }
            ),
        ),
        EncodeError::Tokenizer(msg) => ApiError::invalid(format!("inputs[{i}]"), msg),
    })
}

/// A raw prompt, or a conversation rendered with the model's chat template.
fn prompt_text(frontend: &Frontend, v: Value, i: usize) -> Result<String, ApiError> {
    let field = format!("inputs[{i}]");
    match v {
        Value::String(s) => Ok(s),
        Value::Array(items) => {
            // Each message must be an object: serde would also read `["user", "hi"]` as one.
            if let Some(j) = items.iter().position(|m| !m.is_object()) {
                return Err(ApiError::invalid(
                    format!("{field}[{j}]"),
                    "a message must be an object {\"role\", \"content\"}",
                ));
            }
            let messages: Vec<ChatMessage> =
                serde_json::from_value(Value::Array(items)).map_err(|e| {
                    ApiError::invalid(
                        field.clone(),
                        format!(
                        "a conversation must be a list of {{\"role\", \"content\"}} messages: {e}"
                    ),
                    )
                })?;
            if messages.is_empty() {
                return Err(ApiError::invalid(field, "the conversation is empty"));
            }
            // Refuse an oversized conversation before rendering the template over it.
            if let Some(codec) = &frontend.codec {
                let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
                if bytes > codec.max_input_bytes() {
                    return Err(ApiError::invalid(
                        field,
                        format!(
                            "{bytes} bytes of messages; a conversation may have at most {} (max_input_length {} tokens × {} bytes)",
                            codec.max_input_bytes(),
                            codec.max_input_length(),
                            crate::models::text::MAX_BYTES_PER_TOKEN
                        ),
                    ));
                }
            }
            if let Some(m) = messages
                .iter()
                .find(|m| !["system", "user", "assistant"].contains(&m.role.as_str()))
            {
                return Err(ApiError::invalid(
                    field,
                    format!("role `{}` must be system, user or assistant", m.role),
                ));
            }
            let template = frontend.chat_template.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    field.clone(),
                    "this model has no chat template; send a string prompt",
                )
            })?;
            template
                .render(&messages)
                .map_err(|e| ApiError::invalid(field, format!("chat template: {e}")))
        }
        _ => Err(ApiError::invalid(
            field,
            "must be a string or a list of {\"role\", \"content\"} messages",
        )),
    }
}

fn gen_params(p: &ValidParams) -> GenParams {
    GenParams {
        max_tokens: p.u64("max_tokens").unwrap_or(128) as usize,
        sampling: SamplingParams {
            temperature: p.f64("temperature").unwrap_or(0.8),
            top_k: p.u64("top_k").unwrap_or(0) as usize,
            top_p: p.f64("top_p").unwrap_or(1.0),
        },
        stop: p.strings("stop"),
        seed: p.u64("seed").unwrap_or_else(rand::random),
        logprobs: None,
    }
}

#[cfg(test)]
#[path = "predict_fuzz.rs"]
mod fuzz;
