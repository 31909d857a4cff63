//! OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for every `/v1`
//! error: `errors` is a layer over every route, so auth and rate-limit refusals take the same
//! shape; `envelope` renders an `ApiError` directly, for callers without a response (batch
//! lines, stream errors).

use axum::body::Body;
use axum::http::{header, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorDetails, ErrorKind, RenderedError};

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorEnvelope {
    pub error: OpenAiError,
}

/// The error's class, as OpenAI's SDKs map it to their exceptions (with the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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

/// The OpenAI body of an error of `kind`, as its response would be rendered.
fn render(
    kind: ErrorKind,
    message: String,
    details: &ErrorDetails,
    not_model: Option<NotAboutModel>,
) -> OpenAiErrorEnvelope {
    let (class, code) = match kind {
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
            (OpenAiErrorType::ServerError, Some(kind.code()))
        }
        ErrorKind::Unavailable => (OpenAiErrorType::ServerError, Some("service_unavailable")),
        _ => (OpenAiErrorType::InvalidRequestError, Some(kind.code())),
    };
    let param = match not_model.and_then(|m| m.param) {
        Some(p) => Some(p.to_string()),
        None => details.field.as_deref().map(openai_param),
    };
    OpenAiErrorEnvelope {
        error: OpenAiError {
            message,
            kind: class,
            param,
            code: code.map(str::to_string),
        },
    }
}

/// The OpenAI body of `e`: what a `/v1` route answers when it fails with `e`.
pub fn envelope(e: &ApiError) -> OpenAiErrorEnvelope {
    render(e.kind, e.message.clone(), &e.details, None)
}

/// The event a stream sends when it fails after it started: a server error whatever the
/// kind, with the kind's native code.
pub fn stream_envelope(e: ApiError) -> OpenAiErrorEnvelope {
    OpenAiErrorEnvelope {
        error: OpenAiError {
            message: e.message,
            kind: OpenAiErrorType::ServerError,
            param: None,
            code: Some(e.kind.code().to_string()),
        },
    }
}

/// OpenAI's error shape for any response our layers rendered as an error.
pub async fn errors(req: Request<Body>, next: Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    openai_error(next.run(req).await)
}

/// A response whose error (in our envelope) is rendered in OpenAI's error shape.
fn openai_error(mut response: Response) -> Response {
    let Some(e) = response.extensions_mut().remove::<RenderedError>() else {
        return response;
    };
    let not_model = response.extensions_mut().remove::<NotAboutModel>();
    let body = render(e.kind, e.message, &e.details, not_model);
    let body = serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}"));
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(retry) = parts.headers.get(header::RETRY_AFTER).cloned() {
        // The SDK honours Retry-After only up to 60 s.
        let secs: u64 = retry
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        parts
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.min(60)));
    }
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    async fn rendered(r: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(openai_error(r).into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn envelope_equals_what_the_layer_renders() {
        for e in [
            ApiError::invalid("parameters.temperature", "must be at most 2"),
            ApiError::invalid("inputs[0]", "is too long"),
            ApiError::not_found("no model `x`"),
            ApiError::unavailable("queue full", 1),
            ApiError::new(ErrorKind::RateLimited, "slow down"),
            ApiError::new(ErrorKind::Unauthorized, "no token"),
            ApiError::internal("boom"),
        ] {
            let direct = serde_json::to_value(envelope(&e)).unwrap_or_default();
            assert_eq!(direct, rendered(e.into_response()).await);
        }
    }

    #[tokio::test]
    async fn a_missing_object_is_not_a_missing_model() {
        let mut r = ApiError::not_found("No such File object: file-abc").into_response();
        r.extensions_mut()
            .insert(NotAboutModel { param: Some("id") });
        let v = rendered(r).await;
        assert_eq!(v["error"]["code"], serde_json::Value::Null);
        assert_eq!(v["error"]["param"], "id");
        let v = serde_json::to_value(envelope(&ApiError::not_found("x"))).unwrap_or_default();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
    }
}
