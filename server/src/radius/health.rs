//! What the portal knows about each RADIUS server while it runs: its circuit breaker, keyed by
//! the address requests go to and the secret that signs them ([`Target`]), and whether the
//! address has been seen sending Message-Authenticator (`learn` mode, per address). Auth and
//! acct ports are separate entries (one can be down while the other answers), and each
//! organization's server has entries of its own (the organization is part of [`Target`]), so
//! requests of one organization a shared server leaves unanswered — its users' directory down
//! behind it, a wrong secret — never lock the other organizations out.
//!
//! Replicas on one database count each other's unanswered exchanges ([`ServerHealth::tell_peers`],
//! [`ServerHealth::from_peer`]): a packet whose retries they take in turns fails over after
//! `breaker_failures` of them, as with one replica. Each replica's breaker still closes only on
//! its own probe's (or trial's) answer.

use super::breaker::{Breaker, BreakerPolicy, BreakerState, Carrier};
use super::ServerEndpoint;
use crate::config::StatusCheck;
use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::Notify, time::Instant};

/// How long one check of a down server takes at most: its timeout × tries, as any request —
/// a Status-Server probe (a new packet every timeout, the prober's deadline) and a trial
/// request (`status_check = "request"`) alike.
pub fn check_answered_within(server: &ServerEndpoint) -> Duration {
    server.timeout * (server.retries + 1)
}
/// A server as its breaker knows it: where requests go, and which secret signs them (a keyed
/// hash, random per process: the secret itself is kept nowhere here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The address requests go to.
    pub addr: SocketAddr,
    secret: u64,
}

/// Which port of a server an entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Access-Request / Status-Server (answered with Access-Accept).
    Auth,
    /// Accounting-Request (Status-Server answered with Accounting-Response).
    Acct,
}

impl Port {
    /// The same server's other port.
    pub fn other(self) -> Port {
        match self {
            Port::Auth => Port::Acct,
            Port::Acct => Port::Auth,
        }
    }
}

struct Entry {
    breaker: Breaker,
    /// Where and how to probe while open: the endpoint that last used this address.
    probe: Option<(ServerEndpoint, Port)>,
    /// When its breaker last closed after being open (None: never opened).
    closed_again_at: Option<Instant>,
    /// How often its breaker has closed after being open.
    recoveries: u64,
    /// When a request to it was last answered.
    answered_at: Option<Instant>,
    /// A Status-Server probe of it was answered once.
    probe_answered: bool,
    /// The latest start of an exchange it answered (a request, a probe, an idle check).
    heard_at: Option<Instant>,
    /// The latest start of a Status-Server check of it (a probe, an idle check) left
    /// unanswered: it was down then.
    check_unanswered_at: Option<Instant>,
    /// The outage (by when its breaker opened) in which its next trial was brought forward
    /// once already, the server having answered at its other port.
    brought_forward: Option<Instant>,
}

/// Per-server state. Cheap to clone.
#[derive(Clone)]
pub struct ServerHealth {
    policy: BreakerPolicy,
    /// A std Mutex: held for map operations only.
    entries: Arc<Mutex<Registry>>,
    /// Keys the secrets' hashes in [`Target`].
    secrets: RandomState,
    /// Signalled when a breaker opens (the prober schedules a probe).
    opened: Arc<Notify>,
    /// Counts the breakers that closed (accounting retries what waited for them). A count, not
    /// a signal: a receiver busy with something else when it changes sees it next time it looks.
    recovered: Arc<tokio::sync::watch::Sender<u64>>,
    /// A server checked by Status-Server that nothing answered for this long is sent one
    /// ([`ServerHealth::with_idle_checks`]); None: never.
    idle_check: Option<Duration>,
    /// Where this replica's breaker news goes for the others, and the key that names secrets
    /// in it ([`ServerHealth::tell_peers`]).
    peers: Arc<std::sync::OnceLock<Peers>>,
}

struct Peers {
    news: tokio::sync::mpsc::Sender<(Instant, PeerNews)>,
    key: SecretKey,
}

/// The replicas' shared key for naming secrets in breaker news ([`secret_fingerprint`]).
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// The key (`app_secrets`' `breaker_news_key`, the same in every replica).
    pub fn new(key: [u8; 32]) -> Self {
        SecretKey(key)
    }
}

/// News of one server for the other replicas: an exchange with it went unanswered (counted
/// while this replica's breaker was closed), or one was answered after such failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerNews {
    /// The address the exchange went to.
    pub addr: SocketAddr,
    /// [`secret_fingerprint`] of the secret it was signed with.
    pub secret: u64,
    /// Answered (the count starts again), or not.
    pub answered: bool,
}

