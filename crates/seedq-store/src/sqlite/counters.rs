//! SQLite implementation of [`CounterStore`] (declared in `store/counters.rs`; the PostgreSQL
//! implementation is `store/postgres/counters.rs`).

use super::SqliteStore;
use crate::StoreError;
use crate::counters::*;
use crate::tier::Tier;
use rusqlite::{Connection, TransactionBehavior, params};

/// Both counters as stored, and as recounted from the jobs.
fn read_both(c: &Connection) -> rusqlite::Result<(Counts, Counts)> {
    let mut counted = Counts::new();
    let mut st =
        c.prepare_cached("SELECT model, service_tier, resolution, jobs FROM in_flight_counts")?;
    for r in st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get(3)?,
        ))
    })? {
        let (m, t, res, n) = r?;
        counted.insert(in_flight_key(&m, &t, &res), n);
    }
    let mut st = c.prepare_cached("SELECT model, bucket, tokens FROM flex_token_counts")?;
    for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))? {
        let (m, b, n) = r?;
        counted.insert(tokens_key(&m, b), n);
    }
    let mut recounted = Counts::new();
    let mut st = c.prepare_cached(&format!(
        "SELECT model, service_tier, {RESOLUTION_SQL}, COUNT(*) FROM jobs \
         WHERE {} GROUP BY 1, 2, 3",
        super::core::IN_FLIGHT_PREDICATE
    ))?;
    for r in st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get(3)?,
        ))
    })? {
        let (m, t, res, n) = r?;
        recounted.insert(in_flight_key(&m, &t, &res), n);
    }
    let mut st = c.prepare_cached(&format!(
        "SELECT model, (submit_started_at / {TOKEN_BUCKET_MS}) * {TOKEN_BUCKET_MS}, \
         SUM(COALESCE(usage_tokens, est_tokens, 0)) FROM jobs \
         WHERE service_tier = 'flex' AND submit_started_at IS NOT NULL \
         AND (submitted_at IS NOT NULL OR state IN ('submitting', 'submit_unknown')) \
         GROUP BY 1, 2"
    ))?;
    for r in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))? {
        let (m, b, n) = r?;
        recounted.insert(tokens_key(&m, b), n);
    }
    // `seedq stats`' counts (SQLite only: migrations/0018_job_counts.sql).
    let job_counts = |sql: &str, into: &mut Counts| -> rusqlite::Result<()> {
        let mut st = c.prepare_cached(sql)?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                [
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ],
            ))
        })?;
        for r in rows {
            let (m, state, values) = r?;
            job_count_keys(&m, &state, values, into);
        }
        Ok(())
    };
    job_counts(
        "SELECT model, state, jobs, est_tokens, usage_tokens, archive_bytes, archive_retried, \
         result_expired FROM job_counts",
        &mut counted,
    )?;
    job_counts(JOB_COUNTS_RECOUNT, &mut recounted)?;
    batch_cells(c, BATCH_CELLS_COUNTED, &mut counted)?;
    batch_cells(c, BATCH_CELLS_RECOUNT, &mut recounted)?;
    Ok((counted, recounted))
}

/// The batch cells one of `BATCH_CELLS_COUNTED` or `BATCH_CELLS_RECOUNT` reads (their sums).
fn batch_cells(c: &Connection, sql: &str, into: &mut Counts) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map([], |r| {
        Ok((
            [
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ],
            [
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
            ],
        ))
    })?;
    for r in rows {
        let (cell, sums) = r?;
        batch_cell_keys(cell.each_ref().map(String::as_str), sums, into);
    }
    Ok(())
}

/// `job_counts` recounted from the jobs (a scan of them all).
const JOB_COUNTS_RECOUNT: &str = "SELECT model, state, COUNT(*), COALESCE(SUM(est_tokens), 0), \
     COALESCE(SUM(usage_tokens), 0), COALESCE(SUM(archive_size), 0), SUM(archive_attempts > 0), \
     SUM(COALESCE(last_error_code, '') = 'result_expired') FROM jobs GROUP BY model, state";

