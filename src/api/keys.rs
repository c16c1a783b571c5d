//! Who is calling a door: an API key (`seedq keys create`) or the admin token, and each key's
//! request rate.
//!
//! A key is `sq_` and 32 random bytes (base64url); only its SHA-256 is stored, and it is
//! looked up on every request, so a revoked key is refused at once by every worker. A key
//! is never logged, echoed or stored in the clear. The request rate (`--rpm`) and the daily
//! spend cap (`--max-cost-per-day`) are both fleet-wide, in the store: the rate is a
//! sliding-window counter per key (`store::api::rate_window`) that every worker takes from
//! in one transaction, so N workers let a key through at its rpm, not N times it.

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use secrecy::ExposeSecret;

use super::sign::{same, sha256_hex};
use crate::stage::Ctx;
use crate::store::ApiKey;
use crate::store::Timestamp;

/// The prefix of every key: it tells a seedq key from an Ark key at a glance.
pub const KEY_PREFIX: &str = "sq_";
/// The prefix of a webhook signing secret (Standard Webhooks' convention).
pub const SECRET_PREFIX: &str = "whsec_";

/// The caller of a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The admin token (`admin.token`): sees and cancels every job.
    Admin,
    /// A key: sees and cancels only its own jobs.
    Key(ApiKey),
}

impl Caller {
    /// The owning key's id for new jobs (`None` for the admin).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Key(k) => Some(&k.id),
        }
    }

    /// True when this caller may see a job owned by `owner` (a key id, or `None`).
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Key(k) => owner == Some(k.id.as_str()),
        }
    }

    /// The scope of idempotency keys: one key's `Idempotency-Key` never meets another's.
    pub fn scope(&self) -> &str {
        self.key_id().unwrap_or("admin")
    }
}

/// Why a request was refused before its handler ran.
#[derive(Clone, Debug)]
pub enum Refused {
    /// No key, a wrong key or a revoked one (401).
    Unauthorized,
    /// Over the key's request rate (429, `Retry-After` seconds).
    RateLimited(u64),
    /// The store could not be read (500).
    Store(String),
}

/// A new key and the values to show once: `(row, key, webhook secret)`.
pub fn generate(name: &str) -> (ApiKey, String, String) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = format!("{KEY_PREFIX}{}", b64.encode(rand::random::<[u8; 32]>()));
    let secret = format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 24]>())
    );
    let row = ApiKey {
        id: format!("key_{}", hex::encode(rand::random::<[u8; 6]>())),
        name: name.to_string(),
        hash: sha256_hex(key.as_bytes()),
        max_cost_fen: None,
        rpm: None,
        models: None,
        webhook_url: None,
        webhook_secret: secret.clone(),
        created_at: Timestamp::now(),
        revoked_at: None,
    };
    (row, key, secret)
}

/// The bearer token of a request: `Authorization: Bearer …` (every SDK), else `api-key`
/// (Azure-style clients).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION)
        && let Ok(v) = v.to_str()
    {
        let v = v.trim();
        return Some(v.strip_prefix("Bearer ").unwrap_or(v).trim());
    }
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Identifies the caller and spends one request of its rate.
///
/// # Errors
/// [`Refused`]: no or a wrong key, the rate is spent, the store failed.
pub async fn authenticate(ctx: &Ctx, headers: &HeaderMap) -> Result<Caller, Refused> {
    let Some(token) = bearer(headers).filter(|t| !t.is_empty()) else {
        return Err(Refused::Unauthorized);
    };
    if let Some(admin) = ctx.cfg.admin.token.as_ref()
        && !admin.expose_secret().is_empty()
        && same(admin.expose_secret().as_bytes(), token.as_bytes())
    {
        return Ok(Caller::Admin);
    }
    if !token.starts_with(KEY_PREFIX) {
        return Err(Refused::Unauthorized);
    }
    let key = ctx
        .store
        .api_key_by_hash(&sha256_hex(token.as_bytes()))
        .await
        .map_err(|e| Refused::Store(e.to_string()))?
        .ok_or(Refused::Unauthorized)?;
    if let Some(rpm) = key.rpm
        && let Err(wait_ms) = ctx
            .store
            .api_rate_take(&key.id, rpm, crate::store::now_ms())
            .await
            .map_err(|e| Refused::Store(e.to_string()))?
    {
        // Whole seconds, rounded up: `Retry-After` has no fractions.
        let secs = u64::try_from((wait_ms + 999) / 1000).unwrap_or(1).max(1);
        return Err(Refused::RateLimited(secs));
    }
    Ok(Caller::Key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_stored_hashed() {
        let (row, key, secret) = generate("a");
        let (_, other, _) = generate("a");
        assert_ne!(key, other);
        assert!(key.starts_with(KEY_PREFIX) && key.len() > 40);
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(row.hash, sha256_hex(key.as_bytes()));
        assert!(!row.hash.contains(&key[3..]));
    }

    #[test]
    fn callers_see_only_their_own_jobs() {
        let (row, _, _) = generate("a");
        let k = Caller::Key(row.clone());
        assert!(k.sees(Some(&row.id)));
        assert!(!k.sees(Some("key_other")));
        assert!(!k.sees(None));
        assert!(Caller::Admin.sees(None));
    }
}
