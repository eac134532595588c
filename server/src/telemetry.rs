//! Logging setup: tracing to stderr as text or JSON. Passwords and secrets are never passed to
//! tracing anywhere in the code base (secrets are [`crate::config::Secret`], redacted in Debug).

use crate::config::LogSettings;
use std::io::Write as _;
use tracing_subscriber::{fmt, EnvFilter};

/// The log filter: RUST_LOG's if it is set (not empty), else the configured one — or, RUST_LOG
/// set to something that is no filter, what to warn of (the configured filter is used).
fn rust_log_filter(settings: &LogSettings) -> Result<EnvFilter, String> {
    let text = std::env::var("RUST_LOG").unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(EnvFilter::new(&settings.filter));
    }
    EnvFilter::try_from_default_env().map_err(|e| {
        format!(
            "the environment variable RUST_LOG = {text:?} is no log filter ({e}): the configured filter {:?} is used",
            settings.filter
        )
    })
}

/// What `serve` warns of about RUST_LOG as its log starts ([`init`]), for `check-config`.
pub fn rust_log_warning(settings: &LogSettings) -> Option<String> {
    rust_log_filter(settings).err()
}

/// Installs the global subscriber (RUST_LOG wins over the configured filter; an empty one counts
/// as unset, as for most programs — not as a filter that shows errors alone). Safe to call twice.
pub fn init(settings: &LogSettings) {
    let (filter, warning) = match rust_log_filter(settings) {
        Ok(filter) => (filter, None),
        // Set, but not a filter: said (once, as the log starts), not passed over in silence.
        Err(warning) => (EnvFilter::new(&settings.filter), Some(warning)),
    };
    // tower-sessions warns ("possibly suspicious activity") for every request whose cookie names
    // no stored session: anyone can send those at will, and the portal answers them as it
    // answers a visitor without a session (the cookie is removed). And it logs an error for
    // every request whose web session cannot be read or saved (the database away: a line per
    // request), which the portal's web-session layer logs itself. Not at all,
    // unless the filter asks for tower-sessions by name.
    let quiet = !settings.filter.contains("tower_sessions")
        && !std::env::var("RUST_LOG").is_ok_and(|f| f.contains("tower_sessions"));
    let filter = match "tower_sessions_core=off".parse() {
        Ok(directive) if quiet => filter.add_directive(directive),
        _ => filter,
    };
    // PostgreSQL's notices to sqlx ("relation \"_sqlx_migrations\" already exists, skipping" at
    // every start of every replica) at INFO are noise: warnings and errors still show.
    let mentions_sqlx = settings.filter.contains("sqlx")
        || std::env::var("RUST_LOG").is_ok_and(|f| f.contains("sqlx"));
    let filter = match "sqlx::postgres::notice=warn".parse() {
        Ok(directive) if !mentions_sqlx => filter.add_directive(directive),
        _ => filter,
    };
    // sqlx warns of a database URL parameter it does not know with the parameter's value (an
    // `sslpassword` in clear): never logged, whatever the filter.
    let filter = match "sqlx_postgres::options::parse=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        _ => filter,
    };
    // Colours only for a terminal: a file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_ansi(ansi)
        // Its fallback for a failed write is `eprintln!`, which panics on the same broken
        // stderr: the task that logged would die (a request, expiry, the SIGTERM handler).
        .log_internal_errors(false);
    let _ = if settings.format == "json" {
        let done = builder.json().try_init();
        if done.is_ok() {
            JSON.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        done
    } else {
        builder.try_init()
    };
    if let Some(warning) = warning {
        said_early(true, &warning);
    }
}

/// A line about the settings, said as the log starts: when the log is JSON, a log line (`warn`
/// for a warning, else `info`; one the filter hides is not said — never a plain line among the
/// JSON ones), so that a collector reading JSON lines reads it too; else `warning: …` or
/// `note: …` on stderr, as before the log.
pub fn said_early(warning: bool, text: &str) {
    let json = JSON.load(std::sync::atomic::Ordering::Relaxed);
    match (json, warning) {
        (true, true) => tracing::warn!(target: "radius_portal", "{text}"),
        (true, false) => tracing::info!(target: "radius_portal", "{text}"),
        (false, true) => crate::eprint_line!("warning: {text}"),
        (false, false) => crate::eprint_line!("note: {text}"),
    }
}

