//! Which held accounting row checks a down server that is checked by request
//! (`status_check = "request"`, such as NPS). Nothing probes such a server: it is found back
//! only by a request sent to it, and the accounting held for it — nobody waiting on it — may
//! go as that trial every probe interval ([`crate::radius::breaker::Carrier::Background`]).
//! One row per server is enough: its answer closes the breaker, and a recovery makes every
//! held row due at once. So one row carries the server's trials, due at each one's time; the
//! rest wait out their backoff (or a recovery), instead of every held row waking each interval
//! to find the trial taken.

use crate::radius::health::Target;
use std::{collections::HashMap, sync::Mutex};

/// The row carrying each down server's next background trial, and when it is due.
#[derive(Default)]
pub struct TrialCarriers(Mutex<HashMap<Target, Carried>>);

#[derive(Clone, Copy)]
struct Carried {
    /// The outbox row.
    row: i64,
    /// When it is due to carry the trial (unix ms).
    at: i64,
}

impl TrialCarriers {
    /// Whether outbox row `row`, held for `target`, is to carry that server's next trial at
    /// `at` (unix ms): no row carries it, or this one does, or the one that does was due more
    /// than `grace_ms` before `now` and has not been held again since (delivered elsewhere,
    /// taken by another replica's loop). The carrier is noted with `at`.
    pub fn carry(&self, target: Target, row: i64, at: i64, now: i64, grace_ms: i64) -> bool {
        let mut carried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match carried.get(&target) {
            Some(c) if c.row != row && c.at + grace_ms >= now => false,
            _ => {
                carried.insert(target, Carried { row, at });
                true
            }
        }
    }

    /// `row` is settled (acknowledged, or dead-lettered): it carries no trial any more.
    pub fn settled(&self, row: i64) {
        let mut carried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !carried.is_empty() {
            carried.retain(|_, c| c.row != row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MessageAuthenticatorMode, Secret, StatusCheck};
    use crate::radius::{
        breaker::BreakerPolicy, health::Port, health::ServerHealth, ServerEndpoint,
    };

    fn target(health: &ServerHealth, port: u16) -> Target {
        let server = ServerEndpoint {
            name: format!("nps{port}"),
            auth_addr: ([127, 0, 0, 1], port).into(),
            acct_addr: ([127, 0, 0, 1], port).into(),
            secret: Secret::new("s"),
            timeout: std::time::Duration::from_millis(100),
            retries: 0,
            message_authenticator: MessageAuthenticatorMode::default(),
            status_check: StatusCheck::Request,
        };
        health.target(&server, Port::Acct)
    }

    #[test]
    fn one_row_carries_a_servers_trials_until_it_is_settled_or_lost() {
        let health = ServerHealth::new(BreakerPolicy::default());
        let (nps, other) = (target(&health, 1813), target(&health, 1814));
        let carriers = TrialCarriers::default();
        assert!(
            carriers.carry(nps, 1, 2_000, 0, 500),
            "the first row held carries it"
        );
        assert!(
            !carriers.carry(nps, 2, 2_000, 100, 500),
            "one carrier per server"
        );
        assert!(
            carriers.carry(other, 2, 2_000, 100, 500),
            "another server's"
        );
        assert!(
            carriers.carry(nps, 1, 4_000, 2_300, 500),
            "the carrier, its trial lost, carries the next"
        );
        assert!(
            !carriers.carry(nps, 3, 4_000, 4_500, 500),
            "due a moment ago"
        );
        // Not held again long after it was due: it went elsewhere (another replica).
        assert!(carriers.carry(nps, 3, 6_000, 4_501, 500));
        // Acknowledged: the next row held carries the trials.
        carriers.settled(3);
        assert!(carriers.carry(nps, 4, 6_000, 4_600, 500));
        assert!(!carriers.carry(nps, 5, 6_000, 4_600, 500));
    }
}
