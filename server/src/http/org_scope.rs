//! Which organization's portal a request is for: `/o/{slug}/…` is that organization's portal
//! (login, session, live updates, Captive API), everything else the default organization's.
//! The prefix is taken off before routing, so the pages and endpoints exist once; the scope
//! travels as a request extension. An unknown slug gets the 404 page (nothing reveals whether
//! an organization exists but is disabled: a disabled one is found and says it is unavailable).

use crate::organizations::Organizations;
use axum::{
    extract::Request,
    http::{Method, Uri},
    response::{IntoResponse, Redirect, Response},
};

/// Path the pages answer "no such portal" on (rewritten to for unknown slugs).
pub const NO_SUCH_PORTAL: &str = app::NO_SUCH_PORTAL;

/// Where a script's call under an unknown slug is sent (a server fn, the Captive Portal API,
/// the live updates, asked for by a caller that does not want a page): a path under `/api/`
/// that names no server fn, so the script gets the server fns' JSON 404, saying that no
/// organization is there. A browser's form post there (an organization deleted while its page
/// was open) gets the page that says so.
pub const NO_SUCH_PORTAL_API: &str = "/api/no-such-portal";

/// Whether `rest` (a path after `/o/{slug}`) is for scripts, not a page.
fn for_scripts(rest: &str) -> bool {
    rest.starts_with("/api/") || rest == super::captive::PATH || rest == super::live::PATH
}

/// Whether `rest` (a path after `/o/{slug}`) is the site's, not an organization's portal's:
/// the admin API exists once, at its own prefix (an ingress allow-list on that prefix must
/// cover every way to it).
fn site_wide(rest: &str) -> bool {
    rest.strip_prefix(super::admin::PREFIX)
        .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
}

/// The organization of a request and the path prefix its pages live under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrgScope {
    /// Organization id (slug).
    pub id: String,
    /// `""` for the default organization at `/`, else `/o/{slug}`.
    pub base: String,
}

/// Splits `/o/{slug}/rest` into the slug and `/rest`.
pub fn split_scoped(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/o/")?;
    match rest.find('/') {
        Some(at) => Some((&rest[..at], &rest[at..])),
        None => Some((rest, "/")),
    }
}

/// The prefix pages of organization `id` live under.
pub fn base_of(organizations: &Organizations, id: &str) -> String {
    if organizations.default_id() == id {
        String::new()
    } else {
        format!("/o/{id}")
    }
}

/// A page asked for under an organization's id in other letters (`/o/Beta/` for `beta`: ids
/// that differ only in case count as one) is sent to the same path under the id as written
/// (308). Only for GET and HEAD: a script's post to the wrong letters is not followed by
/// every client, and gets the same 404 as any unknown slug.
pub fn to_id_as_written(organizations: &Organizations, request: &Request) -> Option<Response> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let (slug, rest) = split_scoped(request.uri().path())?;
    if site_wide(rest) {
        return None;
    }
    let id = organizations.id_in_other_case(slug)?;
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    Some(Redirect::permanent(&format!("/o/{id}{rest}{query}")).into_response())
}

/// Sets [`OrgScope`] and takes the `/o/{slug}` prefix off the URI (before routing).
pub fn scope(organizations: &Organizations, request: &mut Request) {
    let path = request.uri().path().to_string();
    let scope = match split_scoped(&path) {
        Some((slug, rest)) => {
            let known = !slug.is_empty() && organizations.get(slug).is_some();
            let new_path = if known && !site_wide(rest) {
                rest
            } else if !known && for_scripts(rest) && !app::service::accepts_html(request.headers())
            {
                NO_SUCH_PORTAL_API
            } else {
                NO_SUCH_PORTAL
            };
            let query = request
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            if let Ok(uri) = format!("{new_path}{query}").parse::<Uri>() {
                *request.uri_mut() = uri;
            }
            known.then(|| OrgScope {
                id: slug.to_string(),
                base: format!("/o/{slug}"),
            })
        }
        None => Some(OrgScope {
            id: organizations.default_id(),
            base: String::new(),
        }),
    };
    if let Some(scope) = scope {
        request.extensions_mut().insert(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::split_scoped;

    #[test]
    fn scoped_paths_split_into_slug_and_rest() {
        assert_eq!(split_scoped("/o/acme"), Some(("acme", "/")));
        assert_eq!(split_scoped("/o/acme/"), Some(("acme", "/")));
        assert_eq!(split_scoped("/o/acme/session"), Some(("acme", "/session")));
        assert_eq!(
            split_scoped("/o/acme/api/login"),
            Some(("acme", "/api/login"))
        );
        assert_eq!(split_scoped("/session"), None);
        assert!(super::site_wide("/admin/api/v1"));
        assert!(super::site_wide("/admin/api/v1/organizations"));
        assert!(!super::site_wide("/admin/api/v10"));
        assert!(!super::site_wide("/session"));
        assert_eq!(split_scoped("/other/acme"), None);
    }
}
