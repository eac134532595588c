//! The client's IP address for a request, put into request extensions as [`ClientIp`]
//! (design.md §6): `Forwarded` / `X-Forwarded-For` are honoured only when the socket peer is a
//! configured trusted proxy, and then the right-most address that is not a trusted proxy is the
//! client. From anywhere else the headers are ignored, so a client cannot spoof its address.

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::Response,
};
use ipnet::IpNet;
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

/// The address RADIUS sessions are bound to (Calling-Station-Id, Framed-IP-Address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Networks whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

impl TrustedProxies {
    /// From configured networks.
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies(Arc::new(networks))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// One hop of a forwarding chain: an address, or something unusable ("unknown", obfuscated).
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Some(rest) = text.strip_prefix('[') {
        // "[2001:db8::1]" or "[2001:db8::1]:4711"
        return rest.split(']').next()?.parse().ok();
    }
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The forwarding chain, client first: `Forwarded` (RFC 7239) if present, else `X-Forwarded-For`.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| {
            element
                .split(';')
                .find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_hop(value))
                })
                .flatten()
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(parse_hop)
        .collect()
}

/// The client address of a request from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    for hop in forwarded_chain(headers).into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip.to_canonical();
                if !trusted.contains(client) {
                    return client;
                }
            }
            // An unusable hop: the last trusted proxy is the best we know.
            None => return client,
        }
    }
    client
}

/// Middleware: inserts [`ClientIp`] for the request.
pub async fn insert_client_ip(
    State(trusted): State<TrustedProxies>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    {
        let ip = client_ip(peer.ip(), request.headers(), &trusted);
        request.extensions_mut().insert(ClientIp(ip));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter()
                .map(|n| n.parse().expect("test network"))
                .collect(),
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(
            client_ip(ip("203.0.113.5"), &h, &trusted(&["127.0.0.1/32"])),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &TrustedProxies::default()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        // The client put a fake address first; the trusted proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        let t = trusted(&["127.0.0.0/8", "10.0.0.0/8"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &t), ip("198.51.100.7"));
    }

    #[test]
    fn repeated_headers_form_one_chain() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted(&["127.0.0.1/32"])),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn forwarded_header_is_preferred_and_parsed() {
        let h = headers(&[
            (
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https",
            ),
            ("x-forwarded-for", "5.5.5.5"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted(&["127.0.0.1/32"])),
            ip("2001:db8:cafe::17")
        );
    }

    #[test]
    fn an_unusable_hop_stops_at_the_last_trusted_address() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7, unknown")]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted(&["127.0.0.1/32"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ipv4_mapped_peers_are_unmapped() {
        assert_eq!(
            client_ip(
                ip("::ffff:192.0.2.1"),
                &HeaderMap::new(),
                &TrustedProxies::default()
            ),
            ip("192.0.2.1")
        );
    }
}
