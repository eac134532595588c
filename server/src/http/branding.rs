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
    headers: axum::http::HeaderMap,
) -> Response {
    let accent = scope
        .and_then(|Extension(scope)| organizations.get(&scope.id))
        .and_then(|org| org.branding.accent_color.clone())
        .filter(|colour| config::is_colour(colour));
    let Some(accent) = accent else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Readable {
        button,
        hover,
        label,
        link,
        dark_link,
    } = readable(&accent);
    let css = format!(
        "button.brand-button{{background-color:{button};border-color:{button};color:{label}}}button.brand-button:hover{{background-color:{hover};border-color:{hover}}}\
         a.brand-link{{color:{link}}}.brand-bar{{border-top:6px solid {accent}}}div.brand-bar{{padding-top:1rem}}\
         @media (prefers-color-scheme:dark){{a.brand-link{{color:{dark_link}}}}}"
    );
    validated(&headers, css.into_bytes(), "text/css; charset=utf-8", &[])
}

/// An answer of `bytes` with a validator (their digest): a browser asking again with it after
/// the minute gets 304 and no body (the UI review's L3: the logo, up to 256 KiB, came again in
/// full on every visit after the minute).
fn validated(
    headers: &axum::http::HeaderMap,
    bytes: Vec<u8>,
    content_type: &'static str,
    more: &[(header::HeaderName, &'static str)],
) -> Response {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(&bytes);
    let tag = format!("\"{}\"", crate::hex(&digest[..16]));
    let asked_again = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/") == tag || t.trim() == "*");
    let mut response = if asked_again {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = bytes.into_response();
        if let Ok(value) = header::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        for (name, value) in more {
            response
                .headers_mut()
                .insert(name.clone(), header::HeaderValue::from_static(value));
        }
        response
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(CACHE),
    );
    if let Ok(value) = header::HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// The colours an accent gives buttons and text.
#[derive(Debug, PartialEq)]
struct Readable {
    /// A button's background: the accent, or — where neither label reaches WCAG's 4.5:1 on it
    /// (a mid-tone such as `#7b61ff`: 4.2:1 either way; the UI review's L4) — the accent
    /// darkened (its hue kept) until a white label does.
    button: String,
    /// The button under the pointer: away from its label (darker under a white one, lighter
    /// under a dark one), so its contrast only grows (a `brightness(.9)` filter darkened a dark
    /// label's background, `#0f9d58` from 5.05:1 to 4.29:1).
    hover: String,
    /// A button's label on it: white or dark, whichever contrasts more with it (a light
    /// accent such as yellow would leave white text unreadable).
    label: &'static str,
    /// The accent as link text in the light scheme: darkened (its hue kept) until it reaches
    /// WCAG's 4.5:1 on the page's grey background, and so on white too.
    link: String,
    /// The accent as link text in the dark scheme: lightened towards white until it reaches
    /// 4.5:1 on the dark scheme's cards, and so on its darker page too.
    dark_link: String,
}

/// What text on and in `accent` (`#rrggbb`) is drawn in.
fn readable(accent: &str) -> Readable {
    const DARK: [f64; 3] = [17.0, 24.0, 39.0];
    const WHITE: [f64; 3] = [255.0, 255.0, 255.0];
    let rgb = rgb_of(accent);
    let mut button = rgb;
    let white = contrast(WHITE, rgb) >= contrast(DARK, rgb);
    if white || contrast(DARK, rgb) < 4.5 {
        while contrast(WHITE, button) < 4.5 {
            button = button.map(|c| (c * 0.9).floor());
        }
    }
    let white = white || contrast(DARK, rgb) < 4.5;
    let (label, hover) = if white {
        ("#fff", button.map(|c| (c * 0.9).floor()))
    } else {
        ("#111827", button.map(|c| (c + (255.0 - c) * 0.1).ceil()))
    };
    let mut link = rgb;
    while contrast(PAGE, link) < 4.5 {
        link = link.map(|c| (c * 0.9).floor());
    }
    let mut dark_link = rgb;
    while contrast(DARK_CARD, dark_link) < 4.5 {
        dark_link = dark_link.map(|c| (c + (255.0 - c) * 0.1).ceil());
    }
    Readable {
        button: hex(button),
        hover: hex(hover),
        label,
        link: hex(link),
        dark_link: hex(dark_link),
    }
}

fn hex(rgb: [f64; 3]) -> String {
    format!(
        "#{:02x}{:02x}{:02x}",
        rgb[0] as u8, rgb[1] as u8, rgb[2] as u8
    )
}

/// The page's background (Tailwind's slate-100, `bg-slate-100` on the body): the darkest
/// background links sit on (the rest are white).
const PAGE: [f64; 3] = [241.0, 245.0, 249.0];

/// The cards' background in the dark scheme (`style/tailwind.css` gives white slate-900's
/// `#0f172b`): the lightest background links sit on there (the page is darker).
const DARK_CARD: [f64; 3] = [15.0, 23.0, 43.0];

/// `#rrggbb` as its three channels (0-255); black for anything else.
fn rgb_of(colour: &str) -> [f64; 3] {
    let channel = |i: usize| {
        colour
            .get(1 + 2 * i..3 + 2 * i)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .map_or(0.0, f64::from)
    };
    [channel(0), channel(1), channel(2)]
}

/// WCAG 2 contrast ratio of two sRGB colours (1 to 21).
fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
    let luminance = |rgb: [f64; 3]| {
        let [r, g, b] = rgb.map(|c| {
            let c = c / 255.0;
            if c <= 0.040_45 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        });
        0.2126 * r + 0.7152 * g + 0.0722 * b
    };
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// The logo file, read when asked (an operator may replace it; a vanished file is a 404 and
/// a log line, never an error page).
pub async fn logo(
    State(organizations): State<Arc<Organizations>>,
    scope: Option<Extension<OrgScope>>,
    headers: axum::http::HeaderMap,
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
        // An SVG is an image here, never a document with scripts.
        Ok(bytes) => validated(
            &headers,
            bytes,
            content_type,
            &[(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            )],
        ),
        Err(e) => {
            // Anyone may ask for it again and again: at most a line per 5 s.
            crate::throttled!(warn, organization = %org.id, file = %path.display(), error = %e, "logo cannot be served");
            StatusCode::NOT_FOUND.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A logo or stylesheet asked for again with its validator is 304 without a body; another
    /// validator, or none, gets the bytes, each time with the validator and the short cache.
    #[test]
    fn an_unchanged_logo_asked_again_is_not_sent_again() {
        let bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        let answer = |if_none_match: Option<&str>| {
            let mut headers = axum::http::HeaderMap::new();
            if let Some(tag) = if_none_match {
                headers.insert(header::IF_NONE_MATCH, tag.parse().unwrap());
            }
            validated(&headers, bytes.clone(), "image/png", &[])
        };
        let first = answer(None);
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], "image/png");
        assert_eq!(first.headers()[header::CACHE_CONTROL], CACHE);
        let tag = first.headers()[header::ETAG].to_str().unwrap().to_string();
        assert!(tag.starts_with('"') && tag.len() == 34, "{tag}");
        let again = answer(Some(&format!("\"other\", W/{tag}")));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag.as_str());
        assert_eq!(answer(Some("\"other\"")).status(), StatusCode::OK);
    }

    #[test]
    fn a_light_accent_gets_dark_labels_and_darker_links() {
        // Yellow: white text on it would read at 1.07:1.
        let Readable { label, link, .. } = readable("#ffff00");
        assert_eq!(label, "#111827");
        assert!(contrast(PAGE, rgb_of(&link)) >= 4.5, "{link}");
        let hue = rgb_of(&link);
        assert!(
            hue[0] == hue[1] && hue[2] == 0.0,
            "yellow stays yellow-ish: {link}"
        );
        // The example's teal: white labels, the colour itself as links (already readable).
        let teal = readable("#0f766e");
        assert_eq!((teal.label, teal.link.as_str()), ("#fff", "#0f766e"));
        // White: dark labels; links darkened to a readable grey.
        let Readable { label, link, .. } = readable("#ffffff");
        assert_eq!(label, "#111827");
        assert!(contrast(PAGE, rgb_of(&link)) >= 4.5, "{link}");
        // The tester's light yellow: 4.6:1 on white was 4.2:1 on the page's grey.
        let link = readable("#fde047").link;
        assert!(contrast(PAGE, rgb_of(&link)) >= 4.5, "{link}");
        // Black: white labels, black links.
        let black = readable("#000000");
        assert_eq!((black.label, black.link.as_str()), ("#fff", "#000000"));
    }

    /// Every button's label reads at 4.5:1 or more on it, under the pointer too (the UI
    /// review's L4: a mid-tone accent gave 4.2:1 either way, and the hover filter darkened a
    /// dark label's background).
    #[test]
    fn every_button_label_reads_at_four_and_a_half_to_one() {
        let label_rgb = |label: &str| {
            if label == "#fff" {
                [255.0; 3]
            } else {
                rgb_of(label)
            }
        };
        for accent in [
            "#7b61ff", "#0f9d58", "#0f766e", "#ffff00", "#ffffff", "#000000", "#808080", "#ff0000",
            "#3b82f6", "#f97316",
        ] {
            let r = readable(accent);
            let label = label_rgb(r.label);
            for (what, colour) in [("button", &r.button), ("hover", &r.hover)] {
                let c = contrast(label, rgb_of(colour));
                assert!(
                    c >= 4.5,
                    "{accent}: {what} {colour} with {}: {c:.2}",
                    r.label
                );
            }
        }
        // An accent that reads already is kept as it is.
        assert_eq!(readable("#0f766e").button, "#0f766e");
        assert_eq!(readable("#ffff00").button, "#ffff00");
        // The mid-tone is darkened, under white.
        let violet = readable("#7b61ff");
        assert_eq!(violet.label, "#fff");
        assert_ne!(violet.button, "#7b61ff");
    }

    #[test]
    fn a_dark_accent_gets_lighter_links_in_the_dark_scheme() {
        // Already light enough on the dark cards: the accent itself.
        assert_eq!(readable("#ffff00").dark_link, "#ffff00");
        for accent in ["#0f766e", "#000000", "#1e3a8a", "#7f1d1d", "#ffffff"] {
            let dark_link = readable(accent).dark_link;
            assert!(
                contrast(DARK_CARD, rgb_of(&dark_link)) >= 4.5,
                "{accent}: {dark_link}"
            );
        }
        // Teal stays teal-ish: green and blue above red.
        let teal = rgb_of(&readable("#0f766e").dark_link);
        assert!(teal[1] > teal[0] && teal[2] > teal[0], "{teal:?}");
    }

    #[test]
    fn the_stylesheet_has_the_dark_cards_colour() {
        // DARK_CARD is what the stylesheet gives white in the dark scheme.
        let stylesheet = include_str!("../../../style/tailwind.css");
        assert!(stylesheet.contains("--color-white: #0f172b;"));
    }

    #[test]
    fn contrast_is_wcags() {
        assert!((contrast([0.0; 3], [255.0; 3]) - 21.0).abs() < 1e-9);
        assert!((contrast([255.0, 255.0, 0.0], [255.0; 3]) - 1.07).abs() < 0.01);
    }
}
