//! The video and last-frame files: pre-signed-looking URLs and the download route.
//!
//! URLs look like TOS pre-signed URLs (`X-Tos-Algorithm=TOS4-HMAC-SHA256`, `X-Tos-Expires=<ttl
//! seconds>`, `X-Tos-Signature=<hex>`) plus one simulator parameter, `X-Sim-Issued-Ms`, the issue
//! time in unix ms: the expiry must be exact at any `time_scale`, and `X-Tos-Date` has only
//! seconds. The signature is an HMAC-SHA256 over the path, issue time and TTL with a random
//! per-simulator key, so a URL cannot be extended by editing it.
//!
//! Errors use the TOS JSON shape `{"Code","Message","RequestId"}`: 403 `AccessDenied` after the
//! URL expired, 403 `SignatureDoesNotMatch` for a forged or incomplete URL, 404 `NoSuchKey` when
//! the task (or its video) is gone, 416 `InvalidRange`, 500 `InternalError` (injected).
//!
//! Files stream from memory in chunks; `video_pad_to_bytes` appends an ISO-BMFF `free` box made
//! of a header and zeros that are never allocated (a static zero block is sliced), so a 1 GiB
//! file costs the MP4's size in memory. `Content-Length` is always exact; single `Range`
//! requests get 206.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::http::request_id;
use super::state::{Counters, Sim, now_ms, scale};
use seedq_ark::wire::TaskStatus;

/// The video file name in file URLs.
pub const VIDEO: &str = "video.mp4";
/// The last-frame file name in file URLs.
pub const LAST_FRAME: &str = "last_frame.png";
/// Largest chunk handed to hyper at once.
const CHUNK: usize = 64 * 1024;
/// How long a truncated download pauses before it breaks off.
const TRUNCATION_PAUSE: Duration = Duration::from_millis(20);
/// The zeros every padding chunk is sliced from.
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// A URL for one of a task's files, valid for `url_ttl` (scaled) from now.
pub fn signed_url(sim: &Sim, id: &str, file: &str) -> String {
    let issued = now_ms();
    let expires = sim.cfg.url_ttl.as_secs();
    let sig = signature(&sim.url_key, id, file, issued, expires);
    let (day, stamp) = tos_date(issued);
    format!(
        "{}/_sim/files/{id}/{file}?X-Tos-Algorithm=TOS4-HMAC-SHA256\
         &X-Tos-Credential=AKSIMULATOR%2F{day}%2Fcn-beijing%2Ftos%2Frequest\
         &X-Tos-Date={stamp}&X-Tos-Expires={expires}&X-Sim-Issued-Ms={issued}\
         &X-Tos-SignedHeaders=host&X-Tos-Signature={sig}",
        sim.base_url
    )
}

fn signature(key: &[u8], id: &str, file: &str, issued: i64, expires: u64) -> String {
    hex::encode(hmac_sha256(
        key,
        format!("GET\n/_sim/files/{id}/{file}\n{issued}\n{expires}").as_bytes(),
    ))
}

/// HMAC-SHA256 (RFC 2104); sha2 is already a dependency and this is all we need of `hmac`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// (`YYYYMMDD`, `YYYYMMDDTHHMMSSZ`) in UTC, as TOS writes them.
fn tos_date(ms: i64) -> (String, String) {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let day = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let stamp = format!("{day}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    (day, stamp)
}

/// A file made of in-memory bytes followed by an optional `free` box of zeros.
#[derive(Clone, Debug)]
pub struct VirtualFile {
    head: Bytes,
    pad_header: Bytes,
    zeros: u64,
}

impl VirtualFile {
    /// The bytes as they are.
    pub fn plain(head: Bytes) -> Self {
        Self {
            head,
            pad_header: Bytes::new(),
            zeros: 0,
        }
    }

    /// `mp4` padded to exactly `pad_to` bytes with a trailing `free` box; unpadded when
    /// `pad_to` is absent, not larger than the MP4, or leaves less room than a box header.
    pub fn padded(mp4: Bytes, pad_to: Option<u64>) -> Self {
        let len = mp4.len() as u64;
        let Some(total) = pad_to.filter(|n| *n > len) else {
            return Self::plain(mp4);
        };
        let box_len = total - len;
        let mut header = Vec::with_capacity(16);
        if box_len > u64::from(u32::MAX) {
            // size = 1 announces a 64-bit `largesize` after the type (ISO/IEC 14496-12 §4.2).
            header.extend_from_slice(&1u32.to_be_bytes());
            header.extend_from_slice(b"free");
            header.extend_from_slice(&box_len.to_be_bytes());
        } else if box_len >= 8 {
            header.extend_from_slice(&u32::try_from(box_len).unwrap_or(u32::MAX).to_be_bytes());
            header.extend_from_slice(b"free");
        } else {
            tracing::warn!(
                mp4 = len,
                pad_to = total,
                "sim: padding too small for a box header; serving the video unpadded"
            );
            return Self::plain(mp4);
        }
        let zeros = box_len - header.len() as u64;
        Self {
            head: mp4,
            pad_header: Bytes::from(header),
            zeros,
        }
    }

    /// Total length.
    pub fn size(&self) -> u64 {
        self.head.len() as u64 + self.pad_header.len() as u64 + self.zeros
    }

    /// Up to `max` bytes starting at `pos`, never crossing a segment boundary; empty past the end.
    pub fn chunk_at(&self, pos: u64, max: usize) -> Bytes {
        let head = self.head.len() as u64;
        let pad = self.pad_header.len() as u64;
        let take = |avail: u64| usize::try_from(avail.min(max as u64)).unwrap_or(max);
        if pos < head {
            let start = usize::try_from(pos).unwrap_or(0);
            let n = take(head - pos);
            return self.head.slice(start..start + n);
        }
        if pos < head + pad {
            let start = usize::try_from(pos - head).unwrap_or(0);
            let n = take(head + pad - pos);
            return self.pad_header.slice(start..start + n);
        }
        if pos < self.size() {
            let n = take(self.size() - pos).min(CHUNK);
            return Bytes::from_static(&ZEROS[..n]);
        }
        Bytes::new()
    }
}

/// Length of the served video for an MP4 of this size.
pub fn served_len(mp4: &Bytes, pad_to: Option<u64>) -> u64 {
    VirtualFile::padded(mp4.clone(), pad_to).size()
}

/// A TOS-style error answer.
fn tos_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "Code": code,
        "Message": message,
        "RequestId": request_id(),
    });
    (status, axum::Json(body)).into_response()
}

