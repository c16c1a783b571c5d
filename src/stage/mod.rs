//! The stage core: what every stage of the service shares, and nothing else.
//!
//! [`Ctx`] (the handles and live state a stage reads), [`Outcome`] and [`Role`], the loop every
//! stage runs ([`stage_loop`]), the per-model [`limiter`], the lease owner's identity
//! ([`owner`]), TPD day arithmetic and the operational state a stage reports into ([`state`]).
//! The stages (`worker`), the daemon side (`ops`) and the bulk stages (`bulk`) depend on this
//! module; it depends on none of them (a test in `service` keeps it so), which is what lets
//! the composition root (`service`) build them all without a cycle.

pub mod archiver;
pub mod error;
pub mod fds;
pub mod fleet;
pub mod http;
pub mod limiter;
pub mod live;
pub mod owner;
pub mod reads;
pub mod safeurl;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ark::ArkClient;
use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::job::Backoff;
use crate::store::{Store, Timestamp};

pub use error::{StageContext, StageError, Verdict};
pub use state::OpsState;

/// Learned generation times: key `model|tier|shape` → (read at ms, expected ms).
pub(crate) type ExpectedTimes = HashMap<String, (i64, Option<i64>)>;

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Did something; call again at once.
    Worked,
    /// Nothing to do now; the optional hint says when something will be due.
    Idle(Option<Timestamp>),
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
    pub archive: Option<Arc<archiver::Archiver>>,
    /// Identifies this process in leases.
    pub owner: String,
    /// The singletons this process leads (worker/fleet.rs keeps it current).
    pub fleet: Arc<fleet::Fleet>,
    /// Live settings (limits, `[poll]`: read them here, not in `cfg`) and health.
    pub ops: Arc<OpsState>,
    /// Learned generation times per model/tier/shape, with when they were read (ms): a
    /// submit asks for it, and the history query need not run for every one.
    pub(crate) expected: Arc<std::sync::Mutex<ExpectedTimes>>,
    /// Duplicate remote tasks whose DELETE got no answer yet (no turn in the read budget, a
    /// 5xx, a lost connection): the reconcile loop sends it again every round.
    pub pending_cancels: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
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
        )?
        // Every list, GET and DELETE of this process takes its turn in the fleet's budget.
        .with_gate(Arc::new(reads::StoreGate::new(store.clone(), &cfg.ark)));
        let archive = if cfg.archive.url.is_empty() {
            None
        } else {
            Some(Arc::new(archiver::Archiver::new(&cfg)?))
        };
        let catalogue = Arc::new(catalogue);
        Ok(Self {
            store,
            ark,
            ops: Arc::new(OpsState::new(&cfg, catalogue.clone())),
            catalogue,
            limiter: Arc::new(limiter::Limiter::new(cfg.dispatch.rpm_count_window())),
            cfg: Arc::new(cfg),
            admission: Arc::new(tokio::sync::Mutex::new(())),
            poke_poll: Arc::new(Notify::new()),
            poke_dispatch: Arc::new(Notify::new()),
            poke_archive: Arc::new(Notify::new()),
            poke_chain: Arc::new(Notify::new()),
            archive,
            owner: owner::owner_id(std::process::id()),
            fleet: Arc::default(),
            expected: Arc::default(),
            pending_cancels: Arc::default(),
        })
    }

    /// The retry backoff for submit attempts.
    pub fn submit_backoff(&self) -> Backoff {
        Backoff {
            base: self.cfg.dispatch.backoff_base,
            max: self.cfg.dispatch.backoff_max,
        }
    }

    /// How long a claim holds a job before another worker may take it.
    pub(crate) fn lease(&self) -> Duration {
        self.cfg.dispatch.lease
    }

    pub(crate) fn callbacks_on(&self) -> bool {
        !self.cfg.callback.public_url.is_empty()
    }
}

/// Milliseconds in a duration, saturating.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How long to sleep when a step reported `Idle(hint)`.
pub(crate) fn idle_sleep(idle: Duration, hint: Option<Timestamp>) -> Duration {
    match hint {
        Some(at) => at.since(Timestamp::now()).min(idle),
        None => idle,
    }
}

