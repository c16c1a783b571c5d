-- The best estimate of how long the remote generation took (ms), recorded when a job's
-- success is seen: the midpoint between the last poll that saw it running and the one that saw
-- it done, or the time to the first poll when that one already saw it done. Polling learns the
-- next first-poll time from it (see worker/poll.rs).
ALTER TABLE jobs ADD COLUMN gen_ms INTEGER;

CREATE INDEX jobs_history ON jobs (model, service_tier, shape, finished_at)
    WHERE gen_ms IS NOT NULL;
