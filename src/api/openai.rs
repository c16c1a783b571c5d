//! The OpenAI-compatible door: `/v1/videos`.

use axum::Router;

use super::Api;

/// The door's routes.
pub fn routes() -> Router<Api> {
    Router::new()
}
