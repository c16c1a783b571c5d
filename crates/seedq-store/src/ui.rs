//! The web dashboard's queries (`src/ui/`): a keyset-paginated job list with filters and the
//! creates of the last minute per model.
//!
//! The list pages by `id` (a ULID, so time-ordered): `WHERE id < ?before ORDER BY id DESC
//! LIMIT n`, which stays a short index walk whatever the page number, where `OFFSET` would
//! read and drop every earlier row. With a million jobs page 10 000 costs what page 1 does.

use crate::tier::Tier;
use std::collections::BTreeMap;

use super::{Job, StoreError, Timestamp};
use crate::job::JobState;

/// Filters of the dashboard's job list. Every field is optional; they combine with AND.
#[derive(Clone, Debug, Default)]
pub struct UiFilter {
    pub state: Option<JobState>,
    pub model: Option<String>,
    pub batch: Option<String>,
    pub tag: Option<String>,
    /// A substring of the prompt (the text parts of the frozen request), matched
    /// case-insensitively through the FTS5 trigram index (`jobs_prompt_fts`).
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
    pub tier: Tier,
    pub shape: Option<String>,
    pub jobs: i64,
    pub usage_tokens: i64,
}

/// Queued jobs that are not due yet, per (batch, model, tier, wait code): what the overview
/// says a batch waits for. `code` is the job's `last_error_code` (`budget_batch`,
/// `budget_daily`, `budget_unpriced`, or an error a retry backs off from; `None` for a flex
/// TPD wait, which keeps the last error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiWait {
    pub batch: Option<String>,
    pub model: String,
    pub tier: Tier,
    pub code: Option<String>,
    pub jobs: i64,
    /// The earliest `next_attempt_at` among them (`HELD`: until something wakes them).
    pub next_at: Timestamp,
    /// One of their `last_error_message`s (the greatest: any one will do).
    pub message: Option<String>,
    /// The API key that created them through a door (`None`: not through a door).
    pub api_key: Option<String>,
}

/// [`UiWait`]s, the same text on both backends (`$1`: now).
pub(crate) const UI_WAITS_SQL: &str = "SELECT j.batch_id, j.model, j.service_tier, \
     j.last_error_code, COUNT(*), MIN(j.next_attempt_at), MAX(j.last_error_message), a.api_key \
     FROM jobs j LEFT JOIN api_jobs a ON a.job_id = j.id \
     WHERE j.state = 'queued' AND j.next_attempt_at > $1 \
     GROUP BY j.batch_id, j.model, j.service_tier, j.last_error_code, a.api_key \
     ORDER BY j.batch_id, j.model, j.service_tier, j.last_error_code, a.api_key";

/// Jobs per key and state, in all and since `$1`: the same text on both backends.
pub(crate) const UI_KEY_STATES_SQL: &str = "SELECT a.api_key, j.state, COUNT(*), \
     COALESCE(SUM(CASE WHEN a.created_at >= $1 THEN 1 ELSE 0 END), 0) \
     FROM api_jobs a JOIN jobs j ON j.id = a.job_id WHERE a.api_key IS NOT NULL \
     GROUP BY a.api_key, j.state ORDER BY a.api_key, j.state";

