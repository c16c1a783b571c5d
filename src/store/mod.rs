//! The durable job store: the only place SQL lives.
//!
//! One narrow interface (enqueue, claim, typed state-change verbs, query) over one SQLite
//! connection thread (`conn`). The stages change a job only through the verbs in `verbs.rs`
//! (`mark_submitted`, `record_polls`, `mark_archived`, …); the generic `transition`/`update`
//! below them are private here. Every state change is a guarded compare-and-set on
//! `(id, state, lease_token)` that also appends a `job_events` row in the same transaction;
//! zero rows changed is a [`StoreError::Conflict`], never ignored. A PostgreSQL backend (`FOR UPDATE SKIP LOCKED`)
//! could sit behind the same methods.

pub mod api;
mod archive;
pub mod budget;
mod bulk;
mod bulk_index;
mod chain;
mod conn;
pub(crate) mod counters;
pub(crate) mod fleet;
mod images;
pub mod migrate;
pub mod ops;
mod pause;
pub(crate) mod pg;
mod reads;
mod tier_sql;
mod ui;
mod verbs;
#[cfg(test)]
mod verbs_tests;
pub mod webhooks;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;

use crate::job::{JobId, JobState};
use crate::tier::Tier;

pub use api::{ApiEnqueued, ApiJob, ApiKey, ApiListFilter, ApiRow};
pub use archive::{ArchiveClaim, ArchiveStats, RESULT_EXPIRED};
pub use bulk::{BatchCancel, BatchCell, BatchMeta, BatchRetry, CostRow, Failure, QueuedJob};
pub use chain::{Chain, ChainState, ChainWrite, HELD, Shot, Stitched};
pub use conn::BUSY_TIMEOUT;
pub use counters::CounterDrift;
pub use fleet::{FleetLimits, LeaderRow, WorkerRow};
pub use ops::MIN_ROOM;
pub use pause::{PauseKind, Paused};
/// The PostgreSQL schema version this binary expects (`migrate::latest` is SQLite's).
pub use pg::migrate::latest as postgres_latest;
pub use pg::redact_url;
pub use ui::{UiCell, UiFilter, UiWait};
pub use verbs::{
    Accepted, Adopted, ArchiveRecord, ErrorNote, LastError, PARKED, PollOutcome, Polled,
    RemoteResult, Requeue,
};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the job store {path} does not exist (check --db or store.path); only commands that add work create it"
    )]
    Missing { path: PathBuf },
    #[error("the database file {path} is no longer the one this process opened: {what}")]
    Replaced { path: PathBuf, what: String },
    #[error("cannot open the database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migration {name} failed")]
    Migration {
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database has schema version {found}, newer than this seedq supports ({supported})"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("job {id} changed under us: expected state {expected} with lease token {token}")]
    Conflict {
        id: JobId,
        expected: JobState,
        token: i64,
    },
    #[error("illegal transition {from} -> {to} for job {id}")]
    IllegalTransition {
        id: JobId,
        from: JobState,
        to: JobState,
    },
    #[error("cannot start the database thread")]
    Thread(#[source] std::io::Error),
    #[error("the database thread has stopped")]
    Closed,
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Pool(String),
    #[error("not implemented on PostgreSQL: {0}")]
    Unsupported(&'static str),
    #[error(
        "no room for the job store: {free} bytes free on the file system of {path} (at least {need} needed)"
    )]
    NoRoom { path: PathBuf, free: u64, need: u64 },
}

