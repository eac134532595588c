//! The interface the server fns need from the server (ssr only). The `server` crate implements
//! [`PortalService`] and provides it through Leptos context as [`Portal`]; server fns read it with
//! [`portal`] and make one call. Requests under `/o/{slug}/` are that organization's (the
//! server scopes them); the rest are the default organization's.

use crate::{
    dto::{SessionStatus, SessionView, SiteInfo},
    error::PortalError,
};
use http::request::Parts;
use leptos::prelude::use_context;
use std::sync::Arc;

/// Username and password as typed into the login form.
#[derive(Clone)]
pub struct LoginInput {
    /// As typed; validated by the service.
    pub username: String,
    /// As typed; never logged.
    pub password: String,
    /// The form token the page was rendered with (CSRF protection).
    pub form_token: String,
    /// The organization the form signs into (`org` field); None: the request's portal.
    pub organization: Option<String>,
}

/// What the UI asks of the server. `request` carries the web session and client address.
#[async_trait::async_trait]
pub trait PortalService: Send + Sync + 'static {
    /// Facts for the login page.
    fn site_info(&self, request: &Parts) -> SiteInfo;
    /// [`Self::site_info`] of the organization a call names (`org`, as every call's): the
    /// `/api/site_info` call.
    fn site_info_named(&self, request: &Parts, org: Option<&str>) -> Result<SiteInfo, PortalError>;
    /// The web session's form token, created on first use; every state-changing form carries it.
    /// `org`: each call's `org` field — at the root, the organization the call is for (else
    /// the default); under an organization's prefix, if sent, it must be that one (400).
    async fn form_token(&self, request: &Parts, org: Option<&str>) -> Result<String, PortalError>;
    /// Authenticates and opens an access session for the request's client.
    async fn login(
        self: Arc<Self>,
        request: &Parts,
        input: LoginInput,
    ) -> Result<SessionView, PortalError>;
    /// The web session's active access session, if any.
    async fn current_session(
        &self,
        request: &Parts,
        org: Option<&str>,
    ) -> Result<Option<SessionView>, PortalError>;
    /// The web session's access session, active or ended (live updates, polling fallback);
    /// `shown`: the asking page's session ([`crate::dto::SessionView::session_ref`]).
    async fn session_status(
        &self,
        request: &Parts,
        org: Option<&str>,
        shown: Option<&str>,
    ) -> Result<SessionStatus, PortalError>;
    /// Restarts the window of the web session's access session.
    async fn refresh(
        &self,
        request: &Parts,
        form_token: &str,
        org: Option<&str>,
    ) -> Result<SessionView, PortalError>;
    /// Ends the web session's access session (Accounting-Stop, User-Request); returns the
    /// path prefix of the organization's portal (where the user goes next).
    async fn disconnect(
        &self,
        request: &Parts,
        form_token: &str,
        org: Option<&str>,
    ) -> Result<String, PortalError>;
    /// The address the request came from, as sessions name it (None: not known).
    fn client_address(&self, _request: &Parts) -> Option<String> {
        None
    }
    /// The failure of this browser's sign-in whose answer never reached it (its user reloaded
    /// the page while the server was slow), with the name typed: told once, by the browser's
    /// next sign-in page.
    fn sign_in_failure_untold(&self, _request: &Parts) -> Option<(PortalError, String)> {
        None
    }
}

/// Whether the caller is a browser asking for a page (a plain form post or a page view), not a
/// script or the island (which ask for JSON).
pub fn accepts_html(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The service as stored in Leptos context.
#[derive(Clone)]
pub struct Portal(pub Arc<dyn PortalService>);

/// Reads the service and the current request from a server fn's context. The request's head
/// is taken out of the context, not copied (headers and every extension): a server fn reads
/// it once, here, and answers with [`redirect`], which needs no context of it.
pub fn portal() -> Result<(Arc<dyn PortalService>, Parts), PortalError> {
    let service = use_context::<Portal>().ok_or(PortalError::Internal { reference: None })?;
    let parts = leptos::prelude::take_context::<Parts>()
        .ok_or(PortalError::Internal { reference: None })?;
    Ok((service.0, parts))
}

/// Sends the caller of a server fn to `path` (`leptos_axum::redirect`, given the request):
/// a plain form post (Accept: text/html) with a 302, the island's call with the header that
/// makes its client follow.
pub fn redirect(request: &Parts, path: &str) {
    let Some(options) = use_context::<leptos_axum::ResponseOptions>() else {
        return;
    };
    let Ok(location) = http::HeaderValue::from_str(path) else {
        return;
    };
    options.insert_header(http::header::LOCATION, location);
    if accepts_html(&request.headers) {
        options.set_status(http::StatusCode::FOUND);
    } else {
        options.insert_header(
            http::HeaderName::from_static(leptos::server_fn::redirect::REDIRECT_HEADER),
            http::HeaderValue::from_static(""),
        );
    }
}
