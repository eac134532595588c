//! Errors of plain form posts (no JavaScript) travel in the web session, never in the URL.
//!
//! Leptos answers a failed form post with a redirect to the Referer carrying the error in the
//! query (`?__path=…&__err=<base64>`), and renders whatever such a URL says. Anyone could then
//! craft a link that shows their text in the portal's own alert box. Here:
//!
//! - a failed form post's error (the server fn's own error answer) goes into a short-lived
//!   cookie encrypted and authenticated with a key derived from the portal's, bound to the visitor's `portal_anon` cookie and to
//!   its minute (no database write, so a flood of failing posts costs nothing; a cookie nobody
//!   signed, minted for another visitor, or older than [`FLASH_LIFETIME_SECS`] is ignored, so
//!   nobody can plant a message of theirs in someone else's browser), and the redirect keeps only the Referer's path
//!   on this site (never another host, never the error; without a Referer — where Leptos would
//!   drop the error — the organization's sign-in page);
//! - on a page view (a GET accepting HTML) a valid flash cookie is taken (shown once: the
//!   answer clears it) and handed to the page renderer as a request extension ([`FormError`]);
//!   the pages read a form error from nothing else, so a crafted link shows nothing (its
//!   `__err`/`__path` are removed from the URL all the same);
//! - the same cookie carries the one notice a page shows after what the visitor did: a
//!   Disconnect that ended a session ([`NoticeNext`], marked by the backend, turned into it by
//!   `server_fn_limits`) leaves "You are disconnected" for the next page view, the sign-in page
//!   the browser goes to (a form post's redirect, or the island's navigation after its call);
//!   a Refresh sent without JavaScript leaves "Refreshed" for the session page it goes back to.

use super::{
    form_token::{AnonId, FormTokens},
    org_scope::OrgScope,
};
use crate::config::PublicUrl;
use axum::{
    extract::Request,
    http::{header, HeaderValue, Method, Uri},
    response::Response,
};
use base64::Engine;
use ring::aead;

/// Query parameters Leptos uses for form errors.
const ERROR_PARAMS: [&str; 2] = ["__err", "__path"];
/// Longest encoded error kept: a cookie holding it stays under browsers' 4 KiB limit (a server's
/// refusal text is cut to `portal_backend::MAX_REFUSAL_BYTES` to fit).
pub(crate) const MAX_FLASH: usize = 2048;
/// Purpose of the flash cookies' key.
const DOMAIN: &[u8] = b"radius-portal form error\0";
/// How long a flash cookie is shown after the failed post (also its Max-Age).
const FLASH_LIFETIME_SECS: u64 = 60;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The visitor a request is from (its `portal_anon` id; empty if it has none), in the
/// organization's portal it is for: a flash is sealed to both, so one organization's failed
/// sign-in is never shown on another's page (a tab of each open).
/// What a form posted by a browser that sent none of the portal's cookies is answered.
pub const NO_COOKIES: &str = "Your browser did not send this portal's cookies, which signing in and the session's controls need: allow cookies for this site (and open it at its https:// address if it has one), then try again.";

/// What a sign-in whose browser sent two visitor cookies is told (one set for a part of the
/// site, by another page or on the way: neither is taken).
pub const TWO_COOKIES: &str = "Your browser sent two of this portal's visitor cookies (one set for part of this site), and which is its own cannot be told: delete this site's cookies, then try again.";

fn visitor(request: &Request) -> String {
    let anon = request
        .extensions()
        .get::<AnonId>()
        .map_or("", |a| a.0.as_str());
    let portal = request
        .extensions()
        .get::<OrgScope>()
        .map_or("", |scope| scope.id.as_str());
    format!("{anon}\0{portal}")
}

/// The failed form post a page shows: the server fn's path and its error, encoded as Leptos
/// reads it. Only this middleware puts it on a request, from a flash cookie it signed for
/// this visitor — never from the URL.
#[derive(Clone, Debug)]
pub struct FormError {
    /// The server fn's path (`/api/login`).
    pub path: String,
    /// The encoded error.
    pub err: String,
    /// The username a failed sign-in was tried with ([`SubmittedUsername`]).
    pub username: Option<String>,
}

/// The header a Disconnect or a Refresh puts on its server fn's answer ([`mark_notice`]): the
/// server fns' layer turns it into [`NoticeNext`] and removes it.
pub(crate) const NOTICE_HEADER: &str = "x-portal-notice";

