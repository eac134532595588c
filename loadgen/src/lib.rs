//! A journey load generator for radius-portal: virtual users each sign in, look at their
//! session, disconnect and come back to the sign-in page, over and over, as a browser without
//! JavaScript does — `GET /` → `POST /api/login` (303) → `GET /session` → `POST /api/disconnect`
//! (303) → `GET /`. Each virtual user has its own keep-alive connection, cookies and client
//! address (sent in `X-Forwarded-For`; the portal must trust 127.0.0.1 as a proxy, a header only).
//!
//! The report says journeys per second, failures by kind, p50/p99 of journeys and of the login
//! request, and the CPU each named process (portal, FreeRADIUS) and the generator itself spent per
//! journey, so a run bound by the generator is visible.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    client::conn::http1::{self, SendRequest},
    header, Method, Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use std::{
    collections::BTreeMap,
    fmt,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The wait before a virtual user tries again after its connection was refused.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The wait before a virtual user tries again after a journey failed otherwise (a page without
/// a form — its organization disabled —, a refusal): as a person would, and so that a portal
/// answering at once is not hammered with failures that only inflate the count.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);
/// A request without an answer this long fails its journey (and the connection is replaced):
/// longer than the portal's slowest documented sign-in (its login timeout, then the Start's
/// exchange).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The portal's origins, `http://127.0.0.1:3000` (plain HTTP): user n uses the n-th, round
    /// robin (several replicas of one portal).
    pub origins: Vec<String>,
    /// Path prefix of the organization's portal (`/o/beta`), or empty for the default one.
    pub prefix: String,
    /// Concurrent virtual users.
    pub users: u32,
    /// How long to run.
    pub duration: Duration,
    /// Username; `{n}` is replaced by the virtual user's number (1-based).
    pub username: String,
    /// Password; `{n}` as in `username`.
    pub password: String,
    /// Client address of user 1, sent in `X-Forwarded-For`; user n gets the n-th after it.
    pub first_address: Ipv4Addr,
    /// Processes whose CPU time is reported per journey: (label, pid).
    pub processes: Vec<(String, u32)>,
    /// Instead of journeys, GET this path (after the prefix) over and over: each answered
    /// request counts as a journey, so the report gives the cost of one page or endpoint.
    pub only_get: Option<String>,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Virtual users.
    pub users: u32,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Journeys completed.
    pub journeys: u64,
    /// Journeys that failed, by what went wrong.
    pub failures: BTreeMap<String, u64>,
    /// Journey durations, sorted.
    pub journey_times: Vec<Duration>,
    /// Login request durations (POST to its 303), sorted.
    pub login_times: Vec<Duration>,
    /// CPU time per labelled process over the run, the generator last.
    pub cpu: Vec<(String, Duration)>,
}

impl Report {
    /// Failed journeys in all.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Journeys per second.
    pub fn rate(&self) -> f64 {
        self.journeys as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU of `label` per completed journey.
    pub fn cpu_per_journey(&self, label: &str) -> Option<Duration> {
        let (_, cpu) = self.cpu.iter().find(|(l, _)| l == label)?;
        Some(cpu.div_f64(self.journeys.max(1) as f64))
    }
}

/// The `q` quantile of sorted durations (zero when empty).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} users, {:.1} s: {} journeys ({:.1}/s), {} failed",
            self.users,
            self.elapsed.as_secs_f64(),
            self.journeys,
            self.rate(),
            self.failed()
        )?;
        for (kind, count) in &self.failures {
            writeln!(f, "  failed {count}×: {kind}")?;
        }
        writeln!(
            f,
            "journey p50 {:.2} ms, p99 {:.2} ms; login p50 {:.2} ms, p99 {:.2} ms",
            ms(quantile(&self.journey_times, 0.5)),
            ms(quantile(&self.journey_times, 0.99)),
            ms(quantile(&self.login_times, 0.5)),
            ms(quantile(&self.login_times, 0.99)),
        )?;
        let per: Vec<String> = self
            .cpu
            .iter()
            .map(|(label, _)| {
                let us = self
                    .cpu_per_journey(label)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e6;
                format!("{label} {us:.0} µs")
            })
            .collect();
        write!(f, "CPU per journey: {}", per.join(", "))
    }
}

/// CPU time (user + system) of a process so far, with that of its children (living ones, and
/// those it has waited for): a server of several processes (PostgreSQL's backends) counts
/// whole. From `/proc/<pid>/stat`.
pub fn process_cpu(pid: &str) -> Option<Duration> {
    let (_, own) = stat_ticks(pid)?;
    let children: u64 = match pid.parse::<u32>() {
        Ok(parent) => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|child| stat_ticks(&child.to_string()))
            .filter(|(ppid, _)| *ppid == parent)
            .map(|(_, ticks)| ticks)
            .sum(),
        Err(_) => 0,
    };
    Some(Duration::from_secs_f64(
        (own + children) as f64 / clock_ticks() as f64,
    ))
}

