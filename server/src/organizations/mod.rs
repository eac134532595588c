//! Organizations (tenants): their RADIUS servers and session policy, and the
//! disabled-organization guard (design.md §5).
//!
//! The database is the truth at run time ([`crate::storage::organizations`]): the configuration
//! seeds it at start-up ([`seed`]), the CLI (and later the admin API) change it through
//! [`set_active`]. Each process keeps a cache of built organizations ([`Organizations`]) keyed by
//! id with the revision it was built from; a change drops and rebuilds only the changed
//! organization — at once in the process that made it, within [`worker::POLL`] elsewhere (the
//! worker polls the global revision). Paths that must not act on a stale flag (login, refresh,
//! session creation, Accounting-Start) read the flag from the database as well.

pub mod change;

pub mod guard;

pub mod worker;

use crate::{
    config::{Branding, ConfigError, OrganizationSettings},
    radius::{NasIdentity, ServerEndpoint},
    storage::{SeedOutcome, Storage, StorageError, StoredOrganization},
};
use regex::Regex;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

/// One organization, ready to use.
#[derive(Clone, Debug)]
pub struct Organization {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// False = disabled (guard denies login, refresh, Start).
    pub active: bool,
    /// How the portal presents itself as NAS for this organization.
    pub nas: NasIdentity,
    /// Window when the Accept has no Idle-Timeout.
    pub default_window: Duration,
    /// Limit when the Accept has no Session-Timeout.
    pub max_lifetime: Option<Duration>,
    /// Username pattern.
    pub username_pattern: Regex,
    /// End-to-end deadline of a login's RADIUS exchange.
    pub login_timeout: Duration,
    /// Shortest Acct-Interim-Interval honoured (RFC 2869 §5.16: not below 60 s).
    pub min_interim_interval: Duration,
    /// RADIUS servers in order of preference.
    pub servers: Vec<ServerEndpoint>,
    /// How its pages look.
    pub branding: Branding,
    /// When the stored organization it was built from was made
    /// ([`crate::storage::StoredOrganization::created_at`]; None: from the file alone).
    pub made_at: Option<i64>,
}

/// Whether a pattern matches whole names only: it starts with `^` (or `\A`) and ends with `$`
/// (or `\z`).
pub fn anchored(pattern: &str) -> bool {
    let pattern = pattern.trim();
    // Flags first (`(?i)^…$`) are no part of the anchoring.
    let pattern = match pattern.strip_prefix("(?").and_then(|r| r.split_once(')')) {
        Some((flags, rest)) if flags.chars().all(|c| c.is_ascii_alphabetic() || c == '-') => rest,
        _ => pattern,
    };
    (pattern.starts_with('^') || pattern.starts_with("\\A"))
        && (pattern.ends_with('$') || pattern.ends_with("\\z"))
}

/// What an organization's settings say that is likely a mistake (start-up, `check-config`, and
/// after a change through the CLI or the admin API): a username pattern that is searched, not
/// matched whole; a loopback NAS-IP-Address sent to servers elsewhere; a `login_timeout`
/// shorter than a server's `timeout`. `servers`: each server's name, address and timeout.
pub(crate) fn settings_warnings<'a>(
    id: &str,
    username_pattern: &str,
    nas_ip: std::net::IpAddr,
    login_timeout: std::time::Duration,
    min_interim_interval: std::time::Duration,
    servers: impl Iterator<Item = (&'a str, std::net::IpAddr, std::time::Duration)> + Clone,
) -> Vec<String> {
    let mut warnings = Vec::new();
    // RFC 2869 §5.16: an Acct-Interim-Interval SHOULD NOT be under 60 s (black-box tester V's
    // D3: 5 s was taken, and an Interim-Update sent every 5 s per session).
    if min_interim_interval < std::time::Duration::from_secs(60) {
        warnings.push(format!(
            "organization `{id}`: min_interim_interval {} is under RFC 2869's 60 s: every session may send an Interim-Update that often (the load on the accounting servers grows with it)",
            crate::config::exact_duration(&min_interim_interval),
        ));
    }
    // A regular expression is searched: without `^…$` a name that merely contains a match
    // passes. Said, not changed (a pattern written as a search keeps working).
    if !anchored(username_pattern) {
        warnings.push(format!(
            "organization `{id}`: username_pattern `{username_pattern}` is not anchored (^…$): any username that merely contains a match is accepted"
        ));
    }
    // NAS-IP-Address names the portal to servers elsewhere (their client lists, ISE's session
    // directory, CoA): a loopback address says nothing there.
    if nas_ip.is_loopback()
        && servers
            .clone()
            .any(|(_, address, _)| !address.is_loopback())
    {
        warnings.push(format!(
            "organization `{id}`: nas_ip {nas_ip} is a loopback address but the RADIUS servers are elsewhere: set nas_ip to the address the servers see the portal at"
        ));
    }
    // A sign-in gives up before such a server's first timeout: an answer slower than that is
    // never waited for, nor a retransmission made.
    for (name, _, timeout) in servers {
        if login_timeout < timeout {
            warnings.push(format!(
                "organization `{id}`: login_timeout {} is shorter than server `{name}`'s timeout {}: a sign-in gives up before that server has had its timeout to answer (a slower answer is never waited for, no request is sent again, and its silence until then counts against it: its circuit breaker opens); make login_timeout at least the timeout",
                crate::config::exact_duration(&login_timeout),
                crate::config::exact_duration(&timeout),
            ));
        }
    }
    warnings
}

