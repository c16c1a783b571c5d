//! Store side of the API listener's front doors (`crate::api`, docs/api.md): API keys, the
//! door record of each job created through a door, and the URL-signing secret.
//!
//! A door's create is one transaction: the job (as `enqueue` inserts it) and its `api_jobs`
//! row commit together, so a job never exists without the key that owns it. Keys are read
//! from the database on every request, never cached, so a revocation holds at once on every
//! worker of a fleet. The PostgreSQL bodies are in `pg/api.rs`.

use serde::Serialize;

use super::{JOB_COLUMNS, Job, NewJob, StoreError};
use crate::job::JobId;

/// An API key as stored (its hash, never the key).
#[derive(Clone, Debug, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub hash: String,
    pub max_cost_fen: Option<i64>,
    pub rpm: Option<i64>,
    pub models: Option<Vec<String>>,
    pub webhook_url: Option<String>,
    /// The Standard Webhooks signing secret; never serialised.
    #[serde(skip)]
    pub webhook_secret: String,
    pub created_at: crate::Timestamp,
    pub revoked_at: Option<crate::Timestamp>,
}

/// The door record of a job created through a door.
#[derive(Clone, Debug, Serialize)]
pub struct ApiJob {
    pub job_id: String,
    /// The owning key's id; `None` for a job created with the admin token.
    pub api_key: Option<String>,
    /// `ark` or `openai`: the shape its webhook and answers take.
    pub door: String,
    pub body_sha256: String,
    /// What the create asked for in the door's own terms (JSON).
    pub info: String,
    pub webhook_url: Option<String>,
    pub created_at: crate::Timestamp,
    pub deleted_at: Option<crate::Timestamp>,
    /// The job's `result_meta` (what Ark's task reported once it succeeded: the actual seed,
    /// fps, …), read with the record so a door answers as Ark's task does; never written
    /// through it (`None` in a new record).
    #[serde(skip)]
    pub result_meta: Option<String>,
}

/// One key's usage (`seedq keys ls`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    pub key: String,
    /// Jobs created through the doors, ever.
    pub jobs: i64,
    /// Spend in the budget day asked for, in hold units (`budget::UNITS_PER_FEN` a fen).
    pub units_today: i64,
}

/// Jobs and the day's holds per key (`?1`/`$1`: the day's start), the same text on both
/// backends.
pub(crate) const KEY_USAGE_SQL: &str = "SELECT a.api_key, COUNT(*), \
     COALESCE(SUM((SELECT COALESCE(h.billed_tokens, h.tokens) * h.rate FROM budget_holds h \
                    WHERE h.job_id = a.job_id AND h.day_start = $1)), 0) \
     FROM api_jobs a WHERE a.api_key IS NOT NULL GROUP BY a.api_key ORDER BY a.api_key";

/// The length of a rate window: `--rpm` counts requests per minute.
pub const RATE_WINDOW_MS: i64 = 60_000;

/// One key's rate row: the current window's start (unix ms), the requests let through in it
/// and in the window before.
pub type RateRow = (i64, i64, i64);

/// A sliding-window counter: the requests of the last minute are estimated as the current
/// window's count plus the previous window's, weighted by how much of it still lies within
/// the last minute. Returns the row to store when one more request fits under `rpm`, or the
/// wait (ms, ≥ 1 s) until it does. Pure, so both backends decide alike.
///
/// # Errors
/// The wait until one more request fits.
pub fn rate_window(row: Option<RateRow>, now: i64, rpm: i64) -> Result<RateRow, i64> {
    let w = RATE_WINDOW_MS;
    let start = now - now.rem_euclid(w);
    let (cur, prev) = match row {
        Some((ws, c, p)) if ws == start => (c, p),
        Some((ws, c, _)) if ws == start - w => (0, c),
        _ => (0, 0),
    };
    let rpm = rpm.max(1);
    let into = now - start;
    // `prev × (w − into) / w + cur + 1 ≤ rpm`, kept in integers: × w on both sides (in
    // i128, so no `--rpm` however large overflows).
    let (p, c, r, w1, i) = (
        i128::from(prev),
        i128::from(cur),
        i128::from(rpm),
        i128::from(w),
        i128::from(into),
    );
    if p * (w1 - i) + (c + 1) * w1 <= r * w1 {
        return Ok((start, cur + 1, prev));
    }
    let wait = if cur + 1 > rpm {
        // This window alone is full: in the next one it is the previous window, whose weight
        // must fall to `(rpm − 1) / cur`.
        let next_into = w - (rpm - 1) * w / cur;
        (start + w - now) + next_into
    } else {
        // `prev > 0` here (else it fit): its weight must fall to `(rpm − cur − 1) / prev`.
        let need_into = w - (rpm - cur - 1) * w / prev;
        need_into - into + 1
    };
    Err(wait.max(1000))
}

