-- The account's read budget (docs/limits.md): Ark limits the list route to 1 call a second per
-- account, GET of one task and DELETE to 20 (ark-api.md §14). One row per route holds when its
-- next free turn starts (unix microseconds); every worker of a fleet takes its turns here with
-- one conditional upsert, so together they keep the account's rates.
CREATE TABLE read_budget (
    route   TEXT PRIMARY KEY,
    next_us INTEGER NOT NULL
) WITHOUT ROWID;
