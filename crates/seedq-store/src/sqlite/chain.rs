//! SQLite implementation of [`ChainStore`] (declared in `store/chain.rs`; the PostgreSQL
//! implementation is `store/postgres/chain.rs`).

use super::SqliteStore;
use super::core::{insert_event, job_from_row};
use crate::chain::*;
use crate::job::{JobId, JobState};
use crate::{JOB_COLUMNS, NewJob, StoreError, now_ms};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

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

impl ChainStore for SqliteStore {
    async fn enqueue_chain(
        &self,
        id: &str,
        max_retries: i64,
        shots: Vec<NewJob>,
    ) -> Result<Vec<JobId>, StoreError> {
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
                let due = if first { now } else { HELD.ms() };
                if super::core::insert_job(&tx, &j, now, due, first, Some((id.as_str(), shot)))? == 0 {
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

    async fn chain(&self, id: &str) -> Result<Option<Chain>, StoreError> {
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

    async fn chains(&self, limit: u32) -> Result<Vec<Chain>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {CHAIN_COLUMNS} FROM chains ORDER BY created_at DESC, id LIMIT ?1"
            ))?;
            let rows = st.query_map([limit], chain_from_row)?;
            rows.map(|r| finish_chain(r?)).collect()
        })
        .await
    }

    async fn chain_shots(&self, id: &str) -> Result<Vec<Shot>, StoreError> {
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

    async fn chains_due(&self, limit: u32) -> Result<Vec<Chain>, StoreError> {
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

    async fn set_chain_state(
        &self,
        id: &str,
        from: ChainState,
        to: ChainState,
        error: Option<String>,
    ) -> Result<ChainWrite, StoreError> {
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

    async fn chain_retry(
        &self,
        id: &str,
        state: ChainState,
        retries: i64,
        next_check_at: crate::Timestamp,
        error: String,
    ) -> Result<ChainWrite, StoreError> {
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

    async fn chain_later(
        &self,
        id: &str,
        next_check_at: crate::Timestamp,
        error: String,
    ) -> Result<(), StoreError> {
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

    async fn chain_stitched(&self, id: &str, s: Stitched) -> Result<ChainWrite, StoreError> {
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

    async fn next_chain_check(&self) -> Result<Option<crate::Timestamp>, StoreError> {
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

    async fn active_chains(&self) -> Result<i64, StoreError> {
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
