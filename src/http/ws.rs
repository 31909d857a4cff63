//! `GET /v1/ws`: the native predict API over one WebSocket, several requests at once.
//!
//! A client sends JSON text messages, each with its own request id:
//! - `{"type": "predict", "id", "model", "version"?, "inputs", "parameters"?}` (the native
//!   predict body, addressed by `model`);
//! - `{"type": "chat", "id", "model", "version"?, "messages", "parameters"?}` (one conversation);
//! - `{"type": "cancel", "id"}` (stops that request's sequences at the engine's next step).
//!
//! and receives, tagged with those ids: `delta` (`{"index", "text"}` per piece of text),
//! then `done` (the native response body: outputs, model, model_version, metadata), or `error`
//! (the native envelope's `error` object), or `cancelled`. Every request goes through the
//! serving core like any other (model access, validation, cache, token budget, accounting), is
//! rate-limited per message, holds a `server.max_concurrent_requests` slot and counts as in
//! flight while open. Auth is the upgrade request's Bearer token. Closing the socket cancels
//! its open requests; during a drain, new requests are refused, open ones finish, then the
//! server closes the socket (1001).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::app::AppState;
use super::predict::{render, serve_request, PredictRequest};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::serving::{Entry, StreamItem, Ticket, Who};

/// Requests one connection may have open at once (each also takes a
/// `server.max_concurrent_requests` slot).
pub const MAX_OPEN_PER_CONNECTION: usize = 64;
/// Longest request id accepted.
const MAX_ID_BYTES: usize = 256;
/// Pings keep idle connections alive through proxies and find dead peers.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// The route label in metrics and the access log.
const ENDPOINT: &str = "/v1/ws";

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Predict {
        id: String,
        model: String,
        #[serde(default)]
        version: Option<String>,
        inputs: Value,
        #[serde(default)]
        parameters: Map<String, Value>,
    },
    Chat {
        id: String,
        model: String,
        #[serde(default)]
        version: Option<String>,
        messages: Value,
        #[serde(default)]
        parameters: Map<String, Value>,
    },
    Cancel {
        id: String,
    },
}

/// `GET /v1/ws`: upgrade to a WebSocket carrying predict and chat requests.
///
/// Client messages (JSON text frames): `{"type": "predict", "id", "model", "version"?,
/// "inputs", "parameters"?}`, `{"type": "chat", "id", "model", "version"?, "messages",
/// "parameters"?}` and `{"type": "cancel", "id"}`; the server answers each request on the same
/// socket, by its `id`.
#[utoipa::path(
    get,
    path = "/v1/ws",
    responses(
        (status = 101, description = "Switched to a WebSocket (Connection: upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)"),
        (status = 400, description = "Not a WebSocket upgrade", body = super::openai::OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn ws(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return ApiError::invalid(
                "headers",
                format!("this route takes a WebSocket upgrade (GET with Connection: upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13): {e}"),
            )
            .into_response()
        }
    };
    let principal = principal.map(|e| e.0);
    let max = state.settings.server.max_body_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(state, principal, socket))
}

/// Messages to the client, from the request tasks to the writer.
type Outbox = mpsc::Sender<Message>;

