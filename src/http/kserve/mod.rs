//! KServe v2 / Open Inference Protocol over REST (`/v2`), a thin adapter over the serving core:
//! a `BYTES` input tensor (JSON `data`, or Triton's binary tensor extension) becomes the core's
//! text inputs; the answer becomes an `FP32` (embeddings) or `BYTES` (texts) output tensor,
//! in JSON or binary as the client asked. Errors on `/v2` are `{"error": "<message>"}` with
//! the status of their kind (the `errors` layer rewrites every envelope under `/v2`).
//!
//! Binary bodies: `Inference-Header-Content-Length` says how long the JSON header is; the
//! bytes after it are the inputs' data, in order, each `parameters.binary_data_size` long.
//! Every length is checked against the body (itself within `server.max_body_bytes`); a size
//! past the end, bytes left over, or elements that do not fill a tensor are 400s.

pub mod doc;
use crate::serving::tensor;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::extract::{parse_json, ApiBytes, ApiPath, INLINE_PARSE_BYTES};
use crate::auth::Principal;
use crate::error::{ApiError, RenderedError};
use crate::http::app::AppState;
use crate::metrics::ModelLabel;
use crate::registry::manifest::Task;
use crate::registry::Registry;
use crate::serving::Caller;
use tensor::{OutData, OutTensor, TextTensor};

/// The header that splits a binary body into its JSON header and its tensor data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[utoipa::path(
    get,
    path = "/v2",
    responses((status = 200, description = "Server metadata", body = doc::ServerMetadata)),
    tag = "kserve"
)]
/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "anya",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": tensor::EXTENSIONS,
    }))
}

#[utoipa::path(
    get,
    path = "/v2/health/live",
    responses((status = 200, description = "The server is live", body = doc::Live)),
    tag = "kserve"
)]
/// `GET /v2/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

#[utoipa::path(
    get,
    path = "/v2/health/ready",
    responses(
        (status = 200, description = "Every model loaded, not draining", body = doc::Ready),
        (status = 503, description = "Models loading or failed, or draining: `{\"ready\": false}`", body = doc::Ready),
    ),
    tag = "kserve"
)]
/// `GET /v2/health/ready`: the readiness of `/ready` (every model loaded, not draining); 503
/// with `{"ready": false}` otherwise.
pub async fn ready(State(state): State<AppState>) -> Response {
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready}))).into_response()
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}",
    params(("name" = String, Path, description = "Model id")),
    responses(
        (status = 200, description = "The model's default version's metadata", body = doc::ModelMetadata),
        (status = 404, description = "Unknown model", body = doc::KserveError),
    ),
    tag = "kserve"
)]
/// `GET /v2/models/{name}`.
pub async fn model_metadata(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    metadata(&state, &name, None)
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}",
    params(
        ("name" = String, Path, description = "Model id"),
        ("version" = String, Path, description = "Model version (semver)"),
    ),
    responses(
        (status = 200, description = "The version's metadata", body = doc::ModelMetadata),
        (status = 404, description = "Unknown model or version", body = doc::KserveError),
    ),
    tag = "kserve"
)]
/// `GET /v2/models/{name}/versions/{version}`.
pub async fn model_version_metadata(
    State(state): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    metadata(&state, &name, Some(&version))
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Result<Json<Value>, ApiError> {
    let m = tensor::model_meta(&state.registry, name, version)?;
    let tensors = |ts: &[tensor::TensorMeta]| {
        ts.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect::<Vec<_>>()
    };
    Ok(Json(json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    })))
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}/ready",
    params(("name" = String, Path, description = "Model id")),
    responses(
        (status = 200, description = "Ready", body = doc::ModelReady),
        (status = 404, description = "Unknown model", body = doc::KserveError),
        (status = 503, description = "Not ready (`\"ready\": false`)", body = doc::ModelReady),
    ),
    tag = "kserve"
)]
/// `GET /v2/models/{name}/ready`.
pub async fn model_ready(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    readiness(&state, &name, None)
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}/ready",
    params(
        ("name" = String, Path, description = "Model id"),
        ("version" = String, Path, description = "Model version (semver)"),
    ),
    responses(
        (status = 200, description = "Ready", body = doc::ModelReady),
        (status = 404, description = "Unknown model or version", body = doc::KserveError),
        (status = 503, description = "Not ready (`\"ready\": false`)", body = doc::ModelReady),
    ),
    tag = "kserve"
)]
/// `GET /v2/models/{name}/versions/{version}/ready`.
pub async fn model_version_ready(
    State(state): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    readiness(&state, &name, Some(&version))
}

fn readiness(state: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let ready = tensor::model_ready(&state.registry, name, version)?;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!({"name": name, "ready": ready}))).into_response())
}

