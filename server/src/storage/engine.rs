//! The SQLite engine under [`super::Storage`]: rusqlite connections used where the caller runs
//! (a read of a few indexed rows costs microseconds; no thread hop per statement) and one writer
//! thread that commits whatever writes are queued together (group commit: one fsync for a batch).
//!
//! A write is a closure run on the writer's connection inside the batch's transaction: an
//! `Err` rolls back that write alone (the batch runs again with a savepoint per write, so a
//! write's closure may run twice and must not depend on having run once). Its result reaches the caller only after
//! the batch's COMMIT returned (synchronous=FULL), so an acknowledged write survives power loss.
//! If the COMMIT fails, every write of the batch gets the error and none happened.
//!
//! A write may be *relaxed* ([`Engine::write_relaxed`]): bookkeeping whose loss on power failure
//! is harmless (a delivery mark: the row is sent again, idempotent; a claim: claims are void
//! after a restart anyway). A batch of relaxed writes only commits without the fsync
//! (synchronous=NORMAL); the next durable batch's fsync makes it durable too, because the WAL is
//! written in order — so a relaxed write can be lost only together with everything after it, and
//! never a durable write before it. Any durable write in a batch makes the whole batch FULL.
//!
//! A small relaxed write ([`Engine::write_relaxed_small`]: a row or two) that finds the writer
//! idle (nothing queued or running, the write gate free) commits right where it was made instead
//! of waking the writer thread: no fsync waits on it, so it costs the caller microseconds, and
//! two thread hand-offs less (for one user, ~0.1 ms of each login and sign-out). Order is kept:
//! it only happens while no earlier write is pending.

use super::StorageError;
use rusqlite::{Connection, OpenFlags};
use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Writes committed together at most (a batch's latency grows with it).
const MAX_BATCH: usize = 256;
/// Writes queued at most; beyond, a write fails at once ("database overloaded") rather than
/// letting memory and latency grow without bound.
const MAX_QUEUED: usize = 65_536;
/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// Long reads (scans) running at once, on blocking threads.
const MAX_LONG_READS: usize = 4;
/// A queued write waiting this long without any batch finishing: the writer is stalled.
const STALL_MS: i64 = 10_000;
/// Bytes of the database file each connection maps into memory: none. A growing database made
/// every connection remap it after each checkpoint (TLB shoot-downs on every core); reading
/// through the page cache measured 3-10 % less CPU per journey (docs/BENCHMARKS.md), and an I/O
/// error stays an error instead of a SIGBUS.
const MMAP_SIZE: i64 = 0;
/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes between two WAL checkpoints (an unbatched write appends ~10-30 pages: about SQLite's
/// default of a checkpoint per 1000 pages). The write connection never checkpoints on its own
/// (`wal_autocheckpoint = 0`): a checkpoint copies pages into the database file and fsyncs it,
/// and runs on the writer thread only — never on the caller's thread of a write committed there.
const CHECKPOINT_EVERY: usize = 64;
/// Under load, at most one checkpoint per this long: batched writes append only a page or two
/// each, to the same hot pages, so 64 of them are a few dozen pages — and a checkpoint's two
/// fsyncs cost the same however few pages it copies (a checkpoint per 64 writes was a fifth of
/// the writer thread's CPU at 64 users, docs/BENCHMARKS.md). The WAL then holds at most what
/// is written in this time.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// Writes after which a checkpoint is due however recent the last one (bounds the WAL).
const CHECKPOINT_LIMIT: usize = 4096;

/// The clock a stalled writer is told by: milliseconds (from 1) on the monotonic clock since
/// the first look — a step of the wall clock is no stall, and hides none.
fn stall_clock_ms() -> i64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    i64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis())
        .unwrap_or(i64::MAX)
        .saturating_add(1)
}

/// What a request gets from a stalled writer ([`Engine::waited`]).
fn stalled_error() -> StorageError {
    StorageError::Unreachable(format!(
        "the database has finished no write for {} s (its disk hung or far too slow?): the request stopped waiting",
        STALL_MS / 1000
    ))
}

/// Whether a checkpoint is due after `unchecked` writes, `since` the last one.
fn checkpoint_due(unchecked: usize, since: Duration, interval: Duration) -> bool {
    unchecked >= CHECKPOINT_LIMIT || (unchecked >= CHECKPOINT_EVERY && since >= interval)
}

/// Handle to the engine. Cheap to clone; the writer thread ends with the last handle.
#[derive(Clone)]
pub(crate) struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: mpsc::SyncSender<Box<dyn WriteJob>>,
    /// The write connection: the writer thread's, lent to an idle-time relaxed write.
    write_conn: Arc<Mutex<WriteConn>>,
    writer: std::thread::JoinHandle<()>,
    readers: Mutex<Vec<Connection>>,
    long_reads: tokio::sync::Semaphore,
    progress: Arc<Progress>,
    /// Held by the writer thread for each batch and by this process's sqlx transactions
    /// (organization store): FIFO, so neither starves the other of SQLite's write lock.
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// The one write connection and the synchronous mode it is in.
struct WriteConn {
    conn: Connection,
    /// True: synchronous = FULL.
    synced: bool,
    /// Writes committed since the last checkpoint.
    unchecked: usize,
    /// When the last checkpoint ran.
    checkpointed_at: Instant,
    /// [`CHECKPOINT_INTERVAL`] (shorter in tests).
    checkpoint_interval: Duration,
    /// The files under it, watched for being removed or replaced (none for a read-only engine).
    files: Option<FileWatch>,
}

/// The database file and its WAL as they were when the engine opened them. Removed or replaced
/// while the portal runs (an operator's mistake, a cleanup script), the open connections would
/// go on writing into files no one can open again: everything since would be gone at the next
/// start, Starts whose Stops were never sent among it. So a look at least every
/// [`CHECKPOINT_INTERVAL`] that finds them gone saves what the open database holds — a copy
/// beside it ([`saved_copy_of`]: the next start refuses to run while it is there), or, when only
/// the WAL went, its pages checkpointed into the database file — and every write is refused from
/// then on (503, `/readyz` not ready) until the portal is restarted. A save that fails (a full
/// disk, a reader holding the WAL) is tried again at the next look.
struct FileWatch {
    path: PathBuf,
    wal: PathBuf,
    /// (device, inode) of each; the WAL's once it exists.
    db_id: Option<(u64, u64)>,
    wal_id: Option<(u64, u64)>,
    /// What was found, once it was: every write is refused with it.
    lost: Option<Lost>,
    /// Until when a failed save waits before the next try (doubling, at most
    /// [`SAVE_BACKOFF_MAX`]: each try copies the whole database).
    retry_at: Instant,
    retry_wait: Duration,
    /// When the files were last looked at: at most every [`CHECKPOINT_INTERVAL`] (two `stat`s
    /// per commit would be a cost on every write; what is written meanwhile is in what is saved).
    checked_at: Instant,
}

/// Which of the engine's files went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gone {
    Database,
    Wal,
}

/// The engine's files went (see [`FileWatch`]).
struct Lost {
    gone: Gone,
    /// Where what the open database held was saved, once it was.
    saved: Option<String>,
}

/// A file's (device, inode): `Ok(None)` if it is not there, `Err` if that cannot be told now
/// (a permission or I/O error: no verdict on that look).
fn file_id(path: &Path) -> Result<Option<(u64, u64)>, ()> {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        #[cfg(unix)]
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        #[cfg(not(unix))]
        Ok(_) => Ok(Some((0, 0))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// The name a copy of the database at `path` is saved under when its file went while the
/// portal ran (`<path>.saved-<unix ms>`); [`saved_copies_of`] finds them.
fn saved_copy_of(path: &Path, now_ms: i64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".saved-{now_ms}"));
    PathBuf::from(name)
}

