//! Configuration: typed structs, layered loading and validation.
//!
//! Layers, last wins: built-in defaults, the TOML file, environment `SEEDQ__SECTION__KEY`,
//! then a few CLI flags (applied by `cli`). Loaded and validated once, in `cli`; nothing else
//! reads the environment. Secrets (the Ark API key, S3 keys) are `SecretString`s that never
//! print, and never come from the committed `config.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, CatalogueError};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub ark: ArkConfig,
    pub dispatch: DispatchConfig,
    pub poll: PollConfig,
    pub archive: ArchiveConfig,
    pub admin: AdminConfig,
    /// `[api]`: the front doors (Ark's task API and OpenAI's video API; docs/api.md).
    pub api: ApiConfig,
    pub callback: CallbackConfig,
    pub service: ServiceConfig,
    pub log: LogConfig,
    pub maintenance: MaintenanceConfig,
    pub bulk: crate::bulk::BulkConfig,
    /// `[budget]`: the daily spend cap.
    pub budget: BudgetConfig,
    /// `[models."<id>"]` overrides of the model catalogue.
    pub models: BTreeMap<String, toml::Value>,
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// `sqlite:///path/seedq.db` or `postgres://user@host:5432/db?sslmode=require`; when set
    /// it wins over `path`. A fleet of workers shares one PostgreSQL database.
    pub url: Option<String>,
    /// A file holding the PostgreSQL password (e.g. a systemd credential); `PGPASSWORD` wins
    /// when set. A password inside `url` works too, but config files are easy to leak.
    pub password_file: Option<PathBuf>,
    /// The password read from `PGPASSWORD`, `password_file` or the `store_password`
    /// credential; never serialised.
    #[serde(skip)]
    pub password: Option<SecretString>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_data_dir().join("seedq.db"),
            url: None,
            password_file: None,
            password: None,
        }
    }
}

impl StoreConfig {
    /// Where the jobs live: `url` when set, else the SQLite file at `path`.
    pub fn target(&self) -> crate::store::StoreTarget {
        use crate::store::StoreTarget;
        match self.url.as_deref().map(StoreTarget::parse) {
            Some(StoreTarget::Postgres { url, .. }) => StoreTarget::Postgres {
                url,
                password: self.password.clone(),
            },
            Some(t) => t,
            None => StoreTarget::Sqlite(self.path.clone()),
        }
    }
}

/// The state directory: `$STATE_DIRECTORY` under systemd, else `$XDG_DATA_HOME/seedq`, else
/// `~/.local/share/seedq`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several colon-separated directories; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("seedq");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/seedq"),
        None => PathBuf::from("/var/lib/seedq"),
    }
}

/// `[ark]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArkConfig {
    pub base_url: String,
    /// A file holding the API key (e.g. a systemd credential). `ARK_API_KEY` wins when set.
    pub api_key_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Tasks per list request when polling in batches (the API allows up to 500).
    pub list_page_size: u32,
    /// The account's list rate, calls per `rate_window` (docs/ark-api.md §14: 1 per second).
    pub list_qps: f64,
    /// The account's rate of GETs of one task (docs/ark-api.md §14: 20 per second).
    pub get_qps: f64,
    /// The account's DELETE rate (docs/ark-api.md §14: 20 per second).
    pub delete_qps: f64,
    /// The "second" of the three rates above; only shorten it to match a time-scaled
    /// simulator, as `dispatch.rpm_window`.
    #[serde(with = "humantime_serde")]
    pub rate_window: Duration,
    /// The API key, loaded from the environment or `api_key_file`; never serialised.
    #[serde(skip)]
    pub api_key: Option<SecretString>,
}

impl Default for ArkConfig {
    fn default() -> Self {
        Self {
            base_url: "https://ark.cn-beijing.volces.com/api/v3".into(),
            api_key_file: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            list_page_size: 100,
            list_qps: 1.0,
            get_qps: 20.0,
            delete_qps: 20.0,
            rate_window: Duration::from_secs(1),
            api_key: None,
        }
    }
}

/// What to do with a submit whose outcome stays unknown after the grace period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AmbiguousPolicy {
    /// Leave the job in `submit_unknown` for an operator.
    #[default]
    Park,
    /// Put it back in the queue (may pay twice if the task exists but was not found).
    Resubmit,
}

