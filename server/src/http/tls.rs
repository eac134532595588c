//! Built-in TLS (rustls with the `ring` provider): the portal serves HTTPS itself from a PEM
//! certificate chain and private key, reloaded on SIGHUP (a renewed certificate needs no
//! restart; a broken pair is refused and the previous one kept).
//!
//! Handshakes run in their own tasks with a deadline, at most 16 at once per client address
//! (IPv6: per /64) and 1024 in all (a quarter of the connections a low limit of open files
//! allows); beyond that a connection is closed at once, so a client that
//! connects and never speaks cannot hold up anyone else's; completed connections are handed to
//! the connection loop (`serve`) through [`TlsListener`].

use crate::config::TlsSettings;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tokio_rustls::{
    rustls::{
        crypto::ring,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_util::sync::CancellationToken;

/// Longest a client may take to complete its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; beyond it new connections are closed at once.
const MAX_HANDSHAKES: usize = 1024;

/// `descriptors` for the web's connections ([`super::serve::connections_for`]) shared between
/// handshakes in progress (a quarter, at most [`MAX_HANDSHAKES`]) and the connections served
/// (the rest): together they never take more (each holds a descriptor), so handshakes under a
/// low limit of open files cannot take the database's.
pub fn handshakes_and_connections(descriptors: usize) -> (usize, usize) {
    let handshakes = (descriptors / 4).clamp(1, MAX_HANDSHAKES);
    (handshakes, descriptors.saturating_sub(handshakes).max(1))
}
/// Handshakes in progress at once from one client address (IPv6: one /64).
const MAX_HANDSHAKES_PER_CLIENT: usize = 16;

/// Handshakes in progress at once from one client with `handshakes` in all: a quarter of a low
/// total (one client cannot hold them all), at least one, at most
/// [`MAX_HANDSHAKES_PER_CLIENT`].
fn handshakes_per_client(handshakes: usize) -> usize {
    (handshakes / 4).clamp(1, MAX_HANDSHAKES_PER_CLIENT)
}

/// Why the certificate and key could not be used: which file, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// A certificate's notBefore and notAfter (Unix seconds).
type Dates = (i64, i64);

/// How far ahead of this host's clock a renewed certificate may begin and still replace the
/// one in use at a reload (its issuer's clock a moment ahead).
const NOT_YET_SLACK_SECS: i64 = 3_600;

/// Reads the certificate chain and key and checks that they belong together.
pub fn load(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    load_dated(settings).map(|(config, _)| config)
}

/// [`load`], and the leaf certificate's notBefore and notAfter (Unix seconds) where they can be
/// read — of the very certificate loaded.
fn load_dated(settings: &TlsSettings) -> Result<(Arc<ServerConfig>, Option<Dates>), TlsError> {
    let read_error = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        TlsError(format!("cannot read the {what} {}: {e}", path.display()))
    };
    std::fs::metadata(&settings.cert_file)
        .map_err(|e| read_error("certificate file", &settings.cert_file, &e))?;
    std::fs::metadata(&settings.key_file)
        .map_err(|e| read_error("private key file", &settings.key_file, &e))?;
    let certs = CertificateDer::pem_file_iter(&settings.cert_file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read_error("certificate file", &settings.cert_file, &e))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            settings.cert_file.display()
        )));
    }
    if let Some(warning) = validity_warning(&certs[0], &settings.cert_file, now_secs()) {
        // Served all the same (replacing it is the operator's call), but said at every load:
        // the start, each SIGHUP reload.
        tracing::warn!("{warning}");
    }
    let dates = validity(&certs[0]);
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|e| read_error("private key file", &settings.key_file, &e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            TlsError(format!(
                "the private key {} does not go with the certificate {}: {e}",
                settings.key_file.display(),
                settings.cert_file.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), dates))
}

/// What `check-config` says of the certificate's dates ([`validity_warning`]), if anything.
pub fn certificate_warning(settings: &TlsSettings) -> Option<String> {
    validity_warning(&leaf_of(settings)?, &settings.cert_file, now_secs())
}

/// A sentence when the certificate `settings` names is not for `public_url`'s host: every
/// browser refuses it there (black-box tester N's D5). None when it is, or when it cannot be
/// read (`load` says why).
pub fn name_warning(
    settings: &TlsSettings,
    public_url: &crate::config::PublicUrl,
) -> Option<String> {
    let host = public_url.host();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.as_str()).ok()?;
    let leaf = leaf_of(settings)?;
    let certificate = webpki::EndEntityCert::try_from(&leaf).ok()?;
    certificate.verify_is_valid_for_subject_name(&name).err().map(|_| {
        format!(
            "the certificate {} is not for {host}, public_url's host: browsers refuse it there (use a certificate that names {host}, or set public_url to a name the certificate holds)",
            settings.cert_file.display()
        )
    })
}