/// Where a copy is written before it is renamed to its [`saved_copy_of`] name (a save cut
/// short leaves this name, never a partial copy under the saved one).
fn saving_copy_of(saved: &Path) -> PathBuf {
    let mut name = saved.as_os_str().to_owned();
    name.push(".saving");
    PathBuf::from(name)
}

/// Copies saved beside the database at `path` ([`saved_copy_of`]: `.saved-` and digits only),
/// oldest first.
pub(crate) fn saved_copies_of(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.saved-", name.to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix(&prefix)
                        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

impl FileWatch {
    fn new(path: &Path) -> FileWatch {
        // SQLite names the WAL after the file a symbolic link leads to.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        FileWatch {
            db_id: file_id(&path).ok().flatten(),
            wal_id: file_id(&wal).ok().flatten(),
            path,
            wal,
            lost: None,
            checked_at: Instant::now(),
            retry_at: Instant::now(),
            retry_wait: CHECKPOINT_INTERVAL,
        }
    }

    /// Whether a look at the files is due (a write committed on its caller's thread leaves it
    /// to the writer thread, which is outside a transaction when it looks).
    fn due(&self) -> bool {
        match &self.lost {
            None => self.checked_at.elapsed() >= CHECKPOINT_INTERVAL,
            Some(lost) => lost.saved.is_none() && Instant::now() >= self.retry_at,
        }
    }

    /// What is refused and why, once the files went.
    fn refusal(&self) -> Option<String> {
        let lost = self.lost.as_ref()?;
        let path = self.path.display();
        let what = match lost.gone {
            Gone::Database => {
                format!("the database file {path} was removed or replaced while the portal runs")
            }
            Gone::Wal => format!(
                "the database's WAL file {path}-wal was removed or replaced while the portal runs"
            ),
        };
        let next = match (&lost.saved, lost.gone) {
            (Some(copy), Gone::Database) => format!("what it held is saved in {copy}: stop the portal, remove {path} (and its -wal and -shm files) if there, move {copy} to {path}, and start it again"),
            (Some(_), Gone::Wal) => "its pages are in the database file now: restart the portal".to_string(),
            (None, _) => "saving what it held has not succeeded yet (tried again after a quarter second, waiting twice as long after each failure, up to 5 s): do not stop the portal".to_string(),
        };
        Some(format!(
            "{what}; {next}; until then every change is refused"
        ))
    }
}

/// Whether the engine's files are still the ones it writes (see [`FileWatch`]); `Err` says why
/// not. Outside a transaction (`may_save`), a look that is due looks, and saves what it can.
fn check_files(conn: &mut WriteConn, progress: &Progress, may_save: bool) -> Result<(), String> {
    let Some(files) = conn.files.as_mut() else {
        return Ok(());
    };
    if !may_save || !files.due() {
        return files.refusal().map_or(Ok(()), Err);
    }
    files.checked_at = Instant::now();
    let found_now = files.lost.is_none();
    if found_now {
        // A look that cannot tell (a permission or I/O error) decides nothing.
        let (Ok(db_now), Ok(wal_now)) = (file_id(&files.path), file_id(&files.wal)) else {
            return Ok(());
        };
        if files.wal_id.is_none() {
            files.wal_id = wal_now;
        }
        let gone = if db_now != files.db_id {
            Gone::Database
        } else if files.wal_id.is_some() && wal_now != files.wal_id {
            Gone::Wal
        } else {
            return Ok(());
        };
        files.lost = Some(Lost { gone, saved: None });
        progress.lost.store(true, Ordering::SeqCst);
    }
    let Some(lost) = files.lost.as_mut() else {
        return Ok(());
    };
    let saved = match lost.gone {
        Gone::Database => {
            let copy = saved_copy_of(&files.path, crate::access_session::now_ms());
            save_copy(&conn.conn, &copy).map(|()| copy.display().to_string())
        }
        // The database file is still there: the pages only the WAL held go into it.
        Gone::Wal => match conn
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            }) {
            Ok(0) => Ok(String::new()),
            Ok(_) => Err("a reader still holds the WAL".to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    match saved {
        Ok(copy) => {
            lost.saved = Some(copy);
            progress.saved.store(true, Ordering::SeqCst);
        }
        Err(e) => {
            files.retry_at = Instant::now() + files.retry_wait;
            // The wait before this next try (tester W's D3: the one after it was logged).
            tracing::error!(error = %e, retry_in = ?files.retry_wait, "saving what the database held failed; trying again");
            files.retry_wait = (files.retry_wait * 2).min(SAVE_BACKOFF_MAX);
        }
    }
    let refusal = files.refusal().unwrap_or_default();
    // Said when found and when saved; a save failing again is one line per try (above).
    if found_now || files.lost.as_ref().is_some_and(|l| l.saved.is_some()) {
        tracing::error!("{refusal}");
    }
    Err(refusal)
}

/// The longest wait between two tries to save what a removed database held.
const SAVE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Writes what the open database holds (its WAL's pages included) into a new file at `copy`,
/// readable by its owner only (it holds the secrets), synced with its directory.
fn save_copy(conn: &Connection, copy: &Path) -> Result<(), String> {
    let saving = saving_copy_of(copy);
    let text = saving
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", saving.display()))?;
    let mut create = std::fs::OpenOptions::new();
    create.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
    create
        .open(&saving)
        .map_err(|e| format!("cannot create {}: {e}", saving.display()))?;
    let saved = conn
        .execute("VACUUM INTO ?1", [text])
        .map_err(|e| e.to_string())
        .and_then(|_| {
            std::fs::File::open(&saving)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(&saving, copy))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&saving);
        return Err(e);
    }
    if let Some(dir) = copy.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

impl WriteConn {
    fn checkpoint_due(&self) -> bool {
        checkpoint_due(
            self.unchecked,
            self.checkpointed_at.elapsed(),
            self.checkpoint_interval,
        )
    }
}

/// A submitted write until it is answered or abandoned.
struct Queued<'a>(&'a Progress);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The writer thread at work (a batch, a checkpoint) until dropped.
struct Working<'a>(&'a Progress);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.working.store(0, Ordering::SeqCst);
    }
}

/// What `/readyz` needs to tell a stalled writer from an idle one, and what `/metrics` counts.
#[derive(Default)]
struct Progress {
    /// Writes submitted and not yet answered.
    queued: AtomicUsize,
    /// When the last batch finished ([`stall_clock_ms`]).
    last_batch: AtomicI64,
    /// When the writer thread began the batch or checkpoint it is at ([`stall_clock_ms`]; 0:
    /// waiting for work). A batch hung on the disk stays stalled when its callers have stopped
    /// waiting.
    working: AtomicI64,
    /// Transactions committed under synchronous = FULL and under NORMAL.
    commits_full: AtomicU64,
    commits_normal: AtomicU64,
    /// Writes committed (a transaction holds one or more).
    writes: AtomicU64,
    /// The last batch that wrote or tried to write found the database refusing writes (a full
    /// disk, a read-only file: not one write's own rule); cleared by the next commit that
    /// stores something.
    refusing: AtomicBool,
    /// When it last refused (unix ms).
    last_refusal: AtomicI64,
    /// A read or write found the database file damaged ("database disk image is malformed":
    /// a file copied over it while it ran, a disk fault): not writable until a restart.
    damaged: AtomicBool,
    /// The database's files were removed or replaced under it (see [`FileWatch`]).
    lost: AtomicBool,
    /// And what the open database held has been saved since.
    saved: AtomicBool,
}

