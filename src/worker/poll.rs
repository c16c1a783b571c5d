//! The poller: batch status of in-flight tasks, reschedule or finish each.
//!
//! One list request with many `filter.task_ids` answers for a whole set of due tasks; a
//! task missing from the answer gets a GET of its own. The list asks for the tier of the jobs
//! it looks for (`filter.service_tier`): without it Ark lists the `default` tier only
//! (docs/ark-api.md §14). The account allows one list call a second for the whole fleet: when the
//! shared budget has no list turn soon, GETs (20 a second) carry the batch instead, at most
//! [`MAX_GETS_PER_STEP`] of them; the rest are looked at again after one list turn. The first poll lands near the
//! expected finish (learned from recent completions of the same model, tier and shape), later
//! ones back off exponentially with full jitter up to a cap. [`apply`] is shared with the
//! callback endpoint, so a callback and a poll record a status the same way.

use crate::stage::StageError;
use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::result::{result_meta, url_expiry};
use super::{Ctx, Outcome, ms};
use crate::ark::wire::{Task, TaskStatus};
use crate::ark::{ErrorClass, ListQuery};
use crate::job::JobId;
use crate::job::{Backoff, JobState};
use crate::store::{
    Job, LastError, PollOutcome, Polled, RemoteResult, StoreError, Timestamp, now_ms,
};
use crate::tier::Tier;

/// Remote failure codes worth a new attempt: the service's fault, not the request's.
const TRANSIENT_REMOTE_CODES: [&str; 3] = [
    "InternalServiceError",
    "ServerOverloaded",
    "ServiceUnavailable",
];
/// Recent completions that predict the next one.
const HISTORY: u32 = 20;
/// How long a learned generation time is reused before the history is read again.
const HISTORY_TTL_MS: i64 = 1_000;
/// GETs one poll step sends when no list turn is free: one second of the account's GET rate,
/// so a step never outlasts a lease.
const MAX_GETS_PER_STEP: usize = 16;

/// The poll loop.
///
/// # Errors
/// Only when the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let role = super::Role::primary(&ctx, Some(ctx.poke_poll.clone()), false);
    super::stage_loop("poll", &ctx, role, shutdown, || step(&ctx)).await
}

/// When to poll a freshly submitted job first.
///
/// # Errors
/// Store failures.
pub async fn first_poll_at(ctx: &Ctx, job: &Job, now: i64) -> Result<i64, StageError> {
    let p = ctx.ops.live.poll();
    let key = format!(
        "{}|{}|{}",
        job.model,
        job.service_tier,
        job.shape.as_deref().unwrap_or("")
    );
    let cached = {
        let map = ctx.expected.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key)
            .filter(|(at, _)| now - at < HISTORY_TTL_MS)
            .map(|(_, v)| *v)
    };
    let learned = match cached {
        Some(v) => v,
        None => {
            let v = ctx
                .store
                .recent_generation_ms(&job.model, job.service_tier, job.shape.as_deref(), HISTORY)
                .await?;
            ctx.expected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, (now, v));
            v
        }
    };
    let default = if job.is_flex() {
        p.flex_first_poll_after
    } else {
        p.first_poll_after
    };
    let expected = learned.unwrap_or(ms(default));
    let mut delay = (expected as f64 * p.first_poll_fraction) as i64;
    if ctx.callbacks_on() {
        // Callbacks report the finish; polling is only the safety net.
        delay = delay.max(ms(p.callback_safety_interval));
    }
    Ok(now + delay.max(ms(p.min_interval)))
}

fn next_poll_delay(ctx: &Ctx, job: &Job) -> Duration {
    let p = ctx.ops.live.poll();
    if ctx.callbacks_on() {
        return p.callback_safety_interval;
    }
    let max = if job.is_flex() {
        p.flex_max_interval
    } else {
        p.max_interval
    };
    let b = Backoff {
        base: p.min_interval,
        max,
    };
    // Full jitter, but never below a tenth of the base: a zero wait would hammer the API.
    b.delay_random(u32::try_from(job.poll_count + 1).unwrap_or(u32::MAX), None)
        .max(p.min_interval / 10)
}

