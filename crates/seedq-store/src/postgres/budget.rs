//! PostgreSQL implementation of the spend caps (`store/budget.rs`; SQLite: `store/sqlite/budget.rs`).
//!
//! On SQLite the check and the reservation are atomic because `BEGIN IMMEDIATE` serialises
//! every writer. Here several workers reserve at once, and two transactions that each read the
//! sum of holds before the other inserts would both take the last of a cap. So
//! [`budget_reserve`] first takes a transaction-scoped advisory lock per budget its hold
//! counts against and it checks: the batch, the day (when a daily cap is set) and the model's
//! day (when a per-model daily cap is set). Reservations under the same cap queue on the lock
//! for the few statements of the check; others (another batch, no daily cap) do not wait for
//! each other. The locks are taken in that fixed order, so two reservations never wait on
//! each other in a circle; a deadlock that happens anyway (a hash collision) is retried.
//!
//! A batch without a cap has nothing to check, so its reservations take the batch's lock
//! shared and do not queue behind each other: with one exclusive lock every job of a large
//! uncapped batch waited for the one before it to finish its round trips (31 of 46 waiting
//! backends in a 100 000-job flex run, docs/performance-fleet.md). Setting a batch's caps
//! takes the lock exclusive, so no uncapped reservation is between its read of the caps and
//! its insert when a cap appears; a reservation that took the lock shared and then finds a cap
//! starts again with it exclusive.
//!
//! Daily caps come from each worker's config: every worker of a fleet must have the same
//! `budget` section, or a worker without the cap does not queue on its lock.

use super::PgStore;
use crate::budget::BudgetStore;
use crate::budget::{
    BatchSpend, DailyCaps, HoldRequest, HoldStamp, Refusal, Scope, UNITS_PER_FEN, WAIT_BATCH,
    WAIT_DAILY, WAIT_UNPRICED, next_stamp, renamed, unpriced,
};
use crate::{StoreError, now_ms};

/// Sums of hold units and tokens over the holds `filter` selects (SQLite: `sums`).
async fn sums(
    tx: &deadpool_postgres::Transaction<'_>,
    filter: &str,
    p: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(i64, i64), StoreError> {
    let st = tx
        .prepare_cached(&format!(
            "SELECT COALESCE(SUM(COALESCE(billed_tokens, tokens) * rate), 0)::BIGINT, \
                    COALESCE(SUM(COALESCE(billed_tokens, tokens)), 0)::BIGINT \
             FROM budget_holds WHERE {filter}"
        ))
        .await?;
    let r = tx.query_one(&st, p).await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// What a batch's pruned holds amounted to (SQLite: `settled`).
async fn settled(
    c: &impl deadpool_postgres::GenericClient,
    batch: &str,
) -> Result<(i64, i64), StoreError> {
    Ok(c.query_opt(
        "SELECT units, tokens FROM budget_settled WHERE batch_id = $1",
        &[&batch],
    )
    .await?
    .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?)))
    .transpose()?
    .unwrap_or((0, 0)))
}

/// Makes every job waiting on a budget due now (SQLite: `wake`).
async fn wake(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: Option<&str>,
    now: i64,
) -> Result<usize, StoreError> {
    let st = tx
        .prepare_cached(
            "UPDATE jobs SET next_attempt_at = $1 WHERE state = 'queued' AND next_attempt_at > $1 \
             AND (last_error_code IN ($2, $5) \
                  OR (last_error_code = $3 AND ($4::TEXT IS NULL OR batch_id = $4)))",
        )
        .await?;
    let n = tx
        .execute(
            &st,
            &[&now, &WAIT_DAILY, &WAIT_BATCH, &batch, &WAIT_UNPRICED],
        )
        .await?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The advisory lock of a batch's caps.
fn batch_lock(batch: &str) -> String {
    format!("seedq/budget/batch/{batch}")
}

/// Takes the advisory lock `name` until the transaction ends: shared, or exclusive.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
const LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))";

/// A batch's caps (cost in fen, tokens); `None` when the batch has no row.
async fn batch_caps(
    c: &impl deadpool_postgres::GenericClient,
    batch: &str,
) -> Result<Option<(Option<i64>, Option<i64>)>, StoreError> {
    c.query_opt(
        "SELECT max_cost_fen, max_tokens FROM batches WHERE name = $1",
        &[&batch],
    )
    .await?
    .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?)))
    .transpose()
}

