//! Store queries for chains of continuous shots (migration 0004).
//!
//! A chain's shots are ordinary jobs with `chain_id`/`shot`. Shot 1 is enqueued due; every
//! later shot is enqueued *held*: `queued` with `next_attempt_at = HELD`, so the dispatcher's
//! claim (`next_attempt_at <= now`) never sees it, and with no local deadline. Its body lacks
//! its first frame until [`Store::release_shot`] writes the complete, re-checked body and
//! makes it due, in one transaction with the chain's `released` counter: the body is frozen
//! before any POST, so a chain never pays twice for a shot either.

use serde::Serialize;

use super::{Job, NewJob, StoreError, Timestamp};
use crate::job::JobId;

/// `next_attempt_at` of a held shot: later than any real time, so it is never due.
pub const HELD: Timestamp = Timestamp::from_ms(i64::MAX);

/// A chain's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainState {
    /// Shots are being rendered one after another.
    Running,
    /// Every shot succeeded; waiting for them to be archived, then joining them.
    Stitching,
    /// Finished (stitched, or without stitching when archiving is off).
    Done,
    /// A shot failed beyond its retries, or the shots cannot be joined.
    Failed,
    /// A shot was cancelled.
    Cancelled,
}

impl ChainState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainState::Running => "running",
            ChainState::Stitching => "stitching",
            ChainState::Done => "done",
            ChainState::Failed => "failed",
            ChainState::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "running" => ChainState::Running,
            "stitching" => ChainState::Stitching,
            "done" => ChainState::Done,
            "failed" => ChainState::Failed,
            "cancelled" => ChainState::Cancelled,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown chain state {other:?}"
                )));
            }
        })
    }

    /// No more work for the chain stage.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ChainState::Done | ChainState::Failed | ChainState::Cancelled
        )
    }
}

impl std::fmt::Display for ChainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chain as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Chain {
    pub id: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub state: ChainState,
    pub shots: i64,
    /// Shots `1..=released` have their complete body.
    pub released: i64,
    pub max_retries: i64,
    /// Retries spent on the current shot (or stitch attempts while stitching).
    pub retries: i64,
    pub next_check_at: Timestamp,
    pub last_error: Option<String>,
    pub stitch_key: Option<String>,
    pub stitch_sha256: Option<String>,
    pub stitch_size: Option<i64>,
    pub stitch_frames: Option<i64>,
    pub stitch_ms: Option<i64>,
    pub finished_at: Option<Timestamp>,
}

pub(crate) const CHAIN_COLUMNS: &str = "id, created_at, updated_at, state, shots, released, max_retries, \
    retries, next_check_at, last_error, stitch_key, stitch_sha256, stitch_size, stitch_frames, \
    stitch_ms, finished_at";

/// A shot and its chain position, as `chain show` and the chain stage need it.
#[derive(Clone, Debug, Serialize)]
pub struct Shot {
    pub shot: i64,
    #[serde(flatten)]
    pub job: Job,
}

/// The outcome of a guarded chain update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainWrite {
    Done,
    /// The chain or the shot moved on meanwhile (another process, a user's cancel).
    Conflict,
}

/// Stitch results to record.
#[derive(Clone, Debug)]
pub struct Stitched {
    pub key: String,
    pub sha256: String,
    pub size: i64,
    pub frames: i64,
    pub duration_ms: i64,
}

