//! The dispatcher: claim a queued job within its model's limits, POST it, record the outcome.
//!
//! Never pay twice (design.md): the claim records the intent (`submitting`, with a timestamp)
//! before the POST; the remote id is written the moment the POST returns; anything ambiguous
//! becomes `submit_unknown` for reconciliation and is never blindly re-POSTed. Only failures
//! that provably did not reach the API (connect refused, 429, 4xx) go back to the queue.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::limiter::Blocked;
use super::{Ctx, Outcome, ms};
use crate::ark::ErrorClass;
use crate::job::JobState;
use crate::store::{Job, Patch, now_ms};

/// The dispatcher loop.
///
/// # Errors
/// Only when the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken, instance: u32) -> anyhow::Result<()> {
    let role = super::Role::nth(&ctx, ctx.poke_dispatch.clone(), instance);
    super::stage_loop("dispatch", &ctx, role, shutdown, || step(&ctx)).await
}

/// Start of the current TPD day (ms), in the configured UTC offset (Ark counts in Beijing).
pub fn day_start_ms(now: i64, offset_hours: i32) -> i64 {
    let off = i64::from(offset_hours) * 3_600_000;
    (now + off).div_euclid(86_400_000) * 86_400_000 - off
}

/// Jobs one dispatcher claims in one transaction and submits concurrently.
const CLAIM_BATCH: u32 = 8;

/// Claims a batch of jobs of one model within its limits and submits them.
///
/// # Errors
/// Store failures.
pub async fn step(ctx: &Ctx) -> anyhow::Result<Outcome> {
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
        // The limiter's check and record bracket the claim under one lock, so the RPM window
        // can never be overrun by dispatchers racing each other.
        let claimed = {
            let _admission = ctx.admission.lock().await;
            let now = now_ms();
            let room = match ctx.limiter.room(&model, limits.rpm, now) {
                Ok(room) => room,
                Err(Blocked::Paused(t) | Blocked::Rpm(t)) => {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                    continue;
                }
            };
            let flex_ok = ctx.ops.live.flex_window_open(now)
                && flex_budget_left(ctx, &model, limits.flex_tpd).await?;
            let limit = u32::try_from(room).unwrap_or(u32::MAX).min(CLAIM_BATCH);
            let jobs = ctx
                .store
                .claim_for_submit(
                    &model,
                    flex_ok,
                    limits.concurrency,
                    limit,
                    &ctx.owner,
                    ctx.lease_ms(),
                )
                .await?;
            for _ in &jobs {
                ctx.limiter.record(&model, now);
            }
            jobs
        };
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
    Ok(Outcome::Idle(wake))
}

/// The current TPD day of `model`, with its spend loaded into the limiter.
async fn flex_day(ctx: &Ctx, model: &str) -> anyhow::Result<i64> {
    // `bulk.tpd_day` is a day except against a time-scaled simulator.
    let day = crate::bulk::tpd_day_start(
        now_ms(),
        ctx.cfg.dispatch.tpd_utc_offset_hours,
        ctx.cfg.bulk.tpd_day_ms(),
    );
    if !ctx.limiter.knows_flex_day(model, day) {
        let spent = ctx.store.flex_tokens_since(model, day).await?;
        ctx.limiter.load_flex_day(model, day, spent);
    }
    Ok(day)
}

/// Whether flex jobs of `model` may be claimed today: the estimated tokens already submitted
/// since the day began are below the TPD budget.
async fn flex_budget_left(ctx: &Ctx, model: &str, tpd: Option<u64>) -> anyhow::Result<bool> {
    let Some(tpd) = tpd else { return Ok(true) };
    let day = flex_day(ctx, model).await?;
    Ok(ctx.limiter.flex_room(model, day, tpd))
}

