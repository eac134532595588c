-- Servers other than a session's own accounting server that were sent a packet of the session
-- (a failover, or a packet left unanswered): each may hold the session open — a server that was
-- frozen or overloaded rather than dead processes its backlog later — so the session's Stop is
-- copied to each. Rows are written only off the common path (a failure, a failover).
CREATE TABLE accounting_sent (
    access_session_id BIGINT NOT NULL REFERENCES access_sessions(id) ON DELETE CASCADE,
    server            TEXT NOT NULL,
    PRIMARY KEY (access_session_id, server)
);
