//! Batches: CSV admission for `submit --file`, and `seedq batch ls|show|cancel|retry`.
//!
//! A batch is the jobs sharing a `batch` name. `submit --file F --batch NAME` creates it (JSONL
//! or CSV, all or nothing); the `batches` row keeps its creation time, source file and
//! deadline. Summaries are aggregated from per-(state, model, tier) cells, so they cost one
//! grouped query however large the batch is.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::Ctx;
use super::jobs::{SubmitArgs, new_job};
use crate::bulk::import;
use crate::catalogue::{self, Catalogue};
use crate::job::JobState;
use crate::request::{self, SpecError};
use crate::store::{BatchCell, BatchMeta, NewJob, Store, Timestamp};
use crate::tier::Tier;

/// The format of a `submit --file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    Jsonl,
    Csv,
}

/// Whether a `submit --file` is CSV: `--format csv`, or a `.csv` name without `--format`.
pub(crate) fn is_csv(path: &Path, format: Option<FileFormat>) -> bool {
    match format {
        Some(f) => f == FileFormat::Csv,
        None => path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
    }
}

/// Reads and validates a CSV file (`-` for stdin); all or nothing. Errors name the row (data
/// rows from 1, and the file line) and, where there is one, the column.
pub(crate) fn prepare_csv(
    ctx: &Ctx,
    path: &Path,
    defaults: &SubmitArgs,
) -> anyhow::Result<Vec<NewJob>> {
    let (rows, base) = if path.as_os_str() == "-" {
        let cwd = std::env::current_dir().context("reading the current directory")?;
        (import::read(std::io::stdin().lock()), cwd)
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (
            import::read(std::io::BufReader::with_capacity(1 << 20, f)),
            base,
        )
    };
    let rows = rows.with_context(|| format!("reading {}", path.display()))?;
    let mut jobs = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    // A key repeated inside one file is an error naming both rows (see `prepare_lines`).
    let mut keys: std::collections::HashMap<String, (u64, u64)> = Default::default();
    for row in rows {
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let (n, line) = (row.row, row.line);
        let mut spec = row.spec;
        if let Some(k) = &spec.key {
            if let Some((r0, l0)) = keys.get(k) {
                errors.push(format!(
                    "row {n} (line {line}), column key: {k:?} is already used by row {r0} (line {l0}) of this file"
                ));
                continue;
            }
            keys.insert(k.clone(), (n, line));
        }
        defaults.apply_defaults(&mut spec);
        match request::prepare(spec, &ctx.catalogue, &base) {
            Ok(p) => {
                for w in &p.warnings {
                    eprintln!("warning: row {n} (line {line}): {w}");
                }
                jobs.push(new_job(p)?);
            }
            Err(e) => errors.push(spec_error(n, line, &e)),
        }
    }
    super::jobs::reject_all(&errors, "row")?;
    Ok(jobs)
}

/// A validation error of one row, naming its column when the rule is about one.
fn spec_error(row: u64, line: u64, e: &SpecError) -> String {
    let column = match e {
        SpecError::Invalid(inv) => import::column_for_param(&inv.param),
        SpecError::ReadImage { field, .. } => import::column_for_param(field),
        SpecError::BadDuration { field, .. } => import::column_for_param(field),
        SpecError::NoModel { .. } => Some("model"),
    };
    match column {
        Some(c) => format!("row {row} (line {line}), column {c}: {e}"),
        None => format!("row {row} (line {line}): {e}"),
    }
}

