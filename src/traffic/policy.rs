//! A model's traffic policy as plain data (what `PUT /models/{id}/traffic` takes and
//! `models/<id>/traffic.yaml` stores), its checks, and the pure routing step:
//! (policy, sticky key or a uniform draw) → the version that answers, and whether a shadow runs.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// One model's traffic policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicy {
    /// The weighted split; at least one route with a weight above 0.
    pub routes: Vec<Route>,
    /// Sticky A/B: the name of the request header whose value picks the variant (else the
    /// OpenAI `user` field, else the principal), so one user always gets the same variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// A share of requests also sent to this version; its answers are compared, not returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// A canary whose weight rises step by step while it stays healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

/// One variant of the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Another model id (A/B between models); absent: this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The version; absent: that model's default version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Relative weight (any scale; 90/10 and 9/1 split alike).
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    pub version: String,
    /// Share of requests mirrored, 0–100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    pub version: String,
    /// Weight added (out of 100) after each healthy interval.
    pub step_weight: f64,
    /// Seconds between checks.
    pub interval_s: f64,
    /// Highest error rate (0–1) of the canary's requests over an interval that passes.
    pub max_error_rate: f64,
    /// Highest p99 latency (ms) over an interval that passes.
    pub max_p99_ms: f64,
    /// Failed checks after which the canary is rolled back to 0 %.
    pub max_failed_checks: u32,
    /// Requests an interval needs before it is judged (default 1); fewer: the weight holds.
    #[serde(default = "one")]
    pub min_requests: u64,
}

fn one() -> u64 {
    1
}

/// A policy problem, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

impl TrafficPolicy {
    /// Everything but the `model` half of a route to `version` of `model` itself.
    pub fn single(version: &str) -> Self {
        TrafficPolicy {
            routes: vec![Route {
                model: None,
                version: Some(version.to_string()),
                weight: 100.0,
            }],
            sticky: None,
            shadow: None,
            canary: None,
        }
    }

    /// Check the policy of `model`. `known(model, version)` says whether that model (and
    /// version, when given) is registered.
    pub fn check(
        &self,
        model: &str,
        known: impl Fn(&str, Option<&str>) -> bool,
    ) -> Result<(), PolicyError> {
        if self.routes.is_empty() {
            return Err(bad("routes", "must list at least one route"));
        }
        let mut total = 0.0;
        for (i, r) in self.routes.iter().enumerate() {
            if !(0.0..=1_000_000.0).contains(&r.weight) {
                return Err(bad(
                    format!("routes[{i}].weight"),
                    "must be a number between 0 and 1000000",
                ));
            }
            total += r.weight;
            let m = r.model.as_deref().unwrap_or(model);
            if !known(m, None) {
                return Err(bad(
                    format!("routes[{i}].model"),
                    format!("unknown model `{m}`"),
                ));
            }
            if let Some(v) = &r.version {
                if !known(m, Some(v)) {
                    return Err(bad(
                        format!("routes[{i}].version"),
                        format!("model `{m}` has no version {v}"),
                    ));
                }
            }
        }
        let canary_weight = self.canary.as_ref().map_or(0.0, |c| c.step_weight);
        if total <= 0.0 && canary_weight <= 0.0 {
            return Err(bad("routes", "the weights must add up to more than 0"));
        }
        if let Some(key) = &self.sticky {
            if key.is_empty() || http::HeaderName::from_bytes(key.as_bytes()).is_err() {
                return Err(bad("sticky", "must be a header name"));
            }
        }
        if let Some(s) = &self.shadow {
            if !known(model, Some(&s.version)) {
                return Err(bad(
                    "shadow.version",
                    format!("model `{model}` has no version {}", s.version),
                ));
            }
            if !(0.0..=100.0).contains(&s.percent) {
                return Err(bad("shadow.percent", "must be between 0 and 100"));
            }
        }
        if let Some(c) = &self.canary {
            if !known(model, Some(&c.version)) {
                return Err(bad(
                    "canary.version",
                    format!("model `{model}` has no version {}", c.version),
                ));
            }
            if !(c.step_weight > 0.0 && c.step_weight <= 100.0) {
                return Err(bad("canary.step_weight", "must be above 0 and at most 100"));
            }
            if !(0.1..=86_400.0).contains(&c.interval_s) {
                return Err(bad("canary.interval_s", "must be between 0.1 and 86400"));
            }
            if !(0.0..=1.0).contains(&c.max_error_rate) {
                return Err(bad("canary.max_error_rate", "must be between 0 and 1"));
            }
            if !(c.max_p99_ms.is_finite() && c.max_p99_ms > 0.0) {
                return Err(bad("canary.max_p99_ms", "must be above 0"));
            }
            if c.max_failed_checks == 0 {
                return Err(bad("canary.max_failed_checks", "must be at least 1"));
            }
            if self
                .routes
                .iter()
                .any(|r| r.model.is_some() && r.model.as_deref() != Some(model))
            {
                return Err(bad(
                    "canary",
                    "a canary shifts weight between versions of this model; its routes may not name other models",
                ));
            }
        }
        Ok(())
    }

    /// The routes as they stand with the canary at `canary_weight` (out of 100): the other
    /// routes share the rest in their proportions. Without a canary, the routes as written.
    pub fn effective(&self, canary_weight: Option<f64>) -> Vec<Route> {
        let (Some(c), Some(w)) = (&self.canary, canary_weight) else {
            return self.routes.clone();
        };
        let w = w.clamp(0.0, 100.0);
        let others: Vec<&Route> = self
            .routes
            .iter()
            .filter(|r| r.version.as_deref() != Some(c.version.as_str()))
            .collect();
        let total: f64 = others.iter().map(|r| r.weight).sum();
        let mut out: Vec<Route> = others
            .into_iter()
            .map(|r| Route {
                weight: if total > 0.0 {
                    r.weight / total * (100.0 - w)
                } else {
                    0.0
                },
                ..r.clone()
            })
            .collect();
        out.push(Route {
            model: None,
            version: Some(c.version.clone()),
            weight: w,
        });
        out
    }
}

