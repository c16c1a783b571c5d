//! The Ark-compatible door: `/api/v3/contents/generations/tasks` (docs/ark-api.md §2–§6).
//!
//! A client's base URL is `http://<api.listen>/api/v3`, as it would be Ark's. Create takes
//! Ark's body and answers `{"id"}` at once with seedq's job id; get and list answer in Ark's
//! task shape (`succeeded` only once the video is archived, its URL seedq's signed copy);
//! delete cancels an unfinished job and deletes a finished one's record (§5, Version B).
//! seedq's own extras ride on headers: `Idempotency-Key`, `X-Seedq-Batch`,
//! `X-Seedq-Priority`. Errors take Ark's envelope (§6.1) with its status→type→code (§6.2).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::door::{self, Create, DoorError, FRAME_FILE, Info, VIDEO_FILE};
use super::keys::{self, Caller, Refused};
use super::{Api, sign};
use crate::ark::wire::{
    ApiErrorBody, CreateTaskRequest, ErrorEnvelope, Task, TaskContent, TaskError, TaskStatus, Usage,
};
use crate::job::ResultMeta;
use crate::store::{ApiJob, ApiListFilter, CancelOutcome, Job};

/// The door's path.
pub const TASKS: &str = "/api/v3/contents/generations/tasks";
/// The most tasks one list page carries (docs/ark-api.md §4: `page_size` in [1, 500]).
const MAX_PAGE_SIZE: i64 = 500;
/// The list's page size when none is given (docs/ark-api.md §14: 20, as the simulator).
const DEFAULT_PAGE_SIZE: i64 = 20;
/// The most `filter.task_ids` one list takes: each is one SQL variable, and SQLite allows a
/// few thousand per statement; 500 matches the largest page (docs/ark-api.md §4).
const MAX_TASK_IDS: usize = 500;

/// The door's routes.
pub fn routes() -> Router<Api> {
    Router::new()
        .route(TASKS, get(list).post(create))
        .route(&format!("{TASKS}/{{id}}"), get(get_one).delete(delete))
}

/// An Ark error answer (docs/ark-api.md §6.1 envelope, §6.2 status→type).
fn error(status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Response {
    let kind = status
        .canonical_reason()
        .unwrap_or("Error")
        .replace(' ', "");
    let body = ErrorEnvelope {
        error: ApiErrorBody {
            code: code.to_string(),
            message: message.to_string(),
            param: param.map(str::to_string),
            kind: Some(kind),
        },
    };
    (status, axum::Json(body)).into_response()
}

fn door_error(e: DoorError) -> Response {
    match e {
        DoorError::Invalid(i) if i.missing => error(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            &format!(
                "The request failed because it is missing one or multiple required parameters: `{}` ({i}).",
                i.param
            ),
            Some(&i.param),
        ),
        DoorError::Invalid(i) => error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            &format!(
                "The parameter `{}` specified in the request is not valid: {i}.",
                i.param
            ),
            Some(&i.param),
        ),
        DoorError::Bad(param, m) => error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            &m,
            param.as_deref(),
        ),
        DoorError::Forbidden(m) => error(StatusCode::FORBIDDEN, "AccessDenied", &m, None),
        DoorError::NotFound(m) => error(StatusCode::NOT_FOUND, "NotFound", &m, None),
        DoorError::Conflict(m) => error(StatusCode::CONFLICT, "Conflict", &m, None),
        DoorError::Internal(m) => {
            tracing::error!(error = %m, "api: ark door failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServiceError",
                "The service encountered an unexpected internal error.",
                None,
            )
        }
    }
}

