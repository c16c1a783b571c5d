-- A key's request rate (`seedq keys create --rpm`), counted fleet-wide: one row per key with
-- the requests of the current minute and of the one before (a sliding-window counter, see
-- `store::api::rate_window`). Every worker of a fleet takes from the same row in one
-- transaction, so a key gets its rpm across the fleet, not per worker.
CREATE TABLE api_rate (
    api_key      TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,   -- unix ms of the current minute's start
    count        INTEGER NOT NULL,   -- requests let through in that minute
    prev_count   INTEGER NOT NULL    -- requests let through in the minute before it
);
