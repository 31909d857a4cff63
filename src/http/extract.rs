//! A JSON body extractor whose every failure is our error envelope (axum's own answers with
//! plain text), naming the field that failed where serde can tell; and the one check that a
//! route got only the query parameters it knows.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorDetails, ErrorKind};

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let ct = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                ct == "application/json" || ct.ends_with("+json")
            })
            .unwrap_or(false);
        if !json_type {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "expected a JSON body with `Content-Type: application/json`",
            )
            .with_details(ErrorDetails {
                field: Some("Content-Type".into()),
                issue: Some("must be application/json".into()),
            }));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorKind::PayloadTooLarge, "request body is too large").with_details(
                    ErrorDetails {
                        field: Some("body".into()),
                        issue: Some("larger than server.max_body_bytes".into()),
                    },
                )
            } else {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("cannot read body: {rejection}"),
                )
            }
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(ApiJson(v)),
            Err(err) => {
                let path = err.path().to_string();
                let inner = err.into_inner();
                let issue = inner.to_string();
                let (message, field) = match inner.classify() {
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                        (format!("malformed JSON: {issue}"), None)
                    }
                    _ => (
                        format!("invalid request body: {issue}"),
                        (path != ".").then_some(path),
                    ),
                };
                Err(
                    ApiError::new(ErrorKind::InvalidRequest, message).with_details(ErrorDetails {
                        field,
                        issue: Some(issue),
                    }),
                )
            }
        }
    }
}

/// A 400 naming the first query parameter not in `allowed` (shared by the query-taking routes).
pub(crate) fn only(
    q: &std::collections::HashMap<String, String>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(
            k.clone(),
            format!("unknown query parameter; allowed: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}
