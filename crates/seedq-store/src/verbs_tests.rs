//! The verb suite: every typed verb (`verbs.rs`) against `job.rs`'s transition table.
//!
//! [`verb_suite`] takes any `&Store`, so the same cases run on each backend: for every verb
//! and every state a job can be in, the verb either succeeds from the states it names and
//! lands in its documented state with a bumped lease token, or is refused
//! (`IllegalTransition` or `Conflict`) and changes nothing, row and events alike; a stale
//! lease token always conflicts. Jobs are put in each state through the generic guarded
//! transition only, so the setup needs nothing backend-specific.

use super::*;

/// Every verb, by name (poll outcomes once through `record_poll`, once through the batched
/// `record_polls`).
#[derive(Clone, Copy, Debug)]
enum Verb {
    CancelBeforeSubmit,
    MarkSubmitted,
    Requeue,
    MarkUnknown,
    MarkFailed,
    MarkDead,
    AdoptTask,
    Park,
    RecheckAt,
    Poll(PollKind, bool),
    CancelRefused,
    MarkArchived,
    MarkArchiveFailed,
    ArchiveLater,
}

#[derive(Clone, Copy, Debug)]
enum PollKind {
    Pending,
    Succeeded,
    Failed,
    Dead,
    Retry,
    Expired,
    Cancelled,
}

use JobState::*;

/// (verb, the from-states it takes, the state it lands in). Each pair must be legal in
/// `job.rs` (checked by [`table_agrees_with_job_rs`]).
fn table() -> Vec<(Verb, &'static [JobState], JobState)> {
    let mut t: Vec<(Verb, &'static [JobState], JobState)> = vec![
        (Verb::CancelBeforeSubmit, &[Submitting], Cancelled),
        (Verb::MarkSubmitted, &[Submitting], Submitted),
        (Verb::Requeue, &[Submitting, SubmitUnknown], Queued),
        (Verb::MarkUnknown, &[Submitting], SubmitUnknown),
        (Verb::MarkFailed, &[Submitting], Failed),
        (Verb::MarkDead, &[Submitting, SubmitUnknown], Dead),
        (Verb::AdoptTask, &[SubmitUnknown], Submitted),
        (Verb::Park, &[SubmitUnknown], SubmitUnknown),
        (Verb::RecheckAt, &[SubmitUnknown], SubmitUnknown),
        (Verb::CancelRefused, &[Submitted], Submitted),
        (Verb::MarkArchived, &[Archiving], Archived),
        (Verb::MarkArchiveFailed, &[Archiving], Failed),
        (Verb::ArchiveLater, &[Archiving], Succeeded),
    ];
    for batched in [false, true] {
        for (k, to) in [
            (PollKind::Pending, Submitted),
            (PollKind::Succeeded, Succeeded),
            (PollKind::Failed, Failed),
            (PollKind::Dead, Dead),
            (PollKind::Retry, Queued),
            (PollKind::Expired, Expired),
            (PollKind::Cancelled, Cancelled),
        ] {
            t.push((Verb::Poll(k, batched), &[Submitted], to));
        }
    }
    t
}

/// The legal path from a fresh `queued` job to each state.
fn path_to(state: JobState) -> &'static [JobState] {
    match state {
        Queued => &[],
        Submitting => &[Submitting],
        SubmitUnknown => &[Submitting, SubmitUnknown],
        Submitted => &[Submitting, Submitted],
        Succeeded => &[Submitting, Submitted, Succeeded],
        Archiving => &[Submitting, Submitted, Succeeded, Archiving],
        Archived => &[Submitting, Submitted, Succeeded, Archiving, Archived],
        Failed => &[Failed],
        Cancelled => &[Cancelled],
        Expired => &[Expired],
        Dead => &[Submitting, Dead],
    }
}

/// Every other job of the suite is a flex job of a batch, with a resolution and estimated
/// tokens, so that each verb moves the in-flight, flex token and batch cell counters too.
static FLEX_NEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A new job walked to `state` through the generic guarded transition; returns it.
async fn job_in(store: &Store, state: JobState) -> Job {
    let mut nj = NewJob::plain("{}");
    if FLEX_NEXT.fetch_xor(true, std::sync::atomic::Ordering::Relaxed) {
        nj.flex = true;
        nj.batch = Some("verbs".into());
        nj.shape = Some("720p/5s".into());
        nj.est_tokens = Some(1000);
    }
    let id = store
        .enqueue(vec![nj])
        .await
        .expect("enqueue")
        .inserted
        .remove(0);
    let mut job = store.job(id.as_str()).await.expect("read").expect("job");
    for &to in path_to(state) {
        // As the claim does: a submit starts the job's share of the day's flex tokens.
        let patch = if to == Submitting {
            Patch::new().set("submit_started_at", now_ms())
        } else {
            Patch::new()
        };
        let token = store
            .transition(&id, job.state, job.lease_token, to, patch, None)
            .await
            .unwrap_or_else(|e| panic!("walking to {state}: {e}"));
        job = store.job(id.as_str()).await.expect("read").expect("job");
        assert_eq!((job.state, job.lease_token), (to, token));
    }
    counters_agree(store, &format!("walking to {state}")).await;
    job
}

