//! The model catalogue: what each Seedance model accepts, its account limits and its price,
//! per region (Volcengine and BytePlus).
//!
//! Data, not code paths: the built-in rows live in `catalogue/models.toml` (embedded at build
//! time), each with the region it applies to, the date it holds from and the file in this
//! repository it comes from (the tutorial `docs/reference/tutorial.txt` for the 1.0 family,
//! `docs/ark-api.md` §13-§14 for newer families and for BytePlus). `[models."<id>"]` tables in
//! `config.toml` override fields of a built-in row or add new models (with `base = "<built-in
//! id>"` to start from one). Unknown model ids and endpoint ids (`ep-…`) have no row: they get
//! server-side validation only, conservative default limits, and no price (so a spend cap
//! holds them back, `worker::budget`). Shared by enqueue-time validation, the dispatcher's
//! limits and the simulator.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The catalogue's data file, compiled in.
const DATA: &str = include_str!("../../../catalogue/models.toml");

/// The pixel-size table a model family uses (the tables are in `catalogue/models.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelTable {
    /// Seedance 1.0 (docs/reference/tutorial.txt:1464-1489).
    V1,
    /// Seedance 1.5 pro and 2.0 (docs/ark-api.md §7).
    V2,
    /// Seedance 2.5: 480p is 854×480 (docs/ark-api.md §14 "2.5 pixel sizes").
    V25,
}

impl PixelTable {
    fn key(self) -> &'static str {
        match self {
            PixelTable::V1 => "v1",
            PixelTable::V2 => "v2",
            PixelTable::V25 => "v25",
        }
    }
}

/// Where a model id is served. The same model has different ids in the two regions
/// (docs/ark-api.md §14 "BytePlus model ids").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Volcengine Ark (China): `doubao-seedance-…`.
    #[default]
    Volcengine,
    /// BytePlus ModelArk: `seedance-1-…` (no prefix) and `dreamina-seedance-2-…`.
    Byteplus,
}

impl Region {
    /// The name used in the data file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Region::Volcengine => "volcengine",
            Region::Byteplus => "byteplus",
        }
    }
}

impl std::str::FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "volcengine" => Ok(Region::Volcengine),
            "byteplus" => Ok(Region::Byteplus),
            other => Err(format!(
                "region {other:?} is not known: one of volcengine, byteplus"
            )),
        }
    }
}

/// How the generation parameters travel in the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamStyle {
    /// Top-level JSON fields (current SDKs and docs).
    #[default]
    Fields,
    /// `--rs 720p --dur 5 …` appended to the prompt (the 1.0-era docs).
    Inline,
}

/// Per-account, per-model limits (the tutorial's 限流 column).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Creates per minute.
    pub rpm: u32,
    /// Tasks in progress (remote queued + running) at once.
    pub concurrency: u32,
    /// Flex tier tokens per day; `None` when the model has no flex tier.
    #[serde(default)]
    pub flex_tpd: Option<u64>,
    /// An account's own ceiling on flex tasks in progress. Ark sets none ("flex：无", tutorial
    /// model table, docs/reference/tutorial.txt:349-380), so unset means no ceiling.
    #[serde(default)]
    pub flex_max_in_flight: Option<u32>,
    /// An account's own ceiling on flex creates per minute; Ark sets none (ibid.), unset = none.
    #[serde(default)]
    pub flex_rpm: Option<u32>,
    /// Default-tier limits of their own for some resolutions (2.0 `4k`: RPM 15, concurrency 1,
    /// docs/ark-api.md §6.2 D3). Such jobs are held to these and to the model's limits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_resolution: BTreeMap<String, ResolutionLimits>,
}

/// The default-tier limits of one resolution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolutionLimits {
    pub rpm: u32,
    pub concurrency: u32,
}

/// How a model's usage is counted (docs/ark-api.md §10 and §14).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFormula {
    /// `W × H × (24 × d + 1) / 1024`: the extra frame of the 25 + 4n grid (§10, fits every
    /// observed usage). Without it: `W × H × 24 × d / 1024`.
    #[serde(default = "yes")]
    pub extra_frame: bool,
    /// With a video input: `W × H × 24 × (⌊input s⌋ + output s) / 1024`, and the "+1 frame"
    /// only when this is true (§14 "Tokens with a video input": it is not).
    #[serde(default)]
    pub video_input_extra_frame: bool,
    /// The minimum a video-input task is billed, in tokens. §14 says one applies on 2.x but
    /// no source in this repository gives the number: unset until config.toml sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_input_min_tokens: Option<i64>,
}

