//! One accounting server address's send window: at most [`WINDOW`] packets in flight to it, and
//! the line of rows waiting for a place.
//!
//! The delivery loop has [`super::MAX_IN_FLIGHT`] places for all servers together. A row that
//! waits for a busy server's window keeps its place while it waits, so the line is short: once
//! [`WAITING`] rows wait, a row nobody waits on (the loop's) is given back — released, not
//! failed — to be claimed again at its turn, worked out from how fast the server has been
//! answering. A slow or dying server's backlog therefore holds at most a window and a line of
//! the loop's places, and other servers' rows due meanwhile are claimed at the loop's next pass
//! (the RADIUS review's M1 of session 80: before, 2,048 rows of one slow server waited up to
//! 45 s each, and every other server's Stops with them). Given back at the server's own pace,
//! a burst to a server that answers drains as fast as it answers (a failure's backoff would
//! drain it over minutes), and a row comes back about when the line has room for it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Packets in flight to one destination at most.
pub(super) const WINDOW: usize = 64;

/// Rows waiting for a destination's slot at most before the loop's rows are given back.
pub(super) const WAITING: usize = 64;

/// What an exchange is taken to last before any was measured (ms).
const FIRST_EXCHANGE_MS: f64 = 100.0;

/// Turns are given out in steps of this (ms): the loop claims the rows given back in a few
/// claims a second, not one per row.
const TURN_STEP_MS: i64 = 50;

/// A row given back looks again within this at most (ms): a server that went down meanwhile
/// (its breaker open) has the row failed over or parked then, not after a long line's turn.
/// Rows of a backlog longer than this at the server's pace come round once a minute each (a
/// claim and a give-back: for 20,000 rows, ~330 a second while it drains).
pub(super) const MAX_TURN_MS: i64 = 60_000;

/// A destination's window and its line.
pub(super) struct Window {
    slots: Arc<Semaphore>,
    line: Mutex<Line>,
}

/// The rows waiting for a destination's slot, and the turns given out to rows given back.
#[derive(Debug)]
struct Line {
    /// Rows that may be given back waiting for a slot now.
    waiting: usize,
    /// The turn given to the last row given back (unix ms).
    last_turn: i64,
    /// How long an exchange with the destination has been holding its slot (ms, a moving
    /// average of answered and unanswered ones alike: the line moves as slots are freed).
    exchange_ms: f64,
    /// The destination's recoveries (its breaker closed again) when the average was begun:
    /// an outage's timeouts say nothing of the pace after it.
    recoveries: u64,
}

impl Line {
    fn new() -> Self {
        Line {
            waiting: 0,
            last_turn: i64::MIN,
            exchange_ms: FIRST_EXCHANGE_MS,
            recoveries: 0,
        }
    }

    /// When a row given back at `now` is to be claimed again: after the rows waiting now and
    /// those given back before it, at the pace the destination answers (a window's worth of
    /// rows per exchange), rounded up to a [`TURN_STEP_MS`], never more than [`MAX_TURN_MS`]
    /// away. `recoveries`: the destination's now — back since the average was begun, its
    /// outage's pace and turns count for nothing (black-box tester W's D2 of session 82: the
    /// rows claimed at a server's return were given turns at its timeouts' pace, 64 per 9 s
    /// exchange, before any exchange since had ended — a backlog of a server answering in 2 s
    /// drained at 7 a second, not 32).
    fn give_back(&mut self, now: i64, recoveries: u64) -> i64 {
        self.afresh_after(recoveries);
        let per_row = self.exchange_ms / WINDOW as f64;
        let behind_waiting = now + (self.waiting as f64 * per_row) as i64;
        let step = (per_row.ceil() as i64).max(1);
        let turn = (self.last_turn.max(behind_waiting) + step).min(now + MAX_TURN_MS);
        self.last_turn = turn;
        (turn + TURN_STEP_MS - 1).div_euclid(TURN_STEP_MS) * TURN_STEP_MS
    }

