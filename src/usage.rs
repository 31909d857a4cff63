//! Usage and cost accounting: requests, tokens, latency and estimated cost per model version
//! and principal, in time buckets, in memory.
//!
//! Two series are kept: minute buckets for the last 24 hours (the `GET /models/{id}/metrics`
//! windows) and hour buckets for the last 31 days (`GET /usage`, hourly or daily). Latency
//! percentiles come from a fixed log-scale histogram per bucket (about 5% resolution), so
//! memory stays bounded whatever the traffic. One `record` call per request feeds both.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use utoipa::ToSchema;

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const KEEP_MINUTES: u64 = 24 * 60;
const KEEP_HOURS: u64 = 31 * 24;
/// Histogram bucket i covers latencies up to `BASE_MS * GROWTH^i`.
const BASE_MS: f64 = 0.05;
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 200;

/// One finished request, as accounting sees it.
#[derive(Debug, Clone)]
pub struct UsageEvent<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub principal: &'a str,
    pub tokens_input: u64,
    pub tokens_output: u64,
    pub cost: f64,
    pub latency_ms: f64,
    pub error: bool,
}

#[derive(Debug, Clone)]
struct Cell {
    requests: u64,
    errors: u64,
    tokens_input: u64,
    tokens_output: u64,
    cost: f64,
    latency_sum_ms: f64,
    latency: Box<[u32; BUCKETS]>,
}

impl Default for Cell {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            tokens_input: 0,
            tokens_output: 0,
            cost: 0.0,
            latency_sum_ms: 0.0,
            latency: Box::new([0; BUCKETS]),
        }
    }
}

impl Cell {
    fn add(&mut self, e: &UsageEvent<'_>) {
        self.requests += 1;
        self.errors += u64::from(e.error);
        self.tokens_input += e.tokens_input;
        self.tokens_output += e.tokens_output;
        self.cost += e.cost;
        self.latency_sum_ms += e.latency_ms;
        self.latency[bucket_of(e.latency_ms)] += 1;
    }

    fn merge(&mut self, o: &Cell) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.tokens_input += o.tokens_input;
        self.tokens_output += o.tokens_output;
        self.cost += o.cost;
        self.latency_sum_ms += o.latency_sum_ms;
        for (a, b) in self.latency.iter_mut().zip(o.latency.iter()) {
            *a += b;
        }
    }

    /// The latency under which `q` of the requests fell (upper bound of its bucket).
    fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.latency.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.latency.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return upper_ms(i);
            }
        }
        upper_ms(BUCKETS - 1)
    }
}

