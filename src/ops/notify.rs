//! systemd notifications (`Type=notify`): READY, STOPPING, RELOADING, STATUS and the watchdog.
//!
//! Every function is a no-op outside systemd (no `NOTIFY_SOCKET`). A failed send is logged at
//! debug level and otherwise ignored: the service must not stop because its supervisor's
//! socket hiccuped; a lost READY shows as a start timeout, a lost WATCHDOG as a restart.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::health;
use crate::stage::Ctx;

fn send(states: &[NotifyState<'_>]) {
    // `false`: keep NOTIFY_SOCKET, later notifications need it.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// READY=1 with a STATUS line: migrations are done and the first reconciliation ran.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STOPPING=1: the drain has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// RELOADING=1 with the monotonic timestamp systemd ≥ 253 expects; READY=1 follows.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A STATUS line for `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// How often to ping the watchdog: half of `WatchdogSec`, as sd_watchdog_enabled(3) advises.
/// `None` when the watchdog is off (or meant for another process).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2))
}

/// Pings WATCHDOG=1 every `every` while the service is live (`health::live`). A stalled
/// stage or a database that stopped answering withholds the ping, so systemd restarts us.
///
/// # Errors
/// None; the signature matches the other supervised tasks.
pub async fn watchdog(
    ctx: Ctx,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        // Wait first: systemd arms the watchdog at READY=1, which follows this task's start.
        // Cancel-safe: both branches only wait.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        let checks = health::live(&ctx).await;
        let (ok, text) = health::render(&checks);
        if ok {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::error!(report = %text.trim_end(), "not live; withholding the watchdog ping");
        }
    }
}
