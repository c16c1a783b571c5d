//! `seedq doctor`: checks an installation and says how to fix what is wrong.
//!
//! One line per check, `ok`, `skip` or `FAIL`; a failure is followed by a `fix:` line with a
//! concrete action. Checks: the configuration, the database (present or creatable, writable,
//! migrated, `PRAGMA integrity_check`), the API key (present, and accepted by one cheap
//! authenticated list call), the object store (put, get and delete of a probe object), and the
//! clock against Ark's. Exit 0 when nothing failed, 2 otherwise. It changes nothing: no
//! migration, no job, no object left behind (a `file://` archive directory is created, as the
//! service would). Secrets are never printed, only where they came from.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::ConfigSource;
use crate::ark::{ArkClient, ArkError, ErrorClass, ListQuery};
use crate::config::Config;
use crate::store::migrate;

/// Skew beyond which reconciliation's time window (±5 s around the POST) gets unreliable.
const MAX_SKEW_S: i64 = 5;
/// How long doctor waits for a busy database lock before calling it not writable.
const DB_BUSY: Duration = Duration::from_secs(5);
/// Timeout for each network check.
const NET_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the store probe goes (deleted again at once).
const PROBE_DIR: &str = "seedq-doctor";

/// `seedq doctor`.
#[derive(Debug, Default, Args)]
pub struct DoctorArgs {
    /// Skip the checks that call Ark (the key and the clock).
    #[arg(long)]
    pub offline: bool,
}

/// The result of one check.
enum Verdict {
    Ok(String),
    /// Works, but not as the user probably wants; does not fail the run.
    Warn {
        problem: String,
        fix: String,
    },
    Skip(String),
    Fail {
        problem: String,
        fix: String,
    },
}

fn fail(problem: impl Into<String>, fix: impl Into<String>) -> Verdict {
    Verdict::Fail {
        problem: problem.into(),
        fix: fix.into(),
    }
}

struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, name: &str, v: Verdict) {
        match v {
            Verdict::Ok(d) => println!("ok    {name:<9} {d}"),
            Verdict::Skip(d) => println!("skip  {name:<9} {d}"),
            Verdict::Warn { problem, fix } => {
                println!("warn  {name:<9} {problem}\n      fix: {fix}");
            }
            Verdict::Fail { problem, fix } => {
                self.failed += 1;
                println!("FAIL  {name:<9} {problem}\n      fix: {fix}");
            }
        }
    }
}

pub(crate) fn run(source: ConfigSource, a: &DoctorArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init("seedq=warn", "text");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut r = Report { failed: 0 };
    let where_ = source.describe();
    let cfg = match source.load() {
        Ok((cfg, catalogue)) => {
            r.line(
                "config",
                Verdict::Ok(format!(
                    "{where_} ({} models known)",
                    catalogue.iter().count()
                )),
            );
            cfg
        }
        Err(e) => {
            r.line(
                "config",
                fail(
                    format!("{where_}: {e:#}"),
                    "correct the key named above (config.toml in the repository documents \
                     every key; `seedq config check` repeats this check)",
                ),
            );
            for name in ["database", "api key", "store", "servers", "clock"] {
                r.line(name, Verdict::Skip("needs a valid configuration".into()));
            }
            return Ok(ExitCode::from(2));
        }
    };
    let target = cfg.store.target();
    match &target {
        crate::store::StoreTarget::Sqlite(path) => r.line("database", database(path)),
        crate::store::StoreTarget::Postgres { .. } => {
            r.line("database", rt.block_on(postgres(&target)));
        }
    }
    if let Some(w) = fleet_archive(&cfg) {
        r.line("fleet", w);
    }
    let ark = cfg.ark.api_key.clone().map(|key| {
        ArkClient::new(
            &cfg.ark.base_url,
            key,
            cfg.ark.connect_timeout.min(NET_TIMEOUT),
            cfg.ark.request_timeout.min(NET_TIMEOUT),
        )
        .map(|c| c.with_read_retries(0))
    });
    let key = match (&ark, a.offline) {
        (_, true) => Verdict::Skip("--offline".into()),
        (None, false) => fail(
            "no API key",
            "set ARK_API_KEY (EnvironmentFile=/etc/seedq/env under systemd), \
             or ark.api_key_file, or LoadCredential=ark_api_key:/etc/seedq/ark_api_key",
        ),
        (Some(Err(e)), false) => fail(chain(e), "check ark.base_url"),
        (Some(Ok(c)), false) => rt.block_on(api_key(c, &cfg)),
    };
    r.line("api key", key);
    r.line("store", rt.block_on(store(&cfg)));
    r.line("servers", servers(&cfg));
    let clock = if a.offline {
        Verdict::Skip("--offline".into())
    } else {
        rt.block_on(clock(&cfg))
    };
    r.line("clock", clock);
    Ok(if r.failed == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{} check(s) failed", r.failed);
        ExitCode::from(2)
    })
}

