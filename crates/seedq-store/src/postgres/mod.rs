//! The PostgreSQL backend: the same area traits as SQLite (`store/sqlite/`), for a fleet of
//! workers on several machines sharing one queue.
//!
//! `tokio-postgres` with a `deadpool-postgres` pool, and rustls for TLS (the one TLS stack
//! reqwest already brings). Not sqlx: its SQLite driver would link a second libsqlite3-sys
//! beside rusqlite's, and its checked macros want a database at build time.
//!
//! Each file implements one area's trait (declared with `backend_trait!` in `store/<area>.rs`)
//! for [`PgStore`], under the same file name as the SQLite implementation. The schema is
//! `migrations/postgres/`, as close to SQLite's as the dialects allow (BIGINT for every
//! integer, TEXT for JSON), so the two sets of queries read alike.
//!
//! Transactions that touch rows other workers touch too can deadlock or fail serialisation;
//! [`PgStore::retry`] runs such a transaction again (PostgreSQL aborts one side cleanly).

pub(crate) mod api;
pub(crate) mod archive;
pub(crate) mod budget;
pub(crate) mod bulk;
pub(crate) mod chain;
pub(crate) mod core;
pub(crate) mod counters;
pub(crate) mod fleet;
pub(crate) mod images;
pub(crate) mod migrate;
pub(crate) mod ops;
pub(crate) mod pause;
pub(crate) mod reads;
pub(crate) mod ui;
pub(crate) mod webhooks;

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::{Job, StoreError};
use crate::job::JobId;

/// Connections per process: the stages (dispatchers, poller, archivers, the admin server)
/// each hold one only for a transaction.
const POOL_SIZE: usize = 16;

/// How long a stage waits for a free connection before the call fails (and its loop backs
/// off), rather than hanging when the database is unreachable.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How often a transaction is run again after a deadlock or serialisation failure.
const RETRIES: u32 = 8;

/// The server ends a session that sits inside a transaction this long without a statement
/// (`idle_in_transaction_session_timeout`). Every transaction here runs its statements back
/// to back and never waits on Ark, S3 or a client while open, so only a worker that froze
/// mid-transaction (SIGSTOP, a VM paused, a hung host) reaches it; until then its row locks
/// would stall every other worker that reconciles those jobs, and no heartbeat can release
/// a lock held by a session the server still thinks is alive.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);

/// A pool of connections to one PostgreSQL database.
#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    shown: String,
}

/// `url` with any password replaced by `***`: the URL is shown in errors and `doctor`, and a
/// password must never be printed or logged.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // A password may also sit in the query (`?password=`).
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        "***".to_string()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "postgres://(unparsable URL)".into(),
    }
}

