//! Contract tests: a real simulator on 127.0.0.1:0, driven over HTTP with reqwest (and once with
//! the official Python SDK). Each test builds its own simulator with a tiny `time_scale` and a
//! large `video_downscale`, so a "60 s" job takes ~60 ms and renders a thumbnail-sized MP4.
//! Synchronisation is by polling with a deadline, never by a bare sleep that hopes.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::*;
use seedq_ark::wire::{ListTasksResponse, Task, TaskStatus};

/// A real PNG of the given size, one flat colour.
fn png(width: u32, height: u32) -> Vec<u8> {
    seedq_media::encode_png(&seedq_media::RgbImage {
        width,
        height,
        pixels: vec![120; (width * height * 3) as usize],
    })
    .expect("png")
}

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const LITE: &str = "doubao-seedance-1-0-lite-t2v-250428";
const V20: &str = "doubao-seedance-2-0-260128";
const KEY: &str = "sk-sim";
/// Upper bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(15);

fn init_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("seedq=debug")
            .with_test_writer()
            .try_init();
    }
}

/// 1000× faster than real time, 1/16 of the pixels.
fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.001,
        video_downscale: 16,
        ..SimConfig::default()
    }
}

fn text_body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "content": [{"type": "text", "text": prompt}]})
}

fn png_data_url(w: u32, h: u32) -> (String, Vec<u8>) {
    use base64::Engine;
    let bytes = png(w, h);
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    (url, bytes)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

/// A simulator plus a client for it.
struct T {
    handle: SimHandle,
    c: reqwest::Client,
    api: String,
    root: String,
}

impl T {
    async fn new(cfg: SimConfig) -> T {
        init_log();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let handle = start(cfg, listener).await.expect("sim starts");
        let api = handle.base_url();
        let root = format!("http://{}", handle.addr());
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        T {
            handle,
            c,
            api,
            root,
        }
    }

    fn tasks_url(&self) -> String {
        format!("{}/contents/generations/tasks", self.api)
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        self.c
            .post(self.tasks_url())
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .expect("create answered")
    }

    async fn create(&self, body: Value) -> String {
        let r = self.post(&body).await;
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert_eq!(status, StatusCode::OK, "create failed: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    async fn get_raw(&self, id: &str) -> (StatusCode, Value) {
        let r = self
            .c
            .get(format!("{}/{id}", self.tasks_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("get answered");
        (r.status(), r.json().await.expect("json"))
    }

    async fn get(&self, id: &str) -> Task {
        let (s, v) = self.get_raw(id).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).expect("task parses")
    }

    async fn list(&self, query: &str) -> ListTasksResponse {
        let r = self
            .c
            .get(format!("{}?{query}", self.tasks_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("list answered");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("list parses")
    }

    async fn delete(&self, id: &str) -> (StatusCode, Value) {
        let r = self
            .c
            .delete(format!("{}/{id}", self.tasks_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("delete answered");
        (r.status(), r.json().await.expect("json"))
    }

    async fn admin(&self, path: &str) -> Value {
        let r = self
            .c
            .get(format!("{}/_sim/{path}", self.root))
            .send()
            .await
            .expect("admin answered");
        r.json().await.expect("json")
    }

    async fn set_faults(&self, f: Value) {
        let r = self
            .c
            .post(format!("{}/_sim/faults", self.root))
            .json(&f)
            .send()
            .await
            .expect("faults answered");
        assert_eq!(r.status(), StatusCode::OK);
    }

    async fn dump(&self, id: &str) -> Value {
        let all = self.admin("tasks").await;
        all.as_array()
            .and_then(|a| a.iter().find(|t| t["id"] == id).cloned())
            .expect("task in /_sim/tasks")
    }

    async fn wait_status(&self, id: &str, want: TaskStatus) -> Task {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let t = self.get(id).await;
            if t.status == want {
                return t;
            }
            assert!(
                !t.status.is_final() || t.status == want,
                "task {id} ended {:?}, wanted {want:?}: {t:?}",
                t.status
            );
            assert!(
                Instant::now() < deadline,
                "task {id} stuck in {:?}",
                t.status
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn fetch(&self, url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = self.c.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("download answered");
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.bytes().await.expect("body").to_vec())
    }
}

/// Asserts the Ark error envelope, including the request id at the end of the message.
fn assert_error(status: StatusCode, v: &Value, want: StatusCode, code: &str, param: Option<&str>) {
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert_eq!(e["code"], code, "{v}");
    let kind = want.canonical_reason().expect("reason").replace(' ', "");
    assert_eq!(e["type"], kind.as_str());
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
    let msg = e["message"].as_str().expect("message");
    let rid = msg.rsplit("Request id: ").next().expect("has a request id");
    assert!(msg.contains(" Request id: "), "{msg}");
    assert_eq!(rid.len(), 53, "{rid}");
    assert!(rid.starts_with("02"));
    assert!(rid[2..15].bytes().all(|b| b.is_ascii_digit()));
    assert!(
        rid[15..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

#[tokio::test]
async fn create_then_get_follows_the_lifecycle_with_the_documented_shape() {
    let t = T::new(fast()).await;
    let mut body = text_body(PRO, "a cat yawns at the camera");
    body["seed"] = json!(42);
    body["duration"] = json!(5);
    body["resolution"] = json!("720p");
    body["ratio"] = json!("16:9");
    let r =
        t.c.post(t.tasks_url())
            .bearer_auth(KEY)
            .header("X-Client-Request-Id", "20260101120000abcdefghijABCDEFGHIJ")
            .json(&body)
            .send()
            .await
            .expect("create");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-client-request-id"],
        "20260101120000abcdefghijABCDEFGHIJ"
    );
    assert_eq!(r.headers()["x-request-id"].len(), 53);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // cgt-YYYYMMDDHHMMSS-xxxxx
    assert_eq!(id.len(), 24, "{id}");
    assert!(id.starts_with("cgt-") && id.as_bytes()[18] == b'-');
    assert!(id[4..18].bytes().all(|b| b.is_ascii_digit()));

    let (_, early) = t.get_raw(&id).await;
    assert!(
        matches!(early["status"].as_str(), Some("queued" | "running")),
        "{early}"
    );
    assert!(
        early.get("content").is_none() && early.get("usage").is_none(),
        "{early}"
    );

    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    assert_eq!(done.seed, Some(42));
    assert_eq!(done.resolution.as_deref(), Some("720p"));
    assert_eq!(done.ratio.as_deref(), Some("16:9"));
    assert_eq!((done.duration, done.frames), (Some(5), None));
    assert_eq!(done.framespersecond, Some(24));
    assert_eq!(done.service_tier.as_deref(), Some("default"));
    assert_eq!(done.execution_expires_after, Some(172_800));
    let usage = done.usage.expect("usage on success");
    assert_eq!(usage.completion_tokens, 1248 * 704 * 121 / 1024);
    assert_eq!(usage.total_tokens, usage.completion_tokens);
    assert!(done.error.is_none());
    let url = done.content.and_then(|c| c.video_url).expect("video url");
    assert!(url.contains("X-Tos-Algorithm=TOS4-HMAC-SHA256") && url.contains("X-Tos-Signature="));
    // queued → running → succeeded: two transitions, each moves updated_at.
    assert!(
        done.updated_at >= done.created_at + 2,
        "{} {}",
        done.created_at,
        done.updated_at
    );

    let d = t.dump(&id).await;
    let (c, r, f) = (
        d["created_ms"].as_i64().expect("created"),
        d["running_ms"].as_i64().expect("running"),
        d["finished_ms"].as_i64().expect("finished"),
    );
    assert!(c <= r && r <= f);
    // 30 s + 6 s × 121/24 at 1/1000: ~60 ms of generation.
    assert!(f - r >= 55, "generation took {} ms", f - r);
    assert_eq!(d["prompt"], "a cat yawns at the camera");
    assert_eq!(d["request"]["seed"], 42);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn served_video_is_an_mp4_with_the_task_frames_and_downscaled_size() {
    let t = T::new(fast()).await;
    let (first, first_bytes) = png_data_url(640, 360);
    let id = t
        .create(json!({
            "model": PRO,
            "content": [
                {"type": "text", "text": "the sun rises"},
                {"type": "image_url", "image_url": {"url": first}, "role": "first_frame"}
            ],
            "frames": 29,
            "resolution": "720p",
            "return_last_frame": true,
        }))
        .await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    // adaptive (the 1.0 image-to-video default) resolves from the 640×360 image.
    assert_eq!(done.ratio.as_deref(), Some("16:9"));
    assert_eq!((done.duration, done.frames), (None, Some(29)));
    let content = done.content.expect("content");

    let (s, h, mp4) = t.fetch(&content.video_url.expect("video"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "video/mp4");
    assert_eq!(h["content-length"], mp4.len().to_string().as_str());
    let info = seedq_media::probe_bytes(&mp4).expect("a real mp4");
    assert_eq!((info.width, info.height, info.frames), (78, 44, 29));

    let (s, h, last) = t
        .fetch(&content.last_frame_url.expect("last frame"), &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "image/png");
    let img = seedq_media::decode_png(&last).expect("a real png");
    assert_eq!((img.width, img.height), (78, 44));

    let d = t.dump(&id).await;
    assert_eq!(d["video_sha256"], sha256_hex(&mp4));
    assert_eq!(d["last_frame_sha256"], sha256_hex(&last));
    assert_eq!(d["input_image_sha256"][0], sha256_hex(&first_bytes));
    assert_eq!(
        (d["video_width"].as_u64(), d["video_height"].as_u64()),
        (Some(78), Some(44))
    );
    assert_eq!(d["frames"], 29);

    // Ranges: the first 100 bytes, and the rest.
    let url = t
        .get(&id)
        .await
        .content
        .and_then(|c| c.video_url)
        .expect("url");
    let (s, h, part) = t.fetch(&url, &[("Range", "bytes=0-99")]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part, mp4[..100]);
    assert_eq!(
        h["content-range"],
        format!("bytes 0-99/{}", mp4.len()).as_str()
    );
    let (s, _, tail) = t.fetch(&url, &[("Range", "bytes=100-")]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, mp4[100..]);
    let far = format!("bytes={}-", mp4.len());
    let (s, _, _) = t.fetch(&url, &[("Range", far.as_str())]).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn default_duration_video_has_24_fps_frame_count() {
    let t = T::new(SimConfig {
        video_downscale: 32,
        ..fast()
    })
    .await;
    let mut body = text_body(LITE, "waves");
    body["duration"] = json!(2);
    let id = t.create(body).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    let (_, _, mp4) = t
        .fetch(&done.content.and_then(|c| c.video_url).expect("url"), &[])
        .await;
    let info = seedq_media::probe_bytes(&mp4).expect("mp4");
    // lite-t2v defaults to 720p 16:9 (1248×704) → /32 → 38×22; 2 s → 49 frames.
    assert_eq!((info.width, info.height, info.frames), (38, 22, 49));
    t.handle.shutdown().await;
}

#[tokio::test]
async fn reuse_videos_renders_once_per_shape() {
    let t = T::new(SimConfig {
        reuse_videos: true,
        ..fast()
    })
    .await;
    let mut a = text_body(PRO, "one");
    a["seed"] = json!(1);
    let mut b = text_body(PRO, "two");
    b["seed"] = json!(2);
    let mut c = text_body(PRO, "short");
    c["frames"] = json!(29);
    let ids = [t.create(a).await, t.create(b).await, t.create(c).await];
    for id in &ids {
        t.wait_status(id, TaskStatus::Succeeded).await;
    }
    let sha = |d: &Value| d["mp4_sha256"].as_str().expect("sha").to_string();
    let (da, db, dc) = (
        t.dump(&ids[0]).await,
        t.dump(&ids[1]).await,
        t.dump(&ids[2]).await,
    );
    assert_eq!(da["seed"], 1, "the wire seed is still the task's");
    assert_eq!(sha(&da), sha(&db));
    assert_ne!(sha(&db), sha(&dc));
    t.handle.shutdown().await;
}

/// One HTTP/1.1 exchange on an open socket: the status code and the body.
/// Like httpx, the body goes in a second write after a pause, so the server sees the headers
/// before the body arrives.
async fn raw_exchange(sock: &mut tokio::net::TcpStream, request: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let split = request.find("\r\n\r\n").map_or(request.len(), |i| i + 4);
    sock.write_all(&request.as_bytes()[..split])
        .await
        .expect("write");
    if split < request.len() {
        tokio::time::sleep(Duration::from_millis(30)).await;
        sock.write_all(&request.as_bytes()[split..])
            .await
            .expect("write");
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().expect("status");
                return (status, buf[end + 4..end + 4 + len].to_vec());
            }
        }
        let n = sock.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed after {} bytes", buf.len());
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_delete_with_a_body_keeps_the_connection_alive() {
    // The Python SDK sends `Content-Length: 2` and `{}` with DELETE; a server that leaves the
    // body unread closes the connection and breaks the SDK's next call on it.
    let t = T::new(fast()).await;
    let id = t.create(text_body(PRO, "x")).await;
    t.wait_status(&id, TaskStatus::Succeeded).await;
    let mut sock = tokio::net::TcpStream::connect(t.handle.addr())
        .await
        .expect("connect");
    let path = format!("/api/v3/contents/generations/tasks/{id}");
    let del = format!(
        "DELETE {path} HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let (status, body) = raw_exchange(&mut sock, &del).await;
    assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
    let get = format!("GET {path} HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let (status, _) = raw_exchange(&mut sock, &get).await;
    assert_eq!(status, 404, "same connection, task gone");
    // Refused before the handler (401) with a body: the connection survives too.
    let bad = "POST /api/v3/contents/generations/tasks HTTP/1.1\r\nHost: sim\r\nContent-Length: 2\r\n\r\n{}";
    let (status, _) = raw_exchange(&mut sock, bad).await;
    assert_eq!(status, 401);
    let (status, _) = raw_exchange(&mut sock, &get).await;
    assert_eq!(status, 404);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401() {
    let t = T::new(SimConfig {
        api_keys: vec!["k1".into(), "k2".into()],
        ..fast()
    })
    .await;
    let body = text_body(PRO, "x");
    let r =
        t.c.post(t.tasks_url())
            .json(&body)
            .send()
            .await
            .expect("answer");
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::UNAUTHORIZED,
        "AuthenticationError",
        None,
    );
    let r =
        t.c.get(format!("{}/cgt-x", t.tasks_url()))
            .bearer_auth("sk-sim")
            .send()
            .await
            .expect("answer");
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::UNAUTHORIZED,
        "AuthenticationError",
        None,
    );
    let r =
        t.c.post(t.tasks_url())
            .bearer_auth("k2")
            .json(&body)
            .send()
            .await
            .expect("answer");
    assert_eq!(r.status(), StatusCode::OK);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn invalid_and_missing_parameters_are_named() {
    let t = T::new(fast()).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"model": PRO, "content": [{"type":"text","text":"x"}], "duration": 15}),
            "InvalidParameter",
            "duration",
        ),
        (
            json!({"model": PRO, "content": [{"type":"text","text":"x"}], "execution_expires_after": 345_600}),
            "InvalidParameter",
            "execution_expires_after",
        ),
        (
            json!({"model": PRO, "content": [{"type":"text","text":"x"}], "frames": 30}),
            "InvalidParameter",
            "frames",
        ),
        (
            json!({"model": PRO, "content": [{"type":"text","text":"x"}], "service_tier": "fast"}),
            "InvalidParameter",
            "service_tier",
        ),
        (
            json!({"model": PRO, "content": [{"type":"text","text":"x"}], "duration": "five"}),
            "InvalidParameter",
            "duration",
        ),
        (
            json!({"model": PRO, "content": [{"type":"text","text":"x"}, {"type":"image_url","image_url":{"url":"data:image/PNG;base64,AAAA"}}]}),
            "InvalidParameter",
            "content[1].image_url.url",
        ),
        (
            json!({"model": PRO, "content": [{"type":"text","text":"x"}], "seed": 4_294_967_296_i64}),
            "InvalidParameter",
            "seed",
        ),
        // tests/golden comfyui-pr15395-001 (live): 2.5 first frame with an explicit ratio.
        (
            json!({"model": "dreamina-seedance-2-5-260628", "content": [{"type":"text","text":"x"}, {"type":"image_url","image_url":{"url":"https://example.com/f.png"},"role":"first_frame"}], "ratio": "16:9"}),
            "InvalidParameter.TaskTypeConstraint",
            "ratio",
        ),
        (
            json!({"content": [{"type":"text","text":"x"}]}),
            "MissingParameter",
            "model",
        ),
        (json!({"model": PRO}), "MissingParameter", "content"),
        (
            json!({"model": PRO, "content": []}),
            "MissingParameter",
            "content",
        ),
    ];
    for (body, code, param) in cases {
        let r = t.post(&body).await;
        let s = r.status();
        assert_error(
            s,
            &r.json().await.expect("json"),
            StatusCode::BAD_REQUEST,
            code,
            Some(param),
        );
    }
    let r =
        t.c.post(t.tasks_url())
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body("{\"model\": ")
            .send()
            .await
            .expect("answer");
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::BAD_REQUEST,
        "InvalidParameter",
        None,
    );
    let stats = t.admin("stats").await;
    assert_eq!(stats["creates_total"], 0);
    assert_eq!(stats["calls"]["create"]["400"], 12);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn python_style_nulls_are_absent() {
    let t = T::new(fast()).await;
    let id = t
        .create(json!({
            "model": PRO, "content": [{"type": "text", "text": "cat"}],
            "safety_identifier": null, "callback_url": null, "return_last_frame": null,
            "service_tier": null, "execution_expires_after": null, "priority": null,
            "generate_audio": null, "draft": null, "camera_fixed": null, "watermark": null,
            "seed": null, "resolution": null, "ratio": null, "duration": null, "frames": null,
            "tools": null, "output_format": null, "omni_reference_task_type": null
        }))
        .await;
    let task = t.get(&id).await;
    let seed = task.seed.expect("a random seed is echoed");
    assert!((0..=4_294_967_295).contains(&seed));
    assert_eq!(task.resolution.as_deref(), Some("1080p"));
    assert_eq!(task.duration, Some(5));
    t.handle.shutdown().await;
}

#[tokio::test]
async fn newer_models_echo_audio_and_a_seed_and_resolve_auto_duration() {
    let t = T::new(fast()).await;
    let mut body = text_body(V20, "a drone shot");
    body["duration"] = json!(-1);
    // The documented default seed, as the `seedance` CLI sends it (docs/ark-api.md §2.1).
    body["seed"] = json!(-1);
    let id = t.create(body).await;
    let (_, v) = t.get_raw(&id).await;
    // docs/ark-api.md §3.2: a real 2.0 task echoes the seed it used ("seed":1276).
    let seed = v["seed"].as_i64().unwrap_or(-1);
    assert!((0..=4_294_967_295).contains(&seed), "{v}");
    assert_eq!(v["generate_audio"], true);
    assert_eq!(v["draft"], false);
    assert_eq!(v["duration"], 5);
    assert_eq!(v["ratio"], "16:9");
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    assert_eq!(
        done.usage.map(|u| u.total_tokens),
        Some(108_900),
        "docs/ark-api.md §10: 1280×720, 5 s"
    );
    t.handle.shutdown().await;
}

#[tokio::test]
async fn web_search_tools_are_reported_in_tool_usage() {
    let t = T::new(fast()).await;
    let mut body = text_body(V20, "today's weather in Hangzhou, as a weather report");
    body["tools"] = json!([{"type": "web_search"}]);
    let with_tools = t.create(body).await;
    let without = t.create(text_body(V20, "a quiet lake")).await;
    let done = t.wait_status(&with_tools, TaskStatus::Succeeded).await;
    // docs/ark-api.md §3.1: `usage.tool_usage.web_search` on 2.0 with tools.
    let usage = done.usage.expect("usage on success");
    assert_eq!(usage.tool_usage.map(|u| u.web_search), Some(1));
    t.wait_status(&without, TaskStatus::Succeeded).await;
    let (_, v) = t.get_raw(&without).await;
    assert!(v["usage"].get("tool_usage").is_none(), "{v}");
    t.handle.shutdown().await;
}

#[tokio::test]
async fn byteplus_ids_and_1_5_pro_drafts_are_accepted() {
    let t = T::new(SimConfig {
        accept_unknown_models: false,
        ..fast()
    })
    .await;
    // The `seedance` CLI's default model and defaults (seed -1, 720p, adaptive, audio on).
    let mut body = text_body("dreamina-seedance-2-0-260128", "a red kite");
    body["seed"] = json!(-1);
    body["resolution"] = json!("720p");
    body["ratio"] = json!("adaptive");
    body["generate_audio"] = json!(true);
    body["watermark"] = json!(false);
    let id = t.create(body).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    assert_eq!(done.model, "dreamina-seedance-2-0-260128");
    // The alias gets the 2.0 rules: no flex.
    let mut flex = text_body("dreamina-seedance-2-0-260128", "x");
    flex["service_tier"] = json!("flex");
    let r = t.post(&flex).await;
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::BAD_REQUEST,
        "InvalidParameter",
        Some("service_tier"),
    );
    // 1.5 pro: a draft, then a final render from it (docs/ark-api.md §2.1 `draft`, §2.2).
    let mut draft = text_body("doubao-seedance-1-5-pro-251215", "a fox in snow");
    draft["draft"] = json!(true);
    let draft_id = t.create(draft).await;
    t.wait_status(&draft_id, TaskStatus::Succeeded).await;
    let (_, v) = t.get_raw(&draft_id).await;
    assert_eq!(v["resolution"], "480p", "{v}");
    assert_eq!(v["draft"], true, "{v}");
    let final_id = t
        .create(json!({
            "model": "doubao-seedance-1-5-pro-251215",
            "content": [{"type": "draft_task", "draft_task": {"id": draft_id}}]
        }))
        .await;
    let (_, v) = t.get_raw(&final_id).await;
    assert_eq!(v["draft_task_id"], json!(draft_id), "{v}");
    t.handle.shutdown().await;
}

#[tokio::test]
async fn unknown_models_are_accepted_or_refused_by_config() {
    let t = T::new(fast()).await;
    let id = t.create(text_body("ep-20250101-abcde", "x")).await;
    t.wait_status(&id, TaskStatus::Succeeded).await;
    t.handle.shutdown().await;

    let t = T::new(SimConfig {
        accept_unknown_models: false,
        ..fast()
    })
    .await;
    let r = t.post(&text_body("ep-20250101-abcde", "x")).await;
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::NOT_FOUND,
        "InvalidEndpointOrModel.NotFound",
        Some("model"),
    );
    let (s, v) = t.get_raw("cgt-20250101000000-zzzzz").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "ResourceNotFound", None);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn list_filters_pages_and_repeated_task_ids() {
    let mut cfg = fast();
    // Nothing finishes during the test: every task stays queued or running.
    cfg.generation.base = Duration::from_secs(3600);
    let t = T::new(cfg).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(t.create(text_body(PRO, &format!("pro {i}"))).await);
    }
    let mut flex = text_body(LITE, "lite flex");
    flex["service_tier"] = json!("flex");
    let flex_id = t.create(flex).await;
    ids.push(flex_id.clone());

    // Without `filter.service_tier` only the default tier is listed (docs/ark-api.md §14).
    let all = t.list("").await;
    assert_eq!(all.total, 4);
    let newest_first: Vec<&str> = all.items.iter().map(|i| i.id.as_str()).collect();
    let mut expected: Vec<&str> = ids[..4].iter().map(String::as_str).collect();
    expected.reverse();
    assert_eq!(newest_first, expected);
    assert_eq!(t.list("filter.service_tier=default").await.total, 4);

    let page = t.list("page_size=2&page_num=2").await;
    assert_eq!(page.total, 4);
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].id, ids[1]);

    let picked = t
        .list(&format!(
            "filter.task_ids={}&filter.task_ids={}&filter.task_ids=cgt-nope",
            ids[0], ids[3]
        ))
        .await;
    assert_eq!(picked.total, 2);
    let got: Vec<&str> = picked.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(got, vec![ids[3].as_str(), ids[0].as_str()]);

    assert_eq!(t.list(&format!("filter.model={LITE}")).await.total, 0);
    let by_model = t
        .list(&format!("filter.model={LITE}&filter.service_tier=flex"))
        .await;
    assert_eq!(by_model.total, 1);
    assert_eq!(by_model.items[0].id, flex_id);
    let by_tier = t.list("filter.service_tier=flex").await;
    assert_eq!(by_tier.total, 1);
    assert_eq!(by_tier.items[0].service_tier.as_deref(), Some("flex"));

    // Wait for the scheduler, then the status filter splits running from the rest.
    let deadline = Instant::now() + PATIENCE;
    while t.list("filter.status=queued").await.total > 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(t.list("filter.status=running").await.total, 4);
    let q = format!(
        "filter.task_ids={0}&filter.task_ids={0}&filter.task_ids={1}&filter.status=running&page_size=1",
        ids[0], ids[1]
    );
    let dup = t.list(&q).await;
    assert_eq!(dup.total, 2, "a repeated id counts once");
    assert_eq!(dup.items.len(), 1);
    assert_eq!(dup.items[0].id, ids[1]);
    assert_eq!(t.list("filter.status=succeeded").await.total, 0);
    let r =
        t.c.get(format!("{}?page_size=0", t.tasks_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("answer");
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::BAD_REQUEST,
        "InvalidParameter",
        Some("page_size"),
    );
    let stats = t.admin("stats").await;
    assert!(
        stats["status_calls_total"].as_u64().unwrap_or(0) >= 9,
        "{stats}"
    );
    t.handle.shutdown().await;
}

#[tokio::test]
async fn rpm_limit_answers_429_per_model() {
    let mut cfg = fast();
    // A 6 s window (60 s × 0.1): the three creates surely land inside it.
    cfg.time_scale = 0.1;
    cfg.models.insert(
        PRO.into(),
        ModelSim {
            rpm: Some(2),
            ..ModelSim::default()
        },
    );
    let t = T::new(cfg).await;
    t.create(text_body(PRO, "1")).await;
    t.create(text_body(PRO, "2")).await;
    let r = t.post(&text_body(PRO, "3")).await;
    let s = r.status();
    assert!(r.headers().get("retry-after").is_none());
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::TOO_MANY_REQUESTS,
        "ModelAccountRpmRateLimitExceeded",
        None,
    );
    // Another model has its own budget.
    t.create(text_body(LITE, "4")).await;
    let stats = t.admin("stats").await;
    assert_eq!(stats["rate_limited_total"], 1);
    assert_eq!(stats["creates_total"], 3);
    assert_eq!(stats["creates_by_model"][PRO], 2);
    assert_eq!(stats["calls"]["create"]["429"], 1);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn flex_has_no_rpm_nor_concurrency_only_its_pool_and_tpd() {
    let mut cfg = fast();
    cfg.time_scale = 0.1;
    cfg.generation.base = Duration::from_secs(3600);
    let (w, h) =
        seedq_ark::catalogue::pixel_size(seedq_ark::catalogue::PixelTable::V1, "480p", "16:9")
            .expect("480p");
    let one = u64::try_from(seedq_ark::catalogue::tokens(
        w,
        h,
        seedq_ark::catalogue::frames_for_duration(5),
    ))
    .expect("tokens");
    cfg.models.insert(
        LITE.into(),
        ModelSim {
            rpm: Some(2),
            concurrency: Some(1),
            flex_pool: Some(3),
            flex_tpd: Some(5 * one),
            ..ModelSim::default()
        },
    );
    let t = T::new(cfg).await;
    let flex = |i: usize| {
        let mut b = text_body(LITE, &format!("flex {i}"));
        b["service_tier"] = json!("flex");
        b["resolution"] = json!("480p");
        b["ratio"] = json!("16:9");
        b["duration"] = json!(5);
        b
    };
    // Five flex creates inside one RPM window of 2, with a default concurrency of 1: all
    // accepted (docs/ark-api.md §6.2 D3), three running in the pool, two queued.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(t.create(flex(i)).await);
    }
    t.wait_status(&ids[2], TaskStatus::Running).await;
    assert_eq!(t.get(&ids[4]).await.status, TaskStatus::Queued);
    // The default tier still has its own slot and RPM.
    let d = t.create(text_body(LITE, "default")).await;
    t.wait_status(&d, TaskStatus::Running).await;
    let stats = t.admin("stats").await;
    assert_eq!(stats["max_flex_running_by_model"][LITE], 3, "{stats}");
    assert_eq!(stats["max_concurrency_by_model"][LITE], 1, "{stats}");
    // The sixth flex task would pass the day's TPD: refused, and not counted.
    let r = t.post(&flex(5)).await;
    let s = r.status();
    let v: Value = r.json().await.expect("json");
    assert_error(s, &v, StatusCode::TOO_MANY_REQUESTS, "QuotaExceeded", None);
    assert!(v.to_string().contains("tokens per day (TPD)"), "{v}");
    let stats = t.admin("stats").await;
    let days = stats["flex_tokens_by_day"][LITE].as_object().expect("days");
    assert_eq!(days.len(), 1);
    assert_eq!(days.values().next().and_then(Value::as_u64), Some(5 * one));
    t.handle.shutdown().await;
}

#[tokio::test]
async fn seedance_2_4k_has_its_own_rpm_and_concurrency() {
    let mut cfg = fast();
    // A 6 s RPM window; hour-long generations keep the running ones running.
    cfg.time_scale = 0.1;
    cfg.generation.base = Duration::from_secs(3600);
    let t = T::new(cfg).await;
    let body = |res: &str, i: usize| {
        let mut b = text_body(V20, &format!("{res} {i}"));
        b["resolution"] = json!(res);
        b
    };
    // docs/ark-api.md §6.2 D3: 4k has RPM 15 and concurrency 1 of its own.
    let mut k = Vec::new();
    for i in 0..15 {
        k.push(t.create(body("4k", i)).await);
    }
    t.wait_status(&k[0], TaskStatus::Running).await;
    let r = t.post(&body("4k", 15)).await;
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::TOO_MANY_REQUESTS,
        "ModelAccountRpmRateLimitExceeded",
        None,
    );
    // 720p is not held by 4k's limits: it runs beside the one 4k task.
    let p = t.create(body("720p", 0)).await;
    t.wait_status(&p, TaskStatus::Running).await;
    assert_eq!(t.get(&k[1]).await.status, TaskStatus::Queued);
    let stats = t.admin("stats").await;
    assert_eq!(stats["running_by_model"][V20], 2, "{stats}");
    t.handle.shutdown().await;
}

#[tokio::test]
async fn too_many_queued_tasks_is_quota_exceeded() {
    let mut cfg = fast();
    cfg.max_queued = 2;
    cfg.generation.base = Duration::from_secs(3600);
    cfg.models.insert(
        PRO.into(),
        ModelSim {
            concurrency: Some(1),
            ..ModelSim::default()
        },
    );
    let t = T::new(cfg).await;
    let first = t.create(text_body(PRO, "runs")).await;
    t.wait_status(&first, TaskStatus::Running).await;
    t.create(text_body(PRO, "queued 1")).await;
    t.create(text_body(PRO, "queued 2")).await;
    let r = t.post(&text_body(LITE, "one too many")).await;
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::TOO_MANY_REQUESTS,
        "QuotaExceeded",
        None,
    );
    assert_eq!(t.list("filter.status=queued").await.total, 2);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn concurrency_cap_keeps_extra_tasks_queued() {
    let mut cfg = fast();
    cfg.models.insert(
        PRO.into(),
        ModelSim {
            concurrency: Some(2),
            ..ModelSim::default()
        },
    );
    let t = T::new(cfg).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut body = text_body(PRO, &format!("job {i}"));
        body["resolution"] = json!("480p");
        ids.push(t.create(body).await);
    }
    for id in &ids {
        t.wait_status(id, TaskStatus::Succeeded).await;
    }
    let stats = t.admin("stats").await;
    assert_eq!(stats["max_concurrency_by_model"][PRO], 2, "{stats}");
    // The intervals agree: never more than two running at any start instant.
    let dumps = t.admin("tasks").await;
    let spans: Vec<(i64, i64)> = dumps
        .as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["running_ms"].as_i64().expect("r"),
                d["finished_ms"].as_i64().expect("f"),
            )
        })
        .collect();
    for (s, _) in &spans {
        let overlapping = spans.iter().filter(|(a, b)| a <= s && s < b).count();
        assert!(overlapping <= 2, "{spans:?}");
    }
    t.handle.shutdown().await;
}

#[tokio::test]
async fn flex_tasks_expire_when_running_or_queued_too_long() {
    let mut cfg = fast();
    // 3600 s expiry → 360 ms; a flex lite job takes (30 + 30) s × 1000 → 6 s.
    cfg.time_scale = 0.0001;
    cfg.flex_factor = 1000.0;
    // pro: one default slot and a flex pool of one, each held by a job that outlives the
    // test (flex has its own pool: a default job cannot keep a flex one queued).
    cfg.models.insert(
        PRO.into(),
        ModelSim {
            concurrency: Some(1),
            flex_pool: Some(1),
            generation: Some(Timing {
                base: Duration::from_secs(1_000_000),
                per_video_second: Duration::ZERO,
            }),
            ..ModelSim::default()
        },
    );
    let t = T::new(cfg).await;
    let hog = t.create(text_body(PRO, "holds the slot")).await;
    t.wait_status(&hog, TaskStatus::Running).await;
    let flex = |model: &str| {
        let mut body = text_body(model, "slow");
        body["service_tier"] = json!("flex");
        body["execution_expires_after"] = json!(3600);
        body
    };
    let mut long = flex(PRO);
    long["execution_expires_after"] = json!(259_200);
    let flex_hog = t.create(long).await;
    t.wait_status(&flex_hog, TaskStatus::Running).await;
    let queued = t.create(flex(PRO)).await;
    let running = t.create(flex(LITE)).await;
    t.wait_status(&running, TaskStatus::Running).await;
    assert_eq!(t.get(&queued).await.status, TaskStatus::Queued);
    let a = t.wait_status(&running, TaskStatus::Expired).await;
    let b = t.wait_status(&queued, TaskStatus::Expired).await;
    assert!(a.content.is_none() && a.usage.is_none());
    assert_eq!(b.service_tier.as_deref(), Some("flex"));
    assert_eq!(b.execution_expires_after, Some(3600));
    let d = t.dump(&queued).await;
    assert!(d["running_ms"].is_null(), "never started: {d}");
    let d = t.dump(&running).await;
    let ran = d["finished_ms"].as_i64().expect("f") - d["created_ms"].as_i64().expect("c");
    assert!(
        (340..2000).contains(&ran),
        "expired after {ran} ms, expected ~360"
    );
    assert_eq!(t.get(&hog).await.status, TaskStatus::Running);
    t.handle.shutdown().await;
}

/// One model with a single slot and hour-long jobs: one running task, the rest queued.
fn stuck_config(semantics: DeleteSemantics) -> SimConfig {
    let mut cfg = fast();
    cfg.delete_semantics = semantics;
    cfg.models.insert(
        PRO.into(),
        ModelSim {
            concurrency: Some(1),
            generation: Some(Timing {
                base: Duration::from_secs(3600),
                per_video_second: Duration::ZERO,
            }),
            ..ModelSim::default()
        },
    );
    cfg
}

#[tokio::test]
async fn delete_version_a_cancels_queued_refuses_running_and_removes_finished() {
    let t = T::new(stuck_config(DeleteSemantics::A)).await;
    let running = t.create(text_body(PRO, "running")).await;
    t.wait_status(&running, TaskStatus::Running).await;
    let queued = t.create(text_body(PRO, "queued")).await;
    let finished = t.create(text_body(LITE, "finishes")).await;
    t.wait_status(&finished, TaskStatus::Succeeded).await;

    let (s, v) = t.delete(&queued).await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    let c = t.get(&queued).await;
    assert_eq!(c.status, TaskStatus::Cancelled);
    let (s, v) = t.delete(&queued).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "InvalidParameter", None);

    // 409 in both regions (docs/ark-api.md §14).
    let (s, v) = t.delete(&running).await;
    assert_error(
        s,
        &v,
        StatusCode::CONFLICT,
        "InvalidAction.RunningTaskDeletion",
        None,
    );
    assert_eq!(t.get(&running).await.status, TaskStatus::Running);

    let (s, _) = t.delete(&finished).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = t.get_raw(&finished).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "ResourceNotFound", None);
    let (s, v) = t.delete("cgt-20250101000000-zzzzz").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "ResourceNotFound", None);
    assert_eq!(t.list("").await.total, 2);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn delete_version_b_cancels_running_and_frees_the_slot() {
    let t = T::new(stuck_config(DeleteSemantics::B)).await;
    let running = t.create(text_body(PRO, "running")).await;
    t.wait_status(&running, TaskStatus::Running).await;
    let queued = t.create(text_body(PRO, "queued")).await;
    let (s, _) = t.delete(&running).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(t.get(&running).await.status, TaskStatus::Cancelled);
    t.wait_status(&queued, TaskStatus::Running).await;
    t.handle.shutdown().await;
}

