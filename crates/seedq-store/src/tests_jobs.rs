//! The core job methods on both backends: listing filters, stats, batched
//! transitions, the claim's serialising and pause rules, and, on PostgreSQL, several workers
//! (separate pools on one database) claiming at once.

use std::collections::HashSet;

use super::*;

fn job(model: &str) -> NewJob {
    let mut j = NewJob::plain(format!(r#"{{"model":"{model}"}}"#));
    j.model = model.into();
    j
}

#[tokio::test]
async fn list_filters_and_stats_agree_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut a = job("m1");
        a.tags = vec!["red".into(), "big".into()];
        a.batch = Some("b1".into());
        a.est_tokens = Some(10);
        let mut b = job("m1");
        b.tags = vec!["blue".into()];
        b.est_tokens = Some(20);
        let mut c = job("m2");
        c.tags = vec!["red".into()];
        c.batch = Some("b1".into());
        c.est_tokens = Some(5);
        s.enqueue(vec![a.clone(), b.clone(), c.clone()])
            .await
            .expect("enqueue");
        s.cancel(b.id.as_str()).await.expect("cancel");
        let ids = |v: Vec<Job>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
        // Newest first is id order, descending (ids made in one millisecond sort by their
        // random part).
        let desc = |mut v: Vec<JobId>| {
            v.sort_by(|x, y| y.as_str().cmp(x.as_str()));
            v
        };
        let all = ids(s.list(ListFilter::default()).await.expect("list"));
        assert_eq!(
            all,
            desc(vec![a.id.clone(), b.id.clone(), c.id.clone()]),
            "{name}: newest first"
        );
        let f = |state, model: Option<&str>, tag: Option<&str>, batch: Option<&str>, limit| {
            ListFilter {
                state,
                model: model.map(str::to_string),
                tag: tag.map(str::to_string),
                batch: batch.map(str::to_string),
                limit,
            }
        };
        let red = ids(s
            .list(f(None, None, Some("red"), None, None))
            .await
            .expect("list"));
        assert_eq!(
            red,
            desc(vec![a.id.clone(), c.id.clone()]),
            "{name}: by tag"
        );
        // A tag matches whole elements only.
        assert!(
            s.list(f(None, None, Some("re"), None, None))
                .await
                .expect("list")
                .is_empty(),
            "{name}"
        );
        let m1_red = ids(s
            .list(f(None, Some("m1"), Some("red"), Some("b1"), None))
            .await
            .expect("list"));
        assert_eq!(m1_red, vec![a.id.clone()], "{name}: filters combine");
        let cancelled = ids(s
            .list_lean(f(Some(JobState::Cancelled), None, None, None, None))
            .await
            .expect("list"));
        assert_eq!(cancelled, vec![b.id.clone()], "{name}: by state");
        let one = ids(s
            .list(f(None, None, None, Some("b1"), Some(1)))
            .await
            .expect("list"));
        assert_eq!(
            one,
            desc(vec![a.id.clone(), c.id.clone()])[..1].to_vec(),
            "{name}: limit"
        );

        let stats: Vec<(JobState, String, i64, i64)> = s
            .stats()
            .await
            .expect("stats")
            .into_iter()
            .map(|r| (r.state, r.model, r.jobs, r.est_tokens))
            .collect();
        assert_eq!(
            stats,
            vec![
                (JobState::Cancelled, "m1".into(), 1, 20),
                (JobState::Queued, "m1".into(), 1, 10),
                (JobState::Queued, "m2".into(), 1, 5),
            ],
            "{name}"
        );
    }
}

