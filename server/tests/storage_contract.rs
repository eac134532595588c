//! The storage contract, run on both backends: every test below runs once on a SQLite file and
//! once on a real PostgreSQL (a throwaway cluster, `common::postgres`). Where several portal
//! processes share one database, a test opens the database twice ("two replicas") and has both
//! work at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use radius_portal::{
    radius::{status_type, terminate_cause},
    storage::{
        AcceptTimeouts, AccessSessionRecord, Acknowledged, AfterStops, Audit, AuditQuery,
        DeleteOutcome, Delivered, GiveUp, GivenUp, NewAccessSession, OrganizationWrite, OutboxRow,
        RefreshTerms, SeedOutcome, SessionMatch, StopOutcome, Storage, StorageError, UpdateOutcome,
    },
};
use std::collections::{BTreeSet, HashSet};
use tower_sessions::{
    cookie::time::{Duration, OffsetDateTime},
    session::{Id, Record},
    SessionStore,
};

const MINUTE: i64 = 60_000;
const T0: i64 = 1_800_000_000_000;

/// One database of either backend; [`Db::open`] gives another process's handle on it.
struct Db {
    place: Place,
    storage: Storage,
}

enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

#[derive(Clone, Copy)]
enum Kind {
    Sqlite,
    Postgres,
}

impl Db {
    async fn new(kind: Kind) -> Db {
        let place = match kind {
            Kind::Sqlite => Place::Sqlite(tempfile::tempdir().unwrap()),
            Kind::Postgres => Place::Postgres(common::postgres::fresh_database().await),
        };
        let storage = open(&place).await;
        storage
            .seed_organization("acme", "Acme", "{}", None, 0, T0)
            .await
            .unwrap();
        Db { place, storage }
    }

    /// Another handle on the same database, as a second portal replica would have.
    async fn open(&self) -> Storage {
        open(&self.place).await
    }
}

async fn open(place: &Place) -> Storage {
    match place {
        Place::Sqlite(dir) => Storage::open(&dir.path().join("portal.db")).await.unwrap(),
        Place::Postgres(url) => Storage::open_postgres(url).await.unwrap(),
    }
}

/// A refresh at `now` to a deadline of `expires_at` (its window from now, no limit).
fn refreshed_until(now: i64, expires_at: i64) -> RefreshTerms {
    RefreshTerms {
        window_ms: expires_at - now,
        limit_at: None,
        expires_at,
        follows: None,
    }
}

/// A login of `ip` at `at` with a `window_ms` window.
/// Opens `new` and gives its id.
async fn opened(s: &Storage, new: NewAccessSession) -> i64 {
    s.open_session(&new).await.unwrap().id
}

fn login(ip: &str, at: i64, window_ms: i64) -> NewAccessSession {
    NewAccessSession {
        acct_session_id: format!("sid-{ip}-{at}"),
        organization_id: "acme".into(),
        username: format!("user-{ip}"),
        client_ip: ip.into(),
        server_index: 0,
        server_name: "primary".into(),
        classes: vec![],
        reply_message: Some("Welcome".into()),
        started_at: at,
        window_ms,
        limit_at: None,
        expires_at: at + window_ms,
        interim_interval: None,
        start_claimed_until: None,
        typed_username: None,
        nas: None,
        replaces: None,
        accept_timeouts: None,
        organization_revision: None,
    }
}

fn ip(n: usize) -> String {
    format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256)
}

/// Session `id`'s Start claimed at `at` and acknowledged a millisecond later (its row).
async fn acknowledge_start(s: &Storage, id: i64, at: i64) -> radius_portal::storage::OutboxRow {
    let start = s
        .claim_session_outbox(id, status_type::START, at, at + MINUTE)
        .await
        .unwrap()
        .unwrap();
    s.mark_delivered(&start, at + 1, None).await.unwrap();
    start
}

/// Status types of a session's accounting rows, oldest first.
async fn outbox_types(s: &Storage, id: i64) -> Vec<i64> {
    s.session_outbox(id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.status_type)
        .collect()
}

const START: i64 = status_type::START as i64;
const STOP: i64 = status_type::STOP as i64;
const INTERIM: i64 = status_type::INTERIM_UPDATE as i64;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::new(super::Kind::Sqlite).await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::new(super::Kind::Postgres).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_session_opens_refreshes_and_stops_once,
    a_second_login_of_a_client_preempts_the_first,
    a_disabled_organization_gets_no_session_and_a_stop_job,
    a_refresh_after_a_disable_is_refused_and_queues_nothing,
    a_disabled_organizations_sessions_stop_in_batches_and_an_enable_keeps_the_rest,
    two_refreshes_sent_together_make_one,
    due_sessions_stop_once_at_their_deadline_across_replicas,
    outbox_rows_go_in_order_and_no_claim_is_shared,
    a_stops_copies_are_queued_once_for_their_servers_alone,
    a_failed_row_waits_and_retry_now_makes_it_due,
    an_operator_gives_up_the_accounting_of_ended_sessions,
    a_stop_asked_for_ends_a_session_by_its_deadline_or_an_earlier_operators_stop,
    a_preempted_session_ends_by_its_deadline_or_an_earlier_operators_stop,
    a_lapsed_claim_is_renewed_only_by_its_holder_and_a_transmission_always_counts,
    claims_under_way_are_kept_together_and_only_while_they_are_the_senders,
    dead_letters_unblock_and_a_never_sent_start_takes_its_session_along,
    a_sign_in_lease_tells_a_dead_sign_in_from_one_under_way,
    a_stop_after_a_newer_start_at_its_address_has_that_session_repeat_itself,
    a_sign_ins_start_recorded_after_a_late_stop_repeats_itself_in_the_same_write,
    a_late_stops_interim_update_goes_to_every_server_that_may_hold_the_session,
    a_late_stops_interim_update_is_never_dated_before_its_sessions_start,
    disconnect_requests_find_sessions_by_id_address_user_and_class,
    periodic_interims_come_due_and_coalesce,
    session_time_is_the_difference_of_the_event_timestamps,
    a_session_termination_is_queued_once,
    a_dynamic_authorization_request_is_acted_on_once_until_it_expires,
    a_session_due_while_an_operators_stop_waits_ends_when_it_was_asked_for,
    sign_ins_that_never_finished_end_as_they_would_have,
    pruning_keeps_what_is_pending,
    pruning_goes_in_chunks_oldest_first,
    due_sessions_stop_in_chunks_earliest_first,
    organization_changes_are_revisioned_audited_and_guarded,
    an_organization_the_file_no_longer_lists_is_disabled_and_unlisted_together,
    keys_and_web_sessions_are_shared_by_every_process,
    logins_racing_a_disable_never_outlive_it,
    two_replicas_logging_in_one_client_leave_one_session,
    two_replicas_creating_one_id_in_two_letter_cases_create_one,
    an_addresss_stops_on_their_way_are_found,
    a_shortened_max_lifetime_caps_the_sessions_it_governs,
    a_sign_ins_write_and_a_change_freeing_its_server_never_cross,
    audit_entries_are_found_by_organization_and_action_a_page_at_a_time,
);

/// The audit log read as an operator looks for one change on a busy portal: one organization's
/// entries (named in any letter case, also once it is deleted), one action's, and the page
/// before the one read.
async fn audit_entries_are_found_by_organization_and_action_a_page_at_a_time(db: Db) {
    let s = &db.storage;
    let detail = serde_json::json!({});
    let entry = |at: i64, action: &'static str, org: Option<&'static str>| Audit {
        at,
        actor: "cli:test",
        action,
        organization_id: org,
        detail: detail.clone(),
    };
    // "acme" is stored as the test set-up made it; "GoneCo" is no organization (deleted; its
    // entries found in any letter case, as the id was written or not).
    for i in 0..30 {
        let org = [Some("acme"), Some("GoneCo"), None][i % 3];
        let action = if i == 7 {
            "org.disable"
        } else {
            "login.accepted"
        };
        s.audit(&entry(T0 + i as i64, action, org)).await.unwrap();
    }
    let read = |organization: Option<&str>, action: Option<&str>, before: Option<i64>| {
        let query = AuditQuery {
            limit: 4,
            organization: organization.map(str::to_owned),
            action: action.map(str::to_owned),
            before,
        };
        async move { s.audit_entries(&query).await.unwrap() }
    };
    let acme = read(Some("ACME"), None, None).await;
    assert_eq!(acme.len(), 4);
    assert!(
        acme.iter()
            .all(|e| e.organization_id.as_deref() == Some("acme")),
        "{acme:?}"
    );
    assert!(acme.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    assert_eq!(acme.last().unwrap().at, T0 + 27);
    // The page before: older, none of the first again.
    let before = read(Some("acme"), None, Some(acme[0].id)).await;
    assert_eq!(
        before.iter().map(|e| e.at).collect::<Vec<_>>(),
        [T0 + 6, T0 + 9, T0 + 12, T0 + 15]
    );
    let gone = read(Some("GONECO"), None, None).await;
    assert_eq!(
        gone.len(),
        4,
        "a deleted organization's, in other letter case"
    );
    assert!(gone
        .iter()
        .all(|e| e.organization_id.as_deref() == Some("GoneCo")));
    let disable = read(Some("goneco"), Some("org.disable"), None).await;
    assert_eq!(disable.len(), 1);
    assert_eq!(
        (disable[0].at, disable[0].action.as_str()),
        (T0 + 7, "org.disable")
    );
    assert!(read(Some("acme"), Some("org.disable"), None)
        .await
        .is_empty());
    assert!(read(Some("nobody"), None, None).await.is_empty());
    assert_eq!(read(None, None, None).await.last().unwrap().at, T0 + 29);
}

/// A sign-in's session written with an organization revision that is no longer the stored one
/// is refused (it is worked out again), and a change that frees a server — removes it, or sends
/// its accounting elsewhere — finds in its own write a session that needs it: one of the two
/// always sees the other, so a session's Start and Stop never go to two addresses.
async fn a_sign_ins_write_and_a_change_freeing_its_server_never_cross(db: Db) {
    let s = &db.storage;
    let revision = s.organization("acme").await.unwrap().unwrap().revision;
    let mut stale = login("10.0.9.1", T0, MINUTE);
    stale.organization_revision = Some(revision - 1);
    assert!(matches!(
        s.open_session(&stale).await,
        Err(StorageError::OrganizationChanged)
    ));
    assert!(s.active_session_ids_of("acme").await.unwrap().is_empty());
    let mut current = login("10.0.9.1", T0, MINUTE);
    current.organization_revision = Some(revision);
    let id = opened(s, current).await;

    let detail = serde_json::json!({ "by": "test" });
    let (primary, other) = (["primary".to_string()], ["another".to_string()]);
    let mut write = OrganizationWrite {
        id: "acme",
        name: "Acme renamed",
        settings_json: "{}",
        actor: "cli:test",
        now: T0 + 1,
        detail: &detail,
        expected_revision: Some(revision),
        servers_freed: &primary,
        copies_since: 0,
    };
    assert_eq!(
        s.update_organization(&write, true).await.unwrap(),
        UpdateOutcome::ServerNeeded
    );
    let stored = s.organization("acme").await.unwrap().unwrap();
    assert_eq!(
        (stored.name.as_str(), stored.revision),
        ("Acme", revision),
        "nothing written"
    );
    assert!(s.session(id).await.unwrap().unwrap().active);
    write.servers_freed = &other;
    assert_eq!(
        s.update_organization(&write, true).await.unwrap(),
        UpdateOutcome::Updated
    );
}

/// `cap_lifetimes`: only the open sessions whose Accept left their limit to the organization,
/// only ever shorter, and one already older than the new limit is due now — not back then.
async fn a_shortened_max_lifetime_caps_the_sessions_it_governs(db: Db) {
    let s = &db.storage;
    const HOUR: i64 = 60 * MINUTE;
    let governed = Some(AcceptTimeouts {
        idle: 0,
        session: 0,
    });
    let session = |n: usize, accept: Option<AcceptTimeouts>, limit_at: Option<i64>| {
        let mut new = login(&ip(n), T0, 4 * HOUR);
        new.accept_timeouts = accept;
        new.limit_at = limit_at;
        new.expires_at = limit_at.map_or(T0 + 4 * HOUR, |l| l.min(T0 + 4 * HOUR));
        opened(s, new)
    };
    let unbounded = session(1, governed, None).await;
    let by_its_server = session(
        2,
        Some(AcceptTimeouts {
            idle: 0,
            session: 7_200,
        }),
        Some(T0 + 2 * HOUR),
    )
    .await;
    let stored_before_timeouts = session(3, None, None).await;
    let within = session(4, governed, Some(T0 + HOUR / 2)).await;
    // A short window: its end stays (a cap never moves an end later), and once due it ends
    // by its window, as it was due to.
    let mut short = login(&ip(5), T0, 15 * MINUTE);
    short.accept_timeouts = governed;
    let short_window = opened(s, short).await;
    let ended = session(6, governed, None).await;
    assert!(s
        .stop_session(ended, terminate_cause::USER_REQUEST, T0 + MINUTE)
        .await
        .unwrap());
    let as_stored = |id: i64| async move {
        let r = s.session(id).await.unwrap().unwrap();
        (r.active, r.window_ms, r.limit_at, r.expires_at)
    };
    let untouched = [
        (by_its_server, as_stored(by_its_server).await),
        (
            stored_before_timeouts,
            as_stored(stored_before_timeouts).await,
        ),
        (ended, as_stored(ended).await),
    ];

    assert!(s
        .cap_lifetimes("another", HOUR, T0 + 10 * MINUTE)
        .await
        .unwrap()
        .is_empty());
    let mut capped = s
        .cap_lifetimes("acme", HOUR, T0 + 10 * MINUTE)
        .await
        .unwrap();
    capped.sort_unstable();
    assert_eq!(
        capped,
        [(unbounded, T0 + HOUR), (short_window, T0 + 15 * MINUTE)]
    );
    assert_eq!(
        as_stored(short_window).await,
        (true, 15 * MINUTE, Some(T0 + HOUR), T0 + 15 * MINUTE)
    );
    assert_eq!(
        as_stored(unbounded).await,
        (true, HOUR, Some(T0 + HOUR), T0 + HOUR)
    );
    assert_eq!(
        as_stored(within).await,
        (true, 4 * HOUR, Some(T0 + HOUR / 2), T0 + HOUR / 2),
        "already within it"
    );
    assert!(
        s.cap_lifetimes("acme", 2 * HOUR, T0 + 10 * MINUTE)
            .await
            .unwrap()
            .is_empty(),
        "never longer"
    );

    // Shorter than their age: due now, and stopped as of now by their limit.
    let now = T0 + 20 * MINUTE;
    let mut capped = s.cap_lifetimes("acme", MINUTE, now).await.unwrap();
    capped.sort_unstable();
    assert_eq!(capped, [(unbounded, now), (within, now)]);
    let mut stopped = s.stop_due_sessions(now).await.unwrap();
    stopped.sort_by_key(|st| st.id);
    assert_eq!(
        stopped
            .iter()
            .map(|st| (st.id, st.due_at, st.cause))
            .collect::<Vec<_>>(),
        [
            (unbounded, now, terminate_cause::SESSION_TIMEOUT),
            (within, now, terminate_cause::SESSION_TIMEOUT),
            (
                short_window,
                T0 + 15 * MINUTE,
                terminate_cause::IDLE_TIMEOUT
            )
        ]
    );
    for (id, before) in untouched {
        assert_eq!(as_stored(id).await, before);
    }
}

/// The Stops of an address's earlier sessions that are due and unacknowledged — on their way —
/// are found for a sign-in there (in its organization); one held back after a failed attempt
/// (until before the sign-in's horizon) or waiting behind its session's unacknowledged Start is
/// found as coming (it may go while the sign-in's Start does); one due long ago or held back
/// past the horizon, or acknowledged, is not found.
async fn an_addresss_stops_on_their_way_are_found(db: Db) {
    let s = &db.storage;
    let id = opened(s, login("10.0.7.1", T0, MINUTE)).await;
    acknowledge_start(s, id, T0).await;
    let other = opened(s, login("10.0.7.2", T0, MINUTE)).await;
    let stops = |org: &'static str, ip: &'static str, now: i64, until: i64| async move {
        let since = now - radius_portal::storage::STOPS_DUE_LATELY_MS;
        let found = s.stops_due_at(org, ip, now, since, until).await.unwrap();
        (found.due, found.coming)
    };
    let due = |ids: Vec<i64>| (ids, Vec::<i64>::new());
    let coming = |ids: Vec<i64>| (Vec::<i64>::new(), ids);
    let none = || (Vec::<i64>::new(), Vec::<i64>::new());
    let now = T0 + 2_000;
    assert_eq!(
        stops("acme", "10.0.7.1", now, now + MINUTE).await,
        none(),
        "running"
    );
    assert!(s
        .stop_session(id, terminate_cause::USER_REQUEST, T0 + 1_000)
        .await
        .unwrap());
    assert!(s
        .stop_session(other, terminate_cause::USER_REQUEST, T0 + 1_000)
        .await
        .unwrap());
    assert_eq!(stops("acme", "10.0.7.1", now, now).await, due(vec![id]));
    assert_eq!(
        stops("beta", "10.0.7.1", now, now + MINUTE).await,
        none(),
        "another organization's"
    );
    assert_eq!(
        stops("acme", "10.0.7.3", now, now + MINUTE).await,
        none(),
        "another address's"
    );
    assert_eq!(
        stops("acme", "10.0.7.2", now, now).await,
        coming(vec![other]),
        "behind its session's unacknowledged Start"
    );
    assert_eq!(
        stops("acme", "10.0.7.1", now + 2 * MINUTE, now + 3 * MINUTE).await,
        none(),
        "due long ago: it waits for something"
    );
    let stop = s
        .claim_session_outbox(id, status_type::STOP, now, now + MINUTE)
        .await
        .unwrap()
        .expect("due");
    assert_eq!(
        stops("acme", "10.0.7.1", now, now).await,
        due(vec![id]),
        "on its way"
    );
    s.mark_failed(&stop, now + MINUTE, "timeout", Some("primary"))
        .await
        .unwrap();
    assert_eq!(
        stops("acme", "10.0.7.1", now, now + MINUTE).await,
        coming(vec![id]),
        "held back until within the horizon"
    );
    assert_eq!(
        stops("acme", "10.0.7.1", now, now + MINUTE - 1).await,
        none(),
        "held back past the horizon"
    );
    let stop = s
        .claim_session_outbox(id, status_type::STOP, now + MINUTE, now + 2 * MINUTE)
        .await
        .unwrap()
        .expect("due again");
    s.mark_delivered(&stop, now + MINUTE, None).await.unwrap();
    assert_eq!(
        stops("acme", "10.0.7.1", now + MINUTE, now + 2 * MINUTE).await,
        none(),
        "acknowledged"
    );

    // Behind its session's Interim-Update on its way (a refresh just before the Disconnect):
    // due, as that Interim-Update is; behind one held back after a failed attempt, coming.
    let refreshed = opened(s, login("10.0.7.4", T0, MINUTE)).await;
    acknowledge_start(s, refreshed, T0).await;
    s.refresh_session(refreshed, T0 + 500, refreshed_until(T0 + 500, T0 + MINUTE))
        .await
        .unwrap()
        .unwrap();
    assert!(s
        .stop_session(refreshed, terminate_cause::USER_REQUEST, T0 + 1_000)
        .await
        .unwrap());
    assert_eq!(
        stops("acme", "10.0.7.4", now, now).await,
        due(vec![refreshed]),
        "behind its session's Interim-Update on its way"
    );
    let interim = s
        .claim_session_outbox(refreshed, status_type::INTERIM_UPDATE, now, now + MINUTE)
        .await
        .unwrap()
        .unwrap();
    s.mark_failed(&interim, now + 30_000, "timeout", Some("primary"))
        .await
        .unwrap();
    assert_eq!(
        stops("acme", "10.0.7.4", now, now + MINUTE).await,
        coming(vec![refreshed]),
        "behind its session's Interim-Update held back"
    );
}

async fn a_session_opens_refreshes_and_stops_once(db: Db) {
    let s = &db.storage;
    let mut new = login("10.0.0.1", T0, 10 * MINUTE);
    new.classes = vec![b"class-1".to_vec(), vec![0, 255, 10]];
    // The NAS identity the login presented is the session's (read back as stored).
    new.nas = Some(radius_portal::radius::NasIdentity {
        ip: "2001:db8::7".parse().unwrap(),
        identifier: "portal-v6".into(),
    });
    // What its Accept said of its window and limit, read back too.
    new.accept_timeouts = Some(radius_portal::storage::AcceptTimeouts {
        idle: 600,
        session: 0,
    });
    let opened = s.open_session(&new).await.unwrap();
    assert!(opened.preempted.is_empty());
    assert_eq!(opened.claimed_start, None);
    let session = s.session(opened.id).await.unwrap().unwrap();
    assert_eq!(
        session,
        new.opened(opened.id),
        "what a login answers without reading it back"
    );
    assert!(session.active);
    assert_eq!(session.expires_at, T0 + 10 * MINUTE);
    assert_eq!(session.reply_message.as_deref(), Some("Welcome"));
    assert_eq!(s.active_sessions().await.unwrap(), 1);
    assert_eq!(s.next_expiry().await.unwrap(), Some(T0 + 10 * MINUTE));
    assert_eq!(
        s.active_session_for_client("acme", "10.0.0.1", T0 + 1)
            .await
            .unwrap()
            .map(|r| r.id),
        Some(opened.id)
    );
    assert_eq!(outbox_types(s, opened.id).await, [START]);

    // Two refreshes: the deadline moves, and one Interim-Update waits (the newer supersedes).
    let refreshed = s
        .refresh_session(
            opened.id,
            T0 + MINUTE,
            refreshed_until(T0 + MINUTE, T0 + 11 * MINUTE),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refreshed.expires_at, T0 + 11 * MINUTE);
    assert_eq!(refreshed.refreshed_at, T0 + MINUTE);
    // A refresh gives the session its window and limit as well (its organization's settings
    // may have changed since the sign-in).
    let terms = RefreshTerms {
        window_ms: 5 * MINUTE,
        limit_at: Some(T0 + 20 * MINUTE),
        expires_at: T0 + 7 * MINUTE,
        follows: None,
    };
    let refreshed = s
        .refresh_session(opened.id, T0 + 2 * MINUTE, terms)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            refreshed.window_ms,
            refreshed.limit_at,
            refreshed.expires_at
        ),
        (terms.window_ms, terms.limit_at, terms.expires_at)
    );
    assert_eq!(refreshed.accept_timeouts, session.accept_timeouts);
    assert!(session.accept_timeouts.is_some());
    assert_eq!(outbox_types(s, opened.id).await, [START, INTERIM]);

    let cause = terminate_cause::USER_REQUEST;
    assert!(s
        .stop_session(opened.id, cause, T0 + 3 * MINUTE)
        .await
        .unwrap());
    assert!(!s
        .stop_session(opened.id, cause, T0 + 4 * MINUTE)
        .await
        .unwrap());
    let stopped = s.session(opened.id).await.unwrap().unwrap();
    assert!(!stopped.active);
    assert_eq!(stopped.stopped_at, Some(T0 + 3 * MINUTE));
    assert_eq!(stopped.terminate_cause, Some(i64::from(cause)));
    assert_eq!(outbox_types(s, opened.id).await, [START, INTERIM, STOP]);
    assert_eq!(
        s.refresh_session(
            opened.id,
            T0 + 5 * MINUTE,
            refreshed_until(T0 + 5 * MINUTE, T0 + 15 * MINUTE)
        )
        .await
        .unwrap(),
        None
    );
    assert_eq!(s.active_sessions().await.unwrap(), 0);
    let audit = s.audit_tail(10).await.unwrap();
    let end = audit
        .iter()
        .find(|e| e.action == "session.end")
        .expect("session.end audited");
    let detail: serde_json::Value = serde_json::from_str(&end.detail).unwrap();
    assert_eq!(detail["session_time_s"], 180);
    assert_eq!(detail["terminate_cause"], i64::from(cause));
    assert_eq!(end.actor, "user", "the user ended it (User-Request)");

    // Terms whose deadline is not after the refresh (a `max_lifetime` shortened below the
    // session's age): the refresh ends the session then, as its limit ends it.
    let limited = s
        .open_session(&login("10.0.0.9", T0, 10 * MINUTE))
        .await
        .unwrap()
        .id;
    // Refreshed at T0 + 2 min to terms whose limit passed at T0 + 1 min: no session left to
    // answer with; the session as it is then.
    let refreshed_past_its_limit = |id: i64| async move {
        let passed = RefreshTerms {
            window_ms: 10 * MINUTE,
            limit_at: Some(T0 + MINUTE),
            expires_at: T0 + MINUTE,
            follows: None,
        };
        assert_eq!(
            s.refresh_session(id, T0 + 2 * MINUTE, passed)
                .await
                .unwrap(),
            None
        );
        s.session(id).await.unwrap().unwrap()
    };
    let ended = refreshed_past_its_limit(limited).await;
    assert!(!ended.active);
    assert_eq!(ended.stopped_at, Some(T0 + 2 * MINUTE));
    assert_eq!(
        ended.terminate_cause,
        Some(i64::from(terminate_cause::SESSION_TIMEOUT))
    );
    assert_eq!(outbox_types(s, limited).await, [START, STOP]);
    // An operator's stop waiting for the session comes first: its Admin-Reset, dated when it
    // was asked for, not the limit's.
    let terminated = s
        .open_session(&login("10.0.0.10", T0, 10 * MINUTE))
        .await
        .unwrap()
        .id;
    s.queue_session_termination(terminated, "cli:test", T0 + 30_000)
        .await
        .unwrap();
    let ended = refreshed_past_its_limit(terminated).await;
    assert_eq!(
        (ended.stopped_at, ended.terminate_cause),
        (
            Some(T0 + 30_000),
            Some(i64::from(terminate_cause::ADMIN_RESET))
        )
    );

    // A Start acknowledged by a failover server takes the session's accounting with it.
    assert_eq!(stopped.server_name, "primary");
    s.move_session_server(opened.id, "backup").await.unwrap();
    let moved = s.session(opened.id).await.unwrap().unwrap();
    assert_eq!(moved.server_name, "backup");
    assert_eq!(
        AccessSessionRecord {
            server_name: "primary".into(),
            ..moved
        },
        stopped,
        "nothing else changes"
    );
}

