//! Archive benchmark: one large video (1 GiB by default) served by the simulator (pad mode),
//! archived by the real `seedq run` into the local filesystem and into an S3 server (s3s +
//! s3s-fs), against a plain HTTP-to-file copy of the same URL (curl, else reqwest).
//!
//! The simulator and the S3 server run in this process; the archiver is the `seedq` child, so
//! its peak RSS (`VmHWM`, sampled from /proc until it exits) is the archiver's alone. Archive
//! time is read from the job's own events: `claimed for archive` to `archived`, which covers
//! the download, hashing, upload (with fsync for the local store) and the sidecar.
//!
//! `cargo bench --bench archive [-- --size-mib N --rounds R]`. Not a timed test: it prints
//! numbers (medians over the rounds, which run interleaved to spread machine noise).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::net::TcpListener;

const BUCKET: &str = "bench";
const AK: &str = "bench-key";
const SK: &str = "bench-secret";
const MODEL: &str = "doubao-seedance-1-0-pro-250528";
const MIB: f64 = 1024.0 * 1024.0;

fn main() -> anyhow::Result<()> {
    // `cargo bench` adds `--bench`; only our two flags are read.
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u64| -> anyhow::Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("{name} takes a number")),
            None => Ok(default),
        }
    };
    // `cargo test --benches` runs this without `--bench`: a quick smoke run, not the real thing.
    let smoke = !args.iter().any(|a| a == "--bench");
    let size_mib = flag("--size-mib", if smoke { 16 } else { 1024 })?;
    let rounds = usize::try_from(flag("--rounds", if smoke { 1 } else { 3 })?.max(1))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(size_mib << 20, rounds))
}

/// The in-process S3 server (same setup as the integration tests).
async fn start_s3(root: &Path) -> anyhow::Result<SocketAddr> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    std::fs::create_dir_all(root.join(BUCKET))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(AK, SK));
    let service = b.build();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let svc = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), svc)
                    .into_owned()
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Measured {
    secs: f64,
    /// For the plain copy: the extra time an fsync of the file takes afterwards.
    fsync_secs: f64,
    bytes: u64,
    peak_rss: Option<u64>,
    sha256: Option<String>,
}

