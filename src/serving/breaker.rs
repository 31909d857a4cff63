//! Circuit breakers, one per target (a local model version or a remote provider), as plain
//! state with time as a parameter.
//!
//! Closed: requests pass; the circuit opens after `consecutive_failures` failures in a row, or
//! when at least `failure_rate` of the last `window_ms`'s requests failed and there were at
//! least `min_requests` of them. Open: requests go straight to the fallback for `cooldown_ms`.
//! Then half-open: one probe passes (the others still go to the fallback); its success closes
//! the circuit, its failure opens it for another cooldown. A probe that never reports (its
//! client left) frees the slot after a cooldown.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::spec::manifest::BreakerSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    /// The gauge's value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

/// Whether a request may go to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open circuit's one probe.
    Probe,
    /// No: the circuit is open (or its probe is out).
    No,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: CircuitState,
    consecutive: u32,
    /// (when, failed) of the recent requests.
    window: VecDeque<(Instant, bool)>,
    opened_at: Option<Instant>,
    probe_since: Option<Instant>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: CircuitState::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            opened_at: None,
            probe_since: None,
        }
    }

    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.settings.cooldown_ms)
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// May a request go to the target at `now`?
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            CircuitState::Closed => Admit::Yes,
            CircuitState::Open => {
                let cooled = self
                    .opened_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.cooldown());
                if cooled {
                    self.state = CircuitState::HalfOpen;
                    self.probe_since = Some(now);
                    Admit::Probe
                } else {
                    Admit::No
                }
            }
            CircuitState::HalfOpen => {
                let free = self
                    .probe_since
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.cooldown());
                if free {
                    self.probe_since = Some(now);
                    Admit::Probe
                } else {
                    Admit::No
                }
            }
        }
    }

    /// The outcome of a request admitted at `admit` time; `failed` counts only failures of
    /// the target itself.
    pub fn record(&mut self, now: Instant, failed: bool, probe: bool) {
        let window = Duration::from_millis(self.settings.window_ms);
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
        {
            self.window.pop_front();
        }
        self.window.push_back((now, failed));
        if probe {
            self.probe_since = None;
        }
        if !failed {
            self.consecutive = 0;
            if self.state == CircuitState::HalfOpen && probe {
                self.close();
            }
            return;
        }
        self.consecutive += 1;
        match self.state {
            CircuitState::HalfOpen if probe => self.open(now),
            CircuitState::Closed => {
                let total = self.window.len() as u32;
                let failures = self.window.iter().filter(|(_, f)| *f).count() as f64;
                let rate_trips = total >= self.settings.min_requests
                    && failures / f64::from(total) >= self.settings.failure_rate;
                if self.consecutive >= self.settings.consecutive_failures || rate_trips {
                    self.open(now);
                }
            }
            // Late answers of requests admitted before the circuit opened change nothing.
            _ => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = CircuitState::Open;
        self.opened_at = Some(now);
        self.probe_since = None;
        self.window.clear();
    }

    fn close(&mut self) {
        self.state = CircuitState::Closed;
        self.opened_at = None;
        self.consecutive = 0;
        self.window.clear();
    }
}

/// Every target's breaker, by target name (`id@version`).
#[derive(Debug, Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a request to `target`; the state after.
    pub fn admit(
        &self,
        target: &str,
        settings: BreakerSettings,
        now: Instant,
    ) -> (Admit, CircuitState) {
        let mut map = self.lock();
        let b = map
            .entry(target.to_string())
            .or_insert_with(|| Breaker::new(settings));
        b.settings = settings;
        let a = b.admit(now);
        (a, b.state())
    }

    /// Record an outcome; the state after.
    pub fn record(&self, target: &str, now: Instant, failed: bool, probe: bool) -> CircuitState {
        let mut map = self.lock();
        match map.get_mut(target) {
            Some(b) => {
                b.record(now, failed, probe);
                b.state()
            }
            None => CircuitState::Closed,
        }
    }

    /// Every known target's state.
    pub fn states(&self) -> Vec<(String, CircuitState)> {
        self.lock()
            .iter()
            .map(|(k, b)| (k.clone(), b.state()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_requests: 10,
            window_ms: 10_000,
            cooldown_ms: 1_000,
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..2 {
            assert_eq!(b.admit(ms(t0, i)), Admit::Yes);
            b.record(ms(t0, i), true, false);
            assert_eq!(b.state(), CircuitState::Closed);
        }
        b.record(ms(t0, 2), true, false);
        assert_eq!(b.state(), CircuitState::Open);
        // Open for the cooldown: nothing passes.
        assert_eq!(b.admit(ms(t0, 500)), Admit::No);
        assert_eq!(b.admit(ms(t0, 1001)), Admit::No);
        // After it: one probe, the others still refused.
        assert_eq!(b.admit(ms(t0, 1002)), Admit::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit(ms(t0, 1003)), Admit::No);
        b.record(ms(t0, 1010), false, true);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(ms(t0, 1011)), Admit::Yes);
    }

    #[test]
    fn a_failed_probe_opens_for_another_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..3 {
            b.record(ms(t0, i), true, false);
        }
        assert_eq!(b.admit(ms(t0, 1100)), Admit::Probe);
        b.record(ms(t0, 1200), true, true);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(ms(t0, 2100)), Admit::No);
        assert_eq!(b.admit(ms(t0, 2200)), Admit::Probe);
    }

    #[test]
    fn a_lost_probe_frees_its_slot_after_a_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..3 {
            b.record(ms(t0, i), true, false);
        }
        assert_eq!(b.admit(ms(t0, 1100)), Admit::Probe);
        assert_eq!(b.admit(ms(t0, 1500)), Admit::No);
        assert_eq!(b.admit(ms(t0, 2100)), Admit::Probe);
    }

    #[test]
    fn opens_on_the_failure_rate_over_enough_requests() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        // Alternating: never 3 in a row, but half failed once 10 are in the window.
        for i in 0..9 {
            b.record(ms(t0, i), i % 2 == 0, false);
            assert_eq!(b.state(), CircuitState::Closed, "after {i}");
        }
        b.record(ms(t0, 9), true, false);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn old_requests_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..8 {
            b.record(ms(t0, i), i % 2 == 0, false);
        }
        // 20 s later the old ones no longer count: 2 in the window.
        b.record(ms(t0, 20_000), true, false);
        b.record(ms(t0, 20_001), false, false);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn successes_reset_the_run_of_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for i in 0..20 {
            let failed = i % 3 != 2;
            b.record(ms(t0, i * 1000), failed, false);
        }
        // Two failures then a success, over and over, each 1 s apart in a 10 s window: 66 %
        // failed over ≥ 10 requests trips the rate rule.
        assert_eq!(b.state(), CircuitState::Open);
        let mut c = Breaker::new(settings());
        for i in 0..20 {
            c.record(ms(t0, i * 5000), i % 3 != 2, false);
        }
        // Spread out, the window never holds 10: only runs count, and they stay below 3.
        assert_eq!(c.state(), CircuitState::Closed);
    }
}
