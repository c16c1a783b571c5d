//! Several workers on one database: the worker registry with heartbeats,
//! singleton leases (`leaders`), and the fleet-wide account limits the claim enforces.
//!
//! Every worker is a row in `workers` (migrations/0012_fleet.sql) whose `id` is its lease
//! owner string. It heartbeats about once a second; any worker that sees a heartbeat older than
//! `service.worker_timeout` releases that worker's leases, so a dead worker's jobs come back in
//! seconds, also across hosts, instead of when their leases run out.
//!
//! A singleton (maintenance, the governor, reconciliation sweeps) runs only where
//! [`Store::try_lead`] says so: one conditional upsert takes the row when it is free or expired
//! and renews it when it is ours. Its `until` is a lease; a dead leader is replaced once it
//! runs out.
//!
//! The account limits (RPM, flex TPD) are counted from the jobs themselves inside the claim's
//! transaction ([`room_in_tx`]): the claim writes `submit_started_at` in that same transaction,
//! so N processes claiming at once can never together exceed a limit.

use super::{Job, ResolutionScope};
use crate::tier::Tier;

use super::StoreError;

/// One registered worker process.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WorkerRow {
    /// The lease owner string (`host-pid-boot`).
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// seedq's version.
    pub version: String,
    pub started_at: crate::Timestamp,
    pub heartbeat_at: crate::Timestamp,
}

/// The holder of one singleton.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LeaderRow {
    /// `maintenance`, `governor`, `reconcile`.
    pub name: String,
    pub owner: String,
    /// When this owner took it (ms).
    pub since: i64,
    /// When its lease runs out unless renewed (ms).
    pub until: i64,
}

/// The account limits a claim enforces for the whole fleet, beside the concurrency cap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetLimits {
    /// Creates per `window` on the (model, tier), counted from every worker's claims.
    pub rpm: Option<u32>,
    /// The same for the claimed resolution alone (`ResolutionScope::Only`, 2.0 `4k`).
    pub resolution_rpm: Option<u32>,
    /// The RPM window (`dispatch.rpm_window`).
    pub window: std::time::Duration,
    /// Flex only: the day's token budget. The claim takes jobs in claim order while their
    /// estimated tokens fit in what the day has left; the next candidates that do not fit
    /// wait for the next day.
    pub tpd: Option<FlexDay>,
}

/// A flex TPD day as a claim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlexDay {
    /// The day's token budget.
    pub tpd: u64,
    /// When the day starts and when the next one does.
    pub start: crate::Timestamp,
    pub next: crate::Timestamp,
    /// How long before `start` a create may have been claimed and still reach Ark after it
    /// (the submit lease plus the request timeout). Ark counts a create in the day it
    /// arrives in; the store counts it in the day it was claimed in, and the dispatcher sends
    /// a create only in its claim day, answered before the day ends or given up. So only a
    /// create still unanswered (`submitting`, `submit_unknown`) may have arrived in a later
    /// day: one claimed in this span counts in this day too. Counting it twice costs a clip
    /// of budget at most; counting it once in the wrong day gets a create refused.
    pub straddle: std::time::Duration,
}

/// What [`room_in_tx`] allows.
pub(crate) struct Room {
    /// How many creates the RPM windows still allow (`i64::MAX` without an RPM).
    pub creates: i64,
    /// Tokens the flex day has left (`None` without a TPD).
    pub tokens: Option<i64>,
}

