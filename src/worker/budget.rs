//! Spend caps that hold: per batch (`--max-cost` / `--max-tokens`), per day
//! (`[budget] daily_cny`) and per model per day (`[models."<id>"] daily_cny`).
//!
//! Reserve, commit, release, like the flex TPD reservation in `limiter`, but in the database
//! (`store::budget`) so that two `seedq run` processes on one database cannot overspend
//! together: the dispatcher reserves a job's estimated cost right before its POST; a create
//! that provably made no task gives it back; the poller replaces it with the billed usage;
//! an ambiguous create keeps it (counted as spent) until reconciliation settles it. A job
//! that does not fit goes back to `queued` with the reason (`budget_batch`: until the cap is
//! raised; `budget_daily`: until the next budget day). A job whose model has no price fits no
//! cap at all (`budget_unpriced`): under any cap it is never created until it has a price.

use crate::stage::StageError;
use chrono::{Offset, TimeZone};
use chrono_tz::Tz;

use super::Ctx;
use crate::catalogue::Catalogue;
use crate::config::fen_of_cny;
use crate::store::budget::{
    DailyCaps, HoldRequest, HoldStamp, Refusal, Scope, UNITS_PER_FEN, WAIT_BATCH, WAIT_DAILY,
    WAIT_UNPRICED,
};
use crate::store::{HELD, Job, Timestamp, now_ms};

/// Hold units per token of `model` on its tier: the catalogue's price (overridable per model)
/// in whole fen per million tokens, doubled on the default tier so flex's half stays whole.
/// 0 for a model without a price (outside the catalogue): only token caps bind it.
pub fn rate(catalogue: &Catalogue, model: &str, flex: bool) -> i64 {
    let Some(spec) = catalogue.get(model) else {
        return 0;
    };
    fen_of_cny(spec.price_per_million).map_or(0, |fen| if flex { fen } else { 2 * fen })
}

/// A CNY amount typed by a user (`500`, `12.5`, `0.01`) as whole fen, parsed as a decimal
/// so that no float rounding ever touches money.
///
/// # Errors
/// What is allowed, for the caller's message.
pub fn parse_cny(s: &str) -> Result<i64, String> {
    let allowed = || "a CNY amount ≥ 0 with at most two decimals, e.g. 500 or 12.5".to_string();
    let t = s.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 2 || whole.len() > 13 {
        return Err(allowed());
    }
    let whole: i64 = whole.parse().map_err(|_| allowed())?;
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().map_err(|_| allowed())?
    };
    Ok(whole * 100 + frac)
}

/// Hold units as CNY for display, rounded up to the fen.
pub fn fmt_units(units: i64) -> String {
    let fen = (units + UNITS_PER_FEN - 1).div_euclid(UNITS_PER_FEN);
    format!("{}.{:02} CNY", fen.div_euclid(100), fen.rem_euclid(100))
}

/// Whole fen as CNY for display.
pub fn fmt_fen(fen: i64) -> String {
    fmt_units(fen.saturating_mul(UNITS_PER_FEN))
}

/// Start of the budget day holding `now` (Unix ms): midnight in `tz` (at its current offset),
/// in days of `day_ms` (a day, except against a time-scaled simulator: `bulk.tpd_day`).
pub fn day_start(now: i64, tz: Tz, day_ms: i64) -> Timestamp {
    let off = chrono::DateTime::from_timestamp_millis(now).map_or(0, |t| {
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    });
    let off = i64::from(off) * 1000;
    let day = day_ms.max(1);
    Timestamp::from_ms((now + off).div_euclid(day) * day - off)
}

/// The daily caps in force for `model`, in fen.
pub fn daily_caps(ctx: &Ctx, model: &str) -> DailyCaps {
    let all_fen = ctx
        .ops
        .live
        .budget()
        .daily_cny
        .and_then(|v| fen_of_cny(v).ok());
    let model_fen = ctx
        .ops
        .live
        .catalogue()
        .get(model)
        .and_then(|s| s.daily_cny)
        .and_then(|v| fen_of_cny(v).ok());
    DailyCaps { all_fen, model_fen }
}

/// Why a job waits, and until when.
#[derive(Clone, Debug)]
pub struct Wait {
    /// `budget_batch` or `budget_daily` (the job's `last_error_code`).
    pub code: &'static str,
    /// When the dispatcher looks at it again (`HELD` for a batch cap: until it is raised).
    pub until: Timestamp,
    pub message: String,
    /// The refusal: which cap, and what was spent under it when the job was refused.
    pub refusal: Refusal,
    /// The budget day the refusal counted in.
    pub day: Timestamp,
}

