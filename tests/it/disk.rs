//! A full archive disk: jobs wait without failing, and resume promptly once space
//! returns, each file equal to the simulator's own video.
//!
//! The archive lives on a 4 MiB tmpfs that a filler file has filled, so the service meets a
//! real ENOSPC. Mounting needs root, as CI runs; elsewhere the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::helpers::{SimProc, TestEnv, get_status as get, wait_until, worker_config};

const MODEL: &str = "doubao-seedance-1-0-pro-250528";

/// A small file system mounted for the test, unmounted when it ends (even on a failed
/// assertion): a tmpfs, or where tmpfs mounts are refused, an ext4 image on a loop device.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let tmpfs = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        if tmpfs.status.success() {
            return Self(at.to_path_buf());
        }
        let image = at.with_extension("img");
        let loop_fs = Command::new("sh")
            .arg("-c")
            .arg("truncate -s \"$1\" \"$2\" && mkfs.ext4 -q -F \"$2\" && mount -o loop \"$2\" \"$3\"")
            .arg("sh")
            .arg(size.to_uppercase())
            .arg(&image)
            .arg(at)
            .output()
            .expect("run sh");
        assert!(
            loop_fs.status.success(),
            "this test mounts a small file system to fill and needs root (CI runs as root); \
             tmpfs: {}; loop device: {}",
            String::from_utf8_lossy(&tmpfs.stderr),
            String::from_utf8_lossy(&loop_fs.stderr)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the filesystem says it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    let _ = f.sync_all();
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(
        std::fs::read(path).expect("read archived file"),
    ))
}

#[test]
fn a_full_archive_disk_holds_jobs_and_they_resume_promptly_once_space_returns() {
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    // An escalating per-job backoff of up to a minute: without the fixed disk-full retry,
    // jobs would sit for tens of seconds after space returns.
    let cfg = std::fs::read_to_string(&env.config)
        .expect("config")
        .replace("backoff_base = \"20ms\"", "backoff_base = \"2s\"")
        .replace("backoff_max = \"200ms\"", "backoff_max = \"60s\"");
    let mnt = env.path().join("disk");
    let disk = Tmpfs::mount(&mnt, "4m");
    let archive = disk.0.join("archive");
    std::fs::create_dir_all(&archive).expect("archive dir");
    let filler = disk.0.join("filler");
    fill(&filler);
    let cfg = cfg.replace(
        "[archive]\nurl = \"\"",
        &format!("[archive]\nurl = \"file://{}\"", archive.display()),
    );
    std::fs::write(&env.config, cfg).expect("config");

    for i in 0..4 {
        env.ok(&[
            "submit",
            "-m",
            MODEL,
            "--resolution",
            "480p",
            &format!("disk full {i}"),
        ]);
    }
    let _service = env.serve();
    // Every job is done at Ark, and every upload met the full disk at least twice.
    wait_until(60, "every job waiting on the full archive disk", || {
        let jobs = env.jobs();
        jobs.len() == 4
            && jobs
                .iter()
                .all(|j| j["state"] == "succeeded" && j["last_error_code"] == "archive_store_full")
    });
    std::thread::sleep(Duration::from_secs(4));
    let jobs = env.jobs();
    // Still waiting (between retries, or in one): a full disk fails nothing, files nothing.
    assert!(
        jobs.iter()
            .all(|j| j["state"] == "succeeded" || j["state"] == "archiving"),
        "{jobs:#?}"
    );

    std::fs::remove_file(&filler).expect("free the disk");
    let freed = Instant::now();
    wait_until(30, "every job archived once space returned", || {
        env.jobs().iter().all(|j| j["state"] == "archived")
    });
    let took = freed.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "archiving resumed {took:?} after space returned; the disk-full retry is 3 s"
    );

    // Each archived file is the simulator's own video for that job's task.
    let tasks = sim.tasks();
    for j in env.jobs() {
        let id = j["id"].as_str().expect("id");
        let shown: serde_json::Value =
            serde_json::from_str(&env.ok(&["show", id, "--json"])).expect("show --json");
        let key = shown["job"]["archive_key"].as_str().expect("archive_key");
        let remote = shown["job"]["remote_task_id"].as_str().expect("remote id");
        let task = tasks
            .iter()
            .find(|t| t["id"] == remote)
            .expect("the job's task at the sim");
        let want = task["video_sha256"].as_str().expect("sim video hash");
        assert_eq!(sha256_hex(&archive.join(key)), want, "job {id}");
    }
    assert_eq!(tasks.len(), 4, "one task per job");
}

/// Every job id with its events' ids, read straight from the SQLite file.
fn recorded(db: &Path) -> std::collections::BTreeMap<String, Vec<i64>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the store");
    let mut out: std::collections::BTreeMap<String, Vec<i64>> = c
        .prepare("SELECT id FROM jobs")
        .expect("jobs")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("jobs")
        .map(|id| (id.expect("id"), Vec::new()))
        .collect();
    let mut q = c
        .prepare("SELECT job_id, id FROM job_events ORDER BY id")
        .expect("events");
    for row in q
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("events")
    {
        let (job, id) = row.expect("event");
        out.entry(job).or_default().push(id);
    }
    out
}

/// `seedq ls --json` (the store is not at `TestEnv`'s own path here).
fn ls(env: &TestEnv) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.ok(&["ls", "--json", "--limit", "1000"])).expect("ls --json")
}

