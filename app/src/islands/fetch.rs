//! The island's own small client for the three server fns it calls (refresh, disconnect,
//! session status): one `fetch` posting a form body, the answer read as JSON (`super::json`) —
//! the value, or for a non-2xx status the sentence the server's error answer carries
//! (`message`: the server composed it from its `PortalError`, so the WASM every user downloads
//! holds none of that type's texts and decoding). The server fns stay the single server-side definition; this
//! replaces only leptos' generic browser client, which weighed more in the WASM than the island
//! itself.

use super::json::Json;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, Headers, RequestInit, Response};

/// What the user reads when the portal cannot be reached or its answer cannot be read.
fn unreachable<E>(_: E) -> String {
    crate::error::UNREACHABLE.to_string()
}

/// The form body carrying the form token.
pub fn csrf_form(token: Option<&str>) -> String {
    let token = token.unwrap_or_default();
    format!("csrf={}", String::from(js_sys::encode_uri_component(token)))
}

/// How long a call may take, its answer read, before the user is told the portal could not be
/// reached. Each of the three answers in well under a second; a link gone silent (Wi-Fi
/// dropped, a laptop woken on another network) would otherwise leave a pressed button busy,
/// and the page saying nothing, for as long as the browser keeps the connection.
const TIMEOUT_MS: u64 = 10_000;

/// POSTs `form` (url-encoded) to the server fn at `path` and reads its JSON answer with `read`;
/// `Err` is the sentence to show (also after [`TIMEOUT_MS`], or for an answer `read` refuses).
pub async fn call<T>(
    path: &str,
    form: String,
    read: impl FnOnce(&Json) -> Option<T>,
) -> Result<T, String> {
    let headers = Headers::new().map_err(unreachable)?;
    let _ = headers.set("Content-Type", "application/x-www-form-urlencoded");
    let _ = headers.set("Accept", "application/json");
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(&form));
    if let Ok(controller) = AbortController::new() {
        init.set_signal(Some(&controller.signal()));
        leptos::prelude::set_timeout(
            move || controller.abort(),
            std::time::Duration::from_millis(TIMEOUT_MS),
        );
    }
    let promise = leptos::prelude::window().fetch_with_str_and_init(path, &init);
    let response: Response = JsFuture::from(promise)
        .await
        .map_err(unreachable)?
        .dyn_into()
        .map_err(unreachable)?;
    let body = response.text().map_err(unreachable)?;
    let text = JsFuture::from(body)
        .await
        .map_err(unreachable)?
        .as_string()
        .unwrap_or_default();
    let json = Json::parse(&text);
    if response.ok() {
        json.as_ref().and_then(read).ok_or_else(|| unreachable(()))
    } else {
        // The part of the server's error answer the island shows.
        let message = json.as_ref().and_then(|j| j.get("message")?.str());
        Err(message.map_or_else(|| unreachable(()), str::to_string))
    }
}
