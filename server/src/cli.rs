//! Command line: `serve` (default), `demo`, `check-config`.

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
    /// Configuration file (TOML). `PORTAL_*` environment variables override it.
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
}

/// Parses arguments and runs the chosen command.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            let settings = Settings::load(cli.config.as_deref())?;
            println!("configuration is valid:\n{settings:#?}");
            Ok(())
        }
        Command::Serve => {
            if cli.config.is_none() {
                bail!("no configuration file: pass --config FILE (or PORTAL_CONFIG), or run `radius-portal demo`");
            }
            let settings = Settings::load(cli.config.as_deref())?;
            telemetry::init(&settings.log);
            let options = leptos_options(&cli.leptos_config)?;
            serve(&settings, options, false).await
        }
        Command::Demo { data_dir } => {
            let mut settings = demo_settings(&data_dir);
            settings.apply_env(|k| std::env::var(k).ok())?;
            telemetry::init(&settings.log);
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
            let options = leptos_options(&cli.leptos_config)?;
            let result = serve(&settings, options, true).await;
            shutdown.cancel();
            result
        }
    }
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
    Ok(conf.leptos_options)
}

async fn serve(settings: &Settings, options: LeptosOptions, demo: bool) -> anyhow::Result<()> {
    let app = Application::build(settings, options, demo).await?;
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    if demo {
        println!("\nDEMO portal running at http://{addr}/  (Ctrl-C to stop)\nDemo users:");
        for user in DEMO_USERS {
            println!(
                "  {:<8} password {:<12} {}",
                user.username,
                user.password.unwrap_or("(any)"),
                user.description
            );
        }
        println!();
    }
    tracing::info!(%addr, demo, "radius-portal listening");
    app.run(shutdown).await
}

async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
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
        enabled: true,
        nas_identifier: "radius-portal-demo".into(),
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
            require_message_authenticator: true,
        }],
    });
    settings
}
