//! Validation accepts what Ark accepts, through `seedq submit` and through
//! clients we did not write: the official Python SDK and the third-party `seedance` CLI.
//!
//! The cases live in `tests/sdk/validation_cases.json`, so the SDK (against `seedq sim`) and
//! `seedq submit` are judged on the same list and must agree with each other and the file.
//! A missing SDK or `seedance` binary fails with the set-up command; nothing is skipped.

use std::collections::BTreeMap;
use std::process::Command;

use crate::helpers::{
    SIM_KEY, SimProc, TestEnv, code_and_err, no_proxy, seedance_generate, worker_config,
};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const V20: &str = "doubao-seedance-2-0-260128";
const V15_PRO: &str = "doubao-seedance-1-5-pro-251215";
const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/sdk/validation_cases.json"
);
const SDK_CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/sdk_check.py");

/// Fast simulated time and tiny videos: only the verdicts and the lifecycle matter here.
fn fast_sim() -> SimProc {
    SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n")
}

fn write(env: &TestEnv, name: &str, text: &str) -> String {
    let p = env.path().join(name);
    std::fs::write(&p, text).expect("write file");
    p.to_string_lossy().into_owned()
}

/// `seedq submit --file` with one JSONL line: (exit code, stderr).
fn submit_line(env: &TestEnv, line: &serde_json::Value) -> (Option<i32>, String) {
    let f = write(env, "job.jsonl", &format!("{line}\n"));
    code_and_err(&env.cli(&["submit", "--file", &f]))
}