/// The leaf certificate (the file's first) `settings` names, if it can be read.
fn leaf_of(settings: &TlsSettings) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(&settings.cert_file)
        .ok()?
        .next()?
        .ok()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How soon before its end a certificate is said to be ending.
const ENDING_SOON_SECS: i64 = 14 * 86_400;

/// A sentence when the leaf certificate `leaf` (from `file`) is not valid at `now` (Unix
/// seconds) — expired, or not valid yet: browsers refuse it — or ends within 14 days. None
/// when it is valid beyond that, or its dates cannot be read (rustls has accepted it).
fn validity_warning(leaf: &[u8], file: &Path, now: i64) -> Option<String> {
    let (not_before, not_after) = validity(leaf)?;
    let day = |secs: i64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64),
        )
        .to_string()
    };
    let file = file.display();
    if now >= not_after {
        Some(format!("the certificate {file} expired at {}: browsers refuse it (renew it, then SIGHUP the portal)", day(not_after)))
    } else if now < not_before {
        Some(format!("the certificate {file} is not valid before {}: browsers refuse it until then (check the machine's clock)", day(not_before)))
    } else if not_after - now < ENDING_SOON_SECS {
        Some(format!(
            "the certificate {file} expires at {}: renew it (then SIGHUP the portal)",
            day(not_after)
        ))
    } else {
        None
    }
}

/// A certificate's notBefore and notAfter (Unix seconds), read from its DER (X.509:
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, … }, … }).
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (0x30, certificate, _) = tlv(der)? else {
        return None;
    };
    let (0x30, mut tbs, _) = tlv(certificate)? else {
        return None;
    };
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xA0 {
        tbs = rest; // the version
    }
    for _ in 0..3 {
        tbs = tlv(tbs)?.2; // serialNumber, signature, issuer
    }
    let (0x30, validity, _) = tlv(tbs)? else {
        return None;
    };
    let (before_tag, before, rest) = tlv(validity)?;
    let (after_tag, after, _) = tlv(rest)?;
    Some((asn1_time(before_tag, before)?, asn1_time(after_tag, after)?))
}

/// One DER element: its tag, its content, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        (
            bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)),
            rest,
        )
    };
    let (content, rest) = rest.split_at_checked(length)?;
    Some((tag, content, rest))
}

/// An X.509 time (UTCTime `YYMMDDHHMMSSZ`, 0x17, years 1950-2049; GeneralizedTime
/// `YYYYMMDDHHMMSSZ`, 0x18) as Unix seconds.
fn asn1_time(tag: u8, content: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(content).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 14) => (text.get(..4)?.parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), then seconds.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// The certificate in use; replaced on reload.
#[derive(Clone)]
pub struct CurrentConfig {
    config: Arc<RwLock<Arc<ServerConfig>>>,
    outcomes: Arc<ReloadOutcomes>,
    /// The leaf certificate's notBefore and notAfter (Unix seconds), where known.
    validity: Arc<RwLock<Option<(i64, i64)>>>,
}

/// How many reloads succeeded and failed since start (for operators and tests).
#[derive(Debug, Default)]
pub struct ReloadOutcomes {
    /// Reloads that replaced the certificate.
    pub succeeded: AtomicU64,
    /// Reloads refused (the previous certificate stayed).
    pub failed: AtomicU64,
}

