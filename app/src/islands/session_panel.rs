//! The session panel island: countdown, Refresh, Disconnect, and the truth about the session.
//!
//! Server-rendered, it is complete HTML with two real forms that post to the `refresh` and
//! `disconnect` server fns, so it works without JavaScript. Hydrated, it ticks the countdown,
//! submits the forms with fetch, and follows the session live: a Server-Sent Events stream
//! (`/session/events`) reports every change made elsewhere (refresh in another tab, expiry,
//! Disconnect-Request, the operator); when the stream is closed it polls; it re-syncs when the
//! page becomes visible again or the network returns (a sleeping phone pauses the monotonic
//! clock). The remaining time always comes from the server (`remaining_ms`); the browser only
//! measures elapsed time with its monotonic clock, and shows the end time in its own time zone
//! from the server's epoch. When the session ends the panel says so and why, in place.

use crate::{
    api::{Disconnect, Refresh},
    components::{DisabledNotice, ErrorMessage},
    dto::{EndReason, EndsBy, PanelStatus, PanelView},
};
use leptos::{prelude::*, server_fn::ServerFn};

/// Seconds before the end from which the page warns.
const WARN_SECS: u64 = 60;

/// What the page says about an ended session.
pub fn end_text(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Expired => "It expired: it was not refreshed in time.",
        EndReason::LimitReached => "It reached its maximum length.",
        EndReason::Disconnected => "It was disconnected (here or on another page).",
        EndReason::EndedByOperator => "It was ended by the network operator.",
        EndReason::OrganizationDisabled => {
            "It was ended by the network operator, who disabled this organization's network access."
        }
        EndReason::Replaced => "A new sign-in from this device's address replaced it.",
        EndReason::Failed => "The network's servers could not be reached.",
        EndReason::NotLinked => {
            "The session of this device's address is still running, but this browser can no longer control it. Signing in again replaces it with a new one."
        }
    }
}

/// Why a session this browser no longer holds (its link taken by a Disconnect, here or on
/// another page) ended: by its time, when that had come on this page's clock — which never
/// runs ahead of the portal's (counted from when the page came, after the portal measured) — as
/// a Disconnect made after it finds the session ended already (a Refresh racing another
/// page's Disconnect at the end said "disconnected": black-box tester U's D1); else by a
/// Disconnect.
pub fn gone_after(time_up: bool, ends_by: EndsBy) -> EndReason {
    match (time_up, ends_by) {
        (false, _) => EndReason::Disconnected,
        (true, EndsBy::Window) => EndReason::Expired,
        (true, EndsBy::Limit) => EndReason::LimitReached,
    }
}

/// The heading (the start of the tab's title too) and first sentence once the page's session
/// is over for it: ended — or running on without this browser, which is not "ended".
pub fn over_texts(reason: EndReason) -> [&'static str; 2] {
    match reason {
        EndReason::NotLinked => ["Not signed in", "This browser is no longer signed in."],
        _ => ["Session ended", "Your session has ended."],
    }
}

/// What the panel starts from: the session as the page was made, and the form token. The
/// server passes it to the island in context and writes it (JSON) into the element around it,
/// [`PANEL_START`]; the browser reads it from there. (Island props would do the same through
/// serde_json, whose error texts weigh more in the WASM than the island's own reader.)
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PanelStart {
    /// The session's view when the page was made.
    pub session: PanelView,
    /// The token the panel's forms post.
    pub form_token: String,
    /// The organization's name (the tab's title names it).
    pub organization: String,
    /// The error of a Refresh or Disconnect posted without the island (before its script ran,
    /// or without JavaScript), which the page comes back with: the island starts showing it
    /// in the browser as on the server (the UI review's M1: the server's rendering had it and
    /// the browser's first did not, and hydration stopped there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form_error: Option<String>,
}

/// The attribute of the element around the island that holds its [`PanelStart`].
pub const PANEL_START: &str = "data-panel";

impl PanelStart {
    /// What the panel starts from: in context on the server; in the browser, read back from
    /// the page ([`PANEL_START`]).
    fn get() -> PanelStart {
        #[cfg(not(feature = "hydrate"))]
        let start = use_context::<PanelStart>();
        #[cfg(feature = "hydrate")]
        let start = PanelStart::read();
        start.expect("the session page gives the panel its start")
    }

    /// Reads what the server wrote ([`PanelStart::get`]).
    #[cfg(any(feature = "hydrate", test))]
    fn from_json(text: &str) -> Option<PanelStart> {
        let json = super::json::Json::parse(text)?;
        Some(PanelStart {
            session: PanelView::from_json(json.get("session")?)?,
            form_token: json.get("form_token")?.str()?.to_string(),
            organization: json.get("organization")?.str()?.to_string(),
            form_error: match json.get("form_error") {
                Some(error) => Some(error.str()?.to_string()),
                None => None,
            },
        })
    }

    #[cfg(feature = "hydrate")]
    fn read() -> Option<PanelStart> {
        let holder = document()
            .query_selector(&format!("[{PANEL_START}]"))
            .ok()??;
        PanelStart::from_json(&holder.get_attribute(PANEL_START)?)
    }
}

