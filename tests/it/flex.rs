//! Flex as Ark defines it: bound by TPD only, beside a default tier that keeps its
//! concurrency and RPM; 429s on flex absorbed without burning attempts; TPD days.

use crate::helpers::{SimProc, TestEnv, fast_sim as sim, worker_config_with};

const LITE: &str = "doubao-seedance-1-0-lite-t2v-250428";

fn submit_lines(env: &TestEnv, lines: &[String]) {
    let p = env.path().join("jobs.jsonl");
    std::fs::write(&p, lines.join("\n")).expect("write jobs");
    env.ok(&["submit", "-f", &p.to_string_lossy()]);
}

fn jobs(n: usize, flex: bool, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"prompt":"{tag} {i}","model":"{LITE}","resolution":"480p","duration":2,"flex":{flex}}}"#
            )
        })
        .collect()
}

/// Tokens one 480p 2 s lite job bills (the sim's and seedq's own count).
fn job_tokens() -> u64 {
    let (w, h) = seedq::catalogue::pixel_size(seedq::catalogue::PixelTable::V1, "480p", "16:9")
        .expect("480p 16:9");
    u64::try_from(seedq::catalogue::tokens(
        w,
        h,
        seedq::catalogue::frames_for_duration(2),
    ))
    .expect("tokens")
}

/// The `show --json` events of every job, joined: where throttles are recorded.
fn all_events(env: &TestEnv) -> String {
    env.jobs()
        .iter()
        .map(|j| {
            let id = j["id"].as_str().expect("id");
            String::from_utf8_lossy(&env.cli(&["show", id, "--json"]).stdout).into_owned()
        })
        .collect()
}

#[test]
fn default_keeps_its_limits_while_flex_goes_far_beyond_them() {
    let sim = sim(&format!(
        "flex_pool = 200\n[models.\"{LITE}\"]\nrpm = 60\nconcurrency = 3\n"
    ));
    // The sim's RPM window is 60 s × 0.002 = 120 ms; seedq adds its transit margin.
    let env = TestEnv::new(&worker_config_with(
        &sim,
        "rpm_window = \"120ms\"",
        &format!("[models.\"{LITE}\"]\nlimits = {{ rpm = 60, concurrency = 3 }}\n"),
    ));
    let mut lines = jobs(80, true, "flex");
    lines.extend(jobs(30, false, "default"));
    submit_lines(&env, &lines);
    env.run_service();

    let all = env.jobs();
    assert_eq!(all.len(), 110);
    assert!(all.iter().all(|j| j["state"] == "succeeded"), "{all:?}");
    let stats = sim.stats();
    let default_max = stats["max_concurrency_by_model"][LITE]
        .as_u64()
        .expect("default max");
    let flex_max = stats["max_flex_running_by_model"][LITE]
        .as_u64()
        .expect("flex max");
    assert!(
        default_max <= 3,
        "default ran {default_max} at once (cap 3)"
    );
    assert!(
        flex_max >= 15,
        "flex ran only {flex_max} at once: still bound by the default tier's 3"
    );
    // No 429 at all: seedq kept the default RPM, and the sim gives flex none.
    assert_eq!(stats["rate_limited_total"], 0, "{stats}");
    assert!(all.iter().all(|j| j["attempts"] == 1));
}

#[test]
fn a_429_storm_on_flex_fails_nothing_and_burns_no_attempts() {
    // A pool of 2 and at most 6 queued tasks at Ark: seedq, which sets flex no ceiling, runs
    // into `QuotaExceeded` until it learns one; a scripted burst of gateway 429s on top.
    let sim = sim(
        "flex_pool = 2\nmax_queued = 6\n[faults]\nrate_limit_burst = 10\nretry_after_secs = 0\n",
    );
    let env = TestEnv::new(&worker_config_with(&sim, "", ""));
    submit_lines(&env, &jobs(30, true, "storm"));
    env.run_service();

    let all = env.jobs();
    assert!(all.iter().all(|j| j["state"] == "succeeded"), "{all:?}");
    assert!(
        all.iter().all(|j| j["attempts"] == 1),
        "a 429 burned an attempt: {all:?}"
    );
    let stats = sim.stats();
    let throttled = stats["rate_limited_total"].as_u64().expect("429s");
    assert!(throttled > 10, "the queue cap was hit too: {stats}");
    assert_eq!(stats["creates_total"], 30, "one task per job");
    let events = all_events(&env);
    assert!(
        events.contains("throttled (flex): QuotaExceeded"),
        "the code is recorded in show"
    );
    assert!(events.contains("throttled (flex): ModelAccountRpmRateLimitExceeded"));
}

