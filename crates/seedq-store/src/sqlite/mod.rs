//! The SQLite backend: one file, one connection thread (`store/conn.rs`), for a worker on one
//! machine. Each file here implements one area's trait, named as the PostgreSQL file that
//! implements the same trait (`store/postgres/`).

pub(crate) mod api;
pub(crate) mod archive;
pub(crate) mod budget;
pub(crate) mod bulk;
pub(crate) mod bulk_index;
pub(crate) mod chain;
pub(crate) mod conn;
pub(crate) mod core;
pub(crate) mod counters;
pub(crate) mod fleet;
pub(crate) mod images;
pub mod migrate;
pub(crate) mod ops;
pub(crate) mod pause;
pub(crate) mod reads;
pub(crate) mod ui;
pub(crate) mod webhooks;

use std::path::{Path, PathBuf};

use crate::MIN_ROOM;

use rusqlite::Connection;

use self::conn::Conn;
use crate::StoreError;

/// A SQLite job store: the connection thread and the file it opened.
#[derive(Clone)]
pub(crate) struct SqliteStore {
    pub(super) conn: Conn,
    pub(super) path: PathBuf,
}

impl SqliteStore {
    /// Runs a closure on the connection thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.conn.call(f).await
    }

    /// Checks that the database file is still the one opened (same device and inode).
    pub(crate) fn check_identity(&self) -> Result<(), StoreError> {
        self.conn.check_identity()
    }

    /// [`crate::Store::room`] for this file.
    pub(crate) fn room(&self) -> Result<(), StoreError> {
        let path = &self.path;
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
}
