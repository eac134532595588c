//! UDP transport for RADIUS requests: a few source sockets per address family shared by every
//! request in flight, Identifiers multiplexed per (socket, destination), retransmissions that
//! reuse the Identifier and bytes, and replies accepted only after they verify.
//!
//! The receive loop verifies every datagram against the request it claims to answer (Response
//! Authenticator, Message-Authenticator) before handing it over, so a forged or garbled datagram
//! can neither panic anything nor take the place of the real reply: the request keeps waiting
//! for the genuine one. An ICMP destination unreachable for a request (nothing listens at the
//! port; no route to the host) can end it at once with [`RadiusError::Unreachable`] instead of
//! letting it wait out its timeouts, when the caller has somewhere else to go
//! ([`Exchange::end_when_unreachable`]). The kernel queues the error with the request it
//! answers (`IP_RECVERR`); it counts only when it quotes the request's own Request
//! Authenticator, so a host that never saw the request cannot end it. When all 256
//! Identifiers towards a server are in use on every socket, a new source socket is opened (up
//! to [`MAX_SOCKETS_PER_FAMILY`]); beyond that a request waits for a free Identifier until its
//! deadline — it never fails merely because many are in flight.
//!
//! It does not choose servers or decide failover: that is [`super::Radius`].

use super::packet::{accept_reply, Dropped, Packet, MAX_PACKET};
use super::RadiusError;
use crate::supervise::{self, TaskHealth};
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};
use tokio::{
    io::Interest,
    net::UdpSocket,
    sync::{oneshot, Notify},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// One transmission of `bytes` to `destination`. A socket's pending asynchronous error is
/// cleared first: with `IP_RECVERR` every ICMP error naming its port sets it — about any
/// earlier datagram, or forged by anyone off the path who knows the port — and it would fail
/// this send, whatever its destination: a flood of them failed every try, which the breakers
/// counted as the servers' failures and opened (the RADIUS review's M2 of session 80). The
/// errors themselves stay in the error queue, read for the requests they are about
/// (`read_errors`); a send that fails now fails for itself.
async fn send_once(
    socket: &UdpSocket,
    bytes: &[u8],
    destination: SocketAddr,
) -> std::io::Result<usize> {
    let _ = socket.take_error();
    socket.send_to(bytes, destination).await
}

/// Source sockets per address family: 256 Identifiers each, per destination.
pub const MAX_SOCKETS_PER_FAMILY: usize = 16;
/// Receive buffer asked of the kernel (it caps it at `net.core.rmem_max`): hundreds of replies
/// can arrive between two reads under load.
const RECEIVE_BUFFER: usize = 4 << 20;

/// A verified, decoded reply.
#[derive(Debug)]
pub struct Reply {
    /// The reply.
    pub packet: Packet,
    /// It carried a valid Message-Authenticator.
    pub has_message_authenticator: bool,
}

/// What a reply to one request is checked against (known once the request is built).
#[derive(Clone)]
struct Expectation {
    /// The request's code: a reply of a code that does not answer it is no answer.
    request_code: u8,
    request_authenticator: [u8; 16],
    secret: Arc<[u8]>,
    require_message_authenticator: bool,
    /// An ICMP destination unreachable quoting the request ends it.
    end_when_unreachable: bool,
}

impl Expectation {
    /// Whether `datagram` is a reply signed for this request (with its secret), whatever
    /// else it is.
    fn signs(&self, datagram: &[u8]) -> bool {
        !matches!(
            accept_reply(
                datagram,
                (self.request_code, &self.request_authenticator),
                &self.secret,
                false,
            ),
            Err(Dropped::Check(_))
        )
    }
}

/// One request in flight.
struct Pending {
    /// None between reserving the Identifier and building the request: replies are dropped.
    expect: Option<Expectation>,
    /// Taken by the first verified reply (or an ICMP error quoting the request); later
    /// duplicates find it empty and are dropped.
    reply: Option<oneshot::Sender<Answer>>,
    /// An authentic reply came but was dropped for lacking the Message-Authenticator.
    unsigned_reply: bool,
    /// A reply to it came from its destination but failed verification (a wrong shared
    /// secret, or a forgery): why the first one was dropped.
    unverified_reply: Option<String>,
    /// An ICMP destination unreachable quoting the request came, and the request went on.
    refused: Option<nix::errno::Errno>,
    /// How many port unreachables the destination itself sent for it ([`Refusal::by_destination`]):
    /// one for every transmission, and none of them was received.
    refusals: u32,
}

/// What ends a request's wait: its reply, an ICMP error saying it cannot arrive, or a genuine
/// reply that does not answer it.
type Answer = Result<Reply, Ended>;

/// A request's wait ended without its answer.
#[derive(Debug)]
enum Ended {
    /// An ICMP error quoting it.
    Refused(Refusal),
    /// A reply signed with the secret whose code does not answer the request (a proxy's
    /// Protocol-Error): the server will not answer it otherwise, so retransmitting is no use.
    NotAnAnswer(String),
}

/// An ICMP destination unreachable that ended a request.
#[derive(Debug)]
struct Refusal {
    error: std::io::Error,
    /// A port unreachable sent by the destination host itself: nothing listened there, so the
    /// datagram it quotes was not received. Anything else (a router's error) proves less.
    by_destination: bool,
}

/// (socket index within its family, server, Identifier).
type Key = (usize, SocketAddr, u8);

#[derive(Default)]
struct Inner {
    waiters: HashMap<Key, Pending>,
    /// Next Identifier to try per (socket, destination), so consecutive requests differ.
    next_id: HashMap<(usize, SocketAddr), u8>,
    /// Replies that failed verification, per server that sent them (only addresses a request
    /// went to: bounded by the configured servers). Each server's first warns, so a server
    /// with the wrong secret is named in the log whatever other datagrams were dropped before.
    unverified_from: HashMap<SocketAddr, u64>,
    /// The last request each (socket, server, Identifier) carried, once it ended: a reply to it
    /// that comes late, after the Identifier went to a new request, is told from a reply that
    /// fails verification (a wrong secret) — a slow server is not taken for a misconfigured
    /// one. One per Identifier a request used, and those of the last [`ENDED_KEPT`] only once
    /// there are many (a removed server's, and its secret, are not kept for ever).
    ended: HashMap<Key, (Instant, Expectation)>,
    /// When `ended` was last pruned (at most every [`ENDED_KEPT`]: under load it is large with
    /// recent requests, and a look at each at every request's end would cost).
    ended_pruned: Option<Instant>,
    v4: Vec<Arc<UdpSocket>>,
    v6: Vec<Arc<UdpSocket>>,
}

struct Shared {
    /// A std Mutex: held only for map operations and binding a socket, never across an await.
    inner: Mutex<Inner>,
    /// Signalled whenever an Identifier is freed (requests waiting for one retry).
    freed: Notify,
    bind_v4: Ipv4Addr,
    /// Receive loops are supervised; their state shows in `/readyz`.
    health: TaskHealth,
    /// Stops the receive loops when the last client handle is dropped.
    stop: CancellationToken,
    /// Datagrams dropped: not a RADIUS packet, no request waiting, or failed verification.
    dropped: AtomicU64,
    /// Of those, the ones anyone could have sent from an address no request went to (they
    /// decide when to warn about those).
    suspicious: AtomicU64,
    /// ICMP errors read from the sockets' error queues, acted on or not.
    icmp_errors: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A shared RADIUS client. Cheap to clone.
#[derive(Clone)]
pub struct RadiusClient {
    shared: Arc<Shared>,
}

/// One request/response exchange's parameters.
pub struct Exchange<'a> {
    /// Where to send.
    pub destination: SocketAddr,
    /// Shared secret for verifying the reply.
    pub secret: &'a [u8],
    /// Time to wait for a reply before retransmitting.
    pub timeout: Duration,
    /// Retransmissions after the first send.
    pub retries: u32,
    /// The whole exchange gives up at this instant, whatever `timeout` and `retries` allow.
    pub deadline: Instant,
    /// Reject replies that lack a valid Message-Authenticator (BlastRADIUS hardening).
    pub require_message_authenticator: bool,
    /// End the exchange at once with [`RadiusError::Unreachable`] when an ICMP destination
    /// unreachable quotes the request — for a caller with another server to try, or that tries
    /// again later anyway. False: keep retransmitting until the deadline (a lone server
    /// restarting answers the retransmission).
    pub end_when_unreachable: bool,
    /// `deadline` is a caller's, which may end the exchange before the server has had its
    /// `timeout`: an exchange it ends so is [`RadiusError::CutShort`], not the server's silence.
    /// False: the deadline is the exchange's own (whole timeouts), whatever it cuts is silence.
    pub callers_deadline: bool,
}

/// Whether an exchange that ended unanswered now gave its server less than its `timeout` (by a
/// tenth) since its first transmission went out at `first_sent`: its caller's deadline came
/// first (a sign-in's wait for a replaced session's Stop, or for that Stop's copies). Says
/// nothing about the server.
fn cut_short(first_sent: Option<Instant>, timeout: Duration) -> bool {
    first_sent.is_some_and(|at| at.elapsed() < timeout.mul_f64(0.9))
}

fn new_socket(local: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6RecvErr, &true)?;
    } else {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
    }
    // Best effort: the kernel may grant less.
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    UdpSocket::from_std(socket.into())
}

