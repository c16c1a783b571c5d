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
