//! PostgreSQL implementation of the queue's core methods (the SQLite one is
//! `store/sqlite/core.rs`).
//!
//! Same semantics as the SQLite bodies, line by line: the same guards, events and errors.
//! What differs is how a fleet of workers on several machines is kept apart, where SQLite
//! had one writer at a time (`BEGIN IMMEDIATE`):
//! - claims pick their rows `FOR UPDATE SKIP LOCKED`, so two workers never claim the same
//!   job and never wait for each other's rows;
//! - the submit claim counts a tier's in-flight tasks and claims under a transaction-scoped
//!   advisory lock per (model, tier), so the count and the claim are one atomic step across
//!   the fleet, and the in-flight cap holds however many workers claim at once;
//! - a read-then-write (cancel, retry) locks its row `FOR UPDATE` first.

use crate::core::QueueStore;
use crate::tier::Tier;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::PatchValue;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{PgStore, job_from_pg};
use crate::job::{JobId, JobState};
use crate::{
    CancelOutcome, EnqueueReport, JOB_COLUMNS, Job, JobEvent, ListFilter, NewJob, RetryOutcome,
    StatRow, StoreError, Transition, chain, images, now_ms,
};

/// Appends the same event to each of `ids`, in order, in one statement (SQLite's
/// `insert_event`, for many jobs at once).
///
/// # Errors
/// SQL errors.
pub(crate) async fn insert_events(
    c: &impl GenericClient,
    ids: &[&str],
    at: i64,
    from: Option<JobState>,
    to: JobState,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let st = c
        .prepare_cached(
            "INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
             SELECT u.id, $2, $3, $4, $5 FROM unnest($1::text[]) WITH ORDINALITY AS u(id, ord) \
             ORDER BY u.ord",
        )
        .await?;
    c.execute(
        &st,
        &[
            &ids,
            &at,
            &from.map(JobState::as_str),
            &to.as_str(),
            &detail,
        ],
    )
    .await?;
    Ok(())
}

/// One event row (SQLite's `insert_event`).
///
/// # Errors
/// SQL errors.
pub(crate) async fn insert_event(
    c: &impl GenericClient,
    id: &str,
    at: i64,
    from: Option<JobState>,
    to: JobState,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    let st = c
        .prepare_cached(
            "INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    c.execute(
        &st,
        &[&id, &at, &from.map(JobState::as_str), &to.as_str(), &detail],
    )
    .await?;
    Ok(())
}

/// One job to insert: the arguments of SQLite's `insert_job` besides the connection.
pub(crate) struct Insert<'a> {
    pub job: &'a NewJob,
    pub next_attempt_at: i64,
    /// A flex job's local deadline starts now (a chain's held shots start theirs later).
    pub deadline_now: bool,
    /// (chain id, shot number).
    pub chain: Option<(&'a str, i64)>,
}

/// Rows per INSERT statement: 10 000 jobs are two statements, not 10 000 round trips, and a
/// statement's arrays stay a few megabytes.
const INSERT_CHUNK: usize = 5000;

/// The multi-row insert: one row per element of the arrays, in array order; a duplicate
/// idempotency key (already stored, or earlier in the same arrays) inserts nothing. The
/// callback token is 128 random bits as 32 hex digits, like SQLite's
/// `lower(hex(randomblob(16)))` (gen_random_uuid draws from the server's strong random
/// source; a v4 UUID keeps 122 of its bits random).
const INSERT_JOBS: &str = "INSERT INTO jobs (id, created_at, updated_at, state, model, \
     service_tier, priority, request_json, idempotency_key, tags, batch_id, shape, est_tokens, \
     deadline_at, next_attempt_at, seed, callback_token, chain_id, shot) \
     SELECT u.id, $1::bigint, $1::bigint, 'queued', u.model, u.tier, u.priority, u.body, u.ikey, \
            u.tags, u.batch, u.shape, u.est, u.deadline, u.due, u.seed, \
            replace(gen_random_uuid()::text, '-', ''), u.chain, u.shot \
     FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], \
                 $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], \
                 $13::bigint[], $14::bigint[], $15::text[], $16::bigint[]) WITH ORDINALITY \
          AS u(id, model, tier, priority, body, ikey, tags, batch, shape, est, deadline, due, \
               seed, chain, shot, ord) \
     ORDER BY u.ord \
     ON CONFLICT (idempotency_key) DO NOTHING \
     RETURNING id";

