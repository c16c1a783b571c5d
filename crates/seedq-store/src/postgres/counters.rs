//! PostgreSQL implementation of the claim counters (`store/counters.rs` has the design,
//! `store/sqlite/counters.rs` the SQLite one, `migrations/postgres/0005_claim_counters.sql`
//! the triggers).

use crate::counters::CounterStore;
use crate::tier::Tier;
use deadpool_postgres::GenericClient;

use super::PgStore;
use crate::StoreError;
use crate::counters::{
    BATCH_CELL_COLUMNS, BATCH_CELLS_COUNTED, BATCH_CELLS_RECOUNT, CounterDrift, Counts,
    TOKEN_BUCKET_MS, batch_cell_keys, bucket_ceil, diff, in_flight_key, job_count_keys, tokens_key,
};

/// Tasks of (`model`, `tier`) holding a remote slot, of resolution `res` alone when given.
pub(crate) async fn in_flight_in_tx(
    c: &impl GenericClient,
    model: &str,
    tier: Tier,
    res: Option<&str>,
) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "SELECT COALESCE(SUM(jobs), 0)::BIGINT FROM in_flight_counts \
         WHERE model = $1 AND service_tier = $2 AND ($3::text IS NULL OR resolution = $3)",
        &[&model, &tier, &res],
    )
    .await?
    .try_get(0)?)
}

/// Flex tokens of `model` spent since `day` (see the SQLite `flex_spent_in_tx`).
pub(crate) async fn flex_spent_in_tx(
    c: &impl GenericClient,
    model: &str,
    day: i64,
) -> Result<i64, StoreError> {
    let edge = bucket_ceil(day);
    Ok(c.query_one(
        "SELECT (SELECT COALESCE(SUM(tokens), 0) FROM flex_token_counts \
                 WHERE model = $1 AND bucket >= $3)::BIGINT \
              + (SELECT COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs \
                 WHERE submit_started_at >= $2 AND submit_started_at < $3 AND model = $1 \
                 AND service_tier = 'flex' \
                 AND (submitted_at IS NOT NULL OR state IN ('submitting', 'submit_unknown')))::BIGINT",
        &[&model, &day, &edge],
    )
    .await?
    .try_get(0)?)
}

const RECOUNT_IN_FLIGHT: &str = "SELECT model, service_tier, seedq_resolution(shape), \
     COUNT(*)::BIGINT FROM jobs WHERE seedq_in_flight(state, last_error_code) GROUP BY 1, 2, 3";

fn recount_tokens() -> String {
    format!(
        "SELECT model, (submit_started_at / {TOKEN_BUCKET_MS}) * {TOKEN_BUCKET_MS}, \
         SUM(COALESCE(usage_tokens, est_tokens, 0))::BIGINT FROM jobs \
         WHERE service_tier = 'flex' AND submit_started_at IS NOT NULL \
         AND (submitted_at IS NOT NULL OR state IN ('submitting', 'submit_unknown')) \
         GROUP BY 1, 2"
    )
}

/// `job_counts` as stored, a key's stripes summed (migrations/postgres/0018_job_counts.sql).
const JOB_COUNTS_COUNTED: &str = "SELECT model, state, SUM(jobs)::BIGINT, \
     SUM(est_tokens)::BIGINT, SUM(usage_tokens)::BIGINT, SUM(archive_bytes)::BIGINT, \
     SUM(archive_retried)::BIGINT, SUM(result_expired)::BIGINT FROM job_counts GROUP BY 1, 2";

/// `job_counts` recounted from the jobs (a scan of them all), in its columns' order.
const JOB_COUNTS_RECOUNT: &str = "SELECT model, state, COUNT(*), \
     COALESCE(SUM(est_tokens), 0)::BIGINT, COALESCE(SUM(usage_tokens), 0)::BIGINT, \
     COALESCE(SUM(archive_size), 0)::BIGINT, COUNT(*) FILTER (WHERE archive_attempts > 0), \
     COUNT(*) FILTER (WHERE last_error_code = 'result_expired') FROM jobs GROUP BY 1, 2";

