//! The parts of `tests/it/helpers.rs` the browser tests need (copied, so the two targets do
//! not depend on each other): the real binary, the simulator child and a `seedq serve` child.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `seedq` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_seedq")
}

/// The API key the simulator accepts.
pub const SIM_KEY: &str = "sk-test";

/// A child process killed (and reaped) when dropped, even when an assertion fails first.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quiet(c: &mut Command) {
    if std::env::var_os("TEST_LOG").is_none() {
        c.env("RUST_LOG", "off").stderr(Stdio::null());
    }
}

/// `seedq sim` on an ephemeral port with `toml` as its config; returns it and `…/api/v3`.
pub fn start_sim(dir: &Path, toml: &str) -> (Guard, String) {
    use std::io::BufRead;
    let cfg = dir.join("sim.toml");
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
    .stdout(Stdio::piped());
    quiet(&mut cmd);
    let mut child = cmd.spawn().expect("spawn seedq sim");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the sim's first line");
    let base = line
        .trim()
        .strip_prefix("seedq sim listening on ")
        .unwrap_or_else(|| panic!("unexpected sim output {line:?}"))
        .to_string();
    (Guard(child), base)
}

/// A seedq installation in a temp dir: config, database, file archive.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    /// `config` is the whole config file; `{db}` and `{archive}` are filled in.
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let text = config
            .replace("{db}", &dir.path().join("seedq.db").display().to_string())
            .replace(
                "{archive}",
                &format!("file://{}", dir.path().join("archive").display()),
            );
        std::fs::write(&path, text).expect("write config");
        Self { dir, config: path }
    }

    /// A command for the binary with this config and a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("SEEDQ_CONFIG")
            .env("ARK_API_KEY", SIM_KEY)
            .env("NO_COLOR", "1");
        c
    }

    /// Runs the binary; asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run seedq");
        assert!(
            out.status.success(),
            "seedq {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `seedq ls --json`, parsed.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ls", "--json", "--limit", "100000"]))
            .expect("ls --json is JSON")
    }

    /// `seedq serve` in the background.
    pub fn serve(&self) -> Guard {
        let mut c = self.cmd(&["serve"]);
        c.stdout(Stdio::null());
        quiet(&mut c);
        Guard(c.spawn().expect("spawn seedq serve"))
    }
}
