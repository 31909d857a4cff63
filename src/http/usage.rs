//! `GET /models/{id}/metrics` and `GET /usage`: usage and cost figures for people (Prometheus
//! has the same events for machines).

use std::collections::HashMap;

use axum::extract::State;

use super::extract::{ApiPath, ApiQuery};
use axum::Extension;

use crate::auth::{Principal, SCOPE_ADMIN};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::app::AppState;
use crate::error::{ApiError, ErrorEnvelope};
use crate::usage::{now_unix, GroupBy, ModelWindow, Period, UsageRow};

/// The values of `period` (see `usage::Period::parse`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum PeriodParam {
    Hourly,
    Daily,
}

/// The values of `group_by`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum GroupByParam {
    Model,
    Principal,
}

fn period(q: &HashMap<String, String>) -> Result<Period, ApiError> {
    match q.get("period") {
        None => Ok(Period::Hourly),
        Some(p) => {
            Period::parse(p).ok_or_else(|| ApiError::invalid("period", "must be hourly or daily"))
        }
    }
}

/// Requests, tokens, latency percentiles, error rate and estimated cost of one model over the
/// last hour (`period=hourly`, the default) or day (`daily`).
#[utoipa::path(
    get,
    path = "/models/{id}/metrics",
    params(
        ("id" = String, Path, description = "Model id"),
        ("period" = Option<PeriodParam>, Query, description = "hourly (last 60 minutes, default) or daily (last 24 hours)"),
    ),
    responses(
        (status = 200, body = ModelWindow),
        (status = 400, description = "Bad period or unknown query parameter", body = ErrorEnvelope),
        (status = 404, description = "Unknown model", body = ErrorEnvelope),
    ),
    tag = "usage"
)]
pub async fn model_metrics(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
) -> Result<Json<ModelWindow>, ApiError> {
    super::extract::only(&q, &["period"])?;
    let period = period(&q)?;
    state.registry.record(&id)?;
    Ok(Json(state.usage.model_window(
        &id,
        period,
        None,
        now_unix(),
    )))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub period: String,
    pub group_by: String,
    pub rows: Vec<UsageRow>,
}

/// Token usage and cost per hour or day bucket, grouped by model or principal.
#[utoipa::path(
    get,
    path = "/usage",
    params(
        ("period" = Option<PeriodParam>, Query, description = "hourly (default) or daily buckets"),
        ("group_by" = Option<GroupByParam>, Query, description = "model (default) or principal"),
    ),
    responses(
        (status = 200, body = UsageReport),
        (status = 400, description = "Bad period, group_by or unknown query parameter", body = ErrorEnvelope),
    ),
    tag = "usage"
)]
pub async fn usage(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
) -> Result<Json<UsageReport>, ApiError> {
    // Principals see their own usage; admins (and everyone when auth is off) see all.
    let own = principal
        .as_ref()
        .filter(|p| !p.anonymous && !p.has_scope(SCOPE_ADMIN))
        .map(|p| p.account().to_string());
    super::extract::only(&q, &["period", "group_by"])?;
    let period = period(&q)?;
    let group_by = match q.get("group_by").map(String::as_str) {
        None | Some("model") => GroupBy::Model,
        Some("principal") => GroupBy::Principal,
        Some(_) => return Err(ApiError::invalid("group_by", "must be model or principal")),
    };
    Ok(Json(UsageReport {
        period: q.get("period").cloned().unwrap_or_else(|| "hourly".into()),
        group_by: match group_by {
            GroupBy::Model => "model".into(),
            GroupBy::Principal => "principal".into(),
        },
        rows: state.usage.usage(period, group_by, own.as_deref()),
    }))
}
