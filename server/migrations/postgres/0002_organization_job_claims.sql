-- Organization jobs are claimed by one replica at a time (a lease, like outbox rows): a stop job
-- runs on one replica, whose outcome is the one audited; a replica that dies mid-job leaves it
-- to another once the lease ends.
ALTER TABLE organization_jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE organization_jobs ADD COLUMN claimed_until BIGINT;