impl StoreError {
    /// Why the store as a whole cannot take writes now, when this error says so: a full disk,
    /// a read-only database, a server that refuses or dropped the connection. Such an outage
    /// passes by itself (space is freed, the server comes back), so a stage that meets one
    /// waits and retries instead of failing a job; `None` for everything else.
    pub fn outage(&self) -> Option<String> {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::NoRoom { .. } | StoreError::Pool(_) => Some(self.to_string()),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, msg)) => {
                let what = match e.code {
                    C::DiskFull => "the disk under the database is full",
                    C::SystemIoFailure => "disk I/O error on the database",
                    C::ReadOnly => "the database is read-only",
                    C::CannotOpen => "the database cannot be opened",
                    _ => return None,
                };
                Some(match msg {
                    Some(m) => format!("{what} ({m})"),
                    None => what.to_string(),
                })
            }
            StoreError::Postgres(e) => {
                let Some(code) = e.code() else {
                    // No SQLSTATE: the socket failed or closed under us.
                    return Some(format!("PostgreSQL connection: {e}"));
                };
                let c = code.code();
                // 08: connection exceptions; 53: insufficient resources (disk full, too many
                // connections, out of memory); 57P: the server shutting down or starting;
                // 25006: a read-only transaction (a standby, default_transaction_read_only).
                let outage = c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57P")
                    || c == "25006";
                outage.then(|| {
                    let detail = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string());
                    format!("PostgreSQL refuses writes ({c}): {detail}")
                })
            }
            _ => None,
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A job as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: JobId,
    pub created_at: i64,
    pub updated_at: i64,
    pub state: JobState,
    pub model: String,
    pub service_tier: Tier,
    pub priority: i64,
    pub request_json: String,
    pub idempotency_key: Option<String>,
    pub tags: Vec<String>,
    pub batch_id: Option<String>,
    pub shape: Option<String>,
    pub est_tokens: Option<i64>,
    pub deadline_at: Option<i64>,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub lease_token: i64,
    pub submit_started_at: Option<i64>,
    pub submitted_at: Option<i64>,
    pub remote_task_id: Option<String>,
    pub remote_status: Option<String>,
    pub remote_created_at: Option<i64>,
    pub seed: Option<i64>,
    pub poll_count: i64,
    pub cancel_requested: bool,
    #[serde(skip)]
    pub callback_token: Option<String>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub usage_tokens: Option<i64>,
    pub video_url: Option<String>,
    pub last_frame_url: Option<String>,
    pub url_expires_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub archive_key: Option<String>,
    pub archive_sha256: Option<String>,
    pub archive_size: Option<i64>,
    pub archived_at: Option<i64>,
    /// Estimated remote generation time (ms), set on success.
    pub gen_ms: Option<i64>,
}

impl Job {
    /// True for flex-tier jobs.
    pub fn is_flex(&self) -> bool {
        self.service_tier.is_flex()
    }
}

/// Which resolutions a tier claim takes (see [`Store::claim_for_submit_tier`]).
#[derive(Clone, Debug)]
pub enum ResolutionScope {
    All,
    Only(String, u32),
    Except(Vec<String>),
}

/// The jobs that hold a remote slot (count against a tier's in-flight limit). One place, so
/// the tier-aware claim and the in-flight queries agree.
/// A parked ambiguous submit holds no slot: seedq could not find it at Ark, and it must never
/// block the model's other jobs.
const IN_FLIGHT_PREDICATE: &str = "(state IN ('submitting', 'submitted') OR \
     (state = 'submit_unknown' AND COALESCE(last_error_code, '') <> 'parked'))";
/// The claim predicate (over candidate `q`) that serialises creates reconciliation could not
/// tell apart (worker/reconcile.rs). seedq tags every create with its own identity, except
/// when the user set a `safety_identifier`: then the echoed fields are the identity, so of the
/// jobs with the same model, `safety_identifier` and seed, at most one may be unresolved
/// (`submitting` or `submit_unknown`, parked included) and only the first queued is claimed.
const SERIALISED: &str = "(json_extract(q.request_json, '$.safety_identifier') IS NULL OR ( \
     NOT EXISTS (SELECT 1 FROM jobs o WHERE o.model = q.model \
         AND o.state IN ('submitting', 'submit_unknown') \
         AND json_extract(o.request_json, '$.safety_identifier') = json_extract(q.request_json, '$.safety_identifier') \
         AND json_extract(o.request_json, '$.seed') IS json_extract(q.request_json, '$.seed')) \
     AND q.id = (SELECT p.id FROM jobs p WHERE p.state = 'queued' AND p.model = q.model \
         AND p.next_attempt_at <= ?1 AND p.service_tier = q.service_tier \
         AND json_extract(p.request_json, '$.safety_identifier') = json_extract(q.request_json, '$.safety_identifier') \
         AND json_extract(p.request_json, '$.seed') IS json_extract(q.request_json, '$.seed') \
         ORDER BY p.priority DESC, p.id LIMIT 1)))";

/// The claim predicate (over candidate `q`) that holds back a paused model's or batch's queued
/// jobs (`seedq pause`, migrations/0009_pause.sql); jobs already at Ark are not affected.
const NOT_PAUSED: &str = "NOT EXISTS (SELECT 1 FROM paused z WHERE \
     (z.kind = 'model' AND z.name = q.model) OR (z.kind = 'batch' AND z.name = q.batch_id))";

pub(crate) const JOB_COLUMNS: &str = "id, created_at, updated_at, state, model, service_tier, priority, \
    request_json, idempotency_key, tags, batch_id, shape, est_tokens, deadline_at, attempts, \
    next_attempt_at, lease_owner, lease_until, lease_token, submit_started_at, submitted_at, \
    remote_task_id, remote_status, remote_created_at, seed, poll_count, cancel_requested, \
    callback_token, last_error_code, last_error_message, usage_tokens, video_url, \
    last_frame_url, url_expires_at, finished_at, archive_key, archive_sha256, archive_size, \
    archived_at, gen_ms";

