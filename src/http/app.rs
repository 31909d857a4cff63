//! The HTTP application: `AppState` (the services every handler shares, and the route rules),
//! `app(state) -> Router` (the route table of `routes`, each route naming its access rule),
//! and the layers every request passes: request id, trace span, CORS, early limits, then the
//! envelope (`envelope`): the route's rule, the serving gate's ticket (drain, place,
//! credentials, scope, request rate), the request timeout, and the books when the response's
//! head goes out. Binding and serving are `server`'s.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, State};
use axum::http::{header, HeaderValue, Method, Request, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::routes::{path_model, Lookup, Rule, Rules};
use super::{health, kserve, openai};
use crate::admission::{admit, bearer, Need};
pub use crate::auth::ANONYMOUS;
use crate::error::ErrorCode;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::ModelLabel;
use crate::net::client_ip;
use crate::ratelimit::Decision;
use crate::services::Services;
use crate::serving::{Entry, Who};

/// What every handler shares, behind one `Arc`: axum clones the state for every middleware
/// layer and handler of every request, so a clone is one reference count, not one per field
/// (in a profile of the echo route, dev build, the per-field clones and drops were about 14 % of
/// the CPU: atomic counts shared by the cores).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

impl AppState {
    pub fn new(services: Arc<Services>) -> Self {
        Self(services)
    }

    /// The services behind the state.
    pub fn services(&self) -> &Arc<Services> {
        &self.0
    }
}

/// What the envelope layer holds: the state and the route table's rules.
#[derive(Clone)]
struct Envelope {
    state: AppState,
    rules: Arc<Rules>,
}

pub fn app(state: AppState) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    let (router, rules) = super::routes::table(&state.settings).into_parts();
    let envelope_state = Envelope {
        state: state.clone(),
        rules: Arc::new(rules),
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(envelope_state, envelope))
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

/// The rule a request meets: its route's; a route served without one is refused (fail closed);
/// an unknown path or method needs a valid token before its 404 or 405.
fn rule_of(
    rules: &Rules,
    method: &Method,
    route: Option<&str>,
) -> Result<(&'static str, Rule), ApiError> {
    match rules.lookup(method, route) {
        Lookup::Found(template, rule) => Ok((template, rule)),
        // A known path's template is in the table; an unknown one is booked as `unmatched`.
        Lookup::OtherMethod => Ok((rules.template(route), Rule::Token)),
        Lookup::Unmatched => Ok(("unmatched", Rule::Token)),
        Lookup::NoRule => Err(ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "the route {} has no access rule",
                route.unwrap_or("(unmatched)")
            ),
        )),
    }
}

/// The client's address: the peer, or `X-Forwarded-For` from a trusted proxy.
fn client_of(state: &AppState, req: &Request<Body>) -> std::net::IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    client_ip(peer, forwarded, &state.trusted_proxies)
}

