//! The OpenAI-compatible door: `/v1/videos` (the `openai` SDKs' `videos.create`, `retrieve`,
//! `download_content`, `list`, `delete`). A client's base URL is `http://<api.listen>/v1`.
//!
//! `model` names a Seedance model; `seconds` becomes `duration`; `size` (`WxH`) becomes a
//! resolution and ratio of that model (its exact pixel size from docs/ark-api.md §7, or a
//! `…p` short side and a ratio the model takes), refused with the sizes it does take
//! otherwise; `input_reference` (an uploaded image, or `{"image_url": …}`) becomes the first
//! frame. The SDK sends a create as `multipart/form-data`; JSON is taken too. Errors take
//! OpenAI's envelope `{"error": {message, type, param, code}}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::door::{self, Create, DoorError, FRAME_FILE, Info, VIDEO_FILE};
use super::keys::{self, Caller, Refused};
use super::{Api, ark, sign};
use crate::ark::wire::{ContentItem, CreateTaskRequest, MediaUrl};
use crate::catalogue::{ModelSpec, pixel_size};
use crate::store::{ApiJob, ApiListFilter, CancelOutcome, Job, Timestamp};

/// The most videos one list page carries.
const MAX_LIMIT: i64 = 100;
/// The list's page size when none is given (OpenAI's list default).
const DEFAULT_LIMIT: i64 = 20;

/// The door's routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/videos", get(list).post(create))
        .route("/v1/videos/{id}", get(retrieve).delete(delete))
        .route("/v1/videos/{id}/content", get(content))
}

/// An OpenAI error answer.
fn error(
    status: StatusCode,
    kind: &str,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn door_error(e: DoorError) -> Response {
    let bad = "invalid_request_error";
    match e {
        DoorError::Invalid(i) => error(
            StatusCode::BAD_REQUEST,
            bad,
            &i.to_string(),
            Some(&openai_param(&i.param)),
            Some("invalid_value"),
        ),
        DoorError::Bad(param, m) => error(StatusCode::BAD_REQUEST, bad, &m, param.as_deref(), None),
        DoorError::Forbidden(m) => error(StatusCode::FORBIDDEN, bad, &m, None, None),
        DoorError::NotFound(m) => error(StatusCode::NOT_FOUND, bad, &m, None, None),
        DoorError::Conflict(m) => error(StatusCode::CONFLICT, bad, &m, None, Some("conflict")),
        DoorError::Internal(m) => {
            tracing::error!(error = %m, "api: openai door failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the server had an error while processing the request",
                None,
                None,
            )
        }
    }
}

/// Ark's field names in the door's words, where they differ.
fn openai_param(p: &str) -> String {
    match p {
        "duration" => "seconds".into(),
        "resolution" | "ratio" => "size".into(),
        p if p.starts_with("content") => "input_reference".into(),
        p => p.to_string(),
    }
}

fn refused(r: Refused) -> Response {
    match r {
        Refused::Unauthorized => error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect API key provided.",
            None,
            Some("invalid_api_key"),
        ),
        Refused::RateLimited(secs) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "Rate limit reached for this key (its --rpm); retry after the Retry-After seconds.",
                None,
                Some("rate_limit_exceeded"),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            resp
        }
        Refused::Store(m) => door_error(DoorError::Internal(m)),
    }
}

async fn caller(api: &Api, headers: &HeaderMap) -> Result<Caller, Response> {
    keys::authenticate(&api.ctx, headers).await.map_err(refused)
}

/// A create's fields, from a form or JSON.
#[derive(Debug, Default)]
struct Fields {
    model: Option<String>,
    prompt: Option<String>,
    seconds: Option<String>,
    size: Option<String>,
    /// The first frame as a URL (`http(s)://`, `data:`).
    image: Option<String>,
}

/// One part of a `multipart/form-data` body.
struct Part<'a> {
    name: String,
    content_type: Option<String>,
    data: &'a [u8],
}

