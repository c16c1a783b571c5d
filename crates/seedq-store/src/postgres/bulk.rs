//! PostgreSQL implementation of the bulk queries (the SQLite one is `store/sqlite/bulk.rs`): batches,
//! their cancel and retry, the export listing, and the governor's tier changes.
//!
//! As on SQLite, every bulk change is one transaction with one `job_events` row per job. The
//! per-job loops of the SQLite bodies become set operations here (one `UPDATE … RETURNING`,
//! one `INSERT … SELECT FROM unnest(…)` for the events), so a batch of thousands is a handful
//! of round trips to the server rather than thousands.

use super::PgStore;
use super::job_from_pg;
use crate::bulk::BatchStore;
use crate::bulk::{BatchCancel, BatchCell, BatchMeta, BatchRetry, CostRow, Failure, QueuedJob};
use crate::job::{JobId, JobState};
use crate::tier::Tier;
use crate::{HELD, JOB_COLUMNS, Job, StoreError, now_ms};

/// The terminal failure states a `batch retry --failed` puts back in the queue (as
/// `store/bulk.rs`'s `FAILED_STATES`).
const FAILED_STATES: &str = "'failed', 'dead', 'expired'";

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))
}

/// Appends one `job_events` row per `(id, from)` inside `tx`, in that order, in one statement.
async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[String],
    froms: &[Option<String>],
    at: i64,
    to: JobState,
    detail: &str,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
         SELECT e.id, $3, e.from_state, $4, $5 \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(id, from_state, n) ORDER BY e.n",
        &[&ids, &froms, &at, &to.as_str(), &detail],
    )
    .await?;
    Ok(())
}

fn meta(r: &tokio_postgres::Row) -> Result<BatchMeta, StoreError> {
    Ok(BatchMeta {
        name: r.try_get(0)?,
        created_at: r.try_get(1)?,
        deadline_at: r.try_get(2)?,
        source: r.try_get(3)?,
    })
}

