//! Expiry: stops access sessions whose persisted deadline has passed (Stop with Idle-Timeout or
//! Session-Timeout, stamped at the deadline, so a Stop sent late after a restart carries the
//! right Acct-Session-Time and an Acct-Delay-Time).
//!
//! Storage holds the deadlines; memory only holds the next wake-up. [`Expiry::expire_due`] is the
//! one step tests drive; [`Expiry::run`] loops it.

use super::{events::SessionEvents, now_ms};
use crate::{
    accounting::Accounting,
    storage::Stopped,
    storage::{Storage, StorageError},
};
use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest sleep between checks, so a missed wake-up costs at most this long.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Tells the expiry task about new deadlines. It knows when the task will next look (the
/// earliest deadline it read, or its longest sleep) and wakes it only for an earlier one: a
/// login whose window ends in hours costs the task no queries. While the task is reading the
/// deadlines, every new one wakes it (it cannot know yet whether the read saw it). Cheap to
/// clone.
#[derive(Clone)]
pub struct ExpiryWake(Arc<WakeState>);

struct WakeState {
    /// When the task looks next (unix ms); `i64::MAX` while it reads the deadlines.
    next_look: AtomicI64,
    notify: Notify,
}

impl Default for ExpiryWake {
    fn default() -> Self {
        ExpiryWake(Arc::new(WakeState {
            next_look: AtomicI64::new(i64::MAX),
            notify: Notify::new(),
        }))
    }
}

impl ExpiryWake {
    /// Something is due at `at` (unix ms): a new session's deadline or Interim-Update. True
    /// when the task was woken (it would otherwise look too late).
    pub fn due_at(&self, at: i64) -> bool {
        let earlier = at < self.0.next_look.load(Ordering::SeqCst);
        if earlier {
            self.0.notify.notify_one();
        }
        earlier
    }
}

/// The expiry task.
#[derive(Clone)]
pub struct Expiry {
    storage: Storage,
    accounting: Accounting,
    /// Woken for a deadline earlier than the one it sleeps towards.
    wake: ExpiryWake,
    /// Tells open session pages their session ended.
    events: SessionEvents,
    /// Expiry lag.
    metrics: crate::metrics::Metrics,
}

impl Expiry {
    /// Wires the task.
    pub fn new(
        storage: Storage,
        accounting: Accounting,
        wake: ExpiryWake,
        events: SessionEvents,
    ) -> Self {
        Expiry {
            storage,
            accounting,
            wake,
            events,
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// Records how late sessions were stopped in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Stops every session due at `now` and wakes accounting to send the Stops.
    pub async fn expire_due(&self, now: i64) -> Result<Vec<Stopped>, StorageError> {
        let stopped = self.storage.stop_due_sessions(now).await?;
        if !stopped.is_empty() {
            // Which ones (`session show ID`), the first few of a burst.
            let ids: Vec<i64> = stopped.iter().take(16).map(|s| s.id).collect();
            tracing::info!(count = stopped.len(), sessions = ?ids, "expired access sessions stopped");
            self.accounting.wake_for(stopped.iter().map(|s| s.id));
            for s in &stopped {
                self.events.publish(s.id);
                self.metrics.expired(Duration::from_millis(
                    now.saturating_sub(s.due_at).max(0) as u64
                ));
            }
        }
        Ok(stopped)
    }

    /// Queues the periodic Interim-Updates due at `now` and wakes accounting to send them.
    pub async fn send_due_interims(&self, now: i64) -> Result<usize, StorageError> {
        let queued = self.storage.queue_due_interims(now).await?;
        if queued > 0 {
            self.accounting.wake();
        }
        Ok(queued)
    }

    /// The next instant (unix ms) something is due: a deadline or a periodic Interim-Update.
    async fn next_due(&self) -> Result<Option<i64>, StorageError> {
        let expiry = self.storage.next_expiry().await?;
        let interim = self.storage.next_interim().await?;
        Ok(expiry.into_iter().chain(interim).min())
    }

    /// Runs until `shutdown`: stop what is due, queue due Interim-Updates, then sleep until the
    /// next deadline or a wake-up.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = &self.wake.0;
        // Passes in a row whose writes failed (a full disk, a read-only database): what is due
        // stays due, so the next pass waits a back-off, not for a deadline already past.
        let mut failures = 0u32;
        loop {
            // From here until `next_look` is stored, every new deadline wakes the task.
            wake.next_look.store(i64::MAX, Ordering::SeqCst);
            let notified = wake.notify.notified();
            // The time read and the pass's writes in one time line (no move of the stored
            // times with a clock step between them).
            let one_line = crate::access_session::clock_steps::one_time_line(
                self.storage.moves_times_with_the_clock(),
            )
            .await;
            let now = now_ms();
            let mut failed = false;
            // Whether this pass stopped a session or queued an Interim-Update.
            let mut progressed = false;
            // Passes fail alike while the database is away: a line per 5 s at most each.
            static EXPIRY_LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            static INTERIM_LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            match self.expire_due(now).await {
                Ok(stopped) => progressed |= !stopped.is_empty(),
                Err(e) => {
                    failed = true;
                    if let Some(left_out) = EXPIRY_LOG.admit_if_away(e.is_unavailable()) {
                        tracing::error!(error = ?e, failures, similar_left_out = left_out, "expiry check failed; retrying");
                    }
                }
            }
            match self.send_due_interims(now).await {
                Ok(queued) => progressed |= queued > 0,
                Err(e) => {
                    failed = true;
                    if let Some(left_out) = INTERIM_LOG.admit_if_away(e.is_unavailable()) {
                        tracing::error!(error = ?e, failures, similar_left_out = left_out, "queueing interim updates failed; retrying");
                    }
                }
            }
            drop(one_line);
            failures = if failed {
                failures.saturating_add(1)
            } else {
                0
            };
            let longest = MAX_SLEEP.min(self.storage.longest_sleep());
            let sleep = match self.next_due().await {
                _ if failures > 0 => retry_after(failures),
                // Due already when this pass began, yet it did nothing: another replica's
                // transaction holds those rows (it stops them, or lets them go when it ends)
                // — looked at again a moment later, not every millisecond meanwhile.
                Ok(Some(at)) if at <= now && !progressed => HELD_ROWS_WAIT,
                Ok(Some(at)) => {
                    Duration::from_millis((at - now_ms()).max(0) as u64 + 1).min(longest)
                }
                Ok(None) => longest,
                Err(e) => {
                    tracing::error!(error = %crate::portal_backend::error_chain(&e), "reading the next deadline failed");
                    Duration::from_secs(1)
                }
            };
            wake.next_look
                .store(now_ms() + sleep.as_millis() as i64, Ordering::SeqCst);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

/// The wait before the next pass when something due was left by a pass that did nothing.
const HELD_ROWS_WAIT: Duration = Duration::from_millis(200);

/// The wait before the next pass after `failures` failed passes in a row: 100 ms, doubling,
/// at most 5 s.
fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    Duration::from_millis(100 << doublings).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_passes_back_off_to_five_seconds() {
        assert_eq!(retry_after(1), Duration::from_millis(100));
        assert_eq!(retry_after(2), Duration::from_millis(200));
        assert_eq!(retry_after(6), Duration::from_millis(3200));
        assert_eq!(retry_after(7), Duration::from_secs(5));
        assert_eq!(retry_after(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn only_a_deadline_before_the_next_look_wakes_the_task() {
        let wake = ExpiryWake::default();
        // Before the task has read the deadlines: every deadline wakes it.
        assert!(wake.due_at(i64::MAX - 1));
        wake.0.next_look.store(10_000, Ordering::SeqCst);
        assert!(!wake.due_at(10_000), "due when the task looks anyway");
        assert!(!wake.due_at(14_400_000), "a window of hours costs nothing");
        assert!(wake.due_at(9_999), "an earlier deadline wakes it");
    }
}
