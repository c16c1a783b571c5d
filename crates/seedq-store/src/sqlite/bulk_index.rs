//! The prompt index and the batch counts for a bulk enqueue, one statement each.
//!
//! The insert triggers (migrations 0008, 0010) keep `jobs_prompt_fts` and `ui_batch_counts` per
//! row. For the FTS5 table that is ruinous in bulk: FTS5 flushes its pending terms to a new
//! segment at every statement savepoint, so a per-row trigger writes one tiny segment per job
//! and merges them over and over (callgrind on `seedq bench enqueue --jobs 10000`: 60 % of the
//! enqueue's instructions). [`begin`] sets the marker row of `enqueue_bulk` that the triggers
//! test (migration 0011), and [`finish`] does their work for every job the transaction inserted
//! with one `INSERT … SELECT` into the index (one flush, segments of thousands of jobs) and one
//! aggregated upsert per (batch, state, model, tier, shape) cell, and one per (model, state) of
//! `job_counts` (migration 0018). All run inside the enqueue's
//! transaction, so the index and counts commit or roll back with the jobs.

use crate::tier::Tier;
use std::borrow::Cow;
use std::sync::LazyLock;

use rusqlite::types::ToSql;
use rusqlite::{Connection, params};

use crate::{NewJob, StoreError};

/// Jobs per INSERT statement of a bulk enqueue. One statement per job opened the table's and
/// each index's cursor, a statement journal and the insert triggers' checks again for every
/// row; a statement of many rows does that once per statement. 64 rows of 12 parameters stay
/// far below SQLite's limit of 32 766 parameters.
const ROWS_PER_INSERT: usize = 64;

/// Parameters per row of [`insert_sql`].
const PARAMS_PER_ROW: usize = 12;

/// The multi-row form of `INSERT_JOB_SQL` (store/mod.rs) for `rows` new `queued` jobs of an
/// enqueue: `?1` is now (created, updated, due), then [`PARAMS_PER_ROW`] per row. A duplicate
/// idempotency key (stored before, or earlier in the same statement) inserts nothing; the
/// statement returns the rowid and id of each row it did insert.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, priority, \
         request_json, idempotency_key, tags, batch_id, shape, est_tokens, deadline_at, \
         next_attempt_at, seed, callback_token) VALUES ",
    );
    for r in 0..rows {
        let p = |k: usize| r * PARAMS_PER_ROW + k + 2;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?{}, ?1, ?1, 'queued', ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?1, ?{}, \
             lower(hex(randomblob(16))))",
            p(0),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            p(9),
            p(10),
            p(11)
        ));
    }
    sql.push_str(" ON CONFLICT (idempotency_key) DO NOTHING RETURNING rowid, id");
    sql
}

/// [`insert_sql`] for a full chunk, built once.
static INSERT_FULL: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_INSERT));

