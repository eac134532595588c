//! Operator commands on the database the running portal uses: `org list|show|enable|disable`,
//! `org create|update|delete|server-add|server-update|server-remove` (through
//! [`crate::organizations::change`]), `session list|show|terminate` and `audit tail`. Human tables by default, `--json` for scripts. Secrets never appear: the
//! views below say only whether a secret is set (or which file holds it).
//!
//! Exit codes (see README): 0 done (also "already disabled"), 1 error (configuration,
//! database), 2 usage, 3 no such organization, server or session, 4 refused.

use crate::{
    config::{OrganizationSettings, Settings},
    organizations::{
        self,
        change::{self, ChangeError},
        Organizations,
    },
    storage::{AccessSessionRecord, Storage, StoredOrganization},
};
use anyhow::Context;
use app::validation::shown_plainly;
use clap::Subcommand;
use serde::Serialize;

/// Exit code for "no such organization" (or session, or server).
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code for a change refused by the guard or the stored state (disabled organization,
/// invalid settings, open sessions left).
pub const EXIT_REFUSED: u8 = 4;

/// `org …` subcommands.
#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Every organization with its state and open sessions.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One organization's settings (secrets never shown).
    Show {
        /// Organization id (slug).
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Disable: logins, refreshes and Accounting-Starts are refused at once, and the running
    /// portal stops every open session (Accounting-Stop, Admin-Reset).
    Disable {
        /// Organization id (slug).
        id: String,
    },
    /// Enable again (sessions stopped by the disable stay stopped).
    Enable {
        /// Organization id (slug).
        id: String,
    },
    /// Create an organization from a file holding one organization table in the configuration
    /// file's form (TOML, or JSON if the name ends in `.json`); `enabled = false` creates it
    /// disabled.
    Create {
        /// The organization's settings.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Change an organization: the keys in the file replace the stored ones (`servers` replaces
    /// the list; a server without `secret`/`secret_file` keeps its stored secret). Refused while
    /// it is disabled (enable it first). Give `--file`, `--name` or both.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["file", "name"])))]
    Update {
        /// Organization id (slug).
        id: String,
        /// Settings to change (TOML, or JSON if the name ends in `.json`).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete an organization with its ended sessions (the audit log keeps its history).
    /// Refused while it has open sessions or undelivered accounting (disable it first) or is
    /// listed in the configuration file.
    Delete {
        /// Organization id (slug).
        id: String,
    },
    /// Add a RADIUS server (last in the order of preference) from a file holding one server
    /// table (`name`, `address`, `secret` or `secret_file`, …).
    ServerAdd {
        /// Organization id (slug).
        id: String,
        /// The server's settings (TOML, or JSON if the name ends in `.json`).
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Change a RADIUS server's fields (the keys in the file; the secret is kept unless given).
    ServerUpdate {
        /// Organization id (slug).
        id: String,
        /// Server name.
        name: String,
        /// Fields to change (TOML, or JSON if the name ends in `.json`).
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Remove a RADIUS server (not the last one).
    ServerRemove {
        /// Organization id (slug).
        id: String,
        /// Server name.
        name: String,
    },
}

/// A settings file for `org create|update|server-…` as JSON: TOML, or JSON by extension. An
/// unreadable file is an error (exit 1); one that is not TOML (JSON) is refused like any
/// invalid settings (`Err` inside: why; exit 4).
fn settings_file(path: &std::path::Path) -> anyhow::Result<Result<serde_json::Value, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("while reading {}", path.display()))?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        // A key given twice is refused, as the admin API refuses it (and TOML does).
        return Ok(crate::organizations::change::strict_json(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display())));
    }
    // The parser's own message quotes the offending line, which may hold a secret: say only
    // where and what.
    Ok(match toml::from_str::<toml::Value>(&text) {
        Ok(value) => Ok(serde_json::to_value(value)?),
        Err(e) => {
            let at = e.span().map_or_else(
                || "?".into(),
                |span| crate::config::locate(&text, span.start),
            );
            Err(format!(
                "{} is not valid TOML at {at}: {}",
                path.display(),
                e.message()
            ))
        }
    })
}

/// `session …` subcommands.
#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Active sessions (oldest first).
    List {
        /// Only this organization's.
        #[arg(long)]
        org: Option<String>,
        /// At most this many (a note on stderr says when there are more).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
        limit: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One session, active or ended, by row id or Acct-Session-Id.
    Show {
        /// Row id or Acct-Session-Id.
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// End an active session (Accounting-Stop, Admin-Reset): the running portal stops it and
    /// its open page says it was ended by the operator.
    Terminate {
        /// Row id or Acct-Session-Id.
        id: String,
    },
}

/// An access session as shown to operators.
#[derive(Debug, Serialize)]
pub struct SessionRow {
    id: i64,
    acct_session_id: String,
    organization: String,
    username: String,
    client_ip: String,
    server: String,
    active: bool,
    started_at_ms: i64,
    expires_at_ms: i64,
    stopped_at_ms: Option<i64>,
    terminate_cause: Option<i64>,
    /// When an operator's stop still waiting for it was asked for (its termination, its
    /// organization's disable) — the running portal has not made it yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_asked_at_ms: Option<i64>,
    /// Its accounting not acknowledged (`session show` only): each packet still waiting, or
    /// given up (dead-lettered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    accounting_not_acknowledged: Vec<PacketState>,
}

/// A packet of a session's accounting that no server has acknowledged (`session show`).
#[derive(Debug, Serialize)]
struct PacketState {
    packet: String,
    sent: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_lettered: Option<String>,
}

impl From<&AccessSessionRecord> for SessionRow {
    fn from(s: &AccessSessionRecord) -> Self {
        SessionRow {
            id: s.id,
            acct_session_id: s.acct_session_id.clone(),
            organization: s.organization_id.clone(),
            username: s.username.clone(),
            client_ip: s.client_ip.clone(),
            server: s.server_name.clone(),
            active: s.active,
            started_at_ms: s.started_at,
            expires_at_ms: s.expires_at,
            stopped_at_ms: s.stopped_at,
            terminate_cause: s.terminate_cause,
            stop_asked_at_ms: None,
            accounting_not_acknowledged: Vec::new(),
        }
    }
}

/// `text` padded with spaces to `width` columns of a terminal, as `{:<width}` pads ASCII: a
/// wide character (CJK, most emoji) takes two columns, a combining one none (black-box tester
/// S's D8: a name with an emoji moved the columns after it).
fn cell(text: &str, width: usize) -> String {
    let used = unicode_width::UnicodeWidthStr::width(text);
    format!("{text}{}", " ".repeat(width.saturating_sub(used)))
}

pub(crate) fn clock(unix_ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64),
    )
    .to_string()
}

