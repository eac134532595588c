//! Benchmark helper (scripts/bench-sessions.sh): fills a portal database with `count` active
//! access sessions of one organization, their Starts already acknowledged, all due at one
//! deadline. Not a product tool: the organization must exist (run the portal once first).
//!
//!   cargo run --release --example seed_sessions -- DB ORG SERVER COUNT EXPIRES_AT_MS

use radius_portal::{
    access_session::now_ms,
    storage::{Audit, NewAccessSession, Storage},
};
use std::{net::Ipv4Addr, path::PathBuf, sync::Arc};

/// Writes in flight at once (they are committed together).
const CONCURRENCY: usize = 512;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, org, server, count, expires_at] = args.as_slice() else {
        anyhow::bail!("usage: seed_sessions DB ORG SERVER COUNT EXPIRES_AT_MS");
    };
    let count: u32 = count.parse()?;
    let expires_at: i64 = expires_at.parse()?;
    let storage = Storage::open(&PathBuf::from(db)).await?;
    let started_at = now_ms();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let storage = storage.clone();
        let new = NewAccessSession {
            acct_session_id: format!("seed-{started_at}-{i}"),
            organization_id: org.clone(),
            username: format!("load-{i}"),
            // 10.0.0.0/8 from i: one session per client address.
            client_ip: Ipv4Addr::from(0x0a00_0000 + i).to_string(),
            server_index: 0,
            server_name: server.clone(),
            classes: vec![format!("seed-class-{i}").into_bytes()],
            reply_message: None,
            started_at,
            window_ms: expires_at - started_at,
            limit_at: None,
            expires_at,
            interim_interval: None,
            start_claimed_until: None,
            typed_username: None,
            nas: None,
            replaces: None,
            accept_timeouts: None,
            organization_revision: None,
        };
        writes.spawn(async move {
            let opened = storage.open_session(&new).await;
            drop(permit);
            opened
        });
        while let Some(done) = writes.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    // The Starts count as acknowledged, so each session's Stop is first in line.
    loop {
        let now = now_ms();
        let starts = storage.claim_due_outbox(now, now + 60_000, 10_000).await?;
        if starts.is_empty() {
            break;
        }
        let mut marks = tokio::task::JoinSet::new();
        for start in starts {
            let storage = storage.clone();
            marks.spawn(async move { storage.mark_delivered(&start, now, None).await.map(|_| ()) });
        }
        while let Some(done) = marks.join_next().await {
            done??;
        }
    }
    // Durable before this process ends (the marks above were relaxed writes).
    storage
        .audit(&Audit {
            at: now_ms(),
            actor: "bench",
            action: "bench.seeded",
            organization_id: Some(org),
            detail: serde_json::json!({ "sessions": count }),
        })
        .await?;
    println!(
        "seeded {count} sessions in {} ms, due at {expires_at}",
        now_ms() - started_at
    );
    Ok(())
}
