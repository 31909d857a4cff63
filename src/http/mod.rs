//! HTTP routes. Each handler is thin: extract, validate into a typed request, call the engine,
//! shape the answer. All errors are `ApiError`.

pub mod cache;
pub mod extract;
pub mod health;
pub mod kserve;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod params;
pub mod predict;
pub mod usage;

use crate::engine::EngineError;
use crate::error::{ApiError, ErrorDetails, ErrorKind};
use crate::registry::RegistryError;

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::NotFound(_) | RegistryError::VersionNotFound(..) => {
                ApiError::not_found(e.to_string())
            }
            RegistryError::Loading { .. } => ApiError::unavailable(e.to_string(), 5),
            RegistryError::Failed { id, version, .. } => ApiError::unavailable(
                format!("model `{id}` version {version} failed to load; see GET /models/{id}"),
                30,
            ),
            RegistryError::Duplicate(..) => ApiError::internal(e),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Overloaded { .. } => ApiError::unavailable(format!("{e}; retry later"), 1),
            EngineError::Timeout { timeout_ms, .. } => {
                ApiError::new(ErrorKind::Timeout, e.to_string()).with_details(ErrorDetails {
                    field: None,
                    issue: Some(format!("server.request_timeout_ms is {timeout_ms}")),
                })
            }
            EngineError::Stopped(_) => ApiError::unavailable(e.to_string(), 5),
            EngineError::Model(_) | EngineError::Load(_) => ApiError::internal(e),
        }
    }
}