fn is_capped(caps: Option<(Option<i64>, Option<i64>)>) -> bool {
    caps.is_some_and(|(f, t)| f.is_some() || t.is_some())
}

/// The advisory-lock names a reservation queues on after its batch's, in the order it takes
/// them.
fn lock_names(req: &HoldRequest, daily: DailyCaps) -> Vec<String> {
    let mut names = Vec::new();
    if daily.all_fen.is_some() {
        names.push(format!("seedq/budget/day/{}", req.day_start.ms()));
    }
    if daily.model_fen.is_some() {
        names.push(format!(
            "seedq/budget/day/{}/{}",
            req.day_start.ms(),
            req.model
        ));
    }
    names
}

/// A batch's jobs waiting on a cap: read from `jobs_budget_waiting`
/// (migrations/postgres/0012_budget_waiting_index.sql), not a scan of the batch.
pub(crate) const BATCH_WAITING: &str = "SELECT COUNT(*) FROM jobs WHERE batch_id = $1 \
     AND state = 'queued' AND last_error_code IN ($2, $3, $4)";

impl BudgetStore for PgStore {
    async fn budget_reserve(
        &self,
        req: HoldRequest,
        daily: DailyCaps,
    ) -> Result<Result<HoldStamp, Refusal>, StoreError> {
        let req: &HoldRequest = &req;

        let names = lock_names(req, daily);
        let names = &names;
        self.retry(|| async move {
            // The batch's lock is taken exclusive when the batch is capped: a guess from its
            // caps read before the lock, checked by reading them again once it is held.
            let mut exclusive = false;
            loop {
                let mut c = self.conn().await?;
                let tx = c.transaction().await?;
                let lock = tx.prepare_cached(LOCK).await?;
                let mut caps = None;
                if let Some(batch) = &req.batch {
                    exclusive = exclusive || is_capped(batch_caps(&tx, batch).await?);
                    let st = if exclusive { LOCK } else { LOCK_SHARED };
                    tx.execute(&tx.prepare_cached(st).await?, &[&batch_lock(batch)])
                        .await?;
                    caps = batch_caps(&tx, batch).await?;
                    if is_capped(caps) && !exclusive {
                        // A cap was set since the guess: check it under the exclusive lock.
                        exclusive = true;
                        continue;
                    }
                }
                for name in names {
                    tx.execute(&lock, &[name]).await?;
                }
                // A hold still here belongs to an earlier create whose outcome stayed unknown (a
                // parked job an operator retried): it may have been billed, so it keeps counting,
                // under a name of its own. So does the hold of an owner that lost the job's lease
                // before its POST: that owner releases it by its stamp, under the new name.
                let prev: Option<i64> = tx
                    .query_opt(
                        "UPDATE budget_holds SET job_id = job_id || '#' || created_at::TEXT \
             WHERE job_id = $1 RETURNING created_at",
                        &[&req.job_id],
                    )
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                let stamp = next_stamp(prev, now_ms());
                let need = req.tokens.saturating_mul(req.rate);
                let mut checks: Vec<(Scope, i64, i64)> = Vec::new();
                if let Some(batch) = &req.batch {
                    let capped = is_capped(caps);
                    if let Some(r) = unpriced(req, capped, daily) {
                        return Ok(Err(r));
                    }
                    if let Some((fen, max_tokens)) = caps
                        && (fen.is_some() || max_tokens.is_some())
                    {
                        let (units, tokens) = sums(&tx, "batch_id = $1", &[batch]).await?;
                        let (su, st) = settled(&tx, batch).await?;
                        let (units, tokens) = (units + su, tokens + st);
                        if let Some(fen) = fen {
                            checks.push((
                                Scope::BatchCost,
                                units,
                                fen.saturating_mul(UNITS_PER_FEN),
                            ));
                        }
                        if let Some(t) = max_tokens
                            && tokens + req.tokens > t
                        {
                            return Ok(Err(Refusal {
                                scope: Scope::BatchTokens,
                                spent: tokens,
                                need: req.tokens,
                                cap: t,
                            }));
                        }
                    }
                }
                if let Some(r) = unpriced(req, false, daily) {
                    return Ok(Err(r));
                }
                if let Some(fen) = daily.all_fen {
                    let (units, _) = sums(&tx, "day_start = $1", &[&req.day_start]).await?;
                    checks.push((Scope::Daily, units, fen.saturating_mul(UNITS_PER_FEN)));
                }
                if let Some(fen) = daily.model_fen {
                    let (units, _) = sums(
                        &tx,
                        "day_start = $1 AND model = $2",
                        &[&req.day_start, &req.model],
                    )
                    .await?;
                    checks.push((Scope::ModelDaily, units, fen.saturating_mul(UNITS_PER_FEN)));
                }
                // The cap of the key that created the job through a door (store/api.rs). Its lock
                // is always taken after the others, so the order stays the same everywhere.
                let key: Option<(String, Option<i64>)> = tx
        .query_opt(
            "SELECT k.id, k.max_cost_fen FROM api_jobs a JOIN api_keys k ON k.id = a.api_key \
             WHERE a.job_id = $1",
            &[&req.job_id],
        )
        .await?
        .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()?;
                if let Some((key, Some(fen))) = key {
                    tx.execute(&lock, &[&format!("budget-key:{key}")]).await?;
                    let (units, _) = sums(
                    &tx,
                    "day_start = $1 AND job_id IN (SELECT job_id FROM api_jobs WHERE api_key = $2)",
                    &[&req.day_start, &key],
                )
                .await?;
                    checks.push((Scope::KeyDaily, units, fen.saturating_mul(UNITS_PER_FEN)));
                    // An unpriced model (rate 0) or a job of unknown size reserves nothing, so the sum
                    // could never reach the key's cap: a capped key may only spend what can be counted.
                    if need == 0 {
                        return Ok(Err(Refusal {
                            scope: Scope::KeyDaily,
                            spent: units,
                            need,
                            cap: fen.saturating_mul(UNITS_PER_FEN),
                        }));
                    }
                }
                for (scope, spent, cap) in checks {
                    if spent.saturating_add(need) > cap {
                        // Dropping the transaction rolls it back: the renamed hold keeps its name.
                        return Ok(Err(Refusal {
                            scope,
                            spent,
                            need,
                            cap,
                        }));
                    }
                }
                tx.execute(
        "INSERT INTO budget_holds (job_id, batch_id, model, day_start, tokens, rate, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &req.job_id,
            &req.batch,
            &req.model,
            &req.day_start,
            &req.tokens,
            &req.rate,
            &stamp.0,
        ],
    )
    .await?;
                tx.commit().await?;
                return Ok(Ok(stamp));
            }
        })
        .await
    }

    async fn budget_release_hold(
        &self,
        job_id: &str,
        stamp: HoldStamp,
    ) -> Result<bool, StoreError> {
        let old = &renamed(job_id, stamp);
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let n = tx
        .execute(
            "DELETE FROM budget_holds WHERE (job_id = $1 AND created_at = $2) OR job_id = $3",
            &[&job_id, &stamp.0, old],
        )
        .await?;
            if n > 0 {
                wake(&tx, None, now_ms()).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    async fn budget_release(&self, job_id: &str) -> Result<bool, StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let n = tx
                .execute("DELETE FROM budget_holds WHERE job_id = $1", &[&job_id])
                .await?;
            if n > 0 {
                wake(&tx, None, now_ms()).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    async fn budget_commit(&self, job_id: &str, billed_tokens: i64) -> Result<(), StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let reserved: Option<i64> = tx
                .query_opt(
                    "SELECT tokens FROM budget_holds WHERE job_id = $1 FOR UPDATE",
                    &[&job_id],
                )
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            if let Some(reserved) = reserved {
                tx.execute(
                    "UPDATE budget_holds SET billed_tokens = $2 WHERE job_id = $1",
                    &[&job_id, &billed_tokens],
                )
                .await?;
                if billed_tokens < reserved {
                    wake(&tx, None, now_ms()).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn set_batch_budget(
        &self,
        batch: &str,
        max_cost_fen: Option<Option<i64>>,
        max_tokens: Option<Option<i64>>,
    ) -> Result<usize, StoreError> {
        self.retry(|| async move {
            let now = now_ms();
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // Exclusive: no reservation that read the batch as uncapped is still on its way
            // to its insert (they hold the lock shared until they commit; see the module).
            tx.execute(LOCK, &[&batch_lock(batch)]).await?;
            tx.execute(
        "INSERT INTO batches (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&batch, &now],
    )
    .await?;
            if let Some(v) = max_cost_fen {
                tx.execute(
                    "UPDATE batches SET max_cost_fen = $2 WHERE name = $1",
                    &[&batch, &v],
                )
                .await?;
            }
            if let Some(v) = max_tokens {
                tx.execute(
                    "UPDATE batches SET max_tokens = $2 WHERE name = $1",
                    &[&batch, &v],
                )
                .await?;
            }
            let woken = wake(&tx, Some(batch), now).await?;
            tx.commit().await?;
            Ok(woken)
        })
        .await
    }

    /// [`crate::Store::wake_budget_waiters`]. One statement: its own transaction.
    async fn wake_budget_waiters(&self) -> Result<usize, StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            let n = wake(&tx, None, now_ms()).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    async fn batch_spend(&self, batch: &str) -> Result<BatchSpend, StoreError> {
        let c = self.conn().await?;
        let caps: Option<(Option<i64>, Option<i64>)> = c
            .query_opt(
                "SELECT max_cost_fen, max_tokens FROM batches WHERE name = $1",
                &[&batch],
            )
            .await?
            .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
        let (max_cost_fen, max_tokens) = caps.unwrap_or_default();
        let r = c
            .query_one(
                // Pruned holds were billed: their units count as spent and as billed. One
                // statement, so a prune committing meanwhile is seen whole or not at all.
                "SELECT COALESCE(SUM(u), 0)::BIGINT, COALESCE(SUM(b), 0)::BIGINT, \
                COALESCE(SUM(t), 0)::BIGINT FROM ( \
           SELECT COALESCE(billed_tokens, tokens) * rate AS u, billed_tokens * rate AS b, \
                  COALESCE(billed_tokens, tokens) AS t \
           FROM budget_holds WHERE batch_id = $1 \
           UNION ALL SELECT units, units, tokens FROM budget_settled WHERE batch_id = $1) h",
                &[&batch],
            )
            .await?;
        let waiting = c
            .query_one(
                BATCH_WAITING,
                &[&batch, &WAIT_BATCH, &WAIT_DAILY, &WAIT_UNPRICED],
            )
            .await?
            .try_get(0)?;
        let unpriced = c
            .query(
                "SELECT model FROM jobs WHERE batch_id = $1 AND state = 'queued' \
         AND last_error_code = $2 GROUP BY model ORDER BY model COLLATE \"C\"",
                &[&batch, &WAIT_UNPRICED],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, _>>()?;
        Ok(BatchSpend {
            max_cost_fen,
            max_tokens,
            units: r.try_get(0)?,
            billed_units: r.try_get(1)?,
            tokens: r.try_get(2)?,
            waiting,
            unpriced,
        })
    }

    async fn prune_budget_holds(&self, before_day: crate::Timestamp) -> Result<usize, StoreError> {
        self.retry(|| async move {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // One statement: the rows deleted are exactly the rows added up, even while other
            // workers commit holds.
            let n: i64 = tx
                .query_one(
                    "WITH gone AS (DELETE FROM budget_holds \
                 WHERE billed_tokens IS NOT NULL AND day_start < $1 \
                 RETURNING batch_id, billed_tokens, rate), \
             folded AS (INSERT INTO budget_settled (batch_id, units, tokens) \
                 SELECT batch_id, SUM(billed_tokens * rate), SUM(billed_tokens) FROM gone \
                 WHERE batch_id IS NOT NULL GROUP BY batch_id ORDER BY batch_id \
                 ON CONFLICT (batch_id) DO UPDATE \
                 SET units = budget_settled.units + excluded.units, \
                     tokens = budget_settled.tokens + excluded.tokens) \
             SELECT COUNT(*) FROM gone",
                    &[&before_day],
                )
                .await?
                .try_get(0)?;
            tx.commit().await?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn day_spend(
        &self,
        day_start: crate::Timestamp,
        model: Option<String>,
    ) -> Result<(i64, i64), StoreError> {
        let model: Option<&str> = model.as_deref();

        let c = self.conn().await?;
        let r = c
    .query_one(
        "SELECT COALESCE(SUM(COALESCE(billed_tokens, tokens) * rate), 0)::BIGINT, \
                COALESCE(SUM(CASE WHEN model = $2::TEXT THEN COALESCE(billed_tokens, tokens) * rate END), 0)::BIGINT \
         FROM budget_holds WHERE day_start = $1",
        &[&day_start, &model],
    )
    .await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }

    async fn budget_waiting(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT last_error_code, COUNT(*) FROM jobs WHERE state = 'queued' \
         AND last_error_code IN ($1, $2, $3) GROUP BY last_error_code \
         ORDER BY last_error_code COLLATE \"C\"",
            )
            .await?;
        c.query(&st, &[&WAIT_BATCH, &WAIT_DAILY, &WAIT_UNPRICED])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
