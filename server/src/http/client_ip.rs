//! The client's IP address for a request, put into request extensions as [`ClientIp`].
//!
//! For now the socket peer is the client (IPv4-mapped IPv6 addresses are unmapped). Honouring
//! X-Forwarded-For / Forwarded from trusted proxy CIDRs (design.md §6) belongs here too.

use axum::{extract::ConnectInfo, extract::Request, middleware::Next, response::Response};
use std::net::{IpAddr, SocketAddr};

/// The address RADIUS sessions are bound to (Calling-Station-Id, Framed-IP-Address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Middleware: inserts [`ClientIp`] from the connection's peer address.
pub async fn insert_client_ip(mut request: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    {
        request
            .extensions_mut()
            .insert(ClientIp(peer.ip().to_canonical()));
    }
    next.run(request).await
}