/// What to tell someone whose database (or its directory) cannot be written.
fn write_fix(path: &Path, e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(30) {
        // EROFS: under systemd this is ProtectSystem=strict doing its job.
        format!(
            "{} is on a read-only file system: keep the database under StateDirectory \
             (/var/lib/seedq, the default under systemd) or allow the path with ReadWritePaths=",
            path.display()
        )
    } else {
        format!(
            "make {} writable by the user seedq runs as (chown it to that user; the unit's \
             StateDirectory=seedq does this for /var/lib/seedq), or run doctor as that user",
            path.display()
        )
    }
}

/// Creates and removes a probe file: the directory takes new files (SQLite's -wal and -shm).
fn dir_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".seedq-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// A PostgreSQL store: reachable, migrated (opening it migrates, as the service does).
async fn postgres(target: &crate::store::StoreTarget) -> Verdict {
    let shown = target.describe();
    match tokio::time::timeout(NET_TIMEOUT, crate::store::Store::open_target(target, false)).await {
        Err(_) => fail(
            format!("{shown}: no answer within {}s", NET_TIMEOUT.as_secs()),
            "check that the server is up and reachable from here (host, port, firewall)",
        ),
        Ok(Err(e)) => fail(
            format!("{shown}: {}", chain(&e)),
            "check store.url (user, host, database), the password (PGPASSWORD or \
             store.password_file) and that the database exists (createdb)",
        ),
        Ok(Ok(store)) => match store.schema_version().await {
            Ok(v) => Verdict::Ok(format!("{shown} (PostgreSQL, schema {v})")),
            Err(e) => fail(
                format!("{shown}: {}", chain(&e)),
                "check the database user's rights",
            ),
        },
    }
}

/// Several workers share a PostgreSQL store, and each would archive a `file://` URL to its
/// own disk: the dashboard and `seedq fetch` on another machine would not find the videos.
pub(crate) fn fleet_archive_problem(cfg: &Config) -> Option<String> {
    (cfg.store.target().is_postgres() && cfg.archive.url.starts_with("file://")).then(|| {
        format!(
            "the store is PostgreSQL (shared by a fleet) but archive.url is {}: every worker \
             would file videos on its own disk",
            cfg.archive.url
        )
    })
}

fn fleet_archive(cfg: &Config) -> Option<Verdict> {
    fleet_archive_problem(cfg).map(|problem| Verdict::Warn {
        problem,
        fix: "archive to a shared object store (s3://bucket/prefix or gs://bucket/prefix), \
              or run one worker only"
            .into(),
    })
}

