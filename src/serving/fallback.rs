//! Fallbacks: a request goes to the model it names and, when that fails for a reason worth
//! another try (unreachable, timed out, 5xx, 429, its circuit open, its queue full, not
//! loaded), to the models its manifest lists under `fallbacks`, in order. Client errors (a bad
//! input, a 400 from a provider) are answered as they are. `use_fallbacks: false` (a request
//! parameter) turns this off. Each target has a circuit breaker (`breaker`); retries on one
//! target happen inside a remote model's client (`engine::remote`).
//!
//! A stream may fall back until its first token has been sent, never after: the first event
//! of each candidate is awaited before the answer starts.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::breaker::{Admit, CircuitState};
use super::{Answer, Caller, Core, Prepared, ServeRequest};
use crate::engine::EngineError;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::ModelLabel;

/// What happened on the way to an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    /// `id@version` of the target that answered.
    pub served_by: String,
    /// Calls made to targets, retries included.
    pub attempts: u32,
    /// The model the request named, when another one answered.
    pub fallback_from: Option<String>,
    /// Targets given up on, in order, each as `id@version: reason`.
    pub fallbacks: Vec<String>,
}

/// Where the loop stands.
struct Trail {
    use_fallbacks: bool,
    primary: String,
    /// The fallbacks to try (known once the primary's manifest is).
    chain: Vec<String>,
    route: Route,
    /// Why the last candidate was given up on (counted when the next one is tried).
    pending: Option<&'static str>,
    /// The error to answer when every candidate failed: the primary's.
    first_error: Option<(Option<ModelLabel>, ApiError)>,
}

impl Trail {
    fn give_up(
        &mut self,
        target: String,
        reason: &'static str,
        err: (Option<ModelLabel>, ApiError),
    ) {
        self.route.fallbacks.push(format!("{target}: {reason}"));
        self.pending = Some(reason);
        if self.first_error.is_none() {
            self.first_error = Some(err);
        }
    }

    fn finish(self) -> (Option<ModelLabel>, ApiError) {
        self.first_error.unwrap_or_else(|| {
            (
                None,
                ApiError::unavailable("no model could answer this request", 1),
            )
        })
    }
}

/// `use_fallbacks` from the parameters (default true).
fn take_use_fallbacks(req: &mut ServeRequest) -> Result<bool, ApiError> {
    match req.params.remove("use_fallbacks") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(b),
        Some(_) => Err(ApiError::invalid(
            "parameters.use_fallbacks",
            "must be a boolean",
        )),
    }
}

/// The outcome of trying one candidate.
enum Tried<T> {
    Done(T),
    /// Give up on it for `reason`, try the next.
    Next(String, &'static str, Option<ModelLabel>, ApiError),
    /// Answer this error (not worth another try).
    Fail(Option<ModelLabel>, ApiError),
}

impl Core {
    /// The fallbacks a model's default version lists (when the model itself cannot be
    /// resolved: loading, failed, draining).
    fn fallbacks_of(&self, model: &str) -> Vec<String> {
        self.registry
            .get(model)
            .and_then(|r| {
                r.versions
                    .get(&r.default_version)
                    .map(|v| v.manifest.fallbacks.clone())
            })
            .unwrap_or_default()
    }

    fn set_circuit(&self, target: &str, state: CircuitState) {
        if self.monitoring {
            self.metrics.circuit_state(target, state.gauge());
        }
    }

    /// Try the candidates in order with `attempt` (which runs one prepared target) until one
    /// answers.
    async fn route<T, F, Fut>(
        self: &Arc<Self>,
        caller: Caller<'_>,
        mut req: ServeRequest,
        attempt: F,
    ) -> (Option<ModelLabel>, Result<(T, Route), ApiError>)
    where
        F: Fn(Arc<Self>, Prepared) -> Fut,
        Fut: std::future::Future<Output = (ModelLabel, Result<T, (Prepared, EngineError)>)>,
    {
        let use_fallbacks = match take_use_fallbacks(&mut req) {
            Ok(b) => b,
            Err(e) => return (None, Err(e)),
        };
        let mut trail = Trail {
            use_fallbacks,
            primary: req.model.clone(),
            chain: Vec::new(),
            route: Route::default(),
            pending: None,
            first_error: None,
        };
        let mut index = 0usize;
        loop {
            let candidate = if index == 0 {
                req.clone()
            } else {
                match trail.chain.get(index - 1) {
                    Some(model) => ServeRequest {
                        model: model.clone(),
                        version: None,
                        ..req.clone()
                    },
                    None => break,
                }
            };
            let first = index == 0;
            index += 1;
            if !first {
                if let Some(reason) = trail.pending.take() {
                    if self.monitoring {
                        self.metrics
                            .fallback(&trail.primary, &candidate.model, reason);
                    }
                }
            }
            let tried = self
                .try_one(caller, candidate, first, &mut trail, &attempt)
                .await;
            match tried {
                Tried::Done((label, value)) => {
                    self.usage
                        .record_route(&trail.primary, !first, crate::usage::now_unix());
                    if !first {
                        trail.route.fallback_from = Some(trail.primary.clone());
                    }
                    return (Some(label), Ok((value, trail.route)));
                }
                Tried::Fail(label, e) => {
                    if first || trail.first_error.is_none() {
                        return (label, Err(e));
                    }
                    // A fallback's own client error (say, an input too long for it): the
                    // primary's failure is what the client hears about, unless another
                    // fallback answers.
                    trail
                        .route
                        .fallbacks
                        .push(format!("{}: {}", e.kind.code(), e.message));
                }
                Tried::Next(target, reason, label, e) => {
                    if !trail.use_fallbacks {
                        return (label, Err(e));
                    }
                    trail.give_up(target, reason, (label, e));
                }
            }
        }
        self.usage
            .record_route(&trail.primary, false, crate::usage::now_unix());
        let (label, e) = trail.finish();
        (label, Err(e))
    }

