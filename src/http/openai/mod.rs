//! OpenAI-compatible routes under `/v1`: a thin adapter over the serving core. The model comes
//! from the body's `"model"` (`id` or `id@version`); errors use OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` (see `errors`, a layer on every `/v1` route,
//! so auth and rate-limit refusals take the same shape).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::app::AppState;
use super::extract::ApiJson;
use crate::auth::Principal;
use crate::cache::CachedOutput;
use crate::error::{ApiError, ErrorKind, RenderedError};
use crate::metrics::ModelLabel;
use crate::models::generate::TokenLogprob;
use crate::models::{ChatMessage, FinishReason};
use crate::serving::{Answer, AnswerStream, Caller, Input, Item, ServeRequest, StreamItem};
use crate::spec::manifest::Task;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A model of another task is refused before any work (the core would run it, and its
/// outputs are not what this route answers with). A model that does not resolve is left to the
/// core, which answers 404 or 503.
fn require_task(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    task: Task,
) -> Result<(), ApiError> {
    match state.registry.resolve(model, version) {
        Ok(r) if r.manifest.task != task => Err(ApiError::invalid(
            "model",
            format!(
                "`{model}` serves {}; this route needs {}",
                r.manifest.task.as_str(),
                task.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

/// `model` or `model@version`.
fn split_model(model: &str) -> (String, Option<String>) {
    match model.split_once('@') {
        Some((id, v)) => (id.to_string(), Some(v.to_string())),
        None => (model.to_string(), None),
    }
}

/// `"object": "list"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListObject {
    List,
}

/// `"object": "model"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelObjectKind {
    Model,
}

/// One model, as OpenAI lists them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// The model id (send it as `model`; `id@version` picks a version).
    pub id: String,
    pub object: ModelObjectKind,
    /// Always 0.
    pub created: u64,
    /// Always `anya`.
    pub owned_by: String,
}

/// The answer of `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelListV1 {
    pub object: ListObject,
    pub data: Vec<ModelObject>,
}

/// The models served.
#[utoipa::path(
    get,
    path = "/v1/models",
    responses((status = 200, description = "Every model id", body = ModelListV1)),
    tag = "openai"
)]
pub async fn list_models(
    State(state): State<AppState>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
) -> Json<ModelListV1> {
    // A token limited to some models lists only those.
    let permitted = |id: &str| principal.as_ref().is_none_or(|p| p.may_use(id));
    let data = state
        .registry
        .list()
        .into_iter()
        .filter(|rec| permitted(&rec.id))
        .map(|rec| ModelObject {
            id: rec.id.clone(),
            object: ModelObjectKind::Model,
            created: 0,
            owned_by: "anya".into(),
        })
        .collect();
    Json(ModelListV1 {
        object: ListObject::List,
        data,
    })
}

/// A `stop` given as one string or a list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
struct StreamOptions {
    /// A last chunk, with no choices, carries the usage.
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields shared by chat and text completions. A model's own ranges (`GET
/// /models/{id}`) apply: a value outside them is a 400 naming the field.
#[derive(Debug, Deserialize, ToSchema)]
struct Sampling {
    max_tokens: Option<u64>,
    /// Wins over `max_tokens`.
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    /// Up to 4 strings that end the generation.
    stop: Option<Stop>,
    /// Choices per prompt.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16)]
    n: Option<usize>,
    /// Answer with server-sent events (`text/event-stream`).
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    #[allow(dead_code)]
    user: Option<String>,
    /// Only 0 (or null).
    frequency_penalty: Option<f64>,
    /// Only 0 (or null).
    presence_penalty: Option<f64>,
    /// Not OpenAI's: vLLM's and llama.cpp's extra field, the model parameter `ignore_eos`.
    ignore_eos: Option<bool>,
    /// Not OpenAI's: `false` answers from the named model only, never from its fallbacks.
    use_fallbacks: Option<bool>,
}

/// A message's content: a string, or a list of text parts.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum ContentDoc {
    Text(String),
    Parts(Vec<TextPartDoc>),
}

