//! `seedq bench fleet --flex`: a large flex batch through a fleet of `seedq serve` processes
//! sharing one PostgreSQL, against the in-process simulator's offline pool.
//!
//! The bench enqueues `--jobs` flex jobs as one batch (through [`Store::enqueue`], in chunks),
//! starts `--workers` `seedq serve` processes on the shared scratch database, and samples
//! every second each worker's RSS and the CPU time of every part (the workers, all of
//! PostgreSQL's processes, and this process, which hosts the simulator); every
//! `STATS_EVERY` it times the real `seedq stats` and `seedq batch show` commands against
//! the store. At the end it checks, from the simulator's side, that every job was created
//! exactly once and finished, that no TPD day accepted more than the budget, and that each
//! worker's peak RSS and the slowest `stats` / `batch show` stayed within their targets.
//!
//! The workers run the shipped configuration except: the sim's URL, the store URL, no
//! archive, no admin listener, and every duration that stands for Ark's clock (poll waits,
//! the read-rate and RPM windows, the 429 pause and the TPD day) multiplied by the sim's
//! time scale, so that a scaled second is the same second to both sides.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::bench_fleet::{FleetArgs, Proc, bench_dir, cpu_secs, cpus, pg_cpu};
use super::jobs::new_job;
use crate::config::Config;
use crate::job::JobState;
use crate::pgscratch::Cluster;
use crate::request::{self, JobSpec};
use crate::store::{NewJob, Store};

const KEY: &str = "sk-bench-fleet-flex";
/// A model with an offline (flex) tier, as `seedq bench flex` uses.
const MODEL: &str = "doubao-seedance-1-0-lite-t2v-250428";
/// The sim's default flex slowdown.
const FLEX_FACTOR: f64 = 4.0;
/// The batch every job belongs to (what `seedq batch show` reads).
const BATCH: &str = "fleet-flex";
/// Jobs per `Store::enqueue` call.
const ENQUEUE_CHUNK: usize = 10_000;
/// How often `seedq stats` and `seedq batch show` are timed while the run goes.
const STATS_EVERY: Duration = Duration::from_secs(10);
/// The targets.
const RSS_LIMIT_MIB: f64 = 256.0;
const CLI_LIMIT_MS: f64 = 1000.0;

/// The flex job `i`: a 480p 5 s text-to-video clip, the bench flex shape.
fn flex_job(i: usize, dir: &Path, cat: &crate::catalogue::Catalogue) -> anyhow::Result<NewJob> {
    let spec = JobSpec {
        model: Some(MODEL.into()),
        prompt: Some(format!("fleet flex shot {i}")),
        resolution: Some("480p".into()),
        ratio: Some("16:9".into()),
        duration: Some(5),
        flex: Some(true),
        ..Default::default()
    };
    let mut job = new_job(request::prepare(spec, cat, dir)?)?;
    job.batch = Some(BATCH.into());
    Ok(job)
}

/// `--time-scale`: a factor in (0, 1].
pub(crate) fn time_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a time scale: a number > 0 and <= 1 (1 is real time)"
        )),
    }
}

/// A duration of the shipped configuration on the sim's clock, as humantime text.
fn scaled(d: Duration, scale: f64) -> String {
    format!("{}ms", (d.as_secs_f64() * scale * 1000.0).round().max(1.0))
}

