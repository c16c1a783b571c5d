//! Storage: a database that cannot vanish under the service, read commands that never create
//! one, capped and checked input files, lean rows and images stored once.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::{Guard, TestEnv, code_and_err, wait_until};

/// A port nothing listens on: these tests need no Ark.
const NO_ARK: &str = "http://127.0.0.1:9/api/v3";

#[test]
fn serve_stops_with_an_error_when_its_database_directory_is_deleted() {
    let env = TestEnv::new(&format!("[ark]\nbase_url = \"{NO_ARK}\"\n"));
    let dir = env.path().join("data");
    let db = dir.join("q.db");
    let mut c = env.keyed(&["--db", db.to_str().expect("utf-8"), "serve"]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut service = Guard(c.spawn().expect("spawn serve"));
    wait_until(20, "the database file", || db.exists());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        service.0.try_wait().expect("try_wait").is_none(),
        "serve is running"
    );
    std::fs::remove_dir_all(&dir).expect("rm -r the database directory");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = service.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running on a deleted database"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = service.0.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    assert!(!status.success(), "exit status {status}: {err}");
    assert!(
        err.contains("no longer the one this process opened"),
        "stderr: {err}"
    );
}

#[test]
fn read_commands_on_a_mistyped_path_create_nothing() {
    let env = TestEnv::new("");
    let dir = env.path().join("typo");
    let db = dir.join("q.db");
    let db = db.to_str().expect("utf-8");
    for args in [
        vec!["ls"],
        vec!["stats"],
        vec!["show", "01J0000000000000000000000"],
        vec!["cancel", "01J0000000000000000000000"],
        vec!["batch", "ls"],
        vec!["export", "--batch", "b"],
    ] {
        let mut full = vec!["--db", db];
        full.extend(&args);
        let (code, err) = code_and_err(&env.cli(&full));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
    // A command that adds work creates it.
    env.ok(&[
        "--db",
        db,
        "submit",
        "a fox",
        "--model",
        "doubao-seedance-1-0-pro-250528",
    ]);
    assert!(dir.join("q.db").is_file());
    env.ok(&["--db", db, "ls"]);
}