pub(crate) async fn find_session(
    storage: &Storage,
    id: &str,
) -> anyhow::Result<Option<AccessSessionRecord>> {
    if let Ok(row_id) = id.parse::<i64>() {
        if let Some(s) = storage.session(row_id).await? {
            return Ok(Some(s));
        }
    }
    Ok(storage.session_by_acct_id(id).await?)
}

/// Runs a `session` command.
pub async fn session(settings: &Settings, command: SessionCommand) -> anyhow::Result<Outcome> {
    let storage = open(settings).await?;
    match command {
        SessionCommand::List { org, limit, json } => {
            let org = match org {
                Some(org) => Some(stored_id(&storage, org).await?),
                None => None,
            };
            if let Some(org) = &org {
                if storage.organization(org).await?.is_none() {
                    return Ok(Outcome::NotFound(org.clone()));
                }
            }
            // One more than asked: whether the list is cut.
            let mut rows: Vec<SessionRow> = storage
                .active_sessions_of(org.as_deref(), limit + 1)
                .await?
                .iter()
                .map(SessionRow::from)
                .collect();
            if rows.len() as i64 > limit {
                rows.truncate(limit as usize);
                crate::eprint_line!("note: more than {limit} sessions are active: the oldest {limit} are listed (--limit N lists more)");
            }
            // A session an operator's stop waits for (a terminate, a disable made while no
            // portal ran) is open still, but not for long: said beside it. Asked per session
            // only while some stop waits at all (most of the time none does).
            if !storage.pending_organization_jobs().await?.is_empty() {
                for row in &mut rows {
                    row.stop_asked_at_ms = storage.stop_asked_for(row.id).await?;
                }
            }
            if json {
                say!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                say!(
                    "{:>6} {:<16} {:<20} {:<16} {:<20} {:<20} {}",
                    "ID",
                    "ORG",
                    "USER",
                    "CLIENT IP",
                    "STARTED",
                    "ENDS",
                    "STOP ASKED"
                );
                for r in &rows {
                    let line = format!(
                        "{:>6} {} {} {:<16} {:<20} {:<20} {}",
                        r.id,
                        cell(&r.organization, 16),
                        cell(&shown_plainly(&r.username), 20),
                        r.client_ip,
                        clock(r.started_at_ms),
                        clock(r.expires_at_ms),
                        r.stop_asked_at_ms.map(clock).unwrap_or_default()
                    );
                    say!("{}", line.trim_end());
                }
            }
            Ok(Outcome::Done)
        }
        SessionCommand::Show { id, json } => {
            let Some(s) = find_session(&storage, &id).await? else {
                return Ok(Outcome::NoSession(id));
            };
            let mut row = SessionRow::from(&s);
            row.stop_asked_at_ms = storage.stop_asked_for(s.id).await?;
            // What no server has acknowledged yet: a session ended whose Stop reached no server
            // read "ended" and nothing more (black-box tester N's L2 of session 81).
            row.accounting_not_acknowledged = storage
                .session_outbox(s.id)
                .await?
                .into_iter()
                .filter(|p| p.delivered_at.is_none())
                .map(|p| PacketState {
                    packet: crate::cli::packet_of(&p),
                    sent: p.transmissions,
                    last_error: p.last_error.clone().filter(|_| p.dead_at.is_none()),
                    dead_lettered: p.dead_at.map(|_| p.dead_reason.clone().unwrap_or_default()),
                })
                .collect();
            if json {
                say!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                say!("id:              {}", row.id);
                say!("Acct-Session-Id: {}", row.acct_session_id);
                say!("organization:    {}", row.organization);
                say!("user:            {}", shown_plainly(&row.username));
                say!("client IP:       {}", row.client_ip);
                say!("server:          {}", row.server);
                say!(
                    "state:           {}",
                    if row.active { "active" } else { "ended" }
                );
                say!("started:         {}", clock(row.started_at_ms));
                match row.stopped_at_ms {
                    Some(at) => say!("ended:           {}", clock(at)),
                    None => say!("ends:            {}", clock(row.expires_at_ms)),
                }
                if let Some(asked) = row.stop_asked_at_ms {
                    say!(
                        "stop asked:      {} (an operator's stop, not made yet: a running portal ends it at once, else the next one to start, with Admin-Reset dated then)",
                        clock(asked)
                    );
                }
                if let Some(cause) = row.terminate_cause {
                    say!(
                        "ended because:   {} ({cause})",
                        crate::radius::terminate_cause::name(cause).unwrap_or("other")
                    );
                }
                for p in &row.accounting_not_acknowledged {
                    match &p.dead_lettered {
                        Some(why) => say!(
                            "accounting:      {} given up (dead-lettered: {why}); `accounting dead-letters` lists it",
                            p.packet
                        ),
                        None => say!(
                            "accounting:      {} not acknowledged yet, sent {} time(s){}; `accounting backlog` lists it",
                            p.packet,
                            p.sent,
                            p.last_error
                                .as_deref()
                                .map(|e| format!(", last error: {e}"))
                                .unwrap_or_default()
                        ),
                    }
                }
            }
            Ok(Outcome::Done)
        }
        SessionCommand::Terminate { id } => {
            let Some(s) = find_session(&storage, &id).await? else {
                return Ok(Outcome::NoSession(id));
            };
            use crate::storage::Termination;
            let by = match storage
                .queue_session_termination(s.id, &actor(), crate::access_session::now_ms())
                .await?
            {
                Termination::NotActive => {
                    return Ok(Outcome::Refused(format!("session {} is not active", s.id)))
                }
                Termination::AlreadyQueued { asked_at } => {
                    say!(
                        "session {} ({}, {}) is already to be stopped: a termination asked for earlier is not done yet (its Stop is dated {}, when the first operator's stop of it was asked for, unless its deadline came first): nothing more queued",
                        s.id,
                        shown_plainly(&s.username),
                        s.organization_id,
                        clock(asked_at)
                    );
                    return Ok(Outcome::Done);
                }
                Termination::QueuedBehindDisable { disable_asked_at } => {
                    say!(
                        "session {} ({}, {}) is stopped by its organization's disable, asked for at {} and not made yet (its Stop is dated then, unless its deadline came first); this termination is kept should an enable skip that stop",
                        s.id,
                        shown_plainly(&s.username),
                        s.organization_id,
                        clock(disable_asked_at)
                    );
                    return Ok(Outcome::Done);
                }
                Termination::Queued => stopped_by(settings).unwrap_or(
                    "when the portal next starts (none runs on this database now: the session stays open until then; its Stop is dated now, when it was asked for, with Acct-Delay-Time for the wait)",
                ),
            };
            say!(
                "session {} ({}, {}) will be stopped {by} (Accounting-Stop, Admin-Reset)",
                s.id,
                shown_plainly(&s.username),
                s.organization_id
            );
            Ok(Outcome::Done)
        }
    }
}

