//! The archiver: stream every succeeded job's video (and last frame) into the object store.
//!
//! One step claims the due job closest to losing its result (`url_expires_at`), streams the
//! video from its result URL into a multipart upload (hashing and counting on the way, checking
//! `Content-Length`), does the same for the last frame when the job has one, writes a JSON
//! sidecar next to them, and only then moves the job to `archived`. Nothing is held in memory
//! beyond a few upload parts (see `blob`).
//!
//! - Keys are deterministic (`archive.key_template`, dated by the job's creation), so a retry
//!   writes the same objects. The verified hash and size are recorded before an upload
//!   completes; an object found under the key with that size and hash counts as done, so a
//!   crash after the upload costs a read-back, not a new download.
//! - A 403/404/410 on a result URL, or a URL past its recorded expiry, means one fresh GET of
//!   the task. If Ark no longer has the task (or its file), the job fails with
//!   `result_expired`. A lost last frame alone does not fail a job whose video is safe.
//! - Transient failures are retried within the step (backon, jitter), then across steps: the
//!   job goes back to `succeeded` with a backoff in `next_attempt_at`. Credentials the store
//!   refuses are logged as an error and retried the same way; no job is ever dropped for them.
//! - A long transfer renews its lease; if the process dies, the lease lapses and another claim
//!   takes the job over (fencing the old holder out by the lease token).
//!
//! It deliberately does not verify video contents (that is the producer's job) and does not
//! delete anything from the object store.

use crate::stage::StageError;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::result::{
    Cost, Objects, ResultMeta, SIDECAR_FORMAT, Sidecar, StoredObject, Timings, result_meta,
    url_expiry,
};
use super::{Ctx, Outcome, ms};
use crate::ark::wire::{Task, TaskStatus};
use crate::blob::{BlobError, Digest, ObjectKey};
use crate::job::{Backoff, JobId};
use crate::store::{
    ArchiveClaim, ArchiveRecord, Job, LastError, RESULT_EXPIRED, StoreError, Timestamp, now_ms,
};

/// Quick retries of one transfer inside a step, before the job goes back to wait.
const TRANSFER_RETRIES: usize = 3;
/// A URL this close to its recorded expiry is refreshed before use rather than tried.
const URL_MARGIN_MS: i64 = 60_000;
/// Cap on the wait between archive attempts: a result URL lives a day or so, and a long
/// backoff must not make us miss it.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Failure code of an attempt the object store refused (credentials, permissions).
const DENIED: &str = "archive_denied";
/// Failure code of a result URL seedq refuses to fetch (private host, plain http).
const URL_REFUSED: &str = "archive_url_refused";
/// Failure code of any other failed attempt.
const ATTEMPT_FAILED: &str = "archive_failed";
/// `last_error_code` while the archive's own storage is full (ENOSPC, a quota).
const STORE_FULL: &str = "archive_store_full";
/// How soon a job whose upload met a full archive disk tries again. A full disk is the
/// machine's state, not the job's: an escalating per-job backoff (up to `MAX_RETRY_DELAY`)
/// would leave every job waiting minutes after an operator frees space, so they look again
/// at this fixed, short interval instead (it must resume promptly once space returns).
const STORE_FULL_RETRY: Duration = Duration::from_secs(3);

pub use crate::stage::archiver::{Archiver, last_frame_key, sidecar_key};

/// The archive loop.
///
/// # Errors
/// Only when the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken, instance: u32) -> anyhow::Result<()> {
    let role = super::Role::nth(&ctx, ctx.poke_archive.clone(), instance);
    super::stage_loop("archive", &ctx, role, shutdown, || step(&ctx)).await
}

/// Archives at most one job.
///
/// # Errors
/// Store failures (the job's lease then lets it be claimed again).
pub async fn step(ctx: &Ctx) -> Result<Outcome, StageError> {
    let Some(arch) = ctx.archive.clone() else {
        return Ok(Outcome::Idle(None));
    };
    let Some(claim) = ctx.store.claim_for_archive(&ctx.owner, ctx.lease()).await? else {
        return Ok(Outcome::Idle(ctx.store.next_archive_due().await?));
    };
    let span = tracing::info_span!("job", job_id = %claim.job.id, stage = "archive");
    archive_job(ctx, &arch, claim).instrument(span).await?;
    Ok(Outcome::Worked)
}

