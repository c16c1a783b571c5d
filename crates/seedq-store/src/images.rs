//! Embedded images stored once, by hash, outside the job rows.
//!
//! A `data:` image in a frozen body can be 40 MB of base64. Kept inline, every claim and every
//! `ls` read it (30 jobs with a 27 MB image made `seedq ls` use 1.1 GB), and a batch reusing one
//! first frame stored it once per job. At insert, [`intern`] moves each image data URL into the
//! `images` table and leaves a reference in the body; [`Store::inflate_body`] restores the
//! exact text just before the POST.
//!
//! The body is scanned as text for `"url":"data:…"`: JSON escapes every `"` inside a string,
//! so that sequence can only be a real `url` member (a prompt cannot fake it), and a base64
//! data URL contains no `"` or `\`, so its value ends at the next `"`.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::{Store, StoreError};

/// What an interned image's URL becomes in a stored body. Not a URL Ark accepts, so a body
/// that escaped inflation is refused rather than creating a different video.
pub const REF_PREFIX: &str = "seedq-image:sha256:";
/// Marks an embedded image in a body.
const DATA_MEMBER: &str = "\"url\":\"data:";
/// Marks an interned image in a body.
const REF_MEMBER: &str = "\"url\":\"seedq-image:sha256:";

/// The text scan of [`intern`], without the database: `body` with a reference in place of
/// each image data URL, and the (sha256, data URL) pairs to store (one per occurrence; a
/// repeated image appears again, and its insert is a no-op). Each backend inserts the pairs
/// in its own dialect, so both rewrite a body byte for byte the same way.
pub(crate) fn scan(body: &str) -> (Cow<'_, str>, Vec<(String, &str)>) {
    if !body.contains(DATA_MEMBER) {
        return (Cow::Borrowed(body), Vec::new());
    }
    let mut images = Vec::new();
    let mut out = String::with_capacity(body.len().min(64 * 1024));
    let mut rest = body;
    while let Some(at) = rest.find(DATA_MEMBER) {
        let value_start = at + DATA_MEMBER.len() - "data:".len();
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        let url = &rest[value_start..value_start + len];
        out.push_str(&rest[..value_start]);
        if url.contains('\\') || !url.starts_with("data:image/") {
            // Escaped text is not a plain base64 data URL: keep it inline, untouched.
            out.push_str(url);
        } else {
            let hash = hex::encode(Sha256::digest(url.as_bytes()));
            out.push_str(REF_PREFIX);
            out.push_str(&hash);
            images.push((hash, url));
        }
        rest = &rest[value_start + len..];
    }
    out.push_str(rest);
    (Cow::Owned(out), images)
}

/// The image hashes a body written by [`intern`] refers to, in order (repeats included).
pub(crate) fn references(body: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(REF_MEMBER) {
        let hash_start = at + REF_MEMBER.len();
        let Some(len) = rest[hash_start..].find('"') else {
            break;
        };
        out.push(&rest[hash_start..hash_start + len]);
        rest = &rest[hash_start + len..];
    }
    out
}

