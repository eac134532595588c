//! The PostgreSQL implementation of storage, for several portal replicas on one database.
//!
//! Each contract method is one transaction (most are one statement). What SQLite gets from its
//! single writer, PostgreSQL gets from row locks and claims:
//! - a session is stopped by an `UPDATE … WHERE state = 'active'`: of two replicas stopping it,
//!   the second finds it stopped and queues nothing (exactly one Stop);
//! - due expiries, due Interim-Updates and outbox rows are taken with `FOR UPDATE SKIP LOCKED`,
//!   so replicas split the work instead of waiting on each other, and an outbox claim is a lease
//!   (`claimed_until`): a replica that dies mid-claim leaves rows another takes once it ends;
//! - a login locks its organization row `FOR SHARE` (a disable, which updates the row, waits or
//!   is waited for: either the disable's stop job sees the session or the login sees the
//!   disable) and takes a transaction advisory lock on (organization, client IP), so two
//!   replicas logging in the same client one after the other preempt, never collide;
//! - organization changes take one transaction advisory lock, serialized like SQLite's writer.
//!
//! Expiry and Interim-Update sweeps are set-based: one statement stops a whole chunk of due
//! sessions, queues their Stops and writes their audit entries.
//!
//! Changes other replicas must hear of at once are announced with NOTIFY on one channel, in the
//! transaction that makes them (delivered after the commit): a session changed (its open pages
//! re-read it), organizations changed (caches and the job worker look now), accounting became
//! due (delivery loops look now). Each announcement names the process that made it, which
//! ignores its own ([`NoticeListener`]).

use super::{
    decode_classes, encode_classes,
    organizations::{audit_in, Audit, OrgBackend, OrgTx},
    AccessSessionRecord, Acknowledged, AddressStops, AfterStops, Delivered, NewAccessSession,
    Notice, OpenedSession, OutboxEntry, OutboxRow, SessionMatch, SessionStore, SignInLease,
    StopOutcome, Stopped, StorageError, WaitingRow, AUTH_SERVER_DESTINATION,
};
use crate::radius::{status_type, terminate_cause};
use sqlx::{
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow},
    PgConnection, PgPool, Postgres, Row,
};
use std::{str::FromStr, sync::Arc, time::Duration};

/// The PostgreSQL backend. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    /// Requests' connections.
    requests: PgPool,
    /// Background work's connections ([`super::background`]): opened at start-up and kept, so
    /// requests holding every connection they may have never keep a Stop or an expiry waiting.
    background: PgPool,
    /// The LISTEN connection's (one, held for good).
    listening: PgPool,
    /// Since when background work has found no connection (see `note_background`).
    starved: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// This process, in the announcements it makes (random per process).
    origin: Arc<str>,
    /// Whether the server is known not to answer (every request then fails at once).
    reach: Arc<Reachability>,
    /// What this replica knows of the planner's statistics of the outbox
    /// ([`PgStore::keep_outbox_statistics`]).
    outbox_statistics: Arc<OutboxStatistics>,
    /// When a call last found the server refusing writes (unix ms, 0: never) — a standby, a
    /// read-only setting, a full disk ([`StorageError::refuses_writes`]): not writable for
    /// [`super::engine::FAILING_FOR_MS`] after it (`/readyz`, `portal_database_up`), as on
    /// SQLite (the storage review's M1: both said "up" while no session could be stopped).
    refused_writes_at: Arc<std::sync::atomic::AtomicI64>,
    /// When the last `/readyz` probe found the server taking no writes (unix ms; 0: it did
    /// not) ([`SessionStore::ping`]): counted for [`super::engine::FAILING_FOR_MS`], so a
    /// finding no probe follows up does not refuse sign-ins for good.
    read_only_seen_at: Arc<std::sync::atomic::AtomicI64>,
    /// When a call was last given up unanswered ([`CALL_GIVE_UP`]; unix ms, 0: never): the
    /// connections going back to the pools are checked with a bound for a while after
    /// ([`released_checked`]).
    gave_up_at: Arc<std::sync::atomic::AtomicI64>,
}

/// For this long after a call was given up unanswered (ms), a connection going back to its
/// pool is checked with a bound ([`released_checked`]).
const CHECK_RELEASES_FOR_MS: i64 = 10 * 60 * 1000;

/// How long such a check waits for the server's answer.
const RELEASE_CHECK: Duration = Duration::from_secs(5);

/// A connection going back to its pool (sqlx's `after_release`): shortly after a call was given
/// up unanswered (`gave_up_at`), pinged with a bound, and dropped when the server says nothing
/// — sqlx's own ping of a returned connection waits without one, holding the connection's
/// pool slot for the quarter of an hour TCP takes (the whole-change review's F7 of session
/// 82: a given-up call freed its caller, but the background pool's four connections stayed
/// taken, and no Stop left the replica). Otherwise kept as it is, at no cost.
fn released_checked<'c>(
    connection: &'c mut PgConnection,
    gave_up_at: Arc<std::sync::atomic::AtomicI64>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send + 'c>> {
    Box::pin(async move {
        let since =
            crate::access_session::now_ms() - gave_up_at.load(std::sync::atomic::Ordering::Relaxed);
        if since > CHECK_RELEASES_FOR_MS {
            return Ok(true);
        }
        match tokio::time::timeout(RELEASE_CHECK, sqlx::Connection::ping(connection)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "a connection going back to the pool did not answer its check",
            ))),
        }
    })
}

/// `hook`, typed as sqlx's `after_release` takes it (for every lifetime of the connection).
fn release_hook<F>(hook: F) -> F
where
    F: for<'c> Fn(
        &'c mut PgConnection,
        sqlx::pool::PoolConnectionMetadata,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send + 'c>,
    >,
{
    hook
}

/// The outbox's statistics as this replica keeps them up to date: the pending rows counted
/// when it last had them analysed, when it last counted, and whether it may analyse at all.
#[derive(Default)]
struct OutboxStatistics {
    analysed_at_pending: std::sync::atomic::AtomicI64,
    counted_at: std::sync::Mutex<Option<std::time::Instant>>,
    refused: std::sync::atomic::AtomicBool,
    /// A look is under way.
    looking: std::sync::atomic::AtomicBool,
}

/// Marks the outbox statistics' look done when dropped.
struct LookDone(Arc<OutboxStatistics>);

impl Drop for LookDone {
    fn drop(&mut self) {
        self.0
            .looking
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How often the pending rows are counted, at most (the delivery loop asks on each look).
const STATISTICS_LOOK_EVERY: Duration = Duration::from_secs(2);
/// Pending rows below which the planner's view of them does not matter.
const STATISTICS_MIN_PENDING: i64 = 1_000;
/// A sweep that queued this many rows has the statistics looked at before its Stops leave.
const STATISTICS_BULK: usize = 500;

/// How long a check of a database suspected away waits for a connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The second look's, after a first that proved nothing ([`Reachability::check`]'s
/// `refusal_only`): long enough for a busy server to open a connection.
const PATIENT_CHECK_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the check then waits for a working connection of the pool's.
const POOL_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the database is checked again while it does not answer.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Connections a replica opens at most: requests', background work's and the LISTEN one.
const MAX_POOL_CONNECTIONS: u32 = REQUEST_CONNECTIONS + BACKGROUND_CONNECTIONS + 1;
/// Connections requests may hold at once. Each is closed a minute after it was opened (when
/// given back; one unused a minute too): sqlx hands out its idle connections in turn, so a
/// load balancer's probe every few seconds would otherwise keep every connection a burst
/// opened, and the server's slots taken from other replicas, their background work and
/// operator commands, for good.
const REQUEST_CONNECTIONS: u32 = 11;
const REQUEST_LIFETIME: Duration = Duration::from_secs(60);
/// Background work's own connections: few, opened at start-up and kept (never given back for
/// idleness; renewed every half hour, as the requests' are, so none stays on a server a
/// failover left behind — and sqlx's maintenance then tops them up).
pub(crate) const BACKGROUND_CONNECTIONS: u32 = 4;
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// How long a request waits for a connection; background work waits longer (it has no user
/// waiting, and a burst of deliveries queues for its few connections).
const REQUEST_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKGROUND_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(15);
/// A call through [`PgStore::guarded`] this long is logged (throttled): a pool too small for
/// the load, a lock wait, or a slow server.
const SLOW_CALL: Duration = Duration::from_secs(2);
/// A call through [`PgStore::guarded`] not answered within this is given up, as the database
/// away (its outcome unknown, as after a connection reset): a live server answers or cancels
/// each statement within its `statement_timeout` (60 s). A call already on the wire when the
/// server's host died without a word (power lost, a partition, a failover that moved the
/// address) would otherwise wait for TCP's retransmissions to give up — about 15 minutes —,
/// or for ever when the server had acknowledged the query: the expiry pass or the delivery
/// loop stuck on it, no Stop leaving this replica, while `/readyz` says ready (the storage
/// review's F1 of session 82).
const CALL_GIVE_UP: Duration = Duration::from_secs(90);

/// Whether PostgreSQL is known not to answer. The pool alone would make every request wait
/// its acquire timeout (5 s) while the server is stopped — it retries a refused connection
/// until then — and pages, `/readyz` and every background loop with them. So a request that
/// fails as "unavailable" has the server checked at once with a connection of its own (the
/// real error, in at most [`CHECK_TIMEOUT`]); while that fails, requests fail at once
/// (`StorageError::Unreachable`, a 503 for pages) and a check every 2 s or so looks again. A
/// check that connects — or that the server answers with a refusal of its own (too many
/// clients, authentication) — ends it: a pool that was only busy, or one connection that
/// broke, never makes requests fail.
struct Reachability {
    options: PgConnectOptions,
    /// Background work's pool and requests': a connection of either that still works means
    /// the server is there.
    pools: [PgPool; 2],
    /// Why the last check failed; None while the server answers.
    down: std::sync::Mutex<Option<String>>,
    /// A check is running (one at a time).
    checking: std::sync::atomic::AtomicBool,
    /// When a slow call last had the server checked ([`Reachability::suspect`]).
    suspected_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often slow calls may have the server checked.
const SUSPECT_EVERY: Duration = Duration::from_secs(5);

impl Reachability {
    /// Err at once while the server is known not to answer.
    fn admit(&self) -> Result<(), StorageError> {
        match &*self.down.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(StorageError::Unreachable(reason.clone())),
            None => Ok(()),
        }
    }

    /// After `error`: if it says the database is away, checks it (unless a check runs). A
    /// pool that found no connection in time proves little of the server (the pool's
    /// connections all busy under load): a new connection slow to open then is looked at again
    /// with patience before the server counts as away — it had every replica of a busy server
    /// fail every call at once, and their `/readyz` with them, until the load came back (the
    /// storage review's L2).
    fn observe(self: &Arc<Self>, error: &StorageError) {
        if !error.is_unavailable() || matches!(error, StorageError::Unreachable(_)) {
            return;
        }
        self.check(matches!(
            error,
            StorageError::Database(sqlx::Error::PoolTimedOut)
        ));
    }

    /// A call has waited [`SLOW_CALL`]: the server may be away — the pool retries a refused
    /// connection until its acquire timeout, 5 s for requests and 15 s for background work —,
    /// so it is checked now, while that call waits on, at most once per [`SUSPECT_EVERY`].
    /// Calls slow for another reason (pools full, a busy server) cost a connection attempt
    /// that often, and do not make the server "away" by a connection slow to open: only a
    /// definite refusal does, or no connection within a patient second look either while the
    /// pool's own give none.
    fn suspect(self: &Arc<Self>) {
        {
            let mut last = self.suspected_at.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < SUSPECT_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        self.check(true);
    }

    /// Checks the server (unless a check runs), and again every [`RECHECK_EVERY`] while it
    /// does not answer. `refusal_only`: the first look counts the server away only if it
    /// refuses; one that does not open a connection in time (which proves nothing of a busy
    /// server) is followed by a patient look ([`PATIENT_CHECK_TIMEOUT`]) that decides.
    fn check(self: &Arc<Self>, refusal_only: bool) {
        use std::sync::atomic::Ordering;
        if self.checking.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut refusal_only = refusal_only;
            let mut patience = CHECK_TIMEOUT;
            loop {
                let away = match tokio::time::timeout(
                    patience,
                    sqlx::ConnectOptions::connect(&this.options),
                )
                .await
                {
                    Ok(Ok(connection)) => {
                        let _ = sqlx::Connection::close(connection).await;
                        None
                    }
                    // Refused, unreachable, reset, or a server starting or shutting down.
                    Ok(Err(e)) if server_away(&e) => Some(e.to_string()),
                    // It answered (too many clients, a password changed, …): the pool's own
                    // connections may still work, and requests say what is wrong themselves —
                    // except for a server out of connection slots: the pool then reports only
                    // that it timed out waiting, so its reason is said here.
                    Ok(Err(e)) => {
                        if out_of_slots(&e) {
                            static LOG: crate::telemetry::Throttle =
                                crate::telemetry::Throttle::new();
                            if let Some(left_out) = LOG.admit() {
                                tracing::warn!(reason = %e, similar_left_out = left_out,
                                    "PostgreSQL refuses new connections: this replica works on with the ones it has (a request waits up to 5 s for one); max_connections is too small for the replicas running ({MAX_POOL_CONNECTIONS} each) and the operator commands");
                            }
                        }
                        None
                    }
                    // A first look that proves nothing (a busy server may be slow to open a
                    // connection): a patient second one decides — a server that hangs or whose
                    // packets are dropped is found away (the review's M1: never, when a slow
                    // look counted as an answer).
                    Err(_) if refusal_only => {
                        refusal_only = false;
                        patience = PATIENT_CHECK_TIMEOUT;
                        tokio::time::sleep(RECHECK_EVERY).await;
                        continue;
                    }
                    Err(_) => Some(format!("no answer within {patience:?}")),
                };
                refusal_only = false;
                patience = CHECK_TIMEOUT;
                // Not while a connection the pool holds still answers: a new connection failed
                // for a reason of its own (a slow login on a busy server, a name not resolved).
                let failure = match away {
                    Some(reason) => {
                        let answers = |pool: PgPool| async move {
                            matches!(
                                tokio::time::timeout(POOL_CHECK_TIMEOUT, pool.acquire()).await,
                                Ok(Ok(_))
                            )
                        };
                        let [background, requests] = this.pools.clone();
                        let (a, b) = tokio::join!(answers(background), answers(requests));
                        if a || b {
                            None
                        } else {
                            Some(reason)
                        }
                    }
                    None => None,
                };
                if this.settle(failure) {
                    return;
                }
                tokio::time::sleep(RECHECK_EVERY).await;
            }
        });
    }

    /// Records a check's outcome (`failure`: why it failed); true when the server answered
    /// (the check ends).
    fn settle(&self, failure: Option<String>) -> bool {
        use std::sync::atomic::Ordering;
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match (&*down, failure) {
            (_, None) => {
                if down.take().is_some() {
                    tracing::info!("PostgreSQL answers again");
                }
                self.checking.store(false, Ordering::SeqCst);
                true
            }
            (None, Some(reason)) => {
                tracing::warn!(%reason, "PostgreSQL cannot be reached: requests that need it fail at once until it answers (checked every 2 s)");
                *down = Some(reason);
                false
            }
            (Some(_), Some(reason)) => {
                *down = Some(reason);
                false
            }
        }
    }
}

/// The name this process's connections show in `pg_stat_activity.application_name`: the
/// replica (process id and host) or the operator command, so an operator can tell whose
/// connections hold the server's slots. PostgreSQL keeps 63 bytes of printable ASCII: the host
/// comes last and is cut to what fits.
fn application_name(serving: bool) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let role = if serving { "" } else { " cli" };
    let name = format!("radius-portal{role} {}", std::process::id());
    let room = 63usize.saturating_sub(name.len() + 1);
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(room)
        .collect();
    if host.is_empty() {
        name
    } else {
        format!("{name} {host}")
    }
}