impl Default for TokenFormula {
    fn default() -> Self {
        Self {
            extra_frame: true,
            video_input_extra_frame: false,
            video_input_min_tokens: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_duration() -> i64 {
    5
}

fn default_seed_max() -> i64 {
    4_294_967_295
}

/// Everything seedq knows about one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Where the id is served.
    #[serde(default)]
    pub region: Region,
    /// The date (`YYYY-MM-DD`) this row's facts hold from.
    #[serde(default)]
    pub since: String,
    /// The file in this repository the row comes from (and what it says).
    #[serde(default)]
    pub source: String,
    /// A human-readable family name, e.g. `seedance-1.0-pro`.
    pub family: String,
    /// Text-to-video (prompt only).
    pub text_to_video: bool,
    /// One image as the first frame.
    pub first_frame: bool,
    /// First and last frame images.
    pub first_last_frame: bool,
    /// Maximum `reference_image` items; 0 when the mode is unsupported.
    pub max_reference_images: u32,
    /// Maximum `reference_video` items (2.x only).
    pub max_reference_videos: u32,
    /// Maximum `reference_audio` items (2.x only).
    pub max_reference_audios: u32,
    /// Allowed `resolution` values.
    pub resolutions: Vec<String>,
    /// The resolution used when none is given.
    pub default_resolution: String,
    /// Allowed `ratio` values (including `adaptive` where the model supports it).
    pub ratios: Vec<String>,
    /// `adaptive` is only accepted with an input image (the 1.0 family).
    pub adaptive_needs_image: bool,
    /// Reference-image mode does not allow 1080p (1.0 family).
    pub reference_max_720p: bool,
    /// First/last-frame modes require `ratio: adaptive` (2.5).
    pub frame_modes_need_adaptive: bool,
    /// Inclusive duration range in seconds.
    pub duration_min: i64,
    pub duration_max: i64,
    /// `duration: -1` lets the model choose.
    pub duration_auto: bool,
    /// The duration when the request gives none; `-1` (2.5) means the model chooses, and
    /// estimates then take `duration_max`.
    #[serde(default = "default_duration")]
    pub default_duration: i64,
    /// `frames` (25 + 4n in [29, 289]) is accepted.
    pub frames: bool,
    /// `seed` is accepted.
    pub seed: bool,
    /// The largest `seed` accepted (the smallest is −1, random).
    #[serde(default = "default_seed_max")]
    pub seed_max: i64,
    /// `camera_fixed` is accepted (never in reference-image mode).
    pub camera_fixed: bool,
    /// The flex (offline, half price) tier is available.
    pub flex: bool,
    /// `draft: true` is accepted (1.5 pro).
    pub draft: bool,
    /// `generate_audio` is accepted.
    pub generate_audio: bool,
    /// What the model does when the request says nothing about audio.
    #[serde(default)]
    pub generate_audio_default: bool,
    /// The remote `priority` (0–9) is accepted.
    pub priority: bool,
    /// `tools` (web search) is accepted.
    pub tools: bool,
    /// Allowed `output_format` values; empty means the field is not accepted.
    pub output_formats: Vec<String>,
    /// Which pixel-size table applies.
    pub pixel_table: PixelTable,
    /// How usage is counted.
    #[serde(default)]
    pub tokens: TokenFormula,
    /// The longest reference video a task may carry, in seconds: estimates of video-input
    /// tasks assume it (the input is a URL seedq does not download).
    #[serde(default)]
    pub max_reference_video_seconds: i64,
    /// Account limits.
    pub limits: Limits,
    /// CNY per million tokens on the default tier; flex costs half.
    pub price_per_million: f64,
    /// How parameters are rendered into the request.
    #[serde(default)]
    pub param_style: ParamStyle,
    /// CNY this model may spend per day (the day in `maintenance.timezone`). seedq's own cap,
    /// not an Ark limit: none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_cny: Option<f64>,
}

/// The frames-per-second every Seedance model produces.
pub const FPS: i64 = 24;

/// The ratios every family knows.
const RATIOS: [&str; 6] = ["16:9", "4:3", "1:1", "3:4", "9:16", "21:9"];

/// BytePlus ModelArk names 2.x models `dreamina-…` where Volcengine says `doubao-…`
/// (docs/ark-api.md §13-§14). A `dreamina-` id without a row of its own resolves to the
/// Volcengine row of the same model, so a new BytePlus alias is not left without rules.
const BYTEPLUS_PREFIX: &str = "dreamina-";
const VOLCENGINE_PREFIX: &str = "doubao-";
/// BytePlus names its 1.x models with no prefix: `seedance-1-0-pro-250528` is Volcengine's
/// `doubao-seedance-1-0-pro-250528` (docs/ark-api.md §14; tests/golden/tanstack-ai.jsonl).
const BYTEPLUS_1X_PREFIX: &str = "seedance-";

/// The fields every row states itself, never through `base`.
const OWN_FIELDS: [&str; 3] = ["region", "since", "source"];

/// Pixel tables: table name → resolution → ratio → (width, height).
type PixelTables = BTreeMap<String, BTreeMap<String, BTreeMap<String, (u32, u32)>>>;

/// The data file, parsed: pixel tables and resolved model rows.
struct Data {
    models: BTreeMap<String, ModelSpec>,
    pixels: PixelTables,
}

/// Parses `catalogue/models.toml`: each row starts from its `base` (resolved first) and
/// changes what it names.
fn parse(text: &str) -> Result<Data, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        pixel_tables: PixelTables,
        models: BTreeMap<String, serde_json::Value>,
    }
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    fn resolve(
        id: &str,
        raw: &BTreeMap<String, serde_json::Value>,
        depth: usize,
    ) -> Result<serde_json::Value, String> {
        let row = raw.get(id).ok_or_else(|| format!("no row {id:?}"))?;
        if depth > 8 {
            return Err(format!("{id}: base chain too long"));
        }
        let mut row = row.clone();
        let base = row
            .as_object_mut()
            .and_then(|o| o.remove("base"))
            .and_then(|b| b.as_str().map(str::to_string));
        match base {
            Some(b) => {
                let mut v = resolve(&b, raw, depth + 1).map_err(|e| format!("{id}: base {e}"))?;
                merge(&mut v, row);
                Ok(v)
            }
            None => Ok(row),
        }
    }
    let mut models = BTreeMap::new();
    for (id, row) in &file.models {
        for f in OWN_FIELDS {
            if row
                .get(f)
                .and_then(|v| v.as_str())
                .is_none_or(str::is_empty)
            {
                return Err(format!(
                    "models.{id}: `{f}` must be given in the row itself"
                ));
            }
        }
        let value = resolve(id, &file.models, 0)?;
        let spec: ModelSpec =
            serde_json::from_value(value).map_err(|e| format!("models.{id}: {e}"))?;
        models.insert(id.clone(), spec);
    }
    Ok(Data {
        models,
        pixels: file.pixel_tables,
    })
}

