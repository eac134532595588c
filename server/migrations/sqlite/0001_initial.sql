-- Organizations mirror the configuration (id, display name, active flag).
CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    is_active  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL            -- unix ms
);

-- Access sessions: what RADIUS granted, with persisted deadlines (the source of truth for expiry).
CREATE TABLE access_sessions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    acct_session_id  TEXT NOT NULL UNIQUE,
    organization_id  TEXT NOT NULL REFERENCES organizations(id),
    username         TEXT NOT NULL,
    client_ip        TEXT NOT NULL,
    server_index     INTEGER NOT NULL,      -- which of the org's servers authenticated it
    server_name      TEXT NOT NULL,
    classes          BLOB NOT NULL,         -- Class values exactly as received (length-prefixed)
    started_at       INTEGER NOT NULL,      -- unix ms
    refreshed_at     INTEGER NOT NULL,      -- unix ms of login or last refresh
    window_ms        INTEGER NOT NULL,
    limit_at         INTEGER,               -- unix ms; NULL = no limit
    expires_at       INTEGER NOT NULL,      -- unix ms = min(refreshed_at + window, limit_at)
    interim_interval INTEGER,               -- seconds, from the Accept
    state            TEXT NOT NULL CHECK (state IN ('active', 'stopped')),
    stopped_at       INTEGER,
    terminate_cause  INTEGER
);
CREATE UNIQUE INDEX access_sessions_one_active_per_client
    ON access_sessions(organization_id, client_ip) WHERE state = 'active';
CREATE INDEX access_sessions_due ON access_sessions(expires_at) WHERE state = 'active';

-- Durable accounting: every Start/Interim/Stop is written here, in the same transaction as the
-- session change, before it is sent; delivered rows stay as history.
CREATE TABLE accounting_outbox (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    access_session_id INTEGER NOT NULL REFERENCES access_sessions(id),
    destination       TEXT NOT NULL,        -- 'auth-server' = the server that authenticated
    status_type       INTEGER NOT NULL,     -- 1 Start, 2 Stop, 3 Interim-Update
    event_at          INTEGER NOT NULL,     -- unix ms of the event (Event-Timestamp)
    session_time_secs INTEGER,
    terminate_cause   INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER NOT NULL,
    claimed_until     INTEGER,              -- a sender owns the row until then
    last_error        TEXT,
    delivered_at      INTEGER,
    created_at        INTEGER NOT NULL
);
CREATE INDEX accounting_outbox_pending ON accounting_outbox(next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX accounting_outbox_by_session ON accounting_outbox(access_session_id, id);