/// Countdown and controls for one access session: its page gives it a [`PanelStart`].
#[island]
pub fn SessionPanel() -> impl IntoView {
    let PanelStart {
        session,
        form_token,
        organization,
        form_error,
    } = PanelStart::get();
    // Only the browser changes the tab's title.
    #[cfg(not(feature = "hydrate"))]
    let _ = organization;
    let state = RwSignal::new(session);
    let ended = RwSignal::new(None::<EndReason>);
    let hydrated = RwSignal::new(false);
    // Counted from when the page was asked for (its times were measured as it was rendered,
    // after that): on a slow link its script runs seconds later. The first rendering is the server's (the clock at
    // the page's arrival; the ticker moves it on): one that differs — the last minute's
    // warning or 0:00 reached while the script came — stops hydration where it differs (the
    // UI review's M1).
    let received = page_received_ms();
    let now = RwSignal::new(received);
    let deadline = RwSignal::new(received + state.get_untracked().remaining_ms as f64);
    // A failed form post comes back with its error (rendered by the server, and given to the
    // browser's island in its start); in the browser, the island's own requests set it.
    let error = RwSignal::new(form_error);
    // A Refresh, a Disconnect under way (each its own: a Disconnect pressed while a Refresh is
    // under way goes at once, never dropped).
    let refreshing = RwSignal::new(false);
    let disconnecting = RwSignal::new(false);
    // The end this page's own Refresh gave the session: said out loud while it stands (a
    // screen reader user otherwise hears nothing of it); a refresh elsewhere is not this one.
    // With it, whether that Refresh changed nothing (one a few seconds before had).
    let refreshed = RwSignal::new(None::<(i64, bool)>);
    // From when a refresh reaches the limit before a whole window (monotonic ms).
    let limit_reached_from = RwSignal::new(reaches_limit_at(received, &state.get_untracked()));
    let reaches_limit =
        Memo::new(move |_| limit_reached_from.get().is_some_and(|at| now.get() >= at));
    let remaining_secs = move || ((deadline.get() - now.get()).max(0.0) / 1000.0).ceil() as u64;
    let time_up = Memo::new(move |_| remaining_secs() == 0);
    let apply = move |status: PanelStatus| {
        // An answer came: "the portal could not be reached" no longer holds (the stream may
        // come back before any request of the page's own does), nor its back-off.
        clear_if_shown(error, crate::error::UNREACHABLE);
        #[cfg(feature = "hydrate")]
        live::answered();
        match status {
            // Another session than the page's (another sign-in of this browser, in another
            // tab): the page's user, address and forms are of this one — shown again, for the
            // browser's session (once: a page that comes back so says what it says).
            #[cfg(feature = "hydrate")]
            PanelStatus::Active(view) if another_session(&state.get_untracked(), &view) => {
                if !RELOADED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let _ = window().location().reload();
                }
            }
            PanelStatus::Active(view) => {
                // The clock's last tick may be a quarter second old: count from now.
                let at = monotonic_ms();
                now.set(at);
                deadline.set(deadline_after(
                    deadline.get_untracked(),
                    &state.get_untracked(),
                    (at, &view),
                ));
                limit_reached_from.set(reaches_limit_at(at, &view));
                state.set(view);
                ended.set(None);
            }
            // A Disconnect that got no answer is no longer in doubt once the session has
            // ended (its answer was lost on the way back, or it ended otherwise).
            PanelStatus::Ended(reason) => {
                #[cfg(feature = "hydrate")]
                live::heard_end();
                clear_if_shown(error, crate::error::DISCONNECT_UNREACHABLE);
                ended.set(Some(reason));
            }
            PanelStatus::NoSession => {
                #[cfg(feature = "hydrate")]
                live::heard_end();
                clear_if_shown(error, crate::error::DISCONNECT_UNREACHABLE);
                let time_up = monotonic_ms() >= deadline.get_untracked();
                ended.set(Some(gone_after(time_up, state.get_untracked().ends_by)));
            }
        }
    };
    // Back online: an error from while it was not (the portal could not be reached) is stale;
    // the re-sync that follows shows how things stand.
    // (A Disconnect that did not get through stays said: the session runs on.)
    #[cfg(feature = "hydrate")]
    let _ = window_event_listener_untyped("online", move |_| {
        clear_if_shown(error, crate::error::UNREACHABLE)
    });
    #[cfg(feature = "hydrate")]
    live::shows(&state.get_untracked().session_ref);
    #[cfg(feature = "hydrate")]
    live::follow(
        state.get_untracked().base,
        apply,
        error,
        now,
        remaining_secs,
        ended,
        hydrated,
    );
    // Posts one of the panel's forms with fetch (Refresh: apply the new state; Disconnect: back
    // to the sign-in page).
    let submit = move |path: String, token: String, refresh: bool| {
        #[cfg(feature = "hydrate")]
        {
            // Busy: the buttons stay focusable (aria-disabled); a press of one whose action is
            // under way does nothing, nor any once a Disconnect is. A Disconnect pressed while
            // a Refresh is under way goes at once: the user wants out.
            let under_way = if refresh { refreshing } else { disconnecting };
            if under_way.get_untracked() || disconnecting.get_untracked() {
                return;
            }
            under_way.set(true);
            live::make_way();
            let form = super::fetch::csrf_form(Some(&token));
            leptos::task::spawn_local(async move {
                let result = if refresh {
                    let heard = live::ends_heard();
                    let sent = monotonic_ms();
                    let result = super::fetch::call(&path, form, PanelView::from_json)
                        .await
                        // Refreshed, then ended (the stream said so meanwhile): the new end
                        // is no news.
                        .map(|view| {
                            let status = PanelStatus::Active(counted_from(view, sent));
                            (live::still_news(&status, heard), status)
                        });
                    let result = match result {
                        Ok((true, PanelStatus::Active(view))) => {
                            live::heard_news();
                            Ok(view)
                        }
                        Ok(_) => {
                            refreshing.set(false);
                            return;
                        }
                        Err(e) => Err(e),
                    };
                    // A Disconnect went meanwhile: its outcome is the page's, not this one's —
                    // but the session's new end is kept (said to no one), should the
                    // Disconnect not get through.
                    if disconnecting.get_untracked() {
                        if let Ok(view) = result {
                            apply(PanelStatus::Active(view));
                        }
                        refreshing.set(false);
                        return;
                    }
                    result.map(|view| {
                        refreshed.set(Some((view.ends_at_ms, view.refresh_changed_nothing)));
                        apply(PanelStatus::Active(view));
                    })
                } else {
                    super::fetch::call(&path, form, |_| Some(()))
                        .await
                        .map(|()| {
                            let _ = window()
                                .location()
                                .set_href(&format!("{}/", state.get_untracked().base));
                        })
                };
                // Disconnected: busy until the sign-in page has replaced this one.
                if refresh || result.is_err() {
                    under_way.set(false);
                }
                // A Disconnect that got no answer says so, and that the session may run on.
                let result = result.map_err(|e| {
                    if !refresh && e == crate::error::UNREACHABLE {
                        crate::error::DISCONNECT_UNREACHABLE.to_string()
                    } else {
                        e
                    }
                });
                // Refused (e.g. the session ended meanwhile): ask how things stand. Not
                // reached: the next answer from the portal (the stream, a poll) clears it.
                if result.as_ref().is_err_and(|e| {
                    e != crate::error::UNREACHABLE && e != crate::error::DISCONNECT_UNREACHABLE
                }) {
                    live::resync(state.get_untracked().base, apply, error);
                }
                error.set(result.err());
            });
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (path, token, refresh, &apply);
    };
    let ends_text = move || {
        let s = state.get();
        let at = hydrated
            .get()
            .then(|| local_time(s.ends_at_ms))
            .flatten()
            .unwrap_or_else(|| format!("{} UTC", s.ends_at_utc));
        // At 0:00 the end not yet confirmed (the portal out of reach): said as past, not as
        // an end still to come.
        if time_up.get() {
            return format!("Its end time, {at}, has passed.");
        }
        match s.ends_by {
            // No Refresh offered (black-box tester U's D3: the text still promised one): a
            // window shortened below the time left, or a maximum length shortened below the
            // session's age.
            EndsBy::Window if !s.can_extend => {
                format!("Ends at {at}. No refresh is offered now: it would not move this end later.")
            }
            EndsBy::Window if reaches_limit.get() => format!(
                "Ends at {at} unless you refresh. A refresh extends it only up to its maximum length."
            ),
            EndsBy::Window => format!(
                "Ends at {at} unless you refresh. A refresh gives you {} again.",
                s.window_text
            ),
            EndsBy::Limit => {
                format!("Ends at {at}, when it reaches the maximum session length. A refresh cannot extend it.")
            }
        }
    };
    // Memos: they change (and the page with them) when the text does, not at every tick.
    let warning_text = Memo::new(move |_| {
        (ended.get().is_none() && !time_up.get() && remaining_secs() < WARN_SECS).then(|| {
            if state.get().can_extend {
                "Less than a minute left: refresh now to stay connected."
            } else {
                "Less than a minute left: the session reaches its maximum length."
            }
        })
    });
    let warning = move || {
        warning_text.get().map(|text| {
            // The live region below says it to screen readers (once: not here as well).
            view! { <p data-testid="warning" aria-hidden="true" class="mt-4 rounded bg-amber-100 p-3 text-sm text-amber-900">{text}</p> }
        })
    };
    // What a screen reader announces: a live region that is always in the page, whose text
    // changes (one that appears already filled is often not read). At the end, focus goes to
    // the heading, which says it ended: the region adds why, not the same words again.
    let announcement = Memo::new(move |_| {
        match ended.get() {
        Some(reason) => end_text(reason).to_string(),
        // At 0:00, the end not yet confirmed (the portal out of reach): said as it happens.
        None if time_up.get() => format!("Your time is up. {}", ends_text()),
        // After this page's Refresh its new end, which each Refresh changes (so each is read);
        // the last minute's warning when it comes.
        None => match warning_text.get() {
            Some(warning) => warning.to_string(),
            None => match refreshed.get() {
                Some((at, false)) if at == state.get().ends_at_ms => {
                    format!("Refreshed. {}", ends_text())
                }
                Some((at, true)) if at == state.get().ends_at_ms => format!(
                    "Your session was refreshed a few seconds ago, so this Refresh changed nothing. {}",
                    ends_text()
                ),
                _ => String::new(),
            },
        },
    }
    });
    // After this page's Refresh, on screen too (as the server's notice after a plain form post,
    // which the stylesheet hides while this one shows): the live region says it to screen
    // readers.
    let refreshed_text = Memo::new(move |_| match refreshed.get() {
        Some((at, changed_nothing)) if at == state.get().ends_at_ms => {
            Some(crate::dto::refresh_notice(changed_nothing))
        }
        _ => None,
    });
    // When the session ends the controls go away: focus moves to the heading that says so, and
    // the tab's title follows (and goes back if it comes back). Only on a change: a re-check
    // that finds it still ended (the tab shown again) leaves focus where the user put it.
    let heading = NodeRef::<leptos::html::H1>::new();
    let disconnect_button = NodeRef::<leptos::html::Button>::new();
    let refresh_button = NodeRef::<leptos::html::Button>::new();
    #[cfg(feature = "hydrate")]
    let over_title = Memo::new(move |_| ended.get().map(|reason| over_texts(reason)[0]));
    // Not once the time is up either (the portal out of reach): a refresh cannot bring the
    // session back (black-box tester U's D7 of session 83); Disconnect stays.
    let extendable = Memo::new(move |_| state.get().can_extend && !time_up.get());
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let title = over_title.get();
        if title.is_some() {
            if let Some(heading) = heading.get_untracked() {
                let _ = heading.focus();
            }
        }
        if let Some(document) = window().document() {
            document.set_title(&crate::page_title(
                title.unwrap_or(crate::SESSION_TITLE),
                &organization,
            ));
        }
    });
    // A refresh that reached the limit takes the Refresh button away while it has focus: focus
    // goes to Disconnect, the one control left.
    #[cfg(feature = "hydrate")]
    Effect::new(move |was: Option<bool>| {
        let now = extendable.get();
        // Focus is still on the button being hidden, or already fell to the page's body.
        let lost = document().active_element().is_none_or(|e| {
            e.tag_name().eq_ignore_ascii_case("body")
                || refresh_button
                    .get_untracked()
                    .is_some_and(|button| e.is_same_node(Some(&button)))
        });
        if was == Some(true) && !now && lost {
            if let Some(button) = disconnect_button.get_untracked() {
                let _ = button.focus();
            }
        }
        now
    });

    // Everything stays in the organization's portal (`/o/{slug}` prefix; the server scopes it).
    let base = state.get_untracked().base;
    let refresh_url = format!("{base}{}", <Refresh as ServerFn>::PATH);
    let (refresh_token, disconnect_token) = (form_token.clone(), form_token.clone());
    let disconnect_url = format!("{base}{}", <Disconnect as ServerFn>::PATH);
    let (refresh_post, disconnect_post) = (refresh_url.clone(), disconnect_url.clone());
    let sign_in_url = format!("{base}/");
    let disabled = move || ended.get() == Some(EndReason::OrganizationDisabled);
    view! {
        // `hydrated` marks the island's WASM at work (the tests wait for it).
        <div class:hydrated=move || hydrated.get()>
            <h1 id="session-title" node_ref=heading tabindex="-1" class="text-2xl font-semibold focus:outline-none">
                {move || match ended.get() {
                    Some(reason) => over_texts(reason)[0],
                    // The end not yet confirmed by the portal (asked every second; it may be
                    // out of reach): not "connected" at 0:00.
                    None if time_up.get() => "Your time is up",
                    None => "You are connected",
                }}
            </h1>
            <p role="status" class="sr-only">{move || announcement.get()}</p>
            <div data-testid="ended" class="mt-6 text-center" class:hidden=move || ended.get().is_none()>
                <p class="text-lg font-semibold">{move || ended.get().map(|reason| over_texts(reason)[1])}</p>
                // Why, as the live region says it to screen readers (once: not here as well).
                <p aria-hidden="true" class="mt-1 text-sm text-slate-700">{move || ended.get().map(end_text)}</p>
                // A disabled organization offers no sign-in: its notice instead of the link.
                <p class="mt-4" class:hidden=move || disabled()><a class="brand-link text-blue-800 underline" href=sign_in_url>"Sign in again"</a></p>
                {move || disabled().then(|| view! { <DisabledNotice /> })}
            </div>
            <div class:hidden=move || ended.get().is_some()>
                <p class="mt-6 text-center text-sm text-slate-600">"Time left"</p>
                <p role="timer" aria-label="Time left" class="text-center font-mono text-[length:min(3rem,15vw)] leading-none tabular-nums">
                    {move || format_clock(remaining_secs())}
                </p>
                <p data-testid="ends" class="mt-2 text-center text-sm text-slate-700">{ends_text}</p>
                <p data-testid="refreshed" aria-hidden="true" class="mt-4 rounded border border-green-700 bg-green-50 px-4 py-3 text-sm text-green-900"
                    class:hidden=move || refreshed_text.get().is_none()>{move || refreshed_text.get()}</p>
                {warning}
                <ErrorMessage error />
                // Side by side where they fit, stacked on a narrow screen or at large text.
                <div class="mt-6 flex flex-wrap gap-3">
                    // A session its limit ends gains nothing from a refresh: no button for it.
                    <form method="post" action=refresh_url class="grow basis-28" class:hidden=move || !extendable.get()
                        on:submit=move |ev: leptos::ev::SubmitEvent| {
                            ev.prevent_default();
                            submit(refresh_post.clone(), refresh_token.clone(), true);
                        }>
                        <input type="hidden" name="csrf" value=form_token.clone() />
                        <button type="submit" node_ref=refresh_button aria-disabled=move || (refreshing.get() || disconnecting.get()).then_some("true")
                            class="brand-button w-full rounded border-2 border-blue-800 bg-blue-800 px-2 py-2 font-semibold text-white hover:bg-blue-900 aria-disabled:opacity-60">
                            "Refresh"
                        </button>
                    </form>
                    <form method="post" action=disconnect_url class="grow basis-28"
                        on:submit=move |ev: leptos::ev::SubmitEvent| {
                            ev.prevent_default();
                            submit(disconnect_post.clone(), disconnect_token.clone(), false);
                        }>
                        <input type="hidden" name="csrf" value=form_token />
                        <button type="submit" node_ref=disconnect_button aria-disabled=move || disconnecting.get().then_some("true")
                            class="w-full rounded border-2 border-slate-500 bg-white px-2 py-2 font-semibold hover:bg-slate-100 aria-disabled:opacity-60">
                            "Disconnect"
                        </button>
                    </form>
                </div>
            </div>
        </div>
    }
}

