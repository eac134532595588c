//! Durable accounting: delivers the outbox rows that storage wrote with each session change
//! (Start, Interim-Update, Stop), in order per session, to the server that authenticated the
//! session, retrying with backoff until acknowledged. A crash loses nothing: rows are delivered
//! after restart, with Acct-Delay-Time saying how late they are.
//!
//! [`Accounting::deliver_next`] is the one step tests drive; [`Accounting::run`] loops it.

use crate::{
    access_session::now_ms,
    organizations::{
        guard::{self, Operation, OrgState},
        Organizations,
    },
    radius::{status_type, AccountingRecord, Radius},
    storage::{OutboxRow, Storage, StorageError},
};
use std::{net::IpAddr, sync::Arc, time::Duration};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

/// A sender owns a claimed row this long; another sender may take it over afterwards (a crashed
/// sender's rows are not stuck). Longer than any single delivery's deadline.
const CLAIM_LEASE_MS: i64 = 60_000;
/// Longest sleep between outbox checks.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Cap of the retry backoff.
const MAX_BACKOFF_MS: i64 = 300_000;

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// Storage failed: the row stays queued; retry later.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Result of one delivery attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The server acknowledged the packet.
    Delivered,
    /// Not acknowledged; retried at the given time (unix ms).
    RetryAt(i64),
    /// Not sent by policy (Start of a disabled organization); the row is closed.
    Cancelled,
}

/// The accounting deliverer. Cheap to clone.
#[derive(Clone)]
pub struct Accounting {
    storage: Storage,
    radius: Radius,
    organizations: Arc<Organizations>,
    /// Wakes the delivery loop when rows were queued.
    wake: Arc<Notify>,
}

/// Delay before retry `attempts` (1-based): 1 s, 2 s, 4 s … capped at 5 min.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = (attempts - 1).clamp(0, 20) as u32;
    (1000i64 << exp).min(MAX_BACKOFF_MS)
}

impl Accounting {
    /// Wires the deliverer.
    pub fn new(storage: Storage, radius: Radius, organizations: Arc<Organizations>) -> Self {
        Accounting {
            storage,
            radius,
            organizations,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Asks the delivery loop to look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Claims and delivers the next due row; `None` when nothing is due.
    pub async fn deliver_next(&self) -> Result<Option<Delivery>, OutboxError> {
        let now = now_ms();
        let Some(row) = self
            .storage
            .claim_next_outbox(now, now + CLAIM_LEASE_MS)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.deliver(row, None).await?))
    }

    /// Delivers a session's queued packet of `status_type` right away (login waits for its
    /// Start). True once it is acknowledged — by this call or by the background loop — before
    /// `deadline`.
    pub async fn deliver_now(
        &self,
        session_id: i64,
        status_type: u32,
        deadline: Instant,
    ) -> Result<bool, OutboxError> {
        loop {
            let now = now_ms();
            if let Some(row) = self
                .storage
                .claim_session_outbox(session_id, status_type, now, now + CLAIM_LEASE_MS)
                .await?
            {
                return Ok(self.deliver(row, Some(deadline)).await? == Delivery::Delivered);
            }
            // Someone else holds the claim (the background loop): wait for its outcome.
            if self
                .storage
                .outbox_delivered(session_id, status_type)
                .await?
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn deliver(
        &self,
        row: OutboxRow,
        deadline: Option<Instant>,
    ) -> Result<Delivery, OutboxError> {
        let now = now_ms();
        let Some(session) = self.storage.session(row.access_session_id).await? else {
            return Err(
                StorageError::Corrupt(format!("outbox row {} has no session", row.id)).into(),
            );
        };
        let org = self.organizations.get(&session.organization_id);
        if row.status_type == i64::from(status_type::START) {
            let state = OrgState::from_active(org.as_ref().map(|o| o.active));
            if !guard::allows(Operation::AccountingStart, state) {
                tracing::warn!(acct_session_id = %session.acct_session_id, "Accounting-Start cancelled: organization disabled");
                self.storage.mark_delivered(row.id, now).await?;
                return Ok(Delivery::Cancelled);
            }
        }
        let Some(org) = org else {
            let retry = now + MAX_BACKOFF_MS;
            self.storage
                .mark_failed(row.id, retry, "organization not configured")
                .await?;
            tracing::error!(organization = %session.organization_id, "accounting for an organization missing from the configuration");
            return Ok(Delivery::RetryAt(retry));
        };
        let server = org
            .servers
            .get(session.server_index as usize)
            .or_else(|| org.servers.first())
            .ok_or_else(|| StorageError::Corrupt("organization has no servers".into()))?;
        let client_ip: IpAddr = session
            .client_ip
            .parse()
            .map_err(|_| StorageError::Corrupt(format!("session {} client_ip", session.id)))?;
        let record = AccountingRecord {
            status_type: row.status_type as u32,
            acct_session_id: session.acct_session_id.clone(),
            username: session.username.clone(),
            client_ip,
            classes: session.classes.clone(),
            event_timestamp: (row.event_at / 1000) as u32,
            delay_secs: ((now - row.event_at).max(0) / 1000) as u32,
            session_time_secs: row.session_time_secs.map(|s| s as u32),
            terminate_cause: row.terminate_cause.map(|c| c as u32),
        };
        let own_deadline = Instant::now() + server.timeout * (server.retries + 1);
        let deadline = deadline.map_or(own_deadline, |d| d.min(own_deadline));
        match self
            .radius
            .account(server, &org.nas, &record, deadline)
            .await
        {
            Ok(()) => {
                self.storage.mark_delivered(row.id, now_ms()).await?;
                tracing::info!(acct_session_id = %record.acct_session_id, status_type = record.status_type,
                    server = %server.name, delay_s = record.delay_secs, "accounting delivered");
                Ok(Delivery::Delivered)
            }
            Err(e) => {
                let retry = now_ms() + backoff_ms(row.attempts);
                self.storage
                    .mark_failed(row.id, retry, &e.to_string())
                    .await?;
                tracing::warn!(acct_session_id = %record.acct_session_id, status_type = record.status_type,
                    server = %server.name, attempts = row.attempts, error = %e, "accounting not acknowledged; will retry");
                Ok(Delivery::RetryAt(retry))
            }
        }
    }

    /// Runs until `shutdown`: deliver everything due, then sleep until the next retry or a wake.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match self.deliver_next().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = ?e, "accounting delivery failed");
                        break;
                    }
                }
            }
            let sleep = match self.storage.next_outbox_attempt().await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - now_ms()).max(0) as u64 + 1).min(MAX_SLEEP)
                }
                Ok(None) => MAX_SLEEP,
                Err(_) => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_from_one_second_and_is_capped() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(4), 8000);
        assert_eq!(backoff_ms(30), 300_000);
    }
}
