//! The tutorial's inline text commands: `--rs 720p --rt 16:9 --dur 5 --fps 24 --wm true …`.
//!
//! `parse` takes the commands out of a prompt and returns the prompt without them; `render`
//! appends them again. Parsing then rendering is the identity on the parameters. Tokens that
//! look like commands but are not known ones stay in the prompt text: a prompt may contain
//! `--` for reasons of its own.

use super::Invalid;

/// Parameters that may travel as inline commands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InlineParams {
    pub resolution: Option<String>,
    pub ratio: Option<String>,
    pub duration: Option<i64>,
    pub frames: Option<i64>,
    pub framespersecond: Option<i64>,
    pub seed: Option<i64>,
    pub camera_fixed: Option<bool>,
    pub watermark: Option<bool>,
}

impl InlineParams {
    /// True when no command was present.
    pub fn is_empty(&self) -> bool {
        *self == InlineParams::default()
    }
}

/// The commands, as (long name, short name).
const COMMANDS: [(&str, &str); 8] = [
    ("resolution", "rs"),
    ("ratio", "rt"),
    ("duration", "dur"),
    ("frames", "frames"),
    ("framespersecond", "fps"),
    ("seed", "seed"),
    ("camerafixed", "cf"),
    ("watermark", "wm"),
];

fn long_name(flag: &str) -> Option<&'static str> {
    COMMANDS
        .iter()
        .find(|(long, short)| flag == *long || flag == *short)
        .map(|(long, _)| *long)
}

/// Splits `text` into the prompt and its inline commands.
///
/// The prompt keeps its own whitespace (newlines included: a multi-line prompt stays
/// multi-line); a removed command takes the whitespace before it along, and the result is
/// trimmed at both ends.
///
/// Ark validates only `--resolution` and `--duration` in the text: a bad duration is a 400
/// naming `contents[N].text.duration` (tests/golden live-notes-sd25ext-002/004,
/// live-notes-adcreative-024, live). Every other command with a value that does not parse is
/// swallowed without an error (`--fps 30`, `--seed x`, live-notes-adcreative-022/023): such
/// tokens stay in the prompt as written and set nothing. `index` is the text item's position
/// in `content`, for the error's param.
///
/// # Errors
/// `--dur`/`--duration` or `--rs`/`--resolution` with a missing or unparsable value.
pub fn parse(text: &str, model: &str, index: usize) -> Result<(String, InlineParams), Invalid> {
    let mut params = InlineParams::default();
    let mut prompt = String::with_capacity(text.len());
    let mut tokens = tokens_with_gaps(text).peekable();
    while let Some((gap, tok)) = tokens.next() {
        let Some(name) = tok.strip_prefix("--").and_then(long_name) else {
            prompt.push_str(gap);
            prompt.push_str(tok);
            continue;
        };
        let param = format!("contents[{index}].text.{name}");
        let validated = matches!(name, "duration" | "resolution");
        let value = match tokens.peek() {
            Some((_, v)) if !v.starts_with("--") || v.parse::<i64>().is_ok() => *v,
            _ if validated => {
                return Err(Invalid::missing(&param, model, "a value after the command"));
            }
            _ => {
                // A command without a value: swallowed, left in the prompt.
                prompt.push_str(gap);
                prompt.push_str(tok);
                continue;
            }
        };
        let int = value.parse::<i64>().ok();
        let boolean = match value {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        let used = match name {
            "resolution" => {
                params.resolution = Some(value.to_string());
                true
            }
            "duration" => {
                let d =
                    int.ok_or_else(|| Invalid::malformed(&param, value, model, "whole seconds"))?;
                params.duration = Some(d);
                true
            }
            "ratio" => {
                params.ratio = Some(value.to_string());
                true
            }
            "frames" => {
                params.frames = int;
                int.is_some()
            }
            "framespersecond" => {
                params.framespersecond = int;
                int.is_some()
            }
            "seed" => {
                params.seed = int;
                int.is_some()
            }
            "camerafixed" => {
                params.camera_fixed = boolean;
                boolean.is_some()
            }
            "watermark" => {
                params.watermark = boolean;
                boolean.is_some()
            }
            _ => false,
        };
        if used {
            tokens.next();
        } else {
            prompt.push_str(gap);
            prompt.push_str(tok);
        }
    }
    Ok((prompt.trim().to_string(), params))
}

/// The whitespace-separated tokens of `text`, each with the whitespace just before it.
fn tokens_with_gaps(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(|c: char| !c.is_whitespace())?;
        let end = rest[start..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |e| start + e);
        let (gap, tok) = (&rest[..start], &rest[start..end]);
        rest = &rest[end..];
        Some((gap, tok))
    })
}