/// `audit …` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// The newest entries, oldest first.
    Tail {
        /// How many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// Only this organization's (its id, in any letter case).
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// Only this action's (`org.disable`, `session.terminate`, …).
        #[arg(long)]
        action: Option<String>,
        /// Only those older than this entry (its id: the first column, `#ID`, or `id` in
        /// `--json`): the page before the one shown.
        #[arg(long, value_name = "ID", value_parser = entry_id)]
        before: Option<i64>,
        /// Machine-readable output (one JSON object per line).
        #[arg(long)]
        json: bool,
    },
}

/// An audit entry's id as `audit tail` shows it (`#123`) or as a number.
fn entry_id(given: &str) -> Result<i64, String> {
    given
        .strip_prefix('#')
        .unwrap_or(given)
        .parse()
        .map_err(|_| "an entry's id: a number, as `audit tail` shows it (`#123` or `123`)".into())
}

/// An outcome the CLI turns into an exit code.
#[derive(Debug)]
pub enum Outcome {
    /// Exit 0.
    Done,
    /// Exit 3: the organization does not exist.
    NotFound(String),
    /// Exit 3: the session does not exist.
    NoSession(String),
    /// Exit 3: the organization has no such RADIUS server.
    NoServer(String, String),
    /// Exit 4: the change was refused (why).
    Refused(String),
}

