//! Reconciliation: find the remote task of a submit whose outcome was unknown.
//!
//! A crash or timeout during the POST leaves a job in `submitting` (lease expired) or
//! `submit_unknown`. We list the model's remote tasks around the time of the POST and adopt
//! the one that matches: same seed (seedq always sends one where the model takes it), created
//! inside the window, same parameters, and not already owned by another job. With no match
//! after the grace period, policy decides: `park` (wait for an operator) or `resubmit`.

use std::collections::HashSet;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Ctx, Outcome, ms};
use crate::ark::ListQuery;
use crate::ark::wire::{CreateTaskRequest, Task};
use crate::config::AmbiguousPolicy;
use crate::job::{JobId, JobState};
use crate::store::{Job, Patch, StoreError, now_ms};

/// Slack around the POST window for clock skew (seconds).
const WINDOW_SLACK_S: i64 = 5;
/// Most list pages read for one job.
const MAX_PAGES: u32 = 20;

/// The reconcile loop.
///
/// # Errors
/// Only when the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Its due times are in the store (the hint); it only polls slowly for crashed submits.
    let role = super::Role {
        poke: None,
        idle: Some(ctx.cfg.dispatch.reconcile_interval),
        cascade: false,
    };
    super::stage_loop("reconcile", &ctx, role, shutdown, || step(&ctx)).await
}

/// Moves jobs whose submit lease expired (a crash mid-POST) to `submit_unknown`.
///
/// # Errors
/// Store failures.
pub async fn recover_stale(ctx: &Ctx) -> anyhow::Result<usize> {
    let stale = ctx
        .store
        .claim_due(JobState::Submitting, &ctx.owner, ctx.lease_ms(), 500)
        .await?;
    let n = stale.len();
    for j in stale {
        let patch = Patch::new()
            .set("next_attempt_at", now_ms())
            .clear("lease_until");
        match ctx
            .store
            .transition(
                &j.id,
                JobState::Submitting,
                j.lease_token,
                JobState::SubmitUnknown,
                patch,
                Some("submit lease expired; outcome unknown".into()),
            )
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if n > 0 {
        tracing::warn!(jobs = n, "found interrupted submits; reconciling them");
    }
    crate::ops::metrics::reconcile("recovered", n as u64);
    Ok(n)
}

/// Reconciles due `submit_unknown` jobs.
///
/// # Errors
/// Store failures; Ark failures are retried on the next round.
pub async fn step(ctx: &Ctx) -> anyhow::Result<Outcome> {
    // Flex jobs whose deadline passed while queued locally expire here, without an API call.
    let expired = ctx.store.expire_overdue().await?;
    if !expired.is_empty() {
        tracing::warn!(
            jobs = expired.len(),
            "flex jobs expired before they could be submitted"
        );
    }
    let stale = recover_stale(ctx).await?;
    let jobs = ctx
        .store
        .claim_due(JobState::SubmitUnknown, &ctx.owner, ctx.lease_ms(), 20)
        .await?;
    if jobs.is_empty() {
        return Ok(if stale > 0 {
            Outcome::Worked
        } else {
            Outcome::Idle(
                ctx.store
                    .next_due(&[JobState::SubmitUnknown, JobState::Submitting])
                    .await?,
            )
        });
    }
    for job in jobs {
        let span =
            tracing::info_span!("job", job_id = %job.id, model = %job.model, stage = "reconcile");
        reconcile_one(ctx, job).instrument(span).await?;
    }
    Ok(Outcome::Worked)
}

async fn reconcile_one(ctx: &Ctx, job: Job) -> anyhow::Result<()> {
    let now = now_ms();
    let token = job.lease_token;
    let retry_at = now + ms(ctx.cfg.dispatch.reconcile_interval);
    let found = match find_remote(ctx, &job).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "listing remote tasks failed; will retry");
            crate::ops::metrics::reconcile("list_failed", 1);
            return look_again_at(ctx, &job, retry_at).await;
        }
    };
    if let Some(task) = found {
        tracing::info!(remote_id = %task.id, "adopted the remote task of an ambiguous submit");
        crate::ops::metrics::reconcile("adopted", 1);
        let patch = Patch::new()
            .set("remote_task_id", task.id.clone())
            .set("remote_status", task.status.as_str().to_string())
            .set("submitted_at", task.created_at * 1000)
            .set("next_attempt_at", now);
        ctx.store
            .transition(
                &job.id,
                JobState::SubmitUnknown,
                token,
                JobState::Submitted,
                patch,
                Some(format!("reconciled: adopted {}", task.id)),
            )
            .await?;
        ctx.poke_poll.notify_one();
        return Ok(());
    }
    let started = job.submit_started_at.unwrap_or(job.updated_at);
    if now - started < ms(ctx.cfg.dispatch.reconcile_grace) {
        crate::ops::metrics::reconcile("pending", 1);
        return look_again_at(ctx, &job, retry_at).await;
    }
    match ctx.cfg.dispatch.on_ambiguous_submit {
        AmbiguousPolicy::Resubmit => {
            tracing::warn!("no remote task found after the grace period; resubmitting (policy)");
            crate::ops::metrics::reconcile("resubmitted", 1);
            // Settled: no task was made, so its budget hold goes back (the resubmit
            // reserves again).
            super::budget::release(ctx, &job).await?;
            ctx.store
                .transition(
                    &job.id,
                    JobState::SubmitUnknown,
                    token,
                    JobState::Queued,
                    Patch::new().set("next_attempt_at", now),
                    Some("no remote task found; resubmitting by policy".into()),
                )
                .await?;
            ctx.poke_dispatch.notify_one();
        }
        AmbiguousPolicy::Park => {
            // Parked: look again rarely, in case the task shows up late; an operator decides.
            if job.last_error_code.as_deref() != Some("parked") {
                crate::ops::metrics::reconcile("parked", 1);
                tracing::error!(
                    "no remote task found after the grace period; parked for an operator (seedq retry or cancel)"
                );
            }
            ctx.store
                .transition(
                    &job.id,
                    JobState::SubmitUnknown,
                    token,
                    JobState::SubmitUnknown,
                    Patch::new()
                        .set(
                            "next_attempt_at",
                            now + 10 * ms(ctx.cfg.dispatch.reconcile_interval),
                        )
                        .set("last_error_code", "parked".to_string())
                        .set(
                            "last_error_message",
                            "submit outcome unknown and no matching remote task found; parked"
                                .to_string(),
                        ),
                    (job.last_error_code.as_deref() != Some("parked"))
                        .then(|| "parked: no matching remote task".to_string()),
                )
                .await?;
        }
    }
    Ok(())
}

