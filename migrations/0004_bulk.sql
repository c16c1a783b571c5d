-- seedq schema: bulk rendering. Named batches (with an optional deadline for the flex
-- governor) and chains of continuous shots. Append-only, like the others.
--
-- Jobs still carry their batch in jobs.batch_id (from 0001); a batches row only adds what a
-- batch has beyond its jobs. A batch without a row (jobs enqueued before this migration, or
-- with a `batch` field of their own) is still a batch.

CREATE TABLE batches (
    name         TEXT PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    deadline_at  INTEGER,                 -- the governor picks flex or default to finish by then
    source       TEXT                     -- the file the batch was first imported from
);

-- A chain: shots rendered one after another, each starting from the previous one's last
-- frame. Its shots are jobs with chain_id/shot. Shot n > 1 waits in `queued` with
-- next_attempt_at = HELD (far future, so the dispatcher's claim never sees it) and without
-- its first frame until shot n-1 succeeds; then the chain stage completes and re-checks its
-- body and makes it due (`released` = n). The body is frozen before any POST.
CREATE TABLE chains (
    id             TEXT PRIMARY KEY,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN (
                       'running', 'stitching', 'done', 'failed', 'cancelled')),
    shots          INTEGER NOT NULL,
    released       INTEGER NOT NULL,      -- shots 1..=released have a complete body
    max_retries    INTEGER NOT NULL,      -- retries of one failed shot before the chain stops
    retries        INTEGER NOT NULL DEFAULT 0,  -- retries spent on the current shot
    next_check_at  INTEGER NOT NULL,      -- backoff of the chain stage (release, stitch)
    last_error     TEXT,
    stitch_key     TEXT,                  -- where the joined video went
    stitch_sha256  TEXT,
    stitch_size    INTEGER,
    stitch_frames  INTEGER,
    stitch_ms      INTEGER,               -- its duration
    finished_at    INTEGER
);
CREATE INDEX chains_active ON chains (next_check_at) WHERE state IN ('running', 'stitching');

ALTER TABLE jobs ADD COLUMN chain_id TEXT;
ALTER TABLE jobs ADD COLUMN shot INTEGER;
CREATE UNIQUE INDEX jobs_chain_shot ON jobs (chain_id, shot) WHERE chain_id IS NOT NULL;
