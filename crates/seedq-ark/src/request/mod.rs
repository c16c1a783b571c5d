//! One generation request: the user's job spec, its validation and the frozen request body.
//!
//! Bad jobs never enter the queue: [`prepare`] turns a [`JobSpec`] (CLI flags or one JSONL
//! line) into the exact body that will be POSTed, after checking it against the model
//! catalogue. [`check`] is the validation itself. The simulator has its own reading of the same
//! rules (`crates/seedq-sim/src/rules`), compared with this one on generated bodies; the golden
//! corpus (`tests/golden/`) judges both.

pub mod image;
pub mod inline;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalogue::{self, Catalogue, ModelSpec, ParamStyle};
use crate::job::JobId;
use crate::tier::Tier;
use crate::wire::{ContentItem, CreateTaskRequest, DraftTaskRef, MediaUrl, Tool};

/// Bounds of `execution_expires_after`, in seconds.
pub const EXPIRES_RANGE: (i64, i64) = (3600, 259_200);
/// The API's default `execution_expires_after` (48 h).
pub const DEFAULT_EXPIRES_AFTER: i64 = 172_800;
/// The default duration in seconds.
pub const DEFAULT_DURATION: i64 = 5;
/// Largest seed.
pub const MAX_SEED: i64 = 4_294_967_295;
/// The API's default `seed`: random (docs/ark-api.md §2.1 `seed`, §7 `--seed` default −1).
pub const DEFAULT_SEED: i64 = -1;
/// The API's default remote `priority` (docs/ark-api.md §2.1 `priority`: "0; range 0–9").
pub const DEFAULT_PRIORITY: i64 = 0;
/// A request that breaks a rule. The message names the field, the value, what is allowed and
/// the model: `duration 15 is out of range for doubao-seedance-1-0-pro-250528: 2..=12 seconds`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{param}{value} {problem} for {model}: {allowed}", value = if value.is_empty() { String::new() } else { format!(" {value}") })]
pub struct Invalid {
    /// The API field (`duration`, `content[1].role`, `--dur`…).
    pub param: String,
    /// The offending value as given (empty when missing).
    pub value: String,
    /// What is wrong: "is out of range", "is not supported", "is missing"…
    pub problem: Cow<'static, str>,
    /// The model the rule belongs to.
    pub model: String,
    /// What would be accepted.
    pub allowed: String,
    /// Ark answers a missing field with `MissingParameter` rather than `InvalidParameter`.
    pub missing: bool,
    /// Ark's own error code when it is neither `InvalidParameter` nor `MissingParameter`
    /// (`InvalidParameter.TaskTypeConstraint`).
    pub code: Option<&'static str>,
}

impl Invalid {
    fn new(
        param: &str,
        value: impl ToString,
        problem: &'static str,
        model: &str,
        allowed: impl Into<String>,
    ) -> Self {
        Self {
            param: param.to_string(),
            value: value.to_string(),
            problem: Cow::Borrowed(problem),
            model: model.to_string(),
            allowed: allowed.into(),
            missing: false,
            code: None,
        }
    }

    /// The Ark error code this refusal answers with.
    pub fn ark_code(&self) -> &'static str {
        match (self.code, self.missing) {
            (Some(c), _) => c,
            (None, true) => "MissingParameter",
            (None, false) => "InvalidParameter",
        }
    }

    /// A required field is absent.
    pub fn missing(param: &str, model: &str, allowed: impl Into<String>) -> Self {
        Self {
            missing: true,
            ..Self::new(param, "", "is missing", model, allowed)
        }
    }

    /// A value that could not be parsed.
    pub fn malformed(param: &str, value: &str, model: &str, allowed: &str) -> Self {
        Self::new(param, value, "is malformed", model, allowed)
    }

    fn range(param: &str, value: impl ToString, model: &str, allowed: impl Into<String>) -> Self {
        Self::new(param, value, "is out of range", model, allowed)
    }

    fn unsupported(
        param: &str,
        value: impl ToString,
        model: &str,
        allowed: impl Into<String>,
    ) -> Self {
        Self::new(param, value, "is not supported", model, allowed)
    }

    fn not_one_of(param: &str, value: &str, model: &str, allowed: &[String]) -> Self {
        // An empty list means the model takes no value at all: say so rather than "one of ."
        let allowed = if allowed.is_empty() {
            format!("no {param} (leave it empty)")
        } else {
            format!("one of {}", allowed.join(", "))
        };
        Self::new(param, value, "is not allowed", model, allowed)
    }
}

/// How the images in a request are used. The modes are mutually exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    TextToVideo,
    FirstFrame,
    FirstLastFrame,
    ReferenceImages(u32),
}

impl Mode {
    /// A short name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            Mode::TextToVideo => "text-to-video",
            Mode::FirstFrame => "first-frame",
            Mode::FirstLastFrame => "first+last-frame",
            Mode::ReferenceImages(_) => "reference-images",
        }
    }
}

/// The parameters a valid request will actually run with, defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Effective {
    pub mode: Mode,
    pub resolution: String,
    /// The requested ratio; may be `adaptive`.
    pub ratio: String,
    /// The ratio the video will have (`adaptive` resolved from the first image when known).
    pub concrete_ratio: String,
    /// Exactly one of `duration` / `frames` is set.
    pub duration: Option<i64>,
    pub frames: Option<i64>,
    pub seed: Option<i64>,
    pub flex: bool,
    pub expires_after: i64,
    /// Output pixel size, when the model's table is known.
    pub size: Option<(u32, u32)>,
    /// `reference_video` items: usage then follows the video-input formula.
    pub video_inputs: u32,
    /// The prompt with inline commands removed.
    pub prompt: String,
    /// The failure Ark gives such a task after creating it, when the prompt makes it read the
    /// task as an edit or an extension whose rules the request breaks: (code, message).
    pub task_type_failure: Option<(String, String)>,
}

impl Effective {
    /// Frames the video will have.
    pub fn frame_count(&self, spec: Option<&ModelSpec>) -> i64 {
        match (self.frames, self.output_secs(spec)) {
            (Some(f), _) => f,
            (None, d) => catalogue::frames_for_duration(d),
        }
    }

    /// Seconds of output an estimate assumes. `-1` lets the model choose: assume the longest,
    /// so budgets err on the safe side. No duration: the model's default (catalogue data).
    fn output_secs(&self, spec: Option<&ModelSpec>) -> i64 {
        let longest = spec.map_or(12, |s| s.duration_max);
        match self
            .duration
            .unwrap_or_else(|| spec.map_or(DEFAULT_DURATION, |s| s.default_duration))
        {
            -1 => longest,
            d => d,
        }
    }

