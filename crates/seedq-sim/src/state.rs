//! The simulator's memory: every task record, the per-model queues and slots, the RPM windows,
//! the stats, and the scheduler that moves tasks through their lifecycle on timers.
//!
//! Owns the lifecycle `queued → running → succeeded | failed`, `queued | running → expired`,
//! `queued (| running) → cancelled`, and the removal of records after their retention.
//! Invariants:
//! - All state sits behind one `std::sync::Mutex`, held only for short, non-async sections; side
//!   effects that wait (callbacks, renders) are collected as [`Effect`]s and run after unlocking.
//! - `running[model]` (default tier) and `running_flex[model]` (the offline pool) equal the
//!   number of that model's tasks of the tier in `running`; a task leaves its queue exactly
//!   when it starts or is cancelled/expired.
//! - Flex is limited by TPD alone (docs/ark-api.md §6.2 D3): no RPM or concurrency 429 for it; a
//!   day's accepted flex tokens never exceed the model's TPD.
//! - `updated_at` strictly increases on every transition (one second at least, so it visibly
//!   changes even when a tiny `time_scale` packs transitions into one real second).
//! - Wire timestamps (`created_at`, `updated_at`, the task id) are real wall-clock time; only
//!   durations are scaled. That keeps the client's "created around the time I sent it" reasoning
//!   (reconciliation of ambiguous creates) valid at any `time_scale`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::callback::CallbackCtx;
use super::config::{Faults, LimitsSim, MIN_READ_WINDOW, Route, SimConfig, Timing};
use super::error::ApiError;
use super::files;
use super::rules::{self, Accepted};
use super::video::{self, RenderJob, Rendered, VideoKey};
use seedq_ark::catalogue::{self, Catalogue, PixelTable};
use seedq_ark::wire::{
    ContentItem, CreateTaskRequest, Task, TaskContent, TaskError, TaskStatus, ToolUsage, Usage,
};

/// The rate-limit window: RPM counts creates in the last (scaled) minute.
const RPM_WINDOW: Duration = Duration::from_secs(60);
/// The unit of the read routes' QPS limits (nominal).
const QPS_SECOND: Duration = Duration::from_secs(1);
/// Largest seed the simulator hands out: clients cap `seed` at 2^31−1 and every seed observed
/// from Ark is small (docs/ark-api.md §14 "Seeds").
pub const MAX_ISSUED_SEED: i64 = 2_147_483_647;
/// When a task asks `duration: -1` (the model chooses), the simulated model chooses this.
const AUTO_DURATION: i64 = 5;
/// The code and message of an output-moderation failure (docs/ark-api.md §6.3, observed).
pub const OUTPUT_MODERATION: (&str, &str) = (
    "OutputVideoSensitiveContentDetected.PolicyViolation",
    "The request failed because the output video may be related to copyright restrictions.",
);
/// A task whose prompt implies another task type than the request allows (docs/ark-api.md §14
/// `omni_reference_task_type`; the message is the simulator's wording [INF]).
pub const TASK_TYPE_CONSTRAINT: (&str, &str) = (
    "InvalidParameter.TaskTypeConstraint",
    "The task type inferred from the prompt conflicts with the constraints of the request.",
);
/// A declared task type the prompt contradicts (docs/ark-api.md §14).
pub const TASK_TYPE_MISMATCH: (&str, &str) = (
    "InvalidParameter.TaskTypeMismatch",
    "The declared omni_reference_task_type does not match the task the prompt describes.",
);
/// The code and message of a transient server-side failure.
pub const TRANSIENT: (&str, &str) = (
    "InternalServiceError",
    "The service encountered an unexpected internal error.",
);

/// Real wall-clock unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The shared simulator: configuration plus the locked state.
pub struct Sim {
    pub cfg: SimConfig,
    pub catalogue: Catalogue,
    /// `http://ADDR` (or `public_base_url`): where file URLs point.
    pub base_url: String,
    inner: Mutex<Inner>,
    /// Pokes the scheduler when the earliest deadline or the queues changed.
    wake: Notify,
    pub cancel: CancellationToken,
    render_slots: Arc<Semaphore>,
    /// Shared renders by shape, when `reuse_videos` is on.
    videos: Mutex<HashMap<VideoKey, Arc<Rendered>>>,
    pub callbacks: Arc<CallbackCtx>,
    /// Key for the file URL signatures; random per simulator.
    pub url_key: [u8; 32],
    pub counters: Arc<Counters>,
    /// Origin of the read-limit windows.
    epoch: Instant,
}

/// Stats that hot paths bump without taking the lock.
#[derive(Default, Debug)]
pub struct Counters {
    pub bytes_served: AtomicU64,
    pub callbacks_delivered: AtomicU64,
    pub callbacks_failed: AtomicU64,
    pub callback_attempts: AtomicU64,
}