/// How long an operator command waits for a free connection slot: replicas close their
/// request connections a minute after opening them, so after a burst one comes free.
const OPERATOR_SLOT_WAIT: Duration = Duration::from_secs(70);

/// Runs `open` — for an operator command (not `serving`), again every second while the server
/// has no connection slot free, for up to [`OPERATOR_SLOT_WAIT`] (said once on stderr): an
/// `org disable` in an emergency should not fail because a burst took the last slots.
async fn operator_waits<T, F, Fut>(serving: bool, open: F) -> Result<T, StorageError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match open().await {
            Err(StorageError::Database(e))
                if !serving
                    && started.elapsed() < OPERATOR_SLOT_WAIT
                    && (out_of_slots(&e) || matches!(e, sqlx::Error::PoolTimedOut)) =>
            {
                if !said {
                    said = true;
                    crate::eprint_line!("note: PostgreSQL has no connection slot free ({e}): waiting up to {} s for one (the portal's replicas give theirs back within a minute)", OPERATOR_SLOT_WAIT.as_secs());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Whether a failed connection says the server has no connection slot left (53300: too many
/// connections, or the remaining ones reserved).
fn out_of_slots(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(d) if d.code().as_deref() == Some("53300"))
}

/// Whether a failed connection says the server is not there (rather than that it answered
/// with a refusal of its own): an I/O error, or PostgreSQL shutting down or starting up
/// (57P01-57P03).
fn server_away(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|code| code.starts_with("57P0")),
        _ => false,
    }
}

/// A pool for one listening connection (opened when a listener asks for it, never closed
/// for idleness or age: a listener holds it as long as it listens).
fn listening_pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .acquire_slow_level(log::LevelFilter::Off)
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(BACKGROUND_ACQUIRE_TIMEOUT)
        .connect_lazy_with(options)
}

/// The NOTIFY channel of every announcement.
const CHANNEL: &str = "radius_portal";

/// Announcements of changes other processes made on the database, after their commit.
pub struct NoticeListener {
    listener: PgListener,
    origin: Arc<str>,
}

/// How long the listening connection may be quiet before it is checked with a query: a path to
/// the server that died without a word (a host powered off, a failover of its address) leaves
/// a connection that only reads waiting for ever (the client sets no TCP keepalive).
const LISTENER_QUIET: Duration = Duration::from_secs(30);
/// How long that check may take before the connection counts as lost.
const LISTENER_CHECK: Duration = Duration::from_secs(10);

impl NoticeListener {
    /// The next announcement of another process. An error: the connection was lost — it
    /// dropped (announcements made meanwhile were missed, even where it could be made again at
    /// once), or a quiet one did not answer its check; the caller listens on a new one and
    /// catches up.
    pub async fn recv(&mut self) -> Result<Notice, StorageError> {
        let lost = |what: &str| {
            StorageError::from(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                what.to_string(),
            )))
        };
        loop {
            let heard = match tokio::time::timeout(LISTENER_QUIET, self.listener.try_recv()).await {
                Ok(heard) => heard?,
                Err(_) => {
                    match tokio::time::timeout(
                        LISTENER_CHECK,
                        sqlx::query("SELECT 1").execute(&mut self.listener),
                    )
                    .await
                    {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => {
                            return Err(lost(&format!(
                                "the listening connection answered no check within {} s",
                                LISTENER_CHECK.as_secs()
                            )))
                        }
                    }
                }
            };
            let Some(notification) = heard else {
                return Err(lost("the listening connection was lost"));
            };
            if let Some(notice) = parse_notice(notification.payload(), &self.origin) {
                return Ok(notice);
            }
        }
    }
}

/// `<origin> s <id>`, `<origin> o`, `<origin> q`, `<origin> b <address> <secret's
/// fingerprint, hex> <1: answered, 0: not>`; None for this process's own and for anything else
/// (another version's announcements are ignored, not misread).
fn parse_notice(payload: &str, own: &str) -> Option<Notice> {
    let mut parts = payload.split(' ');
    let origin = parts.next()?;
    if origin == own {
        return None;
    }
    let notice = match (parts.next()?, parts.next()) {
        ("s", Some(id)) => Notice::Session(id.parse().ok()?),
        ("o", None) => Notice::Organizations,
        ("q", None) => Notice::Accounting,
        ("b", Some(addr)) => Notice::Breaker {
            addr: addr.parse().ok()?,
            secret: u64::from_str_radix(parts.next()?, 16).ok()?,
            answered: match parts.next()? {
                "1" => true,
                "0" => false,
                _ => return None,
            },
        },
        _ => return None,
    };
    parts.next().is_none().then_some(notice)
}

fn notice_payload(origin: &str, notice: &Notice) -> String {
    match notice {
        Notice::Session(id) => format!("{origin} s {id}"),
        Notice::Organizations => format!("{origin} o"),
        Notice::Accounting => format!("{origin} q"),
        Notice::Breaker {
            addr,
            secret,
            answered,
        } => format!("{origin} b {addr} {secret:016x} {}", u8::from(*answered)),
    }
}

/// Announces `notices` (inside a transaction: when it commits; PostgreSQL folds identical ones).
async fn notify(
    c: &mut PgConnection,
    origin: &str,
    notices: &[Notice],
) -> Result<(), StorageError> {
    if notices.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = notices.iter().map(|n| notice_payload(origin, n)).collect();
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::TEXT[]) p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(c)
        .await?;
    Ok(())
}

fn session_notices(stopped: &[Stopped]) -> Vec<Notice> {
    stopped.iter().map(|s| Notice::Session(s.id)).collect()
}

/// Key of the advisory lock every organization change takes (serializes them across replicas).
const ORGANIZATION_LOCK: i64 = 0x7261_6469_7573_6f72; // "radiusor"

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

macro_rules! outbox_columns {
    () => {
        "id, access_session_id, status_type, event_at, session_time_secs, terminate_cause, attempts, transmissions, \
         claimed_until, destination, created_at"
    };
}

/// Row `o` is pending and first in line: no earlier pending row of its session and destination.
macro_rules! pending_head_o {
    () => {
        "o.delivered_at IS NULL AND o.dead_at IS NULL AND NOT EXISTS (SELECT 1 FROM accounting_outbox p \
         WHERE p.access_session_id = o.access_session_id AND p.destination = o.destination AND p.id < o.id \
         AND p.delivered_at IS NULL AND p.dead_at IS NULL)"
    };
}

/// Ends the sessions the `target` query names (columns `id`, `at`, `cause`) if still active, at
/// `at` or, if later, what the session already said of itself (its start, last refresh, any
/// Interim-Update queued; see SQLite's `stop_in`): queues each one's Stop (Acct-Session-Time up
/// to then) and writes its audit entry, in one
/// statement. Returns the stopped sessions (`id`, `at`, `cause`). The Stop's destination and
/// status type and the audit's actor (`user` for User-Request, `1`) are written out because
/// each caller numbers its own parameters; a test holds them to [`AUTH_SERVER_DESTINATION`],
/// `status_type::STOP` and [`session_end_actor`].
macro_rules! stop_sessions {
    ($($target:tt)+) => {
        concat!(
            "WITH target AS (", $($target)+, "), \
             stopped AS (UPDATE access_sessions s SET state = 'stopped', stopped_at = GREATEST(t.at, s.started_at, s.refreshed_at, \
                 (SELECT MAX(o.event_at) FROM accounting_outbox o WHERE o.access_session_id = s.id AND o.status_type = 3)), \
                 terminate_cause = t.cause \
               FROM target t WHERE s.id = t.id AND s.state = 'active' \
               RETURNING s.id, s.stopped_at AS at, t.cause, GREATEST(s.stopped_at / 1000 - s.started_at / 1000, 0) AS session_time, \
                 s.organization_id, s.username, s.client_ip, s.acct_session_id), \
             queued AS (INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, \
                 session_time_secs, terminate_cause, next_attempt_at, created_at) \
               SELECT id, 'auth-server', 2, at, session_time, cause, at, at FROM stopped), \
             audited AS (INSERT INTO audit_log (at, actor, action, organization_id, detail) \
               SELECT at, CASE WHEN cause = 1 THEN 'user' ELSE 'system' END, 'session.end', organization_id, jsonb_build_object('acct_session_id', acct_session_id, \
                 'client_ip', client_ip, 'session_time_s', session_time, 'terminate_cause', cause, 'username', username)::text \
               FROM stopped) \
             SELECT id, at, cause FROM stopped ORDER BY at, id"
        )
    };
}

fn session_from_row(row: &PgRow) -> Result<AccessSessionRecord, StorageError> {
    let classes: Vec<u8> = row.try_get(7)?;
    let state: String = row.try_get(15)?;
    Ok(AccessSessionRecord {
        id: row.try_get(0)?,
        acct_session_id: row.try_get(1)?,
        organization_id: row.try_get(2)?,
        username: row.try_get(3)?,
        client_ip: row.try_get(4)?,
        server_index: row.try_get(5)?,
        server_name: row.try_get(6)?,
        classes: decode_classes(&classes)?,
        reply_message: row.try_get(8)?,
        started_at: row.try_get(9)?,
        refreshed_at: row.try_get(10)?,
        window_ms: row.try_get(11)?,
        limit_at: row.try_get(12)?,
        expires_at: row.try_get(13)?,
        interim_interval: row.try_get(14)?,
        active: state == "active",
        stopped_at: row.try_get(16)?,
        terminate_cause: row.try_get(17)?,
        nas: super::stored_nas(row.try_get(18)?, row.try_get(19)?),
        replaced_by: row.try_get(20)?,
        accept_timeouts: super::AcceptTimeouts::stored(row.try_get(21)?, row.try_get(22)?),
    })
}

fn sessions(rows: &[PgRow]) -> Result<Vec<AccessSessionRecord>, StorageError> {
    rows.iter().map(session_from_row).collect()
}

fn outbox_from_row(row: &PgRow) -> Result<OutboxRow, StorageError> {
    Ok(OutboxRow {
        id: row.try_get(0)?,
        access_session_id: row.try_get(1)?,
        status_type: row.try_get(2)?,
        event_at: row.try_get(3)?,
        session_time_secs: row.try_get(4)?,
        terminate_cause: row.try_get(5)?,
        attempts: row.try_get(6)?,
        transmissions: row.try_get(7)?,
        lease_until: row.try_get::<Option<i64>, _>(8)?.unwrap_or_default(),
        copy_to: super::copy_target(&row.try_get::<String, _>(9)?),
        created_at: row.try_get(10)?,
    })
}

fn outbox_entry_from_row(row: &PgRow) -> Result<OutboxEntry, StorageError> {
    Ok(OutboxEntry {
        id: row.try_get(0)?,
        status_type: row.try_get(1)?,
        attempts: row.try_get(2)?,
        transmissions: row.try_get(3)?,
        delivered_at: row.try_get(4)?,
        dead_at: row.try_get(5)?,
        dead_reason: row.try_get(6)?,
        last_error: row.try_get(7)?,
        copy_to: super::copy_target(&row.try_get::<String, _>(8)?),
    })
}

fn stopped_from_row(row: &PgRow) -> Result<Stopped, StorageError> {
    Ok(Stopped {
        id: row.try_get(0)?,
        due_at: row.try_get(1)?,
        cause: u32::try_from(row.try_get::<i64, _>(2)?)
            .map_err(|_| StorageError::Corrupt("terminate cause out of range".into()))?,
    })
}

/// How often a migration under way (or waiting for another replica's) is said in the log, and
/// the server asked whether it still answers.
const MIGRATION_LOOK_EVERY: Duration = Duration::from_secs(30);

/// Runs `migration` (waiting for no lock or statement time: another replica's migration, an
/// index built over a large table) while looking every [`MIGRATION_LOOK_EVERY`] that the
/// server still answers on another connection of `pool` within [`LISTENER_CHECK`]: a database
/// host gone without a word (no FIN, no RST) fails the start-up with what happened rather than
/// holding it for ever, and a wait that goes on is said in the log.
async fn watched_migration(
    migration: impl std::future::Future<Output = Result<(), sqlx::migrate::MigrateError>>,
    pool: &PgPool,
) -> Result<(), sqlx::migrate::MigrateError> {
    let began = std::time::Instant::now();
    tokio::pin!(migration);
    loop {
        tokio::select! {
            done = &mut migration => return done,
            () = tokio::time::sleep(MIGRATION_LOOK_EVERY) => {}
        }
        let answered =
            tokio::time::timeout(LISTENER_CHECK, sqlx::query("SELECT 1").execute(pool)).await;
        match answered {
            Ok(Ok(_)) => tracing::warn!(
                waited_s = began.elapsed().as_secs(),
                "the database's migrations are still running, or waiting for another replica's; the database answers, so start-up goes on waiting"
            ),
            Ok(Err(e)) => return Err(sqlx::migrate::MigrateError::Execute(e)),
            Err(_) => {
                return Err(sqlx::migrate::MigrateError::Execute(sqlx::Error::Io(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the database did not answer within {LISTENER_CHECK:?} while its migrations ran"),
                    ),
                )))
            }
        }
    }
}

