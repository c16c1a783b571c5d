//! PostgreSQL implementation of the archiver's queries (the SQLite one is `store/sqlite/archive.rs`).
//!
//! Several workers' archivers may claim at once: the claim takes its candidate
//! `FOR UPDATE SKIP LOCKED`, so two archivers never take the same job and never wait for each
//! other's claim. The bookkeeping writes are fenced exactly as on SQLite: the holder's lease
//! token and `archiving`, zero rows changed being a conflict.

use crate::archive::ArchiveStore;
use tokio_postgres::types::ToSql;

use super::core::insert_event;
use super::{PgStore, job_from_pg};
use crate::archive::{ArchiveClaim, ArchiveStats};
use crate::job::{JobId, JobState};
use crate::{JOB_COLUMNS, StoreError, now_ms};

/// Runs a fenced, state-preserving update of an `archiving` job; zero rows is a conflict.
async fn fenced(
    pg: &PgStore,
    id: &JobId,
    token: i64,
    sql: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<(), StoreError> {
    let c = pg.conn().await?;
    let st = c.prepare_cached(sql).await?;
    let n = c.execute(&st, args).await?;
    if n == 0 {
        return Err(StoreError::Conflict {
            id: id.clone(),
            expected: JobState::Archiving,
            token,
        });
    }
    Ok(())
}

impl ArchiveStore for PgStore {
    async fn claim_for_archive(
        &self,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Option<ArchiveClaim>, StoreError> {
        let lease_ms = crate::span_ms(lease);
        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // SKIP LOCKED: a job another archiver is claiming right now is not a candidate, so
            // concurrent claims neither double-claim nor queue behind each other.
            let pick = tx
                .prepare_cached(
                    "SELECT id, state FROM jobs \
             WHERE (state = 'succeeded' AND next_attempt_at <= $1) \
                OR (state = 'archiving' AND COALESCE(lease_until, 0) <= $1) \
             ORDER BY url_expires_at IS NULL, url_expires_at, next_attempt_at, id LIMIT 1 \
             FOR UPDATE SKIP LOCKED",
                )
                .await?;
            let found = tx.query_opt(&pick, &[&now]).await?;
            let Some(found) = found else {
                return Ok(None);
            };
            let id: String = found.try_get(0)?;
            let from: String = found.try_get(1)?;
            let take = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'archiving', updated_at = $1, lease_owner = $2, \
             lease_until = $1::BIGINT + $3::BIGINT, \
             next_attempt_at = $1::BIGINT + $3::BIGINT, \
             lease_token = lease_token + 1, archive_attempts = archive_attempts + 1 \
             WHERE id = $4 \
             RETURNING {JOB_COLUMNS}, archive_attempts, archive_frame_sha256, \
             archive_frame_size, result_meta"
                ))
                .await?;
            let r = tx.query_one(&take, &[&now, &owner, &lease_ms, &id]).await?;
            // The extra columns follow the job's, however many those are.
            let n = JOB_COLUMNS.split(',').count();
            let frame: (Option<String>, Option<i64>) = (r.try_get(n + 1)?, r.try_get(n + 2)?);
            let claim = ArchiveClaim {
                job: job_from_pg(&r)?,
                attempts: r.try_get(n)?,
                result_meta: r.try_get(n + 3)?,
                frame: match frame {
                    (Some(sha), Some(size)) => Some((sha, size)),
                    _ => None,
                },
            };
            let (from, detail) = if from == "archiving" {
                (
                    JobState::Archiving,
                    "lease ran out; claimed again for archive",
                )
            } else {
                (JobState::Succeeded, "claimed for archive")
            };
            insert_event(&tx, &id, now, Some(from), JobState::Archiving, Some(detail)).await?;
            tx.commit().await?;
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
        let now = now_ms();
        let c = self.conn().await?;
        // Typed sums: PostgreSQL cannot pick a `+` for two untyped parameters.
        let st = c
            .prepare_cached(
                "UPDATE jobs SET lease_until = $1::BIGINT + $2::BIGINT, \
         next_attempt_at = $1::BIGINT + $2::BIGINT \
         WHERE id = $3 AND state = 'archiving' AND lease_token = $4",
            )
            .await?;
        let n = c
            .execute(&st, &[&now, &lease_ms, &id.as_str(), &token])
            .await?;
        Ok(n == 1)
    }

    async fn record_archive_urls(
        &self,
        id: &JobId,
        token: i64,
        video_url: String,
        last_frame_url: Option<String>,
        url_expires_at: crate::Timestamp,
    ) -> Result<(), StoreError> {
        fenced(
            self,
            id,
            token,
            "UPDATE jobs SET video_url = $1, \
     last_frame_url = COALESCE($2, last_frame_url), url_expires_at = $3, updated_at = $4 \
     WHERE id = $5 AND state = 'archiving' AND lease_token = $6",
            &[
                &video_url,
                &last_frame_url,
                &url_expires_at,
                &now_ms(),
                &id.as_str(),
                &token,
            ],
        )
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
        fenced(
            self,
            id,
            token,
            "UPDATE jobs SET archive_key = $1, archive_sha256 = $2, archive_size = $3 \
     WHERE id = $4 AND state = 'archiving' AND lease_token = $5",
            &[&key, &sha256, &size, &id.as_str(), &token],
        )
        .await
    }

    async fn record_frame_digest(
        &self,
        id: &JobId,
        token: i64,
        sha256: String,
        size: i64,
    ) -> Result<(), StoreError> {
        fenced(
            self,
            id,
            token,
            "UPDATE jobs SET archive_frame_sha256 = $1, archive_frame_size = $2 \
     WHERE id = $3 AND state = 'archiving' AND lease_token = $4",
            &[&sha256, &size, &id.as_str(), &token],
        )
        .await
    }

    async fn frame_digest(&self, id: &str) -> Result<Option<(String, i64)>, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_opt(
                "SELECT archive_frame_sha256, archive_frame_size FROM jobs WHERE id = $1",
                &[&id],
            )
            .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let (sha, size): (Option<String>, Option<i64>) = (r.try_get(0)?, r.try_get(1)?);
        Ok(match (sha, size) {
            (Some(sha), Some(size)) => Some((sha, size)),
            _ => None,
        })
    }

    async fn next_archive_due(&self) -> Result<Option<crate::Timestamp>, StoreError> {
        let c = self.conn().await?;
        // PostgreSQL 15 wants the derived table named.
        let st = c
            .prepare_cached(
                "SELECT MIN(t) FROM ( \
           SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'succeeded' \
           UNION ALL \
           SELECT MIN(COALESCE(lease_until, 0)) FROM jobs WHERE state = 'archiving') AS due",
            )
            .await?;
        let r = c.query_one(&st, &[]).await?;
        Ok(r.try_get(0)?)
    }

    async fn archive_stats(&self) -> Result<ArchiveStats, StoreError> {
        let c = self.conn().await?;
        // The counts the triggers keep (migrations/postgres/0018_job_counts.sql, whose
        // `result_expired` column counts RESULT_EXPIRED), not a scan of the jobs. SUM of BIGINT
        // is NUMERIC, hence the casts.
        let r = c
            .query_one(
                "SELECT \
           COALESCE(SUM(jobs) FILTER (WHERE state = 'archived'), 0)::BIGINT, \
           COALESCE(SUM(archive_bytes) FILTER (WHERE state = 'archived'), 0)::BIGINT, \
           COALESCE(SUM(jobs) FILTER (WHERE state = 'succeeded'), 0)::BIGINT, \
           COALESCE(SUM(archive_retried) FILTER (WHERE state = 'succeeded'), 0)::BIGINT, \
           COALESCE(SUM(jobs) FILTER (WHERE state = 'archiving'), 0)::BIGINT, \
           COALESCE(SUM(result_expired) FILTER (WHERE state = 'failed'), 0)::BIGINT \
         FROM job_counts",
                &[],
            )
            .await?;
        Ok(ArchiveStats {
            archived: r.try_get(0)?,
            archived_bytes: r.try_get(1)?,
            waiting: r.try_get(2)?,
            retrying: r.try_get(3)?,
            archiving: r.try_get(4)?,
            result_expired: r.try_get(5)?,
        })
    }
}
