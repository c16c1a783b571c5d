//! seedq: a durable job-queue worker for the Seedance video-generation API.
//!
//! # Layout
//! - `job`, `tier`: the domain types (crate `seedq-core`).
//! - `catalogue`, `request`, `ark`: Ark as seedq reads it: what each model accepts, its limits
//!   and prices; the user's job spec checked against it and frozen into the body; the HTTP
//!   client, with `ark::wire` mirroring the API's JSON (crate `seedq-ark`).
//! - `intake`: a checked request as the store row `submit` and the front doors enqueue.
//! - `config`: typed configuration, layered loading, validation, redacted secrets.
//! - `store`: the job store, SQLite and PostgreSQL (crate `seedq-store`): the only place SQL lives.
//! - `schedule`: parsing the `[maintenance]` times (zones, cron, the flex window).
//! - `stage`: the stage core every stage shares: `Ctx`, the stage loop, the limiter, leases' owner.
//! - `worker`: the service's stages (dispatch, poll, reconcile, callbacks, archive).
//! - `service`: the composition root: builds the stages and supervises them (`service::run`).
//! - `metrics`: metric names and recording helpers (a leaf).
//! - `ops`: the daemon side of `serve`: systemd notify and watchdog, admin HTTP (health,
//!   Prometheus metrics), SIGHUP reload, scheduled maintenance.
//! - `blob`: the archive's object store (S3-compatible, local files, memory) and object keys.
//! - `bulk`: batches (CSV import), estimates, chains of shots, stitching, the flex governor.
//! - `media`: real MP4 files: encoding (simulator), probing and lossless stitching (crate
//!   `seedq-media`).
//! - `sim`: a local Ark server (axum) with fault injection, for tests and the demo (crate
//!   `seedq-sim`).
//! - `ui`: the web dashboard under `/ui` on the admin listener.
//! - `api`: the front doors on `[api] listen`: Ark's task API and OpenAI's video API, keys.
//! - `cli`: the command line; `telemetry`: tracing setup.
//! - `pgscratch`: a throwaway PostgreSQL cluster for tests and benchmarks (crate
//!   `seedq-pgscratch`).

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod api;
pub mod blob;
pub mod bulk;
pub mod cli;
pub mod config;
pub mod intake;
pub mod metrics;
pub mod ops;
pub mod schedule;
pub mod service;
pub mod stage;
pub mod telemetry;
pub mod ui;
pub mod worker;

// The lower crates of the workspace, under the names the modules above use.
pub use seedq_ark as ark;
pub use seedq_ark::{catalogue, request};
pub use seedq_core::{job, tier};
pub use seedq_media as media;
#[doc(hidden)]
pub use seedq_pgscratch as pgscratch;
pub use seedq_sim as sim;
pub use seedq_store as store;
