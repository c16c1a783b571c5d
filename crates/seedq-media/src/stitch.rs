//! Lossless concatenation of H.264 MP4 clips: the samples are copied, never
//! re-encoded. The rules below were verified with ffprobe and `ffmpeg -f null`
//! (frame count, exact summed duration, clean decode, byte-identical packets)
//! when this approach was chosen; the tests re-check what they can without ffmpeg.
//!
//! 1. **Validate everything first.** Every input is opened and checked before
//!    the output is created: one video track only (an audio track would be
//!    silently dropped otherwise), H.264 (avc1), not fragmented, at most one
//!    edit-list entry, a keyframe first, and the same width, height and
//!    SPS/PPS bytes as the first input. Errors name the offending file.
//! 2. **Convert.** Samples are AVCC (length-prefixed NAL units); muxide wants
//!    Annex-B, so each NAL is re-emitted behind a `00 00 00 01` start code.
//!    muxide turns them back into 4-byte-length AVCC, so the output sample
//!    bytes equal the input's (for 4-byte-length inputs). A NAL that muxide's
//!    start-code splitter would not give back unchanged is refused rather
//!    than silently altered.
//! 3. **First sample.** muxide builds its avcC from the first sample and
//!    refuses one without SPS/PPS, so the first input's parameter sets are
//!    prepended when its first sample lacks them (the only change to any
//!    sample's bytes).
//! 4. **Timing.** The output timeline is kept in integer 90 kHz ticks (muxide's
//!    timescale) and written with `write_video_with_dts`. Each clip starts
//!    where the previous one's last sample *ends* (start + duration), not
//!    where its header says it ends. A single edit-list entry's media_time is
//!    subtracted from presentation times (x264-style B-frame files).
//!    Caveat: muxide gives the very last output sample the duration of the
//!    gap before it, so if the final clip's last sample has a different
//!    duration, the file's track duration differs from the report by that
//!    difference.
//! 5. **Atomic output.** The file is written under a temporary name in the
//!    output's directory and renamed over `output` only when complete; on any
//!    error the temporary file is removed.
//!
//! Limits: muxide keeps every sample in memory until `finish` (peak memory is
//! about the output size) and cannot write files over 4 GiB (no 64-bit mdat or
//! co64); every input stays open (one file handle each) until the end.

use super::MUXIDE_TIMESCALE;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mp4::Mp4Reader;
use muxide::api::{Muxer, MuxerBuilder, MuxerError, VideoCodec};

use super::probe::{ticks_to_duration, video_track};

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StitchReport {
    /// Total samples written (the sum of the parts' frames).
    pub frames: u64,
    /// End of the output timeline: the sum of the parts' durations on the 90 kHz grid.
    pub duration: Duration,
    pub width: u32,
    pub height: u32,
    /// One entry per input, in order.
    pub parts: Vec<PartInfo>,
}

/// One input clip's contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub path: PathBuf,
    pub frames: u64,
    /// End of its last sample in its own timescale.
    pub duration: Duration,
}

/// Why stitching was refused or failed. Every variant about an input names it.
#[derive(Debug, thiserror::Error)]
pub enum StitchError {
    #[error("no input clips to stitch")]
    NoInputs,
    /// Reading an input or writing the output (the path says which).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a readable mp4: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: mp4::Error,
    },
    #[error("{}: no video track", path.display())]
    NoVideoTrack { path: PathBuf },
    #[error("{}: has {tracks} tracks, only files with a single video track can be stitched", path.display())]
    ExtraTracks { path: PathBuf, tracks: usize },
    #[error("{}: fragmented mp4 is not supported", path.display())]
    Fragmented { path: PathBuf },
    #[error("{}: video codec {codec} is not h.264 (avc1)", path.display())]
    NotH264 { path: PathBuf, codec: String },
    #[error("{}: video track has no samples", path.display())]
    NoSamples { path: PathBuf },
    #[error("{}: width/height {w}x{h} differ from the first clip's {w0}x{h0}", path.display())]
    SizeMismatch {
        path: PathBuf,
        w: u32,
        h: u32,
        w0: u32,
        h0: u32,
    },
    #[error("{}: h.264 parameter sets (sps/pps) differ from the first clip's", path.display())]
    ParameterSetMismatch { path: PathBuf },
    #[error("{}: edit list has {entries} entries, only a single entry is supported", path.display())]
    EditList { path: PathBuf, entries: usize },
    #[error("{}: unsupported edit list entry: {reason}", path.display())]
    UnsupportedEdit { path: PathBuf, reason: &'static str },
    #[error("{}: first sample is not a keyframe", path.display())]
    FirstNotKeyframe { path: PathBuf },
    /// A structural problem in an input (bad sample, zero timescale, ...).
    #[error("{}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// muxide refused a sample from this input.
    #[error("{}: muxing failed: {source}", path.display())]
    Mux {
        path: PathBuf,
        #[source]
        source: MuxerError,
    },
}

