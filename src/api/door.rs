//! What both doors share: a create turned into a stored job (validated by `request`, exactly
//! as `seedq submit` validates), the door status of a job, and the signed file URLs that
//! serve the archived video from the object store.

use std::path::Path;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Api;
use super::keys::Caller;
use super::sign::{hmac_sha256, same};
use crate::ark::wire::CreateTaskRequest;
use crate::blob::ObjectKey;
use crate::job::JobState;
use crate::request::{self, Invalid, JobSpec, SpecError};
use crate::store::Timestamp;
use crate::store::{ApiEnqueued, ApiJob, Job, NewJob, StoreError, now_ms};

/// The video's file name in file URLs.
pub const VIDEO_FILE: &str = "video.mp4";
/// The last frame's file name in file URLs.
pub const FRAME_FILE: &str = "last_frame.png";

/// Why a door refused a request (each door renders it in its own error shape).
#[derive(Debug)]
pub enum DoorError {
    /// A field breaks a rule (400, naming the field).
    Invalid(Invalid),
    /// A malformed request (400): the field, if one is to blame, and what is wrong.
    Bad(Option<String>, String),
    /// The key may not do this (403).
    Forbidden(String),
    /// No such job, or not the caller's (404).
    NotFound(String),
    /// An `Idempotency-Key` reused with another body (409).
    Conflict(String),
    /// The store or archive failed (500).
    Internal(String),
}

impl From<StoreError> for DoorError {
    fn from(e: StoreError) -> Self {
        DoorError::Internal(format!("the job store failed: {e}"))
    }
}

impl From<SpecError> for DoorError {
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::Invalid(i) => DoorError::Invalid(i),
            other => DoorError::Bad(None, other.to_string()),
        }
    }
}

/// What a create asked for, in the doors' terms, kept with the job (`api_jobs.info`) so an
/// answer echoes it as Ark echoes the request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Info {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_expires_after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_audio: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_last_frame: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
    /// The OpenAI door's `size` and `seconds`, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl Info {
    /// The info of a job: its door record's, else read from its frozen body (a job made
    /// outside the doors, shown to the admin).
    pub fn of(job: &Job, api: Option<&ApiJob>) -> Self {
        if let Some(a) = api
            && let Ok(i) = serde_json::from_str::<Info>(&a.info)
            && (i.resolution.is_some() || i.size.is_some())
        {
            return i;
        }
        let r: CreateTaskRequest = serde_json::from_str(&job.request_json).unwrap_or_default();
        Info {
            resolution: r.resolution,
            ratio: r.ratio,
            duration: r.duration,
            frames: r.frames,
            execution_expires_after: r.execution_expires_after,
            generate_audio: r.generate_audio,
            draft: r.draft,
            return_last_frame: r.return_last_frame,
            priority: r.priority,
            safety_identifier: r.safety_identifier,
            ..Info::default()
        }
    }
}

/// A create, as a door hands it over.
pub struct Create {
    pub request: CreateTaskRequest,
    /// `ark` or `openai`.
    pub door: &'static str,
    /// SHA-256 of the client's body: an `Idempotency-Key` with another body is a conflict.
    pub body_sha256: String,
    pub idempotency_key: Option<String>,
    pub batch: Option<String>,
    /// seedq's queue priority (`X-Seedq-Priority`).
    pub priority: Option<i64>,
    pub webhook_url: Option<String>,
    /// The door's own terms, merged into the stored [`Info`].
    pub extra: Info,
}

