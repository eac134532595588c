//! Test fixtures: a real FreeRADIUS instance ([`FreeRadius`]) started from the committed config in
//! `tests/fixtures/freeradius`, and the real portal ([`TestApp`]) served in-process on a loopback
//! port with a fresh database, driven over HTTP like a browser without JavaScript.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod postgres;

use radius_portal::{
    config::{OrganizationSettings, Secret, ServerSettings, Settings, DEFAULT_USERNAME_PATTERN},
    radius::{client::RadiusClient, Radius, ServerEndpoint},
    startup::Application,
    storage::Storage,
};
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "testing123";

/// Polls `check` until it returns Some or `timeout` passes (then panics with `what`).
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the async `check` until it is true, for at most 15 s (then panics with `what`).
pub async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_within(what, Duration::from_secs(15), check).await
}

/// Polls the async `check` until it is true, for at most `timeout` (then panics with `what`).
#[allow(dead_code)]
pub async fn wait_until_within<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free UDP port for a FreeRADIUS listener, chosen below the kernel's ephemeral range
/// (32768 and up on Linux): a port taken from that range can be handed to any client socket
/// (the portal's, another test's) while FreeRADIUS is down in a restart test, and the restarted
/// server then cannot bind it. Each test process walks its own stretch of 20000..32768, starting
/// from its pid, and skips ports something already holds.
fn free_udp_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(FIRST + offset).unwrap();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP port below the ephemeral range");
}