impl Organization {
    /// [`settings_warnings`] of this organization.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut warnings = settings_warnings(
            &self.id,
            self.username_pattern.as_str(),
            self.nas.ip,
            self.login_timeout,
            self.min_interim_interval,
            self.servers
                .iter()
                .map(|s| (s.name.as_str(), s.auth_addr.ip(), s.timeout)),
        );
        // A logo file checked when it was set, moved or replaced since (black-box tester S's
        // D1: every page showed a broken image, and nothing said why).
        if let Some(problem) = self
            .branding
            .logo_file
            .as_deref()
            .and_then(crate::config::logo_problem)
        {
            warnings.push(format!(
                "organization `{}`: branding.logo_file {problem}: its pages show a missing image until it can be served",
                self.id
            ));
        }
        warnings
    }

    /// Builds an organization from its settings (already validated: errors name `key` anyway).
    pub fn from_settings(key: &str, s: &OrganizationSettings) -> Result<Organization, ConfigError> {
        let username_pattern = Regex::new(&s.username_pattern).map_err(|e| ConfigError {
            key: format!("{key}.username_pattern"),
            problem: e.to_string(),
        })?;
        let servers = s
            .servers
            .iter()
            .enumerate()
            .map(|(j, server)| {
                Ok(ServerEndpoint {
                    name: server.name.clone(),
                    auth_addr: SocketAddr::new(server.address, server.auth_port),
                    acct_addr: SocketAddr::new(server.address, server.acct_port),
                    secret: server.load_secret(&format!("{key}.servers[{j}]"))?,
                    timeout: server.timeout,
                    retries: server.retries,
                    message_authenticator: server.require_message_authenticator,
                    status_check: server.status_check,
                    organization: s.id.clone(),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Organization {
            id: s.id.clone(),
            // Shown as a name (pages, titles): spaces around it are no part of it (a stored
            // organization's name, set over this one, is trimmed the same way).
            name: s.name.trim().to_string(),
            active: s.enabled.unwrap_or(true),
            nas: NasIdentity {
                ip: s.nas_ip,
                identifier: s.nas_identifier.clone(),
            },
            default_window: s.default_window,
            max_lifetime: s.max_lifetime,
            username_pattern,
            login_timeout: s.login_timeout,
            min_interim_interval: s.min_interim_interval,
            servers,
            branding: s.branding.clone(),
            made_at: None,
        })
    }
}

/// Why organizations could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrganizationError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored or configured organization's settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Stored settings could not be read back.
    #[error("organization `{0}`: stored settings are unreadable: {1}")]
    Corrupt(String, String),
}

impl OrganizationError {
    /// A refused key of the configuration file with its line (`settings` read from it).
    pub fn at_line(self, settings: &crate::config::Settings) -> Self {
        match self {
            OrganizationError::Config(e) => OrganizationError::Config(settings.at_line(e)),
            other => other,
        }
    }
}

/// The organizations this process knows, by id, each with the revision it was built from.
/// Unknown ids resolve to `None` (the guard then denies: fail closed). Shared as `Arc`.
#[derive(Debug)]
pub struct Organizations {
    by_id: RwLock<HashMap<String, (i64, Arc<Organization>)>>,
    /// The organization the login page at `/` signs into (first in configuration order).
    default_id: RwLock<String>,
    /// Global revision the cache was last brought up to.
    revision: RwLock<i64>,
    /// Counts the refreshes that changed something (the RADIUS prober follows the servers).
    changes: tokio::sync::watch::Sender<u64>,
    /// The [`Organizations::secret_conflicts`] last logged: each is logged when it appears,
    /// not again at every change of the organizations.
    conflicts_said: std::sync::Mutex<Vec<String>>,
    /// Held by a refresh for the whole of it, one at a time (the worker's poll and a change's
    /// own): a pass that read the database before another's write must not overwrite what
    /// that one stored. It holds the stored organizations whose settings could not be built
    /// (a secret file unreadable, say): each with the revision that failed and when to try it
    /// again ([`UNBUILT_RETRY`]) — a file put right is picked up without a restart or a change
    /// of the organization (which a disabled one refuses), and the Stops waiting for it leave.
    unbuilt: tokio::sync::Mutex<HashMap<String, Unbuilt>>,
    /// Counts the organizations that could not be built and can be used again: the accounting
    /// they held is tried at once, not after its back-off.
    usable_again: tokio::sync::watch::Sender<u64>,
}

/// A stored revision whose settings could not be built.
#[derive(Clone, Debug)]
struct Unbuilt {
    revision: i64,
    /// When to try it again.
    next_try: std::time::Instant,
    /// Why it failed last (a new reason is logged).
    why: String,
}

/// How often settings that could not be built are tried again.
pub const UNBUILT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl Organizations {
    /// In memory only, from settings (tools and tests that have no database): the first is
    /// the default.
    pub fn from_settings(settings: &[OrganizationSettings]) -> Result<Organizations, ConfigError> {
        let mut by_id = HashMap::new();
        for (i, s) in settings.iter().enumerate() {
            let org = Organization::from_settings(&format!("organizations[{i}]"), s)?;
            by_id.insert(s.id.clone(), (0, Arc::new(org)));
        }
        let default_id = settings
            .first()
            .map(|s| s.id.clone())
            .ok_or_else(|| ConfigError {
                key: "organizations".into(),
                problem: "at least one organization is required".into(),
            })?;
        Ok(Organizations {
            by_id: RwLock::new(by_id),
            default_id: RwLock::new(default_id),
            revision: RwLock::new(0),
            changes: tokio::sync::watch::Sender::new(0),
            conflicts_said: Default::default(),
            unbuilt: Default::default(),
            usable_again: tokio::sync::watch::Sender::new(0),
        })
    }

    /// What `serve` would hold once it seeded the file's organizations into a database that
    /// holds `stored`: the file's, and the stored ones the file does not list (created at run
    /// time, or no longer listed — whose sessions still need their Stops). One whose stored
    /// settings cannot be read is left out (`serve` reports it). For `check-config`.
    pub fn from_settings_and_stored(
        settings: &[OrganizationSettings],
        stored: &[StoredOrganization],
    ) -> Result<Organizations, ConfigError> {
        let organizations = Organizations::from_settings(settings)?;
        {
            let mut by_id = organizations
                .by_id
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for row in stored {
                if by_id.contains_key(&row.id) {
                    continue;
                }
                if let Ok(org) = build_stored(row) {
                    by_id.insert(row.id.clone(), (row.revision, Arc::new(org)));
                }
            }
        }
        Ok(organizations)
    }

    /// What `serve` would say of the stored organizations the file does not list whose
    /// settings cannot be built now (a secret file unreadable, say): sign-ins refused, Stops
    /// held until they can. For `check-config`.
    pub fn stored_unusable(
        settings: &[OrganizationSettings],
        stored: &[StoredOrganization],
    ) -> Vec<String> {
        stored
            .iter()
            .filter(|row| !settings.iter().any(|s| s.id == row.id))
            .filter_map(|row| build_stored(row).err().map(|e| (row, e)))
            .map(|(row, e)| {
                format!(
                    "organization `{}` (stored in the database, not in this file) cannot be used: {e}; its sign-ins are refused and its accounting waits until it can",
                    row.id
                )
            })
            .collect()
    }

    /// Everything stored (the database is the truth).
    pub async fn load(storage: &Storage) -> Result<Organizations, OrganizationError> {
        let organizations = Organizations {
            by_id: RwLock::default(),
            default_id: RwLock::default(),
            revision: RwLock::new(-1),
            changes: tokio::sync::watch::Sender::new(0),
            conflicts_said: Default::default(),
            unbuilt: Default::default(),
            usable_again: tokio::sync::watch::Sender::new(0),
        };
        organizations.refresh(storage).await?;
        Ok(organizations)
    }

    /// Brings the cache up to the stored state: rebuilds the organizations whose revision
    /// changed and those whose settings could not be built before (every [`UNBUILT_RETRY`]),
    /// drops removed ones, leaves every other entry untouched (same `Arc`). Returns the ids
    /// that changed. One small query when nothing changed.
    pub async fn refresh(&self, storage: &Storage) -> Result<Vec<String>, OrganizationError> {
        let mut waiting = self.unbuilt.lock().await;
        let revision = storage.organization_revision().await?;
        let now = std::time::Instant::now();
        // The revisions that could not be built, and which of them are due to be tried again.
        let failed: HashMap<String, Unbuilt> = waiting.clone();
        let due = |id: &str, rev: i64| {
            failed
                .get(id)
                .is_some_and(|u| u.revision == rev && u.next_try <= now)
        };
        if *self.revision.read().unwrap_or_else(|p| p.into_inner()) == revision
            && !failed.iter().any(|(id, u)| due(id, u.revision))
        {
            return Ok(Vec::new());
        }
        let stored = storage.organizations().await?;
        let known: HashMap<String, i64> = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (rev, _))| (id.clone(), *rev))
            .collect();
        let mut rebuilt = Vec::new();
        let mut changed = Vec::new();
        // Built this pass, and of them those that failed (with why).
        let mut tried = std::collections::HashSet::new();
        let mut unbuilt = Vec::new();
        let mut usable_again = false;
        for row in &stored {
            let failed_before = failed.get(&row.id).filter(|u| u.revision == row.revision);
            let up_to_date = known.get(&row.id) == Some(&row.revision) || failed_before.is_some();
            if up_to_date && !due(&row.id, row.revision) {
                continue;
            }
            tried.insert(row.id.clone());
            let built = build_stored(row);
            if let (Some(before), Err(e)) = (failed_before, &built) {
                // Still not: said when it first failed, and again only for another reason.
                let why = e.to_string();
                if why != before.why {
                    tracing::error!(organization = %row.id, error = %e,
                        "organization still cannot be used, now for another reason (a running portal tries it again every 5 s)");
                }
                unbuilt.push((row.id.clone(), row.revision, why));
                continue;
            }
            changed.push(row.id.clone());
            match built {
                Ok(org) => {
                    if failed_before.is_some() {
                        tracing::info!(organization = %row.id, "organization's settings can be used now");
                        usable_again = true;
                    }
                    rebuilt.push((row.id.clone(), row.revision, Some(Arc::new(org))))
                }
                Err(e) => {
                    unbuilt.push((row.id.clone(), row.revision, e.to_string()));
                    // The same organization's (not one deleted since and made again under
                    // its id: its servers are no longer this organization's — the guard
                    // review's M2).
                    match self.get(&row.id).filter(|o| o.made_at == row.created_at) {
                        // Its sessions still need their Stops: keep the last settings that
                        // worked, with the stored flag and name (a disable must still take
                        // effect).
                        Some(previous) => {
                            tracing::error!(organization = %row.id, error = %e,
                                "organization's new settings cannot be used: keeping its previous ones (a running portal tries the new ones again every 5 s)");
                            let mut org = Organization::clone(&previous);
                            org.active = row.active;
                            org.name = row.name.trim().to_string();
                            rebuilt.push((row.id.clone(), row.revision, Some(Arc::new(org))));
                        }
                        // Fail closed: an organization that was never built is unknown (login
                        // and Start denied; its queued Stops wait for it, see `accounting`) —
                        // also one made again (the deleted one's sessions had all ended and
                        // their accounting was settled: a delete refuses otherwise).
                        None => {
                            tracing::error!(organization = %row.id, error = %e,
                                "organization cannot be used (a running portal tries it again every 5 s)");
                            rebuilt.push((row.id.clone(), row.revision, None));
                        }
                    }
                }
            }
        }
        let revisions: HashMap<&str, i64> = stored
            .iter()
            .map(|row| (row.id.as_str(), row.revision))
            .collect();
        let removed: Vec<String> = known
            .keys()
            .filter(|id| !revisions.contains_key(id.as_str()))
            .cloned()
            .collect();
        {
            let mut by_id = self.by_id.write().unwrap_or_else(|p| p.into_inner());
            for (id, rev, org) in rebuilt {
                match org {
                    Some(org) => by_id.insert(id, (rev, org)),
                    None => by_id.remove(&id),
                };
            }
            for id in &removed {
                by_id.remove(id);
            }
        }
        // What was tried is settled by this pass; the rest waits on while it is the
        // organization's stored revision.
        waiting
            .retain(|id, u| !tried.contains(id) && revisions.get(id.as_str()) == Some(&u.revision));
        for (id, revision, why) in unbuilt {
            let next_try = now + UNBUILT_RETRY;
            waiting.insert(
                id,
                Unbuilt {
                    revision,
                    next_try,
                    why,
                },
            );
        }
        if usable_again {
            self.usable_again.send_modify(|n| *n += 1);
        }
        changed.extend(removed);
        if let Some(first) = stored.first() {
            *self.default_id.write().unwrap_or_else(|p| p.into_inner()) = first.id.clone();
        }
        *self.revision.write().unwrap_or_else(|p| p.into_inner()) = revision;
        if !changed.is_empty() {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(changed)
    }

    /// How many times an organization whose settings could not be built became usable.
    pub fn usable_count(&self) -> u64 {
        *self.usable_again.borrow()
    }

    /// Changes when an organization whose settings could not be built can be used again.
    pub fn usable_again(&self) -> tokio::sync::watch::Receiver<u64> {
        self.usable_again.subscribe()
    }

    /// Tells when the cache changed (a receiver sees each change once; the value means nothing).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Each address that servers reach with different secrets, its servers (organization/
    /// server) grouped by the secret they share — the largest group first, the secrets never
    /// shown: a RADIUS server knows one secret per client, so all but one group are wrong, and
    /// their requests go unanswered (each secret has a circuit breaker of its own, so the
    /// others are not held up). For `check-config` and the log.
    pub fn secret_conflicts(&self) -> Vec<String> {
        let orgs = self.all();
        let mut at: std::collections::BTreeMap<std::net::SocketAddr, Vec<(String, &str)>> =
            Default::default();
        for org in &orgs {
            for server in &org.servers {
                let mut addrs = vec![server.auth_addr, server.acct_addr];
                addrs.dedup();
                for addr in addrs {
                    at.entry(addr).or_default().push((
                        format!("`{}/{}`", org.id, server.name),
                        server.secret.expose(),
                    ));
                }
            }
        }
        let mut conflicts = Vec::new();
        for (addr, users) in at {
            let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
            for (name, secret) in users {
                match groups.iter_mut().find(|(s, _)| *s == secret) {
                    Some((_, names)) => names.push(name),
                    None => groups.push((secret, vec![name])),
                }
            }
            if groups.len() < 2 {
                continue;
            }
            for (_, names) in &mut groups {
                names.sort();
            }
            groups.sort_by(|(_, a), (_, b)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            let said: Vec<String> = groups
                .iter()
                .enumerate()
                .map(|(i, (_, names))| {
                    let which = if i == 0 { "one secret" } else { "another" };
                    format!("{which}: {}", names.join(", "))
                })
                .collect();
            conflicts.push(format!(
                "RADIUS servers at {addr} are reached with {} different secrets ({}): a RADIUS server knows one secret per client, so the requests sent with all but one of them go unanswered",
                groups.len(),
                said.join("; ")
            ));
        }
        conflicts
    }

    /// Logs each of [`Organizations::secret_conflicts`] that was not there at the last call.
    pub fn warn_about_secrets_that_differ(&self) {
        let conflicts = self.secret_conflicts();
        let mut said = self
            .conflicts_said
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for conflict in conflicts.iter().filter(|c| !said.contains(c)) {
            tracing::warn!("{conflict}");
        }
        *said = conflicts;
    }

    /// Every organization's RADIUS servers as cached now.
    pub fn servers(&self) -> Vec<ServerEndpoint> {
        self.all()
            .iter()
            .flat_map(|org| org.servers.iter().cloned())
            .collect()
    }

    /// The enabled organizations' RADIUS servers as cached now.
    pub fn enabled_servers(&self) -> Vec<ServerEndpoint> {
        self.all()
            .iter()
            .filter(|org| org.active)
            .flat_map(|org| org.servers.iter().cloned())
            .collect()
    }

    /// An organization with the stored revision it was built from.
    pub fn get_revised(&self, id: &str) -> Option<(i64, Arc<Organization>)> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(revision, org)| (*revision, org.clone()))
    }

    /// The organization `id`, if this process knows it.
    pub fn get(&self, id: &str) -> Option<Arc<Organization>> {
        self.get_revised(id).map(|(_, org)| org)
    }

    /// The id as written of the organization `name` names, in any letter case.
    pub fn id_of(&self, name: &str) -> Option<String> {
        if self.get(name).is_some() {
            return Some(name.to_owned());
        }
        self.id_in_other_case(name)
    }

    /// The id of the organization whose id is `slug` in other letter case (ids that differ
    /// only in case count as one), if `slug` is not an id itself.
    pub fn id_in_other_case(&self, slug: &str) -> Option<String> {
        let by_id = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        if by_id.contains_key(slug) {
            return None;
        }
        by_id
            .keys()
            .find(|id| id.eq_ignore_ascii_case(slug))
            .cloned()
    }

    /// The organization the login page at `/` signs into.
    pub fn default_id(&self) -> String {
        self.default_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every organization (a snapshot).
    pub fn all(&self) -> Vec<Arc<Organization>> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(_, org)| org.clone())
            .collect()
    }
}

