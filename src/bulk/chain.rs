//! Chains of continuous shots: each shot starts from the previous one's last frame.
//!
//! Admission (`seedq chain submit`) validates every shot up front: a later shot is prepared
//! with a placeholder first frame of its predecessor's output size (so the mode, ratio and
//! token estimate are checked as they will be), then stored *held* without it (see
//! `store/chain.rs`). Every shot but the last asks for `return_last_frame`.
//!
//! The chain stage owns what happens next. For each chain whose current shot has left the
//! remote states:
//! - succeeded: download its last frame (the result URL; the archived copy or a fresh URL
//!   when that has expired), embed it as the next shot's `first_frame`, re-check the body with
//!   [`request::check`] and release the shot (due now) in one transaction. The body is final
//!   before the shot's first POST, so "never pay twice" holds as for any job. After the last
//!   shot the chain waits for the archiver and is stitched (`bulk::stitch`).
//! - failed, dead or expired: retry the shot (same frozen body) up to the chain's
//!   `max_retries`, then stop the chain: its held shots are cancelled, the finished ones stay
//!   archived, and `chain show` reports why.
//! - cancelled: the chain is cancelled.
//!
//! Chains run side by side with each other and with ordinary jobs: released shots are plain
//! queued jobs under the same limits.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::stitch::{self, JoinError, Part};
use crate::ark::wire::{ContentItem, CreateTaskRequest, MediaUrl};
use crate::blob::ObjectKey;
use crate::job::{Backoff, JobState};
use crate::request::{self, image};
use crate::stage::archiver::last_frame_key;
use crate::stage::{Ctx, Outcome, StageContext, StageError};
use crate::store::{
    Chain, ChainState, ChainWrite, HELD, RetryOutcome, Shot, Stitched, Timestamp, now_ms,
};

/// Chains looked at per step.
const CHAINS_PER_STEP: u32 = 16;
/// The chain stage's idle poll, for changes no stage pokes about (it is poked on every shot
/// that finishes or is archived).
const IDLE_POLL: std::time::Duration = std::time::Duration::from_secs(30);
/// Attempts at stitching a finished chain (store or disk trouble) before it is failed.
const STITCH_ATTEMPTS: i64 = 5;
/// The output size assumed for a predecessor whose model's pixel table is unknown.
const DEFAULT_SIZE: (u32, u32) = (1280, 720);

/// A PNG data URL of `size`, standing in for the previous shot's last frame while a chain
/// is validated at admission. It is never sent anywhere.
///
/// # Errors
/// The PNG cannot be encoded (an impossible size).
pub fn placeholder_frame(size: Option<(u32, u32)>) -> anyhow::Result<String> {
    let (width, height) = size.unwrap_or(DEFAULT_SIZE);
    let img = crate::media::RgbImage {
        width,
        height,
        pixels: vec![0; (width as usize) * (height as usize) * 3],
    };
    let png = crate::media::encode_png(&img).context("encoding a placeholder frame")?;
    let info = image::check(&png)
        .map_err(|p| anyhow::anyhow!("placeholder frame {width}x{height}: {p:?}"))?;
    Ok(image::to_data_url(&info, &png))
}

/// Removes the image item whose URL is `url` (the placeholder) from a body.
pub fn strip_image(req: &mut CreateTaskRequest, url: &str) {
    req.content
        .retain(|i| !matches!(i, ContentItem::ImageUrl { image_url, .. } if image_url.url == url));
}

/// Adds `url` as the `first_frame` image right after the text prompt, where `prepare` puts
/// a first frame.
pub fn insert_first_frame(req: &mut CreateTaskRequest, url: String) {
    let at = req
        .content
        .iter()
        .position(|i| matches!(i, ContentItem::Text { .. }))
        .map_or(0, |i| i + 1);
    req.content.insert(
        at,
        ContentItem::ImageUrl {
            image_url: MediaUrl { url },
            role: Some("first_frame".into()),
        },
    );
}