fn spawn_freeradius(state: &Path, auth_port: u16, acct_port: u16, strict_port: u16) -> Child {
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/freeradius");
    Command::new("freeradius")
        .args(["-f", "-d"])
        .arg(&config_dir)
        .arg("-l")
        .arg(state.join("radius.log"))
        .env("RADIUS_AUTH_PORT", auth_port.to_string())
        .env("RADIUS_ACCT_PORT", acct_port.to_string())
        .env("RADIUS_STRICT_PORT", strict_port.to_string())
        .env("RADIUS_STATE_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("freeradius must be installed (scripts/setup.sh --test installs it)")
}

/// A FreeRADIUS server on free loopback ports, killed on drop.
pub struct FreeRadius {
    pub auth_port: u16,
    pub acct_port: u16,
    /// Auth port whose client must send Message-Authenticator and whose replies carry one.
    pub strict_port: u16,
    state: tempfile::TempDir,
    child: Child,
}

impl FreeRadius {
    pub async fn start() -> FreeRadius {
        for _attempt in 0..5 {
            let state = tempfile::tempdir().unwrap();
            let (auth_port, acct_port, strict_port) =
                (free_udp_port(), free_udp_port(), free_udp_port());
            let child = spawn_freeradius(state.path(), auth_port, acct_port, strict_port);
            let mut server = FreeRadius {
                auth_port,
                acct_port,
                strict_port,
                state,
                child,
            };
            if server.wait_ready().await {
                return server;
            }
            eprintln!(
                "FreeRADIUS did not start (retrying with other ports):\n{}",
                server.read("radius.log")
            );
        }
        panic!("FreeRADIUS did not start");
    }

    /// Kills the server (its ports then refuse packets), as an outage.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (`kill -STOP`): requests are black-holed until [`FreeRadius::resume`].
    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    /// Unfreezes a paused server (`kill -CONT`); it then answers its backlog.
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    /// The server's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The auth address the portal sends to.
    pub fn auth_addr(&self, strict: bool) -> SocketAddr {
        let port = if strict {
            self.strict_port
        } else {
            self.auth_port
        };
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// The accounting address the portal sends to.
    pub fn acct_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.acct_port))
    }

    /// Starts the server again on the same ports and state directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn_freeradius(
            self.state.path(),
            self.auth_port,
            self.acct_port,
            self.strict_port,
        );
        assert!(
            self.wait_ready().await,
            "FreeRADIUS restarts:\n{}",
            self.read("radius.log")
        );
    }

    async fn wait_ready(&mut self) -> bool {
        let radius = Radius::new(RadiusClient::bind(Ipv4Addr::LOCALHOST).await.unwrap());
        let endpoint = self.endpoint("probe", true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let probe = radius
                .status_server(
                    &endpoint,
                    radius_portal::radius::health::Port::Auth,
                    Instant::now() + Duration::from_millis(300),
                )
                .await;
            if probe.is_ok() {
                return true;
            }
            // A closed port answers at once (ICMP): poll, do not flood the host's ICMP budget,
            // which other tests' failovers need.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A server entry for the portal's configuration.
    pub fn server_settings(&self, name: &str, strict: bool) -> ServerSettings {
        ServerSettings {
            name: name.into(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            auth_port: if strict {
                self.strict_port
            } else {
                self.auth_port
            },
            acct_port: self.acct_port,
            secret: Some(Secret::new(SECRET)),
            secret_file: None,
            timeout: Duration::from_millis(500),
            retries: 2,
            require_message_authenticator: strict.into(),
            status_check: Default::default(),
        }
    }

    pub fn endpoint(&self, name: &str, strict: bool) -> ServerEndpoint {
        let s = self.server_settings(name, strict);
        ServerEndpoint {
            name: s.name,
            auth_addr: SocketAddr::new(s.address, s.auth_port),
            acct_addr: SocketAddr::new(s.address, s.acct_port),
            secret: Secret::new(SECRET),
            timeout: Duration::from_millis(200),
            retries: 0,
            message_authenticator: strict.into(),
            status_check: Default::default(),
            organization: "acme".into(),
        }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.state.path().join(file)).unwrap_or_default()
    }

    /// One line per accounting packet received (see `acct_log` in radiusd.conf).
    pub fn acct_lines(&self) -> Vec<String> {
        self.read("acct.log").lines().map(str::to_string).collect()
    }

    /// One line per Access-Request answered.
    pub fn auth_lines(&self) -> Vec<String> {
        self.read("auth.log").lines().map(str::to_string).collect()
    }

    /// How many Access-Requests for `user` arrived.
    pub fn access_requests_of(&self, user: &str) -> usize {
        self.auth_lines()
            .iter()
            .filter(|l| l.contains(&format!("user={user} ")))
            .count()
    }

    /// Full detail records of accounting packets.
    pub fn detail(&self) -> String {
        self.read("detail")
    }

    /// Waits for an accounting line containing every fragment.
    pub async fn wait_for_acct(&self, fragments: &[&str]) -> String {
        let what = format!("an accounting line with {fragments:?}");
        wait_for(&what, Duration::from_secs(15), || {
            self.acct_lines()
                .into_iter()
                .find(|l| fragments.iter().all(|f| l.contains(f)))
        })
        .await
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig}");
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        self.resume_quietly();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FreeRadius {
    fn resume_quietly(&self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
    }
}

/// The `Max-Age` (seconds) of the web-session cookie an answer sets, if it sets one.
#[allow(dead_code)]
pub fn web_session_max_age(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("portal_session="))
        .and_then(|c| c.split("Max-Age=").nth(1))
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse::<u64>().ok())
}

/// Reads `key=value` from an accounting line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    line.split(' ')
        .find_map(|part| part.strip_prefix(prefix.as_str()))
        .unwrap_or("")
}

/// Portal settings for one organization served by `servers`.
pub fn settings(db: &Path, servers: Vec<ServerSettings>) -> Settings {
    let mut settings = Settings::default();
    settings.database.path = db.to_path_buf();
    settings.http.listen = Some("127.0.0.1:0".parse().unwrap());
    settings.radius.bind = Ipv4Addr::LOCALHOST;
    settings.organizations.push(OrganizationSettings {
        id: "acme".into(),
        name: "Acme Test Org".into(),
        enabled: None,
        nas_identifier: "portal-test".into(),
        nas_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        default_window: Duration::from_secs(4 * 3600),
        max_lifetime: None,
        username_pattern: DEFAULT_USERNAME_PATTERN.into(),
        login_timeout: Duration::from_secs(5),
        min_interim_interval: Duration::from_secs(60),
        servers,
        branding: Default::default(),
    });
    settings.validate().unwrap();
    settings
}