#[tokio::test]
async fn transition_many_applies_each_item_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        s.enqueue(vec![job("m"), job("m"), job("m")])
            .await
            .expect("enqueue");
        let claimed = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 3, "{name}");
        let t = |j: &Job, token: i64, to: JobState, patch: Patch| Transition {
            id: j.id.clone(),
            from: JobState::Submitting,
            token,
            to,
            patch,
            detail: Some("batch".into()),
        };
        let out = s
            .transition_many(vec![
                t(
                    &claimed[0],
                    claimed[0].lease_token,
                    JobState::Failed,
                    Patch::new()
                        .set("last_error_code", "boom".to_string())
                        .clear("lease_owner"),
                ),
                t(
                    &claimed[1],
                    claimed[1].lease_token - 1,
                    JobState::Submitted,
                    Patch::new(),
                ),
                t(
                    &claimed[2],
                    claimed[2].lease_token,
                    JobState::Archived,
                    Patch::new(),
                ),
            ])
            .await
            .expect("batch");
        assert_eq!(out.len(), 3, "{name}");
        assert_eq!(
            *out[0].as_ref().expect("applied"),
            claimed[0].lease_token + 1,
            "{name}"
        );
        assert!(
            matches!(out[1], Err(StoreError::Conflict { .. })),
            "{name}: {:?}",
            out[1]
        );
        assert!(
            matches!(out[2], Err(StoreError::IllegalTransition { .. })),
            "{name}: {:?}",
            out[2]
        );
        let failed = s
            .job(claimed[0].id.as_str())
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(failed.state, JobState::Failed, "{name}");
        assert_eq!(failed.last_error_code.as_deref(), Some("boom"), "{name}");
        assert_eq!(failed.lease_owner, None, "{name}: a NULL patch value");
        assert_eq!(failed.lease_until, None, "{name}: terminal ends the lease");
        assert!(failed.finished_at.is_some(), "{name}");
        let ev = s.events(claimed[0].id.as_str()).await.expect("events");
        assert_eq!(ev.last().map(|e| e.to_state.as_str()), Some("failed"));
        assert_eq!(ev.last().and_then(|e| e.detail.as_deref()), Some("batch"));
        for j in &claimed[1..] {
            let got = s.job(j.id.as_str()).await.expect("get").expect("exists");
            assert_eq!(got.state, JobState::Submitting, "{name}: untouched");
            assert_eq!(got.lease_token, j.lease_token, "{name}");
        }
        // `update` changes columns, not the state, and writes no event.
        let before = s
            .events(claimed[1].id.as_str())
            .await
            .expect("events")
            .len();
        let tok = s
            .update(
                &claimed[1].id,
                JobState::Submitting,
                claimed[1].lease_token,
                Patch::new().set("poll_count", 7i64),
            )
            .await
            .expect("update");
        assert_eq!(tok, claimed[1].lease_token + 1, "{name}");
        let got = s
            .job(claimed[1].id.as_str())
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            (got.state, got.poll_count),
            (JobState::Submitting, 7),
            "{name}"
        );
        assert_eq!(
            s.events(claimed[1].id.as_str())
                .await
                .expect("events")
                .len(),
            before,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_safety_identifier_serialises_its_creates_and_a_pause_holds_a_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let body =
            |seed: &str| format!(r#"{{"model":"m","safety_identifier":"u1","seed":{seed}}}"#);
        let mut first = job("m");
        first.request_json = body("1");
        first.priority = 1;
        let mut twin = job("m");
        twin.request_json = body("1.0");
        let mut other_seed = job("m");
        other_seed.request_json = body("2");
        s.enqueue(vec![first.clone(), twin.clone(), other_seed.clone()])
            .await
            .expect("enqueue");
        let got: Vec<JobId> = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim")
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(
            got,
            vec![first.id.clone(), other_seed.id.clone()],
            "{name}: one create per (safety_identifier, seed) at a time"
        );
        assert!(
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .is_empty(),
            "{name}: the twin waits while the first is unresolved"
        );
        let j = s
            .job(first.id.as_str())
            .await
            .expect("get")
            .expect("exists");
        s.transition(
            &j.id,
            JobState::Submitting,
            j.lease_token,
            JobState::Submitted,
            Patch::new().set("remote_task_id", "cgt-9".to_string()),
            None,
        )
        .await
        .expect("submitted");
        let next = s
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE,
            )
            .await
            .expect("claim");
        assert_eq!(next.len(), 1, "{name}");
        assert_eq!(next[0].id, twin.id, "{name}");

        // A JSON null seed and no seed are the same identity (json_extract reads both as
        // NULL), so these two are serialised too.
        let mut null_seed = job("n");
        null_seed.request_json = r#"{"model":"n","safety_identifier":"u2","seed":null}"#.into();
        let mut no_seed = job("n");
        no_seed.request_json = r#"{"model":"n","safety_identifier":"u2"}"#.into();
        s.enqueue(vec![null_seed, no_seed]).await.expect("enqueue");
        assert_eq!(
            s.claim_for_submit_tier(
                "n",
                Tier::Default,
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
            "{name}: null seed and no seed serialise"
        );

        // A paused model's queued jobs are not claimed.
        s.enqueue(vec![job("p")]).await.expect("enqueue");
        s.pause(PauseKind::Model, "p").await.expect("pause");
        assert!(
            s.claim_for_submit_tier(
                "p",
                Tier::Default,
                10,
                ResolutionScope::All,
                10,
                "w",
                crate::tests::LEASE
            )
            .await
            .expect("claim")
            .is_empty(),
            "{name}: paused"
        );
    }
}

