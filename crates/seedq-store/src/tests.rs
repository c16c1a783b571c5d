//! Store tests on real databases: a SQLite file in a temp dir and, through
//! [`testpg::both`], a fresh PostgreSQL database, the same assertions on each.

use super::*;
use rusqlite::Connection;

/// The lease most claims in these tests take: long enough that it never runs out mid-test.
pub(crate) const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `index_prompts` in batches of `batch` until nothing is pending; returns how many jobs
/// it indexed (always 0 on SQLite, which indexes in the write itself).
pub(crate) async fn index_all(store: &Store, batch: u32) -> u64 {
    let mut total = 0;
    loop {
        let n = store.index_prompts(batch).await.expect("index_prompts");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

/// Runs one statement of our own past the store's verbs: a write that bypasses nothing
/// (the triggers still run), or, on a counter table, the drift maintenance must catch.
pub(crate) async fn raw(store: &Store, sql: impl Into<String>) {
    let sql: String = sql.into();
    if let Some(pg) = store.pg() {
        let c = pg.conn().await.expect("conn");
        c.batch_execute(&sql).await.expect(&sql);
    } else {
        let q = sql.clone();
        store
            .call(move |c| Ok(c.execute_batch(&q)?))
            .await
            .expect(&sql);
    }
}

fn new_job(model: &str, key: Option<&str>, priority: i64) -> NewJob {
    NewJob {
        id: JobId::generate(),
        model: model.into(),
        flex: false,
        priority,
        request_json: "{}".into(),
        key: key.map(str::to_string),
        tags: vec!["t1".into()],
        batch: None,
        shape: Some("720p/5s".into()),
        est_tokens: Some(100),
        expires_after: None,
        seed: Some(1),
    }
}

#[tokio::test]
async fn migrations_apply_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q.db");
    let s = Store::open(&path).expect("open");
    assert_eq!(
        s.schema_version().await.expect("version"),
        migrate::latest()
    );
    drop(s);
    let mut c = Connection::open(&path).expect("raw open");
    assert_eq!(
        migrate::apply(&mut c).expect("re-apply"),
        0,
        "a migrated db is a no-op"
    );
    c.execute_batch("PRAGMA user_version = 99").expect("bump");
    assert!(matches!(
        migrate::apply(&mut c),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

#[tokio::test]
async fn idempotency_keys_skip_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let r = s
            .enqueue(vec![new_job("m", Some("k1"), 0), new_job("m", None, 0)])
            .await
            .expect("enqueue");
        assert_eq!(r.inserted.len(), 2, "{name}");
        let first = r.inserted[0].clone();
        let r = s
            .enqueue(vec![new_job("m", Some("k1"), 0)])
            .await
            .expect("enqueue");
        assert!(r.inserted.is_empty(), "{name}");
        assert_eq!(r.skipped, vec![("k1".to_string(), first.clone())], "{name}");
        assert_eq!(
            s.list(ListFilter::default()).await.expect("list").len(),
            2,
            "{name}"
        );
        // The same key twice in one call: the first is inserted, the second skipped as
        // pointing at it, and the rest of the batch goes in.
        let (a, b, c) = (
            new_job("m", Some("k2"), 0),
            new_job("m", Some("k2"), 0),
            new_job("m", Some("k1"), 0),
        );
        let d = new_job("m", None, 0);
        let r = s
            .enqueue(vec![a.clone(), b, c, d.clone()])
            .await
            .expect("enqueue");
        assert_eq!(r.inserted, vec![a.id.clone(), d.id.clone()], "{name}");
        assert_eq!(
            r.skipped,
            vec![("k2".to_string(), a.id.clone()), ("k1".to_string(), first)],
            "{name}"
        );
        let ev = s.events(d.id.as_str()).await.expect("events");
        assert_eq!(ev.len(), 1, "{name}");
        assert_eq!(ev[0].to_state, "queued", "{name}");
        assert_eq!(ev[0].detail.as_deref(), Some("enqueued"), "{name}");
        let got = s.job(a.id.as_str()).await.expect("job").expect("a");
        assert_eq!(got.tags, vec!["t1".to_string()], "{name}");
        assert_eq!(got.shape.as_deref(), Some("720p/5s"), "{name}");
        assert_eq!((got.est_tokens, got.seed), (Some(100), Some(1)), "{name}");
        let token = got.callback_token.expect("a callback token");
        assert!(
            token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: {token}"
        );
        let other = s.job(d.id.as_str()).await.expect("job").expect("d");
        assert_ne!(
            other.callback_token.as_deref(),
            Some(token.as_str()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn claims_by_priority_then_age_and_fences_on_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let low = new_job("m", None, 0);
        let high = new_job("m", None, 5);
        let other = new_job("other", None, 9);
        s.enqueue(vec![low.clone(), high.clone(), other])
            .await
            .expect("enqueue");
        let j = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                100,
                ResolutionScope::All,
                1,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim")
            .pop()
            .expect("a job");
        assert_eq!(j.id, high.id, "{name}");
        assert_eq!(j.state, JobState::Submitting, "{name}");
        assert_eq!(j.attempts, 1, "{name}");
        assert_eq!(j.lease_owner.as_deref(), Some("w"), "{name}");
        let j2 = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                100,
                ResolutionScope::All,
                1,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim")
            .pop()
            .expect("a job");
        assert_eq!(j2.id, low.id, "{name}");
        assert!(
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                100,
                ResolutionScope::All,
                1,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .is_empty(),
            "{name}"
        );

        // A stale token conflicts; the right one wins once.
        let stale = s
            .transition(
                &j.id,
                JobState::Submitting,
                j.lease_token - 1,
                JobState::Submitted,
                Patch::new(),
                None,
            )
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{name}");
        let next = s
            .transition(
                &j.id,
                JobState::Submitting,
                j.lease_token,
                JobState::Submitted,
                Patch::new().set("remote_task_id", "cgt-1".to_string()),
                Some("accepted".into()),
            )
            .await
            .expect("transition");
        assert_eq!(next, j.lease_token + 1, "{name}");
        let again = s
            .transition(
                &j.id,
                JobState::Submitting,
                j.lease_token,
                JobState::Submitted,
                Patch::new(),
                None,
            )
            .await;
        assert!(matches!(again, Err(StoreError::Conflict { .. })), "{name}");
        let illegal = s
            .transition(
                &j.id,
                JobState::Submitted,
                next,
                JobState::Archived,
                Patch::new(),
                None,
            )
            .await;
        assert!(
            matches!(illegal, Err(StoreError::IllegalTransition { .. })),
            "{name}"
        );

        let got = s
            .job_by_remote("cgt-1")
            .await
            .expect("query")
            .expect("found");
        assert_eq!(got.id, j.id, "{name}");
        assert!(s.job_by_remote("cgt-2").await.expect("query").is_none());
        let ev: Vec<String> = s
            .events(j.id.as_str())
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.to_state)
            .collect();
        assert_eq!(ev, vec!["queued", "submitting", "submitted"], "{name}");
        assert_eq!(
            s.in_flight_tier("m", Tier::Default)
                .await
                .expect("in flight"),
            2,
            "{name}"
        );
        assert_eq!(
            s.in_flight().await.expect("in flight").get("m"),
            Some(&2),
            "{name}"
        );
        s.enqueue(vec![new_job("m", None, 0)])
            .await
            .expect("enqueue");
        assert!(
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                2,
                ResolutionScope::All,
                5,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .is_empty(),
            "{name}: the in-flight cap holds inside the claim"
        );
        assert_eq!(
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                3,
                ResolutionScope::All,
                5,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn cancel_and_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let a = new_job("m", None, 0);
        s.enqueue(vec![a.clone()]).await.expect("enqueue");
        assert_eq!(
            s.cancel(a.id.as_str()).await.expect("cancel"),
            CancelOutcome::Cancelled,
            "{name}"
        );
        assert_eq!(
            s.cancel(a.id.as_str()).await.expect("cancel"),
            CancelOutcome::AlreadyFinal {
                state: JobState::Cancelled
            },
            "{name}"
        );
        assert_eq!(
            s.cancel("nope").await.expect("cancel"),
            CancelOutcome::NotFound,
            "{name}"
        );
        assert_eq!(
            s.retry("nope").await.expect("retry"),
            RetryOutcome::NotFound,
            "{name}"
        );
        let cancelled = s.job(a.id.as_str()).await.expect("get").expect("exists");
        assert!(cancelled.finished_at.is_some(), "{name}");
        assert_eq!(
            s.retry(a.id.as_str()).await.expect("retry"),
            RetryOutcome::Requeued,
            "{name}"
        );
        let j = s.job(a.id.as_str()).await.expect("get").expect("exists");
        assert_eq!(j.state, JobState::Queued, "{name}");
        assert_eq!((j.finished_at, j.attempts), (None, 0), "{name}");
        assert_eq!(j.lease_token, cancelled.lease_token + 1, "{name}");
        assert_eq!(
            s.retry(a.id.as_str()).await.expect("retry"),
            RetryOutcome::NotRetryable {
                state: JobState::Queued
            },
            "{name}"
        );
        let ev: Vec<Option<String>> = s
            .events(a.id.as_str())
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.detail)
            .collect();
        assert_eq!(
            ev,
            vec![
                Some("enqueued".to_string()),
                Some("cancelled by user".to_string()),
                Some("retried by user".to_string())
            ],
            "{name}"
        );
        // Remote jobs are only flagged.
        let c = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                100,
                ResolutionScope::All,
                1,
                "w",
                std::time::Duration::from_millis(1000),
            )
            .await
            .expect("claim")
            .pop()
            .expect("job");
        assert_eq!(
            s.cancel(c.id.as_str()).await.expect("cancel"),
            CancelOutcome::Requested,
            "{name}"
        );
        let j = s.job(c.id.as_str()).await.expect("get").expect("exists");
        assert!(j.cancel_requested, "{name}");
        assert_eq!(j.state, JobState::Submitting, "{name}");
    }
}

#[tokio::test]
async fn a_retried_flex_job_gets_its_whole_deadline_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut j = new_job("m", None, 0);
        j.flex = true;
        j.expires_after = Some(3600);
        s.enqueue(vec![j.clone()]).await.expect("enqueue");
        let got = s.job(j.id.as_str()).await.expect("get").expect("exists");
        assert_eq!(
            got.deadline_at,
            Some(got.created_at + std::time::Duration::from_secs(3600)),
            "{name}: the local deadline starts at enqueue"
        );
        s.cancel(j.id.as_str()).await.expect("cancel");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            s.retry(j.id.as_str()).await.expect("retry"),
            RetryOutcome::Requeued
        );
        let again = s.job(j.id.as_str()).await.expect("get").expect("exists");
        assert_eq!(
            again.deadline_at,
            Some(again.updated_at + std::time::Duration::from_secs(3600)),
            "{name}: the deadline restarts at the retry"
        );
        assert!(again.deadline_at > got.deadline_at, "{name}");
    }
}

