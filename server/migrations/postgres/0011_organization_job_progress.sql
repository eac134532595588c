-- How many sessions a disable's stop job has stopped so far (each batch adds its own in the
-- same transaction), so that an enable closing the job half-way can say how many it stopped.
ALTER TABLE organization_jobs ADD COLUMN stopped BIGINT NOT NULL DEFAULT 0;
