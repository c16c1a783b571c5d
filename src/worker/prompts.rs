//! The prompt search's indexer. On PostgreSQL the search table is kept behind the writes, so
//! that storing or changing a job never pays for a trigram index
//! (migrations/postgres/0014_prompt_search_table.sql): this loop moves the newly stored or
//! rewritten jobs' prompts into it, a batch at a time, while the search reads the jobs not
//! indexed yet directly. Every worker of a fleet runs one; they take disjoint batches. SQLite
//! fills its search table in the writing transaction and runs none (`service.rs`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::stage::{Ctx, StageError, Verdict};

/// Jobs per batch: one transaction of a few tens of milliseconds on PostgreSQL.
const BATCH: u32 = 5_000;
/// The pause when nothing was pending. A search never waits for the index (it reads the
/// pending jobs), so this only bounds how many pending jobs a search tests one by one.
const IDLE: Duration = Duration::from_secs(1);

/// Indexes until `shutdown`: batch after batch while full ones come, then once per [`IDLE`].
///
/// # Errors
/// The store is gone.
pub async fn run(ctx: Ctx, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        ctx.ops.health.beat("prompt_index");
        let more = match ctx.store.index_prompts(BATCH).await {
            Ok(n) => n == u64::from(BATCH),
            Err(e) => {
                let e = StageError::from(e);
                match e.verdict() {
                    Verdict::End => {
                        return Err(
                            anyhow::Error::from(e).context("prompt index: the store is gone")
                        );
                    }
                    // An outage passes like any other stage's; the jobs stay pending and the
                    // search keeps finding them.
                    Verdict::StoreOutage(_) | Verdict::BackOff => {
                        tracing::warn!(error = %e.report(), "indexing prompts failed");
                        false
                    }
                }
            }
        };
        let pause = if more { Duration::ZERO } else { IDLE };
        // Cancel-safe: both branches only wait.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
