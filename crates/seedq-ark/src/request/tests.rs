//! Validation tables: every invalid request names the field and the rule it breaks.

use super::*;
use crate::request::image::tests::{jpeg, png};

const PRO: &str = "doubao-seedance-1-0-pro-250528";
const FAST: &str = "doubao-seedance-1-0-pro-fast-251015";
const LITE_T2V: &str = "doubao-seedance-1-0-lite-t2v-250428";
const LITE_I2V: &str = "doubao-seedance-1-0-lite-i2v-250428";
const V20: &str = "doubao-seedance-2-0-260128";
const V20_FAST: &str = "doubao-seedance-2-0-fast-260128";
const V25: &str = "doubao-seedance-2-5-260628";
const V20_MINI: &str = "doubao-seedance-2-0-mini-260615";
const V15_PRO: &str = "doubao-seedance-1-5-pro-251215";
/// Every 2.x model, Volcengine and BytePlus ids.
const V2X: [&str; 8] = [
    V20,
    V20_FAST,
    V20_MINI,
    V25,
    "dreamina-seedance-2-0-260128",
    "dreamina-seedance-2-0-fast-260128",
    "dreamina-seedance-2-0-mini-260615",
    "dreamina-seedance-2-5-260628",
];
/// The four 1.0 models.
const V10: [&str; 4] = [PRO, FAST, LITE_T2V, LITE_I2V];

/// A request the model can take in its simplest mode (lite i2v has no text-to-video).
fn simplest(model: &str) -> CreateTaskRequest {
    if model == LITE_I2V {
        req(model, vec![text("x"), img(URL, None)])
    } else {
        t2v(model)
    }
}

fn text(t: &str) -> ContentItem {
    ContentItem::Text { text: t.into() }
}

fn img(url: &str, role: Option<&str>) -> ContentItem {
    ContentItem::ImageUrl {
        image_url: MediaUrl { url: url.into() },
        role: role.map(str::to_string),
    }
}