fn leptos_options(site_root: &Path) -> leptos::prelude::LeptosOptions {
    leptos::prelude::LeptosOptions::builder()
        .output_name("radius-portal")
        .site_root(site_root.to_string_lossy().to_string())
        .build()
}

/// The portal served in-process on 127.0.0.1:<free port>.
pub struct TestApp {
    pub addr: SocketAddr,
    pub storage: Storage,
    pub radius: Radius,
    /// The RFC 5176 listener's address and counters, when clients are configured.
    pub dynauth: Option<(
        SocketAddr,
        std::sync::Arc<radius_portal::dynauth::DynAuthStats>,
    )>,
    /// The access-session lifecycle, organization cache and worker of the served portal.
    pub sessions: radius_portal::access_session::AccessSessions,
    pub organizations: std::sync::Arc<radius_portal::organizations::Organizations>,
    pub org_worker: radius_portal::organizations::worker::OrganizationWorker,
    /// The browsers' sign-ins (how many wait for their browser's turn).
    pub sign_ins: std::sync::Arc<radius_portal::http::resubmit::RecentSignIns>,
    /// The certificate in use, with built-in TLS.
    pub tls: Option<radius_portal::http::tls::CurrentConfig>,
    /// The metrics listener, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _site: tempfile::TempDir,
}

