//! The model catalogue: what each Seedance model accepts, its account limits and its price.
//!
//! Data, not code paths: the built-in entries come from the Seedance tutorial (1.0 family) and
//! `ark-api.md` §13 (newer families); `[models."<id>"]` tables in `config.toml` override fields
//! of a built-in entry or add new models (with `base = "<built-in id>"` to start from one).
//! Unknown model ids and endpoint ids (`ep-…`) have no entry: they get server-side validation
//! only. Shared by enqueue-time validation, the dispatcher's limits and the simulator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The pixel-size table a model family uses (ark-api.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelTable {
    /// Seedance 1.0.
    V1,
    /// Seedance 1.5 pro and 2.x.
    V2,
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
    pub flex_tpd: Option<u64>,
    /// An account's own ceiling on flex tasks in progress. Ark sets none ("flex：无", tutorial
    /// model table, reference/000_c75d201f209c583d.txt:329-380), so unset means no ceiling.
    #[serde(default)]
    pub flex_max_in_flight: Option<u32>,
    /// An account's own ceiling on flex creates per minute; Ark sets none (ibid.), unset = none.
    #[serde(default)]
    pub flex_rpm: Option<u32>,
    /// Default-tier limits of their own for some resolutions (2.0 `4k`: RPM 15, concurrency 1,
    /// ark-api.md §6.2 D3). Such jobs are held to these and to the model's limits.
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

/// Everything seedq knows about one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
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
    /// `frames` (25 + 4n in [29, 289]) is accepted.
    pub frames: bool,
    /// `seed` is accepted.
    pub seed: bool,
    /// `camera_fixed` is accepted (never in reference-image mode).
    pub camera_fixed: bool,
    /// The flex (offline, half price) tier is available.
    pub flex: bool,
    /// `draft: true` is accepted (1.5 pro).
    pub draft: bool,
    /// `generate_audio` is accepted.
    pub generate_audio: bool,
    /// The remote `priority` (0–9) is accepted.
    pub priority: bool,
    /// `tools` (web search) is accepted.
    pub tools: bool,
    /// Allowed `output_format` values; empty means the field is not accepted.
    pub output_formats: Vec<String>,
    /// Which pixel-size table applies.
    pub pixel_table: PixelTable,
    /// Account limits.
    pub limits: Limits,
    /// CNY per million tokens on the default tier; flex costs half.
    pub price_per_million: f64,
    /// How parameters are rendered into the request.
    #[serde(default)]
    pub param_style: ParamStyle,
    /// CNY this model may spend per day (issue 15; the day in `maintenance.timezone`).
    /// seedq's own cap, not an Ark limit: none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_cny: Option<f64>,
}

/// The frames-per-second every Seedance model produces.
pub const FPS: i64 = 24;

