//! Login, refresh, disconnect, expiry and restart against a real FreeRADIUS, through the portal's
//! HTTP interface as a browser without JavaScript uses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    field, holding_relay, portal_with_one_server, portal_with_one_server_where, settings, temp_db,
    wait_connections_closed, wait_for, wait_until, Browser, FreeRadius, TestApp,
};
use std::{net::Ipv4Addr, sync::Arc, time::Duration};
use tokio::sync::Notify;

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

#[tokio::test]
async fn accept_with_session_timeout_and_ise_class_opens_a_session_and_echoes_the_class() {
    let (radius, app, _dir) = portal_with_one_server().await;

    let page = app.browser(CLIENT).login("alice", "alice-pass").await;

    assert_eq!(
        page.path, "/session",
        "login should land on the session page"
    );
    assert!(
        page.body.contains("alice"),
        "session page shows the username"
    );
    assert!(
        page.body.contains("maximum session length"),
        "a 30 s Session-Timeout is the limit that ends it"
    );
    let start = radius.wait_for_acct(&["status=Start", "user=alice"]).await;
    assert_eq!(
        field(&start, "class"),
        "CACS:0a0a0a0a0000000123456789:ise-node-1/123456789/42"
    );
    assert_eq!(field(&start, "ip"), "127.0.0.1");
    assert_eq!(field(&start, "nas_id"), "portal-test");
    assert_eq!(
        field(&start, "sid").len(),
        32,
        "portal-generated Acct-Session-Id"
    );
    let auth = radius
        .auth_lines()
        .into_iter()
        .find(|l| l.contains("user=alice"))
        .expect("Access-Request logged");
    assert!(auth.contains("result=Access-Accept"), "{auth}");
    assert!(auth.contains("calling=127.0.0.1"), "{auth}");
    assert!(
        auth.contains("ma=0x"),
        "Access-Request carries Message-Authenticator: {auth}"
    );
    app.stop().await;
}

#[tokio::test]
async fn accept_with_idle_timeout_only_uses_it_as_the_window() {
    let (radius, app, _dir) = portal_with_one_server().await;

    let page = app.browser(CLIENT).login("bob", "bob-pass").await;

    assert_eq!(page.path, "/session");
    assert!(
        page.body.contains("unless you refresh"),
        "the window ends it"
    );
    assert!(
        page.body.contains("20 seconds"),
        "window is the Idle-Timeout"
    );
    let start = radius.wait_for_acct(&["status=Start", "user=bob"]).await;
    assert_eq!(field(&start, "class"), "plain-class-value");
    app.stop().await;
}

#[tokio::test]
async fn accept_without_timeouts_gets_the_organization_default_window_and_no_class() {
    let (radius, app, _dir) = portal_with_one_server().await;

    let page = app.browser(CLIENT).login("carol", "carol-pass").await;

    assert_eq!(page.path, "/session");
    assert!(page.body.contains("4 hours"), "org default window of 4 h");
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    assert_eq!(
        field(&start, "class"),
        "",
        "no Class in the Accept, none echoed"
    );
    assert!(
        !radius.detail().contains("Class ="),
        "no Class attribute at all in the Start"
    );
    app.stop().await;
}

#[tokio::test]
async fn binary_and_multiple_class_values_are_echoed_byte_for_byte() {
    let (radius, app, _dir) = portal_with_one_server().await;

    let page = app.browser(CLIENT).login("frank", "frank-pass").await;

    assert_eq!(page.path, "/session");
    radius.wait_for_acct(&["status=Start", "user=frank"]).await;
    let detail = radius.detail();
    assert!(
        detail.contains("Class = 0x00ff10fe80"),
        "binary Class echoed unmodified:\n{detail}"
    );
    let second = format!(
        "Class = 0x{}",
        "second-class"
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert!(
        detail.contains(&second),
        "second Class echoed too:\n{detail}"
    );
    app.stop().await;
}

#[tokio::test]
async fn reject_shows_the_reply_message_and_opens_nothing() {
    let (radius, app, _dir) = portal_with_one_server().await;

    let page = app.browser(CLIENT).login("dave", "whatever").await;

    assert_eq!(page.path, "/", "back on the login page");
    assert!(
        page.body.contains("Sign-in refused: Account locked"),
        "Reply-Message shown: {}",
        page.body
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    let auth = wait_for("the reject in auth.log", Duration::from_secs(5), || {
        radius
            .auth_lines()
            .into_iter()
            .find(|l| l.contains("user=dave"))
    })
    .await;
    assert!(auth.contains("Access-Reject"), "{auth}");
    assert!(
        radius.acct_lines().is_empty(),
        "no accounting for a rejected login"
    );
    app.stop().await;
}

/// RFC 2865 §5.1: the User-Name of the Access-Accept (here the realm stripped) is the name of
/// the session's accounting, Start to Stop, and of the session the page shows.
#[tokio::test]
async fn the_accepts_user_name_names_the_session_and_its_accounting() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);

    let page = browser.login("rw@example.org", "rw-pass").await;

    assert_eq!(page.path, "/session", "{}", page.body);
    let auth = radius.auth_lines();
    assert!(
        auth.iter().any(|l| l.contains("user=rw@example.org")),
        "asked with the typed name: {auth:#?}"
    );
    let start = radius.wait_for_acct(&["status=Start", "user=rw "]).await;
    let sid = field(&start, "sid");
    browser.post_form("/api/disconnect", "/session", &[]).await;
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={sid}")])
        .await;
    assert_eq!(field(&stop, "user"), "rw");
    assert!(
        radius
            .acct_lines()
            .iter()
            .all(|l| !l.contains("example.org")),
        "no Accounting-Request with the typed name"
    );
    let audit = app.storage.audit_tail(20).await.unwrap();
    let accepted = audit
        .iter()
        .find(|e| e.action == "login.accepted")
        .expect("login audited");
    let detail: serde_json::Value = serde_json::from_str(&accepted.detail).unwrap();
    assert_eq!(detail["username"], "rw", "{detail}");
    assert_eq!(detail["typed_username"], "rw@example.org", "{detail}");
    app.stop().await;
}

