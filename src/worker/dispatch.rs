//! The dispatcher: claim a queued job within its model's limits, POST it, record the outcome.
//!
//! Never pay twice (docs/design.md): the claim records the intent (`submitting`, with a timestamp)
//! before the POST; the remote id is written the moment the POST returns; anything ambiguous
//! becomes `submit_unknown` for reconciliation and is never blindly re-POSTed. Only failures
//! that provably did not reach the API (connect refused, 429, 4xx) go back to the queue.

use crate::stage::StageError;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::limiter::{Blocked, flex_key};
use super::{Ctx, Outcome, ms};
use crate::ark::ErrorClass;
use crate::job::JobState;
use crate::store::budget::HoldStamp;
use crate::store::{
    Accepted, ErrorNote, Job, LastError, Requeue, ResolutionScope, Timestamp, now_ms,
};
use crate::tier::Tier;

/// The dispatcher loop.
///
/// # Errors
/// Only when the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken, instance: u32) -> anyhow::Result<()> {
    let role = super::Role::nth(&ctx, ctx.poke_dispatch.clone(), instance);
    super::stage_loop("dispatch", &ctx, role, shutdown, || step(&ctx)).await
}

// The TPD day moved to the stage core, which ops and bulk share with the dispatcher.
pub use crate::stage::day_start_ms;

/// Jobs one dispatcher claims in one transaction and submits concurrently.
const CLAIM_BATCH: u32 = 8;
/// The same for flex, which has no RPM or concurrency at Ark: a flex backlog must reach Ark's
/// offline pool faster than the pool drains (200 wide × minutes per task in the bench).
const FLEX_CLAIM_BATCH: u32 = 64;

/// Claims a batch of jobs of one model within its limits and submits them.
///
/// # Errors
/// Store failures.
pub async fn step(ctx: &Ctx) -> Result<Outcome, StageError> {
    // A full disk or a database that refuses writes: claim nothing (a claim is a promise to
    // record what Ark answers), look again shortly.
    if !crate::stage::store_takes_work(ctx).await {
        return Ok(Outcome::Idle(Some(
            Timestamp::now() + crate::stage::OUTAGE_RETRY,
        )));
    }
    let mut models = ctx.store.queued_models().await?;
    if models.is_empty() {
        return Ok(Outcome::Idle(
            ctx.store.next_due(&[JobState::Queued]).await?,
        ));
    }
    // Rotate so one busy model cannot starve the others.
    let n = models.len();
    models.rotate_left(usize::try_from(now_ms()).unwrap_or(0) % n);
    let mut wake: Option<i64> = None;
    for model in models {
        let limits = ctx.ops.live.limits(&model);
        // Each tier is admitted under its own limits (docs/ark-api.md §6.2 D3): default by RPM and
        // concurrency, flex by TPD and the account's optional ceilings only.
        // Resolutions with limits of their own (2.0 `4k`) are claimed apart, then the rest.
        let mut scopes: Vec<(bool, Option<&str>)> = limits
            .per_resolution
            .keys()
            .map(|r| (false, Some(r.as_str())))
            .collect();
        scopes.push((false, None));
        scopes.push((true, None));
        for (flex, resolution) in scopes {
            let claimed = claim_tier(ctx, &model, &limits, flex, resolution, &mut wake).await?;
            if !claimed.is_empty() {
                let submits = claimed.into_iter().map(|job| {
                    let span = tracing::info_span!("job", job_id = %job.id, model = %job.model, stage = "dispatch");
                    submit(ctx, job).instrument(span)
                });
                // Every submit runs to its end (each records its own outcome) before an error
                // is reported.
                for r in futures::future::join_all(submits).await {
                    r?;
                }
                return Ok(Outcome::Worked);
            }
        }
    }
    Ok(Outcome::Idle(wake.map(Timestamp::from_ms)))
}

/// Claims up to a batch of `model`'s queued jobs of one tier within that tier's limits.
async fn claim_tier(
    ctx: &Ctx,
    model: &str,
    limits: &crate::catalogue::Limits,
    flex: bool,
    resolution: Option<&str>,
    wake: &mut Option<i64>,
) -> Result<Vec<Job>, StageError> {
    let (key, rpm, max_in_flight, tier) = if flex {
        // Ark sets flex no concurrency ("flex：无", tutorial model table,
        // docs/reference/tutorial.txt:329-380): only the account's own ceiling and the
        // one learned from Ark's 429s bind.
        let ceiling = [limits.flex_max_in_flight, ctx.limiter.flex_ceiling(model)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u32::MAX);
        (flex_key(model), limits.flex_rpm, ceiling, Tier::Flex)
    } else {
        (
            model.to_string(),
            Some(limits.rpm),
            limits.concurrency,
            Tier::Default,
        )
    };
    // The limiter's check and record bracket the claim under one lock, so the RPM window can
    // never be overrun by dispatchers racing each other.
    let _admission = ctx.admission.lock().await;
    let now = now_ms();
    let own = resolution.and_then(|r| limits.per_resolution.get(r).map(|l| (r, l)));
    let own_key = own.map(|(r, _)| format!("{model}@{r}"));
    let room = ctx
        .limiter
        .room_opt(&key, rpm, now)
        .and_then(|room| match (&own_key, own) {
            (Some(k), Some((_, l))) => ctx.limiter.room(k, l.rpm, now).map(|r| r.min(room)),
            _ => Ok(room),
        });
    let room = match room {
        Ok(room) => room,
        Err(Blocked::Paused(t) | Blocked::Rpm(t)) => {
            *wake = Some(wake.map_or(t, |w| w.min(t)));
            return Ok(Vec::new());
        }
    };
    let scope = match own {
        Some((r, l)) => ResolutionScope::Only(r.to_string(), l.concurrency),
        None if !flex && !limits.per_resolution.is_empty() => {
            ResolutionScope::Except(limits.per_resolution.keys().cloned().collect())
        }
        None => ResolutionScope::All,
    };
    if flex
        && !(ctx.ops.live.flex_window_open(now)
            && flex_budget_left(ctx, model, limits.flex_tpd).await?)
    {
        return Ok(Vec::new());
    }
    let batch = if flex { FLEX_CLAIM_BATCH } else { CLAIM_BATCH };
    let limit = u32::try_from(room).unwrap_or(u32::MAX).min(batch);
    // The limiter above paces this process; the store is the authority for the whole fleet
    //: every worker's creates count against the same RPM and TPD there.
    let account = crate::store::FleetLimits {
        rpm,
        resolution_rpm: own.map(|(_, l)| l.rpm),
        window: ctx.cfg.dispatch.rpm_count_window(),
        tpd: limits.flex_tpd.filter(|_| flex).map(|tpd| {
            let day_ms = ctx.cfg.bulk.tpd_day_ms();
            let start =
                crate::stage::tpd_day_start(now, ctx.cfg.dispatch.tpd_utc_offset_hours, day_ms);
            crate::store::FlexDay {
                tpd,
                start: Timestamp::from_ms(start),
                next: Timestamp::from_ms(start + day_ms),
                // A create claimed this long before the day began may still be sent (the
                // lease) and be in flight (the request timeout) after it.
                straddle: ctx.lease() + ctx.cfg.ark.request_timeout,
            }
        }),
    };
    let jobs = ctx
        .store
        .claim_for_submit_limited(
            model,
            tier,
            max_in_flight,
            scope,
            limit,
            &ctx.owner,
            ctx.lease(),
            &account,
        )
        .await?;
    // Other workers' creates may fill the window this process's limiter thought open: sleep
    // until the store's window has room again, not for a whole idle interval.
    if jobs.is_empty()
        && let Some(rpm) = rpm
        && let Some(t) = ctx
            .store
            .rpm_window_full_since(model, tier, Timestamp::from_ms(now) - account.window, rpm)
            .await?
    {
        let t = (t + account.window).ms();
        *wake = Some(wake.map_or(t, |w| w.min(t)));
    }
    // Without `flex_rpm` nothing reads the flex window: keep it empty.
    if rpm.is_some() {
        for _ in &jobs {
            ctx.limiter.record(&key, now);
            if let Some(k) = &own_key {
                ctx.limiter.record(k, now);
            }
        }
    }
    Ok(jobs)
}

