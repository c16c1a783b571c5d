//! Reconciliation: find the remote task of a submit whose outcome was unknown, by proof.
//!
//! A crash or timeout during the POST leaves a job in `submitting` (lease expired) or
//! `submit_unknown`. Ark's create has no idempotency key, so seedq sends its own identity
//! with every create and reads it back: when the user set no `safety_identifier`, seedq sends
//! `seedq-<job id>` there (docs/ark-api.md §2.1; GET and list items echo it, §3.1). A task carrying
//! that tag *is* this job's task, whatever its prompt, seed or creation time; no task carrying
//! it (after a complete listing, and once the POST can no longer be in flight) means the
//! create never happened, and the job is resent at once.
//!
//! When the user set their own `safety_identifier`, seedq cannot tag the create. Then the
//! echoed fields (model, `safety_identifier`, seed, shape, tier) are the identity, and the
//! dispatcher never has two unresolved creates with the same such key
//! (`Store::claim_for_submit_tier`), so a single unowned match inside the window (in Ark's
//! clock) is the job's own. Two or more matches cannot be told apart: the job is parked,
//! holding no slot, and an operator picks with `seedq reconcile --dry-run` and `seedq adopt`.
//!
//! Duplicates (a paused worker that wakes and POSTs after another took its job over) carry
//! the same tag: the extra task is cancelled with DELETE while it is still queued.
//!
//! # What a listing proves
//! A list read in full proves a task's absence only for what it asked: the model, the tier
//! (`filter.service_tier`; without it Ark lists the `default` tier only, docs/ark-api.md §14) and
//! the last 7 days. Every listing here names the job's model and tier, and one listing serves
//! every claimed job of that (model, tier): the account allows one list call a second.
//! A task may also show less than it is: a live BytePlus answer for a running task carried
//! only `id`, `model`, `status`, `created_at` and `updated_at` (docs/ark-api.md §14). Such a bare
//! task inside the job's window may be the job's own; it is no proof either way, so the job
//! waits until the task shows its fields (a finished task carries them) or until its
//! execution window has closed. Only then does policy decide, and `park` never creates again.

use crate::stage::StageError;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Ctx, Outcome, ms};
use crate::ark::wire::{CreateTaskRequest, Task, TaskStatus};
use crate::ark::{ArkError, ErrorClass, ListQuery};
use crate::config::AmbiguousPolicy;
use crate::job::{JobId, JobState};
use crate::store::{Adopted, ErrorNote, Job, LastError, Requeue, StoreError, Timestamp, now_ms};
use crate::tier::Tier;

/// Slack around the POST window (seconds), on top of the measured clock skew.
const WINDOW_SLACK_S: i64 = 5;
/// Most list pages read for one job; a listing cut short proves nothing about absence.
const MAX_PAGES: u32 = 50;
/// Page size of reconciliation listings: the largest Ark takes (docs/ark-api.md §4, `page_size`
/// in [1, 500]), so a complete listing of 25 000 tasks of a model takes 50 calls.
const SCAN_PAGE_SIZE: u32 = 500;
/// How far back a listing reaches: Ark lists only the last 7 days (docs/ark-api.md §4, §14).
const LIST_HORIZON_MS: i64 = 7 * 24 * 3_600 * 1_000;
/// Prefix of the identity seedq sends as `safety_identifier`.
pub const TAG_PREFIX: &str = "seedq-";
/// `last_error_code` of a job parked for an operator.
pub const PARKED: &str = crate::store::PARKED;
/// `last_error_code` of a job whose submit lease ran out mid-POST.
const LEASE_EXPIRED: &str = "lease_expired";
/// `last_error_code` of a job whose lease holder is known dead (set by the store).
pub const HOLDER_DEAD: &str = "holder_dead";

/// The identity tag of a job: sent as `safety_identifier`, echoed by GET and list.
pub fn identity_tag(id: &JobId) -> String {
    format!("{TAG_PREFIX}{id}")
}

/// The `safety_identifier` the user put in the frozen body, if any.
pub fn user_safety_identifier(request_json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(request_json).ok()?;
    v.get("safety_identifier")?.as_str().map(str::to_string)
}