/// A User-Name from the server with a right-to-left override: the session page shows the
/// override as its code point, never the name mirrored ("adminexe.png").
#[tokio::test]
async fn a_name_the_server_gave_is_shown_as_it_is_not_mirrored() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let page = browser.login("mirror", "mirror-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert!(page.body.contains("admin⟨U+202E⟩gnp.exe"), "{}", page.body);
    // Laid out in its own direction (a right-to-left name in a left-to-right page), as the
    // server's message is.
    assert!(
        page.body
            .contains(r#"<dd data-testid="username" dir="auto">admin⟨U+202E⟩gnp.exe</dd>"#),
        "{}",
        page.body
    );
    assert!(!page.body.contains('\u{202E}'), "{}", page.body);
    app.stop().await;
}

/// An Access-Challenge (a second factor) is a final answer: the user is told this portal cannot
/// do the extra step, with the server's message; the backup is not asked with the password.
#[tokio::test]
async fn an_access_challenge_is_final_and_says_so() {
    let (primary, backup) = (FreeRadius::start().await, FreeRadius::start().await);
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(&settings(
        &db,
        vec![
            primary.server_settings("primary", true),
            backup.server_settings("backup", true),
        ],
    ))
    .await;

    let page = app.browser(CLIENT).login("chris", "chris-pass").await;

    assert_eq!(page.path, "/", "back on the login page");
    assert!(
        page.body
            .contains("Sign-in refused: this sign-in needs an extra step that this portal does not support; contact your network administrator (the server asked: \"Enter the code we sent to your phone"),
        "{}",
        page.body
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    // A script is told which answer it was, with the server's words as they came (as for an
    // Access-Reject), the sentence in `message`.
    let answer = app
        .browser(Ipv4Addr::new(127, 0, 0, 45))
        .login_as_script("chris", "chris-pass")
        .await;
    assert_eq!(answer.status(), 401);
    let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "ChallengeUnsupported", "{body}");
    let asked = body["reply_message"].as_str().unwrap();
    assert!(
        asked.starts_with("Enter the code we sent to your phone"),
        "{body}"
    );
    assert!(!asked.contains("portal"), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("extra step that this portal does not support"),
        "{body}"
    );
    assert!(
        backup.auth_lines().is_empty(),
        "the backup was not asked: {:#?}",
        backup.auth_lines()
    );
    assert!(primary.acct_lines().is_empty(), "no accounting");
    app.stop().await;
}

#[tokio::test]
async fn a_long_refusal_is_shown_cut_to_fit() {
    // Two Reply-Message attributes of ~220 bytes: more than a form error's cookie can carry
    // twice, so the page shows the start of it, marked as cut.
    let (_radius, app, _dir) = portal_with_one_server().await;

    let page = app.browser(CLIENT).login("rita", "whatever").await;

    assert_eq!(page.path, "/", "back on the login page");
    assert!(
        page.body
            .contains("Sign-in refused: Your account is locked until the helpdesk unlocks it."),
        "Reply-Message shown: {}",
        page.body
    );
    assert!(
        page.body.contains("Call the helpdesk"),
        "second part joined"
    );
    assert!(page.body.contains('…'), "marked as cut: {}", page.body);
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    app.stop().await;
}

#[tokio::test]
async fn invalid_input_is_refused_with_the_field_named_and_nothing_is_sent() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);

    let long = "a".repeat(64);
    let page = browser.login(&long, "x").await;
    assert!(page.body.contains("Username is too long"), "{}", page.body);
    let page = browser.login("bad user", "x").await;
    assert!(
        page.body.contains("value=\"bad user\""),
        "filled in again: {}",
        page.body
    );
    assert!(
        page.body.contains("Username must not contain spaces."),
        "{}",
        page.body
    );
    // A name refused for a control character is not put back into the form.
    let with_control = browser.login("car\u{1}ol", "x").await;
    assert!(
        with_control.body.contains("control characters"),
        "{}",
        with_control.body
    );
    assert!(
        !with_control.body.contains('\u{1}'),
        "{}",
        with_control.body
    );
    // The cursor goes where the fix is: the username, not the password.
    let input = |id: &str| {
        let at = page.body.find(&format!(r#"id="{id}""#)).unwrap();
        page.body[at..at + page.body[at..].find('>').unwrap()].to_string()
    };
    assert!(
        input("username").contains("autofocus")
            && input("username").contains(r#"aria-invalid="true""#)
            && input("username").contains(r#"aria-describedby="form-error""#),
        "{}",
        input("username")
    );
    assert!(page.body.contains(r#"id="form-error""#), "{}", page.body);
    assert!(
        page.body.contains("<title>Sign-in failed – Sign in"),
        "{}",
        page.body
    );
    assert!(
        !input("password").contains("autofocus"),
        "{}",
        input("password")
    );

    // JSON clients (scripts, the island) get HTTP 400.
    let response = browser.login_as_script(&long, "x").await;
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("username"));
    assert!(radius.auth_lines().is_empty(), "nothing reached RADIUS");
    app.stop().await;
}

/// A window longer than a web session's day: the browser's link to the session lasts as long
/// as the session can (else the page would lose a session still running).
#[tokio::test]
async fn a_window_of_days_keeps_the_browsers_link_as_long() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    // The window and a day more (the page can say how the session ended for a day after).
    for (n, user, window) in [(1, "wendy", 2 * 86_400), (2, "carol", 4 * 3_600)] {
        let response = app
            .browser(Ipv4Addr::new(127, 0, 0, n))
            .login_as_script(user, &format!("{user}-pass"))
            .await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            common::web_session_max_age(&response),
            Some(window + 86_400),
            "{user}"
        );
    }
    app.stop().await;
}

/// A phone keyboard's space after an autocompleted name (or a pasted one) is not part of it.
#[tokio::test]
async fn spaces_around_a_username_are_not_part_of_it() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let page = browser.login(" carol\u{a0}", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert!(
        page.body
            .contains(r#"data-testid="username" dir="auto">carol<"#),
        "{}",
        page.body
    );
    let auth = radius.auth_lines();
    assert!(auth.iter().any(|l| l.contains("user=carol ")), "{auth:#?}");
    radius.wait_for_acct(&["status=Start", "user=carol "]).await;
    // Inside the name a space is still refused (the organization's pattern).
    let page = browser.login("car ol", "carol-pass").await;
    assert!(
        page.body.contains("Username must not contain spaces."),
        "{}",
        page.body
    );
    // A paste's tab or line end around it is not part of it either; inside, it is refused.
    let page = browser.login("carol\t\r\n", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    // A paste's byte-order mark or zero-width space around it neither.
    let page = browser.login("\u{feff}carol\u{200b}", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let page = browser.login("car\tol", "carol-pass").await;
    assert!(
        page.body.contains("Username contains control characters."),
        "{}",
        page.body
    );
    app.stop().await;
}

#[tokio::test]
async fn refresh_sends_an_interim_update_and_disconnect_a_stop_with_user_request() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    browser.login("bob", "bob-pass").await;
    let start = radius.wait_for_acct(&["status=Start", "user=bob"]).await;
    let sid = field(&start, "sid").to_string();

    let page = browser.post_form("/api/refresh", "/session", &[]).await;
    assert_eq!(
        page.path, "/session",
        "a no-JS refresh returns to the session page"
    );
    // Which says so, once; a second Refresh within seconds says it changed nothing.
    assert!(
        page.body.contains("Refreshed: your session") && page.body.contains(r#"role="status""#),
        "{}",
        page.body
    );
    assert!(!browser.get("/session").await.body.contains("Refreshed"));
    // A browser that sends no Referer (a privacy setting) lands there too (it used to land
    // on the sign-in page).
    let response = browser
        .post_token("/api/refresh", "/session", "text/html")
        .await;
    assert_eq!(response.url().path(), "/session");
    let body = response.text().await.unwrap();
    assert!(body.contains("Disconnect"));
    assert!(body.contains("this Refresh changed nothing"), "{body}");
    // A script's refresh (the island's) gets the new state and no redirect — and leaves no
    // notice for the next page (the island says it itself).
    let response = browser
        .post_token("/api/refresh", "/session", "application/json")
        .await;
    assert!(
        !response
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap_or_default().contains("portal_flash")),
        "{:?}",
        response.headers()
    );
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(response.headers().get("location").is_none());
    assert!(response.headers().get("serverfnredirect").is_none());
    let state: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(state["username"], "bob", "{state}");
    assert!(
        state["remaining_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{state}"
    );
    let interim = radius
        .wait_for_acct(&["status=Interim-Update", &format!("sid={sid}")])
        .await;
    assert_eq!(
        field(&interim, "class"),
        "plain-class-value",
        "Class echoed in Interim-Update"
    );

    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(
        page.path, "/",
        "a no-JS disconnect returns to the login page"
    );
    const DISCONNECTED: &str = "You are disconnected";
    assert!(
        page.body.contains(DISCONNECTED) && page.body.contains(r#"role="status""#),
        "the sign-in page says the session ended: {}",
        page.body
    );
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={sid}")])
        .await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    assert_eq!(
        field(&stop, "class"),
        "plain-class-value",
        "Class echoed in Stop"
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    let page = browser.get("/session").await;
    assert_eq!(
        page.path, "/",
        "no session any more: the session page sends you to sign in"
    );
    assert!(
        !page.body.contains(DISCONNECTED),
        "the notice is shown once"
    );
    // Nothing but its form token was left in the web session: it is gone, record and
    // cookie, and the browser signs in again as the anonymous visitor it was before.
    assert_eq!(app.storage.web_session_count().await.unwrap(), 0);
    let page = browser.login("bob", "bob-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert_eq!(app.storage.web_session_count().await.unwrap(), 1);
    // The island's disconnect (a script) is told where to go, without a 3xx of its own.
    let response = browser
        .post_token("/api/disconnect", "/session", "application/json")
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["location"], "/");
    assert!(response.headers().get("serverfnredirect").is_some());
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    // The page the island goes to next says so too, once.
    let page = browser.get("/").await;
    assert!(page.body.contains(DISCONNECTED), "{}", page.body);
    assert!(!browser.get("/").await.body.contains(DISCONNECTED));
    // A Disconnect that ends nothing (a second click, another tab) or is refused leaves none.
    let sets_flash = |response: &reqwest::Response| {
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.starts_with("portal_flash=") && !v.contains("Max-Age=0"))
    };
    let again = browser
        .post_token("/api/disconnect", "/", "application/json")
        .await;
    assert_eq!(again.status(), reqwest::StatusCode::OK);
    assert!(!sets_flash(&again), "{:?}", again.headers());
    let refused = browser
        .http
        .post(format!("{}/api/disconnect", browser.base))
        .header("accept", "application/json")
        .header("origin", browser.base.clone())
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(!sets_flash(&refused), "{:?}", refused.headers());
    assert!(!browser.get("/").await.body.contains(DISCONNECTED));
    app.stop().await;
}

#[tokio::test]
async fn a_second_login_from_the_same_client_stops_the_first_with_port_preempted() {
    let (radius, app, _dir) = portal_with_one_server().await;
    app.browser(CLIENT).login("carol", "carol-pass").await;
    let first = radius.wait_for_acct(&["status=Start", "user=carol"]).await;

    app.browser(CLIENT).login("erin", "erin-pass").await;

    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={}", field(&first, "sid"))])
        .await;
    assert_eq!(field(&stop, "cause"), "Port-Preempted");
    radius.wait_for_acct(&["status=Start", "user=erin"]).await;
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    let lines = radius.acct_lines();
    let stop_at = lines
        .iter()
        .position(|l| l.contains("status=Stop"))
        .unwrap();
    let start_at = lines
        .iter()
        .position(|l| l.contains("status=Start") && l.contains("user=erin"))
        .unwrap();
    assert!(
        stop_at < start_at,
        "the old session's Stop reaches the server before the new Start: {lines:#?}"
    );
    app.stop().await;
}

/// A user who disconnects and signs in again at once, from the same address, has the new Start
/// reach the server after the old session's Stop — also when that Stop is still on its way (a
/// Disconnect answers before its Stop is acknowledged): a firewall keying identities by address
/// that took the old Stop last would drop the new user's identity. Here the Stop's first
/// transmission is lost, and it arrives with its retransmission, 2 s later.
#[tokio::test]
async fn signing_in_again_right_after_a_disconnect_sends_the_start_after_the_stop() {
    use std::sync::atomic::Ordering::SeqCst;
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let acct = radius.acct_addr();
    let relay = common::gated_relay(acct, open.clone()).await;
    let mut server = radius.server_settings("primary", true);
    server.acct_port = relay.port;
    server.timeout = Duration::from_secs(2);
    server.retries = 2;
    let app = TestApp::spawn(&settings(&db, vec![server])).await;
    let browser = app.browser(CLIENT);
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let first = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let old = format!("sid={}", field(&first, "sid"));

    open.store(false, SeqCst);
    browser.post_form("/api/disconnect", "/session", &[]).await;
    wait_until("the Stop's first transmission to be lost", || async {
        relay.dropped.load(SeqCst) > 0
    })
    .await;
    open.store(true, SeqCst);
    let page = browser.login("erin", "erin-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);

    stop_reaches_the_server_before_start(&radius, &old, "user=erin").await;
    app.stop().await;
}

/// A sign-in at an address whose earlier session was stopped a moment before by someone else —
/// its expiry committed just before this sign-in's write (so the sign-in replaced nothing), or
/// another replica's Disconnect — sends that session's Stop first if it is still due: here it
/// is stopped straight in the database, its Stop left for a delivery loop that is not woken.
#[tokio::test]
async fn a_sign_in_sends_the_addresss_due_stop_of_a_session_ended_elsewhere_first() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let first = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let old = format!("sid={}", field(&first, "sid"));
    let session = app
        .storage
        .active_sessions_of(Some("acme"), 10)
        .await
        .unwrap()
        .remove(0);
    let now = radius_portal::access_session::now_ms();
    assert!(app
        .storage
        .stop_session(
            session.id,
            radius_portal::radius::terminate_cause::SESSION_TIMEOUT,
            now
        )
        .await
        .unwrap());
    let page = app.browser(CLIENT).login("erin", "erin-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    stop_reaches_the_server_before_start(&radius, &old, "user=erin").await;
    app.stop().await;
}

/// Waits for the Stop of the session `sid` (`sid=…`) and for a Start with `start` at `radius`,
/// and checks that the server got that Stop first.
async fn stop_reaches_the_server_before_start(radius: &FreeRadius, sid: &str, start: &str) {
    radius.wait_for_acct(&["status=Stop", sid]).await;
    radius.wait_for_acct(&["status=Start", start]).await;
    let lines = radius.acct_lines();
    let at = |status: &str, fragment: &str| {
        lines
            .iter()
            .position(|l| l.contains(status) && l.contains(fragment))
            .unwrap()
    };
    assert!(
        at("status=Stop", sid) < at("status=Start", start),
        "the earlier session's Stop reaches the server before the new Start: {lines:#?}"
    );
}

/// A browser signed in that signs in again from another address (a laptop moved to another
/// network, a script) replaces its own session: the earlier one is stopped (Port-Preempted)
/// before the new Start, so no identity stays on the address it left — which another device
/// may be given next.
#[tokio::test]
async fn signing_in_again_from_another_address_stops_the_browsers_earlier_session() {
    let (radius, app, _dir) = portal_with_one_server().await;
    // Another device, signed in elsewhere: never touched by it.
    let other = app.browser(Ipv4Addr::new(127, 0, 0, 33));
    other.login("erin", "erin-pass").await;
    radius.wait_for_acct(&["status=Start", "user=erin"]).await;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let before = app.browser_with_jar(Ipv4Addr::new(127, 0, 0, 31), jar.clone());
    let after = app.browser_with_jar(Ipv4Addr::new(127, 0, 0, 32), jar);
    let page = before.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let first = radius
        .wait_for_acct(&["status=Start", "user=carol", "ip=127.0.0.31"])
        .await;
    // Opened from the new address, the session page says that network access follows the
    // session's address and what to do; from the session's own address it says nothing.
    let page = after.get("/").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert!(
        page.body.contains("This device now reaches the portal from 127.0.0.32, but this session is for 127.0.0.31"),
        "{}",
        page.body
    );
    let page = before.get("/session").await;
    assert!(
        !page.body.contains("data-testid=\"elsewhere\""),
        "{}",
        page.body
    );

    let page = after.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert!(page.body.contains("127.0.0.32"), "{}", page.body);
    assert!(
        !page.body.contains("data-testid=\"elsewhere\""),
        "{}",
        page.body
    );

    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={}", field(&first, "sid"))])
        .await;
    assert_eq!(field(&stop, "cause"), "Port-Preempted");
    radius
        .wait_for_acct(&["status=Start", "user=carol", "ip=127.0.0.32"])
        .await;
    assert_eq!(app.storage.active_sessions().await.unwrap(), 2);
    assert!(
        !radius
            .acct_lines()
            .iter()
            .any(|l| l.contains("status=Stop") && l.contains("user=erin")),
        "{:#?}",
        radius.acct_lines()
    );
    app.stop().await;
}

/// A signed-in browser that opens the portal again is shown its session, not a sign-in form
/// whose use would replace it; once the session has ended the sign-in page is back, and
/// another browser at the same address is never sent to a session it does not hold.
#[tokio::test]
async fn the_sign_in_page_sends_a_signed_in_browser_to_its_session() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let page = browser.get("/").await;
    assert_eq!((page.path.as_str(), page.status), ("/", 200));
    browser.login("carol", "carol-pass").await;

    let page = browser.get("/").await;
    assert_eq!((page.path.as_str(), page.status), ("/session", 200));
    assert!(page.body.contains("carol"), "{}", page.body);
    let other = app.browser(CLIENT);
    let other_browser = other.get("/").await;
    assert_eq!(other_browser.path, "/", "no link, no redirect");
    assert!(other_browser.body.contains("name=\"password\""));
    // Its session page asked for (the "Already signed in?" link): sent back to sign in, and
    // told why (once), though the address has a session — another browser's.
    const NONE_HERE: &str = "This browser holds no running session here.";
    let page = other.get("/session").await;
    assert_eq!((page.path.as_str(), page.status), ("/", 200));
    assert!(page.body.contains(NONE_HERE), "{}", page.body);
    assert!(
        page.body.contains("To connect, sign in below."),
        "{}",
        page.body
    );
    assert!(!other.get("/").await.body.contains(NONE_HERE));

    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    let page = browser.get("/").await;
    assert_eq!((page.path.as_str(), page.status), ("/", 200));
    assert!(page.body.contains("name=\"password\""), "{}", page.body);
    let page = browser.get("/session").await;
    assert_eq!(page.path, "/");
    assert!(page.body.contains(NONE_HERE), "{}", page.body);
    app.stop().await;
}

/// The sign-in form sent twice at once (a double click): one Access-Request, one session —
/// not a second that replaces the first with a Stop and a Start; whichever answer the browser
/// keeps shows that session. A different password is a sign-in of its own.
#[tokio::test]
async fn the_same_sign_in_submitted_twice_opens_one_session() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let token = browser.form_token("/").await;
    let form = carol_form(&token);
    let (first, second) = tokio::join!(
        browser.post_raw("/api/login", "/", &form, &[]),
        browser.post_raw("/api/login", "/", &form, &[]),
    );
    assert_eq!(
        (first.path.as_str(), second.path.as_str()),
        ("/session", "/session")
    );
    radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    assert_eq!(
        access_requests_of(&radius, "carol"),
        1,
        "one Access-Request: {:?}",
        radius.auth_lines()
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    let page = browser.get("/session").await;
    assert!(page.body.contains("You are connected"), "{}", page.body);
    // A Refresh and a Disconnect from the page work on that session (the form token is the
    // one the browser kept).
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    let starts = radius
        .acct_lines()
        .iter()
        .filter(|l| l.contains("status=Start"))
        .count();
    assert_eq!(starts, 1, "{:?}", radius.acct_lines());
    app.stop().await;
}

/// The same form sent again while its first sign-in is recent is answered with that session
/// (no Access-Request) — and, since each answer links a web session (a row), counted against
/// the address's limit: a client dropping its web-session cookie to be answered so again and
/// again cannot write rows faster than sign-ins may (a code review).
#[tokio::test]
async fn the_same_sign_in_sent_again_and_again_is_counted_against_the_address() {
    use reqwest::cookie::CookieStore;
    let (radius, app, _dir) = portal_with_one_server_where(|c| c.rate_limit.login_per_ip = 3).await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = app.browser_with_jar(CLIENT, jar.clone());
    let token = browser.form_token("/").await;
    let form = carol_form(&token);
    let page = browser.post_raw("/api/login", "/", &form, &[]).await;
    assert_eq!(page.path, "/session");
    // The anonymous id alone, as the first sign-in was sent with.
    let base: reqwest::Url = format!("http://{}/", app.addr).parse().unwrap();
    let cookies = jar.cookies(&base).unwrap();
    let anonymous = cookies
        .to_str()
        .unwrap()
        .split("; ")
        .find(|c| c.starts_with("portal_anon="))
        .expect("an anonymous id")
        .to_string();
    let mut paths = Vec::new();
    for _ in 0..3 {
        let again = reqwest::cookie::Jar::default();
        again.add_cookie_str(&anonymous, &base);
        let resent = app.browser_with_jar(CLIENT, Arc::new(again));
        paths.push(resent.post_raw("/api/login", "/", &form, &[]).await.path);
    }
    assert_eq!(
        paths,
        ["/session", "/session", "/"],
        "the third is one too many"
    );
    assert_eq!(access_requests_of(&radius, "carol"), 1);
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    app.stop().await;
}

/// A browser that keeps no cookies is told so when its form comes back refused, on that
/// answer (the UI review's M4: redirected to the same empty form, with no word, every time);
/// nothing is sent to RADIUS.
#[tokio::test]
async fn a_browser_without_cookies_is_told_its_sign_in_needs_them() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser_without_cookies(CLIENT);
    let token = browser.form_token("/").await;
    let page = browser
        .post_raw("/api/login", "/", &carol_form(&token), &[])
        .await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains("did not send this portal")
            && page.body.contains("allow cookies for this site"),
        "{}",
        page.body
    );
    // A script's sign-in (JSON) too.
    let body = cookies_refused_to_a_script(&browser, &token, None).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("did not send this portal"),
        "{body}"
    );
    assert_eq!(access_requests_of(&radius, "carol"), 0);
    app.stop().await;
}

/// A visitor cookie planted beside the browser's own (for a narrower path, on plain HTTP where
/// the name has no `__Host-` prefix): neither is taken — the planter's id would be the
/// browser's, its sign-ins refused without a word (the web review's L1) — and the user is
/// told on the answer what to do; nothing is sent to RADIUS.
#[tokio::test]
async fn a_second_visitor_cookie_is_neither_taken_and_the_user_is_told() {
    use reqwest::cookie::CookieStore as _;
    let (radius, app, _dir) = portal_with_one_server().await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = app.browser_with_jar(CLIENT, jar.clone());
    let token = browser.form_token("/").await;
    let own = jar
        .cookies(&format!("http://{}/", app.addr).parse().unwrap())
        .expect("the visitor cookie");
    // The planted one first, as a browser sends the one of the longer path.
    let cookies = format!("portal_anon={}; {}", "ab".repeat(32), own.to_str().unwrap());
    assert!(cookies.matches("portal_anon=").count() == 2, "{cookies}");
    let page = browser
        .post_raw(
            "/api/login",
            "/",
            &carol_form(&token),
            &[("cookie", cookies.as_str())],
        )
        .await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body.contains("sent two of this portal"),
        "{}",
        page.body
    );
    // A script's sign-in (JSON) is told the same, not "out of date, reload" (W's D5).
    let token = browser.form_token("/").await;
    let body = cookies_refused_to_a_script(&browser, &token, Some(&cookies)).await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("sent two of this portal"),
        "{body}"
    );
    assert_eq!(access_requests_of(&radius, "carol"), 0);
    // Not the planter's id taken for the browser's: a new one is given.
    let given = jar
        .cookies(&format!("http://{}/", app.addr).parse().unwrap())
        .expect("the visitor cookie");
    assert_ne!(given, own, "a new visitor id");
    // Its own alone: signed in.
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    app.stop().await;
}

/// The same sign-in sent again after its session ended is a sign-in of its own: the attempt
/// the answer from memory would have taken is given back, so it counts once, not twice (the
/// attempt is taken before the database is read, for a flood of such forms).
#[tokio::test]
async fn the_same_sign_in_sent_again_after_its_session_ended_counts_once() {
    let (radius, app, _dir) = portal_with_one_server_where(|c| c.rate_limit.login_per_ip = 2).await;
    let browser = app.browser(CLIENT);
    let token = browser.form_token("/").await;
    let form = carol_form(&token);
    let page = browser.post_raw("/api/login", "/", &form, &[]).await;
    assert_eq!(page.path, "/session");
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    let page = browser.post_raw("/api/login", "/", &form, &[]).await;
    assert_eq!(
        page.path, "/session",
        "the second of two attempts: {}",
        page.body
    );
    assert_eq!(access_requests_of(&radius, "carol"), 2);
    app.stop().await;
}

/// A Disconnect, or the operator's stop, made after the session's deadline but before the
/// expiry pass reached it (the writer busy, a replica's pass behind) ends it by its deadline:
/// its timeout's cause and its granted time — not User-Request or Admin-Reset with a session
/// time past what was granted (the RADIUS review's L1). The operator is told it stopped the
/// session (it ran until then), not that it was not active.
#[tokio::test]
async fn a_stop_after_the_deadline_ends_the_session_by_its_deadline() {
    let (radius, app, dir) = portal_with_one_server().await;
    let db = rusqlite::Connection::open(dir.path().join("portal.db")).unwrap();
    for (user, by_operator) in [("carol", false), ("bob", true)] {
        let browser = app.browser(CLIENT);
        browser.login(user, &format!("{user}-pass")).await;
        let start = radius
            .wait_for_acct(&["status=Start", &format!("user={user}")])
            .await;
        let token = browser.form_token("/session").await;
        // Its deadline a minute ago, which the expiry pass (asleep until the deadline it knew)
        // has not seen.
        let deadline = radius_portal::access_session::now_ms() - 60_000;
        db.execute(
            "UPDATE access_sessions SET expires_at = MAX(started_at, ?1) WHERE username = ?2 AND state = 'active'",
            rusqlite::params![deadline, user],
        )
        .unwrap();
        if by_operator {
            let session = app
                .storage
                .session_by_acct_id(field(&start, "sid"))
                .await
                .unwrap()
                .unwrap();
            let stopped = app.sessions.stop_by_operator(session.id).await.unwrap();
            assert!(
                stopped,
                "it ran until this stop, which ends it by its deadline"
            );
        } else {
            browser
                .post_raw("/api/disconnect", "/session", &[("csrf", &token)], &[])
                .await;
        }
        let stop = radius
            .wait_for_acct(&["status=Stop", &format!("user={user}")])
            .await;
        assert_eq!(field(&stop, "cause"), "Idle-Timeout", "{user}: {stop}");
    }
    app.stop().await;
}

/// One browser's sign-ins sent together from two addresses (a dual-stack host, two tabs), each
/// with the cookie the browser had: the second replaces the session the first opened, as any
/// sign-in of the browser replaces its session — not a second session the browser holds no
/// link to, which it could neither see nor end (its identity left on an address for hours).
#[tokio::test]
async fn a_browsers_sign_ins_from_two_addresses_at_once_leave_one_session() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let here = app.browser_with_jar(Ipv4Addr::new(127, 0, 0, 41), jar.clone());
    let there = app.browser_with_jar(Ipv4Addr::new(127, 0, 0, 42), jar);
    let token = here.form_token("/").await;
    let running = carol_signs_in_from_both(&app, (&here, &there), &token).await;
    let stop = radius
        .wait_for_acct(&["status=Stop", "cause=Port-Preempted"])
        .await;
    assert_ne!(field(&stop, "sid"), running.acct_session_id);
    // The browser's page is that session's; its Disconnect ends it.
    let page = here.get("/session").await;
    assert!(page.body.contains("You are connected"), "{}", page.body);
    let page = here.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    app.stop().await;
}

