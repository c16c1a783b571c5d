//! Chain and dashboard queries on both backends: every method
//! of `store/chain.rs` and `store/ui.rs` runs the same script on SQLite and on PostgreSQL,
//! plus the PostgreSQL-only properties (the trigram index answers the prompt search, the
//! trigger-kept batch counts equal a recount, two workers cannot release one shot twice).
//!
//! Jobs are seeded with `enqueue_chain` (a one-shot chain is an ordinary due job) and moved
//! with plain SQL that both dialects read alike, so these tests need nothing but the
//! methods they test.

use super::testpg;
use super::{ChainState, ChainWrite, HELD, NewJob, Stitched, Store, StoreTarget, UiFilter, now_ms};
use crate::job::{JobId, JobState};
use crate::tier::Tier;

/// Runs `sql` (statements both dialects accept) on either backend.
async fn exec(s: &Store, sql: &str) {
    if let Some(pg) = s.pg() {
        pg.conn()
            .await
            .expect("pg conn")
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    } else {
        let sql = sql.to_string();
        s.call(move |c| {
            c.execute_batch(&sql)?;
            Ok(())
        })
        .await
        .expect("sqlite exec");
    }
}

/// One text value from a one-row query on either backend.
async fn text(s: &Store, sql: &str) -> String {
    if let Some(pg) = s.pg() {
        pg.conn()
            .await
            .expect("pg conn")
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    } else {
        let sql = sql.to_string();
        s.call(move |c| Ok(c.query_row(&sql, [], |r| r.get(0))?))
            .await
            .expect("sqlite query")
    }
}

fn shot(text: &str) -> NewJob {
    NewJob {
        est_tokens: Some(10),
        ..NewJob::plain(
            serde_json::json!({"model": "m", "content": [{"type": "text", "text": text}]})
                .to_string(),
        )
    }
}

/// A frame as a data URL, as the chain stage embeds the previous shot's last frame.
const FRAME: &str =
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk";