/// Builds a stored organization (settings from JSON, the flag from its column).
pub(crate) fn build_stored(row: &StoredOrganization) -> Result<Organization, OrganizationError> {
    let json = row.settings.as_deref().ok_or_else(|| {
        OrganizationError::Corrupt(
            row.id.clone(),
            "no settings stored (list it in the configuration)".into(),
        )
    })?;
    let settings: OrganizationSettings = serde_json::from_str(json)
        .map_err(|e| OrganizationError::Corrupt(row.id.clone(), e.to_string()))?;
    let mut org = Organization::from_settings(&format!("organizations.{}", row.id), &settings)?;
    org.active = row.active;
    org.name = row.name.trim().to_string();
    org.made_at = row.created_at;
    Ok(org)
}

/// Seeds the store from the configuration: creates or updates every listed organization (and
/// applies a listed `enabled`), logging what changed. Nothing is written unless the whole
/// configuration can be used ([`check_seed`]): a broken entry stops start-up instead of being
/// stored.
pub async fn seed(
    storage: &Storage,
    settings: &[OrganizationSettings],
    moves: ServerMoves,
) -> Result<(), OrganizationError> {
    check_seed(storage, settings, moves).await?;
    let stored = storage.organizations().await?;
    for said in listed_but_disabled(&stored, settings) {
        tracing::warn!("{said}");
    }
    for said in root_moves(&stored, settings)
        .into_iter()
        .chain(demo_database(&stored, settings))
    {
        tracing::warn!("{said}");
    }
    // A disable the file undoes now: said as a warning, not among the settings updated.
    for row in stored.iter().filter(|row| !row.active) {
        if file_enables(settings, &row.id) {
            tracing::warn!(organization = %row.id, "organization disabled in the database enabled again: {}", enabled_again_by_file(&row.id));
        }
    }
    for (i, s) in settings.iter().enumerate() {
        let json = serde_json::to_string(s)
            .map_err(|e| OrganizationError::Corrupt(s.id.clone(), e.to_string()))?;
        let outcome = storage
            .seed_organization(
                &s.id,
                &s.name,
                &json,
                s.enabled,
                i as i64,
                crate::access_session::now_ms(),
            )
            .await?;
        match outcome {
            SeedOutcome::Created => {
                tracing::info!(organization = %s.id, "organization created from the configuration")
            }
            SeedOutcome::Updated(parts) => {
                tracing::info!(organization = %s.id, changed = ?parts, "organization updated from the configuration")
            }
            SeedOutcome::Unchanged => {
                tracing::debug!(organization = %s.id, "organization unchanged")
            }
            SeedOutcome::OtherCase(other) => {
                return Err(OrganizationError::Config(ConfigError {
                    key: format!("organizations[{i}].id"),
                    problem: other_case(&s.id, &other),
                }))
            }
        }
    }
    // Removed from the configuration: disabled (its open sessions are stopped), kept for the
    // record; listing it again updates it (and `enabled = true` enables it again).
    for stored in storage.organizations().await? {
        if stored.from_config && !settings.iter().any(|s| s.id == stored.id) {
            let now = crate::access_session::now_ms();
            if storage
                .retire_from_config(&stored.id, now)
                .await?
                .is_some_and(|c| c.changed)
            {
                tracing::warn!(organization = %stored.id, "organization removed from the configuration: disabled, its open sessions are stopped");
            }
        }
    }
    Ok(())
}

