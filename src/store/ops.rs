//! Store queries for operations: the metrics snapshot, pruning, lease sweeps, upkeep, backups
//! and the checks behind `/readyz` and `seedq doctor`.
//!
//! Kept apart from the job queries in `mod.rs` because none of them moves a job through its
//! lifecycle. Long jobs are cut into short transactions (pruning deletes in batches) so the
//! one connection thread keeps serving the stages; the backup runs on a connection of its own.

use crate::tier::Tier;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::{BUSY_TIMEOUT, Store, StoreError, migrate, now_ms};
use crate::job::JobState;

/// Rows deleted per pruning transaction: small enough that the stages barely notice.
const PRUNE_BATCH: u32 = 500;
/// Integrity problems reported at most (SQLite can list thousands for one bad page).
const INTEGRITY_MAX: u32 = 10;

/// Jobs per (state, model, tier) with their token sums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRow {
    pub state: JobState,
    pub model: String,
    pub tier: Tier,
    pub jobs: i64,
    pub est_tokens: i64,
    pub usage_tokens: i64,
}

/// Everything `/metrics` reads from the database, in one round trip.
#[derive(Clone, Debug, Default)]
pub struct OpsSnapshot {
    pub rows: Vec<StateRow>,
    /// `created_at` of the oldest queued job.
    pub oldest_queued_ms: Option<i64>,
    /// Flex tokens submitted since the TPD day began, per model (the sum dispatch starts each
    /// day from).
    pub flex_today: BTreeMap<String, i64>,
}

/// What a prune deleted, per state.
pub type PruneReport = BTreeMap<JobState, u64>;

/// What `inspect` found in a database file.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub schema_version: i64,
    /// `["ok"]` for a healthy file.
    pub integrity: Vec<String>,
    /// The write lock could be taken (`BEGIN IMMEDIATE`).
    pub writable: Result<(), String>,
}

/// The free space below which a SQLite store counts as full ([`Store::room`]): claims stop
/// while the jobs already at Ark can still record their results (a state change and an event
/// are a few kB of WAL each, so 1 MiB is hundreds of them).
pub const MIN_ROOM: u64 = 1 << 20;

