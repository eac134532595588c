//! The RADIUS engine against real FreeRADIUS servers: forged replies, a black-holed or killed
//! primary (circuit breaker, Status-Server probes), every server down, dead-lettered accounting,
//! and accounting that keeps up with many concurrent users.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    field, portal_with_one_server, settings, temp_db, wait_until, FreeRadius, TestApp, SECRET,
};
use md5::{Digest, Md5};
use radius_portal::{
    radius::{
        client::RadiusClient,
        packet::{attr, encode_response, Code, Packet, PushAttribute},
        status_type, AccountingRecord, NasIdentity, Radius,
    },
    storage::NewAccessSession,
};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{atomic::Ordering::SeqCst, Arc},
    time::Duration,
};
use tokio::net::UdpSocket;

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, n)
}

/// Signs a reply the way a server does, but with the Message-Authenticator given verbatim
/// (a wrong one) and a correct Response Authenticator over it (the crate's encoder).
fn reply_with_bad_message_authenticator(request: &[u8]) -> Vec<u8> {
    let request = radius::core::packet::Packet::decode(request, SECRET.as_bytes()).unwrap();
    let mut p = request.make_response_packet(Code::AccessAccept);
    p.add(radius::core::avp::AVP::from_bytes(
        attr::MESSAGE_AUTHENTICATOR,
        &[0x42; 16],
    ));
    p.add(radius::core::avp::AVP::from_bytes(attr::CLASS, b"FORGED"));
    p.encode().unwrap()
}

/// Every kind of forged or broken reply to the request `request`.
fn forgeries(request: &[u8]) -> Vec<Vec<u8>> {
    let id = request[1];
    let mut request_auth = [0u8; 16];
    request_auth.copy_from_slice(&request[4..20]);
    let forged_accept = |id: u8, secret: &str, with_ma: bool| {
        let mut to = request.to_vec();
        to[1] = id;
        let mut p = Packet::decode(&to, secret.as_bytes())
            .unwrap()
            .reply(Code::AccessAccept);
        if with_ma {
            p.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
        }
        p.push(attr::CLASS, b"FORGED");
        encode_response(&p).unwrap()
    };
    let mut short_length = forged_accept(id, SECRET, true);
    short_length[2..4].copy_from_slice(&5u16.to_be_bytes());
    // Attribute running past the packet, with authenticators valid over the broken bytes.
    let truncated = {
        let mut bytes = vec![Code::AccessAccept as u8, id, 0, 24];
        bytes.extend_from_slice(&request_auth);
        bytes.extend_from_slice(&[attr::CLASS, 40, b'X', b'Y']);
        let auth: [u8; 16] = Md5::new()
            .chain_update(&bytes)
            .chain_update(SECRET.as_bytes())
            .finalize()
            .into();
        bytes[4..20].copy_from_slice(&auth);
        bytes
    };
    vec![
        forged_accept(id, "not-the-secret", true),
        forged_accept(id.wrapping_add(1), SECRET, true),
        forged_accept(id, SECRET, false), // the strict server must send Message-Authenticator
        reply_with_bad_message_authenticator(request),
        short_length,
        truncated,
        vec![2, id, 0],
        Vec::new(),
    ]
}

/// Passes `request` (from `from`, at the relay's socket `front`) on to `upstream`, and its
/// reply, if one comes within 5 s, back.
fn pass_on(front: &Arc<UdpSocket>, request: Vec<u8>, from: SocketAddr, upstream: SocketAddr) {
    let front = front.clone();
    tokio::spawn(async move {
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.send_to(&request, upstream).await.unwrap();
        let mut reply = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(5), back.recv_from(&mut reply)).await
        {
            front.send_to(&reply[..n], from).await.unwrap();
        }
    });
}

/// Ends session `id` as its user's Disconnect does (its Stop queued, the delivery loop not
/// woken); when (unix ms).
async fn stopped_by_its_user(app: &TestApp, id: i64) -> i64 {
    let now = radius_portal::access_session::now_ms();
    assert!(app
        .storage
        .stop_session(
            id,
            radius_portal::radius::terminate_cause::USER_REQUEST,
            now
        )
        .await
        .unwrap());
    now
}

/// A UDP socket on loopback that hands each datagram it receives to `handle` (with the socket,
/// to answer from, and the sender); its address.
async fn udp_front(
    handle: impl Fn(&Arc<UdpSocket>, Vec<u8>, SocketAddr) + Send + 'static,
) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = front.recv_from(&mut buf).await.unwrap();
            handle(&front, buf[..len].to_vec(), from);
        }
    });
    addr
}

/// A UDP relay in front of real servers: each request goes where `route` says (nowhere: None),
/// its reply back to the sender.
async fn relay(route: impl Fn(&[u8]) -> Option<SocketAddr> + Send + 'static) -> SocketAddr {
    udp_front(move |front, request, from| {
        if let Some(upstream) = route(&request) {
            pass_on(front, request, from, upstream);
        }
    })
    .await
}

/// A UDP relay in front of a real server that answers every request with forgeries first,
/// then passes the genuine reply on.
async fn forging_relay(upstream: SocketAddr) -> SocketAddr {
    udp_front(move |front, request, from| {
        let front = front.clone();
        tokio::spawn(async move {
            for forged in forgeries(&request) {
                front.send_to(&forged, from).await.unwrap();
            }
            pass_on(&front, request, from, upstream);
        });
    })
    .await
}

#[tokio::test]
async fn forged_replies_are_dropped_and_the_login_succeeds_through_the_real_server() {
    let radius = FreeRadius::start().await;
    let relay = forging_relay(radius.auth_addr(true)).await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    server.auth_port = relay.port();
    let app = TestApp::spawn(&settings(&db, vec![server])).await;

    let page = app.browser(client(1)).login("alice", "alice-pass").await;

    assert_eq!(page.path, "/session", "{}", page.body);
    let session = app.storage.session(1).await.unwrap().unwrap();
    assert_eq!(
        session.classes,
        vec![b"CACS:0a0a0a0a0000000123456789:ise-node-1/123456789/42".to_vec()],
        "only the genuine Accept's Class is kept"
    );
    assert!(
        app.radius.client().dropped_datagrams() >= 8,
        "every forgery was dropped and counted"
    );
    // Counted per server (each server's first is worth a warning of its own: a server with
    // the wrong secret is named in the log whatever other datagrams were dropped before).
    assert!(
        app.radius.client().unverified_replies_from(relay) >= 4,
        "{}",
        app.radius.client().unverified_replies_from(relay)
    );
    assert_eq!(
        app.radius
            .client()
            .unverified_replies_from(radius.auth_addr(false)),
        0
    );
    assert!(
        app.radius.health().allows(relay),
        "forgeries do not count against the server"
    );
    app.stop().await;
}

/// A server that answers every request, signed with another shared secret: its breaker opens
/// (its replies never verify) and the line that says so names replies the portal cannot use,
/// not a server "not answering" (black-box tester T's D3: an operator alerting on that line
/// looked at the network, not at the secret).
#[tokio::test]
async fn a_breaker_opened_by_replies_that_do_not_verify_says_so() {
    let other_secret = udp_front(|front, request, from| {
        let front = front.clone();
        tokio::spawn(async move {
            let reply = Packet::decode(&request, b"not-the-secret")
                .unwrap()
                .reply(Code::AccessReject);
            let bytes = encode_response(&reply).unwrap();
            front.send_to(&bytes, from).await.unwrap();
        });
    })
    .await;
    let (dir, _db, base, config) = common::process_config(
        "[radius]\nbind = \"127.0.0.1\"\nbreaker_failures = 2\n",
        "",
        (other_secret.port(), common::free_port()),
        "timeout = \"100ms\"\nretries = 0\n",
    );
    let log = dir.path().join("portal.log");
    let _portal =
        common::PortalProcess::start_logging(&config, &base, std::fs::File::create(&log).unwrap())
            .await;
    let browser = common::Browser::of(&base);
    let said = "RADIUS server answering with replies the portal cannot use (its Response Authenticator does not verify";
    wait_until("the breaker's line", || async {
        let page = browser.login("alice", "alice-pass").await;
        assert_ne!(page.path, "/session", "{}", page.body);
        std::fs::read_to_string(&log).unwrap().contains(said)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("not answering"), "{text}");
}

/// A server whose policy sends an Accept with a malformed Session-Timeout (3 bytes): the limit
/// it meant cannot be read, so no session opens (read as absent, it would have none); the user
/// is told to ask the administrator and the audit says why.
#[tokio::test]
async fn an_accept_with_a_malformed_session_timeout_opens_no_session() {
    an_unusable_accept_opens_no_session(
        |accept| accept.push(attr::SESSION_TIMEOUT, [0u8, 0, 60]),
        "3 bytes long",
    )
    .await;
}

/// An Accept whose Class values leave no room for the session's Accounting-Stop (4,096 bytes
/// at most): the Stop could never be sent, so no session opens and no Start goes out.
#[tokio::test]
async fn an_accept_whose_stop_could_not_be_sent_opens_no_session() {
    an_unusable_accept_opens_no_session(
        |accept| {
            for _ in 0..15 {
                accept.push(attr::CLASS, [b'c'; 253]);
            }
            accept.push(attr::CLASS, [b'x'; 180]);
        },
        "attributes are too long for the session",
    )
    .await;
}

/// RFC 2865 §5.6: a NAS treats a Service-Type it does not provide as a Reject. An Accept for
/// an administrator's shell (a policy that matched the wrong rule) opens no network session.
#[tokio::test]
async fn an_accept_for_another_service_opens_no_session() {
    an_unusable_accept_opens_no_session(
        |accept| accept.push(attr::SERVICE_TYPE, 6u32.to_be_bytes()),
        "Administrative-User (6)",
    )
    .await;
}

/// An Accept naming the user with bytes that are not text: the session's accounting must carry
/// the server's name (RFC 2865 §5.1), which the portal can neither show nor keep faithfully; it
/// does not fall back to the typed name (the server would not know that session).
#[tokio::test]
async fn an_accept_naming_the_user_with_no_text_opens_no_session() {
    an_unusable_accept_opens_no_session(
        |accept| accept.push(attr::USER_NAME, b"al\xffice"),
        "not UTF-8 text",
    )
    .await;
}

/// A scripted server (FreeRADIUS cannot send these) accepts every Access-Request with what
/// `shape` adds: the login fails saying `why`, audited, with no session and no accounting.
async fn an_unusable_accept_opens_no_session(shape: fn(&mut Packet), why: &str) {
    let radius = FreeRadius::start().await;
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = front.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = front.recv_from(&mut buf).await.unwrap();
            let Ok(request) = Packet::decode(&buf[..len], SECRET.as_bytes()) else {
                continue;
            };
            let mut accept = request.reply(Code::AccessAccept);
            accept.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
            shape(&mut accept);
            front
                .send_to(&encode_response(&accept).unwrap(), from)
                .await
                .unwrap();
        }
    });
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    server.auth_port = port;
    let app = TestApp::spawn(&settings(&db, vec![server])).await;

    let page = app.browser(client(2)).login("alice", "alice-pass").await;

    assert_eq!(page.path, "/", "{}", page.body);
    assert!(
        page.body.contains("answer cannot be used") && page.body.contains(why),
        "{}",
        page.body
    );
    // A script is told the server accepted with an answer of no use (not "Rejected": the
    // credentials were right), and what is wrong with it.
    let answer = app
        .browser(client(3))
        .login_as_script("alice", "alice-pass")
        .await;
    assert_eq!(answer.status(), 502);
    let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "UnusableAnswer", "{body}");
    assert!(body.get("reply_message").is_none(), "{body}");
    assert!(body["detail"].as_str().unwrap().contains(why), "{body}");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    let audit = app.storage.audit_tail(10).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "login.unusable_accept"
            && serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains(why))),
        "the audit entry says why: {audit:?}"
    );
    assert!(
        app.storage.dead_letters(10).await.unwrap().is_empty(),
        "nothing queued to be given up"
    );
    assert!(radius.acct_lines().is_empty(), "no Start");
    app.stop().await;
}

#[tokio::test]
async fn a_black_holed_or_killed_primary_is_skipped_once_its_breaker_opens_and_probes_bring_it_back(
) {
    let mut primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut fast_primary = primary.server_settings("primary", true);
    fast_primary.timeout = Duration::from_millis(300);
    fast_primary.retries = 1;
    let mut settings = settings(
        &db,
        vec![fast_primary, backup.server_settings("backup", true)],
    );
    settings.radius.breaker_failures = 2;
    settings.radius.probe_interval = Duration::from_millis(200);
    let app = TestApp::spawn(&settings).await;
    let primary_addr = primary.auth_addr(true);

    // Black-holed: the first two logins wait for the primary, then fail over; the breaker opens.
    primary.pause();
    for n in 1..=2 {
        let page = app.browser(client(n)).login("carol", "carol-pass").await;
        assert_eq!(page.path, "/session", "{}", page.body);
    }
    assert!(!app.radius.health().allows(primary_addr), "breaker open");
    // While open, logins go straight to the backup: the primary never sees this client.
    let page = app.browser(client(3)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let session = app
        .storage
        .active_session_for_client("acme", "127.0.1.3", 0)
        .await;
    assert_eq!(session.unwrap().unwrap().server_name, "backup");

    primary.resume();
    wait_until(
        "a Status-Server probe closes the primary's breaker",
        || async { app.radius.health().allows(primary_addr) },
    )
    .await;
    assert!(
        !primary
            .auth_lines()
            .iter()
            .any(|l| l.contains("calling=127.0.1.3")),
        "no request was sent to the primary while its breaker was open"
    );
    let page = app.browser(client(4)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    wait_until("traffic returns to the primary", || async {
        primary
            .auth_lines()
            .iter()
            .any(|l| l.contains("calling=127.0.1.4"))
    })
    .await;

    // Killed: same story, and a restart closes it again.
    primary.kill();
    for n in 5..=6 {
        let page = app.browser(client(n)).login("carol", "carol-pass").await;
        assert_eq!(page.path, "/session", "{}", page.body);
    }
    assert!(!app.radius.health().allows(primary_addr), "breaker open");
    primary.restart().await;
    wait_until("the restarted primary's breaker closes", || async {
        app.radius.health().allows(primary_addr)
    })
    .await;
    let page = app.browser(client(7)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert_eq!(
        app.storage.active_sessions().await.unwrap(),
        7,
        "one session per login, no duplicates from late replies"
    );
    app.stop().await;
}

/// A server with nothing listening (stopped, its host up) answers each request with an ICMP
/// port unreachable: a sign-in goes on to the backup at once and a Stop is acknowledged by the
/// backup within seconds — neither waits out the dead server's timeouts (here 30 s, sent three
/// times; the deadlines below are far shorter).
#[tokio::test]
async fn a_server_with_nothing_listening_is_failed_over_at_once() {
    let mut primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut patient = primary.server_settings("primary", true);
    patient.timeout = Duration::from_secs(30);
    patient.retries = 2;
    let mut settings = settings(&db, vec![patient, backup.server_settings("backup", true)]);
    settings.organizations[0].login_timeout = Duration::from_secs(120);
    let app = TestApp::spawn(&settings).await;

    // A session at the primary while it runs.
    let (session, sid) = carol_at_primary(&app, &primary, 40).await;

    primary.kill();
    let failed_over = tokio::time::timeout(
        Duration::from_secs(10),
        app.sessions
            .login("acme", "erin", "erin-pass", IpAddr::V4(client(41))),
    )
    .await
    .expect("the sign-in went on to the backup without waiting out the primary's timeout")
    .unwrap();
    assert_eq!(failed_over.server_name, "backup");
    assert!(
        backup
            .auth_lines()
            .iter()
            .any(|l| l.contains("calling=127.0.1.41")),
        "the backup authenticated it: {:?}",
        backup.auth_lines()
    );

    // The primary's session ends: its Stop finds nothing at the primary and fails over.
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    app.stop().await;
}

/// A Stop its server refused just before a graceful shutdown (SIGTERM) is not left for the next
/// start while the backup is up: the shutdown's flush waits out its short backoff, the second
/// refusal opens the server's breaker, and the Stop fails over before the process exits.
#[tokio::test]
async fn a_stop_refused_just_before_a_graceful_shutdown_fails_over_before_the_exit() {
    let mut primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut patient = primary.server_settings("primary", true);
    patient.timeout = Duration::from_secs(30);
    let settings = settings(&db, vec![patient, backup.server_settings("backup", true)]);
    let app = TestApp::spawn(&settings).await;
    let (session, sid) = carol_at_primary(&app, &primary, 43).await;

    primary.kill();
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let storage = app.storage.clone();
    app.stop().await;
    assert!(
        backup
            .acct_lines()
            .iter()
            .any(|l| l.contains("status=Stop") && l.contains(&sid)),
        "the Stop reached the backup before the exit: {:?}",
        backup.acct_lines()
    );
    assert_eq!(
        storage.outbox_backlog().await.unwrap(),
        1,
        "left: only the Stop's copy owed to the primary, which has the Start (sent once it is back)"
    );
}

/// A loopback UDP port nothing listens on (bound, then let go).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A portal whose organization has one server: authentication at `authenticator`, accounting
/// at `acct_port` of loopback (nothing there unless the test binds it), three tries of
/// `timeout` each, and a login deadline of `login_timeout`.
async fn lone_server_accounting_at(
    authenticator: &FreeRadius,
    acct_port: u16,
    timeout: Duration,
    login_timeout: Duration,
) -> (tempfile::TempDir, TestApp) {
    let (dir, db) = temp_db();
    let mut only = fast(authenticator, "only");
    only.acct_port = acct_port;
    only.timeout = timeout;
    only.retries = 2;
    let mut settings = settings(&db, vec![only]);
    settings.organizations[0].login_timeout = login_timeout;
    (dir, TestApp::spawn(&settings).await)
}

/// A Start refused at its first send (the session's server's accounting port closed: ICMP
/// port unreachable) fails over to the backup and takes the session with it; the server that
/// refused it never saw the session, so the Stop is owed to the backup alone — no copy is left
/// waiting for the other.
#[tokio::test]
async fn a_start_refused_at_its_first_send_owes_that_server_no_stop() {
    let authenticator = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut primary = fast(&authenticator, "primary");
    primary.acct_port = free_udp_port();
    let settings = quick_failover(&db, vec![primary, fast(&backup, "backup")]);
    let app = TestApp::spawn(&settings).await;
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(44)))
        .await
        .unwrap();
    let sid = format!("sid={} ", session.acct_session_id);
    backup.wait_for_acct(&["status=Start", &sid]).await;
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    backup.wait_for_acct(&["status=Stop", &sid]).await;
    wait_until("nothing left waiting in the outbox", || async {
        app.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    app.stop().await;
}

/// A lone server whose accounting port stays closed through a sign-in refuses every
/// retransmission of its Start (a port unreachable for each): the Start never arrived, so the
/// failed sign-in leaves nothing owed — no Start sent late once the server is back, and no Stop
/// for a session the server never saw (the user was told none was opened).
#[tokio::test]
async fn a_start_refused_at_every_send_by_a_lone_server_is_rolled_back_with_nothing_owed() {
    let authenticator = FreeRadius::start().await;
    let closed = free_udp_port();
    let (_dir, app) = lone_server_accounting_at(
        &authenticator,
        closed,
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
    .await;
    let error = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(46)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            radius_portal::access_session::SessionError::AccountingUnavailable
        ),
        "{error:?}"
    );
    assert!(
        app.radius.client().icmp_errors() >= 3,
        "each transmission was refused"
    );
    assert_eq!(
        app.storage.outbox_backlog().await.unwrap(),
        0,
        "nothing owed to the server"
    );
    let dead = app.storage.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (start, _, _) = &dead[0];
    assert_eq!(start.status_type, 1, "{dead:?}");
    assert_eq!(
        start.transmissions, 0,
        "none of its packets arrived: {dead:?}"
    );
    assert!(
        start
            .dead_reason
            .as_deref()
            .is_some_and(|r| r.contains("refused at every send")),
        "{dead:?}"
    );
    app.stop().await;
}

/// A Start refused at its first transmission and taken in at the next (something listens
/// there now, and never answers) may have arrived: the failed sign-in keeps its Start and its
/// Stop queued for the server.
#[tokio::test]
async fn a_start_refused_once_then_taken_in_keeps_its_start_and_stop_queued() {
    let authenticator = FreeRadius::start().await;
    let port = free_udp_port();
    let (_dir, app) = lone_server_accounting_at(
        &authenticator,
        port,
        Duration::from_secs(1),
        Duration::from_secs(4),
    )
    .await;
    let login = app.sign_in_in_background("carol", "carol-pass", IpAddr::V4(client(47)));
    wait_until("the Start's first transmission is refused", || async {
        app.radius.client().icmp_errors() > 0
    })
    .await;
    let _silent = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let error = login.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            radius_portal::access_session::SessionError::AccountingUnavailable
        ),
        "{error:?}"
    );
    assert_eq!(
        app.storage.outbox_backlog().await.unwrap(),
        2,
        "Start and Stop stay queued for the server"
    );
    app.stop().await;
}

