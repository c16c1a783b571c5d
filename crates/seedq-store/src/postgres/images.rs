//! PostgreSQL implementation of the embedded-image store (the SQLite one is `store/sqlite/images.rs`).
//!
//! The text scan and the splice back are the shared pure functions [`images::scan`] and
//! [`images::restore`]; only the reads and writes of the `images` table are here.

use crate::images::ImageStore;
use std::collections::HashMap;

use deadpool_postgres::GenericClient;

use super::PgStore;
use crate::{StoreError, images};

/// Stores the (sha256, data URL) pairs [`images::scan`] found, once per distinct image, in
/// one statement (an enqueue of many jobs that share a first frame sends it once).
///
/// # Errors
/// SQL errors.
pub(crate) async fn insert(
    c: &impl GenericClient,
    pairs: &[(String, &str)],
    now: i64,
) -> Result<(), StoreError> {
    if pairs.is_empty() {
        return Ok(());
    }
    // Each image once, in hash order: two enqueues sharing images then take the key locks
    // in the same order and cannot deadlock each other.
    let mut seen = HashMap::with_capacity(pairs.len());
    for (h, u) in pairs {
        seen.entry(h.as_str()).or_insert(*u);
    }
    let (hashes, urls): (Vec<&str>, Vec<&str>) = seen.into_iter().unzip();
    let st = c
        .prepare_cached(
            "INSERT INTO images (sha256, data_url, created_at) \
             SELECT h, u, $3 FROM unnest($1::text[], $2::text[]) AS x(h, u) \
             ORDER BY h \
             ON CONFLICT (sha256) DO NOTHING",
        )
        .await?;
    c.execute(&st, &[&hashes, &urls, &now]).await?;
    Ok(())
}

/// Moves the image data URLs of one body into the `images` table and returns the body with
/// references (the twin of [`images::intern`]).
///
/// # Errors
/// SQL errors.
pub(crate) async fn intern(
    c: &impl GenericClient,
    body: &str,
    now: i64,
) -> Result<String, StoreError> {
    let (out, pairs) = images::scan(body);
    insert(c, &pairs, now).await?;
    Ok(out.into_owned())
}

impl ImageStore for PgStore {
    /// [`crate::Store::inflate_body`]: every referenced image in one query, then the
    /// shared splice.
    async fn inflate(&self, body: String) -> Result<String, StoreError> {
        let body: &str = &body;

        let hashes = images::references(body);
        let c = self.conn().await?;
        let st = c
            .prepare_cached("SELECT sha256, data_url FROM images WHERE sha256 = ANY($1::text[])")
            .await?;
        let mut found: HashMap<String, String> = HashMap::with_capacity(hashes.len());
        for r in c.query(&st, &[&hashes]).await? {
            found.insert(r.try_get(0)?, r.try_get(1)?);
        }
        images::restore(body, |hash| Ok(found.get(hash).cloned()))
    }

    async fn image_count(&self) -> Result<i64, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_one("SELECT COUNT(*) FROM images", &[])
            .await?
            .try_get(0)?)
    }
}