/// The tag this job's creates carry; `None` when the user's own `safety_identifier` is sent.
pub fn tag_of(job: &Job) -> Option<String> {
    user_safety_identifier(&job.request_json)
        .is_none()
        .then(|| identity_tag(&job.id))
}

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
pub async fn recover_stale(ctx: &Ctx) -> Result<usize, StageError> {
    let stale = ctx
        .store
        .claim_due(JobState::Submitting, &ctx.owner, ctx.lease(), 500)
        .await?;
    let n = stale.len();
    for j in stale {
        // The code says the answer never came (unlike a 5xx): the POST may have been in
        // flight until the lease ran out.
        let dead = j.last_error_code.as_deref() == Some(HOLDER_DEAD);
        let why = LastError::new(
            if dead { HOLDER_DEAD } else { LEASE_EXPIRED },
            if dead {
                "the process sending the create died"
            } else {
                "the submit lease expired during the create"
            },
        );
        match ctx
            .store
            .mark_unknown(
                &j.id,
                j.lease_token,
                now_ms(),
                why,
                "submit lease expired; outcome unknown".into(),
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
    crate::metrics::reconcile("recovered", n as u64);
    Ok(n)
}

/// Reconciles due `submit_unknown` jobs.
///
/// # Errors
/// Store failures; Ark failures are retried on the next round.
pub async fn step(ctx: &Ctx) -> Result<Outcome, StageError> {
    // The sweeps run on one worker of a fleet (worker/fleet.rs); every worker reconciles the
    // jobs it claims below.
    let sweeps = ctx.fleet.leads(super::fleet::RECONCILE);
    // Flex jobs whose deadline passed while queued locally expire here, without an API call.
    let expired = if sweeps {
        ctx.store.expire_overdue().await?
    } else {
        Vec::new()
    };
    if !expired.is_empty() {
        tracing::warn!(
            jobs = expired.len(),
            "flex jobs expired before they could be submitted"
        );
    }
    let stale = if sweeps { recover_stale(ctx).await? } else { 0 };
    // Duplicates whose DELETE got no answer stay queued and billable until Ark answers one.
    let open_cancels = retry_cancels(ctx).await;
    if open_cancels > 0 {
        tracing::warn!(
            tasks = open_cancels,
            "duplicate remote tasks still wait for their cancel"
        );
    }
    let jobs = ctx
        .store
        .claim_due(JobState::SubmitUnknown, &ctx.owner, ctx.lease(), 20)
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
    // One listing per (model, tier) for all of its claimed jobs (module docs).
    let mut listings: std::collections::HashMap<(String, Tier), Option<Listing>> =
        std::collections::HashMap::new();
    for job in jobs {
        let key = (job.model.clone(), job.service_tier);
        if !listings.contains_key(&key) {
            let listing = match list_all(ctx, &key.0, key.1).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(model = %key.0, tier = %key.1, error = %e.report(), "listing remote tasks failed; will retry");
                    crate::metrics::reconcile("list_failed", 1);
                    None
                }
            };
            listings.insert(key.clone(), listing);
        }
        let listing = listings.get(&key).and_then(Option::as_ref);
        let span =
            tracing::info_span!("job", job_id = %job.id, model = %job.model, stage = "reconcile");
        reconcile_one(ctx, job, listing).instrument(span).await?;
    }
    Ok(Outcome::Worked)
}

/// When the job's create POST started (local ms) and whether it certainly ended by an
/// answer: a 5xx code means the server answered; `holder_dead` means the POSTing process is
/// gone, and its connection with it (store `release_leases_of`).
fn post_of(job: &Job) -> (i64, bool) {
    let answered = job
        .last_error_code
        .as_deref()
        .is_some_and(|c| !matches!(c, "transport" | LEASE_EXPIRED | PARKED));
    (
        job.submit_started_at.unwrap_or(job.updated_at).ms(),
        answered,
    )
}

/// Whether a complete listing proves that a create POSTed at `started` (local ms) never made
/// a task. The listing shows only tasks created before it was read, so the POST must have
/// ended by `listing.listed_at` (an answer, or the client's timeout passed by then), not
/// merely by now; and the listing's 7 days must reach back to the POST's window.
fn listing_proves_absence(
    listing: &Listing,
    started: i64,
    answered: bool,
    timeout_ms: i64,
) -> bool {
    let post_over = answered || listing.listed_at >= started + timeout_ms + 1_000;
    let covered = started - WINDOW_SLACK_S * 1_000 >= listing.listed_at - LIST_HORIZON_MS;
    listing.complete && post_over && covered
}

