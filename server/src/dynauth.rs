//! Dynamic Authorization listener (RFC 5176): the RADIUS server (ISE, FreeRADIUS) asks the
//! portal, as the NAS, to end a session (Disconnect-Request) or change it (CoA-Request).
//!
//! - Requests come only from configured clients, each with its secret; anything else — unknown
//!   source, not a RADIUS packet, bad Request Authenticator, bad Message-Authenticator — is
//!   dropped without an answer and counted.
//! - Disconnect-Request: the session is found by Acct-Session-Id, else by User-Name together
//!   with Framed-IP-Address, else by Class; found → Disconnect-ACK and the session stops (Stop,
//!   Admin-Reset), whatever the organization's state (design.md §5); not found — or ended
//!   meanwhile by something else (its user's Disconnect, its expiry) → Disconnect-NAK with
//!   Error-Cause 503 (Session-Context-Not-Found).
//! - CoA-Request: Disconnect-NAK's sibling CoA-NAK, Error-Cause 406 (Unsupported-Extension, RFC
//!   5176 §3.5: the NAS does not support CoA) — or 405 (Unsupported-Service) for one whose
//!   Service-Type is "Authorize Only" (§3.2), its State sent back (§3.3) — the portal
//!   has nothing to change a session with yet. The guard decides
//!   first: a disabled organization's session is NAKed (Error-Cause 503 is not given for it,
//!   406 is).
//! - A retransmitted request (same source address and Request Authenticator — which covers
//!   the Identifier and every attribute) is answered from a cache of recent replies and not
//!   acted on twice (RFC 5080 §2.2.2). The entry is kept for [`DUPLICATE_WINDOW`], or, when the
//!   request carries an Event-Timestamp, for as long as that timestamp passes the replay check:
//!   a captured request replayed from any port inside the window is not acted on again. The
//!   requests acted on are also recorded in the database with their answers
//!   (`dynauth_requests`), so a replay after a restart, or to another replica on PostgreSQL,
//!   gets the answer given and is not acted on again either.

use crate::{
    access_session::AccessSessions,
    config::{ConfigError, DynamicAuthorizationSettings},
    organizations::guard::{self, Operation, OrgState},
    radius::packet::{self, attr, Code, Packet, PushAttribute, MAX_PACKET},
    radius::NasIdentity,
    storage::{AccessSessionRecord, SessionMatch},
};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{net::UdpSocket, time::Instant};
use tokio_util::sync::CancellationToken;

/// The address a request came from as clients are configured: a listener on `[::]` also takes
/// IPv4 datagrams, whose senders it sees as `::ffff:a.b.c.d` (answers still go to `from`).
fn sender(from: SocketAddr) -> IpAddr {
    from.ip().to_canonical()
}

/// An answer to `request` with `code` (and `cause` as Error-Cause): a Message-Authenticator if
/// the request had one, its Proxy-State attributes copied unmodified and in order (RFC 2865
/// §5.33, RFC 5176 §3.6: a proxy between the server and the portal routes the answer back by
/// them).
fn reply_to(request: &Packet, code: Code, cause: Option<u32>) -> Packet {
    let mut p = request.reply(code);
    if request.get(attr::MESSAGE_AUTHENTICATOR).is_some() {
        p.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
    }
    if let Some(cause) = cause {
        p.push_u32(attr::ERROR_CAUSE, cause);
    }
    for state in request.get_all(attr::PROXY_STATE) {
        p.push(attr::PROXY_STATE, state);
    }
    // A CoA-Request's State goes back unmodified in its ACK or NAK (RFC 5176 §3.3; a code
    // review): the server ties the answer to the authorization it asked about by it.
    if matches!(code, Code::CoAACK | Code::CoANAK) {
        if let Some(state) = request.get(attr::STATE) {
            p.push(attr::STATE, state);
        }
    }
    p
}

/// How long a reply is kept to answer a retransmission of its request: as long as a server
/// goes on retransmitting (FreeRADIUS's CoA/Disconnect sender for up to 30 s; radclient every
/// 3 s), so a request whose answer was lost is never acted on again and answered
/// "session not found" for a Disconnect that worked.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(30);

/// The longest a request waits to read, or its handler to write, the record of requests
/// answered before (the database slow or away): the request is then handled without it.
const RECORD_WAIT: Duration = Duration::from_secs(1);
/// Requests handled at once; beyond it datagrams are dropped (the server retransmits).
const MAX_IN_PROGRESS: usize = 256;
/// How long the exit waits for requests under way (before the accounting flush: their Stops go
/// with it).
const HANDLERS_AT_EXIT: Duration = Duration::from_secs(3);
/// Error-Cause 506: Resources-Unavailable (the portal's own trouble: not cached, retry welcome).
const RESOURCES_UNAVAILABLE: u32 = 506;
/// Error-Cause 406: Unsupported-Extension (CoA is not supported).
const UNSUPPORTED_EXTENSION: u32 = 406;
/// Error-Cause 405: Unsupported-Service (a CoA-Request's Service-Type, "Authorize Only": RFC
/// 5176 §3.2 says a NAS that does not support it answers so).
const UNSUPPORTED_SERVICE: u32 = 405;
/// Service-Type "Authorize Only" (RFC 3576).
const AUTHORIZE_ONLY: u32 = 17;
/// Error-Cause 503: Session-Context-Not-Found.
const SESSION_CONTEXT_NOT_FOUND: u32 = 503;
/// Error-Cause 402: Missing-Attribute (no session identification attribute).
const MISSING_ATTRIBUTE: u32 = 402;
/// Error-Cause 403: NAS-Identification-Mismatch.
const NAS_IDENTIFICATION_MISMATCH: u32 = 403;
/// Error-Cause 407: Invalid-Attribute-Value (RFC 5176): e.g. an address that is none.
const INVALID_ATTRIBUTE_VALUE: u32 = 407;
/// Error-Cause 404: Invalid-Request (an attribute not formatted as RFC 2865 allows: an empty
/// string).
const INVALID_REQUEST: u32 = 404;
/// Error-Cause 401: Unsupported-Attribute (RFC 5176): a Disconnect-Request with more than
/// session identification.
const UNSUPPORTED_ATTRIBUTE: u32 = 401;

