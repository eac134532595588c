-- The PostgreSQL schema: the same tables and columns as SQLite's migrations 0001-0008 end with
-- (times are Unix milliseconds in BIGINT, Class values and keys in BYTEA), so one contract test
-- suite holds for both. Several portal replicas share it.

-- Organizations: the run-time truth (seeded from configuration, changed by the CLI and the admin
-- API), with settings as JSON (secrets included — never shown), a per-row revision and a global
-- one that running processes poll to drop exactly the changed organizations from their caches.
CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    is_active  BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    settings   TEXT,
    revision   BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT,
    position   BIGINT                       -- order in the configuration (default org = lowest)
);

CREATE TABLE organization_revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO organization_revision (id, value) VALUES (1, 0);

-- Access sessions: what RADIUS granted, with persisted deadlines (the source of truth for expiry).
CREATE TABLE access_sessions (
    id               BIGSERIAL PRIMARY KEY,
    acct_session_id  TEXT NOT NULL UNIQUE,
    organization_id  TEXT NOT NULL REFERENCES organizations(id),
    username         TEXT NOT NULL,
    client_ip        TEXT NOT NULL,
    server_index     BIGINT NOT NULL,
    server_name      TEXT NOT NULL,
    classes          BYTEA NOT NULL,        -- Class values exactly as received (length-prefixed)
    reply_message    TEXT,
    started_at       BIGINT NOT NULL,
    refreshed_at     BIGINT NOT NULL,
    window_ms        BIGINT NOT NULL,
    limit_at         BIGINT,
    expires_at       BIGINT NOT NULL,
    interim_interval BIGINT,
    next_interim_at  BIGINT,
    state            TEXT NOT NULL CHECK (state IN ('active', 'stopped')),
    stopped_at       BIGINT,
    terminate_cause  BIGINT
);
CREATE UNIQUE INDEX access_sessions_one_active_per_client
    ON access_sessions(organization_id, client_ip) WHERE state = 'active';
CREATE INDEX access_sessions_due ON access_sessions(expires_at) WHERE state = 'active';
CREATE INDEX access_sessions_interim_due ON access_sessions(next_interim_at) WHERE state = 'active';
CREATE INDEX access_sessions_stopped ON access_sessions(stopped_at) WHERE state = 'stopped';
CREATE INDEX access_sessions_active_by_org ON access_sessions(organization_id) WHERE state = 'active';
CREATE INDEX access_sessions_active_by_ip ON access_sessions(client_ip) WHERE state = 'active';

-- Class values indexed for Disconnect-Requests (the session keeps the exact bytes to echo).
CREATE TABLE session_classes (
    access_session_id BIGINT NOT NULL REFERENCES access_sessions(id) ON DELETE CASCADE,
    class             BYTEA NOT NULL
);
CREATE INDEX session_classes_by_class ON session_classes(class);
CREATE INDEX session_classes_by_session ON session_classes(access_session_id);

-- Durable accounting: every Start/Interim/Stop is written here, in the same transaction as the
-- session change, before it is sent; delivered and dead-lettered rows stay as history.
CREATE TABLE accounting_outbox (
    id                BIGSERIAL PRIMARY KEY,
    access_session_id BIGINT NOT NULL REFERENCES access_sessions(id),
    destination       TEXT NOT NULL,
    status_type       BIGINT NOT NULL,      -- 1 Start, 2 Stop, 3 Interim-Update
    event_at          BIGINT NOT NULL,
    session_time_secs BIGINT,
    terminate_cause   BIGINT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    transmissions     BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL,
    claimed_until     BIGINT,               -- a sender (of any replica) owns the row until then
    last_error        TEXT,
    delivered_at      BIGINT,
    dead_at           BIGINT,
    dead_reason       TEXT,
    created_at        BIGINT NOT NULL
);
CREATE INDEX accounting_outbox_pending ON accounting_outbox(next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX accounting_outbox_by_session ON accounting_outbox(access_session_id, id);
CREATE INDEX accounting_outbox_dead ON accounting_outbox(dead_at) WHERE dead_at IS NOT NULL;

-- Durable work for the running portals, left by a change or by an operator command.
CREATE TABLE organization_jobs (
    id                BIGSERIAL PRIMARY KEY,
    organization_id   TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('stop_sessions', 'terminate_session')),
    access_session_id BIGINT,
    created_at        BIGINT NOT NULL,
    done_at           BIGINT,
    outcome           TEXT
);
CREATE INDEX organization_jobs_pending ON organization_jobs(id) WHERE done_at IS NULL;

-- Who did what. Never secrets or passwords.
CREATE TABLE audit_log (
    id              BIGSERIAL PRIMARY KEY,
    at              BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    organization_id TEXT,
    detail          TEXT NOT NULL           -- JSON
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Keys the portal generates for itself, shared by every replica.
CREATE TABLE app_secrets (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- Web sessions (tower-sessions records, MessagePack), shared by every replica.
CREATE TABLE tower_sessions (
    id          TEXT PRIMARY KEY,
    data        BYTEA NOT NULL,
    expiry_date BIGINT NOT NULL             -- Unix seconds
);
CREATE INDEX tower_sessions_expiry ON tower_sessions (expiry_date);
