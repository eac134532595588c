-- Web sessions, now stored by the portal's own engine (formerly tower-sessions' sqlx store,
-- which created this table at start-up and wrote expiry dates as RFC 3339 text). Expiry is Unix
-- seconds from here on; existing sessions keep working.
CREATE TABLE IF NOT EXISTS tower_sessions (
    id TEXT PRIMARY KEY NOT NULL,
    data BLOB NOT NULL,
    expiry_date INTEGER NOT NULL
);
UPDATE tower_sessions SET expiry_date = CAST(strftime('%s', expiry_date) AS INTEGER)
    WHERE typeof(expiry_date) = 'text' AND strftime('%s', expiry_date) IS NOT NULL;
DELETE FROM tower_sessions WHERE typeof(expiry_date) != 'integer';
CREATE INDEX IF NOT EXISTS tower_sessions_expiry ON tower_sessions (expiry_date);
