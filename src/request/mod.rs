//! One generation request: the user's job spec, its validation and the frozen request body.
//!
//! Bad jobs never enter the queue: [`prepare`] turns a [`JobSpec`] (CLI flags or one JSONL
//! line) into the exact body that will be POSTed, after checking it against the model
//! catalogue. [`check`] is the validation itself; the simulator runs the same function on
//! incoming bodies, so enqueue-time and server-side rules cannot drift apart.

pub mod image;
pub mod inline;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ark::wire::{ContentItem, CreateTaskRequest, DraftTaskRef, MediaUrl, Tool};
use crate::catalogue::{self, Catalogue, ModelSpec, ParamStyle};
use crate::job::JobId;

/// Bounds of `execution_expires_after`, in seconds.
pub const EXPIRES_RANGE: (i64, i64) = (3600, 259_200);
/// The API's default `execution_expires_after` (48 h).
pub const DEFAULT_EXPIRES_AFTER: i64 = 172_800;
/// The default duration in seconds.
pub const DEFAULT_DURATION: i64 = 5;
/// Largest seed.
pub const MAX_SEED: i64 = 4_294_967_295;
/// The API's default `seed`: random (ark-api.md §2.1 `seed`, §7 `--seed` default −1).
pub const DEFAULT_SEED: i64 = -1;
/// The API's default remote `priority` (ark-api.md §2.1 `priority`: "0; range 0–9").
pub const DEFAULT_PRIORITY: i64 = 0;
/// `omni_reference_task_type` values any source shows: ark-api.md §13 lists
/// `auto`/`reference`/`edit`/`extend` (2.5); §2.1 shows the Go SDK's test sending
/// `first_last_frame`. The sources disagree, so the union is accepted.
pub const OMNI_TASK_TYPES: [&str; 5] = ["auto", "reference", "edit", "extend", "first_last_frame"];

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

    let mut prompt: Option<String> = None;
    let mut inline = inline::InlineParams::default();
    let (mut firsts, mut lasts, mut refs, mut videos, mut audios, mut drafts) =
        (0, 0, 0u32, 0, 0, 0);
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
                let (p, cmds) = inline::parse(text, model)?;
                prompt = Some(p);
                inline = cmds;
            }
            ContentItem::ImageUrl { image_url, role } => {
                let param = format!("content[{i}].image_url.url");
                let info = check_media_url(&image_url.url, &param, model, true)?;
                match role.as_deref() {
                    None => {
                        untyped_images += 1;
                        firsts += 1;
                    }
                    Some("first_frame") => firsts += 1,
                    Some("last_frame") => lasts += 1,
                    Some("reference_image") => refs += 1,
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

    // Image modes are mutually exclusive, and each has fixed counts.
    if refs > 0 && firsts + lasts > 0 {
        return Err(Invalid::new(
            "content",
            "with first/last-frame and reference images",
            "mixes image modes",
            model,
            "either first_frame (+ last_frame) images or reference_image images, not both",
        ));
    }
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
        if let Mode::ReferenceImages(n) = mode
            && n > s.max_reference_images
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
        if drafts > 0 && !s.draft {
            return Err(Invalid::unsupported(
                "content",
                "draft_task",
                model,
                "no draft_task item",
            ));
        }
    }
    // ark-api.md §2.2 ("Limits (2.0 series only)": audio cannot be the only media) and §13
    // ("On 2.0, audio needs an image or video beside it"). No source says it of 2.5 or of
    // models seedq does not know, so there Ark decides.
    let audio_needs_visual = spec.is_some_and(|s| s.family.starts_with("seedance-2.0"));
    if audio_needs_visual && audios > 0 && videos == 0 && firsts + lasts + refs == 0 {
        return Err(Invalid::new(
            "content",
            "with only audio references",
            "is not allowed",
            model,
            "reference audio together with at least one image or video",
        ));
    }

    // Parameters: the top-level field wins over the inline command.
    let resolution_given = req.resolution.clone().or(inline.resolution.clone());
    let draft = req.draft.unwrap_or(false);
    let resolution = match (&resolution_given, spec) {
        (Some(r), _) => r.clone(),
        (None, _) if draft => "480p".to_string(),
        (None, Some(s)) => s.default_resolution.clone(),
        (None, None) => "720p".to_string(),
    };
    let all_resolutions = strings(&["480p", "720p", "1080p", "4k"]);
    let allowed_res = spec.map_or(&all_resolutions, |s| &s.resolutions);
    if !allowed_res.contains(&resolution) {
        return Err(Invalid::not_one_of(
            "resolution",
            &resolution,
            model,
            allowed_res,
        ));
    }
    if let Some(s) = spec
        && matches!(mode, Mode::ReferenceImages(_))
        && s.reference_max_720p
        && resolution == "1080p"
    {
        return Err(Invalid::unsupported(
            "resolution",
            &resolution,
            model,
            "480p or 720p with reference images",
        ));
    }

    let ratio = match (req.ratio.clone().or(inline.ratio.clone()), spec) {
        (Some(r), _) => r,
        (None, Some(s)) if s.adaptive_needs_image => match mode {
            Mode::FirstFrame | Mode::FirstLastFrame => "adaptive".into(),
            _ => "16:9".into(),
        },
        (None, _) => "adaptive".into(),
    };
    let all_ratios = strings(&["16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"]);
    let allowed_ratios = spec.map_or(&all_ratios, |s| &s.ratios);
    if !allowed_ratios.contains(&ratio) {
        return Err(Invalid::not_one_of("ratio", &ratio, model, allowed_ratios));
    }
    if let Some(s) = spec {
        if ratio == "adaptive" && s.adaptive_needs_image && mode == Mode::TextToVideo {
            return Err(Invalid::unsupported(
                "ratio",
                "adaptive",
                model,
                "a concrete ratio for text-to-video (adaptive needs an input image)",
            ));
        }
        if s.frame_modes_need_adaptive
            && matches!(mode, Mode::FirstFrame | Mode::FirstLastFrame)
            && ratio != "adaptive"
        {
            return Err(Invalid::unsupported(
                "ratio",
                &ratio,
                model,
                "adaptive for first-frame and first+last-frame tasks",
            ));
        }
    }
    let concrete_ratio = if ratio == "adaptive" {
        first_image
            .as_ref()
            .map_or("16:9", |i| catalogue::closest_ratio(i.width, i.height))
            .to_string()
    } else {
        ratio.clone()
    };

    let frames = req.frames.or(inline.frames);
    let duration_given = req.duration.or(inline.duration);
    if let Some(f) = frames {
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
            return Err(Invalid::range("duration", d, model, allowed));
        }
        Some(d)
    };
    if let Some(fps) = inline.framespersecond
        && fps != catalogue::FPS
    {
        return Err(Invalid::not_one_of(
            "--fps",
            &fps.to_string(),
            model,
            &strings(&["24"]),
        ));
    }

    let seed = req.seed.or(inline.seed);
    if let Some(v) = seed {
        // ark-api.md §2.1 `seed`: "Not supported on 2.0 per D2" (and §13 for 2.x). The default
        // −1 (random, ark-api.md §2.1 and §7 `--seed`) is what such a model does anyway, and
        // clients such as the `seedance` CLI send it on every create: accepted everywhere.
        if v != DEFAULT_SEED && spec.is_some_and(|s| !s.seed) {
            return Err(Invalid::unsupported(
                "seed",
                v,
                model,
                "no seed, or -1 (random; the model picks its own seed)",
            ));
        }
        // The bound is per model (catalogue `seed_max`; docs/ark-api.md §2.1 and §14).
        let max = spec.map_or(MAX_SEED, |s| s.seed_max);
        if !(-1..=max).contains(&v) {
            return Err(Invalid::range("seed", v, model, format!("-1..={max}")));
        }
    }
    if let Some(cf) = req.camera_fixed.or(inline.camera_fixed) {
        // ark-api.md §2.1 `camera_fixed`: default `false`; "Not supported in reference-image
        // mode or on 2.0". Only `true` asks for something the model lacks; `false` is the
        // documented default and always accepted.
        let ok = !cf
            || (spec.is_none_or(|s| s.camera_fixed) && !matches!(mode, Mode::ReferenceImages(_)));
        if !ok {
            return Err(Invalid::unsupported(
                "camera_fixed",
                cf,
                model,
                "no camera_fixed (leave it empty; never with reference images)",
            ));
        }
    }

    let tier = req.service_tier.as_deref().unwrap_or("default");
    if !["default", "flex"].contains(&tier) {
        return Err(Invalid::not_one_of(
            "service_tier",
            tier,
            model,
            &strings(&["default", "flex"]),
        ));
    }
    let flex = tier == "flex";
    // ark-api.md §2.1 `service_tier`: "Seedance 2.0 series supports **only** `default`" [DOC D2];
    // §13 repeats it. `--flex` sets this field, so the message names both.
    if flex && spec.is_some_and(|s| !s.flex) {
        return Err(Invalid::unsupported(
            "service_tier",
            "flex",
            model,
            format!(
                "default only; {} has no flex tier (drop --flex / service_tier)",
                spec.map_or("this model", |s| s.family.as_str())
            ),
        ));
    }
    let expires_after = req.execution_expires_after.unwrap_or(DEFAULT_EXPIRES_AFTER);
    if !(EXPIRES_RANGE.0..=EXPIRES_RANGE.1).contains(&expires_after) {
        return Err(Invalid::range(
            "execution_expires_after",
            expires_after,
            model,
            "3600..=259200 seconds (1 h to 72 h)",
        ));
    }
    // ark-api.md §2.1 `generate_audio`: "Seedance 2.0 series and 1.5 pro only". A model without
    // audio renders silent video, so `false` asks for what it does anyway: accepted (lenient,
    // no source says Ark rejects it); only `true` asks for a missing feature.
    if let Some(ga) = req.generate_audio
        && ga
        && spec.is_some_and(|s| !s.generate_audio)
    {
        return Err(Invalid::unsupported(
            "generate_audio",
            ga,
            model,
            "no generate_audio, or false (the model renders silent video)",
        ));
    }
    if draft {
        if spec.is_some_and(|s| !s.draft) {
            return Err(Invalid::unsupported("draft", true, model, "draft: false"));
        }
        if resolution != "480p" {
            return Err(Invalid::unsupported(
                "resolution",
                &resolution,
                model,
                "480p for drafts",
            ));
        }
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
    // ark-api.md §2.1 `priority`: "0; range 0–9", "Seedance 2.0 series only", "not allowed
    // with `flex`". The default 0 is accepted on every model and tier.
    if let Some(p) = req.priority {
        if !(0..=9).contains(&p) {
            return Err(Invalid::range("priority", p, model, "0..=9"));
        }
        if p != DEFAULT_PRIORITY && spec.is_some_and(|s| !s.priority) {
            return Err(Invalid::unsupported(
                "priority",
                p,
                model,
                "no priority, or 0 (the default)",
            ));
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
    // ark-api.md §2.1 `tools`: "Seedance 2.0 series only". An empty list asks for nothing.
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
    // ark-api.md §13: "`output_format`: `mp4` everywhere, `mov` on 2.5 only" (catalogue data).
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
        check_omni_task_type(t, req, spec, videos, &ratio)?;
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
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// `omni_reference_task_type` (ark-api.md §2.1: a Go-only field added 2026-08; §13: its values
/// on 2.5). The sources are thin, so only what they state is enforced: a known value (the
/// union of both sources), on a model that takes omni references (2.x; §13), and for
/// `edit`/`extend` a `reference_video` and `ratio: adaptive` (§13).
fn check_omni_task_type(
    t: &str,
    req: &CreateTaskRequest,
    spec: Option<&ModelSpec>,
    videos: u32,
    ratio: &str,
) -> Result<(), Invalid> {
    let model = req.model.as_str();
    if !OMNI_TASK_TYPES.contains(&t) {
        return Err(Invalid::not_one_of(
            "omni_reference_task_type",
            t,
            model,
            &strings(&OMNI_TASK_TYPES),
        ));
    }
    if spec.is_some_and(|s| s.max_reference_videos == 0) {
        return Err(Invalid::unsupported(
            "omni_reference_task_type",
            t,
            model,
            "no omni_reference_task_type (omni references are a Seedance 2.x feature)",
        ));
    }
    if matches!(t, "edit" | "extend") && (videos == 0 || ratio != "adaptive") {
        return Err(Invalid::new(
            "omni_reference_task_type",
            t,
            "needs a reference video and ratio adaptive",
            model,
            "a reference_video item and ratio adaptive for edit/extend",
        ));
    }
    Ok(())
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
        let info = image::check(&bytes).map_err(|p| image_invalid(param, model, &p))?;
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
    if url.starts_with("asset://") || url.starts_with("http://") || url.starts_with("https://") {
        return Ok(None);
    }
    Err(Invalid::malformed(
        param,
        &truncate(url, 60),
        model,
        "an http(s) URL, a data: URL or an asset:// id",
    ))
}

fn image_invalid(param: &str, model: &str, p: &image::ImageProblem) -> Invalid {
    let (value, problem, allowed) = p.describe();
    Invalid::new(param, value, problem, model, allowed)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
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
}

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
    // Ark takes both and lets `frames` win (ark-api.md §2.1 `frames`: "Overrides `duration`"),
    // so the shared `check` accepts both. A job spec is seedq's own input, documented as
    // duration *or* frames: giving both is a mistake we can name before anything is stored
    // (issue 12 §5).
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
        (Some(true), _) => Some("flex".to_string()),
        (_, t) => t.clone(),
    };
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
    };

    // Validate what the user wrote first, so errors talk about their values.
    let effective = check(&request, catalogue).map_err(remote_priority_names)?;
    normalise(&mut request);
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
    })
}

/// Removes fields a model does not take when they only repeat the documented default.
///
/// `check` accepts them (Ark's documented defaults, ark-api.md §2.1; other clients send them),
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
/// so an error about the wire field must name the spec's field (issue 12 §5).
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
    for item in &mut req.content {
        if let ContentItem::Text { text } = item
            && let Ok((prompt, cmds)) = inline::parse(text, &req.model)
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
