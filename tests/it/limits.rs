//! Ark's limits and what its answers prove (docs/limits.md): a list without
//! `filter.service_tier` shows the default tier only, a running task may show nothing but its
//! id, model, status and times, the read routes have per-account rates, and some answers are
//! account states rather than passing errors. Exactly one create per job throughout.

use std::time::Duration;

use crate::helpers::{
    SimProc, TestEnv, fast_sim, http_json, job_states, run_within, wait_until, worker_config,
    worker_config_with, write_jobs,
};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const LITE: &str = "doubao-seedance-1-0-lite-t2v-250428";

fn jobs(model: &str, n: usize, flex: bool, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"prompt":"{tag} {i}","model":"{model}","resolution":"480p","duration":2,"flex":{flex}}}"#
            )
        })
        .collect()
}

/// Every job succeeded, holds a task of its own (its identity tag), and the sim made exactly
/// one task per job.
fn assert_one_task_per_job(env: &TestEnv, sim: &SimProc, n: usize) {
    let jobs = env.jobs();
    assert_eq!(jobs.len(), n);
    assert!(
        jobs.iter().all(|j| j["state"] == "succeeded"),
        "{:?}",
        job_states(env)
    );
    let stats = sim.stats();
    assert_eq!(stats["creates_total"], n, "one create per job: {stats}");
    let ledger = sim.tasks();
    for j in &jobs {
        let remote = j["remote_task_id"].as_str().expect("a remote task");
        let task = ledger
            .iter()
            .find(|t| t["id"] == remote)
            .expect("the task is in the sim's ledger");
        let tag = format!("seedq-{}", j["id"].as_str().unwrap_or(""));
        assert_eq!(
            task["request"]["safety_identifier"].as_str(),
            Some(tag.as_str()),
            "job {} holds a foreign task",
            j["id"]
        );
    }
}

fn policy(resubmit: bool) -> &'static str {
    if resubmit {
        "on_ambiguous_submit = \"resubmit\""
    } else {
        "on_ambiguous_submit = \"park\""
    }
}

