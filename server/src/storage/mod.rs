//! Persistence: organizations, access sessions with their deadlines, the accounting outbox, the
//! audit log and web sessions (a tower-sessions store of our own) — in one SQLite file (WAL; the
//! embedded default) or in PostgreSQL (several replicas on one database).
//!
//! The contract is two traits, [`SessionStore`] (access sessions and the accounting outbox) and
//! [`OrganizationStore`] (organizations, their jobs, the audit log), implemented by
//! [`sqlite::SqliteStore`] and [`postgres::PgStore`]; [`Storage`] is the handle the rest of the
//! portal holds and forwards each call to the backend it was opened on. One contract test suite
//! (`tests/storage_contract.rs`) runs on both.
//!
//! Every change that must be accounted for writes its outbox row in the same transaction, so a
//! crash can never leave a session change without its Start/Interim/Stop queued.
//! Times are Unix milliseconds (`i64`), passed in by callers so tests control them.

/// SQL, both backends: the operator's stops still waiting for the session `s` — the open
/// organization jobs that stop its organization's sessions or terminate it (`j`).
macro_rules! stops_waiting_for_s {
    () => {
        "FROM organization_jobs j WHERE j.done_at IS NULL \
         AND j.organization_id = s.organization_id \
         AND (j.kind = 'stop_sessions' OR j.access_session_id = s.id)"
    };
}

/// SQL: no operator's stop waits for the session `s`. Such a session gets no periodic
/// Interim-Update: its Stop is dated when the stop was asked for, never before a queued Interim.
macro_rules! no_stop_pending {
    () => {
        concat!("NOT EXISTS (SELECT 1 ", stops_waiting_for_s!(), ")")
    };
}
pub(crate) use no_stop_pending;

/// SQL: the session `s`'s Start is not on its way: acknowledged (or given up: a dead-lettered
/// Start leaves its session to the Interim-Updates that assert it). One whose Start is still
/// on its way (a sign-in under way or cut off, its Start held or unanswered) gets no periodic
/// Interim-Update:
/// its user may never have had it (the sign-in is then ended with a NAS-Error Stop dated at its
/// start, which a queued Interim would date later), and Interims dated while the Start was held
/// would follow it in a burst. The first one is queued once the Start is acknowledged.
macro_rules! no_start_pending {
    () => {
        "NOT EXISTS (SELECT 1 FROM accounting_outbox st WHERE st.access_session_id = s.id \
         AND st.status_type = 1 AND st.destination = 'auth-server' AND st.delivered_at IS NULL \
         AND st.dead_at IS NULL)"
    };
}
pub(crate) use no_start_pending;

/// SQL: when the earliest operator's stop still waiting for the session `s` was asked for;
/// NULL if none. A session due meanwhile ends then (Admin-Reset), not later by its deadline.
macro_rules! stop_asked_at {
    () => {
        concat!("(SELECT MIN(j.created_at) ", stops_waiting_for_s!(), ")")
    };
}
pub(crate) use stop_asked_at;

mod engine;

tokio::task_local! {
    /// Set for the portal's background work ([`background`]).
    static BACKGROUND: bool;
    /// Whether a request is being answered ([`answering`], [`run_on`]).
    static ANSWERING: bool;
}

/// Whether a Dynamic Authorization answer (its bytes) is a Disconnect-ACK or CoA-ACK: what a
/// replica did, which an answer recorded before it gives way to
/// ([`SessionStore::record_dynauth_answer`]).
pub fn acknowledges(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(41 | 44))
}

/// Runs `work` as the answer to a request (the HTTP layer wraps every request in it): a write
/// it waits for gives up once the database has finished no write for as long as `/readyz`
/// tolerates (a hung disk), and the request is answered 503 instead of never. Work that runs
/// on after its request went away (`run_to_end`'s task) waits as long as it takes.
pub fn answering<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    ANSWERING.scope(true, work)
}

/// Runs `poll` — a step of work that must run to its end (`accounting::RunToEnd`), polled by
/// a request or by a task of its own once the request went away — as no request's: its
/// writes wait for a hung disk as long as it takes, never given up half-way (a Start sent and
/// its delivery not recorded, a Stop claimed by nobody). Its request is answered by the front
/// door meanwhile.
pub fn run_on<R>(poll: impl FnOnce() -> R) -> R {
    ANSWERING.sync_scope(false, poll)
}

/// Whether the current task is answering a request ([`answering`]).
pub(crate) fn answering_someone() -> bool {
    ANSWERING.try_with(|answering| *answering).unwrap_or(false)
}

/// Runs `work` as background work: the supervised loops (expiry, accounting, organization
/// jobs, notices, pruning) and what they start. On PostgreSQL it takes connections of its own
/// (`postgres::BACKGROUND_CONNECTIONS`), so requests holding every other connection — a burst,
/// a server that allows fewer connections than the pool's size — never keep a Stop waiting.
pub fn background<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    BACKGROUND.scope(true, work)
}

/// `work` on the same footing as the caller's task (background or not), for a task the caller
/// starts: a spawned task does not inherit it by itself.
pub fn same_lane<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    BACKGROUND.scope(in_background(), work)
}

/// Whether the current task is background work ([`background`]).
pub(crate) fn in_background() -> bool {
    BACKGROUND.try_with(|b| *b).unwrap_or(false)
}
pub mod organizations;
pub mod postgres;
pub mod sqlite;
pub mod web_sessions;

pub use organizations::{
    settings_changes, ActiveChange, Audit, AuditEntry, AuditQuery, DeleteOutcome, OrganizationJob,
    OrganizationWrite, SeedOutcome, SkippedStop, StoredOrganization, UpdateOutcome, FAILING_FOR_MS,
};
use postgres::PgStore;
use sqlite::SqliteStore;
use std::path::Path;

/// How lately a Stop came due for a sign-in at its address to send it first
/// ([`SessionStore::stops_due_at`]): one due longer ago waits for something (its server, an
/// earlier row of its session).
pub const STOPS_DUE_LATELY_MS: i64 = 60_000;

/// Due sessions one write of an expiry sweep stops at most ([`Storage::stop_due_sessions`]);
/// on PostgreSQL another replica takes the rows this one has locked meanwhile.
pub const STOP_CHUNK: i64 = 2_000;

/// Sessions (or audit entries) one pruning write deletes at most: the retention's first pass
/// after it was lowered — months of history — is many short writes, not one that holds every
/// other write back for minutes on SQLite, or outlasts PostgreSQL's `statement_timeout` and is
/// rolled back every hour (the storage review's F2 of session 82).
pub const PRUNE_CHUNK: i64 = 1_000;

/// How many replacements by the same browser a link to a session is followed through
/// ([`AccessSessionRecord::replaced_by`]): a browser's cookie is at most a few sign-ins behind.
pub const REPLACEMENTS_FOLLOWED: usize = 8;

/// A session replaced by its browser's sign-in records the new one
/// ([`AccessSessionRecord::replaced_by`]) only if it opened at most this long before it, for
/// the same user — two sign-ins sent together, the case a cookie of the replaced one is kept
/// in (`http::resubmit::SAME_SUBMIT`). A cookie shared with someone else's later sign-in (a
/// planted one) must not lead to that session.
pub const FOLLOWED_REPLACEMENT_MS: i64 = 10_000;

/// Whether a replaced session's user is the signing-in one ([`FOLLOWED_REPLACEMENT_MS`]):
/// equal ignoring case, Unicode's — compared here, the same on every backend (SQLite's
/// `lower()` folds ASCII alone, PostgreSQL's what its locale says).
pub(crate) fn same_user(replaced: &str, signing_in: &str) -> bool {
    replaced == signing_in || replaced.to_lowercase() == signing_in.to_lowercase()
}

/// The dead letter's reason of the rows a never-sent Start took along (nothing of that session
/// reached a server).
pub const NEVER_STARTED: &str = "its Start was never sent";

/// Outbox destination of the session's accounting server: the one that authenticated it, or
/// the one its Start moved to ([`AccessSessionRecord::server_name`]), with failover.
pub const AUTH_SERVER_DESTINATION: &str = "auth-server";
/// Prefix of the outbox destination of a copy for one named server alone (no failover).
pub(crate) const SERVER_DESTINATION_PREFIX: &str = "server:";

/// What [`SessionStore::end_abandoned_sign_in`] found of a session's sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInLease {
    /// Its lease had run out: the session is ended now.
    Ended,
    /// Its sign-in's lease runs until then (ms): nothing changed.
    Held(i64),
    /// Nothing of a sign-in to end — its Start left to the delivery loop (no lease), the
    /// session no longer active or its Start acknowledged: nothing changed.
    None,
}

/// The server a stored outbox destination names alone (None: the session's server, with
/// failover).
pub(crate) fn copy_target(destination: &str) -> Option<String> {
    destination
        .strip_prefix(SERVER_DESTINATION_PREFIX)
        .map(str::to_owned)
}

