//! `POST /models/{id}/predict`: the native inference API, a thin adapter over the serving
//! core: the native JSON becomes a `ServeRequest`, the core's answer becomes the native JSON
//! (or, with `"parameters": {"stream": true}` or `Accept: text/event-stream`, server-sent
//! events: one `delta` event per piece of text, then `done` with the usual body).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::app::AppState;
use super::extract::{ApiJson, ApiPath};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorEnvelope};
use crate::metrics::ModelLabel;
use crate::models::{ChatMessage, FinishReason};
use crate::serving::{Answer, AnswerStream, Caller, Input, Item, ServeRequest, StreamItem};
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
    #[schema(value_type = Vec<Value>)]
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
    /// `model@version` that answered (a fallback's, when the named model failed).
    pub served_by: String,
    /// Calls made to models or providers for this answer, retries included.
    pub attempts: u32,
    /// The model the request named, when one of its fallbacks answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
    /// The targets given up on before the one that answered, each as `model@version: reason`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/models/{id}/predict",
    params(("id" = String, Path, description = "Model id")),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "Outputs, one per input; with `\"stream\": true` (or `Accept: text/event-stream`), server-sent events: `delta` ({\"index\", \"text\"}) per piece of text, then `done` (a `PredictResponse`) or `error` (an `ErrorEnvelope`)", content(
            (PredictResponse = "application/json"),
            (String = "text/event-stream"),
        )),
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
    run(&state, &id, None, p.as_ref(), &headers, req).await
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
        (status = 200, description = "Outputs, one per input; with `\"stream\": true` (or `Accept: text/event-stream`), server-sent events: `delta` ({\"index\", \"text\"}) per piece of text, then `done` (a `PredictResponse`) or `error` (an `ErrorEnvelope`)", content(
            (PredictResponse = "application/json"),
            (String = "text/event-stream"),
        )),
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
    run(&state, &id, Some(&version), p.as_ref(), &headers, req).await
}