/// Two sign-ins of one browser sent together answer with a cookie each, and the browser keeps
/// one: here the one of the session the other sign-in replaced (two tabs that keep their own
/// cookies after a restart; a client library). That browser still holds the session that runs
/// — its page shows it and its Disconnect ends it — not a session ended as "replaced" while
/// the one that replaced it runs on where no page of it shows it.
#[tokio::test]
async fn a_browser_keeping_the_cookie_of_its_replaced_sign_in_holds_the_session_that_replaced_it() {
    use reqwest::cookie::CookieStore;
    let (_radius, app, _dir) = portal_with_one_server().await;
    let base: reqwest::Url = format!("http://{}/", app.addr).parse().unwrap();
    let (here_ip, there_ip) = (Ipv4Addr::new(127, 0, 0, 43), Ipv4Addr::new(127, 0, 0, 44));
    let here_jar = Arc::new(reqwest::cookie::Jar::default());
    let here = app.browser_with_jar(here_ip, here_jar.clone());
    let token = here.form_token("/").await;
    // The other tab: the same cookie, kept apart from here on.
    let there_jar = Arc::new(reqwest::cookie::Jar::default());
    let cookies = here_jar.cookies(&base).unwrap();
    for cookie in cookies.to_str().unwrap().split("; ") {
        there_jar.add_cookie_str(cookie, &base);
    }
    let there = app.browser_with_jar(there_ip, there_jar);
    let running = carol_signs_in_from_both(&app, (&here, &there), &token).await;
    // The cookie of the session replaced: the other address's.
    let (kept, stale) = if running.client_ip == here_ip.to_string() {
        (here, there)
    } else {
        (there, here)
    };
    let page = stale.get("/session").await;
    assert!(page.body.contains("You are connected"), "{}", page.body);
    let page = stale.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    // The other cookie's page says so too.
    let page = kept.get("/session").await;
    assert!(!page.body.contains("You are connected"), "{}", page.body);
    app.stop().await;
}

/// A session page's live stream is about the session the page showed: replaced by another
/// sign-in of the browser a moment later (from another address: a replacement the browser's
/// link follows), it says that session was replaced — the page around it (user, address,
/// message) is that session's — and the page shown again is the session that runs.
#[tokio::test]
async fn a_pages_live_stream_says_its_session_was_replaced_though_the_link_follows() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let here = app.browser_with_jar(Ipv4Addr::new(127, 0, 0, 46), jar.clone());
    let page = here.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session");
    let mut live = here.live_events().await;
    let mut buffer = String::new();
    let first = common::next_event(&mut live, &mut buffer).await;
    assert!(first.contains("Active"), "{first}");
    let there = app.browser_with_jar(Ipv4Addr::new(127, 0, 0, 47), jar);
    assert_eq!(there.login("carol", "carol-pass").await.path, "/session");
    let replaced = tokio::time::timeout(
        Duration::from_secs(10),
        common::next_event(&mut live, &mut buffer),
    )
    .await
    .expect("the page hears of it");
    assert!(replaced.contains("Replaced"), "{replaced}");
    let page = here.get("/session").await;
    assert!(page.body.contains("You are connected"), "{}", page.body);
    assert!(page.body.contains("127.0.0.47"), "{}", page.body);
    app.stop().await;
}

/// carol's sign-in form (with `token`) sent by both browsers at once, each landing on the session
/// page: the one session left running.
async fn carol_signs_in_from_both(
    app: &TestApp,
    (here, there): (&Browser, &Browser),
    token: &str,
) -> radius_portal::storage::AccessSessionRecord {
    let form = carol_form(token);
    let (first, second) = tokio::join!(
        here.post_raw("/api/login", "/", &form, &[]),
        there.post_raw("/api/login", "/", &form, &[]),
    );
    assert_eq!(
        (first.path.as_str(), second.path.as_str()),
        ("/session", "/session")
    );
    let mut running = app
        .storage
        .active_sessions_of(Some("acme"), 10)
        .await
        .unwrap();
    assert_eq!(running.len(), 1, "{running:?}");
    running.remove(0)
}

/// carol's sign-in form with the form token `token`.
/// A script's sign-in (JSON) of carol's with `token`, sending `cookies` (else the browser's
/// own): answered 403 `CookiesRefused`; its body.
async fn cookies_refused_to_a_script(
    browser: &common::Browser,
    token: &str,
    cookies: Option<&str>,
) -> serde_json::Value {
    let mut request = browser
        .http
        .post(format!("{}/api/login", browser.base))
        .header("accept", "application/json")
        .header("origin", browser.base.clone());
    if let Some(cookies) = cookies {
        request = request.header("cookie", cookies);
    }
    let answer = request.form(&carol_form(token)).send().await.unwrap();
    assert_eq!(answer.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "CookiesRefused", "{body}");
    body
}

