//! The archiver's and the bulk queries on both backends: every method of
//! `store/archive.rs` and `store/bulk.rs`, run on a SQLite file and on a fresh PostgreSQL
//! database with the same assertions, so the two bodies cannot drift apart.
//!
//! The jobs are written as rows (the same SQL text on both backends) rather than walked
//! through enqueue, claim and transition: what is under test here is the archive and bulk
//! queries over given rows, and the rows can then be in any state and shape at once.

use super::*;
use crate::archive::{ArchiveStats, RESULT_EXPIRED};

/// Runs test-only SQL (written in the dialect both backends share) on either backend.
async fn exec(s: &Store, sql: String) {
    if let Some(pg) = s.pg() {
        pg.conn()
            .await
            .expect("pg conn")
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    } else {
        s.call(move |c| {
            c.execute_batch(&sql)?;
            Ok(())
        })
        .await
        .expect("sqlite exec");
    }
}

/// One job row; the defaults are a queued default-tier job of model `m`.
#[derive(Clone)]
struct Row {
    id: String,
    state: &'static str,
    model: &'static str,
    tier: Tier,
    priority: i64,
    created_at: i64,
    batch: Option<&'static str>,
    chain: Option<(&'static str, i64)>,
    next_attempt_at: i64,
    url_expires_at: Option<i64>,
    lease_until: Option<i64>,
    lease_token: i64,
    est_tokens: Option<i64>,
    usage_tokens: Option<i64>,
    gen_ms: Option<i64>,
    submitted_at: Option<i64>,
    finished_at: Option<i64>,
    deadline_at: Option<i64>,
    shape: Option<&'static str>,
    error_code: Option<&'static str>,
    cancel_requested: i64,
    archive_size: Option<i64>,
    archive_attempts: i64,
    remote_task_id: Option<String>,
}

impl Row {
    fn new(state: &'static str) -> Self {
        Self {
            id: JobId::generate().as_str().to_string(),
            state,
            model: "m",
            tier: Tier::Default,
            priority: 0,
            created_at: 1_000,
            batch: None,
            chain: None,
            next_attempt_at: 0,
            url_expires_at: None,
            lease_until: None,
            lease_token: 0,
            est_tokens: None,
            usage_tokens: None,
            gen_ms: None,
            submitted_at: None,
            finished_at: None,
            deadline_at: None,
            shape: None,
            error_code: None,
            cancel_requested: 0,
            archive_size: None,
            archive_attempts: 0,
            remote_task_id: None,
        }
    }
}

fn int(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".into(), |v| v.to_string())
}

fn text(v: Option<&str>) -> String {
    v.map_or_else(|| "NULL".into(), |v| format!("'{}'", v.replace('\'', "''")))
}

/// Inserts the rows; returns their ids in order.
async fn seed(s: &Store, rows: &[Row]) -> Vec<JobId> {
    for r in rows {
        exec(
            s,
            format!(
                "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
                 priority, request_json, batch_id, chain_id, shot, next_attempt_at, \
                 url_expires_at, lease_until, lease_token, est_tokens, usage_tokens, gen_ms, \
                 submitted_at, finished_at, deadline_at, shape, last_error_code, \
                 cancel_requested, archive_size, archive_attempts, remote_task_id, video_url) \
                 VALUES ('{id}', {c}, {c}, '{st}', '{m}', '{t}', {p}, '{{\"model\":\"{m}\"}}', \
                 {b}, {ch}, {shot}, {n}, {ue}, {lu}, {lt}, {et}, {ut}, {g}, {sa}, {fa}, {d}, \
                 {sh}, {ec}, {cr}, {asz}, {aa}, {rt}, 'https://v/{id}.mp4')",
                id = r.id,
                c = r.created_at,
                st = r.state,
                m = r.model,
                t = r.tier,
                p = r.priority,
                b = text(r.batch),
                ch = text(r.chain.map(|c| c.0)),
                shot = int(r.chain.map(|c| c.1)),
                n = r.next_attempt_at,
                ue = int(r.url_expires_at),
                lu = int(r.lease_until),
                lt = r.lease_token,
                et = int(r.est_tokens),
                ut = int(r.usage_tokens),
                g = int(r.gen_ms),
                sa = int(r.submitted_at),
                fa = int(r.finished_at),
                d = int(r.deadline_at),
                sh = text(r.shape),
                ec = text(r.error_code),
                cr = r.cancel_requested,
                asz = int(r.archive_size),
                aa = r.archive_attempts,
                rt = text(r.remote_task_id.as_deref()),
            ),
        )
        .await;
    }
    rows.iter().map(|r| JobId::from(r.id.clone())).collect()
}

