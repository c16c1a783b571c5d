//! The one SQLite connection, owned by one dedicated thread, behind an async `call`.
//!
//! Async code never touches a `rusqlite::Connection`: it sends a closure over a channel and
//! awaits the result on a oneshot (the tokio-rusqlite design). A closure cannot `.await`, so
//! no transaction can ever span an HTTP call. The thread ends when the last handle is dropped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::StoreError;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// How long a writer waits for another process's write lock before giving up.
///
/// Long enough that the CLI and the service never see "database is locked" in practice: each
/// write transaction is short (a batch enqueue of 10 000 rows takes well under a second).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A cloneable handle to the connection thread.
#[derive(Clone)]
pub struct Conn {
    tx: mpsc::Sender<Job>,
    /// The file opened and its (device, inode), to notice it being deleted or replaced.
    path: PathBuf,
    ident: (u64, u64),
}

/// The (device, inode) of the file at `path`.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Opens `path`, sets the pragmas and applies migrations, then starts the thread. With
/// `create`, a missing file (and its directory) is created; without, a missing file is
/// [`StoreError::Missing`] and nothing is created.
///
/// # Errors
/// The file cannot be opened or migrated.
pub fn open(path: &Path, create: bool) -> Result<Conn, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    } else if !path.is_file() {
        // Checked before SQLite runs, so that SQLite never creates the file; the flags
        // (no CREATE) close the race with a concurrent delete.
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    let mut conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // The busy handler first: switching to WAL itself may wait for another process.
    conn.busy_handler(Some(busy_wait))?;
    // Switching a brand-new file to WAL needs an exclusive lock, and SQLite answers BUSY
    // there without calling the busy handler while another process (a `serve` starting at
    // the same moment) holds the file: retry it ourselves within the same timeout.
    retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
    // FULL, not NORMAL: under WAL, NORMAL skips the fsync at commit, so after a power loss the
    // last commits can be gone, among them the `submitting` intent or the recorded remote task
    // id; the job would then be POSTed (and paid for) again. FULL fsyncs the WAL on every
    // commit, so a write that returned is on disk before the POST is sent or the next step
    // relies on it. A "checkpointed write" for just those two would need a second code path
    // for the same transactions; one fsync per commit is cheap next to a video's cost (the
    // enqueue benchmark in docs/performance.md measures it: batches commit once per 10 000 rows).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A bulk enqueue is one transaction of many INSERTs, each with a unique key (and so a
    // statement journal, should it need to roll back alone). With the default temp_store
    // those journals are temp files: `perf` showed 35 % of a 100 000-job enqueue in their
    // pwrite calls. In memory they cost only the pages one statement changes.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The default 2 MiB page cache spills a large enqueue's dirty pages into the WAL before
    // commit (`pagerStress`); 32 MiB holds a 100 000-job batch. Pages are allocated as used,
    // so an idle service does not pay for it.
    conn.pragma_update(None, "cache_size", -32_768)?;
    retry_busy(|| match super::migrate::apply(&mut conn) {
        Err(super::StoreError::Sqlite(e)) => Err(e),
        other => Ok(other),
    })??;
    let ident = identity(path).map_err(|source| StoreError::Dir {
        path: path.to_path_buf(),
        source,
    })?;

    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("seedq-sqlite".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job(&mut conn);
            }
        })
        .map_err(StoreError::Thread)?;
    Ok(Conn {
        tx,
        path: path.to_path_buf(),
        ident,
    })
}

/// How long one wait for another connection's write lock naps before trying again.
const BUSY_NAP: Duration = Duration::from_micros(500);

/// The busy handler: waits for the write lock in short naps for at least [`BUSY_TIMEOUT`].
///
/// SQLite's own `busy_timeout` handler naps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and then
/// 100 ms at a time. A write transaction here lasts a few milliseconds (a claim of ten jobs),
/// so a claimer that lost the lock twice slept through many of them: with three claimers on one
/// file, 2 % of the claims took 0.1–1 s while the median was 3 ms (`seedq bench claims`,
/// docs/performance-claims.md). Naps of half a millisecond take the lock soon after it is free;
/// SQLite has no queue of waiters, so the nap length is all the fairness there is.
pub(super) fn busy_wait(attempt: i32) -> bool {
    let waited = BUSY_NAP * u32::try_from(attempt).unwrap_or(0);
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_NAP);
    true
}

