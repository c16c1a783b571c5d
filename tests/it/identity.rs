//! Proven identity for every create: never pay twice, never a foreign video,
//! never stall. Every test drives the real binary against the real simulator.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::helpers::{
    SimProc, TestEnv, fast_sim as sim, http_json, job_states, run_within, wait_until,
    worker_config, worker_config_with, write_jobs,
};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
/// A 2.x model: seedq sends no seed at all.
const V2: &str = "doubao-seedance-2-0-260128";

fn set_faults(sim: &SimProc, faults: serde_json::Value) {
    http_json("POST", &format!("{}/_sim/faults", sim.root), Some(faults));
}

/// Every job's remote task, from the sim's own ledger: its prompt must be the job's.
fn assert_own_tasks(env: &TestEnv, sim: &SimProc) {
    let ledger: HashMap<String, serde_json::Value> = sim
        .tasks()
        .into_iter()
        .map(|t| (t["id"].as_str().unwrap_or("").to_string(), t))
        .collect();
    for j in env.jobs() {
        let remote = j["remote_task_id"].as_str().expect("a remote task");
        let task = ledger.get(remote).expect("the task is in the sim's ledger");
        let body: serde_json::Value =
            serde_json::from_str(j["request_json"].as_str().unwrap_or("{}")).expect("request");
        let prompt = body["content"][0]["text"].as_str().unwrap_or("");
        assert_eq!(
            task["prompt"].as_str(),
            Some(prompt),
            "job {} holds a foreign task {remote}",
            j["id"]
        );
    }
}

/// Tasks the sim ran or will run (a cancelled queued task is not billed).
fn billable(sim: &SimProc) -> usize {
    sim.tasks()
        .iter()
        .filter(|t| t["status"] != "cancelled")
        .count()
}