/// The chain stage's loop.
///
/// # Errors
/// Only when the store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Woken by the poller (a shot left `submitted`) and the archiver (a shot is archived);
    // the slow idle poll only catches what no poke announces, such as a user's cancel.
    let role = crate::stage::Role {
        poke: Some(ctx.poke_chain.clone()),
        idle: Some(ctx.cfg.dispatch.idle_interval.max(IDLE_POLL)),
        cascade: false,
    };
    crate::stage::stage_loop("chain", &ctx, role, shutdown, || step(&ctx)).await
}

/// Advances every due chain once.
///
/// # Errors
/// Store failures.
pub async fn step(ctx: &Ctx) -> Result<Outcome, StageError> {
    let chains = ctx.store.chains_due(CHAINS_PER_STEP).await?;
    if chains.is_empty() {
        // A chain backing off (a frame that did not download) says when to look again.
        return Ok(Outcome::Idle(ctx.store.next_chain_check().await?));
    }
    for chain in chains {
        let span = tracing::info_span!("chain", chain_id = %chain.id, stage = "chain");
        advance(ctx, chain).instrument(span).await?;
    }
    Ok(Outcome::Worked)
}

fn backoff(ctx: &Ctx) -> Backoff {
    Backoff {
        base: ctx.cfg.dispatch.backoff_base,
        max: ctx.cfg.dispatch.backoff_max,
    }
}

fn later(ctx: &Ctx, attempt: i64) -> Timestamp {
    let d = backoff(ctx).delay_random(u32::try_from(attempt.max(1)).unwrap_or(u32::MAX), None);
    Timestamp::now() + d
}

async fn advance(ctx: &Ctx, chain: Chain) -> Result<(), StageError> {
    match chain.state {
        ChainState::Running => advance_running(ctx, &chain).await,
        ChainState::Stitching => stitch_chain(ctx, &chain).await,
        _ => Ok(()),
    }
}

/// Stops a chain; its held shots are cancelled with it.
async fn stop(
    ctx: &Ctx,
    chain: &Chain,
    from: ChainState,
    to: ChainState,
    why: String,
) -> Result<(), StageError> {
    if ctx
        .store
        .set_chain_state(&chain.id, from, to, Some(why.clone()))
        .await?
        == ChainWrite::Done
    {
        if to == ChainState::Failed {
            tracing::error!(reason = %why, "chain stopped");
        } else {
            tracing::warn!(reason = %why, state = %to, "chain stopped");
        }
    }
    Ok(())
}

async fn advance_running(ctx: &Ctx, chain: &Chain) -> Result<(), StageError> {
    let shots = ctx.store.chain_shots(&chain.id).await?;
    let Some(cur) = shots.iter().find(|s| s.shot == chain.released) else {
        let why = format!("shot {} is missing from the job store", chain.released);
        return stop(ctx, chain, ChainState::Running, ChainState::Failed, why).await;
    };
    let job = &cur.job;
    match job.state {
        JobState::Succeeded | JobState::Archiving | JobState::Archived => {
            if chain.released >= chain.shots {
                let to = if ctx.archive.is_some() {
                    ChainState::Stitching
                } else {
                    ChainState::Done
                };
                if ctx
                    .store
                    .set_chain_state(&chain.id, ChainState::Running, to, None)
                    .await?
                    == ChainWrite::Done
                {
                    tracing::info!(shots = chain.shots, next = %to, "every shot succeeded");
                }
                return Ok(());
            }
            let Some(next) = shots.iter().find(|s| s.shot == chain.released + 1) else {
                let why = format!("shot {} is missing from the job store", chain.released + 1);
                return stop(ctx, chain, ChainState::Running, ChainState::Failed, why).await;
            };
            release(ctx, chain, cur, next).await
        }
        JobState::Failed | JobState::Dead | JobState::Expired => {
            let reason = match (&job.last_error_code, &job.last_error_message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => job.state.to_string(),
            };
            if chain.retries < chain.max_retries {
                let note = format!(
                    "shot {} {} ({reason}); retry {} of {}",
                    cur.shot,
                    job.state,
                    chain.retries + 1,
                    chain.max_retries
                );
                if ctx
                    .store
                    .chain_retry(
                        &chain.id,
                        ChainState::Running,
                        chain.retries,
                        Timestamp::now(),
                        note.clone(),
                    )
                    .await?
                    == ChainWrite::Done
                {
                    match ctx.store.retry(job.id.as_str()).await? {
                        RetryOutcome::Requeued => {
                            tracing::warn!(shot = cur.shot, "{note}");
                            ctx.poke_dispatch.notify_one();
                        }
                        other => {
                            tracing::warn!(shot = cur.shot, outcome = ?other, "the shot could not be retried")
                        }
                    }
                }
                Ok(())
            } else {
                let why = format!(
                    "shot {} {} after {} retr{}: {reason}",
                    cur.shot,
                    job.state,
                    chain.retries,
                    if chain.retries == 1 { "y" } else { "ies" }
                );
                stop(ctx, chain, ChainState::Running, ChainState::Failed, why).await
            }
        }
        JobState::Cancelled => {
            let why = format!("shot {} was cancelled", cur.shot);
            stop(ctx, chain, ChainState::Running, ChainState::Cancelled, why).await
        }
        // Still on its way: `chains_due` does not return such chains; nothing to do.
        _ => Ok(()),
    }
}