impl PgStore {
    /// Connects (pools of up to 16 connections in all, for an operator command) and runs the
    /// migrations; replicas starting together migrate once (sqlx takes an advisory lock).
    pub async fn open(url: &str) -> Result<PgStore, StorageError> {
        Self::open_for(url, false).await
    }

    /// [`Self::open`] for `serve` (`serving`): background work's connections are kept at
    /// [`BACKGROUND_CONNECTIONS`] (sqlx's `min_connections`: one dropped broken is replaced
    /// at once; one that broke while idle is found and replaced when next used). Operator
    /// commands open none they do not use, and wait for a free connection slot (see
    /// [`operator_waits`]).
    pub async fn open_for(url: &str, serving: bool) -> Result<PgStore, StorageError> {
        operator_waits(serving, || async {
            let store = Self::connect(url, serving, REQUEST_CONNECTIONS).await?;
            // On a connection of its own, without the requests' lock and statement timeouts:
            // a replica starting while another migrates waits for it (sqlx's advisory lock)
            // rather than failing after 10 s, and a migration's index over a large table is not
            // cancelled at 60 s (it would be, at every start). The later settings win.
            let migrating = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(REQUEST_ACQUIRE_TIMEOUT)
                .connect_with(
                    store
                        .pool()
                        .connect_options()
                        .as_ref()
                        .clone()
                        .options([("lock_timeout", "0"), ("statement_timeout", "0")]),
                )
                .await?;
            // A standby or a read-only database: said as such, not as the migration's
            // "cannot execute CREATE TABLE in a read-only transaction" (black-box tester Q's D3).
            // Asked on the migration's connection (no slot more).
            let refusing = match refusing_writes(&migrating).await {
                Ok(Some(why)) => Some(StorageError::NotUsable(format!(
                    "the database takes no writes: {why}"
                ))),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            let migrated = match refusing {
                Some(refused) => Err(refused),
                None => watched_migration(
                    sqlx::migrate!("./migrations/postgres").run(&migrating),
                    store.pool(),
                )
                .await
                .map_err(|e| match e {
                    // Not a migration's fault: no connection to run it on.
                    sqlx::migrate::MigrateError::Execute(sqlx::Error::PoolTimedOut) => {
                        StorageError::Database(sqlx::Error::PoolTimedOut)
                    }
                    e => e.into(),
                }),
            };
            // Bounded: a connection to a host gone without a word is pinged when it goes back
            // to the pool, and closing waits for it (a code review).
            let _ = tokio::time::timeout(LISTENER_CHECK, migrating.close()).await;
            migrated?;
            Ok(store)
        })
        .await
    }

    /// Connects for an operator command: nothing is migrated — another release's replicas may
    /// share the database —, and a database without the portal's tables (a mistyped name, a
    /// portal that never started there) or not at this release's migrations is refused.
    pub(crate) async fn open_for_operator(url: &str) -> Result<PgStore, StorageError> {
        let (store, applied) = Self::connect_reading_migrations(url).await?;
        super::fit_for_operator(&sqlx::migrate!("./migrations/postgres"), &applied)?;
        Ok(store)
    }

    /// Connects as it is, for a check: nothing is migrated. With what its recorded migrations
    /// say of it ([`super::AsIs`]).
    pub(crate) async fn open_as_is(
        url: &str,
    ) -> Result<(PgStore, Option<Result<String, String>>), StorageError> {
        let (store, applied) = Self::connect_reading_migrations(url).await?;
        // What `serve` refuses first (black-box tester Q's D3: the check passed).
        let state = match refusing_writes(store.pool()).await? {
            Some(why) => Some(Err(format!(
                "the database takes no writes: {why} (`serve` refuses it)"
            ))),
            None => super::migration_state(&sqlx::migrate!("./migrations/postgres"), &applied),
        };
        Ok((store, state))
    }

    /// Connects as an operator command does, and reads the migrations the database records
    /// (none without the table).
    async fn connect_reading_migrations(
        url: &str,
    ) -> Result<(PgStore, Vec<(i64, bool, Vec<u8>)>), StorageError> {
        // An operator command makes one request at a time: one connection, so it works when the
        // replicas leave a single slot free (a second one would be asked for while the first
        // is on its way back to the pool, and fail the command after the acquire's 5 s).
        let store = operator_waits(false, || Self::connect(url, false, 1)).await?;
        let applied = match sqlx::query_as(super::APPLIED_MIGRATIONS)
            .fetch_all(store.pool())
            .await
        {
            Ok(rows) => rows,
            Err(e) if super::no_migrations_table(&e) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok((store, applied))
    }

    /// The pools on `url`; `requests`: the requests' pool's connections at most.
    async fn connect(url: &str, serving: bool, requests: u32) -> Result<PgStore, StorageError> {
        // A replica cut off in the middle of a transaction must not hold its locks (a login's
        // hold on its organization row, claims, due sessions) for the kernel's two-hour TCP
        // time-out: the server ends the transaction after 30 s idle, and probes the connection.
        // No statement waits on a lock more than 10 s, nor runs more than 60 s.
        let options = PgConnectOptions::from_str(url)?
            .application_name(&application_name(serving))
            .options([
                ("idle_in_transaction_session_timeout", "30s"),
                ("lock_timeout", "10s"),
                ("statement_timeout", "60s"),
                ("tcp_keepalives_idle", "30"),
                ("tcp_keepalives_interval", "10"),
                ("tcp_keepalives_count", "3"),
            ]);
        // One connection first: its error says what is wrong (refused, authentication, no such
        // database); the pool would only report that it timed out.
        sqlx::Connection::close(sqlx::ConnectOptions::connect(&options).await?).await?;
        // sqlx's own line for a slow acquire names neither pool nor cause, once per call:
        // thousands under load. [`PgStore::guarded`] says it once in a while instead.
        let gave_up_at: Arc<std::sync::atomic::AtomicI64> = Arc::default();
        let checked = |gave_up_at: &Arc<std::sync::atomic::AtomicI64>| {
            let gave_up_at = gave_up_at.clone();
            release_hook(move |connection, _| released_checked(connection, gave_up_at.clone()))
        };
        let pool = PgPoolOptions::new()
            .acquire_slow_level(log::LevelFilter::Off)
            .after_release(checked(&gave_up_at))
            .max_connections(requests)
            .max_lifetime(REQUEST_LIFETIME)
            .acquire_timeout(REQUEST_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        // Background work's connections: opened when `serve` starts ([`Self::open_background`];
        // operator commands never use them), and kept at `min_connections` for `serve`.
        let background = PgPoolOptions::new()
            .acquire_slow_level(log::LevelFilter::Off)
            .after_release(checked(&gave_up_at))
            .max_connections(BACKGROUND_CONNECTIONS)
            .min_connections(if serving { BACKGROUND_CONNECTIONS } else { 0 })
            .idle_timeout(None)
            .max_lifetime(CONNECTION_LIFETIME)
            .acquire_timeout(BACKGROUND_ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let listening = listening_pool(options.clone());
        // A server that cannot give even one replica its connections: said at start-up, not
        // found out under load as Stops that wait.
        let slots: Result<i32, _> = sqlx::query_scalar(
            "SELECT current_setting('max_connections')::int \
             - current_setting('superuser_reserved_connections')::int \
             - COALESCE(current_setting('reserved_connections', true)::int, 0)",
        )
        .fetch_one(&pool)
        .await;
        if let Ok(slots) = slots {
            let wanted = MAX_POOL_CONNECTIONS as i32;
            if slots < wanted {
                tracing::warn!(
                    "PostgreSQL allows {slots} connections (max_connections less the reserved ones) and each replica may open {wanted}: under load, sign-ins fail with 503; raise max_connections to at least {wanted} per replica plus a few for operator commands"
                );
            }
        }
        let reach = Arc::new(Reachability {
            options,
            pools: [background.clone(), pool.clone()],
            down: std::sync::Mutex::new(None),
            checking: std::sync::atomic::AtomicBool::new(false),
            suspected_at: std::sync::Mutex::new(None),
        });
        let origin: u64 = rand::random();
        Ok(PgStore {
            requests: pool,
            background,
            listening,
            starved: Arc::default(),
            origin: format!("{origin:016x}").into(),
            reach,
            outbox_statistics: Arc::default(),
            refused_writes_at: Arc::default(),
            read_only_seen_at: Arc::default(),
            gave_up_at,
        })
    }

    /// Brings PostgreSQL's statistics of the outbox up to date (`ANALYZE`) when its pending
    /// rows have grown well past what they were when this replica last had it analysed — a
    /// thousand sessions expiring in one second, a backlog held for a dead accounting server.
    /// The planner estimates the pending rows from statistics taken while there were few, and
    /// then plans the claims' check that a row is the first of its session (an anti-join of the
    /// pending rows with themselves) as a nested loop over all of them: 12,000 Stops due at
    /// once took 20-60 s per statement, and no Stop left for a minute, until autovacuum's own
    /// analyse, which waits up to its naptime (black-box tester Q's D1). Counted at most every
    /// [`STATISTICS_LOOK_EVERY`] unless `now` (a sweep that queued many rows asks before its
    /// rows are claimed). Nothing here fails a caller: a failed look (the table held by
    /// autovacuum for over a second) is tried again at the next, and a user who may not analyse
    /// the table (not its owner) is told once and not asked again.
    async fn keep_outbox_statistics(&self, now: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let kept = &self.outbox_statistics;
        if kept.refused.load(Relaxed) {
            return;
        }
        {
            let mut counted_at = kept.counted_at.lock().unwrap_or_else(|p| p.into_inner());
            if !now && counted_at.is_some_and(|at| at.elapsed() < STATISTICS_LOOK_EVERY) {
                return;
            }
            *counted_at = Some(std::time::Instant::now());
        }
        // One look at a time; a claim's look runs beside the claim, never holding it (the
        // table held by autovacuum makes an ANALYZE wait up to its lock timeout: reviewer),
        // while a sweep's runs before its rows are claimed.
        if kept.looking.swap(true, Relaxed) {
            return;
        }
        let store = self.clone();
        let look = super::same_lane(async move {
            // Done however the look ends (a task cut off at shutdown, a panic).
            let _done = LookDone(store.outbox_statistics.clone());
            store.look_at_outbox_statistics().await;
        });
        if now {
            look.await;
        } else {
            tokio::spawn(look);
        }
    }

    /// [`Self::keep_outbox_statistics`]'s count, and `ANALYZE` if it is due.
    async fn look_at_outbox_statistics(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let kept = &self.outbox_statistics;
        // Bounded: a larger backlog is counted as 100,000 (enough to decide: analysed at that,
        // the planner knows that many wait).
        let Ok(pending) = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM (SELECT 1 FROM accounting_outbox \
             WHERE delivered_at IS NULL AND dead_at IS NULL LIMIT 100000) t",
        )
        .fetch_one(self.pool())
        .await
        else {
            return;
        };
        let analysed_at = kept.analysed_at_pending.load(Relaxed);
        if pending < STATISTICS_MIN_PENDING || pending <= analysed_at.saturating_mul(4) {
            if pending < analysed_at / 4 {
                // Fallen since: a surge from here is seen as one.
                kept.analysed_at_pending.store(pending, Relaxed);
            }
            return;
        }
        // PostgreSQL skips a table the user may not analyse with a warning, not an error:
        // asked first (the tables' owner, the database's, or a superuser; from PostgreSQL 17
        // also whoever holds MAINTAIN on it).
        let may: Result<bool, _> = sqlx::query_scalar(
            "SELECT pg_has_role(c.relowner, 'USAGE') OR pg_has_role( \
               (SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE') \
             OR CASE WHEN current_setting('server_version_num')::INT >= 170000 \
               THEN has_table_privilege(c.oid, 'MAINTAIN') ELSE FALSE END \
             FROM pg_class c WHERE c.oid = 'accounting_outbox'::regclass",
        )
        .fetch_one(self.pool())
        .await;
        if let Ok(false) = may {
            kept.refused.store(true, Relaxed);
            tracing::warn!("the accounting outbox's statistics cannot be brought up to date (ANALYZE needs the tables' owner, and the database user is not): a large backlog may be delivered slowly until autovacuum analyses it");
            return;
        }
        let started = std::time::Instant::now();
        // Waiting at most a second for the table (autovacuum, or another replica analysing it
        // at this moment, holds it): an error then, tried again at the next look, where
        // SKIP_LOCKED would skip it with a warning that reads as done.
        let analysed = async {
            let mut tx = self.pool().begin().await?;
            sqlx::query("SET LOCAL lock_timeout = '1s'")
                .execute(&mut *tx)
                .await?;
            sqlx::query("ANALYZE accounting_outbox")
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        match analysed {
            Ok(()) => {
                kept.analysed_at_pending.store(pending, Relaxed);
                tracing::info!(
                    pending,
                    before = analysed_at,
                    took_ms = started.elapsed().as_millis() as u64,
                    "the accounting outbox's pending rows grew: PostgreSQL's statistics of it brought up to date (ANALYZE)"
                );
            }
            Err(e) => {
                tracing::debug!(error = %e, "bringing the outbox's statistics up to date failed: tried again at the next look");
            }
        }
    }

    /// Opens background work's connections now, as a replica starts: it has them before a
    /// burst of requests can take the server's last connection slots. Err: not all of them
    /// could be opened (the server allows too few; each is opened when wanted).
    pub(crate) async fn open_background(&self) -> Result<(), StorageError> {
        // Held together, so each is a connection of its own; given back idle when dropped.
        // A start waits no longer than a request would (the server's slots may all be taken).
        let mut held = Vec::new();
        for _ in 0..BACKGROUND_CONNECTIONS {
            match tokio::time::timeout(REQUEST_ACQUIRE_TIMEOUT, self.background.acquire()).await {
                Ok(connection) => held.push(connection?),
                Err(_) => return Err(StorageError::from(sqlx::Error::PoolTimedOut)),
            }
        }
        Ok(())
    }

    /// Listens for other processes' announcements (a connection of its own).
    pub(crate) async fn listen(&self) -> Result<NoticeListener, StorageError> {
        // A pool of its own each time: a listener dropped after its connection went silent
        // holds its slot while its `UNLISTEN` waits on the dead connection (until TCP gives
        // up, many minutes), and the new one must not wait for it (a code review).
        let pool = listening_pool(self.listening.connect_options().as_ref().clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(NoticeListener {
            listener,
            origin: self.origin.clone(),
        })
    }

    pub(crate) async fn announce(&self, notices: &[Notice]) -> Result<(), StorageError> {
        let mut c = self.pool().acquire().await?;
        notify(&mut c, &self.origin, notices).await
    }

    /// Runs `work` on the pool unless the server is known not to answer (then fails at once);
    /// an error saying the database is away has it checked (see [`Reachability`]). Every
    /// request of the storage contract and of the web-session store goes through here.
    pub(crate) async fn guarded<'a, T, E, F, Fut>(&'a self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&'a PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: Into<StorageError>,
    {
        self.guarded_within(CALL_GIVE_UP, work).await
    }

    /// [`Self::guarded`], the call given up after `give_up`.
    async fn guarded_within<'a, T, E, F, Fut>(
        &'a self,
        give_up: Duration,
        work: F,
    ) -> Result<T, StorageError>
    where
        F: FnOnce(&'a PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: Into<StorageError>,
    {
        self.reach.admit()?;
        let started = std::time::Instant::now();
        let work = work(self.pool());
        tokio::pin!(work);
        let result = tokio::select! {
            biased;
            done = &mut work => done.map_err(Into::into),
            () = tokio::time::sleep(SLOW_CALL.min(give_up)) => {
                // Not cut short: the call may be a write the server is about to commit — until
                // no live server would still be working on it.
                self.reach.suspect();
                match tokio::time::timeout(give_up.saturating_sub(SLOW_CALL), &mut work).await {
                    Ok(done) => done.map_err(Into::into),
                    Err(_) => {
                        self.gave_up_at.store(
                            crate::access_session::now_ms(),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        self.reach.check(false);
                        Err(StorageError::Unreachable(format!(
                            "PostgreSQL did not answer a call within {:?} (the path to it lost?): what it did is not known",
                            give_up
                        )))
                    }
                }
            }
        };
        if let Err(e) = &result {
            self.reach.observe(e);
            if e.refuses_writes() {
                self.refused_writes_at.store(
                    crate::access_session::now_ms(),
                    std::sync::atomic::Ordering::SeqCst,
                );
            }
        }
        let took = started.elapsed();
        // A server found away meanwhile is what made it slow, and is said as such.
        if took >= SLOW_CALL && self.reach.admit().is_ok() {
            static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(left_out) = LOG.admit() {
                let work = if super::in_background() {
                    "background work"
                } else {
                    "a request"
                };
                tracing::warn!(seconds = took.as_secs_f64(), similar_left_out = left_out,
                    "a PostgreSQL call of {work} took {took:.1?}: it waited for one of this replica's connections ({REQUEST_CONNECTIONS} for requests, {BACKGROUND_CONNECTIONS} for background work), or on a lock (a sign-in of the same address, an organization being changed), or the server was slow to answer");
            }
        }
        if super::in_background() {
            self.note_background(&result);
        }
        result
    }

    /// Background work that found no connection (its acquire timed out: the server's slots
    /// taken, by this replica's requests among others) is starved: `/readyz` says so — the
    /// load balancer then sends requests elsewhere, and their connections go back —, and two
    /// of the requests' idle connections are closed at once, freeing slots for it.
    fn note_background<T>(&self, result: &Result<T, StorageError>) {
        let mut starved = self.starved.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            // The server away (no connection to be had by anyone): not a matter of slots.
            Err(StorageError::Database(sqlx::Error::PoolTimedOut))
                if self.reach.admit().is_err() => {}
            Err(StorageError::Database(sqlx::Error::PoolTimedOut)) => {
                if starved.is_none() {
                    tracing::warn!("background work (Stops, expiries) found no PostgreSQL connection: this replica reports itself not ready, and gives requests' idle connections back, until it has one");
                }
                starved.get_or_insert_with(std::time::Instant::now);
                let requests = self.requests.clone();
                tokio::spawn(async move {
                    for _ in 0..2 {
                        if let Some(connection) = requests.try_acquire() {
                            let _ = connection.close().await;
                        }
                    }
                });
            }
            Err(_) => {}
            Ok(_) => {
                if starved.take().is_some() {
                    tracing::info!("background work has a PostgreSQL connection again");
                }
            }
        }
    }

    /// Since when background work has found no connection (see `note_background`); None
    /// while it has.
    pub(crate) fn background_starved(&self) -> Option<std::time::Instant> {
        // A server that does not answer at all starves everyone: that is what is said then
        // ("database unavailable"), not the connection slots (which more of them would not
        // cure).
        self.reach.admit().ok()?;
        *self.starved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool is open (connections are made on demand; `ping` checks one answers, and that
    /// the server takes writes), and no call found the server refusing writes lately.
    pub(crate) fn writable(&self) -> bool {
        let refused_at = self
            .refused_writes_at
            .load(std::sync::atomic::Ordering::SeqCst);
        !self.requests.is_closed()
            && !self.background.is_closed()
            && !self.listening.is_closed()
            && crate::access_session::now_ms() - refused_at >= super::engine::FAILING_FOR_MS
            // Nor while the server is known away: a sign-in is refused before the rate limits
            // take an attempt (the whole-change review's M2), as `/readyz` says.
            && self.reach.admit().is_ok()
    }

    /// Whether the last `/readyz` probe, within the last 30 s, found the server taking no
    /// writes (a standby, read-only): `portal_database_up` says 0 with it, and sign-ins are
    /// refused before their Access-Request.
    pub(crate) fn read_only_seen(&self) -> bool {
        let at = self
            .read_only_seen_at
            .load(std::sync::atomic::Ordering::SeqCst);
        at != 0 && crate::access_session::now_ms() - at < super::engine::FAILING_FOR_MS
    }

    /// The connections of the work at hand: background work's own, or requests'.
    fn pool(&self) -> &PgPool {
        if super::in_background() {
            &self.background
        } else {
            &self.requests
        }
    }
}

async fn session_by_id(
    c: &mut PgConnection,
    id: i64,
) -> Result<Option<AccessSessionRecord>, StorageError> {
    sqlx::query(select_sessions!("WHERE id = $1"))
        .bind(id)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(session_from_row)
        .transpose()
}

/// Why the server behind `pool` takes no writes now (None: it takes them): a standby, or a
/// database or server made read-only.
async fn refusing_writes(pool: &PgPool) -> Result<Option<&'static str>, StorageError> {
    let (standby, read_only): (bool, bool) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
    )
    .fetch_one(pool)
    .await?;
    Ok(if standby {
        Some("it is a standby (in recovery): point [database] url at the primary (an address still naming the standby after a failover?)")
    } else if read_only {
        Some("it is read-only (default_transaction_read_only, or the server's own setting): make it writable, or point [database] url at one that is")
    } else {
        None
    })
}

/// Stops `id` if active, queues its Stop and audits it. False if it was not active.
async fn stop_in(
    c: &mut PgConnection,
    id: i64,
    cause: u32,
    event_at: i64,
) -> Result<bool, StorageError> {
    Ok(stopped_in(c, id, cause, event_at).await?.is_some())
}

/// [`stop_in`], saying what it stopped.
async fn stopped_in(
    c: &mut PgConnection,
    id: i64,
    cause: u32,
    event_at: i64,
) -> Result<Option<Stopped>, StorageError> {
    sqlx::query(stop_sessions!(
        "SELECT $1::BIGINT AS id, $2::BIGINT AS at, $3::BIGINT AS cause"
    ))
    .bind(id)
    .bind(event_at)
    .bind(i64::from(cause))
    .fetch_optional(c)
    .await?
    .as_ref()
    .map(stopped_from_row)
    .transpose()
}

/// How a stop asked for with `cause` at `at` ends active session `id`
/// ([`crate::access_session::timing::ending`], from its stored deadline and the operator's
/// stops waiting for it), its row locked as every writer of it locks it; None if it is not
/// active.
async fn ending_in(
    c: &mut PgConnection,
    id: i64,
    cause: u32,
    at: i64,
) -> Result<Option<(u32, i64)>, StorageError> {
    let ends: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(concat!(
        "SELECT s.expires_at, s.limit_at, ",
        super::stop_asked_at!(),
        " FROM access_sessions s WHERE s.id = $1 AND s.state = 'active' FOR UPDATE OF s"
    ))
    .bind(id)
    .fetch_optional(c)
    .await?;
    Ok(ends.map(|(expires_at, limit_at, asked_at)| {
        crate::access_session::timing::ending(cause, at, expires_at, limit_at, asked_at)
    }))
}

/// Queues an Interim-Update at `now` (superseding one not yet on its way).
async fn enqueue_interim(
    c: &mut PgConnection,
    access_session_id: i64,
    started_at: i64,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "DELETE FROM accounting_outbox WHERE access_session_id = $1 AND status_type = $2 \
         AND destination = $3 AND delivered_at IS NULL AND dead_at IS NULL AND claimed_until IS NULL",
    )
    .bind(access_session_id)
    .bind(i64::from(status_type::INTERIM_UPDATE))
    .bind(AUTH_SERVER_DESTINATION)
    .execute(&mut *c)
    .await?;
    sqlx::query(
        "INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, session_time_secs, \
         next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $4, $4)",
    )
    .bind(access_session_id)
    .bind(AUTH_SERVER_DESTINATION)
    .bind(i64::from(status_type::INTERIM_UPDATE))
    .bind(now)
    .bind(super::whole_seconds_between(started_at, now))
    .execute(c)
    .await?;
    Ok(())
}

/// See [`SessionStore::reassert_after_stops`]: in `tx`, which holds the address's lock (see
/// `mark_delivered`), one statement (a snapshot taken after the lock); the session's row
/// locked as every writer of its rows does.
async fn reassert_after_stops_locked(
    tx: &mut PgConnection,
    id: i64,
    after: &AfterStops<'_>,
    now: i64,
) -> Result<Option<bool>, StorageError> {
    let (queued, late): (i64, bool) = sqlx::query_as(concat!(
        "WITH s AS (SELECT s.id, s.started_at FROM access_sessions s \
           WHERE s.id = $1 AND s.state = 'active' AND s.expires_at > $4 AND EXISTS ( \
             SELECT 1 FROM accounting_outbox o WHERE o.access_session_id = ANY($2) \
             AND o.status_type = 2 AND o.delivered_at >= $3) AND ",
        super::no_stop_pending!(),
        " FOR UPDATE OF s), ",
        interim_of_s!("$4"),
        " SELECT (SELECT COUNT(*) FROM interim), EXISTS (SELECT 1 FROM accounting_outbox o \
           WHERE o.access_session_id = ANY($2) AND o.status_type = 2 AND o.delivered_at >= $5)"
    ))
    .bind(id)
    .bind(after.earlier)
    .bind(after.since)
    .bind(now)
    .bind(after.left)
    .fetch_one(&mut *tx)
    .await?;
    Ok((queued > 0).then_some(late))
}

/// [`SessionStore::mark_delivered`]'s look for the newer session at stopped session
/// `stopped`'s address to re-assert, made again under the address's lock (in a statement
/// of its own: its snapshot is taken once the lock is held).
async fn reassert_successor_locked(
    pool: &sqlx::PgPool,
    stopped: i64,
    now: i64,
) -> Result<Option<(i64, bool)>, StorageError> {
    let mut tx = pool.begin().await?;
    lock_address_of(&mut tx, stopped).await?;
    let reasserted: Option<(i64, bool)> = sqlx::query_as(concat!(
        "WITH ",
        newer_session_of_r!("(SELECT * FROM access_sessions WHERE id = $1) r", "$2"),
        ", ",
        interim_of_s!("$2"),
        " SELECT i.access_session_id, s.acked <= $2 FROM interim i JOIN s ON s.id = i.access_session_id"
    ))
    .bind(stopped)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reasserted)
}

/// SQL, the CTE `s`: the newest session of stopped session `r`'s organization and address (`r`
/// from `$rows`) — active, opened after it, its deadline after `$now`, no operator's stop
/// waiting for it (see the SQLite backend) — whose Start was acknowledged (`acked`: when), its
/// row locked as every writer of its rows does first ([`SessionStore::mark_delivered`]).
macro_rules! newer_session_of_r {
    ($rows:literal, $now:literal) => {
        concat!(
            "s AS (SELECT s.id, s.started_at, (SELECT MIN(a.delivered_at) FROM accounting_outbox a \
               WHERE a.access_session_id = s.id AND a.status_type = 1 AND a.destination = 'auth-server') AS acked FROM ",
            $rows,
            " JOIN access_sessions s ON s.organization_id = r.organization_id \
               AND s.client_ip = r.client_ip AND s.state = 'active' AND s.id > r.id AND s.expires_at > ",
            $now,
            " WHERE EXISTS (SELECT 1 FROM accounting_outbox o WHERE o.access_session_id = s.id \
               AND o.status_type = 1 AND o.destination = 'auth-server' AND o.delivered_at IS NOT NULL) AND ",
            super::no_stop_pending!(),
            " ORDER BY s.id DESC LIMIT 1 FOR UPDATE OF s)"
        )
    };
}
use newer_session_of_r;

/// SQL, the CTEs `superseded`, `interim` and `interim_copies`: session `s`'s Interim-Update that
/// asserts its user again, queued at `$now` (never dated before the session's start: `$now`
/// was read before the statement waited for its locks) with a copy for each other server that may hold the
/// session open, those not yet on their way superseded (as the SQLite backend's
/// `enqueue_reassert`).
macro_rules! interim_of_s {
    ($now:literal) => {
        concat!(
            "superseded AS (DELETE FROM accounting_outbox WHERE access_session_id IN (SELECT id FROM s) \
               AND status_type = 3 AND delivered_at IS NULL AND dead_at IS NULL AND claimed_until IS NULL), \
             interim AS (INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, \
               session_time_secs, next_attempt_at, created_at) \
             SELECT id, 'auth-server', 3, GREATEST(",
            $now,
            ", started_at), GREATEST(",
            $now,
            " / 1000 - started_at / 1000, 0), ",
            $now,
            ", ",
            $now,
            " FROM s RETURNING access_session_id), \
             interim_copies AS (INSERT INTO accounting_outbox (access_session_id, destination, status_type, \
               event_at, session_time_secs, next_attempt_at, created_at) \
             SELECT s.id, 'server:' || t.server, 3, GREATEST(",
            $now,
            ", s.started_at), GREATEST(",
            $now,
            " / 1000 - s.started_at / 1000, 0), ",
            $now,
            ", ",
            $now,
            " FROM s JOIN access_sessions x ON x.id = s.id \
               JOIN accounting_sent t ON t.access_session_id = s.id WHERE t.server <> x.server_name)"
        )
    };
}
use interim_of_s;

/// Takes, for the transaction, the lock of session `id`'s organization and address — the one
/// `open_session` takes for the address it opens a session at.
async fn lock_address_of(c: &mut PgConnection, id: i64) -> Result<(), StorageError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(organization_id || chr(1) || client_ip, 0)) \
         FROM access_sessions WHERE id = $1",
    )
    .bind(id)
    .execute(c)
    .await?;
    Ok(())
}

