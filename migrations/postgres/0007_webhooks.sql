-- The webhook outbox: the PostgreSQL twin of migrations/0016_webhooks.sql; see there.
CREATE TABLE webhook_outbox (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    event           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    lease_until     BIGINT,
    delivered_at    BIGINT,
    given_up_at     BIGINT,
    last_error      TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;

CREATE FUNCTION webhook_on_finish() RETURNS trigger AS $$
BEGIN
    IF NEW.state IN ('succeeded', 'archived', 'failed', 'expired', 'cancelled', 'dead')
       AND OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO webhook_outbox AS w (id, job_id, event, created_at, next_attempt_at)
        SELECT CASE WHEN NEW.state IN ('succeeded', 'archived')
                    THEN 'msg_' || NEW.id || '_success'
                    ELSE 'msg_' || NEW.id || '_' || NEW.state || '_' || NEW.updated_at::TEXT END,
               NEW.id,
               CASE WHEN NEW.state = 'archived' THEN 'succeeded' ELSE NEW.state END,
               NEW.updated_at, NEW.updated_at
        FROM api_jobs a JOIN api_keys k ON k.id = a.api_key
        WHERE a.job_id = NEW.id AND COALESCE(a.webhook_url, k.webhook_url) IS NOT NULL
        ON CONFLICT (id) DO UPDATE SET next_attempt_at = EXCLUDED.next_attempt_at,
            created_at = EXCLUDED.created_at, given_up_at = NULL
        WHERE w.delivered_at IS NULL;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER webhook_on_finish AFTER UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION webhook_on_finish();

CREATE INDEX webhook_outbox_job ON webhook_outbox (job_id);

CREATE FUNCTION api_jobs_on_prune() RETURNS trigger AS $$
BEGIN
    DELETE FROM api_jobs WHERE job_id = OLD.id;
    DELETE FROM webhook_outbox WHERE job_id = OLD.id;
    RETURN OLD;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_jobs_on_prune AFTER DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION api_jobs_on_prune();
