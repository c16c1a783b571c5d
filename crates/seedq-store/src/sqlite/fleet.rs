//! SQLite implementation of [`FleetStore`] (declared in `store/fleet.rs`; the PostgreSQL
//! implementation is `store/postgres/fleet.rs`).

use super::SqliteStore;
use super::core::{SERIALISED, insert_event, job_from_row};
use crate::fleet::*;
use crate::tier::Tier;
use crate::*;
use crate::{StoreError, now_ms};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// The upsert behind [`Store::try_lead`]: takes the row when free or expired at `now`, renews
/// it when `owner`'s; returns the new `until` when `owner` leads.
fn lead(
    conn: &Connection,
    name: &str,
    owner: &str,
    now: i64,
    ttl_ms: i64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "INSERT INTO leaders (name, owner, since, until) VALUES (?1, ?2, ?3, ?3 + ?4) \
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until, \
         since = CASE WHEN leaders.owner = excluded.owner THEN leaders.since \
                      ELSE excluded.since END \
         WHERE leaders.owner = excluded.owner OR leaders.until <= ?3 \
         RETURNING until",
    )?
    .query_row(params![name, owner, now, ttl_ms], |r| r.get(0))
    .optional()
}

/// The room the fleet's account limits leave on (`model`, `tier`), read inside the claim's
/// transaction. RPM counts creates started (`submit_started_at`, which the claim sets) in the
/// last window on the same model and tier, as `Store::creates_since` seeds the in-process
/// limiter; flex TPD sums the tokens of the day's flex jobs that made or may have made a task
/// (billed usage where known, else the estimate), which is what the dispatcher reserves before
/// its POST (worker/dispatch.rs).
pub(super) fn room_in_tx(
    tx: &Connection,
    model: &str,
    tier: Tier,
    only: Option<&str>,
    limits: &FleetLimits,
    now: i64,
) -> rusqlite::Result<Room> {
    let mut creates = i64::MAX;
    let since = now - crate::span_ms(limits.window);
    if let Some(rpm) = limits.rpm {
        // At most `rpm` rows are read: a full window is full whatever its true count.
        let n: i64 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE model = ?2 AND service_tier = ?3 \
                 AND submit_started_at >= ?1 LIMIT ?4)",
            )?
            .query_row(params![since, model, tier, rpm], |r| r.get(0))?;
        creates = creates.min(i64::from(rpm) - n);
    }
    if let (Some(rpm), Some(res)) = (limits.resolution_rpm, only) {
        let n: i64 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE model = ?2 AND service_tier = ?3 \
                 AND submit_started_at >= ?1 AND (shape = ?4 OR shape LIKE ?4 || '/%') LIMIT ?5)",
            )?
            .query_row(params![since, model, tier, res, rpm], |r| r.get(0))?;
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
            let spent = super::counters::flex_spent_in_tx(tx, model, d.start.ms())?
                + flex_straddling_in_tx(tx, model, &d)?;
            Some(
                i64::try_from(d.tpd)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(spent),
            )
        }
    };
    Ok(Room { creates, tokens })
}

/// The sum [`flex_straddling_in_tx`] reads. `INDEXED BY`: without statistics the planner
/// takes `jobs_creates`, a range of every create of the span, not only those in flight.
pub(crate) const FLEX_STRADDLING: &str = "SELECT COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs INDEXED BY jobs_flex_unanswered \
         WHERE model = ?1 AND service_tier = 'flex' \
         AND state IN ('submitting', 'submit_unknown') \
         AND submit_started_at >= ?2 AND submit_started_at < ?3";

/// Flex tokens of `model` claimed in the `straddle` before the day began whose create may
/// have arrived in it: the ones still unanswered (`FlexDay`). A range of the partial index
/// `jobs_flex_unanswered` (migrations/0023_flex_unanswered_index.sql): creates in flight only.
fn flex_straddling_in_tx(
    tx: &Connection,
    model: &str,
    d: &crate::FlexDay,
) -> rusqlite::Result<i64> {
    tx.prepare_cached(FLEX_STRADDLING)?
        .query_row(params![model, d.start - d.straddle, d.start], |r| r.get(0))
}

/// Ends every lease `owner` holds, so its jobs come due at once. `dead`: its process is known
/// to be gone (same host, pid not running), so a create it was sending is over and
/// reconciliation need not wait out the request timeout (`holder_dead`). A worker only known
/// by its lapsed heartbeat may still be sending: its submits wait like any expired lease.
pub(super) fn release_leases(
    conn: &Connection,
    owner: &str,
    now: i64,
    dead: bool,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE jobs SET next_attempt_at = MIN(next_attempt_at, ?2), lease_until = ?2, \
         last_error_code = CASE WHEN ?3 AND state = 'submitting' THEN 'holder_dead' \
                                ELSE last_error_code END \
         WHERE lease_owner = ?1 AND lease_until > ?2",
    )?
    .execute(params![owner, now, dead])
}

