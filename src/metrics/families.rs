//! The `anya_ai_*` metric families, defined by concern: their names, help texts, labels and
//! buckets.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub(super) fn hist(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definition")
}

pub(super) fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

pub(super) fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

/// HTTP requests: counts, durations, errors, and those in flight.
pub(super) struct HttpFamilies {
    pub(super) requests: IntCounterVec,
    pub(super) duration: HistogramVec,
    pub(super) errors: IntCounterVec,
    pub(super) in_flight: IntGauge,
}

impl HttpFamilies {
    pub(super) fn new() -> Self {
        Self {
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
            in_flight: IntGauge::new(
                "anya_ai_requests_in_flight",
                "Requests being processed now.",
            )
            .expect("static metric definition"),
        }
    }
}

/// Model versions and their engines: loads, batches, queues, tokens, generation latencies,
/// states and cancellations.
pub(super) struct ModelFamilies {
    pub(super) model_loads: HistogramVec,
    pub(super) batch_size: HistogramVec,
    pub(super) batch_compute: HistogramVec,
    pub(super) queue_wait: HistogramVec,
    pub(super) queue_size: IntGaugeVec,
    pub(super) active_sequences: IntGaugeVec,
    pub(super) tokens: IntCounterVec,
    pub(super) ttft: HistogramVec,
    pub(super) itl: HistogramVec,
    pub(super) models: IntGaugeVec,
    pub(super) model_info: IntGaugeVec,
    pub(super) cancelled: IntCounterVec,
}

impl ModelFamilies {
    pub(super) fn new() -> Self {
        let mv = &["model", "version"];
        Self {
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
        }
    }
}

/// The response cache's lookups, failures, lookup time and entries.
pub(super) struct CacheFamilies {
    pub(super) cache_requests: IntCounterVec,
    pub(super) cache_errors: IntCounterVec,
    pub(super) cache_lookup: HistogramVec,
    pub(super) cache_entries: IntGauge,
}

impl CacheFamilies {
    pub(super) fn new() -> Self {
        Self {
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
        }
    }
}

/// Traffic policies and resilience: weights, canaries, shadows, fallbacks, retries, circuits
/// and rate-limit fallbacks.
pub(super) struct TrafficFamilies {
    pub(super) traffic_weight: GaugeVec,
    pub(super) canary_checks: IntCounterVec,
    pub(super) canary_weight: GaugeVec,
    pub(super) shadow: IntCounterVec,
    pub(super) shadow_latency: HistogramVec,
    pub(super) fallbacks: IntCounterVec,
    pub(super) retries: IntCounterVec,
    pub(super) circuit: IntGaugeVec,
    pub(super) ratelimit_fallbacks: IntCounterVec,
}

impl TrafficFamilies {
    pub(super) fn new() -> Self {
        let mv = &["model", "version"];
        Self {
        traffic_weight: GaugeVec::new(
            Opts::new(
                "anya_ai_traffic_weight",
                "Share (out of 100) of a model's unpinned requests routed to each target model and version by its traffic policy.",
            ),
            &["model", "target", "version"],
        )
        .expect("static metric definition"),
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
        ratelimit_fallbacks: counter(
            "anya_ai_ratelimit_fallbacks_total",
            "Rate-limit checks the shared Redis did not answer, by what was done instead (rate_limits.redis_failure: local, open, closed).",
            &["mode"],
        ),
        }
    }
}

/// Batch jobs settled and computed by this replica.
pub(super) struct JobFamilies {
    pub(super) job_chunks: IntCounterVec,
    pub(super) job_inputs: IntCounterVec,
}

impl JobFamilies {
    pub(super) fn new() -> Self {
        Self {
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
        }
    }
}

/// Drift scores, thresholds and verdicts per version.
pub(super) struct DriftFamilies {
    pub(super) drift_score: GaugeVec,
    pub(super) drift_threshold: GaugeVec,
    pub(super) drift_detected: IntGaugeVec,
}

impl DriftFamilies {
    pub(super) fn new() -> Self {
        let mv = &["model", "version"];
        Self {
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
        }
    }
}
