//! The web dashboard's queries (`src/ui/`): a keyset-paginated job list with filters and the
//! creates of the last minute per model.
//!
//! The list pages by `id` (a ULID, so time-ordered): `WHERE id < ?before ORDER BY id DESC
//! LIMIT n`, which stays a short index walk whatever the page number, where `OFFSET` would
//! read and drop every earlier row. With a million jobs page 10 000 costs what page 1 does.

use std::collections::BTreeMap;

use rusqlite::types::Value;

use super::{JOB_COLUMNS, Job, Store, StoreError, job_from_row};
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
            if let Some(s) = f.state {
                sql.push_str(" AND state = ?");
                args.push(s.as_str().to_string().into());
            }
            if let Some(m) = f.model {
                sql.push_str(" AND model = ?");
                args.push(m.into());
            }
            if let Some(b) = f.batch {
                sql.push_str(" AND batch_id = ?");
                args.push(b.into());
            }
            if let Some(t) = f.tag {
                sql.push_str(" AND EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = ?)");
                args.push(t.into());
            }
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
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT model, COUNT(*) FROM jobs WHERE submit_started_at >= ?1 GROUP BY model",
            )?;
            let rows = st.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
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
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
