//! `seedq bench pipeline`: the service against an in-process simulator, measured.
//!
//! Reports the docs/design.md targets: makespan against the ideal `ceil(N/C)·T`, status requests
//! per finished job (beside the tutorial's poll-every-second loop as the baseline), the lag
//! from the simulator's `succeeded` to seedq's record (polling and callbacks), and the
//! pipeline's overhead against an instant simulator.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use secrecy::SecretString;

use super::Ctx;
use super::jobs::new_job;
use crate::config::Config;
use crate::request::{self, JobSpec};
use crate::service::Mode;
use crate::stage::Ctx as StageCtx;
use crate::store::{ListFilter, Store};

const KEY: &str = "sk-bench";
const MODEL: &str = "doubao-seedance-1-0-pro-250528";

/// `seedq bench pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Jobs per run.
    #[arg(long, default_value_t = 500)]
    pub jobs: usize,
    /// The model's concurrency limit (sim and seedq).
    #[arg(long, default_value_t = 10)]
    pub concurrency: u32,
    /// Simulated time factor: T = 60 s × this.
    #[arg(long, default_value_t = 0.01)]
    pub time_scale: f64,
    /// Jobs for the instant-simulator overhead run.
    #[arg(long, default_value_t = 2000)]
    pub instant_jobs: usize,
    /// Jobs for the tutorial-loop baseline.
    #[arg(long, default_value_t = 20)]
    pub baseline_jobs: usize,
}

/// The nominal generation time of the bench's 5 s clips: 30 s + 6 s/s (the sim's default).
const T_SECS: f64 = 60.0;

struct RunResult {
    makespan: Duration,
    /// The sim's own view: mean generation time and mean wait in its queue (ms).
    sim_gen_ms: f64,
    sim_wait_ms: f64,
    status_calls: u64,
    creates: u64,
    lags_ms: Vec<f64>,
    finished: usize,
}

async fn sim_json(
    client: &reqwest::Client,
    root: &str,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    Ok(client
        .get(format!("{root}{path}"))
        .send()
        .await?
        .json()
        .await?)
}

