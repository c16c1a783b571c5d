//! PostgreSQL implementation of the store's operational queries: the scheduling reads
//! (queued models, in-flight counts, next due, leases of dead workers …) and
//! the operations of `store/ops.rs` (metrics snapshot, pruning, lease sweeps, upkeep,
//! readiness probes).
//!
//! Same queries as SQLite, line by line; the differences are the dialect's (`LEAST` for
//! SQLite's two-argument `MIN`, `IS NOT DISTINCT FROM` for `IS`, `SUM` cast back to BIGINT
//! because PostgreSQL sums BIGINT as NUMERIC) and what a fleet of workers sharing the rows
//! needs (row locks where SQLite relied on its single writer).

use crate::ops::OpsStore;
use crate::tier::Tier;
use std::collections::{BTreeMap, HashMap};

use super::PgStore;
use crate::job::{JobId, JobState};
use crate::ops::{OpsSnapshot, PruneReport, StateRow};
use crate::{NOT_PAUSED, StoreError, budget, now_ms};

/// Rows deleted per pruning transaction (SQLite's `PRUNE_BATCH`): short transactions, so the
/// workers writing the same table barely notice.
const PRUNE_BATCH: i64 = 500;

/// How long the write probe waits for a row lock before it calls the database unwritable,
/// so `/readyz` answers instead of hanging behind a stuck transaction.
const PROBE_LOCK_TIMEOUT: &str = "5s";

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))
}

/// The flex tokens of a model submitted since a time: a range of the partial index
/// `jobs_flex_submitted` (migrations/postgres/0011_flex_day_index.sql).
pub(crate) const FLEX_TOKENS_SINCE: &str = "SELECT COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0)::BIGINT FROM jobs \
     WHERE model = $1 AND service_tier = 'flex' AND submitted_at >= $2";