async fn reconcile_one(ctx: &Ctx, job: Job, listing: Option<&Listing>) -> Result<(), StageError> {
    let now = now_ms();
    let token = job.lease_token;
    let retry_at = now + ms(ctx.cfg.dispatch.reconcile_interval);
    let Some(listing) = listing else {
        return look_again_at(ctx, &job, retry_at).await;
    };
    let scan = match scan_in(ctx, &job, listing).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e.report(), "reading the job for reconciliation failed; will retry");
            return look_again_at(ctx, &job, retry_at).await;
        }
    };
    let mut candidates = scan.candidates;
    if scan.tagged && !candidates.is_empty() {
        // Every candidate carries this job's tag: all are its own. Keep the most advanced,
        // cancel the others while they are still queued.
        candidates.sort_by_key(|t| std::cmp::Reverse(progress(t.status)));
        let keep = candidates.remove(0);
        for extra in &candidates {
            // One that gets no answer yet is kept for the next rounds (`retry_cancels`).
            cancel_duplicate(ctx, &extra.id, Some(extra.status)).await;
        }
        return adopt(ctx, &job, &keep, "reconciled: adopted").await;
    }
    if !scan.tagged && candidates.len() == 1 {
        let keep = candidates.remove(0);
        return adopt(ctx, &job, &keep, "reconciled: adopted").await;
    }
    if !scan.tagged && candidates.len() > 1 {
        let ids: Vec<&str> = candidates.iter().map(|t| t.id.as_str()).collect();
        let reason = format!(
            "{} remote tasks match and none carries a seedq identity (the job sets its own safety_identifier): {}; pick one with `seedq adopt {} TASK_ID`",
            ids.len(),
            ids.join(", "),
            job.id
        );
        return park(ctx, &job, &reason).await;
    }
    // A bare task in the window may be this job's: no proof either way until it shows its
    // fields or its execution window closes (module docs).
    let hidden_until = scan
        .hidden
        .iter()
        .map(|t| {
            t.created_at
                .saturating_mul(1000)
                .saturating_add(scan.expires_ms)
        })
        .max();
    if let Some(until) = hidden_until
        && now < until
    {
        let ids: Vec<&str> = scan.hidden.iter().map(|t| t.id.as_str()).collect();
        tracing::info!(tasks = %ids.join(", "), "remote tasks in this job's window show no identity yet; waiting until they do");
        crate::metrics::reconcile("identity_pending", 1);
        return look_again_at(ctx, &job, retry_at).await;
    }
    // No candidate. With a complete listing after the POST ended, that is proof the create
    // never happened: resend (the identity makes a late duplicate detectable).
    let (started, answered) = post_of(&job);
    let absent =
        listing_proves_absence(listing, started, answered, ms(ctx.cfg.ark.request_timeout));
    if absent && scan.hidden.is_empty() {
        if job.attempts >= i64::from(ctx.cfg.dispatch.max_attempts) {
            tracing::error!(
                attempts = job.attempts,
                "no create of this job reached Ark; attempts exhausted"
            );
            super::budget::release(ctx, &job).await?;
            ctx.store
                .mark_dead(
                    &job.id,
                    JobState::SubmitUnknown,
                    token,
                    None,
                    format!(
                        "attempts exhausted: {} creates, none made a task ({})",
                        job.attempts,
                        job.last_error_message.as_deref().unwrap_or("no answer")
                    ),
                )
                .await?;
            return Ok(());
        }
        let what = tag_of(&job).map_or_else(
            || "the job's identity key (serialised)".to_string(),
            |t| format!("identity {t}"),
        );
        tracing::warn!(identity = %what, "no remote task carries this job's identity; never created, resending");
        crate::metrics::reconcile("resent", 1);
        // Proven never created, so never billed: the budget hold goes back (the resend
        // reserves again).
        super::budget::release(ctx, &job).await?;
        ctx.store
            .requeue(
                &job.id,
                JobState::SubmitUnknown,
                token,
                Requeue {
                    at: Timestamp::from_ms(now),
                    attempts: None,
                    error: ErrorNote::Clear,
                },
                format!("no remote task with {what} exists: never created; resending"),
            )
            .await?;
        ctx.poke_dispatch.notify_one();
        return Ok(());
    }
    if now - started < ms(ctx.cfg.dispatch.reconcile_grace) {
        crate::metrics::reconcile("pending", 1);
        return look_again_at(ctx, &job, retry_at).await;
    }
    // The listing could not be completed for the whole grace period: nothing is proven.
    match ctx.cfg.dispatch.on_ambiguous_submit {
        AmbiguousPolicy::Resubmit => {
            tracing::warn!("no complete listing after the grace period; resubmitting (policy)");
            crate::metrics::reconcile("resubmitted", 1);
            // Settled: no task was made, so its budget hold goes back (the resubmit
            // reserves again).
            super::budget::release(ctx, &job).await?;
            ctx.store
                .requeue(
                    &job.id,
                    JobState::SubmitUnknown,
                    token,
                    Requeue {
                        at: Timestamp::from_ms(now),
                        attempts: None,
                        error: ErrorNote::Keep,
                    },
                    "no remote task found; resubmitting by policy".into(),
                )
                .await?;
            ctx.poke_dispatch.notify_one();
            Ok(())
        }
        AmbiguousPolicy::Park if !scan.hidden.is_empty() => {
            let ids: Vec<&str> = scan.hidden.iter().map(|t| t.id.as_str()).collect();
            let reason = format!(
                "remote tasks {} in this job's window never showed an identity; if one is this job's, `seedq adopt {} TASK_ID`",
                ids.join(", "),
                job.id
            );
            park(ctx, &job, &reason).await
        }
        AmbiguousPolicy::Park => {
            park(
                ctx,
                &job,
                "the remote task list could not be read completely during the grace period",
            )
            .await
        }
    }
}

