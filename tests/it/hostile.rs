//! Hostile peers: forged callbacks, half-sent requests, descriptor
//! exhaustion, a huge `Retry-After` and a huge API body, each against the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{
    Guard, SIM_KEY, SimProc, TestEnv, bin, free_port, http_json, wait_until, worker_config,
};

const PRO: &str = "doubao-seedance-1-0-pro-250528";

/// A worker config with the admin server on `admin` (plus `admin_extra` lines), callbacks on
/// `callback` (when set) and archiving into `<dir>/archive`.
fn env_with(sim: &SimProc, admin: u16, admin_extra: &str, callback: Option<u16>) -> TestEnv {
    let extra = callback.map_or_else(String::new, |p| {
        format!(
            "[callback]\npublic_url = \"http://127.0.0.1:{p}/hook\"\nlisten = \"127.0.0.1:{p}\"\n"
        )
    });
    let text = worker_config(sim, &extra).replacen(
        "[admin]\nlisten = \"\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n{admin_extra}\n"),
        1,
    );
    let env = TestEnv::new(&text);
    let cfg = std::fs::read_to_string(&env.config).expect("config");
    let url = format!("file://{}", env.path().join("archive").display());
    let cfg = cfg.replacen(
        "[archive]\nurl = \"\"",
        &format!("[archive]\nurl = {url:?}"),
        1,
    );
    std::fs::write(&env.config, cfg).expect("config");
    env
}

/// `seedq serve` under `ulimit -n nofile` (soft and hard), its warnings and errors in
/// `<dir>/serve.log`.
fn serve_limited(env: &TestEnv, nofile: u32) -> Guard {
    let log = std::fs::File::create(env.path().join("serve.log")).expect("log file");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(bin())
        .arg("--config")
        .arg(&env.config)
        .arg("serve")
        .env("ARK_API_KEY", SIM_KEY)
        .env_remove("SEEDQ_CONFIG")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "seedq=warn")
        .stderr(Stdio::from(log));
    Guard(c.spawn().expect("spawn seedq serve"))
}

/// One HTTP/1.1 request over loopback; the status and body, or `None` when no full answer
/// came within `timeout`.
fn request(method: &str, url: &str, body: &str, timeout: Duration) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr: std::net::SocketAddr = host.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, payload) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, payload.to_string()))
}

fn healthz(port: u16, timeout: Duration) -> Option<u16> {
    request(
        "GET",
        &format!("http://127.0.0.1:{port}/healthz"),
        "",
        timeout,
    )
    .map(|(s, _)| s)
}

/// `n` connections to `port`, each with a request line and one header sent, then silence.
fn half_sent(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").ok()?;
            Some(s)
        })
        .collect()
}

fn show(env: &TestEnv, id: &str) -> serde_json::Value {
    serde_json::from_slice(&env.cli(&["show", id, "--json"]).stdout).expect("show --json")
}

fn submit_one(env: &TestEnv, prompt: &str) -> String {
    env.ok(&["submit", "-m", PRO, "--resolution", "480p", prompt])
        .trim()
        .to_string()
}

