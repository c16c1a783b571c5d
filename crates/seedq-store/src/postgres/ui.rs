//! PostgreSQL implementation of the dashboard's queries (the SQLite one is `store/sqlite/ui.rs`).
//!
//! The prompt search differs: SQLite has an FTS5 trigram table filled in the writing
//! transaction, PostgreSQL a table of prompts (`job_prompts`) with a `pg_trgm` GIN index
//! (`job_prompts_trgm`, migrations/postgres/0014_prompt_search_table.sql), filled behind the
//! writes by [`DashboardStore::index_prompts`] from the ids the triggers put in
//! `prompt_pending`. The search is `lower(prompt) LIKE` the escaped, lowered text between
//! `%`s, which the index answers for any length (short patterns become a recheck of the
//! candidate rows), plus the same test on the pending jobs' bodies, so a job is found the
//! moment it is stored. Without `pg_trgm` (a managed database that refuses the extension) the
//! same query scans, and is still right.

use crate::tier::Tier;
use crate::ui::DashboardStore;
use std::collections::BTreeMap;

use tokio_postgres::types::ToSql;

use super::{PgStore, job_from_pg};
use crate::job::JobState;
use crate::ui::{UI_KEY_STATES_SQL, UI_WAITS_SQL, UiCell, UiFilter, UiWait, like_pattern};
use crate::{HELD, JOB_COLUMNS, Job, StoreError};

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse()
        .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))
}