/// Replaces the counters with the recount (the caller holds the write lock).
fn rebuild(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(&format!(
        "DELETE FROM in_flight_counts; \
         INSERT INTO in_flight_counts SELECT model, service_tier, {RESOLUTION_SQL}, COUNT(*) \
           FROM jobs WHERE {} GROUP BY 1, 2, 3; \
         DELETE FROM flex_token_counts; \
         INSERT INTO flex_token_counts \
           SELECT model, (submit_started_at / {TOKEN_BUCKET_MS}) * {TOKEN_BUCKET_MS}, \
                  SUM(COALESCE(usage_tokens, est_tokens, 0)) FROM jobs \
           WHERE service_tier = 'flex' AND submit_started_at IS NOT NULL \
             AND (submitted_at IS NOT NULL OR state IN ('submitting', 'submit_unknown')) \
           GROUP BY 1, 2; \
         DELETE FROM job_counts; \
         INSERT INTO job_counts {JOB_COUNTS_RECOUNT}; \
         DELETE FROM ui_batch_counts; \
         INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, \
                                      {BATCH_CELL_COLUMNS}) {BATCH_CELLS_RECOUNT};",
        super::core::IN_FLIGHT_PREDICATE
    ))
}

/// Tasks of (`model`, `tier`) holding a remote slot, of resolution `res` alone when given.
pub(crate) fn in_flight_in_tx(
    c: &Connection,
    model: &str,
    tier: Tier,
    res: Option<&str>,
) -> rusqlite::Result<i64> {
    c.prepare_cached(
        "SELECT COALESCE(SUM(jobs), 0) FROM in_flight_counts \
         WHERE model = ?1 AND service_tier = ?2 AND (?3 IS NULL OR resolution = ?3)",
    )?
    .query_row(params![model, tier, res], |r| r.get(0))
}

/// Flex tokens of `model` spent since `day` (the recount of store/fleet.rs `room_in_tx`): the
/// buckets from the first boundary at or after `day`, plus the jobs before it, an empty range
/// when the day starts on a boundary.
pub(crate) fn flex_spent_in_tx(c: &Connection, model: &str, day: i64) -> rusqlite::Result<i64> {
    let edge = bucket_ceil(day);
    let buckets: i64 = c
        .prepare_cached(
            "SELECT COALESCE(SUM(tokens), 0) FROM flex_token_counts WHERE model = ?1 AND bucket >= ?2",
        )?
        .query_row(params![model, edge], |r| r.get(0))?;
    let head: i64 = c
        .prepare_cached(
            "SELECT COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs \
             WHERE submit_started_at >= ?1 AND submit_started_at < ?2 AND model = ?3 \
             AND service_tier = 'flex' \
             AND (submitted_at IS NOT NULL OR state IN ('submitting', 'submit_unknown'))",
        )?
        .query_row(params![day, edge, model], |r| r.get(0))?;
    Ok(buckets + head)
}

impl CounterStore for SqliteStore {
    async fn check_counters(&self, repair: bool) -> Result<Vec<CounterDrift>, StoreError> {
        self.call(move |c| {
            // IMMEDIATE: no writer moves a job between the read of the counters and the
            // recount, nor between the recount and the repair.
            let tx = c.transaction_with_behavior(if repair {
                TransactionBehavior::Immediate
            } else {
                TransactionBehavior::Deferred
            })?;
            let (counted, recounted) = read_both(&tx)?;
            let drift = diff(&counted, &recounted);
            if repair && !drift.is_empty() {
                rebuild(&tx)?;
            }
            tx.commit()?;
            Ok(drift)
        })
        .await
    }

    async fn prune_counters(&self) -> Result<usize, StoreError> {
        self.call(|c| {
            Ok(
                c.execute("DELETE FROM flex_token_counts WHERE tokens = 0", [])?
                    + c.execute("DELETE FROM in_flight_counts WHERE jobs = 0", [])?,
            )
        })
        .await
    }
}