fn data_png(w: u32, h: u32) -> String {
    use base64::Engine;
    let b = png(w, h);
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

fn req(model: &str, content: Vec<ContentItem>) -> CreateTaskRequest {
    CreateTaskRequest {
        model: model.into(),
        content,
        ..Default::default()
    }
}

fn t2v(model: &str) -> CreateTaskRequest {
    req(model, vec![text("a cat yawns")])
}

const URL: &str = "https://example.com/a.png";

/// (case name, request, expected param, expected fragment of the message).
fn invalid_cases() -> Vec<(&'static str, CreateTaskRequest, &'static str, &'static str)> {
    let mut v = Vec::new();
    let mut add = |name, r, param, frag| v.push((name, r, param, frag));
    add("no model", req("", vec![text("x")]), "model", "is missing");
    add("empty content", req(PRO, vec![]), "content", "is missing");
    add(
        "empty prompt t2v",
        req(PRO, vec![text("  ")]),
        "content[].text",
        "is missing",
    );
    add(
        "duration too long",
        CreateTaskRequest {
            duration: Some(15),
            ..t2v(PRO)
        },
        "duration",
        "2..=12 seconds",
    );
    add(
        "duration too short",
        CreateTaskRequest {
            duration: Some(1),
            ..t2v(PRO)
        },
        "duration",
        "out of range",
    );
    add(
        "duration -1 on 1.0",
        CreateTaskRequest {
            duration: Some(-1),
            ..t2v(PRO)
        },
        "duration",
        "2..=12",
    );
    add(
        "duration 16 on 2.0",
        CreateTaskRequest {
            duration: Some(16),
            ..t2v(V20)
        },
        "duration",
        "-1 to let the model choose",
    );
    add(
        "duration 3 on 2.0",
        CreateTaskRequest {
            duration: Some(3),
            ..t2v(V20)
        },
        "duration",
        "4..=15",
    );
    add(
        "duration 31 on 2.5",
        CreateTaskRequest {
            duration: Some(31),
            ..t2v(V25)
        },
        "duration",
        "4..=30",
    );
    add(
        "frames off grid",
        CreateTaskRequest {
            frames: Some(30),
            ..t2v(PRO)
        },
        "frames",
        "25 + 4n",
    );
    add(
        "frames too few",
        CreateTaskRequest {
            frames: Some(25),
            ..t2v(PRO)
        },
        "frames",
        "[29, 289]",
    );
    add(
        "frames too many",
        CreateTaskRequest {
            frames: Some(293),
            ..t2v(PRO)
        },
        "frames",
        "[29, 289]",
    );
    add(
        "frames on 2.0",
        CreateTaskRequest {
            frames: Some(121),
            ..t2v(V20)
        },
        "frames",
        "not supported",
    );
    add(
        "seed too big",
        CreateTaskRequest {
            seed: Some(MAX_SEED + 1),
            ..t2v(PRO)
        },
        "seed",
        "-1..=4294967295",
    );
    add(
        "seed too small",
        CreateTaskRequest {
            seed: Some(-2),
            ..t2v(PRO)
        },
        "seed",
        "out of range",
    );
    add(
        "unknown ratio",
        CreateTaskRequest {
            ratio: Some("2:1".into()),
            ..t2v(PRO)
        },
        "ratio",
        "one of 16:9",
    );
    add(
        "adaptive t2v on 1.0",
        CreateTaskRequest {
            ratio: Some("adaptive".into()),
            ..t2v(PRO)
        },
        "ratio",
        "needs an input image",
    );
    add(
        "unknown resolution",
        CreateTaskRequest {
            resolution: Some("2k".into()),
            ..t2v(PRO)
        },
        "resolution",
        "480p, 720p, 1080p",
    );
    add(
        "1080p on 2.0 fast",
        CreateTaskRequest {
            resolution: Some("1080p".into()),
            ..t2v(V20_FAST)
        },
        "resolution",
        "480p, 720p",
    );
    add(
        "bad tier",
        CreateTaskRequest {
            service_tier: Some("cheap".into()),
            ..t2v(PRO)
        },
        "service_tier",
        "default, flex",
    );
    add(
        "flex on 2.0",
        CreateTaskRequest {
            service_tier: Some("flex".into()),
            ..t2v(V20)
        },
        "service_tier",
        "not supported",
    );
    add(
        "expires too short",
        CreateTaskRequest {
            execution_expires_after: Some(3599),
            ..t2v(PRO)
        },
        "execution_expires_after",
        "3600..=259200",
    );
    add(
        "expires too long",
        CreateTaskRequest {
            execution_expires_after: Some(345_600),
            ..t2v(PRO)
        },
        "execution_expires_after",
        "out of range",
    );
    add("t2v on lite i2v", t2v(LITE_I2V), "content", "not supported");
    add(
        "first frame on lite t2v",
        req(LITE_T2V, vec![text("x"), img(URL, Some("first_frame"))]),
        "content",
        "text-to-video",
    );
    add(
        "first+last on pro fast",
        req(
            FAST,
            vec![img(URL, Some("first_frame")), img(URL, Some("last_frame"))],
        ),
        "content",
        "first-frame",
    );
    add(
        "refs on pro",
        req(PRO, vec![img(URL, Some("reference_image"))]),
        "content",
        "not supported",
    );
    add(
        "5 refs on lite",
        req(
            LITE_I2V,
            (0..5).map(|_| img(URL, Some("reference_image"))).collect(),
        ),
        "content",
        "1..=4 reference images",
    );
    add(
        "mixed modes",
        req(
            LITE_I2V,
            vec![
                img(URL, Some("first_frame")),
                img(URL, Some("reference_image")),
            ],
        ),
        "content",
        "not both",
    );
    add(
        "two untyped images",
        req(PRO, vec![img(URL, None), img(URL, None)]),
        "content",
        "first_frame and last_frame",
    );
    add(
        "last without first",
        req(PRO, vec![img(URL, Some("last_frame"))]),
        "content",
        "wrong image count",
    );
    add(
        "two last frames",
        req(
            PRO,
            vec![
                img(URL, Some("first_frame")),
                img(URL, Some("last_frame")),
                img(URL, Some("last_frame")),
            ],
        ),
        "content",
        "wrong image count",
    );
    add(
        "bad role",
        req(PRO, vec![img(URL, Some("middle_frame"))]),
        "content[0].role",
        "first_frame, last_frame, reference_image",
    );
    add(
        "empty image url",
        req(PRO, vec![img("", None)]),
        "content[0].image_url.url",
        "is missing",
    );
    add(
        "uppercase data url",
        req(
            PRO,
            vec![img(&data_png(640, 360).replacen("png", "PNG", 1), None)],
        ),
        "content[0].image_url.url",
        "lowercase",
    );
    add(
        "image too small",
        req(PRO, vec![img(&data_png(200, 200), None)]),
        "content[0].image_url.url",
        "between 300 and 6000",
    );
    add(
        "image too wide",
        req(PRO, vec![img(&data_png(1300, 500), None)]),
        "content[0].image_url.url",
        "aspect ratio",
    );
    add(
        "declared type mismatch",
        req(
            PRO,
            vec![img(
                &data_png(640, 360).replacen("image/png", "image/gif", 1),
                None,
            )],
        ),
        "content[0].image_url.url",
        "does not match",
    );
    add(
        "1080p reference on lite",
        CreateTaskRequest {
            resolution: Some("1080p".into()),
            ..req(LITE_I2V, vec![img(URL, Some("reference_image"))])
        },
        "resolution",
        "480p or 720p with reference images",
    );
    add(
        "camera_fixed with refs",
        CreateTaskRequest {
            camera_fixed: Some(true),
            ..req(LITE_I2V, vec![img(URL, Some("reference_image"))])
        },
        "camera_fixed",
        "never with reference images",
    );
    add(
        "camera_fixed on 2.0",
        CreateTaskRequest {
            camera_fixed: Some(true),
            ..t2v(V20)
        },
        "camera_fixed",
        "not supported",
    );
    add(
        "draft on 1.0",
        CreateTaskRequest {
            draft: Some(true),
            resolution: Some("480p".into()),
            ..t2v(PRO)
        },
        "draft",
        "not supported",
    );
    add(
        "priority 10 on 2.0",
        CreateTaskRequest {
            priority: Some(10),
            ..t2v(V20)
        },
        "priority",
        "0..=9",
    );
    add(
        "bad tool",
        CreateTaskRequest {
            tools: Some(vec![Tool {
                kind: "calculator".into(),
            }]),
            ..t2v(V20)
        },
        "tools[].type",
        "web_search",
    );
    add(
        "tools on 1.0",
        CreateTaskRequest {
            tools: Some(vec![Tool {
                kind: "web_search".into(),
            }]),
            ..t2v(PRO)
        },
        "tools",
        "not supported",
    );
    add(
        "mov on 2.0",
        CreateTaskRequest {
            output_format: Some("mov".into()),
            ..t2v(V20)
        },
        "output_format",
        "one of mp4",
    );
    add(
        "2.5 first frame needs adaptive",
        CreateTaskRequest {
            ratio: Some("16:9".into()),
            ..req(V25, vec![text("x"), img(URL, None)])
        },
        "ratio",
        "adaptive for first-frame",
    );
    add(
        "bad callback",
        CreateTaskRequest {
            callback_url: Some("not a url".into()),
            ..t2v(PRO)
        },
        "callback_url",
        "http(s) URL",
    );
    add(
        "inline bad duration",
        req(PRO, vec![text("cat --dur 20")]),
        // The param Ark names (tests/golden live-notes-adcreative-024).
        "contents[0].text.duration",
        "2..=12",
    );
    add(
        "inline malformed",
        req(PRO, vec![text("cat --rs")]),
        "contents[0].text.resolution",
        "is missing",
    );
    add(
        "audio only",
        req(
            V20,
            vec![
                text("x"),
                ContentItem::AudioUrl {
                    audio_url: MediaUrl { url: URL.into() },
                    role: None,
                },
            ],
        ),
        "content",
        "at least one image or video",
    );
    add(
        "video ref on 1.0",
        req(
            PRO,
            vec![
                text("x"),
                ContentItem::VideoUrl {
                    video_url: MediaUrl { url: URL.into() },
                    role: None,
                },
            ],
        ),
        "content",
        "at most 0 reference videos",
    );
    add(
        "bad video role",
        req(
            V20,
            vec![
                text("x"),
                ContentItem::VideoUrl {
                    video_url: MediaUrl { url: URL.into() },
                    role: Some("reference_image".into()),
                },
            ],
        ),
        "content[1].role",
        "reference_video",
    );
    add(
        "two text items",
        req(PRO, vec![text("a"), text("b")]),
        "content[1]",
        "one text item",
    );
    add(
        "unknown model still checks expiry",
        CreateTaskRequest {
            execution_expires_after: Some(10),
            ..t2v("ep-20250101-xyz")
        },
        "execution_expires_after",
        "3600..=259200",
    );
    add(
        "unknown model still checks frames",
        CreateTaskRequest {
            frames: Some(30),
            ..t2v("ep-20250101-xyz")
        },
        "frames",
        "25 + 4n",
    );
    v
}

#[test]
fn invalid_requests_name_field_and_rule() {
    let cat = Catalogue::default();
    let cases = invalid_cases();
    assert!(cases.len() >= 35, "the table has {} cases", cases.len());
    for (name, r, param, frag) in cases {
        match check(&r, &cat) {
            Ok(eff) => panic!("{name}: accepted, effective = {eff:?}"),
            Err(e) => {
                assert_eq!(e.param, param, "{name}: wrong param in {e}");
                let msg = e.to_string();
                assert!(msg.contains(frag), "{name}: {msg:?} lacks {frag:?}");
                if !r.model.is_empty() {
                    assert!(
                        msg.contains(&r.model),
                        "{name}: {msg:?} does not name the model"
                    );
                }
            }
        }
    }
}

#[test]
fn the_brief_example_message() {
    let e = check(
        &CreateTaskRequest {
            duration: Some(15),
            ..t2v(PRO)
        },
        &Catalogue::default(),
    )
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("duration 15 is out of range for doubao-seedance-1-0-pro-250528: 2..=12 seconds")
    );
}