/// The claim counters equal a full recount of the jobs (store/counters.rs): the triggers moved
/// them in the same transaction as the verb, whatever the verb did.
async fn counters_agree(store: &Store, ctx: &str) {
    let drift = store.check_counters(false).await.expect("check counters");
    assert!(
        drift.is_empty(),
        "{ctx}: the claim counters drifted: {drift:?}"
    );
    // The batch cells' times are bounds (store/counters.rs): over the batch, no later than
    // its first creation and submission, no earlier than its last finish.
    let cells = store
        .batch_cells(Some("verbs".into()))
        .await
        .expect("cells");
    let jobs = store.batch_jobs("verbs").await.expect("jobs");
    let cells_jobs: i64 = cells.iter().map(|c| c.jobs).sum();
    assert_eq!(cells_jobs, jobs.len() as i64, "{ctx}: {cells:?}");
    if let Some(first) = jobs.iter().map(|j| j.created_at).min() {
        let bound = cells.iter().map(|c| c.first_created).min();
        assert!(bound.is_some_and(|b| b <= first), "{ctx}: {cells:?}");
    }
    if let Some(first) = jobs.iter().filter_map(|j| j.submitted_at).min() {
        let bound = cells.iter().filter_map(|c| c.first_submitted).min();
        assert!(bound.is_some_and(|b| b <= first), "{ctx}: {cells:?}");
    }
    for j in &jobs {
        if let Some(done) = j.finished_at {
            let cell = cells.iter().find(|c| c.state == j.state).expect("its cell");
            assert!(
                cell.last_finished.is_some_and(|b| b >= done),
                "{ctx}: {cells:?}"
            );
        }
    }
}

fn poll_outcome(k: PollKind) -> PollOutcome {
    let error = LastError::new("OutputVideoSensitiveContentDetected", "refused");
    match k {
        PollKind::Pending => PollOutcome::Pending {
            next_at: at(4_000),
            poll_count: 3,
            remote_status: Some("running".into()),
        },
        PollKind::Succeeded => PollOutcome::Succeeded(RemoteResult {
            at: at(5_000),
            gen_ms: 1_234,
            poll_count: 2,
            usage_tokens: Some(108_900),
            video_url: Some("https://tos.example/v.mp4".into()),
            url_expires_at: Some(at(86_405_000)),
            last_frame_url: Some("https://tos.example/f.png".into()),
            meta: crate::job::ResultMeta {
                seed: Some(7),
                ..Default::default()
            },
        }),
        PollKind::Failed => PollOutcome::Failed {
            dead: false,
            remote_status: Some("failed".into()),
            error,
        },
        PollKind::Dead => PollOutcome::Failed {
            dead: true,
            remote_status: Some("failed".into()),
            error,
        },
        PollKind::Retry => PollOutcome::Retry { at: 6_000, error },
        PollKind::Expired => PollOutcome::Expired,
        PollKind::Cancelled => PollOutcome::Cancelled,
    }
}