/// How far a task has come: the most advanced duplicate is the one kept.
fn progress(s: TaskStatus) -> u8 {
    match s {
        TaskStatus::Succeeded => 4,
        TaskStatus::Running | TaskStatus::Unknown => 3,
        TaskStatus::Queued => 2,
        TaskStatus::Failed | TaskStatus::Expired => 1,
        TaskStatus::Cancelled => 0,
    }
}

/// Records `task` as the job's remote task.
async fn adopt(ctx: &Ctx, job: &Job, task: &Task, what: &str) -> Result<(), StageError> {
    // The id is in the log before the write, so a failed write cannot lose it.
    tracing::warn!(remote_id = %task.id, "adopting the remote task of an ambiguous submit");
    crate::metrics::reconcile("adopted", 1);
    let recorded = record_task(
        ctx,
        job,
        &task.id,
        task.status.as_str(),
        Timestamp::from_ms(task.created_at.saturating_mul(1000)),
        Timestamp::now(),
        format!("{what} {}", task.id),
    )
    .await?;
    if !recorded {
        // Another path (the late create answer) recorded it first.
        return Ok(());
    }
    ctx.poke_poll.notify_one();
    Ok(())
}

/// Records `remote_id` as the task of a `submit_unknown` job, which becomes `submitted` and
/// due for a poll at `due`. False when another path recorded an outcome first (the lease
/// token moved on), so each caller decides what a lost race means for it.
async fn record_task(
    ctx: &Ctx,
    job: &Job,
    remote_id: &str,
    status: &str,
    submitted_at: Timestamp,
    due: Timestamp,
    reason: String,
) -> Result<bool, StoreError> {
    let task = Adopted {
        remote_id: remote_id.to_string(),
        remote_status: status.to_string(),
        submitted_at,
        next_poll_at: due,
    };
    match ctx
        .store
        .adopt_task(&job.id, job.lease_token, task, reason)
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Parks a job for an operator. A parked job holds no slot and blocks no other job
/// (except, for an untagged job, later creates with the same identity key).
async fn park(ctx: &Ctx, job: &Job, reason: &str) -> Result<(), StageError> {
    let first = job.last_error_code.as_deref() != Some(PARKED);
    if first {
        crate::metrics::reconcile("parked", 1);
        tracing::error!(reason, "submit outcome unproven; parked for an operator");
    }
    let until = now_ms() + 10 * ms(ctx.cfg.dispatch.reconcile_interval);
    ctx.store
        .park(&job.id, job.lease_token, until, reason, first)
        .await?;
    Ok(())
}

/// Leaves an ambiguous submit for the next round at `at`.
async fn look_again_at(ctx: &Ctx, job: &Job, at: i64) -> Result<(), StageError> {
    ctx.store.recheck_at(&job.id, job.lease_token, at).await?;
    Ok(())
}

/// Whether Ark's answer to a DELETE settles a duplicate for good: done, or refused by the
/// task's state or existence (404 gone, 409 `InvalidAction.RunningTaskDeletion` for a running
/// task, docs/ark-api.md §5, §14). No turn in the read budget (nothing was sent), a throttle, a
/// 5xx or a lost connection settle nothing: the task may still be queued and would be billed.
pub fn cancel_settled(r: &Result<(), ArkError>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => e.class() == ErrorClass::Rejected,
    }
}