async fn run(size: u64, rounds: usize) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("seedq-bench-archive-")
        .tempdir_in(
            std::env::var_os("SEEDQ_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        )?;
    let sim_cfg: seedq::sim::SimConfig = toml::from_str(&format!(
        "time_scale = 0.001\nvideo_downscale = 16\nvideo_pad_to_bytes = {size}\n"
    ))?;
    let sim = seedq::sim::start(sim_cfg, TcpListener::bind("127.0.0.1:0").await?).await?;
    let s3_root = work.path().join("s3");
    let s3 = start_s3(&s3_root).await?;
    println!(
        "archive benchmark: {:.0} MiB video, {rounds} rounds, work dir {}",
        size as f64 / MIB,
        work.path().display()
    );

    let (mut copies, mut fss, mut s3s) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let fs_dir = work.path().join(format!("fs-archive-{round}"));
        let (fs, remote) = archive_run(
            &sim,
            &work.path().join(format!("run-fs-{round}")),
            &format!("url = \"file://{}\"\n", fs_dir.display()),
            &fs_dir,
        )
        .await?;
        let copy = plain_copy(&sim, &remote, &work.path().join("plain.mp4")).await?;
        // The plain copy fetched this run's video: the same bytes, the same hash.
        anyhow::ensure!(
            fs.sha256 == copy.sha256,
            "the archived sha256 differs from the plain copy's"
        );
        std::fs::remove_dir_all(&fs_dir).ok();
        let (s3m, _) = archive_run(
            &sim,
            &work.path().join(format!("run-s3-{round}")),
            &format!(
                "url = \"s3://{BUCKET}/archive-{round}\"\n[archive.s3]\nendpoint = \"http://{s3}\"\nallow_http = true\n"
            ),
            &s3_root.join(BUCKET).join(format!("archive-{round}")),
        )
        .await?;
        std::fs::remove_dir_all(s3_root.join(BUCKET).join(format!("archive-{round}"))).ok();
        anyhow::ensure!(
            [copy.bytes, fs.bytes, s3m.bytes] == [size; 3],
            "a transfer has the wrong size"
        );
        println!(
            "round {}: copy {:.2} s (+{:.2} s fsync), local fs {:.2} s, S3 {:.2} s",
            round + 1,
            copy.secs,
            copy.fsync_secs,
            fs.secs,
            s3m.secs
        );
        copies.push(copy);
        fss.push(fs);
        s3s.push(s3m);
    }
    let floor = s3_floor(s3, size).await?;

    let median = |v: &[Measured]| {
        let mut secs: Vec<f64> = v.iter().map(|m| m.secs).collect();
        secs.sort_by(f64::total_cmp);
        secs[secs.len() / 2]
    };
    let peak = |v: &[Measured]| v.iter().filter_map(|m| m.peak_rss).max();
    let base = median(&copies);
    println!();
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>13}",
        "path (median of rounds)", "seconds", "MiB/s", "vs copy", "peak RSS MiB"
    );
    let row = |name: &str, secs: f64, rss: Option<u64>| {
        println!(
            "{name:<40} {secs:>8.2} {:>8.0} {:>7.0}% {:>13}",
            size as f64 / MIB / secs,
            base / secs * 100.0,
            rss.map_or("-".into(), |r| format!("{:.1}", r as f64 / MIB))
        );
    };
    row("plain HTTP-to-file copy (curl)", base, None);
    let synced: Vec<Measured> = copies
        .iter()
        .map(|c| Measured {
            secs: c.secs + c.fsync_secs,
            fsync_secs: 0.0,
            bytes: c.bytes,
            peak_rss: None,
            sha256: None,
        })
        .collect();
    row("  the same copy, then fsync", median(&synced), None);
    row(
        "seedq archive -> local fs (fsync)",
        median(&fss),
        peak(&fss),
    );
    row(
        "seedq archive -> S3 (s3s-fs, in-proc)",
        median(&s3s),
        peak(&s3s),
    );
    row("  S3 server floor: direct put, no HTTP in", floor, None);
    println!("\ntargets: throughput >= 50% of the plain copy; archiver peak RSS <= 64 MiB");
    sim.shutdown().await;
    Ok(())
}

/// How fast the in-process S3 server takes a multipart upload by itself: zeros from memory,
/// through the same blob store code, no download.
async fn s3_floor(s3: SocketAddr, size: u64) -> anyhow::Result<f64> {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    let mut cfg = seedq::config::S3Config {
        endpoint: Some(format!("http://{s3}")),
        allow_http: true,
        ..Default::default()
    };
    cfg.access_key_id = Some(SecretString::from(AK.to_string()));
    cfg.secret_access_key = Some(SecretString::from(SK.to_string()));
    let blob = seedq::blob::BlobStore::open(&format!("s3://{BUCKET}/floor"), &cfg)?;
    let key = seedq::blob::ObjectKey::parse("zeros.bin")?;
    let start = Instant::now();
    let mut up = blob.upload(&key, "application/octet-stream").await?;
    let mut left = size;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        up.write(bytes::Bytes::from_static(&ZEROS[..n])).await?;
        left -= n as u64;
    }
    up.finish().await?;
    Ok(start.elapsed().as_secs_f64())
}

