//! A JSON body extractor whose every failure is our error envelope (axum's own answers with
//! plain text), naming the field that failed where serde can tell; and the one check that a
//! route got only the query parameters it knows.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::app::AppState;
use crate::error::{ApiError, ErrorDetails, ErrorKind};

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Send + 'static,
    AppState: FromRef<S>,
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
        let bytes = read_body(req, state).await?;
        if bytes.len() <= INLINE_PARSE_BYTES {
            return parse_json(&bytes).map(ApiJson);
        }
        // Parsing a large body takes milliseconds: off the async runtime, like tokenizing.
        tokio::task::spawn_blocking(move || parse_json(&bytes))
            .await
            .map_err(ApiError::internal)?
            .map(ApiJson)
    }
}

/// Read a request body within `server.body_timeout_ms` (408) and `server.max_body_bytes` (413),
/// every failure in our envelope.
pub async fn read_body<S>(req: Request, state: &S) -> Result<Bytes, ApiError>
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    let app = AppState::from_ref(state);
    let body_timeout = std::time::Duration::from_millis(app.settings.server.body_timeout_ms);
    let read = tokio::time::timeout(body_timeout, Bytes::from_request(req, state))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorKind::BodyTimeout,
                format!(
                    "the request body did not arrive within {} ms",
                    body_timeout.as_millis()
                ),
            )
            .with_details(ErrorDetails {
                field: Some("body".into()),
                issue: Some(format!(
                    "server.body_timeout_ms is {}",
                    body_timeout.as_millis()
                )),
            })
        })?;
    let bytes = read.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorKind::PayloadTooLarge, "request body is too large").with_details(
                ErrorDetails {
                    field: Some("body".into()),
                    issue: Some(
                        "larger than the route's limit: server.max_body_bytes \
                         (server.max_train_body_bytes for training examples, \
                         jobs.max_file_bytes for uploads)"
                            .into(),
                    ),
                },
            )
        } else {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("cannot read body: {rejection}"),
            )
        }
    })?;
    Ok(bytes)
}

/// A raw body (binary protocols), read like `ApiJson` reads its bytes.
pub struct ApiBytes(pub Bytes);

impl<S> FromRequest<S> for ApiBytes
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_body(req, state).await.map(ApiBytes)
    }
}

/// Bodies up to this size are parsed on the async runtime (microseconds); larger ones on the
/// blocking pool.
pub const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// Parse a request body strictly: one JSON object and nothing after it (no top-level array
/// read as a struct's fields, no trailing bytes, no second document). Failures are 400s
/// naming the field where serde can tell.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let found = match first {
            None => "an empty body",
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(_) => "something else",
        };
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("the body must be a JSON object; found {found}"),
        )
        .with_details(ErrorDetails {
            field: Some("body".into()),
            issue: Some("must be a JSON object".into()),
        }));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|err| {
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
        ApiError::new(ErrorKind::InvalidRequest, message).with_details(ErrorDetails {
            field,
            issue: Some(issue),
        })
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("malformed JSON: unexpected data after the JSON object ({e})"),
        )
        .with_details(ErrorDetails {
            field: Some("body".into()),
            issue: Some("must hold exactly one JSON object".into()),
        })
    })?;
    Ok(value)
}

/// Path parameters whose every failure (bad UTF-8, a segment that does not parse) is our
/// envelope, not axum's plain-text rejection.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("invalid path: {}", rejection.body_text()),
            )
            .with_details(ErrorDetails {
                field: Some("path".into()),
                issue: Some(rejection.body_text()),
            })),
        }
    }
}

/// Query parameters whose parse failures are our envelope, not axum's plain text.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("invalid query string: {}", rejection.body_text()),
            )
            .with_details(ErrorDetails {
                field: Some("query".into()),
                issue: Some(rejection.body_text()),
            })),
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