/// `[dispatch]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// How long a claim holds a job before another worker may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Attempts before a job is `dead`.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Pause of a model's creates after a 429 without `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub throttle_pause: Duration,
    pub on_ambiguous_submit: AmbiguousPolicy,
    /// How long reconciliation keeps trying to prove an ambiguous submit's outcome (a
    /// complete listing with no task of the job's identity is proof, and is resent at once).
    #[serde(with = "humantime_serde")]
    pub reconcile_grace: Duration,
    /// How often reconciliation runs while there is something to reconcile.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How often idle stages look for work another process (the CLI) added.
    #[serde(with = "humantime_serde")]
    pub idle_interval: Duration,
    /// Time zone offset in hours for the flex TPD day (Ark counts days in Beijing time).
    pub tpd_utc_offset_hours: i32,
    /// Concurrent create requests in flight.
    pub workers: u32,
    /// Ark's window over which `rpm` creates are allowed: 60 s against the real API; only
    /// shorten it to match a time-scaled simulator. seedq counts over this plus
    /// [`DispatchConfig::rpm_transit`].
    #[serde(with = "humantime_serde")]
    pub rpm_window: Duration,
}

impl DispatchConfig {
    /// How long after its claim a create may still leave: a thirtieth of the RPM window,
    /// between 200 ms and 2 s (2 s of Ark's minute). The store counts a create from its claim;
    /// Ark counts it when it arrives. A create that left later than this is not sent but
    /// claimed again (`worker/dispatch.rs`, `send_timing`), so the two clocks differ by at
    /// most this much plus the network.
    pub fn rpm_transit(&self) -> Duration {
        (self.rpm_window / 30).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    /// The window seedq counts creates over: Ark's window (`rpm_window`) plus the transit
    /// margin. Claims spaced by this arrive at least `rpm_window` apart, however late within
    /// its margin each create left.
    pub fn rpm_count_window(&self) -> Duration {
        self.rpm_window + self.rpm_transit()
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(120),
            max_attempts: 5,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            throttle_pause: Duration::from_secs(10),
            on_ambiguous_submit: AmbiguousPolicy::Park,
            reconcile_grace: Duration::from_secs(600),
            reconcile_interval: Duration::from_secs(15),
            idle_interval: Duration::from_secs(5),
            tpd_utc_offset_hours: 8,
            workers: 8,
            rpm_window: Duration::from_secs(60),
        }
    }
}

/// `[poll]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// First poll after submit when there is no history for the model and shape.
    #[serde(with = "humantime_serde")]
    pub first_poll_after: Duration,
    /// The same for flex tasks, which wait in a slower queue.
    #[serde(with = "humantime_serde")]
    pub flex_first_poll_after: Duration,
    /// Smallest wait between polls of one task.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Largest wait between polls of one task.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub flex_max_interval: Duration,
    /// The first poll comes at this fraction of the expected generation time (learned from
    /// recent completions; see `poll.rs`).
    pub first_poll_fraction: f64,
    /// Transient remote failures (`InternalServiceError`…) retried before `dead`.
    pub max_remote_retries: u32,
    /// With callbacks configured, the safety-net poll interval.
    #[serde(with = "humantime_serde")]
    pub callback_safety_interval: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            first_poll_after: Duration::from_secs(60),
            flex_first_poll_after: Duration::from_secs(600),
            min_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(60),
            flex_max_interval: Duration::from_secs(600),
            first_poll_fraction: 1.0,
            max_remote_retries: 2,
            callback_safety_interval: Duration::from_secs(300),
        }
    }
}

/// `[archive]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `file:///…`, `s3://bucket/prefix`, `memory://`; empty disables archiving.
    pub url: String,
    /// Object key template: `{date}`, `{model}`, `{job_id}`, `{task_id}`, `{batch}`, `{tag}`.
    pub key_template: String,
    /// DELETE the remote task record after a successful archive.
    pub delete_remote: bool,
    /// Parallel archive uploads.
    pub workers: u32,
    /// Hosts (`host` or `host:port`) result downloads may use although they are private or
    /// plain http. Otherwise only public `https` URLs are downloaded, redirects included
    ///, except the origin of a loopback `ark.base_url` (the simulator).
    pub download_allow: Vec<String>,
    pub s3: S3Config,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            url: format!("file://{}", default_data_dir().join("archive").display()),
            key_template: "{date}/{model}/{job_id}.mp4".into(),
            delete_remote: false,
            workers: 4,
            download_allow: Vec::new(),
            s3: S3Config::default(),
        }
    }
}

