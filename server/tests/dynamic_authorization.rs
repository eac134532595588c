//! The RFC 5176 listener, driven by FreeRADIUS's own `radclient` as a RADIUS server would: a
//! Disconnect-Request ends the session (Stop, Admin-Reset, seen by FreeRADIUS), CoA-Request is
//! refused, unknown sessions are NAKed, forged requests get no answer, retransmissions are
//! answered from the cache and acted on once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{field, settings, temp_db, wait_until, FreeRadius, TestApp, SECRET};
use radius_portal::{
    config::{DynamicAuthorizationClient, Secret, Settings},
    radius::packet::{attr, encode_dynauth_request, Code, Packet, PushAttribute},
};
use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

fn with_listener(mut settings: Settings) -> Settings {
    settings.dynamic_authorization.listen = "127.0.0.1:0".parse().unwrap();
    settings
        .dynamic_authorization
        .clients
        .push(dynauth_client("radclient", "127.0.0.1"));
    settings
}

/// A Dynamic Authorization client at `address` with the test secret, for every organization.
fn dynauth_client(name: &str, address: &str) -> DynamicAuthorizationClient {
    DynamicAuthorizationClient {
        name: name.into(),
        address: address.parse().unwrap(),
        secret: Some(Secret::new(SECRET)),
        secret_file: None,
        organizations: None,
    }
}

/// Runs `radclient` with `attributes` on stdin; its whole output.
fn radclient(addr: SocketAddr, command: &str, secret: &str, attributes: &str) -> String {
    let mut child = Command::new("radclient")
        .args(["-x", "-t", "2", "-r", "1"])
        .arg(addr.to_string())
        .arg(command)
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("radclient must be installed (scripts/setup.sh --test installs freeradius-utils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(attributes.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn radclient_async(
    addr: SocketAddr,
    command: &str,
    secret: &str,
    attributes: &str,
) -> String {
    let (command, secret, attributes) = (
        command.to_string(),
        secret.to_string(),
        attributes.to_string(),
    );
    tokio::task::spawn_blocking(move || radclient(addr, &command, &secret, &attributes))
        .await
        .unwrap()
}

/// One FreeRADIUS, and a portal with it as its only server and the listener on (its
/// database's directory lives as long as the guard).
async fn portal_with_listener() -> (FreeRadius, TestApp, tempfile::TempDir) {
    portal_with_listener_and(|_| {}).await
}

/// [`portal_with_listener`] with `change` made to its settings.
async fn portal_with_listener_and(
    change: impl FnOnce(&mut Settings),
) -> (FreeRadius, TestApp, tempfile::TempDir) {
    let radius = FreeRadius::start().await;
    let (dir, db) = temp_db();
    let mut settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    change(&mut settings);
    let app = TestApp::spawn(&settings).await;
    (radius, app, dir)
}

/// The Accounting-Stops `radius` has received.
fn stops(radius: &FreeRadius) -> usize {
    radius
        .acct_lines()
        .iter()
        .filter(|l| l.contains("status=Stop"))
        .count()
}

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 2, n)
}

#[tokio::test]
async fn disconnect_request_by_session_id_user_and_address_or_class_ends_the_session() {
    let (radius, app, _dir) = portal_with_listener().await;
    let (listener, stats) = app.dynauth.clone().unwrap();

    // By Acct-Session-Id.
    app.browser(client(1)).login("carol", "carol-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.1"])
        .await;
    let sid = field(&start, "sid").to_string();
    // With a current Event-Timestamp (inside the replay window), as ISE sends it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        &format!("Acct-Session-Id = \"{sid}\"\nEvent-Timestamp = {now}\n"),
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={sid}")])
        .await;
    assert_eq!(field(&stop, "cause"), "Admin-Reset");

    // By User-Name + Framed-IP-Address.
    app.browser(client(2)).login("erin", "erin-pass").await;
    radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.2"])
        .await;
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        "User-Name = \"erin\"\nFramed-IP-Address = 127.0.2.2\n",
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    radius
        .wait_for_acct(&["status=Stop", "ip=127.0.2.2", "cause=Admin-Reset"])
        .await;

    // By Class.
    app.browser(client(3)).login("bob", "bob-pass").await;
    radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.3"])
        .await;
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        "Class = \"plain-class-value\"\n",
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    radius
        .wait_for_acct(&["status=Stop", "ip=127.0.2.3", "cause=Admin-Reset"])
        .await;

    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    assert_eq!(stats.acked.load(Ordering::Relaxed), 3);
    app.stop().await;
}