    /// The pace and the turns begun afresh if the destination came back (`recoveries`, its
    /// count now) since they were begun: its outage said nothing of its pace after it, and
    /// every row held through it came due at its return.
    fn afresh_after(&mut self, recoveries: u64) {
        if self.recoveries != recoveries {
            self.recoveries = recoveries;
            self.exchange_ms = FIRST_EXCHANGE_MS;
            self.last_turn = i64::MIN;
        }
    }

    /// An exchange begun at the destination's `begun_after` recoveries held its slot for
    /// `took`; `recoveries`: how many it has now. One begun before the last recovery is not
    /// counted, and the first after one starts the average afresh.
    fn exchanged(&mut self, took: Duration, (begun_after, recoveries): (u64, u64)) {
        if begun_after != recoveries {
            return;
        }
        self.afresh_after(recoveries);
        let took_ms = took.as_secs_f64() * 1000.0;
        self.exchange_ms += (took_ms - self.exchange_ms) / 8.0;
    }
}

/// How a delivery got on with a destination's window.
pub(super) enum Entry {
    /// A slot, held until dropped; `waited`: not free at once.
    Slot {
        permit: OwnedSemaphorePermit,
        waited: bool,
    },
    /// The line was full: the row is to be claimed again at this time (unix ms).
    GiveBack(i64),
    /// No slot within the wait.
    NoSlot,
}

/// A place in a destination's line, left when dropped.
struct InLine<'a>(&'a Mutex<Line>);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        lock(self.0).waiting -= 1;
    }
}

fn lock(line: &Mutex<Line>) -> std::sync::MutexGuard<'_, Line> {
    line.lock().unwrap_or_else(|p| p.into_inner())
}

impl Window {
    pub(super) fn new() -> Self {
        Window {
            slots: Arc::new(Semaphore::new(WINDOW)),
            line: Mutex::new(Line::new()),
        }
    }