async fn a_second_login_of_a_client_preempts_the_first(db: Db) {
    let s = &db.storage;
    let first = s
        .open_session(&login("10.0.0.2", T0, 10 * MINUTE))
        .await
        .unwrap();
    let mut again = login("10.0.0.2", T0 + MINUTE, 10 * MINUTE);
    again.start_claimed_until = Some(T0 + 3 * MINUTE);
    let second = s.open_session(&again).await.unwrap();
    assert_eq!(second.preempted.len(), 1);
    assert_eq!(second.preempted[0].id, first.id);
    assert_eq!(second.preempted[0].due_at, T0 + MINUTE);
    assert_eq!(second.preempted[0].cause, terminate_cause::PORT_PREEMPTED);
    let start = second
        .claimed_start
        .expect("the Start is claimed for the caller");
    assert_eq!((start.status_type, start.attempts), (START, 1));
    assert_eq!(outbox_types(s, first.id).await, [START, STOP]);
    assert_eq!(s.active_sessions().await.unwrap(), 1);
    let audit = s.audit_tail(10).await.unwrap();
    let end = audit
        .iter()
        .find(|e| e.action == "session.end")
        .expect("the preempted session's end audited");
    assert_eq!(end.actor, "system", "the portal ended it (Port-Preempted)");
    // Claimed for the caller: the delivery loop does not take it before the lease ends.
    let due = s
        .claim_due_outbox(T0 + 2 * MINUTE, T0 + 4 * MINUTE, 100)
        .await
        .unwrap();
    assert!(due.iter().all(|r| r.id != start.id));
    // The browser of that session signs in again from another address: it replaces its own
    // session there too, and nobody else's (10.0.0.4's runs on).
    let neighbour = opened(s, login("10.0.0.4", T0 + MINUTE, 10 * MINUTE)).await;
    let mut moved = login("10.0.0.3", T0 + 2 * MINUTE, 10 * MINUTE);
    moved.replaces = Some(second.id);
    let third = s.open_session(&moved).await.unwrap();
    let preempted: Vec<_> = third.preempted.iter().map(|p| (p.id, p.cause)).collect();
    assert_eq!(preempted, [(second.id, terminate_cause::PORT_PREEMPTED)]);
    assert_eq!(outbox_types(s, second.id).await, [START, STOP]);
    assert_eq!(outbox_types(s, neighbour).await, [START]);
    assert_eq!(s.active_sessions().await.unwrap(), 2);
    // Only a session of the organization signed in to: another organization's is not the
    // browser's to replace there.
    s.seed_organization("beta", "Beta", "{}", None, 1, T0)
        .await
        .unwrap();
    let mut elsewhere = login("10.0.0.6", T0 + 2 * MINUTE, 10 * MINUTE);
    elsewhere.organization_id = "beta".into();
    let beta = opened(s, elsewhere).await;
    let mut moved = login("10.0.0.7", T0 + 2 * MINUTE, 10 * MINUTE);
    moved.replaces = Some(beta);
    assert!(s.open_session(&moved).await.unwrap().preempted.is_empty());
    assert_eq!(outbox_types(s, beta).await, [START]);
    // A session that ended already is not stopped twice.
    let mut again = login("10.0.0.5", T0 + 3 * MINUTE, 10 * MINUTE);
    again.replaces = Some(first.id);
    assert!(s.open_session(&again).await.unwrap().preempted.is_empty());
    assert_eq!(outbox_types(s, first.id).await, [START, STOP]);
    assert_eq!(s.active_sessions().await.unwrap(), 5);
    // An address's session preempted (another browser's there), a browser's session replaced
    // a minute on under another name: nothing to follow.
    let replaced_by = |id: i64| async move { s.session(id).await.unwrap().unwrap().replaced_by };
    assert_eq!(replaced_by(first.id).await, None);
    assert_eq!(replaced_by(second.id).await, None);
    // Two sign-ins of one browser sent together (dana's, a second apart, from two addresses):
    // the first's session records the second's, and a browser still linked to it (the cookie
    // of the first) replaces the one that replaced it, as many times over as it was.
    let t1 = T0 + 6 * MINUTE;
    let signed_in = |name: &str, ip: &str, at: i64, replaces: Option<i64>| NewAccessSession {
        username: name.into(),
        replaces,
        ..login(ip, at, 10 * MINUTE)
    };
    let preempted = |opened: &radius_portal::storage::OpenedSession| -> Vec<i64> {
        opened.preempted.iter().map(|p| p.id).collect()
    };
    let d1 = opened(s, signed_in("Dana", "10.0.0.8", t1, None)).await;
    let d2 = s
        .open_session(&signed_in("dana", "10.0.0.9", t1 + 1_000, Some(d1)))
        .await
        .unwrap();
    assert_eq!(preempted(&d2), [d1]);
    assert_eq!(replaced_by(d1).await, Some(d2.id));
    let d3 = s
        .open_session(&signed_in("dana", "10.0.0.10", t1 + 2_000, Some(d1)))
        .await
        .unwrap();
    assert_eq!(preempted(&d3), [d2.id]);
    assert_eq!(replaced_by(d2.id).await, Some(d3.id));
    let d4 = s
        .open_session(&signed_in("dana", "10.0.0.11", t1 + 3_000, Some(d1)))
        .await
        .unwrap();
    assert_eq!(preempted(&d4), [d3.id]);
    // Replaced under another name, or more than 10 s after it opened: not followed (a cookie
    // shared with someone else's sign-in must not lead to that session).
    let e1 = s
        .open_session(&signed_in("eve", "10.0.0.12", t1 + 4_000, Some(d1)))
        .await
        .unwrap();
    assert_eq!(preempted(&e1), [d4.id]);
    assert_eq!(replaced_by(d4.id).await, None);
    let e2 = s
        .open_session(&signed_in("eve", "10.0.0.13", t1 + 15_000, Some(e1.id)))
        .await
        .unwrap();
    assert_eq!(preempted(&e2), [e1.id]);
    assert_eq!(replaced_by(e1.id).await, None);
    assert_eq!(s.active_sessions().await.unwrap(), 6);
    assert!(s.session(e2.id).await.unwrap().unwrap().active);
    // The same user whatever the case of a letter beyond ASCII, on every backend (SQLite's
    // `lower()` folds ASCII alone).
    let t2 = t1 + MINUTE;
    let z1 = opened(s, signed_in("ZOË", "10.0.0.14", t2, None)).await;
    let z2 = s
        .open_session(&signed_in("zoë", "10.0.0.15", t2 + 1_000, Some(z1)))
        .await
        .unwrap();
    assert_eq!(preempted(&z2), [z1]);
    assert_eq!(replaced_by(z1).await, Some(z2.id));
}

async fn a_disabled_organization_gets_no_session_and_a_stop_job(db: Db) {
    let s = &db.storage;
    let revision = s.organization_revision().await.unwrap();
    assert_eq!(
        s.set_organization_active("acme", false, "cli:test", T0)
            .await
            .unwrap()
            .map(|change| change.changed),
        Some(true)
    );
    assert_eq!(
        s.set_organization_active("acme", false, "cli:test", T0)
            .await
            .unwrap()
            .map(|change| change.changed),
        Some(false)
    );
    assert_eq!(
        s.set_organization_active("nope", false, "cli:test", T0)
            .await
            .unwrap(),
        None
    );
    assert!(s.organization_revision().await.unwrap() > revision);
    assert_eq!(s.organization_active("acme").await.unwrap(), Some(false));
    let refused = s.open_session(&login("10.0.0.3", T0, MINUTE)).await;
    assert!(matches!(refused, Err(StorageError::OrganizationDisabled)));
    assert_eq!(s.active_sessions().await.unwrap(), 0);

    let jobs = s.pending_organization_jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].organization_id.as_str(), jobs[0].kind.as_str()),
        ("acme", "stop_sessions")
    );
    // Two processes finishing the same job: done once, audited once.
    let other = db.open().await;
    s.finish_organization_job(&jobs[0], "stopped 0", T0 + 1)
        .await
        .unwrap();
    other
        .finish_organization_job(&jobs[0], "stopped 0", T0 + 2)
        .await
        .unwrap();
    assert!(s.pending_organization_jobs().await.unwrap().is_empty());
    let audit = s.audit_tail(50).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "job.stop_sessions")
            .count(),
        1
    );
    assert_eq!(
        audit.iter().filter(|e| e.action == "org.disable").count(),
        1
    );
}

