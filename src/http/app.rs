//! The HTTP application: `AppState` (what every handler shares), the one route table
//! (`app(state) -> Router`, each route naming its access rule in `need`), and the layers every
//! request passes: request id, trace span, CORS, early limits, drain, concurrency, timeout,
//! auth, scopes, rate limits, metrics, usage and the access log. Binding and serving are
//! `server`'s.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method, Request, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::{
    batches, cache, console, drift, heads, health, jobs, kserve, models, openai, openapi, predict,
    traffic, usage, ws,
};
use crate::admission::{admit, bearer, Admitted, Need, Refused};
pub use crate::auth::ANONYMOUS;
use crate::auth::{
    Authenticator, Principal, SCOPE_ADMIN, SCOPE_METRICS, SCOPE_PREDICT, SCOPE_TRAIN,
};
use crate::cache::{CacheError, ResponseCache};
use crate::config::Settings;
use crate::error::ErrorCode;
use crate::error::{ApiError, ErrorKind};
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, ModelLabel};
use crate::net::{client_ip, IpNet};
use crate::ratelimit::RateLimits;
use crate::registry::Registry;
use crate::usage::{now_unix, UsageEvent, UsageStore};
use axum::extract::ConnectInfo;
use tokio::sync::Semaphore;

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Keys(#[from] crate::auth::KeyError),
    #[error("{0}")]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("{0}")]
    RateLimits(#[from] crate::ratelimit::RateLimitError),
    #[error("{0}")]
    Jobs(#[from] crate::jobs::JobError),
}

use axum::extract::MatchedPath;
use std::time::Instant;

/// What every handler shares, behind one `Arc`: axum clones the state for every middleware
/// layer and handler of every request, so a clone is one reference count, not one per field
/// (in a profile of the echo route, dev build, the per-field clones and drops were about 14 % of
/// the CPU: atomic counts shared by the cores).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles in [`AppState`].
pub struct Shared {
    pub registry: Arc<Registry>,
    pub settings: Arc<Settings>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub usage: Arc<UsageStore>,
    /// The response cache; `None` when `cache.enabled` is false.
    pub cache: Option<Arc<ResponseCache>>,
    /// Token checks; `None` when `security.auth_required` is false (everyone is anonymous).
    pub auth: Option<Arc<Authenticator>>,
    /// Per-principal limits; `None` when `rate_limits.enabled` is false.
    pub limits: Option<Arc<RateLimits>>,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// Requests processed at once (`server.max_concurrent_requests`).
    pub concurrency: Arc<Semaphore>,
    /// How long a request may wait for its model (`server.request_timeout_ms`).
    pub request_timeout: Duration,
    /// The serving core every protocol adapter calls.
    pub core: Arc<crate::serving::Core>,
    /// Batch jobs (native and OpenAI batches).
    pub jobs: Arc<crate::jobs::Jobs>,
}

impl AppState {
    pub fn new(settings: Settings, registry: Arc<Registry>) -> Result<Self, StateError> {
        let metrics = Metrics::new();
        let cache = ResponseCache::new(&settings.cache, metrics.clone())?.map(Arc::new);
        let auth = if settings.security.auth_required {
            Some(Arc::new(Authenticator::new(&settings.security)?))
        } else {
            None
        };
        let limits = settings
            .rate_limits
            .enabled
            .then(|| {
                let url = settings
                    .rate_limits
                    .redis_url
                    .as_deref()
                    .or(settings.cache.redis_url.as_deref());
                RateLimits::with_redis(&settings.rate_limits, url, metrics.clone()).map(Arc::new)
            })
            .transpose()?;
        let trusted_proxies = Arc::new(
            settings
                .security
                .trusted_proxies
                .iter()
                .filter_map(|p| IpNet::parse(p))
                .collect(),
        );
        let concurrency = Arc::new(Semaphore::new(settings.server.max_concurrent_requests));
        let request_timeout = Duration::from_millis(settings.server.request_timeout_ms);
        let usage = Arc::new(UsageStore::new());
        // The fleet shares the Redis the replicas already share.
        let fleet = match settings
            .rate_limits
            .redis_url
            .as_ref()
            .or(settings.cache.redis_url.as_ref())
        {
            Some(url) => Some(Arc::new(crate::fleet::Fleet::new(
                url,
                Duration::from_millis(settings.cache.redis_timeout_ms.max(200)),
            )?)),
            None => None,
        };
        let core = Arc::new(crate::serving::Core {
            registry: registry.clone(),
            cache: cache.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            usage: usage.clone(),
            monitoring: settings.monitoring.enabled,
            request_timeout,
            traffic: Arc::new(crate::traffic::Traffic::new(Some(
                settings.model.local_repository().to_path_buf(),
            ))),
            loading: crate::serving::admin::Loading::new(crate::serving::admin::LoadSettings {
                models_dir: settings.model.local_repository().to_path_buf(),
                remote: settings.model.remote_repository().map(str::to_string),
                device: settings.model.device,
                warmup: settings.model.warmup,
                trusted_keys: settings.security.require_signed_models.then(|| {
                    Arc::new(
                        settings
                            .security
                            .trusted_keys
                            .iter()
                            .filter_map(|k| crate::spec::signing::parse_public_key(k))
                            .collect(),
                    )
                }),
                drain_timeout: Duration::from_secs(settings.server.drain_timeout_s.max(1)),
                poll_interval_s: settings.model.poll_interval_s,
            }),
            fleet,
            breakers: Default::default(),
            breaker_defaults: settings.model.breaker,
            heads: Default::default(),
            drift: Default::default(),
        });
        let jobs = crate::jobs::Jobs::open(&settings.jobs, core.clone())?;
        Ok(Self(Arc::new(Shared {
            jobs,
            auth,
            limits,
            trusted_proxies,
            concurrency,
            request_timeout,
            settings: Arc::new(settings),
            registry,
            lifecycle: Arc::new(Lifecycle::new()),
            metrics,
            usage,
            cache,
            core,
        })))
    }
}

pub fn app(state: AppState) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    let upload_limit = upload_limit(&state.settings);
    let train_limit = train_limit(&state.settings);
    let mut router = Router::new();
    if state.settings.monitoring.enabled {
        router = router.route("/metrics", get(health::metrics));
    }
    router
        .route("/models", get(models::list_models))
        .route("/models/{id}", get(models::get_model))
        .route("/models/{id}/versions", get(models::list_versions))
        .route(
            "/models/{id}/versions/{version}",
            delete(traffic::unload),
        )
        .route(
            "/models/{id}/versions/{version}/load",
            post(traffic::load),
        )
        .route(
            "/models/{id}/traffic",
            get(traffic::get_traffic).put(traffic::put_traffic),
        )
        .route("/models/{id}/traffic/promote", post(traffic::promote))
        .route("/models/{id}/traffic/rollback", post(traffic::rollback))
        .route("/repository/rescan", post(traffic::rescan))
        .route("/models/{id}/metrics", get(usage::model_metrics))
        .route("/usage", get(usage::usage))
        .route("/cache", delete(cache::clear))
        .route("/models/{id}/drift", get(drift::report))
        .route("/models/{id}/drift/reference", post(drift::set_reference))
        .route(
            "/models/{id}/heads",
            post(heads::start).layer(DefaultBodyLimit::max(train_limit)),
        )
        .route("/models/{id}/heads/{training}", get(heads::status))
        .route(
            "/jobs",
            post(jobs::create)
                .layer(DefaultBodyLimit::max(upload_limit))
                .get(jobs::list),
        )
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/results", get(jobs::results))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/models/{id}/predict", post(predict::predict))
        .route(
            "/models/{id}/versions/{version}/predict",
            post(predict::predict_version),
        )
        .merge(
            Router::new()
                .route("/v1/models", get(openai::list_models))
                .route("/v1/chat/completions", post(openai::chat_completions))
                .route("/v1/completions", post(openai::completions))
                .route("/v1/embeddings", post(openai::embeddings))
                .route(
                    "/v1/files",
                    post(batches::upload).layer(DefaultBodyLimit::max(upload_limit)),
                )
                .route("/v1/files/{id}", get(batches::file))
                .route("/v1/files/{id}/content", get(batches::content))
                .route("/v1/batches", post(batches::create).get(batches::list))
                .route("/v1/batches/{id}", get(batches::get))
                .route("/v1/batches/{id}/cancel", post(batches::cancel))
                .route("/v1/ws", get(ws::ws)),
        )
        .merge(
            Router::new()
                .route("/v2", get(kserve::server_metadata))
                .route("/v2/health/live", get(kserve::live))
                .route("/v2/health/ready", get(kserve::ready))
                .route("/v2/models/{name}", get(kserve::model_metadata))
                .route(
                    "/v2/models/{name}/versions/{version}",
                    get(kserve::model_version_metadata),
                )
                .route("/v2/models/{name}/ready", get(kserve::model_ready))
                .route(
                    "/v2/models/{name}/versions/{version}/ready",
                    get(kserve::model_version_ready),
                )
                .route("/v2/models/{name}/infer", post(kserve::infer))
                .route(
                    "/v2/models/{name}/versions/{version}/infer",
                    post(kserve::infer_version),
                ),
        )
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/stats", get(console::stats))
        .route("/", get(console::index))
        .route("/ui", get(console::index))
        .route("/ui/", get(console::index))
        .route("/ui/app.js", get(console::script))
        .route("/ui/app.css", get(console::style))
        .route("/ui/icon.svg", get(console::icon))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn_with_state(state.clone(), observe_request))
        // Outside every layer that can refuse a request: /v1 errors in OpenAI's shape.
        .layer(middleware::from_fn(openai::errors))
        // And /v2 errors in KServe's `{"error": "..."}`.
        .layer(middleware::from_fn(kserve::errors))
        .layer(cors(&state.settings.security.allowed_origins))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            // Failures are in the access log line already (with their status); the default
            // ERROR line per 5xx would flood the logs with every 503 from /ready.
            TraceLayer::new_for_http()
                .on_failure(())
                .make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let uri = crate::telemetry::loggable_uri(req.uri());
            tracing::info_span!("request", method = %req.method(), uri = %uri, request_id = %id)
        }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The application on the metrics port: `/metrics` alone, with the early limits.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), probe_limits))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Every request passes here once: probes always answer; other requests are refused while