/// Parses `--deadline`: a duration from now (`8h`) or an RFC 3339 time.
pub(crate) fn parse_deadline(s: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now + d);
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("--deadline {s:?} is neither a duration (8h) nor a time (2026-05-15T08:00:00Z)")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Ok(Timestamp::from_ms(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// Admission bookkeeping before the jobs are stored: a row for every batch named by the
/// jobs, with `--deadline` and the source file on the `--batch` one; with a deadline, the
/// governor picks each job's tier.
pub(crate) async fn register(
    ctx: &Ctx,
    store: &Store,
    a: &SubmitArgs,
    jobs: &mut [NewJob],
) -> anyhow::Result<()> {
    // Caps are checked before anything is stored, and recorded before the jobs are, so no
    // create can slip past them.
    let caps = batch_caps(a.max_cost.as_deref(), a.max_tokens)?;
    let mut names: Vec<String> = jobs.iter().filter_map(|j| j.batch.clone()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Ok(());
    }
    let deadline = match (&a.deadline, &a.batch) {
        (Some(d), Some(_)) => Some(parse_deadline(d, Timestamp::now())?),
        (Some(_), None) => bail!("--deadline belongs to a batch: give --batch NAME too"),
        _ => None,
    };
    if let (Some(d), Some(name)) = (deadline, &a.batch) {
        let own: Vec<usize> = (0..jobs.len())
            .filter(|&i| jobs[i].batch.as_deref() == Some(name.as_str()))
            .collect();
        // A cap that cannot pay the default price for the batch binds: flex (half price)
        // for every job that has it, even if the deadline may then slip.
        let binds = caps.and_then(|(fen, _)| fen).is_some_and(|fen| {
            let priced: Vec<(String, i64)> = own
                .iter()
                .map(|&i| (jobs[i].model.clone(), jobs[i].est_tokens.unwrap_or(0)))
                .collect();
            crate::worker::budget::default_cost_exceeds(&ctx.catalogue, &priced, fen)
        });
        if binds {
            let expires = crate::bulk::governor::expires_for(d.ms(), crate::store::now_ms());
            let mut flex = 0;
            for &i in &own {
                let j = &mut jobs[i];
                if expires.is_none() || !ctx.catalogue.get(&j.model).is_some_and(|s| s.flex) {
                    continue;
                }
                let (body, _) =
                    crate::bulk::governor::retier(&j.request_json, true, expires, &ctx.catalogue)
                        .map_err(|e| anyhow::anyhow!("job for {}: {e}", j.model))?;
                j.request_json = body;
                j.flex = true;
                j.expires_after = expires;
                flex += 1;
            }
            eprintln!(
                "{name}: the budget cannot pay the default tier: {flex} of {} job(s) on flex (half price); the deadline may slip",
                own.len()
            );
        } else {
            let mut mine: Vec<NewJob> = own.iter().map(|&i| jobs[i].clone()).collect();
            let (flex, default) =
                crate::bulk::governor::admit(store, &ctx.cfg, &ctx.catalogue, &mut mine, d).await?;
            for (&i, j) in own.iter().zip(mine) {
                jobs[i] = j;
            }
            eprintln!(
                "{name}: {flex} job(s) on flex, {default} on the default tier to finish by {}",
                super::jobs::fmt_time(d)
            );
        }
    }
    let source = a
        .file
        .as_ref()
        .filter(|p| p.as_os_str() != "-")
        .map(|p| p.display().to_string());
    let rows = names
        .into_iter()
        .map(|n| {
            let own = a.batch.as_deref() == Some(n.as_str());
            (
                n,
                if own { deadline } else { None },
                if own { source.clone() } else { None },
            )
        })
        .collect();
    store
        .ensure_batches(rows)
        .await
        .context("recording the batch")?;
    if let (Some(name), Some((fen, tokens))) = (&a.batch, caps) {
        store
            .set_batch_budget(name, fen.map(Some), tokens.map(Some))
            .await
            .context("recording the batch's budget")?;
    }
    Ok(())
}

/// `--max-cost` / `--max-tokens` checked: (fen, tokens), `None` when neither is given. In
/// `batch set`, `none` removes a cap (`Some(None)`).
type Caps = (Option<Option<i64>>, Option<Option<i64>>);

fn batch_caps(
    cost: Option<&str>,
    tokens: Option<u64>,
) -> anyhow::Result<Option<(Option<i64>, Option<i64>)>> {
    if cost.is_none() && tokens.is_none() {
        return Ok(None);
    }
    let fen = cost
        .map(|c| {
            crate::worker::budget::parse_cny(c)
                .map_err(|allowed| anyhow::anyhow!("--max-cost {c:?} is invalid: {allowed}"))
        })
        .transpose()?;
    let tokens = tokens
        .map(|t| {
            i64::try_from(t)
                .map_err(|_| anyhow::anyhow!("--max-tokens {t} is invalid: at most {}", i64::MAX))
        })
        .transpose()?;
    Ok(Some((fen, tokens)))
}

fn set_caps(cost: Option<&str>, tokens: Option<&str>) -> anyhow::Result<Caps> {
    let none = |v: &str| v.eq_ignore_ascii_case("none");
    let fen = match cost {
        None => None,
        Some(v) if none(v) => Some(None),
        Some(v) => Some(Some(crate::worker::budget::parse_cny(v).map_err(
            |allowed| anyhow::anyhow!("--max-cost {v:?} is invalid: {allowed}, or none"),
        )?)),
    };
    let tokens = match tokens {
        None => None,
        Some(v) if none(v) => Some(None),
        Some(v) => Some(Some(v.parse::<i64>().ok().filter(|t| *t >= 0).ok_or_else(
            || {
                anyhow::anyhow!(
                    "--max-tokens {v:?} is invalid: a whole number of tokens ≥ 0, or none"
                )
            },
        )?)),
    };
    if fen.is_none() && tokens.is_none() {
        bail!("batch set needs --max-cost CNY or --max-tokens N (or none to remove a cap)");
    }
    Ok((fen, tokens))
}

/// A batch's spend against its caps, for `batch show` and `watch`.
pub(crate) fn budget_line(s: &crate::store::budget::BatchSpend) -> String {
    use crate::worker::budget::{fmt_fen, fmt_units};
    let mut parts = Vec::new();
    if let Some(cap) = s.max_cost_fen {
        let left = cap
            .saturating_mul(crate::store::budget::UNITS_PER_FEN)
            .saturating_sub(s.units)
            .max(0);
        parts.push(format!(
            "{} of {} (billed {}), {} left",
            fmt_units(s.units),
            fmt_fen(cap),
            fmt_units(s.billed_units),
            // Left rounds down: it is what still fits.
            fmt_fen(left / crate::store::budget::UNITS_PER_FEN)
        ));
    }
    if let Some(cap) = s.max_tokens {
        parts.push(format!("{} of {} tokens", grouped(s.tokens), grouped(cap)));
    }
    if parts.is_empty() {
        parts.push(format!("no cap; {} held", fmt_units(s.units)));
    }
    if s.waiting > 0 {
        parts.push(format!("{} job(s) waiting on a budget", s.waiting));
    }
    for m in &s.unpriced {
        parts.push(crate::worker::budget::unpriced_reason(m));
    }
    parts.join("; ")
}

/// `seedq batch …`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// List batches with their progress, tokens and cost.
    Ls(super::jobs::JsonArg),
    /// One batch: counts per state, tokens, cost, timings and failures with reasons.
    Show(ShowArgs),
    /// Cancel every job of a batch that has not finished.
    Cancel(NameArg),
    /// Put a batch's failed jobs back in the queue.
    Retry(RetryArgs),
    /// Change a batch's spend cap; its jobs waiting on the budget are checked again.
    Set(SetArgs),
}

/// `batch set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    pub name: String,
    /// The cap in CNY (e.g. 500 or 12.5), or `none`.
    #[arg(long, value_name = "CNY")]
    pub max_cost: Option<String>,
    /// The cap in tokens, or `none`.
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens: Option<String>,
}

