//! The SQLite implementation of storage. Sessions, the accounting outbox and web sessions go
//! through the [`Engine`] (rusqlite: reads where the caller runs, writes group-committed by one
//! writer thread, synchronous=FULL); migrations and the organization store (`organizations`,
//! through [`OrgBackend`]) still use sqlx's pool on the same file (WAL; `BEGIN IMMEDIATE` for
//! every read-then-write transaction, a busy timeout for the writer lock the two share).

use super::{
    decode_classes, encode_classes,
    engine::Engine,
    organizations::{audit_on, session_end_actor, Audit, OrgBackend, OrgTx},
    AccessSessionRecord, Acknowledged, AddressStops, AfterStops, Delivered, NewAccessSession,
    OpenedSession, OutboxEntry, OutboxRow, SessionMatch, SessionStore, SignInLease, StopOutcome,
    Stopped, StorageError, WaitingRow, AUTH_SERVER_DESTINATION,
};
use crate::radius::{status_type, terminate_cause};
use rusqlite::{params, Connection, OptionalExtension};
use sqlx::{
    pool::PoolConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Sqlite, SqliteConnection, SqlitePool,
};
use std::{path::Path, str::FromStr, time::Duration};

/// The SQLite backend. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// An operator command's: one connection that waits for no lock, for the organization
    /// store's write transactions, begun by tries a millisecond apart ([`OPERATOR_PATIENCE`]).
    patient_writes: Option<SqlitePool>,
    pub(crate) engine: Engine,
    /// The web-session records this process wrote (see `web_sessions`).
    pub(crate) web_records: std::sync::Arc<super::web_sessions::RecordCache>,
}

/// `SELECT <every session column> FROM access_sessions ` followed by the rest of the statement.
macro_rules! select_sessions {
    ($rest:literal) => {
        concat!(
            "SELECT id, acct_session_id, organization_id, username, client_ip, server_index, server_name, \
             classes, reply_message, started_at, refreshed_at, window_ms, limit_at, expires_at, interim_interval, \
             state, stopped_at, terminate_cause, nas_ip, nas_identifier, replaced_by, \
             accept_idle_timeout, accept_session_timeout FROM access_sessions ",
            $rest
        )
    };
}

/// A pending outbox row (alias `o`): neither delivered nor dead-lettered.
macro_rules! pending_o {
    () => {
        "o.delivered_at IS NULL AND o.dead_at IS NULL"
    };
}

/// Row `o` is first in line: no earlier pending row of its session and destination.
macro_rules! head_o {
    () => {
        "NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = o.access_session_id \
         AND p.destination = o.destination AND p.id < o.id AND p.delivered_at IS NULL AND p.dead_at IS NULL)"
    };
}

macro_rules! outbox_columns {
    () => {
        "id, access_session_id, status_type, event_at, session_time_secs, terminate_cause, attempts, transmissions, \
         claimed_until, destination, created_at"
    };
}

fn session_from_row(row: &rusqlite::Row<'_>) -> Result<AccessSessionRecord, StorageError> {
    let classes: Vec<u8> = row.get(7)?;
    let state: String = row.get(15)?;
    Ok(AccessSessionRecord {
        id: row.get(0)?,
        acct_session_id: row.get(1)?,
        organization_id: row.get(2)?,
        username: row.get(3)?,
        client_ip: row.get(4)?,
        server_index: row.get(5)?,
        server_name: row.get(6)?,
        classes: decode_classes(&classes)?,
        reply_message: row.get(8)?,
        started_at: row.get(9)?,
        refreshed_at: row.get(10)?,
        window_ms: row.get(11)?,
        limit_at: row.get(12)?,
        expires_at: row.get(13)?,
        interim_interval: row.get(14)?,
        active: state == "active",
        stopped_at: row.get(16)?,
        terminate_cause: row.get(17)?,
        nas: super::stored_nas(row.get(18)?, row.get(19)?),
        replaced_by: row.get(20)?,
        accept_timeouts: super::AcceptTimeouts::stored(row.get(21)?, row.get(22)?),
    })
}

/// Every row of a [`select_sessions!`] statement.
fn sessions_where(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<AccessSessionRecord>, StorageError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(session_from_row(row)?);
    }
    Ok(out)
}

/// The first row of a [`select_sessions!`] statement.
fn session_where(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<AccessSessionRecord>, StorageError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(session_from_row).transpose()
}

fn session_by_id(conn: &Connection, id: i64) -> Result<Option<AccessSessionRecord>, StorageError> {
    session_where(conn, select_sessions!("WHERE id = ?"), [id])
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

/// A database file not there yet is made readable by its owner only before SQLite writes
/// anything to it (SQLite gives its WAL and shared-memory files the same mode): a start that
/// fails half-way (a full disk during the migrations) leaves no secrets others can read. One
/// that cannot be made here is left to SQLite, which says why.
fn create_for_owner(path: &Path) {
    let mut create = std::fs::OpenOptions::new();
    create.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
    let _ = create.open(path);
}

/// The [`OutboxEntry`] columns, each prefixed by a table alias.
macro_rules! outbox_entry_columns {
    ($p:literal) => {
        concat!(
            $p,
            "id, ",
            $p,
            "status_type, ",
            $p,
            "attempts, ",
            $p,
            "transmissions, ",
            $p,
            "delivered_at, ",
            $p,
            "dead_at, ",
            $p,
            "dead_reason, ",
            $p,
            "last_error, ",
            $p,
            "destination"
        )
    };
}

fn outbox_entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry {
        id: row.get(0)?,
        status_type: row.get(1)?,
        attempts: row.get(2)?,
        transmissions: row.get(3)?,
        delivered_at: row.get(4)?,
        dead_at: row.get(5)?,
        dead_reason: row.get(6)?,
        last_error: row.get(7)?,
        copy_to: super::copy_target(&row.get::<_, String>(8)?),
    })
}

fn outbox_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: row.get(0)?,
        access_session_id: row.get(1)?,
        status_type: row.get(2)?,
        event_at: row.get(3)?,
        session_time_secs: row.get(4)?,
        terminate_cause: row.get(5)?,
        attempts: row.get(6)?,
        transmissions: row.get(7)?,
        lease_until: row.get::<_, Option<i64>>(8)?.unwrap_or_default(),
        copy_to: super::copy_target(&row.get::<_, String>(9)?),
        created_at: row.get(10)?,
    })
}

/// How [`SqliteStore::open_pool`] opens the file.
#[derive(Clone, Copy)]
enum Open {
    /// Made if missing, in WAL mode (`serve`).
    Create,
    /// As it is, for writes (operator commands): it must exist.
    Existing,
    /// Read-only, as it is (`check-config`).
    ReadOnly,
    /// As it is, one connection for an operator command's writes that waits for no lock (its
    /// caller tries again, [`begin_patiently`]).
    Patient,
}

/// How long an operator command's write waits for the database's write lock — its writes
/// are the organization store's, on sqlx; the engine's writer is `serve`'s (as on
/// PostgreSQL, `postgres::operator_waits`): a portal under a burst of sign-ins holds it all but
/// a few microseconds between its batches, and SQLite's own busy handler, trying every 100 ms,
/// missed those gaps for its 5 s (the guard review's M1 of session 81: `org disable` failed
/// with "database is locked" during the burst it was meant to stop).
const OPERATOR_PATIENCE: Duration = Duration::from_secs(70);

/// Whether a SQLite result code (as sqlx gives it: the extended code in decimal) is
/// SQLITE_BUSY or one of its extended codes.
fn is_busy_code(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == rusqlite::ffi::SQLITE_BUSY)
}