/// The current TPD day of `model`, with its spend loaded into the limiter.
async fn flex_day(ctx: &Ctx, model: &str) -> Result<i64, StageError> {
    // `bulk.tpd_day` is a day except against a time-scaled simulator.
    let day = crate::stage::tpd_day_start(
        now_ms(),
        ctx.cfg.dispatch.tpd_utc_offset_hours,
        ctx.cfg.bulk.tpd_day_ms(),
    );
    // Re-read the store's count now and then: it has billed usage for finished tasks, which
    // corrects the estimates reserved at submit.
    let now = now_ms();
    let fresh_since = now - (ctx.cfg.bulk.tpd_day_ms() / 100).clamp(100, 30_000);
    ctx.limiter
        .refresh_flex_day(model, day, fresh_since, now, || {
            ctx.store.flex_tokens_since(model, Timestamp::from_ms(day))
        })
        .await?;
    Ok(day)
}

/// Whether flex jobs of `model` may be claimed today: the estimated tokens already submitted
/// since the day began are below the TPD budget.
async fn flex_budget_left(ctx: &Ctx, model: &str, tpd: Option<u64>) -> Result<bool, StageError> {
    let Some(tpd) = tpd else { return Ok(true) };
    let day = flex_day(ctx, model).await?;
    Ok(ctx.limiter.flex_room(model, day, tpd))
}

/// Submits one claimed job, step by step: hold its budgets, build its body, check its lease,
/// POST it, record what Ark answered. The holds are settled on every path: given back when no
/// task can exist, kept as spent when one may (`Holds`).
async fn submit(ctx: &Ctx, job: Job) -> Result<(), StageError> {
    if job.cancel_requested {
        ctx.store
            .cancel_before_submit(&job.id, job.lease_token)
            .await?;
        return Ok(());
    }
    let Some(mut holds) = hold(ctx, &job).await? else {
        return Ok(());
    };
    let body = body(ctx, &job).await?;
    // A worker paused (SIGSTOP, a VM pause) since its claim may have lost the job to
    // another: look at the lease right before the POST, the last moment it can matter.
    if !still_ours(ctx, &job).await? {
        tracing::warn!("the submit lease was lost before the POST; not sending");
        // Nothing was sent: both holds go back. The spend-cap hold goes by its stamp: the
        // next owner may have renamed it already (and taken its own under the job's name).
        holds.release().await?;
        return Ok(());
    }
    let within = match send_timing(ctx, &job, &holds) {
        SendTiming::Go(within) => within,
        SendTiming::Wait(wait_until, why) => {
            // Nothing was sent; the job is claimed again (and counted in the right day).
            holds.release().await?;
            ctx.store
                .requeue(
                    &job.id,
                    JobState::Submitting,
                    job.lease_token,
                    Requeue {
                        at: Timestamp::from_ms(wait_until),
                        attempts: Some(job.attempts - 1),
                        error: ErrorNote::Keep,
                    },
                    why.to_string(),
                )
                .await?;
            return Ok(());
        }
    };
    holds.sending();
    let result = post(ctx, &job, &body, within).await;
    let now = now_ms();
    match result {
        Ok(resp) => record_accepted(ctx, &job, holds, &resp.id, now).await,
        Err(e) => record_failed(ctx, &job, holds, &e, now).await,
    }
}