/// How replicas name a secret to each other (the same in every replica, unlike [`Target`]'s
/// per-process key): the first 8 bytes of HMAC-SHA256 of the secret under the replicas' shared
/// key, so what goes through NOTIFY — which any login to the database can listen to — is no
/// unkeyed hash of a secret to be guessed offline. Never logged.
pub fn secret_fingerprint(key: &SecretKey, server: &ServerEndpoint) -> u64 {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    // The organization too: each organization's server entry has a breaker of its own.
    mac.update(server.organization.as_bytes());
    mac.update(&[0]);
    mac.update(server.secret.expose().as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// News the peers' channel holds at most: beyond, news is dropped (the breakers then count as
/// each replica alone).
const PEER_NEWS_QUEUE: usize = 256;

/// News older than this when it could go is dropped (the database was slow or away): a peer's
/// breaker closed by its probe since must not count an old failure as a new one.
pub const PEER_NEWS_FRESH: Duration = Duration::from_secs(2);

/// A check of an idle server ([`ServerHealth::with_idle_checks`]).
struct Idle {
    server: ServerEndpoint,
    port: Port,
    /// When it is checked next (unless an answer comes before).
    next: Instant,
    /// A check of it is out (the next waits for its outcome).
    checking: bool,
}

/// Why a Status-Server goes to a server ([`ServerHealth::take_due_probes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Its breaker is open: an answer closes it.
    Probe,
    /// It is up, but nothing has answered for a while ([`ServerHealth::with_idle_checks`]).
    Idle,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<Target, Entry>,
    /// The targets the organizations' servers make now ([`ServerHealth::servers_changed`]).
    configured: std::collections::HashSet<Target>,
    /// Targets configured once and no more (a secret replaced, a server moved): the outcome of
    /// an exchange with one (made before the change, still in flight) is not kept — it would
    /// bring back a breaker nobody uses, probed with the old secret. A target never configured
    /// yet (a server just added, before the prober hears of it) is kept as any other.
    retired: std::collections::HashSet<Target>,
    /// Addresses seen sending a valid Message-Authenticator (`learn` mode): the server's
    /// habit, kept across a change of the secret.
    learned: std::collections::HashSet<SocketAddr>,
    /// The configured targets checked while idle, with their next check.
    idle: HashMap<Target, Idle>,
}

impl ServerHealth {
    /// Empty registry: every server starts closed.
    pub fn new(policy: BreakerPolicy) -> Self {
        ServerHealth {
            policy,
            entries: Arc::default(),
            secrets: RandomState::new(),
            opened: Arc::new(Notify::new()),
            recovered: Arc::new(tokio::sync::watch::Sender::new(0)),
            idle_check: None,
            peers: Arc::default(),
        }
    }

    /// From now on, this replica's unanswered exchanges (and an answer after them) are told to
    /// the other replicas through the returned receiver (PostgreSQL's NOTIFY), each with when
    /// it happened, and their news is heard ([`ServerHealth::from_peer`]); `key` names the
    /// secrets in it. Once only: None the second time.
    pub fn tell_peers(
        &self,
        key: SecretKey,
    ) -> Option<tokio::sync::mpsc::Receiver<(Instant, PeerNews)>> {
        let (news, rx) = tokio::sync::mpsc::channel(PEER_NEWS_QUEUE);
        self.peers.set(Peers { news, key }).ok().map(|()| rx)
    }

    fn tell(&self, server: &ServerEndpoint, port: Port, answered: bool) {
        if let Some(peers) = self.peers.get() {
            let news = PeerNews {
                addr: address(server, port),
                secret: secret_fingerprint(&peers.key, server),
                answered,
            };
            // Full (the database slow to take them): this one counts here only.
            if peers.news.try_send((Instant::now(), news)).is_err() {
                tracing::debug!(addr = %news.addr, "a RADIUS server's news for the other replicas was dropped (too many waiting)");
            }
        }
    }

    /// News from another replica, about each of `servers` (the organizations') at the address
    /// and with the secret it names: an unanswered exchange is counted as this replica's own
    /// would be while its breaker is closed, an answer after such failures starts the count
    /// again. Told to nobody.
    pub fn from_peer(&self, news: PeerNews, servers: &[ServerEndpoint]) {
        let Some(peers) = self.peers.get() else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        for server in servers {
            for port in [Port::Auth, Port::Acct] {
                if address(server, port) != news.addr
                    || secret_fingerprint(&peers.key, server) != news.secret
                    || !seen.insert(self.target(server, port))
                {
                    continue;
                }
                if news.answered {
                    self.peer_answered(server, port);
                } else {
                    self.peer_missed(server, port);
                }
            }
        }
    }

    fn peer_missed(&self, server: &ServerEndpoint, port: Port) {
        let target = self.target(server, port);
        if self.retired(target) {
            return;
        }
        let opened = self.with(target, |e| {
            e.probe = Some((server.clone(), port));
            e.breaker.record_peer_failure(Instant::now())
        });
        if opened {
            tracing::warn!(server = %server.name, organization = %server.organization, addr = %address(server, port), ?port,
                "RADIUS server not answering other replicas either: circuit breaker open, checking it from here too");
            self.opened.notify_one();
        }
    }

    /// Another replica's exchange with `server` at `port` was answered after failures it told
    /// of: a closed breaker's count starts again.
    fn peer_answered(&self, server: &ServerEndpoint, port: Port) {
        let target = self.target(server, port);
        if !self.retired(target) {
            self.with(target, |e| e.breaker.record_peer_success());
        }
    }

    /// Checks servers that are up but idle: each organization server checked by Status-Server
    /// (`status_check = "status-server"`) that nothing has answered for `every` — no request,
    /// no check — is sent a Status-Server. An unanswered one counts as a failed exchange (so
    /// many in a row open its breaker, and its probes take over; the next check comes a probe
    /// interval later meanwhile): a dead backup is found before a failover needs it, and
    /// `/readyz` and the breaker metrics see it. The first check comes between half of `every`
    /// and `every` after the server is configured (at random: servers configured together are
    /// not all checked at once). A server checked by request is never checked idle (only a real
    /// request can check it).
    pub fn with_idle_checks(mut self, every: Option<Duration>) -> Self {
        self.idle_check = every.filter(|d| !d.is_zero());
        self
    }

    /// What `server`'s `port` is to its breaker.
    pub fn target(&self, server: &ServerEndpoint, port: Port) -> Target {
        Target {
            addr: address(server, port),
            secret: self
                .secrets
                .hash_one((server.secret.expose(), &server.organization)),
        }
    }

    /// Runs `f` on `target`'s entry (created closed) — or, for a retired target, on a closed
    /// one that is not kept.
    fn with<T>(&self, target: Target, f: impl FnOnce(&mut Entry) -> T) -> T {
        let fresh = || Entry {
            breaker: Breaker::new(self.policy),
            probe: None,
            closed_again_at: None,
            recoveries: 0,
            answered_at: None,
            probe_answered: false,
            heard_at: None,
            check_unanswered_at: None,
            brought_forward: None,
        };
        let mut registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if registry.retired.contains(&target) {
            return f(&mut fresh());
        }
        f(registry.entries.entry(target).or_insert_with(fresh))
    }

    /// Whether `target` was configured once and is no more (its outcomes are not kept).
    fn retired(&self, target: Target) -> bool {
        let registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        registry.retired.contains(&target)
    }

    /// Whether ordinary requests may go to `addr` now, whatever the secret (every breaker of
    /// that address closed; tests).
    pub fn allows(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        let mut registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        registry
            .entries
            .iter_mut()
            .filter(|(target, _)| target.addr == addr)
            .all(|(_, e)| e.breaker.allows_request(now))
    }

    /// Whether `target`'s breaker is open with no trial out: nothing but a probe may go there.
    pub fn is_open(&self, target: Target) -> bool {
        self.with(target, |e| e.breaker.is_open())
    }

    /// While a trial request is out to `server` at `port` (checked by request, down): how long
    /// until its outcome is known (its answer, or its loss at the end of its hold).
    pub fn trial_left(&self, server: &ServerEndpoint, port: Port) -> Option<Duration> {
        self.with(self.target(server, port), |e| match e.breaker.state() {
            BreakerState::Trial { until, .. } => {
                Some(until.saturating_duration_since(Instant::now()))
            }
            _ => None,
        })
    }

    /// Whether `server` at `port` is up: its breaker closed (nothing taken, unlike
    /// [`ServerHealth::admit`]).
    pub fn is_up(&self, server: &ServerEndpoint, port: Port) -> bool {
        self.target_up(self.target(server, port))
    }

    /// Whether `target`'s breaker is closed.
    pub fn target_up(&self, target: Target) -> bool {
        self.with(target, |e| e.breaker.allows_request(Instant::now()))
    }

    /// Whether [`ServerHealth::admit`] would let a request for `carrier` go to `server` at
    /// `port` now — taking nothing: a sign-in lists the servers it may try with it, and takes
    /// a request-checked server's trial only when it asks that server (the RADIUS review's L2
    /// of session 80: each sign-in took the backup's trial up front and, the primary
    /// answering, never sent it — the backup shown down for as long as the primary worked).
    pub fn would_admit(&self, server: &ServerEndpoint, port: Port, carrier: Carrier) -> bool {
        let now = Instant::now();
        self.with(self.target(server, port), |e| {
            e.breaker.allows_request(now)
                || (server.status_check == StatusCheck::Request
                    && e.breaker.trial_at(carrier).is_some_and(|at| now >= at))
        })
    }

    /// Whether a request made for `carrier` may go to `server` at `port` now: its breaker is
    /// closed, or — for a server checked by request (`status_check = "request"`) — a trial
    /// for that carrier is due, which this request then is.
    pub fn admit(&self, server: &ServerEndpoint, port: Port, carrier: Carrier) -> bool {
        let now = Instant::now();
        let addr = address(server, port);
        let trial = self.with(self.target(server, port), |e| {
            if e.breaker.allows_request(now) {
                return Some(false);
            }
            if server.status_check != StatusCheck::Request {
                return None;
            }
            e.probe = Some((server.clone(), port));
            e.breaker
                .take_trial(now, check_answered_within(server), carrier)
                .then_some(true)
        });
        // One a probe interval or so for as long as the server is down: throttled.
        static TRIALS: crate::telemetry::Throttles = crate::telemetry::Throttles::new();
        if trial == Some(true) {
            if let Some(left_out) = TRIALS.admit(&server.name) {
                tracing::info!(server = %server.name, %addr, ?port, ?carrier, similar_left_out = left_out,
                    "RADIUS server down: one request goes as a trial (status_check = \"request\")");
            }
        }
        trial.is_some()
    }

    /// Every known server address with its breaker state (metrics). Where several secrets
    /// reach one address, the least healthy of their breakers: open, else a trial out, else
    /// closed.
    pub fn states(&self) -> Vec<(SocketAddr, BreakerState)> {
        let rank = |state: &BreakerState| match state {
            BreakerState::Open { .. } => 2,
            BreakerState::Trial { .. } => 1,
            BreakerState::Closed { .. } => 0,
        };
        let registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_address: HashMap<SocketAddr, BreakerState> = HashMap::new();
        for (target, e) in registry.entries.iter() {
            let state = e.breaker.state();
            by_address
                .entry(target.addr)
                .and_modify(|known| {
                    if rank(&state) > rank(known) {
                        *known = state;
                    }
                })
                .or_insert(state);
        }
        by_address.into_iter().collect()
    }

    /// Whether `target` has sent a valid Message-Authenticator before.
    pub fn learned_message_authenticator(&self, target: Target) -> bool {
        let registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        registry.learned.contains(&target.addr)
    }

    /// A verified reply arrived for a request to `target`.
    pub fn record_success(&self, target: Target, had_message_authenticator: bool) {
        if self.retired(target) {
            return;
        }
        let addr = target.addr;
        if had_message_authenticator {
            let mut registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            registry.learned.insert(addr);
        }
        let (closed, sibling, name, after_failures) = self.with(target, |e| {
            e.answered_at = Some(Instant::now());
            // Failures the other replicas were told of: they start counting again too.
            let after_failures = match e.breaker.state() {
                BreakerState::Closed { failures, .. } if failures > 0 => e
                    .probe
                    .as_ref()
                    .map(|(server, port)| (server.clone(), *port)),
                _ => None,
            };
            let closed = e.breaker.record_success();
            if closed {
                e.closed_again_at = Some(Instant::now());
                e.recoveries += 1;
            }
            // The same server's other port, checked by request too: nothing else brings its
            // next trial forward (a sign-in's, damped up to 32 intervals).
            let sibling = e
                .probe
                .as_ref()
                .filter(|(server, _)| closed && server.status_check == StatusCheck::Request)
                .map(|(server, port)| (server.clone(), port.other()));
            let name =
                e.probe.as_ref().filter(|_| closed).map(|(server, port)| {
                    ((server.name.clone(), server.organization.clone()), *port)
                });
            (closed, sibling, name, after_failures)
        });
        if let Some((server, port)) = after_failures {
            self.tell(&server, port, true);
        }
        if closed {
            let (names, port) = name.unzip();
            let (server, organization) = names.unzip();
            tracing::info!(server, organization, ?port, %addr, "RADIUS server answered a trial request: circuit breaker closed");
            self.recovered.send_modify(|n| *n += 1);
        }
        if let Some((server, port)) = sibling {
            let target = self.target(&server, port);
            // Once per outage of that port: a server whose other port flaps costs that port's
            // users one trial's wait, not one per flap.
            let bring_forward = |e: &mut Entry| match e.breaker.state() {
                BreakerState::Open { since, .. } if e.brought_forward != Some(since) => {
                    e.brought_forward = Some(since);
                    e.breaker.check_soon(Instant::now())
                }
                _ => false,
            };
            if !self.retired(target) && self.with(target, bring_forward) {
                tracing::info!(server = %server.name, ?port,
                    "RADIUS server answers on its other port: the next request to this one goes as its trial at once");
            }
        }
    }

    /// An exchange with `server` at `port` got no verified reply in time (or was refused).
    pub fn record_failure(&self, server: &ServerEndpoint, port: Port) {
        self.record_failure_seen(server, port, None)
    }

    /// [`Self::record_failure`] of an exchange whose replies came but did not verify (`why`:
    /// the first's reason): the breaker's line says so — a server answering with another
    /// shared secret is not one "not answering" (black-box tester T's D3).
    pub fn record_failure_seen(&self, server: &ServerEndpoint, port: Port, why: Option<&str>) {
        self.record_exchange_failure(server, port, why, None)
    }

    /// [`Self::record_failure_seen`] of an exchange begun at `started` (if known): one begun
    /// before the breaker last changed counts for nothing ([`Breaker::record_failure`]).
    pub fn record_exchange_failure(
        &self,
        server: &ServerEndpoint,
        port: Port,
        why: Option<&str>,
        started: Option<Instant>,
    ) {
        if self.retired(self.target(server, port)) {
            return;
        }
        let addr = address(server, port);
        let (opened, counted) = self.with(self.target(server, port), |e| {
            e.probe = Some((server.clone(), port));
            let counted = matches!(e.breaker.state(), BreakerState::Closed { .. });
            let before = e.breaker.state();
            let opened = e.breaker.record_failure(Instant::now(), started);
            // A lost trial of a server checked by request is its check left unanswered (it has
            // no probes): silences before it were its outage's, not refusals (the whole-change
            // review of session 83, F2).
            if let (BreakerState::Trial { .. }, Some(started), StatusCheck::Request) =
                (before, started, server.status_check)
            {
                if e.breaker.state() != before {
                    e.check_unanswered_at =
                        Some(e.check_unanswered_at.map_or(started, |c| c.max(started)));
                }
            }
            // Not counted when it was no news (begun before the last change).
            (opened, counted && e.breaker.state() != before)
        });
        if counted {
            self.tell(server, port, false);
        }
        if opened {
            let check = match server.status_check {
                StatusCheck::StatusServer => "probing with Status-Server",
                StatusCheck::Request => "one request at a time goes as a trial",
            };
            match why {
                Some(why) => {
                    tracing::warn!(server = %server.name, organization = %server.organization, %addr, ?port,
                    "RADIUS server answering with replies the portal cannot use ({why}): circuit breaker open, {check}")
                }
                None => {
                    tracing::warn!(server = %server.name, organization = %server.organization, %addr, ?port,
                    "RADIUS server not answering (or nothing listening there): circuit breaker open, {check}")
                }
            }
            self.opened.notify_one();
        }
    }

    /// An unanswered exchange with `target` begun at `started`, counted against its breaker,
    /// was its packet's silence after all ([`Breaker::take_back_failure`]).
    pub fn take_back_failure(&self, target: Target, started: Instant) {
        if self.retired(target) {
            return;
        }
        self.with(target, |e| e.breaker.take_back_failure(started));
    }

    /// `target` answered an exchange (a request, a probe, an idle check) begun at `begun`.
    pub fn record_heard(&self, target: Target, begun: Instant) {
        if self.retired(target) {
            return;
        }
        self.with(target, |e| {
            e.heard_at = Some(e.heard_at.map_or(begun, |heard| heard.max(begun)));
        });
    }

    /// Whether `target` has answered an exchange begun after `at`: a packet sent at `at` and
    /// left unanswered while a later one was answered was refused, not lost to a slow or dead
    /// server (a server slow in order answers the earlier first).
    pub fn heard_since(&self, target: Target, at: Instant) -> bool {
        self.with(target, |e| e.heard_at.is_some_and(|heard| heard > at))
    }

    /// A Status-Server check of `target` (a probe, an idle check) begun at `begun` went
    /// unanswered.
    pub fn record_check_unanswered(&self, target: Target, begun: Instant) {
        if self.retired(target) {
            return;
        }
        self.with(target, |e| {
            e.check_unanswered_at = Some(e.check_unanswered_at.map_or(begun, |c| c.max(begun)));
        });
    }

    /// Whether `target` has answered an exchange begun after `at`, and no check of it begun
    /// after `at` went unanswered: up since then, as far as anything shows — a packet sent at
    /// `at` and left unanswered was refused, not lost in an outage (whose checks go unanswered
    /// until the server is back).
    pub fn up_since(&self, target: Target, at: Instant) -> bool {
        self.with(target, |e| {
            e.heard_at.is_some_and(|heard| heard > at)
                && e.check_unanswered_at.is_none_or(|check| check <= at)
        })
    }

    /// An exchange begun at `started` of a packet that `server` at `port` left unanswered
    /// before and was heard since — its silence is the packet's (a record the server cannot
    /// store), not the server's: a closed breaker does not count it (the packet, sent again,
    /// would otherwise open it every time a probe has closed it: black-box tester T's D1 of
    /// session 80); a trial's loss is still one ([`Self::record_exchange_failure`]).
    pub fn record_packet_silence(&self, server: &ServerEndpoint, port: Port, started: Instant) {
        let closed = self.with(self.target(server, port), |e| {
            matches!(e.breaker.state(), BreakerState::Closed { .. })
        });
        if !closed {
            self.record_exchange_failure(server, port, None, Some(started));
        }
    }

    /// Probes due now (each taken once per probe interval), and when the next one is due.
    pub fn take_due_probes(&self) -> (Vec<(ServerEndpoint, Port, Check)>, Option<Instant>) {
        self.take_due_probes_at(Instant::now())
    }

    /// [`Self::take_due_probes`] at `now`.
    fn take_due_probes_at(
        &self,
        now: Instant,
    ) -> (Vec<(ServerEndpoint, Port, Check)>, Option<Instant>) {
        let mut registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        let mut next = None::<Instant>;
        let mut soonest = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        for entry in registry.entries.values_mut() {
            if entry
                .probe
                .as_ref()
                .is_some_and(|(server, _)| server.status_check == StatusCheck::Request)
            {
                continue; // checked by trial requests, never by Status-Server
            }
            if entry.breaker.take_probe(now) {
                if let Some((server, port)) = &entry.probe {
                    entry
                        .breaker
                        .probe_lasts_until(now + check_answered_within(server));
                    due.push((server.clone(), *port, Check::Probe));
                }
            }
            if let Some(at) = entry.breaker.probe_due() {
                soonest(at);
            }
        }
        if let Some(every) = self.idle_check {
            let Registry { entries, idle, .. } = &mut *registry;
            for (target, check) in idle.iter_mut() {
                let entry = entries.get(target);
                if entry.is_some_and(|e| !e.breaker.allows_request(now)) {
                    // Down: its probes (or trials) check it; once back, it is idle from then.
                    check.next = now + every;
                    continue;
                }
                if check.checking {
                    continue; // its outcome schedules the next
                }
                if let Some(at) = entry.and_then(|e| e.answered_at) {
                    check.next = check.next.max(at + every);
                }
                if check.next <= now {
                    check.checking = true;
                    due.push((check.server.clone(), check.port, Check::Idle));
                    // Answered, it is idle again from now; unanswered, it is checked again a
                    // probe interval later ([`Self::record_idle_check`]).
                    check.next = now + every;
                }
                soonest(check.next);
            }
        }
        (due, next)
    }

    /// The outcome of an idle check of `server` at `port` ([`Self::with_idle_checks`]):
    /// answered (Some(true)), it is idle again from then — its count of failed requests stands
    /// (a server that answers Status-Server but drops requests is still given up); unanswered
    /// (Some(false)), a failed exchange — so many in a row open its breaker — and it is checked
    /// again a probe interval later; None: no check was made (a fault of this host). A target
    /// no longer checked idle (its settings changed meanwhile) takes no outcome.
    pub fn record_idle_check(&self, server: &ServerEndpoint, port: Port, answered: Option<bool>) {
        self.record_idle_check_at(server, port, answered, Instant::now());
    }

    /// [`Self::record_idle_check`] at `now`.
    fn record_idle_check_at(
        &self,
        server: &ServerEndpoint,
        port: Port,
        answered: Option<bool>,
        now: Instant,
    ) {
        let target = self.target(server, port);
        let still_checked = {
            let mut registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            registry
                .idle
                .get_mut(&target)
                .map(|check| check.checking = false)
                .is_some()
        };
        if still_checked && !self.retired(target) {
            match answered {
                Some(true) => self.with(target, |e| e.probe_answered = true),
                Some(false) => {
                    tracing::info!(server = %server.name, addr = %address(server, port), ?port,
                        "RADIUS server idle and its Status-Server check went unanswered");
                    self.record_failure(server, port);
                    if self.target_up(target) {
                        let soon = now + self.policy.probe_interval;
                        let mut registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(check) = registry.idle.get_mut(&target) {
                            check.next = check.next.min(soon);
                        }
                    }
                }
                None => {}
            }
        }
        // Left out of the prober's schedule while it was out: the prober schedules its next.
        self.opened.notify_one();
    }

    /// A probe of `server` at `port` went unanswered: it is down rather than flapping, so its
    /// probes come a step sooner ([`Breaker::record_probe_failure`]).
    /// `timed_out`: no answer at all (not an ICMP error: something listens there, or the
    /// packet was dropped).
    pub fn record_probe_failure(&self, server: &ServerEndpoint, port: Port, timed_out: bool) {
        if self.retired(self.target(server, port)) {
            return;
        }
        let sooner = self.with(self.target(server, port), |e| {
            e.breaker.record_probe_failure(Instant::now())
        });
        // The probe timed out while the same server answers requests at its other port, and
        // no probe of it was ever answered at either: maybe it never answers Status-Server
        // (Microsoft NPS) and is down for good here — said, since nothing else would say why
        // its accounting (or logins) wait.
        let answers_there =
            timed_out && self.answers_only_at_other_port(server, port, Instant::now());
        static HINT: crate::telemetry::Throttles = crate::telemetry::Throttles::new();
        if answers_there {
            if let Some(left_out) = HINT.admit(&server.name) {
                tracing::warn!(server = %server.name, ?port, left_out,
                    "Status-Server goes unanswered at this port while the server answers requests at its other port: a server that never answers Status-Server (Microsoft NPS) needs status_check = \"request\"");
            }
        }
        if sooner {
            tracing::debug!(server = %server.name, ?port,
                "Status-Server unanswered: the server is down rather than flapping; its probes come sooner again");
            // The prober may sleep until the damped probe: wake it for the sooner one.
            self.opened.notify_one();
        }
    }

    /// Whether `server`, down at `port` (its breaker open) and never answering a probe there,
    /// answered requests at its other port since it went down there (within 10 minutes), no
    /// probe of it answered there either: a server that may never answer Status-Server.
    /// Not one whose other port last answered before it went down here (black-box tester U's
    /// D2: a server stopped whole was said to answer at its other port).
    fn answers_only_at_other_port(
        &self,
        server: &ServerEndpoint,
        port: Port,
        now: Instant,
    ) -> bool {
        let down_since = self.with(self.target(server, port), |e| match e.breaker.state() {
            BreakerState::Open { since, .. } if !e.probe_answered => Some(since),
            _ => None,
        });
        let Some(down_since) = down_since else {
            return false;
        };
        self.with(self.target(server, port.other()), |e| {
            !e.probe_answered
                && e.breaker.allows_request(now)
                && e.answered_at.is_some_and(|at| {
                    at > down_since && now.duration_since(at) < Duration::from_secs(600)
                })
        })
    }

    /// A probe of `addr` was answered: close its breaker.
    pub fn record_probe_success(&self, server: &ServerEndpoint, port: Port) {
        if self.retired(self.target(server, port)) {
            return;
        }
        let addr = address(server, port);
        let closed = self.with(self.target(server, port), |e| {
            e.probe_answered = true;
            let closed = e.breaker.record_probe_success();
            if closed {
                e.closed_again_at = Some(Instant::now());
                e.recoveries += 1;
            }
            closed
        });
        if closed {
            tracing::info!(server = %server.name, organization = %server.organization, %addr, ?port,
                "RADIUS server answers Status-Server again: circuit breaker closed");
            self.recovered.send_modify(|n| *n += 1);
        }
    }

    /// The organizations' servers as they are configured now (after a change). An address (or
    /// secret) no server uses any more is forgotten: nothing probes it for good; a secret
    /// changed starts with a closed breaker of its own. A down server now reached otherwise
    /// (another timeout or check: the operator fixed what made it fail) is probed at once with
    /// the new settings. Rows of accounting that waited for a server are tried again (one may
    /// now go to its server's new address). Every one of them is checked while idle (when
    /// idle checks are on): see [`Self::servers_in_use`].
    pub fn servers_changed(&self, servers: &[ServerEndpoint]) {
        self.servers_in_use(servers, servers);
    }

    /// [`Self::servers_changed`], with idle checks ([`Self::with_idle_checks`]) only for the
    /// targets of `checked_idle` (the enabled organizations' servers: a disabled
    /// organization's are sent its sessions' Stops, and probed while down, but nobody signs in
    /// there to need them found down beforehand — unless an enabled one uses them too).
    pub fn servers_in_use(&self, servers: &[ServerEndpoint], checked_idle: &[ServerEndpoint]) {
        let idle_targets: std::collections::HashSet<Target> = checked_idle
            .iter()
            .flat_map(|server| [Port::Auth, Port::Acct].map(|port| self.target(server, port)))
            .collect();
        let mut configured: HashMap<Target, Vec<(&ServerEndpoint, Port)>> = HashMap::new();
        for server in servers {
            for port in [Port::Auth, Port::Acct] {
                let target = self.target(server, port);
                configured.entry(target).or_default().push((server, port));
            }
        }
        let addresses: std::collections::HashSet<SocketAddr> =
            configured.keys().map(|target| target.addr).collect();
        let now = Instant::now();
        let (mut forgotten, mut probe_now) = (0, false);
        {
            let mut registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            registry.entries.retain(|target, _| {
                let kept = configured.contains_key(target);
                forgotten += usize::from(!kept);
                kept
            });
            let now_configured: std::collections::HashSet<Target> =
                configured.keys().copied().collect();
            let gone: Vec<Target> = registry
                .configured
                .difference(&now_configured)
                .copied()
                .collect();
            if registry.retired.len() > 4096 {
                registry.retired.clear(); // secrets rotated that often: only the last ones matter
            }
            registry.retired.extend(gone);
            registry
                .retired
                .retain(|target| !now_configured.contains(target));
            registry.configured = now_configured;
            registry.learned.retain(|addr| addresses.contains(addr));
            if let Some(every) = self.idle_check {
                let before = std::mem::take(&mut registry.idle);
                for (target, uses) in &configured {
                    let (server, port) = uses[0];
                    if !idle_targets.contains(target)
                        || uses
                            .iter()
                            .any(|(s, _)| s.status_check != StatusCheck::StatusServer)
                    {
                        continue;
                    }
                    // A target new to the checks is first checked after a random part of the
                    // interval past its half: many servers configured at once (a start) are not
                    // checked all in the same instant, then, each after its own answer.
                    let (next, checking) = before.get(target).map_or_else(
                        || {
                            (
                                now + every.mul_f64(0.5 + rand::random::<f64>() / 2.0),
                                false,
                            )
                        },
                        |idle| (idle.next, idle.checking),
                    );
                    let idle = Idle {
                        server: server.clone(),
                        port,
                        next,
                        checking,
                    };
                    registry.idle.insert(*target, idle);
                }
            }
            for (target, entry) in registry.entries.iter_mut() {
                let addr = &target.addr;
                let now_configured = &configured[target];
                let stale = entry.probe.as_ref().is_some_and(|(known, port)| {
                    !now_configured
                        .iter()
                        .any(|(server, p)| p == port && *server == known)
                });
                if stale {
                    let (server, port) = now_configured[0];
                    entry.probe = Some((server.clone(), port));
                    if entry.breaker.reconfigured(now) {
                        probe_now = true;
                        tracing::info!(server = %server.name, %addr,
                            "RADIUS server's settings changed while it was down: probing it now with the new ones");
                    }
                }
            }
        }
        if probe_now {
            self.opened.notify_one();
        }
        if probe_now || forgotten > 0 {
            self.recovered.send_modify(|n| *n += 1);
        }
    }

    /// Failed exchanges in a row that open a breaker.
    pub fn failures_to_open(&self) -> u32 {
        self.policy.failure_threshold
    }

    /// The time between probes of a server that is down (at the first back-off level).
    pub fn probe_interval(&self) -> Duration {
        self.policy.probe_interval
    }

    /// Since when `server` at `port` is back: its breaker closed again at that instant after
    /// being open, and is closed now. None when it never was down or is not closed.
    pub fn back_since(&self, server: &ServerEndpoint, port: Port) -> Option<Instant> {
        self.with(self.target(server, port), |e| {
            matches!(e.breaker.state(), BreakerState::Closed { .. })
                .then_some(e.closed_again_at)
                .flatten()
        })
    }

    /// How long `server` at `port` has been down (its breaker open, or a trial out); None while
    /// it is up.
    pub fn down_for(&self, server: &ServerEndpoint, port: Port) -> Option<Duration> {
        self.with(self.target(server, port), |e| {
            e.breaker.down_since().map(|since| since.elapsed())
        })
    }

    /// For `server` at `port` while it is down (its breaker open, or a trial out): how long
    /// after any instant its first check since then — a Status-Server probe, or a trial
    /// request — has had its answer at the latest: one wait between checks, and the check's
    /// own time ([`check_answered_within`]). The wait is its probes' at their back-off level;
    /// for a server checked by request, the probe interval — the accounting held for it
    /// carries a trial that often, whatever users' trials wait ([`Carrier::Background`]).
    /// None while it is up.
    pub fn checked_within(&self, server: &ServerEndpoint, port: Port) -> Option<Duration> {
        self.with(self.target(server, port), |e| {
            (!e.breaker.allows_request(Instant::now())).then(|| {
                let wait = match server.status_check {
                    StatusCheck::Request => self.policy.probe_interval,
                    StatusCheck::StatusServer => e.breaker.probe_wait(),
                };
                wait + check_answered_within(server)
            })
        })
    }

    /// For `server` at `port`, checked by request and down: how long until a trial nobody
    /// waits on may go (zero: now), or — one out — until its outcome is known. None while it
    /// is up, and for a server checked by Status-Server (its probes find it back).
    pub fn background_trial_in(&self, server: &ServerEndpoint, port: Port) -> Option<Duration> {
        if server.status_check != StatusCheck::Request {
            return None;
        }
        self.with(self.target(server, port), |e| {
            e.breaker
                .trial_at(Carrier::Background)
                .map(|at| at.saturating_duration_since(Instant::now()))
        })
    }

    /// Signalled when a breaker opens.
    pub fn opened(&self) -> &Notify {
        &self.opened
    }

    /// How often `target`'s breaker has closed after being open (a change since an exchange
    /// began: the server came back meanwhile).
    pub fn recoveries_at(&self, target: Target) -> u64 {
        self.with(target, |e| e.recoveries)
    }

    /// How often the breakers of every target at `addr` (each organization's, each secret's)
    /// have closed after being open, together: what a send window, which is per address, counts
    /// a server's returns by (the whole-change review of session 82, F2: one organization's
    /// count beside another's at a shared server had the window begin its pace afresh at each
    /// exchange). May drop when a target is no longer configured (a fresh start, harmless).
    pub fn recoveries_at_address(&self, addr: std::net::SocketAddr) -> u64 {
        let registry = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        registry
            .entries
            .iter()
            .filter(|(target, _)| target.addr == addr)
            .map(|(_, e)| e.recoveries)
            .sum()
    }

    /// Counts the breakers that closed: a receiver sees each change, also one made while it
    /// was not waiting.
    pub fn recovered(&self) -> tokio::sync::watch::Receiver<u64> {
        self.recovered.subscribe()
    }
}

/// The address of `server`'s `port`.
pub fn address(server: &ServerEndpoint, port: Port) -> SocketAddr {
    match port {
        Port::Auth => server.auth_addr,
        Port::Acct => server.acct_addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MessageAuthenticatorMode, Secret};

    fn server(name: &str, acct_port: u16, secret: &str) -> ServerEndpoint {
        ServerEndpoint {
            name: name.into(),
            auth_addr: SocketAddr::from(([127, 0, 0, 1], 1812)),
            acct_addr: SocketAddr::from(([127, 0, 0, 1], acct_port)),
            secret: Secret::new(secret),
            timeout: Duration::from_millis(100),
            retries: 0,
            message_authenticator: MessageAuthenticatorMode::default(),
            status_check: StatusCheck::default(),
            organization: "acme".into(),
        }
    }

    fn health() -> ServerHealth {
        ServerHealth::new(BreakerPolicy {
            failure_threshold: 1,
            probe_interval: Duration::from_secs(3600),
        })
    }

    /// A replica tells the others of each unanswered exchange its closed breaker counts, and of
    /// the answer after its own failures (not of one with nothing to undo); what it hears counts
    /// for the servers at that address with that secret only, and is told to nobody.
    #[tokio::test]
    async fn replicas_tell_each_other_what_their_breakers_count() {
        let key = || SecretKey::new([7; 32]);
        let replica = || {
            let health = ServerHealth::new(BreakerPolicy {
                failure_threshold: 2,
                probe_interval: Duration::from_secs(3600),
            });
            let told = health.tell_peers(key()).unwrap();
            (health, told)
        };
        let ((here, mut told), (there, _)) = (replica(), replica());
        assert!(here.tell_peers(key()).is_none(), "once");
        let primary = server("primary", 1813, "s");
        let target = here.target(&primary, Port::Acct);
        here.record_success(target, false);
        assert!(told.try_recv().is_err(), "an answer with nothing to undo");
        here.record_failure(&primary, Port::Acct);
        let (_, missed) = told.try_recv().unwrap();
        assert_eq!(
            missed,
            PeerNews {
                addr: primary.acct_addr,
                secret: secret_fingerprint(&key(), &primary),
                answered: false
            }
        );
        assert_ne!(
            missed.secret,
            secret_fingerprint(&SecretKey::new([8; 32]), &primary),
            "keyed"
        );
        here.record_success(target, false);
        let (_, answered) = told.try_recv().unwrap();
        assert!(answered.answered);
        // Open, its exchanges count no more: nothing told.
        here.record_failure(&primary, Port::Acct);
        here.record_failure(&primary, Port::Acct);
        assert!(!here.is_up(&primary, Port::Acct));
        let _ = told.try_recv().unwrap();
        let _ = told.try_recv().unwrap();
        here.record_failure(&primary, Port::Acct);
        assert!(told.try_recv().is_err(), "open: not counted, not told");

        // Another secret at the same address (another organization's), or another port: not
        // that breaker.
        let other_secret = server("primary", 1813, "t");
        let mut other_port = primary.clone();
        other_port.acct_addr = SocketAddr::from(([127, 0, 0, 1], 1913));
        let servers = [primary.clone(), other_secret.clone(), other_port.clone()];
        there.from_peer(missed, &servers);
        there.from_peer(missed, &servers);
        assert!(
            !there.is_up(&primary, Port::Acct),
            "two of the peer's open it"
        );
        assert!(there.is_up(&primary, Port::Auth));
        assert!(there.is_up(&other_secret, Port::Acct));
        assert!(there.is_up(&other_port, Port::Acct));
        there.from_peer(answered, &servers);
        assert!(
            !there.is_up(&primary, Port::Acct),
            "only its own probe closes it"
        );

        // A peer's answer takes back the peers' failures; what a replica hears it does not
        // tell; a replica that does not take part hears nothing.
        let (third, mut third_told) = replica();
        third.from_peer(missed, &servers);
        third.from_peer(answered, &servers);
        third.from_peer(missed, &servers);
        assert!(third.is_up(&primary, Port::Acct));
        assert!(third_told.try_recv().is_err(), "heard, not told");
        let alone = ServerHealth::new(BreakerPolicy {
            failure_threshold: 1,
            probe_interval: Duration::from_secs(3600),
        });
        alone.from_peer(missed, &servers);
        assert!(alone.is_up(&primary, Port::Acct));
    }

    /// A down server's first check after any instant is answered within one wait between
    /// checks and the check's own time: its tries, a probe's as a trial's (the failover's wait
    /// for the session's own server is counted from it).
    #[tokio::test]
    async fn a_down_servers_first_check_is_answered_within_a_wait_and_its_own_time() {
        let health = health();
        let mut probed = server("primary", 1813, "s");
        probed.retries = 2;
        assert_eq!(health.checked_within(&probed, Port::Acct), None, "up");
        health.record_failure(&probed, Port::Acct);
        assert_eq!(
            health.checked_within(&probed, Port::Acct),
            Some(Duration::from_secs(3600) + Duration::from_millis(300))
        );
        let mut tried = server("nps", 1814, "s");
        tried.retries = 2;
        tried.status_check = StatusCheck::Request;
        health.record_failure(&tried, Port::Acct);
        assert_eq!(
            health.checked_within(&tried, Port::Acct),
            Some(Duration::from_secs(3600) + Duration::from_millis(300))
        );
    }

    /// The hint for a server that may never answer Status-Server (NPS) needs its other port to
    /// have answered since this one went down: a server stopped whole, whose other port last
    /// answered before, is down, not NPS (black-box tester U's D2).
    #[tokio::test]
    async fn only_an_answer_since_a_port_went_down_says_the_other_port_answers() {
        let health = health();
        let fr = server("fr", 1813, "s");
        health.record_success(health.target(&fr, Port::Auth), false);
        health.record_failure(&fr, Port::Acct);
        let now = Instant::now();
        assert!(!health.answers_only_at_other_port(&fr, Port::Acct, now));
        health.record_success(health.target(&fr, Port::Auth), false);
        assert!(health.answers_only_at_other_port(&fr, Port::Acct, Instant::now()));
    }

    /// A server checked by request found back on one port (its held accounting's trial
    /// answered) has its other port's next trial at once — the next sign-in — not after the
    /// users' back-off (up to 32 intervals); a server checked by Status-Server is probed.
    #[tokio::test]
    async fn an_answer_on_one_port_brings_the_other_ports_trial_forward() {
        let health = health();
        let mut nps = server("nps", 1813, "s");
        nps.status_check = StatusCheck::Request;
        for port in [Port::Auth, Port::Acct] {
            health.record_failure(&nps, port);
        }
        assert!(
            !health.admit(&nps, Port::Auth, Carrier::User),
            "damped: an hour here"
        );
        // The held accounting's trial (due: the wait is an hour here) is answered.
        let accounting_answers = || {
            health.with(health.target(&nps, Port::Acct), |e| {
                e.probe = Some((nps.clone(), Port::Acct));
                assert!(e.breaker.take_trial(
                    Instant::now() + Duration::from_secs(7200),
                    Duration::ZERO,
                    Carrier::Background
                ));
            });
            health.record_success(health.target(&nps, Port::Acct), false);
            assert!(health.is_up(&nps, Port::Acct));
        };
        accounting_answers();
        assert!(
            !health.is_up(&nps, Port::Auth),
            "not up until its own trial is answered"
        );
        assert!(
            health.admit(&nps, Port::Auth, Carrier::User),
            "its trial goes at once"
        );
        assert!(health.trial_left(&nps, Port::Auth).is_some(), "out");
        // Lost; the accounting port flaps (down, its trial answered again): the users' trials
        // of this outage were brought forward once already.
        health.record_failure(&nps, Port::Auth);
        health.record_failure(&nps, Port::Acct);
        accounting_answers();
        assert!(
            !health.admit(&nps, Port::Auth, Carrier::User),
            "once per outage"
        );
    }

    /// Asking whether a request-checked server's trial may go takes nothing; taking it does,
    /// once (the RADIUS review's L2).
    #[tokio::test]
    async fn whether_a_trial_may_go_is_asked_without_taking_it() {
        let health = health();
        let mut nps = server("nps", 1812, "s");
        nps.status_check = StatusCheck::Request;
        health.record_failure(&nps, Port::Auth);
        assert!(!health.is_up(&nps, Port::Auth));
        assert!(
            !health.would_admit(&nps, Port::Auth, Carrier::User),
            "not due: an hour here"
        );
        // Its trial made due now (the wait over).
        health.with(health.target(&nps, Port::Auth), |e| {
            e.breaker.reconfigured(Instant::now());
        });
        for _ in 0..3 {
            assert!(health.would_admit(&nps, Port::Auth, Carrier::User));
        }
        assert!(
            health.trial_left(&nps, Port::Auth).is_none(),
            "nothing taken"
        );
        assert!(health.admit(&nps, Port::Auth, Carrier::User), "taken");
        assert!(health.trial_left(&nps, Port::Auth).is_some(), "out");
        assert!(
            !health.would_admit(&nps, Port::Auth, Carrier::User),
            "one at a time"
        );
        // A server checked by Status-Server: a closed breaker only.
        let probed = server("probed", 1813, "other");
        assert!(health.would_admit(&probed, Port::Auth, Carrier::User));
        health.record_failure(&probed, Port::Auth);
        assert!(!health.would_admit(&probed, Port::Auth, Carrier::User));
    }

    /// A server up since a packet's silence: it answered an exchange begun after it, and no
    /// check of it went unanswered since — a Status-Server check, or a request-checked
    /// server's trial (it has no probes: the whole-change review of session 83, F2).
    #[tokio::test]
    async fn up_since_a_silence_takes_an_unanswered_check_for_an_outage() {
        let health = health();
        let probed = server("probed", 1813, "s");
        let target = health.target(&probed, Port::Acct);
        let silence = Instant::now();
        let later = silence + Duration::from_millis(1);
        health.record_heard(target, later);
        assert!(health.up_since(target, silence));
        health.record_check_unanswered(target, later);
        assert!(
            !health.up_since(target, silence),
            "a check unanswered since"
        );
        assert!(!health.up_since(target, later), "nothing answered after it");

        let mut nps = server("nps", 1812, "s");
        nps.status_check = StatusCheck::Request;
        let target = health.target(&nps, Port::Acct);
        health.record_failure(&nps, Port::Acct);
        health.with(target, |e| e.breaker.reconfigured(Instant::now()));
        let silence = Instant::now();
        assert!(health.admit(&nps, Port::Acct, Carrier::User), "its trial");
        let trial = Instant::now();
        health.record_exchange_failure(&nps, Port::Acct, None, Some(trial));
        health.record_heard(target, trial + Duration::from_millis(1));
        assert!(
            !health.up_since(target, silence),
            "its lost trial was an unanswered check"
        );
    }

    /// A breaker that closes while its watcher (the accounting loop) is busy elsewhere — not
    /// waiting — is seen when it next looks: a count, not a wake-up that is lost when the
    /// waiter took another branch ready at the same moment.
    #[tokio::test]
    async fn a_recovery_is_seen_by_a_watcher_that_was_not_waiting() {
        let health = health();
        let mut recovered = health.recovered();
        let (probed, tried) = (server("primary", 1813, "s"), {
            let mut nps = server("nps", 1814, "s");
            nps.status_check = StatusCheck::Request;
            nps
        });
        health.record_failure(&probed, Port::Acct);
        health.record_failure(&tried, Port::Acct);
        assert!(!recovered.has_changed().unwrap());
        // Back by a probe, while nobody waits.
        health.record_probe_success(&probed, Port::Acct);
        assert!(recovered.has_changed().unwrap());
        recovered.borrow_and_update();
        assert!(!recovered.has_changed().unwrap());
        // Back by a trial request answered (its trial due: the wait is an hour here).
        health.with(health.target(&tried, Port::Acct), |e| {
            assert!(e.breaker.take_trial(
                Instant::now() + Duration::from_secs(7200),
                Duration::ZERO,
                Carrier::User
            ));
        });
        health.record_success(health.target(&tried, Port::Acct), true);
        assert!(
            recovered.has_changed().unwrap(),
            "a trial's answer counts too"
        );
    }

    /// A backup closed by a probe and down again before any request reached it opens with its
    /// probes backed off; an unanswered probe brings them a step back towards every interval,
    /// and wakes the prober for the sooner one.
    #[tokio::test]
    async fn an_unanswered_probe_brings_a_backed_off_servers_probes_sooner() {
        let minute = Duration::from_secs(60);
        let health = ServerHealth::new(BreakerPolicy {
            failure_threshold: 1,
            probe_interval: minute,
        });
        let backup = server("backup", 1813, "s");
        health.record_failure(&backup, Port::Acct);
        for _ in 0..2 {
            health.record_probe_success(&backup, Port::Acct);
            health.record_failure(&backup, Port::Acct); // down again, before any request
        }
        let (due, next) = health.take_due_probes();
        assert!(due.is_empty());
        assert!(
            next.unwrap() > Instant::now() + 3 * minute,
            "backed off twice: four minutes"
        );
        // The openings above left the prober a wake-up; it has had it.
        let drained = tokio::time::timeout(Duration::from_millis(10), health.opened().notified());
        assert!(drained.await.is_ok());
        let woken = health.opened().notified();
        health.record_probe_failure(&backup, Port::Acct, true);
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the prober is woken for the sooner probe");
        let (_, next) = health.take_due_probes();
        assert!(
            next.unwrap() <= Instant::now() + 2 * minute,
            "one step back"
        );
        health.record_probe_failure(&backup, Port::Acct, true);
        let (_, next) = health.take_due_probes();
        assert!(
            next.unwrap() <= Instant::now() + minute,
            "every interval again"
        );
        assert!(
            health.checked_within(&backup, Port::Acct).unwrap() <= minute * 2,
            "a failover waits for one interval's probe, not the backed-off one"
        );
    }

    #[tokio::test]
    async fn a_fixed_setting_is_used_at_once_and_an_address_no_longer_used_is_forgotten() {
        let health = health();
        let wrong = server("primary", 1813, "wrong");
        health.record_failure(&wrong, Port::Acct);
        health.record_failure(&wrong, Port::Auth);
        assert!(!health.allows(wrong.acct_addr));
        // Nothing changed: nothing is probed before its interval.
        health.servers_changed(std::slice::from_ref(&wrong));
        assert!(health.take_due_probes().0.is_empty());

        // Its timeout changed while it was down: both ports are probed now, with it.
        let slower = ServerEndpoint {
            timeout: Duration::from_millis(900),
            ..wrong.clone()
        };
        health.servers_changed(std::slice::from_ref(&slower));
        let (due, _) = health.take_due_probes();
        assert_eq!(due.len(), 2, "{due:?}");
        assert!(due.iter().all(|(s, _, _)| *s == slower), "{due:?}");

        // The secret fixed: requests signed with it go at once (a breaker of its own, closed),
        // and the wrong secret's breaker is forgotten (never probed again).
        let fixed = server("primary", 1813, "right");
        health.servers_changed(std::slice::from_ref(&fixed));
        assert!(health.allows(fixed.auth_addr) && health.allows(fixed.acct_addr));
        assert!(health.admit(&fixed, Port::Auth, Carrier::User));
        assert!(health.take_due_probes().0.is_empty());
        // An exchange made with the old secret, still in flight then, fails afterwards: no
        // breaker of the old secret comes back (nothing probes with it, the metric stays
        // closed).
        health.record_failure(&wrong, Port::Auth);
        assert!(health.take_due_probes().0.is_empty());
        assert!(health
            .states()
            .iter()
            .all(|(_, state)| matches!(state, BreakerState::Closed { .. })));

        // Accounting moved to another port: the old address is forgotten, the new one starts
        // closed.
        health.record_failure(&fixed, Port::Auth);
        let moved = server("primary", 1823, "right");
        health.servers_changed(std::slice::from_ref(&moved));
        assert!(!health
            .states()
            .iter()
            .any(|(addr, _)| *addr == wrong.acct_addr));
        assert!(health.allows(moved.acct_addr));
        assert!(!health.allows(moved.auth_addr));
    }

    /// A server just added (its organization changed, the prober not told yet) has its
    /// breaker kept like any other: only a secret or address no longer configured is dropped.
    #[tokio::test]
    async fn a_server_not_yet_configured_keeps_its_breaker() {
        let health = health();
        let known = server("primary", 1813, "right");
        health.servers_changed(std::slice::from_ref(&known));
        let added = ServerEndpoint {
            auth_addr: SocketAddr::from(([127, 0, 0, 9], 1812)),
            ..server("added", 1814, "other")
        };
        health.record_failure(&added, Port::Auth);
        assert!(!health.allows(added.auth_addr), "its breaker opened");
        health.servers_changed(&[known.clone(), added.clone()]);
        assert!(
            !health.allows(added.auth_addr),
            "and stays open once configured"
        );
    }

    /// A server seen signing its replies is still expected to after its secret changes
    /// (`learn` mode: a reply without Message-Authenticator is refused again at once).
    #[tokio::test]
    async fn a_learned_message_authenticator_outlives_a_secret_change() {
        let health = health();
        let old = server("primary", 1813, "old");
        health.servers_changed(std::slice::from_ref(&old));
        health.record_success(health.target(&old, Port::Auth), true);
        let new = server("primary", 1813, "new");
        health.servers_changed(std::slice::from_ref(&new));
        assert!(health.learned_message_authenticator(health.target(&new, Port::Auth)));
        // Another address entirely: learned again from nothing.
        let elsewhere = ServerEndpoint {
            auth_addr: SocketAddr::from(([127, 0, 0, 2], 1812)),
            ..new.clone()
        };
        health.servers_changed(std::slice::from_ref(&elsewhere));
        assert!(!health.learned_message_authenticator(health.target(&elsewhere, Port::Auth)));
    }

    /// Two organizations reach one server, one with a wrong secret: its failures open its own
    /// breaker (probed with its own secret), never the other's; the address's metric shows
    /// the open one.
    #[tokio::test]
    async fn a_wrong_secret_at_a_shared_address_opens_only_its_own_breaker() {
        let health = health();
        let (good, bad) = (server("fr", 1813, "right"), server("frbad", 1813, "wrong"));
        health.servers_changed(&[good.clone(), bad.clone()]);
        health.record_failure(&bad, Port::Auth);
        assert!(health.is_open(health.target(&bad, Port::Auth)));
        assert!(!health.is_open(health.target(&good, Port::Auth)));
        assert!(health.admit(&good, Port::Auth, Carrier::User));
        assert!(!health.admit(&bad, Port::Auth, Carrier::User));
        let state = health
            .states()
            .into_iter()
            .find(|(addr, _)| *addr == good.auth_addr)
            .map(|(_, state)| state);
        assert!(
            matches!(state, Some(BreakerState::Open { .. })),
            "{state:?}"
        );
        // The good one answering closes nothing of the bad one's.
        health.record_success(health.target(&good, Port::Auth), true);
        assert!(health.is_open(health.target(&bad, Port::Auth)));
        // What the server was seen doing is the server's, whatever secret asks.
        assert!(health.learned_message_authenticator(health.target(&bad, Port::Auth)));
    }

    /// An idle server is checked with Status-Server once nothing has answered it for the idle
    /// interval, one check at a time: unanswered checks count as failed exchanges (a probe
    /// interval apart, so a dead backup is found down soon), an answer keeps it up. A server
    /// checked by request is never checked idle.
    #[tokio::test]
    async fn an_idle_server_is_checked_and_found_down_by_unanswered_checks() {
        let (minute, second) = (Duration::from_secs(60), Duration::from_secs(1));
        let health = ServerHealth::new(BreakerPolicy {
            failure_threshold: 2,
            probe_interval: 2 * second,
        })
        .with_idle_checks(Some(minute));
        let backup = server("backup", 1813, "s");
        let nps = ServerEndpoint {
            status_check: StatusCheck::Request,
            organization: "acme".into(),
            ..server("nps", 1814, "other")
        };
        let t0 = Instant::now();
        health.servers_changed(&[backup.clone(), nps.clone()]);
        let (due, next) = health.take_due_probes_at(t0);
        assert!(due.is_empty(), "{due:?}");
        assert!(
            next.unwrap() >= t0 + minute / 2 && next.unwrap() <= t0 + minute,
            "the first check half a minute to a minute on"
        );

        let t = t0 + minute + second;
        let (due, _) = health.take_due_probes_at(t);
        let mut checked: Vec<_> = due
            .iter()
            .map(|(s, p, c)| (s.name.as_str(), *p, *c))
            .collect();
        checked.sort_by_key(|(_, p, _)| *p == Port::Acct);
        assert_eq!(
            checked,
            [
                ("backup", Port::Auth, Check::Idle),
                ("backup", Port::Acct, Check::Idle)
            ],
            "nps is never checked idle"
        );
        // While they are out, no second check goes.
        let (due, _) = health.take_due_probes_at(t + 2 * minute);
        assert!(due.is_empty(), "{due:?}");
        // Its authentication port answers; its accounting port does not. Each outcome wakes
        // the prober, which left the target out of its schedule while the check was out.
        let _ = tokio::time::timeout(Duration::from_millis(10), health.opened().notified()).await;
        let woken = health.opened().notified();
        health.record_idle_check_at(&backup, Port::Auth, Some(true), t);
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the prober is woken to schedule the next check");
        health.record_idle_check_at(&backup, Port::Acct, Some(false), t);
        assert!(health.is_up(&backup, Port::Acct), "one failure of two");
        let (due, next) = health.take_due_probes_at(t + second);
        assert!(due.is_empty());
        assert_eq!(
            next,
            Some(t + 2 * second),
            "checked again a probe interval later"
        );
        let (due, _) = health.take_due_probes_at(t + 2 * second);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].1, due[0].2), (Port::Acct, Check::Idle));
        health.record_idle_check_at(&backup, Port::Acct, Some(false), t + 2 * second);
        assert!(!health.is_up(&backup, Port::Acct), "found down");
        // Down, it is probed, not checked idle; the answered port waits its minute.
        let (due, _) = health.take_due_probes_at(t + 10 * second);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].1, due[0].2), (Port::Acct, Check::Probe));
        let (due, _) = health.take_due_probes_at(t + minute);
        assert!(due
            .iter()
            .any(|(_, p, c)| (*p, *c) == (Port::Auth, Check::Idle)));

        // Its organization disabled (only), it is no longer checked idle: nothing is due however
        // long it stays idle — but it is still probed while down.
        health.servers_in_use(std::slice::from_ref(&backup), &[]);
        let (due, _) = health.take_due_probes_at(t + 10 * minute);
        let checks: Vec<_> = due.iter().map(|(_, p, c)| (*p, *c)).collect();
        assert_eq!(checks, [(Port::Acct, Check::Probe)]);
    }
}