/// What a door's create did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiEnqueued {
    /// A new job.
    Created(JobId),
    /// The idempotency key was used before with the same body: that job.
    Existing(JobId),
    /// The idempotency key was used before with another body.
    Conflict(JobId),
}

/// Which jobs a door's list shows.
#[derive(Clone, Debug, Default)]
pub struct ApiListFilter {
    /// Only this key's jobs; `None`: every job (the admin token).
    pub key: Option<String>,
    /// Door statuses (Ark's words: `queued`, `running`, `succeeded`…), any of them.
    pub statuses: Vec<String>,
    pub ids: Vec<String>,
    pub model: Option<String>,
    /// Ark's `filter.service_tier` as the caller sent it (docs/ark-api.md §4): compared with
    /// the column as is, so an unknown value lists nothing, as it always has, instead of
    /// becoming a new error.
    pub service_tier: Option<String>,
    /// Only jobs created through this door (the OpenAI door lists its own).
    pub door: Option<String>,
    /// Cursor: only ids after (in `ascending` order) this one.
    pub after: Option<String>,
    pub ascending: bool,
    pub offset: i64,
    pub limit: i64,
    /// Archiving is on: `succeeded` waits for `archived` (see [`status_case`]).
    pub archive_on: bool,
}

/// A job with its door record (`None` for a job made outside the doors, shown to the admin).
pub type ApiRow = (Job, Option<ApiJob>);

/// The door status of a job (alias `j`) in Ark's words, as SQL, so list filters match what a
/// GET answers (`api::ark::status`): `queued` while it waits in seedq or in Ark's queue,
/// `running` while Ark renders it and while seedq archives it, `succeeded` once archived
/// (once Ark succeeded when archiving is off: `{archived}` is `archived` or `succeeded`).
pub fn status_case(archive_on: bool) -> String {
    let done = if archive_on {
        "'archived'"
    } else {
        "'archived', 'succeeded', 'archiving'"
    };
    format!(
        "(CASE WHEN j.state IN ({done}) THEN 'succeeded' \
              WHEN j.state IN ('queued', 'submitting', 'submit_unknown') THEN 'queued' \
              WHEN j.state = 'submitted' AND COALESCE(j.remote_status, '') <> 'running' THEN 'queued' \
              WHEN j.state IN ('submitted', 'succeeded', 'archiving') THEN 'running' \
              WHEN j.state IN ('failed', 'dead') THEN 'failed' \
              ELSE j.state END)"
    )
}

/// [`JOB_COLUMNS`] qualified with `j.`, then the `api_jobs` columns (alias `a`).
pub(crate) fn joined_columns() -> String {
    let mut cols: Vec<String> = JOB_COLUMNS
        .split(',')
        .map(|c| format!("j.{}", c.trim()))
        .collect();
    cols.extend(API_JOB_COLUMNS.iter().map(|c| format!("a.{c}")));
    cols.push("j.result_meta".into());
    cols.join(", ")
}

/// The `api_jobs` columns in [`ApiJob`] order.
pub(crate) const API_JOB_COLUMNS: [&str; 8] = [
    "job_id",
    "api_key",
    "door",
    "body_sha256",
    "info",
    "webhook_url",
    "created_at",
    "deleted_at",
];

/// Index of the first `api_jobs` column in a [`joined_columns`] row.
pub(crate) const API_OFFSET: usize = 40;

