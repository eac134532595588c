-- A disable's stop job takes an organization's open sessions in id order, 256 at a time: the
-- index of active sessions by organization now also orders them by id, so each batch reads its
-- 256 entries instead of sorting every open session left (quadratic for a large organization).
CREATE INDEX access_sessions_active_by_org_id ON access_sessions(organization_id, id) WHERE state = 'active';
DROP INDEX access_sessions_active_by_org;
