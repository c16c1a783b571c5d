//! `seedq bench chaos`: the promises under a seeded storm, checked against the sim's ledger.
//!
//! It starts `seedq sim` (a child process, its clock skewed) with create 500s before and after
//! the task exists, dropped connections after create, list and GET errors and malformed
//! bodies, and in some rounds create answers slower than `request_timeout` after the task
//! exists; enqueues N jobs; runs `seedq serve` children that it
//! SIGKILLs and SIGSTOPs (past their lease) at seeded moments; then a final `seedq run`, which
//! must exit by itself. At the end it checks, from `GET /_sim/tasks`:
//! - every job is archived, or parked with a reason (`seedq show` prints it);
//! - at most one billed (not cancelled) task carries each job's identity;
//! - every archived file's sha256 is the sim's hash of the job's own task.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rand::{Rng, SeedableRng};

use super::Ctx;

const KEY: &str = "sk-chaos";
const MODEL: &str = "doubao-seedance-1-0-pro-250528";

/// `seedq bench chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Seeds the faults, the kill schedule and the sim's dice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Jobs.
    #[arg(long, default_value_t = 1000)]
    pub jobs: usize,
    /// Rounds of `seedq serve` that end in SIGKILL or a SIGSTOP past the lease.
    #[arg(long, default_value_t = 12)]
    pub rounds: u32,
    /// Ark's clock minus ours, in seconds.
    #[arg(long, default_value_t = -7, allow_hyphen_values = true)]
    pub skew: i64,
    /// The final `seedq run` must end within this many seconds.
    #[arg(long, default_value_t = 900)]
    pub deadline: u64,
}

/// Kills the child on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("running kill")?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

