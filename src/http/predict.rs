//! `POST /models/{id}/predict`: the native inference API.
//!
//! Validation happens here, before queueing: the request becomes a `ValidRequest` (only
//! `validate` makes one), holding token ids that are within the model's limits, so the engine
//! never sees bad input.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::extract::ApiJson;
use super::params::{self, ValidParams};
use crate::engine::{Output, Work};
use crate::error::{ApiError, ErrorEnvelope};
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
    #[schema(value_type = Object)]
    pub inputs: Value,
    /// Model parameters; see `GET /models/{id}` for names, types, defaults and ranges.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
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
}

/// A request that passed validation; only `validate` makes one.
pub struct ValidRequest {
    work: Work,
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
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Response {
    respond(run(&state, &id, None, req).await)
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
    Path((id, version)): Path<(String, String)>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Response {
    respond(run(&state, &id, Some(&version), req).await)
}

/// The response, labelled with the model version for the metrics middleware.
fn respond((label, result): (Option<ModelLabel>, Result<PredictResponse, ApiError>)) -> Response {
    let mut response = match result {
        Ok(r) => Json(r).into_response(),
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
    req: PredictRequest,
) -> (Option<ModelLabel>, Result<PredictResponse, ApiError>) {
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
    let result = infer(state, &resolved, req, arrived, &mut label).await;
    (Some(label), result)
}

async fn infer(
    state: &AppState,
    resolved: &crate::registry::Resolved,
    req: PredictRequest,
    arrived: Instant,
    label: &mut ModelLabel,
) -> Result<PredictResponse, ApiError> {
    let valid = validate(&resolved.manifest, resolved.handle.frontend(), req)?;
    let done = resolved
        .handle
        .infer(valid.work, state.request_timeout)
        .await?;
    label.batch_size = Some(done.stats.batch_size);
    label.tokens_input = done.stats.tokens_processed as u64;
    label.tokens_output = done.stats.tokens_generated as u64;
    label.cost = resolved
        .manifest
        .pricing
        .as_ref()
        .map(|p| p.cost(label.tokens_input, label.tokens_output))
        .unwrap_or(0.0);
    let no_generations = [];
    let generations = match &done.output {
        Output::Generations(gs) => gs.as_slice(),
        _ => &no_generations,
    };
    if state.settings.monitoring.enabled {
        state
            .metrics
            .observe_inference(label, &done.stats, generations);
    }
    let (outputs, finish_reasons) = match done.output {
        Output::Vectors(vs) => (vs.into_iter().map(Value::from).collect(), None),
        Output::Generations(gs) => {
            let reasons = gs.iter().map(|g| g.finish_reason).collect();
            (
                gs.into_iter().map(|g| Value::from(g.text)).collect(),
                Some(reasons),
            )
        }
        Output::Values(vs) => (vs, None),
    };
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    Ok(PredictResponse {
        outputs,
        model: resolved.manifest.id.clone(),
        model_version: resolved.manifest.version.to_string(),
        metadata: PredictMetadata {
            tokens_processed: done.stats.tokens_processed,
            tokens_generated: done.stats.tokens_generated,
            latency_ms: ms(arrived.elapsed()),
            queue_ms: ms(done.stats.queue),
            compute_ms: ms(done.stats.compute),
            batch_size: done.stats.batch_size,
            finish_reasons,
        },
    })
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
            Work::Embed { inputs: ids }
        }
        Task::TextGeneration => {
            let gen = gen_params(&params);
            let prompts = inputs
                .iter()
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
    Ok(ValidRequest { work })
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
        EncodeError::Tokenizer(msg) => ApiError::invalid(format!("inputs[{i}]"), msg),
    })
}

/// A raw prompt, or a conversation rendered with the model's chat template.
fn prompt_text(frontend: &Frontend, v: &Value, i: usize) -> Result<String, ApiError> {
    let field = format!("inputs[{i}]");
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(_) => {
            let messages: Vec<ChatMessage> = serde_json::from_value(v.clone()).map_err(|e| {
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
    }
}
