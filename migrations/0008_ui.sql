-- The web dashboard (src/ui/).
--
-- Creates of the last minute per model (the RPM gauge) and today's flex tokens, without a scan
-- of every job; only jobs that were ever submitted are in it.
CREATE INDEX jobs_submit_started ON jobs (submit_started_at, model)
    WHERE submit_started_at IS NOT NULL;

-- Jobs and billed tokens per batch, state, model, tier and shape, kept by triggers: the
-- overview's batch cards read a few rows per batch instead of counting a million jobs on every
-- refresh. `shape` is '' for none (a NULL cannot take part in the key). Rows that fall to zero
-- jobs are deleted, so the table holds only the cells that exist.
CREATE TABLE ui_batch_counts (
    batch_id     TEXT NOT NULL,
    state        TEXT NOT NULL,
    model        TEXT NOT NULL,
    service_tier TEXT NOT NULL,
    shape        TEXT NOT NULL,
    jobs         INTEGER NOT NULL,
    usage_tokens INTEGER NOT NULL,
    PRIMARY KEY (batch_id, state, model, service_tier, shape)
) WITHOUT ROWID;

INSERT INTO ui_batch_counts
SELECT batch_id, state, model, service_tier, COALESCE(shape, ''), COUNT(*),
       COALESCE(SUM(usage_tokens), 0)
FROM jobs WHERE batch_id IS NOT NULL
GROUP BY batch_id, state, model, service_tier, COALESCE(shape, '');

CREATE TRIGGER ui_batch_counts_insert AFTER INSERT ON jobs WHEN NEW.batch_id IS NOT NULL
BEGIN
    INSERT INTO ui_batch_counts VALUES (NEW.batch_id, NEW.state, NEW.model, NEW.service_tier,
        COALESCE(NEW.shape, ''), 1, COALESCE(NEW.usage_tokens, 0))
    ON CONFLICT DO UPDATE SET jobs = jobs + 1, usage_tokens = usage_tokens + excluded.usage_tokens;
END;

CREATE TRIGGER ui_batch_counts_delete AFTER DELETE ON jobs WHEN OLD.batch_id IS NOT NULL
BEGIN
    UPDATE ui_batch_counts SET jobs = jobs - 1,
        usage_tokens = usage_tokens - COALESCE(OLD.usage_tokens, 0)
    WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
      AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '');
    DELETE FROM ui_batch_counts
    WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
      AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '') AND jobs <= 0;
END;

CREATE TRIGGER ui_batch_counts_update
AFTER UPDATE OF state, usage_tokens, batch_id, model, service_tier, shape ON jobs
WHEN (OLD.batch_id IS NOT NULL OR NEW.batch_id IS NOT NULL)
 AND (OLD.state IS NOT NEW.state OR OLD.usage_tokens IS NOT NEW.usage_tokens
      OR OLD.batch_id IS NOT NEW.batch_id OR OLD.model IS NOT NEW.model
      OR OLD.service_tier IS NOT NEW.service_tier OR OLD.shape IS NOT NEW.shape)
BEGIN
    UPDATE ui_batch_counts SET jobs = jobs - 1,
        usage_tokens = usage_tokens - COALESCE(OLD.usage_tokens, 0)
    WHERE OLD.batch_id IS NOT NULL AND batch_id = OLD.batch_id AND state = OLD.state
      AND model = OLD.model AND service_tier = OLD.service_tier
      AND shape = COALESCE(OLD.shape, '');
    DELETE FROM ui_batch_counts
    WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
      AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '') AND jobs <= 0;
    INSERT INTO ui_batch_counts
    SELECT NEW.batch_id, NEW.state, NEW.model, NEW.service_tier, COALESCE(NEW.shape, ''), 1,
           COALESCE(NEW.usage_tokens, 0)
    WHERE NEW.batch_id IS NOT NULL
    ON CONFLICT DO UPDATE SET jobs = jobs + 1, usage_tokens = usage_tokens + excluded.usage_tokens;
END;
