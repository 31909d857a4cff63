//! Admin routes of the model lifecycle and traffic (scope `admin`): load and unload versions,
//! rescan the repository, read and set a model's traffic policy, promote and roll back. The
//! work is the serving core's (`serving::admin`, `traffic`); this file maps HTTP to it.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::app::AppState;
use super::extract::{ApiJson, ApiPath};
use super::models::{version_info, VersionInfo};
use crate::error::{ApiError, ErrorEnvelope, ErrorKind};
use crate::fleet::FleetEvent;
use crate::registry::RegistryError;
use crate::serving::admin::{known, RescanReport};
use crate::traffic::{TrafficError, TrafficPolicy, TrafficView};

fn version_of(state: &AppState, id: &str, version: &str) -> Result<VersionInfo, ApiError> {
    let rec = state.registry.record(id)?;
    let v = semver::Version::parse(version)
        .map_err(|_| RegistryError::VersionNotFound(id.into(), version.into()))?;
    let vr = rec
        .versions
        .get(&v)
        .ok_or_else(|| RegistryError::VersionNotFound(id.into(), version.into()))?;
    Ok(version_info(state, &rec, vr))
}

fn traffic_error(e: TrafficError) -> ApiError {
    match e {
        TrafficError::NothingToRollBack(_) | TrafficError::OnlyRoute { .. } => {
            ApiError::new(ErrorKind::Conflict, e.to_string())
        }
        TrafficError::Persist { .. } => ApiError::internal(e),
    }
}

/// Load a version from its repository folder (registering it if new: hashes and signature
/// verified, loaded, warmed up). Answers once it is ready, or with the load error.
#[utoipa::path(
    post,
    path = "/models/{id}/versions/{version}/load",
    params(("id" = String, Path, description = "Model id"), ("version" = String, Path, description = "Version")),
    responses(
        (status = 200, description = "The version is ready", body = VersionInfo),
        (status = 400, description = "Not a semantic version", body = ErrorEnvelope),
        (status = 404, description = "No such folder in the repository", body = ErrorEnvelope),
        (status = 409, description = "The version is loading or being unloaded", body = ErrorEnvelope),
        (status = 422, description = "The version failed to load", body = ErrorEnvelope),
    ),
    tag = "lifecycle"
)]
pub async fn load(
    State(state): State<AppState>,
    ApiPath((id, version)): ApiPath<(String, String)>,
) -> Result<Json<VersionInfo>, ApiError> {
    state.core.load_version(&id, &version).await?;
    state
        .core
        .announce(FleetEvent::Load {
            model: id.clone(),
            version: version.clone(),
        })
        .await;
    Ok(Json(version_of(&state, &id, &version)?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Unloaded {
    pub model: String,
    pub version: String,
    /// Always `unloaded`.
    pub state: String,
}

/// Stop routing to a version, let its running and queued requests finish, then free it.
#[utoipa::path(
    delete,
    path = "/models/{id}/versions/{version}",
    params(("id" = String, Path, description = "Model id"), ("version" = String, Path, description = "Version")),
    responses(
        (status = 200, description = "Drained and unloaded", body = Unloaded),
        (status = 400, description = "Not a semantic version", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "It is the only version taking traffic", body = ErrorEnvelope),
    ),
    tag = "lifecycle"
)]
pub async fn unload(
    State(state): State<AppState>,
    ApiPath((id, version)): ApiPath<(String, String)>,
) -> Result<Json<Unloaded>, ApiError> {
    state.core.unload_version(&id, &version).await?;
    state
        .core
        .announce(FleetEvent::Unload {
            model: id.clone(),
            version: version.clone(),
        })
        .await;
    state.core.announce_traffic(&id).await;
    Ok(Json(Unloaded {
        model: id,
        version,
        state: "unloaded".into(),
    }))
}

/// Rescan the repository: complete new version folders load, changed ones reload, removed
/// ones drain and unload.
#[utoipa::path(
    post,
    path = "/repository/rescan",
    responses((status = 200, body = RescanReport), (status = 503, description = "The repository cannot be read", body = ErrorEnvelope)),
    tag = "lifecycle"
)]
pub async fn rescan(State(state): State<AppState>) -> Result<Json<RescanReport>, ApiError> {
    Ok(Json(state.core.rescan().await?))
}

