//! Signed webhooks from the durable outbox (`store::webhooks`, migrations/0016_webhooks.sql).
//!
//! When a job created through a door with a webhook ends, the transaction that ends it adds an outbox row (a
//! database trigger), so no crash between the job's end and its webhook can lose it. Every
//! worker of `seedq serve` runs [`run`]: it claims due rows under a lease, POSTs the task in
//! its door's shape (Ark's task, or OpenAI's `Video`) to the create's `callback_url` or the
//! key's webhook URL, and records the outcome. A failure is tried again with exponential
//! backoff (`api.webhook_min_backoff`, doubled per attempt, capped at an hour) until the row
//! is `api.webhook_max_age` old. Each row keeps one `webhook-id` for all its attempts: a
//! receiver gets every webhook at least once and can drop repeats.
//!
//! Signatures follow Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256>` of
//! `<webhook-id>.<webhook-timestamp>.<body>` under the key's secret (`whsec_<base64>`), or for
//! a job created with the admin token under the server's (`api.webhook_secret_file`).
//! URLs follow the downloader's SSRF rules (`stage::safeurl`: public https, or a host in
//! `archive.download_allow`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio_util::sync::CancellationToken;

use super::sign::hmac_sha256;
use super::{Api, ark, openai};
use crate::stage::safeurl::{UrlPolicy, download_client};
use crate::stage::{Ctx, StageError};
use crate::store::Timestamp;
use crate::store::now_ms;
use crate::store::webhooks::WebhookDue;

/// Rows one step sends (each claimed on its own) before the loop looks at shutdown again.
const BATCH: i64 = 16;
/// The longest wait between two attempts of one webhook.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The Standard Webhooks signature of one delivery: `v1,<base64 HMAC-SHA256>` of
/// `id.timestamp.body` under the secret's bytes (the base64 after `whsec_`).
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = secret
        .strip_prefix(super::keys::SECRET_PREFIX)
        .unwrap_or(secret);
    let key = b64.decode(raw).unwrap_or_else(|_| raw.as_bytes().to_vec());
    let mac = hmac_sha256(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", b64.encode(mac))
}

/// When attempt `attempts + 1` is due after a failure at `now`.
fn next_attempt(now: i64, attempts: i64, base: Duration) -> i64 {
    let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    let delay = base
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_BACKOFF);
    let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
    // Up to a tenth more, so a fleet's retries of one receiver do not all land together.
    now + ms + rand::random_range(0..=ms / 10)
}

/// Delivers due webhooks until shutdown.
///
/// # Errors
/// The HTTP client cannot be built.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, policy) = download_client(&ctx.cfg)?;
    let api = Api::new(&ctx);
    let idle = ctx.cfg.dispatch.idle_interval;
    loop {
        let worked = match step(&api, &client, &policy).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::warn!(error = %e.report(), "webhooks: a step failed");
                false
            }
        };
        if worked {
            continue;
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(idle) => {}
        }
    }
}

/// Claims and sends the due webhooks; returns how many were attempted.
///
/// # Errors
/// The store failed.
pub async fn step(
    api: &Api,
    client: &reqwest::Client,
    policy: &Arc<UrlPolicy>,
) -> Result<usize, StageError> {
    let ctx = &api.ctx;
    // The lease outlasts one attempt (its HTTP timeout), so no two workers send a row at once.
    let lease = ctx.cfg.ark.request_timeout.saturating_mul(2) + Duration::from_secs(5);
    // One row per claim: each lease covers one attempt only, so a slow receiver cannot
    // keep the rows behind it leased past their lease (and sent twice by another worker).
    let mut n = 0;
    while n < BATCH as usize {
        let Some(w) = ctx
            .store
            .webhook_claim(Timestamp::now(), lease, 1)
            .await?
            .into_iter()
            .next()
        else {
            break;
        };
        n += 1;
        let outcome = send(api, client, policy, &w).await;
        let now = now_ms();
        let outcome = match outcome {
            Ok(()) => {
                tracing::info!(job_id = %w.job_id, webhook = %w.id, "webhook delivered");
                Ok(())
            }
            Err(Failure::Defer(e)) => {
                // The 'archived' transition makes the row due again (migrations/0016_webhooks.sql).
                let later = now + i64::try_from(MAX_BACKOFF.as_millis()).unwrap_or(3_600_000);
                tracing::debug!(job_id = %w.job_id, webhook = %w.id, "webhook deferred");
                Err((e, Some(later)))
            }
            Err(Failure::Final(e)) => {
                tracing::warn!(job_id = %w.job_id, webhook = %w.id, error = %e, "webhook given up");
                Err((e, None))
            }
            Err(Failure::Retry(e)) => {
                let max_age =
                    i64::try_from(ctx.cfg.api.webhook_max_age.as_millis()).unwrap_or(i64::MAX / 2);
                let next = next_attempt(now, w.attempts, ctx.cfg.api.webhook_min_backoff);
                if next - w.created_at.ms() > max_age {
                    tracing::warn!(job_id = %w.job_id, webhook = %w.id, error = %e, "webhook given up after its retries");
                    Err((e, None))
                } else {
                    tracing::warn!(job_id = %w.job_id, webhook = %w.id, error = %e, "webhook failed; will retry");
                    Err((e, Some(next)))
                }
            }
        };
        ctx.store.webhook_attempted(&w, now, outcome).await?;
    }
    Ok(n)
}

