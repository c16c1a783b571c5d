//! Scheduled maintenance (`[maintenance]`): pruning, the lease sweep, TPD day roll-over,
//! database upkeep and backups, on cron schedules (tokio-cron-scheduler).
//!
//! The scheduler is only a clock: each firing sends a [`Task`] over a channel to this
//! supervised task, which runs it. So the work sits in the supervisor's `JoinSet`, runs one
//! task at a time, and stops between tasks at shutdown; a firing while the same task is still
//! queued is dropped rather than piled up. A failed task is logged and counted
//! (`seedq_maintenance_runs_total`), never fatal, unless the store itself is gone.
//!
//! # The TPD day
//! The dispatcher counts the flex budget from the start of the day in
//! `dispatch.tpd_utc_offset_hours` (Beijing by default) on every claim, and jobs held for the
//! budget wait with `next_attempt_at` at the next day's start. So the budget resets by itself;
//! the roll-over task fires at that same instant (in that same fixed offset, not
//! `maintenance.timezone`, so the two can never disagree), logs the day's flex usage and wakes
//! the dispatchers at once instead of at their next idle check.

use std::path::{Path, PathBuf};

use chrono::FixedOffset;
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::{metrics, schedule};
use crate::store::{StoreError, now_ms};
use crate::worker::{Ctx, ms};

/// One maintenance task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Delete old terminal jobs and their events.
    Prune,
    /// Recover interrupted submits, release expired leases.
    Sweep,
    /// The flex TPD day rolled over.
    TpdRollover,
    /// `PRAGMA optimize` and a WAL checkpoint.
    DbUpkeep,
    /// An online backup of the database.
    Backup,
}

impl Task {
    /// The name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Task::Prune => "prune",
            Task::Sweep => "sweep",
            Task::TpdRollover => "tpd_rollover",
            Task::DbUpkeep => "db_upkeep",
            Task::Backup => "backup",
        }
    }
}

/// Firings waiting to run; more than this are dropped (they would only repeat the same work).
const QUEUE: usize = 8;
/// Backup file names: `seedq-<UTC time>.db`, which sort by age.
const BACKUP_PREFIX: &str = "seedq-";

/// Runs the scheduled tasks until shutdown.
///
/// # Errors
/// The scheduler cannot start, a schedule does not parse (config validation prevents that),
/// or the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let m = &ctx.cfg.maintenance;
    let tz = schedule::parse_tz(&m.timezone)
        .map_err(|e| anyhow::anyhow!("maintenance.timezone: {e}"))?;
    let (tx, mut rx) = mpsc::channel::<Task>(QUEUE);
    let mut sched = JobScheduler::new().await?;
    for (task, cron) in [
        (Task::Prune, &m.prune),
        (Task::Sweep, &m.sweep),
        (Task::DbUpkeep, &m.db_upkeep),
        (Task::Backup, &m.backup),
    ] {
        if cron.trim().is_empty() {
            continue;
        }
        let tx = tx.clone();
        sched
            .add(Job::new_async_tz(cron.as_str(), tz, move |_, _| {
                let tx = tx.clone();
                Box::pin(async move { fire(&tx, task) })
            })?)
            .await?;
    }
    // Midnight where the dispatcher's TPD day starts (see the module docs).
    let offset = FixedOffset::east_opt(ctx.cfg.dispatch.tpd_utc_offset_hours * 3600)
        .ok_or_else(|| anyhow::anyhow!("dispatch.tpd_utc_offset_hours is out of range"))?;
    {
        let tx = tx.clone();
        sched
            .add(Job::new_async_tz("0 0 0 * * *", offset, move |_, _| {
                let tx = tx.clone();
                Box::pin(async move { fire(&tx, Task::TpdRollover) })
            })?)
            .await?;
    }
    sched.start().await?;
    tracing::debug!("maintenance scheduler started");
    let result = loop {
        // Cancel-safe: `recv` loses nothing when shutdown wins; a queued task is just skipped.
        let task = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            t = rx.recv() => t,
        };
        let Some(task) = task else { break Ok(()) };
        match run_task(&ctx, task).await {
            Ok(summary) => {
                metrics::maintenance(task.name(), true);
                tracing::info!(task = task.name(), %summary, "maintenance done");
            }
            Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Closed)) => {
                break Err(e.context(format!("maintenance task {}", task.name())));
            }
            Err(e) => {
                metrics::maintenance(task.name(), false);
                tracing::error!(task = task.name(), error = %format!("{e:#}"), "maintenance failed");
            }
        }
    };
    if let Err(e) = sched.shutdown().await {
        tracing::debug!(error = %e, "maintenance scheduler shutdown");
    }
    result
}

fn fire(tx: &mpsc::Sender<Task>, task: Task) {
    if tx.try_send(task).is_err() {
        tracing::warn!(
            task = task.name(),
            "maintenance is behind; skipping this firing"
        );
    }
}

