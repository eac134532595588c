//! `portal-floor`: the least any portal can cost for the journey `portal-load` drives — a
//! server that answers its five HTTP requests with fixed pages and makes its three RADIUS
//! exchanges (Access-Request, Accounting-Start, Accounting-Stop, with the attributes the portal
//! sends) and does nothing else: no storage, no durability, no sessions beyond the Stop's name,
//! no templates, no security checks. One thread (a current-thread runtime: no hand-offs).
//!
//! What it measures (`scripts/bench-floor.sh`, docs/BENCHMARKS.md): the CPU a process pays
//! per journey only to be woken by these eight messages and answer them, against FreeRADIUS's
//! for its three packets — the floor under the portal's ratio to FreeRADIUS. Never a portal.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::oneshot,
};

/// The journey's floor server.
#[derive(Parser)]
struct Args {
    /// Where to listen for HTTP (plain, loopback).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The RADIUS server's authentication address.
    #[arg(long)]
    auth: SocketAddr,
    /// The RADIUS server's accounting address.
    #[arg(long)]
    acct: SocketAddr,
    /// The shared secret.
    #[arg(long, default_value = "testing123")]
    secret: String,
    /// Worker threads: 0 for one thread that also polls (a current-thread runtime), else a
    /// multi-thread runtime with that many workers (the portal's kind).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Appends a line to this file and fsyncs it at each sign-in and sign-out (the cost of a
    /// durable write without a database).
    #[arg(long)]
    fsync: Option<std::path::PathBuf>,
}

const PAGE: &str = r#"<!DOCTYPE html><html><body><form method="post" action="/api/login"><input type="hidden" name="csrf" value="floor"></form></body></html>"#;

/// The requests waiting for their answers, by Identifier.
#[derive(Default)]
struct Waiting {
    next: u8,
    answers: HashMap<u8, oneshot::Sender<Vec<u8>>>,
}

/// A lock whose holder never panics while holding it (a poisoned one is taken as it is).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One UDP socket to the RADIUS server; answers matched to requests by Identifier.
struct Radius {
    socket: UdpSocket,
    secret: Vec<u8>,
    auth: SocketAddr,
    acct: SocketAddr,
    waiting: Mutex<Waiting>,
}

impl Radius {
    /// A free Identifier and the channel its answer arrives on.
    fn register(&self) -> (u8, oneshot::Receiver<Vec<u8>>) {
        let (tx, rx) = oneshot::channel();
        let mut waiting = lock(&self.waiting);
        let id = waiting.next;
        waiting.next = id.wrapping_add(1);
        waiting.answers.insert(id, tx);
        (id, rx)
    }

    /// Sends `packet` to `to` and waits for its answer (sent again each second, three times).
    async fn send(
        &self,
        packet: &[u8],
        to: SocketAddr,
        id: u8,
        mut answer: oneshot::Receiver<Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        for _ in 0..3 {
            self.socket
                .send_to(packet, to)
                .await
                .map_err(|e| e.to_string())?;
            if let Ok(answer) = tokio::time::timeout(Duration::from_secs(1), &mut answer).await {
                return answer.map_err(|e| e.to_string());
            }
        }
        lock(&self.waiting).answers.remove(&id);
        Err("no answer".into())
    }