fn job_request(env: &TestEnv, id: &str) -> serde_json::Value {
    let out = env.ok(&["show", id, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("show --json is JSON");
    let body = v["job"]["request_json"]
        .as_str()
        .expect("the frozen request");
    serde_json::from_str(body).expect("the request is JSON")
}

/// The case file's entries.
fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(CASES).expect("read validation_cases.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("cases are JSON");
    v["cases"].as_array().cloned().expect("a cases array")
}

/// A case as a seedq job spec: Ark's `priority` is `remote_priority` there.
fn as_job_spec(case: &serde_json::Value) -> serde_json::Value {
    let name = case["name"].as_str().unwrap_or("case");
    let mut spec = serde_json::json!({
        "model": case["model"],
        "prompt": format!("validation case: {name}"),
    });
    let obj = spec.as_object_mut().expect("object");
    for (k, v) in case["fields"].as_object().expect("fields") {
        let k = if k == "priority" {
            "remote_priority"
        } else {
            k
        };
        obj.insert(k.to_string(), v.clone());
    }
    if let Some(d) = case.get("draft_task") {
        obj.insert("draft_task".into(), d.clone());
    }
    spec
}

fn sdk_python() -> String {
    std::env::var("SEEDQ_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The sim's verdict for every case, as the official SDK sees it.
fn sdk_verdicts(sim: &SimProc) -> BTreeMap<String, String> {
    const INSTALL: &str = "run the suite with tests/run.sh, which installs the SDK into a venv \
                           (or: pip install -r tests/sdk/requirements.txt and set SEEDQ_TEST_PYTHON)";
    let python = sdk_python();
    let probe = Command::new(&python)
        .args(["-c", "import volcenginesdkarkruntime"])
        .output();
    match probe {
        Err(e) => panic!("{python} is needed for the SDK validation test ({e}); {INSTALL}"),
        Ok(o) if !o.status.success() => panic!(
            "the Ark Python SDK is not importable by {python}; {INSTALL}\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
    let mut c = Command::new(&python);
    c.arg(SDK_CHECK)
        .arg(&sim.base_url)
        .arg(SIM_KEY)
        .arg("--cases-only");
    let out = no_proxy(c).output().expect("run sdk_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk_check.py --cases-only failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("verdict\t"))
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_official_sdk_against_the_sim_and_seedq_submit_agree_on_every_case() {
    let sim = fast_sim();
    let sdk = sdk_verdicts(&sim);
    let cases = cases();
    assert_eq!(sdk.len(), cases.len(), "one SDK verdict per case: {sdk:?}");

    let env = TestEnv::new("");
    let mut accepted = 0;
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let expect = case["expect"].as_str().expect("expect");
        let (code, err) = submit_line(&env, &as_job_spec(case));
        let seedq = match code {
            Some(0) => "accept".to_string(),
            Some(2) => {
                // `line 1: PARAM VALUE … for MODEL: ALLOWED`; seedq's own name for Ark's
                // `priority` is `remote_priority`.
                let param = err
                    .split("line 1: ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("")
                    .to_string();
                assert!(
                    err.contains(case["model"].as_str().unwrap_or("")),
                    "{name}: the error names no model: {err}"
                );
                if param == "remote_priority" {
                    "priority".to_string()
                } else {
                    param
                }
            }
            other => panic!("{name}: seedq submit exited {other:?}: {err}"),
        };
        if seedq == "accept" {
            accepted += 1;
        }
        assert_eq!(
            sdk.get(name).map(String::as_str),
            Some(seedq.as_str()),
            "{name}: the sim (via the SDK) and seedq submit disagree; seedq said: {err}"
        );
        assert_eq!(seedq, expect, "{name}: {err}");
    }
    // Nothing was stored for a refused case.
    assert_eq!(env.jobs().len(), accepted);
}

#[test]
fn documented_defaults_are_accepted_by_submit_and_complete_at_the_sim() {
    let sim = fast_sim();
    let env = TestEnv::new(&worker_config(&sim, ""));
    let lines = [
        serde_json::json!({"model": V20, "prompt": "a kite", "seed": -1,
            "tools": [{"type": "web_search"}], "camera_fixed": false, "key": "v20"}),
        serde_json::json!({"model": "dreamina-seedance-2-0-fast-260128", "prompt": "a boat",
            "seed": -1, "key": "byteplus"}),
        serde_json::json!({"model": PRO, "prompt": "a cat", "generate_audio": false,
            "remote_priority": 0, "output_format": "mp4", "key": "pro"}),
        serde_json::json!({"model": V15_PRO, "prompt": "a fox", "draft": true, "key": "draft"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let f = write(&env, "jobs.jsonl", &text);
    env.ok(&["submit", "--file", &f]);
    env.run_service();
    let jobs = env.jobs();
    assert_eq!(jobs.len(), lines.len());
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    // At the sim: seedq sent 2.0 no seed (the default -1 is what it does; the sources say 2.0
    // takes none) and its tools; the draft ran at 480p.
    let tasks = sim.tasks();
    let v20 = tasks
        .iter()
        .find(|t| t["model"] == V20)
        .expect("the 2.0 task");
    assert!(v20["request"].get("seed").is_none(), "{v20}");
    assert_eq!(v20["request"]["tools"][0]["type"], "web_search", "{v20}");
    let draft = tasks
        .iter()
        .find(|t| t["model"] == V15_PRO)
        .expect("the 1.5 pro task");
    assert_eq!(
        (
            draft["nominal_width"].as_u64(),
            draft["nominal_height"].as_u64()
        ),
        (Some(864), Some(496)),
        "{draft}"
    );
}

#[test]
fn refusals_name_field_value_allowed_and_model_and_store_nothing() {
    let env = TestEnv::new("");
    // --flex on 2.x (docs/ark-api.md §2.1 service_tier).
    let (code, err) = code_and_err(&env.cli(&["submit", "--model", V20, "--flex", "x"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("service_tier flex is not supported for doubao-seedance-2-0-260128")
            && err.contains("default only;")
            && err.contains("--flex"),
        "{err}"
    );
    // duration and frames together: both named.
    let (code, err) = submit_line(
        &env,
        &serde_json::json!({"model": PRO, "prompt": "x", "duration": 5, "frames": 57}),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("duration 5 and frames 57 are both given") && err.contains(PRO),
        "{err}"
    );
    // remote_priority, not priority.
    let (code, err) = submit_line(
        &env,
        &serde_json::json!({"model": V20, "prompt": "x", "remote_priority": 12}),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("remote_priority 12 is out of range") && err.contains("0..=9"),
        "{err}"
    );
    // A seed out of range (tests/golden tanstack-ai-024).
    let (code, err) =
        code_and_err(&env.cli(&["submit", "--model", V20, "--seed", "4294967296", "x"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("seed 4294967296 is out of range") && err.contains("-1..=4294967295"),
        "{err}"
    );
    // An edit without a reference video (docs/ark-api.md §13/§14): Ark's TaskTypeConstraint.
    let (code, err) = submit_line(
        &env,
        &serde_json::json!({"model": "doubao-seedance-2-5-260628", "prompt": "x",
            "omni_reference_task_type": "edit"}),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("content without a reference_video breaks the task type's rules")
            && err.contains("a reference_video item for omni_reference_task_type edit"),
        "{err}"
    );
    assert!(env.jobs().is_empty(), "nothing stored");
    // The accepted counterparts: any seed on 2.x (tests/golden tanstack-ai-022), any other
    // task type (modelark-mcp-007).
    let (code, err) = code_and_err(&env.cli(&["submit", "--model", V20, "--seed", "5", "x"]));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = submit_line(
        &env,
        &serde_json::json!({"model": "doubao-seedance-2-5-260628", "prompt": "x",
            "omni_reference_task_type": "remix"}),
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_prompt_with_inline_flags_keeps_its_newlines() {
    let env = TestEnv::new("");
    let out = env.ok(&[
        "submit",
        "--model",
        PRO,
        "Shot 1: dawn over the bay.\nShot 2: a gull lands. --rs 720p --dur 4",
    ]);
    let id = out.trim();
    let req = job_request(&env, id);
    assert_eq!(
        req["content"][0]["text"], "Shot 1: dawn over the bay.\nShot 2: a gull lands.",
        "{req}"
    );
    assert_eq!(req["duration"], 4, "{req}");
    assert_eq!(req["resolution"], "720p", "{req}");
}

/// The third-party `seedance` CLI (crates.io 0.3.0) against the sim: its create, with the
/// defaults it sends on every call (seed -1, 720p, adaptive, 5 s, audio, no watermark) and
/// its BytePlus model id, is accepted, and it polls the task to completion and downloads it.
#[test]
fn the_third_party_seedance_cli_creates_and_completes_against_the_sim() {
    // Unknown models refused, as by Ark: the BytePlus id must be a known alias of 2.0 and get
    // its checks (which must take the CLI's `seed: -1`).
    let sim = SimProc::start(
        "time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\naccept_unknown_models = false\n",
    );
    let home = tempfile::tempdir().expect("tempdir");
    let out_file = home.path().join("clip.mp4");
    seedance_generate(&sim.base_url, SIM_KEY, home.path(), &out_file);
    let video = std::fs::read(&out_file).expect("seedance wrote the video");
    assert_eq!(&video[4..8], b"ftyp", "an MP4");
    let tasks = sim.tasks();
    assert_eq!(tasks.len(), 1, "exactly one create: {tasks:?}");
    let t = &tasks[0];
    assert_eq!(t["model"], "dreamina-seedance-2-0-260128");
    assert_eq!(t["status"], "succeeded");
    assert_eq!(t["request"]["seed"], -1, "it sends the default seed: {t}");
    assert_eq!(t["request"]["generate_audio"], true, "{t}");
    // Rendered by the 2.0 rules: 720p 16:9 from the 1.5 pro / 2.0 pixel table.
    assert_eq!(
        (t["nominal_width"].as_u64(), t["nominal_height"].as_u64()),
        (Some(1280), Some(720)),
        "{t}"
    );
}

/// Fields real clients send that Ark's create API does not have (`camerafixed`, `fps`,
/// `negative_prompt`) are named in a warning at submit and sent as given; the sim ignores
/// them as Ark does (tests/golden/README.md; vercel-ai-031).
#[test]
fn client_only_fields_are_named_in_a_warning_and_ignored_by_the_sim() {
    let sim = fast_sim();
    let env = TestEnv::new(&worker_config(&sim, ""));
    let line = serde_json::json!({"model": PRO, "prompt": "a cat", "camerafixed": true,
        "fps": 30, "negative_prompt": "blur", "extra": {"custom_param": 1}, "key": "k"});
    let f = write(&env, "job.jsonl", &format!("{line}\n"));
    // --check validates, warns and stores nothing.
    let out = env.cli(&["submit", "--check", "--file", &f]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(0), "{err}");
    for field in ["camerafixed", "fps", "negative_prompt", "custom_param"] {
        assert!(
            err.contains(&format!("warning: line 1: {field} is not")),
            "{field}: {err}"
        );
    }
    assert!(err.contains("camera_fixed"), "names what Ark reads: {err}");
    env.assert_nothing_stored();
    // A bad line: exit 2, nothing stored.
    let bad = write(
        &env,
        "bad.jsonl",
        &format!(
            "{}\n",
            serde_json::json!({"model": PRO, "prompt": "x", "duration": 99})
        ),
    );
    let (code, err) = code_and_err(&env.cli(&["submit", "--check", "--file", &bad]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("duration 99 is out of range"), "{err}");
    env.assert_nothing_stored();
    // Submitted for real: the fields reach the sim as given, and the task succeeds.
    let (code, err) = code_and_err(&env.cli(&["submit", "--file", &f]));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: line 1: negative_prompt is not"),
        "{err}"
    );
    env.run_service();
    let jobs = env.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "succeeded", "{}", jobs[0]);
    let tasks = sim.tasks();
    assert_eq!(tasks.len(), 1);
    let req = &tasks[0]["request"];
    assert_eq!(req["camerafixed"], true, "{req}");
    assert_eq!(req["negative_prompt"], "blur", "{req}");
    assert_eq!(req["custom_param"], 1, "{req}");
    assert!(
        req.get("camera_fixed").is_none(),
        "not reinterpreted: {req}"
    );
}

/// docs/ark-api.md §14 and tests/golden (comfyui-pr15395-001, live-notes-sd25ext-008): a 2.5
/// first-frame job with an explicit ratio is refused at submit with Ark's
/// `InvalidParameter.TaskTypeConstraint` rule; a job whose prompt Ark reads as an edit with a
/// fixed duration is created once, fails at the sim with that code, and is not retried.
#[test]
fn task_type_constraints_are_refused_at_submit_or_fail_once_at_the_sim() {
    let sim = fast_sim();
    let env = TestEnv::new(&worker_config(&sim, ""));
    let (code, err) = submit_line(
        &env,
        &serde_json::json!({"model": "dreamina-seedance-2-5-260628", "prompt": "a fox",
            "first_frame": "https://example.com/f.png", "ratio": "16:9"}),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("ratio 16:9 is not supported") && err.contains("adaptive"),
        "{err}"
    );
    env.assert_nothing_stored();
    let (code, err) = submit_line(
        &env,
        &serde_json::json!({"model": "dreamina-seedance-2-5-260628",
            "prompt": "replace the jacket with a red one", "duration": 5,
            "video_refs": ["https://example.com/src.mp4"]}),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: line 1: Ark is likely to create this task and then fail it with InvalidParameter.TaskTypeConstraint"),
        "{err}"
    );
    env.run_service_with_failures();
    let jobs = env.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "failed", "{}", jobs[0]);
    assert_eq!(
        jobs[0]["last_error_code"], "InvalidParameter.TaskTypeConstraint",
        "{}",
        jobs[0]
    );
    let tasks = sim.tasks();
    assert_eq!(tasks.len(), 1, "one create, no retry: {tasks:?}");
    assert_eq!(tasks[0]["status"], "failed");
}