impl RadiusClient {
    /// Binds the first IPv4 socket on `bind_v4` (port 0 = any); more sockets, and IPv6 ones,
    /// are opened when needed. Receive loops report to a health registry of their own.
    pub async fn bind(bind_v4: Ipv4Addr) -> Result<RadiusClient, RadiusError> {
        Self::bind_with(bind_v4, TaskHealth::default()).await
    }

    /// [`RadiusClient::bind`] reporting receive-loop crashes to `health`.
    pub async fn bind_with(
        bind_v4: Ipv4Addr,
        health: TaskHealth,
    ) -> Result<RadiusClient, RadiusError> {
        let client = RadiusClient {
            shared: Arc::new(Shared {
                inner: Mutex::default(),
                freed: Notify::new(),
                bind_v4,
                health,
                stop: CancellationToken::new(),
                dropped: AtomicU64::new(0),
                suspicious: AtomicU64::new(0),
                icmp_errors: AtomicU64::new(0),
            }),
        };
        let mut inner = client.lock();
        client.open_socket(&mut inner, false)?;
        drop(inner);
        Ok(client)
    }

    /// Datagrams dropped so far (forged, unsolicited, malformed).
    pub fn dropped_datagrams(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// ICMP errors about requests read so far (those that ended a request and the rest).
    pub fn icmp_errors(&self) -> u64 {
        self.shared.icmp_errors.load(Ordering::Relaxed)
    }

    /// Replies from `server` dropped so far because they failed verification (a wrong secret,
    /// a forgery, a malformed packet). Its first is logged as a warning, whatever else was.
    pub fn unverified_replies_from(&self, server: SocketAddr) -> u64 {
        let inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.unverified_from.get(&server).copied().unwrap_or(0)
    }

    /// Source sockets open (IPv4 + IPv6).
    pub fn socket_count(&self) -> usize {
        let inner = self.lock();
        inner.v4.len() + inner.v6.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens one more socket of a family and starts its receive loop; returns its index.
    fn open_socket(&self, inner: &mut Inner, v6: bool) -> Result<usize, RadiusError> {
        let local = if v6 {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((self.shared.bind_v4, 0))
        };
        let socket = Arc::new(new_socket(local).map_err(|e| {
            if v6 {
                RadiusError::NoIpv6Socket
            } else {
                RadiusError::Io(e)
            }
        })?);
        let list = if v6 { &mut inner.v6 } else { &mut inner.v4 };
        list.push(socket.clone());
        let index = list.len() - 1;
        let shared = Arc::downgrade(&self.shared);
        let stop = self.shared.stop.clone();
        let name = format!("radius-receive-{}-{index}", if v6 { "v6" } else { "v4" });
        supervise::spawn(self.shared.health.clone(), name, move || {
            receive_loop(socket.clone(), index, shared.clone(), stop.clone())
        });
        Ok(index)
    }

    /// Sends the packet `build(identifier)` returns and waits for a verified reply, retransmitting
    /// the same bytes on timeout. `build` returns the encoded request and the Request
    /// Authenticator the reply is verified against.
    pub async fn exchange(
        &self,
        ex: Exchange<'_>,
        build: impl FnOnce(u8) -> Result<(Vec<u8>, [u8; 16]), RadiusError>,
    ) -> Result<Reply, RadiusError> {
        let (key, socket, mut reply) = self.register(ex.destination, ex.deadline).await?;
        let _registration = Registration {
            shared: &self.shared,
            key,
        };
        let (bytes, request_authenticator) = build(key.2)?;
        if let Some(pending) = self.lock().waiters.get_mut(&key) {
            pending.expect = Some(Expectation {
                request_code: bytes.first().copied().unwrap_or(0),
                request_authenticator,
                secret: Arc::from(ex.secret),
                require_message_authenticator: ex.require_message_authenticator,
                end_when_unreachable: ex.end_when_unreachable,
            });
        }
        let mut sent = false;
        // When the first transmission went out: a server given less than its `timeout` since
        // then, when the deadline ends the exchange, was cut short, not silent.
        let mut first_sent: Option<Instant> = None;
        // For each transmission, the destination's refusals counted before it went out.
        let mut refused_before: Vec<u32> = Vec::new();
        for attempt in 0..=ex.retries {
            if Instant::now() >= ex.deadline {
                break;
            }
            let before = self.lock().waiters.get(&key).map_or(0, |p| p.refusals);
            // A datagram the host dropped (a full queue) says nothing about the server: it
            // is not counted as sent, and the timer retransmits it.
            let went = self.send(&socket, key.0, &bytes, ex.destination).await?;
            sent |= went;
            if went {
                refused_before.push(before);
                first_sent.get_or_insert_with(Instant::now);
            }
            let wait_until = (Instant::now() + ex.timeout).min(ex.deadline);
            match tokio::time::timeout_at(wait_until, &mut reply).await {
                Ok(Ok(Ok(reply))) => return Ok(reply),
                // Nothing listens there, or no route: no retransmission can be answered. Refused
                // at its first send by the destination itself, the request never arrived.
                Ok(Ok(Err(Ended::Refused(refusal)))) => {
                    return Err(RadiusError::Unreachable {
                        error: refusal.error,
                        maybe_received: attempt > 0 || !refusal.by_destination,
                    })
                }
                Ok(Ok(Err(Ended::NotAnAnswer(why)))) => return Err(RadiusError::NotAnAnswer(why)),
                // The sender is dropped only with the registration: cannot happen while we wait.
                Ok(Err(_)) => break,
                Err(_) => {} // timed out: retransmit
            }
        }
        let (unsigned, refused, refusals, unverified) =
            self.lock()
                .waiters
                .get_mut(&key)
                .map_or((false, None, 0, None), |pending| {
                    (
                        pending.unsigned_reply,
                        pending.refused,
                        pending.refusals,
                        pending.unverified_reply.take(),
                    )
                });
        // Each transmission refused by the destination itself — a port unreachable after it
        // and before the next, and no more than one each —: none was received. Fewer (the
        // server back for one, an ICMP not yet read, a router's error) or more (a duplicate
        // standing in for a transmission that arrived) and one may have been.
        let every_one_refused = refusals as usize == refused_before.len()
            && refused_before
                .iter()
                .enumerate()
                .all(|(i, before)| *before as usize == i);
        Err(match (sent, unsigned, refused, unverified) {
            (true, true, _, _) => RadiusError::UnsignedReply,
            // Retransmitted through ICMP errors (a last server that may be restarting): the
            // operator learns that nothing listened there, not "no reply". Refused every time,
            // it never arrived: a sign-in's Start then owes the server no Stop.
            (true, false, Some(errno), _) => RadiusError::Unreachable {
                error: std::io::Error::from(errno),
                maybe_received: !every_one_refused,
            },
            (true, false, None, Some(why)) => RadiusError::UnverifiedReply(why),
            (true, false, None, None)
                if ex.callers_deadline && cut_short(first_sent, ex.timeout) =>
            {
                RadiusError::CutShort
            }
            (true, false, None, None) => RadiusError::Timeout,
            (false, ..) => RadiusError::NotSent,
        })
    }

    /// Sends `bytes` to `destination` from `socket` (number `index` of its family); false: the
    /// host dropped it. With `IP_RECVERR` a full transmit queue says ENOBUFS instead of
    /// dropping the datagram in silence, and a socket's pending ICMP error would fail the next
    /// send on it ([`send_once`] clears it first). A failed send is made again, up to
    /// [`SEND_TRIES`] times: only a send that keeps failing is this send's own failure
    /// (`Io`: no route, say), except ENOBUFS, which stays a dropped datagram.
    async fn send(
        &self,
        socket: &UdpSocket,
        index: usize,
        bytes: &[u8],
        destination: SocketAddr,
    ) -> Result<bool, RadiusError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match send_once(socket, bytes, destination).await {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            // The error's own request may be waiting for it.
            read_errors(&self.shared, index, socket, false);
            if tries < SEND_TRIES {
                continue;
            }
            if error.raw_os_error() == Some(nix::libc::ENOBUFS) {
                tracing::debug!(server = %destination, "RADIUS request dropped by this host (ENOBUFS): retransmitted on its timer");
                return Ok(false);
            }
            return Err(RadiusError::Io(error));
        }
    }

    /// Reserves a free Identifier towards `destination` on some socket (opening another when
    /// every one is full), waiting for one to be freed if the socket limit is reached.
    async fn register(
        &self,
        destination: SocketAddr,
        deadline: Instant,
    ) -> Result<(Key, Arc<UdpSocket>, oneshot::Receiver<Answer>), RadiusError> {
        let v6 = matches!(destination.ip(), IpAddr::V6(_));
        loop {
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut inner = self.lock();
                let sockets = if v6 { inner.v6.len() } else { inner.v4.len() };
                let mut slot = (0..sockets).find_map(|index| {
                    free_identifier(&mut inner, index, destination).map(|id| (index, id))
                });
                if slot.is_none() && sockets < MAX_SOCKETS_PER_FAMILY {
                    let index = self.open_socket(&mut inner, v6)?;
                    slot = free_identifier(&mut inner, index, destination).map(|id| (index, id));
                }
                if let Some((index, id)) = slot {
                    let key = (index, destination, id);
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.insert(
                        key,
                        Pending {
                            expect: None,
                            reply: Some(tx),
                            unsigned_reply: false,
                            unverified_reply: None,
                            refused: None,
                            refusals: 0,
                        },
                    );
                    let socket = if v6 {
                        inner.v6[index].clone()
                    } else {
                        inner.v4[index].clone()
                    };
                    return Ok((key, socket, rx));
                }
            }
            tracing::debug!(server = %destination, "every RADIUS identifier is in use; waiting for one");
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(RadiusError::IdentifiersExhausted);
            }
        }
    }
}