impl TestApp {
    /// The Prometheus text of `/metrics` (`[metrics] listen` must be set).
    #[allow(dead_code)]
    pub async fn metrics_text(&self) -> String {
        let addr = self.metrics_addr.expect("[metrics] listen set");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn spawn(settings: &Settings) -> TestApp {
        Self::try_spawn(settings).await.expect("portal builds")
    }

    /// The session stored as running for `client` in organization acme now (opened, or being
    /// opened: its Start on its way), if any.
    #[allow(dead_code)]
    pub async fn session_at(
        &self,
        client: std::net::IpAddr,
    ) -> Option<radius_portal::storage::AccessSessionRecord> {
        self.storage
            .active_session_for_client(
                "acme",
                &client.to_string(),
                radius_portal::access_session::now_ms(),
            )
            .await
            .unwrap()
    }

    /// A sign-in of `username` at `client` in organization acme, under way in the background
    /// (the test acts while it waits on its server).
    #[allow(dead_code)]
    pub fn sign_in_in_background(
        &self,
        username: &'static str,
        password: &'static str,
        client: std::net::IpAddr,
    ) -> tokio::task::JoinHandle<
        Result<
            radius_portal::storage::AccessSessionRecord,
            radius_portal::access_session::SessionError,
        >,
    > {
        let sessions = self.sessions.clone();
        tokio::spawn(async move { sessions.login("acme", username, password, client).await })
    }

    /// [`TestApp::spawn`], or why the portal did not build.
    pub async fn try_spawn(settings: &Settings) -> anyhow::Result<TestApp> {
        Self::try_spawn_as(settings, false).await
    }

    /// [`TestApp::try_spawn`], labelled as demo mode (`radius-portal demo`'s pages) if `demo`.
    async fn try_spawn_as(settings: &Settings, demo: bool) -> anyhow::Result<TestApp> {
        // `PORTAL_TEST_LOG=debug` (a tracing filter): the portal's log, shown with a failure.
        if let Ok(filter) = std::env::var("PORTAL_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let site = tempfile::tempdir().unwrap();
        // A site root as `cargo leptos build` leaves it, as far as the server serves files.
        std::fs::write(
            site.path().join("favicon.svg"),
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 1"/>"#,
        )
        .unwrap();
        // A script and what wasm-bindgen leaves beside it (TypeScript declarations).
        let pkg = site.path().join("pkg");
        std::fs::create_dir(&pkg).unwrap();
        std::fs::write(pkg.join("radius-portal.test.js"), "export {};\n").unwrap();
        std::fs::write(pkg.join("radius-portal.d.test.ts"), "export {};\n").unwrap();
        let app = Application::build(settings, leptos_options(site.path()), demo).await?;
        let addr = app.local_addr();
        let storage = app.storage.clone();
        let radius = app.radius.clone();
        let dynauth = app
            .dynauth
            .as_ref()
            .map(|l| (l.local_addr().unwrap(), l.stats()));
        let (sessions, organizations, org_worker) = (
            app.sessions.clone(),
            app.organizations.clone(),
            app.org_worker.clone(),
        );
        let sign_ins = app.sign_ins.clone();
        let tls = app.tls();
        let metrics_addr = app.metrics_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Ok(TestApp {
            addr,
            storage,
            radius,
            sign_ins,
            dynauth,
            sessions,
            organizations,
            org_worker,
            tls,
            metrics_addr,
            shutdown,
            task,
            _site: site,
        })
    }

    /// Renames organization `id`'s NAS (`nas_identifier`) as an operator would (`org update`).
    pub async fn rename_nas(&self, id: &str, identifier: &str) {
        radius_portal::organizations::change::update(
            &self.storage,
            &self.organizations,
            id,
            serde_json::json!({ "nas_identifier": identifier }),
            "test",
        )
        .await
        .unwrap();
    }

    /// Enables or disables organization `id` as an operator would (`org enable|disable`): stored
    /// and the cache refreshed before it returns. Whether the state changed.
    pub async fn set_organization_active(&self, id: &str, active: bool) -> Option<bool> {
        radius_portal::organizations::set_active(
            &self.storage,
            &self.organizations,
            id,
            active,
            "test",
        )
        .await
        .unwrap()
        .map(|change| change.changed)
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// A browser without JavaScript, connecting from `client_ip` (any 127.x.y.z address).
    pub fn browser(&self, client_ip: Ipv4Addr) -> Browser {
        self.browser_with(client_ip, reqwest::Client::builder().cookie_store(true))
    }

    /// A browser at `client_ip` keeping its cookies in `jar`: two of them with one jar are one
    /// browser that moved to another address.
    #[allow(dead_code)]
    pub fn browser_with_jar(
        &self,
        client_ip: Ipv4Addr,
        jar: std::sync::Arc<reqwest::cookie::Jar>,
    ) -> Browser {
        self.browser_with(client_ip, reqwest::Client::builder().cookie_provider(jar))
    }

    /// A browser at `client_ip` that keeps no cookies (all blocked).
    #[allow(dead_code)]
    pub fn browser_without_cookies(&self, client_ip: Ipv4Addr) -> Browser {
        self.browser_with(client_ip, reqwest::Client::builder())
    }

    fn browser_with(&self, client_ip: Ipv4Addr, builder: reqwest::ClientBuilder) -> Browser {
        let http = builder
            // A request the portal never answers fails the test with its URL instead of
            // hanging it.
            .timeout(Duration::from_secs(30))
            .local_address(IpAddr::V4(client_ip))
            .build()
            .unwrap();
        Browser {
            http,
            base: format!("http://{}", self.addr),
        }
    }
}

/// A cookie-keeping HTTP client that posts forms like a browser without JavaScript.
#[derive(Clone)]
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
}

impl Browser {
    /// A browser (it keeps cookies) of the portal at `base`, from this host's own address.
    #[allow(dead_code)]
    pub fn of(base: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .build()
                .unwrap(),
            base: base.to_string(),
        }
    }
}

/// Where a request ended up after redirects.
#[derive(Debug)]
pub struct Page {
    pub path: String,
    pub status: u16,
    pub body: String,
}

impl Browser {
    /// The session page's live stream (`/session/events`), opened: read it with
    /// [`next_event`].
    #[allow(dead_code)]
    pub async fn live_events(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/session/events", self.base))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap()
    }

