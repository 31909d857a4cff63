//! `POST /models/{id}/heads` and `GET /models/{id}/heads/{training}`: training classification
//! heads from labelled examples (scope `train` or `admin`). The work is the serving core's
//! (`serving::heads`); this file maps HTTP to it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::app::AppState;
use super::extract::{ApiJson, ApiPath};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorEnvelope};
use crate::serving::heads::{HeadRequest, Training};
use crate::serving::Caller;

/// Train a classification head on an embedding model's vectors: the examples are checked
/// before the 202 (with `truncate: false`, tokenized too: one longer than the base's
/// `max_input_length` is a 400 naming it; by default it is cut), then embedded on the
/// engine's background lane, fitted (multinomial logistic regression) and written as a new
/// version of `{id}` off the request path. Answers 202 with the training's status; poll
/// `GET /models/{id}/heads/{training}`.
#[utoipa::path(
    post,
    path = "/models/{id}/heads",
    params(("id" = String, Path, description = "The classifier model to create or give a new version")),
    request_body = HeadRequest,
    responses(
        (status = 202, description = "Training started", body = Training),
        (status = 400, description = "Invalid examples (one over the base's max_input_length with truncate false), base or settings", body = ErrorEnvelope),
        (status = 403, description = "The token may not use the base model", body = ErrorEnvelope),
        (status = 409, description = "The model exists and is not a classifier, or is training already", body = ErrorEnvelope),
        (status = 413, description = "Too many examples, or a body over server.max_train_body_bytes", body = ErrorEnvelope),
        (status = 503, description = "The base is not loaded, or too many trainings run", body = ErrorEnvelope),
    ),
    tag = "training"
)]
pub async fn start(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<HeadRequest>,
) -> Result<(StatusCode, Json<Training>), ApiError> {
    let caller = Caller {
        principal: principal.as_ref().map(|p| &p.0),
    };
    let training = state.core.start_training(caller, &id, req).await?;
    Ok((StatusCode::ACCEPTED, Json(training)))
}

/// A training's status: `running` (with its stage and progress), `completed` (with the
/// held-out metrics and the version written) or `failed` (with the reason). Only the
/// principal that started it (or an admin) sees it; others get 404, as for jobs.
#[utoipa::path(
    get,
    path = "/models/{id}/heads/{training}",
    params(("id" = String, Path, description = "Model id"), ("training" = String, Path, description = "Training id")),
    responses((status = 200, body = Training), (status = 404, description = "No such training of the caller's", body = ErrorEnvelope)),
    tag = "training"
)]
pub async fn status(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiPath((id, training)): ApiPath<(String, String)>,
) -> Result<Json<Training>, ApiError> {
    state
        .core
        .heads
        .get(&id, &training, principal.as_ref().map(|p| &p.0))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no training `{training}` of model `{id}`")))
}
