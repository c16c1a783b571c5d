-- seedq schema for PostgreSQL, version 1: the SQLite schema of migrations/0001..0010 in one
-- file (no PostgreSQL store existed before it). Append-only from here, like the SQLite files:
-- a change is a new migrations/postgres/NNNN_*.sql, listed in src/store/pg/migrate.rs.
--
-- Kept as close to the SQLite schema as the two dialects allow, so that the store's queries
-- read the same on both: times are BIGINT unix milliseconds, flags are BIGINT 0/1, JSON is
-- TEXT (the frozen body is POSTed byte for byte, and jsonb would reorder its keys).

CREATE TABLE jobs (
    id                   TEXT PRIMARY KEY,            -- ULID, sorts by creation
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN (
                             'queued', 'submitting', 'submit_unknown', 'submitted',
                             'succeeded', 'archiving', 'archived',
                             'failed', 'cancelled', 'expired', 'dead')),
    model                TEXT NOT NULL,
    service_tier         TEXT NOT NULL CHECK (service_tier IN ('default', 'flex')),
    priority             BIGINT NOT NULL DEFAULT 0,
    request_json         TEXT NOT NULL,
    idempotency_key      TEXT UNIQUE,
    tags                 TEXT NOT NULL DEFAULT '[]',
    batch_id             TEXT,
    shape                TEXT,
    est_tokens           BIGINT,
    deadline_at          BIGINT,
    attempts             BIGINT NOT NULL DEFAULT 0,
    next_attempt_at      BIGINT NOT NULL,
    lease_owner          TEXT,
    lease_until          BIGINT,
    lease_token          BIGINT NOT NULL DEFAULT 0,
    submit_started_at    BIGINT,
    submitted_at         BIGINT,
    remote_task_id       TEXT UNIQUE,
    remote_status        TEXT,
    remote_created_at    BIGINT,
    seed                 BIGINT,
    poll_count           BIGINT NOT NULL DEFAULT 0,
    cancel_requested     BIGINT NOT NULL DEFAULT 0,
    callback_token       TEXT,
    last_error_code      TEXT,
    last_error_message   TEXT,
    usage_tokens         BIGINT,
    video_url            TEXT,
    last_frame_url       TEXT,
    url_expires_at       BIGINT,
    finished_at          BIGINT,
    archive_key          TEXT,
    archive_sha256       TEXT,
    archive_size         BIGINT,
    archived_at          BIGINT,
    gen_ms               BIGINT,                      -- 0002
    archive_attempts     BIGINT NOT NULL DEFAULT 0,   -- 0003
    archive_frame_sha256 TEXT,
    archive_frame_size   BIGINT,
    result_meta          TEXT,
    chain_id             TEXT,                        -- 0004
    shot                 BIGINT
);

CREATE INDEX jobs_queue ON jobs (state, model, priority DESC, id);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_batch ON jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_history ON jobs (model, service_tier, shape, finished_at)
    WHERE gen_ms IS NOT NULL;
CREATE UNIQUE INDEX jobs_chain_shot ON jobs (chain_id, shot) WHERE chain_id IS NOT NULL;
CREATE INDEX jobs_queue_tier ON jobs (state, model, service_tier, priority DESC, id);
CREATE INDEX jobs_submit_started ON jobs (submit_started_at, model)
    WHERE submit_started_at IS NOT NULL;
-- Leases by owner: a dead worker's jobs are taken back by owner (the worker registry).
CREATE INDEX jobs_lease_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE job_events (
    id          BIGSERIAL PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at          BIGINT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX job_events_job ON job_events (job_id, id);

CREATE TABLE batches (
    name          TEXT PRIMARY KEY,
    created_at    BIGINT NOT NULL,
    deadline_at   BIGINT,
    source        TEXT,
    max_cost_fen  BIGINT,                             -- 0007
    max_tokens    BIGINT
);

CREATE TABLE chains (
    id             TEXT PRIMARY KEY,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN (
                       'running', 'stitching', 'done', 'failed', 'cancelled')),
    shots          BIGINT NOT NULL,
    released       BIGINT NOT NULL,
    max_retries    BIGINT NOT NULL,
    retries        BIGINT NOT NULL DEFAULT 0,
    next_check_at  BIGINT NOT NULL,
    last_error     TEXT,
    stitch_key     TEXT,
    stitch_sha256  TEXT,
    stitch_size    BIGINT,
    stitch_frames  BIGINT,
    stitch_ms      BIGINT,
    finished_at    BIGINT
);
CREATE INDEX chains_active ON chains (next_check_at) WHERE state IN ('running', 'stitching');

