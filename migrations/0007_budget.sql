-- seedq schema: spend caps (issue 15). Append-only, like the others.
--
-- A batch may carry a cap in fen (integer: money is never a float here) or in tokens.
-- Daily caps (`[budget] daily_cny`, `[models."<id>"] daily_cny`) live in the configuration.
ALTER TABLE batches ADD COLUMN max_cost_fen INTEGER;
ALTER TABLE batches ADD COLUMN max_tokens INTEGER;

-- One row per job that holds budget: reserved before its create (inside the same
-- BEGIN IMMEDIATE transaction as the check, so two processes on one database cannot both
-- take the last of a cap), deleted when the create provably made no task, and given the
-- billed tokens when the task finishes. An ambiguous create keeps its row: it counts as
-- spent until reconciliation settles it.
--
-- Cost of a row = COALESCE(billed_tokens, tokens) * rate, in units of 1/2,000,000 fen:
-- rate = the model's fen per million tokens, times 2 on the default tier and 1 on flex
-- (half price), so every sum is an exact integer.
CREATE TABLE budget_holds (
    job_id         TEXT PRIMARY KEY,
    batch_id       TEXT,
    model          TEXT NOT NULL,
    day_start      INTEGER NOT NULL,       -- the budget day (maintenance.timezone) it counts in
    tokens         INTEGER NOT NULL,       -- the estimate reserved
    rate           INTEGER NOT NULL,
    billed_tokens  INTEGER,                -- the task's billed usage, once known
    created_at     INTEGER NOT NULL
);
CREATE INDEX budget_holds_batch ON budget_holds (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX budget_holds_day ON budget_holds (day_start, model);