/// A free Identifier towards `destination` on socket `index`, advancing the rotation.
fn free_identifier(inner: &mut Inner, index: usize, destination: SocketAddr) -> Option<u8> {
    let start = *inner.next_id.get(&(index, destination)).unwrap_or(&0);
    let id = (0..=255u8)
        .map(|step| start.wrapping_add(step))
        .find(|id| !inner.waiters.contains_key(&(index, destination, *id)))?;
    inner
        .next_id
        .insert((index, destination), id.wrapping_add(1));
    Some(id)
}

/// Frees the Identifier when the exchange ends, however it ends.
struct Registration<'a> {
    shared: &'a Shared,
    key: Key,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expect) = inner.waiters.remove(&self.key).and_then(|p| p.expect) {
            let now = Instant::now();
            let due = inner
                .ended_pruned
                .is_none_or(|at| now.duration_since(at) >= ENDED_KEPT);
            if inner.ended.len() >= ENDED_PRUNE_AT && due {
                inner
                    .ended
                    .retain(|_, (at, _)| now.duration_since(*at) < ENDED_KEPT);
                inner.ended_pruned = Some(now);
            }
            inner.ended.insert(self.key, (now, expect));
        }
        drop(inner);
        self.shared.freed.notify_waiters();
    }
}

async fn receive_loop(
    socket: Arc<UdpSocket>,
    index: usize,
    shared: Weak<Shared>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => Some(r),
            r = socket.ready(Interest::ERROR) => match r {
                Ok(_) => None,
                Err(_) => return, // the runtime is shutting down
            },
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match received {
            Some(Ok((len, from))) => handle_datagram(&shared, index, from, &buf[..len]),
            // An ICMP error also surfaces as the next receive's error: it is in the queue.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "RADIUS socket receive error");
                read_errors(&shared, index, &socket, true);
            }
            None => read_errors(&shared, index, &socket, true),
        }
    }
}

