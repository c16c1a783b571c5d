//! Job commands: submit, ls, show, stats, cancel, retry.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use super::Ctx;
use crate::bulk::import;
use crate::job::JobState;
use crate::request::{self, JobSpec, Prepared};
use crate::store::{CancelOutcome, Job, ListFilter, NewJob, RetryOutcome, Timestamp};

/// `--json` alone.
#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `seedq submit`.
#[derive(Debug, Args, Default)]
pub struct SubmitArgs {
    /// The prompt (may contain inline commands such as `--rs 720p`; quote it).
    pub prompt: Option<String>,
    /// Read one JSON job per line from FILE (`-` for stdin) instead; a `.csv` file has one job
    /// per row, its header naming the fields.
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// The --file format (default: csv for a .csv name, else jsonl).
    #[arg(long, value_enum, requires = "file")]
    pub format: Option<super::batch::FileFormat>,
    /// Model id or endpoint id; for --file, the default for lines without one.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// First-frame image: a file, an http(s) URL, a data: URL or asset://ID.
    #[arg(long, value_name = "IMG")]
    pub first_frame: Option<String>,
    /// Last-frame image (with --first-frame).
    #[arg(long, value_name = "IMG")]
    pub last_frame: Option<String>,
    /// Reference image (repeatable).
    #[arg(long = "ref", value_name = "IMG")]
    pub refs: Vec<String>,
    /// Reference video URL or asset://ID (repeatable; 2.x models).
    #[arg(long = "video-ref", value_name = "URL")]
    pub video_refs: Vec<String>,
    /// Reference audio URL or asset://ID (repeatable; 2.x models).
    #[arg(long = "audio-ref", value_name = "URL")]
    pub audio_refs: Vec<String>,
    /// 480p, 720p or 1080p (model-dependent).
    #[arg(long)]
    pub resolution: Option<String>,
    /// 16:9, 4:3, 1:1, 3:4, 9:16, 21:9 or adaptive.
    #[arg(long)]
    pub ratio: Option<String>,
    /// Seconds.
    #[arg(long, conflicts_with = "frames")]
    pub duration: Option<i64>,
    /// Frame count, 25 + 4n in [29, 289].
    #[arg(long)]
    pub frames: Option<i64>,
    /// Seed in [-1, 4294967295]; without it seedq derives one from the job id.
    #[arg(long, allow_hyphen_values = true)]
    pub seed: Option<i64>,
    #[arg(long)]
    pub camera_fixed: bool,
    #[arg(long)]
    pub watermark: bool,
    /// Also return the last frame as PNG (for chaining shots).
    #[arg(long)]
    pub return_last_frame: bool,
    /// Use the flex tier (offline, half price, slower).
    #[arg(long)]
    pub flex: bool,
    /// execution_expires_after, e.g. 48h (1h..72h).
    #[arg(long, value_name = "DURATION")]
    pub expires_after: Option<String>,
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// seedq queue priority: higher is submitted first.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i64>,
    /// Tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Idempotency key: submitting the same key again is a no-op.
    #[arg(long = "key", value_name = "IDEMPOTENCY_KEY")]
    pub key: Option<String>,
    /// Batch name.
    #[arg(long)]
    pub batch: Option<String>,
    /// The batch's deadline (`8h` from now, or an RFC 3339 time): seedq picks flex while it
    /// can still finish in time, else default.
    #[arg(long, value_name = "WHEN", requires = "batch")]
    pub deadline: Option<String>,
    /// The batch's spend cap in CNY (e.g. 500 or 12.5): creates that would exceed it wait,
    /// queued, until `seedq batch set NAME --max-cost …` raises it.
    #[arg(long, value_name = "CNY", requires = "batch")]
    pub max_cost: Option<String>,
    /// The batch's cap in tokens (estimated, then billed), like `--max-cost`.
    #[arg(long, value_name = "TOKENS", requires = "batch")]
    pub max_tokens: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Validate only: check the job (or every line of --file) against the rules and store
    /// nothing. Exit 0 when all are valid, 2 otherwise; with --json and a JSONL file, one
    /// verdict per line (`line`, `ok`, `param`, `code`, `error`, `warnings`).
    #[arg(long)]
    pub check: bool,
}