/// Marks the answer of the server fn being run (or the page being rendered) with
/// [`NOTICE_HEADER`]: what the next page
/// says.
pub(crate) fn mark_notice(notice: app::dto::Notice) {
    if let Some(options) = leptos::prelude::use_context::<leptos_axum::ResponseOptions>() {
        options.insert_header(
            axum::http::HeaderName::from_static(NOTICE_HEADER),
            HeaderValue::from(u16::from(notice.code())),
        );
    }
}

/// Put on a Disconnect's or a Refresh's successful answer by the server fns' layer: the page
/// the browser goes to next says how it went (the sign-in page that the session ended, or had
/// ended before; the session page that it was refreshed).
#[derive(Clone, Copy, Debug)]
pub struct NoticeNext(pub app::dto::Notice);

impl NoticeNext {
    /// From the value of [`NOTICE_HEADER`].
    pub(crate) fn from_header(value: &HeaderValue) -> Option<NoticeNext> {
        let code = value.to_str().ok()?.parse().ok()?;
        app::dto::Notice::from_code(code).map(NoticeNext)
    }

    /// The notice an answer was marked with ([`mark_notice`]), the mark removed.
    pub(crate) fn take_mark(headers: &mut axum::http::HeaderMap) -> Option<NoticeNext> {
        headers
            .remove(NOTICE_HEADER)
            .as_ref()
            .and_then(NoticeNext::from_header)
    }
}

/// What a flash cookie carries: a failed form post, or a notice.
enum Flash {
    FormError(FormError),
    Notice(app::dto::Notice),
}

/// The first byte of a flash cookie's plain text: what follows.
const KIND_FORM_ERROR: u8 = 0;
const KIND_NOTICE: u8 = 1;

/// The `username` field a sign-in posted, put on its answer by the server fns' layer (which
/// holds the body): a failed sign-in's flash keeps it, so the form is filled in again.
#[derive(Clone, Debug)]
pub struct SubmittedUsername(pub String);

/// Longest username a flash cookie keeps (longer ones are refused anyway: 63 bytes).
const MAX_FLASH_USERNAME: usize = 256;

/// What the flash middleware needs.
#[derive(Clone, Debug)]
pub struct FlashState {
    /// Signs and checks flash cookies.
    pub tokens: FormTokens,
    /// `[http] public_url`: its host is this site too (a proxy may rewrite Host).
    pub public_url: Option<std::sync::Arc<PublicUrl>>,
}

