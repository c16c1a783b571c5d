//! Archived objects streamed through the server: videos with HTTP range requests (so the
//! browser's player can seek), last frames and sidecars.
//!
//! Every range answer is bounded by `admin.ui_max_range` bytes (`max`): `bytes=0-` (what a
//! player asks first) gets the first `max` bytes as a `206`, and the player asks for the rest as
//! it needs it. One request never holds more than that in memory, and a client cannot make the server
//! read a whole large object for one seek. A request without `Range` gets the object streamed.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::blob::{BlobStore, ObjectKey};

/// A satisfiable byte range, end inclusive as in HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Parses a `Range` header against an object of `size` bytes, bounding the answer to `max`
/// bytes. `Ok(None)`: no usable range (answer the whole object); `Err(())`: not
/// satisfiable (416). Multiple ranges are answered as their first one, which RFC 9110 §14.2
/// allows (a server may ignore or coalesce ranges).
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, size: u64, max: u64) -> Result<Option<ByteRange>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    let first = spec.split(',').next().unwrap_or("").trim();
    let Some((a, b)) = first.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            // `bytes=-N`: the last N bytes.
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            if e < s {
                return Err(());
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some(ByteRange {
        start,
        end: end.min(start + max.max(1) - 1),
    }))
}

/// Answers a GET of the object at `key`, honouring `Range` for videos.
pub async fn serve(
    blob: &BlobStore,
    key: &ObjectKey,
    headers: &HeaderMap,
    content_type: &'static str,
    max: u64,
) -> Response {
    let size = match blob.head(key).await {
        Ok(Some(s)) => s,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such archived object\n").into_response(),
        Err(e) => return unavailable(&e),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let ctype = HeaderValue::from_static(content_type);
    match parse_range(range, size, max) {
        Err(()) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response(),
        Ok(Some(r)) => {
            metrics::counter!("seedq_ui_range_requests_total").increment(1);
            match blob.get_range(key, r.start..r.end + 1).await {
                Ok(Some(bytes)) => (
                    StatusCode::PARTIAL_CONTENT,
                    [
                        (header::CONTENT_TYPE, ctype),
                        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
                        (
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end))
                                .unwrap_or(HeaderValue::from_static("bytes */0")),
                        ),
                    ],
                    bytes,
                )
                    .into_response(),
                Ok(None) => (StatusCode::NOT_FOUND, "no such archived object\n").into_response(),
                Err(e) => unavailable(&e),
            }
        }
        Ok(None) => match blob.get(key).await {
            Ok(Some((len, stream))) => (
                [
                    (header::CONTENT_TYPE, ctype),
                    (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
                    (header::CONTENT_LENGTH, HeaderValue::from(len)),
                ],
                Body::from_stream(stream),
            )
                .into_response(),
            Ok(None) => (StatusCode::NOT_FOUND, "no such archived object\n").into_response(),
            Err(e) => unavailable(&e),
        },
    }
}

fn unavailable(e: &crate::blob::BlobError) -> Response {
    // BlobError's Display never carries credentials (blob.rs invariants).
    tracing::warn!(error = %e, "dashboard: object store read failed");
    (
        StatusCode::BAD_GATEWAY,
        format!("cannot read the archive: {e}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> Result<Option<ByteRange>, ()> {
        Ok(Some(ByteRange { start, end }))
    }

    #[test]
    fn ranges_are_parsed_and_bounded() {
        const MAX_RANGE: u64 = 1000;
        let big = 10 * MAX_RANGE;
        let parse_range = |h, size| super::parse_range(h, size, MAX_RANGE);
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-"), 100), r(0, 99));
        assert_eq!(parse_range(Some("bytes=0-"), big), r(0, MAX_RANGE - 1));
        assert_eq!(parse_range(Some("bytes=10-19"), 100), r(10, 19));
        assert_eq!(parse_range(Some("bytes=90-200"), 100), r(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), r(90, 99));
        assert_eq!(parse_range(Some("bytes=0-0, 5-9"), 100), r(0, 0));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=x-3"), 100), Err(()));
    }
}
