//! The front doors: `seedq serve`'s API listener (`[api] listen`), answering programs in the
//! two shapes they already speak (docs/api.md).
//!
//! - `ark`: Ark's own task API, `/api/v3/contents/generations/tasks` (the Volcengine and
//!   BytePlus SDKs, the `seedance` CLI, LiteLLM's `volcengine/` provider…).
//! - `openai`: OpenAI's video API, `/v1/videos` (the `openai` SDKs).
//! - `keys`: who is calling (an API key, or the admin token), per-key request rates (fleet-wide, in the store).
//! - `door`: what both doors share: turning a create into a stored job, file URLs.
//! - `sign`: HMAC-SHA256 (file URLs, webhook signatures).
//! - `webhooks`: signed webhooks from the durable outbox, on every worker.
//!
//! Invariants: a create is a durable enqueue and answers at once with seedq's own job id,
//! before Ark has seen the job. Everything is read from the store on every request (keys
//! included), so any worker of a fleet answers for any job and a revocation holds at once
//! everywhere. A key sees and cancels only the jobs it created; the admin token sees all.
//! Keys are never logged: requests are logged by route and job, never by header.
//! The listener is the admin server's guarded server (`stage::http`): the same read timeout,
//! connection cap and connection lifetime, with a body cap of its own (`api.max_body`).

pub mod ark;
pub mod bench;
pub mod door;
pub mod keys;
pub mod openai;
pub mod sign;
pub mod webhooks;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::blob::BlobStore;
use crate::stage::Ctx;
use crate::stage::http::{ServerLimits, serve_guarded};

/// What every handler holds.
#[derive(Clone)]
pub struct Api {
    pub ctx: Ctx,
    /// The archive's object store; `None` when archiving is off.
    pub blob: Option<BlobStore>,
}

/// Binds `api.listen`; `None` when it is empty (the doors are off, the default).
///
/// # Errors
/// The address does not parse or cannot be bound.
pub async fn bind(listen: &str) -> anyhow::Result<Option<TcpListener>> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    let l = TcpListener::bind(listen.trim()).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for the API on {listen}: {e} \
             (set api.listen to a free address, or \"\" to turn the doors off)"
        )
    })?;
    Ok(Some(l))
}

impl Api {
    /// The handlers' state for `ctx` (the archive opened once).
    pub fn new(ctx: &Ctx) -> Self {
        let blob = if ctx.cfg.archive.url.trim().is_empty() {
            None
        } else {
            match BlobStore::open(&ctx.cfg.archive.url, &ctx.cfg.archive.s3) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, "api: the archive does not open; videos cannot be served");
                    None
                }
            }
        };
        Self {
            ctx: ctx.clone(),
            blob,
        }
    }
}

/// The doors' routes.
pub fn router(ctx: &Ctx) -> Router {
    let api = Api::new(ctx);
    let max_body = usize::try_from(ctx.cfg.api.max_body).unwrap_or(usize::MAX);
    Router::new()
        .merge(ark::routes())
        .merge(openai::routes())
        .route("/files/{id}/{file}", get(door::file))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(api)
}

/// Serves the doors until shutdown.
///
/// # Errors
/// The server fails.
pub async fn run(
    ctx: Ctx,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = ServerLimits::from_config(&ctx.cfg);
    serve_guarded(listener, router(&ctx), limits, shutdown).await
}
