//! `seedq estimate` (before anything is spent) and `seedq stats --cost` (afterwards).
//!
//! The estimate reads a job file exactly as `submit` would (validated, nothing stored) or a
//! stored batch, and prints per model and tier the jobs, tokens, price and time to finish at
//! the model's limits (see `bulk::estimate`). Generation times come from recent completions
//! of the same model, tier and shape when there are any, else from the configured first-poll
//! times (`poll.first_poll_after`, `poll.flex_first_poll_after`), which are the same prior.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::Ctx;
use super::batch::{FileFormat, grouped};
use super::jobs::SubmitArgs;
use crate::bulk::estimate::{self, Estimate, GenTimes, Item, human_ms};
use crate::catalogue;
use crate::job::JobState;
use crate::stage::limiter::Limiter;
use crate::tier::Tier;

/// `seedq estimate`.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// A job file, as for `submit --file` (JSONL or CSV; `-` for stdin).
    #[arg(
        long,
        short = 'f',
        value_name = "FILE",
        required_unless_present = "batch"
    )]
    pub file: Option<PathBuf>,
    /// A stored batch instead: tokens and price of all its jobs, time for those still to run.
    #[arg(long, conflicts_with = "file")]
    pub batch: Option<String>,
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,
    /// Defaults for lines without them, as for `submit --file`.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    #[arg(long)]
    pub flex: bool,
    #[arg(long, value_name = "DURATION")]
    pub expires_after: Option<String>,
    /// A batch cap in CNY to plan with (as `submit --max-cost`); with `--batch`, instead of
    /// the batch's own.
    #[arg(long, value_name = "CNY")]
    pub max_cost: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// `seedq stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Compare the billed usage with the estimates, per model and tier, in tokens and CNY.
    #[arg(long)]
    pub cost: bool,
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(ctx: &Ctx, a: EstimateArgs) -> anyhow::Result<ExitCode> {
    // A batch can only be in an existing store: don't create one for a mistyped path.
    let store = if a.batch.is_some() {
        ctx.store_existing().await?
    } else {
        ctx.store().await?
    };
    let mut times = GenTimes::new(&store, &ctx.cfg.poll);
    let mut items = Vec::new();
    let mut learned = 0usize;
    let extra_cap = a
        .max_cost
        .as_deref()
        .map(|c| {
            crate::worker::budget::parse_cny(c)
                .map_err(|allowed| anyhow::anyhow!("--max-cost {c:?} is invalid: {allowed}"))
        })
        .transpose()?;
    // Jobs that would still reserve budget (queued ones of a batch; all of a file), in the
    // dispatcher's order: (model, tokens, rate).
    let mut to_reserve: Vec<(i64, String, String, i64, i64)> = Vec::new();
    let rate = |m: &str, flex: bool| crate::worker::budget::rate(&ctx.catalogue, m, flex);
    if let Some(name) = &a.batch {
        if store.batch(name).await?.is_none() {
            eprintln!("error: no batch named {name}");
            return Ok(ExitCode::from(1));
        }
        for j in store.batch_jobs(name).await? {
            let (gen_ms, l) = times
                .get(&j.model, j.service_tier, j.shape.as_deref())
                .await?;
            learned += usize::from(l);
            let pending = !j.state.is_terminal()
                && !matches!(j.state, JobState::Succeeded | JobState::Archiving);
            if j.state == JobState::Queued {
                to_reserve.push((
                    j.priority,
                    j.id.to_string(),
                    j.model.clone(),
                    j.est_tokens.unwrap_or(0),
                    rate(&j.model, j.is_flex()),
                ));
            }
            items.push(Item {
                flex: j.is_flex(),
                tokens: j.usage_tokens.or(j.est_tokens),
                model: j.model,
                gen_ms,
                pending,
            });
        }
    } else if let Some(path) = &a.file {
        let defaults = SubmitArgs {
            file: Some(path.clone()),
            format: a.format,
            model: a.model.clone(),
            flex: a.flex,
            expires_after: a.expires_after.clone(),
            ..Default::default()
        };
        let jobs = if super::batch::is_csv(path, a.format) {
            super::batch::prepare_csv(ctx, path, &defaults)?
        } else if path.as_os_str() == "-" {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            super::jobs::prepare_lines(ctx, std::io::stdin().lock(), &cwd, &defaults)?
        } else {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let base = path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf();
            super::jobs::prepare_lines(ctx, std::io::BufReader::new(f), &base, &defaults)?
        };
        for j in jobs {
            to_reserve.push((
                j.priority,
                j.id.to_string(),
                j.model.clone(),
                j.est_tokens.unwrap_or(0),
                rate(&j.model, j.flex),
            ));
            let tier = Tier::from_flex(j.flex);
            let (gen_ms, l) = times.get(&j.model, tier, j.shape.as_deref()).await?;
            learned += usize::from(l);
            items.push(Item {
                model: j.model,
                flex: j.flex,
                tokens: j.est_tokens,
                gen_ms,
                pending: true,
            });
        }
    }
    let est = estimate::estimate(
        &items,
        &ctx.catalogue,
        |m| Limiter::limits(&ctx.catalogue, m),
        ctx.cfg.bulk.tpd_day_ms(),
    );
    // The claim's order: priority, then id.
    to_reserve.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1)));
    let mut models: Vec<String> = to_reserve.iter().map(|j| j.2.clone()).collect();
    models.sort_unstable();
    models.dedup();
    let tz = crate::schedule::parse_tz(&ctx.cfg.maintenance.timezone).unwrap_or(chrono_tz::Tz::UTC);
    let mut budget = crate::worker::budget::plan_for(
        &store,
        ctx.cfg.bulk.tpd_day_ms(),
        ctx.cfg.budget.daily_cny,
        &ctx.catalogue,
        tz,
        a.batch.as_deref(),
        extra_cap,
        &models,
    )
    .await?;
    let jobs: Vec<(String, i64, i64)> = to_reserve
        .into_iter()
        .map(|(_, _, m, t, r)| (m, t, r))
        .collect();
    budget.count(&jobs);
    let mut out = std::io::stdout().lock();
    if a.json {
        let mut v = serde_json::to_value(&est)?;
        if let Some(o) = v.as_object_mut()
            && budget.binds()
        {
            o.insert("budget".into(), serde_json::to_value(&budget)?);
        }
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_estimate(&mut out, ctx, &est)?;
    if budget.binds() {
        writeln!(
            out,
            "
budget: {}",
            budget.line()
        )?;
    }
    writeln!(
        out,
        "\ngeneration times: {} of {} job(s) from recent completions, the rest assumed \
         ({} default, {} flex; poll.first_poll_after, poll.flex_first_poll_after)",
        learned,
        items.len(),
        human_ms(i64::try_from(ctx.cfg.poll.first_poll_after.as_millis()).unwrap_or(0)),
        human_ms(i64::try_from(ctx.cfg.poll.flex_first_poll_after.as_millis()).unwrap_or(0)),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn print_estimate(out: &mut impl Write, ctx: &Ctx, est: &Estimate) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<36}  {:<7}  {:>7}  {:>14}  {:>10}  {:>10}  LIMITS",
        "MODEL", "TIER", "JOBS", "TOKENS", "CNY", "TIME"
    )?;
    for r in &est.rows {
        let lim = Limiter::limits(&ctx.catalogue, &r.model);
        // Each tier under its own limits: flex has no slots or RPM at Ark (docs/ark-api.md §6.2 D3).
        let mut limits = if r.tier.is_flex() {
            let mut l = match lim.flex_max_in_flight {
                Some(c) => format!("{c} at once (flex_max_in_flight)"),
                None => "no concurrency cap".to_string(),
            };
            if let Some(rpm) = lim.flex_rpm {
                l.push_str(&format!(", {rpm} rpm (flex_rpm)"));
            }
            if let Some(tpd) = lim.flex_tpd {
                l.push_str(&format!(
                    ", {} tokens/day",
                    grouped(i64::try_from(tpd).unwrap_or(i64::MAX))
                ));
            }
            l
        } else {
            format!("{} slots, {} rpm", lim.concurrency, lim.rpm)
        };
        if r.tpd_days > 0 {
            limits.push_str(&format!(" (+{} day(s) of TPD)", r.tpd_days));
        }
        if r.unknown_tokens > 0 {
            limits.push_str(&format!(
                "; {} job(s) without a token estimate",
                r.unknown_tokens
            ));
        }
        writeln!(
            out,
            "{:<36}  {:<7}  {:>7}  {:>14}  {:>10}  {:>10}  {}",
            r.model,
            r.tier,
            r.jobs,
            grouped(r.tokens),
            // No price: the model is outside the catalogue (docs/models.md, pricing rules).
            r.cost
                .map_or_else(|| "unpriced".into(), |c| format!("{c:.2}")),
            human_ms(r.finish_ms),
            limits
        )?;
    }
    writeln!(
        out,
        "{:<36}  {:<7}  {:>7}  {:>14}  {:>10.2}  {:>10}",
        "total",
        "",
        est.jobs,
        grouped(est.tokens),
        est.cost,
        human_ms(est.finish_ms)
    )?;
    for r in est.rows.iter().filter(|r| r.cost.is_none()) {
        writeln!(
            out,
            "unpriced: {} (not in the total; under a spend cap these jobs are never created)",
            crate::worker::budget::unpriced_reason(&r.model)
        )?;
    }
    Ok(())
}