/// Handle to the database, whichever backend. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Declares one part of the storage contract: the trait both backends implement, and the
/// matching methods of [`Storage`], each forwarding to the backend it was opened on.
macro_rules! contract {
    ($(#[$trait_meta:meta])* trait $trait:ident {
        $( $(#[$meta:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*
    }) => {
        $(#[$trait_meta])*
        pub trait $trait: Send + Sync {
            $( $(#[$meta])*
            fn $name(&self $(, $arg: $ty)*)
                -> impl std::future::Future<Output = Result<$ret, StorageError>> + Send; )*
        }

        impl Storage {
            $( $(#[$meta])*
            pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StorageError> {
                match &self.backend {
                    Backend::Sqlite(store) => {
                        $trait::$name(store $(, $arg)*).await.inspect_err(|e| store.engine.note(e))
                    }
                    Backend::Postgres(store) => {
                        store.guarded(|_| $trait::$name(store $(, $arg)*)).await
                    }
                }
            } )*
        }
    };
}

contract! {
    /// Access sessions, the accounting outbox, and the keys the portal keeps for itself.
    trait SessionStore {
        /// A 32-byte key the portal keeps for itself under `name`, created on first use and
        /// the same for every process on this database.
        fn app_secret(&self, name: &str) -> [u8; 32];
        /// Stored web sessions (tests and operators: anonymous visitors must not add any).
        fn web_session_count(&self) -> i64;
        /// Creates an access session with its Start queued (claimed for the caller if it asks).
        /// An active session of the same (organization, client IP) is stopped first
        /// (Port-Preempted), in the same transaction. Fails with
        /// [`StorageError::OrganizationDisabled`] (nothing written) when the organization is
        /// disabled or gone: a disable racing the login either sees this session or stops it.
        fn open_session(&self, new: &NewAccessSession) -> OpenedSession;
        /// Loads a session by id.
        fn session(&self, id: i64) -> Option<AccessSessionRecord>;
        /// Gives an active session `terms` (refreshed at `now`: its window, limit and deadline) and
        /// queues an Interim-Update. Returns the updated session, or None if it is no longer
        /// active (its deadline passed) — or an operator's stop waits for it: then this call
        /// makes that stop (Admin-Reset, dated when it was asked for) instead; or the new
        /// deadline is not after `now` (its limit passed: a `max_lifetime` shortened since the
        /// sign-in): then it stops the session now with Session-Timeout. A disabled
        /// organization refuses it first (`OrganizationDisabled`).
        fn refresh_session(&self, id: i64, now: i64, terms: RefreshTerms) -> Option<AccessSessionRecord>;
        /// Brings an organization's active sessions whose Accept left their limit to the
        /// organization (no Session-Timeout) within a `max_lifetime` of `max_lifetime_ms`: a
        /// limit later than their start plus it (or none) becomes that, their window no longer
        /// than it, and their deadline no later than it — but not before `now` (one already
        /// past it ends now, not back then). Only ever shortens; a session already due is left
        /// to end as it was due (its cause unchanged). Returns each session changed with its
        /// new deadline.
        fn cap_lifetimes(&self, organization_id: &str, max_lifetime_ms: i64, now: i64) -> Vec<(i64, i64)>;
        /// Moves the stored times of what is under way — open sessions (start, last refresh,
        /// deadline, limit, next Interim-Update, sign-in lease) and accounting not yet delivered
        /// (event, next attempt, made, claim) — by `delta_ms`: the wall clock stepped by that
        /// much, and each keeps the real time it had left. Returns the open sessions moved; None
        /// where one process's clock is not the reference (PostgreSQL: replicas share the
        /// times, and keep their clocks in sync) and nothing is moved.
        fn shift_times(&self, delta_ms: i64) -> Option<Vec<i64>>;
        /// Stops an active session at `event_at` (never before its start, its last refresh or
        /// an Interim-Update queued for it) with `cause` and queues its Stop. False if it was not active (already stopped: nothing is queued
        /// twice).
        fn stop_session(&self, id: i64, cause: u32, event_at: i64) -> bool;
        /// Extends the lease of the sign-in that opened session `id` (see
        /// [`NewAccessSession::start_claimed_until`]) to `until`, never shortening it. False if
        /// the session is no longer active.
        fn renew_sign_in(&self, id: i64, until: i64) -> bool;
        /// Makes session `id`'s unacknowledged Start due at `now` if it waits, unclaimed, for a
        /// later attempt — one a delivery loop left to the sign-in that opened the session
        /// until that sign-in's lease ends, once the sign-in has failed. False if none waited.
        fn start_due_now(&self, id: i64, now: i64) -> bool;
        /// After session `id`'s Start was acknowledged: if a Stop (own or copy) of one of the
        /// sessions `after.earlier` (its address's, whose Stops were still on their way when
        /// the Start left) was acknowledged at or after `after.since` — it may have reached
        /// the server after the Start — queues `id`'s Interim-Update at `now`, as
        /// [`SessionStore::mark_delivered`] does for a Stop acknowledged after the Start (not
        /// for a session ended, past its deadline, or awaited by an operator's stop). Whether
        /// one of them surely came after the Start (acknowledged at or after `after.left`) if
        /// it did, None if it did not. (A Start the sign-in's own process recorded made this
        /// look in its recording: [`Acknowledged::after_stops`].)
        fn reassert_after_stops(&self, id: i64, after: &AfterStops<'_>, now: i64) -> Option<bool>;
        /// Ends session `id` if a sign-in opened it and that sign-in's lease ran out before
        /// `now` while the session is still active and its Start unacknowledged: its process
        /// died during the sign-in (a sign-in renews its lease until it ends with the Start
        /// acknowledged, rolled back or the session stopped), so no user was given it. Stopped
        /// with NAS-Error at its start, its Stop queued behind its Start.
        fn end_abandoned_sign_in(&self, id: i64, now: i64) -> SignInLease;
        /// Stops at most `limit` active sessions whose deadline is at or before `now`, those due
        /// first, in one write (fewer than `limit`: none due is left; a whole sweep is
        /// [`Storage::stop_due_sessions`]). Each is stopped at its own deadline, with
        /// Session-Timeout when the limit was reached, else Idle-Timeout. Several processes
        /// may run this at once: each session is stopped exactly once.
        fn stop_due_chunk(&self, now: i64, limit: i64) -> Vec<Stopped>;
        /// Stops up to `limit` active sessions of a *disabled* organization at `event_at`
        /// with `cause`, in one write, and queues their Stops (the delivery loop sends them,
        /// paced like any other row), for the disable's stop job `job_id`. Nothing if the
        /// organization is active or the job is closed: a re-enable committed before this write
        /// keeps every session (and closes the job, so a later disable's own job dates the
        /// Stops). A session whose deadline came before `event_at` is left to expiry (it ended
        /// by its deadline first: Idle- or Session-Timeout at that deadline). Returns the ids
        /// stopped (none: nothing left, the organization is active or the job closed).
        fn stop_disabled_sessions(&self, organization_id: &str, job_id: i64, cause: u32, event_at: i64, limit: i64) -> Vec<i64>;
        /// Queues an Interim-Update for every active session whose periodic update (from
        /// Acct-Interim-Interval) is due at `now`, and schedules the next one. Returns how many.
        /// A session an operator's stop waits for (an open job: its organization's stop, its
        /// own terminate) gets none: its Stop is dated when the stop was asked for, and an
        /// Interim queued later would date it later (a Stop is never dated before a queued
        /// Interim).
        fn queue_due_interims(&self, now: i64) -> usize;
        /// When the next periodic Interim-Update is due.
        fn next_interim(&self) -> Option<i64>;
        /// The active, not yet due session of a client in an organization.
        fn active_session_for_client(&self, organization_id: &str, client_ip: &str, now: i64) -> Option<AccessSessionRecord>;
        /// Active sessions a Dynamic Authorization request names.
        fn find_active_sessions(&self, wanted: &SessionMatch) -> Vec<AccessSessionRecord>;
        /// Active sessions, of one organization or all, oldest first (operator listing).
        fn active_sessions_of(&self, organization_id: Option<&str>, limit: i64) -> Vec<AccessSessionRecord>;
        /// A session by its Acct-Session-Id.
        fn session_by_acct_id(&self, acct_session_id: &str) -> Option<AccessSessionRecord>;
        /// Earliest deadline of an active session.
        fn next_expiry(&self) -> Option<i64>;
        /// Whether the database answers a query (one indexed row; `/readyz`).
        fn ping(&self) -> ();
        /// Number of active sessions.
        fn active_sessions(&self) -> i64;
        /// Claims up to `limit` due outbox rows, each the first pending row of its session (and
        /// destination), so a session's packets go out in order while different sessions'
        /// packets go out together. A claim lasts until `lease_until`; an expired claim can be
        /// taken again; a row is never claimed by two callers at once. Durable: a claim counts
        /// an attempt before the packet can leave, which is how a crash after sending is told
        /// from a Start that never went out.
        fn claim_due_outbox(&self, now: i64, lease_until: i64, limit: i64) -> Vec<OutboxRow>;
        /// Claims a session's next pending row of `status_type` if it is first in line (used to
        /// send a Start, or a preempted session's Stop, at once inside the login request).
        fn claim_session_outbox(&self, access_session_id: i64, status_type: u32, now: i64, lease_until: i64) -> Option<OutboxRow>;
        /// Claims the copies of a session's Stop that are due (each for its server alone), for
        /// the caller to send now: a login sends the Stops of the sessions it preempts before
        /// its Start, copies included.
        fn claim_session_copies(&self, access_session_id: i64, now: i64, lease_until: i64) -> Vec<OutboxRow>;
        /// Copies of a session's Stop still to be sent now: due (or being sent), not parked for a
        /// server that is down.
        fn copies_due(&self, access_session_id: i64, now: i64) -> i64;
        /// Remembers, durably, that `server` is being or was sent a Start or Interim-Update of
        /// the session: it may hold the session open, so the session's Stop is copied there
        /// (see `mark_delivered`).
        fn remember_sent(&self, access_session_id: i64, server: &str) -> ();
        /// Extends the caller's claim of `row` to `lease_until` if it is still the caller's (no
        /// other sender claimed the row since, even after the lease ran out) and the row is
        /// still pending. False: the row is another sender's, or settled.
        fn renew_claim(&self, row: &OutboxRow, lease_until: i64) -> bool;
        /// Deletes the caller's claimed `row` that no server needs any more — a copy of an
        /// Interim-Update whose session has ended (the session's Stop, or its copy, closes it
        /// there; sent after that Stop, it would open the session again) — if it is still the
        /// caller's and pending. False: another sender's, or settled.
        fn drop_superseded(&self, row: &OutboxRow) -> bool;
        /// Keeps the claims a sender holds while it delivers them (`(row id, attempts)`, the
        /// claim's token): each still the sender's, still running at `now` (not given up) and
        /// pending is extended to `lease_until` — never shortened. Returns each claim kept
        /// (row id, attempts) and until when it now runs. One write for them all.
        fn keep_claims(&self, claims: &[(i64, i64)], lease_until: i64, now: i64) -> Vec<(i64, i64, i64)>;
        /// Stops an active session asked to stop with `cause` at `event_at` — ended, in the
        /// same write, as [`crate::access_session::timing::ending`] says: at its deadline if
        /// that came first, at an operator's stop still waiting for it (a disable's) if asked
        /// for before — and claims its Stop for the caller until `lease_until` when nothing of
        /// the session is still pending before it (the caller sends it at once).
        fn stop_session_claiming(&self, id: i64, cause: u32, event_at: i64, lease_until: i64) -> StopOutcome;
        /// At start-up: releases the claims a previous process of this database left behind
        /// (their rows are sent again, idempotent by Acct-Session-Id and status type). Where
        /// several processes share the database, claims of another process are left to run
        /// out their lease.
        fn release_outbox_claims(&self) -> u64;
        /// Marks a claimed row delivered. `ack`, for a row of the session's own accounting:
        /// who acknowledged it — another server than the session's is remembered as one that
        /// may hold the session open (after a Start or Interim-Update), and a Stop is copied,
        /// in the same write, to each such server and the session's own but the one that
        /// acknowledged it (once: a row already delivered gets none) — and to that one too when
        /// a copy of the session's Interim-Update waits for it: a copy on its way when the Stop
        /// failed over there could arrive after the Stop, and the Stop's copy, queued behind
        /// it, has the last word.
        ///
        /// A Stop (the session's own or a copy) acknowledged after the Start of a newer session
        /// of its organization and address — active, its Start acknowledged already: the Stop
        /// went after it (it waited behind a silent server, a dead replica's claim, a backoff)
        /// and a firewall that keys identities by address may have taken it for the end of the
        /// address's current user — queues that session's Interim-Update at `now` in the same
        /// write (once: a row already delivered queues none), so that user is asserted again.
        /// Not for a session an operator's stop (a disable) waits for, nor one past its deadline:
        /// it is about to end (its Stop dated then, not after a later Interim-Update).
        ///
        /// A sign-in's Start sent while Stops of its address's earlier sessions were on their
        /// way (`ack`'s `after_stops`) makes that sign-in's look
        /// ([`SessionStore::reassert_after_stops`]) in the same write, durably: a crash between
        /// the Start's recording and a look of its own would leave the session unasserted.
        ///
        /// May be relaxed (lost on power failure: the row is sent again, which accounting
        /// servers take as a duplicate, and its copies and Interim-Update are queued then).
        fn mark_delivered(&self, row: &OutboxRow, now: i64, ack: Option<&Acknowledged<'_>>) -> Delivered;
        /// Makes `server_name` the session's accounting server: its Start was acknowledged
        /// there (a failover), so its Interim-Updates and Stop follow it (a Stop where the
        /// Start is not leaves the Start open). Durable.
        fn move_session_server(&self, id: i64, server_name: &str) -> ();
        /// Releases a claimed row for a retry at `next_attempt_at`, recording why it failed and
        /// whether a packet went out this time (`sent_to`: to that server, which is then
        /// remembered, after a Start or Interim-Update, as one that may hold the session open
        /// — see `mark_delivered`).
        /// The release only while the row is still this claim's (`row.attempts` counts claims):
        /// a sender that stalled past its lease never releases a row another sender has claimed
        /// since. A transmission counts whoever holds the row now: a Start that went on the wire
        /// is never taken for one that did not (which would end its session without a Stop).
        fn mark_failed(&self, row: &OutboxRow, next_attempt_at: i64, error: &str, sent_to: Option<&str>) -> ();
        /// Closes a row that can never be sent, with the reason, so it stops blocking its
        /// session's later rows. With `cascade`, the session's later pending rows are closed too
        /// ("the Start was never sent", so no Interim or Stop may follow it), and an active
        /// session is ended without a Stop: it never existed for the server.
        /// With `claim` (a claim's `attempts`), only while the row is still that claim's: a
        /// sender that stalled past its lease never closes a row another sender took since.
        /// False: nothing closed (the row was settled, or is another claim's).
        fn dead_letter(&self, id: i64, claim: Option<i64>, now: i64, reason: &str, cascade: bool) -> bool;
        /// Rolls back a session whose Start never went on the wire and is not being sent right
        /// now (login gave up on it): the Start and everything behind it are dead-lettered with
        /// `reason` and the session ends without a Stop. False (nothing changed) if the Start
        /// was transmitted, delivered, or is claimed — then the Stop must follow it as usual.
        fn rollback_unsent_start(&self, access_session_id: i64, now: i64, reason: &str) -> bool;
        /// Ends the sessions of sign-ins that never finished (the process sending their Start
        /// stopped: a kill -9, a lost node): active, started before `started_before`, their
        /// Start neither acknowledged nor given up nor claimed now. Each is stopped with
        /// NAS-Error at its start, as its sign-in would have stopped it: the Start (which may
        /// have arrived, whatever is recorded of its transmissions) goes again, then the Stop.
        /// The ids ended.
        fn end_abandoned_sign_ins(&self, started_before: i64, now: i64) -> Vec<i64>;
        /// Pending rows of `access_session_id`, oldest first (tests, CLI).
        fn session_outbox(&self, access_session_id: i64) -> Vec<OutboxEntry>;
        /// Dead-lettered rows with their session's Acct-Session-Id and organization, newest
        /// first (CLI `accounting dead-letters`).
        fn dead_letters(&self, limit: i64) -> Vec<(OutboxEntry, String, String)>;
        /// Undelivered rows with what an operator needs to know of each, oldest first (CLI
        /// `accounting backlog`).
        fn waiting_rows(&self, limit: i64) -> Vec<WaitingRow>;
        /// Makes every pending row due now (a server came back: no need to wait out the backoff).
        fn retry_pending_now(&self, now: i64) -> u64;
        /// Tells every other replica's delivery loop to look now (claims given up: their rows
        /// are due at once, not at the loop's next pass or their lease's end). Nothing on
        /// SQLite (one process).
        fn announce_accounting(&self) -> ();
        /// Makes pending row `id` due at `at` at the latest (the next check of a down server
        /// is handed to it). False when it is no longer pending (delivered, dead-lettered,
        /// gone). A row another sender has claimed is changed too, and its sender's outcome
        /// sets its time again.
        fn retry_row_at(&self, id: i64, at: i64) -> bool;
        /// When the next claimable row becomes due: only rows first in line for their session
        /// count (a row waiting behind an undelivered earlier row cannot be claimed, so its time
        /// must not wake anyone), and a claimed row counts from its lease end.
        fn next_outbox_attempt(&self) -> Option<i64>;
        /// Deletes accounting history and ended sessions older than `before` (unix ms), at
        /// most `limit` sessions, those that ended first, in one write: their delivered or
        /// dead rows, then the sessions. Returns the number of sessions removed (fewer than
        /// `limit`: none older is left). Pending rows and active sessions are never touched.
        /// Called in chunks ([`PRUNE_CHUNK`]): one write holds no other back for long.
        fn prune(&self, before: i64, limit: i64) -> u64;
        /// What the metrics show of the database at a scrape: active sessions per organization,
        /// undelivered accounting rows and the age of the oldest, dead letters kept.
        fn metrics_snapshot(&self, now: i64) -> crate::metrics::Snapshot;
        /// Undelivered rows (backlog).
        fn outbox_backlog(&self) -> i64;
        /// The answer given to a Dynamic Authorization request (`request`: its source address
        /// and Request Authenticator) by any process on this database, if recorded and not
        /// expired at `now`.
        fn dynauth_answer_given(&self, request: &str, now: i64) -> Option<Vec<u8>>;
        /// Records the answer given to a Dynamic Authorization request, kept until `until`;
        /// records expired at `now` are dropped. One recorded already and not expired stands,
        /// unless this one is an ACK ([`acknowledges`]): two replicas that acted on one request
        /// at once answered ACK (the one that ended the session) and NAK 503 (the one that
        /// found it ended), and the ACK is what was done. Relaxed on SQLite: a power failure
        /// may forget one.
        fn record_dynauth_answer(&self, request: &str, reply: Vec<u8>, until: i64, now: i64) -> ();
        /// Whether a session's packet of `status_type` has been acknowledged.
        fn outbox_delivered(&self, access_session_id: i64, status_type: u32) -> bool;
        /// The sessions of `organization_id` at `client_ip` with a Stop (to their own server, or
        /// a copy) not yet acknowledged and due after `since`, for a sign-in there: `due` — those
        /// due by `now`, on their way or about to be (a sign-in asks since
        /// [`STOPS_DUE_LATELY_MS`] ago: ended a moment ago, a Disconnect, an expiry, by any
        /// replica; one due longer ago waits for something, its server, an earlier row of its
        /// session; also one behind its session's Interim-Updates due by `now`, which go just
        /// before it), the sign-in sends its Start after them —, and `coming`, the others that
        /// may go while its Start does: held back after a failed attempt until `until` at the
        /// latest, or behind an earlier row of their session (the sign-in does not wait for
        /// them; whether one was acknowledged after its Start left is asked once the Start is,
        /// [`SessionStore::reassert_after_stops`]).
        fn stops_due_at(&self, organization_id: &str, client_ip: &str, now: i64, since: i64, until: i64) -> AddressStops;
    }
}

contract! {
    /// Organizations (the run-time truth, seeded from configuration), the global revision other
    /// processes poll, durable organization jobs, and the audit log.
    ///
    /// Every change goes through one transaction that writes the row, bumps its revision and
    /// the global one, records the audit entry and — on disable — queues the "stop every open
    /// session" job. Nothing here decides policy: callers ask the guard.
    trait OrganizationStore {
        /// Every stored organization, in configuration order (then by creation).
        fn organizations(&self) -> Vec<StoredOrganization>;
        /// The global organization revision: changes whenever any organization changes.
        fn organization_revision(&self) -> i64;
        /// Whether an organization is active, read from the database (the authority the
        /// guard's strict callers use); None if it does not exist.
        fn organization_active(&self, id: &str) -> Option<bool>;
        /// Creates or updates an organization from the configuration (`enabled` None: a new one
        /// is enabled, an existing one keeps its state). Disabling queues the stop job.
        fn seed_organization(&self, id: &str, name: &str, settings_json: &str, enabled: Option<bool>, position: i64, now: i64) -> SeedOutcome;
        /// Enables or disables an organization: one transaction flips the flag, bumps the
        /// revisions, audits, and on disable queues the job that stops its open sessions.
        /// `Ok(None)`: no such organization; otherwise whether it changed, and what an enable
        /// skipped of a disable's stop not yet done.
        fn set_organization_active(&self, id: &str, active: bool, actor: &str, now: i64) -> Option<ActiveChange>;
        /// An organization no longer listed in the configuration: it is no longer the
        /// configuration's (its position is cleared).
        fn forget_config_position(&self, id: &str) -> ();
        /// An organization the configuration no longer lists, at start-up: disabled (as
        /// [`OrganizationStore::set_organization_active`], by `config`) and no longer the
        /// configuration's, in one transaction — a crash between the two left it disabled and
        /// still "listed in the file": `org delete` refused it for that, and enabled again by an
        /// operator, the next start disabled it again (the guard review's L3 of session 81).
        fn retire_from_config(&self, id: &str, now: i64) -> Option<ActiveChange>;
        /// Queues the termination of an active session for the running portal (operator command
        /// in another process), audited — once: a termination still pending is not queued again.
        fn queue_session_termination(&self, session_id: i64, actor: &str, now: i64) -> Termination;
        /// When the earliest operator's stop still waiting for an active session was asked
        /// for (its termination, or its organization's disable); None if none waits or the
        /// session is not active.
        fn stop_asked_for(&self, session_id: i64) -> Option<i64>;
        /// Creates an organization (operator), audited. False if the id is taken.
        fn create_organization(&self, write: &OrganizationWrite<'_>, active: bool) -> bool;
        /// Replaces an organization's name and settings (operator), audited — with
        /// `require_active`, only while it is enabled (checked in the same statement, so a
        /// disable racing the change wins).
        fn update_organization(&self, write: &OrganizationWrite<'_>, require_active: bool) -> UpdateOutcome;
        /// Sessions of an organization that still need server `name`: its sessions open or
        /// with their own accounting not yet delivered, and open sessions whose Stop will be
        /// copied there (a server that was sent a packet of theirs). Copies already queued for
        /// it are counted apart ([`SessionStore::copies_waiting_for`]).
        fn sessions_needing_server(&self, organization_id: &str, name: &str) -> i64;
        /// Copies of an organization's accounting (Stops, and the Interim-Updates that repeat a
        /// session after a late Stop) waiting to be sent to server `name` (undelivered, not
        /// dead-lettered), made at `since` or later: removing the server would give them up,
        /// moving it would send them elsewhere. Older ones are given up at their next attempt
        /// anyway (`accounting::COPY_GIVE_UP_MS`).
        fn copies_waiting_for(&self, organization_id: &str, name: &str, since: i64) -> i64;
        /// Gives up, whatever their age, an organization's accounting waiting for servers an
        /// operator says are gone for good ([`GiveUp`]): dead-lettered with the reason,
        /// audited if any was. Not those a sender holds at `now`, nor the others of their
        /// session — counted in [`GivenUp::being_sent`]: they go, or are given up when asked
        /// again.
        fn give_up(&self, organization_id: &str, what: GiveUp<'_>, actor: &str, now: i64) -> GivenUp;
        /// Deletes an organization with its ended sessions and their accounting rows (the audit
        /// log keeps its history), audited. Refused while it is listed in the configuration, has
        /// open sessions or accounting not yet delivered: nothing may be lost.
        fn delete_organization(&self, id: &str, actor: &str, now: i64, detail: &serde_json::Value) -> DeleteOutcome;
        /// Deletes at most `limit` of organization `id`'s ended sessions whose accounting was
        /// all delivered, with their rows, the lowest ids first, in one write that takes no
        /// organization lock; how many (fewer than `limit`: none is left). Nothing while the
        /// organization may not be deleted ([`Self::delete_organization`] would refuse it):
        /// what an operator's delete does first, in chunks ([`PRUNE_CHUNK`]).
        fn forget_ended_sessions(&self, id: &str, limit: i64) -> u64;
        /// Organization jobs not done yet, oldest first (inspection: tests, operators).
        fn pending_organization_jobs(&self) -> Vec<OrganizationJob>;
        /// The jobs for this process to run, oldest first. On a shared database (PostgreSQL)
        /// each is claimed until `lease_until`, and a job another process holds a live claim on
        /// is left out, so one replica runs it (and audits its outcome); a replica that dies
        /// leaves it to another once the lease ends. SQLite (one portal process): every pending
        /// job.
        fn claim_organization_jobs(&self, now: i64, lease_until: i64) -> Vec<OrganizationJob>;
        /// Extends this process's claim on a job it is still running to `lease_until`; false
        /// when the claim is no longer this process's (its lease ran out and another replica
        /// took the job over) or the job is done. SQLite: always true.
        fn renew_organization_job(&self, job_id: i64, lease_until: i64) -> bool;
        /// Marks a job done with its outcome, audited (once, however many processes finish it;
        /// on a shared database only by the process holding its claim, or anyone if unclaimed).
        fn finish_organization_job(&self, job: &OrganizationJob, outcome: &str, now: i64) -> ();
        /// Ids of an organization's active sessions.
        fn active_session_ids_of(&self, organization_id: &str) -> Vec<i64>;
        /// Appends an audit entry on its own (guard denials and other events outside a change).
        fn audit(&self, entry: &Audit<'_>) -> ();
        /// Deletes audit entries and finished organization jobs older than `before`
        /// (retention), at most `limit` of each, the oldest, in one write; how many audit
        /// entries (fewer than `limit`: none older is left).
        fn prune_audit(&self, before: i64, limit: i64) -> u64;
        /// The newest audit entries `query` asks for, oldest first.
        fn audit_entries(&self, query: &AuditQuery) -> Vec<AuditEntry>;
    }
}

/// Runs `chunk` (one write removing at most [`PRUNE_CHUNK`] rows) until it removes fewer than
/// that, or `stop`; how many it removed in all. What a chunk removed stays removed when a
/// later one fails. Pruning, and an organization's delete, go so.
pub async fn in_chunks<F, Fut>(
    stop: &tokio_util::sync::CancellationToken,
    mut chunk: F,
) -> Result<u64, StorageError>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StorageError>>,
{
    let limit = PRUNE_CHUNK;
    let mut removed = 0;
    while !stop.is_cancelled() {
        let n = chunk(limit).await?;
        removed += n;
        if n < limit as u64 {
            break;
        }
        // Other writes go between two chunks.
        tokio::task::yield_now().await;
    }
    Ok(removed)
}

impl Storage {
    /// Stops every active session whose deadline is at or before `now`, in writes of at most
    /// [`STOP_CHUNK`] ([`SessionStore::stop_due_chunk`]): a large sweep — a VM resumed after
    /// hours, a start after an outage — holds no other write back for long (the storage
    /// review's F4 of session 82: on SQLite it was one write). A chunk that fails after others were committed ends the
    /// sweep with those (said, so their Stops are sent and their pages told now); the rest,
    /// still due, are the next pass's.
    pub async fn stop_due_sessions(&self, now: i64) -> Result<Vec<Stopped>, StorageError> {
        let mut all = Vec::new();
        loop {
            let stopped = match self.stop_due_chunk(now, STOP_CHUNK).await {
                Ok(stopped) => stopped,
                Err(e) if !all.is_empty() => {
                    tracing::warn!(error = %e, stopped = all.len(),
                        "stopping due sessions: a later batch failed; the rest are stopped at the next pass");
                    return Ok(all);
                }
                Err(e) => return Err(e),
            };
            let done = (stopped.len() as i64) < STOP_CHUNK;
            all.extend(stopped);
            if done {
                return Ok(all);
            }
        }
    }

    /// The newest `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: i64) -> Result<Vec<AuditEntry>, StorageError> {
        self.audit_entries(&AuditQuery {
            limit,
            ..AuditQuery::default()
        })
        .await
    }
}

impl Storage {
    /// Opens (creating if needed) a SQLite database file and runs its migrations.
    pub async fn open(path: &Path) -> Result<Storage, StorageError> {
        Ok(Storage {
            backend: Backend::Sqlite(SqliteStore::open(path).await?),
        })
    }

    /// Connects to a PostgreSQL database (`postgres://…`) and runs its migrations.
    pub async fn open_postgres(url: &str) -> Result<Storage, StorageError> {
        Ok(Storage {
            backend: Backend::Postgres(PgStore::open(url).await?),
        })
    }

    /// Opens the database `[database]` names as it is, for a check (`check-config`): no
    /// migration is run and nothing is written (SQLite: read-only connections; the file must
    /// exist). Unfit when it has migrations to run or ones this release cannot use.
    pub async fn connect_as_is(
        settings: &crate::config::DatabaseSettings,
    ) -> Result<AsIs, StorageError> {
        Ok(match &settings.url {
            Some(url) => {
                let (store, state) = PgStore::open_as_is(url.expose()).await?;
                AsIs::of(Backend::Postgres(store), state)
            }
            None => {
                let (store, state) = SqliteStore::open_as_is(&settings.path).await?;
                AsIs::of(Backend::Sqlite(store), state)
            }
        })
    }

    /// Why neither `serve` nor an operator command may use the SQLite database `[database]`
    /// names: a copy saved beside it when its file was removed while a portal ran ([`engine`]'s
    /// file watch) holds sessions whose Stops the database at the path would not have; or the
    /// file has other names (hard links): SQLite keeps a database's -wal and -shm files beside
    /// the name it was opened by, so each name would have its own write-ahead log for the one
    /// file (writes through one name lost or the file damaged by the other), and a second
    /// portal could serve it through another name — the lock beside the file is by name too.
    /// None: nothing in the way.
    pub fn file_in_the_way(settings: &crate::config::DatabaseSettings) -> Option<String> {
        if settings.url.is_some() {
            return None;
        }
        let path = &settings.path;
        {
            use std::os::unix::fs::MetadataExt as _;
            // Through a symbolic link, the file it leads to (as SQLite opens it).
            if let Ok(names) = std::fs::metadata(path).map(|m| m.nlink()) {
                if names > 1 {
                    return Some(format!(
                        "the database file {path} has {names} names (hard links): SQLite keeps its -wal and -shm files beside the name it is opened by, so two names would write two journals for one file (a second portal could serve it through the other name too); keep this one and remove the others (`find \"$(stat -c %m {path})\" -xdev -samefile {path}` lists them; one that is a backup to keep: replace it with a copy, `sqlite3 {path} \".backup COPY\"`, first)",
                        path = path.display()
                    ));
                }
            }
        }
        // Beside the path, or beside the file a symbolic link there leads to (where the
        // running portal saved it).
        let target = std::fs::read_link(path).ok().map(|to| match path.parent() {
            Some(dir) if to.is_relative() => dir.join(to),
            _ => to,
        });
        let copy = engine::saved_copies_of(path)
            .into_iter()
            .chain(target.iter().flat_map(|t| engine::saved_copies_of(t)))
            .next()?;
        Some(format!(
            "{copy} holds what the database {path} held when its file was removed while the portal ran: to go on with it, remove {path} and its -wal and -shm files if there, and move {copy} to {path}; to start without it (its open sessions' Stops are then never sent), move it elsewhere",
            copy = copy.display(),
            path = path.display(),
        ))
    }

    /// Opens the database `[database]` names: PostgreSQL when `url` is set, else the SQLite
    /// file at `path`. `serving`: for `serve` (migrations run; on PostgreSQL, background
    /// work's connections are kept open), not an operator command — which never changes a
    /// database's schema (other replicas, or the portal running on this host, maybe of the
    /// release before, use it) and refuses one without the portal's tables or not at this
    /// release's migrations ([`fit_for_operator`]).
    pub async fn connect(
        settings: &crate::config::DatabaseSettings,
        serving: bool,
    ) -> Result<Storage, StorageError> {
        match &settings.url {
            Some(url) if serving => Ok(Storage {
                backend: Backend::Postgres(PgStore::open_for(url.expose(), serving).await?),
            }),
            Some(url) => Ok(Storage {
                backend: Backend::Postgres(PgStore::open_for_operator(url.expose()).await?),
            }),
            None if serving => Storage::open(&settings.path).await,
            None => Ok(Storage {
                backend: Backend::Sqlite(SqliteStore::open_for_operator(&settings.path).await?),
            }),
        }
    }

    /// Opens what `serve`'s background work keeps for itself: on PostgreSQL, its own
    /// connections ([`background`]); nothing on SQLite. Err: not all of them could be opened.
    pub async fn open_background(&self) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(store) => store.open_background().await,
        }
    }

    /// Whether a step of the clock moves the stored times ([`SessionStore::shift_times`]):
    /// SQLite's, this process's own; PostgreSQL's are the replicas' shared ones.
    pub fn moves_times_with_the_clock(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// What SQLite's `PRAGMA integrity_check` finds wrong with the database file, if anything
    /// (a file copied over a running portal's: an index that no longer fits its table, which
    /// `quick_check` does not look at; `check-config`, before `serve` would meet it: black-box
    /// tester W's D2); None on PostgreSQL. Reads every page and index: for a check, not a
    /// request.
    pub async fn damage(&self) -> Result<Option<String>, StorageError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                let checked = store
                    .engine
                    .read_long(|c| {
                        let said: String =
                            c.query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))?;
                        Ok(said)
                    })
                    .await;
                match checked {
                    Ok(said) if said == "ok" => Ok(None),
                    Ok(said) => Ok(Some(said)),
                    Err(StorageError::Sqlite(e)) if engine::sqlite_damage(&e) => {
                        Ok(Some(e.to_string()))
                    }
                    Err(e) => Err(e),
                }
            }
            Backend::Postgres(_) => Ok(None),
        }
    }

    /// Which backend: `sqlite` or `postgres` (logs, `/readyz` text).
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Marks the end of the portal's serving on the database (SQLite: once the writes queued are
    /// made, its files are no longer watched — the engine may live on in a process that goes on
    /// while the files become another's; PostgreSQL: nothing).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(store) => store.engine.close().await,
            Backend::Postgres(_) => {}
        }
    }

    /// Why nothing may be written until a restart: the SQLite database's files were removed or
    /// replaced under the running portal (what it held is saved; the log says where). None on
    /// PostgreSQL, and while the files are the portal's.
    pub fn files_lost(&self) -> Option<StorageError> {
        match &self.backend {
            Backend::Sqlite(store) => store.engine.files_lost(),
            Backend::Postgres(_) => None,
        }
    }

    /// SQLite: the highest access session id it ever gave (AUTOINCREMENT's own record: ended
    /// sessions removed by retention keep it), 0 for none. None on PostgreSQL.
    pub async fn newest_session_id(&self) -> Result<Option<i64>, StorageError> {
        match &self.backend {
            Backend::Sqlite(store) => store
                .engine
                .read_long(|c| {
                    Ok(c.query_row(
                        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'access_sessions'), 0)",
                        [],
                        |r| r.get(0),
                    )?)
                })
                .await
                .map(Some),
            Backend::Postgres(_) => Ok(None),
        }
    }

    /// SQLite: how far its stored times have been moved with steps of the wall clock in all
    /// (ms), written with each move ([`SessionStore::shift_times`]). 0 on PostgreSQL (its
    /// times are never moved).
    pub async fn clock_moved_ms(&self) -> Result<i64, StorageError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store
                    .engine
                    .read_long(|c| {
                        Ok(c.query_row(
                            "SELECT COALESCE((SELECT moved_ms FROM clock_moves WHERE id = 1), 0)",
                            [],
                            |r| r.get(0),
                        )?)
                    })
                    .await
            }
            Backend::Postgres(_) => Ok(0),
        }
    }

    /// Runs `read` — a read of this database — on a blocking thread of `runtime` (the runtime
    /// its connections belong to), one at a time per `turns`, bounded by `limit` (the wait for
    /// the turn included): a read held by a hung disk holds that thread in the kernel, and its
    /// turn until it comes back, not the caller's thread — a probe or a scrape answers "cannot
    /// be read" within `limit` instead of waiting with it on one of the portal's worker threads
    /// (black-box tester T's D3). Two callers at once on a database that answers each get
    /// their answer, one after the other.
    pub async fn read_apart<T, F>(
        &self,
        runtime: &tokio::runtime::Handle,
        turns: &std::sync::Arc<tokio::sync::Mutex<()>>,
        limit: std::time::Duration,
        read: impl FnOnce(Storage) -> F + Send + 'static,
    ) -> Result<T, StorageError>
    where
        F: std::future::Future<Output = Result<T, StorageError>>,
        T: Send + 'static,
    {
        let (storage, turns, runtime) = (self.clone(), turns.clone(), runtime.clone());
        let reading = async move {
            let turn = turns.lock_owned().await;
            runtime
                .spawn_blocking(move || {
                    // The turn is held until the read comes back, whoever waits for it.
                    let _turn = turn;
                    tokio::runtime::Handle::current().block_on(read(storage))
                })
                .await
        };
        match tokio::time::timeout(limit, reading).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => Err(StorageError::Engine(format!("the read failed: {e}"))),
            Err(_) => Err(StorageError::Unreachable(format!(
                "no answer within {limit:?} (a read before it, or this one, waits on the database)"
            ))),
        }
    }

    /// Whether the last `/readyz` probe found the database taking no writes (PostgreSQL: a
    /// standby, read-only); never on SQLite (its refused writes say it, [`Self::writable`]).
    pub fn found_read_only(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres(store) => store.read_only_seen(),
        }
    }

    /// Whether the database's writes are stalled now (SQLite: a hung disk, as `/readyz` says);
    /// never on PostgreSQL.
    pub fn stalled(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(store) => store.engine.stalled(),
            Backend::Postgres(_) => false,
        }
    }

    /// Resolves once the database's writes are stalled (SQLite: a hung disk, as `/readyz`
    /// says); never on PostgreSQL (a server away is found by its own checks: calls then fail
    /// at once).
    pub async fn until_stalled(&self) {
        match &self.backend {
            Backend::Sqlite(store) => store.engine.until_stalled().await,
            Backend::Postgres(_) => std::future::pending().await,
        }
    }

    /// Whether writes can be made (SQLite: the engine's writer thread runs; PostgreSQL: the
    /// pool is open); `/readyz` asks.
    pub fn writable(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(store) => store.writable(),
            Backend::Postgres(store) => store.writable(),
        }
    }

    /// How long background work has found no database connection (PostgreSQL, its slots all
    /// taken); None while it has one, and on SQLite.
    pub fn background_starved(&self) -> Option<std::time::Duration> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => store.background_starved().map(|since| since.elapsed()),
        }
    }

    /// The longest a background loop (expiry, accounting delivery) may sleep before it reads
    /// the shared deadlines again. SQLite: this process makes every deadline and wakes its own
    /// loops, so they only guard against a missed wake-up. PostgreSQL: other replicas add
    /// deadlines and outbox rows nobody here is told of (and leave them behind when they die),
    /// so a replica looks every second.
    pub fn longest_sleep(&self) -> std::time::Duration {
        match &self.backend {
            Backend::Sqlite(_) => std::time::Duration::from_secs(30),
            Backend::Postgres(_) => std::time::Duration::from_secs(1),
        }
    }

    /// Listens for changes other processes announce (PostgreSQL); None where nobody else
    /// writes without telling this process (SQLite: operator commands leave jobs the worker
    /// polls for).
    pub async fn listen(&self) -> Result<Option<postgres::NoticeListener>, StorageError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(store) => store.listen().await.map(Some),
        }
    }

    /// Tells the other replicas of an exchange with a RADIUS server ([`Notice::Breaker`]).
    /// Nothing on SQLite (one process).
    pub async fn announce_breaker(&self, notice: Notice) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(store) => store.announce(&[notice]).await,
        }
    }

    /// One stored organization.
    pub async fn organization(&self, id: &str) -> Result<Option<StoredOrganization>, StorageError> {
        Ok(self.organizations().await?.into_iter().find(|o| o.id == id))
    }
}