/// TLS for `sslmode=prefer|require`, with the platform's trust store (as reqwest does).
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Pool(format!("TLS set-up: {e}")))?
        .with_platform_verifier()
        .map_err(|e| StoreError::Pool(format!("TLS set-up: {e}")))?
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// An error with its causes, as `/readyz` and the log should show it: the pool's "error
/// occurred while creating a new object: db error" says nothing until the server's own
/// message ("sorry, too many clients already") follows.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db?sslmode=…`) and applies the
    /// migrations the database lacks.
    ///
    /// # Errors
    /// A bad URL, an unreachable server, or a failed migration.
    pub(crate) async fn connect(
        url: &str,
        password: Option<&secrecy::SecretString>,
    ) -> Result<Self, StoreError> {
        use secrecy::ExposeSecret;
        let shown = redact_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Pool(format!(
                "store.url {shown} is not a PostgreSQL connection URL: {e}"
            ))
        })?;
        if config.get_password().is_none()
            && let Some(p) = password
        {
            config.password(p.expose_secret());
        }
        // `pg_stat_activity` then shows which process holds a session (and a frozen
        // worker's open transaction can be told from a live one's), unless the URL names one.
        if config.get_application_name().is_none() {
            config.application_name(format!("seedq/{}", std::process::id()));
        }
        let manager = Manager::from_config(
            config,
            tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    // A SET rather than the startup `options` parameter, which PgBouncer
                    // refuses unless told to ignore it.
                    let sql = format!(
                        "SET idle_in_transaction_session_timeout = {}",
                        IDLE_IN_TRANSACTION.as_millis()
                    );
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StoreError::Pool(format!("{shown}: {e}")))?;
        let pg = Self { pool, shown };
        migrate::apply(&pg).await?;
        Ok(pg)
    }

    /// The database, without its password.
    pub(crate) fn describe(&self) -> &str {
        &self.shown
    }

    /// A connection from the pool.
    ///
    /// # Errors
    /// [`StoreError::Pool`] when none comes within the pool's wait.
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(format!("{}: {}", self.shown, with_causes(&e))))
    }

    /// Runs `f` (a whole transaction) again while PostgreSQL aborts it for a deadlock or a
    /// serialisation failure; any other result is returned as is.
    ///
    /// # Errors
    /// Whatever `f` returns last.
    pub(crate) async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Err(StoreError::Postgres(e)) if attempt < RETRIES && retryable(&e) => {
                    attempt += 1;
                    // A little jitter, so the two sides of a deadlock do not meet again.
                    let ms = 2u64.pow(attempt.min(6)) + rand::random::<u64>() % 10;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                other => return other,
            }
        }
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// A job row read with [`super::JOB_COLUMNS`], in that order (the SQLite reader's twin).
///
/// # Errors
/// [`StoreError::Corrupt`] for a state or tags the code does not know; type errors.
pub(crate) fn job_from_pg(r: &Row) -> Result<Job, StoreError> {
    let state: String = r.try_get(3)?;
    let tags: String = r.try_get(9)?;
    Ok(Job {
        id: JobId::from(r.try_get::<_, String>(0)?),
        created_at: r.try_get(1)?,
        updated_at: r.try_get(2)?,
        state: state
            .parse()
            .map_err(|e: crate::job::UnknownState| StoreError::Corrupt(e.to_string()))?,
        model: r.try_get(4)?,
        service_tier: r.try_get(5)?,
        priority: r.try_get(6)?,
        request_json: r.try_get(7)?,
        idempotency_key: r.try_get(8)?,
        tags: serde_json::from_str(&tags).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        batch_id: r.try_get(10)?,
        shape: r.try_get(11)?,
        est_tokens: r.try_get(12)?,
        deadline_at: r.try_get(13)?,
        attempts: r.try_get(14)?,
        next_attempt_at: r.try_get(15)?,
        lease_owner: r.try_get(16)?,
        lease_until: r.try_get(17)?,
        lease_token: r.try_get(18)?,
        submit_started_at: r.try_get(19)?,
        submitted_at: r.try_get(20)?,
        remote_task_id: r.try_get(21)?,
        remote_status: r.try_get(22)?,
        remote_created_at: r.try_get(23)?,
        seed: r.try_get(24)?,
        poll_count: r.try_get(25)?,
        cancel_requested: r.try_get::<_, i64>(26)? != 0,
        callback_token: r.try_get(27)?,
        last_error_code: r.try_get(28)?,
        last_error_message: r.try_get(29)?,
        usage_tokens: r.try_get(30)?,
        video_url: r.try_get(31)?,
        last_frame_url: r.try_get(32)?,
        url_expires_at: r.try_get(33)?,
        finished_at: r.try_get(34)?,
        archive_key: r.try_get(35)?,
        archive_sha256: r.try_get(36)?,
        archive_size: r.try_get(37)?,
        archived_at: r.try_get(38)?,
        gen_ms: r.try_get(39)?,
    })
}

/// Rewrites SQLite's numbered parameters (`?1`) into PostgreSQL's (`$1`), for the few
/// shared SQL fragments (the in-flight predicate and friends) that both backends use.
#[allow(dead_code, reason = "the ports of the shared predicates use it")]
pub(crate) fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://seedq:hunter2@db.example:5432/seedq"),
            "postgres://seedq:***@db.example:5432/seedq"
        );
        let q = redact_url("postgres://db.example/seedq?user=a&password=hunter2&sslmode=require");
        assert!(!q.contains("hunter2"), "{q}");
        assert!(q.contains("sslmode=require"), "{q}");
        assert!(!redact_url("not a url at all hunter2").contains("hunter2"));
    }

    #[test]
    fn numbered_parameters_become_dollars() {
        assert_eq!(
            dollars("a = ?1 AND b LIKE ?12 || '/%' AND c = '?'"),
            "a = $1 AND b LIKE $12 || '/%' AND c = '?'"
        );
    }

    /// A worker frozen inside a transaction must not hold its row locks forever: every pooled
    /// session carries the server-side timeout that ends it.
    #[tokio::test]
    async fn every_pooled_session_ends_a_frozen_transaction() {
        let pg = PgStore::connect(&crate::testpg::fresh_database().await, None)
            .await
            .expect("connect");
        let conn = pg.conn().await.expect("a connection");
        let row = conn
            .query_one("SHOW idle_in_transaction_session_timeout", &[])
            .await
            .expect("show");
        assert_eq!(row.get::<_, String>(0), "1min");
        // And names its process, so a DBA (or a test) can tell whose transaction it is.
        let row = conn
            .query_one("SHOW application_name", &[])
            .await
            .expect("show");
        assert_eq!(
            row.get::<_, String>(0),
            format!("seedq/{}", std::process::id())
        );
    }
}
