//! The client's IP address for a request, put into request extensions as [`ClientIp`]
//! (design.md §6). It becomes the RADIUS Calling-Station-Id / Framed-IP-Address — someone's
//! firewall identity — so it is never taken from what a client says:
//!
//! - From a peer that is not a configured trusted proxy, the socket peer is the client and
//!   every forwarding header is ignored.
//! - From a trusted proxy, only the one header the operator named (`forwarded_header`:
//!   X-Forwarded-For by default, or RFC 7239 `Forwarded`, or `X-Real-IP`) is read; the others
//!   are ignored, because proxies pass a client's own headers through. Walking the chain from
//!   the right, the first address that is not a trusted proxy is the client.
//! - Forwarding data from a trusted proxy that cannot be understood where it matters (not
//!   ASCII, not an address, an obfuscated or `unknown` node, several X-Real-IP lines) is a 400:
//!   never a fallback to the proxy's own address, which would make every user one client.
//!   What a client prepended to the left of the hop that names it is never parsed.
//! - A trusted proxy's request without the header has no client address: the proxy's own
//!   requests (health checks) work, but nothing that binds a session to an address does
//!   (login answers 400 "AddressUnknown") — taking the proxy's address would make every user
//!   behind a misconfigured proxy one client, each login ending the previous user's session.

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

/// The address RADIUS sessions are bound to (Calling-Station-Id, Framed-IP-Address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Which header the trusted proxies write (`[http] forwarded_header`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, HAProxy, Caddy, most ingresses).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=…`.
    Forwarded,
    /// `X-Real-IP: client` (one address, set by the proxy).
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
            ForwardedHeader::XRealIp => "x-real-ip",
        }
    }
}

