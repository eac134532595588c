-- The NAS identity each session's accounting presents, as at its login (an operator's later
-- change of nas_ip / nas_identifier must not orphan open sessions at the RADIUS server).
-- NULL for sessions stored before: the organization's current identity applies to them.
ALTER TABLE access_sessions ADD COLUMN nas_ip TEXT;
ALTER TABLE access_sessions ADD COLUMN nas_identifier TEXT;