/// `GET|HEAD /_sim/files/{task_id}/{file}`.
pub async fn download(
    State(sim): State<Arc<Sim>>,
    Path((id, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if sim.roll(|f| f.error_rate.download) {
        return tos_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error, please try again.",
        );
    }
    if file != VIDEO && file != LAST_FRAME {
        return tos_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    }
    if let Err(resp) = verify(&sim, &id, &file, query.as_deref().unwrap_or("")) {
        return resp;
    }
    let video = match sim.file(&id) {
        Some((TaskStatus::Succeeded, Some(v))) => v,
        _ => {
            return tos_error(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            );
        }
    };
    let (vfile, content_type, etag) = if file == VIDEO {
        let pad = sim.cfg.video_pad_to_bytes;
        let f = VirtualFile::padded(video.mp4.clone(), pad);
        let etag = format!("\"{}-{}\"", &video.mp4_sha256[..16], f.size());
        (f, "video/mp4", etag)
    } else {
        let etag = format!("\"{}\"", &video.last_frame_sha256[..16]);
        (
            VirtualFile::plain(video.last_frame_png.clone()),
            "image/png",
            etag,
        )
    };
    let total = vfile.size();
    let range = match parse_range(headers.get(header::RANGE), total) {
        Ok(r) => r,
        Err(()) => {
            let mut resp = tos_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable.",
            );
            insert(
                &mut resp,
                header::CONTENT_RANGE,
                &format!("bytes */{total}"),
            );
            return resp;
        }
    };
    let (start, end) = range.unwrap_or((0, total));
    let truncate_at = sim
        .roll(|f| f.truncate_download_rate)
        .then(|| start + (end - start) / 2);
    let rate = sim.faults().download_bytes_per_sec;
    let body = Body::from_stream(stream(
        vfile,
        start,
        end,
        truncate_at,
        rate,
        sim.counters.clone(),
    ));
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = (status, body).into_response();
    insert(&mut resp, header::CONTENT_TYPE, content_type);
    insert(
        &mut resp,
        header::CONTENT_LENGTH,
        &(end - start).to_string(),
    );
    insert(&mut resp, header::ACCEPT_RANGES, "bytes");
    insert(&mut resp, header::ETAG, &etag);
    if range.is_some() {
        insert(
            &mut resp,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{total}", end.saturating_sub(1)),
        );
    }
    resp
}

fn insert(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Checks the signature and the expiry; the error is the finished 403.
fn verify(sim: &Sim, id: &str, file: &str, query: &str) -> Result<(), Response> {
    let mut issued = None;
    let mut expires = None;
    let mut sig = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "X-Sim-Issued-Ms" => issued = v.parse::<i64>().ok(),
            "X-Tos-Expires" => expires = v.parse::<u64>().ok(),
            "X-Tos-Signature" => sig = Some(v.into_owned()),
            _ => {}
        }
    }
    let forged = || {
        tos_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    };
    let (Some(issued), Some(expires), Some(sig)) = (issued, expires, sig) else {
        return Err(forged());
    };
    let expected = signature(&sim.url_key, id, file, issued, expires);
    let same: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), sig.as_bytes()).into();
    if !same {
        return Err(forged());
    }
    let ttl = scale(Duration::from_secs(expires), sim.cfg.time_scale);
    let deadline = issued.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    if now_ms() > deadline {
        return Err(tos_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Request has expired",
        ));
    }
    Ok(())
}

