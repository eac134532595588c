-- Organizations become the run-time truth (seeded from configuration, changed by the CLI and the
-- admin API): their settings (JSON, secrets included — never shown), a per-row revision and a
-- global one that running processes poll to drop exactly the changed organizations from their
-- caches.
ALTER TABLE organizations ADD COLUMN settings TEXT;
ALTER TABLE organizations ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
ALTER TABLE organizations ADD COLUMN created_at INTEGER;
ALTER TABLE organizations ADD COLUMN position INTEGER;   -- order in the configuration (default org = lowest)

CREATE TABLE organization_revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO organization_revision (id, value) VALUES (1, 0);

-- Durable work for the running portal, left by a change ("stop every open session" on disable,
-- written in the same transaction) or by an operator command in another process ("terminate
-- this session"): done by the running portal's worker, re-run after a crash.
CREATE TABLE organization_jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id   TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('stop_sessions', 'terminate_session')),
    access_session_id INTEGER,
    created_at      INTEGER NOT NULL,
    done_at         INTEGER,
    outcome         TEXT
);
CREATE INDEX organization_jobs_pending ON organization_jobs(id) WHERE done_at IS NULL;
CREATE INDEX access_sessions_active_by_org ON access_sessions(organization_id) WHERE state = 'active';

-- Who did what: organization changes, guard denials, job outcomes. Never secrets or passwords.
CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              INTEGER NOT NULL,           -- unix ms
    actor           TEXT NOT NULL,              -- 'config', 'cli:<user>', 'system', ...
    action          TEXT NOT NULL,              -- 'org.create', 'org.disable', 'guard.denied', ...
    organization_id TEXT,
    detail          TEXT NOT NULL               -- JSON
);
CREATE INDEX audit_log_at ON audit_log(at);
