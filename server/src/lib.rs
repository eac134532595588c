//! radius-portal server: a self-service RADIUS session portal acting as the NAS.
//!
//! Module map (see ARCHITECTURE.md for how a login flows through them):
//! - `config`        settings tree (TOML + `PORTAL_*` env), secrets redacted
//! - `startup`       builds the services, binds, runs web server + background tasks
//! - `telemetry`     tracing setup
//! - `cli`           `serve`, `demo`, `check-config`, `radius test`, `accounting …`, `admin hash-token`, and dispatch of `org`/`session`/`audit`
//! - `operator`      `org …` and `audit …` commands (same database as the running portal)
//! - `portal_backend` the UI's service interface implemented over the services below
//! - `http`          router, security headers, cross-site refusal, client IP
//! - `radius`        packets (the `radius` crate + Message-Authenticator), shared multiplexed UDP client, circuit breakers and
//!   Status-Server probes, authenticate/account
//! - `supervise`     background tasks restarted when they crash; their state in `/readyz`
//! - `accounting`    durable outbox delivery (Start/Interim/Stop), retries with backoff
//! - `access_session` lifecycle (login/refresh/disconnect), window/limit timing, expiry
//! - `organizations` tenants (stored, cached per process), the disabled-organization guard,
//!   the one enable/disable write path and the worker that stops a disabled one's sessions
//! - `storage`       SQLite persistence (sessions, outbox, organizations, web sessions)
//! - `demo_radius`   in-process demo RADIUS server for `radius-portal demo`
//! - `dynauth`       RFC 5176 listener: Disconnect-Request / CoA-Request from RADIUS servers
//! - `metrics`       Prometheus metrics (own registry), served on `[metrics] listen`

/// `println!` for command output: a reader that went away (`… | head`) ends the command quietly
/// (exit 0) instead of a panic; any other write error ends it with a message (exit 1).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::output_failed(e)
        }
    }};
}

pub mod access_session;
pub mod accounting;
pub mod cli;
pub mod config;
pub mod demo_radius;
pub mod dynauth;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod organizations;
pub mod portal_backend;
pub mod radius;
pub mod startup;
pub mod storage;
pub mod supervise;
pub mod telemetry;

/// Cases per property test: `PROPTEST_CASES` when set (long fuzz runs, `scripts/fuzz.sh`),
/// else the test's own number (CI).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// At most 64 characters of a caller's text repeated in an answer or a log line (an ellipsis
/// marks the cut): an id or an address that names nothing is shown, but not 5,000 characters
/// of it.
pub fn shortened(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]).into(),
        None => text.into(),
    }
}

/// Lower-case hex of `bytes` (tokens, ids, digests): one allocation, not one per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(super::hex(&[]), "");
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