    /// Estimated billable tokens, when the pixel size is known, by the model's formula
    /// (catalogue `tokens`): with a video input, docs/ark-api.md §14's, assuming every
    /// reference is the longest the model takes (the input is a URL seedq does not fetch).
    pub fn tokens(&self, spec: Option<&ModelSpec>) -> Option<i64> {
        let (w, h) = self.size?;
        if self.video_inputs > 0
            && self.frames.is_none()
            && let Some(s) = spec
        {
            // Each reference at the longest the model takes: the estimate never falls short.
            #[allow(clippy::cast_precision_loss)]
            let input = (i64::from(self.video_inputs) * s.max_reference_video_seconds) as f64;
            return Some(catalogue::video_input_tokens(
                s,
                w,
                h,
                input,
                self.output_secs(spec),
            ));
        }
        let frames = self.frame_count(spec);
        let frames = match spec {
            Some(s) if !s.tokens.extra_frame && self.frames.is_none() => frames - 1,
            _ => frames,
        };
        Some(catalogue::tokens(w, h, frames))
    }
}

fn is_valid_frames(f: i64) -> bool {
    (29..=289).contains(&f) && (f - 25) % 4 == 0
}

/// Checks a request body against the rules Ark enforces for its model.
///
/// Models missing from the catalogue get only the model-independent checks. A JSON `null`
/// already counts as absent (the fields are `Option`). Top-level fields win over inline text
/// commands.
///
/// # Errors
/// The first rule the request breaks, as an [`Invalid`] naming the field.
pub fn check(req: &CreateTaskRequest, catalogue: &Catalogue) -> Result<Effective, Invalid> {
    let model = req.model.as_str();
    if model.is_empty() {
        return Err(Invalid::missing(
            "model",
            "(none)",
            format!(
                "a model id or endpoint id; known models: {}",
                catalogue.names()
            ),
        ));
    }
    if req.content.is_empty() {
        return Err(Invalid::missing(
            "content",
            model,
            "at least a text prompt or an image",
        ));
    }
    let spec = catalogue.get(model);
    let family = spec.map_or("", |s| s.family.as_str());
    let is_2x = family.starts_with("seedance-2");

    let mut prompt: Option<String> = None;
    let mut text_index = 0;
    let mut inline = inline::InlineParams::default();
    let (mut firsts, mut lasts, mut refs, mut videos, mut audios, mut drafts) =
        (0, 0, 0u32, 0u32, 0u32, 0);
    let mut untyped_images = 0;
    let mut first_image: Option<image::ImageInfo> = None;

    for (i, item) in req.content.iter().enumerate() {
        match item {
            ContentItem::Text { text } => {
                if prompt.is_some() {
                    return Err(Invalid::new(
                        &format!("content[{i}]"),
                        "text",
                        "is a second text item",
                        model,
                        "one text item per request",
                    ));
                }
                let (p, cmds) = inline::parse(text, model, i)?;
                prompt = Some(p);
                inline = cmds;
                text_index = i;
            }
            ContentItem::ImageUrl { image_url, role } => {
                let param = format!("content[{i}].image_url.url");
                let info = check_media_url(&image_url.url, &param, model, true)?;
                match role.as_deref() {
                    None => untyped_images += 1,
                    Some("first_frame") => firsts += 1,
                    Some("last_frame") => lasts += 1,
                    Some("reference_image") => refs += 1,
                    // "invalid role specified for image content" (tests/golden/tanstack-ai.jsonl
                    // tanstack-ai-047, live).
                    Some(other) => {
                        return Err(Invalid::not_one_of(
                            &format!("content[{i}].role"),
                            other,
                            model,
                            &strings(&["first_frame", "last_frame", "reference_image"]),
                        ));
                    }
                }
                if first_image.is_none() && role.as_deref() != Some("last_frame") {
                    first_image = info;
                }
            }
            ContentItem::VideoUrl { video_url, role } => {
                check_role(i, role.as_deref(), "reference_video", model)?;
                check_media_url(
                    &video_url.url,
                    &format!("content[{i}].video_url.url"),
                    model,
                    false,
                )?;
                videos += 1;
            }
            ContentItem::AudioUrl { audio_url, role } => {
                check_role(i, role.as_deref(), "reference_audio", model)?;
                check_media_url(
                    &audio_url.url,
                    &format!("content[{i}].audio_url.url"),
                    model,
                    false,
                )?;
                audios += 1;
            }
            ContentItem::DraftTask { draft_task } => {
                if draft_task.id.is_empty() {
                    return Err(Invalid::missing(
                        &format!("content[{i}].draft_task.id"),
                        model,
                        "a draft task id (cgt-…)",
                    ));
                }
                drafts += 1;
            }
        }
    }

    // An image without a role is the first frame (docs/ark-api.md §2.2 mode table); beside
    // reference media no source says what Ark makes of it (tests/golden/modelark-mcp.jsonl
    // modelark-mcp-004, unknown), so it counts as a reference image there: lenient.
    if untyped_images > 0 && (refs > 0 || videos > 0 || audios > 0) {
        refs += untyped_images;
    } else {
        firsts += untyped_images;
    }
    // First/last-frame images and reference media are exclusive: "first/last frame content
    // cannot be mixed with reference media content" (tests/golden/tanstack-ai.jsonl
    // tanstack-ai-046 and modelark-mcp-005, live; docs/ark-api.md §13).
    if firsts + lasts > 0 && refs + videos + audios > 0 {
        return Err(Invalid::new(
            "content",
            "with first/last-frame images and reference media",
            "mixes image modes",
            model,
            "either first_frame (+ last_frame) images or reference images/videos/audios, not both",
        ));
    }
    // "expected at most one first frame image content but got 2 instead" and "role must be
    // specified for image contents" (docs/ark-api.md §2.2; tests/golden
    // live-notes-byteplus25-029/031, live).
    if firsts > 1 || lasts > 1 || (lasts == 1 && firsts == 0) {
        let allowed = if untyped_images > 1 {
            "one image without a role, or two images with roles first_frame and last_frame"
        } else {
            "at most one first_frame image and one last_frame image, and last_frame only with a first_frame"
        };
        return Err(Invalid::new(
            "content",
            format!("with {firsts} first-frame and {lasts} last-frame images"),
            "has a wrong image count",
            model,
            allowed,
        ));
    }
    let mode = match (firsts, lasts, refs) {
        (0, 0, 0) => Mode::TextToVideo,
        (1, 0, 0) => Mode::FirstFrame,
        (1, 1, 0) => Mode::FirstLastFrame,
        (_, _, n) => Mode::ReferenceImages(n),
    };
    let prompt = prompt.unwrap_or_default();
    if mode == Mode::TextToVideo && prompt.trim().is_empty() && drafts == 0 && videos == 0 {
        return Err(Invalid::missing(
            "content[].text",
            model,
            "a text prompt (or an image) for text-to-video",
        ));
    }

    if let Some(s) = spec {
        // The tutorial's model table (tests/golden/tutorial.jsonl tutorial-034..036) and the
        // live "task_type r2v does not support model" (tanstack-ai-042/043).
        let supported = match mode {
            Mode::TextToVideo => s.text_to_video || videos > 0 || drafts > 0,
            Mode::FirstFrame => s.first_frame,
            Mode::FirstLastFrame => s.first_last_frame,
            Mode::ReferenceImages(_) => s.max_reference_images > 0,
        };
        if !supported {
            return Err(Invalid::unsupported(
                "content",
                mode.name(),
                model,
                supported_modes(s),
            ));
        }
        // 1-4 reference images on 1.0 lite-i2v (tests/golden/tutorial.jsonl tutorial-037/038).
        // On 2.x Ark counts nothing at create: 6 passed on 2.0 and 64 on 2.5 although the
        // docs say 9 and 30 (tests/golden tanstack-ai-048, live-notes-byteplus25-033), so
        // there the count is left to Ark.
        if let Mode::ReferenceImages(n) = mode
            && n > s.max_reference_images
            && !is_2x
        {
            return Err(Invalid::range(
                "content",
                format!("with {n} reference images"),
                model,
                format!("1..={} reference images", s.max_reference_images),
            ));
        }
        if videos > s.max_reference_videos {
            return Err(Invalid::range(
                "content",
                format!("with {videos} reference videos"),
                model,
                format!("at most {} reference videos", s.max_reference_videos),
            ));
        }
        if audios > s.max_reference_audios {
            return Err(Invalid::range(
                "content",
                format!("with {audios} reference audios"),
                model,
                format!("at most {} reference audios", s.max_reference_audios),
            ));
        }
    }
    // A `draft_task` item on a model without drafts: no source shows Ark's answer
    // (tests/golden/litellm.jsonl litellm-004 sends one to 2.0, unknown), so Ark decides.
    //
    // docs/ark-api.md §2.2 ("audio cannot be the only media") and the live "reference_audio
    // cannot be the only reference input" on 2.0 (tests/golden tanstack-ai-045,
    // vercel-ai-027..029). No source says it of 2.5 or of unknown models: Ark decides there.
    let audio_needs_visual = family.starts_with("seedance-2.0");
    if audio_needs_visual && audios > 0 && videos == 0 && firsts + lasts + refs == 0 {
        return Err(Invalid::new(
            "content",
            "with only audio references",
            "is not allowed",
            model,
            "reference audio together with at least one image or video",
        ));
    }

    // Parameters: the top-level field wins over the inline command. Inline `--resolution` and
    // `--duration` are validated and named `contents[N].text.<name>`; the other commands are
    // swallowed when their value does not fit (tests/golden live-notes-adcreative-022..024,
    // live-notes-sd25ext-002/004, live).
    let inline_param = |name: &str| format!("contents[{text_index}].text.{name}");
    let draft = req.draft.unwrap_or(false);
    let (resolution, resolution_param) = match (&req.resolution, &inline.resolution, spec) {
        (Some(r), _, _) => (r.clone(), "resolution".to_string()),
        (None, Some(r), _) => (r.clone(), inline_param("resolution")),
        (None, None, _) if draft => ("480p".to_string(), "resolution".to_string()),
        (None, None, Some(s)) => (s.default_resolution.clone(), "resolution".to_string()),
        (None, None, None) => ("720p".to_string(), "resolution".to_string()),
    };
    // Resolutions match case-insensitively: `4K` and `1080P` were accepted live
    // (tests/golden tanstack-ai-003/004, new-api-009).
    let resolution = resolution.to_ascii_lowercase();
    // The final of a 2.5 draft renders at the model's top resolution only: 1080p on 2.5, 4k
    // on 2.5 premium; anything else is `InvalidResolutionParameter`
    // (tests/golden/byteplus-comfyui.jsonl -002..-005, BytePlus 2026-10).
    if let Some(s) = spec
        && drafts > 0
        && family.starts_with("seedance-2.5")
        && let Some(top) = s.resolutions.last()
        && req.resolution.is_some()
        && &resolution != top
    {
        return Err(Invalid {
            code: Some("InvalidResolutionParameter"),
            ..Invalid::unsupported(
                "resolution",
                &resolution,
                model,
                format!("{top} for the final of a draft"),
            )
        });
    }
    let all_resolutions = strings(&["480p", "720p", "1080p", "4k"]);
    let allowed_res = spec.map_or(&all_resolutions, |s| &s.resolutions);
    if !allowed_res.contains(&resolution) {
        return Err(Invalid::not_one_of(
            &resolution_param,
            &resolution,
            model,
            allowed_res,
        ));
    }
    // Tutorial parameter table: 1080p "参考图场景不支持" (tests/golden/tutorial.jsonl
    // tutorial-028).
    if let Some(s) = spec
        && matches!(mode, Mode::ReferenceImages(_))
        && s.reference_max_720p
        && resolution == "1080p"
    {
        return Err(Invalid::unsupported(
            &resolution_param,
            &resolution,
            model,
            "480p or 720p with reference images",
        ));
    }

    let inline_ratio = inline
        .ratio
        .clone()
        .filter(|r| ratio_problem(r, spec, mode, model).is_none());
    let ratio_given = req.ratio.clone().or(inline_ratio);
    let ratio = match (&ratio_given, spec) {
        (Some(r), _) => r.clone(),
        (None, Some(s)) if s.adaptive_needs_image => match mode {
            Mode::FirstFrame | Mode::FirstLastFrame => "adaptive".into(),
            _ => "16:9".into(),
        },
        (None, _) => "adaptive".into(),
    };
    if let Some(e) = ratio_problem(&ratio, spec, mode, model) {
        return Err(e);
    }
    let concrete_ratio = if ratio == "adaptive" {
        first_image
            .as_ref()
            .map_or("16:9", |i| catalogue::closest_ratio(i.width, i.height))
            .to_string()
    } else {
        table_ratio(&ratio)
    };

    // `frames` is accepted on 1.0 pro and pro-fast only (tests/golden tanstack-ai-018..021,
    // live; tutorial-020..025 for the 25 + 4n grid). An inline `--frames` that does not fit
    // is swallowed like the other commands.
    let inline_frames = inline
        .frames
        .filter(|f| is_valid_frames(*f) && spec.is_none_or(|s| s.frames));
    let frames = req.frames.or(inline_frames);
    if let Some(f) = req.frames {
        if spec.is_some_and(|s| !s.frames) {
            return Err(Invalid::unsupported(
                "frames",
                f,
                model,
                "duration in seconds instead",
            ));
        }
        if !is_valid_frames(f) {
            return Err(Invalid::range(
                "frames",
                f,
                model,
                "25 + 4n within [29, 289]",
            ));
        }
    }
    let (duration_given, duration_param) = match (req.duration, inline.duration) {
        (Some(d), _) => (Some(d), "duration".to_string()),
        (None, Some(d)) => (Some(d), inline_param("duration")),
        (None, None) => (None, "duration".to_string()),
    };
    let duration = if frames.is_some() {
        None
    } else {
        // The model's own default (catalogue data: 5 s, or −1 on 2.5 per docs/ark-api.md §14).
        let d =
            duration_given.unwrap_or_else(|| spec.map_or(DEFAULT_DURATION, |s| s.default_duration));
        let (min, max, auto) = spec.map_or((1, 30, true), |s| {
            (s.duration_min, s.duration_max, s.duration_auto)
        });
        let ok = (min..=max).contains(&d) || (auto && d == -1);
        if !ok {
            let allowed = if auto {
                format!("{min}..={max} seconds, or -1 to let the model choose")
            } else {
                format!("{min}..={max} seconds")
            };
            return Err(Invalid::range(&duration_param, d, model, allowed));
        }
        Some(d)
    };
    // An inline `--fps` other than 24 is swallowed (tests/golden live-notes-adcreative-023).

    // `seed` is taken by every model, 2.x included (tests/golden tanstack-ai-022/023, live on
    // BytePlus; clients send it to 2.x in both regions: comfyui-009.., litellm-003). The range
    // is checked per model (catalogue `seed_max`; tanstack-ai-024, live); an inline `--seed`
    // out of range is swallowed.
    let max = spec.map_or(MAX_SEED, |s| s.seed_max);
    let inline_seed = inline.seed.filter(|v| (-1..=max).contains(v));
    let seed = req.seed.or(inline_seed);
    if let Some(v) = req.seed
        && !(-1..=max).contains(&v)
    {
        return Err(Invalid::range("seed", v, model, format!("-1..={max}")));
    }
    // camera_fixed: `true` needs a model that has it, and never with reference images
    // (tests/golden tutorial-032/033, tanstack-ai-025/027). `false` is the documented default
    // (docs/ark-api.md §2.1) and always accepted, although a live BytePlus probe refused the
    // field on 2.x whatever its value (tanstack-ai-028, overridden in
    // tests/golden/verdict-overrides.json): a refused create costs nothing, so Ark decides.
    let camera_ok = |cf: bool| {
        let supported = spec.is_none_or(|s| s.camera_fixed);
        !cf || (supported && !matches!(mode, Mode::ReferenceImages(_)))
    };
    if let Some(cf) = req.camera_fixed
        && !camera_ok(cf)
    {
        return Err(Invalid::unsupported(
            "camera_fixed",
            cf,
            model,
            "no camera_fixed (leave it empty; never with reference images)",
        ));
    }

    // The wire body keeps the string (it goes to Ark verbatim); here it becomes a Tier, and a
    // value Ark does not know is refused by name (docs/ark-api.md §2, omitted means default).
    let tier = req
        .service_tier
        .as_deref()
        .unwrap_or(Tier::Default.as_str());
    let Ok(tier) = tier.parse::<Tier>() else {
        return Err(Invalid::not_one_of(
            "service_tier",
            tier,
            model,
            &strings(&Tier::ALL.map(Tier::as_str)),
        ));
    };
    let flex = tier.is_flex();
    // docs/ark-api.md §2.1 `service_tier`: the 2.0 series has only `default`; flex on 2.x is
    // refused live (tests/golden tanstack-ai-035). `default` is the documented default and
    // always accepted, although BytePlus answered "must be empty" on 2.x (tanstack-ai-036,
    // overridden in tests/golden/verdict-overrides.json). `--flex` sets this field, so the
    // message names both.
    let no_flex = spec.is_some_and(|s| !s.flex);
    if no_flex && flex {
        return Err(Invalid::unsupported(
            "service_tier",
            Tier::Flex.as_str(),
            model,
            format!(
                "default only; {} has no flex tier (drop --flex / service_tier)",
                spec.map_or("this model", |s| s.family.as_str())
            ),
        ));
    }
    // [3600, 259200] (docs/ark-api.md §2.1; 1800 refused on 1.0 pro, tests/golden
    // tanstack-ai-038). The 2.x family enforces no floor: 1800 was accepted on 2.0
    // (tanstack-ai-037, live).
    let expires_after = req.execution_expires_after.unwrap_or(DEFAULT_EXPIRES_AFTER);
    let floor = if is_2x { 1 } else { EXPIRES_RANGE.0 };
    if !(floor..=EXPIRES_RANGE.1).contains(&expires_after) {
        return Err(Invalid::range(
            "execution_expires_after",
            expires_after,
            model,
            format!("{floor}..={} seconds", EXPIRES_RANGE.1),
        ));
    }
    // `generate_audio` passes Ark's validation on every model, 1.0 included (tests/golden
    // tanstack-ai-029, vercel-ai-012, live): a model without audio renders silent video.
    if draft {
        // `draft` on a model without drafts: "the specified parameter `draft` is not
        // supported … must be empty" (tests/golden tanstack-ai-013/014, live).
        if spec.is_some_and(|s| !s.draft) {
            return Err(Invalid::unsupported("draft", true, model, "draft: false"));
        }
        if resolution != "480p" {
            return Err(Invalid::unsupported(
                &resolution_param,
                &resolution,
                model,
                "480p for drafts",
            ));
        }
        // docs/ark-api.md §2.1 `draft`: no `return_last_frame`, no `flex`.
        if flex || req.return_last_frame == Some(true) {
            return Err(Invalid::new(
                "draft",
                true,
                "is not allowed",
                model,
                "no flex tier and no return_last_frame with draft",
            ));
        }
    }
    // `priority`: 0–9 (docs/ark-api.md §2.1). 1.0 accepts it and ignores it, 2.x uses it,
    // 1.5 pro refuses a set priority (tests/golden tanstack-ai-031..033). The documented
    // default 0 is accepted everywhere: no source shows 1.5 pro refusing it (new-api-005).
    // Not with flex (docs/ark-api.md §2.1).
    if let Some(p) = req.priority {
        if family == "seedance-1.5-pro" && p != DEFAULT_PRIORITY {
            return Err(Invalid::unsupported(
                "priority",
                p,
                model,
                "no priority (1.5 pro has none)",
            ));
        }
        if !(0..=9).contains(&p) {
            return Err(Invalid::range("priority", p, model, "0..=9"));
        }
        if p != DEFAULT_PRIORITY && flex {
            return Err(Invalid::new(
                "priority",
                p,
                "is not allowed",
                model,
                "no priority on the flex tier",
            ));
        }
    }
    // docs/ark-api.md §2.1 `tools`: "Seedance 2.0 series only". An empty list asks for nothing.
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        if spec.is_some_and(|s| !s.tools) {
            return Err(Invalid::unsupported("tools", "", model, "no tools"));
        }
        if let Some(t) = tools.iter().find(|t| t.kind != "web_search") {
            return Err(Invalid::not_one_of(
                "tools[].type",
                &t.kind,
                model,
                &strings(&["web_search"]),
            ));
        }
    }
    // docs/ark-api.md §13: "`output_format`: `mp4` everywhere, `mov` on 2.5 only" (catalogue data).
    if let (Some(f), Some(s)) = (&req.output_format, spec)
        && !s.output_formats.contains(f)
    {
        return Err(Invalid::not_one_of(
            "output_format",
            f,
            model,
            &s.output_formats,
        ));
    }
    if let Some(t) = &req.omni_reference_task_type {
        check_omni_task_type(t, req, spec, videos, ratio_given.as_deref(), duration_given)?;
    }
    if let Some(cb) = &req.callback_url {
        let ok = url::Url::parse(cb).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok {
            return Err(Invalid::malformed(
                "callback_url",
                cb,
                model,
                "an http(s) URL",
            ));
        }
    }
    let task_type_failure = inferred_task_type_failure(
        req.omni_reference_task_type.as_deref(),
        &prompt,
        videos,
        ratio_given.as_deref(),
        duration_given,
    );

    let size =
        spec.and_then(|s| catalogue::pixel_size(s.pixel_table, &resolution, &concrete_ratio));
    Ok(Effective {
        mode,
        resolution,
        ratio,
        concrete_ratio,
        duration,
        frames,
        seed,
        flex,
        expires_after,
        size,
        video_inputs: videos,
        prompt,
        task_type_failure,
    })
}

