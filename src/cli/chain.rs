//! `seedq chain submit|show|ls`: chains of continuous shots (see `bulk::chain`).
//!
//! A chain file is one of:
//! - a story, one JSON object: `{"id": "fox", "retries": 2, "defaults": {…}, "shots": [{…}, …]}`
//!   where each shot is a job spec (as a JSONL line) and `defaults` fills what a shot leaves
//!   out; `id`, `retries` and `defaults` are optional;
//! - a JSON array of shot specs;
//! - JSONL: one shot per line, each with `chain` (the chain id) and `shot` (1, 2, …), so one
//!   file can hold several chains.
//!
//! Admission is all or nothing over the whole file, like `submit --file`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Ctx;
use super::jobs::{SubmitArgs, new_job};
use crate::bulk::chain::{placeholder_frame, strip_image};
use crate::request::{self, JobSpec};
use crate::store::{ChainState, NewJob};

/// `seedq chain …`.
#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Add chains of shots from a story (JSON) or JSONL file.
    Submit(SubmitChainArgs),
    /// One chain: its shots, their states, the joined video.
    Show(ShowArgs),
    /// Chains, newest first.
    Ls(LsArgs),
}

/// `chain submit`.
#[derive(Debug, Args)]
pub struct SubmitChainArgs {
    /// The story (JSON object or array) or JSONL file; `-` for stdin.
    pub file: PathBuf,
    /// The chain id when the file does not give one.
    #[arg(long)]
    pub id: Option<String>,
    /// Retries of a failed shot before the chain stops (default: bulk.chain_retries).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Defaults for shots without them, as for `submit --file`.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    #[arg(long)]
    pub flex: bool,
    #[arg(long, value_name = "DURATION")]
    pub expires_after: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i64>,
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long)]
    pub batch: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// `chain show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

/// `chain ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(ctx: &Ctx, cmd: ChainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ChainCommand::Submit(a) => submit(ctx, a).await,
        ChainCommand::Show(a) => show(ctx, a).await,
        ChainCommand::Ls(a) => ls(ctx, a).await,
    }
}

/// A story file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Story {
    id: Option<String>,
    retries: Option<u32>,
    #[serde(default)]
    defaults: Map<String, Value>,
    shots: Vec<Map<String, Value>>,
}

/// One chain as read: its id, retries and shots (a label for errors, and the spec).
struct ChainIn {
    id: String,
    retries: Option<u32>,
    shots: Vec<(String, JobSpec)>,
}

/// Longest chain id: it becomes part of an object key.
const MAX_ID_LEN: usize = 64;

fn check_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!(
            "chain id {id:?} is not allowed: 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit"
        );
    }
    Ok(())
}

fn spec_of(map: Map<String, Value>, label: &str) -> anyhow::Result<JobSpec> {
    serde_json::from_value(Value::Object(map)).map_err(|e| anyhow::anyhow!("{label}: {e}"))
}

/// Reads a chain file into chains.
fn parse(text: &str, default_id: Option<&str>) -> anyhow::Result<Vec<ChainIn>> {
    let trimmed = text.trim_start();
    let whole: Option<Value> = serde_json::from_str(text).ok();
    let generated = || {
        default_id
            .map(str::to_string)
            .unwrap_or_else(|| format!("chain-{}", crate::job::JobId::generate()))
    };
    match whole {
        Some(Value::Object(o)) if o.contains_key("shots") => {
            let story: Story = serde_json::from_value(Value::Object(o)).context("the story")?;
            let id = story.id.clone().unwrap_or_else(generated);
            let mut shots = Vec::new();
            for (i, s) in story.shots.into_iter().enumerate() {
                let mut m = story.defaults.clone();
                m.extend(s);
                let label = format!("shot {}", i + 1);
                shots.push((label.clone(), spec_of(m, &label)?));
            }
            Ok(vec![ChainIn {
                id,
                retries: story.retries,
                shots,
            }])
        }
        Some(Value::Array(items)) => {
            let mut shots = Vec::new();
            for (i, s) in items.into_iter().enumerate() {
                let label = format!("shot {}", i + 1);
                let Value::Object(m) = s else {
                    bail!("{label}: not a JSON object");
                };
                shots.push((label.clone(), spec_of(m, &label)?));
            }
            Ok(vec![ChainIn {
                id: generated(),
                retries: None,
                shots,
            }])
        }
        _ if trimmed.starts_with('{') || trimmed.is_empty() => parse_jsonl(text),
        _ => bail!("not a story (a JSON object with \"shots\"), a JSON array of shots, or JSONL"),
    }
}

