//! `seedq pause --model M | --batch B` and `seedq resume …`: hold back the claim of a model's or
//! batch's queued jobs, and let them go again (the checks live in `worker::pause`, shared with
//! the dashboard).

use std::process::ExitCode;

use clap::Args;

use super::Ctx;
use crate::store::PauseKind;
use crate::worker::pause::{PauseOutcome, set_paused};

/// `seedq pause` / `seedq resume`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["model", "batch"])))]
pub struct PauseArgs {
    /// A model id (every tier of it).
    #[arg(long)]
    pub model: Option<String>,
    /// A batch name.
    #[arg(long)]
    pub batch: Option<String>,
}

/// Pauses (`pause = true`) or resumes the model or batch named in `a`.
///
/// # Errors
/// Store failures; bad input is exit 2 with the reason.
pub async fn run(ctx: &Ctx, a: PauseArgs, pause: bool) -> anyhow::Result<ExitCode> {
    let (kind, name) = match (a.model, a.batch) {
        (Some(m), None) => (PauseKind::Model, m),
        (None, Some(b)) => (PauseKind::Batch, b),
        _ => {
            eprintln!("error: give exactly one of --model or --batch");
            return Ok(ExitCode::from(2));
        }
    };
    let store = ctx.store().await?;
    let verb = if pause { "paused" } else { "resumed" };
    match set_paused(&ctx.catalogue, &store, kind, &name, pause).await? {
        PauseOutcome::Changed => println!("{} {name} {verb}", kind.as_str()),
        PauseOutcome::Unchanged => println!(
            "{} {name} was {} already",
            kind.as_str(),
            if pause { "paused" } else { "not paused" }
        ),
        PauseOutcome::Refused(reason) => {
            eprintln!("error: {reason}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}
