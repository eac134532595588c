//! The admin REST API: bearer tokens (401 without detail), organizations (the guard's CRUD
//! rules: a disabled organization may only change its active flag, also not together with
//! re-enabling), sessions (terminate → Stop Admin-Reset), the audit log, no secret in any
//! answer, a body limit, and the OpenAPI document held against the routes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{field, settings, temp_db, wait_until, FreeRadius, TestApp, SECRET};
use radius_portal::{
    config::{AdminToken, OrganizationSettings, Settings},
    http::admin::hash_token,
    storage::OrganizationWrite,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};

const TOKEN: &str = "s3cret-admin-token";

fn with_admin(db: &std::path::Path, a: &FreeRadius, b: &FreeRadius) -> Settings {
    let mut settings = settings(db, vec![a.server_settings("a-primary", true)]);
    let mut beta: OrganizationSettings = settings.organizations[0].clone();
    beta.id = "beta".into();
    beta.name = "Beta Org".into();
    beta.servers = vec![b.server_settings("b-primary", true)];
    settings.organizations.push(beta);
    settings.admin.tokens.push(AdminToken {
        name: "ops".into(),
        sha256: hash_token(TOKEN),
    });
    settings.validate().unwrap();
    settings
}

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let mut request = self
            .http
            .request(method, format!("{}/admin/api/v1{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.call(method, path, Some(TOKEN), body).await;
        assert!(status.is_success(), "{status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// An enable of an organization the configuration file says `enabled = false` of is answered
/// with a warning that the next start disables it again, and stops its sessions (black-box
/// tester M's D3).
#[tokio::test]
async fn an_enable_the_file_undoes_at_the_next_start_is_answered_with_a_warning() {
    let (a, b) = (FreeRadius::start().await, FreeRadius::start().await);
    let (_dir, db) = temp_db();
    let mut settings = with_admin(&db, &a, &b);
    settings.organizations[1].enabled = Some(false);
    let app = TestApp::spawn(&settings).await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: format!("http://{}", app.addr),
    };
    let enable = json!({ "is_active": true });
    let beta = admin
        .ok(Method::PATCH, "/organizations/beta", Some(enable.clone()))
        .await;
    assert_eq!(beta["active"], true, "{beta}");
    let warnings = beta["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap_or_default()
            .contains("says `enabled = false` for organization `beta`")),
        "{beta}"
    );
    let acme = admin
        .ok(Method::PATCH, "/organizations/acme", Some(enable))
        .await;
    assert!(acme.get("warnings").is_none(), "{acme}");
}

/// A disable of an organization the configuration file says `enabled = true` of (applied at
/// every start) is answered with a warning that the next start enables it again; another
/// organization's disable has no `warnings`.
#[tokio::test]
async fn a_disable_the_file_undoes_at_the_next_start_is_answered_with_a_warning() {
    let (a, b) = (FreeRadius::start().await, FreeRadius::start().await);
    let (_dir, db) = temp_db();
    let mut settings = with_admin(&db, &a, &b);
    settings.organizations[1].enabled = Some(true);
    let app = TestApp::spawn(&settings).await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: format!("http://{}", app.addr),
    };
    let disable = json!({ "is_active": false });
    let beta = admin
        .ok(Method::PATCH, "/organizations/beta", Some(disable.clone()))
        .await;
    assert_eq!(beta["active"], false, "{beta}");
    let warnings = beta["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap_or_default()
            .contains("says `enabled = true` for organization `beta`")),
        "{beta}"
    );
    let acme = admin
        .ok(Method::PATCH, "/organizations/acme", Some(disable))
        .await;
    assert_eq!(acme["active"], false, "{acme}");
    assert!(acme.get("warnings").is_none(), "{acme}");
    // An id that names nothing is named back, but not all 5,000 characters of it.
    let long = "x".repeat(5000);
    let (status, text) = admin
        .call(
            Method::PATCH,
            &format!("/organizations/{long}"),
            Some(TOKEN),
            Some(json!({ "is_active": true })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains(&format!("{}…", "x".repeat(64))), "{text}");
    assert!(text.len() < 200, "{text}");
    app.stop().await;
}

