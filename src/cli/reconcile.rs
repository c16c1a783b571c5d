//! `seedq adopt JOB TASK_ID` and `seedq reconcile --dry-run`: the operator's side of
//! ambiguous creates. Reconciliation (worker/reconcile.rs) adopts only what it can prove;
//! what it cannot, it parks, and these commands show the candidates and record the
//! operator's choice, with the checks that keep a foreign video out.

use std::process::ExitCode;

use clap::Args;

use super::Ctx;
use crate::job::JobState;
use crate::stage;
use crate::worker::reconcile;

/// `seedq adopt`.
#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The job whose create was ambiguous (state `submit_unknown`).
    pub job: String,
    /// The remote task (`cgt-…`) to record as the job's own.
    pub task_id: String,
}

/// `seedq reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Show the candidate tasks of every ambiguous job; change nothing. (The service does
    /// the reconciling itself; this is the only mode.)
    #[arg(long)]
    pub dry_run: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

async fn worker_ctx(ctx: &Ctx) -> anyhow::Result<stage::Ctx> {
    stage::Ctx::new(ctx.cfg.clone(), ctx.catalogue.clone(), ctx.store().await?)
}

/// Records `task_id` as the remote task of an ambiguous job, after checking that no other job
/// owns it and that it matches the job's model, tier and shape (the checks live in
/// [`reconcile::operator_adopt`], which the dashboard calls too).
///
/// # Errors
/// Store or Ark failures; a refusal is exit 2 with the reason.
pub async fn adopt(ctx: &Ctx, a: AdoptArgs) -> anyhow::Result<ExitCode> {
    let w = worker_ctx(ctx).await?;
    match reconcile::operator_adopt(&w, &a.job, &a.task_id).await? {
        reconcile::AdoptOutcome::Adopted { job, task } => {
            println!("{job} adopted {task}");
            Ok(ExitCode::SUCCESS)
        }
        reconcile::AdoptOutcome::Refused(reason) => {
            eprintln!("error: {reason}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Lists the candidates of every ambiguous job.
///
/// # Errors
/// Store or Ark failures.
pub async fn dry_run(ctx: &Ctx, a: ReconcileArgs) -> anyhow::Result<ExitCode> {
    if !a.dry_run {
        eprintln!(
            "error: the running service reconciles by itself; `seedq reconcile --dry-run` shows the candidates, `seedq adopt JOB TASK_ID` records one"
        );
        return Ok(ExitCode::from(2));
    }
    let w = worker_ctx(ctx).await?;
    let mut out = Vec::new();
    for state in [JobState::SubmitUnknown, JobState::Submitting] {
        let filter = crate::store::ListFilter {
            state: Some(state),
            limit: Some(100_000),
            ..Default::default()
        };
        for job in w.store.list(filter).await? {
            let scan = reconcile::scan(&w, &job).await?;
            out.push(serde_json::json!({
                "job": job.id.as_str(),
                "state": job.state.as_str(),
                "reason": job.last_error_message,
                "identity": reconcile::tag_of(&job),
                "listing_complete": scan.complete,
                "candidates": scan.candidates.iter().map(|t| serde_json::json!({
                    "id": t.id, "status": t.status.as_str(), "created_at": t.created_at,
                    "seed": t.seed, "safety_identifier": t.safety_identifier,
                })).collect::<Vec<_>>(),
            }));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if out.is_empty() {
        println!("no ambiguous jobs");
    }
    for j in &out {
        let cands = j["candidates"].as_array().map_or(0, Vec::len);
        println!(
            "{} ({}): {} candidate(s){}{}",
            j["job"].as_str().unwrap_or(""),
            j["state"].as_str().unwrap_or(""),
            cands,
            if j["listing_complete"] == true {
                ""
            } else {
                " (listing incomplete)"
            },
            j["reason"]
                .as_str()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        );
        for c in j["candidates"].as_array().into_iter().flatten() {
            println!(
                "  {} {} created_at {} seed {} safety_identifier {}",
                c["id"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                c["created_at"],
                c["seed"],
                c["safety_identifier"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
