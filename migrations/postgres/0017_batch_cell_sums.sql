-- The batch cells, striped and with `batch show`'s sums (SQLite migrations/0024_batch_cell_sums.sql
-- adds the same columns; store/counters.rs has the design).
--
-- Stripes, as 0016 does for the claim counters: every job of a batch moves the same few cells,
-- and each cell was one row, locked from a transition's trigger to its commit. Each cell now
-- has up to 16 rows, one for each stripe (`pg_backend_pid() % 16`); reads sum them. No
-- trigger deletes a row any more (a stripe may go negative); maintenance deletes the cells
-- whose stripes all sum to zero (`Store::prune_counters`).
--
-- Sums and bounds: `batch show` grouped every job of the batch on each call (0.5-1.3 s at
-- 100 000 jobs under load, docs/performance-fleet.md). The cells now also keep est_tokens,
-- est_tokens_of_used (the estimate of the jobs with a usage), gen_ms_sum and gen_ms_count as
-- sums, and first_created, first_submitted (the earliest of the jobs that came into the cell)
-- and last_finished (the latest) as bounds: a minimum cannot be taken back by a delta, so a job
-- that leaves a cell leaves its time in the bound until the cell is pruned.

ALTER TABLE ui_batch_counts
    ADD COLUMN stripe SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN est_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN est_tokens_of_used BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN gen_ms_sum BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN gen_ms_count BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN first_created BIGINT,
    ADD COLUMN first_submitted BIGINT,
    ADD COLUMN last_finished BIGINT;
ALTER TABLE ui_batch_counts DROP CONSTRAINT ui_batch_counts_pkey;
ALTER TABLE ui_batch_counts ADD PRIMARY KEY (batch_id, state, model, service_tier, shape, stripe);

DELETE FROM ui_batch_counts;
INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, jobs, usage_tokens,
    est_tokens, est_tokens_of_used, gen_ms_sum, gen_ms_count, first_created, first_submitted,
    last_finished)
SELECT batch_id, state, model, service_tier, COALESCE(shape, ''), COUNT(*),
       COALESCE(SUM(usage_tokens), 0), COALESCE(SUM(est_tokens), 0),
       COALESCE(SUM(est_tokens) FILTER (WHERE usage_tokens IS NOT NULL), 0),
       COALESCE(SUM(gen_ms), 0), COUNT(gen_ms), MIN(created_at), MIN(submitted_at),
       MAX(finished_at)
FROM jobs WHERE batch_id IS NOT NULL
GROUP BY 1, 2, 3, 4, 5;

-- One change of one cell in the backend's stripe: the sums added (negative to take a job
-- out), the bounds widened (NULL leaves them; LEAST and GREATEST skip NULLs). PL/pgSQL, not
-- SQL: it keeps its statement's plan for the session, and it runs for every job that moves.
CREATE FUNCTION seedq_batch_cell_add(b TEXT, st TEXT, m TEXT, t TEXT, sh TEXT, n BIGINT,
    usage BIGINT, est BIGINT, est_used BIGINT, gen_sum BIGINT, gen_n BIGINT, created BIGINT,
    submitted BIGINT, finished BIGINT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, stripe, jobs,
        usage_tokens, est_tokens, est_tokens_of_used, gen_ms_sum, gen_ms_count, first_created,
        first_submitted, last_finished)
    VALUES (b, st, m, t, sh, pg_backend_pid() % 16, n, usage, est, est_used, gen_sum, gen_n,
        created, submitted, finished)
    ON CONFLICT (batch_id, state, model, service_tier, shape, stripe) DO UPDATE SET
        jobs = ui_batch_counts.jobs + excluded.jobs,
        usage_tokens = ui_batch_counts.usage_tokens + excluded.usage_tokens,
        est_tokens = ui_batch_counts.est_tokens + excluded.est_tokens,
        est_tokens_of_used = ui_batch_counts.est_tokens_of_used + excluded.est_tokens_of_used,
        gen_ms_sum = ui_batch_counts.gen_ms_sum + excluded.gen_ms_sum,
        gen_ms_count = ui_batch_counts.gen_ms_count + excluded.gen_ms_count,
        first_created = LEAST(ui_batch_counts.first_created, excluded.first_created),
        first_submitted = LEAST(ui_batch_counts.first_submitted, excluded.first_submitted),
        last_finished = GREATEST(ui_batch_counts.last_finished, excluded.last_finished);
END $$;

