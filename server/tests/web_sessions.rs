//! The web-session store: records written by the previous store (tower-sessions' sqlx store,
//! expiry dates as RFC 3339 text) keep working after the upgrade, and expiry is honoured.

use radius_portal::storage::Storage;
use sqlx::{sqlite::SqliteConnectOptions, ConnectOptions};
use std::collections::HashMap;
use tower_sessions::{
    cookie::time::{format_description::well_known::Rfc3339, Duration, OffsetDateTime},
    session::{Id, Record},
    SessionStore,
};

fn record(expiry_date: OffsetDateTime, access_session: i64) -> Record {
    Record {
        id: Id::default(),
        data: HashMap::from([(
            "access_session".to_string(),
            serde_json::json!(access_session),
        )]),
        expiry_date,
    }
}

#[tokio::test]
async fn sessions_of_the_previous_store_survive_the_upgrade_and_expired_ones_do_not_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portal.db");
    // A database as the previous release left it: migrations up to 0007, the store's own table.
    {
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .expect("open");
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations = before.migrations[..7].to_vec().into();
        before.run(&mut conn).await.expect("older migrations");
        sqlx::query(
            "create table if not exists tower_sessions (id text primary key not null, data blob not null, expiry_date integer not null)",
        )
        .execute(&mut conn)
        .await
        .expect("old table");
        for (record, label) in [
            (
                record(OffsetDateTime::now_utc() + Duration::days(1), 7),
                "live",
            ),
            (
                record(OffsetDateTime::now_utc() - Duration::hours(1), 8),
                "expired",
            ),
        ] {
            sqlx::query("insert into tower_sessions (id, data, expiry_date) values (?, ?, ?)")
                .bind(record.id.to_string())
                .bind(rmp_serde::to_vec(&record).expect("encode"))
                .bind(record.expiry_date.format(&Rfc3339).expect("format"))
                .execute(&mut conn)
                .await
                .expect(label);
        }
    }
    let ids: Vec<String> = {
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .expect("open");
        sqlx::query_scalar("select id from tower_sessions order by expiry_date desc")
            .fetch_all(&mut conn)
            .await
            .expect("ids")
    };

    let storage = Storage::open(&path).await.expect("upgrade");
    let store = storage.web_sessions();
    let live: Id = ids[0].parse().expect("id");
    let expired: Id = ids[1].parse().expect("id");
    let loaded = store.load(&live).await.expect("load").expect("still there");
    assert_eq!(loaded.data["access_session"], serde_json::json!(7));
    assert!(store.load(&expired).await.expect("load").is_none());

    // The new store's own round trip, and deletion of what has expired.
    let mut fresh = record(OffsetDateTime::now_utc() + Duration::minutes(5), 9);
    store.create(&mut fresh).await.expect("create");
    assert_eq!(
        store
            .load(&fresh.id)
            .await
            .expect("load")
            .expect("created")
            .data,
        fresh.data
    );
    assert_eq!(store.delete_expired().await.expect("prune"), 1);
    assert_eq!(storage.web_session_count().await.expect("count"), 2);
    store.delete(&fresh.id).await.expect("delete");
    assert!(store.load(&fresh.id).await.expect("load").is_none());
}
