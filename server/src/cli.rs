//! Command line: `serve` (default), `demo`, `check-config`, `radius test`, `org …`, `audit …`,
//! `accounting …`.

use crate::{
    config::{OrganizationSettings, Secret, ServerSettings, Settings, DEFAULT_USERNAME_PATTERN},
    demo_radius::{DemoRadius, DEMO_SECRET, DEMO_USERS},
    startup::Application,
    telemetry,
};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use leptos::prelude::LeptosOptions;
use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// radius-portal: a self-service RADIUS session portal.
#[derive(Parser, Debug)]
#[command(name = "radius-portal", version, about)]
pub struct Cli {
    /// Configuration file (TOML). `PORTAL_*` environment variables override it. Not for `demo`,
    /// which brings its own settings.
    #[arg(long, short, global = true, env = "PORTAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Leptos runtime options (site root, asset names).
    #[arg(
        long,
        global = true,
        env = "PORTAL_LEPTOS_CONFIG",
        default_value = "Leptos.toml"
    )]
    pub leptos_config: PathBuf,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the portal with the configuration file.
    Serve,
    /// Run the portal with SQLite in a local folder and a built-in demo RADIUS server (loopback).
    Demo {
        /// Where the demo database lives.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// RADIUS checks against the configured servers (like radclient).
    Radius {
        /// What to check.
        #[command(subcommand)]
        command: RadiusCommand,
    },
    /// Organizations: list, show, enable, disable, create, update, delete, and their RADIUS
    /// servers (same database as the running server).
    Org {
        /// What to do.
        #[command(subcommand)]
        command: crate::operator::OrgCommand,
    },
    /// Admin API helpers.
    Admin {
        /// What to do.
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Access sessions: list, show, terminate (same database as the running server).
    Session {
        /// What to do.
        #[command(subcommand)]
        command: crate::operator::SessionCommand,
    },
    /// The audit log (logins, session ends, organization changes, guard denials, jobs).
    Audit {
        /// What to show.
        #[command(subcommand)]
        command: crate::operator::AuditCommand,
    },
    /// Inspect the accounting outbox (same database as the running server).
    Accounting {
        /// What to show.
        #[command(subcommand)]
        command: AccountingCommand,
    },
}

/// `admin …` subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Reads a bearer token on stdin and prints the SHA-256 to put in `[[admin.tokens]] sha256`.
    HashToken,
}