/// Calls `verb` on job `id` as if it were in `from` and held with `token`.
async fn call(
    store: &Store,
    verb: Verb,
    id: &JobId,
    from: JobState,
    token: i64,
) -> Result<i64, StoreError> {
    let why = || LastError::new("code_x", "message x");
    match verb {
        Verb::CancelBeforeSubmit => store.cancel_before_submit(id, token).await,
        Verb::MarkSubmitted => {
            let a = Accepted {
                remote_id: "cgt-accepted".into(),
                submitted_at: at(1_000),
                first_poll_at: at(2_000),
            };
            store.mark_submitted(id, token, a).await
        }
        Verb::Requeue => {
            let r = Requeue {
                at: at(3_000),
                attempts: Some(0),
                error: ErrorNote::Set(why()),
            };
            store.requeue(id, from, token, r, "requeued".into()).await
        }
        Verb::MarkUnknown => {
            store
                .mark_unknown(id, token, 3_000, why(), "unknown".into())
                .await
        }
        Verb::MarkFailed => store.mark_failed(id, token, why(), "failed".into()).await,
        Verb::MarkDead => {
            store
                .mark_dead(id, from, token, Some(why()), "dead".into())
                .await
        }
        Verb::AdoptTask => {
            let a = Adopted {
                remote_id: "cgt-adopted".into(),
                remote_status: "running".into(),
                submitted_at: at(1_000),
                next_poll_at: at(2_000),
            };
            store.adopt_task(id, token, a, "adopted".into()).await
        }
        Verb::Park => store.park(id, token, 9_000, "cannot tell", true).await,
        Verb::RecheckAt => store.recheck_at(id, token, 9_000).await,
        Verb::Poll(k, batched) => {
            let p = Polled {
                id: id.clone(),
                token,
                outcome: poll_outcome(k),
                detail: Some(format!("{k:?}")),
            };
            if batched {
                let mut out = store.record_polls(vec![p]).await.expect("one transaction");
                assert_eq!(out.len(), 1);
                out.remove(0)
            } else {
                store.record_poll(p).await
            }
        }
        Verb::CancelRefused => store.cancel_refused(id, token, 7_000, "running").await,
        Verb::MarkArchived => {
            let rec = ArchiveRecord {
                key: "videos/x.mp4".into(),
                sha256: "ab".repeat(32),
                size: 1_000,
                archived_at: at(8_000),
                frame: Some(("cd".repeat(32), 10)),
            };
            store.mark_archived(id, token, rec, "archived".into()).await
        }
        Verb::MarkArchiveFailed => {
            store
                .mark_archive_failed(id, token, why(), "archive failed".into())
                .await
        }
        Verb::ArchiveLater => {
            store
                .archive_later(id, token, 8_500, why(), "later".into())
                .await
        }
    }
}

/// What each verb records besides the state, checked after it succeeded.
/// The instant `ms` milliseconds after the epoch: the verbs below run on a fixed clock.
fn at(ms: i64) -> crate::Timestamp {
    crate::Timestamp::from_ms(ms)
}

fn check_fields(verb: Verb, j: &Job) {
    let why = (
        j.last_error_code.as_deref(),
        j.last_error_message.as_deref(),
    );
    let x = (Some("code_x"), Some("message x"));
    match verb {
        Verb::CancelBeforeSubmit => {}
        Verb::MarkSubmitted => {
            assert_eq!(j.remote_task_id.as_deref(), Some("cgt-accepted"));
            assert_eq!(j.remote_status.as_deref(), Some("queued"));
            assert_eq!(
                (j.submitted_at, j.next_attempt_at),
                (Some(at(1_000)), at(2_000))
            );
            assert_eq!((j.poll_count, j.lease_until), (0, None));
        }
        Verb::Requeue => {
            assert_eq!(
                (j.next_attempt_at, j.attempts, j.lease_until),
                (at(3_000), 0, None)
            );
            assert_eq!(why, x);
        }
        Verb::MarkUnknown => {
            assert_eq!((j.next_attempt_at, j.lease_until), (at(3_000), None));
            assert_eq!(why, x);
        }
        Verb::MarkFailed | Verb::MarkDead | Verb::MarkArchiveFailed => {
            assert_eq!(why, x);
            assert!(j.finished_at.is_some() && j.lease_until.is_none());
            assert_eq!(j.archive_key, None);
        }
        Verb::AdoptTask => {
            assert_eq!(j.remote_task_id.as_deref(), Some("cgt-adopted"));
            assert_eq!(j.remote_status.as_deref(), Some("running"));
            assert_eq!((j.next_attempt_at, why), (at(2_000), (None, None)));
        }
        Verb::Park => {
            assert_eq!(j.last_error_code.as_deref(), Some(PARKED));
            assert_eq!(j.last_error_message.as_deref(), Some("parked: cannot tell"));
            assert_eq!(j.next_attempt_at, at(9_000));
        }
        Verb::RecheckAt => assert_eq!(j.next_attempt_at, at(9_000)),
        Verb::CancelRefused => {
            assert!(!j.cancel_requested);
            assert_eq!(j.next_attempt_at, at(7_000));
            assert_eq!(
                j.last_error_message.as_deref(),
                Some("cancel refused: running")
            );
        }
        Verb::MarkArchived => {
            assert_eq!(j.archive_key.as_deref(), Some("videos/x.mp4"));
            assert_eq!(
                (j.archive_size, j.archived_at),
                (Some(1_000), Some(at(8_000)))
            );
        }
        Verb::ArchiveLater => {
            assert_eq!(
                (j.next_attempt_at, j.lease_until, j.lease_owner.as_deref()),
                (at(8_500), None, None)
            );
            assert_eq!(why, x);
        }
        Verb::Poll(k, _) => match k {
            PollKind::Pending => {
                assert_eq!((j.next_attempt_at, j.poll_count), (at(4_000), 3));
                assert_eq!(j.remote_status.as_deref(), Some("running"));
            }
            PollKind::Succeeded => {
                assert_eq!(j.video_url.as_deref(), Some("https://tos.example/v.mp4"));
                assert_eq!(
                    j.last_frame_url.as_deref(),
                    Some("https://tos.example/f.png")
                );
                assert_eq!(
                    (j.url_expires_at, j.usage_tokens),
                    (Some(at(86_405_000)), Some(108_900))
                );
                assert_eq!(
                    (j.finished_at, j.next_attempt_at, j.gen_ms),
                    (Some(at(5_000)), at(5_000), Some(1_234))
                );
                assert_eq!(j.remote_status.as_deref(), Some("succeeded"));
            }
            PollKind::Failed | PollKind::Dead => {
                assert_eq!(j.remote_status.as_deref(), Some("failed"));
                assert_eq!(
                    j.last_error_code.as_deref(),
                    Some("OutputVideoSensitiveContentDetected")
                );
            }
            PollKind::Retry => {
                assert_eq!(
                    (j.remote_task_id.as_deref(), j.next_attempt_at),
                    (None, at(6_000))
                );
                assert_eq!(j.remote_status.as_deref(), Some("failed"));
            }
            PollKind::Expired => assert_eq!(j.last_error_code.as_deref(), Some("expired")),
            PollKind::Cancelled => {
                assert!(!j.cancel_requested);
                assert_eq!(j.remote_status.as_deref(), Some("cancelled"));
            }
        },
    }
}