/// The loop every stage runs: step until idle, then wait for a poke, the idle interval or
/// shutdown. Errors are logged and backed off; only the store closing ends the loop early.
///
/// # Errors
/// The store was closed.
pub(crate) async fn stage_loop<F, Fut>(
    name: &'static str,
    ctx: &Ctx,
    role: Role,
    shutdown: CancellationToken,
    mut step: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Outcome, StageError>>,
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
            Err(e) => match e.verdict() {
                Verdict::End => {
                    return Err(
                        anyhow::Error::from(e).context(format!("{name} stage: the store is gone"))
                    );
                }
                Verdict::StoreOutage(reason) => {
                    errors += 1;
                    // A full disk, a read-only or unreachable database: nothing this stage
                    // did wrong, and it passes by itself. Recorded once (`/readyz`, the log),
                    // then looked at again soon, so work resumes within seconds of its end
                    // instead of after an exponential backoff.
                    ctx.ops.health.store_down(&reason);
                    tracing::debug!(stage = name, error = %e.report(), "step waits for the store");
                    OUTAGE_RETRY
                }
                Verdict::BackOff => {
                    errors += 1;
                    let d = Backoff {
                        base: Duration::from_millis(200),
                        max: Duration::from_secs(30),
                    }
                    .delay_random(errors, None);
                    tracing::warn!(stage = name, error = %e.report(), retry_in = ?d, "stage step failed");
                    d
                }
            },
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

/// How soon a step, or a write that met a store outage, tries again.
pub(crate) const OUTAGE_RETRY: Duration = Duration::from_secs(1);

/// Whether the store can take new work, asked before every claim. No: on SQLite the disk has
/// less than [`crate::store::MIN_ROOM`] free, or an outage is on record and a write probe still
/// fails. A probe that passes ends the outage. Nothing is claimed during one, so jobs already
/// at Ark keep what room and connections there are to record their results.
pub async fn store_takes_work(ctx: &Ctx) -> bool {
    if let Err(e) = ctx.store.room() {
        ctx.ops.health.store_down(&e.to_string());
        return false;
    }
    if ctx.ops.health.store_outage().is_none() {
        return true;
    }
    match ctx.store.write_probe().await {
        Ok(()) => {
            ctx.ops.health.store_up();
            true
        }
        Err(e) => {
            ctx.ops
                .health
                .store_down(&e.outage().unwrap_or_else(|| e.to_string()));
            false
        }
    }
}

/// Runs a store write again while the store is out ([`OUTAGE_RETRY`] apart), for at most
/// `within`: for a write that must not be dropped, such as the remote task id of a create Ark
/// accepted. Any other result, or the last outage error after `within`, is returned.
///
/// # Errors
/// What `f` returned last.
pub(crate) async fn ride_out<T, F, Fut>(
    ctx: &Ctx,
    within: Duration,
    mut f: F,
) -> Result<T, crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::store::StoreError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match f().await {
            Err(e) if tokio::time::Instant::now() + OUTAGE_RETRY < deadline => {
                let Some(reason) = e.outage() else {
                    return Err(e);
                };
                ctx.ops.health.store_down(&reason);
                tokio::time::sleep(OUTAGE_RETRY).await;
            }
            other => return other,
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

pub use seedq_ark::catalogue::{day_start_ms, tpd_day_start};

#[cfg(test)]
mod tests {
    use super::*;

    /// A context on a scratch store; nothing in it calls Ark.
    fn scratch_ctx(dir: &std::path::Path) -> Ctx {
        let store = Store::open(&dir.join("q.db")).expect("store");
        let mut cfg = Config::default();
        cfg.ark.api_key = Some(secrecy::SecretString::from("sk-test".to_string()));
        cfg.admin.listen = String::new();
        cfg.archive.url = String::new();
        let catalogue = cfg.validate().expect("valid config");
        Ctx::new(cfg, catalogue, store).expect("ctx")
    }

    /// What the loop does with each kind of failed step: a closed store ends it with the
    /// error (context or not); an outage is recorded for `/readyz` and looked at again after
    /// [`OUTAGE_RETRY`]; anything else backs off (the first back-off is at most 200 ms, well
    /// under it) and leaves readiness alone.
    #[tokio::test]
    async fn the_loop_ends_waits_or_backs_off_by_the_failure() {
        use crate::store::StoreError;
        #[derive(Debug, PartialEq)]
        enum Seen {
            Ended,
            WaitedForTheStore(String),
            BackedOff,
        }
        let no_room = || StoreError::NoRoom {
            free: 1,
            need: 2,
            path: "/q".into(),
        };
        let outage = no_room().outage().expect("an outage");
        let cases: Vec<(&str, StageError, Seen)> = vec![
            ("closed", StoreError::Closed.into(), Seen::Ended),
            (
                "closed under context",
                StageError::from(StoreError::Closed).context("claiming"),
                Seen::Ended,
            ),
            (
                "full disk under context",
                StageError::from(no_room()).context("recording"),
                Seen::WaitedForTheStore(outage),
            ),
            (
                "corrupt row",
                StoreError::Corrupt("row".into()).into(),
                Seen::BackedOff,
            ),
            (
                "ark",
                crate::ark::ArkError::BaseUrl("x".into()).into(),
                Seen::BackedOff,
            ),
            ("other", StageError::msg("no"), Seen::BackedOff),
        ];
        for (name, error, want) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let ctx = scratch_ctx(dir.path());
            let shutdown = CancellationToken::new();
            let role = Role {
                poke: None,
                idle: Some(Duration::from_secs(60)),
                cascade: false,
            };
            let mut error = Some(error);
            let mut calls = Vec::new();
            let stop = shutdown.clone();
            // The first step fails; the second stops the loop.
            let ended = stage_loop("t", &ctx, role, shutdown, || {
                calls.push(tokio::time::Instant::now());
                let result = match error.take() {
                    Some(e) => Err(e),
                    None => {
                        stop.cancel();
                        Ok(Outcome::Idle(None))
                    }
                };
                async move { result }
            })
            .await;
            let seen = match ended {
                Err(e) => {
                    assert!(
                        format!("{e:#}").starts_with("t stage: the store is gone: "),
                        "{name}: {e:#}"
                    );
                    assert_eq!(calls.len(), 1, "{name}");
                    Seen::Ended
                }
                Ok(()) => {
                    assert_eq!(calls.len(), 2, "{name}");
                    let gap = calls[1] - calls[0];
                    match ctx.ops.health.store_outage() {
                        Some((_, reason)) => {
                            assert!(gap >= OUTAGE_RETRY, "{name}: {gap:?}");
                            Seen::WaitedForTheStore(reason)
                        }
                        None => {
                            assert!(gap < OUTAGE_RETRY, "{name}: {gap:?}");
                            Seen::BackedOff
                        }
                    }
                }
            };
            assert_eq!(seen, want, "{name}");
        }
    }

    #[test]
    fn a_full_day_matches_the_dispatcher() {
        for now in [0, 1_778_774_400_000, 1_778_774_400_001, 1_778_774_399_999] {
            assert_eq!(tpd_day_start(now, 8, 86_400_000), day_start_ms(now, 8));
        }
        assert_eq!(tpd_day_start(5_500, 0, 2_000), 4_000);
    }
}
