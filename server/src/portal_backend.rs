//! The one place that joins the UI's interface ([`app::service::PortalService`]) to the server's
//! services: it reads the web session and client address from the request, validates input, calls
//! the access-session lifecycle, and turns its errors into the safe, user-facing
//! [`PortalError`] (logging the cause). Nothing else in the server produces user-facing errors.

use crate::{
    access_session::{now_ms, timing, AccessSessions, SessionError},
    config::RateLimitSettings,
    http::web_session::SavedDuringRequest,
    http::LONGEST_WINDOW_KEY,
    http::{
        client_ip::ClientIp,
        form_token::{AnonId, FormTokens},
        org_scope::{base_of, OrgScope},
        rate_limit::{client_key, RateLimiter},
    },
    organizations::Organizations,
    storage::AccessSessionRecord,
};
use app::{
    dto::{BrandingInfo, EndReason, EndsBy, SessionStatus, SessionView, SiteInfo},
    error::PortalError,
    service::{LoginInput, PortalService},
    validation,
};
use http::{request::Parts, StatusCode};
use std::{net::IpAddr, sync::Arc};
use tower_sessions::Session;
use tracing::Instrument as _;

/// Web-session key holding the access session's row id in organization `org`: one per
/// organization, so a login in one organization's portal never touches another's session.
pub fn access_session_key(org: &str) -> String {
    format!("access_session_id:{org}")
}
/// Web-session key holding the browser's session in organization `org` with the name typed into
/// the sign-in form that opened it (`(id, name)`): an out-of-date form sent again with that name
/// is the same sign-in, also when the RADIUS server answered with a User-Name of its own. Kept
/// with the session's id, so that a name left behind (by a replica of an earlier release, which
/// neither writes nor removes it) never counts for another session.
fn typed_name_key(org: &str) -> String {
    format!("signed_in_as:{org}")
}
/// Web-session key holding the form (CSRF) token of organization `org`'s pages: one per
/// organization, so a sign-in in one organization's portal (which replaces its token) never
/// makes another organization's open page out of date.
fn form_token_key(org: &str) -> String {
    format!("{LEGACY_FORM_TOKEN_KEY}:{org}")
}
/// The web session's latest sign-in's form token, whichever organization's: what portals before
/// tokens per organization read and wrote as the only one. Still written at each sign-in and
/// accepted beside the organization's own, so that replicas of both kinds serve one browser
/// during a rolling update, and a page from before the update goes on working.
const LEGACY_FORM_TOKEN_KEY: &str = "form_token";