/// The JSON part of an inference request.
#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[utoipa::path(
    post,
    path = "/v2/models/{name}/infer",
    params(("name" = String, Path, description = "Model id")),
    request_body(content = doc::InferRequest, description = "JSON; or JSON followed by binary tensor data, with `Inference-Header-Content-Length`"),
    responses(
        (status = 200, description = "The output tensor: JSON, or (binary data asked for) the JSON header followed by the data, its length in `Inference-Header-Content-Length`", content(
            (doc::InferResponse = "application/json"),
            (String = "application/octet-stream"),
        )),
        (status = 400, description = "Malformed body, a tensor that is not one BYTES tensor of the model's input, sizes that do not add up", body = doc::KserveError),
        (status = 404, description = "Unknown model or version", body = doc::KserveError),
        (status = 413, description = "Body or number of elements over the limit", body = doc::KserveError),
    ),
    tag = "kserve"
)]
/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Response {
    let p = principal.map(|e| e.0);
    run(&state, &name, None, p.as_ref(), &headers, body).await
}

#[utoipa::path(
    post,
    path = "/v2/models/{name}/versions/{version}/infer",
    params(
        ("name" = String, Path, description = "Model id"),
        ("version" = String, Path, description = "Model version (semver)"),
    ),
    request_body(content = doc::InferRequest, description = "JSON; or JSON followed by binary tensor data, with `Inference-Header-Content-Length`"),
    responses(
        (status = 200, description = "The output tensor: JSON, or (binary data asked for) the JSON header followed by the data, its length in `Inference-Header-Content-Length`", content(
            (doc::InferResponse = "application/json"),
            (String = "application/octet-stream"),
        )),
        (status = 400, description = "Malformed body, a tensor that is not one BYTES tensor of the model's input, sizes that do not add up", body = doc::KserveError),
        (status = 404, description = "Unknown model or version", body = doc::KserveError),
        (status = 413, description = "Body or number of elements over the limit", body = doc::KserveError),
    ),
    tag = "kserve"
)]
/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    State(state): State<AppState>,
    ApiPath((name, version)): ApiPath<(String, String)>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Response {
    let p = principal.map(|e| e.0);
    run(&state, &name, Some(&version), p.as_ref(), &headers, body).await
}

async fn run(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    principal: Option<&Principal>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = match parse_body(headers, body).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (req, binary) = parsed;
    let limit = state.settings.server.max_body_bytes;
    let p = match prepare(&state.registry, name, version, headers, req, binary, limit) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (label, outcome) = state.core.infer(Caller { principal }, p.serve).await;
    let response = match outcome.and_then(|answer| {
        let out = tensor::output(p.task, &answer, &p.shape)?;
        Ok(render(
            &answer.model,
            &answer.version,
            p.id,
            out,
            p.binary_out,
        ))
    }) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    labelled(response, label)
}

/// A v2 request read: the core's request, and how to answer it.
struct Prepared {
    serve: crate::serving::ServeRequest,
    task: Task,
    /// The input's shape (text outputs follow it).
    shape: Vec<i64>,
    /// Answer the output's data in binary.
    binary_out: bool,
    /// The request's `id`, echoed.
    id: Option<String>,
}

/// The request's one text tensor, its outputs and parameters as the core's request.
fn prepare(
    registry: &Registry,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    mut req: InferRequest,
    binary: Bytes,
    limit: usize,
) -> Result<Prepared, ApiError> {
    let datas = binary_parts(&req.inputs, &binary)?;
    if req.inputs.len() != 1 {
        return Err(ApiError::invalid(
            "inputs",
            format!("must hold exactly one tensor; got {}", req.inputs.len()),
        ));
    }
    let input = req.inputs.remove(0);
    let n = tensor::check_tensor(
        &TextTensor {
            name: &input.name,
            datatype: &input.datatype,
            shape: &input.shape,
        },
        limit,
    )?;
    let texts = match (datas.into_iter().next().flatten(), input.data) {
        (Some(raw), None) => tensor::decode_bytes("inputs[0]", raw, n)?,
        (None, Some(data)) => json_texts(data, n)?,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "inputs[0].data",
                "give either `data` or `parameters.binary_data_size`, not both",
            ))
        }
        (None, None) => return Err(ApiError::invalid("inputs[0].data", "is required")),
    };
    let task = tensor::task_of(registry, name, version)?;
    tensor::check_input_name(task, &input.name)?;
    tensor::check_outputs(task, req.outputs.iter().map(|o| o.name.as_str()))?;
    let default_binary = flag(&req.parameters, "binary_data_output", "parameters")?;
    let binary_out = match req.outputs.first() {
        Some(o) => flag(&o.parameters, "binary_data", "outputs[0].parameters")?.or(default_binary),
        None => default_binary,
    }
    .unwrap_or(false);
    let serve = tensor::serve_request(
        name,
        version,
        texts,
        req.parameters,
        super::predict::no_cache(headers),
    )?;
    Ok(Prepared {
        serve,
        task,
        shape: input.shape,
        binary_out,
        id: req.id,
    })
}

fn flag(params: &Map<String, Value>, name: &str, at: &str) -> Result<Option<bool>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            format!("{at}.{name}"),
            "must be true or false",
        )),
    }
}

