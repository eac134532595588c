//! Fallback for unknown paths.
use leptos::prelude::*;

/// 404 page with a way back.
#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <h1 class="text-2xl font-semibold">"Page not found"</h1>
        <p class="mt-4"><a class="text-blue-800 underline" href="/">"Go to the sign-in page"</a></p>
    }
}