#[tokio::test]
async fn claim_due_pushes_next_attempt_to_the_lease_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        s.enqueue(vec![new_job("m", None, 0)])
            .await
            .expect("enqueue");
        let j = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                100,
                ResolutionScope::All,
                1,
                "w",
                std::time::Duration::from_millis(1000),
            )
            .await
            .expect("claim")
            .pop()
            .expect("job");
        let tok = s
            .transition(
                &j.id,
                JobState::Submitting,
                j.lease_token,
                JobState::Submitted,
                Patch::new().set("next_attempt_at", 0i64),
                None,
            )
            .await
            .expect("submitted");
        let before = now_ms();
        let due = s
            .claim_due(JobState::Submitted, "p", crate::tests::LEASE, 10)
            .await
            .expect("claim");
        assert_eq!(due.len(), 1, "{name}");
        assert_eq!(due[0].lease_token, tok + 1, "{name}");
        assert_eq!(due[0].lease_owner.as_deref(), Some("p"), "{name}");
        assert!(due[0].next_attempt_at.ms() >= before + 60_000, "{name}");
        assert_eq!(Some(due[0].next_attempt_at), due[0].lease_until, "{name}");
        assert!(
            s.claim_due(JobState::Submitted, "p", crate::tests::LEASE, 10)
                .await
                .expect("claim")
                .is_empty(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn flex_deadline_expires_queued_jobs_locally() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut j = new_job("m", None, 0);
        j.flex = true;
        j.expires_after = Some(0);
        let plain = new_job("m", None, 0);
        s.enqueue(vec![j.clone(), plain.clone()])
            .await
            .expect("enqueue");
        let got = s.job(j.id.as_str()).await.expect("get").expect("exists");
        assert_eq!(got.deadline_at, Some(got.created_at), "{name}");
        let got = s
            .job(plain.id.as_str())
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got.deadline_at, None, "{name}: only flex jobs have one");
        let expired = s.expire_overdue().await.expect("expire");
        assert_eq!(expired, vec![j.id.clone()], "{name}");
        let got = s.job(j.id.as_str()).await.expect("get").expect("exists");
        assert_eq!(got.state, JobState::Expired, "{name}");
    }
}

