//! Shared test scaffolding: a temp dir with a config file, and the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `seedq` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_seedq")
}

/// A temp dir with a `config.toml` and a DB path; each test gets its own.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl TestEnv {
    /// A fresh environment whose config has `extra` appended.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        let db = dir.path().join("seedq.db");
        let text = format!(
            "[store]\npath = {db:?}\n\n[archive]\nurl = \"\"\n\n{extra}\n",
            db = db.display().to_string()
        );
        std::fs::write(&config, text).expect("write config");
        Self { dir, config }
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

    /// `ls --json` parsed.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["ls", "--json", "--limit", "100000"]);
        serde_json::from_str(&out).expect("ls --json is JSON")
    }
}

/// Exit code and stderr of a finished command.
pub fn code_and_err(out: &Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
