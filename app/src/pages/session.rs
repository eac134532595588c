//! `/session` (and `/o/{slug}/session`): the user's access session in that organization. Rendered complete on the server (works without
//! JavaScript); the panel is an island that ticks and takes over Refresh/Disconnect once hydrated.
//! Without an active session the page redirects to the sign-in form.

use crate::{
    api::{current_session, get_form_token, get_site_info},
    components::{DemoBanner, ErrorMessage},
    islands::session_panel::SessionPanel,
};
use leptos::{either::EitherOf3, prelude::*};
use leptos_router::components::Redirect;

/// The session page.
#[component]
pub fn SessionPage() -> impl IntoView {
    let session = Resource::new_blocking(|| (), |_| current_session());
    let token = Resource::new_blocking(|| (), |_| get_form_token());
    let info = Resource::new_blocking(|| (), |_| get_site_info());
    view! {
        <Suspense>
            {move || Suspend::new(async move {
                let demo = info.await.is_ok_and(|i| i.demo);
                match session.await {
                    Ok(Some(view)) => EitherOf3::A(view! {
                        <DemoBanner demo />
                        {view.reply_message.clone().map(|message| view! {
                            <p data-testid="reply-message" class="mb-4 rounded bg-blue-50 px-4 py-3 text-blue-950">
                                {message}
                            </p>
                        })}
                        <section class="rounded-lg bg-white p-6 shadow" aria-labelledby="session-title">
                            <SessionPanel session=view.clone() form_token=token.await.unwrap_or_default() />
                            // Fixed for the session's life: rendered here, not in the island's WASM.
                            <dl class="mt-6 grid grid-cols-[auto_1fr] gap-x-4 gap-y-1 border-t border-slate-200 pt-4 text-sm">
                                <dt class="text-slate-600">"User"</dt>
                                <dd data-testid="username">{view.username.clone()}</dd>
                                <dt class="text-slate-600">"Organization"</dt>
                                <dd>{view.organization.clone()}</dd>
                                <dt class="text-slate-600">"Device address"</dt>
                                <dd data-testid="client-ip">{view.client_ip.clone()}</dd>
                            </dl>
                        </section>
                        <noscript>
                            <p class="mt-4 text-center text-sm text-slate-600">
                                "Without JavaScript the time left does not count down or update by itself: reload the page to see it."
                            </p>
                        </noscript>
                        <IslandScripts />
                    }),
                    Ok(None) => {
                        let base = info.await.map(|i| i.base).unwrap_or_default();
                        EitherOf3::B(view! { <Redirect path=format!("{base}/") /> })
                    }
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