/// `%`, `_` and the escape character itself, escaped for `LIKE … ESCAPE '\'`, so a search for
/// `50%` finds that text and not everything starting with 50.
pub(crate) fn like_pattern(text: &str) -> String {
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

/// Above this many prompt matches the search is not selective: walking the id index newest
/// first and checking each request with `LIKE` finds a page sooner than collecting and sorting
/// every match. Below it, the matches are fetched by rowid and sorted, a few ms.
pub(crate) const FTS_DENSE: i64 = 20_000;

backend_trait! {
    /// The dashboard's reads.
    trait DashboardStore {
        /// One page of jobs matching `f`, newest first. The caller asks for one more than it shows
        /// to learn whether there is a next page.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_jobs(&self, f: UiFilter) -> Result<Vec<Job>, StoreError>;

        /// Creates (submit attempts) per model since `since_ms`: the RPM gauge of the overview.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_creates_since(
            &self,
            since: Timestamp,
        ) -> Result<BTreeMap<(String, Tier), i64>, StoreError>;

        /// `created_at` of the oldest queued job per (model, tier). Held chain shots are not
        /// waiting for a slot, so they do not count.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_oldest_queued(&self) -> Result<BTreeMap<(String, Tier), i64>, StoreError>;

        /// `seedq bench ui` only: marks all but one in `keep_every` jobs finished (archived, one
        /// in ten of those failed) two days ago, with usage, so the benchmark's store looks like
        /// one that has run for a while rather than one filled a second ago.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_bench_finish(&self, keep_every: i64) -> Result<usize, StoreError>;

        /// Jobs per (state, model, tier) over the states that still hold or wait for a slot: the
        /// model table of the overview. An index walk over the unfinished jobs only (the queue
        /// index starts with `state`), not a scan of every job ever run.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_waiting(&self) -> Result<Vec<(JobState, String, Tier, i64)>, StoreError>;

        /// Indexes the prompts of up to `limit` jobs stored or rewritten since their last
        /// indexing for the prompt search; returns how many. PostgreSQL keeps its search
        /// table behind the writes, so that storing or changing a job never pays for a
        /// trigram index (migrations/postgres/0014_prompt_search_table.sql); the service runs
        /// this in a loop, and the search reads the jobs not indexed yet as well. SQLite fills
        /// its FTS5 table in the writing transaction: always 0 there.
        ///
        /// # Errors
        /// SQL errors.
        pub fn index_prompts(&self, limit: u32) -> Result<u64, StoreError>;

        /// Flex tokens submitted since `day_start_ms` per model: the same sum as
        /// `ops_snapshot().flex_today`, through the `jobs_submit_started` index. A submit starts
        /// seconds before it is submitted, so an hour's margin on `submit_started_at` loses none.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_flex_today(
            &self,
            day_start: Timestamp,
        ) -> Result<BTreeMap<String, i64>, StoreError>;

        /// The batches the overview shows: every batch with unfinished work (`succeeded` counts as
        /// unfinished when `archiving`), then the `recent` newest others. Read from the
        /// trigger-kept `ui_batch_counts` (migration 0005), not from the jobs.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_batch_names(
            &self,
            archiving: bool,
            recent: u32,
        ) -> Result<Vec<String>, StoreError>;

        /// The queued jobs not due at `now`, grouped as [`UiWait`]: a walk of the `jobs_due`
        /// index's `queued` rows past `now`.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_waits(&self, now: i64) -> Result<Vec<UiWait>, StoreError>;

        /// Per API key and job state: the key's jobs created through the doors, in all and since
        /// `day_start` (`(key, state, total, today)`), for the dashboard's keys page.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_key_states(
            &self,
            day_start: crate::Timestamp,
        ) -> Result<Vec<(String, JobState, i64, i64)>, StoreError>;

        /// One batch's jobs per (state, model, tier, shape) with their billed tokens, from the
        /// trigger-kept `ui_batch_counts`: a few rows however large the batch.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ui_batch_cells(&self, batch: &str) -> Result<Vec<UiCell>, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::{UiFilter, UiWait, like_pattern};
    use crate::job::JobState;
    use crate::sqlite::ui::fts_phrase;
    use crate::tier::Tier;
    use crate::{NewJob, Store, testpg};

    fn prompt_job(prompt: &str) -> NewJob {
        NewJob::plain(
            serde_json::json!({
                "model": "m",
                "content": [{"type": "text", "text": prompt}],
            })
            .to_string(),
        )
    }

    /// The prompts matching `q` (all pages of `limit`, walked with the keyset cursor).
    async fn search(s: &Store, q: &str, limit: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page = s
                .ui_jobs(UiFilter {
                    text: Some(q.to_string()),
                    before: before.clone(),
                    limit,
                    ..Default::default()
                })
                .await
                .expect("ui_jobs");
            let Some(last) = page.last() else { break };
            before = Some(last.id.as_str().to_string());
            let full = page.len() == limit as usize;
            for j in page {
                let v: serde_json::Value = serde_json::from_str(&j.request_json).expect("json");
                out.push(v["content"][0]["text"].as_str().expect("text").to_string());
            }
            if !full {
                break;
            }
        }
        out
    }

    /// A SQLite store and a PostgreSQL one, each holding `prompts`.
    async fn stores_with(prompts: &[&str]) -> (tempfile::TempDir, Vec<(&'static str, Store)>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stores = testpg::both(dir.path()).await;
        for (_, s) in &stores {
            s.enqueue(prompts.iter().map(|p| prompt_job(p)).collect())
                .await
                .expect("enqueue");
        }
        (dir, stores)
    }

    /// Runs `sqlite` or `postgres` (SQL in the store's dialect) on `s`.
    async fn exec(s: &Store, sqlite: &'static str, postgres: &str) {
        if let Some(pg) = s.pg() {
            pg.conn()
                .await
                .expect("conn")
                .batch_execute(postgres)
                .await
                .expect("postgres sql");
        } else {
            s.call(move |c| {
                c.execute_batch(sqlite)?;
                Ok(())
            })
            .await
            .expect("sqlite sql");
        }
    }

    /// Substrings of the prompt match, case-insensitively, inside words and in CJK text; the
    /// rest of the request (model, JSON keys) does not.
    #[tokio::test]
    async fn prompt_search_matches_substrings_of_the_prompt() {
        let (_d, stores) = stores_with(&[
            "A red Fox runs through snow",
            "a grey wolf at dusk",
            "一只红色的狐狸在雪中奔跑",
        ])
        .await;
        for (name, s) in &stores {
            prompt_search_case(name, s).await;
        }
    }

    async fn prompt_search_case(name: &str, s: &Store) {
        assert_eq!(
            search(s, "fox", 10).await,
            vec!["A red Fox runs through snow"],
            "{name}"
        );
        assert_eq!(
            search(s, "ed fox ru", 10).await,
            vec!["A red Fox runs through snow"],
            "{name}"
        );
        assert_eq!(
            search(s, "狐狸在", 10).await,
            vec!["一只红色的狐狸在雪中奔跑"],
            "{name}"
        );
        assert!(search(s, "content", 10).await.is_empty(), "{name}");
        assert!(search(s, "fox wolf", 10).await.is_empty(), "{name}");
        // Under three characters the trigram index cannot answer; the LIKE scan does.
        assert_eq!(
            search(s, "狐狸", 10).await,
            vec!["一只红色的狐狸在雪中奔跑"],
            "{name}"
        );
    }

    /// FTS5 syntax in the search box is searched for, never obeyed, and never an SQL error.
    #[tokio::test]
    async fn prompt_search_escapes_fts_syntax() {
        let (_d, stores) = stores_with(&[
            r#"she says "hi" to the fox"#,
            "fox AND wolf",
            "a * star",
            "plain fox",
        ])
        .await;
        for (name, s) in &stores {
            escapes_case(name, s).await;
        }
        assert_eq!(fts_phrase(r#"a"b"#), r#""a""b""#);
    }

    async fn escapes_case(name: &str, s: &Store) {
        assert_eq!(
            search(s, r#"says "hi""#, 10).await,
            vec![r#"she says "hi" to the fox"#],
            "{name}"
        );
        assert_eq!(
            search(s, "fox AND wolf", 10).await,
            vec!["fox AND wolf"],
            "{name}"
        );
        assert_eq!(search(s, "a * st", 10).await, vec!["a * star"], "{name}");
        // A lone quote: too short for the index, so the fallback scan, which reads the prompt
        // and not the JSON around it (every request has quotes).
        assert_eq!(
            search(s, r#"""#, 10).await,
            vec![r#"she says "hi" to the fox"#],
            "{name}"
        );
        for hostile in [
            r#"""""#,
            r#"fox" OR "wolf"#,
            "fox*",
            "NEAR(fox wolf)",
            "prompt: fox",
            "^fox",
            "(fox",
            "fox -wolf",
            "'; DROP TABLE jobs; --",
        ] {
            assert!(
                search(s, hostile, 10).await.is_empty(),
                "{name}: {hostile} matched something"
            );
        }
        assert_eq!(search(s, "plain", 10).await, vec!["plain fox"], "{name}");
        // LIKE's wildcards are searched for too (PostgreSQL matches with LIKE).
        assert!(search(s, "f_x", 10).await.is_empty(), "{name}");
        assert!(search(s, "a % st", 10).await.is_empty(), "{name}");
    }

    /// Keyset pagination and the other filters still apply to a search: every match once,
    /// newest first.
    #[tokio::test]
    async fn prompt_search_pages_and_filters() {
        let prompts: Vec<String> = (0..25)
            .map(|i| format!("shot {i}: {}", if i % 2 == 0 { "fox" } else { "wolf" }))
            .collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let (_d, stores) = stores_with(&refs).await;
        for (name, s) in &stores {
            pages_case(name, s).await;
        }
    }

    async fn pages_case(name: &str, s: &Store) {
        let got = search(s, "fox", 4).await;
        // Newest first is id order (ULIDs made in one millisecond are not in insert order).
        let want: Vec<String> = s
            .ui_jobs(UiFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("all")
            .into_iter()
            .map(|j| {
                let v: serde_json::Value = serde_json::from_str(&j.request_json).expect("json");
                v["content"][0]["text"].as_str().expect("text").to_string()
            })
            .filter(|p| p.ends_with("fox"))
            .collect();
        assert_eq!(want.len(), 13, "{name}");
        assert_eq!(got, want, "{name}");
        let none = s
            .ui_jobs(UiFilter {
                text: Some("fox".into()),
                state: Some(JobState::Cancelled),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("ui_jobs");
        assert!(none.is_empty(), "{name}");
    }

    /// The index follows the jobs: a rewritten request is searched by its new prompt, a
    /// deleted job is gone from it, both before the indexer has run since (PostgreSQL keeps
    /// its search table behind the writes) and after.
    #[tokio::test]
    async fn prompt_index_follows_updates_and_deletes() {
        let (_d, stores) = stores_with(&["old prompt text", "doomed prompt", "third"]).await;
        for (name, s) in &stores {
            // Found while pending, and once indexed; SQLite indexes in the write itself.
            assert_eq!(
                search(s, "doomed", 10).await,
                vec!["doomed prompt"],
                "{name}"
            );
            let indexed = crate::tests::index_all(s, 2).await;
            assert_eq!(indexed, if s.pg().is_some() { 3 } else { 0 }, "{name}");
            assert_eq!(
                search(s, "old prompt", 10).await,
                vec!["old prompt text"],
                "{name}"
            );
            exec(
                s,
                "UPDATE jobs SET request_json = json_set(request_json, '$.content[0].text', \
                 'new prompt text') WHERE request_json LIKE '%old prompt%'; \
                 DELETE FROM jobs WHERE request_json LIKE '%doomed%'",
                "UPDATE jobs SET request_json = jsonb_set(request_json::jsonb, '{content,0,text}', \
                 '\"new prompt text\"')::text WHERE request_json LIKE '%old prompt%'; \
                 DELETE FROM jobs WHERE request_json LIKE '%doomed%'",
            )
            .await;
            for pass in ["before indexing", "after indexing"] {
                assert!(
                    search(s, "old prompt", 10).await.is_empty(),
                    "{name} {pass}"
                );
                assert_eq!(
                    search(s, "new prompt", 10).await,
                    vec!["new prompt text"],
                    "{name} {pass}"
                );
                assert!(search(s, "doomed", 10).await.is_empty(), "{name} {pass}");
                assert_eq!(search(s, "third", 10).await, vec!["third"], "{name} {pass}");
                let indexed = crate::tests::index_all(s, 2).await;
                assert_eq!(
                    indexed,
                    u64::from(s.pg().is_some() && pass == "before indexing"),
                    "{name}"
                );
            }
            if s.pg().is_none() {
                let fts_rows: i64 = s
                    .call(|c| {
                        Ok(c.query_row("SELECT COUNT(*) FROM jobs_prompt_fts", [], |r| r.get(0))?)
                    })
                    .await
                    .expect("count");
                assert_eq!(fts_rows, 2, "the new prompt and the third");
            }
        }
    }

    /// A search matching more than `FTS_DENSE` jobs takes the walk-the-list path and still
    /// returns only matches, newest first, paged.
    #[tokio::test]
    async fn a_dense_search_walks_the_list() {
        let (_d, stores) = stores_with(&["the newest wolf"]).await;
        for (name, s) in stores {
            dense_case(name, s).await;
        }
    }

    async fn dense_case(name: &str, s: Store) {
        let n = super::FTS_DENSE + 10;
        // Ids below any ULID made now ('0…'), so the newest job stays the wolf above.
        exec(
            &s,
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 20010) \
             INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
                               request_json, next_attempt_at) \
             SELECT printf('00000000000000%012d', i), 0, 0, 'queued', 'm', 'default', \
                    json_object('content', json_array(json_object('type', 'text', \
                        'text', 'fox number ' || i))), 0 FROM k",
            &format!(
                "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
                                   request_json, next_attempt_at) \
                 SELECT '00000000000000' || lpad(i::text, 12, '0'), 0, 0, 'queued', 'm', \
                        'default', json_build_object('content', json_build_array( \
                            json_build_object('type', 'text', 'text', 'fox number ' || i)))::text, \
                        0 FROM generate_series(1, {n}) AS i; ANALYZE jobs"
            ),
        )
        .await;
        let page = |q: &'static str| {
            let s = s.clone();
            async move {
                s.ui_jobs(UiFilter {
                    text: Some(q.into()),
                    limit: 3,
                    ..Default::default()
                })
                .await
                .expect("ui_jobs")
                .into_iter()
                .map(|j| j.id.as_str().to_string())
                .collect::<Vec<_>>()
            }
        };
        let top = format!("00000000000000{n:012}");
        let second = format!("00000000000000{:012}", n - 1);
        let third = format!("00000000000000{:012}", n - 2);
        assert_eq!(
            page("fox number").await,
            vec![top.clone(), second, third],
            "{name}"
        );
        // 11 111 matches (1, 1x, 1xx, 1xxx, 1xxxx): the indexed path.
        assert_eq!(
            page("number 1").await.first().map(String::as_str),
            Some("00000000000000000000019999"),
            "{name}"
        );
        assert_eq!(page("wolf").await.len(), 1, "{name}");
    }

    /// A search reads the FTS index, not a scan of the jobs.
    #[tokio::test]
    async fn prompt_search_uses_the_index() {
        // PostgreSQL's twin is tests_chain_ui::postgres_prompt_search_uses_the_trigram_index.
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("q.db")).expect("open");
        s.enqueue(vec![prompt_job("a red fox")])
            .await
            .expect("enqueue");
        let plan: Vec<String> = s
            .call(|c| {
                let mut st = c.prepare(
                    "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE rowid IN (SELECT rowid FROM \
                     jobs_prompt_fts WHERE jobs_prompt_fts MATCH '\"fox\"') ORDER BY id DESC LIMIT 5",
                )?;
                let rows = st.query_map([], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .expect("plan");
        let scans_jobs = plan
            .iter()
            .any(|l| l == "SCAN jobs" || l.starts_with("SCAN jobs "));
        let plan = plan.join("\n");
        assert!(plan.contains("VIRTUAL TABLE INDEX"), "{plan}");
        assert!(!scans_jobs, "{plan}");
    }

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
        for (name, s) in testpg::both(dir.path()).await {
            batch_counts_case(name, s).await;
        }
    }

    async fn batch_counts_case(name: &str, s: Store) {
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
            vec![(q, None, 1), (q, shape.clone(), 2)],
            "{name}"
        );
        s.cancel(r.inserted[0].as_str()).await.expect("cancel");
        assert_eq!(
            cells(s.clone()).await,
            vec![
                (JobState::Cancelled, shape.clone(), 1),
                (q, None, 1),
                (q, shape.clone(), 1)
            ],
            "{name}"
        );
        s.retry(r.inserted[0].as_str()).await.expect("retry");
        assert_eq!(
            cells(s.clone()).await,
            vec![(q, None, 1), (q, shape.clone(), 2)],
            "{name}"
        );
        let names = s.ui_batch_names(true, 5).await.expect("names");
        assert_eq!(names, vec!["b".to_string()], "{name}");
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    /// The overview's wait reasons and the keys page's counts, on both backends.
    #[tokio::test]
    async fn waits_and_key_states() {
        let (_d, stores) = stores_with(&["a", "b", "c", "d"]).await;
        for (name, s) in stores {
            waits_case(name, s).await;
        }
    }

    async fn waits_case(name: &str, s: Store) {
        let ids: Vec<String> = s
            .ui_jobs(UiFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("ui_jobs")
            .into_iter()
            .map(|j| j.id.as_str().to_string())
            .collect();
        // Two held by the batch cap, one waiting for the next TPD day (no code), one due.
        let held = format!(
            "UPDATE jobs SET batch_id = 'night', next_attempt_at = {}, \
             last_error_code = 'budget_batch', last_error_message = 'cap' \
             WHERE id IN ('{}', '{}')",
            crate::HELD.ms(),
            ids[0],
            ids[1]
        );
        // Fresh jobs are due at their enqueue time, before `t`.
        let t = crate::now_ms() + 60_000;
        let tpd = format!(
            "UPDATE jobs SET batch_id = 'night', service_tier = 'flex', \
             next_attempt_at = {} WHERE id = '{}'",
            t + 4000,
            ids[2]
        );
        let sql: &'static str = Box::leak(format!("{held}; {tpd}").into_boxed_str());
        exec(&s, sql, sql).await;
        let waits = s.ui_waits(t).await.expect("ui_waits");
        let night = |w: &UiWait| w.batch.as_deref() == Some("night");
        assert_eq!(
            waits.iter().filter(|w| night(w)).count(),
            2,
            "{name}: {waits:?}"
        );
        let cap = waits
            .iter()
            .find(|w| w.code.as_deref() == Some("budget_batch"))
            .expect("the cap's waiters");
        assert_eq!(
            (cap.jobs, cap.next_at, cap.message.as_deref()),
            (2, crate::HELD, Some("cap")),
            "{name}"
        );
        let w = waits
            .iter()
            .find(|w| w.code.is_none())
            .expect("the TPD waiter");
        assert_eq!(
            (w.tier, w.jobs, w.next_at),
            (Tier::Flex, 1, crate::Timestamp::from_ms(t + 4000)),
            "{name}"
        );
        assert!(
            s.ui_waits(t + 5000).await.expect("ui_waits").len() == 1,
            "{name}: once due, only the held ones wait"
        );

        // Jobs created through a door count for their key, by state, in all and today.
        for (i, key) in ["key_a", "key_a", "key_b"].iter().enumerate() {
            let job = prompt_job("door");
            let api = crate::ApiJob {
                job_id: job.id.to_string(),
                api_key: Some((*key).to_string()),
                door: "ark".into(),
                body_sha256: format!("h{i}"),
                info: "{}".into(),
                webhook_url: None,
                created_at: crate::Timestamp::EPOCH,
                deleted_at: None,
                result_meta: None,
            };
            s.api_enqueue(job, api).await.expect("api_enqueue");
        }
        // `created_at` is the door's clock: all three are of a day that began at 0, none of
        // one that begins in an hour.
        let states = s
            .ui_key_states(crate::Timestamp::EPOCH)
            .await
            .expect("ui_key_states");
        assert_eq!(
            states,
            vec![
                ("key_a".to_string(), JobState::Queued, 2, 2),
                ("key_b".to_string(), JobState::Queued, 1, 1),
            ],
            "{name}"
        );
        let later = crate::now_ms() + 3_600_000;
        let states = s
            .ui_key_states(crate::Timestamp::from_ms(later))
            .await
            .expect("ui_key_states");
        assert_eq!(
            states,
            vec![
                ("key_a".to_string(), JobState::Queued, 2, 0),
                ("key_b".to_string(), JobState::Queued, 1, 0),
            ],
            "{name}"
        );
    }
}
