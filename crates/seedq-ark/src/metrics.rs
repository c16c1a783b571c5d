//! The Ark client's metrics: every HTTP attempt by operation, status and error code. The
//! names are exported with the rest of seedq's (the `seedq` crate's `metrics` module).

use std::time::Duration;

/// HTTP requests to Ark, per attempt: `op` (create, get, list, delete), `status` (`2xx`, the
/// HTTP code of a failure, or `connect`, `transport`).
pub const ARK_REQUESTS: &str = "seedq_ark_requests_total";
/// Failed Ark requests by `op` and the API's error `code` (or `connect`, `transport`, `decode`).
pub const ARK_ERRORS: &str = "seedq_ark_errors_total";
/// 429 answers by `op`.
pub const ARK_THROTTLED: &str = "seedq_ark_throttled_total";
/// Ark request latency by `op`.
pub const ARK_DURATION: &str = "seedq_ark_request_duration_seconds";

/// Records one HTTP attempt to Ark: `status` is the HTTP status of a failed response, `code`
/// the error code of a failure; both `None` for a success.
pub fn ark_request(op: &'static str, status: Option<u16>, code: Option<&str>, took: Duration) {
    let status_label = match (status, code) {
        (Some(s), _) => s.to_string(),
        (None, None) => "2xx".to_string(),
        (None, Some("connect")) => "connect".to_string(),
        (None, Some(_)) => "transport".to_string(),
    };
    metrics::counter!(ARK_REQUESTS, "op" => op, "status" => status_label).increment(1);
    metrics::histogram!(ARK_DURATION, "op" => op).record(took.as_secs_f64());
    if let Some(code) = code {
        metrics::counter!(ARK_ERRORS, "op" => op, "code" => code.to_string()).increment(1);
    }
    if status == Some(429) {
        metrics::counter!(ARK_THROTTLED, "op" => op).increment(1);
    }
}
