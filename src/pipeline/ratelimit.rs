//! Per-route token buckets keyed by customer id or client IP.
//!
//! Memory is bounded: buckets live in shards of at most `MAX_KEYS / SHARDS`
//! entries. A full bucket is the same as no bucket, so full ones are dropped
//! first; if a shard is still at its cap, the half seen least recently goes
//! (an active client keeps its drained bucket; a flood of distinct keys
//! costs at most the cap, never unbounded memory).
//! Buckets are per instance (see README "Operating authgate").

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Instant;

const SHARDS: usize = 16;
/// Buckets kept per route at most.
pub const MAX_KEYS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Drops the half of `map` seen least recently. Keys still hammering the
/// route were seen recently and keep their (drained) buckets, so a flood of
/// new keys cannot reset the limit of an active client; each eviction is
/// O(n) and buys n/2 inserts.
fn evict_least_recent_half(map: &mut HashMap<u64, Bucket>) {
    let mut lasts: Vec<Instant> = map.values().map(|b| b.last).collect();
    let mid = lasts.len() / 2;
    let (_, &mut cutoff, _) = lasts.select_nth_unstable(mid);
    map.retain(|_, b| b.last > cutoff);
}

/// A token-bucket limiter for one route.
pub struct RateLimiter {
    pub per_customer: bool,
    rate: f64,
    burst: f64,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
}

impl RateLimiter {
    /// `rate` tokens per second, `burst` capacity (default: one second's worth, at least 1).
    pub fn new(per_customer: bool, rate: f64, burst: Option<u32>) -> RateLimiter {
        RateLimiter {
            per_customer,
            rate,
            burst: burst.map_or(rate.ceil().max(1.0), f64::from),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `key`; `Err(seconds)` to wait when none is left.
    pub fn check(&self, key: impl Hash, now: Instant) -> Result<(), u64> {
        let h = self.hasher.hash_one(key);
        let shard = &self.shards[(h as usize) % SHARDS];
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= MAX_KEYS / SHARDS && !map.contains_key(&h) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
            if map.len() >= MAX_KEYS / SHARDS {
                evict_least_recent_half(&mut map);
            }
        }
        let b = map.entry(h).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Buckets currently held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(false, 2.0, Some(3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check("a", t0).is_ok());
        }
        assert_eq!(rl.check("a", t0), Err(1));
        assert!(rl.check("b", t0).is_ok(), "keys are independent");
        assert!(rl.check("a", t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn a_flood_of_new_keys_does_not_reset_an_active_client() {
        let rl = RateLimiter::new(false, 1.0 / 3600.0, Some(1));
        let t0 = Instant::now();
        assert!(rl.check("abuser", t0).is_ok());
        for i in 0..(4 * MAX_KEYS as u32) {
            let t = t0 + Duration::from_micros(u64::from(i));
            let _ = rl.check(i, t);
            // The abuser keeps trying, so it stays among the recent keys.
            if i % 512 == 0 {
                assert!(rl.check("abuser", t).is_err(), "reset after {i} keys");
            }
        }
        assert!(rl.len() <= MAX_KEYS);
    }

    #[test]
    fn memory_is_bounded() {
        let rl = RateLimiter::new(false, 1.0, Some(1));
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let _ = rl.check(i, t0);
        }
        assert!(rl.len() <= MAX_KEYS);
    }
}
