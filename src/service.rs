//! The composition root: builds the service's stages and supervises them.
//!
//! [`run`] seeds the limiter, takes back a dead holder's leases, reconciles once, then spawns
//! every stage (`worker`, `bulk`) and the daemon tasks (`ops`) in one `JoinSet` with child
//! cancellation tokens. It waits for a shutdown signal, a stage exiting, or (in
//! [`Mode::UntilDrained`]) for the queue to drain, then cancels, drains within the grace period
//! and aborts stragglers. A panic or an early stage exit is an error: the service never stays
//! up half-alive. Only the CLI calls this module; nothing below it does.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stage::{Ctx, ms};
use crate::store::Timestamp;
use crate::store::now_ms;
use crate::worker::{archive, callback, dispatch, fleet, poll, reclaim_dead_owners, reconcile};

/// How the service ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Until a signal.
    Serve,
    /// Until nothing is left to do (or a signal).
    UntilDrained,
}

/// Runs the service until `shutdown` resolves (or the queue drains in `UntilDrained` mode).
///
/// # Errors
/// A stage died or panicked, or the store failed at start.
pub async fn run(ctx: Ctx, mode: Mode, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if mode == Mode::Serve {
        // Before the first reconcile or create is counted.
        crate::ops::install_metrics();
    }
    let since = now_ms() - ms(ctx.cfg.dispatch.rpm_count_window());
    ctx.limiter
        .seed(&ctx.store.creates_since(Timestamp::from_ms(since)).await?);
    // Reconcile once before anything new is submitted: whatever a crash left ambiguous is
    // resolved (or parked) first. A dead holder's leases end now, not when they run out.
    reclaim_dead_owners(&ctx).await?;
    reconcile::recover_stale(&ctx).await?;
    // Join the fleet: the heartbeat runs under a token of its own, so it keeps beating while
    // the stages drain, and stops after them.
    let singletons = fleet::singletons(mode == Mode::Serve);
    fleet::join(&ctx, &singletons).await?;
    let beat_stop = CancellationToken::new();
    let beat = tokio::spawn(fleet::run(ctx.clone(), singletons, beat_stop.clone()));

    let token = CancellationToken::new();
    let mut set: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    for i in 0..ctx.cfg.dispatch.workers.max(1) {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("dispatch", dispatch::run(c, t, i).await) });
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("poll", poll::run(c, t).await) });
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("reconcile", reconcile::run(c, t).await) });
    }
    if ctx.callbacks_on() {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("callback", callback::run(c, t).await) });
    }
    if ctx.archive.is_some() {
        for i in 0..ctx.cfg.archive.workers.max(1) {
            let (c, t) = (ctx.clone(), token.child_token());
            set.spawn(async move { ("archive", archive::run(c, t, i).await) });
        }
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("chain", crate::bulk::chain::run(c, t).await) });
    }
    {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("governor", crate::bulk::governor::run(c, t).await) });
    }
    if ctx.store.is_postgres() {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("prompt_index", crate::worker::prompts::run(c, t).await) });
    }
    let mut status = crate::ops::start(&ctx, mode == Mode::Serve, &token, &mut set).await?;
    // The front doors: only `serve` opens them, on every worker of a fleet.
    if mode == Mode::Serve
        && let Some(listener) = crate::api::bind(&ctx.cfg.api.listen).await?
    {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "API listening (/api/v3/contents/generations/tasks, /v1/videos)");
        status.push_str(&format!("; api on http://{addr}"));
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("api", crate::api::run(c, listener, t).await) });
    }
    if mode == Mode::Serve {
        let (c, t) = (ctx.clone(), token.child_token());
        set.spawn(async move { ("webhooks", crate::api::webhooks::run(c, t).await) });
    }
    crate::ops::notify::ready(&status);
    tracing::info!(mode = ?mode, "seedq service started");

    let drained = async {
        if mode == Mode::Serve {
            return std::future::pending::<anyhow::Result<()>>().await;
        }
        loop {
            // A chain may still have to release a shot or be stitched.
            let left = async {
                Ok::<_, crate::store::StoreError>(
                    ctx.store.pending_work(ctx.archive.is_some()).await?
                        + ctx.store.active_chains().await?,
                )
            };
            match left.await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // A store outage (full disk, database refusing) passes: `run` waits it out
                // like the stages do, rather than ending with work left.
                Err(e) => match e.outage() {
                    Some(reason) => ctx.ops.health.store_down(&reason),
                    None => return Err(e.into()),
                },
            }
            tokio::time::sleep(
                ctx.cfg
                    .dispatch
                    .idle_interval
                    .min(Duration::from_millis(250)),
            )
            .await;
        }
    };
    let mut result = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested; finishing in-flight steps");
            Ok(())
        }
        r = drained => r.context("checking for remaining work"),
        Some(joined) = set.join_next() => Err(stage_exit(joined)),
    };
    crate::ops::notify::stopping();
    token.cancel();
    let grace = ctx.cfg.service.shutdown_grace;
    let drain = async {
        while let Some(joined) = set.join_next().await {
            if let Ok((name, Err(e))) = &joined {
                tracing::error!(stage = name, error = %format!("{e:#}"), "stage failed while stopping");
            }
            if let Err(e) = joined
                && e.is_panic()
            {
                result = Err(anyhow::anyhow!("a stage panicked while stopping"));
            }
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(grace = ?grace, "stages still running after the grace period; aborting them (leases cover their jobs)");
        set.abort_all();
    }
    beat_stop.cancel();
    let _ = beat.await;
    fleet::leave(&ctx).await;
    result
}