/// `[archive.s3]`. Keys come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, never here.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    pub path_style: bool,
    #[serde(skip)]
    pub access_key_id: Option<SecretString>,
    #[serde(skip)]
    pub secret_access_key: Option<SecretString>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// `[admin]`: health and metrics HTTP.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Empty disables the admin server.
    pub listen: String,
    /// `/readyz` fails when no Ark call has succeeded for this long and a probe fails too.
    #[serde(with = "humantime_serde")]
    pub ark_stale_after: Duration,
    /// The admin and callback servers close a connection that sends or takes no byte for this
    /// long (a half-sent request included): hyper has no header or read timeout by default.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Connections each of the admin and callback servers holds at once, at most: the cap in
    /// force is lowered to what the descriptor limit allows (`stage::fds`). At the cap, the
    /// oldest connection with no request in a handler is closed to let a new one in.
    pub max_connections: u32,
    /// Turns on the dashboard's actions (cancel, retry): a POST must carry it in the
    /// `X-Seedq-Token` header. Unset or empty: the dashboard is read-only. A secret: read from
    /// the file or `SEEDQ__ADMIN__TOKEN`, never written back out.
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
    /// The most bytes the dashboard sends in answer to one HTTP range request (a video seek):
    /// bounds the memory of one request and what one request makes the object store read.
    pub ui_max_range: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9187".into(),
            ark_stale_after: Duration::from_secs(300),
            read_timeout: Duration::from_secs(10),
            max_connections: 256,
            token: None,
            ui_max_range: 4 * 1024 * 1024,
        }
    }
}

/// `[api]`: the listener of the front doors (`crate::api`). Off unless `listen` is set.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the doors listen (`127.0.0.1:9190`); empty disables them.
    pub listen: String,
    /// The base URL clients reach the listener at, for the file URLs in task answers
    /// (`https://seedq.example.com`); empty: taken from each request's `Host` header.
    pub public_url: String,
    /// The largest request body taken, in bytes (a create embeds its images).
    pub max_body: u64,
    /// How long a signed file URL (`content.video_url`) stays valid.
    #[serde(with = "humantime_serde")]
    pub url_ttl: Duration,
    /// The wait after a webhook's first failed attempt; doubled for each further one.
    #[serde(with = "humantime_serde")]
    pub webhook_min_backoff: Duration,
    /// A webhook not delivered by this age is given up.
    #[serde(with = "humantime_serde")]
    pub webhook_max_age: Duration,
    /// A file holding the signing secret of the webhooks of jobs created with the admin
    /// token (`whsec_<base64>`, e.g. a systemd credential; the credential `api_webhook_secret`
    /// when unset). Jobs created with a key are signed with the key's own secret.
    pub webhook_secret_file: Option<PathBuf>,
    /// The secret read from `webhook_secret_file`; never serialised.
    #[serde(skip)]
    pub webhook_secret: Option<SecretString>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            public_url: String::new(),
            // Ark's own request limit (docs/ark-api.md §8: "Whole request body ≤ 64 MB").
            max_body: 64 * 1024 * 1024,
            url_ttl: Duration::from_secs(24 * 3600),
            webhook_min_backoff: Duration::from_secs(5),
            webhook_max_age: Duration::from_secs(24 * 3600),
            webhook_secret_file: None,
            webhook_secret: None,
        }
    }
}

/// `[callback]`: Ark's status callbacks.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackConfig {
    /// The public URL Ark can reach, e.g. `https://seedq.example.com/callback`. Empty: off.
    pub public_url: String,
    /// Where the callback server listens (behind your reverse proxy).
    pub listen: String,
}

/// `[service]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// How long SIGTERM waits for in-flight steps before aborting them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often this worker heartbeats in the worker registry and renews its singletons.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A worker whose heartbeat is older than this is dead: another releases its leases.
    #[serde(with = "humantime_serde")]
    pub worker_timeout: Duration,
    /// How long a singleton's leader holds it without renewing (a dead leader's successor
    /// takes over after at most this long).
    #[serde(with = "humantime_serde")]
    pub leader_ttl: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(1),
            worker_timeout: Duration::from_secs(10),
            leader_ttl: Duration::from_secs(5),
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// An `EnvFilter` directive; `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "seedq=info".into(),
            format: "text".into(),
        }
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{key} = {value:?} is invalid: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("cannot read the API key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what} {path}")]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Models(#[from] CatalogueError),
}

