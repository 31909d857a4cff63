//! Per-principal rate limits (GCRA, `governor`), by tier: requests per minute on every limited
//! route, and optionally a token budget per minute for generation. Keys are principals (or the
//! client address when anonymous); keys idle long enough to be indistinguishable from fresh ones
//! are evicted every minute, so memory stays bounded however many clients come and go.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimitSection;

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

struct Tier {
    rpm: u32,
    requests: Limiter,
    tokens: Option<(u32, Limiter)>,
}

pub struct RateLimits {
    tiers: BTreeMap<String, Tier>,
    default_tier: String,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("tiers", &self.tiers.keys())
            .finish()
    }
}

/// What a limited response says in its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the next request is allowed (refused) or the window is full again.
    pub reset_s: u64,
}

fn limiter(per_minute: u32) -> Limiter {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(n)).with_middleware::<StateInformationMiddleware>()
}

impl RateLimits {
    pub fn new(cfg: &RateLimitSection) -> Self {
        let tiers = cfg
            .tiers
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    Tier {
                        rpm: t.requests_per_minute,
                        requests: limiter(t.requests_per_minute),
                        tokens: t.tokens_per_minute.map(|n| (n, limiter(n))),
                    },
                )
            })
            .collect();
        Self {
            tiers,
            default_tier: cfg.default_tier.clone(),
            clock: DefaultClock::default(),
        }
    }

    fn tier(&self, name: Option<&str>) -> Option<&Tier> {
        name.and_then(|n| self.tiers.get(n))
            .or_else(|| self.tiers.get(&self.default_tier))
    }

    /// Count one request of `key` in `tier` (unknown tiers fall back to the default one).
    pub fn check_request(&self, key: &str, tier: Option<&str>) -> Option<Decision> {
        let t = self.tier(tier)?;
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
            },
        })
    }

    /// Charge `tokens` to `key`'s generation budget; `Err(seconds to wait)` when it would pass it.
    pub fn charge_tokens(&self, key: &str, tier: Option<&str>, tokens: u32) -> Result<(), u64> {
        let Some(t) = self.tier(tier) else {
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

    /// Drop keys that are back to a full bucket (called every minute).
    pub fn evict_idle(&self) {
        for t in self.tiers.values() {
            t.requests.retain_recent();
            t.requests.shrink_to_fit();
            if let Some((_, l)) = &t.tokens {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.tiers.values().map(|t| t.requests.len()).sum()
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
        }
    }

    #[test]
    fn the_n_plus_first_request_is_refused_and_keys_are_separate() {
        let r = RateLimits::new(&cfg(3, None));
        for left in [2, 1, 0] {
            let d = r.check_request("alice", None).unwrap();
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, left));
        }
        let d = r.check_request("alice", None).unwrap();
        assert!(!d.allowed);
        assert!(d.reset_s >= 1 && d.reset_s <= 20, "{d:?}");
        assert!(
            r.check_request("bob", Some("unknown-tier"))
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn token_budget() {
        let r = RateLimits::new(&cfg(100, Some(1000)));
        assert!(r.charge_tokens("a", None, 600).is_ok());
        assert!(r.charge_tokens("a", None, 600).is_err());
        assert!(r.charge_tokens("b", None, 600).is_ok());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let r = RateLimits::new(&cfg(60_000, None));
        for i in 0..1000 {
            r.check_request(&format!("k{i}"), None);
        }
        assert_eq!(r.tracked_keys(), 1000);
        std::thread::sleep(Duration::from_millis(5));
        r.evict_idle();
        assert!(r.tracked_keys() < 1000, "{}", r.tracked_keys());
    }
}