impl FlashState {
    fn cookie_name(&self) -> &'static str {
        if self.tokens.secure() {
            "__Host-portal_flash"
        } else {
            "portal_flash"
        }
    }

    /// A failed post's cookie value: its `path`, `err` and `username` sealed ([`Self::seal`]).
    fn seal_form_error(
        &self,
        visitor: &str,
        issued: u64,
        path: &str,
        err: &[u8],
        username: &str,
    ) -> String {
        let mut plain = Vec::with_capacity(4 + path.len() + err.len() + username.len());
        for part in [path.as_bytes(), err] {
            plain.extend_from_slice(&(part.len() as u16).to_be_bytes());
            plain.extend_from_slice(part);
        }
        plain.extend_from_slice(username.as_bytes());
        self.seal(visitor, issued, KIND_FORM_ERROR, &plain)
    }

    /// A notice's cookie value ([`Self::seal`]).
    fn seal_notice(&self, visitor: &str, issued: u64, notice: app::dto::Notice) -> String {
        self.seal(visitor, issued, KIND_NOTICE, &[notice.code()])
    }

    /// The cookie's value: `issued`, `kind` and `content` encrypted and authenticated
    /// (ChaCha20-Poly1305 under a key derived from the portal's) with `visitor`'s id as the
    /// associated data (bound to it, not written into the cookie), base64url: what a failed
    /// post's answer carried — a sign-in's username among it — is nobody else's to read, on
    /// the wire or in a proxy's log.
    fn seal(&self, visitor: &str, issued: u64, kind: u8, content: &[u8]) -> String {
        let mut plain = Vec::with_capacity(9 + content.len() + aead::MAX_TAG_LEN);
        plain.extend_from_slice(&issued.to_be_bytes());
        plain.push(kind);
        plain.extend_from_slice(content);
        let nonce: [u8; aead::NONCE_LEN] = rand::random();
        let sealed = self
            .key()
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(visitor.as_bytes()),
                &mut plain,
            )
            .map(|()| plain);
        let mut value = nonce.to_vec();
        value.extend(sealed.unwrap_or_default());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value)
    }

    fn key(&self) -> aead::LessSafeKey {
        let key = self.tokens.derive(DOMAIN);
        // Cannot fail: ChaCha20-Poly1305 takes exactly a 32-byte key, and `derive` gives one.
        aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &key)
                .expect("a 32-byte ChaCha20-Poly1305 key"),
        )
    }

    /// What a flash cookie we sealed for `visitor` within the last [`FLASH_LIFETIME_SECS`]
    /// before `now` carries: a failed post (its path, error encoded as Leptos reads it, and
    /// username) or a notice.
    fn open(&self, value: &str, visitor: &str, now: u64) -> Option<Flash> {
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()?;
        if bytes.len() < aead::NONCE_LEN {
            return None;
        }
        let mut sealed = bytes.split_off(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(&bytes).ok()?;
        let plain = self
            .key()
            .open_in_place(nonce, aead::Aad::from(visitor.as_bytes()), &mut sealed)
            .ok()?;
        let issued = u64::from_be_bytes(plain.get(..8)?.try_into().ok()?);
        if issued > now + 5 || now.saturating_sub(issued) > FLASH_LIFETIME_SECS {
            return None;
        }
        let (&kind, mut rest) = plain[8..].split_first()?;
        if kind == KIND_NOTICE {
            return match rest {
                [code] => app::dto::Notice::from_code(*code).map(Flash::Notice),
                _ => None,
            };
        }
        if kind != KIND_FORM_ERROR {
            return None;
        }
        let mut part = || {
            let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
            let field = rest.get(2..2 + len)?;
            rest = &rest[2 + len..];
            Some(field)
        };
        let path = String::from_utf8(part()?.to_vec()).ok()?;
        let err = part()?.to_vec();
        let username = String::from_utf8(rest.to_vec()).ok()?;
        Some(Flash::FormError(FormError {
            path,
            err: base64::engine::general_purpose::URL_SAFE.encode(err),
            username: (!username.is_empty()).then_some(username),
        }))
    }

    fn cookie(&self, value: &str, max_age: u64) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
            self.cookie_name(),
            if self.tokens.secure() { "; Secure" } else { "" }
        ))
        .ok()
    }

    /// The flash cookie of an answer with a notice for the next page ([`NoticeNext`]).
    fn notice_cookie(&self, visitor: &str, answer: &axum::http::Extensions) -> Option<HeaderValue> {
        let NoticeNext(notice) = answer.get::<NoticeNext>()?;
        let sealed = self.seal_notice(visitor, unix_now(), *notice);
        self.cookie(&sealed, FLASH_LIFETIME_SECS)
    }

    fn cookie_in(&self, request: &Request) -> Option<String> {
        super::cookie_value(request.headers(), self.cookie_name()).map(str::to_string)
    }
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
/// query, or None when it points elsewhere or is unusable. `hosts`: this site's names (the
/// Host header, the public URL's).
fn local_location(target: &str, hosts: &[&str]) -> Option<String> {
    let (path_and_query, authority) = match target.parse::<Uri>().ok()? {
        uri if uri.scheme().is_some() => (
            uri.path_and_query()?.clone(),
            uri.authority().map(|a| a.as_str().to_string()),
        ),
        uri => (uri.path_and_query()?.clone(), None),
    };
    if let Some(authority) = authority {
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&authority)) {
            return None;
        }
    }
    let path = path_and_query.path();
    // Browsers read a backslash as a slash: `/\evil.example` is `//evil.example`, another site.
    if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
        return None;
    }
    let kept = split_query(path_and_query.query().unwrap_or(""));
    Some(if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", encode(&kept))
    })
}

fn accepts_html(request: &Request) -> bool {
    app::service::accepts_html(request.headers())
}

