//! Store queries for chains of continuous shots (migration 0004).
//!
//! A chain's shots are ordinary jobs with `chain_id`/`shot`. Shot 1 is enqueued due; every
//! later shot is enqueued *held*: `queued` with `next_attempt_at = HELD`, so the dispatcher's
//! claim (`next_attempt_at <= now`) never sees it, and with no local deadline. Its body lacks
//! its first frame until [`Store::release_shot`] writes the complete, re-checked body and
//! makes it due, in one transaction with the chain's `released` counter: the body is frozen
//! before any POST, so a chain never pays twice for a shot either.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{JOB_COLUMNS, Job, NewJob, Store, StoreError, insert_event, job_from_row, now_ms, pg};
use crate::job::{JobId, JobState};

/// `next_attempt_at` of a held shot: later than any real time, so it is never due.
pub const HELD: i64 = i64::MAX;

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
    pub created_at: i64,
    pub updated_at: i64,
    pub state: ChainState,
    pub shots: i64,
    /// Shots `1..=released` have their complete body.
    pub released: i64,
    pub max_retries: i64,
    /// Retries spent on the current shot (or stitch attempts while stitching).
    pub retries: i64,
    pub next_check_at: i64,
    pub last_error: Option<String>,
    pub stitch_key: Option<String>,
    pub stitch_sha256: Option<String>,
    pub stitch_size: Option<i64>,
    pub stitch_frames: Option<i64>,
    pub stitch_ms: Option<i64>,
    pub finished_at: Option<i64>,
}

pub(crate) const CHAIN_COLUMNS: &str = "id, created_at, updated_at, state, shots, released, max_retries, \
    retries, next_check_at, last_error, stitch_key, stitch_sha256, stitch_size, stitch_frames, \
    stitch_ms, finished_at";

fn chain_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Chain)> {
    let state: String = r.get(3)?;
    Ok((
        state,
        Chain {
            id: r.get(0)?,
            created_at: r.get(1)?,
            updated_at: r.get(2)?,
            state: ChainState::Running,
            shots: r.get(4)?,
            released: r.get(5)?,
            max_retries: r.get(6)?,
            retries: r.get(7)?,
            next_check_at: r.get(8)?,
            last_error: r.get(9)?,
            stitch_key: r.get(10)?,
            stitch_sha256: r.get(11)?,
            stitch_size: r.get(12)?,
            stitch_frames: r.get(13)?,
            stitch_ms: r.get(14)?,
            finished_at: r.get(15)?,
        },
    ))
}

fn finish_chain(row: (String, Chain)) -> Result<Chain, StoreError> {
    let (state, mut c) = row;
    c.state = ChainState::parse(&state)?;
    Ok(c)
}

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

