//! The SQLite implementation of storage (WAL, busy timeout, `BEGIN IMMEDIATE` for every
//! read-then-write transaction so two writers never deadlock on a lock upgrade).

use super::{
    decode_classes, encode_classes, AccessSessionRecord, NewAccessSession, OutboxEntry, OutboxRow,
    SessionMatch, StorageError,
};
use crate::radius::{status_type, terminate_cause};
use sqlx::{
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
    Row, Sqlite, SqlitePool, Transaction,
};
use std::{path::Path, str::FromStr, time::Duration};

/// Outbox destination of the server that authenticated the session (the only one for now).
pub const AUTH_SERVER_DESTINATION: &str = "auth-server";

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    pool: SqlitePool,
}

const SESSION_COLUMNS: &str = "id, acct_session_id, organization_id, username, client_ip, server_index, server_name, \
     classes, reply_message, started_at, refreshed_at, window_ms, limit_at, expires_at, interim_interval, state, stopped_at, terminate_cause";

fn session_from_row(row: &SqliteRow) -> Result<AccessSessionRecord, StorageError> {
    let classes: Vec<u8> = row.try_get("classes")?;
    let state: String = row.try_get("state")?;
    Ok(AccessSessionRecord {
        id: row.try_get("id")?,
        acct_session_id: row.try_get("acct_session_id")?,
        organization_id: row.try_get("organization_id")?,
        username: row.try_get("username")?,
        client_ip: row.try_get("client_ip")?,
        server_index: row.try_get("server_index")?,
        server_name: row.try_get("server_name")?,
        classes: decode_classes(&classes)?,
        reply_message: row.try_get("reply_message")?,
        started_at: row.try_get("started_at")?,
        refreshed_at: row.try_get("refreshed_at")?,
        window_ms: row.try_get("window_ms")?,
        limit_at: row.try_get("limit_at")?,
        expires_at: row.try_get("expires_at")?,
        interim_interval: row.try_get("interim_interval")?,
        active: state == "active",
        stopped_at: row.try_get("stopped_at")?,
        terminate_cause: row.try_get("terminate_cause")?,
    })
}

/// The database holds the organizations' shared secrets: only its owner may read it (and its
/// WAL and shared-memory files). Best effort: a failure is logged, not fatal.
fn restrict_to_owner(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = std::path::PathBuf::from(file);
            if !file.exists() {
                continue;
            }
            if let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(file = %file.display(), error = %e, "cannot make the database readable by its owner only");
            }
        }
    }
}

/// A pending outbox row (alias `o`): neither delivered nor dead-lettered.
const PENDING_O: &str = "o.delivered_at IS NULL AND o.dead_at IS NULL";
/// Row `o` is first in line: no earlier pending row of its session and destination.
const HEAD_O: &str = "NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = o.access_session_id \
     AND p.destination = o.destination AND p.id < o.id AND p.delivered_at IS NULL AND p.dead_at IS NULL)";
const OUTBOX_COLUMNS: &str =
    "id, access_session_id, status_type, event_at, session_time_secs, terminate_cause, attempts, transmissions";

fn outbox_entry_from_row(row: &SqliteRow) -> Result<OutboxEntry, StorageError> {
    Ok(OutboxEntry {
        id: row.try_get("id")?,
        status_type: row.try_get("status_type")?,
        attempts: row.try_get("attempts")?,
        transmissions: row.try_get("transmissions")?,
        delivered_at: row.try_get("delivered_at")?,
        dead_at: row.try_get("dead_at")?,
        dead_reason: row.try_get("dead_reason")?,
        last_error: row.try_get("last_error")?,
    })
}

fn outbox_from_row(row: &SqliteRow) -> Result<OutboxRow, StorageError> {
    Ok(OutboxRow {
        id: row.try_get("id")?,
        access_session_id: row.try_get("access_session_id")?,
        status_type: row.try_get("status_type")?,
        event_at: row.try_get("event_at")?,
        session_time_secs: row.try_get("session_time_secs")?,
        terminate_cause: row.try_get("terminate_cause")?,
        attempts: row.try_get("attempts")?,
        transmissions: row.try_get("transmissions")?,
    })
}

