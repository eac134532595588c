//! The organization store's types, and its SQLite implementation ([`OrganizationStore`] for
//! [`SqliteStore`]): organizations with their settings (the run-time truth), the global
//! revision other processes poll, durable organization jobs, and the audit log.

use super::{sqlite::SqliteStore, OrganizationStore, StorageError};
use rusqlite::OptionalExtension;
use sqlx::{Row, Sqlite, Transaction};

/// An organization as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOrganization {
    /// Slug (stable id).
    pub id: String,
    /// Display name.
    pub name: String,
    /// False = disabled.
    pub active: bool,
    /// Settings as JSON (secrets included: never shown).
    pub settings: Option<String>,
    /// Bumped by every change of this organization.
    pub revision: i64,
    /// Listed in the configuration at the last start-up.
    pub from_config: bool,
}

/// What seeding one organization from the configuration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedOutcome {
    /// It was new.
    Created,
    /// It existed; these parts changed (`settings`, `name`, `enabled`, `disabled`).
    Updated(Vec<&'static str>),
    /// Nothing changed.
    Unchanged,
}

/// An operator's write of an organization's name and settings, with its audit entry.
#[derive(Clone, Copy, Debug)]
pub struct OrganizationWrite<'a> {
    /// Organization id.
    pub id: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Settings as JSON (secrets included).
    pub settings_json: &'a str,
    /// Who (`cli:<user>`, `admin:<token>`).
    pub actor: &'a str,
    /// Unix ms.
    pub now: i64,
    /// The audit entry's detail (never secrets).
    pub detail: &'a serde_json::Value,
    /// Updates only: the revision the change was computed from; another change stored since
    /// makes this one [`UpdateOutcome::Stale`] (no lost updates).
    pub expected_revision: Option<i64>,
}

/// What an operator's update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Stored.
    Updated,
    /// Nothing differed.
    Unchanged,
    /// No such organization.
    NotFound,
    /// The organization is disabled (and the change required it active).
    Disabled,
    /// It changed since the change was computed (`expected_revision`).
    Stale,
}

/// What an operator's delete did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Gone.
    Deleted,
    /// No such organization.
    NotFound,
    /// Listed in the configuration file (it would come back at the next start).
    FromConfig,
    /// Work left that needs the organization.
    Busy {
        /// Sessions still open.
        open_sessions: i64,
        /// Accounting rows not yet delivered.
        pending_accounting: i64,
    },
}

/// A queued organization job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrganizationJob {
    /// Row id.
    pub id: i64,
    /// Organization it is about.
    pub organization_id: String,
    /// `stop_sessions` or `terminate_session`.
    pub kind: String,
    /// The session of a `terminate_session` job.
    pub access_session_id: Option<i64>,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Row id.
    pub id: i64,
    /// Unix ms.
    pub at: i64,
    /// Who: `config`, `cli:<user>`, `system`, …
    pub actor: String,
    /// What: `org.create`, `org.disable`, `guard.denied`, …
    pub action: String,
    /// Organization concerned, if any.
    pub organization_id: Option<String>,
    /// Details as JSON (never secrets).
    pub detail: String,
}

/// One audit entry: at, actor, action, organization id, detail (JSON).
pub(crate) const AUDIT_INSERT: &str =
    "INSERT INTO audit_log (at, actor, action, organization_id, detail) VALUES ($1, $2, $3, $4, $5)";