#[tokio::test]
async fn records_vanish_after_retention() {
    let mut cfg = fast();
    cfg.retention = Duration::from_secs(100); // 100 ms at 1/1000
    let t = T::new(cfg).await;
    let id = t.create(text_body(PRO, "x")).await;
    t.wait_status(&id, TaskStatus::Succeeded).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (s, _) = t.get_raw(&id).await;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.list("").await.total, 0);
    t.handle.shutdown().await;
}

/// A callback receiver: records every POST body; answers 500 to the first `fail_first`
/// `succeeded` deliveries, or with `slow`, answers them only after 400 ms.
async fn receiver(
    fail_first: usize,
    slow: bool,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let fails = Arc::new(std::sync::atomic::AtomicUsize::new(fail_first));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/cb",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(v): axum::Json<Value>| {
                let s = s.clone();
                let fails = fails.clone();
                async move {
                    assert!(headers.get("authorization").is_none());
                    s.lock().expect("lock").push(v.clone());
                    let fail = v["status"] == "succeeded"
                        && fails
                            .fetch_update(
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                                |n| n.checked_sub(1),
                            )
                            .is_ok();
                    if fail && slow {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        axum::http::StatusCode::OK
                    } else if fail {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/cb", l.local_addr().expect("addr"));
    let h = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, seen, h)
}

#[tokio::test]
async fn callbacks_report_every_status_in_order_and_retry_the_final_one() {
    let (url, seen, rx) = receiver(2, false).await;
    let t = T::new(fast()).await;
    let mut body = text_body(PRO, "with callback");
    body["callback_url"] = json!(url);
    let id = t.create(body).await;
    t.wait_status(&id, TaskStatus::Succeeded).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = t.admin("stats").await;
        if stats["callbacks_delivered"] == 3 {
            assert_eq!(stats["callback_attempts"], 5, "{stats}");
            assert_eq!(stats["callbacks_failed"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = seen.lock().expect("lock").clone();
    let statuses: Vec<&str> = got.iter().filter_map(|v| v["status"].as_str()).collect();
    assert_eq!(
        statuses,
        vec!["queued", "running", "succeeded", "succeeded", "succeeded"]
    );
    let last: Task = serde_json::from_value(got[4].clone()).expect("a task");
    assert_eq!(last.id, id);
    assert!(last.content.and_then(|c| c.video_url).is_some());
    assert!(last.usage.is_some());
    t.handle.shutdown().await;
    rx.abort();
}

#[tokio::test]
async fn a_callback_that_always_fails_is_given_up_after_four_attempts() {
    let (url, seen, rx) = receiver(usize::MAX, false).await;
    let t = T::new(fast()).await;
    let mut body = text_body(PRO, "callback fails");
    body["callback_url"] = json!(url);
    let id = t.create(body).await;
    t.wait_status(&id, TaskStatus::Succeeded).await;
    let deadline = Instant::now() + PATIENCE;
    while t.admin("stats").await["callbacks_failed"] != 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["status"] == "succeeded")
        .count();
    assert_eq!(n, 4, "1 attempt + 3 retries");
    t.handle.shutdown().await;
    rx.abort();
}

#[tokio::test]
async fn a_callback_that_times_out_is_retried() {
    let (url, _seen, rx) = receiver(1, true).await;
    let mut cfg = fast();
    cfg.callback_timeout = Duration::from_millis(100);
    let t = T::new(cfg).await;
    let mut body = text_body(PRO, "slow receiver");
    body["callback_url"] = json!(url);
    let id = t.create(body).await;
    t.wait_status(&id, TaskStatus::Succeeded).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = t.admin("stats").await;
        if stats["callbacks_delivered"] == 3 {
            assert_eq!(
                stats["callback_attempts"], 4,
                "the timed-out one was resent: {stats}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.handle.shutdown().await;
    rx.abort();
}

#[tokio::test]
async fn video_urls_expire_and_a_fresh_get_issues_a_working_one() {
    let mut cfg = fast();
    cfg.url_ttl = Duration::from_secs(200); // 200 ms at 1/1000
    let t = T::new(cfg).await;
    let id = t.create(text_body(PRO, "x")).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    let url = done.content.and_then(|c| c.video_url).expect("url");
    assert!(url.contains("X-Tos-Expires=200"), "{url}");
    let (s, _, _) = t.fetch(&url, &[]).await;
    assert_eq!(s, StatusCode::OK);

    let forged = url.replace("X-Tos-Expires=200", "X-Tos-Expires=99999");
    let (s, _, body) = t.fetch(&forged, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["Code"], "SignatureDoesNotMatch");

    tokio::time::sleep(Duration::from_millis(250)).await;
    let (s, _, body) = t.fetch(&url, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["Code"], "AccessDenied");

    let fresh = t
        .get(&id)
        .await
        .content
        .and_then(|c| c.video_url)
        .expect("url");
    assert_ne!(fresh, url);
    let (s, _, mp4) = t.fetch(&fresh, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(seedq_media::probe_bytes(&mp4).is_ok());
    t.handle.shutdown().await;
}

#[tokio::test]
async fn padded_videos_have_the_exact_size_and_still_probe() {
    const SIZE: u64 = 300_000;
    let mut cfg = fast();
    cfg.video_pad_to_bytes = Some(SIZE);
    let t = T::new(cfg).await;
    let mut body = text_body(PRO, "padded");
    body["resolution"] = json!("720p");
    let id = t.create(body).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    let (s, h, file) = t
        .fetch(&done.content.and_then(|c| c.video_url).expect("url"), &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(file.len() as u64, SIZE);
    assert_eq!(h["content-length"], SIZE.to_string().as_str());
    let info = seedq_media::probe_bytes(&file).expect("padded file still parses");
    assert_eq!((info.width, info.height, info.frames), (78, 44, 121));
    let d = t.dump(&id).await;
    assert_eq!(d["video_size"], SIZE);
    assert!(d["video_sha256"].is_null());
    let mp4_len = file
        .windows(8)
        .rposition(|w| &w[4..] == b"free")
        .expect("a free box");
    assert_eq!(d["mp4_sha256"], sha256_hex(&file[..mp4_len]));
    assert_eq!(
        &file[mp4_len..mp4_len + 4],
        &u32::try_from(SIZE - mp4_len as u64)
            .expect("fits")
            .to_be_bytes()
    );
    let stats = t.admin("stats").await;
    assert!(stats["bytes_served"].as_u64().unwrap_or(0) >= SIZE);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn padding_beyond_4_gib_uses_a_largesize_header_without_allocating_it() {
    const SIZE: u64 = 5 << 30;
    let mut cfg = fast();
    cfg.video_pad_to_bytes = Some(SIZE);
    let t = T::new(cfg).await;
    let id = t.create(text_body(PRO, "huge")).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    let url = done.content.and_then(|c| c.video_url).expect("url");
    let head = t.c.head(&url).send().await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], SIZE.to_string().as_str());
    let served = t.dump(&id).await["video_size"].as_u64().expect("size");
    assert_eq!(served, SIZE);
    // Find the MP4's end from its own boxes: ftyp, moov, mdat in the first part of the file.
    let (_, _, start) = t.fetch(&url, &[("Range", "bytes=0-65535")]).await;
    let mut pos = 0usize;
    while pos + 8 <= start.len() && &start[pos + 4..pos + 8] != b"free" {
        let size = u32::from_be_bytes([start[pos], start[pos + 1], start[pos + 2], start[pos + 3]]);
        pos += size as usize;
    }
    let range = format!("bytes={pos}-{}", pos + 15);
    let (s, h, header) = t.fetch(&url, &[("Range", range.as_str())]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        h["content-range"],
        format!("bytes {pos}-{}/{SIZE}", pos + 15).as_str()
    );
    assert_eq!(&header[..8], b"\0\0\0\x01free");
    assert_eq!(&header[8..16], &(SIZE - pos as u64).to_be_bytes());
    // The last byte is there too.
    let (s, _, tail) = t.fetch(&url, &[("Range", "bytes=-1")]).await;
    assert_eq!((s, tail), (StatusCode::PARTIAL_CONTENT, vec![0u8]));
    t.handle.shutdown().await;
}

#[tokio::test]
async fn drop_after_create_creates_the_task_but_sends_no_answer() {
    let t = T::new(fast()).await;
    t.set_faults(json!({"drop_after_create": 1})).await;
    let r =
        t.c.post(t.tasks_url())
            .bearer_auth(KEY)
            .json(&text_body(PRO, "ambiguous"))
            .send()
            .await;
    let e = r.expect_err("no response");
    assert!(!e.is_status() && !e.is_timeout(), "{e:?}");
    let list = t.list(&format!("filter.model={PRO}")).await;
    assert_eq!(
        list.total, 1,
        "the task exists although the client saw an error"
    );
    assert_eq!(t.admin("faults").await["drop_after_create"], 0);
    // The next create is answered normally.
    t.create(text_body(PRO, "normal")).await;
    let stats = t.admin("stats").await;
    assert_eq!(stats["calls"]["create"]["dropped"], 1);
    assert_eq!(stats["creates_total"], 2);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn injected_errors_bursts_and_corrupt_bodies() {
    let t = T::new(fast()).await;
    let id = t.create(text_body(PRO, "x")).await;

    t.set_faults(json!({"error_rate": {"get": 1.0}})).await;
    let (s, v) = t.get_raw(&id).await;
    assert_error(
        s,
        &v,
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServiceError",
        None,
    );
    assert_eq!(t.list("").await.total, 1, "other routes unaffected");

    t.set_faults(json!({"rate_limit_burst": 2, "retry_after_secs": 3}))
        .await;
    for _ in 0..2 {
        let r = t.post(&text_body(PRO, "y")).await;
        assert_eq!(r.headers()["retry-after"], "3");
        let s = r.status();
        assert_error(
            s,
            &r.json().await.expect("json"),
            StatusCode::TOO_MANY_REQUESTS,
            "ModelAccountRpmRateLimitExceeded",
            None,
        );
    }
    t.create(text_body(PRO, "z")).await;

    t.set_faults(json!({"malformed_json_rate": 1.0})).await;
    let r =
        t.c.get(format!("{}/{id}", t.tasks_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("answer");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    t.set_faults(json!({"latency_ms": {"get": 120}})).await;
    let started = Instant::now();
    assert_eq!(t.get(&id).await.id, id);
    assert!(started.elapsed() >= Duration::from_millis(120));
    assert_eq!(t.admin("faults").await["latency_ms"]["get"], 120);

    t.set_faults(json!({})).await;
    assert_eq!(t.get(&id).await.id, id);
    let stats = t.admin("stats").await;
    assert_eq!(stats["calls"]["get"]["500"], 1);
    assert_eq!(stats["rate_limited_total"], 2);
    assert_eq!(stats["creates_total"], 2);
    let bad =
        t.c.post(format!("{}/_sim/faults", t.root))
            .json(&json!({"fail_transient_rate": 2.0}))
            .send()
            .await
            .expect("answer");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    t.handle.shutdown().await;
}

#[tokio::test]
async fn truncated_and_throttled_downloads() {
    let t = T::new(fast()).await;
    let id = t.create(text_body(PRO, "x")).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    let url = done.content.and_then(|c| c.video_url).expect("url");
    let (_, _, full) = t.fetch(&url, &[]).await;

    t.set_faults(json!({"truncate_download_rate": 1.0})).await;
    let r = t.c.get(&url).send().await.expect("headers arrive");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.content_length(), Some(full.len() as u64));
    assert!(
        r.bytes().await.is_err(),
        "the body stops short of Content-Length"
    );

    let rate = 40_000u64;
    t.set_faults(json!({"download_bytes_per_sec": rate})).await;
    let started = Instant::now();
    let (s, _, slow) = t.fetch(&url, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(slow, full);
    let min = Duration::from_secs_f64(full.len() as f64 / rate as f64 * 0.8);
    assert!(
        started.elapsed() >= min,
        "{:?} < {min:?}",
        started.elapsed()
    );
    t.handle.shutdown().await;
}

#[tokio::test]
async fn moderation_and_transient_failures() {
    let mut cfg = fast();
    cfg.faults.input_moderation_words = vec!["Forbidden".into()];
    cfg.faults.output_moderation_words = vec!["mickey".into()];
    let t = T::new(cfg).await;
    let r = t.post(&text_body(PRO, "a forbidden scene")).await;
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::BAD_REQUEST,
        "InputTextSensitiveContentDetected",
        None,
    );

    let id = t.create(text_body(PRO, "Mickey waves")).await;
    let failed = t.wait_status(&id, TaskStatus::Failed).await;
    let e = failed.error.expect("error");
    assert_eq!(
        e.code,
        "OutputVideoSensitiveContentDetected.PolicyViolation"
    );
    assert!(!e.message.is_empty());
    assert!(failed.content.is_none() && failed.usage.is_none());

    t.set_faults(json!({"fail_transient_rate": 1.0})).await;
    let id = t.create(text_body(PRO, "fine")).await;
    let failed = t.wait_status(&id, TaskStatus::Failed).await;
    assert_eq!(
        failed.error.map(|e| e.code).as_deref(),
        Some("InternalServiceError")
    );
    t.handle.shutdown().await;
}

#[tokio::test]
async fn stats_count_calls_and_bytes_and_reset_clears_them() {
    let t = T::new(fast()).await;
    let id = t.create(text_body(PRO, "x")).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    let (_, _, mp4) = t
        .fetch(&done.content.and_then(|c| c.video_url).expect("url"), &[])
        .await;
    t.list("").await;
    let stats = t.admin("stats").await;
    assert_eq!(stats["creates_total"], 1);
    assert_eq!(stats["creates_by_model"][PRO], 1);
    assert_eq!(stats["calls"]["create"]["200"], 1);
    let gets = stats["calls"]["get"]["200"].as_u64().expect("gets");
    assert_eq!(stats["calls"]["list"]["200"], 1);
    assert_eq!(stats["status_calls_total"], gets + 1);
    assert_eq!(stats["calls"]["download"]["200"], 1);
    assert_eq!(stats["bytes_served"], mp4.len() as u64);
    assert_eq!(stats["max_concurrency_by_model"][PRO], 1);
    assert_eq!(stats["tasks_by_status"]["succeeded"], 1);

    let r =
        t.c.post(format!("{}/_sim/reset", t.root))
            .send()
            .await
            .expect("reset");
    assert_eq!(r.status(), StatusCode::OK);
    let stats = t.admin("stats").await;
    assert_eq!(stats["creates_total"], 0);
    assert_eq!(stats["bytes_served"], 0);
    assert_eq!(stats["tasks_by_status"]["succeeded"], 1, "tasks are kept");
    t.handle.shutdown().await;
}

#[tokio::test]
async fn config_flags_override_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sim.toml");
    std::fs::write(
        &path,
        "api_keys = [\"from-file\"]\ntime_scale = 0.5\nmax_queued = 7\n",
    )
    .expect("write");
    let args = SimArgs {
        listen: "127.0.0.1:0".into(),
        api_key: vec![],
        time_scale: Some(0.25),
        config: Some(path),
    };
    let cfg = SimConfig::from_args(&args).expect("loads");
    assert_eq!(cfg.api_keys, vec!["from-file".to_string()]);
    assert_eq!(cfg.time_scale, 0.25);
    assert_eq!(cfg.max_queued, 7);
    let args = SimArgs {
        api_key: vec!["a".into(), "b".into()],
        config: None,
        time_scale: None,
        ..args
    };
    let cfg = SimConfig::from_args(&args).expect("defaults");
    assert_eq!(cfg.api_keys, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(cfg.time_scale, 1.0);
}

/// The Python that has the official Ark SDK: `SEEDQ_TEST_PYTHON` (set by `tests/run.sh`, which
/// installs the SDK into a venv), else `python3`.
fn sdk_python() -> String {
    std::env::var("SEEDQ_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The official Python SDK against the simulator. `tests/run.sh` installs it; a machine
/// without it fails here with the set-up command rather than silently skipping.
#[tokio::test]
async fn official_python_sdk_works_against_the_simulator() {
    const INSTALL: &str = "run the suite with tests/run.sh, which installs the SDK into a venv \
                           (or: pip install -r tests/sdk/requirements.txt)";
    let python = sdk_python();
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import volcenginesdkarkruntime"])
        .output()
        .await;
    match probe {
        Err(e) => panic!("{python} is needed for the SDK compatibility test ({e}); {INSTALL}"),
        Ok(out) if !out.status.success() => panic!(
            "the Ark Python SDK is not importable by {python}; {INSTALL}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }
    let t = T::new(fast()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sdk/sdk_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&t.api)
        .arg(KEY)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .output()
        .await
        .expect("the SDK python runs");
    assert!(
        out.status.success(),
        "sdk_check.py failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = t.admin("stats").await;
    assert!(stats["creates_total"].as_u64().unwrap_or(0) >= 2, "{stats}");
    t.handle.shutdown().await;
}

#[tokio::test]
async fn read_routes_answer_429_over_the_accounts_rates() {
    let mut cfg = fast();
    cfg.read_limits.real_time = true;
    let t = T::new(cfg).await;
    let id = t.create(text_body(PRO, "limited")).await;
    // List: one a second. The second call in the same second is refused with Ark's envelope.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r =
            t.c.get(t.tasks_url())
                .bearer_auth(KEY)
                .send()
                .await
                .expect("answer");
        let s = r.status();
        answers.push((s, r.json::<Value>().await.expect("json")));
    }
    let refused: Vec<&(StatusCode, Value)> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(!refused.is_empty(), "{answers:?}");
    let (s, v) = refused[0];
    assert_error(
        *s,
        v,
        StatusCode::TOO_MANY_REQUESTS,
        "AccountRateLimitExceeded",
        None,
    );
    // GET: 20 a second; 60 at once (two windows at most) cannot all pass, and at least 20 do.
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..60 {
        match t.get_raw(&id).await.0 {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 20 && limited >= 1, "ok {ok}, limited {limited}");
    let stats = t.admin("stats").await;
    assert!(
        stats["calls"]["list"]["429"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
    t.handle.shutdown().await;
}

#[tokio::test]
async fn flex_ids_bare_answers_seeds_and_page_size_follow_live_ark() {
    let mut cfg = fast();
    cfg.bare_unfinished_tasks = true;
    cfg.generation.base = Duration::from_secs(3600);
    let t = T::new(cfg).await;
    let mut flex = text_body(LITE, "batch id");
    flex["service_tier"] = json!("flex");
    let flex_id = t.create(flex).await;
    assert!(flex_id.starts_with("cgt-batch-"), "{flex_id}");
    let id = t.create(text_body(PRO, "bare")).await;
    assert!(!id.starts_with("cgt-batch-"), "{id}");
    // A task that has not finished shows only id, model, status and times.
    let (_, v) = t.get_raw(&id).await;
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["created_at", "id", "model", "status", "updated_at"],
        "{v}"
    );
    for _ in 0..25 {
        t.create(text_body(PRO, "more")).await;
    }
    // page_size defaults to 20 (docs/ark-api.md §14).
    let page = t.list("").await;
    assert_eq!((page.total, page.items.len()), (26, 20));
    t.handle.shutdown().await;
    // Seeds handed out stay at most 2^31−1 (docs/ark-api.md §14 "Seeds").
    let mut cfg = fast();
    cfg.rng_seed = Some(3);
    let t = T::new(cfg).await;
    for i in 0..20 {
        let id = t.create(text_body(PRO, &format!("seed {i}"))).await;
        let done = t.wait_status(&id, TaskStatus::Succeeded).await;
        assert!(done.seed.is_some_and(|s| (0..=2_147_483_647).contains(&s)));
    }
    t.handle.shutdown().await;
}

#[tokio::test]
async fn account_states_and_task_type_failures_answer_as_ark_does() {
    let mut cfg = fast();
    cfg.faults.model_not_open = vec![LITE.into()];
    cfg.faults.set_limit_exceeded = vec![V20.into()];
    cfg.faults.task_type_constraint_words = vec!["edit the clip".into()];
    cfg.faults.task_type_mismatch_words = vec!["extend it".into()];
    let t = T::new(cfg).await;
    let r = t.post(&text_body(LITE, "x")).await;
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::NOT_FOUND,
        "ModelNotOpen",
        None,
    );
    let r = t.post(&text_body(V20, "x")).await;
    let s = r.status();
    assert_error(
        s,
        &r.json().await.expect("json"),
        StatusCode::TOO_MANY_REQUESTS,
        "SetLimitExceeded",
        None,
    );
    for (prompt, code) in [
        (
            "please edit the clip",
            "InvalidParameter.TaskTypeConstraint",
        ),
        ("now extend it", "InvalidParameter.TaskTypeMismatch"),
    ] {
        let id = t.create(text_body(PRO, prompt)).await;
        let done = t.wait_status(&id, TaskStatus::Failed).await;
        assert_eq!(done.error.map(|e| e.code).as_deref(), Some(code));
    }
    t.handle.shutdown().await;
}

#[tokio::test]
async fn video_input_tasks_bill_input_plus_output_seconds_without_the_extra_frame() {
    let mut cfg = fast();
    cfg.reference_video_seconds = 3.7;
    let t = T::new(cfg).await;
    let mut b = text_body("doubao-seedance-2-0-260128", "the same street in the rain");
    b["content"]
        .as_array_mut()
        .expect("content")
        .push(json!({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}, "role": "reference_video"}));
    b["resolution"] = json!("720p");
    b["ratio"] = json!("16:9");
    b["duration"] = json!(5);
    let id = t.create(b).await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    // docs/ark-api.md §14: 1280·720·24·(⌊3.7⌋ + 5)/1024, not 1280·720·(24·5 + 1)/1024.
    assert_eq!(
        done.usage.expect("usage").total_tokens,
        1280 * 720 * 24 * (3 + 5) / 1024
    );
    // Without a video input the extra frame stays (§10).
    let id = t
        .create(json!({"model": "dreamina-seedance-2-5-260628", "content": [{"type": "text", "text": "x"}],
            "resolution": "480p", "ratio": "16:9", "duration": 4}))
        .await;
    let done = t.wait_status(&id, TaskStatus::Succeeded).await;
    assert_eq!(done.usage.expect("usage").total_tokens, 38_830);
    t.handle.shutdown().await;
}
