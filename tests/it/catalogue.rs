//! The catalogue per region and "no spend without a price", with the real binary and
//! simulator: a BytePlus 1.0 id is priced and limited like its Volcengine twin (so a spend cap
//! holds it), a model without a price is never created under a cap, and is created without one.

use crate::helpers::{SimProc, TestEnv, worker_config};

/// BytePlus' id of Seedance 1.0 pro (docs/ark-api.md §14 "BytePlus model ids").
const BYTEPLUS_PRO: &str = "seedance-1-0-pro-250528";
/// 1920 × 1088 × (24 × 10 + 1) / 1024: one 1080p 16:9 10 s clip of a 1.0 model
/// (docs/reference/tutorial.txt:1482, docs/ark-api.md §10).
const PRO_1080P_10S: i64 = 491_640;
/// An endpoint id no catalogue knows: no price.
const ENDPOINT: &str = "ep-20261206-unpriced";

fn fast_sim() -> SimProc {
    SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n")
}

fn write(env: &TestEnv, name: &str, text: &str) -> String {
    let p = env.path().join(name);
    std::fs::write(&p, text).expect("write file");
    p.to_string_lossy().into_owned()
}

fn creates(sim: &SimProc) -> i64 {
    sim.stats()["creates_total"].as_i64().unwrap_or(-1)
}