/// What a sign-in (`/api/login`) is told when its browser sent none of the visitor cookies or
/// several (which is its own cannot be told): its form token is refused for that.
fn visitor_cookies_unusable(flash: &FlashState, request: &Request) -> Option<&'static str> {
    if !request.uri().path().ends_with("/api/login") {
        return None;
    }
    match flash.tokens.visitor_cookies(request.headers()) {
        1 => None,
        0 => Some(NO_COOKIES),
        _ => Some(TWO_COOKIES),
    }
}

/// Moves a failed form post's error from the redirect URL into a signed flash
/// cookie and back into the page renderer, so no error text ever comes from a URL.
pub async fn carry_form_errors<F, Fut>(
    flash: &FlashState,
    mut request: Request,
    next: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    if request.method() == Method::POST
        && request.uri().path().starts_with("/api/")
        && accepts_html(&request)
    {
        let mut hosts: Vec<String> = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .into_iter()
            .collect();
        hosts.extend(flash.public_url.as_ref().map(|u| u.authority.clone()));
        let base = request
            .extensions()
            .get::<OrgScope>()
            .map_or_else(String::new, |scope| scope.base.clone());
        let sign_in = format!("{base}/");
        let visitor = visitor(&request);
        // A sign-in from a browser that keeps none of the portal's cookies (all cookies blocked;
        // a portal of Secure cookies reached over plain http) comes without its visitor cookie:
        // its form token cannot be checked, and a flash cookie would not carry the error to the
        // next page either. (A Refresh or Disconnect so refused keeps its redirect: a browser
        // whose cookies were cleared is shown there that its session runs on.)
        // Two or more (one planted for a narrower path on plain HTTP) count as none: which is
        // the browser's own cannot be told, and the form token is refused the same way.
        let cookieless = visitor_cookies_unusable(flash, &request).map(|why| {
            (
                request.headers().clone(),
                request.extensions().get::<super::Demo>().is_some(),
                why,
            )
        });
        let response = next(request).await;
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
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let location = local_location(&location, &hosts).unwrap_or_else(|| sign_in.clone());
        let (mut parts, body) = response.into_parts();
        if let Some(path) = &failed_fn {
            let bytes = axum::body::to_bytes(body, MAX_FLASH).await;
            // Refused for its form token, from a browser that sent no visitor cookie: said on
            // this answer, not on a page after a redirect the error would not reach (the UI
            // review's M4: the same empty form came back every time, without a word).
            let refused_token = bytes.as_ref().is_ok_and(|bytes| {
                serde_json::from_slice::<app::error::PortalError>(bytes)
                    .is_ok_and(|e| e == app::error::PortalError::Forbidden)
            });
            if let (Some((headers, demo, why)), true) = (&cookieless, refused_token) {
                let caller = super::Caller {
                    headers,
                    viewing: false,
                    home: sign_in,
                    demo: *demo,
                };
                return super::caller_error(
                    &caller,
                    axum::http::StatusCode::FORBIDDEN,
                    "CookiesRefused",
                    why,
                );
            }
            let username = parts
                .extensions
                .get::<SubmittedUsername>()
                .map(|u| u.0.as_str())
                // A name refused for a control character is not put back into the form.
                .filter(|u| u.len() <= MAX_FLASH_USERNAME && !u.chars().any(char::is_control))
                .unwrap_or_default()
                .to_string();
            match bytes {
                Ok(bytes) => {
                    let sealed =
                        flash.seal_form_error(&visitor, unix_now(), path, &bytes, &username);
                    if let Some(cookie) = flash.cookie(&sealed, FLASH_LIFETIME_SECS) {
                        parts.headers.append(header::SET_COOKIE, cookie);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "form error too large to keep"),
            }
            parts.headers.remove("serverfnerror");
        } else if let Some(cookie) = flash.notice_cookie(&visitor, &parts.extensions) {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        // The answer is a redirect without a body (a server fn's answer was JSON).
        parts.headers.remove(header::CONTENT_TYPE);
        // Without a Referer (a browser that never sends one, a script), Leptos redirects to
        // `/`: the page the failed form is on instead — the session page's Refresh and
        // Disconnect back to the session page, which shows their error (a signed-in browser
        // is sent from the sign-in page to its session page, and the error would be lost on
        // the way) — else the organization's sign-in page.
        let location = match (location == "/", failed_fn.as_deref()) {
            (true, Some(path)) if !path.ends_with("/api/login") => format!("{base}/session"),
            (true, _) => sign_in,
            (false, _) => location,
        };
        if let Ok(value) = HeaderValue::from_str(&location) {
            parts.headers.insert(header::LOCATION, value);
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    // A script's sign-in (JSON) refused for its form token from a browser without exactly one
    // visitor cookie is told why, as a form's is (W's D5: "out of date, reload" sent it round
    // in circles).
    if request.method() == Method::POST {
        if let Some(why) = visitor_cookies_unusable(flash, &request) {
            let caller = super::Caller::of(&request);
            let (headers, home, demo) = (caller.headers.clone(), caller.home, caller.demo);
            let response = next(request).await;
            if response.status() != axum::http::StatusCode::FORBIDDEN {
                return response;
            }
            let (mut parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, MAX_FLASH)
                .await
                .unwrap_or_default();
            if serde_json::from_slice::<app::error::PortalError>(&bytes)
                .is_ok_and(|e| e == app::error::PortalError::Forbidden)
            {
                let caller = super::Caller {
                    headers: &headers,
                    viewing: false,
                    home,
                    demo,
                };
                return super::caller_error(
                    &caller,
                    axum::http::StatusCode::FORBIDDEN,
                    "CookiesRefused",
                    why,
                );
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        }
    }
    let page_view = request.method() == Method::GET && accepts_html(&request);
    let query = request.uri().query().unwrap_or("");
    // Decoded names: `%5F%5Ferr` is `__err` to Leptos too.
    let crafted = url::form_urlencoded::parse(query.as_bytes())
        .any(|(key, _)| ERROR_PARAMS.contains(&key.as_ref()));
    let cookie = page_view.then(|| flash.cookie_in(&request)).flatten();
    let visitor = visitor(&request);
    let pending = cookie
        .as_deref()
        .and_then(|value| flash.open(value, &visitor, unix_now()));
    if crafted {
        // Nothing reads the error parameters from the URL (the page reads `FormError`); they
        // are dropped all the same, so no handler below ever sees them.
        let kept = split_query(query);
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
    let shown = pending.is_some();
    match pending {
        Some(Flash::FormError(error)) => {
            request.extensions_mut().insert(error);
        }
        Some(Flash::Notice(notice)) => {
            request.extensions_mut().insert(notice);
        }
        None => {}
    }
    let mut response = next(request).await;
    // A Disconnect made by a script (the session page's island) sets its notice too: the page
    // the island goes to next shows it — as does a page that sends the browser on with one
    // (the session page of a browser without a session).
    let noticed = flash.notice_cookie(&visitor, response.extensions());
    if let Some(cookie) = &noticed {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    // Shown once: the page that showed it clears the cookie — unless it left another. One that
    // does not open here stays: another organization's portal's (a tab of each open), shown by
    // its own page; or forged, or out of date, and then shown nowhere, and gone with its
    // Max-Age.
    if shown && noticed.is_none() {
        if let Some(clear) = flash.cookie("", 0) {
            response.headers_mut().append(header::SET_COOKIE, clear);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flash_is_the_visitors_in_one_organizations_portal() {
        let request = |org: &str| {
            let mut request = Request::new(axum::body::Body::empty());
            request.extensions_mut().insert(AnonId("anon-1".into()));
            request.extensions_mut().insert(OrgScope {
                id: org.into(),
                base: format!("/o/{org}"),
            });
            request
        };
        assert_eq!(visitor(&request("beta")), visitor(&request("beta")));
        assert_ne!(visitor(&request("beta")), visitor(&request("acme")));
    }

    #[test]
    fn flash_cookies_open_only_when_we_signed_them() {
        let flash = FlashState {
            tokens: FormTokens::new([3; 32], false),
            public_url: None,
        };
        let now = 1_800_000_000;
        let sealed = flash.seal_form_error(
            "anon-1",
            now,
            "/api/login",
            br#"{"Rejected":{"message":"x"}}"#,
            "carol",
        );
        let Some(Flash::FormError(opened)) = flash.open(&sealed, "anon-1", now + 30) else {
            panic!("ours, a form error");
        };
        assert_eq!(opened.path, "/api/login");
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE
                .decode(opened.err)
                .unwrap(),
            br#"{"Rejected":{"message":"x"}}"#
        );
        assert_eq!(opened.username.as_deref(), Some("carol"));
        let without = flash.seal_form_error("anon-1", now, "/api/refresh", b"{}", "");
        assert!(matches!(
            flash.open(&without, "anon-1", now),
            Some(Flash::FormError(FormError { username: None, .. }))
        ));
        let notice = flash.seal_notice("anon-1", now, app::dto::Notice::Disconnected);
        assert!(matches!(
            flash.open(&notice, "anon-1", now + 30),
            Some(Flash::Notice(app::dto::Notice::Disconnected))
        ));
        assert!(
            flash.open(&notice, "anon-2", now).is_none(),
            "a notice is the visitor's own"
        );
        // Every notice comes back as itself, from a cookie and from the backend's header.
        use app::dto::Notice;
        let every = [
            Notice::Disconnected,
            Notice::AlreadyEnded(None),
            Notice::AlreadyEnded(Some(app::dto::EndReason::Expired)),
            Notice::AlreadyEnded(Some(app::dto::EndReason::NotLinked)),
            Notice::Refreshed,
            Notice::RefreshedRecently,
        ];
        for each in every {
            let sealed = flash.seal_notice("anon-1", now, each);
            assert!(
                matches!(flash.open(&sealed, "anon-1", now), Some(Flash::Notice(n)) if n == each)
            );
            let header = HeaderValue::from(u16::from(each.code()));
            assert!(matches!(NoticeNext::from_header(&header), Some(NoticeNext(n)) if n == each));
        }
        assert!(NoticeNext::from_header(&HeaderValue::from_static("x")).is_none());
        // A notice of an unknown code or a kind nobody wrote opens as nothing.
        for (kind, content) in [(KIND_NOTICE, &[7u8][..]), (9, &[0u8][..])] {
            let odd = flash.seal("anon-1", now, kind, content);
            assert!(flash.open(&odd, "anon-1", now).is_none());
        }
        let other = FlashState {
            tokens: FormTokens::new([4; 32], false),
            public_url: None,
        };
        assert!(other.open(&sealed, "anon-1", now).is_none(), "another key");
        assert!(
            flash.open(&sealed, "anon-2", now).is_none(),
            "minted for another visitor"
        );
        assert!(
            flash.open(&sealed, "anon-1", now + 61).is_none(),
            "older than a minute"
        );
        assert!(
            flash.open(&sealed, "anon-1", now - 60).is_none(),
            "from the future"
        );
        let mut tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed)
            .unwrap();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert!(
            flash
                .open(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tampered),
                    "anon-1",
                    now
                )
                .is_none(),
            "tampered"
        );
        // Encrypted: neither the username nor the error can be read from the cookie.
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed)
            .unwrap();
        assert!(
            !raw.windows(5).any(|w| w == b"carol"),
            "the username is not in the clear"
        );
        assert!(!sealed.contains("carol"));
        assert!(flash.open("garbage", "anon-1", now).is_none());
    }

    #[test]
    fn the_largest_form_error_makes_a_cookie_browsers_keep() {
        let flash = FlashState {
            tokens: FormTokens::new([3; 32], true),
            public_url: None,
        };
        let sealed = flash.seal_form_error(
            "a".repeat(43).as_str(),
            1_800_000_000,
            "/api/disconnect",
            &[b'x'; MAX_FLASH],
            &"u".repeat(MAX_FLASH_USERNAME),
        );
        let cookie = flash.cookie(&sealed, FLASH_LIFETIME_SECS).unwrap();
        assert!(cookie.len() < 4000, "{}", cookie.len());
    }

    #[test]
    fn redirects_keep_only_local_paths_and_lose_the_error() {
        assert_eq!(
            local_location(
                "http://portal.example/o/beta/?x=1&__path=%2Fapi%2Flogin&__err=abc",
                &["portal.example"],
            )
            .as_deref(),
            Some("/o/beta/?x=1")
        );
        assert_eq!(
            local_location("/?__path=%2Fapi%2Flogin&__err=abc", &[]).as_deref(),
            Some("/")
        );
        assert!(local_location("http://evil.example/", &["portal.example"]).is_none());
        assert!(local_location("//evil.example/", &["portal.example"]).is_none());
        assert!(local_location("/\\evil.example", &["portal.example"]).is_none());
        assert!(local_location("/session\\..", &["portal.example"]).is_none());
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
            if let Some(location) = local_location(&target, &[host.as_str()]) {
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