backend_trait! {
    /// A fleet of workers: registration, heartbeats, leadership, shared rate windows and limited
    /// claims.
    trait FleetStore {
        /// Registers (or re-registers) a worker, heartbeat now.
        ///
        /// # Errors
        /// SQL errors.
        pub fn register_worker(&self, w: WorkerRow) -> Result<(), StoreError>;

        /// Records a heartbeat. False when the row is gone: another worker took this one for dead
        /// (it was paused or cut off longer than the timeout) and released its leases.
        ///
        /// # Errors
        /// SQL errors.
        pub fn heartbeat_worker(&self, id: &str, now: i64) -> Result<bool, StoreError>;

        /// Removes a worker that stops cleanly, with the singletons it leads, so a successor
        /// need not wait for their leases to run out.
        ///
        /// # Errors
        /// SQL errors.
        pub fn deregister_worker(&self, id: &str) -> Result<(), StoreError>;

        /// The registered workers, oldest first.
        ///
        /// # Errors
        /// SQL errors.
        pub fn workers(&self) -> Result<Vec<WorkerRow>, StoreError>;

        /// Takes a worker for dead: releases its leases (see [`release_leases`] for `dead`),
        /// drops the singletons it leads and deletes its row, in one transaction, and only if its
        /// heartbeat is still older than `lapsed_before` then (it did not come back meanwhile).
        /// Returns how many jobs it held, or `None` when it was alive after all.
        ///
        /// # Errors
        /// SQL errors.
        pub fn reap_worker(
            &self,
            id: &str,
            lapsed_before: i64,
            dead: bool,
        ) -> Result<Option<usize>, StoreError>;

        /// Drops the singletons `owner` leads (a process known to be dead), so the next
        /// [`Store::try_lead`] need not wait for their leases.
        ///
        /// # Errors
        /// SQL errors.
        pub fn drop_leadership_of(&self, owner: &str) -> Result<usize, StoreError>;

        /// One heartbeat of worker `id` and the renewal of its singletons `names` for `ttl_ms`, in
        /// one transaction: one commit a tick, so a worker holds the database's write lock as
        /// briefly as it can (a worker stopped inside a write would stall every other). Returns
        /// whether the worker was still registered (see [`Store::heartbeat_worker`]) and, per
        /// name, the new `until` when it leads (see [`Store::try_lead`]).
        ///
        /// # Errors
        /// SQL errors.
        pub fn beat(
            &self,
            id: &str,
            names: &[&'static str],
            ttl: std::time::Duration,
        ) -> Result<(bool, Vec<Option<i64>>), StoreError>;

        /// Takes or renews the singleton `name` for `owner` for `ttl_ms`: one conditional upsert,
        /// which succeeds when the row is free, expired or already ours. Returns the new `until`
        /// when `owner` leads, `None` when another does.
        ///
        /// # Errors
        /// SQL errors.
        pub fn try_lead(
            &self,
            name: &str,
            owner: &str,
            ttl: std::time::Duration,
        ) -> Result<Option<i64>, StoreError>;

        /// Gives up the singleton `name` if `owner` holds it (a clean stop).
        ///
        /// # Errors
        /// SQL errors.
        pub fn resign(&self, name: &str, owner: &str) -> Result<(), StoreError>;

        /// When the `rpm`-th newest create of (`model`, `tier`) since `since_ms` started, i.e. the
        /// create whose leaving the RPM window makes room again; `None` when the window has room.
        /// A dispatcher that another worker's creates kept out sleeps until then.
        ///
        /// # Errors
        /// SQL errors.
        pub fn rpm_window_full_since(
            &self,
            model: &str,
            tier: Tier,
            since: crate::Timestamp,
            rpm: u32,
        ) -> Result<Option<crate::Timestamp>, StoreError>;

        /// Every singleton's holder, expired ones included (`until` says).
        ///
        /// # Errors
        /// SQL errors.
        pub fn leaders(&self) -> Result<Vec<LeaderRow>, StoreError>;

        /// [`Store::claim_for_submit_tier`] within the account's RPM and flex TPD as well, counted
        /// for every worker on this database in the same transaction (store/fleet.rs), so that N
        /// workers together never exceed them and one alone can use all of them.
        ///
        /// # Errors
        /// SQL errors.
        #[allow(clippy::too_many_arguments)]
        pub fn claim_for_submit_limited(
            &self,
            model: &str,
            tier: Tier,
            max_in_flight: u32,
            scope: ResolutionScope,
            limit: u32,
            owner: &str,
            lease: std::time::Duration,
            fleet: &FleetLimits,
        ) -> Result<Vec<Job>, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;
    use crate::{NewJob, ResolutionScope, testpg};
    use crate::{Store, now_ms};

    fn worker(id: &str, heartbeat_at: i64) -> WorkerRow {
        WorkerRow {
            id: id.into(),
            host: "h".into(),
            pid: 1,
            version: "v".into(),
            started_at: crate::Timestamp::from_ms(heartbeat_at),
            heartbeat_at: crate::Timestamp::from_ms(heartbeat_at),
        }
    }

    /// Adds `n` queued jobs of model `m` (flex with `tokens` each when given); their ids.
    /// On PostgreSQL the rows are written directly until its `enqueue` lands (pgcore).
    /// A flex claim of up to `limit` jobs by `owner` under the TPD day `day` alone.
    async fn claim_flex(s: &Store, owner: &str, limit: u32, day: FlexDay) -> Vec<Job> {
        s.claim_for_submit_limited(
            "m",
            Tier::Flex,
            100,
            ResolutionScope::All,
            limit,
            owner,
            crate::tests::LEASE,
            &FleetLimits {
                tpd: Some(day),
                ..FleetLimits::default()
            },
        )
        .await
        .expect("claim")
    }

    async fn add(s: &Store, n: usize, flex: Option<i64>) -> Vec<String> {
        let jobs: Vec<NewJob> = (0..n)
            .map(|_| {
                let mut j = NewJob::plain("{}");
                j.flex = flex.is_some();
                j.est_tokens = flex;
                j
            })
            .collect();
        let ids = jobs.iter().map(|j| j.id.to_string()).collect();
        match s.pg() {
            None => {
                s.enqueue(jobs).await.expect("enqueue");
            }
            Some(pg) => {
                let c = pg.conn().await.expect("conn");
                for j in &jobs {
                    c.execute(
                        "INSERT INTO jobs (id, created_at, updated_at, state, model, service_tier, \
                         request_json, est_tokens, next_attempt_at) \
                         VALUES ($1, $2, $2, 'queued', 'm', $3, '{}', $4, $2)",
                        &[
                            &j.id.as_str(),
                            &(now_ms() - 1),
                            &Tier::from_flex(j.flex),
                            &j.est_tokens,
                        ],
                    )
                    .await
                    .expect("insert");
                }
            }
        }
        ids
    }

    #[tokio::test]
    async fn a_singleton_has_one_leader_until_its_lease_runs_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            let lead = |n: &'static str, o: &'static str, ttl: u64| {
                let s = s.clone();
                let ttl = std::time::Duration::from_millis(ttl);
                async move { s.try_lead(n, o, ttl).await.expect("lead").is_some() }
            };
            assert!(lead("governor", "a", 60_000).await, "{b}");
            assert!(!lead("governor", "b", 60_000).await, "{b}");
            // Renewing keeps `since`.
            let since = s.leaders().await.expect("leaders")[0].since;
            assert!(lead("governor", "a", 60_000).await, "{b}");
            assert_eq!(s.leaders().await.expect("leaders")[0].since, since, "{b}");
            // Another name is another lock.
            assert!(lead("maintenance", "b", 60_000).await, "{b}");
            // An expired lease (a zero TTL: over as soon as it starts) is anyone's.
            assert!(lead("governor", "a", 0).await, "{b}");
            assert!(lead("governor", "b", 60_000).await, "{b}");
            assert_eq!(s.leaders().await.expect("leaders")[0].owner, "b", "{b}");
            // Resigning frees it at once.
            s.resign("governor", "b").await.expect("resign");
            assert!(lead("governor", "a", 60_000).await, "{b}");
        }
    }

    #[tokio::test]
    async fn a_lapsed_worker_is_reaped_with_its_leases_and_singletons() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            add(&s, 2, None).await;
            let held = s
                .claim_for_submit_tier(
                    "m",
                    Tier::Default,
                    10,
                    ResolutionScope::All,
                    1,
                    "dead",
                    std::time::Duration::from_millis(600_000),
                )
                .await
                .expect("claim");
            assert_eq!(held.len(), 1, "{b}");
            s.register_worker(worker("dead", 1_000))
                .await
                .expect("register");
            s.register_worker(worker("live", now_ms()))
                .await
                .expect("register");
            s.try_lead(
                "maintenance",
                "dead",
                std::time::Duration::from_millis(600_000),
            )
            .await
            .expect("lead");
            // A live heartbeat is not reaped.
            assert_eq!(
                s.reap_worker("live", 2_000, false).await.expect("reap"),
                None,
                "{b}"
            );
            assert_eq!(
                s.reap_worker("dead", 2_000, false).await.expect("reap"),
                Some(1),
                "{b}"
            );
            let ids: Vec<String> = s
                .workers()
                .await
                .expect("workers")
                .into_iter()
                .map(|w| w.id)
                .collect();
            assert_eq!(ids, vec!["live".to_string()], "{b}");
            assert!(s.leaders().await.expect("leaders").is_empty(), "{b}");
            // The job is due again now, not in ten minutes, and without `holder_dead`: the
            // process may still be sending its create.
            let j = s
                .job(held[0].id.as_str())
                .await
                .expect("job")
                .expect("exists");
            assert!(
                j.lease_until.is_some_and(|u| u <= crate::Timestamp::now()),
                "{b}"
            );
            assert!(j.next_attempt_at <= crate::Timestamp::now(), "{b}");
            assert_eq!(j.last_error_code, None, "{b}");
            // Its own heartbeat now says it was taken for dead.
            assert!(
                !s.heartbeat_worker("dead", now_ms()).await.expect("beat"),
                "{b}"
            );
            assert!(
                s.heartbeat_worker("live", now_ms()).await.expect("beat"),
                "{b}"
            );
            // The service's beat says the same, and renews its singletons in the same commit.
            let (alive, leads) = s
                .beat("live", &["governor"], crate::tests::LEASE)
                .await
                .expect("beat");
            assert!(alive, "{b}");
            assert!(leads[0].is_some(), "{b}");
            let (alive, leads) = s
                .beat("dead", &["governor"], crate::tests::LEASE)
                .await
                .expect("beat");
            assert!(!alive, "{b}");
            assert_eq!(leads, vec![None], "{b}: the live worker leads");
            // A clean stop leaves nothing behind.
            s.deregister_worker("live").await.expect("deregister");
            assert!(s.workers().await.expect("workers").is_empty(), "{b}");
            assert!(s.leaders().await.expect("leaders").is_empty(), "{b}");
        }
    }

    #[tokio::test]
    async fn the_rpm_counts_every_workers_creates() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            add(&s, 10, None).await;
            let limits = FleetLimits {
                rpm: Some(4),
                window: crate::tests::LEASE,
                ..FleetLimits::default()
            };
            let claim = |owner: &'static str, tier: Tier| {
                let (s, limits) = (s.clone(), limits.clone());
                async move {
                    s.claim_for_submit_limited(
                        "m",
                        tier,
                        100,
                        ResolutionScope::All,
                        3,
                        owner,
                        crate::tests::LEASE,
                        &limits,
                    )
                    .await
                    .expect("claim")
                    .len()
                }
            };
            // Each would take 3; together they get the window's 4.
            assert_eq!(claim("a", Tier::Default).await, 3, "{b}");
            assert_eq!(claim("b", Tier::Default).await, 1, "{b}");
            assert_eq!(claim("a", Tier::Default).await, 0, "{b}");
            // The window is full since the fourth newest create.
            let full = s
                .rpm_window_full_since(
                    "m",
                    Tier::Default,
                    crate::Timestamp::from_ms(now_ms() - 60_000),
                    4,
                )
                .await
                .expect("window");
            assert!(full.is_some_and(|t| t.ms() <= now_ms()), "{b}");
            assert_eq!(
                s.rpm_window_full_since(
                    "m",
                    Tier::Default,
                    crate::Timestamp::from_ms(now_ms() - 60_000),
                    5
                )
                .await
                .expect("window"),
                None,
                "{b}: room for a fifth"
            );
            // The other tier has a window of its own.
            add(&s, 1, Some(0)).await;
            assert_eq!(claim("b", Tier::Flex).await, 1, "{b}");
        }
    }

    #[tokio::test]
    async fn two_workers_claiming_at_once_never_exceed_the_rpm() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            add(&s, 60, None).await;
            let limits = FleetLimits {
                rpm: Some(25),
                window: crate::tests::LEASE,
                ..FleetLimits::default()
            };
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let (s, limits) = (s.clone(), limits.clone());
                    tokio::spawn(async move {
                        let mut n = 0;
                        for _ in 0..5 {
                            n += s
                                .claim_for_submit_limited(
                                    "m",
                                    Tier::Default,
                                    1000,
                                    ResolutionScope::All,
                                    2,
                                    &format!("w{i}"),
                                    crate::tests::LEASE,
                                    &limits,
                                )
                                .await
                                .expect("claim")
                                .len();
                        }
                        n
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("join");
            }
            assert_eq!(
                total, 25,
                "{b}: eight claimers together took exactly the RPM"
            );
        }
    }

    #[tokio::test]
    async fn the_flex_day_budget_holds_across_claims_and_the_rest_waits_a_day() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            let ids = add(&s, 5, Some(100)).await;
            let next = now_ms() + 3_600_000;
            let day = FlexDay {
                tpd: 250,
                start: crate::Timestamp::from_ms(now_ms() - 1_000),
                next: crate::Timestamp::from_ms(next),
                straddle: std::time::Duration::ZERO,
            };
            let got = claim_flex(&s, "a", 64, day).await;
            assert_eq!(got.len(), 2, "{b}: two of 100 tokens fit in 250");
            // The rest waits for the next day, with the reason in its history.
            let mut waiting = Vec::new();
            for id in &ids {
                let j = s.job(id).await.expect("job").expect("exists");
                if j.state == JobState::Queued {
                    waiting.push(j);
                }
            }
            assert_eq!(waiting.len(), 3, "{b}");
            assert!(
                waiting.iter().all(|j| j.next_attempt_at.ms() == next),
                "{b}"
            );
            let events = s.events(waiting[0].id.as_str()).await.expect("events");
            assert!(
                events
                    .iter()
                    .any(|e| e.detail.as_deref().is_some_and(
                        |d| d.contains("flex TPD budget reached (200+100 > 250 tokens)")
                    )),
                "{b}: {events:?}"
            );
            // Another worker's claim sees the same spend.
            assert!(claim_flex(&s, "b", 64, day).await.is_empty(), "{b}");
        }
    }

    /// The dispatcher read its clock in one day and the claim runs in the next: the claim
    /// would be stamped in a day whose spend it did not read. It takes nothing, and puts no
    /// job off to the "next" day (which has already begun).
    #[tokio::test]
    async fn a_claim_whose_day_ended_under_it_takes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            let ids = add(&s, 3, Some(100)).await;
            let mut due = Vec::new();
            for id in &ids {
                due.push(
                    s.job(id)
                        .await
                        .expect("job")
                        .expect("exists")
                        .next_attempt_at,
                );
            }
            let ended = now_ms() - 1;
            let day = FlexDay {
                tpd: 1_000_000,
                start: crate::Timestamp::from_ms(ended - 3_600_000),
                next: crate::Timestamp::from_ms(ended),
                straddle: std::time::Duration::ZERO,
            };
            let got = claim_flex(&s, "a", 64, day).await;
            assert!(got.is_empty(), "{b}: the day it read has ended");
            for (id, due) in ids.iter().zip(due) {
                let j = s.job(id).await.expect("job").expect("exists");
                assert_eq!(j.state, JobState::Queued, "{b}");
                assert_eq!(j.next_attempt_at, due, "{b}: not put off");
            }
        }
    }

    /// Ark counts a flex create in the day it arrives in, the store in the day it was claimed
    /// in. A create claimed before a day began counts in the new day too while it is
    /// unanswered (`submitting`, `submit_unknown`), and not once it was answered (the
    /// dispatcher has it answered before its claim day ends), nor when it was claimed longer
    /// ago than a lease and a request timeout.
    #[tokio::test]
    async fn a_create_that_may_arrive_after_the_day_began_counts_in_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            let claim = async |d: FlexDay| claim_flex(&s, "w", 10, d).await;
            let first = add(&s, 1, Some(100)).await;
            let old = now_ms() - 60_000;
            let before = claim(FlexDay {
                tpd: 250,
                start: crate::Timestamp::from_ms(old),
                next: crate::Timestamp::from_ms(old + 3_600_000),
                straddle: crate::tests::LEASE,
            })
            .await;
            assert_eq!(before.len(), 1, "{b}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let start = now_ms();
            let day = |straddle_ms, tpd| FlexDay {
                tpd,
                start: crate::Timestamp::from_ms(start),
                next: crate::Timestamp::from_ms(start + 3_600_000),
                straddle: std::time::Duration::from_millis(straddle_ms),
            };
            // In flight: 100 of the new day's 250 may be its, so one more fits, not two.
            add(&s, 2, Some(100)).await;
            assert_eq!(
                claim(day(60_000, 250)).await.len(),
                1,
                "{b}: the unanswered create counts"
            );
            let set = |state: &str, submitted: &str| {
                format!(
                    "UPDATE jobs SET state = '{state}', submitted_at = {submitted} WHERE id = '{}'",
                    first[0]
                )
            };
            // Ambiguous: it may still arrive, so it still counts (100 + 100 + 100 > 250).
            crate::tests::raw(&s, set("submit_unknown", "NULL")).await;
            add(&s, 1, Some(100)).await;
            assert!(
                claim(day(60_000, 250)).await.is_empty(),
                "{b}: submit_unknown counts"
            );
            // Claimed longer ago than the span: it cannot arrive in this day.
            add(&s, 1, Some(100)).await;
            assert_eq!(claim(day(1, 250)).await.len(), 1, "{b}: outside the span");
            // Answered: it arrived in the day it was claimed in. This day's own two creates
            // and one more fit in 300 only if the answered one no longer counts.
            crate::tests::raw(&s, set("submitted", &(start - 1).to_string())).await;
            add(&s, 1, Some(100)).await;
            assert_eq!(
                claim(day(60_000, 300)).await.len(),
                1,
                "{b}: an answered create counts in its claim day only"
            );
        }
    }

    /// A dead owner's singletons are free at once, without waiting out their leases, and
    /// nobody else's leadership goes with them.
    #[tokio::test]
    async fn a_dead_owners_leadership_is_dropped_and_no_one_elses() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            let lead = |name: &'static str, owner: &'static str| {
                let s = s.clone();
                async move {
                    s.try_lead(name, owner, crate::tests::LEASE)
                        .await
                        .expect("lead")
                }
            };
            assert!(lead("poller", "w1").await.is_some(), "{b}");
            assert!(lead("archiver", "w2").await.is_some(), "{b}");
            assert!(
                lead("poller", "w3").await.is_none(),
                "{b}: w1's lease holds"
            );
            assert_eq!(s.drop_leadership_of("w1").await.expect("drop"), 1, "{b}");
            assert!(lead("poller", "w3").await.is_some(), "{b}: free at once");
            assert!(
                lead("archiver", "w3").await.is_none(),
                "{b}: w2 still leads"
            );
            assert_eq!(s.drop_leadership_of("w1").await.expect("drop"), 0, "{b}");
        }
    }
}
