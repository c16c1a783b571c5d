//! Scheduled maintenance (`[maintenance]`): pruning, the lease sweep, TPD day roll-over,
//! database upkeep and backups, on cron schedules.
//!
//! One supervised task sleeps until the earliest next firing, runs the due tasks one after
//! another, and computes their next firings; nothing else wakes for it. Schedules are
//! evaluated in `maintenance.timezone` at each firing (croner with chrono-tz), so they follow
//! DST. A firing missed because an earlier task ran long is skipped, not queued. A failed task
//! is logged and counted (`seedq_maintenance_runs_total`), never fatal, unless the store
//! itself is gone. Shutdown is checked between tasks.
//!
//! tokio-cron-scheduler was the first choice; it was dropped because its scheduler wakes
//! every 500 ms (4 wake-ups/s on an idle service), runs jobs in detached tasks the supervisor
//! cannot drain, and fixes a zone's UTC offset when a job is created. croner is the cron
//! parser it uses, so the syntax is the same.
//!
//! # The TPD day
//! The dispatcher counts the flex budget from the start of the day in
//! `dispatch.tpd_utc_offset_hours` (Beijing by default) on every claim, and jobs held for the
//! budget wait with `next_attempt_at` at the next day's start. So the budget resets by itself;
//! the roll-over task fires at that same instant (in that same fixed offset, not
//! `maintenance.timezone`, so the two can never disagree), logs the day's flex usage and wakes
//! the dispatchers at once instead of at their next idle check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use croner::Cron;
use tokio_util::sync::CancellationToken;

use super::{metrics, schedule};
use crate::blob::{BlobStore, ObjectKey};
use crate::stage::{Ctx, StageError, Verdict, ms};
use crate::store::Timestamp;
use crate::store::now_ms;

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

/// Longest single sleep: a wall-clock step (NTP, suspend) is noticed within this long.
const MAX_SLEEP: Duration = Duration::from_secs(600);
/// Backup file names: `seedq-<UTC time>.db`, which sort by age.
const BACKUP_PREFIX: &str = "seedq-";
/// Where backups go in the archive's object store.
const BACKUP_DIR: &str = "backups";
/// Read size when streaming a backup into the object store.
const UPLOAD_CHUNK: usize = 1 << 20;

/// The zone a schedule is read in.
enum Zone {
    Named(Tz),
    Fixed(FixedOffset),
}

/// One scheduled task and its next firing.
struct Entry {
    task: Task,
    cron: Cron,
    zone: Zone,
    next: Option<DateTime<Utc>>,
}

impl Entry {
    fn plan(&mut self, now: DateTime<Utc>) {
        self.next = match &self.zone {
            Zone::Named(tz) => schedule::next_after(&self.cron, now, tz),
            Zone::Fixed(off) => schedule::next_after(&self.cron, now, off),
        };
    }
}

/// The configured schedules.
///
/// # Errors
/// A zone or expression that does not parse (config validation prevents that), or a TPD
/// offset out of range.
fn entries(ctx: &Ctx) -> anyhow::Result<Vec<Entry>> {
    let m = &ctx.cfg.maintenance;
    let bad = |key: &str, e: String| anyhow::anyhow!("maintenance.{key}: {e}");
    let tz = schedule::parse_tz(&m.timezone).map_err(|e| bad("timezone", e))?;
    let mut out = Vec::new();
    for (task, key, expr) in [
        (Task::Prune, "prune", &m.prune),
        (Task::Sweep, "sweep", &m.sweep),
        (Task::DbUpkeep, "db_upkeep", &m.db_upkeep),
        (Task::Backup, "backup", &m.backup),
    ] {
        if let Some(cron) = schedule::parse_cron(expr).map_err(|e| bad(key, e))? {
            out.push(Entry {
                task,
                cron,
                zone: Zone::Named(tz),
                next: None,
            });
        }
    }
    // Midnight where the dispatcher's TPD day starts (see the module docs).
    let offset = FixedOffset::east_opt(ctx.cfg.dispatch.tpd_utc_offset_hours * 3600)
        .ok_or_else(|| anyhow::anyhow!("dispatch.tpd_utc_offset_hours is out of range"))?;
    let midnight = schedule::parse_cron("0 0 0 * * *")
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("the midnight schedule does not parse"))?;
    out.push(Entry {
        task: Task::TpdRollover,
        cron: midnight,
        zone: Zone::Fixed(offset),
        next: None,
    });
    Ok(out)
}