fn text(v: Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn error_message(id: Option<&str>, e: &ApiError) -> Message {
    let mut body = serde_json::to_value(e.envelope().error).unwrap_or(Value::Null);
    if let (Some(secs), Value::Object(map)) = (e.retry_after_s, &mut body) {
        map.insert("retry_after_s".into(), Value::from(secs));
    }
    text(json!({"type": "error", "id": id, "error": body}))
}

/// One connection: read requests, run each on its own task, write what they send.
async fn serve(state: AppState, principal: Option<Principal>, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
        while let Some(m) = outbox.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut open: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut ids: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let idle_limit =
        Duration::from_millis(state.settings.server.keep_alive_timeout_ms).max(PING_INTERVAL * 2);
    let mut last_heard = Instant::now();
    let lifecycle = state.lifecycle.clone();
    let mut draining = lifecycle.is_draining();
    loop {
        if draining && open.is_empty() {
            let _ = out
                .send(Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: Utf8Bytes::from_static(crate::serving::ticket::SHUTTING_DOWN),
                })))
                .await;
            break;
        }
        tokio::select! {
            frame = incoming.next() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = Instant::now();
                let raw = match frame {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        let e = ApiError::invalid("message", "must be a JSON text message");
                        if out.send(error_message(None, &e)).await.is_err() { break }
                        continue;
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let msg = match parse(raw.as_str()) {
                    Ok(m) => m,
                    Err((id, e)) => {
                        if out.send(error_message(id.as_deref(), &e)).await.is_err() { break }
                        continue;
                    }
                };
                match msg {
                    ClientMessage::Cancel { id } => {
                        let reply = match open.remove(&id) {
                            Some(handle) => {
                                ids.remove(&handle.id());
                                handle.abort();
                                text(json!({"type": "cancelled", "id": id}))
                            }
                            None => error_message(
                                Some(&id),
                                &ApiError::not_found(format!("no open request with id `{id}`")),
                            ),
                        };
                        if out.send(reply).await.is_err() { break }
                    }
                    request => {
                        let (id, started) = match admit(&state, principal.as_ref(), &open, request).await {
                            Ok(admitted) => admitted,
                            Err((id, e)) => {
                                if out.send(error_message(id.as_deref(), &e)).await.is_err() { break }
                                continue;
                            }
                        };
                        let handle = tasks.spawn(started.run(out.clone()));
                        ids.insert(handle.id(), id.clone());
                        open.insert(id, handle);
                    }
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(e) => e.id(),
                };
                if let Some(id) = ids.remove(&task) {
                    open.remove(&id);
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > idle_limit {
                    tracing::debug!("closing a WebSocket that answered no ping");
                    break;
                }
                if out.send(Message::Ping(Default::default())).await.is_err() { break }
            }
            _ = lifecycle.until_draining(), if !draining => {
                draining = true;
            }
        }
    }
    // A closed socket cancels what is still open: dropping a task drops its answer stream,
    // which stops the engine's sequences at their next step and closes their books.
    tasks.shutdown().await;
    drop(out);
    let _ = writer.await;
}

/// Read one client message; on failure, the request id when one could be read.
fn parse(raw: &str) -> Result<ClientMessage, (Option<String>, ApiError)> {
    let value: Value = serde_json::from_str(raw).map_err(|e| {
        (
            None,
            ApiError::invalid("message", format!("is not valid JSON: {e}")),
        )
    })?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_string);
    if !value.is_object() {
        return Err((None, ApiError::invalid("message", "must be a JSON object")));
    }
    let msg: ClientMessage = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "message".to_string()
        } else {
            path
        };
        (
            id.clone(),
            ApiError::invalid(field, e.into_inner().to_string()),
        )
    })?;
    let id_ok = match &msg {
        ClientMessage::Predict { id, .. }
        | ClientMessage::Chat { id, .. }
        | ClientMessage::Cancel { id } => !id.is_empty() && id.len() <= MAX_ID_BYTES,
    };
    if !id_ok {
        return Err((
            None,
            ApiError::invalid("id", format!("must have 1 to {MAX_ID_BYTES} bytes")),
        ));
    }
    Ok(msg)
}

/// A request that passed the connection's checks, with its slot and in-flight count.
struct Started {
    state: AppState,
    id: String,
    request: crate::serving::ServeRequest,
    ticket: Ticket,
}

type Refusal = (Option<String>, ApiError);

