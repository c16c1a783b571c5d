-- Several workers on one database (issue 13 items 2 and 4): the worker registry and the
-- singleton leases. The PostgreSQL twin of migrations/0012_fleet.sql; see there.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE leaders (
    name  TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    since BIGINT NOT NULL,
    until BIGINT NOT NULL
);

-- The account's RPM is counted in every claim (store/pg/fleet.rs `room_in_tx`): the creates
-- of one (model, tier) in the last window, without walking other models' creates.
CREATE INDEX jobs_creates ON jobs (model, service_tier, submit_started_at)
    WHERE submit_started_at IS NOT NULL;
