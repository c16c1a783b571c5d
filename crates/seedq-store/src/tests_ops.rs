//! The operational store methods (scheduling reads, leases, pausing) run on both backends: each test's body runs on a SQLite file and on a fresh
//! PostgreSQL database, with the backend's name in every assertion message.
//!
//! Jobs are set up with plain SQL that reads the same in both dialects ([`add`], [`exec`]),
//! not through `enqueue`, so these tests are about the methods under test only.

use super::*;

/// Runs SQL that both dialects accept (test set-up only).
pub(crate) async fn exec(s: &Store, sql: &str) {
    if let Some(pg) = s.pg() {
        let c = pg.conn().await.expect("connection");
        c.batch_execute(sql).await.expect(sql);
        return;
    }
    let owned = sql.to_string();
    s.call(move |c| Ok(c.execute_batch(&owned)?))
        .await
        .expect(sql);
}

/// One job to [`add`]: what the tests vary. `cols` are more `column = value` pairs (SQL
/// literals) set after the insert.
pub(crate) struct Seed<'a> {
    pub model: &'a str,
    pub tier: Tier,
    pub state: &'a str,
    pub est_tokens: i64,
    pub batch: Option<&'a str>,
    pub cols: &'a str,
}

impl Default for Seed<'_> {
    fn default() -> Self {
        Self {
            model: "m",
            tier: Tier::Default,
            state: "queued",
            est_tokens: 100,
            batch: None,
            cols: "",
        }
    }
}

/// Inserts a job with an `enqueued` event, as `enqueue` would, then applies `seed.cols`.
pub(crate) async fn add(s: &Store, seed: Seed<'_>) -> JobId {
    let id = JobId::generate();
    let now = now_ms();
    let batch = seed.batch.map_or("NULL".to_string(), |b| format!("'{b}'"));
    let mut sql = format!(
        "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, priority, \
         request_json, tags, batch_id, est_tokens, next_attempt_at) VALUES \
         ('{id}', {now}, {now}, '{state}', '{model}', '{tier}', 0, '{{}}', '[]', {batch}, {est}, {now}); \
         INSERT INTO job_events (job_id, at, from_state, to_state, detail) \
         VALUES ('{id}', {now}, NULL, 'queued', 'enqueued');",
        id = id.as_str(),
        state = seed.state,
        model = seed.model,
        tier = seed.tier,
        est = seed.est_tokens,
    );
    if !seed.cols.is_empty() {
        sql.push_str(&format!(
            "UPDATE jobs SET {} WHERE id = '{}';",
            seed.cols,
            id.as_str()
        ));
    }
    exec(s, &sql).await;
    id
}

async fn job(s: &Store, id: &JobId) -> Job {
    s.job(id.as_str())
        .await
        .expect("job")
        .expect("the job exists")
}