/// Why a job on a model without a price waits under a spend cap, and what to do about it.
pub fn unpriced_reason(model: &str) -> String {
    format!(
        "no price for model {model}: add `[models.\"{model}\"] base = …` or a price (price_per_million) to config.toml and reload; a spend cap applies, and what this job would cost is unknown"
    )
}

/// The user-facing reason for a refusal.
pub fn describe(r: &Refusal, job: &Job) -> String {
    let batch = job.batch_id.as_deref().unwrap_or("-");
    match r.scope {
        Scope::BatchTokens => format!(
            "budget: batch {batch} --max-tokens {} reached ({} used + {} needed); waiting for `seedq batch set {batch} --max-tokens …`",
            r.cap, r.spent, r.need
        ),
        Scope::BatchCost => format!(
            "budget: batch {batch} --max-cost {} reached ({} used + {} needed); waiting for `seedq batch set {batch} --max-cost …`",
            fmt_units(r.cap),
            fmt_units(r.spent),
            fmt_units(r.need)
        ),
        Scope::Daily => format!(
            "budget: daily budget.daily_cny {} reached ({} used + {} needed); waiting for the next day",
            fmt_units(r.cap),
            fmt_units(r.spent),
            fmt_units(r.need)
        ),
        Scope::KeyDaily if r.need == 0 => format!(
            "budget: the API key has --max-cost-per-day {} but model {} has no price (or the job no size estimate), so its cost cannot be counted against the cap",
            fmt_units(r.cap),
            job.model
        ),
        Scope::KeyDaily => format!(
            "budget: the API key's --max-cost-per-day {} reached ({} used + {} needed); waiting for the next day",
            fmt_units(r.cap),
            fmt_units(r.spent),
            fmt_units(r.need)
        ),
        Scope::Unpriced => unpriced_reason(&job.model),
        Scope::ModelDaily => format!(
            "budget: {} daily_cny {} reached ({} used + {} needed); waiting for the next day",
            job.model,
            fmt_units(r.cap),
            fmt_units(r.spent),
            fmt_units(r.need)
        ),
    }
}

/// Reserves `job`'s estimated cost against every budget it falls under, or says why it
/// must wait. Jobs without an estimate reserve nothing (their size is unknown: Ark decides).
/// The stamp names the hold made, so the submit gives back exactly it.
///
/// # Errors
/// Store failures.
pub async fn reserve(ctx: &Ctx, job: &Job) -> Result<Result<HoldStamp, Wait>, StageError> {
    let now = now_ms();
    let day_ms = ctx.cfg.bulk.tpd_day_ms();
    let day = day_start(now, ctx.ops.live.tz(), day_ms);
    let req = HoldRequest {
        job_id: job.id.to_string(),
        batch: job.batch_id.clone(),
        model: job.model.clone(),
        day_start: day,
        tokens: job.est_tokens.unwrap_or(0).max(0),
        rate: rate(&ctx.ops.live.catalogue(), &job.model, job.is_flex()),
        priced: ctx.ops.live.catalogue().get(&job.model).is_some(),
    };
    match ctx
        .store
        .budget_reserve(req, daily_caps(ctx, &job.model))
        .await?
    {
        Ok(stamp) => Ok(Ok(stamp)),
        Err(r) => {
            let message = describe(&r, job);
            let (code, until) = match r.scope {
                Scope::BatchCost | Scope::BatchTokens => (WAIT_BATCH, HELD),
                Scope::Daily | Scope::ModelDaily | Scope::KeyDaily => {
                    (WAIT_DAILY, Timestamp::from_ms(day.ms() + day_ms))
                }
                // Until a reload gives the model a price or the cap goes (both wake it).
                Scope::Unpriced => (WAIT_UNPRICED, HELD),
            };
            crate::metrics::budget_refused(code);
            Ok(Err(Wait {
                code,
                until,
                message,
                refusal: r,
                day,
            }))
        }
    }
}

/// Whether the cap that refused `job` has less spent under it now than at the refusal: a
/// release (a create that made no task) committed between the refusal and the job's
/// requeue, and its wake-up could not see the job, which was not waiting yet. Called after
/// the requeue: any release from then on wakes the job itself.
///
/// # Errors
/// Store failures.
pub async fn released_since(ctx: &Ctx, job: &Job, wait: &Wait) -> Result<bool, StageError> {
    let spent = wait.refusal.spent;
    let now = match wait.refusal.scope {
        Scope::BatchCost | Scope::BatchTokens => {
            let Some(batch) = job.batch_id.as_deref() else {
                return Ok(false);
            };
            let s = ctx.store.batch_spend(batch).await?;
            if wait.refusal.scope == Scope::BatchCost {
                s.units
            } else {
                s.tokens
            }
        }
        Scope::Daily => ctx.store.day_spend(wait.day, None).await?.0,
        Scope::ModelDaily => {
            ctx.store
                .day_spend(wait.day, Some(job.model.clone()))
                .await?
                .1
        }
        // A key's day has no spend read of its own: its waiters are woken by the next release
        // or the next day. An unpriced model waits for a price (a reload), not for room.
        Scope::KeyDaily | Scope::Unpriced => return Ok(false),
    };
    Ok(now < spent)
}