/// draining and counted while in flight; then the metrics and the access log line are recorded.
async fn observe_request(
    State(state): State<AppState>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let started = Instant::now();
    // Checks every route gets, probes included: a probe must never be a way around a limit.
    if let Some(refused) = refuse_early(&state, &req) {
        return refused;
    }
    let path = req.uri().path();
    let probe = matches!(
        path,
        "/health" | "/ready" | "/metrics" | "/stats" | "/v2/health/live" | "/v2/health/ready"
    );
    if probe {
        return next.run(req).await;
    }
    // Route templates, not raw paths: a label value can never come from the client.
    // A clone of the matched path is an Arc, not a new string.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let endpoint = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let mut response = if state.lifecycle.is_draining() {
        let mut r = ApiError::unavailable("the server is shutting down", 1).into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    } else if let Ok(permit) = state.concurrency.clone().try_acquire_owned() {
        let in_flight = state.lifecycle.enter_owned();
        // The whole request, body read included, is bounded by the request timeout (for a
        // stream: until its headers).
        match tokio::time::timeout(state.request_timeout, next.run(req)).await {
            // The body holds the permit and the in-flight count: an open stream counts
            // against max_concurrent_requests, and a drain waits for it.
            Ok(r) => r.map(|b| crate::conn::GuardedBody::wrap(b, (permit, in_flight))),
            Err(_) => {
                let mut r = ApiError::new(
                    ErrorKind::Timeout,
                    format!(
                        "the request was not answered within {} ms",
                        state.request_timeout.as_millis()
                    ),
                )
                .with_details(crate::error::ErrorDetails {
                    field: None,
                    issue: Some(format!(
                        "server.request_timeout_ms is {}",
                        state.request_timeout.as_millis()
                    )),
                })
                .into_response();
                // The body may still be on its way: this connection cannot be reused.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
        }
    } else {
        let refused = ApiError::unavailable(
            "too many requests in flight (server.max_concurrent_requests); retry later",
            1,
        )
        .into_response();
        refuse_unread(&state, req, refused).await
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let label = response
        .extensions_mut()
        .remove::<ModelLabel>()
        .unwrap_or_default();
    if !label.version.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&label.version) {
            response.headers_mut().insert("x-model-version", v);
        }
    }
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    let principal = response.extensions().get::<Principal>();
    record_request(
        &state,
        &label,
        principal,
        &Outcome {
            endpoint,
            method: method.as_str(),
            status,
            code,
            elapsed,
        },
    );
    response
}

