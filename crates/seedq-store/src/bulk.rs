//! Store queries for bulk rendering: batches (metadata, summaries, cancel and retry of a whole
//! batch, the export listing) and the governor's tier changes. Chains live in `store/chain.rs`.
//!
//! A batch is the set of jobs sharing `jobs.batch_id`; the `batches` table (migration 0004)
//! only adds what a batch has beyond its jobs (when it was created, a deadline, its source
//! file). Every bulk change is one transaction that also writes one `job_events` row per job,
//! and guards on the state it expects, like the single-job methods in `store/mod.rs`.

use crate::tier::Tier;
use serde::Serialize;

use super::{Job, StoreError, Timestamp};
use crate::job::{JobId, JobState};

/// A batch's own row. Batches that only exist through their jobs have `created_at` = their
/// first job's creation and no deadline.
#[derive(Clone, Debug, Serialize)]
pub struct BatchMeta {
    pub name: String,
    pub created_at: Timestamp,
    /// When the batch should be done by (the governor's target).
    pub deadline_at: Option<Timestamp>,
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
    /// The earliest creation and submission and the latest finish of the jobs that came into
    /// this cell, kept as bounds by the triggers (store/counters.rs): a job that moved on to
    /// another cell may still be in them. Over a whole batch (what `batch show` sums) they are
    /// its own first and last, unless a job was retried or pruned since.
    pub first_created: Timestamp,
    pub first_submitted: Option<Timestamp>,
    pub last_finished: Option<Timestamp>,
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

pub(crate) fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))
}

backend_trait! {
    /// Batches: their metadata, per-batch views, cancel and retry, and tier changes across the
    /// queue.
    trait BatchStore {
        /// Models with queued flex jobs in a batch that has a deadline: what the governor checks.
        ///
        /// # Errors
        /// SQL errors.
        pub fn governed_models(&self) -> Result<Vec<String>, StoreError>;

        /// The queued jobs of `model` in the dispatcher's claim order (priority, then age), held
        /// chain shots left out, with their batch's deadline.
        ///
        /// # Errors
        /// SQL errors.
        pub fn queue_of(&self, model: &str) -> Result<Vec<QueuedJob>, StoreError>;

        /// Moves queued flex jobs to the default tier with their rewritten bodies, each guarded on
        /// its lease token; returns how many moved. Only queued jobs change: nothing has been
        /// POSTed for them (or what was is settled), so the body may still change. They become
        /// due at once: a flex job waiting for tomorrow's budget need not wait on default.
        ///
        /// # Errors
        /// SQL errors.
        pub fn to_default_tier(
            &self,
            changes: Vec<(JobId, i64, String)>,
            detail: String,
        ) -> Result<usize, StoreError>;

        /// Estimated and billed tokens per model and tier, over the jobs that have a usage.
        ///
        /// # Errors
        /// SQL errors.
        pub fn cost_rows(&self) -> Result<Vec<CostRow>, StoreError>;

        /// Records batches (name, deadline, source file). An existing batch keeps its creation
        /// time and source; a deadline given again replaces the old one.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ensure_batches(
            &self,
            batches: Vec<(String, Option<Timestamp>, Option<String>)>,
        ) -> Result<(), StoreError>;

        /// Every batch: rows of the `batches` table plus batch names that only jobs carry.
        /// Oldest first.
        ///
        /// # Errors
        /// SQL errors.
        pub fn batches(&self) -> Result<Vec<BatchMeta>, StoreError>;

        /// One batch's metadata, or `None` when neither a row nor any job has that name.
        ///
        /// # Errors
        /// SQL errors.
        pub fn batch(&self, name: &str) -> Result<Option<BatchMeta>, StoreError>;

        /// Per (batch, state, model, tier, shape) counts, tokens and timings; one batch or all.
        /// Read from the trigger-kept cells: a few rows however large the batch.
        ///
        /// # Errors
        /// SQL errors.
        pub fn batch_cells(&self, batch: Option<String>) -> Result<Vec<BatchCell>, StoreError>;

        /// Jobs of a batch that failed, died, expired or were cancelled, oldest first.
        ///
        /// # Errors
        /// SQL errors.
        pub fn batch_failures(&self, batch: &str, limit: u32) -> Result<Vec<Failure>, StoreError>;

        /// Every job of a batch, oldest first (the export).
        ///
        /// # Errors
        /// SQL errors.
        pub fn batch_jobs(&self, batch: &str) -> Result<Vec<Job>, StoreError>;

        /// Cancels a whole batch in one transaction: queued jobs (held chain shots included) at
        /// once, remote ones by flagging them for the worker's DELETE.
        ///
        /// # Errors
        /// SQL errors.
        pub fn cancel_batch(&self, batch: &str) -> Result<BatchCancel, StoreError>;

        /// Puts a batch's failed, dead and expired jobs (and its cancelled ones with
        /// `cancelled`) back in the queue with fresh attempts, in one transaction. Each keeps its
        /// frozen body, as `retry` does. Chain shots are left to their chain.
        ///
        /// # Errors
        /// SQL errors.
        pub fn retry_batch(&self, batch: &str, cancelled: bool) -> Result<BatchRetry, StoreError>;
    }
}