/// Appends `params` to `prompt` as short-form commands, in the tutorial's order.
pub fn render(prompt: &str, p: &InlineParams) -> String {
    let mut out = prompt.trim_end().to_string();
    let mut push = |flag: &str, v: String| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("--");
        out.push_str(flag);
        out.push(' ');
        out.push_str(&v);
    };
    if let Some(v) = &p.resolution {
        push("rs", v.clone());
    }
    if let Some(v) = &p.ratio {
        push("rt", v.clone());
    }
    if let Some(v) = p.duration {
        push("dur", v.to_string());
    }
    if let Some(v) = p.frames {
        push("frames", v.to_string());
    }
    if let Some(v) = p.framespersecond {
        push("fps", v.to_string());
    }
    if let Some(v) = p.watermark {
        push("wm", v.to_string());
    }
    if let Some(v) = p.seed {
        push("seed", v.to_string());
    }
    if let Some(v) = p.camera_fixed {
        push("cf", v.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "doubao-seedance-1-0-pro-250528";

    #[test]
    fn tutorial_example_parses() {
        let (prompt, p) = parse(
            "小猫对着镜头打哈欠。 --rs 720p --rt 16:9 --dur 5 --fps 24 --wm true --seed 11 --cf false",
            M,
            0,
        )
        .expect("parses");
        assert_eq!(prompt, "小猫对着镜头打哈欠。");
        assert_eq!(p.resolution.as_deref(), Some("720p"));
        assert_eq!(p.ratio.as_deref(), Some("16:9"));
        assert_eq!(p.duration, Some(5));
        assert_eq!(p.framespersecond, Some(24));
        assert_eq!(p.watermark, Some(true));
        assert_eq!(p.seed, Some(11));
        assert_eq!(p.camera_fixed, Some(false));
    }

    #[test]
    fn long_forms_parse() {
        let (prompt, p) = parse(
            "a cat --resolution 480p --ratio 1:1 --frames 57 --framespersecond 24 --watermark false --camerafixed true",
            M,
            0,
        )
        .expect("parses");
        assert_eq!(prompt, "a cat");
        assert_eq!(p.frames, Some(57));
        assert_eq!(p.camera_fixed, Some(true));
        assert_eq!(p.resolution.as_deref(), Some("480p"));
    }

    #[test]
    fn parse_render_round_trips() {
        let cases = [
            InlineParams::default(),
            InlineParams {
                resolution: Some("720p".into()),
                ratio: Some("16:9".into()),
                duration: Some(5),
                framespersecond: Some(24),
                watermark: Some(true),
                seed: Some(11),
                camera_fixed: Some(false),
                ..Default::default()
            },
            InlineParams {
                frames: Some(121),
                seed: Some(-1),
                ..Default::default()
            },
        ];
        for p in cases {
            let text = render("a dog runs  ", &p);
            let (prompt, back) = parse(&text, M, 0).expect("rendered text parses");
            assert_eq!(prompt, "a dog runs");
            assert_eq!(back, p, "{text}");
            assert_eq!(render(&prompt, &back), text);
        }
    }

    #[test]
    fn unknown_dashes_stay_in_the_prompt() {
        let (prompt, p) = parse("a -- b --loud music --dur 3", M, 0).expect("parses");
        assert_eq!(prompt, "a -- b --loud music");
        assert_eq!(p.duration, Some(3));
    }

    #[test]
    fn newlines_and_spacing_of_the_prompt_survive() {
        let text = "Shot 1: a fox wakes.\nShot 2: it runs --dur 5\n\n  Shot 3:\tsnow --rs 720p";
        let (prompt, p) = parse(text, M, 0).expect("parses");
        assert_eq!(
            prompt,
            "Shot 1: a fox wakes.\nShot 2: it runs\n\n  Shot 3:\tsnow"
        );
        assert_eq!(p.duration, Some(5));
        assert_eq!(p.resolution.as_deref(), Some("720p"));
        let (prompt, _) = parse("line one\nline two", M, 0).expect("parses");
        assert_eq!(prompt, "line one\nline two");
    }

    #[test]
    fn bad_durations_name_the_text_param_and_other_bad_values_are_swallowed() {
        // tests/golden live-notes-sd25ext-002 and live-notes-adcreative-024: the param Ark names.
        let e = parse("x --dur five", M, 0).err();
        assert_eq!(
            e.as_ref().map(|e| e.param.as_str()),
            Some("contents[0].text.duration")
        );
        assert!(e.is_some_and(|e| e.to_string().contains("five")));
        let e = parse("x --rs", M, 2).err().map(|e| e.param);
        assert_eq!(e.as_deref(), Some("contents[2].text.resolution"));
        // tests/golden live-notes-adcreative-023: swallowed, left in the prompt as written.
        let (prompt, p) = parse("x --wm yes --seed --fps many", M, 0).expect("swallowed");
        assert_eq!(prompt, "x --wm yes --seed --fps many");
        assert!(p.is_empty(), "{p:?}");
    }
}
