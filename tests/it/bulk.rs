//! Bulk rendering against the simulator: batches (JSONL and CSV), estimates, export, watch,
//! chains, stitching and the flex governor.

use std::collections::HashMap;

use crate::helpers::{SimProc, TestEnv, code_and_err, fast_sim, worker_config};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const LITE_T2V: &str = "doubao-seedance-1-0-lite-t2v-250428";
const FAST: &str = "doubao-seedance-1-0-pro-fast-251015";

fn write(env: &TestEnv, name: &str, text: &str) -> String {
    let p = env.path().join(name);
    std::fs::write(&p, text).expect("write file");
    p.to_string_lossy().into_owned()
}

/// `TestEnv::new` with archiving into `<dir>/archive` (the helper's config turns it off).
fn archived_env(extra: &str) -> TestEnv {
    let env = TestEnv::new(extra);
    let text = std::fs::read_to_string(&env.config).expect("config");
    let url = format!("file://{}", env.path().join("archive").display());
    let text = text.replacen(
        "[archive]\nurl = \"\"",
        &format!("[archive]\nurl = {url:?}"),
        1,
    );
    std::fs::write(&env.config, text).expect("config");
    env
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn a_500_job_batch_runs_and_its_summary_export_and_estimate_agree_with_the_db() {
    // More slots than the catalogue's, on both sides, so 500 jobs take a couple of seconds.
    let models = [PRO, LITE_T2V, FAST];
    let sim_limits: String = models
        .iter()
        .map(|m| format!("[models.\"{m}\"]\nconcurrency = 40\n"))
        .collect();
    let sim = fast_sim(&format!(
        "{sim_limits}[faults]\noutput_moderation_words = [\"forbidden\"]\n"
    ));
    let seedq_limits: String = models
        .iter()
        .map(|m| format!("[models.\"{m}\"]\nlimits = {{ concurrency = 40 }}\n"))
        .collect();
    let env = archived_env(&worker_config(&sim, &seedq_limits));
    let lines: Vec<String> = (0..500)
        .map(|i| {
            let model = models[i % 3];
            // Two clip shapes only: the sim renders each shape once, and the first render
            // holds up the first tasks (and the learned first-poll times) in a debug build.
            let (res, dur) = [("480p", 2), ("480p", 2), ("480p", 3)][i % 3];
            let word = if i % 167 == 5 { "forbidden " } else { "" };
            format!(
                r#"{{"prompt":"{word}shot {i}","model":"{model}","resolution":"{res}","duration":{dur},"key":"k{i}"}}"#
            )
        })
        .collect();
    let file = write(&env, "jobs.jsonl", &lines.join("\n"));

    let est = json(&env.ok(&["estimate", "-f", &file, "--json"]));
    assert_eq!(est["jobs"], 500);
    env.ok(&["submit", "-f", &file, "--batch", "night"]);
    env.run_service_with_failures();

    let jobs = env.jobs();
    assert_eq!(jobs.len(), 500);
    let failed: Vec<&serde_json::Value> = jobs.iter().filter(|j| j["state"] == "failed").collect();
    assert_eq!(failed.len(), 3, "the moderated prompts fail");
    assert!(
        jobs.iter()
            .all(|j| j["state"] == "archived" || j["state"] == "failed")
    );

    // The estimate equals what the sim billed, model by model (1.0 models: exact formula).
    let mut billed: HashMap<String, i64> = HashMap::new();
    let mut billed_est: HashMap<String, i64> = HashMap::new();
    for j in jobs.iter().filter(|j| j["state"] == "archived") {
        let m = j["model"].as_str().expect("model").to_string();
        *billed.entry(m.clone()).or_default() += j["usage_tokens"].as_i64().expect("usage");
        *billed_est.entry(m).or_default() += j["est_tokens"].as_i64().expect("estimate");
    }
    for row in est["rows"].as_array().expect("rows") {
        let m = row["model"].as_str().expect("model");
        // The estimate covers the failed (unbilled) jobs too: compare per job.
        assert_eq!(billed[m], billed_est[m], "{m}: usage equals est_tokens");
        let n_ok = jobs
            .iter()
            .filter(|j| j["model"] == m && j["state"] == "archived")
            .count();
        assert!(n_ok > 0);
    }
    let est_total: i64 = est["tokens"].as_i64().expect("tokens");
    let all_est: i64 = jobs
        .iter()
        .map(|j| j["est_tokens"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(est_total, all_est, "estimate --file = the stored estimates");

    // estimate --batch: billed tokens where known, the estimate for the failed jobs.
    let failed_est: i64 = failed
        .iter()
        .map(|j| j["est_tokens"].as_i64().unwrap_or(0))
        .sum();
    let by_batch = json(&env.ok(&["estimate", "--batch", "night", "--json"]));
    assert_eq!(by_batch["jobs"], 500);
    assert_eq!(
        by_batch["tokens"],
        billed.values().sum::<i64>() + failed_est
    );
    assert_eq!(by_batch["finish_ms"], 0, "nothing left to run");

    // batch show agrees with the rows.
    let show = json(&env.ok(&["batch", "show", "night", "--json"]));
    let s = &show["summary"];
    assert_eq!(s["jobs"], 500);
    assert_eq!(s["states"]["archived"], 497);
    assert_eq!(s["states"]["failed"], 3);
    let usage: i64 = billed.values().sum();
    assert_eq!(s["usage_tokens"], usage);
    assert_eq!(s["est_tokens"], all_est);
    let reasons: Vec<&str> = show["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["code"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons.iter().all(|c| c.contains("PolicyViolation")),
        "{reasons:?}"
    );
    let text = env.ok(&["batch", "show", "night"]);
    assert!(text.contains("497 done"), "{text}");
    assert!(text.contains("PolicyViolation"), "{text}");
    let ls = env.ok(&["batch", "ls"]);
    assert!(ls.lines().any(|l| l.starts_with("night ")), "{ls}");

    // The export has one line per video, matching the rows.
    let export = env.ok(&["export", "--batch", "night", "--format", "jsonl"]);
    let by_id: HashMap<&str, &serde_json::Value> = jobs
        .iter()
        .map(|j| (j["id"].as_str().expect("id"), j))
        .collect();
    let lines: Vec<serde_json::Value> = export.lines().map(json).collect();
    assert_eq!(lines.len(), 497);
    for l in &lines {
        let j = by_id[l["job"].as_str().expect("job")];
        assert_eq!(l["model"], j["model"]);
        assert_eq!(l["seed"], j["seed"]);
        assert_eq!(l["tokens"], j["usage_tokens"]);
        assert_eq!(l["tokens_billed"], true);
        assert_eq!(l["url"], j["video_url"]);
        assert_eq!(l["key"], j["archive_key"]);
        assert_eq!(l["sha256"], j["archive_sha256"]);
        assert_eq!(l["size"], j["archive_size"]);
        let file = env
            .path()
            .join("archive")
            .join(l["key"].as_str().expect("key"));
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert_eq!(l["size"], len, "{}", file.display());
        assert!(l["prompt"].as_str().is_some_and(|p| p.starts_with("shot ")));
        assert!(l["cost"].as_f64().is_some_and(|c| c > 0.0));
    }
    let csv_out = env.ok(&["export", "--batch", "night", "--format", "csv"]);
    assert_eq!(csv_out.lines().count(), 498, "a header and 497 lines");
    assert!(csv_out.starts_with("job,key,sha256,size,prompt,seed,model"));

    // stats --cost: billed equals estimated for these models.
    let cost = json(&env.ok(&["stats", "--cost", "--json"]));
    for row in cost.as_array().expect("rows") {
        assert_eq!(row["token_error_pct"], 0.0, "{row}");
    }

    // The failed jobs go back to the queue, and only they.
    let out = env.ok(&["batch", "retry", "night", "--failed"]);
    assert!(out.contains("3 job(s) queued again"), "{out}");
    let queued = env.jobs().iter().filter(|j| j["state"] == "queued").count();
    assert_eq!(queued, 3);
    let (code, _) = code_and_err(&env.cli(&["batch", "show", "nope"]));
    assert_eq!(code, Some(1));
}

#[test]
fn a_csv_with_a_bad_row_imports_nothing_and_names_the_row_and_column() {
    let env = TestEnv::new("");
    let header = "prompt,model,resolution,duration,flex,tags\n";
    let bad = format!(
        "{header}a fox,{PRO},720p,5,false,a;b\n\"a cat, yawning\",{PRO},720p,15,no,\nthird,{PRO},720p,five,,\n"
    );
    let file = write(&env, "jobs.csv", &bad);
    let out = env.cli(&["submit", "-f", &file, "--batch", "csv"]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    assert!(
        err.contains("row 2 (line 3), column duration: duration 15 is out of range"),
        "{err}"
    );
    assert!(
        err.contains("row 3 (line 4), column duration: \"five\" is not an integer"),
        "{err}"
    );
    assert!(env.jobs().is_empty(), "nothing was imported");

    // The good rows alone go in, with the batch's defaults, and the batch can be cancelled.
    let good = format!("{header}a fox,{PRO},720p,5,,a;b\n\"a cat, yawning\",,480p,3,,\n");
    let file = write(&env, "good.csv", &good);
    let out = env.ok(&[
        "submit", "-f", &file, "--batch", "csv", "-m", LITE_T2V, "--flex",
    ]);
    assert!(out.contains("imported 2 job(s)"), "{out}");
    let jobs = env.jobs();
    assert_eq!(jobs.len(), 2);
    assert!(
        jobs.iter()
            .all(|j| j["batch_id"] == "csv" && j["service_tier"] == "flex")
    );
    let cat = jobs
        .iter()
        .find(|j| j["model"] == LITE_T2V)
        .expect("defaulted model");
    assert_eq!(cat["shape"], "480p/3s");
    let fox = jobs.iter().find(|j| j["model"] == PRO).expect("fox");
    assert_eq!(fox["tags"], serde_json::json!(["a", "b"]));
    let out = env.ok(&["batch", "cancel", "csv"]);
    assert!(out.contains("2 queued job(s) cancelled"), "{out}");
    assert!(env.jobs().iter().all(|j| j["state"] == "cancelled"));
    let show = json(&env.ok(&["batch", "show", "csv", "--json"]));
    assert!(
        show["batch"]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("good.csv"))
    );
}

#[test]
fn watch_prints_plain_progress_lines_and_exits_when_the_batch_is_done() {
    // 2 s clips take 0.42 s here, so 40 jobs at 10 slots take a couple of seconds.
    let sim = SimProc::start("time_scale = 0.01\nvideo_downscale = 16\nreuse_videos = true\n");
    let env = TestEnv::new(&worker_config(&sim, ""));
    let lines: Vec<String> = (0..40)
        .map(|i| {
            format!(r#"{{"prompt":"w {i}","model":"{PRO}","resolution":"480p","duration":2}}"#)
        })
        .collect();
    let file = write(&env, "jobs.jsonl", &lines.join("\n"));
    env.ok(&["submit", "-f", &file, "--batch", "w"]);
    let mut watch = crate::helpers::Guard(
        env.cmd(&[
            "watch",
            "--batch",
            "w",
            "--interval",
            "100ms",
            "--exit-when-done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch"),
    );
    let _serve = env.serve();
    let mut status = None;
    crate::helpers::wait_until(60, "watch to exit", || {
        status = watch.0.try_wait().expect("try_wait");
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut watch.0.stdout.take().expect("stdout"), &mut out)
        .expect("read watch output");
    let progress: Vec<&str> = out.lines().filter(|l| l.starts_with("w: ")).collect();
    assert!(progress.len() >= 3, "several progress lines:\n{out}");
    assert!(progress[0].contains("/40 finished"), "{out}");
    assert!(
        progress
            .iter()
            .any(|l| l.contains("/min") && l.contains("eta ")),
        "throughput and eta:\n{out}"
    );
    // Counts only grow, and no terminal escapes reach a pipe.
    let finished: Vec<i64> = progress
        .iter()
        .filter_map(|l| l["w: ".len()..].split('/').next()?.parse().ok())
        .collect();
    assert!(finished.windows(2).all(|w| w[0] <= w[1]), "{finished:?}");
    assert_eq!(finished.last(), Some(&40), "{out}");
    assert!(!out.contains('\x1b'), "{out:?}");
    let last = out.lines().last().unwrap_or("");
    assert!(last.starts_with("w: done: 40 of 40"), "{out}");
}

fn probe(path: &std::path::Path) -> seedq::media::Mp4Info {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let size = f.metadata().expect("metadata").len();
    seedq::media::probe(std::io::BufReader::new(f), size).expect("probe")
}

#[test]
fn a_chain_feeds_each_last_frame_forward_and_is_stitched_and_a_failing_chain_stops() {
    // Pictures matter here: 480p 1:1 at half size gives 320x320 frames, just above the
    // 300 px an input image needs, so a last frame can start the next shot.
    let sim = SimProc::start(
        "time_scale = 0.002\nvideo_downscale = 2\n[faults]\noutput_moderation_words = [\"forbidden\"]\n",
    );
    let env = archived_env(&worker_config(&sim, ""));
    let story = format!(
        r#"{{"id": "fox", "defaults": {{"model": "{PRO}", "resolution": "480p", "ratio": "1:1", "duration": 2}},
            "shots": [{{"prompt": "a fox wakes up"}}, {{"prompt": "the fox runs", "duration": 3}}, {{"prompt": "the fox sleeps"}}]}}"#
    );
    let file = write(&env, "story.json", &story);
    let out = env.ok(&["chain", "submit", &file]);
    assert!(out.contains("chain fox: 3 shot(s) queued"), "{out}");
    // A second chain in JSONL whose middle shot is refused every time.
    let bad: Vec<String> = ["one", "forbidden two", "three"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                r#"{{"chain": "bad", "shot": {}, "prompt": "{p}", "model": "{PRO}", "resolution": "480p", "ratio": "1:1", "duration": 2}}"#,
                i + 1
            )
        })
        .collect();
    let file = write(&env, "bad.jsonl", &bad.join("\n"));
    env.ok(&["chain", "submit", &file, "--retries", "1"]);
    let held = json(&env.ok(&["chain", "show", "fox", "--json"]));
    assert_eq!(held["shots"][1]["held"], true, "{held}");
    env.run_service_with_failures();

    let show = json(&env.ok(&["chain", "show", "fox", "--json"]));
    assert_eq!(show["chain"]["state"], "done", "{show}");
    let shots = show["shots"].as_array().expect("shots");
    assert!(shots.iter().all(|s| s["state"] == "archived"), "{show}");
    let tasks = sim.tasks();
    let task = |s: &serde_json::Value| {
        tasks
            .iter()
            .find(|t| t["id"] == s["remote_task_id"])
            .unwrap_or_else(|| panic!("no sim task for {s}"))
            .clone()
    };
    let t: Vec<serde_json::Value> = shots.iter().map(task).collect();
    assert_eq!(
        t[0]["input_image_sha256"],
        serde_json::json!([]),
        "shot 1 is text-to-video"
    );
    for k in 1..3 {
        assert_eq!(
            t[k]["input_image_sha256"][0],
            t[k - 1]["last_frame_sha256"],
            "shot {} starts from shot {}'s last frame",
            k + 1,
            k
        );
        assert!(t[k]["created_ms"].as_i64() >= t[k - 1]["finished_ms"].as_i64());
        assert_eq!(t[k - 1]["request"]["return_last_frame"], true);
    }
    assert!(
        t[2]["request"]["return_last_frame"].is_null(),
        "not on the last shot"
    );

    // The joined video: next to the shots, frames and duration the sum of theirs.
    let archive = env.path().join("archive");
    let key = show["chain"]["stitch_key"].as_str().expect("stitch key");
    let joined = probe(&archive.join(key));
    let parts: Vec<seedq::media::Mp4Info> = shots
        .iter()
        .map(|s| probe(&archive.join(s["archive_key"].as_str().expect("key"))))
        .collect();
    assert_eq!(parts.iter().map(|p| p.frames).sum::<u64>(), joined.frames);
    assert_eq!(joined.frames, 49 + 73 + 49);
    let sum: std::time::Duration = parts.iter().map(|p| p.duration).sum();
    let diff = sum.abs_diff(joined.duration);
    assert!(
        diff < std::time::Duration::from_millis(1),
        "{sum:?} vs {:?}",
        joined.duration
    );
    assert_eq!(show["chain"]["stitch_frames"], joined.frames);
    let sidecar = json(
        &std::fs::read_to_string(archive.join(key.replace(".mp4", ".json"))).expect("sidecar"),
    );
    let listed: Vec<&str> = sidecar["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| p["key"].as_str().unwrap_or(""))
        .collect();
    let keys: Vec<&str> = shots
        .iter()
        .map(|s| s["archive_key"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(listed, keys);
    assert_eq!(
        std::path::Path::new(key).parent(),
        std::path::Path::new(keys[0]).parent(),
        "next to the shots"
    );

    // By hand: a job id and a key join the same way; a clip of another size is refused.
    let first_job = shots[0]["job"].as_str().expect("job id");
    let out_file = env.path().join("manual.mp4");
    let out_path = out_file.to_str().expect("utf-8 path");
    env.ok(&[
        "stitch",
        first_job,
        keys[1],
        "-o",
        out_path,
        "--key",
        "manual/joined.mp4",
    ]);
    assert_eq!(probe(&out_file).frames, 49 + 73);
    assert_eq!(probe(&archive.join("manual/joined.mp4")).frames, 49 + 73);
    assert!(archive.join("manual/joined.json").is_file());
    let small = seedq::media::render(&seedq::media::VideoSpec {
        width: 96,
        height: 54,
        frames: 12,
        fps: 24,
        seed: 1,
        first_frame: None,
    })
    .expect("render");
    std::fs::create_dir_all(archive.join("odd")).expect("dir");
    std::fs::write(archive.join("odd/small.mp4"), small.mp4).expect("write");
    let out = env.cli(&["stitch", keys[0], "odd/small.mp4", "-o", out_path]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("clip (odd/small.mp4)") && err.contains("96x54 differ"),
        "{err}"
    );
    let (code, err) = code_and_err(&env.cli(&["stitch", keys[0], "odd/none.mp4", "-o", out_path]));
    assert_eq!(code, Some(1), "{err}");

    // The failing chain: shot 2 tried twice (one retry), then the chain stops; shot 1 stays
    // archived and shot 3 is never sent.
    let out = env.cli(&["chain", "show", "bad"]);
    let (code, _) = code_and_err(&out);
    assert_eq!(code, Some(1));
    let bad = json(&String::from_utf8_lossy(
        &env.cli(&["chain", "show", "bad", "--json"]).stdout,
    ));
    assert_eq!(bad["chain"]["state"], "failed");
    let reason = bad["chain"]["last_error"].as_str().unwrap_or("");
    assert!(
        reason.contains("shot 2 failed after 1 retry") && reason.contains("PolicyViolation"),
        "{reason}"
    );
    let states: Vec<&str> = bad["shots"]
        .as_array()
        .expect("shots")
        .iter()
        .map(|s| s["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["archived", "failed", "cancelled"]);
    // A shot that never got its first frame cannot be sent by hand either.
    let never = bad["shots"][2]["job"].as_str().expect("job");
    let (code, err) = code_and_err(&env.cli(&["retry", never]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("never released"), "{err}");
    let bad_creates = tasks
        .iter()
        .filter(|t| {
            t["prompt"]
                .as_str()
                .is_some_and(|p| ["one", "forbidden two", "three"].contains(&p))
        })
        .count();
    assert_eq!(
        bad_creates,
        1 + 2,
        "shot 1 once, shot 2 twice, shot 3 never"
    );
}

/// Lines of `n` jobs for `model`, 480p 2 s clips (19 845 tokens each on the 1.0 models).
fn clip_lines(model: &str, prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(r#"{{"prompt":"{prefix} {i}","model":"{model}","resolution":"480p","ratio":"16:9","duration":2}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// 864 × 480 × 49 / 1024: one 480p 2 s clip of a 1.0 model.
const CLIP_TOKENS: i64 = 19_845;

#[test]
fn a_tiny_tpd_stops_flex_submission_until_the_next_day() {
    let sim = fast_sim("");
    // A TPD day of 2 s (bulk.tpd_day, the testing knob) and a budget of three clips a day.
    let env = TestEnv::new(&worker_config(
        &sim,
        &format!(
            "[bulk]\ntpd_day = \"2s\"\n\n[models.\"{LITE_T2V}\"]\nlimits = {{ flex_tpd = {} }}\n",
            3 * CLIP_TOKENS
        ),
    ));
    let file = write(&env, "jobs.jsonl", &clip_lines(LITE_T2V, "budget", 6));
    env.ok(&["submit", "-f", &file, "--flex", "--expires-after", "2h"]);
    env.run_service();

    let jobs = env.jobs();
    assert!(
        jobs.iter()
            .all(|j| j["state"] == "succeeded" && j["service_tier"] == "flex")
    );
    assert!(jobs.iter().all(|j| j["est_tokens"] == CLIP_TOKENS));
    // Days as the dispatcher counts them: 2 s long, from midnight at UTC+8.
    let day = |ms: i64| (ms + 8 * 3_600_000).div_euclid(2_000);
    let mut per_day: HashMap<i64, i64> = HashMap::new();
    for j in &jobs {
        let started = j["submit_started_at"].as_i64().expect("submit time");
        *per_day.entry(day(started)).or_default() += 1;
    }
    assert!(
        per_day.len() >= 2,
        "the budget spread the jobs over days: {per_day:?}"
    );
    assert!(
        per_day.values().all(|n| *n <= 3),
        "at most three a day: {per_day:?}"
    );
    let waited = jobs.iter().any(|j| {
        let id = j["id"].as_str().expect("id");
        env.ok(&["show", id]).contains("flex TPD budget reached")
    });
    assert!(waited, "some job waited for the next day's budget");
}

#[test]
fn a_deadline_picks_flex_while_it_fits_and_the_governor_moves_late_jobs() {
    let sim = fast_sim("");
    // TPD days start at local midnight; put it just behind us so tomorrow is ~24 h away,
    // well after every deadline here.
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 3600
        % 24;
    let offset = (24 - hour) % 24;
    let budget = 3 * CLIP_TOKENS;
    let env = TestEnv::new(&crate::helpers::worker_config_with(
        &sim,
        &format!("tpd_utc_offset_hours = {offset}"),
        &format!(
            "[bulk]\ngovernor_interval = \"50ms\"\n\n\
             [models.\"{PRO}\"]\nlimits = {{ flex_tpd = {budget} }}\n\n\
             [models.\"{LITE_T2V}\"]\nlimits = {{ flex_tpd = {budget} }}\n"
        ),
    ));
    let tiers = |batch: &str| -> Vec<String> {
        let mut t: Vec<String> = env
            .jobs()
            .iter()
            .filter(|j| j["batch_id"] == batch)
            .map(|j| j["service_tier"].as_str().unwrap_or("").to_string())
            .collect();
        t.sort();
        t
    };
    // Admission: the budget covers three of six; the rest would wait for tomorrow.
    let file = write(&env, "soon.jsonl", &clip_lines(PRO, "soon", 6));
    let out = env.cli(&["submit", "-f", &file, "--batch", "soon", "--deadline", "2h"]);
    let (_, err) = code_and_err(&out);
    assert!(
        err.contains("soon: 3 job(s) on flex, 3 on the default tier"),
        "{err}"
    );
    assert_eq!(
        tiers("soon"),
        ["default", "default", "default", "flex", "flex", "flex"]
    );
    let flexed = env
        .jobs()
        .into_iter()
        .find(|j| j["batch_id"] == "soon" && j["service_tier"] == "flex")
        .expect("a flex job");
    let body = json(flexed["request_json"].as_str().expect("body"));
    let expires = body["execution_expires_after"].as_i64().expect("expiry");
    assert!(
        (7_100..=7_200).contains(&expires),
        "flex expires at the deadline: {expires}"
    );
    // Less than flex's shortest window (1 h) left: default.
    let file = write(&env, "later.jsonl", &clip_lines(PRO, "rush", 2));
    env.ok(&[
        "submit",
        "-f",
        &file,
        "--batch",
        "rush",
        "--deadline",
        "30m",
    ]);
    assert_eq!(tiers("rush"), ["default", "default"]);

    // The service: a batch admitted on flex, then higher-priority flex work without a
    // deadline takes its budget; the governor moves it to default.
    let file = write(&env, "x.jsonl", &clip_lines(LITE_T2V, "x", 3));
    env.ok(&["submit", "-f", &file, "--batch", "x", "--deadline", "2h"]);
    assert_eq!(tiers("x"), ["flex", "flex", "flex"]);
    let file = write(&env, "z.jsonl", &clip_lines(LITE_T2V, "z", 3));
    env.ok(&[
        "submit",
        "-f",
        &file,
        "--batch",
        "z",
        "--flex",
        "--priority",
        "5",
    ]);
    env.run_service();

    let jobs = env.jobs();
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{jobs:?}");
    assert_eq!(tiers("x"), ["default", "default", "default"]);
    assert_eq!(tiers("z"), ["flex", "flex", "flex"]);
    assert_eq!(
        tiers("soon"),
        ["default", "default", "default", "flex", "flex", "flex"]
    );
    let moved = jobs.iter().filter(|j| j["batch_id"] == "x").all(|j| {
        let id = j["id"].as_str().expect("id");
        env.ok(&["show", id]).contains("governor: default tier")
    });
    assert!(moved, "the governor's event is in each moved job's history");
    // What the sim was asked for: the moved jobs went out on the default tier.
    let tasks = sim.tasks();
    let x_tiers: Vec<&str> = tasks
        .iter()
        .filter(|t| t["prompt"].as_str().is_some_and(|p| p.starts_with("x ")))
        .map(|t| t["service_tier"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(x_tiers, ["default", "default", "default"]);
}
