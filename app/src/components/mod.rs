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
                {help_text.map(|text| view! { <p>{text}</p> })}
                {contact.map(|contact| view! { <p class="mt-1">"Contact: " {contact}</p> })}
            </div>
        }
    })
}
