//! The shapes of the `/v2` answers, for `/openapi.json` only: the handlers build their JSON
//! with `json!` (see `server_metadata`, `metadata`, `render`), these types describe it.

#![allow(dead_code)]

use serde::Serialize;
use utoipa::ToSchema;

/// KServe's error body, `{"error": "<message>"}`, for every error under `/v2`.
#[derive(Serialize, ToSchema)]
pub struct KserveError {
    pub error: String,
}

/// `GET /v2`.
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    /// `anya`.
    pub name: String,
    pub version: String,
    /// `binary_tensor_data`.
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`.
#[derive(Serialize, ToSchema)]
pub struct Live {
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

/// `GET /v2/models/{name}/ready`.
#[derive(Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

/// A tensor's name, datatype and shape (`-1`: any size).
#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    /// `BYTES` or `FP32`.
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// One input tensor: `BYTES` texts, in JSON `data` or in the binary part of the body
/// (`parameters.binary_data_size`).
#[derive(Serialize, ToSchema)]
pub struct InferInputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Strings, nested as the shape says.
    pub data: Option<Vec<serde_json::Value>>,
}

/// An output asked for (`parameters.binary_data`: answer it in binary).
#[derive(Serialize, ToSchema)]
pub struct InferRequestedOutput {
    pub name: String,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

/// `POST /v2/models/{name}/infer` (JSON, or JSON followed by binary tensor data with
/// `Inference-Header-Content-Length`).
#[derive(Serialize, ToSchema)]
pub struct InferRequest {
    pub id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Exactly one tensor.
    pub inputs: Vec<InferInputTensor>,
    pub outputs: Option<Vec<InferRequestedOutput>>,
}

/// One output tensor: `data` in JSON, or `parameters.binary_data_size` bytes after the JSON.
#[derive(Serialize, ToSchema)]
pub struct InferOutputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Numbers (`FP32`) or strings (`BYTES`).
    pub data: Option<Vec<serde_json::Value>>,
}

/// The answer of an inference.
#[derive(Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    /// The request's `id`, echoed.
    pub id: Option<String>,
    pub outputs: Vec<InferOutputTensor>,
}
