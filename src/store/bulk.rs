//! Store queries for bulk rendering: batches (metadata, summaries, cancel and retry of a whole
//! batch, the export listing) and the governor's tier changes. Chains live in `store/chain.rs`.
//!
//! A batch is the set of jobs sharing `jobs.batch_id`; the `batches` table (migration 0004)
//! only adds what a batch has beyond its jobs (when it was created, a deadline, its source
//! file). Every bulk change is one transaction that also writes one `job_events` row per job,
//! and guards on the state it expects, like the single-job methods in `store/mod.rs`.

use crate::tier::Tier;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{JOB_COLUMNS, Job, Store, StoreError, insert_event, job_from_row, now_ms};
use crate::job::{JobId, JobState};

/// A batch's own row. Batches that only exist through their jobs have `created_at` = their
/// first job's creation and no deadline.
#[derive(Clone, Debug, Serialize)]
pub struct BatchMeta {
    pub name: String,
    pub created_at: i64,
    /// Unix ms by which the batch should be done (the governor's target).
    pub deadline_at: Option<i64>,
    pub source: Option<String>,
}

/// The jobs of one batch in one (state, model, tier, shape) cell: what `batch ls/show` and
/// `watch` aggregate.
#[derive(Clone, Debug, Serialize)]
pub struct BatchCell {
    pub batch: String,
    pub state: JobState,
    pub model: String,
    pub tier: Tier,
    /// `720p/5s`: with model and tier, what the learned generation times are keyed by.
    pub shape: Option<String>,
    pub jobs: i64,
    pub est_tokens: i64,
    pub usage_tokens: i64,
    /// The estimate of only those jobs that have a recorded usage (to compare like with like).
    pub est_tokens_of_used: i64,
    pub first_created: i64,
    pub first_submitted: Option<i64>,
    pub last_finished: Option<i64>,
    /// Sum and count of the learned generation times (ms), for means.
    pub gen_ms_sum: i64,
    pub gen_ms_count: i64,
}

/// A job of a batch that did not make it, with the reason.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub id: JobId,
    pub state: JobState,
    pub code: Option<String>,
    pub message: Option<String>,
    pub key: Option<String>,
}

/// What a batch-wide cancel did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BatchCancel {
    /// Queued jobs cancelled at once.
    pub cancelled: usize,
    /// Remote jobs flagged for the worker to DELETE.
    pub requested: usize,
}

/// What a batch-wide retry did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BatchRetry {
    pub requeued: usize,
    /// Shots of chains: the chain decides about those (`seedq chain show`).
    pub skipped_chain_shots: usize,
}

/// Estimated against billed tokens of the jobs of one model and tier that have a usage.
#[derive(Clone, Debug, Serialize)]
pub struct CostRow {
    pub model: String,
    pub tier: Tier,
    /// Jobs with a recorded usage.
    pub jobs: i64,
    /// Of those, the ones seedq could not estimate (unknown pixel size).
    pub unestimated: i64,
    pub est_tokens: i64,
    pub usage_tokens: i64,
}

/// A queued job as the flex governor sees it, in claim order.
#[derive(Clone, Debug)]
pub struct QueuedJob {
    pub id: JobId,
    pub token: i64,
    pub flex: bool,
    pub tokens: i64,
    pub shape: Option<String>,
    /// Its batch's deadline, if any.
    pub deadline: Option<i64>,
}

