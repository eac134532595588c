//! The session panel island: countdown, Refresh, Disconnect.
//!
//! Server-rendered, it is complete HTML with two real forms that post to the `refresh` and
//! `disconnect` server fns, so it works without JavaScript. Hydrated, it ticks the countdown and
//! submits the forms with fetch. The remaining time always comes from the server (`remaining_ms`);
//! the browser only measures elapsed time with its monotonic clock.

use crate::{
    api::{Disconnect, Refresh},
    components::ErrorMessage,
    dto::{EndsBy, SessionView},
};
use leptos::{prelude::*, server_fn::ServerFn};

/// Countdown and controls for one access session.
#[island]
pub fn SessionPanel(session: SessionView, form_token: String) -> impl IntoView {
    let state = RwSignal::new(session);
    let now = RwSignal::new(monotonic_ms());
    let deadline = RwSignal::new(now.get_untracked() + state.get_untracked().remaining_ms as f64);
    let refresh = server_action::<Refresh>();
    let disconnect = server_action::<Disconnect>();
    let remaining_secs = move || ((deadline.get() - now.get()).max(0.0) / 1000.0).ceil() as u64;

    #[cfg(feature = "hydrate")]
    {
        use std::time::Duration;
        let ticker =
            set_interval_with_handle(move || now.set(monotonic_ms()), Duration::from_millis(250))
                .ok();
        on_cleanup(move || {
            if let Some(ticker) = ticker {
                ticker.clear();
            }
        });
        Effect::new(move |_| {
            if let Some(Ok(fresh)) = refresh.value().get() {
                deadline.set(monotonic_ms() + fresh.remaining_ms as f64);
                state.set(fresh);
            }
        });
        Effect::new(move |_| {
            let disconnected = matches!(disconnect.value().get(), Some(Ok(())));
            if disconnected || remaining_secs() == 0 {
                let _ = window().location().set_href("/");
            }
        });
    }

    let error = Signal::derive(move || {
        let refresh_error = refresh.value().get().and_then(Result::err);
        refresh_error.or_else(|| disconnect.value().get().and_then(Result::err))
    });
    let busy = move || refresh.pending().get() || disconnect.pending().get();
    let ends_text = move || {
        let s = state.get();
        match s.ends_by {
            EndsBy::Window => format!(
                "Ends at {} UTC unless you refresh. A refresh gives you {} again.",
                s.ends_at_utc,
                format_length(s.window_secs)
            ),
            EndsBy::Limit => format!(
                "Ends at {} UTC: the maximum session length. A refresh cannot extend it.",
                s.ends_at_utc
            ),
        }
    };

    let refresh_url = <Refresh as ServerFn>::PATH;
    let (refresh_token, disconnect_token) = (form_token.clone(), form_token.clone());
    let disconnect_url = <Disconnect as ServerFn>::PATH;
    view! {
        <section class="rounded-lg bg-white p-6 shadow" aria-labelledby="session-title">
            <h1 id="session-title" class="text-2xl font-semibold">"You are connected"</h1>
            <dl class="mt-4 grid grid-cols-[auto_1fr] gap-x-4 gap-y-1 text-sm">
                <dt class="text-slate-600">"User"</dt>
                <dd data-testid="username">{move || state.get().username}</dd>
                <dt class="text-slate-600">"Organization"</dt>
                <dd>{move || state.get().organization}</dd>
                <dt class="text-slate-600">"Device address"</dt>
                <dd data-testid="client-ip">{move || state.get().client_ip}</dd>
            </dl>
            <p class="mt-6 text-center text-sm text-slate-600">"Time left"</p>
            <p role="timer" aria-label="Time left" class="text-center font-mono text-5xl tabular-nums">
                {move || format_clock(remaining_secs())}
            </p>
            <p data-testid="ends" class="mt-2 text-center text-sm text-slate-700">{ends_text}</p>
            <ErrorMessage error />
            <div class="mt-6 grid grid-cols-2 gap-3">
                <form method="post" action=refresh_url
                    on:submit=move |ev: leptos::ev::SubmitEvent| {
                        ev.prevent_default();
                        refresh.dispatch(Refresh { csrf: Some(refresh_token.clone()) });
                    }>
                    <input type="hidden" name="csrf" value=form_token.clone() />
                    <button type="submit" disabled=busy
                        class="w-full rounded bg-blue-800 px-4 py-2 font-semibold text-white hover:bg-blue-900 disabled:opacity-60">
                        "Refresh"
                    </button>
                </form>
                <form method="post" action=disconnect_url
                    on:submit=move |ev: leptos::ev::SubmitEvent| {
                        ev.prevent_default();
                        disconnect.dispatch(Disconnect { csrf: Some(disconnect_token.clone()) });
                    }>
                    <input type="hidden" name="csrf" value=form_token />
                    <button type="submit" disabled=busy
                        class="w-full rounded border border-slate-500 px-4 py-2 font-semibold hover:bg-slate-100 disabled:opacity-60">
                        "Disconnect"
                    </button>
                </form>
            </div>
        </section>
    }
}

/// On the server, a `ServerAction` (it shows a no-JS form post's error, carried back in the URL);
/// in the browser, a plain `Action` calling the server fn, which keeps the URL-error decoding
/// out of the WASM every user downloads.
fn server_action<S>() -> Action<S, Result<S::Output, S::Error>>
where
    S: ServerFn + Clone + Send + Sync + 'static,
    S::Output: Send + Sync + 'static,
    S::Error: Send + Sync + 'static,
{
    #[cfg(not(feature = "hydrate"))]
    {
        *ServerAction::<S>::new()
    }
    #[cfg(feature = "hydrate")]
    {
        Action::new(|input: &S| input.clone().run_on_client())
    }
}

/// Milliseconds on the browser's monotonic clock (0 on the server, where only differences of
/// this value are used).
fn monotonic_ms() -> f64 {
    #[cfg(feature = "hydrate")]
    {
        window().performance().map(|p| p.now()).unwrap_or_default()
    }
    #[cfg(not(feature = "hydrate"))]
    {
        0.0
    }
}

/// `H:MM:SS` above an hour, `MM:SS` below.
pub fn format_clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// A duration in words: "4 hours", "20 minutes", "1 hour 30 minutes", "45 seconds".
pub fn format_length(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(plural(h, "hour"));
    }
    if m > 0 {
        parts.push(plural(m, "minute"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(plural(s, "second"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_shows_hours_only_when_needed() {
        assert_eq!(format_clock(0), "00:00");
        assert_eq!(format_clock(59), "00:59");
        assert_eq!(format_clock(3599), "59:59");
        assert_eq!(format_clock(4 * 3600 + 62), "4:01:02");
    }

    #[test]
    fn lengths_read_as_words() {
        assert_eq!(format_length(4 * 3600), "4 hours");
        assert_eq!(format_length(20), "20 seconds");
        assert_eq!(format_length(5400), "1 hour 30 minutes");
        assert_eq!(format_length(60), "1 minute");
    }
}
