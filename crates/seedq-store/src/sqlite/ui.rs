//! SQLite implementation of [`DashboardStore`] (declared in `store/ui.rs`; the PostgreSQL
//! implementation is `store/postgres/ui.rs`).

use super::SqliteStore;
use super::core::{job_from_row, push_job_filters};
use crate::job::JobState;
use crate::tier::Tier;
use crate::ui::*;
use crate::{JOB_COLUMNS, Job, StoreError};
use rusqlite::types::Value;
use std::collections::BTreeMap;

/// The shortest search the trigram index can answer: FTS5's trigram tokenizer matches no row
/// for a pattern under three characters, so shorter ones scan the requests with `LIKE`.
const FTS_MIN_CHARS: usize = 3;

/// A job's prompt as the index holds it (the text parts of the request, as in
/// `migrations/0010_prompt_fts.sql`), for the scans that cannot use the index: matching the
/// raw JSON instead would find `"` or `mo` (from `"model"`) in every job.
const PROMPT_SQL: &str = "(SELECT group_concat(json_extract(c.value, '$.text'), char(10)) \
     FROM json_each(CASE WHEN json_valid(request_json) THEN request_json END, '$.content') AS c \
     WHERE json_extract(c.value, '$.type') = 'text')";

/// `text` as one FTS5 string (a phrase): inside double quotes every character is literal, so
/// `*`, `:`, `^`, `(`, `AND`, `NEAR` are searched for rather than obeyed; a `"` is doubled,
/// the only escape FTS5 strings have. With the trigram tokenizer a phrase is a substring match.
pub(crate) fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

