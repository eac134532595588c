//! Start-up: opens storage, builds the services, stops what became due while the portal was down,
//! binds the listener, and runs the web server and background tasks until shutdown.

use crate::storage::web_sessions::WebSessionStore;
use crate::{
    access_session::{
        clock_steps::{self, ClockMark},
        events::SessionEvents,
        expiry::Expiry,
        now_ms, AccessSessions,
    },
    accounting::Accounting,
    config::Settings,
    dynauth::{DynAuthListener, DynAuthSocket},
    http::{router, RouterParts},
    organizations::{worker::OrganizationWorker, Organizations},
    portal_backend::PortalBackend,
    radius::Radius,
    storage::Storage,
    supervise::{self, TaskHealth},
};
use anyhow::Context;
use app::service::Portal;
use leptos::prelude::LeptosOptions;
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for requests under way (and at most for sessions whose sign-in
/// failed to be ended).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a stop takes from the SIGTERM, as README says: requests under way (up to
/// [`SHUTDOWN_GRACE`]) and the accounting flush. A flush is never cut below its own time, nor
/// the ending of sessions whose sign-in failed below one try, so a stop whose requests took all
/// of theirs takes longer (README: at most 25 s).
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// How often old accounting history and ended sessions are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A built, bound, not yet running portal.
pub struct Application {
    listener: TcpListener,
    /// Connections served at once ([`crate::http::serve::connections_for`]).
    max_connections: usize,
    /// `[metrics] listen`, bound at start-up.
    metrics_listener: Option<TcpListener>,
    metrics: crate::metrics::Metrics,
    /// Proxies whose connections are not limited per client (all users come through them).
    trusted_proxies: Vec<ipnet::IpNet>,
    /// `[rate_limit] ipv6_prefix`: an IPv6 client's connections count per network this long,
    /// as its sign-ins do.
    ipv6_prefix: u8,
    /// Built-in TLS: the files and the certificate in use.
    tls: Option<(crate::config::TlsSettings, crate::http::tls::CurrentConfig)>,
    router: crate::http::Site,
    accounting: Accounting,
    expiry: Expiry,
    /// Access-session change notices (other replicas' changes are published here too).
    events: SessionEvents,
    /// Exposed for tests (breaker states).
    pub radius: Radius,
    /// The RFC 5176 listener, when clients are configured (tests read its address and counters).
    pub dynauth: Option<DynAuthListener>,
    tasks: TaskHealth,
    retention: Duration,
    audit_retention: Duration,
    /// Ends the open live-update streams at shutdown (they would hold graceful shutdown open).
    live_stop: CancellationToken,
    session_store: WebSessionStore,
    /// Exposed for tests and the CLI.
    pub storage: Storage,
    /// This process's organization cache (tests).
    pub organizations: Arc<Organizations>,
    /// Organization jobs and cache refresh.
    pub org_worker: OrganizationWorker,
    /// The access-session lifecycle (tests).
    pub sessions: AccessSessions,
    /// The browsers' sign-ins (tests: those waiting for their browser's turn).
    pub sign_ins: Arc<crate::http::resubmit::RecentSignIns>,
    /// SQLite: this process's hold on the database (see [`own_sqlite_database`]).
    sqlite_owner: Option<std::sync::Arc<std::fs::File>>,
    /// PostgreSQL: what this replica's breakers count, for the others ([`tell_peers`]).
    breaker_news: Option<BreakerNews>,
    /// SIGHUP, watched since the start of [`Application::build`].
    hangups: crate::http::tls::Hangups,
    /// Where users reach the portal: a certificate reloaded by SIGHUP is checked against it.
    public_url: Option<crate::config::PublicUrl>,
    /// When the portal was asked to stop: the signal's moment (the CLI's handler sets it, also
    /// during start-up, [`Application::stop_asked_at`]), else when `run`'s token is cancelled.
    stop_asked: StopAsked,
}

/// When a stop was asked for (set once).
pub type StopAsked = Arc<std::sync::OnceLock<tokio::time::Instant>>;

/// This replica's breaker news on its way to the others (a supervised task restarted after a
/// panic takes the same receiver).
type BreakerNews = Arc<
    tokio::sync::Mutex<
        tokio::sync::mpsc::Receiver<(tokio::time::Instant, crate::radius::health::PeerNews)>,
    >,
>;

/// How long start-up waits for the SQLite database's lock: a previous process still exiting (a
/// restart), or a process being started that briefly holds a copy of the lock's descriptor.
const SQLITE_OWNER_WAIT: Duration = Duration::from_secs(5);

/// The lock file beside a SQLite database that its serving portal holds — beside the file the
/// path names, symbolic links resolved, so a second portal reaching the same file through a
/// link (or a relative path) finds the same lock.
fn sqlite_lock_path(path: &std::path::Path) -> std::path::PathBuf {
    let real = std::fs::canonicalize(path).ok().or_else(|| {
        // Not created yet: its directory resolved.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = std::fs::canonicalize(dir.unwrap_or(std::path::Path::new("."))).ok()?;
        Some(dir.join(path.file_name()?))
    });
    let mut name = real.unwrap_or_else(|| path.to_path_buf()).into_os_string();
    name.push(".lock");
    std::path::PathBuf::from(name)
}

/// File descriptors a portal needs free once it has started, to serve: one per connection, the
/// database's readers under load, a Disconnect-Request's answer. Fewer, and it would say it
/// listens and then accept nothing (`/readyz` unanswered, not 503) while expiry fails to open
/// the database: refused at start-up instead.
const SPARE_DESCRIPTORS: u64 = 64;

/// Below this many free descriptors a started portal warns: connections beyond them wait.
const FEW_DESCRIPTORS: u64 = 1024;

/// Raises the process's soft limit of open files to its hard limit, as a server that holds a
/// descriptor per connection should (the soft limit is often 1,024, kept low for programs
/// that use `select`). A failure is left to the check at start-up ([`descriptors_to_serve`]).
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Whether the descriptors left, with those start-up holds open, are enough to serve: an
/// error (refused) below [`SPARE_DESCRIPTORS`], a warning below [`FEW_DESCRIPTORS`]. Nothing
/// when the limit or the open descriptors cannot be read.
fn descriptors_to_serve() -> anyhow::Result<(Option<u64>, Option<String>)> {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((limit, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok((None, None));
    };
    // Less the one reading the directory; none left to read it with is none to serve with.
    let open = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.count().saturating_sub(1) as u64,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::EMFILE | nix::libc::ENFILE)
            ) =>
        {
            limit
        }
        Err(_) => return Ok((None, None)),
    };
    let spare = limit.saturating_sub(open);
    if spare < SPARE_DESCRIPTORS {
        anyhow::bail!(
            "too few file descriptors to serve: the limit of open files is {limit} (`ulimit -n`, systemd's LimitNOFILE=), start-up holds {open} and serving needs at least {SPARE_DESCRIPTORS} more (one per connection): raise it to at least {} — deploy/systemd's unit sets 65536",
            open + SPARE_DESCRIPTORS
        );
    }
    let warning = (spare < FEW_DESCRIPTORS).then(|| {
        format!(
            "the limit of open files is {limit} (`ulimit -n`, systemd's LimitNOFILE=) and start-up holds {open}: {} connections at once (with built-in TLS a quarter of them for handshakes in progress; the rest of the {spare} free are kept for the database and RADIUS), and a connection beyond them is closed at once (the log says so); deploy/systemd's unit sets 65536",
            crate::http::serve::connections_for(Some(spare))
        )
    });
    Ok((Some(spare), warning))
}

/// Async worker threads for the runtime: `TOKIO_WORKER_THREADS` when it is a positive number
/// (tokio's own variable), else one fewer than the cores, at least one — the database writer
/// has a thread of its own, and on two cores a second worker cost 6-21 % more CPU per
/// journey at one user for 7 % more journeys at 64 (docs/BENCHMARKS.md, session 36). A value
/// that is not a positive number is ignored with a warning.
pub fn worker_threads(variable: Option<&str>, cores: usize) -> (usize, Option<String>) {
    let default = cores.saturating_sub(1).max(1);
    match variable.map(str::trim) {
        None => (default, None),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n > 0 => (n, None),
            _ => (
                default,
                Some(format!(
                    "warning: TOKIO_WORKER_THREADS={text:?} is not a positive number: ignored, {default} worker thread(s)"
                )),
            ),
        },
    }
}

