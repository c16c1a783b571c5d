//! Claims that do not count: the in-flight and flex-token counters the submit claim reads
//! (migrations/0014_claim_counters.sql, postgres/0005_claim_counters.sql).
//!
//! Triggers on `jobs` keep `in_flight_counts` (tasks holding a remote slot per model, tier and
//! resolution) and `flex_token_counts` (the flex TPD spend per model and 15-minute bucket of
//! `submit_started_at`). A trigger runs inside the statement that changes the job, so a
//! counter moves in the same transaction as every change that moves it, whichever verb or
//! bulk statement makes it, and a crash anywhere leaves both as they were or both changed.
//!
//! `job_counts` (migrations/0018_job_counts.sql and postgres/0018: jobs, tokens and the
//! archive's numbers per model and state, what `seedq stats` reads) is kept the same way and
//! checked with them. On both, so is `ui_batch_counts` (jobs and billed tokens per batch, state, model,
//! tier and shape: the dashboard's batch cells, migrations/0008_ui.sql and postgres/0001).
//!
//! On PostgreSQL each counter key has up to 16 rows (migrations/postgres/0016): a
//! trigger adds its change to the row of its own backend's stripe, and every read sums the
//! stripes. Every job of a one-model batch moves the same few keys, so with one row a key the
//! fleet's transitions queued behind each other's row locks until commit
//! (docs/performance-fleet.md); with stripes, two transactions wait for each other only when
//! their backends share a stripe. A stripe may hold a negative number (a job counted in by
//! one backend and out by another); only a key's sum means anything.
//!
//! [`Store::check_counters`] recounts them from the jobs and compares; maintenance runs it now
//! and then, logs and counts any drift (`seedq_counter_drift_total`) and repairs it. Drift
//! means a write that bypassed the triggers (a hand edit, a restore of one table).

use std::collections::BTreeMap;

use super::StoreError;

/// The width of a flex token bucket (ms): 15 minutes, so a day that starts at midnight in any
/// real time zone starts on a bucket boundary.
pub const TOKEN_BUCKET_MS: i64 = 900_000;

/// The first bucket boundary at or after `t`.
pub(crate) fn bucket_ceil(t: i64) -> i64 {
    t.div_euclid(TOKEN_BUCKET_MS) * TOKEN_BUCKET_MS
        + if t.rem_euclid(TOKEN_BUCKET_MS) == 0 {
            0
        } else {
            TOKEN_BUCKET_MS
        }
}

/// One counter that disagreed with the recount.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CounterDrift {
    /// `in_flight`, `flex_tokens`, `batch_cells` or `job_counts`.
    pub counter: &'static str,
    /// `model/tier/resolution`, `model@bucket_start_ms`, `batch/state/model/tier/shape/column`,
    /// or `model/state/column`.
    pub key: String,
    /// What the counter said.
    pub counted: i64,
    /// What the jobs say.
    pub recounted: i64,
}

/// Counter rows keyed for comparison: (counter, key) → value.
pub(crate) type Counts = BTreeMap<(&'static str, String), i64>;

/// The differences between the counters and the recount (zeros and missing rows are equal).
pub(crate) fn diff(counted: &Counts, recounted: &Counts) -> Vec<CounterDrift> {
    let mut keys: Vec<&(&'static str, String)> = counted.keys().chain(recounted.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let a = counted.get(k).copied().unwrap_or(0);
            let b = recounted.get(k).copied().unwrap_or(0);
            (a != b).then(|| CounterDrift {
                counter: k.0,
                key: k.1.clone(),
                counted: a,
                recounted: b,
            })
        })
        .collect()
}

/// The tier stays the column's raw text here: the drift check compares the counter table with a
/// recount row by row and must report whatever either side holds, even a value no Tier names.
pub(crate) fn in_flight_key(model: &str, tier: &str, res: &str) -> (&'static str, String) {
    ("in_flight", format!("{model}/{tier}/{res}"))
}

pub(crate) fn tokens_key(model: &str, bucket: i64) -> (&'static str, String) {
    ("flex_tokens", format!("{model}@{bucket}"))
}

