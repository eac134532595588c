//! Which held accounting row checks a down server that is checked by request
//! (`status_check = "request"`, such as NPS). Nothing probes such a server: it is found back
//! only by a request sent to it, and the accounting held for it — nobody waiting on it — may
//! go as that trial every probe interval ([`crate::radius::breaker::Carrier::Background`]).
//! One row per server is enough: its answer closes the breaker, and a recovery makes every
//! held row due at once. So one row carries the server's trials, due at each one's time; the
//! rest wait out their backoff (or a recovery), instead of every held row waking each interval
//! to find the trial taken.
//!
//! The rows held for the server take turns: a carrier whose trial went unanswered hands the
//! next to the row that has waited longest (and waits at the back), so a packet the server
//! never answers — one its accounting cannot store — does not keep a server that is back
//! looking down. A carrier not seen again soon after its time (acknowledged elsewhere, taken
//! by another replica) is replaced the same way.

use crate::radius::health::Target;
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

/// Rows remembered as waiting for each server, at most.
const WAITING_MAX: usize = 64;

/// The row carrying each down server's next background trial, and the rows waiting.
#[derive(Default)]
pub struct TrialCarriers(Mutex<HashMap<Target, Carried>>);

struct Carried {
    /// The outbox row.
    row: i64,
    /// When it is due to carry the trial (unix ms).
    at: i64,
    /// How long after `at` it is taken to have gone elsewhere if not held again (ms).
    grace: i64,
    /// Other rows held for the server, longest waiting first.
    waiting: VecDeque<i64>,
}

impl Carried {
    /// `target`'s entry, made with `row` carrying its trial at `at` if there is none.
    fn of(
        carried: &mut HashMap<Target, Carried>,
        target: Target,
        row: i64,
        at: i64,
        grace: i64,
    ) -> &mut Carried {
        carried.entry(target).or_insert(Carried {
            row,
            at,
            grace,
            waiting: VecDeque::new(),
        })
    }

    /// `row` carries the trial at `at` (no longer among those waiting).
    fn take(&mut self, row: i64, at: i64, grace: i64) {
        self.waiting.retain(|&r| r != row);
        (self.row, self.at, self.grace) = (row, at, grace);
    }
}

impl TrialCarriers {
    /// Whether outbox row `row`, held for `target`, is to carry that server's next trial at
    /// `at` (unix ms): no row carries it, or this one does, or the one that does was due more
    /// than `grace_ms` before `now` and has not been held again since. The carrier is noted
    /// with `at`; a row that is not is noted as waiting.
    pub fn carry(&self, target: Target, row: i64, at: i64, now: i64, grace_ms: i64) -> bool {
        let mut carried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Carried::of(&mut carried, target, row, at, grace_ms);
        if entry.row != row && entry.at + entry.grace >= now {
            if !entry.waiting.contains(&row) && entry.waiting.len() < WAITING_MAX {
                entry.waiting.push_back(row);
            }
            return false;
        }
        entry.take(row, at, grace_ms);
        true
    }

    /// `row`, carrier of `target`'s trials, had its trial go unanswered: the next trial, at
    /// `at`, goes to the row that has waited longest, which is returned (the caller makes it
    /// due then), and `row` waits at the back. None when no other row waits, or `row` does not
    /// carry the trials.
    pub fn hand_over(&self, target: Target, row: i64, at: i64) -> Option<i64> {
        let mut carried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = carried.get_mut(&target).filter(|e| e.row == row)?;
        let next = entry.waiting.pop_front()?;
        entry.waiting.push_back(row);
        (entry.row, entry.at) = (next, at);
        Some(next)
    }

    /// `row` carries `target`'s trials again, at `at` (a hand-over found no live row to take
    /// them).
    pub fn take_back(&self, target: Target, row: i64, at: i64, grace_ms: i64) {
        let mut carried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Carried::of(&mut carried, target, row, at, grace_ms).take(row, at, grace_ms);
    }

    /// Carriers not held again within their grace after their time (gone elsewhere): each
    /// server's trials go to its longest-waiting row instead, due `now`. Gives those rows.
    pub fn replace_lost(&self, now: i64) -> Vec<i64> {
        let mut carried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::new();
        carried.retain(|_, entry| {
            if entry.at + entry.grace >= now {
                return true;
            }
            match entry.waiting.pop_front() {
                Some(row) => {
                    (entry.row, entry.at) = (row, now);
                    next.push(row);
                    true
                }
                None => false,
            }
        });
        next
    }

    /// `row` is settled (acknowledged, or dead-lettered): it carries no trial and waits for
    /// none any more. A server it carried the trials of goes to its longest-waiting row, due
    /// at its time (given back, for the caller to make due); or, none waiting, is forgotten.
    pub fn settled(&self, row: i64) -> Vec<(i64, i64)> {
        let mut carried = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::new();
        carried.retain(|_, entry| {
            entry.waiting.retain(|&r| r != row);
            if entry.row != row {
                return true;
            }
            match entry.waiting.pop_front() {
                Some(waiting) => {
                    entry.row = waiting;
                    next.push((waiting, entry.at));
                    true
                }
                None => false,
            }
        });
        next
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
            organization: "acme".into(),
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
        // Acknowledged: the row that has waited longest (2) carries the trials, at their time.
        assert_eq!(carriers.settled(3), vec![(2, 6_000)]);
        assert!(!carriers.carry(nps, 5, 6_000, 4_600, 500));
        assert!(carriers.carry(nps, 2, 8_000, 6_100, 500));
    }

    /// A row whose trial the server never answers (it cannot store that packet) does not
    /// carry every trial: the rows held for the server take turns.
    #[test]
    fn the_rows_held_for_a_server_take_turns_at_its_trials() {
        let health = ServerHealth::new(BreakerPolicy::default());
        let nps = target(&health, 1813);
        let carriers = TrialCarriers::default();
        assert!(carriers.carry(nps, 1, 1_000, 0, 500));
        for row in [2, 3] {
            assert!(!carriers.carry(nps, row, 1_000, 10, 500));
        }
        assert_eq!(carriers.hand_over(nps, 1, 3_000), Some(2));
        assert_eq!(carriers.hand_over(nps, 1, 3_000), None, "1 carries no more");
        assert_eq!(carriers.hand_over(nps, 2, 5_000), Some(3));
        assert_eq!(carriers.hand_over(nps, 3, 7_000), Some(1), "round again");
        // Alone: it carries on.
        let alone = target(&health, 1814);
        assert!(carriers.carry(alone, 9, 1_000, 0, 500));
        assert_eq!(carriers.hand_over(alone, 9, 3_000), None);
        assert!(carriers.carry(alone, 9, 3_000, 1_600, 500));
        // A carrier never held again: the longest-waiting row takes over, due now.
        assert_eq!(
            carriers.replace_lost(7_400),
            Vec::<i64>::new(),
            "within its grace"
        );
        assert_eq!(carriers.replace_lost(7_501), vec![2]);
        assert_eq!(carriers.replace_lost(9_000), vec![3], "and again");
        // None waiting: the server is forgotten (its next held row carries).
        assert_eq!(carriers.replace_lost(20_000), Vec::<i64>::new());
        assert!(carriers.carry(nps, 7, 21_000, 20_000, 500));
    }
}
