//! `seedq watch [--batch NAME]`: live progress of batches.
//!
//! On a terminal, one indicatif bar per batch (finished of total) with its counts per state,
//! throughput and ETA. Elsewhere (a pipe, a log file, a test) plain lines, one per batch,
//! printed when something changed and at least every [`HEARTBEAT`] otherwise. The CLI reads
//! the database the service writes (WAL), so watching never slows the service beyond a few
//! grouped queries per interval.
//!
//! The ETA comes from the learned generation times of the remaining jobs' model, tier and
//! shape and the model's limits per tier (default: slots and RPM; flex: TPD days and the
//! account's optional ceilings), the same model as `seedq estimate`;
//! throughput is the finishes per minute over the last [`RATE_WINDOW`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Ctx;
use super::batch::{Summary, archiving};
use crate::bulk::estimate::{self, GenTimes, human_ms};
use crate::job::JobState;
use crate::stage::limiter::Limiter;
use crate::store::{BatchCell, Store};

/// Plain mode prints an unchanged line again after this long, so a log shows it is alive.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Throughput is measured over this much recent history.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// `seedq watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Watch this batch (repeatable); default: every batch with work left.
    #[arg(long = "batch", value_name = "NAME")]
    pub batches: Vec<String>,
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Exit once the watched batches have nothing left to do (exit 1 if any job failed).
    #[arg(long)]
    pub exit_when_done: bool,
    /// Plain lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

/// What one refresh knows about one batch.
struct View {
    name: String,
    summary: Summary,
    finished: i64,
    active: i64,
    eta_ms: Option<i64>,
    /// Spend against the batch's cap, and jobs waiting on a budget; `None`
    /// without a cap or waiters.
    budget: Option<String>,
}

/// Finished counts over time, for the throughput.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, i64)>,
}

impl Rate {
    fn push(&mut self, now: Instant, finished: i64) -> Option<f64> {
        self.samples.push_back((now, finished));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, n0) = *self.samples.front()?;
        let dt = now.duration_since(t0).as_secs_f64();
        (dt >= 0.5).then(|| (finished - n0) as f64 * 60.0 / dt)
    }
}

pub(crate) async fn run(ctx: &Ctx, a: WatchArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    for b in &a.batches {
        if store.batch(b).await?.is_none() {
            eprintln!("error: no batch named {b}");
            return Ok(ExitCode::from(1));
        }
    }
    let tty = !a.plain && std::io::stdout().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:<20.bold} [{bar:32.green/blue}] {pos:>6}/{len:<6} {msg}",
    )?
    .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut rates: HashMap<String, Rate> = HashMap::new();
    let mut printed: HashMap<String, (String, Instant)> = HashMap::new();
    // Without --batch: the batches with work left, and any that finish while we watch.
    let mut seen: Vec<String> = a.batches.clone();
    let arch = archiving(ctx);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let views = refresh(ctx, &store, &a.batches, &mut seen, arch).await?;
        let now = Instant::now();
        let mut out = std::io::stdout().lock();
        if views.is_empty() && !tty {
            let line = "no batch has work left".to_string();
            if printed
                .get("")
                .is_none_or(|(l, t)| *l != line || now.duration_since(*t) >= HEARTBEAT)
            {
                writeln!(out, "{line}")?;
                printed.insert(String::new(), (line, now));
            }
        }
        for v in &views {
            let per_min = rates
                .entry(v.name.clone())
                .or_default()
                .push(now, v.finished);
            let msg = status_line(v, per_min);
            if tty {
                let bar = bars.entry(v.name.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(0));
                    b.set_style(style.clone());
                    b.set_prefix(v.name.clone());
                    b
                });
                bar.set_length(u64::try_from(v.summary.jobs).unwrap_or(0));
                bar.set_position(u64::try_from(v.finished).unwrap_or(0));
                bar.set_message(msg);
            } else {
                // Only the counts decide whether a line is news; rate and ETA drift anyway.
                let counts = format!(
                    "{}: {}/{} finished · {} · {:?}",
                    v.name,
                    v.finished,
                    v.summary.jobs,
                    v.summary.states_line(),
                    v.budget
                );
                let stale = printed
                    .get(&v.name)
                    .is_none_or(|(l, t)| *l != counts || now.duration_since(*t) >= HEARTBEAT);
                if stale {
                    writeln!(
                        out,
                        "{}: {}/{} finished · {msg}",
                        v.name, v.finished, v.summary.jobs
                    )?;
                    printed.insert(v.name.clone(), (counts, now));
                }
            }
        }
        out.flush()?;
        drop(out);
        let done = views.iter().all(|v| v.active == 0);
        if a.exit_when_done && done {
            for b in bars.values() {
                b.finish();
            }
            let failed: i64 = views.iter().map(|v| v.summary.failed()).sum();
            let mut out = std::io::stdout().lock();
            for v in &views {
                writeln!(
                    out,
                    "{}: done: {} of {} job(s) finished with a video, {} failed ({})",
                    v.name,
                    v.summary.done(arch),
                    v.summary.jobs,
                    v.summary.failed(),
                    v.summary.states_line()
                )?;
            }
            return Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        // Cancel-safe: both branches only wait.
        tokio::select! {
            _ = &mut ctrl_c => {
                for b in bars.values() {
                    b.abandon();
                }
                return Ok(ExitCode::SUCCESS);
            }
            _ = tokio::time::sleep(a.interval) => {}
        }
    }
}