/// 20 flex jobs whose create answers are lost after Ark made each task. The sim lists only
/// the default tier when a list names no tier (docs/ark-api.md §14): a reconciler that listed by
/// model alone would see none of them and create each twice.
fn lost_flex_creates_are_found_in_the_flex_tier(resubmit: bool) {
    let sim = fast_sim("[faults]\ndrop_after_create = 20\n");
    let env = TestEnv::new(&worker_config_with(&sim, policy(resubmit), ""));
    let file = write_jobs(&env, "jobs.jsonl", &jobs(LITE, 20, true, "flex lost"));
    env.ok(&["submit", "-f", &file]);
    let out = run_within(&env, 120);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        job_states(&env),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = sim.stats();
    assert!(
        stats["calls"]["create"]["dropped"].as_u64() == Some(20),
        "every create answer was lost: {stats}"
    );
    assert!(
        sim.tasks().iter().all(|t| t["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("cgt-batch-"))),
        "flex ids in the batch form"
    );
    assert_one_task_per_job(&env, &sim, 20);
}

#[test]
fn lost_flex_creates_are_created_once_each_under_park() {
    lost_flex_creates_are_found_in_the_flex_tier(false);
}

#[test]
fn lost_flex_creates_are_created_once_each_under_resubmit() {
    lost_flex_creates_are_found_in_the_flex_tier(true);
}

/// 10 default-tier jobs whose create answers are lost, while the sim answers running tasks
/// with only id, model, status and times, as live BytePlus did (docs/ark-api.md §14). The tasks run
/// past the point where the reconciler may conclude anything (request timeout 2 s + 1 s): a
/// task that shows no identity is no proof that none exists.
fn lost_creates_with_bare_running_tasks(resubmit: bool) {
    // 2000 s nominal at time_scale 0.002: each task runs about 4 s.
    let sim = fast_sim(&format!(
        "bare_unfinished_tasks = true\n[models.\"{PRO}\"]\nconcurrency = 10\n\
         generation = {{ base = \"2000s\", per_video_second = \"0s\" }}\n\
         [faults]\ndrop_after_create = 10\n"
    ));
    let env = TestEnv::new(&worker_config_with(
        &sim,
        policy(resubmit),
        &format!("[models.\"{PRO}\"]\nlimits = {{ concurrency = 10 }}\n"),
    ));
    let file = write_jobs(&env, "jobs.jsonl", &jobs(PRO, 10, false, "bare lost"));
    env.ok(&["submit", "-f", &file]);
    let out = run_within(&env, 120);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        job_states(&env),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.stats()["calls"]["create"]["dropped"], 10);
    assert_one_task_per_job(&env, &sim, 10);
    // The jobs waited for the tasks to show who they are, then adopted them.
    for j in env.jobs() {
        let id = j["id"].as_str().expect("id");
        let show: serde_json::Value =
            serde_json::from_slice(&env.cli(&["show", id, "--json"]).stdout).expect("json");
        assert!(show["events"].to_string().contains("adopted"), "{show}");
    }
}

#[test]
fn lost_creates_with_bare_running_tasks_are_created_once_each_under_park() {
    lost_creates_with_bare_running_tasks(false);
}

#[test]
fn lost_creates_with_bare_running_tasks_are_created_once_each_under_resubmit() {
    lost_creates_with_bare_running_tasks(true);
}

/// Three workers on one store (SQLite file or PostgreSQL) against the sim's default read
/// limits counted in real seconds: list 1/s, GET 20/s, DELETE 20/s per account. The fleet
/// shares one budget, so the sim never answers a read with 429.
#[test]
fn a_fleet_of_three_never_exceeds_the_accounts_read_rates() {
    let sim = SimProc::start(&format!(
        "time_scale = 0.01\nvideo_downscale = 16\nreuse_videos = true\n\
         [read_limits]\nreal_time = true\n\
         [models.\"{PRO}\"]\nconcurrency = 60\nrpm = 100000\n"
    ));
    let text = worker_config(
        &sim,
        &format!("[models.\"{PRO}\"]\nlimits = {{ concurrency = 30, rpm = 100000 }}\n"),
    )
    // Ark's own second, not the shrunk one of the other tests.
    .replace("rate_window = \"10ms\"", "rate_window = \"1s\"");
    let env = TestEnv::new(&text);
    let file = write_jobs(&env, "jobs.jsonl", &jobs(PRO, 60, false, "fleet reads"));
    env.ok(&["submit", "-f", &file]);
    let _workers: Vec<_> = (0..3).map(|_| env.serve()).collect();
    wait_until(120, "every job to succeed", || {
        env.jobs()
            .iter()
            .filter(|j| j["state"] == "succeeded")
            .count()
            == 60
    });
    let stats = sim.stats();
    assert_eq!(stats["creates_total"], 60, "{stats}");
    // Lists at most one a second for the whole fleet; GETs carried the rest of the polling.
    assert!(
        stats["calls"]["list"]["200"].as_u64().unwrap_or(0) >= 1
            && stats["calls"]["get"]["200"].as_u64().unwrap_or(0) >= 1,
        "the fleet polled with both: {stats}"
    );
    for route in ["list", "get", "delete"] {
        assert!(
            stats["calls"][route]["429"].is_null(),
            "no {route} call over the account's rate: {stats}"
        );
    }
    assert_eq!(stats["rate_limited_total"], 0, "{stats}");
}

/// `SetLimitExceeded` pauses the model (not a passing rate limit) with the reason on the job;
/// `ModelNotOpen` fails the job with Ark's message; a task that fails with
/// `InvalidParameter.TaskTypeConstraint` fails its job with one create, no retry.
#[test]
fn account_states_and_task_type_failures_are_not_retried() {
    let sim = fast_sim(&format!(
        "[faults]\nset_limit_exceeded = [\"{PRO}\"]\nmodel_not_open = [\"{LITE}\"]\n"
    ));
    let env = TestEnv::new(&worker_config(&sim, ""));
    let paused = env
        .ok(&["submit", "paused here", "-m", PRO])
        .trim()
        .to_string();
    let closed = env
        .ok(&["submit", "not open", "-m", LITE])
        .trim()
        .to_string();
    let mut serve = env.serve();
    let job = |id: &str| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&env.cli(&["show", id, "--json"]).stdout)
            .expect("json")["job"]
            .clone()
    };
    wait_until(30, "the closed model's job to fail", || {
        job(&closed)["state"] == "failed"
    });
    let c = job(&closed);
    assert_eq!(c["last_error_code"], "ModelNotOpen", "{c}");
    assert!(
        c["last_error_message"]
            .as_str()
            .is_some_and(|m| m.contains("has not activated the model")),
        "{c}"
    );
    wait_until(30, "the model to be paused", || {
        job(&paused)["last_error_code"] == "SetLimitExceeded"
    });
    // One create each: the paused model is not asked again until an operator resumes it.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = sim.stats();
    assert_eq!(
        stats["calls"]["create"]["429"], 1,
        "SetLimitExceeded is not retried: {stats}"
    );
    assert_eq!(stats["calls"]["create"]["404"], 1, "{stats}");
    let p = job(&paused);
    assert_eq!(p["state"], "queued", "{p}");
    assert_eq!(p["last_error_code"], "SetLimitExceeded", "{p}");
    // The operator raises the limit at Ark and resumes: the job goes through.
    http_json(
        "POST",
        &format!("{}/_sim/faults", sim.root),
        Some(serde_json::json!({"task_type_constraint_words": ["edit the clip"]})),
    );
    env.ok(&["resume", "--model", PRO]);
    wait_until(30, "the resumed job to succeed", || {
        job(&paused)["state"] == "succeeded"
    });
    let typed = env
        .ok(&["submit", "please edit the clip", "-m", PRO])
        .trim()
        .to_string();
    wait_until(30, "the task-type job to fail", || {
        job(&typed)["state"] == "failed"
    });
    let t = job(&typed);
    assert_eq!(
        t["last_error_code"], "InvalidParameter.TaskTypeConstraint",
        "{t}"
    );
    serve.kill();
    assert_eq!(
        sim.stats()["creates_total"],
        2,
        "one task each for the two that reached Ark"
    );
}