/// What the migrations sqlx recorded in a database (`_sqlx_migrations`: version, success,
/// checksum) say of it for this release: None when it is as this release leaves it, else why
/// it is not (to run: `Ok`; what `serve` would refuse: `Err`).
fn migration_state(
    migrator: &sqlx::migrate::Migrator,
    applied: &[(i64, bool, Vec<u8>)],
) -> Option<Result<String, String>> {
    let ours = || {
        migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
    };
    for (version, success, checksum) in applied {
        let Some(known) = ours().find(|m| m.version == *version) else {
            return Some(Err(format!(
                "it was migrated by a newer release (migration {version} is unknown to this one)"
            )));
        };
        if !success {
            return Some(Err(format!(
                "migration {version} failed there and was left unfinished"
            )));
        }
        if known.checksum.as_ref() != checksum.as_slice() {
            return Some(Err(format!(
                "migration {version} there differs from this release's"
            )));
        }
    }
    let pending = ours()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
        .count();
    (pending > 0).then(|| {
        Ok(format!(
            "{pending} migration(s) to run (the portal runs them at its start)"
        ))
    })
}

/// Whether an operator command may use a database whose recorded migrations are `applied`:
/// operator commands never change a schema (replicas, or the portal running on this host,
/// maybe of the release before, use it), so one without the portal's tables or not at this
/// release's migrations is refused.
fn fit_for_operator(
    migrator: &sqlx::migrate::Migrator,
    applied: &[(i64, bool, Vec<u8>)],
) -> Result<(), StorageError> {
    if applied.is_empty() {
        return Err(StorageError::NoPortalTables);
    }
    match migration_state(migrator, applied) {
        None => Ok(()),
        Some(Ok(pending)) => Err(StorageError::NotUsable(format!(
            "the database is older than this release ({pending}); operator commands never change its schema: start this release's portal first, or use the release the database is at"
        ))),
        Some(Err(reason)) => Err(StorageError::NotUsable(format!(
            "this release cannot use the database: {reason}"
        ))),
    }
}

