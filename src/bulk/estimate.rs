//! Estimates before anything is spent: tokens, price and time to finish, per model and tier.
//!
//! Pure arithmetic over [`Item`]s (one per job); the CLI fills them from a file or a batch
//! and from the learned generation times. Tokens follow docs/ark-api.md §10 (`W × H × frames /
//! 1024`, computed at enqueue as `est_tokens`); prices come from the catalogue
//! (`price_per_million`, overridable per model in `config.toml`), flex at 50 %. The time to
//! finish assumes the model's limits are the only bottleneck, per tier (docs/ark-api.md §6.2 D3):
//! the default tier by its concurrency slots and RPM; flex by its daily token budget (TPD)
//! and the account's optional `flex_max_in_flight` / `flex_rpm`, its time per job the
//! learned flex duration (which includes the wait in Ark's offline queue).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::catalogue::{self, Catalogue, Limits};
use crate::config::PollConfig;
use crate::job::JobState;
use crate::store::{Store, StoreError};
use crate::tier::Tier;

/// Completions that predict the next one (as the poller uses).
const HISTORY: u32 = 20;

/// Expected generation times, looked up once per (model, tier, shape): the median of recent
/// completions (as the poller learns them), else the configured first-poll time of the tier,
/// which is the same prior the poller starts from.
pub struct GenTimes<'a> {
    store: &'a Store,
    prior_default: i64,
    prior_flex: i64,
    cache: HashMap<(String, Tier, Option<String>), (i64, bool)>,
}

impl<'a> GenTimes<'a> {
    pub fn new(store: &'a Store, poll: &PollConfig) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            store,
            prior_default: ms(poll.first_poll_after),
            prior_flex: ms(poll.flex_first_poll_after),
            cache: HashMap::new(),
        }
    }

    /// Expected generation time (ms) and whether it was learned (else the prior).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn get(
        &mut self,
        model: &str,
        tier: Tier,
        shape: Option<&str>,
    ) -> Result<(i64, bool), StoreError> {
        let key = (model.to_string(), tier, shape.map(str::to_string));
        if let Some(v) = self.cache.get(&key) {
            return Ok(*v);
        }
        let learned = self
            .store
            .recent_generation_ms(model, tier, shape, HISTORY)
            .await?;
        let v = match learned {
            Some(ms) => (ms, true),
            None if tier.is_flex() => (self.prior_flex, false),
            None => (self.prior_default, false),
        };
        self.cache.insert(key, v);
        Ok(v)
    }

    /// Generation time (ms) still ahead of a job in `state`, for the ETAs of `seedq watch`
    /// and the dashboard: none once it no longer waits on Ark (archiving takes seconds, not a
    /// generation), half the expected time once submitted (about half way through, on
    /// average), else all of it.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn remaining(
        &mut self,
        state: JobState,
        model: &str,
        tier: Tier,
        shape: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        let waiting = matches!(
            state,
            JobState::Queued | JobState::Submitting | JobState::SubmitUnknown | JobState::Submitted
        );
        if !waiting {
            return Ok(None);
        }
        let (gen_ms, _) = self.get(model, tier, shape).await?;
        Ok(Some(if state == JobState::Submitted {
            gen_ms / 2
        } else {
            gen_ms
        }))
    }
}

/// One job to estimate.
#[derive(Clone, Debug)]
pub struct Item {
    pub model: String,
    pub flex: bool,
    /// `None` when the pixel size is unknown (models outside the catalogue).
    pub tokens: Option<i64>,
    /// Expected generation time (ms): learned, or the configured prior.
    pub gen_ms: i64,
    /// Still to run (counts towards the time to finish); finished jobs only add tokens/cost.
    pub pending: bool,
}

/// The estimate for one model and tier.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Row {
    pub model: String,
    pub tier: Tier,
    pub jobs: i64,
    pub tokens: i64,
    /// Jobs whose tokens could not be estimated (not in `tokens`).
    pub unknown_tokens: i64,
    /// CNY; `None` without a price (model outside the catalogue).
    pub cost: Option<f64>,
    /// Time to finish these jobs alone at the model's limits (ms).
    pub finish_ms: i64,
    /// Whole TPD days the flex tokens need beyond the first (0 for default).
    pub tpd_days: i64,
}

/// All rows plus the overall time: models and the tiers of a model run side by side.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Estimate {
    pub rows: Vec<Row>,
    pub jobs: i64,
    pub tokens: i64,
    pub cost: f64,
    pub finish_ms: i64,
}

const MINUTE_MS: i64 = 60_000;

