//! The service against the simulator: lifecycle, limits, crashes, ambiguity, faults.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::{
    SimProc, TestEnv, fast_sim as sim, wait_until, worker_config, worker_config_with, write_jobs,
};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const LITE_I2V: &str = "doubao-seedance-1-0-lite-i2v-250428";
const LITE_T2V: &str = "doubao-seedance-1-0-lite-t2v-250428";
const FAST: &str = "doubao-seedance-1-0-pro-fast-251015";

fn png(env: &TestEnv, name: &str, w: u32, h: u32) {
    let img = seedq::media::RgbImage {
        width: w,
        height: h,
        pixels: (0..w * h * 3).map(|i| (i % 251) as u8).collect(),
    };
    std::fs::write(
        env.path().join(name),
        seedq::media::encode_png(&img).expect("png"),
    )
    .expect("write png");
}

fn states(env: &TestEnv) -> Vec<String> {
    env.jobs()
        .iter()
        .map(|j| j["state"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn every_mode_runs_to_succeeded_with_the_estimated_usage() {
    let sim = sim("");
    let env = TestEnv::new(&worker_config(&sim, ""));
    png(&env, "a.png", 640, 360);
    png(&env, "b.png", 640, 360);
    let jobs = vec![
        format!(r#"{{"prompt":"t2v","model":"{PRO}","resolution":"720p"}}"#),
        format!(r#"{{"prompt":"first","model":"{PRO}","first_frame":"a.png","duration":3}}"#),
        format!(
            r#"{{"prompt":"first+last","model":"{PRO}","first_frame":"a.png","last_frame":"b.png","resolution":"480p"}}"#
        ),
        format!(r#"{{"prompt":"refs","model":"{LITE_I2V}","refs":["a.png","b.png"]}}"#),
        format!(r#"{{"prompt":"flex","model":"{LITE_T2V}","flex":true,"expires_after":"2h"}}"#),
        format!(
            r#"{{"prompt":"inline --rs 480p --rt 9:16 --dur 3 --seed 11","model":"{FAST}","return_last_frame":true}}"#
        ),
        format!(r#"{{"prompt":"frames","model":"{PRO}","frames":57,"resolution":"480p"}}"#),
    ];
    let file = write_jobs(&env, "jobs.jsonl", &jobs);
    env.ok(&["submit", "-f", &file]);
    env.run_service();

    let jobs = env.jobs();
    assert_eq!(jobs.len(), 7);
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert!(
            j["remote_task_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("cgt-"))
        );
        assert!(j["video_url"].as_str().is_some());
        // The sim bills W×H×frames/1024 from the same tables: the estimate is exact for 1.0.
        assert_eq!(j["usage_tokens"], j["est_tokens"], "{j}");
    }
    let inline = jobs
        .iter()
        .find(|j| j["model"] == FAST)
        .expect("inline job");
    assert_eq!(inline["seed"], 11);
    assert!(inline["last_frame_url"].as_str().is_some());
    let flex = jobs
        .iter()
        .find(|j| j["model"] == LITE_T2V)
        .expect("flex job");
    assert_eq!(flex["service_tier"], "flex");

    let stats = sim.stats();
    assert_eq!(stats["creates_total"], 7, "exactly one create per job");
    let tasks = sim.tasks();
    let frames = tasks.iter().find(|t| t["frames"] == 57);
    assert!(frames.is_some(), "the frames job rendered 57 frames");
}

#[test]
fn limits_hold_and_429_bursts_are_absorbed() {
    let limits = format!(
        "[models.\"{PRO}\"]\nrpm = 60\nconcurrency = 4\n\n[faults]\nrate_limit_burst = 5\nretry_after_secs = 0\n"
    );
    let sim = sim(&limits);
    // The sim's RPM window is 60 s × 0.002 = 120 ms; seedq adds its transit margin.
    let env = TestEnv::new(&worker_config_with(
        &sim,
        "rpm_window = \"120ms\"",
        &format!("[models.\"{PRO}\"]\nlimits = {{ rpm = 60, concurrency = 4 }}\n"),
    ));
    let lines: Vec<String> = (0..200)
        .map(|i| {
            format!(r#"{{"prompt":"shot {i}","model":"{PRO}","resolution":"480p","duration":2}}"#)
        })
        .collect();
    let file = write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "-f", &file]);
    env.run_service();

    assert!(states(&env).iter().all(|s| s == "succeeded"));
    let stats = sim.stats();
    assert_eq!(stats["creates_total"], 200);
    let max = stats["max_concurrency_by_model"][PRO]
        .as_u64()
        .expect("max concurrency");
    assert!(max <= 4, "the sim saw {max} tasks running at once");
    assert!(max >= 3, "the cap was used, not just respected ({max})");
    // Only the scripted burst was refused: seedq itself never exceeded the RPM window.
    assert_eq!(stats["rate_limited_total"], 5, "{stats}");
    // A 429 does not burn attempts.
    assert!(env.jobs().iter().all(|j| j["attempts"].as_i64() == Some(1)));
}

#[test]
fn ambiguous_create_is_adopted_not_resubmitted() {
    let sim = sim("[faults]\ndrop_after_create = 1\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let id = env
        .ok(&["submit", "a dropped connection", "-m", PRO])
        .trim()
        .to_string();
    env.run_service();
    let show: serde_json::Value =
        serde_json::from_slice(&env.cli(&["show", &id, "--json"]).stdout).expect("json");
    assert_eq!(show["job"]["state"], "succeeded");
    let trail: Vec<&str> = show["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["to_state"].as_str().unwrap_or(""))
        .collect();
    assert!(trail.contains(&"submit_unknown"), "{trail:?}");
    assert!(
        show["events"].to_string().contains("reconciled: adopted"),
        "{}",
        show["events"]
    );
    assert_eq!(sim.stats()["creates_total"], 1, "adopted, not paid twice");
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_pays_once() {
    let sim = sim(&format!("[models.\"{PRO}\"]\nconcurrency = 10\n"));
    let env = TestEnv::new(&worker_config_with(
        &sim,
        "on_ambiguous_submit = \"resubmit\"",
        "",
    ));
    let lines: Vec<String> = (0..100)
        .map(|i| {
            format!(r#"{{"prompt":"crash {i}","model":"{PRO}","resolution":"480p","duration":2}}"#)
        })
        .collect();
    let file = write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "-f", &file]);

    // Ten rounds in CI; SEEDQ_CRASH_ROUNDS=200 cargo test sigkill runs the longer soak.
    let rounds: u32 = std::env::var("SEEDQ_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let mut rng_state = 0x9e37_79b9_u64;
    for _round in 0..rounds {
        let mut child = env.serve();
        rng_state = rng_state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let ms = 50 + (rng_state >> 33) % 400;
        std::thread::sleep(Duration::from_millis(ms));
        child.kill();
    }
    env.run_service();

    let jobs = env.jobs();
    assert_eq!(jobs.len(), 100, "no job lost");
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let remote: HashSet<&str> = jobs
        .iter()
        .filter_map(|j| j["remote_task_id"].as_str())
        .collect();
    assert_eq!(remote.len(), 100);
    assert_eq!(
        sim.stats()["creates_total"],
        100,
        "exactly one create per job"
    );
}

#[test]
fn sigterm_exits_zero_within_the_grace_and_a_restart_finishes() {
    let sim = sim(&format!("[models.\"{PRO}\"]\nconcurrency = 3\n"));
    let env = TestEnv::new(&worker_config(&sim, ""));
    let lines: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"prompt":"term {i}","model":"{PRO}","resolution":"480p"}}"#))
        .collect();
    let file = write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "-f", &file]);
    let mut child = env.serve();
    wait_until(20, "some jobs to be submitted", || {
        env.jobs()
            .iter()
            .any(|j| j["state"] == "submitted" || j["state"] == "succeeded")
    });
    let sent = std::time::Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let status = child.wait();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
    assert!(
        env.jobs().iter().all(|j| j["state"] != "submitting"),
        "nothing left mid-submit after a clean stop"
    );
    env.run_service();
    assert!(states(&env).iter().all(|s| s == "succeeded"));
    assert_eq!(sim.stats()["creates_total"], 30);
}

#[test]
fn fault_matrix_500s_malformed_bodies_and_latency_all_finish() {
    let sim = sim(
        "[faults]\nmalformed_json_rate = 0.1\n[faults.error_rate]\ncreate = 0.2\nget = 0.2\nlist = 0.2\n[faults.latency_ms]\ncreate = 20\nlist = 20\n",
    );
    // A 500 on create is ambiguous: reconciliation looks for the task for the grace period,
    // then (by this test's policy) resubmits. Each create is an attempt, and one in five
    // fails: with the default 5 attempts, a job of the 40 dies about one run in 80. This
    // test is about every job finishing, so it allows 30 (40 × 0.2^30 ≈ 4e-20);
    // what running out of attempts does is table-tested in src/worker/dispatch.rs.
    let env = TestEnv::new(&worker_config_with(
        &sim,
        "on_ambiguous_submit = \"resubmit\"\nmax_attempts = 30",
        "",
    ));
    let lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"prompt":"fault {i}","model":"{PRO}","resolution":"480p"}}"#))
        .collect();
    let file = write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "-f", &file]);
    env.run_service();
    let jobs = env.jobs();
    assert!(
        jobs.iter().all(|j| j["state"] == "succeeded"),
        "{:?}",
        states(&env)
    );
    let stats = sim.stats();
    // A 500 on create is refused before the task exists; a malformed success body is not.
    // Either way every job ends with exactly one task.
    assert_eq!(stats["creates_total"], 40, "{stats}");
    let errors: u64 = stats["calls"]["create"]["500"].as_u64().unwrap_or(0);
    assert!(
        errors > 0,
        "the fault matrix injected 500s on create: {stats}"
    );
}

#[test]
fn flex_task_that_outlives_its_deadline_is_expired() {
    // Flex runs 4× slower: 60 s × 4 × 0.00005 = 12 ms… scaled so that the 1 h deadline
    // (180 ms) passes while the task is still running.
    let sim = SimProc::start("time_scale = 0.00005\nvideo_downscale = 16\nflex_factor = 100.0\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let id = env
        .ok(&[
            "submit",
            "slow flex",
            "-m",
            LITE_T2V,
            "--flex",
            "--expires-after",
            "1h",
        ])
        .trim()
        .to_string();
    // `seedq run` ends non-zero (3) when a job did not finish well, and says why.
    let out = env.keyed(&["run"]).output().expect("seedq run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired: 1"));
    let j: serde_json::Value =
        serde_json::from_slice(&env.cli(&["show", &id, "--json"]).stdout).expect("json");
    assert_eq!(j["job"]["state"], "expired", "{j}");
    assert_eq!(j["job"]["remote_status"], "expired");
}

#[test]
fn callbacks_record_the_finish_without_waiting_for_a_poll() {
    let sim = sim("");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let env = TestEnv::new(&worker_config(
        &sim,
        &format!(
            "[callback]\npublic_url = \"http://127.0.0.1:{port}/hook\"\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    ));
    let lines: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"prompt":"cb {i}","model":"{PRO}","resolution":"480p"}}"#))
        .collect();
    let file = write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "-f", &file]);
    env.run_service();
    let jobs = env.jobs();
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"));
    for j in &jobs {
        let id = j["id"].as_str().expect("id");
        let show = String::from_utf8_lossy(&env.cli(&["show", id]).stdout).into_owned();
        assert!(show.contains("remote succeeded (callback)"), "{show}");
    }
    let stats = sim.stats();
    assert!(
        stats["callbacks_delivered"].as_u64().unwrap_or(0) >= 5,
        "{stats}"
    );
}

#[test]
fn cancel_of_a_remote_queued_task_sends_delete() {
    // One remote slot held for 12 s: of two jobs, one runs and the other waits remotely
    // `queued`, where DELETE can cancel it.
    let sim = SimProc::start(&format!(
        "time_scale = 0.2\nvideo_downscale = 16\nreuse_videos = true\n[models.\"{PRO}\"]\nconcurrency = 1\n"
    ));
    let env = TestEnv::new(&worker_config(
        &sim,
        &format!("[models.\"{PRO}\"]\nlimits = {{ concurrency = 2 }}\n"),
    ));
    for prompt in ["first", "second"] {
        env.ok(&["submit", prompt, "-m", PRO, "--resolution", "480p"]);
    }
    let _serve = env.serve();
    wait_until(20, "both jobs submitted", || {
        env.jobs()
            .iter()
            .filter(|j| j["state"] == "submitted")
            .count()
            == 2
    });
    // Both POSTs went out together; ask the sim which one it queued.
    let queued = sim
        .tasks()
        .into_iter()
        .find(|t| t["status"] == "queued")
        .and_then(|t| t["id"].as_str().map(str::to_string))
        .expect("one task waits remotely");
    let job = env
        .jobs()
        .into_iter()
        .find(|j| j["remote_task_id"] == queued.as_str())
        .expect("the queued task's job");
    let id = job["id"].as_str().expect("id").to_string();
    let out = env.ok(&["cancel", &id]);
    assert!(out.contains("cancel requested"), "{out}");
    wait_until(20, "the queued job cancelled", || {
        env.jobs()
            .iter()
            .any(|j| j["id"] == id.as_str() && j["state"] == "cancelled")
    });
    let remote = sim
        .tasks()
        .into_iter()
        .find(|t| t["id"] == queued.as_str())
        .expect("task");
    assert_eq!(remote["status"], "cancelled", "the DELETE reached the sim");
    let others: Vec<_> = env
        .jobs()
        .into_iter()
        .filter(|j| j["id"] != id.as_str())
        .collect();
    assert_eq!(others.len(), 1);
    assert_ne!(
        others[0]["state"], "cancelled",
        "only the job asked for was cancelled"
    );
}
