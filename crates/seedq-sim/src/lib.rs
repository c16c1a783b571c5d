//! `seedq sim`: a faithful local Ark server for tests, benchmarks and the demo.
//!
//! It speaks the wire contract of `docs/ark-api.md` with the serde types of [`seedq_ark::wire`] and
//! judges create bodies with its own reading of Ark's rules (`rules.rs`), written apart from
//! the validator seedq runs at enqueue so that a wrong rule cannot pass both sides unseen: the
//! golden corpus judges both, and a test compares them on generated bodies. On top of the API it renders
//! real H.264 videos ([`seedq_media`]), serves them at expiring pre-signed-looking URLs, sends
//! callbacks, and injects faults. It deliberately does not persist anything: a restart forgets
//! every task, as a test server should.
//!
//! # Time
//! Wire timestamps are real wall-clock time. Simulated durations (generation, `start_delay`,
//! `execution_expires_after`, the RPM window, URL TTL, retention, callback retry pauses) are
//! multiplied by `time_scale`. Network-ish durations (callback timeout, injected latency,
//! download throttling) are real time.
//!
//! # Routes
//! - `/api/v3/contents/generations/tasks` (`POST`, `GET`) and `…/{id}` (`GET`, `DELETE`): the API.
//! - `/_sim/files/{id}/{video.mp4|last_frame.png}`: the signed file URLs (`files.rs`).
//! - `/_sim/stats`, `/_sim/reset`, `/_sim/faults`, `/_sim/tasks`: test hooks (`admin.rs`).
//!
//! # Choices where the docs are silent (docs/ark-api.md `[INF]`)
//! - Unknown task id, or a deleted or retention-expired one: 404 `ResourceNotFound`.
//! - A DELETE of a running task (Version A): 409 `InvalidAction.RunningTaskDeletion`, as observed
//!   (docs/ark-api.md §14); of a cancelled one: 400 `InvalidParameter`.
//! - The read routes' rate limits answer 429 `AccountRateLimitExceeded` (the code is unpublished).
//! - `cancelled` sends no callback (not in the documented list); the others do.
//! - `duration: -1` resolves to 5 s; `adaptive` resolves from the first image, else 16:9; both
//!   are reported resolved from the first GET.
//! - Flex and default tasks of one model share its concurrency slots; default-tier tasks start
//!   first, then higher `priority`, then oldest.
//! - `updated_at` moves forward at least one second per transition (see `state.rs`).
//! - `execution_expires_after` applies to both tiers (the docs say so); in practice only flex
//!   tasks, being slower, run into it.
//! - A video renders (on a blocking thread) from the moment its task starts running, so the
//!   encoding overlaps the simulated generation time; the task succeeds when both are over.
//!
//! Every configuration key, with its default, is in `sim.example.toml` beside this file.

mod admin;
mod api;
mod callback;
mod config;
mod error;
mod files;
mod http;
mod rules;
mod state;
#[cfg(test)]
mod tests;
mod video;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{
    DEFAULT_API_KEY, DeleteSemantics, Faults, LimitsSim, ModelSim, PerRoute, ReadLimits, Route,
    SimConfig, Timing,
};

use http::{ConnTag, KillListener};
use state::Sim;

/// How long [`SimHandle::shutdown`] lets open responses (a slow download) finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// `seedq sim` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// An accepted API key (repeatable); default "sk-sim", or the config file's `api_keys`.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Vec<String>,
    /// Multiplies every simulated duration (default 1.0; 0.01 runs 100× faster).
    #[arg(long, value_name = "F")]
    pub time_scale: Option<f64>,
    /// A TOML file with every other option (see `SimConfig`). Named apart from seedq's own
    /// global `--config`, which is a different file.
    #[arg(long = "sim-config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// A running simulator.
pub struct SimHandle {
    addr: SocketAddr,
    sim: Arc<Sim>,
    server: JoinHandle<std::io::Result<()>>,
    scheduler: JoinHandle<()>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL, `http://ADDR/api/v3` (or `public_base_url` + `/api/v3`).
    pub fn base_url(&self) -> String {
        format!("{}{}", self.sim.base_url, http::API_PREFIX)
    }

    /// `http://ADDR` (or `public_base_url`): the root of the `/_sim/…` endpoints.
    pub fn root_url(&self) -> String {
        self.sim.base_url.clone()
    }

    /// Stops accepting, lets open responses finish for a moment, then stops everything.
    pub async fn shutdown(self) {
        self.sim.cancel.cancel();
        let abort = self.server.abort_handle();
        match tokio::time::timeout(SHUTDOWN_GRACE, self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "sim: server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "sim: server task failed"),
            Err(_) => abort.abort(),
        }
        if let Err(e) = self.scheduler.await {
            tracing::warn!(error = %e, "sim: scheduler task failed");
        }
    }
}

/// Starts the simulator on an already bound listener.
///
/// # Errors
/// Invalid configuration, or the listener has no local address.
pub async fn start(cfg: SimConfig, listener: TcpListener) -> anyhow::Result<SimHandle> {
    let addr = listener.local_addr().context("sim listener address")?;
    let base_url = match &cfg.public_base_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("http://{}", reachable(addr)),
    };
    let sim = Sim::new(cfg, base_url)?;
    let scheduler = tokio::spawn(sim.clone().run_scheduler());
    let app = http::router(sim.clone()).into_make_service_with_connect_info::<ConnTag>();
    let cancel = sim.cancel.clone();
    let server = tokio::spawn(async move {
        axum::serve(KillListener(listener), app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    });
    Ok(SimHandle {
        addr,
        sim,
        server,
        scheduler,
    })
}

/// An address clients can use: a wildcard bind is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// `seedq sim`: binds `--listen`, prints `seedq sim listening on http://ADDR/api/v3`, serves
/// until SIGINT or SIGTERM.
///
/// # Errors
/// Bad flags or config, the address cannot be bound, or signals cannot be installed.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use tokio::signal::unix::{SignalKind, signal};

    let cfg = SimConfig::from_args(&args)?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let handle = start(cfg, listener).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "seedq sim listening on {}", handle.base_url()).context("writing stdout")?;
        out.flush().context("flushing stdout")?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    handle.shutdown().await;
    Ok(())
}