fn data() -> &'static Data {
    static DATA_PARSED: OnceLock<Data> = OnceLock::new();
    // The file is compiled in and checked by the unit tests: a parse error is a build defect.
    DATA_PARSED.get_or_init(|| match parse(DATA) {
        Ok(d) => d,
        Err(e) => panic!("catalogue/models.toml: {e}"),
    })
}

/// The built-in catalogue, keyed by model id.
pub fn builtin() -> BTreeMap<String, ModelSpec> {
    data().models.clone()
}

/// Rows and fields that the golden corpus (tests/golden/) shows and the entries above lack.
/// Kept apart so that they are easy to carry into a per-region catalogue.
/// Which Ark a model id belongs to, read from its prefix (docs/ark-api.md §14 "BytePlus model
/// ids": Volcengine says `doubao-…`; BytePlus `dreamina-…` for 2.x and no prefix,
/// `seedance-…`, for 1.x). Endpoint ids and unknown names have no region.
/// The region of `model`, when its prefix tells.
pub fn region_of(model: &str) -> Option<Region> {
    if model.starts_with(VOLCENGINE_PREFIX) {
        Some(Region::Volcengine)
    } else if model.starts_with(BYTEPLUS_PREFIX) || model.starts_with(BYTEPLUS_1X_PREFIX) {
        Some(Region::Byteplus)
    } else {
        None
    }
}

