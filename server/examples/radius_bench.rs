//! RADIUS path benchmark (not a test; results go to docs/BENCHMARKS.md):
//!
//! 1. FreeRADIUS's raw Access-Request rate from a plain multiplexed client (the portal's own
//!    `Radius::authenticate`, 64 requests in flight, no persistence).
//! 2. The portal's RADIUS path — Access-Request, session row + outbox in SQLite, Accounting-Start
//!    acknowledged — at 1, 16, 64 and 256 concurrent logins, and its ratio to (1).
//! 3. 64 concurrent logins each followed by a disconnect: the Acct-Delay-Time of the Stops as
//!    FreeRADIUS received them.
//!
//! Each phase also reports the CPU time FreeRADIUS and the portal (this process) spent per
//! operation, and the ceiling of the ratio: the rate (1) and (2) would reach if the portal's
//! part cost nothing, both phases sharing the same cores — (FreeRADIUS + client CPU per raw
//! Access-Request) / (FreeRADIUS CPU per login).
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

/// What one phase measured.
struct Phase {
    per_second: f64,
    /// CPU time per completed operation, µs: FreeRADIUS's and this process's.
    freeradius_us: f64,
    portal_us: f64,
}

/// CPU time so far of FreeRADIUS (`radius_pid`) and of this process without it.
fn cpu(radius_pid: &str) -> (f64, f64) {
    let radius = portal_load::process_cpu(radius_pid).map_or(0.0, |d| d.as_secs_f64());
    let all =
        portal_load::process_cpu(&std::process::id().to_string()).map_or(0.0, |d| d.as_secs_f64());
    (radius, (all - radius).max(0.0))
}

/// [`rate`] with the CPU time FreeRADIUS and this process spent per operation.
async fn phase<F, Fut>(radius_pid: &str, concurrency: u64, work: F) -> Phase
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let (radius_before, own_before) = cpu(radius_pid);
    let (done, per_second) = rate(concurrency, work).await;
    let (radius_after, own_after) = cpu(radius_pid);
    let per_op = |seconds: f64| seconds * 1e6 / done.max(1) as f64;
    Phase {
        per_second,
        freeradius_us: per_op(radius_after - radius_before),
        portal_us: per_op(own_after - own_before),
    }
}

/// Runs `work(n)` on `concurrency` workers for SECONDS; returns the completed operations and
/// their rate per second.
async fn rate<F, Fut>(concurrency: u64, work: F) -> (u64, f64)
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
    let done = done.load(Ordering::Relaxed);
    (done, done as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let radius_server = FreeRadius::start().await;
    let radius_pid = radius_server.pid().to_string();
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius_server.server_settings("primary", true)]);
    config.organizations[0].login_timeout = Duration::from_secs(10);
    let organizations = Arc::new(Organizations::from_settings(&config.organizations).unwrap());
    let org = organizations.get("acme").unwrap();

    // 1. Raw rate.
    let radius = Radius::new(RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap());
    let raw = {
        let (radius, org) = (radius.clone(), org.clone());
        phase(&radius_pid, 64, move |n| {
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
                        radius_portal::radius::always_go_on,
                    )
                    .await;
                matches!(outcome, Ok(AuthOutcome::Accept { .. }))
            }
        })
        .await
    };

    // 2. The portal's RADIUS path; then (3) logins with a disconnect each.
    let storage = Storage::open(&db).await.unwrap();
    radius_portal::organizations::seed(
        &storage,
        &config.organizations,
        radius_portal::organizations::ServerMoves::Refused,
    )
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
    for (concurrency, disconnect) in [
        (1u64, false),
        (16, false),
        (64, false),
        (256, false),
        (64, true),
    ] {
        let base = offset.fetch_add(1_000_000, Ordering::Relaxed);
        let sessions = sessions.clone();
        let measured = phase(&radius_pid, concurrency, move |n| {
            let sessions = sessions.clone();
            async move {
                match sessions
                    .login("acme", "carol", "carol-pass", address(base + n))
                    .await
                {
                    Ok(session) if disconnect => sessions.disconnect(session.id).await.is_ok(),
                    Ok(_) => true,
                    Err(_) => false,
                }
            }
        })
        .await;
        rows.push((concurrency, disconnect, measured));
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

    println!("| measure | concurrency | per second | ratio to raw | FreeRADIUS CPU / op | portal CPU / op | ceiling of the ratio |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| raw Access-Request (FreeRADIUS, multiplexed client) | 64 | {:.0} | 1.00 | {:.0} µs | {:.0} µs (client) | |",
        raw.per_second, raw.freeradius_us, raw.portal_us
    );
    for (concurrency, disconnect, p) in rows {
        let what = if disconnect {
            "portal RADIUS path (Access-Request + session + Start acknowledged), then Stop"
        } else {
            "portal RADIUS path (Access-Request + session + Start acknowledged)"
        };
        println!(
            "| {what} | {concurrency} | {:.0} | {:.2} | {:.0} µs | {:.0} µs | {:.2} |",
            p.per_second,
            p.per_second / raw.per_second,
            p.freeradius_us,
            p.portal_us,
            (raw.freeradius_us + raw.portal_us) / p.freeradius_us.max(1.0),
        );
    }
    println!();
    println!("Acct-Delay-Time of the Stops (seconds → count): {delays:?}");
}
