//! Plain (non-interactive) views shared by pages and islands.

use leptos::prelude::*;

/// An error box announced to screen readers; renders nothing without an error (its sentence:
/// a `PortalError`'s text, as the server composed it).
#[component]
pub fn ErrorMessage(#[prop(into)] error: Signal<Option<String>>) -> impl IntoView {
    move || {
        error.get().map(|e| {
            view! {
                <p id="form-error" role="alert" class="mt-4 whitespace-pre-line rounded border border-red-700 bg-red-50 px-4 py-3 text-red-900">
                    {e}
                </p>
            }
        })
    }
}

/// What a disabled organization's pages say instead of offering to sign in.
#[component]
pub fn DisabledNotice() -> impl IntoView {
    view! {
        <p role="alert" data-testid="disabled" class="mt-6 rounded border border-red-700 bg-red-50 px-4 py-3 text-red-900">
            "Signing in is not available: this organization's network access has been disabled. Please contact your network administrator."
        </p>
    }
}

/// The "demo mode" warning shown on every page under `radius-portal demo`.
#[component]
pub fn DemoBanner(demo: bool) -> impl IntoView {
    demo.then(|| {
        view! {
            <p class="mb-6 rounded bg-amber-200 px-4 py-2 text-center font-bold text-amber-950">
                "DEMO MODE — built-in test RADIUS server, not for production"
            </p>
        }
    })
}

/// The organization's logo at the top of its pages (sign-in and session), when it has one.
#[component]
pub fn Logo(base: String, organization: String, shown: bool) -> impl IntoView {
    shown.then(|| {
        view! {
            <img src=format!("{base}/logo") alt=format!("{organization} logo") data-testid="logo"
                class="logo mb-4 h-16 w-auto" />
        }
    })
}

/// The organization's help line and contact, as plain text.
#[component]
pub fn Help(help_text: Option<String>, contact: Option<String>) -> impl IntoView {
    (help_text.is_some() || contact.is_some()).then(|| {
        view! {
            <div class="mt-4 text-sm text-slate-700" data-testid="help">
                // Its line breaks are the operator's (the configuration allows them), and
                // either may be written right to left (the UI review's L5).
                {help_text.map(|text| view! { <p class="whitespace-pre-line" dir="auto">{text}</p> })}
                {contact.map(|contact| view! { <p class="mt-1">"Contact: " <span dir="auto">{contact}</span></p> })}
            </div>
        }
    })
}

/// A page loaded saying its organization is disabled (the session page, the sign-in page)
/// looks every 15 s (while in view, and when it comes into view) whether the organization is
/// enabled again, and is loaded again then: it offers the sign-in again, or shows the session
/// an enable that skipped its stop left running — as the live panel of a page that was open does (black-box tester U's D3: a
/// reloaded page said "not available" long after the enable). It asks the organization's
/// `site_info` (the portal's cache: no database read); a failed look changes nothing. Without
/// JavaScript the user reloads.
#[cfg(feature = "ssr")]
const WATCH_FOR_ENABLE_JS: &str = "(function(){function look(){if(document.hidden)return;fetch('PATH',{method:'POST',headers:{'Content-Type':'application/x-www-form-urlencoded','Accept':'application/json'},body:''}).then(function(r){return r.ok?r.json():null}).then(function(s){if(s&&s.active===true)location.reload()}).catch(function(){})}setInterval(look,15000);document.addEventListener('visibilitychange',look)})()";

#[cfg(feature = "ssr")]
#[component]
pub fn WatchForEnable(base: String) -> impl IntoView {
    let nonce = leptos::nonce::use_nonce()
        .map(|n| n.to_string())
        .unwrap_or_default();
    leptos::tachys::html::InertElement::new(format!(
        "<script nonce=\"{nonce}\">{}</script>",
        watch_for_enable_script(&base)
    ))
}

/// [`WATCH_FOR_ENABLE_JS`] for the portal under `base` (`""` or `/o/{slug}`): only the
/// characters of a path are kept, safe in the script's single-quoted string.
#[cfg(feature = "ssr")]
fn watch_for_enable_script(base: &str) -> String {
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
        .collect();
    let path = format!(
        "{base}{}",
        <crate::api::GetSiteInfo as leptos::server_fn::ServerFn>::PATH
    );
    WATCH_FOR_ENABLE_JS.replace("PATH", &path)
}

/// In the browser the pages around the islands are never rendered.
#[cfg(not(feature = "ssr"))]
#[component]
pub fn WatchForEnable(base: String) -> impl IntoView {
    let _ = base;
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    #[test]
    fn the_disabled_pages_script_asks_its_own_portal_and_carries_nothing_else() {
        let script = super::watch_for_enable_script("/o/beta");
        assert!(script.contains("fetch('/o/beta/api/site_info'"), "{script}");
        let hostile = super::watch_for_enable_script("/o/x');alert(1);('");
        assert!(!hostile.contains("alert(1)"), "{hostile}");
        assert!(!hostile.contains("');"), "{hostile}");
    }
}
