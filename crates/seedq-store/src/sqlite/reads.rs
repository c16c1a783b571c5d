//! SQLite implementation of [`ReadStore`] (declared in `store/reads.rs`; the PostgreSQL
//! implementation is `store/postgres/reads.rs`).

use super::SqliteStore;
use crate::StoreError;
use crate::reads::ReadStore;
use rusqlite::{OptionalExtension, params};

/// The one statement of [`Store::take_read_turn`] (SQLite spelling; see pg/reads.rs).
const TAKE_TURN: &str = "INSERT INTO read_budget (route, next_us) VALUES (?1, ?2 + ?3) \
     ON CONFLICT (route) DO UPDATE SET next_us = max(read_budget.next_us, ?2) + ?3 \
     WHERE max(read_budget.next_us, ?2) <= ?4 \
     RETURNING next_us - ?3";

impl ReadStore for SqliteStore {
    async fn take_read_turn(
        &self,
        route: &str,
        now_us: i64,
        spacing_us: i64,
        latest_us: i64,
    ) -> Result<Option<i64>, StoreError> {
        let route = route.to_string();
        self.call(move |c| {
            Ok(c.prepare_cached(TAKE_TURN)?
                .query_row(params![route, now_us, spacing_us, latest_us], |r| r.get(0))
                .optional()?)
        })
        .await
    }
}
