//! Per-principal rate limits (GCRA), by tier: requests per minute on every limited route, and
//! optionally a token budget per minute for generation.
//!
//! Alone, a replica counts with `governor` in process; keys idle long enough to be
//! indistinguishable from fresh ones are evicted every minute, so memory stays bounded however
//! many clients come and go. With a shared Redis (`rate_limits.redis_url`, else
//! `cache.redis_url`) every check is one GCRA step in one Lua script (`EVALSHA`, the server's
//! clock from `TIME`, keys that expire when their bucket is full again), so the limits hold
//! across the whole fleet. A check that Redis does not answer within `rate_limits.redis_timeout_ms`
//! follows `rate_limits.redis_failure` (`local`: the local limiter with the tier's limits divided
//! by `rate_limits.expected_replicas`; `open`: admit; `closed`: refuse with 503), counts in
//! `anya_ai_ratelimit_fallbacks_total` and warns at most every 10 s. For a second after a
//! failure the checks skip Redis; then the next one tries it again, so the fleet-wide limits
//! come back by themselves.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{RateLimitSection, RedisFailure};

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, MonotonicClock, StateInformationMiddleware>;

/// Prefix of every Redis key; bump the version when the stored value changes meaning.
const REDIS_PREFIX: &str = "anya:rl:v1";

/// How long checks skip Redis after it failed (then one check tries it again).
const RETRY_AFTER_FAILURE_MS: u64 = 1000;

/// One GCRA step. KEYS[1]: the bucket; ARGV: period of one cell in microseconds, the burst (the
/// limit per minute), the cost in cells. The value is the theoretical arrival time (µs, server
/// clock); it expires when the bucket is full again. Returns {allowed, remaining, µs}: µs is the
/// wait until the request would fit (refused) or until the bucket is full again (allowed).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + cost * period
local allow_at = new_tat - burst * period
if allow_at > now then
  return {0, 0, allow_at - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, math.floor((now - allow_at) / period), new_tat - now}
";

/// What the rate limits report about themselves; the metrics implement it.
pub trait RateLimitObserver: Send + Sync {
    /// One check that Redis did not answer, handled by `mode` (`local`, `open` or `closed`).
    fn fallback(&self, mode: &'static str);
}

/// Tier limits, as configured.
#[derive(Debug, Clone, Copy)]
struct TierConfig {
    rpm: u32,
    tpm: Option<u32>,
}

struct LocalTier {
    rpm: u32,
    requests: Limiter,
    tokens: Option<(u32, Limiter)>,
}

/// In-process limiters for every tier, each limit divided by `divisor`.
struct Local {
    tiers: BTreeMap<String, LocalTier>,
    clock: MonotonicClock,
}

/// What a limited response says in its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the next request is allowed (refused) or the window is full again.
    pub reset_s: u64,
    /// Refused only because Redis is unreachable and `rate_limits.redis_failure` is `closed`.
    pub unavailable: bool,
}

fn limiter(per_minute: u32) -> Limiter {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    // The kernel's monotonic clock rather than governor's default TSC clock (`quanta`), whose
    // readings can disagree between cores on some virtual machines.
    Limiter::new(
        Quota::per_minute(n),
        DefaultKeyedStateStore::default(),
        MonotonicClock,
    )
}

/// A limit shared by `divisor` replicas (never below 1).
pub fn share(limit: u32, divisor: u32) -> u32 {
    (limit / divisor.max(1)).max(1)
}

impl Local {
    fn new(tiers: &BTreeMap<String, TierConfig>, divisor: u32) -> Self {
        let tiers = tiers
            .iter()
            .map(|(name, t)| {
                let rpm = share(t.rpm, divisor);
                let tokens = t.tpm.map(|n| share(n, divisor)).map(|n| (n, limiter(n)));
                (
                    name.clone(),
                    LocalTier {
                        rpm,
                        requests: limiter(rpm),
                        tokens,
                    },
                )
            })
            .collect();
        Self {
            tiers,
            clock: MonotonicClock,
        }
    }