/// Why `ratio` does not fit the model and mode, if it does not.
fn ratio_problem(
    ratio: &str,
    spec: Option<&ModelSpec>,
    mode: Mode,
    model: &str,
) -> Option<Invalid> {
    let s = spec?;
    if !s.ratios.iter().any(|r| r == ratio) {
        return Some(Invalid::not_one_of("ratio", ratio, model, &s.ratios));
    }
    // `adaptive` needs an input image on 1.0: refused for text-to-video on 1.0 pro and
    // pro-fast (tests/golden tanstack-ai-039/040, vercel-ai-004, live) and missing from the
    // lite-t2v column (tutorial-031); "参考图场景不支持" (tutorial-029).
    if ratio == "adaptive"
        && s.adaptive_needs_image
        && matches!(mode, Mode::TextToVideo | Mode::ReferenceImages(_))
    {
        return Some(Invalid::unsupported(
            "ratio",
            "adaptive",
            model,
            "a concrete ratio for text-to-video and reference images (adaptive needs an input image)",
        ));
    }
    // 2.5 first-frame and first+last-frame tasks take their ratio from the image: an explicit
    // one is `InvalidParameter.TaskTypeConstraint` at create (tests/golden/comfyui-pr15395.jsonl
    // -001/-002 and byteplus-comfyui-007, live).
    if s.frame_modes_need_adaptive
        && matches!(mode, Mode::FirstFrame | Mode::FirstLastFrame)
        && ratio != "adaptive"
    {
        return Some(Invalid {
            code: Some(TASK_TYPE_CONSTRAINT),
            ..Invalid::unsupported(
                "ratio",
                ratio,
                model,
                "adaptive for first-frame and first+last-frame tasks",
            )
        });
    }
    None
}