fn wait_state(env: &TestEnv, id: &str, state: &str, secs: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        last = show(env, id);
        if last["job"]["state"] == state {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("job {id} never reached {state}: {last}");
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

fn creates(sim: &SimProc) -> u64 {
    sim.stats()["creates_total"].as_u64().unwrap_or(0)
}

#[test]
fn a_forged_callback_is_only_a_wake_up() {
    // Tasks run 3 s, long enough to forge callbacks while the real one is still running.
    let sim = SimProc::start(
        "video_downscale = 16\nreuse_videos = true\n[generation]\nbase = \"3s\"\nper_video_second = \"0s\"\n",
    );
    let (admin, cb) = (free_port(), free_port());
    let env = env_with(&sim, admin, "", Some(cb));
    let _serve = env.serve();
    let id = submit_one(&env, "forged callbacks");
    let job = wait_state(&env, &id, "submitted", 20);
    let remote = job["job"]["remote_task_id"]
        .as_str()
        .expect("remote id")
        .to_string();
    let url = sim
        .tasks()
        .iter()
        .find(|t| t["id"] == remote.as_str())
        .and_then(|t| t["request"]["callback_url"].as_str().map(str::to_string))
        .expect("the sim recorded seedq's callback URL");
    assert!(
        !url.contains("token="),
        "the token must not be in the query string: {url}"
    );

    let forged_success = serde_json::json!({
        "id": remote, "model": PRO, "status": "succeeded",
        "content": {"video_url": format!("http://127.0.0.1:{admin}/metrics")},
        "usage": {"completion_tokens": 1, "total_tokens": 1},
        "created_at": 0, "updated_at": 0,
    })
    .to_string();
    let forged_failure = serde_json::json!({
        "id": remote, "model": PRO, "status": "failed",
        "error": {"code": "InternalServiceError", "message": "forged"},
        "created_at": 0, "updated_at": 0,
    })
    .to_string();
    let t = Duration::from_secs(5);
    // A wrong token and an unknown job get the same answer.
    let bad_token = format!("{}zz", url.trim_end_matches(|c: char| c.is_alphanumeric()));
    let unknown_job = url.replace(&id, "01aaaaaaaaaaaaaaaaaaaaaaaa");
    let a = request("POST", &bad_token, &forged_success, t).expect("answer");
    let b = request("POST", &unknown_job, &forged_success, t).expect("answer");
    assert_eq!((a.0, &a.1), (b.0, &b.1), "bad token vs unknown job");
    assert_eq!(a.0, 404);

    // With the right token: both forgeries are only a reason to ask Ark, which says "running".
    for body in [&forged_success, &forged_failure] {
        let (status, _) = request("POST", &url, body, t).expect("answer");
        assert!(status < 500, "{status}");
        let j = show(&env, &id);
        assert_eq!(
            j["job"]["state"], "submitted",
            "a forged body was believed: {j}"
        );
        assert_eq!(j["job"]["attempts"], 1, "{j}");
    }

    let j = wait_state(&env, &id, "archived", 30);
    assert_eq!(j["job"]["attempts"], 1, "{j}");
    assert_eq!(
        creates(&sim),
        1,
        "a forged failure must not buy a second video"
    );
    assert!(
        j["job"]["video_url"]
            .as_str()
            .is_some_and(|u| u.contains("/_sim/files/")),
        "{j}"
    );
    let key = j["job"]["archive_key"].as_str().expect("archive key");
    let file = env.path().join("archive").join(key);
    let bytes = std::fs::read(&file).expect("archived file");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("seedq_"),
        "the admin server's metrics were archived as the video"
    );
    let task = sim
        .tasks()
        .into_iter()
        .find(|t| t["id"] == remote.as_str())
        .expect("task");
    assert_eq!(
        task["video_sha256"].as_str(),
        Some(sha256_hex(&file).as_str())
    );
}

/// The repository's `config.toml` as users get it, with only the addresses changed: Ark is
/// the simulator, the store, the archive, the admin and the callback server are this test's.
/// Every limit and timing stays the shipped one.
fn shipped_env(sim: &SimProc, admin: u16, callback: u16) -> TestEnv {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
            .expect("the shipped config.toml");
    let env = TestEnv::new("");
    // TestEnv wrote `[store]` and `[archive]` tables of its own: keep its store line only.
    let ours = std::fs::read_to_string(&env.config).expect("config");
    let store_line = ours
        .lines()
        .find(|l| l.starts_with("path = ") || l.starts_with("url = \"postgres"))
        .expect("the store line")
        .to_string();
    let archive = format!("file://{}", env.path().join("archive").display());
    let mut text = shipped;
    for (from, to) in [
        ("[store]\n", format!("[store]\n{store_line}\n")),
        (
            "base_url = \"https://ark.cn-beijing.volces.com/api/v3\"",
            format!("base_url = {:?}", sim.base_url),
        ),
        ("[archive]\n", format!("[archive]\nurl = {archive:?}\n")),
        (
            "listen = \"127.0.0.1:9187\"",
            format!("listen = \"127.0.0.1:{admin}\""),
        ),
    ] {
        assert!(text.contains(from), "config.toml no longer has {from:?}");
        text = text.replacen(from, &to, 1);
    }
    // The callback server's own table: other tables have a `listen` and a `public_url` too.
    let at = text
        .find("\n[callback]\n")
        .expect("config.toml has a [callback] table");
    let (head, tail) = text.split_at(at);
    let end = tail[1..].find("\n[").map_or(tail.len(), |i| i + 1);
    let mut section = tail[..end].to_string();
    for (from, to) in [
        (
            "public_url = \"\"",
            format!("public_url = \"http://127.0.0.1:{callback}/hook\""),
        ),
        (
            "listen = \"\"",
            format!("listen = \"127.0.0.1:{callback}\""),
        ),
    ] {
        assert!(section.contains(from), "[callback] no longer has {from:?}");
        section = section.replacen(from, &to, 1);
    }
    let text = format!("{head}{section}{}", &tail[end..]);
    std::fs::write(&env.config, text).expect("config");
    env
}

#[test]
fn half_sent_requests_do_not_stop_healthz_or_jobs_with_the_shipped_config() {
    // Callbacks are how jobs finish here: the shipped first poll is a minute away, so each
    // job needs the simulator's callback to get through the flooded callback server.
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");
    let (admin, cb) = (free_port(), free_port());
    let env = shipped_env(&sim, admin, cb);
    let doctor = env
        .keyed(&["doctor", "--offline"])
        .output()
        .expect("doctor");
    let said = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert!(
        said.contains("servers") && said.contains("connections each"),
        "doctor says nothing of the servers' caps: {said}"
    );
    // 200 idle sockets on each server are 400 descriptors, three times the limit.
    let _serve = serve_limited(&env, 128);
    wait_until(20, "the admin server", || {
        healthz(admin, Duration::from_secs(1)) == Some(200)
    });
    let ids: Vec<String> = (0..3)
        .map(|i| submit_one(&env, &format!("through the flood {i}")))
        .collect();
    let idle_admin = half_sent(admin, 200);
    let idle_cb = half_sent(cb, 200);
    assert_eq!((idle_admin.len(), idle_cb.len()), (200, 200), "connects");
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let answered = healthz(admin, Duration::from_secs(1));
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            answered,
            Some(200),
            "/healthz did not answer within 1 s past 200 half-sent requests"
        );
        // More half-sent requests between the checks: the flood goes on.
        drop(half_sent(admin, 20));
    }
    eprintln!("/healthz answered within {slowest:?} past 200 half-sent requests on each port");
    for id in &ids {
        let j = wait_state(&env, id, "archived", 60);
        assert_eq!(j["job"]["attempts"], 1, "{j}");
    }
    assert_eq!(creates(&sim), 3, "each job created once");
    assert!(
        sim.stats()["callbacks_delivered"].as_u64().unwrap_or(0) >= 3,
        "the callbacks did not get through: {}",
        sim.stats()
    );
    // Neither the servers nor anything behind them met EMFILE.
    let log = std::fs::read_to_string(env.path().join("serve.log")).expect("serve.log");
    assert!(
        !log.contains("Too many open files") && !log.contains("accepting a connection failed"),
        "the service ran out of descriptors: {log}"
    );
    drop((idle_admin, idle_cb));
}

