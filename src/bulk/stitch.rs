//! Joining archived videos into one MP4 and archiving the result with a sidecar.
//!
//! Used by the chain stage (every shot of a chain archived → one video next to the shots)
//! and by `seedq stitch KEY…`. The parts are streamed out of the object store into a private
//! temporary directory (checked against the sha256 recorded at archive time when there is
//! one), joined losslessly by [`media::stitch_files`] on a blocking thread, and the result is
//! streamed back with a JSON sidecar listing the parts. Clips that cannot be joined (another
//! size or other H.264 parameter sets) are refused before anything is written, with an error
//! naming the part by its label and key rather than a temporary path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::blob::{BlobError, BlobStore, Digest, ObjectKey};
use crate::media::{self, StitchError, StitchReport};

/// Sidecar format tag, bumped if its shape changes incompatibly.
pub const SIDECAR_FORMAT: &str = "seedq.stitch/1";
/// Read size when uploading the joined file.
const CHUNK: usize = 1 << 20;

/// One clip to join.
#[derive(Clone, Debug)]
pub struct Part {
    /// How errors name it: `shot 2`, or the key itself.
    pub label: String,
    pub key: ObjectKey,
    /// The hash recorded when it was archived; checked while it is read back.
    pub sha256: Option<String>,
    /// For the sidecar.
    pub job: Option<String>,
    pub shot: Option<i64>,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{part} ({key}) is not in the archive")]
    Missing { part: String, key: String },
    #[error("{part} ({key}) does not match the sha256 recorded when it was archived")]
    Corrupt { part: String, key: String },
    /// The clips cannot be joined losslessly; the message names the part.
    #[error("cannot join the clips: {0}")]
    Incompatible(String),
    #[error("object store")]
    Blob(#[from] BlobError),
    #[error("local temporary file")]
    Io(#[from] std::io::Error),
}

impl JoinError {
    /// Worth another attempt later (the store or the disk), not a property of the clips.
    pub fn is_transient(&self) -> bool {
        matches!(self, JoinError::Blob(_) | JoinError::Io(_))
    }
}

/// A private temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/seedq-<what>-<random>`.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(what: &str) -> std::io::Result<Self> {
        let name = format!(
            "seedq-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in $TMPDIR is harmless and cleaned by the OS.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A joined video in a temporary directory, ready to be stored or copied out.
#[derive(Debug)]
pub struct Joined {
    _dir: TempDir,
    pub path: PathBuf,
    pub report: StitchReport,
    pub sha256: String,
    pub size: u64,
    pub parts: Vec<(Part, Digest)>,
}

/// Downloads `parts` and joins them, in order.
///
/// # Errors
/// See [`JoinError`]: a missing or corrupt part, clips that cannot be joined, or a store or
/// disk failure (transient).
pub async fn join(blob: &BlobStore, parts: &[Part]) -> Result<Joined, JoinError> {
    let dir = TempDir::new("stitch")?;
    let mut inputs = Vec::with_capacity(parts.len());
    let mut digests = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let path = dir.path().join(format!("part-{:04}.mp4", i + 1));
        let d = download(blob, p, &path).await?;
        inputs.push(path);
        digests.push((p.clone(), d));
    }
    let out = dir.path().join("joined.mp4");
    let (ins, o) = (inputs.clone(), out.clone());
    let report = tokio::task::spawn_blocking(move || media::stitch_files(&ins, &o))
        .await
        .map_err(|e| std::io::Error::other(format!("the stitching thread failed: {e}")))?
        .map_err(|e| name_parts(e, &inputs, parts))?;
    let (sha256, size) = hash_file(&out).await?;
    Ok(Joined {
        _dir: dir,
        path: out,
        report,
        sha256,
        size,
        parts: digests,
    })
}

/// A stitch error with the temporary paths replaced by the parts' labels and keys.
fn name_parts(e: StitchError, inputs: &[PathBuf], parts: &[Part]) -> JoinError {
    if let StitchError::Io { source, .. } = e {
        return JoinError::Io(source);
    }
    let mut msg = e.to_string();
    for (path, p) in inputs.iter().zip(parts) {
        msg = msg.replace(
            &path.display().to_string(),
            &format!("{} ({})", p.label, p.key),
        );
    }
    JoinError::Incompatible(msg)
}

async fn download(blob: &BlobStore, p: &Part, path: &Path) -> Result<Digest, JoinError> {
    let Some((_, mut stream)) = blob.get(&p.key).await? else {
        return Err(JoinError::Missing {
            part: p.label.clone(),
            key: p.key.to_string(),
        });
    };
    let mut file = tokio::fs::File::create(path).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    let sha256 = hex::encode(hasher.finalize());
    if p.sha256.as_deref().is_some_and(|want| want != sha256) {
        return Err(JoinError::Corrupt {
            part: p.label.clone(),
            key: p.key.to_string(),
        });
    }
    Ok(Digest { sha256, size })
}

async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// `2026-05-14T10:00:00.123Z`, or the raw number if it is out of range.
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The sidecar of a joined video: what it is made of.
pub fn sidecar(joined: &Joined, key: &ObjectKey, chain: Option<&str>, now_ms: i64) -> Bytes {
    let parts: Vec<serde_json::Value> = joined
        .parts
        .iter()
        .zip(&joined.report.parts)
        .map(|((p, d), info)| {
            json!({
                "shot": p.shot,
                "job": p.job,
                "key": p.key.as_str(),
                "sha256": d.sha256,
                "size": d.size,
                "frames": info.frames,
                "duration_ms": millis(info.duration),
            })
        })
        .collect();
    let v = json!({
        "format": SIDECAR_FORMAT,
        "key": key.as_str(),
        "chain": chain,
        "sha256": joined.sha256,
        "size": joined.size,
        "width": joined.report.width,
        "height": joined.report.height,
        "frames": joined.report.frames,
        "duration_ms": millis(joined.report.duration),
        "parts": parts,
        "stitched_at": rfc3339(now_ms),
    });
    Bytes::from(serde_json::to_vec_pretty(&v).unwrap_or_default())
}

/// Uploads a joined video to `key` (streaming from its file) and its sidecar next to it.
///
/// # Errors
/// The store refused a write, or the file could not be read.
pub async fn store(
    blob: &BlobStore,
    joined: &Joined,
    key: &ObjectKey,
    chain: Option<&str>,
    now_ms: i64,
) -> Result<Digest, JoinError> {
    let mut up = blob.upload(key, "video/mp4").await?;
    let copied = async {
        let mut f = tokio::fs::File::open(&joined.path).await?;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            up.write(Bytes::from(buf)).await?;
        }
        Ok::<(), JoinError>(())
    }
    .await;
    if let Err(e) = copied {
        // Best effort: an unfinished multipart upload is invisible anyway.
        let _ = up.abort().await;
        return Err(e);
    }
    let digest = up.finish().await?;
    blob.put_bytes(
        &key.sibling(".json"),
        sidecar(joined, key, chain, now_ms),
        "application/json",
    )
    .await?;
    Ok(digest)
}

/// The key of a chain's joined video: next to its first shot, `chain-<id>.mp4`.
///
/// # Errors
/// The chain id does not make a valid key.
pub fn chain_key(first_shot: &ObjectKey, chain: &str) -> Result<ObjectKey, BlobError> {
    let s = first_shot.as_str();
    let dir = s.rfind('/').map_or("", |i| &s[..=i]);
    ObjectKey::parse(&format!("{dir}chain-{chain}.mp4"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_videos_sit_next_to_the_first_shot() {
        let k = ObjectKey::parse("2026-05-14/m/01jabc.mp4").expect("key");
        assert_eq!(
            chain_key(&k, "story-1").expect("chain key").as_str(),
            "2026-05-14/m/chain-story-1.mp4"
        );
        let top = ObjectKey::parse("a.mp4").expect("key");
        assert_eq!(chain_key(&top, "x").expect("key").as_str(), "chain-x.mp4");
    }
}