#[tokio::test]
async fn chain_methods_behave_alike_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let ids = s
            .enqueue_chain("c1", 2, vec![shot("one"), shot("two"), shot("three")])
            .await
            .unwrap_or_else(|e| panic!("{name}: enqueue: {e}"));
        assert_eq!(ids.len(), 3, "{name}");
        let c = s.chain("c1").await.expect("chain").expect("exists");
        assert_eq!(
            (c.state, c.shots, c.released, c.max_retries, c.retries),
            (ChainState::Running, 3, 1, 2, 0),
            "{name}"
        );
        assert!(s.chain("nope").await.expect("chain").is_none(), "{name}");
        let shots = s.chain_shots("c1").await.expect("shots");
        assert_eq!(
            shots.iter().map(|s| s.shot).collect::<Vec<_>>(),
            [1, 2, 3],
            "{name}"
        );
        assert!(
            shots[0].job.next_attempt_at <= crate::Timestamp::now(),
            "{name}"
        );
        assert_eq!(shots[1].job.next_attempt_at, HELD, "{name}");
        assert!(shots[1].job.request_json.is_empty(), "{name}: no bodies");
        assert_eq!(
            shots[0].job.callback_token.as_deref().map(str::len),
            Some(32),
            "{name}: a callback token of 128 bits"
        );
        let ev = s.events(ids[1].as_str()).await.expect("events");
        assert_eq!(
            ev[0].detail.as_deref(),
            Some("enqueued as shot 2 of chain c1; held until shot 1 succeeds"),
            "{name}"
        );

        // A chain id that exists, and an idempotency key that exists: nothing is stored.
        assert!(
            s.enqueue_chain("c1", 0, vec![shot("x")]).await.is_err(),
            "{name}: duplicate chain id"
        );
        let mut keyed = shot("k");
        keyed.key = Some("k1".into());
        s.enqueue_chain("ck", 0, vec![keyed.clone()])
            .await
            .expect("keyed");
        keyed.id = JobId::generate();
        let err = s
            .enqueue_chain("c2", 0, vec![shot("first"), keyed])
            .await
            .expect_err("a reused key");
        assert!(err.to_string().contains("k1"), "{name}: {err}");
        assert!(s.chain("c2").await.expect("chain").is_none(), "{name}");
        assert_eq!(
            text(&s, "SELECT CAST(COUNT(*) AS TEXT) FROM jobs").await,
            "4",
            "{name}: the failed chains left no jobs"
        );
        let listed: Vec<String> = s
            .chains(10)
            .await
            .expect("chains")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(listed.len(), 2, "{name}: {listed:?}");
        assert_eq!(s.chains(1).await.expect("chains").len(), 1, "{name}");

        // Due once the current shot leaves the remote states.
        let due = |s: Store| async move {
            s.chains_due(10)
                .await
                .expect("due")
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert!(due(s.clone()).await.is_empty(), "{name}");
        assert_eq!(s.active_chains().await.expect("active"), 2, "{name}");
        exec(
            &s,
            "UPDATE jobs SET state = 'succeeded' WHERE chain_id = 'c1' AND shot = 1",
        )
        .await;
        assert_eq!(due(s.clone()).await, ["c1"], "{name}");

        // A retry is guarded on the count and backs the check off.
        let later = crate::Timestamp::now() + std::time::Duration::from_secs(3600);
        let r = s
            .chain_retry("c1", ChainState::Running, 0, later, "boom".into())
            .await
            .expect("retry");
        assert_eq!(r, ChainWrite::Done, "{name}");
        let r = s
            .chain_retry("c1", ChainState::Running, 0, later, "boom".into())
            .await
            .expect("retry");
        assert_eq!(r, ChainWrite::Conflict, "{name}");
        let r = s
            .chain_retry("c1", ChainState::Stitching, 1, later, "boom".into())
            .await
            .expect("retry");
        assert_eq!(r, ChainWrite::Conflict, "{name}: wrong state");
        let c = s.chain("c1").await.expect("chain").expect("exists");
        assert_eq!(
            (c.retries, c.next_check_at, c.last_error.as_deref()),
            (1, later, Some("boom")),
            "{name}"
        );
        assert!(due(s.clone()).await.is_empty(), "{name}: backing off");
        assert_eq!(
            s.next_chain_check().await.expect("next"),
            Some(later),
            "{name}"
        );
        s.chain_later(
            "c1",
            crate::Timestamp::now() - std::time::Duration::from_millis(1),
            "url down".into(),
        )
        .await
        .expect("later");
        assert_eq!(due(s.clone()).await, ["c1"], "{name}");
        assert_eq!(s.next_chain_check().await.expect("next"), None, "{name}");
        let c = s.chain("c1").await.expect("chain").expect("exists");
        assert_eq!(
            (c.retries, c.last_error.as_deref()),
            (1, Some("url down")),
            "{name}: no retry spent"
        );

        // Releasing shot 2 with an embedded frame: the image is interned, the chain's
        // counter and retries move in the same transaction.
        let token = s.chain_shots("c1").await.expect("shots")[1].job.lease_token;
        let body = serde_json::json!({"model": "m", "content": [
            {"type": "text", "text": "two"},
            {"type": "image_url", "image_url": {"url": FRAME}, "role": "first_frame"}]})
        .to_string();
        let release = |shot: i64, job: usize, t: i64| {
            let (s, body, id) = (s.clone(), body.clone(), ids[job].clone());
            async move {
                s.release_shot("c1", shot, &id, t, body, Some(30), 3_600, "released".into())
                    .await
                    .expect("release")
            }
        };
        assert_eq!(release(3, 2, token).await, ChainWrite::Conflict, "{name}");
        assert_eq!(
            release(2, 1, token + 1).await,
            ChainWrite::Conflict,
            "{name}: stale token"
        );
        let c = s.chain("c1").await.expect("chain").expect("exists");
        assert_eq!(c.released, 1, "{name}: the counter rolled back");
        assert_eq!(release(2, 1, token).await, ChainWrite::Done, "{name}");
        assert_eq!(
            release(2, 1, token + 1).await,
            ChainWrite::Conflict,
            "{name}"
        );
        let job = s.job(ids[1].as_str()).await.expect("job").expect("exists");
        assert!(!job.request_json.contains("data:image"), "{name}");
        assert!(
            job.request_json.contains(crate::images::REF_PREFIX),
            "{name}: {}",
            job.request_json
        );
        assert_eq!(
            text(&s, "SELECT data_url FROM images").await,
            FRAME,
            "{name}"
        );
        assert_eq!(job.est_tokens, Some(30), "{name}");
        assert_eq!(job.deadline_at, None, "{name}: not flex");
        assert!(job.next_attempt_at <= crate::Timestamp::now(), "{name}");
        let ev = s.events(ids[1].as_str()).await.expect("events");
        assert_eq!(
            ev.last().and_then(|e| e.detail.as_deref()),
            Some("released"),
            "{name}"
        );
        let c = s.chain("c1").await.expect("chain").expect("exists");
        assert_eq!(
            (c.released, c.retries, c.last_error.as_deref()),
            (2, 0, None),
            "{name}: a released shot starts with a clean slate"
        );

        // A parked ambiguous submit of the current shot waits for an operator.
        exec(
            &s,
            "UPDATE jobs SET state = 'submit_unknown', last_error_code = 'parked' \
             WHERE chain_id = 'c1' AND shot = 2",
        )
        .await;
        assert_eq!(s.active_chains().await.expect("active"), 1, "{name}");

        // Stitching: due once no shot is succeeded/archiving, then done once stitched.
        exec(
            &s,
            "UPDATE jobs SET state = 'succeeded' WHERE chain_id = 'c1' AND shot = 2",
        )
        .await;
        let w = s
            .set_chain_state("c1", ChainState::Running, ChainState::Stitching, None)
            .await
            .expect("stitching");
        assert_eq!(w, ChainWrite::Done, "{name}");
        let c = s.chain("c1").await.expect("chain").expect("exists");
        assert_eq!(
            (c.state, c.retries, c.last_error.as_deref(), c.finished_at),
            (ChainState::Stitching, 0, None, None),
            "{name}"
        );
        let shots = s.chain_shots("c1").await.expect("shots");
        assert_eq!(shots[2].job.state, JobState::Queued, "{name}: not final");
        assert!(due(s.clone()).await.is_empty(), "{name}: still succeeded");
        exec(
            &s,
            "UPDATE jobs SET state = 'archived' WHERE chain_id = 'c1'",
        )
        .await;
        assert_eq!(due(s.clone()).await, ["c1"], "{name}");
        let stitched = Stitched {
            key: "chains/c1.mp4".into(),
            sha256: "ab".repeat(32),
            size: 1234,
            frames: 240,
            duration_ms: 10_000,
        };
        let w = s
            .chain_stitched("c1", stitched.clone())
            .await
            .expect("stitched");
        assert_eq!(w, ChainWrite::Done, "{name}");
        let w = s.chain_stitched("c1", stitched).await.expect("stitched");
        assert_eq!(w, ChainWrite::Conflict, "{name}");
        let c = s.chain("c1").await.expect("chain").expect("exists");
        assert_eq!(
            (
                c.state,
                c.stitch_key.as_deref(),
                c.stitch_size,
                c.stitch_frames,
                c.stitch_ms,
                c.last_error.as_deref()
            ),
            (
                ChainState::Done,
                Some("chains/c1.mp4"),
                Some(1234),
                Some(240),
                Some(10_000),
                None
            ),
            "{name}"
        );
        assert!(c.finished_at.is_some(), "{name}");

        // Stopping a chain cancels its held shots, each with an event.
        let ids = s
            .enqueue_chain("c3", 0, vec![shot("a"), shot("b"), shot("c")])
            .await
            .expect("c3");
        let w = s
            .set_chain_state(
                "c3",
                ChainState::Running,
                ChainState::Cancelled,
                Some("user".into()),
            )
            .await
            .expect("cancel");
        assert_eq!(w, ChainWrite::Done, "{name}");
        let states: Vec<JobState> = s
            .chain_shots("c3")
            .await
            .expect("shots")
            .iter()
            .map(|s| s.job.state)
            .collect();
        assert_eq!(
            states,
            [JobState::Queued, JobState::Cancelled, JobState::Cancelled],
            "{name}"
        );
        let job = s.job(ids[2].as_str()).await.expect("job").expect("exists");
        assert_eq!(
            (
                job.last_error_code.as_deref(),
                job.last_error_message.as_deref()
            ),
            (Some("chain_stopped"), Some("chain c3 stopped (cancelled)")),
            "{name}"
        );
        let ev = s.events(ids[2].as_str()).await.expect("events");
        assert_eq!(
            ev.last()
                .map(|e| (e.to_state.as_str(), e.detail.as_deref())),
            Some(("cancelled", Some("chain stopped before this shot"))),
            "{name}"
        );
        let c = s.chain("c3").await.expect("chain").expect("exists");
        assert_eq!(
            (c.state, c.last_error.as_deref()),
            (ChainState::Cancelled, Some("user")),
            "{name}"
        );
        assert!(c.finished_at.is_some(), "{name}");
    }
}

