//! `/session`: the user's access session. Rendered complete on the server (works without
//! JavaScript); the panel is an island that ticks and takes over Refresh/Disconnect once hydrated.
//! Without an active session the page redirects to the sign-in form.

use crate::{
    api::{current_session, get_form_token},
    components::ErrorMessage,
    islands::session_panel::SessionPanel,
};
use leptos::{either::EitherOf3, prelude::*};
use leptos_router::components::Redirect;

/// The session page.
#[component]
pub fn SessionPage() -> impl IntoView {
    let session = Resource::new_blocking(|| (), |_| current_session());
    let token = Resource::new_blocking(|| (), |_| get_form_token());
    view! {
        <Suspense>
            {move || Suspend::new(async move {
                match session.await {
                    Ok(Some(view)) => EitherOf3::A(view! {
                        <SessionPanel session=view form_token=token.await.unwrap_or_default() />
                        <IslandScripts />
                    }),
                    Ok(None) => EitherOf3::B(view! { <Redirect path="/" /> }),
                    Err(e) => EitherOf3::C(view! { <ErrorMessage error=Signal::stored(Some(e)) /> }),
                }
            })}
        </Suspense>
    }
}

/// The WASM loader, rendered only on pages that have an island so other pages download none.
#[component]
fn IslandScripts() -> impl IntoView {
    use_context::<LeptosOptions>()
        .map(|options| view! { <HydrationScripts options islands=true /> })
}