impl Store {
    /// Stores a chain and its shots in one transaction: shot 1 due now, the others held.
    /// `shots` are in order (shot 1 first).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] with a constraint violation when the chain id, a job id or an
    /// idempotency key exists already (nothing is stored then).
    pub async fn enqueue_chain(
        &self,
        id: &str,
        max_retries: i64,
        shots: Vec<NewJob>,
    ) -> Result<Vec<JobId>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::enqueue_chain(pg, id, max_retries, shots).await;
        }
        let id = id.to_string();
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO chains (id, created_at, updated_at, state, shots, released, max_retries, next_check_at) \
                 VALUES (?1, ?2, ?2, 'running', ?3, 1, ?4, ?2)",
                params![id, now, shots.len() as i64, max_retries],
            )?;
            let mut ids = Vec::with_capacity(shots.len());
            {
                for (i, j) in shots.into_iter().enumerate() {
                    let shot = i as i64 + 1;
                    let first = shot == 1;
                    // A held shot's local deadline starts when it is released.
                    let due = if first { now } else { HELD };
                    if super::insert_job(&tx, &j, now, due, first, Some((id.as_str(), shot)))? == 0 {
                        // Its idempotency key exists already: the chain would have a hole.
                        return Err(StoreError::Corrupt(format!(
                            "shot {shot} of chain {id}: idempotency key {:?} is already used by another job",
                            j.key.as_deref().unwrap_or("")
                        )));
                    }
                    let detail = if first {
                        format!("enqueued as shot 1 of chain {id}")
                    } else {
                        format!("enqueued as shot {shot} of chain {id}; held until shot {} succeeds", shot - 1)
                    };
                    insert_event(&tx, j.id.as_str(), now, None, JobState::Queued, Some(&detail))?;
                    ids.push(j.id);
                }
            }
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    /// One chain.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn chain(&self, id: &str) -> Result<Option<Chain>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::chain(pg, id).await;
        }
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {CHAIN_COLUMNS} FROM chains WHERE id = ?1"),
                [id],
                chain_from_row,
            )
            .optional()?
            .map(finish_chain)
            .transpose()
        })
        .await
    }

    /// Chains, newest first.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn chains(&self, limit: u32) -> Result<Vec<Chain>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::chains(pg, limit).await;
        }
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {CHAIN_COLUMNS} FROM chains ORDER BY created_at DESC, id LIMIT ?1"
            ))?;
            let rows = st.query_map([limit], chain_from_row)?;
            rows.map(|r| finish_chain(r?)).collect()
        })
        .await
    }

    /// The shots of a chain, in order, without their bodies (`request_json` is empty: a body
    /// carries a whole frame; read one with [`Store::job`]).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn chain_shots(&self, id: &str) -> Result<Vec<Shot>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::chain_shots(pg, id).await;
        }
        let id = id.to_string();
        self.call(move |c| {
            let columns = JOB_COLUMNS.replacen("request_json", "'' AS request_json", 1);
            let mut st = c.prepare(&format!(
                "SELECT {columns}, shot FROM jobs WHERE chain_id = ?1 ORDER BY shot"
            ))?;
            let rows = st.query_map([id], |r| {
                Ok(Shot {
                    job: job_from_row(r)?,
                    // `shot` follows the job's columns.
                    shot: r.get(JOB_COLUMNS.split(',').count())?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Chains the chain stage should look at now: running ones whose current shot has left
    /// the remote states (it succeeded, failed or was cancelled), and stitching ones whose
    /// shots have all left `succeeded`/`archiving` (archived, or failed to archive). Oldest
    /// check first.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn chains_due(&self, limit: u32) -> Result<Vec<Chain>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::chains_due(pg, limit).await;
        }
        self.call(move |c| {
            let now = now_ms();
            let mut st = c.prepare_cached(&format!(
                "SELECT {CHAIN_COLUMNS} FROM chains AS c \
                 WHERE c.state IN ('running', 'stitching') AND c.next_check_at <= ?1 \
                   AND CASE c.state \
                     WHEN 'running' THEN EXISTS ( \
                       SELECT 1 FROM jobs AS j WHERE j.chain_id = c.id AND j.shot = c.released \
                         AND j.state NOT IN ('queued', 'submitting', 'submit_unknown', 'submitted')) \
                     ELSE NOT EXISTS ( \
                       SELECT 1 FROM jobs AS j WHERE j.chain_id = c.id \
                         AND j.state IN ('succeeded', 'archiving')) END \
                 ORDER BY c.next_check_at LIMIT ?2"
            ))?;
            let rows = st.query_map(params![now, limit], chain_from_row)?;
            rows.map(|r| finish_chain(r?)).collect()
        })
        .await
    }

    /// Completes held shot `shot` of chain `id` with its final `body` and makes it due, if
    /// the chain is still running with `shot - 1` released and the shot is still held with
    /// `token`. `expires_after` (s) starts a flex shot's local deadline now.
    ///
    /// # Errors
    /// SQL errors.
    #[allow(clippy::too_many_arguments)]
    pub async fn release_shot(
        &self,
        id: &str,
        shot: i64,
        job: &JobId,
        token: i64,
        body: String,
        est_tokens: Option<i64>,
        expires_after: i64,
        detail: String,
    ) -> Result<ChainWrite, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::release_shot(
                pg,
                id,
                shot,
                job,
                token,
                &body,
                est_tokens,
                expires_after,
                &detail,
            )
            .await;
        }
        let (id, job) = (id.to_string(), job.clone());
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE chains SET released = ?2, retries = 0, updated_at = ?3, last_error = NULL \
                 WHERE id = ?1 AND state = 'running' AND released = ?2 - 1",
                params![id, shot, now],
            )?;
            if n == 0 {
                return Ok(ChainWrite::Conflict);
            }
            // The released body may embed an image again (the previous shot's last frame).
            let body = super::images::intern(&tx, &body, now)?;
            let n = tx.execute(
                "UPDATE jobs SET request_json = ?2, est_tokens = COALESCE(?3, est_tokens), \
                 next_attempt_at = ?4, updated_at = ?4, lease_token = lease_token + 1, \
                 deadline_at = CASE WHEN service_tier = 'flex' THEN ?4 + ?5 * 1000 END \
                 WHERE id = ?1 AND state = 'queued' AND lease_token = ?6 AND next_attempt_at = ?7",
                params![
                    job.as_str(),
                    body,
                    est_tokens,
                    now,
                    expires_after,
                    token,
                    HELD
                ],
            )?;
            if n == 0 {
                // Dropping the transaction rolls the chain's counter back too.
                return Ok(ChainWrite::Conflict);
            }
            insert_event(
                &tx,
                job.as_str(),
                now,
                Some(JobState::Queued),
                JobState::Queued,
                Some(&detail),
            )?;
            tx.commit()?;
            Ok(ChainWrite::Done)
        })
        .await
    }

    /// Moves a chain from `from` to `to` (recording `error`), guarded on its state. A final
    /// state cancels the chain's held shots in the same transaction. The retry count is kept
    /// (it says how hard a failed chain tried) except when stitching starts.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn set_chain_state(
        &self,
        id: &str,
        from: ChainState,
        to: ChainState,
        error: Option<String>,
    ) -> Result<ChainWrite, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::set_chain_state(pg, id, from, to, error.as_deref()).await;
        }
        let id = id.to_string();
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE chains SET state = ?3, updated_at = ?4, last_error = COALESCE(?5, last_error), \
                 retries = CASE WHEN ?3 = 'stitching' THEN 0 ELSE retries END, next_check_at = ?4, \
                 finished_at = CASE WHEN ?3 IN ('done', 'failed', 'cancelled') THEN ?4 END \
                 WHERE id = ?1 AND state = ?2",
                params![id, from.as_str(), to.as_str(), now, error],
            )?;
            if n == 0 {
                return Ok(ChainWrite::Conflict);
            }
            if to.is_final() {
                let held: Vec<String> = {
                    let mut st = tx.prepare(
                        "UPDATE jobs SET state = 'cancelled', updated_at = ?2, finished_at = ?2, \
                         lease_token = lease_token + 1, last_error_code = 'chain_stopped', \
                         last_error_message = ?3 \
                         WHERE chain_id = ?1 AND state = 'queued' AND next_attempt_at = ?4 RETURNING id",
                    )?;
                    let why = format!("chain {id} stopped ({to})");
                    let rows = st.query_map(params![id, now, why, HELD], |r| r.get(0))?;
                    rows.collect::<Result<_, _>>()?
                };
                for job in &held {
                    insert_event(&tx, job, now, Some(JobState::Queued), JobState::Cancelled, Some("chain stopped before this shot"))?;
                }
            }
            tx.commit()?;
            Ok(ChainWrite::Done)
        })
        .await
    }

    /// Records one retry of the chain's current shot (or one stitch attempt) and when to look
    /// again, guarded on the chain's state and retry count.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn chain_retry(
        &self,
        id: &str,
        state: ChainState,
        retries: i64,
        next_check_at: i64,
        error: String,
    ) -> Result<ChainWrite, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::chain_retry(pg, id, state, retries, next_check_at, &error).await;
        }
        let id = id.to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE chains SET retries = retries + 1, next_check_at = ?4, last_error = ?5, updated_at = ?6 \
                 WHERE id = ?1 AND state = ?2 AND retries = ?3",
                params![id, state.as_str(), retries, next_check_at, error, now_ms()],
            )?;
            Ok(if n == 1 { ChainWrite::Done } else { ChainWrite::Conflict })
        })
        .await
    }

    /// Pushes a chain's next check back without spending a retry (a transient problem such
    /// as a result URL that did not answer).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn chain_later(
        &self,
        id: &str,
        next_check_at: i64,
        error: String,
    ) -> Result<(), StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::chain_later(pg, id, next_check_at, &error).await;
        }
        let id = id.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE chains SET next_check_at = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, next_check_at, error, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Records the joined video and finishes a stitching chain.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn chain_stitched(&self, id: &str, s: Stitched) -> Result<ChainWrite, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::chain_stitched(pg, id, &s).await;
        }
        let id = id.to_string();
        self.call(move |c| {
            let now = now_ms();
            let n = c.execute(
                "UPDATE chains SET state = 'done', updated_at = ?2, finished_at = ?2, last_error = NULL, \
                 stitch_key = ?3, stitch_sha256 = ?4, stitch_size = ?5, stitch_frames = ?6, stitch_ms = ?7 \
                 WHERE id = ?1 AND state = 'stitching'",
                params![id, now, s.key, s.sha256, s.size, s.frames, s.duration_ms],
            )?;
            Ok(if n == 1 { ChainWrite::Done } else { ChainWrite::Conflict })
        })
        .await
    }

    /// The earliest future check of an active chain (one backing off), if any.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn next_chain_check(&self) -> Result<Option<i64>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::next_chain_check(pg).await;
        }
        self.call(|c| {
            Ok(c.query_row(
                "SELECT MIN(next_check_at) FROM chains \
                 WHERE state IN ('running', 'stitching') AND next_check_at > ?1",
                [now_ms()],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Chains the chain stage still has to finish (for `seedq run`'s drain check). A chain
    /// whose current shot is a parked ambiguous submit waits for an operator, like the shot
    /// itself, and is not counted.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn active_chains(&self) -> Result<i64, StoreError> {
        if let Some(pg) = self.pg() {
            return pg::chain::active_chains(pg).await;
        }
        self.call(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM chains AS c WHERE c.state IN ('running', 'stitching') \
                 AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.chain_id = c.id \
                   AND j.shot = c.released AND c.state = 'running' \
                   AND j.state = 'submit_unknown' AND COALESCE(j.last_error_code, '') = 'parked')",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ResolutionScope, RetryOutcome, testpg};
    use crate::tier::Tier;

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
            .claim_for_submit_tier("m", Tier::Default, 10, ResolutionScope::All, 10, "t", 1_000)
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
        assert!(job.next_attempt_at <= now_ms(), "{name}");
        let chain = s.chain("c").await.expect("chain").expect("exists");
        assert_eq!(chain.released, 2, "{name}");
        let claimed = s
            .claim_for_submit_tier("m", Tier::Default, 10, ResolutionScope::All, 10, "t", 1_000)
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