async fn get(s: &Store, id: &JobId) -> Job {
    s.job(id.as_str()).await.expect("job").expect("exists")
}

/// The (from, to, detail) of a job's events, oldest first.
async fn trail(s: &Store, id: &JobId) -> Vec<(Option<String>, String, Option<String>)> {
    s.events(id.as_str())
        .await
        .expect("events")
        .into_iter()
        .map(|e| (e.from_state, e.to_state, e.detail))
        .collect()
}

fn ev(from: &str, to: &str, detail: &str) -> (Option<String>, String, Option<String>) {
    (Some(from.into()), to.into(), Some(detail.into()))
}

#[tokio::test]
async fn archive_claims_in_deadline_order_fenced_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let now = now_ms();
        let late = Row {
            url_expires_at: Some(now + 3_600_000),
            ..Row::new("succeeded")
        };
        let none = Row::new("succeeded");
        let soon = Row {
            url_expires_at: Some(now + 60_000),
            ..Row::new("succeeded")
        };
        // Not due yet, and not archivable at all: never claimed.
        let backing_off = Row {
            next_attempt_at: now + 3_600_000,
            url_expires_at: Some(now),
            ..Row::new("succeeded")
        };
        let queued = Row::new("queued");
        let ids = seed(&s, &[late, none, soon, backing_off.clone(), queued]).await;
        let (late, none, soon) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

        let mut order = Vec::new();
        while let Some(c) = s
            .claim_for_archive("w", crate::tests::LEASE)
            .await
            .expect("claim")
        {
            assert_eq!(c.job.state, JobState::Archiving, "{name}");
            assert_eq!(c.attempts, 1, "{name}");
            assert_eq!(c.job.lease_token, 1, "{name}: a fresh token");
            assert_eq!(c.job.lease_owner.as_deref(), Some("w"), "{name}");
            assert!(c.frame.is_none(), "{name}");
            order.push(c.job.id);
        }
        assert_eq!(order, vec![soon.clone(), late, none], "{name}");
        assert_eq!(
            trail(&s, &soon).await,
            vec![ev("succeeded", "archiving", "claimed for archive")],
            "{name}"
        );
        // The earliest lease end is what comes due next (the backing-off job is later).
        let due = s.next_archive_due().await.expect("due").expect("some");
        assert!(
            (now + 60_000..now + 120_000).contains(&due.ms()),
            "{name}: {due:?}"
        );

        // A holder that vanished: its lease lapses and the job is claimed again, fencing it.
        let dead = get(&s, &soon).await;
        exec(
            &s,
            format!("UPDATE jobs SET lease_until = 0 WHERE id = '{soon}'"),
        )
        .await;
        assert_eq!(
            s.next_archive_due().await.expect("due"),
            Some(crate::Timestamp::EPOCH),
            "{name}"
        );
        let again = s
            .claim_for_archive("w2", crate::tests::LEASE)
            .await
            .expect("claim")
            .expect("reclaimed");
        assert_eq!((again.job.id.clone(), again.attempts), (soon.clone(), 2));
        assert_eq!(again.job.lease_owner.as_deref(), Some("w2"), "{name}");
        assert_eq!(
            trail(&s, &soon).await.last(),
            Some(&ev(
                "archiving",
                "archiving",
                "lease ran out; claimed again for archive"
            )),
            "{name}"
        );
        let old = dead.lease_token;
        let stale = s
            .record_video_digest(&soon, old, "k".into(), "s".into(), 1)
            .await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{name}: {stale:?}"
        );
        let stale = s.record_frame_digest(&soon, old, "s".into(), 1).await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{name}: {stale:?}"
        );
        let stale = s
            .record_archive_urls(
                &soon,
                old,
                "https://x".into(),
                None,
                crate::Timestamp::from_ms(1),
            )
            .await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{name}: {stale:?}"
        );
        assert!(
            !s.extend_archive_lease(&soon, old, std::time::Duration::from_millis(1))
                .await
                .expect("extend"),
            "{name}"
        );

        let t = again.job.lease_token;
        assert!(
            s.extend_archive_lease(&soon, t, std::time::Duration::from_millis(600_000))
                .await
                .expect("extend"),
            "{name}"
        );
        let j = get(&s, &soon).await;
        assert!(
            j.lease_until.expect("lease").ms() >= now + 600_000,
            "{name}"
        );
        assert_eq!(j.lease_token, t, "{name}: extending keeps the token");
        s.record_video_digest(&soon, t, "k/v.mp4".into(), "abc".into(), 3)
            .await
            .expect("digest");
        s.record_frame_digest(&soon, t, "def".into(), 4)
            .await
            .expect("frame");
        s.record_archive_urls(
            &soon,
            t,
            "https://new/v.mp4".into(),
            Some("https://new/f.png".into()),
            crate::Timestamp::from_ms(now + 1),
        )
        .await
        .expect("urls");
        // No new frame URL: the old one stays.
        s.record_archive_urls(
            &soon,
            t,
            "https://newer/v.mp4".into(),
            None,
            crate::Timestamp::from_ms(now + 2),
        )
        .await
        .expect("urls");
        let j = get(&s, &soon).await;
        assert_eq!(
            j.video_url.as_deref(),
            Some("https://newer/v.mp4"),
            "{name}"
        );
        assert_eq!(
            j.last_frame_url.as_deref(),
            Some("https://new/f.png"),
            "{name}"
        );
        assert_eq!(
            j.url_expires_at.map(crate::Timestamp::ms),
            Some(now + 2),
            "{name}"
        );
        assert_eq!(
            (j.archive_key.as_deref(), j.archive_sha256.as_deref()),
            (Some("k/v.mp4"), Some("abc")),
            "{name}"
        );
        assert_eq!(j.archive_size, Some(3), "{name}");
        assert_eq!(
            s.frame_digest(soon.as_str()).await.expect("frame"),
            Some(("def".to_string(), 4)),
            "{name}"
        );
        assert_eq!(
            s.frame_digest(ids[0].as_str()).await.expect("frame"),
            None,
            "{name}"
        );
        assert_eq!(s.frame_digest("nope").await.expect("frame"), None);

        // Back to succeeded for a later retry: the recorded frame digest rides along.
        exec(
            &s,
            format!(
                "UPDATE jobs SET state = 'succeeded', next_attempt_at = 0, lease_until = NULL \
                 WHERE id = '{soon}'"
            ),
        )
        .await;
        let c = s
            .claim_for_archive("w", crate::tests::LEASE)
            .await
            .expect("claim")
            .expect("due");
        assert_eq!(c.job.id, soon, "{name}");
        assert_eq!(c.attempts, 3, "{name}");
        assert_eq!(c.frame, Some(("def".to_string(), 4)), "{name}");
        assert_eq!(c.job.archive_sha256.as_deref(), Some("abc"), "{name}");
        assert!(
            s.claim_for_archive("w", crate::tests::LEASE)
                .await
                .expect("claim")
                .is_none(),
            "{name}: {} backs off",
            backing_off.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_archive_claims_take_each_job_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let rows: Vec<Row> = (0..24).map(|_| Row::new("succeeded")).collect();
        let mut ids = seed(&s, &rows).await;
        // Six archivers claiming at once until the queue is dry.
        let tasks: Vec<_> = (0..6)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while let Some(c) = s
                        .claim_for_archive(&format!("w{w}"), crate::tests::LEASE)
                        .await
                        .expect("claim")
                    {
                        got.push(c.job.id);
                    }
                    got
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for t in tasks {
            claimed.extend(t.await.expect("join"));
        }
        claimed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(claimed, ids, "{name}: every job claimed exactly once");
        for id in &ids {
            assert_eq!(
                trail(&s, id).await,
                vec![ev("succeeded", "archiving", "claimed for archive")],
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn archive_stats_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        assert_eq!(
            s.archive_stats().await.expect("stats"),
            ArchiveStats::default(),
            "{name}"
        );
        assert_eq!(s.next_archive_due().await.expect("due"), None, "{name}");
        seed(
            &s,
            &[
                Row {
                    archive_size: Some(1000),
                    ..Row::new("archived")
                },
                Row {
                    archive_size: Some(24),
                    ..Row::new("archived")
                },
                Row {
                    next_attempt_at: 77,
                    ..Row::new("succeeded")
                },
                Row {
                    archive_attempts: 2,
                    next_attempt_at: 99,
                    ..Row::new("succeeded")
                },
                Row {
                    lease_until: Some(now_ms() + 60_000),
                    ..Row::new("archiving")
                },
                Row {
                    error_code: Some(RESULT_EXPIRED),
                    ..Row::new("failed")
                },
                Row {
                    error_code: Some("other"),
                    ..Row::new("failed")
                },
                // Sizes of jobs not archived do not count.
                Row {
                    archive_size: Some(5),
                    ..Row::new("succeeded")
                },
            ],
        )
        .await;
        assert_eq!(
            s.archive_stats().await.expect("stats"),
            ArchiveStats {
                archived: 2,
                archived_bytes: 1024,
                waiting: 3,
                retrying: 1,
                archiving: 1,
                result_expired: 1,
            },
            "{name}"
        );
        assert_eq!(
            s.next_archive_due().await.expect("due"),
            Some(crate::Timestamp::EPOCH),
            "{name}"
        );
    }
}

#[tokio::test]
async fn batches_are_recorded_listed_and_read_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        assert!(s.batches().await.expect("batches").is_empty(), "{name}");
        assert!(s.batch("b1").await.expect("batch").is_none(), "{name}");
        s.ensure_batches(vec![
            (
                "b1".into(),
                Some(crate::Timestamp::from_ms(5_000)),
                Some("jobs.jsonl".into()),
            ),
            ("b2".into(), None, None),
        ])
        .await
        .expect("ensure");
        // Again: no deadline keeps the old one, a deadline replaces it; the source stays.
        s.ensure_batches(vec![
            ("b1".into(), None, Some("other.jsonl".into())),
            ("b2".into(), Some(crate::Timestamp::from_ms(9_000)), None),
        ])
        .await
        .expect("ensure again");
        let b1 = s.batch("b1").await.expect("batch").expect("b1");
        assert_eq!(
            b1.deadline_at.map(crate::Timestamp::ms),
            Some(5_000),
            "{name}"
        );
        assert_eq!(b1.source.as_deref(), Some("jobs.jsonl"), "{name}");
        let b2 = s.batch("b2").await.expect("batch").expect("b2");
        assert_eq!(
            b2.deadline_at.map(crate::Timestamp::ms),
            Some(9_000),
            "{name}"
        );
        // A batch only its jobs name, older than the others: listed first.
        seed(
            &s,
            &[
                Row {
                    batch: Some("b0"),
                    created_at: 7,
                    ..Row::new("queued")
                },
                Row {
                    batch: Some("b0"),
                    created_at: 3,
                    ..Row::new("queued")
                },
                Row {
                    batch: Some("b1"),
                    ..Row::new("queued")
                },
            ],
        )
        .await;
        let b0 = s.batch("b0").await.expect("batch").expect("b0");
        assert_eq!(
            (b0.created_at.ms(), b0.deadline_at, b0.source),
            (3, None, None),
            "{name}"
        );
        let names: Vec<String> = s
            .batches()
            .await
            .expect("batches")
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["b0", "b1", "b2"], "{name}");
    }
}