/// A write transaction on `pool` (whose connection waits for no lock), tried every millisecond
/// until it begins or [`OPERATOR_PATIENCE`] has passed.
async fn begin_patiently(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StorageError> {
    let until = std::time::Instant::now() + OPERATOR_PATIENCE;
    loop {
        match pool.begin_with("BEGIN IMMEDIATE").await {
            Err(sqlx::Error::Database(e))
                if is_busy_code(e.code().as_deref()) && std::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            begun => return Ok(begun?),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StorageError> {
        Self::open_here(path)
            .await
            .map_err(|e| explain_read_only(e, path))
    }

    async fn open_here(path: &Path) -> Result<SqliteStore, StorageError> {
        if let Some(problem) = write_access_problem(path, false) {
            return Err(StorageError::Engine(problem));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Database(sqlx::Error::Io(e)))?;
        }
        create_for_owner(path);
        let pool = Self::open_pool(path, Open::Create).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        restrict_to_owner(path);
        let engine = Engine::open(path)?;
        let storage = SqliteStore {
            pool,
            patient_writes: None,
            engine,
            web_records: Default::default(),
        };
        storage.index_classes_of_older_sessions().await?;
        Ok(storage)
    }

    /// Opens an existing database file for an operator command: nothing is migrated — the
    /// portal running on this host, maybe of the release before, uses it —, and a file
    /// without the portal's tables or not at this release's migrations is refused.
    pub(crate) async fn open_for_operator(path: &Path) -> Result<SqliteStore, StorageError> {
        if let Some(problem) = path
            .exists()
            .then(|| write_access_problem(path, false))
            .flatten()
        {
            return Err(StorageError::Engine(problem));
        }
        let pool = Self::open_pool(path, Open::Existing)
            .await
            .map_err(|e| explain_read_only(e, path))?;
        let applied = Self::applied_migrations(&pool).await?;
        super::fit_for_operator(&sqlx::migrate!("./migrations/sqlite"), &applied)?;
        let patient_writes = Self::open_pool(path, Open::Patient)
            .await
            .map_err(|e| explain_read_only(e, path))?;
        let engine = Engine::open(path).map_err(|e| explain_read_only(e, path))?;
        Ok(SqliteStore {
            pool,
            patient_writes: Some(patient_writes),
            engine,
            web_records: Default::default(),
        })
    }

    /// What `_sqlx_migrations` records (nothing without the table).
    async fn applied_migrations(
        pool: &SqlitePool,
    ) -> Result<Vec<(i64, bool, Vec<u8>)>, StorageError> {
        match sqlx::query_as(super::APPLIED_MIGRATIONS)
            .fetch_all(pool)
            .await
        {
            Ok(rows) => Ok(rows),
            Err(e) if super::no_migrations_table(&e) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens an existing database file as it is, for a check: read-only, nothing migrated or
    /// written. With what its recorded migrations say of it ([`super::AsIs`]).
    pub(crate) async fn open_as_is(
        path: &Path,
    ) -> Result<(SqliteStore, Option<Result<String, String>>), StorageError> {
        let pool = Self::open_pool(path, Open::ReadOnly).await?;
        let applied = Self::applied_migrations(&pool).await?;
        let state = super::migration_state(&sqlx::migrate!("./migrations/sqlite"), &applied);
        let engine = Engine::open_read_only(path)?;
        Ok((
            SqliteStore {
                pool,
                patient_writes: None,
                engine,
                web_records: Default::default(),
            },
            state,
        ))
    }

    /// The sqlx pool, on a file opened as `open` says.
    async fn open_pool(path: &Path, open: Open) -> Result<sqlx::SqlitePool, StorageError> {
        let url = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&url)?
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(if matches!(open, Open::Patient) {
                Duration::ZERO
            } else {
                Duration::from_secs(5)
            })
            .foreign_keys(true);
        let connections = if matches!(open, Open::Patient) { 1 } else { 4 };
        let options = match open {
            Open::Create => options
                .create_if_missing(true)
                .page_size(1024)
                .journal_mode(SqliteJournalMode::Wal),
            // WAL mode is the file's own, set when it was made.
            Open::Existing | Open::Patient => options,
            Open::ReadOnly => options.read_only(true),
        };
        Ok(SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await?)
    }

    /// Indexes the Class values of active sessions opened before the index existed (once; a
    /// no-op afterwards).
    async fn index_classes_of_older_sessions(&self) -> Result<(), StorageError> {
        self.engine
            .write(|c| {
                let rows: Vec<(i64, Vec<u8>)> = c
                    .prepare(
                        "SELECT id, classes FROM access_sessions s WHERE state = 'active' AND length(classes) > 0 \
                         AND NOT EXISTS (SELECT 1 FROM session_classes c WHERE c.access_session_id = s.id)",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (id, blob) in &rows {
                    insert_classes(c, *id, &decode_classes(blob)?)?;
                }
                Ok(())
            })
            .await
    }

    /// The sqlx pool (organization store, tests).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Whether writes can be made (the engine's writer thread runs); `/readyz` asks.
    pub(crate) fn writable(&self) -> bool {
        self.engine.writer_alive()
    }
}

/// A read-only failure in SQLite's words ("attempt to write a readonly database") says neither
/// which file nor that it may be the directory: said here, with what to change. Other errors
/// stay as they are.
fn explain_read_only(error: StorageError, path: &Path) -> StorageError {
    // SQLite's extended result code, wherever in the chain it is.
    let mut code = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if let Some(sqlx::Error::Database(d)) = e.downcast_ref::<sqlx::Error>() {
            code = d.code().and_then(|c| c.parse::<i32>().ok());
        } else if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref() {
            code = Some(f.extended_code);
        }
        cause = e.source();
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match code {
        // SQLITE_READONLY_DIRECTORY
        Some(1544) => StorageError::Engine(read_only_directory(dir)),
        // SQLITE_READONLY and its other extended codes
        Some(c) if c & 0xff == 8 => StorageError::Engine(read_only_file(path)),
        _ => error,
    }
}

fn read_only_directory(dir: &Path) -> String {
    format!(
        "this user cannot write in the directory {} (SQLite makes the database's -wal and -shm files beside it): make the directory writable by the portal's user, or put the database in one that is",
        dir.display()
    )
}

fn read_only_file(path: &Path) -> String {
    format!(
        "this user cannot write the database file {} or its -wal or -shm file beside it: give the portal's user write access to them",
        path.display()
    )
}

/// Space at most left on the file system of a database said to be full ([`space_problem`]).
const NEARLY_FULL_BYTES: u64 = 64 * 1024;

/// Whether the file system holding the SQLite database at `path` (its directory, or the
/// nearest that exists) is full: SQLite then says only "disk I/O error" at the start
/// (black-box tester T's D2), an operator reading failing hardware.
pub(crate) fn space_problem(path: &Path) -> Option<String> {
    space_below(path, NEARLY_FULL_BYTES)
}

/// [`space_problem`] with a file system said full below `least` bytes left.
fn space_below(path: &Path, least: u64) -> Option<String> {
    let dir = std::path::absolute(path).ok()?;
    let existing = dir.ancestors().skip(1).find(|a| a.is_dir())?;
    let stats = nix::sys::statvfs::statvfs(existing).ok()?;
    let free = stats
        .blocks_available()
        .saturating_mul(stats.fragment_size());
    (free < least).then(|| {
        format!(
            "the file system holding {} is full ({free} bytes left for this user): free space there, or put the database elsewhere",
            existing.display()
        )
    })
}

/// The context of an error opening the database `[database]` names (`serve`'s and the operator
/// commands'): where it is, and a SQLite database's [`space_problem`] when there is one.
pub(crate) fn opening_context(database: &crate::config::DatabaseSettings) -> String {
    let full = match &database.url {
        Some(_) => None,
        None => space_problem(&database.path),
    };
    match full {
        Some(problem) => format!(
            "while opening the database {} ({problem})",
            database.location()
        ),
        None => format!("while opening the database {}", database.location()),
    }
}

/// What keeps this process from writing the SQLite database at `path` as `serve` does, looked
/// at without writing anything of the database's (as this process's effective user): the file
/// and its -wal and -shm files where they exist, and — when one of those is still to be made —
/// the directory SQLite makes it in (the file's own, a symbolic link followed, as SQLite does),
/// which must be a directory; or, that directory not there yet, the nearest one that is, where
/// it would be made. Where the modes say yes, a directory or file is made there and removed
/// (the modes cannot tell of /proc, and tell root yes everywhere). None when nothing does
/// (SQLite itself has the last word at its first write).
///
/// `with_lock`: `serve`'s view, which also writes `<file>.lock` beside the file. Only a
/// refusal (EACCES) or a read-only file system is a problem: any other answer (a container's
/// seccomp filter refusing the call, say) leaves it to SQLite.
pub(crate) fn write_access_problem(path: &Path, with_lock: bool) -> Option<String> {
    use nix::{
        errno::Errno,
        fcntl::{AtFlags, AT_FDCWD},
        unistd::{access, faccessat, getegid, geteuid, getgid, getuid, AccessFlags},
    };
    // Said as an absolute path: a relative one is relative to the working directory, which
    // the reader of the message may not know.
    let resolved = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .ok();
    let path = resolved.as_deref().unwrap_or(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // As the effective user; plain access() where that is the real one (faccessat with
    // AT_EACCESS is a newer system call, which some container filters refuse).
    let same_ids = getuid() == geteuid() && getgid() == getegid();
    let check = |p: &Path| match if same_ids {
        access(p, AccessFlags::W_OK)
    } else {
        faccessat(AT_FDCWD, p, AccessFlags::W_OK, AtFlags::AT_EACCESS)
    } {
        Ok(()) => Ok(()),
        // EPERM: an immutable file (`chattr +i`), which root cannot write either.
        Err(e @ (Errno::EACCES | Errno::EROFS | Errno::EPERM)) => Err(e),
        Err(_) => Ok(()), // cannot tell: SQLite has the last word
    };
    let read_only_fs = |p: &Path| {
        format!(
            "the database {} is on a read-only file system: put it where the portal can write",
            p.display()
        )
    };
    let writable = |p: &Path| check(p).is_ok();
    // Its directory, or the nearest that exists, is something else (a file): nothing can be
    // made under it (`serve` met "File exists" making it: black-box tester S's D1).
    if let Some(not_a_dir) = dir
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.symlink_metadata().is_ok())
        .filter(|a| !a.is_dir())
    {
        return Some(format!(
            "the database's directory {} cannot be made or used: {} is not a directory (a file, or a symbolic link to none)",
            dir.display(),
            not_a_dir.display()
        ));
    }
    // What a probe's failure says: refused, or nothing can be made there. Anything else (a
    // full disk, an I/O error) leaves it to SQLite, which names it.
    let cannot_make = |e: &std::io::Error| {
        matches!(
            e.raw_os_error().map(Errno::from_raw),
            Some(Errno::EACCES | Errno::EPERM | Errno::EROFS | Errno::ENOENT)
        )
    };
    if !dir.exists() {
        let existing = dir
            .ancestors()
            .skip(1)
            .find(|a| !a.as_os_str().is_empty() && a.exists())
            .unwrap_or(Path::new("."));
        if !writable(existing) {
            return Some(format!(
                "this user cannot make the database's directory {}: {} is not writable by it",
                dir.display(),
                existing.display()
            ));
        }
        // Writable as its mode says, and still no directory can be made there (not a
        // directory, a file system such as /proc): tried, and undone. One of that name there
        // already (a check killed half-way) says directories can be made there.
        let probe = existing.join(format!(
            ".radius-portal-check-{}",
            crate::hex(&rand::random::<[u8; 8]>())
        ));
        return match std::fs::create_dir(&probe) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&probe);
                None
            }
            Err(e) if !cannot_make(&e) => None,
            Err(e) => Some(format!(
                "this user cannot make the database's directory {}: making a directory in {} fails ({e})",
                dir.display(),
                existing.display()
            )),
        };
    }
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let lock = with_lock.then(|| beside(".lock"));
    let mut files = vec![path.to_path_buf(), beside("-wal"), beside("-shm")];
    files.extend(lock.clone());
    for file in files.iter().filter(|f| f.exists()) {
        match check(file) {
            Ok(()) => {}
            Err(Errno::EROFS) => return Some(read_only_fs(path)),
            // The -shm most of all: SQLite maps it into memory, and a write there that cannot
            // be made ends the process (SIGBUS, black-box tester Q's D2).
            Err(Errno::EPERM) => {
                return Some(format!(
                    "{} cannot be written: it is immutable or append-only (`lsattr` shows it; `chattr -i` undoes it)",
                    file.display()
                ))
            }
            Err(_) if lock.as_ref() == Some(file) => {
                return Some(format!(
                    "this user cannot write {}, which `serve` locks to own the database: give the portal's user write access to it",
                    file.display()
                ))
            }
            Err(_) => return Some(read_only_file(path)),
        }
    }
    let to_make = files.iter().any(|f| !f.exists());
    match check(dir) {
        Err(Errno::EROFS) if to_make => Some(read_only_fs(path)),
        Err(_) if to_make => Some(read_only_directory(dir)),
        // Writable as its mode says (root is told yes everywhere), and still no file may be
        // made there (a file system such as /proc): tried, and undone.
        Ok(()) if to_make => {
            let probe = dir.join(format!(
                ".radius-portal-check-{}",
                crate::hex(&rand::random::<[u8; 8]>())
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
            {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    None
                }
                Err(e) if !cannot_make(&e) => None,
                Err(e) => Some(format!(
                    "this user cannot make the database's files in the directory {}: making a file there fails ({e}): put the database where the portal can write",
                    dir.display()
                )),
            }
        }
        _ => None,
    }
}

/// The organization store on SQLite (`organizations`): its changes run on sqlx's pool, each
/// holding the engine's write gate so that the engine's writer and the change take turns for
/// SQLite's write lock instead of one starving the other; one portal process per file, so no
/// announcements and no job claims.
impl OrgBackend for SqliteStore {
    type Conn = SqliteConnection;
    type Change = OrgTx<Sqlite>;
    type Reader = PoolConnection<Sqlite>;
    const LOCK_ROW: &'static str = "";

    async fn begin_change(&self) -> Result<OrgTx<Sqlite>, StorageError> {
        self.begin_write().await
    }

    async fn begin_write(&self) -> Result<OrgTx<Sqlite>, StorageError> {
        if let Some(lost) = self.engine.files_lost() {
            return Err(lost);
        }
        let gate = self.engine.gate().await?;
        // Again under the gate: the writer thread may have found the files gone (and saved a
        // copy) while this waited for it.
        if let Some(lost) = self.engine.files_lost() {
            return Err(lost);
        }
        let tx = match &self.patient_writes {
            Some(patient) => begin_patiently(patient).await?,
            None => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        };
        Ok(OrgTx::new(tx, Some(gate)))
    }

    async fn reader(&self) -> Result<PoolConnection<Sqlite>, StorageError> {
        // A new pool connection would open (or create) whatever is at the path now.
        if let Some(lost) = self.engine.files_lost() {
            return Err(lost);
        }
        Ok(self.pool.acquire().await?)
    }

    async fn announce(&self, _c: &mut SqliteConnection) -> Result<(), StorageError> {
        Ok(())
    }

    fn claimant(&self) -> Option<&str> {
        None
    }

    async fn read_active(&self, id: &str) -> Result<Option<bool>, StorageError> {
        self.engine.read(|c| {
            Ok(
                c.prepare_cached("SELECT is_active FROM organizations WHERE id = ?")?
                    .query_row([id], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    async fn audit_alone(&self, entry: &Audit<'_>) -> Result<(), StorageError> {
        let (at, actor, action, organization_id, detail) = (
            entry.at,
            entry.actor.to_string(),
            entry.action.to_string(),
            entry.organization_id.map(str::to_string),
            entry.detail.clone(),
        );
        self.engine
            .write(move |c| {
                audit_on(
                    c,
                    &Audit {
                        at,
                        actor: &actor,
                        action: &action,
                        organization_id: organization_id.as_deref(),
                        detail: detail.clone(),
                    },
                )
            })
            .await
    }
}

impl SessionStore for SqliteStore {
    async fn app_secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        let fresh: [u8; 32] = rand::random();
        let name = name.to_string();
        self.engine
            .write(move |c| {
                c.execute(
                    "INSERT INTO app_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    params![name, fresh.as_slice(), crate::access_session::now_ms()],
                )?;
                let stored: Vec<u8> = c.query_row(
                    "SELECT value FROM app_secrets WHERE name = ?",
                    [&name],
                    |r| r.get(0),
                )?;
                stored.try_into().map_err(|_| {
                    StorageError::Corrupt(format!("app secret `{name}` is not 32 bytes"))
                })
            })
            .await
    }

    async fn web_session_count(&self) -> Result<i64, StorageError> {
        self.engine
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM tower_sessions", [], |r| r.get(0))?))
    }

    async fn open_session(&self, new: &NewAccessSession) -> Result<OpenedSession, StorageError> {
        let new = new.clone();
        self.engine.write(move |c| open_session_in(c, &new)).await
    }

    async fn session(&self, id: i64) -> Result<Option<AccessSessionRecord>, StorageError> {
        self.engine.read(|c| session_by_id(c, id))
    }

    async fn refresh_session(
        &self,
        id: i64,
        now: i64,
        terms: super::RefreshTerms,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        self.engine
            .write(move |c| {
                // A disable committed since the guard read the flag denies it (writers are
                // serialized: the disable's stop job then finds the session as it was).
                let found: Option<(bool, Option<i64>)> = c
                    .prepare_cached(concat!(
                        "SELECT o.is_active, ",
                        super::stop_asked_at!(),
                        " FROM access_sessions s \
                         JOIN organizations o ON o.id = s.organization_id WHERE s.id = ?"
                    ))?
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                match found {
                    Some((false, _)) => return Err(StorageError::OrganizationDisabled),
                    // An operator's stop waits for it: the refresh makes that stop, dated when
                    // it was asked for (a refresh must not move it later).
                    Some((true, Some(asked_at))) => {
                        stop_in(c, id, terminate_cause::ADMIN_RESET, asked_at.min(now), None)?;
                        return Ok(None);
                    }
                    // Its limit (a `max_lifetime` shortened since the sign-in) has passed: it
                    // ends now, as that limit ends it.
                    Some((true, None)) if terms.expires_at <= now => {
                        stop_in(c, id, terminate_cause::SESSION_TIMEOUT, now, None)?;
                        return Ok(None);
                    }
                    _ => {}
                }
                // A periodic Interim-Update queued moments ago stands for the refresh's own.
                let quiet = interim_just_queued(c, id, now)?;
                // The refresh's Interim-Update counts as the periodic one: the next is an
                // interval after it (a periodic one due a moment later would repeat it).
                let started_at: Option<i64> = c
                    .prepare_cached(
                        "UPDATE access_sessions SET refreshed_at = ?1, expires_at = ?2, \
                         window_ms = ?4, limit_at = ?5, \
                         next_interim_at = CASE WHEN ?7 THEN next_interim_at ELSE ?1 + interim_interval * 1000 END \
                         WHERE id = ?3 AND state = 'active' AND expires_at > ?1 \
                         AND (?6 IS NULL OR refreshed_at = ?6) RETURNING started_at",
                    )?
                    .query_row(
                        params![
                            now,
                            terms.expires_at,
                            id,
                            terms.window_ms,
                            terms.limit_at,
                            terms.follows,
                            quiet
                        ],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(started_at) = started_at else {
                    // Refreshed meanwhile (another refresh sent with this one): as it stands.
                    return Ok(session_by_id(c, id)?
                        .filter(|s| s.active && s.expires_at > now && terms.follows.is_some_and(|f| s.refreshed_at != f)));
                };
                if !quiet {
                    enqueue_interim(c, id, started_at, now)?;
                }
                session_by_id(c, id)
            })
            .await
    }

    async fn cap_lifetimes(
        &self,
        organization_id: &str,
        max_lifetime_ms: i64,
        now: i64,
    ) -> Result<Vec<(i64, i64)>, StorageError> {
        let organization_id = organization_id.to_string();
        self.engine
            .write(move |c| {
                let capped = c
                    .prepare_cached(
                        "UPDATE access_sessions SET limit_at = started_at + ?2, \
                         window_ms = min(window_ms, ?2), \
                         expires_at = min(expires_at, max(?3, started_at + ?2)) \
                         WHERE organization_id = ?1 AND state = 'active' AND accept_session_timeout = 0 \
                         AND expires_at > ?3 AND (limit_at IS NULL OR limit_at > started_at + ?2) \
                         RETURNING id, expires_at",
                    )?
                    .query_map(params![organization_id, max_lifetime_ms, now], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<Vec<(i64, i64)>, _>>()?;
                Ok(capped)
            })
            .await
    }

    async fn shift_times(&self, delta_ms: i64) -> Result<Option<Vec<i64>>, StorageError> {
        self.engine
            .write(move |c| {
                let moved = c
                    .prepare_cached(
                        "UPDATE access_sessions SET started_at = started_at + ?1, \
                         refreshed_at = refreshed_at + ?1, expires_at = expires_at + ?1, \
                         limit_at = limit_at + ?1, next_interim_at = next_interim_at + ?1, \
                         sign_in_until = sign_in_until + ?1 WHERE state = 'active' RETURNING id",
                    )?
                    .query_map([delta_ms], |r| r.get(0))?
                    .collect::<Result<Vec<i64>, _>>()?;
                c.prepare_cached(
                    "UPDATE accounting_outbox SET event_at = event_at + ?1, \
                     next_attempt_at = next_attempt_at + ?1, created_at = created_at + ?1, \
                     claimed_until = claimed_until + ?1 \
                     WHERE delivered_at IS NULL AND dead_at IS NULL",
                )?
                .execute([delta_ms])?;
                // What an open session's packets already said moves too: its Stop is never
                // dated before them (`stop_in`), and one dated by a packet of the old time line
                // said the step on top of its length (black-box tester T's D1).
                c.prepare_cached(
                    "UPDATE accounting_outbox SET event_at = event_at + ?1 \
                     WHERE (delivered_at IS NOT NULL OR dead_at IS NOT NULL) AND access_session_id IN \
                     (SELECT id FROM access_sessions WHERE state = 'active')",
                )?
                .execute([delta_ms])?;
                // An operator's stop waiting is dated when it was asked for; a Disconnect-
                // Request's answer is kept until its time.
                c.prepare_cached(
                    "UPDATE organization_jobs SET created_at = created_at + ?1 WHERE done_at IS NULL",
                )?
                .execute([delta_ms])?;
                c.prepare_cached("UPDATE dynauth_requests SET until = until + ?1")?
                    .execute([delta_ms])?;
                // The total moved, with the move (the lock file's mark is read against it).
                c.prepare_cached(
                    "INSERT INTO clock_moves (id, moved_ms) VALUES (1, ?1) \
                     ON CONFLICT (id) DO UPDATE SET moved_ms = moved_ms + ?1",
                )?
                .execute([delta_ms])?;
                Ok(Some(moved))
            })
            .await
    }

    async fn stop_session(&self, id: i64, cause: u32, event_at: i64) -> Result<bool, StorageError> {
        self.engine
            .write(move |c| stop_in(c, id, cause, event_at, None))
            .await
    }

    async fn renew_sign_in(&self, id: i64, until: i64) -> Result<bool, StorageError> {
        self.engine
            .write_relaxed_small(move |c| {
                Ok(c.prepare_cached(
                    "UPDATE access_sessions SET sign_in_until = max(sign_in_until, ?1) \
                     WHERE id = ?2 AND state = 'active' AND sign_in_until IS NOT NULL",
                )?
                .execute(params![until, id])?
                    > 0)
            })
            .await
    }

    async fn reassert_after_stops(
        &self,
        id: i64,
        after: &AfterStops<'_>,
        now: i64,
    ) -> Result<Option<bool>, StorageError> {
        let (earlier, since, left) = (after.earlier.to_vec(), after.since, after.left);
        self.engine
            .write(move |c| {
                let after = AfterStops {
                    earlier: &earlier,
                    since,
                    left,
                };
                reassert_after_stops_in(c, id, &after, now)
            })
            .await
    }

    async fn start_due_now(&self, id: i64, now: i64) -> Result<bool, StorageError> {
        self.engine
            .write_relaxed_small(move |c| {
                Ok(c.prepare_cached(
                    "UPDATE accounting_outbox SET next_attempt_at = ?1 \
                     WHERE access_session_id = ?2 AND status_type = ?3 AND destination = ?4 \
                     AND delivered_at IS NULL AND dead_at IS NULL AND claimed_until IS NULL \
                     AND next_attempt_at > ?1",
                )?
                .execute(params![
                    now,
                    id,
                    status_type::START,
                    AUTH_SERVER_DESTINATION
                ])? > 0)
            })
            .await
    }

    async fn end_abandoned_sign_in(&self, id: i64, now: i64) -> Result<SignInLease, StorageError> {
        self.engine
            .write(move |c| {
                let found: Option<(i64, i64)> = c
                    .prepare_cached(
                        "SELECT s.started_at, s.sign_in_until FROM access_sessions s \
                         WHERE s.id = ?1 AND s.state = 'active' AND s.sign_in_until IS NOT NULL AND EXISTS ( \
                           SELECT 1 FROM accounting_outbox o WHERE o.access_session_id = s.id \
                           AND o.status_type = ?2 AND o.destination = ?3 \
                           AND o.delivered_at IS NULL AND o.dead_at IS NULL)",
                    )?
                    .query_row(
                        params![id, status_type::START, AUTH_SERVER_DESTINATION],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                Ok(match found {
                    None => SignInLease::None,
                    Some((_, until)) if until >= now => SignInLease::Held(until),
                    Some((started_at, _)) => {
                        if stop_in(c, id, terminate_cause::NAS_ERROR, started_at, None)? {
                            SignInLease::Ended
                        } else {
                            SignInLease::None
                        }
                    }
                })
            })
            .await
    }

    async fn stop_due_chunk(&self, now: i64, limit: i64) -> Result<Vec<Stopped>, StorageError> {
        self.engine
            .write(move |c| {
                type Due = (i64, i64, Option<i64>, Option<i64>);
                let due: Vec<Due> = c
                    .prepare_cached(concat!(
                        "SELECT s.id, s.expires_at, s.limit_at, ",
                        super::stop_asked_at!(),
                        " FROM access_sessions s \
                         WHERE s.state = 'active' AND s.expires_at <= ? ORDER BY s.expires_at LIMIT ?"
                    ))?
                    .query_map([now, limit], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let mut stopped = Vec::new();
                for (id, expires_at, limit_at, asked_at) in due {
                    // An operator's stop asked for before the deadline and not yet made ends it
                    // then (its job finds it ended).
                    let (cause, at) = crate::access_session::timing::ending(
                        crate::access_session::timing::deadline_cause(expires_at, limit_at),
                        expires_at,
                        expires_at,
                        limit_at,
                        asked_at,
                    );
                    if stop_in(c, id, cause, at, Some(now))? {
                        stopped.push(Stopped {
                            id,
                            due_at: expires_at,
                            cause,
                        });
                    }
                }
                Ok(stopped)
            })
            .await
    }

    async fn stop_disabled_sessions(
        &self,
        organization_id: &str,
        job_id: i64,
        cause: u32,
        event_at: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StorageError> {
        let organization_id = organization_id.to_string();
        self.engine
            .write(move |c| {
                let ids: Vec<i64> = c
                    .prepare_cached(
                        "SELECT s.id FROM access_sessions s JOIN organizations o ON o.id = s.organization_id \
                         WHERE s.organization_id = ?1 AND s.state = 'active' AND NOT o.is_active \
                         AND s.expires_at > ?2 AND EXISTS (SELECT 1 FROM organization_jobs j \
                           WHERE j.id = ?4 AND j.done_at IS NULL AND j.organization_id = ?1 \
                           AND j.kind = 'stop_sessions') ORDER BY s.id LIMIT ?3",
                    )?
                    .query_map(params![organization_id, event_at, limit, job_id], |r| {
                        r.get(0)
                    })?
                    .collect::<Result<_, _>>()?;
                let mut stopped = Vec::with_capacity(ids.len());
                for id in ids {
                    if stop_in(c, id, cause, event_at, None)? {
                        stopped.push(id);
                    }
                }
                if !stopped.is_empty() {
                    c.prepare_cached("UPDATE organization_jobs SET stopped = stopped + ?1 WHERE id = ?2")?
                        .execute(params![stopped.len() as i64, job_id])?;
                }
                Ok(stopped)
            })
            .await
    }

    async fn queue_due_interims(&self, now: i64) -> Result<usize, StorageError> {
        self.engine
            .write(move |c| {
                let due: Vec<(i64, i64, i64)> = c
                    .prepare_cached(
                        concat!(
                            "SELECT s.id, s.started_at, s.interim_interval FROM access_sessions s \
                             WHERE s.state = 'active' AND s.next_interim_at <= ?1 AND s.expires_at > ?1 AND ",
                            super::no_stop_pending!(),
                            " AND ",
                            super::no_start_pending!()
                        ),
                    )?
                    .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                for (id, started_at, interval) in &due {
                    enqueue_interim(c, *id, *started_at, now)?;
                    c.prepare_cached(
                        "UPDATE access_sessions SET next_interim_at = ? WHERE id = ?",
                    )?
                    .execute([now + interval * 1000, *id])?;
                }
                Ok(due.len())
            })
            .await
    }

    async fn next_interim(&self) -> Result<Option<i64>, StorageError> {
        self.engine.read(|c| {
            // The earliest in the index's order that waits for no stop (a MIN over the filter
            // would read every session's index entry).
            Ok(c.prepare_cached(concat!(
                "SELECT s.next_interim_at FROM access_sessions s \
                     WHERE s.state = 'active' AND s.next_interim_at IS NOT NULL AND ",
                super::no_stop_pending!(),
                " AND ",
                super::no_start_pending!(),
                " ORDER BY s.next_interim_at LIMIT 1"
            ))?
            .query_row([], |r| r.get(0))
            .optional()?)
        })
    }

    async fn active_session_for_client(
        &self,
        organization_id: &str,
        client_ip: &str,
        now: i64,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        self.engine.read(|c| {
            session_where(
                c,
                select_sessions!(
                    "WHERE organization_id = ? AND client_ip = ? AND state = 'active' AND expires_at > ?"
                ),
                params![organization_id, client_ip, now],
            )
        })
    }

    async fn find_active_sessions(
        &self,
        wanted: &SessionMatch,
    ) -> Result<Vec<AccessSessionRecord>, StorageError> {
        let wanted = wanted.clone();
        self.engine.read_long(move |c| match &wanted {
            SessionMatch::AcctSessionId(id) => sessions_where(
                c,
                select_sessions!("WHERE state = 'active' AND acct_session_id = ?"),
                [id],
            ),
            SessionMatch::ClientIp(ip) => sessions_where(
                c,
                select_sessions!("WHERE state = 'active' AND client_ip = ?"),
                [ip],
            ),
            SessionMatch::UserName(username) => sessions_where(
                c,
                select_sessions!("WHERE state = 'active' AND username = ?"),
                [username],
            ),
            SessionMatch::Class(class) => sessions_where(
                c,
                select_sessions!(
                    "WHERE state = 'active' AND id IN (SELECT access_session_id FROM session_classes WHERE class = ?)"
                ),
                [class],
            ),
        })
        .await
    }

    async fn active_sessions_of(
        &self,
        organization_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccessSessionRecord>, StorageError> {
        let organization_id = organization_id.map(str::to_string);
        self.engine
            .read_long(move |c| {
                sessions_where(
                    c,
                    select_sessions!(
                        "WHERE state = 'active' AND (?1 IS NULL OR organization_id = ?1) ORDER BY id LIMIT ?2"
                    ),
                    params![organization_id, limit],
                )
            })
            .await
    }

    async fn session_by_acct_id(
        &self,
        acct_session_id: &str,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        self.engine.read(|c| {
            session_where(
                c,
                select_sessions!("WHERE acct_session_id = ?"),
                [acct_session_id],
            )
        })
    }

    async fn next_expiry(&self) -> Result<Option<i64>, StorageError> {
        self.engine.read(|c| {
            Ok(c.prepare_cached(
                "SELECT MIN(expires_at) FROM access_sessions WHERE state = 'active'",
            )?
            .query_row([], |r| r.get(0))?)
        })
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.engine.read(|c| {
            c.prepare_cached("SELECT value FROM organization_revision WHERE id = 1")?
                .query_row([], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
    }

    async fn active_sessions(&self) -> Result<i64, StorageError> {
        self.engine
            .read_long(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM access_sessions WHERE state = 'active'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    async fn claim_due_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StorageError> {
        self.engine
            .write(move |c| {
                let mut rows: Vec<OutboxRow> = c
                    .prepare_cached(concat!(
                        "UPDATE accounting_outbox SET claimed_until = ?1, attempts = attempts + 1 WHERE id IN ( \
                           SELECT o.id FROM accounting_outbox o WHERE ",
                        pending_o!(),
                        " AND o.next_attempt_at <= ?2 AND (o.claimed_until IS NULL OR o.claimed_until < ?2) AND ",
                        head_o!(),
                        " ORDER BY o.next_attempt_at, o.id LIMIT ?3) RETURNING ",
                        outbox_columns!()
                    ))?
                    .query_map([lease_until, now, limit], outbox_from_row)?
                    .collect::<Result<_, _>>()?;
                rows.sort_by_key(|r| r.id);
                Ok(rows)
            })
            .await
    }

    async fn claim_session_outbox(
        &self,
        access_session_id: i64,
        status_type: u32,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<OutboxRow>, StorageError> {
        self.engine
            .write(move |c| claim_session_in(c, access_session_id, status_type, now, lease_until))
            .await
    }

    async fn stop_session_claiming(
        &self,
        id: i64,
        cause: u32,
        event_at: i64,
        lease_until: i64,
    ) -> Result<StopOutcome, StorageError> {
        self.engine
            .write(move |c| {
                let Some((cause, at)) = ending_in(c, id, cause, event_at)? else {
                    return Ok(StopOutcome::NotActive);
                };
                if !stop_in(c, id, cause, at, None)? {
                    return Ok(StopOutcome::NotActive);
                }
                let Some(stop) = claim_session_in(c, id, status_type::STOP, event_at, lease_until)?
                else {
                    return Ok(StopOutcome::Queued(cause));
                };
                let session = session_by_id(c, id)?.ok_or_else(|| {
                    StorageError::Corrupt(format!("session {id} vanished while it stopped"))
                })?;
                Ok(StopOutcome::Claimed(cause, stop, Box::new(session)))
            })
            .await
    }

    async fn release_outbox_claims(&self) -> Result<u64, StorageError> {
        self.engine
            .write_relaxed(|c| {
                Ok(c.execute(
                    "UPDATE accounting_outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL AND delivered_at IS NULL",
                    [],
                )? as u64)
            })
            .await
    }

    async fn mark_delivered(
        &self,
        row: &OutboxRow,
        now: i64,
        ack: Option<&Acknowledged<'_>>,
    ) -> Result<Delivered, StorageError> {
        let (id, stop) = (row.id, row.status_type == i64::from(status_type::STOP));
        let session_id = row.access_session_id;
        let remembered = ack.and_then(|a| a.remembered()).map(str::to_owned);
        let after_stops = ack
            .and_then(|a| a.after_stops)
            .map(|a| (a.earlier.to_vec(), a.since, a.left));
        let ack = ack.map(|a| {
            (
                a.access_session_id,
                a.by.to_string(),
                a.own.to_string(),
                a.stop,
            )
        });
        // Remembering a server that may hold the session open must survive a power loss (the
        // row would be sent again, perhaps to its own server, and the Stop never copied there).
        // So must the Interim-Update a sign-in's look after Stops queues (the Start recorded
        // without it, the session would never be asserted again).
        let durable = remembered.is_some() || after_stops.is_some();
        let work = move |c: &Connection| {
            let mut delivered = Delivered::default();
            if stop {
                if let Some((successor, late)) = reassert_successor(c, id, now)? {
                    delivered.reasserted = Some(successor);
                    delivered.late = late;
                }
            }
            // Also when recorded already (another sender recorded it first, without the look;
            // the look's Interim-Update supersedes one queued and not yet on its way).
            if let Some((earlier, since, left)) = &after_stops {
                let after = AfterStops {
                    earlier,
                    since: *since,
                    left: *left,
                };
                if let Some(late) = reassert_after_stops_in(c, session_id, &after, now)? {
                    delivered.reasserted = Some(session_id);
                    delivered.late = late;
                }
            }
            if let Some((session, by, own, stop)) = &ack {
                if let Some(server) = &remembered {
                    remember_sent(c, *session, server)?;
                }
                if *stop {
                    delivered.copies = c
                            .prepare_cached(
                                "INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, \
                                 session_time_secs, terminate_cause, next_attempt_at, created_at) \
                                 SELECT o.access_session_id, ?1 || t.server, o.status_type, o.event_at, \
                                   o.session_time_secs, o.terminate_cause, ?2, ?2 \
                                 FROM accounting_outbox o, \
                                   (SELECT server FROM accounting_sent WHERE access_session_id = ?3 UNION SELECT ?4) t \
                                 WHERE o.id = ?5 AND o.delivered_at IS NULL AND (t.server != ?6 OR EXISTS ( \
                                   SELECT 1 FROM accounting_outbox i WHERE i.access_session_id = ?3 \
                                   AND i.status_type = 3 AND i.destination = ?1 || ?6 \
                                   AND i.delivered_at IS NULL AND i.dead_at IS NULL))",
                            )?
                            .execute(params![
                                super::SERVER_DESTINATION_PREFIX,
                                now,
                                session,
                                own,
                                id,
                                by
                            ])? as u64;
                }
            }
            c.prepare_cached(
                    "UPDATE accounting_outbox SET delivered_at = ?, claimed_until = NULL, last_error = NULL, \
                     transmissions = transmissions + 1 WHERE id = ?",
                )?
                .execute([now, id])?;
            Ok(delivered)
        };
        if durable {
            self.engine.write(work).await
        } else {
            self.engine.write_relaxed_small(work).await
        }
    }

    async fn move_session_server(&self, id: i64, server_name: &str) -> Result<(), StorageError> {
        let server_name = server_name.to_string();
        self.engine
            .write(move |c| {
                c.execute(
                    "UPDATE access_sessions SET server_name = ? WHERE id = ?",
                    params![server_name, id],
                )?;
                Ok(())
            })
            .await
    }

    async fn mark_failed(
        &self,
        row: &OutboxRow,
        next_attempt_at: i64,
        error: &str,
        sent_to: Option<&str>,
    ) -> Result<(), StorageError> {
        let (id, attempts, error) = (row.id, row.attempts, error.to_string());
        let transmitted = sent_to.is_some();
        let (session, sent_to) = (
            row.access_session_id,
            super::remembered_for(row, sent_to).map(str::to_owned),
        );
        // Durable when it remembers a server (see `mark_delivered`).
        let remembers = sent_to.is_some();
        let work = move |c: &Connection| {
            if let Some(server) = &sent_to {
                remember_sent(c, session, server)?;
            }
            c.prepare_cached(
                "UPDATE accounting_outbox SET transmissions = transmissions + ?1, \
                     next_attempt_at = CASE WHEN attempts = ?2 THEN ?3 ELSE next_attempt_at END, \
                     claimed_until = CASE WHEN attempts = ?2 THEN NULL ELSE claimed_until END, \
                     last_error = CASE WHEN attempts = ?2 THEN ?4 ELSE last_error END \
                     WHERE id = ?5",
            )?
            .execute(params![
                i64::from(transmitted),
                attempts,
                next_attempt_at,
                error,
                id
            ])?;
            Ok(())
        };
        if remembers {
            self.engine.write(work).await
        } else {
            self.engine.write_relaxed_small(work).await
        }
    }

    async fn claim_session_copies(
        &self,
        access_session_id: i64,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<OutboxRow>, StorageError> {
        self.engine
            .write(move |c| {
                Ok(c.prepare_cached(concat!(
                    "UPDATE accounting_outbox SET claimed_until = ?1, attempts = attempts + 1 WHERE id IN ( \
                       SELECT o.id FROM accounting_outbox o \
                       WHERE o.access_session_id = ?2 AND o.destination != 'auth-server' AND ",
                    pending_o!(),
                    " AND o.next_attempt_at <= ?3 AND (o.claimed_until IS NULL OR o.claimed_until < ?3) AND ",
                    head_o!(),
                    ") RETURNING ",
                    outbox_columns!()
                ))?
                .query_map([lease_until, access_session_id, now], outbox_from_row)?
                .collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn copies_due(&self, access_session_id: i64, now: i64) -> Result<i64, StorageError> {
        self.engine.read(|c| {
            Ok(c.prepare_cached(concat!(
                "SELECT COUNT(*) FROM accounting_outbox o WHERE o.access_session_id = ?1 \
                 AND o.destination != 'auth-server' AND o.next_attempt_at <= ?2 AND ",
                pending_o!()
            ))?
            .query_row([access_session_id, now], |r| r.get(0))?)
        })
    }

    async fn remember_sent(
        &self,
        access_session_id: i64,
        server: &str,
    ) -> Result<(), StorageError> {
        let server = server.to_string();
        self.engine
            .write(move |c| remember_sent(c, access_session_id, &server))
            .await
    }

    async fn renew_claim(&self, row: &OutboxRow, lease_until: i64) -> Result<bool, StorageError> {
        let (id, attempts) = (row.id, row.attempts);
        self.engine
            .write_relaxed_small(move |c| {
                Ok(c.prepare_cached(
                    "UPDATE accounting_outbox SET claimed_until = ? WHERE id = ? AND attempts = ? \
                     AND claimed_until IS NOT NULL AND delivered_at IS NULL AND dead_at IS NULL",
                )?
                .execute(params![lease_until, id, attempts])?
                    == 1)
            })
            .await
    }

    async fn drop_superseded(&self, row: &OutboxRow) -> Result<bool, StorageError> {
        let (id, attempts) = (row.id, row.attempts);
        self.engine
            .write_relaxed_small(move |c| {
                Ok(c.prepare_cached(
                    "DELETE FROM accounting_outbox WHERE id = ? AND attempts = ? \
                     AND claimed_until IS NOT NULL AND delivered_at IS NULL AND dead_at IS NULL",
                )?
                .execute(params![id, attempts])?
                    == 1)
            })
            .await
    }

    async fn keep_claims(
        &self,
        claims: &[(i64, i64)],
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<(i64, i64, i64)>, StorageError> {
        let claims = claims.to_vec();
        self.engine
            .write_relaxed(move |c| {
                let mut kept = Vec::with_capacity(claims.len());
                let mut keep = c.prepare_cached(
                    "UPDATE accounting_outbox SET claimed_until = MAX(claimed_until, ?1)                      WHERE id = ?2 AND attempts = ?3 AND claimed_until > ?4                      AND delivered_at IS NULL AND dead_at IS NULL RETURNING claimed_until",
                )?;
                for &(id, attempts) in &claims {
                    let until: Option<i64> = keep
                        .query_row(params![lease_until, id, attempts, now], |r| r.get(0))
                        .optional()?;
                    if let Some(until) = until {
                        kept.push((id, attempts, until));
                    }
                }
                Ok(kept)
            })
            .await
    }

    async fn dead_letter(
        &self,
        id: i64,
        claim: Option<i64>,
        now: i64,
        reason: &str,
        cascade: bool,
    ) -> Result<bool, StorageError> {
        let reason = reason.to_string();
        self.engine
            .write(move |c| dead_letter_in(c, id, claim, now, &reason, cascade))
            .await
    }

    async fn rollback_unsent_start(
        &self,
        access_session_id: i64,
        now: i64,
        reason: &str,
    ) -> Result<bool, StorageError> {
        let reason = reason.to_string();
        self.engine
            .write(move |c| {
                let start: Option<i64> = c
                    .prepare_cached(
                        "SELECT id FROM accounting_outbox WHERE access_session_id = ? AND status_type = ? \
                         AND delivered_at IS NULL AND dead_at IS NULL AND transmissions = 0 AND claimed_until IS NULL",
                    )?
                    .query_row(params![access_session_id, status_type::START], |r| r.get(0))
                    .optional()?;
                let Some(id) = start else {
                    return Ok(false);
                };
                let _closed = dead_letter_in(c, id, None, now, &reason, true)?;
                Ok(true)
            })
            .await
    }

    async fn end_abandoned_sign_ins(
        &self,
        started_before: i64,
        now: i64,
    ) -> Result<Vec<i64>, StorageError> {
        self.engine
            .write(move |c| {
                let found: Vec<(i64, i64)> = c
                    .prepare_cached(
                        "SELECT s.id, s.started_at FROM accounting_outbox o \
                         JOIN access_sessions s ON s.id = o.access_session_id \
                         WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.status_type = ?1 \
                         AND (o.claimed_until IS NULL OR o.claimed_until < ?2) \
                         AND s.state = 'active' AND s.started_at < ?3",
                    )?
                    .query_map(params![status_type::START, now, started_before], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let mut ended = Vec::new();
                for (session, started_at) in found {
                    if stop_in(c, session, terminate_cause::NAS_ERROR, started_at, None)? {
                        ended.push(session);
                    }
                }
                Ok(ended)
            })
            .await
    }

    async fn session_outbox(
        &self,
        access_session_id: i64,
    ) -> Result<Vec<OutboxEntry>, StorageError> {
        self.engine.read(|c| {
            Ok(c.prepare_cached(concat!(
                "SELECT ",
                outbox_entry_columns!(""),
                " FROM accounting_outbox WHERE access_session_id = ? ORDER BY id"
            ))?
            .query_map([access_session_id], outbox_entry_from_row)?
            .collect::<Result<_, _>>()?)
        })
    }

    async fn dead_letters(
        &self,
        limit: i64,
    ) -> Result<Vec<(OutboxEntry, String, String)>, StorageError> {
        self.engine
            .read_long(move |c| {
                Ok(c.prepare_cached(concat!(
                    "SELECT ",
                    outbox_entry_columns!("o."),
                    ", s.acct_session_id, s.organization_id \
                     FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
                     WHERE o.dead_at IS NOT NULL ORDER BY o.dead_at DESC, o.id DESC LIMIT ?"
                ))?
                .query_map([limit], |r| {
                    Ok((outbox_entry_from_row(r)?, r.get(9)?, r.get(10)?))
                })?
                .collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn waiting_rows(&self, limit: i64) -> Result<Vec<WaitingRow>, StorageError> {
        self.engine
            .read_long(move |c| {
                Ok(c.prepare_cached(concat!(
                    "SELECT ",
                    outbox_entry_columns!("o."),
                    ", s.acct_session_id, s.organization_id, s.username, s.client_ip, s.server_name, \
                     o.created_at, o.next_attempt_at, o.claimed_until \
                     FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
                     WHERE o.delivered_at IS NULL AND o.dead_at IS NULL ORDER BY o.created_at, o.id LIMIT ?"
                ))?
                .query_map([limit], |r| {
                    Ok(WaitingRow {
                        entry: outbox_entry_from_row(r)?,
                        acct_session_id: r.get(9)?,
                        organization_id: r.get(10)?,
                        username: r.get(11)?,
                        client_ip: r.get(12)?,
                        server_name: r.get(13)?,
                        created_at: r.get(14)?,
                        next_attempt_at: r.get(15)?,
                        claimed_until: r.get(16)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
            })
            .await
    }

    async fn retry_pending_now(&self, now: i64) -> Result<u64, StorageError> {
        self.engine
            .write_relaxed(move |c| {
                Ok(c.prepare_cached(concat!(
                    "UPDATE accounting_outbox AS o SET next_attempt_at = ?1 WHERE ",
                    pending_o!(),
                    " AND o.next_attempt_at > ?1"
                ))?
                .execute([now])? as u64)
            })
            .await
    }

    async fn announce_accounting(&self) -> Result<(), StorageError> {
        // One process on the file: its own loop was woken by whoever changed the rows.
        Ok(())
    }

    async fn retry_row_at(&self, id: i64, at: i64) -> Result<bool, StorageError> {
        self.engine
            .write_relaxed(move |c| {
                Ok(c.prepare_cached(concat!(
                    "UPDATE accounting_outbox AS o SET next_attempt_at = MIN(o.next_attempt_at, ?1) WHERE o.id = ?2 AND ",
                    pending_o!()
                ))?
                .execute([at, id])?
                    > 0)
            })
            .await
    }

    async fn next_outbox_attempt(&self) -> Result<Option<i64>, StorageError> {
        // A scan of the pending rows (all of them during an outage): off the async threads.
        self.engine
            .read_long(|c| {
                Ok(c.prepare_cached(concat!(
                    "SELECT MIN(MAX(o.next_attempt_at, COALESCE(o.claimed_until, 0))) FROM accounting_outbox o WHERE ",
                    pending_o!(),
                    " AND ",
                    head_o!()
                ))?
                .query_row([], |r| r.get(0))?)
            })
            .await
    }

    async fn prune(&self, before: i64, limit: i64) -> Result<u64, StorageError> {
        self.engine
            .write_relaxed(move |c| {
                let ids: Vec<i64> = c
                    .prepare_cached(
                        "SELECT s.id FROM access_sessions s WHERE s.state = 'stopped' AND s.stopped_at < ? \
                         AND NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = s.id \
                                         AND p.delivered_at IS NULL AND p.dead_at IS NULL) \
                         ORDER BY s.stopped_at LIMIT ?",
                    )?
                    .query_map([before, limit], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut history = c.prepare_cached(
                    "DELETE FROM accounting_outbox WHERE access_session_id = ? \
                     AND (delivered_at IS NOT NULL OR dead_at IS NOT NULL)",
                )?;
                let mut session = c.prepare_cached(
                    "DELETE FROM access_sessions WHERE id = ? \
                     AND NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = access_sessions.id)",
                )?;
                let mut removed = 0u64;
                for id in ids {
                    history.execute([id])?;
                    removed += session.execute([id])? as u64;
                }
                Ok(removed)
            })
            .await
    }

    async fn metrics_snapshot(&self, now: i64) -> Result<crate::metrics::Snapshot, StorageError> {
        let database_commits = Some(self.engine.commit_counts());
        self.engine
            .read_long(move |c| {
                let active_sessions: Vec<(String, i64)> = c
                    .prepare_cached(
                        "SELECT organization_id, COUNT(*) FROM access_sessions WHERE state = 'active' GROUP BY organization_id",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let (backlog, oldest): (i64, Option<i64>) = c.prepare_cached(
                    "SELECT COUNT(*), MIN(created_at) FROM accounting_outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let (dead_letters, dead_stops, dead_stops_last_day): (i64, i64, i64) = c
                    .prepare_cached(
                        "SELECT COUNT(*), COUNT(*) FILTER (WHERE status_type = ?1 AND dead_reason IS NOT ?2), \
                         COUNT(*) FILTER (WHERE status_type = ?1 AND dead_reason IS NOT ?2 AND dead_at > ?3) \
                         FROM accounting_outbox WHERE dead_at IS NOT NULL",
                    )?
                    .query_row(
                        params![
                            status_type::STOP,
                            super::NEVER_STARTED,
                            now - crate::metrics::DEAD_STOPS_RECENT_MS
                        ],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                let (overdue, oldest_end): (i64, Option<i64>) = c
                    .prepare_cached(
                        "SELECT COUNT(*), MIN(expires_at) FROM access_sessions WHERE state = 'active' AND expires_at < ?1",
                    )?
                    .query_row(
                        [now.saturating_sub(crate::metrics::OVERDUE_AFTER_MS)],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                Ok(crate::metrics::Snapshot {
                    active_sessions,
                    sessions_overdue: overdue,
                    oldest_overdue: super::overdue_by(now, oldest_end),
                    outbox_backlog: backlog,
                    outbox_oldest: std::time::Duration::from_millis(
                        oldest.map_or(0, |o| now.saturating_sub(o).max(0) as u64),
                    ),
                    dead_letters,
                    dead_stops,
                    dead_stops_last_day,
                    database_commits,
                    ..Default::default()
                })
            })
            .await
    }

    async fn dynauth_answer_given(
        &self,
        request: &str,
        now: i64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let request = request.to_owned();
        self.engine
            .read_long(move |c| {
                Ok(c.prepare_cached(
                    "SELECT reply FROM dynauth_requests WHERE request = ? AND until > ?",
                )?
                .query_row(params![request, now], |r| r.get(0))
                .optional()?)
            })
            .await
    }

    async fn record_dynauth_answer(
        &self,
        request: &str,
        reply: Vec<u8>,
        until: i64,
        now: i64,
    ) -> Result<(), StorageError> {
        let request = request.to_owned();
        let acked = super::acknowledges(&reply);
        self.engine
            .write_relaxed_small(move |c| {
                c.prepare_cached("DELETE FROM dynauth_requests WHERE until <= ?")?
                    .execute([now])?;
                c.prepare_cached(
                    "INSERT INTO dynauth_requests (request, until, reply) VALUES (?, ?, ?) \
                     ON CONFLICT (request) DO UPDATE SET until = excluded.until, reply = excluded.reply \
                     WHERE dynauth_requests.until <= ? OR ?",
                )?
                .execute(params![request, until, reply, now, acked])?;
                Ok(())
            })
            .await
    }

    async fn outbox_backlog(&self) -> Result<i64, StorageError> {
        self.engine
            .read_long(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM accounting_outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    async fn outbox_delivered(
        &self,
        access_session_id: i64,
        status_type: u32,
    ) -> Result<bool, StorageError> {
        self.engine.read(|c| {
            let delivered: Option<Option<i64>> = c
                .prepare_cached(
                    "SELECT delivered_at FROM accounting_outbox WHERE access_session_id = ? AND status_type = ? \
                     AND destination = 'auth-server' AND dead_at IS NULL ORDER BY id DESC LIMIT 1",
                )?
                .query_row(params![access_session_id, status_type], |r| r.get(0))
                .optional()?;
            Ok(delivered.flatten().is_some())
        })
    }

    async fn stops_due_at(
        &self,
        organization_id: &str,
        client_ip: &str,
        now: i64,
        since: i64,
        until: i64,
    ) -> Result<AddressStops, StorageError> {
        self.engine.read(|c| {
            // Through the pending rows that came due lately or come due soon (those on their
            // way: few but in a recovery), not the sessions.
            let mut stops = AddressStops::default();
            for row in c
                .prepare_cached(
                    "SELECT o.access_session_id, MAX(o.next_attempt_at <= ?3 AND NOT EXISTS ( \
                       SELECT 1 FROM accounting_outbox e WHERE e.access_session_id = o.access_session_id \
                       AND e.destination = o.destination AND e.id < o.id AND e.delivered_at IS NULL \
                       AND e.dead_at IS NULL AND (e.status_type != 3 OR e.next_attempt_at > ?3))) \
                     FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
                     WHERE o.delivered_at IS NULL AND o.dead_at IS NULL \
                     AND o.next_attempt_at <= MAX(?3, ?6) AND o.next_attempt_at > ?5 \
                     AND o.status_type = ?4 AND s.client_ip = ?2 AND s.organization_id = ?1 \
                     GROUP BY o.access_session_id ORDER BY MIN(o.id) LIMIT 32",
                )?
                .query_map(
                    params![
                        organization_id,
                        client_ip,
                        now,
                        status_type::STOP,
                        since,
                        until
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
                )?
            {
                let (id, due) = row?;
                if due { &mut stops.due } else { &mut stops.coming }.push(id);
            }
            Ok(stops)
        })
    }
}

/// Before Stop row `stop_row` is recorded delivered: the newer session of its organization and
/// address whose Start was acknowledged before it gets an Interim-Update queued at `now` (see
/// [`SessionStore::mark_delivered`]); its id. Nothing for a row recorded already.
fn reassert_successor(
    c: &Connection,
    stop_row: i64,
    now: i64,
) -> Result<Option<(i64, bool)>, StorageError> {
    let successor: Option<(i64, i64, bool)> = c
        .prepare_cached(concat!(
            "SELECT s.id, s.started_at, (SELECT MIN(o.delivered_at) FROM accounting_outbox o \
               WHERE o.access_session_id = s.id AND o.status_type = ?2 AND o.destination = ?3) <= ?4 \
             FROM accounting_outbox d \
             JOIN access_sessions r ON r.id = d.access_session_id \
             JOIN access_sessions s ON s.client_ip = r.client_ip AND s.organization_id = r.organization_id \
               AND s.state = 'active' AND s.id > r.id AND s.expires_at > ?4 \
             WHERE d.id = ?1 AND d.delivered_at IS NULL AND EXISTS ( \
               SELECT 1 FROM accounting_outbox o WHERE o.access_session_id = s.id \
               AND o.status_type = ?2 AND o.destination = ?3 AND o.delivered_at IS NOT NULL) AND ",
            // One an operator's stop (a disable) waits for gets none, as no periodic one: its
            // Stop is dated when the stop was asked for, never before a queued Interim-Update.
            super::no_stop_pending!(),
            " ORDER BY s.id DESC LIMIT 1"
        ))?
        .query_row(
            params![stop_row, status_type::START, AUTH_SERVER_DESTINATION, now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((id, started_at, late)) = successor else {
        return Ok(None);
    };
    enqueue_reassert(c, id, started_at, now)?;
    Ok(Some((id, late)))
}

/// See [`SessionStore::reassert_after_stops`].
fn reassert_after_stops_in(
    c: &Connection,
    id: i64,
    after: &AfterStops<'_>,
    now: i64,
) -> Result<Option<bool>, StorageError> {
    // The latest acknowledgement of those Stops (own or copies).
    let mut latest: Option<i64> = None;
    for session in after.earlier {
        let acknowledged: Option<i64> = c
            .prepare_cached(
                "SELECT MAX(delivered_at) FROM accounting_outbox WHERE access_session_id = ?1 \
                 AND status_type = ?2",
            )?
            .query_row(params![session, status_type::STOP], |r| r.get(0))?;
        latest = latest.max(acknowledged);
    }
    let Some(latest) = latest.filter(|at| *at >= after.since) else {
        return Ok(None);
    };
    let started_at: Option<i64> = c
        .prepare_cached(concat!(
            "SELECT s.started_at FROM access_sessions s \
             WHERE s.id = ?1 AND s.state = 'active' AND s.expires_at > ?2 AND ",
            super::no_stop_pending!()
        ))?
        .query_row(params![id, now], |r| r.get(0))
        .optional()?;
    let Some(started_at) = started_at else {
        return Ok(None);
    };
    enqueue_reassert(c, id, started_at, now)?;
    Ok(Some(latest >= after.left))
}

/// Remembers that `server` was sent a packet of session `access_session_id` (it may hold the
/// session open: see [`SessionStore::mark_delivered`]).
fn remember_sent(c: &Connection, access_session_id: i64, server: &str) -> Result<(), StorageError> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO accounting_sent (access_session_id, server) VALUES (?, ?)",
    )?
    .execute(params![access_session_id, server])?;
    Ok(())
}

/// See [`SessionStore::claim_session_outbox`].
fn claim_session_in(
    c: &Connection,
    access_session_id: i64,
    status_type: u32,
    now: i64,
    lease_until: i64,
) -> Result<Option<OutboxRow>, StorageError> {
    Ok(c.prepare_cached(concat!(
        "UPDATE accounting_outbox SET claimed_until = ?1, attempts = attempts + 1 WHERE id = ( \
               SELECT o.id FROM accounting_outbox o \
               WHERE o.access_session_id = ?2 AND o.status_type = ?3 AND o.destination = 'auth-server' AND ",
        pending_o!(),
        " AND (o.claimed_until IS NULL OR o.claimed_until < ?4) AND ",
        head_o!(),
        " ORDER BY o.id LIMIT 1) RETURNING ",
        outbox_columns!()
    ))?
    .query_row(
        params![lease_until, access_session_id, status_type, now],
        outbox_from_row,
    )
    .optional()?)
}

/// See [`SessionStore::open_session`].
fn open_session_in(c: &Connection, new: &NewAccessSession) -> Result<OpenedSession, StorageError> {
    // Defence in depth against a disable racing the login: writers are serialized, so either
    // this session commits first (and the disable's stop job sees it) or the flag is already
    // off here and nothing is created.
    let found: Option<(bool, i64)> = c
        .prepare_cached("SELECT is_active, revision FROM organizations WHERE id = ?")?
        .query_row([&new.organization_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((true, revision)) = found else {
        return Err(StorageError::OrganizationDisabled);
    };
    if new
        .organization_revision
        .is_some_and(|worked_out| worked_out != revision)
    {
        return Err(StorageError::OrganizationChanged);
    }
    let replaces = match new.replaces {
        Some(id) => browsers_session_in(c, id)?,
        None => None,
    };
    let previous: Vec<i64> = c
        .prepare_cached(
            // Two look-ups, each on its index (an OR of the two would scan every active
            // session of the organization).
            "SELECT id FROM access_sessions WHERE client_ip = ?2 AND organization_id = ?1 AND state = 'active' \
             UNION SELECT id FROM access_sessions WHERE id = ?3 AND organization_id = ?1 AND state = 'active'",
        )?
        .query_map(
            params![new.organization_id, new.client_ip, replaces],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut stopped = Vec::new();
    for id in previous {
        // Ended by its deadline if that came first (not yet reached by the expiry pass), or by
        // an operator's stop still waiting for it — as every ad-hoc stop is.
        let Some((cause, at)) = ending_in(c, id, terminate_cause::PORT_PREEMPTED, new.started_at)?
        else {
            continue;
        };
        if stop_in(c, id, cause, at, None)? {
            stopped.push(Stopped {
                id,
                due_at: at,
                cause,
            });
        }
    }
    let accept_timeouts = super::AcceptTimeouts::columns(new.accept_timeouts);
    let id: i64 = c
        .prepare_cached(
            "INSERT INTO access_sessions (acct_session_id, organization_id, username, client_ip, server_index, server_name, \
             classes, reply_message, started_at, refreshed_at, window_ms, limit_at, expires_at, interim_interval, next_interim_at, state, \
             nas_ip, nas_identifier, sign_in_until, accept_idle_timeout, accept_session_timeout) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?) RETURNING id",
        )?
        .query_row(
            params![
                new.acct_session_id,
                new.organization_id,
                new.username,
                new.client_ip,
                new.server_index,
                new.server_name,
                encode_classes(&new.classes),
                new.reply_message,
                new.started_at,
                new.started_at,
                new.window_ms,
                new.limit_at,
                new.expires_at,
                new.interim_interval,
                new.interim_interval.map(|secs| new.started_at + secs * 1000),
                new.nas.as_ref().map(|nas| nas.ip.to_string()),
                new.nas.as_ref().map(|nas| nas.identifier.as_str()),
                new.start_claimed_until,
                accept_timeouts.0,
                accept_timeouts.1,
            ],
            |r| r.get(0),
        )?;
    insert_classes(c, id, &new.classes)?;
    if let Some(replaced) = replaces.filter(|r| stopped.iter().any(|s| s.id == *r)) {
        // Only the same user's sign-in sent together with it (see `replaced_by`).
        let user: Option<String> = c
            .prepare_cached(
                "SELECT username FROM access_sessions WHERE id = ?1 AND started_at >= ?2",
            )?
            .query_row(
                params![replaced, new.started_at - super::FOLLOWED_REPLACEMENT_MS],
                |r| r.get(0),
            )
            .optional()?;
        if user.is_some_and(|user| super::same_user(&user, &new.username)) {
            c.prepare_cached("UPDATE access_sessions SET replaced_by = ?1 WHERE id = ?2")?
                .execute(params![id, replaced])?;
        }
    }
    let start = enqueue(c, id, status_type::START, new.started_at, None, None)?;
    let claimed_start = match new.start_claimed_until {
        Some(until) => Some(
            c.prepare_cached(concat!(
                "UPDATE accounting_outbox SET claimed_until = ?, attempts = 1 WHERE id = ? RETURNING ",
                outbox_columns!()
            ))?
            .query_row([until, start], outbox_from_row)?,
        ),
        None => None,
    };
    audit_on(c, &Audit::login_accepted(new))?;
    Ok(OpenedSession {
        id,
        preempted: stopped,
        claimed_start,
    })
}

fn insert_classes(c: &Connection, id: i64, classes: &[Vec<u8>]) -> Result<(), StorageError> {
    let mut insert =
        c.prepare_cached("INSERT INTO session_classes (access_session_id, class) VALUES (?, ?)")?;
    for class in classes {
        insert.execute(params![id, class])?;
    }
    Ok(())
}

/// The session a browser linked to session `id` holds: `id`, or the session a sign-in of that
/// browser replaced it with, followed (at most [`super::REPLACEMENTS_FOLLOWED`] times) while
/// each was replaced so; None if `id` does not exist.
fn browsers_session_in(c: &Connection, id: i64) -> Result<Option<i64>, StorageError> {
    let mut at = id;
    for _ in 0..super::REPLACEMENTS_FOLLOWED {
        let found: Option<(String, Option<i64>)> = c
            .prepare_cached("SELECT state, replaced_by FROM access_sessions WHERE id = ?")?
            .query_row([at], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match found {
            None => return Ok(None),
            Some((state, Some(next))) if state != "active" => at = next,
            Some(_) => break,
        }
    }
    Ok(Some(at))
}

/// See [`SessionStore::dead_letter`].
fn dead_letter_in(
    c: &Connection,
    id: i64,
    claim: Option<i64>,
    now: i64,
    reason: &str,
    cascade: bool,
) -> Result<bool, StorageError> {
    let session: Option<i64> = c
        .prepare_cached(
            "UPDATE accounting_outbox SET dead_at = ?, dead_reason = ?, claimed_until = NULL \
             WHERE id = ? AND delivered_at IS NULL AND (?4 IS NULL OR attempts = ?4) RETURNING access_session_id",
        )?
        .query_row(params![now, reason, id, claim], |r| r.get(0))
        .optional()?;
    if let (Some(session), true) = (session, cascade) {
        c.prepare_cached(
            "UPDATE accounting_outbox SET dead_at = ?1, dead_reason = ?4, claimed_until = NULL \
             WHERE access_session_id = ?2 AND id > ?3 AND delivered_at IS NULL AND dead_at IS NULL",
        )?
        .execute(params![now, session, id, super::NEVER_STARTED])?;
        c.prepare_cached(
            "UPDATE access_sessions SET state = 'stopped', stopped_at = ?, terminate_cause = ? \
             WHERE id = ? AND state = 'active'",
        )?
        .execute(params![now, terminate_cause::NAS_ERROR, session])?;
    }
    Ok(session.is_some())
}

/// How a stop asked for with `cause` at `at` ends active session `id`
/// ([`crate::access_session::timing::ending`], from its stored deadline and the operator's
/// stops waiting for it); None if it is not active.
fn ending_in(
    c: &Connection,
    id: i64,
    cause: u32,
    at: i64,
) -> Result<Option<(u32, i64)>, StorageError> {
    let ends: Option<(i64, Option<i64>, Option<i64>)> = c
        .prepare_cached(concat!(
            "SELECT s.expires_at, s.limit_at, ",
            super::stop_asked_at!(),
            " FROM access_sessions s WHERE s.id = ? AND s.state = 'active'"
        ))?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(ends.map(|(expires_at, limit_at, asked_at)| {
        crate::access_session::timing::ending(cause, at, expires_at, limit_at, asked_at)
    }))
}

/// Stops `id` if active and queues its Stop (Acct-Session-Time up to `event_at`). `due_by` makes
/// the stop conditional on the deadline still being due (a concurrent refresh wins).
fn stop_in(
    c: &Connection,
    id: i64,
    cause: u32,
    event_at: i64,
    due_by: Option<i64>,
) -> Result<bool, StorageError> {
    // Never before what the session already said of itself: its start, its last refresh and
    // any Interim-Update queued (a stop asked for while no portal ran, run after the restart
    // queued the overdue Interims; another machine's clock): a Stop dated before them could be
    // dropped as stale by a server keeping the latest event.
    let ended: Option<(i64, i64, String, String, String, String)> = c
        .prepare_cached(
            "UPDATE access_sessions SET state = 'stopped', stopped_at = MAX(?1, started_at, refreshed_at, \
               COALESCE((SELECT MAX(o.event_at) FROM accounting_outbox o \
                 WHERE o.access_session_id = access_sessions.id AND o.status_type = 3), 0)), terminate_cause = ?2 \
             WHERE id = ?3 AND state = 'active' AND (?4 IS NULL OR expires_at <= ?4) \
             RETURNING started_at, stopped_at, organization_id, username, client_ip, acct_session_id",
        )?
        .query_row(params![event_at, cause, id, due_by], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((started_at, event_at, organization_id, username, client_ip, acct_session_id)) = ended
    else {
        return Ok(false);
    };
    let session_time = super::whole_seconds_between(started_at, event_at);
    audit_on(
        c,
        &Audit {
            at: event_at,
            actor: session_end_actor(cause),
            action: "session.end",
            organization_id: Some(&organization_id),
            detail: serde_json::json!({
                "acct_session_id": acct_session_id,
                "username": username,
                "client_ip": client_ip,
                "terminate_cause": cause,
                "session_time_s": session_time,
            }),
        },
    )?;
    enqueue(
        c,
        id,
        status_type::STOP,
        event_at,
        Some(session_time),
        Some(cause),
    )?;
    Ok(true)
}

/// Whether session `id`'s last Interim-Update (periodic, or a refresh's) was queued less than
/// [`crate::access_session::REFRESH_QUIET_MS`] before `now`: a refresh then queues none of its
/// own (two a few milliseconds apart said nothing more; black-box tester R).
fn interim_just_queued(c: &Connection, id: i64, now: i64) -> Result<bool, StorageError> {
    let last: Option<i64> = c
        .prepare_cached(
            "SELECT next_interim_at - interim_interval * 1000 FROM access_sessions WHERE id = ?",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(last.is_some_and(|last| (now - last).abs() < crate::access_session::REFRESH_QUIET_MS))
}

/// Queues an Interim-Update at `now` with the session time since `started_at`.
fn enqueue_interim(
    c: &Connection,
    access_session_id: i64,
    started_at: i64,
    now: i64,
) -> Result<(), StorageError> {
    // Coalesce: an Interim-Update not yet on its way is superseded by this newer one (an outage
    // must not pile up one row per refresh or per interval). Not a copy of one
    // ([`enqueue_reassert`]): its server has had no Interim-Update of the session since.
    c.prepare_cached(
        "DELETE FROM accounting_outbox WHERE access_session_id = ? AND status_type = ? \
         AND destination = ? AND delivered_at IS NULL AND dead_at IS NULL AND claimed_until IS NULL",
    )?
    .execute(params![
        access_session_id,
        status_type::INTERIM_UPDATE,
        AUTH_SERVER_DESTINATION
    ])?;
    let session_time = Some(super::whole_seconds_between(started_at, now));
    enqueue(
        c,
        access_session_id,
        status_type::INTERIM_UPDATE,
        now,
        session_time,
        None,
    )
    .map(|_| ())
}

/// The Interim-Update that asserts a session's user again after a late Stop at its address
/// ([`SessionStore::mark_delivered`]): to its server, and a copy to each other server that
/// may hold the session open (sent a packet of it: `accounting_sent` — a Start that failed
/// over, unanswered at a server that processes its backlog later), which may have had the late
/// Stop after the session's Start too. Copies not yet on their way are superseded.
fn enqueue_reassert(
    c: &Connection,
    access_session_id: i64,
    started_at: i64,
    now: i64,
) -> Result<(), StorageError> {
    // Never dated before the session's start: `now` was read before this write waited its
    // turn, and a session may have opened meanwhile (its Start acknowledged since).
    let now = now.max(started_at);
    enqueue_interim(c, access_session_id, started_at, now)?;
    c.prepare_cached(
        "DELETE FROM accounting_outbox WHERE access_session_id = ?1 AND status_type = ?2 \
         AND destination != ?3 AND delivered_at IS NULL AND dead_at IS NULL AND claimed_until IS NULL",
    )?
    .execute(params![
        access_session_id,
        status_type::INTERIM_UPDATE,
        AUTH_SERVER_DESTINATION
    ])?;
    c.prepare_cached(
        "INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, \
         session_time_secs, next_attempt_at, created_at) \
         SELECT t.access_session_id, ?1 || t.server, ?2, ?3, ?4, ?3, ?3 \
         FROM accounting_sent t JOIN access_sessions s ON s.id = t.access_session_id \
         WHERE t.access_session_id = ?5 AND t.server != s.server_name",
    )?
    .execute(params![
        super::SERVER_DESTINATION_PREFIX,
        status_type::INTERIM_UPDATE,
        now,
        super::whole_seconds_between(started_at, now),
        access_session_id
    ])?;
    Ok(())
}

fn enqueue(
    c: &Connection,
    access_session_id: i64,
    status_type: u32,
    event_at: i64,
    session_time_secs: Option<i64>,
    cause: Option<u32>,
) -> Result<i64, StorageError> {
    c.prepare_cached(
        "INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, session_time_secs, \
         terminate_cause, next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4, ?4)",
    )?
    .execute(params![
        access_session_id,
        AUTH_SERVER_DESTINATION,
        status_type,
        event_at,
        session_time_secs,
        cause
    ])?;
    Ok(c.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    /// A file system with less left than asked for is said full, naming the directory that
    /// holds (or would hold) the database; this one has room.
    #[test]
    fn a_full_file_system_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-yet").join("portal.db");
        assert_eq!(super::space_problem(&path), None);
        let said = super::space_below(&path, u64::MAX).expect("said full");
        assert!(
            said.contains(&format!("{} is full", dir.path().display())),
            "{said}"
        );
    }
}