/// What the next start changes of each organization the file lists and the database holds (as
/// [`seed`] finds it): its id and the keys that differ (never values: secrets are among them),
/// for those where any do. `check-config` and `radius test` say them: the running portal uses
/// the database's until then.
pub fn file_changes(
    stored: &[StoredOrganization],
    settings: &[OrganizationSettings],
) -> Vec<(String, Vec<String>)> {
    settings
        .iter()
        .filter_map(|s| {
            let row = stored.iter().find(|row| row.id == s.id)?;
            let file = serde_json::to_string(s).ok()?;
            let mut changed = Vec::new();
            if row.name != s.name {
                changed.push("name".to_string());
            }
            if row.settings.as_deref() != Some(file.as_str()) {
                changed.extend(crate::storage::settings_changes(
                    row.settings.as_deref().unwrap_or("{}"),
                    &file,
                ));
            }
            (!changed.is_empty()).then(|| (s.id.clone(), changed))
        })
        .collect()
}

/// The configuration file lists organization `id` with `enabled = true` while it is disabled:
/// said by `org disable`, the admin API's disable, `check-config` and the start-up itself, so a
/// disable is not undone by a restart unawares (the file's `enabled` is applied at every start).
pub fn enabled_again_by_file(id: &str) -> String {
    format!("the configuration file says `enabled = true` for organization `{id}`, applied at every start of the portal: a disable made with `org disable` or the admin API lasts until the next start — remove that line (or write `enabled = false`) to keep it disabled")
}