/// The column arrays of one INSERT statement, built before the transaction (scanning bodies
/// for images and serialising tags is CPU work that must not hold row locks).
struct Columns<'a> {
    ids: Vec<&'a str>,
    models: Vec<&'a str>,
    tiers: Vec<&'static str>,
    priorities: Vec<i64>,
    bodies: Vec<Cow<'a, str>>,
    keys: Vec<Option<&'a str>>,
    tags: Vec<String>,
    batches: Vec<Option<&'a str>>,
    shapes: Vec<Option<&'a str>>,
    est_tokens: Vec<Option<i64>>,
    deadlines: Vec<Option<i64>>,
    due: Vec<i64>,
    seeds: Vec<Option<i64>>,
    chains: Vec<Option<&'a str>>,
    shots: Vec<Option<i64>>,
    /// (sha256, data URL) of the embedded images of these rows' bodies.
    images: Vec<(String, &'a str)>,
}

fn columns<'a>(rows: &[Insert<'a>], now: i64) -> Result<Columns<'a>, StoreError> {
    let n = rows.len();
    let mut c = Columns {
        ids: Vec::with_capacity(n),
        models: Vec::with_capacity(n),
        tiers: Vec::with_capacity(n),
        priorities: Vec::with_capacity(n),
        bodies: Vec::with_capacity(n),
        keys: Vec::with_capacity(n),
        tags: Vec::with_capacity(n),
        batches: Vec::with_capacity(n),
        shapes: Vec::with_capacity(n),
        est_tokens: Vec::with_capacity(n),
        deadlines: Vec::with_capacity(n),
        due: Vec::with_capacity(n),
        seeds: Vec::with_capacity(n),
        chains: Vec::with_capacity(n),
        shots: Vec::with_capacity(n),
        images: Vec::new(),
    };
    for r in rows {
        let j: &'a NewJob = r.job;
        // Embedded images go to their own table, once each; the row keeps references.
        let (body, imgs) = images::scan(&j.request_json);
        c.images.extend(imgs);
        c.ids.push(j.id.as_str());
        c.models.push(&j.model);
        c.tiers.push(Tier::from_flex(j.flex).as_str());
        c.priorities.push(j.priority);
        c.bodies.push(body);
        c.keys.push(j.key.as_deref());
        c.tags
            .push(serde_json::to_string(&j.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        c.batches.push(j.batch.as_deref());
        c.shapes.push(j.shape.as_deref());
        c.est_tokens.push(j.est_tokens);
        c.deadlines.push(if j.flex && r.deadline_now {
            j.expires_after.map(|s| now + s * 1000)
        } else {
            None
        });
        c.due.push(r.next_attempt_at);
        c.seeds.push(j.seed);
        c.chains.push(r.chain.map(|x| x.0));
        c.shots.push(r.chain.map(|x| x.1));
    }
    Ok(c)
}

/// Writes prepared rows (and their images); returns the ids actually inserted.
async fn insert_columns(
    c: &impl GenericClient,
    chunks: &[Columns<'_>],
    now: i64,
) -> Result<HashSet<String>, StoreError> {
    let st = c.prepare_cached(INSERT_JOBS).await?;
    let mut inserted = HashSet::new();
    for k in chunks {
        super::images::insert(c, &k.images, now).await?;
        let bodies: Vec<&str> = k.bodies.iter().map(AsRef::as_ref).collect();
        let rows = c
            .query(
                &st,
                &[
                    &now,
                    &k.ids,
                    &k.models,
                    &k.tiers,
                    &k.priorities,
                    &bodies,
                    &k.keys,
                    &k.tags,
                    &k.batches,
                    &k.shapes,
                    &k.est_tokens,
                    &k.deadlines,
                    &k.due,
                    &k.seeds,
                    &k.chains,
                    &k.shots,
                ],
            )
            .await?;
        for r in rows {
            inserted.insert(r.try_get(0)?);
        }
    }
    Ok(inserted)
}

/// Inserts new `queued` jobs (SQLite's `insert_job`, for many rows in few statements);
/// returns the ids inserted: a job whose idempotency key exists is not.
///
/// # Errors
/// SQL errors.
pub(crate) async fn insert_jobs(
    c: &impl GenericClient,
    rows: &[Insert<'_>],
    now: i64,
) -> Result<HashSet<String>, StoreError> {
    let chunks = rows
        .chunks(INSERT_CHUNK)
        .map(|r| columns(r, now))
        .collect::<Result<Vec<_>, _>>()?;
    insert_columns(c, &chunks, now).await
}

/// From this many jobs on, an enqueue streams its rows with `COPY` (see [`enqueue_copy`]);
/// below it the few multi-row statements are cheaper than creating the staging table.
const COPY_MIN: usize = 1000;

/// The staging table of [`enqueue_copy`]: the columns of [`INSERT_JOBS`]'s arrays that an
/// enqueue sets, plus the row's position. Temporary and dropped at commit, so it is private to
/// the transaction and leaves nothing behind.
const STAGE_TABLE: &str = "CREATE TEMP TABLE enqueue_stage (ord BIGINT NOT NULL, id TEXT NOT NULL, \
     model TEXT NOT NULL, tier TEXT NOT NULL, priority BIGINT NOT NULL, body TEXT NOT NULL, \
     ikey TEXT, tags TEXT NOT NULL, batch TEXT, shape TEXT, est BIGINT, deadline BIGINT, \
     seed BIGINT) ON COMMIT DROP";

/// [`INSERT_JOBS`] from the staging table, and the `enqueued` event of each row it inserted in
/// the same statement, in file order as [`insert_events`] writes them. A job's event is
/// written only when its row was (a skipped duplicate key gets none), and the events' foreign
/// key is checked at the end of the statement, when the jobs exist.
const INSERT_STAGED: &str = "WITH ins AS ( \
       INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, priority, \
         request_json, idempotency_key, tags, batch_id, shape, est_tokens, deadline_at, \
         next_attempt_at, seed, callback_token, chain_id, shot) \
       SELECT s.id, $1::bigint, $1::bigint, 'queued', s.model, s.tier, s.priority, s.body, \
              s.ikey, s.tags, s.batch, s.shape, s.est, s.deadline, $1::bigint, s.seed, \
              replace(gen_random_uuid()::text, '-', ''), NULL, NULL \
       FROM enqueue_stage AS s ORDER BY s.ord \
       ON CONFLICT (idempotency_key) DO NOTHING \
       RETURNING id), \
     ev AS ( \
       INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
       SELECT s.id, $1::bigint, NULL, 'queued', 'enqueued' \
       FROM enqueue_stage AS s JOIN ins ON ins.id = s.id ORDER BY s.ord) \
     SELECT id FROM ins";

/// Rows and jobs inserted by the `COPY` path: the same effects as the multi-row statements
/// (rows, images, events, skipped keys), with the rows streamed to the server in PostgreSQL's
/// binary `COPY` format into a staging table and moved into `jobs` with one statement. The
/// rows' text never passes through SQL literals or arrays, so no value needs escaping.
async fn enqueue_copy(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: &[NewJob],
    now: i64,
) -> Result<HashSet<String>, StoreError> {
    use futures::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;

    tx.batch_execute(STAGE_TABLE).await?;
    let sink = tx
        .copy_in("COPY enqueue_stage FROM STDIN (FORMAT binary)")
        .await?;
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let mut imgs: Vec<(String, &str)> = Vec::new();
    for (ord, j) in (0_i64..).zip(jobs) {
        // Embedded images go to their own table, once each; the row keeps references.
        let (body, found) = images::scan(&j.request_json);
        imgs.extend(found);
        let tags =
            serde_json::to_string(&j.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let deadline = if j.flex {
            j.expires_after.map(|s| now + s * 1000)
        } else {
            None
        };
        let tier = Tier::from_flex(j.flex);
        let body: &str = &body;
        writer
            .as_mut()
            .write(&[
                &ord,
                &j.id.as_str(),
                &j.model,
                &tier,
                &j.priority,
                &body,
                &j.key,
                &tags,
                &j.batch,
                &j.shape,
                &j.est_tokens,
                &deadline,
                &j.seed,
            ])
            .await?;
    }
    writer.finish().await?;
    super::images::insert(tx, &imgs, now).await?;
    let mut inserted = HashSet::with_capacity(jobs.len());
    for r in tx.query(INSERT_STAGED, &[&now]).await? {
        inserted.insert(r.try_get(0)?);
    }
    Ok(inserted)
}

/// The enqueue's report: the jobs inserted, and for each skipped one the id of the job that
/// holds its key.
async fn report_of(
    tx: &deadpool_postgres::Transaction<'_>,
    jobs: &[NewJob],
    inserted: &HashSet<String>,
) -> Result<EnqueueReport, StoreError> {
    let skipped_keys: Vec<&str> = jobs
        .iter()
        .filter(|j| !inserted.contains(j.id.as_str()))
        .filter_map(|j| j.key.as_deref())
        .collect();
    let mut existing: HashMap<String, String> = HashMap::new();
    if !skipped_keys.is_empty() {
        for r in tx
            .query(
                "SELECT idempotency_key, id FROM jobs WHERE idempotency_key = ANY($1::text[])",
                &[&skipped_keys],
            )
            .await?
        {
            existing.insert(r.try_get(0)?, r.try_get(1)?);
        }
    }
    let mut report = EnqueueReport::default();
    for j in jobs {
        if inserted.contains(j.id.as_str()) {
            report.inserted.push(j.id.clone());
        } else if let Some(key) = &j.key {
            let id = existing.get(key).ok_or_else(|| {
                StoreError::Corrupt(format!("idempotency key {key} vanished during enqueue"))
            })?;
            report.skipped.push((key.clone(), JobId::from(id.clone())));
        }
    }
    Ok(report)
}

/// The filters `seedq list` and the dashboard share (SQLite's `push_job_filters`), with
/// `$n` parameters numbered after those already in `args`; every value is text.
pub(crate) fn push_job_filters(
    sql: &mut String,
    args: &mut Vec<String>,
    state: Option<JobState>,
    model: Option<String>,
    batch: Option<String>,
    tag: Option<String>,
) {
    if let Some(s) = state {
        args.push(s.as_str().to_string());
        sql.push_str(&format!(" AND state = ${}", args.len()));
    }
    if let Some(m) = model {
        args.push(m);
        sql.push_str(&format!(" AND model = ${}", args.len()));
    }
    if let Some(b) = batch {
        args.push(b);
        sql.push_str(&format!(" AND batch_id = ${}", args.len()));
    }
    if let Some(t) = tag {
        args.push(t);
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(jobs.tags::jsonb) AS g(value) \
             WHERE g.value = ${})",
            args.len()
        ));
    }
}