/// A RADIUS server as shown to operators.
#[derive(Debug, Serialize)]
pub struct ServerView {
    name: String,
    address: String,
    auth_port: u16,
    acct_port: u16,
    timeout_ms: u128,
    retries: u32,
    require_message_authenticator: crate::config::MessageAuthenticatorMode,
    status_check: crate::config::StatusCheck,
    /// "set" or "file:<path>": never the secret.
    secret: String,
}

/// An organization as shown to operators.
#[derive(Debug, Serialize)]
pub struct OrganizationView {
    id: String,
    name: String,
    active: bool,
    active_sessions: usize,
    /// A disable's stop of its open sessions is pending: `active_sessions` are to be stopped
    /// (a disable answers before its stop is done, by a running portal).
    stopping_sessions: bool,
    nas_identifier: Option<String>,
    nas_ip: Option<String>,
    default_window_s: Option<u64>,
    max_lifetime_s: Option<u64>,
    username_pattern: Option<String>,
    servers: Vec<ServerView>,
    branding: crate::config::Branding,
    /// The settings in the configuration file's form, without secrets: edit and give back to
    /// `org update` (servers without a secret keep theirs).
    settings: Option<serde_json::Value>,
    /// Why its stored settings cannot be used, as read by this process (a secret file gone or
    /// unreadable): a portal refuses its sign-ins and holds its accounting until they can
    /// (black-box tester N's D3: `org list` said "active" without a word).
    #[serde(skip_serializing_if = "Option::is_none")]
    unusable: Option<String>,
}

