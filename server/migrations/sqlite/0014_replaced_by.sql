-- The session that replaced this one by a sign-in of the same browser (its web session linked
-- to this one, or its sign-in came just after this one's): a browser still holding a link to
-- this session — a cookie of two sign-ins sent together — follows it there. NULL otherwise.
ALTER TABLE access_sessions ADD COLUMN replaced_by INTEGER;