/// Where the config file was found, if anywhere.
pub fn discover(explicit: Option<&Path>) -> Option<PathBuf> {
    discover_why(explicit).map(|(p, _)| p)
}

/// [`discover`], with how the file was found (`--config`, `SEEDQ_CONFIG`, …).
pub fn discover_why(explicit: Option<&Path>) -> Option<(PathBuf, &'static str)> {
    if let Some(p) = explicit {
        return Some((p.to_path_buf(), "--config"));
    }
    if let Some(p) = std::env::var_os("SEEDQ_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), "SEEDQ_CONFIG"));
    }
    [
        ("/etc/seedq/config.toml", "the system default"),
        ("config.toml", "found in the working directory"),
    ]
    .iter()
    .map(|(p, why)| (PathBuf::from(p), *why))
    .find(|(p, _)| p.is_file())
}

/// Which configuration file is in use, for the start log, `config show` and `doctor`: its
/// absolute path and how it was found. A `./config.toml` is picked up from whatever directory
/// seedq runs in, so saying which one was read matters.
pub fn describe_source(found: Option<&(PathBuf, &'static str)>) -> String {
    match found {
        None => "no config file (built-in defaults and SEEDQ__* environment variables)".into(),
        Some((p, why)) => {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            format!("{} ({why})", abs.display())
        }
    }
}

/// Loads the file (if any) and the environment overrides, then reads the secrets.
///
/// # Errors
/// Unreadable or invalid file, a bad environment override, an unreadable key file.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut doc = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?
        }
        None => toml::Table::new(),
    };
    apply_env(&mut doc, std::env::vars())?;
    let mut cfg: Config = toml::Value::Table(doc)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.map_or_else(|| PathBuf::from("(environment)"), Path::to_path_buf),
            message: e.to_string(),
        })?;
    load_secrets(&mut cfg)?;
    Ok(cfg)
}

/// Applies `SEEDQ__SECTION__KEY=value` overrides. Values parse as TOML scalars when they can
/// (`5`, `true`), else as strings.
fn apply_env(
    doc: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("SEEDQ__") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty key segment".into(),
            });
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let mut table = &mut *doc;
        for seg in &path[..path.len() - 1] {
            let entry = table
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        message: format!("{seg} is not a section"),
                    });
                }
            };
        }
        if let Some(last) = path.last() {
            table.insert(last.clone(), parsed);
        }
    }
    Ok(())
}

fn load_secrets(cfg: &mut Config) -> Result<(), ConfigError> {
    let env_key = std::env::var("ARK_API_KEY").ok().filter(|k| !k.is_empty());
    // A systemd credential (LoadCredential=ark_api_key:…) when no file is configured.
    let cred = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| PathBuf::from(d).join("ark_api_key"))
        .filter(|p| p.is_file());
    cfg.ark.api_key = match (env_key, cfg.ark.api_key_file.clone().or(cred)) {
        (Some(k), _) => Some(SecretString::from(k)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::KeyFile { path, source })?;
            Some(SecretString::from(text.trim().to_string()))
        }
        (None, None) => None,
    };
    let secret = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
    };
    cfg.store.password = match (
        secret("PGPASSWORD"),
        cfg.store.password_file.clone().or_else(|| {
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join("store_password"))
                .filter(|p| p.is_file())
        }),
    ) {
        (Some(p), _) => Some(p),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::KeyFile { path, source })?;
            Some(SecretString::from(
                text.trim_end_matches(['\n', '\r']).to_string(),
            ))
        }
        (None, None) => None,
    };
    cfg.archive.s3.access_key_id = secret("AWS_ACCESS_KEY_ID");
    cfg.archive.s3.secret_access_key = secret("AWS_SECRET_ACCESS_KEY");
    cfg.api.webhook_secret =
        load_webhook_secret(cfg.api.webhook_secret_file.clone().or_else(|| {
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join("api_webhook_secret"))
                .filter(|p| p.is_file())
        }))?;
    Ok(())
}

