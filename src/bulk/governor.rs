//! The flex governor: a batch with a deadline runs on flex while that can still finish in
//! time, and on the default tier where it cannot.
//!
//! The daily token budget itself (TPD) is enforced by the dispatcher (`worker::dispatch`),
//! per model, in days of `bulk.tpd_day` starting at `dispatch.tpd_utc_offset_hours`
//! midnight, and so is the flex window (`maintenance.flex_window`). The governor only decides
//! tiers, by simulating the model's queue in claim order ([`plan`]): each job starts when the
//! slots ahead of it free up (learned generation times, the model's concurrency) and, on
//! flex, on the first day whose remaining budget covers it, once the flex window is open; a
//! flex job of a deadline batch that would then finish later than the deadline (with
//! `bulk.deadline_safety` as margin) goes to the default tier.
//!
//! It decides twice: at admission (`submit --deadline`: flex where it fits, default for the
//! rest, the flex ones with `execution_expires_after` up to the deadline) and then every
//! `bulk.governor_interval` in the service, since the queue, the learned times and the day's
//! spending change. It only ever moves queued jobs from flex to default, never back (no
//! flapping), and only queued ones: their body is rewritten and re-checked before any POST.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::estimate::GenTimes;
use crate::ark::wire::CreateTaskRequest;
use crate::catalogue::{Catalogue, Limits};
use crate::config::Config;
use crate::request::{self, EXPIRES_RANGE, Invalid};
use crate::stage::limiter::Limiter;
use crate::stage::{Ctx, Outcome, StageError, Verdict};
use crate::store::{NewJob, QueuedJob, Store, StoreError, Timestamp, now_ms};
use crate::tier::Tier;

/// One queued job in claim order, as the plan sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub flex: bool,
    pub tokens: i64,
    /// Expected generation time on flex and on default (ms).
    pub flex_ms: i64,
    pub default_ms: i64,
    /// The batch's deadline (ms), if any; only such jobs may be moved.
    pub deadline: Option<i64>,
}

/// The model's situation.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    /// The default tier's concurrency.
    pub slots: i64,
    /// Flex tasks at once: the account's `flex_max_in_flight` or the ceiling learned from
    /// Ark's 429s; `None` when nothing bounds them (Ark sets flex no concurrency, "flex：无",
    /// docs/reference/tutorial.txt:329-380), so a flex job starts as soon as TPD allows.
    pub flex_slots: Option<i64>,
    pub tpd: Option<i64>,
    /// Flex tokens already submitted today.
    pub spent_today: i64,
    pub day_start: i64,
    pub day_ms: i64,
    /// Generation time still ahead of the default tasks in flight (ms, summed over them).
    pub busy_ms: i64,
    /// The same for the flex tasks in flight.
    pub flex_busy_ms: i64,
}

/// Indices of the flex jobs in `queue` (claim order) that would miss their deadline on flex.
///
/// List scheduling on the flex tier alone: a flex job starts when the flex slots (if
/// bounded) have worked through the flex work ahead of it, and on the first day whose budget
/// covers the flex tokens up to and including it, and then at `flex_open(t)`, the first time
/// from `t` at which flex jobs may be submitted. Default jobs take no flex slot or budget. A
/// job that goes to default no longer counts against the budget, which may let later flex
/// jobs through.
pub fn plan(
    queue: &[Queued],
    m: &ModelState,
    now: i64,
    safety: f64,
    flex_open: &dyn Fn(i64) -> i64,
) -> Vec<usize> {
    // Each tier works through its own queue: flex never waits for default slots, so the
    // default work ahead does not delay a flex job (docs/ark-api.md §6.2 D3).
    let mut flex_work = m.flex_busy_ms;
    let mut flex_tokens = 0i64;
    let mut moves = Vec::new();
    for (i, j) in queue.iter().enumerate() {
        let mut flex = j.flex;
        if flex {
            let by_slots = m.flex_slots.map_or(now, |s| now + flex_work / s.max(1));
            let by_budget = match m.tpd {
                Some(tpd) if tpd > 0 => {
                    let through = m.spent_today + flex_tokens + j.tokens;
                    if through <= tpd {
                        now
                    } else {
                        m.day_start + ((through - 1) / tpd) * m.day_ms
                    }
                }
                _ => now,
            };
            let finish = flex_open(by_slots.max(by_budget)) + j.flex_ms;
            let late = j
                .deadline
                .is_some_and(|d| now + ((finish - now) as f64 * safety) as i64 > d);
            if late {
                moves.push(i);
                flex = false;
            }
        }
        if flex {
            flex_tokens += j.tokens;
            flex_work += j.flex_ms;
        }
    }
    moves
}