/// `accounting …` subcommands.
#[derive(Subcommand, Debug)]
pub enum AccountingCommand {
    /// Rows that will never be sent, with the reason (newest first).
    DeadLetters {
        /// How many to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Rows waiting to be delivered: how many, and each of the oldest (its packet, session,
    /// user, address, server, attempts, last error, next attempt).
    Backlog {
        /// How many to show (the count is always of all of them).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(0..=10_000))]
        limit: i64,
    },
    /// Gives up the accounting an organization's ended sessions still wait to send, when every
    /// accounting server of the organization is gone for good (dead-lettered, audited): their
    /// Stops, and the Starts, Interim-Updates and copies before them — no server is told those
    /// sessions ended. Open sessions keep theirs: end them first (`session terminate`, `org
    /// disable`). The organization can then be deleted, its servers removed.
    GiveUp {
        /// The organization whose accounting.
        #[arg(long)]
        org: String,
        /// Only this session's (row id or Acct-Session-Id).
        #[arg(long)]
        session: Option<String>,
        /// Even though one of its servers acknowledged the organization's accounting within
        /// the last hour (it is refused then: that server is not gone).
        #[arg(long)]
        force: bool,
    },
    /// Gives up the Stop copies waiting for a server gone for good (dead-lettered, audited):
    /// that server is never told those sessions ended. It can then be removed.
    GiveUpCopies {
        /// The organization whose copies.
        #[arg(long)]
        org: String,
        /// The server they wait for (its name in the organization's settings).
        #[arg(long)]
        server: String,
    },
}

/// `radius …` subcommands.
#[derive(Subcommand, Debug)]
pub enum RadiusCommand {
    /// Ask every server of an organization: Status-Server (RFC 5997), or with --username an
    /// Access-Request. Exits non-zero if a server does not answer.
    Test {
        /// Organization id (default: the first configured).
        #[arg(long)]
        org: Option<String>,
        /// Send an Access-Request for this user instead of Status-Server.
        #[arg(long)]
        username: Option<String>,
        /// Environment variable holding that user's password (never a command-line argument,
        /// which other users of the machine could read).
        #[arg(long, default_value = "PORTAL_TEST_PASSWORD")]
        password_env: String,
        /// Calling-Station-Id / Framed-IP-Address to send.
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: IpAddr,
        /// Test the organization's servers as the configuration file lists them (the next
        /// start's), not as the database holds them (the running portal's).
        #[arg(long)]
        from_file: bool,
    },
}

/// Parses arguments, runs the chosen command and says how the process should exit (0 done,
/// 1 error, 2 usage — from clap —, 3 no such organization).
pub async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<NotFound>() {
            Some(not_found) => {
                crate::eprint_line!("error: {not_found}");
                std::process::ExitCode::from(crate::operator::EXIT_NOT_FOUND)
            }
            None if e.is::<Refused>() => {
                crate::eprint_line!("error: {e}");
                std::process::ExitCode::from(crate::operator::EXIT_REFUSED)
            }
            None if e.is::<Usage>() => {
                crate::eprint_line!("error: {e}");
                std::process::ExitCode::from(2)
            }
            None => {
                crate::telemetry::fatal(&crate::portal_backend::error_chain(e.as_ref()));
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// The guard or the stored state refused an operator change (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// The command line is incomplete in a way clap cannot see (exit code 2, as clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// An operator command named an organization or session that does not exist (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum NotFound {
    /// No such organization.
    #[error("no organization `{}`", crate::shortened(.0))]
    Organization(String),
    /// No such session.
    #[error("no session `{}`", crate::shortened(.0))]
    Session(String),
    /// No such server in an organization.
    #[error("organization `{}` has no server `{}`", crate::shortened(.0), crate::shortened(.1))]
    Server(String, String),
}

fn exit_of(outcome: crate::operator::Outcome) -> anyhow::Result<()> {
    match outcome {
        crate::operator::Outcome::Done => Ok(()),
        crate::operator::Outcome::NotFound(id) => Err(NotFound::Organization(id).into()),
        crate::operator::Outcome::NoSession(id) => Err(NotFound::Session(id).into()),
        crate::operator::Outcome::NoServer(id, name) => Err(NotFound::Server(id, name).into()),
        crate::operator::Outcome::Refused(why) => Err(Refused(why).into()),
    }
}

/// Parses arguments and runs the chosen command.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Org { command } => {
            let settings = Settings::load_for_operator(cli.config.as_deref())?;
            exit_of(crate::operator::org(&settings, command).await?)
        }
        Command::Admin {
            command: AdminCommand::HashToken,
        } => {
            // Piped, all of it (bounded): a second line is a token wrapped in two, or two
            // tokens — either way no client's token, said rather than hashed in part
            // (black-box tester S's D3: only the first line was hashed). Typed at a terminal,
            // the line ends it (no end of input to wait for).
            const MOST: u64 = 64 * 1024;
            let mut bytes = Vec::new();
            let stdin = std::io::stdin();
            if std::io::IsTerminal::is_terminal(&stdin) {
                let read = std::io::BufRead::read_until(&mut stdin.lock(), b'\n', &mut bytes);
                // A token pasted with a line break in it: its second line is there at once
                // (a reader thread, given a moment; one typed by hand leaves nothing more).
                let (more_tx, more) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let _ = std::io::stdin().read_line(&mut line);
                    let _ = more_tx.send(line);
                });
                if more
                    .recv_timeout(Duration::from_millis(300))
                    .is_ok_and(|line| !line.trim().is_empty())
                {
                    bail!("stdin holds more than one line: give one token, on one line (a token wrapped in two lines is not that token)");
                }
                read
            } else {
                std::io::Read::read_to_end(&mut std::io::Read::take(stdin, MOST + 1), &mut bytes)
            }
            .context("while reading the token from stdin")?;
            if bytes.len() as u64 > MOST {
                bail!("stdin holds more than {MOST} bytes: give one token, on one line");
            }
            let Ok(input) = String::from_utf8(bytes) else {
                bail!("stdin is not UTF-8 text: give one token, on one line");
            };
            let lines: Vec<&str> = input.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() > 1 {
                bail!(
                    "stdin holds {} lines: give one token, on one line (a token wrapped in two lines is not that token)",
                    lines.len()
                );
            }
            let token = lines.first().copied().unwrap_or_default();
            if token.trim().is_empty() {
                bail!("no token on stdin (generate one, e.g. `openssl rand -hex 32`)");
            }
            // A control character (a carriage return between two tokens, a tab) cannot travel
            // in an Authorization header: its hash would never match (tester W's D2).
            if token.trim().chars().any(char::is_control) {
                bail!("the token holds a control character (a carriage return, a tab…): give one token, on one line, of printable characters");
            }
            // Anyone who reaches the API may guess it: a short token is a weak password.
            if token.trim().chars().count() < 16 {
                bail!("the token is too short: use at least 16 random characters (e.g. `openssl rand -hex 32`)");
            }
            say!("{}", crate::http::admin::hash_token(token));
            Ok(())
        }
        Command::Session { command } => {
            let settings = Settings::load_for_operator(cli.config.as_deref())?;
            exit_of(crate::operator::session(&settings, command).await?)
        }
        Command::Audit { command } => {
            let settings = Settings::load_for_operator(cli.config.as_deref())?;
            exit_of(crate::operator::audit(&settings, command).await?)
        }
        Command::CheckConfig => {
            let mut settings = Settings::load(cli.config.as_deref())?;
            settings.say_early();
            // The certificate and key as `serve` would load them (readable, PEM, a matching pair).
            if let Some(tls) = &settings.http.tls {
                crate::http::tls::load(tls)?;
            }
            // The RADIUS client's address as `serve` binds it (an address of this host): a
            // socket on a port of the kernel's choosing, closed at once.
            if let Err(e) = std::net::UdpSocket::bind((settings.radius.bind, 0)) {
                bail!(
                    "radius.bind: cannot bind the RADIUS client socket to {}: {e} (an IPv4 address of this host, or 0.0.0.0)",
                    settings.radius.bind
                );
            }
            // The pages' files as `serve` would find them (Leptos.toml, hash.txt, the site).
            let options = leptos_options(&cli.leptos_config)?;
            say!(
                "# site files: {} (this build's)",
                Path::new(&*options.site_root)
                    .join(&*options.site_pkg_dir)
                    .display()
            );
            let stored = check_against_database(&settings).await?;
            // What the next start changes (a secret rotated, a server moved): the running
            // portal and `radius test` use the database's until then.
            for (id, changed) in
                crate::organizations::file_changes(&stored, &settings.organizations)
            {
                say!(
                    "# the next start updates organization `{id}` from this file: {} (until then the running portal uses the database's; `radius test --org {} --from-file` tests this file's servers)",
                    changed.join(", "),
                    crate::organizations::shell_word(&id)
                );
            }
            // And those it creates (black-box tester Q's D6), in a database that holds some.
            if !stored.is_empty() {
                for new in settings
                    .organizations
                    .iter()
                    .filter(|s| !stored.iter().any(|row| row.id == s.id))
                {
                    say!(
                        "# the next start creates organization `{}` from this file (with several replicas: one started with an older file, without it, disables it again)",
                        new.id
                    );
                }
            }
            // What `serve` would warn about at start-up, said now (on stderr: stdout is the
            // effective configuration).
            let mut ids: Vec<String> = settings
                .organizations
                .iter()
                .map(|o| o.id.clone())
                .collect();
            ids.extend(stored.iter().map(|row| row.id.clone()));
            ids.sort();
            ids.dedup();
            let addr = settings.http.listen.unwrap_or(options.site_addr);
            // The file's organizations and those stored only in the database (created at run
            // time), as `serve` holds them; the file's alone if they cannot be built.
            let merged = crate::organizations::Organizations::from_settings_and_stored(
                &settings.organizations,
                &stored,
            )
            .ok();
            let organization_warnings = match &merged {
                Some(all) => crate::startup::stored_organization_warnings(&all.all()),
                None => crate::startup::duplicate_server_warnings(crate::startup::file_servers(
                    &settings.organizations,
                ))
                .into_iter()
                .chain(crate::startup::shared_nas_warnings(
                    &crate::startup::file_nas(&settings.organizations),
                    None,
                ))
                .collect(),
            };
            let warnings = crate::telemetry::rust_log_warning(&settings.log)
                .into_iter()
                .chain(
                    settings
                        .http
                        .tls
                        .as_ref()
                        .and_then(crate::http::tls::certificate_warning),
                )
                .chain(secrets_readable_warnings(cli.config.as_deref(), &settings))
                .chain(crate::startup::exposure_warnings(&settings, addr))
                .chain(crate::startup::dynauth_warnings(
                    &settings.dynamic_authorization,
                    &ids,
                ))
                .chain(organization_warnings)
                .chain(settings.organizations.iter().flat_map(|org| {
                    crate::organizations::settings_warnings(
                        &org.id,
                        &org.username_pattern,
                        org.nas_ip,
                        org.login_timeout,
                        org.min_interim_interval,
                        org.servers
                            .iter()
                            .map(|s| (s.name.as_str(), s.address, s.timeout)),
                    )
                }))
                // Those stored only in the database (created at run time) likewise, as
                // `serve` says them (black-box tester W's D2: the file's alone were).
                .chain(
                    merged
                        .iter()
                        .flat_map(|all| all.all())
                        .filter(|org| settings.organizations.iter().all(|f| f.id != org.id))
                        .flat_map(|org| org.warnings()),
                )
                // Among the file's organizations and those stored only in the database
                // (created at run time), as `serve` logs them.
                .chain(
                    merged
                        .as_ref()
                        .map(|all| all.secret_conflicts())
                        .unwrap_or_default(),
                )
                .chain(crate::organizations::Organizations::stored_unusable(
                    &settings.organizations,
                    &stored,
                ));
            for warning in warnings {
                crate::eprint_line!("warning: {warning}");
            }
            say!("{}", effective_configuration(&settings)?);
            Ok(())
        }
        Command::Radius {
            command:
                RadiusCommand::Test {
                    org,
                    username,
                    password_env,
                    client_ip,
                    from_file,
                },
        } => {
            let settings = Settings::load_for_operator(cli.config.as_deref())?;
            let credentials = match username {
                Some(user) => {
                    let password = std::env::var(&password_env).map_err(|_| {
                        Usage(format!("--username needs the password in the environment variable {password_env}"))
                    })?;
                    Some((user, password))
                }
                None => None,
            };
            let all_answered =
                radius_test(&settings, org.as_deref(), credentials, client_ip, from_file).await?;
            if !all_answered {
                bail!("not every RADIUS server answered usably: each line above says why");
            }
            Ok(())
        }
        Command::Accounting { command } => {
            let settings = Settings::load_for_operator(cli.config.as_deref())?;
            accounting_report(&settings, command).await
        }
        Command::Serve => {
            if cli.config.is_none() {
                return Err(Usage("no configuration file: pass --config FILE (or PORTAL_CONFIG), or run `radius-portal demo`".into()).into());
            }
            // The log as the file and the environment ask for it, before the rest of the file
            // is checked: a start that fails on a value ends with a JSON line where JSON is
            // asked for (black-box tester N's D1), and what is said of the environment too.
            telemetry::init(&crate::config::LogSettings::as_far_as_known(
                cli.config.as_deref(),
                |name| std::env::var(name).ok(),
            ));
            let mut settings = Settings::load(cli.config.as_deref())?;
            settings.say_early();
            for warning in secrets_readable_warnings(cli.config.as_deref(), &settings) {
                tracing::warn!("{warning}");
            }
            let options = leptos_options(&cli.leptos_config)?;
            serve(&settings, options, false).await
        }
        Command::Demo { data_dir } => {
            // The demo is its own configuration: a file named on the command line would be
            // silently ignored (PORTAL_CONFIG in the environment — a container's — is ignored).
            let named = std::env::args().any(|a| {
                a == "--config"
                    || a.starts_with("--config=")
                    || (a.starts_with("-c") && !a.starts_with("--"))
            });
            if cli.config.is_some() && named {
                bail!("`demo` takes no configuration file (it runs its own demo settings); use `radius-portal --config FILE serve` for a configured portal, or PORTAL_* variables to change the demo's address");
            }
            let mut settings = demo_settings(&data_dir);
            settings.apply_process_env()?;
            // The demo's data stays in its own directory: a production database named in the
            // environment (a container's PORTAL_DATABASE_*) is never the demo's.
            settings.use_database(demo_settings(&data_dir).database);
            telemetry::init(&settings.log);
            settings.say_early();
            // The site's files first: a missing Leptos.toml is the whole answer, before the
            // demo RADIUS server starts and logs.
            let options = leptos_options(&cli.leptos_config)?;
            let shutdown = CancellationToken::new();
            let demo = DemoRadius::start(shutdown.clone())
                .await
                .context("while starting the demo RADIUS server")?;
            if let Some(server) = settings
                .organizations
                .first_mut()
                .and_then(|o| o.servers.first_mut())
            {
                server.auth_port = demo.auth_addr.port();
                server.acct_port = demo.acct_addr.port();
            }
            settings.validate()?;
            tracing::warn!(auth = %demo.auth_addr, acct = %demo.acct_addr, "DEMO MODE: built-in demo RADIUS server on loopback — never use in production");
            let result = serve(&settings, options, true).await;
            shutdown.cancel();
            result
        }
    }
}

