-- Striped counters (store/counters.rs has the design). Every job of a one-model flex batch
-- moves the same few counter rows (`in_flight_counts` for its tier, `flex_token_counts` for its
-- 15-minute bucket), and a row stays locked from the trigger's update to the transaction's
-- commit: a fleet's transitions queued behind each other on those rows
-- (docs/performance-fleet.md, "1 000 000 jobs"). Each key now has up to 16 rows, one a stripe;
-- a trigger adds its change to the stripe of its backend (`pg_backend_pid() % 16`), and every
-- read sums a key's stripes. Two transactions wait for each other only when their backends
-- share a stripe. A stripe may go negative (a job counted in by one backend and out by
-- another): only the sum of a key means anything. Maintenance prunes the rows at zero
-- (`Store::prune_counters`). The rows already here become stripe 0. `ui_batch_counts` is
-- striped the same way in 0017.

ALTER TABLE in_flight_counts ADD COLUMN stripe SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE in_flight_counts DROP CONSTRAINT in_flight_counts_pkey;
ALTER TABLE in_flight_counts ADD PRIMARY KEY (model, service_tier, resolution, stripe);

ALTER TABLE flex_token_counts ADD COLUMN stripe SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE flex_token_counts DROP CONSTRAINT flex_token_counts_pkey;
ALTER TABLE flex_token_counts ADD PRIMARY KEY (model, bucket, stripe);

-- The claim counters (0005): the same predicates and keys, each change an upsert into the
-- backend's stripe (a decrement may find no row of its stripe yet).
CREATE OR REPLACE FUNCTION seedq_claim_counters() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    share BIGINT;
    s SMALLINT := pg_backend_pid() % 16;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        IF OLD.state IN ('submitting', 'submitted')
           OR (OLD.state = 'submit_unknown' AND COALESCE(OLD.last_error_code, '') <> 'parked') THEN
            INSERT INTO in_flight_counts (model, service_tier, resolution, stripe, jobs)
            VALUES (OLD.model, OLD.service_tier, split_part(COALESCE(OLD.shape, ''), '/', 1), s, -1)
            ON CONFLICT (model, service_tier, resolution, stripe) DO UPDATE
                SET jobs = in_flight_counts.jobs - 1;
        END IF;
        IF OLD.service_tier = 'flex' AND OLD.submit_started_at IS NOT NULL
           AND (OLD.submitted_at IS NOT NULL OR OLD.state IN ('submitting', 'submit_unknown')) THEN
            share := COALESCE(OLD.usage_tokens, OLD.est_tokens, 0);
            IF share <> 0 THEN
                INSERT INTO flex_token_counts (model, bucket, stripe, tokens)
                VALUES (OLD.model, (OLD.submit_started_at / 900000) * 900000, s, -share)
                ON CONFLICT (model, bucket, stripe) DO UPDATE
                    SET tokens = flex_token_counts.tokens + excluded.tokens;
            END IF;
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF NEW.state IN ('submitting', 'submitted')
           OR (NEW.state = 'submit_unknown' AND COALESCE(NEW.last_error_code, '') <> 'parked') THEN
            INSERT INTO in_flight_counts (model, service_tier, resolution, stripe, jobs)
            VALUES (NEW.model, NEW.service_tier, split_part(COALESCE(NEW.shape, ''), '/', 1), s, 1)
            ON CONFLICT (model, service_tier, resolution, stripe) DO UPDATE
                SET jobs = in_flight_counts.jobs + 1;
        END IF;
        IF NEW.service_tier = 'flex' AND NEW.submit_started_at IS NOT NULL
           AND (NEW.submitted_at IS NOT NULL OR NEW.state IN ('submitting', 'submit_unknown')) THEN
            share := COALESCE(NEW.usage_tokens, NEW.est_tokens, 0);
            IF share <> 0 THEN
                INSERT INTO flex_token_counts (model, bucket, stripe, tokens)
                VALUES (NEW.model, (NEW.submit_started_at / 900000) * 900000, s, share)
                ON CONFLICT (model, bucket, stripe) DO UPDATE
                    SET tokens = flex_token_counts.tokens + excluded.tokens;
            END IF;
        END IF;
    END IF;
    RETURN NULL;
END $$;
