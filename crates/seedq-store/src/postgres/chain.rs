//! PostgreSQL implementation of the chain methods (the SQLite one is `store/sqlite/chain.rs`): the
//! same guarded updates, each multi-statement write one transaction run under
//! [`PgStore::retry`]. Where SQLite's `BEGIN IMMEDIATE` serialises every writer, here the guards
//! (`WHERE state = … AND released = …`, `lease_token = …`) do the work: PostgreSQL re-checks
//! an `UPDATE`'s `WHERE` on the newest row version after waiting for a concurrent writer, so
//! two workers releasing the same shot cannot both succeed.

use crate::chain::ChainStore;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::core::insert_event;
use super::{PgStore, job_from_pg};
use crate::chain::{CHAIN_COLUMNS, Chain, ChainState, ChainWrite, HELD, Shot, Stitched};
use crate::job::{JobId, JobState};
use crate::{JOB_COLUMNS, NewJob, StoreError, now_ms};

/// A chain row read with [`CHAIN_COLUMNS`], in that order.
fn chain_from_pg(r: &Row) -> Result<Chain, StoreError> {
    let state: String = r.try_get(3)?;
    Ok(Chain {
        id: r.try_get(0)?,
        created_at: r.try_get(1)?,
        updated_at: r.try_get(2)?,
        state: ChainState::parse(&state)?,
        shots: r.try_get(4)?,
        released: r.try_get(5)?,
        max_retries: r.try_get(6)?,
        retries: r.try_get(7)?,
        next_check_at: r.try_get(8)?,
        last_error: r.try_get(9)?,
        stitch_key: r.try_get(10)?,
        stitch_sha256: r.try_get(11)?,
        stitch_size: r.try_get(12)?,
        stitch_frames: r.try_get(13)?,
        stitch_ms: r.try_get(14)?,
        finished_at: r.try_get(15)?,
    })
}

/// `store::insert_job` for PostgreSQL: one new `queued` job due at `next_attempt_at`; a
/// duplicate idempotency key inserts nothing (returns 0). The shared multi-row insert
/// (`pg::core::insert_jobs`), for one row, so a shot is stored exactly as an enqueued job.
async fn insert_job(
    tx: &Transaction<'_>,
    j: &NewJob,
    now: i64,
    next_attempt_at: i64,
    deadline_now: bool,
    chain: Option<(&str, i64)>,
) -> Result<u64, StoreError> {
    let row = super::core::Insert {
        job: j,
        next_attempt_at,
        deadline_now,
        chain,
    };
    let inserted = super::core::insert_jobs(tx, &[row], now).await?;
    Ok(u64::from(inserted.contains(j.id.as_str())))
}

impl ChainStore for PgStore {
    async fn enqueue_chain(
        &self,
        id: &str,
        max_retries: i64,
        shots: Vec<NewJob>,
    ) -> Result<Vec<JobId>, StoreError> {
        let shots = &shots;
        self.retry(|| async move {
    let now = now_ms();
    let mut c = self.conn().await?;
    let tx = c.transaction().await?;
    tx.execute(
        "INSERT INTO chains (id, created_at, updated_at, state, shots, released, max_retries, next_check_at) \
         VALUES ($1, $2, $2, 'running', $3, 1, $4, $2)",
        &[&id, &now, &(shots.len() as i64), &max_retries],
    )
    .await?;
    let mut ids = Vec::with_capacity(shots.len());
    for (i, j) in shots.iter().enumerate() {
        let shot = i as i64 + 1;
        let first = shot == 1;
        // A held shot's local deadline starts when it is released.
        let due = if first { now } else { HELD.ms() };
        if insert_job(&tx, j, now, due, first, Some((id, shot))).await? == 0 {
            // Its idempotency key exists already: the chain would have a hole. Returning
            // drops the transaction, which rolls the chain and earlier shots back.
            return Err(StoreError::Corrupt(format!(
                "shot {shot} of chain {id}: idempotency key {:?} is already used by another job",
                j.key.as_deref().unwrap_or("")
            )));
        }
        let detail = if first {
            format!("enqueued as shot 1 of chain {id}")
        } else {
            format!(
                "enqueued as shot {shot} of chain {id}; held until shot {} succeeds",
                shot - 1
            )
        };
        insert_event(&tx, j.id.as_str(), now, None, JobState::Queued, Some(&detail)).await?;
        ids.push(j.id.clone());
    }
    tx.commit().await?;
    Ok(ids)
})
.await
    }

