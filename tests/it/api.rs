//! The front doors (`[api] listen`, docs/api.md) driven by clients we did not write: the
//! official Volcengine Python SDK and the official `openai` SDK against `seedq serve`, with
//! `seedq sim` as Ark (tests/sdk/api_check.py); and keys' daily caps over plain HTTP.

use std::io::{Read, Write};
use std::process::Command;

use crate::helpers::{Guard, SIM_KEY, TestEnv, fast_sim, free_port, wait_until, worker_config};

/// `seedq serve` with the doors as configured and archiving into the env's directory.
pub(crate) fn serve(env: &TestEnv) -> Guard {
    serve_with(env, &[])
}

/// [`serve`] with extra environment settings (`SEEDQ__SECTION__KEY`).
pub(crate) fn serve_with(env: &TestEnv, vars: &[(&str, String)]) -> Guard {
    let mut c = env.keyed(&["serve"]);
    c.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
    c.env(
        "SEEDQ__ARCHIVE__URL",
        format!("file://{}", env.path().join("archive").display()),
    );
    if std::env::var_os("TEST_LOG").is_none() {
        c.stderr(std::process::Stdio::null());
    }
    Guard(c.spawn().expect("spawn seedq serve"))
}

pub(crate) fn env_with_doors(sim: &crate::helpers::SimProc, port: u16) -> TestEnv {
    TestEnv::new(&worker_config(
        sim,
        &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
    ))
}

/// `seedq keys create NAME ARGS…`: the key it prints once.
pub(crate) fn make_key(env: &TestEnv, name: &str, args: &[&str]) -> String {
    let mut all = vec!["keys", "create", name];
    all.extend_from_slice(args);
    let key = env.ok(&all).trim().to_string();
    assert!(key.starts_with("sq_"), "{key}");
    key
}

/// One HTTP/1.1 request with a bearer key: (status, JSON body).
pub(crate) fn call(
    port: u16,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    call_with(port, method, path, key, "", body)
}

/// [`call`] with extra header lines (each ending in `\r\n`).
fn call_with(
    port: u16,
    method: &str,
    path: &str,
    key: &str,
    extra: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the door");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Authorization: Bearer {key}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let text = String::from_utf8_lossy(&resp);
    let (head, payload) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head[9..12].parse().expect("a status code");
    (
        status,
        serde_json::from_str(payload).unwrap_or(serde_json::Value::Null),
    )
}

