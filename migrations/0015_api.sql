-- seedq schema: the API listener's front doors (docs/api.md). Append-only, like the others.
--
-- Keys: one row per API key. Only the SHA-256 of the key is kept (a key is 32 random bytes,
-- so a plain hash cannot be reversed by guessing); the key itself is shown once, at
-- `seedq keys create`. The webhook secret is the HMAC key of the Standard Webhooks
-- signature: the sender must hold it, so it is stored as is (it signs, it does not admit).
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,      -- public id (`key_…`), shown by `keys ls`
    name           TEXT NOT NULL UNIQUE,
    hash           TEXT NOT NULL UNIQUE,  -- hex SHA-256 of the key
    max_cost_fen   INTEGER,               -- daily spend cap (budget day), none: no cap
    rpm            INTEGER,               -- requests per minute through the doors, none: no limit
    models         TEXT,                  -- JSON array of allowed models, NULL: all
    webhook_url    TEXT,                  -- default webhook of the key's jobs
    webhook_secret TEXT NOT NULL,         -- `whsec_…`
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
);

-- One row per job created through a door: who created it (NULL: the admin token), in which
-- door's shape, the hash of the client's body (an `Idempotency-Key` repeated with another
-- body is refused), what the create asked for in the door's own terms (`info`, JSON), the
-- job's webhook and when the client deleted its record (the job itself stays for seedq's
-- own accounting until pruned).
CREATE TABLE api_jobs (
    job_id       TEXT PRIMARY KEY,
    api_key      TEXT,
    door         TEXT NOT NULL CHECK (door IN ('ark', 'openai')),
    body_sha256  TEXT NOT NULL,
    info         TEXT NOT NULL,
    webhook_url  TEXT,
    created_at   INTEGER NOT NULL,
    deleted_at   INTEGER
);
CREATE INDEX api_jobs_key ON api_jobs (api_key, job_id);

-- The secret that signs the file URLs a task answer carries (`content.video_url`): the SDKs
-- fetch them without credentials, as they fetch Ark's pre-signed URLs. One per database, so
-- every worker of a fleet signs and checks alike.
CREATE TABLE api_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO api_settings (name, value) VALUES ('url_secret', lower(hex(randomblob(32))));