/// A listener on `[::]` (IPv6 and IPv4 on one socket, as the README allows) serves an IPv4
/// client configured by its IPv4 address: the kernel hands its datagrams over as
/// `::ffff:127.0.0.1`, which is the same client.
#[tokio::test]
async fn a_listener_on_all_ipv6_addresses_answers_an_ipv4_client() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    settings.dynamic_authorization.listen = "[::]:0".parse().unwrap();
    let app = TestApp::spawn(&settings).await;
    let (listener, _) = app.dynauth.clone().unwrap();
    let over_ipv4 = SocketAddr::from(([127, 0, 0, 1], listener.port()));
    app.browser(client(9)).login("carol", "carol-pass").await;
    radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.9"])
        .await;
    let out = radclient_async(
        over_ipv4,
        "disconnect",
        SECRET,
        "User-Name = \"carol\"\nFramed-IP-Address = 127.0.2.9\n",
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    radius.wait_for_acct(&["status=Stop", "ip=127.0.2.9"]).await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_sessions_coa_and_forged_requests_are_refused() {
    let (radius, app, _dir) = portal_with_listener().await;
    let (listener, stats) = app.dynauth.clone().unwrap();
    app.browser(client(10)).login("carol", "carol-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.10"])
        .await;
    let sid = field(&start, "sid").to_string();

    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        "Acct-Session-Id = \"no-such-session\"\n",
    )
    .await;
    assert!(out.contains("Received Disconnect-NAK"), "{out}");
    assert!(out.contains("Session-Context-Not-Found"), "{out}");

    let out = radclient_async(
        listener,
        "coa",
        SECRET,
        &format!("Acct-Session-Id = \"{sid}\"\nSession-Timeout = 60\n"),
    )
    .await;
    assert!(out.contains("Received CoA-NAK"), "{out}");
    assert!(out.contains("Unsupported-Extension"), "{out}");
    // "Authorize Only" is a service not supported (405), its State sent back (RFC 5176 §3.2,
    // §3.3; a code review).
    let out = radclient_async(
        listener,
        "coa",
        SECRET,
        &format!(
            "Acct-Session-Id = \"{sid}\"\nService-Type = Authorize-Only\nState = 0x01020304\n"
        ),
    )
    .await;
    assert!(out.contains("Received CoA-NAK"), "{out}");
    assert!(out.contains("Unsupported-Service"), "{out}");
    assert!(out.contains("State = 0x01020304"), "{out}");

    let out = radclient_async(
        listener,
        "disconnect",
        "not-the-secret",
        &format!("Acct-Session-Id = \"{sid}\"\n"),
    )
    .await;
    assert!(
        !out.contains("Disconnect-ACK") && !out.contains("Disconnect-NAK"),
        "a forged request gets no answer: {out}"
    );
    assert!(stats.dropped.load(Ordering::Relaxed) >= 1);

    // A captured request replayed an hour later: outside the Event-Timestamp window, dropped.
    let dropped_before = stats.dropped.load(Ordering::Relaxed);
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        &format!("Acct-Session-Id = \"{sid}\"\nEvent-Timestamp = {an_hour_ago}\n"),
    )
    .await;
    assert!(
        !out.contains("Disconnect-ACK") && !out.contains("Disconnect-NAK"),
        "a stale request gets no answer: {out}"
    );
    assert!(stats.dropped.load(Ordering::Relaxed) > dropped_before);

    // An Event-Timestamp that is not one 4-byte time — 3 bytes, or two of them, the first
    // current — is the replay check's input gone wrong: dropped, never read as absent or as
    // its first (black-box tester P's D1). The session runs on (checked below).
    let now = (an_hour_ago + 3600) as u32;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for stamps in [
        vec![vec![1u8, 2, 3]],
        vec![
            now.to_be_bytes().to_vec(),
            (now - 3600).to_be_bytes().to_vec(),
        ],
    ] {
        let dropped_before = stats.dropped.load(Ordering::Relaxed);
        let mut request = Packet::new(Code::DisconnectRequest, 78, [0; 16], SECRET.as_bytes());
        request.push(attr::ACCT_SESSION_ID, sid.as_bytes());
        for stamp in &stamps {
            request.push(attr::EVENT_TIMESTAMP, stamp);
        }
        let bytes = encode_dynauth_request(&request).unwrap();
        socket.send_to(&bytes, listener).await.unwrap();
        wait_until(
            "the request with a malformed Event-Timestamp is dropped",
            || async { stats.dropped.load(Ordering::Relaxed) > dropped_before },
        )
        .await;
    }

    // Every identification attribute given must match (RFC 5176 §3): the right id with
    // another user or address names no session; another NAS is a mismatch; none is missing.
    for (attributes, cause) in [
        (
            format!("Acct-Session-Id = \"{sid}\"\nUser-Name = \"mallory\"\n"),
            "Session-Context-Not-Found",
        ),
        (
            format!("Acct-Session-Id = \"{sid}\"\nFramed-IP-Address = 10.9.9.9\n"),
            "Session-Context-Not-Found",
        ),
        (
            format!("Acct-Session-Id = \"{sid}\"\nNAS-Identifier = \"other-nas\"\n"),
            "NAS-Identification-Mismatch",
        ),
        (
            format!("Acct-Session-Id = \"{sid}\"\nNAS-IP-Address = 10.1.2.3\n"),
            "NAS-Identification-Mismatch",
        ),
        (
            "NAS-Identifier = \"radius-portal\"\n".to_string(),
            "Missing-Attribute",
        ),
        // An authorization attribute in a Disconnect-Request (RFC 5176 §3: NAK; black-box
        // tester P's D4): not acted on with it ignored.
        (
            format!("Acct-Session-Id = \"{sid}\"\nSession-Timeout = 10\nFilter-Id = \"acl\"\n"),
            "Unsupported-Attribute",
        ),
    ] {
        let out = radclient_async(listener, "disconnect", SECRET, &attributes).await;
        assert!(
            out.contains("Received Disconnect-NAK"),
            "{attributes}: {out}"
        );
        assert!(out.contains(cause), "{attributes}: {out}");
    }

    assert_eq!(
        app.storage.active_sessions().await.unwrap(),
        1,
        "neither the CoA nor the forged or mismatched Disconnects ended the session"
    );
    assert!(!radius
        .acct_lines()
        .iter()
        .any(|l| l.contains("status=Stop")));

    // The client's address as Calling-Station-Id (as the portal sends it), with the user and
    // the NAS the organization presents: that session.
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        "Calling-Station-Id = \"127.0.2.10\"\nUser-Name = \"carol\"\nNAS-IP-Address = 127.0.0.1\nNAS-Identifier = \"portal-test\"\n",
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    radius
        .wait_for_acct(&["status=Stop", "ip=127.0.2.10", "cause=Admin-Reset"])
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_retransmitted_disconnect_is_answered_from_the_cache_and_acted_on_once() {
    let (radius, app, _dir) = portal_with_listener().await;
    let (listener, stats) = app.dynauth.clone().unwrap();
    app.browser(client(20)).login("carol", "carol-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.20"])
        .await;
    let sid = field(&start, "sid").to_string();

    let mut request = Packet::new(Code::DisconnectRequest, 77, [0; 16], SECRET.as_bytes());
    request.push(attr::ACCT_SESSION_ID, sid.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    request.push_u32(attr::EVENT_TIMESTAMP, now);
    let bytes = encode_dynauth_request(&request).unwrap();
    // A retransmission from the same socket, then the same bytes replayed from another port
    // (a captured request, still inside its Event-Timestamp window).
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let replayer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut replies = Vec::new();
    for socket in [&socket, &socket, &replayer] {
        socket.send_to(&bytes, listener).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        replies.push(buf[..n].to_vec());
    }
    assert_eq!(replies[0], replies[1], "the same answer, byte for byte");
    assert_eq!(replies[0], replies[2], "the replay gets the cached answer");
    assert_eq!(
        Packet::decode(&replies[0], SECRET.as_bytes())
            .unwrap()
            .code(),
        Code::DisconnectACK
    );
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 2);
    radius
        .wait_for_acct(&["status=Stop", &format!("sid={sid}")])
        .await;
    assert_eq!(
        app.storage.active_sessions().await.unwrap(),
        0,
        "the session ended once"
    );
    assert_eq!(stops(&radius), 1);
    app.stop().await;
}

