-- Periodic Interim-Update (Acct-Interim-Interval from the Accept): when the next one is due.
ALTER TABLE access_sessions ADD COLUMN next_interim_at INTEGER;
CREATE INDEX access_sessions_interim_due ON access_sessions(next_interim_at) WHERE state = 'active';
