//! `Settings::validate`: the range checks the types cannot express, each naming its key.

use super::{ConfigError, Settings};

/// The error for `key`.
fn bad(key: &'static str, issue: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        issue: issue.to_string(),
    })
}

impl Settings {
    /// Range checks the types cannot express. The first value out of range is the error (the
    /// checks run in this order).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_jobs()?;
        self.check_server()?;
        self.check_model()?;
        self.check_drain_and_redis_cache()?;
        self.check_security()?;
        self.check_rate_limits()?;
        self.check_limits_cache_and_origins()?;
        Ok(())
    }

    /// The `jobs` section.
    fn check_jobs(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The `server` section's logging, timeouts, connection and body limits, and workers.
    fn check_server(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The `model` section: breaker, polling, repository, cache folder and threads.
    fn check_model(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// `server.drain_timeout_s`, and the Redis cache's URL and timeout.
    fn check_drain_and_redis_cache(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The `security` section's keys: what `auth_required` needs, the leeway, the trusted
    /// proxies and signing keys.
    fn check_security(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The `rate_limits` section: tiers, Redis and replicas.
    fn check_rate_limits(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// Concurrency and header limits, the cache's TTL and size, the metrics port, the model
    /// version and the allowed origins.
    fn check_limits_cache_and_origins(&self) -> Result<(), ConfigError> {
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
            if v != "latest" && semver::Version::parse(v).is_err() {
                return bad(
                    "model.version",
                    "must be a semantic version such as 1.0.0, or `latest`",
                );
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
