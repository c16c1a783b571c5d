//! Tracing setup, once per process.
//!
//! `RUST_LOG` wins over `log.level`. Under systemd (`JOURNAL_STREAM` set) lines carry no ANSI
//! colours and no timestamps, since journald adds its own. Logs go to stderr so that command
//! output on stdout stays machine-readable.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `format` is `text` or `json`.
pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("seedq=info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let color = !journald && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color);
    // A second init (tests, demo) is harmless: the first subscriber stays.
    let _ = match (format, journald) {
        ("json", _) => builder.json().try_init(),
        (_, true) => builder.without_time().try_init(),
        _ => builder.try_init(),
    };
}
