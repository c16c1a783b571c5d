//! The command line: clap definitions and one function per command.
//!
//! Configuration is loaded and validated here, once, and passed down as typed structs.
//! Exit codes (ripgrep style): 0 ok, 1 not found or a failed job, 2 usage or validation error.

mod batch;
mod bench;
mod bench_chaos;
mod bench_faults;
mod bench_fleet;
mod bench_fleet_flex;
mod bench_flex;
mod bench_pipeline;
mod chain;
mod demo;
mod doctor;
mod estimate;
mod export;
mod fetch;
mod jobs;
mod keys;
mod models;
mod pause;
mod reconcile;
mod service;
mod stitch;
mod watch;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::catalogue::Catalogue;
use crate::config::{self, Config};
use crate::store::Store;

/// seedq: a durable job queue for the Seedance video-generation API.
#[derive(Debug, Parser)]
#[command(name = "seedq", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: $SEEDQ_CONFIG, /etc/seedq/config.toml, ./config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The job store: a SQLite file, or a store URL (sqlite:///…, postgres://…); overrides
    /// store.path and store.url.
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Log filter, e.g. `seedq=debug` (overrides log.level; RUST_LOG wins).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add one job, or many from a JSONL or CSV file (`--file`, `--batch`), to the queue.
    Submit(Box<jobs::SubmitArgs>),
    /// List jobs.
    Ls(jobs::LsArgs),
    /// Show one job and its history.
    Show(jobs::ShowArgs),
    /// Counts and tokens per state and model; `--cost`: billed usage against the estimates.
    Stats(estimate::StatsArgs),
    /// Cancel jobs: queued ones at once, remote ones via the worker.
    Cancel(jobs::IdsArgs),
    /// Put failed, dead, expired or cancelled jobs back in the queue.
    Retry(jobs::IdsArgs),
    /// Batches: list, show, cancel, retry.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Tokens, price and time to finish of a job file or batch, before anything is spent.
    Estimate(estimate::EstimateArgs),
    /// Chains of continuous shots: submit, show, ls.
    #[command(subcommand)]
    Chain(chain::ChainCommand),
    /// Join archived videos (keys or job ids) into one MP4, losslessly.
    Stitch(stitch::StitchArgs),
    /// Live progress of batches: bars on a terminal, plain lines elsewhere.
    Watch(watch::WatchArgs),
    /// Write a manifest of a batch's videos (CSV or JSONL).
    Export(export::ExportArgs),
    /// Copy an archived video (or `--last-frame`, `--sidecar`) out of the object store.
    Fetch(fetch::FetchArgs),
    /// Run the service until SIGTERM/SIGINT (what systemd starts).
    Serve,
    /// Run the service until nothing is left to do, then print what is left and why (exit 3
    /// when jobs were parked or failed).
    Run,
    /// Run the whole pipeline against the built-in simulator (start here).
    Demo(demo::DemoArgs),
    /// Run the local Ark simulator.
    Sim(crate::sim::SimArgs),
    /// Record a remote task as an ambiguous job's own, after checking it is unowned and
    /// matches the job's model, tier and shape.
    Adopt(reconcile::AdoptArgs),
    /// API keys of the front doors (`[api] listen`): create, ls, revoke.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Pause a model or batch: its queued jobs are not submitted (jobs at Ark carry on).
    Pause(pause::PauseArgs),
    /// Resume a paused model or batch.
    Resume(pause::PauseArgs),
    /// The workers on this database, their heartbeats, and who leads each singleton.
    Workers(jobs::JsonArg),
    /// Show the candidate remote tasks of every ambiguous job (`--dry-run`).
    Reconcile(reconcile::ReconcileArgs),
    /// Apply database migrations.
    Migrate,
    /// Check the installation: config, database, API key, object store, clock (exit 2 on a
    /// failure).
    Doctor(doctor::DoctorArgs),
    /// Show or check the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The model catalogue in force: ids per region, limits, prices, and each row's source.
    Models(models::ModelsArgs),
    /// Benchmarks (see docs/performance.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print shell completions.
    Completions(CompletionsArgs),
}