/// Why an attempt did not deliver.
enum Failure {
    /// Worth another attempt (the receiver failed or could not be reached).
    Retry(String),
    /// Never deliverable (no URL, refused by the SSRF rules, the job is gone).
    Final(String),
    /// Not yet: the job succeeded but its video is still being archived.
    Defer(String),
}

async fn send(
    api: &Api,
    client: &reqwest::Client,
    policy: &Arc<UrlPolicy>,
    w: &WebhookDue,
) -> Result<(), Failure> {
    let store = &api.ctx.store;
    let retry = |e: crate::store::StoreError| Failure::Retry(format!("the job store failed: {e}"));
    let Some((job, Some(meta))) = store.api_job(&w.job_id).await.map_err(retry)? else {
        return Err(Failure::Final("the job's door record is gone".into()));
    };
    // With archiving on, success is announced once the video is in the archive (the door
    // shows the job as running until then: `door::status`).
    if api.ctx.archive.is_some()
        && matches!(
            job.state,
            crate::job::JobState::Succeeded | crate::job::JobState::Archiving
        )
    {
        return Err(Failure::Defer(
            "waiting for the video to be archived".into(),
        ));
    }
    // A key's job is signed with the key's secret and may fall back to its webhook URL; an
    // admin-token job has only its create's callback_url and the server's secret.
    let (secret, key_url) = match meta.api_key.as_deref() {
        Some(key_id) => {
            let Some(key) = store.api_key(key_id).await.map_err(retry)? else {
                return Err(Failure::Final("the job's key is gone".into()));
            };
            (SecretString::from(key.webhook_secret), key.webhook_url)
        }
        None => match &api.ctx.cfg.api.webhook_secret {
            Some(s) => (s.clone(), None),
            // Unset since the create: delivered once the operator sets it again.
            None => {
                return Err(Failure::Retry(
                    "no secret to sign an admin-token job's webhook: set api.webhook_secret_file"
                        .into(),
                ));
            }
        },
    };
    let Some(url) = meta.webhook_url.clone().or(key_url) else {
        return Err(Failure::Final("no webhook URL".into()));
    };
    // The URL may carry a secret token (in its path or query): messages, which reach the
    // log and the outbox's `last_error`, show only its scheme and host.
    let shown = redact(&url);
    let parsed = policy
        .check_str(&url)
        .map_err(|e| Failure::Final(scrub(&e, &url)))?;
    // File links in the body are built as a request to the listener would build them.
    let mut headers = HeaderMap::new();
    if let Ok(h) = HeaderValue::from_str(api.ctx.cfg.api.listen.trim()) {
        headers.insert(header::HOST, h);
    }
    let body = if meta.door == "openai" {
        openai::video(api, &job, Some(&meta)).to_string()
    } else {
        let task = ark::task(api, &headers, &job, Some(&meta))
            .await
            .map_err(|e| Failure::Retry(format!("{e:?}")))?;
        serde_json::to_string(&task).map_err(|e| Failure::Final(e.to_string()))?
    };
    let ts = now_ms() / 1000;
    let sig = signature(secret.expose_secret(), &w.id, ts, &body);
    let resp = client
        .post(parsed)
        .timeout(api.ctx.cfg.ark.request_timeout)
        .header(header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &w.id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let e = format!("{:#}", anyhow::Error::new(e.without_url()));
            Failure::Retry(format!(
                "cannot reach the receiver at {shown}: {}",
                scrub(&e, &url)
            ))
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(Failure::Retry(format!(
            "the receiver at {shown} answered {}",
            resp.status()
        )))
    }
}

/// A URL as messages may show it: its scheme, host and port only.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}", u.scheme(), u.host_str().unwrap_or("?"))
        }
        Err(_) => "(an unparsable URL)".into(),
    }
}

/// `msg` with every spelling of `url` in it (as given, as normalised) replaced by [`redact`].
fn scrub(msg: &str, url: &str) -> String {
    let shown = redact(url);
    let mut out = msg.replace(url, &shown);
    if let Ok(u) = reqwest::Url::parse(url) {
        out = out.replace(u.as_str(), &shown);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_standard_webhooks_v1() {
        // The secret's bytes are the base64 after `whsec_`: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        // is the secret of the Standard Webhooks specification's example.
        let s = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(s, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn messages_show_a_webhook_url_as_scheme_and_host_only() {
        let url = "https://user:pw@hooks.example.com:8443/t/SECRET?token=SECRET2";
        assert_eq!(redact(url), "https://hooks.example.com:8443");
        let msg = scrub(&format!("refusing to download {url:?}: nope"), url);
        assert!(!msg.contains("SECRET") && !msg.contains("pw"), "{msg}");
        let normalised = reqwest::Url::parse("HTTPS://h.example/a b?k=SECRET").expect("url");
        let msg = scrub(
            &format!("at {normalised}"),
            "HTTPS://h.example/a b?k=SECRET",
        );
        assert!(!msg.contains("SECRET"), "{msg}");
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        let base = Duration::from_secs(5);
        let first = next_attempt(0, 0, base);
        assert!((5000..=5500).contains(&first), "{first}");
        let fourth = next_attempt(0, 3, base);
        assert!((40_000..=44_000).contains(&fourth), "{fourth}");
        let late = next_attempt(0, 50, base);
        assert!((3_600_000..=3_960_000).contains(&late), "{late}");
    }
}
