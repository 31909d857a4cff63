//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations so it
//! cannot drift from the routes.

use axum::Json;
use utoipa::OpenApi;

use super::{cache, health, models, predict, usage};
use crate::error::{ErrorBody, ErrorDetails, ErrorEnvelope};

#[derive(OpenApi)]
#[openapi(
    info(title = "anya", description = "Model serving: native predict API, model registry, health."),
    paths(
        predict::predict,
        predict::predict_version,
        models::list_models,
        models::get_model,
        models::list_versions,
        health::health,
        health::ready,
        health::metrics,
        usage::model_metrics,
        usage::usage,
        cache::clear,
        openapi_json,
    ),
    components(schemas(ErrorEnvelope, ErrorBody, ErrorDetails)),
    tags(
        (name = "inference", description = "Run models"),
        (name = "models", description = "The model registry"),
        (name = "health", description = "Probes"),
        (name = "usage", description = "Usage and cost"),
        (name = "cache", description = "The response cache"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")), tag = "health")]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
