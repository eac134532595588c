//! Web sessions (tower-sessions' records) in the portal's database, so every replica on one
//! database knows every browser. Records are MessagePack like tower-sessions' own stores; expiry
//! is Unix seconds.
//!
//! SQLite: through the same engine as everything else — a load is a read where the request
//! runs, a write joins the next write batch. One portal process owns a SQLite database, so
//! every change to its web sessions goes through this process: the records it writes are kept
//! in memory too ([`RecordCache`], bounded), and a load finds them there instead of reading
//! the database (a read and a decode on every request was ~9 % of the portal's CPU per
//! journey). Every web-session write is relaxed (no fsync of its
//! own; see the engine): a power failure may at worst sign a browser out, or bring back a
//! record a later write replaced or deleted — the record a login's new id replaced (its form
//! token and any earlier access-session links; the browser holds only the new id), or a
//! signed-out one whose access session has ended. The WAL is written in order, so a lost delete
//! is lost together with the new record that replaced it.
//! Neither grants anything: access sessions, Starts and Stops are written durably before the
//! web session changes, and every request checks the access session itself. (A durable
//! delete cost each login a second fsync: ~0.4 ms of its latency for one user.)
//!
//! PostgreSQL: one statement each on the pool (`synchronous_commit` as the server sets it).

use super::{engine::Engine, postgres::PgStore, Backend, Storage, StorageError};
use rusqlite::OptionalExtension;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

/// The store the web-session layer uses.
#[derive(Clone)]
pub struct WebSessionStore {
    backend: WebBackend,
}

#[derive(Clone)]
enum WebBackend {
    Sqlite(Engine, Arc<RecordCache>),
    Postgres(PgStore),
}

/// At most this many web-session records are kept in memory (~20 MB); beyond it, new ones are
/// read from the database like after a restart.
const CACHED_RECORDS_MAX: usize = 65_536;

/// The web-session records this process wrote to its SQLite database, by id. Updated inside
/// the write itself (on the connection that commits it, so in commit order) and forgotten by
/// the engine when the write is not stored (even if its request was cancelled meanwhile); a
/// load that misses reads the database and keeps nothing, so no read can put back a record a
/// write has replaced meanwhile. Expired records are never returned.
#[derive(Default)]
pub(crate) struct RecordCache {
    records: Mutex<HashMap<Id, Record>>,
}

impl RecordCache {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &Id, now_secs: i64) -> Option<Record> {
        self.records()
            .get(id)
            .filter(|r| r.expiry_date.unix_timestamp() > now_secs)
            .cloned()
    }

    fn put(&self, record: Record) {
        let mut records = self.records();
        if records.len() < CACHED_RECORDS_MAX || records.contains_key(&record.id) {
            records.insert(record.id, record);
        }
    }

    fn forget(&self, id: &Id) {
        self.records().remove(id);
    }

    /// Forgets `id` when run: a write's undo if it is not stored.
    fn undo(self: &Arc<Self>, id: Id) -> impl FnOnce() + Send + 'static {
        let cache = self.clone();
        move || cache.forget(&id)
    }

    fn forget_expired(&self, now_secs: i64) {
        self.records()
            .retain(|_, r| r.expiry_date.unix_timestamp() > now_secs);
    }
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
            backend: match &self.backend {
                Backend::Sqlite(store) => {
                    WebBackend::Sqlite(store.engine.clone(), store.web_records.clone())
                }
                Backend::Postgres(store) => WebBackend::Postgres(store.clone()),
            },
        }
    }
}

/// How a store error begins when the database is away (a restart, a full disk), not faulty.
const UNAVAILABLE: &str = "the database is unavailable";

fn backend(e: impl Into<StorageError>) -> session_store::Error {
    let e = e.into();
    if e.is_unavailable() {
        session_store::Error::Backend(format!("{UNAVAILABLE}: {e}"))
    } else {
        session_store::Error::Backend(e.to_string())
    }
}

/// Whether a web-session error says the database is away (the request may be retried: 503)
/// rather than that something is broken.
pub fn is_unavailable(error: &tower_sessions::session::Error) -> bool {
    matches!(error, tower_sessions::session::Error::Store(session_store::Error::Backend(m)) if m.starts_with(UNAVAILABLE))
}

fn decode(data: Option<Vec<u8>>) -> session_store::Result<Option<Record>> {
    data.map(|data| {
        rmp_serde::from_slice(&data).map_err(|e| session_store::Error::Decode(e.to_string()))
    })
    .transpose()
}

const INSERT_NEW: &str =
    "INSERT INTO tower_sessions (id, data, expiry_date) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
