//! The simulator's configuration: [`SimConfig`] (TOML, `--config`) and its runtime-changeable
//! part, [`Faults`] (also `GET`/`POST /_sim/faults` as JSON).
//!
//! Every field has a serde default, so an empty file is a valid config that behaves like the
//! real API at real speed; `sim.example.toml` beside this file lists every key with its default. Durations are humantime strings (`"30s"`, `"7d"`) and are *nominal*:
//! the simulator multiplies each by `time_scale` (see `mod.rs` for which ones).
//! Invariant after [`SimConfig::validate`]: `time_scale` is finite and > 0, probabilities lie in
//! `[0, 1]`, `video_downscale >= 1`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use seedq_ark::catalogue::Catalogue;

/// The API key the simulator accepts when none is configured.
pub const DEFAULT_API_KEY: &str = "sk-sim";

/// Everything that shapes the simulator's behaviour.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Accepted `Authorization: Bearer` keys.
    pub api_keys: Vec<String>,
    /// Multiplies every simulated duration: 1.0 is real time, 0.001 makes a 60 s job take 60 ms.
    pub time_scale: f64,
    /// Accept model ids the catalogue does not know (endpoint ids `ep-…` are like that), with
    /// model-independent validation only; `false` answers them 404 `InvalidEndpointOrModel.NotFound`.
    pub accept_unknown_models: bool,
    /// Catalogue overrides, the same tables as `[models."<id>"]` in seedq's `config.toml`.
    pub catalogue: BTreeMap<String, serde_json::Value>,
    /// Per-model simulator overrides (limits, generation time), keyed by model id.
    pub models: BTreeMap<String, ModelSim>,
    /// Limits for models the catalogue does not know.
    pub unknown_model_limits: LimitsSim,
    /// Generation time on the default tier, unless a model overrides it.
    pub generation: Timing,
    /// Flex tasks take this many times longer than default-tier ones.
    pub flex_factor: f64,
    /// Shortest time a task stays `queued` even when a slot is free (nominal).
    #[serde(with = "humantime_serde")]
    pub start_delay: Duration,
    /// More queued tasks than this per account (both tiers): create answers 429
    /// `QuotaExceeded` (BytePlus: 120 per master account, docs/ark-api.md §6.2 D3). 0: no cap.
    pub max_queued: usize,
    /// Width of each model's offline (flex) pool: flex tasks run this many at a time and
    /// wait `queued` at Ark for the rest. Ark publishes no flex concurrency ("flex：无"); this
    /// models its offline capacity, not an account limit that rejects anything.
    pub flex_pool: u32,
    /// Length of the flex TPD day (nominal; scaled), counted from Beijing midnight like
    /// seedq's `bulk.tpd_day` (tutorial 使用限制 › 限流说明,
    /// docs/reference/tutorial.txt:1740).
    #[serde(with = "humantime_serde")]
    pub tpd_day: Duration,
    /// What DELETE does to a running task.
    pub delete_semantics: DeleteSemantics,
    /// Finished (succeeded, failed, expired) tasks vanish after this (nominal).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Cancelled tasks vanish after this (nominal).
    #[serde(with = "humantime_serde")]
    pub cancelled_retention: Duration,
    /// A video or last-frame URL works for this long after it was issued (nominal).
    #[serde(with = "humantime_serde")]
    pub url_ttl: Duration,
    /// Rendered videos are the task's pixel size divided by this (kept even and >= 16).
    pub video_downscale: u32,
    /// Serve every video padded with a trailing ISO-BMFF `free` box to exactly this many bytes.
    pub video_pad_to_bytes: Option<u64>,
    /// Render one video per (size, frames, first frame), seed ignored, and serve it to every
    /// task of that shape: for throughput benchmarks, where encoding would dominate.
    pub reuse_videos: bool,
    /// At most this many videos render at once (CPU-bound, on blocking threads); default: the
    /// number of CPUs.
    pub render_concurrency: usize,
    /// Per attempt; real time, not scaled (it is about the receiver, not the simulated clock).
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
    /// Extra attempts for `succeeded`/`failed` callbacks after a non-2xx or a timeout.
    pub callback_retries: u32,
    /// Pause before the first callback retry, doubling after (nominal).
    #[serde(with = "humantime_serde")]
    pub callback_retry_delay: Duration,
    /// Send `Retry-After` (real seconds until the RPM window frees a slot) with RPM 429s.
    pub rpm_retry_after: bool,
    /// Base of the file URLs in task responses; default `http://<bound address>`.
    pub public_base_url: Option<String>,
    /// Seeds the simulator's random choices (fault dice, task seeds, ids) for reproducible runs.
    pub rng_seed: Option<u64>,
    /// Ark's clock minus the real one, in seconds: shifts `created_at`/`updated_at` on the
    /// wire and the `Date` header, as a server with a skewed clock would (negative: behind).
    pub clock_offset_s: i64,
    /// Per-account request rates of the read routes (list, GET, DELETE; docs/ark-api.md §14).
    pub read_limits: ReadLimits,
    /// Only the last this long is listed (nominal; docs/ark-api.md §14 "List defaults": 7 days).
    #[serde(with = "humantime_serde")]
    pub list_window: Duration,
    /// Flex tasks get ids of the `cgt-batch-YYYYMMDDHHMMSS-xxxxx` form (docs/ark-api.md §14,
    /// "Flex task ids"); default-tier ids keep `cgt-YYYYMMDDHHMMSS-xxxxx`.
    pub flex_batch_ids: bool,
    /// Answer queued and running tasks (GET and list) with only `id`, `model`, `status`,
    /// `created_at` and `updated_at`, as a live BytePlus answer did (docs/ark-api.md §14 "Wire
    /// details"); finished tasks carry every field.
    pub bare_unfinished_tasks: bool,
    /// Seconds the simulator takes each reference video to last: it does not fetch them, and
    /// a video-input task bills ⌊input seconds⌋ + output seconds (docs/ark-api.md §14).
    pub reference_video_seconds: f64,
    /// Injected faults; replaceable at runtime through `POST /_sim/faults`.
    pub faults: Faults,
}

