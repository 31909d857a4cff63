//! Prometheus metrics: every `anya_ai_*` name is defined here, and each event is recorded by one
//! function here, called from one place (the HTTP middleware, the predict path, the engine's
//! batch observer, model loads). Label values come from the registry (model ids and versions
//! that exist) or from fixed sets (route templates, error codes), never from raw request input.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};

use crate::engine::{BatchObserver, BatchReport, RunStats};
use crate::models::Generation;
use crate::registry::Registry as ModelRegistry;

mod families;
mod summary;

use families::{
    gauge, CacheFamilies, DriftFamilies, HttpFamilies, JobFamilies, ModelFamilies, TrafficFamilies,
};
pub use summary::{BucketCount, HistogramStats, QueueStats, Stats};

/// Which model version a response belongs to (a response extension set by the handlers).
#[derive(Debug, Clone, Default)]
pub struct ModelLabel {
    pub model: String,
    pub version: String,
    pub batch_size: Option<usize>,
    pub tokens_input: u64,
    pub tokens_output: u64,
    /// Estimated cost from the manifest's prices.
    pub cost: f64,
    /// Tokens and usage are recorded by the answer itself when it ends (a stream), not from
    /// this label when the response headers go out.
    pub deferred: bool,
}

pub struct Metrics {
    registry: Registry,
    http: HttpFamilies,
    model: ModelFamilies,
    cache: CacheFamilies,
    traffic: TrafficFamilies,
    jobs: JobFamilies,
    drift: DriftFamilies,
    /// Every `anya_ai_*` family name, registered or not yet observed.
    names: Vec<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut m = Metrics {
            registry: Registry::new(),
            http: HttpFamilies::new(),
            model: ModelFamilies::new(),
            cache: CacheFamilies::new(),
            traffic: TrafficFamilies::new(),
            jobs: JobFamilies::new(),
            drift: DriftFamilies::new(),
            names: Vec::new(),
        };
        let build = gauge(
            "anya_ai_build_info",
            "Build information; the value is always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let r = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.http.requests.clone()),
            Box::new(m.http.duration.clone()),
            Box::new(m.http.errors.clone()),
            Box::new(m.model.model_loads.clone()),
            Box::new(m.model.batch_size.clone()),
            Box::new(m.model.batch_compute.clone()),
            Box::new(m.model.queue_wait.clone()),
            Box::new(m.model.queue_size.clone()),
            Box::new(m.model.active_sequences.clone()),
            Box::new(m.model.tokens.clone()),
            Box::new(m.model.ttft.clone()),
            Box::new(m.model.itl.clone()),
            Box::new(m.http.in_flight.clone()),
            Box::new(m.model.models.clone()),
            Box::new(m.model.model_info.clone()),
            Box::new(m.model.cancelled.clone()),
            Box::new(m.cache.cache_requests.clone()),
            Box::new(m.cache.cache_errors.clone()),
            Box::new(m.cache.cache_lookup.clone()),
            Box::new(m.cache.cache_entries.clone()),
            Box::new(m.traffic.traffic_weight.clone()),
            Box::new(m.traffic.canary_checks.clone()),
            Box::new(m.traffic.canary_weight.clone()),
            Box::new(m.traffic.shadow.clone()),
            Box::new(m.traffic.shadow_latency.clone()),
            Box::new(m.traffic.fallbacks.clone()),
            Box::new(m.traffic.retries.clone()),
            Box::new(m.traffic.circuit.clone()),
            Box::new(m.traffic.ratelimit_fallbacks.clone()),
            Box::new(m.jobs.job_chunks.clone()),
            Box::new(m.jobs.job_inputs.clone()),
            Box::new(m.drift.drift_score.clone()),
            Box::new(m.drift.drift_threshold.clone()),
            Box::new(m.drift.drift_detected.clone()),
            Box::new(build),
        ];
        let mut names = Vec::new();
        for c in all {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            r.register(c).expect("metric registered once");
        }
        m.names = names;
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        Arc::new(m)
    }

    /// The name of every `anya_ai_*` family this server exports (a family shows in the
    /// exposition once it has a sample).
    pub fn family_names(&self) -> &[String] {
        &self.names
    }

    /// One HTTP response (from the middleware).
    pub fn observe_http(
        &self,
        label: &ModelLabel,
        endpoint: &str,
        status: u16,
        code: Option<&str>,
        elapsed: Duration,
    ) {
        let (model, version) = (label.model.as_str(), label.version.as_str());
        let status_text = status.to_string();
        self.http
            .requests
            .with_label_values(&[model, version, endpoint, &status_text])
            .inc();
        self.http
            .duration
            .with_label_values(&[model, version, endpoint])
            .observe(elapsed.as_secs_f64());
        if let Some(code) = code {
            self.http
                .errors
                .with_label_values(&[model, version, endpoint, code])
                .inc();
        }
    }

    /// One successful inference request (from the predict path).
    pub fn observe_inference(
        &self,
        label: &ModelLabel,
        stats: &RunStats,
        generations: &[&Generation],
    ) {
        let lv = [label.model.as_str(), label.version.as_str()];
        self.model
            .queue_wait
            .with_label_values(&lv)
            .observe(stats.queue.as_secs_f64());
        self.model
            .tokens
            .with_label_values(&[lv[0], lv[1], "input"])
            .inc_by(stats.tokens_processed as u64);
        if stats.tokens_generated > 0 {
            self.model
                .tokens
                .with_label_values(&[lv[0], lv[1], "output"])
                .inc_by(stats.tokens_generated as u64);
        }
        for g in generations {
            if g.tokens.is_empty() {
                continue;
            }
            self.model
                .ttft
                .with_label_values(&lv)
                .observe(g.time_to_first_token);
            if g.tokens.len() > 1 {
                let per =
                    (g.duration - g.time_to_first_token).max(0.0) / (g.tokens.len() - 1) as f64;
                self.model.itl.with_label_values(&lv).observe(per);
            }
        }
    }

    /// One lookup in one cache tier.
    pub fn observe_cache(&self, tier: crate::cache::Tier, result: &str, took: Duration) {
        self.cache
            .cache_requests
            .with_label_values(&[tier.as_str(), result])
            .inc();
        self.cache
            .cache_lookup
            .with_label_values(&[tier.as_str()])
            .observe(took.as_secs_f64());
        if result == "error" {
            self.cache
                .cache_errors
                .with_label_values(&[tier.as_str(), "read"])
                .inc();
        }
    }

    /// A failed write to the Redis tier.
    pub fn observe_cache_write_error(&self) {
        self.cache
            .cache_errors
            .with_label_values(&["redis", "write"])
            .inc();
    }

    pub fn observe_load(&self, model: &str, version: &str, ok: bool, took: Duration) {
        self.model
            .model_loads
            .with_label_values(&[model, version, if ok { "success" } else { "failure" }])
            .observe(took.as_secs_f64());
    }

    /// The engine calls this after every batch of `model`@`version`.
    pub fn batch_observer(self: &Arc<Self>, model: &str, version: &str) -> BatchObserver {
        let size = self.model.batch_size.with_label_values(&[model, version]);
        let compute = self
            .model
            .batch_compute
            .with_label_values(&[model, version]);
        let cancelled = self.model.cancelled.with_label_values(&[model, version]);
        Arc::new(move |r: &BatchReport| {
            if r.size > 0 {
                size.observe(r.size as f64);
                compute.observe(r.compute.as_secs_f64());
            }
            if r.cancelled > 0 {
                cancelled.inc_by(r.cancelled as u64);
            }
        })
    }

    /// One canary check (the serving core's traffic task).
    pub fn observe_canary(&self, model: &str, version: &str, verdict: &str, weight: f64) {
        self.traffic
            .canary_checks
            .with_label_values(&[model, version, verdict])
            .inc();
        self.traffic
            .canary_weight
            .with_label_values(&[model, version])
            .set(weight);
    }

    /// A request passed from `model` to its fallback `to`.
    pub fn fallback(&self, model: &str, to: &str, reason: &str) {
        self.traffic
            .fallbacks
            .with_label_values(&[model, to, reason])
            .inc();
    }

    /// Retries on a remote model's provider.
    pub fn retries(&self, model: &str, n: u64) {
        self.traffic.retries.with_label_values(&[model]).inc_by(n);
    }

    /// A target's circuit state (0 closed, 1 half-open, 2 open).
    pub fn circuit_state(&self, target: &str, state: i64) {
        self.traffic.circuit.with_label_values(&[target]).set(state);
    }

    /// A chunk of a batch job settled here (`computed`, `skipped`) or taken over (`claimed`).
    pub fn job_chunk(&self, outcome: &str) {
        self.jobs.job_chunks.with_label_values(&[outcome]).inc();
    }

    /// Inputs of batch jobs computed here (`ok`, `error`).
    pub fn job_inputs(&self, result: &str, n: u64) {
        if n > 0 {
            self.jobs.job_inputs.with_label_values(&[result]).inc_by(n);
        }
    }

    /// One shadowed request: its result and, when both ran, both latencies.
    pub fn observe_shadow(
        &self,
        model: &str,
        version: &str,
        result: &str,
        latencies: Option<(Duration, Duration)>,
    ) {
        self.traffic
            .shadow
            .with_label_values(&[model, version, result])
            .inc();
        if let Some((primary, shadow)) = latencies {
            self.traffic
                .shadow_latency
                .with_label_values(&[model, version, "primary"])
                .observe(primary.as_secs_f64());
            self.traffic
                .shadow_latency
                .with_label_values(&[model, version, "shadow"])
                .observe(shadow.as_secs_f64());
        }
    }

    /// Set the drift gauges from a report (at scrape time).
    pub fn set_drift(&self, report: &[(String, crate::drift::VersionDrift)]) {
        self.drift.drift_score.reset();
        self.drift.drift_threshold.reset();
        self.drift.drift_detected.reset();
        for (model, d) in report {
            for s in &d.signals {
                let labels = [model.as_str(), d.version.as_str(), s.signal];
                self.drift
                    .drift_score
                    .with_label_values(&labels)
                    .set(s.value);
                if s.threshold.is_finite() {
                    self.drift
                        .drift_threshold
                        .with_label_values(&labels)
                        .set(s.threshold);
                }
            }
            if !d.signals.is_empty() {
                self.drift
                    .drift_detected
                    .with_label_values(&[model.as_str(), d.version.as_str()])
                    .set(i64::from(d.drift_detected));
            }
        }
    }

    /// The text exposition, with the gauges that are read at scrape time brought up to date.
    pub fn render(
        &self,
        models: &ModelRegistry,
        traffic: &crate::traffic::Traffic,
        in_flight: usize,
        cache_entries: u64,
    ) -> String {
        self.refresh(models, traffic, in_flight, cache_entries);
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl crate::cache::CacheObserver for Metrics {
    fn lookup(&self, tier: crate::cache::Tier, result: &'static str, took: Duration) {
        self.observe_cache(tier, result, took);
    }

    fn write_error(&self) {
        self.observe_cache_write_error();
    }
}

impl crate::ratelimit::RateLimitObserver for Metrics {
    fn fallback(&self, mode: &'static str) {
        self.traffic
            .ratelimit_fallbacks
            .with_label_values(&[mode])
            .inc();
    }
}