/// Whether a portal serves the SQLite database at `path` now (it holds the database's lock):
/// what an operator command queues is then carried out at once, else at the next start.
pub fn sqlite_portal_running(path: &std::path::Path) -> bool {
    sqlite_served(path) == Some(true)
}

/// Whether no portal serves the SQLite database at `path` now, known for sure: its lock file
/// is not there (never served), or its lock was taken and given back here — not a lock file
/// this user cannot open or lock (a portal may serve it all the same).
pub fn sqlite_portal_surely_stopped(path: &std::path::Path) -> bool {
    sqlite_served(path) == Some(false)
}

/// Whether a portal serves the SQLite database at `path` now, known for sure (it holds the
/// lock).
pub fn sqlite_portal_surely_serving(path: &std::path::Path) -> bool {
    sqlite_served(path) == Some(true)
}

/// Whether a portal holds the lock of the SQLite database at `path`: Some(false) when its lock
/// file is not there (never served) or its lock was taken and given back here, None when the
/// lock file cannot be opened or locked (not known).
fn sqlite_served(path: &std::path::Path) -> Option<bool> {
    // Read-only is enough for the lock (an operator who may not write the file still sees).
    match std::fs::File::open(sqlite_lock_path(path)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
        // Shared: two commands looking at once do not take each other for a portal (the
        // whole-change review's L1); a portal's lock is exclusive.
        Ok(file) => match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                Some(false)
            }
            Err(std::fs::TryLockError::WouldBlock) => Some(true),
            Err(std::fs::TryLockError::Error(_)) => None,
        },
    }
}

/// What a serving portal writes in its SQLite database's lock file ([`own_sqlite_database`]):
/// the highest access session id it has seen there, `newest_session_id=N`, and where its time
/// stood against the boot clock, `clock=…` ([`ClockMark`]).
const WATERMARK: &str = "newest_session_id=";
/// The lock file's line of the [`ClockMark`].
const CLOCK_MARK: &str = "clock=";
/// The lock file's line while the serving portal finds its database's files removed or
/// replaced under it (`Storage::files_lost`): it refuses every change until restarted, and
/// operator commands refuse to work on the files there now ([`sqlite_files_lost`]).
const FILES_LOST: &str = "files_lost=yes";

/// Drops the [`FILES_LOST`] line a previous run left in its lock file (`file`, now this run's):
/// operator commands would refuse the database until this run's first write of it (the
/// whole-change review's L1). The rest of the text is kept (read at the start).
fn forget_files_lost(mut file: &std::fs::File) {
    use std::io::{Read, Seek, Write};
    let mut text = String::new();
    if file.seek(std::io::SeekFrom::Start(0)).is_err()
        || file.take(4096).read_to_string(&mut text).is_err()
        || !text.lines().any(|line| line.trim() == FILES_LOST)
    {
        return;
    }
    let kept: String = text
        .lines()
        .filter(|line| line.trim() != FILES_LOST)
        .map(|line| format!("{line}\n"))
        .collect();
    let _ = file
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| file.write_all(kept.as_bytes()))
        .and_then(|()| file.set_len(kept.len() as u64));
}

/// Whether the portal serving the SQLite database at `path` now says its files were removed or
/// replaced under it (its lock file's [`FILES_LOST`] line: black-box tester Q's D1).
pub fn sqlite_files_lost(path: &std::path::Path) -> bool {
    sqlite_portal_surely_serving(path)
        && std::fs::File::open(sqlite_lock_path(path))
            .ok()
            .and_then(|file| lock_file_line(&file, FILES_LOST))
            .is_some()
}

/// How often a serving portal writes [`WATERMARK`] (and once more as it stops): a crash may
/// leave the last second's sessions uncounted.
const WATERMARK_EVERY: Duration = Duration::from_secs(1);

/// The value of the lock file's line that starts with `key`, if it has one.
fn lock_file_line(mut file: &std::fs::File, key: &str) -> Option<String> {
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(0)).ok()?;
    let mut text = String::new();
    file.take(512).read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|line| line.trim().strip_prefix(key).map(str::to_owned))
}

/// The newest session id a lock file says its portal saw, if it says one.
fn read_watermark(file: &std::fs::File) -> Option<i64> {
    lock_file_line(file, WATERMARK)?.parse().ok()
}

/// Where the last portal's time stood, by its lock file, if it says.
fn read_clock_mark(file: &std::fs::File) -> Option<ClockMark> {
    ClockMark::parse(&lock_file_line(file, CLOCK_MARK)?)
}

/// Writes `newest` as the newest session id seen (0 for a database without sessions; none where
/// the database keeps no such count), and the clock's mark now (the whole of the lock file's
/// text).
fn write_watermark(
    mut file: &std::fs::File,
    newest: Option<i64>,
    files_lost: bool,
) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let mut text = String::new();
    if let Some(newest) = newest {
        text.push_str(&format!("{WATERMARK}{newest}\n"));
    }
    if files_lost {
        text.push_str(FILES_LOST);
        text.push('\n');
    }
    if let Some(mark) = ClockMark::now() {
        text.push_str(&format!("{CLOCK_MARK}{}\n", mark.line()));
    }
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)
}

/// A clock stepped since the portal last served the SQLite database whose lock file is
/// `owner` (no portal ran to see it). A step back is held from the process's time until the
/// open sessions' stored times have moved with it, as a step seen while serving — each keeps
/// the real time it had left (black-box tester T's D2) — and the clock task's line says so. A
/// step forward is taken as time that passed, as while serving, and said here (tester T2's
/// D4). The mark is read in the line of the stored times (`moved_ms`, the database's total of
/// moves: a mark written before the last move is moved with it). Before any task reads the
/// time.
fn clock_stepped_since_last_run(owner: &std::fs::File, moved_ms: i64) {
    clock_steps::moved_so_far(moved_ms);
    if let Some(problem) = clock_steps::boot_identity_problem() {
        tracing::warn!("{problem}");
    }
    let (Some(mark), Some(now)) = (
        read_clock_mark(owner).and_then(|mark| mark.in_line_with(moved_ms)),
        ClockMark::now(),
    ) else {
        return;
    };
    match mark.step_since(&now) {
        Some(step_ms) if step_ms < 0 => clock_steps::hold_step_back(step_ms),
        Some(step_ms) => tracing::warn!(step_ms,
            "the system clock is ahead of the time the portal last served this database in by more than the time that passed since (by the lock file beside it): taken as time that passed, as a step forward while serving is — sessions whose time it covers end now (keep the clock synchronised: NTP)"),
        None => {}
    }
}

/// A sentence when the SQLite database at `path`, whose newest session id is `newest`, is older
/// than the one its last portal served (`seen`, from the lock file): a backup put back, the file
/// replaced. The sessions opened after the copy was made have no record in it, so the portal
/// sends them no Stop — said at start-up and by `check-config` (black-box tester S's D7: a
/// restore lost those Stops without a word).
fn older_database(path: &std::path::Path, seen: Option<i64>, newest: i64) -> Option<String> {
    let seen = seen.filter(|&seen| seen > newest)?;
    Some(format!(
        "the database {} is older than the one the portal last served there: its newest session is number {newest}, and the portal had seen number {seen} (a backup put back, or the file replaced). Up to {} session(s) opened after this copy was made have no record in it: their Starts went out and the portal will send them no Stop — end them at the RADIUS server or firewall (its accounting records have their Starts); sessions ended since the copy are open again here and get a second Stop (README, \"Backup and restore\")",
        path.display(),
        seen - newest
    ))
}

/// [`older_database`] for the SQLite database at `path` whose newest session id is `newest`, by
/// the lock file beside it (for `check-config`; `serve` reads the one it holds).
pub fn older_than_last_served(path: &std::path::Path, newest: i64) -> Option<String> {
    let lock = std::fs::File::open(sqlite_lock_path(path)).ok()?;
    older_database(path, read_watermark(&lock), newest)
}