/// How one request ended, for `record_request`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome<'a> {
    /// The route template (never a raw path).
    pub endpoint: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub code: Option<&'static str>,
    pub elapsed: Duration,
}

/// The books of one request, whatever protocol carried it: HTTP metrics, usage (unless the
/// answer streams and records its own when it ends) and the access log line.
pub(crate) fn record_request(
    state: &AppState,
    label: &ModelLabel,
    principal: Option<&Principal>,
    outcome: &Outcome<'_>,
) {
    let Outcome {
        endpoint,
        method,
        status,
        code,
        elapsed,
    } = *outcome;
    if state.settings.monitoring.enabled {
        state
            .metrics
            .observe_http(label, endpoint, status, code, elapsed);
    }
    if !label.model.is_empty() {
        // A running canary of this version judges it by these.
        state.core.traffic.observe(
            &label.model,
            &label.version,
            elapsed.as_secs_f64() * 1e3,
            status >= 500,
        );
    }
    let account = principal.map_or(ANONYMOUS, Principal::account);
    if !label.model.is_empty() && !label.deferred {
        state.usage.record(
            &UsageEvent {
                model: &label.model,
                version: &label.version,
                principal: account,
                tokens_input: label.tokens_input,
                tokens_output: label.tokens_output,
                cost: label.cost,
                latency_ms: elapsed.as_secs_f64() * 1e3,
                error: status >= 400,
            },
            now_unix(),
        );
    }
    tracing::info!(
        target: "anya::access",
        method = %method,
        route = %endpoint,
        model = %label.model,
        version = %label.version,
        status,
        latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
        batch_size = label.batch_size.unwrap_or(0),
        principal = %account,
        "request"
    );
}

