//! `/` (and `/o/{slug}/`): the sign-in form of the organization's portal. A plain HTML form
//! posting to the `login` server fn: it ships no WASM and works without JavaScript; an error of a
//! plain form post is kept in the web session by the server (`http::flash`) and handed back to
//! this page's `ServerAction` on the next view — never read from the URL. A
//! disabled organization's page says so and offers no form.

use crate::{
    api::Login,
    components::{DemoBanner, DisabledNotice, ErrorMessage, Help, Logo, WatchForEnable},
    dto::Notice,
};
use leptos::{either::Either, prelude::*, server_fn::ServerFn};

/// The sign-in page.
#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    let error = move || login.value().get().and_then(Result::err);
    let info = super::site_info();
    let demo = info.as_ref().is_some_and(|i| i.demo);
    let active = info.as_ref().is_none_or(|i| i.active);
    let organization = info
        .as_ref()
        .map(|i| i.organization.clone())
        .unwrap_or_default();
    let organization_id = info
        .as_ref()
        .map(|i| i.organization_id.clone())
        .unwrap_or_default();
    let branding = info
        .as_ref()
        .map(|i| i.branding.clone())
        .unwrap_or_default();
    let base = info.map(|i| i.base).unwrap_or_default();
    let data = super::data();
    let token = data.form_token();
    // After a failed sign-in: the name tried, filled in again, and the cursor in the password —
    // or in the username when that is what the server refused.
    let tried = data.username.unwrap_or_default();
    let failed = login.value().get_untracked().and_then(Result::err);
    let username_refused = matches!(
        failed,
        Some(crate::error::PortalError::InvalidInput { ref field, .. }) if field == "username"
    );
    let again = !tried.is_empty() && !username_refused;
    // The password is said to be in question only when it may be what is wrong (refused by the
    // server, or by the form's own check) — not when the servers could not be reached, say:
    // it is to be typed again all the same (it is never sent back).
    let password_refused = again
        && matches!(failed, Some(crate::error::PortalError::Rejected { .. }))
        || matches!(
            failed,
            Some(crate::error::PortalError::InvalidInput { ref field, .. }) if field == "password"
        );
    let notice = data.notice.and_then(|notice| {
        let text = match notice {
            Notice::Disconnected => {
                "You are disconnected: your session has ended, and the network access it gave is being removed.".into()
            }
            // Why, when the portal knows.
            Notice::AlreadyEnded(Some(reason)) => format!(
                "Your session had already ended, so there was nothing to disconnect. {}",
                crate::islands::session_panel::end_text(reason)
            ),
            Notice::AlreadyEnded(None) => {
                "Your session had already ended (its time ran out, it was ended elsewhere, or a new sign-in from this device replaced it), so there was nothing to disconnect.".into()
            }
            Notice::NoSessionHere => "This browser holds no running session here.".into(),
            // The session page's.
            Notice::Refreshed | Notice::RefreshedRecently => return None,
        };
        // A disabled organization's page offers no sign-in (its notice follows).
        let then = match notice {
            Notice::NoSessionHere => " To connect, sign in below.",
            _ => " Sign in again to reconnect.",
        };
        // A Disconnect done is a success; a session found ended already, or none, is news
        // (black-box tester U's D4 of session 80: all in the success's green).
        let colours = match notice {
            Notice::Disconnected => "border-green-700 bg-green-50 text-green-900",
            _ => "border-blue-800 bg-blue-50 text-blue-900",
        };
        Some(view! {
            <p role="status" data-testid="notice" class=format!("mt-6 rounded border px-4 py-3 {colours}")>
                {text}
                {active.then_some(then)}
            </p>
        })
    });
    let body = if active {
        Either::Left(view! {
            <ErrorMessage error=Signal::derive(move || error().map(|e| e.to_string())) />
            // A plain form (the page ships no script file: one inline script, allowed by its
            // hash, says the sign-in is under way), posted within the organization's portal
            // (`/o/{slug}/api/login`): a failed post comes back to this page even when the
            // browser sends no Referer.
            <form method="post" action=format!("{base}{}", <Login as ServerFn>::PATH)
                class="mt-6 space-y-4 rounded-lg bg-white p-4 shadow sm:p-6">
                <input type="hidden" name="csrf" value=token />
                <input type="hidden" name="org" value=organization_id />
                <div>
                    <label for="username" class="block text-sm font-medium">"Username"</label>
                    // maxlength far above the 63 bytes allowed (it counts characters, and cuts
                    // a pasted name silently): the server says what is too long, in the form;
                    // it only keeps a pasted page of text from making the request larger than
                    // the portal takes (16 KiB, a bare refusal page): 512 characters each,
                    // percent-encoded at up to 9 bytes, stay under it.
                    // After a failed sign-in the field the cursor is put in says it is the one
                    // in question, and what the error says (screen readers read both).
                    <input id="username" name="username" type="text" required value=tried
                        maxlength="512"
                        autofocus=username_refused
                        aria-invalid=username_refused.then_some("true")
                        aria-describedby=username_refused.then_some("form-error")
                        autocomplete="username" autocapitalize="none" spellcheck="false"
                        class="mt-1 w-full rounded border border-slate-500 px-3 py-2" />
                </div>
                <div>
                    <label for="password" class="block text-sm font-medium">"Password"</label>
                    <input id="password" name="password" type="password" required autofocus=again
                        maxlength="512"
                        aria-invalid=password_refused.then_some("true")
                        aria-describedby=password_refused.then_some("form-error")
                        autocomplete="current-password"
                        class="mt-1 w-full rounded border border-slate-500 px-3 py-2" />
                </div>
                <button type="submit"
                    class="brand-button w-full rounded bg-blue-800 px-4 py-2 font-semibold text-white hover:bg-blue-900">
                    "Sign in"
                </button>
            </form>
            <SigningIn />
            // The way back to a session: a tap target 44 px high (black-box tester U's D8).
            <p class="mt-4 text-sm text-slate-600">
                "Already signed in? "
                <a href=format!("{base}/session") class="brand-link inline-block py-3 text-blue-800 underline">"See your session"</a>
            </p>
            <Help help_text=branding.help_text.clone() contact=branding.contact.clone() />
        })
    } else {
        // Reloaded by itself once the organization is enabled again (black-box tester S's
        // O2: the form came back only when its user reloaded).
        // The help line and contact too: the notice asks the user to contact someone (black-box
        // tester M's D3).
        Either::Right(view! {
            <DisabledNotice />
            <WatchForEnable base=base.clone() />
            <Help help_text=branding.help_text.clone() contact=branding.contact.clone() />
        })
    };
    let logo =
        view! { <Logo base=base.clone() organization=organization.clone() shown=branding.logo /> };
    view! {
        <DemoBanner demo />
        <div class="brand-bar">
            {logo}
            // No sign-in is offered while the organization is disabled: the heading does not
            // offer one either (black-box tester U's D6 of session 83).
            <h1 class="text-2xl font-semibold">
                {if active { "Sign in to the network" } else { "Network access unavailable" }}
            </h1>
            <p class="mt-1 text-slate-700" data-testid="organization" dir="auto">{organization}</p>
        </div>
        {notice}
        {body}
    }
}