#[tokio::test]
async fn the_governor_reads_queues_and_moves_flex_jobs_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        s.ensure_batches(vec![
            ("due".into(), Some(crate::Timestamp::from_ms(50_000)), None),
            ("free".into(), None, None),
        ])
        .await
        .expect("ensure");
        let later = now_ms() + 3_600_000;
        let rows = [
            // m1: flex in a batch with a deadline (governed), in claim order below.
            Row {
                model: "m1",
                tier: Tier::Flex,
                batch: Some("due"),
                priority: 1,
                est_tokens: Some(10),
                shape: Some("720p/5s"),
                next_attempt_at: later,
                deadline_at: Some(later),
                ..Row::new("queued")
            },
            Row {
                model: "m1",
                tier: Tier::Flex,
                batch: Some("due"),
                priority: 5,
                ..Row::new("queued")
            },
            Row {
                model: "m1",
                tier: Tier::Default,
                ..Row::new("queued")
            },
            // A held chain shot: not in the queue yet.
            Row {
                model: "m1",
                tier: Tier::Flex,
                batch: Some("due"),
                next_attempt_at: HELD.ms(),
                ..Row::new("queued")
            },
            // m2: flex, but its batch has no deadline; m3: flex with a deadline, submitted.
            Row {
                model: "m2",
                tier: Tier::Flex,
                batch: Some("free"),
                ..Row::new("queued")
            },
            Row {
                model: "m3",
                tier: Tier::Flex,
                batch: Some("due"),
                ..Row::new("submitted")
            },
            // m4: governed too.
            Row {
                model: "m4",
                tier: Tier::Flex,
                batch: Some("due"),
                ..Row::new("queued")
            },
        ];
        let ids = seed(&s, &rows).await;
        assert_eq!(
            s.governed_models().await.expect("governed"),
            ["m1", "m4"],
            "{name}"
        );
        let q = s.queue_of("m1").await.expect("queue");
        let got: Vec<_> = q
            .iter()
            .map(|j| (j.id.clone(), j.flex, j.tokens, j.deadline))
            .collect();
        assert_eq!(
            got,
            vec![
                (ids[1].clone(), true, 0, Some(50_000)),
                (ids[0].clone(), true, 10, Some(50_000)),
                (ids[2].clone(), false, 0, None),
            ],
            "{name}"
        );
        assert_eq!(q[1].shape.as_deref(), Some("720p/5s"), "{name}");
        assert!(s.queue_of("nope").await.expect("queue").is_empty());

        // Two moves with the right token, one stale, one of a job not flex: two move.
        let moved = s
            .to_default_tier(
                vec![
                    (
                        ids[0].clone(),
                        0,
                        r#"{"model":"m1","tier":"default"}"#.into(),
                    ),
                    (ids[1].clone(), 7, "{}".into()),
                    (ids[2].clone(), 0, "{}".into()),
                    (ids[6].clone(), 0, r#"{"b":1}"#.into()),
                ],
                "deadline at risk".into(),
            )
            .await
            .expect("move");
        assert_eq!(moved, 2, "{name}");
        let j = get(&s, &ids[0]).await;
        assert_eq!(j.service_tier, Tier::Default, "{name}");
        assert_eq!(
            j.request_json, r#"{"model":"m1","tier":"default"}"#,
            "{name}"
        );
        assert_eq!(j.deadline_at, None, "{name}");
        assert_eq!(j.lease_token, 1, "{name}");
        assert!(
            j.next_attempt_at <= crate::Timestamp::now(),
            "{name}: due at once"
        );
        assert_eq!(
            trail(&s, &ids[0]).await,
            vec![ev("queued", "queued", "deadline at risk")],
            "{name}"
        );
        let stale = get(&s, &ids[1]).await;
        assert_eq!(
            (stale.service_tier, stale.lease_token),
            (Tier::Flex, 0),
            "{name}"
        );
        assert!(trail(&s, &ids[1]).await.is_empty(), "{name}");
        assert_eq!(get(&s, &ids[6]).await.service_tier, Tier::Default, "{name}");
        assert_eq!(
            s.governed_models().await.expect("governed"),
            ["m1"],
            "{name}"
        );
        assert_eq!(
            s.to_default_tier(Vec::new(), "x".into())
                .await
                .expect("none"),
            0
        );
    }
}

