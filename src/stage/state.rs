//! The operational state the stages report into and read from (`Ctx::ops`): live settings,
//! stage heartbeats, and how to reload. `ops` serves and changes it (health checks, SIGHUP);
//! it lives in the stage core because every stage's loop beats into it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::catalogue::Catalogue;
use crate::config::Config;

/// Operational state shared by the stages and the ops tasks (`Ctx::ops`).
pub struct OpsState {
    /// Settings that SIGHUP can change.
    pub live: super::live::Live,
    /// Stage heartbeats and the last readiness probe.
    pub health: Health,
    /// How to reload; set by `seedq serve` (other commands have nothing to reload from).
    pub reloader: OnceLock<Reloader>,
}

impl OpsState {
    /// The state for a validated configuration.
    pub fn new(cfg: &Config, catalogue: Arc<Catalogue>) -> Self {
        Self {
            live: super::live::Live::new(cfg, catalogue),
            health: Health::default(),
            reloader: OnceLock::new(),
        }
    }
}

/// Heartbeats per stage, and the last Ark probe.
#[derive(Default)]
pub struct Health {
    beats: Mutex<BTreeMap<&'static str, Instant>>,
    /// The last readiness probe of Ark (`ops::health` reads and fills it).
    pub(crate) probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// Why the job store refuses writes, and since when: set by the first step that meets a
    /// full disk, a read-only database or no connection; cleared by the next write probe
    /// that passes. While set, nothing new is claimed and `/readyz` fails with the reason.
    store_outage: Mutex<Option<(Instant, String)>>,
}

impl Health {
    /// Records that `stage` finished a loop iteration (or started).
    pub fn beat(&self, stage: &'static str) {
        let mut b = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        b.insert(stage, Instant::now());
    }

    /// Records that the store refuses writes, and why (the first reason of an outage stays,
    /// with its start; a different one replaces it).
    pub fn store_down(&self, reason: &str) {
        let mut o = self.store_outage.lock().unwrap_or_else(|p| p.into_inner());
        match o.as_ref() {
            Some((_, r)) if r == reason => {}
            Some((since, _)) => *o = Some((*since, reason.to_string())),
            None => {
                tracing::warn!(
                    reason,
                    "the job store refuses writes; claiming nothing until it takes them again"
                );
                crate::metrics::store_outage(true);
                *o = Some((Instant::now(), reason.to_string()));
            }
        }
    }

    /// Records that the store takes writes again.
    pub fn store_up(&self) {
        let mut o = self.store_outage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, _)) = o.take() {
            tracing::warn!(after = ?since.elapsed(), "the job store takes writes again; resuming");
            crate::metrics::store_outage(false);
        }
    }

    /// Why the store refuses writes and for how long, when it does.
    pub fn store_outage(&self) -> Option<(Duration, String)> {
        let o = self.store_outage.lock().unwrap_or_else(|p| p.into_inner());
        o.as_ref().map(|(since, r)| (since.elapsed(), r.clone()))
    }

    /// Time since each stage's last heartbeat.
    pub fn ages(&self) -> Vec<(&'static str, Duration)> {
        let b = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        b.iter().map(|(k, t)| (*k, t.elapsed())).collect()
    }
}

/// Loads and validates the configuration again, the way the process did at start.
pub type Source = Box<dyn Fn() -> anyhow::Result<(Config, Catalogue)> + Send + Sync>;

/// The reload state: where the configuration comes from, and what is in force.
pub struct Reloader {
    pub(crate) source: Source,
    /// The configuration last applied (the start one at first).
    pub(crate) current: Mutex<Config>,
}

impl Reloader {
    /// A reloader that reads `source`, starting from `current`.
    pub fn new(source: Source, current: Config) -> Self {
        Self {
            source,
            current: Mutex::new(current),
        }
    }
}
