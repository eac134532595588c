//! Login rate limiting (design.md §6): token buckets per client IP and per (organization,
//! username). Pure state machine over a caller-supplied `now`, so it is tested without clocks.
//! In memory per process: with several replicas each enforces its own share.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most keys remembered; beyond it, full (idle) buckets are forgotten first.
const MAX_KEYS: usize = 100_000;

/// A bucket of `capacity` attempts, refilled evenly over `period`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    capacity: f64,
    per_second: f64,
    /// Tokens left and when they were counted, per key. A std Mutex: held for a map lookup only.
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `capacity` attempts per `period` (and at most `capacity` at once).
    pub fn new(capacity: u32, period: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        RateLimiter {
            capacity,
            per_second: capacity / period.as_secs_f64().max(0.001),
            buckets: Mutex::default(),
        }
    }

    /// Takes one attempt for `key` at `now`: Ok, or Err(time until the next attempt is allowed).
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS {
            let (capacity, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < capacity
            });
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.capacity, now));
        let refilled = (*tokens
            + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.capacity);
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            *at = now;
            Ok(())
        } else {
            *tokens = refilled;
            *at = now;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_up_to_capacity_passes_then_waits_for_refill() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(&"ip", t0).is_ok());
        }
        let wait = limiter
            .check(&"ip", t0)
            .expect_err("fourth attempt is limited");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            limiter.check(&"ip", t0 + Duration::from_secs(20)).is_ok(),
            "one token back after 20 s"
        );
        assert!(limiter.check(&"ip", t0 + Duration::from_secs(20)).is_err());
    }

    #[test]
    fn keys_are_limited_independently() {
        let limiter = RateLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(limiter.check(&"a", t0).is_ok());
        assert!(limiter.check(&"a", t0).is_err());
        assert!(limiter.check(&"b", t0).is_ok());
    }

    #[test]
    fn refill_never_exceeds_capacity() {
        let limiter = RateLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        assert!(limiter.check(&"k", later).is_ok());
        assert!(limiter.check(&"k", later).is_ok());
        assert!(limiter.check(&"k", later).is_err());
    }
}