/// A single `bytes=` range as `[start, end)`; `Ok(None)` means the whole file (no header, or a
/// form we do not serve partially, such as several ranges).
fn parse_range(value: Option<&HeaderValue>, total: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let range = match (a.trim(), b.trim()) {
        ("", "") => return Ok(None),
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (total.saturating_sub(n), total)
        }
        (start, "") => (start.parse().map_err(|_| ())?, total),
        (start, end) => {
            let s: u64 = start.parse().map_err(|_| ())?;
            let e: u64 = end.parse().map_err(|_| ())?;
            if e < s {
                return Err(());
            }
            (s, e.saturating_add(1).min(total))
        }
    };
    if range.0 >= total {
        return Err(());
    }
    Ok(Some(range))
}

struct StreamState {
    file: VirtualFile,
    pos: u64,
    stop: u64,
    truncated: bool,
    done: bool,
    rate: Option<u64>,
    counters: Arc<Counters>,
}

/// The body of `[start, end)`; with `truncate_at` it ends early with an error, which makes
/// hyper close the connection short of `Content-Length`.
fn stream(
    file: VirtualFile,
    start: u64,
    end: u64,
    truncate_at: Option<u64>,
    rate: Option<u64>,
    counters: Arc<Counters>,
) -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let stop = truncate_at.map_or(end, |t| t.min(end));
    let state = StreamState {
        file,
        pos: start,
        stop,
        truncated: truncate_at.is_some(),
        done: false,
        rate,
        counters,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.pos >= st.stop {
            if st.truncated {
                st.done = true;
                // Let hyper flush the headers and the partial body first: the client must see
                // a response that stops short, not a connection that never answered.
                tokio::time::sleep(TRUNCATION_PAUSE).await;
                let e = io::Error::new(io::ErrorKind::ConnectionAborted, "injected truncation");
                return Some((Err(e), st));
            }
            return None;
        }
        // Throttled downloads send ~10 chunks per second so the cap is smooth.
        let max = st.rate.map_or(CHUNK, |r| {
            usize::try_from(r / 10).unwrap_or(CHUNK).clamp(1, CHUNK)
        });
        let want = usize::try_from(st.stop - st.pos).unwrap_or(max).min(max);
        let chunk = st.file.chunk_at(st.pos, want);
        if let Some(r) = st.rate {
            tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / r as f64)).await;
        }
        st.pos += chunk.len() as u64;
        st.counters
            .bytes_served
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Some((Ok(chunk), st))
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    fn collect(f: &VirtualFile) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < f.size() {
            let c = f.chunk_at(pos, 7);
            assert!(!c.is_empty());
            pos += c.len() as u64;
            out.extend_from_slice(&c);
        }
        out
    }

    #[test]
    fn padding_makes_an_exact_free_box() {
        let f = VirtualFile::padded(Bytes::from_static(b"abc"), Some(20));
        assert_eq!(f.size(), 20);
        let all = collect(&f);
        assert_eq!(&all[..3], b"abc");
        assert_eq!(&all[3..7], &17u32.to_be_bytes());
        assert_eq!(&all[7..11], b"free");
        assert!(all[11..].iter().all(|b| *b == 0));
    }

    #[test]
    fn huge_padding_uses_largesize() {
        let total = 5u64 << 30;
        let f = VirtualFile::padded(Bytes::from_static(b"abc"), Some(total));
        assert_eq!(f.size(), total);
        let mut header = Vec::new();
        let mut pos = 3;
        while header.len() < 16 {
            let c = f.chunk_at(pos, 16 - header.len());
            pos += c.len() as u64;
            header.extend_from_slice(&c);
        }
        assert_eq!(&header[..4], &1u32.to_be_bytes());
        assert_eq!(&header[4..8], b"free");
        assert_eq!(&header[8..16], &(total - 3).to_be_bytes());
    }

    #[test]
    fn too_little_room_serves_unpadded() {
        assert_eq!(
            VirtualFile::padded(Bytes::from_static(b"abc"), Some(9)).size(),
            3
        );
        assert_eq!(
            VirtualFile::padded(Bytes::from_static(b"abc"), Some(2)).size(),
            3
        );
        assert_eq!(
            VirtualFile::padded(Bytes::from_static(b"abc"), Some(11)).size(),
            11
        );
    }

    #[test]
    fn ranges_parse() {
        let h = |s: &str| HeaderValue::from_str(s).ok();
        assert_eq!(parse_range(h("bytes=0-9").as_ref(), 100), Ok(Some((0, 10))));
        assert_eq!(
            parse_range(h("bytes=90-").as_ref(), 100),
            Ok(Some((90, 100)))
        );
        assert_eq!(
            parse_range(h("bytes=-10").as_ref(), 100),
            Ok(Some((90, 100)))
        );
        assert_eq!(
            parse_range(h("bytes=50-500").as_ref(), 100),
            Ok(Some((50, 100)))
        );
        assert_eq!(parse_range(h("bytes=100-").as_ref(), 100), Err(()));
        assert_eq!(parse_range(h("bytes=0-1,5-6").as_ref(), 100), Ok(None));
        assert_eq!(parse_range(None, 100), Ok(None));
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
