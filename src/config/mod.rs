//! Settings, layered: built-in defaults < `config/anya.yaml` < environment `ANYA__…` < flags.
//!
//! Every section is parsed with `deny_unknown_fields`, so a misspelt key is an error that names
//! the key instead of a silently ignored line. `Settings::validate` checks the values the types
//! cannot (ranges, log levels) and names the key too.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::spec::device::DeviceKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub model: ModelSection,
    pub server: ServerSection,
    pub monitoring: MonitoringSection,
    pub cache: CacheSection,
    pub security: SecuritySection,
    pub rate_limits: RateLimitSection,
    pub jobs: JobsSection,
}

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
    /// Version of `name` to make the default (else the manifest's default).
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

/// A setting that could not be read or is out of range; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}`: {issue}")]
    Invalid { key: &'static str, issue: String },
}

/// Values given on the command line; they override every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub models_dir: Option<PathBuf>,
    pub log_format: Option<String>,
}

/// The default config file, used when present.
pub const DEFAULT_CONFIG_FILE: &str = "config/anya.yaml";

impl Settings {
    /// Layer defaults, the file (`explicit` must exist; otherwise `config/anya.yaml` if present),
    /// the environment (`ANYA__SECTION__KEY`) and the flags, then validate.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env = std::env::vars().filter(|(k, _)| k.starts_with("ANYA__"));
        Self::load_from(explicit, env, overrides)
    }

    /// `load` with the environment passed in, so tests need not touch the process's.
    pub fn load_from(
        explicit: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let parse = |e: config::ConfigError| ConfigError::Parse(e.to_string());
        let defaults = config::Config::try_from(&Settings::default()).map_err(parse)?;
        let mut builder = config::Config::builder().add_source(defaults);

        let file = match explicit {
            Some(p) if !p.exists() => return Err(ConfigError::MissingFile(p.to_path_buf())),
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            builder = builder
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Yaml));
        }

        let env: config::Map<String, String> = env.into_iter().collect();
        builder = builder.add_source(
            config::Environment::with_prefix("ANYA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("security.allowed_origins")
                .with_list_parse_key("security.trusted_proxies")
                .with_list_parse_key("security.trusted_keys")
                .source(Some(env)),
        );

        if let Some(h) = &overrides.host {
            builder = builder
                .set_override("server.host", h.as_str())
                .map_err(parse)?;
        }
        if let Some(p) = overrides.port {
            builder = builder.set_override("server.port", p).map_err(parse)?;
        }
        if let Some(d) = &overrides.models_dir {
            builder = builder
                .set_override("model.models_dir", d.to_string_lossy().as_ref())
                .map_err(parse)?;
        }
        if let Some(f) = &overrides.log_format {
            builder = builder
                .set_override("server.log_format", f.as_str())
                .map_err(parse)?;
        }

        let settings: Settings = builder
            .build()
            .map_err(parse)?
            .try_deserialize()
            .map_err(parse)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Range checks the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, issue: &str| {
            Err(ConfigError::Invalid {
                key,
                issue: issue.to_string(),
            })
        };
        if self.jobs.chunk == 0 || self.jobs.concurrency == 0 || self.jobs.max_inputs == 0 {
            return bad(
                "jobs.chunk",
                "jobs.chunk, jobs.concurrency and jobs.max_inputs must be at least 1",
            );
        }
        if let Some(url) = &self.jobs.redis_url {
            if !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return bad(
                    "jobs.redis_url",
                    "must start with redis://, rediss:// or unix://",
                );
            }
        }
        if !(1_000..=3_600_000).contains(&self.jobs.claim_idle_ms) {
            return bad(
                "jobs.claim_idle_ms",
                "must be between 1000 and 3600000 (one hour)",
            );
        }
        if self.jobs.webhook_retry_delays_ms.len() > 20 {
            return bad("jobs.webhook_retry_delays_ms", "at most 20 retries");
        }
        if !["trace", "debug", "info", "warn", "error"].contains(&self.server.log_level.as_str()) {
            return bad(
                "server.log_level",
                "must be one of trace, debug, info, warn, error",
            );
        }
        if !["text", "json"].contains(&self.server.log_format.as_str()) {
            return bad("server.log_format", "must be text or json");
        }
        if self.server.host.trim().is_empty() {
            return bad("server.host", "must not be empty");
        }
        if !(1..=3_600_000).contains(&self.server.request_timeout_ms) {
            return bad("server.request_timeout_ms", "must be between 1 and 3600000");
        }
        if !(1..=3_600_000).contains(&self.server.body_timeout_ms) {
            return bad("server.body_timeout_ms", "must be between 1 and 3600000");
        }
        if !(1..=3_600_000).contains(&self.server.header_read_timeout_ms) {
            return bad(
                "server.header_read_timeout_ms",
                "must be between 1 and 3600000",
            );
        }
        if !(1..=3_600_000).contains(&self.server.keep_alive_timeout_ms) {
            return bad(
                "server.keep_alive_timeout_ms",
                "must be between 1 and 3600000",
            );
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            return bad("server.max_connections", "must be between 1 and 1000000");
        }
        if !(1..=3_600_000).contains(&self.server.grpc_keepalive_interval_ms) {
            return bad(
                "server.grpc_keepalive_interval_ms",
                "must be between 1 and 3600000",
            );
        }
        if !(1..=3_600_000).contains(&self.server.grpc_keepalive_timeout_ms) {
            return bad(
                "server.grpc_keepalive_timeout_ms",
                "must be between 1 and 3600000",
            );
        }
        if !(1..=100_000).contains(&self.server.grpc_max_concurrent_streams) {
            return bad(
                "server.grpc_max_concurrent_streams",
                "must be between 1 and 100000",
            );
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes", "must be at least 1024");
        }
        if self.server.max_train_body_bytes < 1024 {
            return bad("server.max_train_body_bytes", "must be at least 1024");
        }
        if self.server.workers > 1024 {
            return bad("server.workers", "must be at most 1024");
        }
        if let Err(m) = self.model.breaker.check() {
            return bad("model.breaker", &m);
        }
        let poll = self.model.poll_interval_s;
        if !(poll == 0.0 || (0.1..=86_400.0).contains(&poll)) {
            return bad(
                "model.poll_interval_s",
                "must be 0 (off) or between 0.1 and 86400",
            );
        }
        if let Some(d) = self.model.models_dir.to_str() {
            if d.contains("://") && crate::spec::repository::parse_url(d).is_none() {
                return bad("model.models_dir", "must be a folder or s3://bucket/prefix");
            }
        }
        if self.model.cache_dir.as_os_str().is_empty() {
            return bad("model.cache_dir", "must not be empty");
        }
        if self.model.threads > 1024 {
            return bad("model.threads", "must be at most 1024");
        }
        if self.server.drain_timeout_s > 3600 {
            return bad("server.drain_timeout_s", "must be at most 3600");
        }
        if let Some(url) = &self.cache.redis_url {
            if !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return bad(
                    "cache.redis_url",
                    "must start with redis://, rediss:// or unix://",
                );
            }
        }
        if !(1..=10_000).contains(&self.cache.redis_timeout_ms) {
            return bad("cache.redis_timeout_ms", "must be between 1 and 10000");
        }
        if self.security.auth_required
            && self.security.jwt_secret_file.is_none()
            && self.security.jwt_secret_env.is_none()
            && self.security.jwt_public_keys.is_none()
        {
            return bad(
                "security.auth_required",
                "is true but no key is configured: set security.jwt_secret_file, security.jwt_secret_env or security.jwt_public_keys",
            );
        }
        if self.security.jwt_leeway_s > 600 {
            return bad("security.jwt_leeway_s", "must be at most 600");
        }
        for p in &self.security.trusted_proxies {
            if crate::net::IpNet::parse(p).is_none() {
                return bad(
                    "security.trusted_proxies",
                    "each entry must be an IP address or a CIDR such as 10.0.0.0/8",
                );
            }
        }
        for k in &self.security.trusted_keys {
            if crate::spec::signing::parse_public_key(k).is_none() {
                return bad(
                    "security.trusted_keys",
                    "each entry must be a 32-byte ed25519 public key in base64 or hex",
                );
            }
        }
        if self.security.require_signed_models && self.security.trusted_keys.is_empty() {
            return bad(
                "security.require_signed_models",
                "is true but security.trusted_keys is empty",
            );
        }
        if !self
            .rate_limits
            .tiers
            .contains_key(&self.rate_limits.default_tier)
        {
            return bad(
                "rate_limits.default_tier",
                "must name one of rate_limits.tiers",
            );
        }
        if self
            .rate_limits
            .tiers
            .values()
            .any(|t| t.requests_per_minute == 0 || t.tokens_per_minute == Some(0))
        {
            return bad(
                "rate_limits.tiers",
                "requests_per_minute and tokens_per_minute must be at least 1",
            );
        }
        if let Some(url) = &self.rate_limits.redis_url {
            if !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return bad(
                    "rate_limits.redis_url",
                    "must start with redis://, rediss:// or unix://",
                );
            }
        }
        if !(1..=10_000).contains(&self.rate_limits.redis_timeout_ms) {
            return bad(
                "rate_limits.redis_timeout_ms",
                "must be between 1 and 10000",
            );
        }
        if let Some(n) = self.rate_limits.expected_replicas {
            if !(1..=10_000).contains(&n) {
                return bad(
                    "rate_limits.expected_replicas",
                    "must be between 1 and 10000",
                );
            }
        }
        if self.server.max_concurrent_requests == 0 {
            return bad("server.max_concurrent_requests", "must be at least 1");
        }
        if self.server.max_header_bytes < 1024 {
            return bad("server.max_header_bytes", "must be at least 1024");
        }
        if self.cache.ttl == 0 {
            return bad("cache.ttl", "must be at least 1 second");
        }
        if self.cache.max_bytes < 1 << 20 {
            return bad("cache.max_bytes", "must be at least 1048576 (1 MiB)");
        }
        if self.monitoring.metrics_port == Some(0) {
            return bad(
                "monitoring.metrics_port",
                "must be a port number from 1 to 65535",
            );
        }
        if let Some(v) = &self.model.version {
            if semver::Version::parse(v).is_err() {
                return bad("model.version", "must be a semantic version such as 1.0.0");
            }
        }
        for origin in &self.security.allowed_origins {
            if origin == "*" || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return bad(
                    "security.allowed_origins",
                    "each entry must be an exact origin such as https://app.example.com",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("anya.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn devices_parse_with_an_ordinal() {
        for (text, want) in [
            ("cpu", DeviceKind::Cpu),
            ("auto", DeviceKind::Auto),
            ("cuda", DeviceKind::Cuda(0)),
            ("CUDA:3", DeviceKind::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceKind>(), Ok(want), "{text}");
        }
        for bad in ["cuda:", "cuda:x", "tpu", "cuda:-1"] {
            assert!(bad.parse::<DeviceKind>().is_err(), "{bad}");
        }
        assert_eq!(DeviceKind::Cuda(2).to_string(), "cuda:2");
        let e = env(&[("ANYA__MODEL__DEVICE", "cuda:1")]);
        let s = Settings::load_from(None, e, &Overrides::default()).unwrap();
        assert_eq!(s.model.device, DeviceKind::Cuda(1));
        let e = env(&[("ANYA__MODEL__DEVICE", "cuda:one")]);
        let err = Settings::load_from(None, e, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("device"), "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load_from(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s.server.port, 8000);
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.model.models_dir, PathBuf::from("models"));
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "server:\n  port: 7000\n  host: 0.0.0.0\n  log_level: debug\nmodel:\n  device: cpu\n",
        );
        // file only
        let s = Settings::load_from(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert_eq!((s.server.port, s.server.host.as_str()), (7000, "0.0.0.0"));
        assert_eq!(s.model.device, DeviceKind::Cpu);
        // env beats file
        let e = env(&[("ANYA__SERVER__PORT", "9000"), ("ANYA__CACHE__TTL", "5")]);
        let s = Settings::load_from(Some(&file), e.clone(), &Overrides::default()).unwrap();
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.cache.ttl, 5);
        assert_eq!(s.server.log_level, "debug");
        // flags beat env
        let o = Overrides {
            port: Some(9100),
            ..Default::default()
        };
        let s = Settings::load_from(Some(&file), e, &o).unwrap();
        assert_eq!(s.server.port, 9100);
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "server:\n  prot: 7000\n");
        let err = Settings::load_from(Some(&file), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn unknown_key_in_env_is_named() {
        let err = Settings::load_from(
            None,
            env(&[("ANYA__SERVER__NOPE", "1")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("ANYA__SERVER__PORT", "99999", "port"),
            ("ANYA__SERVER__LOG_LEVEL", "loud", "server.log_level"),
            ("ANYA__MODEL__DEVICE", "tpu", "tpu"),
            (
                "ANYA__SERVER__REQUEST_TIMEOUT_MS",
                "0",
                "server.request_timeout_ms",
            ),
            (
                "ANYA__SECURITY__ALLOWED_ORIGINS",
                "*",
                "security.allowed_origins",
            ),
            (
                "ANYA__SECURITY__AUTH_REQUIRED",
                "true",
                "no key is configured",
            ),
            (
                "ANYA__SECURITY__TRUSTED_PROXIES",
                "not-an-ip",
                "security.trusted_proxies",
            ),
            (
                "ANYA__SECURITY__REQUIRE_SIGNED_MODELS",
                "true",
                "security.trusted_keys is empty",
            ),
            (
                "ANYA__RATE_LIMITS__DEFAULT_TIER",
                "gold",
                "rate_limits.default_tier",
            ),
            ("ANYA__CACHE__REDIS_URL", "http://x", "cache.redis_url"),
            ("ANYA__CACHE__MAX_BYTES", "1000", "cache.max_bytes"),
            (
                "ANYA__RATE_LIMITS__REDIS_URL",
                "http://x",
                "rate_limits.redis_url",
            ),
            (
                "ANYA__RATE_LIMITS__EXPECTED_REPLICAS",
                "0",
                "rate_limits.expected_replicas",
            ),
            (
                "ANYA__RATE_LIMITS__REDIS_TIMEOUT_MS",
                "0",
                "rate_limits.redis_timeout_ms",
            ),
            ("ANYA__RATE_LIMITS__REDIS_FAILURE", "maybe", "maybe"),
            (
                "ANYA__MODEL__MODELS_DIR",
                "ftp://host/x",
                "model.models_dir",
            ),
            ("ANYA__MODEL__MODELS_DIR", "s3://", "model.models_dir"),
        ];
        for (k, v, needle) in cases {
            let err = Settings::load_from(None, env(&[(k, v)]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{k}={v}: {err}");
        }
    }

    #[test]
    fn list_from_env() {
        let s = Settings::load_from(
            None,
            env(&[(
                "ANYA__SECURITY__ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            )]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.security.allowed_origins.len(), 2);
    }

    #[test]
    fn the_shipped_config_file_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let s = Settings::load_from(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Settings::load_from(
            Some(Path::new("/nonexistent/anya.yaml")),
            env(&[]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
