-- The web dashboard (src/ui/): creates of the last minute per model (the RPM gauge) without a
-- scan of every job; only jobs that were ever submitted are in it.
CREATE INDEX jobs_submit_started ON jobs (submit_started_at, model)
    WHERE submit_started_at IS NOT NULL;