async fn one_run(
    ctx: &Ctx,
    jobs: usize,
    concurrency: u32,
    scale: f64,
    callbacks: bool,
    instant: bool,
) -> anyhow::Result<RunResult> {
    let dir = std::env::temp_dir().join(format!(
        "seedq-bench-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    std::fs::create_dir_all(&dir)?;
    // The instant run measures seedq, not the simulator's encoder: one render per clip shape.
    // It lifts the account's read rates too, as it lifts the RPM: seedq is what it measures.
    let gen_line = if instant {
        "reuse_videos = true\n[generation]\nbase = \"1ms\"\nper_video_second = \"0ms\"\n\
         [read_limits]\nlist_qps = 0\nget_qps = 0\ndelete_qps = 0\n"
            .to_string()
    } else {
        String::new()
    };
    let sim_cfg: crate::sim::SimConfig = toml::from_str(&format!(
        "api_keys = [\"{KEY}\"]\ntime_scale = {}\nvideo_downscale = 64\nrender_concurrency = 2\n{gen_line}\n[models.\"{MODEL}\"]\nconcurrency = {concurrency}\nrpm = 1000000\n",
        if instant { 1.0 } else { scale }
    ))?;
    let sim =
        crate::sim::start(sim_cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
    let root = sim.base_url().trim_end_matches("/api/v3").to_string();

    let t = Duration::from_secs_f64(if instant { 0.001 } else { T_SECS * scale });
    let mut cfg = Config::default();
    cfg.store.path = dir.join("seedq.db");
    cfg.ark.base_url = sim.base_url();
    cfg.ark.api_key = Some(SecretString::from(KEY.to_string()));
    cfg.ark.list_page_size = 100;
    if instant {
        (cfg.ark.list_qps, cfg.ark.get_qps, cfg.ark.delete_qps) = (1e6, 1e6, 1e6);
    } else {
        // The read rates' second is the simulator's scaled one, as its RPM window is.
        cfg.ark.rate_window = Duration::from_secs_f64(scale);
    }
    cfg.archive.url = String::new();
    cfg.admin.listen = String::new();
    cfg.dispatch.workers = concurrency.clamp(1, 16);
    cfg.dispatch.idle_interval = Duration::from_millis(200);
    cfg.poll.first_poll_after = t;
    cfg.poll.min_interval = (t / 30).max(Duration::from_millis(1));
    cfg.poll.max_interval = (t / 2).max(Duration::from_millis(2));
    if callbacks {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        cfg.callback.public_url = format!("http://127.0.0.1:{port}/cb");
        cfg.callback.listen = format!("127.0.0.1:{port}");
        cfg.poll.callback_safety_interval = t * 5;
    }
    let mut models = std::collections::BTreeMap::new();
    models.insert(
        MODEL.to_string(),
        serde_json::json!({"limits": {"concurrency": concurrency, "rpm": 1_000_000}}),
    );
    let catalogue = crate::catalogue::Catalogue::with_overrides(&models)?;

    let store = Store::open(&cfg.store.path)?;
    let mut batch = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let spec = JobSpec {
            model: Some(MODEL.into()),
            prompt: Some(format!("bench shot {i}")),
            resolution: Some("480p".into()),
            // The instant run measures seedq, not the simulator's encoder: shortest clips.
            duration: (!instant).then_some(5),
            frames: instant.then_some(29),
            ..Default::default()
        };
        batch.push(new_job(request::prepare(spec, &catalogue, &dir)?)?);
    }
    store.enqueue(batch).await?;
    let _ = ctx;

    let started = Instant::now();
    let wctx = StageCtx::new(cfg, catalogue, store.clone())?;
    crate::service::run(wctx, Mode::UntilDrained, std::future::pending()).await?;
    let makespan = started.elapsed();

    let client = reqwest::Client::new();
    let stats = sim_json(&client, &root, "/_sim/stats").await?;
    let tasks = sim_json(&client, &root, "/_sim/tasks").await?;
    let finished_at: HashMap<String, i64> = tasks
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| Some((t["id"].as_str()?.to_string(), t["finished_ms"].as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    let done = store.list(ListFilter::default()).await?;
    let lags_ms: Vec<f64> = done
        .iter()
        .filter_map(|j| {
            let remote = finished_at.get(j.remote_task_id.as_deref()?)?;
            Some((j.finished_at?.ms() - remote) as f64)
        })
        .collect();
    let (mut gens, mut wait) = (Vec::new(), Vec::new());
    for t in tasks.as_array().into_iter().flatten() {
        if let (Some(c), Some(r), Some(f)) = (
            t["created_ms"].as_i64(),
            t["running_ms"].as_i64(),
            t["finished_ms"].as_i64(),
        ) {
            gens.push((f - r) as f64);
            wait.push((r - c) as f64);
        }
    }
    let finished = done
        .iter()
        .filter(|j| j.state == crate::job::JobState::Succeeded)
        .count();
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
    Ok(RunResult {
        makespan,
        sim_gen_ms: mean(&gens),
        sim_wait_ms: mean(&wait),
        status_calls: stats["status_calls_total"].as_u64().unwrap_or(0),
        creates: stats["creates_total"].as_u64().unwrap_or(0),
        lags_ms,
        finished,
    })
}

/// The tutorial's loop: create, then GET every (scaled) second until done.
async fn baseline(jobs: usize, scale: f64) -> anyhow::Result<f64> {
    let sim_cfg: crate::sim::SimConfig = toml::from_str(&format!(
        "api_keys = [\"{KEY}\"]\ntime_scale = {scale}\nvideo_downscale = 64\n[models.\"{MODEL}\"]\nconcurrency = 1000\nrpm = 1000000\n"
    ))?;
    let sim =
        crate::sim::start(sim_cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
    let ark = crate::ark::ArkClient::new(
        &sim.base_url(),
        SecretString::from(KEY.to_string()),
        Duration::from_secs(5),
        Duration::from_secs(30),
    )?;
    let tick = Duration::from_secs_f64(scale);
    let mut handles = Vec::new();
    for i in 0..jobs {
        let ark = ark.clone();
        handles.push(tokio::spawn(async move {
            let body = format!(r#"{{"model":"{MODEL}","content":[{{"type":"text","text":"baseline {i}"}}],"resolution":"480p","duration":5}}"#);
            let id = ark.create(&body).await?.id;
            let mut gets = 0u64;
            loop {
                tokio::time::sleep(tick).await;
                gets += 1;
                if ark.get(&id).await?.status.is_final() {
                    return Ok::<u64, anyhow::Error>(gets);
                }
            }
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    sim.shutdown().await;
    Ok(total as f64 / jobs as f64)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub(crate) async fn run(ctx: &Ctx, a: PipelineArgs) -> anyhow::Result<()> {
    let t_ms = T_SECS * a.time_scale * 1000.0;
    let ideal = (a.jobs as f64 / f64::from(a.concurrency)).ceil() * t_ms;
    println!(
        "pipeline: N = {}, C = {}, T = {:.0} ms (60 s × {})",
        a.jobs, a.concurrency, t_ms, a.time_scale
    );

    let mut polled = one_run(ctx, a.jobs, a.concurrency, a.time_scale, false, false)
        .await
        .context("the polling run")?;
    anyhow::ensure!(
        polled.finished == a.jobs,
        "only {} of {} jobs finished",
        polled.finished,
        a.jobs
    );
    println!(
        "polling:   makespan {:.0} ms = {:.3} × ideal {:.0} ms; creates {}; status requests/job {:.3}; lag mean {:.1} ms ({:.1} % of T), p95 {:.1} ms",
        polled.makespan.as_secs_f64() * 1000.0,
        polled.makespan.as_secs_f64() * 1000.0 / ideal,
        ideal,
        polled.creates,
        polled.status_calls as f64 / polled.finished as f64,
        mean(&polled.lags_ms),
        mean(&polled.lags_ms) / t_ms * 100.0,
        percentile(&mut polled.lags_ms, 0.95)
    );
    println!(
        "           (sim: generation {:.1} ms, queue wait {:.1} ms per task)",
        polled.sim_gen_ms, polled.sim_wait_ms
    );

    let mut cb = one_run(ctx, a.jobs, a.concurrency, a.time_scale, true, false)
        .await
        .context("the callback run")?;
    anyhow::ensure!(
        cb.finished == a.jobs,
        "only {} of {} jobs finished",
        cb.finished,
        a.jobs
    );
    println!(
        "callbacks: makespan {:.0} ms = {:.3} × ideal; status requests/job {:.3}; lag mean {:.1} ms, p95 {:.1} ms",
        cb.makespan.as_secs_f64() * 1000.0,
        cb.makespan.as_secs_f64() * 1000.0 / ideal,
        cb.status_calls as f64 / cb.finished as f64,
        mean(&cb.lags_ms),
        percentile(&mut cb.lags_ms, 0.95)
    );

    let instant = one_run(ctx, a.instant_jobs, 1000, a.time_scale, false, true)
        .await
        .context("the instant run")?;
    anyhow::ensure!(
        instant.finished == a.instant_jobs,
        "only {} of {} jobs finished",
        instant.finished,
        a.instant_jobs
    );
    println!(
        "overhead:  {} jobs against an instant simulator in {:.2} s = {:.0} jobs/s end to end",
        a.instant_jobs,
        instant.makespan.as_secs_f64(),
        a.instant_jobs as f64 / instant.makespan.as_secs_f64()
    );

    let base = baseline(a.baseline_jobs, a.time_scale)
        .await
        .context("the baseline run")?;
    println!(
        "baseline:  the tutorial's poll-every-second loop makes {base:.1} status requests per job"
    );
    Ok(())
}