/// Under a short `event_timestamp_window`, the retransmission of a Disconnect-Request whose ACK
/// was lost may come after the window: it is a copy of a request answered already, and gets
/// that answer (it was dropped as a replay: the server took the disconnect for failed). A new
/// request as old is still dropped.
#[tokio::test]
async fn a_copy_of_an_answered_disconnect_is_answered_after_a_short_replay_window() {
    let (radius, app, _dir) = portal_with_listener_and(|settings| {
        settings.dynamic_authorization.event_timestamp_window = Duration::from_secs(1);
    })
    .await;
    let (listener, stats) = app.dynauth.clone().unwrap();
    app.browser(client(25)).login("carol", "carol-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.25"])
        .await;
    let sid = field(&start, "sid").to_string();
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32
    };
    let stamp = unix_now();
    let request = |identifier: u8| {
        let mut request = Packet::new(
            Code::DisconnectRequest,
            identifier,
            [0; 16],
            SECRET.as_bytes(),
        );
        request.push(attr::ACCT_SESSION_ID, sid.as_bytes());
        request.push_u32(attr::EVENT_TIMESTAMP, stamp);
        encode_dynauth_request(&request).unwrap()
    };
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let exchange = async |bytes: &[u8], wait: Duration| {
        socket.send_to(bytes, listener).await.unwrap();
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(wait, socket.recv_from(&mut buf))
            .await
            .ok()
            .map(|got| buf[..got.unwrap().0].to_vec())
    };
    let first = request(90);
    let acked = exchange(&first, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(
        Packet::decode(&acked, SECRET.as_bytes()).unwrap().code(),
        Code::DisconnectACK
    );
    // The window (1 s either way) passed for the request's Event-Timestamp.
    while unix_now() < stamp + 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = exchange(&first, Duration::from_secs(5)).await;
    assert_eq!(
        again.as_deref(),
        Some(&acked[..]),
        "the answer given, byte for byte"
    );
    let dropped_before = stats.dropped.load(Ordering::Relaxed);
    assert_eq!(
        exchange(&request(91), Duration::from_secs(1)).await,
        None,
        "a new request as old is a replay: dropped"
    );
    assert!(stats.dropped.load(Ordering::Relaxed) > dropped_before);
    assert_eq!(stops(&radius), 1);
    app.stop().await;
}