/// Errors building the catalogue from configuration.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("models.{model}: base {base:?} is not a built-in model (known: {known})")]
    UnknownBase {
        model: String,
        base: String,
        known: String,
    },
    #[error(
        "models.{model}: a new model needs `base = \"<built-in id>\"` to start from (known: {known})"
    )]
    NoBase { model: String, known: String },
    #[error("models.{model}: {source}")]
    Field {
        model: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The catalogue in force: built-ins plus the overrides from `config.toml`.
#[derive(Clone, Debug)]
pub struct Catalogue {
    models: BTreeMap<String, ModelSpec>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Self { models: builtin() }
    }
}

impl Catalogue {
    /// Applies `[models."<id>"]` override tables (as JSON objects) on top of the built-ins.
    ///
    /// # Errors
    /// A table with an unknown field or a wrongly typed value, or a new model without `base`.
    pub fn with_overrides(
        overrides: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Self, CatalogueError> {
        let mut models = builtin();
        let known = || models_list(&builtin());
        for (id, table) in overrides {
            let mut table = table.clone();
            let base_id = table
                .as_object_mut()
                .and_then(|o| o.remove("base"))
                .and_then(|b| b.as_str().map(str::to_string));
            let base = match (&base_id, lookup(&models, id)) {
                (Some(b), _) => builtin()
                    .remove(b)
                    .ok_or_else(|| CatalogueError::UnknownBase {
                        model: id.clone(),
                        base: b.clone(),
                        known: known(),
                    })?,
                (None, Some(existing)) => existing.clone(),
                (None, None) => {
                    return Err(CatalogueError::NoBase {
                        model: id.clone(),
                        known: known(),
                    });
                }
            };
            let mut value =
                serde_json::to_value(&base).map_err(|source| CatalogueError::Field {
                    model: id.clone(),
                    source,
                })?;
            merge(&mut value, table);
            let spec: ModelSpec =
                serde_json::from_value(value).map_err(|source| CatalogueError::Field {
                    model: id.clone(),
                    source,
                })?;
            models.insert(id.clone(), spec);
        }
        Ok(Self { models })
    }

    /// The spec for `model`, if seedq knows it. A BytePlus id (`dreamina-seedance-…`) without
    /// an entry of its own resolves to the Volcengine entry of the same model.
    pub fn get(&self, model: &str) -> Option<&ModelSpec> {
        lookup(&self.models, model)
    }

    /// Every known model.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &ModelSpec)> {
        self.models.iter()
    }

    /// The known ids, comma-separated, for error messages.
    pub fn names(&self) -> String {
        format!(
            "{} (a BytePlus id {BYTEPLUS_PREFIX}… without a row of its own takes the row of {VOLCENGINE_PREFIX}…)",
            models_list(&self.models)
        )
    }

    /// The catalogued id closest to `model` by edit distance, for "did you mean" hints; `None`
    /// when nothing is reasonably close (more than a third of the id would have to change).
    pub fn nearest(&self, model: &str) -> Option<&str> {
        let (id, d) = self
            .models
            .keys()
            .map(|k| (k.as_str(), edit_distance(model, k)))
            .min_by_key(|(_, d)| *d)?;
        (d <= model.chars().count().max(id.chars().count()) / 3).then_some(id)
    }
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// An entry by id, or for a BytePlus `dreamina-X` id without one, the entry of `doubao-X`;
/// for an unprefixed BytePlus `seedance-X`, the entry of `doubao-seedance-X`.
fn lookup<'a>(models: &'a BTreeMap<String, ModelSpec>, model: &str) -> Option<&'a ModelSpec> {
    models.get(model).or_else(|| {
        if let Some(rest) = model.strip_prefix(BYTEPLUS_PREFIX) {
            return models.get(&format!("{VOLCENGINE_PREFIX}{rest}"));
        }
        if model.starts_with(BYTEPLUS_1X_PREFIX) {
            return models.get(&format!("{VOLCENGINE_PREFIX}{model}"));
        }
        None
    })
}

