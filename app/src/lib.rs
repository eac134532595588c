//! The portal's user interface: pages, the session-panel island, server fn declarations and the
//! wire types they exchange.
//!
//! Compiled twice: with `ssr` it is linked into the server (pages render to HTML there, server fns
//! run there); with `hydrate` it becomes the WASM bundle, of which only the `islands/` code is
//! reachable. This crate holds no RADIUS, storage or policy code: server fns are shims over the
//! [`service::PortalService`] interface that the `server` crate implements and provides through
//! Leptos context.
//!
//! Layout: `pages/` (one file per route, server-rendered), `islands/` (the only interactive code,
//! shipped as WASM), `components/` (plain views), `api` (server fns), `dto` (wire types), `error`
//! (the user-facing error type), `validation` (login input rules).

// Pages render in one synchronous pass (`pages`): their view types nest deeper than the
// default limit allows the compiler to lay out.
#![recursion_limit = "256"]

pub mod api;
pub mod components;
pub mod dto;
pub mod error;
pub mod islands;
pub mod pages;
#[cfg(feature = "ssr")]
pub mod service;
pub mod validation;

use leptos::prelude::*;

/// Where the server sends `/o/{slug}/…` of no organization: the not-found page, saying so.
pub const NO_SUCH_PORTAL: &str = "/no-such-portal";
/// What a session page with its session active is (its title, [`page_title`]).
pub const SESSION_TITLE: &str = "Your session";

/// A page's title: what the page is, the organization (when the page is one's), then the
/// portal. Tabs and screen readers tell the pages apart by it; someone who belongs to several
/// organizations tells their portals apart.
pub fn page_title(what: &str, organization: &str) -> String {
    if organization.is_empty() {
        format!("{what} – Network access portal")
    } else {
        format!("{what} – {organization} – Network access portal")
    }
}

/// The pages, by path (after any `/o/{slug}` prefix). They are only ever rendered on the server
/// (the browser runs islands alone), so there is no client-side router: the server picks the
/// page from the request's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// `/`: the sign-in form.
    SignIn,
    /// `/session`: the user's access session.
    Session,
    /// Any other path, and `/no-such-portal` (where `/o/{slug}/…` of an unknown organization
    /// is sent): the not-found page (404).
    NotFound,
}

impl Page {
    /// The paths that are pages (the server routes each to the page renderer).
    pub const PATHS: [&'static str; 3] = ["/", "/session", NO_SUCH_PORTAL];

    /// The page at `path` (a query is ignored).
    pub fn at(path: &str) -> Page {
        match path.split_once('?').map_or(path, |(path, _)| path) {
            "/" => Page::SignIn,
            "/session" => Page::Session,
            _ => Page::NotFound,
        }
    }
}

/// The HTML document around every page. Server-only: it sets the Content-Security-Policy with this
/// request's nonce and makes the Leptos options available to pages that host an island.
pub fn shell(options: LeptosOptions, page: Page) -> impl IntoView {
    #[cfg(feature = "ssr")]
    set_content_security_policy();
    provide_context(options.clone());
    let info = pages::site_info();
    // A page not found is no organization's (`/o/{slug}/…` of none comes here too).
    let organization = match page {
        Page::NotFound => "",
        _ => info.as_ref().map_or("", |info| info.organization.as_str()),
    };
    let open = info.as_ref().is_none_or(|info| info.active);
    let title = page_title(&title(page, open), organization);
    // Every page of an organization's portal wears its accent colour.
    let brand = info
        .filter(|info| info.branding.accent)
        .map(|info| view! { <link rel="stylesheet" href=format!("{}/brand.css", info.base) /> });
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
                <link id="leptos" rel="stylesheet" href=stylesheet_href(&options) />
                <AutoReload options=options />
                <title>{title}</title>
                {brand}
            </head>
            <body class="min-h-screen bg-slate-100 text-slate-900 antialiased wrap-anywhere">
                <App page />
            </body>
        </html>
    }
}

/// What the page is, the start of its title ([`page_title`]). `open`: its organization takes
/// sign-ins (a disabled one's sign-in page offers no form, and says so).
fn title(page: Page, open: bool) -> String {
    use dto::SessionStatus;
    let sign_in = if open {
        "Sign in"
    } else {
        "Sign-in not available"
    };
    match page {
        // After a Disconnect the title says so first: it is what a screen reader reads out
        // when the page loads.
        Page::SignIn => {
            let data = pages::data();
            match data.notice {
                Some(dto::Notice::Disconnected) => format!("Disconnected – {sign_in}"),
                Some(dto::Notice::AlreadyEnded(_)) => format!("Session ended – {sign_in}"),
                _ if data.form_failed => format!("Sign-in failed – {sign_in}"),
                _ => sign_in.to_string(),
            }
        }
        Page::Session => {
            let data = pages::data();
            let what = match data.session {
                Some(Ok(SessionStatus::Ended(reason))) => {
                    islands::session_panel::over_texts(reason)[0]
                }
                // Rendered only after a form post that found no session (else a redirect).
                Some(Ok(SessionStatus::NoSession)) => "No session",
                // After a Refresh without JavaScript, like the sign-in page after a Disconnect.
                Some(Ok(SessionStatus::Active(_))) => match data.notice {
                    Some(dto::Notice::Refreshed) => "Refreshed – Your session",
                    Some(dto::Notice::RefreshedRecently) => {
                        "Refresh changed nothing – Your session"
                    }
                    // A Refresh or Disconnect sent without JavaScript and refused: the title
                    // (what a screen reader reads as the page loads) says it was not done (the
                    // UI review's L1: "Your session", as before the press).
                    _ if data.form_failed => "Not done – Your session",
                    _ => SESSION_TITLE,
                },
                Some(Err(_)) => "Not available – Your session",
                _ => SESSION_TITLE,
            };
            what.to_string()
        }
        Page::NotFound => "Page not found".to_string(),
    }
}