/// A lone server that is restarting (nothing listens for a moment) is not given up at its
/// first ICMP port unreachable: the sign-in retransmits, and the restarted server answers it.
#[tokio::test]
async fn a_lone_server_restarting_answers_the_retransmission() {
    let mut radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut patient = radius.server_settings("only", true);
    patient.timeout = Duration::from_secs(2);
    patient.retries = 5;
    let mut settings = settings(&db, vec![patient]);
    settings.organizations[0].login_timeout = Duration::from_secs(30);
    let app = TestApp::spawn(&settings).await;

    radius.kill();
    let login = app.sign_in_in_background("carol", "carol-pass", IpAddr::V4(client(42)));
    wait_until("the sign-in's request met the closed port", || async {
        app.radius.client().icmp_errors() > 0
    })
    .await;
    assert!(!login.is_finished(), "still retransmitting");
    radius.restart().await;
    let session = login
        .await
        .unwrap()
        .expect("answered after the restart, not given up at the first refusal");
    assert_eq!(session.server_name, "only");
    app.stop().await;
}

#[tokio::test]
async fn with_every_server_down_login_fails_at_once_and_recovers_by_itself() {
    let mut radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("only", true);
    server.timeout = Duration::from_millis(200);
    server.retries = 0;
    let mut settings = settings(&db, vec![server]);
    settings.radius.probe_interval = Duration::from_millis(200);
    let app = TestApp::spawn(&settings).await;
    let addr = radius.auth_addr(true);

    radius.kill();
    for n in 1..=2 {
        let page = app.browser(client(n)).login("carol", "carol-pass").await;
        assert!(page.body.contains("cannot be reached"), "{}", page.body);
        // The password is to be typed again (the cursor there), but it is not said to be wrong.
        let password = &page.body[page.body.find(r#"id="password""#).unwrap()..];
        let password = &password[..password.find('>').unwrap()];
        assert!(
            password.contains("autofocus") && !password.contains("aria-invalid"),
            "{password}"
        );
    }
    assert!(!app.radius.health().allows(addr));
    let page = app.browser(client(3)).login("carol", "carol-pass").await;
    assert!(
        page.body.contains("cannot be reached"),
        "refused without sending: {}",
        page.body
    );
    // Audited: the two sign-ins that went to the server unanswered. The one refused before
    // anything was sent is answered but not written, as other refusals before the servers are
    // (a flood of sign-ins during an outage costs no storage).
    let unanswered = app
        .storage
        .audit_tail(50)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "login.unavailable")
        .count();
    assert_eq!(unanswered, 2);

    radius.restart().await;
    wait_until("the breaker closes by itself", || async {
        app.radius.health().allows(addr)
    })
    .await;
    let page = app.browser(client(4)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    app.stop().await;
}

#[tokio::test]
async fn a_row_that_cannot_be_encoded_is_dead_lettered_and_does_not_block_others() {
    let (radius, app, dir) = portal_with_one_server().await;
    let db = dir.path().join("portal.db");
    // 20 Class values of 250 bytes: no RADIUS packet can carry them.
    let now = radius_portal::access_session::now_ms();
    let huge = app
        .storage
        .open_session(&NewAccessSession {
            classes: vec![vec![b'c'; 250]; 20],
            ..stored_session("huge-class-session", "127.0.1.50", now)
        })
        .await
        .unwrap()
        .id;

    // A normal user's whole session goes through meanwhile (its disconnect wakes the loop).
    let browser = app.browser(client(1));
    browser.login("carol", "carol-pass").await;
    browser.post_form("/api/disconnect", "/session", &[]).await;
    radius.wait_for_acct(&["status=Stop", "user=carol"]).await;

    wait_until("the unencodable Start is dead-lettered", || async {
        let rows = app.storage.session_outbox(huge).await.unwrap();
        rows[0].dead_at.is_some()
    })
    .await;
    let rows = app.storage.session_outbox(huge).await.unwrap();
    assert!(
        rows[0].dead_reason.as_deref().unwrap().contains("encoded"),
        "{rows:?}"
    );
    let session = app.storage.session(huge).await.unwrap().unwrap();
    assert!(
        !session.active,
        "a session whose Start was never sent is rolled back"
    );
    assert!(
        !radius
            .acct_lines()
            .iter()
            .any(|l| l.contains("huge-class-session")),
        "nothing was sent for it"
    );
    app.stop().await;

    // The operator sees it, with the reason.
    let config = db.with_file_name("portal.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = \"{}\"\n[[organizations]]\nid = \"acme\"\nname = \"Acme\"\n\
             [[organizations.servers]]\nname = \"primary\"\naddress = \"127.0.0.1\"\nsecret = \"x\"\n",
            db.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_radius-portal"))
        .args(["accounting", "dead-letters", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("huge-class-session") && text.contains("cannot be encoded"),
        "{text}"
    );
}

#[tokio::test]
async fn accounting_keeps_up_with_64_concurrent_users() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut settings = settings(&db, vec![radius.server_settings("primary", true)]);
    settings.rate_limit.login_per_user = 10_000;
    let app = Arc::new(TestApp::spawn(&settings).await);

    let mut users = tokio::task::JoinSet::new();
    for n in 1..=64u8 {
        let app = app.clone();
        users.spawn(async move {
            let browser = app.browser(client(100 + n));
            let page = browser.login("carol", "carol-pass").await;
            assert_eq!(page.path, "/session", "{}", page.body);
            browser.post_form("/api/disconnect", "/session", &[]).await;
        });
    }
    while let Some(done) = users.join_next().await {
        done.unwrap();
    }
    // Sessions counted by their Acct-Session-Id: a retransmission the server logs twice (a
    // reply lost under load; delivery is at least once) is the same session's packet.
    let sessions_with = |lines: &[String], status: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("status={status}")))
            .map(|l| field(l, "sid").to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    wait_until("64 Starts and 64 Stops reach FreeRADIUS", || async {
        sessions_with(&radius.acct_lines(), "Stop") == 64
    })
    .await;
    let lines = radius.acct_lines();
    assert_eq!(sessions_with(&lines, "Start"), 64);
    let late: Vec<&String> = lines.iter().filter(|l| field(l, "delay") != "0").collect();
    assert!(late.is_empty(), "no Accounting-Request waited: {late:#?}");
    for start in lines.iter().filter(|l| l.contains("status=Start")) {
        let sid = field(start, "sid");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("status=Stop") && field(l, "sid") == sid),
            "every Start has its Stop: {sid}"
        );
    }
    Arc::into_inner(app).unwrap().stop().await;
}

/// More than 256 requests in flight to one server (one Identifier space per source socket): more
/// source sockets are opened and every request completes — none fails for want of an Identifier.
#[tokio::test]
async fn more_than_256_requests_in_flight_to_one_server_all_complete_over_more_sockets() {
    let server = FreeRadius::start().await;
    let radius = Radius::new(RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap());
    let mut endpoint = server.endpoint("primary", false);
    // Black-holed while they pile up: the kernel may drop some of them, retransmissions cover it.
    endpoint.timeout = Duration::from_secs(2);
    endpoint.retries = 10;
    let nas = NasIdentity {
        ip: Ipv4Addr::LOCALHOST.into(),
        identifier: "many-in-flight".into(),
    };
    const REQUESTS: u32 = 600;
    server.pause();
    let mut set = tokio::task::JoinSet::new();
    for n in 0..REQUESTS {
        let (radius, endpoint, nas) = (radius.clone(), endpoint.clone(), nas.clone());
        set.spawn(async move {
            let record = AccountingRecord {
                status_type: status_type::START,
                acct_session_id: format!("inflight-{n}"),
                username: "carol".into(),
                client_ip: Ipv4Addr::new(127, 0, 3, 1).into(),
                classes: Vec::new(),
                event_timestamp: 1_700_000_000,
                delay_secs: 0,
                session_time_secs: None,
                terminate_cause: None,
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            radius
                .account(
                    &endpoint,
                    &nas,
                    &record,
                    deadline,
                    (true, false),
                    Default::default(),
                )
                .await
        });
    }
    let needed = (REQUESTS as usize).div_ceil(256);
    wait_until(
        "the requests to spread over more source sockets",
        || async { radius.client().socket_count() >= needed },
    )
    .await;
    server.resume();
    while let Some(done) = set.join_next().await {
        done.unwrap().expect("every request is answered");
    }
    wait_until("every Start reaches FreeRADIUS", || async {
        let lines = server.acct_lines();
        (0..REQUESTS).all(|n| {
            let sid = format!("inflight-{n}");
            lines.iter().any(|l| field(l, "sid") == sid)
        })
    })
    .await;
}

/// An unanswered Status-Server is not retransmitted (RFC 5997 §6): the next try is a new packet,
/// with its own Identifier and Request Authenticator — and an answer to an earlier try that
/// comes after its timeout, while a later one waits, is still taken (a code review: a server
/// answering in 1.5 timeouts failed every try).
#[tokio::test]
async fn an_unanswered_status_server_is_tried_again_as_a_new_packet() {
    let server = FreeRadius::start().await;
    let upstream = server.auth_addr(false);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let front = {
        let seen = seen.clone();
        udp_front(move |front, request, from| {
            let mut seen = seen.lock().unwrap();
            seen.push(request.clone());
            // The first is answered late (after one and a half timeouts); the rest are lost.
            if seen.len() == 1 {
                let front = front.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    pass_on(&front, request, from, upstream);
                });
            }
        })
        .await
    };
    let radius = Radius::new(RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap());
    let mut endpoint = server.endpoint("primary", false);
    endpoint.auth_addr = front;
    endpoint.timeout = Duration::from_secs(1);
    endpoint.retries = 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let answer = radius
        .status_server(
            &endpoint,
            radius_portal::radius::health::Port::Auth,
            deadline,
        )
        .await;
    assert!(
        answer.is_ok(),
        "the first try's late answer is taken: {answer:?}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 2,
        "a second try went out meanwhile: {}",
        seen.len()
    );
    for packet in &seen {
        assert_eq!(packet[0], Code::StatusServer as u8);
    }
    assert_ne!(seen[0][1], seen[1][1], "each try has its own Identifier");
    assert_ne!(
        seen[0][4..20],
        seen[1][4..20],
        "each try has its own Request Authenticator"
    );
}