/// Prints the accounting outbox's dead letters or backlog.
async fn accounting_report(settings: &Settings, command: AccountingCommand) -> anyhow::Result<()> {
    let storage = crate::operator::open(settings).await?;
    // A SQLite database no portal serves: a claim on a row is a dead process's (a kill -9), not
    // a send under way; the next portal to start takes them back (the operations review's L5:
    // they were said "being sent" until their lease ran out).
    let no_sender = settings.database.url.is_none()
        && crate::startup::sqlite_portal_surely_stopped(&settings.database.path);
    match command {
        AccountingCommand::DeadLetters { limit } => {
            let rows = storage.dead_letters(limit).await?;
            if rows.is_empty() {
                say!("no dead-lettered accounting rows");
            }
            for (row, acct_session_id, org) in rows {
                say!(
                    "row {} {} org={org} acct_session_id={acct_session_id} sent={} reason: {}",
                    row.id,
                    packet_of(&row),
                    row.transmissions,
                    row.dead_reason.as_deref().unwrap_or_default()
                );
            }
        }
        AccountingCommand::Backlog { limit } => {
            let waiting = storage.outbox_backlog().await?;
            let rows = storage.waiting_rows(limit).await?;
            let shown = if rows.len() as i64 == limit && waiting > limit {
                format!(" (the oldest {limit} below; --limit for more)")
            } else {
                String::new()
            };
            say!(
                "{waiting} accounting {} waiting{shown}",
                if waiting == 1 { "row" } else { "rows" }
            );
            let now = crate::access_session::now_ms();
            // Each session's rows go in order, per destination: one behind an earlier row
            // (listed first: oldest first) waits for it, whatever its own time says.
            let mut first_in_line: std::collections::HashMap<(String, Option<String>), i64> =
                Default::default();
            for row in rows {
                let to = match &row.entry.copy_to {
                    Some(_) => String::new(),
                    None => format!(" server={}", row.server_name),
                };
                let line = (row.acct_session_id.clone(), row.entry.copy_to.clone());
                let ahead = first_in_line.get(&line).copied();
                first_in_line.entry(line).or_insert(row.entry.id);
                let when = match (ahead, row.claimed_until) {
                    (Some(ahead), _) => format!("waits for row {ahead} of its session"),
                    (None, Some(until)) if until > now && no_sender => {
                        "held by a portal that is no longer running: the next portal to start sends it".to_string()
                    }
                    (None, Some(until)) if until > now => {
                        format!(
                            "being sent (claimed until {})",
                            crate::operator::clock(until)
                        )
                    }
                    _ if row.next_attempt_at <= now => "due now".to_string(),
                    // A copy goes to its server alone: held for it while it is down, it goes once
                    // that server answers again (the time is a fallback, up to 5 minutes out);
                    // left unanswered by it while it is up, at its next attempt (black-box
                    // tester W's D3 of session 82: "answers again" sent the operator looking for
                    // an outage that was not there).
                    _ => match &row.entry.copy_to {
                        Some(server)
                            if row.entry.last_error.as_deref()
                                == Some(crate::accounting::COPY_WAITS_FOR_ITS_SERVER) =>
                        {
                            format!(
                                "goes when server {server} answers again (next attempt {} at the latest)",
                                crate::operator::clock(row.next_attempt_at)
                            )
                        }
                        Some(server) => format!(
                            "goes to server {server} alone, next attempt {}",
                            crate::operator::clock(row.next_attempt_at)
                        ),
                        None => format!(
                            "next attempt {} (or at once when a server comes back)",
                            crate::operator::clock(row.next_attempt_at)
                        ),
                    },
                };
                say!(
                    "row {} {} org={} acct_session_id={} user={} client_ip={}{to} queued {} attempts={} sent={} {when}{}",
                    row.entry.id,
                    packet_of(&row.entry),
                    row.organization_id,
                    row.acct_session_id,
                    row.username,
                    row.client_ip,
                    crate::operator::clock(row.created_at),
                    row.entry.attempts,
                    row.entry.transmissions,
                    row.entry
                        .last_error
                        .as_deref()
                        .map(|e| format!(" last error: {e}"))
                        .unwrap_or_default(),
                );
            }
        }
        AccountingCommand::GiveUp {
            org,
            session,
            force,
        } => {
            let org = crate::operator::stored_id(&storage, org).await?;
            if storage.organization(&org).await?.is_none() {
                return Err(NotFound::Organization(org).into());
            }
            let session = match session {
                None => None,
                Some(id) => {
                    let Some(s) = crate::operator::find_session(&storage, &id).await? else {
                        return Err(NotFound::Session(id).into());
                    };
                    if s.organization_id != org {
                        return Err(Refused(format!(
                            "session {} is of organization `{}`, not `{org}`: nothing given up",
                            s.id, s.organization_id
                        ))
                        .into());
                    }
                    if s.active {
                        return Err(Refused(format!(
                            "session {} is open: end it first (`session terminate {}`), then give up its accounting: nothing given up",
                            s.id, s.id
                        ))
                        .into());
                    }
                    Some(s.id)
                }
            };
            let done = storage
                .give_up(
                    &org,
                    crate::storage::GiveUp::EndedSessions { session, force },
                    &crate::operator::actor(),
                    crate::access_session::now_ms(),
                )
                .await?;
            if let Some(at) = done.acknowledged_at {
                return Err(Refused(format!(
                    "a server of `{org}` acknowledged its accounting at {} (`accounting backlog` shows what waits, and why): its servers are not all gone for good — nothing given up (--force gives up all the same)",
                    crate::operator::clock(at)
                ))
                .into());
            }
            let whose = match session {
                Some(id) => format!("session {id} of `{org}`"),
                None => format!("`{org}`'s ended sessions"),
            };
            say!(
                "gave up {} accounting row(s) of {whose}{}",
                done.given_up,
                if done.given_up > 0 {
                    " (`accounting dead-letters` lists them): no server is told what they say"
                } else {
                    ""
                }
            );
            say_being_sent(
                done.being_sent,
                no_sender,
                "its servers still do not answer",
            );
            if done.not_tried > 0 {
                say!(
                    "{} more of sessions whose accounting has not been failing for {} minutes yet (not tried yet, or a failure that may pass): left to be tried{}; run this again once `accounting backlog` shows them failing",
                    done.not_tried,
                    crate::storage::FAILING_FOR_MS / 60_000,
                    if no_sender {
                        " (no portal runs on this database: they are tried when one starts)"
                    } else {
                        ""
                    }
                );
            }
            if session.is_none() {
                let open = storage.active_session_ids_of(&org).await?.len();
                if open > 0 {
                    let end_them = if storage.organization_active(&org).await? == Some(false) {
                        "the disable's stop ends them in the running portal (at its next start if none runs)"
                    } else {
                        "end them (`org disable`, or `session terminate`)"
                    };
                    say!("{open} session(s) of `{org}` still open keep theirs: {end_them}; then run this again");
                }
            }
        }
        AccountingCommand::GiveUpCopies { org, server } => {
            let org = crate::operator::stored_id(&storage, org).await?;
            let Some(stored) = storage.organization(&org).await? else {
                return Err(NotFound::Organization(org).into());
            };
            let listed = crate::organizations::stored_servers(&stored)
                .iter()
                .any(|s| s.get("name").and_then(serde_json::Value::as_str) == Some(&server));
            let done = storage
                .give_up(
                    &org,
                    crate::storage::GiveUp::CopiesFor(&server),
                    &crate::operator::actor(),
                    crate::access_session::now_ms(),
                )
                .await?;
            say!(
                "gave up {} copy(ies) waiting for server `{server}` of `{org}`{}",
                done.given_up,
                if done.given_up > 0 {
                    " (`accounting dead-letters` lists them): that server is not told those sessions ended"
                } else {
                    ""
                }
            );
            say_being_sent(
                done.being_sent,
                no_sender,
                "the server still does not answer",
            );
            if !listed && done.given_up == 0 && done.being_sent == 0 {
                crate::eprint_line!("warning: `{server}` is not one of `{org}`'s servers, and no copies wait for a server of that name (`accounting backlog` names the servers copies wait for)");
            }
            if listed && done.given_up > 0 {
                say!("server `{server}` is still one of `{org}`'s servers: remove it (`org server-remove`, or from the configuration file) if it is gone for good");
            }
        }
    }
    Ok(())
}

