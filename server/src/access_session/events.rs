//! Change notices for access sessions: every path that changes a session (refresh, disconnect,
//! expiry, Disconnect-Request, preemption) publishes its id here, and every open session page
//! (its Server-Sent Events stream) re-reads its own session when its id goes by. Notices carry
//! no state: the database stays the only source of truth, so a missed or lagged notice costs at
//! most one periodic re-read.

use tokio::sync::broadcast;

/// Notices kept for slow readers before they lag (a lagging reader simply re-reads).
const CAPACITY: usize = 1024;

/// The notice channel. Cheap to clone.
#[derive(Clone)]
pub struct SessionEvents {
    tx: broadcast::Sender<i64>,
}

impl Default for SessionEvents {
    fn default() -> Self {
        SessionEvents {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

/// The notice that any session may have changed (no session has this id): every page re-reads.
pub const ANY_SESSION: i64 = -1;

impl SessionEvents {
    /// Access session `id` changed.
    pub fn publish(&self, id: i64) {
        // No subscriber (no open page) is not an error.
        let _ = self.tx.send(id);
    }

    /// Any session may have changed unheard (other replicas' notices missed while the
    /// connection that hears them was lost): every open page re-reads its own.
    pub fn publish_any(&self) {
        self.publish(ANY_SESSION);
    }

    /// Notices from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.tx.subscribe()
    }
}
