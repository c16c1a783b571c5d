//! The admin HTTP server (`admin.listen`, loopback by default): `/healthz`, `/readyz`,
//! `/metrics` and the dashboard under `/ui` (see `crate::ui`).
//!
//! It exposes no job data beyond counts and never any secret, but it is not authenticated:
//! keep it on loopback or behind a proxy. `/metrics` is the recorder's counters and
//! histograms followed by the levels read from the database at scrape time (one store round
//! trip), so the job counts are exactly what `seedq stats` would print.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{health, metrics};
use crate::job::JobState;
use crate::stage::Ctx;
// The guarded server moved to the stage core: the callback stage serves with it too.
pub use crate::stage::http::{ServerLimits, serve_guarded};
use crate::store::Timestamp;
use crate::store::now_ms;
use crate::tier::Tier;

/// The Prometheus text format version we write.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request body the admin server reads (it takes none).
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// Binds `admin.listen`; `None` when it is empty (the server is off).
///
/// # Errors
/// The address does not parse or cannot be bound (in use, not local).
pub async fn bind(listen: &str) -> anyhow::Result<Option<TcpListener>> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    let l = TcpListener::bind(listen.trim()).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for the admin server on {listen}: {e} \
             (set admin.listen to a free address, or \"\" to turn it off)"
        )
    })?;
    Ok(Some(l))
}

/// Serves until shutdown.
///
/// # Errors
/// The server fails.
pub async fn run(
    ctx: Ctx,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = ServerLimits::from_config(&ctx.cfg);
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .merge(crate::ui::router(&ctx))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .with_state(ctx);
    serve_guarded(listener, app, limits, shutdown).await
}

fn report(checks: &[health::Check]) -> Response {
    let (ok, text) = health::render(checks);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, text).into_response()
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
    report(&health::live(&ctx).await)
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    report(&health::ready(&ctx).await)
}

async fn scrape(State(ctx): State<Ctx>) -> Response {
    match render(&ctx).await {
        Ok(text) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "metrics scrape failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the job store: {e:#}\n"),
            )
                .into_response()
        }
    }
}