/// Why the previous shot's last frame could not be had.
enum FrameError {
    /// Try again later (the URL or the store did not answer).
    Later(anyhow::Error),
    /// It will never be there.
    Gone(String),
}

/// Completes and releases `next` with `prev`'s last frame.
async fn release(ctx: &Ctx, chain: &Chain, prev: &Shot, next: &Shot) -> Result<(), StageError> {
    if next.job.state != JobState::Queued || next.job.next_attempt_at != HELD {
        // Cancelled (or otherwise moved on) while it waited.
        let why = format!(
            "shot {} is {} and cannot be released",
            next.shot, next.job.state
        );
        let to = if next.job.state == JobState::Cancelled {
            ChainState::Cancelled
        } else {
            ChainState::Failed
        };
        return stop(ctx, chain, ChainState::Running, to, why).await;
    }
    let bytes = match last_frame(ctx, prev).await {
        Ok(b) => b,
        Err(FrameError::Later(e)) => {
            let why = format!("cannot fetch the last frame of shot {}: {e:#}", prev.shot);
            tracing::warn!(reason = %why, "will try again");
            ctx.store.chain_later(&chain.id, later(ctx, 3), why).await?;
            return Ok(());
        }
        Err(FrameError::Gone(why)) => {
            let why = format!("shot {} has no last frame: {why}", prev.shot);
            return stop(ctx, chain, ChainState::Running, ChainState::Failed, why).await;
        }
    };
    let info = match image::check(&bytes) {
        Ok(i) => i,
        Err(p) => {
            let (value, problem, allowed) = p.describe();
            let why = format!(
                "the last frame of shot {} cannot start shot {}: image {value} {problem}: {allowed}",
                prev.shot, next.shot
            );
            return stop(ctx, chain, ChainState::Running, ChainState::Failed, why).await;
        }
    };
    // `chain_shots` leaves the bodies out; this one is needed.
    let stored = ctx
        .store
        .job(next.job.id.as_str())
        .await?
        .ok_or_else(|| StageError::msg(format!("shot {} vanished", next.shot)))?;
    let mut req: CreateTaskRequest = serde_json::from_str(&stored.request_json)
        .stage_context(format!("shot {}'s stored body", next.shot))?;
    insert_first_frame(&mut req, image::to_data_url(&info, &bytes));
    let effective = match request::check(&req, &ctx.catalogue) {
        Ok(e) => e,
        Err(inv) => {
            let why = format!(
                "shot {} with the last frame of shot {}: {inv}",
                next.shot, prev.shot
            );
            return stop(ctx, chain, ChainState::Running, ChainState::Failed, why).await;
        }
    };
    let body = serde_json::to_string(&req).stage_context("serialising the released body")?;
    let est = effective.tokens(ctx.catalogue.get(&next.job.model));
    let detail = format!(
        "released: first frame is the last frame of shot {} (job {}, {}x{})",
        prev.shot, prev.job.id, info.width, info.height
    );
    match ctx
        .store
        .release_shot(
            &chain.id,
            next.shot,
            &next.job.id,
            next.job.lease_token,
            body,
            est,
            effective.expires_after,
            detail,
        )
        .await?
    {
        ChainWrite::Done => {
            tracing::info!(shot = next.shot, job_id = %next.job.id, "released the next shot");
            ctx.poke_dispatch.notify_one();
        }
        // Another process released it, or the user cancelled it: the next look decides.
        ChainWrite::Conflict => {}
    }
    Ok(())
}