/// The body limit of the routes that take a job's inputs or a batch file.
fn upload_limit(settings: &crate::config::Settings) -> usize {
    settings
        .server
        .max_body_bytes
        .max(settings.jobs.max_file_bytes)
}

/// The body limit of `POST /models/{id}/heads` (training examples, up to 20,000 of 8 KB).
fn train_limit(settings: &crate::config::Settings) -> usize {
    settings
        .server
        .max_body_bytes
        .max(settings.server.max_train_body_bytes)
}

/// Whether `path` is `/models/{id}/heads`, the route that takes training examples.
fn is_train_path(path: &str) -> bool {
    let mut parts = path.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some("models"), Some(id), Some("heads"), None) if !id.is_empty()
    )
}

/// The body limit of the route at `path`, and the setting that makes it.
fn body_limit_of(settings: &crate::config::Settings, path: &str) -> (usize, &'static str) {
    match path {
        "/jobs" | "/v1/files" => (upload_limit(settings), "jobs.max_file_bytes"),
        p if is_train_path(p) => (train_limit(settings), "server.max_train_body_bytes"),
        _ => (settings.server.max_body_bytes, "server.max_body_bytes"),
    }
}

/// The limits every request meets before routing: header size (431), a declared body over
/// the route's limit (`server.max_body_bytes`; more for uploads and training examples: 413 at
/// once, without waiting for the bytes), and a body encoding other than identity (415).
fn refuse_early(state: &AppState, req: &Request<Body>) -> Option<Response> {
    let limit = state.settings.server.max_header_bytes;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limit {
        return Some(
            ApiError::new(
                ErrorKind::HeadersTooLarge,
                format!(
                    "request headers are {header_bytes} bytes; the limit is {limit} (server.max_header_bytes)"
                ),
            )
            .into_response(),
        );
    }
    let (max_body, key) = body_limit_of(&state.settings, req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > max_body as u64) {
        let mut r = ApiError::too_large(
            "body",
            format!("Content-Length is {len} bytes; the limit is {max_body} ({key})"),
        )
        .into_response();
        // The body is not read: the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(r);
    }
    let encoding = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|e| e.trim().to_ascii_lowercase())
        .find(|e| !e.is_empty() && e != "identity");
    if let Some(encoding) = encoding {
        return Some(
            ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "Content-Encoding `{encoding}` is not supported; send the body uncompressed"
                ),
            )
            .with_details(crate::error::ErrorDetails {
                field: Some("Content-Encoding".into()),
                issue: Some("must be identity (or absent)".into()),
            })
            .into_response(),
        );
    }
    None
}

