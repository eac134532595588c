//! Per-server circuit breaker (design.md §4): a pure state machine, no clocks or sockets inside.
//!
//! Closed: requests flow; consecutive failed exchanges are counted and `failure_threshold` of
//! them open the breaker. Open: no request is sent to the server. How it closes again depends on
//! how the server is checked (`status_check`):
//!
//! - **Status-Server** (default): the prober sends a Status-Server (RFC 5997) when
//!   [`Breaker::take_probe`] says so, and only a verified answer to that probe closes the
//!   breaker. A late success of an ordinary request while open does not close it: the server may
//!   be answering a backlog (a `kill -STOP`ped server does).
//! - **Request** (servers that never answer Status-Server, such as Microsoft NPS): once per probe
//!   interval one ordinary request is let through as a trial ([`Breaker::take_trial`]); its
//!   verified answer closes the breaker. What its silence costs depends on who carries it
//!   ([`Carrier`]): a trial a user waits on (a sign-in) costs them a failover's delay, so its
//!   loss doubles the wait before the next such trial (up to 2^[`MAX_BACKOFF_LEVEL`]
//!   intervals); one nobody waits on (accounting the outbox sends on its own) costs no one, so
//!   such a trial may go every interval however long the outage was, and its loss changes no
//!   wait — a server down for minutes is found back within an interval by its held
//!   accounting, not a minute later.
//!
//! Flapping is damped: a server that is closed by a probe (or trial) and opens again before any
//! ordinary request succeeded — it answers Status-Server while its back end is down — waits
//! twice as long for its next probe each time (up to 2^[`MAX_BACKOFF_LEVEL`] intervals); an
//! ordinary success resets that. So the breaker never stays open for good, and a sick server
//! costs ever fewer requests. Each probe that goes unanswered takes the damping one step back
//! ([`Breaker::record_probe_failure`]): a flapping server answers Status-Server, so one that
//! does not is down — a new outage of a server that got no request between two of them (a
//! backup) — and its waits halve back to one interval, so its return is noticed soon; a probe
//! of a real flapper lost on the way costs its damping one step, not all of it.

use std::time::Duration;
use tokio::time::Instant;

/// Largest back-off exponent: probes at most every 2^5 = 32 probe intervals.
pub const MAX_BACKOFF_LEVEL: u32 = 5;

/// Breaker parameters.
#[derive(Clone, Copy, Debug)]
pub struct BreakerPolicy {
    /// Consecutive failed exchanges that open the breaker.
    pub failure_threshold: u32,
    /// Time between Status-Server probes (or trial requests) while open, before back-off.
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

/// Who a trial request (a server checked by request) is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// A user waits on it (a sign-in's Access-Request or Start): its loss costs them a
    /// failover's delay, so these trials are damped.
    User,
    /// Nobody waits on it (accounting sent by the outbox on its own): one may go every probe
    /// interval.
    Background,
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; `failures` + `peer_failures` consecutive failures so far.
    Closed {
        /// Consecutive failed exchanges of this replica since its last success.
        failures: u32,
        /// Those other replicas told of since this one's last success and since their own
        /// last answer ([`Breaker::record_peer_failure`]; 0 with one replica).
        peer_failures: u32,
    },
    /// No requests; waiting for a probe (or trial) to be answered.
    Open {
        /// When the breaker opened.
        since: Instant,
        /// When the next probe or trial may be sent.
        next_probe: Instant,
        /// When the server was last found down (the breaker opened, or a check went
        /// unanswered): a trial nobody waits on may go a probe interval after it.
        checked: Instant,
    },
    /// One ordinary request is out as a trial; no other request until its outcome (or `until`,
    /// after which the trial is taken as lost and another may go).
    Trial {
        /// When the breaker opened.
        since: Instant,
        /// When the trial counts as lost.
        until: Instant,
        /// Who the trial is made for.
        carrier: Carrier,
        /// When the next trial a user waits on could have gone before this one was taken (a
        /// lost background trial leaves that schedule as it was).
        next_probe: Instant,
    },
}