/// The page was shown again for the browser's session ([`SessionPanel`]'s `apply`).
#[cfg(feature = "hydrate")]
static RELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `view` is of another session than `shown` (a replica of the version before names
/// none: taken as the same).
pub fn another_session(shown: &PanelView, view: &PanelView) -> bool {
    !shown.session_ref.is_empty()
        && !view.session_ref.is_empty()
        && shown.session_ref != view.session_ref
}

/// The page's deadline (monotonic ms) once `view` is read at `at`, the page's being `deadline`
/// for `shown`. A view's time left is counted from its arrival (the stream's) or its request's
/// sending: the first is late by the link's delay, the second early. For the same end (no
/// refresh since, the same session) the earliest count stands — taking each as it came, a link
/// of 2 s moved the countdown up and down by seconds (black-box tester U's D1 of session 83);
/// a new end (a refresh, here or elsewhere) counts afresh.
fn deadline_after(deadline: f64, shown: &PanelView, (at, view): (f64, &PanelView)) -> f64 {
    let counted = at + view.remaining_ms as f64;
    let same_end = shown.ends_at_ms == view.ends_at_ms && shown.session_ref == view.session_ref;
    if same_end {
        counted.min(deadline)
    } else {
        counted
    }
}

/// From when (monotonic ms, the view read at `at`) a refresh of the session would reach its limit
/// before a whole window.
fn reaches_limit_at(at: f64, view: &PanelView) -> Option<f64> {
    view.refresh_reaches_limit_in_ms.map(|ms| at + ms as f64)
}

/// The browser side of live state: the event stream, its polling fallback, re-syncs.
#[cfg(feature = "hydrate")]
mod live {
    use super::*;
    use crate::api::GetSessionStatus;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;
    use wasm_bindgen::{closure::Closure, JsCast};
    use web_sys::{EventSource, MessageEvent};

    /// A status question is on its way ([`resync`]).
    static ASKING: AtomicBool = AtomicBool::new(false);
    /// Another was asked for while it was ([`resync`]).
    static ASK_AGAIN: AtomicBool = AtomicBool::new(false);
    /// Questions in a row that could not reach the portal or got no status from it (a 503
    /// while its database is away) (0: the portal answered since).
    static MISSES: AtomicU32 = AtomicU32::new(0);
    /// How many times the page was told the session ended (the stream, a question): an
    /// answer saying it runs, to a question (or a Refresh) asked before the last of them, is
    /// older than that and dropped — not "connected" again for the seconds until the next
    /// question (the UI review's L2).
    static ENDS_HEARD: AtomicU32 = AtomicU32::new(0);

    /// How many times the page was told something newer than any status question asked
    /// before: an end ([`heard_end`]), a stream event, its own Refresh's answer. A question's
    /// answer saying the session runs, asked before the last of them, is older and dropped —
    /// a poll answered after a Refresh took the time it gained back off the countdown for
    /// seconds, and the "Refreshed" notice with it (the UI review's L2 of session 80).
    static NEWS: AtomicU32 = AtomicU32::new(0);

    /// The page was told the session ended ([`ENDS_HEARD`], [`NEWS`]).
    pub fn heard_end() {
        ENDS_HEARD.fetch_add(1, Ordering::SeqCst);
        heard_news();
    }

    /// The page was told how the session stands by the stream or its Refresh ([`NEWS`]).
    pub fn heard_news() {
        NEWS.fetch_add(1, Ordering::SeqCst);
    }

    /// [`ENDS_HEARD`] now, before a question or a Refresh is sent.
    pub fn ends_heard() -> u32 {
        ENDS_HEARD.load(Ordering::SeqCst)
    }

    /// Whether an answer to a question sent at `heard` ([`ends_heard`]) may be applied: not
    /// one saying the session runs when the stream has said it ended since.
    pub fn still_news(status: &PanelStatus, heard: u32) -> bool {
        !matches!(status, PanelStatus::Active(_)) || ends_heard() == heard
    }

    thread_local! {
        /// The session this page shows ([`crate::dto::SessionView::session_ref`]): given back
        /// with every question about it ([`resync`], the stream).
        static SHOWN: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }

    /// The page shows the session `session_ref` names.
    pub fn shows(session_ref: &str) {
        SHOWN.with(|shown| *shown.borrow_mut() = session_ref.to_string());
    }

    /// `name=` the shown session's reference, for a form or a query (empty when none).
    fn shown_as(name: &str) -> String {
        SHOWN.with(|shown| {
            let shown = shown.borrow();
            // A signed reference is digits, a dot and hex digits: nothing to encode.
            if shown.is_empty()
                || !shown
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.')
            {
                String::new()
            } else {
                format!("{name}={shown}")
            }
        })
    }

    /// The portal answered (a question, a Refresh, the stream): no back-off.
    pub fn answered() {
        MISSES.store(0, Ordering::SeqCst);
    }

    /// The channel the portal's pages in this browser make way for each other's Refreshes and
    /// Disconnects on ([`make_way`]).
    const PAGES_CHANNEL: &str = "radius-portal-pages";

    /// How long a page that made way lets its stream be (ms), polling meanwhile.
    const MADE_WAY_MS: f64 = 10_000.0;

    /// Until when (this page's monotonic ms, as bits) it lets its stream be.
    static MADE_WAY_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    thread_local! {
        /// This page's end of [`PAGES_CHANNEL`], listening from [`follow`] on: what it sends
        /// reaches every other page, not itself.
        static PAGES: std::cell::RefCell<Option<web_sys::BroadcastChannel>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Before a Refresh or Disconnect: every other page of the portal in this browser lets its
    /// live stream go for [`MADE_WAY_MS`] (polling meanwhile), so the request gets a
    /// connection. Over HTTP/1.1 a browser keeps at most six to a site, and seven pages in view
    /// (windows side by side) would hold them all with their streams: the request would wait
    /// for good. This page keeps its own: polling, its answers would take away what the
    /// request's own failure says.
    pub fn make_way() {
        PAGES.with(|pages| {
            if let Some(pages) = pages.borrow().as_ref() {
                let _ = pages.post_message(&wasm_bindgen::JsValue::TRUE);
            }
        });
    }

    /// Asks the server how the session stands and applies the answer; a portal that cannot be
    /// reached is said (the countdown alone would go on as if all were well).
    /// One question at a time: on a link gone silent the 2 s polls would otherwise pile up
    /// until the first one times out. One asked for meanwhile (the page shown again, back
    /// online) is asked once the current one is answered, so the newest answer has the last
    /// word.
    pub fn resync(
        base: String,
        apply: impl Fn(PanelStatus) + Copy + 'static,
        error: RwSignal<Option<String>>,
    ) {
        if ASKING.swap(true, Ordering::SeqCst) {
            ASK_AGAIN.store(true, Ordering::SeqCst);
            return;
        }
        leptos::task::spawn_local(async move {
            let path = format!("{base}{}", <GetSessionStatus as ServerFn>::PATH);
            let heard = NEWS.load(Ordering::SeqCst);
            let sent = monotonic_ms();
            let answer =
                crate::islands::fetch::call(&path, shown_as("shown"), PanelStatus::from_json).await;
            ASKING.store(false, Ordering::SeqCst);
            match answer {
                Ok(PanelStatus::Active(view)) if NEWS.load(Ordering::SeqCst) == heard => {
                    apply(PanelStatus::Active(counted_from(view, sent)))
                }
                Ok(status @ (PanelStatus::Ended(_) | PanelStatus::NoSession)) => apply(status),
                // The portal answered (no back-off), with news the stream has overtaken.
                Ok(_) => answered(),
                // Said unless a Disconnect that did not get through is (it says more).
                Err(e) if e == crate::error::UNREACHABLE => {
                    MISSES.fetch_add(1, Ordering::SeqCst);
                    if error.with_untracked(|shown| {
                        shown.as_deref() != Some(crate::error::DISCONNECT_UNREACHABLE)
                    }) {
                        error.set(Some(e));
                    }
                }
                // Answered without a status (a 503 while the portal's database is away): as
                // unanswered for the back-off (the UI review's M3: every page kept asking
                // every 2 s through the outage); the countdown goes on meanwhile.
                Err(_) => {
                    MISSES.fetch_add(1, Ordering::SeqCst);
                }
            }
            if ASK_AGAIN.swap(false, Ordering::SeqCst) {
                // This answer is older than the question asked meanwhile: that one has the
                // last word.
                resync(base, apply, error);
            }
        });
    }

    /// Wall-clock time passed beyond the monotonic clock's between two ticks (ms) taken for a
    /// machine that slept: the page asks how things stand at once.
    const SLEPT_MS: f64 = 5_000.0;

    /// A stream that ended is opened again at most this often (ms) by the ticker.
    const REOPEN_MS: f64 = 30_000.0;

    /// Wires the stream, the ticker, the polling fallback and the re-sync triggers.
    pub fn follow(
        base: String,
        apply: impl Fn(PanelStatus) + Copy + 'static,
        error: RwSignal<Option<String>>,
        now: RwSignal<f64>,
        remaining_secs: impl Fn() -> u64 + Copy + 'static,
        ended: RwSignal<Option<EndReason>>,
        hydrated: RwSignal<bool>,
    ) {
        Effect::new(move |_| {
            hydrated.set(true);
            // The page's note for a script that never started (shown by the stylesheet some
            // seconds on) is not this page's.
            if let Some(note) = document().get_element_by_id("not-live") {
                note.remove();
            }
        });
        // The open stream, if any. Only a page in view holds one: a browser keeps at most six
        // connections to a site over HTTP/1.1, and six tabs' streams would leave a Refresh or
        // Disconnect (and any new page) queued behind them for good.
        let stream = StoredValue::new_local(None::<EventSource>);
        let close = move || {
            if let Some(es) = stream.try_update_value(Option::take).flatten() {
                es.close();
            }
        };
        // When the stream last said something: the server sends at least every 15 s, so a
        // stream silent for longer (a proxy that buffers it, a connection that hangs, one
        // reconnecting over and over) is as good as none.
        let last_message = StoredValue::new(monotonic_ms());
        let on_message: js_sys::Function =
            Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
                last_message.set_value(monotonic_ms());
                let Some(text) = ev.data().as_string() else {
                    return;
                };
                let json = crate::islands::json::Json::parse(&text);
                if let Some(status) = json.as_ref().and_then(PanelStatus::from_json) {
                    if !matches!(status, PanelStatus::Active(_)) {
                        close();
                    }
                    heard_news();
                    apply(status);
                }
            })
            .into_js_value()
            .unchecked_into();
        let url = match shown_as("shown") {
            query if query.is_empty() => format!("{base}{}", crate::api::LIVE_EVENTS_PATH),
            query => format!("{base}{}?{query}", crate::api::LIVE_EVENTS_PATH),
        };
        // When the page last opened a stream ([`REOPEN_MS`]).
        let opened = StoredValue::new(0.0f64);
        // Another page's Refresh or Disconnect asks for connections.
        if let Ok(pages) = web_sys::BroadcastChannel::new(PAGES_CHANNEL) {
            let on_make_way: js_sys::Function = Closure::<dyn FnMut()>::new(move || {
                MADE_WAY_UNTIL.store((monotonic_ms() + MADE_WAY_MS).to_bits(), Ordering::SeqCst);
                close();
            })
            .into_js_value()
            .unchecked_into();
            pages.set_onmessage(Some(&on_make_way));
            // Kept for the page's life, and sent on by `make_way`.
            PAGES.with(|kept| *kept.borrow_mut() = Some(pages));
        }
        let open = move || {
            close();
            if let Ok(es) = EventSource::new(&url) {
                es.set_onmessage(Some(&on_message));
                last_message.set_value(monotonic_ms());
                opened.set_value(monotonic_ms());
                stream.set_value(Some(es));
            }
        };
        if !document().hidden() {
            open();
        }
        let base_for_ticks = StoredValue::new(base.clone());
        // Last question (monotonic ms), so the countdown reaching 0 asks at most once a second,
        // and a question an event asked counts as the ticker's (the page shown again does not
        // ask twice, one of them a miss more while the portal cannot be reached).
        let last_check = StoredValue::new(0.0f64);
        let ask = {
            let base = base.clone();
            move || {
                last_check.set_value(monotonic_ms());
                resync(base.clone(), apply, error);
            }
        };
        let reopen = open.clone();
        // The wall clock beside the monotonic one at the last tick: a machine that slept (a
        // laptop's lid closed) moved the first on and not the second — the countdown resumed
        // where it stood and the stream looked open (the UI review's L1: "You are connected"
        // for a session that expired meanwhile).
        let last_tick = StoredValue::new((js_sys::Date::now(), monotonic_ms()));
        let ticker = set_interval_with_handle(
            move || {
                let t = monotonic_ms();
                now.set(t);
                let wall = js_sys::Date::now();
                let (wall_then, t_then) = last_tick.get_value();
                last_tick.set_value((wall, t));
                // In view only (a page out of view asks when shown again), and not over a
                // back-off or another page's Refresh the streams make way for.
                if (wall - wall_then) - (t - t_then) > SLEPT_MS
                    && ended.get_untracked().is_none()
                    && !document().hidden()
                {
                    if MISSES.load(Ordering::SeqCst) == 0
                        && t >= f64::from_bits(MADE_WAY_UNTIL.load(Ordering::SeqCst))
                    {
                        reopen();
                    }
                    last_check.set_value(t);
                    resync(base_for_ticks.get_value(), apply, error);
                }
                let due = ended.get_untracked().is_none() && remaining_secs() == 0;
                let state = stream.with_value(|s| s.as_ref().map(EventSource::ready_state));
                // No working stream (closed for good, reconnecting, or silent past the server's
                // 15 s): poll every 2 s instead, so changes still show within about 2 s.
                let closed =
                    t - last_message.get_value() > 20_000.0 || state != Some(EventSource::OPEN);
                // While the portal cannot be reached, the wait between questions doubles with
                // each one left unanswered (up to 8 times, and 16 s), and the stream goes, which
                // ends the browser's reconnecting every few seconds: thousands of open pages
                // would otherwise greet a portal coming back with a flood (a stream still open
                // but silent, a portal that hangs, goes too: it holds a connection for
                // nothing). Answered again, the page opens a stream at once — and one the
                // browser gave up on (a proxy answered an error) at most every `REOPEN_MS`,
                // should it keep failing where the questions do not.
                let misses = MISSES.load(Ordering::SeqCst);
                let visible = !document().hidden();
                let running = ended.get_untracked().is_none();
                let making_way = t < f64::from_bits(MADE_WAY_UNTIL.load(Ordering::SeqCst));
                if misses >= 2 && closed {
                    close();
                } else if misses == 0
                    && running
                    && visible
                    && !making_way
                    && state.is_none_or(|s| {
                        s == EventSource::CLOSED && t - opened.get_value() >= REOPEN_MS
                    })
                {
                    reopen();
                }
                // A page that says its organization is disabled (no sign-in offered) looks
                // every 15 s whether it is enabled again, to offer it then.
                let disabled = ended.get_untracked() == Some(EndReason::OrganizationDisabled);
                let every: f64 = if due {
                    1000.0
                } else if disabled {
                    15_000.0
                } else {
                    2000.0
                };
                let every = (every * f64::from(1u32 << misses.min(3)))
                    .min(16_000.0)
                    .max(every);
                // A page out of view waits: shown again, it re-syncs and opens its stream.
                let polling = ((closed && running) || disabled) && visible;
                if (due || polling) && t - last_check.get_value() >= every {
                    last_check.set_value(t);
                    resync(base_for_ticks.get_value(), apply, error);
                }
            },
            Duration::from_millis(250),
        )
        .ok();
        on_cleanup(move || {
            if let Some(ticker) = ticker {
                ticker.clear();
            }
        });
        // Hidden, the page lets its stream go; shown again, it opens one (while the session
        // is not over) and asks how things stand. The user coming back to the page or the
        // network returning asks at once too (the back-off ends with an answer, not before).
        // Heard at the document, where the browser fires it (a script's own, which need not
        // bubble to the window, too).
        let on_visibility: js_sys::Function = Closure::<dyn FnMut()>::new({
            let ask = ask.clone();
            move || {
                if document().hidden() {
                    close();
                } else {
                    if ended.get_untracked().is_none() && stream.with_value(Option::is_none) {
                        open();
                    }
                    ask();
                }
            }
        })
        .into_js_value()
        .unchecked_into();
        let _ = document().add_event_listener_with_callback("visibilitychange", &on_visibility);
        for event in ["online", "pageshow", "focus"] {
            let ask = ask.clone();
            let _ = window_event_listener_untyped(event, move |_| ask());
        }
        // The browser gone offline (no network at all): said at once — a stream over a link
        // that died may stay silent for 20 s before the page notices —, and the stream goes;
        // back online, the page asks at once (above), and the answer opens it again.
        let _ = window_event_listener_untyped("offline", move |_| {
            // Counted as unanswered, so the ticker does not open the stream again before an
            // answer (the `online` question's) comes.
            MISSES.fetch_max(2, Ordering::SeqCst);
            close();
            if error.with_untracked(Option::is_none) {
                error.set(Some(crate::error::UNREACHABLE.to_string()));
            }
        });
    }
}