/// The session a browser linked to session `id` holds (see the SQLite backend's
/// `browsers_session_in`).
async fn browsers_session_in(c: &mut PgConnection, id: i64) -> Result<Option<i64>, StorageError> {
    let mut at = id;
    for _ in 0..super::REPLACEMENTS_FOLLOWED {
        // Locked: a sign-in on another replica replacing it now commits first, and this one
        // then reads (and follows) what it recorded.
        let found: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT state, replaced_by FROM access_sessions WHERE id = $1 FOR UPDATE",
        )
        .bind(at)
        .fetch_optional(&mut *c)
        .await?;
        match found {
            None => return Ok(None),
            Some((state, Some(next))) if state != "active" => at = next,
            Some(_) => break,
        }
    }
    Ok(Some(at))
}

/// Remembers that `server` was sent a packet of session `access_session_id` (it may hold the
/// session open: see [`SessionStore::mark_delivered`]).
async fn remember_sent(
    c: &mut PgConnection,
    access_session_id: i64,
    server: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO accounting_sent (access_session_id, server) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(access_session_id)
    .bind(server)
    .execute(c)
    .await?;
    Ok(())
}

async fn claim_session_in(
    c: &mut PgConnection,
    access_session_id: i64,
    status_type: u32,
    now: i64,
    lease_until: i64,
) -> Result<Option<OutboxRow>, StorageError> {
    sqlx::query(concat!(
        "UPDATE accounting_outbox SET claimed_until = $1, attempts = attempts + 1 WHERE id = ( \
           SELECT o.id FROM accounting_outbox o WHERE o.access_session_id = $2 AND o.status_type = $3 \
           AND o.destination = 'auth-server' AND (o.claimed_until IS NULL OR o.claimed_until < $4) AND ",
        pending_head_o!(),
        " ORDER BY o.id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ",
        outbox_columns!()
    ))
    .bind(lease_until)
    .bind(access_session_id)
    .bind(i64::from(status_type))
    .bind(now)
    .fetch_optional(c)
    .await?
    .as_ref()
    .map(outbox_from_row)
    .transpose()
}

