//! A full archive disk (issue 12): jobs wait without failing, and resume promptly once space
//! returns, each file equal to the simulator's own video.
//!
//! The archive lives on a 4 MiB tmpfs that a filler file has filled, so the service meets a
//! real ENOSPC. Mounting needs root, as CI runs; elsewhere the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::helpers::{SimProc, TestEnv, wait_until, worker_config};

const MODEL: &str = "doubao-seedance-1-0-pro-250528";

/// A tmpfs mounted for the test, unmounted when it ends (even on a failed assertion).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill the archive's disk and needs root (CI runs \
             as root): {}",
            String::from_utf8_lossy(&out.stderr)
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