/// Sends of one datagram made before its error counts (see [`RadiusClient::send`]).
const SEND_TRIES: usize = 3;
/// ICMP errors read from a socket's queue in one go: a flood of them yields to the rest.
const ERRORS_AT_ONCE: usize = 64;

/// An ICMP error the kernel queued for a datagram this socket sent (`IP_RECVERR`).
#[derive(Debug)]
struct IcmpError {
    /// Where the datagram went.
    destination: SocketAddr,
    /// A destination unreachable (ICMP type 3 but "fragmentation needed", which the kernel
    /// handles by fragmenting the retransmission; ICMPv6 type 1) — not a time exceeded or a
    /// parameter problem.
    unreachable: bool,
    /// A port unreachable sent by the destination itself (see [`Refusal::by_destination`]).
    port_closed_at_destination: bool,
    /// What it means (ECONNREFUSED for port unreachable, EHOSTUNREACH, ...).
    error: nix::errno::Errno,
    /// The start of the datagram, as the ICMP error quoted it.
    quoted: [u8; QUOTED],
    /// Bytes of `quoted` that are the datagram's.
    quoted_len: usize,
}

/// A RADIUS header: code, Identifier, length, Request Authenticator.
const QUOTED: usize = 20;

/// Takes the next error from the socket's error queue; `Ok(None)` for one that is not an ICMP
/// error about a datagram (a local one). `WouldBlock` once the queue is empty.
fn next_error(socket: &UdpSocket) -> std::io::Result<Option<IcmpError>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let mut quoted = [0u8; QUOTED];
    let mut control = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
    let mut iov = [std::io::IoSliceMut::new(&mut quoted)];
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(control.as_mut_slice()),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let quoted_len = message.bytes.min(QUOTED);
    let destination = message.address.and_then(|a| {
        if let Some(v4) = a.as_sockaddr_in() {
            Some(SocketAddr::V4((*v4).into()))
        } else {
            a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
        }
    });
    const DEST_UNREACH: u8 = 3;
    const FRAG_NEEDED: u8 = 4;
    const DEST_UNREACH_V6: u8 = 1;
    const PORT_UNREACH: u8 = 3;
    const PORT_UNREACH_V6: u8 = 4;
    let mut icmp = None;
    for control in message.cmsgs().map_err(std::io::Error::from)? {
        let (extended, unreachable, port, offender) = match control {
            ControlMessageOwned::Ipv4RecvErr(e, offender)
                if e.ee_origin == nix::libc::SO_EE_ORIGIN_ICMP =>
            {
                let offender =
                    offender.map(|a| IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
                let unreachable = e.ee_type == DEST_UNREACH && e.ee_code != FRAG_NEEDED;
                (
                    e,
                    unreachable,
                    unreachable && e.ee_code == PORT_UNREACH,
                    offender,
                )
            }
            ControlMessageOwned::Ipv6RecvErr(e, offender)
                if e.ee_origin == nix::libc::SO_EE_ORIGIN_ICMP6 =>
            {
                let offender = offender.map(|a| IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)));
                let unreachable = e.ee_type == DEST_UNREACH_V6;
                (
                    e,
                    unreachable,
                    unreachable && e.ee_code == PORT_UNREACH_V6,
                    offender,
                )
            }
            _ => continue,
        };
        let error = i32::try_from(extended.ee_errno).unwrap_or(0);
        icmp = Some((
            nix::errno::Errno::from_raw(error),
            unreachable,
            port,
            offender,
        ));
    }
    Ok(match (destination, icmp) {
        (Some(destination), Some((error, unreachable, port, offender))) => Some(IcmpError {
            destination,
            unreachable,
            port_closed_at_destination: port && offender == Some(destination.ip()),
            error,
            quoted,
            quoted_len,
        }),
        _ => None,
    })
}