/// Cancels a duplicate task of a job (a second create for the same identity). A queued task
/// that is cancelled is never run nor billed; a running one can only be logged. A DELETE
/// that got no answer keeps the task in `ctx.pending_cancels`, which every reconcile round
/// tries again ([`retry_cancels`]). True when the duplicate is settled.
pub async fn cancel_duplicate(ctx: &Ctx, remote_id: &str, status: Option<TaskStatus>) -> bool {
    if matches!(
        status,
        Some(TaskStatus::Cancelled | TaskStatus::Failed | TaskStatus::Expired)
    ) {
        forget_cancel(ctx, remote_id);
        return true;
    }
    let r = ctx.ark.delete(remote_id).await;
    let settled = cancel_settled(&r);
    match r {
        Ok(()) => {
            crate::metrics::reconcile("duplicate_cancelled", 1);
            tracing::warn!(remote_id, "cancelled a duplicate remote task of this job");
        }
        Err(e) if settled => {
            crate::metrics::reconcile("duplicate_kept", 1);
            tracing::error!(remote_id, error = %format!("{e:#}"), "ark refused to cancel a duplicate remote task of this job");
        }
        Err(e) => {
            crate::metrics::reconcile("duplicate_retry", 1);
            tracing::warn!(remote_id, error = %format!("{e:#}"), "cancelling a duplicate remote task got no answer; trying again next round");
        }
    }
    if settled {
        forget_cancel(ctx, remote_id);
    } else {
        pending_cancels(ctx).insert(remote_id.to_string());
    }
    settled
}

fn pending_cancels(ctx: &Ctx) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
    // A poisoned lock only means a panic elsewhere while it was held; the set is still whole.
    ctx.pending_cancels
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn forget_cancel(ctx: &Ctx, remote_id: &str) {
    pending_cancels(ctx).remove(remote_id);
}

/// Sends again every duplicate DELETE that got no answer; returns how many are still open.
pub async fn retry_cancels(ctx: &Ctx) -> usize {
    let ids: Vec<String> = pending_cancels(ctx).iter().cloned().collect();
    for id in &ids {
        cancel_duplicate(ctx, id, None).await;
    }
    pending_cancels(ctx).len()
}

/// Handles a create answer that arrived after the job's lease was taken over.
///
/// # Errors
/// Store failures.
pub async fn adopt_known(
    ctx: &Ctx,
    id: &JobId,
    remote_id: &str,
    now: i64,
) -> Result<(), StageError> {
    let Some(job) = ctx.store.job(id.as_str()).await? else {
        return Ok(());
    };
    if job.state == JobState::SubmitUnknown {
        let reason = format!("late create response: adopted {remote_id}");
        let at = Timestamp::from_ms(now);
        if record_task(ctx, &job, remote_id, "queued", at, at, reason).await? {
            crate::metrics::reconcile("adopted_late", 1);
            ctx.poke_poll.notify_one();
            return Ok(());
        }
    }
    let job = ctx.store.job(id.as_str()).await?.unwrap_or(job);
    if job.remote_task_id.as_deref() == Some(remote_id) {
        return Ok(());
    }
    // The job was taken over (and possibly sent again) while this create was in flight:
    // this task is the extra one. It was created a moment ago, so it is still queued.
    tracing::warn!(state = %job.state, remote_id, "create answered after the job was taken over; cancelling this duplicate");
    cancel_duplicate(ctx, remote_id, None).await;
    Ok(())
}

/// Cancels this job's tagged tasks other than the one it records: after a create whose
/// answer was lost came back to a job another worker had taken over. A job with no task
/// recorded yet is left to reconciliation, which adopts one and cancels the rest.
///
/// # Errors
/// Store failures (Ark failures are logged: the sweep is best effort).
pub async fn sweep_duplicates(ctx: &Ctx, id: &JobId) -> Result<(), StageError> {
    let Some(job) = ctx.store.job(id.as_str()).await? else {
        return Ok(());
    };
    let Some(kept) = job.remote_task_id.clone() else {
        return Ok(());
    };
    if tag_of(&job).is_none() {
        return Ok(());
    }
    let listed = list_all(ctx, &job.model, job.service_tier).await;
    match async { scan_in(ctx, &job, &listed?).await }.await {
        Ok(s) => {
            for t in s.candidates.iter().filter(|t| t.id != kept) {
                cancel_duplicate(ctx, &t.id, Some(t.status)).await;
            }
        }
        Err(e) => {
            tracing::error!(error = %e.report(), "could not look for a duplicate task")
        }
    }
    Ok(())
}

