//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations so it
//! cannot drift from the routes. The answers every route can get from the layers in front of
//! the handlers (`server::observe_request`, `server::guard`, the body extractor, `conn`) are
//! added to every operation by `SharedResponses`, from `ErrorKind`, in the route's error shape.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{OneOfBuilder, Schema};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::app::AppState;
use super::{
    batches, cache, console, drift, heads, health, jobs, kserve, models, openai, predict, traffic,
    usage, ws,
};
use crate::error::{ErrorBody, ErrorDetails, ErrorEnvelope, ErrorKind};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "anya",
        description = "Model serving: native predict API, OpenAI-compatible API under /v1, model registry, health.\n\nA method a path does not list is answered 405 `method_not_allowed` with an `Allow` header; an unknown path 404 `not_found`."
    ),
    paths(
        predict::predict,
        predict::predict_only,
        predict::predict_version,
        models::list_models,
        models::get_model,
        models::list_versions,
        health::health,
        health::ready,
        health::metrics,
        console::stats,
        usage::model_metrics,
        usage::usage,
        cache::clear,
        openapi_json,
        openai::list_models,
        openai::chat_completions,
        openai::completions,
        openai::embeddings,
        traffic::load,
        traffic::unload,
        traffic::rescan,
        traffic::get_traffic,
        traffic::put_traffic,
        traffic::promote,
        traffic::rollback,
        heads::start,
        heads::status,
        drift::report,
        drift::set_reference,
        jobs::create,
        jobs::list,
        jobs::get,
        jobs::results,
        jobs::cancel,
        batches::upload,
        batches::file,
        batches::content,
        batches::create,
        batches::get,
        batches::cancel,
        batches::list,
        ws::ws,
        kserve::server_metadata,
        kserve::live,
        kserve::ready,
        kserve::model_metadata,
        kserve::model_version_metadata,
        kserve::model_ready,
        kserve::model_version_ready,
        kserve::infer,
        kserve::infer_version,
        console::index,
        console::script,
        console::style,
        console::icon,
    ),
    components(schemas(
        ErrorEnvelope,
        ErrorBody,
        ErrorDetails,
        openai::errors::OpenAiErrorEnvelope,
        kserve::doc::KserveError,
        openai::types::ChatCompletionChunk,
        openai::types::TextCompletionChunk,
        usage::PeriodParam,
        usage::GroupByParam,
    )),
    modifiers(&ConsoleAliases, &SharedResponses),
    tags(
        (name = "inference", description = "Run models"),
        (name = "models", description = "The model registry"),
        (name = "health", description = "Probes"),
        (name = "usage", description = "Usage and cost"),
        (name = "cache", description = "The response cache"),
        (name = "lifecycle", description = "Load, unload and swap model versions; traffic policies (split, sticky A/B, shadow, canary), promote and rollback (scope admin)"),
        (name = "jobs", description = "Batch jobs: many inputs answered in the background, stored as they finish, resumed after a restart; a signed webhook when they end"),
        (name = "training", description = "Classification heads trained from labelled examples (scope train or admin)"),
        (name = "openai", description = "OpenAI-compatible API: OpenAI's request and response shapes, errors as {\"error\": {\"message\", \"type\", \"param\", \"code\"}}"),
        (name = "kserve", description = "KServe v2 / Open Inference Protocol over REST: BYTES text tensors in, FP32 or BYTES tensors out (JSON or binary tensor data); errors as {\"error\": \"<message>\"}"),
        (name = "console", description = "The built-in web console's files (public; its figures come from the guarded routes)"),
    )
)]
pub struct ApiDoc;

/// This document, with this server's model ids and versions as examples of the `id` and
/// `version` path parameters and of the `/v1` requests' `model`.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")), tag = "health")]
pub async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    let mut ids = Vec::new();
    let mut versions = Vec::new();
    for rec in state.registry.list() {
        ids.push(Value::from(rec.id.clone()));
        for v in rec.versions.keys() {
            let v = Value::from(v.to_string());
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
    }
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    with_examples(&mut doc, &ids, &versions);
    Json(doc)
}