/// The attributes a Disconnect-Request may carry (RFC 5176 §3 and its §3.6 table): NAS and
/// session identification — User-Name, NAS-IP-Address, NAS-Port, Framed-IP-Address,
/// Called-/Calling-Station-Id, NAS-Identifier, Acct-Session-Id, Acct-Multi-Session-Id,
/// NAS-Port-Id, Chargeable-User-Identity, NAS-IPv6-Address, Framed-Interface-Id,
/// Framed-IPv6-Prefix, Framed-IPv6-Address (RFC 6911) —, and Reply-Message, Class,
/// Vendor-Specific, Proxy-State, Acct-Terminate-Cause, Event-Timestamp, EAP-Message,
/// Message-Authenticator. "If other attributes are included in a Disconnect-Request,
/// implementations MUST send a Disconnect-NAK."
const DISCONNECT_ATTRIBUTES: [u8; 22] = [
    1, 4, 5, 8, 18, 25, 26, 30, 31, 32, 33, 44, 49, 50, 55, 79, 80, 87, 89, 95, 96, 97,
];

/// The first attribute of Disconnect-Request `request` that it may not carry
/// ([`DISCONNECT_ATTRIBUTES`]), if any.
fn unsupported_in_disconnect(request: &Packet) -> Option<u8> {
    request
        .types()
        .into_iter()
        .find(|typ| !DISCONNECT_ATTRIBUTES.contains(typ) && *typ != attr::FRAMED_IPV6_ADDRESS)
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct DynAuthStats {
    /// Requests dropped without an answer (unknown client, bad authenticator, malformed).
    pub dropped: AtomicU64,
    /// ACKs sent.
    pub acked: AtomicU64,
    /// NAKs sent.
    pub naked: AtomicU64,
    /// Retransmissions answered from the cache.
    pub duplicates: AtomicU64,
}

impl DynAuthStats {
    /// The counts now, for the metrics.
    pub fn counts(&self) -> crate::metrics::DynAuthCounts {
        crate::metrics::DynAuthCounts {
            acked: self.acked.load(Ordering::Relaxed),
            naked: self.naked.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// Drops of one kind (which configured client, or any other source; why) since start-up, and
/// when one was last logged as a warning.
type DropKind = (Option<IpAddr>, &'static str);

/// A kind of drop is logged as a warning at its first occurrence, then at most once a minute
/// (a flood must not flood the log; a wrong secret found again later must still show).
const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Counts a drop of `kind` at `now`; Some(how many of the kind so far) when it is to be
/// logged as a warning.
fn note_drop(
    drops: &mut HashMap<DropKind, (u64, Instant)>,
    kind: DropKind,
    now: Instant,
) -> Option<u64> {
    match drops.get_mut(&kind) {
        Some((count, last)) => {
            *count += 1;
            let due = now.duration_since(*last) >= DROP_WARNING_EVERY;
            if due {
                *last = now;
            }
            due.then_some(*count)
        }
        None => {
            drops.insert(kind, (1, now));
            Some(1)
        }
    }
}

/// (source address, Request Authenticator) → (kept until, reply; empty while being handled).
type RecentReplies = HashMap<(IpAddr, [u8; 16]), (Instant, Vec<u8>)>;

struct Client {
    name: String,
    secret: Vec<u8>,
    /// The organizations whose sessions it may act on (None: every organization).
    organizations: Option<Vec<String>>,
}

/// A bound listener, ready to run (clones share the socket, cache and counters).
#[derive(Clone)]
pub struct DynAuthListener {
    socket: Arc<UdpSocket>,
    clients: Arc<HashMap<IpAddr, Client>>,
    sessions: AccessSessions,
    /// Where requests acted on are recorded with their answers, for a retransmission or replay
    /// that comes after a restart or to another replica.
    storage: crate::storage::Storage,
    /// Recent replies by (source, Identifier, Request Authenticator). A std Mutex: map
    /// operations only.
    recent: Arc<Mutex<RecentReplies>>,
    stats: Arc<DynAuthStats>,
    /// Bounds the requests handled at once.
    in_progress: Arc<tokio::sync::Semaphore>,
    /// Replay protection: Event-Timestamp must be this close to our clock.
    event_timestamp_window: Duration,
    /// Requests without Event-Timestamp are dropped.
    require_event_timestamp: bool,
    /// Drops by kind: how many, and when the kind last warned.
    drops: Arc<Mutex<HashMap<DropKind, (u64, Instant)>>>,
}

/// The listener's socket, bound before anything is stored at start-up (a port in use then
/// changes nothing); [`DynAuthSocket::serving`] makes it a listener.
pub struct DynAuthSocket {
    socket: UdpSocket,
    clients: HashMap<IpAddr, Client>,
    event_timestamp_window: Duration,
    require_event_timestamp: bool,
}

impl DynAuthSocket {
    /// Binds the listener's socket (None when no client is configured: nothing listens).
    pub async fn bind(
        settings: &DynamicAuthorizationSettings,
    ) -> Result<Option<DynAuthSocket>, anyhow::Error> {
        if settings.clients.is_empty() {
            return Ok(None);
        }
        let mut clients = HashMap::new();
        for (i, c) in settings.clients.iter().enumerate() {
            let secret = c.load_secret(&format!("dynamic_authorization.clients[{i}]"))?;
            if clients
                .insert(
                    c.address.to_canonical(),
                    Client {
                        name: c.name.clone(),
                        secret: secret.expose().as_bytes().to_vec(),
                        organizations: c.organizations.clone(),
                    },
                )
                .is_some()
            {
                return Err(ConfigError {
                    key: format!("dynamic_authorization.clients[{i}].address"),
                    problem: format!("{} is listed twice", c.address),
                }
                .into());
            }
        }
        let socket = UdpSocket::bind(settings.listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot bind the Dynamic Authorization listener to {} (dynamic_authorization.listen): {e}",
                settings.listen
            )
        })?;
        Ok(Some(DynAuthSocket {
            socket,
            clients,
            event_timestamp_window: settings.event_timestamp_window,
            require_event_timestamp: settings.require_event_timestamp,
        }))
    }

    /// The listener acting on `sessions`, recording what it acted on in `storage`.
    pub fn serving(
        self,
        sessions: AccessSessions,
        storage: crate::storage::Storage,
    ) -> DynAuthListener {
        DynAuthListener {
            socket: Arc::new(self.socket),
            clients: Arc::new(self.clients),
            sessions,
            storage,
            recent: Arc::default(),
            stats: Arc::default(),
            in_progress: Arc::new(tokio::sync::Semaphore::new(MAX_IN_PROGRESS)),
            event_timestamp_window: self.event_timestamp_window,
            require_event_timestamp: self.require_event_timestamp,
            drops: Arc::default(),
        }
    }
}

impl DynAuthListener {
    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Shared counters.
    pub fn stats(&self) -> Arc<DynAuthStats> {
        self.stats.clone()
    }

    /// Answers requests until `shutdown`, then waits up to [`HANDLERS_AT_EXIT`] for those under
    /// way. Each request is handled in its own task, so a slow database write never holds up
    /// the next datagram.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let (len, from) = tokio::select! {
                _ = shutdown.cancelled() => {
                    // Requests under way are answered (and their answers recorded) before the
                    // exit, briefly: a Disconnect that ended its session and was cut before its
                    // ACK would be told NAK 503 when sent again to the next start (a code review).
                    let all = u32::try_from(MAX_IN_PROGRESS).unwrap_or(u32::MAX);
                    let _ = tokio::time::timeout(
                        HANDLERS_AT_EXIT,
                        this.in_progress.acquire_many(all),
                    )
                    .await;
                    return;
                }
                r = this.socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "Dynamic Authorization socket receive error");
                        continue;
                    }
                },
            };
            if !this.clients.contains_key(&sender(from)) {
                this.drop_request(from, "unknown client");
                continue;
            }
            let Ok(permit) = this.in_progress.clone().try_acquire_owned() else {
                this.drop_request(from, "too many requests in progress");
                continue;
            };
            let datagram = buf[..len].to_vec();
            let this = this.clone();
            tokio::spawn(crate::storage::same_lane(async move {
                this.handle(from, &datagram).await;
                drop(permit);
            }));
        }
    }

    fn drop_request(&self, from: SocketAddr, why: &'static str) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        // Kinds are bounded: configured clients by address, every other source as one.
        let client = self
            .clients
            .contains_key(&sender(from))
            .then_some(sender(from));
        let now = Instant::now();
        let warn = note_drop(
            &mut self.drops.lock().unwrap_or_else(|p| p.into_inner()),
            (client, why),
            now,
        );
        match warn {
            Some(count) => {
                tracing::warn!(%from, reason = why, dropped_of_this_kind = count, "Dynamic Authorization request dropped")
            }
            None => tracing::debug!(%from, reason = why, "Dynamic Authorization request dropped"),
        }
    }

    async fn handle(&self, from: SocketAddr, datagram: &[u8]) {
        let Some(client) = self.clients.get(&sender(from)) else {
            return self.drop_request(from, "unknown client");
        };
        let Some(len) = packet::declared_length(datagram) else {
            return self.drop_request(from, "not a RADIUS packet");
        };
        let datagram = &datagram[..len];
        let Some(_has_message_authenticator) =
            packet::verify_dynauth_request(datagram, &client.secret)
        else {
            return self.drop_request(
                from,
                "bad Request Authenticator or Message-Authenticator (wrong secret?)",
            );
        };
        let Ok(request) = Packet::decode(datagram, &client.secret) else {
            return self.drop_request(from, "malformed attributes");
        };
        if !matches!(request.code(), Code::DisconnectRequest | Code::CoARequest) {
            return self.drop_request(from, "not a Disconnect-Request or CoA-Request");
        }
        // A request outside the replay window is still answered when it is a copy of one this
        // process answered (a retransmission of a Disconnect whose ACK was lost, under a short
        // `event_timestamp_window`; a code review): the answer given, nothing done again. Any
        // other is dropped, without a look at the database (a captured packet replayed in a
        // loop costs no read).
        let stale = self.replay_check(&request);
        let key = (sender(from), request.authenticator());
        // Keep the entry while a replay of this request would still pass the replay check.
        let keep = match request.get_u32(attr::EVENT_TIMESTAMP) {
            Some(_) => (self.event_timestamp_window * 2).max(DUPLICATE_WINDOW),
            None => DUPLICATE_WINDOW,
        };
        // An empty entry marks a request being handled: its retransmission is not acted on
        // again (and gets the answer when it is retransmitted once more).
        let cached = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            recent.retain(|_, (until, _)| *until > now);
            let cached = recent.get(&key).map(|(_, reply)| reply.clone());
            if cached.is_none() && stale.is_none() {
                recent.insert(key, (now + keep, Vec::new()));
            }
            cached
        };
        if let Some(reply) = cached {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            if !reply.is_empty() {
                let _ = self.socket.send_to(&reply, from).await;
            }
            return;
        }
        if let Some(why) = stale {
            return self.drop_request(from, why);
        }
        // Answered before by an earlier process, or by another replica on this database: the
        // answer it gave, not a second stop (a captured request replayed after a restart).
        // By Request Authenticator alone, which covers every byte and the secret: a copy sent
        // from another client's address (clients sharing a secret) is the same request. A look
        // that fails or takes long is not taken for "never answered": the server is told to
        // try again (506), as when the session cannot be looked up.
        let recorded = crate::hex(&request.authenticator());
        let now_ms = crate::access_session::now_ms();
        let given = tokio::time::timeout(
            RECORD_WAIT,
            self.storage.dynauth_answer_given(&recorded, now_ms),
        )
        .await;
        match given {
            Ok(Ok(Some(reply))) => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                let _ = self.socket.send_to(&reply, from).await;
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                recent.insert(key, (Instant::now() + keep, reply));
                return;
            }
            Ok(Ok(None)) => {}
            unknown => {
                match unknown {
                    Ok(Err(e)) => crate::throttled!(warn, %from, error = %e,
                        "earlier answers to Dynamic Authorization requests could not be read: answered 506, to be sent again"),
                    _ => crate::throttled!(warn, %from,
                        "earlier answers to Dynamic Authorization requests took too long to read: answered 506, to be sent again"),
                }
                self.recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                let nak = match request.code() {
                    Code::CoARequest => Code::CoANAK,
                    _ => Code::DisconnectNAK,
                };
                let reply = reply_to(&request, nak, Some(RESOURCES_UNAVAILABLE));
                self.stats.naked.fetch_add(1, Ordering::Relaxed);
                if let Ok(bytes) = packet::encode_response(&reply) {
                    let _ = self.socket.send_to(&bytes, from).await;
                }
                return;
            }
        }
        let reply = self.answer(client, &request).await;
        let Ok(mut bytes) = packet::encode_response(&reply) else {
            // Too large (the request's Proxy-State echoed with our attributes): no answer, and
            // no mark either that would swallow its retransmissions.
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            tracing::error!(%from, "Dynamic Authorization reply could not be encoded (too large?): not answered");
            return;
        };
        let retry_afresh = reply.get_u32(attr::ERROR_CAUSE) == Some(RESOURCES_UNAVAILABLE);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if retry_afresh {
                recent.remove(&key); // our own trouble: a retransmission is tried afresh
            } else {
                recent.insert(key, (Instant::now() + keep, bytes.clone()));
            }
        }
        if matches!(reply.code(), Code::DisconnectACK | Code::CoAACK) {
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.naked.fetch_add(1, Ordering::Relaxed);
        }
        // Recorded before it is sent, for as long as a replay of the request would pass the
        // replay check: a retransmission of a request whose answer was lost, sent to another
        // replica, finds the answer there (black-box tester M's D1: recorded after sending,
        // one sent at once on the answer's heels was answered NAK 503). Not recorded: the
        // next one is acted on as new — a stop made already is then found ended (NAK 503),
        // never made twice.
        if !retry_afresh {
            let until = now_ms + i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2);
            let record = self.storage.record_dynauth_answer(
                &recorded,
                bytes.clone(),
                until,
                crate::access_session::now_ms(),
            );
            match tokio::time::timeout(RECORD_WAIT, record).await {
                Ok(Ok(())) => {
                    // Another replica that acted on this request at once may have answered ACK
                    // (it ended the session this one found ended): that answer stands, and is
                    // the one sent; and a NAK is not kept here, so that a retransmission
                    // reads what stands (black-box tester T2's D3: each replica repeated its
                    // own answer).
                    let standing = tokio::time::timeout(
                        RECORD_WAIT,
                        self.storage
                            .dynauth_answer_given(&recorded, crate::access_session::now_ms()),
                    )
                    .await;
                    if let Ok(Ok(Some(standing))) = standing {
                        bytes = standing;
                    }
                    if !crate::storage::acknowledges(&bytes) {
                        self.recent
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(%from, error = %e, "the answer to a Dynamic Authorization request could not be recorded")
                }
                Err(_) => {
                    tracing::warn!(%from, "recording the answer to a Dynamic Authorization request took too long; left unrecorded")
                }
            }
        }
        if let Err(e) = self.socket.send_to(&bytes, from).await {
            tracing::warn!(%from, error = %e, "Dynamic Authorization reply not sent");
        }
    }

    /// Why a request fails replay protection (RFC 5176 §3.5), if it does: its Event-Timestamp
    /// is outside the window around our clock, or missing while required — or not one 4-byte
    /// time (the protection's input: never read as absent, nor as the first of several;
    /// black-box tester P's D1).
    fn replay_check(&self, request: &Packet) -> Option<&'static str> {
        let stamps = request.get_all(attr::EVENT_TIMESTAMP);
        if stamps.len() > 1 {
            return Some("more than one Event-Timestamp (RFC 5176 allows one)");
        }
        if stamps.iter().any(|stamp| stamp.len() != 4) {
            return Some("an Event-Timestamp that is not a 4-byte time");
        }
        match request.get_u32(attr::EVENT_TIMESTAMP) {
            Some(sent) => {
                let now = crate::access_session::now_ms() / 1000;
                let skew = (now - i64::from(sent)).unsigned_abs();
                (skew > self.event_timestamp_window.as_secs()).then_some(
                    "Event-Timestamp outside the replay window (replayed, or clocks apart)",
                )
            }
            None => self
                .require_event_timestamp
                .then_some("no Event-Timestamp (dynamic_authorization.require_event_timestamp)"),
        }
    }

    /// The reply to an authentic request (and its effect).
    async fn answer(&self, from: &Client, request: &Packet) -> Packet {
        let client = from.name.as_str();
        let disconnect = request.code() == Code::DisconnectRequest;
        let (ack, nak) = if disconnect {
            (Code::DisconnectACK, Code::DisconnectNAK)
        } else {
            (Code::CoAACK, Code::CoANAK)
        };
        let reply = |code: Code, cause: Option<u32>| reply_to(request, code, cause);
        // An authorization attribute in a Disconnect-Request (a CoA's sent as a Disconnect, a
        // misrouted request): refused, not acted on with part of it ignored (black-box tester
        // P's D4).
        if let Some(attribute) = disconnect
            .then(|| unsupported_in_disconnect(request))
            .flatten()
        {
            crate::throttled!(info, client, attribute,
                "Disconnect-Request with an attribute other than session identification (RFC 5176 §3)");
            return reply(nak, Some(UNSUPPORTED_ATTRIBUTE));
        }
        let identification = Identification::of(request);
        if identification.has_malformed_address() {
            let (attribute, length) = wrong_length_address(request).unwrap_or(("?", 0));
            crate::throttled!(info, client, code = ?request.code(), attribute, length,
                "Dynamic Authorization request with an address attribute that is no address");
            return reply(nak, Some(INVALID_ATTRIBUTE_VALUE));
        }
        // RFC 2865 §5: a text or string attribute holds 1-253 octets. An empty one identifies
        // nothing: the request is not formed as the RFC allows (black-box tester V's D5: it was
        // answered as for no session).
        if let Some(attribute) = empty_identification(request) {
            crate::throttled!(info, client, code = ?request.code(), attribute,
                "Dynamic Authorization request with an empty identification attribute");
            return reply(nak, Some(INVALID_REQUEST));
        }
        if identification.only_foreign() {
            crate::throttled!(info, client, code = ?request.code(), "Dynamic Authorization request names a session by attributes no session of the portal has");
            return reply(nak, Some(SESSION_CONTEXT_NOT_FOUND));
        }
        let Some(wanted) = identification.lookup() else {
            crate::throttled!(info, client, code = ?request.code(), "Dynamic Authorization request names no session (no identification attribute)");
            return reply(nak, Some(MISSING_ATTRIBUTE));
        };
        // A client tied to organizations sees only their sessions (others: not found).
        let may_act_on = |org: &str| {
            from.organizations.as_ref().is_none_or(|orgs| {
                // In any letter case, as organization ids are named everywhere.
                orgs.iter().any(|id| id.eq_ignore_ascii_case(org))
            })
        };
        // Sessions it names of organizations the client may not act on: none of its business,
        // answered as no session, but the log says why (black-box tester M).
        let (candidates, outside): (Vec<_>, Vec<_>) = match self.sessions.find_active(&wanted).await
        {
            Ok(found) => found
                .into_iter()
                .filter(|s| identification.matches(s))
                .partition(|s| may_act_on(&s.organization_id)),
            Err(e) => {
                crate::throttled!(error, client, error = ?e, "looking up the session of a Dynamic Authorization request failed");
                // Not an answer the server should act on: let it retransmit.
                return reply(nak, Some(RESOURCES_UNAVAILABLE));
            }
        };
        // The NAS it names must be the one the session presents (RFC 5176 §3): the identity its
        // login presented, kept for its accounting (else its organization's now).
        let found = candidates
            .iter()
            .filter(|s| match &s.nas {
                Some(nas) => identification.names_nas(nas),
                None => self
                    .sessions
                    .organization_nas(&s.organization_id)
                    .is_some_and(|nas| identification.names_nas(&nas)),
            })
            .cloned()
            .collect::<Vec<_>>();
        // Another NAS only when the one named is none of the portal's: a request naming one of
        // its organizations' NAS identities and a session that organization does not have is
        // for no session, whatever sessions the name has in other organizations (black-box
        // tester S's D1: the answer depended on them). One naming no NAS of the portal is for
        // another NAS whether or not a session matches the rest (RFC 5176 §3.5; a code review).
        if found.is_empty()
            && identification.names_a_nas()
            && !self
                .sessions
                .names_a_nas_of(|nas| identification.names_nas(nas), may_act_on)
        {
            crate::throttled!(info, client, code = ?request.code(), "Dynamic Authorization request names another NAS");
            return reply(nak, Some(NAS_IDENTIFICATION_MISMATCH));
        }
        if found.is_empty() {
            if !outside.is_empty() {
                crate::throttled!(info, client, code = ?request.code(), named = %identification.described(), sessions = outside.len(),
                    "Dynamic Authorization request for no active session of the organizations this client may act on (its `organizations` list): the sessions it names are other organizations'");
            } else {
                crate::throttled!(info, client, code = ?request.code(), named = %identification.described(),
                    "Dynamic Authorization request for no active session");
            }
            return reply(nak, Some(SESSION_CONTEXT_NOT_FOUND));
        }
        if !disconnect {
            let disabled = found.iter().any(|s| {
                !guard::allows(
                    Operation::CoaRequest,
                    OrgState::from_active(self.sessions.organization_active(&s.organization_id)),
                )
            });
            crate::throttled!(
                info,
                client,
                sessions = found.len(),
                disabled,
                "CoA-Request refused: changing a session is not supported"
            );
            // One asking for a service (Service-Type: "Authorize Only") is told that service is
            // not supported (RFC 5176 §3.2; a code review), others that CoA is not.
            let cause = if request.get_u32(attr::SERVICE_TYPE) == Some(AUTHORIZE_ONLY) {
                UNSUPPORTED_SERVICE
            } else {
                UNSUPPORTED_EXTENSION
            };
            return reply(nak, Some(cause));
        }
        let actor = format!("dynauth:{client}");
        let mut ended = 0;
        for session in &found {
            match self.sessions.terminate_audited(session, &actor).await {
                Ok(true) => {
                    ended += 1;
                    tracing::info!(client, acct_session_id = %session.acct_session_id,
                        organization = %session.organization_id, "session ended by Disconnect-Request");
                }
                // Ended meanwhile (its user's Disconnect, its expiry): not by this request,
                // audited as refused.
                Ok(false) => tracing::info!(client, acct_session_id = %session.acct_session_id,
                    organization = %session.organization_id, "the session a Disconnect-Request names ended meanwhile"),
                Err(e) => {
                    tracing::error!(client, error = ?e, "stopping a session for a Disconnect-Request failed");
                    return reply(nak, Some(RESOURCES_UNAVAILABLE));
                }
            }
        }
        // Acknowledged only when it ended one: every session it named had ended already is
        // what a request for no active session is told (as the audit says it was refused).
        if ended == 0 {
            return reply(nak, Some(SESSION_CONTEXT_NOT_FOUND));
        }
        reply(ack, None)
    }
}