/// The early limits, for the routes served on the metrics port.
async fn probe_limits(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    match refuse_early(&state, &req) {
        Some(r) => r,
        None => next.run(req).await,
    }
}

fn need(state: &AppState, method: &Method, route: &str) -> Need {
    match route {
        "/health" | "/ready" | "/v2/health/live" | "/v2/health/ready" => Need::Open,
        // The console's files are public; every figure it shows comes from a guarded route.
        "/" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/app.css" | "/ui/icon.svg" => Need::Open,
        "/metrics" | "/stats" if state.settings.security.metrics_public => Need::Open,
        "/metrics" | "/stats" | "/models/{id}/metrics" => Need::Scope(SCOPE_METRICS),
        "/models/{id}/predict"
        | "/models/{id}/versions/{version}/predict"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/embeddings"
        | "/v1/ws"
        | "/v2/models/{name}/infer"
        | "/v2/models/{name}/versions/{version}/infer"
        | "/jobs"
        | "/jobs/{id}"
        | "/jobs/{id}/results"
        | "/jobs/{id}/cancel"
        | "/v1/files"
        | "/v1/files/{id}"
        | "/v1/files/{id}/content"
        | "/v1/batches"
        | "/v1/batches/{id}"
        | "/v1/batches/{id}/cancel" => Need::Scope(SCOPE_PREDICT),
        "/cache" if method == Method::DELETE => Need::Scope(SCOPE_ADMIN),
        "/models/{id}/heads" | "/models/{id}/heads/{training}" => Need::Scope(SCOPE_TRAIN),
        "/models/{id}/drift" => Need::Scope(SCOPE_METRICS),
        "/models/{id}/drift/reference" => Need::Scope(SCOPE_ADMIN),
        "/models/{id}/versions/{version}"
        | "/models/{id}/versions/{version}/load"
        | "/models/{id}/traffic/promote"
        | "/models/{id}/traffic/rollback"
        | "/repository/rescan" => Need::Scope(SCOPE_ADMIN),
        "/models/{id}/traffic" if method == Method::PUT => Need::Scope(SCOPE_ADMIN),
        _ => Need::Authenticated,
    }
}

/// The model a route is about (its id from the path), for the token's model list.
fn route_model<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let segment = if route == "/models/{id}" || route.starts_with("/models/{id}/") {
        2
    } else if route.starts_with("/v2/models/{name}") {
        3
    } else {
        return None;
    };
    path.split('/').nth(segment)
}