/// What an operator's give-up left to a sender ([`crate::storage::GivenUp::being_sent`]).
fn say_being_sent(being_sent: i64, no_sender: bool, still: &str) {
    if being_sent > 0 && no_sender {
        say!(
            "{being_sent} more held by a portal that is no longer running (with any behind them in their session): the next portal to start takes them back; run this again after it starts if {still}"
        );
    } else if being_sent > 0 {
        say!(
            "{being_sent} more being sent right now (with any behind them in their session): left to their sender; run this again if {still}"
        );
    }
}

/// A row's packet as the accounting commands name it: its kind, and the server of a copy.
pub(crate) fn packet_of(row: &crate::storage::OutboxEntry) -> String {
    let kind = match row.status_type {
        1 => "Start",
        2 => "Stop",
        3 => "Interim-Update",
        _ => "?",
    };
    match &row.copy_to {
        Some(server) => format!("{kind} (copy for server {server})"),
        None => kind.to_string(),
    }
}

/// What `serve` would refuse at start-up because of what the database holds (a server removed
/// while sessions still need it, …), checked without writing or migrating anything, and what
/// it would do to organizations no longer listed (disable them, stopping their sessions). A
/// database that is not there yet, has migrations to run or cannot be reached is said, and
/// the file alone counts. Returns the organizations the database holds (none when there is
/// none yet, or it could not be checked).
async fn check_against_database(
    settings: &Settings,
) -> anyhow::Result<Vec<crate::storage::StoredOrganization>> {
    let location = settings.database.location();
    if let Some(problem) = crate::storage::Storage::file_in_the_way(&settings.database) {
        bail!("`serve` would refuse to start: {problem}");
    }
    if settings.database.url.is_none() {
        let path = &settings.database.path;
        if let Some(problem) = crate::storage::sqlite::write_access_problem(path, true) {
            // Checked as this user: run as another than the portal's, it may not hold there.
            bail!("`serve`, run as this user, would refuse to start: {problem}");
        }
        if let Some(problem) = crate::storage::sqlite::space_problem(path) {
            warn_of(&format!(
                "{problem} — `serve` may not start there, and a portal serving it refuses every change"
            ));
        }
    }
    if crate::operator::no_database_yet(settings) {
        say!("# database: none at {location} yet (created at the first start): nothing to check against it");
        // Gone since a portal served it (lost, or removed): the sessions it had are as good
        // as a backup's lost ones (`serve` says so too).
        if let Some(said) = crate::startup::older_than_last_served(&settings.database.path, 0) {
            warn_of(&said);
        }
        return Ok(Vec::new());
    }
    use crate::storage::{AsIs, Storage};
    let opened = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Storage::connect_as_is(&settings.database),
    )
    .await;
    let not_checked = |why: String| {
        say!("# database: {location}: {why}: not checked against it");
        crate::eprint_line!(
            "warning: the configuration was not checked against the database {location}: {why}"
        );
    };
    match opened {
        Ok(Ok(AsIs::Ready(storage))) => {
            // Bounded as the connection is: a large file is read for long (said, not waited
            // for). A read that fails otherwise than on damage is said, not fatal.
            match tokio::time::timeout(std::time::Duration::from_secs(10), storage.damage()).await {
                Ok(Ok(Some(damage))) => anyhow::bail!(
                    "`serve` would refuse the database {location}: its file is damaged ({damage}): stop the portal and put a sound copy in place (README, \"Backup and restore\")"
                ),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => warn_of(&format!(
                    "the database {location} could not be read whole to check it for damage: {}",
                    crate::portal_backend::error_chain(&e)
                )),
                Err(_) => warn_of(&format!(
                    "the database {location} was not read whole for damage within 10 s (a large file): `sqlite3 FILE 'PRAGMA integrity_check'` checks it"
                )),
            }
            crate::organizations::check_seed(
                &storage,
                &settings.organizations,
                crate::organizations::ServerMoves::Refused,
            )
            .await
            .map_err(|e| e.at_line(settings))
            .with_context(|| {
                format!("`serve` would refuse this configuration with the database {location}")
            })?;
            say!("# database: {location}: the organizations fit what it holds");
            // A database older than the one a portal last served there (a backup put back):
            // said before `serve` starts on it (and by `serve`).
            if let Ok(Some(newest)) = storage.newest_session_id().await {
                if let Some(said) =
                    crate::startup::older_than_last_served(&settings.database.path, newest)
                {
                    warn_of(&said);
                }
            }
            let stored = storage.organizations().await?;
            // What the start-up disables: organizations no longer listed, and those the file
            // says `enabled = false` of.
            for row in stored.iter().filter(|row| row.active) {
                let why = match settings.organizations.iter().find(|o| o.id == row.id) {
                    None if row.from_config => "is no longer listed",
                    Some(listed) if listed.enabled == Some(false) => {
                        "is `enabled = false` in the file"
                    }
                    _ => continue,
                };
                let open = storage.active_session_ids_of(&row.id).await?.len();
                let said = format!(
                    "organization `{}` {why}: `serve` disables it, ending its {open} open session(s) (Accounting-Stop, Admin-Reset)",
                    row.id
                );
                warn_of(&said);
            }
            // What the start-up enables again, and — while a disable's stop has not been done
            // — the stop it skips, whose sessions keep running.
            for row in stored.iter().filter(|row| !row.active) {
                if !crate::organizations::file_enables(&settings.organizations, &row.id) {
                    continue;
                }
                warn_of(&crate::organizations::enabled_again_by_file(&row.id));
                if let Some(open) =
                    crate::organizations::kept_by_an_enable(&storage, &row.id).await?
                {
                    warn_of(&format!(
                        "organization `{}` is disabled and the file says `enabled = true`: `serve` enables it, and the disable's stop of its sessions, not done yet, is skipped: its {open} open session(s) keep running",
                        row.id
                    ));
                }
            }
            for said in crate::organizations::listed_but_disabled(&stored, &settings.organizations)
            {
                warn_of(&said);
            }
            for said in crate::organizations::root_moves(&stored, &settings.organizations)
                .into_iter()
                .chain(crate::organizations::demo_database(
                    &stored,
                    &settings.organizations,
                ))
            {
                warn_of(&said);
            }
            return Ok(stored);
        }
        Ok(Ok(AsIs::Unfit {
            reason,
            refused: true,
        })) => bail!("`serve` would refuse the database {location}: {reason}"),
        Ok(Ok(AsIs::Unfit {
            reason,
            refused: false,
        })) => not_checked(reason),
        // A damaged file is refused by `serve` whoever runs it (not a permission of this
        // user's, nor a server away for now).
        Ok(Err(e)) if e.is_damaged() => bail!(
            "`serve` would refuse the database {location}: it is damaged ({}); restore it from a backup",
            crate::portal_backend::error_chain(&e)
        ),
        Ok(Err(e)) => not_checked(format!(
            "cannot be opened ({})",
            crate::portal_backend::error_chain(&e)
        )),
        Err(_) => not_checked("no answer within 10 s".into()),
    }
    Ok(Vec::new())
}