/// Two workers (two pools on one database) release the same shot at once: exactly one wins,
/// and the chain's counter moves once.
#[tokio::test]
async fn postgres_two_workers_release_a_shot_once() {
    let url = testpg::fresh_database().await;
    let target = StoreTarget::Postgres {
        url,
        password: None,
    };
    let a = Store::open_target(&target, true).await.expect("a");
    let b = Store::open_target(&target, true).await.expect("b");
    for round in 0..10 {
        let id = format!("c{round}");
        let ids = a
            .enqueue_chain(&id, 0, vec![shot("1"), shot("2")])
            .await
            .expect("enqueue");
        let token = a.chain_shots(&id).await.expect("shots")[1].job.lease_token;
        let go = |s: Store| {
            let (id, job) = (id.clone(), ids[1].clone());
            async move {
                s.release_shot(&id, 2, &job, token, "{}".into(), None, 60, "r".into())
                    .await
                    .expect("release")
            }
        };
        let (x, y) = tokio::join!(go(a.clone()), go(b.clone()));
        let mut got = [x, y];
        got.sort_by_key(|w| *w == ChainWrite::Conflict);
        assert_eq!(
            got,
            [ChainWrite::Done, ChainWrite::Conflict],
            "round {round}"
        );
        let c = a.chain(&id).await.expect("chain").expect("exists");
        assert_eq!(c.released, 2);
        let events = a.events(ids[1].as_str()).await.expect("events");
        assert_eq!(events.len(), 2, "one enqueue, one release");
    }
}

