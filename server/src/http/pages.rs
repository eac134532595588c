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
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
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
    sign_in: Arc<SignInPages>,
}

/// The sign-in page of each organization (and path prefix) as last rendered, split around its
/// form token: every visitor is shown the same page but for that token. Kept with the
/// organization's facts it was rendered from (`SiteInfo`: name, active, branding, demo); when
/// they change the page is rendered afresh. The page with the notice a Disconnect leaves is kept
/// beside it (every journey's last page). A page with an error to show, or whose HTML
/// carries its render's CSP nonce (scripts: `cargo leptos watch`), is never kept.
#[derive(Default)]
struct SignInPages(std::sync::Mutex<std::collections::HashMap<String, Vec<Arc<SignInPage>>>>);

struct SignInPage {
    info: app::dto::SiteInfo,
    /// The notice it shows (after a Disconnect), if any: each is a page of its own.
    notice: Option<app::dto::Notice>,
    before_token: String,
    after_token: String,
}

/// What the form token is while a sign-in page is rendered to be kept (the tokens are hex).
const TOKEN_MARK: &str = "form-token-goes-here";

impl SignInPages {
    /// The organization's page at the prefix `info` names with `notice`, if it was rendered
    /// from `info`. Looked up by borrowed names (a page view allocates no key).
    fn get(
        &self,
        info: &app::dto::SiteInfo,
        notice: Option<app::dto::Notice>,
    ) -> Option<Arc<SignInPage>> {
        let pages = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pages
            .get(info.organization_id.as_str())?
            .iter()
            .find(|page| page.info == *info && page.notice == notice)
            .cloned()
    }

    fn put(&self, page: SignInPage) {
        let mut pages = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the organizations (each at `/` or `/o/{slug}`); a full map starts over.
        if pages.len() >= 4096 {
            pages.clear();
        }
        let kept = pages.entry(page.info.organization_id.clone()).or_default();
        kept.retain(|old| old.info.base != page.info.base || old.notice != page.notice);
        kept.push(Arc::new(page));
    }
}