/// Rewrites a frozen body for a tier: `service_tier`, and for flex an
/// `execution_expires_after` of `expires_after` seconds. The result is re-checked.
///
/// # Errors
/// The body breaks a rule on that tier.
pub fn retier(
    body: &str,
    flex: bool,
    expires_after: Option<i64>,
    catalogue: &Catalogue,
) -> Result<(String, request::Effective), RetierError> {
    let mut req: CreateTaskRequest = serde_json::from_str(body)?;
    if flex {
        req.service_tier = Some(Tier::Flex.to_string());
        if let Some(s) = expires_after {
            req.execution_expires_after = Some(s);
        }
    } else {
        req.service_tier = None;
    }
    let effective = request::check(&req, catalogue)?;
    Ok((serde_json::to_string(&req)?, effective))
}

/// Why a body could not change tier.
#[derive(Debug, thiserror::Error)]
pub enum RetierError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("the stored body is not a request")]
    Body(#[from] serde_json::Error),
}

/// `execution_expires_after` for a flex job due by `deadline`: the time left, within the
/// API's bounds; `None` when less than the shortest allowed window is left.
pub fn expires_for(deadline: i64, now: i64) -> Option<i64> {
    let left = (deadline - now) / 1000;
    (left >= EXPIRES_RANGE.0).then(|| left.min(EXPIRES_RANGE.1))
}

/// Steps of the search for the flex window's next opening, and how far it looks (a day).
const WINDOW_STEP_MS: i64 = 60_000;
const WINDOW_STEPS: i64 = 24 * 60;

/// The first time from `t` at which `open` holds, to the minute, looking a day ahead; `t`
/// itself when it never does (the dispatcher is then the judge).
pub fn next_open(open: impl Fn(i64) -> bool, t: i64) -> i64 {
    (0..=WINDOW_STEPS)
        .map(|k| t + k * WINDOW_STEP_MS)
        .find(|&x| open(x))
        .unwrap_or(t)
}

/// Whether flex jobs may be submitted at a time, by `maintenance.flex_window` (for the CLI,
/// which has no live settings).
fn window_of(cfg: &Config) -> impl Fn(i64) -> bool {
    use crate::schedule::{FlexWindow, parse_tz};
    let window = FlexWindow::parse(&cfg.maintenance.flex_window)
        .ok()
        .flatten();
    let tz = parse_tz(&cfg.maintenance.timezone).unwrap_or(chrono_tz::Tz::UTC);
    move |t| window.is_none_or(|w| w.open_at(t, tz))
}

/// The model's state for a plan: limits, today's flex spending, work in flight.
async fn model_state(
    store: &Store,
    cfg: &Config,
    limits: Limits,
    model: &str,
    (in_flight, flex_in_flight): (i64, i64),
    (typical_ms, typical_flex_ms): (i64, i64),
    learned_flex_ceiling: Option<u32>,
) -> Result<ModelState, StoreError> {
    let day_ms = cfg.bulk.tpd_day_ms();
    let day_start = super::tpd_day_start(now_ms(), cfg.dispatch.tpd_utc_offset_hours, day_ms);
    let spent_today = if limits.flex_tpd.is_some() {
        store
            .flex_tokens_since(model, Timestamp::from_ms(day_start))
            .await?
    } else {
        0
    };
    Ok(ModelState {
        slots: i64::from(limits.concurrency),
        flex_slots: [limits.flex_max_in_flight, learned_flex_ceiling]
            .into_iter()
            .flatten()
            .min()
            .map(i64::from),
        tpd: limits
            .flex_tpd
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        spent_today,
        day_start,
        day_ms,
        // A task in flight is about half way through, on average.
        busy_ms: in_flight * typical_ms / 2,
        flex_busy_ms: flex_in_flight * typical_flex_ms / 2,
    })
}