#[tokio::test]
async fn a_large_enqueue_keeps_order_and_keys_across_statements() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        // More than one multi-row statement's worth on PostgreSQL, with a key repeated in a
        // later statement than its first use.
        let mut jobs: Vec<NewJob> = (0..7_000).map(|_| job("m")).collect();
        jobs[10].key = Some("dup".into());
        jobs[6_500].key = Some("dup".into());
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        let r = s.enqueue(jobs).await.expect("enqueue");
        let mut want = ids.clone();
        want.remove(6_500);
        assert_eq!(r.inserted, want, "{name}: input order, the repeat left out");
        assert_eq!(
            r.skipped,
            vec![("dup".to_string(), ids[10].clone())],
            "{name}"
        );
        assert!(
            s.job(ids[6_500].as_str()).await.expect("get").is_none(),
            "{name}"
        );
        let stats = s.stats().await.expect("stats");
        assert_eq!(stats.len(), 1, "{name}");
        assert_eq!(stats[0].jobs, 6_999, "{name}");
        assert_eq!(
            s.events(ids[6_999].as_str()).await.expect("events").len(),
            1,
            "{name}"
        );
    }
}

/// The typed verbs (store/verbs.rs) sit on `transition`, `update` and `transition_many`: their
/// whole suite, every verb from every state with right and stale tokens, on PostgreSQL.
#[tokio::test]
async fn verbs_on_postgres() {
    super::verbs_tests::verb_suite(&testpg::pg_store().await).await;
}

/// Two stores on one database, each with its own pool: two workers on two machines.
async fn two_workers() -> (Store, Store) {
    let url = testpg::fresh_database().await;
    let target = StoreTarget::Postgres {
        url,
        password: None,
    };
    let a = Store::open_target(&target, true).await.expect("open a");
    let b = Store::open_target(&target, true).await.expect("open b");
    (a, b)
}

#[tokio::test]
async fn postgres_workers_claiming_at_once_never_pass_the_in_flight_cap() {
    let (a, b) = two_workers().await;
    let jobs: Vec<NewJob> = (0..60).map(|_| job("m")).collect();
    a.enqueue(jobs).await.expect("enqueue");
    // Sixteen claims of up to 3 at once against a cap of 7, half from each worker. Without
    // the advisory lock each would count the same in-flight number and claim past the cap.
    let claims = (0..16).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            s.claim_for_submit_tier(
                "m",
                Tier::Default,
                7,
                ResolutionScope::All,
                3,
                &format!("w{i}"),
                crate::tests::LEASE,
            )
            .await
            .expect("claim")
        }
    });
    let got: Vec<Job> = futures::future::join_all(claims)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(got.len(), 7, "exactly the cap is claimed");
    let distinct: HashSet<&JobId> = got.iter().map(|j| &j.id).collect();
    assert_eq!(distinct.len(), 7, "no job claimed twice");
    assert_eq!(
        b.in_flight_tier("m", Tier::Default).await.expect("count"),
        7
    );
}

#[tokio::test]
async fn postgres_pollers_on_two_workers_take_different_jobs() {
    let (a, b) = two_workers().await;
    let jobs: Vec<NewJob> = (0..40).map(|_| job("m")).collect();
    a.enqueue(jobs).await.expect("enqueue");
    let claimed = a
        .claim_for_submit_tier(
            "m",
            Tier::Default,
            100,
            ResolutionScope::All,
            100,
            "w",
            crate::tests::LEASE,
        )
        .await
        .expect("claim");
    let batch = claimed
        .iter()
        .map(|j| Transition {
            id: j.id.clone(),
            from: JobState::Submitting,
            token: j.lease_token,
            to: JobState::Submitted,
            patch: Patch::new().set("next_attempt_at", 0i64),
            detail: None,
        })
        .collect();
    assert!(
        a.transition_many(batch)
            .await
            .expect("submitted")
            .iter()
            .all(Result::is_ok)
    );
    let polls = (0..8).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            s.claim_due_lean(
                JobState::Submitted,
                &format!("p{i}"),
                crate::tests::LEASE,
                7,
            )
            .await
            .expect("claim due")
        }
    });
    let got: Vec<Job> = futures::future::join_all(polls)
        .await
        .into_iter()
        .flatten()
        .collect();
    let distinct: HashSet<&JobId> = got.iter().map(|j| &j.id).collect();
    assert_eq!(distinct.len(), got.len(), "no job polled by two workers");
    assert_eq!(got.len(), 40, "every due job was taken");
}