/// The ratios every family knows.
const RATIOS: [&str; 6] = ["16:9", "4:3", "1:1", "3:4", "9:16", "21:9"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

fn ratios_with_adaptive() -> Vec<String> {
    let mut r = strings(&RATIOS);
    r.push("adaptive".into());
    r
}

/// The Seedance 1.0 shape, shared by its four models.
fn seedance_1_0(family: &str, rpm: u32, concurrency: u32, tpd: u64) -> ModelSpec {
    ModelSpec {
        family: family.into(),
        text_to_video: true,
        first_frame: true,
        first_last_frame: false,
        max_reference_images: 0,
        max_reference_videos: 0,
        max_reference_audios: 0,
        resolutions: strings(&["480p", "720p", "1080p"]),
        default_resolution: "1080p".into(),
        ratios: ratios_with_adaptive(),
        adaptive_needs_image: true,
        reference_max_720p: true,
        frame_modes_need_adaptive: false,
        duration_min: 2,
        duration_max: 12,
        duration_auto: false,
        frames: true,
        seed: true,
        camera_fixed: true,
        flex: true,
        draft: false,
        generate_audio: false,
        priority: false,
        tools: false,
        // ark-api.md §13: "`output_format`: `mp4` everywhere". mp4 is what 1.0 renders anyway,
        // so asking for it explicitly must not be an error.
        output_formats: strings(&["mp4"]),
        pixel_table: PixelTable::V1,
        limits: Limits {
            rpm,
            concurrency,
            flex_tpd: Some(tpd),
            flex_max_in_flight: None,
            flex_rpm: None,
            per_resolution: BTreeMap::new(),
        },
        price_per_million: 15.0,
        param_style: ParamStyle::Fields,
        daily_cny: None,
    }
}

/// The Seedance 2.x shape.
fn seedance_2(
    family: &str,
    resolutions: &[&str],
    max_dur: i64,
    refs: (u32, u32, u32),
) -> ModelSpec {
    ModelSpec {
        family: family.into(),
        text_to_video: true,
        first_frame: true,
        first_last_frame: true,
        max_reference_images: refs.0,
        max_reference_videos: refs.1,
        max_reference_audios: refs.2,
        resolutions: strings(resolutions),
        default_resolution: "720p".into(),
        ratios: ratios_with_adaptive(),
        adaptive_needs_image: false,
        reference_max_720p: false,
        frame_modes_need_adaptive: false,
        duration_min: 4,
        duration_max: max_dur,
        duration_auto: true,
        frames: false,
        seed: false,
        camera_fixed: false,
        // ark-api.md: "Seedance 2.0 series supports only default".
        flex: false,
        draft: false,
        generate_audio: true,
        priority: true,
        tools: true,
        output_formats: strings(&["mp4"]),
        pixel_table: PixelTable::V2,
        // Not published for 2.x in our sources: conservative values, override in config.toml.
        limits: Limits {
            rpm: 300,
            concurrency: 5,
            flex_tpd: None,
            flex_max_in_flight: None,
            flex_rpm: None,
            per_resolution: BTreeMap::new(),
        },
        price_per_million: 46.0,
        param_style: ParamStyle::Fields,
        daily_cny: None,
    }
}

/// Seedance 1.5 pro, from ark-api.md (the tutorial predates it).
///
/// Starts from the 1.0 shape (it has `seed`, `camera_fixed` and flex, unlike 2.x) and changes
/// what the sources say differs. Its account limits and flex TPD are not published in our
/// sources: the 1.0 pro values stand in, and `config.toml` can override them.
fn seedance_1_5_pro(tpd: u64) -> ModelSpec {
    let mut s = seedance_1_0("seedance-1.5-pro", 600, 10, tpd);
    // ark-api.md §2.2 mode table: first+last frame on 1.5 pro; reference images are 1.0
    // lite-i2v and 2.0 only; video/audio references are 2.0 only.
    s.first_last_frame = true;
    // ark-api.md §2.1 `resolution` / §7: default 720p for 1.5 pro.
    s.default_resolution = "720p".into();
    // ark-api.md §2.1 `ratio`: "Default `adaptive` on 2.0 and 1.5 pro", text-to-video included.
    s.adaptive_needs_image = false;
    // ark-api.md §2.1 `duration`: "1.5 pro: [4, 12] or `-1`".
    s.duration_min = 4;
    s.duration_max = 12;
    s.duration_auto = true;
    // ark-api.md §2.1 `frames`: "Not supported on 2.0 or 1.5 pro".
    s.frames = false;
    // ark-api.md §2.1 `draft` ("1.5 pro only") and `generate_audio` ("2.0 series and 1.5 pro").
    s.draft = true;
    s.generate_audio = true;
    // ark-api.md §7 pixel table: "Seedance 1.5 pro / 2.0" column.
    s.pixel_table = PixelTable::V2;
    // ark-api.md §10 prices: 16 CNY/M with audio, 8 silent (flex half). Audio is the default
    // (`generate_audio` true), and the higher price keeps estimates on the safe side.
    s.price_per_million = 16.0;
    s
}

/// BytePlus ModelArk names the same models `dreamina-…` where Volcengine says `doubao-…`
/// (ark-api.md §13 model table, and the `seedance` CLI's defaults such as
/// `dreamina-seedance-2-0-260128`). An alias gets the entry, limits and checks of its model.
const BYTEPLUS_PREFIX: &str = "dreamina-";
const VOLCENGINE_PREFIX: &str = "doubao-";
/// BytePlus names its 1.x models with no prefix: `seedance-1-0-pro-250528` is Volcengine's
/// `doubao-seedance-1-0-pro-250528` (docs/ark-api.md §14; tests/golden/tanstack-ai.jsonl).
const BYTEPLUS_1X_PREFIX: &str = "seedance-";

/// The built-in catalogue, keyed by model id.
pub fn builtin() -> BTreeMap<String, ModelSpec> {
    const TPD_PRO: u64 = 500_000_000_000; // 5000亿
    const TPD_LITE: u64 = 250_000_000_000; // 2500亿
    let mut m = BTreeMap::new();

    let mut pro = seedance_1_0("seedance-1.0-pro", 600, 10, TPD_PRO);
    pro.first_last_frame = true;
    m.insert("doubao-seedance-1-0-pro-250528".to_string(), pro);

    // pro-fast: text-to-video and first frame only. Its price is not in our sources; the pro
    // price keeps estimates on the safe (high) side.
    let fast = seedance_1_0("seedance-1.0-pro-fast", 600, 10, TPD_PRO);
    m.insert("doubao-seedance-1-0-pro-fast-251015".to_string(), fast);

    let mut lite_t2v = seedance_1_0("seedance-1.0-lite-t2v", 300, 5, TPD_LITE);
    lite_t2v.first_frame = false;
    lite_t2v.default_resolution = "720p".into();
    lite_t2v.price_per_million = 10.0;
    m.insert("doubao-seedance-1-0-lite-t2v-250428".to_string(), lite_t2v);

    let mut lite_i2v = seedance_1_0("seedance-1.0-lite-i2v", 300, 5, TPD_LITE);
    lite_i2v.text_to_video = false;
    lite_i2v.first_last_frame = true;
    lite_i2v.max_reference_images = 4;
    lite_i2v.default_resolution = "720p".into();
    lite_i2v.price_per_million = 10.0;
    m.insert("doubao-seedance-1-0-lite-i2v-250428".to_string(), lite_i2v);

    // 1.5 pro (ark-api.md §2.1, §2.2, §7, §10): the only model with `draft` / `draft_task`.
    m.insert(
        "doubao-seedance-1-5-pro-251215".to_string(),
        seedance_1_5_pro(TPD_PRO),
    );

    let mut v20 = seedance_2(
        "seedance-2.0",
        &["480p", "720p", "1080p", "4k"],
        15,
        (9, 3, 3),
    );
    v20.price_per_million = 46.0;
    // ark-api.md §6.2 D3 (2.0 create page): "`4k` has its own: RPM 15, concurrency 1".
    v20.limits.per_resolution.insert(
        "4k".into(),
        ResolutionLimits {
            rpm: 15,
            concurrency: 1,
        },
    );
    m.insert("doubao-seedance-2-0-260128".to_string(), v20);
    m.insert(
        "doubao-seedance-2-0-fast-260128".to_string(),
        seedance_2("seedance-2.0-fast", &["480p", "720p"], 15, (9, 3, 3)),
    );
    m.insert(
        "doubao-seedance-2-0-mini-260615".to_string(),
        seedance_2("seedance-2.0-mini", &["480p", "720p"], 15, (9, 3, 3)),
    );
    let mut v25 = seedance_2("seedance-2.5", &["480p", "720p", "1080p"], 30, (30, 10, 10));
    v25.frame_modes_need_adaptive = true;
    v25.output_formats = strings(&["mp4", "mov"]);
    m.insert("doubao-seedance-2-5-260628".to_string(), v25);
    corpus_rows(&mut m);
    m
}

/// Rows and fields that the golden corpus (tests/golden/) shows and the entries above lack.
/// Kept apart so that they are easy to carry into a per-region catalogue.
fn corpus_rows(m: &mut BTreeMap<String, ModelSpec>) {
    // Undocumented ratios Ark accepted live (BytePlus, 2026-09-02): 5:4 and 3:2 on 1.0 pro,
    // 5:4 and 1.91:1 on 2.0 (tests/golden/live-notes-adcreative.jsonl -015..-019).
    if let Some(s) = m.get_mut("doubao-seedance-1-0-pro-250528") {
        s.ratios.extend(strings(&["5:4", "3:2"]));
    }
    if let Some(s) = m.get_mut("doubao-seedance-2-0-260128") {
        s.ratios.extend(strings(&["5:4", "1.91:1"]));
    }
    // BytePlus 2.5 takes `draft: true` and a `draft_task` final (docs 2026-10,
    // tests/golden/byteplus-comfyui.jsonl -001/-002); the Volcengine id still refuses draft on
    // 2.x (docs/ark-api.md §14, 2026-09), so only the BytePlus id gets its own row.
    if let Some(v25) = m.get("doubao-seedance-2-5-260628").cloned() {
        let mut bp = v25.clone();
        bp.draft = true;
        m.insert("dreamina-seedance-2-5-260628".to_string(), bp);
        // 2.5 premium renders 4k only (docs/ark-api.md §14; tests/golden/byteplus-comfyui.jsonl
        // -004/-005), with the 2.5 rules otherwise.
        let mut premium = v25;
        premium.family = "seedance-2.5-premium".into();
        premium.resolutions = strings(&["4k"]);
        premium.default_resolution = "4k".into();
        premium.draft = true;
        m.insert("dreamina-seedance-2-5-premium-260915".to_string(), premium);
    }
}

/// Which Ark a model id belongs to, read from its prefix (docs/ark-api.md §14 "BytePlus model
/// ids": Volcengine says `doubao-…`; BytePlus `dreamina-…` for 2.x and no prefix,
/// `seedance-…`, for 1.x). Endpoint ids and unknown names have no region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Volcengine,
    BytePlus,
}

