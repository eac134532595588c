-- The Access-Accept's Idle-Timeout and Session-Timeout in seconds (0: it had none), so that a
-- refresh gives the session what its organization's settings give now (`default_window`,
-- `max_lifetime`) where the Accept left them to it. NULL for sessions stored before: they keep
-- the window and limit they were given.
ALTER TABLE access_sessions ADD COLUMN accept_idle_timeout BIGINT;
ALTER TABLE access_sessions ADD COLUMN accept_session_timeout BIGINT;