/// What a listing found for one job.
#[derive(Debug, Default)]
pub struct Scan {
    /// Tasks that may be this job's and no other job owns.
    pub candidates: Vec<Task>,
    /// Every page of the listing was read.
    pub complete: bool,
    /// The job's creates carry seedq's identity tag.
    pub tagged: bool,
    /// Unowned tasks inside the job's window that show no identity (only id, model, status
    /// and times): possibly this job's, unprovable until they show their fields.
    pub hidden: Vec<Task>,
    /// The job's `execution_expires_after` (ms): how long a hidden task may stay unfinished.
    pub expires_ms: i64,
}

/// Every task of one model and tier that Ark lists, read page by page.
#[derive(Debug, Default)]
pub struct Listing {
    pub items: Vec<Task>,
    /// Every page was read: absence from `items` is proof for this model, tier and the 7
    /// days before `listed_at`, nothing more.
    pub complete: bool,
    /// Local time (ms) taken before page 1 was asked for: the listing shows no task created
    /// after it, so it proves nothing about a create that could still come later.
    pub listed_at: i64,
}

/// Lists `model`'s tasks of `tier` (`default` or `flex`) in full, up to [`MAX_PAGES`].
///
/// # Errors
/// Ark failures.
pub async fn list_all(ctx: &Ctx, model: &str, tier: Tier) -> Result<Listing, StageError> {
    let page_size = SCAN_PAGE_SIZE;
    let listed_at = now_ms();
    let mut items = Vec::new();
    let mut seen = 0i64;
    for page in 1..=MAX_PAGES {
        let q = ListQuery {
            page_num: Some(page),
            page_size: Some(page_size),
            model: Some(model.to_string()),
            // Ark lists the `default` tier unless told otherwise (docs/ark-api.md §14).
            service_tier: Some(tier.to_string()),
            ..Default::default()
        };
        let resp = ctx.ark.list(&q).await?;
        let n = resp.items.len();
        seen += n as i64;
        items.extend(resp.items);
        // No ordering is assumed: the listing ends at a short page or at `total`.
        if n < page_size as usize || (resp.total > 0 && seen >= resp.total) {
            return Ok(Listing {
                items,
                complete: true,
                listed_at,
            });
        }
    }
    Ok(Listing {
        items,
        complete: false,
        listed_at,
    })
}

/// Whether a task shows none of the fields a create echoes (seed, shape, tier, identity):
/// only id, model, status and times, as a live BytePlus answer for a running task did.
pub fn is_bare(t: &Task) -> bool {
    t.safety_identifier.is_none()
        && t.seed.is_none()
        && t.resolution.is_none()
        && t.ratio.is_none()
        && t.duration.is_none()
        && t.frames.is_none()
        && t.service_tier.is_none()
        && t.execution_expires_after.is_none()
}

/// Lists the job's model and tier and keeps the tasks that are provably (tagged) or possibly
/// (untagged, inside the window in Ark's clock) this job's.
///
/// # Errors
/// Ark or store failures.
pub async fn scan(ctx: &Ctx, job: &Job) -> Result<Scan, StageError> {
    let listing = list_all(ctx, &job.model, job.service_tier).await?;
    scan_in(ctx, job, &listing).await
}

/// [`scan`] over a listing already read.
///
/// # Errors
/// Store failures, or a frozen body that does not parse.
pub async fn scan_in(ctx: &Ctx, job: &Job, listing: &Listing) -> Result<Scan, StageError> {
    let req: CreateTaskRequest = serde_json::from_str(&job.request_json)?;
    let tag = tag_of(job);
    // The window is in Ark's clock: shift the local POST time by the measured skew.
    let skew_s = ctx.ark.clock_skew_ms().unwrap_or(0) / 1000;
    let started_s = job.submit_started_at.unwrap_or(job.updated_at).secs() + skew_s;
    let lo = started_s - WINDOW_SLACK_S;
    let hi = started_s
        + ctx.cfg.ark.request_timeout.as_secs() as i64
        + ctx.lease().as_secs() as i64
        + WINDOW_SLACK_S;
    // Tasks this job had before (an earlier attempt that failed) are not this attempt's.
    let earlier: Vec<String> = ctx
        .store
        .events(job.id.as_str())
        .await?
        .into_iter()
        .filter_map(|e| e.detail)
        .collect();
    let mut found = Vec::new();
    let mut bare = Vec::new();
    for t in &listing.items {
        let in_window = t.created_at >= lo && t.created_at <= hi;
        let ours = match &tag {
            Some(tag) => t.safety_identifier.as_deref() == Some(tag.as_str()),
            None => in_window && !is_bare(t) && matches(job, &req, t),
        };
        let finished_before = matches!(
            t.status,
            TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Expired
        ) && earlier.iter().any(|d| d.contains(&t.id));
        if finished_before {
            continue;
        }
        if ours {
            found.push(t.clone());
        } else if in_window && is_bare(t) {
            bare.push(t.clone());
        }
    }
    let mut candidates = Vec::new();
    for c in found {
        match ctx.store.job_by_remote(&c.id).await? {
            Some(owner) if owner.id != job.id => {}
            _ => candidates.push(c),
        }
    }
    let mut hidden = Vec::new();
    for c in bare {
        if ctx.store.job_by_remote(&c.id).await?.is_none() {
            hidden.push(c);
        }
    }
    let expires_s = req
        .execution_expires_after
        .unwrap_or(crate::request::DEFAULT_EXPIRES_AFTER);
    Ok(Scan {
        candidates,
        complete: listing.complete,
        tagged: tag.is_some(),
        hidden,
        // Past the execution window, plus the slack of Ark's whole-second clock.
        expires_ms: expires_s
            .saturating_add(WINDOW_SLACK_S)
            .saturating_mul(1000),
    })
}

