-- A flex TPD day also counts the creates claimed shortly before it began that are still
-- unanswered (`submitting`, `submit_unknown`): Ark counts a create in the day it arrives in,
-- and one in flight at the boundary may arrive in either day. This index holds only those
-- rows (a worker's creates in flight, not the batch), so every claim can read them.
CREATE INDEX jobs_flex_unanswered ON jobs (model, submit_started_at)
    WHERE service_tier = 'flex' AND state IN ('submitting', 'submit_unknown');
