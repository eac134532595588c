//! Logging setup: tracing to stderr as text or JSON. Passwords and secrets are never passed to
//! tracing anywhere in the code base (secrets are [`crate::config::Secret`], redacted in Debug).

use crate::config::LogSettings;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber (RUST_LOG wins over the configured filter). Safe to call twice.
pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if settings.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
