//! `/session` (and `/o/{slug}/session`): the user's access session in that organization. Rendered complete on the server (works without
//! JavaScript); the panel is an island that ticks and takes over Refresh/Disconnect once hydrated.
//! A session that has ended is shown as ended, with why (also after a reload without
//! JavaScript); so is a session this browser is no longer linked to while it runs on. Without
//! any session the page redirects to the sign-in form — but after a form post that found none
//! (a stale page's Refresh without JavaScript) it says so, with a link to sign in.

use crate::{
    components::{DemoBanner, DisabledNotice, ErrorMessage, Help, Logo, WatchForEnable},
    dto::{EndReason, Notice, SessionStatus},
    islands::session_panel::{end_text, over_texts, PanelStart, SessionPanel},
};
use leptos::prelude::*;

/// The session page.
#[component]
pub fn SessionPage() -> impl IntoView {
    let info = super::site_info();
    let data = super::data();
    let demo = info.as_ref().is_some_and(|i| i.demo);
    let token = data.form_token();
    let active = info.as_ref().is_none_or(|i| i.active);
    // The organization's help line and contact under the session, whatever its state (most
    // wanted when it has ended).
    let branding = info
        .as_ref()
        .map(|i| i.branding.clone())
        .unwrap_or_default();
    let help = view! { <Help help_text=branding.help_text contact=branding.contact /> };
    let organization = info
        .as_ref()
        .map(|i| i.organization.clone())
        .unwrap_or_default();
    let base = info.map(|i| i.base).unwrap_or_default();
    // Its logo on top, as on its sign-in page.
    let logo =
        view! { <Logo base=base.clone() organization=organization.clone() shown=branding.logo /> };
    let form_failed = data.form_failed;
    let elsewhere = data.elsewhere.clone();
    // After a Refresh sent without JavaScript (the island says it itself).
    let refreshed = data.notice.and_then(|notice| match notice {
        Notice::Refreshed => Some(crate::dto::refresh_notice(false)),
        Notice::RefreshedRecently => Some(crate::dto::refresh_notice(true)),
        Notice::Disconnected | Notice::AlreadyEnded(_) | Notice::NoSessionHere => None,
    });
    match data.session.unwrap_or(Ok(SessionStatus::NoSession)) {
        Ok(SessionStatus::Active(view)) => {
            // The island's start: in context for its server rendering, and in the section
            // around it for the browser.
            let start = PanelStart {
                session: crate::dto::PanelView::from(&view),
                form_token: token,
                organization: organization.clone(),
                form_error: crate::islands::session_panel::form_post_error(),
            };
            let start_json = leptos::serde_json::to_string(&start).unwrap_or_default();
            provide_context(start);
            view! {
            <DemoBanner demo />
            {logo}
            {refreshed.map(|text| view! {
                <p role="status" data-testid="notice" class="mb-4 rounded border border-green-700 bg-green-50 px-4 py-3 text-green-900">
                    {text}
                </p>
            })}
            // Network access follows the session's address, not the browser: said when this
            // page was asked for from another (a laptop moved to another network).
            {elsewhere.map(|here| view! {
                <p data-testid="elsewhere" class="mb-4 rounded border border-amber-600 bg-amber-50 px-4 py-3 text-amber-950">
                    {format!("This device now reaches the portal from {here}, but this session is for {}: network access follows that address. If this device has no network access here, Disconnect and sign in again.", view.client_ip)}
                </p>
            })}
            {view.reply_message.clone().map(|message| view! {
                <p data-testid="reply-message" dir="auto" class="mb-4 whitespace-pre-line rounded bg-blue-50 px-4 py-3 text-blue-950">
                    {message}
                </p>
            })}
            // `data-panel`: the island's `PANEL_START`.
            <section class="brand-bar rounded-lg bg-white p-4 shadow sm:p-6" aria-labelledby="session-title"
                data-panel=start_json>
                <SessionPanel />
                <LocalEndTime at_ms=view.ends_at_ms utc=view.ends_at_utc.clone() />
                // Beside the countdown they speak of (black-box tester U's D2 of session 80:
                // below the organization's help, off a phone's screen).
                <noscript>
                    <p class="mt-4 text-center text-sm text-slate-600">
                        "Without JavaScript the time left does not count down or update by itself: reload the page to see it."
                    </p>
                </noscript>
                // With JavaScript, should the panel's script not start (a proxy that blocks it, a
                // download that failed or crawls): shown by the stylesheet some seconds on; the
                // panel removes it once it runs.
                <p id="not-live" data-testid="not-live" class="not-live mt-4 text-center text-sm text-slate-600">
                    "The time left is not counting down yet: this page's script has not started (blocked, or still loading over a slow connection). If it stays so, reload the page."
                </p>
                // Fixed for the session's life: rendered here, not in the island's WASM.
                // Each name beside its value where both fit, the value below it where not.
                <dl class="mt-6 space-y-1 border-t border-slate-200 pt-4 text-sm">
                    <div class="flex flex-wrap gap-x-3">
                        <dt class="w-32 shrink-0 text-slate-600">"User"</dt>
                        // As the RADIUS server named it (nothing checked it): never mirrored.
                        <dd data-testid="username" dir="auto">{crate::validation::shown_plainly(&view.username).into_owned()}</dd>
                    </div>
                    <div class="flex flex-wrap gap-x-3">
                        <dt class="w-32 shrink-0 text-slate-600">"Organization"</dt>
                        // Its own direction: a Hebrew name with Latin in it reads right.
                        <dd dir="auto">{view.organization.clone()}</dd>
                    </div>
                    <div class="flex flex-wrap gap-x-3">
                        <dt class="w-32 shrink-0 text-slate-600">"Device address"</dt>
                        <dd data-testid="client-ip">{view.client_ip.clone()}</dd>
                    </div>
                </dl>
            </section>
            {help}
            <IslandScripts />
        }
        .into_any()
        }
        // A page loaded without a link to a session is the sign-in page's to show, whatever
        // runs for the address (another device behind the same address, say); only a page
        // that was showing this browser's session hears that it runs on without it — as the
        // island does, also without JavaScript: after its Refresh or Disconnect failed (its
        // cookies cleared), never "no session" while the device's session and its network
        // access run on.
        Ok(SessionStatus::Ended(EndReason::NotLinked)) if !form_failed => {
            super::notice_next(Notice::NoSessionHere);
            super::redirect(&format!("{base}/"));
            ().into_any()
        }
        // What the live panel says when the session ends while the page is open.
        Ok(SessionStatus::Ended(reason)) => view! {
            <DemoBanner demo />
            {logo}
            <section class="brand-bar rounded-lg bg-white p-4 shadow sm:p-6" aria-labelledby="session-title">
                <h1 id="session-title" class="text-2xl font-semibold">{over_texts(reason)[0]}</h1>
                <div data-testid="ended" role="status" class="mt-6 text-center">
                    <p class="text-lg font-semibold">{over_texts(reason)[1]}</p>
                    <p class="mt-1 text-sm text-slate-700">{end_text(reason)}</p>
                    // A disabled organization offers no sign-in: its notice instead of the link.
                    {if active && reason != EndReason::OrganizationDisabled {
                        view! { <p class="mt-4"><a class="brand-link text-blue-800 underline" href=format!("{base}/")>"Sign in again"</a></p> }.into_any()
                    } else {
                        view! { <DisabledNotice /> }.into_any()
                    }}
                </div>
            </section>
            {help}
            // Wherever the disabled notice is shown.
            {(!active || reason == EndReason::OrganizationDisabled).then(|| view! { <WatchForEnable base=base.clone() /> })}
        }
        .into_any(),
        // A form post (Refresh without JavaScript) from a page whose session this browser no
        // longer has: its answer says so here, rather than the sign-in page in silence.
        Ok(SessionStatus::NoSession) if form_failed => view! {
            <DemoBanner demo />
            {logo}
            <section class="brand-bar rounded-lg bg-white p-4 shadow sm:p-6" aria-labelledby="session-title">
                <h1 id="session-title" class="text-2xl font-semibold">"No session"</h1>
                <p data-testid="ended" role="alert" class="mt-6 text-center">{crate::error::PortalError::NoSession.to_string()}</p>
                <p class="mt-1 text-center text-sm text-slate-700">"It ended while this page was open (disconnected from another tab or window, or its time ran out), or this browser no longer holds it."</p>
                <p class="mt-4 text-center"><a class="brand-link text-blue-800 underline" href=format!("{base}/")>"Sign in"</a></p>
            </section>
            {help}
        }
        .into_any(),
        Ok(SessionStatus::NoSession) => {
            super::notice_next(Notice::NoSessionHere);
            super::redirect(&format!("{base}/"));
            ().into_any()
        }
        // The session could not be read (the database away): the page says so, and how to
        // look again once it is back.
        // With a heading, as every other state of the page (the UI review's L1).
        Err(e) => view! {
            <DemoBanner demo />
            {logo}
            <section class="brand-bar rounded-lg bg-white p-4 shadow sm:p-6" aria-labelledby="session-title">
                <h1 id="session-title" class="mb-4 text-2xl font-semibold">"Your session cannot be shown right now"</h1>
                <ErrorMessage error=Signal::stored(Some(e.to_string())) />
                <p class="mt-4">
                    <a href=format!("{base}/session") data-testid="try-again" class="brand-link text-blue-800 underline">
                        "Try again"
                    </a>
                </p>
            </section>
        }
        .into_any(),
    }
}

