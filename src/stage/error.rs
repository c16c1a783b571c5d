//! The error a stage step returns, typed by what the stage core decides on it.
//!
//! A stage loop ([`super::stage_loop`], the maintenance and governor loops, the fleet
//! heartbeat) asks one question of a failed step: end (the store is closed, the service is
//! stopping), wait for the store (an outage passes by itself, so it is retried soon and shown
//! on `/readyz`), or back off. Each kind of failure is its own variant, so that question is
//! answered by an exhaustive `match` ([`StageError::verdict`]) instead of by searching an
//! `anyhow` chain for a type: a new variant does not compile until it has an answer.

use std::fmt::Write as _;

use crate::ark::ArkError;
use crate::blob::BlobError;
use crate::store::StoreError;

/// A failed stage step.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The job store failed: closed, out (a full disk, a read-only or unreachable database),
    /// or anything else (a conflict a step did not expect, a corrupt row).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An Ark call failed in a way the step did not turn into job data.
    #[error(transparent)]
    Ark(#[from] ArkError),
    /// The archive's object store failed outside a job's own attempt (a backup, its cleanup).
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A job's stored request JSON does not parse or serialise back: a bad row the step
    /// skips over after a back-off, like any failure that is not the store's own.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// What the step was doing when one of the typed errors above happened; the log shows it
    /// in front of the cause, and the decision is the cause's.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<StageError>,
    },
    /// Failures the stage core makes no decision on beyond backing off: the file system work
    /// of a backup (a directory, an upload, old copies), a backup time that does not format,
    /// a queued body the governor cannot move to another tier, a chain shot whose row is
    /// gone. They come from many sources with nothing in common but their text, so they stay
    /// an `anyhow` chain. There is no `From<anyhow::Error>`: each is wrapped on purpose, and a
    /// store error always arrives as [`StageError::Store`], so no decision hides in here.
    #[error(transparent)]
    Other(anyhow::Error),
}

/// What a loop does after a failed step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The store was closed (the service is stopping): the loop ends with the error.
    End,
    /// A store outage ([`StoreError::outage`]): nothing the step did wrong, and it passes by
    /// itself, so the loop records it (`/readyz`) and looks again soon. The text says what
    /// is wrong with the store.
    StoreOutage(String),
    /// Anything else: logged, and the loop backs off.
    BackOff,
}

impl StageError {
    /// A miscellaneous failure (see [`StageError::Other`]).
    pub fn other(e: impl Into<anyhow::Error>) -> Self {
        StageError::Other(e.into())
    }

    /// A miscellaneous failure described by `msg` alone.
    pub fn msg(msg: impl std::fmt::Display + std::fmt::Debug + Send + Sync + 'static) -> Self {
        StageError::Other(anyhow::Error::msg(msg))
    }

    /// This error with what the step was doing in front of it.
    #[must_use]
    pub fn context(self, what: impl Into<String>) -> Self {
        StageError::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// What the loop that met this error does next.
    pub fn verdict(&self) -> Verdict {
        match self {
            StageError::Store(StoreError::Closed) => Verdict::End,
            StageError::Store(e) => e.outage().map_or(Verdict::BackOff, Verdict::StoreOutage),
            StageError::Context { source, .. } => source.verdict(),
            StageError::Ark(_)
            | StageError::Blob(_)
            | StageError::Json(_)
            | StageError::Other(_) => Verdict::BackOff,
        }
    }

    /// Whether the store was closed: the loop ends.
    pub fn is_store_closed(&self) -> bool {
        self.verdict() == Verdict::End
    }

    /// The store outage behind this error, if it is one: what is wrong with the store.
    pub fn store_outage(&self) -> Option<String> {
        match self.verdict() {
            Verdict::StoreOutage(reason) => Some(reason),
            Verdict::End | Verdict::BackOff => None,
        }
    }

    /// The error and its causes on one line, `: ` between them: the text `anyhow` prints for
    /// `{:#}`, which the logs have always shown.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let _ = write!(out, ": {c}");
            cause = c.source();
        }
        out
    }
}

/// Adds what a step was doing to a typed failure, as `anyhow::Context` does to any.
pub trait StageContext<T> {
    /// # Errors
    /// The error, with `what` in front of it.
    fn stage_context(self, what: impl Into<String>) -> Result<T, StageError>;
}

impl<T, E: Into<StageError>> StageContext<T> for Result<T, E> {
    fn stage_context(self, what: impl Into<String>) -> Result<T, StageError> {
        self.map_err(|e| e.into().context(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_room() -> StoreError {
        StoreError::NoRoom {
            free: 1,
            need: 2,
            path: "/q".into(),
        }
    }

    /// Each kind of failure leads a loop to its decision: `Closed` ends it (bare or under
    /// context), an outage waits for the store (under context too), everything else backs
    /// off, Ark and object store failures included.
    #[test]
    fn each_kind_of_failure_gets_its_decision() {
        let outage = no_room().outage().expect("a full disk is an outage");
        let cases: Vec<(&str, StageError, Verdict)> = vec![
            ("closed", StoreError::Closed.into(), Verdict::End),
            (
                "closed under context",
                StageError::from(StoreError::Closed).context("claiming"),
                Verdict::End,
            ),
            (
                "full disk",
                no_room().into(),
                Verdict::StoreOutage(outage.clone()),
            ),
            (
                "full disk under two contexts",
                StageError::from(no_room())
                    .context("recording")
                    .context("polling"),
                Verdict::StoreOutage(outage),
            ),
            (
                "corrupt row",
                StoreError::Corrupt("row".into()).into(),
                Verdict::BackOff,
            ),
            (
                "ark refusal",
                ArkError::BaseUrl("x".into()).into(),
                Verdict::BackOff,
            ),
            (
                "ark budget",
                ArkError::Budget {
                    route: "get",
                    patience: std::time::Duration::from_secs(1),
                }
                .into(),
                Verdict::BackOff,
            ),
            (
                "object store",
                BlobError::Size {
                    expected: 2,
                    received: 1,
                }
                .into(),
                Verdict::BackOff,
            ),
            (
                "stored request",
                serde_json::from_str::<serde_json::Value>("{")
                    .expect_err("not JSON")
                    .into(),
                Verdict::BackOff,
            ),
            ("other", StageError::msg("ark said no"), Verdict::BackOff),
        ];
        for (name, e, want) in cases {
            assert_eq!(e.verdict(), want, "{name}");
            assert_eq!(e.is_store_closed(), want == Verdict::End, "{name}");
            assert_eq!(
                e.store_outage().is_some(),
                matches!(want, Verdict::StoreOutage(_)),
                "{name}"
            );
        }
    }

    /// The log line is the text `anyhow`'s `{:#}` prints for the same chain, so a failure
    /// reads the same whichever type carried it.
    #[test]
    fn the_report_is_anyhows_chain() {
        let typed = StageError::from(no_room()).context("recording");
        let old = anyhow::Error::from(no_room()).context("recording");
        assert_eq!(typed.report(), format!("{old:#}"));
        let old = anyhow::Error::from(std::io::Error::other("disk")).context("copying");
        let want = format!("{old:#}");
        assert_eq!(StageError::other(old).report(), want);
        assert_eq!(
            StageError::from(StoreError::Closed).report(),
            format!("{:#}", anyhow::Error::from(StoreError::Closed))
        );
    }
}
