//! The simulator's reading of Ark against seedq's (`seedq_ark::request::check`), on bodies
//! generated from a fixed seed: both must accept the same bodies, refuse the same ones with
//! the same code and parameter, and agree on what an accepted body runs with. A rule changed on
//! one side only fails here with the body that shows it. The golden corpus judges which side is
//! right (`tests/it/golden.rs`).

use std::collections::BTreeSet;

use base64::Engine;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::{Refusal, judge};
use seedq_ark::catalogue::Catalogue;
use seedq_ark::request;
use seedq_ark::wire::CreateTaskRequest;

fn png_url(w: u32, h: u32, declared: &str) -> String {
    let bytes = seedq_media::encode_png(&seedq_media::RgbImage {
        width: w,
        height: h,
        pixels: vec![90; (w * h * 3) as usize],
    })
    .expect("png");
    format!(
        "data:image/{declared};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Values for each field: mostly ones some model takes, and the edges around them.
struct Pools {
    images: Vec<String>,
}

impl Pools {
    fn new() -> Self {
        Self {
            images: vec![
                "https://example.com/a.png".into(),
                "asset://asset-1".into(),
                png_url(640, 360, "png"),
                png_url(400, 600, "png"),
                png_url(320, 200, "png"),
                png_url(200, 200, "png"),
                png_url(900, 300, "png"),
                png_url(640, 360, "jpeg"),
                png_url(640, 360, "PNG"),
                "data:image/png;base64,AAAA".into(),
                "data:image/png,raw".into(),
                String::new(),
            ],
        }
    }
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    xs.choose(rng).expect("non-empty pool")
}

fn prompt(rng: &mut StdRng) -> String {
    let words = [
        "a cat on a boat",
        "make it look like winter",
        "continue the shot",
        "",
        "  ",
        "--rs 720p",
        "--rs 4K",
        "--rs 2k",
        "--dur 7",
        "--dur -1",
        "--dur x",
        "--dur",
        "--rs",
        "--rt 21:9",
        "--rt adaptive",
        "--rt 7:1",
        "--frames 121",
        "--frames 30",
        "--seed 5",
        "--seed -3",
        "--fps 30",
        "--cf true",
        "--wm maybe",
        "--unknown 3",
        "换成 冬天",
    ];
    let n = rng.random_range(1..=3);
    (0..n)
        .map(|_| *pick(rng, &words))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A body built from what the model's row says it takes: most of these should be accepted,
/// so the two readings are compared on what they run with, not only on refusals.
fn tame_body(rng: &mut StdRng, catalogue: &Catalogue, models: &[String], pools: &Pools) -> Value {
    let model = pick(rng, models);
    let s = catalogue.get(model).expect("a catalogued model");
    let mut content = vec![
        json!({"type": "text", "text": pick(rng, &["a red kite over dunes", "make it look like dusk", "continue the scene --dur 5", "a fox --rs 720p --rt 16:9"])}),
    ];
    match rng.random_range(0..5) {
        0 if s.first_frame => content.push(
            json!({"type": "image_url", "image_url": {"url": pick(rng, &pools.images[..5])}}),
        ),
        1 if s.first_last_frame => {
            content.push(json!({"type": "image_url", "role": "first_frame", "image_url": {"url": pools.images[2]}}));
            content.push(json!({"type": "image_url", "role": "last_frame", "image_url": {"url": pools.images[3]}}));
        }
        2 if s.max_reference_images > 0 => {
            for _ in 0..rng.random_range(1..=s.max_reference_images.min(3)) {
                content.push(json!({"type": "image_url", "role": "reference_image", "image_url": {"url": pools.images[0]}}));
            }
        }
        3 if s.max_reference_videos > 0 => {
            content.push(json!({"type": "video_url", "role": "reference_video", "video_url": {"url": "https://example.com/v.mp4"}}));
        }
        _ => {}
    }
    let mut b = json!({"model": model, "content": content});
    let mut maybe = |rng: &mut StdRng, key: &str, values: Vec<Value>| {
        if rng.random_bool(0.3) {
            b[key] = pick(rng, &values).clone();
        }
    };
    maybe(
        rng,
        "resolution",
        s.resolutions.iter().map(|r| json!(r)).collect(),
    );
    maybe(rng, "ratio", s.ratios.iter().map(|r| json!(r)).collect());
    maybe(
        rng,
        "duration",
        vec![
            json!(s.duration_min),
            json!(s.duration_max),
            json!(s.default_duration),
            json!(-1),
        ],
    );
    maybe(rng, "seed", vec![json!(-1), json!(7), json!(s.seed_max)]);
    maybe(
        rng,
        "camera_fixed",
        vec![json!(false), json!(s.camera_fixed)],
    );
    maybe(
        rng,
        "service_tier",
        vec![
            json!("default"),
            json!(if s.flex { "flex" } else { "default" }),
        ],
    );
    maybe(
        rng,
        "execution_expires_after",
        vec![json!(3600), json!(86_400)],
    );
    maybe(rng, "generate_audio", vec![json!(s.generate_audio)]);
    maybe(
        rng,
        "output_format",
        s.output_formats.iter().map(|f| json!(f)).collect(),
    );
    if s.frames {
        maybe(rng, "frames", vec![json!(29), json!(121)]);
    }
    b
}

/// One generated body, most fields drawn from pools that straddle the rules.
fn wild_body(rng: &mut StdRng, models: &[String], pools: &Pools) -> Value {
    let mut content = Vec::new();
    if rng.random_bool(0.85) {
        content.push(json!({"type": "text", "text": prompt(rng)}));
    }
    if rng.random_bool(0.05) {
        content.push(json!({"type": "text", "text": "second"}));
    }
    let image_roles = [
        None,
        Some("first_frame"),
        Some("last_frame"),
        Some("reference_image"),
        Some("mask"),
    ];
    for _ in 0..rng.random_range(0..=3) {
        let mut item = json!({"type": "image_url", "image_url": {"url": pick(rng, &pools.images)}});
        if let Some(r) = pick(rng, &image_roles) {
            item["role"] = json!(r);
        }
        content.push(item);
    }
    for (kind, key, role) in [
        ("video_url", "video_url", "reference_video"),
        ("audio_url", "audio_url", "reference_audio"),
    ] {
        if rng.random_bool(0.7) {
            continue;
        }
        for _ in 0..rng.random_range(1..=2) {
            let url = *pick(
                rng,
                &[
                    "https://example.com/m",
                    "asset://a",
                    "",
                    "data:video/mp4;base64,AAAA",
                ],
            );
            let mut item = json!({"type": kind, key: {"url": url}});
            match rng.random_range(0..6) {
                0 => item["role"] = json!("first_frame"),
                1 | 2 => {}
                _ => item["role"] = json!(role),
            }
            content.push(item);
        }
    }
    if rng.random_bool(0.1) {
        let id = *pick(rng, &["cgt-20260101-draft", ""]);
        content.push(json!({"type": "draft_task", "draft_task": {"id": id}}));
    }
    // Shuffle sometimes: order decides which item an error names.
    if rng.random_bool(0.3) {
        use rand::seq::SliceRandom;
        content.shuffle(rng);
    }
    let model = if rng.random_bool(0.03) {
        String::new()
    } else if rng.random_bool(0.05) {
        "ep-20260101-custom".to_string()
    } else {
        pick(rng, models).clone()
    };
    let mut b = json!({"model": model, "content": content});
    let mut maybe = |rng: &mut StdRng, key: &str, values: &[Value]| {
        if rng.random_bool(0.22) {
            b[key] = pick(rng, values).clone();
        }
    };
    maybe(
        rng,
        "resolution",
        &[
            json!("480p"),
            json!("720p"),
            json!("1080p"),
            json!("4k"),
            json!("1080P"),
            json!("2k"),
        ],
    );
    maybe(
        rng,
        "ratio",
        &[
            json!("16:9"),
            json!("9:16"),
            json!("1:1"),
            json!("4:3"),
            json!("3:4"),
            json!("21:9"),
            json!("adaptive"),
            json!("5:4"),
            json!("2:1"),
        ],
    );
    maybe(
        rng,
        "duration",
        &[
            json!(-1),
            json!(0),
            json!(2),
            json!(3),
            json!(4),
            json!(5),
            json!(10),
            json!(12),
            json!(13),
            json!(15),
            json!(16),
            json!(31),
        ],
    );
    maybe(
        rng,
        "frames",
        &[json!(29), json!(30), json!(121), json!(289), json!(293)],
    );
    maybe(
        rng,
        "seed",
        &[
            json!(-2),
            json!(-1),
            json!(0),
            json!(42),
            json!(2_147_483_647),
            json!(4_294_967_295_i64),
            json!(4_294_967_296_i64),
        ],
    );
    maybe(rng, "camera_fixed", &[json!(true), json!(false)]);
    maybe(rng, "watermark", &[json!(true), json!(false)]);
    maybe(rng, "generate_audio", &[json!(true), json!(false)]);
    maybe(
        rng,
        "service_tier",
        &[
            json!("default"),
            json!("flex"),
            json!("flex"),
            json!("priority"),
            json!("Flex"),
        ],
    );
    maybe(
        rng,
        "execution_expires_after",
        &[
            json!(1),
            json!(1800),
            json!(3600),
            json!(172_800),
            json!(259_200),
            json!(259_201),
        ],
    );
    maybe(rng, "draft", &[json!(true), json!(false)]);
    maybe(rng, "return_last_frame", &[json!(true), json!(false)]);
    maybe(
        rng,
        "priority",
        &[json!(-1), json!(0), json!(1), json!(9), json!(10)],
    );
    maybe(
        rng,
        "tools",
        &[
            json!([]),
            json!([{"type": "web_search"}]),
            json!([{"type": "code"}]),
        ],
    );
    maybe(
        rng,
        "output_format",
        &[json!("mp4"), json!("mov"), json!("webm")],
    );
    maybe(
        rng,
        "omni_reference_task_type",
        &[
            json!("auto"),
            json!("reference"),
            json!("edit"),
            json!("extend"),
            json!("edit_video"),
        ],
    );
    maybe(
        rng,
        "callback_url",
        &[
            json!("https://hooks.example.com/cb"),
            json!("ftp://x/y"),
            json!("not a url"),
        ],
    );
    b
}

/// What one side answered, reduced to what the two must agree on.
#[derive(Debug, PartialEq)]
enum Verdict {
    Refused {
        code: String,
        param: String,
    },
    Accepted {
        resolution: String,
        ratio: String,
        duration: Option<i64>,
        frames: Option<i64>,
        seed: Option<i64>,
        flex: bool,
        expires_after: i64,
        size: Option<(u32, u32)>,
        videos: u32,
        prompt: String,
        failure: Option<String>,
    },
}

fn seedq_verdict(req: &CreateTaskRequest, c: &Catalogue) -> Verdict {
    match request::check(req, c) {
        Err(e) => Verdict::Refused {
            code: e.ark_code().to_string(),
            param: e.param,
        },
        Ok(e) => Verdict::Accepted {
            resolution: e.resolution,
            ratio: e.concrete_ratio,
            duration: e.duration,
            frames: e.frames,
            seed: e.seed,
            flex: e.flex,
            expires_after: e.expires_after,
            size: e.size,
            videos: e.video_inputs,
            prompt: e.prompt,
            failure: e.task_type_failure.map(|(code, _)| code),
        },
    }
}

fn sim_verdict(req: &CreateTaskRequest, c: &Catalogue) -> Verdict {
    match judge(req, c) {
        Err(Refusal { code, param, .. }) => Verdict::Refused {
            code: code.to_string(),
            param,
        },
        Ok(a) => Verdict::Accepted {
            resolution: a.resolution,
            ratio: a.concrete_ratio,
            duration: a.duration,
            frames: a.frames,
            seed: a.seed,
            flex: a.flex,
            expires_after: a.expires_after,
            size: a.size,
            videos: a.video_inputs,
            prompt: a.prompt,
            failure: a.task_type_failure.map(|(code, _)| code),
        },
    }
}

#[test]
fn the_simulator_and_seedq_read_generated_bodies_alike() {
    let catalogue = Catalogue::default();
    let models: Vec<String> = catalogue.iter().map(|(id, _)| id.clone()).collect();
    let pools = Pools::new();
    let mut rng = StdRng::seed_from_u64(0x5eed_a11c);
    let (mut accepted, mut refused) = (0, 0);
    let mut params = BTreeSet::new();
    let mut disagreements = Vec::new();
    for _ in 0..20_000 {
        let b = if rng.random_bool(0.5) {
            tame_body(&mut rng, &catalogue, &models, &pools)
        } else {
            wild_body(&mut rng, &models, &pools)
        };
        let req: CreateTaskRequest =
            serde_json::from_value(b.clone()).expect("generated bodies parse");
        let (ours, sim) = (
            seedq_verdict(&req, &catalogue),
            sim_verdict(&req, &catalogue),
        );
        match &sim {
            Verdict::Accepted { .. } => accepted += 1,
            Verdict::Refused { code, param } => {
                refused += 1;
                params.insert(format!("{code} {param}"));
            }
        }
        if ours != sim && disagreements.len() < 5 {
            disagreements.push(format!("body {b}\n  seedq: {ours:?}\n  sim:   {sim:?}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "the two readings of Ark disagree:\n{}",
        disagreements.join("\n")
    );
    // The generator must reach both outcomes and every rule, or agreement means little.
    assert!(
        accepted >= 2_000 && refused >= 2_000,
        "{accepted} accepted, {refused} refused"
    );
    for p in [
        "MissingParameter model",
        "InvalidParameter content",
        "InvalidParameter resolution",
        "InvalidParameter ratio",
        "InvalidParameter.TaskTypeConstraint ratio",
        "InvalidParameter frames",
        "InvalidParameter duration",
        "InvalidParameter seed",
        "InvalidParameter camera_fixed",
        "InvalidParameter service_tier",
        "InvalidParameter execution_expires_after",
        "InvalidParameter draft",
        "InvalidParameter priority",
        "InvalidParameter tools",
        "InvalidParameter tools[].type",
        "InvalidParameter output_format",
        "InvalidParameter omni_reference_task_type",
        "InvalidParameter callback_url",
    ] {
        assert!(
            params.contains(p),
            "no generated body was refused with {p}; seen {params:?}"
        );
    }
}