/// Runs the scheduled tasks until shutdown.
///
/// # Errors
/// A schedule does not parse (config validation prevents that), or the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut plan = entries(&ctx)?;
    let now = Utc::now();
    for e in &mut plan {
        e.plan(now);
        tracing::debug!(task = e.task.name(), next = ?e.next, "scheduled");
    }
    loop {
        let now = Utc::now();
        let wait = plan
            .iter()
            .filter_map(|e| e.next)
            .min()
            .map_or(MAX_SLEEP, |t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .min(MAX_SLEEP);
        // Cancel-safe: both branches only wait.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        for entry in &mut plan {
            if entry.next.is_none_or(|t| t > Utc::now()) {
                continue;
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let task = entry.task;
            // One worker of a fleet runs maintenance (worker/fleet.rs); the others only wake
            // their own dispatchers at the TPD day's start.
            if !ctx.fleet.leads(crate::stage::fleet::MAINTENANCE) {
                if task == Task::TpdRollover {
                    ctx.poke_dispatch.notify_waiters();
                }
                tracing::debug!(
                    task = task.name(),
                    "another worker leads maintenance; skipped"
                );
                entry.plan(Utc::now());
                continue;
            }
            match run_task(&ctx, task).await {
                Ok(summary) => {
                    metrics::maintenance(task.name(), true);
                    tracing::info!(task = task.name(), %summary, "maintenance done");
                }
                Err(e) => match e.verdict() {
                    Verdict::End => {
                        return Err(anyhow::Error::from(e)
                            .context(format!("maintenance task {}", task.name())));
                    }
                    // A task runs at its next firing, outage or not: nothing to wait for.
                    Verdict::StoreOutage(_) | Verdict::BackOff => {
                        metrics::maintenance(task.name(), false);
                        tracing::error!(task = task.name(), error = %e.report(), "maintenance failed");
                    }
                },
            }
            // From the time it finished: firings missed meanwhile are skipped.
            entry.plan(Utc::now());
        }
    }
}

/// Runs one task now and returns a one-line summary.
///
/// # Errors
/// Store or file system failures.
pub async fn run_task(ctx: &Ctx, task: Task) -> Result<String, StageError> {
    match task {
        Task::Prune => prune(ctx).await,
        Task::Sweep => sweep(ctx).await,
        Task::TpdRollover => tpd_rollover(ctx).await,
        Task::DbUpkeep => {
            let frames = ctx.store.upkeep().await?;
            let counters = check_counters(ctx).await?;
            Ok(if ctx.store.is_postgres() {
                // Vacuum and checkpoints are the server's own (autovacuum, the checkpointer).
                "analyzed; vacuum and checkpoints are left to PostgreSQL".to_string()
            } else if frames < 0 {
                "optimized; WAL busy, checkpoint deferred".to_string()
            } else {
                format!("optimized; checkpointed {frames} WAL frames")
            } + &counters)
        }
        Task::Backup => backup(ctx).await,
    }
}

/// The claim counters against a full recount of the jobs (store/counters.rs): a drift means a
/// write went around the triggers; it is logged, counted and repaired.
async fn check_counters(ctx: &Ctx) -> Result<String, StageError> {
    let drift = ctx.store.check_counters(true).await?;
    for d in &drift {
        metrics::counter_drift(d.counter);
        tracing::warn!(
            counter = d.counter,
            key = %d.key,
            counted = d.counted,
            recounted = d.recounted,
            "claim counter drifted from the recount; repaired"
        );
    }
    Ok(if drift.is_empty() {
        "; claim counters agree with a recount".to_string()
    } else {
        format!("; {} claim counters repaired", drift.len())
    })
}