/// A model's traffic: the policy, the split in force, the canary's state and history.
#[utoipa::path(
    get,
    path = "/models/{id}/traffic",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = TrafficView), (status = 404, body = ErrorEnvelope)),
    tag = "lifecycle"
)]
pub async fn get_traffic(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TrafficView>, ApiError> {
    let rec = state.registry.record(&id)?;
    Ok(Json(state.core.traffic.view(&id).unwrap_or_else(|| {
        // No policy: the default version takes everything.
        let p = TrafficPolicy::single(&rec.default_version.to_string());
        TrafficView {
            model: id.clone(),
            effective: p.routes.clone(),
            policy: p,
            canary: None,
            can_roll_back: false,
            stored: false,
        }
    })))
}

/// Set a model's traffic policy: weighted routes (versions of this model or other models),
/// sticky key, shadow, canary. Checked like the configuration: unknown versions, weights that
/// add up to 0 and unknown keys are refused naming the field. Stored in the repository.
#[utoipa::path(
    put,
    path = "/models/{id}/traffic",
    params(("id" = String, Path, description = "Model id")),
    request_body = TrafficPolicy,
    responses(
        (status = 200, body = TrafficView),
        (status = 400, description = "The policy names an unknown version, or its weights add up to 0", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ),
    tag = "lifecycle"
)]
pub async fn put_traffic(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(policy): ApiJson<TrafficPolicy>,
) -> Result<Json<TrafficView>, ApiError> {
    let rec = state.registry.record(&id)?;
    policy
        .check(&id, |m, v| known(&state.registry, m, v))
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    // A route to another model must do the same task, or a client would get another kind
    // of answer than it asked for.
    let task = |r: &crate::registry::ModelRecord| {
        r.versions.get(&r.default_version).map(|v| v.manifest.task)
    };
    for (i, r) in policy.routes.iter().enumerate() {
        if let Some(other) = r.model.as_deref().filter(|m| *m != id) {
            let theirs = state.registry.record(other)?;
            if task(&theirs) != task(&rec) {
                return Err(ApiError::invalid(
                    format!("routes[{i}].model"),
                    format!("model `{other}` does another task than `{id}`"),
                ));
            }
        }
    }
    let view = state.core.traffic.set(&id, policy).map_err(traffic_error)?;
    state.core.follow_default(&id);
    state.core.announce_traffic(&id).await;
    Ok(Json(view))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    pub version: String,
}

/// Blue-green: all traffic to `version` at once; the policy it replaces is kept (and its
/// versions stay loaded) for `rollback`.
#[utoipa::path(
    post,
    path = "/models/{id}/traffic/promote",
    params(("id" = String, Path, description = "Model id")),
    request_body = Promote,
    responses((status = 200, body = TrafficView), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    tag = "lifecycle"
)]
pub async fn promote(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Promote>,
) -> Result<Json<TrafficView>, ApiError> {
    let rec = state.registry.record(&id)?;
    if !known(&state.registry, &id, Some(&body.version)) {
        return Err(ApiError::invalid(
            "version",
            format!("model `{id}` has no version {}", body.version),
        ));
    }
    if state.core.traffic.view(&id).is_none() {
        // The first change: what it replaces is "the default version takes everything".
        state.core.traffic.install(
            &id,
            TrafficPolicy::single(&rec.default_version.to_string()),
            false,
        );
    }
    let view = state
        .core
        .traffic
        .promote(&id, &body.version)
        .map_err(traffic_error)?;
    state.core.follow_default(&id);
    state.core.announce_traffic(&id).await;
    Ok(Json(view))
}

/// Switch back to the policy before the last change (a promotion, a new policy, or a canary
/// promoted by its analysis), at once.
#[utoipa::path(
    post,
    path = "/models/{id}/traffic/rollback",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = TrafficView), (status = 404, body = ErrorEnvelope), (status = 409, description = "Nothing to roll back to", body = ErrorEnvelope)),
    tag = "lifecycle"
)]
pub async fn rollback(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TrafficView>, ApiError> {
    state.registry.record(&id)?;
    let view = state.core.traffic.rollback(&id).map_err(traffic_error)?;
    state.core.follow_default(&id);
    state.core.announce_traffic(&id).await;
    Ok(Json(view))
}
