//! Web security that applies to every response or request: static security headers (the CSP
//! with its per-request nonce is set by the page shell) and refusal of cross-site
//! state-changing requests (Origin / Sec-Fetch-Site), on top of the SameSite=Strict cookie.
//!
//! The per-session form token (the other half of CSRF protection) is checked by
//! `portal_backend`, which owns the web session.

use crate::config::PublicUrl;
use axum::{
    extract::Request,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::Response,
};

/// What the security checks need: the public URL (Origin checks), and whether users
/// reach the portal over HTTPS (HSTS).
#[derive(Clone, Debug, Default)]
pub struct SiteSecurity {
    /// `[http] public_url` (shared: the state is cloned for every request).
    pub public_url: Option<std::sync::Arc<PublicUrl>>,
    /// Send `Strict-Transport-Security`.
    pub hsts: bool,
}

/// Adds X-Frame-Options, X-Content-Type-Options, Referrer-Policy, HSTS under HTTPS, and
/// `no-store` to a response that did not set its own caching (HTML, server fns).
pub fn add_security_headers(site: &SiteSecurity, headers: &mut HeaderMap) {
    if site.hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// True when a state-changing request comes from another site: `Sec-Fetch-Site` says so, or
/// `Origin` is not the public URL's origin (without one: its host is not the `Host` header).
pub fn is_cross_site(method: &Method, headers: &HeaderMap, public_url: Option<&PublicUrl>) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    // Sent twice (no browser does), or not text, it vouches for nothing.
    let mut sites = headers.get_all("sec-fetch-site").iter();
    match (sites.next(), sites.next()) {
        (Some(site), None) => {
            if !matches!(site.to_str(), Ok("same-origin" | "none")) {
                return true;
            }
        }
        (None, _) => {}
        (Some(_), Some(_)) => return true,
    }
    // An Origin sent twice, or not text, is no origin of ours.
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (Some(origin), None) => match origin.to_str() {
            Ok(origin) => Some(origin),
            Err(_) => return true,
        },
        (None, _) => None,
        (Some(_), Some(_)) => return true,
    };
    if let Some(origin) = origin {
        if let Some(public) = public_url {
            // A proxy may rewrite Host; the public URL is what browsers were given.
            return !origin.eq_ignore_ascii_case(&public.origin());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Without a public URL the scheme is not known here (TLS may end at a proxy in front):
        // either web scheme, and this host and port — names compared without regard to case,
        // and a port written out that is the origin's scheme's default (`Host: portal:80`, as
        // some proxies write it) the same as none.
        let origin_host =
            [("http://", "80"), ("https://", "443")]
                .iter()
                .find_map(|(scheme, port)| {
                    origin
                        .get(..scheme.len())
                        .filter(|s| s.eq_ignore_ascii_case(scheme))
                        .map(|_| (&origin[scheme.len()..], *port))
                });
        let same = origin_host.is_some_and(|(origin_host, default_port)| {
            !origin_host.is_empty()
                && without_port(origin_host, default_port)
                    .eq_ignore_ascii_case(without_port(host, default_port))
        });
        if !same {
            return true;
        }
    }
    false
}

/// `authority` (`host[:port]`) without its port when that is `port`.
fn without_port<'a>(authority: &'a str, port: &str) -> &'a str {
    match authority.rsplit_once(':') {
        // Not a colon inside an IPv6 address: `[::1]` has none after its `]`.
        Some((host, p))
            if p == port && !host.is_empty() && (!host.starts_with('[') || host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

/// The 400 for a request whose `Host` is not one host (RFC 9112 §3.2: missing from an
/// HTTP/1.1 request, sent twice, or not a host name or address with an optional port); None
/// for every other request. The portal builds URLs from it when no `public_url` is set.
pub fn host_refusal(request: &Request) -> Option<Response> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let valid = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().is_ok_and(is_host),
        (None, _) => request.version() != axum::http::Version::HTTP_11,
        (Some(_), Some(_)) => false,
    };
    if valid {
        return None;
    }
    Some(super::caller_error(
        &super::Caller::of(request),
        StatusCode::BAD_REQUEST,
        "BadHost",
        "Bad request: the Host header must be sent once and name one host (a name or address, and optionally a port).",
    ))
}

