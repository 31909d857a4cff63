//! The lines of an OpenAI batch (`/v1/batches`), run in process on the background lane through
//! the same functions as the `/v1` routes (`generate::run`, `embeddings::run`): a line's
//! `response.body` is what the direct request would have answered, with no HTTP in between.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde::Serialize;
use serde_json::{json, Value};

use super::embeddings;
use super::errors::envelope;
use super::generate::{self, GenerateRequest, Reply};
use super::types::{ChatRequest, CompletionRequest, EmbeddingRequest};
use crate::auth::Principal;
use crate::config::JobsSection;
use crate::error::ApiError;
use crate::http::extract::parse_json;
use crate::jobs::store::StoredResult;
use crate::jobs::{BoxFuture, Executor, JobRecord};
use crate::metrics::ModelLabel;
use crate::serving::Core;

/// How a line that finds the server busy or over a budget waits before it tries again: a job
/// never fails an input for that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// The first wait; each retry doubles it (up to 2⁷ times), unless the answer names a
    /// `Retry-After`.
    pub base_wait: Duration,
    /// No wait is longer.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 40,
            base_wait: Duration::from_millis(200),
            max_wait: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Whether an error of this status is worth waiting out: busy (503), over a budget (429),
    /// a provider down (502) or too slow (504).
    fn retries(status: u16) -> bool {
        matches!(status, 429 | 502 | 503 | 504)
    }

    /// The wait before retry number `retry` (from 1).
    fn wait(&self, retry: u32, retry_after_s: Option<u64>) -> Duration {
        retry_after_s
            .map(Duration::from_secs)
            .unwrap_or(self.base_wait * (1u32 << retry.min(7)))
            .min(self.max_wait)
    }
}

/// One line's result.
#[derive(Debug, Clone)]
pub struct LineOutcome {
    /// The HTTP status the direct request would have answered.
    pub status: u16,
    /// Its body: the answer, or OpenAI's error shape.
    pub body: Value,
    /// The version that answered, with the tokens and cost the core counted (`None` when the
    /// line failed before a version was known).
    pub label: Option<ModelLabel>,
}

impl LineOutcome {
    fn failed(e: &ApiError, label: Option<ModelLabel>) -> Self {
        Self {
            status: e.status().as_u16(),
            body: serde_json::to_value(envelope(e)).unwrap_or(Value::Null),
            label,
        }
    }
}

/// The endpoint a batch line's inference is booked under.
const ENDPOINT: &str = "job/openai";

/// A line's request, parsed once.
#[derive(Debug, Clone)]
enum LineRequest {
    Generate(GenerateRequest),
    Embed(EmbeddingRequest),
}

impl LineRequest {
    /// The line's `body`, read as the request its `url` names (strictly, as the route reads it).
    fn parse(line: &[u8]) -> Result<Self, ApiError> {
        let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
        let url = v.get("url").and_then(Value::as_str).unwrap_or_default();
        let body = serde_json::to_vec(v.get("body").unwrap_or(&Value::Null)).unwrap_or_default();
        match url {
            "/v1/chat/completions" => {
                parse_json::<ChatRequest>(&body).map(|r| Self::Generate(r.into()))
            }
            "/v1/completions" => {
                parse_json::<CompletionRequest>(&body).map(|r| Self::Generate(r.into()))
            }
            "/v1/embeddings" => parse_json::<EmbeddingRequest>(&body).map(Self::Embed),
            _ => Err(ApiError::invalid("url", "is not a batch endpoint")),
        }
    }
}

/// Runs batch lines on the serving core, on the background lane. Holds the core and its retry
/// policy only, so it can be built before the HTTP state is.
pub struct OpenAiExecutor {
    core: Arc<Core>,
    retry: RetryPolicy,
}

impl OpenAiExecutor {
    pub fn with_core(core: Arc<Core>, retry: RetryPolicy) -> Arc<Self> {
        Arc::new(Self { core, retry })
    }

    /// One line: its status, body and the label of the version that answered. Busy or over a
    /// budget, it waits and tries again (`RetryPolicy`).
    pub async fn call(&self, owner: &Principal, line: &[u8]) -> LineOutcome {
        let req = match LineRequest::parse(line) {
            Ok(r) => r,
            Err(e) => return LineOutcome::failed(&e, None),
        };
        let mut retries = 0u32;
        loop {
            // The books of this line: background traffic of the batch's owner.
            let mut ticket = self.core.gate.background(ENDPOINT, owner);
            let (label, result) = self.attempt(owner, req.clone()).await;
            ticket.answered_by(label.clone());
            let e = match result {
                Ok(body) => {
                    drop(ticket.close(200, None));
                    return LineOutcome {
                        status: 200,
                        body,
                        label,
                    };
                }
                Err(e) => e,
            };
            let status = e.status().as_u16();
            if RetryPolicy::retries(status) && retries < self.retry.max_retries {
                ticket.retried();
                retries += 1;
                tokio::time::sleep(self.retry.wait(retries, e.retry_after_s)).await;
                continue;
            }
            drop(ticket.close(status, Some(e.kind.code())));
            return LineOutcome::failed(&e, label);
        }
    }