/// The pixel-table ratio for a ratio: itself when the table has it, else the nearest one
/// (`5:4`, `3:2`, `1.91:1` are accepted but not in the published tables).
fn table_ratio(ratio: &str) -> String {
    let parsed = ratio.split_once(':').and_then(|(a, b)| {
        let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
        (a > 0.0 && b > 0.0).then_some((a, b))
    });
    match parsed {
        Some((a, b)) if !catalogue::is_table_ratio(ratio) => {
            catalogue::closest_ratio((a * 1000.0) as u32, (b * 1000.0) as u32).to_string()
        }
        _ => ratio.to_string(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// Ark's code for a request that breaks the rules of its task type (docs/ark-api.md §14).
pub const TASK_TYPE_CONSTRAINT: &str = "InvalidParameter.TaskTypeConstraint";
/// Ark's code for a declared task type that the prompt contradicts (docs/ark-api.md §14).
pub const TASK_TYPE_MISMATCH: &str = "InvalidParameter.TaskTypeMismatch";

/// `omni_reference_task_type` (docs/ark-api.md §2.1, §13, §14). Any value is passed on: the
/// documented `auto`/`reference`/`edit`/`extend`, and what clients send besides
/// (`edit_video`/`extend_video`, tests/golden/modelark-mcp.jsonl -007/-008; `first_last_frame`,
/// the Go SDK's test), whose answer no source shows. Enforced: a model that takes omni
/// references (2.x; docs/ark-api.md §13), and the documented edit/extend rules, refused with
/// `InvalidParameter.TaskTypeConstraint` naming the field (docs/ark-api.md §14: edit needs
/// `duration: -1` and `ratio: adaptive`; edit and extend need a `reference_video` and
/// `ratio: adaptive`, §13). Only explicit values are judged: the 2.x defaults are adaptive
/// and (2.5) -1.
fn check_omni_task_type(
    t: &str,
    req: &CreateTaskRequest,
    spec: Option<&ModelSpec>,
    videos: u32,
    ratio: Option<&str>,
    duration: Option<i64>,
) -> Result<(), Invalid> {
    let model = req.model.as_str();
    if spec.is_some_and(|s| s.max_reference_videos == 0) {
        return Err(Invalid::unsupported(
            "omni_reference_task_type",
            t,
            model,
            "no omni_reference_task_type (omni references are a Seedance 2.x feature)",
        ));
    }
    if !matches!(t, "edit" | "extend") {
        return Ok(());
    }
    let constraint = |param: &str, value: String, allowed: &str| Invalid {
        code: Some(TASK_TYPE_CONSTRAINT),
        ..Invalid::new(
            param,
            value,
            "breaks the task type's rules",
            model,
            format!("{allowed} for omni_reference_task_type {t}"),
        )
    };
    if videos == 0 {
        return Err(constraint(
            "content",
            "without a reference_video".into(),
            "a reference_video item",
        ));
    }
    if let Some(r) = ratio.filter(|r| *r != "adaptive") {
        return Err(constraint("ratio", r.to_string(), "ratio adaptive"));
    }
    if t == "edit"
        && let Some(d) = duration.filter(|d| *d != -1)
    {
        return Err(constraint("duration", d.to_string(), "duration -1"));
    }
    Ok(())
}

/// Words that make Ark read a prompt with a reference video as a video edit or an extension.
/// Ark's classifier is not published: these are the simulator's stand-in [INF], drawn from
/// the prompts of the corpus' failed tasks (tests/golden live-notes-sd25ext-008,
/// comfyui-pr15395-004, comfyui-pr15579-001, dramaclaw-001).
const EDIT_WORDS: [&str; 10] = [
    "replace",
    "make it",
    "look like",
    "swap",
    "edit ",
    "换成",
    "替换",
    "改成",
    "变成",
    "把这段",
];
const EXTEND_WORDS: [&str; 5] = ["continue", "extend", "延长", "继续", "接着"];

/// With no task type (or `auto`), Ark infers one from the prompt and, when the request breaks
/// that type's rules, creates the task and then fails it with
/// `InvalidParameter.TaskTypeConstraint` ("Seedance identified your task as video editing
/// based on your prompt … `duration` must be -1", tests/golden live-notes-sd25ext-007/-008;
/// the same on Volcengine 2.0, dramaclaw-001). A declared type that the prompt contradicts
/// fails with `InvalidParameter.TaskTypeMismatch` (docs/ark-api.md §14). Returns that
/// failure as (code, message), if any: the simulator fails the task with it and
/// `seedq submit` warns.
pub fn inferred_task_type_failure(
    declared: Option<&str>,
    prompt: &str,
    videos: u32,
    ratio: Option<&str>,
    duration: Option<i64>,
) -> Option<(String, String)> {
    if videos == 0 {
        return None;
    }
    let p = prompt.to_lowercase();
    let edit = EDIT_WORDS.iter().any(|w| p.contains(w));
    let extend = EXTEND_WORDS.iter().any(|w| p.contains(w));
    // A declared edit whose prompt asks only to extend, or the reverse, fails with
    // `InvalidParameter.TaskTypeMismatch` (docs/ark-api.md §14).
    let mismatch = match declared {
        Some("edit") => extend && !edit,
        Some("extend") => edit && !extend,
        _ => false,
    };
    if mismatch {
        return Some((
            TASK_TYPE_MISMATCH.to_string(),
            format!(
                "The declared omni_reference_task_type {} does not match the task Seedance identified from your prompt.",
                declared.unwrap_or_default()
            ),
        ));
    }
    if !matches!(declared, None | Some("auto")) {
        return None;
    }
    let (kind, needs_duration) = if edit {
        ("video editing", true)
    } else if extend {
        ("video extension", false)
    } else {
        return None;
    };
    let mut issues = Vec::new();
    if let Some(r) = ratio.filter(|r| *r != "adaptive") {
        issues.push(format!("`ratio` must be `adaptive` (got {r})"));
    }
    if needs_duration && let Some(d) = duration.filter(|d| *d != -1) {
        issues.push(format!("`duration` must be -1 (got {d})"));
    }
    if issues.is_empty() {
        return None;
    }
    let list = issues
        .iter()
        .enumerate()
        .map(|(i, s)| format!("[{i}] {s}"))
        .collect::<Vec<_>>()
        .join(" ");
    Some((
        TASK_TYPE_CONSTRAINT.to_string(),
        format!(
            "Seedance identified your task as {kind} based on your prompt. For this task type, the output ratio and duration follow the input video. Issues: {list}"
        ),
    ))
}

fn supported_modes(s: &ModelSpec) -> String {
    let mut m = Vec::new();
    if s.text_to_video {
        m.push("text-to-video".to_string());
    }
    if s.first_frame {
        m.push("first-frame".to_string());
    }
    if s.first_last_frame {
        m.push("first+last-frame".to_string());
    }
    if s.max_reference_images > 0 {
        m.push(format!("1..={} reference images", s.max_reference_images));
    }
    m.join(", ")
}

fn check_role(i: usize, role: Option<&str>, expected: &str, model: &str) -> Result<(), Invalid> {
    match role {
        None => Ok(()),
        Some(r) if r == expected => Ok(()),
        Some(r) => Err(Invalid::not_one_of(
            &format!("content[{i}].role"),
            r,
            model,
            &[expected.to_string()],
        )),
    }
}

/// Checks a media URL's form; for image `data:` URLs also the image itself.
fn check_media_url(
    url: &str,
    param: &str,
    model: &str,
    is_image: bool,
) -> Result<Option<image::ImageInfo>, Invalid> {
    if url.is_empty() {
        return Err(Invalid::missing(
            param,
            model,
            "an http(s) URL, a data: URL or an asset:// id",
        ));
    }
    if url.starts_with("data:") {
        if !is_image {
            return Err(Invalid::unsupported(
                param,
                "data: URL",
                model,
                "an http(s) URL or an asset:// id",
            ));
        }
        let (fmt, bytes) =
            image::decode_data_url(url).map_err(|p| image_invalid(param, model, &p))?;
        // Bytes that are no image seedq can read (a truncated header, a placeholder) are
        // Ark's to judge: client fixtures send such data URLs and no source shows the answer
        // (tests/golden vercel-ai-009, tanstack-ai-052). A readable image out of Ark's
        // bounds is refused (`InvalidParameter.HeightTooSmall`, tests/golden dramaclaw-002).
        let info = match image::check(&bytes) {
            Ok(info) => info,
            Err(image::ImageProblem::UnknownFormat | image::ImageProblem::Unreadable) => {
                return Ok(None);
            }
            Err(p) => return Err(image_invalid(param, model, &p)),
        };
        let same = fmt == info.format || (fmt == "jpg" && info.format == "jpeg");
        if !same {
            return Err(Invalid::new(
                param,
                format!("declared image/{fmt}"),
                "does not match its content",
                model,
                format!("image/{}", info.format),
            ));
        }
        return Ok(Some(info));
    }
    // Any other form is Ark's to judge: no source shows its answer to one (the Python SDK's
    // sample sends a `${YOUR_IMAGE_URL}` placeholder, tests/golden volcengine-python-sdk-001).
    Ok(None)
}

fn image_invalid(param: &str, model: &str, p: &image::ImageProblem) -> Invalid {
    let (value, problem, allowed) = p.describe();
    Invalid::new(param, value, problem, model, allowed)
}

/// What a user asks for: one CLI invocation or one JSONL line.
///
/// Field names follow the API where one exists. `priority` is seedq's own queue priority
/// (higher first); Ark's `priority` field (2.x only) is `remote_priority`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub model: Option<String>,
    pub prompt: Option<String>,
    /// Raw API content items, appended after the prompt and images.
    pub content: Option<Vec<ContentItem>>,
    /// Image: a local path, an http(s) URL, a `data:` URL or `asset://ID`.
    pub first_frame: Option<String>,
    pub last_frame: Option<String>,
    #[serde(default)]
    pub refs: Vec<String>,
    #[serde(default)]
    pub video_refs: Vec<String>,
    #[serde(default)]
    pub audio_refs: Vec<String>,
    pub draft_task: Option<String>,
    pub resolution: Option<String>,
    pub ratio: Option<String>,
    pub duration: Option<i64>,
    pub frames: Option<i64>,
    pub seed: Option<i64>,
    pub camera_fixed: Option<bool>,
    pub watermark: Option<bool>,
    pub return_last_frame: Option<bool>,
    pub service_tier: Option<String>,
    /// Shorthand for `service_tier = "flex"`.
    pub flex: Option<bool>,
    pub execution_expires_after: Option<i64>,
    /// `execution_expires_after` as a duration string (`48h`).
    pub expires_after: Option<String>,
    pub callback_url: Option<String>,
    pub generate_audio: Option<bool>,
    pub draft: Option<bool>,
    pub remote_priority: Option<i64>,
    pub safety_identifier: Option<String>,
    pub tools: Option<Vec<Tool>>,
    pub output_format: Option<String>,
    pub omni_reference_task_type: Option<String>,
    /// Create fields seedq does not model, sent at the top level of the body as given, so Ark
    /// answers them (lenient). Each one is named in a warning at submit.
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// Fields that real clients send but Ark's create API does not have (see
    /// [`CLIENT_ONLY_FIELDS`]): sent as given, with a warning naming the field.
    pub camerafixed: Option<serde_json::Value>,
    pub fps: Option<serde_json::Value>,
    pub negative_prompt: Option<serde_json::Value>,
    /// seedq's queue priority: higher is claimed first.
    pub priority: Option<i64>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// An idempotency key: a second job with the same key is skipped.
    pub key: Option<String>,
    pub batch: Option<String>,
}

/// Why a spec could not become a job.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    // The OS reason is part of the message: JSONL and CSV errors are printed one line each,
    // without the source chain.
    #[error("{field}: cannot read image file {path}: {reason}")]
    ReadImage {
        field: String,
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{field} {value:?} is not a duration: {reason} (e.g. \"48h\", \"3600s\")")]
    BadDuration {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("model is missing: give --model or a \"model\" field (known models: {known})")]
    NoModel { known: String },
}

/// A validated job, ready to be stored.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub id: JobId,
    pub model: String,
    pub flex: bool,
    pub priority: i64,
    /// The frozen body that will be POSTed, byte for byte.
    pub request: CreateTaskRequest,
    pub key: Option<String>,
    pub tags: Vec<String>,
    pub batch: Option<String>,
    pub seed: Option<i64>,
    pub est_tokens: Option<i64>,
    pub expires_after: i64,
    pub effective: Effective,
    /// Things worth telling the user that do not stop the job (fields Ark does not read).
    pub warnings: Vec<String>,
}