/// JSONL shots, grouped by `chain` and ordered by `shot`.
fn parse_jsonl(text: &str) -> anyhow::Result<Vec<ChainIn>> {
    let mut chains: BTreeMap<String, BTreeMap<i64, (String, JobSpec)>> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = (|| {
            let mut m: Map<String, Value> =
                serde_json::from_str(line).map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
            let chain = match m.remove("chain") {
                Some(Value::String(s)) => s,
                _ => bail!("line {n}: needs \"chain\" (the chain id, a string)"),
            };
            let shot = match m.remove("shot").and_then(|v| v.as_i64()) {
                Some(s) if s >= 1 => s,
                _ => bail!("line {n}: needs \"shot\" (1, 2, …)"),
            };
            let label = format!("line {n} (chain {chain}, shot {shot})");
            let spec = spec_of(m, &label)?;
            Ok((chain, shot, label, spec))
        })();
        match parsed {
            Ok((chain, shot, label, spec)) => {
                let shots = chains.entry(chain.clone()).or_default();
                if shots.insert(shot, (label, spec)).is_some() {
                    errors.push(format!("line {n}: chain {chain} has shot {shot} twice"));
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    for (id, shots) in &chains {
        for (want, have) in (1..).zip(shots.keys()) {
            if *have != want {
                errors.push(format!(
                    "chain {id}: shot {want} is missing (shots are 1, 2, … without gaps)"
                ));
                break;
            }
        }
    }
    if !errors.is_empty() {
        bail!(errors.join("\n  "));
    }
    Ok(chains
        .into_iter()
        .map(|(id, shots)| ChainIn {
            id,
            retries: None,
            shots: shots.into_values().collect(),
        })
        .collect())
}

/// Validates one chain's shots and makes their rows. Shot n > 1 is prepared with a
/// placeholder first frame of shot n-1's output size, then stored without it.
fn prepare_chain(
    ctx: &Ctx,
    c: ChainIn,
    base: &Path,
    defaults: &SubmitArgs,
    placeholders: &mut BTreeMap<Option<(u32, u32)>, String>,
) -> Result<Vec<NewJob>, Vec<String>> {
    let n = c.shots.len();
    let mut jobs = Vec::with_capacity(n);
    let mut errors = Vec::new();
    let mut prev_size: Option<(u32, u32)> = None;
    for (i, (label, mut spec)) in c.shots.into_iter().enumerate() {
        let label = format!("chain {}, {label}", c.id);
        defaults.apply_defaults(&mut spec);
        if i + 1 < n {
            // The next shot starts from this one's last frame.
            spec.return_last_frame = Some(true);
        }
        let mut placeholder = None;
        if i > 0 {
            if spec.first_frame.is_some() {
                errors.push(format!(
                    "{label}: first_frame is the previous shot's last frame; only shot 1 may have its own"
                ));
                continue;
            }
            let url = match placeholders.get(&prev_size) {
                Some(u) => u.clone(),
                None => match placeholder_frame(prev_size) {
                    Ok(u) => {
                        placeholders.insert(prev_size, u.clone());
                        u
                    }
                    Err(e) => {
                        errors.push(format!("{label}: {e:#}"));
                        continue;
                    }
                },
            };
            spec.first_frame = Some(url.clone());
            placeholder = Some(url);
        }
        match request::prepare(spec, &ctx.catalogue, base) {
            Ok(mut p) => {
                prev_size = p.effective.size;
                if let Some(url) = &placeholder {
                    strip_image(&mut p.request, url);
                }
                match new_job(p) {
                    Ok(j) => jobs.push(j),
                    Err(e) => errors.push(format!("{label}: {e:#}")),
                }
            }
            Err(e) => {
                // A placeholder that breaks a rule is about the chain, not the user's image.
                let msg = e.to_string().replace(
                    placeholder.as_deref().unwrap_or("\u{0}"),
                    "(the previous shot's last frame)",
                );
                errors.push(format!("{label}: {msg}"));
                prev_size = None;
            }
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

async fn submit(ctx: &Ctx, a: SubmitChainArgs) -> anyhow::Result<ExitCode> {
    let (text, base) = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)
            .context("reading stdin")?;
        let cwd = std::env::current_dir().context("reading the current directory")?;
        (s, cwd)
    } else {
        let s = std::fs::read_to_string(&a.file)
            .with_context(|| format!("reading {}", a.file.display()))?;
        (s, a.file.parent().unwrap_or(Path::new(".")).to_path_buf())
    };
    let chains =
        parse(&text, a.id.as_deref()).context("invalid chain file; nothing was imported")?;
    if chains.is_empty() {
        bail!("{}: no shots", a.file.display());
    }
    let defaults = SubmitArgs {
        model: a.model.clone(),
        flex: a.flex,
        expires_after: a.expires_after.clone(),
        priority: a.priority,
        tags: a.tags.clone(),
        batch: a.batch.clone(),
        file: Some(a.file.clone()),
        ..Default::default()
    };
    let mut ready = Vec::new();
    let mut errors = Vec::new();
    let mut placeholders = BTreeMap::new();
    for c in chains {
        if let Err(e) = check_id(&c.id) {
            errors.push(e.to_string());
            continue;
        }
        if c.shots.is_empty() {
            errors.push(format!("chain {}: no shots", c.id));
            continue;
        }
        let (id, retries) = (c.id.clone(), c.retries);
        match prepare_chain(ctx, c, &base, &defaults, &mut placeholders) {
            Ok(jobs) => ready.push((id, retries, jobs)),
            Err(es) => errors.extend(es),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} problem(s); nothing was imported:\n  {}",
            errors.len(),
            errors.join("\n  ")
        );
    }
    let store = ctx.store().await?;
    for (id, _, _) in &ready {
        if store.chain(id).await?.is_some() {
            bail!("chain {id} exists already; nothing was imported");
        }
    }
    let mut all: Vec<NewJob> = ready.iter().flat_map(|(_, _, j)| j.clone()).collect();
    super::batch::register(ctx, &store, &defaults, &mut all).await?;
    let mut out = std::io::stdout().lock();
    let mut report = Vec::new();
    for (id, retries, jobs) in ready {
        let retries = i64::from(retries.or(a.retries).unwrap_or(ctx.cfg.bulk.chain_retries));
        let n = jobs.len();
        let ids = store
            .enqueue_chain(&id, retries, jobs)
            .await
            .with_context(|| format!("storing chain {id}"))?;
        report.push(serde_json::json!({ "chain": id, "shots": n, "jobs": ids }));
        if !a.json {
            writeln!(out, "chain {id}: {n} shot(s) queued")?;
        }
    }
    if a.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let Some(chain) = store.chain(&a.id).await? else {
        eprintln!("error: no chain with id {}", a.id);
        return Ok(ExitCode::from(1));
    };
    let shots = store.chain_shots(&a.id).await?;
    let bad = matches!(chain.state, ChainState::Failed | ChainState::Cancelled);
    let code = if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let shots: Vec<Value> = shots
            .iter()
            .map(|s| {
                let j = &s.job;
                serde_json::json!({
                    "shot": s.shot, "job": j.id, "state": j.state, "held": j.next_attempt_at == crate::store::HELD,
                    "remote_task_id": j.remote_task_id, "attempts": j.attempts,
                    "est_tokens": j.est_tokens, "usage_tokens": j.usage_tokens,
                    "video_url": j.video_url, "last_frame_url": j.last_frame_url,
                    "archive_key": j.archive_key, "archive_sha256": j.archive_sha256,
                    "archive_size": j.archive_size,
                    "last_error_code": j.last_error_code, "last_error_message": j.last_error_message,
                })
            })
            .collect();
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({"chain": chain, "shots": shots}),
        )?;
        writeln!(out)?;
        return Ok(code);
    }
    let row = |k: &str, v: String| format!("{k:>10}  {v}");
    writeln!(out, "{}", row("chain", chain.id.clone()))?;
    writeln!(out, "{}", row("state", chain.state.to_string()))?;
    writeln!(
        out,
        "{}",
        row(
            "shots",
            format!(
                "{} ({} released, {} of {} retries spent on the current one)",
                chain.shots, chain.released, chain.retries, chain.max_retries
            )
        )
    )?;
    writeln!(
        out,
        "{}",
        row("created", super::jobs::fmt_time(chain.created_at))
    )?;
    writeln!(
        out,
        "{}",
        row("finished", super::batch::fmt_opt_time(chain.finished_at))
    )?;
    if let Some(k) = &chain.stitch_key {
        writeln!(
            out,
            "{}",
            row(
                "video",
                format!(
                    "{k} ({} frames, {:.3} s, {} bytes, sha256 {})",
                    chain.stitch_frames.unwrap_or(0),
                    chain.stitch_ms.unwrap_or(0) as f64 / 1000.0,
                    chain.stitch_size.unwrap_or(0),
                    chain.stitch_sha256.as_deref().unwrap_or("-")
                )
            )
        )?;
    }
    if let Some(e) = &chain.last_error {
        writeln!(out, "{}", row("reason", e.clone()))?;
    }
    writeln!(
        out,
        "\n{:>4}  {:<26}  {:<10}  {:<26}  ARCHIVE KEY / ERROR",
        "SHOT", "JOB", "STATE", "REMOTE"
    )?;
    for s in &shots {
        let j = &s.job;
        let state =
            if j.state == crate::job::JobState::Queued && j.next_attempt_at == crate::store::HELD {
                "held".to_string()
            } else {
                j.state.to_string()
            };
        let tail = match (&j.archive_key, &j.last_error_code) {
            (Some(k), _) => k.clone(),
            (None, Some(c)) => format!("{c}: {}", j.last_error_message.as_deref().unwrap_or("")),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:>4}  {:<26}  {:<10}  {:<26}  {}",
            s.shot,
            j.id,
            state,
            j.remote_task_id.as_deref().unwrap_or("-"),
            tail
        )?;
    }
    Ok(code)
}

async fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<ExitCode> {
    let chains = ctx.store_existing().await?.chains(a.limit).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &chains)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<32}  {:<10}  {:>5}  {:>8}  {:<20}  VIDEO",
        "CHAIN", "STATE", "SHOTS", "RELEASED", "CREATED"
    )?;
    for c in &chains {
        writeln!(
            out,
            "{:<32}  {:<10}  {:>5}  {:>8}  {:<20}  {}",
            c.id,
            c.state.as_str(),
            c.shots,
            c.released,
            super::jobs::fmt_time(c.created_at),
            c.stitch_key.as_deref().unwrap_or("-")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_arrays_and_jsonl_all_read() {
        let story = r#"{"id":"s","retries":1,"defaults":{"model":"m","duration":3},"shots":[{"prompt":"a"},{"prompt":"b","duration":4}]}"#;
        let c = parse(story, None).expect("story");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].id.as_str(), c[0].retries), ("s", Some(1)));
        assert_eq!(c[0].shots[0].1.duration, Some(3));
        assert_eq!(c[0].shots[1].1.duration, Some(4), "a shot's field wins");
        assert_eq!(c[0].shots[1].1.model.as_deref(), Some("m"));

        let arr = r#"[{"prompt":"a"},{"prompt":"b"}]"#;
        let c = parse(arr, Some("given")).expect("array");
        assert_eq!((c[0].id.as_str(), c[0].shots.len()), ("given", 2));

        let lines = "{\"chain\":\"x\",\"shot\":2,\"prompt\":\"b\"}\n{\"chain\":\"y\",\"shot\":1,\"prompt\":\"c\"}\n{\"chain\":\"x\",\"shot\":1,\"prompt\":\"a\"}\n";
        let c = parse(lines, None).expect("jsonl");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].id, "x");
        assert_eq!(
            c[0].shots[0].1.prompt.as_deref(),
            Some("a"),
            "ordered by shot"
        );
    }

    #[test]
    fn jsonl_gaps_and_repeats_are_errors() {
        let gap = "{\"chain\":\"x\",\"shot\":1,\"prompt\":\"a\"}\n{\"chain\":\"x\",\"shot\":3,\"prompt\":\"c\"}\n";
        let e = parse(gap, None).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("shot 2 is missing")));
        let twice = "{\"chain\":\"x\",\"shot\":1,\"prompt\":\"a\"}\n{\"chain\":\"x\",\"shot\":1,\"prompt\":\"b\"}\n";
        let e = parse(twice, None).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("line 2") && e.contains("twice")));
    }

    #[test]
    fn chain_ids_must_be_key_safe() {
        assert!(check_id("story-1.v2_a").is_ok());
        assert!(check_id("../x").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("").is_err());
    }
}