/// The answer to a refused caller, in Ark's shape.
pub fn refused(r: Refused) -> Response {
    match r {
        Refused::Unauthorized => error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "The API key or AK/SK in the request is missing or invalid.",
            None,
        ),
        Refused::RateLimited(secs) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimitExceeded.EndpointRPMExceeded",
                "The request rate of this key (its --rpm) is exceeded; retry after the Retry-After seconds.",
                None,
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

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// seedq's headers: (`Idempotency-Key`, `X-Seedq-Batch`, `X-Seedq-Priority`).
pub type Extras = (Option<String>, Option<String>, Option<i64>);

/// Reads seedq's headers ([`Extras`]).
///
/// # Errors
/// `X-Seedq-Priority` is not an integer.
pub fn extras(headers: &HeaderMap) -> Result<Extras, DoorError> {
    let priority = match header_str(headers, "x-seedq-priority") {
        None => None,
        Some(p) => Some(p.parse::<i64>().map_err(|_| {
            DoorError::Bad(
                Some("X-Seedq-Priority".into()),
                format!("X-Seedq-Priority {p:?} is not an integer (higher is claimed first)"),
            )
        })?),
    };
    Ok((
        header_str(headers, "idempotency-key").map(str::to_string),
        header_str(headers, "x-seedq-batch").map(str::to_string),
        priority,
    ))
}

/// `POST …/tasks`.
async fn create(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return door_error(DoorError::Bad(
                None,
                format!("the request body is not JSON: {e}"),
            ));
        }
    };
    let request: CreateTaskRequest = match serde_json::from_value(strip_nulls(value.clone())) {
        Ok(r) => r,
        Err(e) => {
            return door_error(DoorError::Bad(
                None,
                format!("the request body is not a task: {e}"),
            ));
        }
    };
    let (idem, batch, priority) = match extras(&headers) {
        Ok(x) => x,
        Err(e) => return door_error(e),
    };
    let webhook_url = request.callback_url.clone();
    let c = Create {
        request,
        door: "ark",
        body_sha256: sign::sha256_hex(value.to_string().as_bytes()),
        idempotency_key: idem,
        batch,
        priority,
        webhook_url,
        extra: Info::default(),
    };
    match door::create(&api, &who, c).await {
        Ok((id, _)) => axum::Json(json!({ "id": id })).into_response(),
        Err(e) => door_error(e),
    }
}

/// The Python SDK sends every unset field as JSON `null` (docs/ark-api.md §1, "Null
/// handling"); `null` means absent.
pub fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// A job in Ark's task shape (docs/ark-api.md §3.1).
pub async fn task(
    api: &Api,
    headers: &HeaderMap,
    job: &Job,
    meta: Option<&ApiJob>,
) -> Result<Task, DoorError> {
    let archive_on = api.ctx.archive.is_some();
    let status = door::status(job, archive_on);
    let info = Info::of(job, meta);
    let id = job.id.as_str();
    let content = if status == "succeeded" {
        if archive_on {
            Some(TaskContent {
                video_url: Some(door::file_url(api, headers, id, VIDEO_FILE).await?),
                last_frame_url: if job.last_frame_url.is_some() {
                    Some(door::file_url(api, headers, id, FRAME_FILE).await?)
                } else {
                    None
                },
                file_url: None,
            })
        } else {
            Some(TaskContent {
                video_url: job.video_url.clone(),
                last_frame_url: job.last_frame_url.clone(),
                file_url: None,
            })
        }
    } else {
        None
    };
    let error = (status == "failed" || status == "expired").then(|| TaskError {
        code: job
            .last_error_code
            .clone()
            .unwrap_or_else(|| "InternalServiceError".into()),
        message: job.last_error_message.clone().unwrap_or_default(),
    });
    // What Ark's task reported once it succeeded: the seed it used and the ratio it chose for
    // `adaptive` (docs/ark-api.md §3.1 `seed`, `ratio`), its frame rate and revised prompt;
    // until then (and for jobs recorded before it was kept), what the create asked for.
    let reported = meta
        .and_then(|m| ResultMeta::from_json(m.result_meta.as_deref()))
        .unwrap_or_default();
    Ok(Task {
        id: id.to_string(),
        model: job.model.clone(),
        status: serde_json::from_value(json!(status)).unwrap_or(TaskStatus::Unknown),
        error,
        content,
        usage: job.usage_tokens.map(|t| Usage {
            completion_tokens: t,
            total_tokens: t,
            tool_usage: None,
        }),
        created_at: job.created_at.secs(),
        updated_at: job.updated_at.secs(),
        seed: reported.seed.or(job.seed),
        resolution: reported.resolution.or(info.resolution),
        ratio: reported.ratio.or(info.ratio),
        // Only one of the two is returned (docs/ark-api.md §3.1 `duration`).
        duration: if info.frames.is_some() {
            None
        } else {
            info.duration
        },
        frames: info.frames,
        framespersecond: reported.framespersecond,
        revised_prompt: reported.revised_prompt,
        service_tier: Some(job.service_tier.to_string()),
        execution_expires_after: info.execution_expires_after,
        priority: info.priority,
        generate_audio: info.generate_audio,
        draft: info.draft,
        draft_task_id: None,
        safety_identifier: info.safety_identifier,
        tools: None,
        output_format: None,
    })
}