/// Reads what the pages take from `hash.txt` (the stylesheet's name, the island loader's
/// markup) once, before `serve` takes requests: a first read under load that failed (out of
/// file descriptors) would fail a page — or, for the stylesheet, name the wrong file until a
/// restart.
#[cfg(feature = "ssr")]
pub fn warm_up(options: &LeptosOptions) {
    // Without the file (a test's site, say) there is nothing to read — and Leptos's loader
    // would panic here rather than at a page.
    if hash_file(options).is_some_and(|file| !file.exists()) {
        return;
    }
    let _ = stylesheet_href(options);
    let _ = pages::session::island_scripts_template(options);
}

/// The stylesheet's URL with its content hash (`hash.txt` beside the binary, as Leptos's
/// `HashedStylesheet` finds it), worked out once per process rather than read on every render.
fn stylesheet_href(options: &LeptosOptions) -> String {
    static HREF: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HREF.get_or_init(|| {
        let hashes = hash_file(options)
            .and_then(|file| std::fs::read_to_string(file).ok())
            .unwrap_or_default();
        let name = hashed_assets(options, &hashes)
            .find_map(|(kind, name)| (kind == "css").then_some(name))
            .unwrap_or_else(|| format!("{}.css", options.output_name));
        format!("/{}/{name}", options.site_pkg_dir)
    })
    .clone()
}

/// Where `hash.txt` is when the asset names are hashed: beside the binary, where
/// `cargo leptos build` writes it and Leptos's own components read it.
pub fn hash_file(options: &LeptosOptions) -> Option<std::path::PathBuf> {
    if !options.hash_files {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(options.hash_file.as_ref()))
}

/// The pages' asset files `hash.txt`'s text (`hashes`) names: (`js`, `wasm` or `css`, the
/// file's name in the site's pkg directory). cargo-leptos may list other kinds (WASM
/// splitting's): not the pages'.
pub fn hashed_assets<'a>(
    options: &'a LeptosOptions,
    hashes: &'a str,
) -> impl Iterator<Item = (&'a str, String)> + 'a {
    hashes.lines().filter_map(move |line| {
        let (kind, hash) = line.split_once(':')?;
        let kind = kind.trim();
        matches!(kind, "js" | "wasm" | "css").then(|| {
            (
                kind,
                format!("{}.{}.{kind}", options.output_name, hash.trim()),
            )
        })
    })
}

/// Sends the strict CSP of design.md §6 with a fresh nonce; Leptos puts the same nonce on the
/// scripts it renders (hydration loader, island props).
#[cfg(feature = "ssr")]
fn set_content_security_policy() {
    use leptos::nonce::use_nonce;
    let Some(response) = use_context::<leptos_axum::ResponseOptions>() else {
        return;
    };
    let nonce = use_nonce().map(|n| n.to_string()).unwrap_or_default();
    if let Ok(value) = http::HeaderValue::from_str(&content_security_policy(&nonce)) {
        response.insert_header(http::header::CONTENT_SECURITY_POLICY, value);
    }
}

/// The CSP source of the sign-in page's script ([`pages::login::SIGN_IN_SCRIPT`]; the server's
/// unit test checks it is that script's SHA-256).
pub const SIGN_IN_SCRIPT_HASH: &str = "sha256-hQdZKIVv/3YdXv+IW8ShzFy4abj90/5aSvbJpPSN83A=";

/// The strict CSP of design.md §6 with `nonce` for the page's scripts.
#[cfg(feature = "ssr")]
pub fn content_security_policy(nonce: &str) -> String {
    // Under `cargo leptos watch` the live-reload websocket needs its port in connect-src.
    static RELOAD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let reload = RELOAD.get_or_init(|| match std::env::var("LEPTOS_WATCH") {
        Ok(_) => {
            let port = std::env::var("LEPTOS_RELOAD_PORT").unwrap_or_else(|_| "3001".into());
            format!(" ws://127.0.0.1:{port} ws://localhost:{port}")
        }
        Err(_) => String::new(),
    });
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' '{SIGN_IN_SCRIPT_HASH}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'{reload}; object-src 'none'; \
         base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
}

/// The page inside the document's `<main>`.
#[component]
pub fn App(page: Page) -> impl IntoView {
    let page = match page {
        Page::SignIn => pages::login::LoginPage().into_any(),
        Page::Session => pages::session::SessionPage().into_any(),
        Page::NotFound => pages::not_found::NotFound().into_any(),
    };
    view! { <main class="mx-auto max-w-md px-4 py-10">{page}</main> }
}

/// WASM entry point: hydrates the islands on the page (nothing else runs in the browser).
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    // Readable panics in the browser console while developing; release builds leave the panic
    // formatting code out of the bundle (every user downloads it).
    #[cfg(debug_assertions)]
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_islands();
}

/// Cases per property test: `PROPTEST_CASES` when set (long fuzz runs, `scripts/fuzz.sh`),
/// else the test's own number (CI).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
