//! `seedq workers`: the workers registered on this database, their heartbeats, and which of
//! them leads each singleton (maintenance, governor, reconcile; see `worker::fleet`).

use std::process::ExitCode;

use super::Ctx;
use super::jobs::JsonArg;
use crate::store::now_ms;
use crate::worker::ms;

/// Prints the fleet: one line per worker, then one per singleton.
///
/// # Errors
/// Store failures (a missing database is an error, not an empty fleet).
pub async fn run(ctx: &Ctx, a: JsonArg) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let (workers, leaders) = (store.workers().await?, store.leaders().await?);
    let now = now_ms();
    let timeout = ms(ctx.cfg.service.worker_timeout);
    if a.json {
        let workers: Vec<serde_json::Value> = workers
            .iter()
            .map(|w| {
                let leads: Vec<&str> = leaders
                    .iter()
                    .filter(|l| l.owner == w.id && l.until > now)
                    .map(|l| l.name.as_str())
                    .collect();
                serde_json::json!({
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "version": w.version,
                    "started_at": w.started_at,
                    "heartbeat_at": w.heartbeat_at,
                    "heartbeat_age_ms": now - w.heartbeat_at.ms(),
                    "alive": now - w.heartbeat_at.ms() <= timeout,
                    "leads": leads,
                })
            })
            .collect();
        let leaders: Vec<serde_json::Value> = leaders
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name,
                    "owner": l.owner,
                    "since": l.since,
                    "until": l.until,
                    "held": l.until > now,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "workers": workers,
                "leaders": leaders,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if workers.is_empty() {
        println!("no workers registered");
    } else {
        println!(
            "{:<40} {:>8} {:<10} {:>10}  STATUS",
            "WORKER", "PID", "VERSION", "HEARTBEAT"
        );
        for w in &workers {
            let age = now - w.heartbeat_at.ms();
            let status = if age <= timeout { "alive" } else { "lapsed" };
            println!(
                "{:<40} {:>8} {:<10} {:>8}ms  {status}",
                w.id, w.pid, w.version, age
            );
        }
    }
    if !leaders.is_empty() {
        println!();
        println!("{:<12} {:<40} UNTIL", "SINGLETON", "LEADER");
        for l in &leaders {
            let left = l.until - now;
            let until = if left > 0 {
                format!("{left} ms left")
            } else {
                format!("expired {} ms ago (free)", -left)
            };
            println!("{:<12} {:<40} {until}", l.name, l.owner);
        }
    }
    Ok(ExitCode::SUCCESS)
}