/// A refresh whose organization was disabled after the guard read the flag: refused inside
/// its write, no Interim-Update queued (the disable's stop job ends the session).
async fn a_refresh_after_a_disable_is_refused_and_queues_nothing(db: Db) {
    let s = &db.storage;
    let id = opened(s, login("10.0.0.4", T0, MINUTE)).await;
    let before = outbox_types(s, id).await;
    s.set_organization_active("acme", false, "cli:test", T0 + 1)
        .await
        .unwrap();
    let refused = s
        .refresh_session(id, T0 + 2, refreshed_until(T0 + 2, T0 + 2 + MINUTE))
        .await;
    assert!(
        matches!(refused, Err(StorageError::OrganizationDisabled)),
        "{refused:?}"
    );
    assert_eq!(outbox_types(s, id).await, before, "no Interim-Update");
    let session = s.session(id).await.unwrap().unwrap();
    assert_eq!(
        session.expires_at,
        T0 + MINUTE,
        "the window was not restarted"
    );
    // Enabled again: refreshed as before.
    s.set_organization_active("acme", true, "cli:test", T0 + 3)
        .await
        .unwrap();
    let refreshed = s
        .refresh_session(id, T0 + 4, refreshed_until(T0 + 4, T0 + 4 + MINUTE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refreshed.expires_at, T0 + 4 + MINUTE);
    assert_eq!(outbox_types(s, id).await.last(), Some(&INTERIM));
}

/// Two refreshes sent together (two tabs, a double click, two replicas) follow the same
/// refresh: the first written restarts the window and queues an Interim-Update; the other
/// changes nothing and is answered with the session as the first left it. One that follows the
/// first is made.
async fn two_refreshes_sent_together_make_one(db: Db) {
    let s = &db.storage;
    let id = opened(s, login("10.0.9.1", T0, 10 * MINUTE)).await;
    let following = |follows: i64, now: i64| RefreshTerms {
        follows: Some(follows),
        ..refreshed_until(now, now + 10 * MINUTE)
    };
    let interims = || async {
        s.session_outbox(id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.status_type == INTERIM)
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let first = s
        .refresh_session(id, T0 + MINUTE, following(T0, T0 + MINUTE))
        .await
        .unwrap()
        .expect("refreshed");
    assert_eq!(first.refreshed_at, T0 + MINUTE);
    let queued = interims().await;
    assert_eq!(queued.len(), 1, "the first refresh's Interim-Update");
    let second = s
        .refresh_session(id, T0 + MINUTE + 5, following(T0, T0 + MINUTE + 5))
        .await
        .unwrap()
        .expect("answered with the session as it stands");
    assert_eq!(second.refreshed_at, T0 + MINUTE, "not refreshed again");
    assert_eq!(second.expires_at, T0 + 11 * MINUTE);
    assert_eq!(interims().await, queued, "no second Interim-Update");
    let third = s
        .refresh_session(id, T0 + 2 * MINUTE, following(T0 + MINUTE, T0 + 2 * MINUTE))
        .await
        .unwrap()
        .expect("refreshed");
    assert_eq!(third.refreshed_at, T0 + 2 * MINUTE);
    assert_eq!(third.expires_at, T0 + 12 * MINUTE);
    assert_ne!(interims().await, queued, "its own Interim-Update");
}

/// The disable's stop job: batches of a disabled organization's open sessions stopped in one
/// write each, with their Stops queued and their ends audited; none while the organization is
/// active, so an enable committed between two batches keeps the rest; another organization's
/// sessions never.
async fn a_disabled_organizations_sessions_stop_in_batches_and_an_enable_keeps_the_rest(db: Db) {
    let s = &db.storage;
    s.seed_organization("beta", "Beta", "{}", None, 1, T0)
        .await
        .unwrap();
    let mut acme = Vec::new();
    for i in 0..5 {
        acme.push(opened(s, login(&ip(i), T0, MINUTE)).await);
    }
    let mut other = login(&ip(1), T0, MINUTE);
    other.organization_id = "beta".into();
    other.acct_session_id = "sid-beta".into();
    let beta = opened(s, other).await;
    // Its deadline comes before the disable is asked for: expiry's to stop, not the job's.
    let expired = opened(s, login("10.8.8.8", T0, 1)).await;
    let admin_reset = radius_portal::radius::terminate_cause::ADMIN_RESET;

    // The open stop job of the organization (the last disable's).
    let job = || async {
        s.pending_organization_jobs()
            .await
            .unwrap()
            .iter()
            .rev()
            .find(|j| j.organization_id == "acme" && j.kind == "stop_sessions")
            .map(|j| j.id)
    };
    let active = s
        .stop_disabled_sessions("acme", 0, admin_reset, T0 + 1, 2)
        .await
        .unwrap();
    assert!(
        active.is_empty(),
        "an active organization keeps its sessions"
    );

    // One of them an operator asked to end before the disable (its termination not made yet).
    assert_eq!(
        s.queue_session_termination(acme[4], "cli:test", T0 + 1)
            .await
            .unwrap(),
        radius_portal::storage::Termination::Queued
    );
    s.set_organization_active("acme", false, "cli:test", T0 + 2)
        .await
        .unwrap();
    let first_job = job().await.expect("the disable's job");
    let first = s
        .stop_disabled_sessions("acme", first_job, admin_reset, T0 + 3, 2)
        .await
        .unwrap();
    assert_eq!(first, acme[..2], "the oldest first, at most the limit");
    // A run that ends here (cut short) leaves its count with the job: the run that finishes
    // it says every session the job stopped.
    let pending = s.pending_organization_jobs().await.unwrap();
    let cut_short = pending.iter().find(|j| j.id == first_job).unwrap();
    assert_eq!(cut_short.stopped, 2, "the job row counts its runs' stops");
    for id in &first {
        let session = s.session(*id).await.unwrap().unwrap();
        assert!(!session.active);
        assert_eq!(session.terminate_cause, Some(admin_reset as i64));
        assert_eq!(outbox_types(s, *id).await, [START, STOP]);
    }
    let audit = s.audit_tail(10).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "session.end"
                && serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["terminate_cause"]
                    == 6)
            .count(),
        2
    );

    // One stopped otherwise meanwhile, as the disable ends it (a Disconnect-Request, dated the
    // disable's moment): counted with the batches' (black-box tester M's D3 of session 81).
    assert!(s.stop_session(acme[2], admin_reset, T0 + 2).await.unwrap());

    // Enabled between two batches: the next one stops nothing, and the enable closed the job,
    // saying what the stop had done and what it left running.
    let enabled = s
        .set_organization_active("acme", true, "cli:test", T0 + 4)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(
        enabled.skipped_stop,
        Some(radius_portal::storage::SkippedStop {
            stopped_before: 3,
            open_sessions: 2,
            terminations_pending: 1,
        })
    );
    assert_eq!(job().await, None, "the enable closed the disable's job");
    let enable = s.audit_tail(1).await.unwrap().remove(0);
    assert_eq!(enable.action, "org.enable");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&enable.detail).unwrap()["skipped_stop"],
        serde_json::json!({ "open_sessions": 2, "terminations_pending": 1, "stopped_before": 3 }),
        "the enable's audit entry says the stop was cut short and what it left running"
    );
    let after_enable = s
        .stop_disabled_sessions("acme", first_job, admin_reset, T0 + 5, 2)
        .await
        .unwrap();
    assert!(after_enable.is_empty());
    s.set_organization_active("acme", false, "cli:test", T0 + 6)
        .await
        .unwrap();
    // Disabled again: the first job, closed, stops nothing (its Stops would say T0 + 3); the
    // second job's do.
    assert!(s
        .stop_disabled_sessions("acme", first_job, admin_reset, T0 + 7, 10)
        .await
        .unwrap()
        .is_empty());
    let second_job = job().await.expect("the second disable's job");
    assert_ne!(second_job, first_job);
    let rest = s
        .stop_disabled_sessions("acme", second_job, admin_reset, T0 + 7, 10)
        .await
        .unwrap();
    assert_eq!(rest, acme[3..]);
    assert!(s
        .stop_disabled_sessions("acme", second_job, admin_reset, T0 + 8, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(
        s.session(beta).await.unwrap().unwrap().active,
        "another organization's session runs on"
    );
    assert!(
        s.session(expired).await.unwrap().unwrap().active,
        "a session past its deadline when the disable was asked for is left to expiry"
    );
    assert_eq!(
        s.stop_due_sessions(T0 + 9).await.unwrap().len(),
        1,
        "expiry stops it"
    );
    assert_eq!(outbox_types(s, beta).await, [START]);
}

async fn due_sessions_stop_once_at_their_deadline_across_replicas(db: Db) {
    let s = &db.storage;
    let n = 600;
    for i in 0..n {
        let mut new = login(&ip(i), T0, MINUTE + i as i64);
        if i % 3 == 0 {
            // The absolute limit is what ends these: Session-Timeout.
            new.limit_at = Some(new.expires_at);
        }
        s.open_session(&new).await.unwrap();
    }
    let late = s
        .open_session(&login("10.9.9.9", T0, 60 * MINUTE))
        .await
        .unwrap();
    let other = db.open().await;
    let now = T0 + 2 * MINUTE;
    let (a, b) = tokio::join!(s.stop_due_sessions(now), other.stop_due_sessions(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    let ids: BTreeSet<i64> = a.iter().chain(&b).map(|st| st.id).collect();
    assert_eq!(ids.len(), n, "every due session stopped once");
    assert_eq!(a.len() + b.len(), n, "no session stopped twice");
    for stopped in a.iter().chain(&b) {
        let session = s.session(stopped.id).await.unwrap().unwrap();
        assert_eq!(
            stopped.due_at, session.expires_at,
            "stopped as of its deadline"
        );
        assert_eq!(session.stopped_at, Some(session.expires_at));
        let expected = if session.limit_at.is_some() {
            terminate_cause::SESSION_TIMEOUT
        } else {
            terminate_cause::IDLE_TIMEOUT
        };
        assert_eq!(stopped.cause, expected);
        assert_eq!(outbox_types(s, stopped.id).await, [START, STOP]);
    }
    assert!(s.stop_due_sessions(now).await.unwrap().is_empty());
    assert!(s.session(late.id).await.unwrap().unwrap().active);
    assert_eq!(s.next_expiry().await.unwrap(), Some(T0 + 60 * MINUTE));
}

async fn outbox_rows_go_in_order_and_no_claim_is_shared(db: Db) {
    let s = &db.storage;
    let n = 300;
    let mut sessions = Vec::new();
    for i in 0..n {
        let id = s
            .open_session(&login(&ip(i), T0, 10 * MINUTE))
            .await
            .unwrap()
            .id;
        if i % 2 == 0 {
            s.stop_session(id, terminate_cause::USER_REQUEST, T0 + 1)
                .await
                .unwrap();
        }
        sessions.push(id);
    }
    // Two replicas claim at once, a few rows at a time, until nothing is left to claim.
    let other = db.open().await;
    let now = T0 + 2;
    let lease = now + MINUTE;
    let claim_all = |store: Storage| async move {
        let mut claimed = Vec::new();
        loop {
            let rows = store.claim_due_outbox(now, lease, 7).await.unwrap();
            if rows.is_empty() {
                return claimed;
            }
            claimed.extend(rows);
        }
    };
    let (a, b) = tokio::join!(claim_all(s.clone()), claim_all(other.clone()));
    let claimed: Vec<_> = a.into_iter().chain(b).collect();
    let unique: HashSet<i64> = claimed.iter().map(|r| r.id).collect();
    assert_eq!(unique.len(), claimed.len(), "a row was claimed twice");
    assert_eq!(claimed.len(), n, "one row per session: its Start");
    assert!(claimed
        .iter()
        .all(|r| r.status_type == START && r.attempts == 1));
    assert_eq!(s.next_outbox_attempt().await.unwrap(), Some(lease));

    // The Stops come due once their Starts are delivered.
    for row in &claimed {
        s.mark_delivered(row, now, None).await.unwrap();
    }
    assert!(s
        .outbox_delivered(sessions[0], status_type::START)
        .await
        .unwrap());
    let stops = s.claim_due_outbox(now, lease, 1000).await.unwrap();
    assert_eq!(stops.len(), n / 2);
    assert!(stops
        .iter()
        .all(|r| r.status_type == STOP && r.session_time_secs == Some(0)));
    // A claim whose lease ran out (its sender died) is taken again, with another attempt.
    let again = other
        .claim_due_outbox(lease + 1, lease + MINUTE, 1000)
        .await
        .unwrap();
    assert_eq!(again.len(), n / 2);
    assert!(again.iter().all(|r| r.attempts == 2));
    // The first sender, stalled past its lease, fails late: the row stays the second's.
    s.mark_failed(&stops[0], lease + 2, "late", Some("primary"))
        .await
        .unwrap();
    assert!(s
        .claim_due_outbox(lease + 3, lease + MINUTE, 1000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.outbox_backlog().await.unwrap(), (n / 2) as i64);
}

/// A Stop acknowledged by one server is copied, in the same write, to the other servers that
/// may hold the session open — its own server, and every server that was sent a packet of the
/// session (unanswered, or acknowledged as a failover): once, each for its server alone, and
/// apart from the session's own rows (a claim or a check of the session's Stop never takes a
/// copy for it).
async fn a_stops_copies_are_queued_once_for_their_servers_alone(db: Db) {
    let s = &db.storage;
    let opened = s
        .open_session(&login("10.0.0.9", T0, 10 * MINUTE))
        .await
        .unwrap();
    let lease = T0 + 10 * MINUTE;
    let ack = |by: &'static str, stop: bool| Acknowledged {
        access_session_id: opened.id,
        by,
        own: "primary",
        stop,
        after_stops: None,
    };
    // The Start goes to "silent" unanswered, then "primary" acknowledges it.
    let start = s
        .claim_session_outbox(opened.id, status_type::START, T0, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(start.copy_to, None);
    s.mark_failed(&start, T0, "timeout", Some("silent"))
        .await
        .unwrap();
    let start = s
        .claim_session_outbox(opened.id, status_type::START, T0, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.mark_delivered(&start, T0 + 1, Some(&ack("primary", false)))
            .await
            .unwrap()
            .copies,
        0
    );
    // An Interim-Update fails over to "backup".
    s.refresh_session(opened.id, T0 + 2, refreshed_until(T0 + 2, T0 + 11 * MINUTE))
        .await
        .unwrap()
        .unwrap();
    let interim = s
        .claim_session_outbox(opened.id, status_type::INTERIM_UPDATE, T0 + 2, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.mark_delivered(&interim, T0 + 3, Some(&ack("backup", false)))
            .await
            .unwrap()
            .copies,
        0
    );
    assert_eq!(
        s.sessions_needing_server("acme", "silent").await.unwrap(),
        1,
        "its Stop goes there too"
    );
    assert_eq!(
        s.sessions_needing_server("acme", "elsewhere")
            .await
            .unwrap(),
        0
    );

    // The Stop, unanswered at "elsewhere" (a Stop opens nothing there: not remembered), then
    // acknowledged by "backup" (the primary down): copies for the two others.
    assert!(s
        .stop_session(opened.id, terminate_cause::USER_REQUEST, T0 + MINUTE)
        .await
        .unwrap());
    let stop = s
        .claim_session_outbox(opened.id, status_type::STOP, T0 + MINUTE, lease)
        .await
        .unwrap()
        .unwrap();
    s.mark_failed(&stop, T0 + MINUTE, "timeout", Some("elsewhere"))
        .await
        .unwrap();
    assert_eq!(
        s.sessions_needing_server("acme", "elsewhere")
            .await
            .unwrap(),
        0
    );
    let stop = s
        .claim_session_outbox(opened.id, status_type::STOP, T0 + MINUTE, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.mark_delivered(&stop, T0 + MINUTE + 1, Some(&ack("backup", true)))
            .await
            .unwrap()
            .copies,
        2
    );
    // Recorded twice (a retried write): no second set of copies.
    assert_eq!(
        s.mark_delivered(&stop, T0 + MINUTE + 2, Some(&ack("backup", true)))
            .await
            .unwrap()
            .copies,
        0
    );
    assert_eq!(
        outbox_types(s, opened.id).await,
        [START, INTERIM, STOP, STOP, STOP]
    );
    assert!(s
        .outbox_delivered(opened.id, status_type::STOP)
        .await
        .unwrap());
    assert_eq!(
        s.claim_session_outbox(opened.id, status_type::STOP, T0 + 2 * MINUTE, lease)
            .await
            .unwrap(),
        None,
        "a copy is not the session's own Stop"
    );
    let mut copies = s
        .claim_due_outbox(T0 + 2 * MINUTE, lease, 10)
        .await
        .unwrap();
    copies.sort_by(|a, b| a.copy_to.cmp(&b.copy_to));
    assert_eq!(
        copies
            .iter()
            .map(|c| c.copy_to.as_deref())
            .collect::<Vec<_>>(),
        [Some("primary"), Some("silent")]
    );
    for copy in &copies {
        assert_eq!(
            (
                copy.status_type,
                copy.event_at,
                copy.session_time_secs,
                copy.terminate_cause
            ),
            (
                stop.status_type,
                stop.event_at,
                stop.session_time_secs,
                stop.terminate_cause
            ),
            "the same Stop"
        );
        // Made when the Stop was acknowledged (its day to wait for its server counts from
        // then, however long after the session's end that was).
        assert_eq!(copy.created_at, T0 + MINUTE + 1);
        assert_eq!(stop.created_at, T0 + MINUTE);
        assert_eq!((copy.attempts, copy.transmissions), (1, 0));
    }
    // A copy waiting for its server does not hold the server: removing it dead-letters the copy.
    s.mark_failed(&copies[1], T0 + 3 * MINUTE, "down", None)
        .await
        .unwrap();
    assert_eq!(
        s.sessions_needing_server("acme", "silent").await.unwrap(),
        0
    );
    // A copy is delivered like any row, and copies nothing further.
    assert_eq!(
        s.mark_delivered(&copies[0], T0 + 2 * MINUTE, None)
            .await
            .unwrap()
            .copies,
        0
    );
    assert_eq!(s.outbox_backlog().await.unwrap(), 1);
    let entries = s.session_outbox(opened.id).await.unwrap();
    let mut copy_to: Vec<_> = entries.iter().map(|e| e.copy_to.as_deref()).collect();
    copy_to.sort();
    assert_eq!(copy_to, [None, None, None, Some("primary"), Some("silent")]);
    let again = s
        .claim_due_outbox(T0 + 3 * MINUTE, lease, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].copy_to.as_deref(), Some("silent"));
    // An operator giving up a server's copies (gone for good) leaves the one being sent to
    // its sender, and touches only that organization's copies for that server.
    let give_up = |org: &'static str, server: &'static str| {
        s.give_up(org, GiveUp::CopiesFor(server), "cli:test", T0 + 3 * MINUTE)
    };
    let none = GivenUp::default();
    assert_eq!(
        give_up("acme", "silent").await.unwrap(),
        GivenUp {
            given_up: 0,
            being_sent: 1,
            ..GivenUp::default()
        }
    );
    s.mark_failed(&again[0], T0 + 4 * MINUTE, "down", None)
        .await
        .unwrap();
    assert_eq!(give_up("other", "silent").await.unwrap(), none);
    assert_eq!(give_up("acme", "primary").await.unwrap(), none);
    assert_eq!(s.outbox_backlog().await.unwrap(), 1);
    assert_eq!(
        give_up("acme", "silent").await.unwrap(),
        GivenUp {
            given_up: 1,
            being_sent: 0,
            ..GivenUp::default()
        }
    );
    assert_eq!(give_up("acme", "silent").await.unwrap(), none);
    let dead = s.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].0.copy_to.as_deref(), Some("silent"));
    assert!(
        dead[0]
            .0
            .dead_reason
            .as_deref()
            .is_some_and(|r| r.contains("given up by cli:test")),
        "{dead:?}"
    );
    assert_eq!(s.outbox_backlog().await.unwrap(), 0);
    assert_eq!(s.copies_waiting_for("acme", "silent", 0).await.unwrap(), 0);
    let audited: Vec<_> = s
        .audit_tail(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "accounting.give_up_copies")
        .collect();
    assert_eq!(audited.len(), 1, "once, for the change: {audited:?}");
    assert_eq!(audited[0].actor, "cli:test");
    assert_eq!(audited[0].organization_id.as_deref(), Some("acme"));
}

/// A stop asked for now (a Disconnect, the operator, a Disconnect-Request) ends a session as
/// the expiry pass and the disable's job would have: by its deadline if that came first, at a
/// disable (or termination) still waiting for it if asked for before, Admin-Reset — decided
/// in the write that stops it.
async fn a_stop_asked_for_ends_a_session_by_its_deadline_or_an_earlier_operators_stop(db: Db) {
    let s = &db.storage;
    // The cause the stop says, and its Stop's (claimed in the write: the Start was acknowledged).
    let stopped = |id: i64, cause: u32, at: i64| async move {
        match s
            .stop_session_claiming(id, cause, at, at + MINUTE)
            .await
            .unwrap()
        {
            StopOutcome::Claimed(cause, stop, _) => {
                assert_eq!(stop.terminate_cause, Some(i64::from(cause)));
                Some((cause, stop.event_at, stop.session_time_secs))
            }
            StopOutcome::Queued(_) => panic!("its Stop behind nothing: claimed"),
            StopOutcome::NotActive => None,
        }
    };
    // Due a second before the Disconnect: Idle-Timeout at its deadline.
    let due = opened(s, login("10.0.0.50", T0, MINUTE)).await;
    acknowledge_start(s, due, T0).await;
    assert_eq!(
        stopped(due, terminate_cause::USER_REQUEST, T0 + MINUTE + 1_000).await,
        Some((terminate_cause::IDLE_TIMEOUT, T0 + MINUTE, Some(60)))
    );
    assert_eq!(
        stopped(due, terminate_cause::USER_REQUEST, T0 + MINUTE + 2_000).await,
        None
    );
    // Not due: as asked.
    let running = opened(s, login("10.0.0.51", T0, MINUTE)).await;
    acknowledge_start(s, running, T0).await;
    assert_eq!(
        stopped(running, terminate_cause::USER_REQUEST, T0 + 30_000).await,
        Some((terminate_cause::USER_REQUEST, T0 + 30_000, Some(30)))
    );
    // A termination queued at T0 + 10 s and not made yet: Admin-Reset then.
    let terminated = opened(s, login("10.0.0.52", T0, MINUTE)).await;
    acknowledge_start(s, terminated, T0).await;
    s.queue_session_termination(terminated, "cli:test", T0 + 10_000)
        .await
        .unwrap();
    assert_eq!(
        stopped(terminated, terminate_cause::USER_REQUEST, T0 + 20_000).await,
        Some((terminate_cause::ADMIN_RESET, T0 + 10_000, Some(10)))
    );
    // The organization disabled at T0 + 40 s, its job not yet at the session; asked after its
    // deadline (T0 + 60 s): the disable came first.
    let disabled = opened(s, login("10.0.0.53", T0, MINUTE)).await;
    acknowledge_start(s, disabled, T0).await;
    s.set_organization_active("acme", false, "cli:test", T0 + 40_000)
        .await
        .unwrap();
    assert_eq!(
        stopped(disabled, terminate_cause::USER_REQUEST, T0 + 90_000).await,
        Some((terminate_cause::ADMIN_RESET, T0 + 40_000, Some(40)))
    );
}

/// A client's earlier session that its new sign-in preempts ends as every ad-hoc stop does: by
/// its deadline if that came first (the expiry pass had not reached it: never a session time
/// past what was granted), at an operator's stop still waiting for it (Admin-Reset), else
/// Port-Preempted at the new sign-in.
async fn a_preempted_session_ends_by_its_deadline_or_an_earlier_operators_stop(db: Db) {
    let s = &db.storage;
    // What the new sign-in at `ip` at `at` stopped, and how the stopped session reads.
    let preempting = |ip: &'static str, at: i64| async move {
        let opened = s.open_session(&login(ip, at, MINUTE)).await.unwrap();
        let [stopped] = opened.preempted.as_slice() else {
            panic!("one session preempted: {:?}", opened.preempted);
        };
        let record = s.session(stopped.id).await.unwrap().unwrap();
        assert_eq!(
            (record.stopped_at, record.terminate_cause),
            (Some(stopped.due_at), Some(i64::from(stopped.cause)))
        );
        let stop = s
            .session_outbox(stopped.id)
            .await
            .unwrap()
            .into_iter()
            .find(|row| row.status_type == STOP)
            .expect("its Stop queued");
        assert_eq!(stop.dead_at, None);
        (stopped.cause, stopped.due_at)
    };
    // Due a minute before the new sign-in: Idle-Timeout at its deadline.
    opened(s, login("10.0.0.60", T0, MINUTE)).await;
    assert_eq!(
        preempting("10.0.0.60", T0 + 2 * MINUTE).await,
        (terminate_cause::IDLE_TIMEOUT, T0 + MINUTE)
    );
    // A termination queued at T0 + 10 s and not made yet: Admin-Reset then.
    let terminated = opened(s, login("10.0.0.61", T0, 10 * MINUTE)).await;
    s.queue_session_termination(terminated, "cli:test", T0 + 10_000)
        .await
        .unwrap();
    assert_eq!(
        preempting("10.0.0.61", T0 + 20_000).await,
        (terminate_cause::ADMIN_RESET, T0 + 10_000)
    );
    // Running: Port-Preempted at the new sign-in.
    opened(s, login("10.0.0.62", T0, 10 * MINUTE)).await;
    assert_eq!(
        preempting("10.0.0.62", T0 + 30_000).await,
        (terminate_cause::PORT_PREEMPTED, T0 + 30_000)
    );
}