#[test]
fn valid_requests_fill_defaults() {
    let cat = Catalogue::default();
    let e = check(&t2v(PRO), &cat).expect("valid");
    assert_eq!((e.resolution.as_str(), e.ratio.as_str()), ("1080p", "16:9"));
    assert_eq!(e.duration, Some(5));
    assert_eq!(e.size, Some((1920, 1088)));
    assert_eq!(e.expires_after, DEFAULT_EXPIRES_AFTER);

    let e = check(&req(PRO, vec![img(&data_png(1080, 1920), None)]), &cat).expect("valid");
    assert_eq!(e.mode, Mode::FirstFrame);
    assert_eq!(
        (e.ratio.as_str(), e.concrete_ratio.as_str()),
        ("adaptive", "9:16")
    );

    let e = check(
        &req(
            LITE_I2V,
            vec![
                text("x"),
                img(URL, Some("reference_image")),
                img(URL, Some("reference_image")),
            ],
        ),
        &cat,
    )
    .expect("valid");
    assert_eq!(e.mode, Mode::ReferenceImages(2));
    assert_eq!(e.ratio, "16:9");

    let e = check(
        &CreateTaskRequest {
            frames: Some(57),
            duration: Some(5),
            ..t2v(PRO)
        },
        &cat,
    )
    .expect("frames win");
    assert_eq!((e.frames, e.duration), (Some(57), None));

    let e = check(
        &CreateTaskRequest {
            duration: Some(-1),
            ..t2v(V20)
        },
        &cat,
    )
    .expect("auto duration");
    assert_eq!(e.duration, Some(-1));
    assert_eq!(e.ratio, "adaptive");

    let e = check(&req("ep-123", vec![text("x")]), &cat).expect("unknown models pass");
    assert_eq!(e.size, None);
}