/// The query [`ui_jobs`] runs for `f`, with its parameters (all text): the filters of
/// `store::push_job_filters` in PostgreSQL's dialect, the prompt search, the keyset cursor.
pub(crate) fn ui_jobs_sql(f: &UiFilter) -> (String, Vec<String>) {
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
    let mut args: Vec<String> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, value: String| {
        args.push(value);
        sql.push_str(&clause.replace("$?", &format!("${}", args.len())));
    };
    if let Some(s) = f.state {
        push(&mut sql, " AND state = $?", s.as_str().to_string());
    }
    if let Some(m) = &f.model {
        push(&mut sql, " AND model = $?", m.clone());
    }
    if let Some(b) = &f.batch {
        push(&mut sql, " AND batch_id = $?", b.clone());
    }
    if let Some(t) = &f.tag {
        push(
            &mut sql,
            " AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(jobs.tags::jsonb) AS t(v) \
             WHERE t.v = $?)",
            t.clone(),
        );
    }
    if let Some(t) = &f.text {
        // The indexed expression, verbatim, so the planner can match it to job_prompts_trgm;
        // the pending jobs (not indexed yet, a few batches at most) are tested one by one.
        // `like_pattern` escapes `%`, `_` and `\`; lower() leaves those alone.
        push(
            &mut sql,
            " AND id IN (SELECT p.id FROM job_prompts p \
             WHERE lower(p.prompt) LIKE lower($?) ESCAPE '\\' \
             UNION ALL SELECT q.id FROM prompt_pending q JOIN jobs pj ON pj.id = q.id \
             WHERE lower(seedq_prompt(pj.request_json)) LIKE lower($?) ESCAPE '\\')",
            like_pattern(t),
        );
    }
    if let Some(b) = &f.before {
        push(&mut sql, " AND id < $?", b.clone());
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", f.limit.max(1)));
    (sql, args)
}

impl DashboardStore for PgStore {
    /// [`crate::Store::index_prompts`]: moves a batch of pending ids into `job_prompts`.
    /// `SKIP LOCKED`: the workers of a fleet index disjoint batches. A job rewritten while its
    /// batch is indexed is pended again by the trigger once this transaction ends, so its
    /// new body is indexed by the next batch; a job deleted meanwhile drops out of the read.
    ///
    /// Three statements over an id array rather than one with a subquery: right after a large
    /// enqueue the planner's statistics still say `prompt_pending` is empty, and the
    /// one-statement form was planned as a nested loop over the whole table for every picked
    /// id (339 s for the first batch of 5 000 out of 1 000 000 in psql, 0.28 s for the next).
    /// `= ANY` on a primary key is an index probe per id whatever the statistics say.
    async fn index_prompts(&self, limit: u32) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let ids: Vec<String> = tx
            .query(
                "SELECT id FROM prompt_pending ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&i64::from(limit)],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(0);
        }
        tx.execute("DELETE FROM prompt_pending WHERE id = ANY($1)", &[&ids])
            .await?;
        tx.execute(
            "INSERT INTO job_prompts (id, prompt) \
             SELECT id, COALESCE(seedq_prompt(request_json), '') FROM jobs \
             WHERE id = ANY($1) \
             ON CONFLICT (id) DO UPDATE SET prompt = excluded.prompt",
            &[&ids],
        )
        .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn ui_jobs(&self, f: UiFilter) -> Result<Vec<Job>, StoreError> {
        let f: &UiFilter = &f;

        let (sql, args) = ui_jobs_sql(f);
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let c = self.conn().await?;
        // Not a cached statement: an unnamed one is planned with the values bound, so the
        // planner sees the search text (and whether the trigram index pays) every time.
        c.query(&sql, &params)
            .await?
            .iter()
            .map(job_from_pg)
            .collect()
    }

    async fn ui_creates_since(
        &self,
        since: crate::Timestamp,
    ) -> Result<BTreeMap<(String, Tier), i64>, StoreError> {
        let since_ms = since.ms();
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT model, service_tier, COUNT(*) FROM jobs WHERE submit_started_at >= $1 \
         GROUP BY model, service_tier",
            )
            .await?;
        c.query(&st, &[&since_ms])
            .await?
            .iter()
            .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
            .collect()
    }

    async fn ui_oldest_queued(&self) -> Result<BTreeMap<(String, Tier), i64>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT model, service_tier, MIN(created_at) FROM jobs \
         WHERE state = 'queued' AND next_attempt_at < $1 GROUP BY model, service_tier",
            )
            .await?;
        c.query(&st, &[&HELD])
            .await?
            .iter()
            .map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?)))
            .collect()
    }

    /// [`crate::Store::ui_bench_finish`]. PostgreSQL has no `rowid`; the n-th job in id
    /// (creation) order stands in for it.
    async fn ui_bench_finish(&self, keep_every: i64) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE jobs SET state = CASE WHEN r.n % 10 = 0 THEN 'failed' ELSE 'archived' END, \
         submit_started_at = jobs.created_at - 172800000, \
         submitted_at = jobs.created_at - 172800000, \
         finished_at = jobs.created_at - 172740000, usage_tokens = jobs.est_tokens, \
         gen_ms = 60000 \
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs) AS r \
         WHERE jobs.id = r.id AND r.n % $1::BIGINT != 0",
                &[&keep_every.max(2)],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn ui_waiting(&self) -> Result<Vec<(JobState, String, Tier, i64)>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT state, model, service_tier, COUNT(*) FROM jobs \
         WHERE state IN ('queued', 'submitting', 'submit_unknown', 'submitted') \
         GROUP BY state, model, service_tier",
            )
            .await?;
        c.query(&st, &[])
            .await?
            .iter()
            .map(|r| {
                let state: String = r.try_get(0)?;
                Ok((
                    parse_state(&state)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                ))
            })
            .collect()
    }

    /// [`crate::Store::ui_flex_today`]. `SUM(bigint)` is NUMERIC in PostgreSQL: cast back;
    /// and `$1 - 3600000` alone would make `$1` an int4.
    async fn ui_flex_today(
        &self,
        day_start: crate::Timestamp,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let day_start_ms = day_start.ms();
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT model, COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0)::BIGINT \
         FROM jobs \
         WHERE submit_started_at >= $1::BIGINT - 3600000 AND service_tier = 'flex' \
         AND submitted_at >= $1 GROUP BY model",
            )
            .await?;
        c.query(&st, &[&day_start_ms])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn ui_batch_names(
        &self,
        archiving: bool,
        recent: u32,
    ) -> Result<Vec<String>, StoreError> {
        let states = if archiving {
            "'queued', 'submitting', 'submit_unknown', 'submitted', 'succeeded', 'archiving'"
        } else {
            "'queued', 'submitting', 'submit_unknown', 'submitted', 'archiving'"
        };
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                // A cell's stripes summed (migrations/postgres/0016_striped_counters.sql).
                "SELECT batch_id FROM ui_batch_counts WHERE state IN ({states}) \
         GROUP BY batch_id HAVING SUM(jobs) > 0 ORDER BY batch_id"
            ))
            .await?;
        let mut names: Vec<String> = c
            .query(&st, &[])
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let st = c
            .prepare_cached("SELECT name FROM batches ORDER BY created_at DESC, name LIMIT $1")
            .await?;
        for r in c.query(&st, &[&i64::from(recent)]).await? {
            let n: String = r.try_get(0)?;
            if !names.contains(&n) {
                names.push(n);
            }
        }
        Ok(names)
    }

    async fn ui_waits(&self, now: i64) -> Result<Vec<UiWait>, StoreError> {
        let c = self.conn().await?;
        let st = c.prepare_cached(UI_WAITS_SQL).await?;
        c.query(&st, &[&now])
            .await?
            .iter()
            .map(|r| {
                Ok(UiWait {
                    batch: r.try_get(0)?,
                    model: r.try_get(1)?,
                    tier: r.try_get(2)?,
                    code: r.try_get(3)?,
                    jobs: r.try_get(4)?,
                    next_at: r.try_get(5)?,
                    message: r.try_get(6)?,
                    api_key: r.try_get(7)?,
                })
            })
            .collect()
    }

    async fn ui_key_states(
        &self,
        day_start: crate::Timestamp,
    ) -> Result<Vec<(String, JobState, i64, i64)>, StoreError> {
        let c = self.conn().await?;
        // SUM of integers is BIGINT here only after a cast (it is NUMERIC for BIGINT input).
        let sql = UI_KEY_STATES_SQL.replace("ELSE 0 END), 0)", "ELSE 0 END), 0)::BIGINT");
        c.query(&sql, &[&day_start])
            .await?
            .iter()
            .map(|r| {
                let state: String = r.try_get(1)?;
                Ok((
                    r.try_get(0)?,
                    parse_state(&state)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                ))
            })
            .collect()
    }

    async fn ui_batch_cells(&self, batch: &str) -> Result<Vec<UiCell>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                // A cell's stripes summed (migrations/postgres/0016_striped_counters.sql).
                "SELECT state, model, service_tier, NULLIF(shape, ''), SUM(jobs)::BIGINT, \
         SUM(usage_tokens)::BIGINT FROM ui_batch_counts WHERE batch_id = $1 \
         GROUP BY state, model, service_tier, shape HAVING SUM(jobs) > 0",
            )
            .await?;
        c.query(&st, &[&batch])
            .await?
            .iter()
            .map(|r| {
                let state: String = r.try_get(0)?;
                Ok(UiCell {
                    state: parse_state(&state)?,
                    model: r.try_get(1)?,
                    tier: r.try_get(2)?,
                    shape: r.try_get(3)?,
                    jobs: r.try_get(4)?,
                    usage_tokens: r.try_get(5)?,
                })
            })
            .collect()
    }
}
