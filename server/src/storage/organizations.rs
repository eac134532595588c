//! The organization store: organizations with their settings (the run-time truth), the global
//! revision other processes poll, durable organization jobs, and the audit log.
//!
//! Written once for both backends ([`OrganizationStore`] for every [`OrgBackend`]): the
//! statements are the same SQL on SQLite and PostgreSQL (both read `$1`-style parameters), run
//! through [`OrgSql`]. A backend supplies only what differs — how a change's transaction takes
//! its turn, how other processes hear of a change, job claims on a shared database, and the
//! SQLite engine's fast paths.

use super::{GiveUp, GivenUp, OrganizationStore, StorageError, Termination};
use sqlx::{postgres::PgRow, sqlite::SqliteRow, Database, Transaction};
use std::future::Future;

/// An organization as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredOrganization {
    /// Slug (stable id).
    pub id: String,
    /// Display name.
    pub name: String,
    /// False = disabled.
    #[sqlx(rename = "is_active")]
    pub active: bool,
    /// Settings as JSON (secrets included: never shown).
    pub settings: Option<String>,
    /// Bumped by every change of this organization.
    pub revision: i64,
    /// Listed in the configuration at the last start-up.
    pub from_config: bool,
    /// When this organization was made (unix ms; None for one stored before this was kept):
    /// one deleted and made again under its id is another organization.
    pub created_at: Option<i64>,
}

/// The servers of stored settings as an audit entry names them: name, address and ports
/// (never a secret).
fn servers_at(settings_json: &str) -> serde_json::Value {
    let settings: serde_json::Value = serde_json::from_str(settings_json).unwrap_or_default();
    let servers = settings
        .get("servers")
        .and_then(serde_json::Value::as_array);
    servers
        .into_iter()
        .flatten()
        .map(|server| {
            let field = |key: &str| server.get(key).cloned().unwrap_or_default();
            serde_json::json!({
                "name": field("name"), "address": field("address"),
                "auth_port": field("auth_port"), "acct_port": field("acct_port"),
            })
        })
        .collect()
}

/// The keys that differ between two organizations' settings (JSON), as `settings.key`, a
/// server's as `settings.servers.{name}.key` (servers are told apart by name; one added or
/// removed is `settings.servers.{name}`). Keys only, never values: secrets are among them.
pub fn settings_changes(before: &str, after: &str) -> Vec<String> {
    use serde_json::{Map, Value};
    let parse = |text: &str| match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    fn diff(prefix: &str, before: &Map<String, Value>, after: &Map<String, Value>) -> Vec<String> {
        let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| format!("{prefix}.{k}"))
            .collect()
    }
    let (before, after) = (parse(before), parse(after));
    let mut changed = Vec::new();
    for key in diff("settings", &before, &after) {
        if key != "settings.servers" {
            changed.push(key);
            continue;
        }
        let by_name = |settings: &Map<String, Value>| -> Vec<(String, Map<String, Value>)> {
            settings
                .get("servers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let name = s.get("name")?.as_str()?.to_string();
                    Some((name, s.as_object()?.clone()))
                })
                .collect()
        };
        let (old, new) = (by_name(&before), by_name(&after));
        let find = |list: &[(String, Map<String, Value>)], name: &str| {
            list.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone())
        };
        let mut names: Vec<&String> = old.iter().chain(new.iter()).map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        let mut servers = Vec::new();
        for name in names {
            let prefix = format!("settings.servers.{name}");
            match (find(&old, name), find(&new, name)) {
                (Some(o), Some(n)) => servers.extend(diff(&prefix, &o, &n)),
                _ => servers.push(prefix),
            }
        }
        servers.sort();
        servers.dedup();
        // Only the order changed (which server is tried first): the list as a whole.
        changed.extend(if servers.is_empty() {
            vec![key]
        } else {
            servers
        });
    }
    changed
}

/// What seeding one organization from the configuration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedOutcome {
    /// It was new.
    Created,
    /// It existed; these parts changed: `name`, `enabled`, `disabled`, and each setting by its
    /// key (`settings.login_timeout`, `settings.servers.primary.timeout`; never a value).
    Updated(Vec<String>),
    /// Nothing changed.
    Unchanged,
    /// Not created: the database holds it under this id in other letters (made since the file
    /// was checked, by another replica's CLI or API); ids that differ only in case count as one.
    OtherCase(String),
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
    /// Updates only: servers the change removes, renames or sends accounting elsewhere, which
    /// no session may need when it commits — checked again inside its transaction, after the
    /// row is written (a sign-in's session write, which reads the row `FOR SHARE`, is then
    /// either seen here or sees the new revision): [`UpdateOutcome::ServerNeeded`].
    pub servers_freed: &'a [String],
    /// With `servers_freed`: Stop copies made at this time or later count (older ones are
    /// given up at their next attempt anyway).
    pub copies_since: i64,
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
    /// A server of `servers_freed` is needed by a session or a Stop copy (one signed in while
    /// the change was computed): nothing was written.
    ServerNeeded,
}

/// What enabling or disabling an organization did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveChange {
    /// The flag changed (false: it was so already).
    pub changed: bool,
    /// An enable closed a disable's stop not yet done: what it left.
    pub skipped_stop: Option<SkippedStop>,
}

/// A disable's stop of its sessions closed by an enable before it was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedStop {
    /// Sessions it had stopped already (Admin-Reset).
    pub stopped_before: i64,
    /// Open sessions it left that keep running.
    pub open_sessions: i64,
    /// Open sessions it left that an operator's termination, asked for earlier and not made
    /// yet, still stops (black-box tester M's D2: counted among those that keep running).
    pub terminations_pending: i64,
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
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OrganizationJob {
    /// Row id.
    pub id: i64,
    /// Organization it is about.
    pub organization_id: String,
    /// `stop_sessions` or `terminate_session`.
    pub kind: String,
    /// The session of a `terminate_session` job.
    pub access_session_id: Option<i64>,
    /// When it was asked for (Unix ms): the time its Stops say the sessions ended, however
    /// much later a portal runs it (none may have been running).
    pub created_at: i64,
    /// The sessions its runs before this claim stopped (a run cut short, a replica that
    /// stalled): the job's outcome counts them with this run's.
    pub stopped: i64,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
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

/// Which audit entries to read ([`OrganizationStore::audit_entries`]): the newest `limit` of
/// those that match, oldest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// How many at most.
    pub limit: i64,
    /// Of this organization only: its id in any letter case (as it is stored now, or as it
    /// was stored, written the same way, for one deleted since).
    pub organization: Option<String>,
    /// Of this action only (`org.disable`, …).
    pub action: Option<String>,
    /// Older than this entry (its `id`): the page before one read.
    pub before: Option<i64>,
}

/// One audit entry: at, actor, action, organization id, detail (JSON).
pub(crate) const AUDIT_INSERT: &str =
    "INSERT INTO audit_log (at, actor, action, organization_id, detail) VALUES ($1, $2, $3, $4, $5)";