#[test]
fn top_level_fields_win_over_inline_commands() {
    let cat = Catalogue::default();
    let r = CreateTaskRequest {
        resolution: Some("480p".into()),
        ..req(PRO, vec![text("cat --rs 720p --dur 7")])
    };
    let e = check(&r, &cat).expect("valid");
    assert_eq!(e.resolution, "480p");
    assert_eq!(e.duration, Some(7));
    assert_eq!(e.prompt, "cat");
}

#[test]
fn usage_estimate_for_the_1_0_pro_720p_5s() {
    let cat = Catalogue::default();
    let r = CreateTaskRequest {
        resolution: Some("720p".into()),
        ..t2v(PRO)
    };
    let e = check(&r, &cat).expect("valid");
    assert_eq!(e.tokens(cat.get(PRO)), Some(1248 * 704 * 121 / 1024));
}

fn spec(model: &str, prompt: &str) -> JobSpec {
    JobSpec {
        model: Some(model.into()),
        prompt: Some(prompt.into()),
        ..Default::default()
    }
}

#[test]
fn prepare_freezes_inline_commands_and_derives_a_seed() {
    let cat = Catalogue::default();
    let p = prepare(
        spec(PRO, "a cat --rs 720p --rt 4:3 --dur 3 --wm true"),
        &cat,
        Path::new("."),
    )
    .expect("valid");
    let r = &p.request;
    assert_eq!(r.content, vec![text("a cat")]);
    assert_eq!(r.resolution.as_deref(), Some("720p"));
    assert_eq!(r.ratio.as_deref(), Some("4:3"));
    assert_eq!(r.duration, Some(3));
    assert_eq!(r.watermark, Some(true));
    assert_eq!(r.seed, Some(p.id.derived_seed()));
    assert_eq!(p.seed, r.seed);
    assert_eq!(p.est_tokens, Some(1120 * 832 * 73 / 1024));

    let pinned = prepare(
        JobSpec {
            seed: Some(42),
            ..spec(PRO, "x")
        },
        &cat,
        Path::new("."),
    )
    .expect("valid");
    assert_eq!(pinned.request.seed, Some(42));
    let v2 = prepare(spec(V20, "x"), &cat, Path::new(".")).expect("valid");
    assert_eq!(v2.request.seed, None, "2.x takes no seed");
}

#[test]
fn prepare_reads_local_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.png"), png(640, 360)).expect("write");
    std::fs::write(dir.path().join("b.jpg"), jpeg(640, 360)).expect("write");
    std::fs::write(dir.path().join("tiny.png"), png(100, 100)).expect("write");
    let cat = Catalogue::default();
    let p = prepare(
        JobSpec {
            first_frame: Some("a.png".into()),
            last_frame: Some("b.jpg".into()),
            ..spec(PRO, "x")
        },
        &cat,
        dir.path(),
    )
    .expect("valid");
    assert_eq!(p.effective.mode, Mode::FirstLastFrame);
    let urls: Vec<_> = p
        .request
        .content
        .iter()
        .filter_map(|i| match i {
            ContentItem::ImageUrl { image_url, .. } => Some(image_url.url.clone()),
            _ => None,
        })
        .collect();
    assert!(urls[0].starts_with("data:image/png;base64,"));
    assert!(urls[1].starts_with("data:image/jpeg;base64,"));

    let e = prepare(
        JobSpec {
            first_frame: Some("tiny.png".into()),
            ..spec(PRO, "x")
        },
        &cat,
        dir.path(),
    )
    .err()
    .map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("first_frame")
        && e.contains("tiny.png")
        && e.contains("100x100")));
    let e = prepare(
        JobSpec {
            first_frame: Some("missing.png".into()),
            ..spec(PRO, "x")
        },
        &cat,
        dir.path(),
    )
    .err()
    .map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("first_frame") && e.contains("missing.png")));
}

#[test]
fn inline_param_style_renders_commands() {
    let mut o = std::collections::BTreeMap::new();
    o.insert(
        PRO.to_string(),
        serde_json::json!({"param_style": "inline"}),
    );
    let cat = Catalogue::with_overrides(&o).expect("override");
    let p = prepare(
        JobSpec {
            seed: Some(11),
            resolution: Some("720p".into()),
            ..spec(PRO, "cat")
        },
        &cat,
        Path::new("."),
    )
    .expect("valid");
    assert_eq!(p.request.content, vec![text("cat --rs 720p --seed 11")]);
    assert_eq!(p.request.resolution, None);
    assert_eq!(p.effective.resolution, "720p");
}

