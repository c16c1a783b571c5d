//! SQLite implementation of [`BatchStore`] (declared in `store/bulk.rs`; the PostgreSQL
//! implementation is `store/postgres/bulk.rs`).

use super::SqliteStore;
use super::core::{insert_event, job_from_row};
use crate::bulk::*;
use crate::job::{JobId, JobState};
use crate::tier::Tier;
use crate::{JOB_COLUMNS, Job, StoreError, now_ms};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

/// The terminal failure states a `batch retry --failed` puts back in the queue.
const FAILED_STATES: &str = "'failed', 'dead', 'expired'";

impl BatchStore for SqliteStore {
    async fn governed_models(&self) -> Result<Vec<String>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT j.model FROM batches AS b JOIN jobs AS j ON j.batch_id = b.name \
             WHERE b.deadline_at IS NOT NULL AND j.state = 'queued' AND j.service_tier = 'flex' \
               AND j.next_attempt_at < ?1 ORDER BY 1",
            )?;
            let rows = st.query_map([crate::chain::HELD], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn queue_of(&self, model: &str) -> Result<Vec<QueuedJob>, StoreError> {
        let model = model.to_string();
        self.call(move |c| {
        let mut st = c.prepare_cached(
            "SELECT j.id, j.lease_token, j.service_tier, COALESCE(j.est_tokens, 0), j.shape, b.deadline_at \
             FROM jobs AS j LEFT JOIN batches AS b ON b.name = j.batch_id \
             WHERE j.state = 'queued' AND j.model = ?1 AND j.next_attempt_at < ?2 \
             ORDER BY j.priority DESC, j.id",
        )?;
        let rows = st.query_map(params![model, crate::chain::HELD], |r| {
            Ok(QueuedJob {
                id: JobId::from(r.get::<_, String>(0)?),
                token: r.get(1)?,
                flex: r.get::<_, Tier>(2)?.is_flex(),
                tokens: r.get(3)?,
                shape: r.get(4)?,
                deadline: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
    }

    async fn to_default_tier(
        &self,
        changes: Vec<(JobId, i64, String)>,
        detail: String,
    ) -> Result<usize, StoreError> {
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut moved = 0;
            for (id, token, body) in changes {
                let n = tx.execute(
                "UPDATE jobs SET request_json = ?2, service_tier = 'default', deadline_at = NULL, \
                 updated_at = ?3, lease_token = lease_token + 1, \
                 next_attempt_at = MIN(next_attempt_at, ?3) \
                 WHERE id = ?1 AND state = 'queued' AND service_tier = 'flex' AND lease_token = ?4",
                params![id.as_str(), body, now, token],
            )?;
                if n == 1 {
                    insert_event(
                        &tx,
                        id.as_str(),
                        now,
                        Some(JobState::Queued),
                        JobState::Queued,
                        Some(&detail),
                    )?;
                    moved += 1;
                }
            }
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    async fn cost_rows(&self) -> Result<Vec<CostRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT model, service_tier, COUNT(*), COUNT(*) - COUNT(est_tokens), \
               COALESCE(SUM(est_tokens), 0), COALESCE(SUM(usage_tokens), 0) \
             FROM jobs WHERE usage_tokens IS NOT NULL \
             GROUP BY model, service_tier ORDER BY model, service_tier",
            )?;
            let rows = st.query_map([], |r| {
                Ok(CostRow {
                    model: r.get(0)?,
                    tier: r.get(1)?,
                    jobs: r.get(2)?,
                    unestimated: r.get(3)?,
                    est_tokens: r.get(4)?,
                    usage_tokens: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn ensure_batches(
        &self,
        batches: Vec<(String, Option<crate::Timestamp>, Option<String>)>,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
        let now = now_ms();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO batches (name, created_at, deadline_at, source) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET deadline_at = COALESCE(excluded.deadline_at, deadline_at)",
            )?;
            for (name, deadline, source) in batches {
                st.execute(params![name, now, deadline, source])?;
            }
        }
        tx.commit()?;
        Ok(())
    })
    .await
    }

    async fn batches(&self) -> Result<Vec<BatchMeta>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT name, created_at, deadline_at, source FROM batches \
             UNION ALL \
             SELECT batch_id, MIN(created_at), NULL, NULL FROM jobs \
             WHERE batch_id IS NOT NULL AND batch_id NOT IN (SELECT name FROM batches) \
             GROUP BY batch_id \
             ORDER BY 2, 1",
            )?;
            let rows = st.query_map([], |r| {
                Ok(BatchMeta {
                    name: r.get(0)?,
                    created_at: r.get(1)?,
                    deadline_at: r.get(2)?,
                    source: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn batch(&self, name: &str) -> Result<Option<BatchMeta>, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let row = c
                .query_row(
                    "SELECT name, created_at, deadline_at, source FROM batches WHERE name = ?1",
                    [&name],
                    |r| {
                        Ok(BatchMeta {
                            name: r.get(0)?,
                            created_at: r.get(1)?,
                            deadline_at: r.get(2)?,
                            source: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            if row.is_some() {
                return Ok(row);
            }
            // A batch only jobs name: its first creation from the batch cells (the earliest
            // bound of any cell is the batch's own), not a scan of its jobs.
            let first: Option<crate::Timestamp> = c.query_row(
                "SELECT CASE WHEN SUM(jobs) > 0 THEN MIN(first_created) END \
                 FROM ui_batch_counts WHERE batch_id = ?1",
                [&name],
                |r| r.get(0),
            )?;
            Ok(first.map(|created_at| BatchMeta {
                name,
                created_at,
                deadline_at: None,
                source: None,
            }))
        })
        .await
    }

    async fn batch_cells(&self, batch: Option<String>) -> Result<Vec<BatchCell>, StoreError> {
        self.call(move |c| {
            // The cells the triggers keep (store/counters.rs, migrations/0024_batch_cell_sums.sql):
            // a few rows however large the batch.
            let mut st = c.prepare_cached(
                "SELECT batch_id, state, model, service_tier, jobs, est_tokens, usage_tokens, \
               est_tokens_of_used, first_created, first_submitted, last_finished, gen_ms_sum, \
               gen_ms_count, NULLIF(shape, '') \
             FROM ui_batch_counts WHERE (?1 IS NULL OR batch_id = ?1) AND jobs > 0 \
             ORDER BY batch_id, model, service_tier, state",
            )?;
            let rows = st.query_map([batch], |r| {
                let state: String = r.get(1)?;
                Ok((
                    state,
                    BatchCell {
                        batch: r.get(0)?,
                        state: JobState::Queued,
                        model: r.get(2)?,
                        tier: r.get(3)?,
                        shape: r.get(13)?,
                        jobs: r.get(4)?,
                        est_tokens: r.get(5)?,
                        usage_tokens: r.get(6)?,
                        est_tokens_of_used: r.get(7)?,
                        first_created: r.get(8)?,
                        first_submitted: r.get(9)?,
                        last_finished: r.get(10)?,
                        gen_ms_sum: r.get(11)?,
                        gen_ms_count: r.get(12)?,
                    },
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (state, mut cell) = row?;
                cell.state = parse_state(&state)?;
                out.push(cell);
            }
            Ok(out)
        })
        .await
    }

    async fn batch_failures(&self, batch: &str, limit: u32) -> Result<Vec<Failure>, StoreError> {
        let batch = batch.to_string();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, state, last_error_code, last_error_message, idempotency_key FROM jobs \
             WHERE batch_id = ?1 AND state IN ('failed', 'dead', 'expired', 'cancelled') \
             ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(params![batch, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, state, code, message, key) = row?;
                out.push(Failure {
                    id: JobId::from(id),
                    state: parse_state(&state)?,
                    code,
                    message,
                    key,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn batch_jobs(&self, batch: &str) -> Result<Vec<Job>, StoreError> {
        let batch = batch.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = ?1 ORDER BY id"
            ))?;
            let rows = st.query_map([batch], job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn cancel_batch(&self, batch: &str) -> Result<BatchCancel, StoreError> {
        let batch = batch.to_string();
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let cancelled: Vec<String> = {
                let mut st = tx.prepare(
                    "UPDATE jobs SET state = 'cancelled', updated_at = ?2, finished_at = ?2, \
                 lease_token = lease_token + 1, lease_until = NULL \
                 WHERE batch_id = ?1 AND state = 'queued' RETURNING id",
                )?;
                let rows = st.query_map(params![batch, now], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in &cancelled {
                insert_event(
                    &tx,
                    id,
                    now,
                    Some(JobState::Queued),
                    JobState::Cancelled,
                    Some("batch cancelled by user"),
                )?;
            }
            let requested: Vec<(String, String)> = {
                let mut st = tx.prepare(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ?2, next_attempt_at = ?2 \
                 WHERE batch_id = ?1 AND cancel_requested = 0 \
                   AND state IN ('submitting', 'submit_unknown', 'submitted') \
                 RETURNING id, state",
                )?;
                let rows = st.query_map(params![batch, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            for (id, state) in &requested {
                let s = parse_state(state)?;
                insert_event(&tx, id, now, Some(s), s, Some("cancel requested (batch)"))?;
            }
            tx.commit()?;
            Ok(BatchCancel {
                cancelled: cancelled.len(),
                requested: requested.len(),
            })
        })
        .await
    }

    async fn retry_batch(&self, batch: &str, cancelled: bool) -> Result<BatchRetry, StoreError> {
        let batch = batch.to_string();
        self.call(move |c| {
        let now = now_ms();
        let states = if cancelled {
            format!("{FAILED_STATES}, 'cancelled'")
        } else {
            FAILED_STATES.to_string()
        };
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let skipped: i64 = tx.query_row(
            &format!(
                "SELECT COUNT(*) FROM jobs WHERE batch_id = ?1 AND state IN ({states}) \
                 AND chain_id IS NOT NULL"
            ),
            [&batch],
            |r| r.get(0),
        )?;
        let requeued: Vec<(String, String)> = {
            let mut st = tx.prepare(&format!(
                "SELECT id, state FROM jobs WHERE batch_id = ?1 AND state IN ({states}) \
                 AND chain_id IS NULL"
            ))?;
            let rows = st.query_map([&batch], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        // The same reset as `Store::retry`: a new remote task, the same frozen body.
        tx.execute(
            &format!(
                "UPDATE jobs SET state = 'queued', updated_at = ?2, attempts = 0, next_attempt_at = ?2, \
                 remote_task_id = NULL, remote_status = NULL, remote_created_at = NULL, \
                 submit_started_at = NULL, submitted_at = NULL, cancel_requested = 0, \
                 last_error_code = NULL, last_error_message = NULL, finished_at = NULL, \
                 deadline_at = CASE WHEN deadline_at IS NULL THEN NULL ELSE ?2 + (deadline_at - created_at) END, \
                 lease_token = lease_token + 1, lease_until = NULL, lease_owner = NULL \
                 WHERE batch_id = ?1 AND state IN ({states}) AND chain_id IS NULL"
            ),
            params![batch, now],
        )?;
        for (id, state) in &requeued {
            let from = parse_state(state)?;
            insert_event(&tx, id, now, Some(from), JobState::Queued, Some("retried with its batch"))?;
        }
        tx.commit()?;
        Ok(BatchRetry {
            requeued: requeued.len(),
            skipped_chain_shots: usize::try_from(skipped).unwrap_or(0),
        })
    })
    .await
    }
}