async fn prune(ctx: &Ctx) -> Result<String, StageError> {
    let m = &ctx.cfg.maintenance;
    let now = now_ms();
    let report = ctx
        .store
        .prune(
            Timestamp::from_ms(now - ms(m.retain_archived)),
            Timestamp::from_ms(now - ms(m.retain_failed)),
            // With archiving off, `succeeded` is where a job ends.
            ctx.cfg.archive.url.is_empty(),
        )
        .await?;
    for (state, n) in &report {
        metrics::pruned(state.as_str(), *n);
    }
    let total: u64 = report.values().sum();
    // Billed holds of budget days that are over: no daily cap reads them again, and their
    // batch's total moves into `budget_settled` with them (store/budget.rs).
    let today = crate::worker::budget::day_start(now, ctx.ops.live.tz(), ctx.cfg.bulk.tpd_day_ms());
    let holds = ctx.store.prune_budget_holds(today).await?;
    let buckets = ctx.store.prune_counters().await?;
    Ok(format!(
        "pruned {total} jobs {report:?}, {holds} settled budget holds, {buckets} empty counter rows"
    ))
}

async fn sweep(ctx: &Ctx) -> Result<String, StageError> {
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

async fn tpd_rollover(ctx: &Ctx) -> Result<String, StageError> {
    let now = now_ms();
    let offset = ctx.cfg.dispatch.tpd_utc_offset_hours;
    let today = crate::stage::day_start_ms(now, offset);
    // The firing may land a moment before the boundary by the scheduler's clock: take the day
    // that is ending, whichever side of midnight we are on.
    let ended = crate::stage::day_start_ms(now - 60_000, offset);
    let snap = ctx.store.ops_snapshot(Timestamp::from_ms(ended)).await?;
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

/// Where backups go: `maintenance.backup_dir` when set, else the archive's object store
/// (under `backups/`), else `backups/` beside the database.
pub enum BackupTarget {
    Dir(PathBuf),
    Store(BlobStore),
}

/// The configured backup target.
pub fn backup_target(ctx: &Ctx) -> BackupTarget {
    let beside_db = || {
        ctx.store
            .path()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .join("backups")
    };
    match (&ctx.cfg.maintenance.backup_dir, &ctx.archive) {
        (Some(dir), _) => BackupTarget::Dir(dir.clone()),
        (None, Some(arch)) => BackupTarget::Store(arch.blob().clone()),
        (None, None) => BackupTarget::Dir(beside_db()),
    }
}

async fn backup(ctx: &Ctx) -> Result<String, StageError> {
    if ctx.store.is_postgres() {
        // A server database is backed up by the server's own tools, which know its WAL.
        return Ok(
            "skipped: the store is PostgreSQL (back it up with pg_dump or WAL archiving)".into(),
        );
    }
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|e| StageError::msg(format!("formatting the backup time: {e}")))?;
    let name = format!("{BACKUP_PREFIX}{stamp}.db");
    let keep = ctx.cfg.maintenance.backup_keep as usize;
    let started = std::time::Instant::now();
    let (place, size, removed) = match backup_target(ctx) {
        BackupTarget::Dir(dir) => {
            tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                StageError::msg(format!(
                    "creating the backup directory {}: {e}",
                    dir.display()
                ))
            })?;
            let dest = dir.join(&name);
            let size = ctx.store.backup_to(&dest).await?;
            let removed = remove_old_backups(&dir, keep).map_err(StageError::other)?;
            (dest.display().to_string(), size, removed)
        }
        BackupTarget::Store(blob) => {
            // Staged beside the database (writable under systemd), then streamed up.
            let staged = ctx
                .store
                .path()
                .unwrap_or(Path::new("seedq.db"))
                .with_file_name(format!(".{name}.upload"));
            let size = ctx.store.backup_to(&staged).await?;
            let key = ObjectKey::parse(&format!("{BACKUP_DIR}/{name}"))?;
            let uploaded = upload_file(&blob, &staged, &key).await;
            let _ = tokio::fs::remove_file(&staged).await;
            uploaded.map_err(StageError::other)?;
            let removed = remove_old_stored_backups(&blob, keep)
                .await
                .map_err(StageError::other)?;
            (format!("{}/{key}", blob.url()), size, removed)
        }
    };
    metrics::backup_bytes(size);
    Ok(format!(
        "{place} ({size} bytes, {:.1}s); removed {removed} old backups",
        started.elapsed().as_secs_f64()
    ))
}

