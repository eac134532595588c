//! The in-process demo RADIUS server for `radius-portal demo`: loopback only, a fixed secret and a
//! few demo users. Built on the same packet codec as the client, so it verifies what the portal
//! sends (Message-Authenticator, accounting authenticators) and signs what it answers.
//! Never for production: it is labelled DEMO in the log and on every page.

use crate::radius::health::Port;
use crate::radius::packet::{self, attr, Code, Packet, PushAttribute, MAX_PACKET};
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Shared secret of the demo server.
pub const DEMO_SECRET: &str = "demo-secret";

/// A demo account.
pub struct DemoUser {
    /// Username.
    pub username: &'static str,
    /// Password (None = always rejected).
    pub password: Option<&'static str>,
    /// Session-Timeout to grant.
    pub session_timeout: Option<u32>,
    /// Idle-Timeout to grant.
    pub idle_timeout: Option<u32>,
    /// Reply-Message to send.
    pub reply_message: Option<&'static str>,
    /// What the login page lists about it.
    pub description: &'static str,
}

/// The demo accounts.
pub const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        username: "alice",
        password: Some("alice-pass"),
        session_timeout: Some(3600),
        idle_timeout: Some(900),
        reply_message: Some("Welcome to the demo network, alice"),
        description: "15-minute window (Refresh extends it), 1-hour limit",
    },
    DemoUser {
        username: "short",
        password: Some("short-pass"),
        session_timeout: Some(60),
        idle_timeout: None,
        reply_message: None,
        description: "60-second limit: watch the countdown end",
    },
    DemoUser {
        username: "locked",
        password: None,
        session_timeout: None,
        idle_timeout: None,
        reply_message: Some("Account locked (demo)"),
        description: "always rejected, shows the server's message",
    },
];

/// Addresses of a running demo server.
pub struct DemoRadius {
    /// Access-Request / Status-Server port.
    pub auth_addr: SocketAddr,
    /// Accounting port.
    pub acct_addr: SocketAddr,
}

impl DemoRadius {
    /// Binds two loopback ports and serves until `shutdown`.
    pub async fn start(shutdown: CancellationToken) -> std::io::Result<DemoRadius> {
        let auth = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let acct = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let demo = DemoRadius {
            auth_addr: auth.local_addr()?,
            acct_addr: acct.local_addr()?,
        };
        tokio::spawn(serve(auth, Port::Auth, shutdown.clone()));
        tokio::spawn(serve(acct, Port::Acct, shutdown));
        Ok(demo)
    }
}

async fn serve(socket: Arc<UdpSocket>, port: Port, shutdown: CancellationToken) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let (len, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
        };
        if let Some(reply) = answer(&buf[..len], port) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// The reply to one request that came to `port`, or None to drop it (malformed, bad
/// authenticator). A Status-Server is answered as RFC 5997 §4 says: Access-Accept at the
/// authentication port, Accounting-Response at the accounting port.
pub fn answer(bytes: &[u8], port: Port) -> Option<Vec<u8>> {
    let secret = DEMO_SECRET.as_bytes();
    let request = Packet::decode(bytes, secret).ok()?;
    let reply = match request.code() {
        Code::AccessRequest | Code::StatusServer => {
            if packet::verify_request_message_authenticator(bytes, secret) != Some(true) {
                tracing::warn!(
                    "DEMO RADIUS: request without a valid Message-Authenticator dropped"
                );
                return None;
            }
            if request.code() == Code::StatusServer {
                signed_reply(
                    &request,
                    match port {
                        Port::Auth => Code::AccessAccept,
                        Port::Acct => Code::AccountingResponse,
                    },
                )
            } else {
                authenticate(&request)
            }
        }
        Code::AccountingRequest => {
            if !packet::verify_accounting_request(bytes, secret) {
                return None;
            }
            tracing::info!(
                status_type = request.get_u32(attr::ACCT_STATUS_TYPE),
                acct_session_id = request.get_text(attr::ACCT_SESSION_ID).unwrap_or_default(),
                user = request.get_text(attr::USER_NAME).unwrap_or_default(),
                cause = request.get_u32(attr::ACCT_TERMINATE_CAUSE),
                "DEMO RADIUS: accounting received"
            );
            request.reply(Code::AccountingResponse)
        }
        _ => return None,
    };
    packet::encode_response(&reply).ok()
}