/// The region of `model`, when its prefix tells.
pub fn region_of(model: &str) -> Option<Region> {
    if model.starts_with(VOLCENGINE_PREFIX) {
        Some(Region::Volcengine)
    } else if model.starts_with(BYTEPLUS_PREFIX) || model.starts_with(BYTEPLUS_1X_PREFIX) {
        Some(Region::BytePlus)
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
            "{} (BytePlus ids {BYTEPLUS_PREFIX}… are aliases of {VOLCENGINE_PREFIX}…)",
            models_list(&self.models)
        )
    }
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

/// Recursive JSON merge: objects merge key by key, anything else replaces.
fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
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

/// Output pixel size for a resolution and a concrete ratio (ark-api.md §7).
///
/// `4k` is not in the published table; its sizes are inferred as twice 1080p's 16:9 edge.
pub fn pixel_size(table: PixelTable, resolution: &str, ratio: &str) -> Option<(u32, u32)> {
    let v1 = table == PixelTable::V1;
    let size = match (resolution, ratio) {
        ("480p", "16:9") => {
            if v1 {
                (864, 480)
            } else {
                (864, 496)
            }
        }
        ("480p", "4:3") => {
            if v1 {
                (736, 544)
            } else {
                (752, 560)
            }
        }
        ("480p", "1:1") => (640, 640),
        ("480p", "3:4") => {
            if v1 {
                (544, 736)
            } else {
                (560, 752)
            }
        }
        ("480p", "9:16") => {
            if v1 {
                (480, 864)
            } else {
                (496, 864)
            }
        }
        ("480p", "21:9") => {
            if v1 {
                (960, 416)
            } else {
                (992, 432)
            }
        }
        ("720p", "16:9") => {
            if v1 {
                (1248, 704)
            } else {
                (1280, 720)
            }
        }
        ("720p", "4:3") => {
            if v1 {
                (1120, 832)
            } else {
                (1112, 834)
            }
        }
        ("720p", "1:1") => (960, 960),
        ("720p", "3:4") => {
            if v1 {
                (832, 1120)
            } else {
                (834, 1112)
            }
        }
        ("720p", "9:16") => {
            if v1 {
                (704, 1248)
            } else {
                (720, 1280)
            }
        }
        ("720p", "21:9") => {
            if v1 {
                (1504, 640)
            } else {
                (1470, 630)
            }
        }
        ("1080p", "16:9") => {
            if v1 {
                (1920, 1088)
            } else {
                (1920, 1080)
            }
        }
        ("1080p", "4:3") => (1664, 1248),
        ("1080p", "1:1") => (1440, 1440),
        ("1080p", "3:4") => (1248, 1664),
        ("1080p", "9:16") => {
            if v1 {
                (1088, 1920)
            } else {
                (1080, 1920)
            }
        }
        ("1080p", "21:9") => {
            if v1 {
                (2176, 928)
            } else {
                (2206, 946)
            }
        }
        ("4k", "16:9") => (3840, 2160),
        ("4k", "4:3") => (3328, 2496),
        ("4k", "1:1") => (2880, 2880),
        ("4k", "3:4") => (2496, 3328),
        ("4k", "9:16") => (2160, 3840),
        ("4k", "21:9") => (4412, 1892),
        _ => return None,
    };
    Some(size)
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

/// Tokens billed for a video: `W × H × frames / 1024` (ark-api.md §10, fits observed usage).
pub fn tokens(width: u32, height: u32, frames: i64) -> i64 {
    i64::from(width) * i64::from(height) * frames / 1024
}

/// Estimated cost in CNY for `tokens` on the given tier.
pub fn cost(spec: &ModelSpec, tokens: i64, flex: bool) -> f64 {
    let per_token = spec.price_per_million / 1_000_000.0;
    let tier = if flex { 0.5 } else { 1.0 };
    tokens as f64 * per_token * tier
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn byteplus_ids_are_aliases_with_the_same_rules() {
        let c = Catalogue::default();
        for (byteplus, volc) in [
            ("dreamina-seedance-2-0-260128", "doubao-seedance-2-0-260128"),
            (
                "dreamina-seedance-2-0-fast-260128",
                "doubao-seedance-2-0-fast-260128",
            ),
            (
                "dreamina-seedance-2-0-mini-260615",
                "doubao-seedance-2-0-mini-260615",
            ),
            (
                "dreamina-seedance-1-5-pro-251215",
                "doubao-seedance-1-5-pro-251215",
            ),
            // BytePlus' unprefixed 1.x ids (docs/ark-api.md §14).
            ("seedance-1-0-pro-250528", "doubao-seedance-1-0-pro-250528"),
            ("seedance-1-5-pro-251215", "doubao-seedance-1-5-pro-251215"),
            (
                "seedance-1-0-lite-i2v-250428",
                "doubao-seedance-1-0-lite-i2v-250428",
            ),
        ] {
            assert_eq!(c.get(byteplus), c.get(volc), "{byteplus}");
            assert!(c.get(byteplus).is_some(), "{byteplus}");
            assert_eq!(region_of(byteplus), Some(Region::BytePlus));
            assert_eq!(region_of(volc), Some(Region::Volcengine));
        }
        // 2.5 differs by region: BytePlus takes drafts (tests/golden byteplus-comfyui-001).
        let bp25 = c.get("dreamina-seedance-2-5-260628").expect("BytePlus 2.5");
        let volc25 = c.get("doubao-seedance-2-5-260628").expect("Volcengine 2.5");
        assert!(bp25.draft && !volc25.draft);
        assert_eq!(region_of("ep-20250101-abc"), None);
        assert!(c.get("dreamina-nothing-1").is_none());
        // An override of the BytePlus id starts from the model it names.
        let mut o = BTreeMap::new();
        o.insert(
            "dreamina-seedance-2-0-260128".to_string(),
            serde_json::json!({"limits": {"concurrency": 2}}),
        );
        let c2 = Catalogue::with_overrides(&o).expect("an alias needs no base");
        let s = c2.get("dreamina-seedance-2-0-260128").expect("entry");
        assert_eq!(s.limits.concurrency, 2);
        assert_eq!(s.family, "seedance-2.0");
        assert_eq!(
            c2.get("doubao-seedance-2-0-260128")
                .map(|s| s.limits.concurrency),
            Some(5),
            "the Volcengine id keeps its own limits"
        );
        assert!(c.get("doubao-dreamina-seedance-2-0-260128").is_none());
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
