//! The pages' handler: each page renders in one synchronous pass (its data was loaded by the
//! `per_visitor` middleware before) into one string, answered with its length.
//!
//! Leptos's own handler (`leptos_axum`'s `render_app_async_with_context`) renders through a
//! stream built for pages that wait on resources: it copies the request's head into the
//! page's context, boxes a stream of chunks, waits for deferred data and answers with a
//! chunked body. None of that serves a page with nothing to wait for, and at 64 users it was
//! an eighth of the portal's CPU. This handler provides the contexts the pages read (the
//! request's head — moved, not copied — the response options, a redirect
//! hook, the CSP nonce, the portal service, a failed form post's error) and renders the shell
//! around the page the path names (`app::Page`). There is no router: the pages are only ever
//! rendered here, and Leptos's router, matching the path on every render, was over half of a
//! page render. A page's redirect is a 302 for every caller. A path that is neither a page nor
//! a file is answered by the app's not-found page (404).
//!
//! The shell writes the `<head>` itself (title, the organization's stylesheet): leptos_meta
//! collected them during the render and then scanned and copied the whole page to insert them.
//! The page's reactive owner is cleaned up when the render ends.

use app::service::Portal;
use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::Response,
};
use leptos::server::ServerActionError;
use leptos::{
    prelude::{provide_context, LeptosOptions},
    reactive::owner::Owner,
    tachys::view::{Position, RenderHtml},
};
use leptos_axum::ResponseOptions;
use std::sync::Arc;

/// Bytes reserved for a page's HTML: more than the largest page (the session page, ~5 KB).
const PAGE_CAPACITY: usize = 8 * 1024;

/// What every page render needs. Cheap to clone.
#[derive(Clone)]
pub struct Pages {
    options: Arc<LeptosOptions>,
    portal: Portal,
}

impl Pages {
    /// The pages of `portal`, with Leptos's options.
    pub fn new(options: LeptosOptions, portal: Portal) -> Self {
        // What anything Leptos spawns during a render would run on.
        let _ = any_spawner::Executor::init_tokio();
        Pages {
            options: Arc::new(options),
            portal,
        }
    }
}

/// Renders the page at the request's path.
pub async fn render(State(pages): State<Pages>, request: Request) -> Response {
    let (head, _body) = request.into_parts();
    let path = head
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    render_at(&pages, head, &path)
}

/// Renders the not-found page (404), whatever the path: a path nothing else answered is never
/// matched against the pages (`/x/../session` is not `/session`).
pub async fn not_found(State(pages): State<Pages>, request: Request) -> Response {
    let (head, _body) = request.into_parts();
    render_at(&pages, head, super::org_scope::NO_SUCH_PORTAL)
}

/// Renders the page at `path` (with its query) for the request `head`.
fn render_at(pages: &Pages, head: Parts, path: &str) -> Response {
    let page = app::Page::at(path);
    // The failed form post this page shows, from the flash cookie (`http::flash`).
    let form_error = head
        .extensions
        .get::<super::flash::FormError>()
        .map(|e| ServerActionError::new(&e.path, &e.err));
    let options = ResponseOptions::default();
    let owner = Owner::new_root(Some(Arc::new(hydration_context::SsrSharedContext::new())));
    let html = owner.with(|| {
        if let Some(error) = form_error {
            provide_context(error);
        }
        provide_context(head);
        provide_context(options.clone());
        // A page's redirect is a 302 whoever asks.
        let redirect = options.clone();
        provide_context(app::pages::PageRedirect(Arc::new(move |path| {
            if let Ok(location) = HeaderValue::from_str(path) {
                redirect.insert_header(header::LOCATION, location);
                redirect.set_status(StatusCode::FOUND);
            }
        })));
        leptos::nonce::provide_nonce();
        provide_context(pages.portal.clone());
        // Into a buffer that holds any page (tachys's estimate of a page's length leaves out
        // everything dynamic: the buffer would grow by copying several times).
        let mut html = String::with_capacity(PAGE_CAPACITY);
        app::shell(LeptosOptions::clone(&pages.options), page).to_html_with_buf(
            &mut html,
            &mut Position::FirstChild,
            true,
            false,
            vec![],
        );
        html
    });
    owner.unset_with_forced_cleanup();

    let mut response = Response::new(Body::from(html));
    let set = std::mem::take(&mut *options.0.write().unwrap_or_else(|p| p.into_inner()));
    if let Some(status) = set.status {
        *response.status_mut() = status;
    }
    let headers = response.headers_mut();
    headers.extend(set.headers);
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("text/html; charset=utf-8"));
    response
}