    /// The JSON a server fn at `path` answers a script (a POST without a form).
    #[allow(dead_code)]
    pub async fn script_json(&self, path: &str) -> serde_json::Value {
        let text = self
            .http
            .post(format!("{}{path}", self.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    pub async fn get(&self, path: &str) -> Page {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        Self::page(response).await
    }

    /// Posts a form from the page at `from` (Referer), following redirects.
    pub async fn post_form(&self, action: &str, from: &str, form: &[(&str, &str)]) -> Page {
        self.post_form_with(action, from, form, &[]).await
    }

    /// [`Browser::post_form`] with extra request headers (as a reverse proxy would add). The
    /// form token of the page at `from` is added, as the page's form carries it.
    pub async fn post_form_with(
        &self,
        action: &str,
        from: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let token = self.form_token(from).await;
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        if !fields.iter().any(|(k, _)| *k == "csrf") {
            fields.push(("csrf", &token));
        }
        self.post_raw(action, from, &fields, headers).await
    }

    /// Posts exactly `form` (no form token added).
    pub async fn post_raw(
        &self,
        action: &str,
        from: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self.http.post(format!("{}{action}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        // This site's origin unless the caller names one (a request with two is refused).
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("origin"))
        {
            request = request.header("origin", self.base.clone());
        }
        let response = request
            .header("accept", "text/html")
            .header("referer", format!("{}{from}", self.base))
            .form(form)
            .send()
            .await
            .unwrap();
        Self::page(response).await
    }

    /// Logs in as a script or the island does (JSON answer, not a redirect), with the form token.
    pub async fn login_as_script(&self, username: &str, password: &str) -> reqwest::Response {
        let token = self.form_token("/").await;
        self.http
            .post(format!("{}/api/login", self.base))
            .header("accept", "application/json")
            .form(&[
                ("username", username),
                ("password", password),
                ("csrf", &token),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Posts the form token of the page at `from` to `action` from this site (`Origin`) with
    /// `accept`, without a Referer (a browser whose privacy settings strip it, or a script).
    pub async fn post_token(&self, action: &str, from: &str, accept: &str) -> reqwest::Response {
        let token = self.form_token(from).await;
        self.http
            .post(format!("{}{action}", self.base))
            .header("accept", accept)
            .header("origin", self.base.clone())
            .form(&[("csrf", token.as_str())])
            .send()
            .await
            .unwrap()
    }

    /// The form token in the page at `path` (hidden `csrf` input).
    pub async fn form_token(&self, path: &str) -> String {
        let page = self.get(path).await;
        let marker = "name=\"csrf\" value=\"";
        let start = page
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no form token in {path}:\n{}", page.body))
            + marker.len();
        page.body[start..].split('"').next().unwrap().to_string()
    }

    pub async fn login(&self, username: &str, password: &str) -> Page {
        self.post_form(
            "/api/login",
            "/",
            &[("username", username), ("password", password)],
        )
        .await
    }

    pub async fn page(response: reqwest::Response) -> Page {
        let path = response.url().path().to_string();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        Page { path, status, body }
    }
}

/// The most common set-up: one FreeRADIUS and a portal with it as its only server
/// (`primary`, strict), on a fresh database (its directory lives as long as the guard).
#[allow(dead_code)]
pub async fn portal_with_one_server() -> (FreeRadius, TestApp, tempfile::TempDir) {
    one_server_portal(false).await
}

/// [`portal_with_one_server`] labelled as demo mode.
#[allow(dead_code)]
pub async fn demo_portal_with_one_server() -> (FreeRadius, TestApp, tempfile::TempDir) {
    one_server_portal(true).await
}

async fn one_server_portal(demo: bool) -> (FreeRadius, TestApp, tempfile::TempDir) {
    one_server_portal_where(demo, |_| {}).await
}

/// [`portal_with_one_server`] with its settings changed by `change` first.
#[allow(dead_code)]
pub async fn portal_with_one_server_where(
    change: impl FnOnce(&mut Settings),
) -> (FreeRadius, TestApp, tempfile::TempDir) {
    one_server_portal_where(false, change).await
}

async fn one_server_portal_where(
    demo: bool,
    change: impl FnOnce(&mut Settings),
) -> (FreeRadius, TestApp, tempfile::TempDir) {
    let radius = FreeRadius::start().await;
    let (dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    change(&mut config);
    let app = TestApp::try_spawn_as(&config, demo)
        .await
        .expect("portal builds");
    (radius, app, dir)
}

/// A [`gated_relay`]: where it listens, and how many datagrams it has dropped.
#[allow(dead_code)]
pub struct GatedRelay {
    pub port: u16,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A UDP relay to `upstream` that passes datagrams both ways while `open` and drops them while
/// not: a server gone silent, with nothing left buffered to be answered later.
#[allow(dead_code)]
pub async fn gated_relay(
    upstream: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> GatedRelay {
    use std::sync::atomic::Ordering::SeqCst;
    let front = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = front.local_addr().unwrap().port();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = dropped.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = front.recv_from(&mut buf).await.unwrap();
            if !open.load(SeqCst) {
                counted.fetch_add(1, SeqCst);
                continue;
            }
            let request = buf[..len].to_vec();
            let (front, open) = (front.clone(), open.clone());
            tokio::spawn(async move {
                let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                back.send_to(&request, upstream).await.unwrap();
                let mut reply = vec![0u8; 4096];
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), back.recv_from(&mut reply)).await;
                if let (Ok(Ok((n, _))), true) = (answer, open.load(SeqCst)) {
                    let _ = front.send_to(&reply[..n], from).await;
                }
            });
        }
    });
    GatedRelay { port, dropped }
}

/// A relay that passes Access-Requests to `upstream` but holds each reply until `release`
/// (`held` is told when one is held).
pub async fn holding_relay(
    upstream: SocketAddr,
    held: std::sync::Arc<tokio::sync::Notify>,
    release: std::sync::Arc<tokio::sync::Notify>,
) -> SocketAddr {
    relay(upstream, |_| true, Some((held, release))).await
}

/// A relay to `upstream` that drops every Access-Request for `user` (a directory behind a
/// shared RADIUS server that is down for one organization's users) and passes the rest.
pub async fn relay_dropping_user(upstream: SocketAddr, user: &'static str) -> SocketAddr {
    use radius::core::{code::Code, packet::Packet, rfc2865};
    let for_user = move |request: &[u8]| {
        Packet::decode(request, SECRET.as_bytes()).is_ok_and(|packet| {
            packet.get_code() == Code::AccessRequest
                && rfc2865::lookup_user_name(&packet)
                    .is_some_and(|name| name.is_ok_and(|n| n == user))
        })
    };
    relay(upstream, move |request| !for_user(request), None).await
}

/// A session of carol's at `ip` in `organization`, authenticated by `server`, opened at `now`
/// for an hour, as written straight into storage (no login, no RADIUS exchange): its Start is
/// queued unclaimed, for the delivery loop.
#[allow(dead_code)]
pub fn stored_session(
    acct_session_id: &str,
    (organization, server): (&str, &str),
    ip: &str,
    now: i64,
) -> radius_portal::storage::NewAccessSession {
    radius_portal::storage::NewAccessSession {
        acct_session_id: acct_session_id.into(),
        organization_id: organization.into(),
        username: "carol".into(),
        client_ip: ip.into(),
        server_index: 0,
        server_name: server.into(),
        classes: vec![],
        reply_message: None,
        started_at: now,
        window_ms: 3_600_000,
        limit_at: None,
        expires_at: now + 3_600_000,
        interim_interval: None,
        start_claimed_until: None,
        typed_username: None,
        nas: None,
        replaces: None,
        accept_timeouts: None,
        organization_revision: None,
    }
}

/// A UDP relay to `upstream` whose replies come back `delay_ms` late — a server slower than
/// its timeout — or, `u64::MAX`, that drops every request (a server gone); it drops, besides,
/// each request `pass` says no to.
#[allow(dead_code)]
pub async fn delaying_relay_where(
    upstream: SocketAddr,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    mut pass: impl FnMut(&[u8]) -> bool + Send + 'static,
) -> u16 {
    use std::sync::atomic::Ordering::SeqCst;
    let front = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = front.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = front.recv_from(&mut buf).await.unwrap();
            let delay = delay_ms.load(SeqCst);
            if delay == u64::MAX || !pass(&buf[..len]) {
                continue;
            }
            let request = buf[..len].to_vec();
            let front = front.clone();
            tokio::spawn(async move {
                let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                back.send_to(&request, upstream).await.unwrap();
                let mut reply = vec![0u8; 4096];
                let answer =
                    tokio::time::timeout(Duration::from_secs(5), back.recv_from(&mut reply)).await;
                if let Ok(Ok((n, _))) = answer {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = front.send_to(&reply[..n], from).await;
                }
            });
        }
    });
    port
}

/// A UDP relay to accounting at `upstream` that drops every Accounting-Request Stop of `user`
/// (a record the server cannot store) and passes the rest; how many it dropped.
#[allow(dead_code)]
pub async fn relay_dropping_stops_of(
    upstream: SocketAddr,
    user: &'static str,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use radius::core::{code::Code, packet::Packet, rfc2865, rfc2866};
    let stop_of_user = move |request: &[u8]| {
        Packet::decode(request, SECRET.as_bytes()).is_ok_and(|packet| {
            packet.get_code() == Code::AccountingRequest
                && rfc2866::lookup_acct_status_type(&packet)
                    .is_some_and(|t| t.is_ok_and(|t| t == 2))
                && rfc2865::lookup_user_name(&packet)
                    .is_some_and(|name| name.is_ok_and(|n| n == user))
        })
    };
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = dropped.clone();
    let pass = move |request: &[u8]| {
        let drop = stop_of_user(request);
        if drop {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        !drop
    };
    (relay(upstream, pass, None).await, dropped)
}

/// A UDP relay to `upstream`: each datagram `pass` lets through goes there from a socket of its
/// own, and the reply comes back — held until `hold`'s release when given (its first is told).
async fn relay(
    upstream: SocketAddr,
    pass: impl Fn(&[u8]) -> bool + Send + 'static,
    hold: Option<(
        std::sync::Arc<tokio::sync::Notify>,
        std::sync::Arc<tokio::sync::Notify>,
    )>,
) -> SocketAddr {
    let front = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = front.recv_from(&mut buf).await.unwrap();
            let request = buf[..len].to_vec();
            if !pass(&request) {
                continue;
            }
            let (front, hold) = (front.clone(), hold.clone());
            tokio::spawn(async move {
                let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                back.send_to(&request, upstream).await.unwrap();
                let mut reply = vec![0u8; 4096];
                let (n, _) = back.recv_from(&mut reply).await.unwrap();
                if let Some((held, release)) = hold {
                    held.notify_one();
                    release.notified().await;
                }
                front.send_to(&reply[..n], from).await.unwrap();
            });
        }
    });
    addr
}

/// Waits until the portal at `portal` holds no open connection from `client`: it has seen the
/// client go away (read from the kernel's table of TCP sockets).
pub async fn wait_connections_closed(portal: SocketAddr, client: Ipv4Addr) {
    let IpAddr::V4(portal_ip) = portal.ip() else {
        panic!("an IPv4 portal address");
    };
    let hex = |ip: Ipv4Addr| format!("{:08X}", u32::from_le_bytes(ip.octets()));
    let local = format!("{}:{:04X}", hex(portal_ip), portal.port());
    let remote = format!("{}:", hex(client));
    wait_until("the portal to close the client's connections", || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        // Columns: slot, local address, remote address, state (01 established, 08 close-wait).
        let open = table.lines().skip(1).any(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            columns.len() > 3
                && columns[1] == local
                && columns[2].starts_with(&remote)
                && matches!(columns[3], "01" | "08")
        });
        async move { !open }
    })
    .await;
}

