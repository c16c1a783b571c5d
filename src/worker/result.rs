//! A succeeded job's result data, typed: when its URLs expire, what the task said about its
//! output ([`ResultMeta`], from the wire `Task`), and the archive's JSON sidecar ([`Sidecar`]).
//!
//! Poll records the first two when a task succeeds; the archiver reads them back and writes
//! the sidecar. Both stages import this module rather than each other.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ark::wire::Task;
pub use crate::job::ResultMeta;
use crate::store::Timestamp;
use crate::tier::Tier;

/// Video URLs are valid 24 h unless the URL says otherwise.
pub(crate) const DEFAULT_URL_TTL_MS: i64 = 24 * 3_600_000;

/// Sidecar format tag, bumped if its shape changes incompatibly.
pub const SIDECAR_FORMAT: &str = "seedq.archive/1";

/// When a result URL stops working: from `X-Tos-Expires` (seconds) when present.
pub(crate) fn url_expiry(url: &str, now: Timestamp) -> Timestamp {
    let now = now.ms();
    let expires = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k.eq_ignore_ascii_case("X-Tos-Expires"))
                .and_then(|(_, v)| v.parse::<i64>().ok())
        })
        // The number is the peer's: saturate rather than overflow.
        .map_or(now.saturating_add(DEFAULT_URL_TTL_MS), |s| {
            now.saturating_add(s.saturating_mul(1000))
        });
    Timestamp::from_ms(expires)
}

/// What a succeeded task says about its output (the conversion at the edge of `ark::wire`).
pub(crate) fn result_meta(t: &Task) -> ResultMeta {
    ResultMeta {
        resolution: t.resolution.clone(),
        ratio: t.ratio.clone(),
        duration: t.duration,
        frames: t.frames,
        framespersecond: t.framespersecond,
        seed: t.seed,
        revised_prompt: t.revised_prompt.clone(),
        service_tier: t.service_tier.clone(),
    }
}

/// The JSON sidecar written next to each archived video: who, what was asked, what came out,
/// what it cost, when, and the hashes of the stored objects. Absent values are `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// [`SIDECAR_FORMAT`].
    pub format: String,
    pub job_id: String,
    pub task_id: Option<String>,
    pub model: String,
    pub service_tier: Tier,
    pub seed: Option<i64>,
    pub tags: Vec<String>,
    pub batch: Option<String>,
    /// The request as sent, inline images replaced by their hashes.
    pub request: Value,
    pub resolution: Option<String>,
    pub ratio: Option<String>,
    pub duration: Option<i64>,
    pub frames: Option<i64>,
    pub framespersecond: Option<i64>,
    pub revised_prompt: Option<String>,
    pub shape: Option<String>,
    pub usage_tokens: Option<i64>,
    pub estimated_cost: Option<Cost>,
    pub timings: Timings,
    pub objects: Objects,
}

/// A sidecar's cost line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub amount: f64,
    pub currency: String,
    pub tokens: i64,
    /// `usage` (billed tokens) or `estimate`.
    pub basis: String,
}

/// A sidecar's times, RFC 3339 in UTC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queued: Option<String>,
    pub submitted: Option<String>,
    pub finished: Option<String>,
    pub archived: Option<String>,
}

/// The objects a sidecar describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objects {
    pub video: StoredObject,
    pub last_frame: Option<StoredObject>,
    /// Why a requested last frame is not stored (the remote copy was gone).
    pub last_frame_missing: Option<String>,
}

/// One stored object: its key and verified hash and size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

impl Sidecar {
    /// The pretty-printed JSON, keys in alphabetical order at every level (the order the
    /// sidecar has always had: it went through a `serde_json::Value`, whose maps sort).
    pub fn to_bytes(&self) -> Bytes {
        // Strings, numbers and a `Value`: serialising cannot fail.
        let doc = serde_json::to_value(self).unwrap_or(Value::Null);
        Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_expiry_reads_the_tos_parameter() {
        let at = Timestamp::from_ms;
        let expiry = |url, now| url_expiry(url, at(now)).ms();
        assert_eq!(
            expiry("https://x/v.mp4?X-Tos-Expires=86400&a=b", 1000),
            1000 + 86_400_000
        );
        assert_eq!(expiry("https://x/v.mp4?x-tos-expires=10", 0), 10_000);
        assert_eq!(expiry("https://x/v.mp4", 5), 5 + DEFAULT_URL_TTL_MS);
        assert_eq!(
            expiry("https://x/v.mp4?X-Tos-Expires=9223372036854775807", 5),
            i64::MAX,
            "a huge expiry saturates instead of overflowing"
        );
    }

    #[test]
    fn a_task_without_output_fields_records_an_empty_object() {
        let t: Task = serde_json::from_value(serde_json::json!({
            "id": "cgt-1", "model": "m", "status": "succeeded", "seed": 11, "ratio": "16:9"
        }))
        .expect("a minimal task parses");
        let m = result_meta(&t);
        assert_eq!(m.seed, Some(11));
        assert_eq!(m.to_json(), r#"{"ratio":"16:9","seed":11}"#);
    }

    fn sample() -> Sidecar {
        Sidecar {
            format: SIDECAR_FORMAT.into(),
            job_id: "j1".into(),
            task_id: Some("cgt-1".into()),
            model: "m".into(),
            service_tier: Tier::Default,
            seed: Some(7),
            tags: vec!["a".into()],
            batch: None,
            request: serde_json::json!({"model": "m"}),
            resolution: Some("480p".into()),
            ratio: None,
            duration: Some(5),
            frames: None,
            framespersecond: Some(24),
            revised_prompt: None,
            shape: Some("480p/16:9/5".into()),
            usage_tokens: Some(100),
            estimated_cost: Some(Cost {
                amount: 0.5,
                currency: "CNY".into(),
                tokens: 100,
                basis: "usage".into(),
            }),
            timings: Timings {
                queued: Some("2026-05-14T10:32:17.123Z".into()),
                submitted: None,
                finished: None,
                archived: None,
            },
            objects: Objects {
                video: StoredObject {
                    key: "v.mp4".into(),
                    sha256: "ab".into(),
                    size: 3,
                },
                last_frame: None,
                last_frame_missing: Some("gone".into()),
            },
        }
    }

    #[test]
    fn the_sidecar_keeps_its_documented_keys_sorted_with_nulls() {
        let bytes = sample().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        let keys: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "batch",
                "duration",
                "estimated_cost",
                "format",
                "frames",
                "framespersecond",
                "job_id",
                "model",
                "objects",
                "ratio",
                "request",
                "resolution",
                "revised_prompt",
                "seed",
                "service_tier",
                "shape",
                "tags",
                "task_id",
                "timings",
                "usage_tokens",
            ]
        );
        assert!(v["ratio"].is_null() && v["objects"]["last_frame"].is_null());
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(text.find("\"batch\"") < text.find("\"duration\""), "{text}");
        // A reader gets the same struct back.
        let back: Sidecar = serde_json::from_slice(&bytes).expect("reads back");
        assert_eq!(back, sample());
    }
}
