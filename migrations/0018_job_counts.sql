-- `seedq stats` without a scan (docs/performance-claims.md): jobs, tokens and the archive's
-- numbers per model and state, kept by triggers in the same transaction as every change of a
-- job, as 0014's claim counters are. `Store::stats` and `Store::archive_stats` read these few
-- rows instead of grouping every job (3–4.8 s with 1 100 000 jobs). Rows that fall to zero jobs
-- are deleted. The bulk enqueue (store/bulk_index.rs) adds its jobs with one aggregated
-- statement per transaction, so the insert trigger stands aside while it runs (the 0011 marker).
CREATE TABLE job_counts (
    model           TEXT NOT NULL,
    state           TEXT NOT NULL,
    jobs            INTEGER NOT NULL,
    est_tokens      INTEGER NOT NULL,  -- SUM(est_tokens)
    usage_tokens    INTEGER NOT NULL,  -- SUM(usage_tokens)
    archive_bytes   INTEGER NOT NULL,  -- SUM(archive_size)
    archive_retried INTEGER NOT NULL,  -- jobs with archive_attempts > 0
    result_expired  INTEGER NOT NULL,  -- jobs whose last_error_code is 'result_expired'
    PRIMARY KEY (model, state)
) WITHOUT ROWID;

INSERT INTO job_counts
SELECT model, state, COUNT(*), COALESCE(SUM(est_tokens), 0), COALESCE(SUM(usage_tokens), 0),
       COALESCE(SUM(archive_size), 0), SUM(archive_attempts > 0),
       SUM(COALESCE(last_error_code, '') = 'result_expired')
FROM jobs GROUP BY model, state;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
WHEN NOT EXISTS (SELECT 1 FROM enqueue_bulk)
BEGIN
    INSERT INTO job_counts VALUES (NEW.model, NEW.state, 1, COALESCE(NEW.est_tokens, 0),
        COALESCE(NEW.usage_tokens, 0), COALESCE(NEW.archive_size, 0), NEW.archive_attempts > 0,
        COALESCE(NEW.last_error_code, '') = 'result_expired')
    ON CONFLICT DO UPDATE SET jobs = jobs + 1, est_tokens = est_tokens + excluded.est_tokens,
        usage_tokens = usage_tokens + excluded.usage_tokens,
        archive_bytes = archive_bytes + excluded.archive_bytes,
        archive_retried = archive_retried + excluded.archive_retried,
        result_expired = result_expired + excluded.result_expired;
END;

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET jobs = jobs - 1, est_tokens = est_tokens - COALESCE(OLD.est_tokens, 0),
        usage_tokens = usage_tokens - COALESCE(OLD.usage_tokens, 0),
        archive_bytes = archive_bytes - COALESCE(OLD.archive_size, 0),
        archive_retried = archive_retried - (OLD.archive_attempts > 0),
        result_expired = result_expired - (COALESCE(OLD.last_error_code, '') = 'result_expired')
    WHERE model = OLD.model AND state = OLD.state;
    DELETE FROM job_counts WHERE model = OLD.model AND state = OLD.state AND jobs <= 0;
END;

-- Fires only when a counted column changes (leases, heartbeats and polls leave them alone).
CREATE TRIGGER job_counts_update
AFTER UPDATE OF model, state, est_tokens, usage_tokens, archive_size, archive_attempts,
    last_error_code ON jobs
WHEN OLD.model IS NOT NEW.model OR OLD.state IS NOT NEW.state
  OR OLD.est_tokens IS NOT NEW.est_tokens OR OLD.usage_tokens IS NOT NEW.usage_tokens
  OR OLD.archive_size IS NOT NEW.archive_size
  OR (OLD.archive_attempts > 0) IS NOT (NEW.archive_attempts > 0)
  OR (COALESCE(OLD.last_error_code, '') = 'result_expired')
     IS NOT (COALESCE(NEW.last_error_code, '') = 'result_expired')
BEGIN
    UPDATE job_counts SET jobs = jobs - 1, est_tokens = est_tokens - COALESCE(OLD.est_tokens, 0),
        usage_tokens = usage_tokens - COALESCE(OLD.usage_tokens, 0),
        archive_bytes = archive_bytes - COALESCE(OLD.archive_size, 0),
        archive_retried = archive_retried - (OLD.archive_attempts > 0),
        result_expired = result_expired - (COALESCE(OLD.last_error_code, '') = 'result_expired')
    WHERE model = OLD.model AND state = OLD.state;
    DELETE FROM job_counts WHERE model = OLD.model AND state = OLD.state AND jobs <= 0;
    INSERT INTO job_counts VALUES (NEW.model, NEW.state, 1, COALESCE(NEW.est_tokens, 0),
        COALESCE(NEW.usage_tokens, 0), COALESCE(NEW.archive_size, 0), NEW.archive_attempts > 0,
        COALESCE(NEW.last_error_code, '') = 'result_expired')
    ON CONFLICT DO UPDATE SET jobs = jobs + 1, est_tokens = est_tokens + excluded.est_tokens,
        usage_tokens = usage_tokens + excluded.usage_tokens,
        archive_bytes = archive_bytes + excluded.archive_bytes,
        archive_retried = archive_retried + excluded.archive_retried,
        result_expired = result_expired + excluded.result_expired;
END;