/// Every accounting server of an organization gone for good: the operator gives up what its
/// ended sessions still wait to send — one session's, or all — never an open session's, one a
/// sender holds, or another organization's.
async fn an_operator_gives_up_the_accounting_of_ended_sessions(db: Db) {
    let s = &db.storage;
    let ended = |ip: &'static str, at: i64, org: &'static str| async move {
        let mut new = login(ip, at, MINUTE);
        new.organization_id = org.into();
        let id = opened(s, new).await;
        assert!(s.stop_session(id, 1, at + 1_000).await.unwrap());
        id
    };
    let stopped = ended("10.0.0.40", T0, "acme").await;
    acknowledge_start(s, stopped, T0).await;
    let never_started = ended("10.0.0.41", T0, "acme").await;
    let open = opened(s, login("10.0.0.42", T0, MINUTE)).await;
    s.seed_organization("beta", "Beta", "{}", None, 1, T0)
        .await
        .unwrap();
    let elsewhere = ended("10.0.0.43", T0, "beta").await;
    assert_eq!(outbox_types(s, never_started).await, [START, STOP]);
    let give_up = |session: Option<i64>| {
        s.give_up(
            "acme",
            GiveUp::EndedSessions {
                session,
                force: true,
            },
            "cli:test",
            T0 + 10 * MINUTE,
        )
    };
    let none = GivenUp::default();
    // A server acknowledged the organization's accounting a moment ago (the Starts): not
    // gone for good — nothing, unless forced.
    assert_eq!(
        s.give_up(
            "acme",
            GiveUp::EndedSessions {
                session: None,
                force: false
            },
            "cli:test",
            T0 + 10 * MINUTE,
        )
        .await
        .unwrap(),
        GivenUp {
            acknowledged_at: Some(T0 + 1),
            ..GivenUp::default()
        }
    );
    // Not tried yet (queued a moment ago): left to be tried.
    assert_eq!(
        give_up(Some(never_started)).await.unwrap(),
        GivenUp {
            not_tried: 2,
            ..GivenUp::default()
        }
    );
    let start = s
        .claim_session_outbox(
            never_started,
            status_type::START,
            T0 + MINUTE,
            T0 + 2 * MINUTE,
        )
        .await
        .unwrap()
        .unwrap();
    s.mark_failed(&start, T0 + MINUTE, "timeout", None)
        .await
        .unwrap();
    // Failing for less than 5 minutes (a failure that may pass): left too.
    assert_eq!(
        s.give_up(
            "acme",
            GiveUp::EndedSessions {
                session: Some(never_started),
                force: true
            },
            "cli:test",
            T0 + 3 * MINUTE,
        )
        .await
        .unwrap(),
        GivenUp {
            not_tried: 2,
            ..GivenUp::default()
        }
    );
    // One session's: its Start and Stop, nothing else.
    assert_eq!(
        give_up(Some(never_started)).await.unwrap(),
        GivenUp {
            given_up: 2,
            being_sent: 0,
            ..GivenUp::default()
        }
    );
    assert_eq!(give_up(Some(open)).await.unwrap(), none, "open");
    assert_eq!(give_up(Some(elsewhere)).await.unwrap(), none, "another's");
    // The Stop a sender holds is left to it, and given up once it is no longer held.
    let stop = s
        .claim_session_outbox(
            stopped,
            status_type::STOP,
            T0 + 2 * MINUTE,
            T0 + 20 * MINUTE,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        give_up(None).await.unwrap(),
        GivenUp {
            given_up: 0,
            being_sent: 1,
            ..GivenUp::default()
        }
    );
    s.mark_failed(&stop, T0 + 3 * MINUTE, "timeout", None)
        .await
        .unwrap();
    assert_eq!(
        give_up(None).await.unwrap(),
        GivenUp {
            given_up: 1,
            being_sent: 0,
            ..GivenUp::default()
        }
    );
    assert_eq!(give_up(None).await.unwrap(), none);
    // The open session's Start and the other organization's rows still wait.
    let mut waiting: Vec<String> = s
        .waiting_rows(10)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.acct_session_id)
        .collect();
    waiting.sort();
    let sid = |ip: &str| format!("sid-{ip}-{T0}");
    assert_eq!(
        waiting,
        [sid("10.0.0.42"), sid("10.0.0.43"), sid("10.0.0.43")]
    );
    let dead = s.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3);
    assert!(
        dead.iter().all(|(row, _, org)| org == "acme"
            && row.dead_reason.as_deref().is_some_and(|r| r.contains(
                "given up by cli:test: the organization's accounting servers gone for good"
            ))),
        "{dead:?}"
    );
    let audited: Vec<_> = s
        .audit_tail(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "accounting.give_up")
        .collect();
    assert_eq!(
        audited.len(),
        2,
        "once per change that gave up: {audited:?}"
    );
    assert!(audited
        .iter()
        .all(|e| e.actor == "cli:test" && e.organization_id.as_deref() == Some("acme")));
    // Each names the sessions it gave up (the audit log outlives the dead letters).
    let mut named: Vec<String> = audited
        .iter()
        .flat_map(|e| {
            let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap();
            detail["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["acct_session_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    named.sort();
    named.dedup();
    let mut dead_sessions: Vec<String> = dead.into_iter().map(|(_, sid, _)| sid).collect();
    dead_sessions.sort();
    dead_sessions.dedup();
    assert_eq!(named, dead_sessions);
}

async fn a_failed_row_waits_and_retry_now_makes_it_due(db: Db) {
    let s = &db.storage;
    let id = opened(s, login("10.0.0.4", T0, MINUTE)).await;
    let row = s
        .claim_session_outbox(id, status_type::START, T0, T0 + MINUTE)
        .await
        .unwrap()
        .unwrap();
    assert!(s
        .claim_session_outbox(id, status_type::START, T0, T0 + MINUTE)
        .await
        .unwrap()
        .is_none());
    // `accounting backlog` lists it with its session and who holds it.
    let waiting = s.waiting_rows(10).await.unwrap();
    assert_eq!(waiting.len(), 1);
    let listed = &waiting[0];
    assert_eq!(
        (
            listed.entry.id,
            listed.entry.status_type,
            listed.acct_session_id.as_str(),
            listed.organization_id.as_str(),
            listed.username.as_str(),
            listed.client_ip.as_str(),
            listed.server_name.as_str(),
            listed.claimed_until,
            listed.entry.copy_to.as_deref(),
        ),
        (
            row.id,
            START,
            format!("sid-10.0.0.4-{T0}").as_str(),
            "acme",
            "user-10.0.0.4",
            "10.0.0.4",
            "primary",
            Some(T0 + MINUTE),
            None,
        )
    );
    s.mark_failed(&row, T0 + 30_000, "timeout", Some("primary"))
        .await
        .unwrap();
    let listed = &s.waiting_rows(10).await.unwrap()[0];
    assert_eq!(
        (
            listed.claimed_until,
            listed.next_attempt_at,
            listed.entry.last_error.as_deref()
        ),
        (None, T0 + 30_000, Some("timeout"))
    );
    // Oldest first, as many as asked; delivered rows are not waiting.
    let later = opened(s, login("10.0.0.5", T0 + 5, MINUTE)).await;
    let both: Vec<i64> = s
        .waiting_rows(10)
        .await
        .unwrap()
        .iter()
        .map(|w| w.entry.id)
        .collect();
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], row.id);
    assert_eq!(s.waiting_rows(1).await.unwrap().len(), 1);
    let second = acknowledge_start(s, later, T0 + 6).await;
    assert_eq!(s.waiting_rows(10).await.unwrap().len(), 1);
    assert!(s
        .claim_due_outbox(T0 + 1, T0 + MINUTE, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.next_outbox_attempt().await.unwrap(), Some(T0 + 30_000));
    // One row made due sooner (a down server's next check handed to it), never later; a
    // delivered one not at all.
    assert!(s.retry_row_at(row.id, T0 + 20_000).await.unwrap());
    assert_eq!(s.next_outbox_attempt().await.unwrap(), Some(T0 + 20_000));
    assert!(s.retry_row_at(row.id, T0 + 25_000).await.unwrap());
    assert_eq!(s.next_outbox_attempt().await.unwrap(), Some(T0 + 20_000));
    assert!(
        !s.retry_row_at(second.id, T0 + 2).await.unwrap(),
        "delivered"
    );
    assert_eq!(s.retry_pending_now(T0 + 2).await.unwrap(), 1);
    let retried = s.claim_due_outbox(T0 + 2, T0 + MINUTE, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].attempts, retried[0].transmissions), (2, 1));
    let entry = &s.session_outbox(id).await.unwrap()[0];
    assert_eq!(entry.last_error.as_deref(), Some("timeout"));
}

async fn a_lapsed_claim_is_renewed_only_by_its_holder_and_a_transmission_always_counts(db: Db) {
    let s = &db.storage;
    let id = opened(s, login("10.0.0.14", T0, MINUTE)).await;
    let first = s
        .claim_session_outbox(id, status_type::START, T0, T0 + 1_000)
        .await
        .unwrap()
        .unwrap();
    // Held and still the holder's after its lease ran out, as long as nobody took it.
    assert!(s.renew_claim(&first, T0 + 5_000).await.unwrap());
    assert!(
        s.claim_due_outbox(T0 + 2_000, T0 + MINUTE, 10)
            .await
            .unwrap()
            .is_empty(),
        "renewed: not claimable"
    );
    // Lapsed and taken by another sender: the first may neither renew nor release it.
    let second = s
        .claim_due_outbox(T0 + 6_000, T0 + MINUTE, 10)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempts, first.attempts + 1);
    assert!(!s.renew_claim(&first, T0 + 9_000).await.unwrap());
    assert_eq!(
        second[0].lease_until,
        T0 + MINUTE,
        "a claimed row says until when"
    );
    // Nor close it: the row, and the session, stay as the second sender has them.
    assert!(!s
        .dead_letter(first.id, Some(first.attempts), T0 + 6_500, "stale", true)
        .await
        .unwrap());
    assert!(s.session(id).await.unwrap().unwrap().active);
    assert!(s.session_outbox(id).await.unwrap()[0].dead_at.is_none());
    // The first sender's packet did go out before it gave up: that counts, while the claim
    // stays the second sender's — so the Start is never taken for one that never left.
    s.mark_failed(&first, T0 + 10_000, "timeout", Some("primary"))
        .await
        .unwrap();
    assert!(
        !s.rollback_unsent_start(id, T0 + 7_000, "login gave up")
            .await
            .unwrap(),
        "claimed by the second sender"
    );
    s.mark_failed(&second[0], T0 + 7_000, "timeout", None)
        .await
        .unwrap();
    assert!(
        !s.rollback_unsent_start(id, T0 + 7_000, "login gave up")
            .await
            .unwrap(),
        "transmitted once: a Stop must follow it"
    );
    let retried = s
        .claim_due_outbox(T0 + 8_000, T0 + MINUTE, 10)
        .await
        .unwrap();
    assert_eq!((retried[0].attempts, retried[0].transmissions), (3, 1));
    // A settled row is nobody's to renew.
    s.mark_delivered(&retried[0], T0 + 8_500, None)
        .await
        .unwrap();
    assert!(!s.renew_claim(&retried[0], T0 + 9_000).await.unwrap());
}

async fn claims_under_way_are_kept_together_and_only_while_they_are_the_senders(db: Db) {
    let s = &db.storage;
    let mut rows = Vec::new();
    for ip in [
        "10.0.0.31",
        "10.0.0.32",
        "10.0.0.33",
        "10.0.0.34",
        "10.0.0.35",
    ] {
        let id = opened(s, login(ip, T0, MINUTE)).await;
        let row = s
            .claim_session_outbox(id, status_type::START, T0, T0 + 30_000)
            .await
            .unwrap()
            .unwrap();
        rows.push(row);
    }
    let [kept, longer, given_up, settled, lapsed] = &rows[..] else {
        unreachable!()
    };
    // Held longer already (a sign-in waiting for replaced sessions' Stops): never shortened.
    assert!(s.renew_claim(longer, T0 + 200_000).await.unwrap());
    s.mark_delivered(settled, T0 + 1_000, None).await.unwrap();
    // Run out and taken by another sender meanwhile: the old claim's token no longer matches.
    assert!(s.renew_claim(lapsed, T0 + 4_500).await.unwrap());
    let taken = s
        .claim_due_outbox(T0 + 5_000, T0 + 35_000, 10)
        .await
        .unwrap();
    assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), [lapsed.id]);
    // Given up by its sender (shutdown, a stranded claim): not taken back.
    assert!(s.renew_claim(given_up, T0 + 5_500).await.unwrap());
    let claims: Vec<(i64, i64)> = rows.iter().map(|r| (r.id, r.attempts)).collect();
    let mut out = s
        .keep_claims(&claims, T0 + 40_000, T0 + 6_000)
        .await
        .unwrap();
    out.sort();
    assert_eq!(
        out,
        [
            (kept.id, kept.attempts, T0 + 40_000),
            (longer.id, longer.attempts, T0 + 200_000)
        ]
    );
    // Kept: nobody else may claim it until then; the others' claims ran out as they were (the
    // other sender's at T0 + 35 s, the given-up one at once).
    let mut retaken: Vec<i64> = s
        .claim_due_outbox(T0 + 39_000, T0 + 60_000, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    retaken.sort();
    assert_eq!(retaken, [given_up.id, lapsed.id]);
    // None at all: nothing written, nothing answered.
    assert!(s
        .keep_claims(&[], T0 + 50_000, T0)
        .await
        .unwrap()
        .is_empty());
}

async fn dead_letters_unblock_and_a_never_sent_start_takes_its_session_along(db: Db) {
    let s = &db.storage;
    // A Start that never went out: rolled back with everything behind it, no Stop follows.
    let unsent = opened(s, login("10.0.0.5", T0, MINUTE)).await;
    s.refresh_session(unsent, T0 + 1, refreshed_until(T0 + 1, T0 + MINUTE))
        .await
        .unwrap();
    assert!(s
        .rollback_unsent_start(unsent, T0 + 2, "login gave up")
        .await
        .unwrap());
    let session = s.session(unsent).await.unwrap().unwrap();
    assert!(!session.active);
    assert_eq!(
        session.terminate_cause,
        Some(i64::from(terminate_cause::NAS_ERROR))
    );
    let rows = s.session_outbox(unsent).await.unwrap();
    assert!(rows.iter().all(|r| r.dead_at.is_some()));
    assert_eq!(rows[0].dead_reason.as_deref(), Some("login gave up"));
    assert_eq!(s.outbox_backlog().await.unwrap(), 0);

    // A claimed Start is not rolled back (the Stop must follow it); dead-lettering it without
    // cascade lets the Stop behind it go.
    let sent = opened(s, login("10.0.0.6", T0, MINUTE)).await;
    let start = s
        .claim_session_outbox(sent, status_type::START, T0, T0 + MINUTE)
        .await
        .unwrap()
        .unwrap();
    assert!(!s
        .rollback_unsent_start(sent, T0 + 2, "login gave up")
        .await
        .unwrap());
    s.stop_session(sent, terminate_cause::USER_REQUEST, T0 + 3)
        .await
        .unwrap();
    assert!(s
        .claim_due_outbox(T0 + 4, T0 + MINUTE, 10)
        .await
        .unwrap()
        .is_empty());
    s.dead_letter(start.id, None, T0 + 5, "cannot be encoded", false)
        .await
        .unwrap();
    let next = s.claim_due_outbox(T0 + 6, T0 + MINUTE, 10).await.unwrap();
    assert_eq!(
        next.iter().map(|r| r.status_type).collect::<Vec<_>>(),
        [STOP]
    );
    let dead = s.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3);
    assert_eq!(dead[0].0.dead_reason.as_deref(), Some("cannot be encoded"));
    assert_eq!(dead[0].2, "acme");
    let snapshot = s.metrics_snapshot(T0 + MINUTE).await.unwrap();
    assert_eq!(snapshot.dead_letters, 3);
    assert_eq!(snapshot.outbox_backlog, 1);
    assert_eq!(
        snapshot.outbox_oldest,
        std::time::Duration::from_millis((MINUTE - 3) as u64)
    );
    assert_eq!(snapshot.dead_stops, 0);

    // A Stop given up counts among the dead Stops (an identity a server may keep); the Stop a
    // never-sent Start takes along does not (no server saw the session).
    s.dead_letter(next[0].id, None, T0 + 7, "cannot be encoded", false)
        .await
        .unwrap();
    let never = opened(s, login("10.0.0.7", T0, MINUTE)).await;
    s.stop_session(never, terminate_cause::USER_REQUEST, T0 + 3)
        .await
        .unwrap();
    let start = s
        .claim_session_outbox(never, status_type::START, T0 + 4, T0 + MINUTE)
        .await
        .unwrap()
        .unwrap();
    s.dead_letter(start.id, Some(start.attempts), T0 + 8, "cancelled", true)
        .await
        .unwrap();
    let snapshot = s.metrics_snapshot(T0 + MINUTE).await.unwrap();
    assert_eq!((snapshot.dead_letters, snapshot.dead_stops), (6, 1));
    assert_eq!(snapshot.dead_stops_last_day, 1);
    // A day after it was given up, it is kept and counted, but no longer among the last day's.
    let day = radius_portal::metrics::DEAD_STOPS_RECENT_MS;
    let snapshot = s.metrics_snapshot(T0 + 7 + day).await.unwrap();
    assert_eq!(snapshot.dead_stops, 1);
    assert_eq!(snapshot.dead_stops_last_day, 0);

    // An active session past its end: overdue once more than 5 s past it (expiry behind or
    // failing), by how far.
    let late = opened(s, login("10.0.0.9", T0, MINUTE)).await;
    let snapshot = s.metrics_snapshot(T0 + MINUTE + 4_000).await.unwrap();
    assert_eq!(snapshot.sessions_overdue, 0);
    let snapshot = s.metrics_snapshot(T0 + MINUTE + 60_000).await.unwrap();
    assert_eq!(
        (snapshot.sessions_overdue, snapshot.oldest_overdue),
        (1, std::time::Duration::from_secs(60))
    );
    s.stop_session(late, terminate_cause::SESSION_TIMEOUT, T0 + MINUTE + 60_000)
        .await
        .unwrap();
    let snapshot = s.metrics_snapshot(T0 + MINUTE + 60_000).await.unwrap();
    assert_eq!(snapshot.sessions_overdue, 0);
}

