//! `seedq bench ui`: how long the dashboard's overview and job list take to render with a
//! large store (docs/performance.md: "under 200 ms with 1 000 000 jobs").
//!
//! Fills a fresh database in a temp dir with `--jobs` jobs over three models and twenty
//! batches, most of them finished (as a store that has run for a while looks), then renders
//! each page `--runs` times through the same functions the HTTP handlers call, and prints the
//! best and the median.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use secrecy::SecretString;

use super::Ui;
use super::pages::{self, ListQuery};
use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::job::JobId;
use crate::store::{NewJob, Store};

/// `seedq bench ui`.
#[derive(Debug, Args)]
pub struct UiBenchArgs {
    /// Jobs in the store.
    #[arg(long, default_value_t = 1_000_000)]
    pub jobs: usize,
    /// Renders of each page; the best and the median are reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

const MODELS: [&str; 3] = [
    "doubao-seedance-1-0-pro-250528",
    "doubao-seedance-1-0-lite-t2v-250428",
    "doubao-seedance-1-0-pro-fast-251015",
];

/// Runs the benchmark; prints one line per page.
///
/// # Errors
/// The temp database cannot be made or filled, or a page fails to render.
pub async fn run(cfg: &Config, catalogue: &Catalogue, a: UiBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("seedq-bench-ui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = Store::open(&dir.join("bench.db"))?;

    let fill = Instant::now();
    const CHUNK: usize = 50_000;
    let mut done = 0;
    while done < a.jobs {
        let n = CHUNK.min(a.jobs - done);
        let jobs = (done..done + n)
            .map(|i| {
                let model = MODELS[i % 3];
                let prompt = format!("shot {i}: a red fox runs through snow at dusk");
                NewJob {
                    id: JobId::generate(),
                    model: model.to_string(),
                    flex: i % 4 == 0,
                    priority: 0,
                    request_json: serde_json::json!({
                        "model": model,
                        "content": [{"type": "text", "text": prompt}],
                        "resolution": "720p", "duration": 5
                    })
                    .to_string(),
                    key: Some(format!("bench-{i}")),
                    tags: vec![format!("t{}", i % 7)],
                    batch: Some(format!("batch-{:02}", i % 20)),
                    shape: Some("720p/5s".into()),
                    est_tokens: Some(108_900),
                    expires_after: None,
                    seed: None,
                }
            })
            .collect();
        store.enqueue(jobs).await?;
        done += n;
    }
    // All but 1 in 50 finished (archived, a few failed), as after a night of rendering.
    store.ui_bench_finish(50).await?;
    println!(
        "filled {} jobs in {:.1} s ({})",
        a.jobs,
        fill.elapsed().as_secs_f64(),
        dir.display()
    );

    let mut cfg = cfg.clone();
    cfg.archive.url = String::new();
    // The worker context wants a key; nothing is sent anywhere.
    cfg.ark.api_key = Some(SecretString::from("bench".to_string()));
    let ctx = crate::stage::Ctx::new(cfg, catalogue.clone(), store.clone())?;
    let ui = Ui { ctx, blob: None };

    let mid = store
        .ui_jobs(crate::store::UiFilter {
            limit: u32::try_from(a.jobs / 2).unwrap_or(u32::MAX).max(1),
            ..Default::default()
        })
        .await?
        .pop()
        .map(|j| j.id.as_str().to_string());
    let cases: Vec<(&str, ListQuery)> = vec![
        ("jobs: first page", ListQuery::default()),
        (
            "jobs: page in the middle (keyset)",
            ListQuery {
                before: mid,
                ..Default::default()
            },
        ),
        (
            "jobs: state=queued",
            ListQuery {
                state: Some("queued".into()),
                ..Default::default()
            },
        ),
        (
            "jobs: batch + tag",
            ListQuery {
                batch: Some("batch-07".into()),
                tag: Some("t3".into()),
                ..Default::default()
            },
        ),
        (
            "jobs: prompt contains",
            ListQuery {
                q: Some("shot 4242:".into()),
                ..Default::default()
            },
        ),
        (
            // In every prompt: the search that cannot be selective.
            "jobs: prompt contains (every job)",
            ListQuery {
                q: Some("red fox".into()),
                ..Default::default()
            },
        ),
    ];

    let report = |name: &str, mut ms: Vec<f64>| {
        ms.sort_by(f64::total_cmp);
        println!(
            "{name:<36} best {:>8.1} ms  median {:>8.1} ms  (target < 200 ms)",
            ms[0],
            ms[ms.len() / 2]
        );
    };
    let mut ms = Vec::new();
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        let html = pages::overview(&ui).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(html.contains("batch-19"), "the overview lacks a batch");
    }
    report("overview", ms);
    for (name, q) in cases {
        let mut ms = Vec::new();
        for _ in 0..a.runs.max(1) {
            let t = Instant::now();
            let html = pages::jobs(&ui, q.clone())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(html.contains("/ui/jobs/"), "{name}: no rows");
        }
        report(name, ms);
    }
    drop(ui);
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