/// Polls one batch of due jobs.
///
/// # Errors
/// Store failures.
pub async fn step(ctx: &Ctx) -> Result<Outcome, StageError> {
    let lease = ctx.lease();
    // The poller never reads the frozen bodies.
    let jobs = ctx
        .store
        .claim_due_lean(
            JobState::Submitted,
            &ctx.owner,
            lease,
            ctx.cfg.ark.list_page_size,
        )
        .await?;
    if jobs.is_empty() {
        return Ok(Outcome::Idle(
            ctx.store.next_due(&[JobState::Submitted]).await?,
        ));
    }
    let (cancels, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.cancel_requested);
    for j in cancels {
        cancel_remote(ctx, j).await?;
    }
    if jobs.is_empty() {
        return Ok(Outcome::Worked);
    }
    let mut plans = Vec::with_capacity(jobs.len());
    // One list per tier: a list names the tier it looks at (module docs).
    let (flex, default): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(Job::is_flex);
    for (tier, group) in [(Tier::Default, default), (Tier::Flex, flex)] {
        if !group.is_empty() {
            poll_group(ctx, tier, group, &mut plans).await;
        }
    }
    record(ctx, plans).await?;
    Ok(Outcome::Worked)
}

/// Polls the due jobs of one tier: a list when the fleet's budget has a turn soon, else GETs.
async fn poll_group(ctx: &Ctx, tier: Tier, jobs: Vec<Job>, plans: &mut Vec<Plan>) {
    let ids: Vec<String> = jobs
        .iter()
        .filter_map(|j| j.remote_task_id.clone())
        .collect();
    let q = ListQuery {
        page_size: Some(u32::try_from(ids.len()).unwrap_or(1).max(1)),
        task_ids: ids,
        service_tier: Some(tier.to_string()),
        ..Default::default()
    };
    // Wait for a list turn at most one list spacing: one list answers for the whole batch,
    // so it beats GETs whenever it comes that soon. A list booked further ahead (the
    // reconciler's pages, other workers' polls) is not worth the wait: GETs carry the batch.
    let ark = &ctx.cfg.ark;
    let list_turn = crate::stage::reads::spacing_us(ark.list_qps, ark.rate_window);
    let patience_us = list_turn;
    let patience = Duration::from_micros(patience_us.unsigned_abs());
    let (listed, fallback): (HashMap<String, Task>, bool) = match ctx
        .ark
        .list_within(&q, patience)
        .await
    {
        Ok(resp) => (
            resp.items.into_iter().map(|t| (t.id.clone(), t)).collect(),
            false,
        ),
        Err(crate::ark::ArkError::Budget { .. }) => (HashMap::new(), true),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), jobs = jobs.len(), "batch status failed; will retry");
            let now = now_ms();
            plans.extend(jobs.iter().map(|j| reschedule_plan(ctx, j, now, None)));
            return;
        }
    };
    // After the list, which may have waited for its turn: generation times are learned from it.
    let now = now_ms();
    let mut gets = 0usize;
    for job in jobs {
        let Some(remote) = job.remote_task_id.clone() else {
            continue;
        };
        let task = match listed.get(&remote) {
            Some(t) => Some(t.clone()),
            None if fallback && gets >= MAX_GETS_PER_STEP => {
                // No list turn and this step's GETs are spent: look again after a list turn,
                // without counting a poll that did not happen.
                let at = now + (list_turn / 1000).max(1);
                plans.push(Plan {
                    polled: Polled {
                        id: job.id.clone(),
                        token: job.lease_token,
                        outcome: PollOutcome::Pending {
                            next_at: Timestamp::from_ms(at),
                            poll_count: job.poll_count,
                            remote_status: None,
                        },
                        detail: None,
                    },
                    leaves: false,
                    log: None,
                    settle: None,
                });
                continue;
            }
            // Not in the list answer (or no list): ask for it directly before concluding
            // anything.
            None => {
                gets += 1;
                match ctx.ark.get(&remote).await {
                    Ok(t) => Some(t),
                    Err(e) if e.status() == Some(404) => None,
                    Err(e) => {
                        tracing::warn!(job_id = %job.id, error = %format!("{e:#}"), "status check failed; will retry");
                        plans.push(reschedule_plan(ctx, &job, now, None));
                        continue;
                    }
                }
            }
        };
        plans.push(match task {
            Some(t) => plan(ctx, &job, &t, "poll", now),
            None => Plan::finish(
                &job,
                PollOutcome::Failed {
                    dead: false,
                    remote_status: None,
                    error: LastError::new(
                        "remote_not_found",
                        format!("ark no longer knows task {remote}"),
                    ),
                },
                "remote task not found".into(),
            ),
        });
    }
}

