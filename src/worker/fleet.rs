//! This process as one worker of a fleet on a shared database.
//!
//! At start the service registers in the store's worker registry (`store/fleet.rs`) under its
//! lease owner string, then a task of its own heartbeats every `service.heartbeat_interval`
//! and, on each tick:
//! - takes any other worker for dead whose heartbeat lapsed longer than
//!   `service.worker_timeout` (or, on this host and boot, whose process is gone: the fast
//!   path of `owner_is_dead`) and releases its leases, so its jobs come back within seconds
//!   instead of when their leases run out;
//! - takes or renews the singletons this process runs ([`MAINTENANCE`], [`GOVERNOR`],
//!   [`RECONCILE`]) for `service.leader_ttl`. A singleton's loop asks [`Fleet::leads`] before
//!   each round; a dead leader's lease runs out and another worker takes over.
//!
//! The heartbeat task runs outside the stages' cancellation: it keeps beating while they drain
//! at shutdown (a draining worker is alive and holds leases), and stops last, when the service
//! deregisters and gives its singletons up for a successor to take at once.

use crate::stage::{StageError, Verdict};
use tokio_util::sync::CancellationToken;

use super::{Ctx, ms};
use crate::store::Timestamp;
use crate::store::{WorkerRow, now_ms};

pub use crate::stage::fleet::{Fleet, GOVERNOR, MAINTENANCE, RECONCILE};

/// The singletons a service in this mode runs (maintenance only runs in `serve`).
pub fn singletons(serve: bool) -> Vec<&'static str> {
    let mut v = vec![GOVERNOR, RECONCILE];
    if serve {
        v.push(MAINTENANCE);
    }
    v
}

fn this_worker(ctx: &Ctx) -> WorkerRow {
    let now = now_ms();
    WorkerRow {
        id: ctx.owner.clone(),
        host: crate::stage::owner::hostname(),
        pid: i64::from(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: Timestamp::from_ms(now),
        heartbeat_at: Timestamp::from_ms(now),
    }
}

/// Registers this process and runs the first tick (takes the dead's leases, then its
/// singletons), so the stages start knowing what they lead.
///
/// # Errors
/// Store failures.
pub async fn join(ctx: &Ctx, names: &[&'static str]) -> Result<(), StageError> {
    *ctx.fleet
        .margin_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = ms(ctx.cfg.service.leader_ttl) / 5;
    ctx.store.register_worker(this_worker(ctx)).await?;
    tick(ctx, names).await
}

/// Heartbeats until `stop`, logging failures (a store that is gone stops the stages, and so
/// the service).
pub async fn run(ctx: Ctx, names: Vec<&'static str>, stop: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ctx.cfg.service.heartbeat_interval) => {}
        }
        if let Err(e) = tick(&ctx, &names).await {
            match e.verdict() {
                // Said once for the whole outage (`Health::store_down`), not every beat.
                Verdict::StoreOutage(reason) => ctx.ops.health.store_down(&reason),
                // A closed store stops the stages, and with them the service: the heartbeat
                // only says so.
                Verdict::End | Verdict::BackOff => {
                    tracing::warn!(error = %e.report(), "fleet heartbeat failed");
                }
            }
        }
    }
}

/// Leaves the fleet on a clean stop: the row and this process's singletons go, so another
/// worker takes them over at its next tick.
pub async fn leave(ctx: &Ctx) {
    ctx.fleet.forget_all();
    if let Err(e) = ctx.store.deregister_worker(&ctx.owner).await {
        tracing::warn!(error = %format!("{e:#}"), "could not deregister from the worker registry");
    }
}

/// One heartbeat: beat, reap the dead, take or renew the singletons.
///
/// # Errors
/// Store failures.
pub async fn tick(ctx: &Ctx, names: &[&'static str]) -> Result<(), StageError> {
    // Reap first: a dead leader's singletons are free for this very beat.
    reap(ctx, now_ms()).await?;
    let ttl = ctx.cfg.service.leader_ttl;
    let (alive, leads) = ctx.store.beat(&ctx.owner, names, ttl).await?;
    if !alive {
        // Another worker took this one for dead (a pause, a cut-off database) and released
        // its leases: the lease tokens fence whatever this process still writes. It leads
        // only what it took afresh in this beat.
        tracing::warn!(
            "this worker's heartbeat had lapsed and another released its leases; registering again"
        );
        ctx.store.register_worker(this_worker(ctx)).await?;
    }
    for (&name, until) in names.iter().zip(leads) {
        if ctx.fleet.set(name, until) {
            if until.is_some() {
                tracing::info!(singleton = name, "this worker now leads");
            } else {
                tracing::warn!(singleton = name, "this worker no longer leads");
            }
        }
        crate::metrics::leader(name, until.is_some());
    }
    Ok(())
}

/// Releases the leases of the workers that are dead: on this host and boot with their process
/// gone (certain, at once), or anywhere with a heartbeat older than `service.worker_timeout`.
async fn reap(ctx: &Ctx, now: i64) -> Result<(), StageError> {
    let lapsed_before = now - ms(ctx.cfg.service.worker_timeout);
    let mut released = 0;
    for w in ctx.store.workers().await? {
        if w.id == ctx.owner {
            continue;
        }
        let gone = crate::stage::owner::owner_is_dead(&w.id);
        if !gone && w.heartbeat_at.ms() >= lapsed_before {
            continue;
        }
        let before = if gone { i64::MAX } else { lapsed_before };
        if let Some(jobs) = ctx.store.reap_worker(&w.id, before, gone).await? {
            tracing::warn!(
                worker = %w.id,
                jobs,
                heartbeat_age_ms = now - w.heartbeat_at.ms(),
                process_gone = gone,
                "a worker is dead; its jobs are taken back now"
            );
            released += jobs;
        }
    }
    if released > 0 {
        crate::metrics::leases_released(released as u64);
        ctx.poke_dispatch.notify_one();
        ctx.poke_poll.notify_one();
        ctx.poke_archive.notify_one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_ends_a_margin_before_the_lease() {
        let f = Fleet::default();
        *f.margin_ms.lock().expect("lock") = 1_000;
        assert!(!f.leads(GOVERNOR));
        assert!(f.set(GOVERNOR, Some(now_ms() + 5_000)));
        assert!(f.leads(GOVERNOR));
        assert!(
            !f.set(GOVERNOR, Some(now_ms() + 500)),
            "a renewal is no change"
        );
        assert!(!f.leads(GOVERNOR), "within the margin of its end");
        assert!(f.set(GOVERNOR, None));
        assert!(!f.leads(GOVERNOR));
    }
}