/// Check a request against the connection (id free, the per-connection cap), take its ticket
/// from the serving gate (not draining, a place, the principal's request rate) and turn it into
/// the core's request.
async fn admit(
    state: &AppState,
    principal: Option<&Principal>,
    open: &HashMap<String, tokio::task::AbortHandle>,
    msg: ClientMessage,
) -> Result<(String, Started), Refusal> {
    let (id, model, version, body) = match msg {
        ClientMessage::Predict {
            id,
            model,
            version,
            inputs,
            parameters,
        } => (id, model, version, PredictRequest { inputs, parameters }),
        ClientMessage::Chat {
            id,
            model,
            version,
            messages,
            parameters,
        } => {
            if !messages.is_array() {
                return Err((
                    Some(id),
                    ApiError::invalid("messages", "must be a list of {role, content} messages"),
                ));
            }
            let inputs = Value::Array(vec![messages]);
            (id, model, version, PredictRequest { inputs, parameters })
        }
        ClientMessage::Cancel { id } => {
            return Err((
                Some(id),
                ApiError::invalid("type", "cancel is not a request"),
            ))
        }
    };
    let refuse = |e: ApiError| (Some(id.clone()), e);
    if open.contains_key(&id) {
        return Err(refuse(ApiError::invalid(
            "id",
            format!("a request with id `{id}` is still open on this connection"),
        )));
    }
    if open.len() >= MAX_OPEN_PER_CONNECTION {
        return Err(refuse(ApiError::unavailable(
            format!("{MAX_OPEN_PER_CONNECTION} requests are already open on this connection"),
            1,
        )));
    }
    let entry = Entry {
        endpoint: ENDPOINT,
        method: "WS",
        who: principal.map_or(Who::Anyone, Who::Known),
        place: true,
    };
    let ticket = state.gate.admit(entry).await.map_err(|r| refuse(r.error))?;
    let (request, _stream) =
        serve_request(&model, version.as_deref(), false, body).map_err(refuse)?;
    Ok((
        id.clone(),
        Started {
            state: state.clone(),
            id,
            request,
            ticket,
        },
    ))
}

impl Started {
    /// Run the request through the core, sending its deltas and its end.
    async fn run(self, out: Outbox) {
        let Started {
            state,
            id,
            request,
            mut ticket,
        } = self;
        let (label, outcome) = state.core.infer_stream(ticket.caller(), request).await;
        let mut status = 200;
        let mut code = None;
        match outcome {
            Err(e) => {
                status = e.kind.status().as_u16();
                code = Some(e.kind.code());
                let _ = out.send(error_message(Some(&id), &e)).await;
            }
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    let msg = match item {
                        StreamItem::Delta { index, text: t, .. } => {
                            text(json!({"type": "delta", "id": id, "index": index, "text": t}))
                        }
                        StreamItem::Done(answer) => {
                            let mut body =
                                serde_json::to_value(render(answer)).unwrap_or(Value::Null);
                            if let Value::Object(map) = &mut body {
                                map.insert("type".into(), Value::from("done"));
                                map.insert("id".into(), Value::from(id.as_str()));
                            }
                            text(body)
                        }
                        StreamItem::Error(e) => {
                            status = e.kind.status().as_u16();
                            code = Some(e.kind.code());
                            error_message(Some(&id), &e)
                        }
                    };
                    if out.send(msg).await.is_err() {
                        break; // the connection is gone: dropping the stream cancels it
                    }
                }
            }
        }
        ticket.answered_by(label);
        drop(ticket.close(status, code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn messages_parse_strictly_and_name_the_bad_field() {
        let m = parse(r#"{"type":"predict","id":"a","model":"echo","inputs":["x"]}"#);
        assert!(matches!(m, Ok(ClientMessage::Predict { ref id, .. }) if id == "a"));
        let m = parse(r#"{"type":"cancel","id":"a"}"#);
        assert!(matches!(m, Ok(ClientMessage::Cancel { .. })));
        let (id, e) = parse(r#"{"type":"predict","id":"b","model":"echo","inputs":[],"nope":1}"#)
            .err()
            .unwrap();
        assert_eq!(id.as_deref(), Some("b"));
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let (id, e) = parse("[1]").err().unwrap();
        assert!(id.is_none());
        assert_eq!(e.details.field.as_deref(), Some("message"));
        let (_, e) = parse(r#"{"type":"chat","id":"c","model":"m"}"#)
            .err()
            .unwrap();
        assert!(e.message.contains("messages"), "{}", e.message);
        let (_, e) = parse(r#"{"type":"launch","id":"d"}"#).err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let (_, e) = parse(&format!(r#"{{"type":"cancel","id":"{long}"}}"#))
            .err()
            .unwrap();
        assert_eq!(e.details.field.as_deref(), Some("id"));
        assert!(parse("not json").is_err());
    }
}