backend_trait! {
    /// Chains of shots: one shot released after another, and the stitched result.
    trait ChainStore {
        /// Stores a chain and its shots in one transaction: shot 1 due now, the others held.
        /// `shots` are in order (shot 1 first).
        ///
        /// # Errors
        /// [`StoreError::Sqlite`] with a constraint violation when the chain id, a job id or an
        /// idempotency key exists already (nothing is stored then).
        pub fn enqueue_chain(
            &self,
            id: &str,
            max_retries: i64,
            shots: Vec<NewJob>,
        ) -> Result<Vec<JobId>, StoreError>;

        /// One chain.
        ///
        /// # Errors
        /// SQL errors.
        pub fn chain(&self, id: &str) -> Result<Option<Chain>, StoreError>;

        /// Chains, newest first.
        ///
        /// # Errors
        /// SQL errors.
        pub fn chains(&self, limit: u32) -> Result<Vec<Chain>, StoreError>;

        /// The shots of a chain, in order, without their bodies (`request_json` is empty: a body
        /// carries a whole frame; read one with [`Store::job`]).
        ///
        /// # Errors
        /// SQL errors.
        pub fn chain_shots(&self, id: &str) -> Result<Vec<Shot>, StoreError>;

        /// Chains the chain stage should look at now: running ones whose current shot has left
        /// the remote states (it succeeded, failed or was cancelled), and stitching ones whose
        /// shots have all left `succeeded`/`archiving` (archived, or failed to archive). Oldest
        /// check first.
        ///
        /// # Errors
        /// SQL errors.
        pub fn chains_due(&self, limit: u32) -> Result<Vec<Chain>, StoreError>;

        /// Completes held shot `shot` of chain `id` with its final `body` and makes it due, if
        /// the chain is still running with `shot - 1` released and the shot is still held with
        /// `token`. `expires_after` (s) starts a flex shot's local deadline now.
        ///
        /// # Errors
        /// SQL errors.
        #[allow(clippy::too_many_arguments)]
        pub fn release_shot(
            &self,
            id: &str,
            shot: i64,
            job: &JobId,
            token: i64,
            body: String,
            est_tokens: Option<i64>,
            expires_after: i64,
            detail: String,
        ) -> Result<ChainWrite, StoreError>;

        /// Moves a chain from `from` to `to` (recording `error`), guarded on its state. A final
        /// state cancels the chain's held shots in the same transaction. The retry count is kept
        /// (it says how hard a failed chain tried) except when stitching starts.
        ///
        /// # Errors
        /// SQL errors.
        pub fn set_chain_state(
            &self,
            id: &str,
            from: ChainState,
            to: ChainState,
            error: Option<String>,
        ) -> Result<ChainWrite, StoreError>;

        /// Records one retry of the chain's current shot (or one stitch attempt) and when to look
        /// again, guarded on the chain's state and retry count.
        ///
        /// # Errors
        /// SQL errors.
        pub fn chain_retry(
            &self,
            id: &str,
            state: ChainState,
            retries: i64,
            next_check_at: Timestamp,
            error: String,
        ) -> Result<ChainWrite, StoreError>;

        /// Pushes a chain's next check back without spending a retry (a transient problem such
        /// as a result URL that did not answer).
        ///
        /// # Errors
        /// SQL errors.
        pub fn chain_later(
            &self,
            id: &str,
            next_check_at: Timestamp,
            error: String,
        ) -> Result<(), StoreError>;

        /// Records the joined video and finishes a stitching chain.
        ///
        /// # Errors
        /// SQL errors.
        pub fn chain_stitched(&self, id: &str, s: Stitched) -> Result<ChainWrite, StoreError>;

        /// The earliest future check of an active chain (one backing off), if any.
        ///
        /// # Errors
        /// SQL errors.
        pub fn next_chain_check(&self) -> Result<Option<Timestamp>, StoreError>;

        /// Chains the chain stage still has to finish (for `seedq run`'s drain check). A chain
        /// whose current shot is a parked ambiguous submit waits for an operator, like the shot
        /// itself, and is not counted.
        ///
        /// # Errors
        /// SQL errors.
        pub fn active_chains(&self) -> Result<i64, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;
    use crate::tier::Tier;
    use crate::{ResolutionScope, RetryOutcome, testpg};
    use crate::{Store, Timestamp};

    fn shot(n: usize) -> NewJob {
        NewJob {
            est_tokens: Some(10),
            ..NewJob::plain(format!("{{\"shot\":{n}}}"))
        }
    }

    #[tokio::test]
    async fn held_shots_are_never_claimed_until_released_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            held_shots_case(name, s).await;
        }
    }

    async fn held_shots_case(name: &str, s: Store) {
        let ids = s
            .enqueue_chain("c", 1, vec![shot(1), shot(2)])
            .await
            .expect("enqueue");
        let claimed = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "t",
                std::time::Duration::from_millis(1_000),
            )
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "{name}: only shot 1 is due");
        assert_eq!(claimed[0].id, ids[0], "{name}");
        let shots = s.chain_shots("c").await.expect("shots");
        assert_eq!(shots[1].job.next_attempt_at, HELD, "{name}");
        assert!(
            shots[1].job.request_json.is_empty(),
            "{name}: bodies are left out"
        );
        let token = shots[1].job.lease_token;
        let release = |t| {
            s.release_shot(
                "c",
                2,
                &ids[1],
                t,
                "{\"done\":1}".into(),
                Some(20),
                3_600,
                "r".into(),
            )
        };
        assert_eq!(
            release(token + 7).await.expect("release"),
            ChainWrite::Conflict,
            "{name}"
        );
        assert_eq!(
            release(token).await.expect("release"),
            ChainWrite::Done,
            "{name}"
        );
        assert_eq!(
            release(token + 1).await.expect("again"),
            ChainWrite::Conflict,
            "{name}"
        );
        let job = s.job(ids[1].as_str()).await.expect("job").expect("exists");
        assert_eq!(job.request_json, "{\"done\":1}", "{name}");
        assert_eq!(job.est_tokens, Some(20), "{name}");
        assert!(job.next_attempt_at <= Timestamp::now(), "{name}");
        let chain = s.chain("c").await.expect("chain").expect("exists");
        assert_eq!(chain.released, 2, "{name}");
        let claimed = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "t",
                std::time::Duration::from_millis(1_000),
            )
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "{name}: the released shot is due");
    }

    #[tokio::test]
    async fn stopping_a_chain_cancels_its_held_shots() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            stopping_case(name, s).await;
        }
    }

    async fn stopping_case(name: &str, s: Store) {
        let ids = s
            .enqueue_chain("c", 0, vec![shot(1), shot(2), shot(3)])
            .await
            .expect("enqueue");
        let w = s
            .set_chain_state(
                "c",
                ChainState::Running,
                ChainState::Failed,
                Some("x".into()),
            )
            .await
            .expect("stop");
        assert_eq!(w, ChainWrite::Done, "{name}");
        let shots = s.chain_shots("c").await.expect("shots");
        let states: Vec<JobState> = shots.iter().map(|s| s.job.state).collect();
        assert_eq!(
            states,
            [JobState::Queued, JobState::Cancelled, JobState::Cancelled],
            "{name}"
        );
        assert_eq!(
            s.retry(ids[2].as_str()).await.expect("retry"),
            RetryOutcome::UnreleasedShot,
            "{name}"
        );
        let again = s
            .set_chain_state("c", ChainState::Running, ChainState::Failed, None)
            .await
            .expect("stop again");
        assert_eq!(again, ChainWrite::Conflict, "{name}");
    }
}