/// The previous shot's last frame: from its result URL, else from the archive, else from a
/// fresh URL of the task.
async fn last_frame(ctx: &Ctx, prev: &Shot) -> Result<Vec<u8>, FrameError> {
    let job = &prev.job;
    let mut first_error: Option<anyhow::Error> = None;
    if let Some(url) = &job.last_frame_url {
        match download(ctx, url).await {
            Ok(b) => return Ok(b),
            Err(e) => first_error = Some(e),
        }
    }
    if let (Some(arch), Some(key)) = (&ctx.archive, &job.archive_key)
        && let Ok(video) = ObjectKey::parse(key)
    {
        match read_object(arch.blob(), &last_frame_key(&video)).await {
            Ok(Some(b)) => return Ok(b),
            Ok(None) => {}
            Err(e) => return Err(FrameError::Later(e)),
        }
    }
    let Some(remote) = &job.remote_task_id else {
        return Err(FrameError::Gone("the shot has no remote task".into()));
    };
    match ctx.ark.get(remote).await {
        Ok(task) => match task.content.and_then(|c| c.last_frame_url) {
            Some(url) => download(ctx, &url).await.map_err(FrameError::Later),
            None if job.last_frame_url.is_none() => Err(FrameError::Gone(
                "the task returned none (was return_last_frame honoured?)".into(),
            )),
            None => Err(FrameError::Later(first_error.unwrap_or_else(|| {
                anyhow::anyhow!("the task no longer lists its last frame")
            }))),
        },
        Err(e) if e.status() == Some(404) => Err(FrameError::Gone(format!(
            "ark no longer knows task {remote}, and the frame is not archived"
        ))),
        Err(e) => Err(FrameError::Later(e.into())),
    }
}

/// Largest last frame accepted (the API's input limit; a frame is far smaller).
const MAX_FRAME_BYTES: usize = image::MAX_IMAGE_BYTES;

async fn download(ctx: &Ctx, url: &str) -> anyhow::Result<Vec<u8>> {
    // Only public https URLs (or trusted ones), redirects included.
    let (client, urls) = crate::stage::safeurl::download_client(&ctx.cfg)?;
    urls.check_str(url).map_err(anyhow::Error::msg)?;
    let resp = client
        .get(url)
        .send()
        .await
        .context("requesting the last frame")?
        .error_for_status()
        .context("the last frame's URL refused")?;
    // Streamed against the cap: a hostile URL must not fill memory before the size check.
    crate::ark::read_capped(resp, MAX_FRAME_BYTES)
        .await
        .context("reading the last frame")?
        .ok_or_else(|| {
            anyhow::anyhow!("the last frame is over {MAX_FRAME_BYTES} bytes, the input limit")
        })
}

async fn read_object(
    blob: &crate::blob::BlobStore,
    key: &ObjectKey,
) -> anyhow::Result<Option<Vec<u8>>> {
    use futures::StreamExt;
    let Some((_, mut stream)) = blob.get(key).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
        anyhow::ensure!(
            out.len() < MAX_FRAME_BYTES,
            "the archived last frame is too large"
        );
    }
    Ok(Some(out))
}

