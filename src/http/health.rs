//! Liveness and readiness.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::app::AppState;
use crate::error::{ApiError, ErrorDetails, ErrorEnvelope};

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyStatus {
    pub status: &'static str,
    /// Model versions serving (`id@version`).
    pub models: Vec<String>,
}

/// Liveness: the process answers. Always cheap.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Status)), tag = "health")]
pub async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: 200 only when every configured model is loaded and warmed up.
#[utoipa::path(
    get,
    path = "/ready",
    responses(
        (status = 200, body = ReadyStatus),
        (status = 503, description = "Models loading, failed, or a worker died", body = ErrorEnvelope),
    ),
    tag = "health"
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<ReadyStatus>, ApiError> {
    // (`is_ready` is the same test, for the protocols that answer a bare yes or no.)
    if state.lifecycle.is_draining() {
        return Err(
            ApiError::unavailable("draining", 1).with_details(ErrorDetails {
                field: None,
                issue: Some(crate::serving::ticket::SHUTTING_DOWN.into()),
            }),
        );
    }
    let r = state.core.readiness();
    if r.ready && !state.registry.list().is_empty() {
        let models = state
            .registry
            .list()
            .iter()
            .flat_map(|m| {
                m.versions
                    .iter()
                    .filter(|(_, rec)| {
                        matches!(rec.state, crate::registry::VersionState::Ready(ref h) if h.is_alive())
                    })
                    .map(move |(v, _)| format!("{}@{v}", m.id))
            })
            .collect();
        return Ok(Json(ReadyStatus {
            status: "ready",
            models,
        }));
    }
    let mut parts = Vec::new();
    if !r.loading.is_empty() {
        parts.push(format!("loading: {}", r.loading.join(", ")));
    }
    if !r.failed.is_empty() {
        parts.push(format!("failed: {}", r.failed.join(", ")));
    }
    if !r.dead.is_empty() {
        parts.push(format!("worker stopped: {}", r.dead.join(", ")));
    }
    if parts.is_empty() {
        parts.push("no models configured".into());
    }
    Err(
        ApiError::unavailable("not ready", 5).with_details(ErrorDetails {
            field: None,
            issue: Some(parts.join("; ")),
        }),
    )
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")),
    tag = "health"
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.set_drift(&state.core.drift.report(None));
    let body = state.metrics.render(
        &state.registry,
        &state.core.traffic,
        state.lifecycle.in_flight(),
        state.cache.as_ref().map_or(0, |c| c.entry_count()),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
