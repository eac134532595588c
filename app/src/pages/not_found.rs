//! Fallback for unknown paths.
use leptos::prelude::*;

/// 404 page with a way back (and the DEMO banner in demo mode, as on every page).
#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    let demo = super::site_info().is_some_and(|info| info.demo);
    view! {
        <crate::components::DemoBanner demo />
        <h1 class="text-2xl font-semibold">"Page not found"</h1>
        <p class="mt-4"><a class="text-blue-800 underline" href="/">"Go to the sign-in page"</a></p>
    }
}