/// Joins a finished chain's archived shots and archives the result next to them.
async fn stitch_chain(ctx: &Ctx, chain: &Chain) -> Result<(), StageError> {
    let Some(arch) = ctx.archive.clone() else {
        // Archiving was turned off after the chain finished: nothing to join from.
        let why = "not stitched: archiving is off".to_string();
        return stop(ctx, chain, ChainState::Stitching, ChainState::Done, why).await;
    };
    let shots = ctx.store.chain_shots(&chain.id).await?;
    let mut parts = Vec::with_capacity(shots.len());
    for s in &shots {
        let key = match (&s.job.archive_key, s.job.state) {
            (Some(k), JobState::Archived) => ObjectKey::parse(k),
            _ => {
                let why = format!(
                    "shot {} was not archived ({}{})",
                    s.shot,
                    s.job.state,
                    s.job
                        .last_error_message
                        .as_ref()
                        .map_or_else(String::new, |m| format!(": {m}"))
                );
                return stop(ctx, chain, ChainState::Stitching, ChainState::Failed, why).await;
            }
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => {
                let why = format!("shot {}: {e}", s.shot);
                return stop(ctx, chain, ChainState::Stitching, ChainState::Failed, why).await;
            }
        };
        parts.push(Part {
            label: format!("shot {}", s.shot),
            key,
            sha256: s.job.archive_sha256.clone(),
            job: Some(s.job.id.to_string()),
            shot: Some(s.shot),
        });
    }
    let Some(first) = parts.first() else {
        return stop(
            ctx,
            chain,
            ChainState::Stitching,
            ChainState::Failed,
            "no shots".into(),
        )
        .await;
    };
    let out_key = match stitch::chain_key(&first.key, &chain.id) {
        Ok(k) => k,
        Err(e) => {
            let why = format!("no key for the joined video: {e}");
            return stop(ctx, chain, ChainState::Stitching, ChainState::Failed, why).await;
        }
    };
    let result = async {
        let joined = stitch::join(arch.blob(), &parts).await?;
        let digest =
            stitch::store(arch.blob(), &joined, &out_key, Some(&chain.id), now_ms()).await?;
        Ok::<_, JoinError>((joined, digest))
    }
    .await;
    match result {
        Ok((joined, digest)) => {
            let s = Stitched {
                key: out_key.to_string(),
                sha256: digest.sha256,
                size: i64::try_from(digest.size).unwrap_or(i64::MAX),
                frames: i64::try_from(joined.report.frames).unwrap_or(i64::MAX),
                duration_ms: i64::try_from(joined.report.duration.as_millis()).unwrap_or(i64::MAX),
            };
            if ctx.store.chain_stitched(&chain.id, s).await? == ChainWrite::Done {
                tracing::info!(key = %out_key, frames = joined.report.frames, "chain stitched");
            }
            Ok(())
        }
        Err(e) if e.is_transient() && chain.retries + 1 < STITCH_ATTEMPTS => {
            let why = format!("stitching failed: {:#}", anyhow::Error::new(e));
            tracing::warn!(reason = %why, "will try again");
            ctx.store
                .chain_retry(
                    &chain.id,
                    ChainState::Stitching,
                    chain.retries,
                    later(ctx, chain.retries + 1),
                    why,
                )
                .await?;
            Ok(())
        }
        Err(e) => {
            let why = format!("{:#}", anyhow::Error::new(e));
            stop(ctx, chain, ChainState::Stitching, ChainState::Failed, why).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> CreateTaskRequest {
        serde_json::from_value(serde_json::json!({
            "model": "doubao-seedance-1-0-pro-250528",
            "content": [{"type": "text", "text": "a fox"}],
        }))
        .expect("request")
    }

    #[test]
    fn a_first_frame_goes_after_the_prompt_and_a_placeholder_comes_out() {
        let mut r = req();
        insert_first_frame(&mut r, "data:image/png;base64,AAAA".into());
        assert!(matches!(&r.content[0], ContentItem::Text { .. }));
        assert!(matches!(
            &r.content[1],
            ContentItem::ImageUrl { role: Some(role), .. } if role == "first_frame"
        ));
        strip_image(&mut r, "data:image/png;base64,AAAA");
        assert_eq!(r.content.len(), 1);
    }

    #[test]
    fn placeholders_have_the_asked_size() {
        let url = placeholder_frame(Some((864, 480))).expect("placeholder");
        let (_, bytes) = image::decode_data_url(&url).expect("data url");
        let info = image::check(&bytes).expect("valid image");
        assert_eq!((info.width, info.height), (864, 480));
    }
}
