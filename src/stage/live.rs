//! The settings SIGHUP can change while the service runs: model limits (the catalogue with
//! its `[models]` overrides), `[poll]`, and the flex window.
//!
//! `Ctx::cfg` stays the configuration the process started with; stages read these settings
//! here instead, at each use, so a reload takes effect at their next step. Everything else
//! needs a restart (`ops::reload` says which keys). Reads clone an `Arc` under a lock held for
//! nanoseconds, never across an `.await`.

use std::sync::{Arc, RwLock};

use chrono_tz::Tz;

use super::limiter::Limiter;
use crate::catalogue::{Catalogue, Limits};
use crate::config::{BudgetConfig, Config, PollConfig};
use crate::schedule::{self, FlexWindow};

/// The live settings.
pub struct Live {
    catalogue: RwLock<Arc<Catalogue>>,
    poll: RwLock<Arc<PollConfig>>,
    flex_window: RwLock<Option<FlexWindow>>,
    /// `[budget]` (the per-model daily caps are in the catalogue).
    budget: RwLock<Arc<BudgetConfig>>,
    /// The zone of the flex window; fixed at start, like the schedules that share it.
    tz: Tz,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    // A poisoned lock only means a writer panicked between two plain assignments; the value
    // is still whole.
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

impl Live {
    /// The settings of a validated configuration.
    pub fn new(cfg: &Config, catalogue: Arc<Catalogue>) -> Self {
        Self {
            catalogue: RwLock::new(catalogue),
            poll: RwLock::new(Arc::new(cfg.poll.clone())),
            flex_window: RwLock::new(
                FlexWindow::parse(&cfg.maintenance.flex_window)
                    .ok()
                    .flatten(),
            ),
            budget: RwLock::new(Arc::new(cfg.budget.clone())),
            tz: schedule::parse_tz(&cfg.maintenance.timezone).unwrap_or(Tz::UTC),
        }
    }

    /// Replaces the live settings with those of a newly loaded, validated configuration.
    pub fn apply(&self, cfg: &Config, catalogue: Catalogue) {
        write(&self.catalogue, Arc::new(catalogue));
        write(&self.poll, Arc::new(cfg.poll.clone()));
        write(&self.budget, Arc::new(cfg.budget.clone()));
        write(
            &self.flex_window,
            FlexWindow::parse(&cfg.maintenance.flex_window)
                .ok()
                .flatten(),
        );
    }

    /// The model catalogue in force.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        read(&self.catalogue)
    }

    /// The limits in force for `model`.
    pub fn limits(&self, model: &str) -> Limits {
        Limiter::limits(&self.catalogue(), model)
    }

    /// `[budget]` in force.
    pub fn budget(&self) -> Arc<BudgetConfig> {
        read(&self.budget)
    }

    /// The zone of `maintenance.timezone` (budget days, the flex window).
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// `[poll]` in force.
    pub fn poll(&self) -> Arc<PollConfig> {
        read(&self.poll)
    }

    /// Whether flex jobs may be submitted at `now_ms` (always, without a window).
    pub fn flex_window_open(&self, now_ms: i64) -> bool {
        read(&self.flex_window).is_none_or(|w| w.open_at(now_ms, self.tz))
    }
}