impl Store {
    /// Counts, token sums, the oldest queued job and today's flex usage.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn ops_snapshot(&self, flex_day_start_ms: i64) -> Result<OpsSnapshot, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::ops::ops_snapshot(pg, flex_day_start_ms).await;
        }
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT state, model, service_tier, COUNT(*), COALESCE(SUM(est_tokens), 0), \
                 COALESCE(SUM(usage_tokens), 0) FROM jobs GROUP BY state, model, service_tier",
            )?;
            let mut rows = Vec::new();
            let mut q = st.query([])?;
            while let Some(r) = q.next()? {
                let state: String = r.get(0)?;
                rows.push(StateRow {
                    state: state.parse().map_err(|e: crate::job::UnknownState| {
                        StoreError::Corrupt(e.to_string())
                    })?,
                    model: r.get(1)?,
                    tier: r.get(2)?,
                    jobs: r.get(3)?,
                    est_tokens: r.get(4)?,
                    usage_tokens: r.get(5)?,
                });
            }
            let oldest_queued_ms = c.query_row(
                "SELECT MIN(created_at) FROM jobs WHERE state = 'queued'",
                [],
                |r| r.get(0),
            )?;
            // The same sum as `flex_tokens_since`, for every model at once.
            let mut st = c.prepare_cached(
                "SELECT model, COALESCE(SUM(COALESCE(usage_tokens, est_tokens, 0)), 0) FROM jobs \
                 WHERE service_tier = 'flex' AND submitted_at >= ?1 GROUP BY model",
            )?;
            let flex_today = st
                .query_map([flex_day_start_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            Ok(OpsSnapshot {
                rows,
                oldest_queued_ms,
                flex_today,
            })
        })
        .await
    }

    /// Deletes terminal jobs (and, by cascade, their events) that reached their state before
    /// the cut-offs: `archived` (and `succeeded` when `succeeded_too`, i.e. archiving is off)
    /// before `archived_before_ms`; `failed`, `dead`, `expired` and `cancelled` before
    /// `failed_before_ms`. The time is `updated_at`, when the job last changed state. Archive
    /// objects are not touched.
    ///
    /// # Errors
    /// SQL errors; batches already deleted stay deleted.
    pub async fn prune(
        &self,
        archived_before_ms: i64,
        failed_before_ms: i64,
        succeeded_too: bool,
    ) -> Result<PruneReport, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::ops::prune(pg, archived_before_ms, failed_before_ms, succeeded_too)
                .await;
        }
        let mut report = PruneReport::new();
        loop {
            let batch = self
                .call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let states: Vec<String> = {
                        let mut st = tx.prepare_cached(
                            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE \
                             ((state = 'archived' OR (?3 AND state = 'succeeded')) AND updated_at < ?1) \
                             OR (state IN ('failed', 'dead', 'expired', 'cancelled') AND updated_at < ?2) \
                             LIMIT ?4) RETURNING state",
                        )?;
                        st.query_map(
                            params![archived_before_ms, failed_before_ms, succeeded_too, PRUNE_BATCH],
                            |r| r.get(0),
                        )?
                        .collect::<Result<_, _>>()?
                    };
                    tx.commit()?;
                    Ok(states)
                })
                .await?;
            if batch.is_empty() {
                if !report.is_empty() {
                    // Images no remaining job refers to go with the last job that used them.
                    self.call(|c| Ok(super::images::delete_orphans(c)?)).await?;
                }
                return Ok(report);
            }
            for s in batch {
                let state = s
                    .parse()
                    .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))?;
                *report.entry(state).or_insert(0) += 1;
            }
        }
    }

    /// Releases leases that ran out on jobs polled or reconciled by a process that is gone:
    /// clears the owner, bumps the token (fencing any zombie holder) and makes the job due.
    /// Interrupted submits are not touched: `reconcile::recover_stale` owns those.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn release_expired_leases(&self) -> Result<usize, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::ops::release_expired_leases(pg).await;
        }
        self.call(|c| {
            let now = now_ms();
            Ok(c.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, \
                 lease_token = lease_token + 1, next_attempt_at = MIN(next_attempt_at, ?1) \
                 WHERE lease_until IS NOT NULL AND lease_until < ?1 \
                 AND state IN ('submitted', 'submit_unknown')",
                [now],
            )?)
        })
        .await
    }

    /// `PRAGMA optimize`, then a truncating WAL checkpoint. Returns the WAL frames
    /// checkpointed (`-1` when the WAL was busy).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn upkeep(&self) -> Result<i64, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::ops::upkeep(pg).await;
        }
        self.call(|c| {
            c.execute_batch("PRAGMA optimize")?;
            let (busy, _log, done): (i64, i64, i64) =
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            Ok(if busy != 0 { -1 } else { done })
        })
        .await
    }

    /// Whether the file system under a SQLite database has room for the service to go on
    /// recording ([`MIN_ROOM`] free for an unprivileged process); always `Ok` on PostgreSQL,
    /// whose server reports a full disk as an error of its own. A `statvfs`, no I/O: cheap
    /// enough to ask before every claim.
    ///
    /// # Errors
    /// [`StoreError::NoRoom`] when less is free.
    pub fn room(&self) -> Result<(), StoreError> {
        let Some(path) = self.path() else {
            return Ok(());
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // A file system that cannot be asked is not known to be full; the writes will tell.
        let Ok(st) = rustix::fs::statvfs(dir) else {
            return Ok(());
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < MIN_ROOM {
            return Err(StoreError::NoRoom {
                path: path.to_path_buf(),
                free,
                need: MIN_ROOM,
            });
        }
        Ok(())
    }

    /// Takes and releases the write lock (`BEGIN IMMEDIATE`, then rollback): the database
    /// accepts writes right now. Nothing is written. On SQLite it also fails when the file
    /// system is nearly full ([`Store::room`]): the lock alone needs no space, the next
    /// commit does.
    ///
    /// # Errors
    /// The lock cannot be taken (read-only file or mount, a lock held past the busy timeout),
    /// or the disk has no room.
    pub async fn write_probe(&self) -> Result<(), StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::ops::write_probe(pg).await;
        }
        // A write to a deleted file succeeds and is lost: readiness fails instead.
        self.check_identity()?;
        self.room()?;
        self.call(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.rollback()?;
            Ok(())
        })
        .await
    }

    /// A round trip to the connection thread.
    ///
    /// # Errors
    /// The thread is gone.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::ops::ping(pg).await;
        }
        self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    /// Copies the database to `dest` with SQLite's online backup, from a connection of its
    /// own (a WAL reader: the service keeps writing meanwhile). Writes `dest` through a
    /// temporary file and a rename, so a crash never leaves a half backup under the real name.
    /// Returns the size of the copy.
    ///
    /// # Errors
    /// The source cannot be opened, the copy or the rename fails.
    pub async fn backup_to(&self, dest: &Path) -> Result<u64, StoreError> {
        // PostgreSQL has its own tools for this (pg_dump, base backups with WAL archiving);
        // maintenance skips the backup step there.
        let Some(src) = self.path() else {
            return Err(StoreError::Unsupported(
                "file backups of a PostgreSQL store (use pg_dump or WAL archiving)",
            ));
        };
        let (src, dest) = (src.to_path_buf(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || backup_file(&src, &dest))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

fn backup_file(src: &Path, dest: &Path) -> Result<u64, StoreError> {
    use rusqlite::backup::{Backup, StepResult};
    let from = open_existing(src)?;
    let tmp = tmp_name(dest);
    let _ = std::fs::remove_file(&tmp);
    {
        let mut to = Connection::open(&tmp).map_err(|source| StoreError::Open {
            path: tmp.clone(),
            source,
        })?;
        let backup = Backup::new(&from, &mut to)?;
        // One step copies every page under a single read transaction: a consistent snapshot,
        // and in WAL mode the service's writes do not restart it.
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    let size = std::fs::metadata(&tmp)
        .map_err(|source| StoreError::Dir {
            path: tmp.clone(),
            source,
        })?
        .len();
    std::fs::rename(&tmp, dest).map_err(|source| StoreError::Dir {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(size)
}

fn tmp_name(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn open_existing(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    Ok(c)
}

/// Looks at an existing database without changing it: schema version, `PRAGMA
/// integrity_check`, and whether the write lock can be taken. Does not create or migrate.
///
/// # Errors
/// The file cannot be opened as a database at all.
pub fn inspect(path: &Path, busy: Duration) -> Result<Inspection, StoreError> {
    let c = open_existing(path)?;
    c.busy_timeout(busy)?;
    let schema_version = migrate::version(&c)?;
    let integrity = {
        let mut st = c.prepare(&format!("PRAGMA integrity_check({INTEGRITY_MAX})"))?;
        st.query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?
    };
    let writable = c
        .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .map_err(|e| e.to_string());
    Ok(Inspection {
        schema_version,
        integrity,
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests_ops::{Seed, add, exec};
    use crate::store::{NewJob, testpg};

    #[tokio::test]
    async fn prune_deletes_old_terminal_jobs_and_their_events_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            let day = 86_400_000;
            let cases = [
                ("archived", 31, true),
                ("archived", 29, false),
                ("failed", 91, true),
                ("failed", 89, false),
                ("dead", 100, true),
                ("cancelled", 95, true),
                ("expired", 10, false),
                ("succeeded", 400, false),
                ("queued", 400, false),
                ("submitted", 400, false),
            ];
            let mut ids = Vec::new();
            for (state, age_days, _) in cases {
                let at = now_ms() - age_days * day;
                let cols = format!("updated_at = {at}, finished_at = {at}");
                ids.push(
                    add(
                        &s,
                        Seed {
                            state,
                            cols: &cols,
                            ..Seed::default()
                        },
                    )
                    .await,
                );
            }
            let now = now_ms();
            let report = s
                .prune(now - 30 * day, now - 90 * day, false)
                .await
                .expect("prune");
            assert_eq!(report.values().sum::<u64>(), 4, "{name}: {report:?}");
            assert_eq!(report.get(&JobState::Archived), Some(&1), "{name}");
            for ((state, age, gone), id) in cases.iter().zip(&ids) {
                let job = s.job(id.as_str()).await.expect("job");
                let events = s.events(id.as_str()).await.expect("events");
                assert_eq!(job.is_none(), *gone, "{name}: {state} {age}d");
                assert_eq!(events.is_empty(), *gone, "{name}: events of {state} {age}d");
            }
            // Archiving off: old succeeded jobs are as done as archived ones.
            let report = s
                .prune(now - 30 * day, now - 90 * day, true)
                .await
                .expect("prune");
            assert_eq!(report.get(&JobState::Succeeded), Some(&1), "{name}");
            assert_eq!(report.values().sum::<u64>(), 1, "{name}");
        }
    }

    /// Counts the stored images (plain SQL: `image_count` is another port's).
    async fn images(s: &Store) -> i64 {
        if let Some(pg) = s.pg() {
            let c = pg.conn().await.expect("conn");
            return c
                .query_one("SELECT COUNT(*) FROM images", &[])
                .await
                .expect("count")
                .get(0);
        }
        s.call(|c| Ok(c.query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?))
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn prune_takes_the_images_only_pruned_jobs_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            let old = format!("updated_at = {}", now_ms() - 1_000_000);
            let body = |sha: &str| format!("request_json = '{{\"image\":\"{sha}\"}}'");
            add(
                &s,
                Seed {
                    state: "failed",
                    cols: &format!("{old}, {}", body("aaaa")),
                    ..Seed::default()
                },
            )
            .await;
            add(
                &s,
                Seed {
                    state: "failed",
                    cols: &format!("{old}, {}", body("bbbb")),
                    ..Seed::default()
                },
            )
            .await;
            add(
                &s,
                Seed {
                    cols: &body("bbbb"),
                    ..Seed::default()
                },
            )
            .await;
            exec(
                &s,
                "INSERT INTO images (sha256, data_url, created_at) VALUES \
                      ('aaaa', 'data:a', 0), ('bbbb', 'data:b', 0)",
            )
            .await;
            let report = s.prune(0, now_ms(), false).await.expect("prune");
            assert_eq!(report.get(&JobState::Failed), Some(&2), "{name}");
            // "aaaa" went with its last job; "bbbb" is still used by the queued one.
            assert_eq!(images(&s).await, 1, "{name}");
        }
    }

    /// Another worker's enqueue that reuses a stored image (`ON CONFLICT DO NOTHING`) and has
    /// not committed its job yet: prune must not take the image from under it. Without the
    /// table lock, the scan does not see the uncommitted job and deletes the image.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_waits_for_an_enqueue_that_reuses_an_image() {
        let url = testpg::fresh_database().await;
        let target = crate::store::StoreTarget::Postgres {
            url: url.clone(),
            password: None,
        };
        let s = Store::open_target(&target, true).await.expect("open");
        let old = format!("updated_at = {}", now_ms() - 1_000_000);
        let cols = format!("{old}, request_json = '{{\"image\":\"cccc\"}}'");
        add(
            &s,
            Seed {
                state: "failed",
                cols: &cols,
                ..Seed::default()
            },
        )
        .await;
        exec(
            &s,
            "INSERT INTO images (sha256, data_url, created_at) VALUES ('cccc', 'data:c', 0)",
        )
        .await;
        let (mut other, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let tx = other.transaction().await.expect("begin");
        tx.batch_execute(&format!(
            "INSERT INTO images (sha256, data_url, created_at) VALUES ('cccc', 'data:c', 1) \
             ON CONFLICT (sha256) DO NOTHING; \
             INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
             request_json, next_attempt_at) VALUES ('{}', 1, 1, 'queued', 'm', 'default', \
             '{{\"image\":\"cccc\"}}', 1)",
            crate::job::JobId::generate().as_str()
        ))
        .await
        .expect("the other worker's enqueue");
        let pruning = tokio::spawn({
            let s = s.clone();
            async move { s.prune(0, now_ms(), false).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !pruning.is_finished(),
            "prune waits for the enqueue to commit"
        );
        tx.commit().await.expect("commit");
        let report = pruning.await.expect("join").expect("prune");
        assert_eq!(report.get(&JobState::Failed), Some(&1));
        assert_eq!(images(&s).await, 1, "the new job's image stays");
    }

    #[tokio::test]
    async fn snapshot_counts_match_the_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            add(
                &s,
                Seed {
                    model: "a",
                    ..Seed::default()
                },
            )
            .await;
            add(
                &s,
                Seed {
                    model: "a",
                    ..Seed::default()
                },
            )
            .await;
            add(
                &s,
                Seed {
                    model: "b",
                    tier: Tier::Flex,
                    ..Seed::default()
                },
            )
            .await;
            let snap = s.ops_snapshot(0).await.expect("snapshot");
            let a = snap.rows.iter().find(|r| r.model == "a").expect("a row");
            assert_eq!(
                (a.jobs, a.est_tokens, a.state),
                (2, 200, JobState::Queued),
                "{name}"
            );
            assert_eq!(snap.rows.len(), 2, "{name}");
            assert!(snap.oldest_queued_ms.is_some(), "{name}");
            assert!(snap.flex_today.is_empty(), "{name}: nothing submitted yet");
            let now = now_ms();
            let cols = format!("submitted_at = {now}, usage_tokens = 40");
            add(
                &s,
                Seed {
                    model: "b",
                    tier: Tier::Flex,
                    state: "succeeded",
                    cols: &cols,
                    ..Seed::default()
                },
            )
            .await;
            let snap = s.ops_snapshot(now - 1).await.expect("snapshot");
            let b = snap
                .rows
                .iter()
                .find(|r| r.model == "b" && r.state == JobState::Succeeded);
            let b = b.expect("b row");
            assert_eq!(
                (b.tier, b.jobs, b.usage_tokens),
                (Tier::Flex, 1, 40),
                "{name}"
            );
            assert_eq!(snap.flex_today.get("b"), Some(&40), "{name}");
            assert!(
                s.ops_snapshot(now + 1)
                    .await
                    .expect("snapshot")
                    .flex_today
                    .is_empty(),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn the_probes_answer_and_upkeep_runs_on_both_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            add(&s, Seed::default()).await;
            s.write_probe().await.expect(name);
            s.ping().await.expect(name);
            assert!(s.upkeep().await.expect(name) >= 0, "{name}");
        }
    }

    /// `room` asks the file system under a SQLite store (a real one has more than
    /// [`MIN_ROOM`] free here); PostgreSQL reports a full disk itself, so `room` passes.
    #[tokio::test]
    async fn room_is_the_free_space_under_sqlite_and_always_there_on_postgres() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            s.room().expect(name);
        }
        let e = StoreError::NoRoom {
            path: dir.path().join("q.db"),
            free: 0,
            need: MIN_ROOM,
        };
        assert!(e.outage().is_some_and(|r| r.contains("no room")), "{e}");
    }

    /// The errors that mean "the store is out" (wait and retry) and those that do not.
    #[test]
    fn outages_are_told_from_other_errors() {
        let full = StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        ));
        assert!(full.outage().is_some_and(|r| r.contains("full")), "{full}");
        let constraint = StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        ));
        assert_eq!(constraint.outage(), None);
        assert!(
            StoreError::Pool("too many clients".into())
                .outage()
                .is_some()
        );
        assert_eq!(StoreError::Closed.outage(), None);
        assert_eq!(StoreError::Corrupt("x".into()).outage(), None);
    }

    /// A PostgreSQL server that turns read-only (a failover onto a standby, an operator's
    /// `default_transaction_read_only`) fails the write probe, so `/readyz` says so, while
    /// reads still work.
    #[tokio::test]
    async fn a_read_only_postgres_fails_the_write_probe() {
        let url = testpg::fresh_database().await;
        let s = Store::open_target(
            &crate::store::StoreTarget::Postgres {
                url: url.clone(),
                password: None,
            },
            true,
        )
        .await
        .expect("open");
        s.write_probe().await.expect("writable at first");
        let db = url.rsplit('/').next().expect("a database name");
        // A connection of its own: one from the store's pool would go back into it unchanged.
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        // The setting applies to new sessions: end the pool's, which it then replaces.
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {db} SET default_transaction_read_only = on; \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            ))
            .await
            .expect("make it read-only");
        drop(admin);
        let mut last = None;
        for _ in 0..50 {
            match s.write_probe().await {
                Err(StoreError::Postgres(e))
                    if e.code()
                        == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) =>
                {
                    last = None;
                    break;
                }
                other => last = Some(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, None, "the probe never failed as read-only");
        s.ping().await.expect("reads still work");
    }

    #[tokio::test]
    async fn backups_are_complete_databases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("q.db")).expect("open");
        let job = || NewJob {
            model: "a".into(),
            est_tokens: Some(100),
            ..NewJob::plain("{}")
        };
        s.enqueue(vec![job(), job(), job()]).await.expect("enqueue");
        let dest = dir.path().join("copy.db");
        let size = s.backup_to(&dest).await.expect("backup");
        assert!(size > 0);
        assert!(!tmp_name(&dest).exists());
        let copy = Store::open(&dest).expect("open copy");
        assert_eq!(
            copy.state_counts().await.expect("counts")[&JobState::Queued],
            3
        );
        let found = inspect(&dest, Duration::from_secs(1)).expect("inspect");
        assert_eq!(found.integrity, vec!["ok".to_string()]);
        assert!(found.writable.is_ok());
        assert_eq!(found.schema_version, migrate::latest());
        s.write_probe().await.expect("writable");
        assert!(s.upkeep().await.expect("upkeep") >= 0);
    }

    #[tokio::test]
    async fn a_postgres_store_refuses_a_file_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = testpg::pg_store().await;
        let dest = dir.path().join("copy.db");
        let e = s.backup_to(&dest).await.expect_err("no file backups");
        assert!(matches!(e, StoreError::Unsupported(_)), "{e}");
        assert!(!dest.exists() && !tmp_name(&dest).exists());
    }
}
