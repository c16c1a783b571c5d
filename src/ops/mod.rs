//! Operations: what makes `seedq serve` a well-behaved daemon.
//!
//! - `notify`: systemd READY/STOPPING/RELOADING/STATUS and the watchdog.
//! - `health`: stage heartbeats, liveness and readiness checks.
//! - `admin`: the HTTP server for `/healthz`, `/readyz` and `/metrics`.
//! - `metrics` (`crate::metrics`, re-exported): metric names and recording helpers, a leaf
//!   that `ark`, the stages and `ops` all call.
//! - `reload`: the SIGHUP handler; the settings it changes are `stage::live`.
//! - `maintenance`: cron-scheduled pruning, sweeps, TPD roll-over, DB upkeep and backups;
//!   its times are parsed by `crate::schedule` (also used by `config::validate`).
//!
//! [`start`] runs in the supervisor (`service::run`) after the first reconciliation and puts
//! every long-running piece in the supervisor's `JoinSet`, so each is watched like a stage:
//! if one fails, the service stops. Only `seedq serve` starts them; `run` and `demo` are
//! batch commands and open no ports.

pub mod admin;
pub mod health;
pub mod maintenance;
pub mod notify;
pub mod reload;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stage::Ctx;

// Moved to the stage core with `Ctx`, which holds them; re-exported where they were.
pub use crate::metrics;
pub use crate::schedule;
pub use crate::stage::OpsState;
pub use crate::stage::live;

/// The supervisor's task set.
pub type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Installs the Prometheus recorder. `serve` calls this before any stage starts: counters
/// recorded before it are lost, and on a busy machine the first creates come quickly.
pub fn install_metrics() {
    if let Err(e) = metrics::install() {
        // Only possible if something else installed a recorder first; serving goes on.
        tracing::warn!(error = %format!("{e:#}"), "metrics recorder not installed");
    }
}

/// Starts the admin server, the watchdog, the SIGHUP handler and the maintenance scheduler
/// when `serve` is true. Returns the STATUS line for READY=1.
///
/// # Errors
/// The admin address cannot be bound, or a handler cannot be installed. Both are fatal at
/// start: a daemon that cannot be observed or reloaded should say so, not limp on.
pub async fn start(
    ctx: &Ctx,
    serve: bool,
    token: &CancellationToken,
    set: &mut Tasks,
) -> anyhow::Result<String> {
    if !serve {
        return Ok("running".into());
    }
    let mut status = vec!["ready".to_string()];
    if let Some(listener) = admin::bind(&ctx.cfg.admin.listen).await? {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "admin server listening (/healthz, /readyz, /metrics)");
        status.push(format!("admin on http://{addr}"));
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("admin", admin::run(c, listener, t).await) });
    }
    if let Some(every) = notify::watchdog_interval() {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("watchdog", notify::watchdog(c, every, t).await) });
    }
    let hup = reload::listen()?;
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("reload", reload::run(c, hup, t).await) });
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("maintenance", maintenance::run(c, t).await) });
    }
    Ok(status.join("; "))
}