CREATE TABLE images (
    sha256      TEXT PRIMARY KEY,
    data_url    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE budget_holds (
    job_id         TEXT PRIMARY KEY,
    batch_id       TEXT,
    model          TEXT NOT NULL,
    day_start      BIGINT NOT NULL,
    tokens         BIGINT NOT NULL,
    rate           BIGINT NOT NULL,
    billed_tokens  BIGINT,
    created_at     BIGINT NOT NULL
);
CREATE INDEX budget_holds_batch ON budget_holds (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX budget_holds_day ON budget_holds (day_start, model);

CREATE TABLE paused (
    kind      TEXT NOT NULL CHECK (kind IN ('model', 'batch')),
    name      TEXT NOT NULL,
    paused_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);

-- The dashboard's batch cards (SQLite 0008): jobs and billed tokens per batch, state, model,
-- tier and shape, kept by triggers. Inserts and deletes are counted per statement from the
-- transition table, so a bulk enqueue of 10 000 rows does one grouped upsert, not 10 000.
CREATE TABLE ui_batch_counts (
    batch_id     TEXT NOT NULL,
    state        TEXT NOT NULL,
    model        TEXT NOT NULL,
    service_tier TEXT NOT NULL,
    shape        TEXT NOT NULL,
    jobs         BIGINT NOT NULL,
    usage_tokens BIGINT NOT NULL,
    PRIMARY KEY (batch_id, state, model, service_tier, shape)
);

CREATE FUNCTION seedq_batch_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- ORDER BY the key: concurrent statements lock the counter rows in one order.
    INSERT INTO ui_batch_counts
    SELECT batch_id, state, model, service_tier, COALESCE(shape, ''), COUNT(*),
           COALESCE(SUM(usage_tokens), 0)
    FROM added WHERE batch_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (batch_id, state, model, service_tier, shape) DO UPDATE
        SET jobs = ui_batch_counts.jobs + excluded.jobs,
            usage_tokens = ui_batch_counts.usage_tokens + excluded.usage_tokens;
    RETURN NULL;
END $$;

CREATE FUNCTION seedq_batch_counts_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ui_batch_counts c SET jobs = c.jobs - r.n, usage_tokens = c.usage_tokens - r.u
    FROM (SELECT batch_id, state, model, service_tier, COALESCE(shape, '') AS shape,
                 COUNT(*) AS n, COALESCE(SUM(usage_tokens), 0) AS u
          FROM removed WHERE batch_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5) r
    WHERE c.batch_id = r.batch_id AND c.state = r.state AND c.model = r.model
      AND c.service_tier = r.service_tier AND c.shape = r.shape;
    DELETE FROM ui_batch_counts WHERE jobs <= 0;
    RETURN NULL;
END $$;

CREATE TRIGGER ui_batch_counts_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION seedq_batch_counts_add();
CREATE TRIGGER ui_batch_counts_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT
    EXECUTE FUNCTION seedq_batch_counts_remove();

-- Updates change one cell to another; a row trigger with a WHEN clause costs nothing for the
-- many updates (leases, polls) that leave the counted columns alone.
CREATE FUNCTION seedq_batch_counts_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.batch_id IS NOT NULL THEN
        UPDATE ui_batch_counts SET jobs = jobs - 1,
            usage_tokens = usage_tokens - COALESCE(OLD.usage_tokens, 0)
        WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
          AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '');
        DELETE FROM ui_batch_counts
        WHERE batch_id = OLD.batch_id AND state = OLD.state AND model = OLD.model
          AND service_tier = OLD.service_tier AND shape = COALESCE(OLD.shape, '') AND jobs <= 0;
    END IF;
    IF NEW.batch_id IS NOT NULL THEN
        INSERT INTO ui_batch_counts VALUES (NEW.batch_id, NEW.state, NEW.model, NEW.service_tier,
            COALESCE(NEW.shape, ''), 1, COALESCE(NEW.usage_tokens, 0))
        ON CONFLICT (batch_id, state, model, service_tier, shape) DO UPDATE
            SET jobs = ui_batch_counts.jobs + 1,
                usage_tokens = ui_batch_counts.usage_tokens + excluded.usage_tokens;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ui_batch_counts_update
AFTER UPDATE OF state, usage_tokens, batch_id, model, service_tier, shape ON jobs
FOR EACH ROW
WHEN ((OLD.batch_id IS NOT NULL OR NEW.batch_id IS NOT NULL)
  AND (OLD.state IS DISTINCT FROM NEW.state
       OR OLD.usage_tokens IS DISTINCT FROM NEW.usage_tokens
       OR OLD.batch_id IS DISTINCT FROM NEW.batch_id OR OLD.model IS DISTINCT FROM NEW.model
       OR OLD.service_tier IS DISTINCT FROM NEW.service_tier
       OR OLD.shape IS DISTINCT FROM NEW.shape))
EXECUTE FUNCTION seedq_batch_counts_move();

-- The dashboard's prompt search (SQLite 0010 uses an FTS5 trigram index): the text parts of
-- the request's content array, joined by newlines. A body that is not JSON indexes as empty
-- rather than failing the insert. IMMUTABLE so it can back an expression index.
CREATE FUNCTION seedq_prompt(body TEXT) RETURNS TEXT LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (SELECT string_agg(c->>'text', E'\n')
            FROM jsonb_array_elements(body::jsonb -> 'content') AS c
            WHERE c->>'type' = 'text');
EXCEPTION WHEN others THEN
    RETURN '';
END $$;

-- A trigram index makes `ILIKE '%text%'` an index search; pg_trgm ships with PostgreSQL
-- (contrib) but creating an extension needs privileges a managed database may not grant, so
-- without it the search is a scan and still correct.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX jobs_prompt_trgm ON jobs USING gin (lower(seedq_prompt(request_json)) gin_trgm_ops);
EXCEPTION WHEN others THEN
    RAISE NOTICE 'pg_trgm is not available (%); prompt search scans', SQLERRM;
END $$;