impl OrganizationView {
    /// The views of stored organizations, each with its open sessions and whether a disable's
    /// stop of them is pending — the pending jobs read first, so a stop done meanwhile is
    /// seen as pending with its sessions counted after it, never as done with sessions left.
    pub async fn of(
        storage: &Storage,
        rows: &[StoredOrganization],
    ) -> Result<Vec<OrganizationView>, crate::storage::StorageError> {
        let jobs = storage.pending_organization_jobs().await?;
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            views.push(OrganizationView::counted(storage, &jobs, row).await?);
        }
        Ok(views)
    }

    /// The view of one stored organization (as [`OrganizationView::of`]).
    pub async fn one(
        storage: &Storage,
        row: &StoredOrganization,
    ) -> Result<OrganizationView, crate::storage::StorageError> {
        let jobs = storage.pending_organization_jobs().await?;
        OrganizationView::counted(storage, &jobs, row).await
    }

    /// `row`'s view, its sessions counted after `jobs` (the pending ones) were read.
    async fn counted(
        storage: &Storage,
        jobs: &[crate::storage::OrganizationJob],
        row: &StoredOrganization,
    ) -> Result<OrganizationView, crate::storage::StorageError> {
        let stopping = crate::organizations::stop_among(jobs, &row.id);
        let open = storage.active_session_ids_of(&row.id).await?.len();
        Ok(OrganizationView::new(row, open, stopping))
    }

    /// The view of a stored organization with its number of open sessions, and whether a
    /// disable's stop of them is pending.
    pub fn new(row: &StoredOrganization, active_sessions: usize, stopping_sessions: bool) -> Self {
        let settings: Option<OrganizationSettings> = row
            .settings
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok());
        let servers = settings
            .as_ref()
            .map(|s| {
                s.servers
                    .iter()
                    .map(|server| ServerView {
                        name: server.name.clone(),
                        address: server.address.to_string(),
                        auth_port: server.auth_port,
                        acct_port: server.acct_port,
                        timeout_ms: server.timeout.as_millis(),
                        retries: server.retries,
                        require_message_authenticator: server.require_message_authenticator,
                        status_check: server.status_check,
                        secret: match &server.secret_file {
                            Some(path) => format!("file:{}", path.display()),
                            None => "set".into(),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        OrganizationView {
            id: row.id.clone(),
            name: row.name.clone(),
            active: row.active,
            active_sessions,
            stopping_sessions,
            nas_identifier: settings.as_ref().map(|s| s.nas_identifier.clone()),
            nas_ip: settings.as_ref().map(|s| s.nas_ip.to_string()),
            default_window_s: settings.as_ref().map(|s| s.default_window.as_secs()),
            max_lifetime_s: settings
                .as_ref()
                .and_then(|s| s.max_lifetime.map(|d| d.as_secs())),
            username_pattern: settings.as_ref().map(|s| s.username_pattern.clone()),
            servers,
            branding: settings
                .as_ref()
                .map(|s| s.branding.clone())
                .unwrap_or_default(),
            settings: settings.as_ref().map(change::without_secrets),
            unusable: crate::organizations::build_stored(row)
                .err()
                .map(|e| e.to_string()),
        }
    }
}

/// The database the running portal uses (`[database]`); a SQLite file must exist already (the
/// portal creates it when it first starts).
pub(crate) async fn open(settings: &Settings) -> anyhow::Result<Storage> {
    if let Some(problem) = Storage::file_in_the_way(&settings.database) {
        anyhow::bail!("{problem}");
    }
    if no_database_yet(settings) {
        anyhow::bail!(
            "no database at {} (check [database] path; the portal creates it when it first starts)",
            settings.database.path.display()
        );
    }
    if let Some(problem) = files_lost_under_a_portal(settings) {
        anyhow::bail!("{problem}");
    }
    Storage::connect(&settings.database, false)
        .await
        .with_context(|| crate::storage::sqlite::opening_context(&settings.database))
}

/// Why no command may work on the SQLite database now: a portal serves it, and its files were
/// removed or replaced under it — that portal then refuses every change until it is restarted
/// (it has saved what they held), and says so in its lock file; or its WAL file is gone, which
/// the portal may not have found yet. A command would write into files that the portal's stop
/// throws away (black-box tester Q's D1: a disable reported done, undone at the restart), and
/// read a database without what the lost WAL held.
fn files_lost_under_a_portal(settings: &Settings) -> Option<String> {
    let path = &settings.database.path;
    if settings.database.url.is_some() || !crate::startup::sqlite_portal_surely_serving(path) {
        return None;
    }
    // SQLite names the WAL after the file a symbolic link leads to.
    let mut wal = std::fs::canonicalize(path).ok()?.into_os_string();
    wal.push("-wal");
    let missing = || {
        matches!(
            std::fs::symlink_metadata(&wal),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        )
    };
    // Missing for a second: a portal taking the lock as it starts makes its WAL a moment later
    // (the second read of the review of the change: refused as lost meanwhile).
    let wal_gone = missing() && {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while missing() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        missing() && crate::startup::sqlite_portal_surely_serving(path)
    };
    (wal_gone || crate::startup::sqlite_files_lost(path)).then(|| {
        format!(
            "the portal serving {} found its database files removed or replaced under it (or its WAL file {} is gone): it refuses every change until it is restarted, and what this command wrote would be lost when it stops — nothing done; restart the portal first (its log says where it saved what they held)",
            path.display(),
            std::path::Path::new(&wal).display()
        )
    })
}

/// The SQLite file the portal would create at its first start is not there (yet).
pub(crate) fn no_database_yet(settings: &Settings) -> bool {
    settings.database.url.is_none() && !settings.database.path.exists()
}

/// A value as its configuration text (`"on"`, `"status-server"`).
fn text_of(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// Said under an organization whose stored settings this command could not build.
const UNUSABLE: &str =
    "^ its settings cannot be used as this command reads them (a portal refuses its sign-ins and holds its accounting until they can)";

fn state(active: bool) -> &'static str {
    if active {
        "active"
    } else {
        "DISABLED"
    }
}

/// Who is acting, for the audit log: the person behind `sudo` first, then the login name,
/// else the numeric user id (a container often sets no USER).
pub fn actor() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .or_else(uid)
        .unwrap_or_else(|| "unknown".into());
    // From the environment: a line break or direction mark in it would forge or hide a line of
    // `audit tail`.
    format!("cli:{}", shown_plainly(&user))
}

#[cfg(unix)]
fn uid() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .ok()
        .map(|m| format!("uid {}", m.uid()))
}

#[cfg(not(unix))]
fn uid() -> Option<String> {
    None
}

/// The stored id of the organization `id` names in any letter case (ids that differ only in
/// case count as one, and `/o/{id}/` and the admin API take any); `id` itself if none.
pub(crate) async fn stored_id(storage: &Storage, id: String) -> anyhow::Result<String> {
    Ok(crate::organizations::stored_id(storage, id).await?)
}

impl OrgCommand {
    /// The organization the command names, if one.
    fn id_mut(&mut self) -> Option<&mut String> {
        match self {
            OrgCommand::List { .. } | OrgCommand::Create { .. } => None,
            OrgCommand::Show { id, .. }
            | OrgCommand::Disable { id }
            | OrgCommand::Enable { id }
            | OrgCommand::Update { id, .. }
            | OrgCommand::Delete { id }
            | OrgCommand::ServerAdd { id, .. }
            | OrgCommand::ServerUpdate { id, .. }
            | OrgCommand::ServerRemove { id, .. } => Some(id),
        }
    }
}

/// Runs an `org` command.
pub async fn org(settings: &Settings, mut command: OrgCommand) -> anyhow::Result<Outcome> {
    let storage = open(settings).await?;
    if let Some(id) = command.id_mut() {
        *id = stored_id(&storage, std::mem::take(id)).await?;
    }
    match command {
        OrgCommand::List { json } => {
            let views = OrganizationView::of(&storage, &storage.organizations().await?).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&views)?);
            } else if views.is_empty() {
                say!("no organizations stored yet (the portal stores the configured ones when it starts)");
            } else {
                say!(
                    "{:<20} {:<28} {:<9} {:>8}  SERVERS",
                    "ID",
                    "NAME",
                    "STATE",
                    "SESSIONS"
                );
                for v in &views {
                    let servers: Vec<&str> = v.servers.iter().map(|s| s.name.as_str()).collect();
                    say!(
                        "{} {} {:<9} {:>8}  {}{}",
                        cell(&v.id, 20),
                        cell(&v.name, 28),
                        state(v.active),
                        v.active_sessions,
                        servers.join(", "),
                        match (v.stopping_sessions, v.active_sessions) {
                            (false, _) => "",
                            (true, 0) => "  (the disable's stop has none left to stop; a running portal records it done)",
                            (true, _) => "  (sessions to be stopped: the disable's stop is pending)",
                        }
                    );
                    if let Some(why) = &v.unusable {
                        say!("{:<20} {UNUSABLE}: {why}", "");
                    }
                }
            }
            Ok(Outcome::Done)
        }
        OrgCommand::Show { id, json } => {
            let Some(row) = storage.organization(&id).await? else {
                return Ok(Outcome::NotFound(id));
            };
            let view = OrganizationView::one(&storage, &row).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                say!("id:               {}", view.id);
                say!("name:             {}", view.name);
                say!("state:            {}", state(view.active));
                if let Some(why) = &view.unusable {
                    say!("                  {UNUSABLE}: {why}");
                }
                say!(
                    "open sessions:    {}{}",
                    view.active_sessions,
                    match (view.stopping_sessions, view.active_sessions) {
                        (false, _) => "",
                        // Done but not yet recorded so: a replica that stopped answering holds
                        // the job until its claim runs out (black-box tester M's D2 of s81).
                        (true, 0) => " (the disable's stop has none left to stop; a running portal records it done — within 30 s when the one that held it stopped answering)",
                        (true, _) => " (to be stopped: the disable's stop is pending; a running portal does it)",
                    }
                );
                say!(
                    "NAS-Identifier:   {}",
                    view.nas_identifier.as_deref().unwrap_or("?")
                );
                say!(
                    "NAS-IP-Address:   {}",
                    view.nas_ip.as_deref().unwrap_or("?")
                );
                say!(
                    "default window:   {}",
                    view.default_window_s
                        .map_or("?".into(), |s| format!("{s} s"))
                );
                say!(
                    "max lifetime:     {}",
                    view.max_lifetime_s
                        .map_or("none".into(), |s| format!("{s} s"))
                );
                say!(
                    "username pattern: {}",
                    view.username_pattern.as_deref().unwrap_or("?")
                );
                let b = &view.branding;
                for (label, value) in [
                    ("accent colour:    ", b.accent_color.clone()),
                    (
                        "logo file:        ",
                        b.logo_file.as_ref().map(|p| p.display().to_string()),
                    ),
                    ("help text:        ", b.help_text.clone()),
                    ("contact:          ", b.contact.clone()),
                ] {
                    if let Some(value) = value {
                        say!("{label}{value}");
                    }
                }
                for s in &view.servers {
                    say!(
                        "server {}: {} auth {} acct {} timeout {} ms retries {} Message-Authenticator {} status check {} secret {}",
                        s.name, s.address, s.auth_port, s.acct_port, s.timeout_ms, s.retries,
                        text_of(&s.require_message_authenticator), text_of(&s.status_check), s.secret
                    );
                }
            }
            Ok(Outcome::Done)
        }
        OrgCommand::Disable { id } | OrgCommand::Enable { id }
            if storage.organization(&id).await?.is_none() =>
        {
            Ok(Outcome::NotFound(id))
        }
        OrgCommand::Disable { id } => set_state(settings, &storage, &id, false).await,
        OrgCommand::Enable { id } => set_state(settings, &storage, &id, true).await,
        OrgCommand::Create { file } => {
            let settings = match settings_file(&file)? {
                Ok(settings) => settings,
                Err(why) => return Ok(Outcome::Refused(why)),
            };
            let cache = cache(&storage).await?;
            finish(
                change::create(&storage, &cache, settings, &actor())
                    .await
                    .inspect(|id| warn_after_change(&cache, id))
                    .map(|id| format!("organization {id} created")),
            )
        }
        OrgCommand::Update { id, file, name } => {
            let mut patch = match file.map(|file| settings_file(&file)).transpose()? {
                Some(Ok(patch)) => patch,
                Some(Err(why)) => return Ok(Outcome::Refused(why)),
                None => serde_json::json!({}),
            };
            if let (Some(name), Some(map)) = (name, patch.as_object_mut()) {
                map.insert("name".into(), name.into());
            }
            // Only the state (`enabled = false`): said as `org disable` says it (the sessions
            // it stops); the file's settings coming back at a start do not touch it.
            let state = patch.as_object().and_then(|map| match map.iter().next() {
                Some((key, serde_json::Value::Bool(active)))
                    if map.len() == 1 && change::ACTIVE_KEYS.contains(&key.as_str()) =>
                {
                    Some(*active)
                }
                _ => None,
            });
            if let Some(active) = state {
                if storage.organization(&id).await?.is_none() {
                    return Ok(Outcome::NotFound(id));
                }
                let outcome = set_state(settings, &storage, &id, active).await?;
                let note = lasting_note(&storage, &id, true).await;
                if !note.is_empty() {
                    say!("{}", note.trim_start());
                }
                return Ok(outcome);
            }
            let cache = cache(&storage).await?;
            let note = lasting_note(&storage, &id, false).await;
            finish(
                change::update(&storage, &cache, &id, patch, &actor())
                    .await
                    .map(|updated| match updated.changed {
                        true => format!("organization {id} updated"),
                        false => format!("organization {id}: nothing changed"),
                    })
                    .map(|message| message + &note)
                    .inspect(|_| warn_after_change(&cache, &id)),
            )
        }
        OrgCommand::Delete { id } => {
            let cache = cache(&storage).await?;
            finish(
                change::delete(&storage, &cache, &id, &actor())
                    .await
                    .map(|()| format!("organization {id} deleted")),
            )
        }
        OrgCommand::ServerAdd { id, file } => {
            let server = match settings_file(&file)? {
                Ok(server) => server,
                Err(why) => return Ok(Outcome::Refused(why)),
            };
            let cache = cache(&storage).await?;
            let note = lasting_note(&storage, &id, false).await;
            finish(
                change::add_server(&storage, &cache, &id, server, &actor())
                    .await
                    .inspect(|()| warn_after_change(&cache, &id))
                    .map(|()| format!("server added to organization {id}{note}")),
            )
        }
        OrgCommand::ServerUpdate { id, name, file } => {
            let patch = match settings_file(&file)? {
                Ok(patch) => patch,
                Err(why) => return Ok(Outcome::Refused(why)),
            };
            let cache = cache(&storage).await?;
            let note = lasting_note(&storage, &id, false).await;
            finish(
                change::update_server(&storage, &cache, &id, &name, patch, &actor())
                    .await
                    .inspect(|_| warn_after_change(&cache, &id))
                    .map(|changed| match changed {
                        true => format!("server {name} of organization {id} updated{note}"),
                        false => format!("server {name} of organization {id}: nothing changed"),
                    }),
            )
        }
        OrgCommand::ServerRemove { id, name } => {
            let cache = cache(&storage).await?;
            let note = lasting_note(&storage, &id, false).await;
            finish(
                change::remove_server(&storage, &cache, &id, &name, &actor())
                    .await
                    .map(|()| format!("server {name} removed from organization {id}{note}")),
            )
        }
    }
}