#[test]
fn a_foreign_task_with_the_same_seed_is_never_adopted() {
    // A ("a red cat", seed 42) gets a 500 before any task exists; then B ("a blue dog",
    // seed 42, same shape) has its connection dropped after Ark made its task.
    let sim = sim("[faults.error_rate]\ncreate = 1.0\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let a = env
        .ok(&["submit", "a red cat", "-m", PRO, "--seed", "42"])
        .trim()
        .to_string();
    let mut serve = env.serve();
    // After the 500 the job is `submit_unknown` until reconciliation finds no task, then
    // `queued` again with the attempt counted; a loaded machine's poll can miss the first.
    wait_until(60, "A's create to fail", || {
        env.jobs().iter().any(|j| {
            j["state"] == "submit_unknown"
                || (j["state"] == "queued" && j["attempts"].as_i64().unwrap_or(0) >= 1)
        })
    });
    serve.kill();
    set_faults(&sim, serde_json::json!({"drop_after_create": 1}));
    let b = env
        .ok(&["submit", "a blue dog", "-m", PRO, "--seed", "42"])
        .trim()
        .to_string();
    let out = run_within(&env, 60);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        job_states(&env),
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [&a, &b] {
        let show: serde_json::Value =
            serde_json::from_slice(&env.cli(&["show", id, "--json"]).stdout).expect("json");
        assert_eq!(show["job"]["state"], "succeeded", "{show}");
    }
    assert_own_tasks(&env, &sim);
    assert_eq!(sim.tasks().len(), 2, "one task per job");
}

#[test]
fn seedless_identical_jobs_with_dropped_creates_pay_once_each() {
    // A 2.x model takes no seed; two identical jobs; both creates are dropped after the
    // task exists; the policy is `resubmit`. Today: 4 creates for 2 jobs.
    let sim = sim("[faults]\ndrop_after_create = 2\n");
    let env = TestEnv::new(&worker_config_with(
        &sim,
        "on_ambiguous_submit = \"resubmit\"",
        "",
    ));
    let line = format!(r#"{{"prompt":"twin","model":"{V2}","resolution":"480p","duration":4}}"#);
    let file = write_jobs(&env, "jobs.jsonl", &[line.clone(), line]);
    env.ok(&["submit", "-f", &file]);
    let out = run_within(&env, 60);
    assert!(out.status.success(), "{:?}", job_states(&env));
    let jobs = env.jobs();
    assert!(
        jobs.iter().all(|j| j["state"] == "succeeded"),
        "{:?}",
        job_states(&env)
    );
    let remote: HashSet<&str> = jobs
        .iter()
        .filter_map(|j| j["remote_task_id"].as_str())
        .collect();
    assert_eq!(remote.len(), 2, "each job its own task");
    assert_eq!(sim.stats()["creates_total"], 2, "never paid twice");
}

#[test]
fn twenty_percent_create_500s_finish_by_themselves_with_one_task_per_job() {
    let sim = sim(&format!(
        "rng_seed = 11\n[models.\"{PRO}\"]\nconcurrency = 10\n[faults.error_rate]\ncreate = 0.2\n"
    ));
    // Every create is an attempt and one in five fails: with the default 5 attempts a job of
    // the 100 would die in about one run in 30. The test is about finishing with one task per
    // job, so it allows 30 attempts (100 × 0.2^30 ≈ 1e-19).
    let env = TestEnv::new(&worker_config_with(
        &sim,
        "max_attempts = 30",
        &format!("[models.\"{PRO}\"]\nlimits = {{ concurrency = 10 }}\n"),
    ));
    let lines: Vec<String> = (0..100)
        .map(|i| {
            format!(r#"{{"prompt":"job {i}","model":"{PRO}","resolution":"480p","duration":2}}"#)
        })
        .collect();
    let file = write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "-f", &file]);
    let out = run_within(&env, 240);
    assert!(out.status.success(), "{:?}", job_states(&env));
    let jobs = env.jobs();
    assert!(
        jobs.iter().all(|j| j["state"] == "succeeded"),
        "{:?}",
        job_states(&env)
    );
    let stats = sim.stats();
    assert!(
        stats["calls"]["create"]["500"].as_u64().unwrap_or(0) > 5,
        "500s were injected: {stats}"
    );
    assert_eq!(sim.tasks().len(), 100, "one task per job: {stats}");
    assert_own_tasks(&env, &sim);
}

#[test]
fn a_500_after_the_task_exists_is_adopted_by_identity_even_without_a_seed() {
    // Two identical seedless jobs; every create makes its task, then answers 500.
    let sim = sim("[faults]\nerror_after_create_rate = 1.0\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let line = format!(r#"{{"prompt":"same","model":"{V2}","resolution":"480p","duration":4}}"#);
    let file = write_jobs(&env, "jobs.jsonl", &[line.clone(), line]);
    env.ok(&["submit", "-f", &file]);
    let out = run_within(&env, 60);
    assert!(out.status.success(), "{:?}", job_states(&env));
    assert!(
        env.jobs().iter().all(|j| j["state"] == "succeeded"),
        "{:?}",
        job_states(&env)
    );
    assert_eq!(sim.stats()["creates_total"], 2);
    // The identity seedq sent is echoed by list items (and GET).
    for t in sim.tasks() {
        assert!(
            t["request"]["safety_identifier"]
                .as_str()
                .is_some_and(|s| s.starts_with("seedq-")),
            "{t}"
        );
    }
}

#[test]
fn a_create_that_times_out_after_the_task_exists_is_adopted_despite_a_skewed_clock() {
    // The task exists, then the answer takes longer than request_timeout (2 s); Ark's clock
    // is 10 s behind ours.
    let sim = sim("clock_offset_s = -10\n[faults]\nlatency_after_create_ms = 2600\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let id = env
        .ok(&["submit", "slow answer", "-m", PRO])
        .trim()
        .to_string();
    let out = run_within(&env, 60);
    assert!(out.status.success(), "{:?}", job_states(&env));
    let show: serde_json::Value =
        serde_json::from_slice(&env.cli(&["show", &id, "--json"]).stdout).expect("json");
    assert_eq!(show["job"]["state"], "succeeded", "{show}");
    assert!(show["events"].to_string().contains("adopted"), "{show}");
    assert_eq!(sim.stats()["creates_total"], 1, "adopted, not paid twice");
}

#[test]
fn a_users_own_safety_identifier_serialises_creates_and_parked_jobs_hold_no_slot() {
    // Jobs with the user's own safety_identifier cannot be tagged. Two identical ones are
    // never unresolved at once, so the dropped one is adopted, not confused with the other.
    let sim = sim("[faults]\ndrop_after_create = 1\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let line = format!(
        r#"{{"prompt":"mine","model":"{V2}","resolution":"480p","duration":4,"safety_identifier":"user-7"}}"#
    );
    let other = format!(r#"{{"prompt":"other","model":"{V2}","resolution":"480p","duration":4}}"#);
    let file = write_jobs(&env, "jobs.jsonl", &[line.clone(), line, other]);
    env.ok(&["submit", "-f", &file]);
    let out = run_within(&env, 60);
    assert!(out.status.success(), "{:?}", job_states(&env));
    assert!(
        env.jobs().iter().all(|j| j["state"] == "succeeded"),
        "{:?}",
        job_states(&env)
    );
    assert_eq!(sim.stats()["creates_total"], 3);
    assert_own_tasks(&env, &sim);
}

#[test]
fn unprovable_jobs_are_parked_without_blocking_the_queue_and_run_says_so() {
    // Two jobs with the same user safety_identifier and a foreign task that matches them,
    // made outside seedq: the first job's dropped create leaves two candidates. It parks;
    // the other model's jobs still run; `seedq run` exits by itself, non-zero, with a summary.
    let sim = sim(&format!("[models.\"{V2}\"]\nconcurrency = 1\n"));
    let env = TestEnv::new(&worker_config(
        &sim,
        &format!("[models.\"{V2}\"]\nlimits = {{ concurrency = 1 }}\n"),
    ));
    // The foreign task: same model, safety_identifier and shape, created just before.
    let foreign = format!(
        r#"{{"model":"{V2}","content":[{{"type":"text","text":"someone else's"}}],"resolution":"480p","duration":4,"safety_identifier":"user-7"}}"#
    );
    let created = raw_create(&sim, &foreign);
    assert!(created.contains("cgt-"), "{created}");
    set_faults(&sim, serde_json::json!({"drop_after_create": 1}));
    let mine = format!(
        r#"{{"prompt":"mine","model":"{V2}","resolution":"480p","duration":4,"safety_identifier":"user-7","priority":10}}"#
    );
    let rest: Vec<String> = (0..5)
        .map(|i| {
            format!(r#"{{"prompt":"next {i}","model":"{V2}","resolution":"480p","duration":4}}"#)
        })
        .collect();
    let mut lines = vec![mine];
    lines.extend(rest);
    let file = write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "-f", &file]);
    let out = run_within(&env, 60);
    assert_eq!(out.status.code(), Some(3), "{:?}", job_states(&env));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("parked: 1"), "{stderr}");
    let jobs = env.jobs();
    let parked: Vec<_> = jobs
        .iter()
        .filter(|j| j["last_error_code"] == "parked")
        .collect();
    assert_eq!(parked.len(), 1, "{:?}", job_states(&env));
    assert_eq!(
        jobs.iter().filter(|j| j["state"] == "succeeded").count(),
        5,
        "the parked job held no slot: {:?}",
        job_states(&env)
    );
    // The operator sees both candidates and adopts the right one.
    let id = parked[0]["id"].as_str().expect("id").to_string();
    let dry = env
        .keyed(&["reconcile", "--dry-run", "--json"])
        .output()
        .expect("reconcile");
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    let cands = dry[0]["candidates"].as_array().expect("candidates").clone();
    assert_eq!(cands.len(), 2, "{dry}");
    let own = sim
        .tasks()
        .into_iter()
        .find(|t| t["prompt"] == "mine")
        .expect("the job's task");
    // A task that another job owns is refused.
    let owned = jobs
        .iter()
        .find_map(|j| j["remote_task_id"].as_str())
        .expect("an owned task")
        .to_string();
    let refused = env.keyed(&["adopt", &id, &owned]).output().expect("adopt");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already belongs"));
    let own_id = own["id"].as_str().expect("id");
    let ok = env.keyed(&["adopt", &id, own_id]).output().expect("adopt");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = run_within(&env, 60);
    assert!(out.status.success(), "{:?}", job_states(&env));
    assert_own_tasks(&env, &sim);
}

/// POSTs a create straight to the sim, as another client of the account would.
pub(crate) fn raw_create(sim: &SimProc, body: &str) -> String {
    use std::io::{Read, Write};
    let rest = sim.base_url.strip_prefix("http://").expect("http");
    let (host, base) = rest.split_once('/').expect("path");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(
        s,
        "POST /{base}/contents/generations/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        key = crate::helpers::SIM_KEY
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    resp
}

#[test]
fn a_restarted_service_takes_a_dead_holders_jobs_back_at_once() {
    // The create is slow (the task exists, the answer waits); the service is killed in the
    // middle of it. The lease is a minute: the restart must not wait it out.
    let sim = sim("[faults]\nlatency_after_create_ms = 1500\n");
    let env = TestEnv::new(
        &worker_config_with(&sim, "", "").replace("lease = \"3s\"", "lease = \"60s\""),
    );
    let id = env
        .ok(&["submit", "killed mid-create", "-m", PRO])
        .trim()
        .to_string();
    let mut serve = env.serve();
    wait_until(20, "the create to be under way", || {
        env.jobs().iter().any(|j| j["state"] == "submitting")
    });
    std::thread::sleep(Duration::from_millis(300));
    serve.kill();
    let started = Instant::now();
    let out = run_within(&env, 40);
    assert!(out.status.success(), "{:?}", job_states(&env));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}: waited out the lease",
        started.elapsed()
    );
    let show: serde_json::Value =
        serde_json::from_slice(&env.cli(&["show", &id, "--json"]).stdout).expect("json");
    assert_eq!(show["job"]["state"], "succeeded", "{show}");
    assert_eq!(billable(&sim), 1, "one billed task: {:?}", sim.tasks());
}

#[test]
fn cancel_during_a_post_that_never_reached_ark_cancels_the_job() {
    // The create waits 1.5 s, then answers 429 (nothing created): the job goes back to the
    // queue with `cancel_requested`, and its next claim must cancel it, not error.
    let sim = sim("[faults]\nrate_limit_burst = 1\n[faults.latency_ms]\ncreate = 1500\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let id = env
        .ok(&["submit", "cancel me", "-m", PRO])
        .trim()
        .to_string();
    let mut serve = env.serve();
    wait_until(20, "the create to be under way", || {
        env.jobs().iter().any(|j| j["state"] == "submitting")
    });
    env.ok(&["cancel", &id]);
    wait_until(20, "the job to be cancelled", || {
        env.jobs().iter().all(|j| j["state"] == "cancelled")
    });
    assert!(
        serve.0.try_wait().expect("try_wait").is_none(),
        "the service is still up"
    );
    serve.kill();
    assert_eq!(sim.stats()["creates_total"], 0);
}

/// Worker 1 stopped (SIGSTOP) while its create is held at the sim, and worker 2, which took
/// the job over and created its own task, with worker 1's late task made as well.
struct LateCreate {
    sim: SimProc,
    env: TestEnv,
    id: String,
    w1: Stopped,
    w2: crate::helpers::Guard,
}

/// A worker process that the test signals.
struct Stopped(crate::helpers::Guard);

impl Stopped {
    fn signal(&self, sig: &str) {
        crate::helpers::signal(self.0.id(), sig);
    }
}

/// Worker 1's create is held 6 s by the sim before the task is made, and worker 1 is
/// SIGSTOPped past its lease. Worker 2 takes the job over, finds no task once worker 1's
/// POST must have timed out, and sends its own; then worker 1's task appears.
///
/// The sim runs one PRO task at a time, and worker 2's runs for 10 minutes, so the duplicate
/// stays queued (cancellable) however slowly a loaded machine gets through the scenario; with
/// the default 30 s it could start running first, and a running task cannot be cancelled.
fn worker_one_posts_late() -> LateCreate {
    let sim = SimProc::start(&format!(
        "time_scale = 0.5\nvideo_downscale = 16\nreuse_videos = true\n[models.\"{PRO}\"]\nconcurrency = 1\ngeneration = {{ base = \"1200s\", per_video_second = \"0s\" }}\n[faults.latency_ms]\ncreate = 6000\n"
    ));
    // lease 3 s, request_timeout 2 s: worker 2 resends at about 3 s, the late task comes at 8 s.
    // This sim's second lasts half a real one: Ark's read rates are counted over it.
    let cfg = worker_config(&sim, "").replace("rate_window = \"10ms\"", "rate_window = \"500ms\"");
    let env = TestEnv::new(&cfg);
    let id = env.ok(&["submit", "paused", "-m", PRO]).trim().to_string();
    let w1 = env.serve();
    // The create must be at the sim before worker 1 is stopped: `submitting` is recorded
    // before the POST leaves, and a worker stopped in between never sends it.
    wait_until(20, "worker 1's create to reach the sim", || {
        env.jobs().iter().any(|j| j["state"] == "submitting")
            && sim.stats()["received"]["create"].as_u64().unwrap_or(0) >= 1
    });
    crate::helpers::stop_outside_transactions(&env, w1.id());
    let w1 = Stopped(w1);
    set_faults(&sim, serde_json::json!({}));
    let w2 = env.serve();
    wait_until(30, "worker 2 to submit the job", || {
        env.jobs().iter().any(|j| j["remote_task_id"].is_string())
    });
    wait_until(30, "worker 1's late create to make a task", || {
        sim.tasks().len() == 2
    });
    LateCreate {
        sim,
        env,
        id,
        w1,
        w2,
    }
}

#[test]
fn a_paused_worker_that_posts_late_has_its_duplicate_cancelled() {
    // On SIGCONT, worker 1 finds the job is no longer its own and cancels that task while still queued
    // (the sim runs one task at a time, slowly, so it waits in the queue).
    let LateCreate {
        sim,
        env,
        id,
        w1,
        mut w2,
    } = worker_one_posts_late();
    w1.signal("-CONT");
    let mut w1 = w1.0;
    wait_until(90, "the duplicate to be cancelled", || {
        sim.tasks().iter().any(|t| t["status"] == "cancelled")
    });
    w1.kill();
    w2.kill();
    let show: serde_json::Value =
        serde_json::from_slice(&env.cli(&["show", &id, "--json"]).stdout).expect("json");
    let kept = show["job"]["remote_task_id"]
        .as_str()
        .expect("remote")
        .to_string();
    let tasks = sim.tasks();
    assert_eq!(billable(&sim), 1, "one billed task: {tasks:?}");
    assert!(
        tasks
            .iter()
            .any(|t| t["id"] == kept.as_str() && t["status"] != "cancelled"),
        "the job keeps a live task: {tasks:?}"
    );
}

#[test]
fn a_duplicate_cancel_that_gets_no_answer_is_sent_again() {
    // As above, but every DELETE fails with a 500 when worker 1 wakes: the duplicate must
    // stay recorded and be cancelled on a later reconcile round once Ark answers again.
    let LateCreate {
        sim,
        // Kept alive: its directory holds the workers' database.
        env: _env,
        w1,
        mut w2,
        ..
    } = worker_one_posts_late();
    set_faults(&sim, serde_json::json!({"error_rate": {"delete": 1.0}}));
    w1.signal("-CONT");
    let mut w1 = w1.0;
    let failed_deletes = || sim.stats()["calls"]["delete"]["500"].as_u64().unwrap_or(0);
    // One cancel is three DELETEs (the client's own read retries); more than three cancels'
    // worth means the duplicate was kept and sent again on later rounds.
    wait_until(90, "worker 1's DELETEs to be sent again", || {
        failed_deletes() >= 10
    });
    assert!(
        sim.tasks().iter().all(|t| t["status"] != "cancelled"),
        "no DELETE got through"
    );
    set_faults(&sim, serde_json::json!({}));
    wait_until(90, "the duplicate to be cancelled once Ark answers", || {
        sim.tasks().iter().any(|t| t["status"] == "cancelled")
    });
    w1.kill();
    w2.kill();
    assert_eq!(billable(&sim), 1, "one billed task: {:?}", sim.tasks());
}

#[test]
fn the_remote_id_is_logged_at_warn_before_it_is_recorded() {
    let sim = sim("");
    let env = TestEnv::new(&worker_config(&sim, ""));
    env.ok(&["submit", "logged", "-m", PRO]);
    let out = env
        .keyed(&["run"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("seedq run");
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let remote = env.jobs()[0]["remote_task_id"]
        .as_str()
        .expect("remote")
        .to_string();
    let line = log
        .lines()
        .find(|l| l.contains(&remote) && l.contains("recording the remote id"))
        .unwrap_or_else(|| panic!("no WARN line with {remote}:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
}

#[test]
fn failed_polls_do_not_inflate_the_learned_generation_time() {
    // A 2 s generation (42 s nominal × 0.05); every status call fails for the first 8 s.
    // The poller sees the finish at about 8 s; Ark's own record says about 2 s.
    let sim = SimProc::start(
        "time_scale = 0.05\nvideo_downscale = 16\nreuse_videos = true\n[faults.error_rate]\nlist = 1.0\nget = 1.0\n",
    );
    let cfg = worker_config(&sim, "").replace("max_interval = \"200ms\"", "max_interval = \"2s\"");
    let env = TestEnv::new(&cfg);
    env.ok(&[
        "submit",
        "slowly seen",
        "-m",
        PRO,
        "--resolution",
        "480p",
        "--duration",
        "2",
    ]);
    let mut serve = env.serve();
    std::thread::sleep(Duration::from_secs(8));
    set_faults(&sim, serde_json::json!({}));
    wait_until(30, "the job to succeed", || {
        env.jobs().iter().all(|j| j["state"] == "succeeded")
    });
    serve.kill();
    let gen_ms = env.jobs()[0]["gen_ms"].as_i64().expect("gen_ms");
    assert!(
        gen_ms < 5_000,
        "learned {gen_ms} ms for a 2 s generation: failed polls counted as observations"
    );
}

#[test]
fn doctor_reports_the_skew_to_arks_clock() {
    let sim = sim("clock_offset_s = -3\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let out = env.keyed(&["doctor"]).output().expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("clock"))
        .unwrap_or_else(|| panic!("no clock line:\n{text}"));
    // Local minus Ark: Ark is 3 s behind, so about +3 s (the header has whole seconds).
    assert!(
        ["+2s", "+3s", "+4s"].iter().any(|s| line.contains(s)),
        "{line}"
    );
}