#[tokio::test]
async fn parked_submits_can_be_retried_or_cancelled_by_an_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        s.enqueue(vec![new_job("m", None, 0), new_job("m", None, 0)])
            .await
            .expect("enqueue");
        for _ in 0..2 {
            let j = s
                .claim_for_submit_tier(
                    "m",
                    Tier::Default,
                    10,
                    ResolutionScope::All,
                    1,
                    "w",
                    std::time::Duration::from_millis(1000),
                )
                .await
                .expect("claim")
                .pop()
                .expect("job");
            let t = s
                .transition(
                    &j.id,
                    JobState::Submitting,
                    j.lease_token,
                    JobState::SubmitUnknown,
                    Patch::new(),
                    None,
                )
                .await
                .expect("unknown");
            // Not parked yet: reconciliation is still looking.
            assert_eq!(
                s.retry(j.id.as_str()).await.expect("retry"),
                RetryOutcome::NotRetryable {
                    state: JobState::SubmitUnknown
                },
                "{name}"
            );
            s.update(
                &j.id,
                JobState::SubmitUnknown,
                t,
                Patch::new().set("last_error_code", "parked".to_string()),
            )
            .await
            .expect("park");
        }
        // A parked submit holds no slot.
        assert_eq!(
            s.in_flight_tier("m", Tier::Default).await.expect("count"),
            0,
            "{name}"
        );
        let jobs = s.list(ListFilter::default()).await.expect("list");
        assert_eq!(
            s.retry(jobs[0].id.as_str()).await.expect("retry"),
            RetryOutcome::Requeued,
            "{name}"
        );
        assert_eq!(
            s.cancel(jobs[1].id.as_str()).await.expect("cancel"),
            CancelOutcome::Cancelled,
            "{name}"
        );
        let states: Vec<JobState> = s
            .list(ListFilter::default())
            .await
            .expect("list")
            .iter()
            .map(|j| j.state)
            .collect();
        assert_eq!(
            states,
            vec![JobState::Queued, JobState::Cancelled],
            "{name}"
        );
    }
}