#[tokio::test]
async fn batch_summaries_failures_costs_and_exports_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let rows = [
            Row {
                batch: Some("b"),
                est_tokens: Some(100),
                usage_tokens: Some(90),
                gen_ms: Some(1_000),
                submitted_at: Some(20),
                finished_at: Some(50),
                created_at: 10,
                shape: Some("720p/5s"),
                ..Row::new("archived")
            },
            Row {
                batch: Some("b"),
                est_tokens: Some(200),
                usage_tokens: Some(210),
                gen_ms: Some(3_000),
                submitted_at: Some(15),
                finished_at: Some(70),
                created_at: 12,
                shape: Some("720p/5s"),
                ..Row::new("archived")
            },
            Row {
                batch: Some("b"),
                est_tokens: Some(400),
                created_at: 11,
                shape: Some("720p/5s"),
                error_code: Some("E1"),
                ..Row::new("failed")
            },
            Row {
                batch: Some("b"),
                tier: Tier::Flex,
                usage_tokens: Some(5),
                ..Row::new("cancelled")
            },
            Row {
                batch: Some("other"),
                est_tokens: Some(1),
                usage_tokens: Some(1),
                model: "m2",
                ..Row::new("dead")
            },
            Row::new("queued"),
        ];
        let ids = seed(&s, &rows).await;

        let cells = s.batch_cells(Some("b".into())).await.expect("cells");
        let keys: Vec<_> = cells.iter().map(|c| (c.tier, c.state, c.jobs)).collect();
        assert_eq!(
            keys,
            [
                (Tier::Default, JobState::Archived, 2),
                (Tier::Default, JobState::Failed, 1),
                (Tier::Flex, JobState::Cancelled, 1),
            ],
            "{name}"
        );
        let a = &cells[0];
        let at = crate::Timestamp::from_ms;
        assert_eq!(
            (
                a.est_tokens,
                a.usage_tokens,
                a.est_tokens_of_used,
                a.first_created,
                a.first_submitted,
                a.last_finished,
                a.gen_ms_sum,
                a.gen_ms_count,
            ),
            (300, 300, 300, at(10), Some(at(15)), Some(at(70)), 4_000, 2),
            "{name}"
        );
        assert_eq!(a.shape.as_deref(), Some("720p/5s"), "{name}");
        let f = &cells[1];
        assert_eq!(
            (
                f.est_tokens,
                f.usage_tokens,
                f.est_tokens_of_used,
                f.gen_ms_count
            ),
            (400, 0, 0, 0),
            "{name}"
        );
        assert_eq!(f.first_submitted, None, "{name}");
        let c = &cells[2];
        assert_eq!(
            (
                c.est_tokens,
                c.usage_tokens,
                c.est_tokens_of_used,
                c.shape.clone()
            ),
            (0, 5, 0, None),
            "{name}"
        );
        let all = s.batch_cells(None).await.expect("all");
        assert_eq!(all.len(), 4, "{name}: the queued job has no batch");
        assert_eq!(all[3].batch, "other", "{name}");

        let failures = s.batch_failures("b", 10).await.expect("failures");
        let got: Vec<_> = failures
            .iter()
            .map(|f| (f.id.clone(), f.state, f.code.clone()))
            .collect();
        let mut want = vec![
            (ids[2].clone(), JobState::Failed, Some("E1".to_string())),
            (ids[3].clone(), JobState::Cancelled, None),
        ];
        want.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        assert_eq!(got, want, "{name}");
        assert_eq!(s.batch_failures("b", 1).await.expect("one").len(), 1);

        let export: Vec<JobId> = s
            .batch_jobs("b")
            .await
            .expect("export")
            .into_iter()
            .map(|j| j.id)
            .collect();
        let mut want: Vec<JobId> = ids[..4].to_vec();
        want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(export, want, "{name}");
        assert!(s.batch_jobs("none").await.expect("none").is_empty());

        let costs: Vec<_> = s
            .cost_rows()
            .await
            .expect("costs")
            .into_iter()
            .map(|c| {
                (
                    c.model,
                    c.tier,
                    c.jobs,
                    c.unestimated,
                    c.est_tokens,
                    c.usage_tokens,
                )
            })
            .collect();
        assert_eq!(
            costs,
            vec![
                ("m".to_string(), Tier::Default, 2, 0, 300, 300),
                ("m".to_string(), Tier::Flex, 1, 1, 0, 5),
                ("m2".to_string(), Tier::Default, 1, 0, 1, 1),
            ],
            "{name}"
        );
    }
}