    async fn attempt(
        &self,
        owner: &Principal,
        req: LineRequest,
    ) -> (Option<ModelLabel>, Result<Value, ApiError>) {
        let headers = HeaderMap::new();
        match req {
            LineRequest::Generate(r) => {
                let (label, reply) = generate::run(&self.core, Some(owner), headers, r, true).await;
                let body = reply.and_then(|reply| match reply {
                    Reply::Finished { body, .. } => json_of(&body),
                    // Refused when the batch was created; never streamed here.
                    Reply::Stream { .. } => {
                        Err(ApiError::invalid("stream", "is not supported in a batch"))
                    }
                });
                (label, body)
            }
            LineRequest::Embed(r) => {
                let (label, reply) =
                    embeddings::run(&self.core, Some(owner), headers, r, true).await;
                (label, reply.and_then(|e| json_of(&e.body)))
            }
        }
    }
}

/// The JSON a route would have sent. Through its text, so that each f32 keeps the short form
/// the route writes (a `Value` made directly would hold its f64 widening).
fn json_of(body: &impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_vec(body)
        .and_then(|bytes| serde_json::from_slice(&bytes))
        .map_err(ApiError::internal)
}

impl Executor for OpenAiExecutor {
    fn chunk(&self, cfg: &JobsSection) -> usize {
        // Lines are requests of their own; a chunk's lines run at once, so the model batches them.
        cfg.chunk.clamp(1, 16)
    }

    fn run<'a>(
        &'a self,
        job: &'a JobRecord,
        inputs: Vec<(u64, Vec<u8>)>,
    ) -> BoxFuture<'a, Vec<StoredResult>> {
        Box::pin(async move {
            let calls = inputs.into_iter().map(|(index, line)| async move {
                let outcome = self.call(&job.owner, &line).await;
                result_line(index, &line, outcome)
            });
            futures::future::join_all(calls).await
        })
    }
}

/// A line of the batch's output (or error) file: OpenAI's `{id, custom_id, response, error}`.
fn result_line(index: u64, line: &[u8], outcome: LineOutcome) -> StoredResult {
    let custom_id = serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| v.get("custom_id").cloned())
        .unwrap_or(Value::Null);
    let out = json!({
        "id": format!("batch_req_{}", uuid::Uuid::new_v4().simple()),
        "custom_id": custom_id,
        "response": {
            "status_code": outcome.status,
            "request_id": uuid::Uuid::new_v4().simple().to_string(),
            "body": outcome.body,
        },
        "error": null,
    });
    StoredResult {
        index,
        ok: (200..300).contains(&outcome.status),
        line: serde_json::to_vec(&out).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn waits_double_up_to_the_cap_and_honour_retry_after() {
        let p = RetryPolicy::default();
        assert_eq!(p.wait(1, None), Duration::from_millis(400));
        assert_eq!(p.wait(2, None), Duration::from_millis(800));
        assert_eq!(p.wait(7, None), Duration::from_millis(25_600));
        assert_eq!(p.wait(30, None), Duration::from_millis(25_600));
        assert_eq!(p.wait(3, Some(2)), Duration::from_secs(2));
        assert_eq!(p.wait(3, Some(600)), Duration::from_secs(30));
        assert!(RetryPolicy::retries(503) && RetryPolicy::retries(429));
        assert!(!RetryPolicy::retries(400) && !RetryPolicy::retries(500));
    }

    #[test]
    fn a_bad_line_fails_with_the_openai_error_shape() {
        let e = LineRequest::parse(br#"{"url": "/v1/nope", "body": {}}"#).unwrap_err();
        let out = LineOutcome::failed(&e, None);
        assert_eq!(out.status, 400);
        assert_eq!(out.body["error"]["type"], "invalid_request_error");
        assert_eq!(out.body["error"]["param"], "url");
        assert!(
            LineRequest::parse(br#"{"url": "/v1/embeddings", "body": {"model": "e"}}"#).is_err()
        );
        assert!(matches!(
            LineRequest::parse(
                br#"{"url": "/v1/completions", "body": {"model": "m", "prompt": "x"}}"#
            ),
            Ok(LineRequest::Generate(GenerateRequest::Completion(_)))
        ));
        let busy = LineOutcome::failed(&ApiError::new(ErrorKind::Unavailable, "busy"), None);
        assert_eq!(busy.status, 503);
        assert_eq!(busy.body["error"]["code"], "service_unavailable");
    }

    #[test]
    fn result_lines_carry_status_body_and_custom_id() {
        let r = result_line(
            3,
            br#"{"custom_id": "a-1"}"#,
            LineOutcome {
                status: 200,
                body: json!({"x": 0.1f32}),
                label: None,
            },
        );
        assert_eq!(r.index, 3);
        assert!(r.ok);
        let v: Value = serde_json::from_slice(&r.line).unwrap_or_default();
        assert_eq!(v["custom_id"], "a-1");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["error"], Value::Null);
        // f32s keep the short form the route writes.
        #[derive(Serialize)]
        struct F {
            x: f32,
        }
        assert_eq!(
            json_of(&F { x: 0.1 }).unwrap_or_default().to_string(),
            r#"{"x":0.1}"#
        );
    }
}
