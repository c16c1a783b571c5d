//! The durable job store: the only place SQL lives.
//!
//! [`Store`] is the handle the stages hold. Its methods are the store's whole interface:
//! enqueue, claims, typed state-change verbs (`verbs.rs`: `mark_submitted`, `record_polls`,
//! `mark_archived`, …) and queries. Below them, each area (the queue, archiving, budgets,
//! batches, chains, the fleet, the dashboard, …) is one trait, declared in `store/<area>.rs`
//! with `backend_trait!`, and implemented twice under the same file name: by
//! `sqlite::SqliteStore` (one file, one connection thread, `conn.rs`) and by
//! `postgres::PgStore` (a pool shared by a fleet). A backend missing a method does not compile.
//!
//! Every state change is a guarded compare-and-set on `(id, state, lease_token)` that also
//! appends a `job_events` row atomically; zero rows changed is a [`StoreError::Conflict`],
//! never ignored.

/// Declares one area's backend trait and the [`Store`] methods that call it.
///
/// Each area (the queue, archiving, budgets, the fleet, …) is one trait with one method per
/// query, implemented by [`sqlite::SqliteStore`] in `store/sqlite/<area>.rs` and by
/// [`postgres::PgStore`] in `store/postgres/<area>.rs`. A backend that lacks a method does not
/// compile. The `Store` method of the same name, with the documentation, dispatches to the
/// backend the store was opened on; the stages call only those.
macro_rules! backend_trait {
    (
        $(#[$tattr:meta])*
        trait $tr:ident {
            $(
                $(#[$mattr:meta])*
                $vis:vis fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        $(#[$tattr])*
        pub(crate) trait $tr {
            $(
                $(#[$mattr])*
                fn $name(&self $(, $arg: $ty)*)
                    -> impl ::std::future::Future<Output = $ret> + Send;
            )*
        }

        impl $crate::Store {
            $(
                $(#[$mattr])*
                $vis async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.backend {
                        $crate::Backend::Sqlite(s) => {
                            <$crate::sqlite::SqliteStore as $tr>::$name(s $(, $arg)*).await
                        }
                        $crate::Backend::Postgres(p) => {
                            <$crate::postgres::PgStore as $tr>::$name(p $(, $arg)*).await
                        }
                    }
                }
            )*
        }
    };
}

pub use seedq_core::time::Timestamp;
use seedq_core::{job, tier};

pub mod api;
mod archive;
pub mod budget;
mod bulk;
mod chain;
mod core;
pub(crate) mod counters;
pub(crate) mod fleet;
mod images;
pub use sqlite::migrate;
pub mod ops;
mod pause;
pub(crate) mod postgres;
mod reads;
mod sqlite;
mod ui;
mod verbs;
#[cfg(test)]
mod verbs_tests;
pub mod webhooks;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::job::{JobId, JobState};
use crate::tier::Tier;

pub use api::{ApiEnqueued, ApiJob, ApiKey, ApiListFilter, ApiRow};
pub use archive::{ArchiveClaim, ArchiveStats, RESULT_EXPIRED};
pub use bulk::{BatchCancel, BatchCell, BatchMeta, BatchRetry, CostRow, Failure, QueuedJob};
pub use chain::{Chain, ChainState, ChainWrite, HELD, Shot, Stitched};
pub use counters::CounterDrift;
pub use fleet::{FleetLimits, FlexDay, LeaderRow, WorkerRow};
pub use ops::MIN_ROOM;
pub use pause::{PauseKind, Paused};
/// The PostgreSQL schema version this binary expects (`migrate::latest` is SQLite's).
pub use postgres::migrate::latest as postgres_latest;
pub use postgres::redact_url;
pub use sqlite::conn::BUSY_TIMEOUT;
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

/// A span in whole milliseconds, as the store's columns keep times.
pub(crate) fn span_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
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
    pub deadline_at: Option<Timestamp>,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Timestamp>,
    pub lease_token: i64,
    pub submit_started_at: Option<Timestamp>,
    pub submitted_at: Option<Timestamp>,
    pub remote_task_id: Option<String>,
    pub remote_status: Option<String>,
    pub remote_created_at: Option<Timestamp>,
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
    pub url_expires_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub archive_key: Option<String>,
    pub archive_sha256: Option<String>,
    pub archive_size: Option<i64>,
    pub archived_at: Option<Timestamp>,
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

/// One row of the audit trail.
#[derive(Clone, Debug, Serialize)]
pub struct JobEvent {
    pub at: Timestamp,
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
/// Only the store's own (private) `transition` takes one, so code outside the store cannot
/// write a column with it: it calls a typed verb (`verbs.rs`). `pub(crate)` only so both
/// backends' implementations (`sqlite/core.rs`, `postgres/core.rs`) may read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Patch(pub(crate) Vec<(&'static str, PatchValue)>);

/// A value a [`Patch`] writes: the store's own type, so the verbs above the backends name
/// neither rusqlite's nor tokio-postgres's. Every column a verb sets is an integer or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PatchValue {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for PatchValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

/// Times are stored as Unix milliseconds (`seedq_core::time`).
impl From<Timestamp> for PatchValue {
    fn from(v: Timestamp) -> Self {
        Self::Int(v.ms())
    }
}

impl From<String> for PatchValue {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl<T: Into<PatchValue>> From<Option<T>> for PatchValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `column` to `value`. Column names are compile-time constants, never user input.
    pub fn set(mut self, column: &'static str, value: impl Into<PatchValue>) -> Self {
        self.0.push((column, value.into()));
        self
    }

    /// Sets `column` to NULL.
    pub fn clear(mut self, column: &'static str) -> Self {
        self.0.push((column, PatchValue::Null));
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
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
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
            Self::Postgres { url, .. } => postgres::redact_url(url),
        }
    }

    /// True for PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the database at `path`.
    ///
    /// # Errors
    /// See [`StoreError`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(sqlite::SqliteStore {
                conn: sqlite::conn::open(path, true)?,
                path: path.to_path_buf(),
            }),
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
                backend: Backend::Postgres(
                    postgres::PgStore::connect(url, password.as_ref()).await?,
                ),
            }),
        }
    }

    /// The PostgreSQL backend, for tests that run its SQL directly.
    #[cfg(test)]
    pub(crate) fn pg(&self) -> Option<&postgres::PgStore> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite(_) => None,
        }
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// For messages: the file, or the database URL without its password.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path.display().to_string(),
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
            backend: Backend::Sqlite(sqlite::SqliteStore {
                conn: sqlite::conn::open(path, false)?,
                path: path.to_path_buf(),
            }),
        })
    }

    /// Checks that the database file is still the one opened (same device and inode).
    ///
    /// # Errors
    /// [`StoreError::Replaced`] when it was deleted or replaced.
    pub fn check_identity(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.conn.check_identity(),
            // A server's database has no file here to lose.
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// The database file; `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(s) => Some(&s.path),
            Backend::Postgres(_) => None,
        }
    }

    /// Runs a closure on the SQLite connection thread, for tests that run its SQL directly.
    #[cfg(test)]
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.call(f).await,
            Backend::Postgres(_) => Err(StoreError::Unsupported(std::any::type_name::<F>())),
        }
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
        self.apply_transition(t).await
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
        lease: Duration,
    ) -> Result<Vec<Job>, StoreError> {
        self.claim_for_submit_limited(
            model,
            tier,
            max_in_flight,
            scope,
            limit,
            owner,
            lease,
            &FleetLimits::default(),
        )
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
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.claim_due_columns(state, owner, lease, limit, JOB_COLUMNS.to_string())
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
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        self.claim_due_columns(state, owner, lease, limit, lean_columns())
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
}

#[cfg(any(test, feature = "test-support"))]
pub mod testpg;
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
#[cfg(test)]
mod tests_tier;
/// The flex tokens of a model submitted since a time: a range of the partial index
/// `jobs_flex_submitted` (migrations/0021_flex_day_index.sql), not a scan of the model's rows.
pub(crate) const FLEX_TOKENS_SINCE: &str = "SELECT COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs \
     WHERE model = ?1 AND service_tier = 'flex' AND submitted_at >= ?2";
