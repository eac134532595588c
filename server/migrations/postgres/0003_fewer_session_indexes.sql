-- Fewer indexes for a login and a stop to update: the one-active-session-per-client index
-- leads with the address, so it also serves lookups by address alone (Disconnect-Request by
-- User-Name + Framed-IP-Address) and the separate address index goes; sessions without
-- periodic Interim-Updates are no longer in the interim index.
DROP INDEX access_sessions_one_active_per_client;
CREATE UNIQUE INDEX access_sessions_one_active_per_client
    ON access_sessions(client_ip, organization_id) WHERE state = 'active';
DROP INDEX access_sessions_active_by_ip;
DROP INDEX access_sessions_interim_due;
CREATE INDEX access_sessions_interim_due ON access_sessions(next_interim_at)
    WHERE state = 'active' AND next_interim_at IS NOT NULL;