/// The job's row and its number of events, to show a refused verb changed nothing.
async fn snapshot(store: &Store, id: &JobId) -> (serde_json::Value, usize) {
    let job = store.job(id.as_str()).await.expect("read").expect("job");
    let events = store.events(id.as_str()).await.expect("events").len();
    (serde_json::to_value(&job).expect("json"), events)
}

/// Every verb from every state, with the right token and a stale one.
///
/// # Panics
/// On the first case that does not behave as the table says.
pub(crate) async fn verb_suite(store: &Store) {
    for (verb, allowed, to) in table() {
        for from in JobState::ALL {
            let job = job_in(store, from).await;
            let before = snapshot(store, &job.id).await;
            let ctx = format!("{verb:?} from {from}");
            if allowed.contains(&from) {
                // A stale token first: it conflicts and changes nothing.
                let stale = call(store, verb, &job.id, from, job.lease_token - 1).await;
                assert!(
                    matches!(stale, Err(StoreError::Conflict { .. })),
                    "{ctx}, stale token: {stale:?}"
                );
                assert_eq!(
                    snapshot(store, &job.id).await,
                    before,
                    "{ctx}: a stale token changed the job"
                );

                let next = call(store, verb, &job.id, from, job.lease_token).await;
                assert_eq!(
                    next.as_ref().ok(),
                    Some(&(job.lease_token + 1)),
                    "{ctx}: {next:?}"
                );
                let after = store
                    .job(job.id.as_str())
                    .await
                    .expect("read")
                    .expect("job");
                assert_eq!(
                    (after.state, after.lease_token),
                    (to, job.lease_token + 1),
                    "{ctx}"
                );
                check_fields(verb, &after);

                // The same token again: the first write fenced it out.
                let again = call(store, verb, &job.id, from, job.lease_token).await;
                assert!(
                    matches!(again, Err(StoreError::Conflict { .. })),
                    "{ctx}, replayed: {again:?}"
                );
                counters_agree(store, &ctx).await;
            } else {
                let r = call(store, verb, &job.id, from, job.lease_token).await;
                assert!(
                    matches!(
                        r,
                        Err(StoreError::IllegalTransition { .. } | StoreError::Conflict { .. })
                    ),
                    "{ctx}: must be refused, got {r:?}"
                );
                assert_eq!(
                    snapshot(store, &job.id).await,
                    before,
                    "{ctx}: a refused verb changed the job"
                );
                counters_agree(store, &ctx).await;
            }
        }
    }
    batched_polls_are_one_transaction_with_results_in_order(store).await;
    counters_agree(store, "batched polls").await;
    cancel_requested_during_a_post_is_cancelled_by_the_next_claim(store).await;
    counters_agree(store, "cancel during a post").await;
}