fn database(path: &Path) -> Verdict {
    let shown = path.display();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !path.exists() {
        // Nearest existing ancestor: the service creates the rest.
        let mut probe = dir;
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        return match dir_writable(probe) {
            Ok(()) => Verdict::Ok(format!(
                "{shown} does not exist yet; seedq creates and migrates it on first use"
            )),
            Err(e) => fail(
                format!(
                    "{shown} does not exist and {} is not writable ({e})",
                    probe.display()
                ),
                write_fix(probe, &e),
            ),
        };
    }
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(path) {
        return fail(
            format!("{shown} is not writable ({e})"),
            write_fix(path, &e),
        );
    }
    if let Err(e) = dir_writable(dir) {
        return fail(
            format!(
                "{} (the database directory) is not writable ({e})",
                dir.display()
            ),
            write_fix(dir, &e),
        );
    }
    let found = match crate::store::ops::inspect(path, DB_BUSY) {
        Ok(f) => f,
        Err(e) => {
            return fail(
                format!("{shown} cannot be opened: {}", chain(&e)),
                "if it is not a seedq database, point store.path elsewhere; if it is damaged, \
                 stop the service and restore a backup (maintenance.backup)",
            );
        }
    };
    if let Err(e) = &found.writable {
        return fail(
            format!("{shown} refuses writes: {e}"),
            "stop whatever holds a long write lock (another seedq?), and check the file and \
             directory permissions and the mount",
        );
    }
    if found.integrity != ["ok"] {
        return fail(
            format!(
                "{shown} fails PRAGMA integrity_check: {}",
                found.integrity.join("; ")
            ),
            "stop the service, keep the damaged file aside, restore the newest backup \
             (maintenance.backup_dir) or run sqlite3's .recover into a new file",
        );
    }
    let latest = migrate::latest();
    if found.schema_version < latest {
        return fail(
            format!(
                "{shown} has schema version {}, this seedq expects {latest}",
                found.schema_version
            ),
            "run `seedq migrate` (the service also migrates at start)",
        );
    }
    if found.schema_version > latest {
        return fail(
            format!(
                "{shown} has schema version {}, newer than this seedq ({latest})",
                found.schema_version
            ),
            "install the seedq version that wrote it, or newer",
        );
    }
    Verdict::Ok(format!("{shown} (schema {latest}, integrity ok, writable)"))
}

fn key_origin(cfg: &Config) -> &'static str {
    if std::env::var_os("ARK_API_KEY").is_some() {
        "ARK_API_KEY"
    } else if cfg.ark.api_key_file.is_some() {
        "ark.api_key_file"
    } else {
        "the systemd credential ark_api_key"
    }
}

async fn api_key(client: &ArkClient, cfg: &Config) -> Verdict {
    let q = ListQuery {
        page_size: Some(1),
        ..Default::default()
    };
    let origin = key_origin(cfg);
    match tokio::time::timeout(NET_TIMEOUT, client.list(&q)).await {
        Ok(Ok(_)) => Verdict::Ok(format!(
            "from {origin}, accepted by {} (list, page_size=1)",
            cfg.ark.base_url
        )),
        Ok(Err(e)) => ark_failure(&e, origin, cfg),
        Err(_) => fail(
            format!(
                "{} did not answer within {}s",
                cfg.ark.base_url,
                NET_TIMEOUT.as_secs()
            ),
            "check the network path to ark.base_url (firewall, HTTPS_PROXY)",
        ),
    }
}

fn ark_failure(e: &ArkError, origin: &str, cfg: &Config) -> Verdict {
    match (e.status(), e.class()) {
        (Some(401 | 403), _) => fail(
            format!("the key from {origin} was rejected: {}", chain(e)),
            format!(
                "create or copy a valid key in the Ark console (API Key management) and put it \
                 in {origin}; the key must belong to the account of {}",
                cfg.ark.base_url
            ),
        ),
        (_, ErrorClass::NeverSent) => fail(
            chain(e),
            "check ark.base_url, DNS and the firewall (the unit allows AF_INET/AF_INET6)",
        ),
        (_, ErrorClass::Throttled(_)) => Verdict::Ok(format!(
            "from {origin}; Ark answered 429, so the key was accepted (the account is busy)"
        )),
        _ => fail(
            chain(e),
            "check ark.base_url points at the Ark API (…/api/v3) and retry",
        ),
    }
}