/// A database opened as it is ([`Storage::connect_as_is`]).
pub enum AsIs {
    /// As this release leaves it: checks against it read what `serve` would.
    Ready(Storage),
    /// Not yet, or not the way this release can use (the reason; `refused`: `serve` would
    /// refuse it too).
    Unfit { reason: String, refused: bool },
}

impl AsIs {
    fn of(backend: Backend, state: Option<Result<String, String>>) -> AsIs {
        match state {
            None => AsIs::Ready(Storage { backend }),
            Some(Ok(reason)) => AsIs::Unfit {
                reason,
                refused: false,
            },
            Some(Err(reason)) => AsIs::Unfit {
                reason,
                refused: true,
            },
        }
    }
}

/// Whether `error` says sqlx's migrations table is not there: nothing was ever migrated.
fn no_migrations_table(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("42P01") || d.message().contains("no such table"))
}

/// The rows sqlx keeps of applied migrations.
const APPLIED_MIGRATIONS: &str =
    "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version";

/// How far past its end (`oldest_end`, unix ms) an overdue session is at `now` (zero: none).
fn overdue_by(now: i64, oldest_end: Option<i64>) -> std::time::Duration {
    std::time::Duration::from_millis(
        oldest_end.map_or(0, |end| now.saturating_sub(end).max(0) as u64),
    )
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database failed (I/O, lock timeout, constraint): the operation did not happen; retry
    /// later or report an internal error.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The database failed (I/O, lock timeout, constraint) in the SQLite engine: the operation
    /// did not happen.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The engine could not run the operation (its writer stopped, a batch was not committed):
    /// the operation did not happen.
    #[error("database error: {0}")]
    Engine(String),
    /// Schema migration failed at start-up: do not serve.
    #[error("database migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back (corrupt row): report an internal error.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// PostgreSQL is known not to answer (a check connected just now, and failed with this):
    /// the operation was not tried.
    #[error("the database cannot be reached: {0}")]
    Unreachable(String),
    /// The organization is disabled or unknown (checked inside the transaction that would have
    /// created the session): nothing was written.
    #[error("organization disabled")]
    OrganizationDisabled,
    /// The organization changed since the session was worked out
    /// ([`NewAccessSession::organization_revision`]): nothing was written; work it out again.
    #[error("the organization's settings changed while the sign-in was under way")]
    OrganizationChanged,
    /// The database is not one an operator command can use as it is (no portal tables yet,
    /// migrations to run, or a newer release's): why. Nothing was changed.
    #[error("{0}")]
    NotUsable(String),
    /// The database has none of the portal's tables: no portal has started there (or it is
    /// not the portal's: a mistyped PostgreSQL database name, another SQLite file). Nothing
    /// was changed.
    #[error("the database has no portal tables (check [database]: a portal's `serve` creates them when it first starts there)")]
    NoPortalTables,
}

