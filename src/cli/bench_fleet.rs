//! `seedq bench claims` and `seedq bench fleet`: the fleet benchmarks (a fleet of workers
//! on PostgreSQL against SQLite).
//!
//! - `claims` fills a fresh store per backend with a large queue (1 000 000 jobs by default)
//!   through [`Store::enqueue`], then runs W concurrent claimers, each with its own `Store`
//!   handle (its own connection, as separate worker processes have), calling
//!   [`Store::claim_for_submit_tier`] in a loop. It reports jobs claimed per second, the
//!   per-call latency (p50/p99/max and a histogram; the target is p99 under 20 ms with
//!   1 000 000 queued), checks that no job was claimed twice, and times the store calls behind
//!   `seedq stats` and `seedq ls` on that queue (target: under a second).
//! - `fleet` runs W `seedq serve` processes (this binary) on one database against an
//!   in-process instant simulator with high limits, so the workers are the bottleneck, and
//!   reports jobs/s from the first create to the last job succeeded, the sim's observed
//!   concurrency and creates per minute against the configured limits, who did the work, and
//!   the CPU seconds each part (workers, PostgreSQL, simulator) spent: where the time goes.
//!
//! PostgreSQL comes from `--store-url` (`claims` only) or a scratch cluster
//! ([`crate::pgscratch`]), which is stopped and deleted when the bench ends.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use secrecy::SecretString;

use super::Ctx;
use super::jobs::new_job;
use crate::job::{JobId, JobState};
use crate::pgscratch::Cluster;
use crate::request::{self, JobSpec};
use crate::store::{ListFilter, NewJob, ResolutionScope, Store, StoreTarget, Timestamp};
use crate::tier::Tier;

const MODEL: &str = "doubao-seedance-1-0-pro-250528";
const KEY: &str = "sk-bench-fleet";

/// Jobs per `Store::enqueue` call while filling.
const FILL_BATCH: usize = 10_000;

/// `seedq ls`'s default `--limit` (cli/jobs.rs `LsArgs`).
const LS_LIMIT: u32 = 50;

/// The sim's RPM window at `time_scale = 1` (crates/seedq-sim/src/state.rs `RPM_WINDOW`).
const RPM_WINDOW_MS: i64 = 60_000;

/// Which stores `seedq bench claims` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backends {
    Sqlite,
    Postgres,
    Both,
}

/// One backend, for `seedq bench fleet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `seedq bench claims`.
#[derive(Debug, Args)]
pub struct ClaimsArgs {
    /// Which backends.
    #[arg(long, value_enum, default_value = "both")]
    pub store: Backends,
    /// An empty PostgreSQL database to use (`postgres://user@host:port/db`) instead of a
    /// scratch cluster; it must hold no jobs.
    #[arg(long)]
    pub store_url: Option<String>,
    /// Jobs queued before the claims start.
    #[arg(long, default_value_t = 1_000_000)]
    pub queued: usize,
    /// Claim calls per run (shared among the claimers).
    #[arg(long, default_value_t = 2000)]
    pub claims: usize,
    /// Concurrent claimers, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,3",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: Vec<u32>,
    /// Jobs per claim call (the dispatcher's batch).
    #[arg(long, default_value_t = 10)]
    pub batch: u32,
    /// Timed repetitions of `stats` and `ls`.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// A claim run stops after this many seconds even when calls remain (a slow claim path
    /// with a million jobs queued must not make the bench run for hours).
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Run the store's upkeep (what maintenance's `db_upkeep` runs: `PRAGMA optimize` on
    /// SQLite) after filling and before the claims.
    #[arg(long)]
    pub upkeep: bool,
    /// Jobs claimed into `submitting` (holding a remote slot) after the fill and before the
    /// timed runs, besides `--queued`: the submit claim must cost the same with 100 or
    /// 100 000 tasks in flight. Their leases run out at once, so each run also times the due
    /// claim (`Store::claim_due`, what reconciliation and the poller call) over them.
    #[arg(long, default_value_t = 0)]
    pub in_flight: usize,
}