impl SubmitArgs {
    fn to_spec(&self) -> JobSpec {
        JobSpec {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            first_frame: self.first_frame.clone(),
            last_frame: self.last_frame.clone(),
            refs: self.refs.clone(),
            video_refs: self.video_refs.clone(),
            audio_refs: self.audio_refs.clone(),
            resolution: self.resolution.clone(),
            ratio: self.ratio.clone(),
            duration: self.duration,
            frames: self.frames,
            seed: self.seed,
            camera_fixed: self.camera_fixed.then_some(true),
            watermark: self.watermark.then_some(true),
            return_last_frame: self.return_last_frame.then_some(true),
            flex: self.flex.then_some(true),
            expires_after: self.expires_after.clone(),
            callback_url: self.callback_url.clone(),
            priority: self.priority,
            tags: self.tags.clone(),
            key: self.key.clone(),
            batch: self.batch.clone(),
            ..Default::default()
        }
    }

    /// Fills a file line's missing fields from the command-line defaults.
    pub(crate) fn apply_defaults(&self, spec: &mut JobSpec) {
        if spec.model.is_none() {
            spec.model = self.model.clone();
        }
        if self.flex && spec.flex.is_none() && spec.service_tier.is_none() {
            spec.flex = Some(true);
        }
        if spec.expires_after.is_none() && spec.execution_expires_after.is_none() {
            spec.expires_after = self.expires_after.clone();
        }
        if spec.priority.is_none() {
            spec.priority = self.priority;
        }
        if spec.batch.is_none() {
            spec.batch = self.batch.clone();
        }
        spec.tags.extend(self.tags.iter().cloned());
    }
}

/// Converts a prepared job into a store row.
pub(crate) fn new_job(p: Prepared) -> anyhow::Result<NewJob> {
    Ok(crate::intake::new_job(p)?)
}

/// The most errors listed before the rest are summarised.
const MAX_LISTED_ERRORS: usize = 20;

/// One JSONL line's verdict.
#[derive(Debug, serde::Serialize)]
pub(crate) struct LineVerdict {
    pub line: usize,
    pub ok: bool,
    /// The API field a refusal is about, when the rule names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The Ark error code the same body gets from Ark (`InvalidParameter`, …), for a refusal
    /// by a request rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub job: Option<NewJob>,
}