#[tokio::test]
async fn postgres_cancels_racing_claims_never_lose_either() {
    let (a, b) = two_workers().await;
    let jobs: Vec<NewJob> = (0..30).map(|_| job("m")).collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
    a.enqueue(jobs).await.expect("enqueue");
    // Users cancel every job on one worker while the other claims them for submit.
    let cancels = ids.iter().map(|id| {
        let a = a.clone();
        async move { (id.clone(), a.cancel(id.as_str()).await.expect("cancel")) }
    });
    let claims = (0..6).map(|i| {
        let b = b.clone();
        async move {
            b.claim_for_submit_tier(
                "m",
                Tier::Default,
                100,
                ResolutionScope::All,
                5,
                &format!("w{i}"),
                crate::tests::LEASE,
            )
            .await
            .expect("claim")
        }
    });
    let (outcomes, claimed) = tokio::join!(
        futures::future::join_all(cancels),
        futures::future::join_all(claims)
    );
    let claimed: HashSet<JobId> = claimed.into_iter().flatten().map(|j| j.id).collect();
    for (id, outcome) in outcomes {
        let j = b.job(id.as_str()).await.expect("get").expect("exists");
        match outcome {
            // Cancelled locally: no worker may have it.
            CancelOutcome::Cancelled => {
                assert_eq!(j.state, JobState::Cancelled, "{id}");
                assert!(!claimed.contains(&id), "{id} cancelled and claimed");
            }
            // Claimed first: the worker is told to cancel it at Ark.
            CancelOutcome::Requested => {
                assert!(claimed.contains(&id), "{id}");
                assert_eq!(j.state, JobState::Submitting, "{id}");
                assert!(j.cancel_requested, "{id}");
            }
            other => panic!("{id}: {other:?}"),
        }
    }
}

/// `SEEDQ_TEST_PG=postgres://seedq@127.0.0.1:55432 cargo test --lib
/// store::tests_jobs::enqueue_100k -- --ignored --nocapture`: the time to enqueue 100 000
/// jobs in one call (one transaction) on PostgreSQL, and on SQLite for comparison.
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn enqueue_100k() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let jobs: Vec<NewJob> = (0..100_000)
            .map(|i| {
                let mut j = NewJob::plain(format!(
                    r#"{{"model":"m","content":[{{"type":"text","text":"a fox number {i}"}}]}}"#
                ));
                j.key = Some(format!("k{i}"));
                j.tags = vec!["bench".into()];
                j.batch = Some("b".into());
                j
            })
            .collect();
        let t = std::time::Instant::now();
        let r = s.enqueue(jobs).await.expect("enqueue");
        let took = t.elapsed();
        assert_eq!(r.inserted.len(), 100_000, "{name}");
        println!(
            "{name}: enqueue of 100000 jobs in {:.2} s ({:.0} jobs/s)",
            took.as_secs_f64(),
            100_000.0 / took.as_secs_f64()
        );
        // 100 000 jobs are ~100 MB on the server: drop the database rather than leave it.
        if let Some(pg) = s.pg() {
            let db: String = pg
                .conn()
                .await
                .expect("conn")
                .query_one("SELECT current_database()", &[])
                .await
                .expect("current_database")
                .get(0);
            drop(s);
            let (client, conn) = tokio_postgres::connect(
                &format!("{}/postgres", testpg::server()),
                tokio_postgres::NoTls,
            )
            .await
            .expect("connect");
            tokio::spawn(conn);
            // The name is the test's own (digits and underscores).
            client
                .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
                .await
                .expect("drop the bench database");
        }
    }
}

