//! The web dashboard's queries (`src/ui/`): a keyset-paginated job list with filters and the
//! creates of the last minute per model.
//!
//! The list pages by `id` (a ULID, so time-ordered): `WHERE id < ?before ORDER BY id DESC
//! LIMIT n`, which stays a short index walk whatever the page number, where `OFFSET` would
//! read and drop every earlier row. With a million jobs page 10 000 costs what page 1 does.

use std::collections::BTreeMap;

use rusqlite::types::Value;

use super::{JOB_COLUMNS, Job, Store, StoreError, job_from_row, push_job_filters};
use crate::job::JobState;

/// Filters of the dashboard's job list. Every field is optional; they combine with AND.
#[derive(Clone, Debug, Default)]
pub struct UiFilter {
    pub state: Option<JobState>,
    pub model: Option<String>,
    pub batch: Option<String>,
    pub tag: Option<String>,
    /// A substring of the frozen request (the prompt lives there), matched case-sensitively.
    pub text: Option<String>,
    /// Keyset cursor: only ids strictly below this one (the last id of the previous page).
    pub before: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// Jobs of one batch in one (state, model, tier, shape) cell.
#[derive(Clone, Debug)]
pub struct UiCell {
    pub state: JobState,
    pub model: String,
    pub tier: String,
    pub shape: Option<String>,
    pub jobs: i64,
    pub usage_tokens: i64,
}

/// `%`, `_` and the escape character itself, escaped for `LIKE … ESCAPE '\'`, so a search for
/// `50%` finds that text and not everything starting with 50.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

impl Store {
    /// One page of jobs matching `f`, newest first. The caller asks for one more than it shows
    /// to learn whether there is a next page.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_jobs(&self, f: UiFilter) -> Result<Vec<Job>, StoreError> {
        self.call(move |c| {
            let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
            let mut args: Vec<Value> = Vec::new();
            push_job_filters(&mut sql, &mut args, f.state, f.model, f.batch, f.tag);
            if let Some(t) = f.text {
                sql.push_str(" AND request_json LIKE ? ESCAPE '\\'");
                args.push(like_pattern(&t).into());
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

    /// Creates (submit attempts) per model since `since_ms`: the RPM gauge of the overview.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_creates_since(
        &self,
        since_ms: i64,
    ) -> Result<BTreeMap<(String, String), i64>, StoreError> {
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

    /// `created_at` of the oldest queued job per (model, tier). Held chain shots are not
    /// waiting for a slot, so they do not count.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_oldest_queued(&self) -> Result<BTreeMap<(String, String), i64>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT model, service_tier, MIN(created_at) FROM jobs \
                 WHERE state = 'queued' AND next_attempt_at < ?1 GROUP BY model, service_tier",
            )?;
            let rows = st.query_map([super::HELD], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
        .await
    }

    /// `seedq bench ui` only: marks all but one in `keep_every` jobs finished (archived, one
    /// in ten of those failed) two days ago, with usage, so the benchmark's store looks like
    /// one that has run for a while rather than one filled a second ago.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_bench_finish(&self, keep_every: i64) -> Result<usize, StoreError> {
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

    /// Jobs per (state, model, tier) over the states that still hold or wait for a slot: the
    /// model table of the overview. An index walk over the unfinished jobs only (`jobs_queue`
    /// starts with `state`), not a scan of every job ever run.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_waiting(&self) -> Result<Vec<(JobState, String, String, i64)>, StoreError> {
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

    /// Flex tokens submitted since `day_start_ms` per model: the same sum as
    /// `ops_snapshot().flex_today`, through the `jobs_submit_started` index. A submit starts
    /// seconds before it is submitted, so an hour's margin on `submit_started_at` loses none.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_flex_today(
        &self,
        day_start_ms: i64,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
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

    /// The batches the overview shows: every batch with unfinished work (`succeeded` counts as
    /// unfinished when `archiving`), then the `recent` newest others. Read from the
    /// trigger-kept `ui_batch_counts` (migration 0005), not from the jobs.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_batch_names(
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

    /// One batch's jobs per (state, model, tier, shape) with their billed tokens, from the
    /// trigger-kept `ui_batch_counts`: a few rows however large the batch.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ui_batch_cells(&self, batch: &str) -> Result<Vec<UiCell>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::like_pattern;
    use crate::job::JobState;
    use crate::store::{NewJob, Store};

    fn job(batch: Option<&str>, shape: Option<&str>) -> NewJob {
        NewJob {
            batch: batch.map(str::to_string),
            shape: shape.map(str::to_string),
            est_tokens: Some(10),
            ..NewJob::plain("{}")
        }
    }

    /// The trigger-kept counts equal a GROUP BY over the jobs after inserts, state changes
    /// (cancel, retry) and deletes.
    #[tokio::test]
    async fn batch_counts_follow_the_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("q.db")).expect("open");
        let r = s
            .enqueue(vec![
                job(Some("b"), Some("720p/5s")),
                job(Some("b"), Some("720p/5s")),
                job(Some("b"), None),
                job(None, None),
            ])
            .await
            .expect("enqueue");
        let cells = |s: Store| async move {
            let mut v: Vec<(JobState, Option<String>, i64)> = s
                .ui_batch_cells("b")
                .await
                .expect("cells")
                .into_iter()
                .map(|c| (c.state, c.shape, c.jobs))
                .collect();
            v.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
            v
        };
        let q = JobState::Queued;
        let shape = Some("720p/5s".to_string());
        assert_eq!(
            cells(s.clone()).await,
            vec![(q, None, 1), (q, shape.clone(), 2)]
        );
        s.cancel(r.inserted[0].as_str()).await.expect("cancel");
        assert_eq!(
            cells(s.clone()).await,
            vec![
                (JobState::Cancelled, shape.clone(), 1),
                (q, None, 1),
                (q, shape.clone(), 1)
            ]
        );
        s.retry(r.inserted[0].as_str()).await.expect("retry");
        assert_eq!(
            cells(s.clone()).await,
            vec![(q, None, 1), (q, shape.clone(), 2)]
        );
        let names = s.ui_batch_names(true, 5).await.expect("names");
        assert_eq!(names, vec!["b".to_string()]);
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