/// Whether a storage error anywhere in `error`'s chain says the database is away
/// ([`StorageError::is_unavailable`]).
pub fn away_in(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(storage) = e.downcast_ref::<StorageError>() {
            return storage.is_unavailable();
        }
        cause = e.source();
    }
    false
}

impl StorageError {
    /// The SQLite file is damaged or not a database (SQLITE_CORRUPT, SQLITE_NOTADB): `serve`
    /// refuses it, and only a restore from a backup mends it.
    pub fn is_damaged(&self) -> bool {
        let damaged = |code: i32| matches!(code & 0xff, 11 | 26);
        match self {
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => damaged(e.extended_code),
            StorageError::Database(sqlx::Error::Database(e)) => e
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(damaged),
            StorageError::Migration(sqlx::migrate::MigrateError::Execute(
                sqlx::Error::Database(e),
            )) => e
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(damaged),
            _ => false,
        }
    }

    /// The database refuses to store anything now — PostgreSQL: a standby or a read-only
    /// transaction (25006), a full disk (53100) —, not a rule of the write's own.
    pub fn refuses_writes(&self) -> bool {
        matches!(self, StorageError::Database(sqlx::Error::Database(d))
            if d.code().is_some_and(|code| ["25006", "53100"].contains(&code.as_ref())))
    }

