//! Form tokens (the per-browser half of CSRF protection, design.md §6) without a write per
//! anonymous visitor. A browser without a web session gets a random `portal_anon` cookie
//! (HttpOnly, SameSite=Strict; `__Host-` and Secure under HTTPS) and its form token is an HMAC
//! of that cookie under a key kept in the database — a signed double-submit token: valid only
//! together with the cookie, which another site can neither read nor set. Bots and
//! captive-portal probes fetching the sign-in page cost no database write. A login creates the
//! real web session, which then holds a fresh random token (rotated at login).

use axum::{extract::Request, http::HeaderValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// The anonymous visitor id from (or newly set into) the `portal_anon` cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnonId(pub String);

/// Signs anonymous form tokens. Cheap to clone.
#[derive(Clone)]
pub struct FormTokens {
    /// HMAC-SHA256 keyed once (the key's inner and outer pads hashed): cloned per token.
    mac: Arc<Hmac<Sha256>>,
    cookie: &'static str,
    secure: bool,
}

impl std::fmt::Debug for FormTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormTokens")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

use crate::hex;

/// HMAC-SHA256 under `key`. A key shorter than SHA-256's 64-byte block is zero-padded to it
/// (RFC 2104), so the padded key gives the same MACs as the key itself.
fn keyed(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block.into())
}

impl FormTokens {
    /// With the database's key; `secure`: users reach the portal over HTTPS.
    pub fn new(key: [u8; 32], secure: bool) -> Self {
        FormTokens {
            mac: Arc::new(keyed(&key)),
            cookie: if secure {
                "__Host-portal_anon"
            } else {
                "portal_anon"
            },
            secure,
        }
    }

    /// The form token of an anonymous visitor.
    pub fn token_for(&self, anon: &AnonId) -> String {
        self.sign(b"radius-portal form token\0", anon.0.as_bytes())
    }

    /// A key of its own for the purpose `domain`, derived from the portal's (HMAC-SHA256).
    pub fn derive(&self, domain: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::clone(&self.mac);
        mac.update(b"derived key\0");
        mac.update(domain);
        mac.finalize().into_bytes().into()
    }

    /// HMAC-SHA256 (hex) of `data` under the key, for the purpose `domain`.
    pub fn sign(&self, domain: &[u8], data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::clone(&self.mac);
        mac.update(domain);
        mac.update(data);
        hex(&mac.finalize().into_bytes())
    }

    /// Whether cookies are marked Secure (and `__Host-`) — users reach the portal over HTTPS.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// How many visitor cookies `headers` carry (well-formed or not): one, or none (cookies
    /// refused), or more (one planted for a narrower path: none counts).
    pub fn visitor_cookies(&self, headers: &axum::http::HeaderMap) -> usize {
        super::cookie_values(headers, self.cookie).count()
    }

    /// The visitor id in a request's cookies, if well-formed (64 hex digits).
    fn visitor_in(&self, request: &Request) -> Option<AnonId> {
        super::cookie_value(request.headers(), self.cookie)
            .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|v| AnonId(v.to_ascii_lowercase()))
    }
}

/// Puts the visitor's [`AnonId`] into the request; for a visitor without one, a new id and
/// the `Set-Cookie` that carries it (to add to the response).
pub fn insert_anonymous_id(tokens: &FormTokens, request: &mut Request) -> Option<HeaderValue> {
    if let Some(anon) = tokens.visitor_in(request) {
        request.extensions_mut().insert(anon);
        return None;
    }
    // Every visitor of the portal's pages and server fns gets one (whatever it accepts), so a
    // form token never needs a stored web session; assets, probes, the Captive API (polled by
    // OS assistants), the live stream and the admin API do not.
    let path = request.uri().path();
    if super::without_visitors(path) || [super::captive::PATH, super::live::PATH].contains(&path) {
        return None;
    }
    let anon = AnonId(hex(&rand::random::<[u8; 32]>()));
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict{}",
        tokens.cookie,
        anon.0,
        if tokens.secure { "; Secure" } else { "" }
    );
    request.extensions_mut().insert(anon);
    HeaderValue::from_str(&cookie).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_the_visitor_and_the_key() {
        let a = FormTokens::new([1; 32], false);
        let b = FormTokens::new([2; 32], false);
        let me = AnonId("aa".repeat(32));
        let you = AnonId("bb".repeat(32));
        assert_eq!(a.token_for(&me), a.token_for(&me));
        assert_ne!(a.token_for(&me), a.token_for(&you));
        assert_ne!(a.token_for(&me), b.token_for(&me));
        assert_eq!(a.token_for(&me).len(), 64);
    }

    #[test]
    fn the_key_padded_to_the_block_gives_the_keys_own_macs() {
        use hmac::Mac;
        let key = [9u8; 32];
        let mut own = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        own.update(b"radius-portal form token\0visitor");
        let expected = hex(&own.finalize().into_bytes());
        let tokens = FormTokens::new(key, false);
        assert_eq!(
            tokens.sign(b"radius-portal form token\0", b"visitor"),
            expected
        );
    }
}

/// Property tests: any Cookie header is handled; only a well-formed visitor id is taken.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2000)))]

        #[test]
        fn cookie_headers_never_panic(cookies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..3),
                                      planted in proptest::option::of("[0-9a-fA-F]{60,68}")) {
            let tokens = FormTokens::new([7; 32], false);
            let mut request = Request::new(axum::body::Body::empty());
            for cookie in &cookies {
                if let Ok(value) = HeaderValue::from_bytes(cookie) {
                    request.headers_mut().append(axum::http::header::COOKIE, value);
                }
            }
            if let Some(planted) = &planted {
                if let Ok(value) = HeaderValue::from_str(&format!("a=b; portal_anon={planted}")) {
                    request.headers_mut().append(axum::http::header::COOKIE, value);
                }
            }
            if let Some(AnonId(id)) = tokens.visitor_in(&request) {
                prop_assert_eq!(id.len(), 64);
                prop_assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
    }
}