/// `batch show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    pub name: String,
    /// Failures listed at most.
    #[arg(long, default_value_t = 20)]
    pub failures: u32,
    #[arg(long)]
    pub json: bool,
}

/// A batch name.
#[derive(Debug, Args)]
pub struct NameArg {
    pub name: String,
}

/// `batch retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    pub name: String,
    /// Retry failed, dead and expired jobs.
    #[arg(long, required = true)]
    pub failed: bool,
    /// Also retry cancelled jobs.
    #[arg(long)]
    pub cancelled: bool,
}

pub(crate) async fn run(ctx: &Ctx, cmd: BatchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BatchCommand::Ls(a) => ls(ctx, a.json).await,
        BatchCommand::Show(a) => show(ctx, a).await,
        BatchCommand::Cancel(a) => cancel(ctx, a).await,
        BatchCommand::Retry(a) => retry(ctx, a).await,
        BatchCommand::Set(a) => set(ctx, a).await,
    }
}

async fn set(ctx: &Ctx, a: SetArgs) -> anyhow::Result<ExitCode> {
    let (fen, tokens) = set_caps(a.max_cost.as_deref(), a.max_tokens.as_deref())?;
    let store = ctx.store().await?;
    if store.batch(&a.name).await?.is_none() {
        bail!("no batch named {}", a.name);
    }
    let woken = store.set_batch_budget(&a.name, fen, tokens).await?;
    let spend = store.batch_spend(&a.name).await?;
    println!(
        "{}: {}; {woken} waiting job(s) checked again",
        a.name,
        budget_line(&spend)
    );
    Ok(ExitCode::SUCCESS)
}