/// Runs one task now and returns a one-line summary.
///
/// # Errors
/// Store or file system failures.
pub async fn run_task(ctx: &Ctx, task: Task) -> anyhow::Result<String> {
    match task {
        Task::Prune => prune(ctx).await,
        Task::Sweep => sweep(ctx).await,
        Task::TpdRollover => tpd_rollover(ctx).await,
        Task::DbUpkeep => {
            let frames = ctx.store.upkeep().await?;
            Ok(if frames < 0 {
                "optimized; WAL busy, checkpoint deferred".to_string()
            } else {
                format!("optimized; checkpointed {frames} WAL frames")
            })
        }
        Task::Backup => backup(ctx).await,
    }
}

async fn prune(ctx: &Ctx) -> anyhow::Result<String> {
    let m = &ctx.cfg.maintenance;
    let now = now_ms();
    let report = ctx
        .store
        .prune(
            now - ms(m.retain_archived),
            now - ms(m.retain_failed),
            // With archiving off, `succeeded` is where a job ends.
            ctx.cfg.archive.url.is_empty(),
        )
        .await?;
    for (state, n) in &report {
        metrics::pruned(state.as_str(), *n);
    }
    let total: u64 = report.values().sum();
    Ok(format!("pruned {total} jobs {report:?}"))
}

async fn sweep(ctx: &Ctx) -> anyhow::Result<String> {
    let recovered = crate::worker::reconcile::recover_stale(ctx).await?;
    let released = ctx.store.release_expired_leases().await?;
    metrics::leases_released(released as u64);
    if recovered + released > 0 {
        ctx.poke_poll.notify_one();
    }
    Ok(format!(
        "{recovered} interrupted submits to reconcile, {released} expired leases released"
    ))
}

async fn tpd_rollover(ctx: &Ctx) -> anyhow::Result<String> {
    let now = now_ms();
    let offset = ctx.cfg.dispatch.tpd_utc_offset_hours;
    let today = crate::worker::dispatch::day_start_ms(now, offset);
    // The firing may land a moment before the boundary by the scheduler's clock: take the day
    // that is ending, whichever side of midnight we are on.
    let ended = crate::worker::dispatch::day_start_ms(now - 60_000, offset);
    let snap = ctx.store.ops_snapshot(ended).await?;
    ctx.poke_dispatch.notify_waiters();
    let used: Vec<String> = snap
        .flex_today
        .iter()
        .map(|(m, t)| format!("{m}={t}"))
        .collect();
    Ok(format!(
        "flex TPD day starting {} ms; flex tokens since the previous day began: {}",
        today,
        if used.is_empty() {
            "none".to_string()
        } else {
            used.join(", ")
        }
    ))
}

/// Where backups go.
pub fn backup_dir(ctx: &Ctx) -> PathBuf {
    ctx.cfg.maintenance.backup_dir.clone().unwrap_or_else(|| {
        ctx.store
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .join("backups")
    })
}

async fn backup(ctx: &Ctx) -> anyhow::Result<String> {
    let dir = backup_dir(ctx);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| anyhow::anyhow!("creating the backup directory {}: {e}", dir.display()))?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|e| anyhow::anyhow!("formatting the backup time: {e}"))?;
    let dest = dir.join(format!("{BACKUP_PREFIX}{stamp}.db"));
    let started = std::time::Instant::now();
    let size = ctx.store.backup_to(&dest).await?;
    metrics::backup_bytes(size);
    let removed = remove_old_backups(&dir, ctx.cfg.maintenance.backup_keep as usize)?;
    Ok(format!(
        "{} ({size} bytes, {:.1}s); removed {removed} old backups",
        dest.display(),
        started.elapsed().as_secs_f64()
    ))
}

/// Keeps the newest `keep` backups in `dir`; returns how many were deleted.
fn remove_old_backups(dir: &Path, keep: usize) -> anyhow::Result<usize> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(BACKUP_PREFIX) && n.ends_with(".db"))
        })
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep.max(1));
    for f in &files[..excess] {
        std::fs::remove_file(f)?;
    }
    Ok(excess)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_backups_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        for stamp in ["20260101T000000Z", "20260103T000000Z", "20260102T000000Z"] {
            std::fs::write(dir.path().join(format!("seedq-{stamp}.db")), b"x").expect("write");
        }
        std::fs::write(dir.path().join("other.db"), b"x").expect("write");
        assert_eq!(remove_old_backups(dir.path(), 2).expect("rm"), 1);
        assert!(!dir.path().join("seedq-20260101T000000Z.db").exists());
        assert!(dir.path().join("seedq-20260103T000000Z.db").exists());
        assert!(dir.path().join("other.db").exists());
        assert_eq!(
            remove_old_backups(dir.path(), 5).expect("rm"),
            0,
            "nothing when under the limit"
        );
    }
}
