//! PostgreSQL migrations: `migrations/postgres/NNNN_*.sql`, compiled in, applied in order in
//! one transaction under a transaction-scoped advisory lock, so that two workers starting
//! together cannot both migrate: the second waits for the lock, then finds nothing to do.

use super::PgStore;
use crate::StoreError;

/// The migrations, in order. Append only.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../../../../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_pgops_deadline.sql",
        include_str!("../../../../migrations/postgres/0002_pgops_deadline.sql"),
    ),
    (
        "0003_fleet.sql",
        include_str!("../../../../migrations/postgres/0003_fleet.sql"),
    ),
    (
        "0004_read_budget.sql",
        include_str!("../../../../migrations/postgres/0004_read_budget.sql"),
    ),
    (
        "0005_claim_counters.sql",
        include_str!("../../../../migrations/postgres/0005_claim_counters.sql"),
    ),
    (
        "0006_api.sql",
        include_str!("../../../../migrations/postgres/0006_api.sql"),
    ),
    (
        "0007_webhooks.sql",
        include_str!("../../../../migrations/postgres/0007_webhooks.sql"),
    ),
    (
        "0008_api_rate.sql",
        include_str!("../../../../migrations/postgres/0008_api_rate.sql"),
    ),
    (
        "0009_queue_vacuum.sql",
        include_str!("../../../../migrations/postgres/0009_queue_vacuum.sql"),
    ),
    (
        "0010_admin_webhooks.sql",
        include_str!("../../../../migrations/postgres/0010_admin_webhooks.sql"),
    ),
    (
        "0011_flex_day_index.sql",
        include_str!("../../../../migrations/postgres/0011_flex_day_index.sql"),
    ),
    (
        "0012_budget_waiting_index.sql",
        include_str!("../../../../migrations/postgres/0012_budget_waiting_index.sql"),
    ),
    (
        "0013_flex_unanswered_index.sql",
        include_str!("../../../../migrations/postgres/0013_flex_unanswered_index.sql"),
    ),
    (
        "0014_prompt_search_table.sql",
        include_str!("../../../../migrations/postgres/0014_prompt_search_table.sql"),
    ),
    (
        "0015_drop_jobs_queue.sql",
        include_str!("../../../../migrations/postgres/0015_drop_jobs_queue.sql"),
    ),
    (
        "0016_striped_counters.sql",
        include_str!("../../../../migrations/postgres/0016_striped_counters.sql"),
    ),
    (
        "0017_batch_cell_sums.sql",
        include_str!("../../../../migrations/postgres/0017_batch_cell_sums.sql"),
    ),
    (
        "0018_job_counts.sql",
        include_str!("../../../../migrations/postgres/0018_job_counts.sql"),
    ),
];

/// The advisory lock key of migrations: any constant of our own ("seedq" in ASCII).
const LOCK: i64 = 0x0073_6565_6471;

/// The schema version this binary expects.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Applies every migration the database lacks; returns how many were applied.
///
/// # Errors
/// A migration fails (the transaction rolls back), or the database is newer than this binary.
pub(crate) async fn apply(pg: &PgStore) -> Result<usize, StoreError> {
    let mut c = pg.conn().await?;
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS seedq_schema (
             version    BIGINT PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at BIGINT NOT NULL
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM seedq_schema", &[])
        .await?
        .try_get(0)?;
    if current > latest() {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest(),
        });
    }
    let pending = &MIGRATIONS[usize::try_from(current).unwrap_or(0)..];
    for (i, (name, sql)) in pending.iter().enumerate() {
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Pool(format!("migration postgres/{name} failed: {e}")))?;
        let version = current + i as i64 + 1;
        tx.execute(
            "INSERT INTO seedq_schema (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&version, name, &crate::now_ms()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(pending.len())
}
