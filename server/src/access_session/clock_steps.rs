//! Steps of the wall clock. Deadlines, leases and Event-Timestamps are Unix times from the wall
//! clock, stored; a step back of it — NTP correcting a clock that ran ahead, an operator's
//! `date -s` — would move every stored deadline later against real time: a session given a
//! minute would run on an hour after a step an hour back, a firewall identity with it.
//! Every reading of the time ([`now_ms`]) compares the wall clock with the boot clock
//! (`CLOCK_BOOTTIME`: it counts a suspend and is never stepped): when one says more time passed
//! than the other by over [`STEP_MS`], the difference is a step. A step back is held from the
//! process's time (an offset) until the stored times of what is under way have moved with it
//! ([`crate::storage::SessionStore::shift_times`], by the clock task), and the process follows
//! the wall clock from then on — so each session keeps the real time it had left and its
//! accounting its real length and delay. (A time worked out just before the move and written
//! just after it is the one left in the old time line.) A step forward is taken as time that
//! passed — a virtual machine paused with its boot clock looks the same as a clock put right —:
//! followed at once, sessions whose time it covers end. SQLite only: on PostgreSQL the replicas
//! share the times and their clocks are the reference (one replica's step says its clock was,
//! or is, wrong): the process follows its wall clock at once, with a warning.

use super::AccessSessions;
use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Mutex,
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// A difference between the two clocks' readings beyond this is a step (NTP's own slewing
/// moves the wall clock by at most half a millisecond a second).
pub const STEP_MS: i64 = 2_000;

/// How often the clocks are compared.
const EVERY: Duration = Duration::from_secs(1);

/// The two clocks' last readings (Unix ms, boot ms).
#[derive(Debug, Default)]
pub struct StepWatch {
    last: Option<(i64, i64)>,
}

impl StepWatch {
    /// Takes a reading of both clocks: the wall clock's step since the last reading (how much
    /// further it moved than the boot clock), if more than [`STEP_MS`].
    pub fn observe(&mut self, wall_ms: i64, boot_ms: i64) -> Option<i64> {
        let step = self
            .last
            .map(|(wall, boot)| (wall_ms - wall) - (boot_ms - boot));
        self.last = Some((wall_ms, boot_ms));
        step.filter(|step| step.abs() > STEP_MS)
    }
}

/// The boot clock in milliseconds (None where it cannot be read).
fn boot_ms() -> Option<i64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(now.tv_sec() * 1_000 + now.tv_nsec() / 1_000_000)
}

/// The wall clock in Unix milliseconds.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The readings [`now_ms`] compares (one caller at a time).
static WATCH: Mutex<StepWatch> = Mutex::new(StepWatch { last: None });
/// Steps seen and not yet moved into the stored times: the process's time is the wall
/// clock's less this.
static HELD: AtomicI64 = AtomicI64::new(0);
/// Wakes the clock task when a step is seen.
static SEEN: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// Told once the stored times have moved with a step back: the lock file's mark is written
/// again at once, in the new time line.
pub static MOVED: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// How far the stored times have been moved in all (ms), as the database records it with each
/// move: a [`ClockMark`] says the total its time is in line with. Changed together with
/// [`HELD`]'s release, under this lock, so a mark never pairs one line's time with the other's
/// total.
static LINE: Mutex<i64> = Mutex::new(0);
/// The step back found at start-up ([`hold_step_back`]) while it is held: the clock task's
/// line says so when it moves exactly that (a step seen since, added to it, makes it a step
/// like any other).
static FOUND_AT_START: AtomicI64 = AtomicI64::new(0);

/// On SQLite (where stored times move with the clock), held by a move of the stored times
/// with a step (until the process follows the wall clock again) and by each expiry pass (its
/// reading of the time and its writes): a pass never reads
/// the time in one line and stops sessions or queues Interim-Updates against times moved to
/// the other — one that did, woken by the move itself, queued an Interim-Update dated the
/// step's size ahead, which held the session's Stop that long (black-box tester T's D1), and
/// could have stopped sessions early. Other writes keep the smaller risk the module's doc says.
static MOVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// [`MOVE`], for an expiry pass on a store whose times move with the clock (`moves`: SQLite;
/// on PostgreSQL nothing moves, and a pass held up by a database away would only hold the
/// process in the old time line).
pub async fn one_time_line(moves: bool) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if moves {
        Some(MOVE.lock().await)
    } else {
        None
    }
}

/// The database's total of moves ([`crate::storage::Storage::clock_moved_ms`]), at start-up.
pub fn moved_so_far(total_ms: i64) {
    *LINE.lock().unwrap_or_else(|p| p.into_inner()) = total_ms;
}