pub(crate) fn wait_for_door(port: u16) {
    wait_until(30, "the API listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

fn python() -> String {
    std::env::var("SEEDQ_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// tests/sdk/webhook_receiver.py on `port`: it checks each webhook's Standard Webhooks
/// signature under `secret` and appends what it got to `log`.
fn receiver(port: u16, secret: &str, log: &std::path::Path) -> Guard {
    let mut c = Command::new(python());
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/webhook_receiver.py"
    ))
    .arg(port.to_string())
    .arg(secret)
    .arg(log);
    let g = Guard(c.spawn().expect("start the webhook receiver"));
    wait_until(30, "the receiver", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    g
}

/// The first webhook `log` holds, once it holds one.
fn first_webhook(log: &std::path::Path) -> serde_json::Value {
    wait_until(60, "a webhook", || {
        std::fs::read_to_string(log).is_ok_and(|t| !t.trim().is_empty())
    });
    let text = std::fs::read_to_string(log).expect("the receiver's log");
    serde_json::from_str(text.lines().next().expect("a line")).expect("JSON")
}

#[test]
fn official_sdks_create_poll_and_download_through_both_doors() {
    let sim = fast_sim("");
    let port = free_port();
    let env = env_with_doors(&sim, port);
    let key_a = make_key(&env, "a", &[]);
    let key_b = make_key(&env, "b", &[]);
    // The serve log is kept, to check no key reaches it.
    let log_path = env.path().join("serve.log");
    let mut c = env.keyed(&["serve"]);
    c.env(
        "SEEDQ__ARCHIVE__URL",
        format!("file://{}", env.path().join("archive").display()),
    )
    .env("RUST_LOG", "debug")
    .stderr(std::fs::File::create(&log_path).expect("the serve log"));
    let serve = Guard(c.spawn().expect("spawn seedq serve"));
    wait_for_door(port);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/api_check.py");
    let mut c = Command::new(python());
    c.arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(&key_a)
        .arg(&key_b)
        .arg(&sim.base_url)
        .arg(SIM_KEY);
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    let out = c.output().expect("run api_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "api_check.py failed (install the SDKs: pip install -r tests/sdk/requirements.txt and set \
         SEEDQ_TEST_PYTHON):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The uploaded input_reference is the job's first frame (an embedded image, kept once in
    // the store's image table and referenced from the body).
    let framed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("framed\t"))
        .expect("the framed video's id");
    let shown = env.ok(&["show", framed, "--json"]);
    assert!(
        shown.contains(r#"\"role\":\"first_frame\""#) && shown.contains("seedq-image:sha256:"),
        "{shown}"
    );
    // The keys never reach the log or the store in the clear.
    let keys = env.ok(&["keys", "ls", "--json"]);
    assert!(
        !keys.contains(&key_a) && !keys.contains(&key_a[3..]),
        "{keys}"
    );
    drop(serve);
    let log = std::fs::read_to_string(&log_path).expect("the serve log");
    assert!(
        log.contains("INFO") || log.contains("DEBUG"),
        "the log has lines: {log}"
    );
    for key in [&key_a, &key_b] {
        assert!(!log.contains(&key[3..]), "a key is in the serve log");
        for file in ["seedq.db", "seedq.db-wal"] {
            let bytes = std::fs::read(env.path().join(file)).unwrap_or_default();
            assert!(
                !bytes
                    .windows(key.len() - 3)
                    .any(|w| w == &key.as_bytes()[3..]),
                "a key is in {file}"
            );
        }
    }
}

#[test]
fn a_keys_daily_cap_holds_its_jobs_while_another_keys_go_on() {
    let sim = fast_sim("");
    let port = free_port();
    let env = env_with_doors(&sim, port);
    // One 5 s 720p 1.0 pro video is estimated at about ¥1.5: a ¥2 cap takes one, not two.
    let capped = make_key(&env, "capped", &["--max-cost-per-day", "2"]);
    // The test reads this key's jobs every 50 ms for up to two and a half minutes (2 400 a
    // minute): its rate is set above that, so only the other key's cap can hold anything.
    let free = make_key(&env, "free", &["--rpm", "6000"]);
    let admin = free_port();
    let _serve = serve_with(
        &env,
        &[("SEEDQ__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))],
    );
    wait_for_door(port);

    let body = r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"a kite"}],"duration":5,"resolution":"720p"}"#;
    let tasks = "/api/v3/contents/generations/tasks";
    let create = |key: &str| {
        let (status, v) = call(port, "POST", tasks, key, body);
        assert_eq!(status, 200, "{v}");
        v["id"].as_str().expect("an id").to_string()
    };
    let c1 = create(&capped);
    let c2 = create(&capped);
    let f1 = create(&free);
    // seedq's extras ride on headers.
    let (code, v) = call_with(
        port,
        "POST",
        tasks,
        &free,
        "X-Seedq-Batch: nightly\r\nX-Seedq-Priority: 7\r\n",
        body,
    );
    assert_eq!(code, 200, "{v}");
    let f2 = v["id"].as_str().expect("an id").to_string();
    let (code, v) = call_with(
        port,
        "POST",
        tasks,
        &free,
        "X-Seedq-Priority: high\r\n",
        body,
    );
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("X-Seedq-Priority")),
        "{v}"
    );
    let status = |key: &str, id: &str| {
        let (code, v) = call(port, "GET", &format!("{tasks}/{id}"), key, "");
        assert_eq!(code, 200, "{v}");
        v["status"].as_str().unwrap_or_default().to_string()
    };
    // Which of the capped key's two jobs the cap lets through is not promised: four
    // dispatchers claim and hold concurrently, and on a loaded machine the second job's hold
    // can come first. One goes through; the other waits.
    let mut through = None;
    wait_until(
        150,
        "the uncapped key's jobs and one of the capped key's",
        || {
            let capped_done: Vec<&String> = [&c1, &c2]
                .into_iter()
                .filter(|id| status(&capped, id) == "succeeded")
                .collect();
            through = capped_done.first().map(|id| (*id).clone());
            capped_done.len() == 1 && [&f1, &f2].iter().all(|id| status(&free, id) == "succeeded")
        },
    );
    // From here on, c1 is the job that went through and c2 the one held.
    let (c1, c2) = if through.as_ref() == Some(&c1) {
        (c1, c2)
    } else {
        (c2, c1)
    };
    assert_eq!(
        status(&capped, &c2),
        "queued",
        "the cap holds the other job"
    );
    let jobs = env.jobs();
    let held = jobs
        .iter()
        .find(|j| j["id"] == c2.as_str())
        .expect("the held job");
    assert_eq!(held["last_error_code"], "budget_daily", "{held}");
    // The dashboard says why it waits, with the key's spend and cap.
    let page = http_get(admin, "/ui");
    let line = "held by the daily cap of API key capped: ¥1.";
    assert!(
        page.contains(line)
            && page.contains(" of ¥2.00 spent; 1 job waits for the next budget day (starts 00:00 "),
        "the overview's wait line: {}",
        page.split("unbatched").nth(1).unwrap_or(&page)
    );
    // A key's batch is scoped to the key.
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["keys", "ls", "--json"])).expect("keys ls --json");
    let free_id = listed
        .as_array()
        .and_then(|a| a.iter().find(|k| k["key"]["name"] == "free"))
        .and_then(|k| k["key"]["id"].as_str())
        .expect("the free key's id")
        .to_string();
    let extra = jobs.iter().find(|j| j["id"] == f2.as_str()).expect("f2");
    assert_eq!(
        (&extra["batch_id"], &extra["priority"]),
        (
            &serde_json::json!(format!("api:{free_id}:nightly")),
            &serde_json::json!(7)
        ),
        "{extra}"
    );
    assert!(
        held["last_error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("--max-cost-per-day"),
        "{held}"
    );

    // A wrong key, and one key reading the other's job: 401 and 404 in Ark's shape.
    let (code, v) = call(port, "GET", &format!("{tasks}/{c1}"), "sq_nope", "");
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (401, Some("AuthenticationError"))
    );
    let (code, _) = call(port, "GET", &format!("{tasks}/{c1}"), &free, "");
    assert_eq!(code, 404);
    // `keys ls` shows each key's jobs and today's spend: the capped key's one create that
    // fits (about ¥1.5) and no more than its cap.
    let ls: serde_json::Value =
        serde_json::from_str(&env.ok(&["keys", "ls", "--json"])).expect("keys ls --json");
    let capped_row = ls
        .as_array()
        .expect("an array")
        .iter()
        .find(|r| r["key"]["name"] == "capped")
        .expect("the capped key");
    assert_eq!(capped_row["jobs"], 2, "{capped_row}");
    let spent: f64 = capped_row["spent_today_cny"]
        .as_str()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("a CNY amount");
    assert!(spent > 0.5 && spent <= 2.0, "{capped_row}");
    // A revoked key is refused at once.
    env.ok(&["keys", "revoke", "free"]);
    let (code, _) = call(port, "GET", &format!("{tasks}/{f1}"), &free, "");
    assert_eq!(code, 401);
}

