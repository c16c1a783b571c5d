//! Bulk offline rendering: CSV import, estimates, chains of continuous shots, stitching and
//! the flex governor.
//!
//! - `import`: CSV rows → [`crate::request::JobSpec`]s (the documented columns).
//! - `estimate`: tokens, price and time to finish per model and tier (pure).
//! - `chain`: the chain stage: releases each shot when its predecessor succeeds, retries or
//!   stops a chain, stitches a finished one.
//! - `governor`: flex or default for batches with a deadline (at admission and in the
//!   service); the TPD budget itself is the dispatcher's, in days of `tpd_day`.
//! - `stitch`: joins archived videos into one MP4 and archives it with a sidecar.
//! - `[bulk]` configuration ([`BulkConfig`]).
//!
//! Batches themselves are plain jobs sharing `batch_id`, plus a `batches` row for what a batch
//! has beyond its jobs (migration 0004, queries in `store/bulk.rs`).

pub mod chain;
pub mod estimate;
pub mod governor;
pub mod import;
pub mod stitch;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[bulk]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkConfig {
    /// Length of the flex TPD day, whose start is counted in `dispatch.tpd_utc_offset_hours`.
    /// Ark's budget is per day; only shorten it to test against a time-scaled simulator.
    #[serde(with = "humantime_serde")]
    pub tpd_day: Duration,
    /// Retries of a chain's failed shot before the chain stops (a chain may set its own).
    pub chain_retries: u32,
    /// How often the service's governor re-plans batches with a deadline.
    #[serde(with = "humantime_serde")]
    pub governor_interval: Duration,
    /// Margin of the governor: flex is kept while the expected time to finish times this
    /// still fits before the deadline.
    pub deadline_safety: f64,
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            tpd_day: Duration::from_secs(86_400),
            chain_retries: 2,
            governor_interval: Duration::from_secs(30),
            deadline_safety: 1.5,
        }
    }
}

impl BulkConfig {
    /// `tpd_day` in ms, at least 1.
    pub fn tpd_day_ms(&self) -> i64 {
        i64::try_from(self.tpd_day.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

// The TPD day is the stage core's (the dispatcher counts in it too).
pub use crate::stage::tpd_day_start;
