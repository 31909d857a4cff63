//! The OpenAI Batch API on `/v1`: `POST /v1/files` (multipart, `purpose=batch`),
//! `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `POST /v1/batches`,
//! `GET /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`.
//!
//! A batch is a job of `crate::jobs` whose inputs are the file's lines. Each line runs through
//! the same `/v1` functions as a direct request (on the background lane, see
//! `openai::batch::OpenAiExecutor`), so its `response.body` is what the direct request would have
//! answered. A batch's output and error
//! files are its job's results, read from the store when asked (ids `file-<batch>-output` and
//! `file-<batch>-errors`).

use axum::body::Body;
use axum::extract::{Multipart, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::app::AppState;
use super::extract::{parse_json, ApiJson, ApiPath};
use super::openai::errors::{NotAboutModel, OpenAiErrorEnvelope};
use super::openai::types::{ChatRequest, CompletionRequest, EmbeddingRequest};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorKind};
use crate::jobs::{FileRecord, JobKind, JobRecord, NewJob, Status};
use crate::usage::now_unix;

/// Where the server registers it from (`jobs.set_openai_executor`).
pub use super::openai::batch::OpenAiExecutor;

/// The executor of OpenAI batch lines, for the composition root (`services::Services::build`).
pub fn openai_executor(
    core: &std::sync::Arc<crate::serving::Core>,
    _settings: &crate::config::Settings,
) -> std::sync::Arc<dyn crate::jobs::Executor> {
    OpenAiExecutor::with_core(core.clone(), super::openai::batch::RetryPolicy::default())
}

/// The endpoints a batch line may call.
const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

fn caller(principal: Option<Extension<Principal>>) -> Principal {
    principal
        .map(|e| e.0)
        .unwrap_or_else(|| Principal::anonymous("unknown"))
}

/// OpenAI's 404 for a missing file or batch: `No such File object: file-abc`, `param` naming
/// the request field that held the id, `code: null` (not `model_not_found`: see
/// `openai::NotAboutModel`).
fn not_found(object: &str, id: &str, param: &'static str) -> Response {
    let mut r = ApiError::new(
        ErrorKind::NotFound,
        format!("No such {object} object: {id}"),
    )
    .into_response();
    r.extensions_mut()
        .insert(NotAboutModel { param: Some(param) });
    r
}

/// An OpenAI `File` object.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    /// `batch` (uploads) or `batch_output` (a batch's output and error files).
    pub purpose: String,
    /// Always `processed`.
    pub status: String,
}

fn file_object(f: &FileRecord) -> FileObject {
    FileObject {
        id: f.id.clone(),
        object: "file".into(),
        bytes: f.bytes,
        created_at: f.created_at,
        filename: f.filename.clone(),
        purpose: f.purpose.clone(),
        status: "processed".into(),
    }
}