/// Enqueues one job and runs `seedq run` on it with `archive` as the `[archive]` section;
/// returns the measurement and the job's remote task id.
async fn archive_run(
    sim: &seedq::sim::SimHandle,
    dir: &Path,
    archive: &str,
    stored_root: &Path,
) -> anyhow::Result<(Measured, String)> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("config.toml");
    let db = dir.join("seedq.db");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = {db:?}\n[ark]\nbase_url = \"{}\"\n[dispatch]\nidle_interval = \"50ms\"\n\
             [poll]\nfirst_poll_after = \"20ms\"\nmin_interval = \"10ms\"\nmax_interval = \"100ms\"\n\
             [log]\nlevel = \"seedq=warn\"\n[archive]\n{archive}",
            sim.base_url(),
            db = db.display().to_string()
        ),
    )?;
    let seedq = env!("CARGO_BIN_EXE_seedq");
    let submit = std::process::Command::new(seedq)
        .arg("--config")
        .arg(&config)
        .args(["submit", "a big one --rs 720p --dur 5", "-m", MODEL])
        .output()?;
    anyhow::ensure!(
        submit.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&submit.stderr)
    );
    let id = String::from_utf8(submit.stdout)?.trim().to_string();

    let mut child = tokio::process::Command::new(seedq)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("ARK_API_KEY", seedq::sim::DEFAULT_API_KEY)
        .env("AWS_ACCESS_KEY_ID", AK)
        .env("AWS_SECRET_ACCESS_KEY", SK)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no child pid"))?;
    let mut peak = 0u64;
    let status = loop {
        if let Some(hwm) = vm_hwm(pid) {
            peak = peak.max(hwm);
        }
        tokio::select! {
            s = child.wait() => break s?,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    anyhow::ensure!(status.success(), "seedq run exited with {status}");

    let store = seedq::store::Store::open(&db)?;
    let job = store
        .job(&id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {id} vanished"))?;
    anyhow::ensure!(
        job.state == seedq::job::JobState::Archived,
        "job ended {}",
        job.state
    );
    let events = store.events(&id).await?;
    let claimed = events
        .iter()
        .rev()
        .find(|e| e.to_state == "archiving")
        .map(|e| e.at);
    let archived = events
        .iter()
        .find(|e| e.to_state == "archived")
        .map(|e| e.at);
    let (Some(a), Some(b)) = (claimed, archived) else {
        anyhow::bail!("missing archive events");
    };
    let key = job.archive_key.clone().unwrap_or_default();
    let (stored_sha, on_disk) = sha256_file(&stored_root.join(&key))?;
    anyhow::ensure!(
        Some(on_disk as i64) == job.archive_size
            && Some(stored_sha.as_str()) == job.archive_sha256.as_deref(),
        "the stored object differs from the record"
    );
    Ok((
        Measured {
            secs: b.since(a).as_secs_f64(),
            fsync_secs: 0.0,
            bytes: on_disk,
            peak_rss: (peak > 0).then_some(peak),
            sha256: job.archive_sha256,
        },
        job.remote_task_id.unwrap_or_default(),
    ))
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Peak resident set size of a process, from /proc.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The baseline: copy the same video URL to a file, with curl when it is installed.
async fn plain_copy(
    sim: &seedq::sim::SimHandle,
    remote: &str,
    dest: &PathBuf,
) -> anyhow::Result<Measured> {
    let ark = seedq::ark::ArkClient::new(
        &sim.base_url(),
        SecretString::from(seedq::sim::DEFAULT_API_KEY.to_string()),
        Duration::from_secs(5),
        Duration::from_secs(30),
    )?;
    let url = ark
        .get(remote)
        .await?
        .content
        .and_then(|c| c.video_url)
        .ok_or_else(|| anyhow::anyhow!("no video URL"))?;
    let start = Instant::now();
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(dest)
        .arg(&url)
        .status()
        .await;
    let secs = match curl {
        Ok(s) if s.success() => start.elapsed().as_secs_f64(),
        _ => {
            println!("(curl unavailable; the baseline is a reqwest stream into a file)");
            use futures::StreamExt;
            use tokio::io::AsyncWriteExt;
            let start = Instant::now();
            let mut f = tokio::fs::File::create(dest).await?;
            let mut body = reqwest::get(&url).await?.error_for_status()?.bytes_stream();
            while let Some(chunk) = body.next().await {
                f.write_all(&chunk?).await?;
            }
            f.flush().await?;
            start.elapsed().as_secs_f64()
        }
    };
    // The archive's local store fsyncs before it reports done; this is what that costs a copy.
    let synced = Instant::now();
    std::fs::File::open(dest)?.sync_all()?;
    let fsync_secs = synced.elapsed().as_secs_f64();
    let (sha, bytes) = sha256_file(dest)?;
    std::fs::remove_file(dest).ok();
    Ok(Measured {
        secs,
        fsync_secs,
        bytes,
        peak_rss: None,
        sha256: Some(sha),
    })
}
