//! A throwaway PostgreSQL cluster for tests and `seedq bench`.
//!
//! [`Cluster::start`] runs the system's own `initdb` and `pg_ctl` (Debian's `postgresql`
//! package; `tests/run.sh` installs it) into a fresh temp dir and starts a server on a free
//! loopback port with durability switched off (`fsync`, `synchronous_commit`,
//! `full_page_writes`): the data is thrown away anyway, and the tests and benchmarks measure
//! seedq, not the disk. [`Cluster::create_db`] makes a fresh database per test and returns its
//! `postgres://` URL, so tests share one server without sharing state.
//!
//! # Root
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root, and CI runs as root. Then the
//! server side runs as the `postgres` user (which the Debian package creates; `nobody` when it
//! is missing) through `runuser -u USER --`, and the temp dir is chowned to that user. The
//! client tools (`createdb`) run as ourselves: they connect over TCP with `trust` auth.
//!
//! # Clean-up
//! An owned [`Cluster`] stops the server (`pg_ctl stop -m immediate`) and removes its dir on
//! drop. The process-wide [`shared`] cluster lives in a static, and statics are never
//! dropped; a test binary that panics hard or is killed does not unwind either. So every
//! cluster also gets a watchdog: a small `sh` that blocks reading a pipe whose only write end
//! this process holds (`O_CLOEXEC`, so no child inherits it). However this process ends (a
//! normal exit, a panic, `SIGKILL`), the kernel closes that end, the watchdog reads EOF,
//! stops the server and removes the dir. It runs in its own process group and ignores
//! SIGINT/SIGHUP, so a Ctrl-C aimed at `cargo test` does not take it down first. We chose
//! this over a pid-polling loop (pid reuse, and a non-root watchdog cannot signal a root pid)
//! and over exit hooks (no `ctor`, no `libc`, and `SIGKILL` runs no hook).
//!
//! Everything here blocks (it spawns processes and waits); async callers such as the
//! benchmarks call it through `tokio::task::spawn_blocking` or before starting their runtime.
//! There is no SQL here: SQL lives in `crates/seedq-store/src/`.

use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where Debian (and Ubuntu) install each major version's server binaries: `<root>/<ver>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Overrides the search for the server binaries: a directory holding `initdb` and `pg_ctl`.
pub const BIN_ENV: &str = "SEEDQ_PG_BIN";

/// Extra server settings for a scratch cluster, `name=value` separated by spaces (for a
/// benchmark's profile: `SEEDQ_PG_SETTINGS="shared_preload_libraries=pg_stat_statements"`).
/// Names are lower case letters, digits, `_` and `.`; values letters, digits and `_.,:-`.
pub const SETTINGS_ENV: &str = "SEEDQ_PG_SETTINGS";

/// [`SETTINGS_ENV`] as `-c name=value` options; a setting outside its alphabet is an error
/// naming it (it goes into the command line `pg_ctl` hands to a shell).
fn extra_settings() -> Result<String, PgScratchError> {
    let Ok(all) = std::env::var(SETTINGS_ENV) else {
        return Ok(String::new());
    };
    let mut out = String::new();
    for s in all.split_whitespace() {
        let ok = s.split_once('=').is_some_and(|(k, v)| {
            !k.is_empty()
                && !v.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c))
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.,:-".contains(c))
        });
        if !ok {
            return Err(PgScratchError::Settings(s.to_string()));
        }
        out.push_str(" -c ");
        out.push_str(s);
    }
    Ok(out)
}

/// The superuser `initdb` creates; every URL connects as it.
pub const SUPERUSER: &str = "seedq";

/// libpq's environment variables: an inherited `PGHOST` or `PGDATABASE` must not point our
/// tools at somebody else's server.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
];

/// How many times a start is retried when another process took the free port first.
const PORT_ATTEMPTS: usize = 5;

