//! `DELETE /cache`: drop cached responses, all or one model's.

use std::collections::HashMap;

use axum::extract::State;

use super::extract::ApiQuery;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::app::AppState;
use crate::cache::Cleared;
use crate::error::{ApiError, ErrorEnvelope};

#[derive(Debug, Serialize, ToSchema)]
pub struct ClearReport {
    /// Entries removed per tier.
    pub cleared: Cleared,
    /// The model whose entries were removed; absent: all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Clear the response cache (both tiers), or only one model's entries with `?model=ID`.
#[utoipa::path(
    delete,
    path = "/cache",
    params(("model" = Option<String>, Query, description = "Only this model's entries")),
    responses(
        (status = 200, body = ClearReport),
        (status = 400, description = "Unknown query parameter", body = ErrorEnvelope),
        (status = 404, description = "Unknown model, or the cache is disabled", body = ErrorEnvelope),
    ),
    tag = "cache"
)]
pub async fn clear(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
) -> Result<Json<ClearReport>, ApiError> {
    super::extract::only(&q, &["model"])?;
    let cache = state
        .cache
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the cache is disabled (cache.enabled: false)"))?;
    let model = q.get("model").cloned();
    if let Some(m) = &model {
        state.registry.record(m)?;
    }
    let cleared = cache.clear(model.as_deref()).await;
    Ok(Json(ClearReport { cleared, model }))
}
