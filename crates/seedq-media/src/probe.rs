//! Describes an MP4's video track (size, frame count, duration, codec) using
//! the `mp4` crate's reader, which reads only the boxes, not the media data.
//!
//! Width and height come from the track header (tkhd), falling back to the
//! avc1 sample entry when a muxer left tkhd at zero. The duration comes from
//! the track's media header (mdhd) in the track's own timescale, which is
//! exact (muxide writes 90 kHz there); the movie header (mvhd) is only a
//! fallback because muxide writes it in milliseconds, rounded down.

use std::io::{Read, Seek};
use std::time::Duration;

use mp4::{Mp4Reader, Mp4Track, TrackType};

use super::MediaError;

/// What a video file holds, as far as callers need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mp4Info {
    pub width: u32,
    pub height: u32,
    /// Number of samples in the video track (one per frame).
    pub frames: u64,
    /// Track duration, truncated to whole nanoseconds.
    pub duration: Duration,
    /// Ticks per second of the track's media timeline (mdhd).
    pub timescale: u32,
    /// Sample entry four-character code, e.g. "avc1".
    pub codec: String,
}

/// Probes an MP4 of `size` bytes read from `reader`'s current position.
pub fn probe<R: Read + Seek>(reader: R, size: u64) -> Result<Mp4Info, MediaError> {
    let mp4 = Mp4Reader::read_header(reader, size)?;
    let track = video_track(&mp4).ok_or(MediaError::NoVideoTrack)?;
    let trak = &track.trak;

    let (mut width, mut height) = (
        u32::from(trak.tkhd.width.value()),
        u32::from(trak.tkhd.height.value()),
    );
    if width == 0 || height == 0 {
        // Mp4Track::width/height read the sample entry when it is avc1.
        (width, height) = (u32::from(track.width()), u32::from(track.height()));
    }

    let timescale = trak.mdia.mdhd.timescale;
    let duration = match ticks_to_duration(trak.mdia.mdhd.duration, timescale) {
        Some(d) if !d.is_zero() => d,
        _ => ticks_to_duration(mp4.moov.mvhd.duration, mp4.moov.mvhd.timescale).unwrap_or_default(),
    };
    let codec = track
        .box_type()
        .map(|fourcc| fourcc.to_string())
        .unwrap_or_else(|_| "unknown".to_owned());

    Ok(Mp4Info {
        width,
        height,
        frames: u64::from(track.sample_count()),
        duration,
        timescale,
        codec,
    })
}

/// Probes an MP4 held in memory.
pub fn probe_bytes(bytes: &[u8]) -> Result<Mp4Info, MediaError> {
    probe(std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// The video track with the lowest id (HashMap order is not stable, and a file
/// with several video tracks should always be described the same way).
pub(crate) fn video_track<R: Read + Seek>(mp4: &Mp4Reader<R>) -> Option<&Mp4Track> {
    mp4.tracks()
        .values()
        .filter(|t| matches!(t.track_type(), Ok(TrackType::Video)))
        .min_by_key(|t| t.track_id())
}

/// `ticks / timescale` seconds, truncated to whole nanoseconds; `None` for a
/// zero timescale. Done in u128 so no tick count can overflow.
pub(crate) fn ticks_to_duration(ticks: u64, timescale: u32) -> Option<Duration> {
    if timescale == 0 {
        return None;
    }
    let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(timescale);
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    // The remainder is below 10^9, so it fits in u32.
    let sub = (nanos % 1_000_000_000) as u32;
    Some(Duration::new(secs, sub))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VideoSpec, render};

    #[test]
    fn ticks_convert_exactly() {
        assert_eq!(
            ticks_to_duration(90_000, 90_000),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            ticks_to_duration(3_750, 90_000),
            Some(Duration::from_nanos(41_666_666))
        );
        assert_eq!(
            ticks_to_duration(u64::MAX, 1),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(ticks_to_duration(1, 0), None);
    }

    #[test]
    fn probes_a_rendered_clip_from_a_reader() {
        let spec = VideoSpec {
            width: 96,
            height: 54,
            frames: 12,
            fps: 24,
            seed: 1,
            first_frame: None,
        };
        let mp4 = render(&spec).expect("render").mp4;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.mp4");
        std::fs::write(&path, &mp4).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let size = file.metadata().expect("metadata").len();
        let info = probe(std::io::BufReader::new(file), size).expect("probe");
        assert_eq!(
            info,
            Mp4Info {
                width: 96,
                height: 54,
                frames: 12,
                duration: Duration::from_millis(500),
                timescale: 90_000,
                codec: "avc1".into(),
            }
        );
        assert_eq!(probe_bytes(&mp4).expect("probe bytes"), info);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(probe_bytes(b"").is_err());
        assert!(probe_bytes(b"\0\0\0\x08free").is_err());
        assert!(probe_bytes(&[0xff; 64]).is_err());
    }
}
