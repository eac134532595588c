//! A `max_lifetime` shortened while sessions are open holds for them at once, not from their
//! next refresh: each organization's open sessions whose Access-Accept left their limit to
//! the organization are capped to it (a session already older ends now, with
//! Session-Timeout, through expiry). Run for every organization when the process starts (a
//! change whose cap a crash cut short is made then) and for each one whose `max_lifetime`
//! this process's cache sees change. Idempotent, and only ever shortens, so replicas each
//! doing it agree; a lengthened `max_lifetime` reaches a session at its next refresh.

use super::{now_ms, AccessSessions};
use crate::{organizations::Organization, storage::StorageError};
use std::{collections::HashMap, time::Duration};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Wait before trying again after a failed cap (the database away).
const RETRY: Duration = Duration::from_secs(1);
/// An organization's sessions are capped once more this long after its change: a sign-in
/// that read the old `max_lifetime` just before may write its session just after the cap.
const AGAIN_AFTER: Duration = Duration::from_secs(2);

impl AccessSessions {
    /// Caps the sessions of each cached organization whose `max_lifetime` differs from the
    /// one `applied` holds for it (every organization, the first time), recording it there
    /// once done. An organization whose cap failed is left out of `applied`: tried again.
    /// Returns the organizations whose value was new.
    pub async fn cap_lifetimes(
        &self,
        applied: &mut HashMap<String, Option<Duration>>,
    ) -> Result<Vec<String>, StorageError> {
        let organizations = self.organizations.all();
        applied.retain(|id, _| organizations.iter().any(|org| &org.id == id));
        let mut new = Vec::new();
        for org in organizations {
            if applied.get(&org.id) == Some(&org.max_lifetime) {
                continue;
            }
            self.cap_organization(&org).await?;
            applied.insert(org.id.clone(), org.max_lifetime);
            new.push(org.id.clone());
        }
        Ok(new)
    }

    /// Caps `org`'s open sessions to its `max_lifetime` (none: nothing to do).
    async fn cap_organization(&self, org: &Organization) -> Result<(), StorageError> {
        let Some(max) = org.max_lifetime else {
            return Ok(());
        };
        let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
        let capped = self
            .storage
            .cap_lifetimes(&org.id, max_ms, now_ms())
            .await?;
        if !capped.is_empty() {
            tracing::info!(organization = %org.id, sessions = capped.len(),
                max_lifetime_secs = max.as_secs(),
                "open sessions brought within the organization's max_lifetime (those older end now)");
        }
        for (id, expires_at) in capped {
            self.expiry_wake.due_at(expires_at);
            self.events.publish(id);
        }
        Ok(())
    }

    /// Runs [`Self::cap_lifetimes`] at start and at each change of the organization cache
    /// (and once more [`AGAIN_AFTER`] a change), until `shutdown`.
    pub async fn run_lifetime_caps(self, shutdown: CancellationToken) {
        let mut changes = self.organizations.changes();
        let mut applied = HashMap::new();
        let mut again: Vec<String> = Vec::new();
        let mut again_at = Instant::now();
        loop {
            let failed = match self.cap_lifetimes(&mut applied).await {
                Ok(new) => {
                    if !new.is_empty() {
                        again.extend(new);
                        again_at = Instant::now() + AGAIN_AFTER;
                    }
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e,
                        "bringing open sessions within a changed max_lifetime failed; will retry");
                    true
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(RETRY), if failed => {}
                () = tokio::time::sleep_until(again_at), if !again.is_empty() => {
                    for id in std::mem::take(&mut again) {
                        if let Some(org) = self.organizations.get(&id) {
                            if let Err(e) = self.cap_organization(&org).await {
                                tracing::error!(error = %e, organization = %id,
                                    "bringing open sessions within a changed max_lifetime again failed");
                            }
                        }
                    }
                }
            }
        }
    }
}
