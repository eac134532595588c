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
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        if let Some(public) = public_url {
            // A proxy may rewrite Host; the public URL is what browsers were given.
            return !origin.eq_ignore_ascii_case(&public.origin());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        if origin == "null" || origin_host != host {
            return true;
        }
    }
    false
}

/// The 403 for a cross-site state-changing request; None for every other request.
pub fn cross_site_refusal(site: &SiteSecurity, request: &Request) -> Option<Response> {
    if !is_cross_site(
        request.method(),
        request.headers(),
        site.public_url.as_deref(),
    ) {
        return None;
    }
    tracing::warn!(path = %request.uri().path(), "cross-site request refused");
    Some(super::caller_error(
        request.headers(),
        StatusCode::FORBIDDEN,
        "CrossSite",
        "Cross-site request refused.",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
