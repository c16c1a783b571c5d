//! Ark as seedq reads it: the wire types (`wire`), what each model accepts and costs per
//! region (`catalogue`), a job spec checked against it and frozen into the body Ark gets
//! (`request`), and the client below: create, get, list and delete generation tasks.
//!
//! The client
//! owns auth, timeouts and error classification. It never retries a create by itself: the
//! API has no idempotency key, so only the dispatcher, which knows what was recorded, may
//! decide (docs/design.md, "Never pay twice"). Reads (get, list) and delete are retried here with
//! backon and jitter. Wire types stay in `wire`; callers get typed errors.
//!
//! Reads and deletes have per-account rates of their own (list 1/s, GET 20/s, DELETE 20/s;
//! docs/ark-api.md §14). A client given a [`Gate`] asks it for a turn before every such call,
//! retries included, so every client sharing one gate (a fleet sharing one store) keeps them
//! together.

pub mod catalogue;
pub mod metrics;
pub mod request;
pub mod wire;

// The domain types the request module names, under the paths it uses.
pub(crate) use seedq_core::{job, tier};

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use rand::Rng;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

use crate::wire::{CreateTaskResponse, ErrorEnvelope, ListTasksResponse, TASKS_PATH, Task};

/// How a failed call should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request provably never reached the API (connect or DNS failure): safe to retry.
    NeverSent,
    /// The API refused it for good (400/401/403/404…).
    Rejected,
    /// 429: slow down, retry later (`Retry-After` when the server sent one).
    Throttled(Option<Duration>),
    /// A create may or may not have made a task: timeout after sending, reset, 5xx, or an
    /// unreadable success body.
    Ambiguous,
    /// A read failed in a way worth retrying (5xx, timeout, reset).
    Transient,
    /// This machine ran out of something (file descriptors, memory, disk) before the request
    /// could be sent: the job did nothing wrong and Ark saw nothing, so it is no attempt.
    LocalResource,
}

/// A failed Ark call.
#[derive(Debug, thiserror::Error)]
pub enum ArkError {
    #[error("ark {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        param: Option<String>,
        kind: Option<String>,
        request_id: String,
        retry_after: Option<Duration>,
        /// True for the create call, where a 5xx is ambiguous.
        create: bool,
    },
    #[error("cannot reach ark at {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("ark request failed after it was sent ({what})")]
    Transport {
        what: &'static str,
        create: bool,
        #[source]
        source: reqwest::Error,
    },
    #[error("ark answered {status} with a body that is not the expected JSON: {snippet}")]
    Decode {
        status: u16,
        snippet: String,
        create: bool,
    },
    /// A local resource (EMFILE, ENFILE, ENOMEM, ENOBUFS, ENOSPC) ran out before the request
    /// left this machine.
    #[error("cannot call ark at {url}: out of a local resource")]
    Local {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("ark answered {status} with a body over the {limit}-byte cap")]
    TooLarge {
        status: u16,
        limit: usize,
        create: bool,
    },
    /// The account's budget of this route had no turn soon enough; nothing was sent.
    #[error("no turn on the account's {route} budget within {patience:?}")]
    Budget {
        route: &'static str,
        patience: Duration,
    },
    #[error("invalid ark base URL {0:?}")]
    BaseUrl(String),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl ErrorClass {
    /// A short name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::NeverSent => "never_sent",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Throttled(_) => "throttled",
            ErrorClass::Ambiguous => "ambiguous",
            ErrorClass::Transient => "transient",
            ErrorClass::LocalResource => "local_resource",
        }
    }
}

