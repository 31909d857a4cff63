//! The native batch-job API: `POST /jobs`, `GET /jobs`, `GET /jobs/{id}`,
//! `GET /jobs/{id}/results` (JSON lines, streamed from the store in input order) and
//! `POST /jobs/{id}/cancel`. The jobs themselves live in `crate::jobs`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::app::AppState;
use super::extract::{ApiJson, ApiPath};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorEnvelope};
use crate::jobs::{validate_native, JobKind, JobRecord, NewJob};

/// A new job: inputs of one model, answered in the background.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub model: String,
    /// A pinned version; the model's default (or its traffic policy) otherwise.
    pub version: Option<String>,
    /// The inputs, as the predict API takes them (each validated before the job is stored).
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<Value>,
    /// Model parameters, as for the predict API.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// An http(s) URL that gets a signed event (Standard Webhooks) when the job ends.
    pub webhook: Option<String>,
}

/// Inputs of a job by outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// One webhook delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAttemptView {
    /// Unix seconds.
    pub at: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ms: u64,
}

/// A job's webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: Vec<WebhookAttemptView>,
}

/// A job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// `queued`, `running`, `completed`, `failed`, `cancelling` or `cancelled`.
    pub status: String,
    pub model: Option<String>,
    pub version: Option<String>,
    pub counts: JobCounts,
    /// Unix seconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// Why the job failed.
    pub error: Option<String>,
    /// The first failed inputs' result lines (`{"index", "error"}`), at most 100.
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<Value>,
    pub webhook: Option<WebhookView>,
}

/// The caller's jobs (every job for an admin), newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub data: Vec<JobView>,
}

fn status_name(job: &JobRecord) -> String {
    serde_json::to_value(job.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn view(state: &AppState, job: JobRecord) -> JobView {
    let mut errors = Vec::new();
    if job.failed > 0 {
        let mut from = 0;
        while errors.len() < 100 {
            let Ok(page) = state.jobs.results(&job.id, from, 1024).await else {
                break;
            };
            let Some(last) = page.last().map(|r| r.index) else {
                break;
            };
            for r in page.into_iter().filter(|r| !r.ok).take(100 - errors.len()) {
                if let Ok(v) = serde_json::from_slice(&r.line) {
                    errors.push(v);
                }
            }
            from = last + 1;
        }
    }
    JobView {
        status: status_name(&job),
        id: job.id,
        model: job.model,
        version: job.version,
        counts: JobCounts {
            total: job.total,
            completed: job.completed,
            failed: job.failed,
        },
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        error: job.error,
        errors,
        webhook: job.webhook.map(|w| WebhookView {
            url: w.url,
            state: w.state,
            attempts: w
                .attempts
                .into_iter()
                .map(|a| WebhookAttemptView {
                    at: a.at,
                    status: a.status,
                    error: a.error,
                    ms: a.ms,
                })
                .collect(),
        }),
    }
}

fn caller(principal: Option<Extension<Principal>>) -> Principal {
    principal
        .map(|e| e.0)
        .unwrap_or_else(|| Principal::anonymous("unknown"))
}

#[utoipa::path(
    post,
    path = "/jobs",
    request_body = JobRequest,
    responses(
        (status = 202, description = "Stored and started; poll `GET /jobs/{id}`", body = JobView),
        (status = 400, description = "An input or parameter is invalid (the error names the input's index); nothing was stored", body = ErrorEnvelope),
        (status = 404, description = "Unknown model or version", body = ErrorEnvelope),
        (status = 413, description = "More inputs than jobs.max_inputs", body = ErrorEnvelope),
        (status = 429, description = "The caller has jobs.max_active_per_principal jobs queued or running", body = ErrorEnvelope),
    ),
    tag = "jobs"
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(req): ApiJson<JobRequest>,
) -> Response {
    let who = caller(principal);
    if req.inputs.is_empty() {
        return ApiError::invalid("inputs", "must not be empty").into_response();
    }
    if let Err(e) = validate_native(
        state.jobs.core(),
        &who,
        &req.model,
        req.version.as_deref(),
        &req.inputs,
        &req.parameters,
    )
    .await
    {
        return e.into_response();
    }
    let inputs: Vec<Vec<u8>> = req
        .inputs
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap_or_default())
        .collect();
    let new = NewJob {
        kind: Some(JobKind::Native),
        model: Some(req.model),
        version: req.version,
        parameters: req.parameters,
        inputs,
        webhook: req.webhook,
        ..NewJob::default()
    };
    match state.jobs.submit(&who, new).await {
        Ok(job) => {
            let location = format!("/jobs/{}", job.id);
            let mut r = (StatusCode::ACCEPTED, Json(view(&state, job).await)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/jobs",
    responses((status = 200, description = "The caller's jobs (all jobs for an admin)", body = JobList)),
    tag = "jobs"
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    match state.jobs.list(&who, JobKind::Native).await {
        Ok(jobs) => {
            let mut data = Vec::with_capacity(jobs.len());
            for j in jobs {
                data.push(view(&state, j).await);
            }
            Json(JobList { data }).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/jobs/{id}",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job of the caller's", body = ErrorEnvelope),
    ),
    tag = "jobs"
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    match state.jobs.get(&who, &id).await {
        Ok(j) if j.kind == JobKind::Native => Json(view(&state, j).await).into_response(),
        Ok(_) => ApiError::new(crate::error::ErrorKind::NotFound, format!("no job `{id}`"))
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/jobs/{id}/results",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "JSON lines in input order: `{\"index\", \"output\"}` or `{\"index\", \"error\"}`, one per finished input", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "No such job of the caller's", body = ErrorEnvelope),
    ),
    tag = "jobs"
)]
pub async fn results(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    match state.jobs.get(&who, &id).await {
        Ok(j) if j.kind == JobKind::Native => {
            let body = Body::from_stream(state.jobs.result_lines(j.id, None));
            let mut r = Response::new(body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            r
        }
        Ok(_) => ApiError::new(crate::error::ErrorKind::NotFound, format!("no job `{id}`"))
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job, `cancelling` (chunks in flight finish) or already ended", body = JobView),
        (status = 404, description = "No such job of the caller's", body = ErrorEnvelope),
    ),
    tag = "jobs"
)]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    match state.jobs.get(&who, &id).await {
        Ok(j) if j.kind == JobKind::Native => match state.jobs.cancel(&who, &id).await {
            Ok(j) => Json(view(&state, j).await).into_response(),
            Err(e) => e.into_response(),
        },
        Ok(_) => ApiError::new(crate::error::ErrorKind::NotFound, format!("no job `{id}`"))
            .into_response(),
        Err(e) => e.into_response(),
    }
}