#[test]
fn a_byteplus_1_0_pro_batch_is_priced_and_held_by_a_cost_cap() {
    let sim = fast_sim();
    let env = TestEnv::new(&worker_config(&sim, ""));
    let line = |i: usize| {
        format!(
            r#"{{"prompt":"harbour at dawn {i}","model":"{BYTEPLUS_PRO}","resolution":"1080p","ratio":"16:9","duration":10}}"#
        )
    };
    let file = write(&env, "jobs.jsonl", &format!("{}\n{}\n", line(0), line(1)));
    // 491 640 tokens at 15 CNY/M = 7.37 CNY a job: not one fits 0.50 CNY.
    let planned = env.ok(&["estimate", "-f", &file, "--max-cost", "0.50"]);
    assert!(
        planned.contains("0 of 2 job(s) fit now") && planned.contains("14.75"),
        "estimate prices the BytePlus id: {planned}"
    );
    let out = env.cli(&["submit", "-f", &file, "--batch", "bp", "--max-cost", "0.50"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("not in the catalogue"),
        "a catalogued id draws no warning: {err}"
    );
    env.run_service_with_failures();
    let jobs = env.jobs();
    assert_eq!(jobs.len(), 2);
    for j in &jobs {
        assert_eq!(j["est_tokens"], PRO_1080P_10S, "{j}");
        assert_eq!(j["state"], "queued");
        assert_eq!(j["last_error_code"], "budget_batch", "{j}");
    }
    assert_eq!(creates(&sim), 0, "the cap held: nothing was created");
    let shown = env.ok(&["batch", "show", "bp"]);
    assert!(shown.contains("2 job(s) waiting on a budget"), "{shown}");
    // The model's own limits, not an unknown model's defaults (1.0 pro: 10 slots, 600 rpm).
    let models = env.ok(&["models", "--region", "byteplus"]);
    let row = models
        .lines()
        .find(|l| l.starts_with(BYTEPLUS_PRO))
        .unwrap_or_else(|| panic!("{BYTEPLUS_PRO} listed: {models}"));
    assert!(
        row.contains("byteplus") && row.contains("  600 ") && row.contains("docs/ark-api.md §14"),
        "{row}"
    );
    assert!(
        models.lines().skip(1).all(|l| !l.starts_with("doubao-")),
        "only BytePlus rows: {models}"
    );
    // --json: every row with its region, date and source.
    let rows: Vec<serde_json::Value> = env
        .ok(&["models", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    let in_region = |r: &str| rows.iter().filter(|x| x["region"] == r).count();
    assert_eq!((in_region("volcengine"), in_region("byteplus")), (9, 11));
    assert!(
        rows.iter().all(|r| {
            r["region"].is_string() && r["since"].is_string() && r["source"].is_string()
        })
    );
    let bp = rows
        .iter()
        .find(|r| r["id"] == BYTEPLUS_PRO)
        .expect("the BytePlus row");
    assert_eq!(bp["price_per_million"], 15.0);
    assert_eq!(bp["limits"]["concurrency"], 10);
    assert_eq!(bp["default_resolution"], "1080p");
    // A region that does not exist is refused, naming it and what is allowed.
    let out = env.cli(&["models", "--region", "mars"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mars") && err.contains("volcengine, byteplus"),
        "{err}"
    );
}

#[test]
fn a_job_without_a_price_is_never_created_under_a_cap_and_says_why() {
    let sim = fast_sim();
    let env = TestEnv::new(&worker_config(&sim, ""));
    let job = format!(r#"{{"prompt":"a lighthouse","model":"{ENDPOINT}"}}"#);
    let file = write(&env, "jobs.jsonl", &job);
    let est = env.ok(&["estimate", "-f", &file, "--max-cost", "5"]);
    assert!(
        est.contains("unpriced") && est.contains(&format!("no price for model {ENDPOINT}")),
        "{est}"
    );
    let out = env.cli(&["submit", "-f", &file, "--batch", "ep", "--max-cost", "5"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("model {ENDPOINT} is not in the catalogue")),
        "submit warns: {err}"
    );
    // A near miss of a catalogued id names it.
    let typo = write(
        &env,
        "typo.jsonl",
        r#"{"prompt":"x","model":"seedance-1-0-pro-25052"}"#,
    );
    let out = env.cli(&["submit", "-f", &typo, "--batch", "typo", "--max-cost", "5"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did you mean seedance-1-0-pro-250528?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = env.run_service_with_failures();
    assert!(summary.contains("no price for model"), "{summary}");
    assert_eq!(creates(&sim), 0, "no create without a price under a cap");
    let jobs = env.jobs();
    assert_eq!(jobs.len(), 2);
    let reason =
        format!("no price for model {ENDPOINT}: add `[models.\"{ENDPOINT}\"] base = …` or a price");
    for j in &jobs {
        assert_eq!(j["state"], "queued", "{j}");
        assert_eq!(j["last_error_code"], "budget_unpriced", "{j}");
    }
    let ep = jobs
        .iter()
        .find(|j| j["model"] == ENDPOINT)
        .expect("the endpoint job");
    let shown = env.ok(&["show", ep["id"].as_str().expect("id")]);
    assert!(shown.contains(&reason), "show says why: {shown}");
    let batch = env.ok(&["batch", "show", "ep"]);
    assert!(batch.contains(&reason), "batch show says why: {batch}");
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["batch", "show", "ep", "--json"])).expect("json");
    assert_eq!(v["budget"]["unpriced"][0], ENDPOINT, "{v}");

    // A price in the configuration (starting from a catalogued row) lets it run.
    let cfg = std::fs::read_to_string(&env.config).expect("config");
    std::fs::write(
        &env.config,
        format!("{cfg}\n[models.\"{ENDPOINT}\"]\nbase = \"doubao-seedance-1-0-lite-t2v-250428\"\n"),
    )
    .expect("rewrite config");
    env.ok(&["batch", "set", "ep", "--max-cost", "5"]);
    env.run_service_with_failures();
    let jobs = env.jobs();
    let ep = jobs
        .iter()
        .find(|j| j["model"] == ENDPOINT)
        .expect("the endpoint job");
    assert_eq!(ep["state"], "succeeded", "{ep}");
    assert_eq!(creates(&sim), 1, "only the priced one was created");
}

#[test]
fn without_any_cap_an_unpriced_job_is_created() {
    let sim = fast_sim();
    let env = TestEnv::new(&worker_config(&sim, ""));
    let file = write(
        &env,
        "jobs.jsonl",
        &format!(
            "{{\"prompt\":\"a lighthouse\",\"model\":\"{ENDPOINT}\"}}\n\
             {{\"prompt\":\"a harbour\",\"model\":\"{BYTEPLUS_PRO}\",\"duration\":5}}\n"
        ),
    );
    env.ok(&["submit", "-f", &file]);
    env.run_service();
    let jobs = env.jobs();
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{jobs:#?}");
    assert_eq!(creates(&sim), 2);
    // The simulator knows the BytePlus id too: 1.0 pro's 1080p default, billed as such
    // (1920 × 1088 × 121 / 1024), not an unknown model's 720p.
    let bp = jobs
        .iter()
        .find(|j| j["model"] == BYTEPLUS_PRO)
        .expect("the BytePlus job");
    assert_eq!(bp["usage_tokens"], 246_840, "{bp}");
    assert_eq!(bp["est_tokens"], 246_840, "{bp}");
}

#[test]
fn under_a_daily_cap_an_unpriced_job_waits_and_the_dashboard_and_watch_say_why() {
    use crate::budget::get_text;
    use crate::helpers::free_port;
    let sim = fast_sim();
    let admin = format!("127.0.0.1:{}", free_port());
    let text = worker_config(&sim, "[budget]\ndaily_cny = 5\n")
        .replace("listen = \"\"", &format!("listen = \"{admin}\""));
    let env = TestEnv::new(&text);
    let file = write(
        &env,
        "jobs.jsonl",
        &format!(r#"{{"prompt":"a lighthouse","model":"{ENDPOINT}"}}"#),
    );
    env.ok(&["submit", "-f", &file, "--batch", "daily"]);
    let _service = env.serve();
    crate::helpers::wait_until(20, "the job to wait for a price", || {
        env.jobs()
            .first()
            .is_some_and(|j| j["last_error_code"] == "budget_unpriced")
    });
    let id = env.jobs()[0]["id"].as_str().expect("id").to_string();
    // The dispatcher may record the wait before the admin listener is bound.
    let mut page = String::new();
    crate::helpers::wait_until(20, "the dashboard to answer", || {
        page = get_text(&admin, &format!("/ui/jobs/{id}")).unwrap_or_default();
        !page.is_empty()
    });
    assert!(
        page.contains(&format!("no price for model {ENDPOINT}: add `[models.")),
        "the job page says why: {page}"
    );
    let overview = get_text(&admin, "/ui").unwrap_or_default();
    assert!(
        overview.contains("data-k=\"unpriced\""),
        "the model row is marked unpriced: {overview}"
    );
    let mut watch = crate::helpers::Guard(
        env.cmd(&["watch", "--batch", "daily", "--plain"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn watch"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(watch.0.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("a watch line");
    watch.kill();
    assert!(
        line.contains(&format!("no price for model {ENDPOINT}")),
        "watch says why: {line}"
    );
    assert_eq!(creates(&sim), 0, "never created under the daily cap");
}
