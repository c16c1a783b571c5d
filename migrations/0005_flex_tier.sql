-- Claims are per (model, tier): flex and default have separate limits (issue 10). The queue
-- index leads with the tier too, so a flex claim does not scan a default backlog (or the
-- reverse) to find its first due job.
CREATE INDEX jobs_queue_tier ON jobs (state, model, service_tier, priority DESC, id);
