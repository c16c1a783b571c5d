//! SQLite implementation of [`OpsStore`] (declared in `store/ops.rs`; the PostgreSQL
//! implementation is `store/postgres/ops.rs`).

use super::SqliteStore;
use super::core::insert_event;
use crate::core::QueueStore;
use crate::job::JobState;
use crate::ops::*;
use crate::tier::Tier;
use crate::*;
use crate::{StoreError, now_ms};
use rusqlite::{TransactionBehavior, params};
use std::collections::BTreeMap;

/// Rows deleted per pruning transaction: small enough that the stages barely notice.
const PRUNE_BATCH: u32 = 500;

impl OpsStore for SqliteStore {
    async fn queued_models(&self) -> Result<Vec<String>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare_cached(
                "WITH RECURSIVE m(model) AS ( \
               SELECT (SELECT MIN(model) FROM jobs WHERE state = 'queued') \
               UNION ALL \
               SELECT (SELECT MIN(model) FROM jobs WHERE state = 'queued' AND model > m.model) \
               FROM m WHERE m.model IS NOT NULL) \
             SELECT model FROM m WHERE model IS NOT NULL",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn in_flight(&self) -> Result<HashMap<String, i64>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare_cached(
                "SELECT model, SUM(jobs) FROM in_flight_counts \
             GROUP BY model HAVING SUM(jobs) <> 0",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
        })
        .await
    }

    async fn flex_tokens_since(
        &self,
        model: &str,
        since: crate::Timestamp,
    ) -> Result<i64, StoreError> {
        let since_ms = since.ms();
        let model = model.to_string();
        self.call(move |c| {
            Ok(c.query_row(FLEX_TOKENS_SINCE, params![model, since_ms], |r| r.get(0))?)
        })
        .await
    }

    async fn expire_overdue(&self) -> Result<Vec<JobId>, StoreError> {
        self.call(|c| {
        let now = now_ms();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<String> = {
            let mut st = tx.prepare_cached(
                "UPDATE jobs SET state = 'expired', updated_at = ?1, finished_at = ?1, \
                 lease_token = lease_token + 1, last_error_code = 'deadline_passed', \
                 last_error_message = 'execution_expires_after passed before the job was submitted' \
                 WHERE state = 'queued' AND deadline_at IS NOT NULL AND deadline_at <= ?1 RETURNING id",
            )?;
            let rows = st.query_map([now], |r| r.get(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        for id in &ids {
            insert_event(&tx, id, now, Some(JobState::Queued), JobState::Expired, Some("deadline passed while queued locally"))?;
        }
        tx.commit()?;
        Ok(ids.into_iter().map(JobId::from).collect())
    })
    .await
    }

    async fn recent_generation_ms(
        &self,
        model: &str,
        tier: Tier,
        shape: Option<&str>,
        n: u32,
    ) -> Result<Option<i64>, StoreError> {
        let (model, tier, shape) = (model.to_string(), tier, shape.map(str::to_string));
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT gen_ms FROM jobs \
             WHERE model = ?1 AND service_tier = ?2 AND shape IS ?3 AND gen_ms IS NOT NULL \
             ORDER BY finished_at DESC LIMIT ?4",
            )?;
            let mut v: Vec<i64> = st
                .query_map(params![model, tier, shape, n], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if v.is_empty() {
                return Ok(None);
            }
            v.sort_unstable();
            Ok(Some(v[v.len() / 2]))
        })
        .await
    }

    async fn live_lease_owners(&self) -> Result<Vec<String>, StoreError> {
        self.call(move |c| {
        let mut st = c.prepare(
            "SELECT DISTINCT lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_until > ?1",
        )?;
        let rows = st.query_map([now_ms()], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })
    .await
    }

    async fn release_leases_of(&self, owner: &str) -> Result<usize, StoreError> {
        let owner = owner.to_string();
        self.call(move |c| {
            // `holder_dead` tells reconciliation the create's POST is over (its process is).
            Ok(super::fleet::release_leases(c, &owner, now_ms(), true)?)
        })
        .await
    }

    async fn leftovers(
        &self,
        since: crate::Timestamp,
    ) -> Result<Vec<(String, String, Option<String>, Option<String>)>, StoreError> {
        let since_ms = since.ms();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, state, last_error_code, last_error_message FROM jobs \
             WHERE (state = 'submit_unknown' AND last_error_code = 'parked') \
                OR (state NOT IN ('archived', 'succeeded', 'cancelled') AND updated_at >= ?1) \
             ORDER BY state, id",
            )?;
            let rows = st.query_map([since_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn pending_work(&self, archive: bool) -> Result<i64, StoreError> {
        self.call(move |c| {
        Ok(c.query_row(
            // A paused model's or batch's queued jobs wait for an operator, like a parked
            // job: `seedq run` does not wait for them (`seedq pause`).
            &format!("SELECT COUNT(*) FROM jobs q WHERE (state IN ('queued', 'submitting', 'submitted') \
             AND NOT (state = 'queued' AND COALESCE(last_error_code, '') IN (?2, ?4) AND next_attempt_at > ?3) \
             AND NOT (state = 'queued' AND NOT {NOT_PAUSED})) \
             OR (?1 AND state IN ('succeeded', 'archiving')) \
             OR (state = 'submit_unknown' AND COALESCE(last_error_code, '') <> 'parked')"),
            params![archive, budget::WAIT_BATCH, now_ms(), budget::WAIT_UNPRICED],
            |r| r.get(0),
        )?)
    })
    .await
    }

    async fn creates_since(
        &self,
        since: crate::Timestamp,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let since_ms = since.ms();
        self.call(move |c| {
            let mut st = c.prepare(
                // Only the default tier has an RPM at Ark; flex creates must not fill its window.
                "SELECT model, submit_started_at FROM jobs WHERE submit_started_at >= ?1 \
             AND service_tier = 'default'",
            )?;
            let rows = st.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn state_counts(&self) -> Result<HashMap<JobState, i64>, StoreError> {
        let rows = self.stats().await?;
        let mut m = HashMap::new();
        for r in rows {
            *m.entry(r.state).or_insert(0) += r.jobs;
        }
        Ok(m)
    }

    async fn next_due(
        &self,
        states: &'static [JobState],
    ) -> Result<Option<crate::Timestamp>, StoreError> {
        self.call(move |c| {
            let list = states
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(c.query_row(
                &format!("SELECT MIN(next_attempt_at) FROM jobs WHERE state IN ({list})"),
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn ops_snapshot(
        &self,
        flex_day_start: crate::Timestamp,
    ) -> Result<OpsSnapshot, StoreError> {
        let flex_day_start_ms = flex_day_start.ms();
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT state, model, service_tier, COUNT(*), COALESCE(SUM(est_tokens), 0), \
             COALESCE(SUM(usage_tokens), 0) FROM jobs GROUP BY state, model, service_tier",
            )?;
            let mut rows = Vec::new();
            let mut q = st.query([])?;
            while let Some(r) = q.next()? {
                let state: String = r.get(0)?;
                rows.push(StateRow {
                    state: state.parse().map_err(|e: crate::job::UnknownState| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    model: r.get(1)?,
                    tier: r.get(2)?,
                    jobs: r.get(3)?,
                    est_tokens: r.get(4)?,
                    usage_tokens: r.get(5)?,
                });
            }
            let oldest_queued = c.query_row(
                "SELECT MIN(created_at) FROM jobs WHERE state = 'queued'",
                [],
                |r| r.get(0),
            )?;
            // The same sum as `flex_tokens_since`, for every model at once.
            let mut st = c.prepare_cached(
                "SELECT model, COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs \
             WHERE service_tier = 'flex' AND submitted_at >= ?1 GROUP BY model",
            )?;
            let flex_today = st
                .query_map([flex_day_start_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            Ok(OpsSnapshot {
                rows,
                oldest_queued,
                flex_today,
            })
        })
        .await
    }

    async fn prune(
        &self,
        archived_before: crate::Timestamp,
        failed_before: crate::Timestamp,
        succeeded_too: bool,
    ) -> Result<PruneReport, StoreError> {
        let (archived_before_ms, failed_before_ms) = (archived_before.ms(), failed_before.ms());
        let mut report = PruneReport::new();
        loop {
            let batch = self
            .call(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let states: Vec<String> = {
                    let mut st = tx.prepare_cached(
                        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE \
                         ((state = 'archived' OR (?3 AND state = 'succeeded')) AND updated_at < ?1) \
                         OR (state IN ('failed', 'dead', 'expired', 'cancelled') AND updated_at < ?2) \
                         LIMIT ?4) RETURNING state",
                    )?;
                    st.query_map(
                        params![archived_before_ms, failed_before_ms, succeeded_too, PRUNE_BATCH],
                        |r| r.get(0),
                    )?
                    .collect::<Result<_, _>>()?
                };
                tx.commit()?;
                Ok(states)
            })
            .await?;
            if batch.is_empty() {
                if !report.is_empty() {
                    // Images no remaining job refers to go with the last job that used them.
                    self.call(|c| Ok(super::images::delete_orphans(c)?)).await?;
                }
                return Ok(report);
            }
            for s in batch {
                let state = s
                    .parse()
                    .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))?;
                *report.entry(state).or_insert(0) += 1;
            }
        }
    }

    async fn release_expired_leases(&self) -> Result<usize, StoreError> {
        self.call(|c| {
            let now = now_ms();
            Ok(c.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, \
             lease_token = lease_token + 1, next_attempt_at = MIN(next_attempt_at, ?1) \
             WHERE lease_until IS NOT NULL AND lease_until < ?1 \
             AND state IN ('submitted', 'submit_unknown')",
                [now],
            )?)
        })
        .await
    }

    async fn upkeep(&self) -> Result<i64, StoreError> {
        self.call(|c| {
            c.execute_batch("PRAGMA optimize")?;
            // A truncating checkpoint takes the write lock and then waits, through the busy
            // handler, for every reader to leave the WAL. One reader that stays (a stopped
            // process, a slow export) would hold every writer behind it for the whole busy
            // timeout. Without a busy handler SQLite tries once: it backfills what it can and
            // answers "busy" at once if it cannot have the write lock or readers remain, and
            // the next upkeep tries again.
            c.busy_handler(None)?;
            let checkpoint = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(2)?))
            });
            c.busy_handler(Some(super::conn::busy_wait))?;
            let (busy, done) = checkpoint?;
            Ok(if busy != 0 { -1 } else { done })
        })
        .await
    }

    async fn write_probe(&self) -> Result<(), StoreError> {
        // A write to a deleted file succeeds and is lost: readiness fails instead.
        self.check_identity()?;
        self.room()?;
        self.call(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.rollback()?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}