/// A TCP port on 127.0.0.1 free a moment ago (for a portal process started with it).
/// A portal process's set-up: a fresh database and a `serve` configuration file for
/// 127.0.0.1 on a free port — `sections` (whole tables such as `[radius]`), then organization
/// `acme` with `org_keys` and its one server `primary` at 127.0.0.1 on `ports`
/// (authentication, accounting) with `server_keys`. Gives the directory (kept as long as the
/// guard), the database, the portal's base URL and the configuration file.
#[allow(dead_code)]
pub fn process_config(
    sections: &str,
    org_keys: &str,
    ports: (u16, u16),
    server_keys: &str,
) -> (tempfile::TempDir, PathBuf, String, PathBuf) {
    let (dir, db) = temp_db();
    let port = free_port();
    let config = dir.path().join("portal.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[database]\npath = \"{}\"\n{sections}\
             [[organizations]]\nid = \"acme\"\nname = \"Acme\"\n{org_keys}\
             [[organizations.servers]]\nname = \"primary\"\naddress = \"127.0.0.1\"\n\
             auth_port = {}\nacct_port = {}\nsecret = \"{SECRET}\"\n{server_keys}",
            db.display(),
            ports.0,
            ports.1
        ),
    )
    .unwrap();
    (dir, db, format!("http://127.0.0.1:{port}"), config)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary database path (the directory lives as long as the returned guard).
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portal.db");
    (dir, path)
}

