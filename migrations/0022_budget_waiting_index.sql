-- `batch show` counted a batch's jobs waiting on a spend cap (state queued, `last_error_code`
-- budget_batch, budget_daily or budget_unpriced) by reading every queued job of the batch:
-- 120-338 ms for a 1 000 000-job batch on PostgreSQL however few of them waited
-- (docs/performance-fleet.md). This index holds only the queued jobs that carry an error
-- code (a handful, not the batch), by batch then code.
CREATE INDEX jobs_budget_waiting ON jobs (batch_id, last_error_code)
    WHERE state = 'queued' AND last_error_code IS NOT NULL;
