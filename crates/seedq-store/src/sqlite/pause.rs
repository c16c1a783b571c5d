//! SQLite implementation of [`PauseStore`] (declared in `store/pause.rs`; the PostgreSQL
//! implementation is `store/postgres/pause.rs`).

use super::SqliteStore;
use crate::pause::*;
use crate::{StoreError, now_ms};
use rusqlite::params;

impl PauseStore for SqliteStore {
    async fn pause(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO paused (kind, name, paused_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
                params![kind.as_str(), name, now_ms()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn resume(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            let n = c.execute(
                "DELETE FROM paused WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn paused(&self) -> Result<Vec<Paused>, StoreError> {
        self.call(|c| {
            let mut st =
                c.prepare_cached("SELECT kind, name, paused_at FROM paused ORDER BY kind, name")?;
            let rows = st.query_map([], |r| {
                Ok(Paused {
                    kind: r.get(0)?,
                    name: r.get(1)?,
                    paused_at: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn paused_at(
        &self,
        kind: PauseKind,
        name: &str,
    ) -> Result<Option<crate::Timestamp>, StoreError> {
        use rusqlite::OptionalExtension as _;
        let name = name.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT paused_at FROM paused WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }
}
