//! SQLite implementation of [`ImageStore`] (declared in `store/images.rs`; the PostgreSQL
//! implementation is `store/postgres/images.rs`).

use super::SqliteStore;
use crate::StoreError;
use crate::images::*;
use rusqlite::{Connection, OptionalExtension, params};
use std::borrow::Cow;

/// Moves each image data URL of `body` into the `images` table (once per distinct image) and
/// returns the body with references in their place; unchanged when it embeds none.
///
/// # Errors
/// SQL errors.
pub(crate) fn intern<'a>(
    conn: &Connection,
    body: &'a str,
    now: i64,
) -> Result<Cow<'a, str>, StoreError> {
    let (out, images) = scan(body);
    for (hash, url) in images {
        conn.prepare_cached(
            "INSERT INTO images (sha256, data_url, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (sha256) DO NOTHING",
        )?
        .execute(params![hash, url, now])?;
    }
    Ok(out)
}

/// Puts the data URLs back into a body written by [`intern`].
///
/// # Errors
/// A referenced image is missing (the database was edited by hand), or SQL errors.
pub(crate) fn inflate(conn: &Connection, body: &str) -> Result<String, StoreError> {
    restore(body, |hash| {
        Ok(conn
            .prepare_cached("SELECT data_url FROM images WHERE sha256 = ?1")?
            .query_row([hash], |r| r.get(0))
            .optional()?)
    })
}

/// Deletes images that no job's body refers to any more (after pruning). One statement, so
/// it cannot race an enqueue, which writes an image and its job in one transaction.
///
/// # Errors
/// SQL errors.
pub(crate) fn delete_orphans(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM images WHERE NOT EXISTS \
         (SELECT 1 FROM jobs WHERE instr(jobs.request_json, images.sha256) > 0)",
        [],
    )
}

impl ImageStore for SqliteStore {
    async fn inflate(&self, body: String) -> Result<String, StoreError> {
        self.call(move |c| inflate(c, &body)).await
    }

    async fn image_count(&self) -> Result<i64, StoreError> {
        self.call(|c| Ok(c.query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?))
            .await
    }
}
