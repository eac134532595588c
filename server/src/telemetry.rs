//! Logging setup: tracing to stderr as text or JSON. Passwords and secrets are never passed to
//! tracing anywhere in the code base (secrets are [`crate::config::Secret`], redacted in Debug).

use crate::config::LogSettings;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber (RUST_LOG wins over the configured filter). Safe to call twice.
pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    // tower-sessions warns ("possibly suspicious activity") for every request whose cookie names
    // no stored session: anyone can send those at will, and the portal answers them as it
    // answers a visitor without a session (the cookie is removed). Not at warn, unless the
    // filter asks for tower-sessions by name.
    let quiet = !settings.filter.contains("tower_sessions")
        && !std::env::var("RUST_LOG").is_ok_and(|f| f.contains("tower_sessions"));
    let filter = match "tower_sessions_core=error".parse() {
        Ok(directive) if quiet => filter.add_directive(directive),
        _ => filter,
    };
    // Colours only for a terminal: a file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if settings.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// For events that an attacker can repeat at will (forged datagrams): true for the first
/// occurrence and every 1000th after it, given how many there were before this one. Callers
/// warn when it is true and log at debug otherwise, and keep the full count in a counter.
pub fn worth_a_warning(occurrences_before: u64) -> bool {
    occurrences_before.is_multiple_of(1000)
}