fn carol_form(token: &str) -> [(&'static str, &str); 3] {
    [
        ("username", "carol"),
        ("password", "carol-pass"),
        ("csrf", token),
    ]
}

/// The Access-Requests FreeRADIUS logged for `user`.
fn access_requests_of(radius: &FreeRadius, user: &str) -> usize {
    radius.access_requests_of(user)
}

/// A portal whose RADIUS server's answers to Access-Requests are held by a relay until
/// released, one at a time (accounting goes straight to the server); metrics on.
struct HeldAnswers {
    radius: FreeRadius,
    app: TestApp,
    held: Arc<Notify>,
    release: Arc<Notify>,
    _dir: tempfile::TempDir,
}

impl HeldAnswers {
    async fn start() -> HeldAnswers {
        let radius = FreeRadius::start().await;
        let (held, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let relay = holding_relay(radius.auth_addr(true), held.clone(), release.clone()).await;
        let (_dir, db) = temp_db();
        let mut server = radius.server_settings("primary", true);
        server.auth_port = relay.port();
        server.timeout = Duration::from_secs(5);
        let mut config = settings(&db, vec![server]);
        config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        // A second organization on the same server (`/o/beta/`).
        let mut beta = config.organizations[0].clone();
        beta.id = "beta".into();
        beta.name = "Beta Org".into();
        config.organizations.push(beta);
        let app = TestApp::spawn(&config).await;
        HeldAnswers {
            radius,
            app,
            held,
            release,
            _dir,
        }
    }

    /// carol's sign-in form posted by `browser` (from `client`) with `token`, in a task.
    fn submit(browser: &Browser, token: &str) -> tokio::task::JoinHandle<common::Page> {
        Self::submit_password(browser, token, "carol-pass")
    }

    /// [`HeldAnswers::submit`] with `password`.
    fn submit_password(
        browser: &Browser,
        token: &str,
        password: &str,
    ) -> tokio::task::JoinHandle<common::Page> {
        let (browser, token, password) = (browser.clone(), token.to_owned(), password.to_owned());
        tokio::spawn(async move {
            let mut form = carol_form(&token);
            form[1].1 = &password;
            browser.post_raw("/api/login", "/", &form, &[]).await
        })
    }

    /// Drops `request` once its Access-Request was answered (the answer held), and waits until
    /// the portal has seen its browser at `client` go away.
    async fn drop_while_held(
        &self,
        request: tokio::task::JoinHandle<common::Page>,
        client: Ipv4Addr,
    ) {
        tokio::time::timeout(Duration::from_secs(15), self.held.notified())
            .await
            .expect("the Access-Request reached FreeRADIUS");
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        wait_connections_closed(self.app.addr, client).await;
    }

    /// Lets `request` through: waits until its Access-Request was answered (the answer held),
    /// lets the answer go, and gives its page.
    async fn let_through(&self, request: tokio::task::JoinHandle<common::Page>) -> common::Page {
        tokio::time::timeout(Duration::from_secs(15), self.held.notified())
            .await
            .expect("the Access-Request reached FreeRADIUS");
        self.release.notify_one();
        request.await.unwrap()
    }

    /// `browser` reloads its sign-in page while its sign-in's answer is held: the page waits
    /// for that sign-in, whose answer is then let go. The page shown.
    async fn reload_while_held(&self, browser: &Browser) -> common::Page {
        let reload = tokio::spawn({
            let browser = browser.clone();
            async move { browser.get("/").await }
        });
        wait_until("the reload waits for the sign-in", || async {
            self.app.sign_ins.waiting() == 1
        })
        .await;
        self.release.notify_one();
        reload.await.unwrap()
    }

    /// `browser` signs in as bob at the portal under `prefix` (`""`, `/o/beta`; its
    /// Access-Request held, then let go), and is shown the session page.
    async fn sign_in_as_bob(&self, browser: &common::Browser, prefix: &str) {
        let bob = tokio::spawn({
            let (browser, prefix) = (browser.clone(), prefix.to_owned());
            async move {
                let token = browser.form_token(&format!("{prefix}/")).await;
                let form = [
                    ("username", "bob"),
                    ("password", "bob-pass"),
                    ("csrf", token.as_str()),
                ];
                browser
                    .post_raw(
                        &format!("{prefix}/api/login"),
                        &format!("{prefix}/"),
                        &form,
                        &[],
                    )
                    .await
            }
        });
        self.held.notified().await;
        self.release.notify_one();
        assert_eq!(bob.await.unwrap().path, format!("{prefix}/session"));
    }

    /// Whether the metrics count `n` accepted sign-ins.
    async fn accepted(&self, n: usize) -> bool {
        let metrics = format!("http://{}/metrics", self.app.metrics_addr.unwrap());
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        text.contains(&format!(
            r#"portal_logins_total{{organization="acme",outcome="Accepted"}} {n}"#
        ))
    }
}

/// A sign-in whose request is dropped on the way (Chromium cancels the first request of a
/// double click; a phone loses its network) runs to its end: its session opens, linked and
/// audited, and the same form sent again is answered with it — one Access-Request, one Start,
/// not a second sign-in that replaces an orphan.
#[tokio::test]
async fn a_sign_in_whose_browser_went_away_finishes_and_the_form_sent_again_gets_its_session() {
    let held = HeldAnswers::start().await;
    let (radius, app) = (&held.radius, &held.app);
    let client = Ipv4Addr::new(127, 0, 0, 23);
    let browser = app.browser(client);
    let token = browser.form_token("/").await;

    // Dropped, and the portal has seen the browser go away, while the answer is still held.
    held.drop_while_held(HeldAnswers::submit(&browser, &token), client)
        .await;
    let second = HeldAnswers::submit(&browser, &token);
    held.release.notify_one();
    let second = second.await.unwrap();

    assert_eq!(second.path, "/session", "{}", second.body);
    assert!(second.body.contains("You are connected"), "{}", second.body);
    radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    assert_eq!(
        access_requests_of(radius, "carol"),
        1,
        "{:?}",
        radius.auth_lines()
    );
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    let audit = app.storage.audit_tail(20).await.unwrap();
    let accepted = audit
        .iter()
        .filter(|e| e.action == "login.accepted")
        .count();
    assert_eq!(accepted, 1, "the accepted attempt is audited once");
    // The browser's Disconnect ends that session: it is linked to the browser.
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    held.app.stop().await;
}

/// A sign-in whose browser gave up on it (a slow server: the user reloads; the request is
/// dropped) opens its session all the same, and the browser's pages show it, linked, with its
/// Disconnect: a reload while the sign-in is still under way waits for it, and a browser that
/// comes back later gets it too — not a sign-in form while the identity runs on at the address
/// (black-box tester U's D1). A browser that never had a web session (its anonymous id) and one
/// that had (the sign-in replaced it, and its new cookie never arrived) alike; another browser
/// at that address is not linked to it, nor the same browser seen from another address.
#[tokio::test]
async fn a_browser_that_gave_up_on_its_sign_in_is_shown_its_session() {
    let held = HeldAnswers::start().await;
    let app = &held.app;
    for (round, (client, signed_in_before)) in [
        (Ipv4Addr::new(127, 0, 0, 26), false),
        (Ipv4Addr::new(127, 0, 0, 27), true),
    ]
    .into_iter()
    .enumerate()
    {
        // acme's sign-ins so far, this round's included (bob's are beta's).
        let accepted = round + 1;
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let browser = app.browser_with_jar(client, jar.clone());
        if signed_in_before {
            // At another organization's portal: that link stays the browser's (tester U2's
            // D1: the sign-in's new web session held it, and its cookie never arrived).
            held.sign_in_as_bob(&browser, "/o/beta").await;
        }
        let token = browser.form_token("/").await;
        held.drop_while_held(HeldAnswers::submit(&browser, &token), client)
            .await;
        let page = if signed_in_before {
            // Comes back once the sign-in is done.
            held.release.notify_one();
            wait_until("the sign-in counted", || held.accepted(accepted)).await;
            // Seen from another address first (its cookies elsewhere): not given it.
            let elsewhere = app.browser_with_jar(Ipv4Addr::new(127, 0, 0, 28), jar.clone());
            let page = elsewhere.get("/session").await;
            assert!(!page.body.contains("You are connected"), "{}", page.body);
            browser.get("/").await
        } else {
            // Reloads while the sign-in is under way: the page waits for it.
            held.reload_while_held(&browser).await
        };
        assert_eq!(page.path, "/session", "{}", page.body);
        assert!(
            page.body.contains("You are connected") && page.body.contains("carol"),
            "{}",
            page.body
        );
        // Another browser at that address is not linked to it.
        let other = app.browser(client);
        let page = other.get("/session").await;
        assert!(!page.body.contains("You are connected"), "{}", page.body);
        let page = browser.post_form("/api/disconnect", "/session", &[]).await;
        assert_eq!(page.path, "/");
        if signed_in_before {
            let page = browser.get("/o/beta/session").await;
            assert!(
                page.body.contains("You are connected") && page.body.contains("bob"),
                "{}",
                page.body
            );
            let page = browser
                .post_form("/o/beta/api/disconnect", "/o/beta/session", &[])
                .await;
            assert_eq!(page.path, "/o/beta/");
        }
        assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    }
    held.app.stop().await;
}

/// A browser whose link there is to a session that has ended (expired, ended by an operator)
/// gives up on its next sign-in: the page reloaded meanwhile waits for it and shows the new
/// session, as for a browser with no link (review: only a browser with none was shown it).
#[tokio::test]
async fn a_browser_linked_to_an_ended_session_that_gave_up_on_its_next_sign_in_is_shown_it() {
    let held = HeldAnswers::start().await;
    let app = &held.app;
    let client = Ipv4Addr::new(127, 0, 0, 30);
    let browser = app.browser(client);
    let token = browser.form_token("/").await;
    let first = held
        .let_through(HeldAnswers::submit(&browser, &token))
        .await;
    assert_eq!(first.path, "/session");
    let session = app
        .session_at(client.into())
        .await
        .expect("the first session runs");
    assert!(app
        .storage
        .stop_session(
            session.id,
            radius_portal::radius::terminate_cause::ADMIN_RESET,
            radius_portal::access_session::now_ms()
        )
        .await
        .unwrap());

    let token = browser.form_token("/").await;
    held.drop_while_held(HeldAnswers::submit(&browser, &token), client)
        .await;
    let page = held.reload_while_held(&browser).await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert!(page.body.contains("You are connected"), "{}", page.body);
    held.app.stop().await;
}

/// A sign-in its browser gave up on (a slow server; the user reloaded) that then fails: the
/// page reloaded during it says so, as the sign-in's own answer would have, with the name typed
/// filled in again — once (tester U2's D2: a plain form said nothing of it). A sign-in made
/// after it answers for itself: the earlier failure is not told on top of it.
#[tokio::test]
async fn a_browser_that_gave_up_on_a_failing_sign_in_is_told_it_failed() {
    let held = HeldAnswers::start().await;
    let app = &held.app;
    let client = Ipv4Addr::new(127, 0, 0, 29);
    let browser = app.browser(client);
    let token = browser.form_token("/").await;
    let refused = |page: &common::Page| {
        page.body.contains("Sign-in refused") && page.body.contains(r#"value="carol""#)
    };
    for told in [true, false] {
        held.drop_while_held(
            HeldAnswers::submit_password(&browser, &token, "wrong"),
            client,
        )
        .await;
        if told {
            let page = held.reload_while_held(&browser).await;
            assert_eq!(page.path, "/", "{}", page.body);
            assert!(refused(&page), "{}", page.body);
            // Told once.
            let page = browser.get("/").await;
            assert!(!refused(&page), "{}", page.body);
        } else {
            // Given up on, and then a sign-in of its own, answered: only its answer is shown.
            held.release.notify_one();
            wait_until("the refusal counted", || async {
                app.storage
                    .audit_tail(20)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|e| e.action == "login.rejected")
                    .count()
                    == 2
            })
            .await;
            // (No page seen in between: the form shown before.)
            let own = held
                .let_through(HeldAnswers::submit(&browser, &token))
                .await;
            assert_eq!(own.path, "/session");
            let page = browser.post_form("/api/disconnect", "/session", &[]).await;
            assert_eq!(page.path, "/");
            assert!(!refused(&page), "{}", page.body);
        }
    }
    held.app.stop().await;
}

/// A wrong password submitted twice at once (a double click): one Access-Request, so the
/// server counts one failed attempt against the account, and both answers say it was refused.
/// The form sent again once the refusal was shown is a sign-in of its own.
#[tokio::test]
async fn a_refused_sign_in_submitted_twice_sends_one_access_request() {
    let held = HeldAnswers::start().await;
    let (radius, app) = (&held.radius, &held.app);
    let browser = app.browser(Ipv4Addr::new(127, 0, 0, 24));
    let token = browser.form_token("/").await;

    let first = HeldAnswers::submit_password(&browser, &token, "wrong");
    tokio::time::timeout(Duration::from_secs(15), held.held.notified())
        .await
        .expect("the Access-Request reached FreeRADIUS");
    let second = HeldAnswers::submit_password(&browser, &token, "wrong");
    wait_until("the second submit waits for the first", || async {
        app.sign_ins.waiting() == 1
    })
    .await;
    held.release.notify_one();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    for page in [&first, &second] {
        assert_eq!(page.path, "/", "{}", page.body);
        assert!(page.body.contains("Sign-in refused"), "{}", page.body);
    }
    assert_eq!(
        access_requests_of(radius, "carol"),
        1,
        "{:?}",
        radius.auth_lines()
    );
    let audit = app.storage.audit_tail(20).await.unwrap();
    let refused = audit
        .iter()
        .filter(|e| e.action == "login.rejected")
        .count();
    assert_eq!(refused, 1, "the refusal is audited once: {audit:?}");

    // Tried again after the answer: sent to the server.
    let again = held
        .let_through(HeldAnswers::submit_password(&browser, &token, "wrong"))
        .await;
    assert!(again.body.contains("Sign-in refused"));
    assert_eq!(access_requests_of(radius, "carol"), 2);
    held.app.stop().await;
}

/// The same for a browser that comes back with a web session of its own (signed in before):
/// the dropped sign-in replaces that web session, whose new cookie never reaches the browser,
/// so the form sent again carries a cookie that names nothing and a form token that is out of
/// date — and is still answered with the session the dropped sign-in opened, not refused.
#[tokio::test]
async fn a_returning_browser_whose_sign_in_was_dropped_gets_its_session_with_the_form_sent_again() {
    let held = HeldAnswers::start().await;
    let (radius, app) = (&held.radius, &held.app);
    let client = Ipv4Addr::new(127, 0, 0, 25);
    let browser = app.browser(client);
    // Signed in before as bob, and still: the browser has a web session (and its form token).
    held.sign_in_as_bob(&browser, "").await;
    let token = browser.form_token("/session").await;
    wait_until("bob's sign-in counted", || held.accepted(1)).await;

    // carol signs in on it; the request is dropped while the Access-Accept is held.
    held.drop_while_held(HeldAnswers::submit(&browser, &token), client)
        .await;
    held.release.notify_one();
    // Its sign-in ran to its end: counted once its session is linked (to a web session whose
    // cookie the browser never got).
    wait_until("carol's sign-in counted", || held.accepted(2)).await;

    let again = HeldAnswers::submit(&browser, &token).await.unwrap();

    assert_eq!(again.path, "/session", "{}", again.body);
    assert!(again.body.contains("carol"), "{}", again.body);
    assert_eq!(access_requests_of(radius, "carol"), 1);
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    held.app.stop().await;
}

/// The sign-in form sent again after its answer came back (the sign-in changed the browser's
/// form token, so the form is out of date): the browser is shown its running session, not an
/// error; nothing is sent to RADIUS.
#[tokio::test]
async fn an_out_of_date_sign_in_form_from_a_signed_in_browser_shows_its_session() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let token = browser.form_token("/").await;
    let form = carol_form(&token);
    let first = browser.post_raw("/api/login", "/", &form, &[]).await;
    assert_eq!(first.path, "/session", "{}", first.body);
    radius.wait_for_acct(&["status=Start", "user=carol"]).await;

    let again = browser.post_raw("/api/login", "/", &form, &[]).await;

    assert_eq!((again.status, again.path.as_str()), (200, "/session"));
    assert!(again.body.contains("You are connected"), "{}", again.body);
    assert_eq!(access_requests_of(&radius, "carol"), 1);
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    // The same out-of-date form with another name is a sign-in as someone else, which it
    // cannot make: refused, saying what to do (reloading would show carol's session, not a
    // form; the form shown with the refusal replaces it), and carol's session runs on.
    let erin = [
        ("username", "erin"),
        ("password", "erin-pass"),
        ("csrf", &token),
    ];
    let refused = browser.post_raw("/api/login", "/", &erin, &[]).await;
    assert_eq!(refused.path, "/", "{}", refused.body);
    assert!(
        refused
            .body
            .contains("already signed in here with another name"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("that ends the session signed in now"),
        "{}",
        refused.body
    );
    assert!(
        !refused.body.contains(r#"name="csrf" value="""#),
        "{}",
        refused.body
    );
    assert_eq!(access_requests_of(&radius, "erin"), 0);
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    // A form with no token at all is not an out-of-date form of the portal's (every form it
    // renders has one): refused as such, naming the field, even under the session's name.
    let bare = [("username", "carol"), ("password", "not-carols")];
    let refused = browser.post_raw("/api/login", "/", &bare, &[]).await;
    assert_eq!(refused.path, "/", "{}", refused.body);
    assert!(refused.body.contains("no form token"), "{}", refused.body);
    assert_eq!(access_requests_of(&radius, "carol"), 1);
    // Another browser's out-of-date form (no session of its own) is still refused.
    let stranger = app.browser(Ipv4Addr::new(127, 0, 0, 24));
    stranger.get("/").await;
    let refused = stranger.post_raw("/api/login", "/", &form, &[]).await;
    assert_eq!(refused.path, "/", "{}", refused.body);
    assert!(!refused.body.contains("You are connected"));
    assert_eq!(access_requests_of(&radius, "carol"), 1);
    app.stop().await;
}

/// A disable is the answer to the form sent again, before its stop job has reached the
/// browser's session and after: the sign-in page's own form is not answered "connected" for a
/// disabled organization, nor "out of date" (reloading shows the disable), and nothing is sent.
#[tokio::test]
async fn a_form_sent_again_after_a_disable_is_refused_before_the_stop_job_runs() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let token = browser.form_token("/").await;
    let form = carol_form(&token);
    let first = browser.post_raw("/api/login", "/", &form, &[]).await;
    assert_eq!(first.path, "/session", "{}", first.body);
    radius.wait_for_acct(&["status=Start", "user=carol"]).await;

    // Stored as `org disable` stores it; the job worker learns of it at its next poll.
    app.storage
        .set_organization_active(
            "acme",
            false,
            "test",
            radius_portal::access_session::now_ms(),
        )
        .await
        .unwrap();
    let again = browser.post_raw("/api/login", "/", &form, &[]).await;

    assert!(!again.body.contains("You are connected"), "{}", again.body);
    assert!(
        again.body.contains("This organization is disabled"),
        "{}",
        again.body
    );
    // Once the stop job has ended the session, the same form (out of date: the sign-in
    // changed the browser's token) is answered with the disable too.
    radius.wait_for_acct(&["status=Stop", "user=carol"]).await;
    let late = browser.post_raw("/api/login", "/", &form, &[]).await;
    assert!(late.body.contains("has been disabled"), "{}", late.body);
    assert!(!late.body.contains("out of date"), "{}", late.body);
    // A script's call says it as well.
    let answer = browser
        .http
        .post(format!("{}/api/login", browser.base))
        .header("accept", "application/json")
        .form(&form)
        .send()
        .await
        .unwrap();
    let text = answer.text().await.unwrap();
    assert!(text.contains("OrganizationDisabled"), "{text}");
    assert_eq!(access_requests_of(&radius, "carol"), 1);
    app.stop().await;
}

/// The out-of-date form of a browser whose session the RADIUS server named differently (a
/// User-Name in the Accept: `mirror` became another name altogether) is the same sign-in when
/// it carries the name typed then: the browser is shown its session, not told it is signed in
/// "with another name", and nothing is sent.
#[tokio::test]
async fn an_out_of_date_form_with_the_name_typed_is_the_same_sign_in_whatever_the_server_named_it()
{
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let token = browser.form_token("/").await;
    let signed_in = browser
        .post_raw(
            "/api/login",
            "/",
            &[
                ("username", "mirror"),
                ("password", "mirror-pass"),
                ("csrf", &token),
            ],
            &[],
        )
        .await;
    assert_eq!(signed_in.path, "/session", "{}", signed_in.body);
    radius.wait_for_acct(&["status=Start"]).await;
    // Another password than the one sent: the same form sent again within seconds is answered
    // by the re-submit rule (same name, password and address); this is the out-of-date form's
    // own rule, whenever it comes.
    let again = browser
        .post_raw(
            "/api/login",
            "/",
            &[
                ("username", "MIRROR"),
                ("password", "typo"),
                ("csrf", &token),
            ],
            &[],
        )
        .await;
    assert_eq!(
        (again.status, again.path.as_str()),
        (200, "/session"),
        "{}",
        again.body
    );
    assert!(again.body.contains("You are connected"), "{}", again.body);
    assert_eq!(access_requests_of(&radius, "mirror"), 1);
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    // Disconnect ends it as always (the web session forgets the session and the name with it).
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    app.stop().await;
}

/// A browser that sends no Referer (a privacy setting, a script) whose Refresh fails (here an
/// out-of-date form) is sent back to its session page, which says why — not to the sign-in
/// page, which would send a signed-in browser on to the session page without the message.
#[tokio::test]
async fn a_failed_refresh_without_a_referer_is_told_on_the_session_page() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    browser.login("carol", "carol-pass").await;
    let response = browser
        .http
        .post(format!("{}/api/refresh", browser.base))
        .header("origin", browser.base.clone())
        .header("accept", "text/html")
        .form(&[("csrf", "0000")])
        .send()
        .await
        .unwrap();
    let page = Browser::page(response).await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert!(page.body.contains("out of date"), "{}", page.body);
    assert!(page.body.contains("You are connected"), "{}", page.body);
    app.stop().await;
}

#[tokio::test]
async fn the_limit_expiring_stops_the_session_with_session_timeout() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    browser.login("gina", "gina-pass").await;

    let stop = radius.wait_for_acct(&["status=Stop", "user=gina"]).await;

    assert_eq!(field(&stop, "cause"), "Session-Timeout");
    assert_eq!(field(&stop, "session_time"), "2");
    // The session page, reloaded (no JavaScript needed), says it ended and why.
    let page = browser.get("/session").await;
    assert_eq!((page.status, page.path.as_str()), (200, "/session"));
    assert!(
        page.body.contains("Your session has ended."),
        "{}",
        page.body
    );
    assert!(page.body.contains("It reached its maximum length."));
    app.stop().await;
}