/// "archived 10, submitted 5, queued 30 · 12.0/min · eta 3m 05s".
fn status_line(v: &View, per_min: Option<f64>) -> String {
    let rate = per_min.map_or_else(|| "-/min".into(), |r| format!("{r:.1}/min"));
    let eta = match (v.active, v.eta_ms) {
        (0, _) => "done".to_string(),
        (_, Some(ms)) => format!("eta {}", human_ms(ms)),
        (_, None) => "eta ?".into(),
    };
    let budget = v
        .budget
        .as_ref()
        .map_or_else(String::new, |b| format!(" · budget: {b}"));
    format!("{} · {rate} · {eta}{budget}", v.summary.states_line())
}

async fn refresh(
    ctx: &Ctx,
    store: &Store,
    wanted: &[String],
    seen: &mut Vec<String>,
    arch: bool,
) -> anyhow::Result<Vec<View>> {
    let cells = if wanted.len() == 1 {
        store.batch_cells(Some(wanted[0].clone())).await?
    } else {
        store.batch_cells(None).await?
    };
    let mut by_batch: BTreeMap<String, Vec<BatchCell>> = BTreeMap::new();
    for c in cells {
        by_batch.entry(c.batch.clone()).or_default().push(c);
    }
    let mut times = GenTimes::new(store, &ctx.cfg.poll);
    let mut views = Vec::new();
    let names: Vec<String> = if wanted.is_empty() {
        for (name, cs) in &by_batch {
            let active = Summary::of(cs.iter(), &ctx.catalogue).active(arch);
            if active > 0 && !seen.contains(name) {
                seen.push(name.clone());
            }
        }
        seen.clone()
    } else {
        wanted.to_vec()
    };
    for name in names {
        let cs = by_batch.remove(&name).unwrap_or_default();
        let summary = Summary::of(cs.iter(), &ctx.catalogue);
        let active = summary.active(arch);
        let finished = summary.jobs - active;
        let eta_ms = eta(ctx, &mut times, &cs, arch).await?;
        let spend = store.batch_spend(&name).await?;
        let budget =
            (spend.max_cost_fen.is_some() || spend.max_tokens.is_some() || spend.waiting > 0)
                .then(|| super::batch::budget_line(&spend));
        views.push(View {
            name,
            summary,
            finished,
            active,
            eta_ms,
            budget,
        });
    }
    Ok(views)
}

/// Time to finish a batch's remaining jobs at their models' limits, from learned times.
async fn eta(
    ctx: &Ctx,
    times: &mut GenTimes<'_>,
    cells: &[BatchCell],
    arch: bool,
) -> anyhow::Result<Option<i64>> {
    // Per model and tier (each tier has its own limits, docs/ark-api.md §6.2 D3): jobs, summed and
    // longest generation time, and the flex tokens still to be created (against TPD).
    let mut per_model: BTreeMap<(&str, bool), (i64, i64, i64, i64)> = BTreeMap::new();
    for c in cells {
        let remaining = times
            .remaining(c.state, &c.model, c.tier, c.shape.as_deref())
            .await?;
        let Some(gen_ms) = remaining else {
            continue;
        };
        let flex = c.tier.is_flex();
        let m = per_model.entry((c.model.as_str(), flex)).or_default();
        m.0 += c.jobs;
        m.1 += gen_ms * c.jobs;
        m.2 = m.2.max(gen_ms);
        if flex && c.state == JobState::Queued {
            m.3 += c.est_tokens;
        }
    }
    if per_model.is_empty() {
        return Ok(if arch { None } else { Some(0) });
    }
    let day = ctx.cfg.bulk.tpd_day_ms();
    Ok(per_model
        .into_iter()
        .map(|((model, flex), (n, sum, max, tokens))| {
            let limits = Limiter::limits(&ctx.catalogue, model);
            if flex {
                estimate::finish_ms_flex(n, sum, max, &limits, tokens, day).0
            } else {
                estimate::finish_ms(n, sum, max, &limits, 0, day).0
            }
        })
        .max())
}
