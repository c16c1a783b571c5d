//! The service: dispatch, reconcile, poll and archive stages under one supervisor.
//!
//! Each stage is a `step` (one unit of work, returns [`Outcome`]) and a `run` loop around it.
//! The supervisor spawns the stages in a `JoinSet` with child cancellation tokens, waits for
//! a shutdown signal, a stage exiting, or (in `run` mode) for the queue to drain, then cancels,
//! drains within the grace period and aborts stragglers. A panic or an early stage exit is an
//! error: the service never stays up half-alive.

pub mod archive;
pub mod budget;
pub mod callback;
pub mod dispatch;
pub mod fleet;
pub mod limiter;
pub mod pause;
pub mod poll;
pub mod reconcile;
pub mod safeurl;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ark::ArkClient;
use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::job::Backoff;
use crate::store::{Store, now_ms};

/// Learned generation times: key `model|tier|shape` → (read at ms, expected ms).
pub(crate) type ExpectedTimes = HashMap<String, (i64, Option<i64>)>;

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Did something; call again at once.
    Worked,
    /// Nothing to do now; the optional hint says when something will be due (ms).
    Idle(Option<i64>),
}

/// Shared state for the stages.
#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    pub ark: ArkClient,
    pub catalogue: Arc<Catalogue>,
    pub cfg: Arc<Config>,
    pub limiter: Arc<limiter::Limiter>,
    /// Serialises admission (read in-flight count, claim) across dispatchers.
    pub admission: Arc<tokio::sync::Mutex<()>>,
    /// Poked when a stage makes work for another (a submit makes polling work).
    pub poke_poll: Arc<Notify>,
    pub poke_dispatch: Arc<Notify>,
    /// Poked when a job succeeds, so the archiver need not wait for its idle interval.
    pub poke_archive: Arc<Notify>,
    /// Poked when a job leaves `submitted` or is archived: a chain may move on.
    pub poke_chain: Arc<Notify>,
    /// The archiver; `None` when `archive.url` is empty (archiving off).
    pub archive: Option<Arc<archive::Archiver>>,
    /// Identifies this process in leases.
    pub owner: String,
    /// The singletons this process leads (worker/fleet.rs).
    pub fleet: Arc<fleet::Fleet>,
    /// Live settings (limits, `[poll]`: read them here, not in `cfg`) and health.
    pub ops: Arc<crate::ops::OpsState>,
    /// Learned generation times per model/tier/shape, with when they were read (ms): a
    /// submit asks for it, and the history query need not run for every one.
    pub(crate) expected: Arc<std::sync::Mutex<ExpectedTimes>>,
}

impl Ctx {
    /// Builds the context from a validated configuration.
    ///
    /// # Errors
    /// No API key, the HTTP client cannot be built, or the archive store cannot be set up.
    pub fn new(cfg: Config, catalogue: Catalogue, store: Store) -> anyhow::Result<Self> {
        let key = cfg.ark.api_key.clone().context(
            "no Ark API key: set ARK_API_KEY, or ark.api_key_file, or a systemd credential named ark_api_key",
        )?;
        let ark = ArkClient::new(
            &cfg.ark.base_url,
            key,
            cfg.ark.connect_timeout,
            cfg.ark.request_timeout,
        )?;
        let archive = if cfg.archive.url.is_empty() {
            None
        } else {
            Some(Arc::new(archive::Archiver::new(&cfg)?))
        };
        let catalogue = Arc::new(catalogue);
        Ok(Self {
            store,
            ark,
            ops: Arc::new(crate::ops::OpsState::new(&cfg, catalogue.clone())),
            catalogue,
            limiter: Arc::new(limiter::Limiter::new(cfg.dispatch.rpm_window)),
            cfg: Arc::new(cfg),
            admission: Arc::new(tokio::sync::Mutex::new(())),
            poke_poll: Arc::new(Notify::new()),
            poke_dispatch: Arc::new(Notify::new()),
            poke_archive: Arc::new(Notify::new()),
            poke_chain: Arc::new(Notify::new()),
            archive,
            owner: owner_id(std::process::id()),
            fleet: Arc::default(),
            expected: Arc::default(),
        })
    }

    /// The retry backoff for submit attempts.
    pub fn submit_backoff(&self) -> Backoff {
        Backoff {
            base: self.cfg.dispatch.backoff_base,
            max: self.cfg.dispatch.backoff_max,
        }
    }

    pub(crate) fn lease_ms(&self) -> i64 {
        ms(self.cfg.dispatch.lease)
    }

    pub(crate) fn callbacks_on(&self) -> bool {
        !self.cfg.callback.public_url.is_empty()
    }
}

