//! The one route table: every route names its access rule where it is declared
//! ([`Routes::on`] takes the method, the path, the rule and the handler together), and the
//! envelope middleware looks the rule up by the matched route. A route served without a rule is
//! refused (fail closed; `app::tests::a_route_served_without_a_rule_is_refused_and_unknown_ones_need_a_token`).

use std::collections::HashMap;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;

use super::app::AppState;
use super::{
    batches, cache, console, drift, heads, health, jobs, kserve, models, openai, openapi, predict,
    traffic, usage, ws,
};
use crate::admission::Need;
use crate::auth::{SCOPE_ADMIN, SCOPE_METRICS, SCOPE_PREDICT, SCOPE_TRAIN};
use crate::config::Settings;

/// Who may call a route, and whether it is booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Liveness and readiness: no token, no rate limit, no place, no books.
    Probe,
    /// `/metrics`, `/stats`: the `metrics` scope (none with `security.metrics_public`); no
    /// place, no books (a scrape must never be refused for load).
    Watch,
    /// The console's files: no token (every figure it shows comes from a guarded route).
    Public,
    /// Any valid token (listings answer what the token may see).
    Token,
    /// Any valid token whose model list has the model in the path (`{id}` or `{name}`).
    ModelRead,
    /// The `metrics` scope and the model in the path.
    ModelMetrics,
    /// The `admin` scope and the model in the path.
    ModelAdmin,
    /// The `train` scope and the model in the path.
    ModelTrain,
    /// The `predict` scope; the model is checked by the core, from the typed request, whatever
    /// protocol carried it.
    Predict,
    /// The `predict` scope; a job or file is its owner's (the handler checks).
    Jobs,
    /// The `admin` scope.
    Admin,
}

impl Rule {
    /// What admission asks of the caller.
    pub fn need(self, metrics_public: bool) -> Need {
        match self {
            Rule::Probe | Rule::Public => Need::Open,
            Rule::Watch if metrics_public => Need::Open,
            Rule::Watch | Rule::ModelMetrics => Need::Scope(SCOPE_METRICS),
            Rule::Token | Rule::ModelRead => Need::Authenticated,
            Rule::ModelAdmin | Rule::Admin => Need::Scope(SCOPE_ADMIN),
            Rule::ModelTrain => Need::Scope(SCOPE_TRAIN),
            Rule::Predict | Rule::Jobs => Need::Scope(SCOPE_PREDICT),
        }
    }

    /// The route is about the model its path names (checked against the token's list).
    pub fn path_model(self) -> bool {
        matches!(
            self,
            Rule::ModelRead | Rule::ModelMetrics | Rule::ModelAdmin | Rule::ModelTrain
        )
    }

    /// The request takes a place and is booked (metrics, usage, access log).
    pub fn booked(self) -> bool {
        !matches!(self, Rule::Probe | Rule::Watch)
    }
}

/// Routes with their rules.
pub struct Routes {
    router: Router<AppState>,
    rules: HashMap<&'static str, Vec<(Method, Rule)>>,
}

/// The rules of the routes, by route template.
#[derive(Debug, Clone, Default)]
pub struct Rules(HashMap<&'static str, Vec<(Method, Rule)>>);

/// What the rule table says of a request's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The route's rule, and its template as the table holds it (static: the books' label).
    Found(&'static str, Rule),
    /// The path is served, not with this method (a 405 follows admission).
    OtherMethod,
    /// No route matched (a 404 follows admission).
    Unmatched,
    /// A route is served without a rule: refused.
    NoRule,
}

impl Rules {
    /// The rule of `method` on the matched route template (`None`: nothing matched).
    pub fn lookup(&self, method: &Method, route: Option<&str>) -> Lookup {
        let Some(route) = route else {
            return Lookup::Unmatched;
        };
        let Some((&template, methods)) = self.0.get_key_value(route) else {
            return Lookup::NoRule;
        };
        // HEAD is served by GET's handler, under GET's rule.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        methods
            .iter()
            .find(|(m, _)| m == method)
            .map_or(Lookup::OtherMethod, |&(_, rule)| {
                Lookup::Found(template, rule)
            })
    }

    /// The table's own (static) copy of a route template the table serves; `unmatched` else.
    pub fn template(&self, route: Option<&str>) -> &'static str {
        route
            .and_then(|r| self.0.get_key_value(r))
            .map_or("unmatched", |(&t, _)| t)
    }

    /// Every (path, method, rule), sorted.
    pub fn all(&self) -> Vec<(&'static str, Method, Rule)> {
        let mut out: Vec<_> = self
            .0
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(|(m, r)| (*p, m.clone(), *r)))
            .collect();
        out.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
        out
    }
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            rules: HashMap::new(),
        }
    }

    /// Serve `handler` for `method` on `path` under `rule`.
    pub fn on<H, T>(self, method: Method, path: &'static str, rule: Rule, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(method, path, rule, handler, None)
    }

    /// `on`, with a body limit of its own.
    fn on_upload<H, T>(
        self,
        method: Method,
        path: &'static str,
        rule: Rule,
        handler: H,
        limit: usize,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(method, path, rule, handler, Some(limit))
    }

    fn add<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        rule: Rule,
        handler: H,
        limit: Option<usize>,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        let route = on(filter, handler);
        let route = match limit {
            Some(limit) => route.layer(DefaultBodyLimit::max(limit)),
            None => route,
        };
        self.router = self.router.route(path, route);
        self.rules.entry(path).or_default().push((method, rule));
        self
    }

    /// The router and its rules.
    pub fn into_parts(self) -> (Router<AppState>, Rules) {
        (self.router, Rules(self.rules))
    }
}

