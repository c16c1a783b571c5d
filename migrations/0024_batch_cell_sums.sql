-- `seedq batch show` from the batch cells (store/counters.rs): `ui_batch_counts` (0008) kept
-- only jobs and billed tokens per (batch, state, model, tier, shape), so `batch show` grouped
-- every job of the batch again on each call: 0.5-1.3 s at 100 000 jobs on PostgreSQL under
-- load, and growing with the batch (docs/performance-fleet.md). The cells now also keep the
-- other sums `batch show` prints, and the times as bounds:
--   est_tokens, est_tokens_of_used (the estimate of the jobs with a usage), gen_ms_sum,
--   gen_ms_count: sums, moved by the same triggers as `jobs` and checked against a recount;
--   first_created, first_submitted: the earliest of the jobs that came into the cell;
--   last_finished: the latest.
-- A minimum cannot be taken back by a delta: a job that leaves a cell leaves its time in the
-- bound until the cell empties (its row is then deleted). Over a batch (what `batch show`
-- sums) the bounds are exact while no job has been retried (which clears its times) or pruned.

ALTER TABLE ui_batch_counts ADD COLUMN est_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ui_batch_counts ADD COLUMN est_tokens_of_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ui_batch_counts ADD COLUMN gen_ms_sum INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ui_batch_counts ADD COLUMN gen_ms_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ui_batch_counts ADD COLUMN first_created INTEGER;
ALTER TABLE ui_batch_counts ADD COLUMN first_submitted INTEGER;
ALTER TABLE ui_batch_counts ADD COLUMN last_finished INTEGER;

DELETE FROM ui_batch_counts;
INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, jobs, usage_tokens,
    est_tokens, est_tokens_of_used, gen_ms_sum, gen_ms_count, first_created, first_submitted,
    last_finished)
SELECT batch_id, state, model, service_tier, COALESCE(shape, ''), COUNT(*),
       COALESCE(SUM(usage_tokens), 0), COALESCE(SUM(est_tokens), 0),
       COALESCE(SUM(CASE WHEN usage_tokens IS NOT NULL THEN est_tokens END), 0),
       COALESCE(SUM(gen_ms), 0), COUNT(gen_ms), MIN(created_at), MIN(submitted_at),
       MAX(finished_at)
FROM jobs WHERE batch_id IS NOT NULL
GROUP BY batch_id, state, model, service_tier, COALESCE(shape, '');

-- As in 0008 and 0011, with the new columns. SQLite's min() and max() of several arguments
-- are NULL when one is, hence the COALESCEs.
DROP TRIGGER ui_batch_counts_insert;
CREATE TRIGGER ui_batch_counts_insert AFTER INSERT ON jobs
WHEN NEW.batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM enqueue_bulk)
BEGIN
    INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, jobs,
        usage_tokens, est_tokens, est_tokens_of_used, gen_ms_sum, gen_ms_count, first_created,
        first_submitted, last_finished)
    VALUES (NEW.batch_id, NEW.state, NEW.model, NEW.service_tier, COALESCE(NEW.shape, ''), 1,
        COALESCE(NEW.usage_tokens, 0), COALESCE(NEW.est_tokens, 0),
        CASE WHEN NEW.usage_tokens IS NOT NULL THEN COALESCE(NEW.est_tokens, 0) ELSE 0 END,
        COALESCE(NEW.gen_ms, 0), NEW.gen_ms IS NOT NULL, NEW.created_at, NEW.submitted_at,
        NEW.finished_at)
    ON CONFLICT DO UPDATE SET jobs = jobs + 1,
        usage_tokens = usage_tokens + excluded.usage_tokens,
        est_tokens = est_tokens + excluded.est_tokens,
        est_tokens_of_used = est_tokens_of_used + excluded.est_tokens_of_used,
        gen_ms_sum = gen_ms_sum + excluded.gen_ms_sum,
        gen_ms_count = gen_ms_count + excluded.gen_ms_count,
        first_created = COALESCE(min(first_created, excluded.first_created), first_created,
                                 excluded.first_created),
        first_submitted = COALESCE(min(first_submitted, excluded.first_submitted),
                                   first_submitted, excluded.first_submitted),
        last_finished = COALESCE(max(last_finished, excluded.last_finished), last_finished,
                                 excluded.last_finished);
END;