/// The audit entry of a change, written in the change's transaction.
pub(crate) async fn audit_in(
    tx: &mut Transaction<'static, Sqlite>,
    at: i64,
    actor: &str,
    action: &str,
    organization_id: Option<&str>,
    detail: &serde_json::Value,
) -> Result<(), StorageError> {
    sqlx::query(AUDIT_INSERT)
        .bind(at)
        .bind(actor)
        .bind(action)
        .bind(organization_id)
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The audit entry of a change made through the engine, written in that write.
pub(crate) fn audit_on(
    conn: &rusqlite::Connection,
    at: i64,
    actor: &str,
    action: &str,
    organization_id: Option<&str>,
    detail: &serde_json::Value,
) -> Result<(), StorageError> {
    conn.prepare_cached(AUDIT_INSERT)?
        .execute(rusqlite::params![
            at,
            actor,
            action,
            organization_id,
            detail.to_string()
        ])?;
    Ok(())
}

/// A deleted organization's audit detail with its dead-lettered rows (Acct-Session-Id, status
/// type, reason): they are the only record of accounting that was never sent.
pub(crate) fn with_dead_letters(
    detail: &serde_json::Value,
    dead: &[(String, i64, Option<String>)],
) -> serde_json::Value {
    let mut detail = detail.clone();
    if let Some(map) = detail.as_object_mut() {
        map.insert(
            "dead_letters".into(),
            dead.iter()
                .map(|(sid, status, reason)| {
                    serde_json::json!({ "acct_session_id": sid, "status_type": status, "reason": reason })
                })
                .collect(),
        );
    }
    detail
}

async fn bump_revision(tx: &mut Transaction<'static, Sqlite>) -> Result<(), StorageError> {
    sqlx::query("UPDATE organization_revision SET value = value + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Flips the active flag inside `tx` (row revision, global revision, audit entry, and on
/// disable the stop job). True if it changed.
async fn set_active_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: &str,
    active: bool,
    actor: &str,
    now: i64,
) -> Result<bool, StorageError> {
    let changed = sqlx::query(
        "UPDATE organizations SET is_active = ?, revision = revision + 1, updated_at = ? \
         WHERE id = ? AND is_active != ?",
    )
    .bind(active)
    .bind(now)
    .bind(id)
    .bind(active)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    if !changed {
        return Ok(false);
    }
    bump_revision(tx).await?;
    if !active {
        sqlx::query(
            "INSERT INTO organization_jobs (organization_id, kind, created_at) VALUES (?, 'stop_sessions', ?)",
        )
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    audit_in(
        tx,
        now,
        actor,
        if active { "org.enable" } else { "org.disable" },
        Some(id),
        &serde_json::json!({ "before": { "active": !active }, "after": { "active": active } }),
    )
    .await?;
    Ok(true)
}

impl OrganizationStore for SqliteStore {
    async fn organizations(&self) -> Result<Vec<StoredOrganization>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, name, is_active, settings, revision, position IS NOT NULL AS from_config FROM organizations \
             ORDER BY position IS NULL, position, created_at, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredOrganization {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    active: r.try_get("is_active")?,
                    settings: r.try_get("settings")?,
                    revision: r.try_get("revision")?,
                    from_config: r.try_get("from_config")?,
                })
            })
            .collect()
    }

    async fn organization_revision(&self) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM organization_revision WHERE id = 1")
                .fetch_one(self.pool())
                .await?,
        )
    }

    async fn organization_active(&self, id: &str) -> Result<Option<bool>, StorageError> {
        self.engine.read(|c| {
            Ok(
                c.prepare_cached("SELECT is_active FROM organizations WHERE id = ?")?
                    .query_row([id], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    async fn seed_organization(
        &self,
        id: &str,
        name: &str,
        settings_json: &str,
        enabled: Option<bool>,
        position: i64,
        now: i64,
    ) -> Result<SeedOutcome, StorageError> {
        let (_gate, mut tx) = self.begin().await?;
        let existing: Option<(String, Option<String>, bool)> =
            sqlx::query_as("SELECT name, settings, is_active FROM organizations WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let outcome = match existing {
            None => {
                let active = enabled.unwrap_or(true);
                sqlx::query(
                    "INSERT INTO organizations (id, name, is_active, settings, revision, created_at, updated_at, position) \
                     VALUES (?, ?, ?, ?, (SELECT value + 1 FROM organization_revision WHERE id = 1), ?, ?, ?)",
                )
                .bind(id)
                .bind(name)
                .bind(active)
                .bind(settings_json)
                .bind(now)
                .bind(now)
                .bind(position)
                .execute(&mut *tx)
                .await?;
                bump_revision(&mut tx).await?;
                audit_in(
                    &mut tx,
                    now,
                    "config",
                    "org.create",
                    Some(id),
                    &serde_json::json!({ "after": { "name": name, "active": active } }),
                )
                .await?;
                SeedOutcome::Created
            }
            Some((old_name, old_settings, _)) => {
                let mut changed = Vec::new();
                if old_name != name {
                    changed.push("name");
                }
                if old_settings.as_deref() != Some(settings_json) {
                    changed.push("settings");
                }
                sqlx::query("UPDATE organizations SET position = ? WHERE id = ?")
                    .bind(position)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if !changed.is_empty() {
                    sqlx::query(
                        "UPDATE organizations SET name = ?, settings = ?, revision = revision + 1, updated_at = ? WHERE id = ?",
                    )
                    .bind(name)
                    .bind(settings_json)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    bump_revision(&mut tx).await?;
                    audit_in(&mut tx, now, "config", "org.update", Some(id),
                        &serde_json::json!({ "changed": changed, "before": { "name": old_name }, "after": { "name": name } })).await?;
                }
                if let Some(active) = enabled {
                    if set_active_in(&mut tx, id, active, "config", now).await? {
                        changed.push(if active { "enabled" } else { "disabled" });
                    }
                }
                if changed.is_empty() {
                    SeedOutcome::Unchanged
                } else {
                    SeedOutcome::Updated(changed)
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn set_organization_active(
        &self,
        id: &str,
        active: bool,
        actor: &str,
        now: i64,
    ) -> Result<Option<bool>, StorageError> {
        let (_gate, mut tx) = self.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM organizations WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let changed = set_active_in(&mut tx, id, active, actor, now).await?;
        tx.commit().await?;
        Ok(Some(changed))
    }

    async fn forget_config_position(&self, id: &str) -> Result<(), StorageError> {
        let _gate = self.write_gate().await;
        sqlx::query("UPDATE organizations SET position = NULL WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn queue_session_termination(
        &self,
        session_id: i64,
        actor: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        let (_gate, mut tx) = self.begin().await?;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT organization_id, acct_session_id, username FROM access_sessions WHERE id = ? AND state = 'active'",
        )
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((organization_id, acct_session_id, username)) = row else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO organization_jobs (organization_id, kind, access_session_id, created_at) VALUES (?, 'terminate_session', ?, ?)",
        )
        .bind(&organization_id)
        .bind(session_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit_in(
            &mut tx,
            now,
            actor,
            "session.terminate",
            Some(&organization_id),
            &serde_json::json!({ "acct_session_id": acct_session_id, "username": username }),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_organization(
        &self,
        write: &OrganizationWrite<'_>,
        active: bool,
    ) -> Result<bool, StorageError> {
        let OrganizationWrite {
            id,
            name,
            settings_json,
            actor,
            now,
            detail,
            ..
        } = *write;
        let (_gate, mut tx) = self.begin().await?;
        // The revision starts above every revision ever stored (the global one counts them
        // all), so a process still caching a deleted organization of the same id rebuilds.
        let created = sqlx::query(
            "INSERT INTO organizations (id, name, is_active, settings, revision, created_at, updated_at, position) \
             VALUES (?, ?, ?, ?, (SELECT value + 1 FROM organization_revision WHERE id = 1), ?, ?, NULL) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(active)
        .bind(settings_json)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !created {
            return Ok(false);
        }
        bump_revision(&mut tx).await?;
        audit_in(&mut tx, now, actor, "org.create", Some(id), detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn update_organization(
        &self,
        write: &OrganizationWrite<'_>,
        require_active: bool,
    ) -> Result<UpdateOutcome, StorageError> {
        let OrganizationWrite {
            id,
            name,
            settings_json,
            actor,
            now,
            detail,
            expected_revision,
        } = *write;
        let (_gate, mut tx) = self.begin().await?;
        let before: Option<(String, Option<String>, bool, i64)> = sqlx::query_as(
            "SELECT name, settings, is_active, revision FROM organizations WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((old_name, old_settings, active, revision)) = before else {
            return Ok(UpdateOutcome::NotFound);
        };
        if require_active && !active {
            return Ok(UpdateOutcome::Disabled);
        }
        if expected_revision.is_some_and(|expected| expected != revision) {
            return Ok(UpdateOutcome::Stale);
        }
        if old_name == name && old_settings.as_deref() == Some(settings_json) {
            return Ok(UpdateOutcome::Unchanged);
        }
        sqlx::query(
            "UPDATE organizations SET name = ?, settings = ?, revision = revision + 1, updated_at = ? \
             WHERE id = ? AND (is_active = 1 OR ? = 0)",
        )
        .bind(name)
        .bind(settings_json)
        .bind(now)
        .bind(id)
        .bind(require_active)
        .execute(&mut *tx)
        .await?;
        bump_revision(&mut tx).await?;
        audit_in(&mut tx, now, actor, "org.update", Some(id), detail).await?;
        tx.commit().await?;
        Ok(UpdateOutcome::Updated)
    }

    async fn sessions_needing_server(
        &self,
        organization_id: &str,
        name: &str,
    ) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM access_sessions s WHERE s.organization_id = ? AND s.server_name = ? \
             AND (s.state = 'active' OR EXISTS (SELECT 1 FROM accounting_outbox o \
                  WHERE o.access_session_id = s.id AND o.delivered_at IS NULL AND o.dead_at IS NULL))",
        )
        .bind(organization_id)
        .bind(name)
        .fetch_one(self.pool())
        .await?)
    }

    async fn delete_organization(
        &self,
        id: &str,
        actor: &str,
        now: i64,
        detail: &serde_json::Value,
    ) -> Result<DeleteOutcome, StorageError> {
        let (_gate, mut tx) = self.begin().await?;
        let row: Option<bool> =
            sqlx::query_scalar("SELECT position IS NOT NULL FROM organizations WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(from_config) = row else {
            return Ok(DeleteOutcome::NotFound);
        };
        if from_config {
            return Ok(DeleteOutcome::FromConfig);
        }
        let open_sessions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM access_sessions WHERE organization_id = ? AND state = 'active'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let pending_accounting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE s.organization_id = ? AND o.delivered_at IS NULL AND o.dead_at IS NULL",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if open_sessions > 0 || pending_accounting > 0 {
            return Ok(DeleteOutcome::Busy {
                open_sessions,
                pending_accounting,
            });
        }
        // Dead-lettered rows are the only record of accounting that was never sent: they go
        // into the audit entry before the rows go.
        let dead: Vec<(String, i64, Option<String>)> = sqlx::query_as(
            "SELECT s.acct_session_id, o.status_type, o.dead_reason FROM accounting_outbox o \
             JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE s.organization_id = ? AND o.dead_at IS NOT NULL ORDER BY o.id LIMIT 1000",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let detail = with_dead_letters(detail, &dead);
        for statement in [
            "DELETE FROM session_classes WHERE access_session_id IN (SELECT id FROM access_sessions WHERE organization_id = ?)",
            "DELETE FROM accounting_outbox WHERE access_session_id IN (SELECT id FROM access_sessions WHERE organization_id = ?)",
            "DELETE FROM access_sessions WHERE organization_id = ?",
            "DELETE FROM organization_jobs WHERE organization_id = ?",
            "DELETE FROM organizations WHERE id = ?",
        ] {
            sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        }
        bump_revision(&mut tx).await?;
        audit_in(&mut tx, now, actor, "org.delete", Some(id), &detail).await?;
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    async fn pending_organization_jobs(&self) -> Result<Vec<OrganizationJob>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, organization_id, kind, access_session_id FROM organization_jobs WHERE done_at IS NULL ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OrganizationJob {
                    id: r.try_get("id")?,
                    organization_id: r.try_get("organization_id")?,
                    kind: r.try_get("kind")?,
                    access_session_id: r.try_get("access_session_id")?,
                })
            })
            .collect()
    }

    async fn claim_organization_jobs(
        &self,
        _now: i64,
        _lease_until: i64,
    ) -> Result<Vec<OrganizationJob>, StorageError> {
        // One portal process per SQLite file: nobody else runs jobs.
        self.pending_organization_jobs().await
    }

    async fn renew_organization_job(
        &self,
        _job_id: i64,
        _lease_until: i64,
    ) -> Result<bool, StorageError> {
        Ok(true)
    }

    async fn finish_organization_job(
        &self,
        job: &OrganizationJob,
        outcome: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        let (_gate, mut tx) = self.begin().await?;
        let finished = sqlx::query("UPDATE organization_jobs SET done_at = ?, outcome = ? WHERE id = ? AND done_at IS NULL")
            .bind(now)
            .bind(outcome)
            .bind(job.id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if !finished {
            return Ok(());
        }
        audit_in(
            &mut tx,
            now,
            "system",
            &format!("job.{}", job.kind),
            Some(&job.organization_id),
            &serde_json::json!({ "job": job.id, "outcome": outcome }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn active_session_ids_of(&self, organization_id: &str) -> Result<Vec<i64>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM access_sessions WHERE organization_id = ? AND state = 'active' ORDER BY id",
        )
        .bind(organization_id)
        .fetch_all(self.pool())
        .await?)
    }

    async fn audit(
        &self,
        at: i64,
        actor: &str,
        action: &str,
        organization_id: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<(), StorageError> {
        let (actor, action, organization_id, detail) = (
            actor.to_string(),
            action.to_string(),
            organization_id.map(str::to_string),
            detail.clone(),
        );
        self.engine
            .write(move |c| audit_on(c, at, &actor, &action, organization_id.as_deref(), &detail))
            .await
    }

    async fn prune_audit(&self, before: i64) -> Result<u64, StorageError> {
        // Finished organization jobs are history too (their outcome is in the audit log).
        let _gate = self.write_gate().await;
        sqlx::query("DELETE FROM organization_jobs WHERE done_at IS NOT NULL AND done_at < ?")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(sqlx::query("DELETE FROM audit_log WHERE at < ?")
            .bind(before)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    async fn audit_tail(&self, limit: i64) -> Result<Vec<AuditEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, organization_id, detail FROM \
             (SELECT * FROM audit_log ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    organization_id: r.try_get("organization_id")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