async fn disconnect_requests_find_sessions_by_id_address_user_and_class(db: Db) {
    let s = &db.storage;
    let mut new = login("10.0.0.7", T0, MINUTE);
    new.classes = vec![vec![0, 0xff, 0x80, 7], b"CACS:group".to_vec()];
    let id = s.open_session(&new).await.unwrap().id;
    let mut other = login("10.0.0.8", T0, MINUTE);
    other.classes = vec![b"CACS:group".to_vec()];
    let other_id = s.open_session(&other).await.unwrap().id;

    let found = |m: SessionMatch| {
        let s = s.clone();
        async move {
            let mut ids: Vec<i64> = s
                .find_active_sessions(&m)
                .await
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        found(SessionMatch::AcctSessionId(new.acct_session_id.clone())).await,
        [id]
    );
    assert_eq!(found(SessionMatch::ClientIp("10.0.0.7".into())).await, [id]);
    assert_eq!(
        found(SessionMatch::UserName(new.username.clone())).await,
        [id]
    );
    assert!(found(SessionMatch::UserName("nobody".into()))
        .await
        .is_empty());
    assert_eq!(
        found(SessionMatch::Class(vec![0, 0xff, 0x80, 7])).await,
        [id]
    );
    assert_eq!(
        found(SessionMatch::Class(b"CACS:group".to_vec())).await,
        [id, other_id]
    );
    assert!(found(SessionMatch::Class(b"CACS:none".to_vec()))
        .await
        .is_empty());
    let session = s
        .session_by_acct_id(&new.acct_session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.classes, new.classes, "Class values byte for byte");
    let listed = s.active_sessions_of(Some("acme"), 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(s.active_sessions_of(None, 1).await.unwrap().len(), 1);
    assert_eq!(
        s.active_session_ids_of("acme").await.unwrap(),
        [id, other_id]
    );
    s.stop_session(id, terminate_cause::ADMIN_RESET, T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        found(SessionMatch::Class(b"CACS:group".to_vec())).await,
        [other_id]
    );
}

async fn periodic_interims_come_due_and_coalesce(db: Db) {
    let s = &db.storage;
    let mut new = login("10.0.0.9", T0, 30 * MINUTE);
    new.interim_interval = Some(300);
    let id = s.open_session(&new).await.unwrap().id;
    // Its Start not acknowledged (a sign-in under way, or cut off: black-box tester R's first
    // defect): no Interim-Update is due, nor queued.
    assert_eq!(s.next_interim().await.unwrap(), None);
    assert_eq!(s.queue_due_interims(T0 + 5 * MINUTE).await.unwrap(), 0);
    assert_eq!(outbox_types(s, id).await, [START]);
    acknowledge_start(s, id, T0).await;
    assert_eq!(s.next_interim().await.unwrap(), Some(T0 + 5 * MINUTE));
    assert_eq!(s.queue_due_interims(T0 + 4 * MINUTE).await.unwrap(), 0);
    assert_eq!(s.queue_due_interims(T0 + 5 * MINUTE).await.unwrap(), 1);
    assert_eq!(s.next_interim().await.unwrap(), Some(T0 + 10 * MINUTE));
    assert_eq!(s.queue_due_interims(T0 + 10 * MINUTE).await.unwrap(), 1);
    // The first was not sent yet: the newer Interim-Update replaced the older one.
    assert_eq!(outbox_types(s, id).await, [START, INTERIM]);
    let interim = s
        .claim_due_outbox(T0 + 10 * MINUTE, T0 + 11 * MINUTE, 10)
        .await
        .unwrap();
    assert_eq!(interim.len(), 1);
    assert_eq!(interim[0].status_type, INTERIM);
    assert_eq!(interim[0].session_time_secs, Some(600));
    s.mark_delivered(&interim[0], T0 + 10 * MINUTE, None)
        .await
        .unwrap();
    // A refresh's Interim-Update counts as the periodic one: the next is an interval after it,
    // not at the 15 minutes the schedule said (two in a row otherwise).
    s.refresh_session(
        id,
        T0 + 12 * MINUTE,
        refreshed_until(T0 + 12 * MINUTE, T0 + 42 * MINUTE),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(s.next_interim().await.unwrap(), Some(T0 + 17 * MINUTE));
    assert_eq!(s.queue_due_interims(T0 + 15 * MINUTE).await.unwrap(), 0);
    assert_eq!(s.queue_due_interims(T0 + 17 * MINUTE).await.unwrap(), 1);
    // A refresh a moment after a periodic Interim-Update (on its way already) restarts the
    // window but queues none of its own: two a few milliseconds apart say nothing more
    // (black-box tester R); the next periodic one stays when it was due.
    let interim = s
        .claim_due_outbox(T0 + 17 * MINUTE, T0 + 18 * MINUTE, 10)
        .await
        .unwrap();
    assert_eq!(interim.len(), 1);
    let queued = outbox_types(s, id).await;
    let moment = T0 + 17 * MINUTE + 40;
    let refreshed = s
        .refresh_session(id, moment, refreshed_until(moment, moment + 30 * MINUTE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refreshed.expires_at, moment + 30 * MINUTE);
    s.mark_delivered(&interim[0], T0 + 17 * MINUTE + 50, None)
        .await
        .unwrap();
    assert_eq!(outbox_types(s, id).await, queued, "none more");
    assert_eq!(s.next_interim().await.unwrap(), Some(T0 + 22 * MINUTE));

    // An operator's stop waiting for the session (a terminate, a disable, asked for while no
    // portal ran): no Interim-Update is due for it, nor queued, until the job is done — its
    // Stop says when the stop was asked for, never later than a queued Interim.
    s.seed_organization("acme", "Acme", "{}", None, 0, T0)
        .await
        .unwrap();
    s.queue_session_termination(id, "cli:jo", T0 + 18 * MINUTE)
        .await
        .unwrap();
    assert_eq!(s.next_interim().await.unwrap(), None);
    assert_eq!(s.queue_due_interims(T0 + 22 * MINUTE).await.unwrap(), 0);
    let job = s.pending_organization_jobs().await.unwrap().remove(0);
    s.finish_organization_job(&job, "was not active", T0 + 22 * MINUTE)
        .await
        .unwrap();
    assert_eq!(s.next_interim().await.unwrap(), Some(T0 + 22 * MINUTE));
    s.set_organization_active("acme", false, "cli:test", T0 + 23 * MINUTE)
        .await
        .unwrap();
    assert_eq!(
        s.next_interim().await.unwrap(),
        None,
        "the disable's job waits"
    );
    assert_eq!(s.queue_due_interims(T0 + 24 * MINUTE).await.unwrap(), 0);
    // Enabled again before the job ran: the job is closed, the session runs on, and so do its
    // Interim-Updates.
    s.set_organization_active("acme", true, "cli:test", T0 + 25 * MINUTE)
        .await
        .unwrap();
    assert_eq!(s.queue_due_interims(T0 + 25 * MINUTE).await.unwrap(), 1);
}

/// A session started 0.9 s into a second and ended 1.2 s later spans Event-Timestamps two
/// seconds apart: its Acct-Session-Time says 2 (its length rounded down would say 1), so a
/// RADIUS server finds Start + Acct-Session-Time = Stop. The same for a Stop at the deadline
/// and an Interim-Update, each queued by its own path (in SQL on PostgreSQL).
async fn session_time_is_the_difference_of_the_event_timestamps(db: Db) {
    let s = &db.storage;
    let started = T0 + 900;
    let by_user = opened(s, login("10.0.2.1", started, MINUTE)).await;
    s.stop_session(by_user, terminate_cause::USER_REQUEST, started + 1_200)
        .await
        .unwrap();
    let expired = opened(s, login("10.0.2.2", started, MINUTE + 300)).await;
    assert_eq!(s.stop_due_sessions(T0 + 2 * MINUTE).await.unwrap().len(), 1);
    let mut with_interims = login("10.0.2.3", started, 30 * MINUTE);
    with_interims.interim_interval = Some(300);
    let interim = opened(s, with_interims).await;
    let start = acknowledge_start(s, interim, started).await;
    let mut sent = vec![(interim, START, start.event_at / 1000, None)];
    assert_eq!(s.queue_due_interims(T0 + 301_100).await.unwrap(), 1);
    // A stop asked for before the session began (another machine's clock): at its start.
    let early = opened(s, login("10.0.2.4", started, MINUTE)).await;
    s.stop_session(early, terminate_cause::ADMIN_RESET, started - 5_000)
        .await
        .unwrap();
    assert_eq!(
        s.session(early).await.unwrap().unwrap().stopped_at,
        Some(started)
    );
    // Nor before an Interim-Update already queued (a stop asked for while no portal ran, run
    // after the restart queued the overdue Interims): at the Interim's time.
    s.stop_session(interim, terminate_cause::ADMIN_RESET, started + 1_000)
        .await
        .unwrap();
    assert_eq!(
        s.session(interim).await.unwrap().unwrap().stopped_at,
        Some(T0 + 301_100)
    );

    // Every row, each session's in order: (session, type, Event-Timestamp, Session-Time).
    // (With the Start acknowledged above.)
    let far = T0 + 60 * MINUTE;
    loop {
        let rows = s.claim_due_outbox(far, far + MINUTE, 100).await.unwrap();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            sent.push((
                row.access_session_id,
                row.status_type,
                row.event_at / 1000,
                row.session_time_secs,
            ));
            s.mark_delivered(&row, far, None).await.unwrap();
        }
    }
    sent.sort();
    let start = started / 1000;
    assert_eq!(
        sent,
        [
            (by_user, START, start, None),
            (by_user, STOP, start + 2, Some(2)),
            (expired, START, start, None),
            (expired, STOP, start + 61, Some(61)),
            (interim, START, start, None),
            (interim, STOP, start + 301, Some(301)),
            (interim, INTERIM, start + 301, Some(301)),
            (early, START, start, None),
            (early, STOP, start, Some(0)),
        ]
    );
}

/// An operator asking twice to terminate a session before the portal got to it queues one
/// job and writes one audit entry; an ended session is not queued at all.
/// Expiry meets a session an operator's stop still waits for (its job not run yet: a replica's
/// lease after a kill -9, a job backing off): asked for before the deadline, the session ends
/// when it was asked for (Admin-Reset), as the job would have ended it; the job then finds it
/// ended. Another session due then ends by its deadline.
async fn a_session_due_while_an_operators_stop_waits_ends_when_it_was_asked_for(db: Db) {
    let s = &db.storage;
    s.seed_organization("acme", "Acme", "{}", None, 0, T0)
        .await
        .unwrap();
    let ended = |id: i64| async move {
        let session = s.session(id).await.unwrap().unwrap();
        assert!(!session.active);
        (session.stopped_at, session.terminate_cause)
    };
    let admin_reset = Some(i64::from(terminate_cause::ADMIN_RESET));
    let idle = Some(i64::from(terminate_cause::IDLE_TIMEOUT));
    let terminated = opened(s, login("10.0.4.1", T0, 2_000)).await;
    let plain = opened(s, login("10.0.4.2", T0, 2_000)).await;
    s.queue_session_termination(terminated, "cli:jo", T0 + 1_000)
        .await
        .unwrap();
    // A refresh while the stop waits does not move the Stop later: it makes the stop.
    assert!(s
        .refresh_session(
            terminated,
            T0 + 1_500,
            refreshed_until(T0 + 1_500, T0 + 3_500)
        )
        .await
        .unwrap()
        .is_none());
    assert_eq!(ended(terminated).await, (Some(T0 + 1_000), admin_reset));
    s.stop_due_sessions(T0 + 3_000).await.unwrap();
    assert_eq!(ended(terminated).await, (Some(T0 + 1_000), admin_reset));
    assert_eq!(ended(plain).await, (Some(T0 + 2_000), idle));

    let disabled = opened(s, login("10.0.4.3", T0 + 5_000, 2_000)).await;
    s.set_organization_active("acme", false, "cli:test", T0 + 6_000)
        .await
        .unwrap();
    s.stop_due_sessions(T0 + 8_000).await.unwrap();
    assert_eq!(ended(disabled).await, (Some(T0 + 6_000), admin_reset));
}

/// Sign-ins whose process stopped while their Start was on its way (a kill -9): their
/// sessions end as the sign-in would have ended them — stopped with NAS-Error at their start,
/// the Start (which may have arrived, even when no transmission was recorded) queued before
/// the Stop. A Start claimed right now (a sign-in under way), acknowledged, or of a session
/// younger than the bound is left alone.
async fn sign_ins_that_never_finished_end_as_they_would_have(db: Db) {
    let s = &db.storage;
    let mut claimed = login("10.0.6.1", T0, MINUTE);
    claimed.start_claimed_until = Some(T0 + 2_000);
    let unrecorded = opened(s, claimed).await;
    let transmitted = opened(s, login("10.0.6.2", T0, MINUTE)).await;
    let row = s
        .claim_session_outbox(transmitted, status_type::START, T0, T0 + 1_000)
        .await
        .unwrap()
        .unwrap();
    s.mark_failed(&row, T0 + 500, "timeout", Some("primary"))
        .await
        .unwrap();
    let delivered = opened(s, login("10.0.6.3", T0, MINUTE)).await;
    let row = s
        .claim_session_outbox(delivered, status_type::START, T0, T0 + 1_000)
        .await
        .unwrap()
        .unwrap();
    s.mark_delivered(&row, T0 + 10, None).await.unwrap();
    let young = opened(s, login("10.0.6.4", T0 + 5_000, MINUTE)).await;

    // The first one's Start is still claimed: a sign-in may be sending it.
    assert_eq!(
        s.end_abandoned_sign_ins(T0 + 5_000, T0 + 1_000)
            .await
            .unwrap(),
        [transmitted]
    );
    assert_eq!(
        s.end_abandoned_sign_ins(T0 + 5_000, T0 + 3_000)
            .await
            .unwrap(),
        [unrecorded]
    );
    let ended = |id: i64| async move {
        let session = s.session(id).await.unwrap().unwrap();
        (session.active, session.stopped_at, session.terminate_cause)
    };
    let nas_error = Some(i64::from(terminate_cause::NAS_ERROR));
    for id in [unrecorded, transmitted] {
        assert_eq!(ended(id).await, (false, Some(T0), nas_error));
        assert_eq!(outbox_types(s, id).await, [START, STOP]);
        let rows = s.session_outbox(id).await.unwrap();
        assert!(rows.iter().all(|r| r.dead_at.is_none()), "{rows:?}");
    }
    assert!(ended(delivered).await.0 && ended(young).await.0);
    assert!(s
        .end_abandoned_sign_ins(T0 + 5_000, T0 + 4_000)
        .await
        .unwrap()
        .is_empty());
}

/// A sign-in's lease on the session it opened (its Start claimed for it) tells a sign-in under
/// way from one whose process died: while the lease runs nothing is ended and the holder is
/// told until when; renewed, it runs longer (never shorter); run out, the session is ended as
/// the sign-in would have ended it — NAS-Error at its start, the Stop behind the Start — once,
/// also with two replicas asking at once. A session whose Start was left to the delivery loop
/// (no lease), or whose Start was acknowledged, is never one to end.
async fn a_sign_in_lease_tells_a_dead_sign_in_from_one_under_way(db: Db) {
    use radius_portal::storage::SignInLease;
    let s = &db.storage;
    let mut signing_in = login("10.0.7.1", T0, 10 * MINUTE);
    signing_in.start_claimed_until = Some(T0 + 2 * MINUTE);
    let id = opened(s, signing_in).await;
    assert_eq!(
        s.end_abandoned_sign_in(id, T0 + MINUTE).await.unwrap(),
        SignInLease::Held(T0 + 2 * MINUTE)
    );
    assert!(s.renew_sign_in(id, T0 + 3 * MINUTE).await.unwrap());
    assert!(s.renew_sign_in(id, T0 + MINUTE).await.unwrap());
    assert_eq!(
        s.end_abandoned_sign_in(id, T0 + 2 * MINUTE + 1)
            .await
            .unwrap(),
        SignInLease::Held(T0 + 3 * MINUTE),
        "renewed, and not shortened"
    );
    assert!(s.session(id).await.unwrap().unwrap().active);

    let other = db.open().await;
    let later = T0 + 3 * MINUTE + 1;
    let (a, b) = tokio::join!(
        s.end_abandoned_sign_in(id, later),
        other.end_abandoned_sign_in(id, later)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| *o != SignInLease::Ended);
    assert_eq!(outcomes, [SignInLease::Ended, SignInLease::None]);
    let session = s.session(id).await.unwrap().unwrap();
    assert_eq!(
        (session.active, session.stopped_at, session.terminate_cause),
        (false, Some(T0), Some(i64::from(terminate_cause::NAS_ERROR)))
    );
    assert_eq!(outbox_types(s, id).await, [START, STOP]);
    assert!(!s.renew_sign_in(id, T0 + 9 * MINUTE).await.unwrap());

    // Its Start left to the delivery loop: nobody's sign-in.
    let unleased = opened(s, login("10.0.7.2", T0, 10 * MINUTE)).await;
    // Its Start waiting for a later attempt is made due at once.
    let start = s
        .claim_session_outbox(unleased, status_type::START, T0, T0 + MINUTE)
        .await
        .unwrap()
        .unwrap();
    s.mark_failed(&start, T0 + 10 * MINUTE, "left", None)
        .await
        .unwrap();
    let due = |at: i64| async move {
        s.claim_due_outbox(at, at, 100)
            .await
            .unwrap()
            .iter()
            .any(|row| row.id == start.id)
    };
    assert!(!due(T0 + 1).await);
    assert!(s.start_due_now(unleased, T0 + 2).await.unwrap());
    assert!(
        !s.start_due_now(unleased, T0 + 2).await.unwrap(),
        "due already"
    );
    assert!(due(T0 + 3).await);
    assert!(!s.renew_sign_in(unleased, T0 + 3 * MINUTE).await.unwrap());
    assert_eq!(
        s.end_abandoned_sign_in(unleased, later).await.unwrap(),
        SignInLease::None
    );
    // Its Start acknowledged: the sign-in succeeded, its user holds the session.
    let mut finished = login("10.0.7.3", T0, 10 * MINUTE);
    finished.start_claimed_until = Some(T0 + 2 * MINUTE);
    let opened_finished = s.open_session(&finished).await.unwrap();
    let start = opened_finished.claimed_start.unwrap();
    s.mark_delivered(&start, T0 + 10, None).await.unwrap();
    assert_eq!(
        s.end_abandoned_sign_in(opened_finished.id, later)
            .await
            .unwrap(),
        SignInLease::None
    );
    for still in [unleased, opened_finished.id] {
        assert!(s.session(still).await.unwrap().unwrap().active);
    }
}

/// A Stop acknowledged after the Start of a newer session of its organization and address
/// (the Stop went after it) has that session's Interim-Update queued in the same write — a
/// replaced session's Stop or any other, a copy too; not a Stop that went first, one recorded a
/// second time, nor one at another address.
async fn a_stop_after_a_newer_start_at_its_address_has_that_session_repeat_itself(db: Db) {
    let s = &db.storage;
    let lease = T0 + 10 * MINUTE;
    let deliver = |id: i64, status: u32, by: Option<&'static str>| async move {
        let row = s
            .claim_session_outbox(id, status, T0 + 3, lease)
            .await
            .unwrap()
            .unwrap();
        let ack = by.map(|by| Acknowledged {
            access_session_id: id,
            by,
            own: "primary",
            stop: status == status_type::STOP,
            after_stops: None,
        });
        let delivered = s.mark_delivered(&row, T0 + 4, ack.as_ref()).await.unwrap();
        (row, delivered)
    };
    let at = |ip: &str, at: i64| {
        let mut new = login(ip, at, 10 * MINUTE);
        new.acct_session_id = format!("sid-{ip}-{at}-again");
        new
    };
    // In order: the replaced session's Stop before its successor's Start.
    let replaced = opened(s, login("10.0.8.1", T0, 10 * MINUTE)).await;
    let successor = opened(s, at("10.0.8.1", T0 + 1)).await;
    assert!(!s.session(replaced).await.unwrap().unwrap().active);
    deliver(replaced, status_type::START, None).await;
    assert_eq!(
        deliver(replaced, status_type::STOP, None).await.1,
        Delivered::default()
    );
    deliver(successor, status_type::START, None).await;
    assert_eq!(outbox_types(s, successor).await, [START]);

    // Late: the successor's Start went first.
    let replaced = opened(s, login("10.0.8.3", T0, 10 * MINUTE)).await;
    let successor = opened(s, at("10.0.8.3", T0 + 1)).await;
    deliver(replaced, status_type::START, None).await;
    deliver(successor, status_type::START, None).await;
    let (stop, delivered) = deliver(replaced, status_type::STOP, None).await;
    assert_eq!(delivered.reasserted, Some(successor));
    assert!(delivered.late, "acknowledged when the Start was: late");
    assert_eq!(outbox_types(s, successor).await, [START, INTERIM]);
    // Recorded a second time (a retried write): nothing more.
    assert_eq!(
        s.mark_delivered(&stop, T0 + 5, None).await.unwrap(),
        Delivered::default()
    );
    assert_eq!(outbox_types(s, successor).await, [START, INTERIM]);

    // Acknowledged before the successor's Start was, recorded after it (its recording waited
    // for a busy database): asserted again to be sure, and not late.
    let replaced = opened(s, login("10.0.8.9", T0, 10 * MINUTE)).await;
    let successor = opened(s, at("10.0.8.9", T0 + 1)).await;
    deliver(replaced, status_type::START, None).await;
    deliver(successor, status_type::START, None).await;
    let stop = s
        .claim_session_outbox(replaced, status_type::STOP, T0 + 2, lease)
        .await
        .unwrap()
        .unwrap();
    let delivered = s.mark_delivered(&stop, T0 + 3, None).await.unwrap();
    assert_eq!(
        delivered,
        Delivered {
            copies: 0,
            reasserted: Some(successor),
            late: false
        }
    );
    assert_eq!(outbox_types(s, successor).await, [START, INTERIM]);

    // A Disconnect's Stop (nothing replaced it) after the next session's Start at the address,
    // acknowledged by another server than the session's: copied, and the copy late too.
    let ended = opened(s, login("10.0.8.4", T0, 10 * MINUTE)).await;
    deliver(ended, status_type::START, None).await;
    assert!(s
        .stop_session(ended, terminate_cause::USER_REQUEST, T0 + 1)
        .await
        .unwrap());
    let next = opened(s, at("10.0.8.4", T0 + 2)).await;
    deliver(next, status_type::START, None).await;
    let (_, delivered) = deliver(ended, status_type::STOP, Some("backup")).await;
    assert_eq!(
        delivered,
        Delivered {
            copies: 1,
            reasserted: Some(next),
            late: true
        }
    );
    let copy = s
        .claim_session_copies(ended, T0 + 5, lease)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(copy.copy_to.as_deref(), Some("primary"));
    assert_eq!(
        s.mark_delivered(&copy, T0 + 6, None)
            .await
            .unwrap()
            .reasserted,
        Some(next)
    );
    // Coalesced: one Interim-Update waits.
    assert_eq!(outbox_types(s, next).await, [START, INTERIM]);

    // Another address's session: nothing.
    let elsewhere = opened(s, login("10.0.8.2", T0 + 1, 10 * MINUTE)).await;
    deliver(elsewhere, status_type::START, None).await;
    assert!(s
        .stop_session(elsewhere, terminate_cause::USER_REQUEST, T0 + 2)
        .await
        .unwrap());
    assert_eq!(
        deliver(elsewhere, status_type::STOP, None).await.1,
        Delivered::default()
    );
    for id in [successor, next] {
        assert!(s.session(id).await.unwrap().unwrap().active);
    }

    // A sign-in whose Start left (at `since`) while an earlier session's Stop was still on its
    // way: that Stop acknowledged since, it re-asserts itself once its Start is acknowledged
    // (the Stop's recording came first and saw no Start to re-assert); acknowledged before
    // the Start left, it does not.
    let ended = opened(s, login("10.0.8.7", T0, 10 * MINUTE)).await;
    deliver(ended, status_type::START, None).await;
    assert!(s
        .stop_session(ended, terminate_cause::USER_REQUEST, T0 + 1)
        .await
        .unwrap());
    let next = opened(s, at("10.0.8.7", T0 + 2)).await;
    deliver(ended, status_type::STOP, None).await; // acknowledged at T0 + 4
    deliver(next, status_type::START, None).await;
    assert_eq!(outbox_types(s, next).await, [START]);
    fn after(earlier: &[i64], since: i64, left: i64) -> AfterStops<'_> {
        AfterStops {
            earlier,
            since,
            left,
        }
    }
    let (just_ended, both) = (&[ended][..], &[elsewhere, ended][..]);
    assert_eq!(
        s.reassert_after_stops(next, &after(just_ended, T0 + 5, T0 + 5), T0 + 6)
            .await
            .unwrap(),
        None
    );
    assert_eq!(outbox_types(s, next).await, [START]);
    // Acknowledged within the replicas' clock skew before the Start left: asserted again to
    // be sure, not late.
    assert_eq!(
        s.reassert_after_stops(next, &after(both, T0 + 3, T0 + 5), T0 + 6)
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(outbox_types(s, next).await, [START, INTERIM]);
    // Acknowledged after the Start left: late (the Interim-Update not yet on its way is
    // superseded: one waits).
    assert_eq!(
        s.reassert_after_stops(next, &after(just_ended, T0 + 3, T0 + 4), T0 + 6)
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(outbox_types(s, next).await, [START, INTERIM]);
    // Nor for a session that ended meanwhile.
    assert!(s
        .stop_session(next, terminate_cause::USER_REQUEST, T0 + 7)
        .await
        .unwrap());
    assert_eq!(
        s.reassert_after_stops(next, &after(just_ended, T0 + 3, T0 + 3), T0 + 8)
            .await
            .unwrap(),
        None
    );

    // Nor one past its deadline (its Stop is dated then).
    let ended = opened(s, login("10.0.8.6", T0, 10 * MINUTE)).await;
    deliver(ended, status_type::START, None).await;
    assert!(s
        .stop_session(ended, terminate_cause::USER_REQUEST, T0 + 1)
        .await
        .unwrap());
    let mut short = at("10.0.8.6", T0 + 2);
    short.expires_at = T0 + 3;
    let next = opened(s, short).await;
    deliver(next, status_type::START, None).await;
    assert_eq!(
        deliver(ended, status_type::STOP, None).await.1,
        Delivered::default()
    );
    assert_eq!(outbox_types(s, next).await, [START]);

    // A session a disable's stop waits for gets none (it is about to end; its Stop is dated
    // when the disable was asked for).
    let ended = opened(s, login("10.0.8.5", T0, 10 * MINUTE)).await;
    deliver(ended, status_type::START, None).await;
    assert!(s
        .stop_session(ended, terminate_cause::USER_REQUEST, T0 + 1)
        .await
        .unwrap());
    let next = opened(s, at("10.0.8.5", T0 + 2)).await;
    deliver(next, status_type::START, None).await;
    s.set_organization_active("acme", false, "cli:test", T0 + 3)
        .await
        .unwrap();
    assert_eq!(
        deliver(ended, status_type::STOP, None).await.1,
        Delivered::default()
    );
    assert_eq!(outbox_types(s, next).await, [START]);
}

/// Claims session `id`'s next row of `status`, due at `at`, for the rest of ten minutes.
async fn claim_due(s: &Storage, id: i64, status: u32, at: i64) -> OutboxRow {
    s.claim_session_outbox(id, status, at, T0 + 10 * MINUTE)
        .await
        .unwrap()
        .unwrap()
}

/// A session at `ip` opened at `T0`, its Start acknowledged, ended by its user at `T0 + 1` (its
/// Stop queued); and the next session there, opened at `next_at`.
async fn ended_then_next(s: &Storage, ip: &str, next_at: i64) -> (i64, i64) {
    let ended = opened(s, login(ip, T0, 10 * MINUTE)).await;
    let start = claim_due(s, ended, status_type::START, T0).await;
    s.mark_delivered(&start, T0 + 1, None).await.unwrap();
    assert!(s
        .stop_session(ended, terminate_cause::USER_REQUEST, T0 + 1)
        .await
        .unwrap());
    let mut again = login(ip, next_at, 10 * MINUTE);
    again.acct_session_id = format!("sid-{ip}-{next_at}-again");
    (ended, opened(s, again).await)
}

/// The Interim-Update that asserts a session's user again after a late Stop at its address
/// goes, as a copy, to each other server that may hold the session open too (its Start went
/// there unanswered, then failed over): that server may have had the late Stop after the
/// session's Start as well. A refresh's or an interval's Interim-Update has no copies, and
/// leaves those waiting.
async fn a_late_stops_interim_update_goes_to_every_server_that_may_hold_the_session(db: Db) {
    let s = &db.storage;
    let claim = |id: i64, status: u32, at: i64| claim_due(s, id, status, at);
    let interims = |id: i64| async move {
        s.session_outbox(id)
            .await
            .unwrap()
            .into_iter()
            .filter(|row| row.status_type == INTERIM && row.delivered_at.is_none())
            .map(|row| row.copy_to)
            .collect::<Vec<_>>()
    };
    let (ended, next) = ended_then_next(s, "10.0.9.5", T0 + 2).await;
    // The new Start went to "silent" unanswered, then "primary" acknowledged it.
    let start = claim(next, status_type::START, T0 + 2).await;
    s.mark_failed(&start, T0 + 3, "timeout", Some("silent"))
        .await
        .unwrap();
    let start = claim(next, status_type::START, T0 + 3).await;
    s.mark_delivered(&start, T0 + 4, None).await.unwrap();
    assert_eq!(interims(next).await, Vec::<Option<String>>::new());
    // The earlier session's Stop, late.
    let stop = claim(ended, status_type::STOP, T0 + 5).await;
    assert_eq!(
        s.mark_delivered(&stop, T0 + 6, None)
            .await
            .unwrap()
            .reasserted,
        Some(next)
    );
    assert_eq!(interims(next).await, [None, Some("silent".to_string())]);
    // A refresh's Interim-Update supersedes the session's own, not the copy.
    s.refresh_session(next, T0 + 7, refreshed_until(T0 + 7, T0 + 10 * MINUTE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(interims(next).await, [Some("silent".to_string()), None]);

    // The session ends, and its Stop is acknowledged by "silent" (a failover) while the copy
    // waits for it: the Stop is copied there too, behind that copy (which might be on its way
    // already, and arrive after the Stop).
    assert!(s
        .stop_session(next, terminate_cause::USER_REQUEST, T0 + 8)
        .await
        .unwrap());
    let interim = claim(next, status_type::INTERIM_UPDATE, T0 + 8).await;
    s.mark_delivered(&interim, T0 + 8, None).await.unwrap();
    let stop = claim(next, status_type::STOP, T0 + 9).await;
    let by_silent = Acknowledged {
        access_session_id: next,
        by: "silent",
        own: "primary",
        stop: true,
        after_stops: None,
    };
    let delivered = s
        .mark_delivered(&stop, T0 + 9, Some(&by_silent))
        .await
        .unwrap();
    assert_eq!(delivered.copies, 2);
    let mut copied: Vec<Option<String>> = s
        .session_outbox(next)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.status_type == STOP && row.copy_to.is_some())
        .map(|row| row.copy_to)
        .collect();
    copied.sort();
    assert_eq!(
        copied,
        [Some("primary".to_string()), Some("silent".to_string())]
    );
}

/// The Interim-Update a late Stop queues is never dated before its session's start: the
/// recording's clock was read before its write waited its turn, and the session opened (and
/// had its Start acknowledged) meanwhile.
async fn a_late_stops_interim_update_is_never_dated_before_its_sessions_start(db: Db) {
    let s = &db.storage;
    let claim = |id: i64, status: u32, at: i64| claim_due(s, id, status, at);
    let (ended, next) = ended_then_next(s, "10.0.9.8", T0 + 50).await;
    let start = claim(next, status_type::START, T0 + 50).await;
    s.mark_delivered(&start, T0 + 51, None).await.unwrap();
    let stop = claim(ended, status_type::STOP, T0 + 51).await;
    assert_eq!(
        s.mark_delivered(&stop, T0 + 20, None)
            .await
            .unwrap()
            .reasserted,
        Some(next)
    );
    let interim = claim(next, status_type::INTERIM_UPDATE, T0 + 60).await;
    assert!(interim.event_at >= T0 + 50, "{interim:?}");
}

/// A sign-in's Start sent while an earlier session's Stop at its address was on its way makes
/// the sign-in's look for that Stop in its own recording: acknowledged since the Start left,
/// the session's Interim-Update is queued in that write (nothing between the two for a crash
/// to fall into); acknowledged before, none. Recorded already (by another sender, which made
/// no look), the look is made all the same — one Interim-Update waits, not two.
async fn a_sign_ins_start_recorded_after_a_late_stop_repeats_itself_in_the_same_write(db: Db) {
    let s = &db.storage;
    let claim = |id: i64, status: u32| claim_due(s, id, status, T0 + 3);
    let record = |row: OutboxRow, at: i64, earlier: Vec<i64>, since: i64| async move {
        let ack = Acknowledged {
            access_session_id: row.access_session_id,
            by: "primary",
            own: "primary",
            stop: false,
            after_stops: Some(AfterStops {
                earlier: &earlier,
                since,
                left: since,
            }),
        };
        s.mark_delivered(&row, at, Some(&ack)).await.unwrap()
    };
    let again = |ip: &str, at: i64| {
        let mut new = login(ip, at, 10 * MINUTE);
        new.acct_session_id = format!("sid-{ip}-{at}-again");
        new
    };
    for (ip, stop_acknowledged, reasserted) in
        [("10.0.9.1", T0 + 6, true), ("10.0.9.2", T0 + 4, false)]
    {
        let (ended, next) = ended_then_next(s, ip, T0 + 2).await;
        // The new Start leaves at T0 + 5; the earlier session's Stop is acknowledged at
        // `stop_acknowledged`, before the Start's acknowledgement is recorded at T0 + 7.
        let start = claim(next, status_type::START).await;
        let stop = claim(ended, status_type::STOP).await;
        assert_eq!(
            s.mark_delivered(&stop, stop_acknowledged, None)
                .await
                .unwrap(),
            Delivered::default(),
            "{ip}: the Stop's recording sees no acknowledged Start to re-assert"
        );
        let delivered = record(start.clone(), T0 + 7, vec![ended], T0 + 5).await;
        assert_eq!(
            delivered.reasserted,
            reasserted.then_some(next),
            "{ip}: the Start's recording made the look"
        );
        assert_eq!(
            delivered.late, reasserted,
            "{ip}: acknowledged after the Start left"
        );
        let expected: &[i64] = if reasserted {
            &[START, INTERIM]
        } else {
            &[START]
        };
        assert_eq!(outbox_types(s, next).await, expected, "{ip}");
        // Recorded a second time: the look again, one Interim-Update still.
        assert_eq!(
            record(start, T0 + 8, vec![ended], T0 + 5).await.reasserted,
            reasserted.then_some(next),
            "{ip}: a second recording"
        );
        assert_eq!(outbox_types(s, next).await, expected, "{ip}");
        // Recorded first by a sender that made no look: the sign-in's recording makes it.
        if reasserted {
            let again = opened(s, again(ip, T0 + 9)).await;
            let start = claim(again, status_type::START).await;
            s.mark_delivered(&start, T0 + 10, None).await.unwrap();
            assert_eq!(
                record(start, T0 + 11, vec![ended], T0 + 5).await.reasserted,
                Some(again),
                "{ip}: recorded first without the look"
            );
            assert_eq!(outbox_types(s, again).await, [START, INTERIM], "{ip}");
        }
    }
}

async fn a_session_termination_is_queued_once(db: Db) {
    use radius_portal::storage::Termination;
    let s = &db.storage;
    s.seed_organization("acme", "Acme", "{}", None, 0, T0)
        .await
        .unwrap();
    let id = opened(s, login("10.0.3.1", T0, 10 * MINUTE)).await;
    let ask = || s.queue_session_termination(id, "cli:jo", T0 + 1);
    assert_eq!(s.stop_asked_for(id).await.unwrap(), None);
    assert_eq!(ask().await.unwrap(), Termination::Queued);
    assert_eq!(s.stop_asked_for(id).await.unwrap(), Some(T0 + 1));
    assert_eq!(
        ask().await.unwrap(),
        Termination::AlreadyQueued { asked_at: T0 + 1 }
    );
    let jobs = s.pending_organization_jobs().await.unwrap();
    assert_eq!(
        jobs.iter()
            .filter(|j| j.access_session_id == Some(id))
            .count(),
        1,
        "{jobs:?}"
    );
    let audited = s.audit_tail(100).await.unwrap();
    assert_eq!(
        audited
            .iter()
            .filter(|e| e.action == "session.terminate")
            .count(),
        1
    );
    s.stop_session(id, terminate_cause::ADMIN_RESET, T0 + 2)
        .await
        .unwrap();
    assert_eq!(ask().await.unwrap(), Termination::NotActive);
    assert_eq!(
        s.stop_asked_for(id).await.unwrap(),
        None,
        "ended: nothing waits"
    );
    // The refusal is audited (who tried to end what), the queued one not again.
    let audited = s.audit_tail(100).await.unwrap();
    let asked: Vec<&str> = audited
        .iter()
        .filter(|e| e.action == "session.terminate")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[1].contains("\"refused\":\"not active\""), "{asked:?}");

    // Two operators at once, through two processes' handles: one job between them.
    let other = db.open().await;
    let id = opened(s, login("10.0.3.2", T0, 10 * MINUTE)).await;
    let (a, b) = tokio::join!(
        s.queue_session_termination(id, "cli:jo", T0 + 3),
        other.queue_session_termination(id, "cli:kim", T0 + 3)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|t| *t != Termination::Queued);
    assert_eq!(
        outcomes,
        [
            Termination::Queued,
            Termination::AlreadyQueued { asked_at: T0 + 3 }
        ],
        "one queued, the other found it"
    );
    // Its organization's disable, asked for earlier than nothing: the earliest stop counts.
    let third = opened(s, login("10.0.3.3", T0, 10 * MINUTE)).await;
    s.set_organization_active("acme", false, "cli:jo", T0 + 4)
        .await
        .unwrap();
    assert_eq!(s.stop_asked_for(third).await.unwrap(), Some(T0 + 4));
    assert_eq!(s.stop_asked_for(id).await.unwrap(), Some(T0 + 3));
    // A termination asked for after it: the disable's stop is the one made, and the answer says
    // so (black-box tester M's D1); it is queued all the same (an enable skips the disable's
    // stop, not the operator's: the whole-change review's M1), and audited as asked behind it.
    let jobs = s.pending_organization_jobs().await.unwrap().len();
    assert_eq!(
        s.queue_session_termination(third, "cli:jo", T0 + 5)
            .await
            .unwrap(),
        Termination::QueuedBehindDisable {
            disable_asked_at: T0 + 4
        }
    );
    assert_eq!(s.pending_organization_jobs().await.unwrap().len(), jobs + 1);
    let asked = s.audit_tail(1).await.unwrap().remove(0);
    assert_eq!(asked.action, "session.terminate");
    assert!(
        asked
            .detail
            .contains(&format!("\"behind_disable_asked_at\":{}", T0 + 4)),
        "{}",
        asked.detail
    );
    assert_eq!(s.stop_asked_for(third).await.unwrap(), Some(T0 + 4));
    // Asked again: one is waiting, whose Stop is dated at the disable, the earlier.
    assert_eq!(
        s.queue_session_termination(third, "cli:jo", T0 + 5)
            .await
            .unwrap(),
        Termination::AlreadyQueued { asked_at: T0 + 4 }
    );
    // Enabled before the disable's stop: the termination still stops it.
    s.set_organization_active("acme", true, "cli:jo", T0 + 6)
        .await
        .unwrap();
    assert_eq!(s.stop_asked_for(third).await.unwrap(), Some(T0 + 5));
}

async fn a_dynamic_authorization_request_is_acted_on_once_until_it_expires(db: Db) {
    let s = &db.storage;
    let other = db.open().await;
    let (request, until) = ("10.0.0.9:00112233", T0 + 600_000);
    // A Disconnect-ACK's and a Disconnect-NAK's first bytes (their codes).
    let (ack, nak) = (vec![41u8, 7, 0, 20], vec![42u8, 7, 0, 26]);
    assert_eq!(s.dynauth_answer_given(request, T0).await.unwrap(), None);
    s.record_dynauth_answer(request, ack.clone(), until, T0)
        .await
        .unwrap();
    // Another process, another replica: the answer given.
    assert_eq!(
        other.dynauth_answer_given(request, T0 + 1).await.unwrap(),
        Some(ack.clone())
    );
    // Recorded again while the first stands (a replica that acted on it too, before the first
    // answer was recorded, and found the session ended: NAK 503): the first answer stands —
    // a later retransmission is told what was done, not that nothing was found.
    other
        .record_dynauth_answer(request, nak.clone(), until, T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        s.dynauth_answer_given(request, T0 + 3).await.unwrap(),
        Some(ack.clone())
    );
    // Expired: not an answer any more, and dropped by the next record.
    assert_eq!(s.dynauth_answer_given(request, until).await.unwrap(), None);
    s.record_dynauth_answer("10.0.0.9:44", ack.clone(), until + 600_000, until)
        .await
        .unwrap();
    assert_eq!(s.dynauth_answer_given(request, T0).await.unwrap(), None);
    assert_eq!(
        other
            .dynauth_answer_given("10.0.0.9:44", until)
            .await
            .unwrap(),
        Some(ack.clone())
    );
    // The other way round (the NAK recorded first): the ACK takes its place — it is what
    // was done.
    let other_request = "10.0.0.9:44556677";
    s.record_dynauth_answer(other_request, nak.clone(), until + 600_000, until)
        .await
        .unwrap();
    other
        .record_dynauth_answer(other_request, ack.clone(), until + 600_000, until + 1)
        .await
        .unwrap();
    assert_eq!(
        s.dynauth_answer_given(other_request, until + 2)
            .await
            .unwrap(),
        Some(ack.clone())
    );
}

/// An expiry sweep goes in chunks (the storage review's F4 of session 82: one write on
/// SQLite): at most `limit` sessions a write, those due first; a short chunk says none due is
/// left.
async fn due_sessions_stop_in_chunks_earliest_first(db: Db) {
    let s = &db.storage;
    let mut due = Vec::new();
    for n in 0..5 {
        due.push(opened(s, login(&format!("10.0.3.{}", n + 1), T0, MINUTE + n)).await);
    }
    let later = opened(s, login("10.0.3.9", T0, 10 * MINUTE)).await;
    let now = T0 + 2 * MINUTE;
    let first = s.stop_due_chunk(now, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|st| st.id).collect::<Vec<_>>(),
        due[..2],
        "the two due first"
    );
    assert_eq!(s.stop_due_chunk(now, 2).await.unwrap().len(), 2);
    assert_eq!(
        s.stop_due_chunk(now, 2).await.unwrap().len(),
        1,
        "the last, short chunk"
    );
    assert!(s.stop_due_chunk(now, 2).await.unwrap().is_empty());
    for id in &due {
        assert!(s.session(*id).await.unwrap().unwrap().stopped_at.is_some());
    }
    assert!(s
        .session(later)
        .await
        .unwrap()
        .unwrap()
        .stopped_at
        .is_none());
    assert_eq!(
        s.stop_due_sessions(T0 + 11 * MINUTE).await.unwrap().len(),
        1
    );
}

/// Pruning goes in chunks (the storage review's F2 of session 82): at most `limit` sessions a
/// write, those that ended first; a chunk short of `limit` says nothing older is left.
async fn pruning_goes_in_chunks_oldest_first(db: Db) {
    let s = &db.storage;
    let mut ended = Vec::new();
    for n in 0..5 {
        let id = opened(s, login(&format!("10.0.2.{}", n + 1), T0, MINUTE)).await;
        s.stop_session(id, terminate_cause::USER_REQUEST, T0 + 1 + n)
            .await
            .unwrap();
        ended.push(id);
    }
    for row in s.claim_due_outbox(T0 + 10, T0 + MINUTE, 100).await.unwrap() {
        s.mark_delivered(&row, T0 + 10, None).await.unwrap();
    }
    for row in s.claim_due_outbox(T0 + 11, T0 + MINUTE, 100).await.unwrap() {
        s.mark_delivered(&row, T0 + 11, None).await.unwrap();
    }
    assert_eq!(s.outbox_backlog().await.unwrap(), 0);
    let before = T0 + 10 * MINUTE;
    assert_eq!(s.prune(before, 2).await.unwrap(), 2);
    for (n, id) in ended.iter().enumerate() {
        assert_eq!(
            s.session(*id).await.unwrap().is_none(),
            n < 2,
            "the two that ended first went: session {n}"
        );
    }
    assert_eq!(s.prune(before, 2).await.unwrap(), 2);
    assert_eq!(
        s.prune(before, 2).await.unwrap(),
        1,
        "the last, short chunk"
    );
    assert_eq!(s.prune(before, 2).await.unwrap(), 0);
    for id in ended {
        assert!(s.session(id).await.unwrap().is_none());
        assert!(s.session_outbox(id).await.unwrap().is_empty());
    }
}

async fn pruning_keeps_what_is_pending(db: Db) {
    let s = &db.storage;
    let old = opened(s, login("10.0.1.1", T0, MINUTE)).await;
    let pending = opened(s, login("10.0.1.2", T0, MINUTE)).await;
    let active = opened(s, login("10.0.1.3", T0, 600 * MINUTE)).await;
    for id in [old, pending] {
        s.stop_session(id, terminate_cause::USER_REQUEST, T0 + 1)
            .await
            .unwrap();
    }
    for row in s.claim_due_outbox(T0 + 2, T0 + MINUTE, 10).await.unwrap() {
        s.mark_delivered(&row, T0 + 2, None).await.unwrap();
    }
    for row in s.claim_due_outbox(T0 + 3, T0 + MINUTE, 10).await.unwrap() {
        if row.access_session_id == old {
            s.mark_delivered(&row, T0 + 3, None).await.unwrap();
        }
    }
    assert_eq!(s.prune(T0 + 10 * MINUTE, 1_000).await.unwrap(), 1);
    assert!(s.session(old).await.unwrap().is_none());
    assert!(
        s.session(pending).await.unwrap().is_some(),
        "its Stop is not delivered yet"
    );
    assert!(s.session(active).await.unwrap().is_some());
    assert_eq!(s.outbox_backlog().await.unwrap(), 1);
}

/// At start-up, an organization the file no longer lists is disabled (its stop job queued,
/// audited by `config`) and no longer the file's — both in one call, one transaction.
async fn an_organization_the_file_no_longer_lists_is_disabled_and_unlisted_together(db: Db) {
    let s = &db.storage;
    let acme = |orgs: Vec<radius_portal::storage::StoredOrganization>| {
        orgs.into_iter().find(|o| o.id == "acme").unwrap()
    };
    let before = acme(s.organizations().await.unwrap());
    assert!(before.active && before.from_config);
    let retired = s.retire_from_config("acme", T0).await.unwrap().unwrap();
    assert!(retired.changed);
    let after = acme(s.organizations().await.unwrap());
    assert!(!after.active && !after.from_config, "{after:?}");
    assert!(after.revision > before.revision);
    let jobs = s.pending_organization_jobs().await.unwrap();
    assert!(jobs.iter().any(|j| j.organization_id == "acme"), "{jobs:?}");
    let audited = s.audit_tail(5).await.unwrap();
    assert!(
        audited.iter().any(|e| e.action == "org.disable"
            && e.actor == "config"
            && e.detail
                .contains("no longer listed in the configuration file")),
        "{audited:?}"
    );
    // Again: nothing more changes; an organization that is not there is none.
    assert!(
        !s.retire_from_config("acme", T0)
            .await
            .unwrap()
            .unwrap()
            .changed
    );
    assert!(s.retire_from_config("nope", T0).await.unwrap().is_none());
}

async fn organization_changes_are_revisioned_audited_and_guarded(db: Db) {
    let s = &db.storage;
    assert_eq!(
        s.seed_organization("acme", "Acme", "{}", None, 0, T0)
            .await
            .unwrap(),
        SeedOutcome::Unchanged
    );
    assert_eq!(
        s.seed_organization("acme", "Acme Corp", "{}", None, 0, T0)
            .await
            .unwrap(),
        SeedOutcome::Updated(vec!["name".to_string()])
    );
    let beta = r#"{"a":1,"servers":[{"name":"ise","address":"10.0.0.9","auth_port":1812,"acct_port":1813,"secret":"s3cr3t-value"}]}"#;
    assert_eq!(
        s.seed_organization("beta", "Beta", beta, Some(false), 1, T0)
            .await
            .unwrap(),
        SeedOutcome::Created
    );
    // Created from the file: audited with its servers, never their secrets.
    let created = s.audit_tail(10).await.unwrap();
    let created = created
        .iter()
        .find(|e| e.action == "org.create" && e.organization_id.as_deref() == Some("beta"))
        .expect("audited");
    assert!(
        created.detail.contains("\"ise\"") && created.detail.contains("10.0.0.9"),
        "{}",
        created.detail
    );
    assert!(!created.detail.contains("s3cr3t"), "{}", created.detail);
    let orgs = s.organizations().await.unwrap();
    assert_eq!(
        orgs.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        ["acme", "beta"]
    );
    assert!(orgs[0].active && !orgs[1].active && orgs[1].from_config);
    let revision = orgs[0].revision;

    let detail = serde_json::json!({ "by": "test" });
    let write = |id: &'static str, name: &'static str, expected_revision| OrganizationWrite {
        id,
        name,
        settings_json: "{}",
        actor: "cli:test",
        now: T0 + 1,
        detail: &detail,
        expected_revision,
        servers_freed: &[],
        copies_since: 0,
    };
    assert!(s
        .create_organization(&write("gamma", "Gamma", None), true)
        .await
        .unwrap());
    assert!(!s
        .create_organization(&write("gamma", "Gamma", None), true)
        .await
        .unwrap());
    assert_eq!(
        s.update_organization(&write("acme", "Acme 2", Some(revision - 1)), true)
            .await
            .unwrap(),
        UpdateOutcome::Stale
    );
    assert_eq!(
        s.update_organization(&write("acme", "Acme 2", Some(revision)), true)
            .await
            .unwrap(),
        UpdateOutcome::Updated
    );
    assert_eq!(
        s.update_organization(&write("beta", "Beta 2", None), true)
            .await
            .unwrap(),
        UpdateOutcome::Disabled
    );
    assert_eq!(
        s.update_organization(&write("nope", "x", None), false)
            .await
            .unwrap(),
        UpdateOutcome::NotFound
    );
    assert!(s.organization("acme").await.unwrap().unwrap().revision > revision);

    // Deleting: refused while configured or busy; once done, the history stays in the audit log.
    assert_eq!(
        s.delete_organization("beta", "cli:test", T0, &detail)
            .await
            .unwrap(),
        DeleteOutcome::FromConfig
    );
    let mut new = login("10.0.2.1", T0, MINUTE);
    new.organization_id = "gamma".into();
    let id = s.open_session(&new).await.unwrap().id;
    assert_eq!(
        s.sessions_needing_server("gamma", "primary").await.unwrap(),
        1
    );
    assert_eq!(
        s.delete_organization("gamma", "cli:test", T0, &detail)
            .await
            .unwrap(),
        DeleteOutcome::Busy {
            open_sessions: 1,
            pending_accounting: 1
        }
    );
    // Ended sessions beside it: their history is deleted in chunks before the organization
    // (the storage review's F7 of session 82) — never while the delete is refused.
    let mut ended = Vec::new();
    for n in 2..4 {
        let mut new = login(&format!("10.0.2.{n}"), T0, MINUTE);
        new.organization_id = "gamma".into();
        let other = s.open_session(&new).await.unwrap().id;
        s.stop_session(other, terminate_cause::USER_REQUEST, T0 + 1)
            .await
            .unwrap();
        ended.push(other);
    }
    // Their accounting delivered (the open session's Start not yet).
    loop {
        let rows: Vec<_> = s
            .claim_due_outbox(T0 + 2, T0 + MINUTE, 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|row| ended.contains(&row.access_session_id))
            .collect();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            s.mark_delivered(&row, T0 + 2, None).await.unwrap();
        }
    }
    assert!(matches!(
        s.delete_organization("gamma", "cli:test", T0, &detail)
            .await
            .unwrap(),
        DeleteOutcome::Busy { .. }
    ));
    assert_eq!(s.forget_ended_sessions("gamma", 10).await.unwrap(), 0);
    for other in &ended {
        assert!(
            s.session(*other).await.unwrap().is_some(),
            "kept while refused"
        );
    }
    let StopOutcome::Queued(terminate_cause::ADMIN_RESET) = s
        .stop_session_claiming(id, terminate_cause::ADMIN_RESET, T0 + 1, T0 + MINUTE)
        .await
        .unwrap()
    else {
        panic!("the Stop waits behind the Start")
    };
    loop {
        // The open session's Start, claimed above, is claimable again once its lease ran out.
        let rows = s
            .claim_due_outbox(T0 + 2 * MINUTE, T0 + 3 * MINUTE, 10)
            .await
            .unwrap();
        if rows.is_empty() {
            break;
        }
        for row in rows {
            s.mark_delivered(&row, T0 + 2 * MINUTE, None).await.unwrap();
        }
    }
    assert_eq!(s.forget_ended_sessions("gamma", 2).await.unwrap(), 2);
    assert!(
        s.session(id).await.unwrap().is_none(),
        "the lowest ids first"
    );
    assert!(s.session(ended[0]).await.unwrap().is_none());
    assert!(s.session(ended[1]).await.unwrap().is_some());
    assert_eq!(
        s.delete_organization("gamma", "cli:test", T0 + 3, &detail)
            .await
            .unwrap(),
        DeleteOutcome::Deleted
    );
    assert!(s.session(ended[1]).await.unwrap().is_none());
    assert!(s.session(id).await.unwrap().is_none());
    assert_eq!(s.organization_active("gamma").await.unwrap(), None);
    s.audit(&Audit {
        at: T0 + 4,
        actor: "portal",
        action: "guard.denied",
        organization_id: Some("beta"),
        detail,
    })
    .await
    .unwrap();
    let actions: Vec<String> = s
        .audit_tail(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for action in [
        "org.create",
        "org.update",
        "org.delete",
        "login.accepted",
        "guard.denied",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} audited: {actions:?}"
        );
    }
    assert_eq!(actions.last().map(String::as_str), Some("guard.denied"));
    // In chunks: the oldest first, then the rest.
    let all = s.audit_tail(100).await.unwrap();
    let entries = all.len() as u64;
    assert!(entries > 2, "{actions:?}");
    let mut by_age: Vec<(i64, i64)> = all.iter().map(|e| (e.at, e.id)).collect();
    by_age.sort();
    assert_eq!(s.prune_audit(T0 + 10, 2).await.unwrap(), 2);
    let left: Vec<i64> = s
        .audit_tail(100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left.len() as u64, entries - 2);
    for (_, gone) in &by_age[..2] {
        assert!(
            !left.contains(gone),
            "the oldest went first: {by_age:?}, left {left:?}"
        );
    }
    assert_eq!(s.prune_audit(T0 + 10, 1_000).await.unwrap(), entries - 2);
    assert!(s.audit_tail(100).await.unwrap().is_empty());
}

