//! A sign-in form submitted twice — a double click on "Sign in", the form sent again while the
//! first answer was on its way — opens one session, not two, and sends one Access-Request. The
//! sign-ins of one browser run one at a time; a sign-in the same browser made with the same
//! organization, name, password and address a few seconds ago, whose session still runs, is
//! answered with that session instead of a second Access-Request whose session would replace
//! it (a Stop and a Start for nothing, the user's firewall identity dropped and added again).
//! A submit that waited for the same sign-in while it failed gets its answer too: one
//! Access-Reject counted against the user's account on the server, not two; one wait for a
//! dead server, not one after the other. A submit made after the failure was answered (the
//! user tries again) is a sign-in of its own. Turns are per organization: a browser's sign-in
//! to one never waits for its sign-in to another (whose servers may be slow or dead).
//!
//! In memory, per process: two replicas behind a load balancer without affinity may still each
//! sign in (the second replaces the first, as before). Only a keyed digest of the password is
//! kept, for [`SAME_SUBMIT`].

use app::error::PortalError;
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// How long after a sign-in the same submit counts as the same.
pub const SAME_SUBMIT: Duration = Duration::from_secs(10);

/// A browser's last sign-in and how it ended.
#[derive(Clone, Debug)]
pub struct Recent {
    digest: [u8; 32],
    outcome: Outcome,
    at: Instant,
    /// The session its last sign-in that opened one opened (maybe this one), in which
    /// organization, and when.
    last_opened: Option<(String, i64, Instant)>,
}

#[derive(Clone, Debug)]
enum Outcome {
    /// It opened this session.
    Opened(i64),
    /// It was answered with this error.
    Failed(PortalError),
}

type Slot = Arc<AsyncMutex<Option<Recent>>>;

/// How long a browser whose sign-in's answer never reached it (the request dropped: the user
/// gave up on a slow server and reloaded) is shown that sign-in's session when it comes back.
pub const ADOPT_WITHIN: Duration = Duration::from_secs(600);

/// Most sign-ins kept for their browsers' return ([`RecentSignIns::unanswered`]); beyond, the
/// oldest go (each a few hundred bytes).
const MAX_UNANSWERED: usize = 65_536;

/// A sign-in whose answer never reached its browser: the session it opened, linked to a web
/// session whose cookie the browser never got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unanswered {
    /// The access session it opened.
    pub session_id: i64,
    /// The name typed into its form.
    pub typed: String,
    /// The web session it linked (its cookie never arrived): what the browser held then, its
    /// links to other organizations' sessions too, is the browser's again when it comes back.
    pub web_session: Option<tower_sessions::session::Id>,
    at: Instant,
}

/// How long a browser whose sign-in failed after it gave up on it (reloaded the page while
/// the server was slow) is told of that failure on its sign-in page: as long as a failed form
/// post's error is shown (`http::flash`).
pub const FAILURE_SHOWN_WITHIN: Duration = Duration::from_secs(60);

/// Most failures kept for their browsers' next sign-in page ([`RecentSignIns::failed_unanswered`]):
/// their own bound, so a flood of sign-ins dropped on purpose never pushes out a session kept for
/// a browser's return.
const MAX_UNTOLD_FAILURES: usize = 16_384;

/// A failed sign-in whose answer never reached its browser: the error and the name typed.
#[derive(Clone, Debug)]
struct UntoldFailure {
    error: PortalError,
    typed: String,
}

/// Values kept per browser and organization for a while, the oldest going first when they
/// are past their time or beyond the most kept: the keys in the order they came, with when.
struct KeptForReturn<T> {
    by_browser: HashMap<String, (T, Instant)>,
    order: std::collections::VecDeque<(String, Instant)>,
    within: Duration,
    most: usize,
}

impl<T> KeptForReturn<T> {
    fn new(within: Duration, most: usize) -> Self {
        KeptForReturn {
            by_browser: HashMap::new(),
            order: std::collections::VecDeque::new(),
            within,
            most,
        }
    }

