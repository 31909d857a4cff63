//! Prometheus metrics: every `anya_ai_*` name is defined here, and each event is recorded by one
//! function here, called from one place (the HTTP middleware, the predict path, the engine's
//! batch observer, model loads). Label values come from the registry (model ids and versions
//! that exist) or from fixed sets (route templates, error codes), never from raw request input.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::engine::{BatchObserver, BatchReport, RunStats};
use crate::models::Generation;
use crate::registry::{Registry as ModelRegistry, VersionState};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

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
    requests: IntCounterVec,
    duration: HistogramVec,
    errors: IntCounterVec,
    model_loads: HistogramVec,
    batch_size: HistogramVec,
    batch_compute: HistogramVec,
    queue_wait: HistogramVec,
    queue_size: IntGaugeVec,
    active_sequences: IntGaugeVec,
    tokens: IntCounterVec,
    ttft: HistogramVec,
    itl: HistogramVec,
    in_flight: IntGauge,
    models: IntGaugeVec,
    model_info: IntGaugeVec,
    cancelled: IntCounterVec,
    cache_requests: IntCounterVec,
    cache_errors: IntCounterVec,
    cache_lookup: HistogramVec,
    cache_entries: IntGauge,
    traffic_weight: GaugeVec,
    canary_checks: IntCounterVec,
    canary_weight: GaugeVec,
    shadow: IntCounterVec,
    shadow_latency: HistogramVec,
    fallbacks: IntCounterVec,
    retries: IntCounterVec,
    circuit: IntGaugeVec,
    ratelimit_fallbacks: IntCounterVec,
    job_chunks: IntCounterVec,
    job_inputs: IntCounterVec,
    drift_score: GaugeVec,
    drift_threshold: GaugeVec,
    drift_detected: IntGaugeVec,
    /// Every `anya_ai_*` family name, registered or not yet observed.
    names: Vec<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn hist(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definition")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mv = &["model", "version"];
        let mut m = Metrics {
            names: Vec::new(),
            traffic_weight: GaugeVec::new(
                Opts::new(
                    "anya_ai_traffic_weight",
                    "Share (out of 100) of a model's unpinned requests routed to each target model and version by its traffic policy.",
                ),
                &["model", "target", "version"],
            )
            .expect("static metric definition"),
            drift_score: GaugeVec::new(
                Opts::new(
                    "anya_ai_drift_score",
                    "Drift between a version's reference window and its current window, per signal (token_length_psi, centroid_cosine, centroid_euclidean, mmd2, label_psi, label_js, mean_confidence_drop).",
                ),
                &["model", "version", "signal"],
            )
            .expect("static metric definition"),
            drift_threshold: GaugeVec::new(
                Opts::new(
                    "anya_ai_drift_threshold",
                    "The score at or above which a drift signal counts as drift.",
                ),
                &["model", "version", "signal"],
            )
            .expect("static metric definition"),
            drift_detected: gauge(
                "anya_ai_drift_detected",
                "1 when any drift signal of the version is at or above its threshold.",
                mv,
            ),
            canary_checks: counter(
                "anya_ai_canary_checks_total",
                "Canary analysis checks by verdict (stepped, held, failed, rolled_back, promoted).",
                &["model", "version", "verdict"],
            ),
            canary_weight: GaugeVec::new(
                Opts::new(
                    "anya_ai_canary_weight",
                    "A canary's share of traffic (out of 100) after its last check.",
                ),
                mv,
            )
            .expect("static metric definition"),
            shadow: counter(
                "anya_ai_shadow_total",
                "Shadowed requests by result: agree, disagree (the shadow's answer differed from the primary's), error, dropped (the shadow's queue was busy).",
                &["model", "version", "result"],
            ),
            shadow_latency: hist(
                "anya_ai_shadow_latency_seconds",
                "Latency of shadowed requests, for the primary and for the shadow version (labelled by the shadow version).",
                &["model", "version", "role"],
                LATENCY_BUCKETS,
            ),
            fallbacks: counter(
                "anya_ai_fallbacks_total",
                "Requests passed from a model to one of its fallbacks, by reason (unreachable, timeout, upstream_5xx, rate_limited, circuit_open, queue_full, unavailable).",
                &["model", "to", "reason"],
            ),
            retries: counter(
                "anya_ai_retries_total",
                "Further attempts on the same remote provider after a failure worth another try.",
                &["model"],
            ),
            circuit: gauge(
                "anya_ai_circuit_state",
                "Circuit breaker state per target (model@version): 0 closed, 1 half-open, 2 open.",
                &["target"],
            ),
            cache_requests: counter(
                "anya_ai_cache_requests_total",
                "Cache lookups per tier and result (hit, miss, error).",
                &["tier", "result"],
            ),
            cache_errors: counter(
                "anya_ai_cache_errors_total",
                "Cache tier failures (errors, time-outs, undecodable values); the request went on without the cache.",
                &["tier", "operation"],
            ),
            cache_lookup: hist(
                "anya_ai_cache_lookup_duration_seconds",
                "Time of one cache lookup per tier.",
                &["tier"],
                LATENCY_BUCKETS,
            ),
            cache_entries: IntGauge::new(
                "anya_ai_cache_entries",
                "Entries (one per cached input) in the in-process cache.",
            )
            .expect("static metric definition"),
            ratelimit_fallbacks: counter(
                "anya_ai_ratelimit_fallbacks_total",
                "Rate-limit checks the shared Redis did not answer, by what was done instead (rate_limits.redis_failure: local, open, closed).",
                &["mode"],
            ),
            job_chunks: counter(
                "anya_ai_job_chunks_total",
                "Chunks of batch jobs settled by this replica, by how: computed here, skipped (job cancelled or chunk already settled), or claimed from a replica that left them idle.",
                &["outcome"],
            ),
            job_inputs: counter(
                "anya_ai_job_inputs_total",
                "Inputs of batch jobs computed by this replica, by result (ok or error).",
                &["result"],
            ),
            registry: Registry::new(),
            requests: counter(
                "anya_ai_requests_total",
                "HTTP requests answered, by route template and status code.",
                &["model", "version", "endpoint", "status"],
            ),
            duration: hist(
                "anya_ai_request_duration_seconds",
                "Time from a request's arrival to its response headers.",
                &["model", "version", "endpoint"],
                LATENCY_BUCKETS,
            ),
            errors: counter(
                "anya_ai_errors_total",
                "Error responses by error code.",
                &["model", "version", "endpoint", "code"],
            ),
            // A histogram named `anya_ai_model_load`, so the documented series
            // `anya_ai_model_load_count` (the number of loads) exists and passes promtool's
            // lint, which refuses `_count` on a counter; its buckets are load times in seconds.
            model_loads: hist(
                "anya_ai_model_load",
                "Model version loads by result (success or failure): _count is the number of loads, the buckets their duration in seconds.",
                &["model", "version", "result"],
                &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            ),
            batch_size: hist(
                "anya_ai_batch_size",
                "Inputs per batch the worker ran.",
                mv,
                BATCH_BUCKETS,
            ),
            batch_compute: hist(
                "anya_ai_compute_duration_seconds",
                "Compute time of one batch on the model's worker.",
                mv,
                LATENCY_BUCKETS,
            ),
            queue_wait: hist(
                "anya_ai_queue_duration_seconds",
                "Time a request waited in the queue before its batch started.",
                mv,
                LATENCY_BUCKETS,
            ),
            queue_size: gauge(
                "anya_ai_queue_size",
                "Requests waiting for a batch.",
                mv,
            ),
            active_sequences: gauge(
                "anya_ai_active_sequences",
                "Text generation: sequences holding a KV-cache slot now (decoding or reading their prompt).",
                mv,
            ),
            tokens: counter(
                "anya_ai_tokens_total",
                "Tokens processed (input) and generated (output).",
                &["model", "version", "direction"],
            ),
            ttft: hist(
                "anya_ai_time_to_first_token_seconds",
                "Text generation: compute time until the first generated token.",
                mv,
                LATENCY_BUCKETS,
            ),
            itl: hist(
                "anya_ai_inter_token_latency_seconds",
                "Text generation: mean time between generated tokens, per sequence.",
                mv,
                TOKEN_LATENCY_BUCKETS,
            ),
            in_flight: IntGauge::new(
                "anya_ai_requests_in_flight",
                "Requests being processed now.",
            )
            .expect("static metric definition"),
            models: gauge(
                "anya_ai_models",
                "Model versions by state (loading, ready, failed).",
                &["state"],
            ),
            model_info: gauge(
                "anya_ai_model_info",
                "Loaded model versions and the device each runs on (cpu, cuda:N); the value is always 1.",
                &["model", "version", "device"],
            ),
            cancelled: counter(
                "anya_ai_cancelled_total",
                "Requests dropped before compute because the client had gone.",
                mv,
            ),
        };
        let build = gauge(
            "anya_ai_build_info",
            "Build information; the value is always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let r = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.model_loads.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.batch_compute.clone()),
            Box::new(m.queue_wait.clone()),
            Box::new(m.queue_size.clone()),
            Box::new(m.active_sequences.clone()),
            Box::new(m.tokens.clone()),
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.models.clone()),
            Box::new(m.model_info.clone()),
            Box::new(m.cancelled.clone()),
            Box::new(m.cache_requests.clone()),
            Box::new(m.cache_errors.clone()),
            Box::new(m.cache_lookup.clone()),
            Box::new(m.cache_entries.clone()),
            Box::new(m.traffic_weight.clone()),
            Box::new(m.canary_checks.clone()),
            Box::new(m.canary_weight.clone()),
            Box::new(m.shadow.clone()),
            Box::new(m.shadow_latency.clone()),
            Box::new(m.fallbacks.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.circuit.clone()),
            Box::new(m.ratelimit_fallbacks.clone()),
            Box::new(m.job_chunks.clone()),
            Box::new(m.job_inputs.clone()),
            Box::new(m.drift_score.clone()),
            Box::new(m.drift_threshold.clone()),
            Box::new(m.drift_detected.clone()),
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
        self.requests
            .with_label_values(&[model, version, endpoint, &status_text])
            .inc();
        self.duration
            .with_label_values(&[model, version, endpoint])
            .observe(elapsed.as_secs_f64());
        if let Some(code) = code {
            self.errors
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
        self.queue_wait
            .with_label_values(&lv)
            .observe(stats.queue.as_secs_f64());
        self.tokens
            .with_label_values(&[lv[0], lv[1], "input"])
            .inc_by(stats.tokens_processed as u64);
        if stats.tokens_generated > 0 {
            self.tokens
                .with_label_values(&[lv[0], lv[1], "output"])
                .inc_by(stats.tokens_generated as u64);
        }
        for g in generations {
            if g.tokens.is_empty() {
                continue;
            }
            self.ttft
                .with_label_values(&lv)
                .observe(g.time_to_first_token);
            if g.tokens.len() > 1 {
                let per =
                    (g.duration - g.time_to_first_token).max(0.0) / (g.tokens.len() - 1) as f64;
                self.itl.with_label_values(&lv).observe(per);
            }
        }
    }

    /// One lookup in one cache tier.
    pub fn observe_cache(&self, tier: crate::cache::Tier, result: &str, took: Duration) {
        self.cache_requests
            .with_label_values(&[tier.as_str(), result])
            .inc();
        self.cache_lookup
            .with_label_values(&[tier.as_str()])
            .observe(took.as_secs_f64());
        if result == "error" {
            self.cache_errors
                .with_label_values(&[tier.as_str(), "read"])
                .inc();
        }
    }

    /// A failed write to the Redis tier.
    pub fn observe_cache_write_error(&self) {
        self.cache_errors
            .with_label_values(&["redis", "write"])
            .inc();
    }

    pub fn observe_load(&self, model: &str, version: &str, ok: bool, took: Duration) {
        self.model_loads
            .with_label_values(&[model, version, if ok { "success" } else { "failure" }])
            .observe(took.as_secs_f64());
    }

    /// The engine calls this after every batch of `model`@`version`.
    pub fn batch_observer(self: &Arc<Self>, model: &str, version: &str) -> BatchObserver {
        let size = self.batch_size.with_label_values(&[model, version]);
        let compute = self.batch_compute.with_label_values(&[model, version]);
        let cancelled = self.cancelled.with_label_values(&[model, version]);
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
        self.canary_checks
            .with_label_values(&[model, version, verdict])
            .inc();
        self.canary_weight
            .with_label_values(&[model, version])
            .set(weight);
    }

    /// A request passed from `model` to its fallback `to`.
    pub fn fallback(&self, model: &str, to: &str, reason: &str) {
        self.fallbacks.with_label_values(&[model, to, reason]).inc();
    }

    /// Retries on a remote model's provider.
    pub fn retries(&self, model: &str, n: u64) {
        self.retries.with_label_values(&[model]).inc_by(n);
    }

    /// A target's circuit state (0 closed, 1 half-open, 2 open).
    pub fn circuit_state(&self, target: &str, state: i64) {
        self.circuit.with_label_values(&[target]).set(state);
    }

    /// A chunk of a batch job settled here (`computed`, `skipped`) or taken over (`claimed`).
    pub fn job_chunk(&self, outcome: &str) {
        self.job_chunks.with_label_values(&[outcome]).inc();
    }

    /// Inputs of batch jobs computed here (`ok`, `error`).
    pub fn job_inputs(&self, result: &str, n: u64) {
        if n > 0 {
            self.job_inputs.with_label_values(&[result]).inc_by(n);
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
        self.shadow
            .with_label_values(&[model, version, result])
            .inc();
        if let Some((primary, shadow)) = latencies {
            self.shadow_latency
                .with_label_values(&[model, version, "primary"])
                .observe(primary.as_secs_f64());
            self.shadow_latency
                .with_label_values(&[model, version, "shadow"])
                .observe(shadow.as_secs_f64());
        }
    }

    /// Set the drift gauges from a report (at scrape time).
    pub fn set_drift(&self, report: &[(String, crate::drift::VersionDrift)]) {
        self.drift_score.reset();
        self.drift_threshold.reset();
        self.drift_detected.reset();
        for (model, d) in report {
            for s in &d.signals {
                let labels = [model.as_str(), d.version.as_str(), s.signal];
                self.drift_score.with_label_values(&labels).set(s.value);
                if s.threshold.is_finite() {
                    self.drift_threshold
                        .with_label_values(&labels)
                        .set(s.threshold);
                }
            }
            if !d.signals.is_empty() {
                self.drift_detected
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

    /// The same figures as `render`, summed over their labels into one compact struct (for the
    /// web console's `GET /stats`): counters and histograms are cumulative since the start, so
    /// a reader takes rates and interval quantiles from the difference of two snapshots.
    pub fn summary(
        &self,
        models: &ModelRegistry,
        traffic: &crate::traffic::Traffic,
        in_flight: usize,
        cache_entries: u64,
    ) -> Stats {
        self.refresh(models, traffic, in_flight, cache_entries);
        let families = self.registry.gather();
        let find = |name: &str| families.iter().find(|f| f.name() == name);
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.label
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let counter_sum = |name: &str, keep: &dyn Fn(&prometheus::proto::Metric) -> bool| -> u64 {
            find(name).map_or(0, |f| {
                f.metric
                    .iter()
                    .filter(|m| keep(m))
                    .map(|m| m.counter.value() as u64)
                    .sum()
            })
        };
        let histogram = |name: &str| -> HistogramStats {
            let mut h = HistogramStats::default();
            for m in find(name).map_or(&[][..], |f| &f.metric[..]) {
                let p = &m.histogram;
                h.count += p.sample_count();
                h.sum += p.sample_sum();
                for (i, b) in p.bucket.iter().enumerate() {
                    match h.buckets.get_mut(i) {
                        Some(slot) => slot.count += b.cumulative_count(),
                        None => h.buckets.push(BucketCount {
                            le: b.upper_bound(),
                            count: b.cumulative_count(),
                        }),
                    }
                }
            }
            h
        };
        let status = |m: &prometheus::proto::Metric| label(m, "status").parse::<u16>().unwrap_or(0);
        let mut queues = Vec::new();
        if let Some(f) = find("anya_ai_queue_size") {
            for m in &f.metric {
                queues.push(QueueStats {
                    model: label(m, "model"),
                    version: label(m, "version"),
                    queue_size: m.gauge.value().max(0.0) as u64,
                });
            }
        }
        let gauge_sum = |name: &str| -> u64 {
            find(name).map_or(0, |f| {
                f.metric
                    .iter()
                    .map(|m| m.gauge.value().max(0.0) as u64)
                    .sum()
            })
        };
        let models_in = |state: &str| -> u64 {
            find("anya_ai_models").map_or(0, |f| {
                f.metric
                    .iter()
                    .filter(|m| label(m, "state") == state)
                    .map(|m| m.gauge.value().max(0.0) as u64)
                    .sum()
            })
        };
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Stats {
            at,
            requests: counter_sum("anya_ai_requests_total", &|_| true),
            client_errors: counter_sum("anya_ai_requests_total", &|m| {
                (400..500).contains(&status(m))
            }),
            server_errors: counter_sum("anya_ai_requests_total", &|m| status(m) >= 500),
            in_flight: in_flight as u64,
            latency_seconds: histogram("anya_ai_request_duration_seconds"),
            batch_size: histogram("anya_ai_batch_size"),
            queue_size: queues.iter().map(|q| q.queue_size).sum(),
            queues,
            active_sequences: gauge_sum("anya_ai_active_sequences"),
            tokens_input: counter_sum("anya_ai_tokens_total", &|m| {
                label(m, "direction") == "input"
            }),
            tokens_output: counter_sum("anya_ai_tokens_total", &|m| {
                label(m, "direction") == "output"
            }),
            time_to_first_token_seconds: histogram("anya_ai_time_to_first_token_seconds"),
            cache_hits: counter_sum("anya_ai_cache_requests_total", &|m| {
                label(m, "result") == "hit"
            }),
            cache_misses: counter_sum("anya_ai_cache_requests_total", &|m| {
                label(m, "result") == "miss"
            }),
            cache_entries,
            models_ready: models_in("ready"),
            models_loading: models_in("loading"),
            models_failed: models_in("failed"),
        }
    }

    /// Brings the gauges that are read at scrape time up to date.
    fn refresh(
        &self,
        models: &ModelRegistry,
        traffic: &crate::traffic::Traffic,
        in_flight: usize,
        cache_entries: u64,
    ) {
        self.in_flight.set(in_flight as i64);
        self.cache_entries.set(cache_entries as i64);
        let (mut loading, mut ready, mut failed) = (0, 0, 0);
        self.model_info.reset();
        self.queue_size.reset();
        self.active_sequences.reset();
        self.traffic_weight.reset();
        for (model, target, version, weight) in traffic.all_weights() {
            self.traffic_weight
                .with_label_values(&[model.as_str(), target.as_str(), version.as_str()])
                .set(weight);
        }
        for rec in models.list() {
            for (v, ver) in &rec.versions {
                let version = v.to_string();
                match &ver.state {
                    VersionState::Loading => loading += 1,
                    VersionState::Failed(_) => failed += 1,
                    VersionState::Draining(_) => {}
                    VersionState::Ready(h) => {
                        ready += 1;
                        self.model_info
                            .with_label_values(&[
                                rec.id.as_str(),
                                version.as_str(),
                                h.frontend().device.as_str(),
                            ])
                            .set(1);
                        self.queue_size
                            .with_label_values(&[rec.id.as_str(), version.as_str()])
                            .set(h.queue_len() as i64);
                        self.active_sequences
                            .with_label_values(&[rec.id.as_str(), version.as_str()])
                            .set(h.active_sequences() as i64);
                    }
                }
            }
        }
        self.models.with_label_values(&["loading"]).set(loading);
        self.models.with_label_values(&["ready"]).set(ready);
        self.models.with_label_values(&["failed"]).set(failed);
    }
}

/// The server's own figures in one compact snapshot (`GET /stats`), summed over models,
/// versions and routes. Counters and histograms count since the server started.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// When the snapshot was taken, in seconds since the Unix epoch.
    pub at: f64,
    /// HTTP requests answered (probes, `/metrics` and `/stats` excepted).
    pub requests: u64,
    /// Of those, answered 4xx.
    pub client_errors: u64,
    /// Of those, answered 5xx.
    pub server_errors: u64,
    /// Requests being processed now.
    pub in_flight: u64,
    /// Time from a request's arrival to its response headers.
    pub latency_seconds: HistogramStats,
    /// Inputs per batch the model workers ran.
    pub batch_size: HistogramStats,
    /// Requests waiting for a batch now, over every loaded version.
    pub queue_size: u64,
    /// The same per loaded model version.
    pub queues: Vec<QueueStats>,
    /// Text generation: sequences holding a KV-cache slot now.
    pub active_sequences: u64,
    /// Tokens processed (input).
    pub tokens_input: u64,
    /// Tokens generated (output).
    pub tokens_output: u64,
    /// Text generation: compute time until the first generated token.
    pub time_to_first_token_seconds: HistogramStats,
    /// Response cache lookups that hit (any tier).
    pub cache_hits: u64,
    /// Response cache lookups that missed (any tier).
    pub cache_misses: u64,
    /// Entries in the in-process cache.
    pub cache_entries: u64,
    pub models_ready: u64,
    pub models_loading: u64,
    pub models_failed: u64,
}

/// A histogram summed over its labels: `buckets` are cumulative (`count` observations at most
/// `le`), as in Prometheus, without the `+Inf` bucket (that is `count`).
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct HistogramStats {
    pub count: u64,
    pub sum: f64,
    pub buckets: Vec<BucketCount>,
}

#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct BucketCount {
    pub le: f64,
    pub count: u64,
}

/// One loaded model version's queue.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub model: String,
    pub version: String,
    pub queue_size: u64,
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
        self.ratelimit_fallbacks.with_label_values(&[mode]).inc();
    }
}