/// Model ids (and versions) as examples where the document takes them.
fn with_examples(doc: &mut Value, ids: &[Value], versions: &[Value]) {
    if ids.is_empty() {
        return;
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
        {
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in params {
                let examples = match (p["in"].as_str(), p["name"].as_str()) {
                    (Some("path"), Some("id" | "name")) => ids,
                    (Some("path"), Some("version")) if !versions.is_empty() => versions,
                    _ => continue,
                };
                if let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) {
                    schema.insert("examples".into(), Value::from(examples.to_vec()));
                }
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    for name in ["ChatRequest", "CompletionRequest", "EmbeddingRequest"] {
        model_examples(&mut schemas[name], ids);
    }
}

fn model_examples(schema: &mut Value, ids: &[Value]) {
    match schema {
        Value::Object(o) => {
            if let Some(model) = o
                .get_mut("properties")
                .and_then(|p| p.get_mut("model"))
                .and_then(Value::as_object_mut)
            {
                model.insert("examples".into(), Value::from(ids.to_vec()));
            }
            o.values_mut().for_each(|v| model_examples(v, ids));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| model_examples(v, ids)),
        _ => {}
    }
}

/// Where an error from the layers can come from, for one operation.
struct Route {
    /// `/health`, `/ready`, `/metrics`: no token, no rate limit, no concurrency limit.
    probe: bool,
    /// `/health` and `/ready` need no token even with auth on.
    open: bool,
    /// The operation reads a JSON body (`extract::ApiJson`).
    body: bool,
}

/// The errors the layers answer, with when they do.
fn shared_errors(route: &Route) -> Vec<(ErrorKind, &'static str)> {
    let mut out = vec![
        (
            ErrorKind::InvalidRequest,
            "Unparseable request (answered by the HTTP layer), bad query or path",
        ),
        (
            ErrorKind::PayloadTooLarge,
            "Content-Length (or the body) over server.max_body_bytes",
        ),
        (ErrorKind::UriTooLong, "Request target too long"),
        (
            ErrorKind::UnsupportedMediaType,
            "A Content-Encoding other than identity",
        ),
        (
            ErrorKind::HeadersTooLarge,
            "Request headers over server.max_header_bytes",
        ),
    ];
    if route.body {
        out.push((
            ErrorKind::BodyTimeout,
            "The body did not arrive within server.body_timeout_ms",
        ));
    }
    if !route.open {
        out.push((
            ErrorKind::Unauthorized,
            "With security.auth_required: no valid bearer token",
        ));
        out.push((
            ErrorKind::Forbidden,
            "With security.auth_required: the token lacks the route's scope or the model",
        ));
    }
    if !route.open {
        out.push((
            ErrorKind::RateLimited,
            "With rate_limits.enabled: over the principal's limit (see Retry-After)",
        ));
    }
    if !route.probe {
        out.push((
            ErrorKind::Unavailable,
            "server.max_concurrent_requests in flight, the server is draining, or (inference) the queue is full or the model not ready; see Retry-After",
        ));
        out.push((
            ErrorKind::Timeout,
            "No answer within server.request_timeout_ms",
        ));
    }
    out
}

/// The console's paths (public: no token, no rate limit).
const CONSOLE_PATHS: [&str; 6] = [
    "/",
    "/ui",
    "/ui/",
    "/ui/app.js",
    "/ui/app.css",
    "/ui/icon.svg",
];

/// `/ui` and `/ui/` serve the page `/` does (one handler, so one annotation): the same
/// operation under each path.
struct ConsoleAliases;

impl Modify for ConsoleAliases {
    fn modify(&self, doc: &mut Document) {
        if let Some(item) = doc.paths.paths.get("/").cloned() {
            for alias in ["/ui", "/ui/"] {
                doc.paths.paths.insert(alias.to_string(), item.clone());
            }
        }
    }
}

/// The error shape of a path's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"error": {"code", "message", "details"}}`.
    Native,
    /// Under `/v1`: `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// Under `/v2`: `{"error": "<message>"}`.
    Kserve,
}

impl Shape {
    fn schema(self) -> &'static str {
        match self {
            Shape::Native => "ErrorEnvelope",
            Shape::OpenAi => "OpenAiErrorEnvelope",
            Shape::Kserve => "KserveError",
        }
    }
}

/// Adds the layers' errors to every operation (leaving the handler's own description of a
/// status where it has one), in the native envelope or, under `/v1`, OpenAI's, under `/v2`,
/// KServe's.
struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, doc: &mut Document) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let shape = if path.starts_with("/v1/") {
                Shape::OpenAi
            } else if path == "/v2" || path.starts_with("/v2/") {
                Shape::Kserve
            } else {
                Shape::Native
            };
            // As `app::observe_request` and `app::need` treat them.
            let probe = matches!(
                path.as_str(),
                "/health" | "/ready" | "/metrics" | "/v2/health/live" | "/v2/health/ready"
            );
            let open = matches!(
                path.as_str(),
                "/health" | "/ready" | "/v2/health/live" | "/v2/health/ready"
            ) || CONSOLE_PATHS.contains(&path.as_str());
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let route = Route {
                    probe,
                    open,
                    body: op.request_body.is_some(),
                };
                add_errors(op, shape, &route);
                if shape != Shape::Native {
                    either_shape(op, shape);
                }
            }
        }
    }
}