/// One audit entry to append (read back as [`AuditEntry`]).
#[derive(Clone, Debug)]
pub struct Audit<'a> {
    /// Unix ms.
    pub at: i64,
    /// Who: `config`, `cli:<user>`, `user`, `system`, …
    pub actor: &'a str,
    /// What: `org.create`, `org.disable`, `guard.denied`, …
    pub action: &'a str,
    /// Organization concerned, if any.
    pub organization_id: Option<&'a str>,
    /// Details (never secrets).
    pub detail: serde_json::Value,
}

impl Audit<'_> {
    /// The entry of an accepted login, written with its session (both backends).
    pub(crate) fn login_accepted(new: &super::NewAccessSession) -> Audit<'_> {
        let mut detail = serde_json::json!({
            "username": new.username,
            "client_ip": new.client_ip,
            "acct_session_id": new.acct_session_id,
            "server": new.server_name,
        });
        if let Some(typed) = &new.typed_username {
            detail["typed_username"] = typed.as_str().into();
        }
        Audit {
            at: new.started_at,
            actor: "user",
            action: "login.accepted",
            organization_id: Some(&new.organization_id),
            detail,
        }
    }
}

/// Who ended a session, for its `session.end` entry: the user who disconnected, or the portal
/// (expiry, preemption, a RADIUS server's Disconnect-Request, an operator's request — which
/// has an entry of its own naming the operator).
pub(crate) fn session_end_actor(cause: u32) -> &'static str {
    if cause == crate::radius::terminate_cause::USER_REQUEST {
        "user"
    } else {
        "system"
    }
}

/// The audit entry of a change made through the SQLite engine, written in that write.
pub(crate) fn audit_on(conn: &rusqlite::Connection, entry: &Audit<'_>) -> Result<(), StorageError> {
    conn.prepare_cached(AUDIT_INSERT)?
        .execute(rusqlite::params![
            entry.at,
            entry.actor,
            entry.action,
            entry.organization_id,
            entry.detail.to_string()
        ])?;
    Ok(())
}

/// The audit entry of a change, written on `c` (in the change's transaction).
pub(crate) async fn audit_in(c: &mut impl OrgSql, entry: &Audit<'_>) -> Result<(), StorageError> {
    let detail = entry.detail.to_string();
    c.execute(
        AUDIT_INSERT,
        &[
            Arg::Int(entry.at),
            Arg::Text(entry.actor),
            Arg::Text(entry.action),
            Arg::MaybeText(entry.organization_id),
            Arg::Text(&detail),
        ],
    )
    .await?;
    Ok(())
}

/// A deleted organization's audit detail with its dead-lettered rows (Acct-Session-Id, status
/// type, reason): they are the only record of accounting that was never sent.
fn with_dead_letters(
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

/// A value bound to one of the organization store's statements.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// An integer (ids, times, revisions).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    MaybeText(Option<&'a str>),
    /// A flag (`is_active`: a boolean in PostgreSQL, 0/1 in SQLite).
    Flag(bool),
}

/// What a statement's rows decode into on either backend (a struct deriving `sqlx::FromRow`,
/// or a tuple).
pub(crate) trait Decoded:
    for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Decoded for T where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin
{
}

/// A connection of either backend, as the organization store runs its statements on it.
pub(crate) trait OrgSql: Send {
    /// Runs a statement; how many rows it changed.
    fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// Every row of a query.
    fn fetch_all<T: Decoded>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<T>, StorageError>> + Send;
    /// The first row of a query, if any.
    fn fetch_optional<T: Decoded>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Option<T>, StorageError>> + Send;
}