/// Every route of the HTTP port.
pub fn table(settings: &Settings) -> Routes {
    use Method as M;
    use Rule::*;
    let upload = super::app::upload_limit(settings);
    let train = super::app::train_limit(settings);
    let mut r = Routes::new();
    if settings.monitoring.enabled {
        r = r.on(M::GET, "/metrics", Watch, health::metrics);
    }
    let r = r
        // Probes and the console.
        .on(M::GET, "/health", Probe, health::health)
        .on(M::GET, "/ready", Probe, health::ready)
        .on(M::GET, "/stats", Watch, console::stats)
        .on(M::GET, "/openapi.json", Token, openapi::openapi_json)
        .on(M::GET, "/", Public, console::index)
        .on(M::GET, "/ui", Public, console::index)
        .on(M::GET, "/ui/", Public, console::index)
        .on(M::GET, "/ui/app.js", Public, console::script)
        .on(M::GET, "/ui/app.css", Public, console::style)
        .on(M::GET, "/ui/icon.svg", Public, console::icon)
        // Models, their versions and traffic.
        .on(M::GET, "/models", Token, models::list_models)
        .on(M::GET, "/models/{id}", ModelRead, models::get_model)
        .on(
            M::GET,
            "/models/{id}/versions",
            ModelRead,
            models::list_versions,
        )
        .on(
            M::DELETE,
            "/models/{id}/versions/{version}",
            ModelAdmin,
            traffic::unload,
        )
        .on(
            M::POST,
            "/models/{id}/versions/{version}/load",
            ModelAdmin,
            traffic::load,
        )
        .on(
            M::GET,
            "/models/{id}/traffic",
            ModelRead,
            traffic::get_traffic,
        )
        .on(
            M::PUT,
            "/models/{id}/traffic",
            ModelAdmin,
            traffic::put_traffic,
        )
        .on(
            M::POST,
            "/models/{id}/traffic/promote",
            ModelAdmin,
            traffic::promote,
        )
        .on(
            M::POST,
            "/models/{id}/traffic/rollback",
            ModelAdmin,
            traffic::rollback,
        )
        .on(M::POST, "/repository/rescan", Admin, traffic::rescan);
    operations(r, upload, train)
}

/// Figures, training, jobs and native inference.
fn operations(r: Routes, upload: usize, train: usize) -> Routes {
    use Method as M;
    use Rule::*;
    let r = r
        // Figures.
        .on(
            M::GET,
            "/models/{id}/metrics",
            ModelMetrics,
            usage::model_metrics,
        )
        .on(M::GET, "/usage", Token, usage::usage)
        .on(M::DELETE, "/cache", Admin, cache::clear)
        .on(M::GET, "/models/{id}/drift", ModelMetrics, drift::report)
        .on(
            M::POST,
            "/models/{id}/drift/reference",
            ModelAdmin,
            drift::set_reference,
        )
        // Training.
        .on_upload(
            M::POST,
            "/models/{id}/heads",
            ModelTrain,
            heads::start,
            train,
        )
        .on(
            M::GET,
            "/models/{id}/heads/{training}",
            ModelTrain,
            heads::status,
        )
        // Jobs.
        .on_upload(M::POST, "/jobs", Jobs, jobs::create, upload)
        .on(M::GET, "/jobs", Jobs, jobs::list)
        .on(M::GET, "/jobs/{id}", Jobs, jobs::get)
        .on(M::GET, "/jobs/{id}/results", Jobs, jobs::results)
        .on(M::POST, "/jobs/{id}/cancel", Jobs, jobs::cancel)
        // Inference, native.
        .on(M::POST, "/models/{id}/predict", Predict, predict::predict)
        .on(M::POST, "/predict", Predict, predict::predict_only)
        .on(
            M::POST,
            "/models/{id}/versions/{version}/predict",
            Predict,
            predict::predict_version,
        );
    protocols(r, upload)
}

