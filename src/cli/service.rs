//! Service commands: `serve` (until a signal) and `run` (until the queue drains).

use std::process::ExitCode;

use anyhow::Context;

use super::Ctx;
use crate::ops::reload::Reloader;
use crate::worker::{self, Mode};

/// Resolves on SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
pub(crate) async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
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
    tracing::info!(config = %ctx.source.describe(), "configuration loaded");
    let store = ctx.store()?;
    let watched = store.clone();
    let wctx = worker::Ctx::new(ctx.cfg.clone(), ctx.catalogue.clone(), store)?;
    let source = ctx.source.clone();
    let reloader = Reloader::new(Box::new(move || source.load()), ctx.cfg.clone());
    // A fresh Ctx: the cell is empty, so `set` cannot fail.
    let _ = wctx.ops.reloader.set(reloader);
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<String>();
    let stop = async move {
        tokio::select! {
            () = signal() => {}
            why = store_replaced(watched) => {
                let _ = gone_tx.send(why);
            }
        }
    };
    worker::run(wctx, mode, stop)
        .await
        .context("the seedq service stopped with an error")?;
    if let Ok(why) = gone_rx.try_recv() {
        anyhow::bail!("the seedq service stopped: {why}");
    }
    Ok(ExitCode::SUCCESS)
}