/// `seedq bench fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Jobs per run.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// `seedq serve` processes, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,3",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: Vec<u32>,
    /// The shared store: a scratch PostgreSQL cluster, or one SQLite file.
    #[arg(long, value_enum, default_value = "postgres")]
    pub store: Backend,
    /// The model's concurrency limit (the sim's and every worker's); high, so that the
    /// workers and not the account are the bottleneck.
    #[arg(long, default_value_t = 1000)]
    pub concurrency: u32,
    /// The model's creates per minute (the sim's and every worker's).
    #[arg(long, default_value_t = 100_000)]
    pub rpm: u32,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Flex jobs as one batch against the sim's offline pool, with TPD days, RSS and
    /// `stats` / `batch show` checks (one run, the last `--workers` value; see
    /// docs/performance-fleet.md).
    #[arg(long)]
    pub flex: bool,
    /// `--flex`: the sim's offline pool width.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool: u32,
    /// `--flex`: the sim's time factor (the workers' Ark-clock durations are scaled alike).
    #[arg(long, default_value_t = 0.002, value_parser = super::bench_fleet_flex::time_scale)]
    pub time_scale: f64,
    /// `--flex`: the length of a TPD day in real seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub day_secs: u64,
    /// `--flex`: the TPD budget in jobs per day (default: half of `--jobs`, plus one).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub tpd_jobs: Option<u64>,
}

