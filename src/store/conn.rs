//! The one SQLite connection, owned by one dedicated thread, behind an async `call`.
//!
//! Async code never touches a `rusqlite::Connection`: it sends a closure over a channel and
//! awaits the result on a oneshot (the tokio-rusqlite design). A closure cannot `.await`, so
//! no transaction can ever span an HTTP call. The thread ends when the last handle is dropped.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
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
}

/// Opens `path`, sets the pragmas and applies migrations, then starts the thread.
///
/// # Errors
/// The file cannot be opened or migrated.
pub fn open(path: &Path) -> Result<Conn, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // busy_timeout first: switching to WAL itself may wait for another process.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    super::migrate::apply(&mut conn)?;

    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("seedq-sqlite".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job(&mut conn);
            }
        })
        .map_err(StoreError::Thread)?;
    Ok(Conn { tx })
}

impl Conn {
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
