-- seedq schema, version 1. Append-only: never edit a migration once merged; add 0002_*.sql.
-- Times are INTEGER unix milliseconds (UTC). States are TEXT with a CHECK constraint.

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,            -- ULID, sorts by creation
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    state               TEXT NOT NULL CHECK (state IN (
                            'queued', 'submitting', 'submit_unknown', 'submitted',
                            'succeeded', 'archiving', 'archived',
                            'failed', 'cancelled', 'expired', 'dead')),
    model               TEXT NOT NULL,
    service_tier        TEXT NOT NULL CHECK (service_tier IN ('default', 'flex')),
    priority            INTEGER NOT NULL DEFAULT 0,  -- seedq queue priority, higher first
    request_json        TEXT NOT NULL,               -- the frozen body, POSTed as is
    idempotency_key     TEXT UNIQUE,
    tags                TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
    batch_id            TEXT,
    shape               TEXT,                        -- resolution/duration, e.g. 720p/5s
    est_tokens          INTEGER,
    deadline_at         INTEGER,                     -- flex: expire locally after this
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    lease_owner         TEXT,
    lease_until         INTEGER,
    lease_token         INTEGER NOT NULL DEFAULT 0,
    submit_started_at   INTEGER,                     -- the intent: when the POST began
    submitted_at        INTEGER,
    remote_task_id      TEXT UNIQUE,
    remote_status       TEXT,
    remote_created_at   INTEGER,
    seed                INTEGER,
    poll_count          INTEGER NOT NULL DEFAULT 0,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    callback_token      TEXT,
    last_error_code     TEXT,
    last_error_message  TEXT,
    usage_tokens        INTEGER,
    video_url           TEXT,
    last_frame_url      TEXT,
    url_expires_at      INTEGER,
    finished_at         INTEGER,
    archive_key         TEXT,
    archive_sha256      TEXT,
    archive_size        INTEGER,
    archived_at         INTEGER
);

-- The dispatcher: queued jobs per model, by priority then age.
CREATE INDEX jobs_queue ON jobs (state, model, priority DESC, id);
-- The poller and archiver: due work per state.
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_batch ON jobs (batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE job_events (
    id          INTEGER PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX job_events_job ON job_events (job_id, id);