impl CurrentConfig {
    /// Starts with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        CurrentConfig {
            config: Arc::new(RwLock::new(config)),
            outcomes: Arc::default(),
            validity: Arc::default(),
        }
    }

    /// Starts with the certificate and key `settings` name ([`load`]), knowing its dates.
    pub fn loaded(settings: &TlsSettings) -> Result<Self, TlsError> {
        let (config, dates) = load_dated(settings)?;
        let current = CurrentConfig::new(config);
        *current.validity.write().unwrap_or_else(|p| p.into_inner()) = dates;
        Ok(current)
    }

    fn get(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the files again; on success new connections use them, on failure the previous
    /// certificate stays (and the error is returned).
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), TlsError> {
        // A certificate that has expired would be refused by every browser: while the one in
        // use has not, it stays (black-box tester S's D9). One not valid yet is taken (a
        // renewal dated a moment ahead of this host's clock: a deploy hook sends one SIGHUP).
        // At the start there is no other: it is used, with a warning.
        let now = now_secs();
        let unexpired =
            |dates: Option<(i64, i64)>| dates.is_some_and(|(_, not_after)| now < not_after);
        let in_use = *self.validity.read().unwrap_or_else(|p| p.into_inner());
        let result = load_dated(settings).and_then(|(config, dates)| {
            if dates.is_some() && !unexpired(dates) && unexpired(in_use) {
                return Err(TlsError(format!(
                    "the certificate {} has expired: browsers would refuse it",
                    settings.cert_file.display()
                )));
            }
            // Valid only from more than an hour on (black-box tester W: ten days ahead): not
            // a renewal dated a moment ahead of this host's clock.
            if dates.is_some_and(|(not_before, _)| not_before > now + NOT_YET_SLACK_SECS)
                && unexpired(in_use)
            {
                return Err(TlsError(format!(
                    "the certificate {} is not valid yet: browsers would refuse it until then",
                    settings.cert_file.display()
                )));
            }
            *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
            *self.validity.write().unwrap_or_else(|p| p.into_inner()) = dates;
            Ok(())
        });
        let counter = match result {
            Ok(()) => &self.outcomes.succeeded,
            Err(_) => &self.outcomes.failed,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        result
    }

    /// Reload outcomes so far.
    pub fn outcomes(&self) -> &ReloadOutcomes {
        &self.outcomes
    }
}

/// One client's handshake in progress; gives its count back when dropped.
struct HandshakeSlot {
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// A client speaking plain HTTP to the HTTPS port (a TLS handshake starts with 0x16; an HTTP
/// request with a method's capital letter) gets a plain answer saying so, like nginx's, instead
/// of an unreadable TLS alert; true when it was answered (and the connection is done).
async fn speaks_plain_http(stream: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) || !first[0].is_ascii_uppercase() {
        return false;
    }
    // Read the request (what has arrived) first: closing with unread data would reset the
    // connection before the client reads the answer.
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut request)).await;
    let body = "This port speaks HTTPS: use https:// in the address.\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout_at(deadline, stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
    true
}

