//! Traffic: one policy per model (weighted split, sticky A/B, shadow, canary), the routing step
//! every request without a pinned version takes, the canary's running analysis, blue-green
//! promote and rollback, and the policy's file (`<models_dir>/<id>/traffic.yaml`).
//!
//! No axum, no Prometheus: `tick` returns what the canaries decided and the caller (the serving
//! core) logs it, records metrics and applies promotions to the registry.

pub mod canary;
pub mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;

pub use canary::{CanaryRun, CanaryStatus, CanaryStep, Verdict};
pub use policy::{pick, unit_hash, CanarySpec, PolicyError, Route, ShadowSpec, TrafficPolicy};

/// The file a model's policy is kept in, beside its version folders.
pub const POLICY_FILE: &str = "traffic.yaml";

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub model: String,
    /// `None`: that model's default version.
    pub version: Option<String>,
    /// A version of the requested model that also gets this request, answer discarded.
    pub shadow: Option<String>,
}

/// What a canary check decided, for the log, the metrics and the registry.
#[derive(Debug, Clone)]
pub struct CanaryEvent {
    pub model: String,
    pub version: String,
    pub verdict: Verdict,
    pub weight: f64,
    pub failed_checks: u32,
    pub error_rate: f64,
    pub p99_ms: f64,
    pub requests: u64,
}

/// A model's traffic as `GET /models/{id}/traffic` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrafficView {
    pub model: String,
    /// The policy as set (a running canary's weight included in `routes`).
    pub policy: TrafficPolicy,
    /// The split in force now, weights out of 100.
    pub effective: Vec<Route>,
    /// The canary's state and its checks, while it runs and after it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRun>,
    /// Whether `POST .../traffic/rollback` has a policy to go back to.
    pub can_roll_back: bool,
    /// Whether the last change was written to `<models_dir>/<id>/traffic.yaml` (false: the
    /// repository is read-only or the model came from a path; the policy holds until restart).
    pub stored: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TrafficError {
    #[error("model `{0}` has no traffic policy to roll back to")]
    NothingToRollBack(String),
    #[error("version {version} is the only version of `{model}` that takes traffic; shift traffic to another version first")]
    OnlyRoute { model: String, version: String },
    #[error("cannot write {path}: {message}")]
    Persist { path: String, message: String },
}

#[derive(Debug, Clone)]
struct ModelTraffic {
    policy: TrafficPolicy,
    previous: Option<TrafficPolicy>,
    canary: Option<CanaryRun>,
}

impl ModelTraffic {
    fn canary_weight(&self) -> Option<f64> {
        self.canary
            .as_ref()
            .filter(|c| c.status == CanaryStatus::Running)
            .map(|c| c.weight)
    }

    fn effective(&self) -> Vec<Route> {
        let routes = self.policy.effective(self.canary_weight());
        let total: f64 = routes.iter().map(|r| r.weight.max(0.0)).sum();
        routes
            .into_iter()
            .map(|r| Route {
                weight: if total > 0.0 {
                    r.weight.max(0.0) / total * 100.0
                } else {
                    0.0
                },
                ..r
            })
            .collect()
    }

    /// The policy with the canary's current weight written into its routes (what is stored).
    fn current(&self) -> TrafficPolicy {
        let mut p = self.policy.clone();
        if self.canary_weight().is_some() {
            p.routes = self.effective();
        }
        p
    }
}

/// Every model's traffic.
#[derive(Debug)]
pub struct Traffic {
    models: RwLock<HashMap<String, ModelTraffic>>,
    epoch: Instant,
    /// The repository folder the policies are written to (`None`: not persisted).
    dir: Option<PathBuf>,
}

fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Traffic {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Traffic {
            models: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
            dir,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ModelTraffic>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ModelTraffic>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds on this process's monotonic clock.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Route a request for `model` that names no version. `sticky(header)` gives the request's
    /// sticky key when the policy asks for one; `draw()` a uniform number in [0, 1) otherwise
    /// (and for the shadow). `None`: the model has no policy (its default version answers).
    pub fn plan(
        &self,
        model: &str,
        sticky: impl FnOnce(&str) -> Option<String>,
        mut draw: impl FnMut() -> f64,
    ) -> Option<Plan> {
        let models = self.read();
        let t = models.get(model)?;
        let routes = t.effective();
        let u = match t.policy.sticky.as_deref().and_then(sticky) {
            Some(key) => unit_hash(&key),
            None => draw(),
        };
        let route = &routes[pick(&routes, u)?];
        let shadow = t
            .policy
            .shadow
            .as_ref()
            .filter(|s| s.percent > 0.0 && draw() * 100.0 < s.percent)
            .map(|s| s.version.clone());
        Some(Plan {
            model: route.model.clone().unwrap_or_else(|| model.to_string()),
            version: route.version.clone(),
            shadow,
        })
    }

    /// Count one finished request to `model` at `version` for a running canary of it.
    pub fn observe(&self, model: &str, version: &str, latency_ms: f64, error: bool) {
        {
            let models = self.read();
            let running = models
                .get(model)
                .and_then(|t| t.canary.as_ref())
                .is_some_and(|c| c.status == CanaryStatus::Running && c.version == version);
            if !running {
                return;
            }
        }
        if let Some(c) = self.write().get_mut(model).and_then(|t| t.canary.as_mut()) {
            if c.status == CanaryStatus::Running && c.version == version {
                c.window.record(latency_ms, error);
            }
        }
    }

    /// Run the canary checks that are due. A rollback takes the canary out of the routes; a
    /// promotion leaves it alone at 100 % (the caller makes it the default), keeping the
    /// policy from before the canary for `rollback`.
    pub fn tick(&self) -> Vec<CanaryEvent> {
        let (now, wall) = (self.now(), wall_now());
        let mut events = Vec::new();
        let mut changed = Vec::new();
        {
            let mut models = self.write();
            for (id, t) in models.iter_mut() {
                let Some(spec) = t.policy.canary.clone() else {
                    continue;
                };
                let Some(run) = t.canary.as_mut() else {
                    continue;
                };
                let Some(verdict) = run.check(&spec, now, wall) else {
                    continue;
                };
                let step = run.history.last().cloned();
                events.push(CanaryEvent {
                    model: id.clone(),
                    version: run.version.clone(),
                    verdict,
                    weight: run.weight,
                    failed_checks: run.failed_checks,
                    error_rate: step.as_ref().map_or(0.0, |s| s.error_rate),
                    p99_ms: step.as_ref().map_or(0.0, |s| s.p99_ms),
                    requests: step.as_ref().map_or(0, |s| s.requests),
                });
                match verdict {
                    Verdict::RolledBack => {
                        let mut p = t.policy.clone();
                        p.routes = p.effective(Some(0.0));
                        p.routes
                            .retain(|r| r.version.as_deref() != Some(&spec.version));
                        p.canary = None;
                        t.policy = p;
                    }
                    Verdict::Promoted => {
                        let mut before = t.policy.clone();
                        before
                            .routes
                            .retain(|r| r.version.as_deref() != Some(&spec.version));
                        before.canary = None;
                        t.previous = Some(before);
                        let mut p = TrafficPolicy::single(&spec.version);
                        p.sticky = t.policy.sticky.clone();
                        p.shadow = t.policy.shadow.clone();
                        t.policy = p;
                    }
                    _ => {}
                }
                changed.push(id.clone());
            }
        }
        for id in changed {
            if let Err(e) = self.persist(&id) {
                tracing::warn!(model = %id, error = %e, "traffic policy not saved");
            }
        }
        events
    }

    /// Set `model`'s policy (already checked). The one it replaces is kept for `rollback`.
    /// A policy that cannot be written still applies (a read-only repository); the view says
    /// whether it was stored.
    pub fn set(&self, model: &str, policy: TrafficPolicy) -> Result<TrafficView, TrafficError> {
        self.install(model, policy, true);
        let stored = match self.persist(model) {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(model, error = %e, "traffic policy applied but not stored");
                false
            }
        };
        let mut view = self.view(model).unwrap_or_else(|| self.empty_view(model));
        view.stored = stored;
        Ok(view)
    }

    /// Install a policy without writing it (startup reads it from the file).
    pub fn install(&self, model: &str, policy: TrafficPolicy, keep_previous: bool) {
        let now = self.now();
        let canary = policy.canary.as_ref().map(|spec| {
            let total: f64 = policy.routes.iter().map(|r| r.weight.max(0.0)).sum();
            let w = policy
                .routes
                .iter()
                .find(|r| r.version.as_deref() == Some(spec.version.as_str()))
                .map_or(0.0, |r| {
                    if total > 0.0 {
                        r.weight / total * 100.0
                    } else {
                        0.0
                    }
                });
            CanaryRun::start(spec, w, now)
        });
        let mut models = self.write();
        let previous = if keep_previous {
            models.get(model).map(ModelTraffic::current)
        } else {
            None
        };
        models.insert(
            model.to_string(),
            ModelTraffic {
                policy,
                previous,
                canary,
            },
        );
    }

    /// Forget `model`'s policy (its default version takes everything again).
    pub fn clear(&self, model: &str) {
        self.write().remove(model);
    }

    /// The policy of `model` as it stands (a running canary's weight in its routes).
    pub fn current(&self, model: &str) -> Option<TrafficPolicy> {
        self.read().get(model).map(ModelTraffic::current)
    }

    /// Blue-green: all traffic to `version`, the current policy kept for `rollback`.
    pub fn promote(&self, model: &str, version: &str) -> Result<TrafficView, TrafficError> {
        let sticky = self.read().get(model).and_then(|t| t.policy.sticky.clone());
        let mut p = TrafficPolicy::single(version);
        p.sticky = sticky;
        self.set(model, p)
    }

    /// Back to the policy before the last change, at once.
    pub fn rollback(&self, model: &str) -> Result<TrafficView, TrafficError> {
        let previous = {
            let models = self.read();
            models.get(model).and_then(|t| t.previous.clone())
        }
        .ok_or_else(|| TrafficError::NothingToRollBack(model.to_string()))?;
        self.set(model, previous)
    }

    /// Stop routing to `version` of `model` (before unloading it). Refused when it is the only
    /// version with weight; a shadow or canary of it is dropped.
    pub fn remove_version(&self, model: &str, version: &str) -> Result<(), TrafficError> {
        {
            let mut models = self.write();
            let Some(t) = models.get_mut(model) else {
                return Ok(());
            };
            let routes = t.effective();
            let others = routes
                .iter()
                .any(|r| r.weight > 0.0 && r.version.as_deref() != Some(version));
            let mine = routes
                .iter()
                .any(|r| r.weight > 0.0 && r.version.as_deref() == Some(version));
            if mine && !others {
                return Err(TrafficError::OnlyRoute {
                    model: model.into(),
                    version: version.into(),
                });
            }
            let mut p = t.current();
            p.routes.retain(|r| r.version.as_deref() != Some(version));
            if p.shadow.as_ref().is_some_and(|s| s.version == version) {
                p.shadow = None;
            }
            if p.canary.as_ref().is_some_and(|c| c.version == version) {
                p.canary = None;
                t.canary = None;
            }
            if p.routes.is_empty() {
                models.remove(model);
            } else {
                t.policy = p;
                if t.previous.as_ref().is_some_and(|prev| {
                    prev.routes
                        .iter()
                        .any(|r| r.version.as_deref() == Some(version))
                }) {
                    t.previous = None;
                }
            }
        }
        if let Err(e) = self.persist(model) {
            tracing::warn!(model, error = %e, "traffic policy changed but not stored");
        }
        Ok(())
    }

    /// Whether `model`'s policy sends any traffic to `version` (`None` without a policy).
    pub fn routes_to(&self, model: &str, version: &str) -> Option<bool> {
        let models = self.read();
        let t = models.get(model)?;
        Some(
            t.effective().iter().any(|r| {
                r.weight > 0.0 && r.model.is_none() && r.version.as_deref() == Some(version)
            }),
        )
    }

    /// Each version's share now, out of 100, as `GET /models/{id}` shows (`None`: no policy).
    pub fn weight_of(&self, model: &str, version: &str) -> Option<f64> {
        let models = self.read();
        let t = models.get(model)?;
        Some(
            t.effective()
                .iter()
                .filter(|r| r.model.is_none() && r.version.as_deref() == Some(version))
                .map(|r| r.weight)
                .sum(),
        )
    }

    /// Every (model, route model, version, weight) in force, for the metrics.
    pub fn all_weights(&self) -> Vec<(String, String, String, f64)> {
        let models = self.read();
        let mut out = Vec::new();
        for (id, t) in models.iter() {
            for r in t.effective() {
                out.push((
                    id.clone(),
                    r.model.clone().unwrap_or_else(|| id.clone()),
                    r.version.clone().unwrap_or_else(|| "default".into()),
                    r.weight,
                ));
            }
        }
        out
    }

    pub fn view(&self, model: &str) -> Option<TrafficView> {
        let models = self.read();
        let t = models.get(model)?;
        Some(TrafficView {
            model: model.to_string(),
            policy: t.current(),
            effective: t.effective(),
            canary: t.canary.clone(),
            can_roll_back: t.previous.is_some(),
            stored: self.stored(model),
        })
    }

    fn empty_view(&self, model: &str) -> TrafficView {
        TrafficView {
            model: model.to_string(),
            policy: TrafficPolicy {
                routes: Vec::new(),
                sticky: None,
                shadow: None,
                canary: None,
            },
            effective: Vec::new(),
            canary: None,
            can_roll_back: false,
            stored: false,
        }
    }

    fn stored(&self, model: &str) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| d.join(model).join(POLICY_FILE).is_file())
    }

    /// Write `model`'s policy to `<dir>/<model>/traffic.yaml` (or remove the file when the
    /// model has none), atomically. `Ok(false)`: there is no repository folder to write to.
    pub fn persist(&self, model: &str) -> Result<bool, TrafficError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let folder = dir.join(model);
        if !folder.is_dir() {
            return Ok(false);
        }
        let path = folder.join(POLICY_FILE);
        let err = |e: &dyn std::fmt::Display| TrafficError::Persist {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let current = self.read().get(model).map(ModelTraffic::current);
        match current {
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(&e)),
                _ => Ok(true),
            },
            Some(p) => {
                let text = serde_yaml::to_string(&p).map_err(|e| err(&e))?;
                let tmp = folder.join(format!(".{POLICY_FILE}.tmp"));
                std::fs::write(&tmp, text).map_err(|e| err(&e))?;
                std::fs::rename(&tmp, &path).map_err(|e| err(&e))?;
                Ok(true)
            }
        }
    }

    /// Read `<dir>/<model>/traffic.yaml` if there is one.
    pub fn read_persisted(&self, model: &str) -> Option<Result<TrafficPolicy, String>> {
        let path = self.dir.as_ref()?.join(model).join(POLICY_FILE);
        let text = std::fs::read_to_string(&path).ok()?;
        Some(serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(routes: &[(&str, f64)]) -> TrafficPolicy {
        TrafficPolicy {
            routes: routes
                .iter()
                .map(|(v, w)| Route {
                    model: None,
                    version: Some(v.to_string()),
                    weight: *w,
                })
                .collect(),
            sticky: None,
            shadow: None,
            canary: None,
        }
    }

    #[test]
    fn plans_follow_the_policy_and_sticky_keys() {
        let t = Traffic::new(None);
        assert_eq!(t.plan("m", |_| None, || 0.5), None);
        let mut p = policy(&[("1.0.0", 90.0), ("1.1.0", 10.0)]);
        p.sticky = Some("x-session-id".into());
        t.set("m", p).unwrap();
        let plan = t.plan("m", |_| None, || 0.95).unwrap();
        assert_eq!(plan.version.as_deref(), Some("1.1.0"));
        assert_eq!(plan.model, "m");
        let key = (0..100)
            .map(|i| format!("s{i}"))
            .find(|k| unit_hash(k) >= 0.9)
            .unwrap();
        for _ in 0..5 {
            let plan = t.plan("m", |h| (h == "x-session-id").then(|| key.clone()), || 0.0);
            assert_eq!(plan.unwrap().version.as_deref(), Some("1.1.0"));
        }
    }

    #[test]
    fn promote_rollback_and_remove() {
        let t = Traffic::new(None);
        t.set("m", policy(&[("1.0.0", 100.0)])).unwrap();
        t.promote("m", "2.0.0").unwrap();
        assert_eq!(t.weight_of("m", "2.0.0"), Some(100.0));
        assert_eq!(t.weight_of("m", "1.0.0"), Some(0.0));
        t.rollback("m").unwrap();
        assert_eq!(t.weight_of("m", "1.0.0"), Some(100.0));
        assert!(matches!(
            t.remove_version("m", "1.0.0"),
            Err(TrafficError::OnlyRoute { .. })
        ));
        t.set("m", policy(&[("1.0.0", 50.0), ("2.0.0", 50.0)]))
            .unwrap();
        t.remove_version("m", "1.0.0").unwrap();
        assert_eq!(t.weight_of("m", "2.0.0"), Some(100.0));
        assert_eq!(t.routes_to("m", "1.0.0"), Some(false));
    }

    #[test]
    fn a_canary_promoted_by_tick_keeps_the_old_policy_for_rollback() {
        let t = Traffic::new(None);
        let mut p = policy(&[("1.0.0", 100.0)]);
        p.canary = Some(CanarySpec {
            version: "1.1.0".into(),
            step_weight: 50.0,
            interval_s: 0.1,
            max_error_rate: 0.1,
            max_p99_ms: 1000.0,
            max_failed_checks: 1,
            min_requests: 1,
        });
        t.set("m", p).unwrap();
        assert_eq!(t.weight_of("m", "1.1.0"), Some(50.0));
        let mut verdicts = Vec::new();
        for _ in 0..50 {
            t.observe("m", "1.1.0", 5.0, false);
            t.observe("m", "1.0.0", 5.0, true);
            std::thread::sleep(std::time::Duration::from_millis(30));
            verdicts.extend(t.tick().into_iter().map(|e| e.verdict));
            if verdicts.contains(&Verdict::Promoted) {
                break;
            }
        }
        assert_eq!(verdicts, vec![Verdict::Stepped, Verdict::Promoted]);
        assert_eq!(t.weight_of("m", "1.1.0"), Some(100.0));
        t.rollback("m").unwrap();
        assert_eq!(t.weight_of("m", "1.0.0"), Some(100.0));
    }
}
