//! `GET /models`, `GET /models/{id}`, `GET /models/{id}/versions`.

use axum::extract::State;

use super::extract::ApiPath;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::app::AppState;
use crate::error::{ApiError, ErrorEnvelope};
use crate::registry::{ModelRecord, RegistryError, VersionRecord, VersionState};
use crate::spec::manifest::Manifest;

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelSummary {
    pub id: String,
    /// `embedding`, `text-generation` or `echo`.
    pub task: String,
    pub framework: String,
    pub default_version: String,
    pub versions: Vec<String>,
    /// State of the default version: loading, ready or failed.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    pub version: String,
    pub default: bool,
    /// loading, ready, draining (being unloaded) or failed.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
    /// Requests waiting for a batch now.
    pub queue_size: usize,
    /// Share (out of 100) of the model's unpinned requests this version gets: from the traffic
    /// policy, else 100 for the default version.
    pub weight: f64,
    pub created_at: String,
    pub updated_at: String,
    /// A remote model's provider and what its last probe saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderInfo>,
    /// A loaded GGUF's architecture, tensor types, parameter count, context length and engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<crate::models::gguf_meta::WeightsInfo>,
}

/// A remote model's provider (its key is never shown).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderInfo {
    pub base_url: String,
    pub model: String,
    /// up, down or unknown (not probed yet), from `GET {base_url}/models`.
    pub state: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub model: String,
    pub versions: Vec<VersionInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParameterInfo {
    pub name: String,
    /// integer, number, boolean, string or string_list.
    #[serde(rename = "type")]
    pub kind: String,
    /// Null when the parameter has no default.
    #[schema(value_type = Option<ParamDefault>)]
    pub default: Option<Value>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A parameter's default, of the parameter's type.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum ParamDefault {
    Boolean(bool),
    Number(f64),
    String(String),
    StringList(Vec<String>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    pub max_inputs: usize,
    pub max_input_length: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchingInfo {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_queue_delay_ms: u64,
    pub queue_capacity: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDetail {
    pub id: String,
    pub task: String,
    pub framework: String,
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    pub default_version: String,
    pub versions: Vec<VersionInfo>,
    /// JSON Schema of `inputs`.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// JSON Schema of `outputs`.
    #[schema(value_type = Object)]
    pub output_schema: Value,
    pub parameters: Vec<ParameterInfo>,
    pub limits: Limits,
    pub batching: BatchingInfo,
    /// Embedding size (embedding models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    pub created_at: String,
    pub updated_at: String,
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(crate) fn version_info(state: &AppState, rec: &ModelRecord, v: &VersionRecord) -> VersionInfo {
    let (error, device, queue_size, weights) = match &v.state {
        VersionState::Failed(e) => (Some(e.clone()), None, 0, None),
        VersionState::Ready(h) | VersionState::Draining(h) => {
            let f = h.frontend();
            (
                None,
                Some(f.device.clone()),
                h.queue_len(),
                f.weights.clone(),
            )
        }
        VersionState::Loading => (None, None, 0, None),
    };
    let provider = match &v.state {
        VersionState::Ready(h) | VersionState::Draining(h) => h.remote_model().map(|r| {
            use crate::engine::remote::ProbeState;
            ProviderInfo {
                base_url: r.spec().base_url.clone(),
                model: r.spec().model.clone(),
                state: match r.probe_state() {
                    ProbeState::Up => "up",
                    ProbeState::Down => "down",
                    ProbeState::Unknown => "unknown",
                }
                .into(),
            }
        }),
        _ => None,
    };
    let version = v.manifest.version.to_string();
    let weight = state.core.traffic.weight_of(&rec.id, &version).unwrap_or(
        if v.manifest.version == rec.default_version {
            100.0
        } else {
            0.0
        },
    );
    VersionInfo {
        weight,
        version,
        default: v.manifest.version == rec.default_version,
        state: v.state.as_str().to_string(),
        error,
        device,
        load_ms: v.load_ms,
        queue_size,
        created_at: ts(v.created_at),
        updated_at: ts(v.updated_at),
        provider,
        weights,
    }
}

fn default_record(rec: &ModelRecord) -> Option<&VersionRecord> {
    rec.versions
        .get(&rec.default_version)
        .or_else(|| rec.versions.values().next_back())
}

/// Every model in the registry.
#[utoipa::path(get, path = "/models", responses((status = 200, body = ModelList)), tag = "models")]
pub async fn list_models(
    State(state): State<AppState>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
) -> Json<ModelList> {
    // A token limited to some models lists only those.
    let permitted = |id: &str| principal.as_ref().is_none_or(|p| p.may_use(id));
    let models = state
        .registry
        .list()
        .iter()
        .filter(|rec| permitted(&rec.id))
        .filter_map(|rec| {
            let d = default_record(rec)?;
            Some(ModelSummary {
                id: rec.id.clone(),
                task: d.manifest.task.as_str().into(),
                framework: d.manifest.format.framework().into(),
                default_version: rec.default_version.to_string(),
                versions: rec.versions.keys().map(|v| v.to_string()).collect(),
                state: d.state.as_str().into(),
                description: d.manifest.description.clone(),
            })
        })
        .collect();
    Json(ModelList { models })
}

/// One model: versions, schemas, parameters, limits.
#[utoipa::path(
    get,
    path = "/models/{id}",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = ModelDetail), (status = 404, body = ErrorEnvelope)),
    tag = "models"
)]
pub async fn get_model(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    let rec = state.registry.record(&id)?;
    let d = default_record(&rec).ok_or(RegistryError::NotFound(id.clone()))?;
    let m = &d.manifest;
    let dimensions = match &d.state {
        VersionState::Ready(h) => h.frontend().dimensions,
        _ => None,
    };
    let versions: Vec<VersionInfo> = rec
        .versions
        .values()
        .map(|v| version_info(&state, &rec, v))
        .collect();
    let created = rec
        .versions
        .values()
        .map(|v| v.created_at)
        .min()
        .unwrap_or(d.created_at);
    let updated = rec
        .versions
        .values()
        .map(|v| v.updated_at)
        .max()
        .unwrap_or(d.updated_at);
    Ok(Json(ModelDetail {
        id: rec.id.clone(),
        task: m.task.as_str().into(),
        framework: m.format.framework().into(),
        format: format!("{:?}", m.format).to_lowercase(),
        description: m.description.clone(),
        license: m.license.clone(),
        default_version: rec.default_version.to_string(),
        versions,
        input_schema: input_schema(m),
        output_schema: output_schema(m, dimensions),
        parameters: crate::serving::tasks::params_of(m)
            .iter()
            .map(|p| ParameterInfo {
                name: p.name.clone(),
                kind: serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                default: p.default.clone(),
                min: p.min,
                max: p.max,
                description: p.description.clone(),
            })
            .collect(),
        limits: Limits {
            max_inputs: m.max_inputs,
            max_input_length: m.max_input_length,
        },
        batching: BatchingInfo {
            max_batch_size: m.batching.max_batch_size,
            max_batch_tokens: m.batching.max_batch_tokens,
            max_queue_delay_ms: m.batching.max_queue_delay_ms,
            queue_capacity: m.batching.queue_capacity,
        },
        dimensions,
        created_at: ts(created),
        updated_at: ts(updated),
    }))
}

/// The versions of one model.
#[utoipa::path(
    get,
    path = "/models/{id}/versions",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, body = VersionList), (status = 404, body = ErrorEnvelope)),
    tag = "models"
)]
pub async fn list_versions(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VersionList>, ApiError> {
    let rec = state.registry.record(&id)?;
    Ok(Json(VersionList {
        model: rec.id.clone(),
        versions: rec
            .versions
            .values()
            .map(|v| version_info(&state, &rec, v))
            .collect(),
    }))
}

fn input_schema(m: &Manifest) -> Value {
    let Some(items) = crate::serving::tasks::of(m.task).input_item_schema() else {
        return json!({"description": "any JSON; a list is one input per item"});
    };
    // The same shape as `inputs` in /openapi.json: a list of inputs, or one input alone.
    json!({"oneOf": [
        items.clone(),
        {"type": "array", "minItems": 1, "maxItems": m.max_inputs, "items": items}
    ], "description": format!("one input, or a list of them; at most {} tokens per input", m.max_input_length)})
}

fn output_schema(m: &Manifest, dims: Option<usize>) -> Value {
    crate::serving::tasks::of(m.task).output_schema(dims)
}