/// [`JOB_COLUMNS`] with an empty `request_json`: a path that needs no body reads none.
fn lean_columns() -> String {
    JOB_COLUMNS.replacen("request_json", "'' AS request_json", 1)
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
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

/// One row of the audit trail.
#[derive(Clone, Debug, Serialize)]
pub struct JobEvent {
    pub at: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    pub detail: Option<String>,
}

/// A job to insert.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: JobId,
    pub model: String,
    pub flex: bool,
    pub priority: i64,
    pub request_json: String,
    pub key: Option<String>,
    pub tags: Vec<String>,
    pub batch: Option<String>,
    pub shape: Option<String>,
    pub est_tokens: Option<i64>,
    /// Seconds after enqueue when a flex job that has not started expires locally.
    pub expires_after: Option<i64>,
    pub seed: Option<i64>,
}

#[cfg(test)]
impl NewJob {
    /// A plain job of model `m` on the default tier (no key, tags, batch, shape, tokens or
    /// seed), for the store's tests: each test overrides only the fields it is about.
    pub(crate) fn plain(request_json: impl Into<String>) -> Self {
        Self {
            id: JobId::generate(),
            model: "m".into(),
            flex: false,
            priority: 0,
            request_json: request_json.into(),
            key: None,
            tags: vec![],
            batch: None,
            shape: None,
            est_tokens: None,
            expires_after: None,
            seed: None,
        }
    }
}

/// What `enqueue` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EnqueueReport {
    /// Ids of the new jobs, in input order.
    pub inserted: Vec<JobId>,
    /// Jobs whose idempotency key already existed: (key, existing job id).
    pub skipped: Vec<(String, JobId)>,
}

/// Filters for [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub model: Option<String>,
    pub tag: Option<String>,
    pub batch: Option<String>,
    pub limit: Option<u32>,
}

/// Appends the filters `seedq list` and the dashboard share (state, model, batch, tag; each
/// optional, combined with AND) to a `… WHERE 1 = 1` query, with their bound values, so both
/// listings match a job the same way.
fn push_job_filters(
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

/// Count of jobs per (state, model).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatRow {
    pub state: JobState,
    pub model: String,
    pub jobs: i64,
    pub est_tokens: i64,
    pub usage_tokens: i64,
}

/// Column updates that ride along with a transition.
///
/// Only the store's own (private) `transition`/`update` take one, so code outside the store
/// cannot write a column with it: it calls a typed verb (`verbs.rs`). `pub(crate)` only so the
/// PostgreSQL twin of those methods (`pg/core.rs`, a `pub(crate)` module) may name it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Patch(Vec<(&'static str, Value)>);

impl Patch {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `column` to `value`. Column names are compile-time constants, never user input.
    pub fn set(mut self, column: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((column, value.into()));
        self
    }

    /// Sets `column` to NULL.
    pub fn clear(mut self, column: &'static str) -> Self {
        self.0.push((column, Value::Null));
        self
    }
}

/// One guarded state change: `(id, from, token) -> to`, with column updates and an event.
/// Built only by the verbs in `verbs.rs`, and taken only by the store's private methods
/// (`pub(crate)` for the same reason as [`Patch`]).
#[derive(Clone, Debug)]
pub(crate) struct Transition {
    pub id: JobId,
    pub from: JobState,
    pub token: i64,
    pub to: JobState,
    pub patch: Patch,
    pub detail: Option<String>,
}

impl Transition {
    fn check(&self) -> Result<(), StoreError> {
        if self.from != self.to && !self.from.can_transition(self.to) {
            return Err(StoreError::IllegalTransition {
                id: self.id.clone(),
                from: self.from,
                to: self.to,
            });
        }
        Ok(())
    }

    /// The compare-and-set inside an open transaction. Zero rows changed is a conflict.
    fn apply(self, conn: &Connection, now: i64) -> Result<i64, StoreError> {
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
            args.push(val);
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

/// The outcome of `cancel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum CancelOutcome {
    /// The job was queued locally and is now cancelled.
    Cancelled,
    /// The job is remote; the worker will send DELETE.
    Requested,
    /// Nothing to cancel.
    AlreadyFinal {
        state: JobState,
    },
    NotFound,
}

/// The outcome of `retry`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum RetryOutcome {
    Requeued,
    NotRetryable {
        state: JobState,
    },
    /// A chain shot that was never released: its body still lacks its first frame.
    UnreleasedShot,
    NotFound,
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

/// Where the jobs live: one SQLite file (one machine), or a PostgreSQL database that a fleet
/// of workers shares.
#[derive(Clone)]
enum Backend {
    Sqlite { conn: conn::Conn, path: PathBuf },
    Postgres(pg::Pg),
}

/// `store.url` (or `store.path`), parsed: which backend, and where.
#[derive(Clone, Debug)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Postgres {
        url: String,
        /// From `PGPASSWORD` or a password file, when the URL carries none.
        password: Option<secrecy::SecretString>,
    },
}

