//! Renders the Ark simulator's videos: a deterministic, seed-coloured moving
//! picture encoded as real H.264 (openh264) in a fast-start MP4 (muxide), plus
//! the PNG helpers for first/last frames.
//!
//! # Picture
//! Without a first frame: a diagonal two-colour gradient that scrolls every
//! frame, crossed by a vertical bar of a third colour that sweeps left to
//! right. The three colours come from `seed`, so different seeds give visibly
//! (and byte-wise) different videos, and the same spec always gives the same
//! bytes (single-threaded openh264, no timestamps or randomness in the file).
//!
//! With a first frame: frame 0 is that image scaled (nearest neighbour) to the
//! output size, unchanged; later frames are the same image with the seed's
//! bar blended over it, so motion is visible.
//!
//! # Sizes
//! H.264 4:2:0 can only crop in steps of two pixels, and openh264 needs even
//! dimensions and refuses pictures narrower or shorter than 16 pixels. So an
//! odd width or height is rounded **up** to the next even number, and anything
//! below 16 is raised to 16 ([`encoded_size`]): 65x37 becomes 66x38, 8x8
//! becomes 16x16. The MP4 (tkhd and avc1), the SPS and the last-frame PNG all
//! carry that encoded size: the file never claims a size that is not in the
//! bitstream. Encoded sizes up to 3840x2160 (either orientation) are accepted,
//! which is openh264's limit.
//!
//! # Timing
//! muxide uses a fixed 90 kHz track timescale, so `fps` must divide 90 000
//! (1, 2, ..., 24, 25, 30, 50, 60, ...): then every frame lasts exactly
//! `90000 / fps` ticks and the duration is exactly `frames / fps`. muxide gives
//! the last sample the previous sample's duration; with a single frame there is
//! no previous sample (it would get 1 tick), so at least two frames are needed.

use super::MUXIDE_TIMESCALE;
use std::io::Cursor;

use muxide::api::{MuxerBuilder, VideoCodec};
use openh264::OpenH264API;
use openh264::encoder::{
    Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};

use super::MediaError;

/// openh264's largest frame: 3840x2160 in either orientation.
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;
/// openh264 refuses pictures narrower or shorter than this.
const MIN_SIDE: u32 = 16;

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoSpec {
    /// Requested width; odd values are rounded up to even (see [`encoded_size`]).
    pub width: u32,
    /// Requested height; odd values are rounded up to even.
    pub height: u32,
    /// Number of frames (samples) in the file; at least 2.
    pub frames: u32,
    /// Frames per second; must divide 90 000.
    pub fps: u32,
    /// Chooses the colours; the same seed always renders the same bytes.
    pub seed: u64,
    /// Image-to-video: frame 0 is this image scaled to the output size.
    pub first_frame: Option<RgbImage>,
}

