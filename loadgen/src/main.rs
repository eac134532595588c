//! `portal-load`: runs the journey load against a running portal and prints the report (see
//! the library's documentation and docs/BENCHMARKS.md).

use clap::Parser;
use std::{net::Ipv4Addr, time::Duration};

/// Journey load generator for radius-portal.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The portal's origin (plain HTTP); it must list 127.0.0.1 in `trusted_proxies`. Repeat
    /// it for several replicas: users are spread over them round robin.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: Vec<String>,
    /// Path prefix of an organization's portal (`/o/beta`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Concurrent virtual users.
    #[arg(long, default_value_t = 16)]
    users: u32,
    /// How long to start journeys (`10s`, `1m`); those under way then finish (each request
    /// waits at most 30 s), so a run against a slow portal lasts longer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Username; `{n}` becomes the user's number.
    #[arg(long, default_value = "load-{n}")]
    username: String,
    /// Password; `{n}` becomes the user's number.
    #[arg(long, default_value = "load-pass")]
    password: String,
    /// Client address of user 1 (sent in X-Forwarded-For; the others follow it).
    #[arg(long, default_value = "10.100.0.1")]
    first_address: Ipv4Addr,
    /// A process whose CPU is reported per journey: `label=pid` (repeatable).
    #[arg(long = "cpu", value_parser = label_pid)]
    processes: Vec<(String, u32)>,
    /// Only GET this path (after the prefix) over and over, each answer counted as a journey:
    /// the cost of one page or endpoint (`/`, `/healthz`).
    #[arg(long)]
    get: Option<String>,
    /// Exit with status 1 if any journey failed.
    #[arg(long)]
    strict: bool,
}

fn label_pid(text: &str) -> Result<(String, u32), String> {
    let (label, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not label=pid"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("`{pid}` is not a process id"))?;
    Ok((label.to_string(), pid))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = portal_load::run(portal_load::Config {
        origins: args.url,
        prefix: args.prefix,
        users: args.users,
        duration: args.duration,
        username: args.username,
        password: args.password,
        first_address: args.first_address,
        processes: args.processes,
        only_get: args.get,
    })
    .await?;
    // A reader that stopped reading (`| head -1`) ends the report, not the program with a
    // panic.
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "{report}");
    }
    if args.strict && report.failed() > 0 {
        std::process::exit(1);
    }
    Ok(())
}