/// Whether a remote task could be the one this job created, by every field Ark echoes.
pub fn matches(job: &Job, req: &CreateTaskRequest, t: &Task) -> bool {
    let same = |want: &Option<String>, got: &Option<String>| match (want, got) {
        (Some(w), Some(g)) => w == g || w == "adaptive",
        _ => true,
    };
    let same_num = |want: Option<i64>, got: Option<i64>| match (want, got) {
        (Some(w), Some(g)) => w == g,
        _ => true,
    };
    // Ark's echo stays the raw string of the wire type: a value seedq does not know is simply
    // not this job's tier (a mismatch, as before), not an error that stops reconciliation.
    let tier = job.service_tier.as_str();
    job.seed.is_none_or(|s| t.seed == Some(s))
        && req.safety_identifier == t.safety_identifier
        && same(&req.resolution, &t.resolution)
        && same(&req.ratio, &t.ratio)
        && same_num(req.duration, t.duration)
        && same_num(req.frames, t.frames)
        && t.service_tier.as_deref().is_none_or(|s| s == tier)
}

/// What an operator's adoption (`seedq adopt`, the dashboard's Adopt button) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptOutcome {
    /// The task is now the job's; the job is `submitted` and polled as usual.
    Adopted { job: String, task: String },
    /// Nothing changed; the reason names what failed the check.
    Refused(String),
}

