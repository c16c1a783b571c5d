-- Webhooks for jobs created with the admin token: the PostgreSQL twin of
-- migrations/0019_admin_webhooks.sql; see there. The key is joined only for its webhook_url.
CREATE OR REPLACE FUNCTION webhook_on_finish() RETURNS trigger AS $$
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
        FROM api_jobs a LEFT JOIN api_keys k ON k.id = a.api_key
        WHERE a.job_id = NEW.id AND COALESCE(a.webhook_url, k.webhook_url) IS NOT NULL
        ON CONFLICT (id) DO UPDATE SET next_attempt_at = EXCLUDED.next_attempt_at,
            created_at = EXCLUDED.created_at, given_up_at = NULL
        WHERE w.delivered_at IS NULL;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