    /// A slot, at once or within `wait`; a row nobody waits on (`may_give_back`) finding
    /// [`WAITING`] rows in line is given back instead of joining it (`now`, and the
    /// destination's `recoveries` now, for its turn: [`Line::give_back`]).
    pub(super) async fn enter(
        &self,
        wait: Duration,
        may_give_back: bool,
        (now, recoveries): (i64, u64),
    ) -> Entry {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Entry::Slot {
                permit,
                waited: false,
            };
        }
        // Only the rows that may be given back count toward the line: a sign-in's Start or a
        // user's Stop waits beside them, and never has the loop's rows given back for good.
        let _in_line = if may_give_back {
            let mut line = lock(&self.line);
            if line.waiting >= WAITING {
                return Entry::GiveBack(line.give_back(now, recoveries));
            }
            line.waiting += 1;
            Some(InLine(&self.line))
        } else {
            None
        };
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            // The semaphore is never closed.
            Ok(Ok(permit)) => Entry::Slot {
                permit,
                waited: true,
            },
            Ok(Err(_)) | Err(_) => Entry::NoSlot,
        }
    }

    /// An exchange with the destination ended (answered or not) after `took`; `recoveries`:
    /// the destination's recoveries when it began and now ([`Line::exchanged`]).
    pub(super) fn exchanged(&self, took: Duration, recoveries: (u64, u64)) {
        lock(&self.line).exchanged(took, recoveries);
    }

    /// Every slot, until the permit is dropped (tests: the window full).
    pub(super) async fn fill(&self) -> Option<OwnedSemaphorePermit> {
        self.slots
            .clone()
            .acquire_many_owned(WINDOW as u32)
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_given_back_get_turns_one_after_another_at_the_servers_pace() {
        let mut line = Line::new();
        line.exchange_ms = 640.0; // 10 ms a row with a window of 64
        line.waiting = WAITING;
        let now = 1_000_000;
        // Behind the 64 waiting (640 ms), then 10 ms apart, in steps of 50 ms.
        assert_eq!(line.give_back(now, 0), now + 650);
        assert_eq!(line.give_back(now, 0), now + 700);
        // Later, the next turn still follows the last one given out.
        assert_eq!(line.give_back(now + 5, 0), now + 700);
        let turns: Vec<i64> = (0..5).map(|_| line.give_back(now + 5, 0)).collect();
        assert_eq!(
            turns,
            [now + 700, now + 700, now + 700, now + 750, now + 750]
        );
        // Once the line has moved on past the turns given out, they start from now again.
        let later = now + 10_000;
        assert_eq!(line.give_back(later, 0), later + 650);
    }

    #[test]
    fn a_slow_servers_turns_are_never_further_than_the_cap() {
        let mut line = Line::new();
        line.exchange_ms = 9_000.0; // a dying server's timeouts
        line.waiting = WAITING;
        let now = 5_000;
        let turns: Vec<i64> = (0..1000).map(|_| line.give_back(now, 0)).collect();
        assert!(turns.windows(2).all(|t| t[0] <= t[1]), "in order");
        assert!(turns.iter().all(|&t| t > now && t <= now + MAX_TURN_MS));
    }

    #[test]
    fn the_pace_follows_the_exchanges_and_starts_afresh_after_an_outage() {
        let mut line = Line::new();
        for _ in 0..64 {
            line.exchanged(Duration::from_millis(2_000), (0, 0));
        }
        assert!(
            (line.exchange_ms - 2_000.0).abs() < 10.0,
            "{}",
            line.exchange_ms
        );
        for _ in 0..64 {
            line.exchanged(Duration::from_millis(5), (0, 0));
        }
        assert!(line.exchange_ms < 10.0, "{}", line.exchange_ms);
        // An outage's timeouts (9 s each), then the server back (a recovery): those begun
        // before it count for nothing, and the pace starts again from the first after it.
        for _ in 0..64 {
            line.exchanged(Duration::from_millis(9_000), (0, 0));
        }
        assert!(line.exchange_ms > 8_000.0, "{}", line.exchange_ms);
        line.exchanged(Duration::from_millis(9_000), (0, 1));
        line.exchanged(Duration::from_millis(20), (1, 1));
        assert!(line.exchange_ms < FIRST_EXCHANGE_MS, "{}", line.exchange_ms);
    }

    /// The rows claimed at a server's return are given turns at a fresh pace, not its outage's
    /// — before any exchange begun since has ended (black-box tester W's D2 of session 82).
    #[test]
    fn turns_given_at_a_servers_return_start_afresh() {
        let mut line = Line::new();
        for _ in 0..64 {
            line.exchanged(Duration::from_millis(9_000), (0, 0));
        }
        line.waiting = WAITING;
        let now = 1_000_000;
        let during: Vec<i64> = (0..64).map(|_| line.give_back(now, 0)).collect();
        assert!(during[63] > now + 8_000, "the outage's pace: {during:?}");
        // Back (one recovery): the next turns come at a fresh pace, from now.
        let back = now + 100;
        let after: Vec<i64> = (0..64).map(|_| line.give_back(back, 1)).collect();
        assert!(after[63] < back + 1_000, "{after:?}");
        assert!(after.windows(2).all(|t| t[0] <= t[1]), "in order");
    }

    #[tokio::test]
    async fn only_a_row_nobody_waits_on_is_given_back_and_only_once_the_line_is_full() {
        let window = Window::new();
        let _all = window.fill().await.unwrap();
        let (window, now) = (Arc::new(window), 1_000);
        let mut waiting = Vec::new();
        for _ in 0..WAITING {
            let window = window.clone();
            waiting.push(tokio::spawn(async move {
                matches!(
                    window.enter(Duration::from_secs(60), true, (now, 0)).await,
                    Entry::Slot { .. }
                )
            }));
        }
        while lock(&window.line).waiting < WAITING {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            window.enter(Duration::from_secs(60), true, (now, 0)).await,
            Entry::GiveBack(at) if at > now
        ));
        // One a caller waits on waits its wait out beside the line, not counted in it.
        assert!(matches!(
            window
                .enter(Duration::from_millis(20), false, (now, 0))
                .await,
            Entry::NoSlot
        ));
        assert_eq!(lock(&window.line).waiting, WAITING);
        drop(_all);
        for waiter in waiting {
            assert!(waiter.await.unwrap());
        }
        assert_eq!(lock(&window.line).waiting, 0);
    }
}