/// Numbers temp dirs and databases, so names never repeat within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a scratch cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PgScratchError {
    /// No usable `initdb`/`pg_ctl`.
    #[error(
        "no PostgreSQL server binaries: {0}; install Debian's `postgresql` package (tests/run.sh \
         does) or set {BIN_ENV} to the directory holding initdb and pg_ctl"
    )]
    NoBinaries(String),
    /// A file-system step or spawning a tool failed.
    #[error("{what}")]
    Io {
        /// The step, with the path or program.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and reported failure.
    #[error("{what} failed ({status}): {output}")]
    Tool {
        /// The step.
        what: String,
        /// Its exit status.
        status: String,
        /// Its stderr and stdout (or the server log), trimmed.
        output: String,
    },
    /// A setting of [`SETTINGS_ENV`] outside its alphabet.
    #[error(
        "{SETTINGS_ENV}: {0:?} is not name=value (names: a-z, 0-9, _ and .; values: letters, \
         digits and _.,:-)"
    )]
    Settings(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgScratchError {
    let what = what.into();
    move |source| PgScratchError::Io { what, source }
}

/// Who runs the server side.
#[derive(Clone, Debug)]
enum RunAs {
    /// Ourselves (not root).
    Me,
    /// An unprivileged user, through `runuser`, because we are root.
    User { name: String, uid: u32, gid: u32 },
}

/// A running throwaway PostgreSQL server; stopped and deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    run_as: RunAs,
    /// The temp dir: `data/`, `sock/`, `server.log`.
    base: PathBuf,
    port: u16,
    /// The watchdog's stdin; closing it (drop, or this process ending) makes it clean up.
    watchdog_pipe: Option<ChildStdin>,
    watchdog: Option<Child>,
    /// The server's `max_connections`.
    max_connections: u32,
}

impl Cluster {
    /// Finds the binaries, runs `initdb` into a new temp dir and starts the server on a free
    /// loopback port. Takes a second or two.
    pub fn start() -> Result<Cluster, PgScratchError> {
        Self::start_with_max_connections(200)
    }

    /// [`Cluster::start`] with `max_connections` set to `n`: a server whose connections
    /// another client can take all of (the store-outage tests).
    pub fn start_with_max_connections(n: u32) -> Result<Cluster, PgScratchError> {
        let bin = find_bin_dir()?;
        let run_as = run_as()?;
        let base = make_base(&run_as)?;
        let mut cluster = Cluster {
            bin,
            run_as,
            base,
            port: 0,
            watchdog_pipe: None,
            watchdog: None,
            max_connections: n,
        };
        // The watchdog first, so a crash during initdb or start leaves nothing behind either;
        // on an error below, `cluster` drops and cleans up.
        cluster.spawn_watchdog()?;
        cluster.initdb()?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding the data dir, the socket dir and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// The server's URL without a database: `postgres://seedq@127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}", self.port)
    }

    /// The URL of database `db` on this server (which need not exist yet).
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.base_url())
    }

    /// Creates a new, empty database and returns its URL. `label` (e.g. the test's name) is
    /// sanitised and made unique with this process's id and a counter, so concurrent tests and
    /// test binaries never collide.
    pub fn create_db(&self, label: &str) -> Result<String, PgScratchError> {
        let name = db_name(label, std::process::id(), next());
        let mut cmd = Command::new(self.bin.join("createdb"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
        ])
        .arg(&name);
        clean_env(&mut cmd);
        run(&mut cmd, &format!("createdb {name}"))?;
        Ok(self.url(&name))
    }

    /// A server-side tool (`initdb`, `pg_ctl`), as the unprivileged user when we are root.
    fn server_tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut cmd = match &self.run_as {
            RunAs::Me => Command::new(path),
            RunAs::User { name, .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", name, "--"]).arg(path);
                c
            }
        };
        // Our own cwd may not be readable by that user, and initdb and pg_ctl look it up.
        cmd.current_dir(&self.base);
        clean_env(&mut cmd);
        cmd
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    fn log(&self) -> PathBuf {
        self.base.join("server.log")
    }

    fn initdb(&self) -> Result<(), PgScratchError> {
        let mut cmd = self.server_tool("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8"])
            // The C locale exists everywhere; a LANG naming a locale that is not generated
            // would make initdb fail.
            .arg("--no-locale");
        run(&mut cmd, "initdb").map(drop)
    }

    /// `pg_ctl start` on a free port; retried on a new port when another process took it
    /// between our probe and the server's bind.
    fn start_server(&mut self) -> Result<(), PgScratchError> {
        let sock = self.base.join("sock");
        std::fs::create_dir(&sock).map_err(io(format!("creating {}", sock.display())))?;
        self.give(&sock)?;
        let sock = shell_quote(&sock)?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log_before = file_len(&self.log());
            let opts = format!(
                "-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections={}{}",
                self.max_connections,
                extra_settings()?
            );
            let mut cmd = self.server_tool("pg_ctl");
            cmd.args(["-w", "-t", "60", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.log())
                .args(["-o", &opts, "start"]);
            match run(&mut cmd, "pg_ctl start") {
                Ok(_) => {
                    self.port = port;
                    return Ok(());
                }
                Err(PgScratchError::Tool {
                    what,
                    status,
                    output,
                }) => {
                    let log = read_from(&self.log(), log_before);
                    let err = PgScratchError::Tool {
                        what: format!("{what} on port {port}"),
                        status,
                        output: format!("{output}; server log: {}", log.trim()),
                    };
                    if !log.contains("Address already in use") {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| PgScratchError::NoBinaries("no start attempted".into())))
    }

    /// Chowns `path` to the server's user when that is not us.
    fn give(&self, path: &Path) -> Result<(), PgScratchError> {
        give(&self.run_as, path)
    }

    /// The stop command, as argv: the watchdog and `stop` both run it.
    fn stop_argv(&self) -> Vec<std::ffi::OsString> {
        let cmd = self.server_tool("pg_ctl");
        let mut argv = vec![cmd.get_program().to_owned()];
        argv.extend(cmd.get_args().map(|a| a.to_owned()));
        argv.extend(["stop", "-m", "immediate", "-D"].map(Into::into));
        argv.push(self.data().into_os_string());
        argv
    }

    fn spawn_watchdog(&mut self) -> Result<(), PgScratchError> {
        // `cat` returns at EOF, i.e. once every write end of its stdin is closed; the only
        // one is ours. Then the stop command ($0 "$@") and the dir's removal.
        const SCRIPT: &str = r#"trap '' HUP INT
cat >/dev/null
"$0" "$@" >/dev/null 2>&1
rm -rf -- "$SEEDQ_PG_SCRATCH_DIR""#;
        let argv = self.stop_argv();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .args(&argv)
            .env("SEEDQ_PG_SCRATCH_DIR", &self.base)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io("spawning the clean-up watchdog (sh)"))?;
        self.watchdog_pipe = child.stdin.take();
        self.watchdog = Some(child);
        Ok(())
    }

    /// `pg_ctl stop -m immediate`, waiting until the server is gone.
    fn stop(&self) -> Result<(), PgScratchError> {
        let argv = self.stop_argv();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir(&self.base);
        clean_env(&mut cmd);
        run(&mut cmd, "pg_ctl stop").map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.port != 0
            && let Err(e) = self.stop()
        {
            // Drop cannot return it; the watchdog below tries the same stop once more.
            eprintln!("pgscratch: {e}");
        }
        drop(self.watchdog_pipe.take());
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// One cluster for the whole process, started on first use; the watchdog stops it when the
/// process ends. Panics when it cannot start: a test that needs PostgreSQL cannot go on, and
/// the message says what is missing.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| Cluster::start().map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => panic!("cannot start the scratch PostgreSQL cluster: {e}"),
    }
}

