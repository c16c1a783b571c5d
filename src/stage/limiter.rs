//! Per-model admission: concurrency slots, a sliding RPM window, and 429 pauses.
//!
//! The concurrency count itself comes from the store (jobs in remote states), read under the
//! admission lock in `dispatch`, so that two dispatchers cannot both take the last slot. This
//! module keeps what the store does not: recent create times and pauses.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalogue::{Catalogue, Limits};

/// Limits for models missing from the catalogue (endpoint ids): conservative.
pub const UNKNOWN_MODEL_LIMITS: Limits = Limits {
    rpm: 60,
    concurrency: 5,
    flex_tpd: None,
    flex_max_in_flight: None,
    flex_rpm: None,
    per_resolution: BTreeMap::new(),
};

#[derive(Default)]
struct ModelState {
    /// Create times (ms) inside the current window.
    recent: VecDeque<i64>,
    /// No creates before this time (ms), after a 429.
    paused_until: i64,
    /// Flex tokens of the current TPD day: (day start ms, tokens the store counts, store
    /// read at ms). The store's count uses billed usage where a task has finished, so each
    /// reload corrects the estimates.
    flex_spent: Option<(i64, i64, i64)>,
    /// Tokens reserved by creates whose POST has not returned: not in the store yet.
    flex_pending: i64,
    /// Ark rejected a flex create for TPD on this day: no more creates until the next one.
    flex_exhausted_day: Option<i64>,
    /// The learned flex in-flight ceiling (AIMD); `None` until Ark first says 429.
    flex_ceiling: Option<f64>,
    /// Consecutive flex 429s, for the backoff when Ark sends no `Retry-After`.
    flex_strikes: u32,
    /// Held while this process reads the day's flex spend from the store, so the dispatch
    /// tasks that find the copy stale together send one read, not one each (a fleet's
    /// dispatchers refreshing at once kept about 20 copies of the sum running on PostgreSQL:
    /// docs/performance-fleet.md).
    flex_read: Arc<tokio::sync::Mutex<()>>,
}

/// The learned ceiling is forgotten once it has crept back this high: Ark sets no flex
/// concurrency, so a ceiling only stands while Ark keeps confirming it.
const FORGET_CEILING: f64 = 100_000.0;

