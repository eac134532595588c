//! Web sessions (tower-sessions' records) in the portal's database, through the same engine as
//! everything else: a load is a read where the request runs, a save joins the next write batch.
//! Records are MessagePack like tower-sessions' own stores; expiry is Unix seconds.
//!
//! Creates and saves are relaxed (no fsync of their own; see the engine): a power failure may at
//! worst sign a browser out or bring back a web session whose access session has ended — never an
//! access session, a Stop or a Start, which are written durably before the web session changes.
//! Deletes (sign-out, the old id a login replaces) are durable: they never come back.

use super::{engine::Engine, Storage, StorageError};
use rusqlite::OptionalExtension;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

/// The store the web-session layer uses.
#[derive(Clone)]
pub struct WebSessionStore {
    engine: Engine,
}

impl std::fmt::Debug for WebSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebSessionStore")
    }
}

impl Storage {
    /// The web-session store on this database.
    pub fn web_sessions(&self) -> WebSessionStore {
        WebSessionStore {
            engine: self.engine.clone(),
        }
    }
}

fn backend(e: StorageError) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn encode(record: &Record) -> session_store::Result<Vec<u8>> {
    rmp_serde::to_vec(record).map_err(|e| session_store::Error::Encode(e.to_string()))
}

fn now_secs() -> i64 {
    crate::access_session::now_ms() / 1000
}

impl WebSessionStore {
    /// Deletes expired web sessions; how many.
    pub async fn delete_expired(&self) -> Result<usize, StorageError> {
        let now = now_secs();
        self.engine
            .write_relaxed(move |c| {
                Ok(c.execute("DELETE FROM tower_sessions WHERE expiry_date <= ?", [now])?)
            })
            .await
    }
}

#[async_trait::async_trait]
impl SessionStore for WebSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A fresh random id collides practically never; on a collision a new one is drawn.
        loop {
            let (id, data, expiry) = (
                record.id.to_string(),
                encode(record)?,
                record.expiry_date.unix_timestamp(),
            );
            let inserted = self
                .engine
                .write_relaxed(move |c| {
                    Ok(c.prepare_cached(
                        "INSERT INTO tower_sessions (id, data, expiry_date) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    )?
                    .execute(rusqlite::params![id, data, expiry])?)
                })
                .await
                .map_err(backend)?;
            if inserted == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let (id, data, expiry) = (
            record.id.to_string(),
            encode(record)?,
            record.expiry_date.unix_timestamp(),
        );
        self.engine
            .write_relaxed(move |c| {
                c.prepare_cached(
                    "INSERT INTO tower_sessions (id, data, expiry_date) VALUES (?, ?, ?) \
                     ON CONFLICT (id) DO UPDATE SET data = excluded.data, expiry_date = excluded.expiry_date",
                )?
                .execute(rusqlite::params![id, data, expiry])?;
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let id = session_id.to_string();
        let data: Option<Vec<u8>> = self
            .engine
            .read(|c| {
                Ok(c.prepare_cached(
                    "SELECT data FROM tower_sessions WHERE id = ? AND expiry_date > ?",
                )?
                .query_row(rusqlite::params![id, now_secs()], |r| r.get(0))
                .optional()?)
            })
            .map_err(backend)?;
        data.map(|data| {
            rmp_serde::from_slice(&data).map_err(|e| session_store::Error::Decode(e.to_string()))
        })
        .transpose()
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let id = session_id.to_string();
        self.engine
            .write(move |c| {
                c.prepare_cached("DELETE FROM tower_sessions WHERE id = ?")?
                    .execute([id])?;
                Ok(())
            })
            .await
            .map_err(backend)
    }
}