/// A session stopped by a transaction, with its Stop queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Session row id.
    pub id: i64,
    /// When it was stopped as of (its deadline; a preemption: the new login's start), unix ms.
    pub due_at: i64,
    /// Acct-Terminate-Cause queued.
    pub cause: u32,
}

impl Storage {
    /// Opens (creating if needed) the database file and runs migrations.
    pub async fn open(path: &Path) -> Result<Storage, StorageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Database(sqlx::Error::Io(e)))?;
        }
        let url = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        restrict_to_owner(path);
        let storage = Storage { pool };
        storage.index_classes_of_older_sessions().await?;
        Ok(storage)
    }

    /// A 32-byte key the portal keeps for itself under `name`, created on first use and the
    /// same for every process on this database.
    pub async fn app_secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        let fresh: [u8; 32] = rand::random();
        sqlx::query(
            "INSERT INTO app_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(fresh.as_slice())
        .bind(crate::access_session::now_ms())
        .execute(&self.pool)
        .await?;
        let stored: Vec<u8> = sqlx::query_scalar("SELECT value FROM app_secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        stored
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("app secret `{name}` is not 32 bytes")))
    }

    /// Stored web sessions (tests and operators: anonymous visitors must not add any).
    pub async fn web_session_count(&self) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tower_sessions")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Indexes the Class values of active sessions opened before the index existed (once; a
    /// no-op afterwards).
    async fn index_classes_of_older_sessions(&self) -> Result<(), StorageError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT id, classes FROM access_sessions s WHERE state = 'active' AND length(classes) > 0 \
             AND NOT EXISTS (SELECT 1 FROM session_classes c WHERE c.access_session_id = s.id)",
        )
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (id, blob) in &rows {
            for class in decode_classes(blob)? {
                sqlx::query("INSERT INTO session_classes (access_session_id, class) VALUES (?, ?)")
                    .bind(id)
                    .bind(class)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The pool, for the web-session store that shares the database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StorageError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Creates an access session with its Start queued. An active session of the same
    /// (organization, client IP) is stopped first (Port-Preempted), in the same transaction.
    pub async fn open_session(
        &self,
        new: &NewAccessSession,
    ) -> Result<(i64, Vec<Stopped>), StorageError> {
        let mut tx = self.begin().await?;
        // Defence in depth against a disable racing the login: writers are serialized, so
        // either this session commits first (and the disable's stop job sees it) or the flag
        // is already off here and nothing is created.
        let active: Option<bool> =
            sqlx::query_scalar("SELECT is_active FROM organizations WHERE id = ?")
                .bind(&new.organization_id)
                .fetch_optional(&mut *tx)
                .await?;
        if active != Some(true) {
            return Err(StorageError::OrganizationDisabled);
        }
        let previous: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM access_sessions WHERE organization_id = ? AND client_ip = ? AND state = 'active'",
        )
        .bind(&new.organization_id)
        .bind(&new.client_ip)
        .fetch_all(&mut *tx)
        .await?;
        let mut stopped = Vec::new();
        for id in previous {
            if stop_in(
                &mut tx,
                id,
                terminate_cause::PORT_PREEMPTED,
                new.started_at,
                None,
            )
            .await?
            {
                stopped.push(Stopped {
                    id,
                    due_at: new.started_at,
                    cause: terminate_cause::PORT_PREEMPTED,
                });
            }
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO access_sessions (acct_session_id, organization_id, username, client_ip, server_index, server_name, \
             classes, reply_message, started_at, refreshed_at, window_ms, limit_at, expires_at, interim_interval, next_interim_at, state) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active') RETURNING id",
        )
        .bind(&new.acct_session_id)
        .bind(&new.organization_id)
        .bind(&new.username)
        .bind(&new.client_ip)
        .bind(new.server_index)
        .bind(&new.server_name)
        .bind(encode_classes(&new.classes))
        .bind(&new.reply_message)
        .bind(new.started_at)
        .bind(new.started_at)
        .bind(new.window_ms)
        .bind(new.limit_at)
        .bind(new.expires_at)
        .bind(new.interim_interval)
        .bind(new.interim_interval.map(|secs| new.started_at + secs * 1000))
        .fetch_one(&mut *tx)
        .await?;
        for class in &new.classes {
            sqlx::query("INSERT INTO session_classes (access_session_id, class) VALUES (?, ?)")
                .bind(id)
                .bind(class)
                .execute(&mut *tx)
                .await?;
        }
        enqueue(&mut tx, id, status_type::START, new.started_at, None, None).await?;
        super::organizations::audit_in(
            &mut tx,
            new.started_at,
            "user",
            "login.accepted",
            Some(&new.organization_id),
            &serde_json::json!({
                "username": new.username,
                "client_ip": new.client_ip,
                "acct_session_id": new.acct_session_id,
                "server": new.server_name,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok((id, stopped))
    }

    /// Loads a session by id.
    pub async fn session(&self, id: i64) -> Result<Option<AccessSessionRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM access_sessions WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Moves an active session's deadline to `expires_at` (refreshed at `now`) and queues an
    /// Interim-Update. Returns the updated session, or None if it is no longer active.
    pub async fn refresh_session(
        &self,
        id: i64,
        now: i64,
        expires_at: i64,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE access_sessions SET refreshed_at = ?, expires_at = ? WHERE id = ? AND state = 'active' AND expires_at > ? \
             RETURNING started_at",
        )
        .bind(now)
        .bind(expires_at)
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = updated else {
            return Ok(None);
        };
        let started_at: i64 = row.try_get("started_at")?;
        enqueue_interim(&mut tx, id, started_at, now).await?;
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM access_sessions WHERE id = ?"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let session = session_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(session))
    }

    /// Stops an active session at `event_at` with `cause` and queues its Stop. False if it was
    /// not active (already stopped: nothing is queued twice).
    pub async fn stop_session(
        &self,
        id: i64,
        cause: u32,
        event_at: i64,
    ) -> Result<bool, StorageError> {
        let mut tx = self.begin().await?;
        let stopped = stop_in(&mut tx, id, cause, event_at, None).await?;
        tx.commit().await?;
        Ok(stopped)
    }

    /// Stops every active session whose deadline is at or before `now`. Each is stopped at its
    /// own deadline, with Session-Timeout when the limit was reached, else Idle-Timeout.
    pub async fn stop_due_sessions(&self, now: i64) -> Result<Vec<Stopped>, StorageError> {
        let mut tx = self.begin().await?;
        let due = sqlx::query(
            "SELECT id, expires_at, limit_at FROM access_sessions WHERE state = 'active' AND expires_at <= ? ORDER BY expires_at",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut stopped = Vec::new();
        for row in due {
            let id: i64 = row.try_get("id")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            let limit_at: Option<i64> = row.try_get("limit_at")?;
            let cause = if limit_at.is_some_and(|l| l <= expires_at) {
                terminate_cause::SESSION_TIMEOUT
            } else {
                terminate_cause::IDLE_TIMEOUT
            };
            if stop_in(&mut tx, id, cause, expires_at, Some(now)).await? {
                stopped.push(Stopped {
                    id,
                    due_at: expires_at,
                    cause,
                });
            }
        }
        tx.commit().await?;
        Ok(stopped)
    }

    /// Queues an Interim-Update for every active session whose periodic update (from
    /// Acct-Interim-Interval) is due at `now`, and schedules the next one. Returns how many.
    pub async fn queue_due_interims(&self, now: i64) -> Result<usize, StorageError> {
        let mut tx = self.begin().await?;
        let due = sqlx::query(
            "SELECT id, started_at, interim_interval FROM access_sessions \
             WHERE state = 'active' AND next_interim_at <= ? AND expires_at > ?",
        )
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for row in &due {
            let id: i64 = row.try_get("id")?;
            let started_at: i64 = row.try_get("started_at")?;
            let interval: i64 = row.try_get("interim_interval")?;
            enqueue_interim(&mut tx, id, started_at, now).await?;
            sqlx::query("UPDATE access_sessions SET next_interim_at = ? WHERE id = ?")
                .bind(now + interval * 1000)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(due.len())
    }

    /// When the next periodic Interim-Update is due.
    pub async fn next_interim(&self) -> Result<Option<i64>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_interim_at) FROM access_sessions WHERE state = 'active'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The active, not yet due session of a client in an organization.
    pub async fn active_session_for_client(
        &self,
        organization_id: &str,
        client_ip: &str,
        now: i64,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM access_sessions \
             WHERE organization_id = ? AND client_ip = ? AND state = 'active' AND expires_at > ?"
        ))
        .bind(organization_id)
        .bind(client_ip)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Active sessions a Dynamic Authorization request names.
    pub async fn find_active_sessions(
        &self,
        wanted: &SessionMatch,
    ) -> Result<Vec<AccessSessionRecord>, StorageError> {
        let base = format!("SELECT {SESSION_COLUMNS} FROM access_sessions WHERE state = 'active'");
        let rows = match wanted {
            SessionMatch::AcctSessionId(id) => {
                sqlx::query(&format!("{base} AND acct_session_id = ?"))
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
            }
            SessionMatch::UserAndAddress {
                username,
                client_ip,
            } => {
                sqlx::query(&format!("{base} AND username = ? AND client_ip = ?"))
                    .bind(username)
                    .bind(client_ip)
                    .fetch_all(&self.pool)
                    .await?
            }
            SessionMatch::Class(class) => {
                sqlx::query(&format!(
                "{base} AND id IN (SELECT access_session_id FROM session_classes WHERE class = ?)"
            ))
                .bind(class)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(session_from_row).collect()
    }

    /// Active sessions, of one organization or all, oldest first (operator listing).
    pub async fn active_sessions_of(
        &self,
        organization_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccessSessionRecord>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM access_sessions WHERE state = 'active' \
             AND (? IS NULL OR organization_id = ?) ORDER BY id LIMIT ?"
        ))
        .bind(organization_id)
        .bind(organization_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// A session by its Acct-Session-Id.
    pub async fn session_by_acct_id(
        &self,
        acct_session_id: &str,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM access_sessions WHERE acct_session_id = ?"
        ))
        .bind(acct_session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Earliest deadline of an active session.
    pub async fn next_expiry(&self) -> Result<Option<i64>, StorageError> {
        Ok(
            sqlx::query_scalar(
                "SELECT MIN(expires_at) FROM access_sessions WHERE state = 'active'",
            )
            .fetch_one(&self.pool)
            .await?,
        )
    }

    /// Number of active sessions.
    pub async fn active_sessions(&self) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM access_sessions WHERE state = 'active'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Claims up to `limit` due outbox rows, each the first pending row of its session (and
    /// destination), so a session's packets go out in order while different sessions' packets
    /// go out together. A claim lasts until `lease_until`; an expired claim can be taken again.
    pub async fn claim_due_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StorageError> {
        let rows = sqlx::query(&format!(
            "UPDATE accounting_outbox SET claimed_until = ?, attempts = attempts + 1 WHERE id IN ( \
               SELECT o.id FROM accounting_outbox o \
               WHERE {PENDING_O} AND o.next_attempt_at <= ? \
                 AND (o.claimed_until IS NULL OR o.claimed_until < ?) AND {HEAD_O} \
               ORDER BY o.next_attempt_at, o.id LIMIT ?) \
             RETURNING {OUTBOX_COLUMNS}"
        ))
        .bind(lease_until)
        .bind(now)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut rows = rows
            .iter()
            .map(outbox_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Claims a session's next pending row of `status_type` if it is first in line (used to
    /// send a Start, or a preempted session's Stop, at once inside the login request).
    pub async fn claim_session_outbox(
        &self,
        access_session_id: i64,
        status_type: u32,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<OutboxRow>, StorageError> {
        let row = sqlx::query(&format!(
            "UPDATE accounting_outbox SET claimed_until = ?, attempts = attempts + 1 WHERE id = ( \
               SELECT o.id FROM accounting_outbox o \
               WHERE o.access_session_id = ? AND o.status_type = ? AND {PENDING_O} \
                 AND (o.claimed_until IS NULL OR o.claimed_until < ?) AND {HEAD_O} \
               ORDER BY o.id LIMIT 1) \
             RETURNING {OUTBOX_COLUMNS}"
        ))
        .bind(lease_until)
        .bind(access_session_id)
        .bind(status_type)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(outbox_from_row).transpose()
    }

    /// Releases every claim (at start-up: claims held by a previous process of this database
    /// are void; their rows are sent again, idempotent by Acct-Session-Id and status type).
    pub async fn release_outbox_claims(&self) -> Result<u64, StorageError> {
        Ok(sqlx::query(
            "UPDATE accounting_outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL AND delivered_at IS NULL",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Marks a claimed row delivered.
    pub async fn mark_delivered(&self, id: i64, now: i64) -> Result<(), StorageError> {
        sqlx::query("UPDATE accounting_outbox SET delivered_at = ?, claimed_until = NULL, last_error = NULL, \
                     transmissions = transmissions + 1 WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Releases a claimed row for a retry at `next_attempt_at`, recording why it failed and
    /// whether a packet went out this time.
    pub async fn mark_failed(
        &self,
        id: i64,
        next_attempt_at: i64,
        error: &str,
        transmitted: bool,
    ) -> Result<(), StorageError> {
        sqlx::query("UPDATE accounting_outbox SET next_attempt_at = ?, claimed_until = NULL, last_error = ?, \
                     transmissions = transmissions + ? WHERE id = ?")
            .bind(next_attempt_at)
            .bind(error)
            .bind(i64::from(transmitted))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes a row that can never be sent, with the reason, so it stops blocking its session's
    /// later rows. With `cascade`, the session's later pending rows are closed too ("the Start
    /// was never sent", so no Interim or Stop may follow it), and an active session is ended
    /// without a Stop: it never existed for the server.
    pub async fn dead_letter(
        &self,
        id: i64,
        now: i64,
        reason: &str,
        cascade: bool,
    ) -> Result<(), StorageError> {
        let mut tx = self.begin().await?;
        dead_letter_in(&mut tx, id, now, reason, cascade).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rolls back a session whose Start never went on the wire and is not being sent right now
    /// (login gave up on it): the Start and everything behind it are dead-lettered with
    /// `reason` and the session ends without a Stop. False (nothing changed) if the Start was
    /// transmitted, delivered, or is claimed — then the Stop must follow it as usual.
    pub async fn rollback_unsent_start(
        &self,
        access_session_id: i64,
        now: i64,
        reason: &str,
    ) -> Result<bool, StorageError> {
        let mut tx = self.begin().await?;
        let start: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM accounting_outbox WHERE access_session_id = ? AND status_type = ? \
             AND delivered_at IS NULL AND dead_at IS NULL AND transmissions = 0 AND claimed_until IS NULL",
        )
        .bind(access_session_id)
        .bind(status_type::START)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = start else {
            return Ok(false);
        };
        dead_letter_in(&mut tx, id, now, reason, true).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Pending rows of `access_session_id`, oldest first (tests, CLI).
    pub async fn session_outbox(
        &self,
        access_session_id: i64,
    ) -> Result<Vec<OutboxEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT id, status_type, attempts, transmissions, delivered_at, dead_at, dead_reason, last_error \
             FROM accounting_outbox WHERE access_session_id = ? ORDER BY id",
        )
        .bind(access_session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_entry_from_row).collect()
    }

    /// Dead-lettered rows, newest first (CLI `accounting dead-letters`).
    pub async fn dead_letters(
        &self,
        limit: i64,
    ) -> Result<Vec<(OutboxEntry, String, String)>, StorageError> {
        let rows = sqlx::query(
            "SELECT o.id, o.status_type, o.attempts, o.transmissions, o.delivered_at, o.dead_at, o.dead_reason, o.last_error, \
                    s.acct_session_id, s.organization_id \
             FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE o.dead_at IS NOT NULL ORDER BY o.dead_at DESC, o.id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    outbox_entry_from_row(row)?,
                    row.try_get("acct_session_id")?,
                    row.try_get("organization_id")?,
                ))
            })
            .collect()
    }

    /// Makes every pending row due now (a server came back: no need to wait out the backoff).
    pub async fn retry_pending_now(&self, now: i64) -> Result<u64, StorageError> {
        Ok(sqlx::query(&format!(
            "UPDATE accounting_outbox AS o SET next_attempt_at = ? WHERE {PENDING_O} AND o.next_attempt_at > ?"
        ))
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// When the next claimable row becomes due: only rows first in line for their session
    /// count (a row waiting behind an undelivered earlier row cannot be claimed, so its time
    /// must not wake anyone), and a claimed row counts from its lease end.
    pub async fn next_outbox_attempt(&self) -> Result<Option<i64>, StorageError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT MIN(MAX(o.next_attempt_at, COALESCE(o.claimed_until, 0))) FROM accounting_outbox o \
             WHERE {PENDING_O} AND {HEAD_O}"
        ))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Deletes accounting history and ended sessions older than `before` (unix ms): delivered
    /// or dead rows of sessions that ended before it, then those sessions. Returns the number of
    /// sessions removed. Pending rows and active sessions are never touched.
    pub async fn prune(&self, before: i64) -> Result<u64, StorageError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM accounting_outbox WHERE access_session_id IN ( \
               SELECT s.id FROM access_sessions s WHERE s.state = 'stopped' AND s.stopped_at < ? \
                 AND NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = s.id \
                                 AND p.delivered_at IS NULL AND p.dead_at IS NULL))",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query(
            "DELETE FROM access_sessions WHERE state = 'stopped' AND stopped_at < ? \
             AND NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = access_sessions.id)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(removed)
    }

    /// What the metrics show of the database at a scrape: active sessions per organization,
    /// undelivered accounting rows and the age of the oldest, dead letters kept.
    pub async fn metrics_snapshot(
        &self,
        now: i64,
    ) -> Result<crate::metrics::Snapshot, StorageError> {
        let active_sessions: Vec<(String, i64)> = sqlx::query_as(
            "SELECT organization_id, COUNT(*) FROM access_sessions WHERE state = 'active' GROUP BY organization_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let (backlog, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at) FROM accounting_outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        let dead_letters: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM accounting_outbox WHERE dead_at IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(crate::metrics::Snapshot {
            active_sessions,
            outbox_backlog: backlog,
            outbox_oldest: std::time::Duration::from_millis(
                oldest.map_or(0, |o| now.saturating_sub(o).max(0) as u64),
            ),
            dead_letters,
            ..Default::default()
        })
    }

    /// Undelivered rows (backlog).
    pub async fn outbox_backlog(&self) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounting_outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

/// See [`Storage::dead_letter`].
async fn dead_letter_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: i64,
    now: i64,
    reason: &str,
    cascade: bool,
) -> Result<(), StorageError> {
    let row = sqlx::query(
        "UPDATE accounting_outbox SET dead_at = ?, dead_reason = ?, claimed_until = NULL \
         WHERE id = ? AND delivered_at IS NULL RETURNING access_session_id",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    if let (Some(row), true) = (row, cascade) {
        let session: i64 = row.try_get("access_session_id")?;
        sqlx::query(
            "UPDATE accounting_outbox SET dead_at = ?, dead_reason = 'its Start was never sent', claimed_until = NULL \
             WHERE access_session_id = ? AND id > ? AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(now)
        .bind(session)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE access_sessions SET state = 'stopped', stopped_at = ?, terminate_cause = ? \
             WHERE id = ? AND state = 'active'",
        )
        .bind(now)
        .bind(terminate_cause::NAS_ERROR)
        .bind(session)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Stops `id` if active and queues its Stop (Acct-Session-Time up to `event_at`). `due_by` makes
/// the stop conditional on the deadline still being due (a concurrent refresh wins).
async fn stop_in(
    tx: &mut Transaction<'static, Sqlite>,
    id: i64,
    cause: u32,
    event_at: i64,
    due_by: Option<i64>,
) -> Result<bool, StorageError> {
    let row = sqlx::query(
        "UPDATE access_sessions SET state = 'stopped', stopped_at = ?, terminate_cause = ? \
         WHERE id = ? AND state = 'active' AND (? IS NULL OR expires_at <= ?) \
         RETURNING started_at, organization_id, username, client_ip, acct_session_id",
    )
    .bind(event_at)
    .bind(cause)
    .bind(id)
    .bind(due_by)
    .bind(due_by)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let started_at: i64 = row.try_get("started_at")?;
    let session_time = (event_at - started_at).max(0) / 1000;
    let organization_id: String = row.try_get("organization_id")?;
    super::organizations::audit_in(
        tx,
        event_at,
        "system",
        "session.end",
        Some(&organization_id),
        &serde_json::json!({
            "acct_session_id": row.try_get::<String, _>("acct_session_id")?,
            "username": row.try_get::<String, _>("username")?,
            "client_ip": row.try_get::<String, _>("client_ip")?,
            "terminate_cause": cause,
            "session_time_s": session_time,
        }),
    )
    .await?;
    enqueue(
        tx,
        id,
        status_type::STOP,
        event_at,
        Some(session_time),
        Some(cause),
    )
    .await?;
    Ok(true)
}

/// Queues an Interim-Update at `now` with the session time since `started_at`.
async fn enqueue_interim(
    tx: &mut Transaction<'static, Sqlite>,
    access_session_id: i64,
    started_at: i64,
    now: i64,
) -> Result<(), StorageError> {
    // Coalesce: an Interim-Update not yet on its way is superseded by this newer one (an outage
    // must not pile up one row per refresh or per interval).
    sqlx::query(
        "DELETE FROM accounting_outbox WHERE access_session_id = ? AND status_type = ? \
         AND delivered_at IS NULL AND dead_at IS NULL AND claimed_until IS NULL",
    )
    .bind(access_session_id)
    .bind(status_type::INTERIM_UPDATE)
    .execute(&mut **tx)
    .await?;
    let session_time = Some((now - started_at) / 1000);
    enqueue(
        tx,
        access_session_id,
        status_type::INTERIM_UPDATE,
        now,
        session_time,
        None,
    )
    .await
}

async fn enqueue(
    tx: &mut Transaction<'static, Sqlite>,
    access_session_id: i64,
    status_type: u32,
    event_at: i64,
    session_time_secs: Option<i64>,
    cause: Option<u32>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, session_time_secs, \
         terminate_cause, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(access_session_id)
    .bind(AUTH_SERVER_DESTINATION)
    .bind(status_type)
    .bind(event_at)
    .bind(session_time_secs)
    .bind(cause)
    .bind(event_at)
    .bind(event_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Storage {
    /// Whether a session's packet of `status_type` has been acknowledged.
    pub async fn outbox_delivered(
        &self,
        access_session_id: i64,
        status_type: u32,
    ) -> Result<bool, StorageError> {
        let delivered: Option<i64> = sqlx::query_scalar(
            "SELECT delivered_at FROM accounting_outbox WHERE access_session_id = ? AND status_type = ? AND dead_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(access_session_id)
        .bind(status_type)
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        Ok(delivered.is_some())
    }
}
