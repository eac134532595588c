//! The connection loop (instead of `axum::serve`, which runs hyper without a timer): HTTP/1.1
//! only (HTTP/2 would bring its own unbounded states: streams per connection, no header
//! deadline), request headers must arrive within [`HEADER_DEADLINE`] — from the first byte of a
//! new connection and on an idle keep-alive one — so a silent client or one sending a byte at a
//! time (slowloris) cannot hold a connection; open connections are
//! capped in total and per client address (per `[rate_limit] ipv6_prefix` network for IPv6),
//! and excess connections are closed
//! at once. Long-lived responses (the session page's event stream) are unaffected: the deadline
//! covers request headers only. On shutdown the listener closes (a new connection is refused:
//! its client knows nothing was delivered and can go elsewhere), and for a moment the
//! open connections are still served ([`Ending`]), each answer with `Connection: close`: a keep-alive
//! client learns that its connection ends from an answer rather than by sending its next
//! request (a Disconnect, say) into a connection closed under it, never knowing whether it
//! arrived. Then connections finish their requests within the grace period.

use axum::{extract::ConnectInfo, serve::Listener};
use hyper::server::conn::http1::Builder;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Time a client has to send a request's headers.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// A request's head (request line and headers) at most, in bytes: beyond, 431. A browser's
/// is well under 8 KiB; 256 connections per client each holding hyper's default (~400 KiB)
/// would be 100 MiB per client.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Open connections at most (fewer with few file descriptors: [`connections_for`]).
pub const MAX_CONNECTIONS: usize = 16_384;
/// File descriptors kept for the portal's own work however many connections are open: the
/// database's connections and files (readers under load, sqlx's pools, PostgreSQL's sixteen),
/// the metrics listener's connections, a Disconnect-Request's answer, files read (TLS on
/// SIGHUP). Connections took them all under load with a low limit of open files, and sign-ins
/// RADIUS had accepted failed for want of a database connection (black-box tester Q's D2).
pub const RESERVED_DESCRIPTORS: u64 = 48;
/// Connections the metrics listener serves at once (a scrape or two).
pub const METRICS_CONNECTIONS: usize = 16;

/// Connections to serve at once with `spare` file descriptors free once started (None: not
/// known): all but [`RESERVED_DESCRIPTORS`], at least 16, at most [`MAX_CONNECTIONS`]. More
/// wait to be accepted until others close.
pub fn connections_for(spare: Option<u64>) -> usize {
    spare.map_or(MAX_CONNECTIONS, |spare| {
        usize::try_from(spare.saturating_sub(RESERVED_DESCRIPTORS))
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(16, MAX_CONNECTIONS)
    })
}
/// The client a peer's connections count against: its address (IPv6: its network of
/// `ipv6_prefix`, as for the sign-in limits — a fixed /64 let one host of a network whose hosts
/// share one lock every other out, the web review of session 83 —, but never wider than a
/// /64: a wider one would let one host take a whole site's share), none for a trusted proxy.
pub fn counted_as(
    trusted_proxies: Vec<ipnet::IpNet>,
    ipv6_prefix: u8,
) -> std::sync::Arc<dyn Fn(IpAddr) -> Option<IpAddr> + Send + Sync> {
    std::sync::Arc::new(move |ip| {
        (!trusted_proxies.iter().any(|net| net.contains(&ip)))
            .then(|| super::rate_limit::client_key(ip, ipv6_prefix.max(64)))
    })
}

/// Open connections at most per client address (IPv6: per network of `ipv6_prefix`). Behind a reverse proxy every
/// connection comes from the proxy, so trusted proxies are not limited.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// Open connections at most per client address with `max` in all: a quarter of a low total
/// (one client cannot take them all), at least 8 (a browser's six and a spare), at most
/// [`MAX_CONNECTIONS_PER_CLIENT`].
pub fn per_client_for(max: usize) -> usize {
    (max / 4).clamp(8, MAX_CONNECTIONS_PER_CLIENT)
}
/// How [`serve`] ends once told to.
#[derive(Clone, Copy, Debug)]
pub struct Ending {
    /// How long open connections are still served at most (each answer closing its
    /// connection) before idle ones are closed: over as soon as none is open, or no request has
    /// come for `quiet` (the clients still sending have all been answered and told; idle
    /// keep-alive connections — a browser's, a pool's — would wait in vain).
    pub drain: Duration,
    /// See `drain`.
    pub quiet: Duration,
    /// How long the drain and then the requests under way have to finish, in all.
    pub grace: Duration,
}

impl Ending {
    /// The portal's pages: 2 s of draining at most, over after 100 ms without a request.
    pub const fn pages(grace: Duration) -> Self {
        Ending {
            drain: Duration::from_secs(2),
            quiet: Duration::from_millis(100),
            grace,
        }
    }

