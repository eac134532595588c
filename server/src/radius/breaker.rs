//! Per-server circuit breaker (design.md §4): a pure state machine, no clocks or sockets inside.
//!
//! Closed: requests flow; consecutive failed exchanges are counted and `failure_threshold` of
//! them open the breaker. Open: no request is sent to the server; the prober sends a
//! Status-Server (RFC 5997) when [`Breaker::probe_due`] says so, and only a verified answer to
//! that probe closes the breaker again. A late success of an ordinary request while open does
//! not close it: the server may be answering a backlog (a `kill -STOP`ped server does).
//! So the breaker never stays open for good: it closes as soon as the server answers a probe.

use std::time::Duration;
use tokio::time::Instant;

/// Breaker parameters.
#[derive(Clone, Copy, Debug)]
pub struct BreakerPolicy {
    /// Consecutive failed exchanges that open the breaker.
    pub failure_threshold: u32,
    /// Time between Status-Server probes while open.
    pub probe_interval: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 2,
            probe_interval: Duration::from_secs(2),
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failed exchanges since the last success.
        failures: u32,
    },
    /// No requests; waiting for a probe to be answered.
    Open {
        /// When the breaker opened.
        since: Instant,
        /// When the next probe may be sent.
        next_probe: Instant,
    },
}

/// One server's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: BreakerState,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether an ordinary request may be sent to the server now.
    pub fn allows_request(&self, _now: Instant) -> bool {
        matches!(self.state, BreakerState::Closed { .. })
    }

    /// An exchange was answered (verified reply). Resets the failure count while closed.
    pub fn record_success(&mut self) {
        if let BreakerState::Closed { .. } = self.state {
            self.state = BreakerState::Closed { failures: 0 };
        }
    }

    /// An exchange got no verified reply. Returns true when this failure opened the breaker.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.policy.failure_threshold.max(1) {
                    self.state = BreakerState::Open {
                        since: now,
                        next_probe: now + self.policy.probe_interval,
                    };
                    true
                } else {
                    self.state = BreakerState::Closed { failures };
                    false
                }
            }
            BreakerState::Open { .. } => false,
        }
    }

    /// Whether a probe should be sent now (open and its time has come). Taking the probe moves
    /// the next one `probe_interval` ahead, so concurrent probers send one at a time.
    pub fn take_probe(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Open { since, next_probe } if now >= next_probe => {
                self.state = BreakerState::Open {
                    since,
                    next_probe: now + self.policy.probe_interval,
                };
                true
            }
            _ => false,
        }
    }

    /// When the next probe is due (None while closed).
    pub fn probe_due(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open { next_probe, .. } => Some(next_probe),
            BreakerState::Closed { .. } => None,
        }
    }

    /// A probe was answered with a verified reply: close. Returns true if it was open.
    pub fn record_probe_success(&mut self) -> bool {
        let was_open = matches!(self.state, BreakerState::Open { .. });
        self.state = BreakerState::Closed { failures: 0 };
        was_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: 3,
            probe_interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        assert!(!b.record_failure(now));
        assert!(!b.record_failure(now));
        b.record_success();
        assert!(!b.record_failure(now));
        assert!(!b.record_failure(now));
        assert!(b.allows_request(now));
        assert!(b.record_failure(now), "third consecutive failure opens");
        assert!(!b.allows_request(now));
        assert!(!b.record_failure(now), "already open");
    }

    #[test]
    fn only_an_answered_probe_closes_it() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.record_failure(now);
        }
        b.record_success(); // a late reply to an old request
        assert!(
            !b.allows_request(now),
            "a late ordinary reply does not close"
        );
        assert!(!b.take_probe(now), "first probe waits one interval");
        let later = now + Duration::from_secs(5);
        assert!(b.take_probe(later));
        assert!(!b.take_probe(later), "one probe per interval");
        assert_eq!(b.probe_due(), Some(later + Duration::from_secs(5)));
        assert!(b.record_probe_success());
        assert!(b.allows_request(later));
        assert_eq!(b.probe_due(), None);
        assert!(
            !b.record_probe_success(),
            "closing a closed breaker reports no change"
        );
    }

    #[test]
    fn it_opens_again_after_closing_when_failures_return() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.record_failure(now);
        }
        b.record_probe_success();
        assert!(
            !b.record_failure(now),
            "count starts from zero after closing"
        );
        b.record_failure(now);
        assert!(b.record_failure(now));
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn a_threshold_of_zero_behaves_as_one() {
        let now = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            failure_threshold: 0,
            probe_interval: Duration::from_secs(1),
        });
        assert!(b.record_failure(now));
    }
}
