//! SQLite implementation of [`QueueStore`] (declared in `store/core.rs`; the PostgreSQL one is
//! `store/postgres/core.rs`).

use super::SqliteStore;
use crate::store::core::QueueStore;
use crate::store::*;

impl QueueStore for SqliteStore {
    async fn schema_version(&self) -> Result<i64, StoreError> {
        self.call(|c| Ok(migrate::version(c)?)).await
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<EnqueueReport, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut report = EnqueueReport::default();
            {
                let mut existing =
                    tx.prepare_cached("SELECT id FROM jobs WHERE idempotency_key = ?1")?;
                // The prompt index, batch counts and `enqueued` events are filled once for
                // all rows at the end (bulk_index.rs: per row, FTS5 writes a segment per job).
                bulk_index::begin(&tx)?;
                let inserted = bulk_index::insert_rows(&tx, &jobs, now)?;
                let rowids: Vec<i64> = inserted.iter().map(|r| r.0).collect();
                let ids: HashSet<&str> = inserted.iter().map(|r| r.1.as_str()).collect();
                for j in &jobs {
                    if ids.contains(j.id.as_str()) {
                        report.inserted.push(j.id.clone());
                    } else if let Some(key) = &j.key {
                        let id: String = existing.query_row([key], |r| r.get(0))?;
                        report.skipped.push((key.clone(), JobId::from(id)));
                    }
                }
                bulk_index::finish(&tx, &rowids, now)?;
            }
            tx.commit()?;
            Ok(report)
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_string();
        self.call(move |c| Ok(load_job(c, &id)?)).await
    }

