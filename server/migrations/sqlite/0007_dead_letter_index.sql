-- Dead letters are counted at every metrics scrape: a partial index keeps that cheap however
-- much delivered history the outbox holds.
CREATE INDEX accounting_outbox_dead ON accounting_outbox(dead_at) WHERE dead_at IS NOT NULL;