impl FleetStore for SqliteStore {
    async fn register_worker(&self, w: WorkerRow) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO workers (id, host, pid, version, started_at, heartbeat_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
             version = excluded.version, started_at = excluded.started_at, \
             heartbeat_at = excluded.heartbeat_at",
                params![w.id, w.host, w.pid, w.version, w.started_at, w.heartbeat_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn heartbeat_worker(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            Ok(
                c.prepare_cached("UPDATE workers SET heartbeat_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now])?
                    == 1,
            )
        })
        .await
    }

    async fn deregister_worker(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM leaders WHERE owner = ?1", [&id])?;
            tx.execute("DELETE FROM workers WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, host, pid, version, started_at, heartbeat_at FROM workers \
             ORDER BY started_at, id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(WorkerRow {
                    id: r.get(0)?,
                    host: r.get(1)?,
                    pid: r.get(2)?,
                    version: r.get(3)?,
                    started_at: r.get(4)?,
                    heartbeat_at: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn reap_worker(
        &self,
        id: &str,
        lapsed_before: i64,
        dead: bool,
    ) -> Result<Option<usize>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gone = tx.execute(
                "DELETE FROM workers WHERE id = ?1 AND heartbeat_at < ?2",
                params![id, lapsed_before],
            )?;
            if gone == 0 {
                return Ok(None);
            }
            let jobs = release_leases(&tx, &id, now, dead)?;
            tx.execute("DELETE FROM leaders WHERE owner = ?1", [&id])?;
            tx.commit()?;
            Ok(Some(jobs))
        })
        .await
    }

    async fn drop_leadership_of(&self, owner: &str) -> Result<usize, StoreError> {
        let owner = owner.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM leaders WHERE owner = ?1", [owner])?))
            .await
    }