/// This boot of this machine (`/proc/sys/kernel/random/boot_id`), shortened.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().chars().filter(|c| *c != '-').take(12).collect())
        .unwrap_or_default()
}

/// The lease owner of process `pid` on this host and boot: `host-pid-boot`.
fn owner_id(pid: u32) -> String {
    format!("{}-{pid}-{}", hostname(), boot_id())
}

/// Whether `owner` names a process of this host and boot that no longer runs. Only then is
/// its death certain; an owner on another host (or an older format) is left to its lease.
fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, '-');
    let (Some(boot), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    let me = boot_id();
    host == hostname()
        && !me.is_empty()
        && boot == me
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes back at once the jobs whose lease holder died on this host (a crash, SIGKILL),
/// instead of waiting out their leases: the model's queue does not stall behind them.
///
/// # Errors
/// Store failures.
pub async fn reclaim_dead_owners(ctx: &Ctx) -> anyhow::Result<usize> {
    let mut n = 0;
    for owner in ctx.store.live_lease_owners().await? {
        if owner_is_dead(&owner) {
            let k = ctx.store.release_leases_of(&owner).await?;
            ctx.store.drop_leadership_of(&owner).await?;
            tracing::warn!(owner = %owner, jobs = k, "the previous lease holder is dead; taking its jobs back now");
            n += k;
        }
    }
    Ok(n)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "seedq".into())
}

/// Milliseconds in a duration, saturating.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How long to sleep when a step reported `Idle(hint)`.
pub(crate) fn idle_sleep(idle: Duration, hint: Option<i64>) -> Duration {
    match hint {
        Some(at) => {
            let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
            wait.min(idle)
        }
        None => idle,
    }
}