/// Inserts the jobs of a bulk enqueue as new `queued` jobs due now, in order, in statements
/// of [`ROWS_PER_INSERT`] rows (as `insert_job` does one at a time: embedded images interned,
/// a flex job's local deadline starting now). Returns (rowid, id) of each row inserted; a job
/// whose idempotency key is already taken is not.
pub(crate) fn insert_rows(
    conn: &Connection,
    jobs: &[NewJob],
    now: i64,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(ROWS_PER_INSERT) {
        let mut bodies: Vec<Cow<'_, str>> = Vec::with_capacity(chunk.len());
        let mut tags: Vec<String> = Vec::with_capacity(chunk.len());
        let mut deadlines: Vec<Option<i64>> = Vec::with_capacity(chunk.len());
        for j in chunk {
            // Embedded images go to their own table, once each; the row keeps references.
            bodies.push(super::images::intern(conn, &j.request_json, now)?);
            tags.push(
                serde_json::to_string(&j.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
            deadlines.push(if j.flex {
                j.expires_after.map(|s| now + s * 1000)
            } else {
                None
            });
        }
        let ids: Vec<&str> = chunk.iter().map(|j| j.id.as_str()).collect();
        let bodies: Vec<&str> = bodies.iter().map(AsRef::as_ref).collect();
        let mut args: Vec<&dyn ToSql> = Vec::with_capacity(1 + chunk.len() * PARAMS_PER_ROW);
        args.push(&now);
        for (i, j) in chunk.iter().enumerate() {
            args.extend([
                &ids[i] as &dyn ToSql,
                &j.model,
                if j.flex { &Tier::Flex } else { &Tier::Default },
                &j.priority,
                &bodies[i],
                &j.key,
                &tags[i],
                &j.batch,
                &j.shape,
                &j.est_tokens,
                &deadlines[i],
                &j.seed,
            ]);
        }
        let mut st = if chunk.len() == ROWS_PER_INSERT {
            conn.prepare_cached(&INSERT_FULL)?
        } else {
            conn.prepare_cached(&insert_sql(chunk.len()))?
        };
        let mut rows = st.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            out.push((r.get(0)?, r.get(1)?));
        }
    }
    Ok(out)
}

/// The text parts of a job's request, as the 0010/0011 trigger indexes them.
const FTS_FILL: &str = "INSERT INTO jobs_prompt_fts (rowid, prompt) \
     SELECT j.rowid, (SELECT group_concat(json_extract(c.value, '$.text'), char(10)) \
                      FROM json_each(j.request_json, '$.content') AS c \
                      WHERE json_extract(c.value, '$.type') = 'text') \
     FROM jobs AS j WHERE {rows} AND json_valid(j.request_json)";

/// The insert trigger of 0024 (0008/0011 with the cells' sums and bounds), summed per cell.
const COUNTS_FILL: &str = "INSERT INTO ui_batch_counts \
     (batch_id, state, model, service_tier, shape, jobs, usage_tokens, est_tokens, \
      est_tokens_of_used, gen_ms_sum, gen_ms_count, first_created, first_submitted, last_finished) \
     SELECT j.batch_id, j.state, j.model, j.service_tier, COALESCE(j.shape, ''), COUNT(*), \
            COALESCE(SUM(j.usage_tokens), 0), COALESCE(SUM(j.est_tokens), 0), \
            COALESCE(SUM(CASE WHEN j.usage_tokens IS NOT NULL THEN j.est_tokens END), 0), \
            COALESCE(SUM(j.gen_ms), 0), COUNT(j.gen_ms), MIN(j.created_at), \
            MIN(j.submitted_at), MAX(j.finished_at) \
     FROM jobs AS j WHERE {rows} AND j.batch_id IS NOT NULL \
     GROUP BY j.batch_id, j.state, j.model, j.service_tier, COALESCE(j.shape, '') \
     ON CONFLICT DO UPDATE SET jobs = jobs + excluded.jobs, \
         usage_tokens = usage_tokens + excluded.usage_tokens, \
         est_tokens = est_tokens + excluded.est_tokens, \
         est_tokens_of_used = est_tokens_of_used + excluded.est_tokens_of_used, \
         gen_ms_sum = gen_ms_sum + excluded.gen_ms_sum, \
         gen_ms_count = gen_ms_count + excluded.gen_ms_count, \
         first_created = COALESCE(min(first_created, excluded.first_created), first_created, \
                                  excluded.first_created), \
         first_submitted = COALESCE(min(first_submitted, excluded.first_submitted), \
                                    first_submitted, excluded.first_submitted), \
         last_finished = COALESCE(max(last_finished, excluded.last_finished), last_finished, \
                                  excluded.last_finished)";

/// The insert trigger of 0018 (`seedq stats`' counts), summed per cell.
const JOB_COUNTS_FILL: &str = "INSERT INTO job_counts \
     (model, state, jobs, est_tokens, usage_tokens, archive_bytes, archive_retried, result_expired) \
     SELECT j.model, j.state, COUNT(*), COALESCE(SUM(j.est_tokens), 0), \
            COALESCE(SUM(j.usage_tokens), 0), COALESCE(SUM(j.archive_size), 0), \
            SUM(j.archive_attempts > 0), SUM(COALESCE(j.last_error_code, '') = 'result_expired') \
     FROM jobs AS j WHERE {rows} GROUP BY j.model, j.state \
     ON CONFLICT DO UPDATE SET jobs = jobs + excluded.jobs, \
         est_tokens = est_tokens + excluded.est_tokens, \
         usage_tokens = usage_tokens + excluded.usage_tokens, \
         archive_bytes = archive_bytes + excluded.archive_bytes, \
         archive_retried = archive_retried + excluded.archive_retried, \
         result_expired = result_expired + excluded.result_expired";

/// One `enqueued` event per inserted job, in insertion order (the order the per-row insert
/// wrote them in before), as one statement rather than one per job.
const EVENTS_FILL: &str = "INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
     SELECT j.id, ?3, NULL, 'queued', 'enqueued' FROM jobs AS j WHERE {rows} ORDER BY j.rowid";

/// The inserted rows when their rowids are consecutive: a range scan of the table.
const ROWS_RANGE: &str = "j.rowid BETWEEN ?1 AND ?2";
/// Any other set of rowids, as a JSON array.
const ROWS_LIST: &str = "j.rowid IN (SELECT value FROM json_each(?1))";

/// Turns the per-row insert triggers off for the rest of this transaction. Must be inside a
/// write transaction that ends with [`finish`] (or rolls back).
pub(crate) fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("INSERT INTO enqueue_bulk (one) VALUES (1)", [])?;
    Ok(())
}