/// A Disconnect-Request captured and replayed after the portal restarted, inside its
/// Event-Timestamp window — and from another client's address that shares its secret — is
/// answered as it was and not acted on again: the user's new session runs on.
#[tokio::test]
async fn a_disconnect_replayed_after_a_restart_is_not_acted_on_again() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    settings
        .dynamic_authorization
        .clients
        .push(dynauth_client("second-node", "127.0.0.2"));
    let app = TestApp::spawn(&settings).await;
    let (listener, _) = app.dynauth.clone().unwrap();
    app.browser(client(25)).login("carol", "carol-pass").await;
    radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.25"])
        .await;
    let mut request = Packet::new(Code::DisconnectRequest, 78, [0; 16], SECRET.as_bytes());
    request.push(attr::USER_NAME, b"carol");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    request.push_u32(attr::EVENT_TIMESTAMP, now);
    let bytes = encode_dynauth_request(&request).unwrap();
    let exchange = |listener: SocketAddr, source: &'static str| {
        let bytes = bytes.clone();
        async move {
            let socket = tokio::net::UdpSocket::bind(source).await.unwrap();
            socket.send_to(&bytes, listener).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            buf[..n].to_vec()
        }
    };
    let first = exchange(listener, "127.0.0.1:0").await;
    assert_eq!(
        Packet::decode(&first, SECRET.as_bytes()).unwrap().code(),
        Code::DisconnectACK
    );
    radius
        .wait_for_acct(&["status=Stop", "ip=127.0.2.25", "cause=Admin-Reset"])
        .await;
    app.stop().await;

    let app = TestApp::spawn(&settings).await;
    let (listener, stats) = app.dynauth.clone().unwrap();
    app.browser(client(25)).login("carol", "carol-pass").await;
    wait_until("the new session's Start", || async {
        radius
            .acct_lines()
            .iter()
            .filter(|l| l.contains("status=Start") && l.contains("ip=127.0.2.25"))
            .count()
            == 2
    })
    .await;
    let replayed = exchange(listener, "127.0.0.2:0").await;
    assert_eq!(replayed, first, "the answer it was given, byte for byte");
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(
        app.storage.active_sessions().await.unwrap(),
        1,
        "the new session runs on"
    );
    app.stop().await;
}