    /// Keeps `value` for `key`, from `at` (in place of what the key held). The bound counts
    /// what is kept, not the order's entries: a value taken and kept again (a browser's
    /// adoption tried from another address, put back) leaves a second entry of the same key
    /// there, and a flood of those must not push out other browsers' values (reviewer). The
    /// order is compacted when such entries make it twice the bound.
    fn keep(&mut self, key: String, value: T, at: Instant) {
        let now = Instant::now();
        while let Some((old, old_at)) = self.order.front().cloned() {
            if now.duration_since(old_at) < self.within && self.by_browser.len() < self.most {
                break;
            }
            self.order.pop_front();
            // Unless it was kept again since.
            if self
                .by_browser
                .get(&old)
                .is_some_and(|(_, at)| *at == old_at)
            {
                self.by_browser.remove(&old);
            }
        }
        self.order.push_back((key.clone(), at));
        self.by_browser.insert(key, (value, at));
        if self.order.len() > 2 * self.most {
            let mut seen = std::collections::HashSet::new();
            let by_browser = &self.by_browser;
            self.order.retain(|(key, at)| {
                by_browser.get(key).is_some_and(|(_, kept)| kept == at) && seen.insert(key.clone())
            });
        }
    }

    /// What `key` holds, taken, if it is still within its time.
    fn take(&mut self, key: &str) -> Option<(T, Instant)> {
        let within = self.within;
        self.by_browser
            .remove(key)
            .filter(|(_, at)| at.elapsed() < within)
    }

    fn holds(&self, key: &str) -> bool {
        self.by_browser
            .get(key)
            .is_some_and(|(_, at)| at.elapsed() < self.within)
    }
}

/// The browsers' recent sign-ins. Cheap to share (an `Arc` of it).
pub struct RecentSignIns {
    slots: Mutex<Slots>,
    /// Sign-ins whose answer never reached the browser, by browser and organization
    /// (lower-case), for the browser's return: those that opened a session, and those that
    /// failed (each store its own bound).
    unanswered: Mutex<KeptForReturn<Unanswered>>,
    untold_failures: Mutex<KeptForReturn<UntoldFailure>>,
    /// Keys the digests (a digest is useless outside this process).
    key: [u8; 32],
    /// Sign-ins waiting for their browser's turn.
    waiting: AtomicUsize,
}

struct Slots {
    by_browser: HashMap<String, Slot>,
    /// The map is pruned when it reaches this many entries (then twice what is left, so the
    /// work stays in proportion to the sign-ins).
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 1024;

/// A browser's turn to sign in: held until its sign-in is done.
pub struct Turn {
    guard: OwnedMutexGuard<Option<Recent>>,
    digest: [u8; 32],
    /// The organization signed in to.
    org: String,
    /// When this sign-in asked for its turn.
    asked: Instant,
}

impl Turn {
    /// The session of the same sign-in made a moment ago by this browser, if any (the caller
    /// checks that it still runs).
    pub fn same_as_recent(&self) -> Option<i64> {
        match self.same()? {
            Recent {
                outcome: Outcome::Opened(id),
                at,
                ..
            } if at.elapsed() < SAME_SUBMIT => Some(*id),
            _ => None,
        }
    }

    /// The answer of the same sign-in that failed while this one waited for its turn, if any.
    pub fn failed_while_waiting(&self) -> Option<PortalError> {
        match self.same()? {
            Recent {
                outcome: Outcome::Failed(error),
                at,
                ..
            } if *at > self.asked => Some(error.clone()),
            _ => None,
        }
    }

    /// The session this browser's sign-in to the same organization opened while this one
    /// waited for its turn, or a moment before ([`SAME_SUBMIT`]) — from another address, or
    /// with another name: a sign-in this one replaces, which the web session this request
    /// read may not show yet (the two sent together, each with the cookie the browser had).
    pub fn opened_lately(&self) -> Option<i64> {
        let (org, id, at) = self.guard.as_ref()?.last_opened.as_ref()?;
        (*org == self.org && (*at > self.asked || at.elapsed() < SAME_SUBMIT)).then_some(*id)
    }

    fn same(&self) -> Option<&Recent> {
        self.guard.as_ref().filter(|r| r.digest == self.digest)
    }