/// A session the operator ended is shown as ended, with why, on the next load of the session
/// page (no silent jump to the sign-in form); a browser that never signed in is sent there.
#[tokio::test]
async fn the_session_page_says_why_the_session_ended() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    browser.login("carol", "carol-pass").await;
    let session = app
        .sessions
        .active_for_client("acme", CLIENT.into())
        .await
        .unwrap()
        .expect("carol's session");
    assert!(app.sessions.stop_by_operator(session.id).await.unwrap());
    radius.wait_for_acct(&["status=Stop", "user=carol"]).await;

    let page = browser.get("/session").await;
    assert_eq!((page.status, page.path.as_str()), (200, "/session"));
    assert!(page.body.contains("Session ended"), "{}", page.body);
    assert!(page.body.contains("It was ended by the network operator."));
    assert!(page.body.contains("Sign in again"));
    assert!(
        !page.body.contains("Disconnect"),
        "no controls for an ended session"
    );
    // Under the organization's own prefix too, the way back stays under it.
    let page = browser.get("/o/acme/session").await;
    assert_eq!((page.status, page.path.as_str()), (200, "/o/acme/session"));
    assert!(page.body.contains("It was ended by the network operator."));
    assert!(page.body.contains("href=\"/o/acme/\""), "{}", page.body);

    let stranger = app.browser(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(stranger.get("/session").await.path, "/");

    // A disabled organization offers no sign-in: the page says so instead of the link.
    app.set_organization_active("acme", false).await;
    let page = browser.get("/session").await;
    assert!(
        page.body.contains("Your session has ended."),
        "{}",
        page.body
    );
    assert!(page.body.contains("has been disabled"), "{}", page.body);
    assert!(!page.body.contains("Sign in again"), "{}", page.body);
    // The operator's stop now reads as the disable it amounts to (the live panel says the same).
    assert!(
        page.body.contains("who disabled this organization"),
        "{}",
        page.body
    );
    app.stop().await;
}

