//! Errors of plain form posts (no JavaScript) travel in the web session, never in the URL.
//!
//! Leptos answers a failed form post with a redirect to the Referer carrying the error in the
//! query (`?__path=…&__err=<base64>`), and renders whatever such a URL says. Anyone could then
//! craft a link that shows their text in the portal's own alert box. Here:
//!
//! - a failed form post's error (the server fn's own error answer) goes into the web session as
//!   a one-time flash, and the redirect keeps only the Referer's path on this site (never
//!   another host, never the error; without a Referer — where Leptos would drop the error — the
//!   organization's sign-in page);
//! - every request has `__err`/`__path` removed from its URL, so a crafted link shows nothing;
//!   on a page view (a GET accepting HTML) a flash the web session holds is taken (shown once)
//!   and handed to the page renderer on the request's inner URI only.

use super::org_scope::OrgScope;
use axum::{
    extract::Request,
    http::{header, HeaderValue, Method, Uri},
    middleware::Next,
    response::Response,
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

/// Web-session key of the pending flash.
const FLASH_KEY: &str = "form_error";
/// Query parameters Leptos uses for form errors.
const ERROR_PARAMS: [&str; 2] = ["__err", "__path"];
/// Longest error kept (our own errors are far shorter).
const MAX_FLASH: usize = 4096;

/// A form error waiting for the next page view.
#[derive(Debug, Serialize, Deserialize)]
struct Flash {
    /// The server fn's path (`/api/login`): which form it belongs to.
    path: String,
    /// The encoded error, as Leptos reads it.
    err: String,
}

/// The query without the error parameters.
fn split_query(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| !ERROR_PARAMS.contains(&key.as_ref()))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

fn encode(pairs: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A same-site Location for `target` (an absolute URL or a path): its path and non-error
/// query, or None when it points elsewhere or is unusable.
fn local_location(target: &str, host: Option<&str>) -> Option<String> {
    let (path_and_query, authority) = match target.parse::<Uri>().ok()? {
        uri if uri.scheme().is_some() => (
            uri.path_and_query()?.clone(),
            uri.authority().map(|a| a.as_str().to_string()),
        ),
        uri => (uri.path_and_query()?.clone(), None),
    };
    if authority.is_some() && authority.as_deref() != host {
        return None;
    }
    let path = path_and_query.path();
    if !path.starts_with('/') || path.starts_with("//") {
        return None;
    }
    let kept = split_query(path_and_query.query().unwrap_or(""));
    Some(if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", encode(&kept))
    })
}

/// Middleware (inside the web-session layer): moves form errors from redirect URLs into the
/// web session and back into the page renderer, so no error text ever comes from a URL.
pub async fn carry_form_errors(mut request: Request, next: Next) -> Response {
    let session = request.extensions().get::<Session>().cloned();
    let is_form_post = request.method() == Method::POST
        && request.uri().path().starts_with("/api/")
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    if is_form_post {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let sign_in = request
            .extensions()
            .get::<OrgScope>()
            .map_or_else(|| "/".to_string(), |scope| format!("{}/", scope.base));
        let response = next.run(request).await;
        let Some(location) = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return response;
        };
        // The server fn's own error answer (`serverfnerror: <path>`, the encoded error as the
        // body) is what Leptos put in the URL, or dropped when there was no Referer.
        let failed_fn = response
            .headers()
            .get("serverfnerror")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let location =
            local_location(&location, host.as_deref()).unwrap_or_else(|| sign_in.clone());
        let (mut parts, body) = response.into_parts();
        if let Some(path) = failed_fn {
            match axum::body::to_bytes(body, MAX_FLASH).await {
                Ok(bytes) => {
                    let flash = Flash {
                        path,
                        err: base64::engine::general_purpose::URL_SAFE.encode(&bytes),
                    };
                    if let Some(session) = &session {
                        if let Err(e) = session.insert(FLASH_KEY, &flash).await {
                            tracing::warn!(error = %e, "form error could not be kept for the next page");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "form error too large to keep"),
            }
            parts.headers.remove("serverfnerror");
            parts.headers.remove(header::CONTENT_TYPE);
        }
        // Without a Referer, Leptos redirects to `/`: the organization's page instead.
        let location = if location == "/" { sign_in } else { location };
        if let Ok(value) = HeaderValue::from_str(&location) {
            parts.headers.insert(header::LOCATION, value);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    let page_view = request.method() == Method::GET
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    let query = request.uri().query().unwrap_or("");
    // Decoded names: `%5F%5Ferr` is `__err` to Leptos too.
    let crafted = url::form_urlencoded::parse(query.as_bytes())
        .any(|(key, _)| ERROR_PARAMS.contains(&key.as_ref()));
    if page_view || crafted {
        let pending = match (&session, page_view) {
            (Some(session), true) => session.remove::<Flash>(FLASH_KEY).await.ok().flatten(),
            _ => None,
        };
        if crafted || pending.is_some() {
            let mut kept = split_query(query);
            if let Some(flash) = pending {
                kept.push(("__path".into(), flash.path));
                kept.push(("__err".into(), flash.err));
            }
            let path = request.uri().path();
            let rewritten = if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", encode(&kept))
            };
            if let Ok(uri) = rewritten.parse::<Uri>() {
                *request.uri_mut() = uri;
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_only_local_paths_and_lose_the_error() {
        assert_eq!(
            local_location(
                "http://portal.example/o/beta/?x=1&__path=%2Fapi%2Flogin&__err=abc",
                Some("portal.example"),
            )
            .as_deref(),
            Some("/o/beta/?x=1")
        );
        assert_eq!(
            local_location("/?__path=%2Fapi%2Flogin&__err=abc", None).as_deref(),
            Some("/")
        );
        assert!(local_location("http://evil.example/", Some("portal.example")).is_none());
        assert!(local_location("//evil.example/", Some("portal.example")).is_none());
    }
}

/// Property tests: any Location or query is handled, and a redirect never leaves the site or
/// carries the error parameters.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2000)))]

        #[test]
        fn locations_stay_on_the_site(target in "(https?://[a-z.]{0,12}(:[0-9]{1,5})?)?[/\\\\]{0,3}[a-z0-9%._?&=/-]{0,40}(__err=[A-Za-z0-9%=]{0,10})?",
                                      host in "[a-z.]{0,12}") {
            if let Some(location) = local_location(&target, Some(&host)) {
                prop_assert!(location.starts_with('/') && !location.starts_with("//"), "{location}");
                let query = location.split_once('?').map_or("", |(_, q)| q);
                for (key, _) in url::form_urlencoded::parse(query.as_bytes()) {
                    prop_assert!(!ERROR_PARAMS.contains(&key.as_ref()), "{location}");
                }
            }
        }

        #[test]
        fn any_query_splits(query in ".{0,80}") {
            for (key, _) in split_query(&query) {
                prop_assert!(!ERROR_PARAMS.contains(&key.as_str()));
            }
        }
    }
}
