-- Several workers on one database (issue 13 items 2 and 4): the worker registry and the
-- singleton leases.
--
-- `workers`: one row per running `seedq serve`/`run`; `id` is the lease owner string the
-- process writes into `jobs.lease_owner` (host-pid-boot). It heartbeats `heartbeat_at` about
-- once a second; a row whose heartbeat lapsed longer than `service.worker_timeout` is a dead
-- worker: any other worker releases its leases and deletes the row.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
) WITHOUT ROWID;

-- `leaders`: who runs each singleton (maintenance, governor, reconcile sweeps) until when.
-- Taken with one conditional upsert when free or expired, renewed by its owner.
CREATE TABLE leaders (
    name  TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    since INTEGER NOT NULL,
    until INTEGER NOT NULL
) WITHOUT ROWID;

-- The account's RPM is counted in every claim (store/fleet.rs `room_in_tx`): the creates of
-- one (model, tier) in the last window, without walking other models' creates.
CREATE INDEX jobs_creates ON jobs (model, service_tier, submit_started_at)
    WHERE submit_started_at IS NOT NULL;