/// Every request passes here once: the early limits, then its route's rule. Probes answer at
/// once; `/metrics` and `/stats` pass admission only; every other request takes a ticket from
/// the serving gate, runs within the request timeout, and closes its books when the response's
/// head goes out (the body keeps the ticket's place until its last byte).
async fn envelope(
    State(Envelope { state, rules }): State<Envelope>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    // Checks every route gets, probes included: a probe must never be a way around a limit.
    if let Some(refused) = refuse_early(&state, &req) {
        return refused;
    }
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map(MatchedPath::as_str);
    let (endpoint, rule) = match rule_of(&rules, req.method(), route) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let need = rule.need(state.settings.security.metrics_public);
    if !rule.booked() {
        return match need {
            Need::Open => next.run(req).await,
            _ => watch(&state, need, req, next).await,
        };
    }
    let model = route
        .filter(|_| rule.path_model())
        .and_then(|r| path_model(r, req.uri().path()));
    let who = match need {
        Need::Open => Who::Anyone,
        need => Who::Token {
            need,
            token: bearer(
                req.headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            ),
            client: client_of(&state, &req),
            model,
        },
    };
    let entry = Entry {
        endpoint,
        method: method_name(req.method()),
        who,
        place: true,
    };
    let mut ticket = match state.gate.admit(entry).await {
        Ok(t) => t,
        Err(refusal) => {
            let draining = state.lifecycle.is_draining();
            let mut r = refusal.error.into_response();
            rate_headers(&mut r, refusal.decision.as_ref());
            if draining {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            return refuse_unread(&state, req, r).await;
        }
    };
    if let Some(p) = ticket.principal() {
        req.extensions_mut().insert(p.clone());
    }
    let decision = ticket.decision().cloned();
    // The whole request, body read included, is bounded by the request timeout (for a
    // stream: until its headers).
    let mut response = match ticket.within(next.run(req)).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.into_response();
            // The body may still be on its way: this connection cannot be reused.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    };
    ticket.answered_by(response.extensions_mut().remove::<ModelLabel>());
    let version = &ticket.label().version;
    if !version.is_empty() {
        if let Ok(v) = HeaderValue::from_str(version) {
            response.headers_mut().insert("x-model-version", v);
        }
    }
    rate_headers(&mut response, decision.as_ref());
    let status = response.status().as_u16();
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    // The body holds the place: an open stream counts against max_concurrent_requests, and a
    // drain waits for it.
    match ticket.close(status, code) {
        Some(hold) => response.map(|b| crate::conn::GuardedBody::wrap(b, hold)),
        None => response,
    }
}

/// The method's name for the books, without an allocation (an extension method is `OTHER`).
fn method_name(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::TRACE,
        Method::CONNECT,
    ];
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT",
    ];
    KNOWN
        .iter()
        .position(|m| m == method)
        .map_or("OTHER", |i| NAMES[i])
}

/// `/metrics` and `/stats`: admission (token, scope, request rate), no place, no books.
async fn watch(state: &AppState, need: Need, req: Request<Body>, next: Next) -> Response {
    let token = bearer(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let client = client_of(state, &req);
    let admitted = admit(
        state.auth.as_deref(),
        state.limits.as_deref(),
        need,
        token,
        client,
        None,
    )
    .await;
    match admitted {
        Ok(a) => {
            let mut r = next.run(req).await;
            rate_headers(&mut r, a.decision.as_ref());
            r
        }
        Err(refused) => {
            let mut r = refused.error.into_response();
            rate_headers(&mut r, refused.decision.as_ref());
            refuse_unread(state, req, r).await
        }
    }
}

/// `X-RateLimit-*` on every answer that passed (or failed) a limit check; `Reset` is the Unix
/// time (seconds) at which the full limit is available again.
fn rate_headers(response: &mut Response, decision: Option<&Decision>) {
    if let Some(d) = decision {
        let h = response.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
        let reset = crate::usage::now_unix().saturating_add(d.reset_s);
        h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    }
}

/// The body limit of the routes that take a job's inputs or a batch file.
pub(super) fn upload_limit(settings: &crate::config::Settings) -> usize {
    settings
        .server
        .max_body_bytes
        .max(settings.jobs.max_file_bytes)
}

/// The body limit of `POST /models/{id}/heads` (training examples, up to 20,000 of 8 KB).
pub(super) fn train_limit(settings: &crate::config::Settings) -> usize {
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
    fn a_route_served_without_a_rule_is_refused_and_unknown_ones_need_a_token() {
        let rules = super::super::routes::table(&crate::config::Settings::default())
            .into_parts()
            .1;
        let refused =
            rule_of(&rules, &Method::GET, Some("/added/without/a/rule")).expect_err("fail closed");
        assert_eq!(refused.status(), 403);
        assert!(
            refused.message.contains("no access rule"),
            "{}",
            refused.message
        );
        assert_eq!(
            rule_of(&rules, &Method::GET, None).ok(),
            Some(("unmatched", Rule::Token))
        );
        assert_eq!(
            rule_of(&rules, &Method::POST, Some("/health")).ok(),
            Some(("/health", Rule::Token))
        );
        assert_eq!(
            rule_of(&rules, &Method::GET, Some("/health")).ok(),
            Some(("/health", Rule::Probe))
        );
        assert_eq!(method_name(&Method::DELETE), "DELETE");
        assert_eq!(
            method_name(&Method::from_bytes(b"PURGE").expect("a method")),
            "OTHER"
        );
    }

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
