//! The web dashboard, served by `seedq serve` on the admin listener under `/ui`.
//!
//! Server-rendered HTML ([`pages`]), one small script and one stylesheet, all compiled in: no
//! CDN, no build step. The overview updates itself over server-sent events (`/ui/events`
//! sends the re-rendered live part whenever it changed). Archived videos, last frames and
//! sidecars are streamed from the object store through the server ([`media`]), with bounded
//! range requests so the player can seek.
//!
//! Safety rules, which the browser tests check:
//! - Every piece of user text (prompts, tags, batch names, Ark's messages) goes through
//!   [`pages::esc`]; the CSP forbids inline scripts anyway (`script-src 'self'`).
//! - Actions (cancel, retry, adopt, pause/resume) are off unless `admin.token` is set; they are POSTs that must
//!   carry the token in the `X-Seedq-Token` header. A cross-site form cannot set a header and a
//!   cross-site `fetch` with one needs a CORS preflight we never answer, so the header is the
//!   CSRF defence. Actions call the same store verbs as `seedq cancel` / `seedq retry`.
//! - The API key, S3 keys and the token are never rendered (the config's secrets are not
//!   serialised, and no page reads them).

pub mod bench;
pub mod media;
pub mod pages;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::blob::{BlobStore, ObjectKey};
use crate::stage::Ctx;
use crate::store::{CancelOutcome, RetryOutcome};

/// Every answer's Content-Security-Policy: only our own script, style and media; nothing
/// inline, no frames, no plugins, forms post only to us.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The header that carries `admin.token`.
pub const TOKEN_HEADER: &str = "x-seedq-token";

/// How often the live overview is re-rendered for connected browsers.
const LIVE_INTERVAL: Duration = Duration::from_secs(1);

const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Ui {
    pub ctx: Ctx,
    /// The archive's object store; `None` when archiving is off or its URL does not open.
    pub blob: Option<BlobStore>,
}

impl Ui {
    /// True when actions are on (`admin.token` set and not empty).
    pub fn actions_on(&self) -> bool {
        self.ctx
            .cfg
            .admin
            .token
            .as_ref()
            .is_some_and(|t| !t.expose_secret().is_empty())
    }
}

/// The dashboard's routes, to merge into the admin router.
pub fn router<S>(ctx: &Ctx) -> Router<S> {
    let blob = if ctx.cfg.archive.url.trim().is_empty() {
        None
    } else {
        match BlobStore::open(&ctx.cfg.archive.url, &ctx.cfg.archive.s3) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: the archive does not open; videos are not shown");
                None
            }
        }
    };
    let ui = Arc::new(Ui {
        ctx: ctx.clone(),
        blob,
    });
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/events", get(events))
        .route("/ui/jobs", get(jobs))
        .route("/ui/keys", get(keys))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/jobs/{id}/video", get(video))
        .route("/ui/jobs/{id}/frame", get(frame))
        .route("/ui/jobs/{id}/sidecar", get(sidecar))
        .route("/ui/jobs/{id}/cancel", post(cancel))
        .route("/ui/jobs/{id}/retry", post(retry))
        .route("/ui/jobs/{id}/adopt", post(adopt))
        .route("/ui/pause", post(pause))
        .route("/ui/resume", post(resume))
        .route("/ui/chains/{id}/film", get(film))
        .route("/ui/gallery", get(gallery))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
        .layer(axum::middleware::map_response(secure))
        .with_state(ui)
}

type St = State<Arc<Ui>>;

/// Headers on every dashboard answer, errors included.
async fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn store_error(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "dashboard: store read failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the job store: {e}\n"),
    )
        .into_response()
}

async fn overview(State(ui): St) -> Response {
    match pages::overview(&ui).await {
        Ok(body) => html(body),
        Err(e) => store_error(&e),
    }
}