/// How a request identifies its session(s) (RFC 5176 §3): every identification attribute it
/// carries must match — Acct-Session-Id, User-Name, the client's address (Framed-IP-Address,
/// Framed-IPv6-Address and Calling-Station-Id, which the portal sends as that address) and
/// Class (the session holds it; ISE's Class names one session) — and the NAS attributes it
/// carries must be the session's organization's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identification {
    /// Every value of each attribute counts (a repeated one must match too).
    acct_session_ids: Vec<String>,
    usernames: Vec<String>,
    /// Every address the request gives for the client (all must be the session's).
    client_ips: Vec<String>,
    classes: Vec<Vec<u8>>,
    nas_ips: Vec<IpAddr>,
    nas_identifiers: Vec<String>,
    /// The request also identifies the session by an attribute the portal's sessions never
    /// have (a NAS-Port, a Called-Station-Id, …): no session of the portal is the one meant.
    foreign: bool,
}

impl Identification {
    /// What the request named a session by, for the log (values escaped, Class as hex).
    fn described(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |name: &str, values: Vec<String>| {
            if !values.is_empty() {
                parts.push(format!("{name}={values:?}"));
            }
        };
        add("Acct-Session-Id", self.acct_session_ids.clone());
        add("User-Name", self.usernames.clone());
        add("client address", self.client_ips.clone());
        add(
            "Class",
            self.classes.iter().map(|c| crate::hex(c)).collect(),
        );
        parts.join(" ")
    }