/// The configuration file lists organization `id` with `enabled = false` while it is enabled:
/// said by `org enable` and the admin API's enable, so an enable is not undone by a restart
/// unawares — the start disables it again and stops its open sessions (black-box tester M's
/// D3; `check-config` says what the start does).
pub fn disabled_again_by_file(id: &str) -> String {
    format!("the configuration file says `enabled = false` for organization `{id}`, applied at every start of the portal: an enable made with `org enable` or the admin API lasts until the next start, which disables it again and stops its open sessions — remove that line (or write `enabled = true`) to keep it enabled")
}

/// What the configuration says of organization `id`'s `enabled` (applied at every start), if it
/// lists it with one.
pub fn file_says_enabled(settings: &[OrganizationSettings], id: &str) -> Option<bool> {
    settings.iter().find(|s| s.id == id).and_then(|s| s.enabled)
}

/// Whether the configuration lists organization `id` with `enabled = true`.
pub fn file_enables(settings: &[OrganizationSettings], id: &str) -> bool {
    file_says_enabled(settings, id) == Some(true)
}

/// The organization `/` serves is another with this configuration than at the last start (one
/// put before it in the file, or it removed): the sessions signed in at `/` are the one that
/// was first's, and the pages at `/` no longer find them. A sentence, said at start-up and by
/// `check-config`; None when `/` stays (or nothing was served yet).
pub fn root_moves(
    stored: &[StoredOrganization],
    settings: &[OrganizationSettings],
) -> Option<String> {
    // Stored in the file's order at the last start, those it listed first.
    let before = stored.first().filter(|row| row.from_config)?;
    let after = settings.first()?;
    if before.id == after.id {
        return None;
    }
    if !settings.iter().any(|s| s.id == before.id) {
        // Removed from the file: this start disables it (said apart), its sessions end.
        return Some(format!(
            "`/` serves organization `{after}` from this start (the first in the configuration file), not `{before}` as before, which the file no longer lists",
            after = after.id,
            before = before.id
        ));
    }
    Some({
        format!(
            "`/` serves organization `{after}` from this start (the first in the configuration file), not `{before}` as before: sessions signed in at `/` are `{before}`'s, and pages at `/` no longer show them (a session page left open there says it is gone, while it runs) — their users find them at `/o/{before}/session`; put `{before}` first again to keep `/` as it was",
            after = after.id,
            before = before.id
        )
    })
}

/// The NAS-Identifier of `radius-portal demo`'s organization: what tells its database apart.
pub const DEMO_NAS_IDENTIFIER: &str = "radius-portal-demo";

/// The database was made by `radius-portal demo` (it holds the demo's organization, which this
/// configuration does not list): its sessions' Stops go to the demo's built-in RADIUS server,
/// which runs only in demo mode, so they would wait in the backlog for ever. A sentence, said
/// at start-up and by `check-config`.
pub fn demo_database(
    stored: &[StoredOrganization],
    settings: &[OrganizationSettings],
) -> Option<String> {
    let demo = stored.iter().find(|row| {
        !settings.iter().any(|s| s.id == row.id)
            && row
                .settings
                .as_deref()
                .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
                .is_some_and(|v| v["nas_identifier"] == DEMO_NAS_IDENTIFIER)
    })?;
    Some(format!(
        "this database was made by `radius-portal demo` (it holds its organization `{}`): the demo's sessions' Stops go to the demo's built-in RADIUS server, which runs only in demo mode, so they wait in `accounting backlog` for ever — give `serve` a database of its own (`[database] path`)",
        demo.id
    ))
}

/// Organizations the configuration lists without `enabled` that are disabled in the database
/// (by an operator, the admin API, or an earlier start without them in the file): they stay
/// disabled, which a file put back after a mistake does not show. A sentence for each, said at
/// start-up and by `check-config`.
pub fn listed_but_disabled(
    stored: &[StoredOrganization],
    settings: &[OrganizationSettings],
) -> Vec<String> {
    settings
        .iter()
        .filter(|s| s.enabled.is_none())
        .filter(|s| stored.iter().any(|row| row.id == s.id && !row.active))
        .map(|s| {
            format!(
                "organization `{id}` is listed in the configuration but disabled in the database, and the file does not say `enabled`: it stays disabled (sign-ins refused) until enabled — `org enable {id}`, the admin API, or `enabled = true` in the file (`enabled = false` there says it is meant)",
                id = s.id
            )
        })
        .collect()
}

