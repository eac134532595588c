//! An organization's look: `{portal}/brand.css` (its accent colour, as a stylesheet because the
//! CSP allows no inline styles) and `{portal}/logo` (its logo file). Both are small, cached
//! briefly (a change shows within a minute), and 404 when the organization has none.

use super::org_scope::OrgScope;
use crate::{config, organizations::Organizations};
use axum::{
    extract::{Extension, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use std::sync::Arc;

/// Path of the stylesheet (under the organization's prefix).
pub const CSS_PATH: &str = "/brand.css";
/// Path of the logo (under the organization's prefix).
pub const LOGO_PATH: &str = "/logo";
const CACHE: &str = "public, max-age=60";

/// The accent colour as a stylesheet (the colour was validated as `#rrggbb`).
pub async fn stylesheet(
    State(organizations): State<Arc<Organizations>>,
    scope: Option<Extension<OrgScope>>,
) -> Response {
    let accent = scope
        .and_then(|Extension(scope)| organizations.get(&scope.id))
        .and_then(|org| org.branding.accent_color.clone())
        .filter(|colour| config::is_colour(colour));
    let Some(accent) = accent else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let css = format!(
        "button.brand-button{{background-color:{accent};border-color:{accent}}}button.brand-button:hover{{filter:brightness(.9)}}\
         a.brand-link{{color:{accent}}}.brand-bar{{border-top:6px solid {accent}}}div.brand-bar{{padding-top:1rem}}"
    );
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        css,
    )
        .into_response()
}

/// The logo file, read when asked (an operator may replace it; a vanished file is a 404 and
/// a log line, never an error page).
pub async fn logo(
    State(organizations): State<Arc<Organizations>>,
    scope: Option<Extension<OrgScope>>,
) -> Response {
    let Some(org) = scope.and_then(|Extension(scope)| organizations.get(&scope.id)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(path) = org.branding.logo_file.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(content_type) = config::logo_content_type(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Read off the async threads; replaced since the check by something else: not served as
    // an image.
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || config::read_logo(&path)).await
    };
    let bytes = read
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        .and_then(|bytes| match config::logo_mismatch(content_type, &bytes) {
            Some(problem) => Err(std::io::Error::other(problem)),
            None => Ok(bytes),
        });
    match bytes {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, CACHE),
                // An SVG is an image here, never a document with scripts.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; sandbox",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            // Anyone may ask for it again and again: at most a line per 5 s.
            crate::throttled!(warn, organization = %org.id, file = %path.display(), error = %e, "logo cannot be served");
            StatusCode::NOT_FOUND.into_response()
        }
    }
}
