//! Service commands: `serve` (until a signal) and `run` (until the queue drains).

use std::process::ExitCode;

use anyhow::Context;

use super::Ctx;
use crate::ops::reload::Reloader;
use crate::service::Mode;
use crate::stage::Ctx as StageCtx;
use crate::store::Timestamp;

/// Resolves on SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled:
/// the service spawns its dispatchers before it starts waiting for a stop, and a SIGTERM
/// in that gap would otherwise take the default action and kill it mid-submit.
pub(crate) fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            // Without signal handlers we can still be stopped with Ctrl-C's default action.
            _ => std::future::pending().await,
        }
    }
}

/// How often the service checks that its database file is still the one it opened.
const IDENTITY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves, with the reason, once the database file at the store's path is deleted or
/// replaced: from then on every write would go to an unlinked file and vanish at exit.
async fn store_replaced(store: crate::store::Store) -> String {
    loop {
        tokio::time::sleep(IDENTITY_EVERY).await;
        if let Err(e) = store.check_identity() {
            tracing::error!(error = %e, "the database file was deleted or replaced; stopping");
            return e.to_string();
        }
    }
}

pub(crate) async fn serve(ctx: &Ctx, mode: Mode) -> anyhow::Result<ExitCode> {
    // First of all, so that a stop during start-up is a clean one.
    let stopped = signal();
    tracing::info!(config = %ctx.source.describe(), "configuration loaded");
    if let Some(problem) = super::doctor::fleet_archive_problem(&ctx.cfg) {
        tracing::warn!("{problem}; archive to s3:// or gs:// when several workers share the store");
    }
    let store = ctx.store().await?;
    let watched = store.clone();
    let wctx = StageCtx::new(ctx.cfg.clone(), ctx.catalogue.clone(), store.clone())?;
    let source = ctx.source.clone();
    let since = crate::store::now_ms();
    let reloader = Reloader::new(Box::new(move || source.load()), ctx.cfg.clone());
    // A fresh Ctx: the cell is empty, so `set` cannot fail.
    let _ = wctx.ops.reloader.set(reloader);
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<String>();
    let stop = async move {
        tokio::select! {
            () = stopped => {}
            why = store_replaced(watched) => {
                let _ = gone_tx.send(why);
            }
        }
    };
    crate::service::run(wctx, mode, stop)
        .await
        .context("the seedq service stopped with an error")?;
    if let Ok(why) = gone_rx.try_recv() {
        anyhow::bail!("the seedq service stopped: {why}");
    }
    if mode == Mode::Serve {
        return Ok(ExitCode::SUCCESS);
    }
    summary(&store, since).await
}

/// Exit code of `seedq run` when jobs were left parked or failed.
pub const EXIT_LEFT_OVER: u8 = 3;

/// What `seedq run` leaves behind, and why, on stderr; exit 3 when any job is parked, or
/// failed during this run (a drained queue is not a clean run when jobs need an operator).
async fn summary(store: &crate::store::Store, since: i64) -> anyhow::Result<ExitCode> {
    let left = store.leftovers(Timestamp::from_ms(since)).await?;
    if left.is_empty() {
        eprintln!("seedq run: done; every job finished");
        return Ok(ExitCode::SUCCESS);
    }
    let mut by_kind: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (id, state, code, msg) in &left {
        let kind = if code.as_deref() == Some(crate::worker::reconcile::PARKED) {
            "parked".to_string()
        } else {
            state.clone()
        };
        let why = msg.clone().or_else(|| code.clone()).unwrap_or_default();
        by_kind
            .entry(kind)
            .or_default()
            .push(format!("{id}: {why}"));
    }
    eprintln!("seedq run: done; {} job(s) need attention:", left.len());
    for (kind, lines) in &by_kind {
        eprintln!("  {kind}: {}", lines.len());
        for l in lines.iter().take(10) {
            eprintln!("    {l}");
        }
        if lines.len() > 10 {
            eprintln!("    … and {} more (seedq ls)", lines.len() - 10);
        }
    }
    eprintln!(
        "  see `seedq show JOB`; parked jobs: `seedq reconcile --dry-run`, `seedq adopt`, `seedq retry` or `seedq cancel`"
    );
    Ok(ExitCode::from(EXIT_LEFT_OVER))
}
