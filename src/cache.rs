//! The response cache: deterministic results, one entry per input, in two tiers.
//!
//! - Memory (moka): bounded by `cache.max_size` **entries** (one entry = one input's output)
//!   and by `cache.max_bytes` (their keys and values, estimated: see [`entry_bytes`]), each
//!   living `cache.ttl` seconds. moka bounds one total weight, so both bounds are one: an
//!   entry weighs its bytes, but at least `max_bytes / max_size` (rounded up), so the total
//!   weight within `max_bytes` holds at most `max_size` entries and at most `max_bytes` bytes.
//! - Redis (when `cache.redis_url` is set): shared by every replica, behind the memory tier;
//!   values are compact binary (a vector is its f32s, little-endian) with the TTL set in Redis.
//!
//! Redis is never a single point of failure: every call is bounded by `cache.redis_timeout_ms`,
//! and an error, a time-out or an undecodable value counts as a miss (and in
//! `anya_ai_cache_errors_total`); the connection manager reconnects on its own, so hits resume
//! when Redis comes back. Warnings about it are rate-limited.
//!
//! Keys hash (model id, resolved version, kind, the input's token ids, the parameters that change
//! the output): a new version never sees the old one's entries, and equal inputs share a key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use crate::config::CacheSection;
use crate::models::{FinishReason, Generation};

/// Prefix of every Redis key; bump the version when the value format changes.
const REDIS_PREFIX: &str = "anya:v1";

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct CacheKey {
    model: Arc<str>,
    version: Arc<str>,
    digest: [u8; 32],
}

impl CacheKey {
    /// `kind` separates tasks; `input` is the canonical input (token ids); `params` the
    /// canonical bytes of the parameters that change the output.
    pub fn new(model: &str, version: &str, kind: &str, input: &[u32], params: &[u8]) -> Self {
        let mut h = Sha256::new();
        for part in [model.as_bytes(), version.as_bytes(), kind.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update((input.len() as u64).to_le_bytes());
        for id in input {
            h.update(id.to_le_bytes());
        }
        h.update((params.len() as u64).to_le_bytes());
        h.update(params);
        Self {
            model: model.into(),
            version: version.into(),
            digest: h.finalize().into(),
        }
    }

    fn redis_key(&self) -> String {
        format!(
            "{REDIS_PREFIX}:{}:{}:{}",
            self.model,
            self.version,
            hex::encode(self.digest)
        )
    }
}

/// One input's cached output.
#[derive(Debug, Clone, PartialEq)]
pub enum CachedOutput {
    Vector(Arc<[f32]>),
    Generation(Arc<Generation>),
}

impl CachedOutput {
    /// Compact binary: `E` + f32 LE values, or `G` + JSON of the generation's text, tokens and
    /// finish reason.
    fn encode(&self) -> Vec<u8> {
        match self {
            CachedOutput::Vector(v) => {
                let mut out = Vec::with_capacity(1 + 4 * v.len());
                out.push(b'E');
                for x in v.iter() {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                out
            }
            CachedOutput::Generation(g) => {
                let body = serde_json::json!({
                    "text": g.text, "tokens": g.tokens, "finish_reason": g.finish_reason,
                    "counted_tokens": g.counted_tokens,
                });
                let mut out = vec![b'G'];
                out.extend_from_slice(body.to_string().as_bytes());
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first()? {
            (b'E', rest) if rest.len() % 4 == 0 && !rest.is_empty() => {
                let v: Vec<f32> = rest
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                v.iter()
                    .all(|x| x.is_finite())
                    .then(|| CachedOutput::Vector(v.into()))
            }
            (b'G', rest) => {
                let v: serde_json::Value = serde_json::from_slice(rest).ok()?;
                let finish_reason: FinishReason =
                    serde_json::from_value(v.get("finish_reason")?.clone()).ok()?;
                Some(CachedOutput::Generation(Arc::new(Generation {
                    text: v.get("text")?.as_str()?.to_string(),
                    tokens: serde_json::from_value(v.get("tokens")?.clone()).ok()?,
                    finish_reason,
                    time_to_first_token: 0.0,
                    duration: 0.0,
                    logprobs: Vec::new(),
                    counted_tokens: v
                        .get("counted_tokens")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0) as usize,
                })))
            }
            _ => None,
        }
    }
}

/// What one entry of the memory tier holds besides its key's names and its value's payload:
/// the key's digest and pointers, the value's enum and `Arc` headers, and moka's own record
/// (its hash-map slot, access-order nodes, expiry time), rounded up.
const ENTRY_OVERHEAD: usize = 256;

/// The bytes an entry of the memory tier holds, estimated: the payload (vector values, text,
/// token ids, logprobs) plus [`ENTRY_OVERHEAD`].
pub fn entry_bytes(key: &CacheKey, value: &CachedOutput) -> u64 {
    let payload = match value {
        CachedOutput::Vector(v) => std::mem::size_of_val::<[f32]>(v),
        CachedOutput::Generation(g) => {
            std::mem::size_of::<Generation>()
                + g.text.len()
                + std::mem::size_of_val::<[u32]>(&g.tokens)
                + g.logprobs
                    .iter()
                    .map(|l| {
                        std::mem::size_of_val(l) + l.top.len() * std::mem::size_of::<(u32, f32)>()
                    })
                    .sum::<usize>()
        }
    };
    (ENTRY_OVERHEAD + key.model.len() + key.version.len() + payload) as u64
}

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache.redis_url: {0}")]
    RedisUrl(String),
}

struct RedisTier {
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
    /// Unix seconds of the last warning, so a dead Redis does not flood the logs.
    last_warning: AtomicU64,
}

impl RedisTier {
    fn warn(&self, what: &str, err: &dyn std::fmt::Display) {
        let now = crate::usage::now_unix();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %err, "redis cache {what} failed; serving without it (next warning in 10 s at the earliest)");
        }
    }
}