/// Whether a web-session key holds a form token (of an organization, or the legacy one).
fn is_form_token_key(key: &str) -> bool {
    key == LEGACY_FORM_TOKEN_KEY
        || key
            .strip_prefix(LEGACY_FORM_TOKEN_KEY)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// Links the browser's web session to `session` of organization `org` after a sign-in. A new
/// sign-in gets a new web-session id (no fixation) and a new form token for that organization's
/// pages (another organization's open page keeps its own). A browser without one
/// gets a fresh id when the session is first saved; rotating would only delete a random id
/// that was never stored (a write per login). Stored before the answer: a browser that is told
/// its sign-in failed must not leave an access session behind that it can neither see nor end.
///
/// Always run to its end (inside a sign-in's, or [`link_to_end`]): a request dropped between
/// the rotation, which deletes the old record, and the save would leave the browser with neither.
async fn link_web_session(
    saved: Option<&SavedDuringRequest>,
    web: &Session,
    (org, typed): (&str, &str),
    session: &AccessSessionRecord,
) -> Result<(), tower_sessions::session::Error> {
    if web.id().is_some() {
        web.cycle_id().await?;
    }
    let token = random_token();
    web.insert(&form_token_key(org), &token).await?;
    web.insert(LEGACY_FORM_TOKEN_KEY, token).await?;
    web.insert(&access_session_key(org), session.id).await?;
    web.insert(&typed_name_key(org), (session.id, typed))
        .await?;
    keep_link_for(web, session.window_ms).await?;
    crate::http::web_session::save_now(saved, web).await
}

/// The form tokens the web session holds for organization `org`'s pages: its own, and the
/// latest sign-in's ([`LEGACY_FORM_TOKEN_KEY`]). The first is what its pages are rendered with.
async fn stored_form_tokens(web: &Session, org: &str) -> Result<Vec<String>, PortalError> {
    let read =
        |e: tower_sessions::session::Error| web_session_failed("reading the web session", &e);
    let own = web
        .get::<String>(&form_token_key(org))
        .await
        .map_err(read)?;
    let latest = web
        .get::<String>(LEGACY_FORM_TOKEN_KEY)
        .await
        .map_err(read)?;
    Ok(own.into_iter().chain(latest).collect())
}

/// [`link_web_session`] to its end, even if the request is dropped meanwhile (see
/// [`AccessSessions::run_to_end`]).
async fn link_to_end(
    sessions: &AccessSessions,
    saved: Option<SavedDuringRequest>,
    web: &Session,
    (org, typed): (&str, &str),
    session: &AccessSessionRecord,
) -> Result<(), tower_sessions::session::Error> {
    let (web, org, typed, session) = (
        web.clone(),
        org.to_owned(),
        typed.to_owned(),
        session.clone(),
    );
    sessions
        .run_to_end(
            async move { link_web_session(saved.as_ref(), &web, (&org, &typed), &session).await }
                .in_current_span(),
        )
        .await
}

/// Sets the web session's inactivity deadline for an access session of window `window_ms`
/// linked to it (signed in or refreshed): from the longest window of those it has been linked
/// to, in whichever organization, so that a sign-in or refresh in one organization never
/// shortens the link a longer session of another needs.
async fn keep_link_for(
    web: &Session,
    window_ms: i64,
) -> Result<(), tower_sessions::session::Error> {
    let longest = web.get::<i64>(LONGEST_WINDOW_KEY).await?.unwrap_or(0);
    if window_ms > longest {
        web.insert(LONGEST_WINDOW_KEY, window_ms).await?;
    }
    web.set_expiry(Some(crate::http::web_session_expiry(
        window_ms.max(longest),
    )));
    Ok(())
}

/// Implementation of the UI's service interface.
pub struct PortalBackend {
    sessions: AccessSessions,
    organizations: Arc<Organizations>,
    /// Under `radius-portal demo`: pages show a DEMO banner.
    demo: bool,
    /// Login attempts per client IP (IPv6: per network of `ipv6_prefix`).
    per_ip: RateLimiter<IpAddr>,
    /// The same for sign-ins to an organization this process knows disabled: those attempts
    /// are refused by the guard, and never use up the address's attempts at the other
    /// organizations (users of another organization behind the same NAT: black-box tester
    /// S's D2).
    per_ip_disabled: RateLimiter<IpAddr>,
    ipv6_prefix: u8,
    /// Login attempts per (organization, lower-cased username).
    per_user: RateLimiter<(String, String)>,
    /// Signs anonymous visitors' form tokens.
    form_tokens: FormTokens,
    /// Sign-in outcomes.
    metrics: crate::metrics::Metrics,
    /// The web sessions' store (what a web session holds as stored); None: a web session is
    /// never deleted at sign-out.
    web_sessions: Option<crate::storage::web_sessions::WebSessionStore>,
    /// Each browser's last sign-in, so the same form submitted twice opens one session.
    recent_sign_ins: Arc<crate::http::resubmit::RecentSignIns>,
    /// Places for the sign-ins under way ([`MAX_SIGN_INS_UNDER_WAY`]).
    sign_ins_under_way: Arc<tokio::sync::Semaphore>,
}

impl PortalBackend {
    /// Wires the backend.
    pub fn new(
        sessions: AccessSessions,
        organizations: Arc<Organizations>,
        limits: &RateLimitSettings,
        form_tokens: FormTokens,
        demo: bool,
    ) -> Self {
        PortalBackend {
            sessions,
            organizations,
            demo,
            per_ip: RateLimiter::new(limits.login_per_ip, limits.period),
            per_ip_disabled: RateLimiter::new(limits.login_per_ip, limits.period),
            ipv6_prefix: limits.ipv6_prefix,
            per_user: RateLimiter::new(limits.login_per_user, limits.period),
            form_tokens,
            metrics: crate::metrics::Metrics::default(),
            web_sessions: None,
            recent_sign_ins: Arc::default(),
            sign_ins_under_way: Arc::new(tokio::sync::Semaphore::new(MAX_SIGN_INS_UNDER_WAY)),
        }
    }

    /// Each browser's last sign-in (tests: how many wait for their browser's turn).
    pub fn recent_sign_ins(&self) -> Arc<crate::http::resubmit::RecentSignIns> {
        self.recent_sign_ins.clone()
    }

    /// Counts sign-in outcomes in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Lets sign-out delete a web session left with nothing (see [`forget_access_session`]).
    pub fn with_web_sessions(
        mut self,
        store: crate::storage::web_sessions::WebSessionStore,
    ) -> Self {
        self.web_sessions = Some(store);
        self
    }

    /// Counts a sign-in attempt of `username` at organization `org_id` from `ip` against both
    /// limits (the per-username one by the account a username names, [`account_of`]);
    /// `disabled`: the organization is disabled as this process knows it — its own bucket per
    /// address, and a refusal says the organization is disabled (waiting would not change the
    /// answer).
    fn check_rate(
        &self,
        (org_id, disabled): (&str, bool),
        username: &str,
        ip: IpAddr,
    ) -> Result<(), PortalError> {
        let now = std::time::Instant::now();
        let user_key = (org_id.to_string(), account_of(username));
        let ip_key = client_key(ip, self.ipv6_prefix);
        let per_ip = self.address_limit(disabled);
        // Both limits or neither (an attempt one refuses costs the other nothing); each logs on
        // its own line: a flood from one address must not hide the guessing of one account's
        // password from many.
        crate::http::rate_limit::check_both((per_ip, &ip_key), (&self.per_user, &user_key), now)
            .map_err(|(by_address, by_username, wait)| {
            if disabled {
                // Not audited, as any refusal by the limits (a flood writes nothing).
                crate::throttled!(info, organization = org_id, %ip,
                    "sign-in to a disabled organization refused without a look at the database: too many from this address or with this username");
                return PortalError::OrganizationDisabled;
            }
            if by_address {
                crate::throttled!(warn, organization = org_id, username, %ip, "login rate limited: too many sign-ins from this address");
            }
            if by_username {
                crate::throttled!(warn, organization = org_id, username, %ip, "login rate limited: too many sign-ins with this username");
            }
            PortalError::RateLimited {
                retry_after_secs: wait.as_secs() + 1,
            }
        })
    }

    /// [`Self::check_rate`]'s limit of the address alone (a disabled organization's refusal is
    /// the disable, as there: waiting would not change the answer).
    fn check_address_rate(&self, disabled: bool, ip: IpAddr) -> Result<(), PortalError> {
        self.address_limit(disabled)
            .check(&client_key(ip, self.ipv6_prefix), std::time::Instant::now())
            .map_err(|wait| {
                if disabled {
                    return PortalError::OrganizationDisabled;
                }
                crate::throttled!(warn, %ip, "the same sign-in sent again too often from this address: refused");
                PortalError::RateLimited {
                    retry_after_secs: wait.as_secs() + 1,
                }
            })
    }

    /// Gives back the attempt [`Self::check_rate`] took (both limits).
    fn give_back_rate(&self, (org_id, disabled): (&str, bool), username: &str, ip: IpAddr) {
        self.give_back_address_rate(disabled, ip);
        self.per_user
            .give_back(&(org_id.to_string(), account_of(username)));
    }

    /// Gives back the attempt [`Self::check_address_rate`] just took.
    fn give_back_address_rate(&self, disabled: bool, ip: IpAddr) {
        self.address_limit(disabled)
            .give_back(&client_key(ip, self.ipv6_prefix));
    }

    /// The per-address limit of sign-ins to an organization enabled or `disabled` (each its
    /// own: a disabled one's never use up the address's attempts at the others).
    fn address_limit(&self, disabled: bool) -> &RateLimiter<IpAddr> {
        if disabled {
            &self.per_ip_disabled
        } else {
            &self.per_ip
        }
    }

    fn view(&self, s: &AccessSessionRecord) -> SessionView {
        let organization = self
            .organizations
            .get(&s.organization_id)
            .map(|o| o.name.clone())
            .unwrap_or_else(|| s.organization_id.clone());
        // What a Refresh would give, and which end is the session's: the organization's
        // settings of now count (a `max_lifetime` changed since the sign-in), as for
        // `can_extend`.
        let (window_ms, limit_at) = self
            .sessions
            .next_terms(s)
            .map_or((s.window_ms, s.limit_at), |t| (t.window_ms, t.limit_at));
        let ends_by = timing::ends_by(s.expires_at, limit_at);
        SessionView {
            username: s.username.clone(),
            organization,
            client_ip: s.client_ip.clone(),
            remaining_ms: (s.expires_at - now_ms()).max(0) as u64,
            ends_by,
            ends_at_utc: utc_clock(s.expires_at, now_ms()),
            ends_at_ms: s.expires_at,
            reply_message: s.reply_message.clone(),
            window_secs: (window_ms / 1000) as u64,
            window_text: app::islands::session_panel::format_length((window_ms / 1000) as u64),
            can_extend: self.sessions.can_extend(s),
            refresh_reaches_limit_in_ms: limit_at
                .map(|limit| (limit - window_ms - now_ms()).max(0) as u64),
            base: base_of(&self.organizations, &s.organization_id),
            refresh_changed_nothing: false,
            session_ref: self.session_ref(s.id),
        }
    }

    /// [`SessionView::session_ref`] of access session `id`: the id and a MAC of it under the
    /// portal's key (every replica's), so a page can name only a session it was shown.
    fn session_ref(&self, id: i64) -> String {
        format!("{id}.{}", &self.session_ref_mac(id)[..32])
    }

    fn session_ref_mac(&self, id: i64) -> String {
        self.form_tokens
            .sign(b"radius-portal session ref\0", id.to_string().as_bytes())
    }

    /// The access session a [`SessionView::session_ref`] names, if it is one this portal signed.
    fn shown_session(&self, session_ref: &str) -> Option<i64> {
        let (id, mac) = session_ref.split_once('.')?;
        let id: i64 = id.parse().ok()?;
        // Compared as form tokens are (no early exit): a MAC guessed byte by byte from the
        // answer's time would let a page name any session.
        tokens_match(&self.session_ref_mac(id)[..32], mac).then_some(id)
    }

    /// The state of the session a browser linked to access session `id` holds
    /// ([`AccessSessions::browsers`]) as the session page shows it. A session whose deadline
    /// has passed counts as ended even before the expiry task has stopped it.
    pub async fn status_of(&self, id: Option<i64>) -> Result<SessionStatus, PortalError> {
        Ok(self.status_and_session(id, Follow::Replacements).await?.0)
    }

    /// [`Self::status_of`], and the id of the session it is of (where `id` was followed to);
    /// with [`Follow::No`], of `id`'s own session.
    async fn status_and_session(
        &self,
        id: Option<i64>,
        follow: Follow,
    ) -> Result<(SessionStatus, Option<i64>), PortalError> {
        let Some(id) = id else {
            return Ok((SessionStatus::NoSession, None));
        };
        let found = match follow {
            Follow::Replacements => self.sessions.browsers(id).await,
            Follow::No => self.sessions.record(id).await,
        };
        let Some(s) = found.map_err(user_error)? else {
            return Ok((SessionStatus::NoSession, Some(id)));
        };
        Ok((self.status_of_record(&s).await, Some(s.id)))
    }

    async fn status_of_record(&self, s: &AccessSessionRecord) -> SessionStatus {
        if s.active && s.expires_at > now_ms() {
            // A session of an organization disabled since reads as the disable's stop will
            // make it, before that stop has reached it (a replica that ran the stop died: up to
            // its claim's lease; black-box tester M): the page never shows a disabled
            // organization's session running. One whose organization the cache does not
            // know (its settings unusable here) reads as its stored flag says (the guard
            // review's L2).
            return if self
                .sessions
                .organization_disabled_for_reads(&s.organization_id)
                .await
            {
                SessionStatus::Ended(EndReason::OrganizationDisabled)
            } else {
                SessionStatus::Active(self.view(s))
            };
        }
        let expired = match timing::ends_by(s.expires_at, s.limit_at) {
            EndsBy::Limit => EndReason::LimitReached,
            EndsBy::Window => EndReason::Expired,
        };
        use crate::radius::terminate_cause as cause;
        let reason = match s.terminate_cause.map(|c| c as u32) {
            None => expired,
            Some(cause::USER_REQUEST) => EndReason::Disconnected,
            Some(cause::IDLE_TIMEOUT) => EndReason::Expired,
            Some(cause::SESSION_TIMEOUT) => EndReason::LimitReached,
            // Stopped by the operator; if it was by disabling the organization, which is still
            // disabled, the page must not offer to sign in again. The cache first (a disable
            // it knows of needs no read: every page a disable ended asks at once), else the
            // database: a replica's stream hears the disable's stop before its cache follows
            // the disable (code review: "ended by the operator", and the stream ended there).
            Some(cause::ADMIN_RESET) => {
                if self.organization_disabled(&s.organization_id)
                    || self
                        .sessions
                        .organization_not_enabled_now(&s.organization_id)
                        .await
                {
                    EndReason::OrganizationDisabled
                } else {
                    EndReason::EndedByOperator
                }
            }
            Some(cause::PORT_PREEMPTED) => EndReason::Replaced,
            Some(_) => EndReason::Failed,
        };
        SessionStatus::Ended(reason)
    }

    /// [`Self::status_of`] for a page of organization `org` at client address `ip` showing
    /// the session `shown` names ([`SessionView::session_ref`]). Without a linked session, the
    /// page's own session or one still running for that address is not "none": the browser
    /// lost its link (its cookie removed, its web session gone), and the page must not read as
    /// if the session — and the network access with it — had ended.
    pub async fn status_for(
        &self,
        id: Option<i64>,
        scope: &OrgScope,
        (ip, shown): (Option<IpAddr>, Option<&str>),
    ) -> Result<SessionStatus, PortalError> {
        Ok(self
            .status_and_session_for(id, scope, (ip, shown), Follow::Replacements)
            .await?
            .0)
    }

    /// [`Self::status_for`], and the id of the session it is of ([`Self::status_of`]'s; with
    /// [`Follow::No`], `id`'s own).
    pub async fn status_and_session_for(
        &self,
        id: Option<i64>,
        scope: &OrgScope,
        (ip, shown): (Option<IpAddr>, Option<&str>),
        follow: Follow,
    ) -> Result<(SessionStatus, Option<i64>), PortalError> {
        let (status, of) = self.status_and_session(id, follow).await?;
        let status = match status {
            SessionStatus::Active(view) => SessionStatus::Active(self.seen_from(scope, view)),
            other => other,
        };
        if !matches!(status, SessionStatus::NoSession) {
            return Ok((status, of));
        }
        // The page's own session, wherever the browser now asks from (the UI review's H1: a
        // dual-stack laptop's page, asking over IPv6, read its IPv4 session as disconnected),
        // of this organization only: running, it runs without this browser; ended, as it
        // ended — unless a session runs for the asking address (below).
        let mut status = status;
        if let Some(shown) = shown.and_then(|r| self.shown_session(r)) {
            let record = self.sessions.record(shown).await.map_err(user_error)?;
            if let Some(s) = record.filter(|s| s.organization_id == scope.id) {
                match self.status_of_record(&s).await {
                    SessionStatus::Active(_) => {
                        return Ok((SessionStatus::Ended(EndReason::NotLinked), of))
                    }
                    ended => status = ended,
                }
            }
        }
        let Some(ip) = ip else {
            return Ok((status, of));
        };
        let running = self
            .sessions
            .active_for_client(&scope.id, ip)
            .await
            .map_err(user_error)?;
        Ok(match running {
            Some(_) => (SessionStatus::Ended(EndReason::NotLinked), of),
            None => (status, of),
        })
    }

    /// A session as the portal the request came to shows it: the default organization's session
    /// seen under that organization's own `/o/{slug}` prefix keeps the prefix (its links, forms
    /// and requests stay under it, as a proxy publishing only that prefix needs); otherwise the
    /// prefix its organization's pages live under (a form at `/api/login` may name another).
    pub fn seen_from(&self, scope: &OrgScope, mut view: SessionView) -> SessionView {
        if view.base.is_empty()
            && !scope.base.is_empty()
            && scope.id == self.organizations.default_id()
        {
            view.base = scope.base.clone();
        }
        view
    }

    /// The access session linked to a web session, if any.
    pub async fn linked_session_id(
        &self,
        web: &Session,
        org: &str,
    ) -> Result<Option<i64>, PortalError> {
        web.get::<i64>(&access_session_key(org))
            .await
            .map_err(|e| web_session_failed("reading the web session", &e))
    }

    /// Whether organization `org` may be signed in to now (the guard, on the stored flag): a
    /// sign-in answered with a session it opened earlier is refused like a new one once the
    /// organization is disabled.
    async fn sign_in_allowed(
        &self,
        org: &str,
        username: &str,
        ip: IpAddr,
    ) -> Result<(), PortalError> {
        let client_ip = ip.to_string();
        self.sessions
            .guarded_organization(
                org,
                crate::organizations::guard::Operation::Login,
                crate::access_session::Who {
                    username,
                    client_ip: &client_ip,
                },
            )
            .await
            .map(drop)
            .map_err(user_error)
    }

    /// The access session the browser's web session links to in organization `org` — or, when
    /// it links to none, the one its own sign-in opened whose answer never reached it (the
    /// request dropped: its user gave up on a slow server and reloaded), linked now, so the
    /// page shows it with its Disconnect (black-box tester U's D1); with `wait`, a sign-in of
    /// the browser still under way is waited for first (up to [`UNDER_WAY_WAIT`]). Only at
    /// the address the session is of: a browser that moved, or whose cookies someone else
    /// holds elsewhere, is not given it. For a page about to be shown: the link is stored, and
    /// the answer carries its cookie.
    async fn linked_or_adopted(
        &self,
        request: &Parts,
        web: &Session,
        org: &str,
        wait: bool,
    ) -> Result<Option<i64>, PortalError> {
        // Both as the request's cookies name them, before the web session is loaded.
        let (browser, back) = (browser_key(request, web), return_key(request, web));
        let linked = self.linked_session_id(web, org).await?;
        let Some(back) = back else {
            return Ok(linked);
        };
        // A link to a session that runs (itself, or one a sign-in of this browser replaced it
        // with) is what the page shows. A link to one that ended (expired, say) is not: a
        // sign-in made since, given up on, is what this browser is looking for (reviewer: it
        // was adopted only by a browser with no link there at all).
        if let Some(id) = linked {
            // Looked up only when there is something to wait for or adopt: a page of a linked
            // browser costs no read more. (A form post, which waits for nothing, holds its own
            // turn: that is not news.)
            let under_way = browser.as_deref().filter(|_| wait);
            if !self.recent_sign_ins.news_for(&back, under_way, org) {
                return Ok(linked);
            }
            let running = self
                .sessions
                .browsers(id)
                .await
                .map_err(user_error)?
                .is_some_and(|s| s.active && s.expires_at > now_ms());
            if running {
                return Ok(linked);
            }
        }
        if let (true, Some(browser)) = (wait, &browser) {
            self.recent_sign_ins
                .under_way_done(browser, org, UNDER_WAY_WAIT)
                .await;
        }
        let Some(unanswered) = self.recent_sign_ins.adopt(&back, org) else {
            return Ok(linked);
        };
        let Some(session) = self
            .sessions
            .active(unanswered.session_id)
            .await
            .map_err(user_error)?
        else {
            return Ok(linked);
        };
        if session.client_ip.parse::<IpAddr>().ok() != client_ip(request).ok() {
            self.recent_sign_ins.put_back(&back, org, unanswered);
            return Ok(linked);
        }
        // What the browser held when its sign-in linked (its links to other organizations'
        // sessions: U2's D1) is its own again; what it holds now, if anything, stays.
        let held_then = match (unanswered.web_session, &self.web_sessions) {
            (Some(id), Some(store)) => {
                use tower_sessions::SessionStore as _;
                match store.load(&id).await {
                    Ok(record) => record.map(|r| (id, r.data)),
                    Err(e) => {
                        self.recent_sign_ins.put_back(&back, org, unanswered);
                        return Err(web_session_failed(
                            "reading the web session",
                            &tower_sessions::session::Error::Store(e),
                        ));
                    }
                }
            }
            _ => None,
        };
        let saved = request.extensions.get::<SavedDuringRequest>().cloned();
        let adopted = async {
            if let Some((_, data)) = &held_then {
                for (key, value) in data {
                    let wanted = match web.get_value(key).await? {
                        None => true,
                        // The longest window linked: the larger, so the web session outlives
                        // every session it links.
                        Some(held) => {
                            key == LONGEST_WINDOW_KEY
                                && value.as_i64().unwrap_or(0) > held.as_i64().unwrap_or(0)
                        }
                    };
                    if wanted {
                        web.insert_value(key, value.clone()).await?;
                    }
                }
            }
            link_to_end(
                &self.sessions,
                saved,
                web,
                (org, &unanswered.typed),
                &session,
            )
            .await
        }
        .await;
        if let Err(e) = adopted {
            // Kept for the next look.
            self.recent_sign_ins.put_back(&back, org, unanswered);
            return Err(web_session_failed("storing the web session", &e));
        }
        // Nobody holds its cookie: gone, its contents the browser's web session's now.
        if let (Some((id, _)), Some(store)) = (held_then, &self.web_sessions) {
            use tower_sessions::SessionStore as _;
            if let Err(e) = store.delete(&id).await {
                tracing::warn!(error = %e, "the web session the browser's unanswered sign-in linked could not be deleted (it expires by itself)");
            }
        }
        tracing::info!(acct_session_id = %session.acct_session_id,
            "the browser that went away during its sign-in came back: shown its session");
        Ok(Some(session.id))
    }

    /// Whether the organization cache says organization `id` is disabled (a disable made
    /// here or, by its notice, on another replica).
    pub fn organization_disabled(&self, id: &str) -> bool {
        self.organizations.get(id).is_some_and(|o| !o.active)
    }

    /// Tells when the organization cache changed ([`Organizations::changes`]).
    pub fn organization_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.organizations.changes()
    }

    /// The running access session a web session is linked to in organization `org`, if any
    /// (none while its organization is disabled: [`Self::status_of_record`]); with the
    /// request, one its browser's unanswered sign-in opened is linked
    /// ([`Self::linked_or_adopted`], waiting for one under way if asked).
    async fn linked_running(
        &self,
        web: &Session,
        org: &str,
        adopting: Option<(&Parts, bool)>,
    ) -> Result<Option<AccessSessionRecord>, PortalError> {
        let linked = match adopting {
            Some((request, wait)) => self.linked_or_adopted(request, web, org, wait).await?,
            None => self.linked_session_id(web, org).await?,
        };
        match linked {
            // The session the browser holds: one a sign-in of the same browser replaced is
            // followed to the one that replaced it.
            Some(id) => {
                let running = self
                    .sessions
                    .browsers(id)
                    .await
                    .map_err(user_error)?
                    .filter(|s| s.active && s.expires_at > now_ms());
                match running {
                    Some(s)
                        if !self
                            .sessions
                            .organization_disabled_for_reads(&s.organization_id)
                            .await =>
                    {
                        Ok(Some(s))
                    }
                    _ => Ok(None),
                }
            }
            None => Ok(None),
        }
    }

    /// Refuses the request unless it carries this browser's form token (design.md §6): the
    /// web session's, or — for a visitor without one — the signed token of its cookie.
    async fn check_form_token(
        &self,
        request: &Parts,
        web: &Session,
        org: &str,
        supplied: &str,
    ) -> Result<(), PortalError> {
        if self.form_token_fresh(request, web, org, supplied).await? {
            return Ok(());
        }
        Err(refused_form(supplied))
    }

    /// Whether `supplied` is this browser's form token for organization `org`'s forms
    /// ([`Self::check_form_token`]).
    async fn form_token_fresh(
        &self,
        request: &Parts,
        web: &Session,
        org: &str,
        supplied: &str,
    ) -> Result<bool, PortalError> {
        let stored = stored_form_tokens(web, org).await?;
        if stored
            .iter()
            .any(|expected| tokens_match(expected, supplied))
        {
            return Ok(true);
        }
        // Once the browser has signed in to this organization, only its stored tokens count
        // (replaced at each sign-in); before, the signed token of its anonymous cookie too —
        // also after a sign-in to another organization, whose page alone it makes out of date.
        let signed_in_here = web
            .get::<String>(&form_token_key(org))
            .await
            .map_err(|e| web_session_failed("reading the web session", &e))?
            .is_some();
        Ok(!signed_in_here
            && request
                .extensions
                .get::<AnonId>()
                .map(|anon| self.form_tokens.token_for(anon))
                .is_some_and(|expected| tokens_match(&expected, supplied)))
    }

    /// The facts of the sign-in page of organization `scope` (the portal's cache: no read).
    fn site_info_of(&self, scope: OrgScope) -> SiteInfo {
        let org = self.organizations.get(&scope.id);
        SiteInfo {
            organization: org.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
            active: org.as_ref().is_some_and(|o| o.active),
            organization_id: scope.id,
            base: scope.base,
            demo: self.demo,
            branding: org
                .as_ref()
                .map(|o| BrandingInfo {
                    accent: o.branding.accent_color.is_some(),
                    logo: o.branding.logo_file.is_some(),
                    help_text: o.branding.help_text.clone(),
                    contact: o.branding.contact.clone(),
                })
                .unwrap_or_default(),
        }
    }

    /// The organization a request is for: its `/o/{slug}` scope, else the default.
    fn scope(&self, request: &Parts) -> OrgScope {
        request
            .extensions
            .get::<OrgScope>()
            .cloned()
            .unwrap_or_else(|| OrgScope {
                id: self.organizations.default_id(),
                base: String::new(),
            })
    }

    /// The organization a call is for: its `/o/{slug}` scope; at the root, the one its `org`
    /// field names (else the default), in any letter case (ids that differ only in case count
    /// as one, as `/o/{slug}` does). Under a prefix an `org` naming another organization is
    /// refused (the page and the call would not agree on whose session it is), and so is one
    /// naming no organization (the caller's text is not repeated back).
    fn scope_named(&self, request: &Parts, named: Option<&str>) -> Result<OrgScope, PortalError> {
        let scope = self.scope(request);
        let Some(named) = named.filter(|n| *n != scope.id) else {
            return Ok(scope);
        };
        let Some(id) = self.organizations.id_of(named) else {
            return Err(PortalError::InvalidInput {
                field: "org".into(),
                message: "No organization has this id.".into(),
            });
        };
        if id == scope.id {
            return Ok(scope);
        }
        if !scope.base.is_empty() {
            return Err(PortalError::InvalidInput {
                field: "org".into(),
                message: "This form belongs to another organization's portal.".into(),
            });
        }
        Ok(OrgScope {
            base: base_of(&self.organizations, &id),
            id,
        })
    }

    /// Counts a sign-in's outcome, labelled with known organizations only (the form's `org` is
    /// the caller's text), by their ids as written.
    fn count_login(&self, org: &str, outcome: Result<&'static str, &PortalError>) {
        let id = self.organizations.id_of(org);
        self.metrics.login(
            id.as_deref().unwrap_or("unknown"),
            outcome.unwrap_or_else(PortalError::kind),
        );
    }

    /// A sign-in's checks, up to the browser's turn and the rate limits: what may go on
    /// ([`Prepared::SignIn`]), or the answer without a sign-in of its own.
    async fn prepare_sign_in(
        &self,
        request: &Parts,
        input: LoginInput,
    ) -> Result<Prepared, PortalError> {
        let LoginInput {
            username,
            password,
            form_token,
            organization,
        } = input;
        let org_id = self.scope_named(request, organization.as_deref())?.id;
        let org = self
            .organizations
            .get(&org_id)
            .ok_or_else(|| PortalError::InvalidInput {
                field: "org".into(),
                message: "No organization has this id.".into(),
            })?;
        let username = sign_in_name(&username, &password, &org)?.to_owned();
        let ip = client_ip(request)?;
        let web = web_session(request)?;
        // The browser (its web session as its cookie names it, read before anything loads it:
        // a record not found forgets the id, or its anonymous id) waits for its own sign-in
        // under way, if any; the same form sent again is answered with the session that one
        // opened (`resubmit`) — with an out-of-date form token too: a first sign-in whose
        // answer never reached the browser replaced the web session its cookie names.
        let browser = browser_key(request, &web);
        let back = return_key(request, &web);
        // The token of the organization signed in to (a form may name another than the
        // request's scope: at `/api/login`, `org`).
        let fresh_form = self
            .form_token_fresh(request, &web, &org_id, &form_token)
            .await?;
        let turn = match &browser {
            Some(browser) => Some(
                self.recent_sign_ins
                    .turn(browser, &org_id, &username, ip, &password)
                    .await,
            ),
            None => None,
        };
        let saved = request.extensions.get::<SavedDuringRequest>().cloned();
        if let Some(id) = turn.as_ref().and_then(|t| t.same_as_recent()) {
            // Answered now: not kept for the browser's return any more.
            if let Some(back) = &back {
                self.recent_sign_ins.adopt(back, &org_id);
            }
            // No RADIUS exchange, but a database read and a web session linked (a row): the
            // address's limit counts it as an attempt (not the username's, which spares the
            // directory's account), before the read — the same form sent again and again for
            // as long as it is answered so must not cost the database more than sign-ins do (a
            // code review). Given back when it goes on to a sign-in, which is counted there.
            self.check_address_rate(!org.active, ip)?;
            let running = self.sessions.active(id).await;
            if !matches!(running, Ok(Some(_))) {
                self.give_back_address_rate(!org.active, ip);
            }
            if let Some(session) = running.map_err(user_error)? {
                tracing::debug!(acct_session_id = %session.acct_session_id,
                    "the same sign-in submitted again: answered with its session");
                // A disable since is the answer (its stop job may not have reached the
                // session yet): the guard holds for a sign-in answered from memory too.
                self.sign_in_allowed(&org_id, &username, ip).await?;
                // Not ended if this fails: the first answer linked it already.
                link_to_end(&self.sessions, saved, &web, (&org_id, &username), &session)
                    .await
                    .map_err(|e| web_session_failed("storing the web session", &e))?;
                return Ok(Prepared::Answered(Ok(self.view(&session))));
            }
        }
        if !fresh_form && !form_token.is_empty() {
            // An out-of-date sign-in form (its page was shown before this browser signed in:
            // the form sent again after the first answer came back, a tab left open) from a
            // browser whose session there runs: that session is the answer, as the sign-in
            // page itself would show it. Nothing is sent or changed.
            // Only for a name that is that session's: another name is a sign-in as someone
            // else, which this form cannot make (Disconnect first).
            // Said as it is: reloading would show that session's page, not a form.
            // (Its turn is this sign-in's: no waiting for a sign-in under way.)
            if let Some(session) = self
                .linked_running(&web, &org_id, Some((request, false)))
                .await?
            {
                // The name the session was signed in with here counts too: the server may have
                // answered with another (a User-Name rewrite).
                let typed_then = web
                    .get::<(i64, String)>(&typed_name_key(&org_id))
                    .await
                    .ok()
                    .flatten()
                    .filter(|(id, _)| *id == session.id)
                    .map(|(_, name)| name);
                if names_alike(&session.username, &username)
                    || typed_then.is_some_and(|then| names_alike(&then, &username))
                {
                    self.sign_in_allowed(&org_id, &username, ip).await?;
                    return Ok(Prepared::Answered(Ok(self.view(&session))));
                }
                crate::throttled!(warn, "sign-in with another name on an out-of-date form token from a browser signed in already: refused");
                return Err(PortalError::InvalidInput {
                    field: "username".into(),
                    message: SIGNED_IN_AS_ANOTHER.into(),
                });
            }
        }
        if !fresh_form {
            // An out-of-date form of an organization disabled since it was shown: the disable
            // is the answer (what reloading the page shows), not the form's age. Nothing is
            // sent, and nothing audited: no sign-in was attempted. As this process knows it
            // (no database read for a request anyone can make with a made-up token).
            if !form_token.is_empty() && !org.active {
                return Err(PortalError::OrganizationDisabled);
            }
            // Out of date with no session to show, or no token at all (a form without one
            // is refused whatever runs: only a form the portal rendered carries one).
            return Err(refused_form(&form_token));
        }
        // What this sign-in answers is what the browser's page says: not an earlier sign-in's
        // failure it never heard of (`RecentSignIns::failure_untold`).
        if let Some(back) = &back {
            self.recent_sign_ins.forget_failure(back, &org_id);
        }
        if let Some(error) = turn.as_ref().and_then(|t| t.failed_while_waiting()) {
            tracing::debug!(
                error = error.kind(),
                "the same sign-in submitted while it was under way: answered with its failure"
            );
            return Ok(Prepared::Answered(Err(error)));
        }
        // Bounded however many requests are dropped on the way (each sign-in runs to its end).
        let permit = self
            .sign_ins_under_way
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                crate::throttled!(
                    warn,
                    limit = MAX_SIGN_INS_UNDER_WAY,
                    "sign-in refused: too many under way"
                );
                PortalError::RateLimited {
                    retry_after_secs: 2,
                }
            })?;
        // Nothing could be stored: refused before the limits take an attempt no directory
        // would see (a disabled organization's sign-in hears the disable, as below).
        if org.active {
            self.sessions.sessions_storable().map_err(user_error)?;
        }
        self.check_rate((&org_id, !org.active), &username, ip)?;
        // The browser's session there, if it holds one: a sign-in from this browser replaces
        // it wherever its address (a laptop moved to another network signs in again) — the
        // one its sign-in that went just before opened, if any: sent together with this one
        // (two tabs, two addresses of a dual-stack host), each with the cookie the browser
        // had then, this one's web session does not show it yet.
        let replaces = match turn.as_ref().and_then(|t| t.opened_lately()) {
            Some(id) => Some(id),
            None => self.linked_session_id(&web, &org_id).await?,
        };
        Ok(Prepared::SignIn(SignIn {
            saved,
            web,
            org_id,
            username,
            password,
            ip,
            replaces,
            turn,
            browser: back,
            request_gone: tokio_util::sync::CancellationToken::new(),
            limited_as_disabled: !org.active,
            _permit: permit,
        }))
    }

    /// The sign-in itself: the Access-Request, the session it opens, and its link to the
    /// browser (a session that cannot be linked is ended at once).
    async fn open_session(&self, sign_in: SignIn) -> Result<AccessSessionRecord, PortalError> {
        let opened = self
            .sessions
            .login_replacing(
                &sign_in.org_id,
                &sign_in.username,
                &sign_in.password,
                sign_in.ip,
                sign_in.replaces,
            )
            .await;
        // No server was asked (every breaker open): the attempt no directory saw is given back
        // (the web review's M1: retries during an outage left the user rate limited after it).
        if let Err(SessionError::ServersUnavailable(crate::radius::RadiusError::AllServersDown)) =
            &opened
        {
            self.give_back_rate(
                (&sign_in.org_id, sign_in.limited_as_disabled),
                &sign_in.username,
                sign_in.ip,
            );
        }
        let opened = opened.map_err(user_error);
        // The browser's next sign-in waits until this one is linked (or ended below):
        // the same form sent again then finds the session only once it is the browser's, and
        // one sent while this one failed gets its answer.
        let SignIn {
            saved,
            web,
            turn,
            browser,
            request_gone,
            ..
        } = sign_in;
        let linked = match opened {
            Ok(session) => {
                match link_web_session(
                    saved.as_ref(),
                    &web,
                    (&sign_in.org_id, &sign_in.username),
                    &session,
                )
                .await
                {
                    Ok(()) => {
                        // The answer will not reach the browser, nor the new web session's
                        // cookie with it: kept for the browser's return (black-box tester
                        // U's D1: a reload found no session while its identity ran on).
                        if let (true, Some(browser)) = (request_gone.is_cancelled(), &browser) {
                            tracing::info!(acct_session_id = %session.acct_session_id,
                                "the sign-in's browser went away before its answer: its session is shown to it when it comes back");
                            self.recent_sign_ins.unanswered(
                                (browser, &sign_in.org_id),
                                session.id,
                                &sign_in.username,
                                web.id(),
                            );
                        }
                        Ok(session)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, acct_session_id = %session.acct_session_id,
                        "the new session's web session could not be stored: ending the session");
                        if let Err(stop) = self.sessions.end_unlinked(session.id).await {
                            tracing::error!(error = %error_chain(&stop), acct_session_id = %session.acct_session_id,
                            "ending a session no browser is linked to failed; trying again in the background");
                        }
                        // The database away (the usual cause): a 503 the user may retry, as
                        // any other request meets while it is; else the portal's own fault.
                        Err(if crate::storage::web_sessions::is_unavailable(&e) {
                            PortalError::Unavailable
                        } else {
                            PortalError::Internal { reference: None }
                        })
                    }
                }
            }
            Err(e) => Err(e),
        };
        // A failure whose answer will not reach the browser: its next sign-in page says it.
        if let (Err(e), true, Some(browser)) = (&linked, request_gone.is_cancelled(), &browser) {
            tracing::info!(
                error = e.kind(),
                "the sign-in's browser went away before its answer: its failure is told when it comes back"
            );
            self.recent_sign_ins.failed_unanswered(
                (browser, &sign_in.org_id),
                e,
                &sign_in.username,
            );
        }
        if let Some(turn) = turn {
            match &linked {
                Ok(session) => turn.opened(session.id),
                Err(e) => turn.failed(e),
            }
        }
        linked
    }
}

