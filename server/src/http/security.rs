//! Web security that applies to every response or request: static security headers (the CSP
//! with its per-request nonce is set by the page shell) and refusal of cross-site
//! state-changing requests (Origin / Sec-Fetch-Site), on top of the SameSite=Strict cookie.
//!
//! The per-session form token (the other half of CSRF protection) is checked by
//! `portal_backend`, which owns the web session.

use axum::{
    extract::Request,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Middleware: adds X-Frame-Options, X-Content-Type-Options, Referrer-Policy, and `no-store`
/// for responses that did not set their own caching (HTML, server fns).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
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
    response
}

/// True when a state-changing request comes from another site.
pub fn is_cross_site(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
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

/// Middleware: answers 403 to cross-site state-changing requests.
pub async fn reject_cross_site(request: Request, next: Next) -> Response {
    if is_cross_site(request.method(), request.headers()) {
        tracing::warn!(path = %request.uri().path(), "cross-site request refused");
        return (StatusCode::FORBIDDEN, "Cross-site request refused.").into_response();
    }
    next.run(request).await
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
        assert!(!is_cross_site(&Method::POST, &h));
    }

    #[test]
    fn post_without_browser_headers_passes() {
        assert!(!is_cross_site(
            &Method::POST,
            &headers(&[("host", "portal.example")])
        ));
    }

    #[test]
    fn foreign_origin_or_cross_site_fetch_is_refused() {
        let h = headers(&[
            ("host", "portal.example"),
            ("origin", "https://evil.example"),
        ]);
        assert!(is_cross_site(&Method::POST, &h));
        let h = headers(&[("host", "portal.example"), ("sec-fetch-site", "cross-site")]);
        assert!(is_cross_site(&Method::POST, &h));
        let h = headers(&[("host", "portal.example"), ("origin", "null")]);
        assert!(is_cross_site(&Method::POST, &h));
    }

    #[test]
    fn safe_methods_are_never_refused() {
        let h = headers(&[
            ("host", "portal.example"),
            ("origin", "https://evil.example"),
        ]);
        assert!(!is_cross_site(&Method::GET, &h));
    }
}