/// Asks every server of the organization and prints one line per server. True if all answered.
pub async fn radius_test(
    settings: &Settings,
    org_id: Option<&str>,
    credentials: Option<(String, String)>,
    client_ip: IpAddr,
    from_file: bool,
) -> anyhow::Result<bool> {
    use crate::{
        organizations::{
            guard::{self, Operation, OrgState},
            Organizations,
        },
        radius::{health::Port, AuthOutcome, Radius},
    };
    // The database is the truth (organizations created or changed at run time); before the
    // portal first started (no SQLite file yet) there is only the configuration file.
    let file_only = !settings.organizations.is_empty();
    if settings.unread_organizations.is_some() && crate::operator::no_database_yet(settings) {
        return Err(Usage(
            "the configuration file's organizations cannot be read (the warning above says why) and there is no database yet: nothing to test — mend them first".into(),
        )
        .into());
    }
    let storage = if crate::operator::no_database_yet(settings) && file_only {
        say!(
            "no database at {} yet: testing the configuration file's organizations",
            settings.database.path.display()
        );
        None
    } else {
        match crate::operator::open(settings).await {
            Ok(storage) => Some(storage),
            // A database before the portal first started there (PostgreSQL; an empty SQLite
            // file): the same.
            Err(e)
                if file_only
                    && e.chain().any(|cause| {
                        matches!(
                            cause.downcast_ref::<crate::storage::StorageError>(),
                            Some(crate::storage::StorageError::NoPortalTables)
                        )
                    }) =>
            {
                say!("the database has no portal tables yet: testing the configuration file's organizations");
                None
            }
            Err(e) => return Err(e),
        }
    };
    if from_file && settings.unread_organizations.is_some() {
        return Err(Usage(
            "--from-file: the configuration file's organizations cannot be read (the warning above says why): mend them first".into(),
        )
        .into());
    }
    let rows = match &storage {
        None => None,
        Some(storage) => Some(storage.organizations().await?),
    };
    let organizations = match (&storage, from_file) {
        (Some(storage), false) => Organizations::load(storage).await?,
        _ => Organizations::from_settings(&settings.organizations)?,
    };
    let default_id = organizations.default_id();
    let chosen = org_id.is_some();
    // In any letter case, as every command names organizations.
    let named = org_id.map(|id| organizations.id_of(id).unwrap_or_else(|| id.to_string()));
    let org_id = named.as_deref().unwrap_or(&default_id);
    let Some(mut org) = organizations.get(org_id) else {
        if from_file {
            return Err(Usage(format!(
                "--from-file: the configuration file lists no organization `{}` (without --from-file the database's organizations are tested)",
                crate::shortened(org_id)
            ))
            .into());
        }
        return Err(NotFound::Organization(org_id.to_string()).into());
    };
    // The organization as stored (its id there), if it is: only a stored one can be disabled
    // while the test runs (the review's M2: one only in the file, or spelt there in another
    // letter case, was said disabled meanwhile before its second server).
    let stored_id = rows.as_ref().and_then(|rows| {
        rows.iter()
            .find(|row| row.id == org_id)
            .or_else(|| rows.iter().find(|row| row.id.eq_ignore_ascii_case(org_id)))
            .map(|row| row.id.clone())
    });
    if let Some(rows) = &rows {
        // The file's settings, the database's state: a disabled organization is one still,
        // whatever letter case the file spells its id in. One the database does not have yet
        // keeps the file's (what the next start stores).
        let stored = rows
            .iter()
            .find(|row| row.id == org_id)
            .or_else(|| rows.iter().find(|row| row.id.eq_ignore_ascii_case(org_id)));
        if let Some(row) = stored.filter(|_| from_file) {
            std::sync::Arc::make_mut(&mut org).active = row.active;
        }
        // What is tested is what the running portal uses (or, --from-file, what the next
        // start will): said when the two differ, so a change in the file is not taken for
        // tested (black-box tester S's D2).
        if let Some((_, changed)) =
            crate::organizations::file_changes(rows, &settings.organizations)
                .into_iter()
                .find(|(id, _)| id == org_id)
        {
            say!(
                "note: the configuration file's settings of `{org_id}` differ from the database's ({}): the running portal uses the database's until its next start{}",
                changed.join(", "),
                if from_file {
                    "; testing the file's (--from-file)"
                } else {
                    "; testing the database's (--from-file tests the file's)"
                }
            );
        }
    }
    // What a sign-in would refuse is no test of the servers: said as the sign-in says it,
    // before anything is sent or audited.
    let credentials = match credentials {
        Some((typed, password)) => {
            let user = crate::portal_backend::sign_in_name(&typed, &password, &org).map_err(
                |refused| {
                    let said = match refused {
                        app::error::PortalError::InvalidInput { field, message } if field == "password" => {
                            format!("the password (in the environment variable): {message}")
                        }
                        app::error::PortalError::InvalidInput { message, .. } => {
                            format!("--username: {message}")
                        }
                        other => other.to_string(),
                    };
                    Usage(format!(
                        "{said} A sign-in to `{org_id}` would refuse it: no Access-Request was sent."
                    ))
                },
            )?;
            Some((user.to_owned(), password))
        }
        None => None,
    };
    say!(
        "organization `{org_id}` ({}){}",
        org.name,
        if chosen || organizations.all().len() < 2 {
            ""
        } else {
            ": the default one; --org ID tests another"
        }
    );
    // An Access-Request is a login as far as the guard goes (design.md §5): none for a
    // disabled organization, and the denial is audited. Status-Server is not a login.
    let state = OrgState::from_active(Some(org.active));
    if let Some((user, _)) = &credentials {
        if !guard::allows(Operation::Login, state) {
            if let Some(storage) = &storage {
                let detail = denied_by_the_guard(&format!("{state:?}"), user);
                audit_as_operator(storage, "guard.denied", org_id, detail).await?;
            }
            return Err(Refused(format!(
                "organization `{org_id}` is disabled: no Access-Request was sent (enable it first; without --username, Status-Server still tests its servers)"
            ))
            .into());
        }
    } else if !org.active {
        say!("organization `{org_id}` is disabled (Status-Server only tests its servers)");
    }
    // A refused request is said at once: the operator asks now, and runs it again.
    let radius = Radius::bind(&settings.radius, Default::default())
        .await
        .context("while binding the RADIUS socket")?
        .impatient();
    // Access-Requests are login attempts: audited before the first leaves (design.md §5), so
    // none goes out unrecorded, whatever happens to this command meanwhile.
    if let (Some((user, _)), Some(storage)) = (&credentials, &storage) {
        let servers: Vec<&str> = org.servers.iter().map(|s| s.name.as_str()).collect();
        let detail =
            serde_json::json!({ "username": user, "command": "radius test", "servers": servers });
        audit_as_operator(storage, "radius.test", org_id, detail).await?;
    }
    let mut all_answered = true;
    let mut report =
        |server: &crate::radius::ServerEndpoint,
         port: Port,
         started: tokio::time::Instant,
         outcome: Result<(String, &str, bool), crate::radius::RadiusError>| {
            let elapsed = started.elapsed().as_millis();
            let (addr, role) = match port {
                Port::Auth => (server.auth_addr, "authentication"),
                Port::Acct => (server.acct_addr, "accounting"),
            };
            match outcome {
                // A note after the time: it explains what was seen, and may be long. An
                // answer no sign-in can use fails the test as no answer does.
                Ok((text, note, usable)) => {
                    all_answered &= usable;
                    say!(
                        "{} ({addr}, {role}): {text} in {elapsed} ms{note}",
                        server.name
                    )
                }
                Err(e) => {
                    all_answered = false;
                    let by_request = if server.status_check == crate::config::StatusCheck::Request {
                        " (its status_check is \"request\": a server such as NPS may answer no Status-Server at all)".to_string()
                    } else if matches!(e, crate::radius::RadiusError::Timeout) {
                        // What a wrong secret looks like from here: FreeRADIUS drops a request
                        // whose Message-Authenticator does not verify, without a word.
                        format!(" ({})", crate::radius::SILENT_SERVER_HINT)
                    } else {
                        String::new()
                    };
                    say!(
                        "{} ({addr}, {role}): no usable answer: {} after {elapsed} ms{by_request}",
                        server.name,
                        crate::portal_backend::error_chain(&e)
                    );
                }
            }
        };
    for (i, server) in org.servers.iter().enumerate() {
        // A disable that lands while a server stays silent stops the test before its next
        // server, as it stops a sign-in (the guard review's L1).
        if let (Some((user, _)), Some(storage), Some(stored_id), true) =
            (&credentials, &storage, &stored_id, i > 0)
        {
            if !crate::access_session::still_enabled(storage, stored_id).await {
                let detail = denied_by_the_guard("Disabled", user);
                audit_as_operator(storage, "guard.denied", org_id, detail).await?;
                return Err(Refused(format!(
                    "organization `{org_id}` was disabled meanwhile: no Access-Request to its next servers"
                ))
                .into());
            }
        }
        let started = tokio::time::Instant::now();
        let deadline = started + server.timeout * (server.retries + 1);
        let outcome = match &credentials {
            None => radius.status_server(server, Port::Auth, deadline).await.map(|(code, unsigned)| {
                if unsigned {
                    (format!("answered Status-Server ({}) without a Message-Authenticator", crate::radius::packet::code_text(code)), ": Status-Server answers need none, but with `require_message_authenticator` every Access-Accept must carry one (FreeRADIUS before 3.2.5 signs one only where its post-auth adds it; \"learn\" or false for a server that cannot): --username USER tests a login", true)
                } else {
                    (format!("answered Status-Server ({})", crate::radius::packet::code_text(code)), "", true)
                }
            }),
            Some((user, password)) => tokio::select! {
                answered = radius.authenticate(std::slice::from_ref(server), &org.nas, user, password, client_ip, deadline, crate::radius::always_go_on) => answered,
                // A disable stored while the server stays silent ends the exchange there, no
                // retransmission, as it ends a sign-in's (black-box tester M's D3: it went on
                // for the server's whole time). Looked at in the database (no cache here).
                () = disabled_while_asked(storage.as_ref(), stored_id.as_deref()) => {
                    let mut detail = denied_by_the_guard("Disabled", user);
                    detail["radius"] = format!("withdrawn: the organization was disabled (or deleted) while `{}` was asked", server.name).into();
                    // The refusal stands whether or not it could be audited.
                    if let Some(storage) = &storage {
                        if let Err(e) = audit_as_operator(storage, "guard.denied", org_id, detail).await {
                            warn_of(&format!("the refusal could not be audited: {e:#}"));
                        }
                    }
                    return Err(Refused(format!(
                        "organization `{org_id}` was disabled (or deleted) while `{}` was asked: no more Access-Requests (no retransmission, none to its next servers)",
                        server.name
                    ))
                    .into());
                }
            }
                .map(|outcome| match outcome {
                    // The checks a sign-in makes after the Accept's own: its session's Stop
                    // must fit one packet.
                    // From this client address, and from those whose packets are longest: one
                    // that fits from here but not from every address is refused to some users.
                    AuthOutcome::Accept { grant, .. } => match std::iter::once(client_ip)
                        .chain(crate::access_session::LONGEST_CLIENT_ADDRESSES)
                        .find_map(|from| crate::access_session::accept_unusable_for_its_stop(
                            &org.nas,
                            grant.user_name.as_deref().unwrap_or(user),
                            from,
                            &grant.classes,
                        ).map(|problem| (problem, from)))
                    {
                        Some((problem, from)) if from == client_ip => (format!("Access-Accept the portal cannot use: {problem}"), "", false),
                        Some((problem, from)) => (format!("Access-Accept the portal cannot use from every client address: from {client_ip} it opens a session, but a sign-in from {} is refused: {problem}", if from.is_ipv4() { "a longer IPv4 address (such as 255.255.255.255)" } else { "an IPv6 address" }), "", false),
                        None => (format!(
                            "Access-Accept: Session-Timeout={} Idle-Timeout={} Acct-Interim-Interval={} Class={} value(s){}{}",
                            show(grant.session_timeout),
                            show(grant.idle_timeout),
                            // As a session keeps it (raised to `min_interim_interval`).
                            match (grant.interim_interval, crate::access_session::interim_interval_used(grant.interim_interval, &org)) {
                                (Some(sent), Some(used)) if i64::from(sent) != used => format!("{sent} (a session sends one every {used} s: min_interim_interval)"),
                                (sent, _) => show(sent),
                            },
                            grant.classes.len(),
                            // A renamed user: the name the session (accounting, Disconnect-Requests) goes by.
                            grant.user_name.filter(|name| name != user).map(|m| format!(" User-Name={m:?}")).unwrap_or_default(),
                            grant.reply_message.map(|m| format!(" Reply-Message={m:?}")).unwrap_or_default()
                        ), "", true),
                    },
                    // The server answered as it should: the user's password or account is
                    // what it refused.
                    AuthOutcome::Reject { reply_message, .. } => (format!(
                        "Access-Reject{}",
                        reply_message.map(|m| format!(" Reply-Message={m:?}")).unwrap_or_default()
                    ), "", true),
                    AuthOutcome::Unusable { problem } => {
                        (format!("Access-Accept the portal cannot use: {problem}"), "", false)
                    }
                    AuthOutcome::Challenge { reply_message } => (format!(
                        "Access-Challenge (not supported by the portal: a sign-in fails){}",
                        reply_message.map(|m| format!(" Reply-Message={m:?}")).unwrap_or_default()
                    ), "", false),
                }),
        };
        report(server, Port::Auth, started, outcome);
        // The accounting port is another listener (one can be down while the other answers):
        // Status-Server there is answered with an Accounting-Response (RFC 5997). No
        // Accounting-Request is sent: it would open or close a session on the server. A
        // server checked by request (NPS) answers no Status-Server: its port is not tested.
        if server.status_check == crate::config::StatusCheck::Request {
            say!(
                "{} ({}, accounting): not tested: its status_check is \"request\" (a server such as NPS answers no Status-Server, and a test Accounting-Request would open a session there)",
                server.name,
                server.acct_addr
            );
            continue;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + server.timeout * (server.retries + 1);
        let outcome = radius
            .status_server(server, Port::Acct, deadline)
            .await
            .map(|(code, _)| {
                (
                    format!(
                        "answered Status-Server ({})",
                        crate::radius::packet::code_text(code)
                    ),
                    // RFC 5997 §3: an Accounting-Response there (black-box tester V's D2); the
                    // portal takes either as a sign of life.
                    if code == crate::radius::packet::Code::AccountingResponse {
                        ""
                    } else {
                        ": RFC 5997 has a server answer Status-Server on its accounting port with an Accounting-Response — this one may not be an accounting listener (is acct_port the authentication port?); a sign-in's Start shows whether it takes accounting"
                    },
                    true,
                )
            });
        report(server, Port::Acct, started, outcome);
    }
    Ok(all_answered)
}

/// The `guard.denied` audit detail of a `radius test` refused for its organization's `state`.
fn denied_by_the_guard(state: &str, user: &str) -> serde_json::Value {
    serde_json::json!({ "operation": "Login", "state": state, "username": user, "command": "radius test" })
}

/// Ends once the stored organization `id` is found disabled (or gone), looked at every half
/// second; never without a database, or for an organization only a file has.
async fn disabled_while_asked(storage: Option<&crate::storage::Storage>, id: Option<&str>) {
    let (Some(storage), Some(id)) = (storage, id) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if !crate::access_session::still_enabled(storage, id).await {
            return;
        }
    }
}

