//! The only code that runs in the browser. Keep it small: every byte here is downloaded by every
//! user of the session page.
#[cfg(feature = "hydrate")]
pub mod fetch;
pub mod session_panel;