impl Progress {
    /// A call met `error`: the file damaged is said once, and kept (black-box tester Q's D7: a
    /// file copied over the running portal's was found only by the requests that failed on it,
    /// and `/readyz` said ready while sessions came due unstopped).
    fn met(&self, error: &rusqlite::Error) {
        if sqlite_damage(error) {
            self.damage_found(error);
        }
    }

    /// The file was found damaged (by `error`): said once, and kept.
    fn damage_found(&self, error: &dyn std::fmt::Display) {
        if !self.damaged.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %error, "the database file is damaged (a file copied over it while the portal ran, a disk fault): sign-ins are refused and /readyz says not ready until the portal is restarted on a sound file (README, \"Backup and restore\")");
        }
    }

    /// The database refused a batch's writes.
    fn refused(&self) {
        self.last_refusal
            .store(crate::access_session::now_ms(), Ordering::SeqCst);
        self.refusing.store(true, Ordering::SeqCst);
    }
}

/// How long after a failed batch, with none committed since, the database counts as not
/// writable (`/readyz`): long enough to cover the retries that follow, short enough that an
/// idle portal whose disk was freed is ready again without writing to find out.
pub(crate) const FAILING_FOR_MS: i64 = 30_000;

/// A queued write, type-erased for the writer's channel.
trait WriteJob: Send {
    /// Must this write survive power loss once acknowledged?
    fn durable(&self) -> bool;
    /// Runs inside the batch's transaction; false: roll this write back. May run a second
    /// time (after the batch's first run was rolled back because another write failed): the
    /// outcome of the last run counts.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Whether its last run succeeded (false: it failed, or it never ran because its caller
    /// had gone away).
    fn succeeded(&self) -> bool;
    /// Whether its last run failed because the database refused to store anything (a full
    /// disk, a read-only or broken file), not by a rule of its own.
    fn refused_by_database(&self) -> bool;
    /// Tells `progress` what its last run's error was ([`Progress::met`]).
    fn tell(&self, progress: &Progress);
    /// Reports the outcome once the batch is over (`Err`: the batch was not committed).
    fn finish(self: Box<Self>, batch: Result<(), String>);
}

/// Whether `error` says the database cannot store anything now (rather than that one write
/// broke a rule).
fn database_refuses(error: &StorageError) -> bool {
    matches!(error, StorageError::Sqlite(e) if sqlite_refuses(e))
}

/// Whether SQLite says the database file is damaged ("database disk image is malformed", "file
/// is not a database").
pub(crate) fn sqlite_damage(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    matches!(error, rusqlite::Error::SqliteFailure(e, _)
        if matches!(e.code, DatabaseCorrupt | NotADatabase))
}

/// Whether SQLite says it cannot store anything now (not: busy, or a rule of one write).
pub(crate) fn sqlite_refuses(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, DiskFull | ReadOnly | SystemIoFailure | CannotOpen | DatabaseCorrupt | NotADatabase)
    )
}

struct Job<F, R> {
    durable: bool,
    work: F,
    result: Option<Result<R, StorageError>>,
    reply: tokio::sync::oneshot::Sender<Result<R, StorageError>>,
    /// Run here when the write is not stored, whether or not its caller still waits.
    on_failure: Option<OnFailure>,
}

/// What a write does when it is not stored (see [`Engine::write_relaxed_small_or`]).
type OnFailure = Box<dyn FnOnce() + Send>;

impl<F, R> WriteJob for Job<F, R>
where
    F: FnMut(&Connection) -> Result<R, StorageError> + Send,
    R: Send,
{
    fn durable(&self) -> bool {
        self.durable
    }

    fn run(&mut self, conn: &Connection) -> bool {
        if self.reply.is_closed() {
            // Its caller went away before it ran (a cancelled request): it never happens, and
            // there is nothing to roll back.
            self.result = None;
            return true;
        }
        let work = &mut self.work;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|_| Err(StorageError::Engine("a database write panicked".into())));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn succeeded(&self) -> bool {
        matches!(self.result, Some(Ok(_)))
    }

    fn refused_by_database(&self) -> bool {
        matches!(&self.result, Some(Err(e)) if database_refuses(e))
    }

    fn tell(&self, progress: &Progress) {
        if let Some(Err(StorageError::Sqlite(e))) = &self.result {
            progress.met(e);
        }
    }

    fn finish(self: Box<Self>, batch: Result<(), String>) {
        let outcome = match (self.result, batch) {
            // A write that failed on its own reports its own error, committed or not.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(e)) => Err(StorageError::Engine(e)),
            (None, Ok(())) => Err(StorageError::Engine("the write did not run".into())),
        };
        if let (Err(_), Some(on_failure)) = (&outcome, self.on_failure) {
            on_failure();
        }
        // The caller may have gone away (its request was cancelled): the write stands.
        let _ = self.reply.send(outcome);
    }
}

fn configure(conn: &Connection, reader: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
    // A write's savepoint journal stays in memory, never in a temporary file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    if reader {
        conn.pragma_update(None, "query_only", true)?;
    }
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}

impl Engine {
    /// Opens the engine on an existing, migrated database in WAL mode.
    pub(crate) fn open(path: &Path) -> Result<Engine, StorageError> {
        Self::open_with(path, false)
    }

