//! The archiver against real backends: an S3 server started in this process (s3s + s3s-fs:
//! SigV4, real multipart), the local filesystem and memory; result faults from the simulator;
//! and 100 jobs end to end through the real `seedq run`.
//!
//! In-process tests drive the stages one step at a time (`dispatch::step`, `poll::step`,
//! `archive::step`) against an in-process simulator, so each fault lands exactly where meant.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use seedq::catalogue::Catalogue;
use seedq::config::Config;
use seedq::job::{JobId, JobState};
use seedq::request::{self, JobSpec};
use seedq::sim::{SimConfig, SimHandle};
use seedq::store::{Job, NewJob, Store};
use seedq::worker::{self, Ctx, Outcome};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::helpers::TestEnv;

const MODEL: &str = "doubao-seedance-1-0-pro-250528";
const BUCKET: &str = "videos";
const AK: &str = "seedq-test-key";
const SK: &str = "seedq-test-secret";
/// Long enough for a debug build on a shared 2-core machine; a healthy run takes a fraction.
const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `f` every 20 ms until it holds, failing the test after `PATIENCE`.
async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sha256_file(path: &Path) -> (String, u64) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (hex::encode(h.finalize()), n)
}

/// An S3 server in this process: s3s over s3s-fs, SigV4 with one key pair, path-style.
struct S3 {
    addr: SocketAddr,
    /// The s3s-fs root; the bucket is a directory in it and objects are plain files.
    root: PathBuf,
    server: Option<JoinHandle<()>>,
}

impl S3 {
    async fn start(root: &Path) -> S3 {
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut s3 = S3 {
            addr,
            root: root.to_path_buf(),
            server: None,
        };
        s3.server = Some(tokio::spawn(serve(listener, root.to_path_buf())));
        s3
    }

    /// Kills the server and every open connection, as a crashed or stopped server would.
    fn stop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }

    /// Starts it again on the same address.
    async fn restart(&mut self) {
        self.stop();
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.server = Some(tokio::spawn(serve(listener, self.root.clone())));
    }

    fn object(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// Multipart parts s3s-fs keeps while an upload is open (they live in the root).
    fn open_parts(&self) -> usize {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
                    .count()
            })
            .unwrap_or(0)
    }

    fn configure(&self, cfg: &mut Config, secret: &str) {
        cfg.archive.url = format!("s3://{BUCKET}/archive");
        cfg.archive.s3.endpoint = Some(format!("http://{}", self.addr));
        cfg.archive.s3.allow_http = true;
        cfg.archive.s3.access_key_id = Some(SecretString::from(AK.to_string()));
        cfg.archive.s3.secret_access_key = Some(SecretString::from(secret.to_string()));
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, root: PathBuf) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs root");
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(AK, SK));
    let service = b.build();
    // Connections live in this set: aborting the accept task drops it, which aborts them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let svc = service.clone();
        conns.spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(sock), svc)
                .into_owned()
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// An in-process simulator, a job store and a worker context over them.
struct Rig {
    dir: tempfile::TempDir,
    sim: SimHandle,
    ctx: Ctx,
    http: reqwest::Client,
}

/// Millisecond-scale polling and backoff, so steps come due at once.
fn base_config(dir: &Path, sim_url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.store.path = dir.join("seedq.db");
    cfg.ark.base_url = sim_url.to_string();
    cfg.ark.api_key = Some(SecretString::from("sk-sim".to_string()));
    cfg.archive.url = format!("file://{}", dir.join("archive").display());
    cfg.admin.listen = String::new();
    cfg.dispatch.idle_interval = Duration::from_millis(50);
    cfg.dispatch.backoff_base = Duration::from_millis(10);
    cfg.dispatch.backoff_max = Duration::from_millis(50);
    cfg.poll.first_poll_after = Duration::from_millis(10);
    cfg.poll.min_interval = Duration::from_millis(10);
    cfg.poll.max_interval = Duration::from_millis(50);
    cfg
}