async fn keys_and_web_sessions_are_shared_by_every_process(db: Db) {
    let other = db.open().await;
    let key = db.storage.app_secret("form-token").await.unwrap();
    assert_eq!(other.app_secret("form-token").await.unwrap(), key);
    assert_ne!(other.app_secret("another").await.unwrap(), key);

    // Web sessions: what one process writes is in the database for every other (a replica on
    // PostgreSQL; on SQLite, the same portal after a restart — there one process owns the
    // database and also keeps the records it writes in memory).
    let (mine, theirs) = (db.storage.web_sessions(), other.web_sessions());
    let mut record = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
    };
    record
        .data
        .insert("access_session".into(), serde_json::json!(42));
    mine.create(&mut record).await.unwrap();
    let loaded = theirs
        .load(&record.id)
        .await
        .unwrap()
        .expect("seen by the other process");
    assert_eq!(loaded.data["access_session"], 42);
    record
        .data
        .insert("access_session".into(), serde_json::json!(43));
    mine.save(&record).await.unwrap();
    for store in [&mine, &theirs] {
        assert_eq!(
            store.load(&record.id).await.unwrap().unwrap().data["access_session"],
            43
        );
    }
    if let Place::Postgres(_) = db.place {
        record
            .data
            .insert("access_session".into(), serde_json::json!(44));
        theirs.save(&record).await.unwrap();
        assert_eq!(
            mine.load(&record.id).await.unwrap().unwrap().data["access_session"],
            44
        );
    }
    assert_eq!(db.storage.web_session_count().await.unwrap(), 1);

    let mut expired = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: OffsetDateTime::now_utc() - Duration::seconds(1),
    };
    mine.create(&mut expired).await.unwrap();
    assert!(
        mine.load(&expired.id).await.unwrap().is_none(),
        "expired: not loaded"
    );
    assert_eq!(mine.delete_expired().await.unwrap(), 1);
    mine.delete(&record.id).await.unwrap();
    for store in [&mine, &theirs] {
        assert!(store.load(&record.id).await.unwrap().is_none());
    }
    assert_eq!(db.storage.web_session_count().await.unwrap(), 0);
}