/// The documented per-account rates of the read routes (docs/ark-api.md §14, "Rate limits per
/// endpoint"): list 1 QPS, GET one task 20 QPS, DELETE 20 QPS. Over a rate, the call answers
/// 429 `AccountRateLimitExceeded` (the account-level 429 code of docs/ark-api.md §6.2; the code Ark
/// uses for these routes is not published [INF]). 0 turns a limit off.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadLimits {
    pub list_qps: f64,
    pub get_qps: f64,
    pub delete_qps: f64,
    /// Count calls per real second rather than per scaled one. By default a second is
    /// nominal like every other duration (scaled by `time_scale`, as the RPM window is), and
    /// windows shorter than [`MIN_READ_WINDOW`] are counted over that much real time with a
    /// proportional allowance: a 2 ms window cannot be policed against scheduler jitter.
    pub real_time: bool,
}

/// The shortest real window the read limits are counted over (see [`ReadLimits::real_time`]).
pub const MIN_READ_WINDOW: Duration = Duration::from_millis(100);

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            list_qps: 1.0,
            get_qps: 20.0,
            delete_qps: 20.0,
            real_time: false,
        }
    }
}

impl ReadLimits {
    /// The rate of a route, when it has one.
    pub fn qps(&self, route: Route) -> Option<f64> {
        let q = match route {
            Route::List => self.list_qps,
            Route::Get => self.get_qps,
            Route::Delete => self.delete_qps,
            Route::Create | Route::Download => 0.0,
        };
        (q > 0.0).then_some(q)
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_keys: vec![DEFAULT_API_KEY.to_string()],
            time_scale: 1.0,
            accept_unknown_models: true,
            catalogue: BTreeMap::new(),
            models: BTreeMap::new(),
            unknown_model_limits: LimitsSim::default(),
            generation: Timing::default(),
            flex_factor: 4.0,
            start_delay: Duration::ZERO,
            max_queued: 120,
            flex_pool: 200,
            tpd_day: Duration::from_secs(86_400),
            delete_semantics: DeleteSemantics::A,
            retention: Duration::from_secs(7 * 24 * 3600),
            cancelled_retention: Duration::from_secs(24 * 3600),
            url_ttl: Duration::from_secs(24 * 3600),
            video_downscale: 1,
            video_pad_to_bytes: None,
            reuse_videos: false,
            render_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            callback_timeout: Duration::from_secs(5),
            callback_retries: 3,
            callback_retry_delay: Duration::from_secs(1),
            rpm_retry_after: false,
            public_base_url: None,
            rng_seed: None,
            clock_offset_s: 0,
            read_limits: ReadLimits::default(),
            list_window: Duration::from_secs(7 * 24 * 3600),
            flex_batch_ids: true,
            bare_unfinished_tasks: false,
            reference_video_seconds: 5.0,
            faults: Faults::default(),
        }
    }
}