/// `seedq config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, secrets redacted.
    Show,
    /// Validate the configuration and exit 0 when it is usable.
    Check,
}

/// `seedq completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

/// Everything a command needs from the configuration.
pub(crate) struct Ctx {
    pub cfg: Config,
    pub catalogue: Catalogue,
    /// Where `cfg` came from, to load it again on SIGHUP.
    pub source: ConfigSource,
}

/// The file and flag overrides a configuration is loaded from.
#[derive(Clone, Debug)]
pub(crate) struct ConfigSource {
    pub path: Option<PathBuf>,
    /// How `path` was found, for saying which file is in use.
    pub found_by: Option<&'static str>,
    db: Option<PathBuf>,
    log: Option<String>,
    /// The demo prints its own summary; per-job log lines would bury it.
    quiet: bool,
}

impl ConfigSource {
    fn new(cli: &Cli) -> Self {
        let found = config::discover_why(cli.config.as_deref());
        Self {
            found_by: found.as_ref().map(|f| f.1),
            path: found.map(|f| f.0),
            db: cli.db.clone(),
            log: cli.log.clone(),
            quiet: matches!(cli.command, Command::Demo(_)),
        }
    }

    /// Which configuration file is in use, and how it was found.
    pub(crate) fn describe(&self) -> String {
        let found = self.path.clone().zip(self.found_by);
        config::describe_source(found.as_ref())
    }

    /// Loads and validates the configuration: file, environment, then flags.
    pub(crate) fn load(&self) -> anyhow::Result<(Config, Catalogue)> {
        let mut cfg = config::load(self.path.as_deref()).context("loading configuration")?;
        if let Some(db) = &self.db {
            // `--db` takes a file or a store URL (sqlite://, postgres://).
            match crate::store::StoreTarget::parse(&db.to_string_lossy()) {
                crate::store::StoreTarget::Sqlite(p)
                    if !db.to_string_lossy().starts_with("sqlite://") =>
                {
                    cfg.store.path = p;
                    cfg.store.url = None;
                }
                _ => cfg.store.url = Some(db.to_string_lossy().into_owned()),
            }
        }
        if let Some(l) = &self.log {
            cfg.log.level = l.clone();
        } else if self.quiet {
            cfg.log.level = "seedq=warn".into();
        }
        let catalogue = cfg.validate().context("invalid configuration")?;
        Ok((cfg, catalogue))
    }
}

impl Ctx {
    pub(crate) fn load(cli: &Cli) -> anyhow::Result<Self> {
        let source = ConfigSource::new(cli);
        let (cfg, catalogue) = source.load()?;
        Ok(Self {
            cfg,
            catalogue,
            source,
        })
    }

    pub(crate) async fn store(&self) -> anyhow::Result<Store> {
        let target = self.cfg.store.target();
        Store::open_target(&target, true)
            .await
            .with_context(|| format!("opening the job store {}", target.describe()))
    }

    /// Opens the job store only if it exists: for commands that read or change existing
    /// jobs. A mistyped `--db` must say so, not leave a new empty database behind.
    pub(crate) async fn store_existing(&self) -> anyhow::Result<Store> {
        let target = self.cfg.store.target();
        match Store::open_target(&target, false).await {
            Err(e @ crate::store::StoreError::Missing { .. }) => Err(e.into()),
            r => r.with_context(|| format!("opening the job store {}", target.describe())),
        }
    }
}

