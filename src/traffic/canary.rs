//! The canary analysis as plain state, with time as a parameter: the canary's requests of the
//! current interval are collected in a `Window`; at the end of each interval `check` judges
//! them (error rate, p99 latency) and steps the weight up, counts a failed check, rolls back, or
//! promotes.

use serde::Serialize;
use utoipa::ToSchema;

use super::policy::CanarySpec;

/// Latencies kept per interval at most (a uniform sample beyond that would need randomness;
/// the first ones of a busy interval are a fair sample of it for a p99).
const MAX_SAMPLES: usize = 100_000;

/// The canary's requests over the current interval.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    latencies_ms: Vec<f64>,
}

impl Window {
    pub fn record(&mut self, latency_ms: f64, error: bool) {
        self.requests += 1;
        if error {
            self.errors += 1;
        }
        if self.latencies_ms.len() < MAX_SAMPLES {
            self.latencies_ms.push(latency_ms);
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 99th percentile latency (nearest rank), 0 with no requests.
    pub fn p99_ms(&self) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let mut l = self.latencies_ms.clone();
        l.sort_by(f64::total_cmp);
        let rank = ((0.99 * l.len() as f64).ceil() as usize).clamp(1, l.len());
        l[rank - 1]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStatus {
    Running,
    Promoted,
    RolledBack,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Healthy: the weight went up.
    Stepped,
    /// Too few requests to judge: the weight holds.
    Held,
    /// Out of bounds: one more failed check.
    Failed,
    /// Too many failed checks: back to 0 %.
    RolledBack,
    /// Healthy at 100 %: the canary is now the default.
    Promoted,
}

/// One check, for the history `GET /models/{id}/traffic` shows.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CanaryStep {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub verdict: Verdict,
    /// The canary's weight after the check.
    pub weight: f64,
    pub requests: u64,
    pub error_rate: f64,
    pub p99_ms: f64,
}

/// A running (or finished) canary.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CanaryRun {
    pub version: String,
    pub status: CanaryStatus,
    /// Its share of traffic now, out of 100.
    pub weight: f64,
    pub failed_checks: u32,
    pub history: Vec<CanaryStep>,
    /// When the next check runs, in the caller's clock (seconds).
    #[serde(skip)]
    pub next_check: f64,
    #[serde(skip)]
    pub window: Window,
}

/// Checks kept in the history.
const HISTORY: usize = 200;

impl CanaryRun {
    /// A canary starting at `weight` (its route's weight, else one step) at time `now`.
    pub fn start(spec: &CanarySpec, weight: f64, now: f64) -> Self {
        CanaryRun {
            version: spec.version.clone(),
            status: CanaryStatus::Running,
            weight: if weight > 0.0 {
                weight.min(100.0)
            } else {
                spec.step_weight.min(100.0)
            },
            failed_checks: 0,
            history: Vec::new(),
            next_check: now + spec.interval_s,
            window: Window::default(),
        }
    }

    /// Judge the interval if it is over (`now` ≥ the next check); `wall` is the Unix time for
    /// the history. Returns the verdict of a check that ran.
    pub fn check(&mut self, spec: &CanarySpec, now: f64, wall: f64) -> Option<Verdict> {
        if self.status != CanaryStatus::Running || now < self.next_check {
            return None;
        }
        let w = std::mem::take(&mut self.window);
        let (rate, p99) = (w.error_rate(), w.p99_ms());
        let verdict = if w.requests < spec.min_requests.max(1) {
            Verdict::Held
        } else if rate > spec.max_error_rate || p99 > spec.max_p99_ms {
            self.failed_checks += 1;
            if self.failed_checks >= spec.max_failed_checks {
                self.weight = 0.0;
                self.status = CanaryStatus::RolledBack;
                Verdict::RolledBack
            } else {
                Verdict::Failed
            }
        } else if self.weight >= 100.0 {
            self.status = CanaryStatus::Promoted;
            Verdict::Promoted
        } else {
            self.weight = (self.weight + spec.step_weight).min(100.0);
            Verdict::Stepped
        };
        self.next_check = now + spec.interval_s;
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push(CanaryStep {
            at: wall,
            verdict,
            weight: self.weight,
            requests: w.requests,
            error_rate: rate,
            p99_ms: p99,
        });
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CanarySpec {
        CanarySpec {
            version: "1.1.0".into(),
            step_weight: 25.0,
            interval_s: 10.0,
            max_error_rate: 0.05,
            max_p99_ms: 100.0,
            max_failed_checks: 2,
            min_requests: 5,
        }
    }

    fn feed(run: &mut CanaryRun, n: u64, errors: u64, latency: f64) {
        for i in 0..n {
            run.window.record(latency, i < errors);
        }
    }

    #[test]
    fn a_healthy_canary_climbs_then_is_promoted() {
        let s = spec();
        let mut run = CanaryRun::start(&s, 0.0, 0.0);
        assert_eq!(run.weight, 25.0);
        assert_eq!(
            run.check(&s, 9.9, 0.0),
            None,
            "not before the interval ends"
        );
        let mut t = 10.0;
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            feed(&mut run, 20, 0, 10.0);
            verdicts.push(run.check(&s, t, t).unwrap());
            t += 10.0;
        }
        assert_eq!(
            verdicts,
            vec![
                Verdict::Stepped,
                Verdict::Stepped,
                Verdict::Stepped,
                Verdict::Promoted
            ]
        );
        assert_eq!(run.weight, 100.0);
        assert_eq!(run.status, CanaryStatus::Promoted);
        assert_eq!(run.check(&s, t + 100.0, 0.0), None, "finished");
        assert_eq!(run.history.len(), 4);
    }

    #[test]
    fn a_failing_canary_is_rolled_back_after_max_failed_checks() {
        let s = spec();
        let mut run = CanaryRun::start(&s, 10.0, 0.0);
        feed(&mut run, 30, 10, 10.0);
        assert_eq!(run.check(&s, 10.0, 0.0), Some(Verdict::Failed));
        assert_eq!(run.weight, 10.0, "a failed check holds the weight");
        feed(&mut run, 30, 10, 10.0);
        assert_eq!(run.check(&s, 20.0, 0.0), Some(Verdict::RolledBack));
        assert_eq!(run.weight, 0.0);
        assert_eq!(run.status, CanaryStatus::RolledBack);
    }

    #[test]
    fn slow_canaries_fail_and_quiet_intervals_hold() {
        let s = spec();
        let mut run = CanaryRun::start(&s, 0.0, 0.0);
        feed(&mut run, 100, 0, 10.0);
        run.window.record(500.0, false);
        run.window.record(500.0, false);
        assert!(run.window.p99_ms() >= 500.0);
        assert_eq!(run.check(&s, 10.0, 0.0), Some(Verdict::Failed));
        feed(&mut run, 3, 0, 10.0);
        assert_eq!(run.check(&s, 20.0, 0.0), Some(Verdict::Held));
        assert_eq!(run.weight, 25.0);
    }

    #[test]
    fn window_figures() {
        let mut w = Window::default();
        assert_eq!((w.error_rate(), w.p99_ms()), (0.0, 0.0));
        for i in 1..=100 {
            w.record(i as f64, i % 4 == 0);
        }
        assert_eq!(w.error_rate(), 0.25);
        assert_eq!(w.p99_ms(), 99.0);
    }
}
