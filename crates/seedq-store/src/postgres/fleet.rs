//! PostgreSQL implementation of the fleet's store methods (the SQLite one is `store/sqlite/fleet.rs`):
//! the worker registry, singleton leases, and the claim within the account's limits.
//!
//! The claim serialises per (model, tier) with a transaction-scoped advisory lock, so the
//! in-flight count, the RPM and TPD counts and the claim are one atomic step across every
//! worker (the way Oban Pro's smart engine keeps global limits); candidates are taken
//! `FOR UPDATE SKIP LOCKED`, so a claim never waits on a row another statement holds (a
//! cancel, a poll).

use crate::fleet::FleetStore;
use crate::tier::Tier;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::core::{SERIALISED_PG, insert_event, insert_events};
use super::{PgStore, job_from_pg};
use crate::fleet::Room;
use crate::job::JobState;
use crate::{
    FleetLimits, JOB_COLUMNS, Job, LeaderRow, NOT_PAUSED, ResolutionScope, StoreError, WorkerRow,
    now_ms,
};

/// `store::fleet::room_in_tx` on PostgreSQL (same counts; see there).
async fn room_in_tx(
    c: &impl GenericClient,
    model: &str,
    tier: Tier,
    only: Option<&str>,
    limits: &FleetLimits,
    now: i64,
) -> Result<Room, StoreError> {
    let mut creates = i64::MAX;
    let since = now - crate::span_ms(limits.window);
    if let Some(rpm) = limits.rpm {
        // At most `rpm` rows are read: a full window is full whatever its true count.
        let n: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE model = $2 AND service_tier = $3 \
                 AND submit_started_at >= $1 LIMIT $4) w",
                &[&since, &model, &tier, &i64::from(rpm)],
            )
            .await?
            .try_get(0)?;
        creates = creates.min(i64::from(rpm) - n);
    }
    if let (Some(rpm), Some(res)) = (limits.resolution_rpm, only) {
        let n: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE model = $2 AND service_tier = $3 \
                 AND submit_started_at >= $1 AND (shape = $4 OR shape LIKE $4 || '/%') LIMIT $5) w",
                &[&since, &model, &tier, &res, &i64::from(rpm)],
            )
            .await?
            .try_get(0)?;
        creates = creates.min(i64::from(rpm) - n);
    }
    let tokens = match limits.tpd {
        None => None,
        // The day ended after the caller read its clock: this claim would be stamped (and
        // counted) in the next day, whose spend was not read. None fit; the caller asks again.
        Some(d) if now >= d.next.ms() => Some(0),
        Some(d) => {
            // The day's sum from the counters the triggers keep (store/counters.rs), and the
            // creates of the day before that may have reached Ark in this one (`FlexDay`).
            let spent = super::counters::flex_spent_in_tx(c, model, d.start.ms()).await?
                + flex_straddling_in_tx(c, model, &d).await?;
            Some(
                i64::try_from(d.tpd)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(spent),
            )
        }
    };
    Ok(Room { creates, tokens })
}

/// The sum [`flex_straddling_in_tx`] reads.
pub(crate) const FLEX_STRADDLING: &str = "SELECT COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0)::BIGINT FROM jobs \
         WHERE model = $1 AND service_tier = 'flex' \
         AND state IN ('submitting', 'submit_unknown') \
         AND submit_started_at >= $2 AND submit_started_at < $3";

/// The SQLite `flex_straddling_in_tx` on PostgreSQL.
async fn flex_straddling_in_tx(
    c: &impl GenericClient,
    model: &str,
    d: &crate::FlexDay,
) -> Result<i64, StoreError> {
    Ok(c.query_one(
        FLEX_STRADDLING,
        &[&model, &(d.start - d.straddle), &d.start],
    )
    .await?
    .try_get(0)?)
}