pub(crate) async fn run_claims(_ctx: &Ctx, a: ClaimsArgs) -> anyhow::Result<ExitCode> {
    let dir = bench_dir("claims")?;
    println!(
        "claims: {} queued, {} in flight, {} claim calls of up to {} jobs per run, claimers {:?}, {} CPUs",
        a.queued,
        a.in_flight,
        a.claims,
        a.batch,
        a.workers,
        cpus()
    );
    let mut ok = true;
    if matches!(a.store, Backends::Sqlite | Backends::Both) {
        let path = dir.join("claims.db");
        let target = StoreTarget::Sqlite(path);
        ok &= claims_on("sqlite", &target, &a).await?;
    }
    if matches!(a.store, Backends::Postgres | Backends::Both) {
        // Held until the end: dropping it stops the server and deletes its files.
        let mut _cluster = None;
        let url = match &a.store_url {
            Some(u) => u.clone(),
            None => {
                let (c, url) = scratch_db("bench_claims").await?;
                _cluster = Some(c);
                url
            }
        };
        let target = StoreTarget::Postgres {
            url,
            password: std::env::var("PGPASSWORD").ok().map(SecretString::from),
        };
        ok &= claims_on("postgres", &target, &a).await?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fill, claim runs, stats and ls on one backend; false when a check failed.
async fn claims_on(name: &str, target: &StoreTarget, a: &ClaimsArgs) -> anyhow::Result<bool> {
    let store = Store::open_target(target, true)
        .await
        .with_context(|| format!("opening {}", target.describe()))?;
    let existing: i64 = store.stats().await?.iter().map(|r| r.jobs).sum();
    anyhow::ensure!(
        existing == 0,
        "{name}: the store {} already holds {existing} jobs; the bench needs an empty one",
        target.describe()
    );

    let started = Instant::now();
    let mut done = 0;
    let total = a.queued + a.in_flight;
    while done < total {
        let n = FILL_BATCH.min(total - done);
        let batch: Vec<NewJob> = (done..done + n).map(bench_job).collect();
        let report = store.enqueue(batch).await?;
        anyhow::ensure!(
            report.inserted.len() == n,
            "{name}: enqueue inserted {} of {n}",
            report.inserted.len()
        );
        done += n;
        if done % 250_000 == 0 && done < total {
            println!(
                "{name}: {done} enqueued, {:.0} jobs/s so far",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let fill = started.elapsed().as_secs_f64();
    println!(
        "{name}: enqueue {total} jobs in batches of {FILL_BATCH}: {fill:.1} s = {:.0} jobs/s",
        total as f64 / fill
    );
    if a.in_flight > 0 {
        let t = Instant::now();
        let mut claimed = 0;
        while claimed < a.in_flight {
            let want = u32::try_from((a.in_flight - claimed).min(5000)).unwrap_or(5000);
            // A lease of 1 ms: these are due at once for the due-claim runs below.
            let jobs = store
                .claim_for_submit_tier(
                    MODEL,
                    Tier::Default,
                    u32::MAX / 2,
                    ResolutionScope::All,
                    want,
                    "bench-in-flight",
                    std::time::Duration::from_millis(1),
                )
                .await?;
            anyhow::ensure!(!jobs.is_empty(), "{name}: nothing left to put in flight");
            claimed += jobs.len();
        }
        println!(
            "{name}: {claimed} jobs put in flight in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

    if a.upkeep {
        let t = Instant::now();
        store.upkeep().await?;
        println!(
            "{name}: upkeep (maintenance's db_upkeep) took {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }

    let mut ok = true;
    let budget = Duration::from_secs(a.max_seconds);
    for w in a.workers.iter().map(|w| *w as usize) {
        let in_flight = store.in_flight_tier(MODEL, Tier::Default).await?;
        let r = claim_run(target, w, a.claims, a.batch, budget, false).await?;
        let mut lat = r.latencies_ms.clone();
        println!(
            "{name}: W={w}: {} jobs in {} calls in {:.2} s = {:.0} jobs/s ({:.0} calls/s, {} empty); \
             latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 20 ms); \
             {} queued, {in_flight} in flight at the start",
            r.jobs,
            lat.len(),
            r.wall.as_secs_f64(),
            r.jobs as f64 / r.wall.as_secs_f64(),
            lat.len() as f64 / r.wall.as_secs_f64(),
            r.empty,
            percentile(&mut lat, 0.50),
            percentile(&mut lat, 0.99),
            percentile(&mut lat, 1.0),
            total as i64 - in_flight,
        );
        println!("{name}: W={w}: histogram {}", histogram(&r.latencies_ms));
        ok &= r.check(name, w, a);
        if a.in_flight > 0 {
            let r = claim_run(target, w, a.claims, a.batch, budget, true).await?;
            let mut lat = r.latencies_ms.clone();
            println!(
                "{name}: W={w}: due claims: {} jobs in {} calls in {:.2} s = {:.0} jobs/s; \
                 latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} in flight",
                r.jobs,
                lat.len(),
                r.wall.as_secs_f64(),
                r.jobs as f64 / r.wall.as_secs_f64(),
                percentile(&mut lat, 0.50),
                percentile(&mut lat, 0.99),
                percentile(&mut lat, 1.0),
                store.in_flight_tier(MODEL, Tier::Default).await?,
            );
            ok &= r.check(name, w, a);
        }
    }
    // The counters every claim read must still equal a recount of the jobs.
    let t = Instant::now();
    let drift = store.check_counters(false).await?;
    println!(
        "{name}: claim counters against a full recount: {} ({:.0} ms)",
        if drift.is_empty() {
            "equal".to_string()
        } else {
            format!("FAIL: {drift:?}")
        },
        t.elapsed().as_secs_f64() * 1000.0
    );
    ok &= drift.is_empty();

    let mut stats_ms = Vec::new();
    let mut ls_ms = Vec::new();
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        // What `seedq stats` reads (cli/jobs.rs `stats`).
        let rows = store.stats().await?;
        store.archive_stats().await?;
        stats_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let counted: i64 = rows.iter().map(|r| r.jobs).sum();
        anyhow::ensure!(
            counted == (a.queued + a.in_flight) as i64,
            "{name}: stats counted {counted} jobs, not {}",
            a.queued + a.in_flight
        );
        let t = Instant::now();
        // What `seedq ls` reads with its default limit.
        let listed = store
            .list_lean(ListFilter {
                limit: Some(LS_LIMIT),
                ..Default::default()
            })
            .await?;
        ls_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            listed.len() == (LS_LIMIT as usize).min(a.queued),
            "{name}: ls listed {} jobs",
            listed.len()
        );
    }
    for (what, mut ms) in [("stats", stats_ms), ("ls", ls_ms)] {
        let first = ms[0];
        println!(
            "{name}: {what} with {total} jobs: first {first:.1} ms, best {:.1} ms, median {:.1} ms (target < 1000 ms)",
            percentile(&mut ms, 0.0),
            percentile(&mut ms, 0.5)
        );
    }
    Ok(ok)
}

/// The `i`-th queued job of the claims bench: one model, the default tier, a realistic body.
fn bench_job(i: usize) -> NewJob {
    let prompt = format!("shot {i}: a red fox runs through snow at dusk");
    NewJob {
        id: JobId::generate(),
        model: MODEL.to_string(),
        flex: false,
        priority: 0,
        request_json: serde_json::json!({
            "model": MODEL,
            "content": [{"type": "text", "text": prompt}],
            "resolution": "720p", "duration": 5
        })
        .to_string(),
        key: Some(format!("claims-{i}")),
        tags: vec!["bench".into()],
        batch: Some(format!("batch-{:02}", i % 20)),
        shape: Some("720p/5s".into()),
        est_tokens: Some(108_900),
        expires_after: None,
        seed: None,
    }
}

struct ClaimRun {
    wall: Duration,
    jobs: usize,
    empty: usize,
    duplicates: usize,
    /// Of the calls that returned (failed ones are counted in `errors`).
    latencies_ms: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
    /// The time budget ran out before every call was made.
    cut_short: bool,
}

impl ClaimRun {
    /// Prints what went wrong in the run; false when something did.
    fn check(&self, name: &str, w: usize, a: &ClaimsArgs) -> bool {
        let r = self;
        let mut ok = true;
        if r.cut_short {
            println!(
                "{name}: W={w}: stopped after --max-seconds {} with {} of {} calls made",
                a.max_seconds,
                r.latencies_ms.len() + r.errors,
                a.claims
            );
        }
        if r.errors > 0 {
            println!(
                "{name}: W={w}: FAIL: {} claim calls failed, e.g. {}",
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            );
            ok = false;
        }
        if r.duplicates > 0 {
            println!(
                "{name}: W={w}: FAIL: {} jobs were claimed twice",
                r.duplicates
            );
            ok = false;
        }
        ok
    }
}

/// What one claimer did.
#[derive(Default)]
struct Claimer {
    latencies_ms: Vec<f64>,
    ids: Vec<JobId>,
    empty: usize,
    errors: usize,
    first_error: Option<String>,
    cut_short: bool,
}

/// `claims` calls shared by `w` claimers, each on a handle of its own, within `budget`.
/// A failed call (e.g. SQLite's busy timeout) is counted and the claimer goes on, so one
/// error does not hide the rest of the run's numbers.
async fn claim_run(
    target: &StoreTarget,
    w: usize,
    claims: usize,
    batch: u32,
    budget: Duration,
    due: bool,
) -> anyhow::Result<ClaimRun> {
    let mut handles = Vec::with_capacity(w);
    for _ in 0..w {
        handles.push(Store::open_target(target, false).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(w);
    for (i, store) in handles.into_iter().enumerate() {
        let calls = claims / w + usize::from(i < claims % w);
        let owner = format!("bench-claimer-{i}");
        tasks.push(tokio::spawn(async move {
            let mut c = Claimer::default();
            for _ in 0..calls {
                if started.elapsed() > budget {
                    c.cut_short = true;
                    break;
                }
                let t = Instant::now();
                let claimed = if due {
                    // What reconciliation claims: submits whose lease ran out.
                    store
                        .claim_due(
                            JobState::Submitting,
                            &owner,
                            std::time::Duration::from_millis(600_000),
                            batch,
                        )
                        .await
                } else {
                    store
                        .claim_for_submit_tier(
                            MODEL,
                            Tier::Default,
                            u32::MAX / 2,
                            ResolutionScope::All,
                            batch,
                            &owner,
                            std::time::Duration::from_millis(600_000),
                        )
                        .await
                };
                match claimed {
                    Ok(jobs) => {
                        c.latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                        c.empty += usize::from(jobs.is_empty());
                        c.ids.extend(jobs.into_iter().map(|j| j.id));
                    }
                    Err(e) => {
                        c.errors += 1;
                        c.first_error.get_or_insert_with(|| {
                            format!("{e:#} after {:.1} s", t.elapsed().as_secs_f64())
                        });
                    }
                }
            }
            c
        }));
    }
    let mut run = ClaimRun {
        wall: Duration::ZERO,
        jobs: 0,
        empty: 0,
        duplicates: 0,
        latencies_ms: Vec::new(),
        errors: 0,
        first_error: None,
        cut_short: false,
    };
    let mut seen = HashSet::new();
    for t in tasks {
        let c = t.await.context("a claimer panicked")?;
        run.latencies_ms.extend(c.latencies_ms);
        run.empty += c.empty;
        run.errors += c.errors;
        run.cut_short |= c.cut_short;
        if run.first_error.is_none() {
            run.first_error = c.first_error;
        }
        run.jobs += c.ids.len();
        for id in c.ids {
            if !seen.insert(id) {
                run.duplicates += 1;
            }
        }
    }
    run.wall = started.elapsed();
    Ok(run)
}

/// Kills the child on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn run_fleet(_ctx: &Ctx, a: FleetArgs) -> anyhow::Result<ExitCode> {
    if a.flex {
        return super::bench_fleet_flex::run(&a).await;
    }
    let dir = bench_dir("fleet")?;
    let cluster = match a.store {
        Backend::Postgres => Some(
            tokio::task::spawn_blocking(Cluster::start)
                .await?
                .context("starting a scratch PostgreSQL cluster")?,
        ),
        Backend::Sqlite => None,
    };
    let cluster = cluster.map(std::sync::Arc::new);
    println!(
        "fleet: {} jobs per run, {:?} `seedq serve` processes on one {} database, instant sim, \
         limits concurrency {} and {} creates/min, {} CPUs",
        a.jobs,
        a.workers,
        match a.store {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        },
        a.concurrency,
        a.rpm,
        cpus()
    );
    let mut ok = true;
    let mut rates = Vec::new();
    for w in a.workers.iter().map(|w| *w as usize) {
        let store_line = match &cluster {
            Some(c) => {
                let c = c.clone();
                let url = tokio::task::spawn_blocking(move || c.create_db(&format!("fleet_w{w}")))
                    .await??;
                format!("url = {url:?}")
            }
            None => format!("path = {:?}", dir.join(format!("fleet-w{w}.db")).display()),
        };
        let r = fleet_run(&a, w, &dir, &store_line, cluster.as_deref()).await?;
        ok &= r.ok;
        rates.push((w, r.rate));
    }
    if let (Some((w1, r1)), Some((wn, rn))) = (rates.first(), rates.last())
        && w1 != wn
    {
        println!(
            "fleet: {wn} workers = {:.2} × {w1} worker's throughput (issue target for 3 vs 1: ≥ 2×), on {} CPUs",
            rn / r1,
            cpus()
        );
    }
    println!("fleet: {}", if ok { "PASS" } else { "FAIL" });
    drop(cluster);
    std::fs::remove_dir_all(&dir).ok();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct FleetResult {
    ok: bool,
    rate: f64,
}

/// One run: a fresh sim and database, `w` workers, `a.jobs` jobs.
async fn fleet_run(
    a: &FleetArgs,
    w: usize,
    dir: &Path,
    store_line: &str,
    cluster: Option<&Cluster>,
) -> anyhow::Result<FleetResult> {
    let sim_cfg: crate::sim::SimConfig = toml::from_str(&format!(
        "api_keys = [\"{KEY}\"]\ntime_scale = 1.0\nvideo_downscale = 64\nrender_concurrency = 2\n\
         reuse_videos = true\nmax_queued = 0\n\
         [read_limits]\nlist_qps = 0\nget_qps = 0\ndelete_qps = 0\n\
         [generation]\nbase = \"1ms\"\nper_video_second = \"0ms\"\n\
         [models.\"{MODEL}\"]\nconcurrency = {}\nrpm = {}\n",
        a.concurrency, a.rpm
    ))?;
    let sim =
        crate::sim::start(sim_cfg, tokio::net::TcpListener::bind("127.0.0.1:0").await?).await?;
    let base = sim.base_url();
    let root = base.trim_end_matches("/api/v3").to_string();

    // Every worker gets its own file (as on its own host), all naming the same database.
    let config_text = format!(
        "[store]\n{store_line}\n\n[archive]\nurl = \"\"\n\n\
         [ark]\nbase_url = {base:?}\nlist_page_size = 100\n\
         list_qps = 1000000.0\nget_qps = 1000000.0\ndelete_qps = 1000000.0\n\n\
         [dispatch]\nworkers = 16\nidle_interval = \"50ms\"\n\n\
         [poll]\nfirst_poll_after = \"5ms\"\nmin_interval = \"5ms\"\nmax_interval = \"50ms\"\n\n\
         [admin]\nlisten = \"\"\n\n\
         [models.\"{MODEL}\"]\nlimits = {{ concurrency = {c}, rpm = {r} }}\n",
        c = a.concurrency,
        r = a.rpm
    );
    let mut configs = Vec::new();
    for i in 0..w {
        let p = dir.join(format!("w{w}-{i}.toml"));
        std::fs::write(&p, &config_text)?;
        configs.push(p);
    }
    let cfg: crate::config::Config = toml::from_str(&config_text)?;
    let store = Store::open_target(&cfg.store.target(), true).await?;
    let mut models = std::collections::BTreeMap::new();
    models.insert(
        MODEL.to_string(),
        serde_json::json!({"limits": {"concurrency": a.concurrency, "rpm": a.rpm}}),
    );
    let catalogue = crate::catalogue::Catalogue::with_overrides(&models)?;
    let mut batch = Vec::with_capacity(a.jobs);
    for i in 0..a.jobs {
        let spec = JobSpec {
            model: Some(MODEL.into()),
            prompt: Some(format!("fleet shot {i}")),
            resolution: Some("480p".into()),
            // The shortest clip: the bench measures seedq, not the sim's encoder.
            frames: Some(29),
            ..Default::default()
        };
        batch.push(new_job(request::prepare(spec, &catalogue, dir)?)?);
    }
    store.enqueue(batch).await?;

    let exe = std::env::current_exe().context("locating the seedq binary")?;
    let pg_before = cluster.and_then(|c| pg_cpu(c.dir()));
    let me_before = cpu_secs(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let mut procs = Vec::new();
    for (i, cfg_path) in configs.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("w{w}-{i}.log")))?;
        let child = Command::new(&exe)
            .arg("--config")
            .arg(cfg_path)
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

    let deadline = started + Duration::from_secs(a.timeout);
    let counts = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let counts = store.state_counts().await?;
        let terminal: i64 = counts
            .iter()
            // With archiving off, `succeeded` is where a good job ends.
            .filter(|(s, _)| s.is_terminal() || **s == JobState::Succeeded)
            .map(|(_, n)| n)
            .sum();
        let exited = procs
            .iter_mut()
            .filter_map(|p| p.0.try_wait().ok().flatten())
            .count();
        if terminal >= a.jobs as i64 || exited > 0 || Instant::now() > deadline {
            break counts;
        }
    };
    // Read the workers' CPU time while they still exist.
    let workers_cpu: f64 = procs.iter().filter_map(|p| cpu_secs(p.0.id())).sum();
    let me_cpu = cpu_secs(std::process::id()).unwrap_or(0.0) - me_before;
    let pg_used = match (cluster.and_then(|c| pg_cpu(c.dir())), pg_before) {
        (Some(after), Some(before)) => Some(after - before),
        _ => None,
    };
    let wall = started.elapsed();
    drop(procs);

    let client = reqwest::Client::new();
    let stats: serde_json::Value = client
        .get(format!("{root}/_sim/stats"))
        .send()
        .await?
        .json()
        .await?;
    let tasks: Vec<serde_json::Value> = client
        .get(format!("{root}/_sim/tasks"))
        .send()
        .await?
        .json()
        .await?;
    sim.shutdown().await;

    let jobs = store
        .list_lean(ListFilter {
            limit: Some(u32::try_from(a.jobs).unwrap_or(u32::MAX)),
            ..Default::default()
        })
        .await?;
    let succeeded: Vec<_> = jobs
        .iter()
        .filter(|j| j.state == JobState::Succeeded)
        .collect();
    let mut created: Vec<i64> = tasks
        .iter()
        .filter(|t| t["model"] == MODEL)
        .filter_map(|t| t["created_ms"].as_i64())
        .collect();
    created.sort_unstable();
    let first_create = created.first().copied().unwrap_or(0);
    let last_done = succeeded
        .iter()
        .filter_map(|j| j.finished_at.map(Timestamp::ms))
        .max()
        .unwrap_or(first_create);
    let span_s = ((last_done - first_create) as f64 / 1000.0).max(0.001);
    let rate = succeeded.len() as f64 / span_s;
    let max_per_window = max_in_window(&created, RPM_WINDOW_MS);
    let max_conc = stats["max_concurrency_by_model"][MODEL]
        .as_u64()
        .unwrap_or(0);
    let creates = stats["creates_total"].as_u64().unwrap_or(0);
    let limited = stats["rate_limited_total"].as_u64().unwrap_or(0);

    // Where a job's time goes: claim → create answered, and create → success recorded.
    let submit_ms: Vec<f64> = succeeded
        .iter()
        .filter_map(|j| Some(j.submitted_at?.since(j.submit_started_at?).as_secs_f64() * 1000.0))
        .collect();
    let record_ms: Vec<f64> = succeeded
        .iter()
        .filter_map(|j| Some(j.finished_at?.since(j.submitted_at?).as_secs_f64() * 1000.0))
        .collect();
    let mut by_owner: HashMap<String, usize> = HashMap::new();
    for j in &succeeded {
        *by_owner
            .entry(j.lease_owner.clone().unwrap_or_else(|| "(none)".into()))
            .or_default() += 1;
    }
    let mut owners: Vec<usize> = by_owner.values().copied().collect();
    owners.sort_unstable_by(|a, b| b.cmp(a));

    println!(
        "fleet: W={w}: {} of {} succeeded; first create → last success {span_s:.2} s = {rate:.0} jobs/s \
         (wall with start-up {:.2} s)",
        succeeded.len(),
        a.jobs,
        wall.as_secs_f64()
    );
    println!(
        "fleet: W={w}: sim creates {creates} (jobs {}), 429s {limited}, max concurrency {max_conc} \
         (limit {}), max creates in any 60 s {max_per_window} (limit {})",
        a.jobs, a.concurrency, a.rpm
    );
    println!(
        "fleet: W={w}: per job: claim → create answered mean {:.1} ms, create → success recorded mean {:.1} ms \
         (so {:.0} in flight on average, limit {}); succeeded per worker {owners:?}",
        mean(&submit_ms),
        mean(&record_ms),
        // Little's law: throughput × time in flight.
        rate * (mean(&submit_ms) + mean(&record_ms)) / 1000.0,
        a.concurrency
    );
    let cpu_total = workers_cpu + me_cpu + pg_used.unwrap_or(0.0);
    println!(
        "fleet: W={w}: CPU seconds: workers {workers_cpu:.1}, {} sim + bench {me_cpu:.1}; \
         {cpu_total:.1} CPU-s in {:.1} s wall = {:.0} % of {} CPUs",
        match pg_used {
            Some(p) => format!("PostgreSQL {p:.1},"),
            None => String::new(),
        },
        wall.as_secs_f64(),
        cpu_total / wall.as_secs_f64() / cpus() as f64 * 100.0,
        cpus()
    );
    let mut ok = true;
    let mut fail = |why: String| {
        println!("fleet: W={w}: FAIL: {why}");
        ok = false;
    };
    if succeeded.len() != a.jobs {
        fail(format!(
            "{} of {} jobs succeeded (states {counts:?}); logs in {}",
            succeeded.len(),
            a.jobs,
            dir.display()
        ));
    }
    if creates != a.jobs as u64 {
        fail(format!(
            "the sim counted {creates} creates for {} jobs",
            a.jobs
        ));
    }
    if max_conc > u64::from(a.concurrency) {
        fail(format!(
            "max concurrency {max_conc} over the limit {}",
            a.concurrency
        ));
    }
    if max_per_window > a.rpm as usize {
        fail(format!(
            "{max_per_window} creates in 60 s, over the limit {}",
            a.rpm
        ));
    }
    Ok(FleetResult { ok, rate })
}

/// A fresh database on a new scratch cluster (blocking work, off the runtime's threads).
async fn scratch_db(label: &'static str) -> anyhow::Result<(Cluster, String)> {
    tokio::task::spawn_blocking(move || {
        let c = Cluster::start().context("starting a scratch PostgreSQL cluster")?;
        let url = c.create_db(label)?;
        Ok::<_, anyhow::Error>((c, url))
    })
    .await?
}

pub(crate) fn bench_dir(what: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("seedq-bench-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most creates within any `window_ms` (sorted input), as the sim's sliding RPM window
/// counts them.
fn max_in_window(sorted_ms: &[i64], window_ms: i64) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted_ms.len() {
        while sorted_ms[hi] - sorted_ms[lo] >= window_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Clock ticks per second for `/proc/<pid>/stat` (USER_HZ: 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Fields of `/proc/<pid>/stat` after the command: (ppid, utime + stime, cutime + cstime).
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses; the fields start after the last ')'.
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split(' ').collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((u32::try_from(n(1)?).ok()?, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU seconds a live process has used.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    proc_stat(pid).map(|(_, own, _)| own as f64 / USER_HZ)
}

/// CPU seconds of a scratch cluster's server so far: the postmaster, its live backends, and
/// the backends that already exited (the postmaster's reaped children).
pub(crate) fn pg_cpu(cluster_dir: &Path) -> Option<f64> {
    let pid_file = std::fs::read_to_string(cluster_dir.join("data/postmaster.pid")).ok()?;
    let pm: u32 = pid_file.lines().next()?.trim().parse().ok()?;
    let (_, own, reaped) = proc_stat(pm)?;
    let mut ticks = own + reaped;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
            && let Some((ppid, own, _)) = proc_stat(pid)
            && ppid == pm
        {
            ticks += own;
        }
    }
    Some(ticks as f64 / USER_HZ)
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

/// Counts per latency bucket: `≤1 ms: 812, ≤2 ms: 1100, …`.
fn histogram(ms: &[f64]) -> String {
    const EDGES: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0];
    let mut counts = [0usize; EDGES.len() + 1];
    for &v in ms {
        let i = EDGES.iter().position(|e| v <= *e).unwrap_or(EDGES.len());
        counts[i] += 1;
    }
    let mut out = Vec::new();
    for (i, n) in counts.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        out.push(match EDGES.get(i) {
            Some(e) => format!("≤{e} ms: {n}"),
            None => format!(">1000 ms: {n}"),
        });
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_the_densest_minute() {
        let t = [0, 10, 59_999, 60_000, 60_001, 200_000];
        // 10, 59 999, 60 000 and 60 001 lie within one 60 s span; 0 drops out at 60 000.
        assert_eq!(max_in_window(&t, 60_000), 4);
        assert_eq!(max_in_window(&[], 60_000), 0);
        assert_eq!(max_in_window(&[5], 60_000), 1);
    }

    #[test]
    fn histogram_buckets_by_upper_edge() {
        let h = histogram(&[0.2, 0.9, 1.0, 15.0, 2000.0]);
        assert_eq!(h, "≤0.5 ms: 1, ≤1 ms: 2, ≤20 ms: 1, >1000 ms: 1");
    }

    #[test]
    fn proc_stat_reads_our_own_process() {
        let (ppid, _, _) = proc_stat(std::process::id()).expect("our /proc stat");
        assert!(ppid > 0);
    }
}
