//! A throwaway PostgreSQL cluster for the tests of one test binary: Debian's `postgresql`
//! (`scripts/setup.sh --test` installs it), initialised in a temporary directory, listening on
//! 127.0.0.1 on a free port, started on first use and stopped (`pg_ctl stop -m immediate`) by a
//! watchdog once the test binary has exited. Each test gets a database of its own ([`fresh_database`]).
//! The server speaks TLS too (a self-signed certificate for 127.0.0.1, [`tls_root_cert`]), as a
//! managed PostgreSQL does; plain connections stay allowed.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
};

struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The server certificate (self-signed: also the root a client trusts).
    cert: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The newest installed server's `bin` directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (scripts/setup.sh --test installs it)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server under /usr/lib/postgresql")
        .1
}

fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Runs a server program, as the `postgres` user when this process is root (`initdb`
    /// refuses root).
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .current_dir(self.data.parent().unwrap())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    fn start() -> Cluster {
        // Not a TempDir: it must outlive every test of the binary; removed after the stop.
        let dir = std::env::temp_dir().join(format!(
            "portal-pg-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .map(|m| m.uid())
                .unwrap_or(1)
                == 0
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        // TLS: a certificate for the address the tests connect to; the key readable by the
        // server's user only (PostgreSQL refuses it otherwise).
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&cert)
                .arg(&key)
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres the certificate");
        }
        let cluster = Cluster {
            bin: server_bin(),
            data: dir.join("data"),
            port: free_tcp_port(),
            as_postgres,
            cert: cert.clone(),
        };
        let data = cluster.data.to_str().unwrap().to_string();
        let out = cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cluster.port,
            dir.display(),
            cert.display(),
            key.display()
        );
        let log = dir.join("log");
        let out = cluster.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
                "-o",
                &options,
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        cluster.stop_when_gone(&dir);
        cluster
    }

    /// Leaves a watchdog that stops the cluster and removes its directory once this test
    /// process has exited, however it ends (even `kill -9`).
    #[allow(clippy::zombie_processes)] // it must outlive this process: never waited for
    fn stop_when_gone(&self, dir: &Path) {
        let stop = if self.as_postgres {
            "runuser -u postgres -- \"$1/pg_ctl\" -D \"$2/data\" -m immediate stop"
        } else {
            "\"$1/pg_ctl\" -D \"$2/data\" -m immediate stop"
        };
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 0.2; done; {stop} >/dev/null 2>&1; rm -rf \"$2\"",
                std::process::id()
            ))
            .args(["watchdog"])
            .arg(&self.bin)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

/// The URL of a new, empty database on the test cluster (started on first use).
pub async fn fresh_database() -> String {
    let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
    let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    format!("postgres://postgres@127.0.0.1:{}/{name}", cluster.port)
}

/// Makes the database `admin` is connected to read-only (`on`) or writable again for every
/// connection made from now on, and ends the others (they are made again with it). `admin`
/// itself, made before, can turn it back.
#[allow(dead_code)]
pub async fn set_read_only(admin: &mut sqlx::PgConnection, on: bool) {
    let value = if on { "on" } else { "off" };
    sqlx::query(&format!("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = {value}', current_database()); END $$"))
        .execute(&mut *admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .execute(&mut *admin)
        .await
        .unwrap();
}

/// The cluster's server log (for a failing test's message).
pub fn server_log() -> String {
    CLUSTER
        .get()
        .and_then(|c| {
            std::fs::read_to_string(c.data.parent().unwrap_or(Path::new("/")).join("log")).ok()
        })
        .unwrap_or_default()
}

/// The certificate a client must trust to verify the test cluster (`sslrootcert`).
#[allow(dead_code)]
pub async fn tls_root_cert() -> PathBuf {
    let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
    cluster.cert.clone()
}

/// A TCP relay to the test cluster that can be cut (its port then refuses connections, as
/// a stopped PostgreSQL's does) and opened again on the same port.
pub struct Relay {
    pub port: u16,
    upstream: u16,
    tasks: tokio::task::JoinSet<()>,
    /// Set by [`Relay::cut`]: the listener and every relayed connection end.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// A new database on the test cluster, reached through a new relay: the relay and the
    /// database's URL through it.
    pub async fn fresh_database() -> (Relay, String) {
        let url = fresh_database().await;
        let (head, database) = url.rsplit_once('/').unwrap();
        let upstream: u16 = head.rsplit_once(':').unwrap().1.parse().unwrap();
        let relay = Relay::start(upstream).await;
        let relayed = format!("postgres://postgres@127.0.0.1:{}/{database}", relay.port);
        (relay, relayed)
    }

    pub async fn start(upstream: u16) -> Relay {
        let mut relay = Relay {
            port: 0,
            upstream,
            tasks: tokio::task::JoinSet::new(),
            stop: tokio::sync::watch::Sender::new(false),
        };
        relay.open().await;
        relay
    }

    /// Listens (again) on the relay's port, relaying each connection to the cluster.
    pub async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.port = listener.local_addr().unwrap().port();
        let upstream = self.upstream;
        self.stop.send_replace(false);
        let mut stop = self.stop.subscribe();
        self.tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (mut client, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = stop.wait_for(|stop| *stop) => break,
                };
                let mut stop = stop.clone();
                connections.spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = stop.wait_for(|stop| *stop) => {}
                        }
                    }
                });
            }
            // Each connection's sockets are closed when its task ends.
            while connections.join_next().await.is_some() {}
        });
    }

    /// Closes the listener and every relayed connection; returns once they are closed (a
    /// client's next use of a relayed connection finds it closed, a new one is refused).
    pub async fn cut(&mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