impl Rig {
    /// `sim` is extra simulator TOML; `tweak` adjusts seedq's config (the archive URL…).
    async fn new(sim: &str, tweak: impl FnOnce(&mut Config, &Path)) -> Rig {
        if std::env::var_os("TEST_LOG").is_some() {
            // Several tests race to install it; the first one wins, which is all we need.
            let _ = tracing_subscriber::fmt()
                .with_env_filter("seedq=debug")
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sim_cfg: SimConfig =
            toml::from_str(&format!("time_scale = 0.001\nvideo_downscale = 16\n{sim}"))
                .expect("sim config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sim = seedq::sim::start(sim_cfg, listener).await.expect("sim");
        let mut cfg = base_config(dir.path(), &sim.base_url());
        tweak(&mut cfg, dir.path());
        let ctx = Rig::ctx(cfg);
        Rig {
            dir,
            sim,
            ctx,
            http: reqwest::Client::new(),
        }
    }

    fn ctx(cfg: Config) -> Ctx {
        let catalogue = cfg.validate().expect("valid config");
        let store = Store::open(&cfg.store.path).expect("store");
        Ctx::new(cfg, catalogue, store).expect("ctx")
    }

    /// A second context on the same DB and simulator with a different archive config.
    fn ctx_with(&self, tweak: impl FnOnce(&mut Config)) -> Ctx {
        let mut cfg = (*self.ctx.cfg).clone();
        tweak(&mut cfg);
        Rig::ctx(cfg)
    }

    async fn submit(&self, spec: JobSpec) -> JobId {
        let p = request::prepare(spec, &Catalogue::default(), self.dir.path()).expect("spec");
        let new = NewJob {
            id: p.id.clone(),
            model: p.model.clone(),
            flex: p.flex,
            priority: p.priority,
            request_json: serde_json::to_string(&p.request).expect("json"),
            key: p.key.clone(),
            tags: p.tags.clone(),
            batch: p.batch.clone(),
            shape: None,
            est_tokens: p.est_tokens,
            expires_after: Some(p.expires_after),
            seed: p.seed,
        };
        self.ctx.store.enqueue(vec![new]).await.expect("enqueue");
        p.id
    }

    async fn job(&self, id: &JobId) -> Job {
        self.ctx
            .store
            .job(id.as_str())
            .await
            .expect("store")
            .expect("job exists")
    }

    /// Runs dispatch and poll steps until the job is `succeeded`.
    async fn until_succeeded(&self, id: &JobId) {
        wait_until("the job to succeed remotely", || async {
            worker::dispatch::step(&self.ctx).await.expect("dispatch");
            worker::poll::step(&self.ctx).await.expect("poll");
            self.job(id).await.state == JobState::Succeeded
        })
        .await;
    }

    /// Runs archive steps (with `ctx`) until the job reaches `want`.
    async fn archive_until(&self, ctx: &Ctx, id: &JobId, want: JobState) -> Job {
        wait_until(&format!("the job to be {want}"), || async {
            worker::archive::step(ctx).await.expect("archive step");
            self.job(id).await.state == want
        })
        .await;
        self.job(id).await
    }

    async fn sim_get(&self, path: &str) -> Value {
        self.http
            .get(format!("http://{}{path}", self.sim.addr()))
            .send()
            .await
            .expect("sim admin")
            .json()
            .await
            .expect("json")
    }

    async fn faults(&self, faults: Value) {
        let r = self
            .http
            .post(format!("http://{}/_sim/faults", self.sim.addr()))
            .json(&faults)
            .send()
            .await
            .expect("sim faults");
        assert!(r.status().is_success(), "faults refused");
    }

    /// The simulator's record of a task.
    async fn sim_task(&self, remote: &str) -> Value {
        let tasks = self.sim_get("/_sim/tasks").await;
        tasks
            .as_array()
            .expect("array")
            .iter()
            .find(|t| t["id"] == remote)
            .cloned()
            .expect("task known to the sim")
    }

    async fn downloads(&self) -> u64 {
        self.sim_get("/_sim/stats").await["calls"]["download"]["200"]
            .as_u64()
            .unwrap_or(0)
    }
}

fn spec(prompt: &str) -> JobSpec {
    JobSpec {
        model: Some(MODEL.into()),
        prompt: Some(prompt.into()),
        resolution: Some("480p".into()),
        duration: Some(2),
        tags: vec!["tests".into()],
        ..Default::default()
    }
}

/// A 20 MiB video (three 8 MiB parts) goes to S3 with its last frame and sidecar; the hashes
/// in the DB are those of the stored objects, and `delete_remote` removes the remote record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_archive_with_frame_sidecar_and_remote_delete() {
    let s3_root = tempfile::tempdir().expect("tempdir");
    let s3 = S3::start(s3_root.path()).await;
    let rig = Rig::new("video_pad_to_bytes = 20971520\n", |cfg, _| {
        s3.configure(cfg, SK);
        cfg.archive.delete_remote = true;
    })
    .await;
    let id = rig
        .submit(JobSpec {
            return_last_frame: Some(true),
            batch: Some("b1".into()),
            ..spec("a fox in snow")
        })
        .await;
    rig.until_succeeded(&id).await;
    let remote = rig.job(&id).await.remote_task_id.expect("remote id");
    let sim_task = rig.sim_task(&remote).await;
    let job = rig.archive_until(&rig.ctx, &id, JobState::Archived).await;

    let key = job.archive_key.clone().expect("key");
    let date = seedq::blob::utc_date(job.created_at);
    assert_eq!(key, format!("{date}/{MODEL}/{id}.mp4"));
    let (sha, size) = sha256_file(&s3.object(&format!("archive/{key}")));
    assert_eq!(job.archive_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(job.archive_size, Some(20 * 1024 * 1024));
    assert_eq!(size, 20 * 1024 * 1024);
    assert_eq!(
        s3.open_parts(),
        0,
        "the multipart upload was completed, not left open"
    );

    let stem = key.trim_end_matches(".mp4");
    let frame = s3.object(&format!("archive/{stem}.last.png"));
    let sidecar: Value = serde_json::from_slice(
        &std::fs::read(s3.object(&format!("archive/{stem}.json"))).expect("sidecar"),
    )
    .expect("sidecar json");
    assert_eq!(sidecar["job_id"], id.as_str());
    assert_eq!(sidecar["task_id"], remote.as_str());
    assert_eq!(sidecar["model"], MODEL);
    assert_eq!(sidecar["resolution"], "480p");
    assert_eq!(sidecar["duration"], 2);
    // Not in the request: the task's own answer, recorded when it succeeded.
    assert_eq!(sidecar["ratio"], "16:9");
    assert_eq!(sidecar["framespersecond"], 24);
    assert_eq!(sidecar["batch"], "b1");
    assert_eq!(sidecar["seed"], job.seed.expect("seed"));
    assert_eq!(sidecar["request"]["model"], MODEL);
    assert!(sidecar["usage_tokens"].as_i64().is_some_and(|t| t > 0));
    assert!(
        sidecar["estimated_cost"]["amount"]
            .as_f64()
            .is_some_and(|c| c > 0.0)
    );
    for t in ["queued", "submitted", "finished", "archived"] {
        assert!(sidecar["timings"][t].is_string(), "timing {t}");
    }
    assert_eq!(sidecar["objects"]["video"]["sha256"], sha.as_str());
    assert_eq!(sidecar["objects"]["video"]["key"], key.as_str());
    let (frame_sha, frame_size) = sha256_file(&frame);
    assert_eq!(
        sidecar["objects"]["last_frame"]["sha256"],
        frame_sha.as_str()
    );
    assert_eq!(sidecar["objects"]["last_frame"]["size"], frame_size);
    assert_eq!(sim_task["video_size"], 20 * 1024 * 1024);
    assert_eq!(sim_task["last_frame_sha256"], frame_sha.as_str());
    // The remote record was deleted after the archive, as configured.
    let gone = rig.ctx.ark.get(&remote).await;
    assert_eq!(gone.err().and_then(|e| e.status()), Some(404));
}

/// A wrong S3 secret: the attempt fails with a clear, secret-free reason, the job waits in
/// `succeeded`, and with the right secret it is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_s3_credentials_keep_the_job_and_say_why() {
    let s3_root = tempfile::tempdir().expect("tempdir");
    let s3 = S3::start(s3_root.path()).await;
    let rig = Rig::new("", |cfg, _| s3.configure(cfg, "not-the-secret")).await;
    let id = rig.submit(spec("a cat yawns")).await;
    rig.until_succeeded(&id).await;

    assert_eq!(
        worker::archive::step(&rig.ctx).await.expect("step"),
        Outcome::Worked
    );
    let job = rig.job(&id).await;
    assert_eq!(job.state, JobState::Succeeded, "back in line, not lost");
    assert_eq!(job.last_error_code.as_deref(), Some("archive_denied"));
    let msg = job.last_error_message.clone().unwrap_or_default();
    assert!(
        msg.contains("SignatureDoesNotMatch") || msg.contains("privileges"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret"), "{msg}");
    assert_eq!(job.archive_key, None);

    let fixed = rig.ctx_with(|cfg| s3.configure(cfg, SK));
    let job = rig.archive_until(&fixed, &id, JobState::Archived).await;
    let key = job.archive_key.expect("key");
    let (sha, _) = sha256_file(&s3.object(&format!("archive/{key}")));
    assert_eq!(job.archive_sha256, Some(sha));
    assert_eq!(job.last_error_code, None, "the old complaint is cleared");
}

/// The S3 server dies halfway through a multipart upload: nothing appears under the key, the
/// job goes back to `succeeded`, and once the server is back the next attempt archives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_mid_upload_retries_and_ends_archived() {
    let s3_root = tempfile::tempdir().expect("tempdir");
    let mut s3 = S3::start(s3_root.path()).await;
    // 24 MiB at 16 MiB/s: the upload is under way for about 1.5 s.
    let rig = Rig::new(
        "video_pad_to_bytes = 25165824\n[faults]\ndownload_bytes_per_sec = 16777216\n",
        |cfg, _| s3.configure(cfg, SK),
    )
    .await;
    let id = rig.submit(spec("a paper boat")).await;
    rig.until_succeeded(&id).await;

    let ctx = rig.ctx.clone();
    let step = tokio::spawn(async move { worker::archive::step(&ctx).await });
    wait_until("the first part to reach S3", || async {
        s3.open_parts() > 0
    })
    .await;
    s3.stop();
    let _ = step.await.expect("step task");
    let job = rig.job(&id).await;
    assert_eq!(job.state, JobState::Succeeded, "never claimed archived");
    assert_eq!(job.last_error_code.as_deref(), Some("archive_failed"));
    let key = rig
        .ctx
        .archive
        .as_ref()
        .expect("archiver")
        .video_key(&job)
        .expect("key");
    assert!(
        !s3.object(&format!("archive/{key}")).exists(),
        "no partial object under the key"
    );

    s3.restart().await;
    rig.faults(serde_json::json!({})).await;
    let job = rig.archive_until(&rig.ctx, &id, JobState::Archived).await;
    let (sha, size) = sha256_file(&s3.object(&format!("archive/{key}")));
    assert_eq!(size, 24 * 1024 * 1024);
    assert_eq!(job.archive_sha256, Some(sha));
}

/// Every download is cut short (a simulator fault): the size check catches each one, the
/// in-step retries run out, and nothing is stored. Without the fault the video is archived
/// with exactly the simulator's bytes. Local filesystem backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_downloads_are_caught_and_retried() {
    let rig = Rig::new("", |_, _| {}).await;
    let id = rig.submit(spec("a red kite")).await;
    rig.until_succeeded(&id).await;
    rig.faults(serde_json::json!({"truncate_download_rate": 1.0}))
        .await;

    worker::archive::step(&rig.ctx).await.expect("step");
    let job = rig.job(&id).await;
    assert_eq!(job.state, JobState::Succeeded);
    let msg = job.last_error_message.unwrap_or_default();
    assert!(
        msg.contains("size mismatch") || msg.contains("source stream failed"),
        "{msg}"
    );
    assert!(
        rig.downloads().await >= 4,
        "one try and three quick retries"
    );
    let archive = rig.dir.path().join("archive");
    let files = walk(&archive);
    assert!(
        files.iter().all(|f| !f.ends_with(".mp4")),
        "nothing stored: {files:?}"
    );

    rig.faults(serde_json::json!({})).await;
    let job = rig.archive_until(&rig.ctx, &id, JobState::Archived).await;
    let remote = job.remote_task_id.clone().expect("remote");
    let (sha, size) = sha256_file(&archive.join(job.archive_key.expect("key")));
    let sim = rig.sim_task(&remote).await;
    assert_eq!(sim["video_sha256"], sha.as_str());
    assert_eq!(sim["video_size"], size);
    assert_eq!(job.archive_sha256, Some(sha));
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// The result URL has expired by the time the archiver gets to it: one fresh GET of the task
/// gives a new URL and the video is archived. Memory backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_result_url_is_refreshed() {
    // 500 s nominal at time_scale 0.001: half a second.
    let rig = Rig::new("url_ttl = \"500s\"\n", |cfg, _| {
        cfg.archive.url = "memory://".into();
    })
    .await;
    let id = rig.submit(spec("a lighthouse at dusk")).await;
    rig.until_succeeded(&id).await;
    let old_url = rig.job(&id).await.video_url.expect("url");
    wait_until("the result URL to expire", || async {
        rig.http
            .get(&old_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 403)
    })
    .await;
    let gets_before = rig.sim_get("/_sim/stats").await["calls"]["get"]["200"]
        .as_u64()
        .unwrap_or(0);

    let job = rig.archive_until(&rig.ctx, &id, JobState::Archived).await;
    assert_ne!(
        job.video_url.as_deref(),
        Some(old_url.as_str()),
        "a fresh URL was recorded"
    );
    let gets_after = rig.sim_get("/_sim/stats").await["calls"]["get"]["200"]
        .as_u64()
        .unwrap_or(0);
    assert!(gets_after > gets_before, "the task was fetched again");
    let arch = rig.ctx.archive.as_ref().expect("archiver");
    let key = arch.video_key(&job).expect("key");
    let stored = arch
        .blob()
        .digest(&key)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(Some(stored.sha256), job.archive_sha256);
}

/// The remote task is gone for good (deleted): the job fails with `result_expired`, which
/// `seedq stats` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_gone_for_good_fails_with_result_expired() {
    let rig = Rig::new("", |_, _| {}).await;
    let id = rig.submit(spec("a snowman melts")).await;
    rig.until_succeeded(&id).await;
    let remote = rig.job(&id).await.remote_task_id.expect("remote");
    rig.ctx
        .ark
        .delete(&remote)
        .await
        .expect("delete remote record");

