//! `seedq bench faults`: the fault matrix against the in-process simulator.
//!
//! One run of the service (`run` mode, until drained) while the simulator answers 20 % of
//! every API route and of downloads with a 500, sends 429 bursts and drops creates after
//! making them, corrupts JSON and truncates downloads. Meanwhile 150 slow peers hold half-sent
//! requests open on each of the admin and callback servers, reconnecting whenever they are cut
//! off, and `/healthz` is probed throughout. Ambiguous creates are resubmitted after the
//! grace period (the sim's 500s make no task), so a lost task would show as a second one. The result is what the promises are about: jobs
//! archived, remote tasks per job (exactly 1: nothing paid twice), archive hashes equal to the
//! simulator's, and whether `/healthz` kept answering.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Ctx;
use super::jobs::new_job;
use crate::config::Config;
use crate::request::{self, JobSpec};
use crate::service::Mode;
use crate::stage::Ctx as StageCtx;
use crate::store::{ListFilter, Store};

const KEY: &str = "sk-bench";
const MODEL: &str = "doubao-seedance-1-0-pro-250528";

/// `seedq bench faults`.
#[derive(Debug, Args)]
pub struct FaultsArgs {
    /// Jobs in the run.
    #[arg(long, default_value_t = 200)]
    pub jobs: usize,
    /// Probability of a 500 on each API route and on downloads.
    #[arg(long, default_value_t = 0.2)]
    pub error_rate: f64,
    /// Slow peers held open on each of the admin and callback servers.
    #[arg(long, default_value_t = 150)]
    pub idle: usize,
    /// Simulated time factor (a 5 s clip takes 60 s × this).
    #[arg(long, default_value_t = 0.002)]
    pub time_scale: f64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One slow peer: a request line and a header, then silence; reconnects when cut off.
async fn slow_peer(port: u16, stop: Arc<AtomicBool>, cuts: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if s.write_all(b"POST /hook/x/y HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            continue;
        }
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                r = s.read(&mut buf) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        cuts.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }
}

