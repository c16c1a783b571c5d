//! The job CLI against a temp database: submit, ls, show, cancel, retry, imports.

use crate::helpers::{TestEnv, code_and_err};

const PRO: &str = "doubao-seedance-1-0-pro-250528";

#[test]
fn submit_ls_show_cancel_retry() {
    let env = TestEnv::new("");
    let id = env.ok(&[
        "submit",
        "a cat yawns --rs 720p --dur 4",
        "-m",
        PRO,
        "--tag",
        "pets",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 26, "a ULID: {id}");

    let jobs = env.jobs();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["state"], "queued");
    assert_eq!(j["model"], PRO);
    assert!(j["remote_task_id"].is_null());
    assert!(
        j["created_at"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000_000)
    );
    let body: serde_json::Value =
        serde_json::from_str(j["request_json"].as_str().expect("request")).expect("json");
    assert_eq!(body["resolution"], "720p");
    assert_eq!(body["duration"], 4);
    assert_eq!(body["content"][0]["text"], "a cat yawns");
    assert!(
        body["seed"].as_i64().is_some(),
        "a derived seed is frozen in"
    );

    let filtered = env.ok(&["ls", "--tag", "pets"]);
    assert!(filtered.contains(&id));
    let none = env.ok(&["ls", "--tag", "cars"]);
    assert!(!none.contains(&id));

    let show = env.ok(&["show", &id]);
    assert!(
        show.contains("queued") && show.contains("enqueued"),
        "{show}"
    );

    assert!(env.ok(&["cancel", &id]).contains("cancelled"));
    let shown = env.cli(&["show", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(v["job"]["state"], "cancelled");
    let events: Vec<&str> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["to_state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(events, vec!["queued", "cancelled"]);

    assert!(env.ok(&["retry", &id]).contains("queued again"));
    assert_eq!(env.jobs()[0]["state"], "queued");

    let stats = env.ok(&["stats", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&stats).expect("json");
    assert_eq!(rows[0]["jobs"], 1);
    assert_eq!(rows[0]["state"], "queued");
}

#[test]
fn not_found_exits_1_and_bad_input_exits_2() {
    let env = TestEnv::new("");
    // An existing, empty store: on a missing one, read commands exit 2 (tests/it/storage.rs).
    env.ok(&["migrate"]);
    let (code, err) = code_and_err(&env.cli(&["show", "01nope"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("no job"));
    let (code, err) = code_and_err(&env.cli(&["cancel", "01nope"]));
    assert_eq!(code, Some(1), "{err}");

    let (code, err) = code_and_err(&env.cli(&["submit", "x", "-m", PRO, "--duration", "15"]));
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "duration 15 is out of range for doubao-seedance-1-0-pro-250528: 2..=12 seconds"
        ),
        "{err}"
    );
    let (code, err) = code_and_err(&env.cli(&["submit", "x"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("model is missing"), "{err}");
    assert!(env.jobs().is_empty(), "nothing was stored");
}

#[test]
fn jsonl_import_is_all_or_nothing_and_idempotent() {
    let env = TestEnv::new("");
    let bad = env.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{{\"prompt\":\"one\",\"model\":\"{PRO}\"}}\n\n{{\"prompt\":\"two\",\"frames\":30}}\n{{\"prompt\":\"three\",\"colour\":\"red\"}}\n"
        ),
    )
    .expect("write");
    let out = env.cli(&["submit", "--file", bad.to_str().expect("path"), "-m", PRO]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(2));
    assert!(err.contains("line 3: frames 30 is out of range"), "{err}");
    assert!(err.contains("line 4: unknown field `colour`"), "{err}");
    assert!(env.jobs().is_empty(), "a bad line imports nothing");

    let good = env.path().join("good.jsonl");
    let lines: String = (0..50)
        .map(|i| {
            format!(
                "{{\"prompt\":\"shot {i}\",\"key\":\"k{i}\",\"duration\":{}}}\n",
                2 + i % 10
            )
        })
        .collect();
    std::fs::write(&good, lines).expect("write");
    let import = || {
        env.ok(&[
            "submit",
            "-f",
            good.to_str().expect("path"),
            "-m",
            PRO,
            "--flex",
        ])
    };
    let out = import();
    assert!(out.contains("imported 50 job(s), skipped 0"), "{out}");
    let out = import();
    assert!(out.contains("imported 0 job(s), skipped 50"), "{out}");
    let jobs = env.jobs();
    assert_eq!(jobs.len(), 50);
    assert!(jobs.iter().all(|j| j["service_tier"] == "flex"));
}

#[test]
fn two_processes_enqueue_at_once_without_locking_errors() {
    let env = TestEnv::new("");
    env.ok(&["migrate"]);
    let mut files = Vec::new();
    for p in 0..2 {
        let f = env.path().join(format!("p{p}.jsonl"));
        let lines: String = (0..5000)
            .map(|i| format!("{{\"prompt\":\"p{p} job {i}\",\"key\":\"p{p}-{i}\"}}\n"))
            .collect();
        std::fs::write(&f, lines).expect("write");
        files.push(f);
    }
    let children: Vec<_> = files
        .iter()
        .map(|f| {
            env.cmd(&["submit", "-f", f.to_str().expect("path"), "-m", PRO])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        let (code, err) = code_and_err(&out);
        assert_eq!(code, Some(0), "{err}");
        assert!(!err.contains("locked"), "{err}");
    }
    let stats: serde_json::Value =
        serde_json::from_str(&env.ok(&["stats", "--json"])).expect("json");
    assert_eq!(stats[0]["jobs"], 10_000);
}

#[test]
fn migrate_is_idempotent_and_config_never_prints_secrets() {
    let env = TestEnv::new("");
    let a = env.ok(&["migrate"]);
    let b = env.ok(&["migrate"]);
    let latest = if env.postgres_url.is_some() {
        seedq::store::postgres_latest()
    } else {
        seedq::store::migrate::latest()
    };
    let latest = format!("schema version {latest}");
    assert!(a.contains(&latest) && b.contains(&latest), "{a} {b}");
    let out = env
        .cmd(&["config", "show"])
        .env("ARK_API_KEY", "sk-top-secret-value")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!text.contains("sk-top-secret-value"));
    assert!(text.contains("ark api key: \"[redacted]\""), "{text}");
    assert!(env.ok(&["config", "check"]).contains("configuration ok"));

    let bad = TestEnv::new("[poll]\nfirst_pol_after = \"5s\"\n");
    let (code, err) = code_and_err(&bad.cli(&["config", "check"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("first_pol_after"), "{err}");
}
