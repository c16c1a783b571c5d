//! `seedq fetch ID [-o FILE]`: copy an archived video (or its last frame or sidecar) out of
//! the object store.
//!
//! Streams: the object never sits in memory whole. The bytes are hashed on the way and checked
//! against the hash recorded when the job was archived; a file is written under a `.part`
//! name and renamed only once it checks out, so a failed fetch leaves no plausible-looking
//! file behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Ctx;
use crate::blob::{BlobStore, ObjectKey};
use crate::job::JobState;
use crate::stage::archiver::{last_frame_key, sidecar_key};

/// `seedq fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The job id.
    pub id: String,
    /// Where to write; `-` for stdout. Default: the object's file name in the current directory.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Fetch the JSON sidecar instead of the video.
    #[arg(long, conflicts_with = "last_frame")]
    pub sidecar: bool,
    /// Fetch the last frame (PNG) instead of the video.
    #[arg(long)]
    pub last_frame: bool,
}

/// Creates the `.part` file afresh, never through a symbolic link: a link planted at that
/// name would make the fetch overwrite whatever it points to. A leftover regular `.part` from
/// an interrupted fetch is replaced; anything else there is refused. `create_new` (O_EXCL)
/// does not follow a link that appears between the check and the open.
async fn create_part(part: &Path) -> anyhow::Result<tokio::fs::File> {
    match tokio::fs::symlink_metadata(part).await {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symbolic link; refusing to write through it (remove it or choose another -o)",
            part.display()
        ),
        Ok(m) if m.is_file() => tokio::fs::remove_file(part)
            .await
            .with_context(|| format!("removing the leftover {}", part.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a regular file; remove it or choose another -o",
            part.display()
        ),
        Err(_) => {}
    }
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .await
        .with_context(|| format!("creating {}", part.display()))
}

pub(crate) async fn fetch(ctx: &Ctx, a: FetchArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let Some(job) = store.job(&a.id).await? else {
        eprintln!("error: no job with id {}", a.id);
        return Ok(ExitCode::from(1));
    };
    let video = match (&job.archive_key, job.state) {
        (Some(k), JobState::Archived) => ObjectKey::parse(k).context("the recorded archive key")?,
        _ => {
            eprintln!("error: job {} is {}, not archived", a.id, job.state);
            return Ok(ExitCode::from(1));
        }
    };
    if ctx.cfg.archive.url.is_empty() {
        bail!("archiving is off (archive.url is empty), so there is no store to fetch from");
    }
    let (key, expected) = if a.sidecar {
        (sidecar_key(&video), None)
    } else if a.last_frame {
        let Some(d) = store.frame_digest(&a.id).await? else {
            eprintln!("error: job {} has no archived last frame", a.id);
            return Ok(ExitCode::from(1));
        };
        (last_frame_key(&video), Some(d))
    } else {
        let d = job.archive_sha256.clone().zip(job.archive_size);
        (video, d)
    };
    let blob = BlobStore::open(&ctx.cfg.archive.url, &ctx.cfg.archive.s3)
        .context("opening archive.url")?;
    let Some((_, mut stream)) = blob.get(&key).await? else {
        bail!("{key} is missing from {}", blob.url());
    };

    let output = a
        .output
        .unwrap_or_else(|| PathBuf::from(key.as_str().rsplit('/').next().unwrap_or(key.as_str())));
    let to_stdout = output.as_os_str() == "-";
    let part = {
        let mut p = output.clone().into_os_string();
        p.push(".part");
        PathBuf::from(p)
    };
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(create_part(&part).await?)
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let copied: anyhow::Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading {key}"))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.context("writing the output")?;
        }
        out.flush().await.context("writing the output")?;
        Ok(())
    }
    .await;
    drop(out);
    let sha = hex::encode(hasher.finalize());
    let checked = copied.and_then(|()| match &expected {
        Some((want, want_size)) if *want != sha || u64::try_from(*want_size).ok() != Some(size) => {
            bail!(
                "{key} does not match what was archived: expected sha256 {want} ({want_size} bytes), got {sha} ({size} bytes)"
            )
        }
        _ => Ok(()),
    });
    if let Err(e) = checked {
        if !to_stdout {
            let _ = std::fs::remove_file(&part);
        }
        return Err(e);
    }
    if !to_stdout {
        std::fs::rename(&part, &output)
            .with_context(|| format!("renaming {} to {}", part.display(), output.display()))?;
        let mut so = std::io::stdout().lock();
        writeln!(so, "{}", output.display())?;
    }
    eprintln!("{key}: {size} bytes, sha256 {sha}");
    Ok(ExitCode::SUCCESS)
}