async fn logins_racing_a_disable_never_outlive_it(db: Db) {
    let other = db.open().await;
    let logins: Vec<_> = (0..60)
        .map(|i| {
            let store = if i % 2 == 0 {
                db.storage.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move { store.open_session(&login(&ip(i), T0, MINUTE)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    db.storage
        .set_organization_active("acme", false, "cli:test", T0)
        .await
        .unwrap();
    // What the stop job does once the disable is stored: it stops every session it finds.
    for id in db.storage.active_session_ids_of("acme").await.unwrap() {
        db.storage
            .stop_session(id, terminate_cause::ADMIN_RESET, T0 + 1)
            .await
            .unwrap();
    }
    let mut refused = 0;
    for task in logins {
        match task.await.unwrap() {
            Ok(_) => {}
            Err(StorageError::OrganizationDisabled) => refused += 1,
            Err(e) => panic!("a login failed otherwise: {e}"),
        }
    }
    // However the race above fell, a login made once the disable is stored is refused by
    // either process (whatever its cache says: the check is in the login's own write).
    for i in 60..70 {
        let store = if i % 2 == 0 { &db.storage } else { &other };
        assert!(
            matches!(
                store.open_session(&login(&ip(i), T0 + 2, MINUTE)).await,
                Err(StorageError::OrganizationDisabled)
            ),
            "login {i} after the disable"
        );
    }
    assert_eq!(
        db.storage.active_sessions().await.unwrap(),
        0,
        "a login committed after the disable ({refused} refused)"
    );
}

async fn two_replicas_logging_in_one_client_leave_one_session(db: Db) {
    let other = db.open().await;
    for round in 0..20 {
        let at = T0 + round * 1000;
        let mut a = login("10.0.3.1", at, MINUTE);
        a.acct_session_id = format!("a-{round}");
        let mut b = login("10.0.3.1", at, MINUTE);
        b.acct_session_id = format!("b-{round}");
        let (ra, rb) = tokio::join!(db.storage.open_session(&a), other.open_session(&b));
        ra.unwrap();
        rb.unwrap();
        assert_eq!(
            db.storage.active_sessions().await.unwrap(),
            1,
            "round {round}"
        );
    }
    // Every session but the last was preempted with exactly one Stop.
    let all: Vec<_> = db.storage.active_sessions_of(None, 100).await.unwrap();
    assert_eq!(all.len(), 1);
}

/// Ids that differ only in letter case count as one, also when two processes create them at
/// the same moment (each create's check and insert are one step).
async fn two_replicas_creating_one_id_in_two_letter_cases_create_one(db: Db) {
    let other = db.open().await;
    let detail = serde_json::json!({});
    let write = |id: &'static str| OrganizationWrite {
        id,
        name: id,
        settings_json: "{}",
        actor: "cli:test",
        now: T0,
        detail: &detail,
        expected_revision: None,
        servers_freed: &[],
        copies_since: 0,
    };
    for (round, (a, b)) in [("delta", "Delta"), ("EPSILON", "epsilon"), ("zeta", "zeta")]
        .into_iter()
        .enumerate()
    {
        let (wa, wb) = (write(a), write(b));
        let (ra, rb) = tokio::join!(
            db.storage.create_organization(&wa, true),
            other.create_organization(&wb, true)
        );
        assert!(
            ra.unwrap() ^ rb.unwrap(),
            "round {round}: exactly one of {a} and {b} is created"
        );
        let made: Vec<_> = db
            .storage
            .organizations()
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.id.eq_ignore_ascii_case(a))
            .collect();
        assert_eq!(made.len(), 1, "round {round}");
    }
    // One after the other, too.
    assert!(!db
        .storage
        .create_organization(&write("DELTA"), true)
        .await
        .unwrap());
    // And a start's seed from its file (its check made before another replica's create):
    // looked at again in its own write (code review).
    let seeded = other
        .seed_organization("DELTA", "Delta", "{}", None, 5, T0)
        .await
        .unwrap();
    assert!(
        matches!(&seeded, radius_portal::storage::SeedOutcome::OtherCase(stored) if stored.eq_ignore_ascii_case("delta")),
        "{seeded:?}"
    );
    // Every audited create is one that was made.
    let creates = db
        .storage
        .audit_tail(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "org.create" && e.organization_id.as_deref() != Some("acme"))
        .count();
    assert_eq!(creates, 3);
}

/// A new SQLite database is made with 1 KiB pages (a commit writes each changed page whole
/// into the WAL: a journey's few-row changes wrote 4 KiB frames), whichever connection opens
/// it first; it stays in WAL mode.
#[tokio::test]
async fn a_new_sqlite_database_has_small_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portal.db");
    drop(Storage::open(&db).await.unwrap());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!((page_size, mode.as_str()), (1024, "wal"));
}

/// A wrong PostgreSQL URL fails at once with the server's reason, not a pool time-out.
#[tokio::test]
async fn a_missing_postgres_database_is_named_in_the_error() {
    let url = common::postgres::fresh_database().await;
    let missing = format!("{}_missing", url);
    let err = match Storage::open_postgres(&missing).await {
        Ok(_) => panic!("opened a database that does not exist"),
        Err(e) => e,
    };
    let text = format!("{err}: {:?}", err);
    assert!(text.contains("does not exist"), "{text}");
}

/// A sweep that queues many Stops at once has PostgreSQL's statistics of the outbox brought up
/// to date before they are claimed: planned on statistics taken while few rows were pending,
/// the claims' check that a row is its session's first ran as a nested loop over every pending
/// row — 12,000 Stops due in one second left nothing sent for a minute (black-box tester Q's
/// D1). Here the statistics are taken first, then 1,200 sessions expire together.
#[tokio::test]
async fn postgres_a_large_sweep_brings_the_outbox_statistics_up_to_date() {
    use sqlx::Connection as _;
    let db = Db::new(Kind::Postgres).await;
    let s = &db.storage;
    let Place::Postgres(url) = &db.place else {
        unreachable!()
    };
    let mut look = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("ANALYZE accounting_outbox")
        .execute(&mut look)
        .await
        .unwrap();
    // When the table was last analysed by a command (not autovacuum), in seconds.
    async fn last_analyze(c: &mut sqlx::PgConnection) -> Option<f64> {
        sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM last_analyze)::FLOAT8 \
             FROM pg_stat_user_tables WHERE relname = 'accounting_outbox'",
        )
        .fetch_one(c)
        .await
        .unwrap()
    }
    let before = last_analyze(&mut look).await.expect("analysed above");
    let n = 1_200;
    for i in 0..n {
        s.open_session(&login(&ip(i), T0, MINUTE)).await.unwrap();
    }
    assert_eq!(
        last_analyze(&mut look).await,
        Some(before),
        "not for single sign-ins"
    );

    assert_eq!(s.stop_due_sessions(T0 + 2 * MINUTE).await.unwrap().len(), n);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while last_analyze(&mut look).await <= Some(before) {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox was not analysed after the sweep"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A session row another transaction holds (an interim sweep, a server move on another
/// replica) is waited for by the disable's batch, not skipped: skipped, the last batch came
/// back empty and the job ended with that session open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_disable_batch_waits_for_a_session_row_held_elsewhere() {
    use sqlx::Connection as _;
    let db = Db::new(Kind::Postgres).await;
    let s = &db.storage;
    let id = opened(s, login("10.0.9.1", T0, MINUTE)).await;
    s.set_organization_active("acme", false, "cli:test", T0 + 1)
        .await
        .unwrap();
    let Place::Postgres(url) = &db.place else {
        unreachable!()
    };
    let mut holder = sqlx::PgConnection::connect(url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("SELECT id FROM access_sessions WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *held)
        .await
        .unwrap();
    let job = s.pending_organization_jobs().await.unwrap()[0].id;
    let batch = tokio::spawn({
        let s = s.clone();
        async move {
            s.stop_disabled_sessions(
                "acme",
                job,
                radius_portal::radius::terminate_cause::ADMIN_RESET,
                T0 + 2,
                10,
            )
            .await
        }
    });
    // Waiting on the lock: an ungranted lock (the holder's transaction id) in pg_locks.
    let mut watcher = sqlx::PgConnection::connect(url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE NOT granted \
             AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        if batch.is_finished() {
            panic!("the batch ended without waiting: {:?}", batch.await);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the batch to wait"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !batch.is_finished(),
        "it waits rather than skipping the row"
    );
    held.rollback().await.unwrap();
    assert_eq!(batch.await.unwrap().unwrap(), [id]);
    assert!(!s.session(id).await.unwrap().unwrap().active);
}

/// On a shared database an organization job is run by one replica at a time: the other sees
/// it again only once the first one's claim has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_take_turns_for_organization_jobs() {
    let db = Db::new(Kind::Postgres).await;
    let other = db.open().await;
    db.storage
        .set_organization_active("acme", false, "cli:test", T0)
        .await
        .unwrap();
    let (mine, theirs) = tokio::join!(
        db.storage.claim_organization_jobs(T0, T0 + MINUTE),
        other.claim_organization_jobs(T0, T0 + MINUTE)
    );
    let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
    assert_eq!(mine.len() + theirs.len(), 1, "{mine:?} {theirs:?}");
    let (holder, waiting) = if mine.is_empty() {
        (&other, &db.storage)
    } else {
        (&db.storage, &other)
    };
    // The holder keeps it (a retry after a failure); the other waits out the lease.
    assert_eq!(
        holder
            .claim_organization_jobs(T0 + 1, T0 + MINUTE)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(waiting
        .claim_organization_jobs(T0 + 1, T0 + MINUTE)
        .await
        .unwrap()
        .is_empty());
    // A long job renews its claim: the other still waits past the first lease, and cannot
    // renew a claim it does not hold.
    let job = holder.pending_organization_jobs().await.unwrap()[0].id;
    assert!(holder
        .renew_organization_job(job, T0 + 2 * MINUTE)
        .await
        .unwrap());
    assert!(!waiting
        .renew_organization_job(job, T0 + 3 * MINUTE)
        .await
        .unwrap());
    assert!(waiting
        .claim_organization_jobs(T0 + MINUTE + 1, T0 + 2 * MINUTE)
        .await
        .unwrap()
        .is_empty());
    // Once the renewed lease runs out the other takes over, and the first can no longer renew.
    assert_eq!(
        waiting
            .claim_organization_jobs(T0 + 2 * MINUTE + 1, T0 + 3 * MINUTE)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(!holder
        .renew_organization_job(job, T0 + 4 * MINUTE)
        .await
        .unwrap());
}

/// PostgreSQL over TLS, verified (a managed PostgreSQL requires it): `sslmode=verify-full` with
/// the server's CA as `sslrootcert` connects, and the session is encrypted; a CA that did not
/// sign the server's certificate is refused.
#[tokio::test]
async fn postgres_over_verified_tls() {
    let url = common::postgres::fresh_database().await;
    let root = common::postgres::tls_root_cert().await;
    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", root.display());
    let storage = Storage::open_postgres(&verified)
        .await
        .expect("connects over verified TLS");
    assert!(storage.organization_revision().await.is_ok());
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&verified).await.unwrap();
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(ssl, "the session is encrypted");
    let other = tempfile::tempdir().unwrap();
    let stranger = other.path().join("other-ca.crt");
    std::fs::write(
        &stranger,
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])
            .unwrap()
            .cert
            .pem(),
    )
    .unwrap();
    let refused = Storage::open_postgres(&format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        stranger.display()
    ))
    .await;
    assert!(refused.is_err(), "a certificate from another CA is refused");
}

/// PostgreSQL stopped under a running portal: the first requests find out the pool's way (it
/// retries a refused connection up to its acquire timeout), then a check of its own finds
/// the server refusing and every request fails at once — storage and web sessions alike —
/// until the server answers again, which is found without any request's help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_fails_requests_at_once_until_it_answers_again() {
    let (mut relay, relayed) = common::postgres::Relay::fresh_database().await;
    let storage = Storage::open_postgres(&relayed).await.unwrap();
    let web = storage.web_sessions();
    storage.ping().await.unwrap();

    relay.cut().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let reason = loop {
        match storage.ping().await {
            Err(StorageError::Unreachable(reason)) => break reason,
            Err(e) => assert!(e.is_unavailable(), "{e:?}"),
            // A relayed connection not closed yet (the cut takes effect as its tasks end).
            Ok(()) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests still wait for the pool"
        );
    };
    assert!(reason.contains("refused"), "{reason}");
    // Every kind of request is refused on the spot while it lasts.
    match storage.active_sessions().await {
        Err(StorageError::Unreachable(_)) => {}
        other => panic!("{other:?}"),
    }
    let loaded = web.load(&Id::default()).await.unwrap_err().to_string();
    assert!(loaded.contains("cannot be reached"), "{loaded}");

    relay.open().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) = storage.ping().await {
        assert!(e.is_unavailable(), "{e:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "not found again: {e:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(storage.active_sessions().await.unwrap(), 0);
}

/// PostgreSQL stopped while nothing else asks: the first call waits out the pool's acquire
/// timeout (the pool retries a refused connection until then), but it has the server checked
/// once it has waited a while, so the replica knows the server is away by the time that call
/// ends — the next call is refused at once, and background work waiting meanwhile is not
/// taken for starved of connection slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_is_found_while_the_first_call_still_waits() {
    let (mut relay, relayed) = common::postgres::Relay::fresh_database().await;
    let storage = Storage::open_postgres(&relayed).await.unwrap();
    storage.ping().await.unwrap();
    // Every relayed connection is closed when `cut` returns: the pool's idle connection fails
    // its test before use, and each new one is refused — the call waits out the pool.
    relay.cut().await;
    let first = storage.ping().await.unwrap_err();
    assert!(
        matches!(first, StorageError::Database(sqlx::Error::PoolTimedOut)),
        "{first:?}"
    );
    // By then the server was found away: the next call is refused on the spot.
    match storage.ping().await {
        Err(StorageError::Unreachable(reason)) => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("the server away was not found while the first call waited: {other:?}"),
    }
    assert!(storage.background_starved().is_none());
}

/// The connection that hears other replicas' notices, ended by the server (a restart, an idle
/// reaper): said at once, as an error the portal logs and catches up from — not made again in
/// silence, with what was announced meanwhile never heard (code review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_listening_connection_lost_is_said() {
    use sqlx::Connection;
    let url = common::postgres::fresh_database().await;
    let (base, name) = url.rsplit_once('/').unwrap();
    let storage = Storage::open_postgres(&url).await.unwrap();
    let mut listener = storage.listen().await.unwrap().expect("PostgreSQL listens");
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(ended, [(true,)], "the listening connection ended");
    let heard = tokio::time::timeout(std::time::Duration::from_secs(20), listener.recv())
        .await
        .expect("the loss is said, not waited through");
    assert!(heard.is_err(), "{heard:?}");
}