/// One line of `stats --cost`.
#[derive(serde::Serialize)]
struct CostLine {
    #[serde(flatten)]
    row: crate::store::CostRow,
    /// (billed − estimated) / estimated, in percent.
    token_error_pct: Option<f64>,
    est_cost: Option<f64>,
    cost: Option<f64>,
}

pub(crate) async fn stats_cost(ctx: &Ctx, json: bool) -> anyhow::Result<ExitCode> {
    let rows = ctx.store_existing().await?.cost_rows().await?;
    let lines: Vec<CostLine> = rows
        .into_iter()
        .map(|row| {
            let spec = ctx.catalogue.get(&row.model);
            let flex = row.tier.is_flex();
            CostLine {
                token_error_pct: (row.est_tokens > 0).then(|| {
                    (row.usage_tokens - row.est_tokens) as f64 * 100.0 / row.est_tokens as f64
                }),
                est_cost: spec.map(|s| catalogue::cost(s, row.est_tokens, flex)),
                cost: spec.map(|s| catalogue::cost(s, row.usage_tokens, flex)),
                row,
            }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &lines)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<7}  {:>7}  {:>14}  {:>14}  {:>8}  {:>10}  {:>10}",
        "MODEL", "TIER", "BILLED", "EST. TOKENS", "USED TOKENS", "ERROR", "EST. CNY", "CNY"
    )?;
    let money = |v: Option<f64>| v.map_or_else(|| "?".into(), |c| format!("{c:.2}"));
    for l in &lines {
        writeln!(
            out,
            "{:<36}  {:<7}  {:>7}  {:>14}  {:>14}  {:>8}  {:>10}  {:>10}",
            l.row.model,
            l.row.tier,
            l.row.jobs,
            grouped(l.row.est_tokens),
            grouped(l.row.usage_tokens),
            l.token_error_pct
                .map_or_else(|| "?".into(), |p| format!("{p:+.1}%")),
            money(l.est_cost),
            money(l.cost)
        )?;
        if l.row.unestimated > 0 {
            writeln!(out, "  ({} job(s) had no estimate)", l.row.unestimated)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