/// Keeps the lock file's [`WATERMARK`] up to date while the portal serves (written when it
/// changes, every [`WATERMARK_EVERY`], and once more at `shutdown`).
async fn keep_watermark(
    storage: Storage,
    owner: std::sync::Arc<std::fs::File>,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(WATERMARK_EVERY) => false,
            _ = clock_steps::MOVED.notified() => false,
        };
        // Written every time: the clock's mark moves on (and files lost are said within a
        // second of being found).
        if let Ok(newest) = storage.newest_session_id().await {
            if let Err(e) = write_watermark(&owner, newest, storage.files_lost().is_some()) {
                tracing::debug!(error = %e, "the lock file's newest session id could not be written")
            }
        }
        if stopping {
            return;
        }
    }
}

/// Takes the SQLite database for this portal process, or says which one has it: releasing a
/// previous run's claims at start-up, the expiry and accounting loops and the web sessions kept
/// in memory all assume one portal per file (PostgreSQL is for several). An advisory lock on
/// `<file>.lock`, held while the process runs and dropped by the system when it dies (kill -9
/// included); operator commands do not take it. A lock held elsewhere is waited for up to
/// [`SQLITE_OWNER_WAIT`].
async fn own_sqlite_database(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            // Said as `check-config` says it, with the directory's absolute path.
            if let Some(problem) = crate::storage::sqlite::write_access_problem(path, true) {
                anyhow::bail!(problem);
            }
            let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
            return Err(e)
                .with_context(|| format!("while creating the directory {}", shown.display()));
        }
    }
    let lock = sqlite_lock_path(path);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock)
    {
        Ok(file) => file,
        Err(e) => {
            // Said as `check-config` says it (this user cannot write in the directory, …),
            // where it can tell.
            if let Some(problem) = crate::storage::sqlite::write_access_problem(path, true) {
                anyhow::bail!(problem);
            }
            return Err(e).with_context(|| format!("while opening {}", lock.display()));
        }
    };
    let deadline = tokio::time::Instant::now() + SQLITE_OWNER_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => {
                forget_files_lost(&file);
                return Ok(file);
            }
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another process holds {1}, the lock of the SQLite database {0}: another portal serving it (run one portal per SQLite file, or PostgreSQL — [database] url — for several replicas), or a tool holding its lock (`fuser {1}` names it)",
                path.display(),
                lock.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("while locking {}", lock.display()))
            }
        }
    }
}

