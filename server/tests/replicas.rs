//! Several portal replicas on one PostgreSQL database, against a real FreeRADIUS: a browser
//! moves between replicas (web sessions and access sessions are shared), an organization
//! disabled through one replica is denied by the other at once and its sessions are stopped
//! once, and a replica killed with `kill -9` leaves its due sessions to the other, which stops
//! each exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    field, next_event, settings, wait_until, Browser, FreeRadius, PortalProcess, TestApp,
};
use radius_portal::{config::Secret, storage::Storage};
use std::{net::Ipv4Addr, path::Path, time::Duration};

/// Portal settings on the PostgreSQL database `url`.
fn on_postgres(url: &str, radius: &FreeRadius) -> radius_portal::config::Settings {
    let mut s = settings(
        Path::new("unused.db"),
        vec![radius.server_settings("primary", true)],
    );
    s.database.url = Some(Secret::new(url));
    s
}

/// Well under the open pages' 15 s re-sync: an event sooner than this came from the other
/// replica's announcement, not from the page's periodic re-read.
const NOTICE_DEADLINE: Duration = Duration::from_secs(5);

/// A replica's configuration file `name`.toml in `dir` on the PostgreSQL database `url`: one
/// organization (`acme`, its window `window`) with one server at `(auth_port, acct_port)` and
/// `timing` (its `timeout` and `retries` lines); and the replica's base URL.
fn replica_config(
    dir: &Path,
    name: &str,
    url: &str,
    (auth_port, acct_port): (u16, u16),
    window: &str,
    timing: &str,
) -> (std::path::PathBuf, String) {
    let port = common::free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[database]\nurl = \"{url}\"\n\
             [radius]\nbind = \"127.0.0.1\"\n\
             [[organizations]]\nid = \"acme\"\nname = \"Acme\"\ndefault_window = \"{window}\"\n\
             [[organizations.servers]]\nname = \"primary\"\naddress = \"127.0.0.1\"\n\
             auth_port = {auth_port}\nacct_port = {acct_port}\nsecret = \"{}\"\n{timing}\n",
            common::SECRET
        ),
    )
    .unwrap();
    (config, format!("http://127.0.0.1:{port}"))
}

