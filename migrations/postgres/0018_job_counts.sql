-- `seedq stats` without a scan, as SQLite has had since migrations/0018_job_counts.sql: jobs,
-- tokens and the archive's numbers per model and state, kept by triggers in the same
-- transaction as every change of a job. `Store::stats`, `archive_stats` and `state_counts`
-- read these few rows instead of grouping every job (1.0-1.3 s at 1 000 000 jobs under a
-- fleet's load, docs/performance-fleet.md). Striped as 0016's counters are (up to 16 rows a
-- key, `pg_backend_pid() % 16`, summed on read); rows at zero are pruned by maintenance.
CREATE TABLE job_counts (
    model           TEXT NOT NULL,
    state           TEXT NOT NULL,
    stripe          SMALLINT NOT NULL DEFAULT 0,
    jobs            BIGINT NOT NULL,
    est_tokens      BIGINT NOT NULL,  -- SUM(est_tokens)
    usage_tokens    BIGINT NOT NULL,  -- SUM(usage_tokens)
    archive_bytes   BIGINT NOT NULL,  -- SUM(archive_size)
    archive_retried BIGINT NOT NULL,  -- jobs with archive_attempts > 0
    result_expired  BIGINT NOT NULL,  -- jobs whose last_error_code is 'result_expired'
    PRIMARY KEY (model, state, stripe)
);

INSERT INTO job_counts (model, state, jobs, est_tokens, usage_tokens, archive_bytes,
    archive_retried, result_expired)
SELECT model, state, COUNT(*), COALESCE(SUM(est_tokens), 0), COALESCE(SUM(usage_tokens), 0),
       COALESCE(SUM(archive_size), 0), COUNT(*) FILTER (WHERE archive_attempts > 0),
       COUNT(*) FILTER (WHERE last_error_code = 'result_expired')
FROM jobs GROUP BY model, state;

-- Inserts and deletes per statement, from the transition table; `sign` is 1 or -1.
CREATE FUNCTION seedq_job_counts_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sign BIGINT := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    INSERT INTO job_counts (model, state, stripe, jobs, est_tokens, usage_tokens, archive_bytes,
        archive_retried, result_expired)
    SELECT model, state, pg_backend_pid() % 16, sign * COUNT(*),
           sign * COALESCE(SUM(est_tokens), 0), sign * COALESCE(SUM(usage_tokens), 0),
           sign * COALESCE(SUM(archive_size), 0),
           sign * COUNT(*) FILTER (WHERE archive_attempts > 0),
           sign * COUNT(*) FILTER (WHERE last_error_code = 'result_expired')
    FROM changed GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (model, state, stripe) DO UPDATE SET
        jobs = job_counts.jobs + excluded.jobs,
        est_tokens = job_counts.est_tokens + excluded.est_tokens,
        usage_tokens = job_counts.usage_tokens + excluded.usage_tokens,
        archive_bytes = job_counts.archive_bytes + excluded.archive_bytes,
        archive_retried = job_counts.archive_retried + excluded.archive_retried,
        result_expired = job_counts.result_expired + excluded.result_expired;
    RETURN NULL;
END $$;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION seedq_job_counts_rows();
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION seedq_job_counts_rows();

-- Updates move one job from one key to another, per row, only when a counted column changes
-- (leases, heartbeats and polls leave them alone).
-- Two statements, not one of two rows: when the key stays (a change of tokens alone), one
-- upsert may not touch its row twice. Written out rather than calling a helper: a claim runs
-- this for each job it takes, under the tier's lock, and a PL/pgSQL call costs a context each.
CREATE FUNCTION seedq_job_counts_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s SMALLINT := pg_backend_pid() % 16;
BEGIN
    INSERT INTO job_counts (model, state, stripe, jobs, est_tokens, usage_tokens, archive_bytes,
        archive_retried, result_expired)
    VALUES (OLD.model, OLD.state, s, -1, -COALESCE(OLD.est_tokens, 0),
        -COALESCE(OLD.usage_tokens, 0), -COALESCE(OLD.archive_size, 0),
        CASE WHEN OLD.archive_attempts > 0 THEN -1 ELSE 0 END,
        CASE WHEN OLD.last_error_code = 'result_expired' THEN -1 ELSE 0 END)
    ON CONFLICT (model, state, stripe) DO UPDATE SET
        jobs = job_counts.jobs + excluded.jobs,
        est_tokens = job_counts.est_tokens + excluded.est_tokens,
        usage_tokens = job_counts.usage_tokens + excluded.usage_tokens,
        archive_bytes = job_counts.archive_bytes + excluded.archive_bytes,
        archive_retried = job_counts.archive_retried + excluded.archive_retried,
        result_expired = job_counts.result_expired + excluded.result_expired;
    INSERT INTO job_counts (model, state, stripe, jobs, est_tokens, usage_tokens, archive_bytes,
        archive_retried, result_expired)
    VALUES (NEW.model, NEW.state, s, 1, COALESCE(NEW.est_tokens, 0),
        COALESCE(NEW.usage_tokens, 0), COALESCE(NEW.archive_size, 0),
        CASE WHEN NEW.archive_attempts > 0 THEN 1 ELSE 0 END,
        CASE WHEN NEW.last_error_code = 'result_expired' THEN 1 ELSE 0 END)
    ON CONFLICT (model, state, stripe) DO UPDATE SET
        jobs = job_counts.jobs + excluded.jobs,
        est_tokens = job_counts.est_tokens + excluded.est_tokens,
        usage_tokens = job_counts.usage_tokens + excluded.usage_tokens,
        archive_bytes = job_counts.archive_bytes + excluded.archive_bytes,
        archive_retried = job_counts.archive_retried + excluded.archive_retried,
        result_expired = job_counts.result_expired + excluded.result_expired;
    RETURN NULL;
END $$;

CREATE TRIGGER job_counts_update
AFTER UPDATE OF model, state, est_tokens, usage_tokens, archive_size, archive_attempts,
    last_error_code ON jobs
FOR EACH ROW
WHEN (OLD.model IS DISTINCT FROM NEW.model OR OLD.state IS DISTINCT FROM NEW.state
   OR OLD.est_tokens IS DISTINCT FROM NEW.est_tokens
   OR OLD.usage_tokens IS DISTINCT FROM NEW.usage_tokens
   OR OLD.archive_size IS DISTINCT FROM NEW.archive_size
   OR (OLD.archive_attempts > 0) IS DISTINCT FROM (NEW.archive_attempts > 0)
   OR (OLD.last_error_code = 'result_expired') IS DISTINCT FROM
      (NEW.last_error_code = 'result_expired'))
EXECUTE FUNCTION seedq_job_counts_move();