    async fn try_one<T, F, Fut>(
        self: &Arc<Self>,
        caller: Caller<'_>,
        candidate: ServeRequest,
        first: bool,
        trail: &mut Trail,
        attempt: &F,
    ) -> Tried<(ModelLabel, T)>
    where
        F: Fn(Arc<Self>, Prepared) -> Fut,
        Fut: std::future::Future<Output = (ModelLabel, Result<T, (Prepared, EngineError)>)>,
    {
        let model = candidate.model.clone();
        let p = match self.prepare(caller, candidate, first).await {
            Ok(p) => p,
            Err((label, e)) => {
                if first {
                    trail.chain = self.fallbacks_of(&model);
                }
                // A model that is loading, failed or draining: worth another try.
                return if e.kind == ErrorKind::Unavailable {
                    Tried::Next(model, "unavailable", label, e)
                } else {
                    Tried::Fail(label, e)
                };
            }
        };
        if first {
            trail.chain = p.resolved.manifest.fallbacks.clone();
        }
        let target = format!("{}@{}", p.resolved.manifest.id, p.resolved.manifest.version);
        let settings = p.resolved.manifest.breaker.unwrap_or(self.breaker_defaults);
        let label = Self::label(&p.resolved);
        let needs_target = p.valid_work.is_some();
        let mut probe = false;
        if needs_target {
            let (admit, state) = self.breakers.admit(&target, settings, Instant::now());
            self.set_circuit(&target, state);
            match admit {
                Admit::No => {
                    let mut e = ApiError::unavailable(
                        format!("{target} is failing: its circuit is open; retry later"),
                        settings.cooldown_ms.div_ceil(1000).max(1),
                    );
                    e.details.issue = Some("circuit open".into());
                    return Tried::Next(target, "circuit_open", Some(label), e);
                }
                Admit::Probe => probe = true,
                Admit::Yes => {}
            }
        }
        let is_remote = p.resolved.manifest.provider.is_some();
        let (label, outcome) = attempt(self.clone(), p).await;
        match outcome {
            Ok(value) => {
                if needs_target {
                    let state = self.breakers.record(&target, Instant::now(), false, probe);
                    self.set_circuit(&target, state);
                }
                trail.route.served_by = target;
                trail.route.attempts += 1;
                let _ = is_remote;
                Tried::Done((label, value))
            }
            Err((_p, e)) => {
                trail.route.attempts += e.attempts();
                if e.attempts() > 1 && self.monitoring {
                    self.metrics
                        .retries(&label.model, u64::from(e.attempts() - 1));
                }
                let state =
                    self.breakers
                        .record(&target, Instant::now(), e.is_target_failure(), probe);
                self.set_circuit(&target, state);
                let reason = e.fallback_reason();
                let api: ApiError = e.into();
                match reason {
                    Some(reason) => Tried::Next(target, reason, Some(label), api),
                    None => Tried::Fail(Some(label), api),
                }
            }
        }
    }

    /// `infer`, through the fallback loop.
    pub(super) async fn infer_routed(
        self: &Arc<Self>,
        caller: Caller<'_>,
        req: ServeRequest,
    ) -> (Option<ModelLabel>, Result<Answer, ApiError>) {
        let (label, outcome) = self
            .route(caller, req, |core, p| async move {
                let (mut p, mut label, outcome) = core.run_prepared(p).await;
                match outcome {
                    Ok(stats) => {
                        if stats.attempts > 1 && core.monitoring {
                            core.metrics
                                .retries(&label.model, u64::from(stats.attempts - 1));
                        }
                        // The target answered; shaping its outputs may still refuse them.
                        let answer = core.answer(&p, stats, &mut label);
                        if let Ok(answer) = &answer {
                            if core.monitoring {
                                core.observe_drift(&p, answer);
                            }
                            if let Some(job) = p.shadow.take() {
                                core.start_shadow(job, answer);
                            }
                        }
                        (label, Ok(answer))
                    }
                    Err(e) => (label, Err((p, e))),
                }
            })
            .await;
        match outcome {
            Ok((Ok(mut answer), mut route)) => {
                // Retries inside the answering call count as attempts too.
                route.attempts += answer.stats.attempts.saturating_sub(1);
                answer.route = route;
                (label, Ok(answer))
            }
            Ok((Err(e), _)) | Err(e) => (label, Err(e)),
        }
    }

    /// `infer_stream`, through the fallback loop: a candidate counts as answering once its
    /// first event is not a failure worth another try.
    pub(super) async fn stream_routed(
        self: &Arc<Self>,
        caller: Caller<'_>,
        req: ServeRequest,
    ) -> (Option<ModelLabel>, Result<super::AnswerStream, ApiError>) {
        let (label, outcome) = self
            .route(caller, req, |core, p| async move {
                let label = Self::label(&p.resolved);
                match core.open_stream(p).await {
                    Ok(s) => (label, Ok(s)),
                    Err((p, e)) => (label, Err((p, e))),
                }
            })
            .await;
        match outcome {
            Ok((mut stream, route)) => {
                stream.set_route(route);
                let mut header = label.clone();
                if let Some(h) = header.as_mut() {
                    h.deferred = true;
                }
                (header, Ok(stream))
            }
            Err(e) => (label, Err(e)),
        }
    }
}
