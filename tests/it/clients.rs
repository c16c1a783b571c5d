//! Clients we did not write, end to end against `seedq sim`: the official BytePlus Python SDK,
//! the Vercel AI SDK's ByteDance provider and LiteLLM's `volcengine/` video generation. Each
//! creates a task, polls it and downloads the video as its users do (tests/sdk/*_check.*), and
//! the bytes it got must be the sim's video for that task: fetched again from the task's
//! `content.video_url` and matched with the sim's own SHA-256 of the file.
//!
//! The clients are pinned (tests/sdk/requirements.txt, tests/sdk/node/package-lock.json) and
//! installed by tests/run.sh into target/test-tools; a missing client fails with the set-up
//! command, nothing is skipped. docs/clients.md has the quirks these tests pin down.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};

use crate::helpers::{SIM_KEY, SimProc, no_proxy};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const INSTALL: &str = "run the suite with tests/run.sh, which installs the pinned clients into \
                       target/test-tools (or: pip install -r tests/sdk/requirements.txt into a venv \
                       and set SEEDQ_TEST_PYTHON to its python; cp tests/sdk/node/package*.json \
                       target/test-tools/node/ && npm ci --prefix target/test-tools/node)";

/// The sim the tests of this file share while any of them runs: one process, not one per
/// test. Unknown models are refused as by Ark, so every id used here must be a catalogued one.
fn shared_sim() -> Arc<SimProc> {
    static SIM: Mutex<Weak<SimProc>> = Mutex::new(Weak::new());
    let mut slot = SIM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(sim) = slot.upgrade() {
        return sim;
    }
    let sim = Arc::new(SimProc::start(
        "time_scale = 0.002\nvideo_downscale = 16\naccept_unknown_models = false\n",
    ));
    *slot = Arc::downgrade(&sim);
    sim
}