/// The dashboard's gauges read the same numbers on both backends.
#[tokio::test]
async fn ui_gauges_agree_on_both_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seen = Vec::new();
    for (name, s) in testpg::both(dir.path()).await {
        let mut flex = shot("f");
        flex.flex = true;
        flex.est_tokens = Some(500);
        flex.model = "mf".into();
        s.enqueue_chain("a", 0, vec![shot("a")]).await.expect("a");
        s.enqueue_chain("b", 0, vec![flex]).await.expect("b");
        s.enqueue_chain("h", 0, vec![shot("h1"), shot("h2")])
            .await
            .expect("h");
        let now = now_ms();
        exec(
            &s,
            &format!(
                "UPDATE jobs SET state = 'submitted', submit_started_at = {now}, \
                 submitted_at = {now}, usage_tokens = 700 WHERE chain_id = 'b';
                 UPDATE jobs SET submit_started_at = {} WHERE chain_id = 'a';
                 UPDATE jobs SET created_at = 5 WHERE chain_id = 'h' AND shot = 1;
                 UPDATE jobs SET created_at = 1 WHERE chain_id = 'h' AND shot = 2;",
                now - 120_000
            ),
        )
        .await;
        let creates = s
            .ui_creates_since(crate::Timestamp::from_ms(now - 60_000))
            .await
            .expect("creates");
        let oldest = s.ui_oldest_queued().await.expect("oldest");
        let mut waiting = s.ui_waiting().await.expect("waiting");
        waiting.sort_by(|x, y| (x.0.as_str(), &x.1).cmp(&(y.0.as_str(), &y.1)));
        let flex_today = s
            .ui_flex_today(crate::Timestamp::from_ms(now - 1_000))
            .await
            .expect("flex");
        let m = ("m".to_string(), Tier::Default);
        let mf = ("mf".to_string(), Tier::Flex);
        assert_eq!(creates.get(&mf), Some(&1), "{name}");
        assert_eq!(creates.get(&m), None, "{name}: a minute ago");
        // The held shot (created_at 1) does not wait for a slot; shot 1 (5) does.
        assert_eq!(oldest.get(&m), Some(&5), "{name}");
        assert_eq!(flex_today.get("mf"), Some(&700), "{name}");
        assert_eq!(
            waiting,
            vec![
                (JobState::Queued, "m".into(), Tier::Default, 3),
                (JobState::Submitted, "mf".into(), Tier::Flex, 1)
            ],
            "{name}"
        );
        let finished = s.ui_bench_finish(2).await.expect("bench");
        assert_eq!(finished, 2, "{name}: all but one in two of four jobs");
        let left = s.ui_waiting().await.expect("waiting");
        assert_eq!(left.iter().map(|w| w.3).sum::<i64>(), 2, "{name}");
        seen.push((creates, oldest, flex_today));
    }
    assert_eq!(seen[0], seen[1], "sqlite and postgres differ");
}