/// Reads the socket's error queue (at most [`ERRORS_AT_ONCE`]), ending each request an ICMP
/// error proves unanswerable. `via_reactor` (the receive loop): once the queue is empty, the
/// socket's error readiness is cleared, and the loop waits for the next one; with more left it
/// stays set, and the loop comes back after serving its datagrams. Without (a send just failed
/// because of an error the reactor may not have seen yet): read right away, so the error's
/// request need not wait for the receive loop.
fn read_errors(shared: &Shared, index: usize, socket: &UdpSocket, via_reactor: bool) {
    for _ in 0..ERRORS_AT_ONCE {
        let next = if via_reactor {
            socket.try_io(Interest::ERROR, || next_error(socket))
        } else {
            next_error(socket)
        };
        match next {
            Ok(Some(icmp)) => handle_icmp(shared, index, &icmp),
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::debug!(error = %e, "RADIUS socket error queue unreadable");
                return;
            }
        }
    }
}

/// Ends the request `icmp` is about, if it quotes that request's own header (its Request
/// Authenticator: random for an Access-Request, a keyed hash for an Accounting-Request — only
/// a host that saw the request can name it) and the request's caller wants it ended.
fn handle_icmp(shared: &Shared, index: usize, icmp: &IcmpError) {
    shared.icmp_errors.fetch_add(1, Ordering::Relaxed);
    let quoted = &icmp.quoted[..icmp.quoted_len];
    if !icmp.unreachable || quoted.len() < QUOTED {
        tracing::debug!(server = %icmp.destination, error = %icmp.error, quoted = quoted.len(),
            "ICMP error for a RADIUS request not acted on");
        return;
    }
    let key = (index, icmp.destination, quoted[1]);
    let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pending) = inner.waiters.get_mut(&key) else {
        return;
    };
    let Some(expect) = pending
        .expect
        .as_ref()
        .filter(|e| e.request_authenticator[..] == quoted[4..QUOTED])
    else {
        return;
    };
    if !expect.end_when_unreachable {
        pending.refused = Some(icmp.error);
        pending.refusals += u32::from(icmp.port_closed_at_destination);
        return;
    }
    if let Some(tx) = pending.reply.take() {
        let _ = tx.send(Err(Ended::Refused(Refusal {
            error: std::io::Error::from(icmp.error),
            by_destination: icmp.port_closed_at_destination,
        })));
    }
}

/// Who could have caused a dropped datagram (decides how often it is worth a warning).
#[derive(Clone, Copy)]
enum DropCause {
    /// Anyone, from any address.
    Anyone,
    /// Anyone, or the server a request went to (a reply that failed verification: a wrong
    /// secret, or a forgery).
    FromServer,
    /// Only a holder of the secret.
    SecretHolder,
}