/// Puts the data URLs back into a body written by [`intern`], each looked up by `url_of`
/// (the backend's read of the `images` table).
///
/// # Errors
/// A referenced image is missing (the database was edited by hand), or `url_of`'s errors.
pub(crate) fn restore(
    body: &str,
    mut url_of: impl FnMut(&str) -> Result<Option<String>, StoreError>,
) -> Result<String, StoreError> {
    if !body.contains(REF_MEMBER) {
        return Ok(body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some(at) = rest.find(REF_MEMBER) {
        let hash_start = at + REF_MEMBER.len();
        let Some(len) = rest[hash_start..].find('"') else {
            break;
        };
        let hash = &rest[hash_start..hash_start + len];
        let url = url_of(hash)?
            .ok_or_else(|| StoreError::Corrupt(format!("image sha256:{hash} is missing")))?;
        if out.is_empty() {
            out.reserve(body.len() + url.len());
        }
        out.push_str(&rest[..hash_start - REF_PREFIX.len()]);
        out.push_str(&url);
        rest = &rest[hash_start + len..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Store {
    /// The body to POST: `body` (a frozen body, possibly changed since) with its interned
    /// images restored. Called just before the create, so the full body lives only as long
    /// as the request.
    ///
    /// # Errors
    /// A referenced image is missing, or SQL errors.
    pub async fn inflate_body(&self, body: String) -> Result<String, StoreError> {
        if !body.contains(REF_MEMBER) {
            return Ok(body);
        }
        self.inflate(body).await
    }
}

backend_trait! {
    /// Images interned out of request bodies, restored before a create.
    trait ImageStore {
        /// [`Store::inflate_body`] for a body that references interned images.
        ///
        /// # Errors
        /// A referenced image is missing, or SQL errors.
        pub(super) fn inflate(&self, body: String) -> Result<String, StoreError>;

        /// How many distinct images are stored.
        ///
        /// # Errors
        /// SQL errors.
        pub fn image_count(&self) -> Result<i64, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_moves_only_plain_image_data_urls() {
        let img = format!("data:image/png;base64,{}", "QUJD".repeat(10));
        let body = format!(
            r#"{{"a":{{"url":"{img}"}},"b":{{"url":"{img}"}},"c":{{"url":"data:text/plain,x"}},"d":{{"url":"data:image/png;base64,\u0041"}}}}"#
        );
        let (out, pairs) = scan(&body);
        let hash = hex::encode(Sha256::digest(img.as_bytes()));
        assert_eq!(
            pairs,
            vec![(hash.clone(), img.as_str()), (hash.clone(), img.as_str())]
        );
        assert_eq!(out.matches(REF_PREFIX).count(), 2);
        assert!(
            out.contains("data:text/plain,x") && out.contains(r"\u0041"),
            "{out}"
        );
        assert_eq!(references(&out), vec![hash.as_str(), hash.as_str()]);
        let back = restore(&out, |h| Ok((h == hash).then(|| img.clone()))).expect("restore");
        assert_eq!(back, body);
        assert!(matches!(
            restore(&out, |_| Ok(None)),
            Err(StoreError::Corrupt(_))
        ));
        let plain = r#"{"model":"m"}"#;
        assert!(matches!(scan(plain), (Cow::Borrowed(_), ref p) if p.is_empty()));
    }

    #[tokio::test]
    async fn images_are_stored_once_and_restored_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in crate::testpg::both(dir.path()).await {
            let img = format!("data:image/png;base64,{}", "QUJD".repeat(1000));
            let other = "data:image/jpeg;base64,/9j/AAAA".to_string();
            let body = format!(
                r#"{{"model":"m","content":[{{"type":"text","text":"say \"url\":\"data:x\" ok"}},{{"type":"image_url","image_url":{{"url":"{img}"}},"role":"first_frame"}},{{"type":"image_url","image_url":{{"url":"{other}"}},"role":"last_frame"}},{{"type":"image_url","image_url":{{"url":"https://x/a.png"}}}}]}}"#
            );
            let stored = body.clone();
            // Two jobs in one enqueue and one in another share the two images.
            let job = |body: &str| crate::NewJob::plain(body);
            let (a, b, c) = (job(&stored), job(&stored), job(&stored));
            let (ida, idb, idc) = (a.id.clone(), b.id.clone(), c.id.clone());
            s.enqueue(vec![a, b]).await.expect("enqueue");
            s.enqueue(vec![c]).await.expect("enqueue");
            let lean = s
                .job(ida.as_str())
                .await
                .expect("job")
                .expect("a")
                .request_json;
            assert!(!lean.contains("base64"), "{name}: {lean}");
            assert!(lean.len() < 600, "{name}: lean body: {} bytes", lean.len());
            assert!(
                lean.contains("https://x/a.png") && lean.contains(r#"\"url\":\"data:x\""#),
                "{name}"
            );
            assert_eq!(lean.matches(REF_PREFIX).count(), 2, "{name}");
            assert_eq!(
                s.image_count().await.expect("count"),
                2,
                "{name}: stored once each"
            );
            assert_eq!(
                s.inflate_body(lean).await.expect("inflate"),
                stored,
                "{name}"
            );
            // A body without references passes through untouched.
            let plain = r#"{"model":"m"}"#.to_string();
            assert_eq!(
                s.inflate_body(plain.clone()).await.expect("plain"),
                plain,
                "{name}"
            );
            // An image goes when the last job using it is pruned.
            s.cancel(ida.as_str()).await.expect("cancel");
            s.cancel(idc.as_str()).await.expect("cancel");
            let far = crate::now_ms() + 60_000;
            s.prune(
                crate::Timestamp::EPOCH,
                crate::Timestamp::from_ms(far),
                false,
            )
            .await
            .expect("prune");
            assert_eq!(
                s.image_count().await.expect("count"),
                2,
                "{name}: still used by b"
            );
            s.cancel(idb.as_str()).await.expect("cancel");
            s.prune(
                crate::Timestamp::EPOCH,
                crate::Timestamp::from_ms(far),
                false,
            )
            .await
            .expect("prune");
            assert_eq!(
                s.image_count().await.expect("count"),
                0,
                "{name}: no job uses them"
            );
        }
    }
}
