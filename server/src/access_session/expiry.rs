//! Expiry: stops access sessions whose persisted deadline has passed (Stop with Idle-Timeout or
//! Session-Timeout, stamped at the deadline, so a Stop sent late after a restart carries the
//! right Acct-Session-Time and an Acct-Delay-Time).
//!
//! Storage holds the deadlines; memory only holds the next wake-up. [`Expiry::expire_due`] is the
//! one step tests drive; [`Expiry::run`] loops it.

use super::{events::SessionEvents, now_ms};
use crate::{
    accounting::Accounting,
    storage::sqlite::Stopped,
    storage::{Storage, StorageError},
};
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest sleep between checks, so a missed wake-up costs at most this long.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The expiry task.
#[derive(Clone)]
pub struct Expiry {
    storage: Storage,
    accounting: Accounting,
    /// Notified when a session is created or refreshed (its deadline may be the next one).
    wake: Arc<Notify>,
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
        wake: Arc<Notify>,
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
            tracing::info!(count = stopped.len(), "expired access sessions stopped");
            self.accounting.wake();
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
        loop {
            let notified = self.wake.notified();
            let now = now_ms();
            if let Err(e) = self.expire_due(now).await {
                tracing::error!(error = ?e, "expiry check failed; retrying");
            }
            if let Err(e) = self.send_due_interims(now).await {
                tracing::error!(error = ?e, "queueing interim updates failed; retrying");
            }
            let sleep = match self.next_due().await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - now_ms()).max(0) as u64 + 1).min(MAX_SLEEP)
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::error!(error = ?e, "reading the next deadline failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}