    /// The identification attributes of `request`.
    pub fn of(request: &Packet) -> Identification {
        let text = |value: Vec<u8>| String::from_utf8_lossy(&value).into_owned();
        // The addresses of an attribute pair, None for a value of the wrong length.
        let addresses = |v4: u8, v6: u8| {
            [v4, v6]
                .into_iter()
                .flat_map(|typ| {
                    request
                        .get_all(typ)
                        .into_iter()
                        .map(move |value| address(typ, &value))
                })
                .collect::<Vec<_>>()
        };
        // A malformed address names no one: it must not match anyone either.
        let framed = addresses(attr::FRAMED_IP_ADDRESS, attr::FRAMED_IPV6_ADDRESS)
            .into_iter()
            .map(|ip| ip.map_or_else(|| MALFORMED.to_string(), |ip| ip.to_string()));
        let calling = request
            .get_all(attr::CALLING_STATION_ID)
            .into_iter()
            .map(|v| normalised_address(&text(v)));
        Identification {
            acct_session_ids: request
                .get_all(attr::ACCT_SESSION_ID)
                .into_iter()
                .map(text)
                .collect(),
            usernames: request
                .get_all(attr::USER_NAME)
                .into_iter()
                .map(text)
                .collect(),
            client_ips: framed.chain(calling).collect(),
            classes: request.get_all(attr::CLASS),
            nas_ips: addresses(attr::NAS_IP_ADDRESS, attr::NAS_IPV6_ADDRESS)
                .into_iter()
                .map(|ip| ip.unwrap_or(IpAddr::from([0u8; 4])))
                .collect(),
            nas_identifiers: request
                .get_all(attr::NAS_IDENTIFIER)
                .into_iter()
                .map(text)
                .collect(),
            foreign: attr::FOREIGN_SESSION_IDENTIFICATION
                .iter()
                .any(|typ| !request.get_all(*typ).is_empty()),
        }
    }