/// A job, its row locked until the transaction ends (SQLite's `load_job` under
/// `BEGIN IMMEDIATE`).
async fn load_for_update(c: &impl GenericClient, id: &str) -> Result<Option<Job>, StoreError> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"
        ))
        .await?;
    c.query_opt(&st, &[&id])
        .await?
        .as_ref()
        .map(job_from_pg)
        .transpose()
}

/// A patch value as a PostgreSQL parameter; `None` for NULL, which is written into the SQL
/// as the literal (a NULL parameter would need the column's type).
fn bind(v: PatchValue) -> Option<Box<dyn ToSql + Sync + Send>> {
    match v {
        PatchValue::Null => None,
        PatchValue::Int(i) => Some(Box::new(i)),
        PatchValue::Text(s) => Some(Box::new(s)),
    }
}

/// The compare-and-set of a checked [`Transition`] inside an open transaction (SQLite's
/// `Transition::apply`). Zero rows changed is a conflict.
/// A transition as one statement: its SQL and parameters, and what a miss reports.
struct Built {
    sql: String,
    args: Vec<Box<dyn ToSql + Sync + Send>>,
    id: JobId,
    from: JobState,
    token: i64,
}

impl Built {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }

    /// The new lease token, or the conflict when no row had the expected state and token.
    fn outcome(self, changed: u64) -> Result<i64, StoreError> {
        if changed == 0 {
            return Err(StoreError::Conflict {
                id: self.id,
                expected: self.from,
                token: self.token,
            });
        }
        Ok(self.token + 1)
    }
}