/// Authentication, authorisation and rate limits (`admission::admit`), for every route but the
/// probes. The principal goes into the request's extensions (handlers read it) and the
/// response's (the access log and usage accounting read it).
async fn guard(State(state): State<AppState>, mut req: Request<Body>, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let need = need(&state, req.method(), &route);
    if matches!(need, Need::Open) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = client_ip(peer, forwarded, &state.trusted_proxies);
    let token = bearer(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let model = route_model(&route, req.uri().path());
    let admitted = admit(
        state.auth.as_deref(),
        state.limits.as_deref(),
        need,
        token,
        client,
        model,
    )
    .await;
    let (mut response, principal, decision) = match admitted {
        Ok(Admitted {
            principal,
            decision,
        }) => {
            req.extensions_mut().insert(principal.clone());
            (next.run(req).await, Some(principal), decision)
        }
        Err(refused) => {
            let Refused {
                error,
                principal,
                decision,
            } = *refused;
            let response = refuse_unread(&state, req, error.into_response()).await;
            (response, principal, decision)
        }
    };
    if let Some(d) = decision {
        let h = response.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_s));
    }
    match principal {
        Some(p) => with_principal(response, p),
        None => response,
    }
}

/// The most of a refused request's body read (and dropped) to keep its connection open.
const DISCARD_MAX_BYTES: usize = 64 * 1024;

/// A refusal answered before the request's body was read (401, 403, 429, 503): a small body is
/// read and dropped so the keep-alive connection serves the client's next request; a large or
/// slow one is not read, and the answer says `Connection: close` instead — never a silently
/// closed connection that leaves the client unsure whether its request ran.
async fn refuse_unread(state: &AppState, req: Request<Body>, mut response: Response) -> Response {
    let within = Duration::from_millis(state.settings.server.body_timeout_ms.min(2_000));
    if !discard_body(req, within).await {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Read and drop a body of at most `DISCARD_MAX_BYTES` within `within`; false when it is
/// larger, slower or broken.
async fn discard_body(req: Request<Body>, within: Duration) -> bool {
    use http_body::Body as _;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body();
    if body.is_end_stream() || declared == Some(0) {
        return true;
    }
    if declared.is_some_and(|n| n > DISCARD_MAX_BYTES as u64) {
        return false;
    }
    matches!(
        tokio::time::timeout(within, axum::body::to_bytes(body, DISCARD_MAX_BYTES)).await,
        Ok(Ok(_))
    )
}

fn with_principal(mut r: Response, p: Principal) -> Response {
    r.extensions_mut().insert(p);
    r
}

/// CORS for the exact origins in `security.allowed_origins` (none: no CORS headers at all).
/// Credentials are never allowed, so no origin list can widen into a wildcard.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("x-cache"),
            header::HeaderName::from_static("x-ratelimit-limit"),
            header::HeaderName::from_static("x-ratelimit-remaining"),
            header::HeaderName::from_static("x-ratelimit-reset"),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

async fn not_found(uri: Uri) -> Response {
    let mut r = ApiError::not_found(format!("no route for {}", uri.path())).into_response();
    // An unknown route is no missing model (`/v1` renders it with `code: null`).
    r.extensions_mut().insert(openai::NotAboutModel::default());
    r
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_examples_have_their_own_body_limit() {
        let settings = crate::config::Settings::default();
        let small = settings.server.max_body_bytes;
        // The documented maxima, 20,000 examples of 8 KB, fit in their JSON.
        let documented = crate::serving::heads::MAX_EXAMPLES
            * (crate::serving::heads::MAX_TEXT_BYTES + r#"{"text":"","label":""},"#.len() + 64);
        let (limit, key) = body_limit_of(&settings, "/models/topics/heads");
        assert!(
            limit >= documented && limit > small,
            "{limit} < {documented}"
        );
        assert_eq!(key, "server.max_train_body_bytes");
        for other in [
            "/models/topics/predict",
            "/models/topics/heads/t1",
            "/models/heads",
            "/models//heads",
            "/v1/embeddings",
            "/models/topics/heads/",
        ] {
            assert_eq!(
                body_limit_of(&settings, other),
                (small, "server.max_body_bytes"),
                "{other}"
            );
        }
        // Never below the general limit.
        let mut st = settings.clone();
        st.server.max_train_body_bytes = 1024;
        assert_eq!(body_limit_of(&st, "/models/x/heads").0, small);
    }
}