/// A UDP relay in front of a real server that behaves like a server without Status-Server
/// (Microsoft NPS): Status-Server is never answered (and counted); everything else is passed on
/// while `up`.
async fn relay_without_status_server(
    upstream: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    status_servers: Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    relay(move |request| {
        if request[0] == Code::StatusServer as u8 {
            status_servers.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        up.load(Ordering::SeqCst).then_some(upstream)
    })
    .await
}

/// `status_check = "request"`: a server that never answers Status-Server is not probed with it;
/// once it is back, a trial login closes its breaker — it does not stay out of use until restart.
#[tokio::test]
async fn a_server_without_status_server_comes_back_through_a_trial_request() {
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
    let radius = FreeRadius::start().await;
    let up = Arc::new(AtomicBool::new(false));
    let status_servers = Arc::new(AtomicUsize::new(0));
    let relay =
        relay_without_status_server(radius.auth_addr(true), up.clone(), status_servers.clone())
            .await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("nps", true);
    server.auth_port = relay.port();
    server.timeout = Duration::from_millis(200);
    server.retries = 0;
    server.status_check = radius_portal::config::StatusCheck::Request;
    let mut settings = settings(&db, vec![server]);
    settings.radius.probe_interval = Duration::from_millis(200);
    // Every sign-in below is carol's: the loop waiting for the trial may try many times.
    settings.rate_limit.login_per_user = 10_000;
    let app = TestApp::spawn(&settings).await;

    for n in 1..=2 {
        let page = app.browser(client(n)).login("carol", "carol-pass").await;
        assert!(page.body.contains("cannot be reached"), "{}", page.body);
    }
    assert!(!app.radius.health().allows(relay), "the breaker opened");
    // Still ready: only a login's trial can close this breaker, and a replica out of a load
    // balancer's rotation would never get one.
    let ready = reqwest::get(format!("http://{}/readyz", app.addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    up.store(true, Ordering::SeqCst);
    let next = AtomicU8::new(10);
    wait_until("a trial login succeeds", || async {
        let n = next.fetch_add(1, Ordering::SeqCst);
        app.browser(client(n))
            .login("carol", "carol-pass")
            .await
            .path
            == "/session"
    })
    .await;
    assert!(
        app.radius.health().allows(relay),
        "the trial closed the breaker"
    );
    assert_eq!(
        status_servers.load(Ordering::SeqCst),
        0,
        "a server checked by request gets no Status-Server"
    );
    app.stop().await;
}

/// The User-Name of a RADIUS request, if it has one.
fn user_name(request: &[u8]) -> Option<&[u8]> {
    let mut at = 20;
    while at + 2 <= request.len() {
        let (kind, len) = (request[at], request[at + 1] as usize);
        if len < 2 || at + len > request.len() {
            return None;
        }
        if kind == attr::USER_NAME {
            return Some(&request[at + 2..at + len]);
        }
        at += len;
    }
    None
}

/// A UDP relay in front of a real server that signs what FreeRADIUS before 3.2.5 signs by a
/// policy: Access-Request answers (from its strict port, which adds Message-Authenticator) —
/// but not `unsigned_user`'s, and not Status-Server answers (from its plain port, which never
/// does). Nothing passes while `up` is false.
async fn relay_signing_like_older_freeradius(
    radius: &FreeRadius,
    unsigned_user: &'static str,
    up: Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    let (signed, plain) = (radius.auth_addr(true), radius.auth_addr(false));
    relay(move |request| {
        let unsigned = request[0] == Code::StatusServer as u8
            || user_name(request) == Some(unsigned_user.as_bytes());
        up.load(Ordering::SeqCst)
            .then_some(if unsigned { plain } else { signed })
    })
    .await
}

/// With `require_message_authenticator`, a server that answers one user unsigned (its policy
/// signs the others) fails that user's sign-ins without shutting the server for everyone else
/// (its breaker does not count such answers as silence); and a server whose
/// Status-Server answers are unsigned (FreeRADIUS before 3.2.5) is brought back by them after
/// a real outage.
#[tokio::test]
async fn an_unsigned_answer_fails_its_sign_in_alone_and_unsigned_probes_bring_a_server_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let radius = FreeRadius::start().await;
    let up = Arc::new(AtomicBool::new(true));
    let (_dir, app, relay) =
        portal_before_older_freeradius(&radius, up.clone(), Default::default()).await;

    for n in 1..=3 {
        let page = app.browser(client(n)).login("erin", "erin-pass").await;
        assert_ne!(page.path, "/session", "{}", page.body);
        // Told what happened: the server answered (no outage to wait out), unsigned.
        assert!(
            page.body.contains("answered, but without the signature")
                && !page.body.contains("cannot be reached"),
            "{}",
            page.body
        );
    }
    assert!(
        app.radius.health().allows(relay),
        "answers are not silence: the breaker stays closed"
    );
    let audited = app.storage.audit_tail(20).await.unwrap();
    assert_eq!(
        audited
            .iter()
            .filter(|e| e.action == "login.unsigned_answer")
            .count(),
        3,
        "{audited:?}"
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    let page = app.browser(client(4)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);

    // An outage opens the breaker; Status-Server answers without a signature close it.
    up.store(false, Ordering::SeqCst);
    an_outage_opens_the_breaker(&app, relay, [5, 6]).await;
    up.store(true, Ordering::SeqCst);
    wait_until(
        "an unsigned Status-Server answer closes the breaker",
        || async { app.radius.health().allows(relay) },
    )
    .await;
    let page = app.browser(client(7)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    app.stop().await;
}

/// A server checked by request (`status_check = "request"`) whose trial after an outage is a
/// sign-in answered unsigned is back: the answer shows it alive, and the next user's sign-in
/// goes there (the trial does not stay out, keeping the server from everyone).
#[tokio::test]
async fn an_unsigned_answer_to_a_trial_request_brings_the_server_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let radius = FreeRadius::start().await;
    let up = Arc::new(AtomicBool::new(false));
    let (_dir, app, relay) = portal_before_older_freeradius(
        &radius,
        up.clone(),
        radius_portal::config::StatusCheck::Request,
    )
    .await;
    an_outage_opens_the_breaker(&app, relay, [1, 2]).await;
    up.store(true, Ordering::SeqCst);
    let next = std::sync::atomic::AtomicU8::new(10);
    wait_until(
        "erin's sign-in goes as the trial and is answered",
        || async {
            let n = next.fetch_add(1, Ordering::SeqCst);
            app.browser(client(n)).login("erin", "erin-pass").await;
            app.radius.health().allows(relay)
        },
    )
    .await;
    let page = app.browser(client(100)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    app.stop().await;
}

/// The portal with one server, `radius` behind [`relay_signing_like_older_freeradius`] (erin's
/// answers unsigned) switched by `up`, checked by `check`: 300 ms tries, the breaker open after
/// two unanswered sign-ins, probes every 200 ms.
async fn portal_before_older_freeradius(
    radius: &FreeRadius,
    up: Arc<std::sync::atomic::AtomicBool>,
    check: radius_portal::config::StatusCheck,
) -> (tempfile::TempDir, TestApp, SocketAddr) {
    let relay = relay_signing_like_older_freeradius(radius, "erin", up).await;
    let (dir, db) = temp_db();
    let mut server = radius.server_settings("old", true);
    server.auth_port = relay.port();
    server.timeout = Duration::from_millis(300);
    server.retries = 1;
    server.status_check = check;
    let mut settings = settings(&db, vec![server]);
    settings.radius.breaker_failures = 2;
    settings.radius.probe_interval = Duration::from_millis(200);
    (dir, TestApp::spawn(&settings).await, relay)
}

/// Carol's sign-ins from `clients`, with the server away, fail and open its breaker.
async fn an_outage_opens_the_breaker(app: &TestApp, server: SocketAddr, clients: [u8; 2]) {
    for n in clients {
        let page = app.browser(client(n)).login("carol", "carol-pass").await;
        assert!(page.body.contains("cannot be reached"), "{}", page.body);
    }
    assert!(!app.radius.health().allows(server), "the breaker opened");
}

/// A backup nobody has used is checked while idle (`idle_check`): a dead one is found down
/// before a failover needs it — its breaker open, in the metrics — while the primary, which
/// answers its checks, stays up; no sign-in is needed for either.
#[tokio::test]
async fn an_idle_dead_backup_is_found_down_before_a_failover_needs_it() {
    let radius = FreeRadius::start().await;
    // Takes the datagrams, never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (_dir, db) = temp_db();
    let mut backup = radius.server_settings("backup", true);
    backup.auth_port = silent_port;
    backup.acct_port = silent_port;
    backup.timeout = Duration::from_millis(500);
    backup.retries = 0;
    let mut config = settings(&db, vec![radius.server_settings("primary", true), backup]);
    config.radius.idle_check = Duration::from_secs(5);
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn(&config).await;
    let servers = app.organizations.get("acme").unwrap().servers.clone();
    let health = app.radius.health().clone();
    use radius_portal::radius::health::Port;
    wait_until("the idle backup to be found down", || async {
        !health.is_up(&servers[1], Port::Auth) && !health.is_up(&servers[1], Port::Acct)
    })
    .await;
    assert!(health.is_up(&servers[0], Port::Auth) && health.is_up(&servers[0], Port::Acct));
    let metrics = app.metrics_text().await;
    let dead = SocketAddr::from((Ipv4Addr::LOCALHOST, silent_port));
    assert!(
        metrics.contains(&format!(
            "portal_radius_breaker_state{{address=\"{dead}\"}} 1"
        )),
        "{metrics}"
    );
    let ready = reqwest::get(format!("http://{}/readyz", app.addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "the primary is up");
    app.stop().await;
}

/// A disabled organization's servers are not checked while idle (nobody signs in there), the
/// enabled organizations' are; enabled, its servers are checked too. Here the servers checked
/// are silent sockets that count what reaches them: the enabled organization's backup is found
/// down by its first check (at most one interval after the start) and probed since; by a probe
/// an interval after the start, the disabled organization's server would have had its first.
#[tokio::test]
async fn a_disabled_organizations_servers_are_checked_idle_only_once_it_is_enabled() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (backup_port, backup_seen) = silent_counting_server().await;
    let (beta_port, beta_seen) = silent_counting_server().await;
    let silent = |name: &str, port: u16| {
        let mut server = radius.server_settings(name, true);
        server.auth_port = port;
        server.acct_port = port;
        server.timeout = Duration::from_millis(500);
        server.retries = 0;
        server
    };
    let mut config = settings(
        &db,
        vec![
            radius.server_settings("primary", true),
            silent("backup", backup_port),
        ],
    );
    let mut beta = config.organizations[0].clone();
    beta.id = "beta".into();
    beta.name = "Beta Org".into();
    beta.enabled = Some(false);
    beta.servers = vec![silent("beta-primary", beta_port)];
    config.organizations.push(beta);
    config.radius.idle_check = Duration::from_secs(5);
    config.radius.probe_interval = Duration::from_millis(500);
    config.validate().unwrap();
    let started = tokio::time::Instant::now();
    let app = TestApp::spawn(&config).await;
    let interval_on = started + config.radius.idle_check;
    wait_until(
        "a probe of the backup an interval after the start",
        || async {
            backup_seen
                .lock()
                .unwrap()
                .iter()
                .any(|at| *at >= interval_on)
        },
    )
    .await;
    assert!(
        beta_seen.lock().unwrap().is_empty(),
        "the disabled organization's server was checked"
    );
    radius_portal::organizations::set_active(
        &app.storage,
        &app.organizations,
        "beta",
        true,
        "test",
    )
    .await
    .unwrap();
    wait_until("the enabled organization's server checked", || async {
        !beta_seen.lock().unwrap().is_empty()
    })
    .await;
    app.stop().await;
}

/// A UDP socket on loopback that never answers and notes when each datagram reached it: its
/// port and those instants.
async fn silent_counting_server() -> (u16, Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while socket.recv_from(&mut buf).await.is_ok() {
            noted.lock().unwrap().push(tokio::time::Instant::now());
        }
    });
    (port, seen)
}

/// `/readyz` says 503 while every server of every organization has an open breaker (no
/// sign-in can succeed on this replica), and ready again once a probe closes one; the metrics
/// show the breaker and the timeouts meanwhile.
#[tokio::test]
async fn readiness_fails_while_every_server_is_open_circuit_and_recovers() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut settings = settings(&db, vec![radius.server_settings("primary", true)]);
    settings.radius.probe_interval = Duration::from_millis(200);
    settings.organizations[0].login_timeout = Duration::from_secs(2);
    settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn(&settings).await;
    let ready = || async {
        reqwest::get(format!("http://{}/readyz", app.addr))
            .await
            .unwrap()
    };
    assert_eq!(ready().await.status(), 200);

    radius.pause();
    let addr = radius.auth_addr(true);
    for n in 1..=2 {
        let page = app
            .browser(client(20 + n))
            .login("carol", "carol-pass")
            .await;
        assert_ne!(page.path, "/session", "{}", page.body);
    }
    assert!(!app.radius.health().allows(addr), "breaker open");
    let answer = ready().await;
    assert_eq!(answer.status(), 503);
    assert!(answer.text().await.unwrap().contains("breakers open"));
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "portal_radius_breaker_state{{address=\"{addr}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"portal_radius_timeouts_total{{address="{addr}",port="auth",server="primary"}}"#
        )),
        "{metrics}"
    );

    // A single replica can opt out: it keeps serving its pages during the outage.
    let (_dir2, db2) = temp_db();
    let mut single = common::settings(&db2, vec![radius.server_settings("primary", true)]);
    single.organizations[0].login_timeout = Duration::from_secs(2);
    single.radius.readiness_requires_servers = false;
    let alone = TestApp::spawn(&single).await;
    for n in 1..=2 {
        alone
            .browser(client(30 + n))
            .login("carol", "carol-pass")
            .await;
    }
    assert!(
        !alone.radius.health().allows(addr),
        "its breaker is open too"
    );
    let answer = reqwest::get(format!("http://{}/readyz", alone.addr))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    alone.stop().await;

    radius.resume();
    wait_until("ready again after a probe", || async {
        ready().await.status() == 200
    })
    .await;

    // Down again, and then the portal's own database goes (removed): `/readyz` names the
    // portal's fault, which the operator must mend here, not the servers' outage.
    radius.pause();
    for n in 3..=4 {
        app.browser(client(20 + n))
            .login("carol", "carol-pass")
            .await;
    }
    assert!(!app.radius.health().allows(addr), "breaker open again");
    assert!(ready()
        .await
        .text()
        .await
        .unwrap()
        .contains("breakers open"));
    std::fs::remove_file(&db).unwrap();
    wait_until("/readyz to name the removed database", || async {
        ready()
            .await
            .text()
            .await
            .unwrap()
            .contains("removed or replaced")
    })
    .await;
    radius.resume();
    app.stop().await;
}

/// A row claimed again and again without being sent (held while every accounting server was
/// down) whose first exchange then fails is tried again after the backoff of that one failed
/// exchange — a second —, not after the five minutes its claims would make (black-box
/// tester: a Start refused once after an outage waited five minutes at a server that answered).
#[tokio::test]
async fn a_rows_claims_while_held_do_not_lengthen_its_backoff() {
    let (radius, app, dir) = portal_with_one_server().await;
    let accounting = own_sender(&app);
    // Claims dated an hour on, each running out at once: the portal's own sender (on the real
    // clock) never finds the row free meanwhile.
    let now = radius_portal::access_session::now_ms();
    let later = now + 3_600_000;
    let held = NewAccessSession {
        start_claimed_until: Some(later),
        ..stored_session("held-long", "127.0.1.70", now)
    };
    let opened = app.storage.open_session(&held).await.unwrap();
    let mut row = opened.claimed_start.unwrap();
    let row_id = row.id;
    for k in 1..=9 {
        let at = later + k;
        row = app
            .storage
            .claim_session_outbox(opened.id, status_type::START, at, at)
            .await
            .unwrap()
            .expect("a claim that ran out is free to take");
    }
    assert_eq!((row.attempts, row.transmissions), (10, 0));
    // The server silent this time: the one exchange fails.
    radius.pause();
    let failed_at = radius_portal::access_session::now_ms();
    let delivered = accounting
        .deliver_claimed(
            row,
            held.opened(opened.id),
            tokio::time::Instant::now() + Duration::from_secs(1),
            false,
        )
        .await
        .unwrap();
    radius.resume();
    assert!(!delivered);
    let file = rusqlite::Connection::open(dir.path().join("portal.db")).unwrap();
    let (next, transmissions): (i64, i64) = file
        .query_row(
            "SELECT next_attempt_at, transmissions FROM accounting_outbox WHERE id = ?1",
            [row_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(transmissions, 1);
    // 1 s after its failure (its tenth claim's backoff would be 512 s).
    assert!(
        next - failed_at < 60_000,
        "tried again {} s after the failure",
        (next - failed_at) / 1000
    );
    app.stop().await;
}

/// A row whose packet was lost at its server while the server was silent, and whose server's
/// breaker opened (other rows' timeouts) and closed again (it answers again) before that
/// exchange's timeout ran out, is due again at once when the exchange fails — not after its
/// backoff: the recovery's wake-up came while the row was claimed, and the rows held for the
/// server went then (a server's Stop copies went 30 s late so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_lost_while_its_server_came_back_is_due_again_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let radius = FreeRadius::start().await;
    let (dir, db) = temp_db();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let acct = radius.acct_addr();
    let relay = common::gated_relay(acct, open.clone()).await;
    let mut settings_of_server = radius.server_settings("primary", true);
    settings_of_server.acct_port = relay.port;
    // One transmission, its timeout longer than the sign-in's deadline (15 s, long enough for
    // a probe to bring the server back): the delivery ends with its first exchange.
    settings_of_server.timeout = Duration::from_secs(30);
    settings_of_server.retries = 0;
    let app = TestApp::spawn(&settings(&db, vec![settings_of_server])).await;
    let accounting = own_sender(&app);
    let server = app.organizations.get("acme").unwrap().servers[0].clone();
    let health = app.radius.health().clone();
    let target = health.target(&server, radius_portal::radius::health::Port::Acct);

    // A Start claimed an hour on (the portal's own sender leaves it alone), queued a minute
    // ago, five exchanges failed already: its backoff would be 32 s.
    let now = radius_portal::access_session::now_ms();
    let held = NewAccessSession {
        start_claimed_until: Some(now + 3_600_000),
        ..stored_session("lost-while-back", "127.0.1.72", now)
    };
    let opened = app.storage.open_session(&held).await.unwrap();
    let mut row = opened.claimed_start.unwrap();
    let row_id = row.id;
    row.created_at = now - 60_000;
    row.transmissions = 5;

    open.store(false, SeqCst);
    let delivery = {
        let (accounting, session) = (accounting.clone(), held.opened(opened.id));
        tokio::spawn(async move {
            accounting
                .deliver_claimed(
                    row,
                    session,
                    tokio::time::Instant::now() + Duration::from_secs(15),
                    false,
                )
                .await
        })
    };
    wait_until("the Start to be lost", || async {
        relay.dropped.load(SeqCst) > 0
    })
    .await;
    // Other rows' timeouts open the server's breaker; the server answers again, and a probe
    // closes the breaker while the Start's exchange still waits.
    let recoveries = health.recoveries_at(target);
    health.record_failure(&server, radius_portal::radius::health::Port::Acct);
    health.record_failure(&server, radius_portal::radius::health::Port::Acct);
    assert!(health.is_open(target));
    open.store(true, SeqCst);
    wait_until("a probe to close the breaker", || async {
        health.recoveries_at(target) > recoveries
    })
    .await;
    assert!(!delivery.is_finished(), "the exchange still waits");
    let sent = delivery.await.unwrap().unwrap();
    let failed_at = radius_portal::access_session::now_ms();
    assert!(!sent, "its one packet was lost");
    let file = rusqlite::Connection::open(dir.path().join("portal.db")).unwrap();
    let (next, delivered): (i64, Option<i64>) = file
        .query_row(
            "SELECT next_attempt_at, delivered_at FROM accounting_outbox WHERE id = ?1",
            [row_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // Due at once (or sent by the portal's own loop already).
    assert!(
        delivered.is_some() || next <= failed_at,
        "due {} ms after the failure",
        next - failed_at
    );
    app.stop().await;
}

/// A delivery whose claim ran out while it waited (a login's Start after minutes behind a
/// preempted session's Stop) never sends a row another sender took meanwhile: it leaves the
/// row to that sender, and the server gets one Start. A claim merely running short is renewed
/// and the packet sent.
#[tokio::test]
async fn a_delivery_never_sends_a_row_whose_claim_another_sender_took() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let accounting = own_sender(&app);
    let now = radius_portal::access_session::now_ms();
    let session = |sid: &str, ip: &str, claimed_until: i64| NewAccessSession {
        start_claimed_until: Some(claimed_until),
        ..stored_session(sid, ip, now)
    };
    let soon = || tokio::time::Instant::now() + Duration::from_secs(5);

    // A second of the claim left: renewed, then sent.
    let short = session("short-lease", "127.0.1.60", now + 1_000);
    let opened = app.storage.open_session(&short).await.unwrap();
    let row = opened.claimed_start.unwrap();
    assert!(accounting
        .deliver_claimed(row, short.opened(opened.id), soon(), false)
        .await
        .unwrap());
    radius
        .wait_for_acct(&["status=Start", "sid=short-lease"])
        .await;

    // Run out, and taken by another sender: the stale delivery sends nothing and waits for the
    // other's outcome (none within its deadline here).
    let stale = session("stale-lease", "127.0.1.61", now - 1);
    let opened = app.storage.open_session(&stale).await.unwrap();
    let row = opened.claimed_start.unwrap();
    let at = radius_portal::access_session::now_ms();
    let taken = app
        .storage
        .claim_session_outbox(opened.id, status_type::START, at, at + 120_000)
        .await
        .unwrap()
        .expect("a claim that ran out is free to take");
    assert_eq!(taken.attempts, row.attempts + 1);
    let record = stale.opened(opened.id);
    assert!(!accounting
        .deliver_claimed(
            row,
            record.clone(),
            tokio::time::Instant::now() + Duration::from_secs(1),
            false
        )
        .await
        .unwrap());
    // The sender that holds it sends it: the server has exactly one Start for the session.
    assert!(accounting
        .deliver_claimed(taken, record, soon(), false)
        .await
        .unwrap());
    radius
        .wait_for_acct(&["status=Start", "sid=stale-lease"])
        .await;
    let starts = radius
        .acct_lines()
        .iter()
        .filter(|l| l.contains("status=Start") && l.contains("sid=stale-lease "))
        .count();
    assert_eq!(starts, 1, "{:?}", radius.acct_lines());
    app.stop().await;
}

/// A session whose sign-in died with its process (its lease on the session run out, its Start's
/// claim too) is ended by the delivery loop that takes its Start: the server gets the Start, then
/// a NAS-Error Stop dated at the session's start — no user was given it, and no identity stays
/// open to its deadline. One whose sign-in is under way (its lease renewed) is left to that
/// sign-in: the loop sends nothing of it, the sign-in's own delivery sends its Start, and the
/// session stays.
#[tokio::test]
async fn a_sign_in_that_died_is_ended_and_one_under_way_is_left_to_finish() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let now = radius_portal::access_session::now_ms();
    // Opened half a minute ago; claim and lease ran out 20 s ago (past the 10 s margin the
    // clocks of replicas are given).
    let started_at = now - 30_000;
    let signing_in = |sid: &str, ip: &str| NewAccessSession {
        start_claimed_until: Some(now - 20_000),
        ..stored_session(sid, ip, started_at)
    };
    let dead = app
        .storage
        .open_session(&signing_in("died-signing-in", "127.0.1.80"))
        .await
        .unwrap()
        .id;
    let alive = app
        .storage
        .open_session(&signing_in("still-signing-in", "127.0.1.81"))
        .await
        .unwrap()
        .id;
    assert!(app
        .storage
        .renew_sign_in(alive, now + 600_000)
        .await
        .unwrap());
    app.sessions.accounting().wake();

    let stop = radius
        .wait_for_acct(&["status=Stop", "sid=died-signing-in"])
        .await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
    assert_eq!(field(&stop, "session_time"), "0");
    assert_eq!(
        field(&stop, "event_ts").parse::<i64>().unwrap(),
        started_at / 1000
    );
    let lines = radius.acct_lines();
    let at = |status: &str| {
        lines.iter().position(|l| {
            l.contains(&format!("status={status} ")) && l.contains("sid=died-signing-in ")
        })
    };
    assert!(at("Start").unwrap() < at("Stop").unwrap(), "{lines:?}");
    assert!(!app.storage.session(dead).await.unwrap().unwrap().active);
    // Its sign-in, had it still waited on that Start, is told there is no session.
    let sign_in = own_sender(&app);
    let soon = || tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(!sign_in
        .deliver_now(dead, status_type::START, soon())
        .await
        .unwrap());

    wait_until(
        "the loop to leave the live sign-in's Start to it",
        || async {
            let rows = app.storage.session_outbox(alive).await.unwrap();
            rows[0].last_error.as_deref()
                == Some("left to the sign-in that opened the session while its lease runs")
        },
    )
    .await;
    assert!(
        !radius
            .acct_lines()
            .iter()
            .any(|l| l.contains("sid=still-signing-in ")),
        "nothing sent for it"
    );
    assert!(sign_in
        .deliver_now(alive, status_type::START, soon())
        .await
        .unwrap());
    radius
        .wait_for_acct(&["status=Start", "sid=still-signing-in"])
        .await;
    assert!(app.storage.session(alive).await.unwrap().unwrap().active);
    app.stop().await;
}

/// A replaced session's Stop that could only go after the Start of the session that replaced
/// it (its own Start held by a sender that never sent it: a replica that died) is followed by
/// an Interim-Update of that session: a firewall that keys identities by address, and took the
/// late Stop for the end of the address's user, learns its current user again. Sent in order
/// (the replaced session's Stop before the new Start), no Interim-Update follows.
#[tokio::test]
async fn a_late_stop_of_a_replaced_session_is_followed_by_its_successors_interim_update() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let new_sid = late_stop_then_interim(&radius, &app, 90, false).await;

    // In order: carol signs in at that address again; her session's Stop goes first.
    let third = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(90)))
        .await
        .unwrap();
    let third_sid = format!("sid={} ", third.acct_session_id);
    radius.wait_for_acct(&["status=Start", &third_sid]).await;
    let lines = radius.acct_lines();
    assert!(
        line_of(&lines, "Stop", &new_sid) < line_of(&lines, "Start", &third_sid),
        "{lines:?}"
    );
    app.stop().await;
    assert_no_line(&radius, "Interim-Update", &third_sid);
}