/// The admin token's webhook signing secret from `path`: `whsec_` and the base64 of at least
/// 24 bytes, the form Standard Webhooks receivers' libraries decode (as `seedq keys create`
/// makes a key's). The file's text is never shown in an error.
fn load_webhook_secret(path: Option<PathBuf>) -> Result<Option<SecretString>, ConfigError> {
    use base64::Engine as _;
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
        what: "the webhook secret file (api.webhook_secret_file)",
        path: path.clone(),
        source,
    })?;
    let text = text.trim();
    let long_enough = text
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|raw| raw.len() >= 24);
    if !long_enough {
        return Err(ConfigError::Invalid {
            key: "api.webhook_secret_file",
            value: path.display().to_string(),
            allowed: "a file holding `whsec_` and the base64 of at least 24 random bytes \
                      (e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`); its text is not shown"
                .into(),
        });
    }
    Ok(Some(SecretString::from(text.to_string())))
}

impl Config {
    /// Checks cross-field rules and builds the model catalogue.
    ///
    /// # Errors
    /// The first rule broken, naming the key.
    pub fn validate(&self) -> Result<Catalogue, ConfigError> {
        if let Some(u) = &self.store.url {
            let ok = match crate::store::StoreTarget::parse(u) {
                crate::store::StoreTarget::Postgres { url, .. } => {
                    url.parse::<tokio_postgres::Config>().is_ok()
                }
                crate::store::StoreTarget::Sqlite(p) => {
                    u.starts_with("sqlite://") && !p.as_os_str().is_empty()
                }
            };
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "store.url",
                    value: crate::store::redact_url(u),
                    allowed: "sqlite:///path/to/seedq.db or postgres://user@host:5432/database"
                        .into(),
                });
            }
        }
        let url = url::Url::parse(&self.ark.base_url);
        if !url.is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            return Err(ConfigError::Invalid {
                key: "ark.base_url",
                value: self.ark.base_url.clone(),
                allowed: "an http(s) URL such as https://ark.cn-beijing.volces.com/api/v3".into(),
            });
        }
        if self.ark.request_timeout >= self.service.shutdown_grace {
            return Err(ConfigError::Invalid {
                key: "service.shutdown_grace",
                value: humantime::format_duration(self.service.shutdown_grace).to_string(),
                // Says what the value must be: "is invalid: longer than …" read as if the
                // value were too long.
                allowed: format!(
                    "it must be longer than ark.request_timeout ({}), so in-flight requests can finish",
                    humantime::format_duration(self.ark.request_timeout)
                ),
            });
        }
        // A worker must beat several times within the timeouts others judge it by.
        for (key, d) in [
            ("service.worker_timeout", self.service.worker_timeout),
            ("service.leader_ttl", self.service.leader_ttl),
        ] {
            if d < self.service.heartbeat_interval * 2 {
                return Err(ConfigError::Invalid {
                    key,
                    value: humantime::format_duration(d).to_string(),
                    allowed: format!(
                        "at least twice service.heartbeat_interval ({})",
                        humantime::format_duration(self.service.heartbeat_interval)
                    ),
                });
            }
        }
        if self.dispatch.lease <= self.ark.request_timeout {
            return Err(ConfigError::Invalid {
                key: "dispatch.lease",
                value: humantime::format_duration(self.dispatch.lease).to_string(),
                allowed: format!(
                    "it must be longer than ark.request_timeout ({}), so a lease outlives the request it covers",
                    humantime::format_duration(self.ark.request_timeout)
                ),
            });
        }
        if self.dispatch.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                key: "dispatch.max_attempts",
                value: "0".into(),
                allowed: "at least 1".into(),
            });
        }
        if !(1..=500).contains(&self.ark.list_page_size) {
            return Err(ConfigError::Invalid {
                key: "ark.list_page_size",
                value: self.ark.list_page_size.to_string(),
                allowed: "1..=500 (the API's page_size range)".into(),
            });
        }
        for (key, q) in [
            ("ark.list_qps", self.ark.list_qps),
            ("ark.get_qps", self.ark.get_qps),
            ("ark.delete_qps", self.ark.delete_qps),
        ] {
            if !(q.is_finite() && q > 0.0) {
                return Err(ConfigError::Invalid {
                    key,
                    value: q.to_string(),
                    allowed: "a number > 0 (calls per ark.rate_window; docs/ark-api.md §14)".into(),
                });
            }
        }
        if self.ark.rate_window.is_zero() {
            return Err(ConfigError::Invalid {
                key: "ark.rate_window",
                value: "0s".into(),
                allowed: "a duration > 0 (1s against Ark)".into(),
            });
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log.format",
                value: self.log.format.clone(),
                allowed: "text or json".into(),
            });
        }
        if !self.archive.url.is_empty() {
            let ok = url::Url::parse(&self.archive.url).is_ok_and(|u| {
                matches!(u.scheme(), "file" | "s3" | "memory" | "gs" | "az" | "abfs")
            });
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "archive.url",
                    value: self.archive.url.clone(),
                    allowed:
                        "file:///path, s3://bucket/prefix, memory://, gs://bucket or az://container"
                            .into(),
                });
            }
        }
        if !self.callback.public_url.is_empty() {
            let ok = url::Url::parse(&self.callback.public_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "callback.public_url",
                    value: self.callback.public_url.clone(),
                    allowed: "an http(s) URL that Ark can reach".into(),
                });
            }
        }
        self.maintenance.validate()?;
        if let Some(v) = self.budget.daily_cny {
            fen_of_cny(v).map_err(|allowed| ConfigError::Invalid {
                key: "budget.daily_cny",
                value: v.to_string(),
                allowed,
            })?;
        }
        let models = self
            .models
            .iter()
            .map(|(k, v)| {
                let json = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
                (k.clone(), json)
            })
            .collect();
        let catalogue = Catalogue::with_overrides(&models)?;
        for (id, spec) in catalogue.iter() {
            if let Some(v) = spec.daily_cny
                && fen_of_cny(v).is_err()
            {
                return Err(ConfigError::Invalid {
                    key: "models.<id>.daily_cny",
                    value: format!("{id}: {v}"),
                    allowed: fen_of_cny(-1.0).err().unwrap_or_default(),
                });
            }
        }
        Ok(catalogue)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        // A password inside store.url is a secret like the others.
        let mut shown = self.clone();
        shown.store.url = shown.store.url.as_deref().map(crate::store::redact_url);
        let mut text = toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# {e}\n"));
        let mark = |s: &Option<SecretString>| {
            if s.as_ref().is_some_and(|k| !k.expose_secret().is_empty()) {
                "\"[redacted]\""
            } else {
                "(unset)"
            }
        };
        text.push_str(&format!(
            "\n# secrets (from the environment or key files, never from config.toml)\n\
             # ark api key: {}\n# s3 access key id: {}\n# s3 secret access key: {}\n\
             # admin token: {}\n# store password: {}\n# api webhook secret: {}\n",
            mark(&self.ark.api_key),
            mark(&self.archive.s3.access_key_id),
            mark(&self.archive.s3.secret_access_key),
            mark(&self.admin.token),
            mark(&self.store.password),
            mark(&self.api.webhook_secret),
        ));
        text
    }
}