/// When a create may go. The store counts a create in the RPM window and the TPD day it was
/// claimed in (`submit_started_at`), Ark in those it arrives in: the create must leave soon
/// after its claim (RPM), and arrive in its claim day, which is also the day its tokens were
/// reserved in here (the hold).
#[derive(Debug)]
enum SendTiming {
    /// Send, answered within this (the day's end) or given up as ambiguous: an unanswered
    /// create is counted in the following days too (store `FlexDay::straddle_ms`). `None`:
    /// no TPD day to keep to.
    Go(Option<std::time::Duration>),
    /// Do not send; the job is claimed again at .0, for the reason .1.
    Wait(i64, &'static str),
}

/// The [`SendTiming`] of `job` now.
///
/// A job of a model with an RPM limit whose create would leave later than the RPM transit
/// margin after its claim (`DispatchConfig::rpm_transit`) is claimed again at once, so that
/// it is counted from when it leaves: the store spaces claims by the window plus that margin,
/// and Ark then sees them at least a window apart. A job claimed in an earlier TPD day than
/// its flex hold is claimed again at once, to be counted in this one; a day that ends within
/// the create's transit margin (a twentieth of the day, between 50 ms and 5 s: 5 s of a real
/// day, a time-scaled day's share) waits for the next.
fn send_timing(ctx: &Ctx, job: &Job, holds: &Holds<'_>) -> SendTiming {
    let now = now_ms();
    let claimed = job.submit_started_at.map_or(now, Timestamp::ms);
    let limits = ctx.ops.live.limits(&job.model);
    let rpm_limited = if job.is_flex() {
        limits.flex_rpm.is_some()
    } else {
        true
    };
    if rpm_limited && now - claimed > ms(ctx.cfg.dispatch.rpm_transit()) {
        return SendTiming::Wait(now, "the create would leave too long after its RPM claim");
    }
    let Some((day, _)) = holds.flex else {
        return SendTiming::Go(None);
    };
    let len = ctx.cfg.bulk.tpd_day_ms();
    let next = day + len;
    if crate::stage::tpd_day_start(claimed, ctx.cfg.dispatch.tpd_utc_offset_hours, len) < day {
        return SendTiming::Wait(
            now,
            "the flex TPD day turned between the claim and the create",
        );
    }
    let margin = (len / 20).clamp(50, 5_000);
    if now + margin >= next {
        return SendTiming::Wait(
            next,
            "the flex TPD day turns before the create would arrive",
        );
    }
    SendTiming::Go(Some(std::time::Duration::from_millis(
        u64::try_from(next - now).unwrap_or(0),
    )))
}

/// What one submit holds before its POST: the flex TPD reservation (this process's limiter)
/// and the spend-cap hold (the store, named by the job and its stamp). Whatever is still held when it is
/// dropped is settled then: given back if the request was never sent, kept as spent if it may
/// have been (as for an ambiguous create: the poller or reconciliation settles it). Paths
/// settle explicitly with [`Holds::release`] or [`Holds::commit`]; the drop is the fallback
/// for an early return (a store error, a cancelled future).
struct Holds<'a> {
    ctx: &'a Ctx,
    job_id: String,
    model: String,
    /// The flex day and the tokens reserved in it.
    flex: Option<(i64, i64)>,
    /// The spend-cap hold this submit made in the store. Given back by its stamp, never by
    /// the job's name: a worker that lost the lease would take the next owner's hold.
    budget: Option<HoldStamp>,
    /// The POST may have left: nothing is given back on drop.
    sent: bool,
}

impl<'a> Holds<'a> {
    fn new(ctx: &'a Ctx, job: &Job) -> Self {
        Holds {
            ctx,
            job_id: job.id.to_string(),
            model: job.model.clone(),
            flex: None,
            budget: None,
            sent: false,
        }
    }

    /// The POST is about to leave: from now on a task may exist.
    fn sending(&mut self) {
        self.sent = true;
    }

    /// No task was made: gives everything back and wakes the jobs waiting on a budget.
    async fn release(&mut self) -> Result<(), StageError> {
        if let Some((day, need)) = self.flex.take() {
            self.ctx.limiter.release_flex(&self.model, day, need);
        }
        if let Some(stamp) = self.budget {
            if self
                .ctx
                .store
                .budget_release_hold(&self.job_id, stamp)
                .await?
            {
                self.ctx.poke_dispatch.notify_one();
            }
            self.budget = None;
        }
        Ok(())
    }

    /// A task exists or may exist: the flex tokens count as spent today, and the spend-cap
    /// hold stays (the poller replaces it with the billed usage; reconciliation settles an
    /// ambiguous one).
    fn commit(&mut self) {
        if let Some((day, need)) = self.flex.take() {
            self.ctx.limiter.commit_flex(&self.model, day, need);
        }
        self.budget = None;
    }
}

impl Drop for Holds<'_> {
    fn drop(&mut self) {
        if self.flex.is_none() && self.budget.is_none() {
            return;
        }
        if self.sent {
            tracing::warn!(job_id = %self.job_id, "submit ended after its POST left without settling its holds; keeping them as spent");
            self.commit();
            return;
        }
        tracing::warn!(job_id = %self.job_id, "submit ended before its POST without settling its holds; giving them back");
        if let Some((day, need)) = self.flex.take() {
            self.ctx.limiter.release_flex(&self.model, day, need);
        }
        if let Some(stamp) = self.budget.take() {
            let (store, poke, id) = (
                self.ctx.store.clone(),
                self.ctx.poke_dispatch.clone(),
                self.job_id.clone(),
            );
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        match store.budget_release_hold(&id, stamp).await {
                            Ok(true) => poke.notify_one(),
                            Ok(false) => {}
                            Err(e) => {
                                tracing::error!(job_id = %id, error = %e, "cannot give a spend-cap hold back; reconciliation settles it with the job");
                            }
                        }
                    });
                }
                Err(_) => {
                    tracing::error!(job_id = %id, "no runtime to give a spend-cap hold back; reconciliation settles it with the job");
                }
            }
        }
    }
}

/// The hold step: reserves the job's flex tokens (its model's TPD, when it has one) and its
/// estimated cost under the spend caps. `None`: it does not fit, and waits in the queue with
/// the reason; nothing is held.
async fn hold<'a>(ctx: &'a Ctx, job: &Job) -> Result<Option<Holds<'a>>, StageError> {
    let token = job.lease_token;
    let mut holds = Holds::new(ctx, job);
    // The flex budget must hold for this job too, not only for those before it: reserve its
    // tokens before the POST, and give them back if no task was made.
    if job.is_flex()
        && let Some(tpd) = ctx.ops.live.limits(&job.model).flex_tpd
    {
        let day = flex_day(ctx, &job.model).await?;
        let need = job.est_tokens.unwrap_or(0);
        if let Err(spent) = ctx.limiter.try_reserve_flex(&job.model, day, need, tpd) {
            let next_day = day + ctx.cfg.bulk.tpd_day_ms();
            tracing::info!(
                spent,
                need,
                tpd,
                "flex daily token budget reached; waiting for the next day"
            );
            ctx.store
                .requeue(
                    &job.id,
                    JobState::Submitting,
                    token,
                    Requeue {
                        at: Timestamp::from_ms(next_day),
                        attempts: Some(job.attempts - 1),
                        error: ErrorNote::Keep,
                    },
                    format!("flex TPD budget reached ({spent}+{need} > {tpd} tokens)"),
                )
                .await?;
            return Ok(None);
        }
        holds.flex = Some((day, need));
    }
    // Spend caps: reserved in the database, so other processes see it too.
    let stamp = match super::budget::reserve(ctx, job).await? {
        Ok(stamp) => stamp,
        Err(wait) => {
            holds.release().await?;
            tracing::info!(reason = %wait.message, "waiting on a budget");
            ctx.store
                .requeue(
                    &job.id,
                    JobState::Submitting,
                    token,
                    Requeue {
                        at: wait.until,
                        attempts: Some(job.attempts - 1),
                        error: ErrorNote::Set(LastError::new(wait.code, wait.message.clone())),
                    },
                    wait.message.clone(),
                )
                .await?;
            // A release that committed between the refusal and the requeue woke the waiters
            // before this job was one of them: without a second look it would wait on room that
            // is already free (and `seedq run` would stop with it still waiting).
            if super::budget::released_since(ctx, job, &wait).await? {
                ctx.store.wake_budget_waiters().await?;
                ctx.poke_dispatch.notify_one();
            }
            return Ok(None);
        }
    };
    holds.budget = Some(stamp);
    Ok(Some(holds))
}