/// Why an archive attempt did not finish.
#[derive(Debug)]
enum Failure {
    /// The remote result is gone for good.
    Gone(String),
    /// The result URL is one seedq will not fetch (see [`super::safeurl`]).
    Refused(String),
    /// Worth another attempt. `denied`: the object store refused our credentials, which a
    /// quick retry will not fix. `full`: the archive's storage is full, which waits for an
    /// operator (told by the object store's error, [`BlobError::is_storage_full`]).
    Retry {
        error: anyhow::Error,
        denied: bool,
        full: bool,
    },
    /// The job store failed, or the job is no longer ours.
    Store(StoreError),
}

fn retry(error: anyhow::Error) -> Failure {
    Failure::Retry {
        error,
        denied: false,
        full: false,
    }
}

fn blob_failure(what: &'static str) -> impl FnOnce(BlobError) -> Failure {
    move |e| Failure::Retry {
        denied: e.is_denied(),
        full: e.is_storage_full(),
        error: anyhow::Error::new(e).context(what),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Video,
    Frame,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Frame => "last frame",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Kind::Video => "video/mp4",
            Kind::Frame => "image/png",
        }
    }
}

/// What happened to the last frame.
enum Frame {
    /// The job has none.
    NotRequested,
    Stored(ObjectKey, Digest),
    /// Asked for, but the remote copy is gone; the video was archived all the same.
    Missing(String),
}

struct Done {
    video: Digest,
    frame: Frame,
    archived_at: Timestamp,
}

async fn archive_job(ctx: &Ctx, arch: &Archiver, claim: ArchiveClaim) -> Result<(), StageError> {
    let job = &claim.job;
    let token = job.lease_token;
    let key = match arch.video_key(job) {
        Ok(k) => k,
        Err(e) => {
            return fail(ctx, job, token, "bad_archive_key", format!("{e:#}")).await;
        }
    };
    let mut work = Work {
        ctx,
        arch,
        claim: &claim,
        key: key.clone(),
        video_url: job.video_url.clone(),
        frame_url: job.last_frame_url.clone(),
        url_expires_at: job.url_expires_at,
        task: None,
        refreshed: false,
    };
    let started = std::time::Instant::now();
    let outcome = with_heartbeat(ctx, &job.id, token, work.run()).await;
    match outcome {
        Ok(done) => {
            crate::metrics::archive("archived", Some(done.video.size), Some(started.elapsed()));
            archived(ctx, arch, job, token, &key, done).await
        }
        Err(Failure::Gone(why)) => {
            crate::metrics::archive("failed", None, None);
            fail(ctx, job, token, RESULT_EXPIRED, why).await
        }
        Err(Failure::Refused(why)) => {
            crate::metrics::archive("failed", None, None);
            fail(ctx, job, token, URL_REFUSED, why).await
        }
        Err(Failure::Retry {
            error,
            denied,
            full,
        }) => {
            crate::metrics::archive("retry", None, None);
            retry_later(ctx, &claim, token, error, denied, full).await
        }
        Err(Failure::Store(StoreError::Conflict { .. })) => {
            tracing::warn!(
                "the job was taken over while archiving (its lease ran out); leaving it to the new holder"
            );
            Ok(())
        }
        Err(Failure::Store(e)) => Err(e.into()),
    }
}