/// One server's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: BreakerState,
    /// Back-off exponent for the wait before the next probe.
    backoff_level: u32,
    /// Closed by a probe or trial, and no ordinary request has succeeded since.
    closed_on_probation: bool,
    /// When the server was found down and has not served an ordinary request since: a breaker
    /// that a probe closes on probation and the next requests open again (a server that
    /// answers Status-Server while its back end is down) stays down from the first opening.
    down_from: Option<Instant>,
    /// When the state last changed kind (opened, a trial taken, closed; None: never): an
    /// exchange begun before then says nothing of the state now ([`Breaker::record_failure`]).
    changed_at: Option<Instant>,
    /// When another replica's failure was last counted: older than [`PEER_FAILURES_KEPT`],
    /// the peers' failures count no more (a replica whose next answer would have taken them
    /// back may have gone quiet, or closed its breaker by a probe, which it tells no one).
    peer_failed_at: Option<Instant>,
}

/// How long other replicas' failures count after the last of them: long enough for a Stop's
/// retries that replicas take in turns (their backoff starts at a second), short enough that
/// stray losses an hour apart at different replicas never add up to an opening.
pub const PEER_FAILURES_KEPT: Duration = Duration::from_secs(60);

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            state: BreakerState::Closed {
                failures: 0,
                peer_failures: 0,
            },
            backoff_level: 0,
            closed_on_probation: false,
            down_from: None,
            changed_at: None,
            peer_failed_at: None,
        }
    }

    /// Moves to `state`, noting when its kind changed.
    fn set_state(&mut self, state: BreakerState) {
        if std::mem::discriminant(&state) != std::mem::discriminant(&self.state) {
            self.changed_at = Some(Instant::now());
        }
        self.state = state;
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The wait before the next probe at the current back-off level.
    pub fn probe_wait(&self) -> Duration {
        self.policy.probe_interval * 2u32.pow(self.backoff_level.min(MAX_BACKOFF_LEVEL))
    }

    /// Whether an ordinary request may be sent to the server now (closed).
    pub fn allows_request(&self, _now: Instant) -> bool {
        matches!(self.state, BreakerState::Closed { .. })
    }

    /// Since when the server is down, while it is (open, or a trial out): from the first
    /// opening since it last served an ordinary request (closings on probation in between do
    /// not count).
    pub fn down_since(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open { since, .. } | BreakerState::Trial { since, .. } => {
                Some(self.down_from.map_or(since, |from| from.min(since)))
            }
            BreakerState::Closed { .. } => None,
        }
    }

    /// Whether the breaker is open with no trial out (nothing may be sent but a probe).
    pub fn is_open(&self) -> bool {
        matches!(self.state, BreakerState::Open { .. })
    }

    /// An exchange was answered (verified reply). While closed: resets the failure count and the
    /// back-off. A trial's answer closes the breaker (returns true). While open it changes
    /// nothing: a late reply to an old request says nothing about the server now.
    pub fn record_success(&mut self) -> bool {
        match self.state {
            BreakerState::Closed { .. } => {
                self.set_state(BreakerState::Closed {
                    failures: 0,
                    peer_failures: 0,
                });
                self.backoff_level = 0;
                self.closed_on_probation = false;
                self.down_from = None;
                false
            }
            BreakerState::Trial { .. } => {
                self.set_state(BreakerState::Closed {
                    failures: 0,
                    peer_failures: 0,
                });
                self.backoff_level = 0;
                self.closed_on_probation = false;
                self.down_from = None;
                true
            }
            BreakerState::Open { .. } => false,
        }
    }

    /// An exchange got no verified reply. Returns true when this failure opened a closed
    /// breaker. A lost trial opens it again with a longer wait. An exchange begun (`started`)
    /// before the state last changed kind counts for nothing — as a late reply's success
    /// does not: a request sent before an opening that times out after the probe closed the
    /// breaker is no news of the server now, nor is one sent before a trial was taken the
    /// trial's loss (the RADIUS review's L4 of session 80: they reopened a breaker on a
    /// server back up, with a longer wait, and threw the trial's answer away).
    pub fn record_failure(&mut self, now: Instant, started: Option<Instant>) -> bool {
        if started
            .zip(self.changed_at)
            .is_some_and(|(started, changed)| started < changed)
        {
            return false;
        }
        match self.state {
            BreakerState::Closed { failures, .. } => {
                let peer_failures = self.peer_failures_now(now);
                let failures = failures.saturating_add(1);
                if failures.saturating_add(peer_failures) >= self.policy.failure_threshold.max(1) {
                    self.backoff_level = if self.closed_on_probation {
                        (self.backoff_level + 1).min(MAX_BACKOFF_LEVEL)
                    } else {
                        0
                    };
                    self.open(now);
                    true
                } else {
                    self.set_state(BreakerState::Closed {
                        failures,
                        peer_failures,
                    });
                    false
                }
            }
            BreakerState::Trial {
                since,
                carrier,
                next_probe,
                ..
            } => {
                // A user's lost trial doubles the wait before the next; a background one's
                // only tells that the server is still down (users' trials wait a full wait
                // from now: a check just now found it down).
                if carrier == Carrier::User {
                    self.backoff_level = (self.backoff_level + 1).min(MAX_BACKOFF_LEVEL);
                }
                self.set_state(BreakerState::Open {
                    since,
                    next_probe: next_probe.max(now + self.probe_wait()),
                    checked: now,
                });
                false
            }
            BreakerState::Open { .. } => false,
        }
    }

    /// The peers' failures that still count at `now` ([`PEER_FAILURES_KEPT`]).
    fn peer_failures_now(&self, now: Instant) -> u32 {
        match (self.state, self.peer_failed_at) {
            (BreakerState::Closed { peer_failures, .. }, Some(at))
                if now.saturating_duration_since(at) < PEER_FAILURES_KEPT =>
            {
                peer_failures
            }
            _ => 0,
        }
    }

    fn open(&mut self, now: Instant) {
        if !self.closed_on_probation || self.down_from.is_none() {
            self.down_from = Some(now);
        }
        self.closed_on_probation = false;
        self.set_state(BreakerState::Open {
            since: now,
            next_probe: now + self.probe_wait(),
            checked: now,
        });
    }

    /// Another replica's exchange with the server went unanswered (several replicas on one
    /// database count each other's failures, so a packet whose retries they take in turns
    /// fails over after `failure_threshold` of them, as with one replica). Counted with this
    /// breaker's own while closed; open, or with a trial of its own out, it changes nothing
    /// (that trial's outcome decides). An opening it makes leaves the probes' back-off as it
    /// is: only this replica's own failures show the server flapping. Returns true when it
    /// opened the breaker.
    pub fn record_peer_failure(&mut self, now: Instant) -> bool {
        let BreakerState::Closed { failures, .. } = self.state else {
            return false;
        };
        let peer_failures = self.peer_failures_now(now).saturating_add(1);
        self.peer_failed_at = Some(now);
        if failures.saturating_add(peer_failures) >= self.policy.failure_threshold.max(1) {
            self.open(now);
            true
        } else {
            self.set_state(BreakerState::Closed {
                failures,
                peer_failures,
            });
            false
        }
    }

    /// Another replica's exchange with the server was answered after failures it had told
    /// of: while closed, the other replicas' failures count no more — this replica's own do
    /// (a server only this one cannot reach still opens its breaker), and the back-off stays.
    /// Open, only this replica's own probe (or trial) closes it.
    pub fn record_peer_success(&mut self) {
        if let BreakerState::Closed { failures, .. } = self.state {
            self.set_state(BreakerState::Closed {
                failures,
                peer_failures: 0,
            });
        }
    }

    /// Whether a Status-Server probe should be sent now (open and its time has come). Taking the
    /// probe moves the next one a wait ahead, so concurrent probers send one at a time.
    pub fn take_probe(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Open {
                since,
                next_probe,
                checked,
            } if now >= next_probe => {
                self.set_state(BreakerState::Open {
                    since,
                    next_probe: now + self.probe_wait(),
                    checked,
                });
                true
            }
            _ => false,
        }
    }

    /// The probe just taken lasts until `until` (it sends a new Status-Server every timeout
    /// itself): no other is taken before it ends (the review of session 81's F5: probes
    /// lasting timeout × tries, one taken every probe interval, overlapped four or five deep).
    pub fn probe_lasts_until(&mut self, until: Instant) {
        if let BreakerState::Open {
            since,
            next_probe,
            checked,
        } = self.state
        {
            if until > next_probe {
                self.set_state(BreakerState::Open {
                    since,
                    next_probe: until,
                    checked,
                });
            }
        }
    }

    /// Whether one ordinary request made for `carrier` may go now as a trial (servers checked
    /// by request): open and its time has come — for a trial nobody waits on, a probe interval
    /// after the server was last found down, whatever the users' back-off — or an earlier
    /// trial outlived `until` without an outcome. The trial is held for `hold` (the longest
    /// its exchange can take).
    pub fn take_trial(&mut self, now: Instant, hold: Duration, carrier: Carrier) -> bool {
        if self.trial_at(carrier).is_none_or(|at| now < at) {
            return false;
        }
        let (BreakerState::Open {
            since, next_probe, ..
        }
        | BreakerState::Trial {
            since, next_probe, ..
        }) = self.state
        else {
            return false;
        };
        // A change also when a trial is taken again (the last one's hold over, its exchange
        // maybe still out): the earlier one's late loss is not this one's.
        self.state = BreakerState::Trial {
            since,
            until: now + hold,
            carrier,
            next_probe,
        };
        self.changed_at = Some(Instant::now());
        true
    }

    /// When a trial made for `carrier` may go (None while closed): see [`Breaker::take_trial`].
    pub fn trial_at(&self, carrier: Carrier) -> Option<Instant> {
        match self.state {
            BreakerState::Open {
                next_probe,
                checked,
                ..
            } => Some(match carrier {
                Carrier::User => next_probe,
                Carrier::Background => next_probe.min(checked + self.policy.probe_interval),
            }),
            BreakerState::Trial { until, .. } => Some(until),
            BreakerState::Closed { .. } => None,
        }
    }

    /// The server's settings changed (its secret, its timeout): what failed says nothing about
    /// the server as now configured. An open breaker (or one with a trial out, sent with the
    /// old settings) may be probed at once, and its back-off starts over; a closed one is left
    /// as it is. Returns whether a probe is due now.
    pub fn reconfigured(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Open { since, .. } | BreakerState::Trial { since, .. } => {
                self.backoff_level = 0;
                self.closed_on_probation = false;
                self.set_state(BreakerState::Open {
                    since,
                    next_probe: now,
                    checked: now,
                });
                true
            }
            BreakerState::Closed { .. } => false,
        }
    }

    /// The server answered on its other port (the same host, checked by request): the next
    /// trial may go at once, whatever the back-off (which stays as it is: a trial lost now
    /// still doubles it). Returns whether that brought it forward.
    pub fn check_soon(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Open {
                since,
                next_probe,
                checked,
            } if next_probe > now => {
                self.set_state(BreakerState::Open {
                    since,
                    next_probe: now,
                    checked,
                });
                true
            }
            _ => false,
        }
    }

    /// When the next probe is due (None unless open).
    pub fn probe_due(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open { next_probe, .. } => Some(next_probe),
            BreakerState::Closed { .. } | BreakerState::Trial { .. } => None,
        }
    }

    /// A probe sent while open got no verified answer: the server is down rather than flapping
    /// (a flapping server answers Status-Server while its requests fail). The back-off goes one
    /// level back, and the next probe comes at most that level's wait from `now`: after a few
    /// unanswered probes, every interval again. One level, not all: a probe lost on the way
    /// (UDP) must not undo a flapping server's damping. Returns whether that moved the next
    /// probe earlier.
    pub fn record_probe_failure(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Open {
                since, next_probe, ..
            } if self.backoff_level > 0 => {
                self.backoff_level -= 1;
                let sooner = now + self.probe_wait();
                self.set_state(BreakerState::Open {
                    since,
                    next_probe: next_probe.min(sooner),
                    checked: now,
                });
                sooner < next_probe
            }
            _ => false,
        }
    }

    /// Takes back a failure counted for an exchange begun at `started` that turned out to be its
    /// packet's, not the server's (a record the server cannot store): while closed, and only
    /// one counted since it last changed kind.
    pub fn take_back_failure(&mut self, started: Instant) {
        if self.changed_at.is_some_and(|changed| started < changed) {
            return;
        }
        if let BreakerState::Closed {
            failures,
            peer_failures,
        } = self.state
        {
            if failures > 0 {
                self.set_state(BreakerState::Closed {
                    failures: failures - 1,
                    peer_failures,
                });
            }
        }
    }

    /// A probe was answered with a verified reply: close, on probation until an ordinary request
    /// succeeds. Returns true if it was open. A closed breaker is left as it is: the answer of
    /// a probe that outlasted its deadline, the breaker closed since, says nothing of the
    /// failures counted after that (the whole-change review of session 83, F3).
    pub fn record_probe_success(&mut self) -> bool {
        if matches!(self.state, BreakerState::Closed { .. }) {
            return false;
        }
        self.closed_on_probation = true;
        self.set_state(BreakerState::Closed {
            failures: 0,
            peer_failures: 0,
        });
        true
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
    fn no_probe_is_taken_while_one_is_out() {
        let now = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            failure_threshold: 1,
            probe_interval: Duration::from_secs(2),
        });
        b.record_failure(now, None);
        let first = now + Duration::from_secs(2);
        assert!(b.take_probe(first));
        b.probe_lasts_until(first + Duration::from_secs(9));
        assert!(
            !b.take_probe(first + Duration::from_secs(4)),
            "the first is still out"
        );
        assert!(b.take_probe(first + Duration::from_secs(9)));
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        assert!(!b.record_failure(now, None));
        assert!(!b.record_failure(now, None));
        b.record_success();
        assert!(!b.record_failure(now, None));
        assert!(!b.record_failure(now, None));
        assert!(b.allows_request(now));
        assert!(
            b.record_failure(now, None),
            "third consecutive failure opens"
        );
        assert!(!b.allows_request(now));
        assert!(!b.record_failure(now, None), "already open");
    }

    #[test]
    fn other_replicas_failures_count_with_its_own_while_closed() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        assert!(!b.record_failure(now, None));
        assert!(!b.record_peer_failure(now));
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                failures: 1,
                peer_failures: 1
            }
        );
        assert!(
            b.record_peer_failure(now),
            "the third in a row, a peer's, opens it"
        );
        assert!(!b.allows_request(now));
        b.record_peer_success();
        assert!(!b.allows_request(now), "only its own probe closes it");
        assert!(!b.record_peer_failure(now), "already open");
    }

    #[test]
    fn a_peers_answer_takes_back_the_peers_failures_and_its_own_answer_all() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        b.record_failure(now, None);
        b.record_peer_failure(now);
        b.record_peer_success();
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                failures: 1,
                peer_failures: 0
            }
        );
        // A server only this replica cannot reach: the others' answers do not hold it up.
        b.record_peer_success();
        assert!(!b.record_failure(now, None));
        b.record_peer_success();
        assert!(
            b.record_failure(now, None),
            "its own third failure opens it"
        );

        let mut b = Breaker::new(policy());
        b.record_peer_failure(now);
        b.record_peer_failure(now);
        b.record_success();
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                failures: 0,
                peer_failures: 0
            },
            "it reached the server itself"
        );
    }

    #[test]
    fn other_replicas_failures_count_for_a_minute_after_the_last() {
        let now = Instant::now();
        let peers_twice = || {
            let mut b = Breaker::new(policy());
            b.record_peer_failure(now);
            b.record_peer_failure(now);
            b
        };
        let mut soon = peers_twice();
        assert!(soon.record_failure(now + PEER_FAILURES_KEPT - Duration::from_secs(1), None));
        let mut later = peers_twice();
        assert!(!later.record_failure(now + PEER_FAILURES_KEPT, None));
        assert_eq!(
            later.state(),
            BreakerState::Closed {
                failures: 1,
                peer_failures: 0
            }
        );
        let mut by_peers = peers_twice();
        assert!(
            !by_peers.record_peer_failure(now + PEER_FAILURES_KEPT),
            "a new one starts the peers' count again"
        );
    }

    #[test]
    fn an_opening_by_other_replicas_failures_does_not_lengthen_the_probes_back_off() {
        let now = Instant::now();
        let on_probation = || {
            let mut b = Breaker::new(policy());
            for _ in 0..3 {
                b.record_failure(now, None);
            }
            assert!(b.record_probe_success());
            b
        };
        let mut by_peers = on_probation();
        for _ in 0..3 {
            by_peers.record_peer_failure(now);
        }
        assert!(by_peers.is_open());
        assert_eq!(by_peers.probe_wait(), Duration::from_secs(5));
        let mut by_itself = on_probation();
        for _ in 0..3 {
            by_itself.record_failure(now, None);
        }
        assert_eq!(
            by_itself.probe_wait(),
            Duration::from_secs(10),
            "its own failures right after a probe closed it: flapping"
        );
    }

    #[test]
    fn another_replicas_failure_is_not_taken_for_the_loss_of_this_ones_trial() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.record_failure(now, None);
        }
        let later = now + Duration::from_secs(5);
        assert!(b.take_trial(later, Duration::from_secs(3), Carrier::Background));
        assert!(!b.record_peer_failure(later));
        assert!(
            matches!(b.state(), BreakerState::Trial { .. }),
            "the trial's own outcome decides"
        );
        assert!(b.record_success(), "the trial answered closes it");
    }

    #[test]
    fn only_an_answered_probe_closes_it() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.record_failure(now, None);
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
            b.record_failure(now, None);
        }
        b.record_probe_success();
        assert!(
            !b.record_failure(now, None),
            "count starts from zero after closing"
        );
        b.record_failure(now, None);
        assert!(b.record_failure(now, None));
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[test]
    fn a_threshold_of_zero_behaves_as_one() {
        let now = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            failure_threshold: 0,
            probe_interval: Duration::from_secs(1),
        });
        assert!(b.record_failure(now, None));
    }

    fn open(b: &mut Breaker, now: Instant) {
        while !b.record_failure(now, None) {}
    }

    /// An open breaker's server answers its next probe `times` times, and each time fails the
    /// requests that follow (it answers Status-Server while its back end is down). Returns
    /// when it opened last.
    fn flap(b: &mut Breaker, times: usize) -> Instant {
        let mut now = b.probe_due().expect("open");
        for _ in 0..times {
            now = b.probe_due().expect("open");
            assert!(b.take_probe(now));
            assert!(b.record_probe_success());
            open(b, now);
        }
        now
    }

    #[test]
    fn a_server_that_answers_probes_but_not_requests_is_probed_ever_less_often() {
        let mut now = Instant::now();
        let mut b = Breaker::new(policy());
        open(&mut b, now);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let due = b.probe_due().expect("open");
            waits.push((due - now).as_secs());
            now = due;
            assert!(b.take_probe(now));
            assert!(b.record_probe_success());
            open(&mut b, now); // its back end is still down: requests time out again
        }
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 160, 160]);
        // Down all along since the first opening: the closings on probation do not count
        // (accounting waits a minute of it before another server's trial carries a Stop).
        let first = now - Duration::from_secs(waits.iter().sum());
        assert_eq!(b.down_since(), Some(first));
        // An ordinary success after a probe closed it resets the back-off, and the outage.
        now = b.probe_due().expect("open");
        assert!(b.take_probe(now));
        b.record_probe_success();
        b.record_success();
        open(&mut b, now);
        assert_eq!(b.probe_due(), Some(now + Duration::from_secs(5)));
        assert_eq!(b.down_since(), Some(now));
    }

    #[test]
    fn unanswered_probes_undo_the_damping_a_step_each_so_a_new_outage_is_probed_every_interval() {
        // A backup gets no ordinary request while the primary is up: closed by a probe after
        // an outage, its next outage opens it at a damped level although it never flapped.
        let mut now = Instant::now();
        let mut b = Breaker::new(policy());
        open(&mut b, now);
        now = flap(&mut b, 3);
        let damped = b.probe_due().expect("open") - now;
        assert_eq!(
            damped,
            Duration::from_secs(40),
            "damped after three closings"
        );
        // Its probes go unanswered: the server is down, not answering Status-Server. Each one
        // halves the wait, counted from when it was found unanswered, down to one interval.
        let mut waits = Vec::new();
        for _ in 0..4 {
            now = b.probe_due().expect("open");
            assert!(b.take_probe(now));
            let unanswered = now + Duration::from_secs(2);
            let sooner = b.record_probe_failure(unanswered);
            let wait = b.probe_due().expect("open") - unanswered;
            waits.push((wait.as_secs(), sooner));
        }
        assert_eq!(waits, vec![(20, true), (10, true), (5, true), (3, false)]);
        // Back: closed by the next answered probe.
        now = b.probe_due().expect("open");
        assert!(b.take_probe(now));
        assert!(b.record_probe_success());
        assert!(b.allows_request(now));
        // An unanswered probe never touches a closed breaker.
        assert!(!b.record_probe_failure(now));
        assert!(b.allows_request(now));
    }

    #[test]
    fn a_lost_probe_costs_a_flapping_server_one_step_of_its_damping() {
        let mut now = Instant::now();
        let mut b = Breaker::new(policy());
        open(&mut b, now);
        now = flap(&mut b, 4);
        assert_eq!(b.probe_due(), Some(now + Duration::from_secs(80)));
        now = b.probe_due().expect("open");
        assert!(b.take_probe(now));
        b.record_probe_failure(now); // lost on the way
        now = b.probe_due().expect("open");
        assert!(b.take_probe(now));
        assert!(b.record_probe_success()); // the next is answered
        open(&mut b, now); // and its requests still fail
        assert_eq!(
            b.probe_due(),
            Some(now + Duration::from_secs(80)),
            "still damped: one step back and one forward"
        );
    }

    #[test]
    fn a_trial_request_closes_it_when_answered_and_backs_off_when_lost() {
        let now = Instant::now();
        let hold = Duration::from_secs(3);
        let mut b = Breaker::new(policy());
        open(&mut b, now);
        assert!(
            !b.take_trial(now, hold, Carrier::User),
            "the first trial waits one interval"
        );
        let t1 = now + Duration::from_secs(5);
        assert!(b.take_trial(t1, hold, Carrier::User));
        assert!(
            !b.take_trial(t1, hold, Carrier::User),
            "one trial at a time"
        );
        assert!(!b.allows_request(t1));
        assert!(!b.is_open(), "a trial is out");
        assert!(
            !b.record_failure(t1, None),
            "a lost trial is not a new opening"
        );
        assert_eq!(
            b.probe_due(),
            Some(t1 + Duration::from_secs(10)),
            "backed off"
        );
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.take_trial(t2, hold, Carrier::User));
        // The trial's exchange vanished (its task ended without an outcome): another may go.
        assert!(!b.take_trial(t2 + Duration::from_secs(2), hold, Carrier::User));
        assert!(b.take_trial(t2 + hold, hold, Carrier::User));
        assert!(b.record_success(), "an answered trial closes it");
        assert!(b.allows_request(t2 + hold));
        assert!(!b.record_failure(t2, None), "the count starts afresh");
    }

    /// A request sent before the breaker last changed — before it opened, before its trial
    /// was taken — that fails afterwards is no news of the server now (the RADIUS review's L4):
    /// it neither reopens a breaker its probe closed nor loses the trial out.
    #[test]
    fn a_failure_of_an_exchange_begun_before_the_last_change_is_no_news() {
        let now = Instant::now();
        let earlier = Instant::now() - Duration::from_millis(1);
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.record_failure(now, Some(earlier));
        }
        assert!(b.is_open(), "begun while it was closed: counted");
        let later = now + Duration::from_secs(5);
        assert!(b.take_probe(later));
        assert!(b.record_probe_success(), "closed by its probe");
        for _ in 0..5 {
            assert!(!b.record_failure(later, Some(earlier)));
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                failures: 0,
                peer_failures: 0
            },
            "the old requests' timeouts count for nothing"
        );
        assert!(!b.record_failure(later, Some(Instant::now())));
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                failures: 1,
                peer_failures: 0
            },
            "one begun since the close counts"
        );
        // A trial out: an older request's loss is not the trial's.
        let mut b = Breaker::new(policy());
        open(&mut b, now);
        let before_the_trial = Instant::now() - Duration::from_millis(1);
        assert!(b.take_trial(later, Duration::from_secs(3), Carrier::User));
        assert!(!b.record_failure(later, Some(before_the_trial)));
        assert!(
            matches!(b.state(), BreakerState::Trial { .. }),
            "{:?}",
            b.state()
        );
        assert!(!b.record_failure(later, Some(Instant::now())));
        assert!(b.is_open(), "the trial's own loss");
    }

    #[test]
    fn a_trial_nobody_waits_on_goes_every_interval_and_its_loss_backs_nothing_off() {
        let now = Instant::now();
        let hold = Duration::from_secs(3);
        let interval = Duration::from_secs(5);
        let mut b = Breaker::new(policy());
        open(&mut b, now);
        // Users' trials lost three times: theirs come every 40 s now.
        let mut t = now;
        for _ in 0..3 {
            t = b.probe_due().expect("open");
            assert!(b.take_trial(t, hold, Carrier::User));
            b.record_failure(t + hold, None);
        }
        let lost = t + hold;
        assert_eq!(b.probe_due(), Some(lost + interval * 8));
        // Accounting nobody waits on may check the server an interval after it was last found
        // down, not a user's 40 s.
        assert!(!b.take_trial(
            lost + interval - Duration::from_millis(1),
            hold,
            Carrier::Background
        ));
        assert_eq!(b.trial_at(Carrier::Background), Some(lost + interval));
        assert!(
            !b.take_trial(lost + interval, hold, Carrier::User),
            "a user's is damped"
        );
        let mut t = lost + interval;
        for _ in 0..4 {
            assert!(b.take_trial(t, hold, Carrier::Background));
            assert!(!b.take_trial(t, hold, Carrier::User), "one trial at a time");
            assert!(!b.record_failure(t + hold, None));
            // Lost: the next background trial an interval after, the back-off unchanged, and
            // users' trials a full (damped) wait after this check.
            assert_eq!(b.trial_at(Carrier::Background), Some(t + hold + interval));
            assert_eq!(b.probe_due(), Some(t + hold + interval * 8));
            t += hold + interval;
        }
        assert!(b.take_trial(t, hold, Carrier::Background));
        assert!(b.record_success(), "its answer closes the breaker");
        assert!(b.allows_request(t));
        // The back-off starts over: the next outage's trials come every interval again.
        open(&mut b, t);
        assert_eq!(b.probe_due(), Some(t + interval));
    }

    #[test]
    fn a_late_reply_while_open_neither_closes_it_nor_takes_the_probe() {
        let now = Instant::now();
        let mut b = Breaker::new(policy());
        open(&mut b, now);
        assert!(!b.record_success());
        assert!(b.is_open());
        assert!(!b.take_trial(now, Duration::from_secs(1), Carrier::Background));
    }
}
