//! The dashboard (`/ui`) in a real headless Chromium, driven over WebDriver, against the real
//! `seedq serve` and the real simulator over loopback.
//!
//! Needs `chromium` and `chromedriver` on PATH (tests/run.sh installs Debian's packages). The
//! screenshots in `docs/` (README) are taken here.

mod helpers;
mod webdriver;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use helpers::Env;
use webdriver::{Driver, free_port};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const TOKEN: &str = "let-me-act-0123456789";
const XSS: &str = "<script>window.pwned = 1</script> a cat & a \"dog\"";

/// The seedq config: fast polling, one slot for the model (so a batch runs a while and its
/// last jobs stay queued), a file archive, the dashboard with `token` (or none).
fn config(sim: &str, admin: &str, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |t| format!("token = {t:?}"));
    format!(
        r#"
[store]
path = "{{db}}"

[archive]
url = "{{archive}}"

[ark]
base_url = "{sim}"
connect_timeout = "1s"
request_timeout = "2s"

[dispatch]
lease = "3s"
idle_interval = "50ms"
backoff_base = "20ms"
backoff_max = "200ms"
throttle_pause = "100ms"
reconcile_interval = "200ms"
reconcile_grace = "3s"
workers = 2

[poll]
first_poll_after = "100ms"
flex_first_poll_after = "200ms"
min_interval = "50ms"
max_interval = "200ms"
flex_max_interval = "200ms"
callback_safety_interval = "2s"

[service]
shutdown_grace = "5s"

[admin]
listen = "{admin}"
{token}
# Small ranges: the simulator's clips are tens of KB, and the seek must need a new range.
ui_max_range = 8192

[models."{PRO}"]
limits = {{ concurrency = 1 }}
"#
    )
}

/// Each task takes 1.5 s; one render per shape, at half size (fast to encode).
const SIM: &str = r#"
reuse_videos = true
video_downscale = 2
[generation]
base = "1500ms"
per_video_second = "0s"
"#;

fn write_jobs(env: &Env, n: usize) -> String {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let prompt = if i == 2 {
                XSS.to_string()
            } else {
                format!("shot {i}: a lighthouse at dusk")
            };
            json!({"prompt": prompt, "model": PRO, "resolution": "480p", "duration": 5,
                   "return_last_frame": true, "key": format!("k{i}")})
            .to_string()
        })
        .collect();
    let p = env.dir.path().join("jobs.jsonl");
    std::fs::write(&p, lines.join("\n")).expect("write jobs");
    p.display().to_string()
}

fn by_key<'a>(jobs: &'a [Value], key: &str) -> &'a Value {
    jobs.iter()
        .find(|j| j["idempotency_key"] == key)
        .unwrap_or_else(|| panic!("no job with key {key}"))
}