#[test]
fn prepare_errors_are_specific() {
    let cat = Catalogue::default();
    let e = prepare(
        JobSpec {
            model: None,
            ..spec(PRO, "x")
        },
        &cat,
        Path::new("."),
    )
    .err()
    .map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("model is missing") && e.contains(PRO)));
    let e = prepare(
        JobSpec {
            expires_after: Some("soon".into()),
            ..spec(PRO, "x")
        },
        &cat,
        Path::new("."),
    )
    .err()
    .map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("expires_after") && e.contains("soon")));
    let p = prepare(
        JobSpec {
            flex: Some(true),
            expires_after: Some("24h".into()),
            ..spec(PRO, "x")
        },
        &cat,
        Path::new("."),
    )
    .expect("valid");
    assert_eq!(p.request.service_tier.as_deref(), Some("flex"));
    assert_eq!(p.request.execution_expires_after, Some(86_400));
}

/// Values equal to the documented default are accepted on every model (a refused create
/// costs nothing; Ark decides), even where a live probe refused the field whatever its value:
/// `camera_fixed` and `service_tier` on BytePlus 2.x (tests/golden/verdict-overrides.json).
#[test]
fn documented_defaults_are_accepted_everywhere() {
    let cat = Catalogue::default();
    let all = V10.iter().chain(V2X.iter()).chain([V15_PRO].iter());
    for m in all {
        let with_defaults = CreateTaskRequest {
            // docs/ark-api.md §2.1 defaults: seed −1, priority 0, camera_fixed / watermark /
            // return_last_frame / draft false, service_tier default, 48 h expiry, no tools.
            seed: Some(-1),
            priority: Some(0),
            camera_fixed: Some(false),
            watermark: Some(false),
            return_last_frame: Some(false),
            draft: Some(false),
            service_tier: Some("default".into()),
            execution_expires_after: Some(DEFAULT_EXPIRES_AFTER),
            tools: Some(vec![]),
            ..simplest(m)
        };
        if let Err(e) = check(&with_defaults, &cat) {
            panic!("{m}: documented defaults refused: {e}");
        }
    }
    // A set priority on 1.5 pro is refused (tests/golden tanstack-ai-033).
    let r = CreateTaskRequest {
        priority: Some(1),
        ..simplest(V15_PRO)
    };
    assert_eq!(
        check(&r, &cat).err().map(|e| e.param).as_deref(),
        Some("priority")
    );
}

/// `seed` is taken by every model, 2.x included (tests/golden tanstack-ai-022/023); only
/// the range is checked (tanstack-ai-024).
#[test]
fn seeds_are_accepted_on_every_model_within_the_range() {
    let cat = Catalogue::default();
    for m in V2X {
        for seed in [-1, 0, 7, MAX_SEED] {
            let r = CreateTaskRequest {
                seed: Some(seed),
                ..t2v(m)
            };
            let e = check(&r, &cat).unwrap_or_else(|e| panic!("{m}: seed {seed} refused: {e}"));
            assert_eq!(e.seed, Some(seed));
        }
        check(&req(m, vec![text("a cat --seed -1")]), &cat)
            .unwrap_or_else(|e| panic!("{m}: inline --seed -1 refused: {e}"));
        let e = check(
            &CreateTaskRequest {
                seed: Some(MAX_SEED + 1),
                ..t2v(m)
            },
            &cat,
        )
        .err()
        .map(|e| e.param);
        assert_eq!(e.as_deref(), Some("seed"), "{m}");
    }
}

#[test]
fn generate_audio_and_priority_are_accepted_on_1_0() {
    // tests/golden tanstack-ai-029/031, vercel-ai-012 (live): 1.0 takes both and ignores them.
    let cat = Catalogue::default();
    for m in V10 {
        for (ga, p) in [(false, 0), (true, 2)] {
            let r = CreateTaskRequest {
                generate_audio: Some(ga),
                priority: Some(p),
                ..simplest(m)
            };
            check(&r, &cat).unwrap_or_else(|e| panic!("{m}: {e}"));
        }
        // With flex too: priority 0 is the default, not a request for queue priority.
        let r = CreateTaskRequest {
            priority: Some(0),
            service_tier: Some("flex".into()),
            ..simplest(m)
        };
        check(&r, &cat).unwrap_or_else(|e| panic!("{m} flex: {e}"));
    }
    let e = check(
        &CreateTaskRequest {
            priority: Some(3),
            service_tier: Some("flex".into()),
            ..t2v(PRO)
        },
        &cat,
    );
    assert!(e.is_err(), "a real priority with flex is refused");
}

#[test]
fn output_format_mp4_is_accepted_on_every_model() {
    let cat = Catalogue::default();
    for m in V10.iter().chain(V2X.iter()).chain([V15_PRO].iter()) {
        let r = CreateTaskRequest {
            output_format: Some("mp4".into()),
            ..simplest(m)
        };
        check(&r, &cat).unwrap_or_else(|e| panic!("{m}: {e}"));
    }
    let e = check(
        &CreateTaskRequest {
            output_format: Some("mov".into()),
            ..t2v(PRO)
        },
        &cat,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("one of mp4"), "{e}");
    assert!(!e.contains("one of ."), "{e}");
}

#[test]
fn an_empty_allowed_list_is_not_one_of_nothing() {
    let e = Invalid::not_one_of("output_format", "mp4", PRO, &[]).to_string();
    assert_eq!(
        e,
        format!("output_format mp4 is not allowed for {PRO}: no output_format (leave it empty)")
    );
}