/// Sets `pid`'s descriptor limit, returning the old one.
fn set_nofile(pid: u32, new: rustix::process::Rlimit) -> rustix::process::Rlimit {
    use rustix::process::{Pid, Resource, prlimit};
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid")).expect("a pid");
    prlimit(Some(pid), Resource::Nofile, new).expect("prlimit")
}

#[test]
fn a_local_resource_error_costs_no_attempt() {
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");
    let admin = free_port();
    let env = env_with(&sim, admin, "", None);
    let serve = env.serve();
    wait_until(20, "the admin server", || {
        healthz(admin, Duration::from_secs(1)) == Some(200)
    });
    // The servers' caps keep their own descriptors in check, so run the process out of them
    // from outside. A new descriptor takes the lowest free number and must be below the soft
    // limit: with a limit of 3 (stdin, stdout and stderr stay open) every new socket fails
    // (EMFILE) while those already open keep working. A limit of "what it holds now" left
    // room whenever a descriptor counted was closed a moment later (the healthz probe's
    // socket, a pooled connection), and then creates could succeed.
    // The soft limit only: the hard one stays, so putting it back needs no privilege.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    let before = set_nofile(
        serve.id(),
        rustix::process::Rlimit {
            current: Some(3),
            maximum: hard,
        },
    );
    // Eight creates at once (one claim batch): the client's pool holds the one connection
    // the reconciler's listing opened, so the others need new sockets and meet EMFILE.
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"model": PRO, "prompt": format!("out of descriptors {i}"), "resolution": "480p"})
                .to_string()
        })
        .collect();
    let file = crate::helpers::write_jobs(&env, "jobs.jsonl", &lines);
    env.ok(&["submit", "--file", &file]);
    let ids: Vec<String> = env
        .jobs()
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect();
    wait_until(20, "a create to meet EMFILE", || {
        ids.iter().any(|id| {
            show(&env, id)["events"]
                .to_string()
                .contains("local resource")
        })
    });
    set_nofile(serve.id(), before);
    for id in &ids {
        let j = wait_state(&env, id, "archived", 60);
        assert_eq!(
            j["job"]["attempts"], 1,
            "a local resource error cost an attempt: {j}"
        );
    }
    assert_eq!(creates(&sim), 8);
}