/// Splits a `multipart/form-data` body (RFC 7578) into its parts.
fn multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let find = |hay: &[u8], from: usize, needle: &[u8]| -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut parts = Vec::new();
    let mut at = find(body, 0, d).ok_or("no opening boundary")? + d.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Ok(parts);
        }
        // Past the boundary's CRLF.
        at += 2;
        let head_end = find(body, at, b"\r\n\r\n").ok_or("a part has no header end")?;
        let head = String::from_utf8_lossy(&body[at..head_end]).into_owned();
        let data_start = head_end + 4;
        let next = find(body, data_start, format!("\r\n{delim}").as_bytes())
            .ok_or("a part has no closing boundary")?;
        let mut name = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            if k.eq_ignore_ascii_case("content-disposition") {
                name = v
                    .split(';')
                    .map(str::trim)
                    .find_map(|p| p.strip_prefix("name="))
                    .map(|n| n.trim_matches('"').to_string());
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_string());
            }
        }
        parts.push(Part {
            name: name.ok_or("a part has no name")?,
            content_type,
            data: &body[data_start..next],
        });
        at = next + 2 + d.len();
    }
}

fn parse_fields(headers: &HeaderMap, body: &[u8]) -> Result<Fields, DoorError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut f = Fields::default();
    if ctype.starts_with("multipart/form-data") {
        let boundary = ctype
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("boundary="))
            .map(|b| b.trim_matches('"'))
            .ok_or_else(|| DoorError::Bad(None, "multipart/form-data without a boundary".into()))?;
        let parts = multipart(body, boundary)
            .map_err(|e| DoorError::Bad(None, format!("the form does not parse: {e}")))?;
        for p in parts {
            let text = || String::from_utf8_lossy(p.data).into_owned();
            match p.name.as_str() {
                "model" => f.model = Some(text()),
                "prompt" => f.prompt = Some(text()),
                "seconds" => f.seconds = Some(text()),
                "size" => f.size = Some(text()),
                "input_reference[image_url]" => f.image = Some(text()),
                "input_reference" => {
                    let mime = p
                        .content_type
                        .clone()
                        .filter(|c| c.starts_with("image/"))
                        .unwrap_or_else(|| "image/png".into())
                        .to_ascii_lowercase();
                    let b64 = base64::engine::general_purpose::STANDARD.encode(p.data);
                    f.image = Some(format!("data:{mime};base64,{b64}"));
                }
                _ => {}
            }
        }
        return Ok(f);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| DoorError::Bad(None, format!("the request body is not JSON: {e}")))?;
    let s = |k: &str| match v.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    f.model = s("model");
    f.prompt = s("prompt");
    f.seconds = s("seconds");
    f.size = s("size");
    f.image = match v.get("input_reference") {
        Some(Value::String(u)) => Some(u.clone()),
        Some(Value::Object(o)) => o
            .get("image_url")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    };
    Ok(f)
}

/// `size` (`WxH`) as a (resolution, ratio) the model takes.
///
/// # Errors
/// No shape of the model matches; the message lists the sizes it takes.
pub fn size_to_shape(
    spec: &ModelSpec,
    model: &str,
    size: &str,
) -> Result<(String, String), DoorError> {
    let shapes: Vec<(String, String, (u32, u32))> = spec
        .resolutions
        .iter()
        .flat_map(|r| spec.ratios.iter().map(move |q| (r.clone(), q.clone())))
        .filter_map(|(r, q)| pixel_size(spec.pixel_table, &r, &q).map(|px| (r, q, px)))
        .collect();
    let refuse = || {
        let sizes: Vec<String> = shapes
            .iter()
            .map(|(_, _, (w, h))| format!("{w}x{h}"))
            .collect();
        DoorError::Bad(
            Some("size".into()),
            format!(
                "size {size:?} matches no output shape of {model}; allowed: WIDTHxHEIGHT, one of {}",
                sizes.join(", ")
            ),
        )
    };
    let (w, h) = size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0)
        .ok_or_else(refuse)?;
    if let Some((r, q, _)) = shapes.iter().find(|(_, _, px)| *px == (w, h)) {
        return Ok((r.clone(), q.clone()));
    }
    // OpenAI's sizes are exact 16:9 and 9:16 at a "p" short side (1280x720): the model's
    // own pixels for that shape may differ slightly (the 1.0 table's 1248x704).
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = gcd(w, h);
    let ratio = format!("{}:{}", w / g, h / g);
    let resolution = format!("{}p", w.min(h));
    if spec.resolutions.contains(&resolution) && spec.ratios.contains(&ratio) {
        return Ok((resolution, ratio));
    }
    Err(refuse())
}