impl DashboardStore for SqliteStore {
    /// [`crate::Store::index_prompts`]: the FTS5 table is filled by the writing transaction.
    async fn index_prompts(&self, _limit: u32) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn ui_jobs(&self, f: UiFilter) -> Result<Vec<Job>, StoreError> {
        self.call(move |c| {
            let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
            let mut args: Vec<Value> = Vec::new();
            push_job_filters(&mut sql, &mut args, f.state, f.model, f.batch, f.tag);
            if let Some(t) = f.text {
                let phrase = fts_phrase(&t);
                let indexed = t.chars().count() >= FTS_MIN_CHARS
                    && c.query_row(
                        "SELECT COUNT(*) FROM (SELECT rowid FROM jobs_prompt_fts \
                     WHERE jobs_prompt_fts MATCH ?1 LIMIT ?2)",
                        rusqlite::params![phrase, FTS_DENSE],
                        |r| r.get::<_, i64>(0),
                    )? < FTS_DENSE;
                if indexed {
                    sql.push_str(
                        " AND rowid IN (SELECT rowid FROM jobs_prompt_fts \
                     WHERE jobs_prompt_fts MATCH ?)",
                    );
                    args.push(phrase.into());
                } else {
                    sql.push_str(" AND ");
                    sql.push_str(PROMPT_SQL);
                    sql.push_str(" LIKE ? ESCAPE '\\'");
                    args.push(like_pattern(&t).into());
                }
            }
            if let Some(b) = f.before {
                sql.push_str(" AND id < ?");
                args.push(b.into());
            }
            sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", f.limit.max(1)));
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn ui_creates_since(
        &self,
        since: crate::Timestamp,
    ) -> Result<BTreeMap<(String, Tier), i64>, StoreError> {
        let since_ms = since.ms();
        self.call(move |c| {
            // Per tier: RPM binds the default tier only, flex has a ceiling of its own if any.
            let mut st = c.prepare_cached(
                "SELECT model, service_tier, COUNT(*) FROM jobs WHERE submit_started_at >= ?1 \
             GROUP BY model, service_tier",
            )?;
            let rows = st.query_map([since_ms], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
        .await
    }

    async fn ui_oldest_queued(&self) -> Result<BTreeMap<(String, Tier), i64>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT model, service_tier, MIN(created_at) FROM jobs \
             WHERE state = 'queued' AND next_attempt_at < ?1 GROUP BY model, service_tier",
            )?;
            let rows = st.query_map([crate::HELD], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
        .await
    }

    async fn ui_bench_finish(&self, keep_every: i64) -> Result<usize, StoreError> {
        self.call(move |c| {
            Ok(c.execute(
            "UPDATE jobs SET state = CASE WHEN rowid % 10 = 0 THEN 'failed' ELSE 'archived' END, \
             submit_started_at = created_at - 172800000, submitted_at = created_at - 172800000, \
             finished_at = created_at - 172740000, usage_tokens = est_tokens, gen_ms = 60000 \
             WHERE rowid % ?1 != 0",
            [keep_every.max(2)],
        )?)
        })
        .await
    }

    async fn ui_waiting(&self) -> Result<Vec<(JobState, String, Tier, i64)>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT state, model, service_tier, COUNT(*) FROM jobs \
             WHERE state IN ('queued', 'submitting', 'submit_unknown', 'submitted') \
             GROUP BY state, model, service_tier",
            )?;
            let mut q = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = q.next()? {
                let state: String = r.get(0)?;
                let state = state
                    .parse()
                    .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))?;
                out.push((state, r.get(1)?, r.get(2)?, r.get(3)?));
            }
            Ok(out)
        })
        .await
    }

    async fn ui_flex_today(
        &self,
        day_start: crate::Timestamp,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let day_start_ms = day_start.ms();
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT model, COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs \
             WHERE submit_started_at >= ?1 - 3600000 AND service_tier = 'flex' \
             AND submitted_at >= ?1 GROUP BY model",
            )?;
            let rows = st.query_map([day_start_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
        .await
    }

    async fn ui_batch_names(
        &self,
        archiving: bool,
        recent: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.call(move |c| {
            let states = if archiving {
                "'queued', 'submitting', 'submit_unknown', 'submitted', 'succeeded', 'archiving'"
            } else {
                "'queued', 'submitting', 'submit_unknown', 'submitted', 'archiving'"
            };
            let mut st = c.prepare(&format!(
                "SELECT DISTINCT batch_id FROM ui_batch_counts WHERE state IN ({states}) \
             ORDER BY batch_id"
            ))?;
            let mut names: Vec<String> =
                st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut st = c.prepare_cached(
                "SELECT name FROM batches ORDER BY created_at DESC, name LIMIT ?1",
            )?;
            for n in st.query_map([recent], |r| r.get::<_, String>(0))? {
                let n = n?;
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            Ok(names)
        })
        .await
    }

    async fn ui_waits(&self, now: i64) -> Result<Vec<UiWait>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(UI_WAITS_SQL)?;
            let rows = st.query_map([now], |r| {
                Ok(UiWait {
                    batch: r.get(0)?,
                    model: r.get(1)?,
                    tier: r.get(2)?,
                    code: r.get(3)?,
                    jobs: r.get(4)?,
                    next_at: r.get(5)?,
                    message: r.get(6)?,
                    api_key: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn ui_key_states(
        &self,
        day_start: crate::Timestamp,
    ) -> Result<Vec<(String, JobState, i64, i64)>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(UI_KEY_STATES_SQL)?;
            let mut q = st.query([day_start])?;
            let mut out = Vec::new();
            while let Some(r) = q.next()? {
                let state: String = r.get(1)?;
                let state = state
                    .parse()
                    .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))?;
                out.push((r.get(0)?, state, r.get(2)?, r.get(3)?));
            }
            Ok(out)
        })
        .await
    }

    async fn ui_batch_cells(&self, batch: &str) -> Result<Vec<UiCell>, StoreError> {
        let batch = batch.to_string();
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT state, model, service_tier, NULLIF(shape, ''), jobs, usage_tokens \
             FROM ui_batch_counts WHERE batch_id = ?1 AND jobs > 0",
            )?;
            let mut q = st.query([batch])?;
            let mut out = Vec::new();
            while let Some(r) = q.next()? {
                let state: String = r.get(0)?;
                out.push(UiCell {
                    state: state.parse().map_err(|e: crate::job::UnknownState| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    model: r.get(1)?,
                    tier: r.get(2)?,
                    shape: r.get(3)?,
                    jobs: r.get(4)?,
                    usage_tokens: r.get(5)?,
                });
            }
            Ok(out)
        })
        .await
    }
}