/// Names an existing PostgreSQL server for the tests to use instead of a scratch cluster.
pub const SERVER_ENV: &str = "SEEDQ_TEST_PG";

/// The base URL (no database) of the PostgreSQL server tests create their databases on:
/// `$SEEDQ_TEST_PG` when set (a server of your own, e.g. to inspect what a test left), else
/// the [`shared`] scratch cluster's, started on first use. Either way the tests need nothing
/// set up beforehand, and cannot pass by skipping PostgreSQL.
pub fn server_url() -> String {
    match std::env::var(SERVER_ENV) {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_owned(),
        _ => shared().base_url(),
    }
}

/// The server binaries: `$SEEDQ_PG_BIN`, else the newest `/usr/lib/postgresql/<ver>/bin`
/// holding `initdb`.
pub fn find_bin_dir() -> Result<PathBuf, PgScratchError> {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        for tool in ["initdb", "pg_ctl", "createdb"] {
            if !dir.join(tool).is_file() {
                return Err(PgScratchError::NoBinaries(format!(
                    "{BIN_ENV}={} has no {tool}",
                    dir.display()
                )));
            }
        }
        return Ok(dir);
    }
    newest_bin_dir(Path::new(DEBIAN_ROOT))
}

/// The `<root>/<version>/bin` with the highest numeric version that holds `initdb`.
fn newest_bin_dir(root: &Path) -> Result<PathBuf, PgScratchError> {
    let missing =
        || PgScratchError::NoBinaries(format!("no {}/<version>/bin/initdb", root.display()));
    let entries = std::fs::read_dir(root).map_err(|_| missing())?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // "15", "9.6": numeric parts, compared as numbers (9.6 < 15).
            let version = name
                .split('.')
                .map(|p| p.parse::<u64>().ok())
                .collect::<Option<Vec<_>>>()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
        .ok_or_else(missing)
}

