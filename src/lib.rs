//! seedq: a durable job-queue worker for the Seedance video-generation API.
//!
//! # Layout
//! - `job`: job ids, the state machine and the backoff policy (pure).
//! - `catalogue`: what each model accepts, its limits and prices (data).
//! - `ark`: the Ark HTTP client; `ark::wire` mirrors the API's JSON exactly.
//! - `media`: real MP4 files: encoding (simulator), probing and lossless stitching.
//! - `sim`: a faithful local Ark server (axum) with fault injection, for tests and the demo.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod ark;
pub mod catalogue;
pub mod job;
pub mod media;
pub mod request;
pub mod sim;