#[utoipa::path(
    post,
    path = "/predict",
    request_body = PredictRequest,
    responses(
        (status = 200, description = "The one model served answers, as `POST /models/{id}/predict` would (JSON, or server-sent events with `\"stream\": true`)", content(
            (PredictResponse = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Invalid request, or more than one model is served (the message names them: use `/models/{id}/predict`)", body = ErrorEnvelope),
        (status = 404, description = "No model is served", body = ErrorEnvelope),
        (status = 413, description = "Body or number of inputs over the limit", body = ErrorEnvelope),
        (status = 503, description = "Queue full or model not ready (see Retry-After)", body = ErrorEnvelope),
        (status = 504, description = "No answer within server.request_timeout_ms", body = ErrorEnvelope),
        (status = 500, description = "Inference failed", body = ErrorEnvelope),
    ),
    tag = "inference"
)]
/// `POST /predict`: the model, when the server serves exactly one.
pub async fn predict_only(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Response {
    let p = principal.map(|e| e.0);
    // The models this caller may use (a token's model list narrows what it sees).
    let ids: Vec<String> = state
        .registry
        .list()
        .into_iter()
        .map(|r| r.id)
        .filter(|id| p.as_ref().is_none_or(|p| p.may_use(id)))
        .collect();
    match ids.as_slice() {
        [id] => run(&state, id, None, p.as_ref(), &headers, req).await,
        [] => ApiError::not_found("no model is served").into_response(),
        many => ApiError::invalid(
            "model",
            format!(
                "{} models are served ({}); name one: POST /models/{{id}}/predict",
                many.len(),
                many.join(", ")
            ),
        )
        .into_response(),
    }
}

/// `Cache-Control: no-cache` (or `no-store`) asks for a fresh computation.
pub(crate) fn no_cache(headers: &HeaderMap) -> bool {
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
fn labelled(mut response: Response, label: Option<ModelLabel>) -> Response {
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}

/// The native request as the core's request, and whether it asks to stream.
pub(crate) fn serve_request(
    id: &str,
    version: Option<&str>,
    no_cache_header: bool,
    mut req: PredictRequest,
) -> Result<(ServeRequest, bool), ApiError> {
    let flag = |v: Option<Value>, name: &str, default: bool| match v {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(ApiError::invalid(
            format!("parameters.{name}"),
            "must be true or false",
        )),
    };
    let cache = flag(req.parameters.remove("cache"), "cache", true)?;
    let stream = flag(req.parameters.remove("stream"), "stream", false)?;
    let inputs = match req.inputs {
        Value::Array(items) => items.into_iter().map(Input::from_json).collect(),
        Value::Null => return Err(ApiError::invalid("inputs", "is required")),
        single => vec![Input::from_json(single)],
    };
    Ok((
        ServeRequest {
            model: id.to_string(),
            version: version.map(str::to_string),
            inputs,
            params: req.parameters,
            cache: cache && !no_cache_header,
            logprobs: None,
            headers: HeaderMap::new(),
            user: None,
            background: false,
        },
        stream,
    ))
}

/// The one native prediction path (both routes).
pub async fn run(
    state: &AppState,
    id: &str,
    version: Option<&str>,
    principal: Option<&Principal>,
    headers: &HeaderMap,
    req: PredictRequest,
) -> Response {
    let (mut req, stream) = match serve_request(id, version, no_cache(headers), req) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    req.headers = headers.clone();
    let caller = Caller { principal };
    if stream || wants_event_stream(headers) {
        let (label, outcome) = state.core.infer_stream(caller, req).await;
        let response = match outcome {
            Ok(s) => sse(s),
            Err(e) => e.into_response(),
        };
        return labelled(response, label);
    }
    let (label, outcome) = state.core.infer(caller, req).await;
    let response = match outcome {
        Ok(answer) => {
            let cache_status = answer.cache.map(|all| if all { "hit" } else { "miss" });
            let mut r = Json(render(answer)).into_response();
            if let Some(s) = cache_status {
                r.headers_mut()
                    .insert("x-cache", HeaderValue::from_static(s));
            }
            r
        }
        Err(e) => e.into_response(),
    };
    labelled(response, label)
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// The native body of an answer.
pub(crate) fn render(answer: Answer) -> PredictResponse {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let mut finish_reasons = Vec::new();
    let outputs = answer
        .items
        .into_iter()
        .map(|item| match item {
            Item::Vector(v) => Value::from(v.to_vec()),
            Item::Generation(g) => {
                finish_reasons.push(g.finish_reason);
                Value::from(g.text.clone())
            }
            Item::Value(v) => v,
        })
        .collect::<Vec<_>>();
    let n = outputs.len();
    PredictResponse {
        outputs,
        model: answer.model,
        model_version: answer.version,
        metadata: PredictMetadata {
            tokens_processed: answer.stats.tokens_processed,
            tokens_generated: answer.stats.tokens_generated,
            latency_ms: ms(answer.latency),
            queue_ms: ms(answer.stats.queue),
            compute_ms: ms(answer.stats.compute),
            batch_size: answer.stats.batch_size,
            finish_reasons: (!finish_reasons.is_empty()).then_some(finish_reasons),
            cached: answer.cache == Some(true) && answer.cache_hits == n,
            cache_hits: answer.cache_hits,
            served_by: answer.route.served_by,
            attempts: answer.route.attempts,
            fallback_from: answer.route.fallback_from,
            fallbacks: answer.route.fallbacks,
        },
    }
}

/// Server-sent events: `delta` ({"index", "text"}) per piece of text, then `done` (the usual
/// response body) or `error` (the envelope). Idle streams get keep-alive comments.
fn sse(stream: AnswerStream) -> Response {
    let events = futures::stream::unfold(Some(stream), |state| async move {
        let mut s = state?;
        let item = s.next().await?;
        let (event, more) = match item {
            StreamItem::Delta { index, text, .. } => (
                SseEvent::default()
                    .event("delta")
                    .json_data(serde_json::json!({"index": index, "text": text})),
                true,
            ),
            StreamItem::Done(answer) => (
                SseEvent::default().event("done").json_data(render(answer)),
                false,
            ),
            StreamItem::Error(e) => (
                SseEvent::default().event("error").json_data(e.envelope()),
                false,
            ),
        };
        let event = event.unwrap_or_else(|_| SseEvent::default().event("error"));
        Some((Ok::<_, std::convert::Infallible>(event), more.then_some(s)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
#[path = "predict_fuzz.rs"]
mod fuzz;