/// docs/ark-api.md §13/§14 and tests/golden (modelark-mcp-007/008): any value on 2.x; the
/// documented edit/extend rules are `InvalidParameter.TaskTypeConstraint` naming the field.
#[test]
fn omni_reference_task_type_is_lenient_and_checks_edit_and_extend() {
    let cat = Catalogue::default();
    let video = ContentItem::VideoUrl {
        video_url: MediaUrl {
            url: "https://example.com/v.mp4".into(),
        },
        role: Some("reference_video".into()),
    };
    let with = |model: &str, t: &str, content: Vec<ContentItem>| CreateTaskRequest {
        omni_reference_task_type: Some(t.into()),
        ..req(model, content)
    };
    for t in [
        "auto",
        "reference",
        "first_last_frame",
        "edit_video",
        "anything",
    ] {
        check(&with(V25, t, vec![text("x")]), &cat).unwrap_or_else(|e| panic!("{t}: {e}"));
        check(&with(V20, t, vec![text("x")]), &cat).unwrap_or_else(|e| panic!("{t}: {e}"));
    }
    for t in ["edit", "extend"] {
        check(&with(V25, t, vec![text("x"), video.clone()]), &cat)
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        let e = check(&with(V25, t, vec![text("x")]), &cat).expect_err("no video");
        assert_eq!(
            (e.param.as_str(), e.ark_code()),
            ("content", TASK_TYPE_CONSTRAINT)
        );
        let r = CreateTaskRequest {
            ratio: Some("16:9".into()),
            ..with(V25, t, vec![text("x"), video.clone()])
        };
        let e = check(&r, &cat).expect_err("16:9");
        assert_eq!(
            (e.param.as_str(), e.ark_code()),
            ("ratio", TASK_TYPE_CONSTRAINT)
        );
    }
    // Edit also needs duration -1 (docs/ark-api.md §14); extend does not.
    let r = CreateTaskRequest {
        duration: Some(5),
        ..with(V25, "edit", vec![text("x"), video.clone()])
    };
    let e = check(&r, &cat).expect_err("edit at 5 s");
    assert_eq!(
        (e.param.as_str(), e.ark_code()),
        ("duration", TASK_TYPE_CONSTRAINT)
    );
    let r = CreateTaskRequest {
        duration: Some(5),
        ..with(V25, "extend", vec![text("x"), video.clone()])
    };
    check(&r, &cat).expect("extend at 5 s");
    let e = check(&with(PRO, "auto", vec![text("x")]), &cat)
        .err()
        .map(|e| e.param);
    assert_eq!(e.as_deref(), Some("omni_reference_task_type"));
    // Unknown models and endpoints: Ark decides.
    check(&with("ep-20250101-abc", "whatever", vec![text("x")]), &cat).expect("endpoint");
}

/// The sim's stand-in for Ark's task-type inference (tests/golden live-notes-sd25ext-008,
/// dramaclaw-001): an edit-like prompt with a reference video and an explicit duration fails
/// later; with `ratio: adaptive` and `duration: -1`, or without a video, nothing is inferred.
#[test]
fn an_edit_prompt_with_a_fixed_duration_fails_later_with_task_type_constraint() {
    let cat = Catalogue::default();
    let video = ContentItem::VideoUrl {
        video_url: MediaUrl {
            url: "https://example.com/v.mp4".into(),
        },
        role: Some("reference_video".into()),
    };
    let r = CreateTaskRequest {
        duration: Some(5),
        ..req(
            V25,
            vec![text("replace the jacket with a red one"), video.clone()],
        )
    };
    let e = check(&r, &cat).expect("accepted at create");
    let (code, message) = e.task_type_failure.expect("fails later");
    assert_eq!(code, TASK_TYPE_CONSTRAINT);
    assert!(message.contains("`duration` must be -1"), "{message}");
    let r = CreateTaskRequest {
        duration: Some(-1),
        ratio: Some("adaptive".into()),
        ..req(V25, vec![text("replace the jacket with a red one"), video])
    };
    assert_eq!(check(&r, &cat).expect("ok").task_type_failure, None);
    let r = CreateTaskRequest {
        duration: Some(5),
        ..req(V25, vec![text("replace the jacket with a red one")])
    };
    assert_eq!(check(&r, &cat).expect("ok").task_type_failure, None);
    // A declared extend whose prompt asks for an edit: TaskTypeMismatch (docs/ark-api.md §14).
    let r = CreateTaskRequest {
        omni_reference_task_type: Some("extend".into()),
        ..req(
            V25,
            vec![
                text("replace the jacket with a red one"),
                ContentItem::VideoUrl {
                    video_url: MediaUrl {
                        url: "https://example.com/v.mp4".into(),
                    },
                    role: Some("reference_video".into()),
                },
            ],
        )
    };
    let (code, _) = check(&r, &cat)
        .expect("accepted at create")
        .task_type_failure
        .expect("fails later");
    assert_eq!(code, TASK_TYPE_MISMATCH);
}