/// A message to log at a level once a plan's write succeeded.
type LogLine = (tracing::Level, String);

/// What to write for one job after learning its remote status.
struct Plan {
    polled: Polled,
    /// The job leaves `submitted` (a remote slot frees).
    leaves: bool,
    /// Logged once the write succeeded.
    log: Option<LogLine>,
    /// What the job's budget hold becomes once the write succeeded.
    settle: Option<Settle>,
}

/// The end of a budget hold: the billed tokens, or nothing (failed tasks are not billed).
#[derive(Clone, Copy, Debug)]
enum Settle {
    Billed(i64),
    Unbilled,
}

impl Plan {
    /// A plan that moves the job out of `submitted`.
    fn finish(job: &Job, outcome: PollOutcome, detail: String) -> Self {
        Plan {
            polled: Polled {
                id: job.id.clone(),
                token: job.lease_token,
                outcome,
                detail: Some(detail),
            },
            leaves: true,
            log: None,
            settle: None,
        }
    }

    fn settled(mut self, settle: Settle) -> Self {
        self.settle = Some(settle);
        self
    }

    fn logged(mut self, level: tracing::Level, msg: String) -> Self {
        self.log = Some((level, msg));
        self
    }
}

/// Writes a batch of plans in one transaction. A conflict means another path (a callback, a
/// poll) recorded the job first, which is fine.
async fn record(ctx: &Ctx, plans: Vec<Plan>) -> Result<(), StageError> {
    if plans.is_empty() {
        return Ok(());
    }
    let meta: Vec<(JobId, bool, bool, Option<LogLine>)> = plans
        .iter()
        .map(|p| {
            let done = p.polled.outcome.to_state() == JobState::Succeeded;
            (p.polled.id.clone(), p.leaves, done, p.log.clone())
        })
        .collect();
    let settles: Vec<Option<Settle>> = plans.iter().map(|p| p.settle).collect();
    let results = ctx
        .store
        .record_polls(plans.into_iter().map(|p| p.polled).collect())
        .await?;
    for (((id, leaves, done, log), r), settle) in meta.into_iter().zip(results).zip(settles) {
        match r {
            Ok(_) => {
                match settle {
                    Some(Settle::Billed(t)) => {
                        ctx.store.budget_commit(id.as_str(), t).await?;
                    }
                    Some(Settle::Unbilled) => {
                        ctx.store.budget_release(id.as_str()).await?;
                    }
                    None => {}
                }
                if leaves {
                    // A remote slot is free: the dispatcher need not wait for its idle tick.
                    ctx.poke_dispatch.notify_one();
                    // If it was a chain's shot, the chain moves on.
                    ctx.poke_chain.notify_one();
                }
                if done {
                    // A result to archive: the archiver need not wait for its idle tick either.
                    ctx.poke_archive.notify_one();
                }
                match log {
                    Some((tracing::Level::ERROR, m)) => tracing::error!(job_id = %id, "{m}"),
                    Some((tracing::Level::WARN, m)) => tracing::warn!(job_id = %id, "{m}"),
                    Some((_, m)) => tracing::info!(job_id = %id, "{m}"),
                    None => {}
                }
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn reschedule_plan(ctx: &Ctx, job: &Job, now: i64, status: Option<&str>) -> Plan {
    let delay = next_poll_delay(ctx, job);
    Plan {
        polled: pending(job, now + ms(delay), status),
        leaves: false,
        log: None,
        settle: None,
    }
}

/// The job stays `submitted`, due for a status check at `at` (no event).
fn pending(job: &Job, at: i64, status: Option<&str>) -> Polled {
    Polled {
        id: job.id.clone(),
        token: job.lease_token,
        outcome: PollOutcome::Pending {
            next_at: Timestamp::from_ms(at),
            poll_count: job.poll_count + 1,
            remote_status: status.map(str::to_string),
        },
        detail: None,
    }
}

async fn reschedule(ctx: &Ctx, job: &Job, at: i64, status: Option<&str>) -> Result<(), StageError> {
    match ctx.store.record_poll(pending(job, at, status)).await {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Moves a job out of `submitted`, which frees a remote slot: the dispatcher is poked so it
/// need not wait for its idle tick to fill it.
async fn transition_or_skip(
    ctx: &Ctx,
    job: &Job,
    outcome: PollOutcome,
    detail: &str,
) -> Result<bool, StageError> {
    let polled = Polled {
        id: job.id.clone(),
        token: job.lease_token,
        outcome,
        detail: Some(detail.to_string()),
    };
    match ctx.store.record_poll(polled).await {
        Ok(_) => {
            ctx.poke_dispatch.notify_one();
            ctx.poke_chain.notify_one();
            Ok(true)
        }
        // Someone else (the callback, or a poll) recorded this already.
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// How long the remote generation took, as well as we can tell when we see it done.
///
/// The finish lies between the last poll that saw the task running (`updated_at`, bumped by
/// every reschedule) and now. Without such a poll, now is only an upper bound. Learning from
/// midpoints keeps the first-poll time from drifting upwards with the polling lag.
fn generation_estimate(job: &Job, now: i64) -> i64 {
    let submitted = job.submitted_at.unwrap_or(job.created_at).ms();
    let updated = job.updated_at.ms();
    if job.poll_count > 0 && updated > submitted {
        (updated + now) / 2 - submitted
    } else {
        now - submitted
    }
}

/// The generation time to learn from a finished task: the local estimate, never more than
/// Ark's own record of it. Failed polls bump `updated_at` without seeing the task, so the
/// local midpoint can be late by whole backoff intervals; a failed poll is no observation,
/// and Ark's `updated_at - created_at` (both its clock, whole seconds, so true time + < 1 s)
/// caps the estimate so the inflation is not learned.
fn observed_generation(job: &Job, t: &Task, now: i64) -> i64 {
    let local = generation_estimate(job, now);
    if t.created_at > 0 && t.updated_at >= t.created_at {
        local.min((t.updated_at - t.created_at + 1) * 1000)
    } else {
        local
    }
}

/// Records a remote status for a job held with its current lease token (the callback path).
///
/// # Errors
/// Store failures (a conflict means another path recorded it first, and is not an error).
pub async fn apply(ctx: &Ctx, job: &Job, t: &Task, via: &str) -> Result<(), StageError> {
    record(ctx, vec![plan(ctx, job, t, via, now_ms())]).await
}

/// Decides what a remote status means for a job: reschedule, or leave `submitted`.
fn plan(ctx: &Ctx, job: &Job, t: &Task, via: &str, now: i64) -> Plan {
    // The task's `created_at` against our POST window is a reading of Ark's clock (used
    // where no `Date` header gave one; reconciliation windows are in Ark's clock).
    if let (Some(lo), Some(hi)) = (job.submit_started_at, job.submitted_at) {
        ctx.ark.note_created(t.created_at, lo.ms(), hi.ms());
    }
    match t.status {
        TaskStatus::Queued | TaskStatus::Running | TaskStatus::Unknown => {
            reschedule_plan(ctx, job, now, Some(t.status.as_str()))
        }
        TaskStatus::Succeeded => {
            let content = t.content.clone().unwrap_or_default();
            let billed = t
                .usage
                .as_ref()
                .map(|u| u.total_tokens.max(u.completion_tokens));
            let result = RemoteResult {
                at: Timestamp::from_ms(now),
                gen_ms: observed_generation(job, t, now),
                poll_count: job.poll_count + 1,
                usage_tokens: billed,
                url_expires_at: content
                    .video_url
                    .as_deref()
                    .map(|v| url_expiry(v, Timestamp::from_ms(now))),
                video_url: content.video_url,
                last_frame_url: content.last_frame_url,
                meta: result_meta(t),
            };
            let p = Plan::finish(
                job,
                PollOutcome::Succeeded(result),
                format!("remote succeeded ({via})"),
            )
            .logged(tracing::Level::INFO, format!("succeeded (via {via})"));
            // Without a usage the reservation (the estimate) stays counted: safe side.
            match billed {
                Some(b) => p.settled(Settle::Billed(b)),
                None => p,
            }
        }
        TaskStatus::Failed => {
            let (code, message) = t
                .error
                .as_ref()
                .map(|e| (e.code.clone(), e.message.clone()))
                .unwrap_or_else(|| {
                    (
                        "unknown".into(),
                        "remote task failed without an error".into(),
                    )
                });
            let transient = TRANSIENT_REMOTE_CODES.contains(&code.as_str());
            let retries_left = job.attempts <= i64::from(ctx.ops.live.poll().max_remote_retries);
            let error = LastError::new(code.clone(), message);
            if transient && retries_left {
                // Failed tasks are not billed: a new task does not pay twice.
                let delay = ctx
                    .submit_backoff()
                    .delay_random(u32::try_from(job.attempts).unwrap_or(1), None);
                Plan::finish(
                    job,
                    PollOutcome::Retry {
                        at: now + ms(delay),
                        error,
                    },
                    format!("remote failed with {code}; retrying"),
                )
                .settled(Settle::Unbilled)
                .logged(
                    tracing::Level::WARN,
                    format!("remote failure {code} is transient; resubmitting"),
                )
            } else {
                let outcome = PollOutcome::Failed {
                    dead: transient,
                    remote_status: Some("failed".into()),
                    error,
                };
                Plan::finish(job, outcome, format!("remote failed with {code} ({via})"))
                    .settled(Settle::Unbilled)
                    .logged(tracing::Level::ERROR, format!("job failed: {code}"))
            }
        }
        TaskStatus::Expired => {
            Plan::finish(job, PollOutcome::Expired, format!("remote expired ({via})"))
                .logged(tracing::Level::WARN, "expired remotely".into())
        }
        TaskStatus::Cancelled => Plan::finish(
            job,
            PollOutcome::Cancelled,
            format!("remote cancelled ({via})"),
        ),
    }
}

/// `seedq cancel` of a remote job: DELETE, then record what the API answered.
async fn cancel_remote(ctx: &Ctx, job: Job) -> Result<(), StageError> {
    let Some(remote) = job.remote_task_id.clone() else {
        return Ok(());
    };
    match ctx.ark.delete(&remote).await {
        Ok(()) => {
            transition_or_skip(
                ctx,
                &job,
                PollOutcome::Cancelled,
                "cancelled remotely (DELETE)",
            )
            .await?;
        }
        Err(e) if e.class() == ErrorClass::Rejected => {
            // A running task cannot be cancelled (the API's default semantics): let it finish.
            tracing::warn!(job_id = %job.id, error = %format!("{e:#}"), "ark refused the cancel; the task will run to the end");
            ctx.store
                .cancel_refused(&job.id, job.lease_token, now_ms(), &e.to_string())
                .await?;
        }
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %format!("{e:#}"), "cancel failed; will retry");
            reschedule(
                ctx,
                &job,
                now_ms() + ms(ctx.ops.live.poll().min_interval),
                None,
            )
            .await?;
        }
    }
    Ok(())
}