/// `"type": "text"`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum TextPartKind {
    Text,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct TextPartDoc {
    #[serde(rename = "type")]
    kind: TextPartKind,
    text: String,
}

/// One message of the conversation.
#[derive(ToSchema)]
#[allow(dead_code)]
struct MessageDoc {
    /// `system` (or `developer`), `user` or `assistant`.
    role: String,
    content: ContentDoc,
}

/// A chat completion request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// A model id, or `id@version`.
    model: String,
    #[schema(value_type = Vec<MessageDoc>, min_items = 1)]
    messages: Vec<Value>,
    #[serde(flatten)]
    sampling: Sampling,
    /// Return the log-probability of each generated token.
    logprobs: Option<bool>,
    /// With `logprobs`: the most likely alternatives per token (at most 20 are returned).
    top_logprobs: Option<usize>,
    /// Other fields: those that would change the output and are not implemented (`tools`,
    /// `logit_bias`, a `response_format` other than text, ...) are refused with 400.
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

/// `prompt`: one string, a list of them (one completion each), or one list of token ids.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum PromptDoc {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

/// A text completion request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A model id, or `id@version`.
    model: String,
    #[schema(value_type = PromptDoc)]
    prompt: Value,
    #[serde(flatten)]
    sampling: Sampling,
    /// Refused (chat completions have log-probabilities).
    #[schema(ignore)]
    logprobs: Option<usize>,
    /// Refused when true.
    #[schema(ignore)]
    echo: Option<bool>,
    /// Refused unless null.
    #[schema(ignore)]
    suffix: Option<Value>,
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

/// Fields that change the output and that anya does not implement: refused, never ignored.
const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "best_of",
];

fn refuse_unsupported(other: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in other {
        let unsupported = UNSUPPORTED.contains(&k.as_str())
            || (k == "response_format" && v.get("type").and_then(Value::as_str) != Some("text"));
        if unsupported && !v.is_null() {
            return Err(ApiError::invalid(
                k.clone(),
                "is not supported by this server",
            ));
        }
    }
    Ok(())
}

impl Sampling {
    /// The model parameters, named as the manifests name them.
    fn params(&self) -> Result<Map<String, Value>, ApiError> {
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|x| x != 0.0) {
                return Err(ApiError::invalid(name, "is not supported (only 0)"));
            }
        }
        let mut p = Map::new();
        if let Some(m) = self.max_completion_tokens.or(self.max_tokens) {
            p.insert("max_tokens".into(), m.into());
        }
        if let Some(t) = self.temperature {
            p.insert("temperature".into(), t.into());
        }
        if let Some(t) = self.top_p {
            p.insert("top_p".into(), t.into());
        }
        if let Some(s) = self.seed {
            p.insert("seed".into(), s.into());
        }
        if let Some(b) = self.ignore_eos {
            p.insert("ignore_eos".into(), b.into());
        }
        if let Some(b) = self.use_fallbacks {
            p.insert("use_fallbacks".into(), b.into());
        }
        match &self.stop {
            Some(Stop::One(s)) => {
                p.insert("stop".into(), json!([s]));
            }
            Some(Stop::Many(v)) if v.len() > 4 => {
                return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
            }
            Some(Stop::Many(v)) => {
                p.insert("stop".into(), json!(v));
            }
            None => {}
        }
        Ok(p)
    }

    fn choices(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=16 => Ok(n),
            _ => Err(ApiError::invalid("n", "must be between 1 and 16")),
        }
    }
}

/// A message's content: a string, or a list of text parts.
fn message(v: &Value, i: usize) -> Result<ChatMessage, ApiError> {
    let field = format!("messages[{i}]");
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid(field.clone(), "must be an object"))?;
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(format!("{field}.role"), "is required"))?;
    let role = if role == "developer" { "system" } else { role };
    let content = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{field}.content"),
                            "only text parts are supported",
                        ))
                    }
                }
            }
            text
        }
        _ => {
            return Err(ApiError::invalid(
                format!("{field}.content"),
                "must be a string or a list of text parts",
            ))
        }
    };
    Ok(ChatMessage {
        role: role.to_string(),
        content,
    })
}