/// The process's time in Unix milliseconds: the wall clock's, less the steps not yet moved
/// into the stored times. Both clocks are read under one lock, so readings are compared in the
/// order they were taken (a reading taken before another's would look like a step back).
pub fn now_ms() -> i64 {
    reading().0
}

/// The process's time ([`now_ms`]) and the boot clock's reading taken with it.
fn reading() -> (i64, Option<i64>) {
    let mut watch = WATCH.lock().unwrap_or_else(|p| p.into_inner());
    let wall = wall_ms();
    let boot = boot_ms();
    if let Some(step) = boot.and_then(|boot| watch.observe(wall, boot)) {
        HELD.fetch_add(step, Ordering::SeqCst);
        SEEN.notify_one();
    }
    (wall - HELD.load(Ordering::SeqCst), boot)
}

/// Where a process's time stood against the boot clock: what a serving portal leaves in its
/// SQLite database's lock file every second, so that the next start sees a step of the wall
/// clock made while no portal ran ([`ClockMark::step_since`]) — a clock put back across
/// a restart would otherwise give every open session the step on top of its time (black-box
/// tester T's D2: a Session-Timeout of two minutes ran an hour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockMark {
    /// The process's time (Unix ms): the time line the stored times are in.
    pub unix_ms: i64,
    /// The boot clock (ms since boot), read with it.
    pub boot_ms: i64,
    /// The kernel's id of this boot: boot clocks of two boots are not comparable. Empty where
    /// it cannot be read, or where the boot clock does not read as the kernel's uptime (a
    /// tool that fakes it: libfaketime's monotonic clocks).
    pub boot_id: String,
    /// The moves of the stored times in all ([`LINE`]) that `unix_ms` is in line with.
    pub moved_ms: i64,
}

/// Why a step of the clock made while no portal ran cannot be found on this host: the kernel's
/// boot id or uptime cannot be read (black-box tester Q's D1: systemd's `ProcSubset=pid` hid
/// them, and the correction was off without a word). None when both can.
pub fn boot_identity_problem() -> Option<String> {
    unreadable_of(&["/proc/sys/kernel/random/boot_id", "/proc/uptime"])
}

/// [`boot_identity_problem`] for `files`.
fn unreadable_of(files: &[&str]) -> Option<String> {
    files
        .iter()
        .find_map(|file| std::fs::read_to_string(file).err().map(|e| (file, e)))
        .map(|(file, e)| {
            format!("{file} cannot be read ({e}): a step of the system clock made while no portal ran cannot be told from a reboot, so the open sessions' times are not moved with a step back at start-up (they would run longer than granted); under systemd, ProcSubset=pid hides it (deploy/systemd's unit does not set it)")
        })
}

impl ClockMark {
    /// Now (None where the boot clock cannot be read).
    pub fn now() -> Option<ClockMark> {
        let line = LINE.lock().unwrap_or_else(|p| p.into_inner());
        let (unix_ms, boot_ms) = reading();
        let moved_ms = *line;
        drop(line);
        let boot_ms = boot_ms?;
        let uptime_ms = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
            .map(|secs| (secs * 1000.0) as i64);
        let boot_id = match uptime_ms {
            Some(uptime) if (uptime - boot_ms).abs() <= 60_000 => {
                std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .map(|id| id.trim().to_owned())
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        Some(ClockMark {
            unix_ms,
            boot_ms,
            boot_id,
            moved_ms,
        })
    }

    /// As one line of text (`UNIX_MS BOOT_MS BOOT_ID MOVED_MS`), which [`ClockMark::parse`]
    /// reads.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.unix_ms,
            self.boot_ms,
            if self.boot_id.is_empty() {
                "-"
            } else {
                &self.boot_id
            },
            self.moved_ms
        )
    }

    /// This mark in the time line of a database whose moves total `moved_ms`: a mark written
    /// before the last move (a kill -9 between the move's write and the mark's next) is moved
    /// as the stored times were, so the same step is never found twice.
    pub fn in_line_with(&self, moved_ms: i64) -> Option<ClockMark> {
        Some(ClockMark {
            unix_ms: self
                .unix_ms
                .checked_add(moved_ms.checked_sub(self.moved_ms)?)?,
            moved_ms,
            ..self.clone()
        })
    }

    /// Reads [`ClockMark::line`]'s text.
    pub fn parse(text: &str) -> Option<ClockMark> {
        let mut parts = text.split_whitespace();
        let unix_ms = parts.next()?.parse().ok()?;
        let boot_ms = parts.next()?.parse().ok()?;
        let boot_id = match parts.next().unwrap_or_default() {
            "-" => String::new(),
            id => id.to_owned(),
        };
        let moved_ms = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(ClockMark {
            unix_ms,
            boot_ms,
            boot_id,
            moved_ms,
        })
    }

