//! Liveness and readiness: stage heartbeats, the database, and Ark.
//!
//! - Live (`/healthz`, and the condition for each systemd `WATCHDOG=1`): the database thread
//!   answers (or the database is out: full, read-only, refusing connections, which a restart
//!   would not mend) and no stage has gone without finishing a loop iteration for
//!   [`stall_after`]. Failing it means a restart would help.
//! - Ready (`/readyz`): live, plus the database is still the file opened (same inode: a
//!   deleted database directory fails it) and takes its write lock, and Ark answered a call
//!   within `admin.ark_stale_after`. An idle service makes no calls, so when the last success
//!   is older than that, readiness asks Ark itself (one authenticated list with
//!   `page_size=1`, at most once per [`PROBE_CACHE`]).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::ark::ListQuery;
use crate::stage::{Ctx, ms};
use crate::store::now_ms;

/// A stage is stalled after this long without a heartbeat, at least. Longer than any step
/// should take: a batch poll of a page of tasks, each with retried 30 s requests.
const MIN_STALL: Duration = Duration::from_secs(300);
/// How long one database check may take before it counts as failed.
const DB_CHECK: Duration = Duration::from_secs(5);
/// How long the readiness probe of Ark may take.
const ARK_PROBE: Duration = Duration::from_secs(10);
/// A probe result is reused for this long, so a tight scrape loop cannot flood Ark.
const PROBE_CACHE: Duration = Duration::from_secs(15);

pub use crate::stage::state::Health;

/// One line of a health report.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// How long a stage may go without a heartbeat before it counts as stalled.
pub fn stall_after(ctx: &Ctx) -> Duration {
    MIN_STALL.max(ctx.cfg.ark.request_timeout * 4 + ctx.cfg.dispatch.idle_interval)
}

fn stages(ctx: &Ctx) -> Check {
    let limit = stall_after(ctx);
    let ages = ctx.ops.health.ages();
    let stalled: Vec<String> = ages
        .iter()
        .filter(|(_, a)| *a > limit)
        .map(|(s, a)| format!("{s} silent for {}s", a.as_secs()))
        .collect();
    Check {
        name: "stages",
        ok: stalled.is_empty() && !ages.is_empty(),
        detail: if ages.is_empty() {
            "no stage has started".into()
        } else if stalled.is_empty() {
            ages.iter()
                .map(|(s, a)| format!("{s} {:.1}s ago", a.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            format!("stalled: {}", stalled.join(", "))
        },
    }
}

async fn database(ctx: &Ctx, write: bool) -> Check {
    let probe = async {
        if write {
            ctx.store.write_probe().await
        } else {
            ctx.store.ping().await
        }
    };
    let (ok, detail) = match tokio::time::timeout(DB_CHECK, probe).await {
        Ok(Ok(())) if write => {
            // The write probe is the one the dispatcher waits on: passing, it ends an outage.
            ctx.ops.health.store_up();
            (true, "writable".to_string())
        }
        Ok(Ok(())) => (true, "answering".to_string()),
        // Liveness: a database server that refuses or dropped connections is an outage a
        // restart cannot end (and the watchdog would restart seedq over and over). The
        // process is alive; readiness says what is wrong.
        Ok(Err(e)) if !write && e.outage().is_some() => (
            true,
            format!("out ({}); waiting for it", e.outage().unwrap_or_default()),
        ),
        Ok(Err(e)) => {
            if write && let Some(reason) = e.outage() {
                ctx.ops.health.store_down(&reason);
            }
            // The outage's own words: a PostgreSQL error displays as "db error" alone.
            let mut detail = e.outage().unwrap_or_else(|| format!("{e:#}"));
            if let Some((since, _)) = ctx.ops.health.store_outage() {
                let _ = write!(
                    detail,
                    "; claiming nothing for {:.1}s, resuming when it takes writes",
                    since.as_secs_f64()
                );
            }
            (false, detail)
        }
        Err(_) => (false, format!("no answer within {}s", DB_CHECK.as_secs())),
    };
    Check {
        name: "database",
        ok,
        detail,
    }
}

async fn ark(ctx: &Ctx) -> Check {
    let bound = ctx.cfg.admin.ark_stale_after;
    let now = now_ms();
    if let Some(t) = ctx.ark.last_success_ms()
        && now - t <= ms(bound)
    {
        return Check {
            name: "ark",
            ok: true,
            detail: format!("last success {:.1}s ago", (now - t) as f64 / 1000.0),
        };
    }
    let mut cached = ctx.ops.health.probe.lock().await;
    let fresh = cached
        .as_ref()
        .filter(|(at, _)| at.elapsed() < PROBE_CACHE)
        .map(|(_, r)| r.clone());
    let result = match fresh {
        Some(r) => r,
        None => {
            let q = ListQuery {
                page_size: Some(1),
                ..Default::default()
            };
            let r = match tokio::time::timeout(ARK_PROBE, ctx.ark.list(&q)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err(format!("no answer within {}s", ARK_PROBE.as_secs())),
            };
            *cached = Some((Instant::now(), r.clone()));
            r
        }
    };
    let since = ctx.ark.last_success_ms().map_or_else(
        || "no successful call yet".to_string(),
        |t| format!("last success {}s ago", (now - t) / 1000),
    );
    match result {
        Ok(()) => Check {
            name: "ark",
            ok: true,
            detail: "probe answered".into(),
        },
        Err(e) => Check {
            name: "ark",
            ok: false,
            detail: format!("{since}; probe failed: {e}"),
        },
    }
}

/// The liveness checks.
pub async fn live(ctx: &Ctx) -> Vec<Check> {
    vec![database(ctx, false).await, stages(ctx)]
}

/// The readiness checks.
pub async fn ready(ctx: &Ctx) -> Vec<Check> {
    vec![database(ctx, true).await, ark(ctx).await, stages(ctx)]
}

/// Renders checks as `ok name: detail` lines; true when all passed.
pub fn render(checks: &[Check]) -> (bool, String) {
    let ok = checks.iter().all(|c| c.ok);
    let text = checks
        .iter()
        .map(|c| {
            format!(
                "{} {}: {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )
        })
        .collect();
    (ok, text)
}