/// `/healthz` round trip with a 2 s budget; `None` when it did not answer 200 in time.
async fn probe(port: u16) -> Option<Duration> {
    let started = Instant::now();
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        out.starts_with(b"HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
        .map(|()| started.elapsed())
}

pub(crate) async fn run(_ctx: &Ctx, a: FaultsArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "seedq-bench-faults-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    std::fs::create_dir_all(&dir)?;
    let e = a.error_rate;
    let sim_cfg: crate::sim::SimConfig = toml::from_str(&format!(
        "api_keys = [\"{KEY}\"]\ntime_scale = {}\nvideo_downscale = 64\nreuse_videos = true\nrender_concurrency = 2\n\
         [models.\"{MODEL}\"]\nconcurrency = 20\nrpm = 1000000\n",
        a.time_scale
    ))?;
    let sim =
        crate::sim::start(sim_cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
    let root = sim.root_url();
    let faults = serde_json::json!({
        "error_rate": {"create": e, "get": e, "list": e, "delete": e, "download": e},
        "rate_limit_burst": 5,
        "retry_after_secs": 1,
        "drop_after_create": 3,
        "malformed_json_rate": 0.05,
        "truncate_download_rate": 0.2,
    });
    let http = reqwest::Client::new();
    http.post(format!("{root}/_sim/faults"))
        .json(&faults)
        .send()
        .await?
        .error_for_status()?;

    let (admin, cb) = (free_port()?, free_port()?);
    let mut cfg = Config::default();
    cfg.store.path = dir.join("seedq.db");
    cfg.ark.base_url = sim.base_url();
    cfg.ark.api_key = Some(SecretString::from(KEY.to_string()));
    cfg.ark.request_timeout = Duration::from_secs(5);
    // The read rates' second is the simulator's scaled one, as its RPM window is.
    cfg.ark.rate_window = Duration::from_secs_f64(a.time_scale).max(Duration::from_micros(100));
    cfg.archive.url = format!("file://{}", dir.join("archive").display());
    cfg.admin.listen = format!("127.0.0.1:{admin}");
    cfg.admin.read_timeout = Duration::from_secs(2);
    cfg.callback.listen = format!("127.0.0.1:{cb}");
    cfg.callback.public_url = format!("http://127.0.0.1:{cb}/hook");
    cfg.dispatch.workers = 8;
    cfg.dispatch.idle_interval = Duration::from_millis(50);
    cfg.dispatch.backoff_base = Duration::from_millis(20);
    cfg.dispatch.backoff_max = Duration::from_millis(500);
    cfg.dispatch.throttle_pause = Duration::from_millis(200);
    cfg.dispatch.reconcile_interval = Duration::from_millis(200);
    cfg.dispatch.reconcile_grace = Duration::from_secs(5);
    // The sim makes no task when it answers a create with a 500, so a create it never saw
    // must be re-sent, not parked; a dropped create's task is found (and adopted) by seed.
    // Either way the check below counts remote tasks per job.
    cfg.dispatch.on_ambiguous_submit = crate::config::AmbiguousPolicy::Resubmit;
    cfg.poll.first_poll_after = Duration::from_millis(150);
    cfg.poll.min_interval = Duration::from_millis(30);
    cfg.poll.max_interval = Duration::from_millis(300);
    cfg.poll.callback_safety_interval = Duration::from_millis(500);
    let mut models = std::collections::BTreeMap::new();
    models.insert(
        MODEL.to_string(),
        serde_json::json!({"limits": {"concurrency": 20, "rpm": 1_000_000}}),
    );
    let catalogue = crate::catalogue::Catalogue::with_overrides(&models)?;
    let store = Store::open(&cfg.store.path)?;
    let mut batch = Vec::with_capacity(a.jobs);
    for i in 0..a.jobs {
        let spec = JobSpec {
            model: Some(MODEL.into()),
            prompt: Some(format!("fault matrix shot {i}")),
            resolution: Some("480p".into()),
            duration: Some(5),
            ..Default::default()
        };
        batch.push(new_job(request::prepare(spec, &catalogue, &dir)?)?);
    }
    store.enqueue(batch).await?;

    let wctx = StageCtx::new(cfg, catalogue, store.clone())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = crate::ops::admin::bind(&wctx.cfg.admin.listen)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the admin server is off"))?;
    let admin_task = tokio::spawn(crate::ops::admin::run(
        wctx.clone(),
        listener,
        shutdown.child_token(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let mut peers = Vec::new();
    for _ in 0..a.idle {
        for port in [admin, cb] {
            peers.push(tokio::spawn(slow_peer(
                port,
                Arc::clone(&stop),
                Arc::clone(&cuts),
            )));
        }
    }
    // 429 bursts and dropped creates are re-armed every 5 s, three times: re-arming for the
    // whole run would be a 429 storm that never ends (5 throttles × 1 s Retry-After = 5 s),
    // which starves the last job by construction rather than testing seedq.
    let rearm = {
        let (http, root, faults) = (http.clone(), root.clone(), faults.clone());
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = http
                    .post(format!("{root}/_sim/faults"))
                    .json(&faults)
                    .send()
                    .await;
            }
        })
    };
    let prober = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let (mut ok, mut failed, mut worst) = (0u32, 0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                match probe(admin).await {
                    Some(d) => {
                        ok += 1;
                        worst = worst.max(d);
                    }
                    None => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (ok, failed, worst)
        })
    };

    let started = Instant::now();
    crate::service::run(wctx, Mode::UntilDrained, std::future::pending()).await?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (probes_ok, probes_failed, worst) = prober.await?;
    rearm.abort();
    for p in peers {
        p.abort();
    }
    shutdown.cancel();
    let _ = admin_task.await;

    // Faults off, so the checks below read the truth.
    http.post(format!("{root}/_sim/faults"))
        .json(&serde_json::json!({}))
        .send()
        .await?
        .error_for_status()?;
    let stats: serde_json::Value = http
        .get(format!("{root}/_sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    let tasks: serde_json::Value = http
        .get(format!("{root}/_sim/tasks"))
        .send()
        .await?
        .json()
        .await?;
    let mut per_prompt: HashMap<String, u32> = HashMap::new();
    let mut sha: HashMap<String, String> = HashMap::new();
    for t in tasks.as_array().into_iter().flatten() {
        if let Some(p) = t["prompt"].as_str() {
            *per_prompt.entry(p.to_string()).or_default() += 1;
        }
        if let (Some(id), Some(h)) = (t["id"].as_str(), t["video_sha256"].as_str()) {
            sha.insert(id.to_string(), h.to_string());
        }
    }
    let jobs = store.list(ListFilter::default()).await?;
    let archived = jobs
        .iter()
        .filter(|j| j.state == crate::job::JobState::Archived)
        .count();
    let matching = jobs
        .iter()
        .filter(|j| {
            j.remote_task_id
                .as_ref()
                .and_then(|r| sha.get(r))
                .is_some_and(|h| j.archive_sha256.as_deref() == Some(h.as_str()))
        })
        .count();
    let mut states: HashMap<String, usize> = HashMap::new();
    for j in &jobs {
        *states.entry(j.state.to_string()).or_default() += 1;
    }
    let once = per_prompt.values().filter(|n| **n == 1).count();
    let twice = per_prompt.values().filter(|n| **n > 1).count();
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();

    println!(
        "faults: {}% 5xx on create/get/list/delete/download, 429 bursts of 5 and 3 dropped creates re-armed 3 times 5 s apart, 5% malformed JSON, 20% truncated downloads, {} slow peers on each server",
        (e * 100.0).round(),
        a.idle
    );
    println!(
        "jobs: {} of {} archived in {:.1} s; states {:?}",
        archived,
        a.jobs,
        elapsed.as_secs_f64(),
        states
    );
    println!(
        "remote tasks per job: {once} jobs with exactly 1, {twice} with more ({} tasks made; create calls by answer: {})",
        stats["creates_total"].as_u64().unwrap_or(0),
        stats["calls"]["create"]
    );
    println!("archive hashes equal to the simulator's: {matching} of {archived}");
    println!(
        "/healthz during the run: {probes_ok} answered (slowest {:.0} ms), {probes_failed} not within 2 s; slow peers cut off {} times",
        worst.as_secs_f64() * 1000.0,
        cuts.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        archived == a.jobs && twice == 0 && matching == archived && probes_failed == 0,
        "the fault matrix broke a promise (see above)"
    );
    Ok(())
}
