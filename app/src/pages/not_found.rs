//! Fallback for unknown paths.
use leptos::prelude::*;

/// 404 page with a way back (and the DEMO banner in demo mode, as on every page).
#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    let info = super::site_info();
    let demo = info.as_ref().is_some_and(|info| info.demo);
    // The sign-in page of the organization whose portal the path was under (`/o/{slug}/…`).
    let home = format!("{}/", info.map(|info| info.base).unwrap_or_default());
    // `/o/{slug}/…` of no organization (the server sends it here): said as such, and no link to
    // the first organization's sign-in, which is not the one the visitor was looking for.
    #[cfg(feature = "ssr")]
    let no_such_portal = leptos::prelude::with_context::<http::request::Parts, _>(|parts| {
        parts.uri.path() == crate::NO_SUCH_PORTAL
    })
    .unwrap_or(false);
    #[cfg(not(feature = "ssr"))]
    let no_such_portal = false;
    let body = if no_such_portal {
        view! {
            <p class="mt-4">"No organization's portal is at this address. Check the address you were given, or ask your network administrator for it."</p>
        }
        .into_any()
    } else {
        view! {
            <p class="mt-4"><a class="text-blue-800 underline" href=home>"Go to the sign-in page"</a></p>
        }
        .into_any()
    };
    view! {
        <crate::components::DemoBanner demo />
        <h1 class="text-2xl font-semibold">"Page not found"</h1>
        {body}
    }
}