/// Who carries out a stop an operator command queued: a running portal (said how), or None
/// when none runs on this SQLite database (the next start does).
fn stopped_by(settings: &Settings) -> Option<&'static str> {
    match &settings.database.url {
        Some(_) => Some("by a running portal replica (or the next one to start)"),
        None if crate::startup::sqlite_portal_running(&settings.database.path) => {
            Some("by the running portal")
        }
        None => None,
    }
}

/// `org disable` / `org enable` (and `org update` of the state alone): what it did, and what
/// follows from it.
async fn set_state(
    settings: &Settings,
    storage: &Storage,
    id: &str,
    active: bool,
) -> anyhow::Result<Outcome> {
    let cache = cache(storage).await?;
    // The sessions a disable stops, counted before it: a running portal (a replica) may have
    // stopped them by the time the disable returns.
    // Not read: said without a count (a failed read never keeps a disable from being made).
    let before = if active {
        None
    } else {
        storage.active_sessions_of(Some(id), i64::MAX).await.ok()
    };
    match organizations::set_active(storage, &cache, id, active, &actor())
        .await
        .with_context(|| {
            format!(
                "while {} the organization",
                if active { "enabling" } else { "disabling" }
            )
        })? {
        None => return Ok(Outcome::NotFound(id.to_string())),
        Some(change) if !change.changed && active => say!("organization {id} is already active"),
        Some(change) if !change.changed => say!("organization {id} is already disabled"),
        // A disable's stop not yet done (no portal ran, or it had not come to it, or it was
        // under way) is skipped by the enable: the sessions it left keep running, and the
        // operator hears so — with the counts of the enable's own write (and audit entry).
        Some(change) if active => {
            let skipped = change
                .skipped_stop
                .and_then(|skipped| {
                    organizations::skipped_stop_said(skipped, &format!("`org disable {id}`"))
                })
                .map_or_else(String::new, |said| format!("; {said}"));
            say!("organization {id} enabled{skipped}");
        }
        Some(_) => {
            // Those past their deadline (no portal ran to end them) end by it instead.
            let now = crate::access_session::now_ms();
            let (open, due): (Vec<_>, Vec<_>) =
                before.iter().flatten().partition(|s| s.expires_at > now);
            let due = match due.len() {
                0 => String::new(),
                n => format!("; {n} more had passed their deadline while no portal ran and end by it (Idle- or Session-Timeout, at that time)"),
            };
            let open = before
                .as_ref()
                .map_or_else(|| "open".to_string(), |_| format!("{} open", open.len()));
            let by = stopped_by(settings).map_or_else(
                || "when the portal next starts (none runs on this database now: they stay open until then)".to_string(),
                str::to_string,
            );
            say!("organization {id} disabled: logins and refreshes are refused; its {open} session(s) are stopped (Accounting-Stop, Admin-Reset) {by} (their Stops dated now, when the disable was asked for){due}");
        }
    }
    // Disabled (enabled) now or already: a file that says otherwise undoes it at the next start.
    match settings.file_says_enabled(id) {
        Some(true) if !active => {
            crate::eprint_line!("warning: {}", organizations::enabled_again_by_file(id));
        }
        Some(false) if active => {
            crate::eprint_line!("warning: {}", organizations::disabled_again_by_file(id));
        }
        _ => {}
    }
    Ok(Outcome::Done)
}