/// What must hold before the configuration is stored, so that no session loses its Stop:
/// every listed organization builds (secrets resolved); a server that goes away from a listed
/// organization (removed or renamed) is not needed by a session — its accounting goes to it by
/// name, as the admin API refuses the same change; an organization removed from the
/// configuration while sessions still need its servers still has its servers' secrets (a
/// `secret_file` that went with it would hold its Stops forever). Reads only (`check-config`
/// runs it too).
pub async fn check_seed(
    storage: &Storage,
    settings: &[OrganizationSettings],
    moves: ServerMoves,
) -> Result<(), OrganizationError> {
    let conflict =
        |key: String, problem: String| OrganizationError::Config(ConfigError { key, problem });
    let stored = storage.organizations().await?;
    for (i, s) in settings.iter().enumerate() {
        Organization::from_settings(&format!("organizations[{i}]"), s)?;
        // One stored under the same id in other letters (created through the CLI or the API):
        // the two would be told apart by a URL's case alone.
        if let Some(other) = stored
            .iter()
            .find(|row| row.id != s.id && row.id.eq_ignore_ascii_case(&s.id))
        {
            return Err(conflict(
                format!("organizations[{i}].id"),
                other_case(&s.id, &other.id),
            ));
        }
        let Some(row) = stored.iter().find(|row| row.id == s.id) else {
            continue;
        };
        if let Err(needed) =
            servers_still_needed(storage, &s.id, &stored_servers(row), &s.servers, moves).await?
        {
            return Err(conflict(
                format!("organizations[{i}].servers"),
                needed.advice(" (their accounting goes to it by name, and a Stop must reach the server that has its Start): list it as it was until they have ended"),
            ));
        }
    }
    // Removed from the file now (this start disables them and queues their Stops): what a Stop
    // needs of the stored settings, each server's secret, must still be there. (Organizations
    // created through the CLI or the API, or removed at an earlier start, are not touched by
    // this start: one that cannot be built fails closed, see `Organizations::refresh`.)
    for row in stored
        .iter()
        .filter(|row| row.from_config && !settings.iter().any(|s| s.id == row.id))
    {
        let Err(e) = stop_secrets(row) else {
            continue;
        };
        let mut needing = 0;
        for server in stored_servers(row) {
            if let Some(name) = server.get("name").and_then(serde_json::Value::as_str) {
                needing += storage.sessions_needing_server(&row.id, name).await?;
            }
        }
        if needing > 0 {
            return Err(conflict(
                "organizations".into(),
                format!("organization `{}` is no longer listed and {needing} session(s) still need its servers for their Stops, but a server's secret cannot be read ({e}): restore it until its sessions have been stopped", row.id),
            ));
        }
    }
    Ok(())
}

/// Whether a server kept by name may send its accounting somewhere else (another address or
/// accounting port) while sessions still need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMoves {
    /// Refused: the new address may be another server, which never saw their Starts.
    Refused,
    /// Allowed: the demo's built-in server, on new ports at every start, is the same server.
    SameServer,
}

/// The server entries of a stored organization's settings, as stored (none if unreadable).
pub(crate) fn stored_servers(row: &StoredOrganization) -> Vec<serde_json::Value> {
    row.settings
        .as_deref()
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|v| v.get("servers").and_then(|s| s.as_array()).cloned())
        .unwrap_or_default()
}

/// Whether an organization's servers may become `after` (from `stored`, its stored server
/// entries) without leaving a session's accounting nowhere to go: its sessions' accounting goes
/// to the server that authenticated them *by name*, so a server they still need (open, or with
/// accounting not yet delivered) may neither go (removed, renamed) nor send its accounting
/// somewhere else (another address or accounting port: maybe another server, which never saw
/// their Starts); nor may one that Stop copies wait for (it was down when another server took
/// a Stop of a session it had the Start of: gone, the copies would be given up at once). A new
/// secret, timeout or authentication port is fine. `Ok(Err(needed))` says which server and
/// why; the caller adds what to do. The one check for every way servers change: the file at
/// start (and `check-config`), the CLI and the admin API.
pub(crate) async fn servers_still_needed(
    storage: &Storage,
    organization_id: &str,
    stored: &[serde_json::Value],
    after: &[crate::config::ServerSettings],
    moves: ServerMoves,
) -> Result<Result<(), ServerNeeded>, StorageError> {
    for (name, moved_to) in servers_freed(stored, after, moves) {
        let name = name.as_str();
        let sessions = storage
            .sessions_needing_server(organization_id, name)
            .await?;
        // Those a day old are given up at their next attempt: a server down for good can go
        // then, even if no portal ran meanwhile to give them up.
        let since = crate::access_session::now_ms() - crate::accounting::COPY_GIVE_UP_MS;
        let copies = storage
            .copies_waiting_for(organization_id, name, since)
            .await?;
        let needing = sessions + copies;
        if needing == 0 {
            continue;
        }
        let problem = match moved_to {
            None if sessions > 0 => format!(
                "server `{name}` would be removed (or renamed), but {sessions} session(s) whose accounting goes to it still need it (open, or with accounting not yet delivered; the server that authenticated a session, or the one that took its Start when that one was down)"
            ),
            None => format!(
                "server `{name}` would be removed (or renamed), but {copies} Stop copy(ies) still wait for it (it was down when another server took the Stop; `accounting backlog`)"
            ),
            Some((from, to)) => format!(
                "server `{name}` would send accounting to {to} instead of {from}, but it is still needed {needing} time(s) (sessions open or with accounting not yet delivered, and Stop copies waiting for it)"
            ),
        };
        return Ok(Err(ServerNeeded {
            problem,
            copies_only: sessions == 0,
            give_up_copies: format!(
                "accounting give-up-copies --org {} --server {}",
                shell_word(organization_id),
                shell_word(name)
            ),
            give_up_ended: give_up_command(organization_id),
        }));
    }
    Ok(Ok(()))
}

/// The servers of `stored` that `after` removes (or renames) — and, unless `moves` is
/// [`ServerMoves::SameServer`], keeps by name with their accounting sent elsewhere (from, to):
/// those no session may need ([`servers_still_needed`]).
pub(crate) fn servers_freed(
    stored: &[serde_json::Value],
    after: &[crate::config::ServerSettings],
    moves: ServerMoves,
) -> Vec<(String, Option<(SocketAddr, SocketAddr)>)> {
    stored
        .iter()
        .filter_map(|entry| {
            let name = entry.get("name").and_then(serde_json::Value::as_str)?;
            let moved_to = match after.iter().find(|s| s.name == name) {
                None => None,
                Some(_) if moves == ServerMoves::SameServer => return None,
                Some(kept) => Some(accounting_move(entry, kept)?),
            };
            Some((name.to_string(), moved_to))
        })
        .collect()
}

/// `word` as a shell reads it back: as it is when it holds nothing a shell treats specially,
/// else in single quotes.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@/+=,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Why a server may neither go nor move ([`servers_still_needed`]).
#[derive(Debug)]
pub(crate) struct ServerNeeded {
    /// Which server, what the change would do, and what needs it.
    pub problem: String,
    /// Only Stop copies wait for it: no session ends them (they go when it answers, or are
    /// given up a day after their Stop went out), so "until they have ended" is not the advice.
    pub copies_only: bool,
    /// The operator command that gives the copies up (a server gone for good).
    pub give_up_copies: String,
    /// The operator command that gives up what the organization's ended sessions wait to send
    /// (every server of the organization gone for good).
    pub give_up_ended: String,
}

/// The operator command that gives up what an organization's ended sessions wait to send,
/// when none of its servers will ever answer again (`accounting give-up`).
pub(crate) fn give_up_command(organization_id: &str) -> String {
    format!("accounting give-up --org {}", shell_word(organization_id))
}

