//! SQLite implementation of [`BudgetStore`] (declared in `store/budget.rs`; the PostgreSQL
//! implementation is `store/postgres/budget.rs`).

use super::SqliteStore;
use crate::budget::*;
use crate::{StoreError, now_ms};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

fn sums(
    tx: &Transaction<'_>,
    filter: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<(i64, i64)> {
    tx.prepare_cached(&format!(
        "SELECT COALESCE(SUM(COALESCE(billed_tokens, tokens) * rate), 0), \
                COALESCE(SUM(COALESCE(billed_tokens, tokens)), 0) \
         FROM budget_holds WHERE {filter}"
    ))?
    .query_row(p, |r| Ok((r.get(0)?, r.get(1)?)))
}

/// What a batch's pruned holds amounted to: hold units and tokens.
fn settled(c: &rusqlite::Connection, batch: &str) -> rusqlite::Result<(i64, i64)> {
    Ok(
        c.prepare_cached("SELECT units, tokens FROM budget_settled WHERE batch_id = ?1")?
            .query_row([batch], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, 0)),
    )
}

/// Makes every job waiting on a budget due now (a cap was raised or a hold shrank), so the
/// dispatcher checks it again. `batch` limits it to one batch's cap waiters (daily waiters
/// of any batch are always included).
fn wake(tx: &Transaction<'_>, batch: Option<&str>, now: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE jobs SET next_attempt_at = ?1 WHERE state = 'queued' AND next_attempt_at > ?1 \
         AND (last_error_code IN (?2, ?5) \
              OR (last_error_code = ?3 AND (?4 IS NULL OR batch_id = ?4)))",
    )?
    .execute(params![now, WAIT_DAILY, WAIT_BATCH, batch, WAIT_UNPRICED])
}