/// Deletes the images no job refers to (SQLite: `images::delete_orphans`).
///
/// SQLite's single writer makes the check and the delete atomic against an enqueue that
/// reuses an image. Here another worker's enqueue may have found the image (`INSERT … ON
/// CONFLICT DO NOTHING`) but not committed its job yet, so the scan would not see the job and
/// would delete an image it needs. `LOCK TABLE images IN EXCLUSIVE MODE` conflicts with the
/// ROW EXCLUSIVE lock every `INSERT INTO images` holds to its transaction's end: the delete
/// waits for the enqueues in progress to commit (its statement then sees their jobs), and
/// later enqueues wait for it (then insert the image again). Readers (`inflate_body`) are not
/// blocked.
async fn delete_orphan_images(pg: &PgStore) -> Result<u64, StoreError> {
    let mut c = pg.conn().await?;
    let tx = c.transaction().await?;
    tx.batch_execute("LOCK TABLE images IN EXCLUSIVE MODE")
        .await?;
    let n = tx
        .execute(
            "DELETE FROM images WHERE NOT EXISTS \
             (SELECT 1 FROM jobs WHERE strpos(jobs.request_json, images.sha256) > 0)",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(n)
}

impl OpsStore for PgStore {
    /// [`crate::Store::queued_models`]: the same loose index scan, over `jobs_queue_tier`
    /// (one index seek per distinct model), which PostgreSQL runs as written.
    async fn queued_models(&self) -> Result<Vec<String>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "WITH RECURSIVE m(model) AS ( \
           SELECT (SELECT MIN(model) FROM jobs WHERE state = 'queued') \
           UNION ALL \
           SELECT (SELECT MIN(model) FROM jobs WHERE state = 'queued' AND model > m.model) \
           FROM m WHERE m.model IS NOT NULL) \
         SELECT model FROM m WHERE model IS NOT NULL",
            )
            .await?;
        c.query(&st, &[])
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    async fn in_flight(&self) -> Result<HashMap<String, i64>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT model, SUM(jobs)::BIGINT FROM in_flight_counts \
         GROUP BY model HAVING SUM(jobs) <> 0",
            )
            .await?;
        c.query(&st, &[])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn flex_tokens_since(
        &self,
        model: &str,
        since: crate::Timestamp,
    ) -> Result<i64, StoreError> {
        let since_ms = since.ms();
        let c = self.conn().await?;
        let st = c.prepare_cached(FLEX_TOKENS_SINCE).await?;
        Ok(c.query_one(&st, &[&model, &since_ms]).await?.try_get(0)?)
    }

    /// [`crate::Store::expire_overdue`]. One statement: the update and its events commit
    /// together. A row another worker is claiming at the same moment is re-checked after its
    /// commit (READ COMMITTED), so a job that left `queued` meanwhile is neither expired nor
    /// given an event.
    async fn expire_overdue(&self) -> Result<Vec<JobId>, StoreError> {
        let c = self.conn().await?;
        let now = now_ms();
        let st = c
            .prepare_cached(
                "WITH e AS ( \
           UPDATE jobs SET state = 'expired', updated_at = $1, finished_at = $1, \
           lease_token = lease_token + 1, last_error_code = 'deadline_passed', \
           last_error_message = 'execution_expires_after passed before the job was submitted' \
           WHERE state = 'queued' AND deadline_at IS NOT NULL AND deadline_at <= $1 \
           RETURNING id) \
         INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
         SELECT id, $1, 'queued', 'expired', 'deadline passed while queued locally' \
         FROM e ORDER BY id RETURNING job_id",
            )
            .await?;
        c.query(&st, &[&now])
            .await?
            .iter()
            .map(|r| Ok(JobId::from(r.try_get::<_, String>(0)?)))
            .collect()
    }

    /// [`crate::Store::recent_generation_ms`]. SQLite's `shape IS ?3` is two statements
    /// here (`= $3` or `IS NULL`): `IS NOT DISTINCT FROM` would not use the `jobs_history` index.
    async fn recent_generation_ms(
        &self,
        model: &str,
        tier: Tier,
        shape: Option<&str>,
        n: u32,
    ) -> Result<Option<i64>, StoreError> {
        let c = self.conn().await?;
        let n = i64::from(n);
        let rows = match shape {
            Some(shape) => {
                let st = c
                    .prepare_cached(
                        "SELECT gen_ms FROM jobs WHERE model = $1 AND service_tier = $2 \
                 AND shape = $3 AND gen_ms IS NOT NULL ORDER BY finished_at DESC LIMIT $4",
                    )
                    .await?;
                c.query(&st, &[&model, &tier, &shape, &n]).await?
            }
            None => {
                let st = c
                    .prepare_cached(
                        "SELECT gen_ms FROM jobs WHERE model = $1 AND service_tier = $2 \
                 AND shape IS NULL AND gen_ms IS NOT NULL ORDER BY finished_at DESC LIMIT $3",
                    )
                    .await?;
                c.query(&st, &[&model, &tier, &n]).await?
            }
        };
        let mut v = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<i64>, _>>()?;
        if v.is_empty() {
            return Ok(None);
        }
        v.sort_unstable();
        Ok(Some(v[v.len() / 2]))
    }

    async fn live_lease_owners(&self) -> Result<Vec<String>, StoreError> {
        let c = self.conn().await?;
        let st = c
    .prepare_cached(
        "SELECT DISTINCT lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_until > $1",
    )
    .await?;
        c.query(&st, &[&now_ms()])
            .await?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
    }

    async fn release_leases_of(&self, owner: &str) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let now = now_ms();
        // `holder_dead` tells reconciliation the create's POST is over (its process is).
        let st = c
    .prepare_cached(
        "UPDATE jobs SET next_attempt_at = LEAST(next_attempt_at, $2), lease_until = $2, \
         last_error_code = CASE WHEN state = 'submitting' THEN 'holder_dead' ELSE last_error_code END \
         WHERE lease_owner = $1 AND lease_until > $2",
    )
    .await?;
        let n = c.execute(&st, &[&owner, &now]).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn leftovers(
        &self,
        since: crate::Timestamp,
    ) -> Result<Vec<(String, String, Option<String>, Option<String>)>, StoreError> {
        let since_ms = since.ms();
        let c = self.conn().await?;
        // `COLLATE "C"`: byte order, as SQLite sorts, whatever the database's locale.
        let st = c
            .prepare_cached(
                "SELECT id, state, last_error_code, last_error_message FROM jobs \
         WHERE (state = 'submit_unknown' AND last_error_code = 'parked') \
            OR (state NOT IN ('archived', 'succeeded', 'cancelled') AND updated_at >= $1) \
         ORDER BY state COLLATE \"C\", id COLLATE \"C\"",
            )
            .await?;
        c.query(&st, &[&since_ms])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    async fn pending_work(&self, archive: bool) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        // A paused model's or batch's queued jobs wait for an operator, like a parked job: `seedq
        // run` does not wait for them (`seedq pause`).
        let st = c
            .prepare_cached(&format!(
                "SELECT COUNT(*) FROM jobs q WHERE (state IN ('queued', 'submitting', 'submitted') \
         AND NOT (state = 'queued' AND COALESCE(last_error_code, '') IN ($2::TEXT, $4::TEXT) \
                  AND next_attempt_at > $3) \
         AND NOT (state = 'queued' AND NOT {NOT_PAUSED})) \
         OR ($1::BOOLEAN AND state IN ('succeeded', 'archiving')) \
         OR (state = 'submit_unknown' AND COALESCE(last_error_code, '') <> 'parked')"
            ))
            .await?;
        Ok(c.query_one(
            &st,
            &[
                &archive,
                &budget::WAIT_BATCH,
                &now_ms(),
                &budget::WAIT_UNPRICED,
            ],
        )
        .await?
        .try_get(0)?)
    }

    async fn creates_since(
        &self,
        since: crate::Timestamp,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let since_ms = since.ms();
        let c = self.conn().await?;
        // Only the default tier has an RPM at Ark; flex creates must not fill its window.
        let st = c
            .prepare_cached(
                "SELECT model, submit_started_at FROM jobs WHERE submit_started_at >= $1 \
         AND service_tier = 'default'",
            )
            .await?;
        c.query(&st, &[&since_ms])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// [`crate::Store::state_counts`]: counted by state in the database, rather than
    /// through the per-model `stats` rows as SQLite does (same numbers, fewer rows).
    async fn state_counts(&self) -> Result<HashMap<JobState, i64>, StoreError> {
        let c = self.conn().await?;
        let st = c
            // The counts the triggers keep (migrations/postgres/0018_job_counts.sql).
            .prepare_cached(
                "SELECT state, SUM(jobs)::BIGINT FROM job_counts GROUP BY state \
                 HAVING SUM(jobs) > 0",
            )
            .await?;
        c.query(&st, &[])
            .await?
            .iter()
            .map(|r| Ok((parse_state(&r.try_get::<_, String>(0)?)?, r.try_get(1)?)))
            .collect()
    }

    /// [`crate::Store::next_due`]. One index seek per state (`jobs_due` is (state,
    /// next_attempt_at)), then the least: a plain `MIN … WHERE state = ANY($1)` is planned as a
    /// scan of every matching row once the statement's plan is generic (measured: 124 ms against
    /// 0.06 ms with 400 000 jobs), and the dispatcher asks this on every idle turn.
    async fn next_due(
        &self,
        states: &'static [JobState],
    ) -> Result<Option<crate::Timestamp>, StoreError> {
        let c = self.conn().await?;
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let st = c
            .prepare_cached(
                "SELECT MIN((SELECT MIN(next_attempt_at) FROM jobs WHERE state = s)) \
         FROM unnest($1::TEXT[]) AS s",
            )
            .await?;
        Ok(c.query_one(&st, &[&states]).await?.try_get(0)?)
    }

    /// [`crate::Store::ops_snapshot`]: the three reads are pipelined on one connection
    /// (sent together, answered in order), so `/metrics` still costs one round trip.
    async fn ops_snapshot(
        &self,
        flex_day_start: crate::Timestamp,
    ) -> Result<OpsSnapshot, StoreError> {
        let flex_day_start_ms = flex_day_start.ms();
        let c = self.conn().await?;
        let day: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&flex_day_start_ms];
        let (rows, oldest, flex) = tokio::try_join!(
    c.query(
        "SELECT state, model, service_tier, COUNT(*), COALESCE(SUM(est_tokens), 0)::BIGINT, \
         COALESCE(SUM(usage_tokens), 0)::BIGINT FROM jobs GROUP BY state, model, service_tier",
        &[],
    ),
    c.query_one("SELECT MIN(created_at) FROM jobs WHERE state = 'queued'", &[]),
    // The same sum as `flex_tokens_since`, for every model at once.
    c.query(
        "SELECT model, COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0)::BIGINT \
         FROM jobs WHERE service_tier = 'flex' AND submitted_at >= $1 GROUP BY model",
        &day,
    ),
)?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(StateRow {
                    state: parse_state(&r.try_get::<_, String>(0)?)?,
                    model: r.try_get(1)?,
                    tier: r.try_get(2)?,
                    jobs: r.try_get(3)?,
                    est_tokens: r.try_get(4)?,
                    usage_tokens: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let flex_today = flex
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<BTreeMap<_, _>, StoreError>>()?;
        Ok(OpsSnapshot {
            rows,
            oldest_queued: oldest.try_get(0)?,
            flex_today,
        })
    }

    /// [`crate::Store::prune`]: batches of [`PRUNE_BATCH`], each its own transaction.
    ///
    /// The candidates are locked `FOR UPDATE SKIP LOCKED`: a row another worker is changing
    /// right now (an operator's retry of a failed job) is left for the next prune, and a row
    /// that changed before the lock is re-checked against the cut-offs, so a job that was just
    /// retried is never deleted.
    async fn prune(
        &self,
        archived_before: crate::Timestamp,
        failed_before: crate::Timestamp,
        succeeded_too: bool,
    ) -> Result<PruneReport, StoreError> {
        let (archived_before_ms, failed_before_ms) = (archived_before.ms(), failed_before.ms());
        let mut report = PruneReport::new();
        loop {
            let states: Vec<String> = {
                let c = self.conn().await?;
                let st = c
            .prepare_cached(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE \
                 ((state = 'archived' OR ($3::BOOLEAN AND state = 'succeeded')) AND updated_at < $1) \
                 OR (state IN ('failed', 'dead', 'expired', 'cancelled') AND updated_at < $2) \
                 LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING state",
            )
            .await?;
                c.query(
                    &st,
                    &[
                        &archived_before_ms,
                        &failed_before_ms,
                        &succeeded_too,
                        &PRUNE_BATCH,
                    ],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?
            };
            if states.is_empty() {
                if !report.is_empty() {
                    // Images no remaining job refers to go with the last job that used them.
                    delete_orphan_images(self).await?;
                }
                return Ok(report);
            }
            for s in states {
                *report.entry(parse_state(&s)?).or_insert(0) += 1;
            }
        }
    }

    async fn release_expired_leases(&self) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, \
         lease_token = lease_token + 1, next_attempt_at = LEAST(next_attempt_at, $1) \
         WHERE lease_until IS NOT NULL AND lease_until < $1 \
         AND state IN ('submitted', 'submit_unknown')",
            )
            .await?;
        let n = c.execute(&st, &[&now_ms()]).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// [`crate::Store::upkeep`]. SQLite's upkeep is `PRAGMA optimize` (fresh planner
    /// statistics) and a WAL checkpoint. On PostgreSQL the server does most of it itself:
    /// autovacuum vacuums and analyzes the tables as they change, and the checkpointer bounds
    /// the WAL (a `CHECKPOINT` of our own would need a superuser). What is kept is the statistics
    /// refresh of the tables the claims plan over, and a vacuum of `jobs`: the claim steps over
    /// the index entries of every job that left `queued` since the last vacuum
    /// (migrations/postgres/0009_queue_vacuum.sql), so a burst of claims or a bulk transition
    /// slows every claim after it until one runs. Plain `VACUUM` takes no lock that blocks reads
    /// or writes. Returns 0 (no WAL frames).
    async fn upkeep(&self) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        // Two statements: VACUUM cannot run inside the implicit transaction of a multi-statement
        // simple query.
        c.batch_execute("VACUUM (ANALYZE) jobs").await?;
        c.batch_execute("ANALYZE paused, budget_holds").await?;
        Ok(0)
    }

    /// [`crate::Store::write_probe`]: a real row update, rolled back. It fails on a
    /// read-only server (a hot standby after a failover, `default_transaction_read_only`) and
    /// when a lock is held past [`PROBE_LOCK_TIMEOUT`], like SQLite's `BEGIN IMMEDIATE`.
    async fn write_probe(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{PROBE_LOCK_TIMEOUT}'; \
     UPDATE seedq_schema SET applied_at = applied_at \
     WHERE version = (SELECT MAX(version) FROM seedq_schema)"
        ))
        .await?;
        tx.rollback().await?;
        Ok(())
    }

    /// [`crate::Store::ping`]: a round trip to the server.
    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.query_one("SELECT 1", &[]).await?;
        Ok(())
    }
}