/// Gives `job`'s reservation back: its create provably made no billable task.
///
/// # Errors
/// Store failures.
pub async fn release(ctx: &Ctx, job: &Job) -> Result<(), StageError> {
    if ctx.store.budget_release(job.id.as_str()).await? {
        ctx.poke_dispatch.notify_one();
    }
    Ok(())
}

/// What the planners know about the budgets: room left and how many jobs fit.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Plan {
    /// Room left under the batch's cost cap (hold units), if it has one.
    pub batch_left: Option<i64>,
    /// Room left under the batch's token cap.
    pub batch_tokens_left: Option<i64>,
    /// Room left today under `budget.daily_cny` (hold units).
    pub daily_left: Option<i64>,
    /// Room left today per model with a `daily_cny` (hold units).
    pub model_left: std::collections::BTreeMap<String, i64>,
    /// Jobs considered, and how many of them fit now (in order; one that does not fit is
    /// skipped, as the dispatcher does).
    pub jobs: usize,
    pub fit: usize,
    /// Models without a price among the jobs: under any cap their jobs never fit.
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub unpriced: std::collections::BTreeSet<String>,
    /// Jobs on those models.
    pub unpriced_jobs: usize,
}

impl Plan {
    /// Counts the jobs (model, tokens, rate) that fit, in order.
    pub fn count(&mut self, jobs: &[(String, i64, i64)]) {
        let (mut b, mut bt, mut d, mut m) = (
            self.batch_left,
            self.batch_tokens_left,
            self.daily_left,
            self.model_left.clone(),
        );
        self.jobs = jobs.len();
        self.fit = 0;
        self.unpriced_jobs = 0;
        let binds = self.binds();
        for (model, tokens, rate) in jobs {
            // The dispatcher's rule (`store::budget::unpriced`): no price, no create under a cap.
            if binds && self.unpriced.contains(model) {
                self.unpriced_jobs += 1;
                continue;
            }
            let need = tokens.saturating_mul(*rate);
            let ml = m.get(model).copied();
            let fits = b.is_none_or(|l| need <= l)
                && bt.is_none_or(|l| *tokens <= l)
                && d.is_none_or(|l| need <= l)
                && ml.is_none_or(|l| need <= l);
            if !fits {
                continue;
            }
            self.fit += 1;
            b = b.map(|l| l - need);
            bt = bt.map(|l| l - tokens);
            d = d.map(|l| l - need);
            if let Some(l) = ml {
                m.insert(model.clone(), l - need);
            }
        }
    }

    /// Whether any budget applies.
    pub fn binds(&self) -> bool {
        self.batch_left.is_some()
            || self.batch_tokens_left.is_some()
            || self.daily_left.is_some()
            || !self.model_left.is_empty()
    }