#[tokio::test]
async fn scheduling_reads_count_the_same_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let now = now_ms();
        assert!(
            s.queued_models().await.expect("models").is_empty(),
            "{name}"
        );
        assert_eq!(
            s.next_due(&[JobState::Queued]).await.expect("due"),
            None,
            "{name}"
        );
        let first = add(
            &s,
            Seed {
                model: "m2",
                cols: &format!("next_attempt_at = {}", now - 5_000),
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "m1",
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "m1",
                tier: Tier::Flex,
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "m1",
                state: "submitting",
                cols: &format!("submit_started_at = {now}, next_attempt_at = {now}"),
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "m3",
                state: "submitted",
                cols: &format!("submit_started_at = {now}"),
                ..Seed::default()
            },
        )
        .await;
        // A flex create: no RPM, so `creates_since` leaves it out; its tokens count for TPD.
        add(
            &s,
            Seed {
                model: "m3",
                tier: Tier::Flex,
                state: "submitted",
                est_tokens: 70,
                cols: &format!("submit_started_at = {now}, submitted_at = {now}"),
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "m3",
                tier: Tier::Flex,
                state: "succeeded",
                est_tokens: 70,
                cols: &format!("submitted_at = {now}, usage_tokens = 30"),
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "m3",
                tier: Tier::Flex,
                state: "succeeded",
                cols: &format!("submitted_at = {}", now - 100_000),
                ..Seed::default()
            },
        )
        .await;
        // A parked submit holds no slot; an unparked unknown one does.
        add(
            &s,
            Seed {
                model: "m2",
                state: "submit_unknown",
                cols: &format!(
                    "last_error_code = 'parked', next_attempt_at = {}",
                    now - 9_000
                ),
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "m2",
                state: "submit_unknown",
                ..Seed::default()
            },
        )
        .await;

        let mut models = s.queued_models().await.expect("models");
        models.sort();
        assert_eq!(models, ["m1", "m2"], "{name}");
        let inflight = s.in_flight().await.expect("in flight");
        let want: HashMap<String, i64> =
            [("m1".into(), 1), ("m2".into(), 1), ("m3".into(), 2)].into();
        assert_eq!(inflight, want, "{name}");
        let counts = s.state_counts().await.expect("counts");
        assert_eq!(counts[&JobState::Queued], 3, "{name}");
        assert_eq!(counts[&JobState::SubmitUnknown], 2, "{name}");
        assert_eq!(counts[&JobState::Succeeded], 2, "{name}");
        assert_eq!(counts.values().sum::<i64>(), 10, "{name}");
        assert_eq!(
            s.next_due(&[JobState::Queued]).await.expect("due"),
            Some(job(&s, &first).await.next_attempt_at),
            "{name}"
        );
        assert_eq!(
            s.next_due(&[JobState::Archiving]).await.expect("due"),
            None,
            "{name}"
        );
        // Several states: the earliest of them all.
        let reconcile = &[JobState::Submitting, JobState::SubmitUnknown];
        assert_eq!(
            s.next_due(reconcile).await.expect("due"),
            Some(crate::Timestamp::from_ms(now - 9_000)),
            "{name}"
        );
        let some_empty = &[JobState::Archiving, JobState::Submitting];
        assert_eq!(
            s.next_due(some_empty).await.expect("due"),
            Some(crate::Timestamp::from_ms(now)),
            "{name}"
        );
        let mut creates = s
            .creates_since(crate::Timestamp::from_ms(now - 1_000))
            .await
            .expect("creates");
        creates.sort();
        assert_eq!(
            creates,
            [("m1".to_string(), now), ("m3".to_string(), now)],
            "{name}"
        );
        // Billed tokens where known (30), else the estimate (70); yesterday's job not at all.
        assert_eq!(
            s.flex_tokens_since("m3", crate::Timestamp::from_ms(now - 1_000))
                .await
                .expect("tpd"),
            100,
            "{name}"
        );
        assert_eq!(
            s.flex_tokens_since("m1", crate::Timestamp::from_ms(now - 1_000))
                .await
                .expect("tpd"),
            0,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_dead_workers_leases_come_back_and_run_out_ones_are_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let now = now_ms();
        let later = now + 600_000;
        let live = |state| {
            format!(
                "lease_owner = 'w1', lease_until = {later}, next_attempt_at = {later}, lease_token = 3, state = '{state}'"
            )
        };
        let submitting = add(
            &s,
            Seed {
                cols: &live("submitting"),
                ..Seed::default()
            },
        )
        .await;
        let submitted = add(
            &s,
            Seed {
                cols: &live("submitted"),
                ..Seed::default()
            },
        )
        .await;
        let ran_out = add(&s, Seed { state: "submitted", cols: &format!("lease_owner = 'w2', lease_until = {}, next_attempt_at = {later}, lease_token = 5", now - 1_000), ..Seed::default() }).await;
        let ran_out_submit = add(
            &s,
            Seed {
                state: "submitting",
                cols: &format!(
                    "lease_owner = 'w2', lease_until = {}, next_attempt_at = {later}",
                    now - 1_000
                ),
                ..Seed::default()
            },
        )
        .await;

        assert_eq!(
            s.live_lease_owners().await.expect("owners"),
            ["w1"],
            "{name}"
        );
        assert_eq!(
            s.release_leases_of("w1").await.expect("release"),
            2,
            "{name}"
        );
        assert!(
            s.live_lease_owners().await.expect("owners").is_empty(),
            "{name}"
        );
        let j = job(&s, &submitting).await;
        assert_eq!(j.last_error_code.as_deref(), Some("holder_dead"), "{name}");
        assert!(
            j.next_attempt_at <= crate::Timestamp::now()
                && j.lease_until <= Some(crate::Timestamp::now()),
            "{name}"
        );
        // The token is untouched: the reconciler takes the job over by it.
        assert_eq!(j.lease_token, 3, "{name}");
        let j = job(&s, &submitted).await;
        assert_eq!(j.last_error_code, None, "{name}");
        assert!(j.next_attempt_at <= crate::Timestamp::now(), "{name}");
        assert_eq!(s.release_leases_of("w1").await.expect("again"), 0, "{name}");

        // The sweep: polls whose lease ran out lose it (and its holder is fenced off);
        // interrupted submits are the reconciler's.
        let released = s.release_expired_leases().await.expect("sweep");
        let j = job(&s, &ran_out).await;
        assert!(released >= 1, "{name}: {released}");
        assert_eq!(
            (j.lease_owner, j.lease_until, j.lease_token),
            (None, None, 6),
            "{name}"
        );
        assert!(j.next_attempt_at <= crate::Timestamp::now(), "{name}");
        let j = job(&s, &ran_out_submit).await;
        assert_eq!(j.lease_owner.as_deref(), Some("w2"), "{name}");
        assert_eq!(j.next_attempt_at.ms(), later, "{name}");
    }
}

