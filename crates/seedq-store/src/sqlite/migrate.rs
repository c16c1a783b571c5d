//! Embedded schema migrations, tracked with `PRAGMA user_version`.
//!
//! Each file in `migrations/` is compiled in. They are applied in order inside one
//! `BEGIN IMMEDIATE` transaction, so two processes opening a fresh database at once cannot both
//! migrate it: the second waits (busy_timeout), then sees the new version and does nothing.

use rusqlite::{Connection, TransactionBehavior};

/// The migrations, in order. Append only.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../../../../migrations/0001_init.sql"),
    ),
    (
        "0002_generation_time.sql",
        include_str!("../../../../migrations/0002_generation_time.sql"),
    ),
    (
        "0003_archive.sql",
        include_str!("../../../../migrations/0003_archive.sql"),
    ),
    (
        "0004_bulk.sql",
        include_str!("../../../../migrations/0004_bulk.sql"),
    ),
    (
        "0005_flex_tier.sql",
        include_str!("../../../../migrations/0005_flex_tier.sql"),
    ),
    (
        "0006_images.sql",
        include_str!("../../../../migrations/0006_images.sql"),
    ),
    (
        "0007_budget.sql",
        include_str!("../../../../migrations/0007_budget.sql"),
    ),
    (
        "0008_ui.sql",
        include_str!("../../../../migrations/0008_ui.sql"),
    ),
    (
        "0009_pause.sql",
        include_str!("../../../../migrations/0009_pause.sql"),
    ),
    (
        "0010_prompt_fts.sql",
        include_str!("../../../../migrations/0010_prompt_fts.sql"),
    ),
    (
        "0011_enqueue_speed.sql",
        include_str!("../../../../migrations/0011_enqueue_speed.sql"),
    ),
    (
        "0012_fleet.sql",
        include_str!("../../../../migrations/0012_fleet.sql"),
    ),
    (
        "0013_read_budget.sql",
        include_str!("../../../../migrations/0013_read_budget.sql"),
    ),
    (
        "0014_claim_counters.sql",
        include_str!("../../../../migrations/0014_claim_counters.sql"),
    ),
    (
        "0015_api.sql",
        include_str!("../../../../migrations/0015_api.sql"),
    ),
    (
        "0016_webhooks.sql",
        include_str!("../../../../migrations/0016_webhooks.sql"),
    ),
    (
        "0017_api_rate.sql",
        include_str!("../../../../migrations/0017_api_rate.sql"),
    ),
    (
        "0018_job_counts.sql",
        include_str!("../../../../migrations/0018_job_counts.sql"),
    ),
    (
        "0019_admin_webhooks.sql",
        include_str!("../../../../migrations/0019_admin_webhooks.sql"),
    ),
    (
        "0020_enqueue_trigger_order.sql",
        include_str!("../../../../migrations/0020_enqueue_trigger_order.sql"),
    ),
    (
        "0021_flex_day_index.sql",
        include_str!("../../../../migrations/0021_flex_day_index.sql"),
    ),
    (
        "0022_budget_waiting_index.sql",
        include_str!("../../../../migrations/0022_budget_waiting_index.sql"),
    ),
    (
        "0023_flex_unanswered_index.sql",
        include_str!("../../../../migrations/0023_flex_unanswered_index.sql"),
    ),
    (
        "0024_batch_cell_sums.sql",
        include_str!("../../../../migrations/0024_batch_cell_sums.sql"),
    ),
];

/// The schema version this binary expects.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Applies every migration the database lacks; returns how many were applied.
///
/// # Errors
/// A migration fails (the transaction rolls back), or the database is newer than this binary.
pub fn apply(conn: &mut Connection) -> Result<usize, super::StoreError> {
    // Up to date, as on every open but the first after an upgrade: read, and take no write
    // lock. A `seedq ls` then never queues behind the service's writers.
    if version(conn)? == latest() {
        return Ok(0);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest() {
        return Err(super::StoreError::TooNew {
            found: current,
            supported: latest(),
        });
    }
    let pending = &MIGRATIONS[usize::try_from(current).unwrap_or(0)..];
    for (name, sql) in pending {
        tx.execute_batch(sql)
            .map_err(|source| super::StoreError::Migration { name, source })?;
    }
    // PRAGMA does not take bound parameters; the value is our own integer.
    tx.execute_batch(&format!("PRAGMA user_version = {}", latest()))?;
    tx.commit()?;
    Ok(pending.len())
}

/// The version recorded in the database.
///
/// # Errors
/// The database cannot be read.
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// The version a migration gets is its position in the list, so the file numbers must
    /// say the same: `0001_…`, `0002_…`, in order, with no gaps.
    #[test]
    fn file_numbers_match_positions() {
        for (i, (name, _)) in MIGRATIONS.iter().enumerate() {
            assert!(
                name.starts_with(&format!("{:04}_", i + 1)),
                "migration {name} is number {} in the list",
                i + 1
            );
        }
    }
}