impl BatchStore for PgStore {
    async fn governed_models(&self) -> Result<Vec<String>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT DISTINCT j.model FROM batches AS b JOIN jobs AS j ON j.batch_id = b.name \
         WHERE b.deadline_at IS NOT NULL AND j.state = 'queued' AND j.service_tier = 'flex' \
           AND j.next_attempt_at < $1 ORDER BY 1",
            )
            .await?;
        let rows = c.query(&st, &[&HELD]).await?;
        rows.iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect::<Result<_, StoreError>>()
    }

    async fn queue_of(&self, model: &str) -> Result<Vec<QueuedJob>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT j.id, j.lease_token, j.service_tier, COALESCE(j.est_tokens, 0), j.shape, \
           b.deadline_at \
         FROM jobs AS j LEFT JOIN batches AS b ON b.name = j.batch_id \
         WHERE j.state = 'queued' AND j.model = $1 AND j.next_attempt_at < $2 \
         ORDER BY j.priority DESC, j.id",
            )
            .await?;
        let rows = c.query(&st, &[&model, &HELD]).await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedJob {
                    id: JobId::from(r.try_get::<_, String>(0)?),
                    token: r.try_get(1)?,
                    flex: r.try_get::<_, Tier>(2)?.is_flex(),
                    tokens: r.try_get(3)?,
                    shape: r.try_get(4)?,
                    deadline: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn to_default_tier(
        &self,
        changes: Vec<(JobId, i64, String)>,
        detail: String,
    ) -> Result<usize, StoreError> {
        if changes.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = changes.iter().map(|(id, _, _)| id.as_str()).collect();
        let tokens: Vec<i64> = changes.iter().map(|(_, t, _)| *t).collect();
        let bodies: Vec<&str> = changes.iter().map(|(_, _, b)| b.as_str()).collect();
        let (ids, tokens, bodies, detail) = (&ids, &tokens, &bodies, detail.as_str());
        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // One guarded UPDATE for all the changes, each row still checked against its own
            // token (the SQLite body's per-job statement, as a join on the arrays).
            let moved: Vec<String> = tx
                .query(
                    "UPDATE jobs AS j SET request_json = ch.body, service_tier = 'default', \
             deadline_at = NULL, updated_at = $4, lease_token = j.lease_token + 1, \
             next_attempt_at = LEAST(j.next_attempt_at, $4) \
             FROM unnest($1::text[], $2::bigint[], $3::text[]) AS ch(id, token, body) \
             WHERE j.id = ch.id AND j.state = 'queued' AND j.service_tier = 'flex' \
               AND j.lease_token = ch.token \
             RETURNING j.id",
                    &[ids, tokens, bodies, &now],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let froms = vec![Some(JobState::Queued.as_str().to_string()); moved.len()];
            insert_events(&tx, &moved, &froms, now, JobState::Queued, detail).await?;
            tx.commit().await?;
            Ok(moved.len())
        })
        .await
    }

    async fn cost_rows(&self) -> Result<Vec<CostRow>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT model, service_tier, COUNT(*), COUNT(*) - COUNT(est_tokens), \
           COALESCE(SUM(est_tokens), 0)::BIGINT, COALESCE(SUM(usage_tokens), 0)::BIGINT \
         FROM jobs WHERE usage_tokens IS NOT NULL \
         GROUP BY model, service_tier ORDER BY model, service_tier",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CostRow {
                    model: r.try_get(0)?,
                    tier: r.try_get(1)?,
                    jobs: r.try_get(2)?,
                    unestimated: r.try_get(3)?,
                    est_tokens: r.try_get(4)?,
                    usage_tokens: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn ensure_batches(
        &self,
        batches: Vec<(String, Option<crate::Timestamp>, Option<String>)>,
    ) -> Result<(), StoreError> {
        let batches = &batches;
        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // `batches.deadline_at` qualified: PostgreSQL would find a bare name ambiguous
            // beside `excluded`.
            let st = tx
                .prepare_cached(
                    "INSERT INTO batches (name, created_at, deadline_at, source) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE \
             SET deadline_at = COALESCE(excluded.deadline_at, batches.deadline_at)",
                )
                .await?;
            for (name, deadline, source) in batches {
                tx.execute(&st, &[name, &now, deadline, source]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn batches(&self) -> Result<Vec<BatchMeta>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT name, created_at, deadline_at, source FROM batches \
         UNION ALL \
         SELECT batch_id, MIN(created_at), NULL, NULL FROM jobs \
         WHERE batch_id IS NOT NULL AND batch_id NOT IN (SELECT name FROM batches) \
         GROUP BY batch_id \
         ORDER BY 2, 1",
                &[],
            )
            .await?;
        rows.iter().map(meta).collect()
    }

    async fn batch(&self, name: &str) -> Result<Option<BatchMeta>, StoreError> {
        let c = self.conn().await?;
        if let Some(r) = c
            .query_opt(
                "SELECT name, created_at, deadline_at, source FROM batches WHERE name = $1",
                &[&name],
            )
            .await?
        {
            return Ok(Some(meta(&r)?));
        }
        // A batch only jobs name: its first creation from the batch cells (the earliest bound
        // of any cell is the batch's own), not a scan of its jobs (1.0-1.3 s at 1 000 000).
        let first: Option<crate::Timestamp> = c
            .query_one(
                "SELECT CASE WHEN SUM(jobs) > 0 THEN MIN(first_created) END \
                 FROM ui_batch_counts WHERE batch_id = $1",
                &[&name],
            )
            .await?
            .try_get(0)?;
        Ok(first.map(|created_at| BatchMeta {
            name: name.to_string(),
            created_at,
            deadline_at: None,
            source: None,
        }))
    }

    async fn batch_cells(&self, batch: Option<String>) -> Result<Vec<BatchCell>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            // The cells the triggers keep, a cell's stripes summed (store/counters.rs,
            // migrations/postgres/0017_batch_cell_sums.sql): a few rows however large the
            // batch, where grouping its jobs took seconds at 1 000 000.
            .query(
                "SELECT batch_id, state, model, service_tier, SUM(jobs)::BIGINT, \
           SUM(est_tokens)::BIGINT, SUM(usage_tokens)::BIGINT, SUM(est_tokens_of_used)::BIGINT, \
           MIN(first_created), MIN(first_submitted), MAX(last_finished), \
           SUM(gen_ms_sum)::BIGINT, SUM(gen_ms_count)::BIGINT, NULLIF(shape, '') \
         FROM ui_batch_counts WHERE ($1::text IS NULL OR batch_id = $1) \
         GROUP BY batch_id, state, model, service_tier, shape HAVING SUM(jobs) > 0 \
         ORDER BY batch_id, model, service_tier, state",
                &[&batch],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BatchCell {
                    batch: r.try_get(0)?,
                    state: parse_state(r.try_get(1)?)?,
                    model: r.try_get(2)?,
                    tier: r.try_get(3)?,
                    shape: r.try_get(13)?,
                    jobs: r.try_get(4)?,
                    est_tokens: r.try_get(5)?,
                    usage_tokens: r.try_get(6)?,
                    est_tokens_of_used: r.try_get(7)?,
                    first_created: r.try_get(8)?,
                    first_submitted: r.try_get(9)?,
                    last_finished: r.try_get(10)?,
                    gen_ms_sum: r.try_get(11)?,
                    gen_ms_count: r.try_get(12)?,
                })
            })
            .collect()
    }

    async fn batch_failures(&self, batch: &str, limit: u32) -> Result<Vec<Failure>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, state, last_error_code, last_error_message, idempotency_key FROM jobs \
         WHERE batch_id = $1 AND state IN ('failed', 'dead', 'expired', 'cancelled') \
         ORDER BY id LIMIT $2",
                &[&batch, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Failure {
                    id: JobId::from(r.try_get::<_, String>(0)?),
                    state: parse_state(r.try_get(1)?)?,
                    code: r.try_get(2)?,
                    message: r.try_get(3)?,
                    key: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn batch_jobs(&self, batch: &str) -> Result<Vec<Job>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = $1 ORDER BY id"),
                &[&batch],
            )
            .await?;
        rows.iter().map(job_from_pg).collect()
    }

    async fn cancel_batch(&self, batch: &str) -> Result<BatchCancel, StoreError> {
        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let cancelled: Vec<String> = tx
                .query(
                    "UPDATE jobs SET state = 'cancelled', updated_at = $2, finished_at = $2, \
             lease_token = lease_token + 1, lease_until = NULL \
             WHERE batch_id = $1 AND state = 'queued' RETURNING id",
                    &[&batch, &now],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let froms = vec![Some(JobState::Queued.as_str().to_string()); cancelled.len()];
            insert_events(
                &tx,
                &cancelled,
                &froms,
                now,
                JobState::Cancelled,
                "batch cancelled by user",
            )
            .await?;
            // These keep their state: the event's from and to are the same per job, so the
            // events go in one statement per state.
            let requested = tx
                .query(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = $2, next_attempt_at = $2 \
             WHERE batch_id = $1 AND cancel_requested = 0 \
               AND state IN ('submitting', 'submit_unknown', 'submitted') \
             RETURNING id, state",
                    &[&batch, &now],
                )
                .await?;
            let mut by_state: Vec<(JobState, Vec<String>)> = Vec::new();
            for r in &requested {
                let id: String = r.try_get(0)?;
                let s = parse_state(r.try_get(1)?)?;
                match by_state.iter_mut().find(|(st, _)| *st == s) {
                    Some((_, ids)) => ids.push(id),
                    None => by_state.push((s, vec![id])),
                }
            }
            for (s, ids) in &by_state {
                let froms = vec![Some(s.as_str().to_string()); ids.len()];
                insert_events(&tx, ids, &froms, now, *s, "cancel requested (batch)").await?;
            }
            tx.commit().await?;
            Ok(BatchCancel {
                cancelled: cancelled.len(),
                requested: requested.len(),
            })
        })
        .await
    }

    async fn retry_batch(&self, batch: &str, cancelled: bool) -> Result<BatchRetry, StoreError> {
        let states = if cancelled {
            format!("{FAILED_STATES}, 'cancelled'")
        } else {
            FAILED_STATES.to_string()
        };
        let states = states.as_str();
        self.retry(|| async move {
    let now = now_ms();
    let mut c = self.conn().await?;
    let tx = c.transaction().await?;
    let skipped: i64 = tx
        .query_one(
            &format!(
                "SELECT COUNT(*) FROM jobs WHERE batch_id = $1 AND state IN ({states}) \
                 AND chain_id IS NOT NULL"
            ),
            &[&batch],
        )
        .await?
        .try_get(0)?;
    // The rows to requeue, locked, with the state each leaves (the UPDATE's RETURNING
    // would only show the new one). A row another worker changes meanwhile is re-checked
    // by the lock and left out when it no longer matches.
    let old = tx
        .query(
            &format!(
                "SELECT id, state FROM jobs WHERE batch_id = $1 AND state IN ({states}) \
                 AND chain_id IS NULL ORDER BY id FOR UPDATE"
            ),
            &[&batch],
        )
        .await?;
    let mut ids = Vec::with_capacity(old.len());
    let mut froms = Vec::with_capacity(old.len());
    for r in &old {
        ids.push(r.try_get::<_, String>(0)?);
        let from: String = r.try_get(1)?;
        froms.push(Some(parse_state(&from)?.as_str().to_string()));
    }
    // The same reset as `Store::retry`: a new remote task, the same frozen body.
    tx.execute(
        "UPDATE jobs SET state = 'queued', updated_at = $2, attempts = 0, next_attempt_at = $2, \
         remote_task_id = NULL, remote_status = NULL, remote_created_at = NULL, \
         submit_started_at = NULL, submitted_at = NULL, cancel_requested = 0, \
         last_error_code = NULL, last_error_message = NULL, finished_at = NULL, \
         deadline_at = CASE WHEN deadline_at IS NULL THEN NULL ELSE $2 + (deadline_at - created_at) END, \
         lease_token = lease_token + 1, lease_until = NULL, lease_owner = NULL \
         WHERE id = ANY($1)",
        &[&ids, &now],
    )
    .await?;
    insert_events(
        &tx,
        &ids,
        &froms,
        now,
        JobState::Queued,
        "retried with its batch",
    )
    .await?;
    tx.commit().await?;
    Ok(BatchRetry {
        requeued: ids.len(),
        skipped_chain_shots: usize::try_from(skipped).unwrap_or(0),
    })
})
.await
    }
}