/// Validates and stores a create; returns the job id and whether it is new.
///
/// # Errors
/// [`DoorError`]: a rule is broken, the key may not use the model, a reused idempotency key
/// with another body, or the store failed. Nothing is stored on any error.
pub async fn create(api: &Api, caller: &Caller, c: Create) -> Result<(String, bool), DoorError> {
    if let Caller::Key(k) = caller
        && let Some(models) = &k.models
        && !models.contains(&c.request.model)
    {
        return Err(DoorError::Forbidden(format!(
            "model {:?} is not allowed for this key; allowed: {}",
            c.request.model,
            models.join(", ")
        )));
    }
    if matches!(caller, Caller::Admin) && c.webhook_url.is_some() && !admin_can_sign(api) {
        // A key's webhooks are signed with the key's secret; the admin token's with the
        // server's (`api.webhook_secret_file`), and there is none.
        return Err(DoorError::Bad(
            Some("callback_url".into()),
            "callback_url needs a signing secret: webhooks of jobs created with the admin token \
             are signed with the server's, and none is set; set api.webhook_secret_file (or \
             the systemd credential api_webhook_secret) to a file holding whsec_<base64>, \
             create with a key (`seedq keys create`), or omit callback_url"
                .into(),
        ));
    }
    if let Some(url) = &c.webhook_url {
        crate::stage::safeurl::UrlPolicy::from_config(&api.ctx.cfg)
            .check_str(url)
            .map_err(|e| {
                DoorError::Bad(
                    Some("callback_url".into()),
                    format!("callback_url {url:?} is refused: {e}"),
                )
            })?;
    }
    let r = c.request;
    let spec = JobSpec {
        model: Some(r.model.clone()),
        content: Some(r.content),
        resolution: r.resolution,
        ratio: r.ratio,
        duration: r.duration,
        frames: r.frames,
        seed: r.seed,
        camera_fixed: r.camera_fixed,
        watermark: r.watermark,
        return_last_frame: r.return_last_frame,
        service_tier: r.service_tier,
        execution_expires_after: r.execution_expires_after,
        generate_audio: r.generate_audio,
        draft: r.draft,
        remote_priority: r.priority,
        safety_identifier: r.safety_identifier,
        tools: r.tools,
        output_format: r.output_format,
        omni_reference_task_type: r.omni_reference_task_type,
        priority: c.priority,
        key: c
            .idempotency_key
            .as_ref()
            .map(|k| format!("api:{}:{k}", caller.scope())),
        // A key's batches are its own (`api:<key id>:<name>`): a key cannot join, or spend
        // under the caps of, another key's or the operator's batch. The admin names any.
        batch: c.batch.map(|b| match caller {
            Caller::Key(k) => format!("api:{}:{b}", k.id),
            Caller::Admin => b,
        }),
        // The webhook is seedq's to send (from the outbox, signed): Ark's callback would
        // carry Ark's task id to the client, so the body sent to Ark has none.
        callback_url: None,
        ..JobSpec::default()
    };
    // Only raw content items are given, never local paths: nothing is read from disk.
    let p = request::prepare(spec, &api.ctx.ops.live.catalogue(), Path::new("/"))?;
    let e = &p.effective;
    let mut info = c.extra;
    info.resolution = Some(e.resolution.clone());
    info.ratio = Some(e.ratio.clone());
    info.duration = e.duration;
    info.frames = e.frames;
    info.execution_expires_after = Some(p.expires_after);
    info.generate_audio = p.request.generate_audio;
    info.draft = p.request.draft;
    info.return_last_frame = p.request.return_last_frame;
    info.priority = p.request.priority;
    info.safety_identifier = p.request.safety_identifier.clone();
    let job = new_job(p)?;
    let id = job.id.to_string();
    let row = ApiJob {
        job_id: id.clone(),
        api_key: caller.key_id().map(str::to_string),
        door: c.door.to_string(),
        body_sha256: c.body_sha256,
        info: serde_json::to_string(&info).unwrap_or_else(|_| "{}".into()),
        webhook_url: c.webhook_url,
        created_at: Timestamp::now(),
        deleted_at: None,
        result_meta: None,
    };
    match api.ctx.store.api_enqueue(job, row).await? {
        ApiEnqueued::Created(id) => {
            // This worker's dispatchers look at once; the fleet's at their idle interval.
            api.ctx.poke_dispatch.notify_one();
            ::metrics::counter!("seedq_api_creates_total", "door" => c.door).increment(1);
            Ok((id.to_string(), true))
        }
        ApiEnqueued::Existing(id) => Ok((id.to_string(), false)),
        ApiEnqueued::Conflict(id) => Err(DoorError::Conflict(format!(
            "the Idempotency-Key was used for job {id} with a different body"
        ))),
    }
}

/// True when the admin token's jobs' webhooks can be signed (`api.webhook_secret_file`).
fn admin_can_sign(api: &Api) -> bool {
    use secrecy::ExposeSecret as _;
    api.ctx
        .cfg
        .api
        .webhook_secret
        .as_ref()
        .is_some_and(|s| !s.expose_secret().is_empty())
}

/// A validated job as a store row (as `seedq submit` stores it).
fn new_job(p: request::Prepared) -> Result<NewJob, DoorError> {
    crate::intake::new_job(p).map_err(DoorError::Invalid)
}

