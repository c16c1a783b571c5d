//! The callback endpoint Ark POSTs to on each status change.
//!
//! Each job's URL carries an unguessable token (compared in constant time); bodies are capped.
//! A callback updates the job at once through the same [`super::poll::apply`] as polling,
//! which stays on as a slow safety net.

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::ark::wire::Task;
use crate::job::JobState;
use crate::store::Job;

/// Largest callback body accepted: a task object is a few KB.
const MAX_BODY: usize = 256 * 1024;

/// The URL Ark should call for `job`, when callbacks are on.
pub fn url_for(ctx: &Ctx, job: &Job) -> Option<String> {
    if !ctx.callbacks_on() {
        return None;
    }
    let token = job.callback_token.as_deref()?;
    Some(format!(
        "{}/{}?token={token}",
        ctx.cfg.callback.public_url.trim_end_matches('/'),
        job.id
    ))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn receive(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    body: axum::body::Bytes,
) -> StatusCode {
    let job = match ctx.store.job(&id).await {
        Ok(Some(j)) => j,
        Ok(None) => return StatusCode::NOT_FOUND,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE,
    };
    let expected = job.callback_token.as_deref().unwrap_or_default().as_bytes();
    if expected.is_empty() || !bool::from(expected.ct_eq(q.token.as_bytes())) {
        return StatusCode::FORBIDDEN;
    }
    let Ok(task) = serde_json::from_slice::<Task>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if job.remote_task_id.as_deref() != Some(task.id.as_str()) || job.state != JobState::Submitted {
        // A late or duplicate callback: acknowledge so Ark stops retrying.
        return StatusCode::OK;
    }
    match super::poll::apply(&ctx, &job, &task, "callback").await {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            tracing::warn!(job_id = %id, error = %format!("{e:#}"), "callback could not be recorded; polling will");
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
    let app = axum::Router::new()
        .route("/{*rest}", post(receive_nested))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(
            crate::ops::metrics::count_callbacks,
        ))
        .with_state(ctx);
    tracing::info!(%listen, "callback endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn receive_nested(
    state: State<Ctx>,
    Path(rest): Path<String>,
    q: Query<TokenQuery>,
    body: axum::body::Bytes,
) -> StatusCode {
    let id = rest.rsplit('/').next().unwrap_or_default().to_string();
    receive(state, Path(id), q, body).await
}
