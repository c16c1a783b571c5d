//! Operations: the systemd unit, sd_notify over a real socket, `/metrics` against the database,
//! SIGHUP, scheduled pruning, the flex window and `seedq doctor`.
//!
//! `serve` learns nothing about the test from the environment except what systemd would give
//! it: `NOTIFY_SOCKET` (a unix datagram socket the test binds), `WATCHDOG_USEC`/`WATCHDOG_PID`,
//! and `SEEDQ__ADMIN__LISTEN=127.0.0.1:0`; the admin address comes back in READY's STATUS line.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{SimProc, TestEnv, bin, code_and_err, wait_until, worker_config};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const LITE_T2V: &str = "doubao-seedance-1-0-lite-t2v-250428";
/// A port nothing listens on: the service must not need Ark for these tests.
const NO_ARK: &str = "http://127.0.0.1:9/api/v3";

/// The test's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every message received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Self {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads messages until one satisfies `want`; returns it.
    fn until(&mut self, secs: u64, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            }
        }
        panic!("no {what} within {secs} s; got {:?}", self.seen);
    }

    /// The admin address from READY's STATUS line.
    fn ready(&mut self) -> String {
        let msg = self.until(20, "READY=1", |m| m.lines().any(|l| l == "READY=1"));
        msg.split("admin on http://")
            .nth(1)
            .and_then(|r| r.split(['\n', ';']).next())
            .unwrap_or_else(|| panic!("no admin address in {msg:?}"))
            .to_string()
    }
}

/// A running `seedq serve`, killed on drop so a failing test leaves nothing behind.
struct Service(Option<Child>);

impl Service {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    }

    /// SIGTERM, then the exit status (the service drains within its 5 s grace).
    fn stop(mut self) -> ExitStatus {
        self.signal("-TERM");
        let mut child = self.0.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `seedq serve` as systemd would start it; `watchdog_usec` also sets `WATCHDOG_PID` to the
/// service's own pid (the shell execs into it).
fn serve(env: &TestEnv, notify: &NotifySocket, watchdog_usec: Option<u64>) -> Service {
    spawn_serve(env, notify, watchdog_usec, None)
}

/// `serve` with its log (stderr) in `log`, filtered by the config's `log.level` alone.
fn serve_logged(env: &TestEnv, notify: &NotifySocket, log: &Path) -> Service {
    spawn_serve(env, notify, None, Some(log))
}

fn spawn_serve(
    env: &TestEnv,
    notify: &NotifySocket,
    watchdog_usec: Option<u64>,
    log: Option<&Path>,
) -> Service {
    let template = env.keyed(&["serve"]);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(if watchdog_usec.is_some() {
            "WATCHDOG_PID=$$ exec \"$0\" \"$@\""
        } else {
            "exec \"$0\" \"$@\""
        })
        .arg(template.get_program())
        .args(template.get_args());
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("NOTIFY_SOCKET", &notify.path)
        .env("SEEDQ__ADMIN__LISTEN", "127.0.0.1:0")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC");
    if let Some(us) = watchdog_usec {
        c.env("WATCHDOG_USEC", us.to_string());
    }
    c.stdin(Stdio::null()).stdout(Stdio::null());
    if let Some(path) = log {
        c.env_remove("RUST_LOG")
            .stderr(std::fs::File::create(path).expect("log file"));
    } else if std::env::var_os("TEST_LOG").is_none() {
        c.stderr(Stdio::null());
    }
    Service(Some(c.spawn().expect("spawn seedq serve")))
}

/// GET over loopback: status and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to admin");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "admin answers have a length"
    );
    (status, body.to_string())
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format strictly enough to catch malformed lines and duplicate families.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut types = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("type name").to_string();
            assert!(types.insert(name.clone()), "family {name} declared twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples of `name` whose labels include `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn scrape(addr: &str) -> Vec<Sample> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

fn write_jobs(env: &TestEnv, lines: &[String]) -> String {
    let p = env.path().join("jobs.jsonl");
    std::fs::write(&p, lines.join("\n")).expect("write jobs");
    p.to_string_lossy().into_owned()
}

fn count(env: &TestEnv, state: &str) -> usize {
    env.jobs().iter().filter(|j| j["state"] == state).count()
}

#[test]
fn unit_file_passes_systemd_analyze_verify_and_scores_ok() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/seedq.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    assert!(
        text.contains("\nExecStart=/usr/local/bin/seedq serve --config /etc/seedq/config.toml\n")
    );
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "StateDirectory=seedq",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
    let stop_s: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    let grace = seedq::config::Config::default().service.shutdown_grace;
    assert!(
        Duration::from_secs(stop_s) > grace,
        "TimeoutStopSec must exceed the grace"
    );

    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is needed for this test: apt-get install -y systemd");
    // The shipped ExecStart names the installed path, which does not exist here; verify a copy
    // that runs the binary under test, under the same unit name.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("seedq.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/seedq", bin())).expect("write copy");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(0), "systemd-analyze verify: {err}");
    assert!(err.trim().is_empty(), "verify warned: {err}");

    let out = Command::new(analyze)
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for seedq.service: ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in {text}"));
    assert!(score <= 2.0, "exposure {score} > 2.0");
}

