//! Store side of spend caps: batch caps, and the holds every create reserves.
//!
//! The check and the reservation happen in one `BEGIN IMMEDIATE` transaction, so neither two
//! dispatchers nor two processes on one database can both take the last of a cap: SQLite
//! serialises the writers, and each sees the other's committed holds. Amounts are integers:
//! `tokens × rate` in units of 1/2,000,000 fen (see `migrations/0007_budget.sql`).

use serde::Serialize;

use super::StoreError;

/// Hold units per fen: the rate doubles the fen-per-million price so flex (half) stays whole.
pub const UNITS_PER_FEN: i64 = 2_000_000;

/// Codes (`last_error_code`) of jobs waiting on a budget. A batch cap waits for a raise
/// (`seedq batch set`); a daily cap waits for the next day.
pub const WAIT_BATCH: &str = "budget_batch";
pub const WAIT_DAILY: &str = "budget_daily";
/// A job whose model has no price under a spend cap: it waits for a price (a configuration
/// reload) or for the cap to go, and is never created meanwhile.
pub const WAIT_UNPRICED: &str = "budget_unpriced";

/// What one create wants to reserve.
#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub job_id: String,
    pub batch: Option<String>,
    pub model: String,
    pub day_start: crate::Timestamp,
    pub tokens: i64,
    /// Hold units per token (0 when the model has no price).
    pub rate: i64,
    /// The model has a price (catalogue or configuration). An unpriced job fits no spend cap:
    /// what it would cost is unknown, so no cap can be checked.
    pub priced: bool,
}

/// Which hold one reservation made: its `created_at`, unique among the holds of its job (a
/// reservation stamps its hold after the job's hold it renames). Releasing by stamp removes
/// exactly that hold, whether it is still named by the job or was renamed `<job>#<stamp>` by a
/// later reservation of the same job, and never another owner's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HoldStamp(pub(crate) i64);

impl HoldStamp {
    /// The hold's `created_at` (ms since the epoch).
    pub fn created_at(self) -> i64 {
        self.0
    }
}

/// The stamp of a new hold of a job whose previous hold (renamed in the same transaction)
/// was stamped `prev`: now, or one past `prev` when that is not earlier (two reservations in
/// one millisecond, or another host's clock ahead), so no two holds of a job share a stamp.
/// Shared by both backends.
pub(crate) fn next_stamp(prev: Option<i64>, now: i64) -> HoldStamp {
    HoldStamp(prev.map_or(now, |p| now.max(p.saturating_add(1))))
}

/// The name a later reservation of the same job gives the hold stamped `stamp` (the
/// `job_id || '#' || created_at` of the renaming `UPDATE`).
pub(crate) fn renamed(job_id: &str, stamp: HoldStamp) -> String {
    format!("{job_id}#{}", stamp.0)
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
    /// The daily cap of the API key that created the job (`seedq keys create
    /// --max-cost-per-day`).
    KeyDaily,
    /// The model has no price and a cap applies (any of the above).
    Unpriced,
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
    /// Models of the batch's jobs that wait because they have no price (`WAIT_UNPRICED`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unpriced: Vec<String>,
}

/// The refusal of an unpriced job when any cap applies to it: a batch cap (cost or tokens) or
/// a daily one. Shared by both backends.
pub(crate) fn unpriced(req: &HoldRequest, batch_capped: bool, daily: DailyCaps) -> Option<Refusal> {
    let capped = batch_capped || daily.all_fen.is_some() || daily.model_fen.is_some();
    (!req.priced && capped).then_some(Refusal {
        scope: Scope::Unpriced,
        spent: 0,
        need: 0,
        cap: 0,
    })
}

/// A batch's jobs waiting on a cap: read from `jobs_budget_waiting`
/// (migrations/0022_budget_waiting_index.sql), not a scan of the batch.
pub(crate) const BATCH_WAITING: &str = "SELECT COUNT(*) FROM jobs WHERE batch_id = ?1 \
     AND state = 'queued' AND last_error_code IN (?2, ?3, ?4)";