/// A Disconnect-Request whose answer was lost, sent again at once to another replica (a second
/// listener on the same database): that one answers as the first did, byte for byte, and does
/// not act again — the answer is recorded before it is sent (black-box tester M's D1: sent on
/// the answer's heels, it was answered NAK 503, the session not found).
#[tokio::test]
async fn a_disconnect_sent_again_to_another_replica_at_once_gets_the_same_answer() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    let app = TestApp::spawn(&settings).await;
    let (listener, _) = app.dynauth.clone().unwrap();
    let other = radius_portal::dynauth::DynAuthSocket::bind(&settings.dynamic_authorization)
        .await
        .unwrap()
        .unwrap()
        .serving(app.sessions.clone(), app.storage.clone());
    let other_addr = other.local_addr().unwrap();
    let other_stats = other.stats();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(other.run(shutdown.clone()));
    app.browser(client(26)).login("carol", "carol-pass").await;
    radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.26"])
        .await;
    let mut request = Packet::new(Code::DisconnectRequest, 79, [0; 16], SECRET.as_bytes());
    request.push(attr::USER_NAME, b"carol");
    let bytes = encode_dynauth_request(&request).unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut answers = Vec::new();
    for to in [listener, other_addr] {
        socket.send_to(&bytes, to).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        answers.push(buf[..n].to_vec());
    }
    assert_eq!(
        Packet::decode(&answers[0], SECRET.as_bytes())
            .unwrap()
            .code(),
        Code::DisconnectACK
    );
    assert_eq!(
        answers[1], answers[0],
        "the answer it was given, byte for byte"
    );
    assert_eq!(other_stats.duplicates.load(Ordering::Relaxed), 1);
    radius
        .wait_for_acct(&["status=Stop", "ip=127.0.2.26", "cause=Admin-Reset"])
        .await;
    shutdown.cancel();
    app.stop().await;
}

/// Sessions opened before the Class index existed are indexed at start-up: a Disconnect-Request
/// by Class still finds them.
#[tokio::test]
async fn sessions_from_before_the_class_index_are_found_by_class_after_a_restart() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    let app = TestApp::spawn(&settings).await;
    app.browser(client(30)).login("bob", "bob-pass").await;
    radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.30"])
        .await;
    app.stop().await;
    {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .connect()
            .await
            .unwrap();
        sqlx::query("DELETE FROM session_classes")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let app = TestApp::spawn(&settings).await;
    let (listener, _) = app.dynauth.clone().unwrap();
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        "Class = \"plain-class-value\"\n",
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    radius
        .wait_for_acct(&["status=Stop", "ip=127.0.2.30", "cause=Admin-Reset"])
        .await;
    app.stop().await;
}