/// Completed TLS connections, for the connection loop.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` until `shutdown`, handshaking with the current certificate, at most
    /// `max_handshakes` at once ([`handshakes_and_connections`]), and a share of them per
    /// client: `counted_as` names the client a peer counts as (an IPv6 network of the
    /// configured prefix), or none (a load balancer in front: not limited per client).
    pub fn new(
        tcp: TcpListener,
        current: CurrentConfig,
        counted_as: Arc<dyn Fn(IpAddr) -> Option<IpAddr> + Send + Sync>,
        shutdown: CancellationToken,
        max_handshakes: usize,
    ) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, connections) = mpsc::channel(64);
        let handshakes = Arc::new(Semaphore::new(max_handshakes));
        let per_client_cap = handshakes_per_client(max_handshakes);
        let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Full (in total or for this client): closed at once, never queued.
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    crate::throttled!(warn, %peer, max_handshakes, "connection closed at once: too many TLS handshakes in progress");
                    continue;
                };
                let client = counted_as(peer.ip().to_canonical());
                if let Some(client) = client {
                    let mut counts = per_client.lock().unwrap_or_else(|p| p.into_inner());
                    let count = counts.entry(client).or_insert(0);
                    if *count >= per_client_cap {
                        crate::throttled!(warn, %peer, per_client_cap, "connection closed at once: too many TLS handshakes in progress from this client");
                        continue;
                    }
                    *count += 1;
                }
                let acceptor = TlsAcceptor::from(current.get());
                let tx = tx.clone();
                let per_client = per_client.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _slot = client.map(|client| HandshakeSlot { per_client, client });
                    // One deadline for everything before the handshake completes.
                    let deadline = tokio::time::Instant::now() + HANDSHAKE_DEADLINE;
                    let mut stream = stream;
                    if speaks_plain_http(&mut stream, deadline).await {
                        return;
                    }
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { connections, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The acceptor stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// SIGHUP, watched from [`Hangups::watch`] on: from then on it never ends the process (its
/// default action), and one that comes before the portal serves is not lost for
/// [`reload_on_sighup`].
/// Shared, so that [`reload_on_sighup`] restarted after a crash (supervised) watches on.
#[derive(Clone)]
pub struct Hangups(
    #[cfg(unix)] std::sync::Arc<tokio::sync::Mutex<std::io::Result<tokio::signal::unix::Signal>>>,
    #[cfg(not(unix))] (),
);

impl Hangups {
    /// Watches SIGHUP from now on (a start-up's first step: while it waits for the database, a
    /// SIGHUP must not end it).
    pub fn watch() -> Self {
        #[cfg(unix)]
        return Hangups(std::sync::Arc::new(tokio::sync::Mutex::new(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
        )));
        #[cfg(not(unix))]
        Hangups(())
    }
}

/// Reloads the certificate and key (when serving HTTPS) on every SIGHUP `hangups` sees until
/// `shutdown`.
pub fn reload_on_sighup(
    tls: Option<(TlsSettings, CurrentConfig)>,
    public_url: Option<crate::config::PublicUrl>,
    shutdown: CancellationToken,
    hangups: Hangups,
) -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let Hangups(hangups) = hangups;
    async move {
        #[cfg(unix)]
        {
            let mut watched = hangups.lock().await;
            let Ok(hangups) = &mut *watched else {
                tracing::warn!("SIGHUP cannot be watched: certificate reload by signal is off");
                return;
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hangups.recv() => {
                        if got.is_none() {
                            return;
                        }
                        // Said each time: SIGHUP is no reload of the configuration file
                        // (black-box tester S's D14).
                        let Some((settings, current)) = &tls else {
                            tracing::info!("SIGHUP: nothing to reload (no built-in TLS; the configuration file is read at start only: restart the portal to apply changes to it)");
                            continue;
                        };
                        match current.reload(settings) {
                            Ok(()) => {
                                tracing::info!(cert = %settings.cert_file.display(), "TLS certificate reloaded (only it: the configuration file is read at start only, restart the portal to apply changes to it)");
                                // As at the start (black-box tester W).
                                if let Some(warning) = public_url.as_ref().and_then(|url| name_warning(settings, url)) {
                                    tracing::warn!("{warning}");
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use"),
                        }
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (tls, public_url);
            shutdown.cancelled().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handshakes in progress and connections served share the descriptors the web has: never
    /// more together (a low limit of open files: handshakes cannot take the database's).
    #[test]
    fn handshakes_and_connections_share_the_webs_descriptors() {
        for descriptors in [16, 100, 252, 4096, 16_384] {
            let (handshakes, connections) = handshakes_and_connections(descriptors);
            assert_eq!(handshakes + connections, descriptors, "{descriptors}");
            assert!(
                handshakes >= 1 && connections >= handshakes,
                "{descriptors}"
            );
        }
        assert_eq!(handshakes_and_connections(252), (63, 189));
        assert_eq!(handshakes_and_connections(16_384), (MAX_HANDSHAKES, 15_360));
        // One client holds a share of them: not all of a low total.
        assert_eq!(handshakes_per_client(4), 1);
        assert_eq!(handshakes_per_client(63), 15);
        assert_eq!(
            handshakes_per_client(MAX_HANDSHAKES),
            MAX_HANDSHAKES_PER_CLIENT
        );
    }

    fn pair(dir: &Path, name: &str) -> TlsSettings {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let settings = TlsSettings {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
        };
        std::fs::write(&settings.cert_file, issued.cert.pem()).unwrap();
        std::fs::write(&settings.key_file, issued.key_pair.serialize_pem()).unwrap();
        settings
    }

    /// A self-signed certificate valid from `not_before` to `not_after` (years, months, days).
    fn dated(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificates_dates_are_read_and_an_expired_one_is_said() {
        // 2026-12-05T00:00:00Z; 2049 is written as UTCTime, 2050 as GeneralizedTime.
        let day = 1_796_428_800;
        let cert = dated((2026, 1, 1), (2050, 1, 1));
        assert_eq!(validity(&cert), Some((1_767_225_600, 2_524_608_000)));
        let file = Path::new("/etc/portal/tls.crt");
        assert_eq!(validity_warning(&cert, file, day), None);
        let expired = dated((2025, 1, 1), (2026, 12, 4));
        let said = validity_warning(&expired, file, day).expect("expired");
        assert!(
            said.contains("/etc/portal/tls.crt expired at 2026-12-04T00:00:00Z"),
            "{said}"
        );
        let early = dated((2027, 1, 1), (2049, 12, 31));
        let said = validity_warning(&early, file, day).expect("not yet valid");
        assert!(said.contains("not valid before 2027-01-01"), "{said}");
        let ending = dated((2026, 1, 1), (2026, 12, 12));
        let said = validity_warning(&ending, file, day).expect("ending soon");
        assert!(said.contains("expires at 2026-12-12"), "{said}");
        // Not a certificate: nothing said (rustls refuses it anyway).
        assert_eq!(validity(b"\x30\x03\x02\x01"), None);
        assert_eq!(validity(&[]), None);
    }

    /// A certificate that does not name public_url's host is said (browsers refuse it there);
    /// one that does — a DNS name, or an address among its names — is not.
    #[test]
    fn a_certificate_not_for_the_public_urls_host_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let tls = pair(dir.path(), "localhost");
        let url = |text: &str| crate::config::PublicUrl::parse(text).unwrap();
        assert_eq!(name_warning(&tls, &url("https://localhost:8443")), None);
        let said = name_warning(&tls, &url("https://portal.example.com")).expect("not its name");
        assert!(
            said.contains("is not for portal.example.com, public_url's host"),
            "{said}"
        );
        assert!(name_warning(&tls, &url("https://127.0.0.1")).is_some());
        assert!(name_warning(&tls, &url("https://[::1]:8443")).is_some());
        assert_eq!(url("https://[::1]:8443").host(), "::1");
        assert_eq!(url("https://[::1]").host(), "::1");
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let good = pair(dir.path(), "good");
        let other = pair(dir.path(), "other");
        let current = CurrentConfig::new(load(&good).unwrap());
        let before = current.get();
        let mismatched = TlsSettings {
            cert_file: good.cert_file.clone(),
            key_file: other.key_file.clone(),
        };
        let e = current.reload(&mismatched).expect_err("mismatched pair");
        assert!(e.to_string().contains("does not go with"), "{e}");
        assert!(Arc::ptr_eq(&before, &current.get()), "still the old one");
        current.reload(&other).unwrap();
        assert!(
            !Arc::ptr_eq(&before, &current.get()),
            "a good pair replaces it"
        );
    }

    /// A pair whose certificate is not valid now (expired) does not replace a valid one in use
    /// (every browser would refuse it: black-box tester S's D9); a valid one still does.
    #[test]
    fn a_reload_keeps_a_valid_certificate_over_an_expired_one() {
        let dir = tempfile::tempdir().unwrap();
        // A pair named `name` whose certificate is valid from `not_before` to `not_after`.
        let dated = |name: &str, not_before, not_after| {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            (params.not_before, params.not_after) = (not_before, not_after);
            let key = rcgen::KeyPair::generate().unwrap();
            let settings = TlsSettings {
                cert_file: dir.path().join(format!("{name}.crt")),
                key_file: dir.path().join(format!("{name}.key")),
            };
            std::fs::write(&settings.cert_file, params.self_signed(&key).unwrap().pem()).unwrap();
            std::fs::write(&settings.key_file, key.serialize_pem()).unwrap();
            settings
        };
        let good = pair(dir.path(), "good");
        let expired = dated(
            "expired",
            rcgen::date_time_ymd(2020, 1, 1),
            rcgen::date_time_ymd(2021, 1, 1),
        );
        load(&expired).expect("a pair that goes together");

        let current = CurrentConfig::loaded(&good).unwrap();
        let before = current.get();
        let e = current.reload(&expired).expect_err("expired");
        assert!(e.to_string().contains("has expired"), "{e}");
        assert!(Arc::ptr_eq(&before, &current.get()), "still the valid one");
        current.reload(&pair(dir.path(), "renewed")).unwrap();
        assert!(
            !Arc::ptr_eq(&before, &current.get()),
            "a valid one replaces it"
        );
        // Started with an expired one (nothing else to serve): another expired one may follow.
        let started_expired = CurrentConfig::loaded(&expired).unwrap();
        started_expired.reload(&expired).unwrap();
        // One valid only from years on is refused; one a moment ahead of this host's clock (a
        // renewal dated by its issuer's) is taken.
        let years = dated(
            "years",
            rcgen::date_time_ymd(2090, 1, 1),
            rcgen::date_time_ymd(2091, 1, 1),
        );
        let e = current.reload(&years).expect_err("not valid for years");
        assert!(e.to_string().contains("is not valid yet"), "{e}");
        let in_five_minutes = rcgen::date_time_ymd(2026, 1, 1)
            + std::time::Duration::from_secs((now_secs() - 1_767_225_600 + 300).max(0) as u64);
        let ahead = dated("ahead", in_five_minutes, rcgen::date_time_ymd(2091, 1, 1));
        let renewed = current.get();
        current.reload(&ahead).unwrap();
        assert!(
            !Arc::ptr_eq(&renewed, &current.get()),
            "one not valid yet is taken"
        );
    }
}