/// Hands a datagram to the request it answers if it verifies; otherwise drops and counts it.
fn handle_datagram(shared: &Shared, index: usize, from: SocketAddr, datagram: &[u8]) {
    // Anyone can send `Anyone` and `FromServer` datagrams at will, so a flood of them must not
    // become a flood of log lines: warn for the first and then every 1000th — of all unsolicited
    // ones, and of each server's unverified replies apart — the rest go to debug. Drops only a
    // holder of the secret can cause always warn. The counter has them all.
    let drop_it = |why: &dyn std::fmt::Display, cause: DropCause| {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        let before = match cause {
            DropCause::Anyone => shared.suspicious.fetch_add(1, Ordering::Relaxed),
            DropCause::FromServer => {
                let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
                let count = inner.unverified_from.entry(from).or_default();
                *count += 1;
                *count - 1
            }
            DropCause::SecretHolder => 0,
        };
        if crate::telemetry::worth_a_warning(before) {
            let dropped_so_far = shared.dropped.load(Ordering::Relaxed);
            tracing::warn!(%from, reason = %why, dropped_so_far, "RADIUS datagram dropped");
        } else {
            tracing::debug!(%from, reason = %why, "RADIUS datagram dropped");
        }
    };
    let Some(&id) = datagram.get(1) else {
        return drop_it(&"shorter than a header", DropCause::Anyone);
    };
    let key = (index, from, id);
    let (expect, asked) = {
        let inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        (
            inner.waiters.get(&key).and_then(|p| p.expect.clone()),
            inner.next_id.contains_key(&(index, from)),
        )
    };
    let Some(expect) = expect else {
        if !asked {
            // Never a request to this address and port: a server answering from another
            // address than the one configured (multi-homed, NAT) looks like silence otherwise.
            note_reply_from_elsewhere(shared, index, from, id, datagram);
            return drop_it(
                &"from an address and port this socket never sent a request to (does the server answer from another address than the one configured?)",
                DropCause::Anyone,
            );
        }
        // A reply signed for a request waiting there with another Identifier: something
        // between rewrites Identifiers, or the server answers with another one — silence
        // otherwise (black-box tester V's D1).
        if let Some(why) = note_reply_with_another_identifier(shared, index, from, id, datagram) {
            return drop_it(&why, DropCause::FromServer);
        }
        // Routine: a late reply to a request that was answered or gave up.
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%from, id, "RADIUS reply for no waiting request dropped");
        return;
    };
    match accept_reply(
        datagram,
        (expect.request_code, &expect.request_authenticator),
        &expect.secret,
        expect.require_message_authenticator,
    ) {
        Ok((packet, has_message_authenticator)) => {
            let sender = take_waiter(shared, key);
            match sender {
                Some(tx) => {
                    let _ = tx.send(Ok(Reply {
                        packet,
                        has_message_authenticator,
                    }));
                }
                None => tracing::debug!(%from, id, "duplicate reply dropped"),
            }
        }
        // Genuine (only a holder of the secret signs one), but of the wrong kind: the request
        // ends now, as the server's failure (a forger could not have sent it).
        Err(why @ Dropped::NotAnAnswer { .. }) => {
            let sender = take_waiter(shared, key);
            if let Some(tx) = sender {
                let _ = tx.send(Err(Ended::NotAnAnswer(why.to_string())));
            }
            drop_it(&why, DropCause::FromServer)
        }
        Err(why) => {
            // A late reply to the request this Identifier carried before (timed out, and the
            // Identifier went round to this one): routine under a slow server, said as such —
            // not as a secret that does not verify.
            if matches!(why, Dropped::Check(_)) && answers_the_one_before(shared, key, datagram) {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, id, "late RADIUS reply to an earlier request with this Identifier dropped");
                return;
            }
            // The request ends as a timeout all the same (a forger must not end it), but says
            // why: the operator learns of the missing Message-Authenticator or of the secret,
            // not of silence.
            let unsigned = matches!(why, Dropped::MissingMessageAuthenticator);
            if let Some(pending) = shared
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .waiters
                .get_mut(&key)
            {
                if unsigned {
                    pending.unsigned_reply = true;
                } else {
                    pending
                        .unverified_reply
                        .get_or_insert_with(|| why.to_string());
                }
            }
            let cause = if unsigned {
                DropCause::SecretHolder
            } else {
                DropCause::FromServer
            };
            drop_it(&why, cause)
        }
    }
}

/// How long an ended request is remembered for its late replies ([`Inner::ended`]), once
/// [`ENDED_PRUNE_AT`] are.
const ENDED_KEPT: Duration = Duration::from_secs(120);
const ENDED_PRUNE_AT: usize = 4096;

/// Whether `datagram` is signed for the request that carried `key` before the one waiting with
/// it now.
fn answers_the_one_before(shared: &Shared, key: Key, datagram: &[u8]) -> bool {
    let Some(before) = shared
        .inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .ended
        .get(&key)
        .map(|(_, before)| before.clone())
    else {
        return false;
    };
    before.signs(datagram)
}

/// The waiting request `key`'s end, to send it its outcome: None when it has one already (a
/// duplicate reply) or gave up.
fn take_waiter(shared: &Shared, key: Key) -> Option<oneshot::Sender<Answer>> {
    shared
        .inner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .waiters
        .get_mut(&key)
        .and_then(|p| p.reply.take())
}

/// Most requests a reply from an unknown address is checked against (each an MD5): anyone can
/// send such datagrams, so the work one costs is bounded.
const ELSEWHERE_CANDIDATES: usize = 4;