/// Leaves an ambiguous submit for the next round at `at`.
async fn look_again_at(ctx: &Ctx, job: &Job, at: i64) -> anyhow::Result<()> {
    ctx.store
        .update(
            &job.id,
            JobState::SubmitUnknown,
            job.lease_token,
            Patch::new().set("next_attempt_at", at),
        )
        .await?;
    Ok(())
}

/// Adopts a remote id learned after the job's lease was taken over.
///
/// # Errors
/// Store failures.
pub async fn adopt_known(ctx: &Ctx, id: &JobId, remote_id: &str, now: i64) -> anyhow::Result<()> {
    let Some(job) = ctx.store.job(id.as_str()).await? else {
        return Ok(());
    };
    if job.state == JobState::SubmitUnknown {
        let patch = Patch::new()
            .set("remote_task_id", remote_id.to_string())
            .set("remote_status", "queued".to_string())
            .set("submitted_at", now)
            .set("next_attempt_at", now);
        ctx.store
            .transition(
                &job.id,
                JobState::SubmitUnknown,
                job.lease_token,
                JobState::Submitted,
                patch,
                Some(format!("late create response: adopted {remote_id}")),
            )
            .await?;
        crate::ops::metrics::reconcile("adopted_late", 1);
        ctx.poke_poll.notify_one();
    } else {
        tracing::error!(state = %job.state, remote_id, "create succeeded after the job moved on; the remote task is recorded in the log only");
    }
    Ok(())
}

/// Lists the model's tasks around the POST and returns the match, if exactly one.
async fn find_remote(ctx: &Ctx, job: &Job) -> anyhow::Result<Option<Task>> {
    let req: CreateTaskRequest = serde_json::from_str(&job.request_json)?;
    let started_s = job.submit_started_at.unwrap_or(job.updated_at) / 1000;
    let lo = started_s - WINDOW_SLACK_S;
    let hi = started_s
        + ctx.cfg.ark.request_timeout.as_secs() as i64
        + ctx.lease_ms() / 1000
        + WINDOW_SLACK_S;
    let mut candidates = Vec::new();
    for page in 1..=MAX_PAGES {
        let q = ListQuery {
            page_num: Some(page),
            page_size: Some(ctx.cfg.ark.list_page_size),
            model: Some(job.model.clone()),
            ..Default::default()
        };
        let resp = ctx.ark.list(&q).await?;
        let n = resp.items.len();
        let mut older = false;
        for t in resp.items {
            if t.created_at < lo {
                older = true;
                continue;
            }
            if t.created_at <= hi && matches(job, &req, &t) {
                candidates.push(t);
            }
        }
        // Items come newest first: once we see tasks older than the window, stop.
        if older || n < ctx.cfg.ark.list_page_size as usize {
            break;
        }
    }
    // Tasks other jobs already own are not ours.
    let mut owned = HashSet::new();
    for c in &candidates {
        if ctx.store.job_by_remote(&c.id).await?.is_some() {
            owned.insert(c.id.clone());
        }
    }
    candidates.retain(|c| !owned.contains(&c.id));
    // With a seed the match is unique; without one, adopt only an unambiguous match.
    Ok(if candidates.len() == 1 {
        candidates.pop()
    } else {
        None
    })
}

/// Whether a remote task could be the one this job created.
fn matches(job: &Job, req: &CreateTaskRequest, t: &Task) -> bool {
    let same = |want: &Option<String>, got: &Option<String>| match (want, got) {
        (Some(w), Some(g)) => w == g || w == "adaptive",
        _ => true,
    };
    let same_num = |want: Option<i64>, got: Option<i64>| match (want, got) {
        (Some(w), Some(g)) => w == g,
        _ => true,
    };
    let tier = if job.is_flex() { "flex" } else { "default" };
    job.seed.is_none_or(|s| t.seed == Some(s))
        && same(&req.resolution, &t.resolution)
        && same(&req.ratio, &t.ratio)
        && same_num(req.duration, t.duration)
        && same_num(req.frames, t.frames)
        && t.service_tier.as_deref().is_none_or(|s| s == tier)
}