/// An audit entry of `action` on `org_id` by the person running the command.
async fn audit_as_operator(
    storage: &crate::storage::Storage,
    action: &str,
    org_id: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    storage
        .audit(&crate::storage::Audit {
            at: crate::access_session::now_ms(),
            actor: &crate::operator::actor(),
            action,
            organization_id: Some(org_id),
            detail,
        })
        .await?;
    Ok(())
}

/// A finding of `check-config` against the database: in its output (a comment) and on stderr.
fn warn_of(said: &str) {
    say!("# {said}");
    crate::eprint_line!("warning: {said}");
}

fn show(value: Option<u32>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Loads the Leptos runtime options, with a clear error when the file is missing.
pub fn leptos_options(path: &Path) -> anyhow::Result<LeptosOptions> {
    if !path.exists() {
        bail!(
            "Leptos options file {} not found: run from the project root or pass --leptos-config",
            path.display()
        );
    }
    let conf = leptos::config::get_configuration(Some(&path.to_string_lossy()))
        .with_context(|| format!("while reading Leptos options from {}", path.display()))?;
    let mut options = conf.leptos_options;
    // A relative site root in the file is relative to the file (not to where the portal was
    // started), unless LEPTOS_SITE_ROOT says otherwise.
    let site_root = Path::new(&*options.site_root);
    if site_root.is_relative() && std::env::var_os("LEPTOS_SITE_ROOT").is_none() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            options.site_root = dir.join(site_root).to_string_lossy().into();
        }
    }
    // Pages name their hashed asset files from `hash.txt` beside the binary: without it they
    // would fail on first render, so refuse to start instead.
    if let Some(hash_file) = app::hash_file(&options) {
        if !hash_file.exists() {
            bail!(
                "{} not found: it is written by `cargo leptos build` beside the binary; ship it with the binary",
                hash_file.display()
            );
        }
        check_site_files(&options, &hash_file)?;
    }
    Ok(options)
}