#[test]
fn a_huge_retry_after_neither_panics_nor_costs_an_attempt() {
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");
    // u64::MAX seconds: `Duration::from_secs_f64` panics on it.
    http_json(
        "POST",
        &format!("{}/_sim/faults", sim.root),
        Some(serde_json::json!({"rate_limit_burst": 1, "retry_after_secs": u64::MAX})),
    );
    let admin = free_port();
    let env = env_with(&sim, admin, "", None);
    let mut serve = env.serve();
    let id = submit_one(&env, "retry after forever");
    let mut j = serde_json::Value::Null;
    wait_until(20, "the 429 to be recorded", || {
        j = show(&env, &id);
        j["events"].to_string().contains("throttled")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        serve.0.try_wait().expect("try_wait").is_none(),
        "seedq serve died"
    );
    assert_eq!(healthz(admin, Duration::from_secs(5)), Some(200));
    let j = show(&env, &id);
    assert_eq!(j["job"]["state"], "queued", "{j}");
    assert_eq!(j["job"]["attempts"], 0, "a 429 is no attempt: {j}");
    let wait_ms = j["job"]["next_attempt_at"]
        .as_i64()
        .expect("next_attempt_at")
        - j["job"]["updated_at"].as_i64().expect("updated_at");
    assert!(
        (0..=3_600_000).contains(&wait_ms),
        "the pause is capped at an hour, got {wait_ms} ms"
    );
}

/// A fake Ark whose every answer is a 200 JSON body of `size` bytes, streamed with no length.
fn huge_ark(size: usize) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"id\":\"",
                );
                let chunk = vec![b'a'; 1 << 20];
                let mut sent = 0;
                while sent < size {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                let _ = s.write_all(b"\"}");
            });
        }
    });
    format!("http://127.0.0.1:{port}/api/v3")
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_huge_api_response_is_capped_not_buffered() {
    let base = huge_ark(300 << 20);
    let env = TestEnv::new(&format!(
        "[ark]\nbase_url = \"{base}\"\nrequest_timeout = \"20s\"\n\n[dispatch]\nidle_interval = \"50ms\"\nreconcile_interval = \"1h\"\n\n[admin]\nlisten = \"\"\n"
    ));
    let mut serve = env.serve();
    let id = submit_one(&env, "a 300 MB answer");
    let mut j = serde_json::Value::Null;
    wait_until(30, "the create to fail", || {
        j = show(&env, &id);
        j["job"]["state"] != "queued" && j["job"]["state"] != "submitting"
    });
    let peak = peak_rss_kib(serve.id());
    serve.kill();
    // A create whose answer cannot be read may have made a task: reconcile, never guess.
    assert_eq!(j["job"]["state"], "submit_unknown", "{j}");
    assert!(
        j["job"]["last_error_message"]
            .as_str()
            .is_some_and(|m| m.contains("cap")),
        "{j}"
    );
    assert!(
        peak < 150 * 1024,
        "peak RSS {peak} KiB: the body was buffered"
    );
}