/// The neutral field path of a core error, as the OpenAI request names it.
fn openai_param(field: &str) -> String {
    if let Some(p) = field.strip_prefix("parameters.") {
        return p.to_string();
    }
    if field.starts_with("inputs") {
        return "messages".to_string();
    }
    field.to_string()
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorEnvelope {
    pub error: OpenAiError,
}

/// The error's class, as OpenAI's SDKs map it to their exceptions (with the status).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpenAiErrorType {
    InvalidRequestError,
    AuthenticationError,
    PermissionError,
    RateLimitError,
    ServerError,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: OpenAiErrorType,
    /// The request field at fault, where there is one.
    pub param: Option<String>,
    /// `invalid_api_key`, `forbidden`, `model_not_found`, `rate_limit_exceeded`,
    /// `service_unavailable`, `internal_error`, `timeout`, or one of the native error codes
    /// (`invalid_request`, `payload_too_large`, ...); `null` for a 404 that is not about a model
    /// (an unknown file, batch or route), as OpenAI answers it.
    pub code: Option<String>,
}

/// Marks a 404 that is not about a model (an unknown file or batch, an unknown route): its
/// OpenAI rendering has `code: null` (never `model_not_found`) and names `param` where there is
/// one, as OpenAI's `No such File object: file-abc` does (`param: "id"`).
#[derive(Debug, Clone, Default)]
pub struct NotAboutModel {
    /// The request field that named the missing object (`id`, `input_file_id`).
    pub param: Option<&'static str>,
}

/// OpenAI's error shape for any response our layers rendered as an error.
pub async fn errors(req: Request<Body>, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    openai_error(next.run(req).await)
}

/// A response whose error (in our envelope) is rendered in OpenAI's error shape.
pub(crate) fn openai_error(mut response: Response) -> Response {
    let Some(e) = response.extensions_mut().remove::<RenderedError>() else {
        return response;
    };
    let not_model = response.extensions_mut().remove::<NotAboutModel>();
    let (kind, code) = match e.kind {
        ErrorKind::Unauthorized => (
            OpenAiErrorType::AuthenticationError,
            Some("invalid_api_key"),
        ),
        ErrorKind::Forbidden => (OpenAiErrorType::PermissionError, Some("forbidden")),
        ErrorKind::NotFound if not_model.is_some() => (OpenAiErrorType::InvalidRequestError, None),
        ErrorKind::NotFound => (
            OpenAiErrorType::InvalidRequestError,
            Some("model_not_found"),
        ),
        ErrorKind::RateLimited => (OpenAiErrorType::RateLimitError, Some("rate_limit_exceeded")),
        ErrorKind::Internal | ErrorKind::Timeout | ErrorKind::BadGateway => {
            (OpenAiErrorType::ServerError, Some(e.kind.code()))
        }
        ErrorKind::Unavailable => (OpenAiErrorType::ServerError, Some("service_unavailable")),
        _ => (OpenAiErrorType::InvalidRequestError, Some(e.kind.code())),
    };
    let param = match not_model.and_then(|m| m.param) {
        Some(p) => Some(p.to_string()),
        None => e.details.field.as_deref().map(openai_param),
    };
    let body = OpenAiErrorEnvelope {
        error: OpenAiError {
            message: e.message,
            kind,
            param,
            code: code.map(str::to_string),
        },
    };
    let body = serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}"));
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    if let Some(retry) = parts.headers.get(axum::http::header::RETRY_AFTER).cloned() {
        // The SDK honours Retry-After only up to 60 s.
        let secs: u64 = retry
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        parts.headers.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(secs.min(60)),
        );
    }
    Response::from_parts(parts, Body::from(body))
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReasonV1 {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`, or the end of the model's context.
    Length,
}

/// `"role": "assistant"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssistantRole {
    Assistant,
}

/// Token counts of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    /// Prompt tokens (counted once when `n` choices share the prompt).
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// `"object": "chat.completion"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ChatCompletionObject {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
}

/// `"object": "chat.completion.chunk"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ChatChunkObject {
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
}

