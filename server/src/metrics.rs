//! Prometheus metrics, served on their own listener (`[metrics] listen`, e.g. 127.0.0.1:9464),
//! never on the users' port: they name organizations and servers.
//!
//! Counters and histograms are recorded where things happen (logins in `portal_backend`,
//! RADIUS exchanges in `radius`, expiries in `access_session::expiry`, HTTP requests in a
//! middleware); gauges that describe state (sessions, outbox, breakers, background tasks) are
//! read when scraped, so they are never stale. Each [`Metrics`] has its own registry (several
//! portals in one test process do not mix). Label values are bounded: organizations are known
//! ids or `unknown`, routes are the router's templates or `other`.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::{sync::Arc, time::Duration};

/// The portal's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    logins: IntCounterVec,
    radius_seconds: HistogramVec,
    radius_timeouts: IntCounterVec,
    radius_unreachable: IntCounterVec,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    expiry_lag: Histogram,
    active_sessions: IntGaugeVec,
    outbox_backlog: IntGauge,
    outbox_oldest: Gauge,
    dead_letters: IntGauge,
    dead_stops: IntGauge,
    dead_stops_last_day: IntGauge,
    late_stops: IntCounter,
    breaker: IntGaugeVec,
    tasks_down: IntGauge,
    task_crashes: IntCounterVec,
    sessions_overdue: IntGauge,
    oldest_overdue: Gauge,
    database_up: IntGauge,
    database_commits: IntCounterVec,
    /// A vector without labels: no series at all until SQLite's engine reports (PostgreSQL
    /// has no such count, and a constant 0 there would read as "nothing written").
    database_writes: IntCounterVec,
    log_write_failures: IntCounterVec,
    dynauth_requests: IntCounterVec,
    /// Serializes scrapes (see `render`).
    render_lock: std::sync::Mutex<()>,
}

/// How far back a dead Stop counts in [`Snapshot::dead_stops_last_day`].
pub const DEAD_STOPS_RECENT_MS: i64 = 24 * 3600 * 1000;

/// State read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The database could not be read for this scrape: the gauges read from it keep their
    /// last values and `portal_database_up` is 0 (everything else is still served).
    pub database_unreadable: bool,
    /// The database takes no writes now (SQLite: a hung disk, its writer stalled or stopped; a
    /// full disk; its files gone), as `/readyz` says: `portal_database_up` is 0, though what
    /// could be read is shown (black-box tester W: a hung disk whose reads still came back
    /// read as up while every request waited).
    pub database_unwritable: bool,
    /// Active sessions per organization id.
    pub active_sessions: Vec<(String, i64)>,
    /// Undelivered accounting rows.
    pub outbox_backlog: i64,
    /// Age of the oldest undelivered row.
    pub outbox_oldest: Duration,
    /// Dead-lettered accounting rows kept.
    pub dead_letters: i64,
    /// Of them, Stops (copies too) of sessions whose Start may have reached a server: an
    /// identity a server — and the firewall it feeds — may keep.
    pub dead_stops: i64,
    /// Of those, the ones given up within the last day ([`DEAD_STOPS_RECENT_MS`]): what to
    /// alert on — it only grows with a new dead Stop, never with pruning (a gauge of every
    /// dead Stop kept drops when retention deletes old ones, which Prometheus' `increase()`
    /// takes for a counter reset: a false page a retention period after every real one, the
    /// storage review's F6 of session 82).
    pub dead_stops_last_day: i64,
    /// Active sessions past their end by more than [`OVERDUE_AFTER_MS`]: expiry behind or
    /// failing (each an identity kept after its time).
    pub sessions_overdue: i64,
    /// How far past its end the oldest of them is.
    pub oldest_overdue: Duration,
    /// Breaker per server address (auth and acct ports apart): 0 closed, 1 open, 2 half-open.
    pub breakers: Vec<(String, i64)>,
    /// Background tasks restarting now.
    pub tasks_down: i64,
    /// Crashes so far of each supervised background task (0 for one that has not crashed).
    pub task_crashes: Vec<(String, u64)>,
    /// What the embedded database has committed (SQLite; none on PostgreSQL, whose own
    /// statistics count its transactions).
    pub database_commits: Option<DatabaseCommits>,
    /// The Dynamic Authorization listener's counts (None: it does not run).
    pub dynauth: Option<DynAuthCounts>,
}