/// The loader's markup with its placeholder nonce ([`IslandScripts`]), made once per process:
/// the first call reads `hash.txt` (Leptos's `HydrationScripts` panics when it cannot — out of
/// file descriptors, say), so `serve` makes it before it takes requests ([`crate::warm_up`]).
#[cfg(feature = "ssr")]
pub(crate) fn island_scripts_template(options: &LeptosOptions) -> &'static (String, String) {
    use leptos::nonce::use_nonce;
    static TEMPLATE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        Owner::new().with(|| {
            leptos::nonce::provide_nonce();
            let placeholder = use_nonce().map(|n| n.to_string()).unwrap_or_default();
            let options = options.clone();
            let html = view! { <HydrationScripts options islands=true /> }.to_html();
            // Only the loader script: Leptos also writes preload links for the JS and the WASM,
            // which a browser without JavaScript downloads for nothing (right before the
            // script that loads them anyway, they win nothing) — and with the CSP nonce in
            // their `crossorigin`, where the browser does not hide it from the page.
            let html = html
                .find("<script")
                .map_or(html.as_str(), |at| &html[at..])
                .to_string();
            (html, placeholder)
        })
    })
}

/// The WASM loader, rendered only on pages that have an island so other pages download none.
///
/// Leptos's `HydrationScripts` reads `hash.txt` from disk on every render; its markup is the
/// same for every page but the request's nonce, so it is rendered once per process with a
/// nonce of its own, which each page swaps for the request's.
#[cfg(feature = "ssr")]
#[component]
fn IslandScripts() -> impl IntoView {
    use leptos::nonce::use_nonce;
    let options = use_context::<LeptosOptions>()?;
    let (template, placeholder) = island_scripts_template(&options);
    // What `HydrationScripts` does to the page besides its markup: in islands mode, what
    // follows is not hydrated.
    if let Some(context) = Owner::current_shared_context() {
        context.set_is_hydrating(false);
    }
    let nonce = use_nonce().map(|n| n.to_string()).unwrap_or_default();
    let html = if placeholder.is_empty() {
        template.clone()
    } else {
        template.replace(placeholder.as_str(), &nonce)
    };
    Some(leptos::tachys::html::InertElement::new(html))
}