impl BudgetStore for SqliteStore {
    async fn budget_reserve(
        &self,
        req: HoldRequest,
        daily: DailyCaps,
    ) -> Result<Result<HoldStamp, Refusal>, StoreError> {
        self.call(move |c| {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A hold still here belongs to an earlier create whose outcome stayed unknown (a
        // parked job an operator retried): it may have been billed, so it keeps counting,
        // under a name of its own. So does the hold of an owner that lost the job's lease
        // before its POST: that owner releases it by its stamp, under the new name.
        let prev: Option<i64> = tx
            .query_row(
                "UPDATE budget_holds SET job_id = job_id || '#' || created_at WHERE job_id = ?1 \
                 RETURNING created_at",
                [&req.job_id],
                |r| r.get(0),
            )
            .optional()?;
        let stamp = next_stamp(prev, now_ms());
        let need = req.tokens.saturating_mul(req.rate);
        let mut checks: Vec<(Scope, i64, i64)> = Vec::new();
        if let Some(batch) = &req.batch {
            let caps: Option<(Option<i64>, Option<i64>)> = tx
                .query_row(
                    "SELECT max_cost_fen, max_tokens FROM batches WHERE name = ?1",
                    [batch],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let capped = caps.is_some_and(|(f, t)| f.is_some() || t.is_some());
            if let Some(r) = unpriced(&req, capped, daily) {
                return Ok(Err(r));
            }
            if let Some((fen, max_tokens)) = caps
                && (fen.is_some() || max_tokens.is_some())
            {
                let (units, tokens) = sums(&tx, "batch_id = ?1", [batch])?;
                let (su, st) = settled(&tx, batch)?;
                let (units, tokens) = (units + su, tokens + st);
                if let Some(fen) = fen {
                    checks.push((Scope::BatchCost, units, fen.saturating_mul(UNITS_PER_FEN)));
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
        if let Some(r) = unpriced(&req, false, daily) {
            return Ok(Err(r));
        }
        if let Some(fen) = daily.all_fen {
            let (units, _) = sums(&tx, "day_start = ?1", [req.day_start])?;
            checks.push((Scope::Daily, units, fen.saturating_mul(UNITS_PER_FEN)));
        }
        if let Some(fen) = daily.model_fen {
            let (units, _) = sums(
                &tx,
                "day_start = ?1 AND model = ?2",
                params![req.day_start, req.model],
            )?;
            checks.push((Scope::ModelDaily, units, fen.saturating_mul(UNITS_PER_FEN)));
        }
        // The cap of the key that created the job through a door (store/api.rs).
        let key: Option<(String, Option<i64>)> = tx
            .query_row(
                "SELECT k.id, k.max_cost_fen FROM api_jobs a JOIN api_keys k ON k.id = a.api_key \
                 WHERE a.job_id = ?1",
                [&req.job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((key, Some(fen))) = key {
            let (units, _) = sums(
                &tx,
                "day_start = ?1 AND job_id IN (SELECT job_id FROM api_jobs WHERE api_key = ?2)",
                params![req.day_start, key],
            )?;
            checks.push((Scope::KeyDaily, units, fen.saturating_mul(UNITS_PER_FEN)));
            // An unpriced model (rate 0) or a job of unknown size reserves nothing, so the
            // sum could never reach the key's cap: a capped key may only spend what can be
            // counted (docs/api.md, keys).
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                req.job_id,
                req.batch,
                req.model,
                req.day_start,
                req.tokens,
                req.rate,
                stamp.0
            ],
        )?;
        tx.commit()?;
        Ok(Ok(stamp))
    })
    .await
    }

    async fn budget_release_hold(
        &self,
        job_id: &str,
        stamp: HoldStamp,
    ) -> Result<bool, StoreError> {
        let (id, old) = (job_id.to_string(), renamed(job_id, stamp));
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "DELETE FROM budget_holds WHERE (job_id = ?1 AND created_at = ?2) OR job_id = ?3",
                params![id, stamp.0, old],
            )?;
            if n > 0 {
                wake(&tx, None, now_ms())?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn budget_release(&self, job_id: &str) -> Result<bool, StoreError> {
        let id = job_id.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute("DELETE FROM budget_holds WHERE job_id = ?1", [&id])?;
            if n > 0 {
                wake(&tx, None, now_ms())?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn budget_commit(&self, job_id: &str, billed_tokens: i64) -> Result<(), StoreError> {
        let id = job_id.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let reserved: Option<i64> = tx
                .query_row(
                    "SELECT tokens FROM budget_holds WHERE job_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(reserved) = reserved {
                tx.execute(
                    "UPDATE budget_holds SET billed_tokens = ?2 WHERE job_id = ?1",
                    params![id, billed_tokens],
                )?;
                if billed_tokens < reserved {
                    wake(&tx, None, now_ms())?;
                }
            }
            tx.commit()?;
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
        let batch = batch.to_string();
        self.call(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
            "INSERT INTO batches (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![batch, now],
        )?;
            if let Some(v) = max_cost_fen {
                tx.execute(
                    "UPDATE batches SET max_cost_fen = ?2 WHERE name = ?1",
                    params![batch, v],
                )?;
            }
            if let Some(v) = max_tokens {
                tx.execute(
                    "UPDATE batches SET max_tokens = ?2 WHERE name = ?1",
                    params![batch, v],
                )?;
            }
            let woken = wake(&tx, Some(&batch), now)?;
            tx.commit()?;
            Ok(woken)
        })
        .await
    }

    async fn wake_budget_waiters(&self) -> Result<usize, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = wake(&tx, None, now_ms())?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn batch_spend(&self, batch: &str) -> Result<BatchSpend, StoreError> {
        let batch = batch.to_string();
        self.call(move |c| {
            let caps: Option<(Option<i64>, Option<i64>)> = c
                .query_row(
                    "SELECT max_cost_fen, max_tokens FROM batches WHERE name = ?1",
                    [&batch],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (max_cost_fen, max_tokens) = caps.unwrap_or_default();
            let (units, billed_units, tokens) = c.query_row(
                "SELECT COALESCE(SUM(COALESCE(billed_tokens, tokens) * rate), 0), \
                    COALESCE(SUM(billed_tokens * rate), 0), \
                    COALESCE(SUM(COALESCE(billed_tokens, tokens)), 0) \
             FROM budget_holds WHERE batch_id = ?1",
                [&batch],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )?;
            // Pruned holds were billed: their units count as spent and as billed.
            let (su, st) = settled(c, &batch)?;
            let (units, billed_units, tokens) = (units + su, billed_units + su, tokens + st);
            let waiting = c.query_row(
                BATCH_WAITING,
                params![batch, WAIT_BATCH, WAIT_DAILY, WAIT_UNPRICED],
                |r| r.get(0),
            )?;
            let unpriced = c
                .prepare_cached(
                    "SELECT model FROM jobs WHERE batch_id = ?1 AND state = 'queued' \
                 AND last_error_code = ?2 GROUP BY model ORDER BY model",
                )?
                .query_map(params![batch, WAIT_UNPRICED], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(BatchSpend {
                max_cost_fen,
                max_tokens,
                units,
                billed_units,
                tokens,
                waiting,
                unpriced,
            })
        })
        .await
    }

    async fn prune_budget_holds(&self, before_day: crate::Timestamp) -> Result<usize, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO budget_settled (batch_id, units, tokens) \
             SELECT batch_id, SUM(billed_tokens * rate), SUM(billed_tokens) FROM budget_holds \
             WHERE billed_tokens IS NOT NULL AND day_start < ?1 AND batch_id IS NOT NULL \
             GROUP BY batch_id \
             ON CONFLICT (batch_id) DO UPDATE SET units = units + excluded.units, \
                 tokens = tokens + excluded.tokens",
                [before_day],
            )?;
            let n = tx.execute(
                "DELETE FROM budget_holds WHERE billed_tokens IS NOT NULL AND day_start < ?1",
                [before_day],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn day_spend(
        &self,
        day_start: crate::Timestamp,
        model: Option<String>,
    ) -> Result<(i64, i64), StoreError> {
        self.call(move |c| {
        Ok(c.query_row(
            "SELECT COALESCE(SUM(COALESCE(billed_tokens, tokens) * rate), 0), \
                    COALESCE(SUM(CASE WHEN model = ?2 THEN COALESCE(billed_tokens, tokens) * rate END), 0) \
             FROM budget_holds WHERE day_start = ?1",
            params![day_start, model],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    })
    .await
    }

    async fn budget_waiting(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT last_error_code, COUNT(*) FROM jobs WHERE state = 'queued' \
             AND last_error_code IN (?1, ?2, ?3) GROUP BY last_error_code ORDER BY 1",
            )?;
            let rows = st.query_map(params![WAIT_BATCH, WAIT_DAILY, WAIT_UNPRICED], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
