//! Captive Portal API (RFC 8908): the client's access-session state as `application/captive+json`
//! at `/captive-portal/api`, so OS captive-portal assistants and scripts can read it. The URI is
//! what an operator announces with DHCP option 114 / RA (RFC 8910).

use super::client_ip::ClientIp;
use crate::access_session::{now_ms, AccessSessions};
use axum::{
    extract::{Extension, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use std::sync::Arc;

/// Path of the API.
pub const PATH: &str = "/captive-portal/api";

/// What the handler needs.
#[derive(Clone)]
pub struct CaptiveApi {
    /// Session lookups.
    pub sessions: AccessSessions,
    /// Organization of requests outside any `/o/{slug}/` portal (the default one).
    pub organization_id: Arc<str>,
    /// `https` when users reach the portal over TLS (RFC 8908 wants an HTTPS portal URL).
    pub scheme: &'static str,
    /// `[http] public_url`: the URLs' base when set (never the request's Host then).
    pub public_url: Option<crate::config::PublicUrl>,
}

/// RFC 8908 §5 JSON keys.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CaptiveState {
    /// True while the client has no access session.
    pub captive: bool,
    /// Where the user signs in or manages the session.
    #[serde(rename = "user-portal-url")]
    pub user_portal_url: String,
    /// Seconds until the session ends (only when not captive).
    #[serde(rename = "seconds-remaining", skip_serializing_if = "Option::is_none")]
    pub seconds_remaining: Option<u64>,
    /// Whether a refresh can push the end out (only when not captive).
    #[serde(rename = "can-extend-session", skip_serializing_if = "Option::is_none")]
    pub can_extend_session: Option<bool>,
}

/// `GET /captive-portal/api`
pub async fn captive_state(
    State(api): State<CaptiveApi>,
    client: Option<Extension<ClientIp>>,
    scope: Option<Extension<super::org_scope::OrgScope>>,
    demo: Option<Extension<super::Demo>>,
    headers: HeaderMap,
) -> Response {
    // `/o/{slug}/captive-portal/api` answers for that organization's portal.
    let (organization_id, prefix) = match scope {
        Some(Extension(scope)) => (scope.id, scope.base),
        None => (api.organization_id.to_string(), String::new()),
    };
    // A GET: a browser's refusal page links to this portal's sign-in page.
    let caller = super::Caller {
        headers: &headers,
        viewing: true,
        home: format!("{prefix}/"),
        demo: demo.is_some(),
    };
    let Some(Extension(ClientIp(ip))) = client else {
        // A trusted proxy's request without the forwarding header: whose state is unknown.
        return super::caller_error(
            &caller,
            StatusCode::BAD_REQUEST,
            "AddressUnknown",
            &app::error::PortalError::AddressUnknown.to_string(),
        );
    };
    let origin = match &api.public_url {
        Some(public) => public.origin(),
        None => {
            // An HTTP/1.0 request may come without Host: the URLs would have no host to name
            // (the Host check let it through; only this API needs one).
            let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
                return super::caller_error(
                    &caller,
                    StatusCode::BAD_REQUEST,
                    "BadHost",
                    "Bad request: the captive-portal API needs a Host header to name the portal's URLs (or set [http] public_url).",
                );
            };
            format!("{}://{host}", api.scheme)
        }
    };
    let base = format!("{origin}{prefix}");
    let state = match api.sessions.active_for_client(&organization_id, ip).await {
        Ok(Some(session)) => CaptiveState {
            captive: false,
            user_portal_url: format!("{base}/session"),
            seconds_remaining: Some(((session.expires_at - now_ms()).max(0) / 1000) as u64),
            can_extend_session: Some(api.sessions.can_extend(&session)),
        },
        Ok(None) => CaptiveState {
            captive: true,
            user_portal_url: format!("{base}/"),
            seconds_remaining: None,
            can_extend_session: None,
        },
        Err(e) => {
            // Devices poll this API: while the database is away every poll fails alike.
            static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(left_out) = LOG.admit_if_away(
                matches!(&e, crate::access_session::SessionError::Storage(s) if s.is_unavailable()),
            ) {
                tracing::error!(error = %crate::portal_backend::error_chain(&e), similar_left_out = left_out, "captive portal API lookup failed");
            }
            return super::caller_error(
                &caller,
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &app::error::PortalError::Unavailable.to_string(),
            );
        }
    };
    let mut response = axum::Json(state).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/captive+json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    response
}