/// The columns of `ui_batch_counts` after its key (and, on PostgreSQL, its stripe), in the
/// order [`BATCH_CELLS_COUNTED`] and [`BATCH_CELLS_RECOUNT`] return them. The first six are
/// sums, kept exactly and checked against the recount; the last three are bounds, the earliest
/// (or latest) value any job brought into the cell: a job that leaves a cell does not take its
/// time with it, since a minimum cannot be undone by a delta (migrations/0024_batch_cell_sums.sql).
pub(crate) const BATCH_CELL_COLUMNS: &str = "jobs, usage_tokens, est_tokens, est_tokens_of_used, \
     gen_ms_sum, gen_ms_count, first_created, first_submitted, last_finished";

/// The sums of [`BATCH_CELL_COLUMNS`], as drift keys name them.
const BATCH_CELL_SUMS: [&str; 6] = [
    "jobs",
    "usage_tokens",
    "est_tokens",
    "est_tokens_of_used",
    "gen_ms_sum",
    "gen_ms_count",
];

/// `ui_batch_counts` as stored, one row a cell (PostgreSQL sums a cell's stripes). The same
/// statement on both backends: `CAST(… AS BIGINT)` because
/// PostgreSQL's `SUM(bigint)` is numeric.
pub(crate) const BATCH_CELLS_COUNTED: &str = "SELECT batch_id, state, model, service_tier, shape, \
     CAST(SUM(jobs) AS BIGINT), CAST(SUM(usage_tokens) AS BIGINT), \
     CAST(SUM(est_tokens) AS BIGINT), CAST(SUM(est_tokens_of_used) AS BIGINT), \
     CAST(SUM(gen_ms_sum) AS BIGINT), CAST(SUM(gen_ms_count) AS BIGINT), \
     MIN(first_created), MIN(first_submitted), MAX(last_finished) FROM ui_batch_counts \
     GROUP BY 1, 2, 3, 4, 5";

/// `ui_batch_counts` recounted from the jobs (a scan of the batched ones): what the triggers
/// keep, and what a repair writes.
pub(crate) const BATCH_CELLS_RECOUNT: &str = "SELECT batch_id, state, model, service_tier, \
     COALESCE(shape, ''), COUNT(*), CAST(COALESCE(SUM(usage_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(est_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN usage_tokens IS NOT NULL THEN est_tokens END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(gen_ms), 0) AS BIGINT), COUNT(gen_ms), \
     MIN(created_at), MIN(submitted_at), MAX(finished_at) FROM jobs \
     WHERE batch_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5";

/// One row of [`BATCH_CELLS_COUNTED`] or [`BATCH_CELLS_RECOUNT`] (its key and sums), as drift
/// keys.
pub(crate) fn batch_cell_keys(cell: [&str; 5], sums: [i64; 6], into: &mut Counts) {
    let [batch, state, model, tier, shape] = cell;
    for (column, v) in BATCH_CELL_SUMS.iter().zip(sums) {
        into.insert(
            (
                "batch_cells",
                format!("{batch}/{state}/{model}/{tier}/{shape}/{column}"),
            ),
            v,
        );
    }
}

/// The columns of `job_counts` after its key, as drift keys name them.
const JOB_COUNT_FIELDS: [&str; 6] = [
    "jobs",
    "est_tokens",
    "usage_tokens",
    "archive_bytes",
    "archive_retried",
    "result_expired",
];

/// One row of `job_counts` (as stored or recounted), as drift keys.
pub(crate) fn job_count_keys(model: &str, state: &str, values: [i64; 6], into: &mut Counts) {
    for (field, v) in JOB_COUNT_FIELDS.iter().zip(values) {
        into.insert(("job_counts", format!("{model}/{state}/{field}")), v);
    }
}

/// The resolution of a shape as the counters key it (SQLite; `seedq_resolution` on PostgreSQL).
pub(crate) const RESOLUTION_SQL: &str = "CASE WHEN instr(COALESCE(shape, ''), '/') > 0 \
     THEN substr(shape, 1, instr(shape, '/') - 1) ELSE COALESCE(shape, '') END";