impl ServerNeeded {
    /// The problem and what to do: `until_sessions_end` when sessions need the server, else
    /// wait for its copies.
    pub(crate) fn advice(&self, until_sessions_end: &str) -> String {
        if self.copies_only {
            format!(
                "{}: keep it as it is until they are sent (when it answers) or given up (a day after each copy was made; from then on the change is accepted, whether or not a portal ran meanwhile) — a Stop must reach the server that has its Start; for a server gone for good, `{}` gives them up now",
                self.problem, self.give_up_copies
            )
        } else {
            format!(
                "{}{until_sessions_end} — for a server gone for good, add its replacement beside it as a server of its own (their Stops fail over to it; then `{}` for the copies left waiting here) and remove this one once nothing needs it, or, should no server of the organization ever answer again, `{}` gives up what its ended sessions wait to send",
                self.problem, self.give_up_copies, self.give_up_ended
            )
        }
    }
}

/// The first server of `after` that is not among the `stored` entries by name, or sends its
/// accounting to another address or port than its stored entry.
pub(crate) fn new_or_moved_server<'a>(
    stored: &[serde_json::Value],
    after: &'a [crate::config::ServerSettings],
) -> Option<&'a str> {
    after
        .iter()
        .find(|server| {
            let Some(entry) = stored
                .iter()
                .find(|e| e.get("name").and_then(serde_json::Value::as_str) == Some(&server.name))
            else {
                return true;
            };
            accounting_move(entry, server).is_some()
        })
        .map(|server| server.name.as_str())
}

/// Where a stored server entry's accounting goes (from) and where `kept`, its new settings,
/// sends it (to), if they differ. None when they are the same, or the entry is unreadable as
/// stored (only its name can be compared then).
fn accounting_move(
    entry: &serde_json::Value,
    kept: &crate::config::ServerSettings,
) -> Option<(SocketAddr, SocketAddr)> {
    let to = SocketAddr::new(kept.address.to_canonical(), kept.acct_port);
    accounting_address(entry)
        .filter(|from| *from != to)
        .map(|from| (from, to))
}

/// Where a stored server entry sends accounting (its address and accounting port, read as
/// [`change::destination`] reads them).
fn accounting_address(entry: &serde_json::Value) -> Option<SocketAddr> {
    let (address, _, acct_port) = change::destination(entry.as_object()?);
    Some(SocketAddr::new(
        address?.parse().ok()?,
        u16::try_from(acct_port).ok()?,
    ))
}

/// Whether each server's secret of a stored organization can be read (what its Stops need).
fn stop_secrets(row: &StoredOrganization) -> Result<(), OrganizationError> {
    let json = row.settings.as_deref().unwrap_or("{}");
    let settings: OrganizationSettings = serde_json::from_str(json)
        .map_err(|e| OrganizationError::Corrupt(row.id.clone(), e.to_string()))?;
    for (j, server) in settings.servers.iter().enumerate() {
        server.load_secret(&format!("organizations.{}.servers[{j}]", row.id))?;
    }
    Ok(())
}

/// How many open sessions organization `id` keeps if it is enabled now: Some while a disable's
/// stop of its sessions has not been done (an enable skips it) and it has some, None otherwise
/// (nothing to say of a skipped stop that had no session to stop).
pub async fn kept_by_an_enable(
    storage: &Storage,
    id: &str,
) -> Result<Option<usize>, crate::storage::StorageError> {
    let jobs = storage.pending_organization_jobs().await?;
    if !stop_among(&jobs, id) {
        return Ok(None);
    }
    // Not those a termination asked for before still stops (black-box tester M's D2).
    let open = storage
        .active_session_ids_of(id)
        .await?
        .into_iter()
        .filter(|session| {
            !jobs.iter().any(|job| {
                job.kind == "terminate_session" && job.access_session_id == Some(*session)
            })
        })
        .count();
    Ok((open > 0).then_some(open))
}

/// Whether a disable's stop of organization `id`'s open sessions is still to be done (they
/// are being stopped).
pub async fn stop_pending(
    storage: &Storage,
    id: &str,
) -> Result<bool, crate::storage::StorageError> {
    Ok(stop_among(&storage.pending_organization_jobs().await?, id))
}

/// Whether `jobs` (pending ones) hold a disable's stop of organization `id`'s sessions.
pub fn stop_among(jobs: &[crate::storage::OrganizationJob], id: &str) -> bool {
    jobs.iter()
        .any(|job| job.organization_id == id && job.kind == "stop_sessions")
}

/// What an enable says of the disable's stop it skipped (None: nothing worth saying — the
/// stop had nothing left to do); `disable` names how to stop the sessions it left.
pub fn skipped_stop_said(skipped: crate::storage::SkippedStop, disable: &str) -> Option<String> {
    let crate::storage::SkippedStop {
        stopped_before,
        open_sessions,
        terminations_pending,
    } = skipped;
    let mut kept = match (open_sessions, terminations_pending) {
        (0, 0) => "none of its sessions is open".to_string(),
        (0, _) => "none of its sessions keeps running".to_string(),
        (n, _) => format!("its {n} open session(s) keep running ({disable} stops them)"),
    };
    if terminations_pending > 0 {
        kept += &format!(
            "; {terminations_pending} open session(s) are stopped by the termination asked for each before"
        );
    }
    match stopped_before {
        0 if open_sessions == 0 && terminations_pending == 0 => None,
        0 => Some(format!(
            "the disable's stop of its sessions was not done and is skipped: {kept}"
        )),
        n => Some(format!(
            "the disable's stop of its sessions was under way: {n} session(s) were stopped already (Accounting-Stop, Admin-Reset) and stay stopped; the rest is skipped: {kept}"
        )),
    }
}

/// A file's organization `id` the database holds as `stored`, in other letters.
fn other_case(id: &str, stored: &str) -> String {
    format!(
        "`{id}` exists already as `{stored}` (ids that differ only in letter case count as one): use that id"
    )
}

/// The stored id of the organization `id` names in any letter case (ids that differ only in
/// case count as one, and `/o/{id}/`, the admin API and the CLI take any), read from the
/// database (also one this process's cache lacks: its settings unusable here, or made by
/// another replica a moment ago); `id` itself if none.
pub async fn stored_id(
    storage: &Storage,
    id: String,
) -> Result<String, crate::storage::StorageError> {
    if storage.organization(&id).await?.is_some() {
        return Ok(id);
    }
    Ok(storage
        .organizations()
        .await?
        .into_iter()
        .map(|row| row.id)
        .find(|stored| stored.eq_ignore_ascii_case(&id))
        .unwrap_or(id))
}

