//! Pausing a model or a batch: the verbs behind `seedq pause` / `seedq resume` and the
//! dashboard's buttons. The claim (`NOT_PAUSED` in `store/mod.rs`) reads the same table, so a
//! paused model's or batch's queued jobs stay queued while jobs already at Ark carry on.

use super::StoreError;

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
    pub paused_at: crate::Timestamp,
}

backend_trait! {
    /// Paused models and batches.
    trait PauseStore {
        /// Pauses a model or batch. Returns false when it was paused already (nothing changes).
        ///
        /// # Errors
        /// SQL errors.
        pub fn pause(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError>;

        /// Resumes a model or batch. Returns false when it was not paused.
        ///
        /// # Errors
        /// SQL errors.
        pub fn resume(&self, kind: PauseKind, name: &str) -> Result<bool, StoreError>;

        /// Everything paused, by kind then name.
        ///
        /// # Errors
        /// SQL errors.
        pub fn paused(&self) -> Result<Vec<Paused>, StoreError>;

        /// When `name` of `kind` was paused, or `None` when it is not.
        ///
        /// # Errors
        /// SQL errors.
        pub fn paused_at(
            &self,
            kind: PauseKind,
            name: &str,
        ) -> Result<Option<crate::Timestamp>, StoreError>;
    }
}