/// `POST /v1/videos`.
async fn create(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = async {
        let f = parse_fields(&headers, &body)?;
        let model = f.model.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
            DoorError::Bad(
                Some("model".into()),
                "model is missing: name a Seedance model (OpenAI's sora-2 is not served here)"
                    .into(),
            )
        })?;
        let catalogue = api.ctx.ops.live.catalogue();
        let Some(spec) = catalogue.get(&model) else {
            return Err(DoorError::Bad(
                Some("model".into()),
                format!(
                    "model {model:?} is not a known model; allowed: {}",
                    catalogue.names()
                ),
            ));
        };
        let (resolution, ratio) = match &f.size {
            Some(s) => {
                let (r, q) = size_to_shape(spec, &model, s)?;
                (Some(r), Some(q))
            }
            None => (None, None),
        };
        let duration = match &f.seconds {
            Some(s) => Some(s.trim().parse::<i64>().map_err(|_| {
                DoorError::Bad(
                    Some("seconds".into()),
                    format!("seconds {s:?} is not a whole number of seconds"),
                )
            })?),
            None => None,
        };
        let mut content = Vec::new();
        if let Some(p) = &f.prompt {
            content.push(ContentItem::Text { text: p.clone() });
        }
        if let Some(u) = &f.image {
            content.push(ContentItem::ImageUrl {
                image_url: MediaUrl { url: u.clone() },
                role: Some("first_frame".into()),
            });
        }
        let request = CreateTaskRequest {
            model: model.clone(),
            content,
            resolution,
            ratio,
            duration,
            ..CreateTaskRequest::default()
        };
        let (idem, batch, priority) = ark::extras(&headers)?;
        let c = Create {
            request,
            door: "openai",
            // The fields as parsed, not the raw body: a multipart body has a random boundary,
            // so an SDK's retry of the same create would differ byte for byte.
            body_sha256: sign::sha256_hex(
                json!({
                    "model": &f.model,
                    "prompt": &f.prompt,
                    "seconds": &f.seconds,
                    "size": &f.size,
                    "image": &f.image,
                })
                .to_string()
                .as_bytes(),
            ),
            idempotency_key: idem,
            batch,
            priority,
            webhook_url: None,
            extra: Info {
                size: f.size.clone(),
                seconds: f.seconds.clone(),
                prompt: f.prompt.clone(),
                ..Info::default()
            },
        };
        let (id, _) = door::create(&api, &who, c).await?;
        if let Some((job, meta)) = api.ctx.store.api_job(&id).await? {
            return Ok(video(&api, &job, meta.as_ref()));
        }
        // A replay of a create whose record the client has since deleted: the job itself
        // is still there.
        let job =
            api.ctx.store.job(&id).await?.ok_or_else(|| {
                DoorError::Internal(format!("job {id} vanished after its create"))
            })?;
        Ok(video(&api, &job, None))
    }
    .await;
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => door_error(e),
    }
}

/// A job as OpenAI's `Video`.
pub(crate) fn video(api: &Api, job: &Job, meta: Option<&ApiJob>) -> Value {
    let status = match door::status(job, api.ctx.archive.is_some()) {
        "queued" => "queued",
        "running" => "in_progress",
        "succeeded" => "completed",
        _ => "failed",
    };
    let info = Info::of(job, meta);
    let progress = match (status, job.state) {
        ("completed" | "failed", _) => 100,
        (_, crate::job::JobState::Succeeded | crate::job::JobState::Archiving) => 90,
        ("in_progress", _) => 50,
        _ => 0,
    };
    let size = info.size.clone().unwrap_or_else(|| {
        let spec = api.ctx.ops.live.catalogue().get(&job.model).cloned();
        match (spec, &info.resolution, &info.ratio) {
            (Some(s), Some(r), Some(q)) => pixel_size(s.pixel_table, r, q)
                .map(|(w, h)| format!("{w}x{h}"))
                .unwrap_or_default(),
            _ => String::new(),
        }
    });
    let error = (status == "failed").then(|| {
        json!({
            "code": job.last_error_code.clone().unwrap_or_else(|| job.state.as_str().to_string()),
            "message": job.last_error_message.clone().unwrap_or_else(|| format!("the job ended {}", job.state.as_str())),
        })
    });
    let completed_at = job
        .archived_at
        .or(job.finished_at)
        .filter(|_| status == "completed" || status == "failed")
        .map(Timestamp::secs);
    // When the downloadable file stops working. Archived: never (`expires_at` null): the
    // archive keeps its objects, and pruning removes only job rows (docs/api.md). Archiving
    // off: the content is Ark's pre-signed URL, valid 24 h or what its `X-Tos-Expires` says
    // (docs/ark-api.md §3.2 and §3.4), recorded as `url_expires_at` when the task succeeded.
    let expires_at = if api.ctx.archive.is_none() && status == "completed" {
        job.url_expires_at.map(Timestamp::secs)
    } else {
        None
    };
    json!({
        "id": job.id.as_str(),
        "object": "video",
        "model": job.model,
        "status": status,
        "progress": progress,
        "created_at": job.created_at.secs(),
        "completed_at": completed_at,
        "expires_at": expires_at,
        "error": error,
        "prompt": info.prompt,
        "remixed_from_video_id": Value::Null,
        "seconds": info.seconds.or(info.duration.map(|d| d.to_string())).unwrap_or_default(),
        "size": size,
    })
}