/// Any session's Stop that went after the next session's Start at its address — here a
/// Disconnect's, which no sign-in replaced (the next sign-in came once it had ended) — is
/// followed by that session's Interim-Update, and counted.
#[tokio::test]
async fn a_disconnects_late_stop_is_followed_by_the_next_sessions_interim_update() {
    let (radius, app, _dir) = portal_with_one_server().await;
    late_stop_then_interim(&radius, &app, 91, true).await;
    let metrics = app
        .radius
        .metrics()
        .render(&radius_portal::metrics::Snapshot::default());
    assert!(
        metrics.contains("portal_accounting_late_stops_total 1\n"),
        "{metrics}"
    );
    app.stop().await;
}

/// A session of another user at `client(n)` whose Start a sender holds for an hour and never
/// sends (a replica that died) — ended by a Disconnect first if `disconnected`, else replaced
/// by the sign-in — then carol's sign-in there; once the holder's claim is given up, its Start
/// and its Stop go, after carol's Start, and carol's session sends an Interim-Update after
/// them. Gives the `sid=… ` fragment of carol's accounting lines.
async fn late_stop_then_interim(
    radius: &FreeRadius,
    app: &TestApp,
    n: u8,
    disconnected: bool,
) -> String {
    let now = radius_portal::access_session::now_ms();
    let old_sid = format!("held-by-the-dead-{n}");
    let held = NewAccessSession {
        start_claimed_until: Some(now + 3_600_000),
        username: "dave".into(),
        ..stored_session(&old_sid, &client(n).to_string(), now)
    };
    let opened = app.storage.open_session(&held).await.unwrap();
    let claim = opened.claimed_start.unwrap();
    if disconnected {
        assert!(app.sessions.disconnect(opened.id).await.unwrap());
    }
    // Carol signs in at that address: the earlier session's Stop cannot go first.
    let successor = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(n)))
        .await
        .unwrap();
    let new_sid = format!("sid={} ", successor.acct_session_id);
    radius.wait_for_acct(&["status=Start", &new_sid]).await;
    // The holder's claim given up: the earlier session's Start and Stop go, then the
    // successor's Interim-Update.
    assert!(app.storage.renew_claim(&claim, now - 1).await.unwrap());
    app.sessions.accounting().wake();
    radius
        .wait_for_acct(&["status=Interim-Update", &new_sid])
        .await;
    let lines = radius.acct_lines();
    let old_sid = format!("sid={old_sid} ");
    assert!(
        line_of(&lines, "Start", &new_sid) < line_of(&lines, "Stop", &old_sid),
        "{lines:?}"
    );
    assert!(
        line_of(&lines, "Stop", &old_sid) < line_of(&lines, "Interim-Update", &new_sid),
        "{lines:?}"
    );
    new_sid
}

/// A Stop queued behind its session's Interim-Update while that is on its way (a refresh, then
/// a Disconnect, the server answering slowly) is waited for by the next sign-in at the address,
/// as any Stop on its way: its Start goes after them, and no Interim-Update is needed.
#[tokio::test]
async fn a_sign_in_waits_for_a_stop_queued_behind_its_sessions_interim_update() {
    let HeldAnswers {
        radius,
        app,
        _dir,
        armed,
        held,
        release,
        address,
        erin,
    } = erin_behind_a_holding_relay(96).await;
    // A refresh: its Interim-Update answered, the answer held.
    armed.store(true, SeqCst);
    app.sessions.refresh(erin.id).await.unwrap();
    held.notified().await;
    // Ended meanwhile: the Stop queued behind the Interim-Update.
    stopped_by_its_user(&app, erin.id).await;
    let login = app.sign_in_in_background("carol", "carol-pass", address);
    wait_until("carol's session is opened", || async {
        app.storage
            .active_sessions_of(Some("acme"), 10)
            .await
            .unwrap()
            .iter()
            .any(|s| s.username == "carol")
    })
    .await;
    release.notify_one();
    let carol = login.await.unwrap().unwrap();
    let (erin_sid, carol_sid) = (
        format!("sid={} ", erin.acct_session_id),
        format!("sid={} ", carol.acct_session_id),
    );
    radius.wait_for_acct(&["status=Start", &carol_sid]).await;
    let lines = radius.acct_lines();
    assert!(
        line_of(&lines, "Interim-Update", &erin_sid) < line_of(&lines, "Stop", &erin_sid),
        "{lines:?}"
    );
    assert!(
        line_of(&lines, "Stop", &erin_sid) < line_of(&lines, "Start", &carol_sid),
        "{lines:?}"
    );
    app.stop().await;
    assert_no_line(&radius, "Interim-Update", &carol_sid);
}

/// A Stop held back after a failed attempt when a sign-in at its address sends its Start (not
/// waited for: its server said nothing the last time), sent by the delivery loop while the
/// Start's answer is still on its way and acknowledged first — its recording saw no
/// acknowledged Start to re-assert —: once the Start is acknowledged, the sign-in's session
/// sends an Interim-Update, so an address-keyed firewall that took the Stop last has its user
/// again.
#[tokio::test]
async fn a_held_back_stop_acknowledged_before_a_start_it_followed_is_followed_by_an_interim_update()
{
    let HeldAnswers {
        radius,
        app,
        _dir,
        armed,
        held,
        release,
        address,
        erin: earlier,
    } = erin_behind_a_holding_relay(92).await;
    // Ended; its Stop's first attempt failed: held back for a second and a half.
    let now = stopped_by_its_user(&app, earlier.id).await;
    let stop = app
        .storage
        .claim_session_outbox(earlier.id, status_type::STOP, now, now + 60_000)
        .await
        .unwrap()
        .expect("the Stop, due");
    app.storage
        .mark_failed(&stop, now + 1_500, "timeout", Some("primary"))
        .await
        .unwrap();

    armed.store(true, SeqCst);
    let login = app.sign_in_in_background("carol", "carol-pass", address);
    held.notified().await; // carol's Start answered by FreeRADIUS, the answer held
    app.sessions.accounting().wake();
    wait_until("the held-back Stop acknowledged", || async {
        app.storage
            .outbox_delivered(earlier.id, status_type::STOP)
            .await
            .unwrap()
    })
    .await;
    release.notify_one(); // the Start's acknowledgement reaches the portal
    let session = login.await.unwrap().unwrap();
    let sid = format!("sid={} ", session.acct_session_id);
    radius.wait_for_acct(&["status=Interim-Update", &sid]).await;
    let lines = radius.acct_lines();
    let old = format!("sid={} ", earlier.acct_session_id);
    assert!(
        line_of(&lines, "Start", &sid) < line_of(&lines, "Stop", &old),
        "{lines:?}"
    );
    assert!(
        line_of(&lines, "Stop", &old) < line_of(&lines, "Interim-Update", &sid),
        "{lines:?}"
    );
    app.stop().await;
}

/// A Stop that reaches a server after the Start of a newer session at its address, where that
/// Start went unanswered and failed over (a server whose accounting stalled, then processed its
/// backlog): the newer session's Interim-Update that asserts its user again goes to its own
/// server and, as a copy, to the stalled one too — whose last word about the address would
/// otherwise be the older session's Stop.
#[tokio::test]
async fn a_late_stops_interim_update_also_goes_to_a_server_the_newer_start_failed_over_from() {
    let at = carol_failed_over_from_a_stalled_primary(94).await;
    let (primary, backup, app, sid) = (&at.primary, &at.backup, &at.app, &at.sid);
    // The primary answers again; the dead sender's claim given up: the earlier session's
    // Start and Stop go to it, after carol's Start.
    at.relay_mode.store(RELAY_PASSES, SeqCst);
    let health = app.radius.health().clone();
    wait_until("the primary is back", || async {
        health.allows(SocketAddr::from((Ipv4Addr::LOCALHOST, at.relay)))
    })
    .await;
    at.give_up_the_dead_senders_claim().await;
    primary.wait_for_acct(&["status=Stop", &at.old]).await;
    // Carol is asserted again at both.
    backup.wait_for_acct(&["status=Interim-Update", sid]).await;
    primary.wait_for_acct(&["status=Interim-Update", sid]).await;
    // (Carol's Start is there twice: sent again unanswered.)
    let lines = primary.acct_lines();
    let start = lines
        .iter()
        .position(|l| l.contains("status=Start ") && l.contains(sid.as_str()))
        .unwrap();
    assert!(start < line_of(&lines, "Stop", &at.old), "{lines:?}");
    assert!(
        line_of(&lines, "Stop", &at.old) < line_of(&lines, "Interim-Update", sid),
        "{lines:?}"
    );
    at.app.stop().await;
}

/// That copy still waiting for its server when the session ends is dropped, never sent: the
/// session's Stop closes the session at that server (sent there after it — the session's own
/// Stop failing over there, unordered with the copy — it would open the session again).
#[tokio::test]
async fn a_copy_of_an_interim_update_waiting_when_its_session_ends_is_never_sent() {
    let at = carol_failed_over_from_a_stalled_primary(95).await;
    let (primary, backup, app, sid) = (&at.primary, &at.backup, &at.app, &at.sid);
    // The primary's accounting gone altogether: the earlier session's Start and Stop fail over
    // to the backup, after carol's Start; the copy of her Interim-Update waits for the primary.
    at.relay_mode.store(RELAY_LOSES_ALL, SeqCst);
    at.give_up_the_dead_senders_claim().await;
    backup.wait_for_acct(&["status=Stop", &at.old]).await;
    backup.wait_for_acct(&["status=Interim-Update", sid]).await;
    let waiting_copy = || async {
        app.storage
            .session_outbox(at.session.id)
            .await
            .unwrap()
            .into_iter()
            .find(|row| {
                row.status_type == i64::from(status_type::INTERIM_UPDATE)
                    && row.copy_to.as_deref() == Some("primary")
            })
    };
    assert!(waiting_copy()
        .await
        .is_some_and(|row| row.delivered_at.is_none()));
    // Carol disconnects (her Stop acknowledged by the backup, its copy for the primary queued
    // behind the Interim-Update's); the primary answers again.
    assert!(app.sessions.disconnect(at.session.id).await.unwrap());
    at.relay_mode.store(RELAY_PASSES, SeqCst);
    let stop = primary.wait_for_acct(&["status=Stop", sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    assert!(waiting_copy().await.is_none(), "the copy was dropped");
    assert_no_line(primary, "Interim-Update", sid.as_str());
    at.app.stop().await;
}

/// [`carol_failed_over_from_a_stalled_primary`]'s portal and servers.
struct FailedOver {
    primary: FreeRadius,
    backup: FreeRadius,
    app: TestApp,
    _dir: tempfile::TempDir,
    /// The primary's accounting port as the portal knows it, and what it loses.
    relay: u16,
    relay_mode: Arc<std::sync::atomic::AtomicU8>,
    /// The earlier session's Start claim, held by a sender that died; `sid=… ` of it.
    claim: radius_portal::storage::OutboxRow,
    old: String,
    /// Carol's session, and `sid=… ` of it.
    session: radius_portal::storage::AccessSessionRecord,
    sid: String,
}

impl FailedOver {
    /// The dead sender's claim given up: the earlier session's Start and Stop go.
    async fn give_up_the_dead_senders_claim(&self) {
        let now = radius_portal::access_session::now_ms();
        assert!(self
            .app
            .storage
            .renew_claim(&self.claim, now - 1)
            .await
            .unwrap());
        self.app.sessions.accounting().wake();
    }
}

/// An earlier session at `client(n)` whose Start a sender that died holds, ended; then carol
/// signs in there while the primary's accounting loses its answers (it processes what it is
/// sent): her Start reaches it unanswered and fails over to the backup, which her session
/// moves to. The relay loses the primary's answers still.
async fn carol_failed_over_from_a_stalled_primary(n: u8) -> FailedOver {
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let relay_mode = Arc::new(std::sync::atomic::AtomicU8::new(RELAY_PASSES));
    let primary_acct = primary.acct_addr();
    let relay = lossy_relay(primary_acct, relay_mode.clone()).await;
    let (dir, db) = temp_db();
    let mut first = fast(&primary, "primary");
    first.acct_port = relay;
    let app = TestApp::spawn(&quick_failover(&db, vec![first, fast(&backup, "backup")])).await;
    let now = radius_portal::access_session::now_ms();
    let old_sid = format!("held-by-the-dead-{n}");
    let held = NewAccessSession {
        start_claimed_until: Some(now + 3_600_000),
        username: "dave".into(),
        ..stored_session(&old_sid, &client(n).to_string(), now)
    };
    let opened = app.storage.open_session(&held).await.unwrap();
    let claim = opened.claimed_start.unwrap();
    assert!(app.sessions.disconnect(opened.id).await.unwrap());

    relay_mode.store(RELAY_LOSES_ANSWERS, SeqCst);
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(n)))
        .await
        .unwrap();
    let sid = format!("sid={} ", session.acct_session_id);
    primary.wait_for_acct(&["status=Start", &sid]).await;
    backup.wait_for_acct(&["status=Start", &sid]).await;
    wait_until("carol's session moved to the backup", || async {
        app.storage
            .session(session.id)
            .await
            .unwrap()
            .is_some_and(|s| s.server_name == "backup")
    })
    .await;
    FailedOver {
        primary,
        backup,
        app,
        _dir: dir,
        relay,
        relay_mode,
        claim,
        old: format!("sid={old_sid} "),
        session,
        sid,
    }
}

/// A sign-in whose portal died while it waited for the Stop of the session it replaced (its
/// Start never sent) has its Start sent by the delivery loop once its lease has run out, then a
/// NAS-Error Stop — after the replaced session's Stop, as the sign-in would have sent them:
/// here that Stop's server has gone silent, and the Stop fails over to the backup, which took
/// the sign-in, first.
#[tokio::test]
async fn an_abandoned_sign_ins_start_goes_after_the_stop_of_the_session_it_replaced() {
    let radius = FreeRadius::start().await;
    let (app, _relay, earlier, _abandoned, _dir) = abandoned_sign_in_behind_a_silent_stop(
        &radius,
        93,
        Duration::from_millis(500),
        "abandoned-sign-in",
    )
    .await;
    let earlier_sid = format!("sid={} ", earlier.acct_session_id);
    let sid = "sid=abandoned-sign-in ";
    let stop = radius.wait_for_acct(&["status=Stop", sid]).await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
    let lines = radius.acct_lines();
    assert!(
        line_of(&lines, "Stop", &earlier_sid) < line_of(&lines, "Start", sid),
        "{lines:?}"
    );
    app.stop().await;
}

/// A Start the delivery loop holds back for an earlier session's Stop asks the organization
/// again once done waiting: disabled meanwhile, the Start is never sent (dead-lettered as
/// cancelled; its session's NAS-Error Stop still goes, as the dead sign-in may have sent the
/// Start before it died). Here the earlier Stop's server has gone silent (2 s an exchange): the
/// disable lands while the Start waits, and the Stop then fails over to the backup, which
/// answers — as it would the Start.
#[tokio::test]
async fn a_start_held_back_for_an_earlier_stop_is_not_sent_once_its_organization_is_disabled() {
    use std::sync::atomic::Ordering::SeqCst;
    let radius = FreeRadius::start().await;
    let (app, relay, earlier, opened, _dir) = abandoned_sign_in_behind_a_silent_stop(
        &radius,
        94,
        Duration::from_secs(2),
        "abandoned-then-disabled",
    )
    .await;
    // The loop has the Start and waits for erin's Stop, on its way to the silent primary.
    wait_until("erin's Stop tried", || async {
        relay.dropped.load(SeqCst) > 0
    })
    .await;
    radius_portal::organizations::set_active(
        &app.storage,
        &app.organizations,
        "acme",
        false,
        "test",
    )
    .await
    .unwrap();
    wait_until("the held-back Start cancelled", || async {
        app.storage
            .session_outbox(opened.id)
            .await
            .unwrap()
            .iter()
            .any(|row| {
                row.status_type == i64::from(status_type::START)
                    && row.dead_reason.as_deref() == Some("cancelled: organization disabled")
            })
    })
    .await;
    // erin's Stop went, by the backup, and the dead sign-in's Stop; never its Start.
    radius
        .wait_for_acct(&["status=Stop", &format!("sid={} ", earlier.acct_session_id)])
        .await;
    radius
        .wait_for_acct(&[
            "status=Stop",
            "sid=abandoned-then-disabled ",
            "cause=NAS-Error",
        ])
        .await;
    assert!(
        !radius
            .acct_lines()
            .iter()
            .any(|l| l.contains("status=Start") && l.contains("sid=abandoned-then-disabled ")),
        "{:?}",
        radius.acct_lines()
    );
    app.stop().await;
}

/// A delivery dropped before it ends — the Stop a Start the delivery loop holds back sends
/// first, when shutdown's time runs out or the Start's claim lapses — leaves its claim to be
/// given up (as one a database error interrupted), so that another replica sharing the
/// database sends the row at once, not once its lease has run out.
#[tokio::test]
async fn a_delivery_dropped_midway_leaves_its_claim_to_be_given_up() {
    use std::sync::atomic::AtomicBool;
    let radius = FreeRadius::start().await;
    let open = Arc::new(AtomicBool::new(true));
    let acct = radius.acct_addr();
    let relay = common::gated_relay(acct, open.clone()).await;
    let (_dir, db) = temp_db();
    let mut primary = radius.server_settings("primary", true);
    primary.acct_port = relay.port;
    primary.timeout = Duration::from_secs(30);
    primary.retries = 0;
    let app = TestApp::spawn(&settings(&db, vec![primary])).await;
    let erin = app
        .sessions
        .login("acme", "erin", "erin-pass", IpAddr::V4(client(95)))
        .await
        .unwrap();
    open.store(false, SeqCst); // the server goes silent
    let own = own_sender(&app);
    // erin's Stop queued (the portal's loop not woken) and sent by a sender of the test's.
    stopped_by_its_user(&app, erin.id).await;
    let sending = tokio::spawn({
        let own = own.clone();
        async move {
            own.deliver_now(
                erin.id,
                status_type::STOP,
                tokio::time::Instant::now() + Duration::from_secs(60),
            )
            .await
        }
    });
    wait_until("erin's Stop sent", || async {
        relay.dropped.load(SeqCst) > 0
    })
    .await;
    assert_eq!(own.stranded_claims(), 0);
    sending.abort();
    assert!(sending.await.unwrap_err().is_cancelled());
    assert_eq!(
        own.stranded_claims(),
        1,
        "the dropped delivery's claim is left to be given up"
    );
    // Given up at the sender's next look (its loop): the row is free for any sender.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let looping = tokio::spawn(own.clone().run(shutdown.clone()));
    wait_until("the claim given up", || async {
        own.stranded_claims() == 0
    })
    .await;
    shutdown.cancel();
    looping.await.unwrap();
    app.stop().await;
}