/// The hashed asset files `hash.txt` names must be in the site root: a binary started with
/// another build's site (or none) would serve pages whose script and style are missing.
fn check_site_files(options: &LeptosOptions, hash_file: &Path) -> anyhow::Result<()> {
    let hashes = std::fs::read_to_string(hash_file)
        .with_context(|| format!("while reading {}", hash_file.display()))?;
    let pkg = Path::new(&*options.site_root).join(&*options.site_pkg_dir);
    if !pkg.is_dir() {
        bail!(
            "the site files are not there: {} is no directory (site-root in Leptos.toml, or LEPTOS_SITE_ROOT, names the directory `cargo leptos build` wrote them to: target/site, or where you installed them)",
            pkg.display()
        );
    }
    for (_, name) in app::hashed_assets(options, &hashes) {
        let file = pkg.join(name);
        if !file.exists() {
            bail!(
                "{} not found: the site files ({}) are not those of this binary's build (`cargo leptos build` writes both; ship them together)",
                file.display(),
                pkg.display()
            );
        }
    }
    Ok(())
}

/// What `serve` warns about in the files the configuration names, before it starts: shared
/// secrets that other users of the machine can read — the configuration file (`path`) holding
/// inline secrets, a `secret_file`, or the built-in HTTPS's private key.
fn secrets_readable_warnings(path: Option<&Path>, settings: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    let inline = settings
        .organizations
        .iter()
        .flat_map(|o| o.servers.iter())
        .any(|s| s.secret.is_some())
        || settings
            .dynamic_authorization
            .clients
            .iter()
            .any(|c| c.secret.is_some());
    // Group or others: the configuration holds far more than one server's secret.
    if let Some(path) = path.filter(|path| inline && readable_by(path, 0o044)) {
        warnings.push(format!(
            "the configuration file {} holds RADIUS shared secrets and other users can read it: `chmod 600` it, or move the secrets to secret_file",
            path.display()
        ));
    }
    let files = settings
        .organizations
        .iter()
        .flat_map(|o| {
            o.servers.iter().map(move |s| {
                (
                    format!("server `{}` of organization `{}`", s.name, o.id),
                    &s.secret_file,
                )
            })
        })
        .chain(settings.dynamic_authorization.clients.iter().map(|c| {
            (
                format!("Dynamic Authorization client `{}`", c.name),
                &c.secret_file,
            )
        }));
    // A secret_file readable by its group is a common layout (root:portal 0640): only one
    // every user can read is said.
    for (whose, file) in files {
        if let Some(file) = file.as_deref().filter(|file| readable_by(file, 0o004)) {
            warnings.push(format!(
                "the secret_file {} of {whose} can be read by every user of the machine: `chmod o-r` it",
                file.display()
            ));
        }
    }
    // The same for the private key (black-box tester S's D3): whoever reads it can pose as the
    // portal, and read its users' passwords on their way in.
    if let Some(key) = settings
        .http
        .tls
        .as_ref()
        .map(|tls| tls.key_file.as_path())
        .filter(|key| readable_by(key, 0o004))
    {
        warnings.push(format!(
            "the TLS private key {} ([http.tls] key_file) can be read by every user of the machine: `chmod o-r` it (from a Kubernetes secret: give its volume `defaultMode: 0440` or less)",
            key.display()
        ));
    }
    warnings
}

/// Whether any of the permission bits `mask` is set on the file.
fn readable_by(path: &Path, mask: u32) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & mask != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mask);
        false
    }
}