async fn visible(api: &Api, who: &Caller, id: &str) -> Result<(Job, Option<ApiJob>), DoorError> {
    // Only a missing (or someone else's) job is a 404 in OpenAI's words; a store failure
    // stays a 500.
    ark::visible(api, who, id).await.map_err(|e| match e {
        DoorError::NotFound(_) => DoorError::NotFound(format!("No video found with id '{id}'.")),
        other => other,
    })
}

/// `GET /v1/videos/{id}`.
async fn retrieve(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match visible(&api, &who, &id).await {
        Ok((job, meta)) => axum::Json(video(&api, &job, meta.as_ref())).into_response(),
        Err(e) => door_error(e),
    }
}

/// `GET /v1/videos/{id}/content` query.
#[derive(Deserialize)]
struct ContentQuery {
    variant: Option<String>,
}

/// `GET /v1/videos/{id}/content`: the archived MP4, or `variant=thumbnail` the last frame.
async fn content(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ContentQuery>,
) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (job, _) = match visible(&api, &who, &id).await {
        Ok(x) => x,
        Err(e) => return door_error(e),
    };
    let file = match q.variant.as_deref() {
        None | Some("video") => VIDEO_FILE,
        Some("thumbnail") if job.last_frame_url.is_some() => FRAME_FILE,
        Some("thumbnail") => {
            return door_error(DoorError::NotFound(format!(
                "video {id} has no thumbnail: its create did not ask for the last frame"
            )));
        }
        Some(v) => {
            return door_error(DoorError::Bad(
                Some("variant".into()),
                format!("variant {v:?} is not served; allowed: video, thumbnail"),
            ));
        }
    };
    if door::status(&job, api.ctx.archive.is_some()) != "succeeded" {
        return door_error(DoorError::NotFound(format!(
            "video {id} is not completed yet; retrieve it until its status is completed"
        )));
    }
    if api.ctx.archive.is_none() {
        return ark_file(&job, file);
    }
    match door::archived(&api, &id, file).await {
        Ok((key, ctype)) => door::serve(&api, &key, &headers, ctype).await,
        Err(r) => r,
    }
}

/// With archiving off the file is Ark's: a redirect to its pre-signed URL (fetched without
/// credentials, docs/ark-api.md §3.2) until the `expires_at` the video answer gives, then a
/// 404 that says so (the URL lives 24 h, docs/ark-api.md §3.4).
fn ark_file(job: &Job, file: &str) -> Response {
    let url = if file == FRAME_FILE {
        job.last_frame_url.as_deref()
    } else {
        job.video_url.as_deref()
    };
    let id = job.id.as_str();
    let Some(url) = url else {
        return door_error(DoorError::NotFound(format!(
            "video {id} has no file: Ark's answer carried no URL"
        )));
    };
    if let Some(exp) = job.url_expires_at
        && exp <= Timestamp::now()
    {
        return door_error(DoorError::NotFound(format!(
            "video {id}'s file expired at {} (unix seconds): Ark keeps it 24 h and archiving \
             is off (set archive.url to keep videos)",
            exp.secs()
        )));
    }
    match HeaderValue::from_str(url) {
        Ok(loc) => (StatusCode::FOUND, [(header::LOCATION, loc)]).into_response(),
        Err(_) => door_error(DoorError::NotFound(format!(
            "video {id}'s URL from Ark is not a valid header value"
        ))),
    }
}

/// `GET /v1/videos` query (cursor paging as the SDK pages: `after` is the last id seen).
#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
}

