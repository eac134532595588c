-- Keys the portal generates for itself, shared by every process on this database: the key that
-- signs anonymous visitors' form tokens (so a visitor without a web session costs no write).
CREATE TABLE app_secrets (
    name       TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