fn build(t: Transition, now: i64) -> Built {
    let Transition {
        id,
        from,
        token,
        to,
        patch,
        detail,
    } = t;
    let mut sql =
        String::from("UPDATE jobs SET state = $1, updated_at = $2, lease_token = lease_token + 1");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> =
        vec![Box::new(to.as_str().to_string()), Box::new(now)];
    for (col, val) in patch.0 {
        match bind(val) {
            Some(v) => {
                args.push(v);
                sql.push_str(&format!(", {col} = ${}", args.len()));
            }
            None => sql.push_str(&format!(", {col} = NULL")),
        }
    }
    if to.is_terminal() {
        sql.push_str(", finished_at = COALESCE(finished_at, $2), lease_until = NULL");
    }
    args.push(Box::new(id.as_str().to_string()));
    sql.push_str(&format!(" WHERE id = ${}", args.len()));
    args.push(Box::new(from.as_str().to_string()));
    sql.push_str(&format!(" AND state = ${}", args.len()));
    args.push(Box::new(token));
    sql.push_str(&format!(" AND lease_token = ${}", args.len()));
    // The event goes in the same statement as the change, so a transition is one round trip
    // and the counter rows its triggers update (store/counters.rs, ui_batch_counts) are locked
    // only while it runs, not for a second statement's round trip as well: every job of a
    // batch moves the same few counter rows, and a fleet's transitions queued behind each
    // other's locks (a 1 000 000-job flex batch, docs/performance-fleet.md).
    // The event's row count is the update's: it inserts one row per job changed.
    if from != to || detail.is_some() {
        let from_at = args.len() - 1;
        args.push(Box::new(detail));
        sql = format!(
            "WITH u AS ({sql} RETURNING id) \
             INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
             SELECT id, $2, ${from_at}, $1, ${} FROM u",
            args.len()
        );
    }
    Built {
        sql,
        args,
        id,
        from,
        token,
    }
}

