-- A server a session's Accounting-Start was sent to without an answer before another server
-- acknowledged it (the session's accounting then moved there). A server that was only slow or
-- black-holed may still process that Start, so the session's Stop is copied to it as well.
ALTER TABLE access_sessions ADD COLUMN stray_start_server TEXT;
