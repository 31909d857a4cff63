//! OpenAI-compatible routes under `/v1`: a thin adapter over the serving core. The model comes
//! from the body's `"model"` (`id` or `id@version`); errors use OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` (see `errors`, a layer on every `/v1` route,
//! so auth and rate-limit refusals take the same shape).
//!
//! Each handler parses, calls the route's `run` (no axum there: `generate::run`,
//! `embeddings::run`, `models::list`, also called by batch lines) and renders: JSON or
//! server-sent events, `x-anya-served-by` / `x-anya-fallbacks`, and the `ModelLabel` response
//! extension the metrics middleware reads.
//!
//! - `types`: the wire types (requests, answers, chunks) and their schemas;
//! - `errors`: the `/v1` error shape and its layer;
//! - `generate`: chat and text completions, one path;
//! - `chunks`: streamed completions as chunks, a tested state machine;
//! - `embeddings`, `models`: the other two routes;
//! - `batch`: `OpenAiExecutor`, the batch lines of `/v1/batches`.

pub mod batch;
pub mod chunks;
pub mod embeddings;
pub mod errors;
pub mod generate;
pub mod models;
pub mod types;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::app::AppState;
use super::extract::ApiJson;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics::ModelLabel;
use crate::serving::Route;
use chunks::ChunkStream;
use generate::Reply;
use types::{ChatRequest, CompletionRequest, EmbeddingRequest, ModelListV1};

// The names the route table and other adapters use.
pub use errors::{errors, NotAboutModel, OpenAiErrorEnvelope};

/// The models served.
#[utoipa::path(
    get,
    path = "/v1/models",
    responses((status = 200, description = "Every model id", body = ModelListV1)),
    tag = "openai"
)]
pub async fn list_models(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
) -> Json<ModelListV1> {
    Json(models::list(&state.core, principal.as_ref().map(|e| &e.0)))
}

/// A chat completion: the model's chat template over `messages`, `n` choices.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, server-sent events each holding a `ChatCompletionChunk`, then `data: [DONE]`", content(
            (types::ChatCompletion = "application/json"),
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
    let principal = principal.as_ref().map(|e| &e.0);
    let (label, reply) = generate::run(&state.core, principal, headers, req.into(), false).await;
    labelled(render(reply), label)
}

/// A text completion: `n` choices per prompt, no chat template.
#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion; with `stream: true`, server-sent events each holding a `TextCompletionChunk`, then `data: [DONE]`", content(
            (types::TextCompletion = "application/json"),
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
    let principal = principal.as_ref().map(|e| &e.0);
    let (label, reply) = generate::run(&state.core, principal, headers, req.into(), false).await;
    labelled(render(reply), label)
}

/// Embeddings of one or more inputs.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One vector per input", body = types::EmbeddingList),
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
    let principal = principal.as_ref().map(|e| &e.0);
    let (label, reply) = embeddings::run(&state.core, principal, headers, req, false).await;
    let r = match reply {
        Ok(e) => routed(Json(e.body).into_response(), &e.route),
        Err(e) => e.into_response(),
    };
    labelled(r, label)
}

/// A completion as JSON, or its chunks as server-sent events.
fn render(reply: Result<Reply, ApiError>) -> Response {
    match reply {
        Ok(Reply::Finished { body, route }) => routed(Json(body).into_response(), &route),
        Ok(Reply::Stream { chunks, route }) => routed(sse(chunks), &route),
        Err(e) => e.into_response(),
    }
}

/// Each chunk a `data:` event (`data: [DONE]` last), keep-alive comments every 15 s. The body
/// owns the stream, so a client that leaves cancels the generation.
fn sse(chunks: Box<ChunkStream>) -> Response {
    let events = futures::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.next().await?;
        let event = SseEvent::default().data(chunk.data());
        Some((Ok::<_, Infallible>(event), chunks))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn labelled(mut r: Response, label: Option<ModelLabel>) -> Response {
    if let Some(l) = label {
        r.extensions_mut().insert(l);
    }
    r
}

/// `x-anya-served-by` (the model and version that answered) and `x-anya-fallbacks` (the
/// targets given up on before it, with why).
fn routed(mut r: Response, route: &Route) -> Response {
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