    /// Whether the request identifies a session only by attributes the portal's sessions never
    /// have: it names a session, just none of the portal's.
    pub fn only_foreign(&self) -> bool {
        self.foreign && self.lookup().is_none()
    }

    /// What storage looks sessions up by: the most selective attribute there is (the others
    /// are checked on what it finds, [`Self::matches`]). None: the request carries none.
    pub fn lookup(&self) -> Option<SessionMatch> {
        if let Some(id) = self.acct_session_ids.first() {
            return Some(SessionMatch::AcctSessionId(id.clone()));
        }
        if let Some(ip) = self.client_ips.first() {
            return Some(SessionMatch::ClientIp(ip.clone()));
        }
        if let Some(class) = self.classes.first() {
            return Some(SessionMatch::Class(class.clone()));
        }
        self.usernames.first().cloned().map(SessionMatch::UserName)
    }

    /// Whether `session` has every identification attribute the request gives (RFC 5176 §3:
    /// all of them must match; one the portal's sessions never have matches none).
    pub fn matches(&self, session: &AccessSessionRecord) -> bool {
        !self.foreign
            && self
                .acct_session_ids
                .iter()
                .all(|id| *id == session.acct_session_id)
            && self.usernames.iter().all(|u| *u == session.username)
            && self.client_ips.iter().all(|ip| *ip == session.client_ip)
            && self.classes.iter().all(|c| session.classes.contains(c))
    }