    /// "batch cap: 7.40 CNY left; today: 0.60 CNY left → 37 of 100 job(s) fit now".
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.batch_left {
            parts.push(format!("batch cap: {} left", fmt_floor(l)));
        }
        if let Some(l) = self.batch_tokens_left {
            parts.push(format!("batch token cap: {l} tokens left"));
        }
        if let Some(l) = self.daily_left {
            parts.push(format!("budget.daily_cny: {} left today", fmt_floor(l)));
        }
        for (model, l) in &self.model_left {
            parts.push(format!("{model} daily_cny: {} left today", fmt_floor(*l)));
        }
        let mut line = format!(
            "{} → {} of {} job(s) fit now",
            parts.join("; "),
            self.fit,
            self.jobs
        );
        if self.unpriced_jobs > 0 {
            let models: Vec<&str> = self.unpriced.iter().map(String::as_str).collect();
            line.push_str(&format!(
                "; {} job(s) unpriced, never created under a cap ({})",
                self.unpriced_jobs,
                models
                    .iter()
                    .map(|m| unpriced_reason(m))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        line
    }
}

/// Room (hold units) as CNY, rounded down to the fen: what still fits.
fn fmt_floor(units: i64) -> String {
    fmt_fen(units.max(0) / UNITS_PER_FEN)
}

/// The budgets `model`s of a batch (or of none) fall under now, with the room left.
///
/// # Errors
/// Store failures.
#[allow(clippy::too_many_arguments)]
pub async fn plan_for(
    store: &crate::store::Store,
    day_ms: i64,
    daily_cny: Option<f64>,
    catalogue: &Catalogue,
    tz: Tz,
    batch: Option<&str>,
    extra_cap_fen: Option<i64>,
    models: &[String],
) -> Result<Plan, StageError> {
    let mut plan = Plan::default();
    let mut cap_fen = extra_cap_fen;
    let mut cap_tokens = None;
    let (mut held, mut held_tokens) = (0, 0);
    if let Some(b) = batch {
        let s = store.batch_spend(b).await?;
        cap_fen = cap_fen.or(s.max_cost_fen);
        cap_tokens = s.max_tokens;
        held = s.units;
        held_tokens = s.tokens;
    }
    plan.batch_left = cap_fen.map(|f| f.saturating_mul(UNITS_PER_FEN) - held);
    plan.batch_tokens_left = cap_tokens.map(|t| t - held_tokens);
    let day = day_start(now_ms(), tz, day_ms);
    if let Some(fen) = daily_cny.and_then(|v| fen_of_cny(v).ok()) {
        let (spent, _) = store.day_spend(day, None).await?;
        plan.daily_left = Some(fen.saturating_mul(UNITS_PER_FEN) - spent);
    }
    for m in models {
        if catalogue.get(m).is_none() {
            plan.unpriced.insert(m.clone());
        }
        if plan.model_left.contains_key(m) {
            continue;
        }
        if let Some(fen) = catalogue
            .get(m)
            .and_then(|s| s.daily_cny)
            .and_then(|v| fen_of_cny(v).ok())
        {
            let (_, spent) = store.day_spend(day, Some(m.clone())).await?;
            plan.model_left
                .insert(m.clone(), fen.saturating_mul(UNITS_PER_FEN) - spent);
        }
    }
    Ok(plan)
}

/// Whether a budget binds `job`'s batch so that the deadline governor should keep its flex
/// jobs on flex (half price) rather than move them to the default tier: the room left under
/// the budgets cannot pay the batch's queued jobs (this one alone without a batch) at the
/// default price.
///
/// # Errors
/// Store failures.
pub async fn keeps_flex(ctx: &Ctx, job: &Job) -> Result<bool, StageError> {
    let catalogue = ctx.ops.live.catalogue();
    let jobs: Vec<Job> = match &job.batch_id {
        Some(b) => ctx.store.batch_jobs(b).await?,
        None => vec![job.clone()],
    };
    // A job being claimed right now (`submitting`) may not hold its reservation yet: the
    // claim and the hold are separate transactions, and another worker (or this one's
    // dispatcher) can sit between them. Counted here at its own tier's price before the
    // queued ones, it makes the check err towards keeping flex, never towards a move the
    // budget then cannot pay (seen on PostgreSQL, where the stages really run in parallel).
    let claiming: Vec<(String, i64, i64)> = jobs
        .iter()
        .filter(|j| j.state == crate::job::JobState::Submitting)
        .map(|j| {
            (
                j.model.clone(),
                j.est_tokens.unwrap_or(0),
                rate(&catalogue, &j.model, j.is_flex()),
            )
        })
        .collect();
    let queued: Vec<Job> = jobs
        .into_iter()
        .filter(|j| j.state == crate::job::JobState::Queued)
        .collect();
    let mut models: Vec<String> = queued.iter().map(|j| j.model.clone()).collect();
    models.sort_unstable();
    models.dedup();
    let mut plan = plan_for(
        &ctx.store,
        ctx.cfg.bulk.tpd_day_ms(),
        ctx.ops.live.budget().daily_cny,
        &catalogue,
        ctx.ops.live.tz(),
        job.batch_id.as_deref(),
        None,
        &models,
    )
    .await?;
    if !plan.binds() {
        return Ok(false);
    }
    let mut demand = claiming;
    demand.extend(queued.iter().map(|j| {
        (
            j.model.clone(),
            j.est_tokens.unwrap_or(0),
            rate(&catalogue, &j.model, false),
        )
    }));
    plan.count(&demand);
    Ok(plan.fit < demand.len())
}

/// Whether `jobs` (model, tokens, flex) cost more at the default price than `cap_fen`: then
/// a deadline batch's budget binds and the governor prefers flex at admission.
pub fn default_cost_exceeds(catalogue: &Catalogue, jobs: &[(String, i64)], cap_fen: i64) -> bool {
    let units: i64 = jobs
        .iter()
        .map(|(m, t)| t.saturating_mul(rate(catalogue, m, false)))
        .fold(0i64, i64::saturating_add);
    units > cap_fen.saturating_mul(UNITS_PER_FEN)
}

/// The budget families of `/metrics`, read from the database at scrape time like the other
/// levels: jobs waiting on a budget by reason, and today's spend against the daily caps.
///
/// # Errors
/// The store cannot be read.
pub async fn metrics_text(ctx: &Ctx, out: &mut String, now: i64) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let waiting = ctx.store.budget_waiting().await?;
    let _ = writeln!(
        out,
        "# HELP seedq_budget_waiting_jobs Queued jobs waiting on a spend cap, by reason.\n\
         # TYPE seedq_budget_waiting_jobs gauge"
    );
    for code in [WAIT_BATCH, WAIT_DAILY, WAIT_UNPRICED] {
        let n = waiting
            .iter()
            .find(|(c, _)| c == code)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "seedq_budget_waiting_jobs{{reason=\"{code}\"}} {n}");
    }
    let day = day_start(now, ctx.ops.live.tz(), ctx.cfg.bulk.tpd_day_ms());
    let (units, _) = ctx.store.day_spend(day, None).await?;
    let _ = writeln!(
        out,
        "# HELP seedq_budget_day_spent_fen Reserved and billed spend of the current budget day (fen).\n\
         # TYPE seedq_budget_day_spent_fen gauge\nseedq_budget_day_spent_fen {}",
        (units + UNITS_PER_FEN - 1).div_euclid(UNITS_PER_FEN)
    );
    if let Some(fen) = ctx
        .ops
        .live
        .budget()
        .daily_cny
        .and_then(|v| fen_of_cny(v).ok())
    {
        let _ = writeln!(
            out,
            "# HELP seedq_budget_daily_cap_fen budget.daily_cny in fen.\n\
             # TYPE seedq_budget_daily_cap_fen gauge\nseedq_budget_daily_cap_fen {fen}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_days_start_at_the_zones_midnight() {
        let tz: Tz = "Asia/Shanghai".parse().expect("zone");
        // 2026-05-14T16:00:00Z is midnight in Shanghai (UTC+8, no DST).
        let midnight = 1_778_774_400_000;
        let day = |now, len| day_start(now, tz, len).ms();
        assert_eq!(day(midnight, 86_400_000), midnight);
        assert_eq!(day(midnight - 1, 86_400_000), midnight - 86_400_000);
        // Short days (bulk.tpd_day) are counted from that midnight too.
        assert_eq!(day(midnight + 2_500, 2_000), midnight + 2_000);
    }

    #[test]
    fn typed_amounts_are_exact_fen() {
        assert_eq!(parse_cny("500"), Ok(50_000));
        assert_eq!(parse_cny("12.5"), Ok(1_250));
        assert_eq!(parse_cny("0.07"), Ok(7));
        for bad in ["", "-1", "1.234", "abc", "1e3", ".5", "1.2.3"] {
            assert!(parse_cny(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn a_plan_counts_the_jobs_that_fit_in_order() {
        let job = |m: &str, t: i64| (m.to_string(), t, 2000);
        let mut p = Plan {
            batch_left: Some(740 * UNITS_PER_FEN),
            ..Plan::default()
        };
        p.count(&vec![job("m", 19_845); 100]);
        assert_eq!((p.fit, p.jobs), (37, 100));
        // A job too big to fit is skipped; smaller ones after it still fit.
        let mut p = Plan {
            daily_left: Some(10 * UNITS_PER_FEN),
            ..Plan::default()
        };
        p.count(&[job("m", 1_000_000), job("m", 2_000), job("m", 2_000)]);
        assert_eq!(p.fit, 2);
        assert!(p.line().contains("2 of 3 job(s) fit now"), "{}", p.line());
    }

    #[test]
    fn money_is_whole_fen_and_flex_is_half() {
        let cat = Catalogue::default();
        let lite = "doubao-seedance-1-0-lite-t2v-250428";
        // 10 CNY per million: 1000 fen, doubled on the default tier.
        assert_eq!(rate(&cat, lite, false), 2000);
        assert_eq!(rate(&cat, lite, true), 1000);
        // 19,845 tokens at 10 CNY/M = 0.19845 CNY: shown rounded up to the fen.
        assert_eq!(fmt_units(19_845 * 2000), "0.20 CNY");
        assert_eq!(fmt_fen(50_000), "500.00 CNY");
        assert_eq!(rate(&cat, "ep-unknown", false), 0);
    }
}