/// Puts, reads back and deletes a probe object in the archive store.
async fn store(cfg: &Config) -> Verdict {
    use crate::blob::{BlobStore, ObjectKey, redact_url};
    if cfg.archive.url.is_empty() {
        return Verdict::Ok("archiving is off (archive.url is empty)".into());
    }
    let shown = redact_url(&cfg.archive.url);
    let blob = match BlobStore::open(&cfg.archive.url, &cfg.archive.s3) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                format!("{shown}: {}", chain(&e)),
                "correct archive.url (file:///dir, s3://bucket/prefix, …) and [archive.s3]",
            );
        }
    };
    let probe = format!(
        "{PROBE_DIR}/probe-{}-{}",
        std::process::id(),
        crate::store::now_ms()
    );
    let Ok(key) = ObjectKey::parse(&probe) else {
        return Verdict::Skip(format!("{shown}: cannot name a probe object"));
    };
    let body = bytes::Bytes::from(format!("seedq doctor probe {probe}\n"));
    let round_trip = async {
        let put = blob.put_bytes(&key, body.clone(), "text/plain").await?;
        let got = blob.digest(&key).await?;
        blob.delete(&key).await?;
        Ok::<_, crate::blob::BlobError>((put, got))
    };
    let fix_for = |e: &crate::blob::BlobError| {
        if e.is_denied() {
            "give the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) write, read and \
             delete rights on the bucket and prefix"
        } else {
            "check that the store is up and reachable: [archive.s3] endpoint, allow_http, \
             path_style and region, the network, or the directory's permissions for file://"
        }
    };
    match tokio::time::timeout(NET_TIMEOUT, round_trip).await {
        Ok(Ok((put, Some(got)))) if got == put => {
            Verdict::Ok(format!("{shown}: put, get and delete of a probe object"))
        }
        Ok(Ok((_, got))) => fail(
            format!("{shown}: the probe object read back differently ({got:?})"),
            "check that nothing else rewrites objects under the prefix",
        ),
        Ok(Err(e)) => fail(format!("{shown}: {}", chain(&e)), fix_for(&e)),
        Err(_) => fail(
            format!("{shown}: no answer within {}s", NET_TIMEOUT.as_secs()),
            "check that the store is up and reachable: [archive.s3] endpoint and the network",
        ),
    }
}

/// Compares the local clock with the `Date` header of any answer from Ark's host.
async fn clock(cfg: &Config) -> Verdict {
    let client = match reqwest::Client::builder().timeout(NET_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return Verdict::Skip(format!("no HTTP client: {e}")),
    };
    let before = time::OffsetDateTime::now_utc();
    let resp = match client.head(&cfg.ark.base_url).send().await {
        Ok(r) => r,
        Err(e) => {
            return Verdict::Skip(format!(
                "cannot reach {} to compare clocks ({e})",
                cfg.ark.base_url
            ));
        }
    };
    let after = time::OffsetDateTime::now_utc();
    let Some(server) = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
    else {
        return Verdict::Skip("Ark's answer carried no Date header".into());
    };
    let local: time::OffsetDateTime = before + (after - before) / 2;
    let skew: i64 = (local - server).whole_seconds();
    // The Date header has one-second resolution: allow for it.
    if skew.abs() <= MAX_SKEW_S {
        // The signed value, so an operator sees the skew reconciliation corrects for.
        Verdict::Ok(format!(
            "within {}s of Ark's clock (skew: local minus Ark {skew:+}s)",
            skew.abs().max(1)
        ))
    } else {
        fail(
            format!(
                "the local clock is {}s {} Ark's",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "turn on time sync (`timedatectl set-ntp true`, systemd-timesyncd or chrony); \
             reconciliation shifts its windows by the skew it measures, but TPD days and \
             deadlines follow the local clock",
        )
    }
}

/// An error and its causes, `: `-separated (the `{:#}` of anyhow, for a plain error).
/// The admin and callback servers' connection cap, derived from the descriptor limit (which
/// `seedq doctor` raised to the hard limit, as `serve` does).
fn servers(cfg: &Config) -> Verdict {
    let b = crate::stage::fds::Budget::now(cfg);
    if b.starved {
        return Verdict::Warn {
            problem: format!(
                "{}; the limit leaves less than a few connections per server",
                b.describe()
            ),
            fix: "raise the descriptor limit: LimitNOFILE= in the systemd unit, or `ulimit -n`"
                .into(),
        };
    }
    Verdict::Ok(b.describe())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        // Some sources repeat their cause in their own message; say each thing once.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

fn parse_http_date(s: &str) -> Option<time::OffsetDateTime> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), &fmt)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Wed, 25 Nov 2026 09:12:59 GMT").expect("date");
        assert_eq!(t.unix_timestamp(), 1_795_597_979);
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn a_missing_database_in_a_writable_place_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = database(&dir.path().join("sub/dir/seedq.db"));
        assert!(matches!(v, Verdict::Ok(_)));
    }
}
