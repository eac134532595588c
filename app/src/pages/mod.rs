//! One file per route; all rendered on the server.
pub mod login;
pub mod not_found;
pub mod session;