/// seedq config for TPD days of 3.6 s (half an hour scaled by the sim's 0.002).
fn tpd_env(sim: &SimProc, limits: &str) -> TestEnv {
    TestEnv::new(&worker_config_with(
        sim,
        "",
        &format!("[bulk]\ntpd_day = \"3600ms\"\n\n[models.\"{LITE}\"]\nlimits = {{ {limits} }}\n"),
    ))
}

fn check_days(sim: &SimProc, tpd: u64, min_days: usize) {
    let stats = sim.stats();
    let days = stats["flex_tokens_by_day"][LITE]
        .as_object()
        .expect("per-day flex tokens");
    assert!(days.len() >= min_days, "{days:?}");
    for (day, used) in days {
        let used = used.as_u64().expect("tokens");
        assert!(used <= tpd, "day {day}: {used} tokens accepted > TPD {tpd}");
    }
}

#[test]
fn ark_tpd_refusals_wait_for_the_next_day() {
    let tpd = 3 * job_tokens();
    let sim = sim(&format!(
        "tpd_day = \"30m\"\n[models.\"{LITE}\"]\nflex_tpd = {tpd}\n"
    ));
    // seedq believes in a much larger budget: only Ark's refusal can hold it back.
    let env = tpd_env(&sim, "rpm = 300, concurrency = 5, flex_tpd = 250000000000");
    submit_lines(&env, &jobs(7, true, "tpd"));
    env.run_service();

    let all = env.jobs();
    assert!(all.iter().all(|j| j["state"] == "succeeded"), "{all:?}");
    assert!(all.iter().all(|j| j["attempts"] == 1));
    check_days(&sim, tpd, 3);
    assert!(sim.stats()["rate_limited_total"].as_u64() >= Some(1));
    assert!(all_events(&env).contains("throttled (flex): QuotaExceeded"));
}

#[test]
fn seedq_own_tpd_budget_holds_without_a_refusal() {
    let tpd = 3 * job_tokens();
    let sim = sim(&format!(
        "tpd_day = \"30m\"\n[models.\"{LITE}\"]\nflex_tpd = {tpd}\n"
    ));
    let env = tpd_env(
        &sim,
        &format!("rpm = 300, concurrency = 5, flex_tpd = {tpd}"),
    );
    submit_lines(&env, &jobs(7, true, "own"));
    env.run_service();

    let all = env.jobs();
    assert!(all.iter().all(|j| j["state"] == "succeeded"), "{all:?}");
    check_days(&sim, tpd, 3);
    assert_eq!(
        sim.stats()["rate_limited_total"],
        0,
        "seedq never sent over TPD"
    );
}

#[test]
fn estimate_times_flex_by_tpd_days_not_by_default_slots() {
    let tpd = 10 * job_tokens();
    let env = TestEnv::new(&format!(
        "[models.\"{LITE}\"]\nlimits = {{ rpm = 300, concurrency = 5, flex_tpd = {tpd} }}\n\n\
         [poll]\nflex_first_poll_after = \"10m\"\n"
    ));
    let p = env.path().join("jobs.jsonl");
    std::fs::write(&p, jobs(25, true, "estimate").join("\n")).expect("write jobs");
    let out = env.ok(&["estimate", "-f", &p.to_string_lossy(), "--json"]);
    let est: serde_json::Value = serde_json::from_str(&out).expect("json");
    let row = &est["rows"][0];
    assert_eq!(row["tier"], "flex");
    // 25 jobs at 10 a day: two more days. Flex has no slots: the jobs take their learned (here
    // assumed) 10 min at once, not 25 × 10 min over the default tier's 5 slots.
    assert_eq!(row["tpd_days"], 2, "{est}");
    assert_eq!(row["finish_ms"], 10 * 60_000 + 2 * 86_400_000, "{est}");
    let table = env.ok(&["estimate", "-f", &p.to_string_lossy()]);
    assert!(table.contains("no concurrency cap"), "{table}");
    assert!(table.contains("(+2 day(s) of TPD)"), "{table}");
}