/// Whether a browser's link to a session is followed to the session a sign-in of the same
/// browser replaced it with ([`AccessSessions::browsers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// To the session the browser holds now (a page about to be shown).
    Replacements,
    /// The linked session itself (a page shown already, which is about that one).
    No,
}

/// A sign-in's checks passed: what it needs to go on (see [`PortalService::login`]).
enum Prepared {
    /// Answered without a sign-in of its own: the browser's session (the same sign-in sent
    /// again, an out-of-date form of a browser signed in), or the failure of the same sign-in
    /// that ended while this one waited for its turn.
    Answered(Result<SessionView, PortalError>),
    /// The browser's turn and the rate limits let it go on.
    SignIn(SignIn),
}

/// What the part of a sign-in that runs to its end needs.
struct SignIn {
    /// The request's mark that its web session was saved (the answer then only sets the
    /// cookie).
    saved: Option<SavedDuringRequest>,
    web: Session,
    org_id: String,
    username: String,
    password: String,
    ip: IpAddr,
    /// The session the browser holds in the organization (stopped by this sign-in).
    replaces: Option<i64>,
    /// The browser's turn, held until the session is linked.
    turn: Option<crate::http::resubmit::Turn>,
    /// The browser as it is known when it comes back ([`return_key`]).
    browser: Option<String>,
    /// Cancelled when the request is dropped (the browser went away): the session opened is
    /// then kept for the browser's return ([`RecentSignIns::unanswered`]).
    ///
    /// [`RecentSignIns::unanswered`]: crate::http::resubmit::RecentSignIns::unanswered
    request_gone: tokio_util::sync::CancellationToken,
    /// Its attempt was taken from the limits of a disabled organization's sign-ins.
    limited_as_disabled: bool,
    /// Its place among the sign-ins under way.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// At most this many sign-ins run at once in a process; more are refused (429) rather than
/// queued. Each has passed the rate limits and ends within its organization's login timeout,
/// but runs on when its request is dropped: the connection limits no longer bound them.
const MAX_SIGN_INS_UNDER_WAY: usize = 4096;

/// Whether the name typed into a sign-in form may be the one `session_name` was opened with:
/// equal ignoring case, or one is the other without its realm or domain — the server may have
/// answered with a User-Name of its own (a realm stripped, `carol@corp` → `carol`; a domain
/// added, `CORP\carol`). Not any name one holds the other in (`ju` is not `judy`), nor the
/// same user in another realm. Only ever compared with the browser's own running session.
fn names_alike(session_name: &str, typed: &str) -> bool {
    let (session_name, typed) = (session_name.to_lowercase(), typed.to_lowercase());
    !typed.is_empty()
        && (session_name == typed || bare(&session_name) == typed || bare(&typed) == session_name)
}

/// A browser signed in already sent an out-of-date sign-in form with another name.
pub(crate) const SIGNED_IN_AS_ANOTHER: &str = "This browser is already signed in here with another name, and this form was not shown with that session (it is older, or came from a link). To sign in as someone else, send the form below: that ends the session signed in now. To keep it, go to your session page.";

/// A state-changing request without this browser's form token: refused (logged).
fn refused_form(supplied: &str) -> PortalError {
    if supplied.is_empty() {
        crate::throttled!(warn, "state-changing request without a form token refused");
        return PortalError::InvalidInput {
            field: "csrf".into(),
            message: "This form has no form token (its csrf field): reload the page and send the form from there.".into(),
        };
    }
    crate::throttled!(
        warn,
        "state-changing request without a valid form token refused"
    );
    PortalError::Forbidden
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn tokens_match(expected: &str, supplied: &str) -> bool {
    expected.len() == supplied.len()
        && expected
            .bytes()
            .zip(supplied.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A fresh random form token (stored in a web session).
fn random_token() -> String {
    crate::hex(&rand::random::<[u8; 32]>())
}

/// The browser a request comes from, for its sign-ins' turns and their answers: its web
/// session as its cookie names it (read before anything loads it: a record not found forgets
/// the id), or its anonymous id.
fn browser_key(request: &Parts, web: &Session) -> Option<String> {
    web.id().map(|id| format!("w:{id}")).or_else(|| {
        request
            .extensions
            .get::<AnonId>()
            .map(|anon| format!("a:{}", anon.0))
    })
}

/// The browser as it is known when it comes back after a sign-in whose answer it never got:
/// its anonymous id (every request carries one; never rotated, nor cleared with a web session
/// whose record is gone), else [`browser_key`].
fn return_key(request: &Parts, web: &Session) -> Option<String> {
    request
        .extensions
        .get::<AnonId>()
        .map(|anon| format!("a:{}", anon.0))
        .or_else(|| browser_key(request, web))
}

/// How long a page reloaded during its browser's sign-in waits for that sign-in to end.
const UNDER_WAY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn web_session(request: &Parts) -> Result<Session, PortalError> {
    request.extensions.get::<Session>().cloned().ok_or_else(|| {
        tracing::error!("no web session on the request (session layer missing)");
        PortalError::Internal { reference: None }
    })
}

fn client_ip(request: &Parts) -> Result<std::net::IpAddr, PortalError> {
    request
        .extensions
        .get::<ClientIp>()
        .map(|c| c.0)
        .ok_or(PortalError::AddressUnknown)
}

/// A web session that could not be read or stored: the database away is [`PortalError::Unavailable`]
/// (503: nothing was done, retry), anything else a fault.
fn web_session_failed(context: &str, error: &tower_sessions::session::Error) -> PortalError {
    if crate::storage::web_sessions::is_unavailable(error) {
        static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
        if let Some(left_out) = LOG.admit() {
            tracing::warn!(error = %error_chain(error), similar_left_out = left_out,
                "{context} failed: the database is unavailable");
        }
        return PortalError::Unavailable;
    }
    internal(context, error)
}

fn internal(context: &str, error: &dyn std::error::Error) -> PortalError {
    tracing::error!(error = %error_chain(error), "{context} failed");
    PortalError::Internal { reference: None }
}

/// `error: cause: cause…` for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // A cause its error already quotes (sqlx's "error returned from database: {cause}")
        // is not said twice.
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Longest refusal text shown, in bytes: a refused form post carries its error to the page in a
/// signed cookie, which must stay under browsers' 4 KiB cookie limit however the server's text
/// encodes ([`crate::http::flash::MAX_FLASH`] holds the encoded error, the text in it twice).
pub const MAX_REFUSAL_BYTES: usize = 400;

/// A server's refusal text cut to [`MAX_REFUSAL_BYTES`] (at a character's start), marked with
/// "…" when cut.
fn shortened(text: String) -> String {
    if text.len() <= MAX_REFUSAL_BYTES {
        return text;
    }
    let end = (0..=MAX_REFUSAL_BYTES)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}…", text[..end].trim_end())
}

/// Maps lifecycle errors to what the user may see; logs the cause of internal ones.
/// The name a sign-in to `org` goes by, typed as `typed` with `password`, or why a sign-in
/// refuses them (`InvalidInput`, the field named). White space around a name is a phone
/// keyboard's (autocompletion adds a space) or a paste's (a spreadsheet cell's tab or line
/// end, a byte-order mark, a zero-width space), never part of it: the name is sent,
/// rate-limited and stored without it. Any other control character is refused, around the
/// name as inside it. `radius test --username` takes the same rules.
pub(crate) fn sign_in_name<'a>(
    typed: &'a str,
    password: &str,
    org: &crate::organizations::Organization,
) -> Result<&'a str, PortalError> {
    let username =
        typed.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}' || c == '\u{200b}');
    validation::validate_username(username, |u| org.username_pattern.is_match(u))?;
    validation::validate_password(password)?;
    Ok(username)
}