/// A datagram from an address no request went to, which verifies against a request waiting on
/// the same socket with its Identifier, sent to the same port of another address or another
/// port of the same address: the server answers from another address or port than the one
/// configured (several addresses, NAT, a server replying from another socket). The reply
/// is still dropped (a server must answer from where it was asked), but that request's error
/// then says so instead of "no reply" — `radius test` and the login's log line name the cause.
/// Only a holder of the request's secret can make a datagram verify.
fn note_reply_from_elsewhere(
    shared: &Shared,
    index: usize,
    from: SocketAddr,
    id: u8,
    datagram: &[u8],
) {
    let candidates: Vec<(SocketAddr, Expectation)> = {
        let inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .next_id
            .keys()
            .filter(|(i, dest)| {
                *i == index && (dest.port() == from.port() || dest.ip() == from.ip())
            })
            .filter_map(|&(_, dest)| {
                let expect = inner.waiters.get(&(index, dest, id))?.expect.clone()?;
                Some((dest, expect))
            })
            .take(ELSEWHERE_CANDIDATES)
            .collect()
    };
    for (dest, expect) in candidates {
        // Signed with the secret (of whatever kind): the server's.
        if !expect.signs(datagram) {
            continue;
        }
        let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = inner.waiters.get_mut(&(index, dest, id)) {
            pending.unverified_reply.get_or_insert_with(|| {
                format!("it came from {from}, not from {dest} where the request went (a server with several addresses, NAT, or one that answers from another port): configure the address the server answers from, or make it answer from the port it was asked at")
            });
        }
        return;
    }
}

