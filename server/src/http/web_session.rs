//! Each request's web session (design.md: server-side, in the portal's database; the cookie
//! carries nothing but its id): a `tower_sessions::Session` put into the request's extensions
//! from the session cookie, and after the answer
//! - saved, with its cookie set (a new or rotated id, the expiry renewed), when it changed and
//!   still holds something (not after a 5xx);
//! - or its cookie removed, when the request brought one and the session is empty (flushed at
//!   sign-out, expired, or an id that names nothing).
//!
//! A request with two session cookies has no session, and neither cookie is removed.
//!
//! This is what tower-sessions' `SessionManagerLayer` did, without the cookie jar of
//! tower-cookies under it, which parsed every cookie of every request into a jar, and without
//! a boxed, instrumented future of its own per request: one cookie is read and at most one
//! `Set-Cookie` written, inside the per-visitor middleware. The removal carries the cookie's
//! attributes (`Secure` included), as browsers need to remove a `__Host-` cookie.

use crate::storage::web_sessions::WebSessionStore;
use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use tower_sessions::{
    session::{Id, Session},
    Expiry,
};

/// The web sessions of a site: their store and their cookie.
#[derive(Clone)]
pub struct WebSessions {
    store: Arc<WebSessionStore>,
    cookie: &'static str,
    secure: bool,
}

/// A request's web session, as it was opened.
pub struct Opened {
    session: Session,
    /// The request brought a session cookie (well-formed or not).
    had_cookie: bool,
    /// Shared with the request's extensions: set by [`save_now`].
    saved: SavedDuringRequest,
}

/// In a request's extensions beside its [`Session`]: whether the request saved it itself
/// ([`save_now`]), so the answer does not save it again.
#[derive(Clone, Default)]
pub struct SavedDuringRequest(Arc<AtomicBool>);

/// Saves the request's web session now rather than after the answer, for a caller that must
/// know it is stored before it answers (a login: an access session the browser is not linked
/// to would be one its user can neither see nor end). The answer then only sets the cookie.
/// `saved` is the request's [`SavedDuringRequest`] (its extensions hold it), taken out so that a
/// task outliving the request's head can save it.
pub async fn save_now(
    saved: Option<&SavedDuringRequest>,
    session: &Session,
) -> Result<(), tower_sessions::session::Error> {
    session.save().await?;
    if let Some(saved) = saved {
        saved.0.store(true, Ordering::SeqCst);
    }
    Ok(())
}

impl WebSessions {
    /// Web sessions in `store`; `secure` cookies (HTTPS) are named `__Host-portal_session`,
    /// which browsers refuse unless it is Secure, host-only and for `/`.
    pub fn new(store: WebSessionStore, secure: bool) -> Self {
        WebSessions {
            store: Arc::new(store),
            cookie: if secure {
                "__Host-portal_session"
            } else {
                "portal_session"
            },
            secure,
        }
    }

    /// Puts the web session named by the request's cookie (or a new, empty one) into its
    /// extensions. It is loaded from the store when first read.
    pub fn open(&self, request: &mut Request) -> Opened {
        // Two cookies of that name (one planted for a narrower path, say, on plain HTTP where
        // the name has no `__Host-` prefix) name no session, and neither is removed: the
        // browser's own cookie is not ours to tell apart from the planted one.
        let mut values = super::cookie_values(request.headers(), self.cookie);
        let (value, more) = (values.next(), values.next().is_some());
        let had_cookie = value.is_some() && !more;
        let id = value
            .filter(|_| !more)
            .and_then(|value| match value.parse::<Id>() {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::debug!("malformed web-session id in a cookie: ignored");
                    None
                }
            });
        drop(values);
        if more {
            tracing::debug!("more than one web-session cookie: none is used");
        }
        let session = Session::new(id, self.store.clone(), Some(super::WEB_SESSION_EXPIRY));
        let saved = SavedDuringRequest::default();
        request.extensions_mut().insert(session.clone());
        request.extensions_mut().insert(saved.clone());
        Opened {
            session,
            had_cookie,
            saved,
        }
    }

    /// Saves the session if it changed and sets its cookie, or removes the cookie of an empty
    /// one. A session that cannot be saved (the database away, a full disk) leaves the answer
    /// as it is, without the cookie: what the request did is done (a Refresh's Interim-Update,
    /// a Disconnect's Stop), and the session keeps what it held before — a sign-in, whose new
    /// session must be stored, saved it itself before answering ([`save_now`]).
    pub async fn close(&self, opened: Opened, response: &mut Response) {
        let Opened {
            session,
            had_cookie,
            saved,
        } = opened;
        let empty = session.is_empty().await;
        let cookie = if empty {
            if !had_cookie {
                return;
            }
            format!("{}=; Max-Age=0{}", self.cookie, self.attributes())
        } else {
            let saved_already = saved.0.load(Ordering::SeqCst);
            // A failed request stores nothing — but one that stored its session already (a
            // sign-in's, under a new id: the record its cookie named is gone) still sends the
            // cookie of what it stored, or the browser loses its sessions (the web review of
            // session 83, F2).
            if !session.is_modified() || (response.status().is_server_error() && !saved_already) {
                return;
            }
            // A change that is not a sign-in or a refresh (a Disconnect in one organization,
            // a form token for another's page) keeps the deadline the longest linked window
            // needs: the session was opened with the default day.
            if !saved_already {
                if let Ok(Some(longest)) = session.get::<i64>(super::LONGEST_WINDOW_KEY).await {
                    session.set_expiry(Some(super::web_session_expiry(longest)));
                }
            }
            if let Err(e) = if saved_already {
                Ok(())
            } else {
                session.save().await
            } {
                tracing::error!(error = %e, "saving the web session failed; the answer stands without it");
                return;
            }
            let Some(id) = session.id() else {
                tracing::error!("a saved web session has no id");
                *response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
                return;
            };
            let max_age = match session.expiry() {
                Some(Expiry::OnInactivity(duration)) => {
                    format!("; Max-Age={}", duration.whole_seconds().max(0))
                }
                Some(Expiry::AtDateTime(at)) => format!(
                    "; Max-Age={}",
                    (at - tower_sessions::cookie::time::OffsetDateTime::now_utc())
                        .whole_seconds()
                        .max(0)
                ),
                Some(Expiry::OnSessionEnd) | None => String::new(),
            };
            format!("{}={id}{max_age}{}", self.cookie, self.attributes())
        };
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }

    /// The cookie's attributes: for the whole site, not for scripts, never sent cross-site,
    /// Secure under HTTPS.
    fn attributes(&self) -> &'static str {
        if self.secure {
            "; Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Strict"
        }
    }
}