/// What the Dynamic Authorization listener has done since start-up.
#[derive(Clone, Copy, Debug, Default)]
pub struct DynAuthCounts {
    /// ACKs sent (the request was carried out).
    pub acked: u64,
    /// NAKs sent (refused, with an Error-Cause).
    pub naked: u64,
    /// Requests dropped without an answer (unknown client, wrong secret, replay, malformed).
    pub dropped: u64,
    /// Retransmissions answered from the cache.
    pub duplicates: u64,
}

/// Transactions and writes the SQLite engine has committed since it was opened (the
/// benchmarks count commits and fsyncs per journey with them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatabaseCommits {
    /// Transactions committed under `synchronous = FULL` (a durable write was in them: an
    /// fsync of the WAL each, when they wrote anything).
    pub full: u64,
    /// Transactions committed under `NORMAL` (relaxed writes only: no fsync of their own).
    pub normal: u64,
    /// Writes stored by them (a transaction commits one write or a batch; a write that
    /// failed and was rolled back alone is not counted).
    pub writes: u64,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are constants below and registered once per registry: a failure is a programming
    // error that the unit test catches.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

/// How far past its end an active session must be to count as overdue: expiry stops a due
/// session within milliseconds (10,000 due in one second within 2 s), so one this late is
/// expiry behind or failing.
pub const OVERDUE_AFTER_MS: i64 = 5_000;

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name)),
    )
}

fn unreachable_metric(name: &str) -> ! {
    panic!("metric {name} has an invalid definition")
}

