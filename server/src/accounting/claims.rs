//! Claims kept alive while their rows are delivered.
//!
//! An outbox claim is a lease ([`super::CLAIM_LEASE_MS`], 30 s): a sender that dies — a replica
//! killed — leaves its rows to another sender once it runs out. A delivery can take longer
//! than that (a send slot waited for, a silent server retransmitted to for up to a minute), so
//! while one runs its claim is kept: every [`KEEP_EVERY`] one write extends the claims of all
//! of this process's deliveries. A sender killed mid-delivery hands its rows over within the
//! lease, not after the longest delivery there could be.
//!
//! A claim that cannot be kept (the database does not answer) would run out under a delivery
//! still retransmitting, and another sender could take the row and send it too — a Start
//! after its Stop. So a delivery whose claim is about to run out ([`LAPSE_LEFT_MS`] left) is
//! told to stop ([`Holding::lapsed`]) before any other sender may take the row: at
//! [`super::CLAIM_MARGIN_MS`] past its end by this clock, for the clocks of replicas.

use super::{CLAIM_LEASE_MS, CLAIM_MARGIN_MS};
use crate::{
    access_session::now_ms,
    storage::{OutboxRow, Storage},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the claims of running deliveries are extended.
pub(super) const KEEP_EVERY: Duration = Duration::from_secs(4);
/// How often claims close to running out are looked for.
const LAPSE_CHECK: Duration = Duration::from_secs(1);
/// A delivery whose claim has less than this left is stopped: a look comes every
/// [`LAPSE_CHECK`] (the write that extends claims runs aside, its answer taken whenever it
/// comes), so it is stopped with more than [`CLAIM_MARGIN_MS`] left.
pub(super) const LAPSE_LEFT_MS: i64 = CLAIM_MARGIN_MS + LAPSE_CHECK.as_millis() as i64 + 1_000;
const _: () = assert!(LAPSE_LEFT_MS + 4 * (KEEP_EVERY.as_millis() as i64) < CLAIM_LEASE_MS);

/// The claims of this process's running deliveries. Cheap to clone.
#[derive(Clone)]
pub(super) struct Kept {
    storage: Storage,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// By claim: (row id, attempts).
    claims: HashMap<(i64, i64), Held>,
    /// Whether the task that keeps them runs (it ends when nothing is held: no work, and no
    /// wake-up, while the portal is idle).
    keeper: bool,
}

struct Held {
    /// Until when the claim is known to run (unix ms).
    until: i64,
    /// Whether the keeper has tried to extend it (a claim with little left when its delivery
    /// began is renewed by the delivery before it sends, not stopped before it was tried).
    tried: bool,
    /// Cancelled when it is about to run out.
    lapsed: CancellationToken,
    /// Whether it has been seen with time to run (at least [`ARMED_LEFT_MS`] left): only then
    /// does its delivery time it on its own clock ([`Holding::lapsed`]).
    armed: bool,
}

/// What a claim must have had left once for its delivery to time it itself.
const ARMED_LEFT_MS: i64 = CLAIM_MARGIN_MS + 3_000;

/// A delivery's claim, kept while this lives.
pub(super) struct Holding {
    inner: Arc<Mutex<Inner>>,
    key: (i64, i64),
    lapsed: CancellationToken,
}

impl Holding {
    /// Completes when the claim could not be kept and is about to run out: the delivery must
    /// stop sending. Told by the keeper, and — should the keeper not run in time (the process
    /// frozen, the keeper gone) — by this delivery's own clock, [`CLAIM_MARGIN_MS`] and a
    /// second before the claim's known end, whatever the keeper did (polled first, before the
    /// delivery, when both wake together).
    /// A claim that began its delivery with less than that left is not timed until its
    /// delivery renewed it (it does before it sends).
    pub(super) async fn lapsed(&self) {
        loop {
            let (until, armed) = lock(&self.inner)
                .claims
                .get(&self.key)
                .map_or((i64::MIN, true), |held| (held.until, held.armed));
            let at = until - CLAIM_MARGIN_MS - 1_000;
            let left = if armed {
                at - now_ms()
            } else {
                LAPSE_CHECK.as_millis() as i64
            };
            if left <= 0 {
                return;
            }
            tokio::select! {
                () = self.lapsed.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
            }
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        lock(&self.inner).claims.remove(&self.key);
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl Kept {
    pub(super) fn new(storage: Storage) -> Self {
        Kept {
            storage,
            inner: Arc::default(),
        }
    }

    /// Keeps `row`'s claim (its sender's: this delivery) until the [`Holding`] is dropped.
    pub(super) fn hold(&self, row: &OutboxRow) -> Holding {
        let key = (row.id, row.attempts);
        let lapsed = CancellationToken::new();
        let mut inner = lock(&self.inner);
        inner.claims.insert(
            key,
            Held {
                until: row.lease_until,
                tried: false,
                armed: row.lease_until - now_ms() >= ARMED_LEFT_MS,
                lapsed: lapsed.clone(),
            },
        );
        if !inner.keeper {
            inner.keeper = true;
            tokio::spawn(crate::storage::background(keep(
                self.inner.clone(),
                self.storage.clone(),
            )));
        }
        Holding {
            inner: self.inner.clone(),
            key,
            lapsed,
        }
    }

    /// Until when `row`'s claim is known to run: its own lease, or later if kept since.
    pub(super) fn until(&self, row: &OutboxRow) -> i64 {
        lock(&self.inner)
            .claims
            .get(&(row.id, row.attempts))
            .map_or(row.lease_until, |held| held.until.max(row.lease_until))
    }

    /// `row`'s claim was set to `until` by its delivery (what the database now says).
    pub(super) fn renewed(&self, row: &OutboxRow, until: i64) {
        if let Some(held) = lock(&self.inner).claims.get_mut(&(row.id, row.attempts)) {
            held.until = until;
            held.armed |= until - now_ms() >= ARMED_LEFT_MS;
        }
    }
}

/// Ends the keeper's run however it ends (a panic too): the next delivery starts another.
struct KeeperRun(Arc<Mutex<Inner>>);

impl Drop for KeeperRun {
    fn drop(&mut self) {
        lock(&self.0).keeper = false;
    }
}

/// Extends the held claims every [`KEEP_EVERY`] and stops the deliveries whose claims are about
/// to run out; ends when nothing is held.
async fn keep(inner: Arc<Mutex<Inner>>, storage: Storage) {
    let _run = KeeperRun(inner.clone());
    let mut next = Instant::now() + KEEP_EVERY;
    // The write under way, if any: it runs aside, so that a slow database never holds up the
    // look for claims about to run out, and its answer is taken whenever it comes.
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tokio::time::sleep(LAPSE_CHECK).await;
        let due: Vec<(i64, i64)> = {
            let mut inner = lock(&inner);
            if inner.claims.is_empty() {
                inner.keeper = false;
                return;
            }
            let now = now_ms();
            for (key, held) in &inner.claims {
                // A claim the keeper has not tried yet is not stopped: its delivery renews it
                // before sending when it has little left.
                if held.tried
                    && held.armed
                    && held.until - now < LAPSE_LEFT_MS
                    && !held.lapsed.is_cancelled()
                {
                    tracing::warn!(row = key.0, left_ms = held.until - now,
                        "an accounting delivery is stopped: its claim could not be kept (the database does not answer) and would run out, after which another sender may send the row; this one gives it up once the database answers");
                    held.lapsed.cancel();
                }
            }
            if Instant::now() < next || writing.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            inner
                .claims
                .iter_mut()
                .filter(|(_, held)| !held.lapsed.is_cancelled())
                .map(|(key, held)| {
                    held.tried = true;
                    *key
                })
                .collect()
        };
        next = Instant::now() + KEEP_EVERY;
        if due.is_empty() {
            continue;
        }
        writing.store(true, std::sync::atomic::Ordering::Release);
        let (inner, storage, writing) = (inner.clone(), storage.clone(), writing.clone());
        tokio::spawn(crate::storage::background(async move {
            let now = now_ms();
            match storage.keep_claims(&due, now + CLAIM_LEASE_MS, now).await {
                Ok(kept) => {
                    let mut inner = lock(&inner);
                    for (id, attempts, until) in kept {
                        if let Some(held) = inner.claims.get_mut(&(id, attempts)) {
                            held.until = held.until.max(until);
                            held.armed |= held.until - now_ms() >= ARMED_LEFT_MS;
                        }
                    }
                }
                Err(e) => {
                    static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
                    if let Some(left_out) = LOG.admit() {
                        tracing::warn!(claims = due.len(), error = %crate::portal_backend::error_chain(&e), similar_left_out = left_out,
                            "the claims of accounting deliveries under way could not be kept; tried again in {KEEP_EVERY:?}");
                    }
                }
            }
            writing.store(false, std::sync::atomic::Ordering::Release);
        }));
    }
}