backend_trait! {
    /// The trigger-kept counters, checked against a full recount and pruned.
    trait CounterStore {
        /// Recounts the claim counters from the jobs and returns every counter that disagreed;
        /// with `repair`, replaces them with the recount in the same transaction. Costs a scan of
        /// the in-flight and submitted flex jobs: maintenance runs it, the claim never does.
        ///
        /// # Errors
        /// SQL errors.
        pub fn check_counters(&self, repair: bool) -> Result<Vec<CounterDrift>, StoreError>;

        /// Removes token buckets that fell to zero (every job in them pruned or given back).
        ///
        /// # Errors
        /// SQL errors.
        pub fn prune_counters(&self) -> Result<usize, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::{TOKEN_BUCKET_MS, bucket_ceil};
    use crate::job::JobState;
    use crate::tests::raw;
    use crate::tier::Tier;
    use crate::{FleetLimits, NewJob, ResolutionScope, Store, now_ms, testpg};

    /// Whether `counter` drifted from its recount by a multiple of `by` (every row of a key
    /// moves when a test edits the table, and PostgreSQL may keep a key in several stripes).
    fn drifted(drift: &[super::CounterDrift], counter: &str, by: i64) -> bool {
        drift.iter().any(|d| {
            let off = d.counted - d.recounted;
            d.counter == counter && off != 0 && off.signum() == by.signum() && off % by == 0
        })
    }

    /// The claim reads the counters: the tier's cap and the day's flex tokens hold with
    /// counters alone; a counter changed behind the triggers' back is found by the recount,
    /// and the repair puts back what the jobs say.
    async fn counters_cap_claims_and_drift_is_repaired(name: &str, s: &Store) {
        let jobs: Vec<NewJob> = (0..10)
            .map(|i| {
                let mut j = NewJob::plain("{}");
                j.flex = true;
                j.batch = Some("b".into());
                j.shape = Some(if i % 2 == 0 { "720p/5s" } else { "1080p/5s" }.into());
                j.est_tokens = Some(100);
                j
            })
            .collect();
        s.enqueue(jobs).await.expect("enqueue");
        let now = now_ms();
        let limits = |tpd: i64, day: i64| FleetLimits {
            tpd: Some(crate::FlexDay {
                tpd: u64::try_from(tpd).expect("tpd"),
                start: crate::Timestamp::from_ms(day),
                next: crate::Timestamp::from_ms(day + 86_400_000),
                straddle: std::time::Duration::ZERO,
            }),
            window: crate::tests::LEASE,
            ..FleetLimits::default()
        };
        let aligned = bucket_ceil(now) - TOKEN_BUCKET_MS;
        let got = s
            .claim_for_submit_limited(
                "m",
                Tier::Flex,
                3,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE,
                &limits(10_000, aligned),
            )
            .await
            .expect("claim");
        assert_eq!(got.len(), 3, "{name}: the in-flight cap of 3 holds");
        // A cap of 2 on 1080p alone leaves room for what the first claim did not take.
        let n1080 = got
            .iter()
            .filter(|j| j.shape.as_deref() == Some("1080p/5s"))
            .count();
        let only = s
            .claim_for_submit_tier(
                "m",
                Tier::Flex,
                100,
                ResolutionScope::Only("1080p".into(), 2),
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim 1080p");
        assert_eq!(only.len(), 2usize.saturating_sub(n1080), "{name}");
        assert!(
            only.iter().all(|j| j.shape.as_deref() == Some("1080p/5s")),
            "{name}"
        );
        // The day's spend is exact, whether the day starts on a bucket boundary (the counters
        // alone) or not (the counters plus the jobs of the part-bucket before the first
        // boundary): with two 100-token jobs in flight, a TPD of 299 has no room for a third
        // and one of 300 has. (A claim that finds no room defers the rest to the next day,
        // so each case has a model of its own.)
        for (model, day, tpd, want) in [
            ("a", aligned, 299, 0),
            ("b", aligned, 300, 1),
            ("c", now - 1, 299, 0),
            ("d", now - 1, 300, 1),
        ] {
            let jobs: Vec<NewJob> = (0..3)
                .map(|_| {
                    let mut j = NewJob::plain("{}");
                    j.model = model.into();
                    j.flex = true;
                    j.est_tokens = Some(100);
                    j
                })
                .collect();
            s.enqueue(jobs).await.expect("enqueue");
            let claim = async |limit: u32, tpd: i64| {
                s.claim_for_submit_limited(
                    model,
                    Tier::Flex,
                    100,
                    ResolutionScope::All,
                    limit,
                    "w",
                    crate::tests::LEASE,
                    &limits(tpd, day),
                )
                .await
            };
            assert_eq!(claim(2, 10_000).await.expect("claim").len(), 2, "{name}");
            let got = claim(10, tpd).await.expect("claim within TPD");
            assert_eq!(got.len(), want, "{name}: {model}: TPD {tpd}");
        }
        let in_flight = s.in_flight_tier("m", Tier::Flex).await.expect("n");
        assert_eq!(in_flight, 3 + only.len() as i64, "{name}");
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}"
        );

        // Each row of a key moves (PostgreSQL may keep a key in several stripes), so a drift is
        // a multiple of the change.
        raw(s, "UPDATE in_flight_counts SET jobs = jobs + 5").await;
        raw(s, "UPDATE flex_token_counts SET tokens = tokens - 7").await;
        raw(s, "UPDATE ui_batch_counts SET jobs = jobs + 2").await;
        let drift = s.check_counters(false).await.expect("check");
        assert!(drifted(&drift, "in_flight", 5), "{name}: {drift:?}");
        assert!(drifted(&drift, "flex_tokens", -7), "{name}: {drift:?}");
        assert!(drifted(&drift, "batch_cells", 2), "{name}: {drift:?}");
        assert_eq!(
            s.check_counters(false).await.expect("check"),
            drift,
            "{name}: a check alone repairs nothing"
        );
        assert_eq!(
            s.check_counters(true).await.expect("repair"),
            drift,
            "{name}"
        );
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}: repaired"
        );
        assert_eq!(
            s.in_flight_tier("m", Tier::Flex).await.expect("n"),
            in_flight,
            "{name}"
        );
    }

    #[tokio::test]
    async fn counters_cap_claims_and_drift_is_repaired_on_both_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            counters_cap_claims_and_drift_is_repaired(name, &s).await;
        }
    }

    /// `seedq stats` reads counts the triggers keep (migrations/0018 and postgres/0018): they
    /// follow the bulk enqueue, a single insert, claims and deletes, and a count changed behind
    /// the triggers' back is found by the recount and repaired.
    async fn stats_follow_every_change(name: &str, s: &Store) {
        let jobs: Vec<NewJob> = (0..6)
            .map(|_| {
                let mut j = NewJob::plain("{}");
                j.est_tokens = Some(10);
                j
            })
            .collect();
        s.enqueue(jobs).await.expect("bulk enqueue");
        // One job alone takes the same path as a batch: a second insert path is a chain shot.
        let mut shot = NewJob::plain("{}");
        shot.est_tokens = Some(5);
        s.enqueue_chain("c1", 0, vec![shot]).await.expect("chain");
        let got = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                100,
                ResolutionScope::All,
                2,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert_eq!(got.len(), 2, "{name}");
        let stats = s.stats().await.expect("stats");
        let by = |state: JobState| {
            stats
                .iter()
                .filter(|r| r.state == state)
                .map(|r| (r.jobs, r.est_tokens))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        assert_eq!(by(JobState::Submitting), (2, 20), "{name}: {stats:?}");
        assert_eq!(by(JobState::Queued), (5, 45), "{name}: {stats:?}");
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}"
        );
        // Every row of the key moves (PostgreSQL may keep it in several stripes).
        raw(
            s,
            "UPDATE job_counts SET jobs = jobs + 3 WHERE state = 'queued'",
        )
        .await;
        let drift = s.check_counters(false).await.expect("check");
        assert!(drifted(&drift, "job_counts", 3), "{name}: {drift:?}");
        assert_eq!(
            s.check_counters(true).await.expect("repair"),
            drift,
            "{name}"
        );
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}"
        );
        assert_eq!(s.stats().await.expect("stats"), stats, "{name}: repaired");
    }

    #[tokio::test]
    async fn stats_follow_every_change_on_both_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            stats_follow_every_change(name, &s).await;
        }
    }

    #[test]
    fn bucket_ceil_rounds_up_to_a_boundary() {
        assert_eq!(bucket_ceil(0), 0);
        assert_eq!(bucket_ceil(1), TOKEN_BUCKET_MS);
        assert_eq!(bucket_ceil(TOKEN_BUCKET_MS), TOKEN_BUCKET_MS);
        assert_eq!(bucket_ceil(TOKEN_BUCKET_MS + 1), 2 * TOKEN_BUCKET_MS);
        // A UTC+8 midnight is a boundary.
        let day = 1_700_000_000_000i64.div_euclid(86_400_000) * 86_400_000 - 8 * 3_600_000;
        assert_eq!(bucket_ceil(day), day);
    }

    /// A counter row that fell to zero (its job left flight) is pruned, once, and the
    /// counters still agree with a recount before and after; a later claim counts anew.
    async fn zero_rows_are_pruned(name: &str, s: &Store) {
        let mut j = NewJob::plain("{}");
        j.flex = true;
        j.shape = Some("720p/5s".into());
        j.est_tokens = Some(100);
        s.enqueue(vec![j]).await.expect("enqueue");
        let claim = |s: &Store| {
            let s = s.clone();
            async move {
                s.claim_for_submit_tier(
                    "m",
                    Tier::Flex,
                    5,
                    ResolutionScope::All,
                    1,
                    "w",
                    crate::tests::LEASE,
                )
                .await
                .expect("claim")
            }
        };
        let got = claim(s).await;
        assert_eq!(got.len(), 1, "{name}");
        let requeue = crate::Requeue {
            at: crate::Timestamp::EPOCH,
            attempts: Some(0),
            error: crate::ErrorNote::Clear,
        };
        s.requeue(
            &got[0].id,
            JobState::Submitting,
            got[0].lease_token,
            requeue,
            "no task was made".into(),
        )
        .await
        .expect("requeue");
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}"
        );
        let pruned = s.prune_counters().await.expect("prune");
        assert!(
            pruned >= 1,
            "{name}: the in-flight row at zero goes, pruned {pruned}"
        );
        assert_eq!(s.prune_counters().await.expect("prune again"), 0, "{name}");
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}"
        );
        assert_eq!(
            claim(s).await.len(),
            1,
            "{name}: claimed again, counted anew"
        );
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}"
        );
    }

    /// PostgreSQL (migrations/postgres/0016_striped_counters.sql): two transactions on backends
    /// of different stripes move jobs of one batch cell, tier and flex bucket into flight
    /// without waiting for each other's counter rows, and the sums stay equal to a recount.
    /// With one row a key, the second would wait on the first's row locks until its commit.
    #[tokio::test]
    async fn transitions_on_two_stripes_do_not_wait_for_each_other() {
        let s = testpg::pg_store().await;
        let jobs: Vec<NewJob> = (0..2)
            .map(|_| {
                let mut j = NewJob::plain("{}");
                j.flex = true;
                j.batch = Some("b".into());
                j.shape = Some("720p/5s".into());
                j.est_tokens = Some(100);
                j
            })
            .collect();
        let ids = s.enqueue(jobs).await.expect("enqueue").inserted;
        let pg = s.pg().expect("postgres");
        let stripe = async |c: &deadpool_postgres::Object| -> i32 {
            // The triggers' stripe (migrations/postgres/0016_striped_counters.sql).
            c.query_one("SELECT pg_backend_pid() % 16", &[])
                .await
                .expect("pid")
                .get(0)
        };
        let mut a = pg.conn().await.expect("conn");
        let first = stripe(&a).await;
        // Held until one on another stripe turns up (pool connections are distinct backends).
        let mut held = Vec::new();
        let mut b = loop {
            let c = pg.conn().await.expect("conn");
            if stripe(&c).await != first {
                break c;
            }
            held.push(c);
            assert!(held.len() < 8, "eight backends on one stripe");
        };
        let submit = "UPDATE jobs SET state = 'submitting', submit_started_at = $2 WHERE id = $1";
        let now = now_ms();
        let ta = a.transaction().await.expect("begin a");
        ta.execute(submit, &[&ids[0].as_str(), &now])
            .await
            .expect("a moves its job");
        let tb = b.transaction().await.expect("begin b");
        tb.batch_execute("SET LOCAL lock_timeout = '2s'")
            .await
            .expect("lock timeout");
        tb.execute(submit, &[&ids[1].as_str(), &now])
            .await
            .expect("b moves its job without waiting for a's commit");
        tb.commit().await.expect("commit b");
        ta.commit().await.expect("commit a");
        drop(held);
        assert!(s.check_counters(false).await.expect("check").is_empty());
        assert_eq!(s.in_flight_tier("m", Tier::Flex).await.expect("n"), 2);
        let cells = s.ui_batch_cells("b").await.expect("cells");
        assert_eq!(cells.len(), 1, "{cells:?}");
        assert_eq!(
            (cells[0].state, cells[0].jobs),
            (JobState::Submitting, 2),
            "{cells:?}"
        );
    }

    #[tokio::test]
    async fn counter_rows_at_zero_are_pruned_on_both_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            zero_rows_are_pruned(name, &s).await;
        }
    }
}