/// Loads a job the caller may see.
pub async fn visible(
    api: &Api,
    who: &Caller,
    id: &str,
) -> Result<(Job, Option<ApiJob>), DoorError> {
    let not_found = || DoorError::NotFound(format!("The specified task {id} is not found."));
    let (job, meta) = api.ctx.store.api_job(id).await?.ok_or_else(not_found)?;
    if !who.sees(meta.as_ref().and_then(|m| m.api_key.as_deref())) {
        return Err(not_found());
    }
    Ok((job, meta))
}

/// `GET …/tasks/{id}`.
async fn get_one(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = async {
        let (job, meta) = visible(&api, &who, &id).await?;
        task(&api, &headers, &job, meta.as_ref()).await
    }
    .await;
    match r {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => door_error(e),
    }
}

/// `DELETE …/tasks/{id}`: a queued job is cancelled, a finished one's record deleted, and a
/// running one refused with 409 `InvalidAction.RunningTaskDeletion` (docs/ark-api.md §14) —
/// including a succeeded job whose video is still being archived, which the door shows as
/// running.
async fn delete(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = async {
        let (job, _) = visible(&api, &who, &id).await?;
        let archive_on = api.ctx.archive.is_some();
        if door::finished(&job, archive_on) {
            api.ctx.store.api_delete(&id).await?;
            return Ok(true);
        }
        if door::status(&job, archive_on) == "running" {
            return Ok(false);
        }
        match api.ctx.store.cancel(&id).await? {
            CancelOutcome::Cancelled | CancelOutcome::Requested => {
                api.ctx.poke_dispatch.notify_one();
                Ok(true)
            }
            CancelOutcome::AlreadyFinal { .. } => {
                api.ctx.store.api_delete(&id).await?;
                Ok(true)
            }
            CancelOutcome::NotFound => Err(DoorError::NotFound(format!(
                "The specified task {id} is not found."
            ))),
        }
    }
    .await;
    match r {
        Ok(true) => axum::Json(json!({})).into_response(),
        Ok(false) => error(
            StatusCode::CONFLICT,
            "InvalidAction.RunningTaskDeletion",
            "Cannot delete task because it is currently running",
            None,
        ),
        Err(e) => door_error(e),
    }
}

/// `GET …/tasks`: `page_num`, `page_size`, `filter.status`, `filter.task_ids` (repeated),
/// `filter.model`, `filter.service_tier` (docs/ark-api.md §4).
async fn list(State(api): State<Api>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let who = match caller(&api, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut f = ApiListFilter {
        key: who.key_id().map(str::to_string),
        archive_on: api.ctx.archive.is_some(),
        limit: DEFAULT_PAGE_SIZE,
        ..ApiListFilter::default()
    };
    let mut page = 1;
    let q = q.unwrap_or_default();
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        let int = |name: &str| -> Result<i64, Response> {
            v.parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| {
                    door_error(DoorError::Bad(
                        Some(name.to_string()),
                        format!("{name} {v:?} is not valid: an integer in 1..=500"),
                    ))
                })
        };
        match k.as_ref() {
            "page_num" => match int("page_num") {
                Ok(n) => page = n,
                Err(r) => return r,
            },
            "page_size" => match int("page_size") {
                Ok(n) => f.limit = n,
                Err(r) => return r,
            },
            "filter.status" => f.statuses.push(v.into_owned()),
            "filter.task_ids" => f.ids.push(v.into_owned()),
            "filter.model" => f.model = Some(v.into_owned()),
            "filter.service_tier" => f.service_tier = Some(v.into_owned()),
            _ => {}
        }
    }
    if f.ids.len() > MAX_TASK_IDS {
        return door_error(DoorError::Bad(
            Some("filter.task_ids".into()),
            format!(
                "filter.task_ids has {} ids; allowed: at most {MAX_TASK_IDS} per list",
                f.ids.len()
            ),
        ));
    }
    f.offset = (page - 1) * f.limit;
    let r = async {
        let (total, rows) = api.ctx.store.api_list(f).await?;
        let mut items = Vec::with_capacity(rows.len());
        for (job, meta) in &rows {
            items.push(task(&api, &headers, job, meta.as_ref()).await?);
        }
        Ok::<_, DoorError>(json!({ "total": total, "items": items }))
    }
    .await;
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => door_error(e),
    }
}
