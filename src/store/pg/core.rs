//! PostgreSQL bodies of the core job methods (the SQLite ones are in `store/mod.rs`).

use super::{Pg, job_from_pg};
use crate::store::{JOB_COLUMNS, Job, JobEvent, StoreError};

/// [`crate::store::Store::job`].
pub(crate) async fn job(pg: &Pg, id: &str) -> Result<Option<Job>, StoreError> {
    let c = pg.conn().await?;
    let st = c
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .await?;
    c.query_opt(&st, &[&id])
        .await?
        .as_ref()
        .map(job_from_pg)
        .transpose()
}

/// [`crate::store::Store::events`].
pub(crate) async fn events(pg: &Pg, id: &str) -> Result<Vec<JobEvent>, StoreError> {
    let c = pg.conn().await?;
    let rows = c
        .query(
            "SELECT at, from_state, to_state, detail FROM job_events WHERE job_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(JobEvent {
                at: r.try_get(0)?,
                from_state: r.try_get(1)?,
                to_state: r.try_get(2)?,
                detail: r.try_get(3)?,
            })
        })
        .collect()
}
