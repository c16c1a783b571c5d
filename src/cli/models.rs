//! `seedq models`: the model catalogue in force (built-in rows and `[models."<id>"]` from the
//! configuration), with each row's region, date and source.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::Ctx;
use crate::catalogue::{ModelSpec, Region};

/// `seedq models [--region …] [--json]`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Only the models of one region: volcengine or byteplus.
    #[arg(long)]
    pub region: Option<Region>,
    /// One JSON object per model (id plus every catalogue field).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    #[serde(flatten)]
    spec: &'a ModelSpec,
}

/// Lists the catalogue.
///
/// # Errors
/// Writing to stdout fails.
pub fn run(ctx: &Ctx, a: &ModelsArgs) -> anyhow::Result<ExitCode> {
    let rows: Vec<(&String, &ModelSpec)> = ctx
        .catalogue
        .iter()
        .filter(|(_, s)| a.region.is_none_or(|r| s.region == r))
        .collect();
    if a.json {
        for (id, spec) in rows {
            println!("{}", serde_json::to_string(&Row { id, spec })?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36} {:<10} {:<22} {:<10} {:>9} {:>5} {:>4} {:<18} SOURCE",
        "MODEL", "REGION", "FAMILY", "SINCE", "CNY/M", "RPM", "CONC", "RESOLUTIONS"
    );
    for (id, s) in rows {
        println!(
            "{:<36} {:<10} {:<22} {:<10} {:>9} {:>5} {:>4} {:<18} {}",
            id,
            s.region.name(),
            s.family,
            s.since,
            format!("{:.2}", s.price_per_million),
            s.limits.rpm,
            s.limits.concurrency,
            s.resolutions.join(","),
            s.source
        );
    }
    Ok(ExitCode::SUCCESS)
}