DROP TRIGGER ui_batch_counts_delete;
CREATE TRIGGER ui_batch_counts_delete AFTER DELETE ON jobs WHEN OLD.batch_id IS NOT NULL
BEGIN
    UPDATE ui_batch_counts SET jobs = jobs - 1,
        usage_tokens = usage_tokens - COALESCE(OLD.usage_tokens, 0),
        est_tokens = est_tokens - COALESCE(OLD.est_tokens, 0),
        est_tokens_of_used = est_tokens_of_used
            - CASE WHEN OLD.usage_tokens IS NOT NULL THEN COALESCE(OLD.est_tokens, 0) ELSE 0 END,
        gen_ms_sum = gen_ms_sum - COALESCE(OLD.gen_ms, 0),
        gen_ms_count = gen_ms_count - (OLD.gen_ms IS NOT NULL)
    WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
      AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '');
    DELETE FROM ui_batch_counts
    WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
      AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '') AND jobs <= 0;
END;

DROP TRIGGER ui_batch_counts_update;
CREATE TRIGGER ui_batch_counts_update
AFTER UPDATE OF state, usage_tokens, batch_id, model, service_tier, shape, est_tokens, gen_ms,
    created_at, submitted_at, finished_at ON jobs
WHEN (OLD.batch_id IS NOT NULL OR NEW.batch_id IS NOT NULL)
 AND (OLD.state IS NOT NEW.state OR OLD.usage_tokens IS NOT NEW.usage_tokens
      OR OLD.batch_id IS NOT NEW.batch_id OR OLD.model IS NOT NEW.model
      OR OLD.service_tier IS NOT NEW.service_tier OR OLD.shape IS NOT NEW.shape
      OR OLD.est_tokens IS NOT NEW.est_tokens OR OLD.gen_ms IS NOT NEW.gen_ms
      OR OLD.created_at IS NOT NEW.created_at OR OLD.submitted_at IS NOT NEW.submitted_at
      OR OLD.finished_at IS NOT NEW.finished_at)
BEGIN
    UPDATE ui_batch_counts SET jobs = jobs - 1,
        usage_tokens = usage_tokens - COALESCE(OLD.usage_tokens, 0),
        est_tokens = est_tokens - COALESCE(OLD.est_tokens, 0),
        est_tokens_of_used = est_tokens_of_used
            - CASE WHEN OLD.usage_tokens IS NOT NULL THEN COALESCE(OLD.est_tokens, 0) ELSE 0 END,
        gen_ms_sum = gen_ms_sum - COALESCE(OLD.gen_ms, 0),
        gen_ms_count = gen_ms_count - (OLD.gen_ms IS NOT NULL)
    WHERE OLD.batch_id IS NOT NULL AND batch_id = OLD.batch_id AND state = OLD.state
      AND model = OLD.model AND service_tier = OLD.service_tier
      AND shape = COALESCE(OLD.shape, '');
    DELETE FROM ui_batch_counts
    WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
      AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '') AND jobs <= 0;
    INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, jobs,
        usage_tokens, est_tokens, est_tokens_of_used, gen_ms_sum, gen_ms_count, first_created,
        first_submitted, last_finished)
    SELECT NEW.batch_id, NEW.state, NEW.model, NEW.service_tier, COALESCE(NEW.shape, ''), 1,
        COALESCE(NEW.usage_tokens, 0), COALESCE(NEW.est_tokens, 0),
        CASE WHEN NEW.usage_tokens IS NOT NULL THEN COALESCE(NEW.est_tokens, 0) ELSE 0 END,
        COALESCE(NEW.gen_ms, 0), NEW.gen_ms IS NOT NULL, NEW.created_at, NEW.submitted_at,
        NEW.finished_at
    WHERE NEW.batch_id IS NOT NULL
    ON CONFLICT DO UPDATE SET jobs = jobs + 1,
        usage_tokens = usage_tokens + excluded.usage_tokens,
        est_tokens = est_tokens + excluded.est_tokens,
        est_tokens_of_used = est_tokens_of_used + excluded.est_tokens_of_used,
        gen_ms_sum = gen_ms_sum + excluded.gen_ms_sum,
        gen_ms_count = gen_ms_count + excluded.gen_ms_count,
        first_created = COALESCE(min(first_created, excluded.first_created), first_created,
                                 excluded.first_created),
        first_submitted = COALESCE(min(first_submitted, excluded.first_submitted),
                                   first_submitted, excluded.first_submitted),
        last_finished = COALESCE(max(last_finished, excluded.last_finished), last_finished,
                                 excluded.last_finished);
END;