/// A batch summed up from its cells.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub jobs: i64,
    pub states: BTreeMap<JobState, i64>,
    pub est_tokens: i64,
    pub usage_tokens: i64,
    /// The estimate of the jobs that have a usage, to compare with `usage_tokens`.
    pub est_tokens_of_used: i64,
    /// CNY at the catalogue's prices: the whole batch's estimate, and what was billed.
    pub est_cost: f64,
    pub spent_cost: f64,
    pub first_created: Option<Timestamp>,
    pub first_submitted: Option<Timestamp>,
    pub last_finished: Option<Timestamp>,
    pub mean_gen_ms: Option<i64>,
}

impl Summary {
    pub(crate) fn of<'a>(cells: impl IntoIterator<Item = &'a BatchCell>, cat: &Catalogue) -> Self {
        let mut s = Summary::default();
        let (mut gen_sum, mut gen_n) = (0i64, 0i64);
        for c in cells {
            s.jobs += c.jobs;
            *s.states.entry(c.state).or_insert(0) += c.jobs;
            s.est_tokens += c.est_tokens;
            s.usage_tokens += c.usage_tokens;
            s.est_tokens_of_used += c.est_tokens_of_used;
            if let Some(spec) = cat.get(&c.model) {
                let flex = c.tier.is_flex();
                s.est_cost += catalogue::cost(spec, c.est_tokens, flex);
                s.spent_cost += catalogue::cost(spec, c.usage_tokens, flex);
            }
            s.first_created = Some(
                s.first_created
                    .map_or(c.first_created, |v| v.min(c.first_created)),
            );
            s.first_submitted = min_opt(s.first_submitted, c.first_submitted);
            if c.state.is_terminal() || c.state == JobState::Succeeded {
                s.last_finished = max_opt(s.last_finished, c.last_finished);
            }
            gen_sum += c.gen_ms_sum;
            gen_n += c.gen_ms_count;
        }
        s.mean_gen_ms = (gen_n > 0).then(|| gen_sum / gen_n);
        s
    }

    pub(crate) fn count(&self, states: &[JobState]) -> i64 {
        states
            .iter()
            .map(|s| self.states.get(s).copied().unwrap_or(0))
            .sum()
    }

    /// Jobs that still need the service (`succeeded` ones only while archiving is on).
    pub(crate) fn active(&self, archiving: bool) -> i64 {
        let mut n = self.count(&[
            JobState::Queued,
            JobState::Submitting,
            JobState::SubmitUnknown,
            JobState::Submitted,
        ]);
        if archiving {
            n += self.count(&[JobState::Succeeded, JobState::Archiving]);
        }
        n
    }

    /// Jobs that came out with a video.
    pub(crate) fn done(&self, archiving: bool) -> i64 {
        if archiving {
            self.count(&[JobState::Archived])
        } else {
            self.count(&[JobState::Succeeded, JobState::Archiving, JobState::Archived])
        }
    }

    pub(crate) fn failed(&self) -> i64 {
        self.count(&[JobState::Failed, JobState::Dead, JobState::Expired])
    }

    /// "archived 480, failed 5, queued 15" in lifecycle order.
    pub(crate) fn states_line(&self) -> String {
        let parts: Vec<String> = self
            .states
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        if parts.is_empty() {
            "no jobs".into()
        } else {
            parts.join(", ")
        }
    }
}

fn min_opt(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

pub(crate) fn archiving(ctx: &Ctx) -> bool {
    !ctx.cfg.archive.url.is_empty()
}

/// Thousands separated by spaces: 54 450 000.
pub(crate) fn grouped(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub(crate) fn fmt_opt_time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), super::jobs::fmt_time)
}