/// Turns the triggers back on, writes the `enqueued` event of each job with these rowids and
/// indexes and counts them; all were inserted (and not changed since) after [`begin`] in this
/// transaction, at `now`.
pub(crate) fn finish(conn: &Connection, rowids: &[i64], now: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM enqueue_bulk", [])?;
    let (Some(lo), Some(hi)) = (rowids.iter().min(), rowids.iter().max()) else {
        return Ok(());
    };
    // SQLite gives a new row the largest rowid plus one, so the rows of one transaction are
    // consecutive and above all older ones; only after rowid 2^63-1 was used does it pick
    // free rowids at random. When the range holds exactly as many rowids as were inserted,
    // it holds exactly these rows.
    let consecutive = usize::try_from(hi - lo).is_ok_and(|d| d + 1 == rowids.len());
    let list = if consecutive {
        String::new()
    } else {
        serde_json::Value::from(rowids.to_vec()).to_string()
    };
    for sql in [EVENTS_FILL, FTS_FILL, COUNTS_FILL, JOB_COUNTS_FILL] {
        // Only the events statement has `?3`; the others take the rows alone.
        let mut st = if consecutive {
            conn.prepare_cached(&sql.replace("{rows}", ROWS_RANGE))?
        } else {
            conn.prepare_cached(&sql.replace("{rows}", ROWS_LIST))?
        };
        match (consecutive, sql == EVENTS_FILL) {
            (true, false) => st.execute(params![lo, hi])?,
            (true, true) => st.execute(params![lo, hi, now])?,
            (false, false) => st.execute([&list])?,
            (false, true) => st.execute(params![list, rusqlite::types::Null, now])?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{NewJob, Store, UiFilter};

    /// A job of `batch` with prompt `text`; model, tier and shape vary with `n`.
    fn job(n: usize, batch: Option<&str>, text: &str) -> NewJob {
        let mut j = NewJob::plain(
            serde_json::json!({
                "model": "m",
                "content": [{"type": "text", "text": text}],
            })
            .to_string(),
        );
        j.batch = batch.map(str::to_string);
        j.model = ["m1", "m2"][n % 2].to_string();
        j.flex = n.is_multiple_of(3);
        j.shape = [None, Some("720p/5s"), Some("1080p/10s")][n % 3].map(str::to_string);
        j
    }

    /// `ui_batch_counts` as stored, and as a recount of the jobs; both sorted.
    async fn counts_and_recount(s: &Store) -> (Vec<String>, Vec<String>) {
        s.call(|c| {
            let rows = |sql: &str| -> rusqlite::Result<Vec<String>> {
                let mut st = c.prepare(sql)?;
                let v = st.query_map([], |r| {
                    Ok(format!(
                        "{}|{}|{}|{}|{}|{}|{}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?
                    ))
                })?;
                v.collect()
            };
            Ok((
                rows(
                    "SELECT batch_id, state, model, service_tier, shape, jobs, usage_tokens \
                      FROM ui_batch_counts ORDER BY 1, 2, 3, 4, 5",
                )?,
                rows(
                    "SELECT batch_id, state, model, service_tier, COALESCE(shape, ''), \
                      COUNT(*), COALESCE(SUM(usage_tokens), 0) FROM jobs \
                      WHERE batch_id IS NOT NULL GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
                )?,
            ))
        })
        .await
        .expect("counts")
    }

    async fn search(s: &Store, q: &str) -> usize {
        s.ui_jobs(UiFilter {
            text: Some(q.to_string()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("search")
        .len()
    }

    async fn marker_rows(s: &Store) -> i64 {
        s.call(|c| Ok(c.query_row("SELECT COUNT(*) FROM enqueue_bulk", [], |r| r.get(0))?))
            .await
            .expect("marker")
    }

    /// After bulk enqueues with mixed batches (adding to cells an earlier enqueue created, and a
    /// skipped duplicate key), a cancel and a retry, the counts equal a GROUP BY recount, and
    /// every bulk-enqueued prompt is found by the search.
    #[tokio::test]
    async fn bulk_enqueue_keeps_counts_and_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("q.db")).expect("open");
        let batches = [Some("a"), Some("b"), None];
        let first: Vec<NewJob> = (0..30)
            .map(|n| job(n, batches[n % 3], &format!("red fox number {n}")))
            .collect();
        let r1 = s.enqueue(first).await.expect("enqueue");
        assert_eq!(r1.inserted.len(), 30);
        let (counts, recount) = counts_and_recount(&s).await;
        assert!(!counts.is_empty());
        assert_eq!(counts, recount);

        let mut second: Vec<NewJob> = (0..20)
            .map(|n| job(n + 1, batches[n % 2], &format!("grey wolf number {n}")))
            .collect();
        second[0].key = Some("k".into());
        let mut dup = job(7, Some("a"), "grey wolf duplicate");
        dup.key = Some("k".into());
        second.push(dup);
        let r2 = s.enqueue(second).await.expect("enqueue");
        assert_eq!((r2.inserted.len(), r2.skipped.len()), (20, 1));
        s.cancel(r1.inserted[0].as_str()).await.expect("cancel");
        s.cancel(r2.inserted[1].as_str()).await.expect("cancel");
        s.retry(r2.inserted[1].as_str()).await.expect("retry");
        let (counts, recount) = counts_and_recount(&s).await;
        assert_eq!(counts, recount);

        assert_eq!(search(&s, "red fox").await, 30);
        assert_eq!(search(&s, "GREY WOLF").await, 20);
        assert_eq!(search(&s, "number 1").await, 11 + 11);
        assert_eq!(search(&s, "duplicate").await, 0);
        assert_eq!(
            marker_rows(&s).await,
            0,
            "the marker never outlives the enqueue"
        );
    }

    /// Once rowid 2^63-1 is taken SQLite picks free rowids at random, so a bulk enqueue's rows
    /// are not one range: they are indexed and counted through the rowid list.
    #[tokio::test]
    async fn bulk_enqueue_after_the_largest_rowid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("q.db")).expect("open");
        s.enqueue(vec![job(0, Some("a"), "first job")])
            .await
            .expect("enqueue");
        s.call(|c| Ok(c.execute("UPDATE jobs SET rowid = 9223372036854775807", [])?))
            .await
            .expect("move rowid");
        let jobs: Vec<NewJob> = (0..12)
            .map(|n| job(n, [Some("a"), Some("c")][n % 2], &format!("late otter {n}")))
            .collect();
        s.enqueue(jobs).await.expect("enqueue");
        let (counts, recount) = counts_and_recount(&s).await;
        assert_eq!(counts, recount);
        assert_eq!(search(&s, "late otter").await, 12);
        assert_eq!(search(&s, "otter 1").await, 3);
    }
}
