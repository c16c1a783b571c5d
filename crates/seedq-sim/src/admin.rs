//! Test and benchmark endpoints under `/_sim/` (no auth: the simulator is a local tool).
//!
//! - `GET /_sim/stats`: counters ([`super::state::StatsDump`]).
//! - `POST /_sim/reset`: zero the counters; tasks stay.
//! - `GET /_sim/faults`: the faults in force, counters as they have counted down.
//! - `POST /_sim/faults`: replace them (JSON, the shape of [`Faults`]; omitted keys are off).
//! - `GET /_sim/tasks`: every internal record ([`super::state::TaskDump`]), oldest first.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::config::Faults;
use super::state::Sim;

pub async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.dump_stats()).into_response()
}

pub async fn reset(State(sim): State<Arc<Sim>>) -> Response {
    sim.reset_stats();
    Json(serde_json::json!({})).into_response()
}

pub async fn get_faults(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.faults()).into_response()
}

pub async fn set_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<Faults>(&body)
        .map_err(anyhow::Error::from)
        .and_then(|f| f.validate().map(|()| f));
    match parsed {
        Ok(f) => {
            sim.set_faults(f.clone());
            Json(f).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}

pub async fn tasks(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.dump_tasks()).into_response()
}
