//! The only code that runs in the browser. Keep it small: every byte here is downloaded by every
//! user of the session page.
#[cfg(feature = "hydrate")]
pub mod fetch;
#[cfg(any(feature = "hydrate", test))]
pub mod json;
pub mod session_panel;