/// The portal's database renamed (or dropped, or closed to connections) under a running
/// portal: requests fail as "unavailable" — a 503 to say try again, not the 500 of a fault —
/// and work again once it is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_gone_is_unavailable_not_a_fault() {
    use sqlx::Connection;
    let url = common::postgres::fresh_database().await;
    let (base, name) = url.rsplit_once('/').unwrap();
    let storage = Storage::open_postgres(&url).await.unwrap();
    storage.ping().await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    sqlx::raw_sql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let refused = storage.active_sessions().await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
    sqlx::raw_sql(&format!("ALTER DATABASE {name} RENAME TO {name}_moved"))
        .execute(&mut admin)
        .await
        .unwrap();
    let gone = storage.active_sessions().await.unwrap_err();
    assert!(gone.is_unavailable(), "{gone:?}");

    sqlx::raw_sql(&format!("ALTER DATABASE {name}_moved RENAME TO {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) = storage.active_sessions().await {
        assert!(e.is_unavailable(), "{e:?}");
        assert!(std::time::Instant::now() < deadline, "not back: {e:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `n` sign-ins of `ip` to acme, started while `held` (an outside transaction) holds the lock
/// a sign-in takes first: each waits there on a connection of its own until `held` ends.
async fn sign_ins_held(
    held: &mut sqlx::PgConnection,
    storage: &Storage,
    ip: &'static str,
    n: i64,
) -> Vec<tokio::task::JoinHandle<Result<radius_portal::storage::OpenedSession, StorageError>>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(1) || $2, 0))")
        .bind("acme")
        .bind(ip)
        .execute(held)
        .await
        .unwrap();
    (0..n)
        .map(|i| {
            let s = storage.clone();
            tokio::spawn(async move { s.open_session(&login(ip, T0 + i, MINUTE)).await })
        })
        .collect()
}

/// Requests holding every connection they may have (a burst, a server with few connection
/// slots) never keep background work — a Stop's delivery, an expiry — waiting: it has
/// connections of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_background_work_has_connections_requests_cannot_take() {
    use sqlx::Connection;
    let db = Db::new(Kind::Postgres).await;
    let Place::Postgres(url) = &db.place else {
        unreachable!()
    };
    let storage = db.storage.clone();
    storage.open_background().await.unwrap();
    // An outside transaction holds the lock a sign-in of 10.0.0.1 to acme takes first: sign-ins
    // of that address wait there, each holding a connection.
    let mut blocker = sqlx::PgConnection::connect(url).await.unwrap();
    let mut held = blocker.begin().await.unwrap();
    let waiting = sign_ins_held(&mut held, &storage, "10.0.0.1", 24).await;
    let mut watch = sqlx::PgConnection::connect(url).await.unwrap();
    // The requests' connections are all taken once no more join, a moment after the first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut most = 0;
    loop {
        let now: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE application_name LIKE 'radius-portal %' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if now > 0 && now == most {
            break;
        }
        most = now;
        assert!(
            std::time::Instant::now() < deadline,
            "sign-ins not waiting: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(most < 24, "requests hold no more than their share: {most}");
    // Background work still gets a connection at once (on one shared pool it waited for its
    // acquire timeout, 5 s, and failed) …
    let counted = radius_portal::storage::background(storage.active_sessions()).await;
    assert_eq!(counted.unwrap(), 0);
    // … while a request finds none (its acquire times out before the sign-ins' lock timeout).
    let refused = storage.active_sessions().await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
    held.rollback().await.unwrap();
    for w in waiting {
        let _ = w.await.unwrap();
    }
}

/// An organization disabled a moment ago whose sessions its disable has not stopped yet (no
/// portal running, or it has not come to them): a delete says to wait for the stop, not to
/// disable what is disabled.
#[tokio::test]
async fn deleting_a_disabled_organization_before_its_stop_ran_says_to_wait() {
    use radius_portal::organizations::{change, Organizations};
    let db = Db::new(Kind::Sqlite).await;
    db.storage.forget_config_position("acme").await.unwrap();
    let organizations = Organizations::load(&db.storage).await.unwrap();
    opened(&db.storage, login("10.0.0.1", T0, MINUTE)).await;
    let active = change::delete(&db.storage, &organizations, "acme", "cli")
        .await
        .unwrap_err()
        .to_string();
    assert!(active.contains("disable it first"), "{active}");
    db.storage
        .set_organization_active("acme", false, "cli", T0)
        .await
        .unwrap();
    let refused = change::delete(&db.storage, &organizations, "acme", "cli")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("is disabled but 1 of its session(s) are not stopped yet")
            && !refused.contains("disable it first"),
        "{refused}"
    );
}

/// A fresh database owned by a login the server lets open `slots` connections at most: a
/// superuser connection to it, the login's name, its URL, and the superuser's URL.
async fn limited_login(slots: u32) -> (sqlx::PgConnection, String, String, String) {
    use sqlx::Connection;
    let url = common::postgres::fresh_database().await;
    let (head, db) = url.rsplit_once('/').unwrap();
    let port = head.rsplit_once(':').unwrap().1;
    let role = format!("limited_{db}");
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN CONNECTION LIMIT {slots}; ALTER DATABASE {db} OWNER TO {role}; \
         ALTER SCHEMA public OWNER TO {role};"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let limited = format!("postgres://{role}@127.0.0.1:{port}/{db}");
    (admin, role, limited, url)
}

/// Background work that finds no connection at all (the server's slots taken, this replica's
/// requests among the takers) is reported (`/readyz` says so) and has the requests' idle
/// connections given back, so that its next try finds a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_starved_background_work_is_reported_and_given_slots() {
    use sqlx::Connection;
    // No limit yet: the pool, which gives a connection back a moment after its user is done
    // (a task of its own), may open more than it needs while setting up; its acquire then
    // retries a refused connection until its time-out without looking at its idle ones again.
    let (mut admin, role, limited, superuser) = limited_login(100).await;
    let storage = Storage::open_postgres(&limited).await.unwrap();
    storage
        .seed_organization("acme", "Acme", "{}", None, 0, T0)
        .await
        .unwrap();
    // Requests take every slot: two sign-ins of one address wait on the lock a sign-in takes
    // first, each on a connection of its own; the role is then allowed just the connections
    // its pools hold. The sign-ins go on, and the connections stay.
    let mut held = admin.begin().await.unwrap();
    let waiting = sign_ins_held(&mut held, &storage, "10.0.0.9", 2).await;
    // Watched from outside any transaction: in one, PostgreSQL reads `pg_stat_activity` once.
    let mut watch = sqlx::PgConnection::connect(&superuser).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let waits: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE usename = '{role}' AND wait_event_type = 'Lock'"
        ))
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waits == 2 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            // What the role's connections were doing, and whether a sign-in gave up (seen
            // once in a full parallel run on a loaded machine, not alone).
            let activity: Vec<(Option<String>, Option<String>, Option<String>)> =
                sqlx::query_as(&format!(
                    "SELECT state, wait_event_type, left(query, 60) FROM pg_stat_activity WHERE usename = '{role}'"
                ))
                .fetch_all(&mut watch)
                .await
                .unwrap();
            // How each sign-in ended (or that it still runs).
            let mut ended = Vec::new();
            for w in waiting {
                ended.push(if w.is_finished() {
                    format!("{:?}", w.await.map(|r| r.map(|_| "opened")))
                } else {
                    "still running".to_string()
                });
            }
            panic!("sign-ins not waiting: {waits} of 2; {activity:?}; {ended:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The pools' connections have all run a statement (a fresh one, such as a reachability
    // check's, has not).
    let taken: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE usename = '{role}' AND query <> ''"
    ))
    .fetch_one(&mut watch)
    .await
    .unwrap();
    assert!(taken >= 2, "{taken}");
    sqlx::raw_sql(&format!("ALTER ROLE {role} CONNECTION LIMIT {taken}"))
        .execute(&mut watch)
        .await
        .unwrap();
    held.rollback().await.unwrap();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    assert_eq!(storage.background_starved(), None);
    // Background work finds no slot (its acquire times out) …
    let starved = radius_portal::storage::background(storage.active_sessions()).await;
    assert!(starved.is_err(), "{starved:?}");
    assert!(storage.background_starved().is_some());
    // … and the requests' idle connections were given back: its next try gets one.
    common::wait_until("background work gets a connection", || async {
        radius_portal::storage::background(storage.active_sessions())
            .await
            .is_ok()
    })
    .await;
    assert_eq!(storage.background_starved(), None);
}

/// An operator command (`org disable` in an emergency) that finds every connection slot taken
/// waits for one to come free rather than failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_operator_command_waits_for_a_free_slot() {
    use sqlx::Connection;
    // Two slots: one for the command's check, one for its pool; both taken from it.
    let (_admin, role, limited, _) = limited_login(2).await;
    // Its slots taken (a replica's connections, say) …
    let taken = sqlx::PgConnection::connect(&limited).await.unwrap();
    let also = sqlx::PgConnection::connect(&limited).await.unwrap();
    let opening = tokio::spawn(async move { Storage::open_postgres(&limited).await });
    // … it is refused, and tries again rather than failing (the server logs each refusal) …
    let refused = format!("too many connections for role \"{role}\"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::postgres::server_log().matches(&refused).count() < 2 {
        if opening.is_finished() {
            let error = opening.await.unwrap().err().map(|e| e.to_string());
            panic!("it should wait for a slot, not end: {error:?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second try within 30 s; the server's log:\n{}",
            common::postgres::server_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!opening.is_finished(), "it waits rather than failing");
    // … and once the slots are given back, the command goes on.
    taken.close().await.unwrap();
    also.close().await.unwrap();
    let storage = opening.await.unwrap().unwrap();
    assert_eq!(storage.active_sessions().await.unwrap(), 0);
}

/// Each process's PostgreSQL connections say whose they are in `pg_stat_activity` (a replica
/// by host and process id, an operator command as such), so an operator can tell which
/// replica holds the server's connection slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_name_their_replica() {
    use sqlx::Connection;
    let url = common::postgres::fresh_database().await;
    let settings = radius_portal::config::DatabaseSettings {
        url: Some(radius_portal::config::Secret::new(url.clone())),
        ..Default::default()
    };
    let serving = Storage::connect(&settings, true).await.unwrap();
    serving.open_background().await.unwrap();
    let operator = Storage::connect(&settings, false).await.unwrap();
    assert_eq!(operator.active_sessions().await.unwrap(), 0);
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT application_name FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY 1",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let pid = std::process::id();
    assert_eq!(names.len(), 2, "a replica's and a command's: {names:?}");
    for name in &names {
        assert!(name.len() <= 63, "what PostgreSQL keeps: {name}");
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("radius-portal cli {pid}"))),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("radius-portal {pid}"))),
        "{names:?}"
    );
    drop((serving, operator));
}