#[test]
fn a_webhook_is_signed_and_survives_a_sigkill_between_archive_and_delivery() {
    let sim = fast_sim("");
    let port = free_port();
    let hook_port = free_port();
    // `download_allow` lands in the env's `[archive]` table: the receiver is on loopback,
    // which the downloader's SSRF rules refuse unless allowed.
    let env = TestEnv::new(&format!(
        "download_allow = [\"127.0.0.1:{hook_port}\"]\n{}",
        worker_config(
            &sim,
            &format!("[api]\nlisten = \"127.0.0.1:{port}\"\nwebhook_min_backoff = \"100ms\"\n"),
        )
    ));
    let hook = format!("http://127.0.0.1:{hook_port}/hook");
    let out = env.cli(&["keys", "create", "hooked", "--webhook-url", &hook]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    let secret = err
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .expect("the signing secret is shown once")
        .to_string();

    let mut worker = serve(&env);
    wait_for_door(port);
    let tasks = "/api/v3/contents/generations/tasks";
    let body = r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"a heron"}],"duration":5}"#;
    let (code, v) = call(port, "POST", tasks, &key, body);
    assert_eq!(code, 200, "{v}");
    let id = v["id"].as_str().expect("an id").to_string();
    // The receiver is down: the job is archived, its webhook fails and waits for a retry.
    wait_until(60, "the job archived", || {
        call(port, "GET", &format!("{tasks}/{id}"), &key, "").1["status"] == "succeeded"
    });
    worker.kill();

    let log = env.path().join("hooks.jsonl");
    let _receiver = receiver(hook_port, &secret, &log);
    let _worker = serve(&env);
    let first = first_webhook(&log);
    assert_eq!(first["verified"], true, "{first}");
    assert_eq!(first["id"], format!("msg_{id}_success"), "{first}");
    assert_eq!(first["body"]["id"], id.as_str());
    assert_eq!(first["body"]["status"], "succeeded");
    assert!(
        first["body"]["content"]["video_url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("/files/{id}/video.mp4"))),
        "{first}"
    );
}

