//! Test support: a fresh PostgreSQL database per test, so the store's behaviour suite runs
//! on both backends. The server is the one `SEEDQ_TEST_PG` names, else a scratch
//! cluster this test process starts ([`seedq_pgscratch`]); a test that needs it fails loudly
//! when neither works rather than skipping, so CI can never pass by not testing PostgreSQL.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{Store, StoreTarget};

/// The server's base URL (no database).
pub fn server() -> String {
    seedq_pgscratch::server_url()
}

/// Creates an empty database with a name unique to this process and call; returns its URL.
pub async fn fresh_database() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let base = server();
    let (client, conn) =
        tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to SEEDQ_TEST_PG");
    tokio::spawn(conn);
    // The name is ours (digits and underscores), never user input.
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    format!("{base}/{name}")
}

/// A migrated PostgreSQL store on a fresh database.
pub async fn pg_store() -> Store {
    let url = fresh_database().await;
    Store::open_target(
        &StoreTarget::Postgres {
            url,
            password: None,
        },
        true,
    )
    .await
    .expect("open the PostgreSQL store")
}

/// Both backends, for a test to run its body on each: a SQLite file in `dir`, then a fresh
/// PostgreSQL database.
#[allow(dead_code, reason = "the behaviour suite moves onto it test by test")]
pub async fn both(dir: &std::path::Path) -> Vec<(&'static str, Store)> {
    vec![
        (
            "sqlite",
            Store::open(&dir.join("q.db")).expect("open sqlite"),
        ),
        ("postgres", pg_store().await),
    ]
}