/// What a sign-in overtaken by the deletion of its organization is told.
pub const ORGANIZATION_GONE: &str =
    "This organization's portal no longer exists: it was removed while you signed in. Ask your network administrator.";

fn user_error(error: SessionError) -> PortalError {
    match error {
        SessionError::Rejected { reply_message } => PortalError::Rejected {
            message: reply_message.map(shortened),
        },
        SessionError::ChallengeUnsupported { reply_message } => PortalError::ChallengeUnsupported {
            message: reply_message.map(shortened),
        },
        SessionError::UnusableAccept { problem } => PortalError::UnusableAnswer { problem },
        SessionError::OrganizationDisabled => PortalError::OrganizationDisabled,
        SessionError::OrganizationGone => PortalError::InvalidInput {
            field: "org".into(),
            message: ORGANIZATION_GONE.into(),
        },
        // The (last) server answered, unsigned: not an outage, and not the user's to retry.
        SessionError::ServersUnavailable(crate::radius::RadiusError::UnsignedReply) => {
            PortalError::UnsignedAnswer
        }
        // Logged where it happened (`AccessSessions::login_replacing`).
        SessionError::ServersUnavailable(_) => PortalError::ServersUnavailable,
        SessionError::AccountingUnavailable => PortalError::AccountingUnavailable,
        // The database is away (a restart, a full disk): the caller may retry, and a load
        // balancer or script sees a 503, not the 500 of a fault.
        SessionError::Storage(e) if e.is_unavailable() => {
            static LOG: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(left_out) = LOG.admit() {
                tracing::warn!(error = %error_chain(&e), similar_left_out = left_out,
                    "request failed: the database is unavailable");
            }
            PortalError::Unavailable
        }
        // The same, met by the Start's delivery (its acknowledgement not recorded in time).
        SessionError::Accounting(crate::accounting::OutboxError::Storage(e))
            if e.is_unavailable() =>
        {
            user_error(SessionError::Storage(e))
        }
        SessionError::NotActive => PortalError::NoSession,
        other => internal("access-session operation", &other),
    }
}