fn models_list(m: &BTreeMap<String, ModelSpec>) -> String {
    m.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Recursive JSON merge: objects merge key by key, anything else replaces. An empty object
/// below the top replaces too, so a row can clear a table it inherits (`per_resolution = {}`).
fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) if v.as_object().is_some_and(serde_json::Map::is_empty) => *slot = v,
                    Some(slot) => merge(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Output pixel size for a resolution and a concrete ratio, from the catalogue's pixel tables.
pub fn pixel_size(table: PixelTable, resolution: &str, ratio: &str) -> Option<(u32, u32)> {
    data()
        .pixels
        .get(table.key())?
        .get(resolution)?
        .get(ratio)
        .copied()
}

/// True for the ratios the published pixel tables have (docs/ark-api.md §7).
pub fn is_table_ratio(ratio: &str) -> bool {
    RATIOS.contains(&ratio)
}

/// The concrete ratio closest to an image's aspect, for `adaptive`.
pub fn closest_ratio(width: u32, height: u32) -> &'static str {
    let aspect = f64::from(width) / f64::from(height.max(1));
    let value = |r: &str| -> f64 {
        let (a, b) = r.split_once(':').unwrap_or(("16", "9"));
        a.parse::<f64>().unwrap_or(16.0) / b.parse::<f64>().unwrap_or(9.0)
    };
    RATIOS
        .into_iter()
        .min_by(|a, b| {
            let da = (value(a).ln() - aspect.ln()).abs();
            let db = (value(b).ln() - aspect.ln()).abs();
            da.total_cmp(&db)
        })
        .unwrap_or("16:9")
}

/// Frame count for a duration: 24 fps plus the extra frame of the 25 + 4n grid.
pub fn frames_for_duration(duration_secs: i64) -> i64 {
    FPS * duration_secs + 1
}

/// Tokens billed for a video: `W × H × frames / 1024` (docs/ark-api.md §10, fits observed
/// usage).
pub fn tokens(width: u32, height: u32, frames: i64) -> i64 {
    i64::from(width) * i64::from(height) * frames / 1024
}

/// Tokens billed for a task with a video input (docs/ark-api.md §14 "Tokens with a video
/// input"): `W × H × 24 × (⌊input s⌋ + output s) / 1024`, plus a frame only where the model's
/// formula says so, and at least the model's minimum charge when one is set.
pub fn video_input_tokens(
    spec: &ModelSpec,
    width: u32,
    height: u32,
    input_secs: f64,
    output_secs: i64,
) -> i64 {
    // Whole input seconds: ⌊input s⌋. Negative or NaN inputs count as none.
    #[allow(clippy::cast_possible_truncation)]
    let input = if input_secs.is_finite() && input_secs > 0.0 {
        input_secs.floor() as i64
    } else {
        0
    };
    let frames = FPS * (input + output_secs) + i64::from(spec.tokens.video_input_extra_frame);
    let t = tokens(width, height, frames);
    spec.tokens.video_input_min_tokens.map_or(t, |m| t.max(m))
}

/// Estimated cost in CNY for `tokens` on the given tier.
pub fn cost(spec: &ModelSpec, tokens: i64, flex: bool) -> f64 {
    let per_token = spec.price_per_million / 1_000_000.0;
    let tier = if flex { 0.5 } else { 1.0 };
    tokens as f64 * per_token * tier
}

/// Start of the current TPD day (ms), in the configured UTC offset (Ark counts in Beijing).
pub fn day_start_ms(now: i64, offset_hours: i32) -> i64 {
    let off = i64::from(offset_hours) * 3_600_000;
    (now + off).div_euclid(86_400_000) * 86_400_000 - off
}

