//! SIGHUP: reload the configuration without a restart (`ExecReload=kill -HUP $MAINPID`).
//!
//! The file and environment are read again exactly as at start (same `--config`, same flag
//! overrides) and validated. What can change live does: `[models]` limits, `[poll]`,
//! `log.level`, `maintenance.flex_window`. Any other changed key is listed as needing a
//! restart (log, STATUS line, `seedq_restart_required`) and keeps its old value. A file that
//! fails to load or validate changes nothing.

use std::collections::BTreeMap;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{metrics, notify};
use crate::config::Config;
use crate::stage::Ctx;

pub use crate::stage::state::{Reloader, Source};

/// Keys (dotted, or prefixes ending in `.`) that a reload applies live.
const LIVE_KEYS: [&str; 5] = [
    "models.",
    "poll.",
    "log.level",
    "maintenance.flex_window",
    "budget.",
];

/// What one reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Live keys whose value changed and now apply.
    pub applied: Vec<String>,
    /// Changed keys that keep their old value until a restart.
    pub restart_required: Vec<String>,
}

/// Installs the SIGHUP handler. Done before READY=1, so a reload sent right after start is
/// never the default action (which would terminate the process).
///
/// # Errors
/// The handler cannot be installed.
pub fn listen() -> anyhow::Result<Signal> {
    signal(SignalKind::hangup()).map_err(|e| anyhow::anyhow!("installing the SIGHUP handler: {e}"))
}

/// Reloads on every SIGHUP until shutdown.
///
/// # Errors
/// None; a failed reload is logged and counted, and the service goes on.
pub async fn run(ctx: Ctx, mut hup: Signal, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        // Cancel-safe: `recv` loses no signal when the other branch wins.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            got = hup.recv() => if got.is_none() { return Ok(()) },
        }
        notify::reloading();
        let status = match reload(&ctx) {
            Ok(r) => {
                // A cap may have been raised: jobs waiting on a budget are checked again.
                if let Err(e) = ctx.store.wake_budget_waiters().await {
                    tracing::warn!(error = %e, "could not wake the jobs waiting on a budget");
                }
                ctx.poke_dispatch.notify_one();
                metrics::reload(true, !r.restart_required.is_empty());
                tracing::info!(
                    applied = ?r.applied,
                    restart_required = ?r.restart_required,
                    "configuration reloaded"
                );
                if r.restart_required.is_empty() {
                    "reloaded".to_string()
                } else {
                    format!(
                        "reloaded; restart needed for: {}",
                        r.restart_required.join(", ")
                    )
                }
            }
            Err(e) => {
                metrics::reload(false, false);
                tracing::error!(error = %format!("{e:#}"), "configuration reload failed; keeping the running configuration");
                format!("reload failed: {e:#}")
            }
        };
        notify::ready(&status);
    }
}

/// Reads the configuration again and applies what can change live.
///
/// # Errors
/// No reload source (not `serve`), or the configuration does not load or validate.
pub fn reload(ctx: &Ctx) -> anyhow::Result<Reloaded> {
    let Some(reloader) = ctx.ops.reloader.get() else {
        anyhow::bail!("this process has no configuration source to reload from");
    };
    let (new, catalogue) = (reloader.source)()?;
    let mut current = reloader.current.lock().unwrap_or_else(|p| p.into_inner());
    let applied: Vec<String> = changed(&current, &new)
        .into_iter()
        .filter(|k| is_live(k))
        .collect();
    // Compared with the start configuration: a change waits for a restart until there is one.
    let restart_required: Vec<String> = changed(&ctx.cfg, &new)
        .into_iter()
        .filter(|k| !is_live(k))
        .collect();
    if new.log.level != current.log.level {
        match crate::telemetry::set_level(&new.log.level) {
            Ok(true) => {}
            Ok(false) => tracing::warn!("RUST_LOG is set and wins over log.level"),
            Err(e) => anyhow::bail!(e),
        }
    }
    ctx.ops.live.apply(&new, catalogue);
    *current = new;
    Ok(Reloaded {
        applied,
        restart_required,
    })
}

fn is_live(key: &str) -> bool {
    LIVE_KEYS
        .iter()
        .any(|p| key == p.trim_end_matches('.') || (p.ends_with('.') && key.starts_with(p)))
}

/// Every set key of a configuration, dotted (`dispatch.workers`), with its value.
pub fn flat(cfg: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(cfg) {
        flatten("", &v, &mut out);
    }
    out
}

/// Dotted keys whose values differ between two configurations (secrets never serialise, so
/// they never show up here).
pub fn changed(a: &Config, b: &Config) -> Vec<String> {
    let (fa, fb) = (flat(a), flat(b));
    let mut keys: Vec<String> = fa
        .keys()
        .chain(fb.keys())
        .filter(|k| fa.get(*k) != fb.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_split_into_live_and_restart_keys() {
        let a = Config::default();
        let mut b = Config::default();
        b.poll.min_interval = std::time::Duration::from_secs(9);
        b.dispatch.workers = 2;
        b.log.level = "seedq=debug".into();
        b.models.insert(
            "m".into(),
            toml::Value::Table("concurrency = 3".parse().expect("toml")),
        );
        let keys = changed(&a, &b);
        assert_eq!(
            keys,
            vec![
                "dispatch.workers",
                "log.level",
                "models.m.concurrency",
                "poll.min_interval"
            ]
        );
        let live: Vec<_> = keys.iter().filter(|k| is_live(k)).collect();
        assert_eq!(
            live,
            vec!["log.level", "models.m.concurrency", "poll.min_interval"]
        );
        assert!(!is_live("log.format"));
        assert!(is_live("maintenance.flex_window"));
        assert!(!is_live("maintenance.prune"));
    }
}