impl Counters {
    fn reset(&self) {
        for c in [
            &self.bytes_served,
            &self.callbacks_delivered,
            &self.callbacks_failed,
            &self.callback_attempts,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Counters kept under the lock.
#[derive(Default, Debug)]
pub struct Stats {
    pub creates_total: u64,
    pub creates_by_model: BTreeMap<String, u64>,
    /// Route name → HTTP status (or `dropped`) → count.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Route name → requests whose head arrived, counted before any injected latency: a test
    /// can tell that a client's request is at the sim even while its answer is held back.
    pub received: BTreeMap<String, u64>,
    pub max_concurrency_by_model: BTreeMap<String, u32>,
    /// The most flex tasks of a model running at once (its offline pool).
    pub max_flex_running_by_model: BTreeMap<String, u32>,
    /// Flex tokens accepted per model per TPD day (day start, unix ms).
    pub flex_tokens_by_day: BTreeMap<String, BTreeMap<i64, u64>>,
    pub rate_limited_total: u64,
    pub status_calls_total: u64,
}

struct Inner {
    tasks: HashMap<String, TaskRec>,
    /// Creation order → id, for newest-first listing.
    order: BTreeMap<u64, String>,
    /// Per model, the queued tasks in start order.
    queues: HashMap<String, BTreeSet<QueueKey>>,
    running: HashMap<String, u32>,
    running_flex: HashMap<String, u32>,
    /// Default-tier tasks running per (model, resolution), for resolutions with limits of
    /// their own (2.0 `4k`).
    running_res: HashMap<(String, String), u32>,
    timers: BinaryHeap<Reverse<Timer>>,
    rpm: HashMap<String, VecDeque<Instant>>,
    /// Per read route: (window index, calls in it).
    reads: HashMap<Route, (u128, u64)>,
    seq: u64,
    rng: StdRng,
    faults: Faults,
    stats: Stats,
}

/// Start order within one model: default tier before flex, then higher `priority`, then FIFO.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    flex: bool,
    neg_priority: i64,
    seq: u64,
    id: String,
}

impl QueueKey {
    /// The smallest key of a tier: where its part of a model's queue starts.
    fn first_of(flex: bool) -> Self {
        Self {
            flex,
            neg_priority: i64::MIN,
            seq: 0,
            id: String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    seq: u64,
    kind: TimerKind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Re-run the queue promotion (a `start_delay` elapsed).
    Wake,
    /// The generation time of a running task is over.
    Done(String),
    /// `execution_expires_after` passed.
    Expire(String),
    /// Retention is over: forget the record.
    Remove(String),
}

/// How a running task will end, decided when it starts.
#[derive(Clone, Debug)]
enum Outcome {
    Succeed,
    Fail(TaskError),
}

/// One task as the simulator knows it.
pub struct TaskRec {
    pub id: String,
    seq: u64,
    pub model: String,
    pub status: TaskStatus,
    pub req: CreateTaskRequest,
    /// The body as received (after JSON parsing).
    pub body: serde_json::Value,
    pub eff: Accepted,
    pub flex: bool,
    /// The seed the video is rendered with (random when the request gave none or −1). Every
    /// model echoes one: docs/ark-api.md §3.2 shows a real 2.0 task, which takes no seed, with
    /// `"seed":1276`.
    pub seed: i64,
    /// Exactly one is set, as on the wire.
    pub duration: Option<i64>,
    pub frames: Option<i64>,
    pub frame_count: i64,
    /// Nominal output size (the catalogue's table), before `video_downscale`.
    pub size: (u32, u32),
    /// The tokens the task bills when it succeeds (`usage`), fixed at create.
    pub usage_tokens: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub created_ms: i64,
    pub running_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    created_instant: Instant,
    pub error: Option<TaskError>,
    outcome: Option<Outcome>,
    gen_done: bool,
    render: Option<Result<Arc<Rendered>, String>>,
    pub input_image_sha256: Vec<Option<String>>,
    /// The first-frame image bytes when it came as a PNG `data:` URL.
    first_frame_png: Option<Bytes>,
    callback: Option<mpsc::UnboundedSender<Task>>,
}

impl TaskRec {
    /// The rendered video, once there is one.
    pub fn video(&self) -> Option<&Arc<Rendered>> {
        self.render.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// Bumps `updated_at`, strictly (see the module invariants).
    fn touch(&mut self) {
        let now = now_ms() / 1000;
        self.updated_at = now.max(self.updated_at + 1);
    }
}

/// Work to do once the lock is released.
enum Effect {
    Callback(mpsc::UnboundedSender<Task>, Box<Task>),
    Render(RenderJob),
}

/// What a create produced.
pub struct Created {
    pub id: String,
    /// The `drop_after_create` fault fired: close the connection instead of answering.
    pub drop_connection: bool,
}

/// An internal record as `GET /_sim/tasks` shows it.
#[derive(Serialize)]
pub struct TaskDump {
    pub id: String,
    pub model: String,
    pub status: TaskStatus,
    pub service_tier: &'static str,
    pub seed: i64,
    pub created_ms: i64,
    pub running_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub prompt: String,
    pub input_image_sha256: Vec<Option<String>>,
    pub frames: i64,
    pub nominal_width: u32,
    pub nominal_height: u32,
    pub video_width: Option<u32>,
    pub video_height: Option<u32>,
    /// SHA-256 of the served video file; `null` when padding is on (see `mp4_sha256`).
    pub video_sha256: Option<String>,
    /// SHA-256 of the rendered MP4 (the served file's prefix when padded).
    pub mp4_sha256: Option<String>,
    /// Length of the served video file.
    pub video_size: Option<u64>,
    pub last_frame_sha256: Option<String>,
    pub error: Option<TaskError>,
    pub request: serde_json::Value,
}

/// A snapshot of the stats for `GET /_sim/stats`.
#[derive(Serialize)]
pub struct StatsDump {
    pub creates_total: u64,
    pub creates_by_model: BTreeMap<String, u64>,
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    pub received: BTreeMap<String, u64>,
    pub max_concurrency_by_model: BTreeMap<String, u32>,
    pub max_flex_running_by_model: BTreeMap<String, u32>,
    pub flex_tokens_by_day: BTreeMap<String, BTreeMap<i64, u64>>,
    pub rate_limited_total: u64,
    pub callbacks_delivered: u64,
    pub callbacks_failed: u64,
    pub callback_attempts: u64,
    pub bytes_served: u64,
    pub status_calls_total: u64,
    /// Current counts, for a glance: tasks known per status, running per model.
    pub tasks_by_status: BTreeMap<&'static str, u64>,
    pub running_by_model: BTreeMap<String, u32>,
}

/// The list filters of `GET …/tasks`.
#[derive(Default, Debug)]
pub struct ListQuery {
    pub page_num: usize,
    pub page_size: usize,
    pub status: Option<TaskStatus>,
    pub task_ids: Vec<String>,
    pub model: Option<String>,
    pub service_tier: Option<String>,
}

impl Sim {
    /// Builds the simulator state; nothing runs until [`Sim::run_scheduler`].
    ///
    /// # Errors
    /// Invalid configuration.
    pub fn new(cfg: SimConfig, base_url: String) -> anyhow::Result<Arc<Sim>> {
        cfg.validate()?;
        let catalogue = cfg.build_catalogue()?;
        let mut rng = match cfg.rng_seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let url_key: [u8; 32] = rng.random();
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let callbacks = Arc::new(CallbackCtx::new(&cfg, counters.clone(), cancel.clone())?);
        let inner = Inner {
            tasks: HashMap::new(),
            order: BTreeMap::new(),
            queues: HashMap::new(),
            running: HashMap::new(),
            running_flex: HashMap::new(),
            running_res: HashMap::new(),
            timers: BinaryHeap::new(),
            rpm: HashMap::new(),
            reads: HashMap::new(),
            seq: 0,
            rng,
            faults: cfg.faults.clone(),
            stats: Stats::default(),
        };
        Ok(Arc::new(Sim {
            render_slots: Arc::new(Semaphore::new(cfg.render_concurrency)),
            videos: Mutex::new(HashMap::new()),
            cfg,
            catalogue,
            base_url,
            inner: Mutex::new(inner),
            wake: Notify::new(),
            cancel,
            callbacks,
            url_key,
            counters,
            epoch: Instant::now(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug in the simulator; keep serving the state it
        // left rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A nominal duration scaled by `time_scale`, saturating instead of panicking.
    pub fn scaled(&self, d: Duration) -> Duration {
        scale(d, self.cfg.time_scale)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Injected latency for a route, in real milliseconds.
    pub fn latency_ms(&self, route: super::config::Route) -> u64 {
        self.lock().faults.latency_ms.of(route)
    }

    /// Replaces the faults.
    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    /// Rolls a die with probability `p` on the shared RNG.
    pub fn roll(&self, p: impl FnOnce(&Faults) -> f64) -> bool {
        let mut inner = self.lock();
        let p = p(&inner.faults);
        p > 0.0 && inner.rng.random_bool(p.min(1.0))
    }

    /// Counts one request whose head arrived, before its latency or answer.
    pub fn record_received(&self, route: &str) {
        *self
            .lock()
            .stats
            .received
            .entry(route.to_string())
            .or_default() += 1;
    }

    /// Counts one answered call.
    pub fn record_call(&self, route: &str, status: &str) {
        let mut inner = self.lock();
        *inner
            .stats
            .calls
            .entry(route.to_string())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
        if status == "429" {
            inner.stats.rate_limited_total += 1;
        }
        if route == "get" || route == "list" {
            inner.stats.status_calls_total += 1;
        }
    }

    /// Counts one call on a read route against the account's rate (`read_limits`).
    ///
    /// Fixed windows: at most `qps` calls per second, the second nominal (scaled) unless
    /// `real_time`; a scaled second shorter than [`MIN_READ_WINDOW`] is counted over that
    /// much real time with a proportional allowance.
    ///
    /// # Errors
    /// 429 `AccountRateLimitExceeded` when the window's allowance is spent.
    pub fn admit_read(&self, route: Route) -> Result<(), ApiError> {
        let limits = &self.cfg.read_limits;
        let Some(qps) = limits.qps(route) else {
            return Ok(());
        };
        let second = if limits.real_time {
            QPS_SECOND
        } else {
            self.scaled(QPS_SECOND)
        };
        let window = if limits.real_time {
            second
        } else {
            second.max(MIN_READ_WINDOW)
        };
        let allowed = (qps * window.as_secs_f64() / second.as_secs_f64().max(1e-9))
            .floor()
            .max(1.0) as u64;
        let idx = self.epoch.elapsed().as_nanos() / window.as_nanos().max(1);
        let mut inner = self.lock();
        let slot = inner.reads.entry(route).or_insert((idx, 0));
        if slot.0 != idx {
            *slot = (idx, 0);
        }
        if slot.1 >= allowed {
            return Err(ApiError::read_rate_limited(route.name(), qps));
        }
        slot.1 += 1;
        Ok(())
    }

    /// Clears the stats (not the tasks).
    pub fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.stats = Stats::default();
        // Keep the current concurrency as the new maximum: those tasks are still running.
        let running: Vec<(String, u32)> =
            inner.running.iter().map(|(k, v)| (k.clone(), *v)).collect();
        inner.stats.max_concurrency_by_model.extend(running);
        let running_flex: Vec<(String, u32)> = inner
            .running_flex
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        inner.stats.max_flex_running_by_model.extend(running_flex);
        self.counters.reset();
    }

    /// Limits for a model: the sim override, else the catalogue, else the unknown-model ones.
    pub fn limits(&self, model: &str) -> LimitsSim {
        let base = match self.catalogue.get(model) {
            Some(spec) => LimitsSim {
                rpm: spec.limits.rpm,
                concurrency: spec.limits.concurrency,
            },
            None => self.cfg.unknown_model_limits.clone(),
        };
        match self.cfg.models.get(model) {
            Some(o) => LimitsSim {
                rpm: o.rpm.unwrap_or(base.rpm),
                concurrency: o.concurrency.unwrap_or(base.concurrency),
            },
            None => base,
        }
    }

    fn timing(&self, model: &str) -> &Timing {
        self.cfg
            .models
            .get(model)
            .and_then(|m| m.generation.as_ref())
            .unwrap_or(&self.cfg.generation)
    }

    /// The (model, resolution) of a task whose resolution has limits of its own, with them.
    fn own_limits(&self, t: &TaskRec) -> Option<((String, String), catalogue::ResolutionLimits)> {
        let l = self
            .catalogue
            .get(&t.model)?
            .limits
            .per_resolution
            .get(&t.eff.resolution)?
            .clone();
        Some(((t.model.clone(), t.eff.resolution.clone()), l))
    }

    /// Whether a queued default task's resolution has a free slot of its own (2.0 `4k`:
    /// concurrency 1, docs/ark-api.md §6.2 D3); always, for resolutions without one.
    fn resolution_room(&self, inner: &Inner, id: &str) -> bool {
        match inner.tasks.get(id).and_then(|t| self.own_limits(t)) {
            Some((k, l)) => inner.running_res.get(&k).copied().unwrap_or(0) < l.concurrency,
            None => true,
        }
    }

    /// The width of `model`'s offline (flex) pool.
    fn flex_pool(&self, model: &str) -> u32 {
        self.cfg
            .models
            .get(model)
            .and_then(|m| m.flex_pool)
            .unwrap_or(self.cfg.flex_pool)
    }

    /// `model`'s flex tokens per day: the sim override, else the catalogue's.
    fn flex_tpd(&self, model: &str) -> Option<u64> {
        self.cfg
            .models
            .get(model)
            .and_then(|m| m.flex_tpd)
            .or_else(|| self.catalogue.get(model).and_then(|s| s.limits.flex_tpd))
    }

    /// Start (unix ms) of the TPD day containing `now_ms`: days of the scaled `tpd_day`,
    /// counted from Beijing midnight, the same rule as seedq's dispatcher.
    pub fn tpd_day_start(&self, now_ms: i64) -> i64 {
        // Rounded, not truncated: 25 min × 0.002 must be 3000 ms, as seedq's `bulk.tpd_day`.
        let day = (self.cfg.tpd_day.as_secs_f64() * self.cfg.time_scale * 1000.0)
            .round()
            .clamp(1.0, 1e15) as i64;
        seedq_ark::catalogue::tpd_day_start(now_ms, 8, day)
    }

    /// Real time a task spends running.
    fn generation_time(&self, t: &TaskRec) -> Duration {
        let timing = self.timing(&t.model);
        let video_secs = t.frame_count as f64 / catalogue::FPS as f64;
        let nominal =
            timing.base.as_secs_f64() + timing.per_video_second.as_secs_f64() * video_secs;
        let factor = if t.flex { self.cfg.flex_factor } else { 1.0 };
        scale(secs(nominal * factor), self.cfg.time_scale)
    }

    /// Creates a task from a validated request.
    ///
    /// # Errors
    /// 429s: the `rate_limit_burst` fault, `QuotaExceeded`, the model's RPM.
    pub fn create(
        self: &Arc<Self>,
        req: CreateTaskRequest,
        body: serde_json::Value,
        eff: Accepted,
    ) -> Result<Created, ApiError> {
        let now = Instant::now();
        let now_ms = now_ms();
        let spec = self.catalogue.get(&req.model);
        let limits = self.limits(&req.model);
        let (effects, created) = {
            let mut inner = self.lock();
            // Account states come before any limit: the account cannot use the model at all.
            if inner.faults.model_not_open.contains(&req.model) {
                return Err(ApiError::model_not_open(&req.model));
            }
            if inner.faults.set_limit_exceeded.contains(&req.model) {
                return Err(ApiError::set_limit_exceeded(&req.model));
            }
            if inner.faults.rate_limit_burst > 0 {
                inner.faults.rate_limit_burst -= 1;
                return Err(ApiError::rate_limited(
                    "ModelAccountRpmRateLimitExceeded",
                    &rpm_message(&req.model, limits.rpm),
                    inner.faults.retry_after_secs,
                ));
            }
            let queued: usize = inner.queues.values().map(BTreeSet::len).sum();
            if self.cfg.max_queued > 0 && queued >= self.cfg.max_queued {
                return Err(ApiError::rate_limited(
                    "QuotaExceeded",
                    &format!(
                        "The request failed because your account has too many queued tasks ({queued}; at most {}).",
                        self.cfg.max_queued
                    ),
                    None,
                ));
            }
            // RPM is the default tier's; flex has none (docs/ark-api.md §6.2 D3).
            let window = self.scaled(RPM_WINDOW);
            let stamps = if eff.flex {
                &mut VecDeque::new()
            } else {
                inner.rpm.entry(req.model.clone()).or_default()
            };
            while stamps
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                stamps.pop_front();
            }
            if stamps.len() >= limits.rpm as usize {
                let retry_after = self.cfg.rpm_retry_after.then(|| {
                    let oldest = stamps.front().copied().unwrap_or(now);
                    let wait = (oldest + window).saturating_duration_since(now);
                    wait.as_secs_f64().ceil().max(1.0) as u64
                });
                return Err(ApiError::rate_limited(
                    "ModelAccountRpmRateLimitExceeded",
                    &rpm_message(&req.model, limits.rpm),
                    retry_after,
                ));
            }
            if !eff.flex {
                stamps.push_back(now);
            }
            // A resolution with an RPM of its own (2.0 `4k`: 15, docs/ark-api.md §6.2 D3).
            let own_rpm = spec
                .and_then(|s| s.limits.per_resolution.get(&eff.resolution))
                .filter(|_| !eff.flex)
                .map(|l| l.rpm);
            if let Some(rpm) = own_rpm {
                let stamps = inner
                    .rpm
                    .entry(format!("{}@{}", req.model, eff.resolution))
                    .or_default();
                while stamps
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= window)
                {
                    stamps.pop_front();
                }
                if stamps.len() >= rpm as usize {
                    // The model's window already counted this create: take it back.
                    if let Some(s) = inner.rpm.get_mut(&req.model) {
                        s.pop_back();
                    }
                    return Err(ApiError::rate_limited(
                        "ModelAccountRpmRateLimitExceeded",
                        &rpm_message(&req.model, rpm),
                        None,
                    ));
                }
                stamps.push_back(now);
            }

            inner.seq += 1;
            let seq = inner.seq;
            let id = loop {
                let id = task_id(now_ms, eff.flex && self.cfg.flex_batch_ids, &mut inner.rng);
                if !inner.tasks.contains_key(&id) {
                    break id;
                }
            };
            // A model without `seed` still reports the one it used (docs/ark-api.md §3.2).
            let takes_seed = spec.is_none_or(|s| s.seed);
            let seed = match eff.seed {
                Some(s) if s >= 0 && takes_seed => s,
                _ => inner.rng.random_range(0..=MAX_ISSUED_SEED),
            };
            let (duration, frames) = match (eff.frames, eff.duration) {
                (Some(f), _) => (None, Some(f)),
                (None, Some(-1)) => {
                    let d = spec.map_or(AUTO_DURATION, |s| {
                        AUTO_DURATION.clamp(s.duration_min, s.duration_max)
                    });
                    (Some(d), None)
                }
                (None, d) => (Some(d.unwrap_or(rules::DURATION_DEFAULT)), None),
            };
            let frame_count = frames.unwrap_or_else(|| {
                catalogue::frames_for_duration(duration.unwrap_or(rules::DURATION_DEFAULT))
            });
            let table = spec.map_or(PixelTable::V2, |s| s.pixel_table);
            let size = eff
                .size
                .or_else(|| catalogue::pixel_size(table, &eff.resolution, &eff.concrete_ratio))
                .unwrap_or((1280, 720));
            // Usage as Ark bills it: docs/ark-api.md §10; with a reference video, §14's formula
            // (⌊input s⌋ + output s, no "+1 frame", the model's minimum). The sim does not
            // fetch the clips: each counts `reference_video_seconds`.
            let usage_tokens = match spec {
                Some(s) if eff.video_inputs > 0 && frames.is_none() => {
                    catalogue::video_input_tokens(
                        s,
                        size.0,
                        size.1,
                        f64::from(eff.video_inputs) * self.cfg.reference_video_seconds,
                        duration.unwrap_or(rules::DURATION_DEFAULT),
                    )
                }
                _ => catalogue::tokens(size.0, size.1, frame_count),
            };
            if eff.flex
                && let Some(tpd) = self.flex_tpd(&req.model)
            {
                // TPD: over it, the call is rejected (tutorial 使用限制 › 限流说明,
                // docs/reference/tutorial.txt:1740). Counted at create with the tokens the
                // task will bill. The code is unpublished: `QuotaExceeded` ("period quota
                // exceeded", docs/ark-api.md §6.2) is the closest [INF].
                let tokens = u64::try_from(usage_tokens).unwrap_or(0);
                let day = self.tpd_day_start(now_ms);
                let used = inner
                    .stats
                    .flex_tokens_by_day
                    .get(&req.model)
                    .and_then(|d| d.get(&day))
                    .copied()
                    .unwrap_or(0);
                if used + tokens > tpd {
                    return Err(ApiError::rate_limited(
                        "QuotaExceeded",
                        &format!(
                            "The request failed because your account has exceeded its tokens per day (TPD) limit ({tpd}) for model {}. Please retry tomorrow.",
                            req.model
                        ),
                        None,
                    ));
                }
                *inner
                    .stats
                    .flex_tokens_by_day
                    .entry(req.model.clone())
                    .or_default()
                    .entry(day)
                    .or_default() += tokens;
            }
            let (input_image_sha256, first_frame_png) = video::inspect_images(&req);
            let callback = req
                .callback_url
                .as_ref()
                .map(|url| self.callbacks.spawn_worker(url.clone()));
            let flex = eff.flex;
            let priority = req.priority.unwrap_or(0);
            let expires = self.scaled(Duration::from_secs(
                u64::try_from(eff.expires_after).unwrap_or(0),
            ));
            let rec = TaskRec {
                id: id.clone(),
                seq,
                model: req.model.clone(),
                status: TaskStatus::Queued,
                req,
                body,
                eff,
                flex,
                seed,
                duration,
                frames,
                frame_count,
                size,
                usage_tokens,
                created_at: now_ms / 1000,
                updated_at: now_ms / 1000,
                created_ms: now_ms,
                running_ms: None,
                finished_ms: None,
                created_instant: now,
                error: None,
                outcome: None,
                gen_done: false,
                render: None,
                input_image_sha256,
                first_frame_png,
                callback,
            };
            let mut effects = Vec::new();
            if let Some(tx) = &rec.callback {
                effects.push(Effect::Callback(tx.clone(), Box::new(self.wire(&rec))));
            }
            let model = rec.model.clone();
            inner
                .queues
                .entry(model.clone())
                .or_default()
                .insert(QueueKey {
                    flex,
                    neg_priority: -priority,
                    seq,
                    id: id.clone(),
                });
            push_timer(&mut inner, at(now, expires), TimerKind::Expire(id.clone()));
            inner.order.insert(seq, id.clone());
            inner.tasks.insert(id.clone(), rec);
            inner.stats.creates_total += 1;
            *inner.stats.creates_by_model.entry(model).or_default() += 1;
            let counted = inner.faults.drop_after_create > 0;
            let rate = inner.faults.drop_after_create_rate;
            let drop_connection = counted || (rate > 0.0 && inner.rng.random_bool(rate.min(1.0)));
            if counted {
                inner.faults.drop_after_create -= 1;
            }
            (
                effects,
                Created {
                    id,
                    drop_connection,
                },
            )
        };
        self.wake.notify_one();
        self.run_effects(effects);
        Ok(created)
    }

    /// The wire view of one task, with fresh file URLs.
    pub fn get(&self, id: &str) -> Option<Task> {
        let inner = self.lock();
        inner.tasks.get(id).map(|t| self.read_view(t))
    }

    /// What GET and list show: every field, or with `bare_unfinished_tasks` only the five a
    /// live BytePlus answer carried for a task that has not finished (docs/ark-api.md §14).
    fn read_view(&self, t: &TaskRec) -> Task {
        let full = self.wire(t);
        if !self.cfg.bare_unfinished_tasks
            || !matches!(t.status, TaskStatus::Queued | TaskStatus::Running)
        {
            return full;
        }
        Task {
            id: full.id,
            model: full.model,
            status: full.status,
            created_at: full.created_at,
            updated_at: full.updated_at,
            error: None,
            content: None,
            usage: None,
            seed: None,
            resolution: None,
            ratio: None,
            duration: None,
            frames: None,
            framespersecond: None,
            revised_prompt: None,
            service_tier: None,
            execution_expires_after: None,
            priority: None,
            generate_audio: None,
            draft: None,
            draft_task_id: None,
            safety_identifier: None,
            tools: None,
            output_format: None,
        }
    }

    /// `GET …/tasks`: filtered, newest first, one page; `total` counts all matches.
    ///
    /// Without `filter.service_tier` only the `default` tier is listed: the documented default
    /// of the filter, and what a live probe saw (docs/ark-api.md §14, "The list's tier filter
    /// defaults to `default`"). Only tasks created in the last `list_window` are listed.
    pub fn list(&self, q: &ListQuery) -> (i64, Vec<Task>) {
        let tier = q.service_tier.as_deref().unwrap_or("default");
        let window = self.scaled(self.cfg.list_window);
        let now = Instant::now();
        let inner = self.lock();
        // Batch polls name their ids: look those up instead of scanning every record.
        let candidates: Vec<&String> = if q.task_ids.is_empty() {
            inner.order.values().rev().collect()
        } else {
            let mut picked: Vec<(u64, &String)> = q
                .task_ids
                .iter()
                .filter_map(|id| inner.tasks.get_key_value(id))
                .map(|(id, t)| (t.seq, id))
                .collect();
            picked.sort_unstable_by_key(|p| Reverse(p.0));
            picked.dedup_by_key(|p| p.0);
            picked.into_iter().map(|(_, id)| id).collect()
        };
        let matches = candidates.into_iter().filter_map(|id| {
            let t = inner.tasks.get(id)?;
            // No test of `t.id` against `task_ids`: the candidates are those ids already, and
            // testing each against the whole list made a batch poll quadratic in its size.
            let ok = q.status.is_none_or(|s| s == t.status)
                && q.model.as_ref().is_none_or(|m| m == &t.model)
                && tier == tier_name(t.flex)
                && now.saturating_duration_since(t.created_instant) < window;
            ok.then_some(t)
        });
        let mut total = 0i64;
        let skip = q.page_num.saturating_sub(1).saturating_mul(q.page_size);
        let mut items = Vec::new();
        for (i, t) in matches.enumerate() {
            total += 1;
            if i >= skip && items.len() < q.page_size {
                items.push(self.read_view(t));
            }
        }
        (total, items)
    }

    /// `DELETE …/tasks/{id}`.
    ///
    /// # Errors
    /// 404 for an unknown id; 400 when the status forbids it.
    pub fn delete(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let effects = {
            let mut inner = self.lock();
            let status = match inner.tasks.get(id) {
                Some(t) => t.status,
                None => return Err(ApiError::task_not_found(id)),
            };
            let b = self.cfg.delete_semantics == super::config::DeleteSemantics::B;
            match status {
                TaskStatus::Queued => self.cancel_task(&mut inner, id),
                TaskStatus::Running if b => self.cancel_task(&mut inner, id),
                // 409 in both regions (docs/ark-api.md §14 "DELETE of a running task").
                TaskStatus::Running => return Err(ApiError::running_task_deletion(id)),
                TaskStatus::Cancelled | TaskStatus::Unknown => {
                    return Err(ApiError::bad_status(id, status));
                }
                TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Expired => {
                    forget(&mut inner, id);
                    Vec::new()
                }
            }
        };
        self.wake.notify_one();
        self.run_effects(effects);
        Ok(())
    }

    /// Introspection records, oldest first.
    pub fn dump_tasks(&self) -> Vec<TaskDump> {
        let inner = self.lock();
        let padded = self.cfg.video_pad_to_bytes.is_some();
        inner
            .order
            .values()
            .filter_map(|id| inner.tasks.get(id))
            .map(|t| {
                let v = t.video();
                TaskDump {
                    id: t.id.clone(),
                    model: t.model.clone(),
                    status: t.status,
                    service_tier: tier_name(t.flex),
                    seed: t.seed,
                    created_ms: t.created_ms,
                    running_ms: t.running_ms,
                    finished_ms: t.finished_ms,
                    prompt: t.eff.prompt.clone(),
                    input_image_sha256: t.input_image_sha256.clone(),
                    frames: t.frame_count,
                    nominal_width: t.size.0,
                    nominal_height: t.size.1,
                    video_width: v.map(|v| v.width),
                    video_height: v.map(|v| v.height),
                    video_sha256: v.filter(|_| !padded).map(|v| v.mp4_sha256.clone()),
                    mp4_sha256: v.map(|v| v.mp4_sha256.clone()),
                    video_size: v.map(|v| files::served_len(&v.mp4, self.cfg.video_pad_to_bytes)),
                    last_frame_sha256: v.map(|v| v.last_frame_sha256.clone()),
                    error: t.error.clone(),
                    request: t.body.clone(),
                }
            })
            .collect()
    }

    /// The stats snapshot.
    pub fn dump_stats(&self) -> StatsDump {
        let inner = self.lock();
        let mut tasks_by_status = BTreeMap::new();
        for t in inner.tasks.values() {
            *tasks_by_status.entry(t.status.as_str()).or_default() += 1;
        }
        let c = &self.counters;
        StatsDump {
            creates_total: inner.stats.creates_total,
            creates_by_model: inner.stats.creates_by_model.clone(),
            calls: inner.stats.calls.clone(),
            received: inner.stats.received.clone(),
            max_concurrency_by_model: inner.stats.max_concurrency_by_model.clone(),
            max_flex_running_by_model: inner.stats.max_flex_running_by_model.clone(),
            flex_tokens_by_day: inner.stats.flex_tokens_by_day.clone(),
            rate_limited_total: inner.stats.rate_limited_total,
            callbacks_delivered: c.callbacks_delivered.load(Ordering::Relaxed),
            callbacks_failed: c.callbacks_failed.load(Ordering::Relaxed),
            callback_attempts: c.callback_attempts.load(Ordering::Relaxed),
            bytes_served: c.bytes_served.load(Ordering::Relaxed),
            status_calls_total: inner.stats.status_calls_total,
            tasks_by_status,
            running_by_model: inner
                .running
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// The served video (or last frame) of a succeeded task.
    pub fn file(&self, id: &str) -> Option<(TaskStatus, Option<Arc<Rendered>>)> {
        let inner = self.lock();
        inner.tasks.get(id).map(|t| (t.status, t.video().cloned()))
    }

    /// Drives the lifecycle until cancelled. Cancel-safe: all state lives in `self`.
    pub async fn run_scheduler(self: Arc<Self>) {
        loop {
            let (effects, next) = {
                let mut inner = self.lock();
                let effects = self.tick(&mut inner, Instant::now());
                let next = inner.timers.peek().map(|Reverse(t)| t.at);
                (effects, next)
            };
            self.run_effects(effects);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                () = self.wake.notified() => {}
                () = sleep => {}
            }
        }
    }

    /// Fires due timers and starts queued tasks that have a free slot.
    fn tick(&self, inner: &mut Inner, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        while inner.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            let Some(Reverse(timer)) = inner.timers.pop() else {
                break;
            };
            match timer.kind {
                TimerKind::Wake => {}
                TimerKind::Done(id) => self.on_generation_done(inner, &id, &mut effects),
                TimerKind::Expire(id) => {
                    let live = inner.tasks.get(&id).is_some_and(|t| {
                        matches!(t.status, TaskStatus::Queued | TaskStatus::Running)
                    });
                    if live {
                        self.finish(inner, &id, TaskStatus::Expired, None, &mut effects);
                    }
                }
                TimerKind::Remove(id) => {
                    if inner.tasks.get(&id).is_some_and(|t| t.status.is_final()) {
                        forget(inner, &id);
                    }
                }
            }
        }
        self.promote(inner, now, &mut effects);
        effects
    }

    /// Starts queued tasks while their model has free slots.
    fn promote(&self, inner: &mut Inner, now: Instant, effects: &mut Vec<Effect>) {
        let models: Vec<String> = inner
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(m, _)| m.clone())
            .collect();
        let delay = self.scaled(self.cfg.start_delay);
        for model in models {
            // The default tier by its concurrency; flex in its own offline pool, never taking
            // (or counting against) the default tier's slots.
            for flex in [false, true] {
                let limit = if flex {
                    self.flex_pool(&model)
                } else {
                    self.limits(&model).concurrency
                };
                loop {
                    let running = if flex {
                        inner.running_flex.get(&model)
                    } else {
                        inner.running.get(&model)
                    }
                    .copied()
                    .unwrap_or(0);
                    if running >= limit {
                        break;
                    }
                    let Some(key) = inner.queues.get(&model).and_then(|q| {
                        q.range(QueueKey::first_of(flex)..)
                            .take_while(|k| k.flex == flex)
                            .find(|k| flex || self.resolution_room(inner, &k.id))
                            .cloned()
                    }) else {
                        break;
                    };
                    let ready_at = inner
                        .tasks
                        .get(&key.id)
                        .map_or(now, |t| at(t.created_instant, delay));
                    if ready_at > now {
                        push_timer(inner, ready_at, TimerKind::Wake);
                        break;
                    }
                    if let Some(q) = inner.queues.get_mut(&model) {
                        q.remove(&key);
                    }
                    self.start(inner, &key.id, now, effects);
                }
            }
        }
    }

    fn start(&self, inner: &mut Inner, id: &str, now: Instant, effects: &mut Vec<Effect>) {
        let faults = inner.faults.clone();
        let (moderated_word, task_type) = {
            let Some(t) = inner.tasks.get(id) else { return };
            let prompt = t.eff.prompt.to_lowercase();
            let hit = |words: &[String]| {
                words
                    .iter()
                    .any(|w| !w.is_empty() && prompt.contains(&w.to_lowercase()))
            };
            let task_type = if hit(&faults.task_type_constraint_words) {
                Some(TASK_TYPE_CONSTRAINT)
            } else if hit(&faults.task_type_mismatch_words) {
                Some(TASK_TYPE_MISMATCH)
            } else {
                None
            };
            (hit(&faults.output_moderation_words), task_type)
        };
        let moderated = moderated_word || dice(&mut inner.rng, faults.output_moderation_rate);
        let transient = !moderated && dice(&mut inner.rng, faults.fail_transient_rate);
        let Some(t) = inner.tasks.get_mut(id) else {
            return;
        };
        // A task Ark reads as an edit or extension whose rules it breaks is created and then
        // fails with `InvalidParameter.TaskTypeConstraint` (`rules::task_type_failure`).
        let task_type = t
            .eff
            .task_type_failure
            .clone()
            .map(|(code, message)| TaskError { code, message })
            .or_else(|| task_type.map(err));
        let moderated = moderated || task_type.is_some();
        tracing::debug!(task = id, model = %t.model, "sim: task running");
        t.status = TaskStatus::Running;
        t.running_ms = Some(now_ms());
        t.touch();
        let failed_type = task_type.is_some();
        t.outcome = Some(if let Some(e) = task_type {
            Outcome::Fail(e)
        } else if moderated {
            Outcome::Fail(err(OUTPUT_MODERATION))
        } else if transient {
            Outcome::Fail(err(TRANSIENT))
        } else {
            Outcome::Succeed
        });
        let gen_time = self.generation_time(t);
        if !moderated && !transient && !failed_type {
            let (w, h) = video::video_size(t.size, self.cfg.video_downscale);
            effects.push(Effect::Render(RenderJob {
                id: t.id.clone(),
                spec_width: w,
                spec_height: h,
                frames: u32::try_from(t.frame_count).unwrap_or(u32::MAX),
                seed: u64::try_from(t.seed).unwrap_or(0),
                first_frame_png: t.first_frame_png.clone(),
            }));
        }
        if let Some(tx) = &t.callback {
            effects.push(Effect::Callback(tx.clone(), Box::new(self.wire(t))));
        }
        let model = t.model.clone();
        let flex = t.flex;
        if !flex && let Some((k, _)) = self.own_limits(t) {
            *inner.running_res.entry(k).or_default() += 1;
        }
        let n = {
            let r = if flex {
                inner.running_flex.entry(model.clone()).or_default()
            } else {
                inner.running.entry(model.clone()).or_default()
            };
            *r += 1;
            *r
        };
        let maxima = if flex {
            &mut inner.stats.max_flex_running_by_model
        } else {
            &mut inner.stats.max_concurrency_by_model
        };
        let max = maxima.entry(model).or_default();
        *max = (*max).max(n);
        push_timer(inner, at(now, gen_time), TimerKind::Done(id.to_string()));
    }

    fn on_generation_done(&self, inner: &mut Inner, id: &str, effects: &mut Vec<Effect>) {
        let Some(t) = inner.tasks.get_mut(id) else {
            return;
        };
        if t.status != TaskStatus::Running {
            return;
        }
        t.gen_done = true;
        match (t.outcome.clone(), &t.render) {
            (Some(Outcome::Fail(e)), _) => {
                self.finish(inner, id, TaskStatus::Failed, Some(e), effects);
            }
            (_, Some(Ok(_))) => self.finish(inner, id, TaskStatus::Succeeded, None, effects),
            (_, Some(Err(_))) => {
                self.finish(inner, id, TaskStatus::Failed, Some(err(TRANSIENT)), effects);
            }
            // The render is still going: it finishes the task when it is done.
            (_, None) => {}
        }
    }

    /// Called when a render finished (on the runtime, after the blocking work).
    fn on_rendered(self: &Arc<Self>, id: &str, result: Result<Arc<Rendered>, String>) {
        let effects = {
            let mut inner = self.lock();
            let mut effects = Vec::new();
            if let Some(t) = inner.tasks.get_mut(id)
                && t.status == TaskStatus::Running
            {
                if let Err(e) = &result {
                    tracing::warn!(task = id, error = %e, "sim: render failed");
                }
                t.render = Some(result);
                if t.gen_done {
                    let failed = matches!(t.render, Some(Err(_)));
                    if failed {
                        self.finish(
                            &mut inner,
                            id,
                            TaskStatus::Failed,
                            Some(err(TRANSIENT)),
                            &mut effects,
                        );
                    } else {
                        self.finish(&mut inner, id, TaskStatus::Succeeded, None, &mut effects);
                    }
                }
            }
            self.promote(&mut inner, Instant::now(), &mut effects);
            effects
        };
        self.wake.notify_one();
        self.run_effects(effects);
    }

    /// Moves a queued or running task to a final status.
    fn finish(
        &self,
        inner: &mut Inner,
        id: &str,
        status: TaskStatus,
        error: Option<TaskError>,
        effects: &mut Vec<Effect>,
    ) {
        let Some(t) = inner.tasks.get_mut(id) else {
            return;
        };
        let was = t.status;
        tracing::debug!(
            task = id,
            from = was.as_str(),
            to = status.as_str(),
            "sim: task finished"
        );
        t.status = status;
        t.error = error;
        t.finished_ms = Some(now_ms());
        t.touch();
        if status != TaskStatus::Succeeded {
            // Nobody will download it: free the memory.
            t.render = None;
        }
        // `expired` and the terminal statuses are sent; `cancelled` is not in the documented
        // list of callback statuses (docs/ark-api.md §9).
        let tx = t.callback.take();
        if let Some(tx) = tx
            && status != TaskStatus::Cancelled
        {
            effects.push(Effect::Callback(tx, Box::new(self.wire(t))));
        }
        let key = QueueKey {
            flex: t.flex,
            neg_priority: -t.req.priority.unwrap_or(0),
            seq: t.seq,
            id: t.id.clone(),
        };
        let model = t.model.clone();
        let own = (!t.flex).then(|| self.own_limits(t)).flatten();
        let retention = if status == TaskStatus::Cancelled {
            self.cfg.cancelled_retention
        } else {
            self.cfg.retention
        };
        match was {
            TaskStatus::Running => {
                let running = if key.flex {
                    &mut inner.running_flex
                } else {
                    &mut inner.running
                };
                if let Some(r) = running.get_mut(&model) {
                    *r = r.saturating_sub(1);
                }
                if let Some((k, _)) = own
                    && let Some(r) = inner.running_res.get_mut(&k)
                {
                    *r = r.saturating_sub(1);
                }
            }
            TaskStatus::Queued => {
                if let Some(q) = inner.queues.get_mut(&model) {
                    q.remove(&key);
                }
            }
            _ => {}
        }
        let when = at(Instant::now(), self.scaled(retention));
        push_timer(inner, when, TimerKind::Remove(id.to_string()));
    }

    fn cancel_task(&self, inner: &mut Inner, id: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.finish(inner, id, TaskStatus::Cancelled, None, &mut effects);
        effects
    }

    fn run_effects(self: &Arc<Self>, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Callback(tx, task) => {
                    // The worker is gone only at shutdown; nothing to deliver then.
                    let _ = tx.send(*task);
                }
                Effect::Render(job) => self.spawn_render(job),
            }
        }
    }

    fn spawn_render(self: &Arc<Self>, mut job: RenderJob) {
        let sim = self.clone();
        let slots = self.render_slots.clone();
        // With `reuse_videos`, one render per shape serves every task of that shape.
        let key = self.cfg.reuse_videos.then(|| {
            job.seed = 0;
            let first = job
                .first_frame_png
                .as_ref()
                .map(|b| <[u8; 32]>::from(Sha256::digest(b)));
            (job.spec_width, job.spec_height, job.frames, first)
        });
        tokio::spawn(async move {
            let id = job.id.clone();
            if let Some(k) = &key
                && let Some(hit) = sim.cached_video(k)
            {
                sim.on_rendered(&id, Ok(hit));
                return;
            }
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            // Another task of the shape may have rendered it while this one waited for a
            // slot: a wave of hundreds of flex starts must not render hundreds of times.
            if let Some(k) = &key
                && let Some(hit) = sim.cached_video(k)
            {
                sim.on_rendered(&id, Ok(hit));
                return;
            }
            let result = tokio::task::spawn_blocking(move || video::render(job))
                .await
                .unwrap_or_else(|e| Err(format!("render task panicked: {e}")))
                .map(Arc::new);
            if let (Some(k), Ok(v)) = (key, &result) {
                sim.videos
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(k, v.clone());
            }
            sim.on_rendered(&id, result);
        });
    }

    fn cached_video(&self, key: &VideoKey) -> Option<Arc<Rendered>> {
        self.videos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The wire view of a record; file URLs are signed now, so each call issues fresh ones.
    fn wire(&self, t: &TaskRec) -> Task {
        let spec = self.catalogue.get(&t.model);
        let newer = spec.is_some_and(|s| s.generate_audio);
        let succeeded = t.status == TaskStatus::Succeeded;
        let content = succeeded.then(|| TaskContent {
            video_url: Some(files::signed_url(self, &t.id, files::VIDEO)),
            last_frame_url: (t.req.return_last_frame == Some(true))
                .then(|| files::signed_url(self, &t.id, files::LAST_FRAME)),
            file_url: None,
        });
        let usage = succeeded.then(|| {
            let tokens = t.usage_tokens;
            Usage {
                completion_tokens: tokens,
                total_tokens: tokens,
                tool_usage: web_search_usage(t),
            }
        });
        let draft_task_id = t.req.content.iter().find_map(|i| match i {
            ContentItem::DraftTask { draft_task } => Some(draft_task.id.clone()),
            _ => None,
        });
        Task {
            id: t.id.clone(),
            model: t.model.clone(),
            status: t.status,
            error: t.error.clone(),
            content,
            usage,
            created_at: t.created_at.saturating_add(self.cfg.clock_offset_s),
            updated_at: t.updated_at.saturating_add(self.cfg.clock_offset_s),
            seed: Some(t.seed),
            resolution: Some(t.eff.resolution.clone()),
            ratio: Some(t.eff.concrete_ratio.clone()),
            duration: t.duration,
            frames: t.frames,
            framespersecond: Some(catalogue::FPS),
            revised_prompt: None,
            service_tier: Some(tier_name(t.flex).to_string()),
            execution_expires_after: Some(t.eff.expires_after),
            priority: t.req.priority,
            // The 1.5/2.x families echo these two (docs/ark-api.md §3.2); 1.0 only when sent. The
            // default is the model's (catalogue `generate_audio_default`).
            generate_audio: if newer {
                Some(
                    t.req
                        .generate_audio
                        .unwrap_or(spec.is_none_or(|s| s.generate_audio_default)),
                )
            } else {
                t.req.generate_audio
            },
            draft: if newer {
                Some(t.req.draft.unwrap_or(false))
            } else {
                t.req.draft
            },
            draft_task_id,
            safety_identifier: t.req.safety_identifier.clone(),
            tools: t.req.tools.clone(),
            output_format: t.req.output_format.clone(),
        }
    }
}

/// `usage.tool_usage` for a task that asked for `tools` (docs/ark-api.md §2.1 `tools` and §3.1:
/// "Search count is reported in `usage.tool_usage.web_search`").
///
/// [INF] How many searches Ark runs is not documented; the sim reports one per `web_search`
/// tool requested, so the field is present and deterministic. No tools, no `tool_usage`.
fn web_search_usage(t: &TaskRec) -> Option<ToolUsage> {
    let searches = t
        .req
        .tools
        .iter()
        .flatten()
        .filter(|tool| tool.kind == "web_search")
        .count();
    (searches > 0).then(|| ToolUsage {
        web_search: i64::try_from(searches).unwrap_or(i64::MAX),
    })
}

fn rpm_message(model: &str, rpm: u32) -> String {
    format!(
        "The request has exceeded the account's requests-per-minute limit ({rpm}) for model {model}. Please retry later."
    )
}

fn err((code, message): (&str, &str)) -> TaskError {
    TaskError {
        code: code.to_string(),
        message: message.to_string(),
    }
}

fn tier_name(flex: bool) -> &'static str {
    if flex { "flex" } else { "default" }
}

fn dice(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.min(1.0))
}

fn forget(inner: &mut Inner, id: &str) {
    if let Some(t) = inner.tasks.remove(id) {
        inner.order.remove(&t.seq);
    }
}

fn push_timer(inner: &mut Inner, at: Instant, kind: TimerKind) {
    inner.seq += 1;
    let seq = inner.seq;
    inner.timers.push(Reverse(Timer { at, seq, kind }));
}

/// `base + d`, saturating far in the future rather than overflowing.
fn at(base: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    base.checked_add(d.min(FAR))
        .unwrap_or_else(|| base + Duration::from_secs(3600))
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// `d × factor`, saturating.
pub fn scale(d: Duration, factor: f64) -> Duration {
    secs(d.as_secs_f64() * factor)
}

/// `cgt-YYYYMMDDHHMMSS-xxxxx`, the timestamp in Beijing time (UTC+8); `cgt-batch-…` for a
/// flex task when `batch` (docs/ark-api.md §14, "Flex task ids").
fn task_id(now_ms: i64, batch: bool, rng: &mut StdRng) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    let t = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    let suffix: String = (0..5)
        .map(|_| char::from(ALNUM[rng.random_range(0..ALNUM.len())]))
        .collect();
    format!(
        "cgt-{}{:04}{:02}{:02}{:02}{:02}{:02}-{suffix}",
        if batch { "batch-" } else { "" },
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn task_ids_are_beijing_time() {
        let mut rng = StdRng::seed_from_u64(1);
        // 2026-05-14T10:32:17Z is 18:32:17 in Beijing (docs/ark-api.md §1).
        let id = task_id(1_778_754_737_000, false, &mut rng);
        assert!(id.starts_with("cgt-20260514183217-"), "{id}");
        let flex = task_id(1_778_754_737_000, true, &mut rng);
        assert!(flex.starts_with("cgt-batch-20260514183217-"), "{flex}");
        let suffix = &id["cgt-20260514183217-".len()..];
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn scaling_saturates() {
        assert_eq!(
            scale(Duration::from_secs(60), 0.001),
            Duration::from_millis(60)
        );
        assert_eq!(scale(Duration::MAX, 10.0), Duration::MAX);
        let far = at(Instant::now(), Duration::MAX);
        assert!(far > Instant::now());
    }
}
