//! Pausing a model or a batch: the verbs behind `seedq pause` / `seedq resume` and the
//! dashboard's buttons. The claim (`NOT_PAUSED` in `store/mod.rs`) reads the same table, so a
//! paused model's or batch's queued jobs stay queued while jobs already at Ark carry on.

use rusqlite::params;

use super::{Store, StoreError, now_ms};

/// What is paused: a model (every tier) or a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseKind {
    Model,
    Batch,
}

impl PauseKind {
    /// The `paused.kind` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Batch => "batch",
        }
    }

    /// Parses `model` or `batch`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "model" => Some(Self::Model),
            "batch" => Some(Self::Batch),
            _ => None,
        }
    }
}

/// One paused model or batch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Paused {
    pub kind: String,
    pub name: String,
    pub paused_at: i64,
}

impl Store {
    /// Pauses a model or batch. Returns false when it was paused already (nothing changes).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn pause(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::pause::pause(pg, kind, name).await;
        }
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

    /// Resumes a model or batch. Returns false when it was not paused.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn resume(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::pause::resume(pg, kind, name).await;
        }
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

    /// Everything paused, by kind then name.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn paused(&self) -> Result<Vec<Paused>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::pause::paused(pg).await;
        }
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

    /// When `name` of `kind` was paused, or `None` when it is not.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn paused_at(&self, kind: PauseKind, name: &str) -> Result<Option<i64>, StoreError> {
        if let Some(pg) = self.pg() {
            return super::pg::pause::paused_at(pg, kind, name).await;
        }
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
