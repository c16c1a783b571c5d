//! SQLite implementation of [`ArchiveStore`] (declared in `store/archive.rs`; the PostgreSQL
//! implementation is `store/postgres/archive.rs`).

use super::SqliteStore;
use super::core::{insert_event, job_from_row};
use crate::archive::*;
use crate::job::{JobId, JobState};
use crate::{JOB_COLUMNS, StoreError, now_ms};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Runs a fenced, state-preserving update of an `archiving` job; zero rows is a conflict.
fn fenced(
    c: &Connection,
    id: &JobId,
    token: i64,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<(), StoreError> {
    let n = c.execute(sql, args)?;
    if n == 0 {
        return Err(StoreError::Conflict {
            id: id.clone(),
            expected: JobState::Archiving,
            token,
        });
    }
    Ok(())
}

impl ArchiveStore for SqliteStore {
    async fn claim_for_archive(
        &self,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Option<ArchiveClaim>, StoreError> {
        let lease_ms = crate::span_ms(lease);
        let owner = owner.to_string();
        self.call(move |c| {
        let now = now_ms();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<(String, String)> = tx
            .query_row(
                "SELECT id, state FROM jobs \
                 WHERE (state = 'succeeded' AND next_attempt_at <= ?1) \
                    OR (state = 'archiving' AND COALESCE(lease_until, 0) <= ?1) \
                 ORDER BY url_expires_at IS NULL, url_expires_at, next_attempt_at, id LIMIT 1",
                [now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((id, from)) = found else {
            return Ok(None);
        };
        let claim = tx.query_row(
            &format!(
                "UPDATE jobs SET state = 'archiving', updated_at = ?1, lease_owner = ?2, \
                 lease_until = ?1 + ?3, next_attempt_at = ?1 + ?3, \
                 lease_token = lease_token + 1, archive_attempts = archive_attempts + 1 \
                 WHERE id = ?4 \
                 RETURNING {JOB_COLUMNS}, archive_attempts, archive_frame_sha256, archive_frame_size, \
                 result_meta"
            ),
            params![now, owner, lease_ms, id],
            |r| {
                // The extra columns follow the job's, however many those are.
                let n = JOB_COLUMNS.split(',').count();
                let frame: (Option<String>, Option<i64>) = (r.get(n + 1)?, r.get(n + 2)?);
                Ok(ArchiveClaim {
                    job: job_from_row(r)?,
                    attempts: r.get(n)?,
                    result_meta: r.get(n + 3)?,
                    frame: match frame {
                        (Some(sha), Some(size)) => Some((sha, size)),
                        _ => None,
                    },
                })
            },
        )?;
        let (from, detail) = if from == "archiving" {
            (JobState::Archiving, "lease ran out; claimed again for archive")
        } else {
            (JobState::Succeeded, "claimed for archive")
        };
        insert_event(&tx, &id, now, Some(from), JobState::Archiving, Some(detail))?;
        tx.commit()?;
        Ok(Some(claim))
    })
    .await
    }

    async fn extend_archive_lease(
        &self,
        id: &JobId,
        token: i64,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let lease_ms = crate::span_ms(lease);
        let id = id.clone();
        self.call(move |c| {
            let now = now_ms();
            let n = c.execute(
                "UPDATE jobs SET lease_until = ?1 + ?2, next_attempt_at = ?1 + ?2 \
             WHERE id = ?3 AND state = 'archiving' AND lease_token = ?4",
                params![now, lease_ms, id.as_str(), token],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn record_archive_urls(
        &self,
        id: &JobId,
        token: i64,
        video_url: String,
        last_frame_url: Option<String>,
        url_expires_at: crate::Timestamp,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.call(move |c| {
            fenced(
                c,
                &id,
                token,
                "UPDATE jobs SET video_url = ?1, \
             last_frame_url = COALESCE(?2, last_frame_url), url_expires_at = ?3, updated_at = ?4 \
             WHERE id = ?5 AND state = 'archiving' AND lease_token = ?6",
                &[
                    &video_url,
                    &last_frame_url,
                    &url_expires_at,
                    &now_ms(),
                    &id.as_str(),
                    &token,
                ],
            )
        })
        .await
    }

    async fn record_video_digest(
        &self,
        id: &JobId,
        token: i64,
        key: String,
        sha256: String,
        size: i64,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.call(move |c| {
            fenced(
                c,
                &id,
                token,
                "UPDATE jobs SET archive_key = ?1, archive_sha256 = ?2, archive_size = ?3 \
             WHERE id = ?4 AND state = 'archiving' AND lease_token = ?5",
                &[&key, &sha256, &size, &id.as_str(), &token],
            )
        })
        .await
    }

    async fn record_frame_digest(
        &self,
        id: &JobId,
        token: i64,
        sha256: String,
        size: i64,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.call(move |c| {
            fenced(
                c,
                &id,
                token,
                "UPDATE jobs SET archive_frame_sha256 = ?1, archive_frame_size = ?2 \
             WHERE id = ?3 AND state = 'archiving' AND lease_token = ?4",
                &[&sha256, &size, &id.as_str(), &token],
            )
        })
        .await
    }

    async fn frame_digest(&self, id: &str) -> Result<Option<(String, i64)>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let row: Option<(Option<String>, Option<i64>)> = c
                .query_row(
                    "SELECT archive_frame_sha256, archive_frame_size FROM jobs WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(match row {
                Some((Some(sha), Some(size))) => Some((sha, size)),
                _ => None,
            })
        })
        .await
    }

    async fn next_archive_due(&self) -> Result<Option<crate::Timestamp>, StoreError> {
        self.call(|c| {
            Ok(c.query_row(
                "SELECT MIN(t) FROM ( \
               SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'succeeded' \
               UNION ALL \
               SELECT MIN(COALESCE(lease_until, 0)) FROM jobs WHERE state = 'archiving')",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn archive_stats(&self) -> Result<ArchiveStats, StoreError> {
        self.call(|c| {
            Ok(c.query_row(
                // The counts the triggers keep (migrations/0018_job_counts.sql, whose
                // `result_expired` column counts RESULT_EXPIRED), not a scan of the jobs.
                "SELECT \
               COALESCE(SUM(CASE WHEN state = 'archived' THEN jobs END), 0), \
               COALESCE(SUM(CASE WHEN state = 'archived' THEN archive_bytes END), 0), \
               COALESCE(SUM(CASE WHEN state = 'succeeded' THEN jobs END), 0), \
               COALESCE(SUM(CASE WHEN state = 'succeeded' THEN archive_retried END), 0), \
               COALESCE(SUM(CASE WHEN state = 'archiving' THEN jobs END), 0), \
               COALESCE(SUM(CASE WHEN state = 'failed' THEN result_expired END), 0) \
             FROM job_counts",
                [],
                |r| {
                    Ok(ArchiveStats {
                        archived: r.get(0)?,
                        archived_bytes: r.get(1)?,
                        waiting: r.get(2)?,
                        retrying: r.get(3)?,
                        archiving: r.get(4)?,
                        result_expired: r.get(5)?,
                    })
                },
            )?)
        })
        .await
    }
}
