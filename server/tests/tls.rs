//! Built-in TLS against a real TLS client: the portal serves HTTPS from PEM files (HSTS on),
//! refuses to start with a missing, unreadable or mismatched pair (saying which file and what),
//! and picks up a renewed certificate on SIGHUP without dropping the listener; a broken
//! renewal keeps the previous certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{settings, temp_db, FreeRadius, TestApp};
use radius_portal::{config::TlsSettings, startup::Application};
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{
    rustls::{self, pki_types::CertificateDer, RootCertStore},
    TlsConnector,
};

/// A self-signed certificate for localhost / 127.0.0.1, written as PEM files; returns its DER.
fn certificate(dir: &Path, name: &str) -> (TlsSettings, Vec<u8>) {
    let issued =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_file = dir.join(format!("{name}.crt"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, issued.cert.pem()).unwrap();
    std::fs::write(&key_file, issued.key_pair.serialize_pem()).unwrap();
    (
        TlsSettings {
            cert_file,
            key_file,
        },
        issued.cert.der().to_vec(),
    )
}

/// GET `path` over TLS trusting only `trusted`; the response head and the certificate the
/// server presented. Fails instead of hanging if the server does not answer.
async fn get(addr: SocketAddr, trusted: &[u8], path: &str) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(20), get_unbounded(addr, trusted, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} over TLS got no answer"))
}

async fn get_unbounded(addr: SocketAddr, trusted: &[u8], path: &str) -> (String, Vec<u8>) {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(trusted.to_vec())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("a handshake with the trusted certificate");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    (String::from_utf8_lossy(&response).into_owned(), presented)
}

#[tokio::test]
async fn the_portal_serves_https_and_reloads_its_certificate_on_sighup() {
    // Registered first: SIGHUP never falls to its default action (ending this test process).
    let mut hangups =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let radius = FreeRadius::start().await;
    let (dir, db) = temp_db();
    let (files, first) = certificate(dir.path(), "first");
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.http.tls = Some(files.clone());
    let app = TestApp::spawn(&config).await;

    let (head, presented) = get(app.addr, &first, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(presented, first);
    // Plain HTTP to the HTTPS port: told so in plain words.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), plain.read_to_string(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("use https://"), "{answer}");
    }
    let (page, _) = get(app.addr, &first, "/").await;
    assert!(
        page.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{page}"
    );
    assert!(page.contains("__Host-portal_anon="), "{page}");

    // A renewed certificate in the same files, then SIGHUP: new connections get it.
    let (renewed, second) = certificate(dir.path(), "second");
    std::fs::copy(&renewed.cert_file, &files.cert_file).unwrap();
    std::fs::copy(&renewed.key_file, &files.key_file).unwrap();
    let pid = std::process::id().to_string();
    let kill = |signal: &'static str| {
        let pid = pid.clone();
        async move {
            tokio::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .await
                .unwrap()
        }
    };
    assert!(kill("-HUP").await.success());
    tokio::time::timeout(Duration::from_secs(20), hangups.recv())
        .await
        .expect("SIGHUP arrives");
    common::wait_until("the renewed certificate is served", || async {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(second.clone())).unwrap();
        let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        matches!(
            tokio::time::timeout(
                Duration::from_secs(5),
                TlsConnector::from(Arc::new(config)).connect("localhost".try_into().unwrap(), tcp),
            )
            .await,
            Ok(Ok(_))
        )
    })
    .await;
    let (head, presented) = get(app.addr, &second, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(presented, second);

    // A broken renewal (a key that does not go with the certificate) is refused: the running
    // certificate stays.
    let (other, _) = certificate(dir.path(), "third");
    std::fs::copy(&other.key_file, &files.key_file).unwrap();
    let outcomes = app.tls.clone().expect("built-in TLS");
    let failed = |o: &radius_portal::http::tls::CurrentConfig| {
        o.outcomes()
            .failed
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(failed(&outcomes), 0);
    assert!(kill("-HUP").await.success());
    tokio::time::timeout(Duration::from_secs(20), hangups.recv())
        .await
        .expect("SIGHUP arrives");
    // Checked after the portal has tried (and refused) the broken pair, not before.
    common::wait_until("the broken renewal is refused", || {
        let done = failed(&outcomes) == 1;
        async move { done }
    })
    .await;
    let (head, presented) = get(app.addr, &second, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(presented, second);
    app.stop().await;
}

#[tokio::test]
async fn a_missing_unreadable_or_mismatched_pair_stops_start_up_with_a_clear_error() {
    let radius = FreeRadius::start().await;
    let (dir, db) = temp_db();
    let (good, _) = certificate(dir.path(), "good");
    let (other, _) = certificate(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (files, expected) in [
        (
            TlsSettings {
                cert_file: dir.path().join("missing.crt"),
                key_file: good.key_file.clone(),
            },
            "cannot read the certificate file",
        ),
        (
            TlsSettings {
                cert_file: good.cert_file.clone(),
                key_file: dir.path().join("missing.key"),
            },
            "cannot read the private key file",
        ),
        (
            TlsSettings {
                cert_file: garbage.clone(),
                key_file: good.key_file.clone(),
            },
            "holds no PEM certificate",
        ),
        (
            TlsSettings {
                cert_file: good.cert_file.clone(),
                key_file: other.key_file.clone(),
            },
            "does not go with the certificate",
        ),
    ] {
        let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
        config.http.tls = Some(files);
        let site = tempfile::tempdir().unwrap();
        let options = leptos::prelude::LeptosOptions::builder()
            .output_name("radius-portal")
            .site_root(site.path().to_string_lossy().to_string())
            .build();
        let error = match Application::build(&config, options, false).await {
            Ok(_) => panic!("started with a bad pair ({expected})"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(expected), "{expected}: {error}");
    }
}
