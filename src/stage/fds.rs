//! File descriptors: raising the soft `RLIMIT_NOFILE` at start, and the budget each guarded
//! HTTP server's connection cap comes from.
//!
//! A server that accepts more connections than the process has descriptors for fails its
//! `accept` with EMFILE, and so do the store, the outgoing HTTP pool and every file open
//! behind it. So the cap is derived, not guessed: the soft limit (raised to the hard limit at
//! start, which needs no privilege), minus a reserve for what the rest of the service holds at
//! its busiest, shared between the servers. `admin.max_connections` stays an upper bound.

use crate::config::Config;

/// Descriptors the process holds whatever it does: stdio, the runtime's epoll, event and
/// timer descriptors, the listeners, the log, the SQLite database with its WAL and shm,
/// temporary files. Measured: `seedq serve` with the shipped config holds 16 descriptors
/// when idle (`ls /proc/<pid>/fd`: stdio, two epolls, an eventfd, a pipe, the three SQLite
/// files, five sockets); the rest is headroom.
const BASE_RESERVE: u64 = 32;
/// The PostgreSQL pool's size (`store/postgres/mod.rs`), one socket each.
const PG_POOL: u64 = 16;
/// Outgoing calls besides creates and archive downloads: the poller, the reconciler, the
/// governor, the readiness probe of Ark.
const OTHER_CALLS: u64 = 8;
/// No server is capped below this, however low the limit: a server that cannot take a
/// `/healthz` next to a few peers is no server. Below it, the startup log warns.
const MIN_CAP: u64 = 4;

/// The soft and hard `RLIMIT_NOFILE`, before and after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise the soft limit to).
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard limit (a shell's `ulimit -n` and systemd's
/// default soft 1024 leave most of the hard limit unused). Never fails: when the kernel
/// refuses, the soft limit stays and the caps are derived from it.
pub fn raise_nofile() -> NoFile {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let was = cur.current.unwrap_or(u64::MAX);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    if was < hard {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
    NoFile {
        was,
        soft: current_nofile(),
        hard,
    }
}

/// The soft descriptor limit now (`u64::MAX`: unlimited).
pub fn current_nofile() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// How the servers' connection caps were derived from the descriptor limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The soft descriptor limit the budget was computed from.
    pub limit: u64,
    /// Descriptors kept back for the store, outgoing HTTP and files.
    pub reserve: u64,
    /// Connections each guarded server holds at most.
    pub per_server: usize,
    /// The cap came from the descriptors (not from `admin.max_connections`).
    pub derived: bool,
    /// The limit is too low for [`MIN_CAP`] per server next to the reserve.
    pub starved: bool,
}

impl Budget {
    /// The budget under `cfg` with the current soft limit.
    pub fn now(cfg: &Config) -> Self {
        Self::for_limit(cfg, current_nofile())
    }

    /// The budget under `cfg` with a soft limit of `limit` descriptors.
    ///
    /// The reserve is what the rest of the service may hold at once: [`BASE_RESERVE`], the
    /// store (16 PostgreSQL sockets, or SQLite's three files, counted in the base), one socket
    /// per create worker, three descriptors per archive worker (the download, the upload and
    /// the file between them) and [`OTHER_CALLS`]. What is left is shared by the servers,
    /// the callback server counting twice: each callback it serves makes a GET to Ark.
    pub fn for_limit(cfg: &Config, limit: u64) -> Self {
        let store = match cfg.store.target() {
            crate::store::StoreTarget::Postgres { .. } => PG_POOL,
            crate::store::StoreTarget::Sqlite(_) => 0,
        };
        let reserve = BASE_RESERVE
            + store
            + u64::from(cfg.dispatch.workers)
            + 3 * u64::from(cfg.archive.workers)
            + OTHER_CALLS;
        let configured = u64::from(cfg.admin.max_connections.max(1));
        // Admin counts once; the callback server twice (its connection and its GET).
        let shares = 1 + if cfg.callback.public_url.is_empty() {
            0
        } else {
            2
        };
        let fair = limit.saturating_sub(reserve) / shares;
        let starved = fair < MIN_CAP;
        let cap = configured.min(fair.max(MIN_CAP));
        Self {
            limit,
            reserve,
            per_server: usize::try_from(cap).unwrap_or(usize::MAX),
            derived: cap < configured,
            starved,
        }
    }

    /// One line for the startup log and `seedq doctor`.
    pub fn describe(&self) -> String {
        let limit = if self.limit == u64::MAX {
            "unlimited".to_string()
        } else {
            self.limit.to_string()
        };
        let how = if self.derived {
            format!(
                "derived from {limit} descriptors less {} reserved (admin.max_connections is higher)",
                self.reserve
            )
        } else {
            format!(
                "admin.max_connections; {limit} descriptors less {} reserved would allow more",
                self.reserve
            )
        };
        format!(
            "admin and callback servers hold at most {} connections each ({how})",
            self.per_server
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(callback: bool) -> Config {
        let mut c = Config::default();
        if callback {
            c.callback.public_url = "http://127.0.0.1:1/hook".into();
        }
        c
    }

    #[test]
    fn a_low_limit_caps_the_servers_below_the_configured_maximum() {
        // The shipped config: 8 create workers, 4 archive workers, SQLite.
        let b = Budget::for_limit(&cfg(true), 128);
        assert_eq!(b.reserve, 32 + 8 + 12 + 8);
        assert_eq!(b.per_server, (128 - 60) / 3);
        assert!(b.derived && !b.starved);
        // The servers and the reserve fit the limit together.
        assert!(b.reserve + 3 * b.per_server as u64 <= 128);
    }

    #[test]
    fn a_high_limit_leaves_the_configured_maximum() {
        let b = Budget::for_limit(&cfg(true), 1 << 20);
        assert_eq!(b.per_server, 256);
        assert!(!b.derived);
        assert_eq!(Budget::for_limit(&cfg(false), u64::MAX).per_server, 256);
    }

    #[test]
    fn without_callbacks_the_admin_server_gets_the_whole_share() {
        let b = Budget::for_limit(&cfg(false), 128);
        assert_eq!(b.per_server, 128 - 60);
    }

    #[test]
    fn a_starved_limit_still_serves_a_few() {
        let b = Budget::for_limit(&cfg(true), 40);
        assert_eq!(b.per_server, 4);
        assert!(b.starved);
    }

    #[test]
    fn raising_keeps_the_soft_limit_within_the_hard_limit() {
        let n = raise_nofile();
        assert!(n.soft <= n.hard);
        assert!(n.soft >= n.was.min(n.hard));
        assert_eq!(current_nofile(), n.soft);
    }
}