    /// Whether an address attribute (Framed-IP-Address, Framed-IPv6-Address, NAS-IP-Address,
    /// NAS-IPv6-Address) holds no address (a wrong length).
    pub fn has_malformed_address(&self) -> bool {
        self.client_ips.iter().any(|ip| ip == MALFORMED)
            || self.nas_ips.iter().any(|ip| ip.is_unspecified())
    }

    /// Whether the request gives a NAS attribute (NAS-IP-Address, NAS-Identifier).
    pub fn names_a_nas(&self) -> bool {
        !self.nas_ips.is_empty() || !self.nas_identifiers.is_empty()
    }

    /// Whether the NAS attributes the request gives (if any) are `nas`'s.
    pub fn names_nas(&self, nas: &NasIdentity) -> bool {
        self.nas_ips.iter().all(|ip| *ip == nas.ip)
            && self.nas_identifiers.iter().all(|id| *id == nas.identifier)
    }
}

/// The address attributes a Disconnect/CoA request may carry: type, its values' length (4
/// bytes for IPv4, 16 for IPv6), name.
const ADDRESS_ATTRIBUTES: [(u8, usize, &str); 4] = [
    (attr::FRAMED_IP_ADDRESS, 4, "Framed-IP-Address"),
    (attr::FRAMED_IPV6_ADDRESS, 16, "Framed-IPv6-Address"),
    (attr::NAS_IP_ADDRESS, 4, "NAS-IP-Address"),
    (attr::NAS_IPV6_ADDRESS, 16, "NAS-IPv6-Address"),
];