/// Streams a local file into the store as one multipart upload (aborted on failure).
async fn upload_file(blob: &BlobStore, file: &Path, key: &ObjectKey) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(file).await?;
    let mut up = blob.upload(key, "application/vnd.sqlite3").await?;
    let copied: anyhow::Result<()> = async {
        loop {
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            up.write(bytes::Bytes::from(buf)).await?;
        }
    }
    .await;
    match copied {
        Ok(()) => {
            up.finish().await?;
            Ok(())
        }
        Err(e) => {
            if let Err(abort) = up.abort().await {
                tracing::warn!(error = %abort, "cannot abort the backup upload");
            }
            Err(e)
        }
    }
}

/// Keeps the newest `keep` backups under `backups/` in the store; returns how many went.
async fn remove_old_stored_backups(blob: &BlobStore, keep: usize) -> anyhow::Result<usize> {
    let dir = ObjectKey::parse(BACKUP_DIR)?;
    let ours: Vec<ObjectKey> = blob
        .list(&dir)
        .await?
        .into_iter()
        .filter(|k| {
            k.as_str()
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(BACKUP_PREFIX) && n.ends_with(".db"))
        })
        .collect();
    let excess = ours.len().saturating_sub(keep.max(1));
    for k in &ours[..excess] {
        blob.delete(k).await?;
    }
    Ok(excess)
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

    #[tokio::test]
    async fn stored_backups_stream_up_and_only_the_newest_stay() {
        let blob = BlobStore::open("memory://", &crate::config::S3Config::default()).expect("blob");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("db");
        std::fs::write(&file, vec![7u8; UPLOAD_CHUNK + 5]).expect("write");
        for stamp in ["20260101T000000Z", "20260103T000000Z", "20260102T000000Z"] {
            let key = ObjectKey::parse(&format!("backups/seedq-{stamp}.db")).expect("key");
            upload_file(&blob, &file, &key).await.expect("upload");
        }
        let other = ObjectKey::parse("backups/README").expect("key");
        blob.put_bytes(&other, bytes::Bytes::from_static(b"x"), "text/plain")
            .await
            .expect("put");
        assert_eq!(remove_old_stored_backups(&blob, 2).await.expect("rm"), 1);
        let left: Vec<String> = blob
            .list(&ObjectKey::parse("backups").expect("key"))
            .await
            .expect("list")
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        assert_eq!(
            left,
            vec![
                "backups/README",
                "backups/seedq-20260102T000000Z.db",
                "backups/seedq-20260103T000000Z.db"
            ]
        );
        let newest = ObjectKey::parse("backups/seedq-20260103T000000Z.db").expect("key");
        let d = blob.digest(&newest).await.expect("digest").expect("exists");
        assert_eq!(d.size, (UPLOAD_CHUNK + 5) as u64);
        blob.delete(&newest).await.expect("delete");
        blob.delete(&newest).await.expect("deleting twice is fine");
        assert!(blob.head(&newest).await.expect("head").is_none());
    }

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