#[derive(Serialize)]
struct LsRow {
    #[serde(flatten)]
    meta: BatchMeta,
    #[serde(flatten)]
    summary: Summary,
}

async fn ls(ctx: &Ctx, json: bool) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let metas = store.batches().await?;
    let cells = store.batch_cells(None).await?;
    let mut by_batch: BTreeMap<&str, Vec<&BatchCell>> = BTreeMap::new();
    for c in &cells {
        by_batch.entry(c.batch.as_str()).or_default().push(c);
    }
    let rows: Vec<LsRow> = metas
        .into_iter()
        .map(|meta| {
            let summary = Summary::of(
                by_batch
                    .get(meta.name.as_str())
                    .into_iter()
                    .flatten()
                    .copied(),
                &ctx.catalogue,
            );
            LsRow { meta, summary }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let arch = archiving(ctx);
    writeln!(
        out,
        "{:<24}  {:<20}  {:>7}  {:>7}  {:>7}  {:>7}  {:>14}  {:>10}  DEADLINE",
        "BATCH", "CREATED", "JOBS", "DONE", "ACTIVE", "FAILED", "TOKENS", "COST"
    )?;
    for r in &rows {
        let s = &r.summary;
        writeln!(
            out,
            "{:<24}  {:<20}  {:>7}  {:>7}  {:>7}  {:>7}  {:>14}  {:>10.2}  {}",
            r.meta.name,
            super::jobs::fmt_time(r.meta.created_at),
            s.jobs,
            s.done(arch),
            s.active(arch),
            s.failed(),
            grouped(if s.usage_tokens > 0 {
                s.usage_tokens
            } else {
                s.est_tokens
            }),
            if s.spent_cost > 0.0 {
                s.spent_cost
            } else {
                s.est_cost
            },
            fmt_opt_time(r.meta.deadline_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One (model, tier) line of `batch show`.
#[derive(Serialize)]
struct ModelRow {
    model: String,
    tier: Tier,
    #[serde(flatten)]
    summary: Summary,
}

/// The batch's budget in `batch show --json`: whole fen (spent rounds up), tokens, waiters.
fn budget_json(s: &crate::store::budget::BatchSpend) -> serde_json::Value {
    let per = crate::store::budget::UNITS_PER_FEN;
    serde_json::json!({
        "max_cost_fen": s.max_cost_fen,
        "max_tokens": s.max_tokens,
        "spent_fen": (s.units + per - 1).div_euclid(per),
        "billed_fen": (s.billed_units + per - 1).div_euclid(per),
        "tokens": s.tokens,
        "waiting": s.waiting,
        "unpriced": s.unpriced,
    })
}

async fn show(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let Some(meta) = store.batch(&a.name).await? else {
        eprintln!("error: no batch named {}", a.name);
        return Ok(ExitCode::from(1));
    };
    let cells = store.batch_cells(Some(a.name.clone())).await?;
    let failures = store.batch_failures(&a.name, a.failures).await?;
    let spend = store.batch_spend(&a.name).await?;
    // `seedq pause --batch`: its queued jobs are held back until `seedq resume --batch`.
    let paused_at = store
        .paused_at(crate::store::PauseKind::Batch, &a.name)
        .await?;
    let summary = Summary::of(&cells, &ctx.catalogue);
    let mut per_model: BTreeMap<(String, Tier), Vec<&BatchCell>> = BTreeMap::new();
    for c in &cells {
        per_model
            .entry((c.model.clone(), c.tier))
            .or_default()
            .push(c);
    }
    let models: Vec<ModelRow> = per_model
        .into_iter()
        .map(|((model, tier), cs)| ModelRow {
            summary: Summary::of(cs, &ctx.catalogue),
            model,
            tier,
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({
            "batch": meta, "summary": summary, "models": models, "failures": failures,
            "budget": budget_json(&spend), "paused_at": paused_at,
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = &summary;
    let arch = archiving(ctx);
    let row = |k: &str, v: String| format!("{k:>12}  {v}");
    writeln!(out, "{}", row("batch", meta.name.clone()))?;
    writeln!(
        out,
        "{}",
        row("created", super::jobs::fmt_time(meta.created_at))
    )?;
    writeln!(
        out,
        "{}",
        row("source", meta.source.clone().unwrap_or_else(|| "-".into()))
    )?;
    writeln!(out, "{}", row("deadline", fmt_opt_time(meta.deadline_at)))?;
    if let Some(at) = paused_at {
        let since = super::jobs::fmt_time(at);
        writeln!(
            out,
            "{}",
            row(
                "paused",
                format!("since {since}: queued jobs wait for `seedq resume --batch`")
            )
        )?;
    }
    writeln!(out, "{}", row("budget", budget_line(&spend)))?;
    writeln!(
        out,
        "{}",
        row(
            "jobs",
            format!(
                "{} ({} done, {} active, {} failed): {}",
                s.jobs,
                s.done(arch),
                s.active(arch),
                s.failed(),
                s.states_line()
            )
        )
    )?;
    writeln!(
        out,
        "{}",
        row(
            "tokens",
            format!(
                "estimated {}; used {} (estimated {} for those jobs)",
                grouped(s.est_tokens),
                grouped(s.usage_tokens),
                grouped(s.est_tokens_of_used)
            )
        )
    )?;
    writeln!(
        out,
        "{}",
        row(
            "cost",
            format!(
                "estimated {:.2} CNY; spent {:.2} CNY",
                s.est_cost, s.spent_cost
            )
        )
    )?;
    let elapsed = match (s.first_created, s.last_finished) {
        (Some(a), Some(b)) if s.active(arch) == 0 => {
            crate::bulk::estimate::human_ms(b.ms() - a.ms())
        }
        (Some(a), _) => format!(
            "{} so far",
            crate::bulk::estimate::human_ms(Timestamp::now().ms() - a.ms())
        ),
        _ => "-".into(),
    };
    writeln!(
        out,
        "{}",
        row(
            "timings",
            format!(
                "first submit {}, last finish {}, elapsed {}, mean generation {}",
                fmt_opt_time(s.first_submitted),
                fmt_opt_time(s.last_finished),
                elapsed,
                s.mean_gen_ms
                    .map_or_else(|| "-".into(), crate::bulk::estimate::human_ms)
            )
        )
    )?;
    writeln!(
        out,
        "\n{:<36}  {:<7}  {:>7}  {:>14}  {:>14}  {:>10}  {:>10}",
        "MODEL", "TIER", "JOBS", "EST. TOKENS", "USED TOKENS", "EST. CNY", "SPENT CNY"
    )?;
    for m in &models {
        writeln!(
            out,
            "{:<36}  {:<7}  {:>7}  {:>14}  {:>14}  {:>10.2}  {:>10.2}",
            m.model,
            m.tier,
            m.summary.jobs,
            grouped(m.summary.est_tokens),
            grouped(m.summary.usage_tokens),
            m.summary.est_cost,
            m.summary.spent_cost
        )?;
    }
    if !failures.is_empty() {
        writeln!(
            out,
            "\nfailures ({} of {}):",
            failures.len(),
            s.count(&[
                JobState::Failed,
                JobState::Dead,
                JobState::Expired,
                JobState::Cancelled
            ])
        )?;
        for f in &failures {
            let reason = match (&f.code, &f.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "-".into(),
            };
            writeln!(out, "  {}  {:<9}  {}", f.id, f.state.as_str(), reason)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(ctx: &Ctx, a: NameArg) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    if store.batch(&a.name).await?.is_none() {
        eprintln!("error: no batch named {}", a.name);
        return Ok(ExitCode::from(1));
    }
    let r = store.cancel_batch(&a.name).await?;
    println!(
        "{}: {} queued job(s) cancelled, cancel requested for {} remote job(s)",
        a.name, r.cancelled, r.requested
    );
    Ok(ExitCode::SUCCESS)
}

async fn retry(ctx: &Ctx, a: RetryArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    if store.batch(&a.name).await?.is_none() {
        eprintln!("error: no batch named {}", a.name);
        return Ok(ExitCode::from(1));
    }
    let r = store.retry_batch(&a.name, a.cancelled).await?;
    println!("{}: {} job(s) queued again", a.name, r.requeued);
    if r.skipped_chain_shots > 0 {
        println!(
            "{}: {} chain shot(s) left to their chains (see seedq chain show)",
            a.name, r.skipped_chain_shots
        );
    }
    Ok(ExitCode::SUCCESS)
}
