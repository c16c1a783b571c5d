-- seedq schema: webhooks for jobs created with the admin token. Append-only.
--
-- 0016's trigger joined each job's door record to its key, so a job with no key (created with
-- admin.token) never got an outbox row. Such a job's create may now carry a callback_url,
-- signed with the server's secret (api.webhook_secret_file): the key is joined only for its
-- webhook_url, and a job with neither URL still gets no row. Otherwise the same as 0016.
DROP TRIGGER webhook_on_finish;
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
    FROM api_jobs a LEFT JOIN api_keys k ON k.id = a.api_key
    WHERE a.job_id = NEW.id AND COALESCE(a.webhook_url, k.webhook_url) IS NOT NULL
    ON CONFLICT (id) DO UPDATE SET next_attempt_at = excluded.next_attempt_at,
        created_at = excluded.created_at, given_up_at = NULL
    WHERE webhook_outbox.delivered_at IS NULL;
END;