/// The live part of the overview, sent again whenever it changed (and a keep-alive otherwise).
async fn events(State(ui): St) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream =
        futures::stream::unfold((ui, String::new(), true), |(ui, last, first)| async move {
            loop {
                if !first {
                    tokio::time::sleep(LIVE_INTERVAL).await;
                }
                let Ok(live) = pages::live(&ui).await else {
                    tokio::time::sleep(LIVE_INTERVAL).await;
                    continue;
                };
                // Event data may not hold raw newlines; the fragment is HTML, where a newline
                // between tags is a space (user text has its newlines escaped by `esc`).
                let live = live.replace(['\n', '\r'], " ");
                if live != last || first {
                    let ev = Event::default().event("live").data(live.clone());
                    return Some((Ok(ev), (ui, live, false)));
                }
                tokio::time::sleep(LIVE_INTERVAL).await;
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn jobs(State(ui): St, Query(q): Query<pages::ListQuery>) -> Response {
    match pages::jobs(&ui, q).await {
        Ok(body) => html(body),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn keys(State(ui): St) -> Response {
    match pages::keys(&ui).await {
        Ok(body) => html(body),
        Err(e) => store_error(&e),
    }
}

async fn job(State(ui): St, Path(id): Path<String>) -> Response {
    match pages::job(&ui, &id).await {
        Ok(Some(body)) => html(body),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no job {id}\n")).into_response(),
        Err(e) => store_error(&e),
    }
}

/// The archive key of a job's video, or the answer to give instead.
async fn archived(ui: &Ui, id: &str) -> Result<(BlobStore, ObjectKey), Response> {
    let Some(blob) = ui.blob.clone() else {
        return Err((StatusCode::NOT_FOUND, "archiving is off\n").into_response());
    };
    let job = match ui.ctx.store.job(id).await {
        Ok(Some(j)) => j,
        Ok(None) => return Err((StatusCode::NOT_FOUND, "no such job\n").into_response()),
        Err(e) => return Err(store_error(&e)),
    };
    let Some(key) = job
        .archive_key
        .as_deref()
        .and_then(|k| ObjectKey::parse(k).ok())
    else {
        return Err((StatusCode::NOT_FOUND, "the job has no archived video\n").into_response());
    };
    Ok((blob, key))
}

/// Serves one file of a job's archived set, `file` naming it from the video's key.
async fn serve_archived(
    ui: &Ui,
    id: &str,
    headers: &HeaderMap,
    file: fn(&ObjectKey) -> ObjectKey,
    content_type: &'static str,
) -> Response {
    match archived(ui, id).await {
        Ok((blob, key)) => {
            media::serve(
                &blob,
                &file(&key),
                headers,
                content_type,
                ui.ctx.cfg.admin.ui_max_range,
            )
            .await
        }
        Err(r) => r,
    }
}

async fn video(State(ui): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    serve_archived(&ui, &id, &headers, ObjectKey::clone, "video/mp4").await
}

async fn frame(State(ui): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let file = crate::stage::archiver::last_frame_key;
    serve_archived(&ui, &id, &headers, file, "image/png").await
}

async fn sidecar(State(ui): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let file = crate::stage::archiver::sidecar_key;
    serve_archived(&ui, &id, &headers, file, "application/json").await
}

async fn film(State(ui): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(blob) = ui.blob.clone() else {
        return (StatusCode::NOT_FOUND, "archiving is off\n").into_response();
    };
    let chain = match ui.ctx.store.chain(&id).await {
        Ok(Some(c)) => c,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such chain\n").into_response(),
        Err(e) => return store_error(&e),
    };
    match chain
        .stitch_key
        .as_deref()
        .and_then(|k| ObjectKey::parse(k).ok())
    {
        Some(key) => {
            media::serve(
                &blob,
                &key,
                &headers,
                "video/mp4",
                ui.ctx.cfg.admin.ui_max_range,
            )
            .await
        }
        None => (
            StatusCode::NOT_FOUND,
            "the chain has no stitched film yet\n",
        )
            .into_response(),
    }
}

async fn gallery(State(ui): St, Query(q): Query<pages::GalleryQuery>) -> Response {
    match pages::gallery(&ui, q).await {
        Ok(Some(body)) => html(body),
        Ok(None) => (StatusCode::NOT_FOUND, "no such batch or chain\n").into_response(),
        Err(e) => store_error(&e),
    }
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response()
}

/// Checks an action's token: `Err` is the refusal to send.
fn authorize(ui: &Ui, headers: &HeaderMap) -> Result<(), Response> {
    let Some(want) = ui.ctx.cfg.admin.token.as_ref() else {
        return Err((
            StatusCode::FORBIDDEN,
            "actions are off: set admin.token to turn them on\n",
        )
            .into_response());
    };
    let want = want.expose_secret().as_bytes();
    if want.is_empty() {
        return Err((
            StatusCode::FORBIDDEN,
            "actions are off: set admin.token to turn them on\n",
        )
            .into_response());
    }
    let got = headers
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Constant time, so the answer's timing does not leak how much of a guess was right.
    if got.len() == want.len() && bool::from(got.ct_eq(want)) {
        Ok(())
    } else {
        Err((
            StatusCode::FORBIDDEN,
            "refused: the X-Seedq-Token header is missing or wrong\n",
        )
            .into_response())
    }
}

async fn cancel(State(ui): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&ui, &headers) {
        return r;
    }
    match ui.ctx.store.cancel(&id).await {
        Ok(CancelOutcome::Cancelled) => (StatusCode::OK, "cancelled\n").into_response(),
        Ok(CancelOutcome::Requested) => (
            StatusCode::ACCEPTED,
            "cancel requested: the worker deletes the remote task\n",
        )
            .into_response(),
        Ok(CancelOutcome::AlreadyFinal { state }) => (
            StatusCode::CONFLICT,
            format!("not cancelled: the job is already {}\n", state.as_str()),
        )
            .into_response(),
        Ok(CancelOutcome::NotFound) => (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Err(e) => store_error(&e),
    }
}

async fn retry(State(ui): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&ui, &headers) {
        return r;
    }
    let out = ui.ctx.store.retry(&id).await;
    if matches!(out, Ok(RetryOutcome::Requeued)) {
        ui.ctx.poke_dispatch.notify_one();
    }
    match out {
        Ok(RetryOutcome::Requeued) => (StatusCode::OK, "requeued\n").into_response(),
        Ok(RetryOutcome::NotFound) => (StatusCode::NOT_FOUND, "no such job\n").into_response(),
        Ok(RetryOutcome::NotRetryable { state }) => (
            StatusCode::CONFLICT,
            format!("not retried: the job is {}\n", state.as_str()),
        )
            .into_response(),
        Ok(RetryOutcome::UnreleasedShot) => (
            StatusCode::CONFLICT,
            "not retried: a chain shot that was never released (see its chain)\n",
        )
            .into_response(),
        Err(e) => store_error(&e),
    }
}

/// `POST /ui/jobs/{id}/adopt?task=TASK_ID`.
#[derive(Debug, serde::Deserialize)]
pub struct AdoptQuery {
    #[serde(default)]
    task: String,
}

/// Adopts a remote task for an ambiguous job through the same checks as `seedq adopt`
/// ([`crate::worker::reconcile::operator_adopt`]); a refusal answers 409 with its reason.
async fn adopt(
    State(ui): St,
    Path(id): Path<String>,
    Query(q): Query<AdoptQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&ui, &headers) {
        return r;
    }
    let task = q.task.trim();
    if task.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "task: empty; give the remote task id (cgt-…) to adopt\n",
        )
            .into_response();
    }
    use crate::worker::reconcile::{AdoptOutcome, operator_adopt};
    match operator_adopt(&ui.ctx, &id, task).await {
        Ok(AdoptOutcome::Adopted { job, task }) => {
            ui.ctx.poke_dispatch.notify_one();
            (StatusCode::OK, format!("{job} adopted {task}\n")).into_response()
        }
        Ok(AdoptOutcome::Refused(reason)) => {
            (StatusCode::CONFLICT, format!("refused: {reason}\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("not adopted: {e:#}\n")).into_response(),
    }
}

/// `POST /ui/pause?kind=model|batch&name=N` (and `/ui/resume`).
#[derive(Debug, serde::Deserialize)]
pub struct PauseQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
}

async fn pause(State(ui): St, Query(q): Query<PauseQuery>, headers: HeaderMap) -> Response {
    set_paused(&ui, &q, &headers, true).await
}

async fn resume(State(ui): St, Query(q): Query<PauseQuery>, headers: HeaderMap) -> Response {
    set_paused(&ui, &q, &headers, false).await
}

/// Pauses or resumes through the same checks and store verbs as `seedq pause` / `seedq resume`
/// ([`crate::worker::pause::set_paused`]).
async fn set_paused(ui: &Ui, q: &PauseQuery, headers: &HeaderMap, pause: bool) -> Response {
    use crate::worker::pause::PauseOutcome;
    if let Err(r) = authorize(ui, headers) {
        return r;
    }
    let Some(kind) = crate::store::PauseKind::parse(&q.kind) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("kind: {:?} is not allowed (model or batch)\n", q.kind),
        )
            .into_response();
    };
    let cat = ui.ctx.ops.live.catalogue();
    let out = crate::worker::pause::set_paused(&cat, &ui.ctx.store, kind, &q.name, pause).await;
    let (verb, already) = if pause {
        ("paused", "paused already")
    } else {
        ("resumed", "not paused")
    };
    match out {
        Ok(PauseOutcome::Changed) => {
            if !pause {
                ui.ctx.poke_dispatch.notify_one();
            }
            (StatusCode::OK, format!("{} {verb}\n", kind.as_str())).into_response()
        }
        Ok(PauseOutcome::Unchanged) => {
            (StatusCode::OK, format!("{} was {already}\n", kind.as_str())).into_response()
        }
        Ok(PauseOutcome::Refused(reason)) => {
            (StatusCode::BAD_REQUEST, format!("refused: {reason}\n")).into_response()
        }
        Err(e) => store_error(&e),
    }
}
