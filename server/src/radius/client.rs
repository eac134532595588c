//! UDP transport for RADIUS requests: one socket per address family shared by every request in
//! flight, Identifiers multiplexed per destination, retransmissions that reuse the Identifier and
//! bytes, and replies accepted only after their authenticators verify.
//!
//! It does not choose servers or decide failover: that is [`super::pool`].

use super::packet::{verify_reply, Packet, ReplyCheck, MAX_PACKET};
use super::RadiusError;
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{net::UdpSocket, sync::mpsc, time::Instant};

type Waiters = Arc<Mutex<HashMap<(SocketAddr, u8), mpsc::Sender<Vec<u8>>>>>;

/// A shared RADIUS client. Cheap to clone.
#[derive(Clone)]
pub struct RadiusClient {
    v4: Arc<UdpSocket>,
    v6: Option<Arc<UdpSocket>>,
    /// Requests waiting for a reply, by (server, Identifier). A std Mutex: held only for map
    /// operations, never across an await.
    waiters: Waiters,
    /// Next Identifier to try per destination, so consecutive requests use different ones.
    next_id: Arc<Mutex<HashMap<SocketAddr, u8>>>,
}

/// One request/response exchange's parameters.
pub struct Exchange<'a> {
    /// Where to send.
    pub destination: SocketAddr,
    /// Shared secret for verifying the reply.
    pub secret: &'a [u8],
    /// Time to wait for a reply before retransmitting.
    pub timeout: Duration,
    /// Retransmissions after the first send.
    pub retries: u32,
    /// The whole exchange gives up at this instant, whatever `timeout` and `retries` allow.
    pub deadline: Instant,
    /// Reject replies that lack a valid Message-Authenticator (BlastRADIUS hardening).
    pub require_message_authenticator: bool,
}

impl RadiusClient {
    /// Binds the sockets: IPv4 on `bind_v4` (port 0 = any), IPv6 on `[::]:0` when available.
    pub async fn bind(bind_v4: Ipv4Addr) -> Result<RadiusClient, RadiusError> {
        let v4 = Arc::new(
            UdpSocket::bind((bind_v4, 0))
                .await
                .map_err(RadiusError::Io)?,
        );
        let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
            .await
            .ok()
            .map(Arc::new);
        let client = RadiusClient {
            v4,
            v6,
            waiters: Arc::default(),
            next_id: Arc::default(),
        };
        tokio::spawn(receive_loop(client.v4.clone(), client.waiters.clone()));
        if let Some(v6) = &client.v6 {
            tokio::spawn(receive_loop(v6.clone(), client.waiters.clone()));
        }
        Ok(client)
    }

    fn socket_for(&self, destination: SocketAddr) -> Result<&Arc<UdpSocket>, RadiusError> {
        match destination.ip() {
            IpAddr::V4(_) => Ok(&self.v4),
            IpAddr::V6(_) => self.v6.as_ref().ok_or(RadiusError::NoIpv6Socket),
        }
    }

    /// Sends the packet `build(identifier)` returns and waits for a verified reply, retransmitting
    /// the same bytes on timeout. `build` returns the encoded request and the Request
    /// Authenticator the reply is verified against.
    pub async fn exchange(
        &self,
        ex: Exchange<'_>,
        build: impl FnOnce(u8) -> Result<(Vec<u8>, [u8; 16]), RadiusError>,
    ) -> Result<Packet, RadiusError> {
        let socket = self.socket_for(ex.destination)?.clone();
        let (id, mut replies) = self.register(ex.destination)?;
        let _registration = Registration {
            waiters: &self.waiters,
            key: (ex.destination, id),
        };
        let (bytes, request_authenticator) = build(id)?;
        for _attempt in 0..=ex.retries {
            if Instant::now() >= ex.deadline {
                break;
            }
            socket
                .send_to(&bytes, ex.destination)
                .await
                .map_err(RadiusError::Io)?;
            let wait_until = (Instant::now() + ex.timeout).min(ex.deadline);
            loop {
                let reply = match tokio::time::timeout_at(wait_until, replies.recv()).await {
                    Ok(Some(reply)) => reply,
                    Ok(None) | Err(_) => break, // timed out: retransmit
                };
                match verify_reply(&reply, &request_authenticator, ex.secret) {
                    ReplyCheck::Verified {
                        has_message_authenticator,
                    } => {
                        if ex.require_message_authenticator && !has_message_authenticator {
                            tracing::warn!(server = %ex.destination, id, "reply without Message-Authenticator dropped (server requires it)");
                            continue;
                        }
                        return Packet::decode(&reply).map_err(RadiusError::MalformedReply);
                    }
                    other => {
                        tracing::warn!(server = %ex.destination, id, check = ?other, "unverifiable reply dropped");
                    }
                }
            }
        }
        Err(RadiusError::Timeout)
    }

    /// Reserves a free Identifier for `destination` and a channel for its replies.
    fn register(
        &self,
        destination: SocketAddr,
    ) -> Result<(u8, mpsc::Receiver<Vec<u8>>), RadiusError> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
        let start = next.entry(destination).or_insert(0);
        for step in 0..=255u8 {
            let id = start.wrapping_add(step);
            if let std::collections::hash_map::Entry::Vacant(slot) =
                waiters.entry((destination, id))
            {
                *start = id.wrapping_add(1);
                let (tx, rx) = mpsc::channel(4);
                slot.insert(tx);
                return Ok((id, rx));
            }
        }
        Err(RadiusError::IdentifiersExhausted)
    }
}

/// Frees the Identifier when the exchange ends, however it ends.
struct Registration<'a> {
    waiters: &'a Waiters,
    key: (SocketAddr, u8),
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

async fn receive_loop(socket: Arc<UdpSocket>, waiters: Waiters) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors (port unreachable) surface here on Linux; keep receiving.
                tracing::debug!(error = %e, "RADIUS socket receive error");
                continue;
            }
        };
        if len < 20 {
            continue;
        }
        let id = buf[1];
        let sender = waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(from, id))
            .cloned();
        match sender {
            Some(tx) => {
                let _ = tx.try_send(buf[..len].to_vec());
            }
            None => tracing::debug!(%from, id, "reply for no pending request dropped"),
        }
    }
}