#[tokio::test]
async fn a_browser_that_lost_its_link_is_told_the_session_runs_on_not_that_it_ended() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    // The same device with its cookies cleared: no link to the session, same address. A page
    // loaded so is the sign-in page (the address's session may be another device's behind the
    // same address); the open page's poll and stream hear that it runs on without this browser.
    let cleared = app.browser(CLIENT);
    assert_eq!(cleared.get("/session").await.path, "/");
    // The live panel's poll and its stream say the same.
    let status = |b: &Browser| {
        let request = b
            .http
            .post(format!("{}/api/session_status", b.base))
            .header("accept", "application/json");
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(status(&cleared).await, r#"{"Ended":"NotLinked"}"#);
    let mut events = cleared
        .http
        .get(format!("{}/session/events", cleared.base))
        .send()
        .await
        .unwrap();
    let first = events.chunk().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains(r#"data: {"Ended":"NotLinked"}"#), "{first}");
    // Another device's address has no session of its own: no such claim, the sign-in page.
    let stranger = app.browser(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(stranger.get("/session").await.path, "/");
    assert_eq!(status(&stranger).await, r#""NoSession""#);
    // The page's own session named (its `session_ref`), asked from another address — a
    // dual-stack laptop's page over IPv6, one moved to another network (the UI review's H1:
    // read as "disconnected" while it ran): it runs without this browser. A reference the
    // portal did not sign names nothing.
    let view = browser.script_json("/api/current_session").await;
    let shown = view["session_ref"]
        .as_str()
        .expect("a session_ref")
        .to_string();
    let asked = |b: &Browser, shown: String| {
        let request = b
            .http
            .post(format!("{}/api/session_status", b.base))
            .header("accept", "application/json")
            .form(&[("shown", shown)]);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(
        asked(&stranger, shown.clone()).await,
        r#"{"Ended":"NotLinked"}"#
    );
    let (id, _) = shown.split_once('.').unwrap();
    let forged = format!("{id}.{}", "0".repeat(32));
    assert_eq!(asked(&stranger, forged).await, r#""NoSession""#);
    let mut events = stranger
        .http
        .get(format!("{}/session/events?shown={shown}", stranger.base))
        .send()
        .await
        .unwrap();
    let first = events.chunk().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains(r#"data: {"Ended":"NotLinked"}"#), "{first}");
    // Without JavaScript too: the open page's Refresh or Disconnect, posted from the browser
    // whose cookies were cleared, says the session runs on — never "no session" while the
    // device's network access stays open.
    let open_page_token = browser.form_token("/session").await;
    for action in ["/api/refresh", "/api/disconnect"] {
        let page = cleared
            .post_raw(action, "/session", &[("csrf", &open_page_token)], &[])
            .await;
        assert_eq!(
            (page.status, page.path.as_str()),
            (200, "/session"),
            "{action}"
        );
        assert!(
            page.body.contains("Not signed in") && page.body.contains("still running"),
            "{action}: {}",
            page.body
        );
        assert!(!page.body.contains("No session"), "{action}: {}", page.body);
    }
    assert!(
        radius
            .acct_lines()
            .iter()
            .all(|l| !l.contains("status=Stop")),
        "nothing was stopped"
    );

    // Disconnected in another tab of the first browser: its stale page's Refresh (no
    // JavaScript) says there is no session, rather than landing on the sign-in page mutely.
    let stale_token = browser.form_token("/session").await;
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(page.path, "/");
    radius.wait_for_acct(&["status=Stop", "user=carol"]).await;
    assert_eq!(status(&cleared).await, r#""NoSession""#);
    // The page's session named: how it ended.
    assert_eq!(asked(&stranger, shown).await, r#"{"Ended":"Disconnected"}"#);
    let page = browser
        .post_raw("/api/refresh", "/session", &[("csrf", &stale_token)], &[])
        .await;
    assert_eq!((page.status, page.path.as_str()), (200, "/session"));
    assert!(page.body.contains("<title>No session"), "{}", page.body);
    assert!(
        page.body
            .contains("You have no active session. Please sign in."),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("disconnected from another tab"),
        "why, as far as the page can know: {}",
        page.body
    );
    // Shown once: the next view of the page is the sign-in page again.
    assert_eq!(browser.get("/session").await.path, "/");
    app.stop().await;
}

#[tokio::test]
async fn the_window_expiring_stops_the_session_with_idle_timeout() {
    let (radius, app, _dir) = portal_with_one_server().await;
    app.browser(CLIENT).login("hugo", "hugo-pass").await;

    let stop = radius.wait_for_acct(&["status=Stop", "user=hugo"]).await;

    assert_eq!(field(&stop, "cause"), "Idle-Timeout");
    assert_eq!(field(&stop, "session_time"), "2");
    app.stop().await;
}

#[tokio::test]
async fn sessions_survive_a_restart_and_those_due_meanwhile_are_stopped_late_with_delay_time() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let config = settings(&db, vec![radius.server_settings("primary", true)]);
    let app = TestApp::spawn(&config).await;
    let short = app.browser(Ipv4Addr::new(127, 0, 0, 2));
    let long = app.browser(Ipv4Addr::new(127, 0, 0, 3));
    short.login("ivan", "ivan-pass").await;
    long.login("judy", "judy-pass").await;
    radius.wait_for_acct(&["status=Start", "user=ivan"]).await;
    radius.wait_for_acct(&["status=Start", "user=judy"]).await;
    let storage = app.storage.clone();
    let ivan = storage
        .session(1)
        .await
        .unwrap()
        .expect("ivan's session is row 1");
    assert_eq!(ivan.username, "ivan");
    app.stop().await;

    // The portal is down while ivan's 3-second limit passes.
    wait_for("ivan's deadline to pass", Duration::from_secs(10), || {
        (radius_portal::access_session::now_ms() > ivan.expires_at + 1500).then_some(())
    })
    .await;
    assert!(
        radius
            .acct_lines()
            .iter()
            .all(|l| !l.contains("status=Stop")),
        "nothing stopped while down"
    );

    let app = TestApp::spawn(&config).await;
    let stop = radius.wait_for_acct(&["status=Stop", "user=ivan"]).await;
    assert_eq!(field(&stop, "cause"), "Session-Timeout");
    assert_eq!(
        field(&stop, "session_time"),
        "3",
        "session time ends at the deadline, not at the restart"
    );
    let delay: u32 = field(&stop, "delay").parse().unwrap();
    assert!(delay >= 1, "Acct-Delay-Time says the Stop is late: {stop}");

    // judy's session is untouched and her browser (same cookie) still sees it.
    let base = format!("http://{}", app.addr);
    let response = long
        .http
        .get(format!("{base}/session"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(body.contains("judy"), "judy's session survived the restart");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    assert!(radius
        .acct_lines()
        .iter()
        .all(|l| !(l.contains("status=Stop") && l.contains("user=judy"))));
    app.stop().await;
}

#[tokio::test]
async fn login_fails_over_to_the_backup_and_accounts_there() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut dead = radius.server_settings("dead-primary", true);
    // Nothing listens here: requests go unanswered (or are refused) and time out.
    dead.auth_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    dead.acct_port = dead.auth_port;
    dead.timeout = Duration::from_millis(200);
    dead.retries = 1;
    let app = TestApp::spawn(&settings(
        &db,
        vec![dead, radius.server_settings("backup", true)],
    ))
    .await;

    let page = app.browser(CLIENT).login("carol", "carol-pass").await;

    assert_eq!(page.path, "/session", "{}", page.body);
    radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let session = app.storage.session(1).await.unwrap().unwrap();
    assert_eq!(
        session.server_name, "backup",
        "accounting goes to the server that authenticated"
    );
    app.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let app = TestApp::spawn(&config).await;
    let xff = [("x-forwarded-for", "6.6.6.6, 198.51.100.7")];
    let login = [("username", "carol"), ("password", "carol-pass")];

    let page = app
        .browser(CLIENT)
        .post_form_with("/api/login", "/", &login, &xff)
        .await;
    assert!(
        page.body.contains("198.51.100.7"),
        "via the trusted proxy, the forwarded client is used"
    );
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    assert_eq!(field(&start, "ip"), "198.51.100.7");

    let untrusted = Ipv4Addr::new(127, 0, 0, 9);
    let login = [("username", "erin"), ("password", "erin-pass")];
    app.browser(untrusted)
        .post_form_with("/api/login", "/", &login, &xff)
        .await;
    let start = radius.wait_for_acct(&["status=Start", "user=erin"]).await;
    assert_eq!(
        field(&start, "ip"),
        "127.0.0.9",
        "a spoofed header from elsewhere is ignored"
    );
    let auth = radius
        .auth_lines()
        .into_iter()
        .find(|l| l.contains("user=erin"))
        .unwrap();
    assert!(auth.contains("calling=127.0.0.9"), "{auth}");

    // Through the trusted proxy, a client's own `Forwarded` (passed through by nginx, which
    // only appends to X-Forwarded-For) is not read: the configured header alone counts.
    let login = [("username", "judy"), ("password", "judy-pass")];
    let page = app
        .browser(CLIENT)
        .post_form_with(
            "/api/login",
            "/",
            &login,
            &[
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-for", "[2001:db8::7]:4711"),
            ],
        )
        .await;
    assert!(page.body.contains("2001:db8::7"), "{}", page.body);
    let auth = radius
        .auth_lines()
        .into_iter()
        .find(|l| l.contains("user=judy"))
        .unwrap();
    assert!(auth.contains("calling=2001:db8::7"), "{auth}");

    // Forwarding data from the trusted proxy that is not an address: 400, nothing sent.
    for bad in [
        "unknown",
        "198.51.100.9, not-an-ip",
        "198.51.100.9, caf\u{e9}",
    ] {
        let login = [("username", "frank"), ("password", "frank-pass")];
        let page = app
            .browser(CLIENT)
            .post_form_with("/api/login", "/", &login, &[("x-forwarded-for", bad)])
            .await;
        assert_eq!(page.status, 400, "{bad}: {}", page.body);
        assert!(page.body.contains("x-forwarded-for"), "{}", page.body);
    }
    // The probes do not use the client's address: they answer whatever the proxy says of it.
    let browser = app.browser(CLIENT);
    for probe in ["/healthz", "/readyz"] {
        let answer = browser
            .http
            .get(format!("{}{probe}", browser.base))
            .header("x-forwarded-for", "unknown")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{probe}");
    }
    // Through the trusted proxy without the header the client is unknown: no login (taking
    // the proxy's address would make every user behind it one client).
    let page = app.browser(CLIENT).login("frank", "frank-pass").await;
    assert!(
        page.body.contains("cannot tell your device"),
        "{}",
        page.body
    );
    let response = app
        .browser(CLIENT)
        .login_as_script("frank", "frank-pass")
        .await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "AddressUnknown", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("address"),
        "{body}"
    );
    // The proxy's own requests still work.
    assert_eq!(app.browser(CLIENT).get("/healthz").await.status, 200);
    assert!(
        !radius.auth_lines().iter().any(|l| l.contains("user=frank")),
        "no Access-Request for a refused request"
    );
    app.stop().await;
}

#[tokio::test]
async fn acct_interim_interval_from_the_accept_sends_periodic_interim_updates() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.organizations[0].min_interim_interval = Duration::from_secs(1);
    let app = TestApp::spawn(&config).await;
    app.browser(CLIENT).login("kate", "kate-pass").await;
    let start = radius.wait_for_acct(&["status=Start", "user=kate"]).await;
    let sid = format!("sid={}", field(&start, "sid"));

    let interims = wait_for(
        "two periodic Interim-Updates",
        Duration::from_secs(15),
        || {
            let lines: Vec<String> = radius
                .acct_lines()
                .into_iter()
                .filter(|l| l.contains("status=Interim-Update") && l.contains(&sid))
                .collect();
            (lines.len() >= 2).then_some(lines)
        },
    )
    .await;
    let times: Vec<u32> = interims
        .iter()
        .map(|l| field(l, "session_time").parse().unwrap())
        .collect();
    assert!(times[1] > times[0], "Acct-Session-Time grows: {times:?}");
    app.stop().await;
}

#[tokio::test]
async fn state_changing_posts_without_the_form_token_are_refused() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let login = [("username", "carol"), ("password", "carol-pass")];
    // A visitor of the page (one that sends no cookie is told it needs them).
    browser.get("/").await;

    // Without the field: told which field is missing.
    let page = browser.post_raw("/api/login", "/", &login, &[]).await;
    assert!(
        page.body.contains("no form token (its csrf field)"),
        "{}",
        page.body
    );
    let forged = [
        ("username", "carol"),
        ("password", "carol-pass"),
        ("csrf", "0000"),
    ];
    let page = browser.post_raw("/api/login", "/", &forged, &[]).await;
    assert!(
        page.body.contains("refused for your security"),
        "{}",
        page.body
    );
    assert!(radius.auth_lines().is_empty(), "nothing reached RADIUS");

    browser.login("carol", "carol-pass").await;
    radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    browser
        .post_raw("/api/disconnect", "/session", &[], &[])
        .await;
    assert_eq!(
        app.storage.active_sessions().await.unwrap(),
        1,
        "a disconnect without the token does nothing"
    );

    // A cross-site post is refused before it reaches the portal, token or not.
    let token = browser.form_token("/session").await;
    let page = browser
        .post_raw(
            "/api/disconnect",
            "/session",
            &[("csrf", &token)],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(page.status, 403);
    assert_eq!(app.storage.active_sessions().await.unwrap(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_username_the_organizations_pattern_refuses_is_told_which_character() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.organizations[0].username_pattern = "^[a-z]+$".into();
    let app = TestApp::spawn(&config).await;
    let page = app.browser(CLIENT).login("carol!", "carol-pass").await;
    assert!(
        page.body.contains("Username must not contain “!”."),
        "{}",
        page.body
    );
    assert!(radius.auth_lines().is_empty(), "nothing sent");
    let page = app.browser(CLIENT).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_session_timeout_counts_its_shortest_and_reply_messages_keep_their_lines() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let page = browser.login("lena", "lena-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    assert!(
        page.body.contains("the maximum session length"),
        "{}",
        page.body
    );
    // Each Reply-Message on a line of its own (the page keeps the line break).
    assert!(page.body.contains("Line one\nLine two"), "{}", page.body);
    let captive: serde_json::Value = serde_json::from_str(
        &browser
            .http
            .get(format!("{}/captive-portal/api", browser.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let left = captive["seconds-remaining"].as_u64().unwrap();
    assert!(
        left <= 60,
        "the 60-second Session-Timeout, not 7200: {left}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_captive_portal_api_reports_the_clients_own_session() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let captive = |b: &common::Browser| {
        let request = b.http.get(format!("{}/captive-portal/api", b.base)).send();
        async move {
            let response = request.await.unwrap();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(content_type, "application/captive+json");
            serde_json::from_str::<serde_json::Value>(&response.text().await.unwrap()).unwrap()
        }
    };

    // An OS assistant polling it is handed no cookie.
    let polled = reqwest::get(format!("{}/captive-portal/api", browser.base))
        .await
        .unwrap();
    assert!(
        polled.headers().get("set-cookie").is_none(),
        "{:?}",
        polled.headers()
    );
    let before = captive(&browser).await;
    assert_eq!(before["captive"], true);
    assert!(before["user-portal-url"].as_str().unwrap().ends_with('/'));
    assert!(before.get("seconds-remaining").is_none());

    browser.login("bob", "bob-pass").await;
    let during = captive(&browser).await;
    assert_eq!(during["captive"], false);
    let left = during["seconds-remaining"].as_u64().unwrap();
    assert!((1..=20).contains(&left), "within bob's 20 s window: {left}");
    assert_eq!(during["can-extend-session"], true);
    assert!(during["user-portal-url"]
        .as_str()
        .unwrap()
        .ends_with("/session"));

    let other = app.browser(Ipv4Addr::new(127, 0, 0, 5));
    assert_eq!(
        captive(&other).await["captive"],
        true,
        "another client's session is not yours"
    );

    browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(captive(&browser).await["captive"], true);
    app.stop().await;
}

#[tokio::test]
async fn repeated_logins_for_one_username_are_rate_limited_with_retry_after() {
    let (radius, app, _dir) =
        portal_with_one_server_where(|c| c.rate_limit.login_per_user = 2).await;
    let browser = app.browser(CLIENT);

    for _ in 0..2 {
        let page = browser.login("dave", "guess").await;
        assert!(page.body.contains("Account locked"), "{}", page.body);
    }
    let page = browser.login("DAVE", "guess").await;
    assert!(
        page.body.contains("Too many sign-in attempts"),
        "usernames are limited case-blind: {}",
        page.body
    );

    let response = browser.login_as_script("dave", "guess").await;
    assert_eq!(response.status().as_u16(), 429);
    // The JSON says it; Leptos's own mark of a failed call is not passed on (tester Q's D4).
    assert!(
        response.headers().get("serverfnerror").is_none(),
        "{:?}",
        response.headers()
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=31).contains(&retry_after), "{retry_after}");

    let attempts = radius
        .auth_lines()
        .iter()
        .filter(|l| l.contains("user=dave"))
        .count();
    assert_eq!(attempts, 2, "limited attempts never reach RADIUS");
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(
        page.path, "/session",
        "another username from the same address still works"
    );
    app.stop().await;
}

/// A failed plain form post keeps its message in the web session, not in the URL: the
/// redirect names only the page, the page shows the message once, and a crafted link carrying
/// Leptos' error parameters shows nothing.
#[tokio::test]
async fn form_errors_travel_in_the_web_session_never_in_the_url() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 3, 1));
    let token = browser.form_token("/").await;
    let no_redirects = reqwest::Client::builder()
        .cookie_store(true)
        .local_address(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{}", app.addr);
    // The same cookie as the form token's page: take it from the first client.
    let page = no_redirects.get(format!("{base}/")).send().await.unwrap();
    let body = page.text().await.unwrap();
    let marker = "name=\"csrf\" value=\"";
    let start = body.find(marker).unwrap() + marker.len();
    let token_here = body[start..].split('"').next().unwrap().to_string();
    assert!(!token.is_empty() && !token_here.is_empty());

    for (referer, expected) in [(Some(format!("{base}/")), "/"), (None, "/")] {
        let mut post = no_redirects
            .post(format!("{base}/api/login"))
            .header("accept", "text/html")
            .header("origin", base.clone())
            .form(&[
                ("username", "dave"),
                ("password", "x"),
                ("csrf", &token_here),
            ]);
        if let Some(referer) = &referer {
            post = post.header("referer", referer);
        }
        let response = post.send().await.unwrap();
        assert!(response.status().is_redirection(), "{}", response.status());
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(
            location, expected,
            "no error in the URL (referer {referer:?})"
        );
        let shown = no_redirects
            .get(format!("{base}{location}"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(shown.contains("Sign-in refused: Account locked"), "{shown}");
        let again = no_redirects
            .get(format!("{base}{location}"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!again.contains("Sign-in refused"), "shown once");
    }

    // A crafted link with an attacker's text in Leptos' error parameters shows nothing.
    use base64::Engine;
    let err = base64::engine::general_purpose::URL_SAFE
        .encode(br#"{"error":"Rejected","message":"Sign-in refused: Call 555-0100 to unlock","reply_message":"Call 555-0100 to unlock"}"#);
    for query in [
        format!("__path=%2Fapi%2Flogin&__err={err}"),
        format!("%5F%5Fpath=%2Fapi%2Flogin&%5F%5Ferr={err}"),
        // Too long to rebuild without them once re-encoded (`!` → `%21`): still nothing.
        format!("__path=%2Fapi%2Flogin&__err={err}&p={}", "!".repeat(22_000)),
    ] {
        let crafted = reqwest::Client::new()
            .get(format!("{base}/?{query}"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(crafted.contains("Sign in"), "{crafted}");
        assert!(!crafted.contains("555-0100"), "{query}: {crafted}");
    }
    app.stop().await;
}

/// `[metrics] listen`: Prometheus text on its own port (not the users'), counting sign-ins by
/// organization and outcome, RADIUS exchanges per server, HTTP requests by route, and the
/// state read at the scrape (open sessions, accounting backlog, breakers, tasks).
#[tokio::test]
async fn metrics_count_what_happened_on_their_own_listener() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn(&config).await;
    let scrape = || app.metrics_text();
    // Before anything happened every configured organization and server has its series, at 0
    // (an alert on "= 0" or `absent()` sees them from the start).
    let (auth, acct) = (
        format!("127.0.0.1:{}", radius.strict_port),
        format!("127.0.0.1:{}", radius.acct_port),
    );
    let fresh = scrape().await;
    for expected in [
        r#"portal_active_sessions{organization="acme"} 0"#.to_string(),
        format!(r#"portal_radius_breaker_state{{address="{auth}"}} 0"#),
        format!(r#"portal_radius_breaker_state{{address="{acct}"}} 0"#),
        format!(
            r#"portal_radius_timeouts_total{{address="{acct}",port="acct",server="primary"}} 0"#
        ),
    ] {
        assert!(fresh.contains(&expected), "{expected} missing in:\n{fresh}");
    }

    let page = app.browser(CLIENT).login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    app.browser(Ipv4Addr::new(127, 0, 0, 2))
        .login("dave", "whatever")
        .await;
    // Sign-ins naming an organization that does not exist are counted without its name.
    app.browser(Ipv4Addr::new(127, 0, 0, 3))
        .post_form(
            "/api/login",
            "/",
            &[
                ("username", "x"),
                ("password", "y"),
                ("org", "no-such-org-123"),
            ],
        )
        .await;
    // One refused before it reaches the sign-in (another site's form) counts too.
    let other_site = app.browser(Ipv4Addr::new(127, 0, 0, 4));
    let refused = other_site
        .http
        .post(format!("{}/api/login", other_site.base))
        .header("origin", "http://evil.example")
        .form(&[("username", "x"), ("password", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);

    let text = scrape().await;
    for expected in [
        r#"portal_logins_total{organization="acme",outcome="Accepted"} 1"#,
        r#"portal_logins_total{organization="acme",outcome="Rejected"} 1"#,
        r#"portal_logins_total{organization="unknown",outcome="InvalidInput"} 1"#,
        r#"portal_logins_total{organization="acme",outcome="CrossSite"} 1"#,
        r#"portal_active_sessions{organization="acme"} 1"#,
        &format!(
            r#"portal_radius_request_seconds_count{{address="{auth}",port="auth",result="answered",server="primary"}} 2"#
        ),
        r#"portal_http_requests_total{route="/api/login",status="302"} 3"#,
        "portal_accounting_backlog 0",
        "portal_background_tasks_down 0",
        &format!(
            r#"portal_radius_timeouts_total{{address="{auth}",port="auth",server="primary"}} 0"#
        ),
    ] {
        assert!(text.contains(expected), "{expected} missing in:\n{text}");
    }
    assert!(!text.contains("no-such-org-123"), "caller text is no label");
    assert!(
        !text.contains("carol-pass") && !text.contains("testing123"),
        "no secrets"
    );
    // Not on the users' port.
    let users = app.browser(CLIENT).get("/metrics").await;
    assert!(
        !users.body.contains("portal_logins_total"),
        "{}",
        users.body
    );
    app.stop().await;
}

/// The database's gauges are read once at start-up: a database away before the first scrape
/// (PostgreSQL stopped) leaves every organization's series with the value read then, under
/// `portal_database_up 0`, rather than no series at all. The captive-portal API says why it
/// cannot answer.
#[tokio::test]
async fn metrics_keep_the_start_up_values_when_the_database_is_away_before_the_first_scrape() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (mut relay, url) = common::postgres::Relay::fresh_database().await;
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.database.url = Some(radius_portal::config::Secret::new(url));
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = TestApp::spawn(&config).await;
    // Serving pages: start-up is over.
    assert!(app
        .browser(CLIENT)
        .get("/healthz")
        .await
        .body
        .contains("ok"));
    relay.cut().await;
    let text = app.metrics_text().await;
    for expected in [
        "portal_database_up 0",
        r#"portal_active_sessions{organization="acme"} 0"#,
        "portal_accounting_backlog 0",
    ] {
        assert!(text.contains(expected), "{expected} missing in:\n{text}");
    }
    // A device polling the captive-portal API is told why, as any script is.
    let polled = reqwest::get(format!("http://{}/captive-portal/api", app.addr))
        .await
        .unwrap();
    assert_eq!(polled.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body = polled.text().await.unwrap();
    assert!(body.contains(r#""error":"Unavailable""#), "{body}");
    app.stop().await;
}

/// A PostgreSQL server that answers reads but takes no writes (a standby the address still
/// names after a failover, a database made read-only): the portal is not ready and
/// `portal_database_up` is 0 — not "up" while no session can be stopped (the storage
/// review's M1). Sign-ins are refused meanwhile without using up the user's attempts: once
/// the database takes writes again, the user signs in (the web review's M1: 429).
#[tokio::test]
async fn a_postgresql_server_that_takes_no_writes_is_not_ready() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let url = common::postgres::fresh_database().await;
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.database.url = Some(radius_portal::config::Secret::new(url.clone()));
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    config.rate_limit.login_per_user = 1;
    config.rate_limit.period = Duration::from_secs(3600);
    let app = TestApp::spawn(&config).await;
    let probe = app.browser(Ipv4Addr::new(127, 0, 2, 45));
    assert_eq!(probe.get("/readyz").await.status, 200);
    // Read-only from now on: every connection made again.
    // One connection throughout: made before the database turned read-only, it can turn it back.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    common::postgres::set_read_only(&mut admin, true).await;
    wait_until("/readyz to say the database is unavailable", || async {
        probe.get("/readyz").await.status == 503
    })
    .await;
    // A sign-in is refused before its Access-Request (no Accept that would open nothing), and
    // the metric says the database takes no writes.
    let browser = app.browser(Ipv4Addr::new(127, 0, 2, 46));
    for _ in 0..2 {
        let token = browser.form_token("/").await;
        let page = browser
            .post_raw("/api/login", "/", &carol_form(&token), &[])
            .await;
        assert_ne!(page.path, "/session", "{}", page.body);
        assert!(
            page.body.contains("cannot reach its records"),
            "{}",
            page.body
        );
    }
    assert_eq!(
        radius.access_requests_of("carol"),
        0,
        "{:?}",
        radius.auth_lines()
    );
    wait_until("portal_database_up 0", || async {
        app.metrics_text().await.contains("portal_database_up 0")
    })
    .await;
    // Writes taken again: the user's one attempt of the hour is still there.
    common::postgres::set_read_only(&mut admin, false).await;
    wait_until("/readyz to say ready again", || async {
        probe.get("/readyz").await.status == 200
    })
    .await;
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    app.stop().await;
}

/// PostgreSQL away while a signed-in user opens the session page: the page cannot read the
/// session, and says so with a 503 and a link to look again (not a page with nothing to do).
#[tokio::test]
async fn a_session_page_while_the_database_is_away_says_so_and_how_to_look_again() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (mut relay, url) = common::postgres::Relay::fresh_database().await;
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    config.database.url = Some(radius_portal::config::Secret::new(url));
    let app = TestApp::spawn(&config).await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 2, 44));
    browser.login("carol", "carol-pass").await;
    relay.cut().await;
    let page = browser.get("/session").await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(
        page.body.contains("cannot reach its records"),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"href="/session""#), "{}", page.body);
    relay.open().await;
    wait_until("the session page to show the session again", || async {
        browser
            .get("/session")
            .await
            .body
            .contains("data-testid=\"username\"")
    })
    .await;
    app.stop().await;
}

/// PostgreSQL away just as a sign-in's Start is acknowledged: the sign-in fails (the record
/// cannot be written) and its session is ended once the database answers again — its Start
/// sent again at once, then a NAS-Error Stop — not 40 s later, when the sign-in's
/// lease on its session would have run out (the delivery loop, taking the Start back while the
/// session was still active, had left it to the sign-in).
#[tokio::test]
async fn a_sign_in_failed_by_the_database_has_its_session_ended_once_it_is_back() {
    let auth = FreeRadius::start().await;
    let acct = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let (mut relay, url) = common::postgres::Relay::fresh_database().await;
    let mut server = auth.server_settings("primary", true);
    server.acct_port = acct.acct_port;
    let mut config = settings(&db, vec![server]);
    config.database.url = Some(radius_portal::config::Secret::new(url));
    let app = TestApp::spawn(&config).await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 2, 45));
    // The Start waits on a frozen accounting server; the database goes away meanwhile.
    acct.pause();
    let signing_in = tokio::spawn(async move { browser.login("carol", "carol-pass").await });
    let storage = app.storage.clone();
    wait_until("the sign-in to open its session", || async {
        storage.active_sessions().await.unwrap_or(0) == 1
    })
    .await;
    relay.cut().await;
    acct.resume();
    let page = signing_in.await.unwrap();
    assert!(
        page.body.contains("cannot reach its records"),
        "{}",
        page.body
    );
    let start = acct.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = field(&start, "sid").to_string();
    relay.open().await;
    let stop = acct
        .wait_for_acct(&["status=Stop", &format!("sid={sid} ")])
        .await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
    app.stop().await;
}

/// One portal process per SQLite file: a second portal on the same database is refused with
/// the reason (its start-up would release the first one's accounting claims), and starts once
/// the first has stopped.
#[tokio::test]
async fn a_second_portal_on_the_same_sqlite_file_is_refused_until_the_first_stops() {
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let config = settings(&db, vec![radius.server_settings("primary", true)]);
    let first = TestApp::spawn(&config).await;
    let refused = match TestApp::try_spawn(&config).await {
        Ok(_) => panic!("a second portal started on the same SQLite file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("the lock of the SQLite database")
            && refused.contains("another portal serving it"),
        "{refused}"
    );
    first.stop().await;
    TestApp::spawn(&config).await.stop().await;
}

/// An operator's change of the NAS identity applies to new sessions; an open session's
/// accounting keeps presenting the identity its login presented (the server knows the session
/// by it: a Stop from "another NAS" would leave the firewall identity open).
#[tokio::test]
async fn an_open_session_keeps_the_nas_identity_it_started_with() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    browser.login("carol", "carol-pass").await;
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let before = field(&start, "nas_id").to_string();
    assert!(!before.is_empty() && before != "renamed-nas", "{start}");

    app.rename_nas("acme", "renamed-nas").await;
    browser.post_form("/api/disconnect", "/session", &[]).await;
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={}", field(&start, "sid"))])
        .await;
    assert_eq!(field(&stop, "nas_id"), before, "{stop}");

    app.browser(Ipv4Addr::new(127, 0, 0, 9))
        .login("erin", "erin-pass")
        .await;
    let next = radius.wait_for_acct(&["status=Start", "user=erin"]).await;
    assert_eq!(field(&next, "nas_id"), "renamed-nas", "{next}");
    app.stop().await;
}

/// A sign-in whose web session cannot be stored (here the database refuses those writes)
/// answers 500 and leaves nothing behind: the access session it opened is ended at once (Stop,
/// NAS-Error) instead of granting access to a user who was told the sign-in failed and who
/// could neither see nor end it. For a new browser the write is the record's insert; for one
/// signed in before, first the delete of its old id (the id is rotated at every sign-in).
#[tokio::test]
async fn a_sign_in_whose_web_session_cannot_be_stored_leaves_no_session() {
    let (radius, app, dir) = portal_with_one_server().await;
    let db = dir.path().join("portal.db");
    let returning = app.browser(Ipv4Addr::new(127, 0, 0, 2));
    let before = returning.login_as_script("erin", "erin-pass").await;
    assert_eq!(before.status(), 200);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER refuse_new_web_sessions BEFORE INSERT ON tower_sessions \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END; \
             CREATE TRIGGER refuse_web_session_deletes BEFORE DELETE ON tower_sessions \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        )
        .unwrap();
    }

    for (browser, user) in [(app.browser(CLIENT), "carol"), (returning, "erin")] {
        let answer = browser.login_as_script(user, &format!("{user}-pass")).await;
        assert_eq!(answer.status(), 500, "{user}");
        let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "Internal", "{body}");
    }
    for user in ["carol", "erin"] {
        let user = format!("user={user}");
        let starts: Vec<String> =
            wait_for("both sign-ins' Starts", Duration::from_secs(15), || {
                let starts: Vec<String> = radius
                    .acct_lines()
                    .into_iter()
                    .filter(|l| l.contains("status=Start") && l.contains(&user))
                    .collect();
                (!starts.is_empty()).then_some(starts)
            })
            .await;
        let last = starts.last().unwrap();
        let sid = format!("sid={}", field(last, "sid"));
        let stop = radius.wait_for_acct(&["status=Stop", &sid]).await;
        assert_eq!(field(&stop, "cause"), "NAS-Error", "{user}");
    }
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    app.stop().await;
}

/// A Refresh or Disconnect that did what it was asked is answered so, also when the web
/// session cannot be written afterwards (a full disk): not a 500 for a session that was
/// refreshed or ended.
#[tokio::test]
async fn refresh_and_disconnect_stand_when_the_web_session_cannot_be_written() {
    let (radius, app, dir) = portal_with_one_server().await;
    let browser = app.browser(CLIENT);
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = format!("sid={}", field(&start, "sid"));
    {
        let conn = rusqlite::Connection::open(dir.path().join("portal.db")).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER refuse_web_session_updates BEFORE UPDATE ON tower_sessions \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END; \
             CREATE TRIGGER refuse_web_session_inserts BEFORE INSERT ON tower_sessions \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END; \
             CREATE TRIGGER refuse_web_session_deletes BEFORE DELETE ON tower_sessions \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        )
        .unwrap();
    }
    let refreshed = browser
        .post_token("/api/refresh", "/session", "application/json")
        .await;
    assert_eq!(refreshed.status(), 200);
    radius.wait_for_acct(&["status=Interim-Update", &sid]).await;
    let page = browser.post_form("/api/disconnect", "/session", &[]).await;
    assert_eq!(
        (page.status, page.path.as_str()),
        (200, "/"),
        "{}",
        page.body
    );
    let stop = radius.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "User-Request");
    app.stop().await;
}

/// carol's sign-in failing (500) with its web session's write and its Stop's refused (the
/// database's triggers); the connection holding the triggers (`DROP TRIGGER refuse_stops` lets
/// the Stop be written).
async fn sign_in_failing_with_its_stop(
    app: &TestApp,
    dir: &std::path::Path,
) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("portal.db")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_new_web_sessions BEFORE INSERT ON tower_sessions \
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END; \
         CREATE TRIGGER refuse_stops BEFORE INSERT ON accounting_outbox WHEN NEW.status_type = 2 \
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
    )
    .unwrap();
    let answer = app
        .browser(CLIENT)
        .login_as_script("carol", "carol-pass")
        .await;
    assert_eq!(answer.status(), 500);
    conn
}

/// When the database refuses the Stop of such a sign-in too (it is usually the database that
/// fails), the session is ended once the database takes writes again, not hours later at its
/// deadline.
#[tokio::test]
async fn a_failed_sign_ins_session_is_ended_once_the_database_is_back() {
    let (radius, app, dir) = portal_with_one_server().await;
    let conn = sign_in_failing_with_its_stop(&app, dir.path()).await;
    assert_eq!(
        app.storage.active_sessions().await.unwrap(),
        1,
        "not ended yet"
    );
    conn.execute_batch("DROP TRIGGER refuse_stops;").unwrap();

    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = format!("sid={}", field(&start, "sid"));
    let stop = radius.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
    assert_eq!(app.storage.active_sessions().await.unwrap(), 0);
    app.stop().await;
}

/// A longer outage (32 s of the database refusing the Stop): the session is still ended
/// within seconds of the database taking writes again — the tries do not back off to half a
/// minute, which left the sessions of a 40 s outage to their deadline (black-box tester S's D1
/// of session 82).
#[tokio::test]
async fn a_failed_sign_ins_session_is_ended_soon_after_a_long_outage() {
    let (radius, app, dir) = portal_with_one_server().await;
    let conn = sign_in_failing_with_its_stop(&app, dir.path()).await;
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = format!("sid={}", field(&start, "sid"));
    // The outage itself: the database refuses the Stop for 32 s.
    tokio::time::sleep(Duration::from_secs(32)).await;
    assert_eq!(
        app.storage.active_sessions().await.unwrap(),
        1,
        "not ended while the database refuses"
    );
    conn.execute_batch("DROP TRIGGER refuse_stops;").unwrap();
    let stop = radius.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
    app.stop().await;
}

/// The portal stopped (SIGTERM) while such a session still waits for its Stop's write: one
/// more try before the exit ends it (nothing in the database says its sign-in failed: after
/// the exit it would have run to its deadline), and its Stop goes out with the last flush.
#[tokio::test]
async fn a_failed_sign_ins_session_is_ended_before_the_portal_exits() {
    let (radius, app, dir) = portal_with_one_server().await;
    let conn = sign_in_failing_with_its_stop(&app, dir.path()).await;
    let start = radius.wait_for_acct(&["status=Start", "user=carol"]).await;
    let sid = format!("sid={}", field(&start, "sid"));
    conn.execute_batch("DROP TRIGGER refuse_stops;").unwrap();
    // At once: the background retry waits a second first.
    let storage = app.storage.clone();
    app.stop().await;
    assert_eq!(
        storage.active_sessions().await.unwrap(),
        0,
        "ended before the exit"
    );
    let stop = radius.wait_for_acct(&["status=Stop", &sid]).await;
    assert_eq!(field(&stop, "cause"), "NAS-Error");
}

/// Disconnect pressed on a page whose session the operator had already ended: the sign-in page
/// says the session had already ended (it used to say nothing at all), not "You are
/// disconnected" as if this press had done it.
#[tokio::test]
async fn a_disconnect_of_a_session_that_had_already_ended_says_so() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 8, 1));
    let page = browser.login("carol", "carol-pass").await;
    assert_eq!(page.path, "/session", "{}", page.body);
    // The page as it was shown, before the operator ended its session.
    let token = browser.form_token("/session").await;
    let ids = app.storage.active_session_ids_of("acme").await.unwrap();
    assert_eq!(ids.len(), 1);
    assert!(app.sessions.stop_by_operator(ids[0]).await.unwrap());

    let page = browser
        .post_raw("/api/disconnect", "/session", &[("csrf", &token)], &[])
        .await;
    assert_eq!(page.path, "/");
    assert!(
        page.body.contains("had already ended") && page.body.contains(r#"role="status""#),
        "{}",
        page.body
    );
    assert!(!page.body.contains("You are disconnected"), "{}", page.body);
    // And why: the operator ended it (not a list of what might have).
    assert!(
        page.body.contains("It was ended by the network operator."),
        "{}",
        page.body
    );
    // Shown once.
    let page = browser.get("/").await;
    assert!(!page.body.contains("had already ended"), "{}", page.body);
    app.stop().await;
}

/// Refreshes in a quick row (a script's loop) cost one write and one Interim-Update: those
/// within a few seconds of the last are answered with the session as it stands. A refresh right
/// after the sign-in still restarts the window and sends its Interim-Update.
#[tokio::test]
async fn refreshes_in_a_quick_row_send_one_interim_update() {
    let (radius, app, _dir) = portal_with_one_server().await;
    let client = std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 8, 2));
    let session = app
        .sessions
        .login("acme", "erin", "erin-pass", client)
        .await
        .unwrap();
    let sid = format!("sid={}", session.acct_session_id);
    let (first, restarted) = app.sessions.refresh(session.id).await.unwrap();
    assert!(first.refreshed_at > session.started_at);
    assert!(restarted);
    for _ in 0..20 {
        let (again, restarted) = app.sessions.refresh(session.id).await.unwrap();
        assert_eq!(again.expires_at, first.expires_at);
        assert!(!restarted, "said as a refresh that changed nothing");
    }
    radius.wait_for_acct(&["status=Interim-Update", &sid]).await;
    // The Stop comes after every Interim-Update queued: once it is there, all are.
    app.sessions.disconnect(session.id).await.unwrap();
    radius.wait_for_acct(&["status=Stop", &sid]).await;
    let interims = radius
        .acct_lines()
        .iter()
        .filter(|l| l.contains("status=Interim-Update") && l.contains(&sid))
        .count();
    assert_eq!(interims, 1);

    // A short window (hugo's 2 s) refreshed often still runs: its quiet time is a quarter of it.
    let short = app
        .sessions
        .login("acme", "hugo", "hugo-pass", client)
        .await
        .unwrap();
    let (first, _) = app.sessions.refresh(short.id).await.unwrap();
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    wait_until("a quarter of the window to pass", || async {
        unix_ms() - first.refreshed_at > 600
    })
    .await;
    let (again, restarted) = app.sessions.refresh(short.id).await.unwrap();
    assert!(again.expires_at > first.expires_at, "{again:?}");
    assert!(restarted);
    app.stop().await;
}

/// A portal on an SQLite file with judy signed in (her Start acknowledged), for the tests of
/// files removed under it.
async fn judy_signed_in_on_a_file() -> (
    FreeRadius,
    tempfile::TempDir,
    radius_portal::config::Settings,
    TestApp,
) {
    let radius = FreeRadius::start().await;
    let (dir, db) = temp_db();
    let config = settings(&db, vec![radius.server_settings("primary", true)]);
    let app = TestApp::spawn(&config).await;
    app.browser(Ipv4Addr::new(127, 0, 0, 3))
        .login("judy", "judy-pass")
        .await;
    radius.wait_for_acct(&["status=Start", "user=judy"]).await;
    (radius, dir, config, app)
}

/// A portal started on `config` has judy's session, open.
async fn judy_is_still_signed_in(config: &radius_portal::config::Settings) {
    let app = TestApp::spawn(config).await;
    let judys = app
        .storage
        .session(1)
        .await
        .unwrap()
        .expect("judy's session is in the database");
    assert_eq!(judys.username, "judy");
    assert!(judys.stopped_at.is_none(), "still open: {judys:?}");
    app.stop().await;
}

/// Waits until `/readyz` says the portal is not ready, and that its files went.
async fn wait_not_ready(app: &TestApp) {
    let probe = app.browser(Ipv4Addr::new(127, 0, 0, 4));
    // Not ready from the moment the loss is seen; saved (the copy written, or the WAL's pages
    // checkpointed into the file) a moment later, and only then is there something to look at.
    wait_until(
        "/readyz to say the database's files went and what they held was saved",
        || async {
            let answer = probe.get("/readyz").await;
            answer.status == 503 && answer.body.contains("what it held was saved")
        },
    )
    .await;
    let said = probe.get("/readyz").await.body;
    assert!(said.contains("removed or replaced"), "{said}");
}

/// The database file removed while the portal runs (an operator's mistake, a cleanup script):
/// the open connections would go on writing into a file no one can open again, and the next
/// start would begin afresh without the open sessions' Stops. Instead what the open database
/// holds is saved beside it, every change is refused from then on (`/readyz` says so), the next
/// start refuses to run while the copy is there — and one on the copy, moved into place as the
/// log says, goes on with every session.
#[tokio::test]
async fn a_database_file_removed_while_running_is_saved_and_changes_stop() {
    let (_radius, dir, config, app) = judy_signed_in_on_a_file().await;
    let db = config.database.path.clone();
    // The main file alone (`rm`, or `mv` to a backup): its WAL and index stay, in use.
    std::fs::remove_file(&db).unwrap();
    wait_not_ready(&app).await;
    // The copy under its own name (`.saved-` and digits): written under a temporary one
    // (`.saving`, beside which SQLite keeps a `.saving-journal` while it writes) and renamed
    // when complete, which may be a moment after `/readyz` has said the file is gone.
    let saved = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .split_once(".saved-")
                    .is_some_and(|(_, ms)| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|e| e.path())
    };
    wait_until("a copy is saved beside the database", || async {
        saved().is_some()
    })
    .await;
    let copy = saved().expect("a copy is saved beside the database");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the copy holds secrets: {mode:o}");
    }
    let refused = app
        .sessions
        .login("acme", "ivan", "ivan-pass", "127.0.0.5".parse().unwrap())
        .await;
    assert!(refused.is_err(), "a change is refused: {refused:?}");
    app.stop().await;

    let error = format!(
        "{:#}",
        TestApp::try_spawn(&config).await.err().expect("refused")
    );
    assert!(
        error.contains(&copy.display().to_string()) && error.contains("move"),
        "{error}"
    );
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).ok();
    }
    std::fs::rename(&copy, &db).unwrap();
    judy_is_still_signed_in(&config).await;
}