fn stage_exit(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    match joined {
        Ok((name, Ok(()))) => anyhow::anyhow!("the {name} stage stopped unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("the {name} stage failed")),
        Err(e) if e.is_panic() => anyhow::anyhow!("a stage panicked: {e}"),
        Err(e) => anyhow::anyhow!("a stage was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    //! The dependency direction, checked on the source so it stays:
    //! `stage` ← `worker` ← `ops`, `bulk` ← `service` ← `cli`.

    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src/ is readable in a checkout") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                rs_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The top-level modules a file's code (comments left out) names through `crate::`,
    /// grouped imports (`crate::{a, b::c}`) included.
    fn crate_deps(text: &str) -> BTreeSet<String> {
        let mut deps = BTreeSet::new();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .collect(),
                    None => vec![rest],
                };
                for n in names {
                    let n: String = n
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !n.is_empty() {
                        deps.insert(n);
                    }
                }
            }
        }
        deps
    }

    /// (file relative to `src/`, the modules it names).
    fn sources() -> Vec<(String, BTreeSet<String>)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rs_files(&src, &mut files);
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).expect("a source file is readable");
                let rel = p.strip_prefix(&src).expect("under src/").to_string_lossy();
                (rel.replace('\\', "/"), crate_deps(&text))
            })
            .collect()
    }

    fn violations(under: &str, banned: &[&str]) -> Vec<String> {
        sources()
            .into_iter()
            .filter(|(f, _)| f.starts_with(under))
            .flat_map(|(f, deps)| {
                banned
                    .iter()
                    .filter(|b| deps.contains(**b))
                    .map(|b| format!("{f} imports crate::{b}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_parser_sees_plain_and_grouped_imports_but_not_comments() {
        let deps = crate_deps(
            "use crate::worker::Ctx;\nuse crate::{ops, bulk::chain};\n// crate::service\n",
        );
        let want: BTreeSet<String> = ["worker", "ops", "bulk"].map(String::from).into();
        assert_eq!(deps, want);
    }

    /// The `seedq-*` crates a workspace crate's manifest names, in `[dependencies]` and
    /// `[dev-dependencies]` alike.
    fn workspace_deps(krate: &str) -> BTreeSet<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates")
            .join(krate)
            .join("Cargo.toml");
        std::fs::read_to_string(&path)
            .expect("manifest")
            .lines()
            .filter(|l| l.starts_with("seedq-"))
            .filter_map(|l| l.split_once(" =").map(|(name, _)| name.trim().to_string()))
            .collect()
    }

    /// The crates are layers: `seedq-core`, `seedq-media` and `seedq-pgscratch` depend on no
    /// other seedq crate; `seedq-store` on `seedq-core` (and the scratch cluster, for tests);
    /// `seedq-ark` on `seedq-core`; `seedq-sim` on `seedq-ark` and `seedq-media`, and not on the
    /// store; this crate sits on top. Cargo refuses a cycle; this keeps a layer from reaching
    /// sideways: the Ark client knows no store, the store no Ark, the simulator neither.
    #[test]
    fn the_workspace_crates_are_layered() {
        assert_eq!(workspace_deps("seedq-core"), BTreeSet::new());
        assert_eq!(workspace_deps("seedq-pgscratch"), BTreeSet::new());
        let want: BTreeSet<String> = ["seedq-core", "seedq-pgscratch"].map(String::from).into();
        assert_eq!(workspace_deps("seedq-store"), want);
        assert_eq!(workspace_deps("seedq-media"), BTreeSet::new());
        let want: BTreeSet<String> = ["seedq-core"].map(String::from).into();
        assert_eq!(workspace_deps("seedq-ark"), want);
        let want: BTreeSet<String> = ["seedq-ark", "seedq-media"].map(String::from).into();
        assert_eq!(workspace_deps("seedq-sim"), want);
    }

    /// The simulator judges creates with its own reading of Ark (`crates/seedq-sim/src/rules`):
    /// if it called seedq's validator, a wrong rule would pass on both sides. Its tests may
    /// call seedq's, to compare the two.
    #[test]
    fn the_simulator_does_not_validate_with_seedqs_rules() {
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("the simulator's sources") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    walk(&path, out);
                    continue;
                }
                if path.file_name().is_some_and(|n| n == "tests.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
                for line in code.filter(|l| l.contains("request::") || l.contains("request;")) {
                    out.push(format!("{}: {}", path.display(), line.trim()));
                }
            }
        }
        let mut uses = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/seedq-sim/src"),
            &mut uses,
        );
        assert_eq!(uses, Vec::<String>::new());
    }

    #[test]
    fn nothing_below_the_cli_imports_the_composition_root() {
        let bad: Vec<String> = sources()
            .into_iter()
            .filter(|(f, _)| !(f.starts_with("cli/") || f == "main.rs" || f == "service.rs"))
            .filter(|(_, deps)| deps.contains("service"))
            .map(|(f, _)| format!("{f} imports crate::service"))
            .collect();
        assert_eq!(bad, Vec::<String>::new());
    }

    #[test]
    fn the_stage_core_depends_on_no_stage_and_no_daemon_part() {
        let bad = violations(
            "stage/",
            &[
                "worker", "ops", "bulk", "service", "cli", "ui", "sim", "api",
            ],
        );
        assert_eq!(bad, Vec::<String>::new());
    }

    #[test]
    fn the_stages_do_not_import_ops_bulk_or_anything_above() {
        let bad = violations("worker/", &["ops", "bulk", "service", "cli", "ui", "api"]);
        assert_eq!(bad, Vec::<String>::new());
    }

    #[test]
    fn ops_and_bulk_do_not_import_the_root_or_the_cli() {
        let mut bad = violations("ops/", &["service", "cli", "bulk"]);
        bad.extend(violations("bulk/", &["service", "cli", "ops", "ui"]));
        assert_eq!(bad, Vec::<String>::new());
    }

    #[test]
    fn the_front_doors_do_not_import_the_root_or_the_cli() {
        let bad = violations("api/", &["service", "cli"]);
        assert_eq!(bad, Vec::<String>::new());
    }

    #[test]
    fn poll_and_archive_share_the_result_module_not_each_other() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/worker");
        let code = |file: &str| -> String {
            std::fs::read_to_string(src.join(file))
                .expect("a stage file is readable")
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            !code("poll.rs").contains("archive::"),
            "poll.rs imports archive"
        );
        assert!(
            !code("archive.rs").contains("poll::"),
            "archive.rs imports poll"
        );
    }
}
