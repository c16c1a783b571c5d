-- `jobs_queue` (state, model, priority, id) is a prefix of nothing `jobs_queue_tier` (state,
-- model, service_tier, priority, id) cannot answer: every claim reads one tier, and the reads
-- that span tiers (the queued models, the overview's waiting jobs, one model's queue for the
-- governor) seek by (state, model) or read the whole range anyway. Each insert and each state
-- change paid for both: in a 100 000-job insert on PostgreSQL 15 the index cost about 0.45 s
-- of 2 s.
DROP INDEX IF EXISTS jobs_queue;