#[test]
fn flex_on_2x_names_field_value_allowed_and_model() {
    let cat = Catalogue::default();
    for m in V2X {
        let e = check(
            &CreateTaskRequest {
                service_tier: Some("flex".into()),
                ..t2v(m)
            },
            &cat,
        )
        .err()
        .unwrap_or_else(|| panic!("{m}: flex accepted"));
        assert_eq!(e.param, "service_tier");
        let msg = e.to_string();
        assert!(
            msg.starts_with("service_tier flex is not supported for")
                && msg.contains(m)
                && msg.contains("default only;")
                && msg.contains("no flex tier"),
            "{msg}"
        );
    }
    let p = prepare(
        JobSpec {
            flex: Some(true),
            ..spec(V20, "x")
        },
        &cat,
        Path::new("."),
    );
    let e = p.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.contains("service_tier flex") && e.contains("--flex"),
        "{e}"
    );
}

#[test]
fn seedance_1_5_pro_takes_drafts_and_draft_tasks() {
    let cat = Catalogue::default();
    let e = check(
        &CreateTaskRequest {
            draft: Some(true),
            ..t2v(V15_PRO)
        },
        &cat,
    )
    .expect("a draft");
    assert_eq!(e.resolution, "480p");
    assert_eq!(e.size, Some((864, 496)), "the 1.5 pro / 2.0 pixel table");
    let r = req(
        V15_PRO,
        vec![ContentItem::DraftTask {
            draft_task: DraftTaskRef {
                id: "cgt-20260101000000-abcde".into(),
            },
        }],
    );
    check(&r, &cat).expect("a final render from a draft");
    // Its documented limits: duration [4, 12] or -1, no frames, drafts only at 480p.
    let bad = [
        (
            CreateTaskRequest {
                duration: Some(3),
                ..t2v(V15_PRO)
            },
            "duration",
        ),
        (
            CreateTaskRequest {
                frames: Some(57),
                ..t2v(V15_PRO)
            },
            "frames",
        ),
        (
            CreateTaskRequest {
                draft: Some(true),
                resolution: Some("720p".into()),
                ..t2v(V15_PRO)
            },
            "resolution",
        ),
        (
            CreateTaskRequest {
                draft: Some(true),
                service_tier: Some("flex".into()),
                ..t2v(V15_PRO)
            },
            "draft",
        ),
    ];
    for (r, param) in bad {
        let e = check(&r, &cat).err().map(|e| e.param);
        assert_eq!(e.as_deref(), Some(param));
    }
    let e = check(
        &CreateTaskRequest {
            duration: Some(-1),
            seed: Some(9),
            generate_audio: Some(false),
            ..t2v(V15_PRO)
        },
        &cat,
    )
    .expect("auto duration, a seed, silent");
    assert_eq!(
        e.ratio, "adaptive",
        "docs/ark-api.md §2.1: default adaptive on 1.5 pro"
    );
}

#[test]
fn byteplus_ids_get_the_same_checks() {
    let cat = Catalogue::default();
    let r = CreateTaskRequest {
        duration: Some(16),
        ..t2v("dreamina-seedance-2-0-260128")
    };
    let e = check(&r, &cat)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("4..=15"), "{e}");
    let r = CreateTaskRequest {
        resolution: Some("1080p".into()),
        ..t2v("dreamina-seedance-2-0-fast-260128")
    };
    assert!(
        check(&r, &cat).is_err(),
        "fast has no 1080p under its BytePlus id"
    );
    // The `seedance` CLI's create, as it sends it (seedance 0.3.0 src/commands/generate.rs).
    let r = CreateTaskRequest {
        resolution: Some("720p".into()),
        ratio: Some("adaptive".into()),
        duration: Some(5),
        seed: Some(-1),
        generate_audio: Some(true),
        watermark: Some(false),
        ..t2v("dreamina-seedance-2-0-260128")
    };
    let e = check(&r, &cat).expect("the seedance CLI's defaults");
    assert_eq!(e.size, Some((1280, 720)));
}

#[test]
fn duration_and_frames_together_are_refused_naming_both() {
    let cat = Catalogue::default();
    let e = prepare(
        JobSpec {
            duration: Some(5),
            frames: Some(57),
            ..spec(PRO, "x")
        },
        &cat,
        Path::new("."),
    )
    .err()
    .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some(
            "duration 5 and frames 57 are both given for doubao-seedance-1-0-pro-250528: \
             either duration (seconds) or frames, not both"
        )
    );
    // Ark itself takes both (frames wins), so the shared check stays lenient.
    check(
        &CreateTaskRequest {
            duration: Some(5),
            frames: Some(57),
            ..t2v(PRO)
        },
        &cat,
    )
    .expect("the wire rule is Ark's");
}

#[test]
fn remote_priority_errors_name_remote_priority() {
    let cat = Catalogue::default();
    for (model, p, frag) in [(V20, 12, "0..=9"), (V15_PRO, 3, "no remote_priority")] {
        let e = prepare(
            JobSpec {
                remote_priority: Some(p),
                ..spec(model, "x")
            },
            &cat,
            Path::new("."),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.starts_with(&format!("remote_priority {p} ")) && e.contains(frag),
            "{e}"
        );
    }
}