async fn apply(c: &impl GenericClient, t: Transition, now: i64) -> Result<i64, StoreError> {
    let b = build(t, now);
    let st = c.prepare_cached(&b.sql).await?;
    let n = c.execute(&st, &b.params()).await?;
    b.outcome(n)
}

/// SQLite's `SERIALISED` in PostgreSQL's JSON dialect (`$1` is now). `->>` is
/// `json_extract` for a string; the seed compares as jsonb (so 1 and 1.0 are equal, as in
/// SQLite) with JSON null and a missing seed both NULL, as `json_extract` has them.
pub(crate) const SERIALISED_PG: &str = "((q.request_json::jsonb ->> 'safety_identifier') IS NULL OR ( \
     NOT EXISTS (SELECT 1 FROM jobs o WHERE o.model = q.model \
         AND o.state IN ('submitting', 'submit_unknown') \
         AND (o.request_json::jsonb ->> 'safety_identifier') = (q.request_json::jsonb ->> 'safety_identifier') \
         AND NULLIF(o.request_json::jsonb -> 'seed', 'null'::jsonb) \
             IS NOT DISTINCT FROM NULLIF(q.request_json::jsonb -> 'seed', 'null'::jsonb)) \
     AND q.id = (SELECT p.id FROM jobs p WHERE p.state = 'queued' AND p.model = q.model \
         AND p.next_attempt_at <= $1 AND p.service_tier = q.service_tier \
         AND (p.request_json::jsonb ->> 'safety_identifier') = (q.request_json::jsonb ->> 'safety_identifier') \
         AND NULLIF(p.request_json::jsonb -> 'seed', 'null'::jsonb) \
             IS NOT DISTINCT FROM NULLIF(q.request_json::jsonb -> 'seed', 'null'::jsonb) \
         ORDER BY p.priority DESC, p.id LIMIT 1)))";

