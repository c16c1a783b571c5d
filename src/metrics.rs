//! Metric names and the helpers that record them: the one place that knows what seedq exports.
//!
//! Events (HTTP calls, creates, callbacks, reconciliations, archives, maintenance runs) are
//! counted as they happen through the `metrics` facade; those calls are no-ops until
//! [`install`] sets the Prometheus recorder, which only `seedq serve` does. Levels that live
//! in the database (jobs per state, in flight, tokens, cost) are not mirrored into gauges:
//! `/metrics` reads them from the database at scrape time (`ops::admin`), so they always
//! agree with `seedq stats`. This module is a leaf: `worker` and the stages may call it. The
//! Ark client's own metrics live with it (`seedq_ark::metrics`) and are exported from here.

use std::sync::OnceLock;
use std::time::Duration;

use crate::tier::Tier;
pub use seedq_ark::metrics::{ARK_DURATION, ARK_ERRORS, ARK_REQUESTS, ARK_THROTTLED, ark_request};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Create outcomes by `model`, `tier` and `outcome` (accepted, throttled, never_sent,
/// rejected, ambiguous, transient).
pub const CREATES: &str = "seedq_creates_total";
/// 429s on creates by `model`, `tier` and the error `code` Ark sent.
pub const CREATE_THROTTLED: &str = "seedq_create_throttled_total";
/// Callback requests by the HTTP `status` seedq answered.
pub const CALLBACKS: &str = "seedq_callbacks_total";
/// Reconciliation outcomes: recovered (an interrupted submit found), adopted, pending,
/// resubmitted, parked, list_failed.
pub const RECONCILE: &str = "seedq_reconcile_total";
/// Archived object sizes.
pub const ARCHIVE_BYTES: &str = "seedq_archive_bytes";
/// Time to archive one video (download, upload, sidecar).
pub const ARCHIVE_DURATION: &str = "seedq_archive_duration_seconds";
/// Archive attempts by `outcome` (archived, retry, failed).
pub const ARCHIVES: &str = "seedq_archives_total";
/// Maintenance task runs by `task` and `outcome` (ok, error).
pub const MAINTENANCE_RUNS: &str = "seedq_maintenance_runs_total";
/// Jobs deleted by pruning, by `state`.
pub const PRUNED: &str = "seedq_pruned_jobs_total";
/// Claim counters (store/counters.rs) that disagreed with a full recount and were repaired,
/// by `counter` (in_flight, flex_tokens).
pub const COUNTER_DRIFT: &str = "seedq_counter_drift_total";
/// Expired leases released by the sweep.
pub const LEASES_RELEASED: &str = "seedq_leases_released_total";
/// SIGHUP reloads by `outcome` (ok, error).
pub const RELOADS: &str = "seedq_config_reloads_total";
/// 1 after a reload found changes that only a restart applies.
pub const RESTART_REQUIRED: &str = "seedq_restart_required";
/// Creates refused by a spend cap, by `reason` (budget_batch, budget_daily).
pub const BUDGET_REFUSED: &str = "seedq_budget_refused_total";
/// Size of the last database backup.
pub const BACKUP_BYTES: &str = "seedq_backup_bytes";
/// 1 per singleton this worker leads (worker/fleet.rs).
pub const LEADER: &str = "seedq_leader";
/// Connections an admin or callback server closed to make room at its cap (stage/http.rs).
pub const EVICTED: &str = "seedq_server_evicted_connections_total";
/// 1 while the job store refuses writes (full disk, read-only, no connection): claims wait.
pub const STORE_OUTAGE: &str = "seedq_store_outage";

/// Histogram buckets for Ark latency (seconds): most calls are well under a second.
const ARK_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Archive sizes: from short 480p clips (~1 MiB) to long 1080p ones (~1 GiB).
const BYTE_BUCKETS: [f64; 8] = [
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];
/// Archive durations (seconds).
const ARCHIVE_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
///
/// # Errors
/// Another global recorder is installed already, or a bucket list is empty.
pub fn install() -> anyhow::Result<&'static PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ARK_DURATION.into()), &ARK_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(ARCHIVE_BYTES.into()), &BYTE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(ARCHIVE_DURATION.into()), &ARCHIVE_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle))
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        ARK_REQUESTS,
        "HTTP requests to Ark per attempt, by op and status."
    );
    describe_counter!(ARK_ERRORS, "Failed Ark requests by op and error code.");
    describe_counter!(ARK_THROTTLED, "Ark 429 answers by op.");
    describe_histogram!(
        ARK_DURATION,
        metrics::Unit::Seconds,
        "Ark request latency by op."
    );
    describe_counter!(CREATES, "Create outcomes by model, tier and outcome.");
    describe_counter!(
        CREATE_THROTTLED,
        "429s on creates by model, tier and error code."
    );
    describe_counter!(
        CALLBACKS,
        "Ark callbacks received, by the status seedq answered."
    );
    describe_counter!(RECONCILE, "Reconciliation outcomes for ambiguous submits.");
    describe_histogram!(
        ARCHIVE_BYTES,
        metrics::Unit::Bytes,
        "Archived object sizes."
    );
    describe_histogram!(
        ARCHIVE_DURATION,
        metrics::Unit::Seconds,
        "Time to archive one video."
    );
    describe_counter!(ARCHIVES, "Archive attempts by outcome.");
    describe_counter!(
        MAINTENANCE_RUNS,
        "Maintenance task runs by task and outcome."
    );
    describe_counter!(PRUNED, "Jobs deleted by pruning, by state.");
    describe_counter!(LEASES_RELEASED, "Expired leases released by the sweep.");
    describe_counter!(
        COUNTER_DRIFT,
        "Claim counters found different from a full recount of the jobs (and repaired), by counter."
    );
    describe_counter!(RELOADS, "Configuration reloads (SIGHUP) by outcome.");
    describe_counter!(
        BUDGET_REFUSED,
        "Creates held back by a spend cap, by reason (budget_batch, budget_daily)."
    );
    describe_gauge!(
        RESTART_REQUIRED,
        "1 when a reloaded configuration has changes that need a restart."
    );
    describe_gauge!(
        LEADER,
        "1 for each singleton (maintenance, governor, reconcile) this worker leads, else 0."
    );
    describe_gauge!(
        BACKUP_BYTES,
        metrics::Unit::Bytes,
        "Size of the last database backup."
    );
    // Series that alerts use should exist before their first event.
    metrics::counter!(CALLBACKS, "status" => "200").increment(0);
    metrics::counter!(RELOADS, "outcome" => "ok").increment(0);
    metrics::counter!(RELOADS, "outcome" => "error").increment(0);
    metrics::counter!(LEASES_RELEASED).increment(0);
    metrics::counter!(EVICTED).increment(0);
    metrics::gauge!(STORE_OUTAGE).set(0.0);
    metrics::gauge!(RESTART_REQUIRED).set(0.0);
}