impl ArkError {
    /// Classifies the failure (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            ArkError::Api {
                status,
                retry_after,
                create,
                ..
            } => match *status {
                429 => ErrorClass::Throttled(*retry_after),
                // A refusal by the task's state (409 `InvalidAction.RunningTaskDeletion`,
                // docs/ark-api.md §14) is an answer, not a hiccup: asking again changes nothing.
                409 if self.code().is_some_and(|c| c.starts_with("InvalidAction")) => {
                    ErrorClass::Rejected
                }
                408 | 409 if !create => ErrorClass::Transient,
                s if s >= 500 && *create => ErrorClass::Ambiguous,
                s if s >= 500 => ErrorClass::Transient,
                _ => ErrorClass::Rejected,
            },
            ArkError::Connect { .. } => ErrorClass::NeverSent,
            ArkError::Budget { .. } => ErrorClass::Throttled(None),
            ArkError::Local { .. } => ErrorClass::LocalResource,
            ArkError::Transport { create: true, .. }
            | ArkError::Decode { create: true, .. }
            | ArkError::TooLarge { create: true, .. } => ErrorClass::Ambiguous,
            ArkError::Transport { .. } | ArkError::Decode { .. } | ArkError::TooLarge { .. } => {
                ErrorClass::Transient
            }
            ArkError::BaseUrl(_) | ArkError::Client(_) => ErrorClass::Rejected,
        }
    }

    /// The API error code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ArkError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            ArkError::Api { status, .. }
            | ArkError::Decode { status, .. }
            | ArkError::TooLarge { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn retryable_read(&self) -> bool {
        // An empty budget is the caller's to handle (another route, later): a retry here
        // would only wait again.
        !matches!(self, ArkError::Budget { .. })
            && matches!(
                self.class(),
                ErrorClass::Transient
                    | ErrorClass::NeverSent
                    | ErrorClass::Throttled(_)
                    | ErrorClass::LocalResource
            )
    }
}

/// A route with a per-account rate of its own (docs/ark-api.md §14, "Rate limits per endpoint").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadRoute {
    List,
    Get,
    Delete,
}

impl ReadRoute {
    /// The name used in the budget and in logs.
    pub fn name(self) -> &'static str {
        match self {
            ReadRoute::List => "list",
            ReadRoute::Get => "get",
            ReadRoute::Delete => "delete",
        }
    }
}

/// Hands out turns on the rate-limited routes to every client of one account.
pub trait Gate: Send + Sync {
    /// Waits for a turn on `route`; false (at once) when no turn starts within `patience`.
    /// Cancel-safe in the sense that a dropped wait only wastes the turn it took.
    fn turn(&self, route: ReadRoute, patience: Duration) -> futures::future::BoxFuture<'_, bool>;
}

/// How long a read waits for its turn by default: far above a turn's spacing, so it is only
/// reached when the budget is badly oversubscribed.
pub const READ_PATIENCE: Duration = Duration::from_secs(60);

/// Query for the list call.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub page_num: Option<u32>,
    pub page_size: Option<u32>,
    pub status: Option<String>,
    pub task_ids: Vec<String>,
    pub model: Option<String>,
    pub service_tier: Option<String>,
}

/// The Ark HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct ArkClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    read_retries: usize,
    /// The whole-request timeout the client was built with (`ark.request_timeout`).
    request_timeout: Duration,
    /// Unix ms of the last 2xx answer (0: none yet), shared by clones; `/readyz` reads it.
    last_ok: Arc<AtomicI64>,
    /// Ark's clock minus ours in ms (`i64::MIN`: not measured yet), shared by clones.
    skew_ms: Arc<AtomicI64>,
    /// The account's read budget; none: calls go out unmetered (tools, benchmark baselines).
    gate: Option<Arc<dyn Gate>>,
}

impl std::fmt::Debug for ArkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArkClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// `YYYYmmddHHMMSS` + 20 random alphanumerics, like the Python SDK; fresh on every attempt.
pub fn client_request_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut rng = rand::rng();
    s.extend((0..20).map(|_| rng.sample(rand::distr::Alphanumeric) as char));
    s
}

/// The longest pause a `Retry-After` may impose. A peer can send any number
/// (`1e300` panicked `Duration::from_secs_f64`); Ark's own limits reset per minute (tutorial
/// 使用限制 › 限流说明: RPM), so an hour is already far more than any honest answer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Largest API response body read (create/get/list/delete answers are a few KB; a 500-task
/// list page is well under 1 MiB). Bodies are streamed against it, never buffered whole.
pub const MAX_API_BODY: usize = 4 * 1024 * 1024;

/// `Retry-After` in delta-seconds, parsed saturating and capped at [`MAX_RETRY_AFTER`]. An
/// HTTP-date or garbage is ignored (the caller's default pause applies).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| !s.is_nan() && *s >= 0.0)
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .unwrap_or(Duration::MAX)
                .min(MAX_RETRY_AFTER)
        })
}

