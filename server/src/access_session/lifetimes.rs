//! A `max_lifetime` shortened while sessions are open holds for them at once, not from their
//! next refresh: each organization's open sessions whose Access-Accept left their limit to
//! the organization are capped to it (a session already older ends now, with
//! Session-Timeout, through expiry). Run for every organization when the process starts (a
//! change whose cap a crash cut short is made then) and for each one whose `max_lifetime`
//! this process's cache sees change; and after a sign-in's or a refresh's write made while the
//! value changed (it may have come after the cap). Idempotent, and only ever shortens, so
//! replicas each doing it agree (one whose cache is late caps when it hears of the change); a
//! lengthened `max_lifetime` reaches a session at its next refresh.

use super::{now_ms, AccessSessions};
use crate::{organizations::Organization, storage::StorageError};
use std::{collections::HashMap, time::Duration};
use tokio_util::sync::CancellationToken;

/// Wait before trying again after a failed cap (the database away).
const RETRY: Duration = Duration::from_secs(1);

impl AccessSessions {
    /// Caps the sessions of each cached organization whose `max_lifetime` differs from the
    /// one `applied` holds for it (every organization, the first time), recording it there
    /// once done. An organization whose cap failed is left out of `applied`: tried again.
    pub async fn cap_lifetimes(
        &self,
        applied: &mut HashMap<String, Option<Duration>>,
    ) -> Result<(), StorageError> {
        let organizations = self.organizations.all();
        applied.retain(|id, _| organizations.iter().any(|org| &org.id == id));
        for org in organizations {
            if applied.get(&org.id) == Some(&org.max_lifetime) {
                continue;
            }
            self.cap_organization(&org).await?;
            applied.insert(org.id.clone(), org.max_lifetime);
        }
        Ok(())
    }

    /// After a session's write made with `used` as its organization's `max_lifetime`: if the
    /// cache says otherwise now (a change landed while the write was under way, which the
    /// task's cap may have run before), the organization's sessions are capped again — this
    /// one included. A failure is logged; the write stands.
    pub(super) async fn cap_if_changed(&self, organization_id: &str, used: Option<Duration>) {
        let Some(org) = self.organizations.get(organization_id) else {
            return;
        };
        if org.max_lifetime == used {
            return;
        }
        if let Err(e) = self.cap_organization(&org).await {
            crate::throttled!(error, error = %e, organization = %org.id,
                "bringing a session written during a max_lifetime change within it failed");
        }
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

    /// Runs [`Self::cap_lifetimes`] at start and at each change of the organization cache,
    /// until `shutdown`.
    pub async fn run_lifetime_caps(self, shutdown: CancellationToken) {
        let mut changes = self.organizations.changes();
        let mut applied = HashMap::new();
        loop {
            let failed = match self.cap_lifetimes(&mut applied).await {
                Ok(()) => false,
                Err(e) => {
                    crate::throttled!(error, error = %e,
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
            }
        }
    }
}