    /// No draining (the metrics: each scrape is a request of its own).
    pub const fn at_once(grace: Duration) -> Self {
        Ending {
            drain: Duration::ZERO,
            quiet: Duration::ZERO,
            grace,
        }
    }
}

/// Counts what is open (connections; the live streams, per access session) in all and per
/// key (a client address; a session); a guard gives its slot back when dropped.
#[derive(Clone)]
pub(crate) struct Slots<K: Copy + Eq + std::hash::Hash = IpAddr> {
    open: Arc<Mutex<(usize, HashMap<K, usize>)>>,
    /// Open at most.
    max: usize,
    /// Open at most under one key.
    per_key: usize,
}

pub(crate) struct Slot<K: Copy + Eq + std::hash::Hash = IpAddr> {
    slots: Slots<K>,
    key: Option<K>,
}

impl Slots<IpAddr> {
    /// Connections: `max` in all, [`per_client_for`] from one client.
    fn new(max: usize) -> Slots {
        Slots::limited(max, per_client_for(max))
    }
}

impl<K: Copy + Eq + std::hash::Hash> Slots<K> {
    /// `max` in all, `per_key` under one key.
    pub(crate) fn limited(max: usize, per_key: usize) -> Slots<K> {
        Slots {
            open: Arc::default(),
            max,
            per_key,
        }
    }

    /// Open now.
    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// A slot under `key` (None: counted in all only), if one is free.
    pub(crate) fn take(&self, key: Option<K>) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max {
            return None;
        }
        if let Some(key) = key {
            let count = open.1.entry(key).or_insert(0);
            if *count >= self.per_key {
                return None;
            }
            *count += 1;
        }
        open.0 += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }
}

impl<K: Copy + Eq + std::hash::Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(key) = self.key {
            if let Some(count) = open.1.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.1.remove(&key);
                }
            }
        }
    }
}

