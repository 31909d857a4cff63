//! The one error type every HTTP route answers with, and the envelope it renders to.
//!
//! `ErrorKind` decides the status, the public error code and the metrics label in one place,
//! so a new failure mode cannot get a status without a code. Internal errors (5xx) never show
//! their cause to the client: it is logged with the request's span instead.

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::EngineError;
use crate::registry::RegistryError;

/// What went wrong, as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    HeadersTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    /// The body did not arrive in time (`server.body_timeout_ms`).
    BodyTimeout,
    RateLimited,
    /// The request clashes with the state of a resource (unloading the only routed version).
    Conflict,
    /// A model version could not be loaded (bad files, signature, unsupported format).
    LoadFailed,
    Internal,
    /// A remote model's provider failed (unreachable, 5xx) and no fallback answered.
    BadGateway,
    Unavailable,
    Timeout,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Conflict => StatusCode::CONFLICT,
            Self::LoadFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable, documented error code (also the metrics label).
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTimeout => "request_timeout",
            Self::RateLimited => "rate_limit_exceeded",
            Self::Conflict => "conflict",
            Self::LoadFailed => "model_load_failed",
            Self::Internal => "internal_error",
            Self::BadGateway => "upstream_error",
            Self::Unavailable => "service_unavailable",
            Self::Timeout => "timeout",
        }
    }
}

/// Which part of the request was wrong, and how.
#[derive(Debug, Clone, Default, Serialize, ToSchema, PartialEq)]
pub struct ErrorDetails {
    /// The offending field, as a JSON path into the request (`parameters.temperature`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong with it, including the allowed range or limit where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue: Option<String>,
}

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub details: ErrorDetails,
    /// Seconds for `Retry-After` (503 and 429).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: ErrorDetails::default(),
            retry_after_s: None,
        }
    }

    /// A 400 about one field.
    pub fn invalid(field: impl Into<String>, issue: impl Into<String>) -> Self {
        let field = field.into();
        let issue = issue.into();
        Self::new(
            ErrorKind::InvalidRequest,
            format!("invalid `{field}`: {issue}"),
        )
        .with_details(ErrorDetails {
            field: Some(field),
            issue: Some(issue),
        })
    }

    /// A 413 naming the limit that was passed.
    pub fn too_large(field: impl Into<String>, issue: impl Into<String>) -> Self {
        let mut e = Self::invalid(field, issue);
        e.kind = ErrorKind::PayloadTooLarge;
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>, retry_after_s: u64) -> Self {
        let mut e = Self::new(ErrorKind::Unavailable, message);
        e.retry_after_s = Some(retry_after_s);
        e
    }

    /// A 500 whose cause is logged, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorKind::Internal,
            "the server failed to process the request",
        )
    }

    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        self.details = details;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The native envelope of this error.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                code: self.kind.code(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }
}

/// The envelope as JSON text, for the few answers written below axum (see `conn`).
pub fn envelope_json(kind: ErrorKind, message: &str) -> String {
    let body = ErrorEnvelope {
        error: ErrorBody {
            code: kind.code(),
            message: message.to_string(),
            details: ErrorDetails::default(),
        },
    };
    serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}"))
}

/// The error a response was rendered from (in its extensions).
#[derive(Debug, Clone)]
pub struct RenderedError {
    pub kind: ErrorKind,
    pub message: String,
    pub details: ErrorDetails,
}

/// The error code of a response, for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The JSON body of every error: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// The documented values of `code` (`ErrorKind::code`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum ErrorCodeDoc {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    HeadersTooLarge,
    RateLimitExceeded,
    Conflict,
    ModelLoadFailed,
    InternalError,
    ServiceUnavailable,
    Timeout,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: invalid_request, unauthorized, forbidden, not_found,
    /// method_not_allowed, request_timeout, payload_too_large, uri_too_long,
    /// unsupported_media_type, headers_too_large, rate_limit_exceeded, conflict,
    /// model_load_failed, internal_error,
    /// service_unavailable, timeout.
    #[schema(value_type = ErrorCodeDoc)]
    pub code: &'static str,
    pub message: String,
    pub details: ErrorDetails,
}

