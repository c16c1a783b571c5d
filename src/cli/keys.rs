//! `seedq keys create | ls | revoke`: the API keys of the front doors (docs/api.md).
//!
//! A key is printed once, at `create`, and stored only as its SHA-256; `ls` shows ids, names
//! and limits, never a key. Revocation is a row in the store, which every worker reads on
//! every request, so it holds at once across a fleet.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::Ctx;
use crate::api::keys::generate;
use crate::store::api::KeyUsage;
use crate::worker::budget::{day_start, fmt_fen, fmt_units, parse_cny};

/// `seedq keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and stored hashed.
    Create(CreateArgs),
    /// List the keys (never the keys themselves).
    Ls(super::jobs::JsonArg),
    /// Revoke a key (by name or id): refused at once on every worker.
    Revoke(RevokeArgs),
}

/// `seedq keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for the key (unique), e.g. the program that will use it.
    pub name: String,
    /// The most the key's jobs may spend per budget day, in CNY (like budget.daily_cny).
    #[arg(long, value_name = "CNY")]
    pub max_cost_per_day: Option<String>,
    /// Requests per minute through the doors (per worker); over it: 429 with Retry-After.
    #[arg(long, value_name = "N")]
    pub rpm: Option<i64>,
    /// The models the key may create jobs for (default: all).
    #[arg(long, value_name = "MODEL", num_args = 1..)]
    pub models: Vec<String>,
    /// Where the key's jobs' webhooks go when a create names no callback_url.
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
}

/// `seedq keys revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The key's name or id.
    pub key: String,
}

/// Runs a `keys` subcommand.
///
/// # Errors
/// Store failures; bad input is exit 2 with the reason.
pub async fn run(ctx: &Ctx, c: KeysCommand) -> anyhow::Result<ExitCode> {
    match c {
        KeysCommand::Create(a) => create(ctx, a).await,
        KeysCommand::Ls(a) => ls(ctx, a.json).await,
        KeysCommand::Revoke(a) => {
            let store = ctx.store_existing().await?;
            // Given the key itself, it is looked up by its hash and only its id is printed:
            // the secret never reaches the terminal's scrollback or a log.
            let target = if a.key.starts_with(crate::api::keys::KEY_PREFIX) {
                match store
                    .api_key_by_hash(&crate::api::sign::sha256_hex(a.key.as_bytes()))
                    .await?
                {
                    Some(k) => k.id,
                    None => {
                        eprintln!("error: no live key matches the given key (see `seedq keys ls`)");
                        return Ok(ExitCode::from(1));
                    }
                }
            } else {
                a.key.clone()
            };
            if store.api_key_revoke(&target).await? {
                println!("revoked {target}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no live key named {target:?} (see `seedq keys ls`)");
                Ok(ExitCode::from(1))
            }
        }
    }
}

async fn create(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let bad = |m: String| {
        eprintln!("error: {m}");
        Ok(ExitCode::from(2))
    };
    if a.name.trim().is_empty() {
        return bad("the key's NAME is empty: give a name, e.g. the program using it".into());
    }
    let fen = match a.max_cost_per_day.as_deref().map(parse_cny) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            let v = a.max_cost_per_day.as_deref().unwrap_or_default();
            return bad(format!("--max-cost-per-day {v:?} is not valid: {e}"));
        }
    };
    if let Some(r) = a.rpm
        && r < 1
    {
        return bad(format!(
            "--rpm {r} is out of range: at least 1 request per minute"
        ));
    }
    for m in &a.models {
        if ctx.catalogue.get(m).is_none() {
            return bad(format!(
                "--models {m:?} is not a known model (known: {})",
                ctx.catalogue.names()
            ));
        }
    }
    if let Some(u) = &a.webhook_url
        && let Err(e) = crate::stage::safeurl::UrlPolicy::from_config(&ctx.cfg).check_str(u)
    {
        return bad(format!("--webhook-url: {e}"));
    }
    let store = ctx.store().await?;
    let (mut row, key, secret) = generate(a.name.trim());
    row.max_cost_fen = fen;
    row.rpm = a.rpm;
    row.models = (!a.models.is_empty()).then_some(a.models);
    row.webhook_url = a.webhook_url;
    if store.api_keys().await?.iter().any(|k| k.name == row.name) {
        return bad(format!(
            "a key named {:?} exists already (revoked keys keep their names)",
            row.name
        ));
    }
    store
        .api_key_create(row.clone())
        .await
        .context("storing the key")?;
    println!("{key}");
    eprintln!(
        "key {} ({}) created; the key above is shown only now. Webhook signing secret: {secret}",
        row.name, row.id
    );
    Ok(ExitCode::SUCCESS)
}

async fn ls(ctx: &Ctx, json: bool) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    let keys = store.api_keys().await?;
    let day = day_start(
        crate::store::now_ms(),
        // Validated at load: a bad zone never gets this far.
        crate::schedule::parse_tz(&ctx.cfg.maintenance.timezone).unwrap_or(chrono_tz::Tz::UTC),
        ctx.cfg.bulk.tpd_day_ms(),
    );
    let usage: HashMap<String, KeyUsage> = store
        .api_key_usage(day)
        .await?
        .into_iter()
        .map(|u| (u.key.clone(), u))
        .collect();
    if json {
        let rows: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                let u = usage.get(&k.id);
                serde_json::json!({
                    "key": k,
                    "jobs": u.map_or(0, |u| u.jobs),
                    "spent_today_cny": fmt_units(u.map_or(0, |u| u.units_today)),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:<16} {:>7} {:>11} {:>11} {:>6}  {:<8} MODELS",
        "ID", "NAME", "JOBS", "TODAY CNY", "CAP CNY", "RPM", "STATE"
    );
    for k in keys {
        let u = usage.get(&k.id);
        println!(
            "{:<18} {:<16} {:>7} {:>11} {:>11} {:>6}  {:<8} {}",
            k.id,
            k.name,
            u.map_or(0, |u| u.jobs),
            fmt_units(u.map_or(0, |u| u.units_today)),
            k.max_cost_fen.map_or("-".into(), fmt_fen),
            k.rpm.map_or("-".into(), |r| r.to_string()),
            if k.revoked_at.is_some() {
                "revoked"
            } else {
                "live"
            },
            k.models.map_or("all".into(), |m| m.join(","))
        );
    }
    Ok(ExitCode::SUCCESS)
}