/// `GET /metrics` from the admin listener; `None` until it answers.
fn metrics(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

/// The value of the sample whose series is exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_flex_ceiling_holds_and_metrics_show_each_tier_against_its_limits() {
    // Long generations (8 s flex, 2 s default) keep the tasks in flight while we look.
    let sim = sim("flex_pool = 100\n[generation]\nbase = \"1000s\"\nper_video_second = \"0s\"\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let admin = format!("127.0.0.1:{port}");
    let cfg = worker_config_with(
        &sim,
        "",
        &format!(
            "[models.\"{LITE}\"]\nlimits = {{ rpm = 300, concurrency = 2, flex_max_in_flight = 7 }}\n"
        ),
    )
    .replace(
        "[admin]\nlisten = \"\"",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let env = TestEnv::new(&cfg);
    let mut lines = jobs(20, true, "ceiling");
    lines.extend(jobs(5, false, "default"));
    submit_lines(&env, &lines);
    let _service = env.serve();
    let flex = format!("seedq_in_flight{{model=\"{LITE}\",tier=\"flex\"}}");
    let default = format!("seedq_in_flight{{model=\"{LITE}\",tier=\"default\"}}");
    let mut last = String::new();
    crate::helpers::wait_until(30, "both tiers at their limits", || {
        last = metrics(&admin).unwrap_or_default();
        sample(&last, &flex) == Some(7.0) && sample(&last, &default) == Some(2.0)
    });
    assert_eq!(
        sample(
            &last,
            &format!("seedq_flex_in_flight_limit{{model=\"{LITE}\"}}")
        ),
        Some(7.0),
        "{last}"
    );
    assert_eq!(
        sample(
            &last,
            &format!("seedq_concurrency_limit{{model=\"{LITE}\"}}")
        ),
        Some(2.0)
    );
    // In progress at Ark, by tier: queued or running. seedq counts a job in flight from its
    // claim (`submitting`), before its create reaches the sim, so wait for the sim to catch
    // up; at no moment may it see more than the caps.
    let live = |tasks: &[serde_json::Value], tier: &str| {
        tasks
            .iter()
            .filter(|t| {
                t["service_tier"] == tier && (t["status"] == "running" || t["status"] == "queued")
            })
            .count()
    };
    crate::helpers::wait_until(30, "the sim to see both tiers at their caps", || {
        let tasks = sim.tasks();
        let (d, f) = (live(&tasks, "default"), live(&tasks, "flex"));
        assert!(d <= 2, "default over its cap at Ark: {d}");
        assert!(f <= 7, "flex_max_in_flight broken at Ark: {f}");
        d == 2 && f == 7
    });
}

#[test]
fn seedance_2_4k_jobs_keep_their_own_limits_beside_other_resolutions() {
    const V20: &str = "doubao-seedance-2-0-260128";
    let sim = sim("");
    // The sim's RPM window is 60 s × 0.002 = 120 ms; seedq adds its transit margin.
    let env = TestEnv::new(&worker_config_with(&sim, "rpm_window = \"120ms\"", ""));
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let res = if i % 2 == 0 { "4k" } else { "720p" };
            format!(r#"{{"prompt":"{res} {i}","model":"{V20}","resolution":"{res}","duration":4}}"#)
        })
        .collect();
    submit_lines(&env, &lines);
    env.run_service();

    let all = env.jobs();
    assert!(all.iter().all(|j| j["state"] == "succeeded"), "{all:?}");
    assert_eq!(sim.stats()["rate_limited_total"], 0, "4k's RPM of 15 kept");
    // 4k's concurrency of one (docs/ark-api.md §6.2 D3): seedq creates the next 4k task only
    // after the previous one finished, so none ever waits in Ark's queue.
    let mut k: Vec<(i64, i64)> = sim
        .tasks()
        .iter()
        .filter(|t| t["request"]["resolution"] == "4k")
        .map(|t| {
            (
                t["created_ms"].as_i64().expect("created"),
                t["finished_ms"].as_i64().expect("finished"),
            )
        })
        .collect();
    assert_eq!(k.len(), 6);
    k.sort_unstable();
    for w in k.windows(2) {
        assert!(w[1].0 >= w[0].1, "two 4k tasks in flight at once: {k:?}");
    }
}