/// Runs `fut`, renewing the job's lease every third of it meanwhile.
async fn with_heartbeat<F: Future>(ctx: &Ctx, id: &JobId, token: i64, fut: F) -> F::Output {
    let lease = ctx.lease();
    let every = (lease / 3).max(Duration::from_millis(1));
    tokio::pin!(fut);
    loop {
        // Cancel-safe: `fut` is polled by reference and never dropped here; the sleep only waits.
        tokio::select! {
            out = &mut fut => return out,
            _ = tokio::time::sleep(every) => {
                match ctx.store.extend_archive_lease(id, token, lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("lost the archive lease; the final write will tell"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot renew the archive lease"),
                }
            }
        }
    }
}

async fn archived(
    ctx: &Ctx,
    arch: &Archiver,
    job: &Job,
    token: i64,
    key: &ObjectKey,
    done: Done,
) -> Result<(), StageError> {
    let size = i64::try_from(done.video.size).unwrap_or(i64::MAX);
    let mut detail = format!("archived to {key} ({size} bytes)");
    let frame = match &done.frame {
        Frame::Stored(_, d) => Some((d.sha256.clone(), i64::try_from(d.size).unwrap_or(i64::MAX))),
        Frame::Missing(why) => {
            detail.push_str(&format!("; last frame missing: {why}"));
            None
        }
        Frame::NotRequested => None,
    };
    let rec = ArchiveRecord {
        key: key.to_string(),
        sha256: done.video.sha256.clone(),
        size,
        archived_at: done.archived_at,
        frame,
    };
    match ctx.store.mark_archived(&job.id, token, rec, detail).await {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            tracing::warn!("the job was taken over before it could be marked archived");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(key = %key, bytes = size, "archived");
    // A finished chain may be waiting for this shot to be stitched.
    ctx.poke_chain.notify_one();
    if arch.delete_remote
        && let Some(remote) = &job.remote_task_id
    {
        // After `archived` only: the remote copy is deleted once ours is safe, never before.
        match ctx.ark.delete(remote).await {
            Ok(()) => tracing::info!(task_id = %remote, "deleted the remote task record"),
            Err(e) => {
                tracing::warn!(task_id = %remote, error = %format!("{e:#}"), "cannot delete the remote task record; it expires by itself")
            }
        }
    }
    Ok(())
}

async fn fail(ctx: &Ctx, job: &Job, token: i64, code: &str, why: String) -> Result<(), StageError> {
    // The verb forgets any digest an attempt recorded: if the job is retried, a new task
    // makes a new video, and an old object under the same key must not pass for it.
    let detail = format!("{code}: {why}");
    match ctx
        .store
        .mark_archive_failed(&job.id, token, LastError::new(code, why.clone()), detail)
        .await
    {
        Ok(_) => {
            tracing::error!(code, reason = %why, "cannot archive; the job failed");
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn retry_later(
    ctx: &Ctx,
    claim: &ArchiveClaim,
    token: i64,
    error: anyhow::Error,
    denied: bool,
    full: bool,
) -> Result<(), StageError> {
    let backoff = Backoff {
        base: ctx.cfg.dispatch.backoff_base,
        max: ctx.cfg.dispatch.backoff_max.min(MAX_RETRY_DELAY),
    };
    let attempt = u32::try_from(claim.attempts).unwrap_or(u32::MAX);
    let delay = if full {
        STORE_FULL_RETRY
    } else {
        backoff.delay_random(attempt, None)
    };
    let message = describe(&error);
    let code = match (denied, full) {
        (true, _) => DENIED,
        (false, true) => STORE_FULL,
        (false, false) => ATTEMPT_FAILED,
    };
    let at = now_ms().saturating_add(ms(delay));
    let detail = format!(
        "archive attempt {attempt} failed; retrying in {}",
        humantime::format_duration(Duration::from_millis(u64::try_from(ms(delay)).unwrap_or(0)))
    );
    match ctx
        .store
        .archive_later(
            &claim.job.id,
            token,
            at,
            LastError::new(code, message.clone()),
            detail,
        )
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if full {
        tracing::error!(error = %message, store = %ctx.archive.as_ref().map_or("", |a| a.blob.url()), retry_in = ?delay,
            "the archive's storage is full; free space there (jobs retry every few seconds)");
    } else if denied {
        tracing::error!(error = %message, store = %ctx.archive.as_ref().map_or("", |a| a.blob.url()), retry_in = ?delay,
            "the object store refused our credentials or permissions; check [archive.s3] and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY");
    } else {
        tracing::warn!(error = %message, attempt, retry_in = ?delay, "archive attempt failed; will retry");
    }
    Ok(())
}

/// One archive attempt of one job.
struct Work<'a> {
    ctx: &'a Ctx,
    arch: &'a Archiver,
    claim: &'a ArchiveClaim,
    key: ObjectKey,
    video_url: Option<String>,
    frame_url: Option<String>,
    url_expires_at: Option<Timestamp>,
    /// The task from a refresh, when there was one (exact resolution, ratio… for the sidecar).
    task: Option<Task>,
    /// A fresh URL has been fetched in this attempt; a second refusal is then believed.
    refreshed: bool,
}

impl Work<'_> {
    fn job(&self) -> &Job {
        &self.claim.job
    }

    async fn run(&mut self) -> Result<Done, Failure> {
        let key = self.key.clone();
        let job = self.job();
        let recorded = match (&job.archive_key, &job.archive_sha256, job.archive_size) {
            (Some(k), Some(sha), Some(size)) if k == key.as_str() => Some((sha.clone(), size)),
            _ => None,
        };
        let video = match self.already_stored(&key, recorded).await? {
            Some(d) => {
                tracing::info!(key = %key, "found the verified video from an earlier attempt");
                d
            }
            None => self.transfer(Kind::Video, &key).await?,
        };
        let frame = if self.frame_url.is_some() {
            let fkey = last_frame_key(&key);
            match self.already_stored(&fkey, self.claim.frame.clone()).await? {
                Some(d) => Frame::Stored(fkey, d),
                None => match self.transfer(Kind::Frame, &fkey).await {
                    Ok(d) => Frame::Stored(fkey, d),
                    Err(Failure::Gone(why) | Failure::Refused(why)) => {
                        tracing::warn!(reason = %why, "the last frame is gone; archiving the video without it");
                        Frame::Missing(why)
                    }
                    Err(e) => return Err(e),
                },
            }
        } else {
            Frame::NotRequested
        };
        let archived_at = Timestamp::now();
        let sidecar = self.sidecar(&video, &frame, archived_at).to_bytes();
        self.arch
            .blob
            .put_bytes(&sidecar_key(&key), sidecar, "application/json")
            .await
            .map_err(blob_failure("writing the sidecar"))?;
        Ok(Done {
            video,
            frame,
            archived_at,
        })
    }

    /// An object already under `key` with the recorded size and hash.
    async fn already_stored(
        &self,
        key: &ObjectKey,
        recorded: Option<(String, i64)>,
    ) -> Result<Option<Digest>, Failure> {
        let Some((sha, size)) = recorded else {
            return Ok(None);
        };
        let head = self
            .arch
            .blob
            .head(key)
            .await
            .map_err(blob_failure("checking for an earlier copy"))?;
        if head.and_then(|s| i64::try_from(s).ok()) != Some(size) {
            return Ok(None);
        }
        let found = self
            .arch
            .blob
            .digest(key)
            .await
            .map_err(blob_failure("reading back an earlier copy"))?;
        Ok(found.filter(|d| d.sha256 == sha))
    }

    /// Downloads one file into the store, retrying transient failures with jittered backoff.
    async fn transfer(&mut self, kind: Kind, key: &ObjectKey) -> Result<Digest, Failure> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(TRANSFER_RETRIES)
            .with_jitter()
            .build();
        loop {
            match self.try_transfer(kind, key).await {
                Err(Failure::Retry {
                    error,
                    denied: false,
                    full,
                }) => match backoff.next() {
                    Some(wait) => {
                        tracing::warn!(file = kind.name(), error = %describe(&error), retry_in = ?wait, "transfer failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        return Err(Failure::Retry {
                            error,
                            denied: false,
                            full,
                        });
                    }
                },
                other => return other,
            }
        }
    }

    async fn try_transfer(&mut self, kind: Kind, key: &ObjectKey) -> Result<Digest, Failure> {
        let resp = loop {
            let url = self.url(kind).await?;
            // A URL we will not fetch (private host, plain http) is no transient failure:
            // retrying cannot change it, and it must not be filed.
            if let Err(why) = self.arch.urls.check_str(&url) {
                return Err(Failure::Refused(why));
            }
            let resp = self.arch.http.get(&url).send().await.map_err(|e| {
                retry(anyhow::Error::new(e).context(format!("downloading the {}", kind.name())))
            })?;
            let status = resp.status().as_u16();
            if resp.status().is_success() {
                break resp;
            }
            match status {
                403 | 404 | 410 if !self.refreshed => {
                    tracing::info!(
                        file = kind.name(),
                        status,
                        "result URL refused; getting a fresh one"
                    );
                    self.refresh().await?;
                }
                404 | 410 => {
                    return Err(Failure::Gone(format!(
                        "the {} file is gone (HTTP {status} on a fresh URL)",
                        kind.name()
                    )));
                }
                _ => {
                    return Err(retry(anyhow::anyhow!(
                        "downloading the {}: HTTP {status}",
                        kind.name()
                    )));
                }
            }
        };
        let expected = resp.content_length();
        let mut up = self
            .arch
            .blob
            .upload(key, kind.content_type())
            .await
            .map_err(blob_failure("starting the upload"))?;
        let body = std::pin::pin!(resp.bytes_stream());
        let started = std::time::Instant::now();
        let digest = match up.copy_from(body, expected).await {
            Ok(d) => d,
            Err(e) => {
                abort(up).await;
                let what = if e.is_source() {
                    "downloading (the upload was aborted)"
                } else {
                    "uploading"
                };
                return Err(blob_failure(what)(e));
            }
        };
        // Recorded before completing: once the object is visible, its expected hash is known.
        let id = &self.job().id;
        let token = self.job().lease_token;
        let size = i64::try_from(digest.size).unwrap_or(i64::MAX);
        let recorded = match kind {
            Kind::Video => {
                self.ctx
                    .store
                    .record_video_digest(id, token, key.to_string(), digest.sha256.clone(), size)
                    .await
            }
            Kind::Frame => {
                self.ctx
                    .store
                    .record_frame_digest(id, token, digest.sha256.clone(), size)
                    .await
            }
        };
        if let Err(e) = recorded {
            abort(up).await;
            return Err(Failure::Store(e));
        }
        tracing::debug!(file = kind.name(), bytes = digest.size, elapsed = ?started.elapsed(), "all bytes received and hashed; completing the upload");
        let done = up
            .finish()
            .await
            .map_err(blob_failure("completing the upload"))?;
        tracing::debug!(file = kind.name(), elapsed = ?started.elapsed(), "upload complete");
        Ok(done)
    }

    /// The URL to download `kind` from, refreshed first when missing or about to expire.
    async fn url(&mut self, kind: Kind) -> Result<String, Failure> {
        let expiring = self
            .url_expires_at
            .is_some_and(|t| t.ms() <= now_ms() + URL_MARGIN_MS);
        let current = match kind {
            Kind::Video => &self.video_url,
            Kind::Frame => &self.frame_url,
        };
        if (expiring || current.is_none()) && !self.refreshed {
            self.refresh().await?;
        }
        let current = match kind {
            Kind::Video => &self.video_url,
            Kind::Frame => &self.frame_url,
        };
        current.clone().ok_or_else(|| {
            Failure::Gone(format!("ark reports no {} URL for the task", kind.name()))
        })
    }

    /// One fresh GET of the task for new result URLs.
    async fn refresh(&mut self) -> Result<(), Failure> {
        self.refreshed = true;
        let Some(remote) = self.job().remote_task_id.clone() else {
            return Err(Failure::Gone("the job has no remote task id".into()));
        };
        let task = match self.ctx.ark.get(&remote).await {
            Ok(t) => t,
            Err(e) if matches!(e.status(), Some(404 | 410)) => {
                return Err(Failure::Gone(format!("ark no longer knows task {remote}")));
            }
            Err(e) => {
                return Err(retry(
                    anyhow::Error::new(e).context("getting the task for a fresh result URL"),
                ));
            }
        };
        if task.status != TaskStatus::Succeeded {
            return Err(Failure::Gone(format!(
                "task {remote} is now {}",
                task.status.as_str()
            )));
        }
        let content = task.content.clone().unwrap_or_default();
        let Some(video) = content.video_url else {
            return Err(Failure::Gone(format!(
                "task {remote} no longer has a video URL"
            )));
        };
        let expires = url_expiry(&video, Timestamp::now());
        self.ctx
            .store
            .record_archive_urls(
                &self.job().id,
                self.job().lease_token,
                video.clone(),
                content.last_frame_url.clone(),
                expires,
            )
            .await
            .map_err(Failure::Store)?;
        self.video_url = Some(video);
        if content.last_frame_url.is_some() {
            self.frame_url = content.last_frame_url;
        }
        self.url_expires_at = Some(expires);
        self.task = Some(task);
        tracing::info!("got fresh result URLs");
        Ok(())
    }

    /// The JSON sidecar: who, what was asked, what came out, what it cost, when, and the
    /// hashes of the stored objects.
    fn sidecar(&self, video: &Digest, frame: &Frame, archived_at: Timestamp) -> Sidecar {
        let job = self.job();
        let request = serde_json::from_str::<Value>(&job.request_json)
            .map(redact_images)
            .unwrap_or(Value::Null);
        // What the task said about its output (exact even for `adaptive` or defaulted
        // parameters), else what was asked for.
        let meta = match &self.task {
            Some(t) => result_meta(t),
            None => ResultMeta::from_json(self.claim.result_meta.as_deref()).unwrap_or_default(),
        };
        let asked = |name: &str| request.get(name).filter(|v| !v.is_null());
        let asked_str = |name: &str| asked(name).and_then(Value::as_str).map(str::to_string);
        let asked_int = |name: &str| asked(name).and_then(Value::as_i64);
        let resolution = meta
            .resolution
            .or_else(|| asked_str("resolution"))
            .or_else(|| {
                // Jobs recorded before result_meta existed still know it from their shape.
                job.shape
                    .as_deref()
                    .and_then(|s| s.split('/').next())
                    .map(str::to_string)
            });
        let tokens = job.usage_tokens.or(job.est_tokens);
        let estimated_cost = match (self.ctx.catalogue.get(&job.model), tokens) {
            (Some(spec), Some(t)) => Some(Cost {
                amount: crate::catalogue::cost(spec, t, job.is_flex()),
                currency: "CNY".into(),
                tokens: t,
                basis: if job.usage_tokens.is_some() {
                    "usage"
                } else {
                    "estimate"
                }
                .into(),
            }),
            _ => None,
        };
        let object = |key: &ObjectKey, d: &Digest| StoredObject {
            key: key.as_str().to_string(),
            sha256: d.sha256.clone(),
            size: d.size,
        };
        let (last_frame, last_frame_missing) = match frame {
            Frame::Stored(k, d) => (Some(object(k, d)), None),
            Frame::Missing(why) => (None, Some(why.clone())),
            Frame::NotRequested => (None, None),
        };
        Sidecar {
            format: SIDECAR_FORMAT.into(),
            job_id: job.id.as_str().to_string(),
            task_id: job.remote_task_id.clone(),
            model: job.model.clone(),
            service_tier: job.service_tier,
            seed: meta.seed.or_else(|| asked_int("seed")),
            tags: job.tags.clone(),
            batch: job.batch_id.clone(),
            resolution,
            ratio: meta.ratio.or_else(|| asked_str("ratio")),
            duration: meta.duration.or_else(|| asked_int("duration")),
            frames: meta.frames.or_else(|| asked_int("frames")),
            framespersecond: meta
                .framespersecond
                .or_else(|| asked_int("framespersecond")),
            revised_prompt: meta.revised_prompt,
            shape: job.shape.clone(),
            usage_tokens: job.usage_tokens,
            estimated_cost,
            timings: Timings {
                queued: rfc3339(Some(job.created_at)),
                submitted: rfc3339(job.submitted_at),
                finished: rfc3339(job.finished_at),
                archived: rfc3339(Some(archived_at)),
            },
            objects: Objects {
                video: object(&self.key, video),
                last_frame,
                last_frame_missing,
            },
            request,
        }
    }
}

async fn abort(up: crate::blob::Upload) {
    if let Err(e) = up.abort().await {
        tracing::warn!(error = %describe(&anyhow::Error::new(e)), "cannot abort the upload; its parts expire by the bucket's rules");
    }
}

/// An error and its causes on one line. object_store's messages already include their
/// sources, so a cause whose text is already there is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The request with every inline image (`data:` URL) replaced by `sha256:<hex>` of its bytes:
/// the sidecar identifies the inputs without carrying megabytes of base64.
fn redact_images(v: Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("data:") => {
            let digest = match crate::request::image::decode_data_url(&s) {
                Ok((_, bytes)) => Sha256::digest(&bytes),
                Err(_) => Sha256::digest(s.as_bytes()),
            };
            Value::String(format!("sha256:{}", hex::encode(digest)))
        }
        Value::Array(a) => Value::Array(a.into_iter().map(redact_images).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, redact_images(v))).collect())
        }
        other => other,
    }
}

fn rfc3339(at: Option<Timestamp>) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at?.ms()) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn inline_images_become_hashes() {
        use base64::Engine;
        let png = crate::media::encode_png(&crate::media::RgbImage {
            width: 2,
            height: 2,
            pixels: vec![0; 12],
        })
        .expect("png");
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        );
        let body = json!({"model": "m", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": url}, "role": "first_frame"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ]});
        let out = redact_images(body);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&png)));
        assert_eq!(out["content"][1]["image_url"]["url"], want.as_str());
        assert_eq!(
            out["content"][2]["image_url"]["url"],
            "https://example.com/a.png"
        );
        assert_eq!(out["content"][0]["text"], "hi");
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("inner failed")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("outer failed: {0}")]
        struct Outer(#[source] Inner);
        let e = anyhow::Error::new(Outer(Inner)).context("doing it");
        assert_eq!(describe(&e), "doing it: outer failed: inner failed");
        let e = anyhow::Error::new(Inner).context("doing it");
        assert_eq!(describe(&e), "doing it: inner failed");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            rfc3339(Some(Timestamp::from_ms(1_778_754_737_123))).as_deref(),
            Some("2026-05-14T10:32:17.123Z")
        );
        assert_eq!(rfc3339(None), None);
    }
}