/// For callers that are not plain HTML forms (fetch from the island, scripts), answer with a
/// status that says what happened. Plain form posts keep leptos_axum's redirect back to the form.
/// The HTTP status a script caller gets for an error (README's table).
pub fn status_of(error: &PortalError) -> StatusCode {
    match error {
        PortalError::InvalidInput { .. } | PortalError::AddressUnknown => StatusCode::BAD_REQUEST,
        PortalError::Rejected { .. }
        | PortalError::ChallengeUnsupported { .. }
        | PortalError::NoSession => StatusCode::UNAUTHORIZED,
        PortalError::OrganizationDisabled | PortalError::Forbidden => StatusCode::FORBIDDEN,
        PortalError::ServersUnavailable
        | PortalError::AccountingUnavailable
        | PortalError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // The upstream server's answer is the fault, not the caller's nor the portal's.
        PortalError::UnusableAnswer { .. } | PortalError::UnsignedAnswer => StatusCode::BAD_GATEWAY,
        PortalError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether the caller is a browser asking for a page (it is shown the error, with 200).
pub use app::service::accepts_html;

fn set_error_status(request: &Parts, error: &PortalError) {
    if accepts_html(&request.headers) {
        return;
    }
    let status = status_of(error);
    if let Some(response) = leptos::prelude::use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(status);
        if let PortalError::RateLimited { retry_after_secs } = error {
            response.insert_header(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(*retry_after_secs),
            );
        }
    }
}

fn with_status<T>(request: &Parts, result: Result<T, PortalError>) -> Result<T, PortalError> {
    if let Err(e) = &result {
        set_error_status(request, e);
    }
    result
}

/// `HH:MM:SS` of a Unix-ms time, UTC, with the date in front (`YYYY-MM-DD HH:MM:SS`) when it is
/// not on the same UTC day as `now_ms` (a server may grant days).
fn utc_clock(unix_ms: i64, now_ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    let secs = unix_ms.rem_euclid(DAY_MS) / 1000;
    let time = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let day = unix_ms.div_euclid(DAY_MS);
    if day == now_ms.div_euclid(DAY_MS) {
        return time;
    }
    let (year, month, date) = civil_date(day);
    format!("{year:04}-{month:02}-{date:02} {time}")
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian calendar).
fn civil_date(days: i64) -> (i64, i64, i64) {
    // Days counted from 0000-03-01, so that a leap day ends its 400-year era's years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let date = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, date)
}

#[async_trait::async_trait]
impl PortalService for PortalBackend {
    fn client_address(&self, request: &Parts) -> Option<String> {
        client_ip(request).ok().map(|ip| ip.to_string())
    }

    fn sign_in_failure_untold(&self, request: &Parts) -> Option<(PortalError, String)> {
        let back = return_key(request, &web_session(request).ok()?)?;
        self.recent_sign_ins
            .failure_untold(&back, &self.scope(request).id)
    }

    fn site_info(&self, request: &Parts) -> SiteInfo {
        self.site_info_of(self.scope(request))
    }

    fn site_info_named(&self, request: &Parts, org: Option<&str>) -> Result<SiteInfo, PortalError> {
        Ok(self.site_info_of(with_status(request, self.scope_named(request, org))?))
    }

    async fn form_token(&self, request: &Parts, org: Option<&str>) -> Result<String, PortalError> {
        let scope = with_status(request, self.scope_named(request, org))?;
        let web = web_session(request)?;
        if let Some(token) = stored_form_tokens(&web, &scope.id)
            .await?
            .into_iter()
            .next()
        {
            return Ok(token);
        }
        // A visitor without a web session: the signed token of its `portal_anon` cookie (no
        // write; every request to the pages and server fns carries one).
        match request.extensions.get::<AnonId>() {
            Some(anon) => Ok(self.form_tokens.token_for(anon)),
            None => Err(PortalError::Forbidden),
        }
    }

    /// The part of a sign-in that sends anything — the Access-Request, the session it opens,
    /// its link to the browser — runs to its end (`run_to_end`: it moves into a task of its
    /// own, which a graceful shutdown waits for, when the request is dropped on the way — the
    /// browser went away; Chromium cancels the first request of a double click). It is never
    /// cut between the Access-Accept and the session it opens, so the accepted attempt is
    /// audited and counted, its session
    /// linked to the browser, and the same form sent again is answered with that session
    /// (`resubmit`) instead of a second Access-Request. What comes before — the checks, the
    /// browser's turn, the rate limits — stays the request's: a dropped request waiting for its
    /// turn leaves nothing behind, so a client dropping requests cannot pile up work.
    async fn login(
        self: Arc<Self>,
        request: &Parts,
        input: LoginInput,
    ) -> Result<SessionView, PortalError> {
        let input_org = input
            .organization
            .clone()
            .unwrap_or_else(|| self.scope(request).id);
        let result = match self.prepare_sign_in(request, input).await {
            Ok(Prepared::Answered(answer)) => {
                self.count_login(&input_org, Ok("Resubmitted"));
                answer
            }
            Ok(Prepared::SignIn(sign_in)) => {
                // Dropped with this request's future: the browser went away.
                let _request_alive = sign_in.request_gone.clone().drop_guard();
                let this = self.clone();
                self.sessions
                    .run_to_end(
                        async move {
                            let org = sign_in.org_id.clone();
                            let opened = this.open_session(sign_in).await;
                            this.count_login(&org, opened.as_ref().map(|_| "Accepted"));
                            opened.map(|session| this.view(&session))
                        }
                        .in_current_span(),
                    )
                    .await
            }
            Err(e) => {
                self.count_login(&input_org, Err(&e));
                Err(e)
            }
        };
        let result = result.map(|view| self.seen_from(&self.scope(request), view));
        with_status(request, result)
    }

    async fn current_session(
        &self,
        request: &Parts,
        org: Option<&str>,
    ) -> Result<Option<SessionView>, PortalError> {
        let result = async {
            let web = web_session(request)?;
            let scope = self.scope_named(request, org)?;
            let running = self
                .linked_running(&web, &scope.id, Some((request, true)))
                .await?;
            Ok(running.map(|session| self.seen_from(&scope, self.view(&session))))
        }
        .await;
        with_status(request, result)
    }

    async fn session_status(
        &self,
        request: &Parts,
        org: Option<&str>,
        shown: Option<&str>,
    ) -> Result<SessionStatus, PortalError> {
        let result = async {
            let scope = self.scope_named(request, org)?;
            let id = self
                .linked_or_adopted(request, &web_session(request)?, &scope.id, true)
                .await?;
            self.status_for(id, &scope, (client_ip(request).ok(), shown))
                .await
        }
        .await;
        with_status(request, result)
    }

    async fn refresh(
        &self,
        request: &Parts,
        form_token: &str,
        org: Option<&str>,
    ) -> Result<SessionView, PortalError> {
        let result = async {
            let scope = self.scope_named(request, org)?;
            let web = web_session(request)?;
            self.check_form_token(request, &web, &scope.id, form_token)
                .await?;
            let id = self
                .linked_session_id(&web, &scope.id)
                .await?
                .ok_or(PortalError::NoSession)?;
            let (session, restarted) = self.sessions.refresh(id).await.map_err(user_error)?;
            // Without JavaScript the session page the browser goes back to says it (the
            // island says it itself).
            if app::service::accepts_html(&request.headers) {
                crate::http::flash::mark_notice(if restarted {
                    app::dto::Notice::Refreshed
                } else {
                    app::dto::Notice::RefreshedRecently
                });
            }
            // Saved with a new inactivity deadline: a web session in use never ends before
            // the access session it controls (reads alone do not write it).
            keep_link_for(&web, session.window_ms)
                .await
                .map_err(|e| web_session_failed("reading the web session", &e))?;
            let mut view = self.view(&session);
            view.refresh_changed_nothing = !restarted;
            Ok(self.seen_from(&scope, view))
        }
        .await;
        with_status(request, result)
    }

    async fn disconnect(
        &self,
        request: &Parts,
        form_token: &str,
        org: Option<&str>,
    ) -> Result<String, PortalError> {
        let result = async {
            let scope = self.scope_named(request, org)?;
            let web = web_session(request)?;
            self.check_form_token(request, &web, &scope.id, form_token)
                .await?;
            let linked = self.linked_session_id(&web, &scope.id).await?;
            if let Some(id) = linked {
                // The sign-in page shown next says the session ended — or that it had ended
                // already (its time, the operator, a new sign-in), not nothing. Ended by a
                // Disconnect (another page's, the first of a double click) is said as ended.
                let ended_here = self.sessions.disconnect(id).await.map_err(user_error)?;
                // Why it had ended, if not by this press (as its page would say; a read that
                // fails says nothing more).
                let notice = if ended_here {
                    app::dto::Notice::Disconnected
                } else {
                    match self.status_of(Some(id)).await {
                        Ok(SessionStatus::Ended(EndReason::Disconnected)) => {
                            app::dto::Notice::Disconnected
                        }
                        Ok(SessionStatus::Ended(reason)) => {
                            app::dto::Notice::AlreadyEnded(Some(reason))
                        }
                        _ => app::dto::Notice::AlreadyEnded(None),
                    }
                };
                crate::http::flash::mark_notice(notice);
                // Ended either way: a web session that cannot be written now (the database
                // away, a full disk) still names the ended session, which its pages show as
                // such — not a failed Disconnect.
                if let Err(e) =
                    forget_access_session(&web, self.web_sessions.as_ref(), &scope.id)
                .await
                {
                    tracing::warn!(error = %e, "the web session could not forget its ended session");
                }
            } else if web
                .get::<String>(&form_token_key(&scope.id))
                .await
                .ok()
                .flatten()
                .is_some()
            {
                // Nothing linked here any more, though this browser signed in here: a page
                // left open after its session was disconnected on another page (the browser
                // is signed in elsewhere too, so its web session and the page's token live
                // on). Said as such, not as nothing. (A browser that never signed in here, or
                // whose web session the first Disconnect deleted, is told nothing.)
                crate::http::flash::mark_notice(app::dto::Notice::AlreadyEnded(None));
            }
            Ok(scope.base)
        }
        .await;
        with_status(request, result)
    }
}

/// Takes an ended access session of organization `org` off the web session. A web session
/// whose stored record holds nothing else but its form tokens (and the longest window it was
/// linked for) (no other organization's session, whichever replica linked it) is deleted, record and cookie: the browser is an anonymous visitor
/// again, as before its login, and its next login stores one web session instead of
/// replacing one.
async fn forget_access_session(
    web: &Session,
    store: Option<&crate::storage::web_sessions::WebSessionStore>,
    org: &str,
) -> Result<(), tower_sessions::session::Error> {
    use tower_sessions::SessionStore as _;
    let (key, typed) = (access_session_key(org), typed_name_key(org));
    web.remove_value(&key).await?;
    web.remove_value(&typed).await?;
    let (Some(store), Some(id)) = (store, web.id()) else {
        return Ok(());
    };
    let stored = store
        .load(&id)
        .await
        .map_err(tower_sessions::session::Error::Store)?;
    let nothing_else = stored.is_some_and(|record| {
        record
            .data
            .keys()
            .all(|k| *k == key || *k == typed || is_form_token_key(k) || k == LONGEST_WINDOW_KEY)
    });
    if nothing_else {
        web.flush().await?;
    }
    Ok(())
}

/// The user part of a name: after a `DOMAIN\` or a `realm/` (FreeRADIUS's prefix realms),
/// before an `@realm` or a `%realm` (its suffix realms of another delimiter).
fn bare(name: &str) -> &str {
    let user = name.rsplit_once(['\\', '/']).map_or(name, |(_, user)| user);
    user.split_once(['@', '%']).map_or(user, |(user, _)| user)
}

/// The account a username names, for the per-username sign-in limit: in its compatibility
/// form (NFKC: fullwidth `ａｌｉｃｅ` is `alice`, as a directory comparing names with width
/// ignored takes it), lower-cased, without a realm ([`bare`]) — `alice`, `Alice@corp`,
/// `alice@corp.example.`, `CORP\alice`, `corp/alice` and `alice%corp` are one account to the
/// directory behind most RADIUS servers, so each spelling must not get a bucket of its own (the
/// limit keeps password guessing from locking the account out). A username that is all realm
/// is kept whole.
fn account_of(username: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    // Lower-casing may leave a form NFKC changes again (and the reverse): both ways, once each.
    let lower: String = username
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect();
    match bare(&lower) {
        "" => lower,
        user => user.to_string(),
    }
}

#[cfg(test)]
mod tests {
    /// The per-username limit counts an account however its realm is spelt.
    #[test]
    fn a_username_with_or_without_its_realm_is_one_account() {
        for spelt in [
            "victim",
            "Victim@corp",
            "victim@CORP.example.",
            "CORP\\victim",
            "corp\\VICTIM@corp",
            // Realms as FreeRADIUS's prefix (`/`) and suffix (`%`) delimiters spell them (a
            // code review: each spelling had a bucket of its own).
            "corp/victim",
            "victim%corp",
            "CORP/Victim%corp.example",
        ] {
            assert_eq!(super::account_of(spelt), "victim", "{spelt}");
        }
        assert_eq!(super::account_of("@corp"), "@corp");
        assert_eq!(super::account_of("other"), "other");
        // Width and compatibility forms (a code review: where a pattern allows them, each
        // fullwidth spelling had a bucket of its own; a directory ignores width).
        for spelt in [
            "ｖｉｃｔｉｍ",
            "vＩctim",
            "ＶＩＣＴＩＭ＠corp",
            "ｃｏｒｐ＼victim",
        ] {
            assert_eq!(super::account_of(spelt), "victim", "{spelt}");
        }
    }

    /// Each cause once: one its error already quotes is not repeated; others follow it.
    #[test]
    fn an_error_chain_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        enum E {
            #[error("error returned from database: {0}")]
            Quoting(#[source] std::io::Error),
            #[error("while connecting")]
            Context(#[source] std::io::Error),
        }
        let io = || std::io::Error::other("password authentication failed for user \"portal\"");
        assert_eq!(
            super::error_chain(&E::Quoting(io())),
            "error returned from database: password authentication failed for user \"portal\""
        );
        assert_eq!(
            super::error_chain(&E::Context(io())),
            "while connecting: password authentication failed for user \"portal\""
        );
    }

    #[test]
    fn a_typed_name_is_alike_the_name_the_server_gave_the_session() {
        use super::names_alike;
        assert!(names_alike("carol", "Carol"));
        assert!(names_alike("carol", "carol@corp.example"));
        assert!(names_alike("CORP\\carol", "carol"));
        assert!(!names_alike("carol", "erin"));
        assert!(!names_alike("carol", ""));
        // Not a part of a name, nor the same user in another realm.
        assert!(!names_alike("judy", "ju"));
        assert!(!names_alike("lena", "e"));
        assert!(!names_alike("kate", "xkatex"));
        assert!(!names_alike("rw@example.org", "rw@other.org"));
        assert!(!names_alike("rw@example.org", "example.org"));
        assert!(names_alike("rw@example.org", "RW"));
        assert!(names_alike("rw", "corp\\rw@example.org"));
    }

    use super::*;

    #[test]
    fn a_database_away_is_a_503_a_fault_a_500() {
        let away = user_error(SessionError::Storage(
            crate::storage::StorageError::Database(sqlx::Error::PoolTimedOut),
        ));
        assert_eq!(away, PortalError::Unavailable);
        assert_eq!(status_of(&away), StatusCode::SERVICE_UNAVAILABLE);
        let fault = user_error(SessionError::Storage(
            crate::storage::StorageError::Corrupt("x".into()),
        ));
        assert_eq!(status_of(&fault), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn form_tokens_must_match_exactly() {
        assert!(tokens_match("abc123", "abc123"));
        assert!(!tokens_match("abc123", "abc124"));
        assert!(!tokens_match("abc123", "abc12"));
        assert!(!tokens_match("abc123", ""));
    }

    #[test]
    fn a_refusal_of_any_length_fits_the_form_error_cookie() {
        // The worst text for its length: every byte escaped in JSON, four-byte characters, and
        // the Access-Challenge sentence around it.
        for text in ["\"".repeat(2000), "😀".repeat(500), "ok".into()] {
            for error in [
                SessionError::Rejected {
                    reply_message: Some(text.clone()),
                },
                SessionError::ChallengeUnsupported {
                    reply_message: Some(text.clone()),
                },
            ] {
                let shown = user_error(error);
                let m = shown.to_string();
                assert!(
                    m.contains(&text[..text.chars().next().unwrap().len_utf8()]),
                    "{m}"
                );
                assert_eq!(text.len() > MAX_REFUSAL_BYTES, m.contains('…'), "{m}");
                let wire = serde_json::to_vec(&shown).unwrap();
                assert!(
                    wire.len() <= crate::http::flash::MAX_FLASH,
                    "{}",
                    wire.len()
                );
            }
        }
    }

    #[test]
    fn utc_clock_formats_time_of_day_and_the_date_of_another_day() {
        let day = 86_400_000;
        assert_eq!(utc_clock(0, 0), "00:00:00");
        assert_eq!(
            utc_clock((13 * 3600 + 5 * 60 + 9) * 1000 + 999, 1000),
            "13:05:09"
        );
        assert_eq!(utc_clock(day + 61_000, day), "00:01:01");
        assert_eq!(utc_clock(day + 61_000, day - 1), "1970-01-02 00:01:01");
        // 2024-02-29 (a leap day), 2000-03-01, and the largest Session-Timeout from 2026-12-01.
        assert_eq!(utc_clock(1_709_164_800_000, 0), "2024-02-29 00:00:00");
        assert_eq!(utc_clock(951_868_800_000, 0), "2000-03-01 00:00:00");
        let now = 1_796_083_200_000;
        assert_eq!(utc_clock(now, now), "00:00:00");
        assert_eq!(
            utc_clock(now + u32::MAX as i64 * 1000, now),
            "2163-01-07 06:28:15"
        );
    }
}