/// A write transaction of one organization change.
pub(crate) struct OrgTx<DB: Database> {
    tx: Transaction<'static, DB>,
    /// SQLite: the engine's write gate, held until the transaction ends.
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<DB: Database> OrgTx<DB> {
    /// A change in `tx`, holding `gate` (if any) until it ends.
    pub(crate) fn new(
        tx: Transaction<'static, DB>,
        gate: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Self {
        OrgTx { tx, _gate: gate }
    }
}

/// A change's transaction: its connection, and its commit (dropped without: rolled back).
pub(crate) trait Change: Send {
    /// The backend's connection.
    type Conn: OrgSql;
    /// The transaction's connection.
    fn conn(&mut self) -> &mut Self::Conn;
    /// Commits the change.
    fn commit(self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// The values of `args`, encoded for one backend.
fn arguments<'q, A>(args: &[Arg<'q>]) -> Result<A, StorageError>
where
    A: sqlx::Arguments<'q>,
    i64: sqlx::Encode<'q, A::Database> + sqlx::Type<A::Database>,
    &'q str: sqlx::Encode<'q, A::Database> + sqlx::Type<A::Database>,
    Option<&'q str>: sqlx::Encode<'q, A::Database> + sqlx::Type<A::Database>,
    bool: sqlx::Encode<'q, A::Database> + sqlx::Type<A::Database>,
{
    let mut arguments = A::default();
    for arg in args {
        match *arg {
            Arg::Int(v) => arguments.add(v),
            Arg::Text(v) => arguments.add(v),
            Arg::MaybeText(v) => arguments.add(v),
            Arg::Flag(v) => arguments.add(v),
        }
        .map_err(|e| StorageError::Database(sqlx::Error::Encode(e)))?;
    }
    Ok(arguments)
}

/// How recently a server's acknowledgement of an organization's accounting makes its servers
/// not gone for good to `accounting give-up` (unless forced).
const ACKNOWLEDGED_LATELY_MS: i64 = 3_600_000;
/// How long a session's accounting must have waited, one of its rows tried and failed, before
/// `accounting give-up` takes it (a failure that passes is retried well within it).
pub const FAILING_FOR_MS: i64 = 5 * 60_000;

/// [`OrgSql`] on a backend's connection and [`Change`] on its transactions.
macro_rules! backend_sql {
    ($db:ty, $conn:ty, $arguments:ty) => {
        impl OrgSql for $conn {
            async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StorageError> {
                let arguments = arguments::<$arguments>(args)?;
                Ok(sqlx::query_with(sql, arguments)
                    .execute(self)
                    .await?
                    .rows_affected())
            }

            async fn fetch_all<T: Decoded>(
                &mut self,
                sql: &str,
                args: &[Arg<'_>],
            ) -> Result<Vec<T>, StorageError> {
                let arguments = arguments::<$arguments>(args)?;
                Ok(sqlx::query_as_with(sql, arguments).fetch_all(self).await?)
            }

            async fn fetch_optional<T: Decoded>(
                &mut self,
                sql: &str,
                args: &[Arg<'_>],
            ) -> Result<Option<T>, StorageError> {
                let arguments = arguments::<$arguments>(args)?;
                Ok(sqlx::query_as_with(sql, arguments)
                    .fetch_optional(self)
                    .await?)
            }
        }

        impl Change for OrgTx<$db> {
            type Conn = $conn;

            fn conn(&mut self) -> &mut $conn {
                &mut self.tx
            }

            async fn commit(self) -> Result<(), StorageError> {
                Ok(self.tx.commit().await?)
            }
        }
    };
}

backend_sql!(
    sqlx::Sqlite,
    sqlx::SqliteConnection,
    sqlx::sqlite::SqliteArguments<'_>
);
backend_sql!(
    sqlx::Postgres,
    sqlx::PgConnection,
    sqlx::postgres::PgArguments
);

/// What differs between the backends of the organization store.
pub(crate) trait OrgBackend: Send + Sync {
    /// The backend's connection.
    type Conn: OrgSql;
    /// A change's transaction.
    type Change: Change<Conn = Self::Conn>;
    /// A connection from the pool, for reads.
    type Reader: std::ops::DerefMut<Target = Self::Conn> + Send;
    /// What a read that the change then writes appends to lock the row (PostgreSQL:
    /// `FOR UPDATE`, so that no login of the organization commits meanwhile; SQLite's write
    /// transaction already excludes every other writer).
    const LOCK_ROW: &'static str;

    /// Begins a change of organizations; they take turns (SQLite: the engine's write gate and
    /// `BEGIN IMMEDIATE`; PostgreSQL: also an advisory lock held until the transaction ends).
    fn begin_change(&self) -> impl Future<Output = Result<Self::Change, StorageError>> + Send;
    /// Begins a write that changes no organization (jobs, audit, configuration positions):
    /// on PostgreSQL without the organization lock, so that it never waits for a change.
    fn begin_write(&self) -> impl Future<Output = Result<Self::Change, StorageError>> + Send;
    /// A connection for reads.
    fn reader(&self) -> impl Future<Output = Result<Self::Reader, StorageError>> + Send;
    /// Tells the other processes on the database, when `c`'s transaction commits, that
    /// organizations or their jobs changed (PostgreSQL: NOTIFY; SQLite: one process, nothing).
    fn announce(&self, c: &mut Self::Conn)
        -> impl Future<Output = Result<(), StorageError>> + Send;
    /// On a database several processes share, the name this process claims jobs under
    /// (PostgreSQL); None where one process runs every job (SQLite).
    fn claimant(&self) -> Option<&str>;
    /// Whether an organization is active (the guard's authority, read on every login).
    fn read_active(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<bool>, StorageError>> + Send;
    /// Appends one audit entry on its own.
    fn audit_alone(
        &self,
        entry: &Audit<'_>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Bumps the global revision other processes compare, and tells them to look now.
async fn bump_revision<B: OrgBackend>(backend: &B, c: &mut B::Conn) -> Result<(), StorageError> {
    c.execute(
        "UPDATE organization_revision SET value = value + 1 WHERE id = 1",
        &[],
    )
    .await?;
    backend.announce(c).await
}

/// What [`set_active_in`] changed.
struct Flipped {
    /// An enable closed a disable's stop not yet done: what it left.
    skipped_stop: Option<SkippedStop>,
}

impl Flipped {
    /// Said once the change is committed (a rolled-back enable skipped nothing).
    fn log(&self, id: &str, actor: &str) {
        match self.skipped_stop {
            Some(SkippedStop {
                stopped_before: 0,
                open_sessions,
                terminations_pending,
            }) => tracing::warn!(
                organization = id,
                open_sessions,
                terminations_pending,
                actor,
                "organization enabled before its disable's stop was done: the stop is skipped, its open sessions keep running"
            ),
            Some(SkippedStop {
                stopped_before,
                open_sessions,
                terminations_pending,
            }) => tracing::warn!(
                organization = id,
                stopped_before,
                open_sessions,
                terminations_pending,
                actor,
                "organization enabled while its disable's stop was under way: the sessions it stopped stay stopped, the rest is skipped and keeps running"
            ),
            None => {}
        }
    }
}

/// Why organization `id` may not be deleted, if it may not: unknown, the configuration's, or
/// with open sessions or accounting not yet delivered. `lock`: appended to the read of its row
/// ([`OrgBackend::LOCK_ROW`] in a change).
async fn delete_refused<B: OrgBackend>(
    c: &mut B::Conn,
    id: &str,
    lock: &str,
) -> Result<Option<DeleteOutcome>, StorageError> {
    let row: Option<(bool,)> = c
        .fetch_optional(
            &format!("SELECT position IS NOT NULL FROM organizations WHERE id = $1{lock}"),
            &[Arg::Text(id)],
        )
        .await?;
    let Some((from_config,)) = row else {
        return Ok(Some(DeleteOutcome::NotFound));
    };
    if from_config {
        return Ok(Some(DeleteOutcome::FromConfig));
    }
    let counts: Option<(i64, i64)> = c
        .fetch_optional(
            "SELECT (SELECT COUNT(*) FROM access_sessions WHERE organization_id = $1 AND state = 'active'), \
             (SELECT COUNT(*) FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
              WHERE s.organization_id = $1 AND o.delivered_at IS NULL AND o.dead_at IS NULL)",
            &[Arg::Text(id)],
        )
        .await?;
    let (open_sessions, pending_accounting) = counts.unwrap_or((0, 0));
    Ok(
        (open_sessions > 0 || pending_accounting > 0).then_some(DeleteOutcome::Busy {
            open_sessions,
            pending_accounting,
        }),
    )
}

/// [`OrganizationStore::set_organization_active`] in one transaction; `retire`: the
/// organization is no longer the configuration's too ([`OrganizationStore::retire_from_config`]).
async fn change_active<B: OrgBackend>(
    store: &B,
    id: &str,
    (active, actor, now): (bool, &str, i64),
    retire: bool,
) -> Result<Option<ActiveChange>, StorageError> {
    let mut change = store.begin_change().await?;
    let c = change.conn();
    let exists: Option<(String,)> = c
        .fetch_optional(
            "SELECT id FROM organizations WHERE id = $1",
            &[Arg::Text(id)],
        )
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    // Why the file changed it (tester M's D4 of session 81: `config` alone did not say).
    let reason = retire.then_some("no longer listed in the configuration file");
    let flipped = set_active_in(store, c, id, (active, actor, now), reason).await?;
    if retire {
        c.execute(
            "UPDATE organizations SET position = NULL WHERE id = $1",
            &[Arg::Text(id)],
        )
        .await?;
    }
    change.commit().await?;
    if let Some(flipped) = &flipped {
        flipped.log(id, actor);
    }
    Ok(Some(ActiveChange {
        changed: flipped.is_some(),
        skipped_stop: flipped.and_then(|f| f.skipped_stop),
    }))
}

/// Flips the active flag in a change (row revision, global revision, audit entry — with
/// `reason` when given —, and on disable the stop job). None if it was already so.
async fn set_active_in<B: OrgBackend>(
    backend: &B,
    c: &mut B::Conn,
    id: &str,
    (active, actor, now): (bool, &str, i64),
    reason: Option<&str>,
) -> Result<Option<Flipped>, StorageError> {
    let changed = c
        .execute(
            "UPDATE organizations SET is_active = $1, revision = revision + 1, updated_at = $2 \
             WHERE id = $3 AND is_active != $1",
            &[Arg::Flag(active), Arg::Int(now), Arg::Text(id)],
        )
        .await?
        > 0;
    if !changed {
        return Ok(None);
    }
    bump_revision(backend, c).await?;
    let mut detail =
        serde_json::json!({ "before": { "active": !active }, "after": { "active": active } });
    if let Some(reason) = reason {
        detail["reason"] = reason.into();
    }
    let mut skipped_stop = None;
    if active {
        // A disable's stop not yet done is skipped (design.md: the organization keeps its
        // sessions), and closed now, also one a portal is running (its batches stop only while
        // their job is open; PostgreSQL: this waits for a batch under way): a later disable's
        // own job runs, dated by that disable. The enable's audit entry says so, and how many
        // sessions were stopped as the disable ends them already: by the stop's batches, and
        // otherwise meanwhile — a Disconnect-Request, an operator's termination, a deadline
        // passed, each dated the disable's moment (black-box tester M's D3 of session 81: only
        // the batches were counted).
        let stopped: Option<(i64, Option<i64>)> = c
            .fetch_optional(
                "SELECT COUNT(*), MIN(created_at) FROM organization_jobs \
                 WHERE organization_id = $1 AND kind = 'stop_sessions' AND done_at IS NULL",
                &[Arg::Text(id)],
            )
            .await?;
        let (pending, asked_at) = stopped.unwrap_or((0, None));
        if let (true, Some(asked_at)) = (pending > 0, asked_at) {
            let stopped_before: Option<(i64,)> = c
                .fetch_optional(
                    "SELECT COUNT(*) FROM access_sessions WHERE organization_id = $1 \
                     AND state = 'stopped' AND stopped_at >= $2",
                    &[Arg::Text(id), Arg::Int(asked_at)],
                )
                .await?;
            let stopped_before = stopped_before.map_or(0, |(n,)| n);
            let outcome = match stopped_before {
                0 => "skipped: re-enabled".to_string(),
                n => format!("stopped {n} sessions, the rest skipped: re-enabled"),
            };
            c.execute(
                "UPDATE organization_jobs SET done_at = $2, outcome = $3 \
                 WHERE organization_id = $1 AND kind = 'stop_sessions' AND done_at IS NULL",
                &[Arg::Text(id), Arg::Int(now), Arg::Text(&outcome)],
            )
            .await?;
            // The disable's jobs closed above: the stops still waiting are terminations.
            let open: Option<(i64, i64)> = c
                .fetch_optional(
                    concat!(
                        "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN ",
                        super::no_stop_pending!(),
                        " THEN 0 ELSE 1 END), 0) AS BIGINT) FROM access_sessions s \
                         WHERE s.organization_id = $1 AND s.state = 'active'"
                    ),
                    &[Arg::Text(id)],
                )
                .await?;
            let (open, terminations_pending) = open.unwrap_or((0, 0));
            let open_sessions = open - terminations_pending;
            detail["skipped_stop"] = serde_json::json!({
                "open_sessions": open_sessions,
                "terminations_pending": terminations_pending,
                "stopped_before": stopped_before,
            });
            skipped_stop = Some(SkippedStop {
                stopped_before,
                open_sessions,
                terminations_pending,
            });
        }
    } else {
        c.execute(
            "INSERT INTO organization_jobs (organization_id, kind, created_at) \
             VALUES ($1, 'stop_sessions', $2)",
            &[Arg::Text(id), Arg::Int(now)],
        )
        .await?;
    }
    audit_in(
        c,
        &Audit {
            at: now,
            actor,
            action: if active { "org.enable" } else { "org.disable" },
            organization_id: Some(id),
            detail,
        },
    )
    .await?;
    Ok(Some(Flipped { skipped_stop }))
}

/// See [`OrganizationStore::sessions_needing_server`].
async fn sessions_needing_in(
    c: &mut impl OrgSql,
    organization_id: &str,
    name: &str,
) -> Result<i64, StorageError> {
    let (count,): (i64,) = c
        .fetch_optional(
            "SELECT COUNT(*) FROM access_sessions s WHERE s.organization_id = $1 AND ( \
               (s.server_name = $2 AND (s.state = 'active' OR EXISTS (SELECT 1 FROM accounting_outbox o \
                  WHERE o.access_session_id = s.id AND o.destination = 'auth-server' \
                  AND o.delivered_at IS NULL AND o.dead_at IS NULL))) \
               OR (EXISTS (SELECT 1 FROM accounting_sent a WHERE a.access_session_id = s.id AND a.server = $2) \
                  AND (s.state = 'active' OR EXISTS (SELECT 1 FROM accounting_outbox o \
                    WHERE o.access_session_id = s.id AND o.destination = 'auth-server' AND o.status_type = 2 \
                    AND o.delivered_at IS NULL AND o.dead_at IS NULL))))",
            &[Arg::Text(organization_id), Arg::Text(name)],
        )
        .await?
        .unwrap_or((0,));
    Ok(count)
}

/// See [`OrganizationStore::copies_waiting_for`].
async fn copies_waiting_in(
    c: &mut impl OrgSql,
    organization_id: &str,
    name: &str,
    since: i64,
) -> Result<i64, StorageError> {
    let destination = format!("{}{name}", super::SERVER_DESTINATION_PREFIX);
    let (count,): (i64,) = c
        .fetch_optional(
            "SELECT COUNT(*) FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE s.organization_id = $1 AND o.destination = $2 AND o.created_at >= $3 \
             AND o.delivered_at IS NULL AND o.dead_at IS NULL",
            &[
                Arg::Text(organization_id),
                Arg::Text(&destination),
                Arg::Int(since),
            ],
        )
        .await?
        .unwrap_or((0,));
    Ok(count)
}

/// Columns of [`OrganizationJob`].
const JOB_COLUMNS: &str = "id, organization_id, kind, access_session_id, created_at, stopped";

/// The sessions an `accounting.give_up` audit entry names at most (the first, by id; more: it
/// says so, `sessions_listed`).
const GIVEN_UP_LISTED: usize = 1000;

impl<B: OrgBackend> OrganizationStore for B {
    async fn organizations(&self) -> Result<Vec<StoredOrganization>, StorageError> {
        self.reader()
            .await?
            .fetch_all(
                "SELECT id, name, is_active, settings, revision, position IS NOT NULL AS from_config, created_at \
                 FROM organizations ORDER BY position IS NULL, position, created_at, id",
                &[],
            )
            .await
    }

    async fn organization_revision(&self) -> Result<i64, StorageError> {
        let (revision,): (i64,) = self
            .reader()
            .await?
            .fetch_optional("SELECT value FROM organization_revision WHERE id = 1", &[])
            .await?
            .ok_or_else(|| StorageError::Corrupt("the organization revision is missing".into()))?;
        Ok(revision)
    }

    async fn organization_active(&self, id: &str) -> Result<Option<bool>, StorageError> {
        self.read_active(id).await
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
        let mut change = self.begin_change().await?;
        let c = change.conn();
        let existing: Option<(String, Option<String>)> = c
            .fetch_optional(
                "SELECT name, settings FROM organizations WHERE id = $1",
                &[Arg::Text(id)],
            )
            .await?;
        let mut flipped = None;
        let outcome = match existing {
            None => {
                // Changes run one at a time (`begin_change`): looked at again in this write, so
                // one made in other letters since the start-up's check is found.
                let ids: Vec<(String,)> = c.fetch_all("SELECT id FROM organizations", &[]).await?;
                if let Some((other,)) = ids
                    .into_iter()
                    .find(|(other,)| other.eq_ignore_ascii_case(id))
                {
                    return Ok(SeedOutcome::OtherCase(other));
                }
                let active = enabled.unwrap_or(true);
                c.execute(
                    "INSERT INTO organizations (id, name, is_active, settings, revision, created_at, updated_at, position) \
                     VALUES ($1, $2, $3, $4, (SELECT value + 1 FROM organization_revision WHERE id = 1), $5, $5, $6)",
                    &[
                        Arg::Text(id),
                        Arg::Text(name),
                        Arg::Flag(active),
                        Arg::Text(settings_json),
                        Arg::Int(now),
                        Arg::Int(position),
                    ],
                )
                .await?;
                bump_revision(self, c).await?;
                audit_in(
                    c,
                    &Audit {
                        at: now,
                        actor: "config",
                        action: "org.create",
                        organization_id: Some(id),
                        detail: serde_json::json!({ "after": {
                            "name": name, "active": active, "servers": servers_at(settings_json),
                        } }),
                    },
                )
                .await?;
                SeedOutcome::Created
            }
            Some((old_name, old_settings)) => {
                let mut changed = Vec::new();
                if old_name != name {
                    changed.push("name".to_string());
                }
                if old_settings.as_deref() != Some(settings_json) {
                    changed.extend(settings_changes(
                        old_settings.as_deref().unwrap_or("{}"),
                        settings_json,
                    ));
                }
                c.execute(
                    "UPDATE organizations SET position = $1 WHERE id = $2",
                    &[Arg::Int(position), Arg::Text(id)],
                )
                .await?;
                if !changed.is_empty() {
                    c.execute(
                        "UPDATE organizations SET name = $1, settings = $2, revision = revision + 1, \
                         updated_at = $3 WHERE id = $4",
                        &[
                            Arg::Text(name),
                            Arg::Text(settings_json),
                            Arg::Int(now),
                            Arg::Text(id),
                        ],
                    )
                    .await?;
                    bump_revision(self, c).await?;
                    let detail = serde_json::json!({ "changed": changed, "before": { "name": old_name }, "after": { "name": name } });
                    audit_in(
                        c,
                        &Audit {
                            at: now,
                            actor: "config",
                            action: "org.update",
                            organization_id: Some(id),
                            detail,
                        },
                    )
                    .await?;
                }
                if let Some(active) = enabled {
                    let reason = format!("enabled = {active} in the configuration file");
                    flipped =
                        set_active_in(self, c, id, (active, "config", now), Some(&reason)).await?;
                    if flipped.is_some() {
                        changed.push(if active { "enabled" } else { "disabled" }.to_string());
                    }
                }
                if changed.is_empty() {
                    SeedOutcome::Unchanged
                } else {
                    SeedOutcome::Updated(changed)
                }
            }
        };
        change.commit().await?;
        if let Some(flipped) = flipped {
            flipped.log(id, "config");
        }
        Ok(outcome)
    }

    async fn set_organization_active(
        &self,
        id: &str,
        active: bool,
        actor: &str,
        now: i64,
    ) -> Result<Option<ActiveChange>, StorageError> {
        change_active(self, id, (active, actor, now), false).await
    }

    async fn retire_from_config(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<ActiveChange>, StorageError> {
        change_active(self, id, (false, "config", now), true).await
    }

    async fn forget_config_position(&self, id: &str) -> Result<(), StorageError> {
        let mut change = self.begin_write().await?;
        change
            .conn()
            .execute(
                "UPDATE organizations SET position = NULL WHERE id = $1",
                &[Arg::Text(id)],
            )
            .await?;
        change.commit().await
    }

    async fn queue_session_termination(
        &self,
        session_id: i64,
        actor: &str,
        now: i64,
    ) -> Result<Termination, StorageError> {
        let mut change = self.begin_write().await?;
        let c = change.conn();
        // The session's row locked (PostgreSQL): two operators asking at once take turns, so
        // the second sees the first's job below.
        let row: Option<(String, String, String, String)> = c
            .fetch_optional(
                &format!(
                    "SELECT organization_id, acct_session_id, username, state FROM access_sessions \
                     WHERE id = $1{}",
                    B::LOCK_ROW
                ),
                &[Arg::Int(session_id)],
            )
            .await?;
        let Some((organization_id, acct_session_id, username, state)) = row else {
            return Ok(Termination::NotActive);
        };
        let active = state == "active";
        let mut disable_pending = None;
        if active {
            // Asked again before the portal got to it: one job (and one audit entry) is enough;
            // said with the time its Stop has, the earliest operator's stop waiting for it (its
            // organization's disable, if asked for before).
            let pending: Option<(Option<i64>,)> = c
                .fetch_optional(
                    concat!(
                        "SELECT ",
                        super::stop_asked_at!(),
                        " FROM access_sessions s WHERE s.id = $1 AND EXISTS (SELECT 1 FROM organization_jobs t \
                         WHERE t.done_at IS NULL AND t.kind = 'terminate_session' AND t.access_session_id = s.id)"
                    ),
                    &[Arg::Int(session_id)],
                )
                .await?;
            if let Some((Some(asked_at),)) = pending {
                return Ok(Termination::AlreadyQueued { asked_at });
            }
            // Its organization's disable, not made yet, stops it first (with Admin-Reset dated
            // then): said so, and audited as such (black-box tester M's D1: "dated now", and an
            // entry read as the operator's stop). The termination is queued all the same: an
            // enable before the disable's stop is made skips that stop, not this one (the
            // whole-change review's M1).
            let (disabled_at,): (Option<i64>,) = c
                .fetch_optional(
                    "SELECT MIN(created_at) FROM organization_jobs WHERE done_at IS NULL \
                     AND kind = 'stop_sessions' AND organization_id = $1",
                    &[Arg::Text(&organization_id)],
                )
                .await?
                .unwrap_or((None,));
            disable_pending = disabled_at;
            c.execute(
                "INSERT INTO organization_jobs (organization_id, kind, access_session_id, created_at) \
                 VALUES ($1, 'terminate_session', $2, $3)",
                &[
                    Arg::Text(&organization_id),
                    Arg::Int(session_id),
                    Arg::Int(now),
                ],
            )
            .await?;
        }
        let mut detail =
            serde_json::json!({ "acct_session_id": acct_session_id, "username": username });
        if let Some(at) = disable_pending {
            detail["behind_disable_asked_at"] = at.into();
        }
        if !active {
            // Refused, and audited as the admin API's refusal is: who tried to end what.
            detail["stopped"] = false.into();
            detail["refused"] = "not active".into();
        }
        audit_in(
            c,
            &Audit {
                at: now,
                actor,
                action: "session.terminate",
                organization_id: Some(&organization_id),
                detail,
            },
        )
        .await?;
        if !active {
            change.commit().await?;
            return Ok(Termination::NotActive);
        }
        // The job worker of every process looks now.
        self.announce(c).await?;
        change.commit().await?;
        Ok(match disable_pending {
            Some(disable_asked_at) => Termination::QueuedBehindDisable { disable_asked_at },
            None => Termination::Queued,
        })
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
        let mut change = self.begin_change().await?;
        let c = change.conn();
        // Organization changes run one at a time (`begin_change`), so no other create slips in
        // between this look and the insert: an id that exists already, also in other letter
        // case (which counts as the same; compared here, not by the database's `lower()`,
        // whose PostgreSQL locale may fold letters otherwise), is refused.
        let ids: Vec<(String,)> = c.fetch_all("SELECT id FROM organizations", &[]).await?;
        if ids.iter().any(|(other,)| other.eq_ignore_ascii_case(id)) {
            return Ok(false);
        }
        // The revision starts above every revision ever stored (the global one counts them
        // all), so a process still caching a deleted organization of the same id rebuilds.
        let created = c
            .execute(
                "INSERT INTO organizations (id, name, is_active, settings, revision, created_at, updated_at, position) \
                 VALUES ($1, $2, $3, $4, (SELECT value + 1 FROM organization_revision WHERE id = 1), $5, $5, NULL) \
                 ON CONFLICT (id) DO NOTHING",
                &[
                    Arg::Text(id),
                    Arg::Text(name),
                    Arg::Flag(active),
                    Arg::Text(settings_json),
                    Arg::Int(now),
                ],
            )
            .await?
            > 0;
        if !created {
            return Ok(false);
        }
        bump_revision(self, c).await?;
        audit_in(
            c,
            &Audit {
                at: now,
                actor,
                action: "org.create",
                organization_id: Some(id),
                detail: detail.clone(),
            },
        )
        .await?;
        change.commit().await?;
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
            servers_freed,
            copies_since,
        } = *write;
        let mut change = self.begin_change().await?;
        let c = change.conn();
        let before: Option<(String, Option<String>, bool, i64)> = c
            .fetch_optional(
                "SELECT name, settings, is_active, revision FROM organizations WHERE id = $1",
                &[Arg::Text(id)],
            )
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
        c.execute(
            "UPDATE organizations SET name = $1, settings = $2, revision = revision + 1, updated_at = $3 \
             WHERE id = $4 AND (is_active OR NOT $5)",
            &[
                Arg::Text(name),
                Arg::Text(settings_json),
                Arg::Int(now),
                Arg::Text(id),
                Arg::Flag(require_active),
            ],
        )
        .await?;
        // After the row's write: a session written before this point is counted here, one
        // after it reads the new revision (and is worked out again).
        for server in servers_freed {
            if sessions_needing_in(c, id, server).await? > 0
                || copies_waiting_in(c, id, server, copies_since).await? > 0
            {
                return Ok(UpdateOutcome::ServerNeeded);
            }
        }
        bump_revision(self, c).await?;
        audit_in(
            c,
            &Audit {
                at: now,
                actor,
                action: "org.update",
                organization_id: Some(id),
                detail: detail.clone(),
            },
        )
        .await?;
        change.commit().await?;
        Ok(UpdateOutcome::Updated)
    }

    async fn sessions_needing_server(
        &self,
        organization_id: &str,
        name: &str,
    ) -> Result<i64, StorageError> {
        sessions_needing_in(&mut *self.reader().await?, organization_id, name).await
    }

    async fn copies_waiting_for(
        &self,
        organization_id: &str,
        name: &str,
        since: i64,
    ) -> Result<i64, StorageError> {
        copies_waiting_in(&mut *self.reader().await?, organization_id, name, since).await
    }

    async fn give_up(
        &self,
        organization_id: &str,
        what: GiveUp<'_>,
        actor: &str,
        now: i64,
    ) -> Result<GivenUp, StorageError> {
        // A row is given up with its session's others in scope (for copies, those for the
        // same server): a session with any of them held by a sender keeps all (they go in
        // order: a Stop given up behind an Interim-Update that goes would leave the session
        // open there). A claim counts as held until replicas' clocks can no longer disagree
        // about it.
        let destination;
        let (reason, scope, action, detail) = match what {
            GiveUp::CopiesFor(name) => {
                destination = format!("{}{name}", super::SERVER_DESTINATION_PREFIX);
                (
                    format!("given up by {actor}: server `{name}` gone for good (it is not told what this copy says)"),
                    Arg::Text(&destination),
                    "accounting.give_up_copies",
                    serde_json::json!({ "server": name }),
                )
            }
            GiveUp::EndedSessions { session, force } => (
                format!("given up by {actor}: the organization's accounting servers gone for good (they are not told what this row says)"),
                Arg::Int(session.unwrap_or(-1)),
                "accounting.give_up",
                serde_json::json!({ "session": session, "force": force }),
            ),
        };
        // The condition on the rows waiting in scope, `$2` the scope's argument ($1 the
        // organization): on the row itself, which PostgreSQL checks again on a row another
        // transaction changed meanwhile (a claim, a delivery).
        let waiting = match what {
            GiveUp::CopiesFor(_) => {
                "destination = $2 AND delivered_at IS NULL AND dead_at IS NULL \
                 AND access_session_id IN (SELECT id FROM access_sessions WHERE organization_id = $1)"
            }
            GiveUp::EndedSessions { .. } => {
                "delivered_at IS NULL AND dead_at IS NULL \
                 AND access_session_id IN (SELECT id FROM access_sessions \
                     WHERE organization_id = $1 AND state <> 'active' AND ($2 < 0 OR id = $2))"
            }
        };
        // The organization's servers gone for good is the operator's word; what the database
        // knows may say otherwise (the review's M3: rows a live server would take were given
        // up): a session is given up only once one of its rows was tried and failed and has
        // waited [`FAILING_FOR_MS`] (not a Stop queued a moment ago, nor one a passing
        // failure held back), and none while a server acknowledged the organization's
        // accounting within the last hour, unless forced.
        let (session_scope, held_scope) = match what {
            GiveUp::CopiesFor(_) => ("", " AND p.destination = accounting_outbox.destination"),
            GiveUp::EndedSessions { .. } => (
                " AND EXISTS (SELECT 1 FROM accounting_outbox t \
                   WHERE t.access_session_id = accounting_outbox.access_session_id \
                   AND t.delivered_at IS NULL AND t.dead_at IS NULL \
                   AND t.attempts > 0 AND t.last_error IS NOT NULL AND t.created_at <= $6)",
                "",
            ),
        };
        let mut change = self.begin_write().await?;
        let c = change.conn();
        if let GiveUp::EndedSessions { force: false, .. } = what {
            let acknowledged: Option<(Option<i64>,)> = c
                .fetch_optional(
                    "SELECT MAX(o.delivered_at) FROM accounting_outbox o \
                     JOIN access_sessions s ON s.id = o.access_session_id \
                     WHERE s.organization_id = $1",
                    &[Arg::Text(organization_id)],
                )
                .await?;
            if let Some(at) = acknowledged
                .and_then(|(at,)| at)
                .filter(|at| *at > now - ACKNOWLEDGED_LATELY_MS)
            {
                return Ok(GivenUp {
                    acknowledged_at: Some(at),
                    ..GivenUp::default()
                });
            }
        }
        // PostgreSQL: the rows in scope locked first (waiting for a sender's claim under way),
        // so the statement below — a snapshot of its own, taken after — sees every claim
        // committed on any of a session's rows (the review's L1: a Stop given up while its
        // Start, claimed meanwhile, was sent).
        // Not those a sender holds (never given up: its claim renewals lock them in their
        // own order).
        if !B::LOCK_ROW.is_empty() {
            let _: Vec<(i64,)> = c
                .fetch_all(
                    &format!(
                        "SELECT id FROM accounting_outbox WHERE {waiting} \
                         AND (claimed_until IS NULL OR claimed_until < $3) ORDER BY id{}",
                        B::LOCK_ROW
                    ),
                    &[
                        Arg::Text(organization_id),
                        scope,
                        Arg::Int(now - crate::accounting::CLOCK_SKEW_MS),
                    ],
                )
                .await?;
        }
        // A row of the session in scope that a sender holds since `$n` (a claim counts as held
        // until replicas' clocks can no longer disagree about it).
        let held = |n: u8| {
            format!(
                "EXISTS (SELECT 1 FROM accounting_outbox p \
                 WHERE p.access_session_id = accounting_outbox.access_session_id{held_scope} \
                 AND p.delivered_at IS NULL AND p.dead_at IS NULL AND p.claimed_until >= ${n})"
            )
        };
        // $6 (the sessions' scope only): when a failed row must have been made by.
        let failing_since = now - FAILING_FOR_MS;
        let mut args = vec![
            Arg::Text(organization_id),
            scope,
            Arg::Int(now),
            Arg::Text(&reason),
            Arg::Int(now - crate::accounting::CLOCK_SKEW_MS),
        ];
        if !session_scope.is_empty() {
            args.push(Arg::Int(failing_since));
        }
        let given_up = c
            .execute(
                &format!(
                    "UPDATE accounting_outbox SET dead_at = $3, dead_reason = $4, claimed_until = NULL \
                     WHERE {waiting} AND (claimed_until IS NULL OR claimed_until < $5){session_scope} \
                     AND NOT {}",
                    held(5)
                ),
                &args,
            )
            .await?;
        // What is left in scope: held by a sender (with the rest of its session), or of a
        // session none of whose rows has failed long enough yet.
        let (being_sent, not_tried): (i64, i64) = c
            .fetch_optional(
                &format!(
                    "SELECT COUNT(*) FILTER (WHERE {held}), COUNT(*) FILTER (WHERE NOT {held}) \
                     FROM accounting_outbox WHERE {waiting}",
                    held = held(3)
                ),
                &[
                    Arg::Text(organization_id),
                    scope,
                    Arg::Int(now - crate::accounting::CLOCK_SKEW_MS),
                ],
            )
            .await?
            .unwrap_or((0, 0));
        let given_up = i64::try_from(given_up).unwrap_or(i64::MAX);
        if given_up > 0 {
            let mut detail = detail;
            detail["given_up"] = given_up.into();
            // Whose: the identities the server is never told ended outlive the dead letters in
            // the audit log (an organization deleted after removes those; black-box tester
            // M's D4: only a count was left).
            let sessions: Vec<(String, String, String)> = c
                .fetch_all(
                    &format!(
                        "SELECT s.acct_session_id, s.username, s.client_ip FROM access_sessions s \
                         WHERE s.organization_id = $1 AND EXISTS (SELECT 1 FROM accounting_outbox o \
                           WHERE o.access_session_id = s.id AND o.dead_at = $2 AND o.dead_reason = $3) \
                         ORDER BY s.id LIMIT {}",
                        GIVEN_UP_LISTED + 1
                    ),
                    &[Arg::Text(organization_id), Arg::Int(now), Arg::Text(&reason)],
                )
                .await?;
            if sessions.len() > GIVEN_UP_LISTED {
                detail["sessions_listed"] = GIVEN_UP_LISTED.into();
            }
            detail["sessions"] = sessions
                .iter()
                .take(GIVEN_UP_LISTED)
                .map(|(acct_session_id, username, client_ip)| {
                    serde_json::json!({
                        "acct_session_id": acct_session_id,
                        "username": username,
                        "client_ip": client_ip,
                    })
                })
                .collect();
            audit_in(
                c,
                &Audit {
                    at: now,
                    actor,
                    action,
                    organization_id: Some(organization_id),
                    detail,
                },
            )
            .await?;
        }
        change.commit().await?;
        Ok(GivenUp {
            given_up,
            being_sent,
            not_tried,
            acknowledged_at: None,
        })
    }

    async fn stop_asked_for(&self, session_id: i64) -> Result<Option<i64>, StorageError> {
        let asked: Option<(Option<i64>,)> = self
            .reader()
            .await?
            .fetch_optional(
                concat!(
                    "SELECT ",
                    super::stop_asked_at!(),
                    " FROM access_sessions s WHERE s.id = $1 AND s.state = 'active'"
                ),
                &[Arg::Int(session_id)],
            )
            .await?;
        Ok(asked.and_then(|(at,)| at))
    }

    async fn delete_organization(
        &self,
        id: &str,
        actor: &str,
        now: i64,
        detail: &serde_json::Value,
    ) -> Result<DeleteOutcome, StorageError> {
        let mut change = self.begin_change().await?;
        let c = change.conn();
        if let Some(refused) = delete_refused::<B>(c, id, B::LOCK_ROW).await? {
            return Ok(refused);
        }
        // Dead-lettered rows are the only record of accounting that was never sent: they go
        // into the audit entry before the rows go.
        let dead: Vec<(String, i64, Option<String>)> = c
            .fetch_all(
                "SELECT s.acct_session_id, o.status_type, o.dead_reason FROM accounting_outbox o \
                 JOIN access_sessions s ON s.id = o.access_session_id \
                 WHERE s.organization_id = $1 AND o.dead_at IS NOT NULL ORDER BY o.id LIMIT 1000",
                &[Arg::Text(id)],
            )
            .await?;
        let detail = with_dead_letters(detail, &dead);
        for statement in [
            "DELETE FROM session_classes WHERE access_session_id IN (SELECT id FROM access_sessions WHERE organization_id = $1)",
            "DELETE FROM accounting_outbox WHERE access_session_id IN (SELECT id FROM access_sessions WHERE organization_id = $1)",
            "DELETE FROM access_sessions WHERE organization_id = $1",
            "DELETE FROM organization_jobs WHERE organization_id = $1",
            "DELETE FROM organizations WHERE id = $1",
        ] {
            c.execute(statement, &[Arg::Text(id)]).await?;
        }
        bump_revision(self, c).await?;
        audit_in(
            c,
            &Audit {
                at: now,
                actor,
                action: "org.delete",
                organization_id: Some(id),
                detail,
            },
        )
        .await?;
        change.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    async fn forget_ended_sessions(&self, id: &str, limit: i64) -> Result<u64, StorageError> {
        // Only an organization that may be deleted (a refused delete keeps its history).
        if delete_refused::<B>(&mut *self.reader().await?, id, "")
            .await?
            .is_some()
        {
            return Ok(0);
        }
        let mut change = self.begin_write().await?;
        let c = change.conn();
        // Ended, every packet delivered (a dead letter goes into the delete's audit entry);
        // chosen once, and locked first, as pruning locks them (PostgreSQL).
        let chosen: Vec<(i64,)> = c
            .fetch_all(
                &format!(
                    "SELECT s.id FROM access_sessions s WHERE s.organization_id = $1 \
                     AND s.state = 'stopped' AND NOT EXISTS (SELECT 1 FROM accounting_outbox o \
                     WHERE o.access_session_id = s.id AND o.delivered_at IS NULL) \
                     ORDER BY s.id LIMIT $2{}",
                    B::LOCK_ROW
                ),
                &[Arg::Text(id), Arg::Int(limit)],
            )
            .await?;
        let mut removed = 0;
        for (session,) in chosen {
            let session = [Arg::Int(session)];
            c.execute(
                "DELETE FROM session_classes WHERE access_session_id = $1",
                &session,
            )
            .await?;
            c.execute(
                "DELETE FROM accounting_outbox WHERE access_session_id = $1 \
                 AND delivered_at IS NOT NULL",
                &session,
            )
            .await?;
            // Not one a row was queued for meanwhile.
            removed += c
                .execute(
                    "DELETE FROM access_sessions WHERE id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM accounting_outbox o WHERE o.access_session_id = $1)",
                    &session,
                )
                .await?;
        }
        change.commit().await?;
        Ok(removed)
    }

    async fn pending_organization_jobs(&self) -> Result<Vec<OrganizationJob>, StorageError> {
        self.reader()
            .await?
            .fetch_all(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM organization_jobs WHERE done_at IS NULL ORDER BY id"
                ),
                &[],
            )
            .await
    }

    async fn claim_organization_jobs(
        &self,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<OrganizationJob>, StorageError> {
        // Where one process runs every job, nobody else claims them.
        let Some(claimant) = self.claimant() else {
            return self.pending_organization_jobs().await;
        };
        let mut jobs: Vec<OrganizationJob> = self
            .reader()
            .await?
            .fetch_all(
                &format!(
                    "UPDATE organization_jobs SET claimed_by = $1, claimed_until = $2 WHERE id IN ( \
                       SELECT id FROM organization_jobs WHERE done_at IS NULL \
                       AND (claimed_by = $1 OR claimed_until IS NULL OR claimed_until < $3) \
                       ORDER BY id FOR UPDATE SKIP LOCKED) \
                     RETURNING {JOB_COLUMNS}"
                ),
                &[Arg::Text(claimant), Arg::Int(lease_until), Arg::Int(now)],
            )
            .await?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn renew_organization_job(
        &self,
        job_id: i64,
        lease_until: i64,
    ) -> Result<bool, StorageError> {
        let Some(claimant) = self.claimant() else {
            return Ok(true);
        };
        Ok(self
            .reader()
            .await?
            .execute(
                "UPDATE organization_jobs SET claimed_until = $1 \
                 WHERE id = $2 AND claimed_by = $3 AND done_at IS NULL",
                &[Arg::Int(lease_until), Arg::Int(job_id), Arg::Text(claimant)],
            )
            .await?
            > 0)
    }

    async fn finish_organization_job(
        &self,
        job: &OrganizationJob,
        outcome: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut change = self.begin_write().await?;
        let c = change.conn();
        let mut args = vec![Arg::Int(now), Arg::Text(outcome), Arg::Int(job.id)];
        let mut sql = String::from(
            "UPDATE organization_jobs SET done_at = $1, outcome = $2 WHERE id = $3 AND done_at IS NULL",
        );
        // On a shared database, only the claim's holder (or anyone, if unclaimed).
        if let Some(claimant) = self.claimant() {
            sql.push_str(" AND (claimed_by IS NULL OR claimed_by = $4)");
            args.push(Arg::Text(claimant));
        }
        if c.execute(&sql, &args).await? == 0 {
            return Ok(());
        }
        audit_in(
            c,
            &Audit {
                at: now,
                actor: "system",
                action: &format!("job.{}", job.kind),
                organization_id: Some(&job.organization_id),
                detail: serde_json::json!({ "job": job.id, "outcome": outcome }),
            },
        )
        .await?;
        change.commit().await
    }

    async fn active_session_ids_of(&self, organization_id: &str) -> Result<Vec<i64>, StorageError> {
        let ids: Vec<(i64,)> = self
            .reader()
            .await?
            .fetch_all(
                "SELECT id FROM access_sessions WHERE organization_id = $1 AND state = 'active' ORDER BY id",
                &[Arg::Text(organization_id)],
            )
            .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn audit(&self, entry: &Audit<'_>) -> Result<(), StorageError> {
        self.audit_alone(entry).await
    }

    async fn prune_audit(&self, before: i64, limit: i64) -> Result<u64, StorageError> {
        let mut change = self.begin_write().await?;
        let c = change.conn();
        // Finished organization jobs are history too (their outcome is in the audit log).
        c.execute(
            "DELETE FROM organization_jobs WHERE id IN (SELECT id FROM organization_jobs \
             WHERE done_at IS NOT NULL AND done_at < $1 ORDER BY done_at, id LIMIT $2)",
            &[Arg::Int(before), Arg::Int(limit)],
        )
        .await?;
        let removed = c
            .execute(
                "DELETE FROM audit_log WHERE id IN \
                 (SELECT id FROM audit_log WHERE at < $1 ORDER BY at, id LIMIT $2)",
                &[Arg::Int(before), Arg::Int(limit)],
            )
            .await?;
        change.commit().await?;
        Ok(removed)
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError> {
        // An organization's entries are stored under its id as it was written when it was
        // made: compared in any letter case (ids are ASCII, so `lower` folds them alike on
        // both backends), also for an organization deleted since.
        self.reader()
            .await?
            .fetch_all(
                "SELECT id, at, actor, action, organization_id, detail FROM \
                 (SELECT * FROM audit_log WHERE id < $2 \
                    AND ($3 = '' OR lower(organization_id) = lower($3)) AND ($4 = '' OR action = $4) \
                  ORDER BY id DESC LIMIT $1) newest ORDER BY id",
                &[
                    Arg::Int(query.limit),
                    Arg::Int(query.before.unwrap_or(i64::MAX)),
                    Arg::Text(query.organization.as_deref().unwrap_or("")),
                    Arg::Text(query.action.as_deref().unwrap_or("")),
                ],
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::settings_changes;

    #[test]
    fn settings_changes_name_keys_and_servers_never_values() {
        let before = r#"{"name":"A","login_timeout":"10s","servers":[
            {"name":"primary","secret":"s3cr3t","timeout":"3s"},
            {"name":"backup","secret":"x"}]}"#;
        let after = r#"{"name":"A","login_timeout":"20s","servers":[
            {"name":"primary","secret":"n3w","timeout":"3s","require_message_authenticator":"off"},
            {"name":"third","secret":"y"}]}"#;
        assert_eq!(
            settings_changes(before, after),
            [
                "settings.login_timeout",
                "settings.servers.backup",
                "settings.servers.primary.require_message_authenticator",
                "settings.servers.primary.secret",
                "settings.servers.third",
            ]
        );
        let swapped = r#"{"servers":[{"name":"b"},{"name":"a"}]}"#;
        assert_eq!(
            settings_changes(r#"{"servers":[{"name":"a"},{"name":"b"}]}"#, swapped),
            ["settings.servers"],
            "only the order"
        );
        assert!(settings_changes(before, before).is_empty());
        let all = settings_changes(before, after).join(" ");
        assert!(!all.contains("s3cr3t") && !all.contains("n3w"), "{all}");
    }
}