/// `"object": "text_completion"` (answers and stream chunks alike).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextCompletionObject {
    TextCompletion,
}

/// The answer of `POST /v1/chat/completions` without `stream`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: ChatCompletionObject,
    /// Unix seconds.
    pub created: u64,
    /// The model as the request named it.
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    /// With `logprobs: true`; else null.
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: FinishReasonV1,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: AssistantRole,
    pub content: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    pub content: Vec<TokenLogprobV1>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenLogprobV1 {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position (`top_logprobs` of them).
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One event of a streamed chat completion (`data: {...}`; the stream ends with
/// `data: [DONE]`). The first chunk of each choice carries the role; the finishing chunk
/// carries the finish reason. An error after the stream started is a `data:` event holding
/// `OpenAiErrorEnvelope`, then `[DONE]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: ChatChunkObject,
    pub created: u64,
    pub model: String,
    /// Empty in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Only with `stream_options.include_usage`: null except in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    /// Always null in chunks.
    #[schema(value_type = Option<ChoiceLogprobs>)]
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<FinishReasonV1>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatDelta {
    /// In the first chunk of each choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<AssistantRole>,
    pub content: String,
}

/// The answer of `POST /v1/completions` without `stream`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TextCompletion {
    pub id: String,
    pub object: TextCompletionObject,
    pub created: u64,
    pub model: String,
    /// `n` per prompt, prompt by prompt.
    pub choices: Vec<TextChoice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TextChoice {
    pub index: usize,
    pub text: String,
    /// Always null (log-probabilities are on chat completions).
    #[schema(value_type = Option<ChoiceLogprobs>)]
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: FinishReasonV1,
}

/// One event of a streamed text completion (`data: {...}`, then `data: [DONE]`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TextCompletionChunk {
    pub id: String,
    pub object: TextCompletionObject,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChunkChoice>,
    /// Only with `stream_options.include_usage`: null except in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TextChunkChoice {
    pub index: usize,
    pub text: String,
    /// Always null.
    #[schema(value_type = Option<ChoiceLogprobs>)]
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<FinishReasonV1>,
}

fn labelled(mut r: Response, label: Option<ModelLabel>) -> Response {
    if let Some(l) = label {
        r.extensions_mut().insert(l);
    }
    r
}

/// `x-anya-served-by` (the model and version that answered) and `x-anya-fallbacks` (the
/// targets given up on before it, with why).
fn routed(mut r: Response, route: &crate::serving::Route) -> Response {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&route.served_by) {
        if !route.served_by.is_empty() {
            h.insert("x-anya-served-by", v);
        }
    }
    if !route.fallbacks.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&route.fallbacks.join(", ")) {
            h.insert("x-anya-fallbacks", v);
        }
    }
    r
}

fn finish_reason(r: FinishReason) -> FinishReasonV1 {
    match r {
        FinishReason::Length => FinishReasonV1::Length,
        _ => FinishReasonV1::Stop,
    }
}