/// The WAL alone removed while the portal runs: its pages go into the database file, every
/// change is refused from then on, and a restart goes on with every session.
#[tokio::test]
async fn a_wal_removed_while_running_is_checkpointed_and_changes_stop() {
    let (_radius, _dir, config, app) = judy_signed_in_on_a_file().await;
    let db = config.database.path.clone();
    std::fs::remove_file(format!("{}-wal", db.display())).unwrap();
    wait_not_ready(&app).await;
    // As a crash would leave it: nothing closed cleanly (a clean close checkpoints too).
    let copy = db.with_extension("copy");
    std::fs::copy(&db, &copy).unwrap();
    app.stop().await;
    let mut config = config;
    config.database.path = copy;
    judy_is_still_signed_in(&config).await;
}

/// A sign-in under way when `max_lifetime` is shortened (its server took its time) gets the
/// new limit: the cap made at the change could not see its session yet.
#[tokio::test]
async fn a_sign_in_under_way_when_max_lifetime_is_shortened_gets_the_new_limit() {
    use radius_portal::organizations::change;
    let held = HeldAnswers::start().await;
    let sessions = held.app.sessions.clone();
    let signing_in = tokio::spawn(async move {
        sessions
            .login(
                "acme",
                "carol",
                "carol-pass",
                Ipv4Addr::new(10, 9, 2, 1).into(),
            )
            .await
    });
    held.held.notified().await;
    assert!(
        change::update(
            &held.app.storage,
            &held.app.organizations,
            "acme",
            serde_json::json!({ "max_lifetime": "1h" }),
            "test"
        )
        .await
        .unwrap()
        .changed
    );
    held.release.notify_one();
    let carol = signing_in.await.unwrap().unwrap();
    let stored = held.app.storage.session(carol.id).await.unwrap().unwrap();
    assert_eq!(stored.limit_at, Some(stored.started_at + 3_600_000));
    assert!(stored.expires_at <= stored.started_at + 3_600_000);
    held.app.stop().await;
}