/// Tasks in flight per model: (default, flex).
async fn in_flight_by_tier(store: &Store) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
    let mut m: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (model, tier, n) in store.in_flight_by_tier().await? {
        let e = m.entry(model).or_default();
        if tier.is_flex() {
            e.1 += n;
        } else {
            e.0 += n;
        }
    }
    Ok(m)
}

async fn queued_view(
    times: &mut GenTimes<'_>,
    model: &str,
    q: &[QueuedJob],
) -> Result<Vec<Queued>, StoreError> {
    let mut out = Vec::with_capacity(q.len());
    for j in q {
        let (flex_ms, _) = times.get(model, Tier::Flex, j.shape.as_deref()).await?;
        let (default_ms, _) = times.get(model, Tier::Default, j.shape.as_deref()).await?;
        out.push(Queued {
            flex: j.flex,
            tokens: j.tokens,
            flex_ms,
            default_ms,
            deadline: j.deadline,
        });
    }
    Ok(out)
}

/// Admission with a deadline: every job of a model with a flex tier goes in as flex (its
/// `execution_expires_after` the time left, at most 72 h), then the plan, run over the
/// model's queue with the new jobs behind it, moves to default those that would be late.
/// Returns (flex, default) counts.
///
/// # Errors
/// A body that breaks a rule on its new tier, or store errors.
pub async fn admit(
    store: &Store,
    cfg: &Config,
    catalogue: &Catalogue,
    jobs: &mut [NewJob],
    deadline: Timestamp,
) -> Result<(usize, usize), StageError> {
    let deadline = deadline.ms();
    let now = now_ms();
    let expires = expires_for(deadline, now);
    let mut by_model: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        by_model.entry(j.model.clone()).or_default().push(i);
    }
    let in_flight = in_flight_by_tier(store).await?;
    let mut times = GenTimes::new(store, &cfg.poll);
    let (mut flex_n, mut default_n) = (0, 0);
    for (model, idx) in by_model {
        let can_flex = expires.is_some() && catalogue.get(&model).is_some_and(|s| s.flex);
        let existing = store.queue_of(&model).await?;
        let mut view = queued_view(&mut times, &model, &existing).await?;
        let base = view.len();
        // The new jobs join the queue behind the existing ones of the same priority; the
        // plan only moves new ones here (the service's governor looks after the rest).
        for &i in &idx {
            let j = &jobs[i];
            let (flex_ms, _) = times.get(&model, Tier::Flex, j.shape.as_deref()).await?;
            let (default_ms, _) = times.get(&model, Tier::Default, j.shape.as_deref()).await?;
            view.push(Queued {
                flex: can_flex,
                tokens: j.est_tokens.unwrap_or(0),
                flex_ms,
                default_ms,
                deadline: Some(deadline),
            });
        }
        let typical = view.first().map_or((0, 0), |q| (q.default_ms, q.flex_ms));
        // The CLI has no learned ceiling (it lives in the service): the configured one only.
        let state = model_state(
            store,
            cfg,
            Limiter::limits(catalogue, &model),
            &model,
            in_flight.get(&model).copied().unwrap_or((0, 0)),
            typical,
            None,
        )
        .await?;
        let open = window_of(cfg);
        let moves = plan(&view, &state, now, cfg.bulk.deadline_safety, &|t| {
            next_open(&open, t)
        });
        for (k, &i) in idx.iter().enumerate() {
            let flex = can_flex && !moves.contains(&(base + k));
            let j = &mut jobs[i];
            let (body, _) = retier(&j.request_json, flex, expires, catalogue)
                .map_err(|e| StageError::msg(format!("job for {}: {e}", j.model)))?;
            j.request_json = body;
            j.flex = flex;
            if flex {
                j.expires_after = expires;
                flex_n += 1;
            } else {
                default_n += 1;
            }
        }
    }
    Ok((flex_n, default_n))
}