/// A token holder's write whose body never arrives in full is answered 408 when the body
/// deadline passes (as every body the portal reads), the connection closed: not held open, or
/// a graceful shutdown waiting on it, for good. Nothing is changed.
#[tokio::test]
async fn a_write_whose_body_never_arrives_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = (FreeRadius::start().await, FreeRadius::start().await);
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&with_admin(&db, &a, &b)).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "PATCH /admin/api/v1/organizations/beta HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "the connection is closed: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("did not arrive within 10 seconds"),
        "{answer}"
    );
    let beta = app.storage.organization("beta").await.unwrap().unwrap();
    assert_eq!(beta.name, "Beta Org", "unchanged");
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_follows_the_guard_and_never_shows_secrets() {
    let (a, b) = (FreeRadius::start().await, FreeRadius::start().await);
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&with_admin(&db, &a, &b)).await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: format!("http://{}", app.addr),
    };
    let ip = |n| IpAddr::V4(Ipv4Addr::new(127, 0, 6, n));

    // 401 without detail for no token, a wrong one, a malformed header — whatever the path
    // and method (no route is revealed to a caller without a token).
    for token in [None, Some("wrong"), Some("")] {
        for (method, path) in [
            (Method::GET, "/organizations"),
            (Method::GET, "/no-such-endpoint"),
            (Method::PUT, "/organizations"),
            (Method::DELETE, "/audit"),
        ] {
            let (status, text) = admin.call(method.clone(), path, token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(text, r#"{"error":"unauthorized"}"#);
        }
    }
    let (status, _) = admin
        .call(Method::PUT, "/organizations", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "with a token");
    // Two Authorization headers are no credentials, whichever comes first.
    for pair in [[TOKEN, "wrong"], ["wrong", TOKEN]] {
        let response = admin
            .http
            .get(format!("{}/admin/api/v1/organizations", admin.base))
            .header("authorization", format!("Bearer {}", pair[0]))
            .header("authorization", format!("Bearer {}", pair[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{pair:?}");
    }
    // A key given twice is refused, not read as its last value: nothing changes.
    let response = admin
        .http
        .patch(format!("{}/admin/api/v1/organizations/beta", admin.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"is_active": true, "is_active": false}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let text = response.text().await.unwrap();
    assert!(text.contains("`is_active` is given twice"), "{text}");
    assert_eq!(
        admin.ok(Method::GET, "/organizations/beta", None).await["active"],
        true
    );
    // The API exists once, at its prefix: not under an organization's portal (an ingress
    // allow-list on /admin/api/v1 covers every way to it).
    for path in [
        "/o/beta/admin/api/v1/organizations",
        "/o/beta/admin/api/v1/openapi.json",
    ] {
        let response = admin
            .http
            .get(format!("{}{path}", admin.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // A server fn, the Captive Portal API or the live updates under an unknown organization:
    // the server fns' JSON 404 for a script, saying that no organization is there.
    for (method, path, accept) in [
        (Method::POST, "/o/nosuch/api/form_token", "application/json"),
        (
            Method::GET,
            "/o/nosuch/captive-portal/api",
            "application/captive+json",
        ),
        (Method::GET, "/o/nosuch/session/events", "text/event-stream"),
    ] {
        let response = admin
            .http
            .request(method, format!("{}{path}", admin.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "NotFound", "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("No organization"),
            "{path}: {body}"
        );
    }
    // Its page says so, without a link to another organization's sign-in.
    let page = admin
        .http
        .get(format!("{}/o/nosuch/", admin.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("No organization's portal is at this address"),
        "{page}"
    );
    assert!(!page.contains("Go to the sign-in page"), "{page}");
    // So does a browser's form post there (its organization deleted while the page was open).
    let posted = admin
        .http
        .post(format!("{}/o/nosuch/api/login", admin.base))
        .header("accept", "text/html")
        .form(&[("username", "carol"), ("password", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::NOT_FOUND);
    let posted = posted.text().await.unwrap();
    assert!(
        posted.contains("No organization's portal is at this address"),
        "{posted}"
    );

    let orgs = admin.ok(Method::GET, "/organizations", None).await;
    assert_eq!(orgs.as_array().unwrap().len(), 2);
    assert_eq!(orgs[1]["id"], "beta");
    assert_eq!(orgs[1]["servers"][0]["secret"], "set");
    let (status, _) = admin
        .call(Method::GET, "/organizations/nope", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Disable beta: its open session is stopped.
    let session = app
        .sessions
        .login("beta", "carol", "carol-pass", ip(1))
        .await
        .unwrap();
    let beta = admin
        .ok(
            Method::PATCH,
            "/organizations/beta",
            Some(json!({ "is_active": false })),
        )
        .await;
    assert_eq!(beta["active"], false);
    // The answer comes before the disable's stop is done: a session it still counts is said
    // to be being stopped.
    assert!(
        beta["active_sessions"] == 0 || beta["stopping_sessions"] == true,
        "{beta}"
    );
    let stop = b
        .wait_for_acct(&["status=Stop", &format!("sid={}", session.acct_session_id)])
        .await;
    assert_eq!(field(&stop, "cause"), "Admin-Reset");
    wait_until("the disable's stop is done", || async {
        let beta = admin.ok(Method::GET, "/organizations/beta", None).await;
        beta["stopping_sessions"] == false
    })
    .await;
    assert_eq!(
        admin.ok(Method::GET, "/organizations/beta", None).await["active_sessions"],
        0
    );

    // A disabled organization: only the flag may change, and re-enabling alone.
    for body in [
        json!({ "name": "X" }),
        json!({ "is_active": true, "name": "X" }),
    ] {
        let (status, text) = admin
            .call(
                Method::PATCH,
                "/organizations/beta",
                Some(TOKEN),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    }
    assert_eq!(
        admin.ok(Method::GET, "/organizations/beta", None).await["active"],
        false
    );
    let (status, text) = admin
        .call(
            Method::PATCH,
            "/organizations/acme",
            Some(TOKEN),
            Some(json!({ "bogus": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("bogus"),
        "the message names the field: {text}"
    );
    // The flag named twice, by two of its keys: which to follow is not guessed (400, both
    // named), whether the organization is disabled or not.
    let (status, text) = admin
        .call(
            Method::PATCH,
            "/organizations/beta",
            Some(TOKEN),
            Some(json!({ "enabled": true, "active": true })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        text.contains("active: names the same flag as enabled"),
        "{text}"
    );
    // Re-enabled with the key a GET shows (`active`).
    let beta = admin
        .ok(
            Method::PATCH,
            "/organizations/beta",
            Some(json!({ "active": true })),
        )
        .await;
    assert_eq!(beta["active"], true);
    let acme = admin
        .ok(
            Method::PATCH,
            "/organizations/acme",
            // The white space around a name is not part of it (tester S's D4).
            Some(json!({ "name": " Acme Renamed\t " })),
        )
        .await;
    assert_eq!(acme["name"], "Acme Renamed");
    assert_eq!(app.organizations.get("acme").unwrap().name, "Acme Renamed");

    // Sessions: list, show, terminate (then 409), 404.
    let open = app
        .sessions
        .login("acme", "carol", "carol-pass", ip(2))
        .await
        .unwrap();
    let list = admin
        .ok(Method::GET, "/sessions?organization=acme", None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["acct_session_id"], open.acct_session_id.as_str());
    let (status, _) = admin
        .call(
            Method::GET,
            "/sessions?organization=nope",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no such organization: not an empty list"
    );
    let path = format!("/sessions/{}", open.id);
    assert_eq!(admin.ok(Method::GET, &path, None).await["active"], true);
    let (status, _) = admin.call(Method::DELETE, &path, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let stop = a
        .wait_for_acct(&["status=Stop", &format!("sid={}", open.acct_session_id)])
        .await;
    assert_eq!(field(&stop, "cause"), "Admin-Reset");
    let (status, _) = admin.call(Method::DELETE, &path, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = admin
        .call(Method::GET, "/sessions/999999", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // By its Acct-Session-Id too (as the CLI takes it).
    let by_sid = admin
        .ok(
            Method::GET,
            &format!("/sessions/{}", open.acct_session_id),
            None,
        )
        .await;
    assert_eq!(
        (by_sid["id"].as_i64(), by_sid["active"].as_bool()),
        (Some(open.id), Some(false))
    );
    // A limit out of range is refused, not quietly changed; a parameter that cannot be read
    // is named, in the API's words.
    for (path, says) in [
        ("/sessions?limit=0", "`limit` must be 1-10000"),
        ("/sessions?limit=-1", "`limit` must be 1-10000"),
        ("/audit?limit=10001", "`limit` must be 1-10000"),
        ("/sessions?limit=x", "invalid query parameter `limit`: "),
        ("/audit?limit=", "invalid query parameter `limit`: "),
        ("/sessions?org=acme", "invalid query: unknown field `org`"),
    ] {
        let (status, text) = admin.call(Method::GET, path, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        let body: Value = serde_json::from_str(&text).unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(says), "{path}: {text}");
    }
    // A path or method the API does not have: JSON too.
    for (method, path, expected) in [
        (Method::GET, "/nope", StatusCode::NOT_FOUND),
        (Method::PUT, "/sessions", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let (status, text) = admin.call(method, path, Some(TOKEN), None).await;
        assert_eq!(status, expected, "{path}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(body["error"].is_string(), "{path}: {text}");
    }
    // The scheme is case-insensitive.
    let lower = admin
        .http
        .get(format!("{}/admin/api/v1/organizations", admin.base))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);

    // Audited with the token's name; no secret anywhere.
    let audit = admin.ok(Method::GET, "/audit?limit=500", None).await;
    let entries = audit.as_array().unwrap();
    for action in [
        "org.disable",
        "org.enable",
        "org.update",
        "session.terminate",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "admin:ops"),
            "{action} by admin:ops in {audit}"
        );
    }
    // One organization's disables alone, named in other letter case; the page before.
    let disables = admin
        .ok(
            Method::GET,
            "/audit?organization=BETA&action=org.disable",
            None,
        )
        .await;
    let disables = disables.as_array().unwrap();
    assert!(!disables.is_empty(), "{audit}");
    assert!(
        disables
            .iter()
            .all(|e| e["action"] == "org.disable" && e["organization"] == "beta"),
        "{disables:?}"
    );
    let first = disables[0]["id"].as_i64().unwrap();
    let older = admin
        .ok(Method::GET, &format!("/audit?before={first}"), None)
        .await;
    assert!(
        older
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"].as_i64().unwrap() < first),
        "{older}"
    );
    // An id no entry can have is refused by name (black-box tester S's D5: an empty list).
    for before in ["-1", "0"] {
        let (status, body) = admin
            .call(
                Method::GET,
                &format!("/audit?before={before}"),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 400, "{before}: {body}");
        assert!(body.contains("`before`"), "{body}");
    }
    // Organizations a page at a time, in the list's order.
    let all: Vec<Value> = admin
        .ok(Method::GET, "/organizations", None)
        .await
        .as_array()
        .unwrap()
        .clone();
    assert!(all.len() >= 2, "{all:?}");
    let first = admin.ok(Method::GET, "/organizations?limit=1", None).await;
    assert_eq!(first.as_array().unwrap()[..], all[..1]);
    let after = all[0]["id"].as_str().unwrap().to_uppercase();
    let rest = admin
        .ok(Method::GET, &format!("/organizations?after={after}"), None)
        .await;
    assert_eq!(rest.as_array().unwrap()[..], all[1..]);
    for (query, said) in [
        ("limit=0", "`limit` must be 1-10000"),
        (
            "after=no-such-org",
            "`after`: no organization `no-such-org`",
        ),
    ] {
        let (status, text) = admin
            .call(
                Method::GET,
                &format!("/organizations?{query}"),
                Some(TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {text}");
        assert!(text.contains(said), "{query}: {text}");
    }
    for path in [
        "/organizations",
        "/organizations/acme",
        "/sessions",
        "/audit",
    ] {
        let (_, text) = admin.call(Method::GET, path, Some(TOKEN), None).await;
        assert!(!text.contains(SECRET), "{path} shows no secret");
        assert!(!text.contains(TOKEN));
    }

    // A body over the limit is refused before anything happens.
    let big = json!({ "name": "x".repeat(32 * 1024) });
    let (status, _) = admin
        .call(Method::PATCH, "/organizations/acme", Some(TOKEN), Some(big))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    app.stop().await;
}

/// Organizations and their RADIUS servers are created, changed and deleted at run time, by the
/// guard's rules: a disabled organization's objects may be read and deleted, not created (400)
/// or changed (403); nothing is deleted while it has work left; secrets never come back.
#[tokio::test]
async fn organizations_and_their_servers_are_created_changed_and_deleted_by_the_rules() {
    let (a, b) = (FreeRadius::start().await, FreeRadius::start().await);
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&with_admin(&db, &a, &b)).await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: format!("http://{}", app.addr),
    };
    let ip = |n| IpAddr::V4(Ipv4Addr::new(127, 0, 7, n));
    let server = serde_json::to_value(b.server_settings("g1", true)).unwrap();
    assert_eq!(
        server["secret"], SECRET,
        "the create body carries the secret"
    );
    let gamma = json!({
        "id": "gamma", "name": "Gamma Org", "nas_identifier": "gamma-nas",
        "servers": [server],
        "branding": { "accent_color": "#0f766e", "help_text": "Ask the front desk." },
    });

    // Bad input: 400 naming the field, nothing stored.
    for (body, field_name) in [
        (json!({ "id": "gamma", "name": "G" }), "servers"),
        (
            json!({ "id": "bad slug", "name": "G", "servers": gamma["servers"] }),
            "id",
        ),
        (
            json!({ "id": "gamma", "name": "G", "servers": gamma["servers"], "branding": { "accent_color": "red" } }),
            "accent_color",
        ),
        (
            json!({ "id": "gamma", "name": "G", "servers": gamma["servers"], "colour": 1 }),
            "colour",
        ),
        (
            // Two names for one server (black-box tester M's D6; a code review: at create too).
            json!({ "id": "gamma", "name": "G", "servers": [
                { "name": "x1", "address": "10.0.0.1", "secret": "s" },
                { "name": "X1", "address": "10.0.0.2", "secret": "s" },
            ] }),
            "servers[1].name",
        ),
        (
            json!({ "id": "gamma", "name": "G", "servers": [{ "name": "x", "address": "not-an-ip", "secret": "s" }] }),
            "servers[0].address",
        ),
        (
            // Said as the file's check says it (black-box tester S's D4 of session 82).
            json!({ "id": "gamma", "name": "G", "servers": [{ "name": "x", "address": "localhost", "secret": "s" }] }),
            "organization.servers[0].address: not an IP address like `10.0.0.1` or `2001:db8::1` (host names are not looked up)",
        ),
        (
            // Named in full, as every other field (tester S's D7).
            json!({ "id": "gamma", "name": "G", "servers": [{ "name": "x", "address": "10.0.0.1", "secret_file": "/etc/shadow" }] }),
            "organization.servers[0].secret_file: files",
        ),
        (
            json!({ "id": "gamma", "name": "G", "servers": gamma["servers"], "branding": { "logo_file": "/etc/passwd.png" } }),
            "organization.branding.logo_file: files on the portal's machine can be named only in the configuration file or with the CLI (the logo file",
        ),
    ] {
        let (status, text) = admin
            .call(Method::POST, "/organizations", Some(TOKEN), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(field_name), "names `{field_name}`: {text}");
    }
    assert!(app.organizations.get("gamma").is_none());

    let created = admin
        .ok(Method::POST, "/organizations", Some(gamma.clone()))
        .await;
    assert_eq!(created["id"], "gamma");
    assert_eq!(created["servers"][0]["secret"], "set");
    assert_eq!(created["branding"]["accent_color"], "#0f766e");
    // A branding key changed alone keeps the others (black-box tester U's D1); null removes one.
    let changed = admin
        .ok(
            Method::PATCH,
            "/organizations/gamma",
            Some(json!({ "branding": { "contact": "desk@gamma.example" } })),
        )
        .await;
    assert_eq!(changed["branding"]["accent_color"], "#0f766e", "{changed}");
    assert_eq!(changed["branding"]["help_text"], "Ask the front desk.");
    assert_eq!(changed["branding"]["contact"], "desk@gamma.example");
    let changed = admin
        .ok(
            Method::PATCH,
            "/organizations/gamma",
            Some(json!({ "branding": { "contact": null } })),
        )
        .await;
    assert!(changed["branding"]["contact"].is_null(), "{changed}");
    assert_eq!(changed["branding"]["accent_color"], "#0f766e");
    let (status, _) = admin
        .call(
            Method::POST,
            "/organizations",
            Some(TOKEN),
            Some(gamma.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Nor as `Gamma`: ids that differ only in letter case count as one.
    let mut upper = gamma;
    upper["id"] = "Gamma".into();
    let (status, text) = admin
        .call(Method::POST, "/organizations", Some(TOKEN), Some(upper))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("letter case"), "{text}");
    assert!(app.organizations.get("Gamma").is_none());
    // At once in the running portal: a login goes to gamma's server with gamma's NAS identity.
    let first = app
        .sessions
        .login("gamma", "carol", "carol-pass", ip(1))
        .await
        .unwrap();
    let start = b
        .wait_for_acct(&["status=Start", &format!("sid={}", first.acct_session_id)])
        .await;
    assert_eq!(field(&start, "nas_id"), "gamma-nas");

    // The server list replaced without secrets: the stored secret is kept (logins still work).
    let mut without_secret = serde_json::to_value(b.server_settings("g1", true)).unwrap();
    without_secret.as_object_mut().unwrap().remove("secret");
    admin
        .ok(
            Method::PATCH,
            "/organizations/gamma",
            Some(json!({ "servers": [without_secret], "default_window": "2h" })),
        )
        .await;
    let second = app
        .sessions
        .login("gamma", "carol", "carol-pass", ip(2))
        .await
        .expect("the secret was kept");

    // Named in other letters (as `/o/GAMMA/` may be): the same organization.
    let shown = admin.ok(Method::GET, "/organizations/GAMMA", None).await;
    assert_eq!(shown["id"], "gamma", "{shown}");
    let listed = admin
        .ok(Method::GET, "/sessions?organization=Gamma", None)
        .await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Show, edit, give back: the settings round-trip without secrets (and with the id).
    let shown = admin.ok(Method::GET, "/organizations/gamma", None).await;
    let mut settings = shown["settings"].clone();
    assert_eq!(settings["id"], "gamma");
    assert!(settings["servers"][0].get("secret").is_none(), "{settings}");
    settings["name"] = json!("Gamma Renamed");
    let renamed = admin
        .ok(Method::PATCH, "/organizations/gamma", Some(settings))
        .await;
    assert_eq!(renamed["name"], "Gamma Renamed");
    let third = app
        .sessions
        .login("gamma", "carol", "carol-pass", ip(3))
        .await
        .expect("the round trip kept the secret");
    let (status, text) = admin
        .call(
            Method::PATCH,
            "/organizations/gamma",
            Some(TOKEN),
            Some(json!({ "id": "delta" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");

    // Servers as objects of their own.
    let g2 = json!({ "name": "g2", "address": "127.0.0.1", "auth_port": 9, "acct_port": 9, "secret": "other-secret" });
    let (status, text) = admin
        .call(
            Method::POST,
            "/organizations/gamma/servers",
            Some(TOKEN),
            Some(g2.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["servers"][1]["name"],
        "g2"
    );
    let (status, _) = admin
        .call(
            Method::POST,
            "/organizations/gamma/servers",
            Some(TOKEN),
            Some(g2.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Nor in other letters (black-box tester M's D6): one name for an operator.
    let mut upper = g2;
    upper["name"] = "G2".into();
    let (status, text) = admin
        .call(
            Method::POST,
            "/organizations/gamma/servers",
            Some(TOKEN),
            Some(upper),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("differ only in letter case"), "{text}");
    let changed = admin
        .ok(
            Method::PATCH,
            "/organizations/gamma/servers/g2",
            Some(json!({ "retries": 0 })),
        )
        .await;
    assert_eq!(changed["servers"][1]["retries"], 0);
    // A new secret is audited by the server's name, never by its text.
    admin
        .ok(
            Method::PATCH,
            "/organizations/gamma/servers/g2",
            Some(json!({ "secret": "rotated-secret" })),
        )
        .await;
    let rotated = &admin.ok(Method::GET, "/audit?limit=1", None).await[0];
    let detail = &rotated["detail"];
    assert_eq!(
        (
            &detail["change"],
            &detail["server"],
            &detail["secret_changed"]
        ),
        (&json!("server.update"), &json!("g2"), &json!(["g2"])),
        "{rotated}"
    );
    let retried = admin
        .ok(
            Method::PATCH,
            "/organizations/gamma/servers/g2",
            Some(json!({ "retries": 1 })),
        )
        .await;
    assert_eq!(retried["servers"][1]["retries"], 1);
    let detail = &admin.ok(Method::GET, "/audit?limit=1", None).await[0]["detail"];
    assert!(detail.get("secret_changed").is_none(), "{detail}");
    // Pointing a server elsewhere needs its secret again (the stored one stays with its host).
    let (status, text) = admin
        .call(
            Method::PATCH,
            "/organizations/gamma/servers/g2",
            Some(TOKEN),
            Some(json!({ "address": "192.0.2.1" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("secret"), "{text}");
    // A server its open sessions still need cannot go (their Stops go to it).
    let (status, text) = admin
        .call(
            Method::DELETE,
            "/organizations/gamma/servers/g1",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("still need it"), "{text}");
    // Nor may it send their accounting somewhere else (a Stop must reach its Start's server).
    let (status, text) = admin
        .call(
            Method::PATCH,
            "/organizations/gamma/servers/g1",
            Some(TOKEN),
            Some(json!({ "acct_port": 9, "secret": "another-secret" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(
        text.contains("would send accounting to 127.0.0.1:9"),
        "{text}"
    );
    let (status, _) = admin
        .call(
            Method::PATCH,
            "/organizations/gamma/servers/nope",
            Some(TOKEN),
            Some(json!({ "retries": 0 })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Not deleted while it has open sessions.
    let (status, text) = admin
        .call(Method::DELETE, "/organizations/gamma", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("open session"), "{text}");

    // Disabled: read and delete allowed, create and update 403.
    admin
        .ok(
            Method::PATCH,
            "/organizations/gamma",
            Some(json!({ "is_active": false })),
        )
        .await;
    let (status, text) = admin
        .call(
            Method::POST,
            "/organizations/gamma/servers",
            Some(TOKEN),
            Some(json!({ "name": "g3", "address": "127.0.0.1", "secret": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("disabled"), "{text}");
    for (method, path, body) in [
        (
            Method::PATCH,
            "/organizations/gamma/servers/g2",
            json!({ "retries": 1 }),
        ),
        (
            Method::PATCH,
            "/organizations/gamma",
            json!({ "default_window": "1h" }),
        ),
        // Also where the body names a file (refused on its own through the API): the
        // organization's state is said first, as without it (code review: 400 came first).
        (
            Method::POST,
            "/organizations/gamma/servers",
            json!({ "name": "g3", "address": "127.0.0.1", "secret_file": "/run/s" }),
        ),
        (
            Method::PATCH,
            "/organizations/gamma/servers/g2",
            json!({ "secret_file": "/run/s" }),
        ),
        (
            Method::PATCH,
            "/organizations/gamma",
            json!({ "branding": { "logo_file": "/srv/logo.png" } }),
        ),
    ] {
        let (status, text) = admin.call(method, path, Some(TOKEN), Some(body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {text}");
        assert!(text.contains("disabled"), "{path}: {text}");
    }
    for (method, path, body) in [
        (
            Method::POST,
            "/organizations/nope/servers",
            json!({ "name": "n1", "address": "127.0.0.1", "secret_file": "/run/s" }),
        ),
        (
            Method::PATCH,
            "/organizations/acme/servers/nope",
            json!({ "secret_file": "/run/s" }),
        ),
    ] {
        let (status, text) = admin.call(method, path, Some(TOKEN), Some(body)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {text}");
    }
    assert_eq!(
        admin.ok(Method::GET, "/organizations/gamma", None).await["servers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (status, _) = admin
        .call(
            Method::DELETE,
            "/organizations/gamma/servers/g2",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, text) = admin
        .call(
            Method::DELETE,
            "/organizations/gamma/servers/g1",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the last server stays: {text}"
    );

    // Once its sessions are stopped (Stops delivered), it can be deleted; a configured one not.
    for session in [&first, &second, &third] {
        b.wait_for_acct(&["status=Stop", &format!("sid={}", session.acct_session_id)])
            .await;
    }
    wait_until("gamma can be deleted", || async {
        admin
            .call(Method::DELETE, "/organizations/gamma", Some(TOKEN), None)
            .await
            .0
            == StatusCode::NO_CONTENT
    })
    .await;
    let (status, _) = admin
        .call(Method::GET, "/organizations/gamma", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(app.organizations.get("gamma").is_none());
    let (status, text) = admin
        .call(Method::DELETE, "/organizations/acme", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("configuration"), "{text}");

    // A configured organization's servers come back from the file at the next start: one
    // added or moved here would be taken from its sessions then (and that start refused).
    let moved = json!({ "acct_port": 9, "secret": "another-secret" });
    let added = json!({ "name": "a2", "address": "127.0.0.1", "secret": "x" });
    for (method, path, body) in [
        (Method::POST, "/organizations/acme/servers", added),
        (
            Method::PATCH,
            "/organizations/acme/servers/a-primary",
            moved,
        ),
        (
            Method::PATCH,
            "/organizations/acme/servers/a-primary",
            json!({ "name": "a-renamed" }),
        ),
    ] {
        let (status, text) = admin.call(method, path, Some(TOKEN), Some(body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {text}");
        assert!(text.contains("configuration file"), "{text}");
    }
    admin
        .ok(
            Method::PATCH,
            "/organizations/acme/servers/a-primary",
            Some(json!({ "retries": 1 })),
        )
        .await;
    // Two names of the active flag on a create, saying different things: refused.
    let (status, text) = admin
        .call(
            Method::POST,
            "/organizations",
            Some(TOKEN),
            Some(json!({ "id": "eps", "name": "E", "servers": [server], "is_active": true, "enabled": false })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("give one of them"), "{text}");
    // A path that cannot be read is answered in JSON like every other error.
    let (status, text) = admin
        .call(Method::GET, "/organizations/%ff", Some(TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        serde_json::from_str::<Value>(&text).unwrap()["error"].is_string(),
        "{text}"
    );

    // Every change audited, and no secret in the log.
    let audit = admin.ok(Method::GET, "/audit?limit=500", None).await;
    let text = audit.to_string();
    for action in ["org.create", "org.update", "org.disable", "org.delete"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action && e["organization"] == "gamma"),
            "{action} in {text}"
        );
    }
    assert!(
        !text.contains(SECRET)
            && !text.contains("other-secret")
            && !text.contains("rotated-secret"),
        "{text}"
    );
    app.stop().await;
}

/// Every operation the OpenAPI document lists exists and answers one of its documented codes;
/// methods it does not list are not served.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let (a, b) = (FreeRadius::start().await, FreeRadius::start().await);
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&with_admin(&db, &a, &b)).await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: format!("http://{}", app.addr),
    };
    let session = app
        .sessions
        .login(
            "acme",
            "carol",
            "carol-pass",
            IpAddr::V4(Ipv4Addr::new(127, 0, 6, 9)),
        )
        .await
        .unwrap();
    let (status, text) = admin.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&text).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 6);
    for (path, item) in paths {
        let concrete = path
            .replace(
                "{id}",
                if path.starts_with("/sessions") {
                    "SID"
                } else {
                    "acme"
                },
            )
            .replace("SID", &session.id.to_string())
            .replace("{name}", "a-primary");
        for method in ["get", "post", "put", "patch", "delete"] {
            let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method == "patch").then(|| json!({ "is_active": true }));
            let (status, text) = admin.call(http_method, &concrete, Some(TOKEN), body).await;
            match item.get(method) {
                Some(operation) => {
                    let documented = operation["responses"].as_object().unwrap();
                    assert!(
                        documented.contains_key(status.as_str()),
                        "{method} {path} answered {status}, not documented: {text}"
                    );
                }
                None => assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                ),
            }
        }
    }
    app.stop().await;
}

/// `GET /organizations/{id}`'s settings, edited and sent back, are taken — also for a server
/// whose secret is in a file: the same file again gives no new access. Another file is refused.
#[tokio::test]
async fn settings_read_back_can_be_patched_with_their_secret_file() {
    let (a, b) = (FreeRadius::start().await, FreeRadius::start().await);
    let (dir, db) = temp_db();
    let secret_path = dir.path().join("beta.secret");
    std::fs::write(&secret_path, format!("{SECRET}\n")).unwrap();
    let mut settings = with_admin(&db, &a, &b);
    settings.organizations[1].servers[0].secret = None;
    settings.organizations[1].servers[0].secret_file = Some(secret_path.clone());
    settings.validate().unwrap();
    let app = TestApp::spawn(&settings).await;
    let admin = Admin {
        http: reqwest::Client::new(),
        base: format!("http://{}", app.addr),
    };

    let view = admin.ok(Method::GET, "/organizations/beta", None).await;
    let mut edited = view["settings"].clone();
    assert_eq!(
        edited["servers"][0]["secret_file"],
        secret_path.to_str().unwrap(),
        "{view}"
    );
    edited["name"] = json!("Beta, renamed");
    let after = admin
        .ok(Method::PATCH, "/organizations/beta", Some(edited.clone()))
        .await;
    assert_eq!(after["name"], "Beta, renamed");
    wait_until("the running portal follows", || async {
        app.organizations.get("beta").unwrap().name == "Beta, renamed"
    })
    .await;
    app.sessions
        .login(
            "beta",
            "carol",
            "carol-pass",
            IpAddr::V4(Ipv4Addr::new(127, 0, 6, 9)),
        )
        .await
        .expect("the secret from the file still signs the packets");

    // The same file on the server's own endpoint; another file on either is refused.
    let same = json!({ "secret_file": secret_path, "retries": 2 });
    admin
        .ok(
            Method::PATCH,
            "/organizations/beta/servers/b-primary",
            Some(same),
        )
        .await;
    // The same file for another address: the file's secret would go to a new host.
    let mut moved = edited.clone();
    moved["servers"][0]["address"] = json!("198.51.100.66");
    edited["servers"][0]["secret_file"] = json!("/etc/shadow");
    for (path, body) in [
        ("/organizations/beta", moved),
        (
            "/organizations/beta/servers/b-primary",
            json!({ "secret_file": secret_path, "address": "198.51.100.66" }),
        ),
        (
            "/organizations/beta/servers/b-primary",
            json!({ "secret_file": secret_path, "acct_port": 1 }),
        ),
        ("/organizations/beta", edited),
        (
            "/organizations/beta/servers/b-primary",
            json!({ "secret_file": "/etc/shadow" }),
        ),
    ] {
        let (status, text) = admin
            .call(Method::PATCH, path, Some(TOKEN), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
        assert!(text.contains("secret_file"), "{text}");
    }

    // A secret file is read as it is now: one that grew a second line is refused at the next
    // change, naming it (the organization would sign its packets with two lines).
    std::fs::write(&secret_path, format!("{SECRET}\nsecond line\n")).unwrap();
    let view = admin.ok(Method::GET, "/organizations/beta", None).await;
    let mut renamed = view["settings"].clone();
    renamed["name"] = json!("Beta, renamed again");
    let (status, text) = admin
        .call(
            Method::PATCH,
            "/organizations/beta",
            Some(TOKEN),
            Some(renamed),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        text.contains("secret_file") && text.contains("control character"),
        "{text}"
    );
    std::fs::write(&secret_path, format!("{SECRET}\n")).unwrap();

    // A secret stored in the settings before secrets had to be one line (written here as an
    // older release stored it): a change that keeps it is not held to that rule — another
    // field changes — while a server given a new secret is.
    let row = app.storage.organization("beta").await.unwrap().unwrap();
    let mut stored: Value = serde_json::from_str(row.settings.as_deref().unwrap()).unwrap();
    stored["servers"][0]["secret_file"] = Value::Null;
    stored["servers"][0]["secret"] = json!("old\tsecret");
    let json = stored.to_string();
    let detail = json!({});
    app.storage
        .update_organization(
            &OrganizationWrite {
                id: "beta",
                name: &row.name,
                settings_json: &json,
                actor: "test",
                now: 1,
                detail: &detail,
                expected_revision: None,
                servers_freed: &[],
                copies_since: 0,
            },
            false,
        )
        .await
        .unwrap();
    admin
        .ok(
            Method::PATCH,
            "/organizations/beta",
            Some(json!({ "name": "Beta, kept secret" })),
        )
        .await;
    let (status, text) = admin
        .call(
            Method::PATCH,
            "/organizations/beta/servers/b-primary",
            Some(TOKEN),
            Some(json!({ "secret": "one\ttwo" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("control character"), "{text}");
    app.stop().await;
}