/// What the cache reports about itself; the metrics implement it, so the cache knows no
/// Prometheus types (as the engine's `BatchObserver`).
pub trait CacheObserver: Send + Sync {
    /// One lookup in one tier: `result` is `hit`, `miss` or `error`.
    fn lookup(&self, tier: Tier, result: &'static str, took: Duration);
    /// A failed write to the Redis tier.
    fn write_error(&self);
}

pub struct ResponseCache {
    memory: Cache<CacheKey, CachedOutput>,
    redis: Option<RedisTier>,
    ttl: Duration,
    metrics: Arc<dyn CacheObserver>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

/// What `clear` removed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Cleared {
    pub memory: u64,
    pub redis: u64,
}

impl ResponseCache {
    /// `None` when `cache.enabled` is false. Redis connects lazily: a Redis that is down at
    /// startup is no reason not to start.
    pub fn new(
        cfg: &CacheSection,
        metrics: Arc<dyn CacheObserver>,
    ) -> Result<Option<Self>, CacheError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let ttl = Duration::from_secs(cfg.ttl);
        // One weight bounds both: see the module's documentation.
        // `max_size: 0` keeps no entry in process (Redis alone, when set).
        let floor = cfg.max_bytes.div_ceil(cfg.max_size.max(1)).max(1);
        let capacity = if cfg.max_size == 0 { 0 } else { cfg.max_bytes };
        let memory = Cache::builder()
            .max_capacity(capacity)
            .weigher(move |k: &CacheKey, v: &CachedOutput| -> u32 {
                u32::try_from(entry_bytes(k, v).max(floor)).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        let redis = match &cfg.redis_url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| CacheError::RedisUrl(e.to_string()))?;
                let timeout = Duration::from_millis(cfg.redis_timeout_ms);
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| CacheError::RedisUrl(e.to_string()))?;
                Some(RedisTier {
                    conn,
                    timeout,
                    last_warning: AtomicU64::new(0),
                })
            }
        };
        Ok(Some(Self {
            memory,
            redis,
            ttl,
            metrics,
        }))
    }

    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Entries in the memory tier.
    pub fn entry_count(&self) -> u64 {
        self.memory.entry_count()
    }

    /// The weight of the memory tier: the bytes its entries hold (each counted as at least
    /// `cache.max_bytes / cache.max_size`), at most `cache.max_bytes`.
    pub fn weighted_size(&self) -> u64 {
        self.memory.weighted_size()
    }

    /// Look `key` up in memory, then Redis (a Redis hit refills memory).
    pub async fn get(&self, key: &CacheKey) -> Option<(CachedOutput, Tier)> {
        let started = Instant::now();
        if let Some(v) = self.memory.get(key).await {
            self.metrics.lookup(Tier::Memory, "hit", started.elapsed());
            return Some((v, Tier::Memory));
        }
        self.metrics.lookup(Tier::Memory, "miss", started.elapsed());
        let redis = self.redis.as_ref()?;
        let started = Instant::now();
        let mut conn = redis.conn.clone();
        let got: Result<Result<Option<Vec<u8>>, redis::RedisError>, _> =
            tokio::time::timeout(redis.timeout, conn.get(key.redis_key())).await;
        let result = match got {
            Ok(Ok(Some(bytes))) => CachedOutput::decode(&bytes)
                .map(Some)
                .ok_or_else(|| "an undecodable value".to_string()),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", redis.timeout.as_millis())),
        };
        match result {
            Ok(Some(v)) => {
                self.metrics.lookup(Tier::Redis, "hit", started.elapsed());
                self.memory.insert(key.clone(), v.clone()).await;
                Some((v, Tier::Redis))
            }
            Ok(None) => {
                self.metrics.lookup(Tier::Redis, "miss", started.elapsed());
                None
            }
            Err(e) => {
                self.metrics.lookup(Tier::Redis, "error", started.elapsed());
                redis.warn("read", &e);
                None
            }
        }
    }

    /// Store `value` in memory now, and in Redis in the background (a slow Redis never delays
    /// the response).
    pub async fn put(self: &Arc<Self>, key: CacheKey, value: CachedOutput) {
        self.memory.insert(key.clone(), value.clone()).await;
        if self.redis.is_some() {
            let this = self.clone();
            tokio::spawn(async move {
                let Some(redis) = &this.redis else { return };
                let mut conn = redis.conn.clone();
                let ttl = this.ttl.as_secs().max(1);
                let set = conn.set_ex::<_, _, ()>(key.redis_key(), value.encode(), ttl);
                match tokio::time::timeout(redis.timeout, set).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        this.metrics.write_error();
                        redis.warn("write", &e);
                    }
                    Err(_) => {
                        this.metrics.write_error();
                        redis.warn(
                            "write",
                            &format!("no answer within {} ms", redis.timeout.as_millis()),
                        );
                    }
                }
            });
        }
    }

    /// Remove every entry, or those of one model, from both tiers.
    pub async fn clear(&self, model: Option<&str>) -> Cleared {
        // moka counts lazily: settle pending work so the counts are exact.
        self.memory.run_pending_tasks().await;
        let before = self.memory.entry_count();
        match model {
            None => self.memory.invalidate_all(),
            Some(m) => {
                let m: Arc<str> = m.into();
                let _ = self.memory.invalidate_entries_if(move |k, _| k.model == m);
            }
        }
        self.memory.run_pending_tasks().await;
        let mut cleared = Cleared {
            memory: before.saturating_sub(self.memory.entry_count()),
            redis: 0,
        };
        if let Some(redis) = &self.redis {
            let pattern = match model {
                None => format!("{REDIS_PREFIX}:*"),
                Some(m) => format!("{REDIS_PREFIX}:{m}:*"),
            };
            let mut conn = redis.conn.clone();
            let work = async {
                let keys: Vec<String> = {
                    let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
                    let mut keys = Vec::new();
                    while let Some(k) = iter.next_item().await {
                        keys.push(k?);
                    }
                    keys
                };
                let mut n = 0u64;
                for chunk in keys.chunks(500) {
                    n += conn.del::<_, u64>(chunk).await?;
                }
                Ok::<u64, redis::RedisError>(n)
            };
            match tokio::time::timeout(Duration::from_secs(10), work).await {
                Ok(Ok(n)) => cleared.redis = n,
                Ok(Err(e)) => redis.warn("clear", &e),
                Err(_) => redis.warn("clear", &"no answer within 10 s"),
            }
        }
        cleared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_models_versions_inputs_and_params() {
        let k = |m, v, i: &[u32], p: &[u8]| CacheKey::new(m, v, "embed", i, p);
        let base = k("m", "1.0.0", &[1, 2], b"");
        assert_eq!(base, k("m", "1.0.0", &[1, 2], b""));
        assert_ne!(base, k("m", "1.1.0", &[1, 2], b""));
        assert_ne!(base, k("n", "1.0.0", &[1, 2], b""));
        assert_ne!(base, k("m", "1.0.0", &[1, 2, 3], b""));
        assert_ne!(base, k("m", "1.0.0", &[1, 2], b"t"));
        assert_ne!(base, CacheKey::new("m", "1.0.0", "generate", &[1, 2], b""));
    }

    #[test]
    fn values_round_trip_and_garbage_is_refused() {
        let v = CachedOutput::Vector(vec![0.5f32, -1.25, 3.0].into());
        assert_eq!(CachedOutput::decode(&v.encode()), Some(v));
        let g = CachedOutput::Generation(Arc::new(Generation {
            text: "hi".into(),
            tokens: vec![1, 2],
            finish_reason: FinishReason::Eos,
            time_to_first_token: 0.0,
            duration: 0.0,
            logprobs: Vec::new(),
            counted_tokens: 0,
        }));
        assert_eq!(CachedOutput::decode(&g.encode()), Some(g));
        for bad in [&b""[..], b"E", b"Eabc", b"X1234", b"G{not json", b"G{}"] {
            assert_eq!(CachedOutput::decode(bad), None, "{bad:?}");
        }
    }

    /// Counts what the cache reports.
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<(Tier, &'static str)>>);

    impl CacheObserver for Seen {
        fn lookup(&self, tier: Tier, result: &'static str, _took: Duration) {
            if let Ok(mut v) = self.0.lock() {
                v.push((tier, result));
            }
        }
        fn write_error(&self) {}
    }

    #[tokio::test]
    async fn memory_tier_hits_expires_and_clears_by_model() {
        let cfg = CacheSection {
            enabled: true,
            ttl: 1,
            max_size: 100,
            max_bytes: 1 << 20,
            redis_url: None,
            redis_timeout_ms: 50,
        };
        let seen = Arc::new(Seen::default());
        let cache = Arc::new(ResponseCache::new(&cfg, seen.clone()).unwrap().unwrap());
        let a = CacheKey::new("a", "1", "embed", &[1], b"");
        let b = CacheKey::new("b", "1", "embed", &[1], b"");
        let v = CachedOutput::Vector(vec![1.0f32].into());
        cache.put(a.clone(), v.clone()).await;
        cache.put(b.clone(), v.clone()).await;
        assert_eq!(cache.get(&a).await.map(|x| x.1), Some(Tier::Memory));
        assert_eq!(
            seen.0.lock().unwrap().last().copied(),
            Some((Tier::Memory, "hit"))
        );
        let cleared = cache.clear(Some("a")).await;
        assert_eq!(cleared.memory, 1);
        assert!(cache.get(&a).await.is_none());
        assert!(cache.get(&b).await.is_some());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(cache.get(&b).await.is_none(), "expired after the ttl");
    }

    #[tokio::test]
    async fn memory_tier_is_bounded_by_bytes_and_by_entries() {
        let cfg = CacheSection {
            enabled: true,
            ttl: 60,
            max_size: 100_000,
            max_bytes: 1 << 20,
            redis_url: None,
            redis_timeout_ms: 50,
        };
        let cache = Arc::new(
            ResponseCache::new(&cfg, Arc::new(Seen::default()))
                .unwrap()
                .unwrap(),
        );
        // 64 vectors of 64 Ki f32 (256 KiB each, 16 MiB in all) into 1 MiB: at most 3 stay,
        // far under max_size.
        let big = CachedOutput::Vector(vec![0.5f32; 64 << 10].into());
        let k = CacheKey::new("m", "1", "embed", &[0], b"");
        assert!(entry_bytes(&k, &big) > 256 << 10);
        for i in 0..64 {
            let key = CacheKey::new("m", "1", "embed", &[i], b"");
            cache.put(key, big.clone()).await;
        }
        cache.memory.run_pending_tasks().await;
        assert!(cache.entry_count() <= 3, "{} entries", cache.entry_count());
        assert!(
            cache.weighted_size() <= 1 << 20,
            "{}",
            cache.weighted_size()
        );
        // A value larger than max_bytes is never held.
        let huge = CachedOutput::Vector(vec![0.5f32; 300 << 10].into());
        let key = CacheKey::new("m", "1", "embed", &[1000], b"");
        cache.put(key.clone(), huge).await;
        cache.memory.run_pending_tasks().await;
        assert!(cache.get(&key).await.is_none());
        assert!(cache.weighted_size() <= 1 << 20);

        // Small entries are still bounded by max_size.
        let few = Arc::new(
            ResponseCache::new(
                &CacheSection {
                    max_size: 3,
                    max_bytes: 1 << 30,
                    ..cfg.clone()
                },
                Arc::new(Seen::default()),
            )
            .unwrap()
            .unwrap(),
        );
        for i in 0..50 {
            let key = CacheKey::new("m", "1", "embed", &[i], b"");
            few.put(key, CachedOutput::Vector(vec![1.0f32].into()))
                .await;
        }
        few.memory.run_pending_tasks().await;
        assert!(few.entry_count() <= 3, "{} entries", few.entry_count());
        assert!(few.entry_count() > 0);
    }
}