impl Application {
    /// Builds everything and binds the listener; errors say what failed (nothing is served then).
    pub async fn build(
        settings: &Settings,
        leptos_options: LeptosOptions,
        demo: bool,
    ) -> anyhow::Result<Application> {
        // SIGHUP never ends the portal, also while it starts (waiting for the SQLite database's
        // lock, for PostgreSQL); one that comes now reloads the certificate once it serves.
        let hangups = crate::http::tls::Hangups::watch();
        raise_descriptor_limit();
        // What pages read from `hash.txt`, read now rather than at a first request that may
        // find the process out of file descriptors.
        app::warm_up(&leptos_options);
        let sqlite_owner = match settings.database.url {
            None => Some(own_sqlite_database(&settings.database.path).await?),
            Some(_) => None,
        };
        // Everything that can fail for reasons outside the database is bound or read before the
        // database is opened (SQLite: created and migrated) and the configuration stored: a
        // start that fails leaves no database (at most the lock file beside where it would be).
        let tasks = TaskHealth::default();
        let metrics = crate::metrics::Metrics::new();
        let radius = Radius::bind(&settings.radius, tasks.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot bind the RADIUS client socket to {} (radius.bind: an IPv4 address of this host, or 0.0.0.0)",
                    settings.radius.bind
                )
            })?
            .with_metrics(metrics.clone());
        let dynauth_socket = DynAuthSocket::bind(&settings.dynamic_authorization).await?;
        let addr = match settings.http.listen {
            Some(addr) => addr,
            None => leptos_options.site_addr,
        };
        for warning in exposure_warnings(settings, addr) {
            tracing::warn!("{warning}");
        }
        // Read before binding: a missing, unreadable or mismatched pair stops start-up here.
        let tls = match &settings.http.tls {
            Some(files) => Some((
                files.clone(),
                crate::http::tls::CurrentConfig::loaded(files)?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("while binding the web listener to {addr}"))?;
        let metrics_listener = match settings.metrics.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("while binding the metrics listener to {addr}"))?,
            ),
            None => None,
        };
        if let Some(problem) = Storage::file_in_the_way(&settings.database) {
            anyhow::bail!("{problem}");
        }
        // Too few descriptors already (before the database's own): refused before a database
        // is made; looked at again once it is open, below.
        descriptors_to_serve()?;
        let storage = Storage::connect(&settings.database, true)
            .await
            .with_context(|| crate::storage::sqlite::opening_context(&settings.database))?;
        // A database older than the one last served here (a backup put back): said, loudly;
        // then this one's newest session is the mark.
        if let Some(owner) = &sqlite_owner {
            let moved_ms = storage
                .clock_moved_ms()
                .await
                .context("while reading how far the stored times moved with the clock")?;
            clock_stepped_since_last_run(owner, moved_ms);
            if let Ok(newest) = storage.newest_session_id().await {
                if let Some(said) = older_database(
                    &settings.database.path,
                    read_watermark(owner),
                    newest.unwrap_or(0),
                ) {
                    tracing::error!("{said}");
                }
                if let Err(e) = write_watermark(owner, newest, false) {
                    tracing::warn!(error = %e, "the lock file beside the database could not be written");
                }
            }
        }
        if let Err(e) = storage.open_background().await {
            tracing::warn!(error = %crate::portal_backend::error_chain(&e),
                "the background work's own database connections could not all be opened now (each is opened when wanted): until then Stops and expiries may be late");
        }
        // The sockets and the database open: what is left must serve, and bounds how many
        // connections are open at once.
        let (spare, warning) = descriptors_to_serve()?;
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        let max_connections = crate::http::serve::connections_for(spare);
        // The demo's built-in RADIUS server listens on new ports at every start: the same
        // server, so its sessions' accounting follows it there.
        let moves = if demo {
            crate::organizations::ServerMoves::SameServer
        } else {
            crate::organizations::ServerMoves::Refused
        };
        crate::organizations::seed(&storage, &settings.organizations, moves)
            .await
            .map_err(|e| e.at_line(settings))
            .context("while storing the configured organizations")?;
        let organizations = Arc::new(
            Organizations::load(&storage)
                .await
                .context("while loading organizations")?,
        );
        let ids: Vec<String> = organizations.all().iter().map(|o| o.id.clone()).collect();
        for warning in organizations
            .all()
            .iter()
            .flat_map(|org| org.warnings())
            .chain(dynauth_warnings(&settings.dynamic_authorization, &ids))
            .chain(stored_organization_warnings(&organizations.all()))
        {
            tracing::warn!("{warning}");
        }
        // Claims held by a previous process of this database are void (SQLite; on PostgreSQL
        // other replicas' claims may be live: they run out their lease instead).
        let released = storage
            .release_outbox_claims()
            .await
            .context("while releasing accounting claims of a previous run")?;
        if released > 0 {
            tracing::info!(
                rows = released,
                "accounting rows claimed by the previous run are sent again"
            );
        }
        let accounting = Accounting::new(storage.clone(), radius.clone(), organizations.clone());
        let expiry_wake = crate::access_session::expiry::ExpiryWake::default();
        let events = SessionEvents::default();
        let expiry = Expiry::new(
            storage.clone(),
            accounting.clone(),
            expiry_wake.clone(),
            events.clone(),
        )
        .with_metrics(metrics.clone());
        let sessions = AccessSessions::new(
            storage.clone(),
            organizations.clone(),
            radius.clone(),
            accounting.clone(),
            expiry_wake,
            events.clone(),
        );
        let org_worker =
            OrganizationWorker::new(storage.clone(), organizations.clone(), sessions.clone());
        // Before anything is served, and before the periodic Interim-Updates start, the stops
        // an operator asked for while no portal ran (`session terminate`, `org disable`): each
        // says the session ended when it was asked for, or by its deadline if that came first
        // (left to expiry, just below). Expiry first would end a session whose deadline came
        // after the operator's stop by that deadline instead.
        // Sign-ins the last run was killed during (their Start on its way): no user was given
        // their sessions, so none goes on as an identity nobody holds. Before the delivery loop
        // would send those Starts late. SQLite only: on PostgreSQL other replicas' sign-ins may
        // be under way, and nothing tells them from a dead one's (ARCHITECTURE).
        if storage.backend_name() == "sqlite" {
            sessions
                .end_abandoned_sign_ins()
                .await
                .context("while ending sign-ins the last run did not finish")?;
        }
        match org_worker.tick().await {
            Ok(done) if !done.is_empty() => tracing::info!(
                jobs = done.len(),
                "organization stop jobs left from before this start done (an organization disabled, deleted or left out of the configuration; sessions an operator ended)"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(
                error = %crate::portal_backend::error_chain(e.as_ref()),
                "pending organization jobs failed at start-up; the worker retries them"
            ),
        }
        // Then the sessions that ran out while the portal was down.
        let stopped = expiry
            .expire_due(now_ms())
            .await
            .context("while stopping sessions that expired during downtime")?;
        if !stopped.is_empty() {
            tracing::info!(
                count = stopped.len(),
                "stopped sessions that expired while the portal was down"
            );
        }
        let captive = crate::http::captive::CaptiveApi {
            sessions: sessions.clone(),
            organization_id: organizations.default_id().into(),
            scheme: if settings.http.https() {
                "https"
            } else {
                "http"
            },
            public_url: settings.http.public_url.clone(),
        };
        let dynauth =
            dynauth_socket.map(|socket| socket.serving(sessions.clone(), storage.clone()));
        if let Some(listener) = &dynauth {
            if let Some(addr) = listener.local_addr() {
                tracing::info!(%addr, "Dynamic Authorization (RFC 5176) listener bound");
            }
        }
        let form_tokens = crate::http::form_token::FormTokens::new(
            storage.app_secret("form_token_key").await?,
            settings.http.https(),
        );
        // Several replicas (PostgreSQL): the exchanges this one's breakers count are told to
        // the others, whose breakers count them too.
        let breaker_news = if storage.backend_name() == "postgres" {
            let key = storage.app_secret("breaker_news_key").await?;
            radius
                .health()
                .tell_peers(crate::radius::health::SecretKey::new(key))
                .map(|news| Arc::new(tokio::sync::Mutex::new(news)))
        } else {
            None
        };
        let backend = Arc::new(
            PortalBackend::new(
                sessions.clone(),
                organizations.clone(),
                &settings.rate_limit,
                form_tokens.clone(),
                demo,
            )
            .with_metrics(metrics.clone())
            .with_web_sessions(storage.web_sessions()),
        );
        let sign_ins = backend.recent_sign_ins();
        let live_stop = CancellationToken::new();
        let session_store = storage.web_sessions();
        let router = router(RouterParts {
            demo,
            leptos_options: leptos_options.clone(),
            portal: Portal(backend.clone()),
            live: crate::http::live::LiveState {
                backend,
                events: events.clone(),
                stop: live_stop.clone(),
                streams: crate::http::live::stream_slots(max_connections),
            },
            session_store: session_store.clone(),
            secure_cookies: settings.http.https(),
            form_tokens,
            site_security: crate::http::security::SiteSecurity {
                public_url: settings.http.public_url.clone().map(std::sync::Arc::new),
                hsts: settings.http.https(),
            },
            trusted_proxies: crate::http::client_ip::TrustedProxies::new(
                settings.http.trusted_proxies.clone(),
                settings.http.forwarded_header,
            ),
            storage: storage.clone(),
            tasks: tasks.clone(),
            captive,
            organizations: organizations.clone(),
            admin: crate::http::admin::AdminApi {
                storage: storage.clone(),
                organizations: organizations.clone(),
                worker: org_worker.clone(),
                sessions: sessions.clone(),
                tokens: Arc::new(crate::http::admin::token_hashes(&settings.admin.tokens)),
                listed: Arc::new(settings.organizations.clone()),
            },
            metrics: metrics.clone(),
            radius_health: settings
                .radius
                .readiness_requires_servers
                .then(|| radius.health().clone()),
        });
        Ok(Application {
            listener,
            max_connections,
            metrics_listener,
            metrics,
            trusted_proxies: settings.http.trusted_proxies.clone(),
            ipv6_prefix: settings.rate_limit.ipv6_prefix,
            tls,
            router,
            accounting,
            expiry,
            events,
            radius,
            dynauth,
            tasks,
            retention: settings.accounting.retention,
            audit_retention: settings.audit.retention,
            live_stop,
            session_store,
            sign_ins,
            storage,
            organizations,
            org_worker,
            sessions,
            sqlite_owner: sqlite_owner.map(std::sync::Arc::new),
            breaker_news,
            hangups,
            stop_asked: StopAsked::default(),
            public_url: settings.http.public_url.clone(),
        })
    }

    /// The certificate in use with built-in TLS (tests read its reload outcomes).
    pub fn tls(&self) -> Option<crate::http::tls::CurrentConfig> {
        self.tls.as_ref().map(|(_, current)| current.clone())
    }

    /// The metrics listener's bound address, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Takes the moment a stop is asked for from `asked` (the CLI's signal handler, listening
    /// from before start-up): the stop's deadline counts from the signal.
    pub fn stop_asked_at(&mut self, asked: StopAsked) {
        self.stop_asked = asked;
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` is cancelled, then drains background tasks.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Two phases: `shutdown` (SIGTERM) stops the web server, which lets requests under way
        // finish; only then are the background tasks told (`background`), so accounting still
        // delivers the Starts and Stops those requests queue, then flushes what is due.
        let web_shutdown = shutdown;
        let shutdown = CancellationToken::new();
        // When the stop began (SIGTERM): every step after the web server's is bounded by one
        // deadline from it, not each by its own (a code review: they added up to 30 s).
        {
            let (token, asked) = (web_shutdown.clone(), self.stop_asked.clone());
            tokio::spawn(async move {
                token.cancelled().await;
                let _ = asked.set(tokio::time::Instant::now());
            });
        }
        let mut tasks = JoinSet::new();
        let mut supervised = vec![
            {
                let (accounting, shutdown) = (self.accounting.clone(), shutdown.clone());
                supervise::spawn(self.tasks.clone(), "accounting", move || {
                    accounting.clone().run(shutdown.clone())
                })
            },
            {
                let (expiry, shutdown) = (self.expiry.clone(), shutdown.clone());
                supervise::spawn(self.tasks.clone(), "expiry", move || {
                    expiry.clone().run(shutdown.clone())
                })
            },
            {
                let (sessions, shutdown) = (self.sessions.clone(), shutdown.clone());
                supervise::spawn(self.tasks.clone(), "lifetimes", move || {
                    sessions.clone().run_lifetime_caps(shutdown.clone())
                })
            },
            {
                let (sessions, shutdown) = (self.sessions.clone(), shutdown.clone());
                supervise::spawn(self.tasks.clone(), "clock", move || {
                    sessions.clone().run_clock_watch(shutdown.clone())
                })
            },
            {
                let (radius, shutdown, organizations) = (
                    self.radius.clone(),
                    shutdown.clone(),
                    self.organizations.clone(),
                );
                supervise::spawn(self.tasks.clone(), "radius-prober", move || {
                    let configured = organizations.clone();
                    radius.clone().run_prober(
                        move || {
                            configured.warn_about_secrets_that_differ();
                            (configured.servers(), configured.enabled_servers())
                        },
                        organizations.changes(),
                        shutdown.clone(),
                    )
                })
            },
            {
                let (worker, shutdown) = (self.org_worker.clone(), shutdown.clone());
                supervise::spawn(self.tasks.clone(), "organizations", move || {
                    worker.clone().run(shutdown.clone())
                })
            },
            {
                let (storage, shutdown, retention) = (
                    self.storage.clone(),
                    shutdown.clone(),
                    (self.retention, self.audit_retention),
                );
                supervise::spawn(self.tasks.clone(), "prune", move || {
                    prune_loop(storage.clone(), retention, shutdown.clone())
                })
            },
            {
                let listeners = NoticeListeners {
                    storage: self.storage.clone(),
                    events: self.events.clone(),
                    worker: self.org_worker.clone(),
                    accounting: self.accounting.clone(),
                };
                let shutdown = shutdown.clone();
                supervise::spawn(self.tasks.clone(), "notices", move || {
                    listeners.clone().run(shutdown.clone())
                })
            },
        ];
        if let Some(owner) = &self.sqlite_owner {
            let (storage, owner, shutdown) =
                (self.storage.clone(), owner.clone(), shutdown.clone());
            supervised.push(supervise::spawn(
                self.tasks.clone(),
                "watermark",
                move || keep_watermark(storage.clone(), owner.clone(), shutdown.clone()),
            ));
        }
        // The Dynamic Authorization listener answers while the web server drains, and stops
        // before the background tasks are told: the Stops of the Disconnects it answered last
        // are queued before the accounting flush looks (code reviews: stopped with the
        // background tasks, one acknowledged during the flush waited for the next start;
        // stopped at the SIGTERM, it was deaf for the whole drain).
        let dynauth_stop = CancellationToken::new();
        let dynauth = self.dynauth.as_ref().map(|listener| {
            let (listener, stop) = (listener.clone(), dynauth_stop.clone());
            supervise::spawn(self.tasks.clone(), "dynamic-authorization", move || {
                listener.clone().run(stop.clone())
            })
        });
        for handle in supervised {
            tasks.spawn(async move {
                let _ = handle.await;
            });
        }
        if let Some(news) = self.breaker_news.clone() {
            let (storage, shutdown) = (self.storage.clone(), shutdown.clone());
            let handle = supervise::spawn(self.tasks.clone(), "breaker-news", move || {
                tell_peers(storage.clone(), news.clone(), shutdown.clone())
            });
            tasks.spawn(async move {
                let _ = handle.await;
            });
        }
        if let Some(listener) = self.metrics_listener {
            let scrape = MetricsScrape {
                metrics: self.metrics.clone(),
                organizations: self.organizations.clone(),
                storage: self.storage.clone(),
                radius: self.radius.clone(),
                tasks: self.tasks.clone(),
                dynauth: self.dynauth.as_ref().map(DynAuthListener::stats),
                runtime: tokio::runtime::Handle::current(),
                reads: Default::default(),
            };
            // One scrape now: the database's gauges have values from the start, which a
            // database away before the first real scrape then keeps (as it does later).
            let _ = scrape_text(&scrape).await;
            let router = axum::Router::new()
                .route("/metrics", axum::routing::get(serve_metrics))
                .with_state(scrape);
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics served at /metrics");
            }
            // On a thread of its own (black-box tester T's D3): the portal's worker threads
            // read the database where they are, and a read that waits on a hung disk holds its
            // thread in the kernel — on two cores the only one. The scrape is what says so.
            let listener = listener
                .into_std()
                .context("while handing the metrics listener to its thread")?;
            let stop = shutdown.clone();
            let (done, ended) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => runtime.block_on(async move {
                            match tokio::net::TcpListener::from_std(listener) {
                                Ok(listener) => {
                                    crate::http::serve::serve(
                                        listener,
                                        router,
                                        Some,
                                        stop,
                                        || {},
                                        crate::http::serve::Ending::at_once(SHUTDOWN_GRACE),
                                        crate::http::serve::METRICS_CONNECTIONS,
                                    )
                                    .await
                                }
                                Err(e) => tracing::error!(error = %e, "metrics: the listener cannot be served"),
                            }
                        }),
                        Err(e) => tracing::error!(error = %e, "metrics: no runtime for its thread"),
                    }
                    let _ = done.send(());
                })
                .context("while starting the metrics thread")?;
            tasks.spawn(async move {
                let _ = ended.await;
            });
        }
        // Supervised as every background task is (the operations review's L1: a panic ended
        // it unseen, `/readyz` still ready).
        let (store, cleanup_shutdown) = (self.session_store.clone(), shutdown.clone());
        let cleanup = supervise::spawn(self.tasks.clone(), "web-session-cleanup", move || {
            let (store, shutdown) = (store.clone(), cleanup_shutdown.clone());
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = async {
                        let mut every_hour = tokio::time::interval(Duration::from_secs(3600));
                        loop {
                            every_hour.tick().await;
                            if let Err(e) = store.delete_expired().await {
                                tracing::warn!(error = %e, "expired web sessions could not be deleted; will retry");
                            }
                        }
                    } => {}
                }
            }
        });
        tasks.spawn(async move {
            let _ = cleanup.await;
        });
        let live_stop = self.live_stop.clone();
        let counted_as =
            crate::http::serve::counted_as(self.trusted_proxies.clone(), self.ipv6_prefix);
        let on_shutdown = move || live_stop.cancel();
        // SIGHUP (a reload habit, logrotate, systemd's ExecReload) never ends the portal:
        // with built-in TLS it reloads the certificate, otherwise there is nothing to reload.
        let reload = {
            let (tls, public_url, shutdown, hangups) = (
                self.tls.clone(),
                self.public_url.clone(),
                shutdown.clone(),
                self.hangups,
            );
            supervise::spawn(self.tasks.clone(), "tls-reload", move || {
                crate::http::tls::reload_on_sighup(
                    tls.clone(),
                    public_url.clone(),
                    shutdown.clone(),
                    hangups.clone(),
                )
            })
        };
        tasks.spawn(async move {
            let _ = reload.await;
        });
        match self.tls {
            Some((files, current)) => {
                tracing::info!(cert = %files.cert_file.display(), "serving HTTPS");
                let (handshakes, connections) =
                    crate::http::tls::handshakes_and_connections(self.max_connections);
                let listener = crate::http::tls::TlsListener::new(
                    self.listener,
                    current,
                    counted_as.clone(),
                    web_shutdown.clone(),
                    handshakes,
                );
                crate::http::serve::serve(
                    listener,
                    self.router,
                    move |ip| counted_as(ip),
                    web_shutdown.clone(),
                    on_shutdown,
                    crate::http::serve::Ending::pages(SHUTDOWN_GRACE),
                    connections,
                )
                .await
            }
            None => {
                crate::http::serve::serve(
                    self.listener,
                    self.router,
                    move |ip| counted_as(ip),
                    web_shutdown.clone(),
                    on_shutdown,
                    crate::http::serve::Ending::pages(SHUTDOWN_GRACE),
                    self.max_connections,
                )
                .await
            }
        }
        dynauth_stop.cancel();
        let stop_ends = self
            .stop_asked
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
            + STOP_WITHIN;
        // What the accounting flush needs after it is told, whatever the steps before took:
        // its own time, then the giving up of what is still under way, the backlog's count and
        // the release of stranded claims (`Accounting::flush`: 2 + 1 + 1 + 1 s at most).
        let flush_needs = crate::accounting::SHUTDOWN_FLUSH + Duration::from_secs(5);
        let left = || stop_ends.saturating_duration_since(tokio::time::Instant::now());
        // Before the accounting loop flushes, their Stops to go with the rest, together: the
        // ending of sessions whose sign-in failed — at least one whole try of each (3 s): open
        // at the server until their deadline otherwise (a code review) — and the Dynamic
        // Authorization requests under way (its own wait is bounded, 3 s; this one too).
        let dynauth_ends = async {
            if let Some(listener) = dynauth {
                let _ = tokio::time::timeout(Duration::from_secs(4), listener).await;
            }
        };
        tokio::join!(
            self.sessions.end_unlinked_before_exit(
                left()
                    .saturating_sub(flush_needs)
                    .clamp(Duration::from_secs(3), SHUTDOWN_GRACE),
            ),
            dynauth_ends,
        );
        shutdown.cancel();
        let drain_for = left().max(flush_needs);
        let drained = tokio::time::timeout(drain_for, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("background tasks did not stop within {drain_for:?}");
        }
        // Bounded: a hung disk does not hold the exit.
        if tokio::time::timeout(Duration::from_secs(1), self.storage.close())
            .await
            .is_err()
        {
            tracing::warn!("the database's last writes did not finish at the exit");
        }
        Ok(())
    }
}

/// Start-up warnings for settings that leave a reachable portal weaker than it should be.
/// Dynamic Authorization set-ups that work on a test bench and fail, or act too widely, in a
/// real network: replies from a wildcard address, a client that may end sessions in every
/// organization, a client tied to organizations that do not exist.
pub(crate) fn dynauth_warnings(
    dynauth: &crate::config::DynamicAuthorizationSettings,
    organizations: &[String],
) -> Vec<String> {
    let mut warnings = Vec::new();
    if dynauth.clients.is_empty() {
        return warnings;
    }
    if dynauth.listen.ip().is_unspecified() {
        warnings.push(format!("the Dynamic Authorization listener on {} answers from whichever address the kernel routes by, not always the one a request was sent to: on a host with more than one address, RADIUS servers drop such answers; set dynamic_authorization.listen to the address they send to", dynauth.listen));
    }
    for client in &dynauth.clients {
        let name = &client.name;
        match &client.organizations {
            None if organizations.len() > 1 => warnings.push(format!("Dynamic Authorization client `{name}` may end sessions of all {} organizations: a Disconnect-Request naming only a User-Name ends that name's sessions in every one; list the client's organizations (dynamic_authorization.clients.organizations)", organizations.len())),
            None => {}
            Some(named) => {
                for id in named
                    .iter()
                    .filter(|id| !organizations.iter().any(|o| o.eq_ignore_ascii_case(id)))
                {
                    warnings.push(format!("Dynamic Authorization client `{name}` names organization `{id}`, which does not exist: its requests for it find no session"));
                }
            }
        }
    }
    warnings
}

/// A server as [`duplicate_server_warnings`] compares them: its name, its authentication and
/// accounting addresses.
pub(crate) type ServerAt<'a> = (&'a str, SocketAddr, SocketAddr);

/// The servers of the configuration file's organizations, for [`duplicate_server_warnings`].
pub(crate) fn file_servers(
    organizations: &[crate::config::OrganizationSettings],
) -> Vec<(&str, Vec<ServerAt<'_>>)> {
    organizations
        .iter()
        .map(|org| {
            let servers = org.servers.iter().map(|s| {
                (
                    s.name.as_str(),
                    SocketAddr::new(s.address, s.auth_port),
                    SocketAddr::new(s.address, s.acct_port),
                )
            });
            (org.id.as_str(), servers.collect())
        })
        .collect()
}

/// The servers of an organization as stored (also one created or changed through the CLI or
/// the admin API), for [`duplicate_server_warnings`].
pub(crate) fn stored_servers(
    org: &crate::organizations::Organization,
) -> (&str, Vec<ServerAt<'_>>) {
    let servers = org
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.auth_addr, s.acct_addr));
    (org.id.as_str(), servers.collect())
}

/// After a change of stored organization `org` through the CLI or the admin API: two of its
/// servers that are one server, and another organization that reaches one of its accounting
/// servers as the same NAS.
pub(crate) fn change_warnings(
    all: &[Arc<crate::organizations::Organization>],
    org: &crate::organizations::Organization,
) -> Vec<String> {
    let mut warnings = org.warnings();
    warnings.extend(duplicate_server_warnings([stored_servers(org)]));
    warnings.extend(shared_nas_warnings(
        &all.iter().map(|o| stored_nas(o)).collect::<Vec<_>>(),
        Some(&org.id),
    ));
    warnings
}

/// What `serve` warns of among the organizations it holds (`check-config` of those it would):
/// two servers of one that are one server, and several that reach one accounting server as
/// one NAS.
pub(crate) fn stored_organization_warnings(
    all: &[Arc<crate::organizations::Organization>],
) -> Vec<String> {
    let mut warnings = duplicate_server_warnings(all.iter().map(|org| stored_servers(org)));
    warnings.extend(shared_nas_warnings(
        &all.iter().map(|org| stored_nas(org)).collect::<Vec<_>>(),
        None,
    ));
    warnings
}

/// An organization as [`shared_nas_warnings`] compares them: its id, the NAS identity its
/// accounting presents (NAS-IP-Address, NAS-Identifier) and its servers' accounting addresses.
pub(crate) type NasAt<'a> = (&'a str, (IpAddr, &'a str), Vec<SocketAddr>);

/// [`NasAt`] of the configuration file's organizations.
pub(crate) fn file_nas(organizations: &[crate::config::OrganizationSettings]) -> Vec<NasAt<'_>> {
    organizations
        .iter()
        .map(|org| {
            let acct = org
                .servers
                .iter()
                .map(|s| SocketAddr::new(s.address, s.acct_port));
            (
                org.id.as_str(),
                (org.nas_ip, org.nas_identifier.as_str()),
                acct.collect(),
            )
        })
        .collect()
}

/// [`NasAt`] of a stored organization.
pub(crate) fn stored_nas(org: &crate::organizations::Organization) -> NasAt<'_> {
    (
        org.id.as_str(),
        (org.nas.ip, org.nas.identifier.as_str()),
        org.servers.iter().map(|s| s.acct_addr).collect(),
    )
}

/// Organizations that send accounting to one server as one NAS (the same NAS-IP-Address and
/// NAS-Identifier — `nas_identifier` left at its default in each): that server, and whatever
/// it feeds, can tell their sessions apart only by Acct-Session-Id. One line per server and
/// NAS identity, naming the organizations (ten at most); with `only`, the lines that
/// organization is in.
pub(crate) fn shared_nas_warnings(organizations: &[NasAt<'_>], only: Option<&str>) -> Vec<String> {
    let mut groups: std::collections::BTreeMap<(SocketAddr, IpAddr, &str), Vec<&str>> =
        std::collections::BTreeMap::new();
    for (id, (nas_ip, nas_identifier), acct) in organizations {
        let mut servers = acct.clone();
        servers.sort();
        servers.dedup();
        for server in servers {
            groups
                .entry((server, *nas_ip, nas_identifier))
                .or_default()
                .push(id);
        }
    }
    const NAMED: usize = 10;
    groups
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1 && only.is_none_or(|only| ids.contains(&only)))
        .map(|((server, nas_ip, nas_identifier), mut ids)| {
            // Named in order, whatever order the organizations came in (a cache's).
            ids.sort_unstable();
            let mut named = ids
                .iter()
                .take(NAMED)
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ");
            if ids.len() > NAMED {
                named.push_str(&format!(" and {} more", ids.len() - NAMED));
            }
            format!(
                "organizations {named} send accounting to {server} as one NAS (NAS-IP-Address {nas_ip}, NAS-Identifier `{nas_identifier}`): that server can tell their sessions apart only by Acct-Session-Id; give each its own `nas_identifier`"
            )
        })
        .collect()
}

/// Servers of one organization that are one server (the same address and ports under two
/// names, a copy-paste): failing over from one to the other reaches the same server again.
pub(crate) fn duplicate_server_warnings<'a>(
    organizations: impl IntoIterator<Item = (&'a str, Vec<ServerAt<'a>>)>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (org, servers) in organizations {
        for (i, (a, a_auth, a_acct)) in servers.iter().enumerate() {
            for (b, b_auth, b_acct) in &servers[i + 1..] {
                if (a_auth, a_acct) == (b_auth, b_acct) {
                    warnings.push(format!(
                        "organization `{org}`: servers `{a}` and `{b}` are one server ({}, ports {} and {}): failing over from one to the other reaches the same server again",
                        a_auth.ip(), a_auth.port(), a_acct.port()
                    ));
                }
            }
        }
    }
    warnings
}

/// What `serve` warns about the way it is reached (`addr`: where it listens): a certificate not
/// for `public_url`'s host, a wide trusted proxy network, and — reachable by others — no
/// `public_url`, or plain HTTP. `check-config`
/// says the same.
pub(crate) fn exposure_warnings(settings: &Settings, addr: SocketAddr) -> Vec<String> {
    let http = &settings.http;
    let mut warnings = Vec::new();
    if let (Some(tls), Some(url)) = (&http.tls, &http.public_url) {
        warnings.extend(crate::http::tls::name_warning(tls, url));
    }
    for net in &http.trusted_proxies {
        let wide = match net {
            ipnet::IpNet::V4(v4) => v4.prefix_len() < 24,
            ipnet::IpNet::V6(v6) => v6.prefix_len() < 64,
        };
        if wide {
            warnings.push(format!("trusted_proxies holds a wide network, {net}: any client inside it can name any address as its own; list your proxies' addresses"));
        }
    }
    // Reachable by others: listening beyond loopback, or behind a proxy (which may listen
    // anywhere and pass on whatever Host a browser sent).
    let proxied = !http.trusted_proxies.is_empty();
    if addr.ip().is_loopback() && !proxied {
        return warnings;
    }
    let place = if proxied {
        format!("behind a proxy (listening on {addr})")
    } else {
        format!("on {addr}")
    };
    if http.public_url.is_none() {
        warnings.push(format!("no public_url {place}: form posts are checked against the Host header only, which a DNS-rebinding page controls; set public_url to the address users type"));
    }
    if !http.https() {
        warnings.push(format!("plain HTTP {place} without an https public_url: cookies are not Secure; serve HTTPS ([http.tls]) or put a TLS proxy in front and set public_url = \"https://…\""));
    }
    warnings
}

/// What a metrics scrape reads.
#[derive(Clone)]
struct MetricsScrape {
    metrics: crate::metrics::Metrics,
    organizations: Arc<Organizations>,
    storage: Storage,
    radius: Radius,
    tasks: TaskHealth,
    dynauth: Option<Arc<crate::dynauth::DynAuthStats>>,
    /// The portal's runtime (the database is read on it).
    runtime: tokio::runtime::Handle,
    /// Its reads' turns ([`Storage::read_apart`]).
    reads: Arc<tokio::sync::Mutex<()>>,
}

/// `GET /metrics` on the metrics listener: recorded metrics plus the state read now.
async fn serve_metrics(
    axum::extract::State(scrape): axum::extract::State<MetricsScrape>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape_text(&scrape).await,
    )
        .into_response()
}

/// How long a scrape waits for the database's gauges (Prometheus waits 10 s by default).
const METRICS_READ_LIMIT: Duration = Duration::from_secs(3);

/// The metrics' text, with the state gauges set from what is read now.
async fn scrape_text(scrape: &MetricsScrape) -> String {
    // The database away (a PostgreSQL restart) is when the other metrics matter most: they
    // are still served, with `portal_database_up` 0.
    // A database that does not answer (a hung disk, a path to PostgreSQL gone without a word)
    // is one that cannot be read: a scrape waiting on it would not be answered at all, its
    // connection held (a code review).
    // Read apart from this thread (and at most one such read out at a time): a read a hung
    // disk holds must not hold the scrape.
    let read = scrape
        .storage
        .read_apart(
            &scrape.runtime,
            &scrape.reads,
            METRICS_READ_LIMIT,
            |storage| async move { storage.metrics_snapshot(now_ms()).await },
        )
        .await;
    let unwritable = !scrape.storage.writable()
        || scrape.storage.found_read_only()
        || scrape.storage.stalled()
        || scrape.storage.files_lost().is_some();
    let mut snapshot = match read {
        Ok(snapshot) => crate::metrics::Snapshot {
            database_unwritable: unwritable,
            ..snapshot
        },
        Err(e) => {
            let error = crate::portal_backend::error_chain(&e);
            static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(left_out) = LOG.admit() {
                tracing::warn!(%error, similar_left_out = left_out,
                    "metrics: the database cannot be read; its gauges keep their last values");
            }
            crate::metrics::Snapshot {
                database_unreadable: true,
                ..Default::default()
            }
        }
    };
    use crate::radius::breaker::BreakerState;
    snapshot.breakers = scrape
        .radius
        .health()
        .states()
        .into_iter()
        .map(|(addr, state)| {
            let value = match state {
                BreakerState::Closed { .. } => 0,
                BreakerState::Open { .. } => 1,
                BreakerState::Trial { .. } => 2,
            };
            (addr.to_string(), value)
        })
        .collect();
    snapshot.tasks_down = scrape.tasks.down().len() as i64;
    snapshot.task_crashes = scrape.tasks.all_crashes();
    snapshot.dynauth = scrape.dynauth.as_ref().map(|stats| stats.counts());
    // Every configured organization and server has its series, at 0 while nothing happened:
    // an alert on "= 0" or on `absent()` sees them from the start, not after a first event.
    for organization in scrape.organizations.all() {
        if !snapshot.database_unreadable
            && !snapshot
                .active_sessions
                .iter()
                .any(|(id, _)| *id == organization.id)
        {
            snapshot.active_sessions.push((organization.id.clone(), 0));
        }
        for server in &organization.servers {
            let (auth, acct) = (server.auth_addr.to_string(), server.acct_addr.to_string());
            scrape.metrics.known_server(&server.name, &auth, &acct);
            for address in [auth, acct] {
                if !snapshot.breakers.iter().any(|(a, _)| *a == address) {
                    snapshot.breakers.push((address, 0));
                }
            }
        }
    }
    scrape.metrics.render(&snapshot)
}

/// Tells the other replicas (NOTIFY) what this one's breakers count, as it happens; news that
/// waited longer than [`crate::radius::health::PEER_NEWS_FRESH`] (the database slow or away)
/// is dropped, not told late.
async fn tell_peers(storage: Storage, news: BreakerNews, shutdown: CancellationToken) {
    let mut news = news.lock().await;
    loop {
        let (at, told) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = news.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let left = crate::radius::health::PEER_NEWS_FRESH.saturating_sub(at.elapsed());
        if left.is_zero() {
            continue;
        }
        let notice = crate::storage::Notice::Breaker {
            addr: told.addr,
            secret: told.secret,
            answered: told.answered,
        };
        if !matches!(
            tokio::time::timeout(left, storage.announce_breaker(notice)).await,
            Ok(Ok(()))
        ) {
            tracing::debug!(addr = %told.addr,
                "a RADIUS server's news could not be told to the other replicas in time (they count their own exchanges)");
        }
    }
}

/// Where other replicas' announcements go (PostgreSQL; on SQLite the task ends at once).
#[derive(Clone)]
struct NoticeListeners {
    storage: Storage,
    events: SessionEvents,
    worker: OrganizationWorker,
    accounting: Accounting,
}

impl NoticeListeners {
    async fn run(self, shutdown: CancellationToken) {
        use crate::storage::Notice;
        let mut lost = false;
        loop {
            match self.storage.listen().await {
                Ok(None) => return,
                Ok(Some(mut listener)) => {
                    if lost {
                        // What other replicas announced meanwhile was not heard: the cache,
                        // the outbox and the open pages' sessions are looked at now rather
                        // than at their next timers.
                        tracing::info!("listening for other replicas' changes again");
                        self.worker.wake();
                        self.accounting.wake();
                        self.events.publish_any();
                    }
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            notice = listener.recv() => match notice {
                                Ok(Notice::Session(id)) => self.events.publish(id),
                                Ok(Notice::Organizations) => self.worker.wake(),
                                Ok(Notice::Accounting) => self.accounting.wake(),
                                Ok(Notice::Breaker { addr, secret, answered }) => self.accounting.from_peer(
                                    crate::radius::health::PeerNews { addr, secret, answered },
                                ),
                                Err(e) => {
                                    tracing::error!(error = %crate::portal_backend::error_chain(&e),
                                        "listening for other replicas' changes failed; reconnecting");
                                    lost = true;
                                    break;
                                }
                            },
                        }
                    }
                }
                Err(e) => {
                    if !lost {
                        tracing::error!(error = %crate::portal_backend::error_chain(&e),
                            "cannot listen for other replicas' changes; retrying every second");
                    }
                    lost = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Deletes accounting history and ended sessions older than the accounting retention, and
/// audit entries older than the audit retention, hourly — in chunks, each its own write
/// ([`crate::storage::in_chunks`]).
async fn prune_loop(
    storage: Storage,
    (retention, audit_retention): (Duration, Duration),
    shutdown: CancellationToken,
) {
    loop {
        let before = now_ms() - audit_retention.as_millis() as i64;
        if let Err(e) =
            crate::storage::in_chunks(&shutdown, |limit| storage.prune_audit(before, limit)).await
        {
            tracing::error!(error = ?e, "pruning old audit entries failed");
        }
        let before = now_ms() - retention.as_millis() as i64;
        match crate::storage::in_chunks(&shutdown, |limit| storage.prune(before, limit)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sessions = n,
                "pruned ended sessions older than the retention"
            ),
            Err(e) => tracing::error!(error = ?e, "pruning old sessions failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_leave_a_core_to_the_database_writer_unless_told() {
        assert_eq!(worker_threads(None, 2), (1, None));
        assert_eq!(worker_threads(None, 1), (1, None));
        assert_eq!(worker_threads(None, 8), (7, None));
        assert_eq!(worker_threads(Some("4"), 2), (4, None));
        let (n, warning) = worker_threads(Some("0"), 4);
        assert_eq!(n, 3);
        assert!(warning.unwrap().contains("TOKIO_WORKER_THREADS=\"0\""));
        assert!(worker_threads(Some("many"), 2).1.is_some());
    }
    use crate::config::{DynamicAuthorizationClient, DynamicAuthorizationSettings, Secret};

    fn client(name: &str, organizations: Option<&[&str]>) -> DynamicAuthorizationClient {
        DynamicAuthorizationClient {
            name: name.into(),
            address: "10.0.0.9".parse().unwrap(),
            organizations: organizations.map(|o| o.iter().map(|s| s.to_string()).collect()),
            secret: Some(Secret::new("s")),
            secret_file: None,
        }
    }

    #[tokio::test]
    async fn a_portal_serving_a_sqlite_database_is_seen_by_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("portal.db");
        assert!(!sqlite_portal_running(&db), "never served");
        let held = own_sqlite_database(&db).await.unwrap();
        assert!(sqlite_portal_running(&db));
        assert!(sqlite_portal_running(&db), "looking does not take it");
        // The same file through a link, or through a linked directory: the same lock.
        std::fs::write(&db, b"").unwrap();
        let link = dir.path().join("other.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let linked_dir = dir.path().join("linked");
        std::os::unix::fs::symlink(dir.path(), &linked_dir).unwrap();
        for other in [link, linked_dir.join("portal.db")] {
            assert!(sqlite_portal_running(&other), "{}", other.display());
        }
        drop(held);
        assert!(!sqlite_portal_running(&db), "its portal has ended");
    }

    /// A run whose files were lost left `files_lost=yes` in the lock file: the next run drops it
    /// as it takes the lock (operator commands would refuse the database), keeping the rest.
    #[tokio::test]
    async fn a_new_run_forgets_the_last_runs_lost_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("portal.db");
        let lock = dir.path().join("portal.db.lock");
        let held = own_sqlite_database(&db).await.unwrap();
        write_watermark(&held, Some(7), true).unwrap();
        assert!(sqlite_files_lost(&db), "said while that run serves");
        drop(held);
        assert!(!sqlite_files_lost(&db), "no portal serves it");
        let held = own_sqlite_database(&db).await.unwrap();
        assert!(!sqlite_files_lost(&db));
        assert_eq!(read_watermark(&held), Some(7), "the rest kept");
        assert!(!std::fs::read_to_string(&lock)
            .unwrap()
            .contains("files_lost"));
    }

    #[test]
    fn one_server_under_two_names_is_warned_about() {
        let org = |servers: &str| -> crate::config::OrganizationSettings {
            toml::from_str(&format!("id = \"acme\"\nname = \"Acme\"\n{servers}")).unwrap()
        };
        let server = |name: &str, address: &str, auth: u16, acct: u16| {
            format!("[[servers]]\nname = \"{name}\"\naddress = \"{address}\"\nauth_port = {auth}\nacct_port = {acct}\nsecret = \"s\"\n")
        };
        let same =
            org(&(server("a", "10.0.0.1", 1812, 1813) + &server("b", "10.0.0.1", 1812, 1813)));
        let warnings = duplicate_server_warnings(file_servers(&[same]));
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].contains("`acme`: servers `a` and `b` are one server (10.0.0.1"),
            "{}",
            warnings[0]
        );
        // Another address, or another port: two servers.
        let apart = org(&(server("a", "10.0.0.1", 1812, 1813)
            + &server("b", "10.0.0.2", 1812, 1813)
            + &server("c", "10.0.0.1", 1812, 1814)));
        assert!(duplicate_server_warnings(file_servers(&[apart])).is_empty());
    }

    #[test]
    fn two_organizations_reaching_one_server_as_one_nas_are_warned_about() {
        let org = |id: &str, nas: &str, acct: u16| -> crate::config::OrganizationSettings {
            toml::from_str(&format!(
                "id = \"{id}\"\nname = \"{id}\"\n{nas}[[servers]]\nname = \"ise\"\naddress = \"10.0.0.1\"\nacct_port = {acct}\nsecret = \"s\"\n"
            ))
            .unwrap()
        };
        // Both with the default NAS-Identifier, one accounting server: one warning.
        let orgs = [org("acme", "", 1813), org("beta", "", 1813)];
        let warnings = shared_nas_warnings(&file_nas(&orgs), None);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].contains("`acme`, `beta` send accounting to 10.0.0.1:1813 as one NAS")
                && warnings[0].contains("nas_identifier"),
            "{}",
            warnings[0]
        );
        assert_eq!(shared_nas_warnings(&file_nas(&orgs), Some("beta")).len(), 1);
        assert!(shared_nas_warnings(&file_nas(&orgs), Some("gamma")).is_empty());
        // Each its own NAS-Identifier, or another accounting port: told apart.
        let named = [
            org("acme", "nas_identifier = \"portal-acme\"\n", 1813),
            org("beta", "", 1813),
        ];
        assert!(shared_nas_warnings(&file_nas(&named), None).is_empty());
        let apart = [org("acme", "", 1813), org("beta", "", 1814)];
        assert!(shared_nas_warnings(&file_nas(&apart), None).is_empty());
        // Many tenants on one server: one line, ten named.
        let ids: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
        let many: Vec<_> = ids.iter().map(|id| org(id, "", 1813)).collect();
        let warnings = shared_nas_warnings(&file_nas(&many), None);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(warnings[0].contains("`t09` and 2 more"), "{}", warnings[0]);
    }

    #[test]
    fn dynauth_set_ups_that_fail_or_act_too_widely_are_warned_about() {
        let orgs = ["acme".to_string(), "beta".to_string()];
        let mut dynauth = DynamicAuthorizationSettings::default();
        assert!(
            dynauth_warnings(&dynauth, &orgs).is_empty(),
            "no clients, no listener"
        );
        dynauth.clients = vec![client("ise", None), client("fr", Some(&["acme", "gone"]))];
        let warnings = dynauth_warnings(&dynauth, &orgs);
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].contains("0.0.0.0:3799"), "{}", warnings[0]);
        assert!(
            warnings[1].contains("`ise` may end sessions of all 2"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].contains("`gone`, which does not exist"),
            "{}",
            warnings[2]
        );
        // Bound to its address, each client tied to existing organizations: nothing to say.
        dynauth.listen = "192.0.2.10:3799".parse().unwrap();
        dynauth.clients = vec![
            client("ise", Some(&["acme"])),
            client("fr", Some(&["BETA"])),
        ];
        assert!(dynauth_warnings(&dynauth, &orgs).is_empty());
        // One organization: an unrestricted client acts on it alone.
        dynauth.clients = vec![client("ise", None)];
        assert!(dynauth_warnings(&dynauth, &orgs[..1]).is_empty());
    }
}