/// erin signed in at `client(n)` through a primary whose accounting then goes silent (`timeout`
/// an exchange; the backup answers), and a sign-in there that died: accepted by the backup, its
/// session stored as `acct_session_id` (replacing erin's, whose Stop is queued), its Start
/// claimed by it for a lease that ran out a minute ago; the delivery loop woken. Gives the
/// portal, the primary's relay, erin's session, the dead sign-in's, and the database's directory.
async fn abandoned_sign_in_behind_a_silent_stop(
    radius: &FreeRadius,
    n: u8,
    timeout: Duration,
    acct_session_id: &str,
) -> (
    TestApp,
    common::GatedRelay,
    radius_portal::storage::AccessSessionRecord,
    radius_portal::storage::OpenedSession,
    tempfile::TempDir,
) {
    use std::sync::atomic::AtomicBool;
    let open = Arc::new(AtomicBool::new(true));
    let acct = radius.acct_addr();
    let relay = common::gated_relay(acct, open.clone()).await;
    let (dir, db) = temp_db();
    let mut primary = radius.server_settings("primary", true);
    primary.acct_port = relay.port;
    primary.timeout = timeout;
    primary.retries = 0;
    let backup = radius.server_settings("backup", true);
    let app = TestApp::spawn(&settings(&db, vec![primary, backup])).await;
    let address = client(n);
    let earlier = app
        .sessions
        .login("acme", "erin", "erin-pass", IpAddr::V4(address))
        .await
        .unwrap();
    open.store(false, SeqCst); // the primary's accounting goes silent
    let now = radius_portal::access_session::now_ms();
    let abandoned = NewAccessSession {
        start_claimed_until: Some(now - 60_000),
        server_index: 1,
        server_name: "backup".into(),
        ..stored_session(acct_session_id, &address.to_string(), now)
    };
    let opened = app.storage.open_session(&abandoned).await.unwrap();
    assert_eq!(opened.preempted.len(), 1, "erin's session replaced");
    app.sessions.accounting().wake();
    (app, relay, earlier, opened, dir)
}

/// A UDP relay to `upstream` that, once `armed`, holds the next reply until `release` (`held` is
/// told when it is held) and disarms; other replies pass at once. Its port.
async fn reply_holding_relay(
    upstream: SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
) -> u16 {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = front.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = front.recv_from(&mut buf).await.unwrap();
            let request = buf[..len].to_vec();
            let (front, armed, held, release) =
                (front.clone(), armed.clone(), held.clone(), release.clone());
            tokio::spawn(async move {
                let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                back.send_to(&request, upstream).await.unwrap();
                let mut reply = vec![0u8; 4096];
                let (n, _) = back.recv_from(&mut reply).await.unwrap();
                if armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    held.notify_one();
                    release.notified().await;
                }
                front.send_to(&reply[..n], from).await.unwrap();
            });
        }
    });
    port
}

/// [`RELAY_PASSES`], [`RELAY_LOSES_ANSWERS`] (the requests still reach the server: its answers
/// are lost on their way back), [`RELAY_LOSES_ALL`].
const RELAY_PASSES: u8 = 0;
const RELAY_LOSES_ANSWERS: u8 = 1;
const RELAY_LOSES_ALL: u8 = 2;

/// [`erin_behind_a_holding_relay`]'s portal, server and session.
struct HeldAnswers {
    radius: FreeRadius,
    app: TestApp,
    _dir: tempfile::TempDir,
    /// The relay's: armed, it holds the next answer until released ([`reply_holding_relay`]).
    armed: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
    address: IpAddr,
    erin: radius_portal::storage::AccessSessionRecord,
}

/// A portal whose one server's accounting answers pass a relay that can hold one (no
/// retransmission while it does: a 20 s timeout), and erin's session at `client(n)`.
async fn erin_behind_a_holding_relay(n: u8) -> HeldAnswers {
    let radius = FreeRadius::start().await;
    let (armed, held, release) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let acct = radius.acct_addr();
    let relay = reply_holding_relay(acct, armed.clone(), held.clone(), release.clone()).await;
    let (dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    server.acct_port = relay;
    server.timeout = Duration::from_secs(20);
    let app = TestApp::spawn(&settings(&db, vec![server])).await;
    let address = IpAddr::V4(client(n));
    let erin = app
        .sessions
        .login("acme", "erin", "erin-pass", address)
        .await
        .unwrap();
    HeldAnswers {
        radius,
        app,
        _dir: dir,
        armed,
        held,
        release,
        address,
        erin,
    }
}

/// A UDP relay to `upstream` on a port of its own that loses what `mode` says.
async fn lossy_relay(upstream: SocketAddr, mode: Arc<std::sync::atomic::AtomicU8>) -> u16 {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = front.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = front.recv_from(&mut buf).await.unwrap();
            let request = buf[..len].to_vec();
            let (front, mode) = (front.clone(), mode.clone());
            if mode.load(std::sync::atomic::Ordering::SeqCst) == RELAY_LOSES_ALL {
                continue;
            }
            tokio::spawn(async move {
                let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                back.send_to(&request, upstream).await.unwrap();
                let mut reply = vec![0u8; 4096];
                let (n, _) = back.recv_from(&mut reply).await.unwrap();
                if mode.load(std::sync::atomic::Ordering::SeqCst) == RELAY_PASSES {
                    front.send_to(&reply[..n], from).await.unwrap();
                }
            });
        }
    });
    port
}

/// That `radius` logged no accounting line of `status` with `sid` in it.
fn assert_no_line(radius: &FreeRadius, status: &str, sid: &str) {
    let lines = radius.acct_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(&format!("status={status} ")) && l.contains(sid)),
        "{status} of {sid}: {lines:?}"
    );
}

/// The index of the one accounting line of `status` with `sid` in it.
fn line_of(lines: &[String], status: &str, sid: &str) -> usize {
    let found: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(&format!("status={status} ")) && lines[i].contains(sid))
        .collect();
    assert_eq!(found.len(), 1, "{status} of {sid}: {lines:?}");
    found[0]
}

/// An accounting sender of the test's own beside the portal's (deliveries made by hand).
fn own_sender(app: &TestApp) -> radius_portal::accounting::Accounting {
    radius_portal::accounting::Accounting::new(
        app.storage.clone(),
        app.radius.clone(),
        app.organizations.clone(),
    )
}

/// A session of carol's at `ip` opened at `now` for an hour, as written straight into storage
/// (no login, no RADIUS exchange), its Start queued unclaimed.
fn stored_session(acct_session_id: &str, ip: &str, now: i64) -> NewAccessSession {
    common::stored_session(acct_session_id, ("acme", "primary"), ip, now)
}

/// Carol's session from `client(n)`, authenticated by the primary, once the primary has its
/// Start; and the `sid=… ` fragment of its accounting lines.
async fn carol_at_primary(
    app: &TestApp,
    primary: &FreeRadius,
    n: u8,
) -> (radius_portal::storage::AccessSessionRecord, String) {
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(n)))
        .await
        .unwrap();
    assert_eq!(session.server_name, "primary");
    let sid = format!("sid={} ", session.acct_session_id);
    primary.wait_for_acct(&["status=Start", &sid]).await;
    (session, sid)
}

/// `radius`'s settings as server `name`, quick to give up (300 ms, one retry): outages show
/// within a second.
fn fast(radius: &FreeRadius, name: &str) -> radius_portal::config::ServerSettings {
    let mut server = radius.server_settings(name, true);
    server.timeout = Duration::from_millis(300);
    server.retries = 1;
    server
}

/// [`fast`], its accounting reached through `relay` (on loopback).
fn fast_through(
    radius: &FreeRadius,
    name: &str,
    relay: SocketAddr,
) -> radius_portal::config::ServerSettings {
    let mut server = fast(radius, name);
    server.acct_port = relay.port();
    server
}

/// Settings for `servers` that notice an outage at the first unanswered exchange and a
/// return within half a second (the failover tests).
fn quick_failover(
    db: &std::path::Path,
    servers: Vec<radius_portal::config::ServerSettings>,
) -> radius_portal::config::Settings {
    let mut settings = settings(db, servers);
    settings.radius.probe_interval = Duration::from_millis(500);
    settings.radius.breaker_failures = 1;
    settings
}

/// A primary (quick, like [`fast`]) that authenticates at `authenticator` and accounts at
/// `accounting`: its accounting can go down alone.
fn split_primary(
    authenticator: &FreeRadius,
    accounting: &FreeRadius,
) -> radius_portal::config::ServerSettings {
    let mut primary = fast(authenticator, "primary");
    primary.acct_port = accounting.acct_port;
    primary
}

/// The user disconnects (in the background) while the servers at `down` are down, and the
/// Stop is held: waits until each of their accounting breakers is open. The portal's health,
/// to wait on their return.
async fn disconnect_with_accounting_down(
    app: &TestApp,
    session: i64,
    down: [SocketAddr; 2],
) -> radius_portal::radius::health::ServerHealth {
    let sessions = app.sessions.clone();
    tokio::spawn(async move { sessions.disconnect(session).await });
    let health = app.radius.health().clone();
    wait_until("every accounting server is down", || async {
        down.iter().all(|addr| !health.allows(*addr))
    })
    .await;
    health
}

/// Servers coming back together after an outage: a Stop held through it goes to the session's
/// own server, not to whichever server answered its probe first — that one never saw the
/// session's Start, and a Stop there leaves the Start open at the own server.
#[tokio::test]
async fn a_stop_held_through_an_outage_goes_to_the_sessions_own_server_when_both_return() {
    let mut primary = FreeRadius::start().await;
    let mut backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let settings = quick_failover(
        &db,
        vec![fast(&primary, "primary"), fast(&backup, "backup")],
    );
    let app = TestApp::spawn(&settings).await;
    let (primary_acct, backup_acct) = (primary.acct_addr(), backup.acct_addr());

    // The primary is down: the session opens on the backup.
    primary.kill();
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(8)))
        .await
        .unwrap();
    assert_eq!(session.server_name, "backup");
    let sid = format!("sid={}", session.acct_session_id);
    backup.wait_for_acct(&["status=Start", &sid]).await;

    // Then the backup goes too, and the user disconnects: the Stop is held.
    backup.kill();
    let health =
        disconnect_with_accounting_down(&app, session.id, [primary_acct, backup_acct]).await;

    // The primary answers its probe first, the backup a moment later.
    primary.restart().await;
    wait_until("the primary is back", || async {
        health.allows(primary_acct)
    })
    .await;
    backup.restart().await;
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    assert!(
        primary.acct_lines().iter().all(|line| !line.contains(&sid)),
        "the primary never saw the session: {:?}",
        primary.acct_lines()
    );
    app.stop().await;
}

/// A Stop held while the session's own server is black-holed (frozen: probed again and again,
/// never answering) and every other server is down goes to the first other server that comes
/// back, once it has settled — the own server's silent probes do not hold it (they used to,
/// each probe moving the wait on, for a minute).
#[tokio::test]
async fn a_stop_held_while_its_server_is_silent_fails_over_once_another_is_back() {
    let primary = FreeRadius::start().await;
    let mut backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let settings = quick_failover(
        &db,
        vec![fast(&primary, "primary"), fast(&backup, "backup")],
    );
    let app = TestApp::spawn(&settings).await;
    let (primary_acct, backup_acct) = (primary.acct_addr(), backup.acct_addr());
    let (session, sid) = carol_at_primary(&app, &primary, 40).await;

    // The primary goes silent, the backup down; the user disconnects: the Stop is held.
    primary.pause();
    backup.kill();
    disconnect_with_accounting_down(&app, session.id, [primary_acct, backup_acct]).await;

    // The backup comes back, the primary stays silent: the Stop goes to the backup once it
    // has settled (seconds), well within the wait for its line.
    backup.restart().await;
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    primary.resume();
    app.stop().await;
}

/// A session's own server checked by request (`status_check = "request"`, as NPS needs) goes
/// silent: its Stop fails over to the backup, up all along, at its next try — not sent again
/// and again as the silent server's trial (it used to be, for minutes, the backup idle).
/// The copy of that Stop for the session's own server: with no other traffic to bring the
/// server back (no Status-Server probes, no sign-ins), the copy itself goes as its trial, and
/// arrives soon after the server answers again. (Here the copy finds the server's trial free
/// at each try; one that finds it taken by another request is parked until the next may go —
/// `Accounting::pick` — which no test arranges deterministically.)
#[tokio::test]
async fn a_stop_whose_server_is_checked_by_request_and_silent_goes_to_the_backup() {
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut checked_by_request = fast(&primary, "primary");
    checked_by_request.status_check = radius_portal::config::StatusCheck::Request;
    let settings = quick_failover(&db, vec![checked_by_request, fast(&backup, "backup")]);
    let app = TestApp::spawn(&settings).await;
    let (session, sid) = carol_at_primary(&app, &primary, 41).await;

    primary.pause();
    let sessions = app.sessions.clone();
    tokio::spawn(async move { sessions.disconnect(session.id).await });
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    // The copy goes as the silent server's trial, unanswered, a few times.
    let copy = || async {
        let rows = app.storage.session_outbox(session.id).await.unwrap();
        rows.into_iter()
            .find(|row| row.copy_to.as_deref() == Some("primary"))
    };
    wait_until("the copy was sent three times", || async {
        copy().await.is_some_and(|row| row.transmissions >= 3)
    })
    .await;
    primary.resume();
    let stop = primary.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    // The server logs the Stops it held while frozen too: that the portal sent the copy again
    // and had its answer is what the outbox records.
    wait_until("the copy is acknowledged", || async {
        copy().await.is_some_and(|row| row.delivered_at.is_some())
    })
    .await;
    app.stop().await;
}

/// Settings of `primary` alone, checked by request (`status_check = "request"`, as NPS needs),
/// quick to give up and to try again ([`fast`], [`quick_failover`]).
fn checked_by_request_alone(
    db: &std::path::Path,
    primary: &FreeRadius,
) -> radius_portal::config::Settings {
    let mut checked_by_request = fast(primary, "primary");
    checked_by_request.status_check = radius_portal::config::StatusCheck::Request;
    quick_failover(db, vec![checked_by_request])
}

/// The Stop row of session `id` in the outbox.
async fn stop_row(app: &TestApp, id: i64) -> radius_portal::storage::OutboxEntry {
    let rows = app.storage.session_outbox(id).await.unwrap();
    rows.into_iter()
        .find(|row| row.status_type == i64::from(status_type::STOP))
        .unwrap()
}

/// An organization's one server, checked by request (NPS), stays silent for long: the Stop
/// held for it checks it every probe interval however many checks went unanswered — a lost
/// trial doubles the wait before the next only when a user waited on it (a sign-in), up to
/// 32 intervals; a Stop nobody waits on costs no one — and is acknowledged soon after the
/// server answers again, not a minute later. One held row checks the server; the others held
/// for it (another user's Stop) go once it is found back.
#[tokio::test]
async fn a_stop_held_for_a_silent_server_checked_by_request_checks_it_every_interval() {
    let primary = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&checked_by_request_alone(&db, &primary)).await;
    let (session, sid) = carol_at_primary(&app, &primary, 43).await;
    let other = app
        .sessions
        .login("acme", "erin", "erin-pass", IpAddr::V4(client(44)))
        .await
        .unwrap();

    primary.pause();
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    assert!(app.sessions.disconnect(other.id).await.unwrap());
    let stop_of = |id: i64| stop_row(&app, id);
    // Both sent once as the server went silent; then each check takes its exchange (0.6 s)
    // and an interval (0.5 s): six more in about 7 s. Had each lost trial doubled the wait,
    // the sixth would come after more than 30 s.
    wait_until("the Stops were sent eight times in all", || async {
        stop_of(session.id).await.transmissions + stop_of(other.id).await.transmissions >= 8
    })
    .await;
    primary.resume();
    // The server logs the Stops it held while frozen too: the outbox's acknowledgement is what
    // tells the portal's next check had its answer.
    wait_until("both Stops are acknowledged", || async {
        stop_of(session.id).await.delivered_at.is_some()
            && stop_of(other.id).await.delivered_at.is_some()
    })
    .await;
    let logged = primary.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&logged, "cause"), "User-Request");
    app.stop().await;
}

/// A server checked by request answers again, but one held Stop it never answers (its
/// accounting cannot store that packet): that Stop does not carry every check of the server —
/// the rows held for it take turns — so another user's Stop is acknowledged, not held behind
/// it as long as it keeps failing.
#[tokio::test]
async fn a_stop_the_server_never_answers_does_not_keep_it_looking_down() {
    let primary = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&checked_by_request_alone(&db, &primary)).await;
    let login = |user: &'static str, n: u8| {
        let sessions = app.sessions.clone();
        async move {
            sessions
                .login("acme", user, &format!("{user}-pass"), IpAddr::V4(client(n)))
                .await
                .unwrap()
        }
    };
    let unstorable = login("unstorable", 45).await;
    let carol = login("carol", 46).await;
    let stop_of = |id: i64| stop_row(&app, id);
    // Its Stop goes unanswered, opens the breaker, and is sent again as the server's check.
    assert!(app.sessions.disconnect(unstorable.id).await.unwrap());
    wait_until("the unanswered Stop was sent as a check", || async {
        stop_of(unstorable.id).await.transmissions >= 2
    })
    .await;
    assert!(app.sessions.disconnect(carol.id).await.unwrap());
    wait_until("the other Stop is acknowledged", || async {
        stop_of(carol.id).await.delivered_at.is_some()
    })
    .await;
    let sid = format!("sid={} ", carol.acct_session_id);
    let logged = primary.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&logged, "cause"), "User-Request");
    assert!(
        stop_of(unstorable.id).await.delivered_at.is_none(),
        "never answered"
    );
    app.stop().await;
}

/// An organization's one server answers Status-Server and every other packet, but never one
/// Stop (its accounting cannot store that record). That Stop, sent again after a probe found
/// the server back, is the packet's silence, not the server's: it does not open the breaker
/// again — before, each of its retries reopened it for ever longer (2 s … 64 s), and while it
/// was open every sign-in of the organization failed (black-box tester T's D1 of session 80).
#[tokio::test]
async fn a_stop_the_server_never_answers_does_not_reopen_its_breaker() {
    let primary = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&quick_failover(&db, vec![fast(&primary, "primary")])).await;
    let server = app.organizations.get("acme").unwrap().servers[0].clone();
    let health = app.radius.health().clone();
    let target = health.target(&server, radius_portal::radius::health::Port::Acct);
    let unstorable = app
        .sessions
        .login(
            "acme",
            "unstorable",
            "unstorable-pass",
            IpAddr::V4(client(47)),
        )
        .await
        .unwrap();
    assert!(app.sessions.disconnect(unstorable.id).await.unwrap());
    // Its first exchange opens the breaker (one failure opens it here), a probe closes it,
    // and the Stop goes again at once, and again after its backoff.
    wait_until("the unanswered Stop was sent three times", || async {
        stop_row(&app, unstorable.id).await.transmissions >= 3
    })
    .await;
    assert_eq!(
        health.recoveries_at(target),
        1,
        "only the first silence opened the breaker"
    );
    assert!(health.is_up(&server, radius_portal::radius::health::Port::Acct));
    // The organization's sign-ins go on.
    let carol = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(48)))
        .await
        .unwrap();
    let sid = format!("sid={} ", carol.acct_session_id);
    primary.wait_for_acct(&["status=Start", &sid]).await;
    assert!(stop_row(&app, unstorable.id).await.delivered_at.is_none());
    app.stop().await;
}