/// While a sign-in is under way (the RADIUS server may take seconds) its button says so, and
/// the form is `aria-busy`; the page coming back from the browser's history gets its label
/// back, and so does the page whose sign-in the user stopped with Escape (the browser's stop:
/// the page stays, and its button would say "Signing in…" for ever). Nothing else: the form works the same without it (a second press is answered with
/// the first one's session by the server). Inline, allowed by its hash in the
/// Content-Security-Policy ([`crate::SIGN_IN_SCRIPT_HASH`]), so the kept sign-in page carries
/// no per-request nonce.
pub const SIGN_IN_SCRIPT: &str = "(function(){var s=document.currentScript,f=s&&s.previousElementSibling,b=f&&f.querySelector('button[type=submit]');if(!b)return;var t=b.textContent;function r(){b.textContent=t;f.removeAttribute('aria-busy')}f.addEventListener('submit',function(){b.textContent='Signing in\u{2026}';f.setAttribute('aria-busy','true')});addEventListener('pageshow',r);addEventListener('keydown',function(e){if(e.key==='Escape')r()})})()";

#[cfg(feature = "ssr")]
#[component]
fn SigningIn() -> impl IntoView {
    leptos::tachys::html::InertElement::new(format!("<script>{SIGN_IN_SCRIPT}</script>"))
}

/// The sign-in page is never rendered in the browser.
#[cfg(not(feature = "ssr"))]
#[component]
fn SigningIn() -> impl IntoView {}
