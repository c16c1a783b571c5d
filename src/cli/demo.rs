//! `seedq demo`: the whole pipeline against the built-in simulator, for a newcomer.
//!
//! Starts `seedq sim` in-process on an ephemeral port (time-scaled so a minute of generation
//! takes a fraction of a second), enqueues one job per mode, runs the service until every job
//! is done, and prints what happened. Nothing leaves the machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use secrecy::SecretString;

use super::Ctx;
use super::jobs::new_job;
use crate::config::Config;
use crate::media::{RgbImage, encode_png};
use crate::request::{self, JobSpec};
use crate::service::Mode;
use crate::stage::Ctx as StageCtx;
use crate::store::{ListFilter, Store};

/// `seedq demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo's database and files go (default: a new temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Simulated time factor: 0.005 turns a 60 s generation into 0.3 s.
    #[arg(long, default_value_t = 0.005)]
    pub time_scale: f64,
}

const API_KEY: &str = "sk-demo";

fn picture(width: u32, height: u32, tint: u8) -> RgbImage {
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            pixels.extend_from_slice(&[(x * 255 / width) as u8, (y * 255 / height) as u8, tint]);
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

fn spec(model: &str, prompt: &str) -> JobSpec {
    JobSpec {
        model: Some(model.into()),
        prompt: Some(prompt.into()),
        tags: vec!["demo".into()],
        ..Default::default()
    }
}

fn demo_jobs(dir: &std::path::Path) -> anyhow::Result<Vec<(&'static str, JobSpec)>> {
    for (name, tint) in [
        ("first.png", 40u8),
        ("last.png", 200),
        ("ref1.png", 90),
        ("ref2.png", 150),
    ] {
        std::fs::write(dir.join(name), encode_png(&picture(640, 360, tint))?)
            .with_context(|| format!("writing {name}"))?;
    }
    const PRO: &str = "doubao-seedance-1-0-pro-250528";
    Ok(vec![
        (
            "text-to-video",
            JobSpec {
                resolution: Some("720p".into()),
                ..spec(PRO, "a red fox trots through fresh snow at dawn")
            },
        ),
        (
            "first frame",
            JobSpec {
                first_frame: Some("first.png".into()),
                duration: Some(3),
                ..spec(PRO, "the scene slowly comes alive")
            },
        ),
        (
            "first+last frame",
            JobSpec {
                first_frame: Some("first.png".into()),
                last_frame: Some("last.png".into()),
                resolution: Some("480p".into()),
                ..spec(PRO, "day turns to night")
            },
        ),
        (
            "reference images",
            JobSpec {
                refs: vec!["ref1.png".into(), "ref2.png".into()],
                ..spec(
                    "doubao-seedance-1-0-lite-i2v-250428",
                    "[图1] and [图2] dance together",
                )
            },
        ),
        (
            "flex tier",
            JobSpec {
                flex: Some(true),
                expires_after: Some("24h".into()),
                ..spec(
                    "doubao-seedance-1-0-lite-t2v-250428",
                    "a paper boat drifts down a rainy street",
                )
            },
        ),
        (
            "inline commands",
            spec(
                "doubao-seedance-1-0-pro-fast-251015",
                "a cat yawns at the camera --rs 480p --rt 9:16 --dur 3 --seed 11",
            ),
        ),
    ])
}

fn demo_config(dir: &std::path::Path, base_url: String, scale: f64) -> Config {
    let scaled = |secs: f64| Duration::from_secs_f64((secs * scale).max(0.02));
    let mut cfg = Config::default();
    cfg.store.path = dir.join("seedq.db");
    cfg.ark.base_url = base_url;
    cfg.ark.api_key = Some(SecretString::from(API_KEY.to_string()));
    cfg.archive.url = format!("file://{}", dir.join("archive").display());
    cfg.admin.listen = String::new();
    cfg.dispatch.idle_interval = Duration::from_millis(100);
    cfg.poll.first_poll_after = scaled(60.0);
    cfg.poll.flex_first_poll_after = scaled(120.0);
    cfg.poll.min_interval = scaled(2.0);
    cfg.poll.max_interval = scaled(30.0);
    cfg.poll.flex_max_interval = scaled(60.0);
    cfg
}

pub(crate) async fn run(ctx: &Ctx, a: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "seedq-demo-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("seedq demo: working in {}", dir.display());

    let sim_cfg: crate::sim::SimConfig = toml::from_str(&format!(
        "api_keys = [\"{API_KEY}\"]\ntime_scale = {}\nvideo_downscale = 8\n",
        a.time_scale
    ))
    .context("building the simulator config")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator")?;
    let sim = crate::sim::start(sim_cfg, listener).await?;
    println!("simulator (a local Ark) on {}", sim.base_url());

    let cfg = demo_config(&dir, sim.base_url(), a.time_scale);
    let store = Store::open(&cfg.store.path)?;
    let mut rows = Vec::new();
    for (mode, s) in demo_jobs(&dir)? {
        let prepared = request::prepare(s, &ctx.catalogue, &dir)
            .with_context(|| format!("the {mode} demo job"))?;
        let id = prepared.id.clone();
        store.enqueue(vec![new_job(prepared)?]).await?;
        rows.push((id, mode));
    }
    println!(
        "enqueued {} jobs; running the service until they are done…\n",
        rows.len()
    );

    let started = std::time::Instant::now();
    let wctx = StageCtx::new(cfg, ctx.catalogue.clone(), store.clone())?;
    crate::service::run(wctx, Mode::UntilDrained, super::service::signal()).await?;
    let elapsed = started.elapsed();

    let jobs = store.list(ListFilter::default()).await?;
    println!(
        "{:<26}  {:<17}  {:<10}  {:>7}  {:>8}  ARCHIVED VIDEO",
        "JOB", "MODE", "STATE", "SECONDS", "TOKENS"
    );
    let mut all_ok = true;
    for (id, mode) in &rows {
        let Some(j) = jobs.iter().find(|j| &j.id == id) else {
            continue;
        };
        let secs = match (j.submitted_at, j.finished_at) {
            (Some(s), Some(f)) => format!("{:.2}", f.since(s).as_secs_f64()),
            _ => "-".into(),
        };
        all_ok &= j.state == crate::job::JobState::Archived;
        let archive = dir.join("archive");
        println!(
            "{:<26}  {:<17}  {:<10}  {:>7}  {:>8}  {}",
            j.id,
            mode,
            j.state.as_str(),
            secs,
            j.usage_tokens.map_or_else(|| "-".into(), |t| t.to_string()),
            j.archive_key
                .as_deref()
                .map(|k| archive.join(k).display().to_string())
                .or_else(|| j.last_error_message.clone())
                .unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "\n{} jobs in {:.1} s (simulated time ×{}). Each video has a .json sidecar beside it.\n\
         Inspect with: seedq --db {db} ls    seedq --db {db} show JOB",
        rows.len(),
        elapsed.as_secs_f64(),
        a.time_scale,
        db = dir.join("seedq.db").display()
    );
    sim.shutdown().await;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
