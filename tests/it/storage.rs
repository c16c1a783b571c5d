//! Storage: a database that cannot vanish under the service, read commands that never create
//! one, capped and checked input files, lean rows and images stored once.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::{Guard, SimProc, TestEnv, code_and_err, wait_until, worker_config};

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
        vec!["estimate", "--batch", "b"],
        vec!["stats", "--cost"],
        vec!["chain", "ls"],
        vec!["retry", "01J0000000000000000000000"],
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

const PRO: &str = "doubao-seedance-1-0-pro-250528";

/// Runs `cmd`, killing it after `secs`; returns (exit code, stderr). A hang fails the test.
fn run_bounded(mut cmd: std::process::Command, secs: u64) -> (Option<i32>, String) {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("spawn"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "still running after {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    (status.code(), err)
}

#[test]
fn image_paths_must_be_regular_files_read_with_a_cap() {
    let env = TestEnv::new_sqlite("");
    let db = env.path().join("seedq.db");
    // /dev/zero would be read until memory runs out.
    let (code, err) = run_bounded(
        env.cmd(&["submit", "a fox", "-m", PRO, "--first-frame", "/dev/zero"]),
        20,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("first_frame") && err.contains("character device"),
        "{err}"
    );
    // A FIFO would block the open forever.
    let fifo = env.path().join("frame.png");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let (code, err) = run_bounded(
        env.cmd(&[
            "submit",
            "a fox",
            "-m",
            PRO,
            "--first-frame",
            fifo.to_str().expect("utf-8"),
        ]),
        20,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("FIFO"), "{err}");
    // A directory named in a JSONL line keeps the OS reason on its one-line error.
    std::fs::create_dir(env.path().join("shots")).expect("mkdir");
    let file = env.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        format!(r#"{{"prompt":"a fox","model":"{PRO}","first_frame":"shots"}}"#),
    )
    .expect("write");
    let (code, err) = code_and_err(&env.cli(&["submit", "-f", file.to_str().expect("utf-8")]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("line 1: first_frame") && err.contains("Is a directory"),
        "{err}"
    );
    assert!(!db.exists(), "refused input stored nothing");
}

#[test]
fn jsonl_errors_name_fields_and_lines() {
    let env = TestEnv::new("");
    let file = env.path().join("jobs.jsonl");
    let submit = |text: &[u8]| {
        std::fs::write(&file, text).expect("write");
        code_and_err(&env.cli(&["submit", "-f", file.to_str().expect("utf-8")]))
    };
    let line = |extra: &str| format!(r#"{{"prompt":"a fox","model":"{PRO}"{extra}}}"#);

    let (code, err) = submit(line(r#","duration":"5""#).as_bytes());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 1: field \"duration\""), "{err}");

    let (code, err) = submit(br#"["a","b"]"#);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("JSON object") && !err.contains("33 elements"),
        "{err}"
    );

    let (code, err) = submit(b"\n\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no jobs"), "{err}");

    let text = format!(
        "{}\n{}\n{}\n",
        line(r#","key":"k1""#),
        line(r#","key":"k2""#),
        line(r#","key":"k1""#)
    );
    let (code, err) = submit(text.as_bytes());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("line 3: key \"k1\" is already used by line 1"),
        "{err}"
    );
    env.assert_nothing_stored();

    // A byte order mark is dropped, as for CSV.
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(line("").as_bytes());
    let (code, err) = submit(&bom);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.jobs().len(), 1);

    // CSV: an empty file and a repeated key are refused too.
    let csv = env.path().join("jobs.csv");
    std::fs::write(&csv, "prompt,model,key\n").expect("write");
    let (code, err) = code_and_err(&env.cli(&["submit", "-f", csv.to_str().expect("utf-8")]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no jobs"), "{err}");
    std::fs::write(&csv, format!("prompt,model,key\na,{PRO},x\nb,{PRO},x\n")).expect("write");
    let (code, err) = code_and_err(&env.cli(&["submit", "-f", csv.to_str().expect("utf-8")]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("already used by row 1 (line 2)"), "{err}");
    assert_eq!(env.jobs().len(), 1, "nothing more stored");
}

/// A real 640x360 PNG padded after its end to `size` bytes (the image rules read the header;
/// the padding makes it as large as a photo).
fn padded_png(path: &std::path::Path, size: usize) {
    let img = seedq::media::RgbImage {
        width: 640,
        height: 360,
        pixels: (0..640 * 360 * 3).map(|i| (i % 251) as u8).collect(),
    };
    let mut bytes = seedq::media::encode_png(&img).expect("png");
    bytes.resize(size, 0);
    std::fs::write(path, bytes).expect("write png");
}

#[test]
fn an_image_shared_by_jobs_is_stored_once_and_posted_whole() {
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");
    let env = TestEnv::new_sqlite(&worker_config(&sim, ""));
    padded_png(&env.path().join("a.png"), 3 << 20);
    let lines: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"prompt":"shot {i}","model":"{PRO}","first_frame":"a.png","resolution":"480p","duration":2}}"#
            )
        })
        .collect();
    let file = env.path().join("jobs.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write");
    env.ok(&["submit", "-f", file.to_str().expect("utf-8")]);

    // The rows hold a reference, not 4 MB of base64 each; the image is stored once.
    for j in env.jobs() {
        let body = j["request_json"].as_str().expect("body");
        assert!(body.len() < 4096, "row body is {} bytes", body.len());
        assert!(body.contains("seedq-image:sha256:"), "{body}");
    }
    let db = rusqlite::Connection::open(env.path().join("seedq.db")).expect("open db");
    let (n, len): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), SUM(length(data_url)) FROM images",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("images");
    assert_eq!(n, 1, "one image for three jobs");
    assert!(len > 4 << 20, "the whole data URL is kept: {len}");
    drop(db);

    // The simulator checks every data: image it is sent: a reference would be refused.
    env.run_service();
    let states: Vec<String> = env
        .jobs()
        .iter()
        .map(|j| j["state"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(states, vec!["succeeded"; 3], "{states:?}");
    assert_eq!(sim.stats()["creates_total"], 3);
}

#[test]
fn a_request_body_over_64_mb_is_refused_at_submit() {
    let env = TestEnv::new("");
    // Two images under the 30 MB image limit, whose base64 together passes 64 MB.
    padded_png(&env.path().join("a.png"), 25 << 20);
    padded_png(&env.path().join("b.png"), 25 << 20);
    let out = env.cli(&[
        "submit",
        "first and last",
        "-m",
        PRO,
        "--first-frame",
        env.path().join("a.png").to_str().expect("utf-8"),
        "--last-frame",
        env.path().join("b.png").to_str().expect("utf-8"),
    ]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("request body of") && err.contains("is too large") && err.contains("67108864"),
        "{err}"
    );
    env.assert_nothing_stored();
}

#[test]
fn the_config_file_in_use_is_named_and_check_messages_say_what_is_needed() {
    // A ./config.toml in the working directory is used: say so, with its absolute path.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("q.db");
    std::fs::write(
        dir.path().join("config.toml"),
        format!("[store]\npath = {:?}\n", db.display().to_string()),
    )
    .expect("write");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::helpers::bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("SEEDQ_CONFIG")
            .env_remove("ARK_API_KEY")
            .env("RUST_LOG", "off")
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let want = format!(
        "{} (found in the working directory)",
        dir.path().join("config.toml").display()
    );
    let show = run(&["config", "show"]);
    assert!(
        show.lines().next().is_some_and(|l| l.contains(&want)),
        "{show}"
    );
    let doctor = run(&["doctor"]);
    assert!(doctor.contains(&want), "{doctor}");

    // The check names what the value must be, not what it supposedly is.
    let env = TestEnv::new("[dispatch]\nlease = \"5s\"\n");
    let (code, err) = code_and_err(&env.cli(&["config", "check"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "dispatch.lease = \"5s\" is invalid: it must be longer than ark.request_timeout (30s)"
        ),
        "{err}"
    );
    let env = TestEnv::new("[service]\nshutdown_grace = \"5s\"\n");
    let (_, err) = code_and_err(&env.cli(&["config", "check"]));
    assert!(
        err.contains("service.shutdown_grace = \"5s\" is invalid: it must be longer than"),
        "{err}"
    );
}

#[test]
fn export_escapes_formulas_and_fetch_never_writes_through_a_symlink() {
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let text = std::fs::read_to_string(&env.config).expect("config");
    let url = format!("file://{}", env.path().join("archive").display());
    let text = text.replacen(
        "[archive]\nurl = \"\"",
        &format!("[archive]\nurl = {url:?}"),
        1,
    );
    std::fs::write(&env.config, text).expect("config");
    let file = env.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        format!(
            r#"{{"prompt":"=HYPERLINK(\"http://evil\",\"x\")","model":"{PRO}","resolution":"480p","duration":2,"batch":"b","key":"@k"}}"#
        ),
    )
    .expect("write");
    env.ok(&["submit", "-f", file.to_str().expect("utf-8")]);
    env.run_service();
    let jobs = env.jobs();
    assert_eq!(jobs[0]["state"], "archived", "{:?}", jobs[0]);
    let id = jobs[0]["id"].as_str().expect("id").to_string();

    let csv = env.ok(&["export", "--batch", "b"]);
    assert!(csv.contains("'=HYPERLINK("), "{csv}");
    assert!(csv.contains(",'@k,"), "{csv}");
    let jsonl = env.ok(&["export", "--batch", "b", "--format", "jsonl"]);
    assert!(
        jsonl.contains(r#""prompt":"=HYPERLINK("#),
        "JSONL keeps the text: {jsonl}"
    );

    // A symlink planted at FILE.part must not redirect the write.
    let victim = env.path().join("victim.txt");
    std::fs::write(&victim, "precious").expect("write");
    let out = env.path().join("out.mp4");
    std::os::unix::fs::symlink(&victim, env.path().join("out.mp4.part")).expect("symlink");
    let (code, err) = code_and_err(&env.cli(&["fetch", &id, "-o", out.to_str().expect("utf-8")]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );
    assert!(!out.exists());
    // Without the link the fetch works.
    std::fs::remove_file(env.path().join("out.mp4.part")).expect("rm link");
    env.ok(&["fetch", &id, "-o", out.to_str().expect("utf-8")]);
    assert!(std::fs::metadata(&out).expect("fetched").len() > 0);
}