    /// The database cannot be reached or take writes right now — a connection lost or not to
    /// be had in time, a server shutting down, a full disk, a read-only file, a writer queue
    /// full —, not a fault of the data or the code: the same request may work in a minute.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Database(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
                // PostgreSQL: connection exceptions (class 08), an operator or crash shutting
                // the server down or dropping the database (57P01-57P04), the server out of
                // resources (53000, 53100 disk full, 53200 out of memory, 53300 too many
                // connections — not 53400, a configured limit a statement exceeds), the login
                // refused (class 28: a password changed), the database gone or not taking
                // connections (3D000, 55000), a standby that takes no writes (25006: a
                // failover under way).
                sqlx::Error::Database(d) => d.code().is_some_and(|code| {
                    ["08", "57P0", "28"]
                        .iter()
                        .any(|class| code.starts_with(class))
                        || [
                            "53000", "53100", "53200", "53300", "3D000", "55000", "25006",
                        ]
                        .contains(&code.as_ref())
                }),
                _ => false,
            },
            StorageError::Sqlite(e) => engine::sqlite_refuses(e),
            StorageError::Unreachable(_) => true,
            // A batch not committed, the writer's queue full: the database, not the request.
            StorageError::Engine(what) => {
                what.starts_with("database write failed") || what.starts_with("database overloaded")
            }
            _ => false,
        }
    }
}

/// A stored access session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessSessionRecord {
    /// Row id (also kept in the web session).
    pub id: i64,
    /// Acct-Session-Id.
    pub acct_session_id: String,
    /// Organization id.
    pub organization_id: String,
    /// User-Name.
    pub username: String,
    /// Client IP as text.
    pub client_ip: String,
    /// Index of the authenticating server in the organization's list.
    pub server_index: i64,
    /// Its name (for logs; the index may change if configuration changes).
    pub server_name: String,
    /// Class values to echo.
    pub classes: Vec<Vec<u8>>,
    /// Reply-Message of the Access-Accept, for the session page.
    pub reply_message: Option<String>,
    /// Login time.
    pub started_at: i64,
    /// Login or last refresh.
    pub refreshed_at: i64,
    /// Window length.
    pub window_ms: i64,
    /// Absolute limit, if any.
    pub limit_at: Option<i64>,
    /// Current deadline.
    pub expires_at: i64,
    /// Acct-Interim-Interval from the Accept.
    pub interim_interval: Option<i64>,
    /// Still active?
    pub active: bool,
    /// Unix ms it ended, once stopped.
    pub stopped_at: Option<i64>,
    /// Acct-Terminate-Cause once stopped.
    pub terminate_cause: Option<i64>,
    /// The NAS identity its accounting presents, as at its login (NAS-IP-Address or
    /// NAS-IPv6-Address, NAS-Identifier); None for a session stored before the portal recorded
    /// it, which presents its organization's current one.
    pub nas: Option<crate::radius::NasIdentity>,
    /// The session a sign-in of the same browser replaced it with, if one did
    /// ([`NewAccessSession::replaces`]) for the same user within [`FOLLOWED_REPLACEMENT_MS`]
    /// of this one's start: where a browser still linked to this one finds its session.
    pub replaced_by: Option<i64>,
    /// What its Access-Accept said of its window and limit; None for a session stored before
    /// the portal kept it (it keeps the window and limit it was given).
    pub accept_timeouts: Option<AcceptTimeouts>,
}

/// An Access-Accept's Idle-Timeout and Session-Timeout in seconds, 0 where it had none: with
/// the organization's settings *now*, what a refresh gives the session (a `default_window` or
/// `max_lifetime` changed since the sign-in applies from its next refresh, where the Accept
/// left them to the organization).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptTimeouts {
    /// Idle-Timeout (0: none).
    pub idle: u32,
    /// Session-Timeout (0: none).
    pub session: u32,
}

impl AcceptTimeouts {
    /// As stored (two nullable columns, both set or neither); values no Accept can carry read
    /// as unknown (the session keeps its terms), never as "none".
    pub(crate) fn stored(idle: Option<i64>, session: Option<i64>) -> Option<AcceptTimeouts> {
        Some(AcceptTimeouts {
            idle: u32::try_from(idle?).ok()?,
            session: u32::try_from(session?).ok()?,
        })
    }

    /// The two columns' values.
    pub(crate) fn columns(of: Option<AcceptTimeouts>) -> (Option<i64>, Option<i64>) {
        of.map_or((None, None), |t| {
            (Some(i64::from(t.idle)), Some(i64::from(t.session)))
        })
    }
}

/// What a refresh gives a session ([`SessionStore::refresh_session`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshTerms {
    /// Its window from now on.
    pub window_ms: i64,
    /// Its limit from now on.
    pub limit_at: Option<i64>,
    /// Its new deadline.
    pub expires_at: i64,
    /// The refresh (or sign-in) this one follows, as the caller read it (`refreshed_at`): a
    /// refresh made meanwhile (two sent together) wins, and this one changes nothing (the
    /// session is answered as it stands, no Interim-Update). None: not checked.
    pub follows: Option<i64>,
}

impl AccessSessionRecord {
    /// The NAS identity of the session's accounting and Dynamic Authorization: its own, else
    /// `current` (its organization's now).
    pub fn nas_or<'a>(
        &'a self,
        current: &'a crate::radius::NasIdentity,
    ) -> &'a crate::radius::NasIdentity {
        self.nas.as_ref().unwrap_or(current)
    }
}

/// What an operator gives up ([`Storage::give_up`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp<'a> {
    /// The copies [`OrganizationStore::copies_waiting_for`] counts for server `name`.
    CopiesFor(&'a str),
    /// Everything still waiting of the organization's ended sessions — of the one given, or
    /// of all — whichever server it waits for (their Stops, the Starts and Interim-Updates
    /// before them, copies): every accounting server of the organization is gone for good.
    /// An open session's rows are not touched (its Stop is queued when it ends), nor a
    /// session's none of whose rows was tried and failed yet; and nothing while a server
    /// acknowledged the organization's accounting within the last hour
    /// ([`GivenUp::acknowledged_at`]), unless `force`.
    EndedSessions {
        /// Only this session's.
        session: Option<i64>,
        /// Even though a server acknowledged the organization's accounting lately.
        force: bool,
    },
}