/// Takes `text` away if it is the error shown (and only then: another one stays).
fn clear_if_shown(error: RwSignal<Option<String>>, text: &str) {
    if error.with_untracked(|e| e.as_deref() == Some(text)) {
        error.set(None);
    }
}

/// The end time in the browser's time zone, formatted by the session page's own script
/// (`pages::session`, `LOCAL_END_TIME_JS`), which showed the first one before the WASM ran, so
/// the two never differ; `None` without it (the server's UTC time stays, labelled).
fn local_time(unix_ms: i64) -> Option<String> {
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::{JsCast, JsValue};
        let formatter = JsValue::from_str(crate::pages::session::END_TIME_FN);
        js_sys::Reflect::get(&window(), &formatter)
            .ok()?
            .dyn_into::<js_sys::Function>()
            .ok()?
            .call1(&JsValue::NULL, &JsValue::from_f64(unix_ms as f64))
            .ok()?
            .as_string()
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = unix_ms;
        None
    }
}

/// A view answered to a request sent at `sent` (monotonic ms), its times counted from then:
/// the server measured them before it answered, so a slow link's delay falls on the early
/// side — counted from the answer's arrival, a Refresh pressed at 0:02 could reach a session
/// ended seconds before (the UI review's L3 of session 80).
#[cfg(feature = "hydrate")]
fn counted_from(mut view: PanelView, sent: f64) -> PanelView {
    let late = (monotonic_ms() - sent).max(0.0) as u64;
    view.remaining_ms = view.remaining_ms.saturating_sub(late);
    view.refresh_reaches_limit_in_ms = view
        .refresh_reaches_limit_in_ms
        .map(|ms| ms.saturating_sub(late));
    view
}