async fn read_both(c: &impl GenericClient) -> Result<(Counts, Counts), StoreError> {
    let mut counted = Counts::new();
    // A key's stripes summed (migrations/postgres/0016_striped_counters.sql).
    for r in c
        .query(
            "SELECT model, service_tier, resolution, SUM(jobs)::BIGINT FROM in_flight_counts \
             GROUP BY 1, 2, 3",
            &[],
        )
        .await?
    {
        counted.insert(
            in_flight_key(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
            r.try_get(3)?,
        );
    }
    for r in c
        .query(
            "SELECT model, bucket, SUM(tokens)::BIGINT FROM flex_token_counts GROUP BY 1, 2",
            &[],
        )
        .await?
    {
        counted.insert(tokens_key(r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
    }
    let mut recounted = Counts::new();
    for r in c.query(RECOUNT_IN_FLIGHT, &[]).await? {
        recounted.insert(
            in_flight_key(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
            r.try_get(3)?,
        );
    }
    for r in c.query(&recount_tokens(), &[]).await? {
        recounted.insert(tokens_key(r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
    }
    for (sql, into) in [
        (JOB_COUNTS_COUNTED, &mut counted),
        (JOB_COUNTS_RECOUNT, &mut recounted),
    ] {
        for r in c.query(sql, &[]).await? {
            let (model, state): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let values: [i64; 6] = [
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
            ];
            job_count_keys(&model, &state, values, into);
        }
    }
    for (sql, into) in [
        (BATCH_CELLS_COUNTED, &mut counted),
        (BATCH_CELLS_RECOUNT, &mut recounted),
    ] {
        for r in c.query(sql, &[]).await? {
            let cell: [String; 5] = [
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            ];
            let sums: [i64; 6] = [
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
                r.try_get(8)?,
                r.try_get(9)?,
                r.try_get(10)?,
            ];
            batch_cell_keys(cell.each_ref().map(String::as_str), sums, into);
        }
    }
    Ok((counted, recounted))
}

impl CounterStore for PgStore {
    ///
    /// The check reads the counters and the recount from one REPEATABLE READ snapshot, where a
    /// trigger's change and the job's change are both visible or both not, so it takes no lock.
    /// Only a repair locks the counter tables against the triggers (SHARE ROW EXCLUSIVE conflicts
    /// with their ROW EXCLUSIVE), then recounts what is committed and replaces the counters.
    async fn check_counters(&self, repair: bool) -> Result<Vec<CounterDrift>, StoreError> {
        let mut c = self.conn().await?;
        let drift = {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let (counted, recounted) = read_both(&tx).await?;
            tx.commit().await?;
            diff(&counted, &recounted)
        };
        if !repair || drift.is_empty() {
            return Ok(drift);
        }
        let tx = c.transaction().await?;
        tx.batch_execute(
            "LOCK TABLE in_flight_counts, flex_token_counts, ui_batch_counts, job_counts \
             IN SHARE ROW EXCLUSIVE MODE",
        )
        .await?;
        // Under the lock no transaction has a counter change in flight, and this statement's
        // snapshot sees every job change whose counter change committed. The recount goes into
        // stripe 0 (the column's default) of each key.
        let (counted, recounted) = read_both(&tx).await?;
        let drift = diff(&counted, &recounted);
        tx.batch_execute(&format!(
            "DELETE FROM in_flight_counts; \
     INSERT INTO in_flight_counts (model, service_tier, resolution, jobs) {RECOUNT_IN_FLIGHT}; \
     DELETE FROM flex_token_counts; \
     INSERT INTO flex_token_counts (model, bucket, tokens) {}; \
     DELETE FROM ui_batch_counts; \
     INSERT INTO ui_batch_counts (batch_id, state, model, service_tier, shape, \
                                  {BATCH_CELL_COLUMNS}) {BATCH_CELLS_RECOUNT}; \
     DELETE FROM job_counts; \
     INSERT INTO job_counts (model, state, jobs, est_tokens, usage_tokens, archive_bytes, \
                             archive_retried, result_expired) {JOB_COUNTS_RECOUNT};",
            recount_tokens()
        ))
        .await?;
        tx.commit().await?;
        Ok(drift)
    }

    async fn prune_counters(&self) -> Result<usize, StoreError> {
        let mut c = self.conn().await?;
        // A claim counter's row at zero adds nothing to its key's sum. A trigger's concurrent
        // change of the row waits for this delete, which then re-reads the row and keeps it.
        let mut n = c
            .execute("DELETE FROM flex_token_counts WHERE tokens = 0", &[])
            .await?
            + c.execute("DELETE FROM in_flight_counts WHERE jobs = 0", &[])
                .await?
            + c.execute(
                "DELETE FROM job_counts WHERE jobs = 0 AND est_tokens = 0 \
                 AND usage_tokens = 0 AND archive_bytes = 0 AND archive_retried = 0 \
                 AND result_expired = 0",
                &[],
            )
            .await?;
        // A batch cell's rows go together, once its stripes sum to zero: a stripe's bounds
        // may be the cell's own (migrations/postgres/0017_batch_cell_sums.sql). The sums are
        // read across rows, so the triggers wait for the lock (the repair's) meanwhile.
        let tx = c.transaction().await?;
        tx.batch_execute("LOCK TABLE ui_batch_counts IN SHARE ROW EXCLUSIVE MODE")
            .await?;
        n += tx
            .execute(
                "DELETE FROM ui_batch_counts u USING ( \
                 SELECT batch_id, state, model, service_tier, shape FROM ui_batch_counts \
                 GROUP BY 1, 2, 3, 4, 5 \
                 HAVING SUM(jobs) = 0 AND SUM(usage_tokens) = 0 AND SUM(est_tokens) = 0 \
                 AND SUM(est_tokens_of_used) = 0 AND SUM(gen_ms_sum) = 0 \
                 AND SUM(gen_ms_count) = 0) z \
                 WHERE u.batch_id = z.batch_id AND u.state = z.state AND u.model = z.model \
                 AND u.service_tier = z.service_tier AND u.shape = z.shape",
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