    /// How far the wall clock stepped between `self` (left by the last run) and `now` beyond
    /// what the boot clock counted, if by more than [`STEP_MS`] (negative: back), within one
    /// boot: the boot clock tells exactly how long no portal ran. Across a reboot nothing is
    /// said: the boot clocks cannot be compared, and a clock that reads behind the mark there
    /// is as often one not synchronised yet (a hardware clock that drifted, read before NTP
    /// answered), which NTP then steps forward — taken as time that passed, a held step back
    /// would have ended every session early. A mark beyond any clock's reach (a damaged file)
    /// is no step.
    pub fn step_since(&self, now: &ClockMark) -> Option<i64> {
        const CENTURY_MS: i64 = 100 * 366 * 24 * 3_600_000;
        if now.boot_id.is_empty() || now.boot_id != self.boot_id {
            return None;
        }
        let by_wall = now.unix_ms.checked_sub(self.unix_ms)?;
        let by_boot = now.boot_ms.checked_sub(self.boot_ms)?;
        let step = by_wall.checked_sub(by_boot)?;
        let size = step.checked_abs()?;
        (size > STEP_MS && size < CENTURY_MS).then_some(step)
    }
}

/// A step back found at start-up ([`ClockMark::step_since`]): held from the process's time
/// as a step seen while serving is, until the clock task has moved the stored times with it
/// (its one line then says the step was made while no portal ran). Before any task that reads
/// the time starts.
pub fn hold_step_back(step_ms: i64) {
    HELD.fetch_add(step_ms.min(0), Ordering::SeqCst);
    FOUND_AT_START.store(step_ms.min(0), Ordering::SeqCst);
    SEEN.notify_one();
}

impl AccessSessions {
    /// The wall clock stepped by `step_ms`: what is under way keeps the real time it had left
    /// (where the stored times are this process's own). The sessions whose times moved when
    /// the process may follow the wall clock now (None: the stored times could not be moved,
    /// and stay in the old time line); once it does, [`Self::after_step`].
    /// `while_stopped`: the step was made while no portal ran, found at start-up by the lock
    /// file's mark.
    async fn clock_stepped(&self, step_ms: i64, while_stopped: bool) -> Option<Vec<i64>> {
        match self.storage.shift_times(step_ms).await {
            Ok(Some(moved)) => {
                if while_stopped {
                    tracing::warn!(step_ms, sessions = moved.len(),
                        "the system clock is behind the time the portal last served this database in (by the lock file beside it): taken as a step back made while no portal ran — the open sessions' times and the accounting waiting moved with it, so each keeps the real time it had left (keep the clock synchronised: NTP)");
                } else {
                    tracing::warn!(step_ms, sessions = moved.len(),
                        "the system clock stepped: the open sessions' times and the accounting waiting moved with it, so each keeps the real time it had left (keep the clock synchronised: NTP)");
                }
                Some(moved)
            }
            Ok(None) => {
                tracing::warn!(step_ms,
                    "the system clock stepped: the replicas share the sessions' times, so they stay as stored — a replica whose clock is off ends sessions early or late and dates their accounting wrongly: keep every replica's clock synchronised (NTP)");
                Some(Vec::new())
            }
            Err(e) => {
                crate::throttled!(error, step_ms, error = %e,
                    "the system clock stepped, and the open sessions' times could not be moved with it yet: this process keeps its time line until they are (will retry)");
                None
            }
        }
    }

    /// Once the process follows the wall clock after a step: the expiry and accounting look
    /// again (their waits were worked out by the clock before), open pages of the sessions
    /// whose times `moved` read their session again.
    fn after_step(&self, moved: Vec<i64>) {
        self.expiry_wake.due_at(i64::MIN);
        self.accounting.wake();
        for id in moved {
            self.events.publish(id);
        }
    }

