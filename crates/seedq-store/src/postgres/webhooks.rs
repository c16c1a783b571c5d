//! PostgreSQL implementation of the webhook outbox (the SQLite one is `store/sqlite/webhooks.rs`).
//! Claims pick rows `FOR UPDATE SKIP LOCKED`, so two workers never send one row at once.

use super::PgStore;
use crate::StoreError;
use crate::webhooks::WebhookStore;
use crate::webhooks::{WebhookDue, WebhookState};

impl WebhookStore for PgStore {
    async fn webhook_claim(
        &self,
        now: crate::Timestamp,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<WebhookDue>, StoreError> {
        let (now, lease_ms) = (now.ms(), crate::span_ms(lease));
        let c = self.conn().await?;
        let rows = c
            .query(
                "UPDATE webhook_outbox SET lease_until = $1 + $2 WHERE id IN ( \
             SELECT id FROM webhook_outbox WHERE delivered_at IS NULL \
             AND given_up_at IS NULL AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) \
             ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, job_id, event, created_at, attempts",
                &[&now, &lease_ms, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WebhookDue {
                    id: r.try_get(0)?,
                    job_id: r.try_get(1)?,
                    event: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// [`crate::Store::webhook_attempted`]: a row re-armed meanwhile (a new `created_at`)
    /// keeps the trigger's time. Under READ COMMITTED an update that waited for the archive's
    /// transaction applies to the row it left, so the `CASE` sees the new `created_at`.
    async fn webhook_attempted(
        &self,
        row: &WebhookDue,
        now: i64,
        outcome: Result<(), (String, Option<i64>)>,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let (id, claimed) = (&row.id, &row.created_at);
        match outcome {
            Ok(()) => {
                c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = $2, \
             lease_until = NULL, last_error = NULL WHERE id = $1",
                    &[id, &now],
                )
                .await?
            }
            Err((error, Some(next))) => {
                c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, \
             next_attempt_at = CASE WHEN created_at = $4 THEN $3 ELSE next_attempt_at END, \
             lease_until = NULL, last_error = $2 WHERE id = $1",
                    &[id, &error, &next, claimed],
                )
                .await?
            }
            Err((error, None)) => {
                c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, \
             given_up_at = CASE WHEN created_at = $4 THEN $3::bigint END, \
             lease_until = NULL, last_error = $2 WHERE id = $1",
                    &[id, &error, &now, claimed],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn webhooks_of(&self, job_id: &str) -> Result<Vec<WebhookState>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, attempts, delivered_at, given_up_at, last_error FROM webhook_outbox \
         WHERE job_id = $1 ORDER BY created_at, id",
                &[&job_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WebhookState {
                    id: r.try_get(0)?,
                    attempts: r.try_get(1)?,
                    delivered_at: r.try_get(2)?,
                    given_up_at: r.try_get(3)?,
                    last_error: r.try_get(4)?,
                })
            })
            .collect()
    }
}