/// (parent pid, utime + stime + cutime + cstime) of a process.
fn stat_ticks(pid: &str) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses: state is the
    // first, ppid the 2nd, utime the 12th, stime the 13th, cutime and cstime the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let ppid = fields.get(1)?.parse().ok()?;
    Some((ppid, field(11)? + field(12)? + field(13)? + field(14)?))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(100)
    })
}

#[derive(Default)]
struct Totals {
    journeys: u64,
    failures: BTreeMap<String, u64>,
    journey_times: Vec<Duration>,
    login_times: Vec<Duration>,
}

/// Runs the virtual users for the configured duration and reports.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    anyhow::ensure!(!config.origins.is_empty(), "no origin to load");
    let hosts = config
        .origins
        .iter()
        .map(|origin| {
            Ok(origin
                .strip_prefix("http://")
                .ok_or_else(|| anyhow::anyhow!("origin must be http://host:port"))?
                .trim_end_matches('/')
                .to_string())
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    let mut processes: Vec<(String, String)> = config
        .processes
        .iter()
        .map(|(label, pid)| (label.clone(), pid.to_string()))
        .collect();
    processes.push(("generator".into(), "self".into()));
    let cpu_before: Vec<Duration> = processes
        .iter()
        .map(|(_, pid)| process_cpu(pid).unwrap_or_default())
        .collect();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let started = Instant::now();
    let deadline = started + config.duration;
    let config = Arc::new(config);
    let mut users = tokio::task::JoinSet::new();
    for n in 1..=config.users {
        let index = (n as usize - 1) % hosts.len();
        let (config, totals, host) = (config.clone(), totals.clone(), hosts[index].clone());
        users.spawn(async move {
            VirtualUser::new(n, config, host)
                .run(deadline, totals)
                .await
        });
    }
    while users.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let cpu = processes
        .iter()
        .zip(cpu_before)
        .map(|((label, pid), before)| {
            let after = process_cpu(pid).unwrap_or(before);
            (label.clone(), after.saturating_sub(before))
        })
        .collect();
    let mut totals = std::mem::take(&mut *totals.lock().unwrap_or_else(|p| p.into_inner()));
    totals.journey_times.sort();
    totals.login_times.sort();
    Ok(Report {
        users: config.users,
        elapsed,
        journeys: totals.journeys,
        failures: totals.failures,
        journey_times: totals.journey_times,
        login_times: totals.login_times,
        cpu,
    })
}

/// One simulated browser without JavaScript.
struct VirtualUser {
    config: Arc<Config>,
    host: String,
    address: String,
    username: String,
    password: String,
    connection: Option<SendRequest<Full<Bytes>>>,
    cookies: Vec<(String, String)>,
}

/// An answer: status, `Location`, body.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl VirtualUser {
    fn new(n: u32, config: Arc<Config>, host: String) -> Self {
        let address = Ipv4Addr::from(u32::from(config.first_address).wrapping_add(n - 1));
        let fill = |text: &str| text.replace("{n}", &n.to_string());
        VirtualUser {
            username: fill(&config.username),
            password: fill(&config.password),
            address: address.to_string(),
            config,
            host,
            connection: None,
            cookies: Vec::new(),
        }
    }

    async fn run(mut self, deadline: Instant, totals: Arc<Mutex<Totals>>) {
        while Instant::now() < deadline {
            let started = Instant::now();
            let outcome = self.journey().await;
            let failed = {
                let mut totals = totals.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(login) => {
                        totals.journeys += 1;
                        totals.journey_times.push(started.elapsed());
                        totals.login_times.push(login);
                        None
                    }
                    Err(kind) => {
                        let refused = kind.starts_with("connect:");
                        *totals.failures.entry(kind).or_default() += 1;
                        Some(refused)
                    }
                }
            };
            if let Some(refused) = failed {
                // Start clean: a new connection and no cookies.
                self.connection = None;
                self.cookies.clear();
                // Nothing listening (the portal killed and restarting): try again after a
                // pause, as a person would. Without one, hundreds of thousands of connects
                // a second reach the port range the kernel picks source ports from, and
                // one of them can connect the port to itself — holding the portal's port
                // (TIME-WAIT) so that its restart cannot bind it for a minute.
                let pause = if refused {
                    CONNECT_RETRY_PAUSE
                } else {
                    FAILURE_PAUSE
                };
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
    }

    /// One journey; `Ok(login request time)`, or what went wrong.
    async fn journey(&mut self) -> Result<Duration, String> {
        let prefix = self.config.prefix.clone();
        if let Some(path) = &self.config.only_get {
            let started = Instant::now();
            let path = format!("{prefix}{path}");
            let page = self.request(Method::GET, &path, None).await?;
            expect(&page, StatusCode::OK, &format!("GET {path}"))?;
            return Ok(started.elapsed());
        }
        let home = format!("{prefix}/");
        let page = self.request(Method::GET, &home, None).await?;
        expect(&page, StatusCode::OK, "GET /")?;
        let token = form_token(&page.body).ok_or("GET /: no form token")?;
        let form = format!(
            "username={}&password={}&csrf={}",
            form_encode(&self.username),
            form_encode(&self.password),
            form_encode(&token)
        );
        let started = Instant::now();
        let login = self
            .request(Method::POST, &format!("{prefix}/api/login"), Some(form))
            .await?;
        let login_time = started.elapsed();
        let session_path = match (login.status.is_redirection(), &login.location) {
            (true, Some(location)) if location.contains("session") => location.clone(),
            (true, Some(location)) => {
                // Refused: the message is on the page it redirects to.
                let page = self.request(Method::GET, location, None).await?;
                return Err(format!("login refused: {}", alert_text(&page.body)));
            }
            _ => return Err(format!("POST /api/login: {}", login.status)),
        };
        let session = self.request(Method::GET, &session_path, None).await?;
        expect(&session, StatusCode::OK, "GET /session")?;
        let token = form_token(&session.body).ok_or("GET /session: no form token")?;
        let bye = self
            .request(
                Method::POST,
                &format!("{prefix}/api/disconnect"),
                Some(format!("csrf={}", form_encode(&token))),
            )
            .await?;
        match (bye.status.is_redirection(), &bye.location) {
            (true, Some(location)) if !location.contains("session") => {}
            _ => return Err(format!("POST /api/disconnect: {}", bye.status)),
        }
        let page = self.request(Method::GET, &home, None).await?;
        expect(&page, StatusCode::OK, "GET / after disconnect")?;
        Ok(login_time)
    }

    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.connection.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&self.host)
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            // A connect to a port in the ephemeral range with nothing listening can be
            // answered by the connecting socket itself (TCP simultaneous open).
            if stream.local_addr().ok() == stream.peer_addr().ok() {
                return Err("connect: connected to itself (nothing listens there)".into());
            }
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            self.connection = Some(sender);
        }
        self.connection
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<String>,
    ) -> Result<Answer, String> {
        let origin = format!("http://{}", self.host);
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::ACCEPT, "text/html")
            .header("x-forwarded-for", &self.address);
        if !self.cookies.is_empty() {
            let cookie: Vec<String> = self
                .cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            builder = builder.header(header::COOKIE, cookie.join("; "));
        }
        let body = match form {
            Some(form) => {
                builder = builder
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::ORIGIN, &origin)
                    .header(header::REFERER, format!("{origin}{}/", self.config.prefix));
                Full::new(Bytes::from(form))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| e.to_string())?;
        let timed_out = || format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}");
        let connection = self.connection().await?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, async {
            connection
                .ready()
                .await
                .map_err(|e| format!("{method} {path}: connection: {e}"))?;
            connection
                .send_request(request)
                .await
                .map_err(|e| format!("{method} {path}: {e}"))
        })
        .await
        .map_err(|_| timed_out())??;
        let (parts, body) = response.into_parts();
        for value in parts.headers.get_all(header::SET_COOKIE) {
            if let Ok(text) = value.to_str() {
                self.keep_cookie(text);
            }
        }
        let location = parts
            .headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let body = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| format!("{method} {path}: body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            location,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Keeps (or, for an expired or emptied one, drops) a `Set-Cookie`.
    fn keep_cookie(&mut self, set_cookie: &str) {
        let mut attributes = set_cookie.split(';');
        let Some((name, value)) = attributes.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let expired = attributes.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
        self.cookies.retain(|(n, _)| n != name);
        if !expired && !value.is_empty() {
            self.cookies.push((name.to_string(), value.to_string()));
        }
    }
}