/// A job with every column an enqueue sets, and an embedded image.
fn full_job(n: usize) -> NewJob {
    let img = format!("data:image/png;base64,{}", "QUJD".repeat(10));
    let mut j = NewJob::plain(format!(
        r#"{{"model":"m","content":[{{"type":"text","text":"fox {n} it's \"quoted\"\ttab"}},{{"type":"image_url","image_url":{{"url":"{img}"}}}}]}}"#
    ));
    j.flex = n.is_multiple_of(2);
    j.priority = i64::try_from(n % 5).expect("small");
    j.tags = vec!["a".into(), format!("t{n}")];
    j.batch = Some(format!("b{}", n % 3));
    j.shape = Some("720p/5s".into());
    j.est_tokens = Some(100);
    j.expires_after = Some(3600);
    j.seed = Some(i64::try_from(n).expect("small"));
    j
}

/// The columns a test can compare between two enqueues of the same job.
fn stored(j: &Job) -> String {
    format!(
        "{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{}|{}",
        j.state.as_str(),
        j.model,
        j.service_tier,
        j.priority,
        j.tags,
        j.batch_id,
        j.shape,
        j.est_tokens,
        j.seed,
        j.request_json,
        j.deadline_at.map(|d| d.ms() - j.created_at.ms()),
        j.next_attempt_at.ms() - j.created_at.ms(),
        j.callback_token.as_ref().map_or(0, String::len),
    )
}

/// A large enqueue (PostgreSQL streams it with `COPY`) stores the same rows, events, images
/// and counts as a small one, skips keys already stored and repeated within the call, and
/// keeps the counters equal to a recount.
#[tokio::test]
async fn a_large_enqueue_stores_what_a_small_one_does_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut small = full_job(1);
        small.key = Some("k-old".into());
        s.enqueue(vec![small.clone()]).await.expect("small");

        let mut many: Vec<NewJob> = (0..1500).map(full_job).collect();
        many[10].key = Some("k-old".into());
        many[20].key = Some("k-new".into());
        many[30].key = Some("k-new".into());
        let r = s.enqueue(many.clone()).await.expect("large");
        assert_eq!(r.inserted.len(), 1498, "{name}");
        let skipped: HashSet<(String, String)> = r
            .skipped
            .iter()
            .map(|(k, id)| (k.clone(), id.as_str().to_string()))
            .collect();
        let want: HashSet<(String, String)> = [
            ("k-old".to_string(), small.id.as_str().to_string()),
            ("k-new".to_string(), many[20].id.as_str().to_string()),
        ]
        .into();
        assert_eq!(skipped, want, "{name}");
        assert_eq!(
            r.inserted.iter().map(JobId::as_str).collect::<Vec<_>>(),
            many.iter()
                .enumerate()
                .filter(|(i, _)| *i != 10 && *i != 30)
                .map(|(_, j)| j.id.as_str())
                .collect::<Vec<_>>(),
            "{name}: inserted in file order"
        );

        let a = s.job(small.id.as_str()).await.expect("job").expect("row");
        let b = s.job(many[1].id.as_str()).await.expect("job").expect("row");
        assert_eq!(stored(&a), stored(&b), "{name}");
        assert_ne!(
            a.request_json, small.request_json,
            "{name}: the image is a reference"
        );
        assert_eq!(
            s.inflate_body(b.request_json.clone())
                .await
                .expect("inflate"),
            many[1].request_json,
            "{name}: the image is stored"
        );
        assert_eq!(s.image_count().await.expect("images"), 1, "{name}");
        for id in [&many[1].id, &many[1499].id, &small.id] {
            let ev = s.events(id.as_str()).await.expect("events");
            assert_eq!(ev.len(), 1, "{name}");
            assert_eq!(
                (ev[0].from_state.as_deref(), ev[0].to_state.as_str()),
                (None, "queued")
            );
            assert_eq!(ev[0].detail.as_deref(), Some("enqueued"), "{name}");
        }
        assert!(s.job(many[30].id.as_str()).await.expect("job").is_none());
        assert!(s.events(many[30].id.as_str()).await.expect("ev").is_empty());
        let queued: i64 = s
            .stats()
            .await
            .expect("stats")
            .iter()
            .filter(|r| r.state == JobState::Queued)
            .map(|r| r.jobs)
            .sum();
        assert_eq!(queued, 1499, "{name}");
        assert!(
            s.check_counters(false).await.expect("check").is_empty(),
            "{name}"
        );
    }
}