#[test]
fn notify_socket_sees_ready_watchdogs_and_stopping() {
    let env = TestEnv::new(&format!("[ark]\nbase_url = \"{NO_ARK}\"\n"));
    let mut notify = NotifySocket::bind(env.path());
    // 200 ms: a ping every 100 ms.
    let service = serve(&env, &notify, Some(200_000));
    let admin = notify.ready();
    let before: Vec<&String> = notify.seen.iter().collect();
    assert!(
        before.iter().all(|m| !m.contains("WATCHDOG=1")),
        "READY=1 comes first: {before:?}"
    );
    for _ in 0..2 {
        notify.until(5, "WATCHDOG=1", |m| m.lines().any(|l| l == "WATCHDOG=1"));
    }
    let (status, body) = get(&admin, "/healthz");
    assert_eq!(status, 200, "{body}");
    // Stages are listed by name; the bulk stages (chain, governor) sort around dispatch.
    assert!(
        body.contains("stages: ") && body.contains("dispatch "),
        "{body}"
    );
    let status = service.stop();
    assert!(status.success(), "{status:?}");
    notify.until(2, "STOPPING=1", |m| m.lines().any(|l| l == "STOPPING=1"));
}

#[test]
fn metrics_match_the_database_after_a_run() {
    let sim = SimProc::start(
        "time_scale = 0.002\nvideo_downscale = 16\n[faults]\ninput_moderation_words = [\"forbidden\"]\n",
    );
    let env = TestEnv::new(&worker_config(&sim, ""));
    let mut lines: Vec<String> = (0..5)
        .map(|i| {
            format!(r#"{{"prompt":"shot {i}","model":"{PRO}","resolution":"480p","duration":2}}"#)
        })
        .collect();
    lines.push(format!(
        r#"{{"prompt":"flex shot","model":"{LITE_T2V}","flex":true,"resolution":"480p","duration":2}}"#
    ));
    lines.push(format!(
        r#"{{"prompt":"a forbidden shot","model":"{PRO}"}}"#
    ));
    env.ok(&["submit", "-f", &write_jobs(&env, &lines)]);
    let mut notify = NotifySocket::bind(env.path());
    let service = serve(&env, &notify, None);
    let admin = notify.ready();
    wait_until(30, "every job to finish", || {
        env.jobs()
            .iter()
            .all(|j| j["state"] == "succeeded" || j["state"] == "failed")
    });
    let jobs = env.jobs();
    let m = scrape(&admin);

    for (state, model, tier) in [
        ("succeeded", PRO, "default"),
        ("succeeded", LITE_T2V, "flex"),
        ("failed", PRO, "default"),
        ("queued", PRO, "default"),
    ] {
        let in_db = jobs
            .iter()
            .filter(|j| j["state"] == state && j["model"] == model && j["service_tier"] == tier)
            .count();
        let exported = sum(
            &m,
            "seedq_jobs",
            &[("state", state), ("model", model), ("tier", tier)],
        );
        assert_eq!(exported, in_db as f64, "seedq_jobs {state} {model} {tier}");
    }
    assert_eq!(sum(&m, "seedq_jobs", &[("state", "failed")]), 1.0);
    for (model, tier) in [(PRO, "default"), (LITE_T2V, "flex")] {
        let used: i64 = jobs
            .iter()
            .filter(|j| j["model"] == model && j["service_tier"] == tier)
            .filter_map(|j| j["usage_tokens"].as_i64())
            .sum();
        assert!(used > 0);
        let labels = [("model", model), ("tier", tier)];
        assert_eq!(sum(&m, "seedq_tokens_used", &labels), used as f64);
        let catalogue = seedq::catalogue::Catalogue::default();
        let spec = catalogue.get(model).expect("known model");
        let cny = seedq::catalogue::cost(spec, used, tier == "flex");
        assert!((sum(&m, "seedq_cost_estimated_cny", &labels) - cny).abs() < 1e-9);
    }
    assert_eq!(sum(&m, "seedq_in_flight", &[("model", PRO)]), 0.0);
    assert_eq!(sum(&m, "seedq_concurrency_limit", &[("model", PRO)]), 10.0);
    assert_eq!(sum(&m, "seedq_oldest_queued_age_seconds", &[]), 0.0);

    // Every HTTP call seedq made is one the simulator answered, route by route. A create
    // whose answer came too late (a loaded machine: the client's 2 s timeout) is counted as
    // ambiguous, though the sim made its task, so the sim's count lies between the accepted
    // creates and those plus the ambiguous ones; on a quiet machine all are accepted.
    let stats = sim.stats();
    let accepted = sum(&m, "seedq_creates_total", &[("outcome", "accepted")]);
    let ambiguous = sum(&m, "seedq_creates_total", &[("outcome", "ambiguous")]);
    let made = stats["creates_total"].as_f64().expect("creates");
    assert!(
        accepted <= made && made <= accepted + ambiguous && accepted + ambiguous > 0.0,
        "seedq counted {accepted} accepted and {ambiguous} ambiguous creates; the sim made {made}"
    );
    assert_eq!(
        sum(&m, "seedq_creates_total", &[("outcome", "rejected")]),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "seedq_ark_errors_total",
            &[
                ("op", "create"),
                ("code", "InputTextSensitiveContentDetected")
            ]
        ),
        1.0
    );
    for route in ["create", "list", "get"] {
        let answered: u64 = stats["calls"][route].as_object().map_or(0, |by_status| {
            by_status.values().filter_map(|v| v.as_u64()).sum()
        });
        assert_eq!(
            sum(&m, "seedq_ark_requests_total", &[("op", route)]),
            answered as f64,
            "{route} requests"
        );
    }
    assert!(sum(&m, "seedq_ark_requests_total", &[("op", "list")]) > 0.0);
    assert!(sum(&m, "seedq_ark_last_success_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(sum(&m, "seedq_build_info", &[]), 1.0);

    let (status, body) = get(&admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ok   ark: last success"), "{body}");
    assert!(service.stop().success());
}

#[test]
fn sighup_changes_a_limit_live_and_reports_what_needs_a_restart() {
    // Real-time generation: tasks stay running for the whole test.
    let sim = SimProc::start("time_scale = 1.0\nvideo_downscale = 16\n");
    let limits = |n: u32| format!("[models.\"{PRO}\".limits]\nconcurrency = {n}\n");
    let level = |l: &str| format!("[log]\nlevel = \"{l}\"\n");
    let env = TestEnv::new(&worker_config(
        &sim,
        &format!("{}{}", limits(1), level("seedq=warn")),
    ));
    let lines: Vec<String> = (0..4)
        .map(|i| {
            format!(r#"{{"prompt":"hup {i}","model":"{PRO}","resolution":"480p","duration":2}}"#)
        })
        .collect();
    env.ok(&["submit", "-f", &write_jobs(&env, &lines)]);
    let mut notify = NotifySocket::bind(env.path());
    let log = env.path().join("serve.log");
    let service = serve_logged(&env, &notify, &log);
    let admin = notify.ready();
    let submitted_lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("dispatch: submitted"))
            .count()
    };

    // Proof of progress rather than a sleep: the poller has checked the task several times,
    // and the dispatcher (idle interval 50 ms) had every chance to exceed the limit.
    let polled = |n: u64| {
        let base = sim.stats()["status_calls_total"].as_u64().unwrap_or(0);
        wait_until(10, "a few status polls", || {
            sim.stats()["status_calls_total"].as_u64().unwrap_or(0) >= base + n
        });
    };
    wait_until(10, "one job submitted", || count(&env, "submitted") == 1);
    polled(4);
    assert_eq!((count(&env, "submitted"), count(&env, "queued")), (1, 3));
    assert_eq!(
        sum(
            &scrape(&admin),
            "seedq_concurrency_limit",
            &[("model", PRO)]
        ),
        1.0
    );

    let text = std::fs::read_to_string(&env.config).expect("config");
    assert_eq!(submitted_lines(), 0, "info lines are off at seedq=warn");
    let text = text
        .replace(&limits(1), &limits(3))
        .replace("seedq=warn", "seedq=info")
        .replace("workers = 4", "workers = 2");
    std::fs::write(&env.config, text).expect("rewrite config");
    service.signal("-HUP");
    let status = notify.until(10, "READY=1 after the reload", |m| {
        m.contains("READY=1") && m.contains("reload")
    });
    assert!(
        status.contains("restart needed for: dispatch.workers"),
        "{status}"
    );
    assert!(notify.seen.iter().any(|m| m.contains("RELOADING=1")));
    wait_until(10, "three jobs submitted", || count(&env, "submitted") == 3);
    polled(4);
    assert_eq!((count(&env, "submitted"), count(&env, "queued")), (3, 1));
    assert_eq!(
        submitted_lines(),
        2,
        "the reloaded log level shows the two new submits"
    );
    let m = scrape(&admin);
    assert_eq!(sum(&m, "seedq_concurrency_limit", &[("model", PRO)]), 3.0);
    assert_eq!(sum(&m, "seedq_restart_required", &[]), 1.0);
    assert_eq!(
        sum(&m, "seedq_config_reloads_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        sim.stats()["creates_total"].as_u64(),
        Some(3),
        "the limit held on the wire too"
    );
    assert!(service.stop().success());
}

/// Sets a job's state and age directly, as if it had got there long ago.
fn age(db: &Path, id: &str, state: &str, days: i64, due_in_days: i64) {
    let c = rusqlite::Connection::open(db).expect("open db");
    let now = seedq::store::now_ms();
    let at = now - days * 86_400_000;
    let n = c
        .execute(
            "UPDATE jobs SET state = ?2, updated_at = ?3, finished_at = ?3, next_attempt_at = ?4 WHERE id = ?1",
            rusqlite::params![id, state, at, now + due_in_days * 86_400_000],
        )
        .expect("update");
    assert_eq!(n, 1);
}

#[test]
fn scheduled_prune_removes_old_terminal_jobs_and_their_events_only() {
    let env = TestEnv::new_sqlite(&format!(
        "[ark]\nbase_url = \"{NO_ARK}\"\n\n[maintenance]\ntimezone = \"UTC\"\nprune = \"* * * * * *\"\n"
    ));
    // (state, days since it got there, pruned?) with the defaults: 30 days for archived (and
    // succeeded, archiving being off), 90 for the failures.
    let cases = [
        ("archived", 31, true),
        ("archived", 29, false),
        ("succeeded", 31, true),
        ("failed", 91, true),
        ("failed", 89, false),
        ("dead", 120, true),
        ("cancelled", 91, true),
        ("expired", 30, false),
        ("queued", 400, false),
        ("submitted", 400, false),
    ];
    let lines: Vec<String> = (0..cases.len())
        .map(|i| format!(r#"{{"prompt":"old {i}","model":"{PRO}"}}"#))
        .collect();
    env.ok(&["submit", "-f", &write_jobs(&env, &lines)]);
    let db = env.path().join("seedq.db");
    let mut ids: Vec<String> = env
        .jobs()
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    for (id, (state, days, _)) in ids.iter().zip(cases) {
        // Live states are due far in the future, so no stage touches them.
        age(&db, id, state, days, 365);
    }
    let mut notify = NotifySocket::bind(env.path());
    let service = serve(&env, &notify, None);
    let admin = notify.ready();
    wait_until(10, "two prune runs", || {
        sum(
            &scrape(&admin),
            "seedq_maintenance_runs_total",
            &[("task", "prune"), ("outcome", "ok")],
        ) >= 2.0
    });
    assert!(service.stop().success());

    let left: Vec<String> = env
        .jobs()
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect();
    let c = rusqlite::Connection::open(&db).expect("open db");
    for (id, (state, days, pruned)) in ids.iter().zip(cases) {
        assert_eq!(!left.contains(id), pruned, "{state} {days} days old");
        let events: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM job_events WHERE job_id = ?1",
                [id],
                |r| r.get(0),
            )
            .expect("count events");
        assert_eq!(events == 0, pruned, "events of {state} {days} days old");
    }
}

#[test]
fn flex_jobs_wait_for_the_flex_window() {
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\n");
    // A window that opens an hour from now (UTC), so it is closed now.
    let now_s = (seedq::store::now_ms() / 1000).rem_euclid(86_400);
    let hms = |s: i64| {
        let s = s.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    let closed = format!("{}-{}", hms(now_s + 3600), hms(now_s + 7200));
    let open = format!("{}-{}", hms(now_s - 60), hms(now_s + 3600));
    let maintenance =
        |w: &str| format!("[maintenance]\ntimezone = \"UTC\"\nflex_window = \"{w}\"\n");
    let env = TestEnv::new(&worker_config(&sim, &maintenance(&closed)));
    let lines = [
        format!(
            r#"{{"prompt":"night shot","model":"{LITE_T2V}","flex":true,"resolution":"480p","duration":2}}"#
        ),
        format!(r#"{{"prompt":"day shot","model":"{LITE_T2V}","resolution":"480p","duration":2}}"#),
    ];
    env.ok(&["submit", "-f", &write_jobs(&env, &lines)]);
    let mut notify = NotifySocket::bind(env.path());
    let service = serve(&env, &notify, None);
    let admin = notify.ready();
    wait_until(20, "the default-tier job to finish", || {
        count(&env, "succeeded") == 1
    });
    let tier_of = |state: &str| -> Vec<String> {
        env.jobs()
            .iter()
            .filter(|j| j["state"] == state)
            .map(|j| j["service_tier"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(tier_of("queued"), vec!["flex"]);
    assert_eq!(sum(&scrape(&admin), "seedq_flex_window_open", &[]), 0.0);
    assert_eq!(sim.stats()["creates_total"].as_u64(), Some(1));

    let text = std::fs::read_to_string(&env.config).expect("config");
    std::fs::write(&env.config, text.replace(&closed, &open)).expect("rewrite");
    service.signal("-HUP");
    notify.until(10, "READY=1 after the reload", |m| {
        m.contains("STATUS=reloaded")
    });
    wait_until(20, "the flex job to finish once the window opens", || {
        count(&env, "succeeded") == 2
    });
    assert_eq!(sum(&scrape(&admin), "seedq_flex_window_open", &[]), 1.0);
    assert!(service.stop().success());
}

#[test]
fn under_journald_log_lines_have_no_colours_or_timestamps() {
    let env = TestEnv::new(&format!(
        "[ark]\nbase_url = \"{NO_ARK}\"\n\n[log]\nlevel = \"seedq=info\"\n"
    ));
    let out = env
        .keyed(&["run"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("JOURNAL_STREAM", "8:12345")
        .output()
        .expect("run seedq run");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("seedq service started"))
        .unwrap_or_else(|| panic!("no start line in {err:?}"));
    assert!(!err.contains('\x1b'), "ANSI escapes: {err:?}");
    assert!(
        line.trim_start().starts_with("INFO"),
        "no timestamp: {line:?}"
    );
}

/// `seedq doctor`: exit code and stdout.
fn doctor(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("run doctor");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_passes_a_good_install_and_names_a_rejected_key() {
    let sim = SimProc::start("time_scale = 0.01\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let archive = env.path().join("archive");
    let (code, out) = doctor(env.keyed(&["doctor"]).env(
        "SEEDQ__ARCHIVE__URL",
        format!("file://{}", archive.display()),
    ));
    assert_eq!(code, Some(0), "{out}");
    for check in ["config", "database", "api key", "store", "clock"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok") && l.contains(check)),
            "{check} not ok in:\n{out}"
        );
    }
    assert!(out.contains("accepted by"), "{out}");
    assert!(out.contains("put, get and delete"), "{out}");
    let left: Vec<_> = walk(&archive);
    assert!(
        left.is_empty(),
        "the probe object was left behind: {left:?}"
    );

    let wrong = "sk-wrong-key-do-not-print";
    let (code, out) = doctor(env.cmd(&["doctor"]).env("ARK_API_KEY", wrong));
    assert_eq!(code, Some(2), "{out}");
    let fail = out
        .lines()
        .position(|l| l.starts_with("FAIL") && l.contains("api key"))
        .unwrap_or_else(|| panic!("no api key failure in:\n{out}"));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[fail].contains("401"), "{out}");
    assert!(lines[fail + 1].trim_start().starts_with("fix:"), "{out}");
    assert!(!out.contains(wrong), "the key must never be printed");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("database"))
    );

    let (code, out) = doctor(&mut env.cmd(&["doctor"]));
    assert_eq!(code, Some(2));
    assert!(
        out.contains("no API key") && out.contains("LoadCredential"),
        "{out}"
    );
}

/// Regular files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn doctor_warns_when_a_fleet_store_meets_a_local_archive() {
    // PostgreSQL is shared by workers on several hosts; a file:// archive is not.
    let cfg = format!("[ark]\nbase_url = \"{NO_ARK}\"\n");
    let pg = TestEnv::new_postgres(&cfg);
    let local = format!("file://{}", pg.path().join("archive").display());
    let (code, out) = doctor(
        pg.cmd(&["doctor", "--offline"])
            .env("SEEDQ__ARCHIVE__URL", &local),
    );
    assert_eq!(code, Some(0), "a warning does not fail doctor:\n{out}");
    let warn = out
        .lines()
        .position(|l| l.starts_with("warn") && l.contains("fleet"))
        .unwrap_or_else(|| panic!("no fleet warning in:\n{out}"));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[warn].contains("file://"), "{out}");
    assert!(lines[warn + 1].contains("s3://"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("database") && l.contains("PostgreSQL")),
        "{out}"
    );
    // The same archive on one SQLite file is fine: one machine, one disk.
    let one = TestEnv::new_sqlite(&cfg);
    let (_, out) = doctor(
        one.cmd(&["doctor", "--offline"])
            .env("SEEDQ__ARCHIVE__URL", &local),
    );
    assert!(!out.contains("fleet"), "{out}");
}

#[test]
fn doctor_fails_clearly_on_an_unreachable_store() {
    let env = TestEnv::new(&format!("[ark]\nbase_url = \"{NO_ARK}\"\n"));
    let (code, out) = doctor(
        env.cmd(&["doctor", "--offline"])
            .env("SEEDQ__ARCHIVE__URL", "s3://videos/seedq")
            .env("SEEDQ__ARCHIVE__S3__ENDPOINT", "http://127.0.0.1:9")
            .env("SEEDQ__ARCHIVE__S3__ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "do-not-print-this-secret"),
    );
    assert_eq!(code, Some(2), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let fail = lines
        .iter()
        .position(|l| l.starts_with("FAIL") && l.contains("store"))
        .unwrap_or_else(|| panic!("no store failure in:\n{out}"));
    assert!(lines[fail].contains("s3://videos/seedq"), "{out}");
    assert!(
        lines[fail + 1].contains("fix:") && lines[fail + 1].contains("reachable"),
        "{out}"
    );
    assert!(!out.contains("do-not-print-this-secret"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("database"))
    );
}

#[test]
fn scheduled_backups_land_in_the_archive_store_and_only_the_newest_stay() {
    let env = TestEnv::new_sqlite(&format!(
        "[ark]\nbase_url = \"{NO_ARK}\"\n\n[maintenance]\ntimezone = \"UTC\"\nbackup = \"* * * * * *\"\nbackup_keep = 2\n"
    ));
    let archive = env.path().join("archive");
    let text = std::fs::read_to_string(&env.config).expect("config");
    let text = text.replacen(
        "url = \"\"",
        &format!("url = \"file://{}\"", archive.display()),
        1,
    );
    std::fs::write(&env.config, text).expect("write config");
    env.ok(&["submit", "backed up", "-m", PRO]);
    let mut notify = NotifySocket::bind(env.path());
    let service = serve(&env, &notify, None);
    let admin = notify.ready();
    wait_until(15, "three backups", || {
        sum(
            &scrape(&admin),
            "seedq_maintenance_runs_total",
            &[("task", "backup"), ("outcome", "ok")],
        ) >= 3.0
    });
    assert!(service.stop().success());
    let backups = walk(&archive.join("backups"));
    assert_eq!(backups.len(), 2, "{backups:?}");
    for b in &backups {
        let name = b.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            name.starts_with("seedq-") && name.ends_with(".db"),
            "{name}"
        );
        let c = rusqlite::Connection::open(b).expect("open the backup");
        let jobs: i64 = c
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(jobs, 1);
    }
    assert!(
        walk(env.path())
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".upload")),
        "no staged copy is left"
    );
}

#[test]
fn doctor_fails_clearly_on_a_read_only_database() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new_sqlite(&format!("[ark]\nbase_url = \"{NO_ARK}\"\n"));
    env.ok(&["migrate"]);
    let db = env.path().join("seedq.db");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        // Root writes anything: run doctor as `nobody`, who can read but not write the
        // root-owned files, through a link to the binary that nobody can reach.
        let dir = env.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for f in [&db, &env.config] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let exe = dir.join("seedq");
        if std::fs::hard_link(bin(), &exe).is_err() {
            std::fs::copy(bin(), &exe).expect("copy the binary");
        }
        let mut c = Command::new(&exe);
        c.arg("--config")
            .arg(&env.config)
            .args(["doctor", "--offline"])
            .env("RUST_LOG", "off")
            .uid(65534)
            .gid(65534);
        c
    } else {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
        env.cmd(&["doctor", "--offline"])
    };
    let (code, out) = doctor(&mut cmd);
    if !root {
        std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod back");
    }
    assert_eq!(code, Some(2), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let fail = lines
        .iter()
        .position(|l| l.starts_with("FAIL") && l.contains("database"))
        .unwrap_or_else(|| panic!("no database failure in:\n{out}"));
    assert!(lines[fail].contains("not writable"), "{out}");
    assert!(
        lines[fail + 1].contains("fix:") && lines[fail + 1].contains("writable by the user"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("config"))
    );
}