/// Joins `inputs` in order into `output` without re-encoding.
///
/// Nothing is created unless every input passes validation; `output` is
/// replaced atomically at the end.
pub fn stitch_files(inputs: &[PathBuf], output: &Path) -> Result<StitchReport, StitchError> {
    if inputs.is_empty() {
        return Err(StitchError::NoInputs);
    }
    let mut clips = inputs
        .iter()
        .map(|path| Clip::open(path))
        .collect::<Result<Vec<_>, _>>()?;
    check_compatible(&clips)?;

    let mut temp = TempOutput::create(output)?;
    let first = &clips[0];
    let out_io = |source| StitchError::Io {
        path: output.to_path_buf(),
        source,
    };
    let mut muxer = MuxerBuilder::new(BufWriter::new(&temp.file))
        .video(
            VideoCodec::H264,
            first.width,
            first.height,
            first.frame_rate(),
        )
        .with_fast_start(true)
        .build()
        .map_err(|source| StitchError::Mux {
            path: first.path.clone(),
            source,
        })?;

    let mut offset: u64 = 0; // output ticks (90 kHz) where the next clip starts
    let mut parts = Vec::with_capacity(clips.len());
    for (index, clip) in clips.iter_mut().enumerate() {
        let end = clip.copy_into(&mut muxer, offset, index == 0)?;
        offset = offset
            .checked_add(to_out_ticks(end, clip.timescale))
            .ok_or_else(|| clip.malformed("timeline overflows"))?;
        parts.push(PartInfo {
            path: clip.path.clone(),
            frames: u64::from(clip.samples),
            // `timescale` was checked to be non-zero when the clip was opened.
            duration: ticks_to_duration(end, clip.timescale).unwrap_or_default(),
        });
    }

    muxer.finish_in_place().map_err(|source| StitchError::Mux {
        path: output.to_path_buf(),
        source,
    })?;
    let writer = muxer.into_writer();
    writer.into_inner().map_err(|e| out_io(e.into_error()))?;
    temp.commit(output)?;

    Ok(StitchReport {
        frames: parts.iter().map(|p| p.frames).sum(),
        duration: ticks_to_duration(offset, MUXIDE_TIMESCALE).unwrap_or_default(),
        width: clips[0].width,
        height: clips[0].height,
        parts,
    })
}

/// An opened, individually validated input.
struct Clip {
    path: PathBuf,
    reader: Mp4Reader<BufReader<File>>,
    track_id: u32,
    width: u32,
    height: u32,
    timescale: u32,
    samples: u32,
    /// NAL length prefix size from avcC (1, 2 or 4).
    length_size: usize,
    /// Single edit-list entry's media_time (track ticks), or 0.
    media_time: u64,
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
}