/// `[budget]`: spend caps that hold across processes (see `worker::budget`). [live]
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// CNY all models may spend per day (the day in `maintenance.timezone`); none: no cap.
    pub daily_cny: Option<f64>,
}

/// An amount in CNY as integer fen: finite, not negative, at most two decimals. TOML gives
/// the number as a float; money is exact from here on.
///
/// # Errors
/// What is allowed, for the caller's error message.
pub fn fen_of_cny(cny: f64) -> Result<i64, String> {
    let allowed =
        || "a CNY amount ≥ 0 with at most two decimals (fen), e.g. 500 or 12.5".to_string();
    if !cny.is_finite() || !(0.0..=1e15).contains(&cny) {
        return Err(allowed());
    }
    let fen = (cny * 100.0).round();
    if ((cny * 100.0) - fen).abs() > 1e-6 {
        return Err(allowed());
    }
    // In range (checked above), so the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    Ok(fen as i64)
}

/// `[maintenance]`: scheduled upkeep (see `ops::maintenance`). Schedules are 6-field cron
/// expressions (`sec min hour day-of-month month day-of-week`) in `timezone`; empty disables one.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// IANA zone of the schedules and the flex window (Ark counts days in Beijing time).
    pub timezone: String,
    /// When to prune old terminal jobs and their events (archive objects stay).
    pub prune: String,
    /// Archived jobs (and succeeded ones while archiving is off) are kept this long.
    #[serde(with = "humantime_serde")]
    pub retain_archived: Duration,
    /// Failed, dead, expired and cancelled jobs are kept this long.
    #[serde(with = "humantime_serde")]
    pub retain_failed: Duration,
    /// When to recover interrupted submits and release expired leases.
    pub sweep: String,
    /// When to run `PRAGMA optimize` and checkpoint the WAL.
    pub db_upkeep: String,
    /// When to copy the database with SQLite's online backup; empty (the default) is off.
    pub backup: String,
    /// A directory for backups. Default: `backups/` in the archive's object store, or beside
    /// the database when archiving is off.
    pub backup_dir: Option<PathBuf>,
    /// Backups kept; older ones are deleted.
    pub backup_keep: u32,
    /// Flex jobs are submitted only inside this daily window, e.g. `"00:00-08:00"` (may wrap
    /// midnight; seconds optional). Empty: any time.
    pub flex_window: String,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            timezone: "Asia/Shanghai".into(),
            prune: "0 30 3 * * *".into(),
            retain_archived: Duration::from_secs(30 * 86_400),
            retain_failed: Duration::from_secs(90 * 86_400),
            sweep: "0 */5 * * * *".into(),
            db_upkeep: "0 15 * * * *".into(),
            backup: String::new(),
            backup_dir: None,
            backup_keep: 7,
            flex_window: String::new(),
        }
    }
}