/// Top-level fields real clients send that are not in Ark's create API, and what Ark reads
/// instead. Ark does not refuse a top-level field it does not read: `framespersecond: 999`
/// created a real, billed 2.5 task (tests/golden live-notes-byteplus25-026, live), and clients
/// send made-up fields (vercel-ai-031). `camerafixed` and `fps` are the prompt commands'
/// names (`--camerafixed`, `--fps`, docs/ark-api.md §7; tests/golden/comfyui.jsonl), not
/// fields. So a job spec may carry them, they are sent as given (the simulator ignores them,
/// as Ark does), and `seedq submit` names each one in a warning.
pub const CLIENT_ONLY_FIELDS: [(&str, &str); 3] = [
    (
        "camerafixed",
        "Ark reads camera_fixed (or --camerafixed / --cf in the prompt)",
    ),
    (
        "fps",
        "every Seedance model renders 24 fps; only the prompt command --fps 24 exists",
    ),
    (
        "negative_prompt",
        "Seedance has no negative prompt; say what you want in the prompt",
    ),
];

/// The warning for a field Ark's create API does not have.
fn unknown_field_warning(field: &str) -> String {
    match CLIENT_ONLY_FIELDS.iter().find(|(f, _)| *f == field) {
        Some((_, instead)) => format!(
            "{field} is not an Ark create field and Ark ignores it ({instead}); it is sent as given"
        ),
        None => format!(
            "{field} is not a create field seedq knows; it is sent to Ark as given and Ark decides"
        ),
    }
}

