//! Pausing and resuming a model or batch (`seedq pause` / `seedq resume`) against the sim: a
//! paused batch's or model's queued jobs stay queued while other work runs, and resuming lets
//! them run.

use crate::helpers::{TestEnv, code_and_err, fast_sim, wait_until, worker_config, write_jobs};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const LITE_T2V: &str = "doubao-seedance-1-0-lite-t2v-250428";

fn lines(model: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"prompt":"{prefix} {i}","model":"{model}","resolution":"480p","duration":2}}"#
            )
        })
        .collect()
}

fn states(env: &TestEnv, f: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    env.jobs()
        .iter()
        .filter(|j| f(j))
        .map(|j| j["state"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_paused_batch_and_model_stay_queued_while_others_run_and_resume_lets_them_run() {
    let sim = fast_sim("");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let held = write_jobs(&env, "held.jsonl", &lines(PRO, "held", 3));
    let free = write_jobs(&env, "free.jsonl", &lines(PRO, "free", 4));
    let lite = write_jobs(&env, "lite.jsonl", &lines(LITE_T2V, "lite", 2));
    env.ok(&["submit", "-f", &held, "--batch", "held"]);
    env.ok(&["submit", "-f", &free, "--batch", "free"]);
    env.ok(&["submit", "-f", &lite, "--batch", "lite"]);

    // Bad input: exit 2, naming the field and the value; nothing paused.
    let (code, err) = code_and_err(&env.cli(&["pause", "--model", "nope-model"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("model") && err.contains("nope-model"), "{err}");
    let (code, err) = code_and_err(&env.cli(&["pause", "--batch", "no-such"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("batch") && err.contains("no-such"), "{err}");
    let (code, _) = code_and_err(&env.cli(&["pause"]));
    assert_eq!(code, Some(2));
    let (code, _) = code_and_err(&env.cli(&["pause", "--model", PRO, "--batch", "held"]));
    assert_eq!(code, Some(2));

    assert!(env.ok(&["pause", "--batch", "held"]).contains("paused"));
    assert!(env.ok(&["pause", "--batch", "held"]).contains("already"));
    assert!(env.ok(&["pause", "--model", LITE_T2V]).contains("paused"));
    let show = env.ok(&["batch", "show", "held"]);
    assert!(show.contains("paused"), "{show}");
    let show = env.ok(&["batch", "show", "free"]);
    assert!(!show.contains("paused"), "{show}");

    let _serve = env.serve();
    let batch_is = |b: &'static str| move |j: &serde_json::Value| j["batch_id"] == b;
    wait_until(60, "the free batch to finish", || {
        states(&env, batch_is("free"))
            .iter()
            .all(|s| s == "succeeded")
    });
    // The other batch ran to its end; the paused batch and model never left the queue.
    let held_states = states(&env, batch_is("held"));
    assert_eq!(held_states.len(), 3);
    assert!(held_states.iter().all(|s| s == "queued"), "{held_states:?}");
    let lite_states = states(&env, batch_is("lite"));
    assert!(lite_states.iter().all(|s| s == "queued"), "{lite_states:?}");
    assert_eq!(
        sim.tasks().len(),
        4,
        "only the free batch reached the sim: {:?}",
        sim.tasks()
    );

    assert!(env.ok(&["resume", "--batch", "held"]).contains("resumed"));
    wait_until(60, "the resumed batch to finish", || {
        states(&env, batch_is("held"))
            .iter()
            .all(|s| s == "succeeded")
    });
    assert!(
        states(&env, batch_is("lite")).iter().all(|s| s == "queued"),
        "the model stays paused"
    );
    assert!(env.ok(&["resume", "--model", LITE_T2V]).contains("resumed"));
    assert!(
        env.ok(&["resume", "--model", LITE_T2V])
            .contains("not paused")
    );
    wait_until(60, "the resumed model's jobs to finish", || {
        states(&env, batch_is("lite"))
            .iter()
            .all(|s| s == "succeeded")
    });
    assert!(!env.ok(&["batch", "show", "held"]).contains("paused"));
}

/// POSTs to the admin listener over plain HTTP/1.1; returns (status, body).
fn post(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    let tok = token.map_or(String::new(), |t| format!("X-Seedq-Token: {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{tok}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read");
    let status = r
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = r.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

#[test]
fn the_dashboard_adopts_a_parked_job_through_the_same_checks_as_the_cli() {
    // Park a job as identity.rs does: a foreign task with the same user safety_identifier and
    // shape, and the job's own create dropped, leave two candidates nobody can tell apart.
    const V2: &str = "doubao-seedance-2-0-260128";
    let sim = fast_sim(&format!("[models.\"{V2}\"]\nconcurrency = 1\n"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = worker_config(
        &sim,
        &format!("[models.\"{V2}\"]\nlimits = {{ concurrency = 1 }}\n"),
    )
    .replace(
        "[admin]\nlisten = \"\"",
        &format!("[admin]\nlisten = \"{addr}\"\ntoken = \"tok-123\""),
    );
    assert!(cfg.contains("tok-123"), "{cfg}");
    let env = TestEnv::new(&cfg);
    let foreign = format!(
        r#"{{"model":"{V2}","content":[{{"type":"text","text":"someone else's"}}],"resolution":"480p","duration":4,"safety_identifier":"user-7"}}"#
    );
    assert!(crate::identity::raw_create(&sim, &foreign).contains("cgt-"));
    crate::helpers::http_json(
        "POST",
        &format!("{}/_sim/faults", sim.root),
        Some(serde_json::json!({"drop_after_create": 1})),
    );
    let mine = format!(
        r#"{{"prompt":"mine","model":"{V2}","resolution":"480p","duration":4,"safety_identifier":"user-7","priority":10}}"#
    );
    let other = format!(r#"{{"prompt":"other","model":"{V2}","resolution":"480p","duration":4}}"#);
    let file = write_jobs(&env, "jobs.jsonl", &[mine, other]);
    env.ok(&["submit", "-f", &file]);
    let _serve = env.serve();
    let parked = || {
        env.jobs()
            .into_iter()
            .find(|j| j["last_error_code"] == "parked")
    };
    wait_until(60, "the ambiguous job to park", || parked().is_some());
    let id = parked().expect("parked")["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_until(60, "the other job to finish", || {
        env.jobs().iter().any(|j| j["state"] == "succeeded")
    });
    let owned = env
        .jobs()
        .iter()
        .find_map(|j| j["remote_task_id"].as_str().map(str::to_string))
        .expect("an owned task");
    let own = sim
        .tasks()
        .into_iter()
        .find(|t| t["prompt"] == "mine")
        .expect("the job's task")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = |t: &str| format!("/ui/jobs/{id}/adopt?task={t}");
    // No token: refused, nothing changes.
    assert_eq!(post(&addr, &path(&own), None).0, 403);
    assert_eq!(post(&addr, &path(&own), Some("wrong")).0, 403);
    // The CLI's checks: a task another job owns is refused, with the reason.
    let (code, body) = post(&addr, &path(&owned), Some("tok-123"));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("already belongs"), "{body}");
    assert_eq!(post(&addr, &path(""), Some("tok-123")).0, 400);
    assert_eq!(parked().expect("still parked")["id"], id.as_str());
    // The right task is adopted and the job finishes.
    let (code, body) = post(&addr, &path(&own), Some("tok-123"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("adopted"), "{body}");
    wait_until(60, "the adopted job to succeed", || {
        env.jobs().iter().any(|j| {
            j["id"] == id.as_str()
                && j["state"] == "succeeded"
                && j["remote_task_id"] == own.as_str()
        })
    });
}

#[test]
fn seedq_run_finishes_the_rest_and_does_not_wait_for_a_paused_batch() {
    let sim = fast_sim("");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let held = write_jobs(&env, "held.jsonl", &lines(PRO, "held", 2));
    let free = write_jobs(&env, "free.jsonl", &lines(PRO, "free", 2));
    env.ok(&["submit", "-f", &held, "--batch", "held"]);
    env.ok(&["submit", "-f", &free, "--batch", "free"]);
    env.ok(&["pause", "--batch", "held"]);
    let mut run = crate::helpers::Guard(env.keyed(&["run"]).spawn().expect("spawn run"));
    let mut status = None;
    wait_until(60, "seedq run to exit", || {
        status = run.0.try_wait().expect("try_wait");
        status.is_some()
    });
    let batch_is = |b: &'static str| move |j: &serde_json::Value| j["batch_id"] == b;
    assert!(
        states(&env, batch_is("free"))
            .iter()
            .all(|s| s == "succeeded")
    );
    assert!(states(&env, batch_is("held")).iter().all(|s| s == "queued"));
}
