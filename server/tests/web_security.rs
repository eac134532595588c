//! Web security behind real proxies: with `public_url` set, the Origin of a form post is
//! checked against it (a proxy that rewrites Host does not break sign-in; a foreign or
//! plain-HTTP origin is refused and sends nothing), the Captive API's URLs come from it and
//! never from a Host header, and an https public URL turns on HSTS and `__Host-` Secure cookies.
//! Anonymous visitors cost no web-session write; the form token rotates at login.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    demo_portal_with_one_server, portal_with_one_server, settings, temp_db, FreeRadius, TestApp,
};
use radius_portal::config::PublicUrl;
use reqwest::StatusCode;
use std::net::Ipv4Addr;

#[tokio::test]
async fn with_a_public_url_the_origin_is_checked_against_it_and_urls_come_from_it() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.http.public_url = Some(PublicUrl::parse("http://portal.example:8080").unwrap());
    let app = TestApp::spawn(&config).await;
    let login = [("username", "carol"), ("password", "carol-pass")];

    // The browser was given portal.example; the proxy rewrote Host to the backend address.
    let browser = app.browser(Ipv4Addr::new(127, 0, 8, 1));
    let token = browser.form_token("/").await;
    let form = [login[0], login[1], ("csrf", token.as_str())];
    let refused = browser
        .http
        .post(format!("{}/api/login", browser.base))
        .header("accept", "text/html")
        .header("origin", browser.base.clone()) // the backend's own origin: not the public one
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // A browser's page: styled by its own inline style, which its policy allows by hash and
    // nothing else; what to do, and a way back to the sign-in page.
    let csp = refused.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let page = refused.text().await.unwrap();
    let style = page
        .split("<style>")
        .nth(1)
        .and_then(|rest| rest.split("</style>").next())
        .unwrap_or_else(|| panic!("an inline style: {page}"));
    use base64::Engine as _;
    use sha2::Digest as _;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(style));
    assert!(
        csp.starts_with("default-src 'none'; ")
            && csp.contains(&format!("style-src 'sha256-{hash}';")),
        "{csp}"
    );
    // The page may have been the portal's own, opened at another address: the way back is
    // the portal's address, not this one's `/` (whose form would be refused again).
    assert!(
        page.contains("Cross-site request refused")
            && page.contains("send it again from there")
            && page.contains("The portal&#39;s address is http://portal.example:8080")
            && page.contains(r#"<a href="http://portal.example:8080/">Go to the sign-in page</a>"#),
        "{page}"
    );
    assert!(
        radius.auth_lines().is_empty(),
        "nothing sent for a refused post"
    );
    for origin in ["https://portal.example:8080", "http://evil.example"] {
        let refused = browser
            .http
            .post(format!("{}/api/login", browser.base))
            .header("origin", origin)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{origin}");
        // A script gets the JSON every error has.
        let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "CrossSite", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m
                .starts_with(radius_portal::http::security::CROSS_SITE_REFUSED)
                && m.contains("The portal's address is http://portal.example:8080")),
            "{body}"
        );
        assert!(
            radius_portal::http::security::CROSS_SITE_REFUSED
                .contains("open the network access portal itself"),
            "it says what to do"
        );
    }
    let page = browser
        .post_raw(
            "/api/login",
            "/",
            &form,
            &[("origin", "http://portal.example:8080")],
        )
        .await;
    assert!(page.body.contains("You are connected"), "{}", page.body);

    // The Captive API names the public URL, whatever Host says.
    let captive = browser
        .http
        .get(format!("{}/captive-portal/api", browser.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let captive: serde_json::Value = serde_json::from_str(&captive).unwrap();
    assert_eq!(
        captive["user-portal-url"],
        "http://portal.example:8080/session"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_https_public_url_sends_hsts_and_host_prefixed_secure_cookies() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.http.public_url = Some(PublicUrl::parse("https://portal.example").unwrap());
    let app = TestApp::spawn(&config).await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/", app.addr))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.contains("portal_anon"))
        .expect("the sign-in page gives the visitor its cookie");
    assert!(cookie.starts_with("__Host-portal_anon="), "{cookie}");
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    // A web-session cookie that names nothing is removed with the attributes a browser needs
    // to remove a `__Host-` cookie.
    let response = reqwest::Client::new()
        .get(format!("http://{}/", app.addr))
        .header("accept", "text/html")
        .header("cookie", "__Host-portal_session=not-an-id")
        .send()
        .await
        .unwrap();
    let removal = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-portal_session="))
        .expect("the cookie is removed");
    for attribute in [
        "Max-Age=0",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(removal.contains(attribute), "{attribute}: {removal}");
    }
    app.stop().await;
}

/// Visitors without a web session cost no database write (their form token is a signature of
/// a cookie); a login creates the web session with a new token, and the old one stops working.
#[tokio::test]
async fn anonymous_visitors_write_nothing_and_the_form_token_rotates_at_login() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let base = format!("http://{}", app.addr);
    let bots = reqwest::Client::new();
    for path in ["/", "/session", "/captive-portal/api", "/o/acme/"] {
        for _ in 0..25 {
            let response = bots
                .get(format!("{base}{path}"))
                .header("accept", "text/html")
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success() || response.status().is_redirection());
        }
    }
    assert_eq!(app.storage.web_session_count().await.unwrap(), 0);

    let browser = app.browser(Ipv4Addr::new(127, 0, 8, 7));
    let anonymous = browser.form_token("/").await;
    assert_eq!(
        anonymous,
        browser.form_token("/").await,
        "stable per browser"
    );
    let other = app.browser(Ipv4Addr::new(127, 0, 8, 8));
    assert_ne!(
        anonymous,
        other.form_token("/").await,
        "bound to the browser's cookie"
    );
    // Another browser's token is refused (nothing sent).
    let page = other
        .post_raw(
            "/api/login",
            "/",
            &[
                ("username", "carol"),
                ("password", "carol-pass"),
                ("csrf", &anonymous),
            ],
            &[],
        )
        .await;
    assert!(!page.body.contains("You are connected"));
    assert!(radius.auth_lines().is_empty());

    // (The refused post's message waits in a web session of that browser: one row.)
    let before = app.storage.web_session_count().await.unwrap();
    let page = browser.login("carol", "carol-pass").await;
    assert!(page.body.contains("You are connected"), "{}", page.body);
    assert_eq!(
        app.storage.web_session_count().await.unwrap(),
        before + 1,
        "the login made the web session"
    );
    let rotated = browser.form_token("/session").await;
    assert_ne!(rotated, anonymous, "a new token at login");
    let stale = browser
        .http
        .post(format!("{base}/api/refresh"))
        .header("origin", base.clone())
        .form(&[("csrf", anonymous.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::FORBIDDEN);
    app.stop().await;
}

/// Requests a server fn cannot read are the caller's 400 naming the field, not a 500; bodies
/// over the limit are 413; neither sends anything.
#[tokio::test]
async fn unreadable_and_oversized_requests_are_the_callers_errors() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 8, 9));
    let token = browser.form_token("/").await;
    let post = |body: String| {
        browser
            .http
            .post(format!("{}/api/login", browser.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", browser.base.clone())
            .body(body)
            .send()
    };
    let missing = post(format!("csrf={token}&password=x")).await.unwrap();
    let status = missing.status();
    let headers = format!("{:?}", missing.headers());
    let text = missing.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{headers} {text}");
    assert!(text.contains("username"), "names the field: {text}");
    let huge = post(format!(
        "csrf={token}&username=carol&password={}",
        "x".repeat(20_000)
    ))
    .await
    .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = serde_json::from_str(&huge.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "TooLarge", "{body}");
    // A chunked body is counted as it arrives: over the limit it is the same 413; a chunk size
    // that is no number is a malformed request (400), not a large one.
    let raw = |body: String| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = "POST /api/login HTTP/1.1\r\nHost: portal.example\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream
            .write_all(format!("{head}{body}").as_bytes())
            .await
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&answer[..n]).to_string()
    };
    let chunk = "x".repeat(20_000);
    let answer = raw(format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len())).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw("zz\r\n\r\n".into()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("BadBody"), "{answer}");
    // A key of the caller's choosing is never repeated back as the portal's words.
    let crafted = post(format!(
        "csrf={token}&username=x&password=y&Your+account+is+locked.+Call+0800-555&Your+account+is+locked.+Call+0800-555=2"
    ))
    .await
    .unwrap();
    assert_eq!(crafted.status(), StatusCode::BAD_REQUEST);
    let text = crafted.text().await.unwrap();
    assert!(!text.contains("0800"), "{text}");
    // Bytes that are not text are the caller's 400 too, not the server's 500.
    let binary = browser
        .http
        .post(format!("{}/api/login", browser.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", browser.base.clone())
        .body(vec![b'u', b'=', 0xff, 0xfe, 0xfd])
        .send()
        .await
        .unwrap();
    assert_eq!(binary.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = serde_json::from_str(&binary.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "InvalidInput", "{body}");
    // So are percent-escapes of bytes that are not UTF-8: the field is named, nothing is sent
    // (decoded leniently, they would reach RADIUS as U+FFFD).
    for (body, field) in [
        (
            format!("csrf={token}&username=carol&password=a%C3%28"),
            "password",
        ),
        (
            format!("csrf={token}&username=car%FFol&password=carol-pass"),
            "username",
        ),
    ] {
        let refused = post(body).await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(
            (body["error"].as_str(), body["field"].as_str()),
            (Some("InvalidInput"), Some(field)),
            "{body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains("UTF-8"),
            "{body}"
        );
    }
    // A body that is not a form is refused for its type, whatever it holds.
    for content_type in ["text/plain", "application/json"] {
        let refused = browser
            .http
            .post(format!("{}/api/login", browser.base))
            .header("content-type", content_type)
            .header("origin", browser.base.clone())
            .body(format!("csrf={token}&username=carol&password=carol-pass"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
        let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "UnsupportedMediaType", "{body}");
    }
    // An organization that does not exist is the `org` field's error.
    let unknown = post(format!(
        "csrf={token}&username=carol&password=carol-pass&org=nope"
    ))
    .await
    .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = serde_json::from_str(&unknown.text().await.unwrap()).unwrap();
    assert_eq!(body["field"], "org", "{body}");
    // No server fn, or no organization, at the path: 404, whatever the method.
    for path in ["/api/nope", "/o/nope/api/login", "/o/nope/"] {
        let missing = browser
            .http
            .post(format!("{}{path}", browser.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", browser.base.clone())
            .body(format!("csrf={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{path}");
    }
    for path in ["/api/nope", "/o/nope/api/login"] {
        let missing = browser
            .http
            .get(format!("{}{path}", browser.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "GET {path}");
    }
    // A script caller gets every error as JSON: a path with nothing there, a method an address
    // does not take (black-box tester U's D1: the not-found page's HTML, an empty 405).
    for (method, path, status, kind) in [
        ("GET", "/nonexistent", StatusCode::NOT_FOUND, "NotFound"),
        ("GET", "/o/nope/session", StatusCode::NOT_FOUND, "NotFound"),
        ("GET", "/pkg/missing.js", StatusCode::NOT_FOUND, "NotFound"),
        ("GET", "/pkg/missing", StatusCode::NOT_FOUND, "NotFound"),
        (
            "POST",
            "/pkg/app.js",
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            "GET",
            "/o/acme/nonexistent",
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            "DELETE",
            "/session",
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            "PUT",
            "/healthz",
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            "DELETE",
            "/api/login",
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
    ] {
        let refused = browser
            .http
            .request(method.parse().unwrap(), format!("{}{path}", browser.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), status, "{method} {path}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(refused.headers().contains_key("allow"), "{method} {path}");
        }
        let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], kind, "{method} {path}: {body}");
    }
    assert!(radius.auth_lines().is_empty(), "nothing sent");
    let healthy = reqwest::get(format!("{}/healthz", browser.base))
        .await
        .unwrap();
    assert!(healthy.status().is_success());
    // Every answer names its request id (ours, never the caller's).
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .get(format!("{}/healthz", browser.base))
            .header("x-request-id", "chosen-by-the-client")
            .send()
            .await
            .unwrap();
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    assert_ne!(ids[0], ids[1]);
    app.stop().await;
}

/// A client that sends its request headers a byte at a time, or never finishes them, is cut
/// off after the header deadline; one address cannot hold more than its share of connections.
#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_per_client_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_radius, app, _dir) = portal_with_one_server().await;
    let connect_from = |ip: Ipv4Addr| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((ip, 0).into()).unwrap();
        socket.connect(app.addr).await.unwrap()
    };

    // Closed by the portal (bounded by a generous deadline so a failure is a message, not a hang).
    let closed_by_portal = |mut stream: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 512];
        let mut received = Vec::new();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        (
            closed == Ok(true),
            String::from_utf8_lossy(&received).to_string(),
        )
    };
    let mut slow = connect_from(Ipv4Addr::new(127, 0, 10, 1)).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let silent = connect_from(Ipv4Addr::new(127, 0, 10, 1)).await;
    let mut h2 = connect_from(Ipv4Addr::new(127, 0, 10, 1)).await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let (slow, silent, h2) = tokio::join!(
        closed_by_portal(slow),
        closed_by_portal(silent),
        closed_by_portal(h2)
    );
    assert!(slow.0, "an unfinished request is not kept open");
    assert!(silent.0, "a connection that sends nothing is not kept open");
    assert!(h2.0, "HTTP/2 prior knowledge is not spoken: {}", h2.1);
    assert!(
        h2.1.is_empty() || h2.1.starts_with("HTTP/1.1 4") || h2.1.starts_with("HTTP/1.1 505"),
        "{}",
        h2.1
    );

    // A body trickled in is cut off: 408, with a JSON error for a script.
    let mut trickle = connect_from(Ipv4Addr::new(127, 0, 10, 4)).await;
    trickle
        .write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nusername=")
        .await
        .unwrap();
    let (closed, answer) = closed_by_portal(trickle).await;
    assert!(closed, "a trickled body is not waited for forever");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"TooSlow""#), "{answer}");
    // A body announced as too large is refused at once, not waited for.
    let mut announced = connect_from(Ipv4Addr::new(127, 0, 10, 5)).await;
    announced
        .write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 99999999\r\n\r\n")
        .await
        .unwrap();
    let (_, answer) = closed_by_portal(announced).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let mut held = Vec::new();
    for _ in 0..radius_portal::http::serve::MAX_CONNECTIONS_PER_CLIENT {
        held.push(connect_from(Ipv4Addr::new(127, 0, 10, 2)).await);
    }
    let mut extra = connect_from(Ipv4Addr::new(127, 0, 10, 2)).await;
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer).await;
    assert!(
        answer.is_empty(),
        "the connection over the cap is closed at once"
    );
    // Another address is served meanwhile.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 10, 3)).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    other.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(held);

    // A Host that is missing (HTTP/1.1), repeated or not a host is a 400 (the portal builds
    // URLs from it when no public_url is set: the Captive API's, for one).
    for head in [
        "GET /captive-portal/api HTTP/1.1\r\nHost: evil.example:1/x?y#z\r\n",
        "GET /captive-portal/api HTTP/1.1\r\nHost: a@b\r\n",
        "GET /captive-portal/api HTTP/1.1\r\nHost: \r\n",
        "GET /captive-portal/api HTTP/1.1\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n",
    ] {
        let mut client = connect_from(Ipv4Addr::new(127, 0, 10, 4)).await;
        client
            .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?}: {answer}");
        assert!(!answer.contains("evil"), "{answer}");
    }
    // A head larger than the portal reads is refused without reading on (431).
    let mut client = connect_from(Ipv4Addr::new(127, 0, 10, 4)).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
        "f".repeat(2 * radius_portal::http::serve::MAX_HEAD_BYTES)
    );
    let _ = client.write_all(big.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The probes do not look at it (a load balancer's check may send none).
    let mut client = connect_from(Ipv4Addr::new(127, 0, 10, 4)).await;
    client
        .write_all(b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // HTTP/1.0 needs none.
    let mut client = connect_from(Ipv4Addr::new(127, 0, 10, 4)).await;
    client
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The captive-portal API names the portal's URLs: without a Host (and no public_url) it
    // has no host to name, and says so rather than inventing one.
    let mut client = connect_from(Ipv4Addr::new(127, 0, 10, 4)).await;
    client
        .write_all(b"GET /captive-portal/api HTTP/1.0\r\nAccept: application/captive+json\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert!(
        answer.contains("BadHost") && !answer.contains("localhost"),
        "{answer}"
    );
    app.stop().await;
}

/// One signed-in browser opening live stream after stream (a code review's M1: each held a
/// connection for as long as the session runs, until none was left for anyone's pages) holds
/// at most `STREAMS_PER_SESSION`: the next is refused (429, its page polls instead), another
/// session's stream is still served, and a stream closed gives its place back.
#[tokio::test]
async fn one_session_holds_a_bounded_number_of_live_streams() {
    use radius_portal::http::live::STREAMS_PER_SESSION;
    let (_radius, app, _dir) = portal_with_one_server().await;
    let open = |b: &common::Browser| {
        let request = b.http.get(format!("{}/session/events", b.base));
        async move { request.send().await.unwrap() }
    };
    let first_event = |mut stream: reqwest::Response| async move {
        let chunk = stream.chunk().await.unwrap().expect("an event");
        (String::from_utf8_lossy(&chunk).to_string(), stream)
    };
    let browser = app.browser(Ipv4Addr::new(127, 0, 11, 1));
    browser.login("carol", "carol-pass").await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS_PER_SESSION {
        let stream = open(&browser).await;
        assert_eq!(stream.status(), StatusCode::OK);
        let (event, stream) = first_event(stream).await;
        assert!(event.contains(r#"data: {"Active""#), "{event}");
        streams.push(stream);
    }
    let refused = open(&browser).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "15");
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let text = refused.text().await.unwrap();
    assert!(text.contains("too many live streams"), "{text}");

    let other = app.browser(Ipv4Addr::new(127, 0, 11, 2));
    other.login("alice", "alice-pass").await;
    let (event, _other_stream) = first_event(open(&other).await).await;
    assert!(event.contains(r#"data: {"Active""#), "{event}");

    // A stream its client closed gives its place back (once the portal sees the connection
    // gone: at once, or at the next keep-alive comment).
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let stream = open(&browser).await;
        if stream.status() == StatusCode::OK {
            break;
        }
        assert_eq!(stream.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream's place came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// Pages are answered whole (their length is known; no chunked stream), each with a fresh
/// nonce in its Content-Security-Policy that every script of the page carries, and with the
/// security headers; a path that is neither a page nor a file gets the not-found page (404)
/// the same way.
#[tokio::test]
async fn pages_are_whole_with_their_csp_nonce_and_unknown_paths_get_the_not_found_page() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 8, 9));
    assert_eq!(browser.login("alice", "alice-pass").await.path, "/session");
    // The sign-in page as a browser without a session gets it (a signed-in one is sent on to
    // its session).
    let anonymous = app.browser(Ipv4Addr::new(127, 0, 8, 10));
    let mut nonces = std::collections::HashSet::new();
    for (path, status, text) in [
        ("/session", 200, "alice"),
        ("/", 200, "name=\"password\""),
        ("/no/such/page", 404, "Page not found"),
        ("/o/acme/missing.txt", 404, "Page not found"),
        // Its way back is the sign-in page of the portal the path was under.
        (
            "/o/acme/missing.txt",
            404,
            r#"href="/o/acme/" class="text-blue-800 underline">Go to"#,
        ),
        (
            "/no/such/page",
            404,
            r#"href="/" class="text-blue-800 underline">Go to"#,
        ),
        // Not a page either (the app's router alone would take it for `/session`).
        ("/session/", 404, "Page not found"),
        // Each page says in its title what it is (tabs, screen readers).
        (
            "/session",
            200,
            "<title>Your session – Acme Test Org – Network access portal</title>",
        ),
        (
            "/",
            200,
            "<title>Sign in – Acme Test Org – Network access portal</title>",
        ),
        (
            "/nowhere",
            404,
            "<title>Page not found – Network access portal</title>",
        ),
        // A portal that does not exist: not the default organization's either.
        (
            "/o/nobody/session",
            404,
            "<title>Page not found – Network access portal</title>",
        ),
    ] {
        let client = if path == "/" { &anonymous } else { &browser };
        let response = client
            .http
            .get(format!("{}{path}", client.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(response.url().path(), path, "not redirected");
        let headers = response.headers().clone();
        assert!(
            headers.get("transfer-encoding").is_none(),
            "{path}: {headers:?}"
        );
        let length: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_else(|| panic!("{path}: no nonce in {csp}"))
            .to_string();
        let body = response.text().await.unwrap();
        assert_eq!(body.len(), length, "{path}");
        assert!(body.contains(text), "{path}: {body}");
        assert!(!body.contains("DEMO MODE"), "{path}: not a demo");
        let scripts: Vec<&str> = body.split("<script").skip(1).collect();
        for script in &scripts {
            let (tag, content) = script.split_once('>').unwrap_or((script, ""));
            let content = content.split("</script>").next().unwrap_or("");
            // Each has the nonce, but for the sign-in page's own, allowed by its hash.
            let by_hash = content == app::pages::login::SIGN_IN_SCRIPT
                && csp.contains(&format!("'{}'", app::SIGN_IN_SCRIPT_HASH));
            assert!(
                by_hash || tag.contains(&format!("nonce=\"{nonce}\"")),
                "{path}: <script{tag}>"
            );
        }
        // The nonce appears only where the browser hides it (`nonce` attributes).
        assert_eq!(
            body.matches(nonce.as_str()).count(),
            body.matches(&format!("nonce=\"{nonce}\"")).count(),
            "{path}: the nonce elsewhere: {body}"
        );
        if path == "/session" {
            assert!(
                !scripts.is_empty(),
                "the session page loads its island: {body}"
            );
            // Its script loads the WASM: no preload links, which a browser without JavaScript
            // would download for nothing.
            assert!(!body.contains("preload"), "{body}");
        }
        assert!(nonces.insert(nonce), "{path}: a nonce was used twice");
    }
    // The icon every page links is cached for a day and sets no cookie.
    let icon = reqwest::get(format!("{}/favicon.svg", browser.base))
        .await
        .unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["cache-control"], "public, max-age=86400");
    assert!(icon.headers().get("set-cookie").is_none());
    // Nor does it with a malformed web-session cookie: a removal of it on an answer caches may
    // keep (`public`) would be handed to every user (the web review of session 83, F1).
    let client = reqwest::Client::new();
    for path in ["/favicon.svg", "/brand.css", "/pkg/missing.js"] {
        let asset = client
            .get(format!("{}{path}", browser.base))
            .header("cookie", "portal_session=not-an-id")
            .send()
            .await
            .unwrap();
        assert!(
            asset.headers().get("set-cookie").is_none(),
            "{path}: {:?}",
            asset.headers()
        );
    }
    // The old name leads to it (browsers and captive assistants that ask for it).
    let old_name = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/favicon.ico", browser.base))
        .send()
        .await
        .unwrap();
    assert!(old_name.status().is_redirection(), "{}", old_name.status());
    assert_eq!(old_name.headers()["location"], "/favicon.svg");
    assert!(old_name.headers().get("set-cookie").is_none());
    // Without a session the session page sends any caller to the sign-in page.
    let script = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for accept in ["*/*", "text/html"] {
        let response = script
            .get(format!("{}/session", browser.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{accept}");
        assert_eq!(response.headers()["location"], "/", "{accept}");
    }
    // A server fn's address opened in a browser (a bookmark; the address bar after a post the
    // portal, down, never answered): the page that says where things stand, not a blank 405
    // (black-box tester U's D2); a script's GET is a 405 naming the method.
    for (path, to) in [
        ("/api/login", "/"),
        ("/api/refresh", "/session"),
        ("/api/disconnect", "/session"),
        ("/o/acme/api/disconnect", "/o/acme/session"),
    ] {
        let page = script
            .get(format!("{}{path}", browser.base))
            .header("accept", "text/html,application/xhtml+xml")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(page.headers()["location"], to, "{path}");
        let api = script
            .get(format!("{}{path}", browser.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(api.headers()["allow"], "POST", "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn answers_are_compressed_for_clients_that_ask_and_plain_for_the_rest() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 8, 10));
    assert_eq!(browser.login("alice", "alice-pass").await.path, "/session");
    let get = |path: &'static str, encoding: Option<&'static str>| {
        let mut request = browser
            .http
            .get(format!("{}{path}", browser.base))
            .header("accept", "text/html");
        if let Some(encoding) = encoding {
            request = request.header("accept-encoding", encoding);
        }
        async move {
            let response = request.send().await.unwrap();
            let headers = response.headers().clone();
            (headers, response.bytes().await.unwrap().to_vec())
        }
    };
    for path in ["/session", "/"] {
        let (plain_headers, plain) = get(path, None).await;
        assert!(
            plain_headers.get("content-encoding").is_none(),
            "{path}: {plain_headers:?}"
        );
        // A cache must not hand this plain copy to a client that asks for a compressed one.
        assert_eq!(plain_headers["vary"], "accept-encoding", "{path}");
        assert!(
            String::from_utf8_lossy(&plain).contains("</html>"),
            "{path}"
        );

        let (headers, gzipped) = get(path, Some("gzip")).await;
        assert_eq!(headers["content-encoding"], "gzip", "{path}: {headers:?}");
        assert_eq!(headers["vary"], "accept-encoding", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        let mut html = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(gzipped.as_slice()),
            &mut html,
        )
        .unwrap();
        assert!(html.contains("</html>"), "{path}: {html}");
        // Compressed (a small page with a random token and nonce shrinks less than half).
        assert!(
            gzipped.len() < html.len() * 3 / 4,
            "{path}: {} bytes of {}",
            gzipped.len(),
            html.len()
        );

        let (headers, _) = get(path, Some("br;q=1.0, gzip;q=0.5")).await;
        assert_eq!(headers["content-encoding"], "br", "{path}: {headers:?}");
        // `identity` alone: asked, but nothing to compress with.
        let (headers, body) = get(path, Some("identity")).await;
        assert!(
            headers.get("content-encoding").is_none(),
            "{path}: {headers:?}"
        );
        assert!(String::from_utf8_lossy(&body).contains("</html>"), "{path}");
    }
    app.stop().await;
}

/// The web session's cookie, by hand (no cookie store): set at login with its attributes and
/// expiry, not sent again while the session is unchanged, removed with the same attributes at
/// sign-out, and removed when it names no session or is not an id at all.
#[tokio::test]
async fn the_web_session_cookie_is_set_at_login_and_removed_when_it_names_nothing() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let base = format!("http://{}", app.addr);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 8, 11)))
        .build()
        .unwrap();
    let set_cookies = |response: &reqwest::Response| -> Vec<String> {
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    let token_in = |body: &str| {
        let marker = "name=\"csrf\" value=\"";
        let start = body.find(marker).expect("a form token") + marker.len();
        body[start..].split('"').next().unwrap().to_string()
    };
    let get = |path: &'static str, cookie: String| {
        client
            .get(format!("{base}{path}"))
            .header("accept", "text/html")
            .header("cookie", cookie)
            .send()
    };
    let post = |path: &'static str, cookie: String, form: Vec<(&'static str, String)>| {
        client
            .post(format!("{base}{path}"))
            .header("accept", "text/html")
            .header("origin", base.clone())
            .header("cookie", cookie)
            .form(&form)
            .send()
    };

    // Signs in with the form token of the sign-in page shown to the visitor `anon`.
    let sign_in = |anon: String| {
        let (get, post, token_in) = (&get, &post, &token_in);
        async move {
            let page = get("/", anon.clone()).await.unwrap();
            let token = token_in(&page.text().await.unwrap());
            post(
                "/api/login",
                anon,
                vec![
                    ("username", "alice".into()),
                    ("password", "alice-pass".into()),
                    ("csrf", token),
                ],
            )
            .await
            .unwrap()
        }
    };

    let first = get("/", String::new()).await.unwrap();
    let anon = set_cookies(&first)
        .into_iter()
        .find(|c| c.starts_with("portal_anon="))
        .unwrap();
    let anon = anon.split(';').next().unwrap().to_string();
    let login = sign_in(anon.clone()).await;
    assert_eq!(login.status(), StatusCode::FOUND);
    assert_eq!(
        login.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert!(
        login.headers().get("content-type").is_none(),
        "a redirect without a body has no content type: {:?}",
        login.headers()
    );
    let cookies = set_cookies(&login);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("portal_session="))
        .unwrap_or_else(|| panic!("the login sets the web session's cookie: {cookies:?}"));
    // A day beyond the session's window (alice's 30 s: its Session-Timeout).
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=86430"] {
        assert!(session.contains(attribute), "{attribute}: {session}");
    }
    assert!(!session.contains("Secure"), "plain HTTP: {session}");
    let session = session.split(';').next().unwrap().to_string();
    let both = format!("{anon}; {session}");

    let page = get("/session", both.clone()).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        set_cookies(&page).is_empty(),
        "an unchanged session is not sent again: {:?}",
        set_cookies(&page)
    );
    let token = token_in(&page.text().await.unwrap());

    // Signing in again from a signed-in browser rotates the web session's id (no fixation):
    // the old id names nothing any more.
    let again = post(
        "/api/login",
        both.clone(),
        vec![
            ("username", "alice".into()),
            ("password", "alice-pass".into()),
            ("csrf", token),
        ],
    )
    .await
    .unwrap();
    assert_eq!(again.status(), StatusCode::FOUND);
    let rotated = set_cookies(&again)
        .into_iter()
        .find(|c| c.starts_with("portal_session="))
        .expect("a new web-session cookie");
    let rotated = rotated.split(';').next().unwrap().to_string();
    assert_ne!(rotated, session, "a new id at login");
    let old = get("/session", both.clone()).await.unwrap();
    assert_eq!(old.status(), StatusCode::FOUND, "the old id is signed out");
    let both = format!("{anon}; {rotated}");
    let page = get("/session", both.clone()).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let token = token_in(&page.text().await.unwrap());
    let signed_out = post("/api/disconnect", both.clone(), vec![("csrf", token)])
        .await
        .unwrap();
    assert_eq!(signed_out.status(), StatusCode::FOUND);
    let removal = set_cookies(&signed_out)
        .into_iter()
        .find(|c| c.starts_with("portal_session="))
        .expect("sign-out removes the web session's cookie");
    assert!(removal.starts_with("portal_session=;"), "{removal}");
    for attribute in ["Max-Age=0", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(removal.contains(attribute), "{attribute}: {removal}");
    }

    // The old id names nothing any more; a value that is no id at all names nothing either.
    for cookie in [both, format!("{anon}; portal_session=not-an-id")] {
        let page = get("/", cookie.clone()).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(
            set_cookies(&page)
                .iter()
                .any(|c| c.starts_with("portal_session=;") && c.contains("Max-Age=0")),
            "{cookie}: {:?}",
            set_cookies(&page)
        );
    }
    assert_eq!(app.storage.web_session_count().await.unwrap(), 0);

    // Signed in again: another application's cookie with a value that is not ASCII hides
    // nothing of ours; two session cookies (one planted) name no session and remove neither.
    let login = sign_in(anon.clone()).await;
    let session = set_cookies(&login)
        .into_iter()
        .find(|c| c.starts_with("portal_session="))
        .unwrap();
    let session = session.split(';').next().unwrap().to_string();
    let mut with_other = b"other=caf".to_vec();
    with_other.extend_from_slice("\u{e9}".as_bytes());
    with_other.extend_from_slice(format!("; {anon}; {session}").as_bytes());
    let page = client
        .get(format!("{base}/session"))
        .header("accept", "text/html")
        .header(
            "cookie",
            reqwest::header::HeaderValue::from_bytes(&with_other).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK, "still signed in");
    let page = get(
        "/session",
        format!("{anon}; portal_session=planted; {session}"),
    )
    .await
    .unwrap();
    assert_eq!(
        page.status(),
        StatusCode::FOUND,
        "no session with two cookies"
    );
    assert!(set_cookies(&page)
        .iter()
        .all(|c| !c.starts_with("portal_session=")));
    assert_eq!(
        get("/session", format!("{anon}; {session}"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
async fn demo_mode_is_labelled_on_every_page_the_not_found_page_included() {
    let (_radius, app, _dir) = demo_portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 8, 10));
    for (path, status) in [("/", 200), ("/o/acme/", 200), ("/no/such/page", 404)] {
        let page = browser.get(path).await;
        assert_eq!(page.status, status, "{path}");
        assert!(page.body.contains("DEMO MODE"), "{path}: {}", page.body);
    }
    assert_eq!(browser.login("carol", "carol-pass").await.path, "/session");
    assert!(browser.get("/session").await.body.contains("DEMO MODE"));
    // The refusal pages answered before any page runs: a body too large, a cross-site form.
    let too_large = browser
        .http
        .post(format!("{}/api/login", browser.base))
        .header("accept", "text/html")
        .form(&[("username", "x".repeat(20_000).as_str()), ("password", "p")])
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let page = too_large.text().await.unwrap();
    assert!(
        page.contains("Your request was refused") && page.contains("DEMO MODE"),
        "{page}"
    );
    let cross_site = browser
        .http
        .post(format!("{}/api/login", browser.base))
        .header("accept", "text/html")
        .header("origin", "http://evil.example")
        .form(&[("username", "carol"), ("password", "p")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    assert!(cross_site.text().await.unwrap().contains("DEMO MODE"));
}

/// The sign-in page is the same for every visitor but for its form token (the page is kept
/// per organization and only the token is put in); each answer has its own CSP nonce, and a
/// change of the organization (disabled) shows at once.
#[tokio::test]
async fn every_visitor_gets_the_sign_in_page_with_its_own_token_and_nonce() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let mut seen = Vec::new();
    for last in 1..=3u8 {
        let browser = app.browser(Ipv4Addr::new(127, 0, 8, 40 + last));
        let response = browser
            .http
            .get(format!("{}/", browser.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        let body = response.text().await.unwrap();
        let token = browser.form_token("/").await;
        assert!(
            body.contains(&token),
            "the page carries the visitor's own token"
        );
        assert_eq!(body.matches("name=\"csrf\"").count(), 1);
        seen.push((token.clone(), csp, body.replace(&token, "TOKEN")));
        // The token of the page works.
        let page = browser.login("bob", "bob-pass").await;
        assert_eq!(page.path, "/session", "{}", page.body);
    }
    let (first, rest) = seen.split_first().unwrap();
    for other in rest {
        assert_ne!(first.0, other.0, "each visitor has its own token");
        assert_ne!(first.1, other.1, "each answer has its own nonce");
        assert_eq!(first.2, other.2, "the page is the same but for the token");
    }
    // The organization at its own prefix is another kept page, whose links stay under it;
    // the page at `/` is still the one for `/`.
    for _ in 0..2 {
        let scoped = app
            .browser(Ipv4Addr::new(127, 0, 8, 45))
            .get("/o/acme/")
            .await;
        assert!(
            scoped.body.contains("href=\"/o/acme/session\""),
            "{}",
            scoped.body
        );
        let root = app.browser(Ipv4Addr::new(127, 0, 8, 46)).get("/").await;
        assert!(root.body.contains("href=\"/session\""), "{}", root.body);
        assert!(!root.body.contains("/o/acme/"), "{}", root.body);
    }
    app.set_organization_active("acme", false).await;
    let page = app.browser(Ipv4Addr::new(127, 0, 8, 50)).get("/").await;
    assert!(page.body.contains("has been disabled"), "{}", page.body);
    app.stop().await;
}

/// Requests anyone can repeat at will — a sign-in with a forged form token, a cross-site post —
/// are refused each time but logged once per few seconds (with how many were left out), so a
/// flood of them cannot fill the disk or bury the lines that matter.
#[tokio::test]
async fn a_flood_of_refused_requests_writes_a_few_log_lines() {
    // No RADIUS server listens there: nothing of the flood may reach it anyway.
    let (dir, _db, base, config) =
        common::process_config("", "", (common::free_port(), common::free_port()), "");
    let log_path = dir.path().join("portal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let portal = common::PortalProcess::start_logging(&config, &base, log).await;
    let http = reqwest::Client::new();
    const FLOOD: usize = 200;
    let started = std::time::Instant::now();
    for i in 0..FLOOD {
        let forged = http
            .post(format!("{base}/api/login"))
            .form(&[
                ("username", "victim"),
                ("password", "x"),
                ("csrf", &format!("forged-{i}")),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
        let cross_site = http
            .post(format!("{base}/api/login"))
            .header("origin", "https://evil.example")
            .form(&[("username", "victim"), ("password", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    }
    // However slow this machine was: the first of each, then at most one per 5 s period.
    let most = started.elapsed().as_secs() as usize / 5 + 1;
    let lines = |text: &str, needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    common::wait_until("the first refusals to be logged", || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        lines(&text, "without a valid form token refused") > 0
            && lines(&text, "cross-site request refused") > 0
    })
    .await;
    portal.kill_9();
    let text = std::fs::read_to_string(&log_path).unwrap();
    for needle in [
        "without a valid form token refused",
        "cross-site request refused",
    ] {
        let written = lines(&text, needle);
        assert!(
            (1..=most).contains(&written),
            "{written} lines for {FLOOD} requests ({needle}), at most {most} expected:\n{text}"
        );
    }
}