/// The log is JSON ([`init`] with `format = "json"`).
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The error that ends the process, said last: as a log line (`error` level) when the log is
/// JSON, so a collector that reads only JSON gets the one line that says why the portal stopped
/// (a crash loop's cause); else as `error: …` on stderr.
pub fn fatal(text: &str) {
    if JSON.load(std::sync::atomic::Ordering::Relaxed)
        && tracing::enabled!(target: "radius_portal", tracing::Level::ERROR)
    {
        tracing::error!(target: "radius_portal", "{text}");
    } else {
        crate::eprint_line!("error: {text}");
    }
}

/// Log lines that could not be written (stderr a full disk, a pipe nobody reads any more):
/// counted (`portal_log_write_failures_total`), never fatal — accounting, expiry and shutdown
/// go on without their log.
pub static LOG_WRITE_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes of log lines waiting for the log's own thread: a line beyond them is dropped (and
/// counted).
const WAITING_BYTES: usize = 1 << 20;

/// The log's own thread, which alone writes to stderr, and the lines waiting for it: a stderr
/// that blocks (a pipe nobody reads, a stopped terminal, a slow collector) holds up that thread
/// alone — never a task of the runtime (with one worker thread, every sign-in, expiry and
/// Stop would wait for the reader) — and lines beyond [`WAITING_BYTES`] are dropped.
struct Sink {
    lines: std::sync::mpsc::Sender<Vec<u8>>,
    /// Bytes handed over and not yet written (or failed).
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

static SINK: std::sync::OnceLock<Option<Sink>> = std::sync::OnceLock::new();

fn sink() -> Option<&'static Sink> {
    SINK.get_or_init(|| {
        let (lines, received) = std::sync::mpsc::channel::<Vec<u8>>();
        let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = pending.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut stderr = std::io::stderr();
                let mut cut = false;
                for line in received {
                    if write_line(&mut stderr, &line, &mut cut).is_err() {
                        LOG_WRITE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    written.fetch_sub(line.len(), std::sync::atomic::Ordering::SeqCst);
                }
            })
            .ok()
            .map(|_| Sink { lines, pending })
    })
    .as_ref()
}

