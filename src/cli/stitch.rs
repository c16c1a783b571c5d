//! `seedq stitch KEY…`: join archived videos by hand, with the same rules as a chain.
//!
//! Each argument is an archive object key, or the id of an archived job (then its key and the
//! sha256 recorded at archive time are used, and the part is checked against it). The result
//! goes to a local file (`-o`), into the archive with a sidecar listing the parts (`--key`),
//! or both. Clips that differ in size or H.264 parameters are refused, naming the clip.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use super::Ctx;
use crate::blob::{BlobStore, ObjectKey};
use crate::bulk::stitch::{self, JoinError, Part};
use crate::job::JobState;

/// `seedq stitch`.
#[derive(Debug, Args)]
pub struct StitchArgs {
    /// Archive keys or archived job ids, in order.
    #[arg(required = true, num_args = 2..)]
    pub parts: Vec<String>,
    /// Write the joined video to this file.
    #[arg(
        long,
        short = 'o',
        value_name = "FILE",
        required_unless_present = "key"
    )]
    pub output: Option<PathBuf>,
    /// Archive the joined video under this key (with a `.json` sidecar beside it).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

pub(crate) async fn run(ctx: &Ctx, a: StitchArgs) -> anyhow::Result<ExitCode> {
    if ctx.cfg.archive.url.is_empty() {
        bail!("archive.url is empty: seedq stitch joins archived videos");
    }
    let blob = BlobStore::open(&ctx.cfg.archive.url, &ctx.cfg.archive.s3)
        .context("opening archive.url")?;
    let out_key = a
        .key
        .as_deref()
        .map(ObjectKey::parse)
        .transpose()
        .context("--key")?;
    let store = ctx.store_existing().await?;
    let mut parts = Vec::with_capacity(a.parts.len());
    for arg in &a.parts {
        let part = match store.job(arg).await? {
            Some(job) => {
                let (Some(key), JobState::Archived) = (&job.archive_key, job.state) else {
                    eprintln!("error: job {arg} is {}, not archived", job.state);
                    return Ok(ExitCode::from(1));
                };
                Part {
                    label: format!("job {arg}"),
                    key: ObjectKey::parse(key)?,
                    sha256: job.archive_sha256.clone(),
                    job: Some(arg.clone()),
                    shot: None,
                }
            }
            None => Part {
                label: "clip".into(),
                key: ObjectKey::parse(arg)
                    .with_context(|| format!("{arg} is neither a job id nor an object key"))?,
                sha256: None,
                job: None,
                shot: None,
            },
        };
        parts.push(part);
    }
    let joined = match stitch::join(&blob, &parts).await {
        Ok(j) => j,
        Err(e @ JoinError::Missing { .. }) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let r = &joined.report;
    if let Some(path) = &a.output {
        tokio::fs::copy(&joined.path, path)
            .await
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    if let Some(key) = &out_key {
        stitch::store(&blob, &joined, key, None, crate::store::now_ms()).await?;
        println!("{key}");
    }
    eprintln!(
        "joined {} clips: {} frames, {:.3} s, {}x{}, {} bytes, sha256 {}",
        parts.len(),
        r.frames,
        r.duration.as_secs_f64(),
        r.width,
        r.height,
        joined.size,
        joined.sha256
    );
    Ok(ExitCode::SUCCESS)
}
