//! The Stops this process is delivering, by organization and client address: a sign-in at an
//! address sends its Start after them. A Disconnect (or an expiry) sends its session's Stop in
//! the background and answers at once; the user signing in again a moment later would
//! otherwise have the new Start and the old Stop in flight together, and a firewall that keys
//! identities by address, taking the Stop last, would drop the new user's identity.
//!
//! In this process only: a Stop another replica is delivering is not seen (its ordering is
//! then the network's, as before). Preempted sessions' Stops are sent by the sign-in itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How many deliveries of a Stop are under way, by organization, then client address.
type ByAddress = HashMap<String, HashMap<String, usize>>;

/// Stops under way, by organization and client address. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct StopsUnderWay {
    /// A std Mutex: map operations only.
    by_address: Arc<Mutex<ByAddress>>,
    /// Told when one ends.
    ended: Arc<Notify>,
}

impl StopsUnderWay {
    /// A delivery of a Stop of a session of `organization` at `client_ip` begins; it is under
    /// way until the guard is dropped (however the delivery ends).
    pub(crate) fn begin(&self, organization: &str, client_ip: &str) -> StopUnderWay {
        *self
            .lock()
            .entry(organization.to_owned())
            .or_default()
            .entry(client_ip.to_owned())
            .or_default() += 1;
        StopUnderWay {
            stops: self.clone(),
            organization: organization.to_owned(),
            client_ip: client_ip.to_owned(),
        }
    }

    /// Whether a Stop of `organization`'s session at `client_ip` is under way.
    pub(crate) fn any(&self, organization: &str, client_ip: &str) -> bool {
        self.lock()
            .get(organization)
            .is_some_and(|addresses| addresses.contains_key(client_ip))
    }

    /// Waits until no Stop of `organization`'s session at `client_ip` is under way, or `until`.
    /// True when none is.
    pub(crate) async fn wait(&self, organization: &str, client_ip: &str, until: Instant) -> bool {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before looking: an end between the look and the wait is not missed.
            ended.as_mut().enable();
            if !self.any(organization, client_ip) {
                return true;
            }
            if tokio::time::timeout_at(until, ended).await.is_err() {
                return !self.any(organization, client_ip);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByAddress> {
        self.by_address.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A Stop's delivery under way ([`StopsUnderWay::begin`]).
pub(crate) struct StopUnderWay {
    stops: StopsUnderWay,
    organization: String,
    client_ip: String,
}

impl Drop for StopUnderWay {
    fn drop(&mut self) {
        let mut map = self.stops.lock();
        if let Some(addresses) = map.get_mut(&self.organization) {
            if let Some(n) = addresses.get_mut(&self.client_ip) {
                *n -= 1;
                if *n == 0 {
                    addresses.remove(&self.client_ip);
                }
            }
            if addresses.is_empty() {
                map.remove(&self.organization);
            }
        }
        drop(map);
        self.stops.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_sign_in_waits_for_the_stops_of_its_address_alone() {
        let stops = StopsUnderWay::default();
        let first = stops.begin("acme", "10.0.0.1");
        let second = stops.begin("acme", "10.0.0.1");
        let elsewhere = stops.begin("acme", "10.0.0.2");
        let other_org = stops.begin("beta", "10.0.0.1");
        assert!(stops.any("acme", "10.0.0.1"));
        assert!(!stops.any("acme", "10.0.0.3"));
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(
            !stops.wait("acme", "10.0.0.1", soon()).await,
            "two under way"
        );
        drop(first);
        assert!(!stops.wait("acme", "10.0.0.1", soon()).await, "one left");
        let waiting = {
            let stops = stops.clone();
            tokio::spawn(async move {
                stops
                    .wait("acme", "10.0.0.1", Instant::now() + Duration::from_secs(60))
                    .await
            })
        };
        drop(second);
        assert!(waiting.await.unwrap(), "the last one ended");
        assert!(stops.any("acme", "10.0.0.2") && stops.any("beta", "10.0.0.1"));
        drop((elsewhere, other_org));
        assert!(stops.lock().is_empty());
    }
}