/// A reply carrying Message-Authenticator first, as hardened servers send it.
fn signed_reply(request: &Packet, code: Code) -> Packet {
    let mut reply = request.reply(code);
    reply.push(attr::MESSAGE_AUTHENTICATOR, [0u8; 16]);
    reply
}

fn authenticate(request: &Packet) -> Packet {
    let username = request.get_text(attr::USER_NAME).unwrap_or_default();
    let password = request.user_password().unwrap_or_default();
    let user = DEMO_USERS.iter().find(|u| u.username == username);
    let accepted = user
        .and_then(|u| u.password)
        .is_some_and(|p| p.as_bytes() == password.as_slice());
    let mut reply = signed_reply(
        request,
        if accepted {
            Code::AccessAccept
        } else {
            Code::AccessReject
        },
    );
    if let Some(user) = user {
        // An account's message goes with its own answer: the welcome with the Accept, the
        // lock notice with the Reject of a locked account — never a welcome with the Reject
        // of a wrong password.
        if let Some(message) = user
            .reply_message
            .filter(|_| accepted || user.password.is_none())
        {
            reply.push(attr::REPLY_MESSAGE, message.as_bytes());
        }
        if accepted {
            if let Some(t) = user.session_timeout {
                reply.push_u32(attr::SESSION_TIMEOUT, t);
            }
            if let Some(t) = user.idle_timeout {
                reply.push_u32(attr::IDLE_TIMEOUT, t);
            }
            reply.push(attr::CLASS, format!("DEMO:{username}"));
        }
    }
    tracing::info!(user = %username, accepted, "DEMO RADIUS: Access-Request answered");
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo server's answer to `username` / `password`: its code and Reply-Message.
    fn login(username: &str, password: &str) -> (Code, Option<String>) {
        let secret = DEMO_SECRET.as_bytes();
        let mut request = packet::Request::access_request(Code::AccessRequest, 7, [3; 16], secret);
        request.push(attr::USER_NAME, username.as_bytes());
        request
            .push_user_password(password.as_bytes())
            .expect("fits");
        let bytes = packet::encode_access_request(&request).expect("encodes");
        let reply = Packet::decode(&answer(&bytes, Port::Auth).expect("answered"), secret)
            .expect("decodes");
        (reply.code(), reply.get_text(attr::REPLY_MESSAGE))
    }

    /// Status-Server is answered per port (RFC 5997 §4): Access-Accept at the authentication
    /// port, Accounting-Response at the accounting port.
    #[test]
    fn status_server_is_answered_as_its_port_asks() {
        let secret = DEMO_SECRET.as_bytes();
        let request = packet::Request::access_request(Code::StatusServer, 9, [5; 16], secret);
        let bytes = packet::encode_access_request(&request).expect("encodes");
        for (port, code) in [
            (Port::Auth, Code::AccessAccept),
            (Port::Acct, Code::AccountingResponse),
        ] {
            let reply =
                Packet::decode(&answer(&bytes, port).expect("answered"), secret).expect("decodes");
            assert_eq!(reply.code(), code, "{port:?}");
        }
    }

    #[test]
    fn a_wrong_password_gets_no_welcome() {
        assert_eq!(
            login("alice", "alice-pass"),
            (
                Code::AccessAccept,
                Some("Welcome to the demo network, alice".into())
            )
        );
        assert_eq!(login("alice", "wrong"), (Code::AccessReject, None));
        assert_eq!(
            login("locked", "anything"),
            (Code::AccessReject, Some("Account locked (demo)".into()))
        );
        assert_eq!(login("nobody", "x"), (Code::AccessReject, None));
    }
}