/// How long a generation takes: `base + per_video_second × video seconds`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub per_video_second: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        // 30 s + 6 s/s puts a 5 s clip at 60 s, the order of magnitude of observed 1.0 jobs.
        Self {
            base: Duration::from_secs(30),
            per_video_second: Duration::from_secs(6),
        }
    }
}

/// Account limits for one model.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSim {
    /// Creates per (scaled) minute.
    pub rpm: u32,
    /// Tasks running at once; the rest wait `queued`.
    pub concurrency: u32,
}

impl Default for LimitsSim {
    fn default() -> Self {
        // The Seedance 1.0 pro numbers: the most common endpoint behind an `ep-…` id.
        Self {
            rpm: 600,
            concurrency: 10,
        }
    }
}

/// Per-model overrides; absent fields keep the catalogue's (or the global) value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSim {
    pub rpm: Option<u32>,
    pub concurrency: Option<u32>,
    /// The flex pool width of this model (else `flex_pool`).
    pub flex_pool: Option<u32>,
    /// The flex tokens per day of this model (else the catalogue's `flex_tpd`).
    pub flex_tpd: Option<u64>,
    pub generation: Option<Timing>,
}

/// What DELETE does (docs/ark-api.md §5 has two versions of the docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteSemantics {
    /// Queued → cancelled; running and cancelled → refused; finished → record deleted.
    #[default]
    A,
    /// As A, but running → cancelled too.
    B,
}

/// A number per Ark route (and the file download route).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerRoute<T> {
    pub create: T,
    pub get: T,
    pub list: T,
    pub delete: T,
    pub download: T,
}

impl<T: Copy> PerRoute<T> {
    /// The value for a route.
    pub fn of(&self, route: Route) -> T {
        match route {
            Route::Create => self.create,
            Route::Get => self.get,
            Route::List => self.list,
            Route::Delete => self.delete,
            Route::Download => self.download,
        }
    }
}

/// The routes faults and stats are kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    Create,
    Get,
    List,
    Delete,
    Download,
}

impl Route {
    /// The name used in stats and fault tables.
    pub fn name(self) -> &'static str {
        match self {
            Route::Create => "create",
            Route::Get => "get",
            Route::List => "list",
            Route::Delete => "delete",
            Route::Download => "download",
        }
    }
}

