//! RADIUS path benchmark (not a test; results go to docs/BENCHMARKS.md):
//!
//! 1. FreeRADIUS's raw Access-Request rate from a plain multiplexed client (the portal's own
//!    `Radius::authenticate`, 64 requests in flight, no persistence).
//! 2. The portal's RADIUS path — Access-Request, session row + outbox in SQLite, Accounting-Start
//!    acknowledged — at 1, 16 and 64 concurrent logins, and its ratio to (1).
//! 3. Under the 64-login load every session is also disconnected: the Acct-Delay-Time of the Stops
//!    as FreeRADIUS received them.
//!
//! Run: `source scripts/env.sh && cargo run --release -p radius-portal --example radius_bench`
//! (needs FreeRADIUS: `scripts/setup.sh --test`). Each phase runs `SECONDS` seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{field, settings, temp_db, FreeRadius};
use radius_portal::{
    access_session::{events::SessionEvents, AccessSessions},
    accounting::Accounting,
    organizations::Organizations,
    radius::{client::RadiusClient, AuthOutcome, Radius},
    storage::Storage,
};
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SECONDS: u64 = 5;

/// A distinct client address per login (one session per client IP).
fn address(n: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

/// Runs `work(n)` on `concurrency` workers for SECONDS; returns completed operations per second.
async fn rate<F, Fut>(concurrency: u64, work: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(1));
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (done, next, work) = (done.clone(), next.clone(), work.clone());
        workers.spawn(async move {
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if work(n).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let radius_server = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius_server.server_settings("primary", true)]);
    config.organizations[0].login_timeout = Duration::from_secs(10);
    let organizations = Arc::new(Organizations::from_settings(&config.organizations).unwrap());
    let org = organizations.get("acme").unwrap();

    // 1. Raw rate.
    let radius = Radius::new(RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap());
    let raw = {
        let (radius, org) = (radius.clone(), org.clone());
        rate(64, move |n| {
            let (radius, org) = (radius.clone(), org.clone());
            async move {
                let outcome = radius
                    .authenticate(
                        &org.servers,
                        &org.nas,
                        "carol",
                        "carol-pass",
                        address(n),
                        Instant::now() + Duration::from_secs(5),
                    )
                    .await;
                matches!(outcome, Ok(AuthOutcome::Accept { .. }))
            }
        })
        .await
    };

    // 2. The portal's RADIUS path.
    let storage = Storage::open(&db).await.unwrap();
    radius_portal::organizations::seed(&storage, &config.organizations)
        .await
        .unwrap();
    let accounting = Accounting::new(storage.clone(), radius.clone(), organizations.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(accounting.clone().run(shutdown.clone()));
    let sessions = AccessSessions::new(
        storage.clone(),
        organizations.clone(),
        radius.clone(),
        accounting,
        radius_portal::access_session::expiry::ExpiryWake::default(),
        SessionEvents::default(),
    );
    let offset = Arc::new(AtomicU64::new(0));
    let mut rows = Vec::new();
    for concurrency in [1u64, 16, 64] {
        let base = offset.fetch_add(1_000_000, Ordering::Relaxed);
        let disconnect = concurrency == 64;
        let sessions = sessions.clone();
        let per_second = rate(concurrency, move |n| {
            let sessions = sessions.clone();
            async move {
                match sessions
                    .login("acme", "carol", "carol-pass", address(base + n))
                    .await
                {
                    Ok(session) => {
                        if disconnect {
                            sessions.disconnect(session.id).await.is_ok()
                        } else {
                            true
                        }
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        rows.push((concurrency, per_second));
    }

    // 3. Stops under load: wait until the backlog drains, then read FreeRADIUS's log.
    let drained = Instant::now() + Duration::from_secs(60);
    while storage.outbox_backlog().await.unwrap() > 0 && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let mut delays = std::collections::BTreeMap::<String, u64>::new();
    for line in radius_server.acct_lines() {
        if line.contains("status=Stop") {
            *delays.entry(field(&line, "delay").to_string()).or_default() += 1;
        }
    }

    println!("| measure | concurrency | per second | ratio to raw |");
    println!("|---|---|---|---|");
    println!("| raw Access-Request (FreeRADIUS, multiplexed client) | 64 | {raw:.0} | 1.00 |");
    for (concurrency, per_second) in rows {
        let what = if concurrency == 64 {
            "portal RADIUS path (Access-Request + session + Start acknowledged), then Stop"
        } else {
            "portal RADIUS path (Access-Request + session + Start acknowledged)"
        };
        println!(
            "| {what} | {concurrency} | {per_second:.0} | {:.2} |",
            per_second / raw
        );
    }
    println!();
    println!("Acct-Delay-Time of the Stops (seconds → count): {delays:?}");
}
