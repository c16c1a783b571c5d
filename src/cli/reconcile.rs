//! `seedq adopt JOB TASK_ID` and `seedq reconcile --dry-run`: the operator's side of
//! ambiguous creates. Reconciliation (worker/reconcile.rs) adopts only what it can prove;
//! what it cannot, it parks, and these commands show the candidates and record the
//! operator's choice, with the checks that keep a foreign video out.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::Ctx;
use crate::ark::wire::CreateTaskRequest;
use crate::job::JobState;
use crate::store::{Patch, now_ms};
use crate::worker::{self, reconcile};

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

fn worker_ctx(ctx: &Ctx) -> anyhow::Result<worker::Ctx> {
    worker::Ctx::new(ctx.cfg.clone(), ctx.catalogue.clone(), ctx.store()?)
}

/// Records `task_id` as the remote task of an ambiguous job, after checking that no other job
/// owns it and that it matches the job's model, tier and shape.
///
/// # Errors
/// Store or Ark failures; a refusal is exit 2 with the reason.
pub async fn adopt(ctx: &Ctx, a: AdoptArgs) -> anyhow::Result<ExitCode> {
    let w = worker_ctx(ctx)?;
    let Some(job) = w.store.job(&a.job).await? else {
        eprintln!("error: job {} not found", a.job);
        return Ok(ExitCode::from(2));
    };
    if job.state != JobState::SubmitUnknown {
        eprintln!(
            "error: job {} is {}, not submit_unknown: only an ambiguous create can adopt a task",
            job.id, job.state
        );
        return Ok(ExitCode::from(2));
    }
    if let Some(owner) = w.store.job_by_remote(&a.task_id).await? {
        eprintln!(
            "error: task {} already belongs to job {}; adopting it would file a foreign video",
            a.task_id, owner.id
        );
        return Ok(ExitCode::from(2));
    }
    let task = w
        .ark
        .get(&a.task_id)
        .await
        .with_context(|| format!("reading task {} from Ark", a.task_id))?;
    let req: CreateTaskRequest = serde_json::from_str(&job.request_json)?;
    // Ark may answer an endpoint id with the model behind it (ark-api.md §3.1).
    let model_ok = task.model == job.model || job.model.starts_with("ep-");
    if !model_ok || !reconcile::matches(&job, &req, &task) {
        eprintln!(
            "error: task {} does not match job {}: model {} vs {}, tier {:?} vs {}, shape {:?} {:?} {:?}/{:?} vs {:?} {:?} {:?}/{:?}, seed {:?} vs {:?}",
            task.id,
            job.id,
            task.model,
            job.model,
            task.service_tier,
            job.service_tier,
            task.resolution,
            task.ratio,
            task.duration,
            task.frames,
            req.resolution,
            req.ratio,
            req.duration,
            req.frames,
            task.seed,
            job.seed
        );
        return Ok(ExitCode::from(2));
    }
    // A task carrying another job's seedq identity is that job's, whatever the match says.
    if let Some(other) = task
        .safety_identifier
        .as_deref()
        .and_then(|s| s.strip_prefix(reconcile::TAG_PREFIX))
        .filter(|id| *id != job.id.as_str())
    {
        eprintln!(
            "error: task {} carries job {other}'s identity, not job {}'s",
            task.id, job.id
        );
        return Ok(ExitCode::from(2));
    }
    tracing::warn!(job_id = %job.id, remote_id = %task.id, "operator adopts a remote task");
    let now = now_ms();
    w.store
        .transition(
            &job.id,
            JobState::SubmitUnknown,
            job.lease_token,
            JobState::Submitted,
            Patch::new()
                .set("remote_task_id", task.id.clone())
                .set("remote_status", task.status.as_str().to_string())
                .set("submitted_at", task.created_at * 1000)
                .set("next_attempt_at", now)
                .clear("lease_until")
                .clear("last_error_code")
                .clear("last_error_message"),
            Some(format!("adopted by an operator: {}", task.id)),
        )
        .await
        .context("recording the adoption (the job changed meanwhile; look again)")?;
    println!("{} adopted {}", job.id, task.id);
    Ok(ExitCode::SUCCESS)
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
    let w = worker_ctx(ctx)?;
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