/// The address a value of the address attribute `typ` holds; None if its length is not the
/// attribute's (a 16-byte Framed-IP-Address is no IPv6 address: malformed).
fn address(typ: u8, value: &[u8]) -> Option<IpAddr> {
    let (_, wanted, _) = ADDRESS_ATTRIBUTES.iter().find(|(t, ..)| *t == typ)?;
    match (*wanted, value.len()) {
        (4, 4) => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
        (16, 16) => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The first address attribute of `request` whose value is not its attribute's length: its
/// name and length, for the log.
fn wrong_length_address(request: &Packet) -> Option<(&'static str, usize)> {
    ADDRESS_ATTRIBUTES
        .into_iter()
        .find_map(|(typ, wanted, name)| {
            request
                .get_all(typ)
                .into_iter()
                .find(|value| value.len() != wanted)
                .map(|value| (name, value.len()))
        })
}

/// The first identification attribute of `request` that is empty (0 octets), by name.
fn empty_identification(request: &Packet) -> Option<&'static str> {
    [
        (attr::ACCT_SESSION_ID, "Acct-Session-Id"),
        (attr::USER_NAME, "User-Name"),
        (attr::CALLING_STATION_ID, "Calling-Station-Id"),
        (attr::CLASS, "Class"),
        (attr::NAS_IDENTIFIER, "NAS-Identifier"),
    ]
    .into_iter()
    .find_map(|(typ, name)| {
        request
            .get_all(typ)
            .iter()
            .any(|value| value.is_empty())
            .then_some(name)
    })
}

/// What a malformed address attribute reads as: it names no one.
const MALFORMED: &str = "(malformed)";

/// A Calling-Station-Id as the portal writes addresses (an IPv6 address in any of its spellings
/// is the same address; a trailing NUL some servers add is no part of it); other text as it is.
fn normalised_address(text: &str) -> String {
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    text.parse::<IpAddr>()
        .map_or_else(|_| text.to_string(), |ip| ip.to_canonical().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(acct: &str, user: &str, ip: &str, classes: &[&[u8]]) -> AccessSessionRecord {
        AccessSessionRecord {
            id: 1,
            acct_session_id: acct.into(),
            organization_id: "acme".into(),
            username: user.into(),
            client_ip: ip.into(),
            server_index: 0,
            server_name: "primary".into(),
            classes: classes.iter().map(|c| c.to_vec()).collect(),
            reply_message: None,
            started_at: 0,
            refreshed_at: 0,
            window_ms: 0,
            limit_at: None,
            expires_at: 0,
            interim_interval: None,
            active: true,
            stopped_at: None,
            terminate_cause: None,
            nas: None,
            replaced_by: None,
            accept_timeouts: None,
        }
    }

    fn request(attrs: &[(u8, &[u8])]) -> Identification {
        let mut p = Packet::new(Code::DisconnectRequest, 1, [0; 16], b"s");
        for (typ, value) in attrs {
            p.push(*typ, *value);
        }
        Identification::of(&p)
    }

    #[test]
    fn each_kind_of_drop_warns_first_then_at_most_once_a_minute() {
        let mut drops = HashMap::new();
        let t0 = Instant::now();
        let ise: DropKind = (Some(IpAddr::from([10, 0, 0, 1])), "bad secret");
        let stranger: DropKind = (None, "unknown client");
        assert_eq!(note_drop(&mut drops, ise, t0), Some(1));
        assert_eq!(
            note_drop(&mut drops, ise, t0 + Duration::from_secs(1)),
            None
        );
        // Another kind warns on its own, whatever the first did.
        assert_eq!(
            note_drop(&mut drops, stranger, t0 + Duration::from_secs(2)),
            Some(1)
        );
        assert_eq!(
            note_drop(&mut drops, ise, t0 + Duration::from_secs(59)),
            None
        );
        // A minute on, the same kind warns again, with its count.
        assert_eq!(
            note_drop(&mut drops, ise, t0 + Duration::from_secs(61)),
            Some(4)
        );
        assert_eq!(
            note_drop(&mut drops, ise, t0 + Duration::from_secs(62)),
            None
        );
    }

    #[test]
    fn an_address_attribute_that_is_no_address_is_malformed() {
        assert!(request(&[(attr::FRAMED_IP_ADDRESS, &[10, 0])]).has_malformed_address());
        assert!(request(&[(attr::NAS_IP_ADDRESS, &[1, 2, 3])]).has_malformed_address());
        // An address of the other family's length is no address of the attribute's kind.
        assert!(request(&[(attr::FRAMED_IPV6_ADDRESS, &[127, 0, 0, 3])]).has_malformed_address());
        assert!(request(&[(attr::FRAMED_IP_ADDRESS, &[0xfe; 16])]).has_malformed_address());
        assert!(request(&[(attr::NAS_IPV6_ADDRESS, &[10, 0, 0, 1])]).has_malformed_address());
        assert!(request(&[(attr::NAS_IP_ADDRESS, &[0x20; 16])]).has_malformed_address());
        assert!(!request(&[(attr::FRAMED_IPV6_ADDRESS, &[0x20; 16])]).has_malformed_address());
        // The log names the attribute and its length.
        let mut p = Packet::new(Code::DisconnectRequest, 1, [0; 16], b"s");
        p.push(attr::FRAMED_IP_ADDRESS, [10, 0, 0, 5]);
        p.push(attr::FRAMED_IPV6_ADDRESS, [127, 0, 0, 3]);
        assert_eq!(wrong_length_address(&p), Some(("Framed-IPv6-Address", 4)));
        assert!(!request(&[
            (attr::FRAMED_IP_ADDRESS, &[10, 0, 0, 5]),
            (attr::CALLING_STATION_ID, b"not an address"),
        ])
        .has_malformed_address());
    }

    #[test]
    fn storage_looks_up_by_the_most_selective_attribute_and_none_without_one() {
        let all = request(&[
            (attr::CLASS, b"c"),
            (attr::USER_NAME, b"alice"),
            (attr::FRAMED_IP_ADDRESS, &[10, 0, 0, 5]),
            (attr::ACCT_SESSION_ID, b"abc"),
        ]);
        assert_eq!(
            all.lookup(),
            Some(SessionMatch::AcctSessionId("abc".into()))
        );
        let by_ip = request(&[
            (attr::USER_NAME, b"alice"),
            (attr::CALLING_STATION_ID, b"10.0.0.5"),
        ]);
        assert_eq!(
            by_ip.lookup(),
            Some(SessionMatch::ClientIp("10.0.0.5".into()))
        );
        let by_class = request(&[(attr::USER_NAME, b"alice"), (attr::CLASS, b"c")]);
        assert_eq!(by_class.lookup(), Some(SessionMatch::Class(b"c".to_vec())));
        let by_user = request(&[(attr::USER_NAME, b"alice")]);
        assert_eq!(
            by_user.lookup(),
            Some(SessionMatch::UserName("alice".into()))
        );
        assert_eq!(request(&[(attr::NAS_IDENTIFIER, b"portal")]).lookup(), None);
    }

    #[test]
    fn every_identification_attribute_given_must_match() {
        let alice = session("abc", "alice", "10.0.0.5", &[b"group"]);
        for (attrs, expected) in [
            (vec![(attr::ACCT_SESSION_ID, &b"abc"[..])], true),
            (
                vec![
                    (attr::ACCT_SESSION_ID, &b"abc"[..]),
                    (attr::USER_NAME, b"mallory"),
                ],
                false,
            ),
            (
                vec![
                    (attr::ACCT_SESSION_ID, &b"abc"[..]),
                    (attr::FRAMED_IP_ADDRESS, &[10, 9, 9, 9]),
                ],
                false,
            ),
            (
                vec![(attr::USER_NAME, &b"alice"[..]), (attr::CLASS, b"group")],
                true,
            ),
            (
                vec![(attr::USER_NAME, &b"bob"[..]), (attr::CLASS, b"group")],
                false,
            ),
            (vec![(attr::CALLING_STATION_ID, &b"10.0.0.5"[..])], true),
            (
                vec![
                    (attr::CALLING_STATION_ID, &b"10.0.0.5"[..]),
                    (attr::FRAMED_IP_ADDRESS, &[10, 0, 0, 6]),
                ],
                false,
            ),
            (vec![(attr::FRAMED_IP_ADDRESS, &[10, 0, 0][..])], false),
            (vec![(attr::CLASS, &b"other"[..])], false),
            // A NAS-Port or a Called-Station-Id besides: a session of another NAS's kind.
            (
                vec![
                    (attr::USER_NAME, &b"alice"[..]),
                    (5, &7u32.to_be_bytes()[..]),
                ],
                false,
            ),
            (
                vec![(attr::USER_NAME, &b"alice"[..]), (30, &b"00-11-22"[..])],
                false,
            ),
        ] {
            assert_eq!(request(&attrs).matches(&alice), expected, "{attrs:?}");
        }
        // Any spelling of an IPv6 address is that address; a trailing NUL is no part of it.
        let v6 = session("x", "v", "2001:db8::7", &[]);
        assert!(request(&[(attr::CALLING_STATION_ID, b"2001:DB8:0::7")]).matches(&v6));
        assert!(request(&[(attr::CALLING_STATION_ID, b"10.0.0.5\0")]).matches(&alice));
        // A repeated attribute: every value must be the session's.
        let both = request(&[
            (attr::ACCT_SESSION_ID, b"abc"),
            (attr::ACCT_SESSION_ID, b"other"),
        ]);
        assert!(!both.matches(&alice));
        let twice = request(&[(attr::USER_NAME, b"alice"), (attr::USER_NAME, b"alice")]);
        assert!(twice.matches(&alice));
        // Named only by what the portal's sessions never have: a session, not the portal's.
        assert!(request(&[(50, b"multi")]).only_foreign());
        assert!(!request(&[(50, b"multi"), (attr::USER_NAME, b"alice")]).only_foreign());
        assert!(!request(&[(attr::NAS_IDENTIFIER, b"portal")]).only_foreign());
    }

    #[test]
    fn the_nas_named_must_be_the_organizations() {
        let nas = NasIdentity {
            ip: IpAddr::from([127, 0, 0, 1]),
            identifier: "radius-portal".into(),
        };
        assert!(request(&[]).names_nas(&nas));
        assert!(request(&[
            (attr::NAS_IP_ADDRESS, &[127, 0, 0, 1]),
            (attr::NAS_IDENTIFIER, b"radius-portal")
        ])
        .names_nas(&nas));
        assert!(!request(&[(attr::NAS_IP_ADDRESS, &[10, 1, 2, 3])]).names_nas(&nas));
        assert!(!request(&[(attr::NAS_IDENTIFIER, b"other-nas")]).names_nas(&nas));
    }
}