    let job = rig.archive_until(&rig.ctx, &id, JobState::Failed).await;
    assert_eq!(job.last_error_code.as_deref(), Some("result_expired"));
    assert!(
        job.last_error_message
            .as_deref()
            .is_some_and(|m| m.contains(&remote)),
        "{:?}",
        job.last_error_message
    );
    let stats = rig.ctx.store.archive_stats().await.expect("stats");
    assert_eq!((stats.result_expired, stats.archived), (1, 0));
    assert!(walk(&rig.dir.path().join("archive")).is_empty());

    let env = TestEnv::new("");
    let db = rig.ctx.cfg.store.path.display().to_string();
    let text = env.ok(&["--db", &db, "stats"]);
    assert!(text.contains("1 result_expired"), "{text}");
}

/// A crash after an upload completed but before the job was marked: the object under the key
/// with the recorded size and hash counts as done (no new download). A same-size object with
/// the wrong bytes does not: it is downloaded again and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_object_counts_only_with_the_recorded_hash() {
    let rig = Rig::new("", |_, _| {}).await;
    let arch = rig.ctx.archive.clone().expect("archiver");
    for tamper in [false, true] {
        let id = rig.submit(spec(if tamper { "b" } else { "a" })).await;
        rig.until_succeeded(&id).await;
        // Play the crashed holder: claim, upload, record, then vanish without marking.
        let claim = rig
            .ctx
            .store
            .claim_for_archive("crashed", std::time::Duration::from_millis(60_000))
            .await
            .expect("claim")
            .expect("due");
        assert_eq!(claim.job.id, id);
        let url = claim.job.video_url.clone().expect("url");
        let real = rig
            .http
            .get(&url)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        let mut stored = real.to_vec();
        if tamper {
            stored[0] ^= 0xff;
        }
        let key = arch.video_key(&claim.job).expect("key");
        let mut up = arch.blob().upload(&key, "video/mp4").await.expect("upload");
        up.write(stored.into()).await.expect("write");
        up.finish().await.expect("finish");
        let real_sha = hex::encode(Sha256::digest(&real));
        rig.ctx
            .store
            .record_video_digest(
                &id,
                claim.job.lease_token,
                key.to_string(),
                real_sha.clone(),
                real.len() as i64,
            )
            .await
            .expect("record");
        assert!(
            rig.ctx
                .store
                .extend_archive_lease(&id, claim.job.lease_token, std::time::Duration::ZERO)
                .await
                .expect("lapse")
        );

        let before = rig.downloads().await;
        let job = rig.archive_until(&rig.ctx, &id, JobState::Archived).await;
        let after = rig.downloads().await;
        assert_eq!(after - before, u64::from(tamper), "tamper={tamper}");
        assert_eq!(job.archive_sha256.as_deref(), Some(real_sha.as_str()));
        let (sha, _) = sha256_file(&rig.dir.path().join("archive").join(key.as_str()));
        assert_eq!(sha, real_sha, "the store holds the real video");
        let events = rig.ctx.store.events(id.as_str()).await.expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.detail.as_deref() == Some("lease ran out; claimed again for archive")),
            "{events:?}"
        );
    }
}

