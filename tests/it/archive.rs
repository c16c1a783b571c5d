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
        let dir = tempfile::tempdir().expect("tempdir");
        let sim_cfg: SimConfig = toml::from_str(&format!(
            "time_scale = 0.001\nvideo_downscale = 16\n{sim}"
        ))
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
    assert_eq!(s3.open_parts(), 0, "the multipart upload was completed, not left open");

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
    assert_eq!(sidecar["batch"], "b1");
    assert_eq!(sidecar["seed"], job.seed.expect("seed"));
    assert_eq!(sidecar["request"]["model"], MODEL);
    assert!(sidecar["usage_tokens"].as_i64().is_some_and(|t| t > 0));
    assert!(sidecar["estimated_cost"]["amount"].as_f64().is_some_and(|c| c > 0.0));
    for t in ["queued", "submitted", "finished", "archived"] {
        assert!(sidecar["timings"][t].is_string(), "timing {t}");
    }
    assert_eq!(sidecar["objects"]["video"]["sha256"], sha.as_str());
    assert_eq!(sidecar["objects"]["video"]["key"], key.as_str());
    let (frame_sha, frame_size) = sha256_file(&frame);
    assert_eq!(sidecar["objects"]["last_frame"]["sha256"], frame_sha.as_str());
    assert_eq!(sidecar["objects"]["last_frame"]["size"], frame_size);
    assert_eq!(sim_task["video_size"], 20 * 1024 * 1024);
    assert_eq!(sim_task["last_frame_sha256"], frame_sha.as_str());
    // The remote record was deleted after the archive, as configured.
    let gone = rig.ctx.ark.get(&remote).await;
    assert_eq!(gone.err().and_then(|e| e.status()), Some(404));
}
