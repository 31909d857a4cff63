//! The composition root: every long-lived service the server runs, built once from the
//! settings and the registry — the serving core, its gate (admission and the books), the batch
//! jobs, the fleet — and handed to the protocol adapters (`http`, `grpc`), which are siblings:
//! each holds an `Arc<Services>` and neither knows the other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::auth::Authenticator;
use crate::cache::{CacheError, ResponseCache};
use crate::config::Settings;
use crate::jobs::{Executor, Jobs};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::net::IpNet;
use crate::ratelimit::RateLimits;
use crate::registry::Registry;
use crate::serving::{Core, Gate};
use crate::usage::UsageStore;

/// Why the services could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Keys(#[from] crate::auth::KeyError),
    #[error("{0}")]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("{0}")]
    RateLimits(#[from] crate::ratelimit::RateLimitError),
    #[error("{0}")]
    Jobs(#[from] crate::jobs::JobError),
}

/// The services every adapter shares.
pub struct Services {
    pub registry: Arc<Registry>,
    pub settings: Arc<Settings>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub usage: Arc<UsageStore>,
    /// The response cache; `None` when `cache.enabled` is false.
    pub cache: Option<Arc<ResponseCache>>,
    /// Token checks; `None` when `security.auth_required` is false (everyone is anonymous).
    pub auth: Option<Arc<Authenticator>>,
    /// Per-principal limits; `None` when `rate_limits.enabled` is false.
    pub limits: Option<Arc<RateLimits>>,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// How long a request may wait for its model (`server.request_timeout_ms`).
    pub request_timeout: Duration,
    /// The serving core every protocol adapter calls.
    pub core: Arc<Core>,
    /// Admission and the books of every request (`core.gate`).
    pub gate: Arc<Gate>,
    /// Batch jobs (native and OpenAI batches).
    pub jobs: Arc<Jobs>,
}

impl Services {
    /// Build the services. `openai_batches` makes the executor of OpenAI batch lines (the
    /// OpenAI adapter owns that mapping) from the core.
    pub fn build(
        settings: Settings,
        registry: Arc<Registry>,
        openai_batches: impl FnOnce(&Arc<Core>, &Settings) -> Arc<dyn Executor>,
    ) -> Result<Self, BuildError> {
        let metrics = Metrics::new();
        let cache = ResponseCache::new(&settings.cache, metrics.clone())?.map(Arc::new);
        let auth = if settings.security.auth_required {
            Some(Arc::new(Authenticator::new(&settings.security)?))
        } else {
            None
        };
        let limits = rate_limits(&settings, &metrics)?;
        let trusted_proxies = Arc::new(
            settings
                .security
                .trusted_proxies
                .iter()
                .filter_map(|p| IpNet::parse(p))
                .collect(),
        );
        let request_timeout = Duration::from_millis(settings.server.request_timeout_ms);
        let usage = Arc::new(UsageStore::new());
        let lifecycle = Arc::new(Lifecycle::new());
        let traffic = Arc::new(crate::traffic::Traffic::new(Some(
            settings.model.local_repository().to_path_buf(),
        )));
        let gate = Arc::new(Gate {
            lifecycle: lifecycle.clone(),
            concurrency: Arc::new(Semaphore::new(settings.server.max_concurrent_requests)),
            request_timeout,
            auth: auth.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            usage: usage.clone(),
            traffic: traffic.clone(),
            monitoring: settings.monitoring.enabled,
        });
        let core = Arc::new(Core {
            registry: registry.clone(),
            cache: cache.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            usage: usage.clone(),
            monitoring: settings.monitoring.enabled,
            request_timeout,
            traffic,
            loading: crate::serving::admin::Loading::new(load_settings(&settings)),
            fleet: fleet(&settings)?,
            breakers: Default::default(),
            breaker_defaults: settings.model.breaker,
            heads: Default::default(),
            drift: Default::default(),
            gate: gate.clone(),
        });
        let openai = openai_batches(&core, &settings);
        let jobs = Jobs::open(&settings.jobs, core.clone(), openai)?;
        Ok(Self {
            jobs,
            auth,
            limits,
            trusted_proxies,
            request_timeout,
            settings: Arc::new(settings),
            registry,
            lifecycle,
            metrics,
            usage,
            cache,
            core,
            gate,
        })
    }

    /// Whether the server is ready: not draining, and every configured model loaded and alive.
    pub fn is_ready(&self) -> bool {
        !self.lifecycle.is_draining()
            && self.core.readiness().ready
            && !self.registry.list().is_empty()
    }
}

fn rate_limits(
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<RateLimits>>, crate::ratelimit::RateLimitError> {
    settings
        .rate_limits
        .enabled
        .then(|| {
            let url = settings
                .rate_limits
                .redis_url
                .as_deref()
                .or(settings.cache.redis_url.as_deref());
            RateLimits::with_redis(&settings.rate_limits, url, metrics.clone()).map(Arc::new)
        })
        .transpose()
}

/// The fleet shares the Redis the replicas already share.
fn fleet(
    settings: &Settings,
) -> Result<Option<Arc<crate::fleet::Fleet>>, crate::fleet::FleetError> {
    match settings
        .rate_limits
        .redis_url
        .as_ref()
        .or(settings.cache.redis_url.as_ref())
    {
        Some(url) => Ok(Some(Arc::new(crate::fleet::Fleet::new(
            url,
            Duration::from_millis(settings.cache.redis_timeout_ms.max(200)),
        )?))),
        None => Ok(None),
    }
}

fn load_settings(settings: &Settings) -> crate::serving::admin::LoadSettings {
    crate::serving::admin::LoadSettings {
        models_dir: settings.model.local_repository().to_path_buf(),
        remote: settings.model.remote_repository().map(str::to_string),
        device: settings.model.device,
        warmup: settings.model.warmup,
        trusted_keys: settings.security.require_signed_models.then(|| {
            Arc::new(
                settings
                    .security
                    .trusted_keys
                    .iter()
                    .filter_map(|k| crate::spec::signing::parse_public_key(k))
                    .collect(),
            )
        }),
        drain_timeout: Duration::from_secs(settings.server.drain_timeout_s.max(1)),
        poll_interval_s: settings.model.poll_interval_s,
    }
}