/// The limiter key of a model's flex tier: its RPM window (when `flex_rpm` is set) and its
/// pauses are separate from the default tier's (docs/ark-api.md §6.2 D3).
pub fn flex_key(model: &str) -> String {
    format!("{model}#flex")
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

    /// Like [`Limiter::room`], with no RPM bound when `rpm` is `None` (flex without
    /// `flex_rpm`): only a pause blocks.
    pub fn room_opt(&self, key: &str, rpm: Option<u32>, now_ms: i64) -> Result<usize, Blocked> {
        match rpm {
            Some(rpm) => self.room(key, rpm, now_ms),
            None => self.with(key, |s| {
                if s.paused_until > now_ms {
                    Err(Blocked::Paused(s.paused_until))
                } else {
                    Ok(usize::MAX)
                }
            }),
        }
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

    /// Whether the day's flex spend of `model` was read from the store at or after
    /// `fresh_since_ms`.
    pub fn knows_flex_day(&self, model: &str, day_ms: i64, fresh_since_ms: i64) -> bool {
        self.with(model, |s| {
            s.flex_spent
                .is_some_and(|(d, _, at)| d == day_ms && at >= fresh_since_ms)
        })
    }

    /// Makes sure the day's flex spend of `model` was read at or after `fresh_since_ms`:
    /// if not, `read` (the store's count) is called and its answer loaded as read at
    /// `now_ms`. One read per model at a time; a caller that waited for another's read uses
    /// it when it is fresh enough.
    ///
    /// # Errors
    /// What `read` returns.
    pub async fn refresh_flex_day<E, Fut>(
        &self,
        model: &str,
        day_ms: i64,
        fresh_since_ms: i64,
        now_ms: i64,
        read: impl FnOnce() -> Fut,
    ) -> Result<(), E>
    where
        Fut: Future<Output = Result<i64, E>>,
    {
        if self.knows_flex_day(model, day_ms, fresh_since_ms) {
            return Ok(());
        }
        let gate = self.with(model, |s| Arc::clone(&s.flex_read));
        let _one = gate.lock().await;
        if self.knows_flex_day(model, day_ms, fresh_since_ms) {
            return Ok(());
        }
        let spent = read().await?;
        self.load_flex_day(model, day_ms, spent, now_ms);
        Ok(())
    }

    /// Sets the day's flex spend to what the store counts (submitted tasks, billed usage
    /// where known) at `now_ms`; reservations still in flight stay on top of it.
    pub fn load_flex_day(&self, model: &str, day_ms: i64, tokens: i64, now_ms: i64) {
        self.with(model, |s| s.flex_spent = Some((day_ms, tokens, now_ms)));
    }

    fn spent(s: &ModelState, day_ms: i64) -> i64 {
        let stored = match s.flex_spent {
            Some((d, t, _)) if d == day_ms => t,
            _ => 0,
        };
        stored + s.flex_pending
    }

    /// Whether the day's spend is below `tpd` and Ark has not refused the day.
    pub fn flex_room(&self, model: &str, day_ms: i64, tpd: u64) -> bool {
        self.with(model, |s| {
            s.flex_exhausted_day != Some(day_ms)
                && u64::try_from(Self::spent(s, day_ms)).unwrap_or(0) < tpd
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
            let spent = Self::spent(s, day_ms);
            if s.flex_exhausted_day == Some(day_ms)
                || u64::try_from(spent + need).unwrap_or(u64::MAX) > tpd
            {
                return Err(spent);
            }
            s.flex_pending += need;
            Ok(())
        })
    }

    /// Returns a reservation when the create provably made no (billable) task.
    pub fn release_flex(&self, model: &str, _day_ms: i64, need: i64) {
        self.with(model, |s| s.flex_pending = (s.flex_pending - need).max(0));
    }

    /// Moves a reservation into the day's spend once its task exists (the store now has it,
    /// but the in-memory count is not re-read until the next reload).
    pub fn commit_flex(&self, model: &str, day_ms: i64, need: i64) {
        self.with(model, |s| {
            s.flex_pending = (s.flex_pending - need).max(0);
            if let Some((d, t, _)) = &mut s.flex_spent
                && *d == day_ms
            {
                *t += need;
            }
        });
    }

    /// Ark refused a flex create for TPD: nothing more for `model` until the next day.
    pub fn exhaust_flex_day(&self, model: &str, day_ms: i64) {
        self.with(model, |s| s.flex_exhausted_day = Some(day_ms));
    }

    /// The learned flex in-flight ceiling of `model`, if Ark has taught one.
    pub fn flex_ceiling(&self, model: &str) -> Option<u32> {
        self.with(&flex_key(model), |s| {
            s.flex_ceiling.map(|c| c.floor().max(1.0) as u32)
        })
    }

    /// A flex create of `model` got a 429 with `in_flight` flex tasks out: halve the learned
    /// ceiling (multiplicative decrease) and pause the tier until `retry_after_ms` from `now_ms`,
    /// or a backoff of `base_ms` doubling per consecutive 429 (capped at 32×). Returns the
    /// pause's end.
    pub fn flex_throttled(
        &self,
        model: &str,
        in_flight: i64,
        now_ms: i64,
        retry_after_ms: Option<i64>,
        base_ms: i64,
    ) -> i64 {
        self.with(&flex_key(model), |s| {
            let seen = (in_flight.max(1)) as f64;
            let cut = (s.flex_ceiling.unwrap_or(seen).min(seen) / 2.0).max(1.0);
            s.flex_ceiling = Some(cut);
            s.flex_strikes = s.flex_strikes.saturating_add(1);
            let backoff = base_ms.max(1) << (s.flex_strikes - 1).min(5);
            let until = now_ms + retry_after_ms.unwrap_or(backoff);
            s.paused_until = s.paused_until.max(until);
            until
        })
    }

    /// A flex create of `model` was accepted: the backoff resets and the learned ceiling
    /// creeps up by one per ceiling's worth of acceptances (additive increase).
    pub fn flex_accepted(&self, model: &str) {
        self.with(&flex_key(model), |s| {
            s.flex_strikes = 0;
            if let Some(c) = s.flex_ceiling {
                let next = c + 1.0 / c;
                s.flex_ceiling = (next < FORGET_CEILING).then_some(next);
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

    #[tokio::test]
    async fn dispatchers_that_find_the_flex_day_stale_together_read_it_once() {
        let l = Arc::new(Limiter::new(Duration::from_secs(60)));
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (l, reads) = (Arc::clone(&l), Arc::clone(&reads));
            tasks.spawn(async move {
                l.refresh_flex_day("m", 0, 1_000, 1_000, || async {
                    reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<i64, ()>(500)
                })
                .await
            });
        }
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.expect("join"), Ok(()));
        }
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(l.knows_flex_day("m", 0, 1_000));
        assert!(l.flex_room("m", 0, 501) && !l.flex_room("m", 0, 500));
        // Stale again later: read again; another model reads on its own.
        l.refresh_flex_day("m", 0, 2_000, 2_000, || async { Ok::<i64, ()>(0) })
            .await
            .expect("read");
        assert!(l.knows_flex_day("m", 0, 2_000));
        assert!(!l.knows_flex_day("other", 0, 0));
    }

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
        l.load_flex_day("m", 0, 90, 0);
        assert!(l.flex_room("m", 0, 100));
        assert_eq!(l.try_reserve_flex("m", 0, 20, 100), Err(90));
        assert_eq!(l.try_reserve_flex("m", 0, 10, 100), Ok(()));
        assert!(!l.flex_room("m", 0, 100));
        l.release_flex("m", 0, 10);
        assert!(l.flex_room("m", 0, 100));
        // A new day starts from what the store says.
        assert!(!l.knows_flex_day("m", 86_400_000, 0));
        assert_eq!(l.try_reserve_flex("m", 86_400_000, 100, 100), Ok(()));
    }

    #[test]
    fn reloads_correct_the_spend_but_keep_pending_reservations() {
        let l = Limiter::new(Duration::from_secs(60));
        l.load_flex_day("m", 0, 50, 0);
        assert_eq!(l.try_reserve_flex("m", 0, 30, 100), Ok(()));
        // Billed usage came in lower than estimated: the store says 20.
        l.load_flex_day("m", 0, 20, 10);
        assert!(l.knows_flex_day("m", 0, 10));
        assert!(!l.knows_flex_day("m", 0, 11), "stale after its time");
        assert_eq!(
            l.try_reserve_flex("m", 0, 60, 100),
            Err(50),
            "20 + 30 pending"
        );
        l.commit_flex("m", 0, 30);
        assert_eq!(l.try_reserve_flex("m", 0, 50, 100), Ok(()));
        assert_eq!(l.try_reserve_flex("m", 0, 1, 100), Err(100));
    }

    #[test]
    fn an_ark_tpd_refusal_closes_the_day_only() {
        let l = Limiter::new(Duration::from_secs(60));
        l.exhaust_flex_day("m", 0);
        assert!(!l.flex_room("m", 0, 100));
        assert_eq!(l.try_reserve_flex("m", 0, 1, 100), Err(0));
        assert!(l.flex_room("m", 1000, 100));
    }

    #[test]
    fn flex_429s_cut_the_ceiling_and_back_off_and_acceptances_restore_it() {
        let l = Limiter::new(Duration::from_secs(60));
        assert_eq!(l.flex_ceiling("m"), None);
        assert_eq!(l.room_opt(&flex_key("m"), None, 0), Ok(usize::MAX));
        assert_eq!(l.flex_throttled("m", 200, 0, None, 1000), 1000);
        assert_eq!(l.flex_ceiling("m"), Some(100));
        assert_eq!(
            l.room_opt(&flex_key("m"), None, 999),
            Err(Blocked::Paused(1000))
        );
        assert_eq!(
            l.room_opt("m", Some(10), 999),
            Ok(10),
            "the default tier is not paused"
        );
        // A second 429 in a row: half again, and twice the backoff.
        assert_eq!(l.flex_throttled("m", 100, 1000, None, 1000), 3000);
        assert_eq!(l.flex_ceiling("m"), Some(50));
        // Retry-After wins over the backoff.
        assert_eq!(l.flex_throttled("m", 50, 3000, Some(7000), 1000), 10_000);
        assert_eq!(l.flex_ceiling("m"), Some(25));
        for _ in 0..30 {
            l.flex_accepted("m");
        }
        assert_eq!(l.flex_ceiling("m"), Some(26));
        assert_eq!(
            l.flex_throttled("m", 26, 20_000, None, 1000),
            21_000,
            "strikes reset"
        );
    }

    #[test]
    fn seeding_restores_recent_creates() {
        let l = Limiter::new(Duration::from_secs(60));
        l.seed(&[("m".into(), 10), ("m".into(), 5)]);
        assert_eq!(l.check("m", 2, 100), Err(Blocked::Rpm(60_005)));
    }
}
