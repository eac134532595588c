//! The server fns' handler. Like `leptos_axum`'s, it runs the server fn registered at the
//! request's path in a reactive owner of its own, with the request's head, the response
//! options and the portal service in context; a plain form post (Accept: text/html) without a
//! Location of its own is sent back to its Referer; the status and headers the server fn set are
//! applied. Unlike it, the request's head is moved into the context, not copied: the server fn
//! itself is given the method, URI, headers and body it decodes from, and the portal reads the
//! head's extensions (web session, client address, organization scope) from the context, once
//! (`app::service::portal`). `leptos_axum` copied the head — headers and every extension — for
//! the context, and the context's reader copied it again.

use app::service::Portal;
use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    response::Response,
};
use leptos::{
    prelude::provide_context,
    reactive::{computed::ScopedFuture, owner::Owner},
};
use leptos_axum::ResponseOptions;

/// A server fn asked for with a method other than its own. A browser's GET (a bookmark, the
/// address bar after a post that never got its answer — the portal was down) is sent to the
/// page that says where it stands: the sign-in page for `login`, else the session page (a
/// Disconnect that never arrived shows the session still running there; black-box tester U's
/// D2: a blank 405 said nothing). Anything else: 405, `Allow` naming the method.
pub async fn wrong_method(request: Request) -> Response {
    let browser = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) && app::service::accepts_html(request.headers());
    if browser {
        let mut response = Response::new(axum::body::Body::empty());
        let base = request
            .extensions()
            .get::<super::org_scope::OrgScope>()
            .map(|scope| scope.base.clone())
            .unwrap_or_default();
        let login = request.uri().path() == <app::api::Login as leptos::server_fn::ServerFn>::PATH;
        let to = if login {
            format!("{base}/")
        } else {
            format!("{base}/session")
        };
        *response.status_mut() = StatusCode::SEE_OTHER;
        if let Ok(location) = header::HeaderValue::from_str(&to) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return response;
    }
    // Said as every error is (black-box tester U's D1: an empty answer).
    let mut response = super::caller_error(
        &super::Caller::of(&request),
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "This address takes POST only.",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    response
}

/// Runs the server fn at the request's path (404, in the server fns' error form, when there
/// is none).
pub async fn handle(State(portal): State<Portal>, request: Request) -> Response {
    let Some(mut server_fn) = leptos::server_fn::axum::get_server_fn_service(
        request.uri().path(),
        request.method().clone(),
    ) else {
        return super::caller_error(
            &super::Caller::of(&request),
            StatusCode::NOT_FOUND,
            "NotFound",
            // The path is the caller's text: not repeated back.
            if request.uri().path() == super::org_scope::NO_SUCH_PORTAL_API {
                "No organization's portal is at this address: check the name after /o/."
            } else {
                "There is no server function at this path."
            },
        );
    };
    let (head, body) = request.into_parts();
    let mut call = Request::new(body);
    *call.method_mut() = head.method.clone();
    *call.uri_mut() = head.uri.clone();
    *call.headers_mut() = head.headers.clone();
    let back_to = app::service::accepts_html(&head.headers)
        .then(|| head.headers.get(header::REFERER).cloned())
        .flatten();
    let owner = Owner::new();
    owner
        .with(|| {
            ScopedFuture::new(async move {
                provide_context(head);
                let options = ResponseOptions::default();
                provide_context(options.clone());
                provide_context(portal);
                let mut response = server_fn.run(call).await;
                if let Some(referer) = back_to {
                    if !response.headers().contains_key(header::LOCATION) {
                        *response.status_mut() = StatusCode::FOUND;
                        response.headers_mut().insert(header::LOCATION, referer);
                    }
                }
                let set =
                    std::mem::take(&mut *options.0.write().unwrap_or_else(|p| p.into_inner()));
                if let Some(status) = set.status {
                    *response.status_mut() = status;
                }
                response.headers_mut().extend(set.headers);
                response
            })
        })
        .await
}
