//! `seedq export --batch NAME --format csv|jsonl`: a manifest of a batch's videos.
//!
//! One line per job that produced a video (succeeded, archiving or archived), oldest first:
//! the job, where the video is (the archive key, or the result URL while it is not archived),
//! its hash and size, what was asked (prompt, seed, model, tier) and what it cost (the
//! billed tokens, or the estimate before usage is known, priced from the catalogue).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::Ctx;
use crate::catalogue;
use crate::job::JobState;
use crate::store::Job;
use crate::tier::Tier;

/// Manifest formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

/// `seedq export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The batch to export.
    #[arg(long)]
    pub batch: String,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Write here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// One manifest line.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub job: String,
    /// The archive object key; empty while the video is not archived.
    pub key: String,
    pub sha256: String,
    pub size: Option<i64>,
    pub prompt: String,
    pub seed: Option<i64>,
    pub model: String,
    pub tier: Tier,
    /// Billed tokens when known, else the estimate (`tokens_billed` says which).
    pub tokens: Option<i64>,
    pub tokens_billed: bool,
    /// CNY at the catalogue's price for the model and tier.
    pub cost: Option<f64>,
    pub state: String,
    /// The result URL (valid for a limited time).
    pub url: String,
    /// The job's idempotency key, if it had one.
    pub job_key: String,
    pub remote_task_id: String,
}

/// A CSV cell that a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, or a leading
/// tab or carriage return) gets a leading `'`, so opening the manifest never runs a prompt
/// such as `=HYPERLINK(…)` (OWASP "CSV injection"). JSONL keeps the exact text.
pub(crate) fn csv_cell(s: String) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s
    }
}

impl Entry {
    /// The entry with every text cell made safe for spreadsheets ([`csv_cell`]).
    fn for_csv(self) -> Self {
        Self {
            job: csv_cell(self.job),
            key: csv_cell(self.key),
            sha256: csv_cell(self.sha256),
            prompt: csv_cell(self.prompt),
            model: csv_cell(self.model),
            // One of two fixed words: nothing a spreadsheet could read as a formula.
            tier: self.tier,
            state: csv_cell(self.state),
            url: csv_cell(self.url),
            job_key: csv_cell(self.job_key),
            remote_task_id: csv_cell(self.remote_task_id),
            ..self
        }
    }
}

/// The text prompt of a frozen body.
pub(crate) fn prompt_of(request_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(request_json).unwrap_or_default();
    v["content"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["type"] == "text")
                .and_then(|i| i["text"].as_str())
        })
        .unwrap_or("")
        .to_string()
}

fn entry(j: Job, cat: &catalogue::Catalogue) -> Entry {
    let tokens = j.usage_tokens.or(j.est_tokens);
    let cost = match (cat.get(&j.model), tokens) {
        (Some(spec), Some(t)) => Some(catalogue::cost(spec, t, j.is_flex())),
        _ => None,
    };
    Entry {
        prompt: prompt_of(&j.request_json),
        tokens_billed: j.usage_tokens.is_some(),
        tokens,
        cost,
        key: j.archive_key.unwrap_or_default(),
        sha256: j.archive_sha256.unwrap_or_default(),
        size: j.archive_size,
        seed: j.seed,
        state: j.state.to_string(),
        url: j.video_url.unwrap_or_default(),
        job_key: j.idempotency_key.unwrap_or_default(),
        remote_task_id: j.remote_task_id.unwrap_or_default(),
        tier: j.service_tier,
        model: j.model,
        job: j.id.to_string(),
    }
}

pub(crate) async fn run(ctx: &Ctx, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let store = ctx.store_existing().await?;
    if store.batch(&a.batch).await?.is_none() {
        eprintln!("error: no batch named {}", a.batch);
        return Ok(ExitCode::from(1));
    }
    let jobs = store.batch_jobs(&a.batch).await?;
    let entries = jobs.into_iter().filter(|j| {
        matches!(
            j.state,
            JobState::Succeeded | JobState::Archiving | JobState::Archived
        )
    });
    let sink: Box<dyn Write> = match &a.output {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = std::io::BufWriter::new(sink);
    let mut n = 0usize;
    match a.format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut sink);
            for j in entries {
                w.serialize(entry(j, &ctx.catalogue).for_csv())?;
                n += 1;
            }
            if n == 0 {
                // Still write the header, so an empty manifest is a valid one.
                w.write_record(EMPTY_HEADER)?;
            }
            w.flush()?;
        }
        Format::Jsonl => {
            for j in entries {
                serde_json::to_writer(&mut sink, &entry(j, &ctx.catalogue))?;
                writeln!(sink)?;
                n += 1;
            }
        }
    }
    sink.flush()?;
    if let Some(p) = &a.output {
        eprintln!("wrote {n} video(s) to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The CSV header, for a manifest without lines (serde writes it with the first line).
const EMPTY_HEADER: [&str; 15] = [
    "job",
    "key",
    "sha256",
    "size",
    "prompt",
    "seed",
    "model",
    "tier",
    "tokens",
    "tokens_billed",
    "cost",
    "state",
    "url",
    "job_key",
    "remote_task_id",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_escaped() {
        for f in ["=1+1", "+1", "-2", "@SUM(A1)", "\t=x", "\r=x"] {
            assert_eq!(csv_cell(f.to_string()), format!("'{f}"));
        }
        assert_eq!(csv_cell("a fox".into()), "a fox");
        assert_eq!(csv_cell(String::new()), "");
    }

    #[test]
    fn prompt_comes_from_the_text_item() {
        let body = r#"{"model":"m","content":[{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"a fox"}]}"#;
        assert_eq!(prompt_of(body), "a fox");
        assert_eq!(prompt_of("{}"), "");
    }
}