/// A file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) reached by a database write raises
/// SIGXFSZ, whose default action ends the process (and again at every restart once the file is
/// at the limit). Handled, the write fails instead (EFBIG), which the portal treats as a full
/// disk: requests answer 503, `/readyz` says so, nothing is lost.
fn survive_file_size_limits() {
    #[cfg(target_os = "linux")]
    {
        const SIGXFSZ: i32 = 25;
        if let Err(e) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ))
        {
            tracing::warn!(error = %e, "cannot handle SIGXFSZ: a file-size limit reached by the database ends the portal");
        }
    }
}

async fn serve(settings: &Settings, options: LeptosOptions, demo: bool) -> anyhow::Result<()> {
    survive_file_size_limits();
    // Heard from before start-up (which may take seconds: a database to open and migrate,
    // sessions due to stop): a SIGTERM then ends the portal once it has started, as at any
    // other time, not by the signal's default action (a code review).
    let shutdown = CancellationToken::new();
    let asked = crate::startup::StopAsked::default();
    tokio::spawn(cancel_on_signal(shutdown.clone(), asked.clone()));
    let mut app = Application::build(settings, options, demo).await?;
    app.stop_asked_at(asked);
    let addr = app.local_addr();
    if demo {
        let scheme = if settings.http.tls.is_some() {
            "https"
        } else {
            "http"
        };
        say!("\nDEMO portal running at {scheme}://{addr}/  (Ctrl-C to stop)\nDemo users:");
        for user in DEMO_USERS {
            say!(
                "  {:<8} password {:<12} {}",
                user.username,
                user.password.unwrap_or("(any)"),
                user.description
            );
        }
        say!();
    }
    tracing::info!(%addr, demo, "radius-portal listening");
    app.run(shutdown).await
}

/// A signal this long after the first is a second one.
const SECOND_SIGNAL_AFTER: Duration = Duration::from_secs(1);

/// Cancels `token` at the first SIGTERM or SIGINT (Ctrl-C); a second one, a second or more
/// later, ends the process at once (an operator cutting a slow stop short: what is stored is
/// sent at the next start, as after a kill -9).
async fn cancel_on_signal(token: CancellationToken, asked: crate::startup::StopAsked) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(not(unix))]
    let mut term = None::<()>;
    signalled(&mut term).await;
    let first = tokio::time::Instant::now();
    let _ = asked.set(first);
    tracing::info!("shutting down");
    token.cancel();
    // One sent twice at once (`timeout`, a process group's and its own; black-box tester W) is
    // the same stop: a second within a second of the first is not an operator's second.
    loop {
        signalled(&mut term).await;
        if first.elapsed() >= SECOND_SIGNAL_AFTER {
            break;
        }
    }
    tracing::warn!("a second signal: stopping at once, without finishing the stop under way");
    crate::telemetry::flush(Duration::from_secs(2));
    std::process::exit(1);
}

/// The next SIGINT (Ctrl-C) or, where it could be listened for, SIGTERM.
#[cfg(unix)]
async fn signalled(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn signalled(_: &mut Option<()>) {
    let _ = tokio::signal::ctrl_c().await;
}

/// Settings of the demo: one organization whose server is the in-process demo RADIUS server
/// (ports filled in once it is bound).
pub fn demo_settings(data_dir: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.database.path = data_dir.join("demo.db");
    settings.radius.bind = Ipv4Addr::LOCALHOST;
    settings.organizations.push(OrganizationSettings {
        id: "demo".into(),
        name: "Demo Organization".into(),
        enabled: None,
        nas_identifier: crate::organizations::DEMO_NAS_IDENTIFIER.into(),
        nas_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        default_window: Duration::from_secs(4 * 3600),
        max_lifetime: None,
        username_pattern: DEFAULT_USERNAME_PATTERN.into(),
        login_timeout: Duration::from_secs(5),
        min_interim_interval: Duration::from_secs(60),
        servers: vec![ServerSettings {
            name: "demo".into(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            auth_port: 0,
            acct_port: 0,
            secret: Some(Secret::new(DEMO_SECRET)),
            secret_file: None,
            timeout: Duration::from_secs(1),
            retries: 2,
            require_message_authenticator: crate::config::MessageAuthenticatorMode::On,
            status_check: Default::default(),
        }],
        branding: Default::default(),
    });
    settings
}

/// The configuration in effect (file, environment and defaults) as TOML that `--config` takes
/// back, every `secret` shown as `[redacted]`, under a comment saying what it implies.
pub fn effective_configuration(settings: &Settings) -> anyhow::Result<String> {
    fn redact(value: &mut toml::Value) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table.iter_mut() {
                    if key == "secret" {
                        *value = toml::Value::String(crate::config::REDACTED.into());
                    } else {
                        redact(value);
                    }
                }
            }
            toml::Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    let mut value = toml::Value::try_from(settings).context("while writing the configuration")?;
    redact(&mut value);
    // `enabled` is not stored with an organization's settings (it has a column of its own), so
    // it is not serialized: put back here what the file says, which `serve` applies.
    if let Some(organizations) = value
        .get_mut("organizations")
        .and_then(toml::Value::as_array_mut)
    {
        for (table, org) in organizations.iter_mut().zip(&settings.organizations) {
            if let (Some(table), Some(enabled)) = (table.as_table_mut(), org.enabled) {
                table.insert("enabled".into(), toml::Value::Boolean(enabled));
            }
        }
    }
    // With a PostgreSQL URL the SQLite path is not used: not shown as if it were.
    if settings.database.url.is_some() {
        if let Some(database) = value
            .get_mut("database")
            .and_then(toml::Value::as_table_mut)
        {
            database.remove("path");
        }
    }
    let http = &settings.http;
    let yes = |b: bool| if b { "yes" } else { "no" };
    // On without `secure_cookies` set: say what turns it on, next to the `false` printed below.
    let https = match (http.https(), http.secure_cookies) {
        (true, false) if http.tls.is_some() => "yes (implied by [http.tls])",
        (true, false) => "yes (implied by the https public_url)",
        (on, _) => yes(on),
    };
    Ok(format!(
        "# configuration is valid; in effect (file, environment, defaults), secrets redacted\n\
         # HTTPS cookies (Secure, __Host-) and HSTS: {}; built-in TLS: {}; metrics: {}\n\
         # Disconnect/CoA listener (RFC 5176): {}\n\n{}",
        https,
        yes(http.tls.is_some()),
        settings
            .metrics
            .listen
            .map_or_else(|| "off".to_string(), |a| a.to_string()),
        if settings.dynamic_authorization.clients.is_empty() {
            "off (no [[dynamic_authorization.clients]])".to_string()
        } else {
            settings.dynamic_authorization.listen.to_string()
        },
        toml::to_string_pretty(&value).context("while writing the configuration")?
    ))
}

/// Standard output could not be written: quietly done when the reader closed the pipe.
pub(crate) fn output_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        crate::telemetry::flush(std::time::Duration::from_secs(2));
        std::process::exit(0);
    }
    crate::eprint_line!("error: writing the output failed: {error}");
    crate::telemetry::flush(std::time::Duration::from_secs(2));
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_private_key_every_user_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("portal.key");
        std::fs::write(&key, "not read here").unwrap();
        let mut settings = Settings::default();
        settings.http.tls = Some(crate::config::TlsSettings {
            cert_file: dir.path().join("portal.pem"),
            key_file: key.clone(),
        });
        let said = |mode: u32| {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            secrets_readable_warnings(None, &settings)
                .iter()
                .any(|w| w.contains("TLS private key") && w.contains("portal.key"))
        };
        assert!(said(0o644), "readable by every user");
        assert!(!said(0o640), "its group may read it (root:portal 0640)");
        assert!(!said(0o600));
    }
}
