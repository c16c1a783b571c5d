//! Shared test scaffolding: a temp dir with a config file, and the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `seedq` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_seedq")
}

/// A temp dir with a `config.toml` and a store; each test gets its own.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The store's URL when it is a fresh PostgreSQL database rather than `seedq.db` in
    /// `dir`, for tests that talk to it directly.
    pub postgres_url: Option<String>,
}

/// True when `SEEDQ_TEST_STORE=postgres`: the suite then runs on PostgreSQL (tests/run.sh
/// runs it once on each backend), except the tests about the SQLite file itself.
pub fn postgres_mode() -> bool {
    std::env::var("SEEDQ_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// A fresh database on this test binary's scratch PostgreSQL cluster.
pub fn fresh_postgres() -> String {
    seedq::pgscratch::shared()
        .create_db("it")
        .expect("create a test database")
}

impl TestEnv {
    /// A fresh environment whose config has `extra` appended, on the backend the run is for
    /// (see [`postgres_mode`]).
    pub fn new(extra: &str) -> Self {
        if postgres_mode() {
            Self::new_postgres(extra)
        } else {
            Self::new_sqlite(extra)
        }
    }

    /// On SQLite whatever the run is for: tests about the database file itself.
    pub fn new_sqlite(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("seedq.db");
        let store = format!("path = {:?}", db.display().to_string());
        Self::with_store(dir, &store, extra, None)
    }

    /// On a fresh PostgreSQL database.
    pub fn new_postgres(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = fresh_postgres();
        let store = format!("url = {url:?}");
        Self::with_store(dir, &store, extra, Some(url))
    }

    fn with_store(
        dir: tempfile::TempDir,
        store: &str,
        extra: &str,
        postgres_url: Option<String>,
    ) -> Self {
        let config = dir.path().join("config.toml");
        let text = format!("[store]\n{store}\n\n[archive]\nurl = \"\"\n\n{extra}\n");
        std::fs::write(&config, text).expect("write config");
        Self {
            dir,
            config,
            postgres_url,
        }
    }

    /// Refused input stores nothing: on SQLite not even the file, on PostgreSQL no job.
    pub fn assert_nothing_stored(&self) {
        if self.postgres_url.is_some() {
            assert!(self.jobs().is_empty(), "nothing stored");
        } else {
            assert!(!self.path().join("seedq.db").exists(), "nothing stored");
        }
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A command for the binary with this env's config and a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("ARK_API_KEY")
            .env_remove("SEEDQ_CONFIG")
            .env("NO_COLOR", "1");
        if std::env::var_os("TEST_LOG").is_none() {
            c.env("RUST_LOG", "off");
        }
        c
    }

    /// A command with the simulator's API key in the environment, as the service needs.
    pub fn keyed(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(args);
        c.env("ARK_API_KEY", SIM_KEY);
        c
    }

    /// `seedq run` to completion; asserts exit 0.
    pub fn run_service(&self) {
        let out = self.keyed(&["run"]).output().expect("run seedq run");
        assert!(
            out.status.success(),
            "seedq run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `seedq run` to completion where some jobs are meant to fail: asserts exit 3 (jobs
    /// left over) and returns the summary it printed.
    pub fn run_service_with_failures(&self) -> String {
        let out = self.keyed(&["run"]).output().expect("run seedq run");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "seedq run: {err}");
        assert!(err.contains("need attention"), "{err}");
        err
    }

    /// Runs the binary to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run seedq")
    }

    /// Runs the binary and returns stdout, asserting success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "seedq {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ls --json` parsed; empty when no database was created (read commands don't create
    /// one, and refused input stores nothing).
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        if self.postgres_url.is_none() && !self.path().join("seedq.db").exists() {
            return Vec::new();
        }
        let out = self.ok(&["ls", "--json", "--limit", "100000"]);
        serde_json::from_str(&out).expect("ls --json is JSON")
    }
}

/// A child process that is killed when the test ends, even when an assertion fails first.
pub struct Guard(pub std::process::Child);

impl Guard {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("wait for child")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestEnv {
    /// Starts `seedq serve` in the background, quietly, with the simulator's key.
    pub fn serve(&self) -> Guard {
        let mut c = self.keyed(&["serve"]);
        if std::env::var_os("TEST_LOG").is_none() {
            c.stderr(std::process::Stdio::null());
        }
        Guard(c.spawn().expect("spawn seedq serve"))
    }
}

/// Exit code and stderr of a finished command.
pub fn code_and_err(out: &Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `seedq sim` child process on an ephemeral port; killed on drop.
pub struct SimProc {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT/api/v3`.
    pub base_url: String,
    /// `http://127.0.0.1:PORT`.
    pub root: String,
}

/// The API key tests use.
pub const SIM_KEY: &str = "sk-test";

impl SimProc {
    /// Starts the simulator with `toml` as its config file (in `dir`).
    pub fn start(toml: &str) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("sim.toml");
        std::fs::write(&cfg, toml).expect("write sim config");
        let mut cmd = Command::new(bin());
        cmd.args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            SIM_KEY,
            "--sim-config",
        ])
        .arg(&cfg)
        .env("SEEDQ_CONFIG", "/dev/null")
        .stdout(std::process::Stdio::piped());
        if std::env::var_os("TEST_LOG").is_none() {
            cmd.env("RUST_LOG", "off")
                .stderr(std::process::Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn seedq sim");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the sim's first line");
        let base_url = line
            .trim()
            .strip_prefix("seedq sim listening on ")
            .unwrap_or_else(|| panic!("unexpected sim output {line:?}"))
            .to_string();
        let root = base_url.trim_end_matches("/api/v3").to_string();
        Self {
            child,
            _dir: dir,
            base_url,
            root,
        }
    }

    /// `GET /_sim/stats`.
    pub fn stats(&self) -> serde_json::Value {
        http_json("GET", &format!("{}/_sim/stats", self.root), None)
    }

    /// `GET /_sim/tasks`.
    pub fn tasks(&self) -> Vec<serde_json::Value> {
        let v = http_json("GET", &format!("{}/_sim/tasks", self.root), None);
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny blocking HTTP/1.1 JSON client for the sim's admin endpoints (loopback only).
pub fn http_json(method: &str, url: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let text = String::from_utf8_lossy(&resp);
    let (head, payload) = text.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 2"), "{method} {url}: {head}");
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Polls `f` until it returns true or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// A sim that turns a minute into 120 ms and renders tiny videos, once per clip shape (the
/// pictures do not matter here, and rendering hundreds would dominate the suite's CPU time).
pub fn fast_sim(extra: &str) -> SimProc {
    SimProc::start(&format!(
        "time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n{extra}\n"
    ))
}

/// Writes `lines` as the JSONL file `name` in the env's directory; returns its path.
pub fn write_jobs(env: &TestEnv, name: &str, lines: &[String]) -> String {
    let p = env.path().join(name);
    std::fs::write(&p, lines.join("\n")).expect("write jobs");
    p.to_string_lossy().into_owned()
}

/// seedq config for a fast run against `sim` (millisecond-scale polling and backoff).
pub fn worker_config(sim: &SimProc, extra: &str) -> String {
    worker_config_with(sim, "", extra)
}

/// [`worker_config`] with extra lines in its `[dispatch]` table.
pub fn worker_config_with(sim: &SimProc, dispatch: &str, extra: &str) -> String {
    format!(
        r#"
[ark]
base_url = "{base}"
connect_timeout = "1s"
request_timeout = "2s"
# The read rates' second, shrunk like the sims' (time_scale 0.002 to 0.01, whose read limits
# count over windows of at least 100 ms).
rate_window = "10ms"

[dispatch]
lease = "3s"
idle_interval = "50ms"
backoff_base = "20ms"
backoff_max = "200ms"
throttle_pause = "100ms"
reconcile_interval = "100ms"
reconcile_grace = "3s"
workers = 4
{dispatch}

[poll]
first_poll_after = "100ms"
flex_first_poll_after = "200ms"
min_interval = "30ms"
max_interval = "200ms"
flex_max_interval = "200ms"
callback_safety_interval = "2s"

[service]
shutdown_grace = "5s"

[admin]
listen = ""

{extra}
"#,
        base = sim.base_url
    )
}

/// `seedq run`, killed (and the test failed) if it does not exit by itself within `secs`.
pub fn run_within(env: &TestEnv, secs: u64) -> Output {
    let mut c = env.keyed(&["run"]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn seedq run");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "seedq run did not finish within {secs} s; jobs: {:?}\n{}",
                job_states(env),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each job's state and last error, for failure messages.
pub fn job_states(env: &TestEnv) -> Vec<String> {
    env.jobs()
        .iter()
        .map(|j| {
            format!(
                "{} {} {}",
                j["state"].as_str().unwrap_or(""),
                j["last_error_code"].as_str().unwrap_or(""),
                j["last_error_message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// A command with the proxy variables removed, so loopback calls go straight to the sim.
pub fn no_proxy(mut c: Command) -> Command {
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c.env("NO_PROXY", "127.0.0.1,localhost");
    c
}

/// Where `tests/run.sh` installs the third-party `seedance` CLI (`SEEDQ_TEST_SEEDANCE`).
pub fn seedance_bin() -> PathBuf {
    std::env::var_os("SEEDQ_TEST_SEEDANCE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/bin/seedance"),
        PathBuf::from,
    )
}

/// `seedance generate --wait` (the third-party CLI, crates.io 0.3.0) against the Ark API at
/// `base` with API key `key`: it creates, polls every second and downloads the video to
/// `out_file`; its config and caches live in `home`. Fails with its output unless it exits 0;
/// returns its stdout.
pub fn seedance_generate(base: &str, key: &str, home: &Path, out_file: &Path) -> String {
    let bin = seedance_bin();
    assert!(
        bin.is_file(),
        "the seedance CLI is not at {}; run tests/run.sh, or: cargo install seedance --version \
         0.3.0 --locked --root target/test-tools (and set SEEDQ_TEST_SEEDANCE to its path)",
        bin.display()
    );
    let mut c = Command::new(&bin);
    c.args(["generate", "--json", "--prompt", "a red kite over the sea"])
        .args(["--wait", "--poll-interval", "1", "--timeout", "60"])
        .arg("--output")
        .arg(out_file)
        // Its config: figment reads SEEDANCE_* variables; the key also from SEEDANCE_API_KEY.
        .env("SEEDANCE_BASE_URL", base)
        .env("SEEDANCE_API_KEY", key)
        .env_remove("ARK_API_KEY")
        // Its config file, duplicate guard and default output live under HOME.
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("NO_COLOR", "1");
    let out = no_proxy(c).output().expect("run seedance");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "seedance generate failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A free loopback port (bound, then released for the service to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An HTTP GET on loopback: the status and body (`None`: no answer).
pub fn get_status(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

/// Sends `sig` (`-STOP`, `-CONT`, `-KILL`…) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Waits until every thread of `pid` is stopped (`T` in `/proc/<pid>/task/*/stat`).
fn wait_stopped(pid: u32) {
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                        // The state follows the command name's closing parenthesis.
                        stat.rsplit_once(") ")
                            .is_some_and(|(_, rest)| rest.starts_with(['T', 't']))
                    })
                })
            })
            .unwrap_or(false)
    };
    wait_until(5, "every thread of the worker to stop", stopped);
}

/// SIGSTOPs the seedq process `pid` while it holds no transaction open in `env`'s store.
///
/// A process frozen inside a transaction keeps its locks: SQLite's write lock until it dies,
/// PostgreSQL's row and advisory locks until the server ends the session
/// (`idle_in_transaction_session_timeout`, a minute: crates/seedq-store/src/postgres/mod.rs). The tests that
/// stop a worker are about its silence, not that, so:
/// - on SQLite the test takes the write lock first, which waits out any write transaction of
///   `pid`'s, stops it, and lets go;
/// - on PostgreSQL it stops the process, asks `pg_stat_activity` whether any of its sessions
///   (named `seedq/<pid>`) is inside a statement or a transaction, and if so lets it run a
///   moment and tries again.
pub fn stop_outside_transactions(env: &TestEnv, pid: u32) {
    let Some(url) = &env.postgres_url else {
        let db = rusqlite::Connection::open(env.path().join("seedq.db")).expect("open");
        db.busy_timeout(Duration::from_secs(10)).expect("busy");
        db.execute_batch("BEGIN IMMEDIATE").expect("the write lock");
        signal(pid, "-STOP");
        // `kill` returns once the signal is sent, not once every thread has stopped: a thread
        // inside a lock attempt could still take the write lock the ROLLBACK frees, and then
        // hold it stopped, so that no other worker could write.
        wait_stopped(pid);
        db.execute_batch("ROLLBACK").expect("rollback");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let name = format!("seedq/{pid}");
        for _ in 0..500 {
            signal(pid, "-STOP");
            let busy: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND state <> 'idle'",
                    &[&name],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if busy == 0 {
                return;
            }
            signal(pid, "-CONT");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("seedq {pid} was inside a transaction at each of 500 tries");
    });
}