/// What a Disconnect-Request for carol's session (signed in to acme) gets from a client tied to
/// `organizations`, and how many sessions are active after it.
async fn disconnect_from_a_client_tied_to(organizations: &[&str]) -> (String, i64) {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    settings.dynamic_authorization.clients[0].organizations =
        Some(organizations.iter().map(|o| o.to_string()).collect());
    let app = TestApp::spawn(&settings).await;
    let (listener, _) = app.dynauth.clone().unwrap();
    app.browser(client(31)).login("carol", "carol-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.31"])
        .await;
    let sid = field(&start, "sid").to_string();
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        &format!("Acct-Session-Id = \"{sid}\"\n"),
    )
    .await;
    let active = app.storage.active_sessions().await.unwrap();
    app.stop().await;
    (out, active)
}

/// A client tied to other organizations cannot end this organization's sessions: it is told
/// there is no such session (nothing reveals that one exists).
#[tokio::test]
async fn a_client_tied_to_other_organizations_cannot_end_this_ones_sessions() {
    let (out, active) = disconnect_from_a_client_tied_to(&["beta"]).await;
    assert!(out.contains("Received Disconnect-NAK"), "{out}");
    assert!(out.contains("Session-Context-Not-Found"), "{out}");
    assert_eq!(active, 1);
}

/// A client's organizations are named in any letter case, as organization ids are everywhere
/// (black-box tester M's D3).
#[tokio::test]
async fn a_clients_organizations_are_named_in_any_letter_case() {
    let (out, active) = disconnect_from_a_client_tied_to(&["ACME"]).await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    assert_eq!(active, 0);
}

/// After an operator renames the portal's NAS, a session opened before is still the NAS the
/// server knows it by: a Disconnect-Request naming the old NAS-Identifier ends it; the NAS the
/// new identifier names has no such session (503: it is the portal's own, not another NAS); a
/// session opened after answers to the new one.
#[tokio::test]
async fn a_session_answers_to_the_nas_identity_it_started_with() {
    let (radius, app, _dir) = portal_with_listener().await;
    let (listener, _stats) = app.dynauth.clone().unwrap();
    app.browser(client(20)).login("carol", "carol-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.20"])
        .await;
    let (sid, old) = (field(&start, "sid"), field(&start, "nas_id"));
    app.rename_nas("acme", "renamed-nas").await;

    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        &format!("Acct-Session-Id = \"{sid}\"\nNAS-Identifier = \"renamed-nas\"\n"),
    )
    .await;
    assert!(out.contains("Received Disconnect-NAK"), "{out}");
    assert!(out.contains("Session-Context-Not-Found"), "{out}");
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        &format!("Acct-Session-Id = \"{sid}\"\nNAS-Identifier = \"{old}\"\n"),
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={sid}")])
        .await;
    assert_eq!(field(&stop, "nas_id"), old);

    app.browser(client(21)).login("erin", "erin-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.21"])
        .await;
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        &format!(
            "Acct-Session-Id = \"{}\"\nNAS-Identifier = \"renamed-nas\"\n",
            field(&start, "sid")
        ),
    )
    .await;
    assert!(out.contains("Received Disconnect-ACK"), "{out}");
    app.stop().await;
}