/// Counts a create held back by a spend cap.
pub fn budget_refused(reason: &'static str) {
    metrics::counter!(BUDGET_REFUSED, "reason" => reason).increment(1);
}

/// Records the outcome of one create.
pub fn create(model: &str, tier: Tier, outcome: &'static str) {
    metrics::counter!(CREATES, "model" => model.to_string(), "tier" => tier.as_str(), "outcome" => outcome)
        .increment(1);
}

/// Records a 429 on a create, with the code Ark sent.
pub fn create_throttled(model: &str, tier: Tier, code: &str) {
    metrics::counter!(CREATE_THROTTLED, "model" => model.to_string(), "tier" => tier.as_str(), "code" => code.to_string())
        .increment(1);
}

/// Records a reconciliation outcome `n` times.
pub fn reconcile(outcome: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(RECONCILE, "outcome" => outcome).increment(n);
    }
}

/// Records one archive attempt; `bytes` and `took` only for a stored object.
pub fn archive(outcome: &'static str, bytes: Option<u64>, took: Option<Duration>) {
    metrics::counter!(ARCHIVES, "outcome" => outcome).increment(1);
    if let Some(b) = bytes {
        metrics::histogram!(ARCHIVE_BYTES).record(b as f64);
    }
    if let Some(t) = took {
        metrics::histogram!(ARCHIVE_DURATION).record(t.as_secs_f64());
    }
}

/// Records jobs deleted by pruning.
pub fn pruned(state: &'static str, n: u64) {
    metrics::counter!(PRUNED, "state" => state).increment(n);
}

/// Records one claim counter that drifted from its recount.
pub fn counter_drift(counter: &'static str) {
    metrics::counter!(COUNTER_DRIFT, "counter" => counter).increment(1);
}

/// Records leases released by the sweep.
pub fn leases_released(n: u64) {
    metrics::counter!(LEASES_RELEASED).increment(n);
}

/// Counts a connection closed to make room for a new one (it had sent no complete request).
pub fn slow_client_evicted() {
    metrics::counter!(EVICTED).increment(1);
}

/// Records whether the job store is refusing writes.
pub fn store_outage(on: bool) {
    metrics::gauge!(STORE_OUTAGE).set(if on { 1.0 } else { 0.0 });
}

/// Records whether this worker leads singleton `name`.
pub fn leader(name: &'static str, leads: bool) {
    metrics::gauge!(LEADER, "name" => name).set(if leads { 1.0 } else { 0.0 });
}

/// Records the size of a finished backup.
pub fn backup_bytes(size: u64) {
    metrics::gauge!(BACKUP_BYTES).set(size as f64);
}

/// Records one SIGHUP reload, and whether changes wait for a restart.
pub fn reload(ok: bool, restart_required: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(RELOADS, "outcome" => outcome).increment(1);
    if ok {
        metrics::gauge!(RESTART_REQUIRED).set(if restart_required { 1.0 } else { 0.0 });
    }
}

/// Records one maintenance run.
pub fn maintenance(task: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(MAINTENANCE_RUNS, "task" => task, "outcome" => outcome).increment(1);
}

/// Axum middleware for the callback endpoint: counts requests by the status answered.
pub async fn count_callbacks(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let resp = next.run(req).await;
    metrics::counter!(CALLBACKS, "status" => resp.status().as_u16().to_string()).increment(1);
    resp
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label("ep-2024"), "ep-2024");
    }
}