-- Inserts and deletes are counted per statement from the transition table (0001), ordered by
-- the key so that concurrent statements of one stripe lock its rows in one order.
CREATE OR REPLACE FUNCTION seedq_batch_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, stripe, jobs,
        usage_tokens, est_tokens, est_tokens_of_used, gen_ms_sum, gen_ms_count, first_created,
        first_submitted, last_finished)
    SELECT batch_id, state, model, service_tier, COALESCE(shape, ''), pg_backend_pid() % 16,
           COUNT(*), COALESCE(SUM(usage_tokens), 0), COALESCE(SUM(est_tokens), 0),
           COALESCE(SUM(est_tokens) FILTER (WHERE usage_tokens IS NOT NULL), 0),
           COALESCE(SUM(gen_ms), 0), COUNT(gen_ms), MIN(created_at), MIN(submitted_at),
           MAX(finished_at)
    FROM added WHERE batch_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (batch_id, state, model, service_tier, shape, stripe) DO UPDATE SET
        jobs = ui_batch_counts.jobs + excluded.jobs,
        usage_tokens = ui_batch_counts.usage_tokens + excluded.usage_tokens,
        est_tokens = ui_batch_counts.est_tokens + excluded.est_tokens,
        est_tokens_of_used = ui_batch_counts.est_tokens_of_used + excluded.est_tokens_of_used,
        gen_ms_sum = ui_batch_counts.gen_ms_sum + excluded.gen_ms_sum,
        gen_ms_count = ui_batch_counts.gen_ms_count + excluded.gen_ms_count,
        first_created = LEAST(ui_batch_counts.first_created, excluded.first_created),
        first_submitted = LEAST(ui_batch_counts.first_submitted, excluded.first_submitted),
        last_finished = GREATEST(ui_batch_counts.last_finished, excluded.last_finished);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION seedq_batch_counts_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, stripe, jobs,
        usage_tokens, est_tokens, est_tokens_of_used, gen_ms_sum, gen_ms_count)
    SELECT batch_id, state, model, service_tier, COALESCE(shape, ''), pg_backend_pid() % 16,
           -COUNT(*), -COALESCE(SUM(usage_tokens), 0), -COALESCE(SUM(est_tokens), 0),
           -COALESCE(SUM(est_tokens) FILTER (WHERE usage_tokens IS NOT NULL), 0),
           -COALESCE(SUM(gen_ms), 0), -COUNT(gen_ms)
    FROM removed WHERE batch_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (batch_id, state, model, service_tier, shape, stripe) DO UPDATE SET
        jobs = ui_batch_counts.jobs + excluded.jobs,
        usage_tokens = ui_batch_counts.usage_tokens + excluded.usage_tokens,
        est_tokens = ui_batch_counts.est_tokens + excluded.est_tokens,
        est_tokens_of_used = ui_batch_counts.est_tokens_of_used + excluded.est_tokens_of_used,
        gen_ms_sum = ui_batch_counts.gen_ms_sum + excluded.gen_ms_sum,
        gen_ms_count = ui_batch_counts.gen_ms_count + excluded.gen_ms_count;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION seedq_batch_counts_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.batch_id IS NOT NULL THEN
        PERFORM seedq_batch_cell_add(OLD.batch_id, OLD.state, OLD.model, OLD.service_tier,
            COALESCE(OLD.shape, ''), -1, -COALESCE(OLD.usage_tokens, 0),
            -COALESCE(OLD.est_tokens, 0),
            CASE WHEN OLD.usage_tokens IS NOT NULL THEN -COALESCE(OLD.est_tokens, 0) ELSE 0 END,
            -COALESCE(OLD.gen_ms, 0), CASE WHEN OLD.gen_ms IS NOT NULL THEN -1 ELSE 0 END,
            NULL, NULL, NULL);
    END IF;
    IF NEW.batch_id IS NOT NULL THEN
        PERFORM seedq_batch_cell_add(NEW.batch_id, NEW.state, NEW.model, NEW.service_tier,
            COALESCE(NEW.shape, ''), 1, COALESCE(NEW.usage_tokens, 0),
            COALESCE(NEW.est_tokens, 0),
            CASE WHEN NEW.usage_tokens IS NOT NULL THEN COALESCE(NEW.est_tokens, 0) ELSE 0 END,
            COALESCE(NEW.gen_ms, 0), CASE WHEN NEW.gen_ms IS NOT NULL THEN 1 ELSE 0 END,
            NEW.created_at, NEW.submitted_at, NEW.finished_at);
    END IF;
    RETURN NULL;
END $$;

-- The row trigger of 0001, also for the columns the new sums and bounds read.
DROP TRIGGER ui_batch_counts_update ON jobs;
CREATE TRIGGER ui_batch_counts_update
AFTER UPDATE OF state, usage_tokens, batch_id, model, service_tier, shape, est_tokens, gen_ms,
    created_at, submitted_at, finished_at ON jobs
FOR EACH ROW
WHEN ((OLD.batch_id IS NOT NULL OR NEW.batch_id IS NOT NULL)
  AND (OLD.state IS DISTINCT FROM NEW.state
       OR OLD.usage_tokens IS DISTINCT FROM NEW.usage_tokens
       OR OLD.batch_id IS DISTINCT FROM NEW.batch_id OR OLD.model IS DISTINCT FROM NEW.model
       OR OLD.service_tier IS DISTINCT FROM NEW.service_tier
       OR OLD.shape IS DISTINCT FROM NEW.shape
       OR OLD.est_tokens IS DISTINCT FROM NEW.est_tokens
       OR OLD.gen_ms IS DISTINCT FROM NEW.gen_ms
       OR OLD.created_at IS DISTINCT FROM NEW.created_at
       OR OLD.submitted_at IS DISTINCT FROM NEW.submitted_at
       OR OLD.finished_at IS DISTINCT FROM NEW.finished_at))
EXECUTE FUNCTION seedq_batch_counts_move();