    async fn beat(
        &self,
        id: &str,
        names: &[&'static str],
        ttl: std::time::Duration,
    ) -> Result<(bool, Vec<Option<i64>>), StoreError> {
        let ttl_ms = crate::span_ms(ttl);
        let (id, names) = (id.to_string(), names.to_vec());
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let alive = tx
                .prepare_cached("UPDATE workers SET heartbeat_at = ?2 WHERE id = ?1")?
                .execute(params![id, now])?
                == 1;
            let mut leads = Vec::with_capacity(names.len());
            for name in names {
                leads.push(lead(&tx, name, &id, now, ttl_ms)?);
            }
            tx.commit()?;
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
        let (name, owner) = (name.to_string(), owner.to_string());
        self.call(move |c| Ok(lead(c, &name, &owner, now_ms(), ttl_ms)?))
            .await
    }

    async fn resign(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let (name, owner) = (name.to_string(), owner.to_string());
        self.call(move |c| {
            c.execute(
                "DELETE FROM leaders WHERE name = ?1 AND owner = ?2",
                [name, owner],
            )?;
            Ok(())
        })
        .await
    }

    async fn rpm_window_full_since(
        &self,
        model: &str,
        tier: Tier,
        since: crate::Timestamp,
        rpm: u32,
    ) -> Result<Option<crate::Timestamp>, StoreError> {
        let since_ms = since.ms();
        let (model, tier) = (model.to_string(), tier);
        self.call(move |c| {
            Ok(c.prepare_cached(
                "SELECT submit_started_at FROM jobs WHERE submit_started_at >= ?1 AND model = ?2 \
             AND service_tier = ?3 ORDER BY submit_started_at DESC LIMIT 1 OFFSET ?4",
            )?
            .query_row(
                params![since_ms, model, tier, i64::from(rpm.max(1)) - 1],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn leaders(&self) -> Result<Vec<LeaderRow>, StoreError> {
        self.call(|c| {
            let mut st =
                c.prepare("SELECT name, owner, since, until FROM leaders ORDER BY name")?;
            let rows = st.query_map([], |r| {
                Ok(LeaderRow {
                    name: r.get(0)?,
                    owner: r.get(1)?,
                    since: r.get(2)?,
                    until: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

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
        let fleet = fleet.clone();
        let (model, tier, owner) = (model.to_string(), tier, owner.to_string());
        let (only, only_cap, except) = match scope {
            ResolutionScope::All => (None, 0, "[]".to_string()),
            ResolutionScope::Only(res, cap) => (Some(res), i64::from(cap), "[]".to_string()),
            ResolutionScope::Except(list) => (
                None,
                0,
                serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()),
            ),
        };
        self.call(move |c| {
        let now = now_ms();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The counters the triggers keep (store/counters.rs), not a count of the jobs:
        // the claim costs the same with 100 or 100 000 tasks in flight.
        let in_flight = super::counters::in_flight_in_tx(&tx, &model, tier, None)?;
        let mut room = (i64::from(max_in_flight) - in_flight).min(i64::from(limit));
        if let Some(res) = &only {
            let res_in_flight = super::counters::in_flight_in_tx(&tx, &model, tier, Some(res))?;
            room = room.min(only_cap - res_in_flight);
        }
        // The account's RPM and flex TPD, for every worker on this database (store/fleet.rs).
        let account = room_in_tx(&tx, &model, tier, only.as_deref(), &fleet, now)?;
        room = room.min(account.creates);
        if room <= 0 {
            return Ok(Vec::new());
        }
        // The due queued jobs in claim order (at most `room`). INDEXED BY: without
        // statistics SQLite picks `jobs_due` for the `next_attempt_at` range and sorts
        // every due queued job, 1.8 s a claim with 1 000 000 queued (`seedq bench
        // claims`); walking the tier's queue index in claim order stops after `room`.
        let candidates = format!(
            "SELECT id, priority, est_tokens FROM jobs q INDEXED BY jobs_queue_tier WHERE state = 'queued' AND model = ?4 \
             AND next_attempt_at <= ?1 AND service_tier = ?5 \
             AND (?7 IS NULL OR q.shape = ?7 OR q.shape LIKE ?7 || '/%') \
             AND NOT EXISTS (SELECT 1 FROM json_each(?8) e \
                 WHERE q.shape = e.value OR q.shape LIKE e.value || '/%') \
             AND {SERIALISED} \
             AND {NOT_PAUSED} \
             ORDER BY priority DESC, id LIMIT ?6"
        );
        let mut jobs = {
            // Flex TPD: the candidates in claim order while their running token sum fits.
            let mut st = tx.prepare_cached(&format!(
                "UPDATE jobs SET state = 'submitting', updated_at = ?1, submit_started_at = ?1, \
                 attempts = attempts + 1, lease_owner = ?2, lease_until = ?1 + ?3, \
                 next_attempt_at = ?1 + ?3, lease_token = lease_token + 1 \
                 WHERE id IN (SELECT id FROM ( \
                   SELECT id, SUM(COALESCE(est_tokens, 0)) OVER ( \
                       ORDER BY priority DESC, id ROWS UNBOUNDED PRECEDING) AS tokens \
                   FROM ({candidates})) WHERE ?9 IS NULL OR tokens <= ?9) \
                 RETURNING {JOB_COLUMNS}"
            ))?;
            let rows = st.query_map(
                params![now, owner, lease_ms, model, tier, room, only, except, account.tokens],
                job_from_row,
            )?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        for j in &jobs {
            insert_event(&tx, j.id.as_str(), now, Some(JobState::Queued), JobState::Submitting, Some("claimed for submit"))?;
        }
        // (Not when the day has ended: the next one's spend was not read.) Only when the
        // claim stopped short of `room`, which is when the budget may have cut it: the day's
        // limit is the claim's own token sum above, and this only spares later claims from
        // scanning jobs that cannot fit. After a full claim the next claim finds any such job
        // (it takes none, stops short, and puts it off then); running this after every claim
        // was a second scan of the queue under the claim lock, the PostgreSQL claim's largest
        // statement in a 100 000-job flex run (docs/performance-fleet.md).
        if let (Some(left), Some(crate::FlexDay { tpd, next: next_day, .. })) = (account.tokens, fleet.tpd)
            && now < next_day.ms()
            && i64::try_from(jobs.len()).unwrap_or(i64::MAX) < room
        {
            // The next candidates that the day's budget cannot take wait for the next day,
            // as the dispatcher's own reservation does (worker/dispatch.rs `submit`).
            let left = left - jobs.iter().map(|j| j.est_tokens.unwrap_or(0)).sum::<i64>();
            let mut st = tx.prepare_cached(&format!(
                "UPDATE jobs SET next_attempt_at = ?9, updated_at = ?1 \
                 WHERE id IN (SELECT id FROM ({candidates})) AND COALESCE(est_tokens, 0) > ?10 \
                 RETURNING id, COALESCE(est_tokens, 0)"
            ))?;
            let waiting = st
                .query_map(
                    params![now, owner, lease_ms, model, tier, room, only, except, next_day, left],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            for (id, need) in waiting {
                let spent = i64::try_from(tpd).unwrap_or(i64::MAX) - left;
                let why = format!("flex TPD budget reached ({spent}+{need} > {tpd} tokens)");
                insert_event(&tx, &id, now, Some(JobState::Queued), JobState::Queued, Some(&why))?;
            }
        }
        tx.commit()?;
        jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        Ok(jobs)
    })
    .await
    }
}