/// Start of the TPD day containing `now` (ms): days of `day_ms` counted from midnight at
/// UTC+`offset_hours`. With a 24 h day this is [`day_start_ms`].
pub fn tpd_day_start(now: i64, offset_hours: i32, day_ms: i64) -> i64 {
    let off = i64::from(offset_hours) * 3_600_000;
    let day = day_ms.max(1);
    (now + off).div_euclid(day) * day - off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpd_days_start_at_beijing_midnight() {
        // 2026-05-14T16:00:00Z is midnight in UTC+8.
        let midnight_bj = 1_778_774_400_000;
        assert_eq!(day_start_ms(midnight_bj, 8), midnight_bj);
        assert_eq!(day_start_ms(midnight_bj + 1, 8), midnight_bj);
        assert_eq!(day_start_ms(midnight_bj - 1, 8), midnight_bj - 86_400_000);
        assert_eq!(day_start_ms(86_400_000 * 3 + 5, 0), 86_400_000 * 3);
    }

    #[test]
    fn tutorial_limits_for_the_1_0_models() {
        let c = Catalogue::default();
        let pro = c.get("doubao-seedance-1-0-pro-250528").expect("pro");
        assert_eq!((pro.limits.rpm, pro.limits.concurrency), (600, 10));
        assert_eq!(pro.limits.flex_tpd, Some(500_000_000_000));
        let lite = c.get("doubao-seedance-1-0-lite-i2v-250428").expect("lite");
        assert_eq!((lite.limits.rpm, lite.limits.concurrency), (300, 5));
        assert_eq!(lite.max_reference_images, 4);
        assert!(!lite.text_to_video);
        let fast = c.get("doubao-seedance-1-0-pro-fast-251015").expect("fast");
        assert!(!fast.first_last_frame);
    }

    #[test]
    fn observed_usage_numbers_match_the_formula() {
        let (w, h) = pixel_size(PixelTable::V2, "720p", "16:9").expect("size");
        assert_eq!(tokens(w, h, frames_for_duration(5)), 108_900);
        let (w, h) = pixel_size(PixelTable::V2, "1080p", "16:9").expect("size");
        assert_eq!(tokens(w, h, frames_for_duration(12)), 585_225);
    }

    #[test]
    fn overrides_change_fields_and_add_models() {
        let mut o = BTreeMap::new();
        o.insert(
            "doubao-seedance-1-0-pro-250528".to_string(),
            serde_json::json!({"limits": {"concurrency": 3}}),
        );
        o.insert(
            "ep-20250101-abc".to_string(),
            serde_json::json!({"base": "doubao-seedance-1-0-lite-t2v-250428", "param_style": "inline"}),
        );
        let c = Catalogue::with_overrides(&o).expect("valid overrides");
        let pro = c.get("doubao-seedance-1-0-pro-250528").expect("pro");
        assert_eq!(pro.limits.concurrency, 3);
        assert_eq!(pro.limits.rpm, 600, "other fields are kept");
        let ep = c.get("ep-20250101-abc").expect("ep");
        assert_eq!(ep.param_style, ParamStyle::Inline);
        assert_eq!(ep.limits.rpm, 300);
    }

    #[test]
    fn bad_overrides_are_named() {
        let mut o = BTreeMap::new();
        o.insert(
            "new-model".to_string(),
            serde_json::json!({"limits": {"rpm": 1}}),
        );
        let e = Catalogue::with_overrides(&o).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("new-model") && e.contains("base")));
        let mut o = BTreeMap::new();
        o.insert(
            "doubao-seedance-1-0-pro-250528".to_string(),
            serde_json::json!({"limitz": 1}),
        );
        let e = Catalogue::with_overrides(&o).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("limitz")));
    }

    /// A BytePlus row with its region, date and source set aside, and the fields its source
    /// says differ (2.5's draft, docs/ark-api.md §14 "Draft on 2.5") taken from the twin.
    fn as_twin(b: &ModelSpec, v: &ModelSpec) -> ModelSpec {
        let mut b = b.clone();
        b.region = v.region;
        b.since.clone_from(&v.since);
        b.source.clone_from(&v.source);
        if b.family == "seedance-2.5" {
            b.draft = v.draft;
        }
        b
    }

    #[test]
    fn byteplus_ids_are_priced_and_limited_like_their_volcengine_twins() {
        let c = Catalogue::default();
        let twins = [
            ("seedance-1-0-pro-250528", "doubao-seedance-1-0-pro-250528"),
            (
                "seedance-1-0-pro-fast-251015",
                "doubao-seedance-1-0-pro-fast-251015",
            ),
            (
                "seedance-1-0-lite-t2v-250428",
                "doubao-seedance-1-0-lite-t2v-250428",
            ),
            (
                "seedance-1-0-lite-i2v-250428",
                "doubao-seedance-1-0-lite-i2v-250428",
            ),
            ("seedance-1-5-pro-251215", "doubao-seedance-1-5-pro-251215"),
            ("dreamina-seedance-2-0-260128", "doubao-seedance-2-0-260128"),
            (
                "dreamina-seedance-2-0-fast-260128",
                "doubao-seedance-2-0-fast-260128",
            ),
            (
                "dreamina-seedance-2-0-mini-260615",
                "doubao-seedance-2-0-mini-260615",
            ),
            ("dreamina-seedance-2-5-260628", "doubao-seedance-2-5-260628"),
        ];
        for (byteplus, volc) in twins {
            let b = c.get(byteplus).expect(byteplus);
            let v = c.get(volc).expect(volc);
            assert_eq!(b.region, Region::Byteplus, "{byteplus}");
            assert_eq!(v.region, Region::Volcengine, "{volc}");
            assert_eq!(as_twin(b, v), *v, "{byteplus} is {volc} in BytePlus");
            assert!(
                b.source.contains(volc),
                "{byteplus}'s source names its twin"
            );
        }
        // Every BytePlus row but 2.5 flash and 2.5 premium (BytePlus only) has a twin above.
        let byteplus_rows = c
            .iter()
            .filter(|(_, s)| s.region == Region::Byteplus)
            .count();
        assert_eq!(byteplus_rows, twins.len() + 2);
        // Region-specific facts with their source: BytePlus 2.5 takes `draft`.
        assert!(
            c.get("dreamina-seedance-2-5-260628")
                .is_some_and(|s| s.draft)
        );
        assert!(
            c.get("doubao-seedance-2-5-260628")
                .is_some_and(|s| !s.draft)
        );
        let flash = c.get("dreamina-seedance-2-5-flash-261115").expect("flash");
        assert_eq!(flash.resolutions, ["480p", "720p"]);
        // A `dreamina-` id without a row of its own still resolves to its Volcengine row.
        assert_eq!(
            c.get("dreamina-seedance-1-5-pro-251215"),
            c.get("doubao-seedance-1-5-pro-251215")
        );
        for (byteplus, volc) in [
            ("seedance-1-0-pro-250528", "doubao-seedance-1-0-pro-250528"),
            ("dreamina-seedance-2-0-260128", "doubao-seedance-2-0-260128"),
        ] {
            assert_eq!(region_of(byteplus), Some(Region::Byteplus));
            assert_eq!(region_of(volc), Some(Region::Volcengine));
        }
        assert_eq!(region_of("ep-20250101-abc"), None);
        let premium = c
            .get("dreamina-seedance-2-5-premium-260915")
            .expect("premium");
        assert_eq!(premium.resolutions, ["4k"]);
        assert!(c.get("dreamina-nothing-1").is_none());
        assert!(c.get("doubao-dreamina-seedance-2-0-260128").is_none());
        // An override of a BytePlus id changes that row only.
        let mut o = BTreeMap::new();
        o.insert(
            "dreamina-seedance-2-0-260128".to_string(),
            serde_json::json!({"limits": {"concurrency": 2}}),
        );
        let c2 = Catalogue::with_overrides(&o).expect("a catalogued id needs no base");
        let s = c2.get("dreamina-seedance-2-0-260128").expect("row");
        assert_eq!(s.limits.concurrency, 2);
        assert_eq!(s.family, "seedance-2.0");
        assert_eq!(
            c2.get("doubao-seedance-2-0-260128")
                .map(|s| s.limits.concurrency),
            Some(5),
            "the Volcengine id keeps its own limits"
        );
    }

    #[test]
    fn every_row_has_region_since_and_a_source_in_the_repo() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        for (id, s) in Catalogue::default().iter() {
            let since = chrono::NaiveDate::parse_from_str(&s.since, "%Y-%m-%d");
            assert!(since.is_ok(), "{id}: since {:?} is a date", s.since);
            let file = s.source.split([' ', ':']).next().unwrap_or_default();
            assert!(
                root.join(file).is_file(),
                "{id}: source {:?} names a file in the repository",
                s.source
            );
            assert!(s.price_per_million > 0.0, "{id} has a price");
            let prefix_ok = match s.region {
                Region::Volcengine => id.starts_with("doubao-"),
                Region::Byteplus => {
                    id.starts_with("dreamina-seedance-2-") || id.starts_with("seedance-1-")
                }
            };
            assert!(prefix_ok, "{id}: id fits region {}", s.region.name());
            for r in &s.resolutions {
                for ratio in RATIOS {
                    assert!(
                        pixel_size(s.pixel_table, r, ratio).is_some(),
                        "{id}: {r} {ratio} has a pixel size"
                    );
                }
            }
        }
        // A row that leaves out its own source does not load.
        let bad = DATA.replacen(
            "source = \"docs/ark-api.md §14 (BytePlus ids); rules",
            "x = \"",
            1,
        );
        assert!(parse(&bad).is_err());
        let no_source = format!(
            "{DATA}\n[models.\"doubao-x\"]\nbase = \"doubao-seedance-1-0-pro-250528\"\nregion = \"volcengine\"\nsince = \"2026-01-01\"\n"
        );
        let e = parse(&no_source).err().unwrap_or_default();
        assert!(e.contains("doubao-x") && e.contains("source"), "{e}");
    }

    #[test]
    fn seedance_2_5_renders_854x480_and_bills_the_live_token_counts() {
        let c = Catalogue::default();
        for id in ["doubao-seedance-2-5-260628", "dreamina-seedance-2-5-260628"] {
            let s = c.get(id).expect(id);
            assert_eq!(pixel_size(s.pixel_table, "480p", "16:9"), Some((854, 480)));
            assert_eq!(pixel_size(s.pixel_table, "480p", "9:16"), Some((480, 854)));
            // docs/ark-api.md §14: live 2.5 usage 38 830 for 4 s and 288 625 for 30 s at 480p.
            assert_eq!(tokens(854, 480, frames_for_duration(4)), 38_830);
            assert_eq!(tokens(854, 480, frames_for_duration(30)), 288_625);
            // §14 "2.5 defaults": duration −1 (model-chosen), audio on; 4-30 s.
            assert_eq!(s.default_duration, -1);
            assert!(s.generate_audio_default && s.duration_auto);
            assert_eq!((s.duration_min, s.duration_max), (4, 30));
            assert!(!s.resolutions.contains(&"4k".to_string()));
        }
        // 2.0 keeps 864×496 at 480p (docs/ark-api.md §7).
        assert_eq!(pixel_size(PixelTable::V2, "480p", "16:9"), Some((864, 496)));
    }

    #[test]
    fn video_input_tokens_have_no_extra_frame_and_a_minimum() {
        let c = Catalogue::default();
        let s = c.get("doubao-seedance-2-0-260128").expect("2.0");
        // docs/ark-api.md §14: 1280·720·24·(⌊input s⌋ + output s)/1024.
        assert_eq!(
            video_input_tokens(s, 1280, 720, 3.9, 5),
            1280 * 720 * 24 * 8 / 1024
        );
        assert_eq!(video_input_tokens(s, 1280, 720, 0.0, 4), 86_400);
        let mut min = s.clone();
        min.tokens.video_input_min_tokens = Some(100_000);
        assert_eq!(video_input_tokens(&min, 1280, 720, 0.0, 4), 100_000);
        assert_eq!(
            video_input_tokens(&min, 1280, 720, 10.0, 5),
            1280 * 720 * 24 * 15 / 1024
        );
    }

    #[test]
    fn seeds_and_defaults_per_family() {
        let c = Catalogue::default();
        let pro = c.get("seedance-1-0-pro-250528").expect("pro");
        assert!(pro.seed && pro.seed_max == 4_294_967_295);
        assert_eq!(pro.default_duration, 5);
        assert_eq!(pro.default_resolution, "1080p");
        assert!(!pro.generate_audio_default);
        let v20 = c.get("dreamina-seedance-2-0-260128").expect("2.0");
        assert!(!v20.seed);
        assert_eq!(v20.default_duration, 5);
        assert!(v20.generate_audio_default);
    }

    #[test]
    fn the_nearest_catalogued_id_is_named() {
        let c = Catalogue::default();
        assert_eq!(
            c.nearest("seedance-1-0-pro-25052"),
            Some("seedance-1-0-pro-250528")
        );
        assert_eq!(
            c.nearest("doubao-seedance-2-5-260629"),
            Some("doubao-seedance-2-5-260628")
        );
        assert_eq!(c.nearest("ep-20260101-abcde"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn seedance_1_5_pro_has_the_documented_rules() {
        let c = Catalogue::default();
        let s = c.get("doubao-seedance-1-5-pro-251215").expect("1.5 pro");
        assert!(s.draft && s.generate_audio && s.seed && s.flex && s.first_last_frame);
        assert!(!s.frames && !s.priority && !s.tools);
        assert_eq!((s.duration_min, s.duration_max), (4, 12));
        assert!(s.duration_auto);
        assert_eq!(s.default_resolution, "720p");
        assert_eq!(s.pixel_table, PixelTable::V2);
        assert_eq!(s.max_reference_images, 0);
        assert!((s.price_per_million - 16.0).abs() < f64::EPSILON);
    }

    #[test]
    fn closest_ratio_picks_the_nearest() {
        assert_eq!(closest_ratio(1920, 1080), "16:9");
        assert_eq!(closest_ratio(1000, 1000), "1:1");
        assert_eq!(closest_ratio(1080, 1920), "9:16");
        assert_eq!(closest_ratio(800, 600), "4:3");
        assert_eq!(closest_ratio(2100, 900), "21:9");
    }
}