/// Ark create fields a job spec's `extra` must not repeat: they have fields of their own.
const MODELLED_FIELDS: [&str; 21] = [
    "model",
    "content",
    "callback_url",
    "return_last_frame",
    "service_tier",
    "execution_expires_after",
    "generate_audio",
    "draft",
    "priority",
    "safety_identifier",
    "tools",
    "resolution",
    "ratio",
    "duration",
    "frames",
    "seed",
    "camera_fixed",
    "watermark",
    "output_format",
    "omni_reference_task_type",
    "draft_task",
];

/// Turns a spec into a validated, frozen request.
///
/// Local image files are read (relative to `base_dir`), checked and embedded as `data:` URLs.
/// When the model takes a seed and the user pinned none (or asked for `-1`, random), a seed
/// derived from the job id is sent, so an ambiguous submit can be recognised later.
///
/// # Errors
/// The spec breaks a rule, or an image file cannot be read.
pub fn prepare(
    spec: JobSpec,
    catalogue: &Catalogue,
    base_dir: &Path,
) -> Result<Prepared, SpecError> {
    let id = JobId::generate();
    let model = spec
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| SpecError::NoModel {
            known: catalogue.names(),
        })?;
    let model_spec = catalogue.get(&model);
    // Ark takes both and lets `frames` win (docs/ark-api.md §2.1 `frames`: "Overrides `duration`"),
    // so the shared `check` accepts both. A job spec is seedq's own input, documented as
    // duration *or* frames: giving both is a mistake we can name before anything is stored
    //.
    if let (Some(d), Some(f)) = (spec.duration, spec.frames) {
        return Err(Invalid::new(
            "duration",
            format!("{d} and frames {f}"),
            "are both given",
            &model,
            "either duration (seconds) or frames, not both",
        )
        .into());
    }

    let mut content = Vec::new();
    if let Some(p) = &spec.prompt {
        content.push(ContentItem::Text { text: p.clone() });
    }
    let mut image = |field: &str, src: &str, role: &str| -> Result<(), SpecError> {
        let url = resolve_image(field, src, &model, base_dir)?;
        content.push(ContentItem::ImageUrl {
            image_url: MediaUrl { url },
            role: Some(role.to_string()),
        });
        Ok(())
    };
    if let Some(f) = &spec.first_frame {
        image("first_frame", f, "first_frame")?;
    }
    if let Some(f) = &spec.last_frame {
        image("last_frame", f, "last_frame")?;
    }
    for (i, r) in spec.refs.iter().enumerate() {
        image(&format!("refs[{i}]"), r, "reference_image")?;
    }
    for v in &spec.video_refs {
        content.push(ContentItem::VideoUrl {
            video_url: MediaUrl { url: v.clone() },
            role: Some("reference_video".into()),
        });
    }
    for a in &spec.audio_refs {
        content.push(ContentItem::AudioUrl {
            audio_url: MediaUrl { url: a.clone() },
            role: Some("reference_audio".into()),
        });
    }
    if let Some(d) = &spec.draft_task {
        content.push(ContentItem::DraftTask {
            draft_task: DraftTaskRef { id: d.clone() },
        });
    }
    content.extend(spec.content.clone().unwrap_or_default());

    let expires = match (&spec.expires_after, spec.execution_expires_after) {
        (Some(s), _) => Some(parse_secs("expires_after", s)?),
        (None, v) => v,
    };
    let tier = match (spec.flex, &spec.service_tier) {
        (Some(true), _) => Some(Tier::Flex.to_string()),
        (_, t) => t.clone(),
    };
    let mut extra = spec.extra.clone().unwrap_or_default();
    for (name, value) in [
        ("camerafixed", &spec.camerafixed),
        ("fps", &spec.fps),
        ("negative_prompt", &spec.negative_prompt),
    ] {
        if let Some(v) = value {
            extra.insert(name.to_string(), v.clone());
        }
    }
    if let Some(k) = extra.keys().find(|k| MODELLED_FIELDS.contains(&k.as_str())) {
        let field = if k == "priority" {
            "remote_priority"
        } else {
            k
        };
        return Err(Invalid::new(
            &format!("extra.{k}"),
            "",
            "repeats a field seedq models",
            &model,
            format!("the job spec's own {field} field"),
        )
        .into());
    }
    // A JSON null is absent, as everywhere in a create body.
    extra.retain(|_, v| !v.is_null());
    let warnings: Vec<String> = extra.keys().map(|k| unknown_field_warning(k)).collect();
    let mut request = CreateTaskRequest {
        model: model.clone(),
        content,
        callback_url: spec.callback_url.clone(),
        return_last_frame: spec.return_last_frame,
        service_tier: tier,
        execution_expires_after: expires,
        generate_audio: spec.generate_audio,
        draft: spec.draft,
        priority: spec.remote_priority,
        safety_identifier: spec.safety_identifier.clone(),
        tools: spec.tools.clone(),
        resolution: spec.resolution.clone(),
        ratio: spec.ratio.clone(),
        duration: spec.duration,
        frames: spec.frames,
        seed: spec.seed,
        camera_fixed: spec.camera_fixed,
        watermark: spec.watermark,
        output_format: spec.output_format.clone(),
        omni_reference_task_type: spec.omni_reference_task_type.clone(),
        extra,
    };

    // Validate what the user wrote first, so errors talk about their values.
    let effective = check(&request, catalogue).map_err(remote_priority_names)?;
    let mut warnings = warnings;
    if let Some((code, message)) = &effective.task_type_failure {
        warnings.push(format!(
            "Ark is likely to create this task and then fail it with {code}: {message}"
        ));
    }
    let as_written = request.clone();
    normalise(&mut request);
    // Ark swallows inline commands whose value does not fit (inline::parse); as a top-level
    // field the same value would be refused. Such a prompt is sent as written.
    if check(&request, catalogue).is_err() {
        request = as_written;
    }
    if let Some(s) = model_spec {
        drop_unsupported_defaults(&mut request, s);
    }
    let wants_seed = model_spec.is_some_and(|s| s.seed);
    if wants_seed && matches!(effective.seed, None | Some(-1)) {
        request.seed = Some(id.derived_seed());
    }
    if model_spec.is_some_and(|s| s.param_style == ParamStyle::Inline) {
        to_inline(&mut request);
    }
    // The body we store is the body we send: re-check it in its final form.
    let effective = check(&request, catalogue).map_err(remote_priority_names)?;
    let est_tokens = effective.tokens(model_spec);
    let flex = effective.flex;
    let expires_after = effective.expires_after;
    Ok(Prepared {
        id,
        model,
        flex,
        priority: spec.priority.unwrap_or(0),
        seed: request.seed.or(effective.seed),
        request,
        key: spec.key,
        tags: spec.tags,
        batch: spec.batch,
        est_tokens,
        expires_after,
        effective,
        warnings,
    })
}

