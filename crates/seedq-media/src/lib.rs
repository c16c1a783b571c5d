//! Real MP4 files: encoding (for the Ark simulator), probing and lossless stitching.
//!
//! Everything here is synchronous and, apart from [`stitch_files`] and
//! [`probe()`] on a file, works on memory only. Callers on an async runtime should
//! run it on a blocking thread (`tokio::task::spawn_blocking`): encoding and
//! stitching are CPU-bound, and stitching does file IO.
//!
//! - [`encode`]: renders a deterministic, seed-coloured H.264 clip with
//!   openh264 and muxes it with muxide (fast start: `moov` before `mdat`). Also
//!   the small PNG helpers the simulator needs for first/last frames.
//! - [`mod@probe`]: reads size, frame count, duration and codec of an MP4 with the
//!   `mp4` crate.
//! - [`stitch`]: joins same-codec H.264 clips without re-encoding, following
//!   rules verified against ffprobe/ffmpeg when the approach was chosen (90 kHz
//!   integer timeline, validation of every input before anything is written,
//!   temp file + rename).

/// muxide's fixed media timescale (ticks per second), shared by encoding and stitching.
pub(crate) const MUXIDE_TIMESCALE: u32 = 90_000;

pub mod encode;
pub mod probe;
pub mod stitch;

pub use encode::{
    RenderedVideo, RgbImage, VideoSpec, decode_png, encode_png, encoded_size, render,
};
pub use probe::{Mp4Info, probe, probe_bytes};
pub use stitch::{PartInfo, StitchError, StitchReport, stitch_files};

/// Errors from rendering, PNG conversion and probing.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The request cannot be rendered as asked (zero size, unsupported fps, ...).
    #[error("invalid video spec: {0}")]
    InvalidSpec(String),
    /// An image's pixel buffer does not match its stated size.
    #[error("image buffer holds {len} bytes, expected {expected} for {width}x{height} rgb8")]
    ImageSize {
        width: u32,
        height: u32,
        len: usize,
        expected: usize,
    },
    /// openh264 refused a frame or its parameters.
    #[error("h.264 encoding failed: {0}")]
    Encode(String),
    /// muxide refused a sample or failed to write the container.
    #[error("mp4 muxing failed: {0}")]
    Mux(#[from] muxide::api::MuxerError),
    #[error("png decoding failed: {0}")]
    PngDecode(#[from] png::DecodingError),
    #[error("png encoding failed: {0}")]
    PngEncode(#[from] png::EncodingError),
    /// A PNG that decoded but is in a layout we do not convert.
    #[error("unsupported png: {0}")]
    UnsupportedPng(String),
    /// The bytes are not an MP4 the `mp4` crate can read.
    #[error("mp4 parsing failed: {0}")]
    Mp4(#[from] mp4::Error),
    /// The MP4 parsed but has no video track to describe.
    #[error("mp4 has no video track")]
    NoVideoTrack,
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}