/// The governor's loop in the service.
///
/// # Errors
/// Only when the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let every = ctx.cfg.bulk.governor_interval;
    loop {
        ctx.ops.health.beat("governor");
        // One worker of a fleet governs (worker/fleet.rs): two would plan the same queue.
        let result = if ctx.fleet.leads(crate::stage::fleet::GOVERNOR) {
            step(&ctx).await
        } else {
            Ok(Outcome::Idle(None))
        };
        if let Err(e) = result {
            match e.verdict() {
                Verdict::End => {
                    return Err(anyhow::Error::from(e).context("governor: the store is gone"));
                }
                // The governor runs on its own interval, outage or not: it has no backoff.
                Verdict::StoreOutage(_) | Verdict::BackOff => {
                    tracing::warn!(error = %e.report(), "governor step failed");
                }
            }
        }
        // Cancel-safe: both branches only wait.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every.max(Duration::from_millis(10))) => {}
        }
    }
}

/// Re-plans every model with queued flex jobs of a deadline batch; moves the late ones.
///
/// # Errors
/// Store failures.
pub async fn step(ctx: &Ctx) -> Result<Outcome, StageError> {
    let models = ctx.store.governed_models().await?;
    if models.is_empty() {
        return Ok(Outcome::Idle(None));
    }
    let now = now_ms();
    let in_flight = in_flight_by_tier(&ctx.store).await?;
    let mut times = GenTimes::new(&ctx.store, &ctx.cfg.poll);
    let mut moved_any = false;
    for model in models {
        let queue = ctx.store.queue_of(&model).await?;
        let view = queued_view(&mut times, &model, &queue).await?;
        let typical = view.first().map_or((0, 0), |q| (q.default_ms, q.flex_ms));
        let state = model_state(
            &ctx.store,
            &ctx.cfg,
            ctx.ops.live.limits(&model),
            &model,
            in_flight.get(&model).copied().unwrap_or((0, 0)),
            typical,
            ctx.limiter.flex_ceiling(&model),
        )
        .await?;
        let live = &ctx.ops.live;
        let moves = plan(&view, &state, now, ctx.cfg.bulk.deadline_safety, &|t| {
            next_open(|x| live.flex_window_open(x), t)
        });
        if moves.is_empty() {
            continue;
        }
        let mut changes = Vec::with_capacity(moves.len());
        let mut bound: std::collections::HashMap<Option<String>, bool> = Default::default();
        for i in moves {
            let q = &queue[i];
            let Some(job) = ctx.store.job(q.id.as_str()).await? else {
                continue;
            };
            // A binding budget cannot pay the default price: flex (half) stays.
            let binds = match bound.get(&job.batch_id) {
                Some(b) => *b,
                None => {
                    let b = crate::worker::budget::keeps_flex(ctx, &job).await?;
                    bound.insert(job.batch_id.clone(), b);
                    b
                }
            };
            if binds {
                tracing::info!(job_id = %q.id, "kept on flex: its budget cannot pay the default tier");
                continue;
            }
            match retier(&job.request_json, false, None, &ctx.catalogue) {
                Ok((body, _)) => changes.push((q.id.clone(), q.token, body)),
                Err(e) => {
                    tracing::warn!(job_id = %q.id, error = %e, "cannot move the job to the default tier")
                }
            }
        }
        let n = changes.len();
        let moved = ctx
            .store
            .to_default_tier(
                changes,
                "governor: default tier, flex would miss the batch deadline".into(),
            )
            .await?;
        if moved > 0 {
            moved_any = true;
            tracing::info!(model = %model, moved, planned = n, "moved flex jobs to the default tier to meet their deadline");
            ctx.poke_dispatch.notify_one();
        }
    }
    Ok(if moved_any {
        Outcome::Worked
    } else {
        Outcome::Idle(None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn flex(tokens: i64, deadline: Option<i64>) -> Queued {
        Queued {
            flex: true,
            tokens,
            flex_ms: 10 * MIN,
            default_ms: MIN,
            deadline,
        }
    }

    fn model(slots: i64, tpd: Option<i64>) -> ModelState {
        ModelState {
            slots,
            flex_slots: None,
            tpd,
            spent_today: 0,
            day_start: 0,
            day_ms: 24 * 60 * MIN,
            busy_ms: 0,
            flex_busy_ms: 0,
        }
    }

    #[test]
    fn a_roomy_deadline_keeps_flex() {
        let q = vec![flex(100, Some(60 * MIN)); 10];
        assert!(plan(&q, &model(10, None), 0, 1.5, &|t| t).is_empty());
    }

    #[test]
    fn a_flex_ceiling_pushes_the_tail_to_default() {
        // A flex ceiling of 2, 10 min per flex job, due in 35 min with a 1.0 margin: job i
        // starts after the flex work ahead of it divided by 2 (5 min per job), so the seventh
        // would finish at 40 min; the eighth too (moved jobs leave the flex queue).
        let q = vec![flex(1, Some(35 * MIN)); 8];
        let m = ModelState {
            flex_slots: Some(2),
            ..model(100, None)
        };
        assert_eq!(plan(&q, &m, 0, 1.0, &|t| t), vec![6, 7]);
    }

    #[test]
    fn flex_is_not_bound_by_the_default_concurrency() {
        // Two default slots busy for hours: flex, unbounded, starts now all the same.
        let q = vec![flex(1, Some(35 * MIN)); 8];
        let m = ModelState {
            busy_ms: 600 * MIN,
            ..model(2, None)
        };
        assert!(plan(&q, &m, 0, 1.0, &|t| t).is_empty());
    }

    #[test]
    fn the_day_budget_moves_what_cannot_run_before_the_deadline() {
        // Budget 300 tokens a day, 100 per job: three fit today; the rest would wait for
        // tomorrow, after the deadline. Jobs without a deadline are never moved.
        let mut q = vec![flex(100, Some(60 * MIN)); 5];
        q.push(flex(100, None));
        let moved = plan(&q, &model(100, Some(300)), 0, 1.0, &|t| t);
        assert_eq!(moved, vec![3, 4]);
        // With the deadline after tomorrow's start, they wait for it instead.
        let q = vec![flex(100, Some(26 * 60 * MIN)); 5];
        assert!(plan(&q, &model(100, Some(300)), 0, 1.0, &|t| t).is_empty());
    }

    #[test]
    fn default_jobs_take_no_flex_budget() {
        let mut q = vec![Queued {
            flex: false,
            ..flex(1_000, None)
        }];
        q.push(flex(100, Some(20 * MIN)));
        assert!(plan(&q, &model(1, Some(100)), 0, 1.0, &|t| t).is_empty());
    }

    #[test]
    fn a_closed_flex_window_delays_flex_starts() {
        // The window opens in 50 minutes: a ten-minute flex job due in 55 cannot make it.
        let q = vec![flex(1, Some(55 * MIN))];
        let opens = |t: i64| t.max(50 * MIN);
        assert_eq!(plan(&q, &model(10, None), 0, 1.0, &opens), vec![0]);
        assert!(plan(&q, &model(10, None), 0, 1.0, &|t| t).is_empty());
        assert_eq!(next_open(|t| t >= 90 * MIN, 0), 90 * MIN);
        assert_eq!(next_open(|_| false, 7), 7);
    }

    #[test]
    fn expiry_follows_the_deadline_within_the_api_bounds() {
        assert_eq!(expires_for(2 * 3_600_000, 0), Some(7_200));
        assert_eq!(expires_for(30 * MIN, 0), None);
        assert_eq!(expires_for(100 * 3_600_000, 0), Some(259_200));
    }

    #[test]
    fn retier_rewrites_and_rechecks_the_body() {
        let c = Catalogue::default();
        let body = r#"{"model":"doubao-seedance-1-0-lite-t2v-250428","content":[{"type":"text","text":"x"}],"resolution":"480p","ratio":"16:9"}"#;
        let (flexed, e) = retier(body, true, Some(7_200), &c).expect("flex");
        assert!(e.flex);
        assert!(flexed.contains("\"service_tier\":\"flex\"") && flexed.contains("7200"));
        let (back, e) = retier(&flexed, false, None, &c).expect("default");
        assert!(!e.flex);
        assert!(!back.contains("service_tier"));
        // A model without a flex tier refuses it.
        let v2 = body.replace(
            "doubao-seedance-1-0-lite-t2v-250428",
            "doubao-seedance-2-0-260128",
        );
        assert!(retier(&v2, true, Some(7_200), &c).is_err());
    }
}