#[test]
fn prepare_keeps_the_newlines_of_a_prompt_with_inline_flags() {
    let cat = Catalogue::default();
    let p = prepare(
        spec(
            PRO,
            "Shot 1: dawn.\nShot 2: the fox runs. --rs 720p --dur 4",
        ),
        &cat,
        Path::new("."),
    )
    .expect("valid");
    assert_eq!(
        p.request.content,
        vec![text("Shot 1: dawn.\nShot 2: the fox runs.")]
    );
    assert_eq!(p.request.duration, Some(4));
}

#[test]
fn prepare_does_not_send_defaults_the_model_lacks() {
    let cat = Catalogue::default();
    let p = prepare(
        JobSpec {
            seed: Some(-1),
            camera_fixed: Some(false),
            remote_priority: Some(0),
            ..spec(V20, "x")
        },
        &cat,
        Path::new("."),
    )
    .expect("valid");
    assert_eq!(p.request.seed, None, "2.x picks its own seed");
    assert_eq!(p.seed, None, "no seed to match at reconciliation");
    assert_eq!(p.request.camera_fixed, None);
    assert_eq!(
        p.request.priority,
        Some(0),
        "2.x takes priority: kept as given"
    );
    let p = prepare(
        JobSpec {
            generate_audio: Some(false),
            remote_priority: Some(0),
            ..spec(PRO, "x")
        },
        &cat,
        Path::new("."),
    )
    .expect("valid");
    assert_eq!(p.request.generate_audio, None);
    assert_eq!(p.request.priority, None);
    assert_eq!(
        p.request.seed,
        Some(p.id.derived_seed()),
        "1.0 still gets a derived seed"
    );
    let p = prepare(
        JobSpec {
            generate_audio: Some(false),
            ..spec(V15_PRO, "x")
        },
        &cat,
        Path::new("."),
    )
    .expect("valid");
    assert_eq!(
        p.request.generate_audio,
        Some(false),
        "1.5 pro takes it: a silent video"
    );
}

#[test]
fn audio_only_references_are_a_2_0_rule_only() {
    let cat = Catalogue::default();
    let audio = ContentItem::AudioUrl {
        audio_url: MediaUrl {
            url: "https://example.com/a.mp3".into(),
        },
        role: Some("reference_audio".into()),
    };
    for m in [V20, V20_FAST, V20_MINI, "dreamina-seedance-2-0-260128"] {
        let e = check(&req(m, vec![text("x"), audio.clone()]), &cat)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("at least one image or video"), "{m}: {e}");
    }
    // 2.5 (docs/ark-api.md §13 limits the rule to 2.0) and endpoints: Ark decides.
    check(&req(V25, vec![text("x"), audio.clone()]), &cat).expect("2.5 audio-driven");
    check(&req("ep-20250101-abc", vec![text("x"), audio]), &cat).expect("endpoint");
}

#[test]
fn seedance_2_5_estimates_follow_its_catalogue_row() {
    let cat = Catalogue::default();
    let spec = cat.get(V25);
    // No duration: 2.5's default is −1 (docs/ark-api.md §14), estimated at its 30 s maximum.
    let e = check(&t2v(V25), &cat).expect("valid");
    assert_eq!(e.duration, Some(-1));
    assert_eq!(e.tokens(spec), Some(1280 * 720 * 721 / 1024));
    // 480p renders 854×480: the live usage of 4 s (38 830) and 30 s (288 625).
    for (d, tokens) in [(4, 38_830), (30, 288_625)] {
        let r = CreateTaskRequest {
            resolution: Some("480p".into()),
            ratio: Some("16:9".into()),
            duration: Some(d),
            ..t2v(V25)
        };
        let e = check(&r, &cat).expect("valid");
        assert_eq!(e.size, Some((854, 480)));
        assert_eq!(e.tokens(spec), Some(tokens), "{d} s");
    }
    // With a reference video: W·H·24·(⌊input⌋ + output)/1024, no "+1 frame", the input
    // assumed at the longest clip 2.5 takes (30 s).
    let video = ContentItem::VideoUrl {
        video_url: MediaUrl {
            url: "https://example.com/v.mp4".into(),
        },
        role: Some("reference_video".into()),
    };
    let r = CreateTaskRequest {
        resolution: Some("720p".into()),
        ratio: Some("16:9".into()),
        duration: Some(5),
        ..req(V25, vec![text("x"), video])
    };
    let e = check(&r, &cat).expect("valid");
    assert_eq!(e.tokens(spec), Some(1280 * 720 * 24 * (30 + 5) / 1024));
    // 2.0 keeps 5 s and its own 480p size.
    let e = check(&t2v(V20), &cat).expect("valid");
    assert_eq!(e.duration, Some(5));
}

#[test]
fn byteplus_1_0_ids_get_1080p_and_the_seed_range_of_their_family() {
    let cat = Catalogue::default();
    let bp = "seedance-1-0-pro-250528";
    let e = check(&t2v(bp), &cat).expect("valid");
    assert_eq!(e.resolution, "1080p");
    assert_eq!(e.tokens(cat.get(bp)), Some(1920 * 1088 * 121 / 1024));
    let r = CreateTaskRequest {
        seed: Some(4_294_967_296),
        ..t2v(bp)
    };
    let err = check(&r, &cat)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("-1..=4294967295"), "{err}");
}