/// Split the body into the JSON request and the binary data after it (empty without
/// `Inference-Header-Content-Length`). Large headers are parsed off the runtime.
async fn parse_body(headers: &HeaderMap, body: Bytes) -> Result<(InferRequest, Bytes), ApiError> {
    let (json, binary) = match headers.get(HEADER_LENGTH) {
        None => (body, Bytes::new()),
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Inference-Header-Content-Length", "must be a byte count")
                })?;
            if n > body.len() {
                return Err(ApiError::invalid(
                    "Inference-Header-Content-Length",
                    format!("is {n} but the body has {} bytes", body.len()),
                ));
            }
            let binary = body.slice(n..);
            (body.slice(..n), binary)
        }
    };
    let req = if json.len() <= INLINE_PARSE_BYTES {
        parse_json::<InferRequest>(&json)?
    } else {
        tokio::task::spawn_blocking(move || parse_json::<InferRequest>(&json))
            .await
            .map_err(ApiError::internal)??
    };
    Ok((req, binary))
}

/// Each input's slice of the binary data (`None` for inputs with JSON `data`); the sizes must
/// add up to exactly the binary part.
fn binary_parts<'a>(
    inputs: &[InputTensor],
    binary: &'a [u8],
) -> Result<Vec<Option<&'a [u8]>>, ApiError> {
    let mut at = 0usize;
    let mut parts = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let field = format!("inputs[{i}].parameters.binary_data_size");
        let size = match input.parameters.get("binary_data_size") {
            None => {
                parts.push(None);
                continue;
            }
            Some(v) => v
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| ApiError::invalid(&field, "must be a byte count"))?,
        };
        let end = at
            .checked_add(size)
            .filter(|&end| end <= binary.len())
            .ok_or_else(|| {
                ApiError::invalid(
                    &field,
                    format!(
                        "{size} bytes from offset {at} runs past the {} bytes of binary data",
                        binary.len()
                    ),
                )
            })?;
        parts.push(Some(&binary[at..end]));
        at = end;
    }
    if at != binary.len() {
        return Err(ApiError::invalid(
            "body",
            format!(
                "{} bytes of binary data follow the inputs' binary_data_size total of {at}",
                binary.len() - at
            ),
        ));
    }
    Ok(parts)
}

/// `BYTES` data in JSON: strings, flat or nested to the tensor's shape; exactly `n` of them.
fn json_texts(data: Value, n: usize) -> Result<Vec<String>, ApiError> {
    fn walk(v: Value, out: &mut Vec<String>, n: usize) -> Result<(), ApiError> {
        match v {
            Value::String(s) => {
                if out.len() == n {
                    return Err(ApiError::invalid(
                        "inputs[0].data",
                        format!("holds more than the {n} elements its shape says"),
                    ));
                }
                out.push(s);
                Ok(())
            }
            Value::Array(items) => items.into_iter().try_for_each(|i| walk(i, out, n)),
            _ => Err(ApiError::invalid(
                "inputs[0].data",
                "BYTES elements must be strings",
            )),
        }
    }
    let mut out = Vec::with_capacity(n.min(1024));
    walk(data, &mut out, n)?;
    if out.len() != n {
        return Err(ApiError::invalid(
            "inputs[0].data",
            format!("holds {} elements; its shape says {n}", out.len()),
        ));
    }
    Ok(out)
}

/// The v2 response: JSON, or with the output's data after the JSON header when asked for.
fn render(
    model: &str,
    version: &str,
    id: Option<String>,
    out: OutTensor,
    binary: bool,
) -> Response {
    let mut tensor = json!({"name": out.name, "datatype": out.datatype, "shape": out.shape});
    let raw = if binary {
        let raw = out.raw();
        tensor["parameters"] = json!({"binary_data_size": raw.len()});
        Some(raw)
    } else {
        tensor["data"] = match &out.data {
            OutData::Fp32(v) => json!(v),
            OutData::Bytes(e) => Value::from(
                e.iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<Vec<_>>(),
            ),
        };
        None
    };
    let mut body = json!({"model_name": model, "model_version": version, "outputs": [tensor]});
    if let Some(id) = id {
        body["id"] = Value::String(id);
    }
    let Some(raw) = raw else {
        return Json(body).into_response();
    };
    let header = body.to_string().into_bytes();
    let header_len = header.len();
    let mut bytes = header;
    bytes.extend_from_slice(&raw);
    let mut r = Response::new(Body::from(bytes));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_LENGTH, HeaderValue::from(header_len));
    r
}

fn labelled(mut r: Response, label: Option<ModelLabel>) -> Response {
    if let Some(l) = label {
        r.extensions_mut().insert(l);
    }
    r
}

/// KServe's error shape, `{"error": "<message>"}`, for every error answered under `/v2`
/// (including those of the layers: auth, rate limits, body limits, unknown routes).
pub async fn errors(req: Request<Body>, next: Next) -> Response {
    let path = req.uri().path();
    if path != "/v2" && !path.starts_with("/v2/") {
        return next.run(req).await;
    }
    let mut response = next.run(req).await;
    let Some(e) = response.extensions_mut().remove::<RenderedError>() else {
        return response;
    };
    let message = e.message;
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = json!({"error": message}).to_string();
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
#[path = "fuzz.rs"]
mod fuzz;
