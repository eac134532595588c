-- A session a sign-in opened is that sign-in's until `sign_in_until` (ms), renewed while it
-- runs: a Start taken by the delivery loop of a session still active whose sign-in lease has
-- run out belongs to a sign-in whose process died during it (no user was given the session),
-- and the session is ended. NULL: a session whose Start was left to the delivery loop.
ALTER TABLE access_sessions ADD COLUMN sign_in_until INTEGER;