/// The body step: the frozen body with seedq's identity and callback, its embedded images
/// inflated (they are stored once, apart from the row; the full body exists only now).
async fn body(ctx: &Ctx, job: &Job) -> Result<String, StageError> {
    let body = with_callback(ctx, job)?;
    Ok(ctx.store.inflate_body(body).await?)
}

/// The POST step, counted in the create metrics by its outcome.
async fn post(
    ctx: &Ctx,
    job: &Job,
    body: &str,
    within: Option<std::time::Duration>,
) -> Result<crate::ark::wire::CreateTaskResponse, crate::ark::ArkError> {
    let result = ctx.ark.create_within(body, within).await;
    crate::metrics::create(
        &job.model,
        job.service_tier,
        result
            .as_ref()
            .map_or_else(|e| e.class().name(), |_| "accepted"),
    );
    result
}

/// The record step of an accepted create: the remote id, then the holds count as spent.
async fn record_accepted(
    ctx: &Ctx,
    job: &Job,
    mut holds: Holds<'_>,
    remote_id: &str,
    now: i64,
) -> Result<(), StageError> {
    // In the log before the DB write: if the write fails, the id is not lost.
    tracing::warn!(remote_id = %remote_id, "create accepted; recording the remote id");
    let first_poll = super::poll::first_poll_at(ctx, job, now).await?;
    // Ark has the task: recording its id must survive a store outage (a full disk, a
    // read-only or unreachable database) for as long as the lease holds the job.
    // After that, reconciliation finds the task by its tag; either way it is paid once.
    let lease_left = job
        .lease_until
        .map_or(0, |until| until.ms() - now_ms())
        .max(0);
    let moved = crate::stage::ride_out(
        ctx,
        std::time::Duration::from_millis(u64::try_from(lease_left).unwrap_or(0)),
        || {
            ctx.store.mark_submitted(
                &job.id,
                job.lease_token,
                Accepted {
                    remote_id: remote_id.to_string(),
                    submitted_at: Timestamp::from_ms(now),
                    first_poll_at: Timestamp::from_ms(first_poll),
                },
            )
        },
    )
    .await;
    // After the store has the task, so a reload in between counts it twice at worst.
    holds.commit();
    if job.is_flex() {
        ctx.limiter.flex_accepted(&job.model);
    }
    match moved {
        Ok(_) => {
            tracing::info!(remote_id = %remote_id, "submitted");
            ctx.poke_poll.notify_one();
            Ok(())
        }
        // The lease ran out during the POST and reconciliation took the job over:
        // give it the id we now know, so nothing is paid twice.
        Err(crate::store::StoreError::Conflict { .. }) => {
            super::reconcile::adopt_known(ctx, &job.id, remote_id, now).await
        }
        Err(e) => Err(e.into()),
    }
}

/// What a failed create means for its job, decided from the error alone ([`classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// 429 `SetLimitExceeded`: the account's own inference limit paused the model at Ark;
    /// paused here too until an operator resumes it. Requeued, no attempt spent.
    PauseModel,
    /// A flex 429: a TPD refusal (`tpd`) closes the model's flex day, any other pauses its flex
    /// creates and halves the learned ceiling. Requeued, no attempt spent.
    FlexThrottled {
        tpd: bool,
        retry_after: Option<std::time::Duration>,
    },
    /// A default-tier 429 (or no turn on the account's budget): the model's creates pause
    /// for `Retry-After` or `dispatch.throttle_pause`. Requeued, no attempt spent.
    Throttled {
        retry_after: Option<std::time::Duration>,
    },
    /// Provably never sent and attempts left: requeued after a backoff; the attempt counts.
    Retry,
    /// Never sent for want of a local resource: requeued after the full backoff, no attempt
    /// spent.
    LocalResource,
    /// Provably never sent, attempts exhausted: dead.
    Exhausted,
    /// Refused for good (4xx other than 429, a bad base URL): failed.
    Failed,
    /// May have made a task (timeout after sending, reset, create 5xx, unreadable success):
    /// `submit_unknown`, for reconciliation.
    Unknown,
}

impl SubmitOutcome {
    /// Whether Ark may have made a (billable) task: then the holds stay, counted as spent.
    pub fn may_have_created(self) -> bool {
        self == SubmitOutcome::Unknown
    }
}

/// Classifies a failed create of a job on the flex tier (`flex`) with attempts left
/// (`attempts_left`). Pure: the caller does what the outcome says.
pub fn classify(e: &crate::ark::ArkError, flex: bool, attempts_left: bool) -> SubmitOutcome {
    let code = e.code().unwrap_or("transport");
    match e.class() {
        // docs/ark-api.md §14 "Account-state answers": no wait makes it pass.
        ErrorClass::Throttled(_) if code == SET_LIMIT_EXCEEDED => SubmitOutcome::PauseModel,
        ErrorClass::Throttled(retry_after) if flex => SubmitOutcome::FlexThrottled {
            tpd: is_tpd_refusal(code, &format!("{e:#}")),
            retry_after,
        },
        ErrorClass::Throttled(retry_after) => SubmitOutcome::Throttled { retry_after },
        ErrorClass::NeverSent if attempts_left => SubmitOutcome::Retry,
        ErrorClass::LocalResource => SubmitOutcome::LocalResource,
        ErrorClass::NeverSent => SubmitOutcome::Exhausted,
        ErrorClass::Rejected | ErrorClass::Transient => SubmitOutcome::Failed,
        ErrorClass::Ambiguous => SubmitOutcome::Unknown,
    }
}