pub(crate) fn python() -> String {
    std::env::var("SEEDQ_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fails with the set-up command unless `python` can import `module`.
pub(crate) fn require_python_module(module: &str) {
    let py = python();
    match Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
    {
        Err(e) => panic!("{py} is needed for this client test ({e}); {INSTALL}"),
        Ok(o) if !o.status.success() => panic!(
            "`{module}` is not importable by {py}; {INSTALL}\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

pub(crate) fn node() -> String {
    std::env::var("SEEDQ_TEST_NODE").unwrap_or_else(|_| "node".into())
}

/// The folder whose node_modules holds `ai` and `@ai-sdk/bytedance`.
pub(crate) fn node_dir() -> PathBuf {
    std::env::var_os("SEEDQ_TEST_NODE_DIR").map_or_else(
        || PathBuf::from(MANIFEST).join("target/test-tools/node"),
        PathBuf::from,
    )
}

pub(crate) fn require_node_clients() {
    let node = node();
    match Command::new(&node).arg("--version").output() {
        Err(e) => panic!("{node} is needed for the Vercel AI SDK test ({e}); {INSTALL}"),
        Ok(o) if !o.status.success() => panic!("{node} --version failed; {INSTALL}"),
        Ok(_) => {}
    }
    for pkg in ["ai", "@ai-sdk/bytedance"] {
        let p = node_dir()
            .join("node_modules")
            .join(pkg)
            .join("package.json");
        assert!(p.is_file(), "{} is missing; {INSTALL}", p.display());
    }
}

/// Runs a client script; returns its stdout's JSON lines. Fails with its output on error.
pub(crate) fn run_client(c: Command, what: &str) -> Vec<serde_json::Value> {
    let out = no_proxy(c)
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what} printed {l:?}: {e}")))
        .collect()
}

/// A blocking HTTP/1.1 GET on loopback: (status, body). `auth` adds the sim's API key.
fn http_get(url: &str, auth: bool) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    let auth = if auth {
        format!("Authorization: Bearer {SIM_KEY}\r\n")
    } else {
        String::new()
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    let mut body = resp[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&b[..eol]);
        let n =
            usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
    out
}

/// The task as Ark's GET answers it.
pub(crate) fn ark_task(sim: &SimProc, id: &str) -> serde_json::Value {
    let (status, body) = http_get(
        &format!("{}/contents/generations/tasks/{id}", sim.base_url),
        true,
    );
    assert_eq!(
        status,
        200,
        "GET task {id}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("a task as JSON")
}

/// The sim's internal record of task `id` (`/_sim/tasks`).
pub(crate) fn sim_record(sim: &SimProc, id: &str) -> serde_json::Value {
    sim.tasks()
        .into_iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("the sim has no task {id}"))
}

/// The client's downloaded bytes are the sim's video of task `id`: equal to a fresh download
/// of its `content.video_url`, with the SHA-256 and length the sim recorded when it rendered it.
pub(crate) fn assert_same_video(sim: &SimProc, id: &str, got: &[u8], client: &str) {
    let task = ark_task(sim, id);
    assert_eq!(task["status"], "succeeded", "{client}: {task}");
    let url = task["content"]["video_url"].as_str().expect("a video_url");
    let (status, want) = http_get(url, false);
    assert_eq!(status, 200, "GET {url}");
    assert_eq!(&want[4..8], b"ftyp", "the sim serves an MP4");
    assert!(
        got == want.as_slice(),
        "{client}: the downloaded video of {id} ({} bytes) is not the sim's ({} bytes)",
        got.len(),
        want.len()
    );
    let rec = sim_record(sim, id);
    assert_eq!(
        rec["video_sha256"].as_str(),
        Some(hex::encode(Sha256::digest(got)).as_str()),
        "{client}: {id}'s SHA-256 differs from the sim's record"
    );
    assert_eq!(rec["video_size"].as_u64(), Some(got.len() as u64));
}

pub(crate) fn read(path: &serde_json::Value) -> Vec<u8> {
    let p = path.as_str().expect("a path");
    std::fs::read(p).unwrap_or_else(|e| panic!("read {p}: {e}"))
}

/// `tests/sdk/byteplus_check.py` against the Ark API at `base` (the sim's, or seedq's door)
/// with API key `key`: one JSON line per model, in order.
pub(crate) fn byteplus(
    base: &str,
    key: &str,
    out: &std::path::Path,
    models: &[&str],
) -> Vec<serde_json::Value> {
    require_python_module("byteplussdkarkruntime");
    let mut c = Command::new(python());
    c.arg(format!("{MANIFEST}/tests/sdk/byteplus_check.py"))
        .arg(base)
        .arg(key)
        .arg(out)
        .args(models);
    let lines = run_client(c, "byteplus_check.py");
    assert_eq!(lines.len(), models.len(), "{lines:?}");
    lines
}

/// `tests/sdk/vercel_check.mjs` against the Ark API at `base` (the sim's, or seedq's door)
/// with API key `key`: the one JSON line and the downloaded bytes.
pub(crate) fn vercel(
    base: &str,
    key: &str,
    out: &std::path::Path,
    model: &str,
) -> (serde_json::Value, Vec<u8>) {
    require_node_clients();
    let file = out.join(format!("vercel-{model}.mp4"));
    let mut c = Command::new(node());
    c.arg(format!("{MANIFEST}/tests/sdk/vercel_check.mjs"))
        .arg(node_dir())
        .arg(base)
        .arg(key)
        .arg(model)
        .arg(&file)
        // Its warnings go to the console; nothing else reads them.
        .env("AI_SDK_LOG_WARNINGS", "false");
    let mut lines = run_client(c, "vercel_check.mjs");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let bytes = std::fs::read(&file).expect("the Vercel client wrote the video");
    (lines.remove(0), bytes)
}

/// 1080p 16:9 on 1.0 pro renders 1920×1088 (docs/ark-api.md §7, pixel sizes); tokens are
/// W × H × (24 × 5 + 1) / 1024 for 5 s (docs/ark-api.md §10).
const PRO_1080P_5S_TOKENS: u64 = 1920 * 1088 * 121 / 1024;

/// The official BytePlus SDK against the sim with a BytePlus id the catalogue knows
/// (`dreamina-` + the Volcengine 2.0 name): it creates with every unset optional field as JSON
/// null (`frames`, `output_format`, `omni_reference_task_type`, …), polls and downloads the
/// sim's video.
#[test]
fn the_byteplus_sdk_creates_polls_and_downloads_a_byteplus_2_0_task() {
    let sim = shared_sim();
    let out = tempfile::tempdir().expect("tempdir");
    let lines = byteplus(
        &sim.base_url,
        SIM_KEY,
        out.path(),
        &["dreamina-seedance-2-0-260128"],
    );
    let t = &lines[0];
    assert_eq!(t["model"], "dreamina-seedance-2-0-260128", "{t}");
    assert_eq!(t["status"], "succeeded", "{t}");
    let id = t["id"].as_str().expect("an id");
    assert_same_video(&sim, id, &read(&t["video"]), "BytePlus SDK");
    // Rendered by 2.0's rules: its 720p default, 16:9, the 5 s asked for.
    let rec = sim_record(&sim, id);
    assert_eq!(
        (
            rec["nominal_width"].as_u64(),
            rec["nominal_height"].as_u64()
        ),
        (Some(1280), Some(720)),
        "{rec}"
    );
    assert_eq!(t["resolution"], "720p", "{t}");
    assert_eq!(t["duration"], 5, "{t}");
    // The SDK's nulls reach the sim as nulls and are taken as "unset".
    assert!(rec["request"]["frames"].is_null(), "{rec}");
}

/// BytePlus' own ids for 1.x models are the Volcengine names without `doubao-`
/// (`seedance-1-0-pro-250528`: the BytePlus docs' and the Vercel provider's README's id). Such
/// an id must be its model, not an unknown one: known (the sim refuses unknown ids here), 1080p
/// by default as 1.0 pro is, and billed the same tokens as the Volcengine id with the same
/// parameters, through the BytePlus SDK and through the Vercel AI SDK.
#[test]
fn a_byteplus_1_0_id_gets_its_volcengine_twins_default_resolution_and_usage() {
    let sim = shared_sim();
    let out = tempfile::tempdir().expect("tempdir");
    let lines = byteplus(
        &sim.base_url,
        SIM_KEY,
        out.path(),
        &["seedance-1-0-pro-250528", "doubao-seedance-1-0-pro-250528"],
    );
    let (bp, twin) = (&lines[0], &lines[1]);
    assert_eq!(bp["model"], "seedance-1-0-pro-250528", "{bp}");
    assert_eq!(bp["resolution"], "1080p", "1.0 pro's default: {bp}");
    assert_eq!(bp["completion_tokens"], PRO_1080P_5S_TOKENS, "{bp}");
    for k in [
        "resolution",
        "ratio",
        "duration",
        "completion_tokens",
        "total_tokens",
    ] {
        assert_eq!(
            bp[k], twin[k],
            "{k}: BytePlus id {bp} vs Volcengine id {twin}"
        );
    }
    let id = bp["id"].as_str().expect("an id");
    assert_same_video(&sim, id, &read(&bp["video"]), "BytePlus SDK");
    let rec = sim_record(&sim, id);
    assert_eq!(
        (
            rec["nominal_width"].as_u64(),
            rec["nominal_height"].as_u64()
        ),
        (Some(1920), Some(1088)),
        "{rec}"
    );

    // The Vercel provider with the id its README uses: the same default and usage.
    let (v, bytes) = vercel(
        &sim.base_url,
        SIM_KEY,
        out.path(),
        "seedance-1-0-pro-250528",
    );
    let vid = v["id"].as_str().expect("the task id in providerMetadata");
    assert_eq!(v["usage"]["completion_tokens"], PRO_1080P_5S_TOKENS, "{v}");
    assert_same_video(&sim, vid, &bytes, "Vercel AI SDK");
    assert_eq!(ark_task(&sim, vid)["resolution"], "1080p");
}

/// The Vercel AI SDK (`ai` 6 `experimental_generateVideo` with `@ai-sdk/bytedance`): create,
/// poll, download. Its default download refuses the sim's 127.0.0.1 URL (an SSRF guard), so
/// the script passes the documented `download` option; the URL it was handed is the task's.
#[test]
fn the_vercel_ai_sdk_bytedance_provider_creates_polls_and_downloads() {
    let sim = shared_sim();
    let out = tempfile::tempdir().expect("tempdir");
    let (v, bytes) = vercel(
        &sim.base_url,
        SIM_KEY,
        out.path(),
        "dreamina-seedance-2-0-260128",
    );
    let id = v["id"].as_str().expect("the task id in providerMetadata");
    assert_same_video(&sim, id, &bytes, "Vercel AI SDK");
    let task = ark_task(&sim, id);
    // The same file; the query (its signature) is issued afresh on every GET, as Ark's is.
    let path = |u: &serde_json::Value| {
        u.as_str()
            .unwrap_or_default()
            .split('?')
            .next()
            .map(str::to_string)
    };
    let got: Vec<_> = v["downloaded"]
        .as_array()
        .expect("URLs")
        .iter()
        .map(path)
        .collect();
    assert_eq!(got, [path(&task["content"]["video_url"])], "{v}");
    assert_eq!(
        v["usage"]["completion_tokens"],
        task["usage"]["completion_tokens"]
    );
    assert_eq!(task["duration"], 5, "{task}");
    // It sends only what was set: no nulls, no defaults of its own.
    let rec = sim_record(&sim, id);
    let sent: Vec<&str> = rec["request"]
        .as_object()
        .expect("the request")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sent, ["content", "duration", "model"], "{rec}");
}

/// LiteLLM's OpenAI-style video API through its `volcengine/` provider (it has no `bytedance`
/// provider): `video_generation`, `video_status` until completed, `video_content`. One process
/// runs both models, as importing LiteLLM takes seconds.
#[test]
fn litellm_volcengine_video_generation_creates_polls_and_downloads() {
    require_python_module("litellm");
    let sim = shared_sim();
    let out = tempfile::tempdir().expect("tempdir");
    let models = [
        "doubao-seedance-1-0-pro-250528",
        "doubao-seedance-2-0-260128",
    ];
    let mut c = Command::new(python());
    c.arg(format!("{MANIFEST}/tests/sdk/litellm_check.py"))
        .arg(&sim.base_url)
        .arg(SIM_KEY)
        .arg(out.path())
        .args(models);
    let lines = run_client(c, "litellm_check.py");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (l, model) in lines.iter().zip(models) {
        assert_eq!(l["status"], "completed", "{l}");
        let id = l["id"].as_str().expect("Ark's task id");
        assert_same_video(&sim, id, &read(&l["video"]), "LiteLLM");
        let rec = sim_record(&sim, id);
        assert_eq!(rec["model"], model, "{rec}");
        // LiteLLM always sends a duration, OpenAI's default of 4 s when none is asked for,
        // not the model's own default of 5 s.
        assert_eq!(rec["request"]["duration"], 4, "{rec}");
        assert_eq!(l["seconds"], "4", "{l}");
        assert_eq!(
            l["usage"]["total_tokens"],
            ark_task(&sim, id)["usage"]["total_tokens"],
            "{l}"
        );
    }
    // 1.0 pro is not in LiteLLM's price list, so it sends no resolution and the model's 1080p
    // default applies; 2.0 is, and LiteLLM sends its own default "720p" explicitly. The size it
    // reports is the nominal 1920x1080, where Ark renders 1.0 pro at 1920x1088.
    let pro = sim_record(&sim, lines[0]["id"].as_str().unwrap_or_default());
    assert!(pro["request"]["resolution"].is_null(), "{pro}");
    assert_eq!(pro["nominal_height"], 1088, "{pro}");
    assert_eq!(lines[0]["size"], "1920x1080", "{}", lines[0]);
    let v20 = sim_record(&sim, lines[1]["id"].as_str().unwrap_or_default());
    assert_eq!(v20["request"]["resolution"], "720p", "{v20}");
}