#[tokio::test]
async fn cancel_batch_cancels_queued_and_flags_remote_jobs_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let rows = [
            Row {
                batch: Some("b"),
                lease_token: 4,
                ..Row::new("queued")
            },
            // A held chain shot is queued too: cancelled at once.
            Row {
                batch: Some("b"),
                next_attempt_at: HELD.ms(),
                ..Row::new("queued")
            },
            Row {
                batch: Some("b"),
                next_attempt_at: HELD.ms(),
                ..Row::new("submitted")
            },
            Row {
                batch: Some("b"),
                ..Row::new("submit_unknown")
            },
            Row {
                batch: Some("b"),
                cancel_requested: 1,
                ..Row::new("submitting")
            },
            Row {
                batch: Some("b"),
                ..Row::new("succeeded")
            },
            Row {
                batch: Some("other"),
                ..Row::new("queued")
            },
        ];
        let ids = seed(&s, &rows).await;
        let r = s.cancel_batch("b").await.expect("cancel");
        assert_eq!((r.cancelled, r.requested), (2, 2), "{name}");

        let q = get(&s, &ids[0]).await;
        assert_eq!(q.state, JobState::Cancelled, "{name}");
        assert_eq!(q.lease_token, 5, "{name}: fences any holder");
        assert!(q.finished_at.is_some(), "{name}");
        assert_eq!(
            trail(&s, &ids[0]).await,
            vec![ev("queued", "cancelled", "batch cancelled by user")],
            "{name}"
        );
        assert_eq!(get(&s, &ids[1]).await.state, JobState::Cancelled, "{name}");
        let sub = get(&s, &ids[2]).await;
        assert_eq!(sub.state, JobState::Submitted, "{name}");
        assert!(sub.cancel_requested, "{name}");
        assert!(
            sub.next_attempt_at <= crate::Timestamp::now(),
            "{name}: due for the DELETE"
        );
        assert_eq!(
            trail(&s, &ids[2]).await,
            vec![ev("submitted", "submitted", "cancel requested (batch)")],
            "{name}"
        );
        assert_eq!(
            trail(&s, &ids[3]).await,
            vec![ev(
                "submit_unknown",
                "submit_unknown",
                "cancel requested (batch)"
            )],
            "{name}"
        );
        assert!(
            trail(&s, &ids[4]).await.is_empty(),
            "{name}: flagged before"
        );
        assert_eq!(get(&s, &ids[5]).await.state, JobState::Succeeded, "{name}");
        assert_eq!(get(&s, &ids[6]).await.state, JobState::Queued, "{name}");

        let again = s.cancel_batch("b").await.expect("cancel again");
        assert_eq!((again.cancelled, again.requested), (0, 0), "{name}");
    }
}