/// `record_polls` applies each of a batch on its own, in one call: a good one lands, a
/// stale one and one in another state conflict, and the results come back in order.
async fn batched_polls_are_one_transaction_with_results_in_order(store: &Store) {
    let good = job_in(store, Submitted).await;
    let stale = job_in(store, Submitted).await;
    let moved = job_in(store, Succeeded).await;
    let polled = |j: &Job, token: i64| Polled {
        id: j.id.clone(),
        token,
        outcome: poll_outcome(PollKind::Expired),
        detail: Some("batch".into()),
    };
    let before = snapshot(store, &stale.id).await;
    let out = store
        .record_polls(vec![
            polled(&good, good.lease_token),
            polled(&stale, stale.lease_token + 5),
            polled(&moved, moved.lease_token),
        ])
        .await
        .expect("batch");
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].as_ref().ok(), Some(&(good.lease_token + 1)));
    assert!(
        matches!(out[1], Err(StoreError::Conflict { .. })),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[2], Err(StoreError::Conflict { .. })),
        "{:?}",
        out[2]
    );
    let j = store
        .job(good.id.as_str())
        .await
        .expect("read")
        .expect("job");
    assert_eq!(j.state, Expired);
    assert_eq!(snapshot(store, &stale.id).await, before);
    let m = store
        .job(moved.id.as_str())
        .await
        .expect("read")
        .expect("job");
    assert_eq!(m.state, Succeeded);
}

/// A cancel during a POST, the bug `dispatch.rs` once had, which this suite must catch:
/// `seedq cancel` during a POST sets `cancel_requested` on a `submitting` job; the POST
/// fails as never sent, so the job is requeued with the flag; the next claim must cancel it
/// (`submitting -> cancelled`). While `job.rs` forbade that move, every claim of the job
/// errored until lease recovery.
async fn cancel_requested_during_a_post_is_cancelled_by_the_next_claim(store: &Store) {
    let model = "cancel-in-dispatch";
    let mut nj = NewJob::plain("{}");
    nj.model = model.into();
    let id = store
        .enqueue(vec![nj])
        .await
        .expect("enqueue")
        .inserted
        .remove(0);
    let claim = || {
        store.claim_for_submit_tier(
            model,
            Tier::Default,
            10,
            ResolutionScope::All,
            1,
            "w",
            crate::tests::LEASE,
        )
    };
    let job = claim().await.expect("claim").pop().expect("claimed");
    assert_eq!(job.id, id);
    assert_eq!(
        store.cancel(id.as_str()).await.expect("cancel"),
        CancelOutcome::Requested
    );
    let r = Requeue {
        at: at(0),
        attempts: None,
        error: ErrorNote::Set(LastError::new("transport", "connection refused")),
    };
    store
        .requeue(&id, Submitting, job.lease_token, r, "never sent".into())
        .await
        .expect("requeue keeps the flag");
    let queued = store.job(id.as_str()).await.expect("read").expect("job");
    assert_eq!(queued.lease_until, None, "a requeued job is held by no one");
    let again = claim().await.expect("claim").pop().expect("claimed again");
    assert!(
        again.cancel_requested,
        "the cancel request survives the requeue"
    );
    let t = store
        .cancel_before_submit(&id, again.lease_token)
        .await
        .expect("the claimed job with a cancel request is cancelled, not an error");
    let j = store.job(id.as_str()).await.expect("read").expect("job");
    assert_eq!((j.state, j.lease_token), (Cancelled, t));
    assert!(
        claim().await.expect("claim").is_empty(),
        "nothing left to send"
    );
}

#[test]
fn table_agrees_with_job_rs() {
    for (verb, allowed, to) in table() {
        assert!(!allowed.is_empty(), "{verb:?}");
        for &from in allowed {
            assert!(
                from == to || from.can_transition(to),
                "{verb:?}: {from} -> {to} is not in job.rs's table"
            );
        }
    }
}

#[tokio::test]
async fn verbs_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("q.db")).expect("open");
    verb_suite(&store).await;
}

/// Code outside the store names no column: it calls verbs. `Patch` and `Transition` are private
/// to this crate (the compiler enforces that); this keeps the raw forms from coming back in
/// another guise in the crates above it (the `seedq` crate's `src/`).
#[test]
fn no_column_writes_outside_the_store() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../src");
    let mut hits = Vec::new();
    let mut dirs = vec![src];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("read file");
                for (n, line) in text.lines().enumerate() {
                    if [
                        "Patch::",
                        ".set(\"",
                        "transition_many(",
                        "store::Transition",
                    ]
                    .iter()
                    .any(|pat| line.contains(pat))
                    {
                        hits.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "column writes outside the store (add a verb in crates/seedq-store/src/verbs.rs):\n{}",
        hits.join("\n")
    );
}
