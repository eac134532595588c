-- Dead letters: a row that can never be sent (cannot be encoded, organization gone, Start
-- cancelled by the disabled-organization guard or never acknowledged) is closed with a reason
-- instead of blocking the rows behind it. It stays as history with the reason.
ALTER TABLE accounting_outbox ADD COLUMN dead_at INTEGER;
ALTER TABLE accounting_outbox ADD COLUMN dead_reason TEXT;
-- Packets actually put on the wire for this row (a row never transmitted can be rolled back).
ALTER TABLE accounting_outbox ADD COLUMN transmissions INTEGER NOT NULL DEFAULT 0;
DROP INDEX accounting_outbox_pending;
CREATE INDEX accounting_outbox_pending ON accounting_outbox(next_attempt_at)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX access_sessions_stopped ON access_sessions(stopped_at) WHERE state = 'stopped';
-- The Access-Accept's Reply-Message, shown on the session page.
ALTER TABLE access_sessions ADD COLUMN reply_message TEXT;