impl MaintenanceConfig {
    /// Checks the zone, the schedules and the window.
    ///
    /// # Errors
    /// The first invalid key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::schedule;
        schedule::parse_tz(&self.timezone).map_err(|allowed| ConfigError::Invalid {
            key: "maintenance.timezone",
            value: self.timezone.clone(),
            allowed,
        })?;
        for (key, value) in [
            ("maintenance.prune", &self.prune),
            ("maintenance.sweep", &self.sweep),
            ("maintenance.db_upkeep", &self.db_upkeep),
            ("maintenance.backup", &self.backup),
        ] {
            schedule::parse_cron(value).map_err(|allowed| ConfigError::Invalid {
                key,
                value: value.clone(),
                allowed,
            })?;
        }
        schedule::FlexWindow::parse(&self.flex_window).map_err(|allowed| ConfigError::Invalid {
            key: "maintenance.flex_window",
            value: self.flex_window.clone(),
            allowed,
        })?;
        for (key, d) in [
            ("maintenance.retain_archived", self.retain_archived),
            ("maintenance.retain_failed", self.retain_failed),
        ] {
            if d < Duration::from_secs(1) {
                return Err(ConfigError::Invalid {
                    key,
                    value: humantime::format_duration(d).to_string(),
                    allowed: "at least 1s".into(),
                });
            }
        }
        if self.backup_keep == 0 {
            return Err(ConfigError::Invalid {
                key: "maintenance.backup_keep",
                value: "0".into(),
                allowed: "at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_nest_and_parse_scalars() {
        let mut doc: toml::Table = "[dispatch]\nmax_attempts = 3\n".parse().expect("toml");
        let vars = vec![
            ("SEEDQ__DISPATCH__MAX_ATTEMPTS".to_string(), "7".to_string()),
            (
                "SEEDQ__ARK__BASE_URL".to_string(),
                "http://127.0.0.1:1/api/v3".to_string(),
            ),
            (
                "SEEDQ__ARCHIVE__S3__ALLOW_HTTP".to_string(),
                "true".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        apply_env(&mut doc, vars.into_iter()).expect("apply");
        let cfg: Config = toml::Value::Table(doc).try_into().expect("config");
        assert_eq!(cfg.dispatch.max_attempts, 7);
        assert_eq!(cfg.ark.base_url, "http://127.0.0.1:1/api/v3");
        assert!(cfg.archive.s3.allow_http);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let doc: toml::Table = "[poll]\nfirst_pol_after = \"5s\"\n".parse().expect("toml");
        let err = toml::Value::Table(doc)
            .try_into::<Config>()
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("first_pol_after")));
    }

    #[test]
    fn fleet_timeouts_must_outlast_two_heartbeats() {
        assert!(Config::default().validate().is_ok(), "the defaults hold");
        let mut cfg = Config::default();
        cfg.service.heartbeat_interval = Duration::from_secs(6);
        let e = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        // The default 10 s worker timeout is under two 6 s heartbeats.
        assert!(e.contains("service.worker_timeout"), "{e}");
        assert!(e.contains("heartbeat_interval (6s)"), "{e}");
        let mut cfg = Config::default();
        cfg.service.leader_ttl = Duration::from_millis(1500);
        let e = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("service.leader_ttl") && e.contains("1s 500ms"),
            "{e}"
        );
    }

    #[test]
    fn validate_names_the_key() {
        let mut cfg = Config::default();
        cfg.service.shutdown_grace = Duration::from_secs(1);
        let e = cfg.validate().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("service.shutdown_grace")));
        let mut cfg = Config::default();
        cfg.dispatch.lease = Duration::from_secs(5);
        let e = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("dispatch.lease = \"5s\"")
                && e.contains("it must be longer than ark.request_timeout (30s)"),
            "{e}"
        );
        let mut cfg = Config::default();
        cfg.service.shutdown_grace = Duration::from_secs(5);
        let e = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("it must be longer than ark.request_timeout (30s)"),
            "{e}"
        );
        let mut cfg = Config::default();
        cfg.archive.url = "ftp://x".into();
        let e = cfg.validate().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("archive.url") && e.contains("ftp://x")));
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn secrets_never_serialise() {
        let mut cfg = Config::default();
        cfg.ark.api_key = Some(SecretString::from("sk-very-secret".to_string()));
        let shown = cfg.redacted_toml();
        assert!(!shown.contains("sk-very-secret"));
        assert!(shown.contains("[redacted]"));
        assert!(!format!("{cfg:?}").contains("sk-very-secret"));
    }

    /// The admin token's webhook secret file: `whsec_` and 24+ bytes of base64, or a refusal
    /// naming the setting and the file, never the text.
    #[test]
    fn the_webhook_secret_file_is_checked_and_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        for bad in [
            "hunter2-not-a-secret",
            "whsec_aHVudGVyMg==",
            "whsec_!!hunter2!!",
        ] {
            std::fs::write(&path, bad).expect("write");
            let e = load_webhook_secret(Some(path.clone()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("api.webhook_secret_file")
                    && e.contains(&path.display().to_string())
                    && !e.contains("hunter2")
                    && !e.contains("aHVudGVyMg"),
                "{bad}: {e}"
            );
        }
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        std::fs::write(&path, format!("{good}\n")).expect("write");
        let mut cfg = Config::default();
        cfg.api.webhook_secret = load_webhook_secret(Some(path.clone())).expect("a good secret");
        assert_eq!(
            cfg.api.webhook_secret.as_ref().map(|s| s.expose_secret()),
            Some(good)
        );
        assert!(!cfg.redacted_toml().contains("MfKQ9r8G"));
        assert!(!format!("{cfg:?}").contains("MfKQ9r8G"));
        let missing = load_webhook_secret(Some(dir.path().join("nope")));
        assert!(
            missing
                .err()
                .is_some_and(|e| e.to_string().contains("api.webhook_secret_file")),
        );
        assert!(load_webhook_secret(None).expect("unset").is_none());
    }

    /// The dashboard's token is read from the file but never written back or shown.
    #[test]
    fn the_admin_token_is_read_but_never_shown() {
        let cfg: Config = toml::from_str("[admin]\ntoken = \"tok-very-secret\"\n").expect("parses");
        assert_eq!(
            cfg.admin
                .token
                .as_ref()
                .map(|t| t.expose_secret().to_string()),
            Some("tok-very-secret".to_string())
        );
        let shown = cfg.redacted_toml();
        assert!(!shown.contains("tok-very-secret"), "{shown}");
        assert!(shown.contains("admin token: \"[redacted]\""), "{shown}");
        assert!(!format!("{cfg:?}").contains("tok-very-secret"));
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    /// The committed `config.toml` documents every key, and its values are the defaults.
    #[test]
    fn the_sample_config_matches_the_defaults() {
        let text = include_str!("../config.toml");
        let sample: Config = toml::from_str(text).expect("config.toml parses");
        let mut expected = Config::default();
        // Paths depend on the environment; the sample leaves them commented out.
        expected.store.path = sample.store.path.clone();
        expected.archive.url = sample.archive.url.clone();
        assert_eq!(
            toml::to_string(&sample).expect("ser"),
            toml::to_string(&expected).expect("ser"),
            "config.toml's values drifted from the defaults"
        );
        let defaults = toml::to_string(&Config::default()).expect("ser");
        for line in defaults.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    text.contains(&format!("{key} =")),
                    "config.toml does not document `{key}`"
                );
            }
        }
    }
}
