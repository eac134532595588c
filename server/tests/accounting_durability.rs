//! Accounting is durable: a Start that is not acknowledged fails the login (and the session is
//! ended again, both packets kept queued); a Stop queued while the RADIUS server is down survives
//! a portal restart and is delivered once the server is back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{field, settings, temp_db, wait_until, FreeRadius, TestApp};
use std::{net::Ipv4Addr, time::Duration};

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

#[tokio::test]
async fn an_unacknowledged_start_fails_the_login_and_keeps_start_and_stop_queued() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut server = radius.server_settings("primary", true);
    // Authentication works, accounting goes nowhere.
    server.acct_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    server.timeout = Duration::from_millis(200);
    server.retries = 1;
    let mut config = settings(&db, vec![server]);
    config.organizations[0].login_timeout = Duration::from_secs(2);
    let app = TestApp::spawn(&config).await;

    let page = app.browser(CLIENT).login("carol", "carol-pass").await;

    assert_eq!(page.path, "/", "the login does not succeed");
    assert!(page.body.contains("cannot be reached"), "{}", page.body);
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