/// The portal is one NAS per organization: a request naming another organization's NAS
/// identity and a user who has a session only in this one names no session of that NAS (503),
/// as it would for a user with no session at all — the answer never depends on the user's
/// sessions elsewhere (black-box tester S's D1: it was 403 then) — and ends nothing; a NAS
/// identity of no organization the client may act on is another NAS (403).
#[tokio::test]
async fn a_request_naming_another_organizations_nas_finds_no_session_there() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    let mut beta = settings.organizations[0].clone();
    beta.id = "beta".into();
    beta.name = "Beta Org".into();
    beta.nas_identifier = "portal-beta".into();
    settings.organizations.push(beta);
    // A second client, for acme only: beta's identity is none of its organizations'.
    let mut acme_only = dynauth_client("acme-only", "127.0.0.2");
    acme_only.organizations = Some(vec!["acme".into()]);
    settings.dynamic_authorization.clients.push(acme_only);
    let app = TestApp::spawn(&settings).await;
    let (listener, _) = app.dynauth.clone().unwrap();
    app.browser(client(40)).login("carol", "carol-pass").await;
    radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.40"])
        .await;

    for user in ["carol", "nobody-here"] {
        let out = radclient_async(
            listener,
            "disconnect",
            SECRET,
            &format!("User-Name = \"{user}\"\nNAS-Identifier = \"portal-beta\"\n"),
        )
        .await;
        assert!(out.contains("Received Disconnect-NAK"), "{user}: {out}");
        assert!(out.contains("Session-Context-Not-Found"), "{user}: {out}");
    }
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        "User-Name = \"carol\"\nNAS-Identifier = \"no-such-nas\"\n",
    )
    .await;
    assert!(out.contains("NAS-Identification-Mismatch"), "{out}");
    // Another NAS whether or not a session matches the rest (RFC 5176 §3.5; a code review).
    let out = radclient_async(
        listener,
        "disconnect",
        SECRET,
        "User-Name = \"nobody-here\"\nNAS-Identifier = \"no-such-nas\"\n",
    )
    .await;
    assert!(out.contains("NAS-Identification-Mismatch"), "{out}");
    // From the client tied to acme, beta's NAS is not one it may name: another NAS.
    let mut request = Packet::new(Code::DisconnectRequest, 41, [0; 16], SECRET.as_bytes());
    request.push(attr::USER_NAME, b"carol");
    request.push(attr::NAS_IDENTIFIER, b"portal-beta");
    let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    socket
        .send_to(&encode_dynauth_request(&request).unwrap(), listener)
        .await
        .unwrap();
    let mut answer = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = Packet::decode(&answer[..n], SECRET.as_bytes()).unwrap();
    assert_eq!(answer.code(), Code::DisconnectNAK);
    assert_eq!(answer.get_u32(attr::ERROR_CAUSE), Some(403));

    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    app.stop().await;
}

/// The answer carries the request's Proxy-State attributes, unmodified and in order (a proxy
/// routes it back by them); an address attribute that is no address of its kind is NAKed as
/// such (407),
/// acting on nothing; a Disconnect that ends a session is audited with the client's name.
#[tokio::test]
async fn answers_echo_proxy_state_bad_addresses_are_407_and_ends_are_audited() {
    let (radius, app, _dir) = portal_with_listener().await;
    let (listener, _stats) = app.dynauth.clone().unwrap();
    app.browser(client(30)).login("carol", "carol-pass").await;
    let start = radius
        .wait_for_acct(&["status=Start", "ip=127.0.2.30"])
        .await;
    let sid = field(&start, "sid").to_string();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |identifier: u8, attributes: Vec<(u8, Vec<u8>)>| {
        let socket = &socket;
        async move {
            let mut request = Packet::new(
                Code::DisconnectRequest,
                identifier,
                [0; 16],
                SECRET.as_bytes(),
            );
            for (typ, value) in attributes {
                request.push(typ, value);
            }
            let bytes = encode_dynauth_request(&request).unwrap();
            socket.send_to(&bytes, listener).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            Packet::decode(&buf[..n], SECRET.as_bytes()).unwrap()
        }
    };

    let nak = ask(
        1,
        vec![
            (attr::PROXY_STATE, b"first".to_vec()),
            (attr::USER_NAME, b"carol".to_vec()),
            (attr::FRAMED_IP_ADDRESS, vec![127, 0]),
            (attr::PROXY_STATE, b"second".to_vec()),
        ],
    )
    .await;
    assert_eq!(nak.code(), Code::DisconnectNAK);
    assert_eq!(nak.get_u32(attr::ERROR_CAUSE), Some(407));
    assert_eq!(
        nak.get_all(attr::PROXY_STATE),
        vec![b"first".to_vec(), b"second".to_vec()]
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    // The session's IPv4 address in a Framed-IPv6-Address (4 bytes, not 16) names no one.
    let nak = ask(3, vec![(attr::FRAMED_IPV6_ADDRESS, vec![127, 0, 2, 30])]).await;
    assert_eq!(nak.code(), Code::DisconnectNAK);
    assert_eq!(nak.get_u32(attr::ERROR_CAUSE), Some(407));
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    // An empty Acct-Session-Id (RFC 2865: 1-253 octets) beside the session's user: a request
    // not formed as the RFC allows, 404 (black-box tester V's D5: 503, no such session).
    let nak = ask(
        4,
        vec![
            (attr::ACCT_SESSION_ID, Vec::new()),
            (attr::USER_NAME, b"carol".to_vec()),
        ],
    )
    .await;
    assert_eq!(nak.code(), Code::DisconnectNAK);
    assert_eq!(nak.get_u32(attr::ERROR_CAUSE), Some(404));
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);

    let ack = ask(
        2,
        vec![
            (attr::ACCT_SESSION_ID, sid.as_bytes().to_vec()),
            (attr::PROXY_STATE, b"via-proxy".to_vec()),
        ],
    )
    .await;
    assert_eq!(ack.code(), Code::DisconnectACK);
    assert_eq!(ack.get_all(attr::PROXY_STATE), vec![b"via-proxy".to_vec()]);
    radius
        .wait_for_acct(&["status=Stop", &format!("sid={sid}"), "cause=Admin-Reset"])
        .await;
    let audit = app.storage.audit_tail(20).await.unwrap();
    let ended = audit
        .iter()
        .find(|e| e.action == "session.terminate")
        .expect("the end audited");
    assert_eq!(ended.actor, "dynauth:radclient");
    assert_eq!(ended.organization_id.as_deref(), Some("acme"));
    assert!(ended.detail.contains(&sid), "{}", ended.detail);
    app.stop().await;
}