/// A key hashed to [0, 1): the same key always lands on the same point.
pub fn unit_hash(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&digest[..8]);
    // 53 bits: exactly representable, strictly below 1.
    (u64::from_be_bytes(eight) >> 11) as f64 / (1u64 << 53) as f64
}

/// The route a point `u` in [0, 1) falls on: the routes cut [0, 1) into bands by weight, in
/// order, so moving weight between two neighbouring routes moves only the points in between.
/// `None` when every weight is 0.
pub fn pick(routes: &[Route], u: f64) -> Option<usize> {
    let total: f64 = routes.iter().map(|r| r.weight.max(0.0)).sum();
    if total <= 0.0 {
        return None;
    }
    let target = u.clamp(0.0, 1.0) * total;
    let mut acc = 0.0;
    let mut last = None;
    for (i, r) in routes.iter().enumerate() {
        if r.weight <= 0.0 {
            continue;
        }
        acc += r.weight;
        last = Some(i);
        if target < acc {
            return Some(i);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(v: &str, w: f64) -> Route {
        Route {
            model: None,
            version: Some(v.into()),
            weight: w,
        }
    }

    #[test]
    fn bands_follow_the_weights() {
        let routes = vec![route("1", 90.0), route("2", 10.0)];
        assert_eq!(pick(&routes, 0.0), Some(0));
        assert_eq!(pick(&routes, 0.8999), Some(0));
        assert_eq!(pick(&routes, 0.9), Some(1));
        assert_eq!(pick(&routes, 0.99999), Some(1));
        let zero = vec![route("1", 0.0), route("2", 5.0)];
        assert_eq!(pick(&zero, 0.0), Some(1));
        assert_eq!(pick(&[route("1", 0.0)], 0.5), None);
        // 2,000 evenly spread points: exactly the weights.
        let n = 2000;
        let second = (0..n)
            .filter(|i| pick(&routes, (*i as f64 + 0.5) / n as f64) == Some(1))
            .count();
        assert_eq!(second, 200);
    }

    #[test]
    fn moving_weight_moves_only_the_band_between() {
        let before = vec![route("1", 90.0), route("2", 10.0)];
        let after = vec![route("1", 80.0), route("2", 20.0)];
        for i in 0..500 {
            let u = unit_hash(&format!("session-{i}"));
            let (a, b) = (pick(&before, u), pick(&after, u));
            if a != b {
                assert!((0.8..0.9).contains(&u), "{u} moved");
                assert_eq!((a, b), (Some(0), Some(1)));
            }
        }
    }

    #[test]
    fn unit_hash_is_stable_and_spread() {
        assert_eq!(unit_hash("abc"), unit_hash("abc"));
        let us: Vec<f64> = (0..1000).map(|i| unit_hash(&i.to_string())).collect();
        assert!(us.iter().all(|u| (0.0..1.0).contains(u)));
        let low = us.iter().filter(|u| **u < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
    }

    #[test]
    fn checks_name_the_field() {
        let known =
            |m: &str, v: Option<&str>| m == "m" && v.is_none_or(|v| v == "1.0.0" || v == "1.1.0");
        let mut p = TrafficPolicy {
            routes: vec![route("1.0.0", 90.0), route("9.9.9", 10.0)],
            sticky: None,
            shadow: None,
            canary: None,
        };
        assert_eq!(p.check("m", known).unwrap_err().field, "routes[1].version");
        p.routes[1] = route("1.1.0", -1.0);
        assert_eq!(p.check("m", known).unwrap_err().field, "routes[1].weight");
        p.routes[1].weight = 0.0;
        p.routes[0].weight = 0.0;
        assert_eq!(p.check("m", known).unwrap_err().field, "routes");
        p.routes[0].weight = 1.0;
        p.routes[1].model = Some("other".into());
        assert_eq!(p.check("m", known).unwrap_err().field, "routes[1].model");
        p.routes[1].model = None;
        p.sticky = Some("bad header".into());
        assert_eq!(p.check("m", known).unwrap_err().field, "sticky");
        p.sticky = Some("x-session-id".into());
        p.shadow = Some(ShadowSpec {
            version: "1.1.0".into(),
            percent: 120.0,
        });
        assert_eq!(p.check("m", known).unwrap_err().field, "shadow.percent");
        p.shadow = None;
        assert!(p.check("m", known).is_ok());
        let unknown_key: Result<TrafficPolicy, _> =
            serde_json::from_str(r#"{"routes":[],"stiky":"x"}"#);
        assert!(unknown_key.unwrap_err().to_string().contains("stiky"));
    }

    #[test]
    fn the_canary_takes_its_weight_from_the_others() {
        let p = TrafficPolicy {
            routes: vec![route("1.0.0", 100.0)],
            sticky: None,
            shadow: None,
            canary: Some(CanarySpec {
                version: "1.1.0".into(),
                step_weight: 10.0,
                interval_s: 1.0,
                max_error_rate: 0.01,
                max_p99_ms: 500.0,
                max_failed_checks: 2,
                min_requests: 1,
            }),
        };
        let e = p.effective(Some(30.0));
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].weight, e[1].weight), (70.0, 30.0));
        assert_eq!(e[1].version.as_deref(), Some("1.1.0"));
        assert_eq!(p.effective(None), p.routes);
    }
}