/// Injected faults. `POST /_sim/faults` replaces the whole set (omitted keys take their
/// defaults, i.e. off); the two counters count down as they fire.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability of a 500 `InternalServiceError` per route (checked after auth).
    pub error_rate: PerRoute<f64>,
    /// Added latency per route, in real milliseconds.
    pub latency_ms: PerRoute<u64>,
    /// The next N creates get 429 `ModelAccountRpmRateLimitExceeded` (nothing is created).
    pub rate_limit_burst: u32,
    /// `Retry-After` seconds on burst 429s; none when absent.
    pub retry_after_secs: Option<u64>,
    /// The next N creates really create the task, then the connection is closed with no
    /// response: the ambiguous create.
    pub drop_after_create: u32,
    /// Probability that a create really creates the task, then drops the connection.
    pub drop_after_create_rate: f64,
    /// Probability that a create really creates the task, then answers 500
    /// `InternalServiceError` (`error_rate.create` answers 500 *before* creating).
    pub error_after_create_rate: f64,
    /// Real milliseconds a create waits *after* the task exists, before it answers
    /// (`latency_ms.create` waits before): with a client timeout below it, the task exists
    /// though the client saw a timeout.
    pub latency_after_create_ms: u64,
    /// Probability that a 200 JSON answer on an Ark route has a corrupted (truncated) body.
    pub malformed_json_rate: f64,
    /// Probability that a download stops halfway through the promised `Content-Length`.
    pub truncate_download_rate: f64,
    /// Cap on download speed in bytes per second (real time).
    pub download_bytes_per_sec: Option<u64>,
    /// Probability that a task fails with `OutputVideoSensitiveContentDetected.PolicyViolation`.
    pub output_moderation_rate: f64,
    /// Prompts containing any of these (case-insensitive) fail output moderation.
    pub output_moderation_words: Vec<String>,
    /// Prompts containing any of these (case-insensitive) are refused at create with 400
    /// `InputTextSensitiveContentDetected`.
    pub input_moderation_words: Vec<String>,
    /// Probability that a task fails with `InternalServiceError`.
    pub fail_transient_rate: f64,
    /// Prompts containing any of these (case-insensitive) become tasks that fail with
    /// `InvalidParameter.TaskTypeConstraint` (docs/ark-api.md §14 `omni_reference_task_type`: Ark
    /// infers the task type from the prompt, and with `auto` reports a conflict as a failed task).
    pub task_type_constraint_words: Vec<String>,
    /// The same for `InvalidParameter.TaskTypeMismatch` (a declared type the prompt contradicts).
    pub task_type_mismatch_words: Vec<String>,
    /// Models the account has not activated: create answers 404 `ModelNotOpen` (docs/ark-api.md §14
    /// "Account-state answers").
    pub model_not_open: Vec<String>,
    /// Models whose service the account's own inference limit paused: create answers 429
    /// `SetLimitExceeded` until the owner acts (docs/ark-api.md §14 "Account-state answers").
    pub set_limit_exceeded: Vec<String>,
}

impl Faults {
    /// Checks that probabilities are probabilities.
    ///
    /// # Errors
    /// Names the first field out of `[0, 1]`.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut probs = vec![
            ("malformed_json_rate", self.malformed_json_rate),
            ("truncate_download_rate", self.truncate_download_rate),
            ("output_moderation_rate", self.output_moderation_rate),
            ("fail_transient_rate", self.fail_transient_rate),
            ("drop_after_create_rate", self.drop_after_create_rate),
            ("error_after_create_rate", self.error_after_create_rate),
        ];
        for r in [
            Route::Create,
            Route::Get,
            Route::List,
            Route::Delete,
            Route::Download,
        ] {
            probs.push((r.name(), self.error_rate.of(r)));
        }
        for (name, p) in probs {
            anyhow::ensure!(
                (0.0..=1.0).contains(&p),
                "faults: {name} {p} is not a probability in [0, 1]"
            );
        }
        anyhow::ensure!(
            self.download_bytes_per_sec != Some(0),
            "faults: download_bytes_per_sec must be > 0 when set"
        );
        Ok(())
    }
}

impl SimConfig {
    /// The config for `seedq sim`: the `--config` TOML file (or defaults), then the flags.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or the result is invalid.
    pub fn from_args(args: &super::SimArgs) -> anyhow::Result<SimConfig> {
        let mut cfg = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => SimConfig::default(),
        };
        if !args.api_key.is_empty() {
            cfg.api_keys = args.api_key.clone();
        }
        if let Some(scale) = args.time_scale {
            cfg.time_scale = scale;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML file.
    ///
    /// # Errors
    /// Unreadable file, bad TOML or unknown keys.
    pub fn from_file(path: &Path) -> anyhow::Result<SimConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading sim config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing sim config {}", path.display()))
    }