/// The loop every stage runs: step until idle, then wait for a poke, the idle interval or
/// shutdown. Errors are logged and backed off; only the store closing ends the loop early.
pub(crate) async fn stage_loop<F, Fut>(
    name: &'static str,
    ctx: &Ctx,
    role: Role,
    shutdown: CancellationToken,
    mut step: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Outcome>>,
{
    let Role {
        poke,
        idle,
        cascade,
    } = role;
    let mut errors = 0u32;
    loop {
        ctx.ops.health.beat(name);
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let wait = match step().await {
            Ok(Outcome::Worked) => {
                errors = 0;
                // Work found: wake one sibling, which wakes the next if it finds work too,
                // so a burst gets every worker while an idle service wakes only one.
                if cascade && let Some(n) = &poke {
                    n.notify_one();
                }
                continue;
            }
            Ok(Outcome::Idle(hint)) => {
                errors = 0;
                match (idle, hint) {
                    (Some(idle), hint) => idle_sleep(idle, hint),
                    // A secondary worker sleeps until poked (or until its own hint is due).
                    (None, Some(_)) => idle_sleep(Duration::MAX, hint),
                    (None, None) => Duration::MAX,
                }
            }
            Err(e) => {
                if e.downcast_ref::<crate::store::StoreError>()
                    .is_some_and(|s| matches!(s, crate::store::StoreError::Closed))
                {
                    return Err(e.context(format!("{name} stage: the store is gone")));
                }
                errors += 1;
                let d = Backoff {
                    base: Duration::from_millis(200),
                    max: Duration::from_secs(30),
                }
                .delay_random(errors, None);
                tracing::warn!(stage = name, error = %format!("{e:#}"), retry_in = ?d, "stage step failed");
                d
            }
        };
        let poked = async {
            match &poke {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        // Cancel-safe: all three branches only wait.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = poked => {}
            _ = sleep_unless_forever(wait) => {}
        }
    }
}

/// `sleep(d)`, or never for `Duration::MAX` (a plain sleep would overflow the deadline).
async fn sleep_unless_forever(d: Duration) {
    if d == Duration::MAX {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(d).await;
}

/// How a stage instance waits when it has nothing to do.
pub(crate) struct Role {
    /// Wakes the stage early (another stage made work for it).
    pub poke: Option<Arc<Notify>>,
    /// How often to look for work nobody poked about (the CLI is another process); `None`
    /// for secondary instances of a stage, which only wait for pokes.
    pub idle: Option<Duration>,
    /// Whether finding work wakes a sibling instance.
    pub cascade: bool,
}

impl Role {
    /// The one instance of a stage, or the first of several: it polls on the idle interval.
    pub(crate) fn primary(ctx: &Ctx, poke: Option<Arc<Notify>>, cascade: bool) -> Self {
        Role {
            poke,
            idle: Some(ctx.cfg.dispatch.idle_interval),
            cascade,
        }
    }

    /// The first instance of `n` polls; the others sleep until woken, so an idle service
    /// does not wake once per worker per interval.
    pub(crate) fn nth(ctx: &Ctx, poke: Arc<Notify>, i: u32) -> Self {
        Role {
            poke: Some(poke),
            idle: (i == 0).then_some(ctx.cfg.dispatch.idle_interval),
            cascade: true,
        }
    }
}

/// How the service ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Until a signal.
    Serve,
    /// Until nothing is left to do (or a signal).
    UntilDrained,
}

/// Runs the service until `shutdown` resolves (or the queue drains in `UntilDrained` mode).
///
/// # Errors
/// A stage died or panicked, or the store failed at start.
pub async fn run(ctx: Ctx, mode: Mode, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let since = now_ms() - ms(ctx.cfg.dispatch.rpm_window);
    ctx.limiter.seed(&ctx.store.creates_since(since).await?);
    // Reconcile once before anything new is submitted: whatever a crash left ambiguous is
    // resolved (or parked) first. A dead holder's leases end now, not when they run out.
    reclaim_dead_owners(&ctx).await?;
    reconcile::recover_stale(&ctx).await?;
    // Join the fleet: the heartbeat runs under a token of its own, so it keeps beating while
    // the stages drain, and stops after them.
    let singletons = fleet::singletons(mode == Mode::Serve);
    fleet::join(&ctx, &singletons).await?;
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(fleet::run(ctx.clone(), singletons, beat_stop.clone()));

    let token = CancellationToken::new();
    let mut set: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    for i in 0..ctx.cfg.dispatch.workers.max(1) {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("dispatch", dispatch::run(c, t, i).await) });
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("poll", poll::run(c, t).await) });
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("reconcile", reconcile::run(c, t).await) });
    }
    if ctx.callbacks_on() {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("callback", callback::run(c, t).await) });
    }
    if ctx.archive.is_some() {
        for i in 0..ctx.cfg.archive.workers.max(1) {
            let (c, t) = (ctx.clone(), token.child_token());
            set.spawn(async move { ("archive", archive::run(c, t, i).await) });
        }
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("chain", crate::bulk::chain::run(c, t).await) });
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("governor", crate::bulk::governor::run(c, t).await) });
    }
    let status = crate::ops::start(&ctx, mode == Mode::Serve, &token, &mut set).await?;
    crate::ops::notify::ready(&status);
    tracing::info!(mode = ?mode, "seedq service started");

    let drained = async {
        if mode == Mode::Serve {
            return std::future::pending::<anyhow::Result<()>>().await;
        }
        loop {
            // A chain may still have to release a shot or be stitched.
            if ctx.store.pending_work(ctx.archive.is_some()).await? == 0
                && ctx.store.active_chains().await? == 0
            {
                return Ok(());
            }
            tokio::time::sleep(
                ctx.cfg
                    .dispatch
                    .idle_interval
                    .min(Duration::from_millis(250)),
            )
            .await;
        }
    };
    let mut result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested; finishing in-flight steps");
            Ok(())
        }
        r = drained => r.context("checking for remaining work"),
        Some(joined) = set.join_next() => Err(stage_exit(joined)),
    };
    crate::ops::notify::stopping();
    token.cancel();
    let grace = ctx.cfg.service.shutdown_grace;
    let drain = async {
        while let Some(joined) = set.join_next().await {
            if let Ok((name, Err(e))) = &joined {
                tracing::error!(stage = name, error = %format!("{e:#}"), "stage failed while stopping");
            }
            if let Err(e) = joined
                && e.is_panic()
            {
                result = Err(anyhow::anyhow!("a stage panicked while stopping"));
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(grace = ?grace, "stages still running after the grace period; aborting them (leases cover their jobs)");
        set.abort_all();
    }
    beat_stop.cancel();
    let _ = beat.await;
    fleet::leave(&ctx).await;
    result
}

fn stage_exit(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    match joined {
        Ok((name, Ok(()))) => anyhow::anyhow!("the {name} stage stopped unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("the {name} stage failed")),
        Err(e) if e.is_panic() => anyhow::anyhow!("a stage panicked: {e}"),
        Err(e) => anyhow::anyhow!("a stage was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_dead_only_when_its_process_is_gone_on_this_boot() {
        assert!(!owner_is_dead(&owner_id(std::process::id())));
        assert!(!owner_is_dead("otherhost-1-abc"));
        assert!(!owner_is_dead("garbage"));
        // Pid 1 always runs.
        assert!(!owner_is_dead(&owner_id(1)));
        // A pid above the kernel's maximum never runs.
        assert!(owner_is_dead(&owner_id(4_194_399)));
    }
}