/// `(batch, state, model, tier, shape, jobs, tokens)` rows.
type Cells = Vec<(String, String, String, String, Option<String>, i64, i64)>;

/// The batch cells as the dashboard reads them (the trigger-kept table), every batch.
async fn kept(s: &Store, batches: &[&str]) -> Cells {
    let mut out = Vec::new();
    for b in batches {
        for c in s.ui_batch_cells(b).await.expect("cells") {
            out.push((
                b.to_string(),
                c.state.as_str().to_string(),
                c.model,
                c.tier.to_string(),
                c.shape,
                c.jobs,
                c.usage_tokens,
            ));
        }
    }
    out.sort();
    out
}

/// The same cells counted from the jobs themselves.
async fn recount(s: &Store) -> Cells {
    let sql = "SELECT batch_id, state, model, service_tier, shape, COUNT(*), \
               CAST(COALESCE(SUM(usage_tokens), 0) AS BIGINT) FROM jobs \
               WHERE batch_id IS NOT NULL GROUP BY batch_id, state, model, service_tier, shape";
    let mut out: Cells = if let Some(pg) = s.pg() {
        pg.conn()
            .await
            .expect("conn")
            .query(sql, &[])
            .await
            .expect("recount")
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                )
            })
            .collect()
    } else {
        s.call(move |c| {
            let mut st = c.prepare(sql)?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .expect("recount")
    };
    out.sort();
    out
}

/// The trigger-kept batch counts equal a GROUP BY recount of the jobs after single and
/// multi-row inserts, state and usage changes, moves between batches, and deletes.
#[tokio::test]
async fn batch_counts_equal_a_recount() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, s) in testpg::both(dir.path()).await {
        let batches = ["b1", "b2"];
        let job = |batch: &str, shape: Option<&str>| NewJob {
            batch: Some(batch.into()),
            shape: shape.map(str::to_string),
            ..shot("x")
        };
        s.enqueue_chain(
            "c",
            0,
            vec![
                job("b1", Some("720p/5s")),
                job("b1", Some("720p/5s")),
                job("b1", None),
                job("b2", None),
                shot("no batch"),
            ],
        )
        .await
        .expect("enqueue");
        // One statement inserting many rows: PostgreSQL's statement-level trigger.
        exec(
            &s,
            "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
             request_json, next_attempt_at, batch_id, shape, usage_tokens) \
             SELECT 'bulk' || id, 0, 0, 'archived', model, 'flex', '{}', 0, 'b2', '1080p/5s', 40 \
             FROM jobs WHERE chain_id = 'c'",
        )
        .await;
        let first = kept(&s, &batches).await;
        assert_eq!(first, recount(&s).await, "{name}: after inserts");
        assert!(first.len() >= 4, "{name}: {first:?}");
        for (step, sql) in [
            (
                "a state change",
                "UPDATE jobs SET state = 'failed' WHERE shot = 1",
            ),
            (
                "usage billed",
                "UPDATE jobs SET state = 'succeeded', usage_tokens = 99 WHERE shot = 2",
            ),
            (
                "usage changed in place",
                "UPDATE jobs SET usage_tokens = 7 WHERE shot = 2",
            ),
            (
                "a move between batches",
                "UPDATE jobs SET batch_id = 'b2' WHERE shot = 3",
            ),
            (
                "into a batch",
                "UPDATE jobs SET batch_id = 'b1', shape = '4k' WHERE shot = 5",
            ),
            (
                "out of a batch",
                "UPDATE jobs SET batch_id = NULL WHERE shot = 4",
            ),
            (
                "a model change",
                "UPDATE jobs SET model = 'm2' WHERE id LIKE 'bulk%'",
            ),
            ("a delete", "DELETE FROM jobs WHERE shot = 1"),
            ("a bulk delete", "DELETE FROM jobs WHERE id LIKE 'bulk%'"),
        ] {
            exec(&s, sql).await;
            assert_eq!(
                kept(&s, &batches).await,
                recount(&s).await,
                "{name}: after {step}"
            );
        }
        assert_eq!(
            s.ui_batch_names(true, 0).await.expect("names"),
            ["b1", "b2"],
            "{name}: both have queued work"
        );
        exec(
            &s,
            "UPDATE jobs SET state = 'cancelled' WHERE shot IN (3, 5)",
        )
        .await;
        assert_eq!(kept(&s, &batches).await, recount(&s).await, "{name}");
        assert!(!kept(&s, &batches).await.is_empty(), "{name}");
        assert_eq!(
            s.ui_batch_names(true, 0).await.expect("names"),
            ["b1"],
            "{name}: b1 has succeeded work, b2 none"
        );
        assert!(
            s.ui_batch_names(false, 0).await.expect("names").is_empty(),
            "{name}: nothing to archive"
        );
    }
}