#[test]
fn two_hundred_clients_create_at_once_on_a_three_worker_fleet() {
    let sim = fast_sim("");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let env = TestEnv::new(&worker_config(&sim, ""));
    let key = make_key(&env, "load", &[]);
    let _workers: Vec<Guard> = ports
        .iter()
        .map(|p| serve_with(&env, &[("SEEDQ__API__LISTEN", format!("127.0.0.1:{p}"))]))
        .collect();
    for p in &ports {
        wait_for_door(*p);
    }
    let tasks = "/api/v3/contents/generations/tasks";
    let body = r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"a crowd"}],"duration":5}"#;
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (port, key) = (ports[i % 3], &key);
                s.spawn(move || {
                    let (code, v) = call(port, "POST", tasks, key, body);
                    assert_eq!(code, 200, "create {i}: {v}");
                    v["id"].as_str().expect("an id").to_string()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client thread"))
            .collect()
    });
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 200, "every create is its own job");
    wait_until(180, "every job archived", || {
        env.jobs()
            .iter()
            .filter(|j| j["state"] == "archived")
            .count()
            == 200
    });
    // Any worker answers for any job.
    for (i, id) in ids.iter().enumerate().take(9) {
        let (code, v) = call(
            ports[(i + 1) % 3],
            "GET",
            &format!("{tasks}/{id}"),
            &key,
            "",
        );
        assert_eq!(
            (code, v["status"].as_str()),
            (200, Some("succeeded")),
            "{v}"
        );
    }
    let stats = sim.stats();
    assert_eq!(
        stats["creates_total"], 200,
        "each job created at Ark once: {stats}"
    );
    let remote: std::collections::HashSet<String> = env
        .jobs()
        .iter()
        .filter_map(|j| j["remote_task_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(remote.len(), 200, "each job has its own task");
}

#[test]
fn deleting_a_running_job_is_refused_by_ark_and_keeps_it_visible_through_openai() {
    // Real-time sim: a 5 s clip runs for about a minute (crates/seedq-sim/src/config.rs, Timing).
    let sim = crate::helpers::SimProc::start("video_downscale = 16\nreuse_videos = true\n");
    let port = free_port();
    let env = env_with_doors(&sim, port);
    let key = make_key(&env, "a", &[]);
    let admin = "admin-token-for-the-door-test-0123456789";
    let _serve = serve_with(&env, &[("SEEDQ__ADMIN__TOKEN", admin.to_string())]);
    wait_for_door(port);

    let body = r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"a kite"}],"duration":5,"resolution":"720p"}"#;
    let tasks = "/api/v3/contents/generations/tasks";
    // No server secret is set to sign the admin token's webhooks: its callback_url is
    // refused, naming the setting that would allow it.
    let hooked = body.replace(
        r#""duration":5"#,
        r#""duration":5,"callback_url":"https://hooks.example.com/x""#,
    );
    let (code, v) = call(port, "POST", tasks, admin, &hooked);
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("callback_url")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.webhook_secret_file")),
        "{v}"
    );
    // More task ids than one list takes are refused, naming the filter.
    let ids: Vec<String> = (0..501)
        .map(|i| format!("filter.task_ids=cgt-{i}"))
        .collect();
    let (code, v) = call(port, "GET", &format!("{tasks}?{}", ids.join("&")), &key, "");
    assert_eq!(
        (code, v["error"]["param"].as_str()),
        (400, Some("filter.task_ids")),
        "{v}"
    );
    let (code, v) = call(port, "POST", tasks, &key, body);
    assert_eq!(code, 200, "{v}");
    let id = v["id"].as_str().expect("an id").to_string();
    wait_until(30, "the task to run at Ark", || {
        call(port, "GET", &format!("{tasks}/{id}"), &key, "").1["status"] == "running"
    });
    // docs/ark-api.md §14: a running task cannot be deleted.
    let (code, v) = call(port, "DELETE", &format!("{tasks}/{id}"), &key, "");
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("InvalidAction.RunningTaskDeletion")),
        "{v}"
    );
    // The OpenAI door cancels it, but the task may be paid for: the record stays.
    let (code, v) = call(port, "DELETE", &format!("/v1/videos/{id}"), &key, "");
    assert_eq!((code, v["object"].as_str()), (200, Some("video")), "{v}");
    assert_ne!(v["deleted"], serde_json::Value::Bool(true), "{v}");
    let (code, v) = call(port, "GET", &format!("/v1/videos/{id}"), &key, "");
    assert_eq!(code, 200, "{v}");
    // Revoked by the key itself: only the key's id is echoed.
    let out = env.ok(&["keys", "revoke", &key]);
    assert!(
        out.starts_with("revoked key_") && !out.contains(&key[3..]),
        "{out}"
    );
    let (code, v) = call(port, "GET", &format!("/v1/videos/{id}"), &key, "");
    assert_eq!(code, 401, "{v}");
}