/// 100 jobs through the real binary: `seedq submit --file`, then `seedq run` against the
/// simulator and the in-process S3 until everything is archived. Every recorded hash is the
/// stored object's and the simulator's; `seedq fetch` copies one back out; `seedq stats`
/// counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_jobs_end_to_end_through_seedq_run_into_s3() {
    const JOBS: usize = 100;
    let s3_root = tempfile::tempdir().expect("tempdir");
    let s3 = S3::start(s3_root.path()).await;
    let sim_cfg: SimConfig =
        toml::from_str("time_scale = 0.001\nvideo_downscale = 16\n").expect("sim config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sim = seedq::sim::start(sim_cfg, listener).await.expect("sim");
    let env = TestEnv::new(&format!(
        "[ark]\nbase_url = \"{}\"\n# Ark's read rates are per second; this sim counts them per 100 ms (its shortest window).\nrate_window = \"100ms\"\n\n[dispatch]\nidle_interval = \"50ms\"\nbackoff_base = \"10ms\"\nbackoff_max = \"100ms\"\n\n\
         [poll]\nfirst_poll_after = \"20ms\"\nmin_interval = \"10ms\"\nmax_interval = \"100ms\"\n",
        sim.base_url()
    ));
    let jobs = env.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..JOBS)
        .map(|i| {
            format!(
                "{{\"prompt\":\"shot {i}\",\"model\":\"{MODEL}\",\"resolution\":\"480p\",\"duration\":2,\"key\":\"e2e-{i}\"{}}}",
                if i % 10 == 0 { ",\"return_last_frame\":true" } else { "" }
            )
        })
        .collect();
    std::fs::write(&jobs, lines.join("\n")).expect("jsonl");
    let with_s3 = |mut c: std::process::Command| {
        c.env("ARK_API_KEY", "sk-sim")
            .env("AWS_ACCESS_KEY_ID", AK)
            .env("AWS_SECRET_ACCESS_KEY", SK)
            .env("SEEDQ__ARCHIVE__URL", format!("s3://{BUCKET}/e2e"))
            .env(
                "SEEDQ__ARCHIVE__S3__ENDPOINT",
                format!("http://{}", s3.addr),
            )
            .env("SEEDQ__ARCHIVE__S3__ALLOW_HTTP", "true");
        c
    };
    env.ok(&["submit", "--file", jobs.to_str().expect("utf-8 path")]);

    let run = tokio::process::Command::from(with_s3(env.cmd(&["run"])))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("seedq run finishes")
        .expect("seedq run");
    assert!(
        out.status.success(),
        "seedq run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tasks = reqwest::get(format!("http://{}/_sim/tasks", sim.addr()))
        .await
        .expect("tasks")
        .json::<Vec<Value>>()
        .await
        .expect("json");
    let listed = env.jobs();
    assert_eq!(listed.len(), JOBS);
    let mut frames = 0;
    for j in &listed {
        assert_eq!(j["state"], "archived", "{j}");
        let key = j["archive_key"].as_str().expect("key");
        let (sha, size) = sha256_file(&s3.object(&format!("e2e/{key}")));
        assert_eq!(j["archive_sha256"], sha.as_str());
        assert_eq!(j["archive_size"], size);
        let task = tasks
            .iter()
            .find(|t| t["id"] == j["remote_task_id"])
            .expect("sim task");
        assert_eq!(task["video_sha256"], sha.as_str(), "the simulator's bytes");
        let stem = key.trim_end_matches(".mp4");
        assert!(s3.object(&format!("e2e/{stem}.json")).is_file());
        if s3.object(&format!("e2e/{stem}.last.png")).is_file() {
            frames += 1;
        }
    }
    assert_eq!(frames, JOBS / 10, "last frames exactly where asked for");

    let id = listed[0]["id"].as_str().expect("id");
    let dest = env.path().join("fetched.mp4");
    let fetch = tokio::process::Command::from(with_s3(env.cmd(&[
        "fetch",
        id,
        "-o",
        dest.to_str().expect("utf-8 path"),
    ])))
    .output()
    .await
    .expect("fetch");
    assert!(
        fetch.status.success(),
        "fetch: {}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    assert_eq!(
        sha256_file(&dest).0,
        listed[0]["archive_sha256"].as_str().expect("sha")
    );
    let stats = env.ok(&["stats"]);
    assert!(
        stats.contains(&format!("archive: {JOBS} archived")),
        "{stats}"
    );
    sim.shutdown().await;
}

/// `seedq config check` refuses a key template that would put every job under one key.
#[test]
fn config_check_refuses_a_key_template_without_a_job_id() {
    let env = TestEnv::new("");
    let out = env
        .cmd(&["config", "check"])
        .env("SEEDQ__ARCHIVE__URL", "memory://")
        .env("SEEDQ__ARCHIVE__KEY_TEMPLATE", "{date}/{model}.mp4")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("archive.key_template") && err.contains("{job_id} or {task_id}"),
        "{err}"
    );
    let ok = env
        .cmd(&["config", "check"])
        .env("SEEDQ__ARCHIVE__URL", "memory://")
        .output()
        .expect("run");
    assert!(ok.status.success());
}
