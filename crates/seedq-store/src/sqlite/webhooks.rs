//! SQLite implementation of [`WebhookStore`] (declared in `store/webhooks.rs`; the PostgreSQL
//! implementation is `store/postgres/webhooks.rs`).

use super::SqliteStore;
use crate::StoreError;
use crate::webhooks::*;
use rusqlite::params;

impl WebhookStore for SqliteStore {
    async fn webhook_claim(
        &self,
        now: crate::Timestamp,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<WebhookDue>, StoreError> {
        let (now, lease_ms) = (now.ms(), crate::span_ms(lease));
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rows = {
                let mut st = tx.prepare_cached(
                    "UPDATE webhook_outbox SET lease_until = ?1 + ?2 WHERE id IN ( \
                     SELECT id FROM webhook_outbox WHERE delivered_at IS NULL \
                     AND given_up_at IS NULL AND next_attempt_at <= ?1 \
                     AND (lease_until IS NULL OR lease_until <= ?1) \
                     ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING id, job_id, event, created_at, attempts",
                )?;
                let rows = st.query_map(params![now, lease_ms, limit], |r| {
                    Ok(WebhookDue {
                        id: r.get(0)?,
                        job_id: r.get(1)?,
                        event: r.get(2)?,
                        created_at: r.get(3)?,
                        attempts: r.get(4)?,
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(rows)
        })
        .await
    }

    async fn webhook_attempted(
        &self,
        row: &WebhookDue,
        now: i64,
        outcome: Result<(), (String, Option<i64>)>,
    ) -> Result<(), StoreError> {
        let (id, claimed) = (row.id.clone(), row.created_at);
        self.call(move |c| {
            match outcome {
                Ok(()) => c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, delivered_at = ?2, \
                 lease_until = NULL, last_error = NULL WHERE id = ?1",
                    params![id, now],
                )?,
                Err((error, Some(next))) => c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, \
                 next_attempt_at = CASE WHEN created_at = ?4 THEN ?3 ELSE next_attempt_at END, \
                 lease_until = NULL, last_error = ?2 WHERE id = ?1",
                    params![id, error, next, claimed],
                )?,
                Err((error, None)) => c.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, \
                 given_up_at = CASE WHEN created_at = ?4 THEN ?3 END, \
                 lease_until = NULL, last_error = ?2 WHERE id = ?1",
                    params![id, error, now, claimed],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn webhooks_of(&self, job_id: &str) -> Result<Vec<WebhookState>, StoreError> {
        let job_id = job_id.to_string();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, attempts, delivered_at, given_up_at, last_error FROM webhook_outbox \
             WHERE job_id = ?1 ORDER BY created_at, id",
            )?;
            let rows = st.query_map([job_id], |r| {
                Ok(WebhookState {
                    id: r.get(0)?,
                    attempts: r.get(1)?,
                    delivered_at: r.get(2)?,
                    given_up_at: r.get(3)?,
                    last_error: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
