//! Accounting is durable: a Start that is not acknowledged fails the login (and the session is
//! ended again, both packets kept queued); a Stop queued while the RADIUS server is down survives
//! a portal restart and is delivered once the server is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{field, settings, temp_db, wait_until, FreeRadius, PortalProcess, TestApp};
use std::{net::Ipv4Addr, time::Duration};

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// What `accounting backlog` prints for the database at `db`.
/// Settings for organization `acme` with `acme_server` and a second organization, `beta`, with
/// `beta_server` (a NAS-Identifier of its own).
fn with_beta(
    db: &std::path::Path,
    acme_server: radius_portal::config::ServerSettings,
    beta_server: radius_portal::config::ServerSettings,
) -> radius_portal::config::Settings {
    let mut config = settings(db, vec![acme_server]);
    let mut beta = config.organizations[0].clone();
    beta.id = "beta".into();
    beta.name = "Beta Org".into();
    beta.nas_identifier = "portal-beta".into();
    beta.servers = vec![beta_server];
    config.organizations.push(beta);
    config.validate().unwrap();
    config
}

fn backlog(db: &std::path::Path) -> String {
    let out = common::operator_command(db, &["accounting", "backlog"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn an_unacknowledged_start_fails_the_login_and_keeps_start_and_stop_queued() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    // Authentication works, accounting is never answered: the Start may have arrived (a
    // server that takes packets in and answers none), so its Stop must follow it. (A port
    // that refuses every packet is another case: nothing arrived, nothing is owed.)
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.acct_port = silent.local_addr().unwrap().port();
    server.timeout = Duration::from_millis(200);
    server.retries = 1;
    let mut config = settings(&db, vec![server]);
    config.organizations[0].login_timeout = Duration::from_secs(2);
    let app = TestApp::spawn(&config).await;

    let page = app.browser(CLIENT).login("carol", "carol-pass").await;

    assert_eq!(page.path, "/", "the login does not succeed");
    // The user learns that signing in worked but the session could not be recorded (not
    // that the authentication servers are down).
    assert!(
        page.body
            .contains("network cannot record sessions right now"),
        "{}",
        page.body
    );
    let session = app
        .storage
        .session(1)
        .await
        .unwrap()
        .expect("the half-made session is recorded");
    assert!(!session.active, "and ended again");
    assert_eq!(session.terminate_cause, Some(9), "NAS-Error");
    assert_eq!(
        app.storage.outbox_backlog().await.unwrap(),
        2,
        "Start and Stop stay queued, in order"
    );
    app.stop().await;
    // The operator sees the Stop wait for its Start.
    let text = backlog(&db);
    assert!(text.starts_with("2 accounting rows waiting\n"), "{text}");
    let start = text
        .lines()
        .find(|l| l.contains(" Start org=acme"))
        .unwrap_or_else(|| panic!("{text}"));
    let start_row = start.split(' ').nth(1).unwrap();
    let stop = text
        .lines()
        .find(|l| l.contains(" Stop org=acme"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        stop.contains(&format!("waits for row {start_row} of its session")),
        "{text}"
    );
    // And `session show` says that the ended session's accounting reached no server.
    let shown = common::operator_command(&db, &["session", "show", "1"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("state:           ended"), "{shown}");
    assert!(
        shown.contains("accounting:      Start not acknowledged yet, sent ")
            && shown.contains(" time(s), last error: ")
            && shown.contains("accounting:      Stop not acknowledged yet, sent 0 time(s)"),
        "{shown}"
    );
    // A claim left by a process that is gone (a kill -9 while it sent the Start) is not said to
    // be "being sent": no portal serves the file (the operations review's L5).
    let storage = radius_portal::storage::Storage::open(&db).await.unwrap();
    // Claimed as due whenever its next attempt is (a day on), for a minute from then.
    let later = radius_portal::access_session::now_ms() + 86_400_000;
    let claimed = storage
        .claim_due_outbox(later, later + 60_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the Start");
    drop(storage);
    let text = backlog(&db);
    let start = text
        .lines()
        .find(|l| l.contains(" Start org=acme"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        start.contains(
            "held by a portal that is no longer running: the next portal to start sends it"
        ),
        "{text}"
    );
    assert!(!text.contains("being sent"), "{text}");
}

#[tokio::test]
async fn a_stop_queued_while_the_server_is_down_survives_a_restart_and_is_delivered() {
    let mut radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    server.timeout = Duration::from_millis(200);
    server.retries = 0;
    let config = settings(&db, vec![server]);
    let app = TestApp::spawn(&config).await;
    let browser = app.browser(CLIENT);
    browser.login("carol", "carol-pass").await;
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;

    radius.kill();
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(
        page.path, "/",
        "the user is disconnected even while RADIUS is down"
    );
    wait_until("the Stop to be queued", || async {
        app.storage.outbox_backlog().await.unwrap() == 1
    })
    .await;
    app.stop().await;

    // The operator sees what is left, and whose: the session, its user and address, the
    // server it waits for and why.
    let text = backlog(&db);
    assert!(text.starts_with("1 accounting row waiting\n"), "{text}");
    let expected = format!(
        " Stop org=acme acct_session_id={} user=carol client_ip={CLIENT} server=primary queued ",
        field(&start, "sid")
    );
    assert!(text.contains(&expected), "{expected:?} in {text}");
    assert!(
        text.contains(" sent=") && text.contains(" last error: "),
        "{text}"
    );

    radius.restart().await;
    let app = TestApp::spawn(&config).await;
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={}", field(&start, "sid"))])
        .await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    wait_until("the outbox to drain", || async {
        app.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_start_that_never_went_out_is_rolled_back_without_a_stop() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    // Authentication works, accounting is never answered (packets taken in, none answered:
    // a Start sent may have arrived): its breaker opens after two logins.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.acct_port = silent.local_addr().unwrap().port();
    server.timeout = Duration::from_millis(200);
    server.retries = 0;
    let acct_addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.acct_port));
    let mut config = settings(&db, vec![server]);
    config.organizations[0].login_timeout = Duration::from_secs(2);
    let app = TestApp::spawn(&config).await;
    for n in 1..=2 {
        let page = app
            .browser(Ipv4Addr::new(127, 0, 3, n))
            .login("carol", "carol-pass")
            .await;
        assert!(
            page.body.contains("cannot record sessions"),
            "{}",
            page.body
        );
    }
    assert!(
        !app.radius.health().allows(acct_addr),
        "accounting breaker open"
    );

    let page = app
        .browser(Ipv4Addr::new(127, 0, 3, 3))
        .login("carol", "carol-pass")
        .await;

    // The user learns that signing in worked but the session could not be recorded (not
    // that the authentication servers are down).
    assert!(
        page.body
            .contains("network cannot record sessions right now"),
        "{}",
        page.body
    );
    let session = app.storage.session(3).await.unwrap().unwrap();
    assert!(!session.active);
    let rows = app.storage.session_outbox(3).await.unwrap();
    assert_eq!(rows.len(), 1, "no Stop for a Start never sent: {rows:?}");
    assert_eq!(rows[0].transmissions, 0);
    assert!(rows[0].dead_at.is_some(), "{rows:?}");
    let sent = app.storage.session_outbox(1).await.unwrap();
    assert_eq!(
        sent.len(),
        2,
        "a Start that went out is followed by its Stop: {sent:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn interim_updates_queued_during_an_outage_coalesce() {
    let mut radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    server.timeout = Duration::from_millis(200);
    server.retries = 0;
    let config = settings(&db, vec![server]);
    let app = TestApp::spawn(&config).await;
    let browser = app.browser(CLIENT);
    browser.login("carol", "carol-pass").await;
    radius.wait_for_acct(&["status=Start", "user=carol"]).await;

    radius.kill();
    for _ in 0..6 {
        let page = browser.post_form("/api/refresh", "/session", &[]).await;
        assert_eq!(page.path, "/session", "{}", page.body);
    }
    let backlog = app.storage.outbox_backlog().await.unwrap();
    assert!(
        backlog <= 2,
        "six refreshes leave at most one Interim in flight and one queued: {backlog}"
    );
    radius.restart().await;
    wait_until("the outbox to drain", || async {
        app.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    let interims = radius
        .acct_lines()
        .iter()
        .filter(|l| l.contains("status=Interim-Update"))
        .count();
    assert!((1..=2).contains(&interims), "{interims} Interim-Updates");
    app.stop().await;
}

#[tokio::test]
async fn kill_9_with_a_stop_pending_loses_nothing() {
    let mut radius = FreeRadius::start().await;
    let (_dir, db, base, config) = common::process_config(
        "[radius]\nbind = \"127.0.0.1\"\nprobe_interval = \"200ms\"\n",
        "",
        (radius.strict_port, radius.acct_port),
        "timeout = \"200ms\"\nretries = 0\n",
    );
    let portal = PortalProcess::start(&config, &base).await;
    let browser = common::Browser::of(&base);
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;

    // The server goes away; the user disconnects; the Stop is recorded but cannot be sent.
    radius.kill();
    browser.post_form("/api/disconnect", "/session", &[]).await;
    let storage = radius_portal::storage::Storage::open(&db).await.unwrap();
    wait_until("the Stop to be recorded", || async {
        storage.outbox_backlog().await.unwrap() == 1
    })
    .await;
    portal.kill_9();

    radius.restart().await;
    let _portal = PortalProcess::start(&config, &base).await;
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={}", field(&start, "sid"))])
        .await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    wait_until("the outbox to drain", || async {
        storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
}

/// A graceful stop (SIGTERM) first lets requests under way finish, then delivers the Stops
/// they and the requests before them queued — not at the next start: the RADIUS server has
/// every Stop by the time the portal has exited, and nothing is left in the outbox.
#[tokio::test]
async fn a_graceful_shutdown_delivers_the_stops_queued_just_before() {
    let (radius, app, _dir) = common::portal_with_one_server().await;
    let browsers: Vec<_> = (1..=3)
        .map(|n| app.browser(std::net::Ipv4Addr::new(127, 0, 6, n)))
        .collect();
    for browser in &browsers {
        let page = browser.login("carol", "carol-pass").await;
        assert_eq!(page.path, "/session", "{}", page.body);
    }
    for browser in &browsers {
        browser.post_form("/api/disconnect", "/session", &[]).await;
    }
    let storage = app.storage.clone();
    app.stop().await;
    let stops = radius
        .acct_lines()
        .iter()
        .filter(|l| l.contains("status=Stop"))
        .count();
    assert_eq!(stops, 3, "every Stop delivered before the exit");
    assert_eq!(storage.outbox_backlog().await.unwrap(), 0);
}

/// A graceful stop keeps claiming while a delivery hangs: a Stop whose backoff ends during the
/// flush goes to its server, which answers, though another Stop is still being sent to a
/// silent one (the operations review's M1: the flush waited for every send under way before
/// it claimed again, and the Stop due meanwhile waited for the next start).
#[tokio::test]
async fn a_graceful_shutdown_sends_a_stop_due_while_another_hangs_at_a_silent_server() {
    use std::sync::atomic::Ordering::SeqCst;
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let acct = radius.acct_addr();
    let (acme_open, beta_open) = (
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    );
    let acme_relay = common::gated_relay(acct, acme_open.clone()).await;
    let mut acme_server = radius.server_settings("a-primary", true);
    acme_server.acct_port = acme_relay.port;
    // One exchange (9 s) outlasts the flush's 5 s.
    acme_server.timeout = Duration::from_secs(3);
    acme_server.retries = 2;
    let mut beta_server = radius.server_settings("b-primary", true);
    beta_server.acct_port = common::gated_relay(acct, beta_open.clone()).await.port;
    beta_server.timeout = Duration::from_millis(200);
    beta_server.retries = 0;
    let config = with_beta(&db, acme_server, beta_server);
    let app = TestApp::spawn(&config).await;
    let client = |n| std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 7, n));
    let alice = app
        .sessions
        .login("acme", "carol", "carol-pass", client(20))
        .await
        .unwrap();
    let bob = app
        .sessions
        .login("beta", "carol", "carol-pass", client(21))
        .await
        .unwrap();
    let bob_sid = format!("sid={}", bob.acct_session_id);
    radius.wait_for_acct(&["status=Start", &bob_sid]).await;

    // Bob's Stop fails once (its server silent for a moment): tried again a second later.
    beta_open.store(false, SeqCst);
    assert!(app.sessions.disconnect(bob.id).await.unwrap());
    wait_until("bob's Stop to fail once", || async {
        app.storage
            .session_outbox(bob.id)
            .await
            .unwrap()
            .iter()
            .any(|row| row.status_type == 2 && row.last_error.is_some())
    })
    .await;
    beta_open.store(true, SeqCst);
    // Alice's Stop on its way to a server gone silent when the portal is told to stop.
    acme_open.store(false, SeqCst);
    let sessions = app.sessions.clone();
    let alice_stop = tokio::spawn(async move { sessions.disconnect(alice.id).await });
    common::wait_for(
        "alice's Stop to be on its way",
        Duration::from_secs(10),
        || (acme_relay.dropped.load(SeqCst) > 0).then_some(()),
    )
    .await;
    let bob_stopped = || {
        radius
            .acct_lines()
            .iter()
            .any(|l| l.contains("status=Stop") && l.contains(&bob_sid))
    };
    assert!(!bob_stopped(), "bob's Stop waits out its backoff");
    app.stop().await;

    assert!(
        bob_stopped(),
        "bob's Stop, due during the flush, was sent before the exit"
    );
    let _ = alice_stop.await;
}

/// An acknowledgement the database cannot record at once (a PostgreSQL restart, a stalled
/// disk; here a trigger refuses the write for a while) is recorded once it can be, by the
/// sender that got it: the packet is not sent again when its claim runs out (a second Stop).
#[tokio::test]
async fn an_acknowledgement_recorded_late_is_not_sent_again() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&settings(
        &db,
        vec![radius.server_settings("primary", true)],
    ))
    .await;
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", std::net::IpAddr::V4(CLIENT))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_delivery_marks BEFORE UPDATE OF delivered_at ON accounting_outbox \
         WHEN NEW.delivered_at IS NOT NULL BEGIN SELECT RAISE(ABORT, 'the database is away'); END;",
    )
    .unwrap();

    let sessions = app.sessions.clone();
    let disconnect = tokio::spawn(async move { sessions.disconnect(session.id).await });
    let sid = format!("sid={}", session.acct_session_id);
    radius.wait_for_acct(&["status=Stop", &sid]).await;
    conn.execute_batch("DROP TRIGGER refuse_delivery_marks;")
        .unwrap();

    wait_until("the acknowledged Stop is recorded", || async {
        app.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    assert!(disconnect.await.unwrap().unwrap());
    let stops = radius
        .acct_lines()
        .into_iter()
        .filter(|l| l.contains("status=Stop") && l.contains(&sid))
        .count();
    assert_eq!(stops, 1);
    app.stop().await;
}

/// A FreeRADIUS whose accounting answers pass a relay that holds each until `release` (`held`
/// is told of each), and its server's settings (accounting through the relay, `timeout`), with
/// a database path.
struct HeldAccounting {
    radius: FreeRadius,
    held: std::sync::Arc<tokio::sync::Notify>,
    release: std::sync::Arc<tokio::sync::Notify>,
    server: radius_portal::config::ServerSettings,
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
}

impl HeldAccounting {
    async fn start(timeout: Duration) -> HeldAccounting {
        let radius = FreeRadius::start().await;
        let held = std::sync::Arc::new(tokio::sync::Notify::new());
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let acct = radius.acct_addr();
        let relay = common::holding_relay(acct, held.clone(), release.clone()).await;
        let (_dir, db) = temp_db();
        let mut server = radius.server_settings("primary", true);
        server.acct_port = relay.port();
        server.timeout = timeout;
        HeldAccounting {
            radius,
            held,
            release,
            server,
            _dir,
            db,
        }
    }
}

/// An operator's Stop made while the session's Start is still on its way (the login waits for
/// its acknowledgement) is queued behind it, and goes out as soon as the Start is acknowledged:
/// before, the delivery loop slept until its next timer (up to 30 s on SQLite), and a
/// terminated identity stayed open at the server that long.
#[tokio::test]
async fn a_stop_queued_behind_a_start_in_flight_follows_its_acknowledgement() {
    use std::sync::Arc;
    let HeldAccounting {
        radius,
        held,
        release,
        server,
        db,
        _dir,
    } = HeldAccounting::start(Duration::from_secs(5)).await;
    let app = Arc::new(TestApp::spawn(&settings(&db, vec![server])).await);
    let client = std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 6, 1));

    let login = app.sign_in_in_background("carol", "carol-pass", client);
    held.notified().await; // the Start answered by FreeRADIUS, the answer held
    let session = app
        .session_at(client)
        .await
        .expect("the session being opened");
    assert!(app.sessions.stop_by_operator(session.id).await.unwrap());
    release.notify_one(); // the Start's acknowledgement reaches the portal
    let _ = login.await.unwrap();
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={}", session.acct_session_id)])
        .await;
    assert_eq!(field(&stop, "cause"), "Admin-Reset");
    held.notified().await; // the Stop's answer: let it through
    release.notify_one();
    wait_until("the Stop recorded as delivered", || async {
        app.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    Arc::into_inner(app).unwrap().stop().await;
}

/// A sign-in's Start that waited for a send slot (its server's window full, as under a burst)
/// still has one whole exchange on the wire — not what the wait left of the sign-in's time —,
/// so a server that answers within it opens the session (black-box tester V's D1: such Starts
/// failed against a server answering every packet, and their exchanges, cut short by the
/// sign-in's deadline, opened its breaker).
#[tokio::test]
async fn a_start_that_waited_for_a_send_slot_has_a_whole_exchange() {
    use std::sync::Arc;
    let HeldAccounting {
        radius,
        held,
        release,
        mut server,
        db,
        _dir,
    } = HeldAccounting::start(Duration::from_secs(4)).await;
    let relay = std::net::SocketAddr::from(([127, 0, 0, 1], server.acct_port));
    server.retries = 0;
    let mut config = settings(&db, vec![server]);
    config.organizations[0].login_timeout = Duration::from_secs(1);
    let app = Arc::new(TestApp::spawn(&config).await);
    let window = app
        .sessions
        .accounting()
        .fill_send_window(relay)
        .await
        .expect("the window");
    let client = std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 8, 1));
    let login = app.sign_in_in_background("carol", "carol-pass", client);
    wait_until("the sign-in accepted, its Start queued", || async {
        app.session_at(client).await.is_some()
    })
    .await;
    // Most of the time the sign-in has for its Start (one exchange, 4 s) passes while the
    // Start waits for a slot (time passing is the case here, not a condition to wait for).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(window);
    // The Start went out and FreeRADIUS answered; the answer is held past what the sign-in had
    // left when its Start went out (1.5 s), well within the Start's own exchange (4 s).
    held.notified().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    release.notify_one();
    let session = login
        .await
        .unwrap()
        .expect("the sign-in opened its session");
    radius
        .wait_for_acct(&["status=Start", &format!("sid={}", session.acct_session_id)])
        .await;
    Arc::into_inner(app).unwrap().stop().await;
}

/// One accounting server's backlog, more rows than the delivery loop has places (2,048),
/// waiting for its window (full: 64 packets in flight, as under a burst to a slow server), does
/// not hold up another server's Start: beyond a window's worth waiting, the loop's rows are given
/// back to be claimed again at their turn, and the loop's next pass takes the other's Start
/// (the RADIUS review's M1 of session 80: before, that Start waited until the backlog's rows had
/// waited out 45 s for a slot). Once the busy server has room again the backlog drains at the
/// pace it answers (given back with a failure's backoff, it took minutes).
#[tokio::test]
async fn a_busy_servers_backlog_does_not_hold_up_another_servers_start() {
    use std::sync::{atomic::AtomicBool, Arc};
    const BACKLOG: usize = 2_100;
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let acct = radius.acct_addr();
    let mut beta_server = radius.server_settings("b-primary", true);
    beta_server.acct_port = common::gated_relay(acct, Arc::new(AtomicBool::new(true)))
        .await
        .port;
    let config = with_beta(&db, radius.server_settings("primary", true), beta_server);
    let app = TestApp::spawn(&config).await;
    let accounting = app.sessions.accounting();

    // Acme's server takes no more packets; acme's sessions' Starts queue up behind it.
    let window = accounting.fill_send_window(acct).await.expect("the window");
    let now = radius_portal::access_session::now_ms();
    let mut opening = tokio::task::JoinSet::new();
    for n in 0..BACKLOG {
        let (storage, ip) = (app.storage.clone(), format!("10.1.{}.{}", n / 256, n % 256));
        let session = common::stored_session(&format!("busy-{n}"), ("acme", "primary"), &ip, now);
        opening.spawn(async move { storage.open_session(&session).await.unwrap() });
    }
    while let Some(opened) = opening.join_next().await {
        opened.unwrap();
    }
    // Beta's Start, due after all of them, goes at once.
    let later = radius_portal::access_session::now_ms().max(now + 1);
    let beta_session =
        common::stored_session("beta-late", ("beta", "b-primary"), "10.2.0.1", later);
    app.storage.open_session(&beta_session).await.unwrap();
    accounting.wake();
    radius
        .wait_for_acct(&["status=Start", "sid=beta-late "])
        .await;
    let busy_sent = |lines: Vec<String>| {
        lines
            .iter()
            .filter(|l| l.contains("status=Start") && l.contains("sid=busy-"))
            .count()
    };
    assert_eq!(busy_sent(radius.acct_lines()), 0, "acme's window was full");

    // Room again: the whole backlog goes.
    drop(window);
    common::wait_for(
        "every Start of the backlog at the server",
        Duration::from_secs(60),
        || (busy_sent(radius.acct_lines()) >= BACKLOG).then_some(()),
    )
    .await;
    app.stop().await;
}

/// A delivery whose outcome cannot be written (the database away for longer than a write
/// waits) leaves its row claimed. The live process gives that claim up as soon as the
/// database answers again, so the Stop goes out then — not after the claim's two-minute lease,
/// which only a dead sender should cost.
#[tokio::test]
async fn a_stop_whose_outcome_the_database_could_not_take_goes_out_once_it_answers_again() {
    let mut radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    server.timeout = Duration::from_millis(300);
    server.retries = 0;
    let app = TestApp::spawn(&settings(&db, vec![server])).await;
    let client = std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 7, 1));
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", client)
        .await
        .unwrap();
    let sid = format!("sid={}", session.acct_session_id);
    radius.wait_for_acct(&["status=Start", &sid]).await;

    // The server is down; the Stop is stored and sent, and while it waits for an answer
    // another connection takes the database's write lock and keeps it: the delivery's
    // outcome (not acknowledged, retry later) cannot be written.
    radius.kill();
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let holder = rusqlite::Connection::open(&db).unwrap();
    // Waits for a write of the portal's under way, as the portal's connections do.
    holder.busy_timeout(Duration::from_secs(5)).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    wait_until("the Stop's outcome to fail to be written", || async {
        app.sessions.accounting().stranded_claims() > 0
    })
    .await;
    holder.execute_batch("COMMIT").unwrap();
    radius.restart().await;

    // Well within the claim's lease (30 s) of the stranded delivery.
    radius.wait_for_acct(&["status=Stop", &sid]).await;
    wait_until("the claim to be given up", || async {
        app.sessions.accounting().stranded_claims() == 0
    })
    .await;
    app.stop().await;
}

/// The portal killed (-9) while a sign-in waits for its Accounting-Start's acknowledgement (the
/// accounting server is slow): nobody was given that session. The next start ends it as the
/// sign-in would have — its Start, which may have arrived, goes again and a NAS-Error Stop
/// follows at once — instead of sending the Start late and keeping an identity nobody holds.
#[tokio::test]
async fn a_sign_in_cut_off_by_a_kill_9_does_not_come_back_as_a_session() {
    let authenticator = FreeRadius::start().await;
    let accounting = FreeRadius::start().await;
    let (_dir, db, base, config) = common::process_config(
        "",
        "",
        (authenticator.strict_port, accounting.acct_port),
        "timeout = \"2s\"\nretries = 2\n",
    );
    let portal = PortalProcess::start(&config, &base).await;
    let storage = radius_portal::storage::Storage::open(&db).await.unwrap();
    accounting.pause();
    let browser = common::Browser::of(&base);
    let signing_in = tokio::spawn(async move { browser.login("carol", "carol-pass").await });
    // The sign-in's session, opened, its Start on its way or about to be (a transmission is
    // recorded only once its exchange ends: nothing tells which, and it need not).
    wait_until("the sign-in's session to open", || async {
        !storage
            .active_session_ids_of("acme")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let id = storage.active_session_ids_of("acme").await.unwrap()[0];
    portal.kill_9();
    signing_in.abort();
    accounting.resume();

    let _portal = PortalProcess::start(&config, &base).await;
    let session = storage.session(id).await.unwrap().unwrap();
    assert!(!session.active, "ended at the start-up");
    assert_eq!(session.terminate_cause, Some(9), "NAS-Error");
    let sid = format!("sid={}", session.acct_session_id);
    let start = accounting.wait_for_acct(&["status=Start", &sid]).await;
    let stop = accounting.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
    assert_eq!(field(&stop, "event_ts"), field(&start, "event_ts"));
}

/// A file-size limit reached by the database's writes (`ulimit -f`, systemd's `LimitFSIZE=`)
/// is a full disk, not a crash: sign-ins are answered 503 while nothing more fits, the portal
/// stays up, and what it had acknowledged stays.
#[tokio::test]
async fn a_file_size_limit_reached_is_a_full_disk_not_a_crash() {
    let radius = FreeRadius::start().await;
    let (_dir, db, base, config) = common::process_config(
        "[rate_limit]\nlogin_per_ip = 10000\nlogin_per_user = 10000\n",
        "",
        (radius.strict_port, radius.acct_port),
        "",
    );
    let mut portal = PortalProcess::start(&config, &base).await;
    let browser = common::Browser::of(&base);
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    // No file may grow past what the database's largest file is now.
    let largest = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .max()
        .unwrap();
    let limited = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(portal.pid().to_string())
        .arg(format!("--fsize={largest}"))
        .status()
        .unwrap();
    assert!(limited.success());
    let mut refused = 0;
    for n in 1..=300 {
        let answer = browser.login_as_script("erin", "erin-pass").await;
        assert!(portal.running(), "the portal is still up after sign-in {n}");
        if answer.status() == 503 {
            refused += 1;
            if refused >= 3 {
                break;
            }
        }
    }
    assert!(refused >= 3, "sign-ins refused once nothing more fits");
    assert!(portal.running());
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert!(health.status().is_success());
}

/// A log that cannot be written (stderr a full disk, a pipe nobody reads any more) stops
/// nothing: sign-ins get their Start, a Disconnect its Stop, SIGTERM a graceful exit — the
/// lines are dropped and counted. (Before, each task that logged died with a panic: requests
/// went unanswered, Starts and Stops waited, SIGTERM was ignored.)
#[tokio::test]
async fn a_log_that_cannot_be_written_stops_nothing() {
    let radius = FreeRadius::start().await;
    let metrics = common::free_port();
    let (_dir, _db, base, config) = common::process_config(
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
        "",
        (radius.strict_port, radius.acct_port),
        "",
    );
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut portal = PortalProcess::start_logging(&config, &base, full).await;
    let browser = common::Browser::of(&base);
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start"]).await;
    let sid = format!("sid={}", field(&start, "sid"));
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/", "{}", page.body);
    radius
        .wait_for_acct(&["status=Stop", &sid, "cause=User-Request"])
        .await;
    let text = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lost: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("portal_log_write_failures_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("counted: {text}"));
    assert!(lost > 0, "{text}");
    let term = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(portal.pid().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    common::wait_until("the portal to exit on SIGTERM", || {
        let running = portal.running();
        async move { !running }
    })
    .await;
}

/// A graceful shutdown (SIGTERM) whose flush runs out of time with a Stop still on its way (a
/// frozen server) gives that Stop's claim up: on PostgreSQL another replica — or this one at its
/// next start — sends it at once, not after the claim's lease.
#[tokio::test]
async fn a_stop_under_way_at_shutdown_is_given_up_for_another_replica_to_send_at_once() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let url = common::postgres::fresh_database().await;
    let mut server = radius.server_settings("primary", true);
    // One exchange (9 s) outlasts the shutdown's 5 s flush.
    server.timeout = Duration::from_secs(3);
    server.retries = 2;
    let mut config = settings(&db, vec![server]);
    config.database.url = Some(radius_portal::config::Secret::new(url.clone()));
    let app = TestApp::spawn(&config).await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 3, 7));
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let session = app
        .storage
        .active_sessions_of(Some("acme"), 10)
        .await
        .unwrap()
        .remove(0);
    radius.pause();
    browser.post_form("/api/disconnect", "/session", &[]).await;
    app.stop().await;

    // The Stop was the user's Disconnect's own delivery (outside the delivery loop): ended too.
    let other = radius_portal::storage::Storage::open_postgres(&url)
        .await
        .unwrap();
    let now = radius_portal::access_session::now_ms();
    let stop = other
        .claim_session_outbox(
            session.id,
            radius_portal::radius::status_type::STOP,
            now,
            now + 60_000,
        )
        .await
        .unwrap();
    assert!(stop.is_some(), "the Stop is free to send at once");
    radius.resume();
}

/// The other replica sends a Stop given up at a shutdown as soon as it is given up (the give-up
/// is announced to every replica's delivery loop), not at its loop's next pass or when the
/// claim's lease would have run out (30 s): a Disconnected user's identity is not kept open at
/// the server for half a minute by a rolling restart. (The deadline, 15 s, is half the lease.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_given_up_at_shutdown_is_sent_by_the_other_replica_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let url = common::postgres::fresh_database().await;
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let acct = radius.acct_addr();
    let mut server = radius.server_settings("primary", true);
    server.acct_port = common::gated_relay(acct, open.clone()).await.port;
    // One exchange (9 s) outlasts the shutdown's 5 s flush.
    server.timeout = Duration::from_secs(3);
    server.retries = 2;
    let mut config = settings(&db, vec![server]);
    config.database.url = Some(radius_portal::config::Secret::new(url.clone()));
    let a = TestApp::spawn(&config).await;
    let b = TestApp::spawn(&config).await;
    let browser = a.browser(Ipv4Addr::new(127, 0, 3, 8));
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let session = a
        .storage
        .active_sessions_of(Some("acme"), 10)
        .await
        .unwrap()
        .remove(0);
    let sid = format!("sid={}", session.acct_session_id);
    radius.wait_for_acct(&["status=Start", &sid]).await;
    open.store(false, SeqCst);
    browser.post_form("/api/disconnect", "/session", &[]).await;
    a.stop().await;
    open.store(true, SeqCst);
    common::wait_for(
        "the other replica to send the Stop",
        Duration::from_secs(15),
        || {
            radius
                .acct_lines()
                .iter()
                .any(|l| l.contains("status=Stop") && l.contains(&sid))
                .then_some(())
        },
    )
    .await;
    b.stop().await;
}

/// A delivery that takes longer than a claim's lease (30 s: a replica killed mid-delivery hands
/// its rows over that soon) keeps its claim while it runs: a Stop retransmitted to a frozen
/// server for 40 s is not taken again by the delivery loop when its first lease runs out — no
/// second claim, no second packet — and is delivered once the server answers.
#[tokio::test]
async fn a_delivery_longer_than_its_lease_keeps_its_claim() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    // One exchange: 4 tries of 10 s.
    server.timeout = Duration::from_secs(10);
    server.retries = 3;
    let app = TestApp::spawn(&settings(&db, vec![server])).await;
    let client = std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 7, 9));
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", client)
        .await
        .unwrap();
    let sid = format!("sid={}", session.acct_session_id);
    radius.wait_for_acct(&["status=Start", &sid]).await;
    radius.pause();
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let reader = rusqlite::Connection::open(&db).unwrap();
    let stop_claim = || -> (i64, Option<i64>) {
        reader
            .query_row(
                "SELECT attempts, claimed_until FROM accounting_outbox \
                 WHERE access_session_id = ?1 AND status_type = 2 AND destination = 'auth-server'",
                [session.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let (attempts, first_until) = stop_claim();
    assert_eq!(attempts, 1, "claimed once, by the Disconnect");
    let first_until = first_until.expect("claimed");
    common::wait_for(
        "the Stop's first lease to have run out (5 s past)",
        Duration::from_secs(60),
        || (radius_portal::access_session::now_ms() > first_until + 5_000).then_some(()),
    )
    .await;
    let (attempts, until) = stop_claim();
    assert_eq!(attempts, 1, "not claimed again while its delivery runs");
    assert!(
        until.unwrap() > radius_portal::access_session::now_ms() + 10_000,
        "kept: {until:?}"
    );
    radius.resume();
    radius.wait_for_acct(&["status=Stop", &sid]).await;
    wait_until("the Stop to be recorded delivered", || async {
        app.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    assert_eq!(stop_claim().0, 1, "one claim in all");
    app.stop().await;
}

/// A delivery whose claim cannot be kept — the database gone while it retransmits to a frozen
/// server — stops before the claim runs out (after which another replica may take the row and
/// send it too), rather than going on for the whole exchange (a minute here); once the
/// database answers, its claim is given up and the Stop goes out.
#[tokio::test]
async fn a_delivery_whose_claim_cannot_be_kept_stops_before_it_runs_out() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (mut relay, url) = common::postgres::Relay::fresh_database().await;
    let mut server = radius.server_settings("primary", true);
    // One exchange: up to a minute (4 tries of 15 s, the longest one there is).
    server.timeout = Duration::from_secs(15);
    server.retries = 3;
    let mut config = settings(&db, vec![server]);
    config.database.url = Some(radius_portal::config::Secret::new(url));
    let app = TestApp::spawn(&config).await;
    let client = std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 7, 10));
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", client)
        .await
        .unwrap();
    let sid = format!("sid={}", session.acct_session_id);
    radius.wait_for_acct(&["status=Start", &sid]).await;
    radius.pause();
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    relay.cut().await;
    let accounting = app.sessions.accounting();
    common::wait_for(
        "the Stop's delivery to stop, its claim not kept",
        Duration::from_secs(45),
        || (accounting.stranded_claims() > 0).then_some(()),
    )
    .await;
    relay.open().await;
    radius.resume();
    radius.wait_for_acct(&["status=Stop", &sid]).await;
    wait_until("the Stop to be recorded delivered", || async {
        app.storage.outbox_backlog().await.unwrap_or(1) == 0
    })
    .await;
    app.stop().await;
}

/// The portal binary under libfaketime, which steps its wall clock alone (as NTP or `date -s`
/// does; its boot clock goes on), serving one organization at `radius`.
struct UnderFaketime {
    dir: tempfile::TempDir,
    base: String,
    config: std::path::PathBuf,
    portal: Option<PortalProcess>,
    /// How many portals were started: the log of the `n`th is `portal-n.log` in `dir`.
    started: usize,
}

impl UnderFaketime {
    async fn start(radius: &FreeRadius) -> UnderFaketime {
        Self::start_with(radius, "").await
    }

    /// [`UnderFaketime::start`] with more keys of the organization.
    async fn start_with(radius: &FreeRadius, org_keys: &str) -> UnderFaketime {
        let (dir, _db, base, config) = common::process_config(
            "[radius]\nbind = \"127.0.0.1\"\n",
            org_keys,
            (radius.strict_port, radius.acct_port),
            "",
        );
        let mut under = UnderFaketime {
            dir,
            base,
            config,
            portal: None,
            started: 0,
        };
        under.set("+0");
        under.portal = Some(under.spawn().await);
        under
    }

    async fn spawn(&mut self) -> PortalProcess {
        let clock = self.dir.path().join("faketime");
        self.started += 1;
        PortalProcess::start_with(
            &self.config,
            &self.base,
            std::fs::File::create(self.log()).unwrap(),
            &[
                ("LD_PRELOAD", faketime_library().as_os_str()),
                ("FAKETIME_TIMESTAMP_FILE", clock.as_os_str()),
                ("FAKETIME_NO_CACHE", "1".as_ref()),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1".as_ref()),
            ],
        )
        .await
    }

    /// `kill -9` of the portal, the wall clock set to `offset` while none runs, and the portal
    /// started again on the same database.
    async fn restart_at(&mut self, offset: &str) {
        if let Some(portal) = self.portal.take() {
            portal.kill_9();
        }
        self.set(offset);
        self.portal = Some(self.spawn().await);
    }

    /// The log of the portal started last.
    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join(format!("portal-{}.log", self.started))
    }

    /// The lines of the portal started last that speak of the system clock, once its log has
    /// one.
    async fn clock_lines(&self) -> Vec<String> {
        let lines = || {
            std::fs::read_to_string(self.log())
                .unwrap_or_default()
                .lines()
                .filter(|line| line.contains("the system clock"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        common::wait_until("the portal's log to speak of the clock", || async {
            !lines().is_empty()
        })
        .await;
        lines()
    }

    /// Sets the wall clock's offset from the real time (libfaketime's form: `-3600`, `+600`).
    fn set(&self, offset: &str) {
        std::fs::write(self.dir.path().join("faketime"), format!("{offset}\n")).unwrap();
    }
}

/// libfaketime's library (`scripts/setup.sh` installs the Debian package).
fn faketime_library() -> &'static std::path::Path {
    let path = std::path::Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (Debian's libfaketime)",
        path.display()
    );
    path
}

/// The wall clock steps an hour back (libfaketime moves it alone, as NTP or `date -s` does; the
/// boot clock goes on) while a session with a Session-Timeout of 3 s is open: it still ends about
/// 3 s after its sign-in, its Stop saying it lasted that long — not an hour later, which left a
/// firewall identity an hour past its Session-Timeout (black-box tester T's D1).
#[tokio::test]
async fn a_session_keeps_its_real_length_when_the_wall_clock_steps_back() {
    let radius = FreeRadius::start().await;
    let under = UnderFaketime::start(&radius).await;
    let browser = common::Browser::of(&under.base);
    let page = browser.login("ivan", "ivan-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=ivan"]).await;
    under.set("-3600");
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={} ", field(&start, "sid"))])
        .await;
    assert_eq!(field(&stop, "cause"), "Session-Timeout");
    assert_eq!(field(&stop, "session_time"), "3", "{stop}");
}

/// The wall clock is put an hour back while no portal runs (a kill -9, then a start an hour
/// earlier by the clock) with a session of a 3 s Session-Timeout open: the start sees the step
/// by the lock file's clock mark and the session still ends 3 s after its sign-in, its Stop
/// saying so — not an hour on, which gave every open session the step on top of its time
/// (black-box tester T's D2).
#[tokio::test]
async fn a_clock_put_back_while_no_portal_ran_gives_no_session_more_time() {
    let radius = FreeRadius::start().await;
    let mut under = UnderFaketime::start(&radius).await;
    let browser = common::Browser::of(&under.base);
    let page = browser.login("ivan", "ivan-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=ivan"]).await;
    under.restart_at("-3600").await;
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={} ", field(&start, "sid"))])
        .await;
    assert_eq!(field(&stop, "cause"), "Session-Timeout");
    assert_eq!(field(&stop, "session_time"), "3", "{stop}");
    // One step, one line, which says when it was made (tester T2's D4: two lines).
    let said = under.clock_lines().await;
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains("behind the time the portal last served this database in")
            && said[0].contains("sessions=1"),
        "{said:#?}"
    );
}

/// The wall clock is put ten minutes back while no portal runs, with a session that has
/// periodic Interim-Updates open: they go on in the new time line, each saying the session's
/// real length, and the user's Disconnect sends its Stop at once with that length — before, the
/// start queued an Interim-Update dated ten minutes ahead (read in the old time line just after
/// the move), and the session's Stop waited behind it those ten minutes (black-box tester T's
/// D1: an operator's terminate too).
#[tokio::test]
async fn a_clock_put_back_while_no_portal_ran_leaves_no_interim_update_ahead_of_the_stop() {
    let radius = FreeRadius::start().await;
    let mut under = UnderFaketime::start_with(&radius, "min_interim_interval = \"2s\"\n").await;
    let browser = common::Browser::of(&under.base);
    let page = browser.login("kate", "kate-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=kate"]).await;
    let sid = format!("sid={} ", field(&start, "sid"));
    radius.wait_for_acct(&["status=Interim-Update", &sid]).await;
    under.restart_at("-600").await;
    under.clock_lines().await;
    // An Interim-Update of the new run (after the one before the restart).
    let interims = || {
        radius
            .acct_lines()
            .into_iter()
            .filter(|l| l.contains("status=Interim-Update") && l.contains(&sid))
            .collect::<Vec<_>>()
    };
    let before = interims().len();
    common::wait_for(
        "an Interim-Update after the restart",
        Duration::from_secs(15),
        || (interims().len() > before).then_some(()),
    )
    .await;
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert!(page.body.contains("disconnected"), "{}", page.body);
    let stop = radius.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    let length: u64 = field(&stop, "session_time").parse().unwrap();
    assert!(
        length < 300,
        "the session's real length, not the step's: {stop}\n{:#?}\n{}",
        radius.acct_lines(),
        std::fs::read_to_string(under.log()).unwrap_or_default()
    );
    for interim in interims() {
        let at: u64 = field(&interim, "session_time").parse().unwrap();
        assert!(at <= length, "no Interim-Update dated ahead: {interim}");
    }
}

