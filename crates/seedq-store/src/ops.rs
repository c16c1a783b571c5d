//! Store queries for operations: the metrics snapshot, pruning, lease sweeps, upkeep, backups
//! and the checks behind `/readyz` and `seedq doctor`.
//!
//! Kept apart from the job queries in `mod.rs` because none of them moves a job through its
//! lifecycle. Long jobs are cut into short transactions (pruning deletes in batches) so the
//! one connection thread keeps serving the stages; the backup runs on a connection of its own.

use std::collections::HashMap;

use crate::Timestamp;
use crate::job::JobId;
use crate::tier::Tier;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, Store, StoreError, migrate};
use crate::job::JobState;

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
    pub oldest_queued: Option<Timestamp>,
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
    /// Whether the file system under a SQLite database has room for the service to go on
    /// recording ([`MIN_ROOM`] free for an unprivileged process); always `Ok` on PostgreSQL,
    /// whose server reports a full disk as an error of its own. A `statvfs`, no I/O: cheap
    /// enough to ask before every claim.
    ///
    /// # Errors
    /// [`StoreError::NoRoom`] when less is free.
    pub fn room(&self) -> Result<(), StoreError> {
        match &self.backend {
            super::Backend::Sqlite(s) => s.room(),
            super::Backend::Postgres(_) => Ok(()),
        }
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

backend_trait! {
    /// Operations: snapshots, pruning, leases, due times and health probes.
    trait OpsStore {
        /// Models with queued jobs (due or not).
        ///
        /// A loose index scan: one index seek per distinct model, so it costs the same with ten
        /// queued jobs or a million (a `GROUP BY` would visit every queued row on every claim).
        ///
        /// # Errors
        /// SQL errors.
        pub fn queued_models(&self) -> Result<Vec<String>, StoreError>;

        /// Tasks that occupy a remote slot, per model: submitting, submit_unknown and submitted.
        ///
        /// # Errors
        /// SQL errors.
        pub fn in_flight(&self) -> Result<HashMap<String, i64>, StoreError>;

        /// Estimated flex tokens submitted for `model` since `since_ms` (the TPD budget's day).
        ///
        /// # Errors
        /// SQL errors.
        pub fn flex_tokens_since(&self, model: &str, since: Timestamp)
        -> Result<i64, StoreError>;

        /// Queued flex jobs whose local deadline has passed become `expired`, without any API
        /// call. Returns their ids.
        ///
        /// # Errors
        /// SQL errors.
        pub fn expire_overdue(&self) -> Result<Vec<JobId>, StoreError>;

        /// The median of the recent generation-time estimates (`gen_ms`) of the last `n`
        /// succeeded jobs with the same model, tier and shape; `None` without history.
        ///
        /// # Errors
        /// SQL errors.
        pub fn recent_generation_ms(
            &self,
            model: &str,
            tier: Tier,
            shape: Option<&str>,
            n: u32,
        ) -> Result<Option<i64>, StoreError>;

        /// The distinct owners of leases that have not run out yet.
        ///
        /// # Errors
        /// SQL errors.
        pub fn live_lease_owners(&self) -> Result<Vec<String>, StoreError>;

        /// Ends every lease `owner` holds (a process known to be dead), so its jobs come due at
        /// once instead of when the lease would have run out. Returns how many jobs it held.
        ///
        /// # Errors
        /// SQL errors.
        pub fn release_leases_of(&self, owner: &str) -> Result<usize, StoreError>;

        /// Jobs that did not finish well, with their state and last error (for the summary
        /// `seedq run` ends with): every parked job (it waits for an operator, however old), and
        /// the failed, dead, expired or unfinished ones that changed since `since_ms`.
        ///
        /// # Errors
        /// SQL errors.
        pub fn leftovers(
            &self,
            since: Timestamp,
        ) -> Result<Vec<(String, String, Option<String>, Option<String>)>, StoreError>;

        /// Jobs that still need the service: queued, submitting, submitted, succeeded and
        /// archiving (the last two only when archiving is on), and submit_unknown jobs that
        /// reconciliation has not parked. Parked jobs wait for an operator, and so do jobs
        /// waiting for a batch's budget to be raised (`seedq batch set`).
        ///
        /// # Errors
        /// SQL errors.
        pub fn pending_work(&self, archive: bool) -> Result<i64, StoreError>;

        /// Creates per model since `since_ms`, to seed the RPM window after a restart.
        ///
        /// # Errors
        /// SQL errors.
        pub fn creates_since(&self, since: Timestamp) -> Result<Vec<(String, i64)>, StoreError>;

        /// Counts of jobs per state (all models).
        ///
        /// # Errors
        /// SQL errors.
        pub fn state_counts(&self) -> Result<HashMap<JobState, i64>, StoreError>;

        /// The earliest `next_attempt_at` among jobs in `states`, to sleep exactly until then.
        ///
        /// # Errors
        /// SQL errors.
        pub fn next_due(
            &self,
            states: &'static [JobState],
        ) -> Result<Option<Timestamp>, StoreError>;

        /// Counts, token sums, the oldest queued job and today's flex usage.
        ///
        /// # Errors
        /// SQL errors.
        pub fn ops_snapshot(&self, flex_day_start: Timestamp) -> Result<OpsSnapshot, StoreError>;

        /// Deletes terminal jobs (and, by cascade, their events) that reached their state before
        /// the cut-offs: `archived` (and `succeeded` when `succeeded_too`, i.e. archiving is off)
        /// before `archived_before_ms`; `failed`, `dead`, `expired` and `cancelled` before
        /// `failed_before_ms`. The time is `updated_at`, when the job last changed state. Archive
        /// objects are not touched.
        ///
        /// # Errors
        /// SQL errors; batches already deleted stay deleted.
        pub fn prune(
            &self,
            archived_before: Timestamp,
            failed_before: Timestamp,
            succeeded_too: bool,
        ) -> Result<PruneReport, StoreError>;

        /// Releases leases that ran out on jobs polled or reconciled by a process that is gone:
        /// clears the owner, bumps the token (fencing any zombie holder) and makes the job due.
        /// Interrupted submits are not touched: `reconcile::recover_stale` owns those.
        ///
        /// # Errors
        /// SQL errors.
        pub fn release_expired_leases(&self) -> Result<usize, StoreError>;

        /// `PRAGMA optimize`, then a truncating WAL checkpoint. Returns the WAL frames
        /// checkpointed (`-1` when the WAL was busy).
        ///
        /// # Errors
        /// SQL errors.
        pub fn upkeep(&self) -> Result<i64, StoreError>;

        /// Takes and releases the write lock (`BEGIN IMMEDIATE`, then rollback): the database
        /// accepts writes right now. Nothing is written. On SQLite it also fails when the file
        /// system is nearly full ([`Store::room`]): the lock alone needs no space, the next
        /// commit does.
        ///
        /// # Errors
        /// The lock cannot be taken (read-only file or mount, a lock held past the busy timeout),
        /// or the disk has no room.
        pub fn write_probe(&self) -> Result<(), StoreError>;

        /// A round trip to the connection thread.
        ///
        /// # Errors
        /// The thread is gone.
        pub fn ping(&self) -> Result<(), StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::now_ms;
    use crate::tests_ops::{Seed, add, exec};
    use crate::{NewJob, testpg};

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
                .prune(
                    crate::Timestamp::from_ms(now - 30 * day),
                    crate::Timestamp::from_ms(now - 90 * day),
                    false,
                )
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
                .prune(
                    crate::Timestamp::from_ms(now - 30 * day),
                    crate::Timestamp::from_ms(now - 90 * day),
                    true,
                )
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
            let report = s
                .prune(crate::Timestamp::EPOCH, crate::Timestamp::now(), false)
                .await
                .expect("prune");
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
        let target = crate::StoreTarget::Postgres {
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
            async move {
                s.prune(crate::Timestamp::EPOCH, crate::Timestamp::now(), false)
                    .await
            }
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
            let snap = s
                .ops_snapshot(crate::Timestamp::EPOCH)
                .await
                .expect("snapshot");
            let a = snap.rows.iter().find(|r| r.model == "a").expect("a row");
            assert_eq!(
                (a.jobs, a.est_tokens, a.state),
                (2, 200, JobState::Queued),
                "{name}"
            );
            assert_eq!(snap.rows.len(), 2, "{name}");
            assert!(snap.oldest_queued.is_some(), "{name}");
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
            let snap = s
                .ops_snapshot(crate::Timestamp::from_ms(now - 1))
                .await
                .expect("snapshot");
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
                s.ops_snapshot(crate::Timestamp::from_ms(now + 1))
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
            &crate::StoreTarget::Postgres {
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