    /// An engine that only reads (`check-config`): its write connection is read-only too, so
    /// nothing of it — not even the checkpoint SQLite makes when its last connection closes —
    /// changes the database or its WAL (beside a cleanly closed database SQLite may leave an
    /// empty `-wal` and the `-shm` index); a write fails.
    pub(crate) fn open_read_only(path: &Path) -> Result<Engine, StorageError> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, read_only: bool) -> Result<Engine, StorageError> {
        let mode = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let writer = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        configure(&writer, read_only)?;
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let write_conn = Arc::new(Mutex::new(WriteConn {
            conn: writer,
            synced: true,
            unchecked: 0,
            checkpointed_at: Instant::now(),
            checkpoint_interval: CHECKPOINT_INTERVAL,
            files: (!read_only).then(|| FileWatch::new(path)),
        }));
        let (jobs, queue) = mpsc::sync_channel::<Box<dyn WriteJob>>(MAX_QUEUED);
        let progress = Arc::new(Progress::default());
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let (thread_conn, thread_progress, thread_gate) =
            (write_conn.clone(), progress.clone(), gate.clone());
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(&thread_conn, &queue, &thread_progress, &thread_gate))
            .map_err(|e| StorageError::Engine(format!("cannot start the database writer: {e}")))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                jobs,
                write_conn,
                writer,
                readers: Mutex::new(Vec::new()),
                long_reads: tokio::sync::Semaphore::new(MAX_LONG_READS),
                progress,
                gate,
            }),
        })
    }

    /// Ends the engine's watch over its files when the portal stops (after the writes queued
    /// before are made): a stopped portal's engine lives on while the last of its tasks lets go
    /// of it — in a process that goes on, as the tests' does, where its handles are still used
    /// — and must not act on the files from then on: a database put back or removed there
    /// after the stop is another's, not one to save a copy of (a test's restore found a copy
    /// it never made).
    pub(crate) async fn close(&self) {
        // Every write queued before this one is made first (the queue is in order).
        let _ = self.write(|_| Ok(())).await;
        self.inner
            .write_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .files = None;
    }

    /// A call of the storage contract met `error` (every call: the engine's own are marked by
    /// `Progress::met` already, the organizations' store on sqlx only here): a damaged file
    /// marks the database (the review's L2: only the engine's calls did).
    pub(crate) fn note(&self, error: &StorageError) {
        if error.is_damaged() {
            self.inner.progress.damage_found(error);
        }
    }

    /// False once the writer thread has ended (it never should: every write is isolated from
    /// it), while it is stalled, or while the database refuses writes (the last batch failed,
    /// none committed since, within [`FAILING_FOR_MS`]); `/readyz` reports it.
    pub(crate) fn writer_alive(&self) -> bool {
        let progress = &self.inner.progress;
        let now = crate::access_session::now_ms();
        let stalled = self.stalled();
        let refusing = progress.refusing.load(Ordering::SeqCst)
            && now - progress.last_refusal.load(Ordering::SeqCst) < FAILING_FOR_MS;
        !self.inner.writer.is_finished()
            && !stalled
            && !refusing
            && !progress.damaged.load(Ordering::SeqCst)
            && !progress.lost.load(Ordering::SeqCst)
    }

    /// Whether the writer is stuck (a hung disk): the batch or checkpoint it is at began
    /// [`STALL_MS`] ago, or writes wait and none has finished for as long.
    pub(crate) fn stalled(&self) -> bool {
        let progress = &self.inner.progress;
        let now = stall_clock_ms();
        let working = progress.working.load(Ordering::SeqCst);
        (working != 0 && now - working > STALL_MS)
            || (progress.queued.load(Ordering::SeqCst) > 0
                && now - progress.last_batch.load(Ordering::SeqCst) > STALL_MS)
    }

    /// Waits for `answer` — a write's result, the write gate —, or, for a request being
    /// answered ([`super::answering`]; not work run to its end, [`super::run_on`]), until the
    /// writer is stalled: the request is answered (503) rather than kept waiting for a disk
    /// that may never come back. What it waited for is given up: a write not yet begun never
    /// happens (its caller went away); one the hung batch already holds is made when the disk
    /// comes back.
    async fn waited<T>(
        &self,
        answer: impl std::future::Future<Output = T>,
    ) -> Result<T, StorageError> {
        if !super::answering_someone() {
            return Ok(answer.await);
        }
        tokio::select! {
            answered = answer => Ok(answered),
            () = self.until_stalled() => Err(stalled_error()),
        }
    }

    /// Resolves once the writer is stalled ([`Engine::stalled`]): at once if it is, else
    /// looked at after [`STALL_MS`] (nothing waited on can be stalled sooner) and then every
    /// second.
    pub(crate) async fn until_stalled(&self) {
        if self.stalled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(STALL_MS as u64)).await;
        while !self.stalled() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// What has been committed since the engine was opened.
    pub(crate) fn commit_counts(&self) -> crate::metrics::DatabaseCommits {
        let progress = &self.inner.progress;
        crate::metrics::DatabaseCommits {
            full: progress.commits_full.load(Ordering::Relaxed),
            normal: progress.commits_normal.load(Ordering::Relaxed),
            writes: progress.writes.load(Ordering::Relaxed),
        }
    }

    /// Takes the write gate for a transaction made outside the engine (sqlx): the writer thread
    /// waits for it between batches instead of racing it for SQLite's lock.
    pub(crate) async fn gate(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, StorageError> {
        self.waited(self.inner.gate.clone().lock_owned()).await
    }

    /// Runs `work` in the next write batch and returns its result once the batch is durable.
    pub(crate) async fn write<R, F>(&self, work: F) -> Result<R, StorageError>
    where
        F: FnMut(&Connection) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(true, false, work, None).await
    }

    /// Like [`Engine::write`] for bookkeeping whose loss on power failure is harmless: returns
    /// once committed, durable with the next durable write (see the module notes).
    pub(crate) async fn write_relaxed<R, F>(&self, work: F) -> Result<R, StorageError>
    where
        F: FnMut(&Connection) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(false, false, work, None).await
    }

    /// [`Engine::write_relaxed`] for a write of a row or two: committed right here when the
    /// writer is idle (see the module notes), else queued like any other.
    pub(crate) async fn write_relaxed_small<R, F>(&self, work: F) -> Result<R, StorageError>
    where
        F: FnMut(&Connection) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(false, true, work, None).await
    }

    /// [`Engine::write_relaxed_small`] that runs `on_failure` on the engine's side when the
    /// write is not stored (its own error, or the batch's) — also when the caller has stopped
    /// waiting, so memory kept in step with the write inside `work` is always undone.
    pub(crate) async fn write_relaxed_small_or<R, F>(
        &self,
        work: F,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> Result<R, StorageError>
    where
        F: FnMut(&Connection) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        self.submit(false, true, work, Some(Box::new(on_failure)))
            .await
    }

    async fn submit<R, F>(
        &self,
        durable: bool,
        here_if_idle: bool,
        work: F,
        on_failure: Option<OnFailure>,
    ) -> Result<R, StorageError>
    where
        F: FnMut(&Connection) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        // Stalled already: a request is answered at once, its write not queued behind the hung
        // ones (where it would never happen anyway, its caller gone by then).
        if super::answering_someone() && self.stalled() {
            return Err(stalled_error());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(Job {
            durable,
            work,
            result: None,
            reply,
            on_failure,
        });
        let job = if durable || !here_if_idle {
            job
        } else {
            match self.commit_if_idle(job) {
                Ok(()) => {
                    return answer.await.map_err(|_| {
                        StorageError::Engine("the database writer has stopped".into())
                    })?;
                }
                Err(job) => job,
            }
        };
        let progress = &self.inner.progress;
        if progress.queued.fetch_add(1, Ordering::SeqCst) == 0 {
            // Idle until now: the stall clock starts with this write.
            progress
                .last_batch
                .store(stall_clock_ms(), Ordering::SeqCst);
        }
        // Counted down however this ends, also when the caller stops waiting (a cancelled
        // request): a count left up would report a stalled writer and keep the writer's fast
        // path off for good.
        let _counted = Queued(progress);
        let sent = self.inner.jobs.try_send(job as Box<dyn WriteJob>);
        let answered = match sent {
            Ok(()) => self
                .waited(answer)
                .await?
                .map_err(|_| StorageError::Engine("the database writer has stopped".into()))
                .and_then(|result| result),
            Err(mpsc::TrySendError::Full(_)) => Err(StorageError::Engine(
                "database overloaded: too many writes queued".into(),
            )),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(StorageError::Engine(
                "the database writer has stopped".into(),
            )),
        };
        answered
    }

    /// Commits `job` on the caller's thread if the writer is idle: nothing queued or running
    /// and the write gate free (so no earlier write is overtaken). Gives the job back otherwise.
    fn commit_if_idle<J: WriteJob + 'static>(&self, job: Box<J>) -> Result<(), Box<J>> {
        let progress = &self.inner.progress;
        if progress.queued.load(Ordering::SeqCst) != 0 {
            return Err(job);
        }
        let Ok(_gate) = self.inner.gate.try_lock() else {
            return Err(job);
        };
        let Ok(mut guard) = self.inner.write_conn.try_lock() else {
            return Err(job);
        };
        let conn = &mut *guard;
        // Checked again under the locks: a write queued meanwhile goes first. A checkpoint
        // due is the writer thread's to run: the write goes there.
        if progress.queued.load(Ordering::SeqCst) != 0
            || conn.checkpoint_due()
            || conn.files.as_ref().is_some_and(FileWatch::due)
        {
            return Err(job);
        }
        // Never wait here for another connection's write lock (a sqlx transaction finishing,
        // another process): the writer thread waits instead.
        if !conn.conn.is_autocommit()
            || sync_mode(&conn.conn, &mut conn.synced, false).is_err()
            || !begin_now(&conn.conn)
        {
            return Err(job);
        }
        let mut batch: Vec<Box<dyn WriteJob>> = vec![job];
        let outcome = commit(conn, &mut batch, true, progress);
        drop(guard);
        for job in batch {
            job.finish(outcome.clone());
        }
        Ok(())
    }

    /// Runs a short read right here on a reader connection (its own snapshot per statement).
    pub(crate) fn read<R>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let conn = self.reader()?;
        let result = work(&conn);
        if let Err(StorageError::Sqlite(e)) = &result {
            self.inner.progress.met(e);
        }
        let mut idle = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// A read that may scan many rows (counts, listings): on a blocking thread.
    pub(crate) async fn read_long<R, F>(&self, work: F) -> Result<R, StorageError>
    where
        F: FnOnce(&Connection) -> Result<R, StorageError> + Send + 'static,
        R: Send + 'static,
    {
        let _slot = self.inner.long_reads.acquire().await;
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.read(work))
            .await
            .map_err(|e| StorageError::Engine(format!("a database read failed: {e}")))?
    }

    /// Why no change may be made any more: the database's files went (see [`FileWatch`]; the
    /// log says where what it held was saved).
    pub(crate) fn files_lost(&self) -> Option<StorageError> {
        let progress = &self.inner.progress;
        progress.lost.load(Ordering::SeqCst).then(|| {
            StorageError::Unreachable(if progress.saved.load(Ordering::SeqCst) {
                "the database file (or its WAL) was removed or replaced while the portal runs: what it held was saved, and the log says where and what to do".into()
            } else {
                "the database file (or its WAL) was removed or replaced while the portal runs, and saving what it held has not succeeded yet (the log says why): do not stop the portal".into()
            })
        })
    }

    fn reader(&self) -> Result<Connection, StorageError> {
        let idle = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        // A new connection would open whatever is at the path now, not this database.
        if let Some(lost) = self.files_lost() {
            return Err(lost);
        }
        let conn = Connection::open_with_flags(
            &self.inner.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, true)?;
        Ok(conn)
    }
}