/// A chat completion: the model's chat template over `messages`, `n` choices.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, server-sent events each holding a `ChatCompletionChunk`, then `data: [DONE]`", content(
            (ChatCompletion = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Malformed JSON, wrong types, an unsupported field, a parameter out of the model's range, a prompt too long, or not a text-generation model", body = OpenAiErrorEnvelope),
        (status = 404, description = "Unknown model or version", body = OpenAiErrorEnvelope),
        (status = 500, description = "Inference failed", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Response {
    chat(state, principal.map(|e| e.0), headers, req, false).await
}

/// `chat_completions`, for a caller in process (a batch line runs with `background`).
pub(crate) async fn chat(
    state: AppState,
    principal: Option<Principal>,
    headers: HeaderMap,
    req: ChatRequest,
    background: bool,
) -> Response {
    let prepared = (|| {
        refuse_unsupported(&req.other)?;
        let messages = req
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| message(m, i))
            .collect::<Result<Vec<_>, _>>()?;
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "must not be empty"));
        }
        let top = match (req.logprobs, req.top_logprobs) {
            (Some(true), t) => Some(t.unwrap_or(0).min(20)),
            (_, Some(_)) => return Err(ApiError::invalid("top_logprobs", "needs logprobs: true")),
            _ => None,
        };
        let n = req.sampling.choices()?;
        Ok((messages, n, top, req.sampling.params()?))
    })();
    let (messages, n, top, params) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (model, version) = split_model(&req.model);
    if let Err(e) = require_task(&state, &model, version.as_deref(), Task::TextGeneration) {
        return e.into_response();
    }
    let serve = ServeRequest {
        model,
        version,
        inputs: vec![Input::Chat(messages); n],
        params,
        cache: true,
        logprobs: top,
        headers: headers.clone(),
        user: req.sampling.user.clone(),
        background,
    };
    let caller = Caller {
        principal: principal.as_ref(),
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now();
    if req.sampling.stream == Some(true) {
        let usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let (label, outcome) = state.core.infer_stream(caller, serve).await;
        let r = match outcome {
            Ok(s) => {
                let route = s.route().clone();
                routed(
                    stream_chunks(s, Kind::Chat, id, created, req.model.clone(), n, usage),
                    &route,
                )
            }
            Err(e) => e.into_response(),
        };
        return labelled(r, label);
    }
    let (label, outcome) = state.core.infer(caller, serve).await;
    let r = match outcome {
        Ok(answer) => {
            let route = answer.route.clone();
            let choices = generations(&answer)
                .into_iter()
                .enumerate()
                .map(|(index, (content, finish_reason, lps))| ChatChoice {
                    index,
                    message: AssistantMessage {
                        role: AssistantRole::Assistant,
                        content,
                    },
                    logprobs: top.map(|_| ChoiceLogprobs {
                        content: chat_logprobs(&state, &answer, &lps),
                    }),
                    finish_reason,
                })
                .collect();
            let r = Json(ChatCompletion {
                id,
                object: ChatCompletionObject::ChatCompletion,
                created,
                model: req.model,
                choices,
                usage: usage(&answer, n),
            })
            .into_response();
            routed(r, &route)
        }
        Err(e) => e.into_response(),
    };
    labelled(r, label)
}

/// A text completion: `n` choices per prompt, no chat template.
#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, server-sent events each holding a `TextCompletionChunk`, then `data: [DONE]`", content(
            (TextCompletion = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Malformed JSON, wrong types, an unsupported field, a parameter out of the model's range, a prompt too long, or not a text-generation model", body = OpenAiErrorEnvelope),
        (status = 404, description = "Unknown model or version", body = OpenAiErrorEnvelope),
        (status = 413, description = "More prompts (times `n`) than the model takes", body = OpenAiErrorEnvelope),
        (status = 500, description = "Inference failed", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn completions(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Response {
    complete(state, principal.map(|e| e.0), headers, req, false).await
}

/// `completions`, for a caller in process (a batch line runs with `background`).
pub(crate) async fn complete(
    state: AppState,
    principal: Option<Principal>,
    headers: HeaderMap,
    req: CompletionRequest,
    background: bool,
) -> Response {
    let prepared = (|| {
        refuse_unsupported(&req.other)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid("echo", "is not supported"));
        }
        if req.suffix.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(ApiError::invalid("suffix", "is not supported"));
        }
        if req.logprobs.is_some() {
            return Err(ApiError::invalid(
                "logprobs",
                "is supported on /v1/chat/completions only",
            ));
        }
        let prompts: Vec<Input> = match &req.prompt {
            Value::String(s) => vec![Input::Text(s.clone())],
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|v| v.as_str().map(|s| Input::Text(s.to_string())))
                .collect(),
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
                vec![Input::Tokens(token_ids(items).ok_or_else(|| {
                    ApiError::invalid("prompt", "token ids must fit in 32 bits")
                })?)]
            }
            _ => {
                return Err(ApiError::invalid(
                    "prompt",
                    "must be a string, a list of strings or a list of token ids",
                ))
            }
        };
        let n = req.sampling.choices()?;
        let inputs: Vec<Input> = prompts
            .into_iter()
            .flat_map(|p| std::iter::repeat_n(p, n))
            .collect();
        Ok((inputs, req.sampling.params()?))
    })();
    let (inputs, params) = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let count = inputs.len();
    let (model, version) = split_model(&req.model);
    if let Err(e) = require_task(&state, &model, version.as_deref(), Task::TextGeneration) {
        return e.into_response();
    }
    let serve = ServeRequest {
        model,
        version,
        inputs,
        params,
        cache: true,
        logprobs: None,
        headers: headers.clone(),
        user: req.sampling.user.clone(),
        background,
    };
    let caller = Caller {
        principal: principal.as_ref(),
    };
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now();
    if req.sampling.stream == Some(true) {
        let usage = req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let (label, outcome) = state.core.infer_stream(caller, serve).await;
        let r = match outcome {
            Ok(s) => {
                let route = s.route().clone();
                routed(
                    stream_chunks(s, Kind::Text, id, created, req.model.clone(), count, usage),
                    &route,
                )
            }
            Err(e) => e.into_response(),
        };
        return labelled(r, label);
    }
    let (label, outcome) = state.core.infer(caller, serve).await;
    let r = match outcome {
        Ok(answer) => {
            let route = answer.route.clone();
            let choices = generations(&answer)
                .into_iter()
                .enumerate()
                .map(|(index, (text, finish_reason, _))| TextChoice {
                    index,
                    text,
                    logprobs: None,
                    finish_reason,
                })
                .collect();
            let r = Json(TextCompletion {
                id,
                object: TextCompletionObject::TextCompletion,
                created,
                model: req.model,
                choices,
                usage: usage(&answer, 1),
            })
            .into_response();
            routed(r, &route)
        }
        Err(e) => e.into_response(),
    };
    labelled(r, label)
}