/// Shows the end time in the browser's time zone before the page is first painted (until then
/// the server's UTC time showed, then changed). It changes only the text in the paragraph's
/// text nodes, so the island hydrates the same markup. Without JavaScript the UTC time stays,
/// labelled.
///
/// It also defines the formatter the island uses for every end time after ([`END_TIME_FN`]),
/// so the two never differ: the time (with its date when that is not today, the month by its
/// name: `4/12` reads as April in one country and December in another) in English, as the
/// page is — the browser's own English when its language is one, else English on the clock
/// the browser's language uses (24-hour for `de`, `ja`, `fr`…: `en-GB`; 12-hour for `ar-EG`,
/// `ko`…: `en-US`), with the browser's own numbering system left out (`en-US-u-nu-arab` asks
/// for Arabic-Indic digits; an hour cycle asked for, `-u-hc-h23`, is kept). The browser's locale itself would put Arabic-Indic digits or a right-to-left "م"
/// into the English sentence.
/// (`END_MS` and `UTC` stand for the end time in Unix milliseconds and as the server wrote it.)
#[cfg(feature = "ssr")]
const LOCAL_END_TIME_JS: &str = "(function(){var l=(navigator.language||'en').split(/-x-/i)[0].replace(/-nu-[a-z0-9]+/i,'').replace(/-u$/i,'');try{new Intl.DateTimeFormat(l)}catch(e){l='en'}if(!/^en(-|$)/i.test(l)){try{var o=new Intl.DateTimeFormat(l,{hour:'numeric'}).resolvedOptions();l=(o.hourCycle?/h2/.test(o.hourCycle):o.hour12===false)?'en-GB':'en-US'}catch(e){l='en-US'}}var f=window.portalEndTime=function(m){var d=new Date(m);return d.toDateString()===new Date().toDateString()?d.toLocaleTimeString(l):d.toLocaleString(l,{dateStyle:'medium',timeStyle:'medium'})};var p=document.querySelector('[data-testid=ends]');if(!p)return;var t=f(END_MS);p.childNodes.forEach(function(c){if(c.nodeType===3)c.data=c.data.replace('UTC',t)})})()";