/// The wall clock is put ten minutes forward while no portal runs, with a session of a 30 s
/// Session-Timeout open: taken as time that passed, as a step forward while serving is — the
/// session ends at the start, its Stop saying 30 s with the delay — and the start says why
/// (tester T2's D4: it said nothing of the clock).
#[tokio::test]
async fn a_clock_put_forward_while_no_portal_ran_is_time_that_passed_and_said() {
    let radius = FreeRadius::start().await;
    let mut under = UnderFaketime::start(&radius).await;
    let browser = common::Browser::of(&under.base);
    let page = browser.login("alice", "alice-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=alice"]).await;
    under.restart_at("+600").await;
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={} ", field(&start, "sid"))])
        .await;
    assert_eq!(field(&stop, "session_time"), "30", "{stop}");
    let delay: u32 = field(&stop, "delay").parse().unwrap();
    assert!(delay > 0, "{stop}");
    let said = under.clock_lines().await;
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains("the system clock is ahead of the time the portal last served"),
        "{said:#?}"
    );
}

/// The wall clock steps ten minutes forward while a session with a Session-Timeout of 30 s is
/// open: taken as time that passed (a virtual machine paused, its boot clock with it, looks the
/// same), the session ends at once — late, with its Acct-Delay-Time, and never longer than it
/// was given (black-box tester T's D2: the choice that never keeps a firewall identity on).
#[tokio::test]
async fn a_step_of_the_wall_clock_forward_is_time_that_passed() {
    let radius = FreeRadius::start().await;
    let under = UnderFaketime::start(&radius).await;
    let browser = common::Browser::of(&under.base);
    let page = browser.login("alice", "alice-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=alice"]).await;
    under.set("+600");
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={} ", field(&start, "sid"))])
        .await;
    assert_eq!(field(&stop, "cause"), "Session-Timeout");
    assert_eq!(field(&stop, "session_time"), "30", "{stop}");
    let delay: u32 = field(&stop, "delay").parse().unwrap();
    assert!(delay > 0, "{stop}");
}
