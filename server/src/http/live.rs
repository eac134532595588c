//! Live session state for the session page: `GET /session/events`, a Server-Sent Events stream
//! (same origin, allowed by `connect-src 'self'`) of the web session's access-session status.
//! One event at once, one whenever that session changes (refresh in another tab, expiry,
//! Disconnect-Request, operator), and one every [`RESYNC`] so a page that slept re-syncs. The
//! stream ends after reporting an ended session (or none), and at shutdown. Streams are
//! counted ([`STREAMS_PER_SESSION`] per access session, half the portal's connections in all):
//! one signed-in client opening stream after stream cannot hold every connection the portal
//! serves (a code review's M1); a page refused one (429) polls instead.

use crate::{access_session::events::SessionEvents, portal_backend::PortalBackend};
use app::dto::SessionStatus;
use axum::{
    extract::State,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tower_sessions::Session;

/// Path of the stream.
pub const PATH: &str = app::api::LIVE_EVENTS_PATH;
/// A status is sent at least this often, whatever happens.
pub const RESYNC: Duration = Duration::from_secs(15);
/// Streams open at most for one access session: its tabs (a browser opens six connections to a
/// host over HTTP/1.1; more over HTTP/2), with room to spare.
pub const STREAMS_PER_SESSION: usize = 16;

/// The count of open streams for a portal serving `max_connections` at once: at most half of
/// them in all (the rest stays for pages, sign-ins and Disconnects), [`STREAMS_PER_SESSION`]
/// per access session.
pub(crate) fn stream_slots(max_connections: usize) -> super::serve::Slots<i64> {
    super::serve::Slots::limited((max_connections / 2).max(1), STREAMS_PER_SESSION)
}

/// What the stream handler needs.
#[derive(Clone)]
pub struct LiveState {
    /// Computes the status the page shows (same code as the status server fn).
    pub backend: Arc<PortalBackend>,
    /// Change notices.
    pub events: SessionEvents,
    /// Cancelled at shutdown: ends every open stream.
    pub stop: CancellationToken,
    /// The streams open ([`stream_slots`]).
    pub(crate) streams: super::serve::Slots<i64>,
}

/// How long a browser waits before it opens the stream again after one the portal's storage
/// trouble ended.
const RETRY_AFTER_TROUBLE: std::time::Duration = std::time::Duration::from_secs(15);

/// The stream's query: `shown`, the session the page shows (its `session_ref`).
#[derive(serde::Deserialize, Default)]
pub struct Asked {
    shown: Option<String>,
}

struct Watch {
    live: LiveState,
    id: Option<i64>,
    /// The portal the page is in (the organization, and the prefix its pages are under).
    scope: super::org_scope::OrgScope,
    ip: Option<std::net::IpAddr>,
    /// The session the page shows (its `session_ref`, as the page gave it).
    shown: Option<String>,
    notices: broadcast::Receiver<i64>,
    /// The organization cache's changes (None once its sender is gone), and whether it said
    /// the page's organization was disabled when last looked at: a disable or an enable is
    /// news to the page even before any session of it changed (a disable's stop held by a
    /// replica that died).
    organizations: Option<tokio::sync::watch::Receiver<u64>>,
    disabled: bool,
    first: bool,
    /// This stream's count, given back when it ends (or its client goes).
    _slot: super::serve::Slot<i64>,
    /// The link was followed to the session the browser holds (the first status read).
    followed: bool,
    done: bool,
}

impl Watch {
    /// Waits until this session may have changed (or the resync period passed). False at
    /// shutdown.
    async fn changed(&mut self) -> bool {
        let resync = tokio::time::sleep(RESYNC);
        tokio::pin!(resync);
        loop {
            tokio::select! {
                _ = self.live.stop.cancelled() => return false,
                _ = &mut resync => return true,
                notice = self.notices.recv() => match notice {
                    Ok(id) if Some(id) == self.id || id == crate::access_session::events::ANY_SESSION => return true,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return true,
                    Err(RecvError::Closed) => return false,
                },
                changed = async { self.organizations.as_mut()?.changed().await.ok() },
                    if self.organizations.is_some() =>
                {
                    if changed.is_none() {
                        self.organizations = None;
                        continue;
                    }
                    let disabled = self.live.backend.organization_disabled(&self.scope.id);
                    if disabled != self.disabled {
                        self.disabled = disabled;
                        return true;
                    }
                }
            }
        }
    }
}

/// `GET /session/events`.
pub async fn session_events(
    State(live): State<LiveState>,
    scope: Option<axum::extract::Extension<super::org_scope::OrgScope>>,
    ip: Option<axum::extract::Extension<super::client_ip::ClientIp>>,
    axum::extract::Query(asked): axum::extract::Query<Asked>,
    web: Session,
) -> Response {
    let scope = scope
        .map(|axum::extract::Extension(s)| s)
        .unwrap_or_default();
    // A web session that cannot be read now (the database away) is not "none": the page would
    // take its session for ended. The stream ends at once; the browser reconnects in 15 s (the
    // UI review's M3: by its default of ~3 s, every open page through the outage), polling
    // meanwhile.
    let id = match live.backend.linked_session_id(&web, &scope.id).await {
        Ok(id) => id,
        Err(_) => {
            let retry = futures_util::stream::once(async {
                Ok::<Event, Infallible>(Event::default().retry(RETRY_AFTER_TROUBLE))
            });
            return no_store(Sse::new(retry).into_response());
        }
    };
    // A stream without a session (none linked) ends after its first status; it still counts
    // in all while it is open.
    let Some(slot) = live.streams.take(id) else {
        crate::throttled!(
            warn,
            "a live stream refused: too many open (for this access session, or in all); its page polls instead"
        );
        return no_store(
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, "15")],
                "too many live streams are open for this session; the page asks every few seconds instead",
            )
                .into_response(),
        );
    };
    let watch = Watch {
        _slot: slot,
        notices: live.events.subscribe(),
        organizations: Some(live.backend.organization_changes()),
        disabled: live.backend.organization_disabled(&scope.id),
        live,
        id,
        scope,
        ip: ip.map(|axum::extract::Extension(ip)| ip.0),
        shown: asked.shown,
        first: true,
        followed: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        if w.done || (!w.first && !w.changed().await) {
            return None;
        }
        w.first = false;
        // The page was just shown with the session the browser holds (its link followed to the
        // one that replaced it, if another sign-in of the browser did): the stream watches
        // that one from its first status — and says it ended if it is replaced later, as the
        // rest of the page (user, address, message) is about it.
        let follow = if w.followed {
            crate::portal_backend::Follow::No
        } else {
            crate::portal_backend::Follow::Replacements
        };
        let status = match w
            .live
            .backend
            .status_and_session_for(w.id, &w.scope, (w.ip, w.shown.as_deref()), follow)
            .await
        {
            Ok((status, of)) => {
                (w.id, w.followed) = (of, true);
                status
            }
            // Storage trouble: say nothing this time; the next resync tries again.
            Err(_) => {
                return Some((
                    Ok::<Event, Infallible>(Event::default().comment("retry")),
                    w,
                ))
            }
        };
        w.done = !matches!(status, SessionStatus::Active(_));
        let event = Event::default()
            .json_data(&status)
            .unwrap_or_else(|_| Event::default().comment("unencodable"));
        Some((Ok(event), w))
    });
    no_store(
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

/// A session's status is the user's: stored by no cache (axum says only `no-cache`).
fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}