fn bucket_of(ms: f64) -> usize {
    if ms <= BASE_MS {
        return 0;
    }
    (((ms / BASE_MS).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn upper_ms(i: usize) -> f64 {
    let v = BASE_MS * GROWTH.powi(i as i32);
    (v * 1000.0).round() / 1000.0
}

type Key = (u64, String, String, String); // (bucket start, model, version, principal)

#[derive(Debug, Default)]
pub struct UsageStore {
    minutes: Mutex<BTreeMap<Key, Cell>>,
    hours: Mutex<BTreeMap<Key, Cell>>,
    /// Per minute and named model: (requests, answered by a fallback).
    routes: Mutex<BTreeMap<(u64, String), (u64, u64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hourly,
    Daily,
}

impl Period {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hourly" => Some(Period::Hourly),
            "daily" => Some(Period::Daily),
            _ => None,
        }
    }
    fn seconds(self) -> u64 {
        match self {
            Period::Hourly => HOUR,
            Period::Daily => 24 * HOUR,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Principal,
}

/// Figures for one model over a window.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct ModelWindow {
    pub model: String,
    /// hourly (the last 60 minutes) or daily (the last 24 hours).
    pub period: String,
    pub window_start: u64,
    pub window_end: u64,
    pub requests_count: u64,
    pub errors_count: u64,
    pub error_rate: f64,
    pub tokens_input: u64,
    pub tokens_output: u64,
    pub avg_response_ms: f64,
    pub p50_response_ms: f64,
    pub p95_response_ms: f64,
    pub p99_response_ms: f64,
    /// In the currency of the manifest's prices (USD by convention).
    pub estimated_cost: f64,
    /// Requests that named this model and were answered by one of its fallbacks.
    pub fallbacks_count: u64,
    /// `fallbacks_count` over the requests that named this model.
    pub fallback_rate: f64,
}

/// One row of `GET /usage`.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct UsageRow {
    /// Start of the bucket, seconds since the Unix epoch (UTC).
    pub bucket_start: u64,
    /// The model id or the principal, per `group_by`.
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub tokens_input: u64,
    pub tokens_output: u64,
    pub estimated_cost: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UsageStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A request that named `model` was answered by a fallback (`fell_back`) or not.
    pub fn record_route(&self, model: &str, fell_back: bool, now: u64) {
        let start = now - now % MINUTE;
        let mut m = lock(&self.routes);
        let cell = m.entry((start, model.to_string())).or_default();
        cell.0 += 1;
        cell.1 += u64::from(fell_back);
        let horizon = now.saturating_sub(KEEP_MINUTES * MINUTE);
        while m.first_key_value().is_some_and(|(k, _)| k.0 < horizon) {
            m.pop_first();
        }
    }

    pub fn record(&self, e: &UsageEvent<'_>, now: u64) {
        for (map, width, keep) in [
            (&self.minutes, MINUTE, KEEP_MINUTES * MINUTE),
            (&self.hours, HOUR, KEEP_HOURS * HOUR),
        ] {
            let start = now - now % width;
            let mut m = lock(map);
            m.entry((
                start,
                e.model.to_string(),
                e.version.to_string(),
                e.principal.to_string(),
            ))
            .or_default()
            .add(e);
            // Buckets are ordered by start: drop the expired ones from the front.
            let horizon = now.saturating_sub(keep);
            while m.first_key_value().is_some_and(|(k, _)| k.0 < horizon) {
                m.pop_first();
            }
        }
    }

    /// One model over the last hour or day (all versions and principals; `principal` narrows).
    pub fn model_window(
        &self,
        model: &str,
        period: Period,
        principal: Option<&str>,
        now: u64,
    ) -> ModelWindow {
        let from = now.saturating_sub(period.seconds());
        let mut total = Cell::default();
        for ((start, m, _, p), cell) in lock(&self.minutes).range(
            (
                from - from % MINUTE,
                String::new(),
                String::new(),
                String::new(),
            )..,
        ) {
            if *start + MINUTE > from && m == model && principal.is_none_or(|x| x == p) {
                total.merge(cell);
            }
        }
        let n = total.requests.max(1) as f64;
        let (named, fell_back) = lock(&self.routes)
            .range((from - from % MINUTE, String::new())..)
            .filter(|((start, m), _)| *start + MINUTE > from && m == model)
            .fold((0, 0), |(a, b), (_, (x, y))| (a + x, b + y));
        ModelWindow {
            fallbacks_count: fell_back,
            fallback_rate: if named == 0 {
                0.0
            } else {
                fell_back as f64 / named as f64
            },
            model: model.to_string(),
            period: period.as_str().to_string(),
            window_start: from,
            window_end: now,
            requests_count: total.requests,
            errors_count: total.errors,
            error_rate: if total.requests == 0 {
                0.0
            } else {
                total.errors as f64 / n
            },
            tokens_input: total.tokens_input,
            tokens_output: total.tokens_output,
            avg_response_ms: if total.requests == 0 {
                0.0
            } else {
                total.latency_sum_ms / n
            },
            p50_response_ms: total.quantile_ms(0.50),
            p95_response_ms: total.quantile_ms(0.95),
            p99_response_ms: total.quantile_ms(0.99),
            estimated_cost: total.cost,
        }
    }

    /// Usage per hour or day bucket, grouped by model or principal (`principal` narrows).
    pub fn usage(
        &self,
        period: Period,
        group_by: GroupBy,
        principal: Option<&str>,
    ) -> Vec<UsageRow> {
        let width = period.seconds();
        let mut out: BTreeMap<(u64, String), Cell> = BTreeMap::new();
        for ((start, m, _, p), cell) in lock(&self.hours).iter() {
            if principal.is_some_and(|x| x != p) {
                continue;
            }
            let key = match group_by {
                GroupBy::Model => m.clone(),
                GroupBy::Principal => p.clone(),
            };
            out.entry((start - start % width, key))
                .or_default()
                .merge(cell);
        }
        out.into_iter()
            .map(|((bucket_start, key), c)| UsageRow {
                bucket_start,
                key,
                requests: c.requests,
                errors: c.errors,
                tokens_input: c.tokens_input,
                tokens_output: c.tokens_output,
                estimated_cost: c.cost,
            })
            .collect()
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(
        model: &'a str,
        principal: &'a str,
        ms: f64,
        tin: u64,
        error: bool,
    ) -> UsageEvent<'a> {
        UsageEvent {
            model,
            version: "1.0.0",
            principal,
            tokens_input: tin,
            tokens_output: 2,
            cost: 0.5,
            latency_ms: ms,
            error,
        }
    }

    #[test]
    fn window_sums_and_percentiles() {
        let s = UsageStore::new();
        let now = 10 * HOUR + 30;
        for i in 1..=100 {
            s.record(&ev("m", "a", i as f64, 10, i % 10 == 0), now);
        }
        s.record(&ev("other", "a", 1.0, 10, false), now);
        let w = s.model_window("m", Period::Hourly, None, now);
        assert_eq!(w.requests_count, 100);
        assert_eq!(w.tokens_input, 1000);
        assert_eq!(w.tokens_output, 200);
        assert!((w.error_rate - 0.1).abs() < 1e-9);
        assert!((w.estimated_cost - 50.0).abs() < 1e-9);
        assert!((w.avg_response_ms - 50.5).abs() < 1e-9);
        // within the histogram's 10% resolution
        assert!(
            w.p50_response_ms >= 50.0 && w.p50_response_ms <= 55.0,
            "{}",
            w.p50_response_ms
        );
        assert!(
            w.p99_response_ms >= 99.0 && w.p99_response_ms <= 109.0,
            "{}",
            w.p99_response_ms
        );
    }

    #[test]
    fn windows_forget_old_requests() {
        let s = UsageStore::new();
        s.record(&ev("m", "a", 1.0, 1, false), 0);
        s.record(&ev("m", "a", 1.0, 1, false), 2 * HOUR);
        let now = 2 * HOUR + 10;
        assert_eq!(
            s.model_window("m", Period::Hourly, None, now)
                .requests_count,
            1
        );
        assert_eq!(
            s.model_window("m", Period::Daily, None, now).requests_count,
            2
        );
    }

    #[test]
    fn usage_groups_by_bucket_and_key() {
        let s = UsageStore::new();
        s.record(&ev("m", "alice", 1.0, 3, false), HOUR + 5);
        s.record(&ev("m", "bob", 1.0, 4, false), HOUR + 6);
        s.record(&ev("n", "alice", 1.0, 5, false), 2 * HOUR + 1);
        let by_model = s.usage(Period::Hourly, GroupBy::Model, None);
        assert_eq!(by_model.len(), 2);
        assert_eq!(
            (by_model[0].key.as_str(), by_model[0].tokens_input),
            ("m", 7)
        );
        let daily = s.usage(Period::Daily, GroupBy::Principal, None);
        assert_eq!(daily.len(), 2);
        let alice = s.usage(Period::Daily, GroupBy::Model, Some("alice"));
        assert_eq!(alice.iter().map(|r| r.tokens_input).sum::<u64>(), 8);
    }

    #[test]
    fn memory_is_bounded_by_retention() {
        let s = UsageStore::new();
        for minute in 0..(KEEP_MINUTES + 100) {
            s.record(&ev("m", "a", 1.0, 1, false), minute * MINUTE);
        }
        assert!(lock(&s.minutes).len() as u64 <= KEEP_MINUTES + 1);
    }
}