/// Time for `n` jobs whose generation times sum to `sum_ms` (longest `max_ms`) at `limits`.
///
/// The slots bound it below by `sum / concurrency` and by the longest job; the RPM window by
/// the time it takes to create `n` tasks. A flex budget that `tokens` exceed adds whole days
/// of waiting (`day_ms` each).
pub fn finish_ms(
    n: i64,
    sum_ms: i64,
    max_ms: i64,
    limits: &Limits,
    flex_tokens: i64,
    day_ms: i64,
) -> (i64, i64) {
    if n == 0 {
        return (0, 0);
    }
    let slots = i64::from(limits.concurrency.max(1));
    let by_slots = (sum_ms + slots - 1) / slots;
    let by_rpm = (n - 1) * MINUTE_MS / i64::from(limits.rpm.max(1));
    // The last task created still takes its generation time.
    let work = by_slots.max(by_rpm + max_ms);
    let days = flex_extra_days(limits, flex_tokens);
    (work + days * day_ms, days)
}

/// Time for `n` flex jobs: bounded by the account's flex ceilings when set (else each job
/// takes its learned time, all at once), plus a whole TPD day for every budget the tokens
/// exceed. Returns (ms, extra days).
pub fn finish_ms_flex(
    n: i64,
    sum_ms: i64,
    max_ms: i64,
    limits: &Limits,
    flex_tokens: i64,
    day_ms: i64,
) -> (i64, i64) {
    if n == 0 {
        return (0, 0);
    }
    let by_slots = limits.flex_max_in_flight.map_or(max_ms, |c| {
        (sum_ms + i64::from(c.max(1)) - 1) / i64::from(c.max(1))
    });
    let by_rpm = limits
        .flex_rpm
        .map_or(0, |r| (n - 1) * MINUTE_MS / i64::from(r.max(1)));
    let work = by_slots.max(by_rpm + max_ms);
    let days = flex_extra_days(limits, flex_tokens);
    (work + days * day_ms, days)
}

/// Whole TPD days of waiting that `flex_tokens` add beyond the first day's budget (none
/// when the account has no flex TPD).
fn flex_extra_days(limits: &Limits, flex_tokens: i64) -> i64 {
    match limits.flex_tpd {
        Some(tpd) if flex_tokens > 0 && tpd > 0 => {
            let tpd = i64::try_from(tpd).unwrap_or(i64::MAX);
            (flex_tokens - 1) / tpd
        }
        _ => 0,
    }
}

/// Groups `items` per model and tier and estimates each group and the whole.
pub fn estimate(
    items: &[Item],
    catalogue: &Catalogue,
    limits: impl Fn(&str) -> Limits,
    day_ms: i64,
) -> Estimate {
    #[derive(Default)]
    struct Acc {
        jobs: i64,
        tokens: i64,
        unknown: i64,
        pending: i64,
        pending_flex_tokens: i64,
        sum_ms: i64,
        max_ms: i64,
    }
    let mut groups: BTreeMap<(String, bool), Acc> = BTreeMap::new();
    for it in items {
        let a = groups.entry((it.model.clone(), it.flex)).or_default();
        a.jobs += 1;
        match it.tokens {
            Some(t) => a.tokens += t,
            None => a.unknown += 1,
        }
        if it.pending {
            a.pending += 1;
            if it.flex {
                a.pending_flex_tokens += it.tokens.unwrap_or(0);
            }
            a.sum_ms += it.gen_ms;
            a.max_ms = a.max_ms.max(it.gen_ms);
        }
    }
    let mut out = Estimate::default();
    for ((model, flex), a) in &groups {
        let lim = limits(model);
        let flex_tokens = a.pending_flex_tokens;
        let (finish, days) = if *flex {
            finish_ms_flex(a.pending, a.sum_ms, a.max_ms, &lim, flex_tokens, day_ms)
        } else {
            finish_ms(a.pending, a.sum_ms, a.max_ms, &lim, 0, day_ms)
        };
        let cost = catalogue
            .get(model)
            .map(|s| catalogue::cost(s, a.tokens, *flex));
        out.rows.push(Row {
            model: model.clone(),
            tier: Tier::from_flex(*flex),
            jobs: a.jobs,
            tokens: a.tokens,
            unknown_tokens: a.unknown,
            cost,
            finish_ms: finish,
            tpd_days: days,
        });
        out.jobs += a.jobs;
        out.tokens += a.tokens;
        out.cost += cost.unwrap_or(0.0);
        out.finish_ms = out.finish_ms.max(finish);
    }
    out
}