/// On PostgreSQL the prompt search is answered by the trigram index on a table of tens of
/// thousands of jobs, and finds exactly the matching prompts before and after indexing.
#[tokio::test]
async fn postgres_prompt_search_uses_the_trigram_index() {
    let s = testpg::pg_store().await;
    exec(
        &s,
        "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
         request_json, next_attempt_at) \
         SELECT lpad(i::text, 26, '0'), 0, 0, 'queued', 'm', 'default', \
                json_build_object('model', 'm', 'content', json_build_array( \
                    json_build_object('type', 'text', 'text', \
                        CASE WHEN i % 10000 = 0 THEN 'A Red Fox number ' || i \
                             ELSE 'a grey wolf number ' || i END)))::text, 0 \
         FROM generate_series(1, 50000) AS i; \
         ANALYZE jobs",
    )
    .await;
    let f = UiFilter {
        text: Some("red fox".into()),
        limit: 3,
        ..Default::default()
    };
    let found = |s: Store, f: UiFilter| async move {
        s.ui_jobs(f)
            .await
            .expect("search")
            .into_iter()
            .map(|j| j.id.as_str().trim_start_matches('0').to_string())
            .collect::<Vec<String>>()
    };
    // Not indexed yet: found from the pending jobs' bodies.
    assert_eq!(
        found(s.clone(), f.clone()).await,
        ["50000", "40000", "30000"]
    );
    assert_eq!(crate::tests::index_all(&s, 20_000).await, 50_000);
    exec(&s, "ANALYZE job_prompts; ANALYZE prompt_pending").await;
    let (sql, args) = crate::postgres::ui::ui_jobs_sql(&f);
    let plan = pg_plan(&s, &sql, &[&args[0]]).await;
    assert!(plan.contains("job_prompts_trgm"), "{plan}");
    assert_eq!(found(s.clone(), f).await, ["50000", "40000", "30000"]);
}

