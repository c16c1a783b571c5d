-- A key's fleet-wide request rate: the PostgreSQL twin of migrations/0017_api_rate.sql; see
-- there.
CREATE TABLE api_rate (
    api_key      TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    prev_count   BIGINT NOT NULL
);