impl StoreTarget {
    /// Parses `sqlite:///abs/path`, `sqlite://rel/path`, `postgres://…` or
    /// `postgresql://…`; anything else is taken as a SQLite file path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::Postgres {
                url: s.to_string(),
                password: None,
            }
        } else if let Some(rest) = s.strip_prefix("sqlite://") {
            Self::Sqlite(PathBuf::from(rest))
        } else {
            Self::Sqlite(PathBuf::from(s))
        }
    }

    /// For messages: the file, or the database URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(p) => p.display().to_string(),
            Self::Postgres { url, .. } => pg::redact_url(url),
        }
    }

    /// True for PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }
}

fn insert_event(
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
    let request_json = images::intern(conn, &j.request_json, now)?;
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

fn load_job(conn: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        [id],
        job_from_row,
    )
    .optional()
}

impl Store {
    /// Opens (creating and migrating as needed) the database at `path`.
    ///
    /// # Errors
    /// See [`StoreError`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite {
                conn: conn::open(path, true)?,
                path: path.to_path_buf(),
            },
        })
    }

    /// Opens the store `target` names: a SQLite file (created as needed, like
    /// [`Store::open`], or only an existing one without `create`), or a PostgreSQL database
    /// (which must exist; its tables are created and migrated).
    ///
    /// # Errors
    /// See [`StoreError`].
    pub async fn open_target(target: &StoreTarget, create: bool) -> Result<Self, StoreError> {
        match target {
            StoreTarget::Sqlite(path) if create => Self::open(path),
            StoreTarget::Sqlite(path) => Self::open_existing(path),
            StoreTarget::Postgres { url, password } => Ok(Self {
                backend: Backend::Postgres(pg::Pg::connect(url, password.as_ref()).await?),
            }),
        }
    }

    /// The PostgreSQL pool, when that is the backend: each method with a PostgreSQL body
    /// starts with `if let Some(pg) = self.pg() { … }`.
    pub(crate) fn pg(&self) -> Option<&pg::Pg> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite { .. } => None,
        }
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pg().is_some()
    }

    /// For messages: the file, or the database URL without its password.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite { path, .. } => path.display().to_string(),
            Backend::Postgres(pg) => pg.describe().to_string(),
        }
    }

    /// Opens (and migrates) an existing database; creates nothing. For commands that only
    /// read or change existing jobs: a mistyped path must not leave an empty store behind.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when there is no file at `path`; else as [`Store::open`].
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite {
                conn: conn::open(path, false)?,
                path: path.to_path_buf(),
            },
        })
    }

    /// Checks that the database file is still the one opened (same device and inode).
    ///
    /// # Errors
    /// [`StoreError::Replaced`] when it was deleted or replaced.
    pub fn check_identity(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite { conn, .. } => conn.check_identity(),
            // A server's database has no file here to lose.
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// The database file; `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite { path, .. } => Some(path),
            Backend::Postgres(_) => None,
        }
    }

    /// Runs a closure on the connection thread. Only `store` submodules and tests use this.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite { conn, .. } => conn.call(f).await,
            // Every method has a PostgreSQL body of its own before it gets here; reaching
            // this is a method that was missed, and it must fail loudly, not quietly.
            Backend::Postgres(_) => Err(StoreError::Unsupported(std::any::type_name::<F>())),
        }
    }

    /// The schema version in the file.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::migrate::version(pg).await;
        }
        self.call(|c| Ok(migrate::version(c)?)).await
    }

    /// Inserts jobs in one transaction. Jobs whose idempotency key exists are skipped.
    ///
    /// # Errors
    /// Any SQL error rolls the whole batch back: nothing is inserted.
    pub async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<EnqueueReport, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::enqueue(pg, jobs).await;
        }
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

    /// One job by id.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::job(pg, id).await;
        }
        let id = id.to_string();
        self.call(move |c| Ok(load_job(c, &id)?)).await
    }

    /// A job by its remote task id.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn job_by_remote(&self, remote: &str) -> Result<Option<Job>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::job_by_remote(pg, remote).await;
        }
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

    /// The audit trail of a job, oldest first.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn events(&self, id: &str) -> Result<Vec<JobEvent>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::events(pg, id).await;
        }
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

    /// Jobs matching `f`, newest first.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn list(&self, f: ListFilter) -> Result<Vec<Job>, StoreError> {
        self.list_columns(f, JOB_COLUMNS.to_string()).await
    }

    /// [`Store::list`] without the frozen bodies (`request_json` is empty): for tables that
    /// show none, so a listing never reads the prompts and bodies of every job.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn list_lean(&self, f: ListFilter) -> Result<Vec<Job>, StoreError> {
        self.list_columns(f, lean_columns()).await
    }

    async fn list_columns(&self, f: ListFilter, columns: String) -> Result<Vec<Job>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::list_columns(pg, f, &columns).await;
        }
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

    /// Counts and tokens per (state, model).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn stats(&self) -> Result<Vec<StatRow>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::stats(pg).await;
        }
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

    /// Cancels a queued job at once, or flags a remote one for the worker to DELETE.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::cancel(pg, id).await;
        }
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

    /// Puts a failed, dead, expired or cancelled job back in the queue with fresh attempts.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn retry(&self, id: &str) -> Result<RetryOutcome, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::retry(pg, id).await;
        }
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

    /// Moves a job from `from` (holding `token`) to `to`, applying `patch`, and records the
    /// event. The lease token is bumped so that any stale holder's later write conflicts.
    /// Returns the new token.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the job is no longer in `from` with `token`;
    /// [`StoreError::IllegalTransition`] if the state machine forbids it.
    async fn transition(
        &self,
        id: &JobId,
        from: JobState,
        token: i64,
        to: JobState,
        patch: Patch,
        detail: Option<String>,
    ) -> Result<i64, StoreError> {
        let t = Transition {
            id: id.clone(),
            from,
            token,
            to,
            patch,
            detail,
        };
        t.check()?;
        if let Some(pg) = self.pg() {
            return pg::core::transition(pg, t).await;
        }
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let next = t.apply(&tx, now_ms())?;
            tx.commit()?;
            Ok(next)
        })
        .await
    }

    /// Applies many transitions in one transaction (the poller records a whole batch at
    /// once). Each succeeds or conflicts on its own; the results come back in order.
    ///
    /// # Errors
    /// SQL errors (then nothing is applied).
    async fn transition_many(
        &self,
        batch: Vec<Transition>,
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::transition_many(pg, batch).await;
        }
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

    /// Claims up to `limit` of the best due queued jobs of `model` on `tier` (priority, then
    /// age) into `submitting`, recording the intent to POST, without letting more than
    /// `max_in_flight` of that tier's tasks occupy a remote slot. The count and the claim share
    /// one transaction, so concurrent claims can never exceed the cap. The lease covers the
    /// POST. Jobs come back in claim order.
    ///
    /// Only the tier's own tasks count against `max_in_flight`: Ark limits the default tier by concurrency
    /// and flex by TPD alone (tutorial 使用限制 › 限流说明, docs/reference/tutorial.txt:1733-1740),
    /// so a flex backlog must never take the default tier's slots, nor the reverse.
    ///
    /// # Errors
    /// SQL errors.
    ///
    /// `scope` narrows it by resolution (the first part of `shape`): `Only(res, cap)` claims
    /// only jobs of `res`, with at most `cap` of them in flight besides the tier's cap;
    /// `Except(list)` claims none of those resolutions (they have limits of their own).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_for_submit_tier(
        &self,
        model: &str,
        tier: Tier,
        max_in_flight: u32,
        scope: ResolutionScope,
        limit: u32,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        self.claim_for_submit_limited(
            model,
            tier,
            max_in_flight,
            scope,
            limit,
            owner,
            lease_ms,
            &FleetLimits::default(),
        )
        .await
    }

    /// [`Store::claim_for_submit_tier`] within the account's RPM and flex TPD as well, counted
    /// for every worker on this database in the same transaction (store/fleet.rs), so that N
    /// workers together never exceed them and one alone can use all of them.
    ///
    /// # Errors
    /// SQL errors.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_for_submit_limited(
        &self,
        model: &str,
        tier: Tier,
        max_in_flight: u32,
        scope: ResolutionScope,
        limit: u32,
        owner: &str,
        lease_ms: i64,
        fleet: &FleetLimits,
    ) -> Result<Vec<Job>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::fleet::claim_for_submit_limited(
                pg,
                model,
                tier,
                max_in_flight,
                scope,
                limit,
                owner,
                lease_ms,
                fleet,
            )
            .await;
        }
        let fleet = fleet.clone();
        let (model, tier, owner) = (model.to_string(), tier, owner.to_string());
        let (only, only_cap, except) = match scope {
            ResolutionScope::All => (None, 0, "[]".to_string()),
            ResolutionScope::Only(res, cap) => (Some(res), i64::from(cap), "[]".to_string()),
            ResolutionScope::Except(list) => (
                None,
                0,
                serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()),
            ),
        };
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The counters the triggers keep (store/counters.rs), not a count of the jobs:
            // the claim costs the same with 100 or 100 000 tasks in flight.
            let in_flight = counters::in_flight_in_tx(&tx, &model, tier, None)?;
            let mut room = (i64::from(max_in_flight) - in_flight).min(i64::from(limit));
            if let Some(res) = &only {
                let res_in_flight = counters::in_flight_in_tx(&tx, &model, tier, Some(res))?;
                room = room.min(only_cap - res_in_flight);
            }
            // The account's RPM and flex TPD, for every worker on this database (store/fleet.rs).
            let account = fleet::room_in_tx(&tx, &model, tier, only.as_deref(), &fleet, now)?;
            room = room.min(account.creates);
            if room <= 0 {
                return Ok(Vec::new());
            }
            // The due queued jobs in claim order (at most `room`). INDEXED BY: without
            // statistics SQLite picks `jobs_due` for the `next_attempt_at` range and sorts
            // every due queued job, 1.8 s a claim with 1 000 000 queued (`seedq bench
            // claims`); walking the tier's queue index in claim order stops after `room`.
            let candidates = format!(
                "SELECT id, priority, est_tokens FROM jobs q INDEXED BY jobs_queue_tier WHERE state = 'queued' AND model = ?4 \
                 AND next_attempt_at <= ?1 AND service_tier = ?5 \
                 AND (?7 IS NULL OR q.shape = ?7 OR q.shape LIKE ?7 || '/%') \
                 AND NOT EXISTS (SELECT 1 FROM json_each(?8) e \
                     WHERE q.shape = e.value OR q.shape LIKE e.value || '/%') \
                 AND {SERIALISED} \
                 AND {NOT_PAUSED} \
                 ORDER BY priority DESC, id LIMIT ?6"
            );
            let mut jobs = {
                // Flex TPD: the candidates in claim order while their running token sum fits.
                let mut st = tx.prepare_cached(&format!(
                    "UPDATE jobs SET state = 'submitting', updated_at = ?1, submit_started_at = ?1, \
                     attempts = attempts + 1, lease_owner = ?2, lease_until = ?1 + ?3, \
                     next_attempt_at = ?1 + ?3, lease_token = lease_token + 1 \
                     WHERE id IN (SELECT id FROM ( \
                       SELECT id, SUM(COALESCE(est_tokens, 0)) OVER ( \
                           ORDER BY priority DESC, id ROWS UNBOUNDED PRECEDING) AS tokens \
                       FROM ({candidates})) WHERE ?9 IS NULL OR tokens <= ?9) \
                     RETURNING {JOB_COLUMNS}"
                ))?;
                let rows = st.query_map(
                    params![now, owner, lease_ms, model, tier, room, only, except, account.tokens],
                    job_from_row,
                )?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            for j in &jobs {
                insert_event(&tx, j.id.as_str(), now, Some(JobState::Queued), JobState::Submitting, Some("claimed for submit"))?;
            }
            if let (Some(left), Some((tpd, _, next_day))) = (account.tokens, fleet.tpd) {
                // The next candidates that the day's budget cannot take wait for the next day,
                // as the dispatcher's own reservation does (worker/dispatch.rs `submit`).
                let left = left - jobs.iter().map(|j| j.est_tokens.unwrap_or(0)).sum::<i64>();
                let mut st = tx.prepare_cached(&format!(
                    "UPDATE jobs SET next_attempt_at = ?9, updated_at = ?1 \
                     WHERE id IN (SELECT id FROM ({candidates})) AND COALESCE(est_tokens, 0) > ?10 \
                     RETURNING id, COALESCE(est_tokens, 0)"
                ))?;
                let waiting = st
                    .query_map(
                        params![now, owner, lease_ms, model, tier, room, only, except, next_day, left],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                for (id, need) in waiting {
                    let spent = i64::try_from(tpd).unwrap_or(i64::MAX) - left;
                    let why = format!("flex TPD budget reached ({spent}+{need} > {tpd} tokens)");
                    insert_event(&tx, &id, now, Some(JobState::Queued), JobState::Queued, Some(&why))?;
                }
            }
            tx.commit()?;
            jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
            Ok(jobs)
        })
        .await
    }

    /// Tasks of `model` on `tier` that occupy a remote slot (the AIMD cut starts from it).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn in_flight_tier(&self, model: &str, tier: Tier) -> Result<i64, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::in_flight_tier(pg, model, tier).await;
        }
        let (model, tier) = (model.to_string(), tier);
        self.call(move |c| Ok(counters::in_flight_in_tx(c, &model, tier, None)?))
            .await
    }

    /// Tasks that occupy a remote slot, per (model, tier).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn in_flight_by_tier(&self) -> Result<Vec<(String, Tier, i64)>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::core::in_flight_by_tier(pg).await;
        }
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

    /// Claims up to `limit` jobs in `state` that are due, bumping their lease token and pushing
    /// `next_attempt_at` to the lease's end, so a crashed holder's jobs come due again by
    /// themselves.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn claim_due(
        &self,
        state: JobState,
        owner: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.claim_due_columns(state, owner, lease_ms, limit, JOB_COLUMNS.to_string())
            .await
    }

    /// [`Store::claim_due`] without the frozen bodies (`request_json` is empty), for a stage
    /// that never reads them (the poller).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn claim_due_lean(
        &self,
        state: JobState,
        owner: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.claim_due_columns(state, owner, lease_ms, limit, lean_columns())
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
        if let Some(pg) = self.pg() {
            return pg::core::claim_due_columns(pg, state, owner, lease_ms, limit, &columns).await;
        }
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

    /// Updates columns of a job held with `token` without changing its state (no event).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the token or state moved on.
    async fn update(
        &self,
        id: &JobId,
        state: JobState,
        token: i64,
        patch: Patch,
    ) -> Result<i64, StoreError> {
        self.transition(id, state, token, state, patch, None).await
    }

    /// Models with queued jobs (due or not).
    ///
    /// A loose index scan: one index seek per distinct model, so it costs the same with ten
    /// queued jobs or a million (a `GROUP BY` would visit every queued row on every claim).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn queued_models(&self) -> Result<Vec<String>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::queued_models(pg).await;
        }
        self.call(|c| {
            let mut st = c.prepare_cached(
                "WITH RECURSIVE m(model) AS ( \
                   SELECT (SELECT MIN(model) FROM jobs WHERE state = 'queued') \
                   UNION ALL \
                   SELECT (SELECT MIN(model) FROM jobs WHERE state = 'queued' AND model > m.model) \
                   FROM m WHERE m.model IS NOT NULL) \
                 SELECT model FROM m WHERE model IS NOT NULL",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Tasks that occupy a remote slot, per model: submitting, submit_unknown and submitted.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn in_flight(&self) -> Result<HashMap<String, i64>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::in_flight(pg).await;
        }
        self.call(|c| {
            let mut st = c.prepare_cached(
                "SELECT model, SUM(jobs) FROM in_flight_counts \
                 GROUP BY model HAVING SUM(jobs) <> 0",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
        })
        .await
    }

    /// Estimated flex tokens submitted for `model` since `since_ms` (the TPD budget's day).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn flex_tokens_since(&self, model: &str, since_ms: i64) -> Result<i64, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::flex_tokens_since(pg, model, since_ms).await;
        }
        let model = model.to_string();
        self.call(move |c| {
            Ok(c.query_row(FLEX_TOKENS_SINCE, params![model, since_ms], |r| r.get(0))?)
        })
        .await
    }

    /// Queued flex jobs whose local deadline has passed become `expired`, without any API
    /// call. Returns their ids.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn expire_overdue(&self) -> Result<Vec<JobId>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::expire_overdue(pg).await;
        }
        self.call(|c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids: Vec<String> = {
                let mut st = tx.prepare_cached(
                    "UPDATE jobs SET state = 'expired', updated_at = ?1, finished_at = ?1, \
                     lease_token = lease_token + 1, last_error_code = 'deadline_passed', \
                     last_error_message = 'execution_expires_after passed before the job was submitted' \
                     WHERE state = 'queued' AND deadline_at IS NOT NULL AND deadline_at <= ?1 RETURNING id",
                )?;
                let rows = st.query_map([now], |r| r.get(0))?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            for id in &ids {
                insert_event(&tx, id, now, Some(JobState::Queued), JobState::Expired, Some("deadline passed while queued locally"))?;
            }
            tx.commit()?;
            Ok(ids.into_iter().map(JobId::from).collect())
        })
        .await
    }

    /// The median of the recent generation-time estimates (`gen_ms`) of the last `n`
    /// succeeded jobs with the same model, tier and shape; `None` without history.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn recent_generation_ms(
        &self,
        model: &str,
        tier: Tier,
        shape: Option<&str>,
        n: u32,
    ) -> Result<Option<i64>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::recent_generation_ms(pg, model, tier, shape, n).await;
        }
        let (model, tier, shape) = (model.to_string(), tier, shape.map(str::to_string));
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT gen_ms FROM jobs \
                 WHERE model = ?1 AND service_tier = ?2 AND shape IS ?3 AND gen_ms IS NOT NULL \
                 ORDER BY finished_at DESC LIMIT ?4",
            )?;
            let mut v: Vec<i64> = st
                .query_map(params![model, tier, shape, n], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if v.is_empty() {
                return Ok(None);
            }
            v.sort_unstable();
            Ok(Some(v[v.len() / 2]))
        })
        .await
    }

    /// The distinct owners of leases that have not run out yet.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn live_lease_owners(&self) -> Result<Vec<String>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::live_lease_owners(pg).await;
        }
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT DISTINCT lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_until > ?1",
            )?;
            let rows = st.query_map([now_ms()], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Ends every lease `owner` holds (a process known to be dead), so its jobs come due at
    /// once instead of when the lease would have run out. Returns how many jobs it held.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn release_leases_of(&self, owner: &str) -> Result<usize, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::release_leases_of(pg, owner).await;
        }
        let owner = owner.to_string();
        self.call(move |c| {
            // `holder_dead` tells reconciliation the create's POST is over (its process is).
            Ok(fleet::release_leases(c, &owner, now_ms(), true)?)
        })
        .await
    }

    /// Jobs that did not finish well, with their state and last error (for the summary
    /// `seedq run` ends with): every parked job (it waits for an operator, however old), and
    /// the failed, dead, expired or unfinished ones that changed since `since_ms`.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn leftovers(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(String, String, Option<String>, Option<String>)>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::leftovers(pg, since_ms).await;
        }
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, state, last_error_code, last_error_message FROM jobs \
                 WHERE (state = 'submit_unknown' AND last_error_code = 'parked') \
                    OR (state NOT IN ('archived', 'succeeded', 'cancelled') AND updated_at >= ?1) \
                 ORDER BY state, id",
            )?;
            let rows = st.query_map([since_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Jobs that still need the service: queued, submitting, submitted, succeeded and
    /// archiving (the last two only when archiving is on), and submit_unknown jobs that
    /// reconciliation has not parked. Parked jobs wait for an operator, and so do jobs
    /// waiting for a batch's budget to be raised (`seedq batch set`).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn pending_work(&self, archive: bool) -> Result<i64, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::pending_work(pg, archive).await;
        }
        self.call(move |c| {
            Ok(c.query_row(
                // A paused model's or batch's queued jobs wait for an operator, like a parked
                // job: `seedq run` does not wait for them (`seedq pause`).
                &format!("SELECT COUNT(*) FROM jobs q WHERE (state IN ('queued', 'submitting', 'submitted') \
                 AND NOT (state = 'queued' AND COALESCE(last_error_code, '') IN (?2, ?4) AND next_attempt_at > ?3) \
                 AND NOT (state = 'queued' AND NOT {NOT_PAUSED})) \
                 OR (?1 AND state IN ('succeeded', 'archiving')) \
                 OR (state = 'submit_unknown' AND COALESCE(last_error_code, '') <> 'parked')"),
                params![archive, budget::WAIT_BATCH, now_ms(), budget::WAIT_UNPRICED],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Creates per model since `since_ms`, to seed the RPM window after a restart.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn creates_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::creates_since(pg, since_ms).await;
        }
        self.call(move |c| {
            let mut st = c.prepare(
                // Only the default tier has an RPM at Ark; flex creates must not fill its window.
                "SELECT model, submit_started_at FROM jobs WHERE submit_started_at >= ?1 \
                 AND service_tier = 'default'",
            )?;
            let rows = st.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Counts of jobs per state (all models).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn state_counts(&self) -> Result<HashMap<JobState, i64>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::state_counts(pg).await;
        }
        let rows = self.stats().await?;
        let mut m = HashMap::new();
        for r in rows {
            *m.entry(r.state).or_insert(0) += r.jobs;
        }
        Ok(m)
    }

    /// The earliest `next_attempt_at` among jobs in `states`, to sleep exactly until then.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn next_due(&self, states: &'static [JobState]) -> Result<Option<i64>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::ops::next_due(pg, states).await;
        }
        self.call(move |c| {
            let list = states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(c.query_row(
                &format!("SELECT MIN(next_attempt_at) FROM jobs WHERE state IN ({list})"),
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod testpg;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_archive_bulk;
#[cfg(test)]
mod tests_chain_ui;
#[cfg(test)]
mod tests_jobs;
#[cfg(test)]
mod tests_ops;
/// The flex tokens of a model submitted since a time: a range of the partial index
/// `jobs_flex_submitted` (migrations/0021_flex_day_index.sql), not a scan of the model's rows.
pub(crate) const FLEX_TOKENS_SINCE: &str = "SELECT COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs \
     WHERE model = ?1 AND service_tier = 'flex' AND submitted_at >= ?2";