#[test]
fn a_callback_slower_than_the_read_timeout_is_still_answered() {
    // Ark's GET takes 1.5 s (under the 2 s request timeout); the read timeout is 1 s. The
    // timeout is for idle peers, not for our own handler, which hyper keeps watching for a
    // hang-up while it runs.
    let sim = SimProc::start(
        "video_downscale = 16\nreuse_videos = true\n[generation]\nbase = \"20s\"\nper_video_second = \"0s\"\n[faults]\nlatency_ms = { get = 1500 }\n",
    );
    let (admin, cb) = (free_port(), free_port());
    let env = env_with(&sim, admin, "read_timeout = \"1s\"", Some(cb));
    let _serve = env.serve();
    let id = submit_one(&env, "slow get");
    wait_state(&env, &id, "submitted", 20);
    let url = sim
        .tasks()
        .first()
        .and_then(|t| t["request"]["callback_url"].as_str().map(str::to_string))
        .expect("callback URL");
    let started = Instant::now();
    let answer = request("POST", &url, "{}", Duration::from_secs(10));
    assert_eq!(
        answer.map(|a| a.0),
        Some(200),
        "answer after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn a_result_url_off_the_trusted_origin_is_refused_unless_allowed() {
    // seedq talks to the sim as `localhost`, the sim's file URLs say `127.0.0.1`: plain http
    // on a loopback host that is not the API's origin, so not downloaded.
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");
    let admin = free_port();
    let refused = env_with(&sim, admin, "", None);
    let cfg = std::fs::read_to_string(&refused.config).expect("config");
    std::fs::write(
        &refused.config,
        cfg.replace("http://127.0.0.1:", "http://localhost:"),
    )
    .expect("config");
    let id = submit_one(&refused, "refused download");
    // The job fails, so `seedq run` says so and exits 3.
    let summary = refused.run_service_with_failures();
    assert!(summary.contains("refusing to download"), "{summary}");
    let j = show(&refused, &id);
    assert_eq!(j["job"]["state"], "failed", "{j}");
    assert_eq!(j["job"]["last_error_code"], "archive_url_refused", "{j}");
    assert!(
        j["job"]["last_error_message"]
            .as_str()
            .is_some_and(|m| m.contains("refusing to download http://127.0.0.1:")),
        "{j}"
    );

    // The same with 127.0.0.1 on the allow-list archives.
    let allowed = env_with(&sim, free_port(), "", None);
    let cfg = std::fs::read_to_string(&allowed.config).expect("config");
    let cfg = cfg
        .replace("http://127.0.0.1:", "http://localhost:")
        .replacen(
            "[archive]\n",
            "[archive]\ndownload_allow = [\"127.0.0.1\"]\n",
            1,
        );
    std::fs::write(&allowed.config, cfg).expect("config");
    let id = submit_one(&allowed, "allowed download");
    allowed.run_service();
    let j = show(&allowed, &id);
    assert_eq!(j["job"]["state"], "archived", "{j}");
}
