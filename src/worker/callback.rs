//! The callback endpoint Ark POSTs to on each status change.
//!
//! A callback is a wake-up, not the truth: anyone holding a job's callback URL
//! can POST any body, so its `status` and `video_url` are never used. A callback with a valid
//! token makes seedq GET the task from Ark and record *that*, through the same
//! [`super::poll::apply`] as polling (which stays on as a slow safety net).
//!
//! The token is the URL's last path segment (`<public_url>/<job id>/<token>`), never a query
//! parameter, which proxies log. It is compared in constant time, and an unknown job and a
//! wrong token get the same answer, so the endpoint tells a prober nothing. Bodies are capped.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::job::JobState;
use crate::store::Job;

/// Largest callback body accepted: a task object is a few KB.
const MAX_BODY: usize = 256 * 1024;

/// The answer to an unknown job and to a wrong token alike.
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;

/// The URL Ark should call for `job`, when callbacks are on.
pub fn url_for(ctx: &Ctx, job: &Job) -> Option<String> {
    if !ctx.callbacks_on() {
        return None;
    }
    let token = job.callback_token.as_deref()?;
    Some(format!(
        "{}/{}/{token}",
        ctx.cfg.callback.public_url.trim_end_matches('/'),
        job.id
    ))
}

async fn receive(ctx: Ctx, id: &str, token: &str) -> StatusCode {
    let job = match ctx.store.job(id).await {
        Ok(Some(j)) => j,
        Ok(None) => return NOT_FOUND,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE,
    };
    let expected = job.callback_token.as_deref().unwrap_or_default().as_bytes();
    if expected.is_empty() || !bool::from(expected.ct_eq(token.as_bytes())) {
        return NOT_FOUND;
    }
    let Some(remote) = job.remote_task_id.clone() else {
        return StatusCode::OK;
    };
    if job.state != JobState::Submitted {
        // A late or duplicate callback: acknowledge so Ark stops retrying.
        return StatusCode::OK;
    }
    // The body is ignored: only Ark's own answer to our authenticated GET counts.
    let task = match ctx.ark.get(&remote).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(job_id = %id, error = %format!("{e:#}"), "callback: could not read the task from ark; polling will");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    };
    if task.id != remote {
        tracing::warn!(job_id = %id, "callback: ark answered for another task; ignored");
        return StatusCode::OK;
    }
    match super::poll::apply(&ctx, &job, &task, "callback").await {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            tracing::warn!(job_id = %id, error = %e.report(), "callback could not be recorded; polling will");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// Serves callbacks on `callback.listen` until shutdown.
///
/// # Errors
/// The address cannot be bound.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listen = if ctx.cfg.callback.listen.is_empty() {
        "127.0.0.1:9188".to_string()
    } else {
        ctx.cfg.callback.listen.clone()
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for callbacks on {listen}: {e}"))?;
    // The public URL's path prefix is the reverse proxy's business; we route on the last two
    // segments (`/<job id>`), under any prefix.
    let ctx_cfg = std::sync::Arc::clone(&ctx.cfg);
    let app = axum::Router::new()
        .route("/{*rest}", post(receive_nested))
        // The body is never read (see `receive`); the cap guards any future extractor.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(crate::metrics::count_callbacks))
        .with_state(ctx);
    tracing::info!(%listen, "callback endpoint listening");
    let limits = crate::stage::http::ServerLimits::from_config(&ctx_cfg);
    crate::stage::http::serve_guarded(listener, app, limits, shutdown).await
}

async fn receive_nested(State(ctx): State<Ctx>, Path(rest): Path<String>) -> StatusCode {
    // `<any prefix>/<job id>/<token>`: the last two segments.
    let mut parts = rest.trim_end_matches('/').rsplit('/');
    let (Some(token), Some(id)) = (parts.next(), parts.next()) else {
        return NOT_FOUND;
    };
    if token.is_empty() || id.is_empty() {
        return NOT_FOUND;
    }
    receive(ctx, id, token).await
}
