//! The golden corpus (`tests/golden/*.jsonl`, described in `tests/golden/README.md`): request
//! and response bodies from public sources, each with what Ark answered when the source shows
//! it. Every `create` case is POSTed, byte for byte, to one real `seedq sim` and checked, as a
//! job spec, by `seedq submit --check` (one call for the whole corpus). A known verdict must be
//! what both sides say; an `unknown` one must be accepted by both (let Ark answer). Every
//! `task`, `list` and `error` body must parse with the client's wire types.
//!
//! The test prints a summary (cases, sources, agreement) and, when anything disagrees, every
//! disagreeing case with what each side said.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use seedq::ark::wire::{ErrorEnvelope, ListTasksResponse, Task, TaskStatus};

use crate::helpers::{SIM_KEY, SimProc, TestEnv, code_and_err};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

/// Corrections to recorded verdicts (`tests/golden/verdict-overrides.json`): a case whose
/// verdict contradicts a documented rule (tests/golden/README.md, "Overrides"). Each names
/// its reason; the summary lists them.
fn overrides() -> BTreeMap<String, (serde_json::Value, String)> {
    let path = format!("{DIR}/verdict-overrides.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("overrides are JSON");
    v.as_object()
        .expect("an object of case id -> {verdict, reason}")
        .iter()
        .map(|(id, o)| {
            let reason = o["reason"].as_str().expect("a reason").to_string();
            (id.clone(), (o["verdict"].clone(), reason))
        })
        .collect()
}

/// One corpus line.
struct Case {
    id: String,
    source: String,
    region: String,
    kind: String,
    body: serde_json::Value,
    verdict: serde_json::Value,
}

impl Case {
    fn status(&self) -> &str {
        self.verdict["status"].as_str().unwrap_or("")
    }
}

/// Every case of every `*.jsonl` file, checked against the format (tests/golden/README.md).
fn load() -> Vec<Case> {
    let mut files: Vec<_> = std::fs::read_dir(DIR)
        .expect("tests/golden exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {DIR}");
    let mut overrides = overrides();
    let mut cases = Vec::new();
    let mut ids = BTreeSet::new();
    for f in files {
        let stem = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&f).expect("read a corpus file");
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", f.display(), i + 1);
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
            let s = |k: &str| v[k].as_str().map(str::to_string);
            let id = s("id").unwrap_or_else(|| panic!("{at}: no id"));
            assert!(
                id.starts_with(&format!("{stem}-")),
                "{at}: id {id} does not start with the file stem {stem}-"
            );
            assert!(ids.insert(id.clone()), "{at}: id {id} is used twice");
            let kind = s("kind").unwrap_or_default();
            let region = s("region").unwrap_or_default();
            assert!(
                ["create", "task", "list", "error"].contains(&kind.as_str()),
                "{id}: kind {kind:?}"
            );
            assert!(
                ["volcengine", "byteplus"].contains(&region.as_str()),
                "{id}: region {region:?}"
            );
            let verdict = match overrides.remove(&id) {
                Some((verdict, reason)) => {
                    println!("override {id}: {} -> {verdict} ({reason})", v["verdict"]);
                    verdict
                }
                None => v["verdict"].clone(),
            };
            let case = Case {
                id,
                source: s("source").unwrap_or_else(|| panic!("{at}: no source")),
                region,
                kind,
                body: v["body"].clone(),
                verdict,
            };
            let allowed: &[&str] = if case.kind == "create" {
                &["accepted", "rejected", "failed_later", "unknown"]
            } else {
                &["example"]
            };
            assert!(
                allowed.contains(&case.status()),
                "{}: verdict {} for kind {}",
                case.id,
                case.verdict,
                case.kind
            );
            cases.push(case);
        }
    }
    assert!(
        overrides.is_empty(),
        "overrides for cases the corpus does not have: {:?}",
        overrides.keys()
    );
    cases
}