/// What giving up accounting did ([`Storage::give_up`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GivenUp {
    /// Rows dead-lettered.
    pub given_up: i64,
    /// Rows a sender held (being sent), with the others of their session: left to it.
    pub being_sent: i64,
    /// Rows of sessions none of whose rows was tried and failed yet ([`GiveUp::EndedSessions`]):
    /// left to be tried.
    pub not_tried: i64,
    /// When a server last acknowledged the organization's accounting, if within the last
    /// hour and not forced: nothing was given up.
    pub acknowledged_at: Option<i64>,
}

/// What asking for a session's termination did ([`Storage::queue_session_termination`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// Queued (and audited): the running portal stops the session.
    Queued,
    /// Queued (and audited), but its organization's disable, asked for earlier and not made
    /// yet, stops it first (Admin-Reset dated then): this one stops it only if an enable skips
    /// that stop.
    QueuedBehindDisable {
        /// When the disable was asked for, unix ms.
        disable_asked_at: i64,
    },
    /// A termination of it asked for earlier is not done yet: nothing more was queued (nor
    /// audited).
    AlreadyQueued {
        /// When the earliest operator's stop waiting for it was asked for (that termination, or
        /// its organization's disable before it): its Stop is dated then, unix ms.
        asked_at: i64,
    },
    /// The session is not active.
    NotActive,
}

/// Seconds from `earlier` to `later` (unix ms) as Event-Timestamps count them: the difference
/// of the two instants' whole seconds (each rounded down), at least 0. A Stop's or
/// Interim-Update's Acct-Session-Time is this from the session's start, so the Start's
/// Event-Timestamp plus it is the packet's, as a RADIUS server reconciling them expects. (The
/// length rounded down could be one less: a session from 10.9 s to 12.1 s lasted 1.2 s but
/// spans Event-Timestamps 10 and 12.) Acct-Delay-Time is not counted so (see the accounting).
/// The PostgreSQL queries that queue Stops and Interim-Updates in SQL compute the same
/// (`event_at / 1000 - started_at / 1000`, at least 0).
pub fn whole_seconds_between(earlier: i64, later: i64) -> i64 {
    (later.div_euclid(1000) - earlier.div_euclid(1000)).max(0)
}

/// The NAS identity a session row stored (both columns, an address that parses), if any.
pub(crate) fn stored_nas(
    ip: Option<String>,
    identifier: Option<String>,
) -> Option<crate::radius::NasIdentity> {
    Some(crate::radius::NasIdentity {
        ip: ip?.parse().ok()?,
        identifier: identifier?,
    })
}

/// What a new access session starts with.
#[derive(Clone, Debug)]
pub struct NewAccessSession {
    /// Acct-Session-Id (unique).
    pub acct_session_id: String,
    /// Organization id.
    pub organization_id: String,
    /// User-Name.
    pub username: String,
    /// Client IP as text.
    pub client_ip: String,
    /// Authenticating server's index.
    pub server_index: i64,
    /// Authenticating server's name.
    pub server_name: String,
    /// Class values from the Accept.
    pub classes: Vec<Vec<u8>>,
    /// Reply-Message of the Access-Accept, for the session page.
    pub reply_message: Option<String>,
    /// Login time.
    pub started_at: i64,
    /// Window length.
    pub window_ms: i64,
    /// Absolute limit.
    pub limit_at: Option<i64>,
    /// First deadline.
    pub expires_at: i64,
    /// Seconds between periodic Interim-Updates (Acct-Interim-Interval, at least the
    /// organization's minimum), or None.
    pub interim_interval: Option<i64>,
    /// The caller sends the Start itself: it is queued already claimed until then (no second
    /// write to claim it), and the session is the caller's sign-in's until then too (its lease,
    /// [`SessionStore::renew_sign_in`]; see [`SessionStore::end_abandoned_sign_in`]). None: the
    /// delivery loop sends it.
    pub start_claimed_until: Option<i64>,
    /// The name the user typed, when the Access-Accept named the user otherwise (`username`
    /// is then the server's name): for the audit entry only.
    pub typed_username: Option<String>,
    /// The NAS identity the login presented: the session's accounting keeps presenting it
    /// (None: its organization's current one, whatever it is then).
    pub nas: Option<crate::radius::NasIdentity>,
    /// The session the signing-in browser holds in this organization, wherever its address:
    /// stopped with the client's own earlier session (Port-Preempted), so a browser that
    /// moved to another address leaves no session behind on the one it left. One that a sign-in
    /// of the same browser replaced already is followed to the session that replaced it (a
    /// browser's cookie from one of two sign-ins sent together names the one replaced), and
    /// the session stopped records the new one as its `replaced_by` (the same user's, within
    /// [`FOLLOWED_REPLACEMENT_MS`]).
    pub replaces: Option<i64>,
    /// What the Access-Accept said of the window and limit (None: the session keeps the window
    /// and limit it starts with, whatever its organization's settings become).
    pub accept_timeouts: Option<AcceptTimeouts>,
    /// The organization's revision the session was worked out with (its server, NAS, terms):
    /// another stored since refuses the write ([`StorageError::OrganizationChanged`]) — a
    /// change of where the server's accounting goes, committed while the sign-in was under
    /// way, must not leave its Start at one address and its Stop at another. None: not checked.
    pub organization_revision: Option<i64>,
}

impl NewAccessSession {
    /// The record [`SessionStore::open_session`] stored for it under `id` (as read back right
    /// after opening: active, never refreshed).
    pub fn opened(self, id: i64) -> AccessSessionRecord {
        AccessSessionRecord {
            id,
            acct_session_id: self.acct_session_id,
            organization_id: self.organization_id,
            username: self.username,
            client_ip: self.client_ip,
            server_index: self.server_index,
            server_name: self.server_name,
            classes: self.classes,
            reply_message: self.reply_message,
            started_at: self.started_at,
            refreshed_at: self.started_at,
            window_ms: self.window_ms,
            limit_at: self.limit_at,
            expires_at: self.expires_at,
            interim_interval: self.interim_interval,
            active: true,
            stopped_at: None,
            terminate_cause: None,
            nas: self.nas,
            replaced_by: None,
            accept_timeouts: self.accept_timeouts,
        }
    }
}

/// What opening a session did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedSession {
    /// The new session's row id.
    pub id: i64,
    /// The client's previous session, stopped (Port-Preempted) with its Stop queued.
    pub preempted: Vec<Stopped>,
    /// The Start, claimed for the caller when it asked ([`NewAccessSession::start_claimed_until`]).
    pub claimed_start: Option<OutboxRow>,
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

/// What [`Storage::stop_session_claiming`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// The session was not active: nothing changed.
    NotActive,
    /// Stopped, with this Acct-Terminate-Cause ([`Storage::stop_session_claiming`]); its Stop
    /// waits behind earlier rows for the delivery loop.
    Queued(u32),
    /// Stopped, with this Acct-Terminate-Cause; its Stop is claimed for the caller, with the
    /// session as the stop left it (read in the same transaction, so the delivery needs no
    /// read of its own).
    Claimed(u32, OutboxRow, Box<AccessSessionRecord>),
}

/// A change announced by another process on the same database (PostgreSQL's NOTIFY, after its
/// commit). It carries no state, the receiver re-reads what it is about — except a breaker's
/// news, which is about no stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Access session `id` changed (refreshed, stopped): its open pages re-read it.
    Session(i64),
    /// An organization changed or an organization job was queued: caches and workers look now.
    Organizations,
    /// Accounting became due at once (a server came back): delivery loops look now.
    Accounting,
    /// An exchange with the RADIUS server at `addr`, signed with the secret of that
    /// fingerprint, went unanswered (or, `answered`, was answered after such failures): every
    /// replica's breaker counts it ([`crate::radius::health::PeerNews`]).
    Breaker {
        /// The server's address.
        addr: std::net::SocketAddr,
        /// [`crate::radius::health::secret_fingerprint`] of its secret.
        secret: u64,
        /// Answered after failures, or unanswered.
        answered: bool,
    },
}

/// An outbox row claimed for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Session the packet is about.
    pub access_session_id: i64,
    /// Acct-Status-Type.
    pub status_type: i64,
    /// Event time (unix ms).
    pub event_at: i64,
    /// Acct-Session-Time.
    pub session_time_secs: Option<i64>,
    /// Acct-Terminate-Cause.
    pub terminate_cause: Option<i64>,
    /// Delivery attempts so far, including this one.
    pub attempts: i64,
    /// Packets put on the wire for it so far (0 = the server never saw it).
    pub transmissions: i64,
    /// Until when (unix ms) the claim that returned the row holds it.
    pub lease_until: i64,
    /// None: for the session's accounting server (with failover). Some: a copy for this
    /// server alone — a Stop for a server that may hold the session open although another
    /// server acknowledged the session's Stop.
    pub copy_to: Option<String>,
    /// When the row was queued (unix ms): a copy, when the session's Stop was acknowledged.
    pub created_at: i64,
}

/// The server a packet of `row` went to that is remembered as one that may hold the session
/// open: a Start or Interim-Update may open the session where it goes; a Stop does not.
pub(crate) fn remembered_for<'a>(row: &OutboxRow, sent_to: Option<&'a str>) -> Option<&'a str> {
    sent_to.filter(|_| row.status_type != i64::from(crate::radius::status_type::STOP))
}

impl Acknowledged<'_> {
    /// The server remembered as one that may hold the session open: another server than the
    /// session's that acknowledged a Start or Interim-Update (a failover).
    pub(crate) fn remembered(&self) -> Option<&str> {
        (self.by != self.own && !self.stop).then_some(self.by)
    }
}

/// The unacknowledged Stops of an address's earlier sessions ([`SessionStore::stops_due_at`]),
/// by session, oldest first (at most 32 in all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressStops {
    /// Came due lately: on their way, or about to be.
    pub due: Vec<i64>,
    /// Held back, or waiting behind an earlier row of their session.
    pub coming: Vec<i64>,
}