#[utoipa::path(
    post,
    path = "/v1/files",
    request_body(content_type = "multipart/form-data", description = "`purpose` (`batch`) and `file` (JSON lines)"),
    responses(
        (status = 200, description = "The stored file", body = FileObject),
        (status = 400, description = "No file, a purpose other than batch", body = OpenAiErrorEnvelope),
        (status = 413, description = "Larger than jobs.max_file_bytes", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn upload(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let who = caller(principal);
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => return ApiError::invalid("body", e.body_text()).into_response(),
    };
    let max = state.jobs.config().max_file_bytes;
    // The file's bytes go to an unnamed temporary file as they arrive (never whole in memory);
    // the store reads them from there a chunk at a time.
    let (mut purpose, mut file): (Option<String>, Option<(String, std::fs::File, u64)>) =
        (None, None);
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return multipart_error("the multipart body", &e),
        };
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                let filename = field
                    .file_name()
                    .map_or_else(|| "upload.jsonl".to_string(), str::to_string);
                let spool = match tokio::task::spawn_blocking(tempfile::tempfile).await {
                    Ok(Ok(f)) => f,
                    Ok(Err(e)) => return ApiError::internal(e).into_response(),
                    Err(e) => return ApiError::internal(e).into_response(),
                };
                let mut spool = tokio::fs::File::from_std(spool);
                let mut bytes = 0u64;
                loop {
                    let chunk = match field.chunk().await {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        Err(e) => return multipart_error(&format!("field `{name}`"), &e),
                    };
                    bytes += chunk.len() as u64;
                    if bytes > max as u64 {
                        return ApiError::too_large(
                            "file",
                            format!("over {max} bytes (jobs.max_file_bytes)"),
                        )
                        .into_response();
                    }
                    if let Err(e) = spool.write_all(&chunk).await {
                        return ApiError::internal(e).into_response();
                    }
                }
                if let Err(e) = spool.flush().await {
                    return ApiError::internal(e).into_response();
                }
                let mut spool = spool.into_std().await;
                if let Err(e) = std::io::Seek::rewind(&mut spool) {
                    return ApiError::internal(e).into_response();
                }
                file = Some((filename, spool, bytes));
            }
            "purpose" => {
                let mut text = Vec::new();
                loop {
                    match field.chunk().await {
                        Ok(Some(c)) if text.len() + c.len() <= MAX_PURPOSE_BYTES => {
                            text.extend_from_slice(&c)
                        }
                        Ok(Some(_)) => {
                            return ApiError::invalid("purpose", "only `batch` files are kept here")
                                .into_response()
                        }
                        Ok(None) => break,
                        Err(e) => return multipart_error(&format!("field `{name}`"), &e),
                    }
                }
                purpose = Some(String::from_utf8_lossy(&text).trim().to_string());
            }
            // Other fields are read past, never kept.
            _ => loop {
                match field.chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => return multipart_error(&format!("field `{name}`"), &e),
                }
            },
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(_) => {
            return ApiError::invalid("purpose", "only `batch` files are kept here").into_response()
        }
        None => return ApiError::invalid("purpose", "is required").into_response(),
    }
    let Some((filename, data, bytes)) = file else {
        return ApiError::invalid("file", "is required").into_response();
    };
    let record = FileRecord {
        id: format!("file-{}", uuid::Uuid::new_v4().simple()),
        owner: who.sub.clone(),
        filename,
        purpose: "batch".into(),
        bytes,
        created_at: now_unix(),
        job: None,
        ok: None,
    };
    match state.jobs.put_file(record.clone(), data).await {
        Ok(()) => Json(file_object(&record)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The longest `purpose` field read (its one allowed value is `batch`).
const MAX_PURPOSE_BYTES: usize = 64;

/// A multipart error as a 413 (over the body limit) or a 400.
fn multipart_error(what: &str, e: &axum::extract::multipart::MultipartError) -> Response {
    let kind = if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ErrorKind::PayloadTooLarge
    } else {
        ErrorKind::InvalidRequest
    };
    ApiError::new(kind, format!("{what}: {}", e.body_text())).into_response()
}

/// The file `id` if `who` may read it: an upload of theirs, or an output or error file of a
/// batch of theirs.
async fn find_file(
    state: &AppState,
    who: &Principal,
    id: &str,
    param: &'static str,
) -> Result<FileRecord, Response> {
    let admin = who.has_scope(crate::auth::SCOPE_ADMIN);
    if let Some(rest) = id.strip_prefix("file-batch_") {
        let (batch, ok) = if let Some(b) = rest.strip_suffix("-output") {
            (b, true)
        } else if let Some(b) = rest.strip_suffix("-errors") {
            (b, false)
        } else {
            return Err(not_found("File", id, param));
        };
        let job = match state.jobs.get(who, &format!("batch_{batch}")).await {
            Ok(j) if j.kind == JobKind::Openai && j.status.is_final() => j,
            _ => return Err(not_found("File", id, param)),
        };
        let mut bytes = 0u64;
        let mut from = 0;
        loop {
            let page = state
                .jobs
                .results(&job.id, from, 1024)
                .await
                .map_err(|e| ApiError::from(e).into_response())?;
            let Some(last) = page.last().map(|r| r.index) else {
                break;
            };
            bytes += page
                .iter()
                .filter(|r| r.ok == ok)
                .map(|r| r.line.len() as u64 + 1)
                .sum::<u64>();
            from = last + 1;
        }
        return Ok(FileRecord {
            id: id.to_string(),
            owner: job.owner.sub,
            filename: format!("{}_{}.jsonl", job.id, if ok { "output" } else { "errors" }),
            purpose: "batch_output".into(),
            bytes,
            created_at: job.finished_at.unwrap_or(job.created_at),
            job: Some(job.id),
            ok: Some(ok),
        });
    }
    match state.jobs.file(id).await {
        Ok(Some(f)) if f.owner == who.sub || admin => Ok(f),
        Ok(_) => Err(not_found("File", id, param)),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    params(("id" = String, Path, description = "File id")),
    responses(
        (status = 200, description = "The file", body = FileObject),
        (status = 404, description = "No such file of the caller's", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn file(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    match find_file(&state, &who, &id, "id").await {
        Ok(f) => Json(file_object(&f)).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(
    get,
    path = "/v1/files/{id}/content",
    params(("id" = String, Path, description = "File id")),
    responses(
        (status = 200, description = "The file's bytes (JSON lines)", content_type = "application/octet-stream", body = String),
        (status = 404, description = "No such file of the caller's", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn content(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    let f = match find_file(&state, &who, &id, "id").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let body = match (f.job, f.ok) {
        (Some(job), ok) => Body::from_stream(state.jobs.result_lines(job, ok)),
        _ => {
            let jobs = state.jobs.clone();
            let id = f.id.clone();
            Body::from_stream(futures::stream::unfold(Some(0u64), move |n| {
                let (jobs, id) = (jobs.clone(), id.clone());
                async move {
                    let n = n?;
                    match jobs.file_chunk(&id, n).await {
                        Ok(Some(bytes)) => Some((Ok(bytes), Some(n + 1))),
                        Ok(None) => None,
                        Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
                    }
                }
            }))
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// A new batch.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    pub input_file_id: String,
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// Only `24h`.
    pub completion_window: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Accepted and ignored: output files are kept while their batch is.
    #[schema(value_type = Option<Object>)]
    pub output_expires_after: Option<Value>,
}

/// Requests of a batch by outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// An OpenAI `Batch` object.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchObject {
    pub id: String,
    /// Always `batch`.
    pub object: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub input_file_id: String,
    pub completion_window: String,
    /// `validating`, `in_progress`, `completed`, `failed`, `cancelling` or `cancelled`.
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub errors: Option<Value>,
}

fn batch_object(j: &JobRecord) -> BatchObject {
    let status = match j.status {
        Status::Queued => "validating",
        Status::Running => "in_progress",
        Status::Completed => "completed",
        Status::Failed => "failed",
        Status::Cancelling => "cancelling",
        Status::Cancelled => "cancelled",
    };
    let done = j.status.is_final();
    let suffix = j.id.trim_start_matches("batch_");
    let at = |s: Status| (j.status == s).then_some(j.finished_at).flatten();
    BatchObject {
        id: j.id.clone(),
        object: "batch".into(),
        endpoint: j.endpoint.clone().unwrap_or_default(),
        model: j.model.clone(),
        input_file_id: j.input_file_id.clone().unwrap_or_default(),
        completion_window: j.completion_window.clone().unwrap_or_else(|| "24h".into()),
        status: status.into(),
        output_file_id: (done && j.completed > 0).then(|| format!("file-batch_{suffix}-output")),
        error_file_id: (done && j.failed > 0).then(|| format!("file-batch_{suffix}-errors")),
        created_at: j.created_at,
        in_progress_at: j.started_at,
        expires_at: Some(j.created_at + 24 * 3600),
        finalizing_at: at(Status::Completed),
        completed_at: at(Status::Completed),
        failed_at: at(Status::Failed),
        cancelling_at: j.cancelling_at,
        cancelled_at: at(Status::Cancelled),
        request_counts: RequestCounts {
            total: j.total,
            completed: j.completed,
            failed: j.failed,
        },
        metadata: j.metadata.clone(),
        errors: j
            .error
            .as_ref()
            .map(|e| json!({"object": "list", "data": [{"code": "batch_failed", "message": e}]})),
    }
}

/// Check one line of an input file; returns its model.
fn check_line(
    line: &[u8],
    n: usize,
    endpoint: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<String, ApiError> {
    let bad =
        |issue: String| ApiError::invalid("input_file_id", format!("line {}: {issue}", n + 1));
    let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON ({e})")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let custom_id = obj
        .get("custom_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("needs a string custom_id".into()))?;
    if !seen.insert(custom_id.to_string()) {
        return Err(bad(format!("custom_id `{custom_id}` is used twice")));
    }
    if obj.get("method").and_then(Value::as_str) != Some("POST") {
        return Err(bad("method must be POST".into()));
    }
    if obj.get("url").and_then(Value::as_str) != Some(endpoint) {
        return Err(bad(format!("url must be the batch's endpoint {endpoint}")));
    }
    let body = obj
        .get("body")
        .filter(|b| b.is_object())
        .ok_or_else(|| bad("needs a body object".into()))?;
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad("stream is not supported in a batch".into()));
    }
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let parsed = match endpoint {
        "/v1/chat/completions" => parse_json::<ChatRequest>(&bytes).map(|_| ()),
        "/v1/completions" => parse_json::<CompletionRequest>(&bytes).map(|_| ()),
        _ => parse_json::<EmbeddingRequest>(&bytes).map(|_| ()),
    };
    parsed.map_err(|e| bad(format!("body: {}", e.message)))?;
    body.get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad("body needs a model".into()))
}

#[utoipa::path(
    post,
    path = "/v1/batches",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "The batch, stored and started", body = BatchObject),
        (status = 400, description = "An unsupported endpoint or window, or a bad line in the file (named by its number); nothing was stored", body = OpenAiErrorEnvelope),
        (status = 404, description = "No such input file of the caller's", body = OpenAiErrorEnvelope),
        (status = 429, description = "The caller has jobs.max_active_per_principal jobs queued or running", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Response {
    let who = caller(principal);
    if !ENDPOINTS.contains(&req.endpoint.as_str()) {
        return ApiError::invalid(
            "endpoint",
            "must be /v1/chat/completions, /v1/completions or /v1/embeddings",
        )
        .into_response();
    }
    if req.completion_window != "24h" {
        return ApiError::invalid("completion_window", "must be 24h").into_response();
    }
    let file = match find_file(&state, &who, &req.input_file_id, "input_file_id").await {
        Ok(f) if f.job.is_none() && f.purpose == "batch" => f,
        Ok(_) => {
            return ApiError::invalid("input_file_id", "is not an uploaded batch file")
                .into_response()
        }
        Err(r) => return r,
    };
    let mut data = Vec::with_capacity(file.bytes as usize);
    let mut n = 0;
    loop {
        match state.jobs.file_chunk(&file.id, n).await {
            Ok(Some(b)) => data.extend_from_slice(&b),
            Ok(None) => break,
            Err(e) => return ApiError::from(e).into_response(),
        }
        n += 1;
    }
    let endpoint = req.endpoint.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let mut seen = std::collections::HashSet::new();
        let mut lines = Vec::new();
        let mut model = None;
        for (n, line) in data.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let m = check_line(line, n, &endpoint, &mut seen)?;
            model.get_or_insert(m);
            lines.push(line.to_vec());
        }
        if lines.is_empty() {
            return Err(ApiError::invalid(
                "input_file_id",
                "the file holds no requests",
            ));
        }
        Ok((lines, model))
    })
    .await;
    let (lines, model) = match checked {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let new = NewJob {
        kind: Some(JobKind::Openai),
        model,
        inputs: lines,
        endpoint: Some(req.endpoint),
        input_file_id: Some(req.input_file_id),
        completion_window: Some(req.completion_window),
        metadata: req.metadata,
        ..NewJob::default()
    };
    match state.jobs.submit(&who, new).await {
        Ok(job) => Json(batch_object(&job)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    params(("id" = String, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The batch", body = BatchObject),
        (status = 404, description = "No such batch of the caller's", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    match state.jobs.get(&who, &id).await {
        Ok(j) if j.kind == JobKind::Openai => Json(batch_object(&j)).into_response(),
        _ => not_found("Batch", &id, "id"),
    }
}

#[utoipa::path(
    post,
    path = "/v1/batches/{id}/cancel",
    params(("id" = String, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The batch, `cancelling` or already ended", body = BatchObject),
        (status = 404, description = "No such batch of the caller's", body = OpenAiErrorEnvelope),
    ),
    tag = "openai"
)]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let who = caller(principal);
    match state.jobs.get(&who, &id).await {
        Ok(j) if j.kind == JobKind::Openai => match state.jobs.cancel(&who, &id).await {
            Ok(j) => Json(batch_object(&j)).into_response(),
            // Gone between the two reads: still a batch, not a model, that is missing.
            Err(e) if e.kind == ErrorKind::NotFound => not_found("Batch", &id, "id"),
            Err(e) => e.into_response(),
        },
        _ => not_found("Batch", &id, "id"),
    }
}

/// `GET /v1/batches` paging.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of batches, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<BatchObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

#[utoipa::path(
    get,
    path = "/v1/batches",
    params(
        ("after" = Option<String>, Query, description = "The last id of the previous page"),
        ("limit" = Option<usize>, Query, description = "1 to 100 (default 20)"),
    ),
    responses((status = 200, description = "The caller's batches, newest first", body = BatchList)),
    tag = "openai"
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let who = caller(principal);
    let Ok(Query(q)) = query else {
        return ApiError::invalid("limit", "must be a number").into_response();
    };
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let jobs = match state.jobs.list(&who, JobKind::Openai).await {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    let start = match &q.after {
        Some(after) => jobs
            .iter()
            .position(|j| &j.id == after)
            .map_or(jobs.len(), |p| p + 1),
        None => 0,
    };
    let page: Vec<BatchObject> = jobs
        .iter()
        .skip(start)
        .take(limit)
        .map(batch_object)
        .collect();
    let has_more = jobs.len() > start + page.len();
    Json(BatchList {
        object: "list".into(),
        first_id: page.first().map(|b| b.id.clone()),
        last_id: page.last().map(|b| b.id.clone()),
        data: page,
        has_more,
    })
    .into_response()
}
