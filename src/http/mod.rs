//! The HTTP adapter layer: the application (`app`: state, route table, layers) and one thin
//! adapter per protocol or resource — wire format in, the serving core's request, the core's
//! answer out in the protocol's own shape. All errors are `ApiError`, rendered per protocol.

pub mod app;
pub mod batches;
pub mod cache;
pub mod console;
pub mod drift;
pub mod extract;
pub mod heads;
pub mod health;
pub mod jobs;
pub mod kserve;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod predict;
pub mod routes;
pub mod traffic;
pub mod usage;
pub mod ws;

/// Parameter checking moved to the serving core; the old path still works.
pub use crate::serving::params;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode, ErrorKind, RenderedError};

/// The native envelope, with the status, `Retry-After` and `WWW-Authenticate`; the error's
/// kind rides along in the response's extensions for the metrics and for adapters that render
/// errors in their own protocol's shape (`/v1`).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.envelope();
        let mut response = (status, axum::Json(body)).into_response();
        response
            .extensions_mut()
            .insert(ErrorCode(self.kind.code()));
        // Kept for adapters that render errors in their own protocol's shape (`/v1`).
        response.extensions_mut().insert(RenderedError {
            kind: self.kind,
            message: self.message.clone(),
            details: self.details.clone(),
        });
        if let Some(secs) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.kind == ErrorKind::Unauthorized {
            let challenge = crate::auth::challenge(&self.message);
            let value = HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"anya\""));
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_retry_after() {
        let r = ApiError::unavailable("queue full", 1).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