/// What recording an acknowledged row queued ([`SessionStore::mark_delivered`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Copies of the session's Stop, one per other server that may hold the session open.
    pub copies: u64,
    /// The newer session at the Stop's address whose Interim-Update was queued (the Stop may
    /// have reached the server after its Start: recorded after that Start's acknowledgement).
    pub reasserted: Option<i64>,
    /// The Stop was acknowledged after that newer session's Start was (by the recorders'
    /// clocks): it surely came after it. Else it was acknowledged about when the Start went
    /// (its recording waited, for a busy database, behind the Start's), and the
    /// Interim-Update is sent to be sure.
    pub late: bool,
}

/// Who acknowledged a row of a session's own accounting ([`SessionStore::mark_delivered`]).
#[derive(Clone, Copy, Debug)]
pub struct Acknowledged<'a> {
    /// The row's session.
    pub access_session_id: i64,
    /// The server that acknowledged it.
    pub by: &'a str,
    /// The session's accounting server (it follows a Start that failed over).
    pub own: &'a str,
    /// The row is the session's Stop: it is copied to the other servers that may hold the
    /// session open.
    pub stop: bool,
    /// The row is a sign-in's Start sent while Stops of its address's earlier sessions were
    /// still on their way: the sign-in's look for one acknowledged after the Start left
    /// ([`SessionStore::reassert_after_stops`]), made in the Start's recording.
    pub after_stops: Option<AfterStops<'a>>,
}

/// The Stops a sign-in's Start went while they were still on their way ([`Acknowledged`]).
#[derive(Clone, Copy, Debug)]
pub struct AfterStops<'a> {
    /// The address's earlier sessions whose Stops were on their way.
    pub earlier: &'a [i64],
    /// From when a Stop acknowledged may have reached the server after the Start: when the
    /// Start left, less the replicas' clock skew (a Stop recorded by another replica).
    pub since: i64,
    /// When the Start left, by the clock of the process that sent it: a Stop acknowledged
    /// from then on surely came after it (late).
    pub left: i64,
}

impl<'a> AfterStops<'a> {
    /// The look after Stops `earlier` for a Start that left at `left`.
    pub fn left_at(earlier: &'a [i64], left: i64) -> Self {
        AfterStops {
            earlier,
            since: left - crate::accounting::CLOCK_SKEW_MS,
            left,
        }
    }
}

/// How a Dynamic Authorization request names the session(s) it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionMatch {
    /// Acct-Session-Id.
    AcctSessionId(String),
    /// The client's address, as stored.
    ClientIp(String),
    /// User-Name.
    UserName(String),
    /// One of the session's Class values, byte for byte.
    Class(Vec<u8>),
}

/// An outbox row's delivery state, for inspection (tests, CLI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: i64,
    /// 1 Start, 2 Stop, 3 Interim-Update.
    pub status_type: i64,
    /// Claims so far.
    pub attempts: i64,
    /// Packets put on the wire.
    pub transmissions: i64,
    /// When the server acknowledged it (unix ms).
    pub delivered_at: Option<i64>,
    /// When it was dead-lettered (unix ms).
    pub dead_at: Option<i64>,
    /// Why it was dead-lettered.
    pub dead_reason: Option<String>,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// A copy for this server alone ([`OutboxRow::copy_to`]).
    pub copy_to: Option<String>,
}

/// An undelivered accounting row as `accounting backlog` lists it.
#[derive(Debug, Clone)]
pub struct WaitingRow {
    /// The row.
    pub entry: OutboxEntry,
    /// Its session's Acct-Session-Id.
    pub acct_session_id: String,
    /// Its session's organization.
    pub organization_id: String,
    /// Its session's user.
    pub username: String,
    /// Its session's client address.
    pub client_ip: String,
    /// The server that authenticated the session: where the row goes first (with failover to
    /// the others); a copy goes to its own server alone ([`OutboxEntry::copy_to`]).
    pub server_name: String,
    /// When it was queued (unix ms).
    pub created_at: i64,
    /// When it is tried next (unix ms), unless claimed.
    pub next_attempt_at: i64,
    /// Until when a sender holds it (unix ms), if one does.
    pub claimed_until: Option<i64>,
}

/// Encodes Class values as one blob: each value is a 2-byte big-endian length and its bytes.
/// Values are arbitrary binary (ISE's `CACS:…` text, other vendors' binary): nothing is parsed.
pub fn encode_classes(classes: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for class in classes {
        out.extend_from_slice(&(class.len() as u16).to_be_bytes());
        out.extend_from_slice(class);
    }
    out
}

/// Reverses [`encode_classes`].
pub fn decode_classes(blob: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        if at + 2 > blob.len() {
            return Err(StorageError::Corrupt("class blob truncated".into()));
        }
        let len = u16::from_be_bytes([blob[at], blob[at + 1]]) as usize;
        at += 2;
        let value = blob
            .get(at..at + len)
            .ok_or_else(|| StorageError::Corrupt("class blob truncated".into()))?;
        out.push(value.to_vec());
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pruning_goes_on_in_chunks_until_one_is_short_or_shutdown() {
        let limit = PRUNE_CHUNK as u64;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut left = vec![3, limit, limit];
        let removed = in_chunks(&shutdown, |asked| {
            assert_eq!(asked as u64, limit);
            let n = left.pop().unwrap();
            async move { Ok(n) }
        })
        .await
        .unwrap();
        assert_eq!(removed, 2 * limit + 3);
        assert!(left.is_empty());
        // A failed chunk ends the pass (what the others removed stays removed).
        let mut calls = 0;
        let failed = in_chunks(&shutdown, |_| {
            calls += 1;
            let n = calls;
            async move {
                if n == 1 {
                    Ok(limit)
                } else {
                    Err(StorageError::Unreachable("away".into()))
                }
            }
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(calls, 2);
        shutdown.cancel();
        let mut calls = 0;
        let stopped = in_chunks(&shutdown, |_| {
            calls += 1;
            async move { Ok(limit) }
        })
        .await
        .unwrap();
        assert_eq!((stopped, calls), (0, 0), "none after shutdown");
    }

    /// Acct-Session-Time is the Event-Timestamps' difference: Start + it = Stop.
    #[test]
    fn whole_seconds_are_the_difference_of_event_timestamps() {
        let ts = |ms: i64| ms / 1000;
        for (earlier, later) in [
            (10_900, 12_100),
            (526_820, 534_700),
            (0, 999),
            (5_000, 5_000),
        ] {
            let between = whole_seconds_between(earlier, later);
            assert_eq!(ts(earlier) + between, ts(later), "{earlier} → {later}");
        }
        assert_eq!(
            whole_seconds_between(10_900, 12_100),
            2,
            "1.2 s across two boundaries"
        );
        assert_eq!(
            whole_seconds_between(526_820, 534_700),
            8,
            "7.88 s late, sent in second 534"
        );
        assert_eq!(whole_seconds_between(12_100, 10_900), 0, "never negative");
    }

    /// A damaged page met by the organizations' store (sqlx, outside the engine) marks the
    /// database as the engine's own reads do: not writable, so `/readyz` and sign-ins say so
    /// (the s79 review's L2: only the engine's reads did).
    #[tokio::test]
    async fn a_damaged_page_met_by_the_organizations_store_marks_the_database() {
        use std::io::{Seek, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.db");
        Storage::open(&path).await.unwrap().close().await;
        let (root, page_size): (u64, u64) = {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            (
                c.query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE name = 'organizations'",
                    [],
                    |r| r.get(0),
                )
                .unwrap(),
                c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
            )
        };
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(std::io::SeekFrom::Start((root - 1) * page_size))
            .unwrap();
        file.write_all(&vec![0xAB; page_size as usize]).unwrap();
        drop(file);
        let storage = Storage::open(&path).await.unwrap();
        assert!(storage.writable(), "nothing damaged met yet");
        let read = storage.organizations().await;
        assert!(
            read.as_ref().is_err_and(StorageError::is_damaged),
            "{read:?}"
        );
        assert!(!storage.writable(), "damaged");
        storage.close().await;
    }

    /// What `check-config` says of a database by the migrations recorded in it.
    #[test]
    fn recorded_migrations_tell_a_ready_database_from_one_serve_would_refuse() {
        let migrator = sqlx::migrate!("./migrations/sqlite");
        let all: Vec<(i64, bool, Vec<u8>)> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| (m.version, true, m.checksum.to_vec()))
            .collect();
        assert_eq!(migration_state(&migrator, &all), None);
        let older = &all[..all.len() - 2];
        assert!(
            matches!(migration_state(&migrator, older), Some(Ok(r)) if r.starts_with("2 migration(s) to run"))
        );
        let mut newer = all.clone();
        newer.push((99_999, true, vec![0]));
        assert!(
            matches!(migration_state(&migrator, &newer), Some(Err(r)) if r.contains("newer release"))
        );
        let mut failed = all.clone();
        failed[1].1 = false;
        assert!(
            matches!(migration_state(&migrator, &failed), Some(Err(r)) if r.contains("failed"))
        );
        let mut changed = all.clone();
        changed[0].2 = vec![1, 2, 3];
        assert!(
            matches!(migration_state(&migrator, &changed), Some(Err(r)) if r.contains("differs"))
        );
    }

    #[test]
    fn an_unavailable_database_is_told_from_a_fault() {
        let sqlite = |code| {
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        assert!(sqlite(rusqlite::ffi::SQLITE_FULL).is_unavailable());
        assert!(sqlite(rusqlite::ffi::SQLITE_READONLY).is_unavailable());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).is_unavailable());
        assert!(StorageError::Database(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StorageError::Database(sqlx::Error::RowNotFound).is_unavailable());
        assert!(
            StorageError::Engine("database overloaded: too many writes queued".into())
                .is_unavailable()
        );
        assert!(!StorageError::Engine("a database write panicked".into()).is_unavailable());
        assert!(!StorageError::Corrupt("x".into()).is_unavailable());
    }

    #[test]
    fn classes_of_any_format_round_trip_byte_for_byte() {
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![],
            vec![b"CACS:0a0a0a0a0000000123456789:ise-node-1/123456789/42".to_vec()],
            vec![vec![0, 0xff, 0xfe, 0x80, 0], b"plain".to_vec()],
            vec![vec![], vec![7; 253]],
        ];
        for classes in cases {
            assert_eq!(
                decode_classes(&encode_classes(&classes)).expect("decodes"),
                classes
            );
        }
    }

    #[test]
    fn truncated_class_blob_is_an_error_not_a_panic() {
        assert!(decode_classes(&[0]).is_err());
        assert!(decode_classes(&[0, 5, 1, 2]).is_err());
    }
}
