//! Ark's create-time rules as the simulator reads them.
//!
//! This is the simulator's own reading, written apart from seedq's validator
//! (`seedq_ark::request::check`) on purpose: if the two shared one function, a wrong rule
//! would pass on both sides and every test would agree with it. Both are judged by the golden
//! corpus (`tests/golden/`, checked by `tests/it/golden.rs`), and `tests.rs` runs thousands of
//! generated bodies through both and fails on any disagreement, so a rule changed on one side
//! only shows at once.
//!
//! What is shared is data, not logic: the model rows of `catalogue/models.toml` (each row
//! names its source) and the wire types. The reading is in three steps:
//! 1. [`read_content`] walks `content` and refuses items Ark refuses on their own;
//! 2. [`Ask::resolve`] fills in the defaults Ark documents;
//! 3. [`RULES`], an ordered table, each rule citing where it comes from. The first rule a
//!    request breaks is the answer, as Ark names one parameter per error.
//!
//! Where no source decides, the simulator accepts and lets the request run: a refused create
//! costs the user nothing, an accepted one that real Ark refuses shows up in the corpus.

use base64::Engine;

use seedq_ark::catalogue::{self, Catalogue, ModelSpec};
use seedq_ark::wire::{ContentItem, CreateTaskRequest};

/// `execution_expires_after` bounds, seconds (docs/ark-api.md §2.1).
const EXPIRES: (i64, i64) = (3600, 259_200);
/// Default `execution_expires_after`: 48 h (docs/ark-api.md §2.1).
const EXPIRES_DEFAULT: i64 = 172_800;
/// Duration when neither the body nor the model row says (docs/ark-api.md §2.1).
pub const DURATION_DEFAULT: i64 = 5;
/// Largest seed for a model without its own bound (docs/ark-api.md §2.1: `[-1, 2^32-1]`).
const SEED_MAX: i64 = 4_294_967_295;
/// Input image bounds (docs/ark-api.md §8): under 30 MB, each side in (300, 6000) pixels,
/// width/height in (0.4, 2.5), all exclusive.
const IMAGE_BYTES: usize = 30 * 1024 * 1024;
const IMAGE_SIDE: (u32, u32) = (300, 6000);
const IMAGE_ASPECT: (f64, f64) = (0.4, 2.5);

/// Ark's refusal of a create: the error code, the parameter it names and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub param: String,
    pub message: String,
}

impl Refusal {
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: "InvalidParameter",
            param: param.into(),
            message: message.into(),
        }
    }

    fn missing(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: "MissingParameter",
            ..Self::invalid(param, message)
        }
    }

    fn coded(code: &'static str, param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            ..Self::invalid(param, message)
        }
    }
}

/// How the images of a request are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Text,
    FirstFrame,
    FirstLast,
    References,
}

/// What an accepted request runs with, defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub resolution: String,
    /// The ratio of the output: `adaptive` resolved from the first image when it can be read.
    pub concrete_ratio: String,
    /// Exactly one of `duration` and `frames` is set.
    pub duration: Option<i64>,
    pub frames: Option<i64>,
    pub seed: Option<i64>,
    pub flex: bool,
    pub expires_after: i64,
    /// Output pixels, when the model's table has them.
    pub size: Option<(u32, u32)>,
    /// `reference_video` items.
    pub video_inputs: u32,
    /// The prompt without its inline commands.
    pub prompt: String,
    /// How Ark fails the task after creating it, when the prompt makes it read the task as an
    /// edit or an extension whose rules the request breaks: (code, message).
    pub task_type_failure: Option<(String, String)>,
}

/// Inline text commands (docs/reference/tutorial.txt:1425-1434, "设置输出视频格式", and the
/// parameter table after it): long and short names. Only these are taken out of the prompt; any other `--word` is prompt text.
const INLINE: [(&str, &str); 8] = [
    ("resolution", "rs"),
    ("ratio", "rt"),
    ("duration", "dur"),
    ("frames", "frames"),
    ("framespersecond", "fps"),
    ("seed", "seed"),
    ("camerafixed", "cf"),
    ("watermark", "wm"),
];

/// Values given as inline commands, raw.
#[derive(Clone, Debug, Default)]
struct Inline {
    resolution: Option<String>,
    ratio: Option<String>,
    duration: Option<i64>,
    frames: Option<i64>,
    seed: Option<i64>,
}

