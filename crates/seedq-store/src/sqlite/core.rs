//! SQLite implementation of [`QueueStore`] (declared in `store/core.rs`; the PostgreSQL
//! implementation is `store/postgres/core.rs`).

use super::SqliteStore;
use crate::PatchValue;
use crate::core::QueueStore;
use crate::*;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

/// The jobs that hold a remote slot (count against a tier's in-flight limit). One place, so
/// the tier-aware claim and the in-flight queries agree.
/// A parked ambiguous submit holds no slot: seedq could not find it at Ark, and it must never
/// block the model's other jobs.
pub(crate) const IN_FLIGHT_PREDICATE: &str = "(state IN ('submitting', 'submitted') OR \
     (state = 'submit_unknown' AND COALESCE(last_error_code, '') <> 'parked'))";

/// The claim predicate (over candidate `q`) that serialises creates reconciliation could not
/// tell apart (worker/reconcile.rs). seedq tags every create with its own identity, except
/// when the user set a `safety_identifier`: then the echoed fields are the identity, so of the
/// jobs with the same model, `safety_identifier` and seed, at most one may be unresolved
/// (`submitting` or `submit_unknown`, parked included) and only the first queued is claimed.
pub(crate) const SERIALISED: &str = "(json_extract(q.request_json, '$.safety_identifier') IS NULL OR ( \
     NOT EXISTS (SELECT 1 FROM jobs o WHERE o.model = q.model \
         AND o.state IN ('submitting', 'submit_unknown') \
         AND json_extract(o.request_json, '$.safety_identifier') = json_extract(q.request_json, '$.safety_identifier') \
         AND json_extract(o.request_json, '$.seed') IS json_extract(q.request_json, '$.seed')) \
     AND q.id = (SELECT p.id FROM jobs p WHERE p.state = 'queued' AND p.model = q.model \
         AND p.next_attempt_at <= ?1 AND p.service_tier = q.service_tier \
         AND json_extract(p.request_json, '$.safety_identifier') = json_extract(q.request_json, '$.safety_identifier') \
         AND json_extract(p.request_json, '$.seed') IS json_extract(q.request_json, '$.seed') \
         ORDER BY p.priority DESC, p.id LIMIT 1)))";

pub(crate) fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = r.get(3)?;
    let tags: String = r.get(9)?;
    let corrupt = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    Ok(Job {
        id: JobId::from(r.get::<_, String>(0)?),
        created_at: r.get(1)?,
        updated_at: r.get(2)?,
        state: state
            .parse()
            .map_err(|e: crate::job::UnknownState| corrupt(3, e.to_string()))?,
        model: r.get(4)?,
        service_tier: r.get(5)?,
        priority: r.get(6)?,
        request_json: r.get(7)?,
        idempotency_key: r.get(8)?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt(9, e.to_string()))?,
        batch_id: r.get(10)?,
        shape: r.get(11)?,
        est_tokens: r.get(12)?,
        deadline_at: r.get(13)?,
        attempts: r.get(14)?,
        next_attempt_at: r.get(15)?,
        lease_owner: r.get(16)?,
        lease_until: r.get(17)?,
        lease_token: r.get(18)?,
        submit_started_at: r.get(19)?,
        submitted_at: r.get(20)?,
        remote_task_id: r.get(21)?,
        remote_status: r.get(22)?,
        remote_created_at: r.get(23)?,
        seed: r.get(24)?,
        poll_count: r.get(25)?,
        cancel_requested: r.get::<_, i64>(26)? != 0,
        callback_token: r.get(27)?,
        last_error_code: r.get(28)?,
        last_error_message: r.get(29)?,
        usage_tokens: r.get(30)?,
        video_url: r.get(31)?,
        last_frame_url: r.get(32)?,
        url_expires_at: r.get(33)?,
        finished_at: r.get(34)?,
        archive_key: r.get(35)?,
        archive_sha256: r.get(36)?,
        archive_size: r.get(37)?,
        archived_at: r.get(38)?,
        gen_ms: r.get(39)?,
    })
}

/// Appends the filters `seedq list` and the dashboard share (state, model, batch, tag; each
/// optional, combined with AND) to a `… WHERE 1 = 1` query, with their bound values, so both
/// listings match a job the same way.
pub(crate) fn push_job_filters(
    sql: &mut String,
    args: &mut Vec<Value>,
    state: Option<JobState>,
    model: Option<String>,
    batch: Option<String>,
    tag: Option<String>,
) {
    if let Some(s) = state {
        sql.push_str(" AND state = ?");
        args.push(s.as_str().to_string().into());
    }
    if let Some(m) = model {
        sql.push_str(" AND model = ?");
        args.push(m.into());
    }
    if let Some(b) = batch {
        sql.push_str(" AND batch_id = ?");
        args.push(b.into());
    }
    if let Some(t) = tag {
        sql.push_str(" AND EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = ?)");
        args.push(t.into());
    }
}

