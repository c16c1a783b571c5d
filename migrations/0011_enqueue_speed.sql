-- Enqueue throughput (bench enqueue fell from 83 000 to 15 600 jobs/s after 0008 and 0010).
--
-- A per-row AFTER INSERT trigger that writes the FTS5 table makes every single-row INSERT a
-- statement of its own inside the FTS5 transaction, and FTS5 flushes its pending terms to a new
-- on-disk segment at every statement savepoint: one tiny segment per job, merged again and
-- again (callgrind, 10 000 jobs: 47 % of enqueue in the flush, 28 % in merging). The bulk
-- enqueue (store/bulk_index.rs) therefore fills the index and the batch counts with one
-- statement each for the whole transaction, and the insert triggers stand aside while it runs.
--
-- The marker: a row here exists only inside a bulk enqueue's own write transaction (inserted at
-- its start, deleted before its commit), so no other connection ever sees it, and a crash rolls
-- it back with the jobs. Every other insert path (chain shots, hand-written SQL) still goes
-- through the triggers.
CREATE TABLE enqueue_bulk (
    one INTEGER PRIMARY KEY CHECK (one = 1)
);

-- As in 0010, plus the marker test.
DROP TRIGGER jobs_prompt_fts_insert;
CREATE TRIGGER jobs_prompt_fts_insert AFTER INSERT ON jobs
WHEN json_valid(NEW.request_json) AND NOT EXISTS (SELECT 1 FROM enqueue_bulk)
BEGIN
    INSERT INTO jobs_prompt_fts (rowid, prompt)
    SELECT NEW.rowid, group_concat(json_extract(c.value, '$.text'), char(10))
    FROM json_each(NEW.request_json, '$.content') AS c
    WHERE json_extract(c.value, '$.type') = 'text';
END;

-- As in 0008, plus the marker test.
DROP TRIGGER ui_batch_counts_insert;
CREATE TRIGGER ui_batch_counts_insert AFTER INSERT ON jobs
WHEN NEW.batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM enqueue_bulk)
BEGIN
    INSERT INTO ui_batch_counts VALUES (NEW.batch_id, NEW.state, NEW.model, NEW.service_tier,
        COALESCE(NEW.shape, ''), 1, COALESCE(NEW.usage_tokens, 0))
    ON CONFLICT DO UPDATE SET jobs = jobs + 1, usage_tokens = usage_tokens + excluded.usage_tokens;
END;
