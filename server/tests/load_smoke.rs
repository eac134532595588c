//! The journey load generator against the real server and FreeRADIUS, briefly (the long runs
//! are benchmarks, docs/BENCHMARKS.md): 32 virtual users, each its own client address through
//! a trusted proxy, sign in, look, disconnect, again and again — no journey fails, and every
//! Accounting-Start FreeRADIUS received has its Stop, with Acct-Delay-Time 0 where delivered
//! at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{field, settings, temp_db, wait_until, FreeRadius, TestApp};
use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeys_under_load_all_succeed_and_every_start_gets_its_stop() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.rate_limit.login_per_ip = 1_000_000;
    config.rate_limit.login_per_user = 1_000_000;
    let app = TestApp::spawn(&config).await;

    let report = portal_load::run(portal_load::Config {
        origins: vec![format!("http://{}", app.addr)],
        prefix: String::new(),
        users: 32,
        duration: Duration::from_secs(3),
        username: "load-{n}".into(),
        password: "load-pass".into(),
        first_address: Ipv4Addr::new(10, 100, 0, 1),
        processes: Vec::new(),
        only_get: None,
    })
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(report.journeys >= 32, "{report}");

    // Every session the load opened was closed: a Stop for each Start, for the right user and
    // the virtual user's own address.
    wait_until("a Stop for every Start", || async {
        let lines = radius.acct_lines();
        let starts = lines.iter().filter(|l| l.contains("status=Start")).count();
        let stops = lines.iter().filter(|l| l.contains("status=Stop")).count();
        starts as u64 >= report.journeys && starts == stops
    })
    .await;
    let lines = radius.acct_lines();
    let starts: HashSet<&str> = lines
        .iter()
        .filter(|l| l.contains("status=Start"))
        .map(|l| field(l, "sid"))
        .collect();
    let stops: HashSet<&str> = lines
        .iter()
        .filter(|l| l.contains("status=Stop"))
        .map(|l| field(l, "sid"))
        .collect();
    assert_eq!(starts, stops, "each Start has exactly its Stop");
    for start in lines.iter().filter(|l| l.contains("status=Start")) {
        let user: u32 = field(start, "user")
            .strip_prefix("load-")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            field(start, "ip"),
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + user - 1).to_string(),
            "{start}"
        );
    }
    app.stop().await;
}