/// Records `task_id` as the remote task of the ambiguous job `job_id`, after checking that
/// the job is `submit_unknown`, that no other job owns the task, and that the task matches the
/// job's model, tier and shape and carries no other job's identity. The one code path behind
/// `seedq adopt` and the dashboard, so both refuse the same foreign videos.
///
/// # Errors
/// Store or Ark failures (a refusal is `Ok(Refused)`).
pub async fn operator_adopt(w: &Ctx, job_id: &str, task_id: &str) -> anyhow::Result<AdoptOutcome> {
    use anyhow::Context as _;
    let refuse = |r: String| Ok(AdoptOutcome::Refused(r));
    let Some(job) = w.store.job(job_id).await? else {
        return refuse(format!("job {job_id} not found"));
    };
    if job.state != JobState::SubmitUnknown {
        return refuse(format!(
            "job {} is {}, not submit_unknown: only an ambiguous create can adopt a task",
            job.id, job.state
        ));
    }
    if let Some(owner) = w.store.job_by_remote(task_id).await? {
        return refuse(format!(
            "task {task_id} already belongs to job {}; adopting it would file a foreign video",
            owner.id
        ));
    }
    let task = w
        .ark
        .get(task_id)
        .await
        .with_context(|| format!("reading task {task_id} from Ark"))?;
    let req: CreateTaskRequest = serde_json::from_str(&job.request_json)?;
    // Ark may answer an endpoint id with the model behind it (docs/ark-api.md §3.1).
    let model_ok = task.model == job.model || job.model.starts_with("ep-");
    if !model_ok || !matches(&job, &req, &task) {
        return refuse(format!(
            "task {} does not match job {}: model {} vs {}, tier {:?} vs {}, shape {:?} {:?} {:?}/{:?} vs {:?} {:?} {:?}/{:?}, seed {:?} vs {:?}",
            task.id,
            job.id,
            task.model,
            job.model,
            task.service_tier,
            job.service_tier,
            task.resolution,
            task.ratio,
            task.duration,
            task.frames,
            req.resolution,
            req.ratio,
            req.duration,
            req.frames,
            task.seed,
            job.seed
        ));
    }
    // A task carrying another job's seedq identity is that job's, whatever the match says.
    if let Some(other) = task
        .safety_identifier
        .as_deref()
        .and_then(|s| s.strip_prefix(TAG_PREFIX))
        .filter(|id| *id != job.id.as_str())
    {
        return refuse(format!(
            "task {} carries job {other}'s identity, not job {}'s",
            task.id, job.id
        ));
    }
    tracing::warn!(job_id = %job.id, remote_id = %task.id, "operator adopts a remote task");
    let adopted = Adopted {
        remote_id: task.id.clone(),
        remote_status: task.status.as_str().to_string(),
        submitted_at: Timestamp::from_ms(task.created_at * 1000),
        next_poll_at: Timestamp::now(),
    };
    w.store
        .adopt_task(
            &job.id,
            job.lease_token,
            adopted,
            format!("adopted by an operator: {}", task.id),
        )
        .await
        .context("recording the adoption (the job changed meanwhile; look again)")?;
    Ok(AdoptOutcome::Adopted {
        job: job.id.to_string(),
        task: task.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: i64 = 1_800_000_000_000;
    const TIMEOUT: i64 = 60_000;

    fn listing(listed_at: i64, complete: bool) -> Listing {
        Listing {
            items: Vec::new(),
            complete,
            listed_at,
        }
    }

    #[test]
    fn a_listing_read_before_the_post_deadline_proves_no_absence() {
        // The POST started at T and may create a task until T + 60 s: a listing read at
        // T + 30 s cannot show it, however late the decision is taken.
        assert!(!listing_proves_absence(
            &listing(T + 30_000, true),
            T,
            false,
            TIMEOUT
        ));
        assert!(!listing_proves_absence(
            &listing(T + TIMEOUT, true),
            T,
            false,
            TIMEOUT
        ));
        // Read after the deadline, it does.
        assert!(listing_proves_absence(
            &listing(T + TIMEOUT + 1_000, true),
            T,
            false,
            TIMEOUT
        ));
        // An answered POST (a 5xx, the POSTing process dead) had ended before the job was
        // claimed, so a listing read after it proves absence at once.
        assert!(listing_proves_absence(
            &listing(T + 2_000, true),
            T,
            true,
            TIMEOUT
        ));
        // An incomplete listing proves nothing.
        assert!(!listing_proves_absence(
            &listing(T + TIMEOUT + 1_000, false),
            T,
            true,
            TIMEOUT
        ));
        // A listing taken before anything (the default) proves nothing.
        assert!(!listing_proves_absence(
            &Listing {
                complete: true,
                ..Listing::default()
            },
            T,
            false,
            TIMEOUT
        ));
    }

    #[test]
    fn a_listing_proves_nothing_before_its_seven_days() {
        let late = T + LIST_HORIZON_MS;
        assert!(!listing_proves_absence(
            &listing(late, true),
            T,
            true,
            TIMEOUT
        ));
        assert!(listing_proves_absence(
            &listing(late - WINDOW_SLACK_S * 1_000, true),
            T,
            true,
            TIMEOUT
        ));
    }

    fn api(status: u16, code: &str) -> ArkError {
        ArkError::Api {
            status,
            code: code.into(),
            message: "m".into(),
            param: None,
            kind: None,
            request_id: "r".into(),
            retry_after: None,
            create: false,
        }
    }

    #[test]
    fn only_an_answer_settles_a_duplicate_cancel() {
        assert!(cancel_settled(&Ok(())));
        // Gone, or running (docs/ark-api.md §14): asking again changes nothing.
        assert!(cancel_settled(&Err(api(404, "ResourceNotFound"))));
        assert!(cancel_settled(&Err(api(
            409,
            "InvalidAction.RunningTaskDeletion"
        ))));
        // Nothing sent, throttled or a hiccup: the task may still be queued.
        let budget = ArkError::Budget {
            route: "delete",
            patience: Duration::from_secs(1),
        };
        assert!(!cancel_settled(&Err(budget)));
        assert!(!cancel_settled(&Err(api(500, "InternalServiceError"))));
        assert!(!cancel_settled(&Err(api(429, "TooManyRequests"))));
        assert!(!cancel_settled(&Err(api(409, "Conflict"))));
    }
}