/// The stored organizations, built (the change functions refresh it).
async fn cache(storage: &Storage) -> anyhow::Result<Organizations> {
    Organizations::load(storage)
        .await
        .context("while reading the organizations")
}

/// After a change of organization `id` (`cache` refreshed by it): two of its servers that are
/// one server, another organization reaching one of its servers as the same NAS — on stderr
/// as `check-config` says it.
fn warn_after_change(cache: &Organizations, id: &str) {
    if let Some(org) = cache.get(id) {
        for warning in crate::startup::change_warnings(&cache.all(), &org) {
            crate::eprint_line!("warning: {warning}");
        }
    }
}

/// For a change that took effect: what to add when organization `id` is listed in the
/// configuration file (the next start brings the file's settings back).
/// `only_state`: the change was to `enabled` alone, which a start changes only where the file
/// sets it.
async fn lasting_note(storage: &Storage, id: &str, only_state: bool) -> String {
    match storage.organization(id).await {
        Ok(Some(row)) if row.from_config && only_state => format!(
            "\nnote: organization {id} is listed in the configuration file: a start keeps this state unless the file sets `enabled`"
        ),
        Ok(Some(row)) if row.from_config => format!(
            "\nnote: organization {id} is listed in the configuration file: the next start brings back the file's settings (make the change there to keep it)"
        ),
        _ => String::new(),
    }
}

