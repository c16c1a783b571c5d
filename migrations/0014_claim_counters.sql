-- Claims that do not count (store/counters.rs): the submit claim reads how many of a tier's
-- tasks hold a remote slot and how many flex tokens the day has spent from two small tables
-- kept by triggers, instead of counting the in-flight jobs and summing the day's tokens on
-- every claim. A trigger runs inside the statement that changes the job, so the counters move
-- in the same transaction as every state change, whichever code path makes it; maintenance
-- recounts them from the jobs now and then and repairs any drift (`Store::check_counters`).

-- Jobs that occupy a remote slot (`IN_FLIGHT_PREDICATE` in store/mod.rs) per model, tier and
-- resolution (the part of `shape` before its first '/', '' for none): the claim's
-- `ResolutionScope::Only` cap reads one row, the tier's cap the sum of a few.
CREATE TABLE in_flight_counts (
    model        TEXT NOT NULL,
    service_tier TEXT NOT NULL,
    resolution   TEXT NOT NULL,
    jobs         INTEGER NOT NULL,
    PRIMARY KEY (model, service_tier, resolution)
) WITHOUT ROWID;

-- Flex tokens of the jobs that made or may have made a task (billed usage where known, else
-- the estimate; the flex TPD spend of store/fleet.rs `room_in_tx`) per model and 15-minute
-- bucket of `submit_started_at`. A day starts on a bucket boundary in every real time zone,
-- so the day's spend is the sum of at most 96 rows.
CREATE TABLE flex_token_counts (
    model  TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (model, bucket)
) WITHOUT ROWID;

INSERT INTO in_flight_counts
SELECT model, service_tier,
       CASE WHEN instr(COALESCE(shape, ''), '/') > 0
            THEN substr(shape, 1, instr(shape, '/') - 1) ELSE COALESCE(shape, '') END,
       COUNT(*)
FROM jobs
WHERE state IN ('submitting', 'submitted')
   OR (state = 'submit_unknown' AND COALESCE(last_error_code, '') <> 'parked')
GROUP BY 1, 2, 3;

INSERT INTO flex_token_counts
SELECT model, (submit_started_at / 900000) * 900000,
       SUM(COALESCE(usage_tokens, est_tokens, 0))
FROM jobs
WHERE service_tier = 'flex' AND submit_started_at IS NOT NULL
  AND (submitted_at IS NOT NULL OR state IN ('submitting', 'submit_unknown'))
GROUP BY 1, 2;

CREATE TRIGGER in_flight_counts_insert AFTER INSERT ON jobs
WHEN NEW.state IN ('submitting', 'submitted')
  OR (NEW.state = 'submit_unknown' AND COALESCE(NEW.last_error_code, '') <> 'parked')
BEGIN
    INSERT INTO in_flight_counts VALUES (NEW.model, NEW.service_tier,
        CASE WHEN instr(COALESCE(NEW.shape, ''), '/') > 0
             THEN substr(NEW.shape, 1, instr(NEW.shape, '/') - 1) ELSE COALESCE(NEW.shape, '') END,
        1)
    ON CONFLICT DO UPDATE SET jobs = jobs + 1;
END;

CREATE TRIGGER in_flight_counts_delete AFTER DELETE ON jobs
WHEN OLD.state IN ('submitting', 'submitted')
  OR (OLD.state = 'submit_unknown' AND COALESCE(OLD.last_error_code, '') <> 'parked')
BEGIN
    UPDATE in_flight_counts SET jobs = jobs - 1
    WHERE model = OLD.model AND service_tier = OLD.service_tier
      AND resolution = CASE WHEN instr(COALESCE(OLD.shape, ''), '/') > 0
            THEN substr(OLD.shape, 1, instr(OLD.shape, '/') - 1) ELSE COALESCE(OLD.shape, '') END;
END;

-- Only updates that move a job into or out of the predicate, or move an in-flight job to
-- another key, fire (leases, heartbeats and polls leave these columns alone or unchanged).
CREATE TRIGGER in_flight_counts_update
AFTER UPDATE OF state, last_error_code, model, service_tier, shape ON jobs
WHEN (OLD.state IN ('submitting', 'submitted')
      OR (OLD.state = 'submit_unknown' AND COALESCE(OLD.last_error_code, '') <> 'parked'))
  IS NOT (NEW.state IN ('submitting', 'submitted')
      OR (NEW.state = 'submit_unknown' AND COALESCE(NEW.last_error_code, '') <> 'parked'))
  OR ((OLD.state IN ('submitting', 'submitted')
      OR (OLD.state = 'submit_unknown' AND COALESCE(OLD.last_error_code, '') <> 'parked'))
      AND (OLD.model IS NOT NEW.model OR OLD.service_tier IS NOT NEW.service_tier
           OR OLD.shape IS NOT NEW.shape))