/// A duration for tables: `45s`, `12m`, `3h 20m`, `2d 4h`.
pub fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRO: &str = "doubao-seedance-1-0-pro-250528";

    fn lim(concurrency: u32, rpm: u32, tpd: Option<u64>) -> Limits {
        Limits {
            rpm,
            concurrency,
            flex_tpd: tpd,
            flex_max_in_flight: None,
            flex_rpm: None,
            per_resolution: BTreeMap::new(),
        }
    }

    #[test]
    fn slots_bound_the_time() {
        // 100 jobs of 60 s at 10 slots: 10 waves of a minute.
        let (t, d) = finish_ms(
            100,
            100 * 60_000,
            60_000,
            &lim(10, 600, None),
            0,
            86_400_000,
        );
        assert_eq!((t, d), (600_000, 0));
        // One job is never faster than itself.
        let (t, _) = finish_ms(1, 60_000, 60_000, &lim(10, 600, None), 0, 86_400_000);
        assert_eq!(t, 60_000);
    }

    #[test]
    fn rpm_bounds_the_time_of_short_jobs() {
        // 601 one-second jobs at 1000 slots but 60 rpm: ten minutes of creates, plus the last.
        let (t, _) = finish_ms(601, 601_000, 1_000, &lim(1000, 60, None), 0, 86_400_000);
        assert_eq!(t, 600_000 + 1_000);
    }

    #[test]
    fn tpd_adds_whole_days() {
        let l = lim(10, 600, Some(1_000));
        assert_eq!(finish_ms(1, 10, 10, &l, 1_000, 100).1, 0);
        assert_eq!(finish_ms(1, 10, 10, &l, 1_001, 100), (110, 1));
        assert_eq!(finish_ms(1, 10, 10, &l, 3_500, 100), (310, 3));
    }

    #[test]
    fn flex_ignores_default_concurrency_and_counts_tpd_days() {
        // 2000 flex jobs of 8 min with a default concurrency of 10: unbounded flex takes
        // one job's time, not 200 waves; the tokens need two more days at TPD 1000.
        let l = lim(10, 600, Some(1_000));
        let (t, d) = finish_ms_flex(2000, 2000 * 480_000, 480_000, &l, 2_500, 86_400_000);
        assert_eq!((t, d), (480_000 + 2 * 86_400_000, 2));
        // An account ceiling of 200 at once: ten waves.
        let capped = Limits {
            flex_max_in_flight: Some(200),
            ..lim(10, 600, None)
        };
        assert_eq!(
            finish_ms_flex(2000, 2000 * 480_000, 480_000, &capped, 0, 1),
            (4_800_000, 0)
        );
        // Both tiers of one model run side by side: the whole is the slower of them.
        let items: Vec<Item> = (0..20)
            .map(|i| Item {
                model: PRO.into(),
                flex: i % 2 == 0,
                tokens: Some(1),
                gen_ms: 60_000,
                pending: true,
            })
            .collect();
        let e = estimate(&items, &Catalogue::default(), |_| lim(1, 600, None), 1);
        assert_eq!(e.rows[0].finish_ms, 600_000, "10 default jobs, one slot");
        assert_eq!(e.rows[1].finish_ms, 60_000, "10 flex jobs at once");
        assert_eq!(e.finish_ms, 600_000);
    }

    #[test]
    fn groups_price_flex_at_half() {
        let c = Catalogue::default();
        let items = vec![
            Item {
                model: PRO.into(),
                flex: false,
                tokens: Some(1_000_000),
                gen_ms: 1000,
                pending: true,
            },
            Item {
                model: PRO.into(),
                flex: true,
                tokens: Some(1_000_000),
                gen_ms: 1000,
                pending: true,
            },
            Item {
                model: "ep-x".into(),
                flex: false,
                tokens: None,
                gen_ms: 1000,
                pending: true,
            },
        ];
        let e = estimate(&items, &c, |_| lim(10, 600, None), 86_400_000);
        assert_eq!(e.rows.len(), 3);
        // Sorted by model, then tier: the pro rows come before "ep-x".
        let default = &e.rows[0];
        let flex = &e.rows[1];
        assert_eq!((default.tier, flex.tier), (Tier::Default, Tier::Flex));
        assert_eq!(default.cost, Some(15.0));
        assert_eq!(flex.cost, Some(7.5));
        assert_eq!(e.rows[2].unknown_tokens, 1);
        assert_eq!(e.rows[2].cost, None);
        assert_eq!((e.jobs, e.tokens), (3, 2_000_000));
        assert!((e.cost - 22.5).abs() < 1e-9);
    }

    #[test]
    fn durations_print_compactly() {
        assert_eq!(human_ms(45_000), "45s");
        assert_eq!(human_ms(725_000), "12m 05s");
        assert_eq!(human_ms(12_000_000), "3h 20m");
        assert_eq!(human_ms(187_200_000), "2d 04h");
    }
}