    async fn chain(&self, id: &str) -> Result<Option<Chain>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!("SELECT {CHAIN_COLUMNS} FROM chains WHERE id = $1"))
            .await?;
        c.query_opt(&st, &[&id])
            .await?
            .as_ref()
            .map(chain_from_pg)
            .transpose()
    }

    async fn chains(&self, limit: u32) -> Result<Vec<Chain>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {CHAIN_COLUMNS} FROM chains ORDER BY created_at DESC, id LIMIT $1"
            ))
            .await?;
        c.query(&st, &[&i64::from(limit)])
            .await?
            .iter()
            .map(chain_from_pg)
            .collect()
    }

    async fn chain_shots(&self, id: &str) -> Result<Vec<Shot>, StoreError> {
        let c = self.conn().await?;
        let columns = JOB_COLUMNS.replacen("request_json", "'' AS request_json", 1);
        let st = c
            .prepare_cached(&format!(
                "SELECT {columns}, shot FROM jobs WHERE chain_id = $1 ORDER BY shot"
            ))
            .await?;
        c.query(&st, &[&id])
            .await?
            .iter()
            .map(|r| {
                Ok(Shot {
                    job: job_from_pg(r)?,
                    // `shot` follows the job's columns.
                    shot: r.try_get(JOB_COLUMNS.split(',').count())?,
                })
            })
            .collect()
    }

    async fn chains_due(&self, limit: u32) -> Result<Vec<Chain>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {CHAIN_COLUMNS} FROM chains AS c \
         WHERE c.state IN ('running', 'stitching') AND c.next_check_at <= $1 \
           AND CASE c.state \
             WHEN 'running' THEN EXISTS ( \
               SELECT 1 FROM jobs AS j WHERE j.chain_id = c.id AND j.shot = c.released \
                 AND j.state NOT IN ('queued', 'submitting', 'submit_unknown', 'submitted')) \
             ELSE NOT EXISTS ( \
               SELECT 1 FROM jobs AS j WHERE j.chain_id = c.id \
                 AND j.state IN ('succeeded', 'archiving')) END \
         ORDER BY c.next_check_at LIMIT $2"
            ))
            .await?;
        c.query(&st, &[&now_ms(), &i64::from(limit)])
            .await?
            .iter()
            .map(chain_from_pg)
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn release_shot(
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
        let body: &str = &body;
        let detail: &str = &detail;

        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let n = tx
        .execute(
            "UPDATE chains SET released = $2, retries = 0, updated_at = $3, last_error = NULL \
             WHERE id = $1 AND state = 'running' AND released = $2::BIGINT - 1",
            &[&id, &shot, &now],
        )
        .await?;
            if n == 0 {
                return Ok(ChainWrite::Conflict);
            }
            // The released body may embed an image again (the previous shot's last frame).
            let body = super::images::intern(&tx, body, now).await?;
            let n = tx
                .execute(
                    "UPDATE jobs SET request_json = $2, est_tokens = COALESCE($3, est_tokens), \
             next_attempt_at = $4, updated_at = $4, lease_token = lease_token + 1, \
             deadline_at = CASE WHEN service_tier = 'flex' THEN $4 + $5::BIGINT * 1000 END \
             WHERE id = $1 AND state = 'queued' AND lease_token = $6 AND next_attempt_at = $7",
                    &[
                        &job.as_str(),
                        &body.as_str(),
                        &est_tokens,
                        &now,
                        &expires_after,
                        &token,
                        &HELD,
                    ],
                )
                .await?;
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
                Some(detail),
            )
            .await?;
            tx.commit().await?;
            Ok(ChainWrite::Done)
        })
        .await
    }

    async fn set_chain_state(
        &self,
        id: &str,
        from: ChainState,
        to: ChainState,
        error: Option<String>,
    ) -> Result<ChainWrite, StoreError> {
        let error: Option<&str> = error.as_deref();

        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // `$4::BIGINT`: a CASE alone would type the parameter as text.
            let n = tx
        .execute(
            "UPDATE chains SET state = $3, updated_at = $4, last_error = COALESCE($5, last_error), \
             retries = CASE WHEN $3 = 'stitching' THEN 0 ELSE retries END, next_check_at = $4, \
             finished_at = CASE WHEN $3 IN ('done', 'failed', 'cancelled') THEN $4::BIGINT END \
             WHERE id = $1 AND state = $2",
            &[&id, &from.as_str(), &to.as_str(), &now, &error],
        )
        .await?;
            if n == 0 {
                return Ok(ChainWrite::Conflict);
            }
            if to.is_final() {
                let why = format!("chain {id} stopped ({to})");
                // Ordered by shot, so the events are written in the same order as on SQLite.
                let held = tx
                    .query(
                        "WITH held AS ( \
                   UPDATE jobs SET state = 'cancelled', updated_at = $2, finished_at = $2, \
                   lease_token = lease_token + 1, last_error_code = 'chain_stopped', \
                   last_error_message = $3 \
                   WHERE chain_id = $1 AND state = 'queued' AND next_attempt_at = $4 \
                   RETURNING id, shot) \
                 SELECT id FROM held ORDER BY shot",
                        &[&id, &now, &why, &HELD],
                    )
                    .await?;
                for r in &held {
                    let job: String = r.try_get(0)?;
                    insert_event(
                        &tx,
                        &job,
                        now,
                        Some(JobState::Queued),
                        JobState::Cancelled,
                        Some("chain stopped before this shot"),
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(ChainWrite::Done)
        })
        .await
    }

    async fn chain_retry(
        &self,
        id: &str,
        state: ChainState,
        retries: i64,
        next_check_at: crate::Timestamp,
        error: String,
    ) -> Result<ChainWrite, StoreError> {
        let error: &str = &error;

        let c = self.conn().await?;
        let n = c
    .execute(
        "UPDATE chains SET retries = retries + 1, next_check_at = $4, last_error = $5, updated_at = $6 \
         WHERE id = $1 AND state = $2 AND retries = $3",
        &[&id, &state.as_str(), &retries, &next_check_at, &error, &now_ms()],
    )
    .await?;
        Ok(if n == 1 {
            ChainWrite::Done
        } else {
            ChainWrite::Conflict
        })
    }

    async fn chain_later(
        &self,
        id: &str,
        next_check_at: crate::Timestamp,
        error: String,
    ) -> Result<(), StoreError> {
        let error: &str = &error;

        let c = self.conn().await?;
        c.execute(
            "UPDATE chains SET next_check_at = $2, last_error = $3, updated_at = $4 WHERE id = $1",
            &[&id, &next_check_at, &error, &now_ms()],
        )
        .await?;
        Ok(())
    }

    async fn chain_stitched(&self, id: &str, s: Stitched) -> Result<ChainWrite, StoreError> {
        let s: &Stitched = &s;

        let c = self.conn().await?;
        let n = c
    .execute(
        "UPDATE chains SET state = 'done', updated_at = $2, finished_at = $2, last_error = NULL, \
         stitch_key = $3, stitch_sha256 = $4, stitch_size = $5, stitch_frames = $6, stitch_ms = $7 \
         WHERE id = $1 AND state = 'stitching'",
        &[
            &id,
            &now_ms(),
            &s.key,
            &s.sha256,
            &s.size,
            &s.frames,
            &s.duration_ms,
        ],
    )
    .await?;
        Ok(if n == 1 {
            ChainWrite::Done
        } else {
            ChainWrite::Conflict
        })
    }

    async fn next_chain_check(&self) -> Result<Option<crate::Timestamp>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_one(
            "SELECT MIN(next_check_at) FROM chains \
     WHERE state IN ('running', 'stitching') AND next_check_at > $1",
            &[&now_ms()],
        )
        .await?
        .try_get(0)?)
    }

    async fn active_chains(&self) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_one(
            "SELECT COUNT(*) FROM chains AS c WHERE c.state IN ('running', 'stitching') \
     AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.chain_id = c.id \
       AND j.shot = c.released AND c.state = 'running' \
       AND j.state = 'submit_unknown' AND COALESCE(j.last_error_code, '') = 'parked')",
            &[],
        )
        .await?
        .try_get(0)?)
    }
}