/// Runs `f` again while SQLite answers `SQLITE_BUSY` without having waited (see `open`), for
/// at most [`BUSY_TIMEOUT`].
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Conn {
    /// Checks that the file at the opened path is still the one opened: same device and
    /// inode. A deleted database directory or a file swapped in by someone else leaves this
    /// connection writing to an unlinked file whose records vanish at exit.
    ///
    /// # Errors
    /// [`StoreError::Replaced`] when the path is gone or names another file.
    pub fn check_identity(&self) -> Result<(), StoreError> {
        let now = identity(&self.path).map_err(|e| StoreError::Replaced {
            path: self.path.clone(),
            what: format!("it is gone ({e})"),
        })?;
        if now != self.ident {
            return Err(StoreError::Replaced {
                path: self.path.clone(),
                what: "another file now has its name".into(),
            });
        }
        Ok(())
    }

    /// Runs `f` on the connection thread and returns its result.
    ///
    /// # Errors
    /// Whatever `f` returns, or [`StoreError::Closed`] if the thread is gone.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The receiver may have been dropped (the caller was cancelled); nothing to do.
            let _ = done.send(f(conn));
        });
        self.tx.send(job).map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreError};

    #[tokio::test]
    async fn commits_are_synced_in_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("q.db")).expect("open");
        // 2 = FULL: every commit (the submit intent, the remote id) is fsynced.
        let level: i64 = s
            .call(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
            .await
            .expect("pragma");
        assert_eq!(level, 2);
    }

    #[tokio::test]
    async fn a_deleted_database_fails_the_identity_check_and_the_write_probe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("data");
        let s = Store::open(&sub.join("q.db")).expect("open");
        s.check_identity().expect("same file");
        s.write_probe().await.expect("writable");
        std::fs::remove_dir_all(&sub).expect("rm -r");
        let e = s.check_identity().expect_err("gone");
        assert!(matches!(e, StoreError::Replaced { .. }), "{e}");
        assert!(s.write_probe().await.is_err(), "readiness must fail");

        // A new file under the old name is not the one opened either.
        std::fs::create_dir_all(&sub).expect("mkdir");
        drop(Store::open(&sub.join("q.db")).expect("another store"));
        let e = s.check_identity().expect_err("replaced");
        assert!(e.to_string().contains("another file"), "{e}");
    }

    #[tokio::test]
    async fn a_reader_that_stays_never_holds_writers_behind_a_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.db");
        let s = Store::open(&path).expect("open");
        let write = |n: i64| {
            s.call(move |c| {
                c.execute("INSERT INTO scratch VALUES (?1)", [n])?;
                Ok(())
            })
        };
        s.call(|c| Ok(c.execute_batch("CREATE TABLE scratch (n INTEGER)")?))
            .await
            .expect("table");
        write(1).await.expect("write");
        // Another process inside a read transaction that does not end (a stopped `seedq`,
        // a slow export), pinning the WAL frames after its snapshot.
        let reader = rusqlite::Connection::open(&path).expect("reader");
        reader.execute_batch("BEGIN").expect("begin");
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM scratch", [], |r| r.get(0))
            .expect("read");
        assert_eq!(seen, 1);
        write(2).await.expect("write");

        // The checkpoint gives up at once instead of holding the write lock for the busy
        // timeout (30 s) while it waits for the reader.
        let t0 = std::time::Instant::now();
        assert_eq!(
            s.upkeep().await.expect("upkeep"),
            -1,
            "busy: a reader remains"
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
        // Another process can write meanwhile, with no wait to speak of.
        let other = rusqlite::Connection::open(&path).expect("writer");
        other
            .busy_timeout(std::time::Duration::from_secs(1))
            .expect("busy timeout");
        other
            .execute("INSERT INTO scratch VALUES (3)", [])
            .expect("a writer beside the reader");
        // Our own writes still wait for a lock when they must: the busy handler is back.
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("hold the lock");
        let held = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            other.execute_batch("COMMIT").expect("commit");
        });
        write(4).await.expect("waits for the lock, then writes");
        held.await.expect("join");

        reader.execute_batch("COMMIT").expect("end the read");
        assert!(
            s.upkeep().await.expect("upkeep") >= 0,
            "checkpointed once it left"
        );
    }

    #[test]
    fn opening_an_up_to_date_store_takes_no_write_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.db");
        drop(Store::open(&path).expect("create and migrate"));
        // The service in the middle of a long write: `seedq ls` opens and reads beside it.
        let busy = rusqlite::Connection::open(&path).expect("writer");
        busy.execute_batch("BEGIN IMMEDIATE")
            .expect("hold the write lock");
        let t0 = std::time::Instant::now();
        drop(Store::open_existing(&path).expect("open beside a writer"));
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
        busy.execute_batch("ROLLBACK").expect("rollback");
    }

    #[test]
    fn opening_an_existing_store_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("typo").join("q.db");
        let e = Store::open_existing(&path).err().expect("missing");
        assert!(matches!(e, StoreError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!dir.path().join("typo").exists(), "no directory created");
        drop(Store::open(&path).expect("create"));
        Store::open_existing(&path).expect("now it exists");
    }
}
