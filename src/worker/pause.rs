//! Pausing a model or a batch: the checks and the store verb shared by `seedq pause` /
//! `seedq resume` and the dashboard's buttons, so both accept and refuse the same names.
//! The dispatcher honours a pause in its claim (store `NOT_PAUSED`): queued jobs of a paused
//! model or batch stay queued; jobs already at Ark are polled and finish as usual.

use crate::catalogue::Catalogue;
use crate::stage::StageError;
use crate::store::{PauseKind, Store};

/// What a pause or resume came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseOutcome {
    /// The state changed (paused, or resumed).
    Changed,
    /// It was so already; nothing changed.
    Unchanged,
    /// Bad input: the reason names the field, the value and what is allowed.
    Refused(String),
}

/// Pauses (`pause = true`) or resumes `name` of `kind`. A model must be one the catalogue knows
/// (or an `ep-` endpoint id); a batch must exist (a `batches` row or jobs). Resuming is always
/// allowed for a paused name, so a pause recorded before a batch was deleted can be lifted.
///
/// # Errors
/// Store failures.
pub async fn set_paused(
    catalogue: &Catalogue,
    store: &Store,
    kind: PauseKind,
    name: &str,
    pause: bool,
) -> Result<PauseOutcome, StageError> {
    let name = name.trim();
    let known = match kind {
        _ if name.is_empty() => false,
        PauseKind::Model => catalogue.get(name).is_some() || name.starts_with("ep-"),
        PauseKind::Batch => store.batch(name).await?.is_some(),
    };
    let was_paused = store.paused_at(kind, name).await?.is_some();
    // Lifting a pause whose batch is gone (or model retired) is allowed; nothing else is.
    let lifting_a_stale_pause = was_paused && !pause;
    if !known && !lifting_a_stale_pause {
        let allowed = match kind {
            PauseKind::Model => format!("a known model: {}", catalogue.names()),
            PauseKind::Batch => "the name of an existing batch (see `seedq batch ls`)".to_string(),
        };
        return Ok(PauseOutcome::Refused(format!(
            "{}: {name:?} is not {allowed}",
            kind.as_str()
        )));
    }
    let changed = if pause {
        store.pause(kind, name).await?
    } else {
        store.resume(kind, name).await?
    };
    Ok(if changed {
        PauseOutcome::Changed
    } else {
        PauseOutcome::Unchanged
    })
}