pub(crate) fn insert_event(
    conn: &Connection,
    id: &str,
    at: i64,
    from: Option<JobState>,
    to: JobState,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO job_events (job_id, at, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, at, from.map(JobState::as_str), to.as_str(), detail],
    )?;
    Ok(())
}

/// Inserts one new `queued` job, due at `next_attempt_at`; a duplicate idempotency key
/// inserts nothing (returns 0). A flex job's local deadline starts now when `deadline_now`
/// (a chain's held shots start theirs when released). `chain` is (chain id, shot number).
pub(crate) fn insert_job(
    conn: &Connection,
    j: &NewJob,
    now: i64,
    next_attempt_at: i64,
    deadline_now: bool,
    chain: Option<(&str, i64)>,
) -> Result<usize, StoreError> {
    let mut insert = conn.prepare_cached(INSERT_JOB_SQL)?;
    insert_job_with(
        &mut insert,
        conn,
        j,
        now,
        next_attempt_at,
        deadline_now,
        chain,
    )
}

/// The statement of [`insert_job`].
const INSERT_JOB_SQL: &str = "INSERT INTO jobs (id, created_at, updated_at, state, model, \
     service_tier, priority, request_json, idempotency_key, tags, batch_id, shape, est_tokens, \
     deadline_at, next_attempt_at, seed, callback_token, chain_id, shot) \
     VALUES (?1, ?2, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
             lower(hex(randomblob(16))), ?15, ?16) \
     ON CONFLICT (idempotency_key) DO NOTHING";

/// [`insert_job`] with its statement already prepared: a bulk enqueue looks it up once rather
/// than hashing the SQL text in the statement cache for every row.
fn insert_job_with(
    insert: &mut rusqlite::Statement<'_>,
    conn: &Connection,
    j: &NewJob,
    now: i64,
    next_attempt_at: i64,
    deadline_now: bool,
    chain: Option<(&str, i64)>,
) -> Result<usize, StoreError> {
    let tags = serde_json::to_string(&j.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let deadline = if j.flex && deadline_now {
        j.expires_after.map(|s| now + s * 1000)
    } else {
        None
    };
    // Embedded images go to their own table, once each; the row keeps references.
    let request_json = super::images::intern(conn, &j.request_json, now)?;
    Ok(insert.execute(params![
        j.id.as_str(),
        now,
        j.model,
        Tier::from_flex(j.flex),
        j.priority,
        request_json,
        j.key,
        tags,
        j.batch,
        j.shape,
        j.est_tokens,
        deadline,
        next_attempt_at,
        j.seed,
        chain.map(|c| c.0),
        chain.map(|c| c.1),
    ])?)
}

pub(crate) fn load_job(conn: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        [id],
        job_from_row,
    )
    .optional()
}

impl Transition {
    /// The compare-and-set inside an open transaction. Zero rows changed is a conflict.
    pub(crate) fn apply(self, conn: &Connection, now: i64) -> Result<i64, StoreError> {
        let Transition {
            id,
            from,
            token,
            to,
            patch,
            detail,
        } = self;
        let mut sql = String::from(
            "UPDATE jobs SET state = ?1, updated_at = ?2, lease_token = lease_token + 1",
        );
        let mut args: Vec<Value> = vec![to.as_str().to_string().into(), now.into()];
        for (col, val) in patch.0 {
            args.push(match val {
                PatchValue::Null => Value::Null,
                PatchValue::Int(i) => Value::Integer(i),
                PatchValue::Text(s) => Value::Text(s),
            });
            sql.push_str(&format!(", {col} = ?{}", args.len()));
        }
        if to.is_terminal() {
            sql.push_str(", finished_at = COALESCE(finished_at, ?2), lease_until = NULL");
        }
        args.push(id.as_str().to_string().into());
        sql.push_str(&format!(" WHERE id = ?{}", args.len()));
        args.push(from.as_str().to_string().into());
        sql.push_str(&format!(" AND state = ?{}", args.len()));
        args.push(token.into());
        sql.push_str(&format!(" AND lease_token = ?{}", args.len()));
        let n = conn.execute(&sql, rusqlite::params_from_iter(args))?;
        if n == 0 {
            return Err(StoreError::Conflict {
                id,
                expected: from,
                token,
            });
        }
        if from != to || detail.is_some() {
            insert_event(conn, id.as_str(), now, Some(from), to, detail.as_deref())?;
        }
        Ok(token + 1)
    }
}

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
                super::bulk_index::begin(&tx)?;
                let inserted = super::bulk_index::insert_rows(&tx, &jobs, now)?;
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
                super::bulk_index::finish(&tx, &rowids, now)?;
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
        self.call(move |c| Ok(super::counters::in_flight_in_tx(c, &model, tier, None)?))
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
        lease: std::time::Duration,
        limit: u32,
        columns: String,
    ) -> Result<Vec<Job>, StoreError> {
        let lease_ms = crate::span_ms(lease);
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
