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
    /// Estimated flex tokens submitted in the current TPD day: (day start ms, tokens).
    flex_spent: Option<(i64, i64)>,
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

    /// How many creates `model` may start at `now_ms` under `rpm`.
    pub fn room(&self, model: &str, rpm: u32, now_ms: i64) -> Result<usize, Blocked> {
        self.check(model, rpm, now_ms)?;
        let window = self.window_ms;
        Ok(self.with(model, |s| {
            let recent = s.recent.iter().filter(|t| **t > now_ms - window).count();
            (rpm as usize).saturating_sub(recent)
        }))
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

    /// Whether the day's flex spend of `model` is known in memory.
    pub fn knows_flex_day(&self, model: &str, day_ms: i64) -> bool {
        self.with(model, |s| s.flex_spent.is_some_and(|(d, _)| d == day_ms))
    }

    /// Loads the day's flex spend (read from the store at the first claim of a day), unless
    /// another dispatcher already did.
    pub fn load_flex_day(&self, model: &str, day_ms: i64, tokens: i64) {
        self.with(model, |s| {
            if s.flex_spent.is_none_or(|(d, _)| d != day_ms) {
                s.flex_spent = Some((day_ms, tokens));
            }
        });
    }

    /// Whether the day's spend is below `tpd`.
    pub fn flex_room(&self, model: &str, day_ms: i64, tpd: u64) -> bool {
        self.with(model, |s| match s.flex_spent {
            Some((d, t)) if d == day_ms => u64::try_from(t).unwrap_or(0) < tpd,
            _ => true,
        })
    }

    /// Reserves `need` tokens of the day's budget, atomically with the check, so concurrent
    /// dispatchers cannot both spend the last of it. Returns the spend so far when it does
    /// not fit.
    pub fn try_reserve_flex(
        &self,
        model: &str,
        day_ms: i64,
        need: i64,
        tpd: u64,
    ) -> Result<(), i64> {
        self.with(model, |s| {
            let spent = match s.flex_spent {
                Some((d, t)) if d == day_ms => t,
                _ => 0,
            };
            if u64::try_from(spent + need).unwrap_or(u64::MAX) > tpd {
                return Err(spent);
            }
            s.flex_spent = Some((day_ms, spent + need));
            Ok(())
        })
    }

    /// Returns a reservation when the create provably made no (billable) task.
    pub fn release_flex(&self, model: &str, day_ms: i64, need: i64) {
        self.with(model, |s| {
            if let Some((d, t)) = &mut s.flex_spent
                && *d == day_ms
            {
                *t = (*t - need).max(0);
            }
        });
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
    fn flex_reservations_never_exceed_the_budget() {
        let l = Limiter::new(Duration::from_secs(60));
        l.load_flex_day("m", 0, 90);
        assert!(l.flex_room("m", 0, 100));
        assert_eq!(l.try_reserve_flex("m", 0, 20, 100), Err(90));
        assert_eq!(l.try_reserve_flex("m", 0, 10, 100), Ok(()));
        assert!(!l.flex_room("m", 0, 100));
        l.release_flex("m", 0, 10);
        assert!(l.flex_room("m", 0, 100));
        // A new day starts from what the store says.
        assert!(!l.knows_flex_day("m", 86_400_000));
        assert_eq!(l.try_reserve_flex("m", 86_400_000, 100, 100), Ok(()));
    }

    #[test]
    fn seeding_restores_recent_creates() {
        let l = Limiter::new(Duration::from_secs(60));
        l.seed(&[("m".into(), 10), ("m".into(), 5)]);
        assert_eq!(l.check("m", 2, 100), Err(Blocked::Rpm(60_005)));
    }
}