fn expect(answer: &Answer, status: StatusCode, what: &str) -> Result<(), String> {
    if answer.status == status {
        Ok(())
    } else {
        Err(format!("{what}: {}", answer.status))
    }
}

/// The hidden `csrf` input's value.
fn form_token(page: &str) -> Option<String> {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker)? + marker.len();
    Some(page[start..].split('"').next()?.to_string())
}

/// The text of the page's alert (the error it shows), tags removed, shortened.
fn alert_text(page: &str) -> String {
    let Some(start) = page.find("role=\"alert\"") else {
        return "(no message on the page)".into();
    };
    // The alert element's own text: up to its end tag (a `<p>` or a `<div>`), not the form's
    // labels after it.
    let alert = &page[start..];
    let end = ["</p>", "</div>"]
        .iter()
        .filter_map(|tag| alert.find(tag))
        .min()
        .unwrap_or(alert.len());
    let alert = &alert[..end];
    let mut text = String::new();
    let mut in_tag = true;
    for c in alert.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
        if text.len() > 120 {
            break;
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_sorted_durations() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn the_form_token_and_alert_are_found() {
        let page = r#"<form><input type="hidden" name="csrf" value="abc.123"/></form>
            <div role="alert" class="x"><p>Sign-in refused: <b>wrong</b> password.</p></div>"#;
        assert_eq!(form_token(page).as_deref(), Some("abc.123"));
        assert_eq!(alert_text(page), "Sign-in refused: wrong password.");
        // The portal's own: a paragraph, followed by the form's labels.
        let page = r#"<p id="form-error" role="alert" class="x">Please wait 1 second and try again.</p>
            <form><label for="username">Username</label></form>"#;
        assert_eq!(alert_text(page), "Please wait 1 second and try again.");
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(process_cpu("self").is_some());
    }
}
