//! kill -9 under load, in a test binary of its own (cargo runs test binaries one after
//! another, so the load never slows another test's RADIUS exchanges): sixteen browsers sign in
//! and out as fast as they can, the portal is killed with SIGKILL and started again, and every
//! session must then have its Start and its Stop at the RADIUS server. The long version is
//! `scripts/bench-kill.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{field, wait_for, wait_until, FreeRadius, PortalProcess};
use std::{net::Ipv4Addr, time::Duration};

/// The form token on `path`'s page, if it answered with one.
async fn form_token(http: &reqwest::Client, base: &str, path: &str) -> Option<String> {
    let body = http
        .get(format!("{base}{path}"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let marker = "name=\"csrf\" value=\"";
    let start = body.find(marker)? + marker.len();
    Some(body[start..].split('"').next()?.to_string())
}

/// One journey: sign in as `user`, then Disconnect. Errors (a slow answer, the portal killed)
/// end the journey, not the browser.
async fn journey(http: &reqwest::Client, base: &str, user: &str) -> Option<()> {
    let token = form_token(http, base, "/").await?;
    let login = [
        ("username", user),
        ("password", "load-pass"),
        ("csrf", &token),
    ];
    http.post(format!("{base}/api/login"))
        .header("origin", base)
        .header("accept", "text/html")
        .header("referer", format!("{base}/"))
        .form(&login)
        .send()
        .await
        .ok()?;
    let token = form_token(http, base, "/session").await?;
    http.post(format!("{base}/api/disconnect"))
        .header("origin", base)
        .header("accept", "text/html")
        .header("referer", format!("{base}/session"))
        .form(&[("csrf", token)])
        .send()
        .await
        .ok()?;
    Some(())
}

/// kill -9 while sixteen browsers sign in and out as fast as they can: after a restart, and
/// once the sessions the kill left open have run their short window, every session the
/// database knows has its Start and its Stop at the RADIUS server (or neither: a Start that
/// never went out is rolled back with its session), and no Stop names a session it does not
/// know. (Packets acknowledged just before the kill may arrive twice: delivery is at least
/// once.) The long version is `scripts/bench-kill.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_leaves_every_session_with_its_start_and_stop() {
    let radius = FreeRadius::start().await;
    let (_dir, db, base, config) = common::process_config(
        "[radius]\nbind = \"127.0.0.1\"\n\
         [rate_limit]\nlogin_per_ip = 1000000\nlogin_per_user = 1000000\n",
        "default_window = \"3s\"\n",
        (radius.strict_port, radius.acct_port),
        "",
    );
    let portal = PortalProcess::start(&config, &base).await;
    let users: Vec<_> = (1..=16u8)
        .map(|n| {
            let browser = common::Browser {
                http: reqwest::Client::builder()
                    .cookie_store(true)
                    .timeout(Duration::from_secs(5))
                    .local_address(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 9, n)))
                    .build()
                    .unwrap(),
                base: base.clone(),
            };
            tokio::spawn(async move {
                loop {
                    if journey(&browser.http, &browser.base, &format!("load-{n}"))
                        .await
                        .is_none()
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    wait_for(
        "journeys under way (30 sessions' Stops at the server)",
        Duration::from_secs(60),
        || {
            let ended: std::collections::HashSet<String> = radius
                .acct_lines()
                .iter()
                .filter(|l| field(l, "status") == "Stop")
                .map(|l| field(l, "sid").to_string())
                .collect();
            (ended.len() >= 30).then_some(())
        },
    )
    .await;
    portal.kill_9();
    for user in users {
        user.abort();
    }

    let _portal = PortalProcess::start(&config, &base).await;
    let storage = radius_portal::storage::Storage::open(&db).await.unwrap();
    wait_until("every session ended and every packet sent", || async {
        storage.active_sessions().await.unwrap() == 0
            && storage.outbox_backlog().await.unwrap() == 0
    })
    .await;
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let sessions: Vec<String> = sqlx::query_scalar("SELECT acct_session_id FROM access_sessions")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(sessions.len() >= 30, "{} sessions", sessions.len());
    let lines = radius.acct_lines();
    let count = |sid: &str, status: &str| {
        lines
            .iter()
            .filter(|l| field(l, "sid") == sid && field(l, "status") == status)
            .count()
    };
    for sid in &sessions {
        let (starts, stops) = (count(sid, "Start"), count(sid, "Stop"));
        assert_eq!(
            starts > 0,
            stops > 0,
            "session {sid}: {starts} Starts, {stops} Stops"
        );
    }
    let known: std::collections::HashSet<&str> = sessions.iter().map(String::as_str).collect();
    for line in lines.iter().filter(|l| field(l, "status") == "Stop") {
        assert!(
            known.contains(field(line, "sid")),
            "a Stop for no session: {line}"
        );
    }
}
