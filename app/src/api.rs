//! Server fns: thin shims over [`crate::service::PortalService`]. Each reads the service from
//! context, makes one call and returns. Endpoints are fixed so that plain HTML forms can post to
//! them without JavaScript.

use crate::{
    dto::{SessionStatus, SessionView, SiteInfo},
    error::PortalError,
};
use leptos::prelude::*;

/// Facts for the login page (organization name, whether it is enabled, demo mode).
/// Every call takes `org`: at the root, the organization it is for (else the default); under
/// an organization's prefix, if sent, it must be that one.
#[server(endpoint = "site_info")]
pub async fn get_site_info(org: Option<String>) -> Result<SiteInfo, PortalError> {
    let (service, request) = crate::service::portal()?;
    service.site_info_named(&request, named(&org))
}

/// The form token to put in every state-changing form (`csrf` field).
#[server(endpoint = "form_token")]
pub async fn get_form_token(org: Option<String>) -> Result<String, PortalError> {
    let (service, request) = crate::service::portal()?;
    service.form_token(&request, named(&org)).await
}

/// The `org` field as sent; empty: not sent.
#[cfg(feature = "ssr")]
fn named(org: &Option<String>) -> Option<&str> {
    org.as_deref().filter(|o| !o.is_empty())
}

/// Logs in and opens an access session; a plain form post is redirected to the session page
/// of the organization's portal.
#[server(endpoint = "login")]
pub async fn login(
    username: String,
    password: String,
    csrf: Option<String>,
    org: Option<String>,
) -> Result<(), PortalError> {
    let (service, request) = crate::service::portal()?;
    let input = crate::service::LoginInput {
        username,
        password,
        form_token: csrf.unwrap_or_default(),
        organization: named(&org).map(str::to_owned),
    };
    let view = service.login(&request, input).await?;
    crate::service::redirect(&request, &format!("{}/session", view.base));
    Ok(())
}

/// The caller's active access session, or `None`.
#[server(endpoint = "current_session")]
pub async fn current_session(org: Option<String>) -> Result<Option<SessionView>, PortalError> {
    let (service, request) = crate::service::portal()?;
    service.current_session(&request, named(&org)).await
}

/// Where the live session state streams (Server-Sent Events, served by the server crate).
pub const LIVE_EVENTS_PATH: &str = "/session/events";

/// The caller's access session, active or ended (the island's fallback when the live stream at
/// `/session/events` is unavailable). `shown`: the [`SessionView::session_ref`] of the session
/// the asking page shows — one the browser no longer holds is said as it stands (running
/// without this browser, or how it ended), not as none.
#[server(endpoint = "session_status")]
pub async fn get_session_status(
    org: Option<String>,
    shown: Option<String>,
) -> Result<SessionStatus, PortalError> {
    let (service, request) = crate::service::portal()?;
    service
        .session_status(&request, named(&org), shown.as_deref())
        .await
}

/// Restarts the window (capped by the limit) and returns the new state; a plain form post is
/// redirected to the session page (also when the browser sends no Referer).
#[server(endpoint = "refresh")]
pub async fn refresh(
    csrf: Option<String>,
    org: Option<String>,
) -> Result<SessionView, PortalError> {
    let (service, request) = crate::service::portal()?;
    let view = service
        .refresh(&request, csrf.as_deref().unwrap_or_default(), named(&org))
        .await?;
    // The island's call gets the new state and stays on its page.
    if crate::service::accepts_html(&request.headers) {
        crate::service::redirect(&request, &format!("{}/session", view.base));
    }
    Ok(view)
}

/// Ends the access session; a plain form post is redirected to the organization's login page.
#[server(endpoint = "disconnect")]
pub async fn disconnect(csrf: Option<String>, org: Option<String>) -> Result<(), PortalError> {
    let (service, request) = crate::service::portal()?;
    let base = service
        .disconnect(&request, csrf.as_deref().unwrap_or_default(), named(&org))
        .await?;
    crate::service::redirect(&request, &format!("{base}/"));
    Ok(())
}