/// `label_pid_n`: lower-case ASCII letters, digits and `_`, within PostgreSQL's 63 bytes
/// (NAMEDATALEN - 1; a longer name would be truncated, and two could meet).
fn db_name(label: &str, pid: u32, n: u64) -> String {
    let suffix = format!("_{pid}_{n}");
    let mut clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // An identifier must not start with a digit, and createdb would read "-x" as an option.
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert_str(0, "db_");
    }
    // All ASCII by now, so any byte index is a char boundary.
    clean.truncate(63 - suffix.len());
    clean + &suffix
}

fn next() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Ourselves, or (as root) the `postgres` user, else `nobody`.
fn run_as() -> Result<RunAs, PgScratchError> {
    if id(&["-u"])? != 0 {
        return Ok(RunAs::Me);
    }
    for name in ["postgres", "nobody"] {
        if let (Ok(uid), Ok(gid)) = (id(&["-u", name]), id(&["-g", name])) {
            return Ok(RunAs::User {
                name: name.to_owned(),
                uid,
                gid,
            });
        }
    }
    Err(PgScratchError::NoBinaries(
        "running as root, and neither the `postgres` nor the `nobody` user exists to run \
         initdb as (initdb refuses root)"
            .into(),
    ))
}

/// `id ARGS`, parsed as a number: our euid, or a user's uid/gid.
fn id(args: &[&str]) -> Result<u32, PgScratchError> {
    let out = run(
        Command::new("id").args(args),
        &format!("id {}", args.join(" ")),
    )?;
    let text = String::from_utf8_lossy(&out);
    text.trim().parse().map_err(|_| PgScratchError::Tool {
        what: format!("id {}", args.join(" ")),
        status: "0".into(),
        output: format!("not a number: {:?}", text.trim()),
    })
}

/// A new empty dir, mode 0700, owned by the server's user, under the system temp dir (or
/// under /tmp when another user could not reach the system temp dir).
fn make_base(run_as: &RunAs) -> Result<PathBuf, PgScratchError> {
    let mut parent = std::env::temp_dir();
    if matches!(run_as, RunAs::User { .. }) && !world_searchable(&parent) {
        parent = PathBuf::from("/tmp");
    }
    loop {
        let dir = parent.join(format!("seedq-pg-{}-{}", std::process::id(), next()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io(format!("chmod {}", dir.display())))?;
                give(run_as, &dir)?;
                return Ok(dir);
            }
            // A leftover of an earlier process with our pid: take the next number.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
        }
    }
}