/// Other users of acme (carol, from 127.0.`subnet`.1-200 in turn) sign in and out every 100 ms,
/// keeping the organization's server answering, until the task is aborted.
fn others_keep_signing_in(app: &TestApp, subnet: u8) -> tokio::task::JoinHandle<()> {
    let sessions = app.sessions.clone();
    tokio::spawn(async move {
        for n in (0..200u8).cycle() {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, subnet, n + 1));
            if let Ok(s) = sessions.login("acme", "carol", "carol-pass", ip).await {
                let _ = sessions.disconnect(s.id).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A Stop its own server never answers, while the server answers every other packet (other
/// users sign in and out all the time, so its breaker stays closed): after two unanswered
/// exchanges with the server heard since, the Stop goes to the backup — before, it stayed at
/// the own server, backing off to five minutes, for as long as the other traffic went on
/// (black-box tester N's H1 of session 81).
#[tokio::test]
async fn a_stop_its_server_never_answers_goes_to_the_backup_while_others_keep_it_up() {
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (own_relay, _) = common::relay_dropping_stops_of(primary.acct_addr(), "erin").await;
    let own = fast_through(&primary, "primary", own_relay);
    let (app, erin) = erin_signed_in(&db, vec![own, fast(&backup, "backup")], 49).await;
    // Other users keep the primary answering.
    let busy = others_keep_signing_in(&app, 2);
    assert!(app.sessions.disconnect(erin.id).await.unwrap());
    let sid = format!("sid={} ", erin.acct_session_id);
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    busy.abort();
    let health = app.radius.health();
    let server = app.organizations.get("acme").unwrap().servers[0].clone();
    assert!(
        health.is_up(&server, radius_portal::radius::health::Port::Acct),
        "the primary stayed up"
    );
    // Its copy for the primary, which the primary leaves unanswered too, is not said to wait
    // for the primary to "answer again", as if it were down (black-box tester W's D3 of
    // session 82).
    wait_until("the backlog names the copy's next attempt", || async {
        let out = common::operator_command(&db, &["accounting", "backlog"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        said.contains("(copy for server primary)")
            && said.contains("goes to server primary alone, next attempt")
    })
    .await;
    let out = common::operator_command(&db, &["accounting", "backlog"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("answers again"),
        "{out:?}"
    );
    app.stop().await;
}

/// A portal for `servers` (probed every 500 ms) and erin's session at `client(n)`,
/// authenticated by the first ("primary").
async fn erin_signed_in(
    db: &std::path::Path,
    servers: Vec<radius_portal::config::ServerSettings>,
    n: u8,
) -> (TestApp, radius_portal::storage::AccessSessionRecord) {
    let mut config = settings(db, servers);
    config.radius.probe_interval = Duration::from_millis(500);
    let app = TestApp::spawn(&config).await;
    let erin = app
        .sessions
        .login("acme", "erin", "erin-pass", IpAddr::V4(client(n)))
        .await
        .unwrap();
    assert_eq!(erin.server_name, "primary");
    (app, erin)
}

/// The state of the breaker of the server reached at `addr`.
fn breaker_state(
    app: &TestApp,
    addr: SocketAddr,
) -> Option<radius_portal::radius::breaker::BreakerState> {
    app.radius
        .health()
        .states()
        .into_iter()
        .find(|(at, _)| *at == addr)
        .map(|(_, state)| state)
}

/// Waits until the session's Stop has been sent `times` times (an exchange's tries count once).
async fn stop_sent(app: &TestApp, session: i64, times: i64) {
    common::wait_until_within(
        &format!("the Stop sent {times} times"),
        Duration::from_secs(90),
        || async { stop_row(app, session).await.transmissions >= times },
    )
    .await;
}

/// A Stop neither server stores (both leave it unanswered, answering everything else): failed
/// over once for its own server's silence and left unanswered at the backup too, it stays with
/// its own server, backing off — and its silence at the idle backup is the packet's, not the
/// backup's. Before, it bounced between the two (own, own, backup, own, own, backup …), and
/// each visit counted against the backup's breaker, which nothing else answered: the backup
/// opened, for ever longer after each probe (the whole-change review's F3 of session 81).
#[tokio::test]
async fn a_stop_no_server_answers_stays_with_its_own_and_leaves_the_backup_up() {
    use radius_portal::radius::{breaker::BreakerState, health::Port};
    use std::sync::atomic::Ordering::SeqCst;
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (own_relay, _) = common::relay_dropping_stops_of(primary.acct_addr(), "erin").await;
    let (backup_relay, dropped_at_backup) =
        common::relay_dropping_stops_of(backup.acct_addr(), "erin").await;
    let own = fast_through(&primary, "primary", own_relay);
    let other = fast_through(&backup, "backup", backup_relay);
    let (app, erin) = erin_signed_in(&db, vec![own, other], 51).await;
    // Other users keep the primary answering; nothing but erin's Stop reaches the backup.
    let busy = others_keep_signing_in(&app, 3);
    assert!(app.sessions.disconnect(erin.id).await.unwrap());
    // Twice at the primary, once at the backup, then at the primary again and again (it
    // backs off: 1, 2, 4, 8, 16 s).
    stop_sent(&app, erin.id, 6).await;
    busy.abort();
    // One exchange reached the backup (each exchange is two tries here).
    assert_eq!(
        dropped_at_backup.load(SeqCst),
        2,
        "one exchange at the backup"
    );
    let health = app.radius.health().clone();
    let backup_server = app.organizations.get("acme").unwrap().servers[1].clone();
    let backup_target = health.target(&backup_server, Port::Acct);
    assert_eq!(
        health.recoveries_at(backup_target),
        0,
        "the backup never opened"
    );
    let state = breaker_state(&app, backup_relay);
    assert!(
        matches!(state, Some(BreakerState::Closed { failures: 0, .. })),
        "the Stop's silence not counted against the backup: {state:?}"
    );
    assert!(stop_row(&app, erin.id).await.delivered_at.is_none());
    app.stop().await;
}

/// The same on a quiet portal (nothing but the Stop reaches either server): its own server's
/// breaker opens once, for its first two silences, and the probe that finds the server
/// answering shows them refusals — the Stop then stays with its own server without opening
/// its breaker again, and the backup never opens. Before, every probe sent it round again,
/// opening each server's breaker in turn (black-box tester T's D2 of session 83).
#[tokio::test]
async fn on_a_quiet_portal_a_stop_no_server_answers_opens_its_own_breaker_once() {
    use radius_portal::radius::health::Port;
    use std::sync::atomic::Ordering::SeqCst;
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (own_relay, _) = common::relay_dropping_stops_of(primary.acct_addr(), "erin").await;
    let (backup_relay, dropped_at_backup) =
        common::relay_dropping_stops_of(backup.acct_addr(), "erin").await;
    let own = fast_through(&primary, "primary", own_relay);
    let other = fast_through(&backup, "backup", backup_relay);
    let (app, erin) = erin_signed_in(&db, vec![own, other], 54).await;
    assert!(app.sessions.disconnect(erin.id).await.unwrap());
    stop_sent(&app, erin.id, 6).await;
    let health = app.radius.health().clone();
    let servers = app.organizations.get("acme").unwrap().servers.clone();
    let (own_target, backup_target) = (
        health.target(&servers[0], Port::Acct),
        health.target(&servers[1], Port::Acct),
    );
    assert_eq!(health.recoveries_at(own_target), 1, "its own opened once");
    assert!(health.is_up(&servers[0], Port::Acct));
    assert_eq!(
        health.recoveries_at(backup_target),
        0,
        "the backup never opened"
    );
    assert!(health.is_up(&servers[1], Port::Acct));
    // At most two exchanges at the backup: one while its own server was down, one as the
    // server its own refused it to.
    let at_backup = dropped_at_backup.load(SeqCst);
    assert!(at_backup <= 4, "{at_backup}");
    assert!(stop_row(&app, erin.id).await.delivered_at.is_none());
    app.stop().await;
}

/// Its own server down (its probes unanswered), a Stop the backup never stores, on a quiet
/// portal: the backup's breaker opens once, for the Stop's first two silences, and the probe
/// that finds it answering shows them the packet's — its later silences there count for
/// nothing, and the backup, the organization's one working server, stays up. (Its own
/// server's record alone kept, every silence at the backup counted: it reopened after each
/// probe — the whole-change review of session 83, F1.)
#[tokio::test]
async fn a_stop_the_backup_refuses_while_its_own_server_is_down_opens_the_backup_once() {
    use radius_portal::radius::health::Port;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let open = Arc::new(AtomicBool::new(true));
    let gate = common::gated_relay(primary.acct_addr(), open.clone()).await;
    let (backup_relay, _) = common::relay_dropping_stops_of(backup.acct_addr(), "erin").await;
    let own = fast_through(
        &primary,
        "primary",
        SocketAddr::from(([127, 0, 0, 1], gate.port)),
    );
    let other = fast_through(&backup, "backup", backup_relay);
    let (app, erin) = erin_signed_in(&db, vec![own, other], 55).await;
    open.store(false, SeqCst);
    assert!(app.sessions.disconnect(erin.id).await.unwrap());
    stop_sent(&app, erin.id, 6).await;
    let health = app.radius.health().clone();
    let servers = app.organizations.get("acme").unwrap().servers.clone();
    assert!(
        !health.is_up(&servers[0], Port::Acct),
        "its own server down"
    );
    let backup_target = health.target(&servers[1], Port::Acct);
    assert!(
        health.recoveries_at(backup_target) <= 1,
        "the backup opened {} times",
        health.recoveries_at(backup_target)
    );
    assert!(health.is_up(&servers[1], Port::Acct), "the backup up");
    assert!(stop_row(&app, erin.id).await.delivered_at.is_none());
    app.stop().await;
}

/// Three servers: a Stop its own server never answers, while it answers everyone else, and
/// the second server leaves unanswered too, goes to the third — before, it bounced between the
/// first two, its backoff growing to minutes, while the third was up all along (black-box
/// tester W's D1 of session 82).
#[tokio::test]
async fn a_stop_two_servers_leave_unanswered_goes_to_the_third() {
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (own_relay, _) = common::relay_dropping_stops_of(primary.acct_addr(), "erin").await;
    let (second_relay, dropped_at_second) =
        common::relay_dropping_stops_of(backup.acct_addr(), "erin").await;
    // The third reaches the same FreeRADIUS as the second through a relay that drops nothing.
    let (third_relay, _) = common::relay_dropping_stops_of(backup.acct_addr(), "nobody").await;
    let own = fast_through(&primary, "primary", own_relay);
    let second = fast_through(&backup, "second", second_relay);
    let third = fast_through(&backup, "third", third_relay);
    let (app, erin) = erin_signed_in(&db, vec![own, second, third], 52).await;
    // Other users keep the primary answering.
    let busy = others_keep_signing_in(&app, 4);
    assert!(app.sessions.disconnect(erin.id).await.unwrap());
    let sid = format!("sid={} ", erin.acct_session_id);
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    busy.abort();
    assert_eq!(
        dropped_at_second.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one exchange at the second server, then the third"
    );
    app.stop().await;
}

/// The same on a quiet portal (nothing else to the servers): the Stop's two silences at its
/// own server open its breaker (nothing shows them the packet's yet), and the probe that finds
/// it answering at once shows them refusals — the Stop goes on to the other servers and reaches
/// the third, never sent back to its own. Before, it went back to its own after each probe,
/// reopening its breaker, and to the second server again, opening that one's too (black-box
/// tester T's D2 of session 83: 27 s, seven exchanges).
#[tokio::test]
async fn on_a_quiet_portal_a_stop_its_own_server_refuses_is_not_sent_back_after_its_probe() {
    use std::sync::atomic::Ordering::SeqCst;
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (own_relay, _) = common::relay_dropping_stops_of(primary.acct_addr(), "erin").await;
    let (second_relay, dropped_at_second) =
        common::relay_dropping_stops_of(backup.acct_addr(), "erin").await;
    let (third_relay, _) = common::relay_dropping_stops_of(backup.acct_addr(), "nobody").await;
    let own = fast_through(&primary, "primary", own_relay);
    let second = fast_through(&backup, "second", second_relay);
    let third = fast_through(&backup, "third", third_relay);
    let (app, erin) = erin_signed_in(&db, vec![own, second, third], 53).await;
    assert!(app.sessions.disconnect(erin.id).await.unwrap());
    let sid = format!("sid={} ", erin.acct_session_id);
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    // Two exchanges at its own server, one at the second (two if the probe answered only
    // after that one ended), the third's: four or five claims — none back at its own (a copy
    // for its own server follows, as copies do: its own row).
    let delivered = || async {
        let rows = app.storage.session_outbox(erin.id).await.unwrap();
        rows.into_iter().find(|row| {
            row.status_type == i64::from(status_type::STOP)
                && row.copy_to.is_none()
                && row.delivered_at.is_some()
        })
    };
    wait_until("the Stop recorded delivered", || async {
        delivered().await.is_some()
    })
    .await;
    let stop = delivered().await.unwrap();
    assert!((4..=5).contains(&stop.attempts), "{stop:?}");
    let at_second = dropped_at_second.load(SeqCst);
    assert!(
        at_second <= 4,
        "at most two exchanges at the second: {at_second}"
    );
    // Its copy for its own server, unanswered there as the Stop was, opens nothing (tester
    // V's V2 of session 83: the copy's first silences reopened it); the second server's count
    // of the Stop's silence was taken back (V1: kept, the next such Stop opened it).
    let copy_sent = || async {
        let rows = app.storage.session_outbox(erin.id).await.unwrap();
        rows.into_iter()
            .find(|row| row.copy_to.as_deref() == Some("primary"))
            .is_some_and(|copy| copy.transmissions >= 2)
    };
    common::wait_until_within("the copy sent twice", Duration::from_secs(60), copy_sent).await;
    let health = app.radius.health().clone();
    let servers = app.organizations.get("acme").unwrap().servers.clone();
    let acct = radius_portal::radius::health::Port::Acct;
    assert_eq!(health.recoveries_at(health.target(&servers[0], acct)), 1);
    assert!(health.is_up(&servers[0], acct), "its own server up");
    let second_state = breaker_state(&app, second_relay);
    assert!(
        matches!(
            second_state,
            Some(radius_portal::radius::breaker::BreakerState::Closed { failures: 0, .. })
        ),
        "{second_state:?}"
    );
    app.stop().await;
}

/// A server back after an outage but slow — answering in more than one timeout, well within
/// its timeout × tries, as requests are given — is found back by its probe: before, a probe had
/// one timeout, and the server stayed down (its Stops held, every sign-in failing) for as long
/// as it was that slow, though it served requests (black-box tester N's H2 of session 81).
#[tokio::test]
async fn a_server_back_but_slower_than_one_timeout_is_found_back() {
    found_back_answering_late(|_| true, None, 50).await;
}

/// A server back but slow enough that only a probe's last Status-Server is answered, after the
/// probe's deadline (within the timeout × tries a request's answer is waited for), is found
/// back by that answer: before, it was dropped as late, and such a server was never found back
/// (at the defaults, tester W's D4 of session 82: found back a probe later).
#[tokio::test]
async fn a_probes_last_status_server_answered_after_its_deadline_finds_the_server_back() {
    // Status-Servers come in threes 300 ms apart, a probe's last and the next probe's first at
    // least 900 ms apart (the probe interval below): the third of each three passes.
    let mut last: Option<(std::time::Instant, u32)> = None;
    let only_each_probes_last = move |request: &[u8]| {
        if request.first() != Some(&12) {
            return true;
        }
        let now = std::time::Instant::now();
        let nth = match last {
            Some((at, nth)) if now - at < Duration::from_millis(600) => nth + 1,
            _ => 0,
        };
        last = Some((now, nth));
        nth == 2
    };
    found_back_answering_late(only_each_probes_last, Some(Duration::from_millis(1500)), 51).await;
}

/// Carol's Stop held while her server's accounting (reached through a relay) is silent; then
/// the relay passes what `pass` lets through, answered 500 ms late — more than a try's 300 ms,
/// within an exchange's 900 ms (a probe: Status-Servers at 0, 300 and 600 ms, its deadline at
/// 900 ms): the Stop arrives and the server is found back.
async fn found_back_answering_late(
    pass: impl FnMut(&[u8]) -> bool + Send + 'static,
    probe_interval: Option<Duration>,
    n: u8,
) {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let primary = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let delay = Arc::new(AtomicU64::new(0));
    let mut slow = fast(&primary, "primary");
    slow.retries = 2;
    slow.acct_port = common::delaying_relay_where(primary.acct_addr(), delay.clone(), pass).await;
    let mut settings = quick_failover(&db, vec![slow]);
    if let Some(every) = probe_interval {
        settings.radius.probe_interval = every;
    }
    let app = TestApp::spawn(&settings).await;
    let (session, sid) = carol_at_primary(&app, &primary, n).await;
    let server = app.organizations.get("acme").unwrap().servers[0].clone();
    let health = app.radius.health().clone();
    let acct = radius_portal::radius::health::Port::Acct;

    delay.store(u64::MAX, SeqCst);
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    wait_until("the server's breaker open", || async {
        !health.is_up(&server, acct)
    })
    .await;
    delay.store(500, SeqCst);
    let stop = primary.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    wait_until("the server found back", || async {
        health.is_up(&server, acct)
    })
    .await;
    app.stop().await;
}

/// A Start that failed over (the session's own server answered its Access-Request, but its
/// accounting port was down) takes the session's accounting with it: the Stop goes where the
/// Start is, also once the own server's accounting is back — not a Start open at one server
/// and a Stop without a Start at the other.
#[tokio::test]
async fn a_stop_follows_its_start_to_the_server_that_acknowledged_it() {
    let authenticator = FreeRadius::start().await;
    let mut own_accounting = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    // The primary: authentication at one FreeRADIUS, accounting at another (killable alone).
    let primary = split_primary(&authenticator, &own_accounting);
    let settings = quick_failover(&db, vec![primary, fast(&backup, "backup")]);
    let app = TestApp::spawn(&settings).await;
    let primary_acct = own_accounting.acct_addr();
    let health = app.radius.health().clone();

    // The primary's accounting goes down; a first sign-in finds out (its Start times out).
    own_accounting.kill();
    let _ = app
        .sessions
        .login("acme", "erin", "erin-pass", IpAddr::V4(client(20)))
        .await;
    wait_until("the primary's accounting breaker is open", || async {
        !health.allows(primary_acct)
    })
    .await;
    // Authenticated by the primary, its Start acknowledged by the backup.
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(21)))
        .await
        .unwrap();
    assert_eq!(
        session.server_name, "primary",
        "authenticated by the primary"
    );
    let sid = format!("sid={}", session.acct_session_id);
    backup.wait_for_acct(&["status=Start", &sid]).await;

    // The primary's accounting comes back; then the user disconnects.
    own_accounting.restart().await;
    wait_until("the primary's accounting is back", || async {
        health.allows(primary_acct)
    })
    .await;
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    assert!(
        own_accounting
            .acct_lines()
            .iter()
            .all(|l| !l.contains(&sid)),
        "nothing of the session at the primary's accounting: {:?}",
        own_accounting.acct_lines()
    );
    let stored = app.storage.session(session.id).await.unwrap().unwrap();
    assert_eq!(
        stored.server_name, "backup",
        "stored for other processes and restarts"
    );
    app.stop().await;
}

/// A Stop that failed over (the session's own accounting server was down when the user left)
/// is acknowledged by the backup and then copied to the own server once it is back: the
/// Start there is closed too — not an identity left open at the server that has the Start.
#[tokio::test]
async fn a_stop_that_failed_over_reaches_the_sessions_own_server_too_once_it_is_back() {
    let mut primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let settings = quick_failover(
        &db,
        vec![fast(&primary, "primary"), fast(&backup, "backup")],
    );
    let app = TestApp::spawn(&settings).await;
    let (session, sid) = carol_at_primary(&app, &primary, 30).await;

    // The primary goes down; the user disconnects: the Stop fails over to the backup.
    primary.kill();
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let at_backup = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert!(
        backup
            .acct_lines()
            .iter()
            .all(|l| !(l.contains(&sid) && l.contains("status=Start"))),
        "the Start is at the primary only"
    );

    // The primary comes back: it gets the same Stop, later.
    primary.restart().await;
    let at_primary = primary.wait_for_acct(&["status=Stop", &sid]).await;
    for key in ["cause", "event_ts", "session_time", "user"] {
        assert_eq!(field(&at_primary, key), field(&at_backup, key), "{key}");
    }
    assert_eq!(field(&at_primary, "cause"), "User-Request");
    let delay = |line: &str| field(line, "delay").parse::<u32>().unwrap();
    assert!(delay(&at_primary) >= delay(&at_backup));
    wait_until("the copy is recorded delivered", || async {
        app.storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    let stops = primary
        .acct_lines()
        .iter()
        .filter(|l| l.contains(&sid) && l.contains("status=Stop"))
        .count();
    assert_eq!(stops, 1, "{:?}", primary.acct_lines());
    app.stop().await;
}

/// A Start sent to a black-holed server (frozen, not dead) and then acknowledged by the backup
/// — within the sign-in, which succeeds: the frozen server processes its queue once it thaws,
/// so it holds the session open too. The session's Stop goes to the backup, where its
/// accounting moved, and a copy to the thawed server — which then has the Start and the Stop,
/// in that order.
#[tokio::test]
async fn a_start_a_frozen_server_answers_late_gets_its_stop_there_too() {
    let authenticator = FreeRadius::start().await;
    let own_accounting = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let primary = split_primary(&authenticator, &own_accounting);
    let settings = quick_failover(&db, vec![primary, fast(&backup, "backup")]);
    let app = TestApp::spawn(&settings).await;

    // The primary's accounting freezes: the sign-in's Start goes there and is not answered;
    // with time left, the sign-in's Start goes to the backup, which acknowledges it, and the
    // session's accounting follows it there.
    own_accounting.pause();
    let ip = client(31);
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(ip))
        .await
        .expect("signed in: the backup took the Start within the sign-in's time");
    let sid = format!("sid={} ", session.acct_session_id);
    backup.wait_for_acct(&["status=Start", &sid]).await;
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let stop = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    let session = app.storage.session(session.id).await.unwrap().unwrap();
    assert_eq!(session.server_name, "backup");

    // It thaws: its late Start, then the copy of the Stop.
    own_accounting.resume();
    own_accounting.wait_for_acct(&["status=Stop", &sid]).await;
    let lines: Vec<String> = own_accounting
        .acct_lines()
        .into_iter()
        .filter(|l| l.contains(&sid))
        .collect();
    let first_stop = lines
        .iter()
        .position(|l| l.contains("status=Stop"))
        .unwrap();
    assert!(
        lines[..first_stop]
            .iter()
            .any(|l| l.contains("status=Start")),
        "the late Start, then the Stop: {lines:?}"
    );
    assert_eq!(
        field(&lines[first_stop], "event_ts"),
        field(&stop, "event_ts")
    );
    app.stop().await;
}

/// An Interim-Update that failed over (the session's own server down during a refresh) may
/// have opened the session at the backup (servers that keep sessions in SQL do so): when the
/// session ends, its Stop goes to its own server, back by then, and a copy to the backup.
#[tokio::test]
async fn a_stop_is_copied_to_a_server_an_interim_update_failed_over_to() {
    let mut primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let settings = quick_failover(
        &db,
        vec![fast(&primary, "primary"), fast(&backup, "backup")],
    );
    let app = TestApp::spawn(&settings).await;
    let (session, sid) = carol_at_primary(&app, &primary, 32).await;

    // The primary goes down; a refresh's Interim-Update fails over to the backup.
    primary.kill();
    app.sessions.refresh(session.id).await.unwrap();
    backup.wait_for_acct(&["status=Interim-Update", &sid]).await;

    // The primary is back; the user disconnects: the Stop at the primary, a copy at the backup.
    primary.restart().await;
    let health = app.radius.health().clone();
    let primary_acct = primary.acct_addr();
    wait_until("the primary is back", || async {
        health.allows(primary_acct)
    })
    .await;
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    let at_primary = primary.wait_for_acct(&["status=Stop", &sid]).await;
    let at_backup = backup.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(
        field(&at_backup, "event_ts"),
        field(&at_primary, "event_ts")
    );
    assert_eq!(field(&at_backup, "cause"), "User-Request");
    app.stop().await;
}

/// Erin signs in from `ip`, replacing the session `first_sid` names, and the backup
/// authenticates her: the backup has the old session's Stop (Port-Preempted) before her Start.
async fn erin_replaces_it_at_the_backup(
    app: &TestApp,
    backup: &FreeRadius,
    ip: IpAddr,
    first_sid: &str,
) {
    let second = app
        .sessions
        .login("acme", "erin", "erin-pass", ip)
        .await
        .unwrap();
    assert_eq!(second.server_name, "backup");
    let second_sid = format!("sid={} ", second.acct_session_id);
    backup.wait_for_acct(&["status=Start", &second_sid]).await;
    let lines = backup.acct_lines();
    let old_stop = lines
        .iter()
        .position(|l| l.contains("status=Stop") && l.contains(first_sid))
        .unwrap_or_else(|| panic!("the old session's Stop at the backup first: {lines:#?}"));
    let new_start = lines
        .iter()
        .position(|l| l.contains("status=Start") && l.contains(&second_sid))
        .unwrap();
    assert!(old_stop < new_start, "{lines:#?}");
    assert_eq!(field(&lines[old_stop], "cause"), "Port-Preempted");
}

/// A sign-in that replaces a session whose server has gone silent (authentication and
/// accounting): the old session's Stop fails over to the backup — the sign-in waits for it, up
/// to its deadline — before the new session's Start goes there. The backup never sees the old
/// user's Stop for the address after the new user's Start.
#[tokio::test]
async fn a_replaced_sessions_stop_fails_over_before_the_new_start() {
    let primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    // The primary slower to give up than the backup, and its breaker opening only after two
    // failed exchanges (the default): the Stop needs three of the primary's exchanges' time,
    // more than the sign-in's deadline has left.
    let mut slow = fast(&primary, "primary");
    slow.timeout = Duration::from_millis(400);
    let mut settings = quick_failover(&db, vec![slow, fast(&backup, "backup")]);
    settings.radius.breaker_failures = 2;
    settings.organizations[0].login_timeout = Duration::from_secs(2);
    let app = TestApp::spawn(&settings).await;
    let (first, first_sid) = carol_at_primary(&app, &primary, 35).await;
    primary.pause();
    erin_replaces_it_at_the_backup(&app, &backup, IpAddr::V4(client(35)), &first_sid).await;
    assert!(!app.storage.session(first.id).await.unwrap().unwrap().active);
    primary.resume();
    app.stop().await;
}

/// A sign-in that replaces a session sends the old session's Stop before the new Start — its
/// copies included: here the old session's Interim-Update had failed over to the backup,
/// which then authenticates the new sign-in (the primary's authentication is down). The backup
/// sees the old session's Stop before the new session's Start, not a Stop for the address
/// after its new identity arrived.
#[tokio::test]
async fn a_replaced_sessions_stop_copies_go_before_the_new_start() {
    let mut authenticator = FreeRadius::start().await;
    let mut own_accounting = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let primary = split_primary(&authenticator, &own_accounting);
    let settings = quick_failover(&db, vec![primary, fast(&backup, "backup")]);
    let app = TestApp::spawn(&settings).await;
    let health = app.radius.health().clone();
    let primary_acct = own_accounting.acct_addr();
    let ip = IpAddr::V4(client(33));
    let first = app
        .sessions
        .login("acme", "carol", "carol-pass", ip)
        .await
        .unwrap();
    let first_sid = format!("sid={} ", first.acct_session_id);
    own_accounting
        .wait_for_acct(&["status=Start", &first_sid])
        .await;

    // The primary's accounting goes down for a refresh: its Interim-Update fails over.
    own_accounting.kill();
    app.sessions.refresh(first.id).await.unwrap();
    backup
        .wait_for_acct(&["status=Interim-Update", &first_sid])
        .await;
    own_accounting.restart().await;
    wait_until("the primary's accounting is back", || async {
        health.allows(primary_acct)
    })
    .await;

    // The primary's authentication goes down: the next sign-in of the address is the backup's.
    authenticator.kill();
    erin_replaces_it_at_the_backup(&app, &backup, ip, &first_sid).await;
    own_accounting
        .wait_for_acct(&["status=Stop", &first_sid])
        .await;
    app.stop().await;
}

/// Carol's session at the primary, disconnected while the primary is down: the backup took
/// the Stop, and its copy for the primary waits.
struct CopyWaiting {
    primary: FreeRadius,
    backup: FreeRadius,
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    settings: radius_portal::config::Settings,
    app: TestApp,
    sid: String,
}

async fn a_copy_waiting_for_the_primary(n: u8) -> CopyWaiting {
    let mut primary = FreeRadius::start().await;
    let backup = FreeRadius::start().await;
    let (dir, db) = temp_db();
    let settings = quick_failover(
        &db,
        vec![fast(&primary, "primary"), fast(&backup, "backup")],
    );
    let app = TestApp::spawn(&settings).await;
    let (session, sid) = carol_at_primary(&app, &primary, n).await;
    primary.kill();
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    backup.wait_for_acct(&["status=Stop", &sid]).await;
    let storage = app.storage.clone();
    wait_until("the copy for the primary waits", || async {
        storage
            .session_outbox(session.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.copy_to.as_deref() == Some("primary") && e.attempts > 0)
    })
    .await;
    CopyWaiting {
        primary,
        backup,
        dir,
        db,
        settings,
        app,
        sid,
    }
}

/// A server gone for good that Stop copies wait for: the operator gives them up (dead letters,
/// audited), and the server can be removed at once instead of a day later.
#[tokio::test]
async fn an_operator_gives_up_the_copies_of_a_server_gone_for_good() {
    let CopyWaiting {
        backup,
        dir: _dir,
        db,
        app,
        ..
    } = a_copy_waiting_for_the_primary(35).await;
    app.stop().await;
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let give_up = |org: &str, server: &str| {
        common::operator_command(
            &db,
            &[
                "accounting",
                "give-up-copies",
                "--org",
                org,
                "--server",
                server,
            ],
        )
    };
    let refused = give_up("nope", "primary");
    assert_eq!(
        refused.status.code(),
        Some(3),
        "no such organization, as every command says it"
    );
    assert!(
        text(&refused).contains("no organization `nope`"),
        "{}",
        text(&refused)
    );
    let without_primary = quick_failover(&db, vec![fast(&backup, "backup")]);
    let advice = TestApp::try_spawn(&without_primary).await.map(|_| ());
    assert!(
        matches!(&advice, Err(e) if format!("{e:#}").contains("`accounting give-up-copies --org acme --server primary` gives them up now")),
        "{advice:?}"
    );

    // In any letter case, as every operator command takes an organization.
    let given_up = give_up("ACME", "primary");
    assert!(given_up.status.success(), "{}", text(&given_up));
    assert!(
        text(&given_up).contains("gave up 1 copy(ies) waiting for server `primary` of `acme`")
            && text(&given_up).contains("server `primary` is still one of `acme`'s servers"),
        "{}",
        text(&given_up)
    );
    let again = give_up("acme", "primary");
    assert!(
        text(&again).contains("gave up 0 copy(ies)"),
        "{}",
        text(&again)
    );
    let misspelled = give_up("acme", "primray");
    assert!(
        text(&misspelled).contains("`primray` is not one of `acme`'s servers"),
        "{}",
        text(&misspelled)
    );
    let dead = text(&common::operator_command(
        &db,
        &["accounting", "dead-letters"],
    ));
    assert!(
        dead.contains("Stop (copy for server primary)") && dead.contains("given up by"),
        "{dead}"
    );

    // The server can go now, and the rest of the accounting is as it was.
    let app = TestApp::spawn(&without_primary).await;
    let audit = app.storage.audit_tail(10).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "accounting.give_up_copies"
            && e.organization_id.as_deref() == Some("acme")
            && e.detail.contains("\"given_up\":1")),
        "{audit:?}"
    );
    assert_eq!(app.storage.outbox_backlog().await.unwrap(), 0);
    app.stop().await;
}

/// `radius test --username` sends Access-Requests as a sign-in does, and stops as one does: an
/// organization disabled while its first server stays silent gets no retransmission there and
/// none to its next server (the guard review's L1; black-box tester M's D3: it retransmitted
/// for the server's whole time).
#[tokio::test]
async fn radius_test_stops_before_the_next_server_once_its_organization_is_disabled() {
    let radius = FreeRadius::start().await;
    let silent_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    silent_socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut silent = fast(&radius, "silent");
    silent.auth_port = silent_socket.local_addr().unwrap().port();
    silent.timeout = Duration::from_secs(5);
    silent.retries = 2;
    let (_dir, db) = temp_db();
    let settings = quick_failover(&db, vec![silent, fast(&radius, "primary")]);
    TestApp::spawn(&settings).await.stop().await;
    assert!(common::operator_command(&db, &["org", "list"])
        .status
        .success());
    let test = std::process::Command::new(env!("CARGO_BIN_EXE_radius-portal"))
        .arg("--config")
        .arg(db.with_file_name("operator.toml"))
        .args(["radius", "test", "--org", "acme", "--username", "carol"])
        .env("PORTAL_TEST_PASSWORD", "carol-pass")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    silent_socket
        .recv_from(&mut buf)
        .expect("the first server is asked");
    let disabled = common::operator_command(&db, &["org", "disable", "acme"]);
    assert!(disabled.status.success(), "{disabled:?}");
    let out = test.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains("organization `acme` was disabled (or deleted) while `silent` was asked"),
        "{text}"
    );
    assert_eq!(
        radius.access_requests_of("carol"),
        0,
        "{:?}",
        radius.auth_lines()
    );
    silent_socket.set_nonblocking(true).unwrap();
    assert!(
        silent_socket.recv_from(&mut buf).is_err(),
        "no retransmission to the silent server"
    );
    let audit = common::operator_command(&db, &["audit", "tail", "--action", "guard.denied"]);
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("withdrawn"),
        "{audit:?}"
    );
}

/// `radius test --from-file` for an organization only the file has (the next start stores
/// it): no stored organization to be disabled meanwhile — each server is asked (the review's
/// M2: refused before the second as "disabled meanwhile", and audited so).
#[tokio::test]
async fn radius_test_from_the_file_asks_every_server_of_an_organization_not_stored_yet() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    TestApp::spawn(&settings(
        &db,
        vec![radius.server_settings("primary", true)],
    ))
    .await
    .stop()
    .await;
    let server = |name: &str| {
        format!(
            "[[organizations.servers]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nauth_port = {}\nacct_port = {}\nsecret = \"{SECRET}\"\nrequire_message_authenticator = false\n",
            radius.auth_port, radius.acct_port
        )
    };
    let config = db.with_file_name("lab.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = \"{}\"\n[radius]\nbind = \"127.0.0.1\"\n[[organizations]]\nid = \"lab\"\nname = \"Lab\"\n{}{}",
            db.display(),
            server("one"),
            server("two")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_radius-portal"))
        .arg("--config")
        .arg(&config)
        .args([
            "radius",
            "test",
            "--from-file",
            "--org",
            "lab",
            "--username",
            "carol",
        ])
        .env("PORTAL_TEST_PASSWORD", "carol-pass")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for name in ["one", "two"] {
        assert!(
            text.contains(&format!(
                "{name} (127.0.0.1:{}, authentication): Access-Accept",
                radius.auth_port
            )),
            "{text}"
        );
    }
}

/// The organization's only server gone for good with a Stop waiting for it (it would wait for
/// ever): the operator gives up its ended sessions' accounting (dead letters, audited), never
/// an open session's, and the server can be replaced at once.
#[tokio::test]
async fn an_operator_gives_up_the_accounting_of_an_organization_whose_servers_are_gone() {
    let mut primary = FreeRadius::start().await;
    let other = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let settings = quick_failover(&db, vec![fast(&primary, "primary")]);
    let app = TestApp::spawn(&settings).await;
    let (ended, _) = carol_at_primary(&app, &primary, 36).await;
    let (open, _) = carol_at_primary(&app, &primary, 37).await;
    primary.kill();
    // Disconnected while the server is dead: its Stop failed there, and waits.
    let disconnected_stop_fails = |app: TestApp, id: i64| async move {
        assert!(app.sessions.disconnect(id).await.unwrap());
        let storage = app.storage.clone();
        wait_until("the Stop fails at the dead server", || async {
            storage
                .session_outbox(id)
                .await
                .unwrap()
                .iter()
                .any(|e| e.status_type == 2 && e.last_error.is_some())
        })
        .await;
        app.stop().await;
    };
    disconnected_stop_fails(app, ended.id).await;
    let replaced = quick_failover(&db, vec![fast(&other, "other")]);
    let refused = TestApp::try_spawn(&replaced).await.map(|_| ());
    assert!(
        matches!(&refused, Err(e) if format!("{e:#}").contains("primary")),
        "the server is still needed: {refused:?}"
    );

    // Failing for a while (5 minutes, as `give-up` asks), not a moment.
    let age = |db: &std::path::Path| {
        rusqlite::Connection::open(db)
            .unwrap()
            .execute(
                "UPDATE accounting_outbox SET created_at = created_at - 600000 WHERE delivered_at IS NULL",
                [],
            )
            .unwrap();
    };
    let give_up = |args: &[&str]| {
        let out = common::operator_command(&db, &[&["accounting", "give-up"], args].concat());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = give_up(&["--org", "nope"]);
    assert_eq!(code, Some(3), "{text}");
    let open_id = open.id.to_string();
    let (code, text) = give_up(&["--org", "acme", "--session", &open_id]);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains(&format!("session {open_id} is open: end it first")),
        "{text}"
    );
    // Failing a moment ago only: left to be tried.
    let (code, text) = give_up(&["--org", "acme", "--force"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("gave up 0 accounting row(s)")
            && text.contains(
                "1 more of sessions whose accounting has not been failing for 5 minutes yet"
            )
            && text.contains("no portal runs on this database"),
        "{text}"
    );
    age(&db);
    // Its Starts were acknowledged a moment ago: not gone for good, says the database.
    let (code, text) = give_up(&["--org", "ACME"]);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("a server of `acme` acknowledged its accounting at")
            && text.contains("nothing given up (--force gives up all the same)"),
        "{text}"
    );
    let (code, text) = give_up(&["--org", "ACME", "--force"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("gave up 1 accounting row(s) of `acme`'s ended sessions")
            && text.contains("1 session(s) of `acme` still open keep theirs"),
        "{text}"
    );
    let dead = give_up(&["--org", "acme", "--force"]).1;
    assert!(dead.contains("gave up 0 accounting row(s)"), "{dead}");
    let dead = common::operator_command(&db, &["accounting", "dead-letters"]);
    let dead = String::from_utf8_lossy(&dead.stdout);
    assert!(
        dead.contains(&format!(
            "Stop org=acme acct_session_id={}",
            ended.acct_session_id
        )) && dead.contains("accounting servers gone for good"),
        "{dead}"
    );

    // The open session still needs the server; once ended, its accounting goes too, and the
    // server can be replaced.
    disconnected_stop_fails(TestApp::spawn(&settings).await, open.id).await;
    age(&db);
    let (code, text) = give_up(&[
        "--org",
        "acme",
        "--session",
        &open.acct_session_id,
        "--force",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "gave up 1 accounting row(s) of session {open_id} of `acme`"
        )),
        "its Stop: {text}"
    );
    let app = TestApp::spawn(&replaced).await;
    assert_eq!(app.storage.outbox_backlog().await.unwrap(), 0);
    let audit = app.storage.audit_tail(20).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "accounting.give_up"
                && e.organization_id.as_deref() == Some("acme"))
            .count(),
        2,
        "{audit:?}"
    );
    app.stop().await;
}