async fn dead_letter_in(
    c: &mut PgConnection,
    id: i64,
    claim: Option<i64>,
    now: i64,
    reason: &str,
    cascade: bool,
) -> Result<(bool, Option<Notice>), StorageError> {
    // The session first, as every writer of a session's rows does: a Stop or Interim-Update
    // another replica is queueing for it either committed before (and is closed below) or
    // waits and then finds the session ended.
    sqlx::query(
        "SELECT 1 FROM access_sessions WHERE id = (SELECT access_session_id FROM accounting_outbox WHERE id = $1) \
         FOR UPDATE",
    )
    .bind(id)
    .execute(&mut *c)
    .await?;
    let session: Option<i64> = sqlx::query_scalar(
        "UPDATE accounting_outbox SET dead_at = $1, dead_reason = $2, claimed_until = NULL \
         WHERE id = $3 AND delivered_at IS NULL AND ($4::BIGINT IS NULL OR attempts = $4) \
         RETURNING access_session_id",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .bind(claim)
    .fetch_optional(&mut *c)
    .await?;
    if let (Some(session), true) = (session, cascade) {
        sqlx::query(
            "UPDATE accounting_outbox SET dead_at = $1, dead_reason = $4, claimed_until = NULL \
             WHERE access_session_id = $2 AND id > $3 AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(now)
        .bind(session)
        .bind(id)
        .bind(super::NEVER_STARTED)
        .execute(&mut *c)
        .await?;
        let ended = sqlx::query(
            "UPDATE access_sessions SET state = 'stopped', stopped_at = $1, terminate_cause = $2 \
             WHERE id = $3 AND state = 'active'",
        )
        .bind(now)
        .bind(i64::from(terminate_cause::NAS_ERROR))
        .bind(session)
        .execute(c)
        .await?
        .rows_affected()
            > 0;
        return Ok((true, ended.then_some(Notice::Session(session))));
    }
    Ok((session.is_some(), None))
}

/// Takes the organization-change lock for the rest of the transaction.
async fn lock_organizations(c: &mut PgConnection) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ORGANIZATION_LOCK)
        .execute(c)
        .await?;
    Ok(())
}