/// A reply from a server a request went to, with an Identifier no request waits with, which
/// is signed with the secret for a request waiting there with another Identifier — as it
/// came, or with that request's Identifier put back (a middlebox that rewrote it): dropped
/// (RFC 2865 matches a reply by its Identifier), but that request's error says so instead of
/// "no reply" — what the log's line says too (returned). The requests waiting at that server
/// are looked up by Identifier (at most 255 lookups, never the whole map), and at most
/// [`ELSEWHERE_CANDIDATES`] are checked (each an MD5 or two): a late reply to a request that
/// was answered or gave up, the routine case, costs that much more and finds none.
fn note_reply_with_another_identifier(
    shared: &Shared,
    index: usize,
    from: SocketAddr,
    id: u8,
    datagram: &[u8],
) -> Option<String> {
    let candidates: Vec<(u8, Expectation)> = {
        let inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        (0..=u8::MAX)
            .filter(|&other| other != id)
            .filter_map(|other| {
                let pending = inner.waiters.get(&(index, from, other))?;
                pending.reply.as_ref()?;
                Some((other, pending.expect.clone()?))
            })
            .take(ELSEWHERE_CANDIDATES)
            .collect()
    };
    for (other, expect) in candidates {
        let mut rewritten = datagram.to_vec();
        rewritten[1] = other;
        if !expect.signs(datagram) && !expect.signs(&rewritten) {
            continue;
        }
        let why = format!("it came with Identifier {id}, and the request it is signed for has Identifier {other} (something between rewrites Identifiers, or the server answers with another one)");
        let mut inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = inner.waiters.get_mut(&(index, from, other)) {
            pending.unverified_reply.get_or_insert_with(|| why.clone());
        }
        return Some(why);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTHENTICATOR: [u8; 16] = [7; 16];

    /// A request waiting on `client`'s first socket towards `server` with Identifier 9.
    fn waiting(
        client: &RadiusClient,
        server: SocketAddr,
        end_when_unreachable: bool,
    ) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        client.lock().waiters.insert(
            (0, server, 9),
            Pending {
                expect: Some(Expectation {
                    request_code: 1,
                    request_authenticator: AUTHENTICATOR,
                    secret: Arc::from(&b"secret"[..]),
                    require_message_authenticator: false,
                    end_when_unreachable,
                }),
                reply: Some(tx),
                unsigned_reply: false,
                unverified_reply: None,
                refused: None,
                refusals: 0,
            },
        );
        rx
    }

    /// A port unreachable for `server` quoting `header`.
    fn port_unreachable(server: SocketAddr, header: &[u8]) -> IcmpError {
        let mut quoted = [0u8; QUOTED];
        quoted[..header.len()].copy_from_slice(header);
        IcmpError {
            destination: server,
            unreachable: true,
            port_closed_at_destination: true,
            error: nix::errno::Errno::ECONNREFUSED,
            quoted,
            quoted_len: header.len(),
        }
    }

    fn header(id: u8, authenticator: [u8; 16]) -> Vec<u8> {
        let mut header = vec![4, id, 0, 20];
        header.extend_from_slice(&authenticator);
        header
    }

    /// An exchange a caller's deadline ends before the server had its `timeout` is cut short —
    /// the caller's time ran out, not the server's, and its breaker is not told (black-box
    /// tester V's D1) —; one that waited a whole timeout, or whose deadline is its own, is the
    /// server's silence.
    #[tokio::test]
    async fn an_exchange_its_deadline_cuts_short_is_no_silence_of_the_server() {
        let client = RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let timeout = Duration::from_millis(400);
        let exchange = |deadline| Exchange {
            destination: silent.local_addr().unwrap(),
            secret: b"secret",
            timeout,
            retries: 0,
            deadline,
            require_message_authenticator: false,
            end_when_unreachable: false,
            callers_deadline: true,
        };
        let build = |id| Ok((header(id, AUTHENTICATOR), AUTHENTICATOR));
        let cut = client
            .exchange(exchange(Instant::now() + timeout / 4), build)
            .await;
        assert!(matches!(cut, Err(RadiusError::CutShort)), "{cut:?}");
        // A whole timeout waited (then a retransmission, cut by the deadline).
        let whole = client
            .exchange(
                Exchange {
                    retries: 1,
                    ..exchange(Instant::now() + timeout * 3 / 2)
                },
                build,
            )
            .await;
        assert!(matches!(whole, Err(RadiusError::Timeout)), "{whole:?}");
        // A deadline that is the exchange's own cuts nothing short (a send made late).
        let own = client
            .exchange(
                Exchange {
                    callers_deadline: false,
                    ..exchange(Instant::now() + timeout / 4)
                },
                build,
            )
            .await;
        assert!(matches!(own, Err(RadiusError::Timeout)), "{own:?}");
    }

    /// A reply signed for the request an Identifier carried before the one waiting with it (a
    /// slow server's late answer, the Identifier gone round) is dropped as late, not kept as a
    /// reply that fails verification (which says "another shared secret" when the request
    /// times out); one signed for neither still is.
    #[tokio::test]
    async fn a_late_reply_to_an_identifiers_earlier_request_is_no_secret_mismatch() {
        use crate::radius::packet::{encode_response, Code, Packet};
        let client = RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap();
        let server: SocketAddr = "127.0.0.1:1812".parse().unwrap();
        let earlier = [5u8; 16];
        let reply_to = |authenticator: [u8; 16]| {
            let request = Packet::new(Code::AccessRequest, 9, authenticator, b"secret");
            encode_response(&request.reply(Code::AccessReject)).unwrap()
        };
        let unverified = |client: &RadiusClient| {
            client
                .lock()
                .waiters
                .get(&(0, server, 9))
                .and_then(|p| p.unverified_reply.clone())
        };
        let _rx = waiting(&client, server, false);
        client.lock().ended.insert(
            (0, server, 9),
            (
                Instant::now(),
                Expectation {
                    request_code: 1,
                    request_authenticator: earlier,
                    secret: Arc::from(&b"secret"[..]),
                    require_message_authenticator: false,
                    end_when_unreachable: false,
                },
            ),
        );
        handle_datagram(&client.shared, 0, server, &reply_to(earlier));
        assert_eq!(
            unverified(&client),
            None,
            "a late reply, not a wrong secret"
        );
        let other_secret = {
            let request = Packet::new(Code::AccessRequest, 9, AUTHENTICATOR, b"another");
            encode_response(&request.reply(Code::AccessReject)).unwrap()
        };
        handle_datagram(&client.shared, 0, server, &other_secret);
        assert!(unverified(&client).is_some(), "signed with another secret");
    }

    /// An ICMP error pending on the socket (about an earlier datagram to another port — or
    /// forged) does not fail the next send to a server that listens (the RADIUS review's M2).
    #[tokio::test]
    async fn a_pending_icmp_error_fails_no_later_send() {
        let socket = new_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = {
            let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            gone.local_addr().unwrap()
        };
        // Sent until a port unreachable has come back (one may be left out by the host's ICMP
        // rate limit under a busy test run): the socket has an error to report.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no ICMP error came back"
            );
            let _ = socket.send_to(b"anyone?", closed).await;
            if tokio::time::timeout(
                std::time::Duration::from_millis(100),
                socket.ready(Interest::ERROR),
            )
            .await
            .is_ok()
            {
                break;
            }
        }
        let live = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        send_once(&socket, b"request", live.local_addr().unwrap())
            .await
            .expect("sent, the pending error notwithstanding");
        let mut buffer = [0u8; 16];
        let (n, _) = live.recv_from(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"request");
    }

    #[tokio::test]
    async fn only_an_unreachable_quoting_the_request_ends_it_and_only_when_asked() {
        let client = RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap();
        let server: SocketAddr = "127.0.0.1:1813".parse().unwrap();
        let shared = &client.shared;

        // Not acted on: another authenticator (a forgery, or the Identifier's earlier request),
        // a quote too short to hold it, an error that is no destination unreachable.
        let mut rx = waiting(&client, server, true);
        handle_icmp(shared, 0, &port_unreachable(server, &header(9, [8; 16])));
        handle_icmp(
            shared,
            0,
            &port_unreachable(server, &header(9, AUTHENTICATOR)[..8]),
        );
        let mut time_exceeded = port_unreachable(server, &header(9, AUTHENTICATOR));
        time_exceeded.unreachable = false;
        handle_icmp(shared, 0, &time_exceeded);
        // Nor for another socket or server.
        handle_icmp(
            shared,
            1,
            &port_unreachable(server, &header(9, AUTHENTICATOR)),
        );
        let elsewhere: SocketAddr = "127.0.0.2:1813".parse().unwrap();
        handle_icmp(
            shared,
            0,
            &port_unreachable(elsewhere, &header(9, AUTHENTICATOR)),
        );
        assert!(rx.try_recv().is_err(), "still waiting");

        // The request's own header: it ends, with the error.
        handle_icmp(
            shared,
            0,
            &port_unreachable(server, &header(9, AUTHENTICATOR)),
        );
        let answer = rx.try_recv().expect("ended");
        let Err(Ended::Refused(refusal)) = answer else {
            panic!("a refusal, not {answer:?}");
        };
        assert_eq!(refusal.error.raw_os_error(), Some(nix::libc::ECONNREFUSED));
        assert!(refusal.by_destination);

        // A caller that keeps retransmitting (its one server may be restarting) is left waiting,
        // the refusal remembered for its error.
        let mut rx = waiting(&client, server, false);
        handle_icmp(
            shared,
            0,
            &port_unreachable(server, &header(9, AUTHENTICATOR)),
        );
        assert!(rx.try_recv().is_err(), "still waiting");
        assert_eq!(
            client.lock().waiters[&(0, server, 9)].refused,
            Some(nix::errno::Errno::ECONNREFUSED)
        );
        // Each of its transmissions' refusals by the destination is counted.
        handle_icmp(
            shared,
            0,
            &port_unreachable(server, &header(9, AUTHENTICATOR)),
        );
        assert_eq!(client.lock().waiters[&(0, server, 9)].refusals, 2);
    }
}
