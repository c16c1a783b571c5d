//! The queue's own verbs: jobs in and out, their states, and the claims that hand them to
//! the stages.

use super::*;

backend_trait! {
    /// Jobs: enqueue, read, list, cancel and retry them, move them between states and claim them.
    trait QueueStore {
        /// The schema version in the file.
        ///
        /// # Errors
        /// The database cannot be read.
        pub fn schema_version(&self) -> Result<i64, StoreError>;

        /// Inserts jobs in one transaction. Jobs whose idempotency key exists are skipped.
        ///
        /// # Errors
        /// Any SQL error rolls the whole batch back: nothing is inserted.
        pub fn enqueue(&self, jobs: Vec<NewJob>) -> Result<EnqueueReport, StoreError>;

        /// One job by id.
        ///
        /// # Errors
        /// SQL errors.
        pub fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;

        /// A job by its remote task id.
        ///
        /// # Errors
        /// SQL errors.
        pub fn job_by_remote(&self, remote: &str) -> Result<Option<Job>, StoreError>;

        /// The audit trail of a job, oldest first.
        ///
        /// # Errors
        /// SQL errors.
        pub fn events(&self, id: &str) -> Result<Vec<JobEvent>, StoreError>;


        pub(super) fn list_columns(
            &self,
            f: ListFilter,
            columns: String,
        ) -> Result<Vec<Job>, StoreError>;

        /// Counts and tokens per (state, model).
        ///
        /// # Errors
        /// SQL errors.
        pub fn stats(&self) -> Result<Vec<StatRow>, StoreError>;

        /// Cancels a queued job at once, or flags a remote one for the worker to DELETE.
        ///
        /// # Errors
        /// SQL errors.
        pub fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError>;

        /// Puts a failed, dead, expired or cancelled job back in the queue with fresh attempts.
        ///
        /// # Errors
        /// SQL errors.
        pub fn retry(&self, id: &str) -> Result<RetryOutcome, StoreError>;

        /// [`Store::transition`] on the backend, once the state machine allows it.
        ///
        /// # Errors
        /// [`StoreError::Conflict`] if the job is no longer in `from` with `token`.
        pub(super) fn apply_transition(&self, t: Transition) -> Result<i64, StoreError>;

        /// Applies many transitions in one transaction (the poller records a whole batch at
        /// once). Each succeeds or conflicts on its own; the results come back in order.
        ///
        /// # Errors
        /// SQL errors (then nothing is applied).
        pub(super) fn transition_many(
            &self,
            batch: Vec<Transition>,
        ) -> Result<Vec<Result<i64, StoreError>>, StoreError>;

        /// Tasks of `model` on `tier` that occupy a remote slot (the AIMD cut starts from it).
        ///
        /// # Errors
        /// SQL errors.
        pub fn in_flight_tier(&self, model: &str, tier: Tier) -> Result<i64, StoreError>;

        /// Tasks that occupy a remote slot, per (model, tier).
        ///
        /// # Errors
        /// SQL errors.
        pub fn in_flight_by_tier(&self) -> Result<Vec<(String, Tier, i64)>, StoreError>;


        pub(super) fn claim_due_columns(
            &self,
            state: JobState,
            owner: &str,
            lease: std::time::Duration,
            limit: u32,
            columns: String,
        ) -> Result<Vec<Job>, StoreError>;
    }
}