/// Text, finish reason and log-probabilities of each generated output.
fn generations(answer: &Answer) -> Vec<(String, FinishReasonV1, Vec<TokenLogprob>)> {
    answer
        .items
        .iter()
        .filter_map(Item::generation)
        .map(|g| {
            (
                g.text.clone(),
                finish_reason(g.finish_reason),
                g.logprobs.clone(),
            )
        })
        .collect()
}

/// Usage: the prompt counted once when `n` choices share it.
fn usage(answer: &Answer, shared: usize) -> Usage {
    let prompt = answer.prompt_tokens / shared.max(1);
    let completion = answer.completion_tokens;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

fn token_text(state: &AppState, answer: &Answer, id: u32) -> String {
    state
        .registry
        .resolve(&answer.model, Some(&answer.version))
        .ok()
        .and_then(|r| r.handle.frontend().codec.as_ref()?.decode(&[id]).ok())
        .unwrap_or_default()
}

fn chat_logprobs(state: &AppState, answer: &Answer, lps: &[TokenLogprob]) -> Vec<TokenLogprobV1> {
    lps.iter()
        .map(|lp| {
            let token = token_text(state, answer, lp.token);
            TokenLogprobV1 {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = token_text(state, answer, id);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// `chat.completion.chunk`s (or `text_completion` chunks): the first delta of each choice
/// carries the role, every chunk has the same id and created, the finishing chunk carries the
/// finish reason; with `include_usage` a last chunk with no choices carries the usage; then
/// `data: [DONE]`. An error after the start is a `data: {"error": …}` event, then the end.
fn stream_chunks(
    stream: AnswerStream,
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    n: usize,
    include_usage: bool,
) -> Response {
    // One chunk of (index, text, first of its choice, finish reason) choices.
    type Part = (usize, String, bool, Option<FinishReasonV1>);
    let chunk = move |parts: Vec<Part>, usage: Option<Usage>| {
        let usage = include_usage.then_some(usage);
        let json = if kind == Kind::Chat {
            serde_json::to_string(&ChatCompletionChunk {
                id: id.clone(),
                object: ChatChunkObject::ChatCompletionChunk,
                created,
                model: model.clone(),
                choices: parts
                    .into_iter()
                    .map(|(index, content, first, finish_reason)| ChatChunkChoice {
                        index,
                        delta: ChatDelta {
                            role: first.then_some(AssistantRole::Assistant),
                            content,
                        },
                        logprobs: None,
                        finish_reason,
                    })
                    .collect(),
                usage,
            })
        } else {
            serde_json::to_string(&TextCompletionChunk {
                id: id.clone(),
                object: TextCompletionObject::TextCompletion,
                created,
                model: model.clone(),
                choices: parts
                    .into_iter()
                    .map(|(index, text, _, finish_reason)| TextChunkChoice {
                        index,
                        text,
                        logprobs: None,
                        finish_reason,
                    })
                    .collect(),
                usage,
            })
        };
        SseEvent::default().data(json.unwrap_or_else(|_| String::from("{}")))
    };
    struct St {
        s: Option<AnswerStream>,
        started: Vec<bool>,
        tail: Vec<SseEvent>,
    }
    let st = St {
        s: Some(stream),
        started: vec![false; n],
        tail: Vec::new(),
    };
    let events = futures::stream::unfold(st, move |mut st| {
        let chunk = chunk.clone();
        async move {
            if let Some(e) = st.tail.pop() {
                return Some((Ok::<_, std::convert::Infallible>(e), st));
            }
            let s = st.s.as_mut()?;
            let Some(item) = s.next().await else {
                st.s = None;
                return Some((Ok(SseEvent::default().data("[DONE]")), st));
            };
            let event = match item {
                StreamItem::Delta { index, text, .. } => {
                    let first = !st.started.get(index).copied().unwrap_or(true);
                    if let Some(f) = st.started.get_mut(index) {
                        *f = true;
                    }
                    chunk(vec![(index, text, first, None)], None)
                }
                StreamItem::Done(answer) => {
                    let shared = if kind == Kind::Chat { n } else { 1 };
                    let mut tail = vec![SseEvent::default().data("[DONE]")];
                    if include_usage {
                        tail.push(chunk(Vec::new(), Some(usage(&answer, shared))));
                    }
                    st.tail = tail;
                    st.s = None;
                    let finals = generations(&answer)
                        .into_iter()
                        .enumerate()
                        .map(|(i, (_, reason, _))| {
                            let first = !st.started.get(i).copied().unwrap_or(true);
                            (i, String::new(), first, Some(reason))
                        })
                        .collect();
                    chunk(finals, None)
                }
                StreamItem::Error(e) => {
                    st.s = None;
                    st.tail = vec![SseEvent::default().data("[DONE]")];
                    let body = OpenAiErrorEnvelope {
                        error: OpenAiError {
                            message: e.message,
                            kind: OpenAiErrorType::ServerError,
                            param: None,
                            code: Some(e.kind.code().to_string()),
                        },
                    };
                    SseEvent::default()
                        .data(serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}")))
                }
            };
            Some((Ok(event), st))
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

/// An embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// A model id, or `id@version`.
    model: String,
    #[schema(value_type = EmbeddingInputDoc)]
    input: Value,
    /// `float` (the default) or `base64` (little-endian f32s).
    #[schema(value_type = Option<EncodingFormat>)]
    encoding_format: Option<String>,
    /// Keep the first `dimensions` components (then L2-normalised again); at most the
    /// model's size.
    #[schema(minimum = 1)]
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
    /// Not OpenAI's: `false` answers from the named model only, never from its fallbacks.
    use_fallbacks: Option<bool>,
}

/// `input`: one string, a list of strings, one list of token ids, or a list of such lists.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum EmbeddingInputDoc {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum EncodingFormat {
    Float,
    Base64,
}

/// `"object": "embedding"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingObjectKind {
    Embedding,
}

/// One vector: floats, or with `encoding_format: base64` the little-endian f32 bytes in
/// base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Embedding {
    pub object: EmbeddingObjectKind,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The answer of `POST /v1/embeddings`: one vector per input, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    pub object: ListObject,
    pub data: Vec<Embedding>,
    /// The model as the request named it.
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// Token ids as the engine takes them: an id over `u32` is refused, never wrapped around.
fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

/// Embeddings of one or more inputs.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One vector per input", body = EmbeddingList),
        (status = 400, description = "Malformed JSON, wrong types, an input too long, `dimensions` over the model's size, or not an embedding model", body = OpenAiErrorEnvelope),
        (status = 404, description = "Unknown model or version", body = OpenAiErrorEnvelope),
        (status = 413, description = "More inputs than the model takes", body = OpenAiErrorEnvelope),
        (status = 500, description = "Inference failed", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn embeddings(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Response {
    embed(state, principal.map(|e| e.0), headers, req, false).await
}

/// `embeddings`, for a caller in process (a batch line runs with `background`).
pub(crate) async fn embed(
    state: AppState,
    principal: Option<Principal>,
    headers: HeaderMap,
    req: EmbeddingRequest,
    background: bool,
) -> Response {
    let inputs: Result<Vec<Input>, ApiError> = match &req.input {
        Value::String(s) => Ok(vec![Input::Text(s.clone())]),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(|s| Input::Text(s.to_string())))
            .collect()),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            token_ids(items)
                .map(|ids| vec![Input::Tokens(ids)])
                .ok_or_else(|| ApiError::invalid("input", "token ids must fit in 32 bits"))
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_array) => items
            .iter()
            .map(|l| {
                l.as_array()
                    .and_then(|l| token_ids(l.as_slice()))
                    .map(Input::Tokens)
                    .ok_or_else(|| ApiError::invalid("input", "token lists must hold token ids"))
            })
            .collect(),
        _ => Err(ApiError::invalid(
            "input",
            "must be a string, a list of strings, a list of token ids or a list of such lists",
        )),
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return ApiError::invalid("encoding_format", "must be float or base64").into_response()
        }
    };
    let inputs = match inputs {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let (model, version) = split_model(&req.model);
    if let Err(e) = require_task(&state, &model, version.as_deref(), Task::Embedding) {
        return e.into_response();
    }
    let serve = ServeRequest {
        model,
        version,
        inputs,
        params: req
            .use_fallbacks
            .map(|b| Map::from_iter([("use_fallbacks".to_string(), Value::Bool(b))]))
            .unwrap_or_default(),
        cache: true,
        logprobs: None,
        headers: headers.clone(),
        user: req.user.clone(),
        background,
    };
    let (label, outcome) = state
        .core
        .infer(
            Caller {
                principal: principal.as_ref(),
            },
            serve,
        )
        .await;
    let r = match outcome.and_then(|answer| {
        render_embeddings(&answer, &req, base64).map(|body| (body, answer.route))
    }) {
        Ok((body, route)) => routed(Json(body).into_response(), &route),
        Err(e) => e.into_response(),
    };
    labelled(r, label)
}

fn render_embeddings(
    answer: &Answer,
    req: &EmbeddingRequest,
    base64: bool,
) -> Result<EmbeddingList, ApiError> {
    let mut data = Vec::with_capacity(answer.items.len());
    for (i, item) in answer.items.iter().enumerate() {
        let Item::Output(CachedOutput::Vector(v)) = item else {
            return Err(ApiError::invalid("model", "is not an embedding model"));
        };
        let mut v: Vec<f32> = v.to_vec();
        if let Some(d) = req.dimensions {
            if d == 0 || d > v.len() {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("must be between 1 and {} for this model", v.len()),
                ));
            }
            v.truncate(d);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        let embedding = if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            EmbeddingVector::Float(v)
        };
        data.push(Embedding {
            object: EmbeddingObjectKind::Embedding,
            index: i,
            embedding,
        });
    }
    let tokens = answer.prompt_tokens;
    Ok(EmbeddingList {
        object: ListObject::List,
        data,
        model: req.model.clone(),
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_eos_is_passed_on_as_the_model_parameter() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [], "max_tokens": 5, "ignore_eos": true
        }))
        .unwrap();
        let p = req.sampling.params().unwrap();
        assert_eq!(p["ignore_eos"], json!(true));
        assert_eq!(p["max_tokens"], json!(5));
        assert!(!req.other.contains_key("ignore_eos"));
        let req: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": "x"})).unwrap();
        assert!(!req.sampling.params().unwrap().contains_key("ignore_eos"));
    }
}