/// The HTTP layer answers a request it cannot parse (400, 414, 431) before the path is known,
/// so in the native envelope, under `/v1` and `/v2` too (`conn::rewrite_bare_error`).
fn either_shape(op: &mut Operation, shape: Shape) {
    for status in ["400", "414", "431"] {
        let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) else {
            continue;
        };
        let schema = OneOfBuilder::new()
            .item(Ref::from_schema_name(shape.schema()))
            .item(Ref::from_schema_name("ErrorEnvelope"))
            .build();
        response.content.insert(
            "application/json".into(),
            RefOr::T(
                ContentBuilder::new()
                    .schema(Some(Schema::OneOf(schema)))
                    .build(),
            ),
        );
        response.description.push_str(
            " (a request the HTTP layer cannot parse gets the native ErrorEnvelope: its path is not known yet)",
        );
    }
}

fn add_errors(op: &mut Operation, shape: Shape, route: &Route) {
    let schema = shape.schema();
    for (kind, when) in shared_errors(route) {
        let status = kind.status().as_u16().to_string();
        if op.responses.responses.contains_key(&status) {
            continue;
        }
        let mut response = ResponseBuilder::new().description(when).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        );
        match kind {
            ErrorKind::RateLimited | ErrorKind::Unavailable => {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .description(Some("Seconds to wait before retrying"))
                        .build(),
                );
            }
            ErrorKind::Unauthorized => {
                response = response.header(
                    "WWW-Authenticate",
                    HeaderBuilder::new().description(Some("Bearer")).build(),
                );
            }
            _ => {}
        }
        op.responses
            .responses
            .insert(status, RefOr::T(response.build()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_the_layers_errors_in_its_shape() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let post = &doc["paths"]["/v1/chat/completions"]["post"]["responses"];
        for code in ["400", "414", "431"] {
            let either = &post[code]["content"]["application/json"]["schema"]["oneOf"];
            assert_eq!(either.as_array().map(Vec::len), Some(2), "{code}: {either}");
        }
        for code in ["404", "408", "413", "415", "429", "503", "504"] {
            let schema = post[code]["content"]["application/json"]["schema"]["$ref"].as_str();
            assert_eq!(
                schema,
                Some("#/components/schemas/OpenAiErrorEnvelope"),
                "{code}: {}",
                post[code]
            );
        }
        assert!(post["200"]["content"]["text/event-stream"].is_object());
        let health = &doc["paths"]["/health"]["get"]["responses"];
        assert!(health.get("401").is_none() && health.get("504").is_none());
        let models = &doc["paths"]["/models"]["get"]["responses"]["503"];
        assert_eq!(
            models["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorEnvelope"
        );
    }

    /// The routes `app::app` serves, as (path, method), from the route table itself.
    fn declared_routes() -> Vec<(String, String)> {
        crate::http::routes::table(&crate::config::Settings::default())
            .into_parts()
            .1
            .all()
            .into_iter()
            .map(|(path, method, _)| (path.to_string(), method.as_str().to_ascii_lowercase()))
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let routes = declared_routes();
        assert!(routes.len() > 50, "{routes:?}");
        for probe in [
            ("/v1/ws", "get"),
            ("/v2/models/{name}/infer", "post"),
            ("/jobs", "post"),
            ("/jobs", "get"),
            ("/models/{id}/traffic", "put"),
            ("/ui/app.js", "get"),
        ] {
            assert!(
                routes.contains(&(probe.0.to_string(), probe.1.to_string())),
                "the table lacks {probe:?}"
            );
        }
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let missing: Vec<_> = routes
            .iter()
            .filter(|(p, m)| {
                paths
                    .get(p.as_str())
                    .and_then(|i| i.get(m.as_str()))
                    .is_none()
            })
            .collect();
        assert!(
            missing.is_empty(),
            "routes missing from /openapi.json: {missing:?}"
        );
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    routes.contains(&(path.clone(), method.clone())),
                    "/openapi.json documents {method} {path}, which no route serves"
                );
            }
        }
        // The layers' errors under /v2 are KServe's shape; the console's pages need no token.
        let infer = &doc["paths"]["/v2/models/{name}/infer"]["post"]["responses"];
        assert_eq!(
            infer["503"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/KserveError"
        );
        assert!(doc["paths"]["/ui"]["get"]["responses"].get("401").is_none());
    }
}