/// SQLite's plan of `sql` with `params`, on a fresh file store, one line per step.
async fn sqlite_plan(sql: &'static str, params: Vec<rusqlite::types::Value>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("q.db")).expect("open");
    let plan: Vec<String> = s
        .call(move |c| {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows = st.query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .expect("plan");
    plan.join("\n")
}

/// PostgreSQL's plan of `sql` with `params` on `s`, one line per step.
async fn pg_plan(
    s: &Store,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    let c = s.pg().expect("pg").conn().await.expect("conn");
    let plan: Vec<String> = c
        .query(&format!("EXPLAIN {sql}"), params)
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    plan.join("\n")
}

/// A day's flex spend is read through the partial index of submitted flex rows, on both
/// backends: with a large flex batch, a scan of the model's rows grew with the batch.
#[tokio::test]
async fn the_flex_day_spend_reads_the_submitted_flex_index() {
    let plan = sqlite_plan(
        crate::FLEX_TOKENS_SINCE,
        vec!["m".to_string().into(), 0_i64.into()],
    )
    .await;
    assert!(plan.contains("jobs_flex_submitted"), "sqlite: {plan}");

    let s = testpg::pg_store().await;
    exec(
        &s,
        "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
         request_json, next_attempt_at, submitted_at, est_tokens) \
         SELECT lpad(i::text, 26, '0'), 0, 0, \
                CASE WHEN i % 100 = 0 THEN 'succeeded' ELSE 'queued' END, 'm', 'flex', \
                '{}', 0, CASE WHEN i % 100 = 0 THEN i END, 10 \
         FROM generate_series(1, 20000) AS i; \
         ANALYZE jobs",
    )
    .await;
    let plan = pg_plan(&s, crate::postgres::ops::FLEX_TOKENS_SINCE, &[&"m", &0_i64]).await;
    assert!(plan.contains("jobs_flex_submitted"), "postgres: {plan}");
    assert_eq!(
        s.flex_tokens_since("m", crate::Timestamp::from_ms(10_000))
            .await
            .expect("spend"),
        1_010,
        "the rows submitted since 10 000: 10 000, 10 100, …, 20 000"
    );
}

/// The flex creates in flight across a TPD day's start are read through the partial index
/// of unanswered flex rows, on both backends: every flex claim reads them.
#[tokio::test]
async fn the_creates_straddling_a_day_read_the_unanswered_flex_index() {
    let plan = sqlite_plan(
        crate::sqlite::fleet::FLEX_STRADDLING,
        vec!["m".to_string().into(), 0_i64.into(), 1_i64.into()],
    )
    .await;
    assert!(plan.contains("jobs_flex_unanswered"), "sqlite: {plan}");

    let s = testpg::pg_store().await;
    exec(
        &s,
        "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
         request_json, next_attempt_at, submit_started_at, submitted_at, est_tokens) \
         SELECT lpad(i::text, 26, '0'), 0, 0, \
                CASE WHEN i % 100 = 0 THEN 'submitting' ELSE 'succeeded' END, 'm', 'flex', \
                '{}', 0, i, CASE WHEN i % 100 = 0 THEN NULL ELSE i END, 10 \
         FROM generate_series(1, 20000) AS i; \
         ANALYZE jobs",
    )
    .await;
    let plan = pg_plan(
        &s,
        crate::postgres::fleet::FLEX_STRADDLING,
        &[&"m", &0_i64, &20_001_i64],
    )
    .await;
    assert!(plan.contains("jobs_flex_unanswered"), "postgres: {plan}");
}

/// `batch show`'s count of a batch's jobs waiting on a cap reads the partial index of
/// queued jobs with an error code, on both backends, not every queued job of the batch.
#[tokio::test]
async fn a_batchs_cap_waiters_are_counted_from_their_index() {
    let plan = sqlite_plan(
        crate::budget::BATCH_WAITING,
        ["b", "x", "y", "z"].map(|v| v.to_string().into()).to_vec(),
    )
    .await;
    assert!(plan.contains("jobs_budget_waiting"), "sqlite: {plan}");

    let s = testpg::pg_store().await;
    // A large batch, all queued, a few of its jobs waiting on a cap.
    exec(
        &s,
        "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
         request_json, next_attempt_at, batch_id, last_error_code) \
         SELECT lpad(i::text, 26, '0'), 0, 0, 'queued', 'm', 'default', '{}', 0, 'b', \
                CASE WHEN i % 1000 = 0 THEN 'budget_batch' END \
         FROM generate_series(1, 20000) AS i; \
         ANALYZE jobs",
    )
    .await;
    let plan = pg_plan(
        &s,
        crate::postgres::budget::BATCH_WAITING,
        &[&"b", &"budget_batch", &"budget_daily", &"budget_unpriced"],
    )
    .await;
    assert!(plan.contains("jobs_budget_waiting"), "postgres: {plan}");
    assert_eq!(s.batch_spend("b").await.expect("spend").waiting, 20);
}
