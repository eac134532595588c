-- Disconnect-Requests (RFC 5176) name sessions by Class or by User-Name + Framed-IP-Address:
-- both become index lookups instead of a scan of every active session. Class values stay in
-- access_sessions.classes (echoed byte for byte); this table only indexes them.
CREATE TABLE session_classes (
    access_session_id INTEGER NOT NULL REFERENCES access_sessions(id) ON DELETE CASCADE,
    class             BLOB NOT NULL
);
CREATE INDEX session_classes_by_class ON session_classes(class);
CREATE INDEX session_classes_by_session ON session_classes(access_session_id);
CREATE INDEX access_sessions_active_by_ip ON access_sessions(client_ip) WHERE state = 'active';