#[tokio::test]
async fn each_tier_counts_only_its_own_tasks_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut jobs = Vec::new();
        for i in 0..6 {
            let mut j = new_job("m", None, 0);
            j.flex = i % 2 == 1;
            jobs.push(j);
        }
        s.enqueue(jobs).await.expect("enqueue");
        // Two default tasks fill a default cap of 2 ...
        let d = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                2,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert_eq!(d.len(), 2, "{name}");
        assert!(d.iter().all(|j| !j.is_flex()), "{name}");
        assert!(
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                2,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .is_empty(),
            "{name}"
        );
        // ... and do not count against flex, whose own cap of 2 holds separately.
        let f = s
            .claim_for_submit_tier(
                "m",
                Tier::Flex,
                2,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert_eq!(f.len(), 2, "{name}");
        assert!(f.iter().all(Job::is_flex), "{name}");
        assert_eq!(s.in_flight_tier("m", Tier::Flex).await.expect("count"), 2);
        assert_eq!(
            s.in_flight_tier("m", Tier::Default).await.expect("count"),
            2
        );
        let mut by_tier = s.in_flight_by_tier().await.expect("by tier");
        by_tier.sort();
        assert_eq!(
            by_tier,
            vec![("m".into(), Tier::Default, 2), ("m".into(), Tier::Flex, 2)],
            "{name}"
        );
        assert_eq!(
            s.claim_for_submit_tier(
                "m",
                Tier::Flex,
                10,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_resolution_with_its_own_limits_is_claimed_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut jobs = Vec::new();
        for shape in ["4k/5s", "4k", "720p/5s", "720p/5s", "1080p"] {
            let mut j = new_job("m", None, 0);
            j.shape = Some(shape.into());
            jobs.push(j);
        }
        s.enqueue(jobs).await.expect("enqueue");
        let except = ResolutionScope::Except(vec!["4k".into()]);
        let rest = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                except.clone(),
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert_eq!(rest.len(), 3, "{name}");
        assert!(
            rest.iter()
                .all(|j| !j.shape.as_deref().unwrap_or("").starts_with("4k")),
            "{name}"
        );
        let only = ResolutionScope::Only("4k".into(), 1);
        let k = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                only.clone(),
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert_eq!(k.len(), 1, "{name}: 4k's own cap of one");
        assert!(
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                only.clone(),
                10,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .is_empty(),
            "{name}"
        );
        // The model's cap binds 4k too: 4 in flight of 4.
        assert!(
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                4,
                ResolutionScope::Only("4k".into(), 5),
                10,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .is_empty(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn lean_paths_read_no_bodies() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut j = new_job("m1", None, 0);
        j.request_json = r#"{"model":"m1","content":[{"type":"text","text":"a fox"}]}"#.into();
        s.enqueue(vec![j]).await.expect("enqueue");
        let lean = s.list_lean(ListFilter::default()).await.expect("lean");
        assert_eq!(lean.len(), 1, "{name}");
        assert!(lean[0].request_json.is_empty(), "{name}");
        let full = s.list(ListFilter::default()).await.expect("full");
        assert!(full[0].request_json.contains("a fox"), "{name}");
        let claimed = s
            .claim_for_submit_tier(
                "m1",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert!(
            claimed[0].request_json.contains("a fox"),
            "{name}: the dispatcher needs the body"
        );
        s.transition(
            &claimed[0].id,
            JobState::Submitting,
            claimed[0].lease_token,
            JobState::Submitted,
            Patch::new()
                .set("remote_task_id", "cgt-1".to_string())
                .set("next_attempt_at", 0),
            None,
        )
        .await
        .expect("submitted");
        let polled = s
            .claim_due_lean(JobState::Submitted, "p", crate::tests::LEASE, 10)
            .await
            .expect("poll");
        assert_eq!(polled.len(), 1, "{name}");
        assert!(
            polled[0].request_json.is_empty(),
            "{name}: the poller reads no body"
        );
    }
}

#[tokio::test]
async fn postgres_migrations_apply_once_even_when_workers_start_together() {
    let url = testpg::fresh_database().await;
    let target = StoreTarget::Postgres {
        url,
        password: None,
    };
    // Eight workers starting at once: the advisory lock lets one migrate, the rest wait and
    // find nothing to do (without it, CREATE TABLE would fail in all but one).
    let opens = (0..8).map(|_| Store::open_target(&target, true));
    for s in futures::future::join_all(opens).await {
        let s = s.expect("open");
        assert_eq!(
            s.schema_version().await.expect("version"),
            postgres::migrate::latest()
        );
    }
}

#[tokio::test]
async fn a_postgres_store_reads_jobs_and_has_no_file() {
    let s = testpg::pg_store().await;
    assert!(s.job("nope").await.expect("job").is_none());
    assert!(s.events("nope").await.expect("events").is_empty());
    assert!(s.path().is_none());
    assert!(s.check_identity().is_ok());
}

/// Every method of every area's backend trait is called by a store test, and the store tests
/// run on both backends (`testpg::both`): a method added to a trait without a test fails
/// here, so the conformance suite cannot silently miss one backend's body. A trait method the
/// `Store` keeps private (`pub(super)`) counts when a `Store` method calls it.
#[test]
fn every_backend_method_is_called_by_a_store_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut methods: Vec<(String, bool)> = Vec::new();
    let (mut tests, mut code) = (String::new(), String::new());
    for entry in std::fs::read_dir(&dir).expect("the store's src") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("tests") || name.ends_with("_tests.rs") {
            tests.push_str(&text);
            continue;
        }
        let (body, test_part) = text
            .split_once("#[cfg(test)]\nmod tests")
            .unwrap_or((&text, ""));
        tests.push_str(test_part);
        code.push_str(body);
        let Some((_, decl)) = body.split_once("backend_trait! {") else {
            continue;
        };
        let decl = decl.split("\n}\n").next().unwrap_or("");
        for line in decl.lines().map(str::trim) {
            let public = line.starts_with("pub fn ");
            let Some(rest) = line.split_once("fn ").map(|(_, r)| r) else {
                continue;
            };
            if line.starts_with("//") {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            methods.push((name, public));
        }
    }
    assert!(methods.len() > 100, "found only {} methods", methods.len());
    let missed: Vec<&str> = methods
        .iter()
        .filter(|(name, public)| {
            let call = format!(".{name}(");
            if *public {
                !tests.contains(&call)
            } else {
                !code.contains(&format!("self{call}"))
            }
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        missed.is_empty(),
        "backend methods no store test calls (add one that runs on both backends): {missed:?}"
    );
}