/// The OS error numbers that mean "this machine is out of something", not "the peer failed".
const LOCAL_RESOURCE_ERRNOS: [i32; 5] = [
    24,  // EMFILE: the process's descriptor limit
    23,  // ENFILE: the system's descriptor limit
    12,  // ENOMEM
    105, // ENOBUFS
    28,  // ENOSPC
];

/// Whether any cause of `e` is an OS error in [`LOCAL_RESOURCE_ERRNOS`].
pub fn is_local_resource(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .raw_os_error()
                .is_some_and(|n| LOCAL_RESOURCE_ERRNOS.contains(&n))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Reads a response body chunk by chunk, refusing more than `limit` bytes (checked against
/// `Content-Length` first, so a declared giant is refused before any byte is read).
///
/// # Errors
/// `Ok(None)` when the body exceeds `limit`; `Err` when the transfer fails.
pub async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Ok(None);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len().saturating_add(chunk.len()) > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

impl ArkClient {
    /// A client for `base_url` (e.g. `https://ark.cn-beijing.volces.com/api/v3`).
    ///
    /// # Errors
    /// A malformed base URL or an HTTP client that cannot be built.
    pub fn new(
        base_url: &str,
        key: SecretString,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, ArkError> {
        let parsed = url::Url::parse(base_url).map_err(|_| ArkError::BaseUrl(base_url.into()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ArkError::BaseUrl(base_url.into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .user_agent(concat!("seedq/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(ArkError::Client)?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            key,
            read_retries: 2,
            request_timeout,
            last_ok: Arc::new(AtomicI64::new(0)),
            skew_ms: Arc::new(AtomicI64::new(i64::MIN)),
            gate: None,
        })
    }

    /// Meters list, GET and DELETE calls through `gate` (see the module docs).
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Waits for a turn on `route`, when a gate meters this client.
    async fn turn(&self, route: ReadRoute, patience: Duration) -> Result<(), ArkError> {
        match &self.gate {
            Some(g) if !g.turn(route, patience).await => Err(ArkError::Budget {
                route: route.name(),
                patience,
            }),
            _ => Ok(()),
        }
    }

    /// Sets how many times reads are retried (default 2, like the SDKs).
    pub fn with_read_retries(mut self, n: usize) -> Self {
        self.read_retries = n;
        self
    }

    fn url(&self, suffix: &str) -> String {
        format!("{}{TASKS_PATH}{suffix}", self.base)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(self.key.expose_secret())
            .header("Accept", "application/json")
            .header("X-Client-Request-Id", client_request_id())
    }

    /// Ark's clock minus ours (ms), from the `Date` header of the last answer; `None` before
    /// any answer carried one. The header has whole seconds, so this is good to about 1 s:
    /// enough to put reconciliation windows in Ark's clock (its `created_at` is seconds too).
    pub fn clock_skew_ms(&self) -> Option<i64> {
        Some(self.skew_ms.load(Ordering::Relaxed)).filter(|s| *s != i64::MIN)
    }

    fn note_clock(&self, headers: &reqwest::header::HeaderMap) {
        let Some(date) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
        else {
            return;
        };
        let local = chrono::Utc::now().timestamp_millis();
        // The header is truncated to the second: its midpoint is the best estimate.
        let skew = date.timestamp_millis() + 500 - local;
        self.skew_ms.store(skew, Ordering::Relaxed);
    }

    /// A second reading of Ark's clock, from a task seedq created itself: its `created_at`
    /// (Ark's clock, whole seconds) lies between the local start and end of the POST that made
    /// it. It fills in the skew when no answer carried a `Date` header (a proxy may strip it);
    /// a `Date` reading, fresher and of every answer, is never overwritten by it.
    pub fn note_created(&self, created_s: i64, post_started_ms: i64, post_ended_ms: i64) {
        if created_s <= 0 || post_ended_ms < post_started_ms {
            return;
        }
        let mid = post_started_ms / 2 + post_ended_ms / 2;
        let skew = created_s.saturating_mul(1000).saturating_add(500) - mid;
        let _ = self
            .skew_ms
            .compare_exchange(i64::MIN, skew, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When Ark last answered a request with a 2xx, in unix ms.
    pub fn last_success_ms(&self) -> Option<i64> {
        Some(self.last_ok.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// One HTTP attempt, counted in the metrics under `op`.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        op: &'static str,
    ) -> Result<T, ArkError> {
        let started = Instant::now();
        let result = self.send_once(req, url, op == "create").await;
        let (status, code) = match &result {
            Ok(_) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                self.last_ok.store(now, Ordering::Relaxed);
                (None, None)
            }
            Err(e @ ArkError::Connect { .. }) => (e.status(), Some("connect")),
            Err(e @ ArkError::Decode { .. }) => (e.status(), Some("decode")),
            Err(e @ ArkError::TooLarge { .. }) => (e.status(), Some("too_large")),
            Err(e @ ArkError::Local { .. }) => (e.status(), Some("local_resource")),
            Err(e) => (e.status(), Some(e.code().unwrap_or("transport"))),
        };
        crate::metrics::ark_request(op, status, code, started.elapsed());
        result
    }

    async fn send_once<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        create: bool,
    ) -> Result<T, ArkError> {
        let resp = req.send().await.map_err(|source| {
            // Checked first: running out of descriptors also shows up as a connect error.
            if is_local_resource(&source) {
                ArkError::Local {
                    url: url.to_string(),
                    source,
                }
            } else if source.is_connect() {
                ArkError::Connect {
                    url: url.to_string(),
                    source,
                }
            } else {
                let what = if source.is_timeout() {
                    "timeout"
                } else {
                    "connection error"
                };
                ArkError::Transport {
                    what,
                    create,
                    source,
                }
            }
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        self.note_clock(&headers);
        let body = read_capped(resp, MAX_API_BODY)
            .await
            .map_err(|source| ArkError::Transport {
                what: "reading the response body",
                create,
                source,
            })?
            .ok_or(ArkError::TooLarge {
                status: status.as_u16(),
                limit: MAX_API_BODY,
                create,
            })?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|_| ArkError::Decode {
                status: status.as_u16(),
                snippet: snippet(&body),
                create,
            });
        }
        Err(api_error(status, &headers, &body, create))
    }

    /// Creates a task from the frozen JSON body. Never retried here.
    ///
    /// # Errors
    /// See [`ArkError::class`]: `Ambiguous` means a task may exist.
    pub async fn create(&self, body_json: &str) -> Result<CreateTaskResponse, ArkError> {
        self.create_within(body_json, None).await
    }

    /// [`ArkClient::create`], given up after `within` when that is sooner than the client's own
    /// request timeout: a create that must not be answered after a moment (a flex TPD day's
    /// end) ends by then, answered or ambiguous.
    ///
    /// # Errors
    /// As [`ArkClient::create`]; running out of `within` after the request left is `Ambiguous`.
    pub async fn create_within(
        &self,
        body_json: &str,
        within: Option<Duration>,
    ) -> Result<CreateTaskResponse, ArkError> {
        let url = self.url("");
        let mut req = self
            .request(reqwest::Method::POST, &url)
            .header("Content-Type", "application/json")
            .body(body_json.to_string());
        if let Some(within) = within {
            req = req.timeout(within.min(self.request_timeout));
        }
        self.send(req, &url, "create").await
    }

    /// Gets one task, retrying transient failures.
    ///
    /// # Errors
    /// The last failure; 404 when the task is unknown or gone.
    pub async fn get(&self, id: &str) -> Result<Task, ArkError> {
        let url = self.url(&format!("/{id}"));
        self.retrying(|| async {
            self.turn(ReadRoute::Get, READ_PATIENCE).await?;
            self.send(self.request(reqwest::Method::GET, &url), &url, "get")
                .await
        })
        .await
    }

    /// Lists tasks, retrying transient failures.
    ///
    /// # Errors
    /// The last failure.
    pub async fn list(&self, q: &ListQuery) -> Result<ListTasksResponse, ArkError> {
        self.list_within(q, READ_PATIENCE).await
    }

    /// Lists tasks if the account's list budget has a turn within `patience`.
    ///
    /// # Errors
    /// The last failure; `ArkError::Budget` when no turn came in time (nothing was sent).
    pub async fn list_within(
        &self,
        q: &ListQuery,
        patience: Duration,
    ) -> Result<ListTasksResponse, ArkError> {
        let mut url =
            url::Url::parse(&self.url("")).map_err(|_| ArkError::BaseUrl(self.base.clone()))?;
        {
            let mut qp = url.query_pairs_mut();
            if let Some(n) = q.page_num {
                qp.append_pair("page_num", &n.to_string());
            }
            if let Some(n) = q.page_size {
                qp.append_pair("page_size", &n.to_string());
            }
            if let Some(s) = &q.status {
                qp.append_pair("filter.status", s);
            }
            // One key per id, as both SDKs and the docs do.
            for id in &q.task_ids {
                qp.append_pair("filter.task_ids", id);
            }
            if let Some(m) = &q.model {
                qp.append_pair("filter.model", m);
            }
            if let Some(t) = &q.service_tier {
                qp.append_pair("filter.service_tier", t);
            }
        }
        let url = url.to_string();
        self.retrying(|| async {
            self.turn(ReadRoute::List, patience).await?;
            self.send(self.request(reqwest::Method::GET, &url), &url, "list")
                .await
        })
        .await
    }

    /// Cancels a queued task or deletes a finished record.
    ///
    /// # Errors
    /// The last failure; a refusal (e.g. a running task) is `Rejected`.
    pub async fn delete(&self, id: &str) -> Result<(), ArkError> {
        let url = self.url(&format!("/{id}"));
        self.retrying(|| async {
            self.turn(ReadRoute::Delete, READ_PATIENCE).await?;
            let _: serde_json::Value = self
                .send(self.request(reqwest::Method::DELETE, &url), &url, "delete")
                .await?;
            Ok(())
        })
        .await
    }

    async fn retrying<T, F, Fut>(&self, f: F) -> Result<T, ArkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ArkError>>,
    {
        let policy = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(8))
            .with_max_times(self.read_retries)
            .with_jitter();
        f.retry(policy).when(ArkError::retryable_read).await
    }

    /// The underlying HTTP client, for downloads of result URLs (which take no auth).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    s.chars().take(200).collect()
}

fn api_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    create: bool,
) -> ArkError {
    let request_id = headers
        .get("X-Client-Request-Id")
        .or_else(|| headers.get("X-Request-Id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error);
    let (code, message, param, kind) = match parsed {
        Some(e) => (e.code, e.message, e.param.filter(|p| !p.is_empty()), e.kind),
        None => (
            status
                .canonical_reason()
                .unwrap_or("Error")
                .replace(' ', ""),
            snippet(body),
            None,
            None,
        ),
    };
    ArkError::Api {
        status: status.as_u16(),
        code,
        message,
        param,
        kind,
        request_id,
        retry_after: retry_after(headers),
        create,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, create: bool) -> ArkError {
        ArkError::Api {
            status,
            code: "X".into(),
            message: "m".into(),
            param: None,
            kind: None,
            request_id: String::new(),
            retry_after: None,
            create,
        }
    }

    #[test]
    fn classification_follows_the_never_pay_twice_rules() {
        assert_eq!(api(400, true).class(), ErrorClass::Rejected);
        assert_eq!(api(401, false).class(), ErrorClass::Rejected);
        assert_eq!(api(404, false).class(), ErrorClass::Rejected);
        assert_eq!(api(429, true).class(), ErrorClass::Throttled(None));
        assert_eq!(api(500, true).class(), ErrorClass::Ambiguous);
        assert_eq!(api(503, false).class(), ErrorClass::Transient);
        let d = ArkError::Decode {
            status: 200,
            snippet: "<html>".into(),
            create: true,
        };
        assert_eq!(d.class(), ErrorClass::Ambiguous);
    }

    /// A gate that never has a turn: counts how often it was asked.
    struct Closed(std::sync::atomic::AtomicUsize);

    impl Gate for Closed {
        fn turn(
            &self,
            _route: ReadRoute,
            _patience: Duration,
        ) -> futures::future::BoxFuture<'_, bool> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { false })
        }
    }

    #[test]
    fn a_state_refusal_is_final_and_an_empty_budget_sends_nothing() {
        // 409 `InvalidAction.RunningTaskDeletion` (docs/ark-api.md §14): asking again changes nothing.
        let mut e = api(409, false);
        if let ArkError::Api { code, .. } = &mut e {
            *code = "InvalidAction.RunningTaskDeletion".into();
        }
        assert_eq!(e.class(), ErrorClass::Rejected);
        assert_eq!(api(409, false).class(), ErrorClass::Transient);
        let b = ArkError::Budget {
            route: "list",
            patience: Duration::ZERO,
        };
        assert_eq!(b.class(), ErrorClass::Throttled(None));
        assert!(!b.retryable_read());
    }

    #[tokio::test]
    async fn reads_ask_the_gate_before_every_call_and_stop_when_it_says_no() {
        let gate = Arc::new(Closed(std::sync::atomic::AtomicUsize::new(0)));
        // Port 9 (discard) on loopback: had anything been sent, the error would be a connect one.
        let c = ArkClient::new(
            "http://127.0.0.1:9",
            SecretString::from("k".to_string()),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("client")
        .with_gate(gate.clone());
        let e = c
            .list_within(&ListQuery::default(), Duration::ZERO)
            .await
            .err();
        assert!(
            matches!(e, Some(ArkError::Budget { route: "list", .. })),
            "{e:?}"
        );
        assert!(matches!(
            c.get("cgt-x").await,
            Err(ArkError::Budget { route: "get", .. })
        ));
        assert!(matches!(
            c.delete("cgt-x").await,
            Err(ArkError::Budget {
                route: "delete",
                ..
            })
        ));
        assert_eq!(
            gate.0.load(Ordering::SeqCst),
            3,
            "one turn asked per call, no retries"
        );
    }

    #[test]
    fn created_at_fills_in_the_skew_but_never_overrides_a_date_reading() {
        let c = ArkClient::new(
            "http://127.0.0.1:9",
            SecretString::from("k".to_string()),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("client");
        assert_eq!(c.clock_skew_ms(), None);
        // Ark 10 s behind: a task created during a POST from 100.0 s to 100.4 s says 90.
        c.note_created(90, 100_000, 100_400);
        assert_eq!(c.clock_skew_ms(), Some(90_500 - 100_200));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::DATE,
            reqwest::header::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        c.note_clock(&h);
        let from_date = c.clock_skew_ms();
        c.note_created(90, 100_000, 100_400);
        assert_eq!(c.clock_skew_ms(), from_date, "the Date reading stands");
    }

    #[test]
    fn huge_retry_after_saturates_and_is_capped() {
        let ra = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("Retry-After", v.parse().expect("header"));
            retry_after(&h)
        };
        // Each of these panicked `Duration::from_secs_f64` or overflowed later arithmetic.
        assert_eq!(ra("1e300"), Some(MAX_RETRY_AFTER));
        assert_eq!(ra("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(ra("inf"), Some(MAX_RETRY_AFTER));
        assert_eq!(ra("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(ra("-1"), None);
        assert_eq!(ra("NaN"), None);
        assert_eq!(ra("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn out_of_descriptors_is_a_local_resource_error() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(is_local_resource(&emfile));
        let wrapped = anyhow::Error::new(emfile).context("connecting");
        assert!(is_local_resource(wrapped.as_ref()));
        let refused = std::io::Error::from_raw_os_error(111);
        assert!(!is_local_resource(&refused));
    }

    #[test]
    fn request_ids_look_like_the_sdks() {
        let a = client_request_id();
        let b = client_request_id();
        assert_eq!(a.len(), 34);
        assert_ne!(a, b);
        assert!(a[..14].chars().all(|c| c.is_ascii_digit()));
        assert!(a[14..].chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn error_bodies_parse_into_fields() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("Retry-After", "3".parse().expect("header"));
        h.insert("X-Client-Request-Id", "rid".parse().expect("header"));
        let body = br#"{"error":{"code":"ModelAccountRpmRateLimitExceeded","message":"slow down","param":"","type":"TooManyRequests"}}"#;
        let e = api_error(StatusCode::TOO_MANY_REQUESTS, &h, body, true);
        assert_eq!(
            e.class(),
            ErrorClass::Throttled(Some(Duration::from_secs(3)))
        );
        assert_eq!(e.code(), Some("ModelAccountRpmRateLimitExceeded"));
        match e {
            ArkError::Api {
                param,
                kind,
                request_id,
                ..
            } => {
                assert_eq!(param, None, "empty param means not applicable");
                assert_eq!(kind.as_deref(), Some("TooManyRequests"));
                assert_eq!(request_id, "rid");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = api_error(
            StatusCode::BAD_GATEWAY,
            &h,
            b"<html>bad gateway</html>",
            false,
        );
        assert_eq!(e.code(), Some("BadGateway"));
    }
}