/// Takes the inline commands out of a text item. Ark checks only `--resolution` and
/// `--duration` there, naming `contents[N].text.<name>` (tests/golden live-notes-sd25ext-002/
/// 004, live-notes-adcreative-024, live); a command whose value does not parse is left in the
/// prompt and sets nothing (live-notes-adcreative-022/023, live).
fn read_inline(text: &str, index: usize) -> Result<(String, Inline), Refusal> {
    let mut out = Inline::default();
    let mut kept: Vec<&str> = Vec::new();
    // Each piece is the whitespace before a token plus the token, so the prompt keeps its own
    // line breaks.
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_token = false;
    let mut token_start = 0;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_token {
                pieces.push((&text[start..token_start], &text[token_start..i]));
                start = i;
                in_token = false;
            }
        } else if !in_token {
            token_start = i;
            in_token = true;
        }
    }
    if in_token {
        pieces.push((&text[start..token_start], &text[token_start..]));
    }
    let mut i = 0;
    while i < pieces.len() {
        let (gap, tok) = pieces[i];
        let name = tok.strip_prefix("--").and_then(|f| {
            INLINE
                .iter()
                .find(|(long, short)| f == *long || f == *short)
                .map(|(long, _)| *long)
        });
        let Some(name) = name else {
            kept.push(gap);
            kept.push(tok);
            i += 1;
            continue;
        };
        let param = format!("contents[{index}].text.{name}");
        let checked = name == "resolution" || name == "duration";
        // A value is the next token unless it is another command (a negative number is a
        // value: `--seed -1`).
        let value = pieces
            .get(i + 1)
            .map(|(_, v)| *v)
            .filter(|v| !v.starts_with("--") || v.parse::<i64>().is_ok());
        let Some(value) = value else {
            if checked {
                return Err(Refusal::missing(param, "the command has no value"));
            }
            kept.push(gap);
            kept.push(tok);
            i += 1;
            continue;
        };
        let int = value.parse::<i64>().ok();
        let bool_ok = value == "true" || value == "false";
        let used = match name {
            "resolution" => {
                out.resolution = Some(value.to_string());
                true
            }
            "duration" => {
                let Some(d) = int else {
                    return Err(Refusal::invalid(
                        param,
                        format!("{value} is not a whole number of seconds"),
                    ));
                };
                out.duration = Some(d);
                true
            }
            "ratio" => {
                out.ratio = Some(value.to_string());
                true
            }
            "frames" => {
                out.frames = int;
                int.is_some()
            }
            "seed" => {
                out.seed = int;
                int.is_some()
            }
            "framespersecond" => int.is_some(),
            _ => bool_ok,
        };
        if used {
            i += 2;
        } else {
            kept.push(gap);
            kept.push(tok);
            i += 1;
        }
    }
    Ok((kept.concat().trim().to_string(), out))
}

/// The bytes of a well-formed `data:image/…;base64,` URL.
pub fn data_url_bytes(url: &str) -> Option<Vec<u8>> {
    let (meta, payload) = url.strip_prefix("data:")?.split_once(',')?;
    meta.strip_suffix(";base64")?.strip_prefix("image/")?;
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .ok()
}

/// A `data:` image read far enough to judge it: `None` when its bytes are no image format the
/// simulator knows (Ark's answer to those is not shown by any source, so they pass).
fn read_data_image(url: &str, param: &str) -> Result<Option<(u32, u32)>, Refusal> {
    let bad = |why: &str| {
        Refusal::invalid(
            param,
            format!("the data URL is malformed ({why}): data:image/<lowercase format>;base64,…"),
        )
    };
    let rest = &url["data:".len()..];
    let (meta, payload) = rest.split_once(',').ok_or_else(|| bad("no comma"))?;
    let fmt = meta
        .strip_suffix(";base64")
        .ok_or_else(|| bad("not base64"))?
        .strip_prefix("image/")
        .ok_or_else(|| bad("not an image type"))?;
    // "`<fmt>` must be lowercase" (docs/ark-api.md §8).
    if fmt.is_empty() || fmt.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("the format must be lowercase"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|_| bad("bad base64"))?;
    if bytes.len() >= IMAGE_BYTES {
        return Err(Refusal::invalid(
            param,
            format!("the image is {} bytes: under 30 MB", bytes.len()),
        ));
    }
    let kind = match imagesize::image_type(&bytes) {
        Ok(imagesize::ImageType::Jpeg) => "jpeg",
        Ok(imagesize::ImageType::Png) => "png",
        Ok(imagesize::ImageType::Webp) => "webp",
        Ok(imagesize::ImageType::Bmp) => "bmp",
        Ok(imagesize::ImageType::Tiff) => "tiff",
        Ok(imagesize::ImageType::Gif) => "gif",
        _ => return Ok(None),
    };
    let Ok(size) = imagesize::blob_size(&bytes) else {
        return Ok(None);
    };
    let w = u32::try_from(size.width).unwrap_or(u32::MAX);
    let h = u32::try_from(size.height).unwrap_or(u32::MAX);
    let side = |s: u32| s > IMAGE_SIDE.0 && s < IMAGE_SIDE.1;
    // A readable image out of bounds: `InvalidParameter.HeightTooSmall` and kin
    // (tests/golden dramaclaw-002); the simulator answers `InvalidParameter` naming the item.
    if !side(w) || !side(h) {
        return Err(Refusal::invalid(
            param,
            format!("the image is {w}x{h}: each side between 300 and 6000 pixels"),
        ));
    }
    let aspect = f64::from(w) / f64::from(h);
    if aspect <= IMAGE_ASPECT.0 || aspect >= IMAGE_ASPECT.1 {
        return Err(Refusal::invalid(
            param,
            format!("the image's width/height is {aspect:.3}: between 0.4 and 2.5"),
        ));
    }
    if fmt != kind && !(fmt == "jpg" && kind == "jpeg") {
        return Err(Refusal::invalid(
            param,
            format!("the data URL says image/{fmt} but holds {kind}"),
        ));
    }
    Ok(Some((w, h)))
}