/// Networks whose forwarding header is believed, and which header that is.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    networks: Arc<Vec<IpNet>>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// From configured networks and header.
    pub fn new(networks: Vec<IpNet>, header: ForwardedHeader) -> Self {
        TrustedProxies {
            networks: Arc::new(networks),
            header,
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// Why a trusted proxy's forwarding data was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{header} from the proxy: {problem}")]
pub struct ForwardingError {
    /// The header.
    pub header: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// One node of a forwarding chain (RFC 7239 §6): an address, with or without a port.
/// `Err` names what it is instead (`unknown`, an obfuscated identifier, garbage, an address
/// no client has: unspecified, broadcast, multicast — it would be the session's identity in
/// RADIUS and on the firewall).
/// `rfc7239`: the node is from `Forwarded`, where IPv6 must be bracketed.
fn parse_node(text: &str, rfc7239: bool) -> Result<IpAddr, String> {
    // As the caller will use it: an IPv4-mapped IPv6 address is its IPv4 address.
    let ip = parse_address(text, rfc7239)?.to_canonical();
    let no_client = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast() || v4.octets()[0] == 0);
    if no_client {
        return Err(format!("`{ip}` is no client's address"));
    }
    Ok(ip)
}

/// [`parse_node`]'s reading of the text.
fn parse_address(text: &str, rfc7239: bool) -> Result<IpAddr, String> {
    let node = text.trim();
    let unquoted = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    // What the errors show of it (one log line, one answer: never a header's worth).
    let shown = crate::shortened(unquoted);
    if unquoted.eq_ignore_ascii_case("unknown") {
        return Err("the client is `unknown`".into());
    }
    if unquoted.starts_with('_') {
        return Err(format!("the client is hidden (`{shown}`)"));
    }
    if let Some(rest) = unquoted.strip_prefix('[') {
        // "[2001:db8::1]" or "[2001:db8::1]:4711"
        let (address, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{shown}` is not an address"))?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok() || p.starts_with('_'));
        return match (address.parse::<IpAddr>(), port_ok) {
            (Ok(ip @ IpAddr::V6(_)), true) => Ok(ip),
            _ => Err(format!("`{shown}` is not an address")),
        };
    }
    if let Ok(ip) = unquoted.parse::<IpAddr>() {
        if ip.is_ipv6() && rfc7239 {
            return Err(format!(
                "`{shown}`: an IPv6 node must be in brackets and quoted"
            ));
        }
        return Ok(ip);
    }
    if let Ok(socket) = unquoted.parse::<SocketAddr>() {
        return Ok(socket.ip());
    }
    // "192.0.2.1:_port" (an obfuscated port)
    if let Some((v4, port)) = unquoted.split_once(':') {
        if let (Ok(v4), true) = (v4.parse::<Ipv4Addr>(), port.starts_with('_')) {
            return Ok(IpAddr::V4(v4));
        }
    }
    Err(format!("`{shown}` is not an address"))
}

/// Splits on `separator` outside double-quoted strings (RFC 7230 quoted-string, with `\`
/// escapes). `None` for an unterminated quote or escape: a client's `for=1.2.3.4;x="` would
/// otherwise swallow the hop a proxy appends to the same line.
fn split_unquoted(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted || escaped {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// The `for=` node of one `Forwarded` element (`for=…;proto=…;by=…`).
fn forwarded_for(element: &str) -> Result<&str, String> {
    let mut found = None;
    let pairs =
        split_unquoted(element, ';').ok_or_else(|| "an unterminated quoted string".to_string())?;
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            if pair.trim().is_empty() {
                continue;
            }
            return Err(format!(
                "`{}` is not a key=value pair",
                crate::shortened(pair.trim())
            ));
        };
        if key.trim().eq_ignore_ascii_case("for") {
            if found.is_some() {
                return Err("an element names `for` twice".into());
            }
            found = Some(value);
        }
    }
    found.ok_or_else(|| {
        format!(
            "the element `{}` has no `for=`",
            crate::shortened(element.trim())
        )
    })
}

/// The hops the configured header lists, client first (the raw text of each; parsed lazily,
/// right to left, so the part a client wrote itself is never looked at).
fn hops(headers: &HeaderMap, header: ForwardedHeader) -> Result<Vec<&str>, ForwardingError> {
    let refuse = |problem: String| ForwardingError {
        header: header.name(),
        problem,
    };
    let mut lines = Vec::new();
    for value in headers.get_all(header.name()) {
        lines.push(value.to_str().map_err(|_| {
            refuse("not visible ASCII (the proxy must pass addresses only)".into())
        })?);
    }
    if header == ForwardedHeader::XRealIp {
        if lines.len() > 1 {
            return Err(refuse("sent more than once".into()));
        }
        if lines.iter().any(|line| line.contains(',')) {
            return Err(refuse("a list, not one address".into()));
        }
    }
    let mut hops = Vec::new();
    for line in lines {
        match header {
            ForwardedHeader::Forwarded => hops.extend(
                split_unquoted(line, ',')
                    .ok_or_else(|| refuse("an unterminated quoted string".into()))?,
            ),
            _ => hops.extend(line.split(',')),
        }
    }
    Ok(hops)
}

/// The client address of a request from `peer` with `headers`; `None` for a trusted proxy's
/// request that names no client (the configured header is absent).
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Result<Option<IpAddr>, ForwardingError> {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Ok(Some(peer));
    }
    let header = trusted.header;
    let refuse = |problem: String| ForwardingError {
        header: header.name(),
        problem,
    };
    let hops = hops(headers, header)?;
    if hops.is_empty() {
        return Ok(None);
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let node = match header {
            ForwardedHeader::Forwarded => forwarded_for(hop).map_err(refuse)?,
            _ => hop,
        };
        client = parse_node(node, header == ForwardedHeader::Forwarded)
            .map_err(refuse)?
            .to_canonical();
        if !trusted.contains(client) {
            return Ok(Some(client));
        }
    }
    // Every hop is a trusted proxy: the left-most known address.
    Ok(Some(client))
}

/// Whether a request from `peer` carries the configured forwarding header though `peer` is not
/// a trusted proxy (the header is ignored: the peer is the client), where some proxy is trusted
/// (a portal exposed directly, trusting none, hears the header from clients and their forward
/// proxies: nothing to say).
fn ignored_forwarding(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> bool {
    !trusted.networks.is_empty()
        && !trusted.contains(peer.to_canonical())
        && headers.contains_key(trusted.header.name())
}

/// Whether a request to `path` may need its client's address (a sign-in, a session): not the
/// admin API, the health probes, or assets.
fn uses_client_address(path: &str) -> bool {
    !(path.starts_with("/admin/")
        || path.starts_with("/pkg/")
        || matches!(path, "/healthz" | "/readyz" | "/favicon.svg"))
}

/// Inserts [`ClientIp`] into the request (none for a trusted proxy's request without the
/// header). Some: the 400 to answer instead, for forwarding data a trusted proxy sent that
/// cannot be understood.
pub fn insert_client_ip(trusted: &TrustedProxies, request: &mut Request) -> Option<Response> {
    let ConnectInfo(peer) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()?;
    match client_ip(peer.ip(), request.headers(), trusted) {
        Ok(Some(ip)) => {
            if ignored_forwarding(peer.ip(), request.headers(), trusted)
                && uses_client_address(request.uri().path())
            {
                // A proxy whose address left `trusted_proxies` (an edit, a new address): every
                // user has the proxy's address then, and each sign-in replaces the last one's
                // session. Anyone can send the header: the line advises checking, not trusting.
                crate::throttled!(info, peer = %peer.ip(), header = trusted.header.name(),
                    "a request carries the forwarding header from a peer that is not a trusted proxy: the header is ignored and the peer is the client (if your own reverse proxy sends from that address, check [http] trusted_proxies; never trust a client's or its forward proxy's)");
            }
            request.extensions_mut().insert(ClientIp(ip));
        }
        // Requests that never use the client's address (the admin API, probes, assets) say
        // nothing of the proxy: only the users' pages and API need it.
        Ok(None) if !uses_client_address(request.uri().path()) => {}
        Ok(None) => {
            // Its sign-ins answer 400 AddressUnknown: a proxy that does not pass the address.
            crate::throttled!(warn, peer = %peer.ip(), header = trusted.header.name(),
                "a trusted proxy's request names no client: sign-ins from it are refused (AddressUnknown) until the proxy passes the client's address");
        }
        Err(e) => {
            crate::throttled!(warn, peer = %peer.ip(), error = %e, "request refused: unusable forwarding header from a trusted proxy");
            return Some(super::caller_error(
                &super::Caller::of(request),
                StatusCode::BAD_REQUEST,
                "BadForwarding",
                &format!("Bad request: {e}. The proxy in front of the portal must pass the client's address."),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn trusted_with(header: ForwardedHeader, nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter()
                .map(|n| n.parse().expect("test network"))
                .collect(),
            header,
        )
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        trusted_with(ForwardedHeader::XForwardedFor, nets)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_forwarding_header_from_an_untrusted_peer_is_said_to_be_ignored() {
        // The proxy's address left `trusted_proxies` (black-box tester S's D11): noticed.
        let proxies = trusted(&["10.0.0.0/8"]);
        let forwarded = headers(&[("x-forwarded-for", "192.0.2.7")]);
        assert!(ignored_forwarding(ip("203.0.113.9"), &forwarded, &proxies));
        assert_eq!(
            client_ip(ip("203.0.113.9"), &forwarded, &proxies).unwrap(),
            Some(ip("203.0.113.9"))
        );
        // From a trusted proxy it is used; without the header there is nothing to say; another
        // header than the configured one is not the proxy's.
        assert!(!ignored_forwarding(ip("10.1.2.3"), &forwarded, &proxies));
        assert!(!ignored_forwarding(
            ip("203.0.113.9"),
            &headers(&[]),
            &proxies
        ));
        let real_ip = trusted_with(ForwardedHeader::XRealIp, &["10.0.0.0/8"]);
        assert!(!ignored_forwarding(ip("203.0.113.9"), &forwarded, &real_ip));
        // A portal trusting no proxy (exposed directly) hears it from clients: nothing said.
        assert!(!ignored_forwarding(
            ip("203.0.113.9"),
            &forwarded,
            &trusted(&[])
        ));
        // An IPv4 peer seen as IPv6-mapped is the same peer.
        assert!(!ignored_forwarding(
            ip("::ffff:10.1.2.3"),
            &forwarded,
            &proxies
        ));
    }

    #[test]
    fn only_the_users_pages_and_api_need_the_clients_address() {
        for path in [
            "/",
            "/api/login",
            "/session",
            "/o/acme/",
            "/captive-portal/api",
        ] {
            assert!(uses_client_address(path), "{path}");
        }
        for path in [
            "/admin/api/v1/organizations",
            "/healthz",
            "/readyz",
            "/pkg/app.wasm",
        ] {
            assert!(!uses_client_address(path), "{path}");
        }
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "10.9.9.9"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        assert_eq!(
            client_ip(ip("203.0.113.5"), &h, &trusted(&["127.0.0.1/32"])),
            Ok(Some(ip("203.0.113.5")))
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &TrustedProxies::default()),
            Ok(Some(ip("127.0.0.1")))
        );
        // Even garbage: it is not read.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe").expect("opaque bytes"),
        );
        assert_eq!(
            client_ip(ip("203.0.113.5"), &h, &trusted(&["127.0.0.1/32"])),
            Ok(Some(ip("203.0.113.5")))
        );
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        // The client put a fake address (and junk) first; the trusted proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "junk, 6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        let t = trusted(&["127.0.0.0/8", "10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &t),
            Ok(Some(ip("198.51.100.7")))
        );
    }

    #[test]
    fn only_the_named_header_is_read() {
        // nginx appends to X-Forwarded-For and passes the client's own Forwarded through.
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "7.7.7.7"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let xff = trusted(&["127.0.0.1/32"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &xff),
            Ok(Some(ip("198.51.100.7")))
        );
        let fwd = trusted_with(ForwardedHeader::Forwarded, &["127.0.0.1/32"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &fwd),
            Ok(Some(ip("6.6.6.6")))
        );
        let real = trusted_with(ForwardedHeader::XRealIp, &["127.0.0.1/32"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &real),
            Ok(Some(ip("7.7.7.7")))
        );
    }

    #[test]
    fn repeated_headers_form_one_chain() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted(&["127.0.0.1/32"])),
            Ok(Some(ip("198.51.100.7")))
        );
    }

    #[test]
    fn forwarded_is_parsed_per_rfc_7239() {
        let t = trusted_with(ForwardedHeader::Forwarded, &["127.0.0.1/32", "10.0.0.0/8"]);
        for (value, client) in [
            (
                "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https",
                "2001:db8:cafe::17",
            ),
            ("For=\"192.0.2.60:_hidden\";by=10.0.0.1", "192.0.2.60"),
            ("proto=https;for=192.0.2.43, for=10.0.0.3", "192.0.2.43"),
            ("for=\"[2001:db8::1]\"", "2001:db8::1"),
            ("for=\"_client\", for=192.0.2.9", "192.0.2.9"),
            ("for=\"a,b\";x=1, for=192.0.2.10", "192.0.2.10"),
        ] {
            let mut h = HeaderMap::new();
            h.insert("forwarded", HeaderValue::from_static(value));
            assert_eq!(
                client_ip(ip("127.0.0.1"), &h, &t),
                Ok(Some(ip(client))),
                "{value}"
            );
        }
    }

    #[test]
    fn unusable_data_from_a_trusted_proxy_is_refused_not_replaced_by_its_address() {
        let fwd = trusted_with(ForwardedHeader::Forwarded, &["127.0.0.1/32"]);
        for value in [
            "for=unknown",
            "for=_hidden",
            "for=2001:db8::1",
            "proto=https",
            "for=1.2.3.4;for=5.6.7.8",
            "for=\"[2001:db8::1\"",
            "for=300.1.1.1",
            // A client's unterminated quote swallowing the hop the proxy appended.
            "for=6.6.6.6;x=\", for=198.51.100.7",
            "for=\"[2001:db8::1]\\",
        ] {
            let mut h = HeaderMap::new();
            h.insert("forwarded", HeaderValue::from_static(value));
            assert!(client_ip(ip("127.0.0.1"), &h, &fwd).is_err(), "{value}");
        }
        let xff = trusted(&["127.0.0.1/32"]);
        for value in [
            "198.51.100.7, unknown",
            "",
            "198.51.100.7,",
            "not-an-ip",
            // No client has these addresses (RADIUS and the firewall would get them).
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "224.0.0.1",
            "ff02::1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::ffff:224.0.0.1",
            "0.1.2.3",
        ] {
            let h = headers(&[("x-forwarded-for", value)]);
            assert!(client_ip(ip("127.0.0.1"), &h, &xff).is_err(), "{value:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes("198.51.100.7, \u{e9}".as_bytes()).expect("bytes"),
        );
        let e = client_ip(ip("127.0.0.1"), &h, &xff).expect_err("non-ASCII");
        assert!(e.to_string().contains("x-forwarded-for"), "{e}");
        let real = trusted_with(ForwardedHeader::XRealIp, &["127.0.0.1/32"]);
        let h = headers(&[("x-real-ip", "192.0.2.1"), ("x-real-ip", "192.0.2.2")]);
        assert!(client_ip(ip("127.0.0.1"), &h, &real).is_err());
    }

    #[test]
    fn ports_and_mapped_addresses_are_understood() {
        let t = trusted(&["127.0.0.1/32"]);
        for (value, client) in [
            ("192.0.2.1:51234", "192.0.2.1"),
            ("[2001:db8::5]:443", "2001:db8::5"),
            ("2001:db8::6", "2001:db8::6"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
        ] {
            let h = headers(&[("x-forwarded-for", value)]);
            assert_eq!(
                client_ip(ip("127.0.0.1"), &h, &t),
                Ok(Some(ip(client))),
                "{value}"
            );
        }
        assert_eq!(
            client_ip(
                ip("::ffff:192.0.2.1"),
                &HeaderMap::new(),
                &TrustedProxies::default()
            ),
            Ok(Some(ip("192.0.2.1")))
        );
    }

    #[test]
    fn a_trusted_proxy_without_the_header_names_no_client() {
        for kind in [
            ForwardedHeader::XForwardedFor,
            ForwardedHeader::Forwarded,
            ForwardedHeader::XRealIp,
        ] {
            let t = trusted_with(kind, &["127.0.0.1/32"]);
            assert_eq!(client_ip(ip("127.0.0.1"), &HeaderMap::new(), &t), Ok(None));
            // Another header than the configured one does not count.
            let h = headers(&[("x-client-ip", "192.0.2.1")]);
            assert_eq!(client_ip(ip("127.0.0.1"), &h, &t), Ok(None));
        }
        // Every hop a trusted proxy: the left-most.
        let h = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]);
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &h,
                &trusted(&["127.0.0.1/32", "10.0.0.0/8"])
            ),
            Ok(Some(ip("10.0.0.5")))
        );
    }

    #[test]
    fn a_refusal_shows_only_the_start_of_what_the_proxy_sent() {
        let garbage = "x".repeat(60_000);
        for (kind, value) in [
            (ForwardedHeader::XForwardedFor, garbage.clone()),
            (ForwardedHeader::Forwarded, garbage.clone()),
            (ForwardedHeader::Forwarded, format!("for=1.2.3.4;{garbage}")),
            (ForwardedHeader::Forwarded, format!("by={garbage}")),
        ] {
            let t = trusted_with(kind, &["127.0.0.1/32"]);
            let mut h = HeaderMap::new();
            h.insert(kind.name(), HeaderValue::from_str(&value).unwrap());
            let error = client_ip(ip("127.0.0.1"), &h, &t).unwrap_err().to_string();
            assert!(error.len() < 200, "{kind:?}: {} bytes", error.len());
            assert!(error.contains("xxx…"), "{error}");
        }
    }

    #[test]
    fn x_real_ip_is_one_address() {
        let real = trusted_with(ForwardedHeader::XRealIp, &["127.0.0.1/32"]);
        for value in ["192.0.2.1, 192.0.2.2", "192.0.2.1,"] {
            let h = headers(&[("x-real-ip", value)]);
            assert!(client_ip(ip("127.0.0.1"), &h, &real).is_err(), "{value}");
        }
    }
}

/// Property tests (run longer with `PROPTEST_CASES=…`, see docs/BENCHMARKS.md): whatever a
/// proxy or client writes, parsing returns, and never invents an address.
#[cfg(test)]
mod fuzz {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    /// Header text built from the pieces forwarding headers are made of, plus any bytes.
    fn header_text() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"for=".to_vec()),
            Just(b",".to_vec()),
            Just(b";".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"[".to_vec()),
            Just(b"]".to_vec()),
            Just(b":".to_vec()),
            Just(b" ".to_vec()),
            Just(b"_hidden".to_vec()),
            Just(b"unknown".to_vec()),
            Just(b"proto=https".to_vec()),
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string().into_bytes()),
            any::<[u8; 16]>().prop_map(|o| std::net::Ipv6Addr::from(o).to_string().into_bytes()),
            any::<u16>().prop_map(|p| p.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..4),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    fn header_kind() -> impl Strategy<Value = ForwardedHeader> {
        prop_oneof![
            Just(ForwardedHeader::XForwardedFor),
            Just(ForwardedHeader::Forwarded),
            Just(ForwardedHeader::XRealIp),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2000)))]

        #[test]
        fn forwarding_headers_never_panic_or_invent_addresses(
            values in proptest::collection::vec(header_text(), 0..3),
            kind in header_kind(),
            peer_trusted in any::<bool>(),
        ) {
            let mut headers = HeaderMap::new();
            let mut texts = Vec::new();
            for value in &values {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    texts.push(String::from_utf8_lossy(value.as_bytes()).to_string());
                    headers.append(kind.name(), value);
                }
            }
            let trusted = TrustedProxies::new(vec!["127.0.0.0/8".parse().expect("net")], kind);
            let peer: IpAddr = if peer_trusted { "127.0.0.1" } else { "203.0.113.9" }.parse().expect("ip");
            match client_ip(peer, &headers, &trusted) {
                Ok(None) => prop_assert!(peer_trusted, "an untrusted peer has no address"),
                Ok(Some(ip)) if ip == peer => {}
                Ok(Some(ip)) => {
                    prop_assert!(peer_trusted, "an untrusted peer's headers were read");
                    // The address is in what the proxy wrote (in some spelling).
                    let all = texts.join(",").to_ascii_lowercase();
                    let v4_mapped = match ip { IpAddr::V4(v4) => Some(v4.to_ipv6_mapped().to_string()), _ => None };
                    prop_assert!(
                        all.contains(&ip.to_string()) || v4_mapped.is_some_and(|m| all.contains(&m)) || all.contains(':'),
                        "{ip} not in {all}"
                    );
                }
                Err(e) => prop_assert!(peer_trusted && !texts.is_empty(), "{e}"),
            }
        }
    }
}