/// `VmRSS` and `VmHWM` of a live process, in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Wall time of one CLI command against the store (ms), or why it failed.
fn time_cli(exe: &Path, cfg: &Path, args: &[&str]) -> Result<f64, String> {
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("SEEDQ_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("seedq {}: {e}", args.join(" ")))?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if out.status.success() {
        Ok(ms)
    } else {
        Err(format!(
            "seedq {} exited {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The slowest `stats` and `batch show` so far, and the first failure.
#[derive(Default)]
struct CliTimes {
    stats_max: f64,
    show_max: f64,
    samples: usize,
    error: Option<String>,
}

impl CliTimes {
    fn sample(&mut self, exe: &Path, cfg: &Path) {
        match time_cli(exe, cfg, &["stats"]) {
            Ok(ms) => self.stats_max = self.stats_max.max(ms),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        match time_cli(exe, cfg, &["batch", "show", BATCH]) {
            Ok(ms) => self.show_max = self.show_max.max(ms),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.samples += 1;
    }
}

pub(crate) async fn run(a: &FleetArgs) -> anyhow::Result<ExitCode> {
    let w = *a.workers.last().context("--workers is empty")? as usize;
    anyhow::ensure!(a.jobs >= 1, "--jobs must be >= 1");
    let scale = a.time_scale;
    let dir = bench_dir("fleet-flex")?;
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await?
        .context("starting a scratch PostgreSQL cluster")?;
    let cluster = Arc::new(cluster);
    let url = {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.create_db("fleet_flex")).await??
    };

    // The TPD budget: `--tpd-jobs` jobs' tokens a day; by default just over half the batch,
    // so that it binds only when the fleet does more than half the batch within one day.
    let (pw, ph) = crate::catalogue::pixel_size(crate::catalogue::PixelTable::V1, "480p", "16:9")
        .context("480p size")?;
    let per_job = u64::try_from(crate::catalogue::tokens(
        pw,
        ph,
        crate::catalogue::frames_for_duration(5),
    ))?;
    let tpd_jobs = a.tpd_jobs.unwrap_or(a.jobs as u64 / 2 + 1);
    let tpd = per_job * tpd_jobs;
    let day_ms = a.day_secs * 1000;
    let t_flex_ms = 60_000.0 * FLEX_FACTOR * scale;
    println!(
        "fleet --flex: {} flex jobs in one batch, {w} `seedq serve` processes on one PostgreSQL, \
         sim offline pool {}, time scale {scale} (T_flex {t_flex_ms:.0} ms), TPD {tpd_jobs} jobs \
         ({tpd} tokens) per {} s day, {} CPUs, load average {}",
        a.jobs,
        a.pool,
        a.day_secs,
        cpus(),
        loadavg()
    );

    // The sim: the shipped account model, time-scaled; reads unmetered (the sim measures the
    // fleet, its list quota is not what this bench is about), renders reused.
    let sim_cfg: crate::sim::SimConfig = toml::from_str(&format!(
        "api_keys = [\"{KEY}\"]\ntime_scale = {scale}\nvideo_downscale = 64\nreuse_videos = true\n\
         render_concurrency = 2\nmax_queued = 0\nflex_pool = {pool}\nflex_factor = {FLEX_FACTOR}\n\
         tpd_day = \"{nominal_day}ms\"\n\
         [read_limits]\nlist_qps = 0\nget_qps = 0\ndelete_qps = 0\n\
         [models.\"{MODEL}\"]\nflex_tpd = {tpd}\n",
        pool = a.pool,
        // The sim's day is nominal: real = nominal × scale (crates/seedq-sim/src/state.rs `tpd_day_start`).
        nominal_day = (day_ms as f64 / scale).round() as u64,
    ))?;
    let sim =
        crate::sim::start(sim_cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
    let base = sim.base_url();
    let root = base.trim_end_matches("/api/v3").to_string();

    let d = Config::default();
    let config_text = format!(
        "[store]\nurl = {url:?}\n\n[archive]\nurl = \"\"\n\n[admin]\nlisten = \"\"\n\n\
         [ark]\nbase_url = {base:?}\nrate_window = {rate_window:?}\n\n\
         [dispatch]\nthrottle_pause = {throttle:?}\nrpm_window = {rpm_window:?}\n\n\
         [poll]\nfirst_poll_after = {fpa:?}\nflex_first_poll_after = {ffpa:?}\n\
         min_interval = {minp:?}\nmax_interval = {maxp:?}\nflex_max_interval = {fmaxp:?}\n\n\
         [bulk]\ntpd_day = \"{day_ms}ms\"\n\n\
         [models.\"{MODEL}\"]\nlimits = {{ flex_tpd = {tpd} }}\n",
        rate_window = scaled(d.ark.rate_window, scale),
        throttle = scaled(d.dispatch.throttle_pause, scale),
        rpm_window = scaled(d.dispatch.rpm_window, scale),
        fpa = scaled(d.poll.first_poll_after, scale),
        ffpa = scaled(d.poll.flex_first_poll_after, scale),
        minp = scaled(d.poll.min_interval, scale),
        maxp = scaled(d.poll.max_interval, scale),
        fmaxp = scaled(d.poll.flex_max_interval, scale),
    );
    let cfg_path = dir.join("worker.toml");
    std::fs::write(&cfg_path, &config_text)?;
    let cfg: Config = toml::from_str(&config_text)?;
    let store = Store::open_target(&cfg.store.target(), true).await?;
    let mut models = std::collections::BTreeMap::new();
    models.insert(
        MODEL.to_string(),
        serde_json::json!({"limits": {"flex_tpd": tpd}}),
    );
    let catalogue = crate::catalogue::Catalogue::with_overrides(&models)?;

    // 1. Enqueue the batch.
    let started = Instant::now();
    let mut done = 0;
    while done < a.jobs {
        let n = ENQUEUE_CHUNK.min(a.jobs - done);
        let chunk = (done..done + n)
            .map(|i| flex_job(i, &dir, &catalogue))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let report = store.enqueue(chunk).await?;
        anyhow::ensure!(
            report.inserted.len() == n,
            "enqueue inserted {} of {n}",
            report.inserted.len()
        );
        done += n;
    }
    let enqueue_s = started.elapsed().as_secs_f64();
    println!(
        "fleet --flex: enqueued {} jobs in chunks of {ENQUEUE_CHUNK}: {enqueue_s:.1} s = {:.0} jobs/s",
        a.jobs,
        a.jobs as f64 / enqueue_s
    );

    // 2. The workers.
    let exe = std::env::current_exe().context("locating the seedq binary")?;
    let pg_before = pg_cpu(cluster.dir()).unwrap_or(0.0);
    let me_before = cpu_secs(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let mut procs = Vec::new();
    for i in 0..w {
        let log = std::fs::File::create(dir.join(format!("w{i}.log")))?;
        let child = Command::new(&exe)
            .arg("--config")
            .arg(&cfg_path)
            .arg("serve")
            .env("ARK_API_KEY", KEY)
            .env_remove("SEEDQ_CONFIG")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting seedq serve")?;
        procs.push(Proc(child));
    }
    let pids: Vec<u32> = procs.iter().map(|p| p.0.id()).collect();

    // 3. `stats` and `batch show` on their own thread, every STATS_EVERY.
    let stop = Arc::new(AtomicBool::new(false));
    let cli = {
        let (stop, exe, cfg_path) = (stop.clone(), exe.clone(), cfg_path.clone());
        std::thread::spawn(move || {
            let mut t = CliTimes::default();
            while !stop.load(Ordering::Relaxed) {
                t.sample(&exe, &cfg_path);
                let next = Instant::now() + STATS_EVERY;
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            t
        })
    };

    // A large batch needs time: at least 60 s + 10 ms a job, or --timeout if longer.
    let budget = Duration::from_secs(a.timeout.max(60 + a.jobs as u64 / 100));
    let deadline = started + budget;
    let mut peak_rss = vec![0.0f64; w];
    let mut last_print = Instant::now();
    let mut timed_out = false;
    let mut exited;
    let mut finished = 0i64;
    let mut counted: Option<Instant> = None;
    let finished = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, pid) in pids.iter().enumerate() {
            if let Some((rss, _)) = rss_mib(*pid) {
                peak_rss[i] = peak_rss[i].max(rss);
            }
        }
        // The job counts are a scan of `jobs` on PostgreSQL (0.5 s of its CPU at 1 000 000
        // jobs): read every STATS_EVERY until the batch is 95 % done, then every second, so
        // that watching the fleet does not take a quarter of a core from it.
        let near_end = finished * 20 >= a.jobs as i64 * 19;
        if near_end || counted.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            counted = Some(Instant::now());
            finished = store
                .state_counts()
                .await?
                .iter()
                // With archiving off, `succeeded` is where a good job ends.
                .filter(|(s, _)| s.is_terminal() || **s == JobState::Succeeded)
                .map(|(_, n)| n)
                .sum();
        }
        exited = procs
            .iter_mut()
            .filter_map(|p| p.0.try_wait().ok().flatten())
            .count();
        if last_print.elapsed() >= STATS_EVERY {
            last_print = Instant::now();
            let s = started.elapsed().as_secs_f64();
            println!(
                "fleet --flex: {s:.0} s: {finished} of {} finished ({:.0} jobs/s), RSS {:?} MiB, load {}",
                a.jobs,
                finished as f64 / s,
                peak_rss
                    .iter()
                    .map(|r| r.round() as i64)
                    .collect::<Vec<_>>(),
                loadavg()
            );
        }
        if finished >= a.jobs as i64 || exited > 0 {
            break finished;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break finished;
        }
    };
    let wall = started.elapsed().as_secs_f64();
    // Read the workers' CPU and high-water marks while they still exist.
    let workers_cpu: Vec<f64> = pids.iter().map(|p| cpu_secs(*p).unwrap_or(0.0)).collect();
    let hwm: Vec<f64> = pids
        .iter()
        .zip(&peak_rss)
        .map(|(p, sampled)| rss_mib(*p).map_or(*sampled, |(_, h)| h.max(*sampled)))
        .collect();
    let me_cpu = cpu_secs(std::process::id()).unwrap_or(0.0) - me_before;
    let pg_used = pg_cpu(cluster.dir()).unwrap_or(0.0) - pg_before;
    let load_end = loadavg();
    // One last `stats` / `batch show` on the finished batch.
    stop.store(true, Ordering::Relaxed);
    let mut cli = cli
        .join()
        .map_err(|_| anyhow::anyhow!("the stats timer panicked"))?;
    cli.sample(&exe, &cfg_path);
    drop(procs);

    let stats: serde_json::Value = reqwest::Client::new()
        .get(format!("{root}/_sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    sim.shutdown().await;
    let counts = store.state_counts().await?;
    let succeeded = counts.get(&JobState::Succeeded).copied().unwrap_or(0);
    let creates = stats["creates_total"].as_u64().unwrap_or(0);
    let limited = stats["rate_limited_total"].as_u64().unwrap_or(0);
    let max_flex = stats["max_flex_running_by_model"][MODEL]
        .as_u64()
        .unwrap_or(0);
    let days: Vec<u64> = stats["flex_tokens_by_day"][MODEL]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    let over = days.iter().filter(|t| **t > tpd).count();

    // 5. The report.
    let rate = succeeded as f64 / wall;
    println!(
        "fleet --flex: {succeeded} of {} succeeded in {wall:.1} s from the workers' start = {rate:.0} jobs/s \
         (plus the enqueue, {enqueue_s:.1} s); load average {load_end} at the end",
        a.jobs
    );
    println!(
        "fleet --flex: sim: {creates} creates for {} jobs, 429s {limited}, flex running at once max {max_flex} \
         (pool {}); jobs accepted per TPD day {:?} (budget {tpd_jobs}); days over TPD: {over}; {}",
        a.jobs,
        a.pool,
        days.iter().map(|t| t / per_job).collect::<Vec<_>>(),
        if days.len() >= 2 {
            "the run crossed a TPD day boundary".to_string()
        } else {
            format!(
                "the run did NOT cross a TPD day boundary ({} day)",
                days.len()
            )
        }
    );
    let wsum: f64 = workers_cpu.iter().sum();
    let total = wsum + pg_used + me_cpu;
    let pct = |x: f64| x / total.max(1e-9) * 100.0;
    println!(
        "fleet --flex: CPU seconds: workers {wsum:.1} ({:.0} %, each {:?}), PostgreSQL {pg_used:.1} ({:.0} %), \
         sim + bench {me_cpu:.1} ({:.0} %); {total:.1} CPU-s in {wall:.1} s = {:.0} % of {} CPUs",
        pct(wsum),
        workers_cpu
            .iter()
            .map(|c| (c * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        pct(pg_used),
        pct(me_cpu),
        total / wall / cpus() as f64 * 100.0,
        cpus()
    );
    println!(
        "fleet --flex: CPU ms per job: workers {:.2}, PostgreSQL {:.2}, sim + bench {:.2}",
        wsum / succeeded.max(1) as f64 * 1000.0,
        pg_used / succeeded.max(1) as f64 * 1000.0,
        me_cpu / succeeded.max(1) as f64 * 1000.0
    );
    println!(
        "fleet --flex: peak RSS per worker (VmHWM) {:?} MiB (target < {RSS_LIMIT_MIB} MiB); \
         slowest of {} samples: stats {:.0} ms, batch show {:.0} ms (target < {CLI_LIMIT_MS} ms)",
        hwm.iter().map(|r| r.round() as i64).collect::<Vec<_>>(),
        cli.samples,
        cli.stats_max,
        cli.show_max
    );
    // What the same work would do with each worker on its own 2-core host and PostgreSQL on
    // another: each part's capacity is its cores over its CPU time per job; the fleet runs at
    // the smallest (network round trips and lock waits are not in this estimate).
    if succeeded > 0 {
        let per = |cpu: f64| cpu / succeeded as f64;
        let workers_cap = (w as f64 * 2.0) / per(wsum).max(1e-9);
        let pg_cap = 2.0 / per(pg_used).max(1e-9);
        println!(
            "fleet --flex: estimate for {w} hosts (each worker on its own 2 cores, PostgreSQL on 2 more, \
             the real Ark instead of the sim): workers could carry {workers_cap:.0} jobs/s, PostgreSQL \
             {pg_cap:.0} jobs/s, so about {:.0} jobs/s ({}-bound), against {rate:.0} jobs/s measured here",
            workers_cap.min(pg_cap),
            if pg_cap < workers_cap {
                "PostgreSQL"
            } else {
                "worker"
            }
        );
    }

    // 4. The checks.
    let mut ok = true;
    let mut fail = |why: String| {
        println!("fleet --flex: FAIL: {why}");
        ok = false;
    };
    if timed_out {
        fail(format!(
            "gave up after {} s with {finished} of {} finished",
            budget.as_secs(),
            a.jobs
        ));
    }
    if exited > 0 {
        fail(format!(
            "{exited} worker(s) exited early; logs in {}",
            dir.display()
        ));
    }
    if succeeded != a.jobs as i64 {
        fail(format!(
            "{succeeded} of {} jobs succeeded (states {counts:?})",
            a.jobs
        ));
    }
    // Every succeeded job needed at least one create: N creates for N successes means none
    // was created twice.
    if creates != a.jobs as u64 {
        fail(format!(
            "the sim counted {creates} creates for {} jobs",
            a.jobs
        ));
    }
    if over > 0 {
        fail(format!("{over} TPD day(s) accepted more than {tpd} tokens"));
    }
    for (i, h) in hwm.iter().enumerate() {
        if *h >= RSS_LIMIT_MIB {
            fail(format!("worker {i} peaked at {h:.0} MiB RSS"));
        }
    }
    if let Some(e) = &cli.error {
        fail(format!("a timed CLI command failed: {e}"));
    }
    if cli.stats_max >= CLI_LIMIT_MS || cli.show_max >= CLI_LIMIT_MS {
        fail(format!(
            "stats took up to {:.0} ms, batch show up to {:.0} ms",
            cli.stats_max, cli.show_max
        ));
    }
    println!(
        "fleet --flex: checks: created once {}, all finished {}, TPD {}, RSS {}, stats/batch show {}",
        verdict(creates == a.jobs as u64),
        verdict(succeeded == a.jobs as i64),
        verdict(over == 0),
        verdict(hwm.iter().all(|h| *h < RSS_LIMIT_MIB)),
        verdict(cli.error.is_none() && cli.stats_max < CLI_LIMIT_MS && cli.show_max < CLI_LIMIT_MS),
    );
    println!("fleet --flex: {}", if ok { "PASS" } else { "FAIL" });
    drop(cluster);
    if ok {
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAIL" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_durations_keep_at_least_a_millisecond() {
        assert_eq!(scaled(Duration::from_secs(600), 0.002), "1200ms");
        assert_eq!(scaled(Duration::from_millis(100), 0.002), "1ms");
    }

    #[test]
    fn rss_reads_our_own_process() {
        let (rss, hwm) = rss_mib(std::process::id()).expect("our /proc status");
        assert!(rss > 0.0 && hwm >= rss);
    }
}