fn state_counts(jobs: &[Value]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for j in jobs {
        *m.entry(j["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

async fn wait_http(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = http.get(url).send().await
            && r.status().as_u16() < 500
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered");
}

/// `seedq_ui_range_requests_total` from `/metrics`.
async fn range_requests(admin: &str) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("seedq_ui_range_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn save_png(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&dir).expect("docs/");
    std::fs::write(dir.join(name), png).expect("write screenshot");
}

/// Held by the tests whose timing matters most (the seek's range request, the held batch), so
/// they do not share a loaded two-core machine's CPU with each other's Chromium.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The live overview's count for `state` in batch `night` (0 when absent).
const COUNT_JS: &str = "const li = document.querySelector('.batch[data-batch=\"night\"] \
    li[data-state=\"' + arguments[0] + '\"] .num'); return li ? Number(li.textContent) : 0;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let _heavy = HEAVY.lock().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_sim, sim_url) = helpers::start_sim(tmp.path(), SIM);
    let port = free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let env = Env::new(&config(&sim_url, &format!("127.0.0.1:{port}"), Some(TOKEN)));
    let file = write_jobs(&env, 8);
    env.ok(&["submit", "-f", &file, "--batch", "night"]);
    let jobs = env.jobs();
    let last = by_key(&jobs, "k7")["id"].as_str().expect("id").to_string();
    let xss = by_key(&jobs, "k2")["id"].as_str().expect("id").to_string();

    let _serve = env.serve();
    wait_http(&format!("{admin}/healthz")).await;
    let driver = Driver::start().await;
    let b = driver.session(&tmp.path().join("profile")).await;

    // --- Cancel a queued job: refused without the token, done with it ----------------------
    b.goto(&format!("{admin}/ui/jobs/{last}")).await;
    b.js(
        "document.getElementById('token').value = ''; \
         document.querySelector('button[data-action=cancel]').click();",
        json!([]),
    )
    .await;
    let status = b
        .wait_for(
            10,
            "the refusal",
            "return document.getElementById('action-result').dataset.status",
        )
        .await;
    assert_eq!(status, "403", "a cancel without the token is refused");
    assert_eq!(
        by_key(&env.jobs(), "k7")["state"],
        "queued",
        "nothing changed"
    );
    b.js(
        "document.getElementById('token').value = arguments[0]; \
         document.querySelector('button[data-action=cancel]').click();",
        json!([TOKEN]),
    )
    .await;
    // The page reloads on success; the job store is the judge.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while by_key(&env.jobs(), "k7")["state"] != "cancelled" {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel with the token did not happen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A cross-site style request (no header) is refused too, whatever the browser does.
    let r = reqwest::Client::new()
        .post(format!("{admin}/ui/jobs/{last}/retry"))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(by_key(&env.jobs(), "k7")["state"], "cancelled");
    // GET never acts.
    let r = reqwest::get(format!("{admin}/ui/jobs/{last}/retry"))
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 405);

    // --- The overview counts change without a reload, and end equal to the store's ----------
    b.goto(&format!("{admin}/ui")).await;
    b.js("window.__noReload = 42;", json!([])).await;
    let csp = reqwest::get(format!("{admin}/ui")).await.expect("GET /ui");
    assert!(
        csp.headers()["content-security-policy"]
            .to_str()
            .expect("ascii")
            .contains("script-src 'self'"),
        "the CSP is sent"
    );
    let first_archived = b.js(COUNT_JS, json!(["archived"])).await;
    assert!(
        first_archived.as_i64().unwrap_or(0) < 7,
        "the batch was still running when the overview opened ({first_archived})"
    );
    // The model row shows the configured slot limit.
    let inflight = b
        .js(
            "return document.querySelector('tr[data-model] td[data-k=inflight]').textContent",
            json!([]),
        )
        .await;
    assert!(
        inflight.as_str().unwrap_or("").ends_with("/ 1"),
        "in flight against a limit of 1: {inflight}"
    );
    b.wait_for(
        120,
        "the overview to show 7 archived and 1 cancelled",
        &format!(
            "const c = (s) => {{ {} }}; return c('archived') === 7 && c('cancelled') === 1",
            COUNT_JS.replace("arguments[0]", "s")
        ),
    )
    .await;
    assert_eq!(
        b.js("return window.__noReload", json!([])).await,
        42,
        "the counts changed without a reload"
    );
    let counts = state_counts(&env.jobs());
    assert_eq!(counts.get("archived"), Some(&7), "{counts:?}");
    assert_eq!(counts.get("cancelled"), Some(&1), "{counts:?}");
    let total = b
        .js(
            "return document.querySelector('.batch[data-batch=\"night\"] [data-k=done]').textContent",
            json!([]),
        )
        .await;
    assert_eq!(total, "7 / 8");
    save_png("ui-overview.png", &b.screenshot().await);

    // --- The archived video plays inline, and seeking asks for a range ---------------------
    let jobs = env.jobs();
    let played = by_key(&jobs, "k0")["id"].as_str().expect("id").to_string();
    b.goto(&format!("{admin}/ui/jobs/{played}")).await;
    let size = by_key(&jobs, "k0")["archive_size"]
        .as_u64()
        .expect("archived size");
    assert!(
        size > 4 * 8192,
        "the clip ({size} bytes) must span several bounded ranges for the seek to need one"
    );
    // Seek before playing: with preload=metadata the player has read only the first bounded
    // range, so the end of the clip needs a new request.
    b.wait_for(
        30,
        "the video's metadata",
        "return document.getElementById('video').readyState >= 1",
    )
    .await;
    let before = range_requests(&admin).await;
    assert!(
        before >= 1.0,
        "the player reads the video with range requests"
    );
    // Whether the player already holds the seek's target: a slow machine gives Chromium time
    // to buffer past `preload=metadata`, and then the seek rightly asks for nothing.
    let held = b
        .js(
            "const v = document.getElementById('video'); const t = v.duration - 0.3; \
             for (let i = 0; i < v.buffered.length; i++) { \
               if (v.buffered.start(i) <= t && t <= v.buffered.end(i)) return true; } \
             return false;",
            json!([]),
        )
        .await;
    let seeked = b
        .js_async(
            "const done = arguments[arguments.length - 1]; const v = document.getElementById('video'); \
             v.addEventListener('seeked', () => done(v.currentTime), {once: true}); \
             v.currentTime = v.duration - 0.3;",
            json!([]),
        )
        .await;
    assert!(seeked.as_f64().unwrap_or(0.0) > 1.0, "seeked to {seeked}");
    let after = range_requests(&admin).await;
    assert!(
        after > before || held == json!(true),
        "seeking to an unbuffered end issued no range request ({before} → {after})"
    );
    // The page's own request for a range mid-clip gets exactly those bytes (206), whatever
    // the player had buffered.
    let ranged = b
        .js_async(
            "const done = arguments[arguments.length - 1]; const v = document.getElementById('video'); \
             fetch(v.currentSrc, {headers: {Range: 'bytes=10000-10099'}}) \
               .then(async r => done([r.status, r.headers.get('content-range'), (await r.arrayBuffer()).byteLength])) \
               .catch(e => done(String(e)));",
            json!([]),
        )
        .await;
    assert_eq!(
        ranged,
        json!([206, format!("bytes 10000-10099/{size}"), 100]),
        "a range request from the page"
    );
    b.js(
        "document.getElementById('video').currentTime = 0;",
        json!([]),
    )
    .await;
    b.wait_for(
        30,
        "the video to have data (readyState >= 2)",
        "return document.getElementById('video').readyState >= 2",
    )
    .await;
    let t0 = b
        .js_async(
            "const done = arguments[arguments.length - 1]; const v = document.getElementById('video'); \
             v.muted = true; v.play().then(() => done(v.currentTime), (e) => done('play failed: ' + e));",
            json!([]),
        )
        .await;
    let t0 = t0.as_f64().unwrap_or_else(|| panic!("{t0}"));
    b.wait_for(
        20,
        "currentTime to advance after play()",
        &format!("return document.getElementById('video').currentTime > {t0} + 0.3"),
    )
    .await;
    // The same from page script: a bounded 206 with its Content-Range.
    let ranged = b
        .js_async(
            "const done = arguments[arguments.length - 1]; \
             fetch(arguments[0], {headers: {Range: 'bytes=100-199'}}).then(async (r) => \
               done([r.status, r.headers.get('content-range'), (await r.arrayBuffer()).byteLength]));",
            json!([format!("/ui/jobs/{played}/video")]),
        )
        .await;
    assert_eq!(ranged[0], 206);
    assert!(
        ranged[1]
            .as_str()
            .unwrap_or("")
            .starts_with("bytes 100-199/"),
        "{ranged}"
    );
    assert_eq!(ranged[2], 100);
    let frame_ok = b
        .wait_for(
            10,
            "the last frame to load",
            "const i = document.getElementById('last-frame'); return i.complete && i.naturalWidth > 0",
        )
        .await;
    assert_eq!(frame_ok, true);
    b.js(
        "document.getElementById('video').currentTime = 1.0;",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    save_png("ui-job.png", &b.screenshot().await);

    // --- A prompt with <script> is text -------------------------------------------------------
    b.goto(&format!("{admin}/ui/jobs/{xss}")).await;
    let shown = b
        .js(
            "return document.getElementById('prompt').textContent",
            json!([]),
        )
        .await;
    assert_eq!(shown, XSS, "the prompt is shown as typed");
    assert_eq!(
        b.js("return typeof window.pwned", json!([])).await,
        "undefined",
        "the prompt's script did not run"
    );
    assert_eq!(
        b.js(
            "return document.querySelectorAll('main script').length",
            json!([])
        )
        .await,
        0
    );
    b.goto(&format!("{admin}/ui/jobs?q=%3Cscript%3E")).await;
    let rows = b
        .js("return Array.from(document.querySelectorAll('#jobs tbody td.prompt')).map(t => t.textContent)", json!([]))
        .await;
    assert_eq!(
        rows,
        json!([XSS]),
        "the prompt filter finds the job, as text"
    );
    assert_eq!(
        b.js("return typeof window.pwned", json!([])).await,
        "undefined"
    );

    // --- The gallery: last frames; a click plays the clip --------------------------------------
    b.goto(&format!("{admin}/ui/gallery?batch=night")).await;
    b.wait_for(
        10,
        "7 last frames",
        "const i = Array.from(document.querySelectorAll('.tile img')); \
         return i.length === 7 && i.every(x => x.complete && x.naturalWidth > 0)",
    )
    .await;
    save_png("ui-gallery.png", &b.screenshot().await);
    b.js("document.querySelector('button.play').click();", json!([]))
        .await;
    b.wait_for(
        20,
        "the clip to play in the player",
        "const v = document.getElementById('player-video'); return v.readyState >= 2 && v.currentTime > 0",
    )
    .await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_dashboard_is_read_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_sim, sim_url) = helpers::start_sim(tmp.path(), SIM);
    let port = free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let env = Env::new(&config(&sim_url, &format!("127.0.0.1:{port}"), None));
    let file = write_jobs(&env, 1);
    env.ok(&["submit", "-f", &file, "--batch", "ro"]);
    let id = env.jobs()[0]["id"].as_str().expect("id").to_string();
    let _serve = env.serve();
    wait_http(&format!("{admin}/healthz")).await;
    let driver = Driver::start().await;
    let b = driver.session(&tmp.path().join("profile")).await;
    b.goto(&format!("{admin}/ui/jobs/{id}")).await;
    assert_eq!(
        b.js(
            "return document.querySelectorAll('button[data-action]').length",
            json!([])
        )
        .await,
        0,
        "no action buttons"
    );
    assert_eq!(
        b.js("return !!document.getElementById('read-only')", json!([]))
            .await,
        true
    );
    b.goto(&format!("{admin}/ui")).await;
    assert_eq!(
        b.js(
            "return document.querySelectorAll('button[data-op]').length",
            json!([])
        )
        .await,
        0,
        "no pause buttons"
    );
    b.goto(&format!("{admin}/ui/jobs/{id}")).await;
    // Even a request that carries some token is refused: actions are off.
    let status = b
        .js_async(
            "const done = arguments[arguments.length - 1]; \
             fetch(arguments[0], {method: 'POST', headers: {'X-Seedq-Token': 'guess'}}).then(r => done(r.status));",
            json!([format!("/ui/jobs/{id}/cancel")]),
        )
        .await;
    assert_eq!(status, 403);
    let state = env.jobs()[0]["state"].as_str().unwrap_or("").to_string();
    assert_ne!(state, "cancelled", "a read-only dashboard changed nothing");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_batch_resumes_from_the_overview_only_with_the_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_sim, sim_url) = helpers::start_sim(tmp.path(), SIM);
    let port = free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let env = Env::new(&config(&sim_url, &format!("127.0.0.1:{port}"), Some(TOKEN)));
    let file = write_jobs(&env, 1);
    env.ok(&["submit", "-f", &file, "--batch", "p"]);
    // Paused before the service starts: its job must stay queued while the service runs.
    env.ok(&["pause", "--batch", "p"]);
    let _serve = env.serve();
    wait_http(&format!("{admin}/healthz")).await;
    let driver = Driver::start().await;
    let b = driver.session(&tmp.path().join("profile")).await;
    b.goto(&format!("{admin}/ui")).await;
    let card = ".batch[data-batch=\"p\"]";
    b.wait_for(
        10,
        "the paused badge on the batch card",
        &format!("return !!document.querySelector('{card} [data-k=paused]')"),
    )
    .await;
    // The card says why its job waits, and the ETA does not pretend.
    let why = b
        .js(
            &format!("return document.querySelector('{card} [data-wait=paused]').textContent"),
            json!([]),
        )
        .await;
    assert_eq!(why, "paused: 1 job waits for seedq resume --batch p");
    assert_eq!(
        b.js(
            &format!("return document.querySelector('{card} [data-k=eta]').textContent"),
            json!([])
        )
        .await,
        "held (see below)"
    );
    // Without the token: refused, still paused, the job still queued.
    b.js(
        &format!(
            "document.getElementById('ov-token').value = ''; \
             document.querySelector('{card} button[data-op=resume]').click();"
        ),
        json!([]),
    )
    .await;
    let status = b
        .wait_for(
            10,
            "the refusal",
            "return document.getElementById('ov-result').dataset.status",
        )
        .await;
    assert_eq!(status, "403", "a resume without the token is refused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.jobs()[0]["state"], "queued", "the paused job was held");
    assert!(env.ok(&["batch", "show", "p"]).contains("paused"));
    // With the token: resumed, and the job runs.
    b.js(
        &format!(
            "document.getElementById('ov-result').dataset.status = ''; \
             document.getElementById('ov-token').value = arguments[0]; \
             document.querySelector('{card} button[data-op=resume]').click();"
        ),
        json!([TOKEN]),
    )
    .await;
    let status = b
        .wait_for(
            10,
            "the resume",
            "return document.getElementById('ov-result').dataset.status",
        )
        .await;
    assert_eq!(status, "200");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.jobs()[0]["state"] == "queued" {
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed job was never submitted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_for(
        10,
        "the badge to go (live update)",
        &format!("return !document.querySelector('{card} [data-k=paused]')"),
    )
    .await;
    b.close().await;
}

/// A batch held by its cap says so with its numbers, the flex TPD is in human units, the keys
/// page shows a key's spend against its cap, and an archived job offers no Cancel or Retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_batches_say_why_and_keys_show_their_spend() {
    let _heavy = HEAVY.lock().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_sim, sim_url) = helpers::start_sim(tmp.path(), SIM);
    let port = free_port();
    let api_port = free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let cfg = config(&sim_url, &format!("127.0.0.1:{port}"), Some(TOKEN)).replace(
        "limits = { concurrency = 1 }",
        "limits = { concurrency = 1, flex_tpd = 250000000000 }",
    ) + &format!("\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n");
    let env = Env::new(&cfg);
    let key = env.ok(&["keys", "create", "webapp", "--max-cost-per-day", "5"]);
    let key = key.trim().to_string();
    assert!(key.starts_with("sq_"), "{key}");
    // A 5 s 480p 1.0 pro job is estimated well under ¥1 and over ¥0.50: a ¥1 cap takes one.
    let file = write_jobs(&env, 3);
    env.ok(&[
        "submit",
        "-f",
        &file,
        "--batch",
        "capped",
        "--max-cost",
        "1",
    ]);
    let flex = env.dir.path().join("flex.jsonl");
    std::fs::write(
        &flex,
        json!({"prompt": "a flex heron", "model": PRO, "resolution": "480p", "duration": 5,
               "service_tier": "flex", "key": "f0"})
        .to_string(),
    )
    .expect("write the flex job");
    env.ok(&["submit", "-f", &flex.display().to_string()]);

    let _serve = env.serve();
    wait_http(&format!("{admin}/healthz")).await;
    wait_http(&format!("http://127.0.0.1:{api_port}/v1/videos")).await;
    let created: Value = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{api_port}/api/v3/contents/generations/tasks"
        ))
        .bearer_auth(&key)
        .json(
            &json!({"model": PRO, "content": [{"type": "text", "text": "a kite"}],
                      "duration": 5, "resolution": "480p"}),
        )
        .send()
        .await
        .expect("create through the Ark door")
        .json()
        .await
        .expect("JSON");
    let door_job = created["id"].as_str().expect("an id").to_string();

    let driver = Driver::start().await;
    let b = driver.session(&tmp.path().join("profile")).await;
    b.goto(&format!("{admin}/ui")).await;
    let card = ".batch[data-batch=\"capped\"]";
    let why = b
        .wait_for(
            90,
            "the capped batch to say why it waits",
            &format!(
                "const w = document.querySelector('{card} [data-wait=budget_batch]'); \
                 const e = document.querySelector('{card} [data-k=eta]'); \
                 return w && e.textContent === 'held (see below)' ? w.textContent : false"
            ),
        )
        .await;
    let why = why.as_str().unwrap_or_default().to_string();
    assert!(
        why.starts_with("held by the batch cap: ¥0.") && why.contains(" of ¥1.00 spent"),
        "{why}"
    );
    assert!(why.contains("2 jobs"), "two of three wait: {why}");
    let tpd = b
        .wait_for(
            60,
            "the flex row's TPD",
            "const t = document.querySelector('tr[data-tier=flex] td[data-k=tpd]'); \
             return t ? t.textContent : false",
        )
        .await;
    let tpd = tpd.as_str().unwrap_or_default().to_string();
    assert!(tpd.ends_with(" / 250 G"), "TPD in human units: {tpd}");
    assert!(!tpd.contains("250000000000"), "{tpd}");

    // The door's job runs, is archived, and its key's spend shows against its cap.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = env.jobs();
        let st = jobs
            .iter()
            .find(|j| j["id"] == door_job.as_str())
            .map(|j| j["state"].as_str().unwrap_or("").to_string());
        if st.as_deref() == Some("archived") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the door's job never archived ({st:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.goto(&format!("{admin}/ui/keys")).await;
    let row = "tr[data-key=\"webapp\"]";
    let spend = b
        .js(
            &format!("return document.querySelector('{row} [data-k=spend]').textContent"),
            json!([]),
        )
        .await;
    let spend = spend.as_str().unwrap_or_default().to_string();
    assert!(
        spend.ends_with(" of ¥5.00") && spend.starts_with('¥') && !spend.starts_with("¥0.00"),
        "the key's spend today against its cap: {spend}"
    );
    assert_eq!(
        b.js(
            &format!("return document.querySelector('{row} [data-k=jobs]').textContent"),
            json!([])
        )
        .await,
        "1 / 1"
    );
    let body = b
        .js("return document.body.textContent", json!([]))
        .await
        .to_string();
    assert!(!body.contains(&key[3..]), "the key is never shown");

    // An archived job offers no Cancel or Retry; a held queued one still offers Cancel.
    b.goto(&format!("{admin}/ui/jobs/{door_job}")).await;
    assert_eq!(
        b.js(
            "return document.querySelectorAll('button[data-action]').length",
            json!([])
        )
        .await,
        0,
        "no buttons that can only fail on an archived job"
    );
    assert_eq!(
        b.js("return !!document.getElementById('no-actions')", json!([]))
            .await,
        true
    );
    let held = env
        .jobs()
        .into_iter()
        .find(|j| j["batch_id"] == "capped" && j["state"] == "queued")
        .expect("a held job");
    b.goto(&format!(
        "{admin}/ui/jobs/{}",
        held["id"].as_str().expect("id")
    ))
    .await;
    assert_eq!(
        b.js(
            "return Array.from(document.querySelectorAll('button[data-action]')).map(b => b.dataset.action)",
            json!([])
        )
        .await,
        json!(["cancel"]),
        "a queued job can be cancelled, not retried"
    );
    b.close().await;
}