    /// An Accounting-Request with `attributes`.
    async fn account(&self, attributes: &[u8]) -> Result<Vec<u8>, String> {
        let (id, answer) = self.register();
        let mut packet = vec![4, id];
        packet.extend_from_slice(&((20 + attributes.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0; 16]);
        packet.extend_from_slice(attributes);
        let mut hash = Md5::new();
        hash.update(&packet);
        hash.update(&self.secret);
        let authenticator: [u8; 16] = hash.finalize().into();
        packet[4..20].copy_from_slice(&authenticator);
        self.send(&packet, self.acct, id, answer).await
    }

    /// An Access-Request with `attributes`, whose User-Password (16 bytes at `hidden_at`) is
    /// hidden with the Request Authenticator and whose last attribute is the
    /// Message-Authenticator.
    async fn access(
        &self,
        attributes: &mut [u8],
        hidden_at: usize,
        password: &[u8],
    ) -> Result<Vec<u8>, String> {
        let (id, answer) = self.register();
        let authenticator = rand_bytes(id);
        let mut key = Md5::new();
        key.update(&self.secret);
        key.update(authenticator);
        let key: [u8; 16] = key.finalize().into();
        let len = password.len().min(16);
        let mut block = [0u8; 16];
        block[..len].copy_from_slice(&password[..len]);
        for (i, b) in block.iter().enumerate() {
            attributes[hidden_at + i] = b ^ key[i];
        }
        let mut packet = vec![1, id];
        packet.extend_from_slice(&((20 + attributes.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&authenticator);
        packet.extend_from_slice(attributes);
        let signature = hmac_md5(&self.secret, &packet);
        let at = packet.len() - 16;
        packet[at..].copy_from_slice(&signature);
        self.send(&packet, self.auth, id, answer).await
    }

    async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok(n) = self.socket.recv(&mut buf).await else {
                continue;
            };
            if n < 20 {
                continue;
            }
            if let Some(tx) = lock(&self.waiting).answers.remove(&buf[1]) {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    }
}

/// Sixteen bytes that differ per request (a Request Authenticator; not a secret here).
fn rand_bytes(id: u8) -> [u8; 16] {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut hash = Md5::new();
    hash.update(nanos.to_be_bytes());
    hash.update([id]);
    hash.finalize().into()
}

fn hmac_md5(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..16].copy_from_slice(&Md5::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let (mut inner, mut outer) = (Md5::new(), Md5::new());
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn attribute(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(2 + value.len() as u8);
    out.extend_from_slice(value);
}

/// The attributes every request of the portal carries (NAS and client).
fn nas_attributes(out: &mut Vec<u8>, client: Ipv4Addr) {
    attribute(out, 4, &[127, 0, 0, 1]); // NAS-IP-Address
    attribute(out, 32, b"radius-portal"); // NAS-Identifier
    attribute(out, 61, &5u32.to_be_bytes()); // NAS-Port-Type: Virtual
    attribute(out, 31, client.to_string().as_bytes()); // Calling-Station-Id
    attribute(out, 8, &client.octets()); // Framed-IP-Address
}

/// A user's open session: what its Stop names.
struct Open {
    user: String,
    session_id: String,
    class: Option<Vec<u8>>,
    started: u64,
}

struct Floor {
    radius: Arc<Radius>,
    log: Option<Mutex<std::fs::File>>,
    open: Mutex<HashMap<Ipv4Addr, Open>>,
    started: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Floor {
    async fn login(&self, client: Ipv4Addr, form: &[u8]) -> Result<&'static str, String> {
        let field = |name: &str| -> String {
            let form = String::from_utf8_lossy(form);
            form.split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .map(|v| v.replace("%2D", "-"))
                .unwrap_or_default()
        };
        let (user, password) = (field("username"), field("password"));
        let mut attributes = Vec::with_capacity(128);
        attribute(&mut attributes, 1, user.as_bytes());
        // User-Password hidden with the Request Authenticator, filled in below.
        let hidden_at = attributes.len() + 2;
        attribute(&mut attributes, 2, &[0; 16]);
        nas_attributes(&mut attributes, client);
        attribute(&mut attributes, 80, &[0; 16]);
        let answer = self
            .radius
            .access(&mut attributes, hidden_at, password.as_bytes())
            .await?;
        if answer[0] != 2 {
            return Ok("/");
        }
        let class = find(&answer, 25).map(<[u8]>::to_vec);
        let n = lock(&self.radius.waiting).next;
        let open = Open {
            user,
            session_id: format!("floor-{}-{client}-{n}", self.started),
            class,
            started: now_secs(),
        };
        self.durable(&open.session_id);
        self.account(client, &open, 1).await?;
        lock(&self.open).insert(client, open);
        Ok("/session")
    }

    /// With `--fsync`: a line written and synced to disk on this thread.
    fn durable(&self, line: &str) {
        if let Some(log) = &self.log {
            use std::io::Write;
            let mut file = lock(log);
            let _ = writeln!(file, "{line}");
            let _ = file.sync_data();
        }
    }

    async fn disconnect(&self, client: Ipv4Addr) -> Result<(), String> {
        let open = lock(&self.open).remove(&client);
        match open {
            Some(open) => {
                self.durable(&open.session_id);
                self.account(client, &open, 2).await
            }
            None => Ok(()),
        }
    }

    async fn account(&self, client: Ipv4Addr, open: &Open, status: u32) -> Result<(), String> {
        let mut attributes = Vec::with_capacity(160);
        attribute(&mut attributes, 40, &status.to_be_bytes()); // Acct-Status-Type
        attribute(&mut attributes, 44, open.session_id.as_bytes()); // Acct-Session-Id
        attribute(&mut attributes, 1, open.user.as_bytes());
        if let Some(class) = &open.class {
            attribute(&mut attributes, 25, class);
        }
        nas_attributes(&mut attributes, client);
        attribute(&mut attributes, 55, &(now_secs() as u32).to_be_bytes()); // Event-Timestamp
        attribute(&mut attributes, 41, &0u32.to_be_bytes()); // Acct-Delay-Time
        if status == 2 {
            let time = now_secs().saturating_sub(open.started) as u32;
            attribute(&mut attributes, 46, &time.to_be_bytes()); // Acct-Session-Time
            attribute(&mut attributes, 49, &1u32.to_be_bytes()); // Acct-Terminate-Cause: User-Request
        }
        let answer = self.radius.account(&attributes).await?;
        if answer[0] == 5 {
            Ok(())
        } else {
            Err(format!("accounting answered with code {}", answer[0]))
        }
    }
}

/// The first attribute of `kind` in a RADIUS packet.
fn find(packet: &[u8], kind: u8) -> Option<&[u8]> {
    let mut at = 20;
    while at + 2 <= packet.len() {
        let len = packet[at + 1] as usize;
        if len < 2 || at + len > packet.len() {
            return None;
        }
        if packet[at] == kind {
            return Some(&packet[at + 2..at + len]);
        }
        at += len;
    }
    None
}

fn answer(
    status: StatusCode,
    location: Option<&'static str>,
    body: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Some(location) = location {
        response
            .headers_mut()
            .insert(header::LOCATION, header::HeaderValue::from_static(location));
    }
    response
}

async fn serve(
    floor: Arc<Floor>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let client: Ipv4Addr = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(Ipv4Addr::LOCALHOST);
    let path = request.uri().path().to_owned();
    let post = request.method() == hyper::Method::POST;
    let body = request.into_body().collect().await?.to_bytes();
    Ok(match (post, path.as_str()) {
        (true, "/api/login") => match floor.login(client, &body).await {
            Ok(to) => answer(StatusCode::SEE_OTHER, Some(to), ""),
            Err(_) => answer(StatusCode::BAD_GATEWAY, None, "no RADIUS answer"),
        },
        (true, "/api/disconnect") => match floor.disconnect(client).await {
            Ok(()) => answer(StatusCode::SEE_OTHER, Some("/"), ""),
            Err(_) => answer(StatusCode::BAD_GATEWAY, None, "no RADIUS answer"),
        },
        (false, "/" | "/session") => answer(StatusCode::OK, None, PAGE),
        _ => answer(StatusCode::NOT_FOUND, None, "not found"),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match args.threads {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let radius = Arc::new(Radius {
        socket,
        secret: args.secret.into_bytes(),
        auth: args.auth,
        acct: args.acct,
        waiting: Mutex::default(),
    });
    tokio::spawn(radius.clone().receive());
    let floor = Arc::new(Floor {
        radius,
        log: match &args.fsync {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
            None => None,
        },
        open: Mutex::new(HashMap::new()),
        started: now_secs(),
    });
    let listener = TcpListener::bind(args.listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let floor = floor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| serve(floor.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
