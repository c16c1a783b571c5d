-- seedq schema: the webhook outbox of the front doors (docs/api.md, Webhooks). Append-only.
--
-- When a job created through a door with a key ends (succeeded or archived, failed, expired,
-- cancelled, dead) and it has a webhook (its create's callback_url, else its key's
-- webhook_url), the trigger below adds one row here in the same transaction as the state
-- change: no crash can lose it. Success has one id for both states (`msg_<job>_success`):
-- with archiving on, the sender defers it until the job is archived, and the 'archived'
-- transition makes the deferred row due again. Every other end carries its `updated_at`, so a
-- job that fails, is retried and fails again gets a webhook each time. Every worker delivers due rows (a short lease keeps two from sending one at once),
-- and a failed delivery is tried again with backoff until it is `api.webhook_max_age` old.
-- The row's id is the `webhook-id` of every attempt, so a receiver can drop repeats.
CREATE TABLE webhook_outbox (
    id              TEXT PRIMARY KEY,     -- msg_<job>_success, msg_<job>_<state>_<updated_at>
    job_id          TEXT NOT NULL,
    event           TEXT NOT NULL,        -- the job's terminal state
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_until     INTEGER,
    delivered_at    INTEGER,
    given_up_at     INTEGER,
    last_error      TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;

CREATE TRIGGER webhook_on_finish AFTER UPDATE OF state ON jobs
WHEN NEW.state IN ('succeeded', 'archived', 'failed', 'expired', 'cancelled', 'dead')
     AND OLD.state IS NOT NEW.state
BEGIN
    INSERT INTO webhook_outbox (id, job_id, event, created_at, next_attempt_at)
    SELECT CASE WHEN NEW.state IN ('succeeded', 'archived') THEN 'msg_' || NEW.id || '_success'
                ELSE 'msg_' || NEW.id || '_' || NEW.state || '_' || NEW.updated_at END,
           NEW.id,
           CASE WHEN NEW.state = 'archived' THEN 'succeeded' ELSE NEW.state END,
           NEW.updated_at, NEW.updated_at
    FROM api_jobs a JOIN api_keys k ON k.id = a.api_key
    WHERE a.job_id = NEW.id AND COALESCE(a.webhook_url, k.webhook_url) IS NOT NULL
    ON CONFLICT (id) DO UPDATE SET next_attempt_at = excluded.next_attempt_at,
        created_at = excluded.created_at, given_up_at = NULL
    WHERE webhook_outbox.delivered_at IS NULL;
END;
CREATE INDEX webhook_outbox_job ON webhook_outbox (job_id);

-- A pruned job takes its door record and its webhooks with it (prune runs long after the
-- last webhook was delivered or given up: `retain_*` is days, `api.webhook_max_age` hours).
CREATE TRIGGER api_jobs_on_prune AFTER DELETE ON jobs
BEGIN
    DELETE FROM api_jobs WHERE job_id = OLD.id;
    DELETE FROM webhook_outbox WHERE job_id = OLD.id;
END;
