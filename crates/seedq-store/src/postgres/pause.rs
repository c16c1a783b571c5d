//! PostgreSQL implementation of pausing a model or a batch (`store/pause.rs`). The claim reads the
//! same `paused` table (`NOT_PAUSED`), so a pause takes effect on every worker of the fleet
//! at its next claim.

use super::PgStore;
use crate::pause::PauseStore;
use crate::{PauseKind, Paused, StoreError, now_ms};

impl PauseStore for PgStore {
    async fn pause(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let n = c
    .execute(
        "INSERT INTO paused (kind, name, paused_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&kind.as_str(), &name, &now_ms()],
    )
    .await?;
        Ok(n == 1)
    }

    async fn resume(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "DELETE FROM paused WHERE kind = $1 AND name = $2",
                &[&kind.as_str(), &name],
            )
            .await?;
        Ok(n == 1)
    }

    /// [`crate::Store::paused`]: by kind then name, in byte order as SQLite sorts.
    async fn paused(&self) -> Result<Vec<Paused>, StoreError> {
        let c = self.conn().await?;
        let st = c
    .prepare_cached(
        "SELECT kind, name, paused_at FROM paused ORDER BY kind COLLATE \"C\", name COLLATE \"C\"",
    )
    .await?;
        c.query(&st, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(Paused {
                    kind: r.try_get(0)?,
                    name: r.try_get(1)?,
                    paused_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn paused_at(
        &self,
        kind: PauseKind,
        name: &str,
    ) -> Result<Option<crate::Timestamp>, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_opt(
            "SELECT paused_at FROM paused WHERE kind = $1 AND name = $2",
            &[&kind.as_str(), &name],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
    }
}