/// Parses and validates every line of a JSONL stream, one verdict per non-blank line.
///
/// The lines are read in order, then parsed and validated on every CPU (each line on its own:
/// a file of 100 000 jobs spends about as long here as in the store), and last the idempotency
/// keys are checked in line order, so the verdicts are the same as one line after another.
fn verdict_lines(
    ctx: &Ctx,
    reader: impl BufRead,
    base_dir: &Path,
    defaults: &SubmitArgs,
) -> anyhow::Result<Vec<LineVerdict>> {
    let mut lines: Vec<(usize, Result<String, String>)> = Vec::new();
    let mut reader = reader;
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        n += 1;
        if !import::next_line(&mut reader, &mut buf, n, import::MAX_LINE_BYTES)? {
            break;
        }
        match std::str::from_utf8(&buf) {
            Ok(l) if l.trim().is_empty() => {}
            Ok(l) => lines.push((n, Ok(l.to_string()))),
            Err(e) => lines.push((n, Err(format!("line {n}: not UTF-8: {e}")))),
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(lines.len().div_ceil(PARSE_CHUNK_MIN))
        .max(1);
    let per = lines.len().div_ceil(threads).max(1);
    let mut out: Vec<(LineVerdict, Option<String>)> = Vec::with_capacity(lines.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(n, line)| verdict_line(ctx, *n, line, base_dir, defaults))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(v) => out.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    // Idempotency key -> the line that first used it: a repeat inside one file is a mistake,
    // not a retry (across files it is skipped as a duplicate). Only lines that parsed carry
    // a key here; a repeat is refused for that alone, whatever else is wrong with it.
    let mut keys: HashMap<String, usize> = HashMap::new();
    let mut verdicts = Vec::with_capacity(out.len());
    for (mut v, key) in out {
        if let Some(k) = key {
            if let Some(&first) = keys.get(&k) {
                v = LineVerdict {
                    line: v.line,
                    ok: false,
                    param: None,
                    code: None,
                    error: Some(format!(
                        "line {}: key {k:?} is already used by line {first} of this file",
                        v.line
                    )),
                    warnings: Vec::new(),
                    job: None,
                };
            } else {
                keys.insert(k, v.line);
            }
        }
        verdicts.push(v);
    }
    Ok(verdicts)
}

/// Lines per parsing thread below which fewer threads are used (a thread costs more than
/// parsing a few lines).
const PARSE_CHUNK_MIN: usize = 2000;

/// One line's verdict, without the file-wide key check; with the line's idempotency key when
/// it parsed.
fn verdict_line(
    ctx: &Ctx,
    n: usize,
    line: &Result<String, String>,
    base_dir: &Path,
    defaults: &SubmitArgs,
) -> (LineVerdict, Option<String>) {
    let mut v = LineVerdict {
        line: n,
        ok: false,
        param: None,
        code: None,
        error: None,
        warnings: Vec::new(),
        job: None,
    };
    let line = match line {
        Ok(l) => l,
        Err(e) => {
            v.error = Some(e.clone());
            return (v, None);
        }
    };
    let mut key = None;
    let spec = import::parse_jsonl(line).map_err(|e| {
        // `field "duration": …`: a value of the wrong type names its field.
        v.param = e
            .strip_prefix("field \"")
            .and_then(|r| r.split_once('"'))
            .map(|(f, _)| f.to_string());
        v.code = v.param.as_ref().map(|_| "InvalidParameter".to_string());
        anyhow::anyhow!("line {n}: {e}")
    });
    if let Ok(spec) = &spec {
        key.clone_from(&spec.key);
    }
    let prepared = spec.and_then(|mut spec| {
        defaults.apply_defaults(&mut spec);
        request::prepare(spec, &ctx.catalogue, base_dir).map_err(|e| {
            if let request::SpecError::Invalid(i) = &e {
                v.param = Some(i.param.clone());
                v.code = Some(i.ark_code().to_string());
            }
            anyhow::anyhow!("line {n}: {e}")
        })
    });
    match prepared.and_then(|mut p| {
        let warnings = std::mem::take(&mut p.warnings);
        new_job(p).map(|j| (j, warnings))
    }) {
        Ok((job, warnings)) => {
            v.ok = true;
            v.warnings = warnings
                .into_iter()
                .map(|w| format!("line {n}: {w}"))
                .collect();
            v.job = Some(job);
        }
        Err(e) => v.error = Some(e.to_string()),
    }
    (v, key)
}

/// Parses and validates a JSONL stream; all or nothing. Warnings go to stderr.
pub(crate) fn prepare_lines(
    ctx: &Ctx,
    reader: impl BufRead,
    base_dir: &Path,
    defaults: &SubmitArgs,
) -> anyhow::Result<Vec<NewJob>> {
    let verdicts = verdict_lines(ctx, reader, base_dir, defaults)?;
    let errors: Vec<String> = verdicts.iter().filter_map(|v| v.error.clone()).collect();
    reject_all(&errors, "line")?;
    let mut jobs = Vec::with_capacity(verdicts.len());
    for v in verdicts {
        for w in &v.warnings {
            eprintln!("warning: {w}");
        }
        jobs.extend(v.job);
    }
    Ok(jobs)
}

/// `seedq submit --check --file`: every line's verdict, nothing stored. Exit 2 when any line
/// is invalid; with `--json` one JSON object per line on stdout.
fn check_file(
    ctx: &Ctx,
    reader: impl BufRead,
    base_dir: &Path,
    a: &SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let verdicts = verdict_lines(ctx, reader, base_dir, a)?;
    let bad = verdicts.iter().filter(|v| !v.ok).count();
    if a.json {
        println!("{}", serde_json::to_string(&verdicts)?);
    } else {
        for v in &verdicts {
            for w in &v.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(e) = &v.error {
                eprintln!("{e}");
            }
        }
        println!(
            "{} line(s) valid, {bad} invalid; nothing was stored",
            verdicts.len() - bad
        );
    }
    Ok(if bad > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// All-or-nothing admission: any error rejects the whole file, listing the first few.
pub(crate) fn reject_all(errors: &[String], unit: &str) -> anyhow::Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let total = errors.len();
    let mut msg = format!("{total} invalid {unit}(s); nothing was imported:");
    for e in errors.iter().take(MAX_LISTED_ERRORS) {
        msg.push_str("\n  ");
        msg.push_str(e);
    }
    if total > MAX_LISTED_ERRORS {
        msg.push_str(&format!("\n  … and {} more", total - MAX_LISTED_ERRORS));
    }
    bail!(msg)
}

/// Warns (stderr, once per model) about model ids the catalogue does not know: they are
/// accepted (an endpoint id `ep-…` or a model newer than this build is legitimate), but get
/// only Ark's own validation, conservative default limits, and no price.
pub(crate) fn warn_uncatalogued<'a>(ctx: &Ctx, models: impl Iterator<Item = &'a str>) {
    let mut seen = std::collections::BTreeSet::new();
    for m in models {
        if ctx.catalogue.get(m).is_some() || !seen.insert(m) {
            continue;
        }
        let hint = ctx
            .catalogue
            .nearest(m)
            .map_or_else(String::new, |n| format!(" (did you mean {n}?)"));
        eprintln!(
            "warning: model {m} is not in the catalogue{hint}: Ark alone validates it, it runs \
             under default limits, and it has no price, so under a spend cap its jobs wait \
             instead of being created; `seedq models` lists the catalogue, docs/models.md \
             says how to add it"
        );
    }
}

pub(crate) async fn submit(ctx: &Ctx, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    if a.check
        && let Some(path) = &a.file
        && !super::batch::is_csv(path, a.format)
    {
        return if path.as_os_str() == "-" {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            check_file(ctx, std::io::stdin().lock(), &cwd, &a)
        } else {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            check_file(ctx, std::io::BufReader::new(f), &base, &a)
        };
    }
    let mut jobs = match &a.file {
        Some(path) if super::batch::is_csv(path, a.format) => {
            super::batch::prepare_csv(ctx, path, &a)?
        }
        Some(path) if path.as_os_str() == "-" => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            prepare_lines(ctx, std::io::stdin().lock(), &cwd, &a)?
        }
        Some(path) => {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            prepare_lines(
                ctx,
                std::io::BufReader::with_capacity(1 << 20, f),
                &base,
                &a,
            )?
        }
        None => {
            if a.prompt.is_none() && a.first_frame.is_none() && a.refs.is_empty() {
                bail!("give a PROMPT, an image (--first-frame/--ref) or --file FILE");
            }
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let prepared = request::prepare(a.to_spec(), &ctx.catalogue, &cwd)?;
            for w in &prepared.warnings {
                eprintln!("warning: {w}");
            }
            vec![new_job(prepared)?]
        }
    };
    if a.check {
        // Everything was validated above; nothing is stored (no database is opened).
        println!("{} job(s) valid; nothing was stored", jobs.len());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &a.file
        && jobs.is_empty()
    {
        bail!(
            "{} holds no jobs (only blank lines or a header); nothing was imported",
            path.display()
        );
    }
    warn_uncatalogued(ctx, jobs.iter().map(|j| j.model.as_str()));
    // Opened only now: input that is refused must not leave a new, empty database behind.
    let store = ctx.store().await?;
    super::batch::register(ctx, &store, &a, &mut jobs).await?;
    let report = store.enqueue(jobs).await.context("storing the jobs")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if a.file.is_none() {
        match (report.inserted.first(), report.skipped.first()) {
            (Some(id), _) => println!("{id}"),
            (None, Some((key, id))) => println!("{id} (already queued with key {key})"),
            (None, None) => {}
        }
    } else {
        println!(
            "imported {} job(s), skipped {} duplicate(s)",
            report.inserted.len(),
            report.skipped.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `seedq ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long, value_parser = state_parser())]
    pub state: Option<JobState>,
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub batch: Option<String>,
    /// At most this many jobs, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

/// `--state`: one of the job states, listed in `--help` and in the error for any other value.
fn state_parser() -> impl clap::builder::TypedValueParser<Value = JobState> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
        .try_map(|s| s.parse::<JobState>())
}

pub(crate) fn fmt_time(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.ms()) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| t.ms().to_string())
}

fn color(state: JobState) -> &'static str {
    match state {
        JobState::Archived | JobState::Succeeded => "\x1b[32m",
        JobState::Failed | JobState::Dead | JobState::Expired => "\x1b[31m",
        JobState::SubmitUnknown => "\x1b[33m",
        _ => "",
    }
}

fn use_color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

fn state_cell(state: JobState, colored: bool) -> String {
    let c = color(state);
    if colored && !c.is_empty() {
        format!("{c}{:<14}\x1b[0m", state.as_str())
    } else {
        format!("{:<14}", state.as_str())
    }
}

pub(crate) async fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let filter = ListFilter {
        state: a.state,
        model: a.model,
        tag: a.tag,
        batch: a.batch,
        limit: Some(a.limit),
    };
    // The table shows no bodies: don't read them.
    let jobs = if a.json {
        store.list(filter).await?
    } else {
        store.list_lean(filter).await?
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &jobs)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let colored = use_color();
    writeln!(
        out,
        "{:<26}  {:<14}  {:<36}  {:<7}  {:<26}  CREATED",
        "ID", "STATE", "MODEL", "TIER", "REMOTE"
    )?;
    for j in &jobs {
        writeln!(
            out,
            "{:<26}  {}  {:<36}  {:<7}  {:<26}  {}",
            j.id,
            state_cell(j.state, colored),
            j.model,
            j.service_tier,
            j.remote_task_id.as_deref().unwrap_or("-"),
            fmt_time(j.created_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `seedq show ID`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

fn print_job(out: &mut impl Write, j: &Job) -> std::io::Result<()> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<i64>| v.map_or_else(|| "-".into(), |n| n.to_string());
    let time = |v: Option<Timestamp>| v.map_or_else(|| "-".into(), fmt_time);
    let rows = [
        ("id", j.id.to_string()),
        ("state", j.state.to_string()),
        ("model", j.model.clone()),
        ("tier", j.service_tier.to_string()),
        ("priority", j.priority.to_string()),
        ("shape", opt(&j.shape)),
        ("seed", num(j.seed)),
        ("tags", j.tags.join(", ")),
        ("batch", opt(&j.batch_id)),
        ("key", opt(&j.idempotency_key)),
        ("attempts", j.attempts.to_string()),
        ("created", fmt_time(j.created_at)),
        ("submitted", time(j.submitted_at)),
        ("finished", time(j.finished_at)),
        ("remote task", opt(&j.remote_task_id)),
        ("remote status", opt(&j.remote_status)),
        ("est. tokens", num(j.est_tokens)),
        ("usage tokens", num(j.usage_tokens)),
        ("video url", opt(&j.video_url)),
        ("last frame url", opt(&j.last_frame_url)),
        ("archive key", opt(&j.archive_key)),
        ("archive sha256", opt(&j.archive_sha256)),
        ("archive size", num(j.archive_size)),
        (
            "last error",
            match (&j.last_error_code, &j.last_error_message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                _ => "-".into(),
            },
        ),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:>15}  {v}")?;
    }
    writeln!(
        out,
        "{:>15}  {}",
        "request",
        abbreviate_data_urls(&j.request_json)
    )?;
    Ok(())
}

/// The request with embedded images shortened to their size: a 2 MB base64 blob helps no
/// one reading `seedq show`.
fn abbreviate_data_urls(json: &str) -> String {
    let mut out = String::with_capacity(json.len().min(4096));
    let mut rest = json;
    while let Some(i) = rest.find("data:") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find('"').unwrap_or(tail.len());
        let url = &tail[..end];
        match url.split_once(";base64,") {
            Some((mime, data)) => {
                out.push_str(&format!("{mime};base64,<{} bytes>", data.len() / 4 * 3));
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

pub(crate) async fn show(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let Some(job) = store.job(&a.id).await? else {
        eprintln!("error: no job with id {}", a.id);
        return Ok(ExitCode::from(1));
    };
    let events = store.events(&a.id).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({ "job": job, "events": events });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        print_job(&mut out, &job)?;
        writeln!(out, "\nhistory:")?;
        for e in events {
            writeln!(
                out,
                "  {}  {:>14} -> {:<14}  {}",
                fmt_time(e.at),
                e.from_state.as_deref().unwrap_or(""),
                e.to_state,
                e.detail.as_deref().unwrap_or("")
            )?;
        }
    }
    let failed = matches!(
        job.state,
        JobState::Failed | JobState::Dead | JobState::Expired
    );
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) async fn stats(ctx: &Ctx, a: JsonArg) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let rows = store.stats().await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<14}  {:>8}  {:>14}  {:>14}",
        "MODEL", "STATE", "JOBS", "EST. TOKENS", "USED TOKENS"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<36}  {:<14}  {:>8}  {:>14}  {:>14}",
            r.model,
            r.state.as_str(),
            r.jobs,
            r.est_tokens,
            r.usage_tokens
        )?;
    }
    let a = store.archive_stats().await?;
    writeln!(
        out,
        "\narchive: {} archived ({:.1} MiB), {} waiting ({} retrying), {} archiving, {} result_expired",
        a.archived,
        a.archived_bytes as f64 / (1024.0 * 1024.0),
        a.waiting,
        a.retrying,
        a.archiving,
        a.result_expired
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `seedq cancel|retry ID…`.
#[derive(Debug, Args)]
pub struct IdsArgs {
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub(crate) async fn cancel(ctx: &Ctx, a: IdsArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let mut missing = false;
    for id in &a.ids {
        match store.cancel(id).await? {
            CancelOutcome::Cancelled => println!("{id}: cancelled"),
            CancelOutcome::Requested => {
                println!("{id}: cancel requested; the worker will cancel the remote task")
            }
            CancelOutcome::AlreadyFinal { state } => {
                println!("{id}: already {state}, nothing to cancel")
            }
            CancelOutcome::NotFound => {
                eprintln!("{id}: no such job");
                missing = true;
            }
        }
    }
    Ok(if missing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) async fn retry(ctx: &Ctx, a: IdsArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let mut bad = false;
    for id in &a.ids {
        match store.retry(id).await? {
            RetryOutcome::Requeued => println!("{id}: queued again"),
            RetryOutcome::NotRetryable { state } => {
                eprintln!(
                    "{id}: is {state}; only failed, dead, expired or cancelled jobs can be retried"
                );
                bad = true;
            }
            RetryOutcome::UnreleasedShot => {
                eprintln!(
                    "{id}: is a chain shot that was never released (it has no first frame yet); see seedq chain show"
                );
                bad = true;
            }
            RetryOutcome::NotFound => {
                eprintln!("{id}: no such job");
                bad = true;
            }
        }
    }
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::abbreviate_data_urls;

    #[test]
    fn embedded_images_are_shortened_for_display() {
        let json = r#"{"content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAABBBBCCCC"}},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}"#;
        let shown = abbreviate_data_urls(json);
        assert!(
            shown.contains(r#""url":"data:image/png;base64,<9 bytes>""#),
            "{shown}"
        );
        assert!(shown.contains("https://x/y.png"));
        assert!(!shown.contains("AAAABBBB"));
        assert_eq!(abbreviate_data_urls("{}"), "{}");
    }
}
