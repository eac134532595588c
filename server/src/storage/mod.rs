//! Persistence: organizations, access sessions with their deadlines, the accounting outbox, and
//! web sessions (a tower-sessions store of our own) — all in one SQLite file (WAL).
//!
//! Every change that must be accounted for writes its outbox row in the same transaction, so a
//! crash can never leave a session change without its Start/Interim/Stop queued.
//! Times are Unix milliseconds (`i64`), passed in by callers so tests control them.
//!
//! Not here yet: the PostgreSQL backend (design.md §7); the types below are the contract it will
//! implement.

mod engine;
pub mod organizations;
pub mod sqlite;
pub mod web_sessions;

pub use organizations::{
    AuditEntry, DeleteOutcome, OrganizationJob, OrganizationWrite, SeedOutcome, StoredOrganization,
    UpdateOutcome,
};
pub use sqlite::Storage;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database failed (I/O, lock timeout, constraint): the operation did not happen; retry
    /// later or report an internal error.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The database failed (I/O, lock timeout, constraint) in the SQLite engine: the operation
    /// did not happen.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The engine could not run the operation (its writer stopped, a batch was not committed):
    /// the operation did not happen.
    #[error("database error: {0}")]
    Engine(String),
    /// Schema migration failed at start-up: do not serve.
    #[error("database migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back (corrupt row): report an internal error.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// The organization is disabled or unknown (checked inside the transaction that would have
    /// created the session): nothing was written.
    #[error("organization disabled")]
    OrganizationDisabled,
}

/// A stored access session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessSessionRecord {
    /// Row id (also kept in the web session).
    pub id: i64,
    /// Acct-Session-Id.
    pub acct_session_id: String,
    /// Organization id.
    pub organization_id: String,
    /// User-Name.
    pub username: String,
    /// Client IP as text.
    pub client_ip: String,
    /// Index of the authenticating server in the organization's list.
    pub server_index: i64,
    /// Its name (for logs; the index may change if configuration changes).
    pub server_name: String,
    /// Class values to echo.
    pub classes: Vec<Vec<u8>>,
    /// Reply-Message of the Access-Accept, for the session page.
    pub reply_message: Option<String>,
    /// Login time.
    pub started_at: i64,
    /// Login or last refresh.
    pub refreshed_at: i64,
    /// Window length.
    pub window_ms: i64,
    /// Absolute limit, if any.
    pub limit_at: Option<i64>,
    /// Current deadline.
    pub expires_at: i64,
    /// Acct-Interim-Interval from the Accept.
    pub interim_interval: Option<i64>,
    /// Still active?
    pub active: bool,
    /// Unix ms it ended, once stopped.
    pub stopped_at: Option<i64>,
    /// Acct-Terminate-Cause once stopped.
    pub terminate_cause: Option<i64>,
}

/// What a new access session starts with.
#[derive(Clone, Debug)]
pub struct NewAccessSession {
    /// Acct-Session-Id (unique).
    pub acct_session_id: String,
    /// Organization id.
    pub organization_id: String,
    /// User-Name.
    pub username: String,
    /// Client IP as text.
    pub client_ip: String,
    /// Authenticating server's index.
    pub server_index: i64,
    /// Authenticating server's name.
    pub server_name: String,
    /// Class values from the Accept.
    pub classes: Vec<Vec<u8>>,
    /// Reply-Message of the Access-Accept, for the session page.
    pub reply_message: Option<String>,
    /// Login time.
    pub started_at: i64,
    /// Window length.
    pub window_ms: i64,
    /// Absolute limit.
    pub limit_at: Option<i64>,
    /// First deadline.
    pub expires_at: i64,
    /// Seconds between periodic Interim-Updates (Acct-Interim-Interval, at least the
    /// organization's minimum), or None.
    pub interim_interval: Option<i64>,
    /// The caller sends the Start itself: it is queued already claimed until then (no second
    /// write to claim it). None: the delivery loop sends it.
    pub start_claimed_until: Option<i64>,
}

/// What opening a session did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedSession {
    /// The new session's row id.
    pub id: i64,
    /// The client's previous session, stopped (Port-Preempted) with its Stop queued.
    pub preempted: Vec<sqlite::Stopped>,
    /// The Start, claimed for the caller when it asked ([`NewAccessSession::start_claimed_until`]).
    pub claimed_start: Option<OutboxRow>,
}

/// An outbox row claimed for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Session the packet is about.
    pub access_session_id: i64,
    /// Acct-Status-Type.
    pub status_type: i64,
    /// Event time (unix ms).
    pub event_at: i64,
    /// Acct-Session-Time.
    pub session_time_secs: Option<i64>,
    /// Acct-Terminate-Cause.
    pub terminate_cause: Option<i64>,
    /// Delivery attempts so far, including this one.
    pub attempts: i64,
    /// Packets put on the wire for it so far (0 = the server never saw it).
    pub transmissions: i64,
}

/// How a Dynamic Authorization request names the session(s) it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionMatch {
    /// Acct-Session-Id.
    AcctSessionId(String),
    /// User-Name together with Framed-IP-Address (the client address).
    UserAndAddress {
        /// User-Name.
        username: String,
        /// Client IP as stored.
        client_ip: String,
    },
    /// One of the session's Class values, byte for byte.
    Class(Vec<u8>),
}

/// An outbox row's delivery state, for inspection (tests, CLI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: i64,
    /// 1 Start, 2 Stop, 3 Interim-Update.
    pub status_type: i64,
    /// Claims so far.
    pub attempts: i64,
    /// Packets put on the wire.
    pub transmissions: i64,
    /// When the server acknowledged it (unix ms).
    pub delivered_at: Option<i64>,
    /// When it was dead-lettered (unix ms).
    pub dead_at: Option<i64>,
    /// Why it was dead-lettered.
    pub dead_reason: Option<String>,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// Encodes Class values as one blob: each value is a 2-byte big-endian length and its bytes.
/// Values are arbitrary binary (ISE's `CACS:…` text, other vendors' binary): nothing is parsed.
pub fn encode_classes(classes: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for class in classes {
        out.extend_from_slice(&(class.len() as u16).to_be_bytes());
        out.extend_from_slice(class);
    }
    out
}

/// Reverses [`encode_classes`].
pub fn decode_classes(blob: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        if at + 2 > blob.len() {
            return Err(StorageError::Corrupt("class blob truncated".into()));
        }
        let len = u16::from_be_bytes([blob[at], blob[at + 1]]) as usize;
        at += 2;
        let value = blob
            .get(at..at + len)
            .ok_or_else(|| StorageError::Corrupt("class blob truncated".into()))?;
        out.push(value.to_vec());
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_any_format_round_trip_byte_for_byte() {
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![],
            vec![b"CACS:0a0a0a0a0000000123456789:ise-node-1/123456789/42".to_vec()],
            vec![vec![0, 0xff, 0xfe, 0x80, 0], b"plain".to_vec()],
            vec![vec![], vec![7; 253]],
        ];
        for classes in cases {
            assert_eq!(
                decode_classes(&encode_classes(&classes)).expect("decodes"),
                classes
            );
        }
    }

    #[test]
    fn truncated_class_blob_is_an_error_not_a_panic() {
        assert!(decode_classes(&[0]).is_err());
        assert!(decode_classes(&[0, 5, 1, 2]).is_err());
    }
}