fn writer_loop(
    write_conn: &Mutex<WriteConn>,
    queue: &mpsc::Receiver<Box<dyn WriteJob>>,
    progress: &Progress,
    gate: &tokio::sync::Mutex<()>,
) {
    loop {
        // Writes left unchecked when the load stopped get their checkpoint once the writer has
        // been idle for an interval (the WAL does not stay large until the next write). The
        // writer wakes every interval even when idle: a small write committed on its caller's
        // thread ([`Engine::write_relaxed_small`]) never reaches this queue.
        let first = queue.recv_timeout(CHECKPOINT_INTERVAL);
        progress.working.store(stall_clock_ms(), Ordering::SeqCst);
        let _idle_after = Working(progress);
        let first = match first {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Found while idle too, so the files are saved and the log says so before
                // anything else is lost.
                {
                    let _gate = gate.blocking_lock();
                    let _ = check_files(
                        &mut write_conn.lock().unwrap_or_else(|p| p.into_inner()),
                        progress,
                        true,
                    );
                }
                let pending = write_conn
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .unchecked
                    > 0;
                if pending {
                    let _gate = gate.blocking_lock();
                    // Idle, the WAL file is also cut to nothing: SQLite otherwise keeps it at
                    // the largest it grew under load (several times the database), taking the
                    // volume's space for good. Not under load: a file cut back and grown again
                    // makes every commit's fsync write the file's size too (+8 % CPU per
                    // journey at one user, docs/BENCHMARKS.md).
                    checkpoint(
                        &mut write_conn.lock().unwrap_or_else(|p| p.into_inner()),
                        Checkpoint::Truncate,
                    );
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let gate = gate.blocking_lock();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = {
            let mut conn = write_conn.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = commit(&mut conn, &mut batch, false, progress);
            if conn.checkpoint_due() {
                checkpoint(&mut conn, Checkpoint::Passive);
            }
            outcome
        };
        // Free before anyone hears back, so a caller's next write finds the writer idle.
        drop(gate);
        progress
            .last_batch
            .store(stall_clock_ms(), Ordering::SeqCst);
        for job in batch {
            job.finish(outcome.clone());
        }
    }
}

/// Starts the write transaction without waiting for another connection's lock; false if it
/// is held.
fn begin_now(conn: &Connection) -> bool {
    if conn.busy_timeout(Duration::ZERO).is_err() {
        return false;
    }
    let begun = exec(conn, "BEGIN IMMEDIATE").is_ok();
    if conn.busy_timeout(BUSY_TIMEOUT).is_err() && begun {
        let _ = exec(conn, "ROLLBACK");
        return false;
    }
    begun
}

/// How a checkpoint treats readers and the WAL file.
#[derive(Clone, Copy)]
enum Checkpoint {
    /// As far as readers allow, never waiting for them; the file is reused, not shrunk.
    Passive,
    /// Waits for readers (the busy timeout), copies everything and cuts the file to nothing.
    Truncate,
}

/// Copies the WAL's pages into the database file, so the WAL file is reused instead of
/// growing (and with [`Checkpoint::Truncate`] cut back).
fn checkpoint(conn: &mut WriteConn, mode: Checkpoint) {
    let sql = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    match conn.conn.query_row(sql, [], |_| Ok(())) {
        Ok(()) => {
            conn.unchecked = 0;
            conn.checkpointed_at = Instant::now();
        }
        Err(e) => {
            static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(left_out) = LOG.admit() {
                tracing::warn!(error = %e, similar_left_out = left_out, "database checkpoint failed; retried after the next write");
            }
        }
    }
}

/// Runs `batch` in one transaction on the write connection (`begun`: the fast path began it
/// already): FULL if any write is durable. Counts what it committed in `progress`.
fn commit(
    conn: &mut WriteConn,
    batch: &mut [Box<dyn WriteJob>],
    begun: bool,
    progress: &Progress,
) -> Result<(), String> {
    if let Err(lost) = check_files(conn, progress, !begun) {
        if begun {
            let _ = exec(&conn.conn, "ROLLBACK");
        }
        return Err(format!("database write failed: {lost}"));
    }
    conn.unchecked += batch.len();
    let durable = batch.iter().any(|job| job.durable());
    let ready = if begun {
        Ok(())
    } else {
        if !conn.conn.is_autocommit() {
            // A failed ROLLBACK left a transaction open: never build on it.
            let _ = exec(&conn.conn, "ROLLBACK");
        }
        sync_mode(&conn.conn, &mut conn.synced, durable)
            .and_then(|()| exec(&conn.conn, "BEGIN IMMEDIATE"))
    };
    let changes_before = conn.conn.total_changes();
    match ready.and_then(|()| run_batch(&conn.conn, batch)) {
        Ok(committed) => {
            if committed {
                let commits = if conn.synced {
                    &progress.commits_full
                } else {
                    &progress.commits_normal
                };
                commits.fetch_add(1, Ordering::Relaxed);
                let stored = batch.iter().filter(|job| job.succeeded()).count();
                progress.writes.fetch_add(stored as u64, Ordering::Relaxed);
                // Only a commit that stored something says the database takes writes again: one
                // that changed nothing (an expiry pass with nothing due) commits on a full disk.
                if conn.conn.total_changes() > changes_before {
                    progress.refusing.store(false, Ordering::SeqCst);
                }
            } else if batch.iter().any(|job| job.refused_by_database()) {
                progress.refused();
                batch.iter().for_each(|job| job.tell(progress));
            }
            Ok(())
        }
        Err(e) => {
            // A lock held too long by another connection (busy) is no refusal of the database;
            // a full disk is, also when SQLite rolled the transaction back on its own (the
            // batch's error is then "rolled back", the write's own says why).
            if sqlite_refuses(&e) || batch.iter().any(|job| job.refused_by_database()) {
                progress.refused();
            }
            progress.met(&e);
            batch.iter().for_each(|job| job.tell(progress));
            static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(left_out) = LOG.admit() {
                tracing::error!(error = %e, writes = batch.len(), similar_left_out = left_out,
                    "database write batch failed; nothing of it was stored");
            }
            Err(format!("database write failed: {e}"))
        }
    }
}

/// FULL (fsync at commit) for a batch with a durable write, NORMAL otherwise.
fn sync_mode(conn: &Connection, synced: &mut bool, durable: bool) -> rusqlite::Result<()> {
    if *synced != durable {
        exec(
            conn,
            if durable {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            },
        )?;
        *synced = durable;
    }
    Ok(())
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn rolled_back() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the transaction was rolled back".into()),
    )
}

/// Runs the writes of `batch` in the open transaction and commits. The writes run one after
/// the other without savepoints; only if one fails (or panics) is the transaction rolled back
/// and the batch run again, each write in its own savepoint, so that the failed write alone is
/// undone. A savepoint per write copied every page a write touched into the savepoint's
/// journal: about a tenth of the writer thread's CPU for writes that practically never fail.
/// True if it committed (false: its only write failed and was rolled back).
fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteJob>]) -> rusqlite::Result<bool> {
    let ran = run_all(conn, batch, false).and_then(|all_kept| {
        if all_kept {
            return Ok(true);
        }
        exec(conn, "ROLLBACK")?;
        if batch.len() == 1 {
            // The one write failed: nothing to commit, and its error is its answer.
            return Ok(false);
        }
        exec(conn, "BEGIN IMMEDIATE")?;
        run_all(conn, batch, true).map(|_| true)
    });
    let ran = ran.and_then(|commit| {
        if !commit {
            return Ok(false);
        }
        if conn.is_autocommit() {
            return Err(rolled_back());
        }
        exec(conn, "COMMIT").map(|()| true)
    });
    if ran.is_err() && !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
    ran
}