/// `user` (password `<user>-pass`) signed in to acme from `ip`.
async fn signed_in(
    app: &TestApp,
    user: &str,
    ip: Ipv4Addr,
) -> radius_portal::storage::AccessSessionRecord {
    app.sessions
        .login("acme", user, &format!("{user}-pass"), ip.into())
        .await
        .unwrap()
}

/// A `max_lifetime` shortened while sessions are open holds for them at once, without a
/// refresh: their limits come nearer, and one already older ends now (Stop with
/// Session-Timeout, dated now, not back when its new limit passed) — also when the shorter
/// value comes with the file at a restart. A server's Session-Timeout stays the session's.
#[tokio::test]
async fn a_shortened_max_lifetime_holds_for_open_sessions_at_once() {
    use radius_portal::{access_session::now_ms, organizations::change};
    let radius = FreeRadius::start().await;
    let (_dir, db) = temp_db();
    let mut config = settings(&db, vec![radius.server_settings("primary", true)]);
    let app = TestApp::spawn(&config).await;
    let login = |user: &'static str, last: u8| signed_in(&app, user, Ipv4Addr::new(10, 9, 1, last));
    // carol's Accept has no timeouts; sam's has a Session-Timeout of a day.
    let (carol, sam) = (login("carol", 1).await, login("sam", 2).await);
    assert_eq!(carol.limit_at, None);
    assert!(
        change::update(
            &app.storage,
            &app.organizations,
            "acme",
            serde_json::json!({ "max_lifetime": "1h" }),
            "test"
        )
        .await
        .unwrap()
        .changed
    );
    let storage = app.storage.clone();
    wait_until("carol's session to be capped to an hour", || async {
        storage.session(carol.id).await.unwrap().unwrap().limit_at
            == Some(carol.started_at + 3_600_000)
    })
    .await;
    let capped = app.storage.session(carol.id).await.unwrap().unwrap();
    assert!(capped.active);
    assert_eq!(
        (capped.expires_at, capped.window_ms),
        (carol.started_at + 3_600_000, 3_600_000),
        "its deadline and window no longer than its new limit"
    );
    let kept = app.storage.session(sam.id).await.unwrap().unwrap();
    assert_eq!(
        (kept.limit_at, kept.expires_at),
        (sam.limit_at, sam.expires_at),
        "the server's Session-Timeout stays"
    );
    app.stop().await;

    // Shorter than carol's age, in the file at the next start: her session ends then.
    wait_until(
        "carol's session to be older than a second and a half",
        || async { now_ms() - carol.started_at > 1_500 },
    )
    .await;
    config.organizations[0].max_lifetime = Some(Duration::from_secs(1));
    let restarted_at = now_ms();
    let app = TestApp::spawn(&config).await;
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={} ", carol.acct_session_id)])
        .await;
    assert_eq!(field(&stop, "cause"), "Session-Timeout");
    let ended = app.storage.session(carol.id).await.unwrap().unwrap();
    assert!(!ended.active);
    assert!(
        ended.stopped_at.unwrap() >= restarted_at,
        "ended when the shorter limit came, not back when it would have passed: {ended:?}"
    );
    assert!(app.storage.session(sam.id).await.unwrap().unwrap().active);
    app.stop().await;
}

/// The session page of a session whose window was shortened below its time left offers no
/// Refresh, and its text promises none (black-box tester U's D3: "unless you refresh. A refresh
/// gives you 10 minutes again" beside no button).
#[tokio::test]
async fn a_window_shortened_below_the_time_left_is_said_so_on_the_session_page() {
    let (_radius, app, _dir) = portal_with_one_server().await;
    let browser = app.browser(Ipv4Addr::new(127, 0, 9, 77));
    let page = browser.login("carol", "carol-pass").await;
    assert!(page.body.contains("unless you refresh"), "{}", page.body);
    radius_portal::organizations::change::update(
        &app.storage,
        &app.organizations,
        "acme",
        serde_json::json!({ "default_window": "10m" }),
        "test",
    )
    .await
    .unwrap();
    let page = browser.get("/session").await;
    assert!(
        page.body.contains("No refresh is offered now")
            && !page.body.contains("unless you refresh"),
        "{}",
        page.body
    );
    app.stop().await;
}

/// An organization's `default_window` and `max_lifetime` changed while sessions run apply from
/// each one's next refresh where its Access-Accept left them to the organization (black-box
/// tester S's D1: an operator who sets `max_lifetime` after an incident expects it to bound the
/// sessions open then, which were refreshed forever before); a server's Session-Timeout stays
/// the limit; and a session older than a `max_lifetime` shortened below its age ends at that
/// refresh, as its limit would have ended it (Session-Timeout).
#[tokio::test]
async fn a_changed_window_or_lifetime_applies_from_each_sessions_next_refresh() {
    use radius_portal::organizations::change;
    let (radius, app, _dir) = portal_with_one_server().await;
    let login = |user: &'static str, last: u8| signed_in(&app, user, Ipv4Addr::new(10, 9, 0, last));
    // carol's Accept has no timeouts, lena's a Session-Timeout of 60 s, bob's an Idle-Timeout.
    let (carol, lena, bob) = (
        login("carol", 1).await,
        login("lena", 2).await,
        login("bob", 3).await,
    );
    assert_eq!((carol.window_ms, carol.limit_at), (4 * 3_600_000, None));

    let change = |patch: serde_json::Value| {
        let (storage, organizations) = (app.storage.clone(), app.organizations.clone());
        async move {
            change::update(&storage, &organizations, "acme", patch, "test")
                .await
                .unwrap()
                .changed
        }
    };
    // A shorter window never cuts short the time a session has (black-box tester R's D2: a
    // refresh moved the end of a session the status said it would not move 4.5 minutes
    // earlier): it reaches the session once it would end later than the end it has. Until
    // then no Refresh is offered, and one made anyway (a script) keeps the end.
    assert!(change(serde_json::json!({ "default_window": "10m" })).await);
    assert!(
        !app.sessions.can_extend(&carol),
        "a refresh would not move the end later"
    );
    let (refreshed, written) = app.sessions.refresh(carol.id).await.unwrap();
    assert!(written, "refreshed: an Interim-Update");
    assert_eq!(
        refreshed.window_ms, 600_000,
        "the organization's window now"
    );
    assert_eq!(
        refreshed.expires_at, carol.expires_at,
        "the end the session had"
    );
    let carol = refreshed;
    assert!(change(serde_json::json!({ "max_lifetime": "2h" })).await);
    // What the page offers says so before the refresh (a refresh gives 10 minutes, within
    // the limit the new `max_lifetime` gives).
    let next = app.sessions.next_terms(&carol).expect("acme is known");
    assert_eq!(
        (next.window_ms, next.limit_at),
        (600_000, Some(carol.started_at + 2 * 3_600_000))
    );
    wait_until("carol's refresh quiet time over", || async {
        radius_portal::access_session::now_ms() - carol.refreshed_at > 5_000
    })
    .await;
    let (refreshed, written) = app.sessions.refresh(carol.id).await.unwrap();
    assert!(written);
    assert_eq!(refreshed.limit_at, Some(carol.started_at + 2 * 3_600_000));
    assert_eq!(
        refreshed.expires_at,
        carol.started_at + 2 * 3_600_000,
        "ends by the new limit, not earlier"
    );
    let (lena_refreshed, _) = app.sessions.refresh(lena.id).await.unwrap();
    assert_eq!(
        (lena_refreshed.window_ms, lena_refreshed.limit_at),
        (60_000, Some(lena.started_at + 60_000)),
        "the server's Session-Timeout stays the limit (and bounds the window)"
    );

    // Shortened below bob's age: his next refresh ends his session, by its limit.
    wait_until("bob's session to be older than a second", || async {
        radius_portal::access_session::now_ms() - bob.started_at > 1_000
    })
    .await;
    assert!(app.sessions.can_extend(&bob));
    assert!(change(serde_json::json!({ "max_lifetime": "1s" })).await);
    assert!(
        !app.sessions.can_extend(&bob),
        "past its limit now: no Refresh to offer"
    );
    let refused = app.sessions.refresh(bob.id).await;
    assert!(
        matches!(
            refused,
            Err(radius_portal::access_session::SessionError::NotActive)
        ),
        "{refused:?}"
    );
    let stop = radius
        .wait_for_acct(&["status=Stop", &format!("sid={} ", bob.acct_session_id)])
        .await;
    assert_eq!(field(&stop, "cause"), "Session-Timeout");
    let ended = app.storage.session(bob.id).await.unwrap().unwrap();
    assert!(!ended.active);
    app.stop().await;
}