pub(crate) async fn run(_ctx: &Ctx, a: ChaosArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the seedq binary")?;
    let dir = std::env::temp_dir().join(format!("seedq-chaos-{}-{}", a.seed, std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let sim_cfg = dir.join("sim.toml");
    std::fs::write(
        &sim_cfg,
        format!(
            "time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\nrng_seed = {seed}\n\
             clock_offset_s = {skew}\nmax_queued = 100000\n\
             [models.\"{MODEL}\"]\nrpm = 100000\nconcurrency = 40\n\
             [faults]\nerror_after_create_rate = 0.04\ndrop_after_create_rate = 0.03\n\
             malformed_json_rate = 0.01\n\
             [faults.error_rate]\ncreate = 0.05\nlist = 0.1\nget = 0.05\n",
            seed = a.seed,
            skew = a.skew
        ),
    )?;
    let mut sim = Command::new(&exe);
    sim.args([
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        KEY,
        "--sim-config",
    ])
    .arg(&sim_cfg)
    .env("SEEDQ_CONFIG", "/dev/null")
    .env("RUST_LOG", "off")
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut sim = Proc(sim.spawn().context("starting seedq sim")?);
    let mut line = String::new();
    std::io::BufReader::new(sim.0.stdout.take().context("sim stdout")?).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("seedq sim listening on ")
        .with_context(|| format!("unexpected sim output {line:?}"))?
        .to_string();
    let root = base.trim_end_matches("/api/v3").to_string();

    let archive = dir.join("archive");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = {db:?}\n\n[archive]\nurl = {url:?}\n\n\
             [ark]\nbase_url = {base:?}\nconnect_timeout = \"1s\"\nrequest_timeout = \"2s\"\nrate_window = \"10ms\"\n\n\
             [dispatch]\nlease = \"3s\"\nidle_interval = \"50ms\"\nbackoff_base = \"20ms\"\n\
             backoff_max = \"200ms\"\nthrottle_pause = \"100ms\"\nreconcile_interval = \"200ms\"\n\
             reconcile_grace = \"10s\"\nworkers = 4\nrpm_window = \"1s\"\n\n\
             [poll]\nfirst_poll_after = \"100ms\"\nflex_first_poll_after = \"200ms\"\n\
             min_interval = \"30ms\"\nmax_interval = \"300ms\"\nflex_max_interval = \"300ms\"\n\n\
             [service]\nshutdown_grace = \"5s\"\n\n[admin]\nlisten = \"\"\n\n\
             [models.\"{MODEL}\"]\nlimits = {{ concurrency = 40, rpm = 100000 }}\n",
            db = dir.join("seedq.db").display().to_string(),
            url = format!("file://{}", archive.display()),
        ),
    )?;
    let seedq = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("ARK_API_KEY", KEY)
            .env_remove("SEEDQ_CONFIG")
            .env("RUST_LOG", "off");
        c
    };
    let jobs_file = dir.join("jobs.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&jobs_file)?);
        for i in 0..a.jobs {
            // Pinned seeds shared by many jobs: a seed alone proves nothing.
            writeln!(
                w,
                "{{\"prompt\":\"chaos {i}: a fox in the snow\",\"model\":\"{MODEL}\",\"resolution\":\"480p\",\"duration\":{},\"seed\":{}}}",
                2 + i % 3,
                i % 7
            )?;
        }
    }
    let out = seedq(&["submit", "-f"]).arg(&jobs_file).output()?;
    anyhow::ensure!(
        out.status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "chaos: seed {}, {} jobs, {} rounds, Ark clock {:+} s",
        a.seed, a.jobs, a.rounds, a.skew
    );
    // The same faults as the file, for `POST /_sim/faults` (which replaces the whole set);
    // some rounds add answers slower than request_timeout after the task exists.
    let faults = |slow: bool| {
        serde_json::json!({
            "error_after_create_rate": 0.04,
            "drop_after_create_rate": 0.03,
            "malformed_json_rate": 0.01,
            "error_rate": {"create": 0.05, "list": 0.1, "get": 0.05},
            "latency_after_create_ms": if slow { 2_500 } else { 0 },
        })
    };
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (mut kills, mut stops, mut slow_rounds) = (0, 0, 0);
    for _ in 0..a.rounds {
        let slow = rng.random_bool(0.3);
        slow_rounds += u32::from(slow);
        client
            .post(format!("{root}/_sim/faults"))
            .json(&faults(slow))
            .send()
            .await?
            .error_for_status()?;
        let mut child = Proc(
            seedq(&["serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        let pid = child.0.id();
        if rng.random_bool(0.4) {
            // Paused past its lease, then resumed: it must not pay twice when it wakes.
            signal(pid, "-STOP")?;
            let mut other = Proc(
                seedq(&["serve"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
            tokio::time::sleep(Duration::from_millis(rng.random_range(3500..6000))).await;
            signal(pid, "-CONT")?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
            signal(other.0.id(), "-KILL")?;
            let _ = other.0.wait();
            stops += 1;
        }
        signal(pid, "-KILL")?;
        let _ = child.0.wait();
        kills += 1;
    }
    client
        .post(format!("{root}/_sim/faults"))
        .json(&faults(false))
        .send()
        .await?
        .error_for_status()?;
    let run_started = Instant::now();
    let mut run = Proc(
        seedq(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let exited = loop {
        if let Some(s) = run.0.try_wait()? {
            break Some(s);
        }
        if run_started.elapsed() > Duration::from_secs(a.deadline) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut summary = String::new();
    if let Some(mut e) = run.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut summary);
    }
    let total = started.elapsed();

    // The checks, against the sim's own ledger.
    let ledger: Vec<serde_json::Value> = client
        .get(format!("{root}/_sim/tasks"))
        .send()
        .await?
        .json()
        .await?;
    let stats: serde_json::Value = client
        .get(format!("{root}/_sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    let out = seedq(&["ls", "--json", "--limit", "1000000"]).output()?;
    let jobs: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("seedq ls --json")?;
    let mut billed: HashMap<String, usize> = HashMap::new();
    let mut by_id: HashMap<String, &serde_json::Value> = HashMap::new();
    for t in &ledger {
        by_id.insert(t["id"].as_str().unwrap_or("").to_string(), t);
        if t["status"] != "cancelled"
            && let Some(tag) = t["request"]["safety_identifier"].as_str()
        {
            *billed.entry(tag.to_string()).or_default() += 1;
        }
    }
    let (mut archived, mut parked, mut bad_state, mut bad_hash) = (0, 0, Vec::new(), Vec::new());
    for j in &jobs {
        let id = j["id"].as_str().unwrap_or("");
        match j["state"].as_str() {
            Some("archived") => {
                archived += 1;
                let remote = j["remote_task_id"].as_str().unwrap_or("");
                let own = by_id.get(remote).is_some_and(|t| {
                    t["request"]["safety_identifier"].as_str()
                        == Some(format!("{}{id}", crate::worker::reconcile::TAG_PREFIX).as_str())
                        && t["video_sha256"] == j["archive_sha256"]
                });
                if !own {
                    bad_hash.push(id.to_string());
                }
            }
            Some("submit_unknown")
                if j["last_error_code"] == crate::worker::reconcile::PARKED
                    && j["last_error_message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()) =>
            {
                parked += 1;
            }
            s => bad_state.push(format!("{id} {s:?} {}", j["last_error_message"])),
        }
    }
    let twice: Vec<(&String, &usize)> = billed.iter().filter(|(_, n)| **n > 1).collect();
    let untagged = ledger
        .iter()
        .filter(|t| t["request"]["safety_identifier"].is_null())
        .count();
    println!(
        "chaos: {kills} SIGKILLs ({stops} after a SIGSTOP past the lease; {slow_rounds} rounds with create answers slower than the timeout); final run {}; total {:.1} s",
        match exited {
            Some(s) => format!(
                "exited by itself ({s}) after {:.1} s",
                run_started.elapsed().as_secs_f64()
            ),
            None => format!("did NOT finish within {} s", a.deadline),
        },
        total.as_secs_f64()
    );
    println!(
        "chaos: sim creates {} (500 before create {}, tasks {}), jobs {}, archived {archived}, parked {parked}, other {}",
        stats["creates_total"],
        stats["calls"]["create"]["500"],
        ledger.len(),
        jobs.len(),
        bad_state.len()
    );
    println!(
        "chaos: jobs with more than one billed task: {}; archived files not the job's own task's video: {}; tasks without identity: {untagged}",
        twice.len(),
        bad_hash.len()
    );
    if !summary.trim().is_empty() {
        println!("chaos: seedq run said:\n{}", summary.trim_end());
    }
    for b in bad_state.iter().take(5) {
        println!("  not archived nor parked: {b}");
    }
    for (tag, n) in twice.iter().take(5) {
        println!("  {n} billed tasks for {tag}");
    }
    for b in bad_hash.iter().take(5) {
        println!("  wrong archive for {b}");
    }
    drop(sim);
    let ok = exited.is_some()
        && jobs.len() == a.jobs
        && bad_state.is_empty()
        && twice.is_empty()
        && bad_hash.is_empty();
    println!("chaos: {}", if ok { "PASS" } else { "FAIL" });
    if ok {
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