    /// Reads the time at least every second (a step is seen by a reading) and moves the
    /// stored times by each step back seen, until `shutdown`. A step forward is taken as time
    /// that passed (a virtual machine paused, whose boot clock stood still with it, looks the
    /// same as a clock put right): the process follows the wall clock at once, and sessions
    /// whose time it covers end — late, never longer than they were given.
    pub async fn run_clock_watch(self, shutdown: CancellationToken) {
        loop {
            let _ = now_ms();
            let held = HELD.load(Ordering::SeqCst);
            let at_start = FOUND_AT_START.load(Ordering::SeqCst);
            if held >= 0 {
                // Nothing of a step found at start-up is held any more (a step forward seen
                // since made up for it: said below as what is left).
                FOUND_AT_START.store(0, Ordering::SeqCst);
            }
            if held > 0 {
                tracing::warn!(step_ms = held,
                    "the system clock stepped forward: taken as time that passed (sessions whose time it covers end now); keep the clock synchronised (NTP)");
                HELD.fetch_sub(held, Ordering::SeqCst);
                self.after_step(Vec::new());
            } else if held < 0 {
                // No expiry pass between the move and the process following the clock.
                let one_line = one_time_line(self.storage.moves_times_with_the_clock()).await;
                if let Some(moved) = self.clock_stepped(held, held == at_start).await {
                    FOUND_AT_START.store(0, Ordering::SeqCst);
                    let mut line = LINE.lock().unwrap_or_else(|p| p.into_inner());
                    HELD.fetch_sub(held, Ordering::SeqCst);
                    *line += held;
                    drop(line);
                    drop(one_line);
                    MOVED.notify_one();
                    self.after_step(moved);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = SEEN.notified() => {}
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{boot_identity_problem, unreadable_of, ClockMark, StepWatch};

    #[test]
    fn a_boot_id_that_cannot_be_read_is_said() {
        assert_eq!(boot_identity_problem(), None, "this host's /proc has both");
        let said = unreadable_of(&["/proc/uptime", "/nonexistent/boot_id"]).expect("said");
        assert!(
            said.starts_with("/nonexistent/boot_id cannot be read")
                && said.contains("ProcSubset=pid"),
            "{said}"
        );
    }

    fn mark(unix_ms: i64, boot_ms: i64, boot_id: &str) -> ClockMark {
        ClockMark {
            unix_ms,
            boot_ms,
            boot_id: boot_id.into(),
            moved_ms: 0,
        }
    }

    #[test]
    fn a_clock_put_back_while_no_portal_ran_is_a_step_back_since_the_mark_within_one_boot() {
        let left = mark(10_000_000, 500_000, "boot-a");
        assert_eq!(ClockMark::parse(&left.line()), Some(left.clone()));
        // One boot: ten minutes down, the clock an hour back: exactly the hour.
        let now = mark(10_000_000 - 3_600_000 + 600_000, 1_100_000, "boot-a");
        assert_eq!(left.step_since(&now), Some(-3_600_000));
        // Ten minutes down, no step: none; a step forward is said too (the start logs it,
        // and takes it as time that passed).
        assert_eq!(
            left.step_since(&mark(10_600_000, 1_100_000, "boot-a")),
            None
        );
        assert_eq!(
            left.step_since(&mark(20_600_000, 1_100_000, "boot-a")),
            Some(10_000_000)
        );
        // A mark written before the last move of the stored times (a kill -9 between the
        // move's write and the mark's next): read in the moved line, the step is not found
        // again.
        let moved = ClockMark {
            moved_ms: -3_600_000,
            ..now.clone()
        };
        let in_line = left.in_line_with(-3_600_000).unwrap();
        assert_eq!(in_line.unix_ms, 10_000_000 - 3_600_000);
        assert_eq!(in_line.step_since(&moved), None);
        assert_eq!(ClockMark::parse(&moved.line()), Some(moved.clone()));
        // A boot clock not read as the kernel's (no boot id): nothing is said.
        assert_eq!(
            mark(10_000_000, 500_000, "").step_since(&mark(1, 1, "")),
            None
        );
        // Another boot: nothing is said (a clock not synchronised yet reads behind as often).
        let rebooted = mark(10_000_000 - 3_300_000, 90_000, "boot-b");
        assert_eq!(left.step_since(&rebooted), None);
        // A second back is no step; nor is a mark from beyond any clock's reach.
        assert_eq!(left.step_since(&mark(9_999_000, 500_500, "boot-a")), None);
        assert_eq!(
            mark(i64::MAX, 500_000, "boot-a").step_since(&mark(10_000_000, 500_500, "boot-a")),
            None
        );
    }

    #[test]
    fn a_step_is_what_the_wall_clock_moved_beyond_the_boot_clock() {
        let mut watch = StepWatch::default();
        assert_eq!(watch.observe(1_000_000, 50_000), None, "a first reading");
        // A second on both, and a late tick (5 s on both): no step.
        assert_eq!(watch.observe(1_001_000, 51_000), None);
        assert_eq!(watch.observe(1_006_010, 56_000), None);
        // An hour back while a second passed.
        assert_eq!(
            watch.observe(1_006_010 - 3_600_000 + 1_000, 57_000),
            Some(-3_600_000)
        );
        // Ten minutes forward.
        assert_eq!(
            watch.observe(1_006_010 - 3_600_000 + 2_000 + 600_000, 58_000),
            Some(600_000)
        );
        // A suspend (both clocks moved on by an hour): no step.
        assert_eq!(
            watch.observe(
                1_006_010 - 3_600_000 + 2_000 + 600_000 + 3_600_000,
                3_658_000
            ),
            None
        );
    }
}