backend_trait! {
    /// Spend caps: holds reserved before a create, settled after, and the days and batches they add
    /// up to.
    trait BudgetStore {
        /// Reserves `req` against every cap it falls under, or says which one it does not fit.
        /// The stamp names the hold made, for [`Store::budget_release_hold`].
        ///
        /// # Errors
        /// SQL errors.
        pub fn budget_reserve(
            &self,
            req: HoldRequest,
            daily: DailyCaps,
        ) -> Result<Result<HoldStamp, Refusal>, StoreError>;

        /// Gives back the one hold a reservation of `job_id` made (`stamp`), under its own name
        /// or renamed by a later reservation of the job, and wakes the jobs waiting on a budget.
        /// A submit that made no task gives its hold back this way: by the job's name alone it
        /// would take the hold of whoever owns the job now. Returns whether the hold was there.
        ///
        /// # Errors
        /// SQL errors.
        pub fn budget_release_hold(
            &self,
            job_id: &str,
            stamp: HoldStamp,
        ) -> Result<bool, StoreError>;

        /// Gives a job's reservation back (its create provably made no billable task) and wakes
        /// the jobs waiting on a budget. Returns whether it held one. It takes the hold named by
        /// the job, the newest reservation's: for the holder of the job's lease (the poller,
        /// reconciliation). A submit gives its own back with [`Store::budget_release_hold`].
        ///
        /// # Errors
        /// SQL errors.
        pub fn budget_release(&self, job_id: &str) -> Result<bool, StoreError>;

        /// Records the billed tokens of a job's task in its hold; when they are below the
        /// estimate, the freed room wakes the waiting jobs.
        ///
        /// # Errors
        /// SQL errors.
        pub fn budget_commit(&self, job_id: &str, billed_tokens: i64) -> Result<(), StoreError>;

        /// Sets (or with `Some(None)` removes) a batch's caps, creating its row if needed, and
        /// wakes its jobs that wait on a budget. Returns how many were woken.
        ///
        /// # Errors
        /// SQL errors.
        pub fn set_batch_budget(
            &self,
            batch: &str,
            max_cost_fen: Option<Option<i64>>,
            max_tokens: Option<Option<i64>>,
        ) -> Result<usize, StoreError>;

        /// Wakes every job waiting on a budget (after a SIGHUP changed the daily caps).
        ///
        /// # Errors
        /// SQL errors.
        pub fn wake_budget_waiters(&self) -> Result<usize, StoreError>;

        /// A batch's caps and spend.
        ///
        /// # Errors
        /// SQL errors.
        pub fn batch_spend(&self, batch: &str) -> Result<BatchSpend, StoreError>;

        /// Deletes the settled holds (billed) of budget days before `before_day`: no daily cap
        /// counts them again, and what they amount to moves into their batch's `budget_settled`
        /// row in the same transaction, so a batch cap sees the same spend before and after.
        /// Unbilled holds stay: an ambiguous create counts as spent until it is settled.
        ///
        /// # Errors
        /// SQL errors.
        pub fn prune_budget_holds(&self, before_day: crate::Timestamp)
        -> Result<usize, StoreError>;

        /// Hold units counted in the budget day starting at `day_start`: all models, and `model`'s.
        ///
        /// # Errors
        /// SQL errors.
        pub fn day_spend(
            &self,
            day_start: crate::Timestamp,
            model: Option<String>,
        ) -> Result<(i64, i64), StoreError>;

        /// Jobs waiting on a budget, per code (for `/metrics` and `watch`).
        ///
        /// # Errors
        /// SQL errors.
        pub fn budget_waiting(&self) -> Result<Vec<(String, i64)>, StoreError>;
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::job::JobId;
    use crate::tests_ops::{Seed, add};
    use crate::{Store, now_ms};
    use crate::{StoreTarget, testpg};

    fn hold(id: &str, tokens: i64) -> HoldRequest {
        HoldRequest {
            job_id: id.into(),
            batch: Some("b".into()),
            model: "m".into(),
            day_start: crate::Timestamp::from_ms(0),
            tokens,
            rate: 2,
            priced: true,
        }
    }

    /// Maintenance prunes billed holds of days that are over; a batch's cap sees the same
    /// spend before and after, today's holds and unbilled ones stay, and a reservation that
    /// did not fit before the prune does not fit after it.
    /// PostgreSQL (store/postgres/budget.rs): reservations of an uncapped batch hold its lock
    /// shared, so one does not wait for another that is still on its way to its commit; a
    /// cap being set waits for them, and the reservations after it check the cap.
    #[tokio::test]
    async fn an_uncapped_batch_reserves_without_queueing_and_a_new_cap_waits_for_it() {
        let s = testpg::pg_store().await;
        let daily = DailyCaps::default();
        let pg = s.pg().expect("postgres");
        // Another reservation of batch `b`, between its lock and its commit.
        let mut other = pg.conn().await.expect("conn");
        let in_flight = other.transaction().await.expect("begin");
        in_flight
            .execute(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
                &[&"seedq/budget/batch/b"],
            )
            .await
            .expect("shared lock");
        let reserved = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            s.budget_reserve(hold("j1", 600_000), daily),
        )
        .await
        .expect("an uncapped reservation does not wait for another one")
        .expect("reserve");
        assert!(reserved.is_ok(), "{reserved:?}");
        // A cap of 1 fen (1 000 000 tokens at rate 2) waits until the other commits.
        let setter = s.clone();
        let cap =
            tokio::spawn(async move { setter.set_batch_budget("b", Some(Some(1)), None).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !cap.is_finished(),
            "the cap waits for the reservation in flight"
        );
        in_flight.commit().await.expect("commit");
        cap.await.expect("join").expect("cap");
        let refused = s
            .budget_reserve(hold("j2", 600_000), daily)
            .await
            .expect("reserve")
            .expect_err("600 000 more tokens exceed the new cap");
        assert_eq!(refused.scope, Scope::BatchCost, "{refused:?}");
    }

    #[tokio::test]
    async fn settled_holds_are_pruned_and_their_batch_keeps_its_spend() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            // A cap of 1 fen = 2,000,000 units = 1,000,000 tokens at rate 2.
            s.set_batch_budget("b", Some(Some(1)), None)
                .await
                .expect("cap");
            let daily = DailyCaps::default();
            let at = |id: &str, tokens: i64, day: i64| HoldRequest {
                day_start: crate::Timestamp::from_ms(day),
                ..hold(id, tokens)
            };
            for (id, day) in [("old1", 0), ("old2", 0), ("unbilled", 0), ("today", 100)] {
                assert_eq!(
                    s.budget_reserve(at(id, 200_000, day), daily)
                        .await
                        .expect("reserve")
                        .map(|_| ()),
                    Ok(()),
                    "{name}: {id}"
                );
            }
            s.budget_commit("old1", 150_000).await.expect("commit");
            s.budget_commit("old2", 100_000).await.expect("commit");
            s.budget_commit("today", 100_000).await.expect("commit");
            let before = s.batch_spend("b").await.expect("spend");
            let day_before = s
                .day_spend(crate::Timestamp::from_ms(100), None)
                .await
                .expect("day");
            assert_eq!(
                s.prune_budget_holds(crate::Timestamp::from_ms(100))
                    .await
                    .expect("prune"),
                2,
                "{name}"
            );
            assert_eq!(
                s.prune_budget_holds(crate::Timestamp::from_ms(100))
                    .await
                    .expect("prune"),
                0,
                "{name}: once"
            );
            let after = s.batch_spend("b").await.expect("spend");
            assert_eq!(
                (after.units, after.billed_units, after.tokens),
                (before.units, before.billed_units, before.tokens),
                "{name}: the batch's spend did not change"
            );
            assert_eq!(
                s.day_spend(crate::Timestamp::from_ms(100), None)
                    .await
                    .expect("day"),
                day_before,
                "{name}"
            );
            // 550 000 tokens counted: 450 000 more fit, 450 001 do not.
            let refused = s
                .budget_reserve(at("big", 450_001, 100), daily)
                .await
                .expect("big");
            assert!(
                matches!(
                    refused,
                    Err(Refusal {
                        scope: Scope::BatchCost,
                        spent: 1_100_000,
                        ..
                    })
                ),
                "{name}: {refused:?}"
            );
            assert_eq!(
                s.budget_reserve(at("fits", 450_000, 100), daily)
                    .await
                    .expect("fits")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            // The unbilled hold stayed: releasing it gives its room back.
            assert!(
                s.budget_release("unbilled").await.expect("release"),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn reserve_release_commit_and_a_retried_unknown_create_keeps_counting() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            // A cap of 1 fen = 2,000,000 units = 1,000,000 tokens at rate 2.
            s.set_batch_budget("b", Some(Some(1)), None)
                .await
                .expect("cap");
            let daily = DailyCaps::default();
            assert_eq!(
                s.budget_reserve(hold("a", 600_000), daily)
                    .await
                    .expect("a")
                    .map(|_| ()),
                Ok(()),
                "{name}"
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
                }),
                "{name}"
            );
            // Released: the room is back.
            assert!(s.budget_release("a").await.expect("release"), "{name}");
            assert!(
                !s.budget_release("a").await.expect("release"),
                "{name}: gone"
            );
            assert_eq!(
                s.budget_reserve(hold("b", 600_000), daily)
                    .await
                    .expect("b")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            // Billed below the estimate: the smaller amount counts.
            s.budget_commit("b", 100_000).await.expect("commit");
            let spend = s.batch_spend("b").await.expect("spend");
            assert_eq!(
                (spend.units, spend.billed_units, spend.tokens),
                (200_000, 200_000, 100_000),
                "{name}"
            );
            // "b" reserving again (an operator retried an unknown create): the old hold may
            // have been billed, so both count.
            assert_eq!(
                s.budget_reserve(hold("b", 100_000), daily)
                    .await
                    .expect("b2")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            let spend = s.batch_spend("b").await.expect("spend");
            assert_eq!(
                (spend.units, spend.billed_units),
                (400_000, 200_000),
                "{name}"
            );
            assert_eq!(spend.max_cost_fen, Some(1), "{name}");
            // A refused reservation leaves the earlier hold's name alone: a later release
            // of "b" still finds it.
            let refused = s
                .budget_reserve(hold("b", 900_000), daily)
                .await
                .expect("b3");
            assert_eq!(
                refused.map_err(|r| r.scope),
                Err(Scope::BatchCost),
                "{name}"
            );
            assert!(s.budget_release("b").await.expect("release"), "{name}");
            assert_eq!(
                s.batch_spend("b").await.expect("spend").units,
                200_000,
                "{name}"
            );
        }
    }

    /// Two owners of one job in the racy order: A reserves and loses the job's lease, B
    /// claims it and reserves (renaming A's hold), and only then A gives its hold back. Each
    /// release by stamp takes its owner's hold alone: B's stays, and B's commit still finds
    /// it. Released in either order, nothing stays held.
    #[tokio::test]
    async fn each_owner_releases_only_its_own_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            s.set_batch_budget("b", Some(Some(1)), None)
                .await
                .expect("cap");
            let daily = DailyCaps::default();
            let units = |s: &Store| {
                let s = s.clone();
                async move { s.batch_spend("b").await.expect("spend").units }
            };
            // A releases first, then B.
            let a = s
                .budget_reserve(hold("j", 100_000), daily)
                .await
                .expect("a")
                .expect("a fits");
            let b = s
                .budget_reserve(hold("j", 300_000), daily)
                .await
                .expect("b")
                .expect("b fits");
            assert!(b > a, "{name}: one job's holds never share a stamp");
            assert_eq!(units(&s).await, 800_000, "{name}: both held");
            assert!(
                s.budget_release_hold("j", a).await.expect("release a"),
                "{name}: A's renamed hold is found by its stamp"
            );
            assert_eq!(units(&s).await, 600_000, "{name}: B's hold stays");
            assert!(
                !s.budget_release_hold("j", a).await.expect("again"),
                "{name}: A's hold is gone, and B's is not taken for it"
            );
            s.budget_commit("j", 200_000).await.expect("commit");
            let spend = s.batch_spend("b").await.expect("spend");
            assert_eq!(
                (spend.units, spend.billed_units),
                (400_000, 400_000),
                "{name}: B's commit lands on B's hold"
            );
            assert!(
                s.budget_release_hold("j", b).await.expect("release b"),
                "{name}"
            );
            assert_eq!(units(&s).await, 0, "{name}: nothing stays held");
            assert!(!s.budget_release("j").await.expect("release"), "{name}");

            // B releases first (its hold under the job's name), then A (renamed).
            let a = s
                .budget_reserve(hold("k", 100_000), daily)
                .await
                .expect("a")
                .expect("a fits");
            let b = s
                .budget_reserve(hold("k", 300_000), daily)
                .await
                .expect("b")
                .expect("b fits");
            assert!(s.budget_release_hold("k", b).await.expect("b"), "{name}");
            assert_eq!(units(&s).await, 200_000, "{name}: A's hold stays");
            assert!(s.budget_release_hold("k", a).await.expect("a"), "{name}");
            assert_eq!(units(&s).await, 0, "{name}: nothing stays held");

            // A retried unknown create: the first hold is never given back (its create may
            // have made a task), and the retry giving its own back leaves it counted.
            let _unknown = s
                .budget_reserve(hold("u", 100_000), daily)
                .await
                .expect("first")
                .expect("fits");
            let retry = s
                .budget_reserve(hold("u", 300_000), daily)
                .await
                .expect("retry")
                .expect("fits");
            assert!(
                s.budget_release_hold("u", retry).await.expect("release"),
                "{name}"
            );
            assert_eq!(
                units(&s).await,
                200_000,
                "{name}: the unknown create's hold keeps counting"
            );
        }
    }

    #[test]
    fn stamps_follow_the_hold_they_replace() {
        assert_eq!(next_stamp(None, 5), HoldStamp(5));
        assert_eq!(next_stamp(Some(3), 5), HoldStamp(5));
        // The same millisecond, or a clock behind the previous holder's.
        assert_eq!(next_stamp(Some(5), 5), HoldStamp(6));
        assert_eq!(next_stamp(Some(9), 5), HoldStamp(10));
        assert_eq!(renamed("j", HoldStamp(42)), "j#42");
    }

    #[tokio::test]
    async fn an_unpriced_hold_fits_no_cap_and_any_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            let unpriced = |id: &str, batch: Option<&str>| HoldRequest {
                batch: batch.map(str::to_string),
                rate: 0,
                tokens: 0,
                priced: false,
                ..hold(id, 0)
            };
            let refused = Err(Refusal {
                scope: Scope::Unpriced,
                spent: 0,
                need: 0,
                cap: 0,
            });
            let none = DailyCaps::default();
            // No cap anywhere: it is created (Ark decides what it costs).
            assert_eq!(
                s.budget_reserve(unpriced("free", None), none)
                    .await
                    .expect("free")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            // A batch without caps is no cap either.
            assert_eq!(
                s.budget_reserve(unpriced("nocap", Some("open")), none)
                    .await
                    .expect("nocap")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            // A batch cost cap, a batch token cap, a daily cap, a model's daily cap: refused.
            s.set_batch_budget("cost", Some(Some(1_000_000)), None)
                .await
                .expect("cap");
            s.set_batch_budget("tok", None, Some(Some(1_000_000_000)))
                .await
                .expect("cap");
            for (id, batch, daily) in [
                ("c", Some("cost"), none),
                ("t", Some("tok"), none),
                (
                    "d",
                    None,
                    DailyCaps {
                        all_fen: Some(1_000_000),
                        model_fen: None,
                    },
                ),
                (
                    "m",
                    None,
                    DailyCaps {
                        all_fen: None,
                        model_fen: Some(1_000_000),
                    },
                ),
            ] {
                assert_eq!(
                    s.budget_reserve(unpriced(id, batch), daily)
                        .await
                        .expect("reserve"),
                    refused,
                    "{name}: {id}"
                );
            }
            // The same job with a price fits.
            assert_eq!(
                s.budget_reserve(hold("c", 10), none)
                    .await
                    .expect("priced")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn token_and_daily_caps_refuse_with_their_scope() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            s.set_batch_budget("b", None, Some(Some(1_000)))
                .await
                .expect("cap");
            let none = DailyCaps::default();
            assert_eq!(
                s.budget_reserve(hold("a", 600), none)
                    .await
                    .expect("a")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            assert_eq!(
                s.budget_reserve(hold("x", 600), none).await.expect("x"),
                Err(Refusal {
                    scope: Scope::BatchTokens,
                    spent: 600,
                    need: 600,
                    cap: 1_000
                }),
                "{name}"
            );
            // Daily caps, over every batch (and none) of the day.
            let day = |id: &str, model: &str, tokens| HoldRequest {
                batch: None,
                model: model.into(),
                day_start: crate::Timestamp::from_ms(7),
                ..hold(id, tokens)
            };
            let all = DailyCaps {
                all_fen: Some(1),
                model_fen: None,
            };
            assert_eq!(
                s.budget_reserve(day("d1", "m", 700_000), all)
                    .await
                    .expect("d1")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            assert_eq!(
                s.budget_reserve(day("d2", "n", 400_000), all)
                    .await
                    .expect("d2"),
                Err(Refusal {
                    scope: Scope::Daily,
                    spent: 1_400_000,
                    need: 800_000,
                    cap: 2_000_000
                }),
                "{name}"
            );
            let per_model = DailyCaps {
                all_fen: None,
                model_fen: Some(1),
            };
            assert_eq!(
                s.budget_reserve(day("d2", "n", 400_000), per_model)
                    .await
                    .expect("d2")
                    .map(|_| ()),
                Ok(()),
                "{name}"
            );
            assert_eq!(
                s.budget_reserve(day("d3", "m", 400_000), per_model)
                    .await
                    .expect("d3"),
                Err(Refusal {
                    scope: Scope::ModelDaily,
                    spent: 1_400_000,
                    need: 800_000,
                    cap: 2_000_000
                }),
                "{name}"
            );
            assert_eq!(
                s.day_spend(crate::Timestamp::from_ms(7), Some("m".into()))
                    .await
                    .expect("day"),
                (2_200_000, 1_400_000),
                "{name}"
            );
            assert_eq!(
                s.day_spend(crate::Timestamp::from_ms(7), Some("n".into()))
                    .await
                    .expect("day"),
                (2_200_000, 800_000),
                "{name}"
            );
            assert_eq!(
                s.day_spend(crate::Timestamp::from_ms(7), None)
                    .await
                    .expect("day"),
                (2_200_000, 0),
                "{name}"
            );
            assert_eq!(
                s.day_spend(crate::Timestamp::from_ms(8), Some("m".into()))
                    .await
                    .expect("day"),
                (0, 0),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn raising_a_cap_wakes_the_jobs_waiting_on_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            let later = now_ms() + 3_600_000;
            let wait =
                |code: &str| format!("last_error_code = '{code}', next_attempt_at = {later}");
            let b = add(
                &s,
                Seed {
                    batch: Some("b"),
                    cols: &wait(WAIT_BATCH),
                    ..Seed::default()
                },
            )
            .await;
            let other = add(
                &s,
                Seed {
                    batch: Some("c"),
                    cols: &wait(WAIT_BATCH),
                    ..Seed::default()
                },
            )
            .await;
            let daily = add(
                &s,
                Seed {
                    batch: Some("c"),
                    cols: &wait(WAIT_DAILY),
                    ..Seed::default()
                },
            )
            .await;
            assert_eq!(
                s.budget_waiting().await.expect("waiting"),
                [(WAIT_BATCH.to_string(), 2), (WAIT_DAILY.to_string(), 1)],
                "{name}"
            );
            assert_eq!(
                s.batch_spend("c").await.expect("spend").waiting,
                2,
                "{name}"
            );
            let due = |id: JobId| {
                let s = s.clone();
                async move {
                    s.job(id.as_str())
                        .await
                        .expect("job")
                        .expect("exists")
                        .next_attempt_at
                        <= crate::Timestamp::now()
                }
            };
            // Batch b's cap raised: its waiter and every daily waiter; not batch c's.
            assert_eq!(
                s.set_batch_budget("b", Some(Some(5)), None)
                    .await
                    .expect("set"),
                2,
                "{name}"
            );
            assert!(due(b.clone()).await && due(daily.clone()).await, "{name}");
            assert!(!due(other.clone()).await, "{name}");
            assert_eq!(
                s.batch_spend("b").await.expect("spend").max_cost_fen,
                Some(5),
                "{name}"
            );
            // Removing a cap keeps the other.
            s.set_batch_budget("b", None, Some(Some(9)))
                .await
                .expect("set");
            s.set_batch_budget("b", Some(None), None)
                .await
                .expect("set");
            let spend = s.batch_spend("b").await.expect("spend");
            assert_eq!(
                (spend.max_cost_fen, spend.max_tokens),
                (None, Some(9)),
                "{name}"
            );
            // After a SIGHUP, every waiter.
            assert_eq!(s.wake_budget_waiters().await.expect("wake"), 1, "{name}");
            assert!(due(other).await, "{name}");
            // A billed amount under the estimate frees room: waiters wake again.
            exec_wait(&s, &b, later).await;
            s.budget_reserve(
                HoldRequest {
                    batch: None,
                    ..hold("h", 100)
                },
                DailyCaps::default(),
            )
            .await
            .expect("h")
            .expect("fits");
            s.budget_commit("h", 100).await.expect("commit");
            assert!(
                !due(b.clone()).await,
                "{name}: billed as reserved, nothing freed"
            );
            s.budget_commit("h", 50).await.expect("commit");
            assert!(due(b.clone()).await, "{name}");
            exec_wait(&s, &b, later).await;
            assert!(s.budget_release("h").await.expect("release"), "{name}");
            assert!(due(b).await, "{name}");
        }
    }

    /// Puts `id` back to waiting on its batch's cap until `until`.
    async fn exec_wait(s: &Store, id: &JobId, until: i64) {
        crate::tests_ops::exec(
            s,
            &format!(
                "UPDATE jobs SET next_attempt_at = {until} WHERE id = '{}'",
                id.as_str()
            ),
        )
        .await;
    }

    /// Two workers (two stores, each with its own pool, on one database) reserve against one
    /// cap at the same time: exactly as many holds as fit are granted, never one more. Without
    /// the advisory locks, reservations read the same sum concurrently and overshoot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_workers_never_reserve_past_one_cap() {
        let url = testpg::fresh_database().await;
        let target = StoreTarget::Postgres {
            url,
            password: None,
        };
        let a = Store::open_target(&target, true).await.expect("worker a");
        let b = Store::open_target(&target, true).await.expect("worker b");
        // Warm pools: reservations race from the first round on, not behind connection set-up.
        let mut pings = tokio::task::JoinSet::new();
        for i in 0..32 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            pings.spawn(async move { s.ping().await.expect("ping") });
        }
        pings.join_all().await;
        // 1 fen = 2,000,000 units; each hold is 100,000 tokens at rate 2 = 200,000: 10 fit.
        a.set_batch_budget("b", Some(Some(1)), None)
            .await
            .expect("cap");
        let scenarios: [(&str, Option<&str>, DailyCaps); 3] = [
            ("batch", Some("b"), DailyCaps::default()),
            (
                "daily",
                None,
                DailyCaps {
                    all_fen: Some(1),
                    model_fen: None,
                },
            ),
            (
                "model daily",
                None,
                DailyCaps {
                    all_fen: None,
                    model_fen: Some(1),
                },
            ),
        ];
        for (round, (scope, batch, caps)) in scenarios.into_iter().enumerate() {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..40 {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let req = HoldRequest {
                    job_id: format!("{scope}-{i}"),
                    batch: batch.map(str::to_string),
                    model: "m".into(),
                    day_start: crate::Timestamp::from_ms(round as i64),
                    tokens: 100_000,
                    rate: 2,
                    priced: true,
                };
                tasks.spawn(async move { s.budget_reserve(req, caps).await.expect("reserve") });
            }
            let granted = tasks.join_all().await.iter().filter(|r| r.is_ok()).count();
            assert_eq!(
                granted, 10,
                "{scope}: granted {granted} holds of 200,000 units under a 2,000,000 cap"
            );
        }
        assert_eq!(a.batch_spend("b").await.expect("spend").units, 2_000_000);
        assert_eq!(
            b.day_spend(crate::Timestamp::from_ms(1), None)
                .await
                .expect("day")
                .0,
            2_000_000
        );
        assert_eq!(
            b.day_spend(crate::Timestamp::from_ms(2), Some("m".into()))
                .await
                .expect("day")
                .1,
            2_000_000
        );
    }

    #[tokio::test]
    async fn a_capped_key_cannot_spend_on_an_unpriced_model() {
        use crate::api::{ApiJob, ApiKey};
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            s.api_key_create(ApiKey {
                id: "key_c".into(),
                name: "c".into(),
                hash: "hc".into(),
                max_cost_fen: Some(100),
                rpm: None,
                models: None,
                webhook_url: None,
                webhook_secret: "whsec_x".into(),
                created_at: crate::Timestamp::from_ms(1),
                revoked_at: None,
            })
            .await
            .expect("key");
            let mut ids = Vec::new();
            for _ in 0..2 {
                let j = crate::NewJob::plain("{}");
                let api = ApiJob {
                    job_id: j.id.to_string(),
                    api_key: Some("key_c".into()),
                    door: "ark".into(),
                    body_sha256: j.id.to_string(),
                    info: "{}".into(),
                    webhook_url: None,
                    created_at: crate::Timestamp::EPOCH,
                    deleted_at: None,
                    result_meta: None,
                };
                s.api_enqueue(j.clone(), api).await.expect("enqueue");
                ids.push(j.id.to_string());
            }
            let req = |id: &str, rate: i64| HoldRequest {
                job_id: id.into(),
                batch: None,
                model: "m".into(),
                day_start: crate::Timestamp::from_ms(0),
                tokens: 1000,
                rate,
                priced: rate > 0,
            };
            let r = s
                .budget_reserve(req(&ids[0], 0), DailyCaps::default())
                .await
                .expect("reserve")
                .expect_err(&format!(
                    "{name}: an unpriced job under a key cap is refused"
                ));
            assert_eq!(r.scope, Scope::KeyDaily, "{name}");
            assert_eq!(r.need, 0, "{name}");
            s.budget_reserve(req(&ids[1], 2), DailyCaps::default())
                .await
                .expect("reserve")
                .unwrap_or_else(|r| panic!("{name}: a priced job fits the cap: {r:?}"));
            // Without a key cap, an unpriced job reserves nothing and passes.
            s.budget_reserve(req("free", 0), DailyCaps::default())
                .await
                .expect("reserve")
                .unwrap_or_else(|r| panic!("{name}: no cap binds: {r:?}"));
        }
    }
}
