//! One file per route; all rendered on the server.
//!
//! A page's data is loaded before the page renders ([`load`], called by the server for every
//! page request) and read from the request by the page ([`data`]): the pages render in one
//! synchronous pass, without resources or `Suspense` (they are never rendered in the browser:
//! only their islands are).
pub mod login;
pub mod not_found;
pub mod session;

use crate::{dto::SessionStatus, error::PortalError};

/// What the page of a request shows, beyond the organization's facts (read where needed).
#[derive(Clone, Debug, Default)]
pub struct PageData {
    /// The web session's form token (every page with a form).
    pub form_token: Option<Result<String, PortalError>>,
    /// How the web session's access session stands (the session page): active, ended (and
    /// why), or none.
    pub session: Option<Result<SessionStatus, PortalError>>,
    /// The username a failed sign-in was tried with (the sign-in form fills it in again).
    pub username: Option<String>,
    /// What the sign-in page tells the visitor after what they just did (Disconnect).
    pub notice: Option<crate::dto::Notice>,
    /// The page shows a failed form post's error (its title says so first).
    pub form_failed: bool,
    /// The browser's session runs (the sign-in page): it is sent to its session page instead.
    pub signed_in: bool,
    /// The failure of the browser's sign-in whose answer never reached it (the page reloaded
    /// during it), and the name typed: the sign-in page shows it as that sign-in's error.
    pub untold_failure: Option<(PortalError, String)>,
    /// The session page of a session running for another address than this request's: the
    /// request's (the device moved to another network, or reaches the portal over IPv6 while
    /// its session is for its IPv4 address).
    pub elsewhere: Option<String>,
}

impl PageData {
    /// The form token, or empty if it could not be had (the form's post is then refused
    /// with a clear message).
    pub fn form_token(&self) -> String {
        self.form_token
            .clone()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

/// Loads what the page at `path` (after any `/o/{slug}` prefix) shows; None for a path that is
/// not a page with data.
#[cfg(feature = "ssr")]
pub async fn load(
    path: &str,
    service: &dyn crate::service::PortalService,
    request: &http::request::Parts,
) -> Option<PageData> {
    match path {
        // A browser whose session runs is shown that (a bookmark of the portal, the portal
        // opened again after signing in) rather than a form whose use would replace it. Only a
        // web session that names a session costs a lookup.
        // Its form token too: the sign-in page is shown to it all the same when it carries a
        // failed sign-in's error, with a form that works.
        "/" => {
            // Waits for the browser's sign-in under way, if any (a page reloaded during it).
            let signed_in = matches!(service.current_session(request, None).await, Ok(Some(_)));
            Some(PageData {
                signed_in,
                form_token: Some(service.form_token(request, None).await),
                // The sign-in it waited for, or gave up on a moment ago, failed: said here, as
                // its own answer would have.
                untold_failure: (!signed_in)
                    .then(|| service.sign_in_failure_untold(request))
                    .flatten(),
                ..PageData::default()
            })
        }
        "/session" => {
            // A session running for the address without this browser's link (`NotLinked`) is
            // kept: the page shows it only after a form post of its own failed (see
            // `SessionPage`).
            let session = service.session_status(request, None, None).await;
            // Only an active session's page has forms.
            let (form_token, elsewhere) = match &session {
                Ok(SessionStatus::Active(view)) => (
                    Some(service.form_token(request, None).await),
                    service
                        .client_address(request)
                        .filter(|here| *here != view.client_ip),
                ),
                _ => (None, None),
            };
            Some(PageData {
                form_token,
                session: Some(session),
                elsewhere,
                ..PageData::default()
            })
        }
        _ => None,
    }
}

/// How a page sends the browser elsewhere instead of rendering (the server provides it: a 302
/// with `Location`).
#[derive(Clone)]
pub struct PageRedirect(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

/// Sends the browser to `path` instead of this page (nothing happens where no [`PageRedirect`]
/// is provided).
pub fn redirect(path: &str) {
    if let Some(PageRedirect(to)) = leptos::prelude::use_context::<PageRedirect>() {
        to(path);
    }
}

/// How a page leaves a notice for the page the browser shows next (the server provides it: the
/// notice travels as the flash cookie a Disconnect's does).
#[derive(Clone)]
pub struct PageNoticeNext(pub std::sync::Arc<dyn Fn(crate::dto::Notice) + Send + Sync>);

/// Leaves `notice` for the next page (nothing happens where no [`PageNoticeNext`] is provided).
pub fn notice_next(notice: crate::dto::Notice) {
    if let Some(PageNoticeNext(leave)) = leptos::prelude::use_context::<PageNoticeNext>() {
        leave(notice);
    }
}

/// The data [`load`] put on this request (empty if none).
pub fn data() -> PageData {
    #[cfg(feature = "ssr")]
    {
        // Read in place: the request's head is not copied for it.
        leptos::prelude::with_context::<http::request::Parts, _>(|parts| {
            parts.extensions.get::<PageData>().cloned()
        })
        .flatten()
        .unwrap_or_default()
    }
    #[cfg(not(feature = "ssr"))]
    PageData::default()
}

/// The organization's facts for the page (name, branding, demo mode), if the service is there.
pub fn site_info() -> Option<crate::dto::SiteInfo> {
    #[cfg(feature = "ssr")]
    {
        let service = leptos::prelude::use_context::<crate::service::Portal>()?;
        leptos::prelude::with_context::<http::request::Parts, _>(|request| {
            service.0.site_info(request)
        })
    }
    #[cfg(not(feature = "ssr"))]
    None
}