/// An operator command (`radius-portal … args`) run on the SQLite database at `db`, through a
/// configuration file holding just its `[database]` (written beside it).
#[cfg(test)]
pub fn operator_command(db: &Path, args: &[&str]) -> std::process::Output {
    let operator = db.with_file_name("operator.toml");
    std::fs::write(
        &operator,
        format!("[database]\npath = \"{}\"\n", db.display()),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_radius-portal"))
        .arg("--config")
        .arg(&operator)
        .args(args)
        .output()
        .unwrap()
}

/// The workspace's Leptos.toml (the site `cargo leptos build` wrote).
pub fn leptos_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Leptos.toml")
}

/// The portal binary serving `config` (`radius-portal serve`), started and waited for until
/// `base`/healthz answers; killed on drop.
#[cfg(test)]
pub struct PortalProcess(std::process::Child);

#[cfg(test)]
impl PortalProcess {
    pub async fn start(config: &std::path::Path, base: &str) -> PortalProcess {
        Self::start_logging(config, base, std::process::Stdio::null()).await
    }

    /// [`PortalProcess::start`] with its log (stderr, the default filter) going to `log`.
    pub async fn start_logging(
        config: &std::path::Path,
        base: &str,
        log: impl Into<std::process::Stdio>,
    ) -> PortalProcess {
        Self::start_with(config, base, log, &[]).await
    }

    /// [`PortalProcess::start_logging`] with `env` set for it.
    pub async fn start_with(
        config: &std::path::Path,
        base: &str,
        log: impl Into<std::process::Stdio>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> PortalProcess {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_radius-portal"))
            .arg("--config")
            .arg(config)
            .arg("--leptos-config")
            .arg(leptos_config())
            .arg("serve")
            .current_dir(&root)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let health = format!("{base}/healthz");
        wait_until("the portal to answer /healthz", || async {
            reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        PortalProcess(child)
    }

    /// A portal process started otherwise (under a shell's limits, say): killed on drop too.
    #[allow(dead_code)]
    pub fn adopt(child: std::process::Child) -> PortalProcess {
        PortalProcess(child)
    }

    /// The process's id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it is still running.
    #[allow(dead_code)]
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

#[cfg(test)]
impl Drop for PortalProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next `data:` of a Server-Sent Events response (comments and keep-alives skipped).
#[allow(dead_code)]
pub async fn next_event(stream: &mut reqwest::Response, buffer: &mut String) -> String {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                return data.trim().to_string();
            }
            continue;
        }
        let chunk = stream
            .chunk()
            .await
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}
