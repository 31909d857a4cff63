//! OpenAI-compatible routes under `/v1`: a thin adapter over the serving core. The model comes
//! from the body's `"model"` (`id` or `id@version`); errors use OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` (see `errors`, a layer on every `/v1` route,
//! so auth and rate-limit refusals take the same shape).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::app::AppState;
use super::extract::ApiJson;
use crate::auth::Principal;
use crate::cache::CachedOutput;
use crate::error::{ApiError, ErrorKind, RenderedError};
use crate::metrics::ModelLabel;
use crate::models::generate::TokenLogprob;
use crate::models::{ChatMessage, FinishReason};
use crate::serving::{Answer, AnswerStream, Caller, Input, Item, ServeRequest, StreamItem};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `model` or `model@version`.
fn split_model(model: &str) -> (String, Option<String>) {
    match model.split_once('@') {
        Some((id, v)) => (id.to_string(), Some(v.to_string())),
        None => (model.to_string(), None),
    }
}

/// `GET /v1/models`.
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .registry
        .list()
        .into_iter()
        .map(|rec| json!({"id": rec.id, "object": "model", "created": 0, "owned_by": "anya"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// A `stop` given as one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields shared by chat and text completions.
#[derive(Debug, Deserialize)]
struct Sampling {
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    #[allow(dead_code)]
    user: Option<String>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    /// Not OpenAI's: vLLM's and llama.cpp's extra field, the model parameter `ignore_eos`.
    ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(flatten)]
    sampling: Sampling,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    model: String,
    prompt: Value,
    #[serde(flatten)]
    sampling: Sampling,
    logprobs: Option<usize>,
    echo: Option<bool>,
    suffix: Option<Value>,
    #[serde(flatten)]
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

/// OpenAI's error shape for any response our layers rendered as an error.
pub async fn errors(req: Request<Body>, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let mut response = next.run(req).await;
    let Some(e) = response.extensions_mut().remove::<RenderedError>() else {
        return response;
    };
    let (kind, code) = match e.kind {
        ErrorKind::Unauthorized => ("authentication_error", "invalid_api_key"),
        ErrorKind::Forbidden => ("permission_error", "forbidden"),
        ErrorKind::NotFound => ("invalid_request_error", "model_not_found"),
        ErrorKind::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
        ErrorKind::Internal | ErrorKind::Timeout => ("server_error", e.kind.code()),
        ErrorKind::Unavailable => ("server_error", "service_unavailable"),
        _ => ("invalid_request_error", e.kind.code()),
    };
    let body = json!({"error": {
        "message": e.message,
        "type": kind,
        "param": e.details.field.as_deref().map(openai_param),
        "code": code,
    }});
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
    Response::from_parts(parts, Body::from(body.to_string()))
}

fn labelled(mut r: Response, label: Option<ModelLabel>) -> Response {
    if let Some(l) = label {
        r.extensions_mut().insert(l);
    }
    r
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Response {
    let principal = principal.map(|e| e.0);
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
    let serve = ServeRequest {
        model,
        version,
        inputs: vec![Input::Chat(messages); n],
        params,
        cache: true,
        logprobs: top,
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
            Ok(s) => stream_chunks(s, Kind::Chat, id, created, req.model.clone(), n, usage),
            Err(e) => e.into_response(),
        };
        return labelled(r, label);
    }
    let (label, outcome) = state.core.infer(caller, serve).await;
    let r = match outcome {
        Ok(answer) => {
            let choices: Vec<Value> = generations(&answer)
                .into_iter()
                .enumerate()
                .map(|(i, (text, reason, lps))| {
                    json!({
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": top.map(|_| json!({"content": chat_logprobs(&state, &answer, &lps)})),
                        "finish_reason": reason,
                    })
                })
                .collect();
            Json(json!({
                "id": id, "object": "chat.completion", "created": created,
                "model": req.model, "choices": choices, "usage": usage(&answer, n),
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    };
    labelled(r, label)
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Response {
    let principal = principal.map(|e| e.0);
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
                vec![Input::Tokens(
                    items
                        .iter()
                        .filter_map(|v| v.as_u64().map(|t| t as u32))
                        .collect(),
                )]
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
    let serve = ServeRequest {
        model,
        version,
        inputs,
        params,
        cache: true,
        logprobs: None,
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
            Ok(s) => stream_chunks(s, Kind::Text, id, created, req.model.clone(), count, usage),
            Err(e) => e.into_response(),
        };
        return labelled(r, label);
    }
    let (label, outcome) = state.core.infer(caller, serve).await;
    let r = match outcome {
        Ok(answer) => {
            let choices: Vec<Value> = generations(&answer)
                .into_iter()
                .enumerate()
                .map(|(i, (text, reason, _))| {
                    json!({"index": i, "text": text, "logprobs": null, "finish_reason": reason})
                })
                .collect();
            Json(json!({
                "id": id, "object": "text_completion", "created": created,
                "model": req.model, "choices": choices, "usage": usage(&answer, 1),
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    };
    labelled(r, label)
}

/// Text, finish reason and log-probabilities of each generated output.
fn generations(answer: &Answer) -> Vec<(String, &'static str, Vec<TokenLogprob>)> {
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
fn usage(answer: &Answer, shared: usize) -> Value {
    let prompt = answer.prompt_tokens / shared.max(1);
    let completion = answer.completion_tokens;
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

fn token_text(state: &AppState, answer: &Answer, id: u32) -> String {
    state
        .registry
        .resolve(&answer.model, Some(&answer.version))
        .ok()
        .and_then(|r| r.handle.frontend().codec.as_ref()?.decode(&[id]).ok())
        .unwrap_or_default()
}

fn chat_logprobs(state: &AppState, answer: &Answer, lps: &[TokenLogprob]) -> Vec<Value> {
    lps.iter()
        .map(|lp| {
            let entry = |id: u32, logprob: f32| {
                let token = token_text(state, answer, id);
                json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
            };
            let mut v = entry(lp.token, lp.logprob);
            v["top_logprobs"] = Value::Array(lp.top.iter().map(|&(t, l)| entry(t, l)).collect());
            v
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
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "object": object, "created": created, "model": model,
                           "choices": choices});
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        SseEvent::default().data(c.to_string())
    };
    let choice = move |index: usize, text: String, role: bool, reason: Option<&str>| {
        if kind == Kind::Chat {
            let mut delta = json!({"content": text});
            if role {
                delta["role"] = json!("assistant");
            }
            json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": reason})
        } else {
            json!({"index": index, "text": text, "logprobs": null, "finish_reason": reason})
        }
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
                    chunk(json!([choice(index, text, first, None)]), None)
                }
                StreamItem::Done(answer) => {
                    let shared = if kind == Kind::Chat { n } else { 1 };
                    let mut tail = vec![SseEvent::default().data("[DONE]")];
                    if include_usage {
                        tail.push(chunk(json!([]), Some(usage(&answer, shared))));
                    }
                    st.tail = tail;
                    st.s = None;
                    let finals: Vec<Value> = generations(&answer)
                        .into_iter()
                        .enumerate()
                        .map(|(i, (_, reason, _))| {
                            let first = !st.started.get(i).copied().unwrap_or(true);
                            choice(i, String::new(), first, Some(reason))
                        })
                        .collect();
                    chunk(Value::Array(finals), None)
                }
                StreamItem::Error(e) => {
                    st.s = None;
                    st.tail = vec![SseEvent::default().data("[DONE]")];
                    SseEvent::default().data(
                        json!({"error": {"message": e.message, "type": "server_error",
                                         "param": null, "code": e.kind.code()}})
                        .to_string(),
                    )
                }
            };
            Some((Ok(event), st))
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Response {
    let principal = principal.map(|e| e.0);
    let inputs: Result<Vec<Input>, ApiError> = match &req.input {
        Value::String(s) => Ok(vec![Input::Text(s.clone())]),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(|s| Input::Text(s.to_string())))
            .collect()),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            Ok(vec![Input::Tokens(
                items
                    .iter()
                    .filter_map(|v| v.as_u64().map(|t| t as u32))
                    .collect(),
            )])
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_array) => items
            .iter()
            .map(|l| {
                l.as_array()
                    .filter(|l| l.iter().all(Value::is_u64))
                    .map(|l| {
                        Input::Tokens(
                            l.iter()
                                .filter_map(|t| t.as_u64().map(|t| t as u32))
                                .collect(),
                        )
                    })
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
    let serve = ServeRequest {
        model,
        version,
        inputs,
        params: Map::new(),
        cache: true,
        logprobs: None,
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
    let r = match outcome.and_then(|answer| render_embeddings(&answer, &req, base64)) {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    };
    labelled(r, label)
}

fn render_embeddings(
    answer: &Answer,
    req: &EmbeddingRequest,
    base64: bool,
) -> Result<Value, ApiError> {
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
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            Value::from(v)
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    let tokens = answer.prompt_tokens;
    Ok(json!({"object": "list", "data": data, "model": req.model,
              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
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
