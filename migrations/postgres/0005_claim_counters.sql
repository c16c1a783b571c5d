-- Claims that do not count (store/counters.rs; SQLite migrations/0014_claim_counters.sql has
-- the same tables): the submit claim reads the tier's in-flight tasks and the day's flex
-- tokens from two small tables kept by triggers, in the same transaction as the change of the
-- job, instead of counting them under the tier's advisory lock. Maintenance recounts them
-- from the jobs now and then and repairs any drift (`Store::check_counters`).

CREATE TABLE in_flight_counts (
    model        TEXT NOT NULL,
    service_tier TEXT NOT NULL,
    resolution   TEXT NOT NULL,
    jobs         BIGINT NOT NULL,
    PRIMARY KEY (model, service_tier, resolution)
);

CREATE TABLE flex_token_counts (
    model  TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (model, bucket)
);

-- One definition of each predicate and key for the triggers, the migration and the recount.
CREATE FUNCTION seedq_in_flight(state TEXT, last_error_code TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
    SELECT state IN ('submitting', 'submitted')
        OR (state = 'submit_unknown' AND COALESCE(last_error_code, '') <> 'parked')
$$;

CREATE FUNCTION seedq_resolution(shape TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT split_part(COALESCE(shape, ''), '/', 1)
$$;

-- A job's share of a day's flex spend: its tokens while it made or may have made a task.
CREATE FUNCTION seedq_flex_share(service_tier TEXT, state TEXT, submit_started_at BIGINT,
    submitted_at BIGINT, usage_tokens BIGINT, est_tokens BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN service_tier = 'flex' AND submit_started_at IS NOT NULL
                 AND (submitted_at IS NOT NULL OR state IN ('submitting', 'submit_unknown'))
           THEN COALESCE(usage_tokens, est_tokens, 0) ELSE 0 END
$$;

INSERT INTO in_flight_counts
SELECT model, service_tier, seedq_resolution(shape), COUNT(*)
FROM jobs WHERE seedq_in_flight(state, last_error_code)
GROUP BY 1, 2, 3;

INSERT INTO flex_token_counts
SELECT model, (submit_started_at / 900000) * 900000,
       SUM(seedq_flex_share(service_tier, state, submit_started_at, submitted_at,
                            usage_tokens, est_tokens))
FROM jobs
WHERE service_tier = 'flex' AND submit_started_at IS NOT NULL
GROUP BY 1, 2;

-- Row triggers with WHEN clauses: the many updates (leases, heartbeats, polls) that do not
-- move a counter never run the function.
-- The predicates are written out here rather than calling the functions above: a SQL function
-- called from PL/pgSQL is not inlined, and this runs for every job that moves.
CREATE FUNCTION seedq_claim_counters() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    share BIGINT;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        IF OLD.state IN ('submitting', 'submitted')
           OR (OLD.state = 'submit_unknown' AND COALESCE(OLD.last_error_code, '') <> 'parked') THEN
            UPDATE in_flight_counts SET jobs = jobs - 1
            WHERE model = OLD.model AND service_tier = OLD.service_tier
              AND resolution = split_part(COALESCE(OLD.shape, ''), '/', 1);
        END IF;
        IF OLD.service_tier = 'flex' AND OLD.submit_started_at IS NOT NULL
           AND (OLD.submitted_at IS NOT NULL OR OLD.state IN ('submitting', 'submit_unknown')) THEN
            share := COALESCE(OLD.usage_tokens, OLD.est_tokens, 0);
            IF share <> 0 THEN
                UPDATE flex_token_counts SET tokens = tokens - share
                WHERE model = OLD.model AND bucket = (OLD.submit_started_at / 900000) * 900000;
            END IF;
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF NEW.state IN ('submitting', 'submitted')
           OR (NEW.state = 'submit_unknown' AND COALESCE(NEW.last_error_code, '') <> 'parked') THEN
            INSERT INTO in_flight_counts
            VALUES (NEW.model, NEW.service_tier, split_part(COALESCE(NEW.shape, ''), '/', 1), 1)
            ON CONFLICT (model, service_tier, resolution) DO UPDATE
                SET jobs = in_flight_counts.jobs + 1;
        END IF;
        IF NEW.service_tier = 'flex' AND NEW.submit_started_at IS NOT NULL
           AND (NEW.submitted_at IS NOT NULL OR NEW.state IN ('submitting', 'submit_unknown')) THEN
            share := COALESCE(NEW.usage_tokens, NEW.est_tokens, 0);
            IF share <> 0 THEN
                INSERT INTO flex_token_counts
                VALUES (NEW.model, (NEW.submit_started_at / 900000) * 900000, share)
                ON CONFLICT (model, bucket) DO UPDATE
                    SET tokens = flex_token_counts.tokens + excluded.tokens;
            END IF;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER claim_counters_insert AFTER INSERT ON jobs FOR EACH ROW
WHEN (seedq_in_flight(NEW.state, NEW.last_error_code)
      OR seedq_flex_share(NEW.service_tier, NEW.state, NEW.submit_started_at, NEW.submitted_at,
                          NEW.usage_tokens, NEW.est_tokens) <> 0)
EXECUTE FUNCTION seedq_claim_counters();

CREATE TRIGGER claim_counters_delete AFTER DELETE ON jobs FOR EACH ROW
WHEN (seedq_in_flight(OLD.state, OLD.last_error_code)
      OR seedq_flex_share(OLD.service_tier, OLD.state, OLD.submit_started_at, OLD.submitted_at,
                          OLD.usage_tokens, OLD.est_tokens) <> 0)
EXECUTE FUNCTION seedq_claim_counters();

CREATE TRIGGER claim_counters_update
AFTER UPDATE OF state, last_error_code, model, service_tier, shape, submitted_at,
    submit_started_at, usage_tokens, est_tokens ON jobs FOR EACH ROW
WHEN (seedq_in_flight(OLD.state, OLD.last_error_code)
          IS DISTINCT FROM seedq_in_flight(NEW.state, NEW.last_error_code)
      OR (seedq_in_flight(OLD.state, OLD.last_error_code)
          AND (OLD.model IS DISTINCT FROM NEW.model
               OR OLD.service_tier IS DISTINCT FROM NEW.service_tier
               OR seedq_resolution(OLD.shape) IS DISTINCT FROM seedq_resolution(NEW.shape)))
      OR ((OLD.service_tier = 'flex' OR NEW.service_tier = 'flex')
          AND (OLD.state IS DISTINCT FROM NEW.state
               OR OLD.submitted_at IS DISTINCT FROM NEW.submitted_at
               OR OLD.submit_started_at IS DISTINCT FROM NEW.submit_started_at
               OR OLD.usage_tokens IS DISTINCT FROM NEW.usage_tokens
               OR OLD.est_tokens IS DISTINCT FROM NEW.est_tokens
               OR OLD.model IS DISTINCT FROM NEW.model
               OR OLD.service_tier IS DISTINCT FROM NEW.service_tier)))
EXECUTE FUNCTION seedq_claim_counters();

-- Settled budget holds are pruned by maintenance; a batch's pruned holds live on here
-- (SQLite 0015 has the same table).
CREATE TABLE budget_settled (
    batch_id TEXT PRIMARY KEY,
    units    BIGINT NOT NULL,
    tokens   BIGINT NOT NULL
);
