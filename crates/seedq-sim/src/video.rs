//! Videos: what a succeeded task serves, and the blocking work of making it.
//!
//! Owns the rendered-video record ([`Rendered`]), the rendered size (the nominal pixel size
//! divided by `video_downscale`, even and at least 16 px), the inspection of input images
//! (hashes for introspection, the first frame for image-to-video) and the call into
//! [`seedq_media::render`]. [`render`] is CPU-bound and must run on a blocking thread.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::rules;
use seedq_ark::catalogue;
use seedq_ark::wire::{ContentItem, CreateTaskRequest};

/// Smallest side of a rendered video: H.264 macroblocks are 16 px.
const MIN_VIDEO_SIDE: u32 = 16;

/// A rendered video, kept in memory for the file routes.
#[derive(Debug)]
pub struct Rendered {
    pub mp4: Bytes,
    pub last_frame_png: Bytes,
    pub mp4_sha256: String,
    pub last_frame_sha256: String,
    pub width: u32,
    pub height: u32,
}

/// (width, height, frames, SHA-256 of the first-frame PNG): what makes two renders equal
/// when the seed is ignored.
pub type VideoKey = (u32, u32, u32, Option<[u8; 32]>);

/// One render to do on a blocking thread.
pub struct RenderJob {
    pub id: String,
    pub spec_width: u32,
    pub spec_height: u32,
    pub frames: u32,
    pub seed: u64,
    pub first_frame_png: Option<Bytes>,
}

/// The rendered size: nominal size / downscale, even, at least [`MIN_VIDEO_SIDE`].
pub fn video_size((w, h): (u32, u32), downscale: u32) -> (u32, u32) {
    let f = |v: u32| ((v / downscale.max(1)) & !1).max(MIN_VIDEO_SIDE);
    (f(w), f(h))
}

/// SHA-256 of every image item's `data:` bytes (None for URLs), and the first-frame PNG.
pub fn inspect_images(req: &CreateTaskRequest) -> (Vec<Option<String>>, Option<Bytes>) {
    let mut hashes = Vec::new();
    let mut first = None;
    let mut seen_first = false;
    for item in &req.content {
        let ContentItem::ImageUrl { image_url, role } = item else {
            continue;
        };
        let bytes = image_url
            .url
            .starts_with("data:")
            .then(|| rules::data_url_bytes(&image_url.url))
            .flatten();
        hashes.push(bytes.as_ref().map(|b| hex::encode(Sha256::digest(b))));
        let is_first = matches!(role.as_deref(), None | Some("first_frame"));
        if is_first && !seen_first {
            seen_first = true;
            first = bytes
                .filter(|b| imagesize::image_type(b).is_ok_and(|t| t == imagesize::ImageType::Png))
                .map(Bytes::from);
        }
    }
    (hashes, first)
}

/// The blocking part: decode the first frame, encode the clip, hash the results.
pub fn render(job: RenderJob) -> Result<Rendered, String> {
    use seedq_media as media;
    let first_frame = match &job.first_frame_png {
        Some(png) => Some(media::decode_png(png).map_err(|e| format!("first frame: {e}"))?),
        None => None,
    };
    let spec = media::VideoSpec {
        width: job.spec_width,
        height: job.spec_height,
        frames: job.frames,
        fps: u32::try_from(catalogue::FPS).unwrap_or(24),
        seed: job.seed,
        first_frame,
    };
    let out = media::render(&spec).map_err(|e| e.to_string())?;
    Ok(Rendered {
        mp4_sha256: hex::encode(Sha256::digest(&out.mp4)),
        last_frame_sha256: hex::encode(Sha256::digest(&out.last_frame_png)),
        mp4: Bytes::from(out.mp4),
        last_frame_png: Bytes::from(out.last_frame_png),
        width: job.spec_width,
        height: job.spec_height,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn video_size_is_even_and_at_least_16() {
        assert_eq!(video_size((1248, 704), 16), (78, 44));
        assert_eq!(video_size((1280, 720), 1), (1280, 720));
        assert_eq!(video_size((1112, 834), 16), (68, 52));
        assert_eq!(video_size((640, 640), 1000), (16, 16));
    }
}
