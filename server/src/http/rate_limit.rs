//! Login rate limiting (design.md §6): token buckets per client IP and per (organization,
//! username). Pure state machine over a caller-supplied `now`, so it is tested without clocks.
//! In memory per process: with several replicas each enforces its own share.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most keys remembered (about 10 MB): beyond it, full (idle) buckets are forgotten first,
/// then the least recently used — those that still allow an attempt before the spent ones —,
/// down to three quarters: memory stays bounded under a flood of distinct keys, a key being
/// refused stays refused, and the cost of a clean-up is spread over the checks that filled it.
const MAX_KEYS: usize = 100_000;

/// A bucket of `capacity` attempts, refilled evenly over `period`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    capacity: f64,
    per_second: f64,
    /// Tokens left and when they were counted, per key. A std Mutex: held for a map lookup only.
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
    /// [`MAX_KEYS`] (smaller in tests).
    max_keys: usize,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `capacity` attempts per `period` (and at most `capacity` at once).
    pub fn new(capacity: u32, period: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        RateLimiter {
            capacity,
            per_second: capacity / period.as_secs_f64().max(0.001),
            buckets: Mutex::default(),
            max_keys: MAX_KEYS,
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back the attempt [`RateLimiter::check`] just took for `key` (one the other limit
    /// refused).
    pub fn give_back(&self, key: &K) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tokens, _)) = buckets.get_mut(key) {
            *tokens = (*tokens + 1.0).min(self.capacity);
        }
    }

    /// Takes one attempt for `key` at `now`: Ok, or Err(time until the next attempt is allowed).
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            let (capacity, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < capacity
            });
            let keep = self.max_keys * 3 / 4;
            if buckets.len() > keep {
                // Still crowded with fresh keys (a flood): forget the least recently used — those
                // that still allow an attempt first, the spent ones (a key being refused: an
                // account whose password is being guessed) last, so a flood of fresh keys, each an
                // attempt in, does not give a guessed account its attempts back (a code review).
                let spent = |(tokens, at): &(f64, Instant)| {
                    *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < 1.0
                };
                let mut order: Vec<(bool, Instant)> =
                    buckets.values().map(|b| (spent(b), b.1)).collect();
                let cut = order.len() - keep;
                let (_, first_kept, _) = order.select_nth_unstable(cut);
                let first_kept = *first_kept;
                buckets.retain(|_, b| (spent(b), b.1) >= first_kept);
            }
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

/// Takes an attempt from two limits at once, or from neither: an attempt one of them refuses
/// costs the other nothing (a user retrying past the per-username limit does not use up the
/// per-address budget of everyone behind the same NAT). Err: which refused (`first`,
/// `second`) and the wait until both allow one — the longer of their waits.
pub fn check_both<A: Eq + Hash + Clone, B: Eq + Hash + Clone>(
    (first, a): (&RateLimiter<A>, &A),
    (second, b): (&RateLimiter<B>, &B),
    now: Instant,
) -> Result<(), (bool, bool, Duration)> {
    match (first.check(a, now), second.check(b, now)) {
        (Ok(()), Ok(())) => Ok(()),
        (one, other) => {
            if one.is_ok() {
                first.give_back(a);
            }
            if other.is_ok() {
                second.give_back(b);
            }
            let wait = [&one, &other]
                .iter()
                .filter_map(|r| r.err())
                .max()
                .unwrap_or_default();
            Err((one.is_err(), other.is_err(), wait))
        }
    }
}

/// The key a client address is limited under: IPv4 addresses as they are, IPv6 addresses by
/// their `/ipv6_prefix` network (a host usually holds a whole /64 and can rotate inside it).
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let prefix = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded_and_keeps_recent_debts() {
        let mut limiter = RateLimiter::new(1, Duration::from_secs(3600));
        limiter.max_keys = 1000;
        let t0 = Instant::now();
        assert!(limiter.check(&u32::MAX, t0).is_ok());
        for i in 0..10_000u32 {
            let _ = limiter.check(&i, t0 + Duration::from_millis(u64::from(i) + 1));
            assert!(limiter.len() <= 1000);
        }
        // The newest keys are still limited.
        assert!(limiter
            .check(&9_999, t0 + Duration::from_millis(10_001))
            .is_err());
    }

    /// A flood of fresh keys, each one attempt in (many addresses, many made-up names), does
    /// not push out the bucket of a key being refused: a guessed account stays limited.
    #[test]
    fn a_flood_of_fresh_keys_does_not_give_a_spent_key_its_attempts_back() {
        let mut limiter = RateLimiter::new(3, Duration::from_secs(3600));
        limiter.max_keys = 1000;
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(&u32::MAX, t0).is_ok());
        }
        assert!(limiter.check(&u32::MAX, t0).is_err());
        for i in 0..10_000u32 {
            let _ = limiter.check(&i, t0 + Duration::from_millis(u64::from(i) + 1));
            assert!(limiter.len() <= 1000);
        }
        assert!(
            limiter
                .check(&u32::MAX, t0 + Duration::from_millis(10_001))
                .is_err(),
            "still spent"
        );
    }

    #[test]
    fn ipv6_clients_are_limited_per_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(other, 64));
        assert_ne!(client_key(a, 128), client_key(b, 128));
        assert_eq!(client_key(a, 0), client_key(other, 0));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_key(v4, 64), v4);
    }

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

    /// Two limits together: an attempt the username's limit refuses costs the address
    /// nothing, and the wait said is the longer of the two.
    #[test]
    fn an_attempt_one_limit_refuses_costs_the_other_nothing() {
        let t0 = Instant::now();
        let per_ip = RateLimiter::new(30, Duration::from_secs(60));
        let per_user = RateLimiter::new(10, Duration::from_secs(60));
        let both =
            |user: &str, at| check_both((&per_ip, &"nat"), (&per_user, &user.to_string()), at);
        for _ in 0..10 {
            assert!(both("natc", t0).is_ok());
        }
        // Twenty more for natc: all refused by its own limit, none taken from the address.
        for _ in 0..20 {
            let (ip, user, wait) = both("natc", t0).unwrap_err();
            assert!(!ip && user, "refused by the username's limit only");
            assert!(wait > Duration::from_secs(5), "{wait:?}");
        }
        // Other users behind the same address still have the address's other twenty.
        for user in ["natd", "nate"] {
            for _ in 0..10 {
                assert!(both(user, t0).is_ok(), "{user}");
            }
        }
        // The address spent: refused by it alone, with its own wait (2 s a token).
        let (ip, user, wait) = both("natf", t0).unwrap_err();
        assert!(ip && !user);
        assert!(wait <= Duration::from_secs(3), "{wait:?}");
        // Both spent: the wait is the longer one (the username's, 6 s a token).
        let (ip, user, wait) = both("natc", t0).unwrap_err();
        assert!(ip && user);
        assert!(wait >= Duration::from_secs(5), "{wait:?}");
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