impl Pages {
    /// The pages of `portal`, with Leptos's options.
    pub fn new(options: LeptosOptions, portal: Portal) -> Self {
        // What anything Leptos spawns during a render would run on.
        let _ = any_spawner::Executor::init_tokio();
        Pages {
            options: Arc::new(options),
            portal,
            sign_in: Arc::default(),
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
    // A script caller (no `text/html` in its `Accept`) gets the error as JSON, as every
    // error (black-box tester U's D1: the page's HTML).
    if !app::service::accepts_html(request.headers()) {
        return super::caller_error(
            &super::Caller::of(&request),
            axum::http::StatusCode::NOT_FOUND,
            "NotFound",
            "There is nothing at this address.",
        );
    }
    let (head, _body) = request.into_parts();
    render_at(&pages, head, super::org_scope::NO_SUCH_PORTAL)
}

/// A method an address does not take (a page or an endpoint asked for with `DELETE`, say):
/// 405, said as every error is — a page for a browser, JSON for a script caller (black-box
/// tester U's D1: an empty answer).
pub async fn wrong_method(request: Request) -> Response {
    super::caller_error(
        &super::Caller::of(&request),
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "This address does not take that method.",
    )
}

/// Renders the page at `path` (with its query) for the request `head`.
fn render_at(pages: &Pages, mut head: Parts, path: &str) -> Response {
    let page = app::Page::at(path);
    // The failed form post this page shows, from the flash cookie (`http::flash`), and the
    // username it was tried with — or the failed sign-in whose answer never reached the
    // browser (the page reloaded during it), as its answer would have shown it.
    let flash = head
        .extensions
        .get::<super::flash::FormError>()
        .cloned()
        .or_else(|| untold_failure(&mut head));
    let form_error = flash
        .as_ref()
        .map(|e| ServerActionError::new(&e.path, &e.err));
    if let (Some(flash), Some(data)) = (flash, head.extensions.get_mut::<app::pages::PageData>()) {
        data.form_failed = true;
        if let Some(username) = flash.username {
            data.username = Some(username);
        }
    }
    // What the sign-in page says after a Disconnect, from the flash cookie too.
    let notice = head.extensions.get::<app::dto::Notice>().copied();
    if let (Some(notice), Some(data)) = (notice, head.extensions.get_mut::<app::pages::PageData>())
    {
        data.notice = Some(notice);
    }
    if page == app::Page::SignIn && form_error.is_none() {
        let signed_in = head
            .extensions
            .get::<app::pages::PageData>()
            .is_some_and(|data| data.signed_in);
        if signed_in {
            let base = pages.portal.0.site_info(&head).base;
            return to_session_page(&base);
        }
        return sign_in(pages, head, notice);
    }
    // A page whose data could not be read (the database away) says so in its body, and in
    // its status for scripts and monitors: not a 200.
    let failed = head
        .extensions
        .get::<app::pages::PageData>()
        .and_then(|data| data.session.as_ref()?.as_ref().err())
        .map(crate::portal_backend::status_of);
    let mut response = render_page(pages, head, page, form_error);
    if let Some(status) = failed.filter(|_| response.status() == StatusCode::OK) {
        *response.status_mut() = status;
    }
    response
}

/// The page data's failed sign-in whose answer never reached the browser, taken, as the form
/// error its answer would have left ([`super::flash::FormError`]).
fn untold_failure(head: &mut Parts) -> Option<super::flash::FormError> {
    use base64::Engine as _;
    use leptos::server_fn::{error::FromServerFnError as _, ServerFn as _};
    let data = head.extensions.get_mut::<app::pages::PageData>()?;
    let (error, typed) = data.untold_failure.take()?;
    Some(super::flash::FormError {
        path: app::api::Login::PATH.to_owned(),
        err: base64::engine::general_purpose::URL_SAFE.encode(error.ser()),
        username: (!typed.is_empty()).then_some(typed),
    })
}

/// The answer to a signed-in browser asking for the sign-in page (of the portal at `base`):
/// a 302 to its session page, like the session page's to the sign-in page without a session.
fn to_session_page(base: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/session")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The sign-in page without an error to show (with `notice`, or without): the organization's
/// kept page with this visitor's form token, else rendered (and kept, see [`SignInPages`]).
fn sign_in(pages: &Pages, mut head: Parts, notice: Option<app::dto::Notice>) -> Response {
    // Tokens are hex: put in as they are (anything else is rendered, and escaped, below).
    let token = match head.extensions.get::<app::pages::PageData>() {
        Some(app::pages::PageData {
            form_token: Some(Ok(token)),
            ..
        }) if token.bytes().all(|b| b.is_ascii_hexdigit()) => token.clone(),
        _ => return render_page(pages, head, app::Page::SignIn, None),
    };
    let info = pages.portal.0.site_info(&head);
    if let Some(kept) = pages.sign_in.get(&info, notice) {
        return sign_in_response(&kept, &token);
    }
    // Rendered with a mark where the token goes, split there and kept.
    head.extensions.insert(app::pages::PageData {
        form_token: Some(Ok(TOKEN_MARK.to_string())),
        notice,
        ..app::pages::PageData::default()
    });
    let (html, status, headers) = render_html(pages, head, app::Page::SignIn, None);
    let nonce = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .and_then(|csp| csp.split("'nonce-").nth(1))
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_default();
    let split = match html.split_once(TOKEN_MARK) {
        Some((before, after))
            if status.is_none()
                && !after.contains(TOKEN_MARK)
                && !nonce.is_empty()
                && !html.contains(nonce) =>
        {
            Some((before.to_string(), after.to_string()))
        }
        _ => None,
    };
    let Some((before_token, after_token)) = split else {
        // Not a page to keep: answered as rendered, with the visitor's token in place.
        return page_response(html.replace(TOKEN_MARK, &token), status, headers);
    };
    let kept = SignInPage {
        info,
        notice,
        before_token,
        after_token,
    };
    let response = sign_in_response(&kept, &token);
    pages.sign_in.put(kept);
    response
}

/// A kept sign-in page with `token`, and the headers its render sets (a fresh CSP nonce).
fn sign_in_response(page: &SignInPage, token: &str) -> Response {
    let mut html =
        String::with_capacity(page.before_token.len() + token.len() + page.after_token.len());
    html.push_str(&page.before_token);
    html.push_str(token);
    html.push_str(&page.after_token);
    let mut response = Response::new(Body::from(html));
    let headers = response.headers_mut();
    let nonce = format!("{:032x}", rand::random::<u128>());
    if let Ok(csp) = HeaderValue::from_str(&app::content_security_policy(&nonce)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Renders `page` for the request `head`.
fn render_page(
    pages: &Pages,
    head: Parts,
    page: app::Page,
    form_error: Option<ServerActionError>,
) -> Response {
    let (html, status, headers) = render_html(pages, head, page, form_error);
    page_response(html, status, headers)
}

/// The answer of a rendered page: its HTML, with the status and headers its render set — a
/// notice it left for the next page ([`app::pages::notice_next`]) for the flash layer to carry.
fn page_response(html: String, status: Option<StatusCode>, mut headers: HeaderMap) -> Response {
    let notice = super::flash::NoticeNext::take_mark(&mut headers);
    let mut response = Response::new(Body::from(html));
    if let Some(status) = status {
        *response.status_mut() = status;
    }
    *response.headers_mut() = headers;
    if let Some(notice) = notice {
        response.extensions_mut().insert(notice);
    }
    response
}

/// Renders `page` for the request `head`: its HTML, and the status and headers the render set.
fn render_html(
    pages: &Pages,
    head: Parts,
    page: app::Page,
    form_error: Option<ServerActionError>,
) -> (String, Option<StatusCode>, HeaderMap) {
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
        // A notice for the next page: marked as a server fn marks its own (`page_response`
        // turns it into what the flash layer carries).
        provide_context(app::pages::PageNoticeNext(Arc::new(
            super::flash::mark_notice,
        )));
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

    let set = std::mem::take(&mut *options.0.write().unwrap_or_else(|p| p.into_inner()));
    let mut headers = set.headers;
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("text/html; charset=utf-8"));
    (html, set.status, headers)
}