async fn submit(ctx: &Ctx, job: Job) -> anyhow::Result<()> {
    let token = job.lease_token;
    if job.cancel_requested {
        ctx.store
            .transition(
                &job.id,
                JobState::Submitting,
                token,
                JobState::Cancelled,
                Patch::new(),
                Some("cancelled before submit".into()),
            )
            .await?;
        return Ok(());
    }
    // The flex budget must hold for this job too, not only for those before it: reserve its
    // tokens before the POST, and give them back if no task was made.
    let mut reserved: Option<(i64, i64)> = None;
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
                .transition(
                    &job.id,
                    JobState::Submitting,
                    token,
                    JobState::Queued,
                    Patch::new()
                        .set("attempts", job.attempts - 1)
                        .set("next_attempt_at", next_day),
                    Some(format!(
                        "flex TPD budget reached ({spent}+{need} > {tpd} tokens)"
                    )),
                )
                .await?;
            return Ok(());
        }
        reserved = Some((day, need));
    }
    // Spend caps (issue 15): reserved in the database, so other processes see it too.
    if let Err(wait) = super::budget::reserve(ctx, &job).await? {
        if let Some((day, need)) = reserved {
            ctx.limiter.release_flex(&job.model, day, need);
        }
        tracing::info!(reason = %wait.message, "waiting on a budget");
        ctx.store
            .transition(
                &job.id,
                JobState::Submitting,
                token,
                JobState::Queued,
                Patch::new()
                    .set("attempts", job.attempts - 1)
                    .set("next_attempt_at", wait.until)
                    .set("last_error_code", wait.code.to_string())
                    .set("last_error_message", wait.message.clone())
                    .clear("lease_until"),
                Some(wait.message),
            )
            .await?;
        return Ok(());
    }
    let body = with_callback(ctx, &job)?;
    let result = ctx.ark.create(&body).await;
    crate::ops::metrics::create(
        &job.model,
        &job.service_tier,
        result
            .as_ref()
            .map_or_else(|e| e.class().name(), |_| "accepted"),
    );
    let now = now_ms();
    match result {
        Ok(resp) => {
            let first_poll = super::poll::first_poll_at(ctx, &job, now).await?;
            let patch = Patch::new()
                .set("remote_task_id", resp.id.clone())
                .set("remote_status", "queued".to_string())
                .set("submitted_at", now)
                .set("next_attempt_at", first_poll)
                .set("poll_count", 0i64)
                .clear("lease_until")
                .clear("last_error_code")
                .clear("last_error_message");
            match ctx
                .store
                .transition(
                    &job.id,
                    JobState::Submitting,
                    token,
                    JobState::Submitted,
                    patch,
                    Some(format!("accepted as {}", resp.id)),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(remote_id = %resp.id, "submitted");
                    ctx.poke_poll.notify_one();
                    Ok(())
                }
                // The lease ran out during the POST and reconciliation took the job over:
                // give it the id we now know, so nothing is paid twice.
                Err(crate::store::StoreError::Conflict { .. }) => {
                    super::reconcile::adopt_known(ctx, &job.id, &resp.id, now).await
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => {
            let class = e.class();
            // Only an ambiguous create may have made a (billable) task.
            if let Some((day, need)) = reserved
                && class != ErrorClass::Ambiguous
            {
                ctx.limiter.release_flex(&job.model, day, need);
            }
            if class != ErrorClass::Ambiguous {
                super::budget::release(ctx, &job).await?;
            }
            let code = e.code().unwrap_or("transport").to_string();
            let msg = format!("{e:#}");
            let backoff = ctx.submit_backoff();
            let (to, patch, detail) = match class {
                ErrorClass::Throttled(ra) => {
                    let pause = ra.unwrap_or(ctx.cfg.dispatch.throttle_pause);
                    let until = now + ms(pause);
                    ctx.limiter.pause(&job.model, until);
                    tracing::warn!(code = %code, pause = ?pause, "throttled; pausing this model's creates");
                    // A 429 is the account's limit, not the job's fault: it keeps its attempts.
                    (
                        JobState::Queued,
                        Patch::new()
                            .set("attempts", job.attempts - 1)
                            .set("next_attempt_at", until),
                        format!("throttled: {code}"),
                    )
                }
                ErrorClass::NeverSent
                    if job.attempts < i64::from(ctx.cfg.dispatch.max_attempts) =>
                {
                    let delay =
                        backoff.delay_random(u32::try_from(job.attempts).unwrap_or(1), None);
                    tracing::warn!(error = %msg, retry_in = ?delay, "create never reached ark; will retry");
                    (
                        JobState::Queued,
                        Patch::new().set("next_attempt_at", now + ms(delay)),
                        format!("never sent: {msg}"),
                    )
                }
                ErrorClass::NeverSent => (
                    JobState::Dead,
                    Patch::new(),
                    format!("attempts exhausted: {msg}"),
                ),
                ErrorClass::Rejected | ErrorClass::Transient => {
                    tracing::error!(code = %code, error = %msg, "create rejected");
                    (JobState::Failed, Patch::new(), format!("rejected: {code}"))
                }
                ErrorClass::Ambiguous => {
                    tracing::warn!(error = %msg, "create outcome unknown; reconciling");
                    (
                        JobState::SubmitUnknown,
                        Patch::new().set(
                            "next_attempt_at",
                            now + ms(ctx.cfg.dispatch.reconcile_interval).min(5_000),
                        ),
                        format!("ambiguous: {msg}"),
                    )
                }
            };
            let patch = patch
                .set("last_error_code", code)
                .set("last_error_message", msg)
                .clear("lease_until");
            ctx.store
                .transition(
                    &job.id,
                    JobState::Submitting,
                    token,
                    to,
                    patch,
                    Some(detail),
                )
                .await?;
            if to == JobState::Queued {
                ctx.poke_dispatch.notify_one();
            }
            Ok(())
        }
    }
}

/// The frozen body, plus seedq's own callback URL when callbacks are on and the user set
/// none. The user's fields are never changed.
fn with_callback(ctx: &Ctx, job: &Job) -> anyhow::Result<String> {
    let Some(url) = super::callback::url_for(ctx, job) else {
        return Ok(job.request_json.clone());
    };
    let mut v: serde_json::Value = serde_json::from_str(&job.request_json)?;
    if let Some(o) = v.as_object_mut()
        && !o.contains_key("callback_url")
    {
        o.insert("callback_url".into(), serde_json::Value::String(url));
    }
    Ok(serde_json::to_string(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpd_days_start_at_beijing_midnight() {
        // 2026-05-14T16:00:00Z is midnight in UTC+8.
        let midnight_bj = 1_778_774_400_000;
        assert_eq!(day_start_ms(midnight_bj, 8), midnight_bj);
        assert_eq!(day_start_ms(midnight_bj + 1, 8), midnight_bj);
        assert_eq!(day_start_ms(midnight_bj - 1, 8), midnight_bj - 86_400_000);
        assert_eq!(day_start_ms(86_400_000 * 3 + 5, 0), 86_400_000 * 3);
    }
}
