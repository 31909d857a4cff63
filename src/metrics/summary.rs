//! `GET /stats`: the metrics summed over their labels into one compact snapshot, and the gauges
//! read at scrape time.

use super::Metrics;
use crate::registry::{Registry as ModelRegistry, VersionState};

impl Metrics {
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
    pub(super) fn refresh(
        &self,
        models: &ModelRegistry,
        traffic: &crate::traffic::Traffic,
        in_flight: usize,
        cache_entries: u64,
    ) {
        self.http.in_flight.set(in_flight as i64);
        self.cache.cache_entries.set(cache_entries as i64);
        let (mut loading, mut ready, mut failed) = (0, 0, 0);
        self.model.model_info.reset();
        self.model.queue_size.reset();
        self.model.active_sequences.reset();
        self.traffic.traffic_weight.reset();
        for (model, target, version, weight) in traffic.all_weights() {
            self.traffic
                .traffic_weight
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
                        self.model
                            .model_info
                            .with_label_values(&[
                                rec.id.as_str(),
                                version.as_str(),
                                h.frontend().device.as_str(),
                            ])
                            .set(1);
                        self.model
                            .queue_size
                            .with_label_values(&[rec.id.as_str(), version.as_str()])
                            .set(h.queue_len() as i64);
                        self.model
                            .active_sequences
                            .with_label_values(&[rec.id.as_str(), version.as_str()])
                            .set(h.active_sequences() as i64);
                    }
                }
            }
        }
        self.model
            .models
            .with_label_values(&["loading"])
            .set(loading);
        self.model.models.with_label_values(&["ready"]).set(ready);
        self.model.models.with_label_values(&["failed"]).set(failed);
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