// What the layers' own errors mean to a client: one conversion each, beside the envelope.

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::NotFound(_) | RegistryError::VersionNotFound(..) => {
                ApiError::not_found(e.to_string())
            }
            RegistryError::Loading { .. } => ApiError::unavailable(e.to_string(), 5),
            RegistryError::Draining { .. } => ApiError::unavailable(e.to_string(), 1),
            RegistryError::Failed { id, version, .. } => ApiError::unavailable(
                format!("model `{id}` version {version} failed to load; see GET /models/{id}"),
                30,
            ),
            RegistryError::Duplicate(..) => ApiError::internal(e),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Overloaded { .. } => ApiError::unavailable(format!("{e}; retry later"), 1),
            EngineError::Timeout { timeout_ms, .. } => {
                ApiError::new(ErrorKind::Timeout, e.to_string()).with_details(ErrorDetails {
                    field: None,
                    issue: Some(format!("server.request_timeout_ms is {timeout_ms}")),
                })
            }
            EngineError::Stopped(_) => ApiError::unavailable(e.to_string(), 5),
            EngineError::Model(_) | EngineError::Load(_) => ApiError::internal(e),
            EngineError::Upstream {
                status,
                retry_after_ms,
                ..
            } => match *status {
                429 => {
                    let mut a = ApiError::new(ErrorKind::RateLimited, e.to_string());
                    a.retry_after_s = retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
                    a
                }
                400..=499 if *status != 408 => {
                    ApiError::new(ErrorKind::InvalidRequest, e.to_string())
                }
                _ => ApiError::new(ErrorKind::BadGateway, e.to_string()),
            },
            EngineError::Unreachable { .. } => ApiError::new(ErrorKind::BadGateway, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_documented_status_and_code() {
        let cases = [
            (ErrorKind::InvalidRequest, 400, "invalid_request"),
            (ErrorKind::Unauthorized, 401, "unauthorized"),
            (ErrorKind::Forbidden, 403, "forbidden"),
            (ErrorKind::NotFound, 404, "not_found"),
            (ErrorKind::PayloadTooLarge, 413, "payload_too_large"),
            (ErrorKind::BodyTimeout, 408, "request_timeout"),
            (ErrorKind::UriTooLong, 414, "uri_too_long"),
            (
                ErrorKind::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (ErrorKind::HeadersTooLarge, 431, "headers_too_large"),
            (ErrorKind::RateLimited, 429, "rate_limit_exceeded"),
            (ErrorKind::Conflict, 409, "conflict"),
            (ErrorKind::LoadFailed, 422, "model_load_failed"),
            (ErrorKind::Internal, 500, "internal_error"),
            (ErrorKind::Unavailable, 503, "service_unavailable"),
            (ErrorKind::Timeout, 504, "timeout"),
        ];
        for (kind, status, code) in cases {
            assert_eq!(kind.status().as_u16(), status);
            assert_eq!(kind.code(), code);
        }
    }

    #[test]
    fn the_documented_codes_are_the_codes() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(ErrorCodeDoc::schema()).unwrap();
        let documented: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let kinds = [
            ErrorKind::InvalidRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::PayloadTooLarge,
            ErrorKind::HeadersTooLarge,
            ErrorKind::UriTooLong,
            ErrorKind::UnsupportedMediaType,
            ErrorKind::BodyTimeout,
            ErrorKind::RateLimited,
            ErrorKind::Conflict,
            ErrorKind::LoadFailed,
            ErrorKind::Internal,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
        ];
        let mut codes: Vec<&str> = kinds.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        let mut documented = documented;
        documented.sort_unstable();
        assert_eq!(codes, documented);
    }

    #[test]
    fn internal_hides_its_cause() {
        let e = ApiError::internal("secret path /etc/x");
        assert!(!e.message.contains("secret"));
    }
}
