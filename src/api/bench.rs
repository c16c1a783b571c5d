//! `seedq bench api`: create latency (p50/p99) and creates per second through the Ark door.
//!
//! Opens a fresh SQLite store in a temp dir (or `--store URL`, e.g. a PostgreSQL database),
//! makes one API key, serves the doors on 127.0.0.1 in this process (the same router and
//! guarded server as `seedq serve`), and has `--clients` concurrent HTTP clients (keep-alive,
//! one connection each) send `--creates` creates in all. Each create is authenticated,
//! validated and stored durably before it is answered, as in production; no stage runs, so
//! nothing is sent to Ark. At the end the store must hold exactly `--creates` jobs.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::stage::http::{ServerLimits, serve_guarded};
use crate::store::{Store, StoreTarget};

/// `seedq bench api`.
#[derive(Debug, Args)]
pub struct ApiBenchArgs {
    /// Creates in all.
    #[arg(long, default_value_t = 5000)]
    pub creates: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// The store (default: a fresh SQLite file in a temp dir); a PostgreSQL URL must name an
    /// empty database.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// The create every client sends (a 5 s 720p text-to-video on 1.0 pro).
const BODY: &str = r#"{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"a red fox runs through snow at dusk"}],"duration":5,"resolution":"720p"}"#;

/// Runs the benchmark and prints its numbers.
///
/// # Errors
/// The store, the listener or a create fails.
pub async fn run(cfg: &Config, catalogue: &Catalogue, a: ApiBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("seedq-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = match &a.store {
        Some(url) => StoreTarget::parse(url),
        None => StoreTarget::Sqlite(dir.join("bench.db")),
    };
    let store = Store::open_target(&target, true).await?;
    let mut cfg = cfg.clone();
    cfg.archive.url = String::new();
    // The worker context wants an Ark key; nothing is sent anywhere.
    cfg.ark.api_key = Some(SecretString::from("bench".to_string()));
    cfg.admin.max_connections = cfg.admin.max_connections.max(a.clients as u32 + 8);
    let (row, key, _) = super::keys::generate("bench");
    store.api_key_create(row).await?;
    let ctx = crate::stage::Ctx::new(cfg, catalogue.clone(), store.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_guarded(
        listener,
        super::router(&ctx),
        ServerLimits::from_config(&ctx.cfg),
        stop.clone(),
    ));
    let url = format!("http://{addr}{}", super::ark::TASKS);
    let clients = a.clients.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let n = a.creates / clients + usize::from(c < a.creates % clients);
        let (url, key) = (url.clone(), key.clone());
        tasks.spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(BODY)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "a create answered {}", r.status());
                r.bytes().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut lat: Vec<Duration> = Vec::with_capacity(a.creates);
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let wall = started.elapsed();
    stop.cancel();
    let _ = server.await;
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let stored: i64 = store.stats().await?.iter().map(|s| s.jobs).sum();
    anyhow::ensure!(
        stored == a.creates as i64,
        "the store holds {stored} jobs after {} creates",
        a.creates
    );
    println!(
        "{} creates through the Ark door, {clients} clients, {}: {:.0} creates/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {stored} jobs stored",
        a.creates,
        target.describe(),
        a.creates as f64 / wall.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(lat.last()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
