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

pub(crate) async fn serve(ctx: &Ctx, mode: Mode) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let wctx = worker::Ctx::new(ctx.cfg.clone(), ctx.catalogue.clone(), store)?;
    let source = ctx.source.clone();
    let reloader = Reloader::new(Box::new(move || source.load()), ctx.cfg.clone());
    // A fresh Ctx: the cell is empty, so `set` cannot fail.
    let _ = wctx.ops.reloader.set(reloader);
    worker::run(wctx, mode, signal())
        .await
        .context("the seedq service stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