/// Serves `router` (the portal's [`super::Site`], or a plain router) on `listener` until
/// `shutdown`; then stops accepting, runs `on_shutdown` (ends long-lived streams), serves the
/// open connections a moment more (each answer with `Connection: close`), and waits for open
/// requests ([`Ending`]). At most `max_connections` are open at once ([`connections_for`]), and
/// a share of them per client: `counted_as` names the client a peer counts as (an IPv6
/// network of the configured prefix), or none (a trusted proxy: not limited per client).
pub async fn serve<L, S>(
    mut listener: L,
    router: S,
    counted_as: impl Fn(IpAddr) -> Option<IpAddr> + Send + 'static,
    shutdown: CancellationToken,
    on_shutdown: impl FnOnce(),
    ending: Ending,
    max_connections: usize,
) where
    L: Listener<Addr = SocketAddr>,
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Slots::new(max_connections);
    // When the latest request arrived once shutdown began (ms after `began`).
    let began = tokio::time::Instant::now();
    let latest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (io, peer) = tokio::select! {
            // Told to stop, no connection is accepted after that however many wait.
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let ip = peer.ip().to_canonical();
        let limited = counted_as(ip);
        let Some(slot) = slots.take(limited) else {
            crate::throttled!(warn, %peer, max_connections, "connection closed at once: too many open connections (in all, or from this client); a low limit of open files lowers the cap — the start-up warning says how many");
            drop(io);
            continue;
        };
        let (closing, arrived) = (shutdown.clone(), latest.clone());
        let closed = shutdown.clone();
        let service = router
            .clone()
            .map_request(
                move |request: axum::extract::Request<hyper::body::Incoming>| {
                    if closing.is_cancelled() {
                        let at = began.elapsed().as_millis() as u64;
                        arrived.fetch_max(at, std::sync::atomic::Ordering::Relaxed);
                    }
                    let mut request = request.map(axum::body::Body::new);
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                },
            )
            .map_response(move |mut response: axum::response::Response| {
                // Shutting down: this answer ends its connection (hyper closes it once sent).
                if closed.is_cancelled() {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            });
        let connection =
            builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    on_shutdown();
    // Open connections are served a while longer, each answer closing its own: a client
    // active on one hears that it ends. Idle ones left after that are closed below.
    let stopped = began.elapsed();
    let drained_by = tokio::time::Instant::now() + ending.drain.min(ending.grace);
    loop {
        let now = tokio::time::Instant::now();
        let latest = Duration::from_millis(latest.load(std::sync::atomic::Ordering::Relaxed));
        let quiet_since = began + latest.max(stopped);
        if slots.open() == 0 || now >= drained_by || now >= quiet_since + ending.quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The drain came out of the grace period: the whole takes `grace` at most.
    let left = ending
        .grace
        .saturating_sub(began.elapsed().saturating_sub(stopped));
    if tokio::time::timeout(left, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {:?}: closed", ending.grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends a GET on `stream` and reads its answer (a body of "ok", no chunks).
    async fn get(stream: &mut tokio::net::TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: portal\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"ok") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer: {answer:?}");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).unwrap().to_ascii_lowercase()
    }

    /// With few file descriptors, connections leave the portal's own work its reserve (a low
    /// limit of open files, black-box tester Q's D2); one beyond the cap waits for a slot.
    #[test]
    fn connections_leave_the_portals_own_work_its_descriptors() {
        assert_eq!(connections_for(None), MAX_CONNECTIONS);
        assert_eq!(connections_for(Some(1_000_000)), MAX_CONNECTIONS);
        assert_eq!(
            connections_for(Some(300)),
            300 - RESERVED_DESCRIPTORS as usize
        );
        assert_eq!(connections_for(Some(64)), 16, "at least a few");
        let slots = Slots::new(2);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let first = slots.take(Some(client)).expect("a slot");
        let _second = slots.take(None).expect("a slot");
        assert!(slots.take(Some(client)).is_none(), "beyond the cap");
        drop(first);
        assert!(slots.take(None).is_some(), "freed");
    }

    /// One client cannot take every connection a low total allows (a quarter of it, at least
    /// a browser's six and a spare); with many, the usual cap per client.
    #[test]
    fn one_client_takes_a_share_of_a_low_total() {
        assert_eq!(per_client_for(16), 8);
        assert_eq!(per_client_for(252), 63);
        assert_eq!(per_client_for(MAX_CONNECTIONS), MAX_CONNECTIONS_PER_CLIENT);
        let slots = Slots::new(252);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..63)
            .map(|_| slots.take(Some(client)).expect("a slot"))
            .collect();
        assert!(slots.take(Some(client)).is_none(), "its share is taken");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(
            slots.take(Some(other)).is_some(),
            "another client is served"
        );
        drop(held);
    }

    /// An IPv6 client's connections count per network of the configured prefix: with 128, two
    /// hosts of one /64 (a network whose hosts share one) hold a share each — with a fixed /64
    /// one host's connections locked the other out; a trusted proxy is not counted.
    #[test]
    fn ipv6_hosts_count_per_the_configured_network() {
        let (a, b): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        let proxy: IpAddr = "192.0.2.9".parse().unwrap();
        let proxies = vec!["192.0.2.9/32".parse().unwrap()];
        let per_network = counted_as(proxies.clone(), 64);
        assert_eq!(per_network(a), per_network(b), "one /64: one client");
        let per_host = counted_as(proxies.clone(), 128);
        let wider: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_ne!(
            counted_as(proxies, 48)(a),
            counted_as(vec![], 48)(wider),
            "never wider than a /64"
        );
        assert_ne!(per_host(a), per_host(b), "per address");
        assert_eq!(per_host(proxy), None, "a proxy is not limited per client");
        let slots = Slots::limited(2, 1);
        let _first = slots.take(per_host(a)).expect("a slot");
        assert!(
            slots.take(per_host(b)).is_some(),
            "the other host is served"
        );
        let slots = Slots::limited(2, 1);
        let _first = slots.take(per_network(a)).expect("a slot");
        assert!(slots.take(per_network(b)).is_none(), "one network's share");
    }

    /// Shutting down, a keep-alive connection still open is served its next request, answered
    /// with `Connection: close` — its client learns from the answer that the connection ends,
    /// instead of sending a request into a connection closed under it — while new connections
    /// are refused; once no connection is open the server is done.
    #[tokio::test]
    async fn shutting_down_an_open_connection_is_answered_and_told_it_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        // Drained for as long as it takes (a slow machine decides nothing here).
        let ending = Ending {
            drain: Duration::from_secs(60),
            quiet: Duration::from_secs(60),
            grace: Duration::from_secs(60),
        };
        let server = tokio::spawn(serve(
            listener,
            router,
            Some,
            shutdown.clone(),
            || {},
            ending,
            MAX_CONNECTIONS,
        ));
        let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
        let before = get(&mut open).await;
        assert!(!before.contains("connection: close"), "{before}");

        shutdown.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = get(&mut open).await;
        assert!(after.starts_with("http/1.1 200"), "{after}");
        assert!(after.contains("connection: close"), "{after}");
        let mut rest = Vec::new();
        open.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the answer: {rest:?}");
        // No connection left: done well before the drain's 60 s.
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("done once no connection is open")
            .unwrap();
    }
}
