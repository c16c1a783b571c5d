//! `seedq bench`: benchmarks of seedq's own paths, reporting the numbers in docs/performance.md.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::Ctx;
use super::jobs::{SubmitArgs, prepare_lines};
use crate::store::{Store, StoreTarget};

/// `seedq bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Enqueue N jobs from a generated JSONL file through the same path as `submit --file`.
    Enqueue(EnqueueArgs),
    /// The service against the in-process simulator: makespan, status calls, lag, overhead.
    Pipeline(super::bench_pipeline::PipelineArgs),
    /// Flex against the in-process simulator's offline pool: makespan, the poll-every-second
    /// baseline, and TPD days.
    Flex(super::bench_flex::FlexArgs),
    /// The fault matrix: 5xx, 429 bursts, dropped creates, bad JSON, truncated
    /// downloads and slow peers on both servers; checks nothing is paid twice or mis-filed.
    Faults(super::bench_faults::FaultsArgs),
    /// Seeded faults, SIGKILL/SIGSTOP and a skewed clock; checks the promises against the
    /// sim's ledger.
    Chaos(super::bench_chaos::ChaosArgs),
    /// Claims per second and claim latency with a large queue (default 1 000 000), plus
    /// `stats` and `ls`, on SQLite and PostgreSQL.
    Claims(super::bench_fleet::ClaimsArgs),
    /// End to end: 1 against N `seedq serve` processes on one database against an instant
    /// simulator, with the account limits checked from the sim's side.
    Fleet(super::bench_fleet::FleetArgs),
    /// The web dashboard's overview and job list with a large store (default 1 000 000 jobs).
    Ui(crate::ui::bench::UiBenchArgs),
    /// Creates through the Ark door (`[api]`): latency p50/p99 and creates per second.
    Api(crate::api::bench::ApiBenchArgs),
}

/// `seedq bench enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// How many jobs.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Repetitions (each into a fresh database); the best and the median are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Which backend: `sqlite` (a temp file per run) or `postgres` (a fresh database per run
    /// on a scratch cluster, `crates/seedq-pgscratch/src/lib.rs`, stopped and deleted at the end).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub store: super::bench_fleet::Backend,
}

pub(crate) async fn run(ctx: &Ctx, cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Enqueue(a) => enqueue(ctx, a).await,
        BenchCommand::Pipeline(a) => super::bench_pipeline::run(ctx, a)
            .await
            .map(|()| ExitCode::SUCCESS),
        BenchCommand::Flex(a) => super::bench_flex::run(a).await,
        BenchCommand::Faults(a) => super::bench_faults::run(ctx, a)
            .await
            .map(|()| ExitCode::SUCCESS),
        BenchCommand::Chaos(a) => super::bench_chaos::run(ctx, a).await,
        BenchCommand::Claims(a) => super::bench_fleet::run_claims(ctx, a).await,
        BenchCommand::Fleet(a) => super::bench_fleet::run_fleet(ctx, a).await,
        BenchCommand::Ui(a) => crate::ui::bench::run(&ctx.cfg, &ctx.catalogue, a)
            .await
            .map(|()| ExitCode::SUCCESS),
        BenchCommand::Api(a) => crate::api::bench::run(&ctx.cfg, &ctx.catalogue, a)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

async fn enqueue(ctx: &Ctx, a: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile_dir()?;
    let file = dir.join("jobs.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for i in 0..a.jobs {
            writeln!(
                w,
                "{{\"prompt\":\"shot {i}: a red fox runs through snow --rs 720p --dur {}\",\"model\":\"doubao-seedance-1-0-pro-250528\",\"key\":\"bench-{i}\",\"tags\":[\"bench\"]}}",
                2 + i % 11
            )?;
        }
    }
    // Held until the end: dropping it stops the server and deletes its files.
    let cluster = match a.store {
        super::bench_fleet::Backend::Sqlite => None,
        super::bench_fleet::Backend::Postgres => Some(
            tokio::task::spawn_blocking(crate::pgscratch::Cluster::start)
                .await?
                .context("starting a scratch PostgreSQL cluster")?,
        ),
    };
    let mut rates = Vec::new();
    for run in 0..a.runs.max(1) {
        let target = match &cluster {
            None => StoreTarget::Sqlite(dir.join(format!("bench-{run}.db"))),
            Some(c) => StoreTarget::Postgres {
                url: c.create_db("bench_enqueue")?,
                password: None,
            },
        };
        let store = Store::open_target(&target, true).await?;
        let start = Instant::now();
        let f = std::fs::File::open(&file)?;
        let jobs = prepare_lines(
            ctx,
            std::io::BufReader::with_capacity(1 << 20, f),
            &dir,
            &SubmitArgs::default(),
        )?;
        let parsed = start.elapsed().as_secs_f64();
        let report = store.enqueue(jobs).await?;
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            report.inserted.len() == a.jobs,
            "only {} jobs inserted",
            report.inserted.len()
        );
        let rate = a.jobs as f64 / secs;
        println!(
            "run {}: {} jobs in {:.3} s = {:.0} jobs/s (read and validate {:.3} s, store {:.3} s)",
            run + 1,
            a.jobs,
            secs,
            rate,
            parsed,
            secs - parsed
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "enqueue: best {:.0} jobs/s, median {:.0} jobs/s (target >= 50000)",
        rates[rates.len() - 1],
        rates[rates.len() / 2]
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("seedq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
