//! Per-model admission: concurrency slots, a sliding RPM window, and 429 pauses.
//!
//! The concurrency count itself comes from the store (jobs in remote states), read under the
//! admission lock in `dispatch`, so that two dispatchers cannot both take the last slot. This
//! module keeps what the store does not: recent create times and pauses.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::catalogue::{Catalogue, Limits};

/// Limits for models missing from the catalogue (endpoint ids): conservative.
pub const UNKNOWN_MODEL_LIMITS: Limits = Limits {
    rpm: 60,
    concurrency: 5,
    flex_tpd: None,
};

#[derive(Default)]
struct ModelState {
    /// Create times (ms) inside the current window.
    recent: VecDeque<i64>,
    /// No creates before this time (ms), after a 429.
    paused_until: i64,
}

/// Why a model cannot take a create right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Paused after a 429 until this time (ms).
    Paused(i64),
    /// The RPM window is full until this time (ms).
    Rpm(i64),
}

/// The per-model limiter.
pub struct Limiter {
    window_ms: i64,
    models: Mutex<HashMap<String, ModelState>>,
}

impl Limiter {
    /// A limiter whose RPM window is `window` long (60 s against the real API).
    pub fn new(window: Duration) -> Self {
        Self {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(60_000).max(1),
            models: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force for `model`.
    pub fn limits(catalogue: &Catalogue, model: &str) -> Limits {
        catalogue
            .get(model)
            .map_or(UNKNOWN_MODEL_LIMITS, |s| s.limits.clone())
    }

    fn with<T>(&self, model: &str, f: impl FnOnce(&mut ModelState) -> T) -> T {
        // A poisoned lock means a panic elsewhere already brings the service down; the data
        // (timestamps) stays consistent, so keep using it.
        let mut map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(model.to_string()).or_default())
    }

    /// Whether a create for `model` may start at `now_ms` under `rpm`.
    pub fn check(&self, model: &str, rpm: u32, now_ms: i64) -> Result<(), Blocked> {
        let window = self.window_ms;
        self.with(model, |s| {
            if s.paused_until > now_ms {
                return Err(Blocked::Paused(s.paused_until));
            }
            while s.recent.front().is_some_and(|t| *t <= now_ms - window) {
                s.recent.pop_front();
            }
            if s.recent.len() >= rpm as usize {
                let oldest = s.recent.front().copied().unwrap_or(now_ms);
                return Err(Blocked::Rpm(oldest + window));
            }
            Ok(())
        })
    }

    /// Records a create at `now_ms`.
    pub fn record(&self, model: &str, now_ms: i64) {
        self.with(model, |s| s.recent.push_back(now_ms));
    }

    /// Seeds the window with creates made before a restart.
    pub fn seed(&self, creates: &[(String, i64)]) {
        for (m, t) in creates {
            self.record(m, *t);
        }
        let mut map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        for s in map.values_mut() {
            s.recent.make_contiguous().sort_unstable();
        }
    }

    /// Pauses `model` until `until_ms` (after a 429).
    pub fn pause(&self, model: &str, until_ms: i64) {
        self.with(model, |s| s.paused_until = s.paused_until.max(until_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_never_holds_more_than_rpm() {
        let l = Limiter::new(Duration::from_secs(60));
        for i in 0..3 {
            assert_eq!(l.check("m", 3, 1000 + i), Ok(()));
            l.record("m", 1000 + i);
        }
        assert_eq!(l.check("m", 3, 2000), Err(Blocked::Rpm(61_000)));
        assert_eq!(l.check("other", 3, 2000), Ok(()), "models are independent");
        assert_eq!(
            l.check("m", 3, 61_000),
            Ok(()),
            "the oldest left the window"
        );
    }

    #[test]
    fn a_pause_blocks_until_its_end() {
        let l = Limiter::new(Duration::from_secs(60));
        l.pause("m", 5000);
        assert_eq!(l.check("m", 10, 4999), Err(Blocked::Paused(5000)));
        assert_eq!(l.check("m", 10, 5000), Ok(()));
    }

    #[test]
    fn seeding_restores_recent_creates() {
        let l = Limiter::new(Duration::from_secs(60));
        l.seed(&[("m".into(), 10), ("m".into(), 5)]);
        assert_eq!(l.check("m", 2, 100), Err(Blocked::Rpm(60_005)));
    }
}