/// `store::fleet::release_leases` on PostgreSQL.
async fn release_leases(
    c: &impl GenericClient,
    owner: &str,
    now: i64,
    dead: bool,
) -> Result<usize, StoreError> {
    let n = c
        .execute(
            "UPDATE jobs SET next_attempt_at = LEAST(next_attempt_at, $2), lease_until = $2, \
             last_error_code = CASE WHEN $3 AND state = 'submitting' THEN 'holder_dead' \
                                    ELSE last_error_code END \
             WHERE lease_owner = $1 AND lease_until > $2",
            &[&owner, &now, &dead],
        )
        .await?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The upsert behind [`try_lead`] (see `store::fleet::lead`).
async fn lead(
    c: &impl GenericClient,
    name: &str,
    owner: &str,
    now: i64,
    ttl_ms: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(c.query_opt(
        "INSERT INTO leaders (name, owner, since, until) \
         VALUES ($1, $2, $3::bigint, $3::bigint + $4::bigint) \
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until, \
         since = CASE WHEN leaders.owner = excluded.owner THEN leaders.since \
                      ELSE excluded.since END \
         WHERE leaders.owner = excluded.owner OR leaders.until <= $3 \
         RETURNING until",
        &[&name, &owner, &now, &ttl_ms],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?)
}

impl FleetStore for PgStore {
    async fn register_worker(&self, w: WorkerRow) -> Result<(), StoreError> {
        let w: &WorkerRow = &w;

        let c = self.conn().await?;
        c.execute(
            "INSERT INTO workers (id, host, pid, version, started_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
     version = excluded.version, started_at = excluded.started_at, \
     heartbeat_at = excluded.heartbeat_at",
            &[
                &w.id,
                &w.host,
                &w.pid,
                &w.version,
                &w.started_at,
                &w.heartbeat_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn heartbeat_worker(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(c.execute(
            "UPDATE workers SET heartbeat_at = $2 WHERE id = $1",
            &[&id, &now],
        )
        .await?
            == 1)
    }

    async fn deregister_worker(&self, id: &str) -> Result<(), StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            tx.execute("DELETE FROM leaders WHERE owner = $1", &[&id])
                .await?;
            tx.execute("DELETE FROM workers WHERE id = $1", &[&id])
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, host, pid, version, started_at, heartbeat_at FROM workers \
         ORDER BY started_at, id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkerRow {
                    id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    pid: r.try_get(2)?,
                    version: r.try_get(3)?,
                    started_at: r.try_get(4)?,
                    heartbeat_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn reap_worker(
        &self,
        id: &str,
        lapsed_before: i64,
        dead: bool,
    ) -> Result<Option<usize>, StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let now = now_ms();
            let gone = tx
                .execute(
                    "DELETE FROM workers WHERE id = $1 AND heartbeat_at < $2",
                    &[&id, &lapsed_before],
                )
                .await?;
            if gone == 0 {
                return Ok(None);
            }
            let jobs = release_leases(&tx, id, now, dead).await?;
            tx.execute("DELETE FROM leaders WHERE owner = $1", &[&id])
                .await?;
            tx.commit().await?;
            Ok(Some(jobs))
        })
        .await
    }

    async fn drop_leadership_of(&self, owner: &str) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute("DELETE FROM leaders WHERE owner = $1", &[&owner])
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn beat(
        &self,
        id: &str,
        names: &[&'static str],
        ttl: std::time::Duration,
    ) -> Result<(bool, Vec<Option<i64>>), StoreError> {
        let ttl_ms = crate::span_ms(ttl);
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let now = now_ms();
            let alive = tx
                .execute(
                    "UPDATE workers SET heartbeat_at = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .await?
                == 1;
            let mut leads = Vec::with_capacity(names.len());
            for name in names {
                leads.push(lead(&tx, name, id, now, ttl_ms).await?);
            }
            tx.commit().await?;
            Ok((alive, leads))
        })
        .await
    }

    async fn try_lead(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        let ttl_ms = crate::span_ms(ttl);
        let c = self.conn().await?;
        lead(&c, name, owner, now_ms(), ttl_ms).await
    }

    async fn resign(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "DELETE FROM leaders WHERE name = $1 AND owner = $2",
            &[&name, &owner],
        )
        .await?;
        Ok(())
    }

    async fn rpm_window_full_since(
        &self,
        model: &str,
        tier: Tier,
        since: crate::Timestamp,
        rpm: u32,
    ) -> Result<Option<crate::Timestamp>, StoreError> {
        let since_ms = since.ms();
        let c = self.conn().await?;
        let offset = i64::from(rpm.max(1)) - 1;
        Ok(c.query_opt(
            "SELECT submit_started_at FROM jobs WHERE submit_started_at >= $1 AND model = $2 \
     AND service_tier = $3 ORDER BY submit_started_at DESC LIMIT 1 OFFSET $4",
            &[&since_ms, &model, &tier, &offset],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
    }

    async fn leaders(&self) -> Result<Vec<LeaderRow>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT name, owner, since, until FROM leaders ORDER BY name",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LeaderRow {
                    name: r.try_get(0)?,
                    owner: r.try_get(1)?,
                    since: r.try_get(2)?,
                    until: r.try_get(3)?,
                })
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn claim_for_submit_limited(
        &self,
        model: &str,
        tier: Tier,
        max_in_flight: u32,
        scope: ResolutionScope,
        limit: u32,
        owner: &str,
        lease: std::time::Duration,
        fleet: &FleetLimits,
    ) -> Result<Vec<Job>, StoreError> {
        let lease_ms = crate::span_ms(lease);
        let (only, only_cap, except) = match scope {
            ResolutionScope::All => (None, 0, "[]".to_string()),
            ResolutionScope::Only(res, cap) => (Some(res), i64::from(cap), "[]".to_string()),
            ResolutionScope::Except(list) => (
                None,
                0,
                serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()),
            ),
        };
        let candidates = format!(
            "SELECT id, priority, est_tokens FROM jobs q WHERE state = 'queued' AND model = $4 \
     AND next_attempt_at <= $1 AND service_tier = $5 \
     AND ($7::text IS NULL OR q.shape = $7 OR q.shape LIKE $7 || '/%') \
     AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(($8::text)::jsonb) e(value) \
         WHERE q.shape = e.value OR q.shape LIKE e.value || '/%') \
     AND {SERIALISED_PG} \
     AND {NOT_PAUSED} \
     ORDER BY priority DESC, id LIMIT $6 FOR UPDATE SKIP LOCKED"
        );
        let claim_sql = format!(
            "UPDATE jobs SET state = 'submitting', updated_at = $1, submit_started_at = $1, \
     attempts = attempts + 1, lease_owner = $2, lease_until = $1 + $3, \
     next_attempt_at = $1 + $3, lease_token = lease_token + 1 \
     WHERE id IN (SELECT id FROM ( \
       SELECT id, SUM(COALESCE(est_tokens, 0)) OVER ( \
           ORDER BY priority DESC, id ROWS UNBOUNDED PRECEDING) AS tokens \
       FROM ({candidates}) c) r WHERE $9::bigint IS NULL OR tokens <= $9::bigint) \
     RETURNING {JOB_COLUMNS}"
        );
        let defer_sql = format!(
            "UPDATE jobs SET next_attempt_at = $9::bigint, updated_at = $1 \
     WHERE id IN (SELECT id FROM ({candidates}) c) AND COALESCE(est_tokens, 0) > $10::bigint \
     RETURNING id, COALESCE(est_tokens, 0)"
        );
        let key = format!("{model}/{tier}");
        let (only, except, key, claim_sql, defer_sql) =
            (&only, &except, &key, &claim_sql, &defer_sql);
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let now = now_ms();
            // Every claim on (model, tier) waits here for the one before it to commit, so what
            // the counts below read is what the claims before made.
            // JIT off for this transaction: the planner cannot know that the `safety_identifier`
            // test short-circuits its subqueries, so it costs the claim in the billions, above
            // `jit_above_cost`, and compiling it took 2.5 s of a 2.8 s claim (`EXPLAIN (ANALYZE)`
            // with 100 000 in flight, docs/performance-claims.md) for a plan that reads ten rows.
            // `set_config(…, true)` is `SET LOCAL`: it ends with the transaction, also through a
            // pooler in transaction mode (a startup option would not).
            tx.execute(
        "SELECT set_config('jit', 'off', true), pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[key],
    )
    .await?;
            // The counters the triggers keep (store/counters.rs), not a count of the jobs.
            let in_flight = super::counters::in_flight_in_tx(&tx, model, tier, None).await?;
            let mut room = (i64::from(max_in_flight) - in_flight).min(i64::from(limit));
            if let Some(res) = only {
                let res_in_flight =
                    super::counters::in_flight_in_tx(&tx, model, tier, Some(res.as_str())).await?;
                room = room.min(only_cap - res_in_flight);
            }
            let account = room_in_tx(&tx, model, tier, only.as_deref(), fleet, now).await?;
            room = room.min(account.creates);
            if room <= 0 {
                return Ok(Vec::new());
            }
            // Planned for these parameters on every call, not cached: after five executions a
            // cached statement may switch to the generic plan, which walks `jobs_due` for the
            // `next_attempt_at` range and sorts every due queued job (2.6 s a claim with 20 000
            // queued, `seedq bench claims`) instead of stopping after `room` in claim order.
            let rows = tx
                .query(
                    claim_sql.as_str(),
                    &[
                        &now,
                        &owner,
                        &lease_ms,
                        &model,
                        &tier,
                        &room,
                        &only,
                        &except,
                        &account.tokens,
                    ],
                )
                .await?;
            let mut jobs = rows
                .iter()
                .map(job_from_pg)
                .collect::<Result<Vec<_>, _>>()?;
            // One statement for all the claim's events: the claim holds the tier's lock until it
            // commits, and a round trip per job kept the other claimers waiting for it.
            let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            insert_events(
                &tx,
                &ids,
                now,
                Some(JobState::Queued),
                JobState::Submitting,
                Some("claimed for submit"),
            )
            .await?;
            if let (
                Some(left),
                Some(crate::FlexDay {
                    tpd,
                    next: next_day,
                    ..
                }),
            ) = (account.tokens, fleet.tpd)
                && now < next_day.ms()
                && i64::try_from(jobs.len()).unwrap_or(i64::MAX) < room
            {
                // As on SQLite: the next candidates the day cannot take wait for the next day
                // (only when the claim stopped short of `room`; see there).
                let left = left - jobs.iter().map(|j| j.est_tokens.unwrap_or(0)).sum::<i64>();
                // $2 and $3 (owner, lease) are the claim's; they are bound here too, typed, so
                // both statements share one list of parameters.
                // Not cached either, for the same reason as the claim.
                let st = tx
                    .prepare_typed(defer_sql, &[Type::INT8, Type::TEXT, Type::INT8])
                    .await?;
                let rows = tx
                    .query(
                        &st,
                        &[
                            &now, &owner, &lease_ms, &model, &tier, &room, &only, &except,
                            &next_day, &left,
                        ],
                    )
                    .await?;
                for r in rows {
                    let (id, need): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
                    let spent = i64::try_from(tpd).unwrap_or(i64::MAX) - left;
                    let why = format!("flex TPD budget reached ({spent}+{need} > {tpd} tokens)");
                    insert_event(
                        &tx,
                        &id,
                        now,
                        Some(JobState::Queued),
                        JobState::Queued,
                        Some(&why),
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
            Ok(jobs)
        })
        .await
    }
}
