//! The connection loop (instead of `axum::serve`, which runs hyper without a timer): HTTP/1.1
//! only (HTTP/2 would bring its own unbounded states: streams per connection, no header
//! deadline), request headers must arrive within [`HEADER_DEADLINE`] — from the first byte of a
//! new connection and on an idle keep-alive one — so a silent client or one sending a byte at a
//! time (slowloris) cannot hold a connection; open connections are
//! capped in total and per client address (per /64 for IPv6), and excess connections are closed
//! at once. Long-lived responses (the session page's event stream) are unaffected: the deadline
//! covers request headers only. On shutdown, connections finish their requests within the grace
//! period.

use super::rate_limit::client_key;
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
/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Open connections at most per client address (IPv6: per /64). Behind a reverse proxy every
/// connection comes from the proxy, so trusted proxies are not limited.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// Counts open connections per client; a guard gives its slot back when dropped.
#[derive(Clone, Default)]
struct Slots {
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

struct Slot {
    slots: Slots,
    client: Option<IpAddr>,
}

impl Slots {
    /// A slot for a connection from `client` (None: not limited per client), if one is free.
    fn take(&self, client: Option<IpAddr>) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= MAX_CONNECTIONS {
            return None;
        }
        if let Some(client) = client {
            let count = open.1.entry(client).or_insert(0);
            if *count >= MAX_CONNECTIONS_PER_CLIENT {
                return None;
            }
            *count += 1;
        }
        open.0 += 1;
        Some(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(client) = self.client {
            if let Some(count) = open.1.get_mut(&client) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.1.remove(&client);
                }
            }
        }
    }
}

/// Serves `router` (the portal's [`super::Site`], or a plain router) on `listener` until
/// `shutdown`; then stops accepting, runs `on_shutdown` (ends long-lived streams) and waits up
/// to `grace` for open requests.
pub async fn serve<L, S>(
    mut listener: L,
    router: S,
    unlimited: impl Fn(IpAddr) -> bool + Send + 'static,
    shutdown: CancellationToken,
    on_shutdown: impl FnOnce(),
    grace: Duration,
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
    let slots = Slots::default();
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let ip = peer.ip().to_canonical();
        let limited = (!unlimited(ip)).then(|| client_key(ip, 64));
        let Some(slot) = slots.take(limited) else {
            tracing::debug!(%peer, "connection refused: too many open connections");
            drop(io);
            continue;
        };
        let service = router.clone().map_request(
            move |request: axum::extract::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        );
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
    on_shutdown();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}: closed");
    }
}