pub(crate) const KEY_COLUMNS: &str = "id, name, hash, max_cost_fen, rpm, models, webhook_url, \
     webhook_secret, created_at, revoked_at";

backend_trait! {
    /// The OpenAI- and Ark-compatible front door: API keys, their jobs, usage and rate windows.
    trait ApiStore {
        /// Stores a new key.
        ///
        /// # Errors
        /// SQL errors; a name already taken is a constraint error.
        pub fn api_key_create(&self, key: ApiKey) -> Result<(), StoreError>;

        /// Every key, revoked ones included, oldest first.
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

        /// The live (not revoked) key with this hash.
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;

        /// A key by id, revoked or not.
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;

        /// Revokes the key named `name_or_id` (its name or its id); returns whether a live key
        /// was revoked.
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_key_revoke(&self, name_or_id: &str) -> Result<bool, StoreError>;

        /// Enqueues a door's job and its door record in one transaction. A job whose
        /// idempotency key (`job.key`) exists is not inserted: the existing job is returned,
        /// as [`ApiEnqueued::Existing`] when its body hash is `api.body_sha256`, else as
        /// [`ApiEnqueued::Conflict`].
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_enqueue(&self, job: NewJob, api: ApiJob) -> Result<ApiEnqueued, StoreError>;

        /// One job with its door record; a job whose record the client deleted is not found.
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_job(&self, id: &str) -> Result<Option<ApiRow>, StoreError>;

        /// A page of jobs matching `f` (newest first unless `ascending`), and how many match in
        /// all (before paging).
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_list(&self, f: ApiListFilter) -> Result<(i64, Vec<ApiRow>), StoreError>;

        /// Deletes a finished job's record as the door sees it (its door row is marked deleted;
        /// a job made outside the doors gets a door row that says so). Returns whether a
        /// visible record was deleted.
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_delete(&self, id: &str) -> Result<bool, StoreError>;

        /// Per key: its jobs' holds in the budget day starting at `day_start` (hold units, as
        /// `budget_holds` counts them: billed where known, else the reservation) and how many
        /// jobs it has created in all.
        ///
        /// # Errors
        /// SQL errors.
        pub fn api_key_usage(
            &self,
            day_start: crate::Timestamp,
        ) -> Result<Vec<KeyUsage>, StoreError>;

        /// Takes one request of `key`'s rate (`rpm` a minute) for the whole fleet: the read and
        /// the write of its [`rate_window`] row are one `BEGIN IMMEDIATE` transaction, so two
        /// workers on one database count each other's requests.
        ///
        /// # Errors
        /// `Ok(Err(ms))`: over the rate, the wait until one more request fits; `Err`: SQL errors.
        pub fn api_rate_take(
            &self,
            key: &str,
            rpm: i64,
            now: i64,
        ) -> Result<Result<(), i64>, StoreError>;

        /// The secret that signs file URLs (created by the migration, one per database).
        ///
        /// # Errors
        /// SQL errors, or no secret row.
        pub fn api_url_secret(&self) -> Result<String, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::testpg;

    pub(crate) fn key(name: &str, hash: &str) -> ApiKey {
        ApiKey {
            id: format!("key_{name}"),
            name: name.into(),
            hash: hash.into(),
            max_cost_fen: Some(100),
            rpm: Some(60),
            models: Some(vec!["m".into()]),
            webhook_url: None,
            webhook_secret: "whsec_x".into(),
            created_at: crate::Timestamp::from_ms(1),
            revoked_at: None,
        }
    }

    fn door(job: &NewJob, key: Option<&str>, body: &str) -> ApiJob {
        ApiJob {
            job_id: job.id.to_string(),
            api_key: key.map(str::to_string),
            door: "ark".into(),
            body_sha256: body.into(),
            info: "{}".into(),
            webhook_url: None,
            created_at: crate::Timestamp::EPOCH,
            deleted_at: None,
            result_meta: None,
        }
    }

    /// The conformance test both backends run.
    async fn keys_jobs_and_idempotency(s: Store) {
        s.api_key_create(key("a", "ha"))
            .await
            .expect("the store answers");
        s.api_key_create(key("b", "hb"))
            .await
            .expect("the store answers");
        assert!(
            s.api_key_create(key("a", "hc")).await.is_err(),
            "names are unique"
        );
        assert_eq!(
            s.api_key_by_hash("ha")
                .await
                .expect("the store answers")
                .expect("the store answers")
                .name,
            "a"
        );
        let k = s
            .api_key("key_a")
            .await
            .expect("the store answers")
            .expect("the store answers");
        assert_eq!(k.models, Some(vec!["m".to_string()]));
        assert_eq!(k.max_cost_fen, Some(100));

        let mut j = NewJob::plain("{}");
        j.key = Some("api:key_a:one".into());
        let first = s
            .api_enqueue(j.clone(), door(&j, Some("key_a"), "h1"))
            .await
            .expect("the store answers");
        assert_eq!(first, ApiEnqueued::Created(j.id.clone()));
        let mut again = NewJob::plain("{}");
        again.key = j.key.clone();
        let same = s
            .api_enqueue(again.clone(), door(&again, Some("key_a"), "h1"))
            .await
            .expect("the store answers");
        assert_eq!(same, ApiEnqueued::Existing(j.id.clone()));
        let other = s
            .api_enqueue(again.clone(), door(&again, Some("key_a"), "h2"))
            .await
            .expect("the store answers");
        assert_eq!(other, ApiEnqueued::Conflict(j.id.clone()));

        let mut jb = NewJob::plain("{}");
        jb.model = "other".into();
        s.api_enqueue(jb.clone(), door(&jb, Some("key_b"), "h3"))
            .await
            .expect("the store answers");
        // A job made outside the doors.
        s.enqueue(vec![NewJob::plain("{}")])
            .await
            .expect("the store answers");

        let mine = ApiListFilter {
            key: Some("key_a".into()),
            limit: 10,
            archive_on: true,
            ..Default::default()
        };
        let (total, rows) = s.api_list(mine.clone()).await.expect("the store answers");
        assert_eq!((total, rows.len()), (1, 1));
        assert_eq!(rows[0].0.id, j.id);
        let all = ApiListFilter {
            limit: 10,
            archive_on: true,
            ..Default::default()
        };
        assert_eq!(
            s.api_list(all.clone()).await.expect("the store answers").0,
            3
        );
        let queued = ApiListFilter {
            statuses: vec!["queued".into()],
            model: Some("other".into()),
            ..all.clone()
        };
        let (n, rows) = s.api_list(queued).await.expect("the store answers");
        assert_eq!(
            (
                n,
                rows[0]
                    .1
                    .as_ref()
                    .expect("the store answers")
                    .api_key
                    .as_deref()
            ),
            (1, Some("key_b"))
        );
        let running = ApiListFilter {
            statuses: vec!["running".into()],
            ..all.clone()
        };
        assert_eq!(s.api_list(running).await.expect("the store answers").0, 0);
        let page = ApiListFilter {
            limit: 1,
            offset: 1,
            ..all.clone()
        };
        assert_eq!(
            s.api_list(page).await.expect("the store answers").1.len(),
            1
        );

        let (job, api) = s
            .api_job(j.id.as_str())
            .await
            .expect("the store answers")
            .expect("the store answers");
        assert_eq!(
            (job.id, api.expect("the store answers").body_sha256),
            (j.id.clone(), "h1".to_string())
        );
        assert!(
            s.api_delete(j.id.as_str())
                .await
                .expect("the store answers")
        );
        assert!(
            s.api_job(j.id.as_str())
                .await
                .expect("the store answers")
                .is_none()
        );
        assert!(
            !s.api_delete(j.id.as_str())
                .await
                .expect("the store answers"),
            "deleted once"
        );
        assert_eq!(s.api_list(mine).await.expect("the store answers").0, 0);

        assert!(s.api_key_revoke("a").await.expect("the store answers"));
        assert!(
            s.api_key_by_hash("ha")
                .await
                .expect("the store answers")
                .is_none(),
            "revoked at once"
        );
        assert!(!s.api_key_revoke("key_a").await.expect("the store answers"));
        assert_eq!(s.api_keys().await.expect("the store answers").len(), 2);
        assert!(s.api_url_secret().await.expect("the store answers").len() >= 32);
        let usage = s
            .api_key_usage(crate::Timestamp::EPOCH)
            .await
            .expect("the store answers");
        let jobs: Vec<(String, i64, i64)> = usage
            .into_iter()
            .map(|u| (u.key, u.jobs, u.units_today))
            .collect();
        assert_eq!(jobs, vec![("key_a".into(), 1, 0), ("key_b".into(), 1, 0)]);
    }

    #[tokio::test]
    async fn keys_jobs_and_idempotency_on_sqlite() {
        let dir = tempfile::tempdir().expect("the store answers");
        keys_jobs_and_idempotency(
            Store::open(&dir.path().join("s.db")).expect("the store answers"),
        )
        .await;
    }

    #[tokio::test]
    async fn keys_jobs_and_idempotency_on_postgres() {
        keys_jobs_and_idempotency(testpg::pg_store().await).await;
    }

    #[test]
    fn a_sliding_minute_lets_rpm_through_then_says_when() {
        let w = RATE_WINDOW_MS;
        let t0 = 10 * w;
        let mut row = None;
        for _ in 0..3 {
            row = Some(rate_window(row, t0 + 1000, 3).expect("room for three"));
        }
        let wait = rate_window(row, t0 + 1000, 3).expect_err("the fourth waits");
        // Full in this window: the earliest fit is in the next one, once a third of its
        // weight has gone (a minute's three fall to two).
        assert_eq!(wait, (w - 1000) + w / 3);
        let later = t0 + 1000 + wait;
        assert!(rate_window(row, later, 3).is_ok(), "fits after the wait");
        assert!(
            rate_window(row, later - 1000, 3).is_err(),
            "not a second before"
        );
        // Two minutes on, the old window counts for nothing.
        assert_eq!(rate_window(row, t0 + 2 * w, 3), Ok((t0 + 2 * w, 1, 0)));
    }

    /// The rate is the fleet's: two store handles on one database (two workers) take from
    /// one count, so the second sees the first's requests.
    async fn rate_is_shared(a: Store, b: Store) {
        let now = 100 * RATE_WINDOW_MS + 5_000;
        for i in 0..3 {
            let s = if i % 2 == 0 { &a } else { &b };
            assert_eq!(
                s.api_rate_take("key_r", 4, now)
                    .await
                    .expect("the store answers"),
                Ok(()),
                "request {i} fits"
            );
        }
        assert_eq!(
            a.api_rate_take("key_r", 4, now)
                .await
                .expect("the store answers"),
            Ok(())
        );
        let wait = b
            .api_rate_take("key_r", 4, now)
            .await
            .expect("the store answers")
            .expect_err("the second handle sees four taken through both");
        assert!((1000..=2 * RATE_WINDOW_MS).contains(&wait), "{wait}");
        assert_eq!(
            b.api_rate_take("key_other", 4, now)
                .await
                .expect("the store answers"),
            Ok(()),
            "another key has its own count"
        );
        // Concurrent takers never let more than the rate through.
        let later = now + 3 * RATE_WINDOW_MS;
        let mut tasks = Vec::new();
        for i in 0..10 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                s.api_rate_take("key_c", 5, later)
                    .await
                    .expect("the store answers")
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.expect("the task ran").is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 5, "exactly the rate, across both handles");
    }

    #[tokio::test]
    async fn the_rate_is_fleet_wide_on_sqlite() {
        let dir = tempfile::tempdir().expect("the store answers");
        let path = dir.path().join("s.db");
        let a = Store::open(&path).expect("the store answers");
        let b = Store::open(&path).expect("the store answers");
        rate_is_shared(a, b).await;
    }

    #[tokio::test]
    async fn the_rate_is_fleet_wide_on_postgres() {
        let url = testpg::fresh_database().await;
        let open = || async {
            Store::open_target(
                &crate::StoreTarget::Postgres {
                    url: url.clone(),
                    password: None,
                },
                true,
            )
            .await
            .expect("open the PostgreSQL store")
        };
        let a = open().await;
        let b = open().await;
        rate_is_shared(a, b).await;
    }
}
