-- The API listener's front doors: the PostgreSQL twin of migrations/0015_api.sql; see there.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    hash           TEXT NOT NULL UNIQUE,
    max_cost_fen   BIGINT,
    rpm            BIGINT,
    models         TEXT,
    webhook_url    TEXT,
    webhook_secret TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);

CREATE TABLE api_jobs (
    job_id       TEXT PRIMARY KEY,
    api_key      TEXT,
    door         TEXT NOT NULL CHECK (door IN ('ark', 'openai')),
    body_sha256  TEXT NOT NULL,
    info         TEXT NOT NULL,
    webhook_url  TEXT,
    created_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);
CREATE INDEX api_jobs_key ON api_jobs (api_key, job_id);

CREATE TABLE api_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- gen_random_uuid() draws from the server's strong random source (PostgreSQL 13+).
INSERT INTO api_settings (name, value)
    VALUES ('url_secret', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