/// A copy waiting for a server that is down, when the portal restarts: the new process knows
/// nothing of the server's state (no probe will say it is back), so what waited is tried at
/// start — the copy reaches the server once it answers, not minutes later.
#[tokio::test]
async fn a_waiting_copy_goes_out_after_a_restart() {
    let CopyWaiting {
        mut primary,
        backup,
        dir: _dir,
        db,
        settings,
        app,
        sid,
    } = a_copy_waiting_for_the_primary(34).await;
    // The operator cannot remove the server meanwhile: the copy would be given up at once.
    let removal = radius_portal::organizations::change::remove_server(
        &app.storage,
        &app.organizations,
        "acme",
        "primary",
        "test",
    )
    .await;
    assert!(
        matches!(&removal, Err(e) if e.to_string().contains("1 Stop copy(ies) still wait for it")),
        "{removal:?}"
    );
    app.stop().await;
    // Nor through the file: a start with the server removed (or renamed) is refused, as
    // `check-config` says, instead of giving the copy up (black-box tester S's D4).
    for servers in [
        vec![fast(&backup, "backup")],
        vec![fast(&primary, "primary-1"), fast(&backup, "backup")],
    ] {
        let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let without = quick_failover(&db, servers);
        let refused = TestApp::try_spawn(&without).await.map(|_| ());
        assert!(
            matches!(&refused, Err(e) if format!("{e:#}").contains("server `primary` would be removed (or renamed), but 1 Stop copy(ies) still wait for it")),
            "{names:?}: {refused:?}"
        );
    }

    primary.restart().await;
    let app = TestApp::spawn(&settings).await;
    let copy = primary.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&copy, "cause"), "User-Request");
    app.stop().await;
}