/// The exit code for an error: every error is a usage, validation or environment problem.
pub fn exit_code(_err: &anyhow::Error) -> u8 {
    2
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command reports; `main` prints it and exits 2.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completions(c) = &cli.command {
        clap_complete::generate(
            c.shell,
            &mut Cli::command(),
            "seedq",
            &mut std::io::stdout(),
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The long-running commands raise the soft descriptor limit to the hard one before any
    // socket is opened; the servers' caps are derived from the result (stage/fds.rs). Doctor
    // does the same, so it reports the caps `serve` would have.
    let nofile = matches!(
        cli.command,
        Command::Serve | Command::Run | Command::Sim(_) | Command::Doctor(_) | Command::Demo(_)
    )
    .then(crate::stage::fds::raise_nofile);
    if let Command::Doctor(a) = &cli.command {
        // Doctor reports a broken configuration as one of its checks instead of failing here.
        return doctor::run(ConfigSource::new(&cli), a);
    }
    if let Command::Sim(args) = cli.command {
        // The simulator needs none of seedq's own configuration.
        crate::telemetry::init(cli.log.as_deref().unwrap_or("seedq=info"), "text");
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        rt.block_on(crate::sim::run_cli(args))?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = Ctx::load(&cli)?;
    crate::telemetry::init(&ctx.cfg.log.level, &ctx.cfg.log.format);
    if let Some(n) = nofile {
        let budget = crate::stage::fds::Budget::for_limit(&ctx.cfg, n.soft);
        tracing::info!(
            soft = n.soft,
            hard = n.hard,
            was = n.was,
            "descriptor limit {}; {}",
            if n.soft > n.was {
                "raised to the hard limit"
            } else if n.soft >= n.hard {
                "already at the hard limit"
            } else {
                "could not be raised (the kernel refused)"
            },
            budget.describe()
        );
        if budget.starved {
            tracing::warn!(
                limit = n.soft,
                reserve = budget.reserve,
                "the descriptor limit is too low for this configuration; raise LimitNOFILE \
                 (systemd) or `ulimit -n`"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Submit(a) => jobs::submit(&ctx, *a).await,
            Command::Ls(a) => jobs::ls(&ctx, a).await,
            Command::Show(a) => jobs::show(&ctx, a).await,
            Command::Stats(a) if a.cost => estimate::stats_cost(&ctx, a.json).await,
            Command::Stats(a) => jobs::stats(&ctx, jobs::JsonArg { json: a.json }).await,
            Command::Cancel(a) => jobs::cancel(&ctx, a).await,
            Command::Retry(a) => jobs::retry(&ctx, a).await,
            Command::Batch(c) => batch::run(&ctx, c).await,
            Command::Export(a) => export::run(&ctx, a).await,
            Command::Estimate(a) => estimate::run(&ctx, a).await,
            Command::Watch(a) => watch::run(&ctx, a).await,
            Command::Chain(c) => chain::run(&ctx, c).await,
            Command::Stitch(a) => stitch::run(&ctx, a).await,
            Command::Serve => service::serve(&ctx, crate::service::Mode::Serve).await,
            Command::Run => service::serve(&ctx, crate::service::Mode::UntilDrained).await,
            Command::Demo(a) => demo::run(&ctx, a).await,
            Command::Fetch(a) => fetch::fetch(&ctx, a).await,
            Command::Sim(_) => Ok(ExitCode::SUCCESS),
            Command::Adopt(a) => reconcile::adopt(&ctx, a).await,
            Command::Keys(c) => keys::run(&ctx, c).await,
            Command::Pause(a) => pause::run(&ctx, a, true).await,
            Command::Resume(a) => pause::run(&ctx, a, false).await,
            Command::Workers(a) => workers::run(&ctx, a).await,
            Command::Reconcile(a) => reconcile::dry_run(&ctx, a).await,
            Command::Migrate => {
                let store = ctx.store().await?;
                println!(
                    "{}: schema version {}",
                    store.describe(),
                    store.schema_version().await?
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Show) => {
                // A TOML comment: the output stays a valid config file.
                println!("# configuration file: {}", ctx.source.describe());
                print!("{}", ctx.cfg.redacted_toml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Check) => {
                if !ctx.cfg.archive.url.is_empty() {
                    crate::blob::KeyTemplate::parse(&ctx.cfg.archive.key_template)
                        .context("invalid configuration: archive.key_template")?;
                }
                println!(
                    "configuration ok ({} models known)",
                    ctx.catalogue.iter().count()
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Models(a) => models::run(&ctx, &a),
            Command::Bench(b) => bench::run(&ctx, b).await,
            Command::Doctor(_) => Ok(ExitCode::SUCCESS),
            Command::Completions(_) => Ok(ExitCode::SUCCESS),
        }
    })
}