    async fn job_by_remote(&self, remote: &str) -> Result<Option<Job>, StoreError> {
        let remote = remote.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE remote_task_id = ?1"),
                [remote],
                job_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn events(&self, id: &str) -> Result<Vec<JobEvent>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let mut st = c.prepare(
            "SELECT at, from_state, to_state, detail FROM job_events WHERE job_id = ?1 ORDER BY id",
        )?;
            let rows = st.query_map([id], |r| {
                Ok(JobEvent {
                    at: r.get(0)?,
                    from_state: r.get(1)?,
                    to_state: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn list_columns(&self, f: ListFilter, columns: String) -> Result<Vec<Job>, StoreError> {
        self.call(move |c| {
            let mut sql = format!("SELECT {columns} FROM jobs WHERE 1 = 1");
            let mut args: Vec<Value> = Vec::new();
            push_job_filters(&mut sql, &mut args, f.state, f.model, f.batch, f.tag);
            sql.push_str(" ORDER BY id DESC");
            if let Some(l) = f.limit {
                sql.push_str(&format!(" LIMIT {l}"));
            }
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn stats(&self) -> Result<Vec<StatRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                // The counts the triggers keep (migrations/0018_job_counts.sql), not a scan.
                "SELECT state, model, jobs, est_tokens, usage_tokens \
             FROM job_counts WHERE jobs > 0 ORDER BY model, state",
            )?;
            let rows = st.query_map([], |r| {
                let s: String = r.get(0)?;
                Ok((s, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (s, model, jobs, est_tokens, usage_tokens) = row?;
                let state = s
                    .parse()
                    .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))?;
                out.push(StatRow {
                    state,
                    model,
                    jobs,
                    est_tokens,
                    usage_tokens,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(job) = load_job(&tx, &id)? else {
            return Ok(CancelOutcome::NotFound);
        };
        let now = now_ms();
        let out = match job.state {
            JobState::Queued => {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', updated_at = ?2, finished_at = ?2 \
                     WHERE id = ?1 AND state = 'queued'",
                    params![id, now],
                )?;
                insert_event(&tx, &id, now, Some(job.state), JobState::Cancelled, Some("cancelled by user"))?;
                CancelOutcome::Cancelled
            }
            // A parked ambiguous submit has no remote id to DELETE: the operator decides
            // it is over. (If a task did start, it is not tracked any more.)
            JobState::SubmitUnknown if job.last_error_code.as_deref() == Some("parked") => {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', updated_at = ?2, finished_at = ?2, \
                     lease_token = lease_token + 1 WHERE id = ?1 AND state = 'submit_unknown'",
                    params![id, now],
                )?;
                insert_event(&tx, &id, now, Some(job.state), JobState::Cancelled, Some("parked submit cancelled by user"))?;
                CancelOutcome::Cancelled
            }
            s if s.is_remote() => {
                tx.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ?2, next_attempt_at = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                insert_event(&tx, &id, now, Some(s), s, Some("cancel requested"))?;
                CancelOutcome::Requested
            }
            s => CancelOutcome::AlreadyFinal { state: s },
        };
        tx.commit()?;
        Ok(out)
    })
    .await
    }

    async fn retry(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(job) = load_job(&tx, &id)? else {
            return Ok(RetryOutcome::NotFound);
        };
        if job.next_attempt_at == chain::HELD {
            return Ok(RetryOutcome::UnreleasedShot);
        }
        // A parked ambiguous submit may be resubmitted by an operator who checked that no
        // task exists (reconciliation found none within its grace period).
        let parked = job.state == JobState::SubmitUnknown
            && job.last_error_code.as_deref() == Some("parked");
        let retryable = job.state.is_terminal() && job.state.can_transition(JobState::Queued);
        if !(retryable || parked) {
            return Ok(RetryOutcome::NotRetryable { state: job.state });
        }
        let now = now_ms();
        // A retried job is a new remote task: forget the old one's traces. The frozen body
        // (and its seed) stays: a retry asks for exactly the same video.
        tx.execute(
            "UPDATE jobs SET state = 'queued', updated_at = ?2, attempts = 0, next_attempt_at = ?2, \
             remote_task_id = NULL, remote_status = NULL, remote_created_at = NULL, \
             submit_started_at = NULL, submitted_at = NULL, cancel_requested = 0, \
             last_error_code = NULL, last_error_message = NULL, finished_at = NULL, \
             deadline_at = CASE WHEN deadline_at IS NULL THEN NULL ELSE ?2 + (deadline_at - created_at) END, \
             lease_token = lease_token + 1, lease_until = NULL, lease_owner = NULL \
             WHERE id = ?1 AND state = ?3",
            params![id, now, job.state.as_str()],
        )?;
        insert_event(&tx, &id, now, Some(job.state), JobState::Queued, Some("retried by user"))?;
        tx.commit()?;
        Ok(RetryOutcome::Requeued)
    })
    .await
    }

    async fn apply_transition(&self, t: Transition) -> Result<i64, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let next = t.apply(&tx, now_ms())?;
            tx.commit()?;
            Ok(next)
        })
        .await
    }

    async fn transition_many(
        &self,
        batch: Vec<Transition>,
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(batch.len());
            for t in batch {
                let r = match t.check() {
                    Ok(()) => match t.apply(&tx, now) {
                        Err(StoreError::Sqlite(e)) => return Err(StoreError::Sqlite(e)),
                        other => other,
                    },
                    Err(e) => Err(e),
                };
                out.push(r);
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn in_flight_tier(&self, model: &str, tier: Tier) -> Result<i64, StoreError> {
        let (model, tier) = (model.to_string(), tier);
        self.call(move |c| Ok(counters::in_flight_in_tx(c, &model, tier, None)?))
            .await
    }

    async fn in_flight_by_tier(&self) -> Result<Vec<(String, Tier, i64)>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare_cached(
                "SELECT model, service_tier, SUM(jobs) FROM in_flight_counts \
             GROUP BY model, service_tier HAVING SUM(jobs) <> 0",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn claim_due_columns(
        &self,
        state: JobState,
        owner: &str,
        lease_ms: i64,
        limit: u32,
        columns: String,
    ) -> Result<Vec<Job>, StoreError> {
        let owner = owner.to_string();
        self.call(move |c| {
        let now = now_ms();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let jobs = {
            let mut st = tx.prepare_cached(&format!(
                "UPDATE jobs SET lease_owner = ?1, lease_until = ?2 + ?3, next_attempt_at = ?2 + ?3, \
                 lease_token = lease_token + 1 \
                 WHERE id IN (SELECT id FROM jobs WHERE state = ?4 AND next_attempt_at <= ?2 \
                              ORDER BY next_attempt_at LIMIT ?5) \
                 RETURNING {columns}"
            ))?;
            let rows = st.query_map(
                params![owner, now, lease_ms, state.as_str(), limit],
                job_from_row,
            )?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(jobs)
    })
    .await
    }
}