const UPSERT: &str = "INSERT INTO tower_sessions (id, data, expiry_date) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET data = excluded.data, expiry_date = excluded.expiry_date";
const LOAD: &str = "SELECT data FROM tower_sessions WHERE id = $1 AND expiry_date > $2";
const DELETE: &str = "DELETE FROM tower_sessions WHERE id = $1";
const DELETE_EXPIRED: &str = "DELETE FROM tower_sessions WHERE expiry_date <= $1";

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
        match &self.backend {
            WebBackend::Sqlite(engine, cache) => {
                cache.forget_expired(now);
                engine
                    .write_relaxed(move |c| Ok(c.execute(DELETE_EXPIRED, [now])?))
                    .await
            }
            WebBackend::Postgres(store) => Ok(store
                .guarded(|pool| sqlx::query(DELETE_EXPIRED).bind(now).execute(pool))
                .await?
                .rows_affected() as usize),
        }
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
            let inserted = match &self.backend {
                WebBackend::Sqlite(engine, cache) => {
                    let (cached, mut kept, undo) =
                        (cache.clone(), Some(record.clone()), cache.undo(record.id));
                    engine
                        .write_relaxed_small_or(
                            move |c| {
                                let inserted = c
                                    .prepare_cached(INSERT_NEW)?
                                    .execute(rusqlite::params![id, data, expiry])?;
                                // Once: a second run of the write finds it there.
                                if let Some(kept) = kept.take().filter(|_| inserted == 1) {
                                    cached.put(kept);
                                }
                                Ok(inserted)
                            },
                            undo,
                        )
                        .await
                        .map_err(backend)?
                }
                WebBackend::Postgres(store) => store
                    .guarded(|pool| {
                        sqlx::query(INSERT_NEW)
                            .bind(id)
                            .bind(data)
                            .bind(expiry)
                            .execute(pool)
                    })
                    .await
                    .map_err(backend)?
                    .rows_affected() as usize,
            };
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
        match &self.backend {
            WebBackend::Sqlite(engine, cache) => {
                let (cached, mut kept, undo) =
                    (cache.clone(), Some(record.clone()), cache.undo(record.id));
                engine
                    .write_relaxed_small_or(
                        move |c| {
                            c.prepare_cached(UPSERT)?
                                .execute(rusqlite::params![id, data, expiry])?;
                            // Once: a second run of the write finds it there.
                            if let Some(kept) = kept.take() {
                                cached.put(kept);
                            }
                            Ok(())
                        },
                        undo,
                    )
                    .await
                    .map_err(backend)
            }
            WebBackend::Postgres(store) => store
                .guarded(|pool| {
                    sqlx::query(UPSERT)
                        .bind(id)
                        .bind(data)
                        .bind(expiry)
                        .execute(pool)
                })
                .await
                .map(|_| ())
                .map_err(backend),
        }
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let id = session_id.to_string();
        match &self.backend {
            WebBackend::Sqlite(engine, cache) => match cache.get(session_id, now_secs()) {
                Some(record) => Ok(Some(record)),
                None => decode(
                    engine
                        .read(|c| {
                            Ok(c.prepare_cached(LOAD)?
                                .query_row(rusqlite::params![id, now_secs()], |r| r.get(0))
                                .optional()?)
                        })
                        .map_err(backend)?,
                ),
            },
            WebBackend::Postgres(store) => decode(
                store
                    .guarded(|pool| {
                        sqlx::query_scalar(LOAD)
                            .bind(id)
                            .bind(now_secs())
                            .fetch_optional(pool)
                    })
                    .await
                    .map_err(backend)?,
            ),
        }
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        let id = session_id.to_string();
        match &self.backend {
            WebBackend::Sqlite(engine, cache) => {
                let (cached, gone) = (cache.clone(), *session_id);
                let deleted = engine
                    .write_relaxed_small(move |c| {
                        c.prepare_cached(DELETE)?.execute([&id])?;
                        cached.forget(&gone);
                        Ok(())
                    })
                    .await
                    .map_err(backend);
                cache.forget(session_id);
                deleted
            }
            WebBackend::Postgres(store) => store
                .guarded(|pool| sqlx::query(DELETE).bind(id).execute(pool))
                .await
                .map(|_| ())
                .map_err(backend),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_away_is_told_from_a_fault() {
        let away = tower_sessions::session::Error::Store(backend(StorageError::Database(
            sqlx::Error::PoolTimedOut,
        )));
        assert!(is_unavailable(&away), "{away}");
        let broken = tower_sessions::session::Error::Store(backend(StorageError::Corrupt(
            "a record that cannot be read".into(),
        )));
        assert!(!is_unavailable(&broken), "{broken}");
        // The store's own words cannot pass for it.
        let decode = tower_sessions::session::Error::Store(session_store::Error::Decode(format!(
            "{UNAVAILABLE}: not really"
        )));
        assert!(!is_unavailable(&decode));
    }
}
