//! `GET /models/{id}/drift` (each version's drift windows and signals) and
//! `POST /models/{id}/drift/reference` (start a version's reference window afresh from the
//! given inputs). The windows are the serving core's (`drift`, fed by `Core::infer`).

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::app::AppState;
use super::extract::{ApiJson, ApiPath};
use crate::auth::Principal;
use crate::drift::VersionDrift;
use crate::error::{ApiError, ErrorEnvelope};
use crate::serving::{Caller, Input, ServeRequest};

#[derive(Debug, Serialize, ToSchema)]
pub struct DriftReport {
    pub model: String,
    /// Versions that have seen requests since they loaded (monitoring on).
    pub versions: Vec<VersionDrift>,
}

/// Each version's drift: the sizes of its reference and current windows and every signal's
/// value and threshold.
#[utoipa::path(
    get,
    path = "/models/{id}/drift",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = DriftReport), (status = 404, body = ErrorEnvelope)),
    tag = "models"
)]
pub async fn report(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DriftReport>, ApiError> {
    let rec = state.registry.record(&id)?;
    let versions = state
        .core
        .drift
        .report(Some(&rec.id))
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    Ok(Json(DriftReport {
        model: rec.id,
        versions,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceRequest {
    /// Texts representative of the traffic the version should see.
    pub inputs: Vec<String>,
    /// The version (default: the model's default version).
    #[serde(default)]
    pub version: Option<String>,
}

/// Start a version's drift windows afresh with these inputs as the reference (at most its
/// window; they run through the model like a predict request).
#[utoipa::path(
    post,
    path = "/models/{id}/drift/reference",
    params(("id" = String, Path, description = "Model id")),
    request_body = ReferenceRequest,
    responses((status = 200, body = VersionDrift), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    tag = "models"
)]
pub async fn set_reference(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReferenceRequest>,
) -> Result<Json<VersionDrift>, ApiError> {
    let resolved = state.registry.resolve(&id, req.version.as_deref())?;
    let m = &resolved.manifest;
    let config = m.drift.clone().unwrap_or_default();
    if req.inputs.is_empty() || req.inputs.len() > config.window.min(m.max_inputs) {
        return Err(ApiError::invalid(
            "inputs",
            format!(
                "1 to {} inputs (the drift window and max_inputs)",
                config.window.min(m.max_inputs)
            ),
        ));
    }
    if !state.core.monitoring {
        return Err(ApiError::invalid(
            "id",
            "monitoring is off on this server (monitoring.enabled)",
        ));
    }
    let version = m.version.to_string();
    state.core.drift.reset(&m.id, &version, &config);
    let serve = ServeRequest {
        model: m.id.clone(),
        version: Some(version.clone()),
        inputs: req.inputs.into_iter().map(Input::Text).collect(),
        params: Default::default(),
        cache: true,
        logprobs: None,
        headers: Default::default(),
        user: None,
        background: false,
    };
    let caller = Caller {
        principal: principal.as_ref().map(|p| &p.0),
    };
    let (_, outcome) = state.core.infer(caller, serve).await;
    outcome?;
    state
        .core
        .drift
        .report(Some(&m.id))
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d.version == version)
        .map(Json)
        .ok_or_else(|| ApiError::internal("no drift windows after the reference"))
}