/// One metric family in the text format.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let body = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", metrics::label(v)))
                .collect::<Vec<_>>()
                .join(",");
            let _ = write!(self.out, "{{{body}}}");
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The whole `/metrics` body.
///
/// # Errors
/// The store cannot be read.
pub async fn render(ctx: &Ctx) -> anyhow::Result<String> {
    let now = now_ms();
    let day = crate::stage::day_start_ms(now, ctx.cfg.dispatch.tpd_utc_offset_hours);
    let snap = ctx.store.ops_snapshot(Timestamp::from_ms(day)).await?;
    let mut out = match metrics::install() {
        Ok(h) => {
            // Upkeep drains histogram buckets; doing it per scrape spares a timer task.
            h.run_upkeep();
            h.render()
        }
        Err(_) => String::new(),
    };
    let mut f = Family { out: &mut out };
    let catalogue = ctx.ops.live.catalogue();

    f.head(
        "seedq_jobs",
        "gauge",
        "Jobs in the database by state, model and tier.",
    );
    let pairs: BTreeSet<(&str, Tier)> = snap
        .rows
        .iter()
        .map(|r| (r.model.as_str(), r.tier))
        .collect();
    for (model, tier) in &pairs {
        for state in JobState::ALL {
            let n: i64 = snap
                .rows
                .iter()
                .filter(|r| r.state == state && r.model == *model && r.tier == *tier)
                .map(|r| r.jobs)
                .sum();
            f.sample(
                "seedq_jobs",
                &[
                    ("state", state.as_str()),
                    ("model", model),
                    ("tier", tier.as_str()),
                ],
                n as f64,
            );
        }
    }

    let models: BTreeSet<&str> = pairs.iter().map(|(m, _)| *m).collect();
    // Per tier: each tier's in-flight count is held against its own limits.
    let mut in_flight: BTreeMap<(&str, Tier), i64> = pairs.iter().map(|p| (*p, 0)).collect();
    for r in snap.rows.iter().filter(|r| r.state.is_remote()) {
        *in_flight.entry((r.model.as_str(), r.tier)).or_insert(0) += r.jobs;
    }
    f.head(
        "seedq_in_flight",
        "gauge",
        "Tasks holding a remote slot (submitting, submit_unknown, submitted) per model and tier.",
    );
    for ((m, tier), n) in &in_flight {
        f.sample(
            "seedq_in_flight",
            &[("model", m), ("tier", tier.as_str())],
            *n as f64,
        );
    }
    f.head(
        "seedq_flex_in_flight_limit",
        "gauge",
        "The flex in-flight ceiling in force per model (flex_max_in_flight or learned from Ark's 429s); absent: none.",
    );
    for m in &models {
        let l = ctx.ops.live.limits(m);
        if let Some(c) = [l.flex_max_in_flight, ctx.limiter.flex_ceiling(m)]
            .into_iter()
            .flatten()
            .min()
        {
            f.sample("seedq_flex_in_flight_limit", &[("model", m)], f64::from(c));
        }
    }
    f.head(
        "seedq_flex_rpm_limit",
        "gauge",
        "The flex creates-per-minute ceiling per model (flex_rpm); absent: none.",
    );
    for m in &models {
        if let Some(r) = ctx.ops.live.limits(m).flex_rpm {
            f.sample("seedq_flex_rpm_limit", &[("model", m)], f64::from(r));
        }
    }
    f.head(
        "seedq_concurrency_limit",
        "gauge",
        "The default tier's concurrency limit in force per model.",
    );
    for m in &models {
        let l = ctx.ops.live.limits(m);
        f.sample(
            "seedq_concurrency_limit",
            &[("model", m)],
            f64::from(l.concurrency),
        );
    }
    f.head(
        "seedq_rpm_limit",
        "gauge",
        "The default tier's creates-per-minute limit in force per model.",
    );
    for m in &models {
        let l = ctx.ops.live.limits(m);
        f.sample("seedq_rpm_limit", &[("model", m)], f64::from(l.rpm));
    }

    f.head(
        "seedq_oldest_queued_age_seconds",
        "gauge",
        "Age of the oldest queued job (0 when none is queued).",
    );
    let age = snap
        .oldest_queued
        .map_or(0.0, |t| (now - t.ms()).max(0) as f64 / 1000.0);
    f.sample("seedq_oldest_queued_age_seconds", &[], age);

    let mut tokens: BTreeMap<(&str, Tier), (i64, i64)> = BTreeMap::new();
    for r in &snap.rows {
        let e = tokens.entry((r.model.as_str(), r.tier)).or_default();
        e.0 += r.usage_tokens;
        e.1 += r.est_tokens;
    }
    f.head(
        "seedq_tokens_used",
        "gauge",
        "Tokens Ark reported as used, over the jobs in the database, by model and tier.",
    );
    for ((m, t), (used, _)) in &tokens {
        f.sample(
            "seedq_tokens_used",
            &[("model", m), ("tier", t.as_str())],
            *used as f64,
        );
    }
    f.head(
        "seedq_tokens_estimated",
        "gauge",
        "Tokens estimated at enqueue, over the jobs in the database, by model and tier.",
    );
    for ((m, t), (_, est)) in &tokens {
        f.sample(
            "seedq_tokens_estimated",
            &[("model", m), ("tier", t.as_str())],
            *est as f64,
        );
    }
    f.head(
        "seedq_cost_estimated_cny",
        "gauge",
        "Used tokens priced with the catalogue (CNY; flex at half price), by model and tier.",
    );
    for ((m, t), (used, _)) in &tokens {
        if let Some(spec) = catalogue.get(m) {
            let cny = crate::catalogue::cost(spec, *used, t.is_flex());
            f.sample(
                "seedq_cost_estimated_cny",
                &[("model", m), ("tier", t.as_str())],
                cny,
            );
        }
    }

    f.head(
        "seedq_flex_tpd_used_tokens",
        "gauge",
        "Flex tokens submitted since today's TPD day began: used where Ark reported them, else estimated.",
    );
    let mut tpd_limits = Vec::new();
    for (name, spec) in catalogue.iter() {
        if let Some(limit) = ctx.ops.live.limits(name).flex_tpd.filter(|_| spec.flex) {
            let used = snap.flex_today.get(name).copied().unwrap_or(0);
            f.sample(
                "seedq_flex_tpd_used_tokens",
                &[("model", name)],
                used as f64,
            );
            tpd_limits.push((name.clone(), limit));
        }
    }
    f.head(
        "seedq_flex_tpd_limit_tokens",
        "gauge",
        "The flex TPD budget per model.",
    );
    for (name, limit) in &tpd_limits {
        f.sample(
            "seedq_flex_tpd_limit_tokens",
            &[("model", name)],
            *limit as f64,
        );
    }
    f.head(
        "seedq_flex_window_open",
        "gauge",
        "1 when flex jobs may be submitted now (maintenance.flex_window).",
    );
    let open = ctx.ops.live.flex_window_open(now);
    f.sample("seedq_flex_window_open", &[], if open { 1.0 } else { 0.0 });

    f.head(
        "seedq_ark_last_success_timestamp_seconds",
        "gauge",
        "When Ark last answered with a 2xx (0: not since start).",
    );
    let last = ctx.ark.last_success_ms().map_or(0.0, |t| t as f64 / 1000.0);
    f.sample("seedq_ark_last_success_timestamp_seconds", &[], last);
    f.head(
        "seedq_stage_heartbeat_age_seconds",
        "gauge",
        "Time since each stage last finished a loop iteration.",
    );
    for (stage, a) in ctx.ops.health.ages() {
        f.sample(
            "seedq_stage_heartbeat_age_seconds",
            &[("stage", stage)],
            a.as_secs_f64(),
        );
    }
    f.head("seedq_build_info", "gauge", "The running seedq version.");
    f.sample(
        "seedq_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    crate::worker::budget::metrics_text(ctx, &mut out, now).await?;
    Ok(out)
}