/// Removes fields a model does not take when they only repeat the documented default.
///
/// `check` accepts them (Ark's documented defaults, docs/ark-api.md §2.1; other clients send them),
/// but the sources also say these models lack the field, so seedq does not send it: the
/// request means the same and cannot trip a stricter server. The stored seed then stays
/// `None` for a model that picks its own, so reconciliation never waits for a `-1` echo.
fn drop_unsupported_defaults(req: &mut CreateTaskRequest, s: &ModelSpec) {
    if !s.seed && req.seed == Some(DEFAULT_SEED) {
        req.seed = None;
    }
    if !s.generate_audio && req.generate_audio == Some(false) {
        req.generate_audio = None;
    }
    if !s.priority && req.priority == Some(DEFAULT_PRIORITY) {
        req.priority = None;
    }
    if !s.camera_fixed && req.camera_fixed == Some(false) {
        req.camera_fixed = None;
    }
}

/// A job spec calls Ark's `priority` `remote_priority` (its `priority` is seedq's queue order),
/// so an error about the wire field must name the spec's field.
fn remote_priority_names(mut e: Invalid) -> Invalid {
    if e.param == "priority" {
        e.param = "remote_priority".into();
        e.allowed = e.allowed.replace("priority", "remote_priority");
    }
    e
}

