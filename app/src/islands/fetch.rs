//! The island's own small client for the three server fns it calls (refresh, disconnect,
//! session status): one `fetch` posting a form body, the answer decoded as JSON — the value, or
//! the server's `PortalError` for a non-2xx status. The server fns stay the single server-side
//! definition; this replaces only leptos' generic browser client, which weighed more in the WASM
//! every user downloads than the island itself.

use crate::error::PortalError;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, RequestInit, Response};

fn failed(what: &str) -> PortalError {
    PortalError::Communication(what.to_string())
}

/// The form body carrying the form token.
pub fn csrf_form(token: Option<&str>) -> String {
    let token = token.unwrap_or_default();
    format!("csrf={}", String::from(js_sys::encode_uri_component(token)))
}

/// POSTs `form` (url-encoded) to the server fn at `path` and decodes its JSON answer.
pub async fn call<T: DeserializeOwned>(path: &str, form: String) -> Result<T, PortalError> {
    let headers = Headers::new().map_err(|_| failed("headers"))?;
    let _ = headers.set("Content-Type", "application/x-www-form-urlencoded");
    let _ = headers.set("Accept", "application/json");
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(&form));
    let promise = leptos::prelude::window().fetch_with_str_and_init(path, &init);
    let response: Response = JsFuture::from(promise)
        .await
        .map_err(|_| failed("network"))?
        .dyn_into()
        .map_err(|_| failed("response"))?;
    let body = response.text().map_err(|_| failed("body"))?;
    let text = JsFuture::from(body)
        .await
        .map_err(|_| failed("body"))?
        .as_string()
        .unwrap_or_default();
    if response.ok() {
        serde_json::from_str(&text).map_err(|_| failed("answer"))
    } else {
        Err(serde_json::from_str(&text).unwrap_or_else(|_| failed("error answer")))
    }
}