/// The OpenAI-compatible and KServe v2 routes.
fn protocols(r: Routes, upload: usize) -> Routes {
    use Method as M;
    use Rule::*;
    r
        // OpenAI.
        .on(M::GET, "/v1/models", Token, openai::list_models)
        .on(
            M::POST,
            "/v1/chat/completions",
            Predict,
            openai::chat_completions,
        )
        .on(M::POST, "/v1/completions", Predict, openai::completions)
        .on(M::POST, "/v1/embeddings", Predict, openai::embeddings)
        .on_upload(M::POST, "/v1/files", Jobs, batches::upload, upload)
        .on(M::GET, "/v1/files/{id}", Jobs, batches::file)
        .on(M::GET, "/v1/files/{id}/content", Jobs, batches::content)
        .on(M::POST, "/v1/batches", Jobs, batches::create)
        .on(M::GET, "/v1/batches", Jobs, batches::list)
        .on(M::GET, "/v1/batches/{id}", Jobs, batches::get)
        .on(M::POST, "/v1/batches/{id}/cancel", Jobs, batches::cancel)
        .on(M::GET, "/v1/ws", Predict, ws::ws)
        // KServe v2.
        .on(M::GET, "/v2", Token, kserve::server_metadata)
        .on(M::GET, "/v2/health/live", Probe, kserve::live)
        .on(M::GET, "/v2/health/ready", Probe, kserve::ready)
        .on(
            M::GET,
            "/v2/models/{name}",
            ModelRead,
            kserve::model_metadata,
        )
        .on(
            M::GET,
            "/v2/models/{name}/versions/{version}",
            ModelRead,
            kserve::model_version_metadata,
        )
        .on(
            M::GET,
            "/v2/models/{name}/ready",
            ModelRead,
            kserve::model_ready,
        )
        .on(
            M::GET,
            "/v2/models/{name}/versions/{version}/ready",
            ModelRead,
            kserve::model_version_ready,
        )
        .on(M::POST, "/v2/models/{name}/infer", Predict, kserve::infer)
        .on(
            M::POST,
            "/v2/models/{name}/versions/{version}/infer",
            Predict,
            kserve::infer_version,
        )
}

/// The model a route is about: the path's segment where the template has `{id}` or `{name}`.
pub fn path_model<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let at = route
        .split('/')
        .position(|s| s == "{id}" || s == "{name}")?;
    path.split('/').nth(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        table(&Settings::default()).into_parts().1
    }

    #[test]
    fn every_route_has_a_rule_and_the_sensitive_ones_are_guarded() {
        let rules = rules();
        let all = rules.all();
        assert!(all.len() > 50, "{all:?}");
        let rule = |m: Method, p: &str| match rules.lookup(&m, Some(p)) {
            Lookup::Found(t, r) => {
                assert_eq!(t, p);
                r
            }
            other => panic!("{m} {p}: {other:?}"),
        };
        assert_eq!(rule(Method::GET, "/health"), Rule::Probe);
        assert_eq!(rule(Method::HEAD, "/health"), Rule::Probe);
        assert_eq!(rule(Method::DELETE, "/cache"), Rule::Admin);
        assert_eq!(rule(Method::PUT, "/models/{id}/traffic"), Rule::ModelAdmin);
        assert_eq!(rule(Method::GET, "/models/{id}/traffic"), Rule::ModelRead);
        assert_eq!(rule(Method::POST, "/v1/chat/completions"), Rule::Predict);
        assert_eq!(rule(Method::POST, "/models/{id}/heads"), Rule::ModelTrain);
        assert_eq!(
            rules.lookup(&Method::POST, Some("/health")),
            Lookup::OtherMethod
        );
        assert_eq!(rules.lookup(&Method::GET, None), Lookup::Unmatched);
        // Only probes and the console's files are open.
        for (path, method, rule) in &all {
            if rule.need(false) == Need::Open {
                assert!(
                    matches!(rule, Rule::Probe | Rule::Public),
                    "{method} {path} is open"
                );
            }
            if path.contains("{id}") || path.contains("{name}") {
                assert!(
                    rule.path_model() || *rule == Rule::Predict || *rule == Rule::Jobs,
                    "{method} {path} names a model but does not check it"
                );
            }
        }
    }

    #[test]
    fn the_model_comes_from_the_paths_own_segment() {
        assert_eq!(path_model("/models/{id}", "/models/m1"), Some("m1"));
        assert_eq!(
            path_model(
                "/models/{id}/versions/{version}/load",
                "/models/m1/versions/2/load"
            ),
            Some("m1")
        );
        assert_eq!(
            path_model("/v2/models/{name}/ready", "/v2/models/emb/ready"),
            Some("emb")
        );
        assert_eq!(path_model("/usage", "/usage"), None);
    }
}