/// `host[:port]`: a DNS name or IPv4 address, or an IPv6 address in brackets.
fn is_host(text: &str) -> bool {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {
                return after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
            }
            _ => return false,
        },
        None => match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    // A fully qualified name may end in a dot.
    let host = host.strip_suffix('.').unwrap_or(host);
    // Labels of letters, digits and inner hyphens (RFC 1123; `_` as resolvers allow it); a name
    // whose last label is a number is an IPv4 address or nothing (`1.2.3.4.5`).
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && (host
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
            || host.parse::<std::net::Ipv4Addr>().is_ok());
    name_ok && port.is_none_or(is_port)
}

/// A port: digits only (`u16`'s parser takes a `+`), at most 65535.
fn is_port(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

/// What a cross-site state-changing request is answered (a browser shows it as the page).
pub const CROSS_SITE_REFUSED: &str = "Cross-site request refused: this form was sent from a page of another site, so nothing was done (a protection against forged requests). To sign in, refresh or disconnect, open the network access portal itself and use its page.";

/// The 403 for a cross-site state-changing request; None for every other request.
pub fn cross_site_refusal(site: &SiteSecurity, request: &Request) -> Option<Response> {
    if !is_cross_site(
        request.method(),
        request.headers(),
        site.public_url.as_deref(),
    ) {
        return None;
    }
    // What the browser said and what was expected, for an operator whose `public_url` (or
    // proxy) is wrong: every sign-in refused this way is the sign of it. Header text is the
    // client's: shown escaped and cut short.
    let header = |name: header::HeaderName| {
        let values: Vec<String> = request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(120)
                    .collect()
            })
            .collect();
        format!("{values:?}")
    };
    crate::throttled!(warn,
        path = %request.uri().path(),
        origin = %header(header::ORIGIN),
        sec_fetch_site = %header(header::HeaderName::from_static("sec-fetch-site")),
        host = %header(header::HOST),
        expected = site.public_url.as_ref().map_or_else(|| "the Host header's host and port (no public_url)".to_string(), |u| u.origin()),
        "cross-site request refused");
    // With a `public_url`, the page may have been the portal's own, opened at another
    // address (its IP, another name a captive redirect used): the way on is the portal's
    // address, not this one's `/`, whose form would be refused again.
    let mut caller = super::Caller::of(request);
    let message = match &site.public_url {
        Some(public) => {
            caller.home = format!("{}{}", public.origin(), caller.home);
            format!(
                "{CROSS_SITE_REFUSED} The portal's address is {}: a page opened at another one cannot send its forms.",
                public.origin()
            )
        }
        None => CROSS_SITE_REFUSED.to_string(),
    };
    Some(super::caller_error(
        &caller,
        StatusCode::FORBIDDEN,
        "CrossSite",
        &message,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sign-in page's inline script runs under the CSP only if its hash there is its own.
    #[test]
    fn the_csp_allows_the_sign_in_script_by_its_hash() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
            app::pages::login::SIGN_IN_SCRIPT.as_bytes(),
        ));
        assert_eq!(app::SIGN_IN_SCRIPT_HASH, format!("sha256-{hash}"));
        assert!(app::content_security_policy("n").contains(&format!("'sha256-{hash}'")));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_post_passes() {
        let h = headers(&[
            ("host", "portal.example:3000"),
            ("origin", "http://portal.example:3000"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(!is_cross_site(&Method::POST, &h, None));
    }

    #[test]
    fn post_without_browser_headers_passes() {
        assert!(!is_cross_site(
            &Method::POST,
            &headers(&[("host", "portal.example")]),
            None
        ));
    }

    #[test]
    fn foreign_origin_or_cross_site_fetch_is_refused() {
        let h = headers(&[
            ("host", "portal.example"),
            ("origin", "https://evil.example"),
        ]);
        assert!(is_cross_site(&Method::POST, &h, None));
        let h = headers(&[("host", "portal.example"), ("sec-fetch-site", "cross-site")]);
        assert!(is_cross_site(&Method::POST, &h, None));
        let h = headers(&[("host", "portal.example"), ("origin", "null")]);
        assert!(is_cross_site(&Method::POST, &h, None));
        let h = headers(&[
            ("host", "portal.example"),
            ("origin", "ftp://portal.example"),
        ]);
        assert!(is_cross_site(&Method::POST, &h, None), "not a web origin");
        let h = headers(&[
            ("host", "portal.example"),
            ("origin", "HTTPS://portal.example"),
        ]);
        assert!(
            !is_cross_site(&Method::POST, &h, None),
            "schemes are case-insensitive"
        );
    }

    #[test]
    fn without_a_public_url_the_host_matches_whatever_its_case_and_default_port() {
        let same = [
            ("Portal.Example", "http://portal.example"),
            ("portal.example:80", "http://portal.example"),
            ("portal.example:443", "https://Portal.example"),
            ("portal.example", "http://portal.example:80"),
            ("[::1]:80", "http://[::1]"),
            ("[::1]", "http://[::1]"),
        ];
        let other = [
            ("portal.example:443", "http://portal.example"),
            ("portal.example:80", "https://portal.example"),
            ("portal.example:8080", "http://portal.example"),
            ("portal.example", "http://portal.example:8080"),
            ("portal.example", "http://portal.example.evil"),
            ("[::1]:80", "http://[::2]"),
            ("portal.example", "http://"),
        ];
        let cases = same
            .iter()
            .map(|c| (c, false))
            .chain(other.iter().map(|c| (c, true)));
        for ((host, origin), cross) in cases {
            let mut h = headers(&[]);
            h.insert("host", HeaderValue::from_str(host).expect("header"));
            h.insert("origin", HeaderValue::from_str(origin).expect("header"));
            assert_eq!(
                is_cross_site(&Method::POST, &h, None),
                cross,
                "{host} {origin}"
            );
        }
    }

    #[test]
    fn sec_fetch_site_sent_twice_vouches_for_nothing() {
        let mut h = headers(&[
            ("host", "portal.example"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(!is_cross_site(&Method::POST, &h, None));
        h.append("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(is_cross_site(&Method::POST, &h, None));
    }

    #[test]
    fn with_a_public_url_the_origin_must_be_it_whatever_the_host_header_says() {
        let public = PublicUrl::parse("https://portal.example").expect("valid");
        // nginx's default `proxy_set_header Host $proxy_host` rewrites Host.
        let h = headers(&[
            ("host", "127.0.0.1:3000"),
            ("origin", "https://portal.example"),
        ]);
        assert!(!is_cross_site(&Method::POST, &h, Some(&public)));
        for origin in ["http://portal.example", "https://evil.example", "null"] {
            let mut h = headers(&[("host", "portal.example")]);
            h.insert("origin", HeaderValue::from_str(origin).expect("header"));
            assert!(is_cross_site(&Method::POST, &h, Some(&public)), "{origin}");
        }
    }

    #[test]
    fn safe_methods_are_never_refused() {
        let h = headers(&[
            ("host", "portal.example"),
            ("origin", "https://evil.example"),
        ]);
        assert!(!is_cross_site(&Method::GET, &h, None));
    }

    #[test]
    fn an_origin_sent_twice_or_not_text_is_refused() {
        let mut h = headers(&[
            ("host", "portal.example"),
            ("origin", "http://portal.example"),
        ]);
        assert!(!is_cross_site(&Method::POST, &h, None));
        h.append("origin", HeaderValue::from_static("https://evil.example"));
        assert!(is_cross_site(&Method::POST, &h, None));
        let mut h = headers(&[("host", "portal.example")]);
        h.insert(
            "origin",
            HeaderValue::from_bytes(b"http://portal.example\xff").expect("header"),
        );
        assert!(is_cross_site(&Method::POST, &h, None));
    }

    #[test]
    fn a_host_is_a_name_or_an_address_with_an_optional_port() {
        for good in [
            "portal.example",
            "portal.example.",
            "portal.example:3000",
            "localhost",
            "127.0.0.1:8080",
            "[::1]",
            "[2001:db8::1]:443",
            "my_host.lan",
            "xn--bcher-kva.example",
            "3com.example",
            "10.0.0.1.",
        ] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.example:1/x?y#z",
            "a b",
            "a@b",
            "portal.example:99999",
            "portal.example:",
            "portal.example:+80",
            "[::1]:+80",
            "[::1",
            "[portal]",
            "..",
            "a..b",
            "http://portal.example",
            "-evil",
            "evil-.example",
            "portal.-x.example",
            "1.2.3.4.5",
            "256.1.1.1",
            "portal.123",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }
}