    /// This sign-in opened `session_id`.
    pub fn opened(self, session_id: i64) {
        self.ended(Outcome::Opened(session_id));
    }

    /// This sign-in was answered with `error`.
    pub fn failed(self, error: &PortalError) {
        self.ended(Outcome::Failed(error.clone()));
    }

    fn ended(mut self, outcome: Outcome) {
        let at = Instant::now();
        let last_opened = match outcome {
            Outcome::Opened(id) => Some((std::mem::take(&mut self.org), id, at)),
            Outcome::Failed(_) => self.guard.take().and_then(|r| r.last_opened),
        };
        *self.guard = Some(Recent {
            digest: self.digest,
            outcome,
            at,
            last_opened,
        });
    }
}

impl Default for RecentSignIns {
    fn default() -> Self {
        RecentSignIns {
            slots: Mutex::new(Slots {
                by_browser: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
            unanswered: Mutex::new(KeptForReturn::new(ADOPT_WITHIN, MAX_UNANSWERED)),
            untold_failures: Mutex::new(KeptForReturn::new(
                FAILURE_SHOWN_WITHIN,
                MAX_UNTOLD_FAILURES,
            )),
            key: rand::random(),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// A browser's key in organization `org`: ids are ASCII, alike in any letter case.
fn browser_org_key(browser: &str, org: &str) -> String {
    format!("{browser}\u{1}{}", org.to_ascii_lowercase())
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RecentSignIns {
    /// Waits for `browser`'s turn to sign in to `org` as `username` with `password` from `ip`:
    /// its sign-in to `org` under way, if any.
    pub async fn turn(
        &self,
        browser: &str,
        org: &str,
        username: &str,
        ip: IpAddr,
        password: &str,
    ) -> Turn {
        let mut hash = Sha256::new();
        hash.update(self.key);
        for part in [
            org.as_bytes(),
            username.as_bytes(),
            ip.to_string().as_bytes(),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.update(password.as_bytes());
        let digest: [u8; 32] = hash.finalize().into();
        let slot = self.slot(&browser_org_key(browser, org));
        let asked = Instant::now();
        let guard = match slot.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                // Counted down also when the request is dropped while waiting.
                let _counted = Waiting(&self.waiting);
                slot.lock_owned().await
            }
        };
        Turn {
            guard,
            digest,
            org: org.to_owned(),
            asked,
        }
    }

    /// `browser`'s sign-in to `org` opened session `session_id`, and its answer never reached
    /// the browser (its request was dropped: the browser went away, or its user gave up and
    /// reloaded): the browser is shown that session when it comes back ([`Self::adopt`]) —
    /// within [`ADOPT_WITHIN`], from this process.
    pub fn unanswered(
        &self,
        (browser, org): (&str, &str),
        session_id: i64,
        typed: &str,
        web_session: Option<tower_sessions::session::Id>,
    ) {
        let at = Instant::now();
        self.put_back(
            browser,
            org,
            Unanswered {
                session_id,
                typed: typed.to_owned(),
                web_session,
                at,
            },
        );
    }

    /// Keeps `unanswered` again (its time unchanged): [`Self::adopt`] took it, and it was
    /// not for that request (another address) or could not be linked.
    pub fn put_back(&self, browser: &str, org: &str, unanswered: Unanswered) {
        let key = browser_org_key(browser, org);
        // A failure kept for the same browser's page is older news than this session.
        self.untold_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&key);
        let at = unanswered.at;
        self.unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keep(key, unanswered, at);
    }

    /// Whether there is news of a sign-in to `org` for a browser coming back as `back` (its
    /// [`Self::adopt`] key) — kept for it, or (as `browser`, its turn's key, if given: a page
    /// that would wait for it) under way now.
    pub fn news_for(&self, back: &str, browser: Option<&str>, org: &str) -> bool {
        let kept = self
            .unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holds(&browser_org_key(back, org));
        kept || browser.is_some_and(|browser| {
            self.slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_browser
                .get(&browser_org_key(browser, org))
                .is_some_and(|slot| slot.try_lock().is_err())
        })
    }

    /// The sign-in to `org` whose answer never reached `browser`, if one is kept (taken: a
    /// browser adopts it once; [`Self::put_back`] keeps it again if that fails).
    pub fn adopt(&self, browser: &str, org: &str) -> Option<Unanswered> {
        self.unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&browser_org_key(browser, org))
            .map(|(unanswered, _)| unanswered)
    }

    /// `browser`'s sign-in to `org` with the name `typed` failed with `error`, and its answer
    /// never reached the browser (its user gave up on a slow server and reloaded): the
    /// browser's next sign-in page says so ([`Self::failure_untold`]), within
    /// [`FAILURE_SHOWN_WITHIN`] — rather than a plain form that says nothing of the sign-in
    /// the user waited for (black-box tester U2's D2). Not while a session is kept for the
    /// browser's return (what it is shown then is that session).
    pub fn failed_unanswered(
        &self,
        (browser, org): (&str, &str),
        error: &PortalError,
        typed: &str,
    ) {
        let key = browser_org_key(browser, org);
        if self
            .unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holds(&key)
        {
            return;
        }
        let failure = UntoldFailure {
            error: error.clone(),
            typed: typed.to_owned(),
        };
        self.untold_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keep(key, failure, Instant::now());
    }

    /// The failure of `browser`'s sign-in to `org` whose answer never reached it, with the
    /// name typed, if one is kept from the last [`FAILURE_SHOWN_WITHIN`] (taken: told once).
    pub fn failure_untold(&self, browser: &str, org: &str) -> Option<(PortalError, String)> {
        let mut kept = self
            .untold_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if kept.by_browser.is_empty() {
            // Every sign-in page asks: no key made when nothing is kept.
            return None;
        }
        kept.take(&browser_org_key(browser, org))
            .map(|(failure, _)| (failure.error, failure.typed))
    }

    /// Forgets the untold failure of `browser`'s sign-in to `org`, if any: the browser signs
    /// in again, and what that sign-in answers is what its page says.
    pub fn forget_failure(&self, browser: &str, org: &str) {
        let _ = self.failure_untold(browser, org);
    }

    /// Waits, for at most `limit`, until `browser`'s sign-in to `org` under way, if any, is
    /// done (its session linked, or its failure known): a page it reloads meanwhile then shows
    /// what the sign-in did, not a sign-in form beside a session opening.
    pub async fn under_way_done(&self, browser: &str, org: &str, limit: Duration) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_browser
            .get(&browser_org_key(browser, org))
            .cloned();
        if let Some(slot) = slot {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _counted = Waiting(&self.waiting);
            let _ = tokio::time::timeout(limit, slot.lock()).await;
        }
    }

    /// Sign-ins (and pages: [`Self::under_way_done`]) waiting for their browser's sign-in
    /// under way.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn slot(&self, browser: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.by_browser.get(browser) {
            return slot.clone();
        }
        if slots.by_browser.len() >= slots.prune_at {
            // Kept: a slot someone holds or waits for, and a recent sign-in.
            slots.by_browser.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().map_or(true, |recent| {
                        recent
                            .as_ref()
                            .is_some_and(|r| r.at.elapsed() < SAME_SUBMIT)
                    })
            });
            slots.prune_at = (slots.by_browser.len() * 2).max(MIN_PRUNE_AT);
        }
        slots
            .by_browser
            .entry(browser.to_string())
            .or_default()
            .clone()
    }

    /// Browsers remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_browser
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[tokio::test]
    async fn the_same_submit_of_a_browser_finds_the_first_ones_session() {
        let recent = RecentSignIns::default();
        let first = recent.turn("b1", "acme", "carol", IP, "pw").await;
        assert_eq!(first.same_as_recent(), None);
        first.opened(7);
        let again = recent.turn("b1", "acme", "carol", IP, "pw").await;
        assert_eq!(again.same_as_recent(), Some(7));
        drop(again);
        // Anything else differs: another password, name, organization, address or browser.
        for (browser, org, user, ip, pw) in [
            ("b1", "acme", "carol", IP, "other"),
            ("b1", "acme", "erin", IP, "pw"),
            ("b1", "beta", "carol", IP, "pw"),
            (
                "b1",
                "acme",
                "carol",
                IpAddr::V4([10, 0, 0, 2].into()),
                "pw",
            ),
            ("b2", "acme", "carol", IP, "pw"),
        ] {
            let turn = recent.turn(browser, org, user, ip, pw).await;
            assert_eq!(
                turn.same_as_recent(),
                None,
                "{browser} {org} {user} {ip} {pw}"
            );
        }
    }

    #[tokio::test]
    async fn a_browsers_sign_ins_take_turns() {
        let recent = Arc::new(RecentSignIns::default());
        let first = recent.turn("b1", "acme", "carol", IP, "pw").await;
        let waiting = tokio::spawn({
            let recent = recent.clone();
            async move {
                recent
                    .turn("b1", "acme", "carol", IP, "pw")
                    .await
                    .same_as_recent()
            }
        });
        // The current-thread runtime runs the spawned sign-in now, up to its wait for the turn.
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "it waits for the first sign-in's turn"
        );
        // Another browser is not held up meanwhile, nor this one's sign-in to another
        // organization; the same organization in other letter case is.
        drop(recent.turn("b2", "acme", "carol", IP, "pw").await);
        let spawned = |org: &'static str| {
            let recent = recent.clone();
            tokio::spawn(async move { drop(recent.turn("b1", org, "carol", IP, "pw").await) })
        };
        let (elsewhere, same) = (spawned("beta"), spawned("ACME"));
        tokio::task::yield_now().await;
        assert!(
            elsewhere.is_finished(),
            "another organization's turn is its own"
        );
        assert!(
            !same.is_finished(),
            "the same organization in other letters waits"
        );
        first.opened(9);
        assert_eq!(waiting.await.unwrap(), Some(9), "waited for the first");
        same.await.unwrap();
    }

    /// A sign-in that waited for the browser's sign-in from another address (or with another
    /// name) learns the session that one opened — in the same organization, also when a sign-in
    /// between failed — so it replaces it.
    #[tokio::test]
    async fn a_sign_in_learns_the_session_the_one_before_it_opened() {
        let recent = Arc::new(RecentSignIns::default());
        let other_ip = IpAddr::V4([10, 0, 0, 2].into());
        let first = recent.turn("b1", "acme", "carol", IP, "pw").await;
        assert_eq!(first.opened_lately(), None);
        // The store follows a replacement made within the same time (`replaced_by`).
        assert_eq!(
            SAME_SUBMIT.as_millis() as i64,
            crate::storage::FOLLOWED_REPLACEMENT_MS
        );
        let waiting = tokio::spawn({
            let recent = recent.clone();
            async move {
                recent
                    .turn("b1", "acme", "carol", other_ip, "pw")
                    .await
                    .opened_lately()
            }
        });
        tokio::task::yield_now().await;
        first.opened(11);
        assert_eq!(waiting.await.unwrap(), Some(11));
        let failing = recent.turn("b1", "acme", "erin", IP, "pw").await;
        assert_eq!(failing.opened_lately(), Some(11));
        failing.failed(&PortalError::Rejected { message: None });
        let next = recent.turn("b1", "acme", "carol", other_ip, "pw").await;
        assert_eq!(next.opened_lately(), Some(11), "kept past a failure");
        drop(next);
        let elsewhere = recent.turn("b1", "beta", "carol", IP, "pw").await;
        assert_eq!(elsewhere.opened_lately(), None, "another organization's");
        drop(elsewhere);
        let other_browser = recent.turn("b2", "acme", "carol", IP, "pw").await;
        assert_eq!(other_browser.opened_lately(), None);
    }

    #[tokio::test]
    async fn a_submit_that_waited_for_the_same_failed_sign_in_gets_its_answer() {
        let recent = Arc::new(RecentSignIns::default());
        let first = recent.turn("b1", "acme", "carol", IP, "pw").await;
        let wait = |password: &'static str| {
            let recent = recent.clone();
            tokio::spawn(async move {
                let turn = recent.turn("b1", "acme", "carol", IP, password).await;
                (turn.failed_while_waiting(), turn.same_as_recent())
            })
        };
        let same = wait("pw");
        // The current-thread runtime runs the spawned sign-in up to its wait for the turn.
        tokio::task::yield_now().await;
        assert_eq!(recent.waiting(), 1);
        let rejected = PortalError::Rejected {
            message: Some("Bad password".into()),
        };
        first.failed(&rejected);
        assert_eq!(same.await.unwrap(), (Some(rejected.clone()), None));
        assert_eq!(recent.waiting(), 0);

        // Asked after the failure was answered: the user tries again, a sign-in of its own.
        let again = recent.turn("b1", "acme", "carol", IP, "pw").await;
        assert_eq!(again.failed_while_waiting(), None);
        // Another password waiting meanwhile is a sign-in of its own too.
        let other = wait("other");
        tokio::task::yield_now().await;
        again.failed(&rejected);
        assert_eq!(other.await.unwrap(), (None, None));
    }

    #[tokio::test]
    async fn a_sign_in_dropped_while_waiting_is_no_longer_counted() {
        let recent = Arc::new(RecentSignIns::default());
        let first = recent.turn("b1", "acme", "carol", IP, "pw").await;
        let waiting = tokio::spawn({
            let recent = recent.clone();
            async move { drop(recent.turn("b1", "acme", "carol", IP, "pw").await) }
        });
        tokio::task::yield_now().await;
        assert_eq!(recent.waiting(), 1);
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(recent.waiting(), 0);
        drop(first);
    }

    #[tokio::test]
    async fn browsers_without_a_recent_sign_in_are_let_go() {
        let recent = RecentSignIns::default();
        for n in 0..3 * MIN_PRUNE_AT {
            // Sign-ins that opened nothing.
            drop(recent.turn(&format!("b{n}"), "acme", "u", IP, "pw").await);
        }
        assert!(recent.len() <= MIN_PRUNE_AT, "{}", recent.len());
    }

    #[test]
    fn a_value_taken_and_kept_again_many_times_pushes_out_no_other() {
        let mut kept = KeptForReturn::new(Duration::from_secs(60), 4);
        let at = Instant::now();
        for key in ["b1", "b2", "b3"] {
            kept.keep(key.into(), key, at);
        }
        // One browser's adoption tried again and again from another address.
        for _ in 0..100 {
            let (value, at) = kept.take("b1").expect("kept");
            kept.keep("b1".into(), value, at);
        }
        assert!(kept.holds("b2") && kept.holds("b3") && kept.holds("b1"));
        assert!(kept.order.len() <= 2 * 4 + 1, "{}", kept.order.len());
        // Beyond the bound the oldest goes.
        kept.keep("b4".into(), "b4", Instant::now());
        kept.keep("b5".into(), "b5", Instant::now());
        assert_eq!(kept.by_browser.len(), 4);
        assert!(kept.holds("b5"));
    }

    #[test]
    fn an_unanswered_failure_is_told_once_and_never_hides_a_session_kept() {
        let recent = RecentSignIns::default();
        let refused = PortalError::Rejected { message: None };
        recent.failed_unanswered(("b1", "acme"), &refused, "carol");
        // Not a session to adopt; left for the sign-in page, in its organization only.
        assert_eq!(recent.adopt("b1", "acme"), None);
        assert!(recent.failure_untold("b1", "beta").is_none());
        assert!(recent.failure_untold("b2", "acme").is_none());
        let (error, typed) = recent.failure_untold("b1", "acme").expect("told");
        assert!(matches!(error, PortalError::Rejected { .. }), "{error:?}");
        assert_eq!(typed, "carol");
        assert!(recent.failure_untold("b1", "acme").is_none(), "told once");

        // A session kept for the browser stays kept: a later failure does not replace it.
        recent.unanswered(("b2", "acme"), 7, "carol", None);
        recent.failed_unanswered(("b2", "acme"), &refused, "carol");
        assert!(recent.failure_untold("b2", "acme").is_none());
        assert_eq!(recent.adopt("b2", "acme").map(|u| u.session_id), Some(7));

        // Forgotten when the browser signs in again.
        recent.failed_unanswered(("b3", "acme"), &refused, "carol");
        recent.forget_failure("b3", "acme");
        assert!(recent.failure_untold("b3", "acme").is_none());
    }
}