    fn check_request(&self, key: &str, tier: &str) -> Option<Decision> {
        let t = self.tiers.get(tier)?;
        let key = key.to_string();
        Some(match t.requests.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let per_cell = 60.0 / t.rpm as f64;
                Decision {
                    allowed: true,
                    limit: t.rpm,
                    remaining,
                    reset_s: ((t.rpm - remaining) as f64 * per_cell).ceil() as u64,
                    unavailable: false,
                }
            }
            Err(not_until) => Decision {
                allowed: false,
                limit: t.rpm,
                remaining: 0,
                reset_s: not_until
                    .wait_time_from(self.clock.now())
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
                unavailable: false,
            },
        })
    }

    fn charge_tokens(&self, key: &str, tier: &str, tokens: u32) -> Result<(), u64> {
        let Some(t) = self.tiers.get(tier) else {
            return Ok(());
        };
        let Some((per_minute, lim)) = &t.tokens else {
            return Ok(());
        };
        let n = NonZeroU32::new(tokens.clamp(1, *per_minute)).unwrap_or(NonZeroU32::MIN);
        match lim.check_key_n(&key.to_string(), n) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now()).as_secs().max(1)),
            Err(_) => Err(60),
        }
    }

    fn evict_idle(&self) {
        for t in self.tiers.values() {
            t.requests.retain_recent();
            t.requests.shrink_to_fit();
            if let Some((_, l)) = &t.tokens {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }

    fn tracked_keys(&self) -> usize {
        self.tiers.values().map(|t| t.requests.len()).sum()
    }
}

/// The answer of one GCRA step in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub allowed: bool,
    pub remaining: u32,
    /// Wait until the request would fit (refused) or until the bucket is full again (allowed).
    pub micros: u64,
}

impl Gcra {
    /// The script's reply, `{allowed, remaining, µs}`.
    fn from_reply(v: &[i64]) -> Option<Self> {
        match v {
            [a, r, us] => Some(Gcra {
                allowed: *a == 1,
                remaining: u32::try_from((*r).max(0)).unwrap_or(u32::MAX),
                micros: u64::try_from((*us).max(0)).unwrap_or(0),
            }),
            _ => None,
        }
    }

    fn decision(self, limit: u32) -> Decision {
        let secs = (self.micros as f64 / 1e6).ceil() as u64;
        Decision {
            allowed: self.allowed,
            limit,
            remaining: self.remaining.min(limit),
            reset_s: if self.allowed { secs } else { secs.max(1) },
            unavailable: false,
        }
    }
}

/// Whether a check goes to Redis now: not within `RETRY_AFTER_FAILURE_MS` of its last failure.
pub fn redis_due(now_ms: u64, failed_at_ms: u64) -> bool {
    failed_at_ms == 0 || now_ms >= failed_at_ms.saturating_add(RETRY_AFTER_FAILURE_MS)
}

/// What a check does without Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Ask the local limiter (the divided limits).
    Local,
    /// Admit, reporting the tier's limit.
    Admit,
    /// Refuse with 503.
    Refuse,
}

pub fn fallback_for(mode: RedisFailure) -> Fallback {
    match mode {
        RedisFailure::Local => Fallback::Local,
        RedisFailure::Open => Fallback::Admit,
        RedisFailure::Closed => Fallback::Refuse,
    }
}