impl Clip {
    fn open(path: &Path) -> Result<Self, StitchError> {
        let io_err = |source| StitchError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        let reader = Mp4Reader::read_header(BufReader::new(file), size).map_err(|source| {
            StitchError::Parse {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let path = path.to_path_buf();

        let track =
            video_track(&reader).ok_or_else(|| StitchError::NoVideoTrack { path: path.clone() })?;
        if reader.tracks().len() != 1 {
            return Err(StitchError::ExtraTracks {
                path,
                tracks: reader.tracks().len(),
            });
        }
        if reader.is_fragmented() {
            return Err(StitchError::Fragmented { path });
        }
        let trak = &track.trak;
        let Some(avc1) = &trak.mdia.minf.stbl.stsd.avc1 else {
            let codec = track
                .box_type()
                .map(|f| f.to_string())
                .unwrap_or_else(|_| "unknown".into());
            return Err(StitchError::NotH264 { path, codec });
        };
        let avcc = &avc1.avcc;
        let length_size = usize::from(avcc.length_size_minus_one & 0x3) + 1;
        if length_size == 3 {
            return Err(StitchError::Malformed {
                path,
                reason: "avcC declares 3-byte NAL lengths, which H.264 does not allow".into(),
            });
        }
        let (mut width, mut height) = (
            u32::from(trak.tkhd.width.value()),
            u32::from(trak.tkhd.height.value()),
        );
        if width == 0 || height == 0 {
            (width, height) = (u32::from(avc1.width), u32::from(avc1.height));
        }
        let timescale = trak.mdia.mdhd.timescale;
        if timescale == 0 {
            return Err(StitchError::Malformed {
                path,
                reason: "track timescale is zero".into(),
            });
        }

        let mut media_time = 0;
        if let Some(elst) = trak.edts.as_ref().and_then(|e| e.elst.as_ref()) {
            match elst.entries.as_slice() {
                [] => {}
                [entry] => {
                    // -1 (an empty edit) reads back as all ones in either box version.
                    if entry.media_time == u64::from(u32::MAX) || entry.media_time == u64::MAX {
                        return Err(StitchError::UnsupportedEdit {
                            path,
                            reason: "empty edit (media_time -1)",
                        });
                    }
                    if entry.media_rate != 1 || entry.media_rate_fraction != 0 {
                        return Err(StitchError::UnsupportedEdit {
                            path,
                            reason: "media rate is not 1",
                        });
                    }
                    media_time = entry.media_time;
                }
                entries => {
                    return Err(StitchError::EditList {
                        path,
                        entries: entries.len(),
                    });
                }
            }
        }

        let track_id = track.track_id();
        let samples = track.sample_count();
        let sps = avcc
            .sequence_parameter_sets
            .iter()
            .map(|n| n.bytes.clone())
            .collect();
        let pps = avcc
            .picture_parameter_sets
            .iter()
            .map(|n| n.bytes.clone())
            .collect();
        let mut clip = Clip {
            path,
            reader,
            track_id,
            width,
            height,
            timescale,
            samples,
            length_size,
            media_time,
            sps,
            pps,
        };
        if clip.samples == 0 {
            return Err(StitchError::NoSamples { path: clip.path });
        }
        if !clip.read(1)?.is_sync {
            return Err(StitchError::FirstNotKeyframe { path: clip.path });
        }
        Ok(clip)
    }

    fn malformed(&self, reason: impl Into<String>) -> StitchError {
        StitchError::Malformed {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read(&mut self, id: u32) -> Result<mp4::Mp4Sample, StitchError> {
        match self.reader.read_sample(self.track_id, id) {
            Ok(Some(sample)) => Ok(sample),
            Ok(None) => Err(self.malformed(format!("sample {id} is missing"))),
            Err(e) => Err(self.malformed(format!("sample {id}: {e}"))),
        }
    }

    /// Only a hint for muxide (it does not affect timing); 24 if unknown.
    fn frame_rate(&self) -> f64 {
        let duration = self
            .reader
            .tracks()
            .get(&self.track_id)
            .map(|t| t.trak.mdia.mdhd.duration);
        match duration {
            Some(d) if d > 0 => f64::from(self.samples) * f64::from(self.timescale) / d as f64,
            _ => 24.0,
        }
    }

    /// Writes all samples shifted by `offset` output ticks; returns the end of
    /// the last sample (start + duration) in this clip's timescale.
    fn copy_into<W: io::Write>(
        &mut self,
        muxer: &mut Muxer<W>,
        offset: u64,
        first_clip: bool,
    ) -> Result<u64, StitchError> {
        let secs = |ticks: u64| ticks as f64 / f64::from(MUXIDE_TIMESCALE);
        let mut end = 0;
        for id in 1..=self.samples {
            let sample = self.read(id)?;
            let mut annexb = avcc_to_annexb(&sample.bytes, self.length_size)
                .map_err(|reason| self.malformed(format!("sample {id}: {reason}")))?;
            if first_clip && id == 1 && !(has_nal(&annexb, NAL_SPS) && has_nal(&annexb, NAL_PPS)) {
                let mut with_params = Vec::new();
                for nal in self.sps.iter().chain(&self.pps) {
                    with_params.extend_from_slice(&START_CODE);
                    with_params.extend_from_slice(nal);
                }
                with_params.extend_from_slice(&annexb);
                annexb = with_params;
            }

            let pts_media = i128::from(sample.start_time) + i128::from(sample.rendering_offset)
                - i128::from(self.media_time);
            let pts_media = u64::try_from(pts_media).map_err(|_| {
                self.malformed(format!(
                    "sample {id} is presented before the edit list starts"
                ))
            })?;
            let dts = offset + to_out_ticks(sample.start_time, self.timescale);
            let pts = offset + to_out_ticks(pts_media, self.timescale);
            // Integer ticks below 2^53 survive muxide's `(secs * 90000).round()` exactly.
            muxer
                .write_video_with_dts(secs(pts), secs(dts), &annexb, sample.is_sync)
                .map_err(|source| StitchError::Mux {
                    path: self.path.clone(),
                    source,
                })?;
            if id == self.samples {
                end = sample.start_time + u64::from(sample.duration);
            }
        }
        Ok(end)
    }
}

/// Refuses inputs that differ from the first in size or parameter sets.
fn check_compatible(clips: &[Clip]) -> Result<(), StitchError> {
    let Some((first, rest)) = clips.split_first() else {
        return Err(StitchError::NoInputs);
    };
    for clip in rest {
        if (clip.width, clip.height) != (first.width, first.height) {
            return Err(StitchError::SizeMismatch {
                path: clip.path.clone(),
                w: clip.width,
                h: clip.height,
                w0: first.width,
                h0: first.height,
            });
        }
        if clip.sps != first.sps || clip.pps != first.pps {
            return Err(StitchError::ParameterSetMismatch {
                path: clip.path.clone(),
            });
        }
    }
    Ok(())
}

/// Rescales track ticks to 90 kHz, rounding to nearest (exact for the usual
/// timescales: 90000, 1000, 12800, 15360, 30000, ...).
fn to_out_ticks(ticks: u64, timescale: u32) -> u64 {
    if timescale == MUXIDE_TIMESCALE {
        return ticks;
    }
    let scaled = (u128::from(ticks) * u128::from(MUXIDE_TIMESCALE) + u128::from(timescale / 2))
        / u128::from(timescale);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Converts one AVCC sample to Annex-B, refusing anything that would not come
/// back unchanged through muxide's start-code splitter.
fn avcc_to_annexb(data: &[u8], length_size: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut nals = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err("truncated nal length".into());
        }
        let (prefix, tail) = rest.split_at(length_size);
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len == 0 {
            return Err("zero-length nal unit".into());
        }
        if len > tail.len() {
            return Err(format!(
                "nal length {len} exceeds the {} bytes left",
                tail.len()
            ));
        }
        let (nal, tail) = tail.split_at(len);
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
        nals.push(nal);
        rest = tail;
    }
    if nals.is_empty() {
        return Err("empty sample".into());
    }
    // Valid NALs never contain a start code (emulation prevention), but if one
    // did, muxide would split it and the output would silently differ.
    if !muxide::codec::AnnexBNalIter::new(&out).eq(nals.iter().copied()) {
        return Err("nal unit contains a start code, it cannot be copied losslessly".into());
    }
    Ok(out)
}

fn has_nal(annexb: &[u8], nal_type: u8) -> bool {
    muxide::codec::AnnexBNalIter::new(annexb)
        .any(|nal| nal.first().is_some_and(|b| b & 0x1f == nal_type))
}

/// The output under construction: a uniquely named file next to `output`,
/// removed on drop unless committed.
struct TempOutput {
    path: PathBuf,
    file: File,
    committed: bool,
}

impl TempOutput {
    fn create(output: &Path) -> Result<Self, StitchError> {
        let io_err = |source| StitchError::Io {
            path: output.to_path_buf(),
            source,
        };
        let name = output.file_name().ok_or_else(|| {
            io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "output path has no file name",
            ))
        })?;
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Same directory, so the final rename never crosses filesystems.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.{nanos}.tmp", std::process::id()));
        let path = dir.join(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err)?;
        Ok(TempOutput {
            path,
            file,
            committed: false,
        })
    }

    fn commit(&mut self, output: &Path) -> Result<(), StitchError> {
        let io_err = |source| StitchError::Io {
            path: output.to_path_buf(),
            source,
        };
        self.file.sync_all().map_err(io_err)?;
        fs::rename(&self.path, output).map_err(io_err)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that got us here matters more than this one.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VideoSpec, probe, render};

    fn write_clip(
        dir: &Path,
        name: &str,
        width: u32,
        height: u32,
        frames: u32,
        seed: u64,
    ) -> PathBuf {
        let spec = VideoSpec {
            width,
            height,
            frames,
            fps: 24,
            seed,
            first_frame: None,
        };
        let path = dir.join(name);
        fs::write(&path, render(&spec).expect("render").mp4).expect("write clip");
        path
    }

    fn open(path: &Path) -> (Mp4Reader<BufReader<File>>, u32) {
        let file = File::open(path).expect("open");
        let size = file.metadata().expect("metadata").len();
        let reader = Mp4Reader::read_header(BufReader::new(file), size).expect("header");
        let id = video_track(&reader).expect("video track").track_id();
        (reader, id)
    }

    /// Every sample of the file, in order: (bytes, is_sync, start_time, duration).
    fn samples(path: &Path) -> Vec<(Vec<u8>, bool, u64, u32)> {
        let (mut reader, id) = open(path);
        let count = reader.sample_count(id).expect("count");
        (1..=count)
            .map(|i| {
                let s = reader.read_sample(id, i).expect("read").expect("present");
                (s.bytes.to_vec(), s.is_sync, s.start_time, s.duration)
            })
            .collect()
    }

    fn info(path: &Path) -> crate::Mp4Info {
        let file = File::open(path).expect("open");
        let size = file.metadata().expect("metadata").len();
        probe(BufReader::new(file), size).expect("probe")
    }

    /// Rebuilds exact ticks from a truncated Duration (the error is below one tick).
    fn ticks(d: Duration, timescale: u32) -> u64 {
        (d.as_nanos() * u128::from(timescale)).div_ceil(1_000_000_000) as u64
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn three_clips_join_losslessly_with_exact_timing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs: Vec<_> = (0..3)
            .map(|i| write_clip(dir.path(), &format!("part{i}.mp4"), 96, 54, 49, 100 + i))
            .collect();
        let output = dir.path().join("joined.mp4");
        let report = stitch_files(&inputs, &output).expect("stitch");

        let out_info = info(&output);
        assert_eq!(out_info.frames, 147);
        assert_eq!(report.frames, 147);
        assert_eq!((out_info.width, out_info.height), (96, 54));
        assert_eq!((report.width, report.height), (96, 54));
        assert_eq!(out_info.codec, "avc1");

        let input_ticks: u64 = inputs.iter().map(|p| ticks(info(p).duration, 90_000)).sum();
        assert_eq!(input_ticks, 147 * 3_750);
        assert_eq!(ticks(out_info.duration, 90_000), input_ticks);
        assert_eq!(
            out_info.duration,
            Duration::from_nanos(147 * 1_000_000_000 / 24)
        );
        assert_eq!(report.duration, out_info.duration);
        assert_eq!(report.parts.len(), 3);
        for (part, input) in report.parts.iter().zip(&inputs) {
            assert_eq!(&part.path, input);
            assert_eq!(part.frames, 49);
            assert_eq!(part.duration, info(input).duration);
        }

        // Sample bytes and sync flags are the inputs' laid end to end; times are continuous.
        let expected: Vec<_> = inputs.iter().flat_map(|p| samples(p)).collect();
        let actual = samples(&output);
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert!(a.0 == e.0, "sample {} bytes differ", i + 1);
            assert_eq!(a.1, e.1, "sample {} sync flag", i + 1);
            assert_eq!(a.2, i as u64 * 3_750, "sample {} start", i + 1);
            assert_eq!(a.3, 3_750, "sample {} duration", i + 1);
        }
        // The later clips' IDRs stay sync samples.
        assert!(actual[49].1 && actual[98].1);
        assert_eq!(
            entries(dir.path()),
            ["joined.mp4", "part0.mp4", "part1.mp4", "part2.mp4"]
        );
    }

    #[test]
    fn a_single_clip_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = write_clip(dir.path(), "only.mp4", 64, 36, 5, 1);
        let output = dir.path().join("out.mp4");
        let report = stitch_files(std::slice::from_ref(&input), &output).expect("stitch");
        assert_eq!(report.frames, 5);
        assert_eq!(samples(&output), samples(&input));
        assert_eq!(info(&output), info(&input));
    }