impl QueueStore for PgStore {
    /// The version recorded in the database.
    ///
    /// # Errors
    /// The database cannot be read.
    async fn schema_version(&self) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        Ok(
            c.query_one("SELECT COALESCE(MAX(version), 0) FROM seedq_schema", &[])
                .await?
                .try_get(0)?,
        )
    }

    /// [`crate::Store::enqueue`]: one transaction, a few multi-row statements, or for many
    /// jobs a `COPY` and one statement.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<EnqueueReport, StoreError> {
        let now = now_ms();
        if jobs.len() >= COPY_MIN {
            let jobs = &jobs;
            return self
                .retry(|| async move {
                    let mut c = self.conn().await?;
                    let tx = c.transaction().await?;
                    let inserted = enqueue_copy(&tx, jobs, now).await?;
                    let report = report_of(&tx, jobs, &inserted).await?;
                    tx.commit().await?;
                    Ok(report)
                })
                .await;
        }
        let rows: Vec<Insert<'_>> = jobs
            .iter()
            .map(|job| Insert {
                job,
                next_attempt_at: now,
                deadline_now: true,
                chain: None,
            })
            .collect();
        let chunks = rows
            .chunks(INSERT_CHUNK)
            .map(|r| columns(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        let (chunks, jobs) = (&chunks, &jobs);
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let inserted = insert_columns(&tx, chunks, now).await?;
            let new_ids: Vec<&str> = jobs
                .iter()
                .map(|j| j.id.as_str())
                .filter(|id| inserted.contains(*id))
                .collect();
            for ids in new_ids.chunks(INSERT_CHUNK) {
                insert_events(&tx, ids, now, None, JobState::Queued, Some("enqueued")).await?;
            }
            let report = report_of(&tx, jobs, &inserted).await?;
            tx.commit().await?;
            Ok(report)
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .await?;
        c.query_opt(&st, &[&id])
            .await?
            .as_ref()
            .map(job_from_pg)
            .transpose()
    }

    async fn job_by_remote(&self, remote: &str) -> Result<Option<Job>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE remote_task_id = $1"
            ))
            .await?;
        c.query_opt(&st, &[&remote])
            .await?
            .as_ref()
            .map(job_from_pg)
            .transpose()
    }

    async fn events(&self, id: &str) -> Result<Vec<JobEvent>, StoreError> {
        let c = self.conn().await?;
        let rows = c
    .query(
        "SELECT at, from_state, to_state, detail FROM job_events WHERE job_id = $1 ORDER BY id",
        &[&id],
    )
    .await?;
        rows.iter()
            .map(|r| {
                Ok(JobEvent {
                    at: r.try_get(0)?,
                    from_state: r.try_get(1)?,
                    to_state: r.try_get(2)?,
                    detail: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// [`crate::Store::list`] and `list_lean` (`columns` is the column list).
    async fn list_columns(&self, f: ListFilter, columns: String) -> Result<Vec<Job>, StoreError> {
        let columns: &str = &columns;

        let mut sql = format!("SELECT {columns} FROM jobs WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        push_job_filters(&mut sql, &mut args, f.state, f.model, f.batch, f.tag);
        sql.push_str(" ORDER BY id DESC");
        // Bound, not written in: the statement cache keeps one entry per filter shape, not one
        // per limit a user ever asked for.
        let limit = f.limit.map(i64::from);
        if limit.is_some() {
            sql.push_str(&format!(" LIMIT ${}", args.len() + 1));
        }
        let mut params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        if let Some(l) = &limit {
            params.push(l);
        }
        let c = self.conn().await?;
        let st = c.prepare_cached(&sql).await?;
        c.query(&st, &params)
            .await?
            .iter()
            .map(job_from_pg)
            .collect()
    }

    async fn stats(&self) -> Result<Vec<StatRow>, StoreError> {
        let c = self.conn().await?;
        // SUM(bigint) is NUMERIC in PostgreSQL; the cast brings it back to i64. COLLATE "C"
        // sorts bytewise, as SQLite does, whatever the database's collation.
        let rows = c
            .query(
                // The counts the triggers keep, a key's stripes summed
                // (migrations/postgres/0018_job_counts.sql), not a scan of the jobs.
                "SELECT state, model, SUM(jobs)::BIGINT, SUM(est_tokens)::BIGINT, \
         SUM(usage_tokens)::BIGINT FROM job_counts GROUP BY state, model \
         HAVING SUM(jobs) > 0 ORDER BY model COLLATE \"C\", state COLLATE \"C\"",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                Ok(StatRow {
                    state: s.parse().map_err(|e: crate::job::UnknownState| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    model: r.try_get(1)?,
                    jobs: r.try_get(2)?,
                    est_tokens: r.try_get(3)?,
                    usage_tokens: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let Some(job) = load_for_update(&tx, id).await? else {
                return Ok(CancelOutcome::NotFound);
            };
            let now = now_ms();
            let out = match job.state {
                JobState::Queued => {
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', updated_at = $2, finished_at = $2 \
                 WHERE id = $1 AND state = 'queued'",
                        &[&id, &now],
                    )
                    .await?;
                    insert_event(
                        &tx,
                        id,
                        now,
                        Some(job.state),
                        JobState::Cancelled,
                        Some("cancelled by user"),
                    )
                    .await?;
                    CancelOutcome::Cancelled
                }
                // A parked ambiguous submit has no remote id to DELETE: the operator decides it
                // is over. (If a task did start, it is not tracked any more.)
                JobState::SubmitUnknown if job.last_error_code.as_deref() == Some("parked") => {
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', updated_at = $2, finished_at = $2, \
                 lease_token = lease_token + 1 WHERE id = $1 AND state = 'submit_unknown'",
                        &[&id, &now],
                    )
                    .await?;
                    insert_event(
                        &tx,
                        id,
                        now,
                        Some(job.state),
                        JobState::Cancelled,
                        Some("parked submit cancelled by user"),
                    )
                    .await?;
                    CancelOutcome::Cancelled
                }
                s if s.is_remote() => {
                    tx.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_at = $2, next_attempt_at = $2 \
                 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
                    insert_event(&tx, id, now, Some(s), s, Some("cancel requested")).await?;
                    CancelOutcome::Requested
                }
                s => CancelOutcome::AlreadyFinal { state: s },
            };
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    async fn retry(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let Some(job) = load_for_update(&tx, id).await? else {
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
        "UPDATE jobs SET state = 'queued', updated_at = $2, attempts = 0, next_attempt_at = $2, \
         remote_task_id = NULL, remote_status = NULL, remote_created_at = NULL, \
         submit_started_at = NULL, submitted_at = NULL, cancel_requested = 0, \
         last_error_code = NULL, last_error_message = NULL, finished_at = NULL, \
         deadline_at = CASE WHEN deadline_at IS NULL THEN NULL \
                            ELSE $2::bigint + (deadline_at - created_at) END, \
         lease_token = lease_token + 1, lease_until = NULL, lease_owner = NULL \
         WHERE id = $1 AND state = $3",
        &[&id, &now, &job.state.as_str()],
    )
    .await?;
            insert_event(
                &tx,
                id,
                now,
                Some(job.state),
                JobState::Queued,
                Some("retried by user"),
            )
            .await?;
            tx.commit().await?;
            Ok(RetryOutcome::Requeued)
        })
        .await
    }

    /// [`crate::Store::transition`] (the caller has checked `t`).
    async fn apply_transition(&self, t: Transition) -> Result<i64, StoreError> {
        let t = &t;
        // `apply` is one statement, atomic on its own: no transaction around it, so the commit
        // comes with the statement's answer instead of a round trip later.
        self.retry(|| async move {
            let c = self.conn().await?;
            apply(&c, t.clone(), now_ms()).await
        })
        .await
    }

    /// [`crate::Store::transition_many`]: one transaction for the batch; each item
    /// succeeds or conflicts on its own, and only a database error undoes them all.
    async fn transition_many(
        &self,
        batch: Vec<Transition>,
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        let batch = &batch;
        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // Pipelined: the statements are prepared first (a cache hit after the first
            // batch), then all sent at once and answered in order, so the transaction holds its
            // rows (the jobs', and the counter rows their triggers move) for about one round
            // trip rather than one per job. A batched poll of 50 jobs held the counters' stripe
            // for 50 round trips, and every transition on that stripe waited
            // (docs/performance-fleet.md). In order: a job twice in a batch is changed twice in
            // the order given, as before.
            let built: Vec<Result<Built, StoreError>> = batch
                .iter()
                .map(|t| t.check().map(|()| build(t.clone(), now)))
                .collect();
            let mut statements = Vec::with_capacity(built.len());
            for b in built.iter().flatten() {
                statements.push(tx.prepare_cached(&b.sql).await?);
            }
            let client = &tx;
            let params: Vec<Vec<&(dyn ToSql + Sync)>> =
                built.iter().flatten().map(Built::params).collect();
            let changed = futures::future::join_all(
                statements
                    .iter()
                    .zip(&params)
                    .map(|(st, p)| async move { client.execute(st, p).await }),
            )
            .await;
            let mut changed = changed.into_iter();
            let mut out = Vec::with_capacity(batch.len());
            for b in built {
                out.push(match b {
                    Ok(b) => match changed.next() {
                        Some(Ok(n)) => b.outcome(n),
                        Some(Err(e)) => return Err(e.into()),
                        None => {
                            return Err(StoreError::Corrupt(
                                "a pipelined transition went unanswered".into(),
                            ));
                        }
                    },
                    Err(e) => Err(e),
                });
            }
            tx.commit().await?;
            Ok(out)
        })
        .await
    }

    async fn in_flight_tier(&self, model: &str, tier: Tier) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        super::counters::in_flight_in_tx(&c, model, tier, None).await
    }

    async fn in_flight_by_tier(&self) -> Result<Vec<(String, Tier, i64)>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT model, service_tier, SUM(jobs)::BIGINT FROM in_flight_counts \
         GROUP BY model, service_tier HAVING SUM(jobs) <> 0",
            )
            .await?;
        c.query(&st, &[])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// [`crate::Store::claim_due`] and `claim_due_lean` (`columns` is the column list).
    /// One statement: the due rows are locked `FOR UPDATE SKIP LOCKED`, so pollers on several
    /// workers each take different jobs and none waits for another.
    async fn claim_due_columns(
        &self,
        state: JobState,
        owner: &str,
        lease: std::time::Duration,
        limit: u32,
        columns: String,
    ) -> Result<Vec<Job>, StoreError> {
        let lease_ms = crate::span_ms(lease);
        let columns: &str = &columns;

        let now = now_ms();
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                "UPDATE jobs SET lease_owner = $1, lease_until = $2::bigint + $3::bigint, \
         next_attempt_at = $2::bigint + $3::bigint, lease_token = lease_token + 1 \
         WHERE id IN (SELECT id FROM jobs WHERE state = $4 AND next_attempt_at <= $2 \
                      ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED) \
         RETURNING {columns}"
            ))
            .await?;
        c.query(
            &st,
            &[&owner, &now, &lease_ms, &state.as_str(), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(job_from_pg)
        .collect()
    }
}