#[tokio::test]
async fn only_late_queued_flex_jobs_expire_each_with_its_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let past = format!("deadline_at = {}", now_ms() - 1);
        let late = add(
            &s,
            Seed {
                tier: Tier::Flex,
                cols: &past,
                ..Seed::default()
            },
        )
        .await;
        let early = add(
            &s,
            Seed {
                tier: Tier::Flex,
                cols: &format!("deadline_at = {}", now_ms() + 60_000),
                ..Seed::default()
            },
        )
        .await;
        let gone = add(
            &s,
            Seed {
                tier: Tier::Flex,
                state: "submitted",
                cols: &past,
                ..Seed::default()
            },
        )
        .await;
        assert_eq!(
            s.expire_overdue().await.expect("expire"),
            std::slice::from_ref(&late),
            "{name}"
        );
        assert!(
            s.expire_overdue().await.expect("again").is_empty(),
            "{name}"
        );
        let j = job(&s, &late).await;
        assert_eq!(j.state, JobState::Expired, "{name}");
        assert_eq!(
            j.last_error_code.as_deref(),
            Some("deadline_passed"),
            "{name}"
        );
        assert!(j.finished_at.is_some(), "{name}");
        let events = s.events(late.as_str()).await.expect("events");
        let last = events.last().expect("an event");
        assert_eq!(
            (last.from_state.as_deref(), last.to_state.as_str()),
            (Some("queued"), "expired"),
            "{name}"
        );
        assert_eq!(job(&s, &early).await.state, JobState::Queued, "{name}");
        assert_eq!(job(&s, &gone).await.state, JobState::Submitted, "{name}");
    }
}

#[tokio::test]
async fn generation_time_is_the_median_of_the_same_model_tier_and_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        for (i, (shape, ms)) in [
            ("'720p'", 10),
            ("'720p'", 30),
            ("'720p'", 20),
            ("NULL", 99),
            ("'1080p'", 7),
        ]
        .into_iter()
        .enumerate()
        {
            add(
                &s,
                Seed {
                    state: "succeeded",
                    cols: &format!("shape = {shape}, gen_ms = {ms}, finished_at = {i}"),
                    ..Seed::default()
                },
            )
            .await;
        }
        let g = |shape: Option<&'static str>, n| {
            let s = s.clone();
            async move {
                s.recent_generation_ms("m", Tier::Default, shape, n)
                    .await
                    .expect("gen")
            }
        };
        assert_eq!(g(Some("720p"), 10).await, Some(20), "{name}");
        // The last two finished: 30 and 20, median index 1 of [20, 30].
        assert_eq!(g(Some("720p"), 2).await, Some(30), "{name}");
        assert_eq!(
            g(None, 10).await,
            Some(99),
            "{name}: a NULL shape matches NULL"
        );
        assert_eq!(g(Some("480p"), 10).await, None, "{name}");
        assert_eq!(
            s.recent_generation_ms("m", Tier::Flex, Some("720p"), 10)
                .await
                .expect("gen"),
            None,
            "{name}"
        );
    }
}