/// A SQLite store on an 8 MiB tmpfs, the archive beside it, the admin server on `admin`, the
/// model two at a time, and `jobs` jobs queued.
fn store_on_tmpfs(sim: &SimProc, admin: u16, jobs: usize) -> (TestEnv, Tmpfs, PathBuf) {
    let env = TestEnv::new_sqlite(&worker_config(sim, ""));
    let disk = Tmpfs::mount(&env.path().join("disk"), "8m");
    let db = disk.0.join("seedq.db");
    let archive = env.path().join("archive");
    let cfg = std::fs::read_to_string(&env.config)
        .expect("config")
        .replacen(
            &format!("path = {:?}", env.path().join("seedq.db").display().to_string()),
            &format!("path = {:?}", db.display().to_string()),
            1,
        )
        .replacen(
            "[archive]\nurl = \"\"",
            &format!("[archive]\nurl = \"file://{}\"", archive.display()),
            1,
        )
        .replacen(
            "[admin]\nlisten = \"\"\n",
            &format!(
                "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[models.\"{MODEL}\"]\nlimits = {{ concurrency = 2 }}\n"
            ),
            1,
        );
    assert!(cfg.contains(&db.display().to_string()), "{cfg}");
    std::fs::write(&env.config, cfg).expect("config");
    let lines: Vec<String> = (0..jobs)
        .map(|i| {
            serde_json::json!({"model": MODEL, "prompt": format!("store disk {i}"), "resolution": "480p"})
                .to_string()
        })
        .collect();
    let file = crate::helpers::write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "--file", &file]);
    (env, disk, db)
}

#[test]
fn a_full_store_disk_stops_claims_loses_nothing_and_work_resumes_by_itself() {
    // One second per video and two at a time: the run is still going when the disk fills.
    let sim = SimProc::start(
        "video_downscale = 16\nreuse_videos = true\n[generation]\nbase = \"1s\"\nper_video_second = \"0s\"\n",
    );
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    const JOBS: usize = 16;
    let (env, disk, db) = store_on_tmpfs(&sim, admin, JOBS);
    let service = env.serve();
    wait_until(30, "a few jobs archived", || {
        get(admin, "/healthz").is_some_and(|(s, _)| s == 200)
            && ls(&env).iter().filter(|j| j["state"] == "archived").count() >= 4
    });

    let before = recorded(&db);
    let filler = disk.0.join("filler");
    fill(&filler);
    let filled = Instant::now();
    let mut why = String::new();
    wait_until(10, "/readyz to fail with the reason", || {
        match get(admin, "/readyz") {
            Some((503, body)) if body.contains("no room") => {
                why = body;
                true
            }
            _ => false,
        }
    });
    eprintln!("/readyz 503 after {:?}:\n{why}", filled.elapsed());
    // Claims have stopped: no create reaches Ark while the disk stays full.
    let creates = |sim: &SimProc| sim.stats()["creates_total"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1500));
    let held = creates(&sim);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(creates(&sim), held, "a job was claimed on a full disk");
    assert!(
        (held as usize) < JOBS,
        "the disk filled after the run: {held} creates"
    );
    assert_eq!(
        get(admin, "/healthz").map(|(s, _)| s),
        Some(200),
        "the service is alive"
    );

    std::fs::remove_file(&filler).expect("free the disk");
    let freed = Instant::now();
    wait_until(10, "/readyz to pass again", || {
        get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let ready = freed.elapsed();
    wait_until(60, "every job archived once space returned", || {
        let jobs = ls(&env);
        jobs.len() == JOBS && jobs.iter().all(|j| j["state"] == "archived")
    });
    eprintln!(
        "ready again {ready:?} after space returned; every job archived after {:?}",
        freed.elapsed()
    );
    assert!(
        ready < Duration::from_secs(5),
        "readiness came back after {ready:?}"
    );
    drop(service);

    // Nothing recorded before the disk filled was lost, and the file is sound.
    let c = rusqlite::Connection::open(&db).expect("open");
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let after = recorded(&db);
    for (job, events) in &before {
        let now = after
            .get(job)
            .unwrap_or_else(|| panic!("job {job} is gone"));
        assert!(
            events.iter().all(|e| now.contains(e)),
            "job {job} lost events: {events:?} then {now:?}"
        );
    }
    // Each job was created once at Ark, however the outage fell.
    assert_eq!(creates(&sim), JOBS as u64, "one create per job");
}

#[test]
fn seedq_run_waits_out_a_full_store_disk_and_finishes() {
    let sim = SimProc::start(
        "video_downscale = 16\nreuse_videos = true\n[generation]\nbase = \"1s\"\nper_video_second = \"0s\"\n",
    );
    // `run` opens no admin server; the port only fills the config.
    let (env, disk, db) = store_on_tmpfs(&sim, 9, 8);
    let mut run = crate::helpers::Guard(env.keyed(&["run"]).spawn().expect("seedq run"));
    wait_until(30, "a job archived", || {
        ls(&env).iter().any(|j| j["state"] == "archived")
    });
    let filler = disk.0.join("filler");
    fill(&filler);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        run.0.try_wait().expect("try_wait").is_none(),
        "seedq run ended on a full disk"
    );
    std::fs::remove_file(&filler).expect("free the disk");
    let freed = Instant::now();
    let status = loop {
        if let Some(s) = run.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(60),
            "seedq run never finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "seedq run finished {:?} after space returned",
        freed.elapsed()
    );
    assert!(status.success(), "seedq run: {status}");
    let jobs = ls(&env);
    assert_eq!(jobs.len(), 8);
    assert!(jobs.iter().all(|j| j["state"] == "archived"), "{jobs:#?}");
    assert_eq!(sim.stats()["creates_total"].as_u64(), Some(8));
    let c = rusqlite::Connection::open(&db).expect("open");
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}