/// Whether every directory from `/` down to `dir` lets others through (`o+x`).
fn world_searchable(dir: &Path) -> bool {
    dir.ancestors().all(|d| {
        std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

fn give(run_as: &RunAs, path: &Path) -> Result<(), PgScratchError> {
    match run_as {
        RunAs::Me => Ok(()),
        RunAs::User { uid, gid, name } => std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
            .map_err(io(format!("chown {} to {name}", path.display()))),
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, PgScratchError> {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(io("binding 127.0.0.1:0 to find a free port"))?;
    let port = l
        .local_addr()
        .map_err(io("reading the probe's port"))?
        .port();
    Ok(port)
}

/// Single-quoted for the shell line `pg_ctl -o` builds.
fn shell_quote(path: &Path) -> Result<String, PgScratchError> {
    let s = path.to_str().filter(|s| !s.contains('\'')).ok_or_else(|| {
        PgScratchError::NoBinaries(format!(
            "the temp dir {} is not valid UTF-8 or holds a quote",
            path.display()
        ))
    })?;
    Ok(format!("'{s}'"))
}

fn clean_env(cmd: &mut Command) {
    for v in LIBPQ_ENV {
        cmd.env_remove(v);
    }
}

/// Runs `cmd` to completion with no stdin; its stdout on success, else an error with both
/// of its outputs.
fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>, PgScratchError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {what} ({:?})", cmd.get_program())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        text.push_str("; ");
        text.push_str(stdout.trim());
    }
    Err(PgScratchError::Tool {
        what: what.to_owned(),
        status: out.status.to_string(),
        output: text,
    })
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What was appended to `path` after byte `from` (the server log of one start attempt).
fn read_from(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.read_to_string(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    /// Whether anything accepts on 127.0.0.1:`port`.
    fn accepts(port: u16) -> bool {
        TcpStream::connect_timeout(
            &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_secs(2),
        )
        .is_ok()
    }

    /// `psql URL -tAc 'select current_database()'`: proves the URL reaches that database.
    fn current_database(bin: &Path, url: &str) -> String {
        let mut cmd = Command::new(bin.join("psql"));
        cmd.args(["-X", "-tA", "-c", "select current_database()", url]);
        clean_env(&mut cmd);
        let out = run(&mut cmd, "psql").expect("psql against the new database");
        String::from_utf8_lossy(&out).trim().to_owned()
    }

    #[test]
    fn the_newest_version_with_an_initdb_wins() {
        let root = tempfile::tempdir().expect("tempdir");
        for (ver, has_initdb) in [("9.6", true), ("15", true), ("16", false), ("common", true)] {
            let bin = root.path().join(ver).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            if has_initdb {
                std::fs::write(bin.join("initdb"), "").expect("touch");
            }
        }
        let got = newest_bin_dir(root.path()).expect("a bin dir");
        assert_eq!(got, root.path().join("15").join("bin"));

        let empty = tempfile::tempdir().expect("tempdir");
        let err = newest_bin_dir(empty.path())
            .expect_err("nothing there")
            .to_string();
        assert!(err.contains("bin/initdb"), "{err}");
        assert!(err.contains("postgresql"), "{err}");
    }

    #[test]
    fn db_names_are_identifiers_and_unique() {
        assert_eq!(db_name("Fleet test-1", 42, 7), "fleet_test_1_42_7");
        assert_eq!(db_name("-x", 1, 2), "db__x_1_2");
        assert_eq!(db_name("9lives", 1, 2), "db_9lives_1_2");
        let long = db_name(&"a".repeat(100), u32::MAX, u64::MAX);
        assert_eq!(long.len(), 63, "{long}");
        assert!(
            long.ends_with(&format!("_{}_{}", u32::MAX, u64::MAX)),
            "{long}"
        );
    }

    #[test]
    fn a_cluster_serves_two_databases_and_drop_stops_it() {
        let cluster = Cluster::start().expect("start a scratch cluster");
        let port = cluster.port();
        let dir = cluster.dir().to_owned();
        assert!(accepts(port));
        let a = cluster.create_db("first").expect("createdb");
        let b = cluster.create_db("first").expect("createdb");
        assert_ne!(a, b, "each call makes its own database");
        for url in [&a, &b] {
            assert!(url.starts_with(&format!("postgres://seedq@127.0.0.1:{port}/first_")));
            let mut ready = Command::new(cluster.bin.join("pg_isready"));
            ready.args(["-d", url]);
            clean_env(&mut ready);
            run(&mut ready, "pg_isready").expect("pg_isready");
            let name = url.rsplit('/').next().expect("a path");
            assert_eq!(current_database(&cluster.bin, url), name);
        }
        drop(cluster);
        assert!(
            !accepts(port),
            "the server still accepts on {port} after drop"
        );
        assert!(!dir.exists(), "{} is still there after drop", dir.display());
    }

    #[test]
    fn the_shared_cluster_takes_concurrent_createdbs() {
        let cluster = shared();
        let urls: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| s.spawn(move || cluster.create_db(&format!("par{i}"))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread").expect("createdb"))
                .collect()
        });
        for url in &urls {
            let name = url.rsplit('/').next().expect("a path");
            assert_eq!(current_database(&cluster.bin, url), name);
        }
        assert!(std::ptr::eq(cluster, shared()), "one cluster per process");
        if std::env::var_os(SERVER_ENV).is_none() {
            assert_eq!(server_url(), cluster.base_url());
            assert_eq!(urls[0].rsplit_once('/').expect("a path").0, server_url());
        }
    }

    /// Set for the child run of `helper_start_shared_then_abort`: where it writes the port
    /// and dir of the cluster it abandons.
    const CHILD_ENV: &str = "SEEDQ_PGSCRATCH_CHILD_OUT";

    #[test]
    #[ignore = "helper: run as a child process by a_killed_process_leaves_no_cluster"]
    fn helper_start_shared_then_abort() {
        let out = std::env::var_os(CHILD_ENV)
            .expect("run only by a_killed_process_leaves_no_cluster, which sets the out file");
        let cluster = shared();
        assert!(accepts(cluster.port()));
        let line = format!("{} {}", cluster.port(), cluster.dir().display());
        std::fs::write(out, line).expect("write the out file");
        // No unwinding, no destructors, no exit hooks: only the kernel closing our fds.
        std::process::abort();
    }

    #[test]
    fn a_killed_process_leaves_no_cluster() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("cluster");
        let exe = std::env::current_exe().expect("the test binary");
        let status = Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "tests::helper_start_shared_then_abort",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run the child");
        assert!(!status.success(), "the child aborts");
        let line = std::fs::read_to_string(&out).expect("the child wrote its cluster");
        let (port, dir) = line.split_once(' ').expect("port and dir");
        let port: u16 = port.parse().expect("a port");
        let dir = PathBuf::from(dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        while (accepts(port) || dir.exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !accepts(port),
            "the abandoned server still accepts on {port}"
        );
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}