/// Runs every write of `batch` in the open transaction, each in its own savepoint if
/// `isolated` (a write that fails is rolled back alone); without, stops at the first write
/// that fails. True if every write was kept.
fn run_all(
    conn: &Connection,
    batch: &mut [Box<dyn WriteJob>],
    isolated: bool,
) -> rusqlite::Result<bool> {
    for job in batch.iter_mut() {
        if isolated {
            exec(conn, "SAVEPOINT write")?;
        }
        let kept = job.run(conn);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back on its own (I/O error, full disk).
            return Err(rolled_back());
        }
        match (kept, isolated) {
            (true, true) => exec(conn, "RELEASE write")?,
            (false, true) => {
                exec(conn, "ROLLBACK TO write")?;
                exec(conn, "RELEASE write")?;
            }
            (true, false) => {}
            (false, false) => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_saved_copies_by_their_own_name_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("portal.db");
        for name in [
            "portal.db.saved-1700000000000",
            "portal.db.saved-1700000000000.saving",
            "portal.db.saved-by-hand",
            "portal.db.saved-",
            "other.db.saved-1",
        ] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        assert_eq!(
            saved_copies_of(&db),
            vec![dir.path().join("portal.db.saved-1700000000000")]
        );
        assert_eq!(saved_copy_of(&db, 1), dir.path().join("portal.db.saved-1"));
    }

    async fn engine() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("engine.db");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE);",
        )
        .expect("schema");
        drop(conn);
        let engine = Engine::open(&path).expect("engine");
        (dir, engine)
    }

    /// A closed engine (the portal stopped) still used through a handle — a task not yet gone
    /// in a process that goes on — no longer acts on its files: the database removed there
    /// after the stop is nothing to save a copy of, and not a loss that refuses writes.
    #[tokio::test]
    async fn a_closed_engine_leaves_its_files_alone() {
        let (dir, engine) = engine().await;
        let insert = |v: &'static str| {
            move |c: &Connection| Ok(c.execute("INSERT INTO t (v) VALUES (?1)", [v])?)
        };
        engine.write(insert("kept")).await.expect("write");
        engine.close().await;
        for name in ["engine.db", "engine.db-wal", "engine.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(name));
        }
        // Past the files' next look (at most every 250 ms), a write looks at them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        engine
            .write(insert("late"))
            .await
            .expect("a write after the close");
        assert!(engine.files_lost().is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A read that finds the file damaged (a file copied over the running portal's) makes the
    /// database not writable for good, said once (black-box tester Q's D7: `/readyz` said
    /// ready, sign-ins went on into the damaged file).
    #[tokio::test]
    async fn a_damaged_file_met_by_a_read_is_not_writable_any_more() {
        let (_dir, engine) = engine().await;
        insert_small(&engine, "a").await;
        let busy = engine.read(|_| {
            Err::<(), _>(StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            )))
        });
        assert!(busy.is_err());
        assert!(engine.writer_alive(), "a busy read is no damage");
        let damaged = engine.read(|_| {
            Err::<(), _>(StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some("database disk image is malformed".into()),
            )))
        });
        assert!(damaged.is_err());
        assert!(!engine.writer_alive(), "damaged");
        insert_small(&engine, "b").await;
        assert!(
            !engine.writer_alive(),
            "a write that works proves nothing of the rest"
        );
    }

    #[tokio::test]
    async fn the_wal_file_is_cut_back_after_growing() {
        let (dir, engine) = engine().await;
        let wal = dir.path().join("engine.db-wal");
        let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        // One write of ~8 MB: the WAL grows.
        engine
            .write(|c| {
                for i in 0..4000 {
                    c.execute(
                        "INSERT INTO t (v) VALUES (?)",
                        [format!("{i}:{}", "x".repeat(2000))],
                    )?;
                }
                Ok(())
            })
            .await
            .expect("big write");
        assert!(size() > 4 * 1024 * 1024, "{}", size());
        // Cut back once the writer is idle, without another write.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "WAL still {} bytes",
                size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And used again as before.
        insert_small(&engine, "after").await;
        assert!(values(&engine).contains(&"after".to_string()));
    }

    /// The values of `t` in insertion order.
    fn values(engine: &Engine) -> Vec<String> {
        engine
            .read(|c| {
                Ok(c.prepare("SELECT v FROM t ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
            })
            .expect("read")
    }

    /// Inserts `v` with a small relaxed write; the name of the thread it ran on.
    async fn insert_small(engine: &Engine, v: &'static str) -> Option<String> {
        engine
            .write_relaxed_small(move |c| {
                c.execute("INSERT INTO t (v) VALUES (?)", [v])?;
                Ok(std::thread::current().name().map(str::to_string))
            })
            .await
            .expect("small write")
    }

    /// `n` small relaxed writes, one after the other.
    async fn insert_many(engine: &Engine, n: usize) {
        for i in 0..n {
            engine
                .write_relaxed_small(move |c| {
                    Ok(c.execute("INSERT INTO t (v) VALUES (?)", [format!("v{i}")])?)
                })
                .await
                .expect("write");
        }
    }

    /// Holds the writer inside a write (of 'slow') until the returned sender is used.
    async fn hold_writer(
        engine: &Engine,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<usize, StorageError>>,
    ) {
        let slow = engine.clone();
        let (started, writer_busy) = tokio::sync::oneshot::channel();
        let mut started = Some(started);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn(async move {
            slow.write(move |c| {
                if let Some(started) = started.take() {
                    let _ = started.send(());
                }
                let _ = held.recv_timeout(Duration::from_secs(60));
                Ok(c.execute("INSERT INTO t (v) VALUES ('slow')", [])?)
            })
            .await
        });
        writer_busy.await.expect("the slow write started");
        (release, busy)
    }

    /// Waits (a condition with a deadline) until `writes` writes are queued or running.
    async fn wait_queued(engine: &Engine, writes: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while engine.inner.progress.queued.load(Ordering::SeqCst) < writes {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {writes} writes ever queued"
            );
            tokio::task::yield_now().await;
        }
    }

    fn count(engine: &Engine) -> i64 {
        engine
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?))
            .expect("count")
    }

    /// `/readyz` says "database unavailable" while the database refuses writes (here: full),
    /// and ready again once a write commits; a write breaking its own rule changes nothing.
    #[tokio::test]
    async fn a_database_refusing_writes_is_not_writable_until_one_commits() {
        let (_dir, engine) = engine().await;
        insert_small(&engine, "a").await;
        assert!(engine.writer_alive());
        let duplicate = engine
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('a')", [])?))
            .await;
        assert!(duplicate.is_err());
        assert!(engine.writer_alive(), "a write's own error is no outage");
        let full = engine
            .write(|c| {
                let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
                Ok(c.execute("INSERT INTO t (v) VALUES (?)", ["x".repeat(100_000)])?)
            })
            .await;
        assert!(full.is_err(), "the file may not grow");
        assert!(!engine.writer_alive(), "refusing writes");
        // A write that finds nothing to change commits on a full disk too: it proves nothing.
        engine
            .write(|c| Ok(c.execute("UPDATE t SET v = v WHERE v = 'nothing'", [])?))
            .await
            .expect("changes nothing");
        assert!(!engine.writer_alive(), "still refusing writes");
        engine
            .write(|c| {
                c.query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))?;
                Ok(c.execute("INSERT INTO t (v) VALUES ('room again')", [])?)
            })
            .await
            .expect("room again");
        assert!(engine.writer_alive());
    }

    #[tokio::test]
    async fn commits_are_counted_by_kind_and_a_failed_write_is_not() {
        let (_dir, engine) = engine().await;
        let counts = |full, normal, writes| crate::metrics::DatabaseCommits {
            full,
            normal,
            writes,
        };
        assert_eq!(engine.commit_counts(), counts(0, 0, 0));
        insert_small(&engine, "a").await;
        assert_eq!(engine.commit_counts(), counts(0, 1, 1));
        engine
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('b')", [])?))
            .await
            .expect("durable write");
        assert_eq!(engine.commit_counts(), counts(1, 1, 2));
        // A duplicate fails alone: rolled back, nothing committed.
        let failed = engine
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('b')", [])?))
            .await;
        assert!(failed.is_err());
        assert_eq!(engine.commit_counts(), counts(1, 1, 2));
        // Writes made together, one of them failing: only the stored ones count.
        let writes: Vec<_> = (0..20)
            .map(|i| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let v = if i == 7 {
                        "b".to_string()
                    } else {
                        format!("w{i}")
                    };
                    engine
                        .write(move |c| Ok(c.execute("INSERT INTO t (v) VALUES (?)", [&v])?))
                        .await
                })
            })
            .collect();
        let mut stored = 0;
        for write in writes {
            stored += u64::from(write.await.expect("task").is_ok());
        }
        assert_eq!(stored, 19);
        let after = engine.commit_counts();
        assert_eq!((after.normal, after.writes), (1, 2 + stored));
        assert!((2..=20).contains(&after.full), "{after:?}");
    }

    #[tokio::test]
    async fn a_failed_write_is_rolled_back_alone_and_the_others_commit() {
        let (_dir, engine) = engine().await;
        let mut writes = Vec::new();
        for i in 0..50 {
            let engine = engine.clone();
            writes.push(tokio::spawn(async move {
                engine
                    .write(move |c| {
                        c.execute("INSERT INTO t (v) VALUES (?)", [format!("v{i}")])?;
                        if i % 10 == 0 {
                            // A duplicate fails; its own insert above must not survive.
                            c.execute("INSERT INTO t (v) VALUES (?)", [format!("v{i}")])?;
                        }
                        Ok(i)
                    })
                    .await
            }));
        }
        let mut failed = 0;
        for write in writes {
            if write.await.expect("task").is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 5);
        assert_eq!(count(&engine), 45);
        let zero: i64 = engine
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM t WHERE v = 'v0'", [], |r| r.get(0))?))
            .expect("read");
        assert_eq!(zero, 0);
    }

    /// One batch of three writes, the middle one failing (or panicking): the batch runs again
    /// with a savepoint per write, and the two others commit with the answers of their second
    /// run.
    #[tokio::test]
    async fn a_write_failing_inside_a_batch_is_undone_alone_and_the_batch_runs_again() {
        for panics in [false, true] {
            let (_dir, engine) = engine().await;
            let (release, busy) = hold_writer(&engine).await;
            let runs = Arc::new(AtomicUsize::new(0));
            let spawn_insert = |v: &'static str, fail: bool| {
                let (engine, runs) = (engine.clone(), runs.clone());
                tokio::spawn(async move {
                    engine
                        .write(move |c| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            c.execute("INSERT INTO t (v) VALUES (?)", [v])?;
                            if fail && panics {
                                panic!("boom");
                            }
                            if fail {
                                // A duplicate fails; its own insert above must not survive.
                                c.execute("INSERT INTO t (v) VALUES (?)", [v])?;
                            }
                            Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))?)
                        })
                        .await
                })
            };
            let first = spawn_insert("a", false);
            wait_queued(&engine, 2).await;
            let failing = spawn_insert("dup", true);
            wait_queued(&engine, 3).await;
            let last = spawn_insert("b", false);
            wait_queued(&engine, 4).await;
            release.send(()).expect("release");
            busy.await.expect("task").expect("slow write");
            // Rows seen by each write: 'slow' committed before; 'a' sees itself; 'b' sees 'a'
            // but not the failed write's row.
            assert_eq!(first.await.expect("task").expect("first write"), 2);
            assert!(failing.await.expect("task").is_err());
            assert_eq!(last.await.expect("task").expect("last write"), 3);
            assert_eq!(values(&engine), ["slow", "a", "b"]);
            // 'a' and the failing write ran twice ('b' never ran before the failure).
            assert_eq!(runs.load(Ordering::SeqCst), 5, "panics: {panics}");
        }
    }

    #[tokio::test]
    async fn a_panicking_write_fails_without_stopping_the_writer() {
        let (_dir, engine) = engine().await;
        let panicked = engine
            .write(|c| -> Result<(), StorageError> {
                c.execute("INSERT INTO t (v) VALUES ('a')", [])?;
                panic!("boom")
            })
            .await;
        assert!(matches!(panicked, Err(StorageError::Engine(_))));
        engine
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('b')", [])?))
            .await
            .expect("the writer still works");
        assert_eq!(count(&engine), 1);
    }

    /// The undo of a write that is not stored runs on the engine's side: for its own error, and
    /// for a caller that stopped waiting before it ran.
    #[tokio::test]
    async fn a_write_not_stored_runs_its_undo_even_without_its_caller() {
        let undone = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let undo = |undone: &Arc<std::sync::atomic::AtomicUsize>| {
            let undone = undone.clone();
            move || {
                undone.fetch_add(1, Ordering::SeqCst);
            }
        };
        let (_dir, engine) = engine().await;
        engine
            .write_relaxed_small_or(
                |c| Ok(c.execute("INSERT INTO t (v) VALUES ('kept')", [])?),
                undo(&undone),
            )
            .await
            .expect("stored");
        assert_eq!(
            undone.load(Ordering::SeqCst),
            0,
            "a stored write is not undone"
        );
        let failed = engine
            .write_relaxed_small_or(
                |c| -> Result<(), StorageError> {
                    c.execute("INSERT INTO t (v) VALUES ('lost')", [])?;
                    Err(StorageError::Engine("refused".into()))
                },
                undo(&undone),
            )
            .await;
        assert!(failed.is_err());
        assert_eq!(undone.load(Ordering::SeqCst), 1);
        assert_eq!(values(&engine), ["kept"]);

        // Its caller gone (a cancelled request) while it waited behind a busy writer.
        let (release, busy) = hold_writer(&engine).await;
        let queued = engine.clone();
        let on_failure = undo(&undone);
        let cancelled = tokio::spawn(async move {
            queued
                .write_relaxed_small_or(
                    |c| Ok(c.execute("INSERT INTO t (v) VALUES ('cancelled')", [])?),
                    on_failure,
                )
                .await
        });
        wait_queued(&engine, 2).await;
        cancelled.abort();
        assert!(cancelled.await.is_err(), "cancelled");
        release.send(()).expect("release the writer");
        busy.await.expect("task").expect("slow write");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while undone.load(Ordering::SeqCst) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the cancelled write was never undone"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(values(&engine), ["kept", "slow"]);
    }

    #[tokio::test]
    async fn relaxed_and_durable_writes_commit_together_and_are_read_back() {
        let (_dir, engine) = engine().await;
        let mut writes = Vec::new();
        for i in 0..40 {
            let engine = engine.clone();
            writes.push(tokio::spawn(async move {
                let work = move |c: &Connection| {
                    Ok(c.execute("INSERT INTO t (v) VALUES (?)", [format!("v{i}")])?)
                };
                if i % 2 == 0 {
                    engine.write_relaxed(work).await
                } else {
                    engine.write(work).await
                }
            }));
        }
        for write in writes {
            assert_eq!(write.await.expect("task").expect("write"), 1);
        }
        assert_eq!(count(&engine), 40);
    }

    #[tokio::test]
    async fn a_write_whose_caller_went_away_before_it_ran_never_happens() {
        let (_dir, engine) = engine().await;
        // Queued behind a write the writer is held inside, then abandoned (a cancelled
        // request) before the writer is let go.
        let (release, busy) = hold_writer(&engine).await;
        let queued = engine.clone();
        let abandoned = tokio::spawn(async move {
            queued
                .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('abandoned')", [])?))
                .await
        });
        wait_queued(&engine, 2).await;
        abandoned.abort();
        assert!(abandoned.await.is_err(), "abandoned while still queued");
        release.send(()).expect("release the writer");
        busy.await.expect("task").expect("slow write");
        engine
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('after')", [])?))
            .await
            .expect("later write");
        let values = values(&engine);
        assert_eq!(values, ["slow", "after"]);
        // The abandoned write no longer counts as pending: the idle fast path is open again.
        let here = insert_small(&engine, "idle").await;
        assert_ne!(here.as_deref(), Some("sqlite-writer"));
    }

    /// A hung disk (here: the writer held inside a write): a request's write gives up once the
    /// writer has finished nothing for as long as `/readyz` tolerates, answered as the database
    /// being away, and never happens; background work waits on and is done when the disk
    /// comes back. The writer counts as stalled while its batch hangs, also when nobody waits
    /// for it any more.
    #[tokio::test]
    async fn a_request_stops_waiting_for_a_stalled_writer_and_background_work_waits_on() {
        let (_dir, engine) = engine().await;
        let (release, busy) = hold_writer(&engine).await;
        let asked = engine.clone();
        let request = tokio::spawn(super::super::answering(async move {
            asked
                .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('asked')", [])?))
                .await
        }));
        let answer = tokio::time::timeout(Duration::from_secs(40), request)
            .await
            .expect("the request was answered while the writer hung")
            .expect("task");
        match answer {
            Err(e @ StorageError::Unreachable(_)) => assert!(e.is_unavailable()),
            other => panic!("expected the database to be away, got {other:?}"),
        }
        assert!(!engine.writer_alive(), "/readyz: stalled");
        // Nobody waits for the hung batch any more: still stalled.
        busy.abort();
        assert!(busy.await.is_err(), "the held write's caller went away");
        assert!(
            !engine.writer_alive(),
            "/readyz: stalled while the batch hangs"
        );
        let background = engine.clone();
        let later = tokio::spawn(async move {
            background
                .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('background')", [])?))
                .await
        });
        release.send(()).expect("release the writer");
        later.await.expect("task").expect("background write");
        assert!(engine.writer_alive());
        assert_eq!(values(&engine), ["slow", "background"]);
    }

    #[test]
    fn checkpoints_wait_for_enough_writes_and_time_under_load_but_not_past_the_limit() {
        let interval = CHECKPOINT_INTERVAL;
        assert!(!checkpoint_due(
            CHECKPOINT_EVERY - 1,
            interval * 10,
            interval
        ));
        assert!(checkpoint_due(CHECKPOINT_EVERY, interval, interval));
        assert!(!checkpoint_due(CHECKPOINT_EVERY, interval / 2, interval));
        assert!(!checkpoint_due(
            CHECKPOINT_LIMIT - 1,
            interval / 2,
            interval
        ));
        assert!(checkpoint_due(CHECKPOINT_LIMIT, Duration::ZERO, interval));
    }

    #[tokio::test]
    async fn an_idle_writer_checkpoints_what_the_last_writes_left() {
        let (_dir, engine) = engine().await;
        insert_many(&engine, 10).await;
        let unchecked = || {
            engine
                .inner
                .write_conn
                .lock()
                .expect("write connection")
                .unchecked
        };
        assert!(unchecked() > 0, "fewer writes than a checkpoint needs");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while unchecked() > 0 {
            assert!(std::time::Instant::now() < deadline, "never checkpointed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn writes_committed_on_the_callers_thread_still_get_checkpointed() {
        let (dir, engine) = engine().await;
        // As when the writes come slower than the interval (here: 2000 of them at once).
        engine
            .inner
            .write_conn
            .lock()
            .expect("write connection")
            .checkpoint_interval = Duration::ZERO;
        insert_many(&engine, 2000).await;
        assert_eq!(count(&engine), 2000);
        // Without checkpoints the WAL would hold every page written: ~2000 × 2 pages × 4 KiB.
        let wal = std::fs::metadata(dir.path().join("engine.db-wal"))
            .expect("WAL file")
            .len();
        assert!(wal < 4 << 20, "WAL of {wal} bytes: never checkpointed");
    }

    #[tokio::test]
    async fn the_writer_waits_for_a_transaction_holding_the_gate() {
        let (_dir, engine) = engine().await;
        let gate = engine.gate().await.expect("not answering a request: waits");
        let writer = engine.clone();
        let write = tokio::spawn(async move {
            writer
                .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('w')", [])?))
                .await
        });
        // Queued (a condition, not a fixed wait): from here on it may only finish after the
        // gate is freed.
        wait_queued(&engine, 1).await;
        assert!(
            !write.is_finished(),
            "the write went ahead of the gate's holder"
        );
        assert_eq!(count(&engine), 0);
        drop(gate);
        write.await.expect("task").expect("write");
        assert_eq!(count(&engine), 1);
    }

    #[tokio::test]
    async fn a_small_relaxed_write_commits_here_when_idle_and_never_overtakes_a_queued_one() {
        let (_dir, engine) = engine().await;
        let here = insert_small(&engine, "idle").await;
        assert_ne!(
            here.as_deref(),
            Some("sqlite-writer"),
            "ran on the caller's thread"
        );
        // The writer busy with an earlier write, held until the small write is queued: the
        // small write goes behind it.
        let (release, busy) = hold_writer(&engine).await;
        let small = engine.clone();
        let queued = tokio::spawn(async move { insert_small(&small, "behind").await });
        wait_queued(&engine, 2).await;
        release.send(()).expect("release the writer");
        assert_eq!(
            queued.await.expect("task").as_deref(),
            Some("sqlite-writer")
        );
        busy.await.expect("task").expect("slow write");
        let values = values(&engine);
        assert_eq!(values, ["idle", "slow", "behind"]);
    }

    #[tokio::test]
    async fn readers_cannot_write() {
        let (_dir, engine) = engine().await;
        let tried = engine.read(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('x')", [])?));
        assert!(tried.is_err());
        assert_eq!(count(&engine), 0);
    }
}
