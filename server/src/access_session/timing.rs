//! Window and limit arithmetic (design.md §3). Pure: times are Unix milliseconds passed in.
//!
//! window = Idle-Timeout, else the organization's default window;
//! limit  = Session-Timeout, else the organization's max lifetime (none by default);
//! if limit < window, window = limit. A session ends at min(last refresh + window, login + limit).
//! A server's Idle-Timeout or Session-Timeout beyond [`LONGEST`] counts as that (the longest
//! window or lifetime an organization may be given: 4294967295 s would be 136 years on the
//! session page and in the captive-portal API).

use app::dto::EndsBy;
use std::time::Duration;

/// How long a session may live, as granted at login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    /// Lifetime without a refresh.
    pub window: Duration,
    /// Lifetime since login that no refresh can pass.
    pub limit: Option<Duration>,
}

/// The longest window or limit a session has, as in the configuration's bounds (366 days).
pub const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

impl Terms {
    /// Terms from an Accept's Idle-Timeout / Session-Timeout (seconds; 0 means absent) and the
    /// organization's defaults.
    pub fn from_grant(
        idle_timeout: Option<u32>,
        session_timeout: Option<u32>,
        default_window: Duration,
        max_lifetime: Option<Duration>,
    ) -> Terms {
        let secs = |v: Option<u32>| {
            v.filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)).min(LONGEST))
        };
        let window = secs(idle_timeout).unwrap_or(default_window);
        let limit = secs(session_timeout).or(max_lifetime);
        let window = match limit {
            Some(limit) if limit < window => limit,
            _ => window,
        };
        Terms { window, limit }
    }

    /// Window in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window.as_millis() as i64
    }

    /// Absolute limit for a session started at `started_at`.
    pub fn limit_at(&self, started_at: i64) -> Option<i64> {
        self.limit.map(|l| started_at + l.as_millis() as i64)
    }
}

/// The deadline after a login or refresh at `refreshed_at`.
pub fn expires_at(refreshed_at: i64, window_ms: i64, limit_at: Option<i64>) -> i64 {
    let by_window = refreshed_at + window_ms;
    limit_at.map_or(by_window, |limit| by_window.min(limit))
}

/// Which deadline ends the session.
pub fn ends_by(expires_at: i64, limit_at: Option<i64>) -> EndsBy {
    match limit_at {
        Some(limit) if limit <= expires_at => EndsBy::Limit,
        _ => EndsBy::Window,
    }
}

/// The Acct-Terminate-Cause of a session ended by its deadline: Session-Timeout when the
/// limit ends it, else Idle-Timeout (the window ran out).
pub fn deadline_cause(expires_at: i64, limit_at: Option<i64>) -> u32 {
    use crate::radius::terminate_cause;
    match ends_by(expires_at, limit_at) {
        EndsBy::Limit => terminate_cause::SESSION_TIMEOUT,
        EndsBy::Window => terminate_cause::IDLE_TIMEOUT,
    }
}

/// How a stop asked for with `cause` at `at` ends a session whose deadline is `expires_at`
/// (`limit_at` its limit), an operator's stop of which (a disable whose job has not reached it,
/// a queued termination) was asked for at `asked_at`: by whichever came first — that stop
/// (Admin-Reset), the deadline (its timeout's cause: the session ended by it, whatever ends it
/// in the database later; never a session time past what was granted), or the stop asked for.
/// Ties go to the deadline over the request, the request over the operator's stop.
pub fn ending(
    cause: u32,
    at: i64,
    expires_at: i64,
    limit_at: Option<i64>,
    asked_at: Option<i64>,
) -> (u32, i64) {
    let mut ends = (cause, at);
    if expires_at <= at {
        ends = (deadline_cause(expires_at, limit_at), expires_at);
    }
    match asked_at {
        Some(asked) if asked < ends.1 => (crate::radius::terminate_cause::ADMIN_RESET, asked),
        _ => ends,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H4: Duration = Duration::from_secs(4 * 3600);

    #[test]
    fn accept_without_timeouts_uses_the_org_default_window_and_no_limit() {
        let t = Terms::from_grant(None, None, H4, None);
        assert_eq!(
            t,
            Terms {
                window: H4,
                limit: None
            }
        );
        assert_eq!(
            expires_at(1_000, t.window_ms(), t.limit_at(1_000)),
            1_000 + 4 * 3600 * 1000
        );
    }

    #[test]
    fn idle_timeout_sets_the_window() {
        let t = Terms::from_grant(Some(20), None, H4, None);
        assert_eq!(t.window, Duration::from_secs(20));
        assert_eq!(t.limit, None);
    }

    #[test]
    fn session_timeout_is_the_limit_not_the_window() {
        let t = Terms::from_grant(None, Some(8 * 3600), H4, None);
        assert_eq!(t.window, H4);
        assert_eq!(t.limit, Some(Duration::from_secs(8 * 3600)));
    }

    #[test]
    fn a_limit_shorter_than_the_window_shortens_the_window() {
        let t = Terms::from_grant(None, Some(30), H4, None);
        assert_eq!(t.window, Duration::from_secs(30));
        assert_eq!(
            ends_by(expires_at(0, t.window_ms(), t.limit_at(0)), t.limit_at(0)),
            EndsBy::Limit
        );
    }

    #[test]
    fn org_max_lifetime_applies_when_the_accept_has_no_session_timeout() {
        let t = Terms::from_grant(Some(600), None, H4, Some(Duration::from_secs(3600)));
        assert_eq!(t.limit, Some(Duration::from_secs(3600)));
        // Accept's Session-Timeout wins over the org's max lifetime.
        let t = Terms::from_grant(Some(600), Some(7200), H4, Some(Duration::from_secs(3600)));
        assert_eq!(t.limit, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn zero_timeouts_count_as_absent() {
        assert_eq!(
            Terms::from_grant(Some(0), Some(0), H4, None),
            Terms {
                window: H4,
                limit: None
            }
        );
    }

    #[test]
    fn refresh_restarts_the_window_but_never_passes_the_limit() {
        let huge = Terms::from_grant(Some(u32::MAX), Some(u32::MAX), H4, None);
        assert_eq!(
            huge.window, LONGEST,
            "a server's 136 years count as the longest window"
        );
        assert_eq!(huge.limit, Some(LONGEST));
        let t = Terms::from_grant(Some(600), Some(1000), H4, None); // 10 min window, 1000 s limit
        let limit_at = t.limit_at(0);
        let first = expires_at(0, t.window_ms(), limit_at);
        assert_eq!(first, 600_000);
        assert_eq!(ends_by(first, limit_at), EndsBy::Window);
        let refreshed = expires_at(300_000, t.window_ms(), limit_at);
        assert_eq!(refreshed, 900_000);
        let late = expires_at(700_000, t.window_ms(), limit_at);
        assert_eq!(late, 1_000_000);
        assert_eq!(ends_by(late, limit_at), EndsBy::Limit);
    }
}
