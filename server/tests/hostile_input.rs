//! A corpus of hostile requests against the real server: each gets a 4xx with a clear message
//! or a bounded effect — no panic, no RADIUS packet, the server healthy afterwards, and 10 000
//! cookieless visitors leave no web session behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::portal_with_one_server;
use std::net::Ipv4Addr;

#[tokio::test]
async fn hostile_logins_get_clear_4xx_answers_and_send_nothing() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 9, 1));
    let token = browser.form_token("/").await;
    let long_user = "u".repeat(64);
    let long_password = "p".repeat(129);
    // (body, content type, expected status, text the answer must contain)
    let corpus: Vec<(String, &str, u16, &str)> = vec![
        (
            format!("csrf={token}&username={long_user}&password=x"),
            "form",
            400,
            "Username is too long",
        ),
        (
            format!("csrf={token}&username=carol&password={long_password}"),
            "form",
            400,
            "Password is too long",
        ),
        (
            format!("csrf={token}&username=car%00ol&password=x"),
            "form",
            400,
            "control characters",
        ),
        (
            format!("csrf={token}&username=carol&password=a%E2%80%AEb"),
            "form",
            400,
            "text-direction",
        ),
        (
            format!("csrf={token}&username=car%FFol&password=x"),
            "form",
            400,
            "`username` is not valid UTF-8",
        ),
        (
            format!("csrf={token}&username=car"),
            "form",
            400,
            "password",
        ),
        (
            format!("csrf={token}&username=&password="),
            "form",
            400,
            "Username is required",
        ),
        (String::new(), "form", 400, "could not be read"),
        (
            format!("csrf={token}&username=carol&password=x&username=dave"),
            "form",
            400,
            "username",
        ),
        (
            "{\"username\":\"carol\",\"password\":\"carol-pass\"}".into(),
            "json",
            415,
            "application/x-www-form-urlencoded",
        ),
        (
            format!("csrf={token}&username[]=carol&password=x"),
            "form",
            400,
            "could not be read",
        ),
        (
            "csrf=forged&username=carol&password=carol-pass".into(),
            "form",
            403,
            "Forbidden",
        ),
        (
            format!(
                "csrf={token}&username=carol&password={}",
                "x".repeat(20_000)
            ),
            "form",
            413,
            "larger than",
        ),
    ];
    for (body, kind, status, text) in &corpus {
        let content_type = match *kind {
            "json" => "application/json",
            _ => "application/x-www-form-urlencoded",
        };
        let response = browser
            .http
            .post(format!("{}/api/login", browser.base))
            .header("content-type", content_type)
            .header("origin", browser.base.clone())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let got = response.status().as_u16();
        let answer = response.text().await.unwrap();
        assert_eq!(got, *status, "{body:.80}: {answer}");
        assert!(answer.contains(text), "{body:.80}: {answer}");
    }
    // A browser's form over the limit (a pasted file as a password) gets a page saying what
    // happened and what to do, not a bare line of text.
    let response = browser
        .http
        .post(format!("{}/api/login", browser.base))
        .header("accept", "text/html")
        .header("origin", browser.base.clone())
        .form(&[
            ("csrf", token.as_str()),
            ("username", "carol"),
            ("password", &"x".repeat(20_000)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(
        page.contains("<title>Request refused") && page.contains("larger than 16384 bytes"),
        "{page}"
    );
    // A server fn that does not exist gets the server fns' error answer.
    let response = browser
        .http
        .post(format!("{}/api/no_such_fn", browser.base))
        .header("origin", browser.base.clone())
        .header("accept", "application/json")
        .form(&[("x", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let answer: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(answer["error"], "NotFound", "{answer}");
    assert!(
        radius.auth_lines().is_empty(),
        "no Access-Request for any of them"
    );
    let health = reqwest::get(format!("{}/healthz", browser.base))
        .await
        .unwrap();
    assert!(health.status().is_success());
    app.stop().await;
}

#[tokio::test]
async fn static_paths_do_not_escape_the_site_and_visitors_leave_no_trace() {
    let (_radius, app, dir) = portal_with_one_server().await;
    let db = dir.path().join("portal.db");
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    for path in [
        "/pkg/../../Cargo.toml",
        "/pkg/..%2f..%2fCargo.toml",
        "/%2e%2e/%2e%2e/Cargo.toml",
        "/pkg/%2e%2e/%2e%2e/README.md",
        "/..%5c..%5cCargo.toml",
        "/o/../../Cargo.toml",
        "/o/%2e%2e/logo",
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!((400..500).contains(&status), "{path}: {status}");
        // What Cargo.toml and README.md hold (a refused path may get the not-found page).
        assert!(
            !body.contains("[workspace]") && !body.contains("# radius-portal"),
            "{path} served a file outside the site: {body:.200}"
        );
    }

    // `/pkg` serves the build's scripts (cached for good), not what else the build left there.
    let script = http
        .get(format!("{base}/pkg/radius-portal.test.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let declarations = http
        .get(format!("{base}/pkg/radius-portal.d.test.ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(declarations.status(), 404);
    // A script not (yet) deployed here is not cached as missing for a year.
    let missing = http
        .get(format!("{base}/pkg/radius-portal.next-build.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(!missing.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    // A path segment too long for the file system is a 404 like any unknown path, not an
    // error of the portal (which anyone could make fire alerts with).
    let long = "a".repeat(300);
    for path in [
        format!("/{long}"),
        format!("/pkg/{long}.js"),
        format!("/o/{long}"),
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }

    // 10 000 cookieless visitors of the sign-in page: no web session, nothing stored.
    use futures_util::StreamExt;
    // The database file's size, with everything written so far copied into it (the portal
    // checkpoints in its own time).
    let size = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        std::fs::metadata(&db).unwrap().len()
    };
    let size_before = size();
    let visits = futures_util::stream::iter(0..10_000).map(|_| {
        let http = http.clone();
        let url = format!("{base}/");
        async move {
            http.get(url)
                .header("accept", "text/html")
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    });
    let ok = visits
        .buffer_unordered(32)
        .filter(|ok| futures_util::future::ready(*ok))
        .count()
        .await;
    assert_eq!(ok, 10_000);
    // Nor do scanners that accept anything, or failing form posts (their message travels in a
    // signed cookie).
    for _ in 0..200 {
        http.get(format!("{base}/"))
            .header("accept", "*/*")
            .send()
            .await
            .unwrap();
        http.post(format!("{base}/api/form_token"))
            .header("origin", base.clone())
            .send()
            .await
            .unwrap();
        http.post(format!("{base}/api/login"))
            .header("accept", "text/html")
            .header("origin", base.clone())
            .form(&[("username", "carol"), ("password", "x"), ("csrf", "forged")])
            .send()
            .await
            .unwrap();
    }
    assert_eq!(app.storage.web_session_count().await.unwrap(), 0);
    assert!(
        size() <= size_before + 64 * 1024,
        "the database did not grow with the visitors"
    );
    app.stop().await;
}
