//! The service's stages: dispatch, reconcile, poll, callbacks and archive, and the result
//! data poll records and the archiver reads (`result`).
//!
//! Each stage is a `step` (one unit of work, returns [`Outcome`]) and a `run` loop around it
//! ([`stage_loop`]). What the stages share ([`Ctx`], the loop, the limiter) is the stage core,
//! `crate::stage`, re-exported here; the supervisor that spawns them is `crate::service`.

pub mod archive;
pub mod budget;
pub mod callback;
pub mod dispatch;
pub mod fleet;
pub mod pause;
pub mod poll;
pub mod prompts;
pub mod reconcile;
pub mod result;

use crate::stage::StageError;
pub(crate) use crate::stage::owner::owner_is_dead;
pub use crate::stage::{Ctx, Outcome, limiter, safeurl};
pub(crate) use crate::stage::{Role, ms, stage_loop};

/// Takes back at once the jobs whose lease holder died on this host (a crash, SIGKILL),
/// instead of waiting out their leases: the model's queue does not stall behind them.
///
/// # Errors
/// Store failures.
pub async fn reclaim_dead_owners(ctx: &Ctx) -> Result<usize, StageError> {
    let mut n = 0;
    for owner in ctx.store.live_lease_owners().await? {
        if owner_is_dead(&owner) {
            let k = ctx.store.release_leases_of(&owner).await?;
            ctx.store.drop_leadership_of(&owner).await?;
            tracing::warn!(owner = %owner, jobs = k, "the previous lease holder is dead; taking its jobs back now");
            n += k;
        }
    }
    Ok(n)
}