#[test]
fn with_archiving_off_success_is_announced_once_ark_succeeds() {
    let sim = fast_sim("");
    let port = free_port();
    let hook_port = free_port();
    let env = TestEnv::new(&format!(
        "download_allow = [\"127.0.0.1:{hook_port}\"]\n{}",
        worker_config(&sim, &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"))
    ));
    let hook = format!("http://127.0.0.1:{hook_port}/hook");
    let out = env.cli(&["keys", "create", "hooked", "--webhook-url", &hook]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let secret = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .expect("the signing secret is shown once")
        .to_string();
    let log = env.path().join("hooks.jsonl");
    let _receiver = receiver(hook_port, &secret, &log);
    // The env's own config has `[archive] url = ""`: archiving is off.
    let mut c = env.keyed(&["serve"]);
    if std::env::var_os("TEST_LOG").is_none() {
        c.stderr(std::process::Stdio::null());
    }
    let _serve = Guard(c.spawn().expect("spawn seedq serve"));
    wait_for_door(port);
    let tasks = "/api/v3/contents/generations/tasks";
    let body = r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"a heron"}],"duration":5}"#;
    let (code, v) = call(port, "POST", tasks, &key, body);
    assert_eq!(code, 200, "{v}");
    let id = v["id"].as_str().expect("an id").to_string();
    let first = first_webhook(&log);
    assert_eq!(first["verified"], true, "{first}");
    assert_eq!(first["id"], format!("msg_{id}_success"), "{first}");
    assert_eq!(first["body"]["status"], "succeeded", "{first}");
}

#[test]
fn with_archiving_off_openai_says_when_arks_file_expires_and_redirects_to_it() {
    let sim = fast_sim("");
    let port = free_port();
    let env = env_with_doors(&sim, port);
    let key = make_key(&env, "a", &[]);
    // The env's own config has `[archive] url = ""`: archiving is off.
    let mut c = env.keyed(&["serve"]);
    if std::env::var_os("TEST_LOG").is_none() {
        c.stderr(std::process::Stdio::null());
    }
    let _serve = Guard(c.spawn().expect("spawn seedq serve"));
    wait_for_door(port);
    let body = r#"{"model":"doubao-seedance-1-0-pro-250528","prompt":"a heron","seconds":"5","size":"1280x720"}"#;
    let (code, v) = call(port, "POST", "/v1/videos", &key, body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["expires_at"],
        serde_json::Value::Null,
        "not done yet: {v}"
    );
    let id = v["id"].as_str().expect("an id").to_string();
    let mut done = serde_json::Value::Null;
    wait_until(60, "the video to complete", || {
        done = call(port, "GET", &format!("/v1/videos/{id}"), &key, "").1;
        done["status"] == "completed"
    });
    let completed = done["completed_at"].as_i64().expect("completed_at");
    let expires = done["expires_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("expires_at is set with archiving off: {done}"));
    // Ark's URL lives 24 h (docs/ark-api.md §3.4) or its X-Tos-Expires: a day or so, not
    // less than an hour, not more than the 14 days of the longest documented retention.
    assert!(
        expires > completed + 3600 && expires <= completed + 14 * 86_400 + 60,
        "expires_at {expires} vs completed_at {completed}"
    );
    let (code, _) = call(port, "GET", &format!("/v1/videos/{id}/content"), &key, "");
    assert_eq!(code, 302, "the content is a redirect to Ark's URL");
}

/// One request's status and its `Retry-After` header (seconds), if any.
fn status_and_retry_after(port: u16, path: &str, key: &str) -> (u16, Option<u64>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the door");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Authorization: Bearer {key}\r\n\r\n"
    )
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let text = String::from_utf8_lossy(&resp);
    let (head, _) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head[9..12].parse().expect("a status code");
    let retry = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().parse().ok())
            .flatten()
    });
    (status, retry)
}