/// The terminal failure states a `batch retry --failed` puts back in the queue.
const FAILED_STATES: &str = "'failed', 'dead', 'expired'";

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Models with queued flex jobs in a batch that has a deadline: what the governor checks.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn governed_models(&self) -> Result<Vec<String>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::governed_models(pg).await;
        }
        self.call(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT j.model FROM batches AS b JOIN jobs AS j ON j.batch_id = b.name \
                 WHERE b.deadline_at IS NOT NULL AND j.state = 'queued' AND j.service_tier = 'flex' \
                   AND j.next_attempt_at < ?1 ORDER BY 1",
            )?;
            let rows = st.query_map([super::chain::HELD], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The queued jobs of `model` in the dispatcher's claim order (priority, then age), held
    /// chain shots left out, with their batch's deadline.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn queue_of(&self, model: &str) -> Result<Vec<QueuedJob>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::queue_of(pg, model).await;
        }
        let model = model.to_string();
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT j.id, j.lease_token, j.service_tier, COALESCE(j.est_tokens, 0), j.shape, b.deadline_at \
                 FROM jobs AS j LEFT JOIN batches AS b ON b.name = j.batch_id \
                 WHERE j.state = 'queued' AND j.model = ?1 AND j.next_attempt_at < ?2 \
                 ORDER BY j.priority DESC, j.id",
            )?;
            let rows = st.query_map(params![model, super::chain::HELD], |r| {
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

    /// Moves queued flex jobs to the default tier with their rewritten bodies, each guarded on
    /// its lease token; returns how many moved. Only queued jobs change: nothing has been
    /// POSTed for them (or what was is settled), so the body may still change. They become
    /// due at once: a flex job waiting for tomorrow's budget need not wait on default.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn to_default_tier(
        &self,
        changes: Vec<(JobId, i64, String)>,
        detail: String,
    ) -> Result<usize, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::to_default_tier(pg, changes, detail).await;
        }
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
                    insert_event(&tx, id.as_str(), now, Some(JobState::Queued), JobState::Queued, Some(&detail))?;
                    moved += 1;
                }
            }
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    /// Estimated and billed tokens per model and tier, over the jobs that have a usage.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn cost_rows(&self) -> Result<Vec<CostRow>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::cost_rows(pg).await;
        }
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

    /// Records batches (name, deadline, source file). An existing batch keeps its creation
    /// time and source; a deadline given again replaces the old one.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ensure_batches(
        &self,
        batches: Vec<(String, Option<i64>, Option<String>)>,
    ) -> Result<(), StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::ensure_batches(pg, batches).await;
        }
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

    /// Every batch: rows of the `batches` table plus batch names that only jobs carry.
    /// Oldest first.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn batches(&self) -> Result<Vec<BatchMeta>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::batches(pg).await;
        }
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

    /// One batch's metadata, or `None` when neither a row nor any job has that name.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn batch(&self, name: &str) -> Result<Option<BatchMeta>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::batch(pg, name).await;
        }
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
            let first: Option<i64> = c.query_row(
                "SELECT MIN(created_at) FROM jobs WHERE batch_id = ?1",
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

    /// Per (batch, state, model, tier, shape) counts, tokens and timings; one batch or all.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn batch_cells(&self, batch: Option<String>) -> Result<Vec<BatchCell>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::batch_cells(pg, batch).await;
        }
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT batch_id, state, model, service_tier, COUNT(*), \
                   COALESCE(SUM(est_tokens), 0), COALESCE(SUM(usage_tokens), 0), \
                   COALESCE(SUM(CASE WHEN usage_tokens IS NOT NULL THEN est_tokens END), 0), \
                   MIN(created_at), MIN(submitted_at), MAX(finished_at), \
                   COALESCE(SUM(gen_ms), 0), COUNT(gen_ms), shape \
                 FROM jobs WHERE batch_id IS NOT NULL AND (?1 IS NULL OR batch_id = ?1) \
                 GROUP BY batch_id, state, model, service_tier, shape \
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

    /// Jobs of a batch that failed, died, expired or were cancelled, oldest first.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn batch_failures(
        &self,
        batch: &str,
        limit: u32,
    ) -> Result<Vec<Failure>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::batch_failures(pg, batch, limit).await;
        }
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

    /// Every job of a batch, oldest first (the export).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn batch_jobs(&self, batch: &str) -> Result<Vec<Job>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::batch_jobs(pg, batch).await;
        }
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

    /// Cancels a whole batch in one transaction: queued jobs (held chain shots included) at
    /// once, remote ones by flagging them for the worker's DELETE.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn cancel_batch(&self, batch: &str) -> Result<BatchCancel, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::cancel_batch(pg, batch).await;
        }
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

    /// Puts a batch's failed, dead and expired jobs (and its cancelled ones with
    /// `cancelled`) back in the queue with fresh attempts, in one transaction. Each keeps its
    /// frozen body, as `retry` does. Chain shots are left to their chain.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn retry_batch(
        &self,
        batch: &str,
        cancelled: bool,
    ) -> Result<BatchRetry, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::bulk::retry_batch(pg, batch, cancelled).await;
        }
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