/// The record step of a failed create: settle the holds, then do what [`classify`] says.
async fn record_failed(
    ctx: &Ctx,
    job: &Job,
    mut holds: Holds<'_>,
    e: &crate::ark::ArkError,
    now: i64,
) -> Result<(), StageError> {
    let token = job.lease_token;
    let outcome = classify(
        e,
        job.is_flex(),
        job.attempts < i64::from(ctx.cfg.dispatch.max_attempts),
    );
    // Only an ambiguous create may have made a (billable) task.
    if outcome.may_have_created() {
        holds.commit();
    } else {
        holds.release().await?;
    }
    let code = e.code().unwrap_or("transport").to_string();
    let msg = format!("{e:#}");
    let backoff = ctx.submit_backoff();
    let (next, detail) = match outcome {
        // The account's own inference limit paused the model's service at Ark until its owner
        // acts (docs/ark-api.md §14 "Account-state answers"): no wait makes it pass, so the
        // model is paused here too, for the whole fleet, until an operator resumes it. The job
        // keeps its attempts and waits queued.
        SubmitOutcome::PauseModel => {
            crate::metrics::create_throttled(&job.model, job.service_tier, &code);
            ctx.store
                .pause(crate::store::PauseKind::Model, &job.model)
                .await?;
            tracing::error!(
                model = %job.model,
                error = %msg,
                "ark paused this model's service for the account (SetLimitExceeded); model paused here: raise or lift the limit in the Ark console, then `seedq resume --model {}`",
                job.model
            );
            (
                AfterCreate::Requeue(now, Some(job.attempts - 1)),
                format!(
                    "model paused: ark answered {code} (the account's own inference limit); raise it in the Ark console, then `seedq resume --model {}`",
                    job.model
                ),
            )
        }
        SubmitOutcome::FlexThrottled { tpd, retry_after } => {
            crate::metrics::create_throttled(&job.model, Tier::Flex, &code);
            let until = flex_throttled(ctx, job, &code, tpd, retry_after, now).await?;
            // Ark's flex limit, not the job's fault: it keeps its attempts.
            (
                AfterCreate::Requeue(until, Some(job.attempts - 1)),
                format!("throttled (flex): {code}"),
            )
        }
        SubmitOutcome::Throttled { retry_after } => {
            crate::metrics::create_throttled(&job.model, Tier::Default, &code);
            // `retry_after` is capped by the client (ark::MAX_RETRY_AFTER); the sum saturates
            // anyway, since a peer's number must never overflow our clock.
            let pause = retry_after.unwrap_or(ctx.cfg.dispatch.throttle_pause);
            let until = now.saturating_add(ms(pause));
            ctx.limiter.pause(&job.model, until);
            tracing::warn!(code = %code, pause = ?pause, "throttled; pausing this model's creates");
            // A 429 is the account's limit, not the job's fault: it keeps its attempts.
            (
                AfterCreate::Requeue(until, Some(job.attempts - 1)),
                format!("throttled: {code}"),
            )
        }
        SubmitOutcome::Retry => {
            let delay = backoff.delay_random(u32::try_from(job.attempts).unwrap_or(1), None);
            tracing::warn!(error = %msg, retry_in = ?delay, "create never reached ark; will retry");
            (
                AfterCreate::Requeue(now + ms(delay), None),
                format!("never sent: {msg}"),
            )
        }
        // Out of descriptors/memory/disk here: Ark saw nothing and the job did nothing
        // wrong, so this is no attempt (EMFILE once made a job dead in 23 s).
        SubmitOutcome::LocalResource => {
            // The full backoff window, but never a tight loop while the resource is short.
            let delay = backoff
                .delay_random(u32::MAX, None)
                .max(ctx.cfg.dispatch.backoff_base);
            tracing::warn!(error = %msg, retry_in = ?delay, "create not sent: this machine is out of a resource; not counted as an attempt");
            (
                AfterCreate::Requeue(now.saturating_add(ms(delay)), Some(job.attempts - 1)),
                format!("not sent (local resource): {msg}"),
            )
        }
        SubmitOutcome::Exhausted => (AfterCreate::Dead, format!("attempts exhausted: {msg}")),
        SubmitOutcome::Failed => {
            tracing::error!(code = %code, error = %msg, "create rejected");
            (AfterCreate::Failed, format!("rejected: {code}"))
        }
        SubmitOutcome::Unknown => {
            tracing::warn!(error = %msg, "create outcome unknown; reconciling");
            (
                AfterCreate::Unknown(now + ms(ctx.cfg.dispatch.reconcile_interval).min(5_000)),
                format!("ambiguous: {msg}"),
            )
        }
    };
    let why = LastError::new(code, msg);
    let requeued = matches!(next, AfterCreate::Requeue(..));
    let written = match next {
        AfterCreate::Requeue(at, attempts) => {
            let r = Requeue {
                at: Timestamp::from_ms(at),
                attempts,
                error: ErrorNote::Set(why),
            };
            ctx.store
                .requeue(&job.id, JobState::Submitting, token, r, detail)
                .await
        }
        AfterCreate::Dead => {
            ctx.store
                .mark_dead(&job.id, JobState::Submitting, token, Some(why), detail)
                .await
        }
        AfterCreate::Failed => ctx.store.mark_failed(&job.id, token, why, detail).await,
        AfterCreate::Unknown(at) => {
            ctx.store
                .mark_unknown(&job.id, token, at, why, detail)
                .await
        }
    };
    match written {
        Ok(_) => {}
        // The lease was taken over during the POST (a paused worker): the job is
        // another worker's now. A task this create may have made is a duplicate.
        Err(crate::store::StoreError::Conflict { .. }) => {
            tracing::warn!("the job was taken over during the create");
            if outcome.may_have_created() {
                super::reconcile::sweep_duplicates(ctx, &job.id).await?;
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    if requeued {
        ctx.poke_dispatch.notify_one();
    }
    Ok(())
}

/// The 429 code of an account whose own inference limit paused a model's service
/// (docs/ark-api.md §14 "Account-state answers"): not a rate limit that passes by itself.
pub const SET_LIMIT_EXCEEDED: &str = "SetLimitExceeded";

/// Whether a 429 is Ark refusing the day's flex tokens. Ark's code for it is unpublished
/// (tutorial 使用限制 › 限流说明 only says such calls are rejected,
/// docs/reference/tutorial.txt:1740); `QuotaExceeded` covers "period quota exceeded"
/// (docs/ark-api.md §6.2) but also "too many queued tasks", so the message decides [INF].
pub fn is_tpd_refusal(code: &str, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    code.contains("Tpd")
        || code.contains("TPD")
        || m.contains("tokens per day")
        || m.contains("tpd")
}

/// A flex create of `job` got a 429: a TPD refusal (`tpd`, [`is_tpd_refusal`]) closes the
/// model's flex day (the job waits for the next one); any other 429 pauses the model's flex creates until
/// `Retry-After` or a backoff and halves the learned in-flight ceiling. Returns when the job
/// is due again.
async fn flex_throttled(
    ctx: &Ctx,
    job: &Job,
    code: &str,
    tpd: bool,
    retry_after: Option<std::time::Duration>,
    now: i64,
) -> Result<i64, StageError> {
    if tpd {
        let day_ms = ctx.cfg.bulk.tpd_day_ms();
        let day = crate::stage::tpd_day_start(now, ctx.cfg.dispatch.tpd_utc_offset_hours, day_ms);
        ctx.limiter.exhaust_flex_day(&job.model, day);
        tracing::warn!(code, "flex TPD refused by ark; waiting for the next day");
        return Ok(day + day_ms);
    }
    let in_flight = ctx.store.in_flight_tier(&job.model, Tier::Flex).await?;
    let until = ctx.limiter.flex_throttled(
        &job.model,
        in_flight,
        now,
        retry_after.map(ms),
        ms(ctx.cfg.dispatch.throttle_pause),
    );
    tracing::warn!(
        code,
        in_flight,
        ceiling = ?ctx.limiter.flex_ceiling(&job.model),
        pause_ms = until - now,
        "flex create throttled; pausing this model's flex creates"
    );
    Ok(until)
}

/// Whether the job is still in `submitting` under this worker's lease token and in time.
async fn still_ours(ctx: &Ctx, job: &Job) -> Result<bool, StageError> {
    let now = now_ms();
    Ok(ctx.store.job(job.id.as_str()).await?.is_some_and(|j| {
        j.state == JobState::Submitting
            && j.lease_token == job.lease_token
            && j.lease_until.is_some_and(|u| u.ms() > now)
    }))
}

/// What a failed create does to its job (each is one store verb).
enum AfterCreate {
    /// Back to the queue, due at .0; .1 restores the attempt count when it was no attempt.
    Requeue(i64, Option<i64>),
    Dead,
    Failed,
    /// Outcome unknown; reconciliation looks from .0.
    Unknown(i64),
}

/// The frozen body, plus seedq's identity tag as `safety_identifier` (reconcile.rs) and its
/// own callback URL when callbacks are on, each only where the user set none. The user's
/// fields are never changed.
fn with_callback(ctx: &Ctx, job: &Job) -> Result<String, StageError> {
    let url = super::callback::url_for(ctx, job);
    let tag = super::reconcile::tag_of(job);
    if url.is_none() && tag.is_none() {
        return Ok(job.request_json.clone());
    }
    let mut v: serde_json::Value = serde_json::from_str(&job.request_json)?;
    if let Some(o) = v.as_object_mut() {
        if let Some(url) = url
            && !o.contains_key("callback_url")
        {
            o.insert("callback_url".into(), serde_json::Value::String(url));
        }
        if let Some(tag) = tag {
            o.insert("safety_identifier".into(), serde_json::Value::String(tag));
        }
    }
    Ok(serde_json::to_string(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::ark::ArkError;

    /// A `reqwest::Error` to wrap (an unparsable URL), for the variants that carry one.
    fn reqwest_error() -> reqwest::Error {
        reqwest::Client::new()
            .get("http://")
            .build()
            .expect_err("no host")
    }

    fn api(status: u16, code: &str, message: &str, retry_after: Option<Duration>) -> ArkError {
        ArkError::Api {
            status,
            code: code.into(),
            message: message.into(),
            param: None,
            kind: None,
            request_id: "req".into(),
            retry_after,
            create: true,
        }
    }

    #[test]
    fn every_failed_create_has_one_outcome() {
        use SubmitOutcome::*;
        let ra = Some(Duration::from_secs(3));
        let tpd_msg = "your account has exceeded its tokens per day (TPD) limit";
        // (what, error, flex, attempts left, outcome)
        let cases: Vec<(&str, ArkError, bool, bool, SubmitOutcome)> = vec![
            (
                "SetLimitExceeded pauses the model",
                api(429, SET_LIMIT_EXCEEDED, "limit", None),
                false,
                true,
                PauseModel,
            ),
            (
                "SetLimitExceeded on flex pauses the model too",
                api(429, SET_LIMIT_EXCEEDED, "limit", ra),
                true,
                true,
                PauseModel,
            ),
            (
                "a flex TPD refusal",
                api(429, "QuotaExceeded", tpd_msg, None),
                true,
                true,
                FlexThrottled {
                    tpd: true,
                    retry_after: None,
                },
            ),
            (
                "another flex 429 keeps its Retry-After",
                api(429, "QuotaExceeded", "too many queued tasks", ra),
                true,
                false,
                FlexThrottled {
                    tpd: false,
                    retry_after: ra,
                },
            ),
            (
                "a default-tier 429",
                api(429, "ModelAccountRpmRateLimitExceeded", "rpm", ra),
                false,
                true,
                Throttled { retry_after: ra },
            ),
            (
                "a TPD message on the default tier is a plain 429",
                api(429, "QuotaExceeded", tpd_msg, None),
                false,
                true,
                Throttled { retry_after: None },
            ),
            (
                "no turn on the account's budget",
                ArkError::Budget {
                    route: "create",
                    patience: Duration::from_secs(1),
                },
                false,
                true,
                Throttled { retry_after: None },
            ),
            (
                "connect refused, attempts left",
                ArkError::Connect {
                    url: "http://127.0.0.1:1".into(),
                    source: reqwest_error(),
                },
                false,
                true,
                Retry,
            ),
            (
                "connect refused, attempts exhausted",
                ArkError::Connect {
                    url: "http://127.0.0.1:1".into(),
                    source: reqwest_error(),
                },
                true,
                false,
                Exhausted,
            ),
            (
                "out of a local resource, even with no attempts left",
                ArkError::Local {
                    url: "http://127.0.0.1:1".into(),
                    source: reqwest_error(),
                },
                false,
                false,
                LocalResource,
            ),
            (
                "a 400 is refused for good",
                api(400, "InvalidParameter", "bad", None),
                false,
                true,
                Failed,
            ),
            (
                "a 401",
                api(401, "AuthenticationError", "key", None),
                true,
                true,
                Failed,
            ),
            (
                "a 408 on a create",
                api(408, "RequestTimeout", "slow", None),
                false,
                true,
                Failed,
            ),
            (
                "a bad base URL",
                ArkError::BaseUrl("x".into()),
                false,
                true,
                Failed,
            ),
            (
                "a create 500 may have made a task",
                api(500, "InternalServiceError", "oops", None),
                false,
                true,
                Unknown,
            ),
            (
                "a create 503 with no attempts left is still unknown",
                api(503, "ServiceUnavailable", "busy", None),
                true,
                false,
                Unknown,
            ),
            (
                "a timeout after sending",
                ArkError::Transport {
                    what: "timeout",
                    create: true,
                    source: reqwest_error(),
                },
                false,
                true,
                Unknown,
            ),
            (
                "an unreadable success",
                ArkError::Decode {
                    status: 200,
                    snippet: "<html>".into(),
                    create: true,
                },
                false,
                true,
                Unknown,
            ),
            (
                "an oversized answer",
                ArkError::TooLarge {
                    status: 200,
                    limit: 1,
                    create: true,
                },
                true,
                true,
                Unknown,
            ),
        ];
        for (what, e, flex, attempts_left, want) in cases {
            assert_eq!(classify(&e, flex, attempts_left), want, "{what}");
            assert_eq!(want.may_have_created(), want == Unknown, "{what}");
        }
    }

    const PRO: &str = "doubao-seedance-1-0-pro-250528";

    /// A context on `store` whose Ark is the simulator at `base_url`.
    fn ctx_on(store: crate::store::Store, base_url: String) -> Ctx {
        let mut cfg = crate::config::Config::default();
        cfg.ark.base_url = base_url;
        cfg.ark.api_key = Some(secrecy::SecretString::from("sk-sim".to_string()));
        cfg.admin.listen = String::new();
        cfg.archive.url = String::new();
        let catalogue = cfg.validate().expect("valid config");
        Ctx::new(cfg, catalogue, store).expect("ctx")
    }

    /// Enqueues a flex job on `PRO` and claims it for `ctx` with a lease of `lease_ms`.
    async fn claimed_flex_job(ctx: &Ctx, dir: &std::path::Path, lease_ms: u64) -> Job {
        let spec = crate::request::JobSpec {
            model: Some(PRO.into()),
            prompt: Some("a fox in snow".into()),
            resolution: Some("480p".into()),
            duration: Some(2),
            flex: Some(true),
            ..Default::default()
        };
        let p = crate::request::prepare(spec, &ctx.ops.live.catalogue(), dir).expect("spec");
        let new = crate::intake::new_job(p).expect("job");
        assert!(
            new.est_tokens.unwrap_or(0) > 0,
            "the job has a size estimate"
        );
        ctx.store.enqueue(vec![new]).await.expect("enqueue");
        let mut jobs = ctx
            .store
            .claim_for_submit_tier(
                PRO,
                Tier::Flex,
                u32::MAX,
                ResolutionScope::All,
                1,
                &ctx.owner,
                std::time::Duration::from_millis(lease_ms),
            )
            .await
            .expect("claim");
        jobs.pop().expect("one job claimed")
    }

    /// What `ctx` holds for `PRO` today: spend-cap hold units in the store, flex tokens in
    /// the limiter (stored spend plus reservations in flight).
    async fn held(ctx: &Ctx) -> (i64, i64) {
        let day =
            super::super::budget::day_start(now_ms(), ctx.ops.live.tz(), ctx.cfg.bulk.tpd_day_ms());
        let (units, _) = ctx.store.day_spend(day, None).await.expect("day spend");
        let tpd = ctx
            .ops
            .live
            .limits(PRO)
            .flex_tpd
            .expect("pro has a flex TPD");
        let flex_day = flex_day(ctx, PRO).await.expect("flex day");
        // More than the whole day never fits: the refusal reports what is spent.
        let over = i64::try_from(tpd).expect("tpd") + 1;
        let flex = ctx
            .limiter
            .try_reserve_flex(PRO, flex_day, over, tpd)
            .expect_err("never fits");
        (units, flex)
    }

    /// A worker that loses its submit lease between the claim and the POST (paused, and the
    /// job taken over by another) sends nothing and gives back both holds it took: the flex
    /// tokens and the spend-cap hold. A submit that keeps its lease keeps both (its task
    /// exists), which shows the holds were taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_gives_every_hold_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let sim_cfg: crate::sim::SimConfig =
            toml::from_str("time_scale = 0.001\nvideo_downscale = 16").expect("sim config");
        let sim = crate::sim::start(sim_cfg, listener).await.expect("sim");
        for (name, store) in crate::store::testpg::both(dir.path()).await {
            let ctx = ctx_on(store, sim.base_url());
            assert_eq!(held(&ctx).await, (0, 0), "{name}");

            let lost = claimed_flex_job(&ctx, dir.path(), 200).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let stolen = ctx
                .store
                .claim_due(
                    JobState::Submitting,
                    "another-worker",
                    std::time::Duration::from_millis(60_000),
                    10,
                )
                .await
                .expect("steal");
            assert_eq!(stolen.len(), 1, "{name}: the expired lease is taken over");
            submit(&ctx, lost.clone()).await.expect("submit");
            assert_eq!(held(&ctx).await, (0, 0), "{name}: nothing stays held");
            let now = ctx.store.job(lost.id.as_str()).await.expect("job");
            let now = now.expect("exists");
            assert_eq!(
                (now.state, now.remote_task_id, now.lease_token),
                (JobState::Submitting, None, stolen[0].lease_token),
                "{name}: nothing was sent; the job is the other worker's"
            );

            let kept = claimed_flex_job(&ctx, dir.path(), 60_000).await;
            submit(&ctx, kept.clone()).await.expect("submit");
            let done = ctx.store.job(kept.id.as_str()).await.expect("job");
            assert!(
                done.expect("exists").remote_task_id.is_some(),
                "{name}: created"
            );
            let (units, flex) = held(&ctx).await;
            assert!(units > 0, "{name}: the task's spend-cap hold stays");
            assert_eq!(flex, kept.est_tokens.unwrap_or(0), "{name}: flex spent");
        }
        sim.shutdown().await;
    }

    /// The racy order of a lost lease: this worker holds, its lease runs out, the next owner
    /// claims the job and takes its own holds, and only then does this worker find the lease
    /// lost and give its holds back. It gives back its own alone: the next owner's spend-cap
    /// hold stays until the next owner gives it back, and then nothing stays held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_gives_back_only_its_own_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, store) in crate::store::testpg::both(dir.path()).await {
            // Nothing is sent here: no Ark behind it.
            let ctx = ctx_on(store, "http://127.0.0.1:9/api/v3".into());
            let lost = claimed_flex_job(&ctx, dir.path(), 200).await;
            let mut mine = hold(&ctx, &lost).await.expect("hold").expect("fits");
            let one = held(&ctx).await;
            assert!(one.0 > 0 && one.1 > 0, "{name}: held {one:?}");
            tokio::time::sleep(Duration::from_millis(400)).await;
            let stolen = ctx
                .store
                .claim_due(
                    JobState::Submitting,
                    "another-worker",
                    std::time::Duration::from_millis(60_000),
                    10,
                )
                .await
                .expect("steal");
            assert_eq!(stolen.len(), 1, "{name}: the expired lease is taken over");
            let mut theirs = hold(&ctx, &stolen[0]).await.expect("hold").expect("fits");
            assert_eq!(held(&ctx).await, (2 * one.0, 2 * one.1), "{name}");
            assert!(!still_ours(&ctx, &lost).await.expect("lease"), "{name}");
            mine.release().await.expect("release mine");
            assert_eq!(held(&ctx).await, one, "{name}: the next owner's stay");
            theirs.release().await.expect("release theirs");
            assert_eq!(held(&ctx).await, (0, 0), "{name}: nothing stays held");
        }
    }

    /// A submit that ends early without settling its holds (a store error, a cancelled
    /// future) settles them when its guard is dropped: before the POST leaves they go back,
    /// after it they stay counted as spent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_guard_settles_its_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(&dir.path().join("q.db")).expect("store");
        // Nothing is sent here: no Ark behind it.
        let ctx = ctx_on(store, "http://127.0.0.1:9/api/v3".into());

        let job = claimed_flex_job(&ctx, dir.path(), 60_000).await;
        let need = job.est_tokens.unwrap_or(0);
        let holds = hold(&ctx, &job).await.expect("hold").expect("fits");
        let (units, flex) = held(&ctx).await;
        assert!(
            units > 0 && flex == need,
            "held: {units} units, {flex} tokens"
        );
        drop(holds);
        // The spend-cap hold goes back through a spawned release.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while held(&ctx).await != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "still held: {:?}",
                held(&ctx).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let job = claimed_flex_job(&ctx, dir.path(), 60_000).await;
        let mut holds = hold(&ctx, &job).await.expect("hold").expect("fits");
        holds.sending();
        drop(holds);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (units, flex) = held(&ctx).await;
        assert!(units > 0, "a sent create's spend-cap hold stays");
        assert_eq!(
            flex,
            job.est_tokens.unwrap_or(0),
            "its flex tokens count as spent"
        );
    }

    /// A flex create goes only in the TPD day it was claimed in (the store counted it there),
    /// not within the day's transit margin, and must be answered by the day's end.
    #[tokio::test]
    async fn a_flex_create_goes_only_in_its_claim_day_and_ends_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(&dir.path().join("q.db")).expect("store");
        let ctx = ctx_on(store, "http://127.0.0.1:9/api/v3".into());
        let job = claimed_flex_job(&ctx, dir.path(), 60_000).await;
        let len = ctx.cfg.bulk.tpd_day_ms();
        let now = now_ms();
        let today = crate::stage::tpd_day_start(now, ctx.cfg.dispatch.tpd_utc_offset_hours, len);
        let mut holds = Holds::new(&ctx, &job);
        holds.flex = Some((today, 0));
        match send_timing(&ctx, &job, &holds) {
            SendTiming::Go(Some(within)) => {
                let within = i64::try_from(within.as_millis()).expect("ms");
                assert!(
                    within > 0 && within <= today + len - now,
                    "answered by the day's end: {within} ms"
                );
            }
            other => panic!("claimed and held today: {other:?}"),
        }
        let mut yesterdays = job.clone();
        yesterdays.submit_started_at = Some(Timestamp::from_ms(today - 1));
        match send_timing(&ctx, &yesterdays, &holds) {
            SendTiming::Wait(at, why) => {
                assert!(at <= now_ms() && why.contains("between the claim and the create"));
            }
            other => panic!("claimed yesterday: {other:?}"),
        }
        // A hold in a day that ends 10 ms from now: within the margin, it waits for the next.
        let ending = now_ms() + 10 - len;
        holds.flex = Some((ending, 0));
        match send_timing(&ctx, &job, &holds) {
            SendTiming::Wait(at, why) => {
                assert_eq!(at, ending + len);
                assert!(why.contains("turns before"), "{why}");
            }
            other => panic!("the day ends in 10 ms: {other:?}"),
        }
        holds.flex = None;
    }

    /// A create counted in the RPM window from its claim leaves within the transit margin
    /// of it, or is claimed again to be counted from when it leaves.
    #[tokio::test]
    async fn a_create_leaves_within_the_rpm_transit_margin_of_its_claim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(&dir.path().join("q.db")).expect("store");
        let ctx = ctx_on(store, "http://127.0.0.1:9/api/v3".into());
        let mut job = claimed_flex_job(&ctx, dir.path(), 60_000).await;
        job.service_tier = Tier::Default;
        let holds = Holds::new(&ctx, &job);
        let transit = ms(ctx.cfg.dispatch.rpm_transit());
        assert_eq!(transit, 2_000, "a thirtieth of Ark's minute");
        job.submit_started_at = Some(Timestamp::from_ms(now_ms() - transit / 2));
        assert!(matches!(
            send_timing(&ctx, &job, &holds),
            SendTiming::Go(None)
        ));
        job.submit_started_at = Some(Timestamp::from_ms(now_ms() - transit - 1));
        match send_timing(&ctx, &job, &holds) {
            SendTiming::Wait(at, why) => {
                assert!(at <= now_ms() && why.contains("RPM claim"), "{why}");
            }
            other => panic!("claimed {transit} ms ago: {other:?}"),
        }
        // Flex creates have no RPM unless the account sets `flex_rpm`.
        job.service_tier = Tier::Flex;
        assert!(matches!(
            send_timing(&ctx, &job, &holds),
            SendTiming::Go(None)
        ));
    }

    #[test]
    fn tpd_refusals_are_told_from_other_429s() {
        assert!(is_tpd_refusal(
            "QuotaExceeded",
            "The request failed because your account has exceeded its tokens per day (TPD) limit"
        ));
        assert!(!is_tpd_refusal(
            "QuotaExceeded",
            "The request failed because your account has too many queued tasks"
        ));
        assert!(!is_tpd_refusal(
            "ModelAccountRpmRateLimitExceeded",
            "requests-per-minute"
        ));
    }
}