    /// Checks the invariants the simulator relies on.
    ///
    /// # Errors
    /// Names the offending field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.time_scale.is_finite() && self.time_scale > 0.0,
            "time_scale {} must be a finite number > 0",
            self.time_scale
        );
        anyhow::ensure!(
            self.flex_factor.is_finite() && self.flex_factor > 0.0,
            "flex_factor {} must be a finite number > 0",
            self.flex_factor
        );
        anyhow::ensure!(
            self.reference_video_seconds.is_finite() && self.reference_video_seconds >= 0.0,
            "reference_video_seconds {} must be a finite number >= 0",
            self.reference_video_seconds
        );
        anyhow::ensure!(!self.api_keys.is_empty(), "api_keys must not be empty");
        anyhow::ensure!(self.video_downscale >= 1, "video_downscale must be >= 1");
        anyhow::ensure!(
            self.flex_pool >= 1 && self.models.values().all(|m| m.flex_pool != Some(0)),
            "flex_pool must be >= 1 (0 would never run a flex task)"
        );
        for (name, q) in [
            ("list_qps", self.read_limits.list_qps),
            ("get_qps", self.read_limits.get_qps),
            ("delete_qps", self.read_limits.delete_qps),
        ] {
            anyhow::ensure!(
                q.is_finite() && q >= 0.0,
                "read_limits.{name} {q} must be a finite number >= 0 (0: no limit)"
            );
        }
        anyhow::ensure!(
            self.render_concurrency >= 1,
            "render_concurrency must be >= 1"
        );
        self.faults.validate()?;
        self.build_catalogue()?;
        Ok(())
    }

    /// The catalogue in force: built-ins plus `catalogue` overrides.
    ///
    /// # Errors
    /// An override table the catalogue refuses.
    pub fn build_catalogue(&self) -> anyhow::Result<Catalogue> {
        if self.catalogue.is_empty() {
            return Ok(Catalogue::default());
        }
        Catalogue::with_overrides(&self.catalogue).context("sim config: catalogue overrides")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default() {
        let c: SimConfig = toml::from_str("").expect("empty parses");
        assert_eq!(c.api_keys, vec!["sk-sim".to_string()]);
        assert_eq!(c.time_scale, 1.0);
        assert_eq!(c.max_queued, 120);
        assert_eq!(c.retention, Duration::from_secs(604_800));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn toml_sets_nested_options_and_rejects_unknown_keys() {
        let c: SimConfig = toml::from_str(
            r#"
            time_scale = 0.01
            delete_semantics = "b"
            url_ttl = "1h"
            [generation]
            base = "2s"
            per_video_second = "500ms"
            [models."doubao-seedance-1-0-pro-250528"]
            concurrency = 2
            [catalogue."ep-1"]
            base = "doubao-seedance-1-0-lite-t2v-250428"
            [faults]
            input_moderation_words = ["forbidden"]
            error_rate = { get = 0.5 }
            "#,
        )
        .expect("parses");
        assert_eq!(c.delete_semantics, DeleteSemantics::B);
        assert_eq!(c.generation.per_video_second, Duration::from_millis(500));
        assert_eq!(
            c.models["doubao-seedance-1-0-pro-250528"].concurrency,
            Some(2)
        );
        assert_eq!(c.faults.error_rate.get, 0.5);
        assert!(
            c.build_catalogue()
                .expect("catalogue")
                .get("ep-1")
                .is_some()
        );
        let bad = toml::from_str::<SimConfig>("time_scael = 1.0");
        assert!(bad.is_err());
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let c: SimConfig =
            toml::from_str(include_str!("sim.example.toml")).expect("example parses");
        let d = SimConfig::default();
        assert_eq!(c.api_keys, d.api_keys);
        assert_eq!(c.retention, d.retention);
        assert_eq!(c.url_ttl, d.url_ttl);
        assert_eq!(c.generation, d.generation);
        assert_eq!(c.unknown_model_limits, d.unknown_model_limits);
        assert_eq!(c.faults, d.faults);
        assert_eq!(c.delete_semantics, d.delete_semantics);
        assert_eq!(
            (c.max_queued, c.callback_retries, c.flex_factor),
            (d.max_queued, d.callback_retries, d.flex_factor)
        );
    }

    #[test]
    fn validate_names_the_bad_field() {
        let c = SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        };
        let e = c.validate().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("time_scale")));
        let mut c = SimConfig::default();
        c.faults.error_rate.create = 1.5;
        let e = c.validate().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("create")));
    }
}