/// Writes one line (with its newline) to `out`. A line cut by a failed write (a full disk, after
/// part of it went) is `cut`: the next line written first ends it, so it is not glued to the
/// next one (a JSON-lines collector would drop both).
fn write_line(out: &mut impl std::io::Write, line: &[u8], cut: &mut bool) -> std::io::Result<()> {
    if *cut {
        out.write_all(b"\n")?;
        *cut = false;
    }
    let mut rest = line;
    while !rest.is_empty() {
        let failed = match out.write(rest) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(n) => {
                rest = &rest[n..];
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        *cut = rest.len() < line.len();
        return Err(failed);
    }
    Ok(())
}

/// Hands one line (with its newline) to the log's thread; dropped and counted when too much
/// waits or stderr cannot be written. Without the thread (none could be started), written here.
pub fn emit(line: Vec<u8>) {
    let failed = match sink() {
        Some(sink) => {
            let size = line.len();
            let before = sink
                .pending
                .fetch_add(size, std::sync::atomic::Ordering::SeqCst);
            let sent = before + size <= WAITING_BYTES && sink.lines.send(line).is_ok();
            if !sent {
                sink.pending
                    .fetch_sub(size, std::sync::atomic::Ordering::SeqCst);
            }
            !sent
        }
        None => std::io::stderr().write_all(&line).is_err(),
    };
    if failed {
        LOG_WRITE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits until the lines handed over are written, for at most `longest` (a stderr nobody
/// reads keeps them: the process ends without them rather than hang). Before the process
/// exits, so its last lines — why it stopped — are not lost with the thread.
pub fn flush(longest: std::time::Duration) {
    let Some(sink) = SINK.get().and_then(Option::as_ref) else {
        return;
    };
    let until = std::time::Instant::now() + longest;
    while sink.pending.load(std::sync::atomic::Ordering::SeqCst) > 0
        && std::time::Instant::now() < until
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The log's writer: each event's line goes to the log's own thread ([`emit`]).
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        emit(buf.to_vec());
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `eprintln!` that never panics or blocks: the line goes the log's way ([`emit`]), in order
/// with the log's lines; one that cannot be written is counted like a log line.
#[macro_export]
macro_rules! eprint_line {
    ($($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        $crate::telemetry::emit(line.into_bytes());
    }};
}

/// For events that an attacker can repeat at will (forged datagrams): true for the first
/// occurrence and every 1000th after it, given how many there were before this one. Callers
/// warn when it is true and log at debug otherwise, and keep the full count in a counter.
pub fn worth_a_warning(occurrences_before: u64) -> bool {
    occurrences_before.is_multiple_of(1000)
}

/// Logs a line anyone can make the portal repeat at will (a refused or rate-limited request, an
/// unusable forwarding header): at `$level` for the first and then at most one
/// per [`Throttle::PERIOD`] from this call site, with `similar_left_out` — how many were logged
/// at debug only since —, so a flood of them cannot fill the disk or bury other lines. The
/// metrics count every one.
///
/// `throttled!(warn, organization = %id, "login rate limited")`
#[macro_export]
macro_rules! throttled {
    ($level:ident, $($line:tt)+) => {{
        static THROTTLE: $crate::telemetry::Throttle = $crate::telemetry::Throttle::new();
        match THROTTLE.admit() {
            Some(left_out) => tracing::$level!(similar_left_out = left_out, $($line)+),
            None => tracing::debug!($($line)+),
        }
    }};
}

/// For a line a failing dependency would repeat for every request (the database away, a full
/// disk): the first occurrence is written, then at most one per [`Throttle::PERIOD`], saying
/// how many were left out since the last — a full disk must not also fill the log. While they
/// go on, the gap doubles with each line written, up to [`Throttle::LONGEST`] (an outage of an
/// hour writes a line a minute from each place, not 720); after a quiet [`Throttle::LONGEST`]
/// (no occurrence at all) the next run starts again at [`Throttle::PERIOD`].
pub struct Throttle {
    state: std::sync::Mutex<ThrottleState>,
    /// Occurrences left out since the last line.
    skipped: std::sync::atomic::AtomicU64,
}

struct ThrottleState {
    /// When a line was last written.
    written: Option<std::time::Instant>,
    /// When the last occurrence was (written or not).
    seen: Option<std::time::Instant>,
    /// The gap before the next line.
    gap: std::time::Duration,
}

impl Throttle {
    /// The first gap between two lines.
    pub const PERIOD: std::time::Duration = std::time::Duration::from_secs(5);
    /// The longest gap, and the quiet that starts a new run.
    pub const LONGEST: std::time::Duration = std::time::Duration::from_secs(60);

    /// A throttle that has written nothing yet (for a `static`).
    pub const fn new() -> Self {
        Throttle {
            state: std::sync::Mutex::new(ThrottleState {
                written: None,
                seen: None,
                gap: Self::PERIOD,
            }),
            skipped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Some(occurrences left out before this one) when this occurrence is to be written.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(std::time::Instant::now())
    }

    /// [`Throttle::admit`] for a line about something `away` (the database, a dependency):
    /// any other failure is always written (Some(0)), never hidden behind an earlier one nor
    /// counted with them.
    pub fn admit_if_away(&self, away: bool) -> Option<u64> {
        if away {
            self.admit()
        } else {
            Some(0)
        }
    }

    fn admit_at(&self, now: std::time::Instant) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let quiet = state
            .seen
            .is_none_or(|at| now.saturating_duration_since(at) >= Self::LONGEST);
        state.seen = Some(now);
        if quiet {
            state.gap = Self::PERIOD;
        } else if state
            .written
            .is_some_and(|at| now.saturating_duration_since(at) < state.gap)
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        } else if state.written.is_some() {
            state.gap = (state.gap * 2).min(Self::LONGEST);
        }
        state.written = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// A [`Throttle`] per key (an organization, a server and kind of error): one key's flood never
/// keeps another's first line waiting. Keys must be bounded (configured names, not a
/// client's text).
pub struct Throttles(
    std::sync::Mutex<Option<std::collections::HashMap<String, std::sync::Arc<Throttle>>>>,
);

impl Throttles {
    /// None yet (for a `static`).
    pub const fn new() -> Self {
        Throttles(std::sync::Mutex::new(None))
    }

    /// [`Throttle::admit`] for `key`'s line.
    pub fn admit(&self, key: &str) -> Option<u64> {
        let throttle = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let map = map.get_or_insert_with(Default::default);
            match map.get(key) {
                Some(throttle) => throttle.clone(),
                None => map.entry(key.to_owned()).or_default().clone(),
            }
        };
        throttle.admit()
    }
}

impl Default for Throttles {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A disk that takes `room` more bytes, then fails as a full one does.
    struct Disk {
        written: Vec<u8>,
        room: usize,
    }

    impl std::io::Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = buf.len().min(self.room);
            self.written.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_by_a_full_disk_is_ended_before_the_next() {
        let mut disk = Disk {
            written: Vec::new(),
            room: 30,
        };
        let mut cut = false;
        write_line(&mut disk, b"{\"first\":\"complete\"}\n", &mut cut).unwrap();
        assert!(write_line(&mut disk, b"{\"second\":\"cut off\"}\n", &mut cut).is_err());
        assert!(write_line(&mut disk, b"{\"third\":\"lost\"}\n", &mut cut).is_err());
        disk.room = 1000; // space again
        write_line(&mut disk, b"{\"fourth\":\"whole\"}\n", &mut cut).unwrap();
        let text = String::from_utf8(disk.written).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        assert_eq!(lines[2], "{\"fourth\":\"whole\"}", "{text:?}");
    }

    #[test]
    fn a_throttle_writes_the_first_then_one_per_period_with_what_it_left_out() {
        let throttle = Throttle::new();
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(t0), Some(0));
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(4)), None);
        assert_eq!(throttle.admit_at(t0 + Throttle::PERIOD), Some(2));
        assert_eq!(throttle.admit_at(t0 + Throttle::PERIOD), None);
    }

    #[test]
    fn keyed_throttles_keep_each_keys_first_line() {
        let throttles = Throttles::new();
        assert_eq!(throttles.admit("acme"), Some(0));
        assert_eq!(throttles.admit("acme"), None);
        // Another organization's first line is written however busy the first one is.
        assert_eq!(throttles.admit("beta"), Some(0));
        assert_eq!(throttles.admit("beta"), None);
    }

    #[test]
    fn a_throttle_writes_less_often_while_they_go_on_and_starts_again_after_a_quiet_minute() {
        let throttle = Throttle::new();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // An occurrence every second: lines at 0, 5, 15, 35, 75, then a minute apart.
        let written: Vec<u64> = (0..=200)
            .filter(|&s| throttle.admit_at(at(s)).is_some())
            .collect();
        assert_eq!(written, [0, 5, 15, 35, 75, 135, 195]);
        // The next line says what it left out: the 5 occurrences after 195.
        assert_eq!(throttle.admit_at(at(255)), Some(5));
        // A minute without any: the next one is written, and the gap is 5 s again.
        assert_eq!(throttle.admit_at(at(315)), Some(0));
        assert_eq!(throttle.admit_at(at(319)), None);
        assert_eq!(throttle.admit_at(at(320)), Some(1));
        // A quieter stretch shorter than a minute keeps the longer gap going.
        assert_eq!(throttle.admit_at(at(329)), None);
        assert_eq!(throttle.admit_at(at(330)), Some(1));
        assert_eq!(throttle.admit_at(at(349)), None);
    }
}