/// A Disconnect-Request that races its session's user pressing Disconnect: acknowledged only
/// when it ended the session (the Stop says Admin-Reset); one the user's Disconnect beat is
/// refused as naming no active session (503; the Stop says User-Request) — never acknowledged
/// for an end it did not make, which the audit log records as refused.
#[tokio::test]
async fn a_disconnect_request_racing_the_users_disconnect_is_acknowledged_only_if_it_ended_the_session(
) {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut settings = with_listener(settings(&db, vec![radius.server_settings("primary", true)]));
    settings.rate_limit.login_per_user = 10_000; // one user, thirty sign-ins
    let app = TestApp::spawn(&settings).await;
    let (listener, _stats) = app.dynauth.clone().unwrap();
    let mut races = tokio::task::JoinSet::new();
    for n in 10..40u8 {
        let browser = app.browser(client(n));
        browser.login("carol", "carol-pass").await;
        let start = radius
            .wait_for_acct(&["status=Start", &format!("ip=127.0.2.{n} ")])
            .await;
        let sid = field(&start, "sid").to_string();
        // The session page's form token, read before: the page may say the session ended.
        let token = browser.form_token("/session").await;
        races.spawn(async move {
            let request = format!("Acct-Session-Id = \"{sid}\"\n");
            // The user's Disconnect a little later each time (radclient takes a while to start),
            // for some to land while the request is being acted on.
            let (answer, _) = tokio::join!(
                radclient_async(listener, "disconnect", SECRET, &request),
                async {
                    tokio::time::sleep(Duration::from_millis(2 * u64::from(n - 10))).await;
                    browser
                        .post_raw("/api/disconnect", "/session", &[("csrf", &token)], &[])
                        .await
                }
            );
            (sid, answer)
        });
    }
    let (mut acked, mut refused) = (0, 0);
    while let Some(race) = races.join_next().await {
        let (sid, answer) = race.unwrap();
        let stop = radius
            .wait_for_acct(&["status=Stop", &format!("sid={sid} ")])
            .await;
        if answer.contains("Received Disconnect-ACK") {
            acked += 1;
            assert_eq!(field(&stop, "cause"), "Admin-Reset", "{answer}");
        } else {
            refused += 1;
            assert!(answer.contains("Received Disconnect-NAK"), "{answer}");
            assert!(answer.contains("Session-Context-Not-Found"), "{answer}");
            assert_eq!(field(&stop, "cause"), "User-Request", "{answer}");
        }
    }
    assert_eq!(acked + refused, 30);
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    app.stop().await;
}