BEGIN
    UPDATE in_flight_counts SET jobs = jobs - 1
    WHERE (OLD.state IN ('submitting', 'submitted')
           OR (OLD.state = 'submit_unknown' AND COALESCE(OLD.last_error_code, '') <> 'parked'))
      AND model = OLD.model AND service_tier = OLD.service_tier
      AND resolution = CASE WHEN instr(COALESCE(OLD.shape, ''), '/') > 0
            THEN substr(OLD.shape, 1, instr(OLD.shape, '/') - 1) ELSE COALESCE(OLD.shape, '') END;
    INSERT INTO in_flight_counts
    SELECT NEW.model, NEW.service_tier,
        CASE WHEN instr(COALESCE(NEW.shape, ''), '/') > 0
             THEN substr(NEW.shape, 1, instr(NEW.shape, '/') - 1) ELSE COALESCE(NEW.shape, '') END,
        1
    WHERE NEW.state IN ('submitting', 'submitted')
       OR (NEW.state = 'submit_unknown' AND COALESCE(NEW.last_error_code, '') <> 'parked')
    ON CONFLICT DO UPDATE SET jobs = jobs + 1;
END;

-- A job's share of a day's flex spend: its tokens while it made or may have made a task.
CREATE TRIGGER flex_token_counts_insert AFTER INSERT ON jobs
WHEN NEW.service_tier = 'flex' AND NEW.submit_started_at IS NOT NULL
  AND (NEW.submitted_at IS NOT NULL OR NEW.state IN ('submitting', 'submit_unknown'))
  AND COALESCE(NEW.usage_tokens, NEW.est_tokens, 0) <> 0
BEGIN
    INSERT INTO flex_token_counts VALUES (NEW.model, (NEW.submit_started_at / 900000) * 900000,
        COALESCE(NEW.usage_tokens, NEW.est_tokens, 0))
    ON CONFLICT DO UPDATE SET tokens = tokens + excluded.tokens;
END;

CREATE TRIGGER flex_token_counts_delete AFTER DELETE ON jobs
WHEN OLD.service_tier = 'flex' AND OLD.submit_started_at IS NOT NULL
  AND (OLD.submitted_at IS NOT NULL OR OLD.state IN ('submitting', 'submit_unknown'))
  AND COALESCE(OLD.usage_tokens, OLD.est_tokens, 0) <> 0
BEGIN
    UPDATE flex_token_counts SET tokens = tokens - COALESCE(OLD.usage_tokens, OLD.est_tokens, 0)
    WHERE model = OLD.model AND bucket = (OLD.submit_started_at / 900000) * 900000;
END;

CREATE TRIGGER flex_token_counts_update
AFTER UPDATE OF state, submitted_at, submit_started_at, usage_tokens, est_tokens, model,
    service_tier ON jobs
WHEN (OLD.service_tier = 'flex' OR NEW.service_tier = 'flex')
 AND (OLD.state IS NOT NEW.state OR OLD.submitted_at IS NOT NEW.submitted_at
  OR OLD.submit_started_at IS NOT NEW.submit_started_at
  OR OLD.usage_tokens IS NOT NEW.usage_tokens OR OLD.est_tokens IS NOT NEW.est_tokens
  OR OLD.model IS NOT NEW.model OR OLD.service_tier IS NOT NEW.service_tier)
BEGIN
    UPDATE flex_token_counts SET tokens = tokens - COALESCE(OLD.usage_tokens, OLD.est_tokens, 0)
    WHERE OLD.service_tier = 'flex' AND OLD.submit_started_at IS NOT NULL
      AND (OLD.submitted_at IS NOT NULL OR OLD.state IN ('submitting', 'submit_unknown'))
      AND model = OLD.model AND bucket = (OLD.submit_started_at / 900000) * 900000;
    INSERT INTO flex_token_counts
    SELECT NEW.model, (NEW.submit_started_at / 900000) * 900000,
        COALESCE(NEW.usage_tokens, NEW.est_tokens, 0)
    WHERE NEW.service_tier = 'flex' AND NEW.submit_started_at IS NOT NULL
      AND (NEW.submitted_at IS NOT NULL OR NEW.state IN ('submitting', 'submit_unknown'))
    ON CONFLICT DO UPDATE SET tokens = tokens + excluded.tokens;
END;

-- Settled budget holds (billed, of a day that is over) are pruned by maintenance
-- (`Store::prune_budget_holds`); a batch's cap counts its whole life, so what its pruned
-- holds amounted to is kept here, one row per batch, and added to its live holds.
CREATE TABLE budget_settled (
    batch_id TEXT PRIMARY KEY,
    units    INTEGER NOT NULL,   -- hold units (billed tokens × rate) of the pruned holds
    tokens   INTEGER NOT NULL    -- their billed tokens
) WITHOUT ROWID;