/// The public source a case comes from, so that each is counted once: a repository
/// (`github:owner/name …`), a file found in the public-code search index (`github:(public
/// repo …; search-index file id N)`, by its id), a document (`doc:…`, its first three words
/// without line ranges) or a web page (`web:…`).
fn source_family(source: &str) -> String {
    if let Some(rest) = source.strip_prefix("github:")
        && !rest.starts_with('(')
    {
        let repo: String = rest
            .split(|c: char| c.is_whitespace() || c == '@')
            .next()
            .unwrap_or(rest)
            .split('/')
            .take(2)
            .collect::<Vec<_>>()
            .join("/");
        return format!("github:{repo}");
    }
    if let Some(i) = source.find("file id ") {
        let id: String = source[i + 8..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        return format!("index:{id}");
    }
    if source.starts_with("web:") {
        return source
            .split_whitespace()
            .next()
            .unwrap_or(source)
            .to_string();
    }
    source
        .split_whitespace()
        .take(3)
        .map(|w| {
            let lines = |c: char| c.is_ascii_digit() || c == '-';
            match w.rsplit_once(':') {
                Some((head, tail)) if !tail.is_empty() && tail.chars().all(lines) => head,
                _ => w,
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An HTTP/1.1 exchange with the sim's API (loopback, bearer key): (status, JSON body).
fn api(root: &str, method: &str, path: &str, body: Option<&[u8]>) -> (u16, serde_json::Value) {
    let host = root.strip_prefix("http://").expect("http root");
    let mut s = std::net::TcpStream::connect(host).expect("connect to the sim");
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Bearer {SIM_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let text = String::from_utf8_lossy(&resp);
    let (head, payload) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    (
        status,
        serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// Ark create fields a job spec has under the same name.
const SAME_NAME: [&str; 18] = [
    "model",
    "content",
    "callback_url",
    "return_last_frame",
    "service_tier",
    "execution_expires_after",
    "generate_audio",
    "draft",
    "safety_identifier",
    "tools",
    "resolution",
    "ratio",
    "duration",
    "frames",
    "seed",
    "camera_fixed",
    "watermark",
    "output_format",
];

/// An Ark create body as a seedq job spec: `content` stays `content`, Ark's `priority` is
/// `remote_priority`, `omni_reference_task_type` and the documented fields keep their names,
/// and anything else goes to `extra` (sent as given).
fn to_job_spec(body: &serde_json::Value) -> serde_json::Value {
    let Some(obj) = body.as_object() else {
        return body.clone();
    };
    let mut spec = serde_json::Map::new();
    let mut extra = serde_json::Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "priority" => {
                spec.insert("remote_priority".into(), v.clone());
            }
            "omni_reference_task_type" => {
                spec.insert(k.clone(), v.clone());
            }
            k2 if SAME_NAME.contains(&k2) => {
                spec.insert(k.clone(), v.clone());
            }
            _ => {
                extra.insert(k.clone(), v.clone());
            }
        }
    }
    if !extra.is_empty() {
        spec.insert("extra".into(), serde_json::Value::Object(extra));
    }
    serde_json::Value::Object(spec)
}

/// What one side said about one case.
#[derive(Clone, Debug, PartialEq)]
enum Said {
    Accepted,
    /// (HTTP status or exit code, Ark code if known, param if known, detail)
    Rejected(u16, Option<String>, Option<String>, String),
    /// Accepted, then the task failed with this code.
    FailedLater(String),
    /// Accepted, and the task did not fail (it succeeded or is still going).
    NotFailed(String),
}

impl std::fmt::Display for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Said::Accepted => write!(f, "accepted"),
            Said::Rejected(s, c, p, d) => write!(
                f,
                "rejected {s} code={} param={} ({d})",
                c.as_deref().unwrap_or("-"),
                p.as_deref().unwrap_or("-")
            ),
            Said::FailedLater(c) => write!(f, "accepted, then failed with {c}"),
            Said::NotFailed(s) => write!(f, "accepted, task {s} (did not fail)"),
        }
    }
}

/// Does `said` agree with the corpus verdict? `sim` tells which side (the sim answers with
/// HTTP codes; submit names its param in its own words).
fn agrees(verdict: &serde_json::Value, said: &Said, sim: bool) -> bool {
    let want_code = verdict["code"].as_str();
    let want_param = verdict["param"].as_str();
    match (verdict["status"].as_str().unwrap_or(""), said) {
        ("accepted" | "unknown", Said::Accepted | Said::NotFailed(_)) => true,
        ("failed_later", Said::FailedLater(c)) => Some(c.as_str()) == want_code,
        // seedq submit only validates: a task that fails later is accepted at submit.
        ("failed_later", Said::Accepted) => !sim,
        ("rejected", Said::Rejected(status, code, param, _)) => {
            let status_ok = !sim || Some(u64::from(*status)) == verdict["http"].as_u64();
            let code_ok = want_code.is_none() || code.as_deref() == want_code;
            let param_ok = match want_param {
                None => true,
                Some(p) => param.as_deref().is_some_and(|q| same_param(p, q)),
            };
            status_ok && code_ok && param_ok
        }
        _ => false,
    }
}

/// Ark's param name against one side's: seedq's job spec calls Ark's `priority`
/// `remote_priority`, and a content rule may name the item (`content[1].role` for `content`).
fn same_param(want: &str, got: &str) -> bool {
    let got = if got == "remote_priority" {
        "priority"
    } else {
        got
    };
    // Ark's content params are partly inferred in the corpus (`content`, `content.image_url`,
    // `content[0].type`): any content param matches one about content.
    let head = |p: &str| {
        p.split(['.', '['])
            .next()
            .unwrap_or("")
            .trim_end_matches('s')
            .to_string()
    };
    got == want || (head(want) == "content" && head(got) == "content")
}

/// Polls a created task until it is final (or `limit` passes).
fn final_status(root: &str, id: &str, limit: Duration) -> (String, Option<String>) {
    let start = Instant::now();
    loop {
        let (code, v) = api(
            root,
            "GET",
            &format!("/api/v3/contents/generations/tasks/{id}"),
            None,
        );
        assert_eq!(code, 200, "GET {id}: {v}");
        let status = v["status"].as_str().unwrap_or("").to_string();
        let done = ["succeeded", "failed", "expired", "cancelled"].contains(&status.as_str());
        if done || start.elapsed() > limit {
            return (status, v["error"]["code"].as_str().map(str::to_string));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn golden_corpus_sim_and_submit_agree_with_every_known_verdict() {
    let cases = load();
    let mut creates: Vec<&Case> = cases.iter().filter(|c| c.kind == "create").collect();
    // Tasks that must fail later are created first, so that no queue of accepted tasks
    // stands before them.
    creates.sort_by_key(|c| c.status() != "failed_later");
    let sim = SimProc::start("time_scale = 0.002\nvideo_downscale = 16\nreuse_videos = true\n");

    // The sim: every body exactly as the source sends it.
    let mut sim_said: BTreeMap<&str, Said> = BTreeMap::new();
    let mut to_finish = Vec::new();
    for c in &creates {
        let bytes = serde_json::to_vec(&c.body).expect("serialise");
        let (status, v) = api(
            &sim.root,
            "POST",
            "/api/v3/contents/generations/tasks",
            Some(&bytes),
        );
        let said = if (200..300).contains(&status) {
            let id = v["id"].as_str().expect("a task id").to_string();
            if c.status() == "failed_later" {
                to_finish.push((c.id.as_str(), id));
            }
            Said::Accepted
        } else {
            let e = &v["error"];
            Said::Rejected(
                status,
                e["code"].as_str().map(str::to_string),
                e["param"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(160)
                    .collect(),
            )
        };
        sim_said.insert(c.id.as_str(), said);
    }
    for (case, id) in to_finish {
        let (status, code) = final_status(&sim.root, &id, Duration::from_secs(60));
        let said = match (status.as_str(), code) {
            ("failed", Some(code)) => Said::FailedLater(code),
            (s, _) => Said::NotFailed(s.to_string()),
        };
        sim_said.insert(case, said);
    }

    // seedq submit: the whole corpus in one `submit --check --json` call, one line per case.
    let env = TestEnv::new("");
    let lines: String = creates
        .iter()
        .map(|c| format!("{}\n", to_job_spec(&c.body)))
        .collect();
    let file = env.path().join("golden.jsonl");
    std::fs::write(&file, lines).expect("write the job specs");
    let out = env.cli(&[
        "submit",
        "--check",
        "--json",
        "--file",
        &file.to_string_lossy(),
    ]);
    let (code, err) = code_and_err(&out);
    let verdicts: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("submit --check --json printed no verdicts ({e}): {err}"));
    assert_eq!(verdicts.len(), creates.len(), "one verdict per case");
    let any_bad = verdicts.iter().any(|v| v["ok"] != true);
    assert_eq!(
        code,
        Some(if any_bad { 2 } else { 0 }),
        "submit --check exits 2 exactly when a line is invalid: {err}"
    );
    env.assert_nothing_stored();
    let mut submit_said: BTreeMap<&str, Said> = BTreeMap::new();
    for (c, v) in creates.iter().zip(&verdicts) {
        let said = if v["ok"] == true {
            Said::Accepted
        } else {
            Said::Rejected(
                2,
                v["code"].as_str().map(str::to_string),
                v["param"].as_str().map(str::to_string),
                v["error"].as_str().unwrap_or("").to_string(),
            )
        };
        submit_said.insert(c.id.as_str(), said);
    }

    // The judgement and the summary.
    let sources: BTreeSet<String> = cases.iter().map(|c| source_family(&c.source)).collect();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        *by_status.entry(c.status()).or_default() += 1;
    }
    let regions: BTreeSet<&str> = cases.iter().map(|c| c.region.as_str()).collect();
    let mut failures = Vec::new();
    let (mut known, mut known_ok, mut unknown, mut unknown_ok) = (0, 0, 0, 0);
    for c in &creates {
        let s = &sim_said[c.id.as_str()];
        let q = &submit_said[c.id.as_str()];
        let ok = agrees(&c.verdict, s, true) && agrees(&c.verdict, q, false);
        if c.status() == "unknown" {
            unknown += 1;
            unknown_ok += usize::from(ok);
        } else {
            known += 1;
            known_ok += usize::from(ok);
        }
        if !ok {
            failures.push(format!(
                "  {} [{}] verdict {}\n      sim:    {s}\n      submit: {q}",
                c.id, c.region, c.verdict
            ));
        }
    }
    println!(
        "golden corpus: {} cases ({} create, {} response examples) from {} sources, regions {:?}; verdicts {:?}",
        cases.len(),
        creates.len(),
        cases.len() - creates.len(),
        sources.len(),
        regions,
        by_status
    );
    println!(
        "agreement: known verdicts {known_ok}/{known} (sim and submit both), unknown accepted by both {unknown_ok}/{unknown}"
    );
    assert!(
        failures.is_empty(),
        "{} case(s) disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every response body in the corpus parses with the types seedq's Ark client reads.
#[test]
fn golden_responses_parse_with_the_client_wire_types() {
    let cases = load();
    let mut n = 0;
    for c in cases.iter().filter(|c| c.kind != "create") {
        let text = c.body.to_string();
        match c.kind.as_str() {
            "task" => {
                let t: Task = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: a task body does not parse: {e}", c.id));
                if let Some(id) = c.body["id"].as_str() {
                    assert_eq!(t.id, id, "{}", c.id);
                }
                if let Some(status) = c.body["status"].as_str() {
                    assert_ne!(
                        t.status,
                        TaskStatus::Unknown,
                        "{}: status {status} is a known one",
                        c.id
                    );
                }
                if c.body["status"] == "failed" {
                    let code = t.error.as_ref().map(|e| e.code.as_str());
                    assert_eq!(code, c.body["error"]["code"].as_str(), "{}", c.id);
                }
            }
            "list" => {
                let l: ListTasksResponse = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: a list body does not parse: {e}", c.id));
                assert_eq!(
                    l.items.len(),
                    c.body["items"].as_array().map_or(0, Vec::len),
                    "{}",
                    c.id
                );
            }
            _ => {
                let e: ErrorEnvelope = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: an error body does not parse: {e}", c.id));
                assert_eq!(
                    Some(e.error.code.as_str()),
                    c.body["error"]["code"].as_str(),
                    "{}",
                    c.id
                );
            }
        }
        n += 1;
    }
    println!("golden corpus: {n} response bodies parse with seedq's wire types");
    assert!(n > 0, "the corpus has response examples");
}
