//! SQLite implementation of [`ImageStore`] (declared in `store/images.rs`; the PostgreSQL one is
//! `store/postgres/images.rs`).

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::images::ImageStore;
use crate::store::images::*;

impl ImageStore for SqliteStore {
    async fn inflate(&self, body: String) -> Result<String, StoreError> {
        self.call(move |c| inflate(c, &body)).await
    }

    async fn image_count(&self) -> Result<i64, StoreError> {
        self.call(|c| Ok(c.query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?))
            .await
    }
}