impl SessionStore for PgStore {
    async fn app_secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        let fresh: [u8; 32] = rand::random();
        sqlx::query(
            "INSERT INTO app_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(fresh.as_slice())
        .bind(crate::access_session::now_ms())
        .execute(self.pool())
        .await?;
        let stored: Vec<u8> = sqlx::query_scalar("SELECT value FROM app_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(self.pool())
            .await?;
        stored
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("app secret `{name}` is not 32 bytes")))
    }

    async fn web_session_count(&self) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tower_sessions")
            .fetch_one(self.pool())
            .await?)
    }

    async fn open_session(&self, new: &NewAccessSession) -> Result<OpenedSession, StorageError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(1) || $2, 0))")
            .bind(&new.organization_id)
            .bind(&new.client_ip)
            .execute(&mut *tx)
            .await?;
        let found: Option<(bool, i64)> =
            sqlx::query_as("SELECT is_active, revision FROM organizations WHERE id = $1 FOR SHARE")
                .bind(&new.organization_id)
                .fetch_optional(&mut *tx)
                .await?;
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
            Some(id) => browsers_session_in(&mut tx, id).await?,
            None => None,
        };
        let previous: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM access_sessions WHERE organization_id = $1 AND client_ip = $2 AND state = 'active' \
             UNION SELECT id FROM access_sessions WHERE id = $3 AND organization_id = $1 AND state = 'active' \
             ORDER BY id",
        )
        .bind(&new.organization_id)
        .bind(&new.client_ip)
        .bind(replaces)
        .fetch_all(&mut *tx)
        .await?;
        let mut preempted = Vec::new();
        for id in previous {
            // Ended by its deadline if that came first (not yet reached by the expiry pass),
            // or by an operator's stop still waiting for it — as every ad-hoc stop is.
            let Some((cause, at)) =
                ending_in(&mut tx, id, terminate_cause::PORT_PREEMPTED, new.started_at).await?
            else {
                continue;
            };
            if let Some(stopped) = stopped_in(&mut tx, id, cause, at).await? {
                preempted.push(stopped);
            }
        }
        notify(&mut tx, &self.origin, &session_notices(&preempted)).await?;
        let accept_timeouts = super::AcceptTimeouts::columns(new.accept_timeouts);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO access_sessions (acct_session_id, organization_id, username, client_ip, server_index, server_name, \
             classes, reply_message, started_at, refreshed_at, window_ms, limit_at, expires_at, interim_interval, next_interim_at, state, \
             nas_ip, nas_identifier, sign_in_until, accept_idle_timeout, accept_session_timeout) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13, $14, 'active', $15, $16, $17, $18, $19) RETURNING id",
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
        .bind(new.window_ms)
        .bind(new.limit_at)
        .bind(new.expires_at)
        .bind(new.interim_interval)
        .bind(new.interim_interval.map(|secs| new.started_at + secs * 1000))
        .bind(new.nas.as_ref().map(|nas| nas.ip.to_string()))
        .bind(new.nas.as_ref().map(|nas| nas.identifier.as_str()))
        .bind(new.start_claimed_until)
        .bind(accept_timeouts.0)
        .bind(accept_timeouts.1)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(replaced) = replaces.filter(|r| preempted.iter().any(|s| s.id == *r)) {
            // Only the same user's sign-in sent together with it (see `replaced_by`).
            let user: Option<String> = sqlx::query_scalar(
                "SELECT username FROM access_sessions WHERE id = $1 AND started_at >= $2",
            )
            .bind(replaced)
            .bind(new.started_at - super::FOLLOWED_REPLACEMENT_MS)
            .fetch_optional(&mut *tx)
            .await?;
            if user.is_some_and(|user| super::same_user(&user, &new.username)) {
                sqlx::query("UPDATE access_sessions SET replaced_by = $1 WHERE id = $2")
                    .bind(id)
                    .bind(replaced)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !new.classes.is_empty() {
            sqlx::query(
                "INSERT INTO session_classes (access_session_id, class) SELECT $1, unnest($2::BYTEA[])",
            )
            .bind(id)
            .bind(&new.classes)
            .execute(&mut *tx)
            .await?;
        }
        let start = sqlx::query(concat!(
            "INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, next_attempt_at, \
             created_at, claimed_until, attempts) VALUES ($1, $2, $3, $4, $4, $4, $5, CASE WHEN $5::BIGINT IS NULL THEN 0 ELSE 1 END) \
             RETURNING ",
            outbox_columns!()
        ))
        .bind(id)
        .bind(AUTH_SERVER_DESTINATION)
        .bind(i64::from(status_type::START))
        .bind(new.started_at)
        .bind(new.start_claimed_until)
        .fetch_one(&mut *tx)
        .await?;
        let claimed_start = match new.start_claimed_until {
            Some(_) => Some(outbox_from_row(&start)?),
            None => None,
        };
        audit_in(&mut *tx, &Audit::login_accepted(new)).await?;
        tx.commit().await?;
        Ok(OpenedSession {
            id,
            preempted,
            claimed_start,
        })
    }

    async fn session(&self, id: i64) -> Result<Option<AccessSessionRecord>, StorageError> {
        let mut c = self.pool().acquire().await?;
        session_by_id(&mut c, id).await
    }

    async fn refresh_session(
        &self,
        id: i64,
        now: i64,
        terms: super::RefreshTerms,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        let mut tx = self.pool().begin().await?;
        // A disable committed since the guard read the flag denies it; one under way waits
        // for this transaction (the row is held), and its stop job then finds the session.
        // With the time its last Interim-Update (periodic, or a refresh's) was queued.
        let found: Option<(bool, Option<i64>, Option<i64>)> = sqlx::query_as(concat!(
            "SELECT o.is_active, ",
            super::stop_asked_at!(),
            ", s.next_interim_at - s.interim_interval * 1000 FROM organizations o \
             JOIN access_sessions s ON s.organization_id = o.id WHERE s.id = $1 FOR SHARE OF o"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        // One queued moments ago stands for the refresh's own (two a few milliseconds apart
        // said nothing more; black-box tester R). Read before a periodic one queued meanwhile
        // (it moves the time later), it errs towards sending.
        let quiet = found.is_some_and(|(_, _, last)| {
            last.is_some_and(|last| (now - last).abs() < crate::access_session::REFRESH_QUIET_MS)
        });
        let found = found.map(|(active, asked, _)| (active, asked));
        match found {
            Some((false, _)) => return Err(StorageError::OrganizationDisabled),
            // An operator's stop waits for it: the refresh makes that stop, dated when it was
            // asked for (a refresh must not move it later).
            Some((true, Some(asked_at))) => {
                if stop_in(&mut tx, id, terminate_cause::ADMIN_RESET, asked_at.min(now)).await? {
                    notify(&mut tx, &self.origin, &[Notice::Session(id)]).await?;
                    tx.commit().await?;
                }
                return Ok(None);
            }
            // Its limit (a `max_lifetime` shortened since the sign-in) has passed: it ends now,
            // as that limit ends it.
            Some((true, None)) if terms.expires_at <= now => {
                if stop_in(&mut tx, id, terminate_cause::SESSION_TIMEOUT, now).await? {
                    notify(&mut tx, &self.origin, &[Notice::Session(id)]).await?;
                    tx.commit().await?;
                }
                return Ok(None);
            }
            _ => {}
        }
        // The refresh's Interim-Update counts as the periodic one: the next is an interval
        // after it (a periodic one due a moment later would repeat it).
        let started_at: Option<i64> = sqlx::query_scalar(
            "UPDATE access_sessions SET refreshed_at = $1, expires_at = $2, \
             window_ms = $4, limit_at = $5, \
             next_interim_at = CASE WHEN $7 THEN next_interim_at ELSE $1 + interim_interval * 1000 END \
             WHERE id = $3 AND state = 'active' AND expires_at > $1 \
             AND ($6::BIGINT IS NULL OR refreshed_at = $6) RETURNING started_at",
        )
        .bind(now)
        .bind(terms.expires_at)
        .bind(id)
        .bind(terms.window_ms)
        .bind(terms.limit_at)
        .bind(terms.follows)
        .bind(quiet)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(started_at) = started_at else {
            // Refreshed meanwhile (another refresh sent with this one, perhaps through another
            // replica: its commit was waited for): as it stands.
            return Ok(session_by_id(&mut tx, id).await?.filter(|s| {
                s.active && s.expires_at > now && terms.follows.is_some_and(|f| s.refreshed_at != f)
            }));
        };
        if !quiet {
            enqueue_interim(&mut tx, id, started_at, now).await?;
        }
        notify(&mut tx, &self.origin, &[Notice::Session(id)]).await?;
        let session = session_by_id(&mut tx, id).await?;
        tx.commit().await?;
        Ok(session)
    }

    async fn cap_lifetimes(
        &self,
        organization_id: &str,
        max_lifetime_ms: i64,
        now: i64,
    ) -> Result<Vec<(i64, i64)>, StorageError> {
        let mut tx = self.pool().begin().await?;
        let capped: Vec<(i64, i64)> = sqlx::query_as(
            "UPDATE access_sessions SET limit_at = started_at + $2, \
             window_ms = LEAST(window_ms, $2), \
             expires_at = LEAST(expires_at, GREATEST($3, started_at + $2)) \
             WHERE organization_id = $1 AND state = 'active' AND accept_session_timeout = 0 \
             AND expires_at > $3 AND (limit_at IS NULL OR limit_at > started_at + $2) \
             RETURNING id, expires_at",
        )
        .bind(organization_id)
        .bind(max_lifetime_ms)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let notices: Vec<Notice> = capped.iter().map(|(id, _)| Notice::Session(*id)).collect();
        notify(&mut tx, &self.origin, &notices).await?;
        tx.commit().await?;
        Ok(capped)
    }

    async fn shift_times(&self, _delta_ms: i64) -> Result<Option<Vec<i64>>, StorageError> {
        Ok(None)
    }

    async fn stop_session(&self, id: i64, cause: u32, event_at: i64) -> Result<bool, StorageError> {
        let mut tx = self.pool().begin().await?;
        if !stop_in(&mut tx, id, cause, event_at).await? {
            return Ok(false);
        }
        notify(&mut tx, &self.origin, &[Notice::Session(id)]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn renew_sign_in(&self, id: i64, until: i64) -> Result<bool, StorageError> {
        Ok(sqlx::query(
            "UPDATE access_sessions SET sign_in_until = GREATEST(sign_in_until, $1) \
             WHERE id = $2 AND state = 'active' AND sign_in_until IS NOT NULL",
        )
        .bind(until)
        .bind(id)
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0)
    }

    async fn reassert_after_stops(
        &self,
        id: i64,
        after: &AfterStops<'_>,
        now: i64,
    ) -> Result<Option<bool>, StorageError> {
        let mut tx = self.pool().begin().await?;
        lock_address_of(&mut tx, id).await?;
        let queued = reassert_after_stops_locked(&mut tx, id, after, now).await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn start_due_now(&self, id: i64, now: i64) -> Result<bool, StorageError> {
        Ok(sqlx::query(
            "UPDATE accounting_outbox SET next_attempt_at = $1 \
             WHERE access_session_id = $2 AND status_type = $3 AND destination = $4 \
             AND delivered_at IS NULL AND dead_at IS NULL AND claimed_until IS NULL \
             AND next_attempt_at > $1",
        )
        .bind(now)
        .bind(id)
        .bind(i64::from(status_type::START))
        .bind(AUTH_SERVER_DESTINATION)
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0)
    }

    async fn end_abandoned_sign_in(&self, id: i64, now: i64) -> Result<SignInLease, StorageError> {
        let mut tx = self.pool().begin().await?;
        // The session's row locked, as every writer of its rows does first: a renewal of its
        // lease committed meanwhile is seen.
        let found: Option<(i64, i64)> = sqlx::query_as(
            "SELECT s.started_at, s.sign_in_until FROM access_sessions s \
             WHERE s.id = $1 AND s.state = 'active' AND s.sign_in_until IS NOT NULL AND EXISTS ( \
               SELECT 1 FROM accounting_outbox o WHERE o.access_session_id = s.id \
               AND o.status_type = $2 AND o.destination = $3 \
               AND o.delivered_at IS NULL AND o.dead_at IS NULL) FOR UPDATE OF s",
        )
        .bind(id)
        .bind(i64::from(status_type::START))
        .bind(AUTH_SERVER_DESTINATION)
        .fetch_optional(&mut *tx)
        .await?;
        let started_at = match found {
            None => return Ok(SignInLease::None),
            Some((_, until)) if until >= now => return Ok(SignInLease::Held(until)),
            Some((started_at, _)) => started_at,
        };
        if !stop_in(&mut tx, id, terminate_cause::NAS_ERROR, started_at).await? {
            return Ok(SignInLease::None);
        }
        notify(&mut tx, &self.origin, &[Notice::Session(id)]).await?;
        tx.commit().await?;
        Ok(SignInLease::Ended)
    }

    async fn stop_due_chunk(&self, now: i64, limit: i64) -> Result<Vec<Stopped>, StorageError> {
        let mut tx = self.pool().begin().await?;
        // An operator's stop asked for before the deadline and not yet made ends the session
        // then (Admin-Reset; its job finds it ended).
        let chunk = sqlx::query(stop_sessions!(concat!(
            "SELECT s.id, CASE WHEN a.asked < s.expires_at THEN a.asked ELSE s.expires_at END AS at, \
             CASE WHEN a.asked < s.expires_at THEN $5::BIGINT \
             WHEN s.limit_at IS NOT NULL AND s.limit_at <= s.expires_at THEN $2::BIGINT ELSE $3::BIGINT END AS cause \
             FROM access_sessions s, LATERAL (SELECT ",
            super::stop_asked_at!(),
            " AS asked) a \
             WHERE s.state = 'active' AND s.expires_at <= $1 ORDER BY s.expires_at LIMIT $4 FOR UPDATE OF s SKIP LOCKED"
        )))
        .bind(now)
        .bind(i64::from(terminate_cause::SESSION_TIMEOUT))
        .bind(i64::from(terminate_cause::IDLE_TIMEOUT))
        .bind(limit)
        .bind(i64::from(terminate_cause::ADMIN_RESET))
        .fetch_all(&mut *tx)
        .await?;
        let stopped = chunk
            .iter()
            .map(stopped_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        notify(&mut tx, &self.origin, &session_notices(&stopped)).await?;
        tx.commit().await?;
        if stopped.len() >= STATISTICS_BULK {
            self.keep_outbox_statistics(true).await;
        }
        Ok(stopped)
    }

    async fn stop_disabled_sessions(
        &self,
        organization_id: &str,
        job_id: i64,
        cause: u32,
        event_at: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StorageError> {
        let mut tx = self.pool().begin().await?;
        // The organization's row is read under a share lock, as a login and a refresh read it:
        // an enable committed meanwhile is seen, and one not yet committed waits for this. So
        // is the job's row, after the organization's (an enable locks them in that order: no
        // deadlock): an enable closes the job — reading how many it stopped, which the batch
        // adds below —, and a closed job stops nothing more (a later disable's own job dates
        // the Stops).
        // Sessions another transaction holds (an interim sweep, a server move) are waited for,
        // not skipped: a skipped one would make the last batch come back empty and the job end
        // with that session still open.
        let rows = sqlx::query(stop_sessions!(
            "SELECT s.id, $2::BIGINT AS at, $3::BIGINT AS cause FROM access_sessions s \
             JOIN organizations o ON o.id = s.organization_id \
             JOIN organization_jobs j ON j.id = $5 AND j.done_at IS NULL \
               AND j.organization_id = s.organization_id AND j.kind = 'stop_sessions' \
             WHERE s.organization_id = $1 AND s.state = 'active' AND NOT o.is_active \
             AND s.expires_at > $2 ORDER BY s.id LIMIT $4 FOR UPDATE OF s FOR SHARE OF o, j"
        ))
        .bind(organization_id)
        .bind(event_at)
        .bind(i64::from(cause))
        .bind(limit)
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        let stopped = rows
            .iter()
            .map(stopped_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if !stopped.is_empty() {
            sqlx::query("UPDATE organization_jobs SET stopped = stopped + $1 WHERE id = $2")
                .bind(stopped.len() as i64)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
        }
        notify(&mut tx, &self.origin, &session_notices(&stopped)).await?;
        tx.commit().await?;
        if stopped.len() >= STATISTICS_BULK {
            self.keep_outbox_statistics(true).await;
        }
        Ok(stopped.into_iter().map(|s| s.id).collect())
    }

    async fn queue_due_interims(&self, now: i64) -> Result<usize, StorageError> {
        let queued: i64 = sqlx::query_scalar(
            concat!("WITH due AS (SELECT s.id, s.started_at, s.interim_interval FROM access_sessions s \
               WHERE s.state = 'active' AND s.next_interim_at <= $1 AND s.expires_at > $1 AND ",
               super::no_stop_pending!(), " AND ", super::no_start_pending!(),
               " FOR UPDATE OF s SKIP LOCKED), \
             superseded AS (DELETE FROM accounting_outbox o USING due WHERE o.access_session_id = due.id \
               AND o.status_type = $2 AND o.destination = $3 AND o.delivered_at IS NULL AND o.dead_at IS NULL \
               AND o.claimed_until IS NULL), \
             queued AS (INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, \
               session_time_secs, next_attempt_at, created_at) \
               SELECT id, $3, $2, $1, GREATEST($1 / 1000 - started_at / 1000, 0), $1, $1 FROM due), \
             scheduled AS (UPDATE access_sessions s SET next_interim_at = $1 + due.interim_interval * 1000 \
               FROM due WHERE s.id = due.id) \
             SELECT COUNT(*) FROM due"),
        )
        .bind(now)
        .bind(i64::from(status_type::INTERIM_UPDATE))
        .bind(AUTH_SERVER_DESTINATION)
        .fetch_one(self.pool())
        .await?;
        if queued as usize >= STATISTICS_BULK {
            self.keep_outbox_statistics(true).await;
        }
        Ok(queued as usize)
    }

    async fn next_interim(&self) -> Result<Option<i64>, StorageError> {
        // The earliest in the index's order that waits for no stop.
        Ok(sqlx::query_scalar(concat!(
            "SELECT s.next_interim_at FROM access_sessions s \
                 WHERE s.state = 'active' AND s.next_interim_at IS NOT NULL AND ",
            super::no_stop_pending!(),
            " AND ",
            super::no_start_pending!(),
            " ORDER BY s.next_interim_at LIMIT 1"
        ))
        .fetch_optional(self.pool())
        .await?)
    }

    async fn active_session_for_client(
        &self,
        organization_id: &str,
        client_ip: &str,
        now: i64,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        sqlx::query(select_sessions!(
            "WHERE organization_id = $1 AND client_ip = $2 AND state = 'active' AND expires_at > $3"
        ))
        .bind(organization_id)
        .bind(client_ip)
        .bind(now)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    async fn find_active_sessions(
        &self,
        wanted: &SessionMatch,
    ) -> Result<Vec<AccessSessionRecord>, StorageError> {
        let rows = match wanted {
            SessionMatch::AcctSessionId(id) => {
                sqlx::query(select_sessions!(
                    "WHERE state = 'active' AND acct_session_id = $1"
                ))
                .bind(id)
                .fetch_all(self.pool())
                .await?
            }
            SessionMatch::ClientIp(ip) => {
                sqlx::query(select_sessions!(
                    "WHERE state = 'active' AND client_ip = $1"
                ))
                .bind(ip)
                .fetch_all(self.pool())
                .await?
            }
            SessionMatch::UserName(username) => {
                sqlx::query(select_sessions!(
                    "WHERE state = 'active' AND username = $1"
                ))
                .bind(username)
                .fetch_all(self.pool())
                .await?
            }
            SessionMatch::Class(class) => {
                sqlx::query(select_sessions!(
                    "WHERE state = 'active' AND id IN (SELECT access_session_id FROM session_classes WHERE class = $1)"
                ))
                .bind(class)
                .fetch_all(self.pool())
                .await?
            }
        };
        sessions(&rows)
    }

    async fn active_sessions_of(
        &self,
        organization_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AccessSessionRecord>, StorageError> {
        let rows = sqlx::query(select_sessions!(
            "WHERE state = 'active' AND ($1::TEXT IS NULL OR organization_id = $1) ORDER BY id LIMIT $2"
        ))
        .bind(organization_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        sessions(&rows)
    }

    async fn session_by_acct_id(
        &self,
        acct_session_id: &str,
    ) -> Result<Option<AccessSessionRecord>, StorageError> {
        sqlx::query(select_sessions!("WHERE acct_session_id = $1"))
            .bind(acct_session_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn next_expiry(&self) -> Result<Option<i64>, StorageError> {
        Ok(
            sqlx::query_scalar(
                "SELECT MIN(expires_at) FROM access_sessions WHERE state = 'active'",
            )
            .fetch_one(self.pool())
            .await?,
        )
    }

    async fn ping(&self) -> Result<(), StorageError> {
        // And whether it takes writes: a standby (the address still pointing at it after a
        // failover) or a read-only database answers reads while no session can be stopped.
        let read_only: bool = sqlx::query_scalar(
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on' \
             FROM organization_revision WHERE id = 1",
        )
        .fetch_one(self.pool())
        .await?;
        // Kept for the metric, and found again by each probe (a standby promoted is ready at
        // the next one).
        self.read_only_seen_at.store(
            if read_only {
                crate::access_session::now_ms()
            } else {
                0
            },
            std::sync::atomic::Ordering::SeqCst,
        );
        if read_only {
            return Err(StorageError::Unreachable(
                "the PostgreSQL server takes no writes (a standby, or transactions read-only by default): no session can be stopped".into(),
            ));
        }
        Ok(())
    }

    async fn active_sessions(&self) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM access_sessions WHERE state = 'active'")
                .fetch_one(self.pool())
                .await?,
        )
    }

    async fn claim_due_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, StorageError> {
        self.keep_outbox_statistics(false).await;
        let rows = sqlx::query(concat!(
            "UPDATE accounting_outbox SET claimed_until = $1, attempts = attempts + 1 WHERE id IN ( \
               SELECT o.id FROM accounting_outbox o WHERE o.next_attempt_at <= $2 \
               AND (o.claimed_until IS NULL OR o.claimed_until < $2) AND ",
            pending_head_o!(),
            " ORDER BY o.next_attempt_at, o.id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
            outbox_columns!()
        ))
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let mut rows = rows
            .iter()
            .map(outbox_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    async fn claim_session_outbox(
        &self,
        access_session_id: i64,
        status_type: u32,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<OutboxRow>, StorageError> {
        let mut c = self.pool().acquire().await?;
        claim_session_in(&mut c, access_session_id, status_type, now, lease_until).await
    }

    async fn stop_session_claiming(
        &self,
        id: i64,
        cause: u32,
        event_at: i64,
        lease_until: i64,
    ) -> Result<StopOutcome, StorageError> {
        let mut tx = self.pool().begin().await?;
        // The session's row locked, as every writer of it does, so its deadline and the
        // operator's stops waiting for it are those the stop is made against.
        let Some((cause, at)) = ending_in(&mut tx, id, cause, event_at).await? else {
            return Ok(StopOutcome::NotActive);
        };
        if !stop_in(&mut tx, id, cause, at).await? {
            return Ok(StopOutcome::NotActive);
        }
        let claimed =
            match claim_session_in(&mut tx, id, status_type::STOP, event_at, lease_until).await? {
                Some(stop) => {
                    let session = session_by_id(&mut tx, id).await?.ok_or_else(|| {
                        StorageError::Corrupt(format!("session {id} vanished while it stopped"))
                    })?;
                    StopOutcome::Claimed(cause, stop, Box::new(session))
                }
                None => StopOutcome::Queued(cause),
            };
        notify(&mut tx, &self.origin, &[Notice::Session(id)]).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn release_outbox_claims(&self) -> Result<u64, StorageError> {
        // Other replicas may hold live claims on this database, and nothing tells this
        // process's former claims from theirs: every claim runs out its lease instead.
        Ok(0)
    }

    async fn mark_delivered(
        &self,
        row: &OutboxRow,
        now: i64,
        ack: Option<&Acknowledged<'_>>,
    ) -> Result<Delivered, StorageError> {
        let id = row.id;
        // A Start or Interim-Update acknowledged by another server than the session's may have
        // opened the session there (rare: a failover).
        if let Some((ack, server)) = ack.and_then(|a| Some((a, a.remembered()?))) {
            let mut c = self.pool().acquire().await?;
            remember_sent(&mut c, ack.access_session_id, server).await?;
        }
        // A sign-in's Start sent while Stops of its address were on their way: recorded, and
        // the sign-in's look made, in one transaction — also when recorded already (another
        // sender recorded it first, without the look; the look's Interim-Update supersedes one
        // queued and not yet on its way). The address's lock, then the session's row, as every
        // writer of a session's rows takes them, then its outbox row.
        if let Some(after) = ack.and_then(|a| a.after_stops) {
            let mut tx = self.pool().begin().await?;
            lock_address_of(&mut tx, row.access_session_id).await?;
            sqlx::query("SELECT 1 FROM access_sessions WHERE id = $1 FOR UPDATE")
                .bind(row.access_session_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE accounting_outbox SET delivered_at = $1, claimed_until = NULL, last_error = NULL, \
                 transmissions = transmissions + 1 WHERE id = $2 AND delivered_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let reasserted =
                reassert_after_stops_locked(&mut tx, row.access_session_id, &after, now).await?;
            tx.commit().await?;
            return Ok(Delivered {
                copies: 0,
                reasserted: reasserted.map(|_| row.access_session_id),
                late: reasserted.unwrap_or(false),
            });
        }
        if row.status_type != i64::from(status_type::STOP) {
            sqlx::query(
                "UPDATE accounting_outbox SET delivered_at = $1, claimed_until = NULL, last_error = NULL, \
                 transmissions = transmissions + 1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
            return Ok(Delivered::default());
        }
        // A Stop: marked, copied when it is the session's own, and the newer session at its
        // address that went before it asserted again — one statement. The update takes only a
        // row not yet delivered, so a second recording (another replica, a retried write)
        // waits for the first's lock on the row, finds it delivered and queues nothing. The
        // successor's row is locked as every writer of its rows does first (a stop of it
        // meanwhile: nothing queued behind its Stop; one that committed first: no successor).
        let (access_session_id, own, by, copied) = match ack.filter(|a| a.stop) {
            Some(ack) => (ack.access_session_id, ack.own, ack.by, true),
            None => (row.access_session_id, "", "", false),
        };
        let (copies, reasserted, late, unsure): (i64, Option<i64>, bool, bool) =
            sqlx::query_as(concat!(
            "WITH d AS (UPDATE accounting_outbox SET delivered_at = $1, claimed_until = NULL, last_error = NULL, \
               transmissions = transmissions + 1 WHERE id = $2 AND delivered_at IS NULL \
               RETURNING access_session_id, status_type, event_at, session_time_secs, terminate_cause), \
             ",
            newer_session_of_r!(
                "d JOIN access_sessions r ON r.id = d.access_session_id",
                "$1"
            ),
            ", ",
            interim_of_s!("$1"),
            ", \
             copies AS (INSERT INTO accounting_outbox (access_session_id, destination, status_type, event_at, \
                 session_time_secs, terminate_cause, next_attempt_at, created_at) \
               SELECT d.access_session_id, $3 || t.server, d.status_type, d.event_at, d.session_time_secs, \
                 d.terminate_cause, $1, $1 \
               FROM d, (SELECT server FROM accounting_sent WHERE access_session_id = $4 UNION SELECT $5::text) t \
               WHERE $7 AND (t.server <> $6 OR EXISTS (SELECT 1 FROM accounting_outbox i \
                 WHERE i.access_session_id = $4 AND i.status_type = 3 AND i.destination = $3 || $6 \
                 AND i.delivered_at IS NULL AND i.dead_at IS NULL)) RETURNING 1), \
             waiting AS (SELECT 1 FROM d \
               JOIN access_sessions r ON r.id = d.access_session_id \
               JOIN access_sessions s ON s.organization_id = r.organization_id \
                 AND s.client_ip = r.client_ip AND s.state = 'active' AND s.id > r.id AND s.expires_at > $1 \
               WHERE NOT EXISTS (SELECT 1 FROM accounting_outbox o WHERE o.access_session_id = s.id \
                 AND o.status_type = 1 AND o.destination = 'auth-server' AND o.delivered_at IS NOT NULL) \
               LIMIT 1) \
             SELECT (SELECT COUNT(*) FROM copies), (SELECT access_session_id FROM interim), \
               COALESCE((SELECT acked <= $1 FROM s), false), EXISTS (SELECT 1 FROM waiting)"
        ))
        .bind(now)
        .bind(id)
        .bind(super::SERVER_DESTINATION_PREFIX)
        .bind(access_session_id)
        .bind(own)
        .bind(by)
        .bind(copied)
        .fetch_one(self.pool())
        .await?;
        // A newer session at the address whose Start this statement's snapshot did not see
        // acknowledged: its Start may have been recorded meanwhile, and its sign-in's own look
        // (`reassert_after_stops`) may not have seen this Stop yet — both statements' snapshots
        // taken before the other's commit. Looked at again under the address's lock, which
        // that look takes too: whichever comes second sees the other's write.
        // The Stop is recorded whatever that look says: a failed look (the database away a
        // moment) is not a failed recording, which would have its caller record it again, find
        // it recorded, and leave its copies to the delivery loop's next pass.
        let (reasserted, late) = match reasserted {
            None if unsure => {
                match reassert_successor_locked(self.pool(), row.access_session_id, now).await {
                    Ok(Some((found, late))) => (Some(found), late),
                    Ok(None) => (None, false),
                    Err(e) => {
                        tracing::warn!(session = row.access_session_id, error = %e,
                            "a Stop recorded, the look for a newer session at its address to re-assert failed: a sign-in there that counted on this Stop looks once its Start is acknowledged, else no Interim-Update follows");
                        (None, false)
                    }
                }
            }
            found => (found, late),
        };
        Ok(Delivered {
            copies: copies as u64,
            reasserted,
            late,
        })
    }

    async fn claim_session_copies(
        &self,
        access_session_id: i64,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<OutboxRow>, StorageError> {
        let rows = sqlx::query(concat!(
            "UPDATE accounting_outbox SET claimed_until = $1, attempts = attempts + 1 WHERE id IN ( \
               SELECT o.id FROM accounting_outbox o WHERE o.access_session_id = $2 \
               AND o.destination <> 'auth-server' AND o.next_attempt_at <= $3 \
               AND (o.claimed_until IS NULL OR o.claimed_until < $3) AND ",
            pending_head_o!(),
            " FOR UPDATE SKIP LOCKED) RETURNING ",
            outbox_columns!()
        ))
        .bind(lease_until)
        .bind(access_session_id)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn copies_due(&self, access_session_id: i64, now: i64) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounting_outbox WHERE access_session_id = $1 \
             AND destination <> 'auth-server' AND next_attempt_at <= $2 \
             AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(access_session_id)
        .bind(now)
        .fetch_one(self.pool())
        .await?)
    }

    async fn remember_sent(
        &self,
        access_session_id: i64,
        server: &str,
    ) -> Result<(), StorageError> {
        let mut c = self.pool().acquire().await?;
        remember_sent(&mut c, access_session_id, server).await
    }

    async fn move_session_server(&self, id: i64, server_name: &str) -> Result<(), StorageError> {
        sqlx::query("UPDATE access_sessions SET server_name = $1 WHERE id = $2")
            .bind(server_name)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn mark_failed(
        &self,
        row: &OutboxRow,
        next_attempt_at: i64,
        error: &str,
        sent_to: Option<&str>,
    ) -> Result<(), StorageError> {
        let transmitted = sent_to.is_some();
        let sent_to = super::remembered_for(row, sent_to);
        sqlx::query(
            "WITH sent AS (INSERT INTO accounting_sent (access_session_id, server) \
               SELECT $6, $7::text WHERE $7::text IS NOT NULL ON CONFLICT DO NOTHING) \
             UPDATE accounting_outbox SET transmissions = transmissions + $1, \
             next_attempt_at = CASE WHEN attempts = $2 THEN $3 ELSE next_attempt_at END, \
             claimed_until = CASE WHEN attempts = $2 THEN NULL ELSE claimed_until END, \
             last_error = CASE WHEN attempts = $2 THEN $4 ELSE last_error END \
             WHERE id = $5",
        )
        .bind(i64::from(transmitted))
        .bind(row.attempts)
        .bind(next_attempt_at)
        .bind(error)
        .bind(row.id)
        .bind(row.access_session_id)
        .bind(sent_to)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn renew_claim(&self, row: &OutboxRow, lease_until: i64) -> Result<bool, StorageError> {
        let renewed = sqlx::query(
            "UPDATE accounting_outbox SET claimed_until = $1 WHERE id = $2 AND attempts = $3 \
             AND claimed_until IS NOT NULL AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(lease_until)
        .bind(row.id)
        .bind(row.attempts)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        Ok(renewed)
    }

    async fn drop_superseded(&self, row: &OutboxRow) -> Result<bool, StorageError> {
        let dropped = sqlx::query(
            "DELETE FROM accounting_outbox WHERE id = $1 AND attempts = $2 \
             AND claimed_until IS NOT NULL AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(row.id)
        .bind(row.attempts)
        .execute(self.pool())
        .await?
        .rows_affected()
            == 1;
        Ok(dropped)
    }

    async fn announce_accounting(&self) -> Result<(), StorageError> {
        self.announce(&[Notice::Accounting]).await
    }

    async fn keep_claims(
        &self,
        claims: &[(i64, i64)],
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<(i64, i64, i64)>, StorageError> {
        let (ids, attempts): (Vec<i64>, Vec<i64>) = claims.iter().copied().unzip();
        Ok(sqlx::query_as(
            "UPDATE accounting_outbox o SET claimed_until = GREATEST(o.claimed_until, $1)              FROM unnest($2::BIGINT[], $3::BIGINT[]) AS h(id, attempts)              WHERE o.id = h.id AND o.attempts = h.attempts AND o.claimed_until > $4              AND o.delivered_at IS NULL AND o.dead_at IS NULL RETURNING o.id, o.attempts, o.claimed_until",
        )
        .bind(lease_until)
        .bind(ids)
        .bind(attempts)
        .bind(now)
        .fetch_all(self.pool())
        .await?)
    }

    async fn dead_letter(
        &self,
        id: i64,
        claim: Option<i64>,
        now: i64,
        reason: &str,
        cascade: bool,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool().begin().await?;
        let (closed, ended) = dead_letter_in(&mut tx, id, claim, now, reason, cascade).await?;
        notify(&mut tx, &self.origin, ended.as_slice()).await?;
        tx.commit().await?;
        Ok(closed)
    }

    async fn rollback_unsent_start(
        &self,
        access_session_id: i64,
        now: i64,
        reason: &str,
    ) -> Result<bool, StorageError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT 1 FROM access_sessions WHERE id = $1 FOR UPDATE")
            .bind(access_session_id)
            .execute(&mut *tx)
            .await?;
        let start: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM accounting_outbox WHERE access_session_id = $1 AND status_type = $2 \
             AND delivered_at IS NULL AND dead_at IS NULL AND transmissions = 0 AND claimed_until IS NULL \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(access_session_id)
        .bind(i64::from(status_type::START))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = start else {
            return Ok(false);
        };
        let (_, ended) = dead_letter_in(&mut tx, id, None, now, reason, true).await?;
        notify(&mut tx, &self.origin, ended.as_slice()).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn end_abandoned_sign_ins(
        &self,
        started_before: i64,
        now: i64,
    ) -> Result<Vec<i64>, StorageError> {
        let found: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT o.id, s.id FROM accounting_outbox o \
             JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.status_type = $1 \
             AND (o.claimed_until IS NULL OR o.claimed_until < $2) \
             AND s.state = 'active' AND s.started_at < $3 ORDER BY s.id",
        )
        .bind(i64::from(status_type::START))
        .bind(now)
        .bind(started_before)
        .fetch_all(self.pool())
        .await?;
        let mut ended = Vec::new();
        for (start, session) in found {
            let mut tx = self.pool().begin().await?;
            // The session first, as every writer of its rows; then its Start, as it is now:
            // one a sender claimed meanwhile is that sender's.
            let started_at: Option<i64> = sqlx::query_scalar(
                "SELECT started_at FROM access_sessions WHERE id = $1 AND state = 'active' FOR UPDATE",
            )
            .bind(session)
            .fetch_optional(&mut *tx)
            .await?;
            let pending: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM accounting_outbox WHERE id = $1 \
                 AND delivered_at IS NULL AND dead_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until < $2) FOR UPDATE SKIP LOCKED",
            )
            .bind(start)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let (Some(started_at), Some(_)) = (started_at, pending) else {
                continue;
            };
            if stop_in(&mut tx, session, terminate_cause::NAS_ERROR, started_at).await? {
                notify(&mut tx, &self.origin, &[Notice::Session(session)]).await?;
                tx.commit().await?;
                ended.push(session);
            }
        }
        Ok(ended)
    }

    async fn session_outbox(
        &self,
        access_session_id: i64,
    ) -> Result<Vec<OutboxEntry>, StorageError> {
        sqlx::query(
            "SELECT id, status_type, attempts, transmissions, delivered_at, dead_at, dead_reason, last_error, destination \
             FROM accounting_outbox WHERE access_session_id = $1 ORDER BY id",
        )
        .bind(access_session_id)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(outbox_entry_from_row)
        .collect()
    }

    async fn dead_letters(
        &self,
        limit: i64,
    ) -> Result<Vec<(OutboxEntry, String, String)>, StorageError> {
        sqlx::query(
            "SELECT o.id, o.status_type, o.attempts, o.transmissions, o.delivered_at, o.dead_at, o.dead_reason, \
             o.last_error, o.destination, s.acct_session_id, s.organization_id \
             FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE o.dead_at IS NOT NULL ORDER BY o.dead_at DESC, o.id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| Ok((outbox_entry_from_row(r)?, r.try_get(9)?, r.try_get(10)?)))
        .collect()
    }

    async fn waiting_rows(&self, limit: i64) -> Result<Vec<WaitingRow>, StorageError> {
        sqlx::query(
            "SELECT o.id, o.status_type, o.attempts, o.transmissions, o.delivered_at, o.dead_at, o.dead_reason, \
             o.last_error, o.destination, s.acct_session_id, s.organization_id, s.username, s.client_ip, \
             s.server_name, o.created_at, o.next_attempt_at, o.claimed_until \
             FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE o.delivered_at IS NULL AND o.dead_at IS NULL ORDER BY o.created_at, o.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(WaitingRow {
                entry: outbox_entry_from_row(r)?,
                acct_session_id: r.try_get(9)?,
                organization_id: r.try_get(10)?,
                username: r.try_get(11)?,
                client_ip: r.try_get(12)?,
                server_name: r.try_get(13)?,
                created_at: r.try_get(14)?,
                next_attempt_at: r.try_get(15)?,
                claimed_until: r.try_get(16)?,
            })
        })
        .collect()
    }

    async fn retry_pending_now(&self, now: i64) -> Result<u64, StorageError> {
        let made_due = sqlx::query(
            "UPDATE accounting_outbox SET next_attempt_at = $1 WHERE delivered_at IS NULL AND dead_at IS NULL \
             AND next_attempt_at > $1",
        )
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected();
        // Every replica's delivery loop looks now (a server came back): once the rows are due,
        // or a replica woken first finds nothing and sleeps on their old times.
        self.announce(&[Notice::Accounting]).await?;
        Ok(made_due)
    }

    async fn retry_row_at(&self, id: i64, at: i64) -> Result<bool, StorageError> {
        Ok(sqlx::query(
            "UPDATE accounting_outbox SET next_attempt_at = LEAST(next_attempt_at, $1) \
             WHERE id = $2 AND delivered_at IS NULL AND dead_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0)
    }

    async fn next_outbox_attempt(&self) -> Result<Option<i64>, StorageError> {
        self.keep_outbox_statistics(false).await;
        Ok(sqlx::query_scalar(concat!(
            "SELECT MIN(GREATEST(o.next_attempt_at, COALESCE(o.claimed_until, 0))) FROM accounting_outbox o WHERE ",
            pending_head_o!()
        ))
        .fetch_one(self.pool())
        .await?)
    }

    async fn prune(&self, before: i64, limit: i64) -> Result<u64, StorageError> {
        let mut tx = self.pool().begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT s.id FROM access_sessions s WHERE s.state = 'stopped' AND s.stopped_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = s.id \
                             AND p.delivered_at IS NULL AND p.dead_at IS NULL) \
             ORDER BY s.stopped_at LIMIT $2 FOR UPDATE OF s SKIP LOCKED",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM accounting_outbox WHERE access_session_id = ANY($1) \
             AND (delivered_at IS NOT NULL OR dead_at IS NOT NULL)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query(
            "DELETE FROM access_sessions WHERE id = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM accounting_outbox p WHERE p.access_session_id = access_sessions.id)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(removed)
    }

    async fn metrics_snapshot(&self, now: i64) -> Result<crate::metrics::Snapshot, StorageError> {
        let active_sessions: Vec<(String, i64)> = sqlx::query_as(
            "SELECT organization_id, COUNT(*) FROM access_sessions WHERE state = 'active' GROUP BY organization_id",
        )
        .fetch_all(self.pool())
        .await?;
        let (backlog, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at) FROM accounting_outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        let (dead_letters, dead_stops, dead_stops_last_day): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE status_type = $1 AND dead_reason IS DISTINCT FROM $2), \
             COUNT(*) FILTER (WHERE status_type = $1 AND dead_reason IS DISTINCT FROM $2 AND dead_at > $3) \
             FROM accounting_outbox WHERE dead_at IS NOT NULL",
        )
        .bind(i64::from(status_type::STOP))
        .bind(super::NEVER_STARTED)
        .bind(now - crate::metrics::DEAD_STOPS_RECENT_MS)
        .fetch_one(self.pool())
        .await?;
        let (overdue, oldest_end): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(expires_at) FROM access_sessions WHERE state = 'active' AND expires_at < $1",
        )
        .bind(now.saturating_sub(crate::metrics::OVERDUE_AFTER_MS))
        .fetch_one(self.pool())
        .await?;
        Ok(crate::metrics::Snapshot {
            active_sessions,
            sessions_overdue: overdue,
            oldest_overdue: super::overdue_by(now, oldest_end),
            outbox_backlog: backlog,
            outbox_oldest: Duration::from_millis(
                oldest.map_or(0, |o| now.saturating_sub(o).max(0) as u64),
            ),
            dead_letters,
            dead_stops,
            dead_stops_last_day,
            ..Default::default()
        })
    }

    async fn dynauth_answer_given(
        &self,
        request: &str,
        now: i64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT reply FROM dynauth_requests WHERE request = $1 AND until > $2",
        )
        .bind(request)
        .bind(now)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn record_dynauth_answer(
        &self,
        request: &str,
        reply: Vec<u8>,
        until: i64,
        now: i64,
    ) -> Result<(), StorageError> {
        let acked = super::acknowledges(&reply);
        // Expired rows another replica is deleting right now are left to it (never waited for).
        sqlx::query(
            "DELETE FROM dynauth_requests WHERE request IN \
             (SELECT request FROM dynauth_requests WHERE until <= $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now)
        .execute(self.pool())
        .await?;
        sqlx::query(
            "INSERT INTO dynauth_requests (request, until, reply) VALUES ($1, $2, $3) \
             ON CONFLICT (request) DO UPDATE SET until = EXCLUDED.until, reply = EXCLUDED.reply \
             WHERE dynauth_requests.until <= $4 OR $5",
        )
        .bind(request)
        .bind(until)
        .bind(reply)
        .bind(now)
        .bind(acked)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn outbox_backlog(&self) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounting_outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?)
    }

    async fn outbox_delivered(
        &self,
        access_session_id: i64,
        status_type: u32,
    ) -> Result<bool, StorageError> {
        let delivered: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT delivered_at FROM accounting_outbox WHERE access_session_id = $1 AND status_type = $2 \
             AND destination = 'auth-server' AND dead_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(access_session_id)
        .bind(i64::from(status_type))
        .fetch_optional(self.pool())
        .await?;
        Ok(delivered.flatten().is_some())
    }

    async fn stops_due_at(
        &self,
        organization_id: &str,
        client_ip: &str,
        now: i64,
        since: i64,
        until: i64,
    ) -> Result<AddressStops, StorageError> {
        // Through the pending rows that came due lately or come due soon (those on their way:
        // few but in a recovery), not the sessions.
        let rows: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT o.access_session_id, bool_or(o.next_attempt_at <= $3 AND NOT EXISTS ( \
               SELECT 1 FROM accounting_outbox e WHERE e.access_session_id = o.access_session_id \
               AND e.destination = o.destination AND e.id < o.id AND e.delivered_at IS NULL \
               AND e.dead_at IS NULL AND (e.status_type <> 3 OR e.next_attempt_at > $3))) \
             FROM accounting_outbox o JOIN access_sessions s ON s.id = o.access_session_id \
             WHERE o.delivered_at IS NULL AND o.dead_at IS NULL \
             AND o.next_attempt_at <= GREATEST($3, $6) AND o.next_attempt_at > $5 \
             AND o.status_type = $4 AND s.client_ip = $2 AND s.organization_id = $1 \
             GROUP BY o.access_session_id ORDER BY MIN(o.id) LIMIT 32",
        )
        .bind(organization_id)
        .bind(client_ip)
        .bind(now)
        .bind(i64::from(status_type::STOP))
        .bind(since)
        .bind(until)
        .fetch_all(self.pool())
        .await?;
        let mut stops = AddressStops::default();
        for (id, due) in rows {
            if due {
                &mut stops.due
            } else {
                &mut stops.coming
            }
            .push(id);
        }
        Ok(stops)
    }
}

/// The organization store on PostgreSQL (`organizations`): every change takes the
/// organization-change lock, announces itself to the other replicas, and jobs are claimed
/// under this process's origin.
impl OrgBackend for PgStore {
    type Conn = PgConnection;
    type Change = OrgTx<Postgres>;
    type Reader = PoolConnection<Postgres>;
    const LOCK_ROW: &'static str = " FOR UPDATE";

    async fn begin_change(&self) -> Result<OrgTx<Postgres>, StorageError> {
        let mut tx = self.pool().begin().await?;
        lock_organizations(&mut tx).await?;
        Ok(OrgTx::new(tx, None))
    }

    async fn begin_write(&self) -> Result<OrgTx<Postgres>, StorageError> {
        Ok(OrgTx::new(self.pool().begin().await?, None))
    }

    async fn reader(&self) -> Result<PoolConnection<Postgres>, StorageError> {
        Ok(self.pool().acquire().await?)
    }

    async fn announce(&self, c: &mut PgConnection) -> Result<(), StorageError> {
        notify(c, &self.origin, &[Notice::Organizations]).await
    }

    fn claimant(&self) -> Option<&str> {
        Some(&self.origin)
    }

    async fn read_active(&self, id: &str) -> Result<Option<bool>, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT is_active FROM organizations WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn audit_alone(&self, entry: &Audit<'_>) -> Result<(), StorageError> {
        let mut c = self.pool().acquire().await?;
        audit_in(&mut *c, entry).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::organizations::session_end_actor;

    /// A server that takes connections and never says a word (a postmaster stopped, its
    /// packets dropped after the handshake), found when a pool timed out: the first look
    /// proves nothing (a busy server may be slow), the patient second one finds it away — not
    /// never (the review's M1), which left every request waiting the pool's 5 s.
    #[tokio::test]
    async fn a_server_that_never_answers_is_found_away_after_a_patient_look() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("portal")
            .database("portal");
        let pool = || {
            PgPoolOptions::new()
                .acquire_timeout(Duration::from_millis(500))
                .connect_lazy_with(options.clone())
        };
        let reach = Arc::new(Reachability {
            options: options.clone(),
            pools: [pool(), pool()],
            down: std::sync::Mutex::new(None),
            checking: std::sync::atomic::AtomicBool::new(false),
            suspected_at: std::sync::Mutex::new(None),
        });
        reach.observe(&StorageError::Database(sqlx::Error::PoolTimedOut));
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while reach.admit().is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the silent server is never found away"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        silent.abort();
    }

    /// A store on pools that open no connection until asked (to a port nobody listens on).
    fn lazy_store() -> PgStore {
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(1)
            .username("portal")
            .database("portal");
        let pool = || PgPoolOptions::new().connect_lazy_with(options.clone());
        PgStore {
            requests: pool(),
            background: pool(),
            listening: pool(),
            starved: Arc::default(),
            origin: "test".into(),
            reach: Arc::new(Reachability {
                options: options.clone(),
                pools: [pool(), pool()],
                down: std::sync::Mutex::new(None),
                checking: std::sync::atomic::AtomicBool::new(false),
                suspected_at: std::sync::Mutex::new(None),
            }),
            outbox_statistics: Arc::default(),
            refused_writes_at: Arc::default(),
            read_only_seen_at: Arc::default(),
            gave_up_at: Arc::default(),
        }
    }

    /// A call the server never answers (its host gone without a word after the query went
    /// out) is given up after its bound ([`CALL_GIVE_UP`]), as the database away — not waited
    /// on for the quarter of an hour TCP takes, or for ever (the storage review's F1 of session
    /// 82); a call answered within it is not cut short, however slow.
    #[tokio::test]
    async fn a_call_never_answered_is_given_up_as_the_database_away() {
        let give_up = Duration::from_millis(300);
        let given_up = tokio::time::timeout(
            Duration::from_secs(10),
            lazy_store().guarded_within(give_up, |_| {
                std::future::pending::<Result<(), sqlx::Error>>()
            }),
        )
        .await
        .expect("the call is given up, not waited on for ever");
        assert!(
            matches!(&given_up, Err(StorageError::Unreachable(why)) if why.contains("did not answer")),
            "{given_up:?}"
        );
        assert!(given_up.unwrap_err().is_unavailable());

        let slow = lazy_store()
            .guarded_within(Duration::from_secs(60), |_| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, sqlx::Error>(7)
            })
            .await;
        assert!(matches!(slow, Ok(7)), "{slow:?}");
    }

    #[test]
    fn the_stop_query_queues_stops_for_the_auth_server() {
        let sql = stop_sessions!("SELECT 1 AS id, 0 AS at, 1 AS cause");
        let queued = format!(
            "SELECT id, '{AUTH_SERVER_DESTINATION}', {}, at,",
            status_type::STOP
        );
        assert!(sql.contains(&queued), "{sql}");
        let actor = format!(
            "CASE WHEN cause = {} THEN '{}' ELSE '{}' END",
            terminate_cause::USER_REQUEST,
            session_end_actor(terminate_cause::USER_REQUEST),
            session_end_actor(terminate_cause::ADMIN_RESET)
        );
        assert!(sql.contains(&actor), "{sql}");
    }

    #[test]
    fn announcements_read_back_as_made_and_a_processs_own_are_left_out() {
        let notices = [
            Notice::Session(42),
            Notice::Organizations,
            Notice::Accounting,
            Notice::Breaker {
                addr: "127.0.0.1:1813".parse().unwrap(),
                secret: 0x00ab_cdef_0123_4567,
                answered: false,
            },
            Notice::Breaker {
                addr: "[::1]:1812".parse().unwrap(),
                secret: u64::MAX,
                answered: true,
            },
        ];
        for notice in notices {
            let payload = notice_payload("p1", &notice);
            assert_eq!(parse_notice(&payload, "p2"), Some(notice), "{payload}");
            assert_eq!(parse_notice(&payload, "p1"), None, "{payload}");
        }
        for odd in [
            "p1 b 127.0.0.1:1813 12",
            "p1 b 127.0.0.1:1813 12 2",
            "p1 b nowhere 12 1",
            "p1 b 127.0.0.1:1813 xyz 1",
            "p1 b 127.0.0.1:1813 12 1 more",
        ] {
            assert_eq!(parse_notice(odd, "p2"), None, "{odd}");
        }
    }
}