/// A job's status in Ark's words (the same mapping as `store::api::status_case`).
pub fn status(job: &Job, archive_on: bool) -> &'static str {
    match job.state {
        JobState::Archived => "succeeded",
        JobState::Succeeded | JobState::Archiving if !archive_on => "succeeded",
        JobState::Queued | JobState::Submitting | JobState::SubmitUnknown => "queued",
        JobState::Submitted if job.remote_status.as_deref() != Some("running") => "queued",
        JobState::Submitted | JobState::Succeeded | JobState::Archiving => "running",
        JobState::Failed | JobState::Dead => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Expired => "expired",
    }
}

/// True once nothing more will happen to the job (a DELETE then deletes its record).
pub fn finished(job: &Job, archive_on: bool) -> bool {
    matches!(
        status(job, archive_on),
        "succeeded" | "failed" | "cancelled" | "expired"
    )
}

/// The base URL clients reach the listener at: `api.public_url`, else the request's Host.
pub fn base_url(api: &Api, headers: &HeaderMap) -> String {
    let configured = api.ctx.cfg.api.public_url.trim().trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn file_sig(secret: &str, id: &str, file: &str, exp: i64) -> String {
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        format!("{id}/{file}/{exp}").as_bytes(),
    ))
}

/// A signed URL of one archived file of job `id`, valid for `api.url_ttl`: the SDKs fetch
/// Ark's `video_url` without credentials (a pre-signed URL, docs/ark-api.md §3.2), so
/// seedq's must work the same way.
///
/// # Errors
/// The signing secret cannot be read.
pub async fn file_url(
    api: &Api,
    headers: &HeaderMap,
    id: &str,
    file: &str,
) -> Result<String, DoorError> {
    let secret = api.ctx.store.api_url_secret().await?;
    let ttl = i64::try_from(api.ctx.cfg.api.url_ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let exp = now_ms() / 1000 + ttl;
    Ok(format!(
        "{}/files/{id}/{file}?expires={exp}&signature={}",
        base_url(api, headers),
        file_sig(&secret, id, file, exp)
    ))
}

/// The query of a file URL.
#[derive(Deserialize)]
pub struct Signed {
    expires: i64,
    signature: String,
}

/// `GET /files/{id}/{file}`: a signed URL's archived file, streamed from the object store.
pub async fn file(
    State(api): State<Api>,
    UrlPath((id, file)): UrlPath<(String, String)>,
    Query(q): Query<Signed>,
    headers: HeaderMap,
) -> Response {
    let secret = match api.ctx.store.api_url_secret().await {
        Ok(s) => s,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let want = file_sig(&secret, &id, &file, q.expires);
    if !same(want.as_bytes(), q.signature.as_bytes()) || q.expires < now_ms() / 1000 {
        return (
            StatusCode::FORBIDDEN,
            "the signature is wrong or has expired: GET the task again for a fresh URL\n",
        )
            .into_response();
    }
    match archived(&api, &id, &file).await {
        Ok((key, ctype)) => serve(&api, &key, &headers, ctype).await,
        Err(r) => r,
    }
}

/// The object key and content type of one archived file of job `id` (`file` is
/// [`VIDEO_FILE`] or [`FRAME_FILE`]), or the answer to give instead.
pub async fn archived(
    api: &Api,
    id: &str,
    file: &str,
) -> Result<(ObjectKey, &'static str), Response> {
    let not_found = |m: &str| (StatusCode::NOT_FOUND, format!("{m}\n")).into_response();
    let job = match api.ctx.store.job(id).await {
        Ok(Some(j)) => j,
        Ok(None) => return Err(not_found("no such job")),
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    };
    let Some(key) = job
        .archive_key
        .as_deref()
        .and_then(|k| ObjectKey::parse(k).ok())
    else {
        return Err(not_found("the job has no archived video"));
    };
    match file {
        VIDEO_FILE => Ok((key, "video/mp4")),
        FRAME_FILE => Ok((crate::stage::archiver::last_frame_key(&key), "image/png")),
        _ => Err(not_found("no such file")),
    }
}

/// Streams an archived object (ranges honoured, as the dashboard serves them).
pub async fn serve(
    api: &Api,
    key: &ObjectKey,
    headers: &HeaderMap,
    ctype: &'static str,
) -> Response {
    let Some(blob) = &api.blob else {
        return (StatusCode::NOT_FOUND, "archiving is off\n").into_response();
    };
    crate::ui::media::serve(blob, key, headers, ctype, api.ctx.cfg.admin.ui_max_range).await
}