/// The media of one request, counted.
#[derive(Clone, Debug, Default)]
struct Content {
    prompt: Option<String>,
    text_index: usize,
    inline: Inline,
    first: u32,
    last: u32,
    reference_images: u32,
    no_role: u32,
    videos: u32,
    audios: u32,
    drafts: u32,
    /// Pixels of the first image that is not a last frame, when readable.
    first_image: Option<(u32, u32)>,
}

/// A media URL Ark refuses on sight: empty, or a `data:` URL for a video or audio (docs/ark-
/// api.md §2.2: those take http(s) URLs and `asset://` ids). Any other form is Ark's to judge
/// (the Python SDK's sample sends a `${YOUR_IMAGE_URL}` placeholder, tests/golden
/// volcengine-python-sdk-001).
fn media_url(url: &str, param: String, image: bool) -> Result<Option<(u32, u32)>, Refusal> {
    if url.is_empty() {
        return Err(Refusal::missing(param, "a media item needs a URL"));
    }
    if !url.starts_with("data:") {
        return Ok(None);
    }
    if !image {
        return Err(Refusal::invalid(
            param,
            "a data: URL is for images only: give an http(s) URL or an asset:// id",
        ));
    }
    read_data_image(url, &param)
}

/// A role that is not the one the item type takes (tests/golden tanstack-ai-047, live:
/// "invalid role specified").
fn role_is(i: usize, role: Option<&str>, allowed: &[&str]) -> Result<(), Refusal> {
    match role {
        Some(r) if !allowed.contains(&r) => Err(Refusal::invalid(
            format!("content[{i}].role"),
            format!("role {r} is invalid: one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// Step 1: the content items, in order; the first bad one is the answer.
fn read_content(items: &[ContentItem]) -> Result<Content, Refusal> {
    let mut c = Content::default();
    for (i, item) in items.iter().enumerate() {
        match item {
            ContentItem::Text { text } => {
                if c.prompt.is_some() {
                    return Err(Refusal::invalid(
                        format!("content[{i}]"),
                        "only one text item is allowed",
                    ));
                }
                let (prompt, inline) = read_inline(text, i)?;
                c.prompt = Some(prompt);
                c.inline = inline;
                c.text_index = i;
            }
            ContentItem::ImageUrl { image_url, role } => {
                let pixels =
                    media_url(&image_url.url, format!("content[{i}].image_url.url"), true)?;
                role_is(
                    i,
                    role.as_deref(),
                    &["first_frame", "last_frame", "reference_image"],
                )?;
                match role.as_deref() {
                    Some("first_frame") => c.first += 1,
                    Some("last_frame") => c.last += 1,
                    Some(_) => c.reference_images += 1,
                    None => c.no_role += 1,
                }
                if c.first_image.is_none() && role.as_deref() != Some("last_frame") {
                    c.first_image = pixels;
                }
            }
            ContentItem::VideoUrl { video_url, role } => {
                role_is(i, role.as_deref(), &["reference_video"])?;
                media_url(&video_url.url, format!("content[{i}].video_url.url"), false)?;
                c.videos += 1;
            }
            ContentItem::AudioUrl { audio_url, role } => {
                role_is(i, role.as_deref(), &["reference_audio"])?;
                media_url(&audio_url.url, format!("content[{i}].audio_url.url"), false)?;
                c.audios += 1;
            }
            ContentItem::DraftTask { draft_task } => {
                if draft_task.id.is_empty() {
                    return Err(Refusal::missing(
                        format!("content[{i}].draft_task.id"),
                        "a draft task item needs the draft's task id",
                    ));
                }
                c.drafts += 1;
            }
        }
    }
    Ok(c)
}

/// One request with its defaults filled in: what the rules look at.
struct Ask<'a> {
    req: &'a CreateTaskRequest,
    spec: Option<&'a ModelSpec>,
    c: Content,
    mode: Mode,
    /// The family, `""` for a model the catalogue does not know.
    family: &'a str,
    resolution: String,
    resolution_param: String,
    /// The ratio the body or an inline command gives, if any.
    ratio_given: Option<String>,
    /// The ratio asked for or defaulted; may be `adaptive`.
    ratio: String,
    /// `frames` from the body, or an inline `--frames` that fits.
    frames: Option<i64>,
    duration_given: Option<i64>,
    duration_param: String,
    duration: i64,
    flex: bool,
    tier_known: bool,
    expires_after: i64,
    draft: bool,
}

impl<'a> Ask<'a> {
    /// Step 2: Ark's documented defaults.
    fn resolve(
        req: &'a CreateTaskRequest,
        spec: Option<&'a ModelSpec>,
        mut c: Content,
    ) -> Result<Self, Refusal> {
        // A roleless image is the first frame (docs/ark-api.md §2.2); beside reference media it
        // is read as one more reference (tests/golden modelark-mcp-004: no answer shown, so
        // the lenient reading).
        if c.reference_images + c.videos + c.audios > 0 {
            c.reference_images += c.no_role;
        } else {
            c.first += c.no_role;
        }
        // "first/last frame content cannot be mixed with reference media content"
        // (tests/golden tanstack-ai-046, modelark-mcp-005, live).
        if c.first + c.last > 0 && c.reference_images + c.videos + c.audios > 0 {
            return Err(Refusal::invalid(
                "content",
                "first/last frame images cannot be mixed with reference images, videos or audios",
            ));
        }
        // "expected at most one first frame image content but got 2 instead"; a last frame
        // needs a first (docs/ark-api.md §2.2; tests/golden live-notes-byteplus25-029/031).
        if c.first > 1 || c.last > 1 || (c.last == 1 && c.first == 0) {
            return Err(Refusal::invalid(
                "content",
                format!(
                    "expected at most one first frame image and one last frame image (with a first frame), got {} and {}",
                    c.first, c.last
                ),
            ));
        }
        let mode = if c.reference_images > 0 {
            Mode::References
        } else if c.last == 1 {
            Mode::FirstLast
        } else if c.first == 1 {
            Mode::FirstFrame
        } else {
            Mode::Text
        };
        let prompt_empty = c.prompt.as_deref().is_none_or(|p| p.trim().is_empty());
        if mode == Mode::Text && prompt_empty && c.drafts == 0 && c.videos == 0 {
            return Err(Refusal::missing(
                "content[].text",
                "a text-to-video request needs a prompt",
            ));
        }
        let family = spec.map_or("", |s| s.family.as_str());
        let draft = req.draft == Some(true);
        let text_param = |name: &str| format!("contents[{}].text.{name}", c.text_index);

        // Top-level fields win over inline commands (docs/ark-api.md §2.1 and §7: the newer
        // docs prefer the fields; the precedence itself is not documented, so this is the
        // reading that keeps an explicit field). A draft renders at 480p (§2.1 `draft`).
        let (resolution, resolution_param) = match (&req.resolution, &c.inline.resolution) {
            (Some(r), _) => (r.clone(), "resolution".to_string()),
            (None, Some(r)) => (r.clone(), text_param("resolution")),
            (None, None) => {
                let r = match spec {
                    _ if draft => "480p",
                    Some(s) => s.default_resolution.as_str(),
                    None => "720p",
                };
                (r.to_string(), "resolution".to_string())
            }
        };
        // `4K`, `1080P` were accepted live (tests/golden tanstack-ai-003/004, new-api-009).
        let resolution = resolution.to_lowercase();

        // An inline ratio that does not fit is swallowed like other inline values.
        let inline_ratio = c
            .inline
            .ratio
            .clone()
            .filter(|r| ratio_refusal(r, spec, mode).is_none());
        let ratio_given = req.ratio.clone().or(inline_ratio);
        // 1.0 defaults to 16:9 without an input frame and to adaptive with one; newer models
        // to adaptive (docs/ark-api.md §2.1 `ratio` defaults; catalogue `adaptive_needs_image`).
        let ratio = ratio_given.clone().unwrap_or_else(|| {
            let frame_mode = matches!(mode, Mode::FirstFrame | Mode::FirstLast);
            if spec.is_some_and(|s| s.adaptive_needs_image) && !frame_mode {
                "16:9".into()
            } else {
                "adaptive".into()
            }
        });

        let frames_ok = |f: i64| (29..=289).contains(&f) && (f - 25) % 4 == 0;
        let inline_frames = c
            .inline
            .frames
            .filter(|f| frames_ok(*f) && spec.is_none_or(|s| s.frames));
        let frames = req.frames.or(inline_frames);
        let (duration_given, duration_param) = match (req.duration, c.inline.duration) {
            (Some(d), _) => (Some(d), "duration".to_string()),
            (None, Some(d)) => (Some(d), text_param("duration")),
            (None, None) => (None, "duration".to_string()),
        };
        let duration =
            duration_given.unwrap_or(spec.map_or(DURATION_DEFAULT, |s| s.default_duration));

        let tier = req.service_tier.as_deref().unwrap_or("default");
        Ok(Self {
            req,
            spec,
            c,
            mode,
            family,
            resolution,
            resolution_param,
            ratio_given,
            ratio,
            frames,
            duration_given,
            duration_param,
            duration,
            flex: tier == "flex",
            tier_known: matches!(tier, "default" | "flex"),
            expires_after: req.execution_expires_after.unwrap_or(EXPIRES_DEFAULT),
            draft,
        })
    }

    fn model(&self) -> &str {
        &self.req.model
    }

    fn is_2x(&self) -> bool {
        self.family.starts_with("seedance-2")
    }
}

/// Why a ratio does not fit the model and mode (model-dependent, so nothing for an unknown
/// model).
fn ratio_refusal(ratio: &str, spec: Option<&ModelSpec>, mode: Mode) -> Option<Refusal> {
    let s = spec?;
    if !s.ratios.iter().any(|r| r == ratio) {
        return Some(Refusal::invalid(
            "ratio",
            format!("ratio {ratio} is not one of {}", s.ratios.join(", ")),
        ));
    }
    // 1.0 needs an input image for `adaptive`: refused live for text-to-video on 1.0 pro
    // (tests/golden tanstack-ai-039/040, vercel-ai-004); "参考图场景不支持" (tutorial-029).
    if ratio == "adaptive"
        && s.adaptive_needs_image
        && matches!(mode, Mode::Text | Mode::References)
    {
        return Some(Refusal::invalid(
            "ratio",
            "adaptive needs an input frame on this model",
        ));
    }
    // 2.5 frame tasks take the image's ratio: an explicit one is refused at create with
    // `InvalidParameter.TaskTypeConstraint` (tests/golden comfyui-pr15395-001/002,
    // byteplus-comfyui-007, live).
    if s.frame_modes_need_adaptive
        && matches!(mode, Mode::FirstFrame | Mode::FirstLast)
        && ratio != "adaptive"
    {
        return Some(Refusal::coded(
            TASK_TYPE_CONSTRAINT,
            "ratio",
            format!("first-frame tasks take the image's ratio: adaptive, not {ratio}"),
        ));
    }
    None
}

/// Ark's code for a request that breaks its task type's rules (docs/ark-api.md §14).
const TASK_TYPE_CONSTRAINT: &str = "InvalidParameter.TaskTypeConstraint";
/// Ark's code for a declared task type the prompt contradicts (docs/ark-api.md §14).
const TASK_TYPE_MISMATCH: &str = "InvalidParameter.TaskTypeMismatch";

/// One create-time rule: its name, where it comes from, and the check.
struct Rule {
    name: &'static str,
    check: fn(&Ask) -> Option<Refusal>,
}

/// Step 3, in the order Ark is read to check them. Each rule cites its source inside.
const RULES: &[Rule] = &[
    Rule {
        name: "mode supported",
        check: mode_supported,
    },
    Rule {
        name: "media counts",
        check: media_counts,
    },
    Rule {
        name: "audio needs a visual reference",
        check: audio_needs_visual,
    },
    Rule {
        name: "draft final resolution",
        check: draft_final_resolution,
    },
    Rule {
        name: "resolution",
        check: resolution,
    },
    Rule {
        name: "ratio",
        check: |a| ratio_refusal(&a.ratio, a.spec, a.mode),
    },
    Rule {
        name: "frames",
        check: frames,
    },
    Rule {
        name: "duration",
        check: duration,
    },
    Rule {
        name: "seed",
        check: seed,
    },
    Rule {
        name: "camera_fixed",
        check: camera_fixed,
    },
    Rule {
        name: "service_tier",
        check: service_tier,
    },
    Rule {
        name: "execution_expires_after",
        check: expires_after,
    },
    Rule {
        name: "draft",
        check: draft,
    },
    Rule {
        name: "priority",
        check: priority,
    },
    Rule {
        name: "tools",
        check: tools,
    },
    Rule {
        name: "output_format",
        check: output_format,
    },
    Rule {
        name: "omni_reference_task_type",
        check: omni_task_type,
    },
    Rule {
        name: "callback_url",
        check: callback_url,
    },
];

/// The tutorial's model table (tests/golden tutorial-034..036) and the live "task_type r2v
/// does not support model" (tanstack-ai-042/043).
fn mode_supported(a: &Ask) -> Option<Refusal> {
    let s = a.spec?;
    let ok = match a.mode {
        Mode::Text => s.text_to_video || a.c.videos > 0 || a.c.drafts > 0,
        Mode::FirstFrame => s.first_frame,
        Mode::FirstLast => s.first_last_frame,
        Mode::References => s.max_reference_images > 0,
    };
    (!ok).then(|| {
        Refusal::invalid(
            "content",
            format!("{} does not support {:?} input", a.model(), a.mode),
        )
    })
}

/// 1–4 reference images on 1.0 lite-i2v (tests/golden tutorial-037/038); on 2.x Ark counts
/// no images at create (6 passed on 2.0 and 64 on 2.5: tanstack-ai-048,
/// live-notes-byteplus25-033). Video and audio counts per the catalogue (docs/ark-api.md §13).
fn media_counts(a: &Ask) -> Option<Refusal> {
    let s = a.spec?;
    let too_many = |what: &str, n: u32, max: u32| {
        Refusal::invalid(
            "content",
            format!("{n} {what}: at most {max} on {}", a.model()),
        )
    };
    if a.mode == Mode::References && !a.is_2x() && a.c.reference_images > s.max_reference_images {
        return Some(too_many(
            "reference images",
            a.c.reference_images,
            s.max_reference_images,
        ));
    }
    if a.c.videos > s.max_reference_videos {
        return Some(too_many(
            "reference videos",
            a.c.videos,
            s.max_reference_videos,
        ));
    }
    (a.c.audios > s.max_reference_audios)
        .then(|| too_many("reference audios", a.c.audios, s.max_reference_audios))
}

/// "reference_audio cannot be the only reference input" on 2.0 (tests/golden tanstack-ai-045,
/// vercel-ai-027..029, live; docs/ark-api.md §2.2). No source says it of other families.
fn audio_needs_visual(a: &Ask) -> Option<Refusal> {
    let only_audio =
        a.c.audios > 0 && a.c.videos == 0 && a.c.first + a.c.last + a.c.reference_images == 0;
    (a.family.starts_with("seedance-2.0") && only_audio).then(|| {
        Refusal::invalid(
            "content",
            "reference_audio cannot be the only reference input",
        )
    })
}

/// The final of a 2.5 draft renders at the model's top resolution only:
/// `InvalidResolutionParameter` otherwise (tests/golden byteplus-comfyui-002..005, live).
fn draft_final_resolution(a: &Ask) -> Option<Refusal> {
    let s = a.spec?;
    let top = s.resolutions.last()?;
    let applies =
        a.c.drafts > 0 && a.family.starts_with("seedance-2.5") && a.req.resolution.is_some();
    (applies && &a.resolution != top).then(|| {
        Refusal::coded(
            "InvalidResolutionParameter",
            "resolution",
            format!(
                "the final of a draft renders at {top}, not {}",
                a.resolution
            ),
        )
    })
}

/// The model's resolutions (catalogue, from the tutorial's parameter table and docs/ark-api.md
/// §13); 1080p "参考图场景不支持" on 1.0 lite (tests/golden tutorial-028).
fn resolution(a: &Ask) -> Option<Refusal> {
    let known = ["480p", "720p", "1080p", "4k"];
    let ok = match a.spec {
        Some(s) => s.resolutions.contains(&a.resolution),
        None => known.contains(&a.resolution.as_str()),
    };
    if !ok {
        return Some(Refusal::invalid(
            &a.resolution_param,
            format!(
                "resolution {} is not supported by {}",
                a.resolution,
                a.model()
            ),
        ));
    }
    let s = a.spec?;
    (a.mode == Mode::References && s.reference_max_720p && a.resolution == "1080p").then(|| {
        Refusal::invalid(
            &a.resolution_param,
            "1080p is not supported with reference images",
        )
    })
}

/// `frames` on 1.0 pro and pro-fast only (tests/golden tanstack-ai-018..021, live), on the
/// 25 + 4n grid within [29, 289] (tutorial-020..025).
fn frames(a: &Ask) -> Option<Refusal> {
    let f = a.req.frames?;
    if a.spec.is_some_and(|s| !s.frames) {
        return Some(Refusal::invalid(
            "frames",
            format!("frames is not supported by {}: give duration", a.model()),
        ));
    }
    let on_grid = (29..=289).contains(&f) && (f - 25) % 4 == 0;
    (!on_grid)
        .then(|| Refusal::invalid("frames", format!("frames {f} is not 25 + 4n in [29, 289]")))
}

/// The model's duration range, `-1` where the model chooses (catalogue; docs/ark-api.md §2.1,
/// §14). Not judged when `frames` sets the length.
fn duration(a: &Ask) -> Option<Refusal> {
    if a.frames.is_some() {
        return None;
    }
    let (min, max, auto) = a.spec.map_or((1, 30, true), |s| {
        (s.duration_min, s.duration_max, s.duration_auto)
    });
    let d = a.duration;
    let ok = (min..=max).contains(&d) || (auto && d == -1);
    (!ok).then(|| {
        Refusal::invalid(
            &a.duration_param,
            format!("duration {d} is out of range: {min}..={max}"),
        )
    })
}

/// Every model takes `seed` (tests/golden tanstack-ai-022/023, live), in its own range
/// (catalogue `seed_max`; tanstack-ai-024, live).
fn seed(a: &Ask) -> Option<Refusal> {
    let v = a.req.seed?;
    let max = a.spec.map_or(SEED_MAX, |s| s.seed_max);
    (!(-1..=max).contains(&v))
        .then(|| Refusal::invalid("seed", format!("seed {v} is out of range: -1..={max}")))
}

/// `camera_fixed: true` needs a model that has it and no reference images (tests/golden
/// tutorial-032/033, tanstack-ai-025/027). `false` is the documented default and accepted
/// (docs/ark-api.md §2.1; tanstack-ai-028 overridden, tests/golden/verdict-overrides.json).
fn camera_fixed(a: &Ask) -> Option<Refusal> {
    if a.req.camera_fixed != Some(true) {
        return None;
    }
    let has = a.spec.is_none_or(|s| s.camera_fixed);
    (!has || a.mode == Mode::References).then(|| {
        Refusal::invalid(
            "camera_fixed",
            "camera_fixed is not supported here (never with reference images)",
        )
    })
}

/// `default` or `flex` (docs/ark-api.md §2.1); flex only where the model has it (tanstack-ai-
/// 035, live). `default` is always accepted (tanstack-ai-036 overridden).
fn service_tier(a: &Ask) -> Option<Refusal> {
    if !a.tier_known {
        return Some(Refusal::invalid(
            "service_tier",
            format!(
                "service_tier {} is not one of default, flex",
                a.req.service_tier.as_deref().unwrap_or_default()
            ),
        ));
    }
    (a.flex && a.spec.is_some_and(|s| !s.flex))
        .then(|| Refusal::invalid("service_tier", format!("{} has no flex tier", a.model())))
}

/// [3600, 259200] seconds (docs/ark-api.md §2.1; 1800 refused on 1.0 pro, tanstack-ai-038);
/// 2.x has no floor (1800 accepted on 2.0, tanstack-ai-037, live).
fn expires_after(a: &Ask) -> Option<Refusal> {
    let floor = if a.is_2x() { 1 } else { EXPIRES.0 };
    let v = a.expires_after;
    (!(floor..=EXPIRES.1).contains(&v)).then(|| {
        Refusal::invalid(
            "execution_expires_after",
            format!("{v} is out of range: {floor}..={}", EXPIRES.1),
        )
    })
}

/// `draft: true` on a model with drafts (tanstack-ai-013/014, live), at 480p, without flex or
/// `return_last_frame` (docs/ark-api.md §2.1 `draft`).
fn draft(a: &Ask) -> Option<Refusal> {
    if !a.draft {
        return None;
    }
    if a.spec.is_some_and(|s| !s.draft) {
        return Some(Refusal::invalid(
            "draft",
            "the specified parameter `draft` is not supported: must be empty",
        ));
    }
    if a.resolution != "480p" {
        return Some(Refusal::invalid(
            &a.resolution_param,
            format!("a draft renders at 480p, not {}", a.resolution),
        ));
    }
    (a.flex || a.req.return_last_frame == Some(true))
        .then(|| Refusal::invalid("draft", "a draft takes neither flex nor return_last_frame"))
}

/// 0–9 (docs/ark-api.md §2.1); 1.5 pro refuses a set priority (tanstack-ai-031..033) but not
/// the documented default 0 (new-api-005); not with flex (docs/ark-api.md §2.1).
fn priority(a: &Ask) -> Option<Refusal> {
    let p = a.req.priority?;
    if a.family == "seedance-1.5-pro" && p != 0 {
        return Some(Refusal::invalid(
            "priority",
            "priority is not supported by 1.5 pro",
        ));
    }
    if !(0..=9).contains(&p) {
        return Some(Refusal::invalid(
            "priority",
            format!("priority {p} is out of range: 0..=9"),
        ));
    }
    (p != 0 && a.flex).then(|| Refusal::invalid("priority", "no priority on the flex tier"))
}

/// `tools`: "Seedance 2.0 series only", `web_search` (docs/ark-api.md §2.1). An empty list asks
/// for nothing.
fn tools(a: &Ask) -> Option<Refusal> {
    let tools = a.req.tools.as_ref().filter(|t| !t.is_empty())?;
    if a.spec.is_some_and(|s| !s.tools) {
        return Some(Refusal::invalid(
            "tools",
            format!("{} takes no tools", a.model()),
        ));
    }
    let bad = tools.iter().find(|t| t.kind != "web_search")?;
    Some(Refusal::invalid(
        "tools[].type",
        format!("tool type {} is not one of web_search", bad.kind),
    ))
}

/// `mp4` everywhere, `mov` on 2.5 (docs/ark-api.md §13; catalogue `output_formats`).
fn output_format(a: &Ask) -> Option<Refusal> {
    let (f, s) = (a.req.output_format.as_ref()?, a.spec?);
    (!s.output_formats.contains(f)).then(|| {
        Refusal::invalid(
            "output_format",
            format!(
                "output_format {f} is not one of {}",
                s.output_formats.join(", ")
            ),
        )
    })
}

/// `omni_reference_task_type` (docs/ark-api.md §2.1, §13, §14): only on models with omni
/// references; `edit` and `extend` need a reference video and `ratio: adaptive`, `edit` also
/// `duration: -1`, refused with `InvalidParameter.TaskTypeConstraint`. Other values pass
/// (clients send `edit_video`, `first_last_frame`…; no source shows the answer).
fn omni_task_type(a: &Ask) -> Option<Refusal> {
    let t = a.req.omni_reference_task_type.as_deref()?;
    if a.spec.is_some_and(|s| s.max_reference_videos == 0) {
        return Some(Refusal::invalid(
            "omni_reference_task_type",
            format!("{} takes no omni references", a.model()),
        ));
    }
    if t != "edit" && t != "extend" {
        return None;
    }
    let broken = |param: &str, what: String| {
        Some(Refusal::coded(
            TASK_TYPE_CONSTRAINT,
            param,
            format!("omni_reference_task_type {t} needs {what}"),
        ))
    };
    if a.c.videos == 0 {
        return broken("content", "a reference_video item".into());
    }
    if let Some(r) = a.ratio_given.as_deref().filter(|r| *r != "adaptive") {
        return broken("ratio", format!("ratio adaptive, not {r}"));
    }
    match a.duration_given {
        Some(d) if t == "edit" && d != -1 => broken("duration", format!("duration -1, not {d}")),
        _ => None,
    }
}

/// An http(s) URL (docs/ark-api.md §2.1 `callback_url`).
fn callback_url(a: &Ask) -> Option<Refusal> {
    let cb = a.req.callback_url.as_deref()?;
    let ok = url::Url::parse(cb).is_ok_and(|u| u.scheme() == "http" || u.scheme() == "https");
    (!ok).then(|| Refusal::invalid("callback_url", format!("{cb} is not an http(s) URL")))
}

/// Prompt words that make the simulator read a task with a reference video as an edit or an
/// extension. Ark's classifier is not published; these come from the prompts of the corpus'
/// failed tasks (tests/golden live-notes-sd25ext-008, comfyui-pr15395-004,
/// comfyui-pr15579-001, dramaclaw-001).
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

/// How Ark fails a created task whose prompt it reads as an edit or extension the request's
/// parameters do not fit (tests/golden live-notes-sd25ext-007/008, dramaclaw-001), or whose
/// declared type the prompt contradicts (docs/ark-api.md §14).
fn task_type_failure(a: &Ask, prompt: &str) -> Option<(String, String)> {
    if a.c.videos == 0 {
        return None;
    }
    let p = prompt.to_lowercase();
    let edit = EDIT_WORDS.iter().any(|w| p.contains(w));
    let extend = EXTEND_WORDS.iter().any(|w| p.contains(w));
    let declared = a.req.omni_reference_task_type.as_deref();
    let contradicts = match declared {
        Some("edit") => extend && !edit,
        Some("extend") => edit && !extend,
        _ => false,
    };
    if contradicts {
        return Some((
            TASK_TYPE_MISMATCH.into(),
            format!(
                "The declared omni_reference_task_type {} does not match the task Seedance identified from your prompt.",
                declared.unwrap_or_default()
            ),
        ));
    }
    if !matches!(declared, None | Some("auto")) || !(edit || extend) {
        return None;
    }
    let kind = if edit {
        "video editing"
    } else {
        "video extension"
    };
    let mut issues = Vec::new();
    if let Some(r) = a.ratio_given.as_deref().filter(|r| *r != "adaptive") {
        issues.push(format!("`ratio` must be `adaptive` (got {r})"));
    }
    if edit && let Some(d) = a.duration_given.filter(|d| *d != -1) {
        issues.push(format!("`duration` must be -1 (got {d})"));
    }
    if issues.is_empty() {
        return None;
    }
    let issues: Vec<String> = issues
        .iter()
        .enumerate()
        .map(|(i, s)| format!("[{i}] {s}"))
        .collect();
    Some((
        TASK_TYPE_CONSTRAINT.into(),
        format!(
            "Seedance identified your task as {kind} based on your prompt. For this task type, the output ratio and duration follow the input video. Issues: {}",
            issues.join(" ")
        ),
    ))
}

/// Judges a create body: what the task runs with, or Ark's refusal.
///
/// # Errors
/// The first rule the request breaks.
pub fn judge(req: &CreateTaskRequest, catalogue: &Catalogue) -> Result<Accepted, Refusal> {
    if req.model.is_empty() {
        return Err(Refusal::missing(
            "model",
            "a model or endpoint id is required",
        ));
    }
    if req.content.is_empty() {
        return Err(Refusal::missing(
            "content",
            "content needs a prompt or an image",
        ));
    }
    let spec = catalogue.get(&req.model);
    let content = read_content(&req.content)?;
    let ask = Ask::resolve(req, spec, content)?;
    for rule in RULES {
        if let Some(refusal) = (rule.check)(&ask) {
            tracing::debug!(rule = rule.name, param = %refusal.param, "sim: create refused");
            return Err(refusal);
        }
    }
    let concrete_ratio = if ask.ratio == "adaptive" {
        ask.c
            .first_image
            .map_or("16:9", |(w, h)| catalogue::closest_ratio(w, h))
            .to_string()
    } else if catalogue::is_table_ratio(&ask.ratio) {
        ask.ratio.clone()
    } else {
        // Ratios outside the pixel tables (`5:4`, `3:2`, `1.91:1`) render at the nearest one.
        nearest_table_ratio(&ask.ratio)
    };
    let size =
        spec.and_then(|s| catalogue::pixel_size(s.pixel_table, &ask.resolution, &concrete_ratio));
    let prompt = ask.c.prompt.clone().unwrap_or_default();
    let task_type_failure = task_type_failure(&ask, &prompt);
    let seed = ask.req.seed.or(ask
        .c
        .inline
        .seed
        .filter(|v| (-1..=spec.map_or(SEED_MAX, |s| s.seed_max)).contains(v)));
    Ok(Accepted {
        resolution: ask.resolution.clone(),
        concrete_ratio,
        duration: ask.frames.is_none().then_some(ask.duration),
        frames: ask.frames,
        seed,
        flex: ask.flex,
        expires_after: ask.expires_after,
        size,
        video_inputs: ask.c.videos,
        prompt,
        task_type_failure,
    })
}

fn nearest_table_ratio(ratio: &str) -> String {
    let parsed = ratio.split_once(':').and_then(|(a, b)| {
        let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
        (a > 0.0 && b > 0.0).then_some((a, b))
    });
    match parsed {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some((a, b)) => catalogue::closest_ratio((a * 1000.0) as u32, (b * 1000.0) as u32).into(),
        None => ratio.to_string(),
    }
}

#[cfg(test)]
mod tests;