/// Prints what a change did, or turns its refusal into an exit code.
fn finish(result: Result<String, ChangeError>) -> anyhow::Result<Outcome> {
    match result {
        Ok(message) => {
            say!("{message}");
            Ok(Outcome::Done)
        }
        Err(ChangeError::NotFound(id)) => Ok(Outcome::NotFound(id)),
        Err(ChangeError::NoServer(id, name)) => Ok(Outcome::NoServer(id, name)),
        Err(ChangeError::Internal(e)) => Err(e.into()),
        Err(other) => Ok(Outcome::Refused(other.to_string())),
    }
}

/// Runs an `audit` command.
pub async fn audit(settings: &Settings, command: AuditCommand) -> anyhow::Result<Outcome> {
    let storage = open(settings).await?;
    match command {
        AuditCommand::Tail {
            limit,
            org,
            action,
            before,
            json,
        } => {
            // An empty one filters nothing, as the admin API's.
            let query = crate::storage::AuditQuery {
                limit,
                organization: org.filter(|o| !o.is_empty()),
                action: action.filter(|a| !a.is_empty()),
                before,
            };
            // The id first: `--before` takes it.
            #[derive(serde::Serialize)]
            struct Line<'a> {
                id: i64,
                at_ms: i64,
                actor: &'a str,
                action: &'a str,
                organization: Option<&'a str>,
                detail: serde_json::Value,
            }
            for entry in storage.audit_entries(&query).await? {
                if json {
                    let line = Line {
                        id: entry.id,
                        at_ms: entry.at,
                        actor: &entry.actor,
                        action: &entry.action,
                        organization: entry.organization_id.as_deref(),
                        detail: serde_json::from_str(&entry.detail).unwrap_or_default(),
                    };
                    say!("{}", serde_json::to_string(&line)?);
                } else {
                    say!(
                        "#{} {} {} {:<18} {} {}",
                        entry.id,
                        humantime::format_rfc3339_millis(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_millis(entry.at.max(0) as u64)
                        ),
                        cell(&shown_plainly(&entry.actor), 16),
                        entry.action,
                        cell(entry.organization_id.as_deref().unwrap_or("-"), 12),
                        shown_plainly(&entry.detail)
                    );
                }
            }
            Ok(Outcome::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cell_is_as_wide_on_a_terminal_whatever_its_script() {
        let cells = ["acme", "Délta 🚀 Ωmega", "東京支社", "e\u{301}e"].map(|t| super::cell(t, 16));
        for cell in &cells {
            assert_eq!(
                unicode_width::UnicodeWidthStr::width(cell.as_str()),
                16,
                "{cell:?}"
            );
        }
        assert_eq!(cells[0], format!("{:<16}", "acme"));
        // Longer than its column: as it is (never cut).
        assert_eq!(
            super::cell("a-very-long-organization-id", 8),
            "a-very-long-organization-id"
        );
    }
}