/// Moves inline commands out of the prompt into top-level fields (explicit fields win), so
/// the frozen body has one place for each parameter.
fn normalise(req: &mut CreateTaskRequest) {
    let mut moved = inline::InlineParams::default();
    for (i, item) in req.content.iter_mut().enumerate() {
        if let ContentItem::Text { text } = item
            && let Ok((prompt, cmds)) = inline::parse(text, &req.model, i)
            && !cmds.is_empty()
        {
            *text = prompt;
            moved = cmds;
        }
    }
    if moved.is_empty() {
        return;
    }
    req.resolution = req.resolution.take().or(moved.resolution);
    req.ratio = req.ratio.take().or(moved.ratio);
    if req.frames.is_none() && req.duration.is_none() {
        req.frames = moved.frames;
        req.duration = if moved.frames.is_some() {
            None
        } else {
            moved.duration
        };
    }
    req.seed = req.seed.or(moved.seed);
    req.camera_fixed = req.camera_fixed.or(moved.camera_fixed);
    req.watermark = req.watermark.or(moved.watermark);
}

/// Renders the parameters as inline commands for endpoints that want them.
fn to_inline(req: &mut CreateTaskRequest) {
    let params = inline::InlineParams {
        resolution: req.resolution.take(),
        ratio: req.ratio.take(),
        duration: req.duration.take(),
        frames: req.frames.take(),
        framespersecond: None,
        seed: req.seed.take(),
        camera_fixed: req.camera_fixed.take(),
        watermark: req.watermark.take(),
    };
    let text = req.content.iter_mut().find_map(|i| match i {
        ContentItem::Text { text } => Some(text),
        _ => None,
    });
    match text {
        Some(t) => *t = inline::render(t, &params),
        None => req.content.insert(
            0,
            ContentItem::Text {
                text: inline::render("", &params),
            },
        ),
    }
}

/// Parses a humantime duration into whole seconds.
///
/// # Errors
/// Not a duration.
pub fn parse_secs(field: &'static str, s: &str) -> Result<i64, SpecError> {
    humantime::parse_duration(s)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .map_err(|e| SpecError::BadDuration {
            field,
            value: s.to_string(),
            reason: e.to_string(),
        })
}

/// A URL is passed through; a local file is read, checked and embedded.
fn resolve_image(field: &str, src: &str, model: &str, base: &Path) -> Result<String, SpecError> {
    let is_url = ["http://", "https://", "asset://", "data:"]
        .iter()
        .any(|p| src.starts_with(p));
    if is_url {
        return Ok(src.to_string());
    }
    let path = base.join(src);
    let invalid = |p: image::ImageProblem| {
        let (value, problem, allowed) = p.describe();
        Invalid::new(
            &format!("{field} ({})", path.display()),
            value,
            problem,
            model,
            allowed,
        )
    };
    // Regular files only, read with a cap: /dev/zero or a FIFO must not hang or exhaust memory.
    let bytes = image::read_file(&path).map_err(|p| match p {
        image::ReadProblem::Io(reason) => SpecError::ReadImage {
            field: field.to_string(),
            path: path.clone(),
            reason,
        },
        image::ReadProblem::Image(p) => invalid(p).into(),
    })?;
    let info = image::check(&bytes).map_err(invalid)?;
    Ok(image::to_data_url(&info, &bytes))
}

#[cfg(test)]
mod tests;