/// An 8-bit RGB image, row-major, three bytes per pixel, no row padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// RGB8, row-major; `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Checks that the buffer length matches the stated size and that the size is not zero.
    pub fn validate(&self) -> Result<(), MediaError> {
        let expected = rgb_len(self.width, self.height);
        if self.width == 0 || self.height == 0 || Some(self.pixels.len()) != expected {
            return Err(MediaError::ImageSize {
                width: self.width,
                height: self.height,
                len: self.pixels.len(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        Ok(())
    }
}

/// A rendered clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedVideo {
    /// The complete MP4 file (ftyp, moov, mdat).
    pub mp4: Vec<u8>,
    /// PNG of the last frame exactly as it was fed to the encoder, at the encoded size.
    pub last_frame_png: Vec<u8>,
}

/// The size that [`render`] actually encodes for a requested size: odd
/// dimensions rounded up to even (H.264 4:2:0 cannot represent odd sizes) and
/// raised to at least 16 (openh264's minimum).
pub fn encoded_size(width: u32, height: u32) -> (u32, u32) {
    let side = |v: u32| v.saturating_add(v & 1).max(MIN_SIDE);
    (side(width), side(height))
}

/// Renders `spec` to an H.264 MP4 and a PNG of its last frame.
pub fn render(spec: &VideoSpec) -> Result<RenderedVideo, MediaError> {
    let (width, height) = check_spec(spec)?;
    let ticks_per_frame = MUXIDE_TIMESCALE / spec.fps;

    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config(spec))
        .map_err(|e| MediaError::Encode(e.to_string()))?;

    let scaled = spec
        .first_frame
        .as_ref()
        .map(|img| scale_nearest(img, width, height));
    let palette = Palette::from_seed(spec.seed);
    let mut rgb = vec![0u8; (width as usize) * (height as usize) * 3];
    let mut yuv = YUVBuffer::new(width as usize, height as usize);

    let mut mp4 = Vec::new();
    let mut muxer = MuxerBuilder::new(&mut mp4)
        .video(VideoCodec::H264, width, height, f64::from(spec.fps))
        .with_fast_start(true)
        .build()?;
    let mut sample = Vec::new();
    for index in 0..spec.frames {
        paint_frame(&mut rgb, width, height, index, &palette, scaled.as_deref());
        yuv.read_rgb8(RgbSliceU8::new(&rgb, (width as usize, height as usize)));

        let tick = u64::from(index) * u64::from(ticks_per_frame);
        let stream = encoder
            .encode_at(&yuv, openh264::Timestamp::from_millis(tick / 90))
            .map_err(|e| MediaError::Encode(e.to_string()))?;
        let frame_type = stream.frame_type();
        sample.clear();
        stream.write_vec(&mut sample);
        // Frame skipping is disabled, so an empty result means openh264 misbehaved;
        // silently dropping it would break the promised frame count.
        if sample.is_empty() || frame_type == FrameType::Skip {
            return Err(MediaError::Encode(format!(
                "encoder produced no data for frame {index}"
            )));
        }
        // Only IDR pictures are safe random-access points (sync samples).
        let keyframe = frame_type == FrameType::IDR;
        // Ticks are integers below 2^53, so tick / 90000 survives muxide's
        // `(secs * 90000).round()` exactly.
        muxer.write_video(tick as f64 / f64::from(MUXIDE_TIMESCALE), &sample, keyframe)?;
    }
    muxer.finish()?;

    let last_frame_png = encode_png(&RgbImage {
        width,
        height,
        pixels: rgb,
    })?;
    Ok(RenderedVideo {
        mp4,
        last_frame_png,
    })
}

/// Decodes a PNG (grey, grey+alpha, RGB, RGBA or palette; any bit depth, reduced
/// to 8 bits) into RGB8. Alpha is dropped, not blended: the simulator only needs
/// the colours.
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, MediaError> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Expands palettes and sub-byte depths and strips 16-bit to 8, so only the four
    // 8-bit layouts below can come out.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info()?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| MediaError::UnsupportedPng("image too large for memory".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf)?;
    if info.bit_depth != png::BitDepth::Eight {
        return Err(MediaError::UnsupportedPng(format!(
            "bit depth {:?} after normalisation",
            info.bit_depth
        )));
    }
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(MediaError::UnsupportedPng(
                "palette was not expanded".into(),
            ));
        }
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for row in buf.chunks(info.line_size).take(h) {
        for px in row[..w * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => pixels.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => pixels.extend_from_slice(&px[..3]),
            }
        }
    }
    let image = RgbImage {
        width: info.width,
        height: info.height,
        pixels,
    };
    image.validate()?;
    Ok(image)
}

/// Encodes an RGB8 image as an 8-bit RGB PNG (fast compression: these are
/// previews, and the simulator renders many of them).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, MediaError> {
    img.validate()?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, img.width, img.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&img.pixels)?;
    writer.finish()?;
    Ok(out)
}

/// `width * height * 3`, or `None` if it does not fit in memory addressing.
fn rgb_len(width: u32, height: u32) -> Option<usize> {
    (width as usize)
        .checked_mul(height as usize)?
        .checked_mul(3)
}

/// Validates the spec and returns the encoded (even) size.
fn check_spec(spec: &VideoSpec) -> Result<(u32, u32), MediaError> {
    let invalid = |msg: String| Err(MediaError::InvalidSpec(msg));
    if spec.width == 0 || spec.height == 0 {
        return invalid(format!(
            "size {}x{} has a zero side",
            spec.width, spec.height
        ));
    }
    let (width, height) = encoded_size(spec.width, spec.height);
    if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
        return invalid(format!(
            "size {width}x{height} exceeds openh264's {MAX_LONG_SIDE}x{MAX_SHORT_SIDE}"
        ));
    }
    if spec.frames < 2 {
        return invalid(format!(
            "{} frames requested, at least 2 are needed",
            spec.frames
        ));
    }
    if spec.fps == 0 || !MUXIDE_TIMESCALE.is_multiple_of(spec.fps) {
        return invalid(format!(
            "fps {} does not divide the 90 kHz timescale, so frame times would not be exact",
            spec.fps
        ));
    }
    if let Some(img) = &spec.first_frame {
        img.validate()?;
    }
    Ok((width, height))
}