/// Accounting lines of `status` for Acct-Session-Id `sid`.
fn acct_count(radius: &FreeRadius, status: &str, sid: &str) -> usize {
    radius
        .acct_lines()
        .iter()
        .filter(|l| l.contains(&format!("status={status} ")) && l.contains(&format!("sid={sid} ")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_moves_between_replicas_and_a_disable_holds_on_both() {
    let radius = FreeRadius::start().await;
    let url = common::postgres::fresh_database().await;
    let a = TestApp::spawn(&on_postgres(&url, &radius)).await;
    let b = TestApp::spawn(&on_postgres(&url, &radius)).await;

    // Signed in through A; the same browser (its cookie) is signed in on B.
    let on_a = a.browser(Ipv4Addr::new(127, 0, 0, 7));
    let page = on_a.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = field(&start, "sid").to_string();
    let on_b = Browser {
        http: on_a.http.clone(),
        base: format!("http://{}", b.addr),
    };
    let page = on_b.get("/session").await;
    assert_eq!(page.path, "/session");
    assert!(
        page.body.contains("carol"),
        "B shows A's session:\n{}",
        page.body
    );
    // The session page open on A follows what is done through B.
    let mut live_a = on_a.live_events().await;
    let mut buffer = String::new();
    let first = next_event(&mut live_a, &mut buffer).await;
    assert!(first.contains("Active"), "{first}");

    // Refreshed through B: one Interim-Update; disconnected through B: one Stop.
    let before = b.storage.session_by_acct_id(&sid).await.unwrap().unwrap();
    let page = on_b.post_form("/api/refresh", "/session", &[]).await;
    assert_eq!(page.path, "/session");
    radius
        .wait_for_acct(&["status=Interim-Update", &format!("sid={sid}")])
        .await;
    let after = a.storage.session_by_acct_id(&sid).await.unwrap().unwrap();
    assert!(
        after.refreshed_at > before.refreshed_at,
        "A reads B's refresh"
    );
    let refreshed = tokio::time::timeout(NOTICE_DEADLINE, next_event(&mut live_a, &mut buffer))
        .await
        .expect("A's page hears of B's refresh");
    assert!(refreshed.contains("Active"), "{refreshed}");
    on_b.post_form("/api/disconnect", "/session", &[]).await;
    let ended = tokio::time::timeout(NOTICE_DEADLINE, next_event(&mut live_a, &mut buffer))
        .await
        .expect("A's page hears of B's disconnect");
    assert!(ended.contains("Ended"), "{ended}");
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={sid}")])
        .await;
    assert_eq!(field(&stop, "cause"), "User-Request");

    // A session opened on B, then the organization disabled through A (as `org disable` does:
    // one write to the shared database): B denies the next login at once, without a packet,
    // and the session is stopped once by whichever replica takes the job.
    let bob = b.browser(Ipv4Addr::new(127, 0, 0, 8));
    assert_eq!(bob.login("bob", "bob-pass").await.path, "/session");
    let bob_start = radius.wait_for_acct(&["status=Start", "user=bob"]).await;
    let bob_sid = field(&bob_start, "sid").to_string();
    // Erin has the sign-in page open (with its form token) before the disable.
    let erin = b.browser(Ipv4Addr::new(127, 0, 0, 9));
    let erin_token = erin.form_token("/").await;
    assert_eq!(
        a.storage
            .set_organization_active(
                "acme",
                false,
                "cli:test",
                radius_portal::access_session::now_ms()
            )
            .await
            .unwrap()
            .map(|change| change.changed),
        Some(true)
    );
    let auths = radius.auth_lines().len();
    let page = erin
        .post_raw(
            "/api/login",
            "/",
            &[
                ("username", "erin"),
                ("password", "erin-pass"),
                ("csrf", &erin_token),
            ],
            &[],
        )
        .await;
    assert_ne!(
        page.path, "/session",
        "B let a login of a disabled organization in"
    );
    // Refused by the login's own check, or already by the page (B's cache heard of the change).
    assert!(
        page.body.contains("organization is disabled") || page.body.contains("has been disabled"),
        "{}",
        page.body
    );
    assert_eq!(
        radius.auth_lines().len(),
        auths,
        "no Access-Request once disabled"
    );
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={bob_sid}")])
        .await;
    assert_eq!(field(&stop, "cause"), "Admin-Reset");
    wait_until("both replicas to see the stop job done", || async {
        a.storage
            .pending_organization_jobs()
            .await
            .unwrap()
            .is_empty()
            && a.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    // Both workers may have run the job: still one Stop each.
    for (status, sid) in [("Stop", &sid), ("Stop", &bob_sid), ("Start", &sid)] {
        assert_eq!(acct_count(&radius, status, sid), 1, "{status} of {sid}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sessions_due_leaves_them_to_the_other() {
    let radius = FreeRadius::start().await;
    let url = common::postgres::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let start_replica = |name: &str| {
        let ports = (radius.strict_port, radius.acct_port);
        replica_config(
            dir.path(),
            name,
            &url,
            ports,
            "3s",
            "timeout = \"500ms\"\nretries = 1",
        )
    };
    let (config_a, base_a) = start_replica("a");
    let (config_b, base_b) = start_replica("b");
    let a = PortalProcess::start(&config_a, &base_a).await;
    let _b = PortalProcess::start(&config_b, &base_b).await;

    // Two users sign in through A (3 s windows); A dies before their deadlines.
    let mut sids = Vec::new();
    for (n, user) in [(11, "carol"), (12, "erin")] {
        let browser = Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .local_address(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
                .build()
                .unwrap(),
            base: base_a.clone(),
        };
        let page = browser.login(user, &format!("{user}-pass")).await;
        assert_eq!(page.path, "/session", "{}", page.body);
        let start = radius
            .wait_for_acct(&["status=Start", &format!("user={user}")])
            .await;
        sids.push(field(&start, "sid").to_string());
    }
    a.kill_9();

    // B stops both at their deadlines: one Stop each, Idle-Timeout, stamped at the deadline.
    let storage = Storage::open_postgres(&url).await.unwrap();
    for sid in &sids {
        let stop = radius
            .wait_for_acct(&["status=Stop", &format!("sid={sid}")])
            .await;
        assert_eq!(field(&stop, "cause"), "Idle-Timeout");
        assert_eq!(field(&stop, "session_time"), "3");
        let delay: u64 = field(&stop, "delay").parse().expect("Acct-Delay-Time sent");
        assert!(delay < 60, "{delay}");
        let session = storage.session_by_acct_id(sid).await.unwrap().unwrap();
        assert_eq!(
            field(&stop, "event_ts").parse::<i64>().unwrap(),
            session.expires_at / 1000,
            "stamped at the deadline, not when B noticed"
        );
    }
    wait_until("the outbox to drain", || async {
        storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    for sid in &sids {
        assert_eq!(acct_count(&radius, "Stop", sid), 1, "one Stop for {sid}");
    }
}

/// A replica killed during a sign-in — its Start waiting on a silent accounting server, its user
/// never answered — leaves no session open behind it: once the sign-in's claim on the Start and
/// lease on the session have run out, the other replica's delivery loop ends the session as the
/// sign-in would have (the Start, then a NAS-Error Stop dated at its start, once), rather than
/// sending the Start late and keeping the identity open to the session's deadline — within 40 s
/// of the kill (the 30 s lease, and the margin given to replicas' clocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_a_sign_in_leaves_no_session_open() {
    let auth = FreeRadius::start().await;
    let acct = FreeRadius::start().await;
    let url = common::postgres::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let start_replica = |name: &str| {
        let ports = (auth.strict_port, acct.acct_port);
        replica_config(
            dir.path(),
            name,
            &url,
            ports,
            "10m",
            "timeout = \"3s\"\nretries = 2",
        )
    };
    let (config_a, base_a) = start_replica("a");
    let (config_b, base_b) = start_replica("b");
    let a = PortalProcess::start(&config_a, &base_a).await;
    let _b = PortalProcess::start(&config_b, &base_b).await;
    let storage = Storage::open_postgres(&url).await.unwrap();

    // Carol signs in through A; the accounting server is frozen, so her Start waits.
    acct.pause();
    let browser = Browser {
        http: reqwest::Client::builder()
            .cookie_store(true)
            .local_address(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)))
            .build()
            .unwrap(),
        base: base_a.clone(),
    };
    let signing_in = tokio::spawn(async move { browser.login("carol", "carol-pass").await });
    wait_until("A to open carol's session", || async {
        !storage
            .active_sessions_of(Some("acme"), 10)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    a.kill_9();
    signing_in.abort();
    acct.resume();
    let session = storage
        .active_sessions_of(Some("acme"), 10)
        .await
        .unwrap()
        .remove(0);
    let sid = session.acct_session_id.clone();

    // Nothing moved in the database: A's claim on the Start and its sign-in's lease run out.
    let fragments = ["status=Stop".to_string(), format!("sid={sid}")];
    let stop = common::wait_for(
        "B to end the session A's sign-in left",
        Duration::from_secs(60),
        || {
            acct.acct_lines()
                .into_iter()
                .find(|l| fragments.iter().all(|f| l.contains(f.as_str())))
        },
    )
    .await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
    assert_eq!(field(&stop, "session_time"), "0");
    assert_eq!(
        field(&stop, "event_ts").parse::<i64>().unwrap(),
        session.started_at / 1000,
        "dated at its start: nobody had it"
    );
    let ended = storage.session(session.id).await.unwrap().unwrap();
    assert!(!ended.active);
    wait_until("the outbox to drain", || async {
        storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    assert_eq!(acct_count(&acct, "Stop", &sid), 1, "one Stop");
    assert!(
        acct_count(&acct, "Start", &sid) >= 1,
        "its Start went first"
    );
}

/// Replicas count each other's unanswered exchanges with a server (each told through the
/// database): with `breaker_failures = 2`, one sign-in through each replica whose
/// Access-Request a silent server never answers opens that server's breaker on both, where each
/// alone counted one. So a packet whose retries the replicas take in turns (a Stop) fails over
/// after two unanswered exchanges, as with one replica, not after two per replica. A replica
/// does not count its own news, and news of one port is not taken for the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_count_each_others_unanswered_exchanges_with_a_server() {
    use radius_portal::radius::{
        breaker::BreakerState,
        health::{secret_fingerprint, Port, SecretKey},
    };
    let radius = FreeRadius::start().await;
    let url = common::postgres::fresh_database().await;
    // Take the datagrams, never answer.
    let silent_auth = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_acct = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (auth_addr, acct_addr) = (
        silent_auth.local_addr().unwrap(),
        silent_acct.local_addr().unwrap(),
    );
    let config = || {
        let mut quiet = radius.server_settings("quiet", true);
        quiet.auth_port = auth_addr.port();
        quiet.acct_port = acct_addr.port();
        quiet.timeout = Duration::from_millis(300);
        quiet.retries = 0;
        let mut s = on_postgres(&url, &radius);
        s.organizations[0].servers = vec![quiet, radius.server_settings("primary", true)];
        s.radius.breaker_failures = 2;
        s
    };
    let a = TestApp::spawn(&config()).await;
    let b = TestApp::spawn(&config()).await;
    let state = |app: &TestApp, at: std::net::SocketAddr| {
        app.radius
            .health()
            .states()
            .into_iter()
            .find(|(addr, _)| *addr == at)
            .map(|(_, state)| state)
    };
    let closed = |failures, peer_failures| {
        Some(BreakerState::Closed {
            failures,
            peer_failures,
        })
    };

    // A's sign-in: unanswered by the quiet server, accepted by the primary. B counts it.
    let page = a
        .browser(Ipv4Addr::new(127, 0, 0, 31))
        .login("carol", "carol-pass")
        .await;
    assert_eq!(page.path, "/session", "{}", page.body);
    wait_until("B to count A's unanswered exchange", || async {
        state(&b, auth_addr) == closed(0, 1)
    })
    .await;
    // News of the acct port, told after A's: once A has counted it, A has heard its own too.
    let storage = Storage::open_postgres(&url).await.unwrap();
    let key = SecretKey::new(storage.app_secret("breaker_news_key").await.unwrap());
    storage
        .announce_breaker(radius_portal::storage::Notice::Breaker {
            addr: acct_addr,
            secret: secret_fingerprint(&key, &a.organizations.get("acme").unwrap().servers[0]),
            answered: false,
        })
        .await
        .unwrap();
    wait_until("A to count the acct port's news", || async {
        state(&a, acct_addr) == closed(0, 1)
    })
    .await;
    assert_eq!(state(&a, auth_addr), closed(1, 0), "A counts its own once");

    // B's sign-in: the second unanswered exchange opens the quiet server's breaker on both.
    let page = b
        .browser(Ipv4Addr::new(127, 0, 0, 32))
        .login("erin", "erin-pass")
        .await;
    assert_eq!(page.path, "/session", "{}", page.body);
    for (name, app) in [("A", &a), ("B", &b)] {
        let servers = app.organizations.get("acme").unwrap().servers.clone();
        let health = app.radius.health().clone();
        wait_until(
            &format!("the quiet server to be down on {name}"),
            || async { !health.is_up(&servers[0], Port::Auth) },
        )
        .await;
        assert!(
            health.is_up(&servers[0], Port::Acct),
            "{name}: its other port"
        );
        assert!(health.is_up(&servers[1], Port::Auth), "{name}: the primary");
    }
    drop((silent_auth, silent_acct));
}

/// A disabled organization's session whose stop a dead replica holds (it died running the
/// disable's stop job: its claim lasts its lease) reads as the disable will make it, before
/// the stop reaches it: the page open on another replica hears of the disable at once (not at
/// its 15 s re-read), the session page says the organization is disabled and the Captive
/// Portal API says captive — no read says a disabled organization's user has access
/// (black-box tester M: for up to 30 s they said it ran). An enable through the admin API
/// before the stop is taken over answers, over HTTP, that the stop is skipped and the session
/// keeps running; its page reads it running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_organizations_session_reads_as_stopped_while_a_dead_replica_holds_its_stop() {
    let radius = FreeRadius::start().await;
    let url = common::postgres::fresh_database().await;
    let mut settings = on_postgres(&url, &radius);
    settings
        .admin
        .tokens
        .push(radius_portal::config::AdminToken {
            name: "ops".into(),
            sha256: radius_portal::http::admin::hash_token("admin-token"),
        });
    let b = TestApp::spawn(&settings).await;
    let on_b = b.browser(Ipv4Addr::new(127, 0, 0, 7));
    assert_eq!(on_b.login("carol", "carol-pass").await.path, "/session");
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = field(&start, "sid").to_string();
    let mut live = on_b.live_events().await;
    let mut buffer = String::new();
    let first = next_event(&mut live, &mut buffer).await;
    assert!(first.contains("Active"), "{first}");

    // Every job is claimed, as it is written, by a replica that then died (for ten minutes:
    // past this test), and the organization is disabled through another (one shared write).
    {
        use sqlx::Connection as _;
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        for statement in [
            "CREATE FUNCTION held_by_the_dead() RETURNS trigger AS $$ BEGIN \
               NEW.claimed_by := 'a-replica-that-died'; \
               NEW.claimed_until := (extract(epoch FROM now()) * 1000)::bigint + 600000; \
               RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER held_by_the_dead BEFORE INSERT ON organization_jobs \
               FOR EACH ROW EXECUTE FUNCTION held_by_the_dead()",
        ] {
            sqlx::query(statement).execute(&mut db).await.unwrap();
        }
    }
    let other = Storage::open_postgres(&url).await.unwrap();
    other
        .set_organization_active(
            "acme",
            false,
            "cli:test",
            radius_portal::access_session::now_ms(),
        )
        .await
        .unwrap();
    let told = tokio::time::timeout(NOTICE_DEADLINE, next_event(&mut live, &mut buffer))
        .await
        .expect("the open page hears of the disable");
    assert!(told.contains("OrganizationDisabled"), "{told}");
    let page = on_b.get("/session").await;
    assert!(
        page.body.contains("has been disabled") && !page.body.contains("Disconnect"),
        "{}",
        page.body
    );
    let captive: serde_json::Value =
        serde_json::from_str(&on_b.get("/captive-portal/api").await.body).unwrap();
    assert_eq!(captive["captive"], true, "{captive}");
    // The stop is still held: the session is open in the database, no Stop went out.
    let session = b.storage.session_by_acct_id(&sid).await.unwrap().unwrap();
    assert!(session.active);
    assert_eq!(acct_count(&radius, "Stop", &sid), 0);

    // Enabled again through the admin API before the stop was taken over: the answer says the
    // stop is skipped and the session keeps running, and its page reads so again.
    let answer = reqwest::Client::new()
        .patch(format!("http://{}/admin/api/v1/organizations/acme", b.addr))
        .bearer_auth("admin-token")
        .header("content-type", "application/json")
        .body(r#"{"is_active": true}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let enabled: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        enabled["skipped_stop"],
        serde_json::json!({ "open_sessions": 1, "stopped_before": 0, "terminations_pending": 0 }),
        "{enabled}"
    );
    assert!(
        enabled["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("its 1 open session(s) keep running")),
        "{enabled}"
    );
    let page = on_b.get("/session").await;
    assert!(page.body.contains("Disconnect"), "{}", page.body);
    assert_eq!(acct_count(&radius, "Stop", &sid), 0);
    b.stop().await;
}