#[tokio::test]
async fn leftovers_and_pending_work_skip_what_waits_for_an_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let now = now_ms();
        let old = format!("updated_at = {}", now - 86_400_000);
        let parked = add(
            &s,
            Seed {
                state: "submit_unknown",
                cols: &format!("last_error_code = 'parked', {old}"),
                ..Seed::default()
            },
        )
        .await;
        let failed = add(
            &s,
            Seed {
                state: "failed",
                cols: "last_error_code = 'x', last_error_message = 'why'",
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                state: "failed",
                cols: &old,
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                state: "succeeded",
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                state: "cancelled",
                ..Seed::default()
            },
        )
        .await;
        // By state, then id.
        let want = vec![
            (
                failed.to_string(),
                "failed".to_string(),
                Some("x".to_string()),
                Some("why".to_string()),
            ),
            (
                parked.to_string(),
                "submit_unknown".to_string(),
                Some("parked".to_string()),
                None,
            ),
        ];
        assert_eq!(
            s.leftovers(crate::Timestamp::from_ms(now - 1_000))
                .await
                .expect("leftovers"),
            want,
            "{name}"
        );

        // Pending: the succeeded job only when archiving; nothing parked.
        assert_eq!(s.pending_work(false).await.expect("pending"), 0, "{name}");
        assert_eq!(s.pending_work(true).await.expect("pending"), 1, "{name}");
        add(&s, Seed { ..Seed::default() }).await;
        add(
            &s,
            Seed {
                state: "submitted",
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                state: "submit_unknown",
                ..Seed::default()
            },
        )
        .await;
        assert_eq!(s.pending_work(false).await.expect("pending"), 3, "{name}");
        // Waiting for a batch cap to be raised, or on a paused model: an operator's call.
        add(
            &s,
            Seed {
                cols: &format!(
                    "last_error_code = 'budget_batch', next_attempt_at = {}",
                    now + 60_000
                ),
                ..Seed::default()
            },
        )
        .await;
        add(
            &s,
            Seed {
                model: "held",
                ..Seed::default()
            },
        )
        .await;
        assert_eq!(s.pending_work(false).await.expect("pending"), 4, "{name}");
        s.pause(PauseKind::Model, "held").await.expect("pause");
        assert_eq!(s.pending_work(false).await.expect("pending"), 3, "{name}");
        // A daily-cap waiter comes back by itself at midnight: it is pending.
        add(
            &s,
            Seed {
                cols: &format!(
                    "last_error_code = 'budget_daily', next_attempt_at = {}",
                    now + 60_000
                ),
                ..Seed::default()
            },
        )
        .await;
        assert_eq!(s.pending_work(false).await.expect("pending"), 4, "{name}");
    }
}

#[tokio::test]
async fn pause_and_resume_models_and_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        assert!(s.paused().await.expect("paused").is_empty(), "{name}");
        assert!(
            s.pause(PauseKind::Model, "m").await.expect("pause"),
            "{name}"
        );
        let at = s.paused_at(PauseKind::Model, "m").await.expect("at");
        assert!(at.is_some(), "{name}");
        assert!(
            !s.pause(PauseKind::Model, "m").await.expect("again"),
            "{name}: already paused"
        );
        assert_eq!(
            s.paused_at(PauseKind::Model, "m").await.expect("at"),
            at,
            "{name}: unchanged"
        );
        assert!(
            s.pause(PauseKind::Batch, "Zb").await.expect("pause"),
            "{name}"
        );
        assert!(
            s.pause(PauseKind::Batch, "m").await.expect("pause"),
            "{name}: kinds apart"
        );
        assert!(
            s.pause(PauseKind::Batch, "ab").await.expect("pause"),
            "{name}"
        );
        let listed: Vec<(String, String)> = s
            .paused()
            .await
            .expect("paused")
            .into_iter()
            .map(|p| (p.kind, p.name))
            .collect();
        let pair = |k: &str, n: &str| (k.to_string(), n.to_string());
        // Byte order, as SQLite sorts: "Zb" before "ab".
        assert_eq!(
            listed,
            [
                pair("batch", "Zb"),
                pair("batch", "ab"),
                pair("batch", "m"),
                pair("model", "m")
            ],
            "{name}"
        );
        assert!(
            s.resume(PauseKind::Model, "m").await.expect("resume"),
            "{name}"
        );
        assert!(
            !s.resume(PauseKind::Model, "m").await.expect("again"),
            "{name}: not paused"
        );
        assert_eq!(
            s.paused_at(PauseKind::Model, "m").await.expect("at"),
            None,
            "{name}"
        );
        assert!(
            s.paused_at(PauseKind::Batch, "m")
                .await
                .expect("at")
                .is_some(),
            "{name}"
        );
    }
}