fn encoder_config(spec: &VideoSpec) -> EncoderConfig {
    EncoderConfig::new()
        // Every input frame must become exactly one sample.
        .skip_frames(false)
        // Constant QP (openh264's default 26) instead of a bitrate target: the
        // bitrate modes warn on stderr when frame skipping is off, and a fixed QP
        // also keeps the output independent of timing.
        .rate_control_mode(RateControlMode::Off)
        // One thread keeps the output deterministic and leaves the shared cores alone.
        .num_threads(1)
        .max_frame_rate(FrameRate::from_hz(spec.fps as f32))
        // Speed matters more than quality for a synthetic picture.
        .complexity(Complexity::Low)
        // One-second GOPs, like typical delivery encodes, so stitched or trimmed
        // output has regular random-access points.
        .intra_frame_period(IntraFramePeriod::from_num_frames(spec.fps))
}

/// Three colours derived from the seed.
#[derive(Debug, Clone, Copy)]
struct Palette {
    a: [u8; 3],
    b: [u8; 3],
    bar: [u8; 3],
}

impl Palette {
    fn from_seed(seed: u64) -> Self {
        let mut state = seed;
        let mut colour = || {
            let v = splitmix64(&mut state).to_le_bytes();
            [v[0], v[1], v[2]]
        };
        Palette {
            a: colour(),
            b: colour(),
            bar: colour(),
        }
    }
}

/// SplitMix64: a tiny, well-mixed generator, so neighbouring seeds get unrelated colours.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes `from` towards `to` by `t / 255`.
fn lerp(from: [u8; 3], to: [u8; 3], t: u32) -> [u8; 3] {
    let mix = |a: u8, b: u8| ((u32::from(a) * (255 - t) + u32::from(b) * t) / 255) as u8;
    [
        mix(from[0], to[0]),
        mix(from[1], to[1]),
        mix(from[2], to[2]),
    ]
}

/// Nearest-neighbour scaling to `width` x `height`; returns RGB8 bytes.
fn scale_nearest(img: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let (sw, sh) = (img.width as usize, img.height as usize);
    let (w, h) = (width as usize, height as usize);
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let sy = y * sh / h;
        for x in 0..w {
            let sx = x * sw / w;
            let i = (sy * sw + sx) * 3;
            out.extend_from_slice(&img.pixels[i..i + 3]);
        }
    }
    out
}