    #[test]
    fn mismatched_size_is_refused_naming_the_file_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_clip(dir.path(), "a.mp4", 96, 54, 3, 1);
        let b = write_clip(dir.path(), "b.mp4", 64, 36, 3, 2);
        let output = dir.path().join("out.mp4");
        let err = stitch_files(&[a.clone(), a, b.clone()], &output).expect_err("must refuse");
        assert!(
            matches!(&err, StitchError::SizeMismatch { path, w: 64, h: 36, w0: 96, h0: 54 } if *path == b),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("b.mp4") && message.contains("64x36") && message.contains("96x54"),
            "{message}"
        );
        assert!(!output.exists());
        assert_eq!(entries(dir.path()), ["a.mp4", "b.mp4"]);
    }

    #[test]
    fn an_existing_output_is_untouched_when_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_clip(dir.path(), "a.mp4", 64, 36, 3, 1);
        let output = dir.path().join("out.mp4");
        fs::write(&output, b"old").expect("write");
        let missing = dir.path().join("missing.mp4");
        let err = stitch_files(&[a, missing.clone()], &output).expect_err("missing input");
        assert!(
            matches!(&err, StitchError::Io { path, .. } if *path == missing),
            "{err:?}"
        );
        assert_eq!(fs::read(&output).expect("read"), b"old");
    }

    #[test]
    fn bad_inputs_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_clip(dir.path(), "a.mp4", 64, 36, 3, 1);
        let junk = dir.path().join("junk.mp4");
        fs::write(&junk, b"this is not an mp4 file at all").expect("write");
        let output = dir.path().join("out.mp4");
        let err = stitch_files(&[a, junk.clone()], &output).expect_err("junk");
        assert!(
            matches!(&err, StitchError::Parse { path, .. } if *path == junk),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&junk.display().to_string()),
            "{err}"
        );
        assert!(!output.exists());
    }

    /// Writes a copy of `src` with one byte changed, `offset` bytes after the
    /// first occurrence of the four-character box name `name`.
    fn patched_copy(src: &Path, dst: &Path, name: &[u8; 4], offset: usize, value: u8) -> PathBuf {
        let mut bytes = fs::read(src).expect("read");
        let at = bytes
            .windows(4)
            .position(|w| w == name)
            .expect("box present");
        bytes[at + offset] = value;
        fs::write(dst, &bytes).expect("write");
        dst.to_path_buf()
    }

    #[test]
    fn different_parameter_sets_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_clip(dir.path(), "a.mp4", 64, 36, 3, 1);
        // avcC payload: version, profile, compat, level, length size, SPS count,
        // SPS length (2 bytes), then the SPS: its fourth byte is level_idc.
        let sps_level = 4 + 8 + 3;
        let original = fs::read(&a).expect("read");
        let at = original
            .windows(4)
            .position(|w| w == b"avcC")
            .expect("avcC");
        assert_eq!(original[at + 12] & 0x1f, NAL_SPS, "layout assumption");
        let other = patched_copy(
            &a,
            &dir.path().join("b.mp4"),
            b"avcC",
            sps_level,
            original[at + sps_level] ^ 1,
        );
        let output = dir.path().join("out.mp4");
        let err = stitch_files(&[a, other.clone()], &output).expect_err("must refuse");
        assert!(
            matches!(&err, StitchError::ParameterSetMismatch { path } if *path == other),
            "{err:?}"
        );
        assert!(err.to_string().contains("b.mp4"), "{err}");
        assert!(!output.exists());
    }

    #[test]
    fn a_clip_not_starting_with_a_keyframe_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_clip(dir.path(), "a.mp4", 64, 36, 3, 1);
        // stss payload: version/flags, entry count, then the first sync sample
        // number (1) as a big-endian u32; make it 2.
        let b = patched_copy(&a, &dir.path().join("b.mp4"), b"stss", 4 + 8 + 3, 2);
        let output = dir.path().join("out.mp4");
        let err = stitch_files(&[a, b.clone()], &output).expect_err("must refuse");
        assert!(
            matches!(&err, StitchError::FirstNotKeyframe { path } if *path == b),
            "{err:?}"
        );
        assert!(!output.exists());
    }

    #[test]
    fn empty_input_list_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = dir.path().join("out.mp4");
        let err = stitch_files(&[], &output).expect_err("empty");
        assert!(matches!(err, StitchError::NoInputs));
        assert_eq!(err.to_string(), "no input clips to stitch");
        assert!(!output.exists());
    }

    #[test]
    fn avcc_conversion_is_checked() {
        let sample = [0, 0, 0, 2, 0x65, 0x88, 0, 0, 0, 1, 0x41];
        assert_eq!(
            avcc_to_annexb(&sample, 4).expect("valid"),
            [0, 0, 0, 1, 0x65, 0x88, 0, 0, 0, 1, 0x41]
        );
        assert_eq!(
            avcc_to_annexb(&[0, 2, 0x67, 0x42], 2).expect("2-byte"),
            [0, 0, 0, 1, 0x67, 0x42]
        );
        assert!(
            avcc_to_annexb(&[0, 0, 0, 5, 0x65], 4).is_err(),
            "truncated nal"
        );
        assert!(avcc_to_annexb(&[0, 0], 4).is_err(), "truncated length");
        assert!(avcc_to_annexb(&[0, 0, 0, 0], 4).is_err(), "zero length");
        assert!(avcc_to_annexb(&[], 4).is_err(), "empty sample");
        // A start code inside a NAL would be split by muxide: refused, not altered.
        assert!(avcc_to_annexb(&[0, 0, 0, 5, 0x65, 0, 0, 1, 0x41], 4).is_err());
    }

    #[test]
    fn rescaling_to_90k() {
        assert_eq!(to_out_ticks(512, 12_800), 3_600);
        assert_eq!(to_out_ticks(640, 15_360), 3_750);
        assert_eq!(to_out_ticks(1_001, 30_000), 3_003);
        assert_eq!(to_out_ticks(42, 90_000), 42);
    }

    /// Runs only where ffprobe is installed: an independent reader must count every frame.
    #[test]
    fn ffprobe_counts_the_stitched_frames_when_available() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs: Vec<_> = (0..2)
            .map(|i| write_clip(dir.path(), &format!("p{i}.mp4"), 64, 36, 7, i))
            .collect();
        let output = dir.path().join("joined.mp4");
        stitch_files(&inputs, &output).expect("stitch");
        let Ok(out) = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
            .arg(&output)
            .output()
        else {
            return; // not installed
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "14");
    }
}
