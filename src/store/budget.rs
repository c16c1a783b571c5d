//! Store side of spend caps (issue 15): batch caps, and the holds every create reserves.
//!
//! The check and the reservation happen in one `BEGIN IMMEDIATE` transaction, so neither two
//! dispatchers nor two processes on one database can both take the last of a cap: SQLite
//! serialises the writers, and each sees the other's committed holds. Amounts are integers:
//! `tokens × rate` in units of 1/2,000,000 fen (see `migrations/0007_budget.sql`).

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use super::{Store, StoreError, now_ms};

/// Hold units per fen: the rate doubles the fen-per-million price so flex (half) stays whole.
pub const UNITS_PER_FEN: i64 = 2_000_000;

/// Codes (`last_error_code`) of jobs waiting on a budget. A batch cap waits for a raise
/// (`seedq batch set`); a daily cap waits for the next day.
pub const WAIT_BATCH: &str = "budget_batch";
pub const WAIT_DAILY: &str = "budget_daily";

/// What one create wants to reserve.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub job_id: String,
    pub batch: Option<String>,
    pub model: String,
    pub day_start: i64,
    pub tokens: i64,
    /// Hold units per token (0 when the model has no price).
    pub rate: i64,
}

/// Daily caps in force, in fen.
#[derive(Clone, Copy, Debug, Default)]
pub struct DailyCaps {
    pub all_fen: Option<i64>,
    pub model_fen: Option<i64>,
}

/// Which budget refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scope {
    BatchCost,
    BatchTokens,
    Daily,
    ModelDaily,
}

/// A reservation that did not fit: spent (incl. other holds), needed and the cap, in hold
/// units for cost scopes and tokens for `BatchTokens`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub spent: i64,
    pub need: i64,
    pub cap: i64,
}

/// A batch's caps and what its holds amount to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BatchSpend {
    pub max_cost_fen: Option<i64>,
    pub max_tokens: Option<i64>,
    /// Hold units of all holds (billed where known, else the reserved estimate).
    pub units: i64,
    /// Of which already billed.
    pub billed_units: i64,
    pub tokens: i64,
    /// Jobs waiting on a budget.
    pub waiting: i64,
}

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

/// Makes every job waiting on a budget due now (a cap was raised or a hold shrank), so the
/// dispatcher checks it again. `batch` limits it to one batch's cap waiters (daily waiters
/// of any batch are always included).
fn wake(tx: &Transaction<'_>, batch: Option<&str>, now: i64) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE jobs SET next_attempt_at = ?1 WHERE state = 'queued' AND next_attempt_at > ?1 \
         AND (last_error_code = ?2 OR (last_error_code = ?3 AND (?4 IS NULL OR batch_id = ?4)))",
    )?
    .execute(params![now, WAIT_DAILY, WAIT_BATCH, batch])
}

impl Store {
    /// Reserves `req` against every cap it falls under, or says which one it does not fit.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn budget_reserve(
        &self,
        req: HoldRequest,
        daily: DailyCaps,
    ) -> Result<Result<(), Refusal>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A hold still here belongs to an earlier create whose outcome stayed unknown (a
            // parked job an operator retried): it may have been billed, so it keeps counting,
            // under a name of its own.
            tx.execute(
                "UPDATE budget_holds SET job_id = job_id || '#' || created_at WHERE job_id = ?1",
                [&req.job_id],
            )?;
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
                if let Some((fen, max_tokens)) = caps
                    && (fen.is_some() || max_tokens.is_some())
                {
                    let (units, tokens) = sums(&tx, "batch_id = ?1", [batch])?;
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
                    now_ms()
                ],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    /// Gives a job's reservation back (its create provably made no billable task) and wakes
    /// the jobs waiting on a budget. Returns whether it held one.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn budget_release(&self, job_id: &str) -> Result<bool, StoreError> {
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

    /// Records the billed tokens of a job's task in its hold; when they are below the
    /// estimate, the freed room wakes the waiting jobs.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn budget_commit(&self, job_id: &str, billed_tokens: i64) -> Result<(), StoreError> {
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

    /// Sets (or with `Some(None)` removes) a batch's caps, creating its row if needed, and
    /// wakes its jobs that wait on a budget. Returns how many were woken.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn set_batch_budget(
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

    /// Wakes every job waiting on a budget (after a SIGHUP changed the daily caps).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn wake_budget_waiters(&self) -> Result<usize, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = wake(&tx, None, now_ms())?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// A batch's caps and spend.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn batch_spend(&self, batch: &str) -> Result<BatchSpend, StoreError> {
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
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let waiting = c.query_row(
                "SELECT COUNT(*) FROM jobs WHERE batch_id = ?1 AND state = 'queued' \
                 AND last_error_code IN (?2, ?3)",
                params![batch, WAIT_BATCH, WAIT_DAILY],
                |r| r.get(0),
            )?;
            Ok(BatchSpend {
                max_cost_fen,
                max_tokens,
                units,
                billed_units,
                tokens,
                waiting,
            })
        })
        .await
    }

    /// Hold units counted in the budget day starting at `day_start`: all models, and `model`'s.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn day_spend(
        &self,
        day_start: i64,
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

    /// Jobs waiting on a budget, per code (for `/metrics` and `watch`).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn budget_waiting(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT last_error_code, COUNT(*) FROM jobs WHERE state = 'queued' \
                 AND last_error_code IN (?1, ?2) GROUP BY last_error_code ORDER BY 1",
            )?;
            let rows = st.query_map(params![WAIT_BATCH, WAIT_DAILY], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(id: &str, tokens: i64) -> HoldRequest {
        HoldRequest {
            job_id: id.into(),
            batch: Some("b".into()),
            model: "m".into(),
            day_start: 0,
            tokens,
            rate: 2,
        }
    }

    #[tokio::test]
    async fn reserve_release_commit_and_a_retried_unknown_create_keeps_counting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("q.db")).expect("open");
        // A cap of 1 fen = 2,000,000 units = 1,000,000 tokens at rate 2.
        s.set_batch_budget("b", Some(Some(1)), None)
            .await
            .expect("cap");
        let daily = DailyCaps::default();
        assert_eq!(
            s.budget_reserve(hold("a", 600_000), daily)
                .await
                .expect("a"),
            Ok(())
        );
        let refused = s
            .budget_reserve(hold("b", 600_000), daily)
            .await
            .expect("b");
        assert_eq!(
            refused,
            Err(Refusal {
                scope: Scope::BatchCost,
                spent: 1_200_000,
                need: 1_200_000,
                cap: 2_000_000
            })
        );
        // Released: the room is back.
        assert!(s.budget_release("a").await.expect("release"));
        assert_eq!(
            s.budget_reserve(hold("b", 600_000), daily)
                .await
                .expect("b"),
            Ok(())
        );
        // Billed below the estimate: the smaller amount counts.
        s.budget_commit("b", 100_000).await.expect("commit");
        assert_eq!(s.batch_spend("b").await.expect("spend").units, 200_000);
        // "b" reserving again (an operator retried an unknown create): the old hold may have
        // been billed, so both count.
        assert_eq!(
            s.budget_reserve(hold("b", 100_000), daily)
                .await
                .expect("b2"),
            Ok(())
        );
        assert_eq!(s.batch_spend("b").await.expect("spend").units, 400_000);
    }
}
