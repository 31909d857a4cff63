//! The sections of the settings (`model`, `server`, `monitoring`, `cache`, `security`,
//! `rate_limits`, `jobs`) and their defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DeviceKind;

/// Batch jobs (native `/jobs`, OpenAI `/v1/batches`) and their webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Where jobs, their inputs and results are stored (an embedded database, fsync at each
    /// commit). `None`: in memory only, lost at exit.
    pub dir: Option<PathBuf>,
    /// Fleet mode: keep jobs in this Redis (`redis://…`, `rediss://…` or `unix://…`) instead of
    /// `dir`, and let every replica work their chunks from one Redis Stream consumer group.
    pub redis_url: Option<String>,
    /// Prefix of the jobs' Redis keys.
    pub redis_prefix: String,
    /// A chunk taken by a replica and left idle this long (the replica died) is claimed by
    /// another. Live replicas refresh their chunks in flight well within it.
    pub claim_idle_ms: u64,
    /// Jobs a principal may have queued or running at once.
    pub max_active_per_principal: usize,
    /// Inputs (or lines) one job may hold.
    pub max_inputs: usize,
    /// Largest file `POST /v1/files` takes.
    pub max_file_bytes: usize,
    /// Inputs per background request of a native job.
    pub chunk: usize,
    /// Background requests of one job in flight at once.
    pub concurrency: usize,
    /// Webhook signing secrets (`whsec_` + base64); each signs every event, so a receiver can
    /// rotate. Empty: webhooks are refused.
    pub webhook_secrets: Vec<String>,
    /// Or a file holding them, one per line.
    pub webhook_secrets_file: Option<PathBuf>,
    /// Hosts webhooks may go to (exact, or `*.example.com`). Empty: any public host. A host
    /// listed here may resolve to a private address; any other may not.
    pub webhook_allowed_hosts: Vec<String>,
    /// One delivery attempt's time-out.
    pub webhook_timeout_ms: u64,
    /// Waits before each retry (ms); their count bounds the attempts.
    pub webhook_retry_delays_ms: Vec<u64>,
}

impl Default for JobsSection {
    fn default() -> Self {
        Self {
            dir: None,
            redis_url: None,
            redis_prefix: "anya:jobs:".into(),
            claim_idle_ms: 30_000,
            max_active_per_principal: 8,
            max_inputs: 1_000_000,
            max_file_bytes: 200 * 1024 * 1024,
            chunk: 32,
            concurrency: 2,
            webhook_secrets: Vec::new(),
            webhook_secrets_file: None,
            webhook_allowed_hosts: Vec::new(),
            webhook_timeout_ms: 10_000,
            webhook_retry_delays_ms: vec![1_000, 5_000, 30_000, 120_000, 600_000],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Model to serve (a repository id or a path). Empty: serve the whole repository.
    pub name: Option<String>,
    /// Version of `name` to make the default (else the manifest's default); `latest` is the
    /// highest version found.
    pub version: Option<String>,
    pub device: DeviceKind,
    /// The model repository: a folder, or `s3://bucket/prefix` (then mirrored into `cache_dir`).
    pub models_dir: PathBuf,
    /// Where versions from an object-store repository are kept (verified) on this machine.
    pub cache_dir: PathBuf,
    /// Run one tiny inference per model before reporting ready.
    pub warmup: bool,
    /// Compute threads per model (0: one per core). Sets `RAYON_NUM_THREADS`, which sizes both
    /// candle's pools and the pool of our CPU llama.
    pub threads: usize,
    /// Rescan the repository this often (seconds; 0: never): new version folders load once
    /// complete, removed ones unload after draining, changed ones reload.
    pub poll_interval_s: f64,
    /// Circuit breakers' defaults (a manifest's `breaker` overrides them for its version).
    pub breaker: crate::spec::manifest::BreakerSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub host: String,
    pub port: u16,
    /// Tokio worker threads for HTTP (0: one per core).
    pub workers: usize,
    pub log_level: String,
    /// `text` (human-readable) or `json`.
    pub log_format: String,
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    /// The body limit of `POST /models/{id}/heads` alone (training examples): large enough by
    /// default for the documented maxima, 20,000 examples of 8 KB in their JSON.
    pub max_train_body_bytes: usize,
    /// On SIGTERM: how long in-flight requests may take to finish before the process exits.
    pub drain_timeout_s: u64,
    /// Requests processed at once; more are answered 503 at once.
    pub max_concurrent_requests: usize,
    /// Most bytes of request headers; more is 431.
    pub max_header_bytes: usize,
    /// How long a request body may take to arrive in full; then 408 `request_timeout`.
    pub body_timeout_ms: u64,
    /// How long a request's headers may take to arrive, from their first byte; then the
    /// connection is closed.
    pub header_read_timeout_ms: u64,
    /// How long a keep-alive connection may sit idle between requests; then it is closed.
    pub keep_alive_timeout_ms: u64,
    /// Open connections at once, HTTP and gRPC (and the metrics port) together; further
    /// clients wait in the listen backlog while idle connections are closed to make room.
    /// Clamped at start to what the process's open-file limit allows.
    pub max_connections: usize,
    /// gRPC (HTTP/2): send a PING after this long without frames from the client, and close
    /// the connection when it is not answered within `grpc_keepalive_timeout_ms`.
    pub grpc_keepalive_interval_ms: u64,
    pub grpc_keepalive_timeout_ms: u64,
    /// gRPC (HTTP/2): streams one connection may have open at once.
    pub grpc_max_concurrent_streams: u32,
    /// Serve the KServe v2 gRPC service (`inference.GRPCInferenceService`) on this port, on
    /// `host`; off when unset. 0 picks a free port (tests).
    pub grpc_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringSection {
    pub enabled: bool,
    pub metrics_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    pub enabled: bool,
    /// Seconds an entry lives.
    pub ttl: u64,
    /// Most entries held in process.
    pub max_size: u64,
    /// Most bytes the in-process entries hold (keys and values, estimated), beside `max_size`.
    pub max_bytes: u64,
    /// A Redis shared by replicas, behind the in-process tier (`redis://…` or `unix://…`).
    pub redis_url: Option<String>,
    /// Longest a Redis call may take before the request goes on without the cache.
    pub redis_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Every route but /health and /ready needs `Authorization: Bearer <JWT>`.
    pub auth_required: bool,
    /// Exact origins allowed by CORS; empty: no CORS.
    pub allowed_origins: Vec<String>,
    /// File holding the HS256 secret (trailing whitespace ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the HS256 secret.
    pub jwt_secret_env: Option<String>,
    /// RS256/ES256 public keys: a PEM file (one or more keys) or a JWKS JSON file (with `kid`s).
    /// Re-read on SIGHUP and when the file changes.
    pub jwt_public_keys: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub jwt_leeway_s: u64,
    /// Serve /metrics without a token (it is always open on `monitoring.metrics_port`).
    pub metrics_public: bool,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// ed25519 public keys (base64 or hex) that may sign model manifests.
    pub trusted_keys: Vec<String>,
    /// Load only model versions whose manifest is signed by a trusted key.
    pub require_signed_models: bool,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            auth_required: false,
            allowed_origins: Vec::new(),
            jwt_secret_file: None,
            jwt_secret_env: None,
            jwt_public_keys: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_s: 30,
            metrics_public: false,
            trusted_proxies: Vec::new(),
            trusted_keys: Vec::new(),
            require_signed_models: false,
        }
    }
}

/// Per-principal request and token limits, by tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    pub enabled: bool,
    /// The tier of anonymous clients and of tokens that name none.
    pub default_tier: String,
    pub tiers: std::collections::BTreeMap<String, TierLimits>,
    /// A Redis shared by the replicas, so the limits hold fleet-wide (`redis://…`, `rediss://…`
    /// or `unix://…`); unset: `cache.redis_url` when that is set, else each replica counts alone.
    pub redis_url: Option<String>,
    /// Longest one fleet-wide check may take before `redis_failure` applies.
    pub redis_timeout_ms: u64,
    /// Replicas expected in the fleet: while Redis is unreachable each replica enforces the
    /// tier's limits divided by this (unset: the whole limit).
    pub expected_replicas: Option<u32>,
    /// What a check does while Redis is slow or down: `local` (the local limiter, divided by
    /// `expected_replicas`), `open` (admit) or `closed` (503 with `Retry-After`).
    pub redis_failure: RedisFailure,
}