/// Paints frame `index` into `rgb` (RGB8, `width * height * 3` bytes).
fn paint_frame(
    rgb: &mut [u8],
    width: u32,
    height: u32,
    index: u32,
    palette: &Palette,
    first_frame: Option<&[u8]>,
) {
    let (w, h) = (width as usize, height as usize);
    // Motion is scaled to the picture so it is visible at 64x36 and at 1080p alike.
    let speed = (w / 48).max(1);
    let t = index as usize;
    let period = (w.max(h) / 2).max(8);
    let shift = t * speed % period;
    let bar_width = (w / 10).max(2);
    let bar_x = t * speed * 2 % w;
    let in_bar = |x: usize| (x + w - bar_x) % w < bar_width;

    for y in 0..h {
        let row = &mut rgb[y * w * 3..(y + 1) * w * 3];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let colour = match first_frame {
                Some(image) => {
                    let i = (y * w + x) * 3;
                    let base = [image[i], image[i + 1], image[i + 2]];
                    // Frame 0 is the image itself; the overlay starts with frame 1.
                    if index > 0 && in_bar(x) {
                        lerp(base, palette.bar, 128)
                    } else {
                        base
                    }
                }
                None if in_bar(x) => palette.bar,
                None => {
                    // Triangle wave along the diagonal, scrolling with `shift`.
                    let phase = (x + y / 2 + shift) % period;
                    let ramp = (phase.min(period - phase) * 510 / period).min(255);
                    lerp(palette.a, palette.b, ramp as u32)
                }
            };
            px.copy_from_slice(&colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_bytes;
    use std::time::{Duration, Instant};

    fn spec(width: u32, height: u32, frames: u32, seed: u64) -> VideoSpec {
        VideoSpec {
            width,
            height,
            frames,
            fps: 24,
            seed,
            first_frame: None,
        }
    }

    /// `frames / fps` as a Duration, truncated to whole nanoseconds like the prober.
    fn exact(frames: u64, fps: u64) -> Duration {
        Duration::from_nanos(frames * 1_000_000_000 / fps)
    }

    fn test_image(width: u32, height: u32) -> RgbImage {
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                pixels.extend_from_slice(&[(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8]);
            }
        }
        RgbImage {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn render_then_probe_is_exact_for_several_sizes() {
        for (w, h, frames) in [
            (96, 54, 13),
            (64, 36, 5),
            (65, 37, 4),
            (33, 17, 3),
            (16, 16, 2),
            (1, 1, 2),
            (7, 40, 2),
        ] {
            let video = render(&spec(w, h, frames, 7)).expect("render");
            let info = probe_bytes(&video.mp4).expect("probe");
            let (ew, eh) = encoded_size(w, h);
            assert_eq!((info.width, info.height), (ew, eh), "{w}x{h}");
            assert_eq!(info.frames, u64::from(frames), "{w}x{h}");
            assert_eq!(info.duration, exact(u64::from(frames), 24), "{w}x{h}");
            assert_eq!(info.timescale, 90_000);
            assert_eq!(info.codec, "avc1");
        }
    }

    #[test]
    fn odd_sizes_round_up_to_even() {
        assert_eq!(encoded_size(65, 37), (66, 38));
        assert_eq!(encoded_size(96, 54), (96, 54));
        assert_eq!(encoded_size(1, 1), (16, 16));
        assert_eq!(encoded_size(17, 15), (18, 16));
        assert_eq!(encoded_size(1920, 1088), (1920, 1088));
        let video = render(&spec(65, 37, 2, 1)).expect("render");
        let last = decode_png(&video.last_frame_png).expect("png");
        assert_eq!((last.width, last.height), (66, 38));
    }

    #[test]
    fn other_frame_rates_are_exact_too() {
        for fps in [25, 30, 60] {
            let s = VideoSpec {
                fps,
                ..spec(64, 36, 7, 3)
            };
            let info = probe_bytes(&render(&s).expect("render").mp4).expect("probe");
            assert_eq!(info.duration, exact(7, u64::from(fps)), "fps {fps}");
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = render(&spec(64, 36, 6, 42)).expect("render");
        let b = render(&spec(64, 36, 6, 42)).expect("render");
        let c = render(&spec(64, 36, 6, 43)).expect("render");
        assert_eq!(a, b);
        assert_ne!(a.mp4, c.mp4);
        assert_ne!(a.last_frame_png, c.last_frame_png);
    }

    #[test]
    fn moov_comes_before_mdat() {
        let mp4 = render(&spec(64, 36, 3, 1)).expect("render").mp4;
        let mut names = Vec::new();
        let mut pos = 0usize;
        while pos + 8 <= mp4.len() {
            let size = u32::from_be_bytes(mp4[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            names.push(String::from_utf8_lossy(&mp4[pos + 4..pos + 8]).into_owned());
            assert!(size >= 8, "box size {size} at {pos}");
            pos += size;
        }
        assert_eq!(pos, mp4.len());
        let moov = names.iter().position(|n| n == "moov").expect("moov");
        let mdat = names.iter().position(|n| n == "mdat").expect("mdat");
        assert!(moov < mdat, "{names:?}");
    }

    #[test]
    fn last_frame_png_matches_the_last_painted_frame() {
        let s = spec(96, 54, 9, 5);
        let video = render(&s).expect("render");
        let last = decode_png(&video.last_frame_png).expect("png");
        assert_eq!((last.width, last.height), (96, 54));
        let mut expected = vec![0u8; 96 * 54 * 3];
        paint_frame(&mut expected, 96, 54, 8, &Palette::from_seed(5), None);
        assert_eq!(last.pixels, expected);
        // The picture moves: the previous frame differs.
        let mut previous = vec![0u8; 96 * 54 * 3];
        paint_frame(&mut previous, 96, 54, 7, &Palette::from_seed(5), None);
        assert_ne!(previous, expected);
    }

    #[test]
    fn first_frame_is_the_scaled_image_then_moves() {
        let img = test_image(20, 10);
        let scaled = scale_nearest(&img, 64, 36);
        let palette = Palette::from_seed(9);
        let mut frame0 = vec![0u8; 64 * 36 * 3];
        paint_frame(&mut frame0, 64, 36, 0, &palette, Some(&scaled));
        assert_eq!(frame0, scaled);
        let mut frame1 = vec![0u8; 64 * 36 * 3];
        paint_frame(&mut frame1, 64, 36, 1, &palette, Some(&scaled));
        assert_ne!(frame1, scaled);
        // Nearest neighbour: the top-left output pixel is the top-left source pixel.
        assert_eq!(&scaled[..3], &img.pixels[..3]);

        let with = VideoSpec {
            first_frame: Some(img),
            ..spec(64, 36, 4, 9)
        };
        let a = render(&with).expect("render");
        let b = render(&spec(64, 36, 4, 9)).expect("render");
        assert_ne!(a.mp4, b.mp4);
        assert_ne!(a.last_frame_png, b.last_frame_png);
        let info = probe_bytes(&a.mp4).expect("probe");
        assert_eq!((info.width, info.height, info.frames), (64, 36, 4));
    }

    #[test]
    fn invalid_specs_are_refused() {
        let bad = [
            VideoSpec {
                width: 0,
                ..spec(64, 36, 4, 0)
            },
            VideoSpec {
                frames: 1,
                ..spec(64, 36, 4, 0)
            },
            VideoSpec {
                fps: 0,
                ..spec(64, 36, 4, 0)
            },
            VideoSpec {
                fps: 7,
                ..spec(64, 36, 4, 0)
            },
            spec(4000, 100, 4, 0),
            VideoSpec {
                first_frame: Some(RgbImage {
                    width: 2,
                    height: 2,
                    pixels: vec![0; 11],
                }),
                ..spec(64, 36, 4, 0)
            },
        ];
        for s in bad {
            assert!(
                render(&s).is_err(),
                "{}x{} frames {} fps {}",
                s.width,
                s.height,
                s.frames,
                s.fps
            );
        }
        let err = render(&VideoSpec {
            fps: 7,
            ..spec(64, 36, 4, 0)
        })
        .expect_err("fps 7");
        assert!(err.to_string().contains("fps 7"), "{err}");
    }

    #[test]
    fn png_round_trip_and_other_layouts() {
        let img = test_image(5, 3);
        let back = decode_png(&encode_png(&img).expect("encode")).expect("decode");
        assert_eq!(back, img);

        let encode = |color: png::ColorType, data: &[u8]| {
            let mut out = Vec::new();
            let mut enc = png::Encoder::new(&mut out, 2, 1);
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().expect("header");
            writer.write_image_data(data).expect("data");
            writer.finish().expect("finish");
            out
        };
        let grey = decode_png(&encode(png::ColorType::Grayscale, &[10, 200])).expect("grey");
        assert_eq!(grey.pixels, [10, 10, 10, 200, 200, 200]);
        let rgba =
            decode_png(&encode(png::ColorType::Rgba, &[1, 2, 3, 4, 5, 6, 7, 8])).expect("rgba");
        assert_eq!(rgba.pixels, [1, 2, 3, 5, 6, 7]);
        let grey_alpha =
            decode_png(&encode(png::ColorType::GrayscaleAlpha, &[9, 0, 8, 255])).expect("ga");
        assert_eq!(grey_alpha.pixels, [9, 9, 9, 8, 8, 8]);

        assert!(decode_png(b"not a png").is_err());
        let short = RgbImage {
            width: 2,
            height: 2,
            pixels: vec![0; 3],
        };
        assert!(matches!(
            encode_png(&short),
            Err(MediaError::ImageSize { expected: 12, .. })
        ));
    }

    /// The size tests use for the simulator; also prints the time it takes.
    #[test]
    fn renders_a_five_second_clip_quickly() {
        let started = Instant::now();
        let video = render(&spec(96, 54, 121, 11)).expect("render");
        let elapsed = started.elapsed();
        eprintln!(
            "96x54x121 rendered in {elapsed:?} ({} bytes)",
            video.mp4.len()
        );
        let info = probe_bytes(&video.mp4).expect("probe");
        assert_eq!(info.frames, 121);
        assert_eq!(info.duration, exact(121, 24));
    }

    /// The largest size the simulator is expected to produce.
    #[test]
    fn renders_1080p() {
        let started = Instant::now();
        let first_frame = Some(test_image(40, 30));
        let video = render(&VideoSpec {
            first_frame,
            ..spec(1920, 1088, 2, 4)
        })
        .expect("render");
        eprintln!(
            "1920x1088x2 rendered in {:?} ({} bytes)",
            started.elapsed(),
            video.mp4.len()
        );
        let info = probe_bytes(&video.mp4).expect("probe");
        assert_eq!((info.width, info.height, info.frames), (1920, 1088, 2));
        let last = decode_png(&video.last_frame_png).expect("png");
        assert_eq!((last.width, last.height), (1920, 1088));
    }

    /// Runs only where ffprobe is installed: an independent reader must agree.
    #[test]
    fn ffprobe_agrees_when_available() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clip.mp4");
        std::fs::write(&path, render(&spec(66, 38, 10, 2)).expect("render").mp4).expect("write");
        let Ok(out) = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args([
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames",
                "-of",
                "csv=p=0",
            ])
            .arg(&path)
            .output()
        else {
            return; // not installed
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "h264,66,38,10");
    }
}