#[test]
fn two_workers_share_one_keys_rpm() {
    let sim = fast_sim("");
    let (pa, pb) = (free_port(), free_port());
    let env = env_with_doors(&sim, pa);
    let key = make_key(&env, "paced", &["--rpm", "4"]);
    let _a = serve_with(&env, &[("SEEDQ__API__LISTEN", format!("127.0.0.1:{pa}"))]);
    let _b = serve_with(&env, &[("SEEDQ__API__LISTEN", format!("127.0.0.1:{pb}"))]);
    wait_for_door(pa);
    wait_for_door(pb);
    let list = "/v1/videos";
    // Four a minute for the fleet: two through each worker pass, the fifth (through either)
    // is refused, where a limit per worker would let eight through.
    for port in [pa, pb, pa, pb] {
        let (status, _) = status_and_retry_after(port, list, &key);
        assert_eq!(status, 200, "within the key's rpm (port {port})");
    }
    for port in [pa, pb] {
        let (status, retry) = status_and_retry_after(port, list, &key);
        assert_eq!(status, 429, "over the key's rpm, fleet-wide (port {port})");
        let retry = retry.expect("a Retry-After header");
        assert!((1..=120).contains(&retry), "Retry-After {retry}");
    }
    // Another key is not held by this one's count.
    let other = make_key(&env, "other", &["--rpm", "4"]);
    assert_eq!(status_and_retry_after(pb, list, &other).0, 200);
}

/// A plain GET without credentials: the answer's body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let text = String::from_utf8_lossy(&resp).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

/// With `api.webhook_secret_file` set, a job created with the admin token may carry a
/// `callback_url`: its webhook is signed with that secret (a Standard Webhooks receiver
/// verifies it), and a malformed secret file stops `seedq serve` without showing its text.
#[test]
fn an_admin_token_jobs_webhook_is_signed_with_the_servers_secret() {
    let sim = fast_sim("");
    let port = free_port();
    let hook_port = free_port();
    let env = TestEnv::new(&format!(
        "download_allow = [\"127.0.0.1:{hook_port}\"]\n{}",
        worker_config(&sim, &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"))
    ));
    let admin = "admin-token-for-the-webhook-test-0123456789";
    let secret_file = env.path().join("webhook_secret");
    // A secret that is not `whsec_<base64>`: refused at start, its text never shown.
    std::fs::write(&secret_file, "not-a-secret-hunter2\n").expect("write the secret");
    let out = env
        .keyed(&["serve"])
        .env("SEEDQ__ADMIN__TOKEN", admin)
        .env("SEEDQ__API__WEBHOOK_SECRET_FILE", &secret_file)
        .output()
        .expect("run seedq serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("api.webhook_secret_file") && !err.contains("hunter2"),
        "{err}"
    );

    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwc2VlZHEtdGVzdA==";
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write the secret");
    let log = env.path().join("hooks.jsonl");
    let _receiver = receiver(hook_port, secret, &log);
    let _serve = serve_with(
        &env,
        &[
            ("SEEDQ__ADMIN__TOKEN", admin.to_string()),
            (
                "SEEDQ__API__WEBHOOK_SECRET_FILE",
                secret_file.display().to_string(),
            ),
        ],
    );
    wait_for_door(port);
    let hook = format!("http://127.0.0.1:{hook_port}/hook");
    let body = format!(
        r#"{{"model":"doubao-seedance-1-0-pro-250528","content":[{{"type":"text","text":"a heron"}}],"duration":5,"callback_url":"{hook}"}}"#
    );
    let tasks = "/api/v3/contents/generations/tasks";
    let (code, v) = call(port, "POST", tasks, admin, &body);
    assert_eq!(code, 200, "{v}");
    let id = v["id"].as_str().expect("an id").to_string();
    let first = first_webhook(&log);
    assert_eq!(first["verified"], true, "{first}");
    assert_eq!(first["id"], format!("msg_{id}_success"), "{first}");
    assert_eq!(first["body"]["id"], id.as_str(), "{first}");
    assert_eq!(first["body"]["status"], "succeeded", "{first}");
    // The secret is not in the store.
    for file in ["seedq.db", "seedq.db-wal"] {
        let bytes = std::fs::read(env.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(20).any(|w| w == &secret.as_bytes()[6..26]),
            "the secret is in {file}"
        );
    }
}