/// What a rate-limit check does while the shared Redis is slow or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    /// Each replica limits alone, with the tier's limits divided by `expected_replicas`.
    #[default]
    Local,
    /// Admit every request (no limit) until Redis is back.
    Open,
    /// Refuse every limited request with 503 until Redis is back.
    Closed,
}

impl RedisFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailure::Local => "local",
            RedisFailure::Open => "open",
            RedisFailure::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    pub requests_per_minute: u32,
    /// Generation budget: prompt plus `max_tokens` per minute (none: unlimited).
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        let tier = |rpm, tpm| TierLimits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        };
        Self {
            enabled: false,
            default_tier: "free".into(),
            tiers: [
                ("free".to_string(), tier(100, Some(20_000))),
                ("pro".to_string(), tier(1000, Some(200_000))),
                ("enterprise".to_string(), tier(10_000, None)),
            ]
            .into_iter()
            .collect(),
            redis_url: None,
            redis_timeout_ms: 50,
            expected_replicas: None,
            redis_failure: RedisFailure::Local,
        }
    }
}

impl ModelSection {
    /// `models_dir` when it names an object store (`s3://…`).
    pub fn remote_repository(&self) -> Option<&str> {
        self.models_dir
            .to_str()
            .filter(|d| crate::spec::repository::is_remote(d))
    }

    /// The folder the server scans: `cache_dir` for an object-store repository, else
    /// `models_dir`.
    pub fn local_repository(&self) -> &Path {
        if self.remote_repository().is_some() {
            &self.cache_dir
        } else {
            &self.models_dir
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            name: None,
            version: None,
            device: DeviceKind::Auto,
            models_dir: PathBuf::from("models"),
            cache_dir: PathBuf::from(".cache/anya/models"),
            warmup: true,
            threads: 0,
            poll_interval_s: 0.0,
            breaker: Default::default(),
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            workers: 0,
            log_level: "info".into(),
            log_format: "text".into(),
            request_timeout_ms: 30_000,
            max_body_bytes: 2 * 1024 * 1024,
            max_train_body_bytes: 192 * 1024 * 1024,
            drain_timeout_s: 30,
            max_concurrent_requests: 1024,
            max_header_bytes: 16 * 1024,
            body_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 75_000,
            max_connections: 4096,
            grpc_keepalive_interval_ms: 30_000,
            grpc_keepalive_timeout_ms: 10_000,
            grpc_max_concurrent_streams: 128,
            grpc_port: None,
        }
    }
}

impl Default for MonitoringSection {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics_port: None,
        }
    }
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: 3600,
            max_size: 100_000,
            max_bytes: 256 << 20,
            redis_url: None,
            redis_timeout_ms: 50,
        }
    }
}