/// When this page was asked for (monotonic ms; now if the browser does not say): its times
/// were measured after that, so the countdown counted from then is early by the link's delay,
/// never late (the UI review's L3 of session 80).
fn page_received_ms() -> f64 {
    let now = monotonic_ms();
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::JsValue;
        let number = |object: &JsValue, key: &str| {
            js_sys::Reflect::get(object, &JsValue::from_str(key))
                .ok()
                .and_then(|v| v.as_f64())
        };
        if let Some(performance) = window().performance() {
            let origin = number(&performance, "timeOrigin");
            let start = js_sys::Reflect::get(&performance, &JsValue::from_str("timing"))
                .ok()
                .and_then(|timing| number(&timing, "requestStart"));
            if let (Some(origin), Some(start)) = (origin, start) {
                if start > 0.0 {
                    // Not `clamp`: its check of its bounds brings float formatting into the
                    // WebAssembly (~9 KB).
                    return (start - origin).max(0.0).min(now);
                }
            }
        }
    }
    now
}

/// The error of a no-JS form post of this panel, as the server renders it (`ServerAction` reads
/// it on the server); none in the browser.
pub fn form_post_error() -> Option<String> {
    #[cfg(not(feature = "hydrate"))]
    {
        let of = |value: Option<Result<(), crate::error::PortalError>>| value.and_then(Result::err);
        let refresh = ServerAction::<Refresh>::new().value().get_untracked();
        let disconnect = ServerAction::<Disconnect>::new().value().get_untracked();
        of(refresh.map(|r| r.map(|_| ())))
            .or_else(|| of(disconnect))
            .map(|e| e.to_string())
    }
    #[cfg(feature = "hydrate")]
    {
        None
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

/// `Dd H:MM:SS` above a day (a months-long session reads in days, not in thousands of hours),
/// `H:MM:SS` above an hour, `MM:SS` below.
pub fn format_clock(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}:{m:02}:{s:02}")
    } else if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

/// A duration in words: "4 hours", "20 minutes", "1 hour 30 minutes", "45 seconds",
/// "366 days". (The server writes it: not in the island's WASM.)
pub fn format_length(secs: u64) -> String {
    let mut text = String::new();
    for (n, unit) in [
        (secs / 86_400, "day"),
        (secs / 3600 % 24, "hour"),
        (secs / 60 % 60, "minute"),
        (secs % 60, "second"),
    ] {
        if n > 0 || (unit == "second" && text.is_empty()) {
            let space = if text.is_empty() { "" } else { " " };
            let plural = if n == 1 { "" } else { "s" };
            text += &format!("{space}{n} {unit}{plural}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gone_after_its_time_ended_by_it() {
        assert_eq!(gone_after(false, EndsBy::Window), EndReason::Disconnected);
        assert_eq!(gone_after(false, EndsBy::Limit), EndReason::Disconnected);
        assert_eq!(gone_after(true, EndsBy::Window), EndReason::Expired);
        assert_eq!(gone_after(true, EndsBy::Limit), EndReason::LimitReached);
    }

    #[test]
    fn clock_shows_hours_only_when_needed() {
        assert_eq!(format_clock(0), "00:00");
        assert_eq!(format_clock(59), "00:59");
        assert_eq!(format_clock(3599), "59:59");
        assert_eq!(format_clock(4 * 3600 + 62), "4:01:02");
        assert_eq!(format_clock(86_399), "23:59:59");
        assert_eq!(format_clock(366 * 86_400 - 1), "365d 23:59:59");
        assert_eq!(format_clock(2 * 86_400 + 3600 + 61), "2d 1:01:01");
    }

    #[test]
    fn lengths_read_as_words() {
        assert_eq!(format_length(4 * 3600), "4 hours");
        assert_eq!(format_length(20), "20 seconds");
        assert_eq!(format_length(5400), "1 hour 30 minutes");
        assert_eq!(format_length(60), "1 minute");
        assert_eq!(format_length(366 * 86_400), "366 days");
        assert_eq!(format_length(86_400 + 3600), "1 day 1 hour");
    }

    #[test]
    fn the_panel_starts_from_what_its_page_writes() {
        let start = PanelStart {
            session: PanelView {
                remaining_ms: 14_400_000,
                ends_by: EndsBy::Window,
                ends_at_utc: "2026-12-03 20:00:00".into(),
                ends_at_ms: 1_796_331_600_000,
                window_text: "4 hours".into(),
                can_extend: true,
                refresh_reaches_limit_in_ms: Some(600_000),
                base: "/o/acme".into(),
                refresh_changed_nothing: false,
                session_ref: "7.00ff".into(),
            },
            form_token: "a+b/c=\"<&'".into(),
            organization: "Acme \"Süd\" – Café".into(),
            form_error: None,
        };
        let written = serde_json::to_string(&start).unwrap();
        assert_eq!(PanelStart::from_json(&written), Some(start.clone()));
        let failed = PanelStart {
            form_error: Some("This page was out of date: \"reload\"".into()),
            ..start
        };
        let written = serde_json::to_string(&failed).unwrap();
        assert_eq!(PanelStart::from_json(&written), Some(failed));
        assert_eq!(PanelStart::from_json(r#"{"session":{}}"#), None);
    }

    /// Views of one end never move the countdown up: a stream's, late by the link's delay,
    /// leaves the earlier count of a request's; a later one whose count is earlier is taken.
    /// A new end (a refresh) or another session counts afresh, up too.
    #[test]
    fn the_countdown_keeps_the_earliest_count_of_one_end() {
        let view = |remaining_ms, ends_at_ms, session_ref: &str| PanelView {
            remaining_ms,
            ends_by: EndsBy::Window,
            ends_at_utc: String::new(),
            ends_at_ms,
            window_text: String::new(),
            can_extend: true,
            refresh_reaches_limit_in_ms: None,
            base: String::new(),
            refresh_changed_nothing: false,
            session_ref: session_ref.into(),
        };
        let shown = view(60_000, 1_000_000, "7.a");
        // Shown at 0 for 60 s; a stream's view of the same end arrives 2 s late at 10 s.
        let deadline = 60_000.0;
        let late = view(52_000, 1_000_000, "7.a");
        assert_eq!(
            deadline_after(deadline, &shown, (10_000.0, &late)),
            60_000.0
        );
        // A view counted earlier than the page's is taken.
        let early = view(49_000, 1_000_000, "7.a");
        assert_eq!(
            deadline_after(deadline, &shown, (10_000.0, &early)),
            59_000.0
        );
        // Refreshed: a new end, later.
        let refreshed = view(60_000, 1_050_000, "7.a");
        assert_eq!(
            deadline_after(deadline, &shown, (50_000.0, &refreshed)),
            110_000.0
        );
        // Another session of the same end (a new sign-in, replaced): its own count.
        let other = view(59_000, 1_000_000, "8.b");
        assert_eq!(
            deadline_after(deadline, &shown, (10_000.0, &other)),
            69_000.0
        );
    }
}