struct Shared {
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
    script: redis::Script,
    /// Unix milliseconds of the last failure (0: none), so a dead Redis costs one time-out a
    /// second, not one per request.
    failed_at_ms: AtomicU64,
    /// Unix seconds of the last warning.
    last_warning: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    async fn step(&self, key: &str, per_minute: u32, cost: u32) -> Result<Gcra, String> {
        if !redis_due(now_ms(), self.failed_at_ms.load(Ordering::Relaxed)) {
            return Err("skipped: failed within the last second".into());
        }
        let period_us = 60_000_000u64 / u64::from(per_minute.max(1));
        let mut conn = self.conn.clone();
        let mut call = self.script.key(key);
        call.arg(period_us).arg(per_minute).arg(cost.max(1));
        let got =
            tokio::time::timeout(self.timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await;
        let result = match got {
            Ok(Ok(v)) => Gcra::from_reply(&v).ok_or_else(|| format!("an unexpected reply {v:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match &result {
            Ok(_) => self.failed_at_ms.store(0, Ordering::Relaxed),
            Err(e) => {
                self.failed_at_ms.store(now_ms(), Ordering::Relaxed);
                self.warn(e);
            }
        }
        result
    }

    fn warn(&self, err: &str) {
        let now = crate::usage::now_unix();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %err, "redis rate limits unavailable; using rate_limits.redis_failure until it answers (next warning in 10 s at the earliest)");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate_limits.redis_url: {0}")]
    RedisUrl(String),
}

pub struct RateLimits {
    config: BTreeMap<String, TierConfig>,
    default_tier: String,
    /// The whole limits, when no Redis is configured.
    local: Local,
    /// With Redis: the divided limits, used while Redis is unreachable (`local` mode).
    shared: Option<(Shared, Local)>,
    on_failure: RedisFailure,
    observer: Option<Arc<dyn RateLimitObserver>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("tiers", &self.config.keys())
            .field("redis", &self.shared.is_some())
            .finish()
    }
}

impl RateLimits {
    /// Local limits only (no Redis).
    pub fn new(cfg: &RateLimitSection) -> Self {
        let config: BTreeMap<String, TierConfig> = cfg
            .tiers
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    TierConfig {
                        rpm: t.requests_per_minute,
                        tpm: t.tokens_per_minute,
                    },
                )
            })
            .collect();
        Self {
            local: Local::new(&config, 1),
            config,
            default_tier: cfg.default_tier.clone(),
            shared: None,
            on_failure: cfg.redis_failure,
            observer: None,
        }
    }

    /// Fleet-wide limits through the Redis at `redis_url` (`rate_limits.redis_url`, else the
    /// cache's); `None` gives `new`. Redis connects lazily: one that is down at startup is no
    /// reason not to start.
    pub fn with_redis(
        cfg: &RateLimitSection,
        redis_url: Option<&str>,
        observer: Arc<dyn RateLimitObserver>,
    ) -> Result<Self, RateLimitError> {
        let mut me = Self::new(cfg);
        me.observer = Some(observer);
        let Some(url) = redis_url else {
            return Ok(me);
        };
        let client =
            redis::Client::open(url).map_err(|e| RateLimitError::RedisUrl(e.to_string()))?;
        let timeout = Duration::from_millis(cfg.redis_timeout_ms);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RateLimitError::RedisUrl(e.to_string()))?;
        let fallback = Local::new(&me.config, cfg.expected_replicas.unwrap_or(1));
        me.shared = Some((
            Shared {
                conn,
                timeout,
                script: redis::Script::new(GCRA_LUA),
                failed_at_ms: AtomicU64::new(0),
                last_warning: AtomicU64::new(0),
            },
            fallback,
        ));
        Ok(me)
    }

    pub fn has_redis(&self) -> bool {
        self.shared.is_some()
    }

    /// The tier `name` names, else the default tier.
    fn tier(&self, name: Option<&str>) -> Option<(&str, TierConfig)> {
        name.and_then(|n| self.config.get_key_value(n))
            .or_else(|| self.config.get_key_value(&self.default_tier))
            .map(|(n, t)| (n.as_str(), *t))
    }

    fn fell_back(&self) -> Fallback {
        if let Some(o) = &self.observer {
            o.fallback(self.on_failure.as_str());
        }
        fallback_for(self.on_failure)
    }

    /// Count one request of `key` in `tier` (unknown tiers fall back to the default one).
    pub async fn check_request(&self, key: &str, tier: Option<&str>) -> Option<Decision> {
        let (name, t) = self.tier(tier)?;
        let Some((shared, fallback)) = &self.shared else {
            return self.local.check_request(key, name);
        };
        let rkey = format!("{REDIS_PREFIX}:{name}:req:{key}");
        match shared.step(&rkey, t.rpm, 1).await {
            Ok(g) => Some(g.decision(t.rpm)),
            Err(_) => match self.fell_back() {
                Fallback::Local => fallback.check_request(key, name),
                Fallback::Admit => Some(Decision {
                    allowed: true,
                    limit: t.rpm,
                    remaining: t.rpm,
                    reset_s: 0,
                    unavailable: false,
                }),
                Fallback::Refuse => Some(Decision {
                    allowed: false,
                    limit: t.rpm,
                    remaining: 0,
                    reset_s: 1,
                    unavailable: true,
                }),
            },
        }
    }

    /// Charge `tokens` to `key`'s generation budget; `Err(seconds to wait)` when it would pass it.
    pub async fn charge_tokens(
        &self,
        key: &str,
        tier: Option<&str>,
        tokens: u32,
    ) -> Result<(), u64> {
        let Some((name, t)) = self.tier(tier) else {
            return Ok(());
        };
        let Some(tpm) = t.tpm else {
            return Ok(());
        };
        let Some((shared, fallback)) = &self.shared else {
            return self.local.charge_tokens(key, name, tokens);
        };
        let rkey = format!("{REDIS_PREFIX}:{name}:tok:{key}");
        match shared.step(&rkey, tpm, tokens.clamp(1, tpm)).await {
            Ok(g) if g.allowed => Ok(()),
            Ok(g) => Err(g.decision(tpm).reset_s),
            Err(_) => match self.fell_back() {
                Fallback::Local => fallback.charge_tokens(key, name, tokens),
                Fallback::Admit => Ok(()),
                Fallback::Refuse => Err(1),
            },
        }
    }

    /// Drop keys that are back to a full bucket (called every minute).
    pub fn evict_idle(&self) {
        self.local.evict_idle();
        if let Some((_, f)) = &self.shared {
            f.evict_idle();
        }
    }

    /// Keys tracked now in process (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.local.tracked_keys() + self.shared.as_ref().map_or(0, |(_, f)| f.tracked_keys())
    }

    pub fn evict_every() -> Duration {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TierLimits;

    fn cfg(rpm: u32, tpm: Option<u32>) -> RateLimitSection {
        RateLimitSection {
            enabled: true,
            default_tier: "free".into(),
            tiers: [(
                "free".to_string(),
                TierLimits {
                    requests_per_minute: rpm,
                    tokens_per_minute: tpm,
                },
            )]
            .into_iter()
            .collect(),
            ..RateLimitSection::default()
        }
    }

    #[tokio::test]
    async fn the_n_plus_first_request_is_refused_and_keys_are_separate() {
        let r = RateLimits::new(&cfg(3, None));
        for left in [2, 1, 0] {
            let d = r.check_request("alice", None).await.unwrap();
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, left));
        }
        let d = r.check_request("alice", None).await.unwrap();
        assert!(!d.allowed);
        assert!(d.reset_s >= 1 && d.reset_s <= 20, "{d:?}");
        assert!(
            r.check_request("bob", Some("unknown-tier"))
                .await
                .unwrap()
                .allowed
        );
    }

    #[tokio::test]
    async fn token_budget() {
        let r = RateLimits::new(&cfg(100, Some(1000)));
        assert!(r.charge_tokens("a", None, 600).await.is_ok());
        assert!(r.charge_tokens("a", None, 600).await.is_err());
        assert!(r.charge_tokens("b", None, 600).await.is_ok());
    }

    #[tokio::test]
    async fn idle_keys_are_evicted() {
        let r = RateLimits::new(&cfg(60_000, None));
        for i in 0..1000 {
            r.check_request(&format!("k{i}"), None).await;
        }
        assert_eq!(r.tracked_keys(), 1000);
        std::thread::sleep(Duration::from_millis(5));
        r.evict_idle();
        assert!(r.tracked_keys() < 1000, "{}", r.tracked_keys());
    }

    #[test]
    fn gcra_replies_become_headers() {
        let ok = Gcra::from_reply(&[1, 59, 1_000_000]).unwrap();
        assert_eq!(
            ok.decision(60),
            Decision {
                allowed: true,
                limit: 60,
                remaining: 59,
                reset_s: 1,
                unavailable: false
            }
        );
        let refused = Gcra::from_reply(&[0, 0, 250_000]).unwrap().decision(60);
        assert!(!refused.allowed);
        assert_eq!(refused.reset_s, 1, "a refusal never says retry in 0 s");
        assert_eq!(Gcra::from_reply(&[1, 2]), None);
        assert_eq!(Gcra::from_reply(&[1, -3, -1]).unwrap().remaining, 0);
    }

    #[test]
    fn redis_is_retried_a_second_after_a_failure() {
        assert!(redis_due(5_000, 0));
        assert!(!redis_due(5_000, 4_500));
        assert!(redis_due(5_500, 4_500));
    }

    #[test]
    fn fallback_modes_and_divided_limits() {
        assert_eq!(fallback_for(RedisFailure::Local), Fallback::Local);
        assert_eq!(fallback_for(RedisFailure::Open), Fallback::Admit);
        assert_eq!(fallback_for(RedisFailure::Closed), Fallback::Refuse);
        assert_eq!(share(60, 3), 20);
        assert_eq!(share(60, 1), 60);
        assert_eq!(share(2, 10), 1, "never zero");
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl RateLimitObserver for Count {
        fn fallback(&self, _mode: &'static str) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_divided_local_limits() {
        let mut c = cfg(6, None);
        c.expected_replicas = Some(3);
        c.redis_timeout_ms = 50;
        let seen = Arc::new(Count(Default::default()));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("unix://{}", dir.path().join("none.sock").display());
        let r = RateLimits::with_redis(&c, Some(&url), seen.clone()).unwrap();
        let d1 = r.check_request("k", None).await.unwrap();
        let d2 = r.check_request("k", None).await.unwrap();
        let d3 = r.check_request("k", None).await.unwrap();
        assert!(
            d1.allowed && d2.allowed && !d3.allowed,
            "{d1:?} {d2:?} {d3:?}"
        );
        assert_eq!(d1.limit, 2);
        assert_eq!(seen.0.load(Ordering::Relaxed), 3);

        c.redis_failure = RedisFailure::Closed;
        let r = RateLimits::with_redis(&c, Some(&url), seen.clone()).unwrap();
        let d = r.check_request("k", None).await.unwrap();
        assert!(!d.allowed && d.unavailable);
        c.redis_failure = RedisFailure::Open;
        let r = RateLimits::with_redis(&c, Some(&url), seen).unwrap();
        for _ in 0..10 {
            assert!(r.check_request("k", None).await.unwrap().allowed);
        }
    }

    /// The Lua script against a real `redis-server` (skipped without one, except under CI).
    #[tokio::test]
    async fn the_gcra_script_in_a_real_redis() {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is missing: .ci/run installs it with apt-get"
            );
            eprintln!("*** SKIPPING: redis-server not found ***");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("r.sock");
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut c = cfg(3, Some(100));
        c.redis_timeout_ms = 2000;
        let seen = Arc::new(Count(Default::default()));
        let url = format!("unix://{}", sock.display());
        let r = RateLimits::with_redis(&c, Some(&url), seen.clone()).unwrap();
        // Two replicas, one bucket.
        let r2 = RateLimits::with_redis(&c, Some(&url), seen.clone()).unwrap();
        let mut got = Vec::new();
        for l in [&r, &r2, &r] {
            let d = l.check_request("alice", None).await.unwrap();
            got.push((d.allowed, d.limit, d.remaining));
            assert!(d.reset_s <= 60, "{d:?}");
        }
        assert_eq!(got, [(true, 3, 2), (true, 3, 1), (true, 3, 0)]);
        let d = r2.check_request("alice", None).await.unwrap();
        assert!(!d.allowed && (1..=20).contains(&d.reset_s), "{d:?}");
        assert!(r.check_request("bob", None).await.unwrap().allowed);
        // Tokens: 60 + 30 fit in 100 a minute, 30 more do not; a refusal charges nothing.
        assert!(r.charge_tokens("alice", None, 60).await.is_ok());
        assert!(r2.charge_tokens("alice", None, 30).await.is_ok());
        let wait = r.charge_tokens("alice", None, 30).await.unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(r.charge_tokens("alice", None, 10).await.is_ok());
        assert_eq!(
            seen.0.load(Ordering::Relaxed),
            0,
            "no fallback while Redis answers"
        );
        // Keys expire once their bucket would be full again.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{REDIS_PREFIX}:free:req:alice"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=60_001).contains(&ttl), "{ttl}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
