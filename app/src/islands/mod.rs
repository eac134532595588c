//! The only code that runs in the browser. Keep it small: every byte here is downloaded by every
//! user of the session page.
pub mod session_panel;
