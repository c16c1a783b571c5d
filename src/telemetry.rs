//! Tracing setup, once per process, and the live log level.
//!
//! `RUST_LOG` wins over `log.level`. Under systemd (`JOURNAL_STREAM` set) lines carry no ANSI
//! colours and no timestamps, since journald adds its own. Logs go to stderr so that command
//! output on stdout stays machine-readable. The filter sits behind a reload layer so that
//! SIGHUP can change `log.level` without a restart ([`set_level`]).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The handle that swaps the filter; set by the first successful [`init`].
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Why the log level could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("invalid log filter {0:?}")]
    Invalid(String, #[source] tracing_subscriber::filter::ParseError),
    #[error("the log filter cannot be swapped")]
    Reload(#[source] reload::Error),
}

/// Installs the global subscriber. `format` is `text` or `json`.
pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("seedq=info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let color = !journald && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(color);
    let fmt = match (format, journald) {
        ("json", _) => fmt.json().boxed(),
        (_, true) => fmt.without_time().boxed(),
        _ => fmt.boxed(),
    };
    // A second init (tests, demo) is harmless: the first subscriber and its handle stay.
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the filter with `level` (an `EnvFilter` directive). Returns `false` without
/// changing anything when `RUST_LOG` is set (it wins, as at start) or no subscriber of ours
/// is installed.
///
/// # Errors
/// The directive does not parse, or the filter cannot be swapped.
pub fn set_level(level: &str) -> Result<bool, LevelError> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    let filter =
        EnvFilter::try_new(level).map_err(|e| LevelError::Invalid(level.to_string(), e))?;
    match FILTER.get() {
        Some(h) => h.reload(filter).map(|()| true).map_err(LevelError::Reload),
        None => Ok(false),
    }
}