#[tokio::test]
async fn retry_batch_requeues_failures_and_leaves_chain_shots_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let failed = Row {
            batch: Some("b"),
            created_at: 1_000,
            deadline_at: Some(61_000),
            lease_token: 3,
            submitted_at: Some(2_000),
            finished_at: Some(3_000),
            error_code: Some("E"),
            remote_task_id: Some("cgt-1".into()),
            ..Row::new("failed")
        };
        let rows = [
            failed,
            Row {
                batch: Some("b"),
                ..Row::new("dead")
            },
            Row {
                batch: Some("b"),
                ..Row::new("expired")
            },
            Row {
                batch: Some("b"),
                ..Row::new("cancelled")
            },
            Row {
                batch: Some("b"),
                chain: Some(("c1", 2)),
                ..Row::new("failed")
            },
            Row {
                batch: Some("b"),
                ..Row::new("archived")
            },
            Row {
                batch: Some("other"),
                ..Row::new("failed")
            },
        ];
        let ids = seed(&s, &rows).await;
        let before = now_ms();
        let r = s.retry_batch("b", false).await.expect("retry");
        assert_eq!((r.requeued, r.skipped_chain_shots), (3, 1), "{name}");

        let j = get(&s, &ids[0]).await;
        assert_eq!(j.state, JobState::Queued, "{name}");
        assert_eq!(j.lease_token, 4, "{name}");
        assert_eq!(
            (
                j.remote_task_id.clone(),
                j.submitted_at,
                j.finished_at,
                j.last_error_code.clone(),
                j.attempts
            ),
            (None, None, None, None, 0),
            "{name}"
        );
        // The deadline keeps its distance from the (new) start.
        let d = j.deadline_at.expect("deadline").since(j.next_attempt_at);
        assert_eq!(d.as_millis(), 60_000, "{name}");
        assert!(j.next_attempt_at.ms() >= before, "{name}");
        assert_eq!(
            trail(&s, &ids[0]).await,
            vec![ev("failed", "queued", "retried with its batch")],
            "{name}"
        );
        assert_eq!(
            trail(&s, &ids[1]).await,
            vec![ev("dead", "queued", "retried with its batch")],
            "{name}"
        );
        assert_eq!(
            trail(&s, &ids[2]).await,
            vec![ev("expired", "queued", "retried with its batch")],
            "{name}"
        );
        assert_eq!(get(&s, &ids[3]).await.state, JobState::Cancelled, "{name}");
        assert_eq!(get(&s, &ids[4]).await.state, JobState::Failed, "{name}");
        assert_eq!(get(&s, &ids[5]).await.state, JobState::Archived, "{name}");
        assert_eq!(get(&s, &ids[6]).await.state, JobState::Failed, "{name}");

        let r = s.retry_batch("b", true).await.expect("retry cancelled");
        assert_eq!((r.requeued, r.skipped_chain_shots), (1, 1), "{name}");
        assert_eq!(
            trail(&s, &ids[3]).await,
            vec![ev("cancelled", "queued", "retried with its batch")],
            "{name}"
        );
        assert_eq!(get(&s, &ids[3]).await.deadline_at, None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_batch_cancels_and_retries_touch_each_job_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let mut rows: Vec<Row> = (0..40)
            .map(|_| Row {
                batch: Some("b"),
                ..Row::new("queued")
            })
            .collect();
        rows.extend((0..20).map(|_| Row {
            batch: Some("b"),
            ..Row::new("submitted")
        }));
        let ids = seed(&s, &rows).await;
        // Two operators cancel the same batch at once: each job is cancelled (or flagged)
        // by exactly one of them, with one event.
        let (a, b) = tokio::join!(
            tokio::spawn({
                let s = s.clone();
                async move { s.cancel_batch("b").await }
            }),
            tokio::spawn({
                let s = s.clone();
                async move { s.cancel_batch("b").await }
            }),
        );
        let (a, b) = (a.expect("join").expect("a"), b.expect("join").expect("b"));
        assert_eq!(a.cancelled + b.cancelled, 40, "{name}");
        assert_eq!(a.requested + b.requested, 20, "{name}");
        for id in &ids {
            assert_eq!(trail(&s, id).await.len(), 1, "{name}: {id}");
        }
        // And both retry it with its cancelled jobs at once: each is requeued once.
        let (a, b) = tokio::join!(
            tokio::spawn({
                let s = s.clone();
                async move { s.retry_batch("b", true).await }
            }),
            tokio::spawn({
                let s = s.clone();
                async move { s.retry_batch("b", true).await }
            }),
        );
        let (a, b) = (a.expect("join").expect("a"), b.expect("join").expect("b"));
        assert_eq!(a.requeued + b.requeued, 40, "{name}");
        for id in &ids[..40] {
            let t = trail(&s, id).await;
            assert_eq!(
                t.last(),
                Some(&ev("cancelled", "queued", "retried with its batch")),
                "{name}"
            );
            assert_eq!(t.len(), 2, "{name}: {id}");
            assert_eq!(get(&s, id).await.state, JobState::Queued, "{name}");
        }
    }
}