/// Latency buckets (seconds) for RADIUS exchanges and HTTP requests.
const LATENCY: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let logins = counter(
            &r,
            "portal_logins_total",
            "Sign-in attempts by organization and outcome (Accepted; Resubmitted: the same sign-in sent again, answered with its session or with the refusal it got while the second waited; or the error's kind: Rejected, ServersUnavailable, OrganizationDisabled, RateLimited, InvalidInput, …)",
            &["organization", "outcome"],
        );
        let radius_seconds = histogram(
            &r,
            "portal_radius_request_seconds",
            "RADIUS exchanges (with retransmissions) by server (name and address: names are per organization), port and result",
            &["server", "address", "port", "result"],
            LATENCY.to_vec(),
        );
        let radius_timeouts = counter(
            &r,
            "portal_radius_timeouts_total",
            "RADIUS exchanges that got no valid answer in time, by server (name and address) and port",
            &["server", "address", "port"],
        );
        let radius_unreachable = counter(
            &r,
            "portal_radius_unreachable_total",
            "RADIUS exchanges ended by an ICMP destination unreachable (nothing listens at the port, or no route), by server (name and address) and port",
            &["server", "address", "port"],
        );
        let http_requests = counter(
            &r,
            "portal_http_requests_total",
            "HTTP requests by route and status",
            &["route", "status"],
        );
        let http_seconds = histogram(
            &r,
            "portal_http_request_seconds",
            "HTTP time to the response head by route",
            &["route"],
            LATENCY.to_vec(),
        );
        let expiry_lag = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "portal_expiry_lag_seconds",
                    "How late expired sessions were stopped after their deadline",
                )
                .buckets(vec![0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 30.0, 300.0]),
            )
            .unwrap_or_else(|_| unreachable_metric("portal_expiry_lag_seconds")),
        );
        let active_sessions = gauge_vec(
            &r,
            "portal_active_sessions",
            "Open access sessions by organization",
            &["organization"],
        );
        let outbox_backlog = int_gauge(
            &r,
            "portal_accounting_backlog",
            "Accounting-Requests not yet acknowledged",
        );
        let outbox_oldest = register(
            &r,
            Gauge::new(
                "portal_accounting_oldest_seconds",
                "Age of the oldest Accounting-Request not yet acknowledged",
            )
            .unwrap_or_else(|_| unreachable_metric("portal_accounting_oldest_seconds")),
        );
        let dead_letters = int_gauge(
            &r,
            "portal_accounting_dead_letters",
            "Accounting-Requests given up (kept for `accounting dead-letters`)",
        );
        let dead_stops = int_gauge(
            &r,
            "portal_accounting_dead_stops",
            "Accounting-Stops given up whose session's Start may have reached a server (an identity it may keep)",
        );
        let dead_stops_last_day = int_gauge(
            &r,
            "portal_accounting_dead_stops_last_day",
            "Accounting-Stops given up within the last day whose session's Start may have reached a server (alert when above 0)",
        );
        let late_stops = register(
            &r,
            IntCounter::new(
                "portal_accounting_late_stops_total",
                "Accounting-Stops acknowledged after the Start of a newer session at their address (that session then sent an Interim-Update)",
            )
            .unwrap_or_else(|_| unreachable_metric("portal_accounting_late_stops_total")),
        );
        let breaker = gauge_vec(
            &r,
            "portal_radius_breaker_state",
            "Circuit breaker per server address (auth and acct ports apart): 0 closed, 1 open, 2 half-open; each organization has its own breaker at a shared address, and this is the least healthy of them",
            &["address"],
        );
        let tasks_down = int_gauge(
            &r,
            "portal_background_tasks_down",
            "Background tasks restarting after a failure",
        );
        let sessions_overdue = int_gauge(
            &r,
            "portal_sessions_overdue",
            "Active sessions past their end by more than 5 s: expiry behind or failing (alert on it)",
        );
        let oldest_overdue = register(
            &r,
            Gauge::new(
                "portal_sessions_oldest_overdue_seconds",
                "How far past its end the oldest overdue active session is (0: none)",
            )
            .unwrap_or_else(|_| unreachable_metric("portal_sessions_oldest_overdue_seconds")),
        );
        let task_crashes = counter(
            &r,
            "portal_background_task_crashes_total",
            "Crashes of each background task since the start (each restarted a second later)",
            &["task"],
        );
        let database_up = int_gauge(
            &r,
            "portal_database_up",
            "1 when the database answered this scrape's reads and takes writes; 0 when it could not be read (its gauges then keep their last values) or takes no writes (a hung or full disk)",
        );
        let database_commits = counter(
            &r,
            "portal_database_commits_total",
            "SQLite transactions committed, by synchronous mode: full (an fsync each) or normal (none)",
            &["synchronous"],
        );
        let database_writes = counter(
            &r,
            "portal_database_writes_total",
            "SQLite writes committed (one transaction commits one write or a batch of them)",
            &[],
        );
        let log_write_failures = counter(
            &r,
            "portal_log_write_failures_total",
            "Log lines that could not be written (stderr a full disk or a closed pipe, or too many waiting for a log nobody reads): dropped, the portal goes on",
            &[],
        );
        let dynauth_requests = counter(
            &r,
            "portal_dynauth_requests_total",
            "Dynamic Authorization (RFC 5176) requests by outcome: ack, nak, dropped (no answer: unknown client, wrong secret, replay, malformed), duplicate (a retransmission answered from the cache)",
            &["outcome"],
        );
        Metrics(Arc::new(Inner {
            registry: r,
            logins,
            radius_seconds,
            radius_timeouts,
            radius_unreachable,
            http_requests,
            http_seconds,
            expiry_lag,
            active_sessions,
            outbox_backlog,
            outbox_oldest,
            dead_letters,
            dead_stops,
            dead_stops_last_day,
            late_stops,
            breaker,
            tasks_down,
            task_crashes,
            sessions_overdue,
            oldest_overdue,
            database_up,
            database_commits,
            database_writes,
            log_write_failures,
            dynauth_requests,
            render_lock: std::sync::Mutex::new(()),
        }))
    }

    /// A sign-in attempt's outcome.
    pub fn login(&self, organization: &str, outcome: &str) {
        self.0
            .logins
            .with_label_values(&[organization, outcome])
            .inc();
    }

    /// One RADIUS exchange with `server` (its name) at `address`; `result` is `answered`,
    /// `timeout` or `error`.
    pub fn radius_exchange(
        &self,
        server: &str,
        address: &str,
        port: &str,
        result: &str,
        took: Duration,
    ) {
        self.0
            .radius_seconds
            .with_label_values(&[server, address, port, result])
            .observe(took.as_secs_f64());
        let failures = match result {
            "timeout" => &self.0.radius_timeouts,
            "unreachable" => &self.0.radius_unreachable,
            _ => return,
        };
        failures.with_label_values(&[server, address, port]).inc();
    }

    /// One HTTP request.
    pub fn http_request(&self, route: &str, status: axum::http::StatusCode, took: Duration) {
        self.0
            .http_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.0
            .http_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// A configured server (its name, auth and acct addresses): its timeout and unreachable
    /// counters exist (at 0) before its first failure, so an alert on them sees a series from
    /// the start.
    pub fn known_server(&self, server: &str, auth: &str, acct: &str) {
        for (address, port) in [(auth, "auth"), (acct, "acct")] {
            for failures in [&self.0.radius_timeouts, &self.0.radius_unreachable] {
                failures.with_label_values(&[server, address, port]);
            }
        }
    }

    /// A Stop was acknowledged after the Start of a newer session at its address.
    pub fn late_stop(&self) {
        self.0.late_stops.inc();
    }

    /// A session stopped `lag` after its deadline.
    pub fn expired(&self, lag: Duration) {
        self.0.expiry_lag.observe(lag.as_secs_f64());
    }

    /// The text exposition of every metric, with the state gauges set from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let inner = &self.0;
        // Two scrapes at once must not interleave one's reset with the other's gather.
        let _one_at_a_time = inner.render_lock.lock().unwrap_or_else(|p| p.into_inner());
        inner.database_up.set(i64::from(
            !snapshot.database_unreadable && !snapshot.database_unwritable,
        ));
        if !snapshot.database_unreadable {
            inner.active_sessions.reset();
            for (organization, count) in &snapshot.active_sessions {
                inner
                    .active_sessions
                    .with_label_values(&[organization])
                    .set(*count);
            }
            inner.outbox_backlog.set(snapshot.outbox_backlog);
            inner
                .outbox_oldest
                .set(snapshot.outbox_oldest.as_secs_f64());
            inner.dead_letters.set(snapshot.dead_letters);
            inner.dead_stops.set(snapshot.dead_stops);
            inner.dead_stops_last_day.set(snapshot.dead_stops_last_day);
            inner.sessions_overdue.set(snapshot.sessions_overdue);
            inner
                .oldest_overdue
                .set(snapshot.oldest_overdue.as_secs_f64());
        }
        inner.breaker.reset();
        for (address, state) in &snapshot.breakers {
            inner.breaker.with_label_values(&[address]).set(*state);
        }
        inner.tasks_down.set(snapshot.tasks_down);
        for (task, total) in &snapshot.task_crashes {
            let counter = inner.task_crashes.with_label_values(&[task]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        if let Some(commits) = snapshot.database_commits {
            // Counted by the engine; brought up to its totals here.
            for (counter, total) in [
                (
                    inner.database_commits.with_label_values(&["full"]),
                    commits.full,
                ),
                (
                    inner.database_commits.with_label_values(&["normal"]),
                    commits.normal,
                ),
                (
                    inner.database_writes.with_label_values(&[] as &[&str]),
                    commits.writes,
                ),
            ] {
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let lost = crate::telemetry::LOG_WRITE_FAILURES.load(std::sync::atomic::Ordering::Relaxed);
        let counter = inner.log_write_failures.with_label_values(&[] as &[&str]);
        counter.inc_by(lost.saturating_sub(counter.get()));
        if let Some(counts) = snapshot.dynauth {
            for (outcome, total) in [
                ("ack", counts.acked),
                ("nak", counts.naked),
                ("dropped", counts.dropped),
                ("duplicate", counts.duplicates),
            ] {
                let counter = inner.dynauth_requests.with_label_values(&[outcome]);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&inner.registry.gather(), &mut text) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_and_rendered() {
        let m = Metrics::new();
        m.login("acme", "accepted");
        m.login("acme", "rejected");
        m.radius_exchange(
            "primary",
            "127.0.0.1:1812",
            "auth",
            "answered",
            Duration::from_millis(2),
        );
        m.radius_exchange(
            "primary",
            "127.0.0.1:1813",
            "acct",
            "timeout",
            Duration::from_secs(3),
        );
        m.radius_exchange(
            "backup",
            "127.0.0.2:1812",
            "auth",
            "unreachable",
            Duration::from_micros(80),
        );
        m.http_request(
            "/api/login",
            axum::http::StatusCode::SEE_OTHER,
            Duration::from_millis(4),
        );
        m.expired(Duration::from_millis(20));
        m.late_stop();
        let text = m.render(&Snapshot {
            database_unreadable: false,
            database_unwritable: false,
            active_sessions: vec![("acme".into(), 3)],
            outbox_backlog: 2,
            outbox_oldest: Duration::from_secs(7),
            dead_letters: 1,
            dead_stops: 1,
            dead_stops_last_day: 1,
            breakers: vec![("127.0.0.1:1812".into(), 1)],
            sessions_overdue: 2,
            oldest_overdue: Duration::from_secs(9),
            tasks_down: 0,
            task_crashes: vec![("accounting".into(), 2)],
            database_commits: Some(DatabaseCommits {
                full: 5,
                normal: 2,
                writes: 9,
            }),
            dynauth: Some(DynAuthCounts {
                acked: 3,
                naked: 1,
                dropped: 4,
                duplicates: 0,
            }),
        });
        for expected in [
            "portal_logins_total{organization=\"acme\",outcome=\"accepted\"} 1",
            "portal_radius_timeouts_total{address=\"127.0.0.1:1813\",port=\"acct\",server=\"primary\"} 1",
            "portal_radius_unreachable_total{address=\"127.0.0.2:1812\",port=\"auth\",server=\"backup\"} 1",
            "portal_radius_request_seconds_count{address=\"127.0.0.1:1812\",port=\"auth\",result=\"answered\",server=\"primary\"} 1",
            "portal_http_requests_total{route=\"/api/login\",status=\"303\"} 1",
            "portal_expiry_lag_seconds_count 1",
            "portal_active_sessions{organization=\"acme\"} 3",
            "portal_accounting_backlog 2",
            "portal_accounting_oldest_seconds 7",
            "portal_accounting_dead_letters 1",
            "portal_accounting_dead_stops 1",
            "portal_accounting_dead_stops_last_day 1",
            "portal_accounting_late_stops_total 1",
            "portal_radius_breaker_state{address=\"127.0.0.1:1812\"} 1",
            "portal_sessions_overdue 2",
            "portal_sessions_oldest_overdue_seconds 9",
            "portal_background_tasks_down 0",
            "portal_background_task_crashes_total{task=\"accounting\"} 2",
            "portal_database_commits_total{synchronous=\"full\"} 5",
            "portal_database_commits_total{synchronous=\"normal\"} 2",
            "portal_database_writes_total 9",
            "portal_dynauth_requests_total{outcome=\"ack\"} 3",
            "portal_dynauth_requests_total{outcome=\"dropped\"} 4",
            "portal_dynauth_requests_total{outcome=\"duplicate\"} 0",
            "portal_database_up 1",
        ] {
            assert!(text.contains(expected), "{expected} missing in:\n{text}");
        }
        // The database unreadable: the rest is served, its gauges keep their last values.
        let text = m.render(&Snapshot {
            database_unreadable: true,
            ..Snapshot::default()
        });
        for expected in [
            "portal_database_up 0",
            "portal_active_sessions{organization=\"acme\"} 3",
            "portal_accounting_backlog 2",
            "portal_logins_total{organization=\"acme\",outcome=\"accepted\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} missing in:\n{text}");
        }
        // Read, but taking no writes (a hung disk): down, its gauges as read.
        let text = m.render(&Snapshot {
            database_unwritable: true,
            outbox_backlog: 5,
            ..Snapshot::default()
        });
        assert!(text.contains("portal_database_up 0"), "{text}");
        assert!(text.contains("portal_accounting_backlog 5"), "{text}");
        // State gauges follow the snapshot: an organization without sessions disappears.
        let text = m.render(&Snapshot::default());
        assert!(!text.contains("portal_active_sessions{"), "{text}");
    }

    #[test]
    fn without_sqlite_counts_there_are_no_commit_or_write_series() {
        // PostgreSQL's snapshots carry no engine counts: nothing that reads as "0 writes".
        let m = Metrics::new();
        let text = m.render(&Snapshot::default());
        assert!(text.contains("portal_database_up 1"), "{text}");
        for absent in [
            "portal_database_writes_total ",
            "portal_database_commits_total{",
        ] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
    }
}
