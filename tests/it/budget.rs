//! Spend caps with the real binary and simulator: a batch cap creates exactly the
//! jobs that fit and a raise releases the rest, a daily budget rolls over at the zone's
//! midnight, creates that made no task give their reservation back, and two `seedq run`
//! processes on one database never overspend together.

use std::collections::HashMap;

use std::io::{BufRead, Read, Write};

use crate::helpers::{Guard, SimProc, TestEnv, free_port, wait_until, worker_config};

const LITE_T2V: &str = "doubao-seedance-1-0-lite-t2v-250428";
/// 864 × 480 × 49 / 1024: one 480p 2 s clip of a 1.0 model (docs/ark-api.md §10), which is what
/// the simulator bills too.
const CLIP_TOKENS: i64 = 19_845;
/// The lite model's price: 10 CNY per million tokens = 1000 fen per million (catalogue).
const LITE_FEN_PER_MILLION: i64 = 1_000;

fn fast_sim(extra: &str) -> SimProc {
    SimProc::start(&format!(
        "time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n{extra}\n"
    ))
}

fn write(env: &TestEnv, name: &str, text: &str) -> String {
    let p = env.path().join(name);
    std::fs::write(&p, text).expect("write file");
    p.to_string_lossy().into_owned()
}

fn clip_lines(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(r#"{{"prompt":"{prefix} {i}","model":"{LITE_T2V}","resolution":"480p","ratio":"16:9","duration":2}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(jobs: &[serde_json::Value], f: impl Fn(&serde_json::Value) -> bool) -> usize {
    jobs.iter().filter(|j| f(j)).count()
}

/// Billed tokens of all jobs, priced exactly: fen × 1,000,000.
fn billed_fen_millionths(jobs: &[serde_json::Value]) -> i64 {
    let tokens: i64 = jobs.iter().filter_map(|j| j["usage_tokens"].as_i64()).sum();
    tokens * LITE_FEN_PER_MILLION
}

fn waiting_on_batch(j: &serde_json::Value) -> bool {
    j["state"] == "queued" && j["last_error_code"] == "budget_batch"
}

/// 37 clips cost 7.34265 CNY, 38 cost 7.5411: a cap of 7.40 fits exactly 37 of them.
const CAP_37: &str = "7.40";
const CAP_37_FEN: i64 = 740;

#[test]
fn a_batch_cap_creates_exactly_the_jobs_that_fit_and_a_raise_releases_the_rest() {
    let sim = fast_sim("");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let file = write(&env, "jobs.jsonl", &clip_lines("capped", 100));
    let planned = env.ok(&["estimate", "-f", &file, "--max-cost", CAP_37]);
    assert!(
        planned.contains("batch cap: 7.40 CNY left")
            && planned.contains("37 of 100 job(s) fit now"),
        "estimate knows the cap: {planned}"
    );
    env.ok(&[
        "submit",
        "-f",
        &file,
        "--batch",
        "night",
        "--max-cost",
        CAP_37,
    ]);
    // `run` ends when only jobs waiting for a raise are left (like parked ones).
    // Jobs are left waiting on the cap (or failed): `run` says so and exits 3.
    env.run_service_with_failures();

    let jobs = env.jobs();
    assert_eq!(jobs.len(), 100);
    assert!(jobs.iter().all(|j| j["est_tokens"] == CLIP_TOKENS));
    assert_eq!(count(&jobs, |j| j["state"] == "succeeded"), 37);
    assert_eq!(
        sim.tasks().len(),
        37,
        "exactly the jobs that fit were created"
    );
    assert_eq!(
        count(&jobs, waiting_on_batch),
        63,
        "the rest wait, not failed"
    );
    assert!(
        billed_fen_millionths(&jobs) <= CAP_37_FEN * 1_000_000,
        "the billed total stays within the cap"
    );
    let waiting = jobs.iter().find(|j| waiting_on_batch(j)).expect("a waiter");
    let shown = env.ok(&["show", waiting["id"].as_str().expect("id")]);
    assert!(
        shown.contains("batch night --max-cost 7.40 CNY reached"),
        "show names the budget: {shown}"
    );
    let batch = env.ok(&["batch", "show", "night"]);
    assert!(
        batch.contains("of 7.40 CNY") && batch.contains("63 job(s) waiting on a budget"),
        "batch show shows spend against the cap: {batch}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["batch", "show", "night", "--json"])).expect("json");
    assert_eq!(v["budget"]["max_cost_fen"], CAP_37_FEN);
    assert_eq!(v["budget"]["waiting"], 63);
    assert!(v["budget"]["spent_fen"].as_i64().expect("spent") <= CAP_37_FEN);
    // 740 - 734.265 fen left: under a fen's worth of room shown, and no job fits.
    let planned = env.ok(&["estimate", "--batch", "night"]);
    assert!(
        planned.contains("batch cap: 0.05 CNY left") && planned.contains("0 of 63 job(s) fit now"),
        "{planned}"
    );
    // `watch` shows the spend against the cap and the waiters.
    let mut watch = Guard(
        env.cmd(&["watch", "--batch", "night", "--plain"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn watch"),
    );
    let mut line = String::new();
    std::io::BufReader::new(watch.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("a watch line");
    watch.kill();
    assert!(
        line.contains("budget: ")
            && line.contains("of 7.40 CNY")
            && line.contains("63 job(s) waiting on a budget"),
        "{line}"
    );

    // Raising the cap releases them.
    let out = env.ok(&["batch", "set", "night", "--max-cost", "20"]);
    assert!(out.contains("63 waiting job(s) checked again"), "{out}");
    env.run_service();
    let jobs = env.jobs();
    assert_eq!(count(&jobs, |j| j["state"] == "succeeded"), 100);
    assert_eq!(sim.tasks().len(), 100, "each job created once");
    assert!(billed_fen_millionths(&jobs) <= 2_000 * 1_000_000);
}

#[test]
fn bad_budget_input_is_refused_naming_the_flag_and_nothing_is_stored() {
    let env = TestEnv::new("");
    let file = write(&env, "jobs.jsonl", &clip_lines("bad", 2));
    let out = env.cli(&["submit", "-f", &file, "--batch", "b", "--max-cost", "1.234"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-cost \"1.234\"") && err.contains("at most two decimals"),
        "{err}"
    );
    assert!(env.jobs().is_empty(), "nothing stored");
    let out = env.cli(&["batch", "set", "nosuch", "--max-cost", "5"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_daily_budget_rolls_over_at_the_zones_midnight() {
    let sim = fast_sim("");
    // Budget days of 2 s (bulk.tpd_day, the testing knob) from midnight in
    // maintenance.timezone, and a daily budget of three clips (59.535 fen ≤ 60, four do not fit).
    let env = TestEnv::new(&worker_config(
        &sim,
        "[bulk]\ntpd_day = \"2s\"\n\n[maintenance]\ntimezone = \"Asia/Shanghai\"\n\n[budget]\ndaily_cny = 0.60\n",
    ));
    let file = write(&env, "jobs.jsonl", &clip_lines("daily", 7));
    env.ok(&["submit", "-f", &file]);
    // Daily waits keep `run` going until the next day.
    env.run_service();

    let jobs = env.jobs();
    assert_eq!(count(&jobs, |j| j["state"] == "succeeded"), 7);
    // Days as the budget counts them: 2 s long, from midnight in Shanghai (UTC+8).
    let day = |ms: i64| (ms + 8 * 3_600_000).div_euclid(2_000);
    let mut per_day: HashMap<i64, i64> = HashMap::new();
    for j in &jobs {
        let started = j["submit_started_at"].as_i64().expect("submit time");
        *per_day.entry(day(started)).or_default() += 1;
    }
    assert!(
        per_day.len() >= 3,
        "seven jobs need three days: {per_day:?}"
    );
    assert!(
        per_day.values().all(|n| *n <= 3),
        "at most three a day: {per_day:?}"
    );
    let waited = jobs.iter().any(|j| {
        env.ok(&["show", j["id"].as_str().expect("id")])
            .contains("daily budget.daily_cny 0.60 CNY reached")
    });
    assert!(waited, "some job waited for the next day's budget");
}

#[test]
fn creates_that_made_no_task_give_their_reservation_back() {
    // The first three creates get 429, and a prompt with "forbidden" gets 400: none made a
    // task, so none may keep budget.
    let sim =
        fast_sim("[faults]\nrate_limit_burst = 3\ninput_moderation_words = [\"forbidden\"]\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    // Room for two clips (39.69 fen ≤ 40); the rejected one is claimed first (priority).
    let mut lines = vec![format!(
        r#"{{"prompt":"forbidden 0","model":"{LITE_T2V}","resolution":"480p","ratio":"16:9","duration":2,"priority":10}}"#
    )];
    lines.push(clip_lines("fine", 2));
    let file = write(&env, "jobs.jsonl", &lines.join("\n"));
    env.ok(&["submit", "-f", &file, "--batch", "b", "--max-cost", "0.40"]);
    // Jobs are left waiting on the cap (or failed): `run` says so and exits 3.
    env.run_service_with_failures();

    let jobs = env.jobs();
    assert_eq!(count(&jobs, |j| j["state"] == "failed"), 1, "{jobs:#?}");
    assert_eq!(
        count(&jobs, |j| j["state"] == "succeeded"),
        2,
        "the rejected and throttled creates gave their budget back: {jobs:#?}"
    );
    assert_eq!(count(&jobs, waiting_on_batch), 0);
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["batch", "show", "b", "--json"])).expect("json");
    // Two billed clips: 39.69 fen, shown rounded up.
    assert_eq!(v["budget"]["spent_fen"], 40, "{v}");
    assert_eq!(v["budget"]["tokens"], 2 * CLIP_TOKENS, "{v}");
}

#[test]
fn two_run_processes_on_one_database_never_overspend_together() {
    let sim = fast_sim("");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let file = write(&env, "jobs.jsonl", &clip_lines("shared", 100));
    env.ok(&[
        "submit",
        "-f",
        &file,
        "--batch",
        "shared",
        "--max-cost",
        CAP_37,
    ]);
    let mut a = env.keyed(&["run"]).spawn().expect("spawn run a");
    let mut b = env.keyed(&["run"]).spawn().expect("spawn run b");
    // Both leave the jobs that do not fit waiting on the cap: exit 3, "need attention".
    assert_eq!(a.wait().expect("wait a").code(), Some(3));
    assert_eq!(b.wait().expect("wait b").code(), Some(3));

    let jobs = env.jobs();
    assert_eq!(
        sim.tasks().len(),
        37,
        "together they created only what fits"
    );
    assert_eq!(count(&jobs, |j| j["state"] == "succeeded"), 37);
    assert_eq!(count(&jobs, waiting_on_batch), 63);
    assert!(billed_fen_millionths(&jobs) <= CAP_37_FEN * 1_000_000);
}

/// `GET path` on `addr`, the body as text (None until the server answers).
pub(crate) fn get_text(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[test]
fn a_daily_budget_wait_shows_in_metrics_and_a_sighup_raise_releases_it() {
    let sim = fast_sim("");
    let admin = format!("127.0.0.1:{}", free_port());
    let text = worker_config(&sim, "[budget]\ndaily_cny = 0.20\n")
        .replace("listen = \"\"", &format!("listen = \"{admin}\""));
    let env = TestEnv::new(&text);
    env.ok(&[
        "submit",
        "-f",
        &write(&env, "jobs.jsonl", &clip_lines("hup", 3)),
    ]);
    let service = env.serve();
    let waiting = |env: &TestEnv| {
        let jobs = env.jobs();
        (
            count(&jobs, |j| j["state"] == "succeeded"),
            count(&jobs, |j| {
                j["state"] == "queued" && j["last_error_code"] == "budget_daily"
            }),
        )
    };
    // A day of 24 h: one clip (19.845 fen ≤ 20) today, the others wait for tomorrow.
    wait_until(20, "one done, two waiting", || waiting(&env) == (1, 2));
    wait_until(10, "the metrics", || {
        get_text(&admin, "/metrics").is_some_and(|m| {
            m.contains("seedq_budget_waiting_jobs{reason=\"budget_daily\"} 2")
                && m.contains("seedq_budget_daily_cap_fen 20")
        })
    });
    assert_eq!(sim.tasks().len(), 1);

    let cfg = std::fs::read_to_string(&env.config).expect("config");
    std::fs::write(
        &env.config,
        cfg.replace("daily_cny = 0.20", "daily_cny = 1.00"),
    )
    .expect("rewrite config");
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &service.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(ok.success());
    wait_until(20, "all three done after the raise", || {
        waiting(&env) == (3, 0)
    });
    assert_eq!(sim.tasks().len(), 3);
}

#[test]
fn an_ambiguous_create_counts_as_spent() {
    // The first create makes a task, then the connection drops: seedq cannot know, so the
    // reservation stays until reconciliation adopts the task.
    let sim = fast_sim("[faults]\ndrop_after_create = 1\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let file = write(&env, "jobs.jsonl", &clip_lines("unsure", 3));
    env.ok(&["submit", "-f", &file, "--batch", "u", "--max-cost", "0.40"]);
    // Jobs are left waiting on the cap (or failed): `run` says so and exits 3.
    env.run_service_with_failures();
    let jobs = env.jobs();
    let unsure = jobs.iter().any(|j| {
        env.ok(&["show", j["id"].as_str().expect("id")])
            .contains("reconciled: adopted")
    });
    assert!(unsure, "one create was ambiguous and reconciled");
    assert_eq!(sim.tasks().len(), 2, "the unknown create still counted");
    assert_eq!(count(&jobs, |j| j["state"] == "succeeded"), 2, "{jobs:#?}");
    assert_eq!(count(&jobs, waiting_on_batch), 1);
    assert!(billed_fen_millionths(&jobs) <= 40 * 1_000_000);
}

#[test]
fn a_deadline_batch_whose_budget_binds_prefers_flex() {
    // Flex is assumed to take 3 h here, so a 2 h deadline alone puts every job on default.
    let cfg = "[poll]\nflex_first_poll_after = \"3h\"\n";
    let tiers = |env: &TestEnv| -> Vec<String> {
        env.jobs()
            .iter()
            .map(|j| j["service_tier"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let plain = TestEnv::new(cfg);
    let file = write(&plain, "jobs.jsonl", &clip_lines("tight", 10));
    plain.ok(&["submit", "-f", &file, "--batch", "t", "--deadline", "2h"]);
    assert!(tiers(&plain).iter().all(|t| t == "default"));

    // Ten clips cost 1.98 CNY on default, 0.99 on flex: a 1.50 cap cannot pay default.
    let capped = TestEnv::new(cfg);
    let file = write(&capped, "jobs.jsonl", &clip_lines("tight", 10));
    let out = capped
        .cmd(&[
            "submit",
            "-f",
            &file,
            "--batch",
            "t",
            "--deadline",
            "2h",
            "--max-cost",
            "1.50",
        ])
        .output()
        .expect("submit");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the budget cannot pay the default tier: 10 of 10 job(s) on flex"),
        "{err}"
    );
    assert!(tiers(&capped).iter().all(|t| t == "flex"));
}

#[test]
fn a_model_daily_budget_holds_only_that_model() {
    const PRO: &str = "doubao-seedance-1-0-pro-250528";
    let sim = fast_sim("");
    // One lite clip a day (19.845 fen ≤ 20); the pro model has no cap of its own.
    let env = TestEnv::new(&worker_config(
        &sim,
        &format!("[models.\"{LITE_T2V}\"]\ndaily_cny = 0.20\n"),
    ));
    let mut lines = vec![clip_lines("lite", 3)];
    lines.extend((0..2).map(|i| {
        format!(r#"{{"prompt":"pro {i}","model":"{PRO}","resolution":"480p","ratio":"16:9","duration":2}}"#)
    }));
    env.ok(&[
        "submit",
        "-f",
        &write(&env, "jobs.jsonl", &lines.join("\n")),
    ]);
    let _service = env.serve();
    let state = |env: &TestEnv| {
        let jobs = env.jobs();
        let of = |m: &str, s: &str| count(&jobs, |j| j["model"] == m && j["state"] == s);
        (
            of(LITE_T2V, "succeeded"),
            of(LITE_T2V, "queued"),
            of(PRO, "succeeded"),
        )
    };
    wait_until(20, "one lite and both pro clips done", || {
        state(&env) == (1, 2, 2)
    });
    let jobs = env.jobs();
    let waiter = jobs
        .iter()
        .find(|j| j["model"] == LITE_T2V && j["state"] == "queued")
        .expect("a waiting lite job");
    assert_eq!(waiter["last_error_code"], "budget_daily");
    let shown = env.ok(&["show", waiter["id"].as_str().expect("id")]);
    assert!(
        shown.contains(&format!("{LITE_T2V} daily_cny 0.20 CNY reached")),
        "{shown}"
    );
    assert_eq!(sim.tasks().len(), 3);
}

#[test]
fn a_token_cap_counts_tokens() {
    let sim = fast_sim("");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let file = write(&env, "jobs.jsonl", &clip_lines("tokens", 5));
    let cap = (3 * CLIP_TOKENS + 1).to_string();
    env.ok(&["submit", "-f", &file, "--batch", "t", "--max-tokens", &cap]);
    // Jobs are left waiting on the cap (or failed): `run` says so and exits 3.
    env.run_service_with_failures();
    let jobs = env.jobs();
    assert_eq!(sim.tasks().len(), 3);
    assert_eq!(count(&jobs, waiting_on_batch), 2);
    let shown = env.ok(&["batch", "show", "t"]);
    assert!(shown.contains("59 535 of 59 536 tokens"), "{shown}");
    env.ok(&["batch", "set", "t", "--max-tokens", "none"]);
    env.run_service();
    assert_eq!(sim.tasks().len(), 5);
}

#[test]
fn the_service_governor_keeps_flex_while_the_budget_cannot_pay_default() {
    let sim = fast_sim("");
    // Flex is assumed to take 3 h, so the governor sees every queued flex job of a 2 h
    // deadline batch as late; the first poll waits as long, so the flex slots (a ceiling of
    // 5: flex has none of its own at Ark) stay taken and five jobs stay queued for the
    // governor to consider.
    let env = TestEnv::new(&worker_config(
        &sim,
        &format!(
            "[bulk]\ngovernor_interval = \"50ms\"\n\n[models.\"{LITE_T2V}\"]\nlimits = {{ rpm = 300, concurrency = 5, flex_max_in_flight = 5 }}\n"
        ),
    ));
    let text = std::fs::read_to_string(&env.config)
        .expect("config")
        .replace(
            "flex_first_poll_after = \"200ms\"",
            "flex_first_poll_after = \"3h\"",
        );
    std::fs::write(&env.config, text).expect("config");
    let file = write(&env, "jobs.jsonl", &clip_lines("gov", 10));
    // Ten clips: 1.98 CNY on default, 0.99 on flex. With five flex tasks held (0.50 CNY),
    // the 0.95 CNY left under a 1.45 cap cannot pay the other five at default (0.99).
    env.ok(&[
        "submit",
        "-f",
        &file,
        "--batch",
        "g",
        "--deadline",
        "2h",
        "--max-cost",
        "1.45",
    ]);
    let _service = env.serve();
    wait_until(20, "five flex tasks created", || sim.tasks().len() == 5);
    // Give the governor (every 50 ms) many chances to move the queued ones.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let jobs = env.jobs();
    assert_eq!(count(&jobs, |j| j["state"] == "queued"), 5);
    assert!(
        jobs.iter().all(|j| j["service_tier"] == "flex"),
        "the governor kept flex: {jobs:#?}"
    );
}