/// Enables or disables an organization — the one write path: the stored flag (with its audit
/// entry and, on disable, the durable job that stops its open sessions), then this process's
/// cache. `Ok(None)`: no such organization; `Err`: nothing was stored.
pub async fn set_active(
    storage: &Storage,
    organizations: &Organizations,
    id: &str,
    active: bool,
    actor: &str,
) -> Result<Option<crate::storage::ActiveChange>, OrganizationError> {
    let changed = storage
        .set_organization_active(id, active, actor, crate::access_session::now_ms())
        .await?;
    if changed.is_some_and(|c| c.changed) {
        tracing::warn!(
            organization = id,
            active,
            actor,
            "organization {}",
            if active { "enabled" } else { "disabled" }
        );
    }
    // Stored: the answer says so whatever the cache does next (a failed refresh is logged; the
    // worker's pass brings it up) — "not done" would be false, and an enable's skipped stop,
    // said only here, lost.
    change::refresh_after_change(storage, organizations).await;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_word_for_the_shell_is_quoted_only_when_it_needs_it() {
        assert_eq!(super::shell_word("ise-2.example"), "ise-2.example");
        assert_eq!(super::shell_word("ISE node 2"), "'ISE node 2'");
        assert_eq!(super::shell_word("it's"), r"'it'\''s'");
        assert_eq!(super::shell_word(""), "''");
    }

    use super::anchored;

    #[test]
    fn root_moves_is_said_when_another_organization_comes_first() {
        use super::{root_moves, StoredOrganization};
        let stored = |id: &str, from_config: bool| StoredOrganization {
            id: id.into(),
            name: id.into(),
            active: true,
            settings: None,
            revision: 1,
            from_config,
            created_at: None,
        };
        let listed = |ids: &[&str]| {
            let text: String = ids
                .iter()
                .map(|id| format!("[[organizations]]\nid = \"{id}\"\nname = \"{id}\"\n[[organizations.servers]]\nname = \"s\"\naddress = \"10.0.0.1\"\nsecret = \"s3cr3t\"\n"))
                .collect();
            crate::config::Settings::from_toml(&text)
                .unwrap()
                .organizations
        };
        let before = [stored("acme", true), stored("beta", true)];
        assert_eq!(root_moves(&before, &listed(&["acme", "beta"])), None);
        let said = root_moves(&before, &listed(&["beta", "acme"])).expect("moved");
        assert!(
            said.contains("`/` serves organization `beta`") && said.contains("`/o/acme/session`"),
            "{said}"
        );
        let said = root_moves(&before, &listed(&["beta"])).expect("moved");
        assert!(said.contains("which the file no longer lists"), "{said}");
        // Nothing served from the file before (created at run time first, or a new database).
        assert_eq!(
            root_moves(&[stored("zeta", false)], &listed(&["beta"])),
            None
        );
        assert_eq!(root_moves(&[], &listed(&["beta"])), None);

        // A database `radius-portal demo` made, given to `serve` (black-box tester S's D5).
        use super::demo_database;
        let with_nas = |id: &str, nas: &str| StoredOrganization {
            settings: Some(serde_json::json!({ "id": id, "nas_identifier": nas }).to_string()),
            ..stored(id, true)
        };
        let demo = [
            with_nas("demo", super::DEMO_NAS_IDENTIFIER),
            stored("beta", true),
        ];
        let said = demo_database(&demo, &listed(&["beta"])).expect("the demo's database");
        assert!(said.contains("made by `radius-portal demo`"), "{said}");
        // The demo itself lists it; another organization named demo is not the demo's.
        assert_eq!(demo_database(&demo, &listed(&["demo"])), None);
        assert_eq!(
            demo_database(&[with_nas("demo", "portal-lab")], &listed(&["beta"])),
            None
        );
    }

    #[test]
    fn a_pattern_is_anchored_when_it_starts_and_ends_with_an_anchor() {
        for yes in [
            "^[a-z]+$",
            crate::config::DEFAULT_USERNAME_PATTERN,
            "(?i)^[a-z]+$",
            r"\A[a-z]+\z",
        ] {
            assert!(anchored(yes), "{yes}");
        }
        for no in ["[a-z]+", "^[a-z]+", "@corp\\.example$", "(?i)[a-z]+"] {
            assert!(!anchored(no), "{no}");
        }
    }

    #[test]
    fn likely_mistakes_in_an_organizations_settings_are_said() {
        let loopback = "127.0.0.1".parse().unwrap();
        let elsewhere = "10.0.0.1".parse().unwrap();
        let second = std::time::Duration::from_secs(1);
        let said = super::settings_warnings(
            "acme",
            "[a-z]+",
            loopback,
            second * 10,
            second * 60,
            [("a", elsewhere, second * 3)].into_iter(),
        );
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].contains("`acme`") && said[0].contains("not anchored"));
        assert!(said[1].contains("nas_ip 127.0.0.1"));
        // Anchored, and servers on this host too: nothing to say.
        let fine = super::settings_warnings(
            "acme",
            "^[a-z]+$",
            loopback,
            second * 3,
            second * 60,
            [("a", loopback, second * 3)].into_iter(),
        );
        assert!(fine.is_empty(), "{fine:?}");
        // A sign-in that gives up before a server's timeout (tester V's D1: such a silence is
        // the sign-in's deadline, not the server's failure).
        let short = super::settings_warnings(
            "acme",
            "^[a-z]+$",
            loopback,
            second * 2,
            second * 60,
            [("a", loopback, second), ("b", loopback, second * 5)].into_iter(),
        );
        assert_eq!(short.len(), 1, "{short:?}");
        assert!(
            short[0].contains("login_timeout 2s is shorter than server `b`'s timeout 5s"),
            "{short:?}"
        );
        // Interim-Updates more often than RFC 2869 allows (tester V's D3).
        let often = super::settings_warnings(
            "acme",
            "^[a-z]+$",
            loopback,
            second * 3,
            second * 5,
            [("a", loopback, second)].into_iter(),
        );
        assert_eq!(often.len(), 1, "{often:?}");
        assert!(
            often[0].contains("min_interim_interval 5s is under RFC 2869's 60 s"),
            "{often:?}"
        );
    }

    #[test]
    fn a_name_is_shown_without_the_spaces_around_it() {
        let settings: crate::config::OrganizationSettings = toml::from_str(
            "id = \"acme\"\nname = \"  Acme  Corp \"\n[[servers]]\nname = \"a\"\naddress = \"10.0.0.1\"\nsecret = \"s\"",
        )
        .unwrap();
        let org = super::Organization::from_settings("organizations.acme", &settings).unwrap();
        assert_eq!(org.name, "Acme  Corp");
        // As stored (what a running portal builds), renamed through the CLI or the API.
        let stored = crate::storage::StoredOrganization {
            id: "acme".into(),
            name: "  Acme Renamed\t".into(),
            active: true,
            settings: Some(serde_json::to_string(&settings).unwrap()),
            revision: 2,
            from_config: false,
            created_at: Some(1),
        };
        assert_eq!(super::build_stored(&stored).unwrap().name, "Acme Renamed");
    }
}