/// `GET /v1/videos`.
async fn list(State(api): State<Api>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return door_error(DoorError::Bad(
            Some("limit".into()),
            format!("limit {limit} is out of range; allowed: 1..=100"),
        ));
    }
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(o) => {
            return door_error(DoorError::Bad(
                Some("order".into()),
                format!("order {o:?} is not allowed; allowed: asc, desc"),
            ));
        }
    };
    let f = ApiListFilter {
        key: who.key_id().map(str::to_string),
        door: Some("openai".into()),
        after: q.after,
        ascending,
        // One more than the page: whether there is a next page.
        limit: limit + 1,
        archive_on: api.ctx.archive.is_some(),
        ..ApiListFilter::default()
    };
    match api.ctx.store.api_list(f).await {
        Ok((_, mut rows)) => {
            let has_more = rows.len() as i64 > limit;
            rows.truncate(usize::try_from(limit).unwrap_or(0));
            let data: Vec<Value> = rows
                .iter()
                .map(|(j, m)| video(&api, j, m.as_ref()))
                .collect();
            let first = rows.first().map(|(j, _)| j.id.to_string());
            let last = rows.last().map(|(j, _)| j.id.to_string());
            axum::Json(json!({
                "object": "list",
                "data": data,
                "first_id": first,
                "last_id": last,
                "has_more": has_more,
            }))
            .into_response()
        }
        Err(e) => door_error(e.into()),
    }
}

/// `DELETE /v1/videos/{id}`: deletes a finished or just-cancelled job's record; a job whose
/// cancel is only requested (it may be paid for) is answered as it stands, still listed.
async fn delete(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = async {
        let (job, _) = visible(&api, &who, &id).await?;
        if !door::finished(&job, api.ctx.archive.is_some()) {
            match api.ctx.store.cancel(&id).await? {
                CancelOutcome::Cancelled => api.ctx.poke_dispatch.notify_one(),
                CancelOutcome::AlreadyFinal { .. } => {}
                // The job may already be paid for (a create in flight, or a task at Ark): its
                // record stays visible, so the caller can still see and fetch what it costs.
                CancelOutcome::Requested => {
                    api.ctx.poke_dispatch.notify_one();
                    let (job, meta) = visible(&api, &who, &id).await?;
                    return Ok(Some(video(&api, &job, meta.as_ref())));
                }
                CancelOutcome::NotFound => {
                    return Err(DoorError::NotFound(format!(
                        "No video found with id '{id}'."
                    )));
                }
            }
        }
        api.ctx.store.api_delete(&id).await?;
        Ok::<_, DoorError>(None)
    }
    .await;
    match r {
        Ok(None) => axum::Json(json!({"id": id, "object": "video.deleted", "deleted": true}))
            .into_response(),
        Ok(Some(v)) => axum::Json(v).into_response(),
        Err(e) => door_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Catalogue;

    #[test]
    fn sizes_map_to_a_shape_of_the_model_or_are_refused() {
        let c = Catalogue::default();
        let v2 = c
            .get("doubao-seedance-2-0-260128")
            .expect("as the test sets it up");
        let shape = |s: &ModelSpec, size: &str| size_to_shape(s, "m", size).ok();
        assert_eq!(shape(v2, "1280x720"), Some(("720p".into(), "16:9".into())));
        assert_eq!(shape(v2, "720x1280"), Some(("720p".into(), "9:16".into())));
        let v1 = c
            .get("doubao-seedance-1-0-pro-250528")
            .expect("as the test sets it up");
        assert_eq!(shape(v1, "1280x720"), Some(("720p".into(), "16:9".into())));
        assert_eq!(shape(v1, "1248x704"), Some(("720p".into(), "16:9".into())));
        match size_to_shape(v2, "m", "1024x1792") {
            Err(DoorError::Bad(Some(p), m)) => {
                assert_eq!(p, "size");
                assert!(m.contains("1024x1792") && m.contains("1280x720"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(shape(v2, "big").is_none());
    }

    #[test]
    fn a_form_is_split_into_its_parts() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"a.png\"\r\n\
Content-Type: image/png\r\n\r\n\x89PNG\r\n\r\n--XyZ--\r\n";
        let parts = multipart(body, "XyZ").expect("as the test sets it up");
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].data),
            ("prompt", &b"a cat"[..])
        );
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(parts[1].data, b"\x89PNG\r\n");
        assert!(multipart(b"nothing", "XyZ").is_err());
    }
}