/// The global the session page's script defines to format an end time ([`LOCAL_END_TIME_JS`]).
pub const END_TIME_FN: &str = "portalEndTime";

#[cfg(feature = "ssr")]
#[component]
fn LocalEndTime(at_ms: i64, utc: String) -> impl IntoView {
    let nonce = leptos::nonce::use_nonce()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let script = local_end_time_script(at_ms, &utc);
    leptos::tachys::html::InertElement::new(format!("<script nonce=\"{nonce}\">{script}</script>"))
}

/// The script for an end at `at_ms`, which the server wrote as `utc` (`HH:MM:SS`, or
/// `YYYY-MM-DD HH:MM:SS` on another UTC day): only digits, dashes, colons and spaces of it are
/// kept, safe in the script's single-quoted string.
#[cfg(feature = "ssr")]
fn local_end_time_script(at_ms: i64, utc: &str) -> String {
    let utc: String = utc
        .chars()
        .filter(|c| c.is_ascii_digit() || matches!(c, ':' | '-' | ' '))
        .collect();
    LOCAL_END_TIME_JS
        .replace("END_MS", &at_ms.to_string())
        .replace("'UTC'", &format!("'{utc} UTC'"))
}

/// In the browser the page around the islands is never rendered.
#[cfg(not(feature = "ssr"))]
#[component]
fn LocalEndTime(at_ms: i64, utc: String) -> impl IntoView {
    let _ = (at_ms, utc);
}

/// In the browser the page around the islands is never rendered.
#[cfg(not(feature = "ssr"))]
#[component]
fn IslandScripts() -> impl IntoView {}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    #[test]
    fn the_end_time_script_finds_the_text_the_server_wrote_and_carries_nothing_else() {
        let same_day = super::local_end_time_script(1_767_225_600_000, "12:00:00");
        assert!(same_day.contains("(1767225600000)"), "{same_day}");
        assert!(
            same_day.contains(&format!("window.{}=", super::END_TIME_FN)),
            "{same_day}"
        );
        assert!(same_day.contains("replace('12:00:00 UTC',t)"), "{same_day}");
        // Another UTC day: the date is part of the text to replace.
        let next_day = super::local_end_time_script(1_767_225_600_000, "2026-01-01 00:00:00");
        assert!(
            next_day.contains("replace('2026-01-01 00:00:00 UTC',t)"),
            "{next_day}"
        );
        // Nothing but the clock's characters reaches the script.
        let hostile = super::local_end_time_script(0, "1');alert(1);//</script>");
        assert!(
            !hostile.contains("alert") && !hostile.contains("</script"),
            "{hostile}"
        );
        assert!(hostile.contains("replace('11 UTC',t)"), "{hostile}");
    }
}