/// An operator who fixes a server's shared secret while its breakers are open (it was given a
/// wrong one) sees it used again at once: it is probed with the new secret, not forever with
/// the one that failed, and the Stop that waited for it arrives. The probe interval is a
/// minute, so only the change itself can bring the server back within the test.
#[tokio::test]
async fn a_secret_fixed_while_the_server_is_down_is_probed_at_once_and_the_waiting_stop_arrives() {
    use radius_portal::organizations::change::update_server;
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    server.timeout = Duration::from_millis(300);
    server.retries = 0;
    let mut settings = settings(&db, vec![server]);
    settings.radius.breaker_failures = 2;
    settings.radius.probe_interval = Duration::from_secs(60);
    settings.organizations[0].login_timeout = Duration::from_secs(1);
    let app = TestApp::spawn(&settings).await;
    let (auth, acct) = (radius.auth_addr(true), radius.acct_addr());
    let session = app
        .sessions
        .login("acme", "carol", "carol-pass", IpAddr::V4(client(40)))
        .await
        .unwrap();
    let sid = format!("sid={}", session.acct_session_id);
    radius.wait_for_acct(&["status=Start", &sid]).await;

    let set_secret = |secret: &'static str| {
        update_server(
            &app.storage,
            &app.organizations,
            "acme",
            "primary",
            serde_json::json!({ "secret": secret }),
            "test",
        )
    };
    set_secret("a-wrong-secret").await.unwrap();
    // The server drops everything signed with the wrong secret: both breakers open.
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    for n in 41..=42 {
        let outcome = app
            .sessions
            .login("acme", "erin", "erin-pass", IpAddr::V4(client(n)))
            .await;
        assert!(outcome.is_err(), "{outcome:?}");
    }
    assert!(!app.radius.health().allows(auth), "auth breaker open");
    wait_until(
        "the Stop's failures to open the accounting breaker",
        || async { !app.radius.health().allows(acct) },
    )
    .await;
    assert!(!radius
        .acct_lines()
        .iter()
        .any(|l| l.contains("status=Stop") && l.contains(&sid)));

    set_secret(SECRET).await.unwrap();
    wait_until("both breakers to close with the fixed secret", || async {
        app.radius.health().allows(auth) && app.radius.health().allows(acct)
    })
    .await;
    radius.wait_for_acct(&["status=Stop", &sid]).await;
    app.sessions
        .login("acme", "erin", "erin-pass", IpAddr::V4(client(43)))
        .await
        .unwrap();
    app.stop().await;
}

/// A server whose genuine answers are of the wrong kind — a proxy's Protocol-Error to an
/// Accounting-Request (it could not pass it on), an Accounting-Response to an Access-Request —
/// has not answered (RFC 2865 §3, RFC 2866 §4), and will not: each exchange ends at its first
/// such reply as that server's failure (no retransmission), the sign-in goes on to the backup at
/// once, and its Start fails over once the accounting port's breaker opens — after a few
/// packets, not a flood of them and a failed sign-in.
#[tokio::test]
async fn a_reply_of_the_wrong_kind_is_no_answer_and_the_request_fails_over() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let radius = FreeRadius::start().await;
    let asked = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let counted = asked.clone();
    let proxy = udp_front(move |front, request, from| {
        let (kind, code) = match request[0] {
            1 => (0, Code::AccountingResponse as u8),
            4 => (1, 52),
            _ => return,
        };
        counted[kind].fetch_add(1, Ordering::SeqCst);
        let mut reply = vec![code, request[1], 0, 20];
        reply.extend_from_slice(&request[4..20]);
        let authenticator: [u8; 16] = Md5::new()
            .chain_update(&reply)
            .chain_update(SECRET.as_bytes())
            .finalize()
            .into();
        reply[4..20].copy_from_slice(&authenticator);
        let front = front.clone();
        tokio::spawn(async move { front.send_to(&reply, from).await.unwrap() });
    })
    .await;
    let (_dir, db) = temp_db();
    // `proxy` answers the first server's Access-Requests and the second's accounting.
    let mut odd_auth = radius.server_settings("odd-auth", true);
    odd_auth.auth_port = proxy.port();
    odd_auth.retries = 2;
    let mut odd_acct = radius.server_settings("odd-acct", true);
    odd_acct.acct_port = proxy.port();
    odd_acct.retries = 2;
    let mut config = settings(
        &db,
        vec![odd_auth, odd_acct, radius.server_settings("backup", true)],
    );
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn(&config).await;

    let page = app.browser(client(61)).login("carol", "carol-pass").await;

    assert_eq!(page.path, "/session", "{}", page.body);
    assert_eq!(
        asked[0].load(Ordering::SeqCst),
        1,
        "the Access-Request was not sent again to a server that answered it wrongly"
    );
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = field(&start, "sid").to_string();
    let session = app.storage.session_by_acct_id(&sid).await.unwrap().unwrap();
    assert_ne!(
        session.server_name, "odd-acct",
        "the Start followed a server that acknowledged it"
    );
    let sent = asked[1].load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&sent),
        "an Accounting-Request per exchange until the breaker opened, not a flood: {sent}"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"port="acct",result="not_an_answer""#)
            && metrics.contains(r#"port="auth",result="not_an_answer""#),
        "{metrics}"
    );
    app.stop().await;
}

/// A server switched from `require_message_authenticator = true` to `"learn"` while the portal
/// runs keeps what this process learnt of it: it has signed its answers, so an unsigned one is
/// still refused (no BlastRADIUS window until its next signed answer).
#[tokio::test]
async fn a_server_switched_to_learn_keeps_what_was_learnt() {
    use std::sync::atomic::AtomicBool;
    let radius = FreeRadius::start().await;
    let (_dir, app, _relay) = portal_before_older_freeradius(
        &radius,
        Arc::new(AtomicBool::new(true)),
        Default::default(),
    )
    .await;
    let page = app.browser(client(71)).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    radius_portal::organizations::change::update_server(
        &app.storage,
        &app.organizations,
        "acme",
        "old",
        serde_json::json!({ "require_message_authenticator": "learn" }),
        "test",
    )
    .await
    .unwrap();
    app.org_worker.wake();
    wait_until("the server to be in learn mode", || async {
        app.organizations.get("acme").unwrap().servers[0].message_authenticator
            == radius_portal::config::MessageAuthenticatorMode::Learn
    })
    .await;

    let page = app.browser(client(72)).login("erin", "erin-pass").await;

    assert_ne!(page.path, "/session", "{}", page.body);
    assert!(
        page.body.contains("answered, but without the signature"),
        "{}",
        page.body
    );
    app.stop().await;
}

/// carol signing in (from `client(n)`) to `mv`, an organization made at run time (the file's
/// take their servers from the file) whose server `mover` is `old` behind a relay that holds
/// its answer: returned once the Access-Request was answered, the answer held until `release`;
/// `elsewhere` is another process's view of the organizations (an operator command, another
/// replica), `new` a second FreeRADIUS.
struct MoverSignIn {
    old: FreeRadius,
    new: FreeRadius,
    release: Arc<tokio::sync::Notify>,
    _dir: tempfile::TempDir,
    app: TestApp,
    elsewhere: radius_portal::organizations::Organizations,
    signing_in: tokio::task::JoinHandle<
        Result<
            radius_portal::storage::AccessSessionRecord,
            radius_portal::access_session::SessionError,
        >,
    >,
}

async fn mover_signing_in(n: u8) -> MoverSignIn {
    use radius_portal::organizations::{change, Organizations};
    let (old, new) = (FreeRadius::start().await, FreeRadius::start().await);
    let (held, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let relay = common::holding_relay(old.auth_addr(true), held.clone(), release.clone()).await;
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&settings(&db, vec![old.server_settings("primary", true)])).await;
    let mut server = old.server_settings("mover", true);
    server.auth_port = relay.port();
    server.timeout = Duration::from_secs(5);
    change::create(
        &app.storage,
        &app.organizations,
        serde_json::json!({ "id": "mv", "name": "Mover", "servers": [server] }),
        "test",
    )
    .await
    .unwrap();
    let sessions = app.sessions.clone();
    let signing_in = tokio::spawn(async move {
        sessions
            .login("mv", "carol", "carol-pass", IpAddr::V4(client(n)))
            .await
    });
    held.notified().await;
    let elsewhere = Organizations::load(&app.storage).await.unwrap();
    MoverSignIn {
        old,
        new,
        release,
        _dir,
        app,
        elsewhere,
        signing_in,
    }
}

/// A server's accounting moved by another process (an operator command, another replica)
/// while a sign-in it authenticates is under way: this process has not heard of it yet, and
/// the session's write — which finds the organization changed — has it worked out again with
/// the stored settings, so its Start goes where its Stop will; never the Start to the old
/// address and the Stop to the new one (black-box tester M's D2).
#[tokio::test]
async fn a_sign_in_under_way_when_its_servers_accounting_moves_sends_start_and_stop_to_one_server()
{
    let MoverSignIn {
        old,
        new,
        release,
        app,
        elsewhere,
        signing_in,
        _dir,
    } = mover_signing_in(51).await;
    assert!(radius_portal::organizations::change::update_server(
        &app.storage,
        &elsewhere,
        "mv",
        "mover",
        serde_json::json!({ "acct_port": new.acct_port, "secret": SECRET }),
        "cli:test",
    )
    .await
    .unwrap());
    release.notify_one();
    let session = signing_in.await.unwrap().unwrap();
    let sid = format!("sid={} ", session.acct_session_id);
    new.wait_for_acct(&["status=Start", &sid]).await;
    assert!(app.sessions.disconnect(session.id).await.unwrap());
    new.wait_for_acct(&["status=Stop", &sid]).await;
    assert!(
        !old.acct_lines().iter().any(|l| l.contains(&sid)),
        "nothing of it at the old address"
    );
    app.stop().await;
}

/// An organization deleted and made again under its id by another process while a sign-in's
/// Access-Request waits, with a server of the same name at another host: the Accept of the
/// deleted organization's server opens no session in the new one — no Start to a server that
/// never authenticated the user (the guard review's M2).
#[tokio::test]
async fn an_accept_from_a_server_the_organization_no_longer_has_opens_no_session() {
    use radius_portal::organizations::change;
    let MoverSignIn {
        old,
        new,
        release,
        app,
        elsewhere,
        signing_in,
        _dir,
    } = mover_signing_in(52).await;
    change::delete(&app.storage, &elsewhere, "mv", "cli:test")
        .await
        .unwrap();
    let mut moved = new.server_settings("mover", true);
    moved.address = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    change::create(
        &app.storage,
        &elsewhere,
        serde_json::json!({ "id": "mv", "name": "Mover again", "servers": [moved] }),
        "cli:test",
    )
    .await
    .unwrap();
    release.notify_one();
    let refused = signing_in.await.unwrap();
    assert!(
        matches!(
            refused,
            Err(radius_portal::access_session::SessionError::Storage(
                radius_portal::storage::StorageError::OrganizationChanged
            ))
        ),
        "no session worked out at all: {refused:?}"
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    assert!(
        app.storage.waiting_rows(10).await.unwrap().is_empty(),
        "nothing queued"
    );
    for radius in [&old, &new] {
        assert!(
            !radius
                .acct_lines()
                .iter()
                .any(|l| l.contains("status=Start")),
            "{:?}",
            radius.acct_lines()
        );
    }
    app.stop().await;
}

/// An organization deleted and made again under its id while a sign-in's Access-Request waits,
/// with the same server but settings this process cannot build (a secret file it cannot
/// read): an organization unknown here is denied — the Accept opens no session, nothing is
/// sent.
#[tokio::test]
async fn an_accept_for_an_organization_this_process_cannot_build_now_opens_no_session() {
    use radius_portal::organizations::change;
    let MoverSignIn {
        old,
        new,
        release,
        app,
        elsewhere,
        signing_in,
        _dir,
    } = mover_signing_in(53).await;
    change::delete(&app.storage, &elsewhere, "mv", "cli:test")
        .await
        .unwrap();
    let secret_file = _dir.path().join("mover.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut same = old.server_settings("mover", true);
    same.secret = None;
    same.secret_file = Some(secret_file.clone());
    change::create(
        &app.storage,
        &elsewhere,
        serde_json::json!({ "id": "mv", "name": "Mover again", "servers": [same] }),
        "cli:test",
    )
    .await
    .unwrap();
    std::fs::remove_file(&secret_file).unwrap();
    wait_until("this process has dropped the organization", || async {
        app.organizations.get("mv").is_none()
    })
    .await;
    release.notify_one();
    let refused = signing_in.await.unwrap();
    assert!(
        matches!(
            refused,
            Err(radius_portal::access_session::SessionError::OrganizationDisabled)
        ),
        "{refused:?}"
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    assert!(!old.acct_lines().iter().any(|l| l.contains("status=Start")));
    drop(new);
    app.stop().await;
}

/// Organizations sharing a RADIUS server (one address, one secret) each have a breaker of their
/// own: one whose users the server never answers (their directory down behind it) opens its
/// own, and the other's users still sign in there (black-box tester M's D6: one shared breaker
/// let a noisy tenant shut every other tenant of the server out).
#[tokio::test]
async fn one_organizations_unanswered_users_never_shut_out_another_on_a_shared_server() {
    let radius = FreeRadius::start().await;
    let relay = common::relay_dropping_user(radius.auth_addr(true), "carol").await;
    let (_dir, db) = temp_db();
    let mut shared = radius.server_settings("shared", true);
    shared.auth_port = relay.port();
    shared.timeout = Duration::from_millis(300);
    shared.retries = 0;
    let mut config = settings(&db, vec![shared]);
    config.radius.breaker_failures = 2;
    let mut noisy = config.organizations[0].clone();
    noisy.id = "noisy".into();
    noisy.name = "Noisy".into();
    config.organizations.push(noisy);
    config.validate().unwrap();
    let app = TestApp::spawn(&config).await;
    for n in 60..63 {
        let unanswered = app
            .sessions
            .login("noisy", "carol", "carol-pass", IpAddr::V4(client(n)))
            .await;
        assert!(unanswered.is_err(), "{unanswered:?}");
    }
    let shared_auth = SocketAddr::from(([127, 0, 0, 1], relay.port()));
    assert!(
        app.radius
            .health()
            .states()
            .into_iter()
            .any(|(addr, state)| addr == shared_auth
                && matches!(
                    state,
                    radius_portal::radius::breaker::BreakerState::Open { .. }
                )),
        "the noisy organization's breaker opened"
    );
    let session = app
        .sessions
        .login("acme", "erin", "erin-pass", IpAddr::V4(client(63)))
        .await;
    assert!(
        session.is_ok(),
        "acme signs in at the shared server: {session:?}"
    );
    app.stop().await;
}

/// A sign-in refused because every server's breaker is open sent nothing: it takes no attempt
/// of the user's (the web review's M1: retries during an outage used up the username's limit,
/// and the user, the server back, was told 429).
#[tokio::test]
async fn sign_ins_refused_while_every_breaker_is_open_take_no_attempt() {
    let radius = FreeRadius::start().await;
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut server = fast(&radius, "primary");
    server.auth_port = common::gated_relay(radius.auth_addr(true), open.clone())
        .await
        .port;
    let (_dir, db) = temp_db();
    let mut settings = quick_failover(&db, vec![server]);
    settings.rate_limit.login_per_user = 2;
    settings.rate_limit.period = Duration::from_secs(3600);
    let app = TestApp::spawn(&settings).await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 9, 41));
    // The first is sent, unanswered: the breaker opens (one attempt taken).
    let first = browser.login_as_script("carol", "carol-pass").await;
    assert_eq!(first.status(), 503);
    // Then none is sent while it stays open: each refused at once, none taking an attempt.
    for _ in 0..3 {
        let refused = browser.login_as_script("carol", "carol-pass").await;
        assert_eq!(refused.status(), 503, "{:?}", refused.text().await);
    }
    open.store(true, SeqCst);
    wait_until("the server back, the user signs in", || async {
        let answer = browser.login_as_script("carol", "carol-pass").await;
        assert_ne!(answer.status(), 429, "an attempt left");
        answer.status().is_success()
    })
    .await;
    app.stop().await;
}
