//! Typed store verbs: every state change a stage makes, by name, with typed data.
//!
//! The stages (`worker/dispatch`, `poll`, `reconcile`, `archive`, the `adopt` command) never
//! name a column. Each verb here says which state(s) it leaves, which one it enters and what
//! it records, and builds the generic guarded transition (`Transition` + `Patch` in `mod.rs`)
//! itself. So a second backend only ports that generic compare-and-set on
//! `(id, state, lease_token)` with its event row, and every verb keeps the lease-token
//! fencing: it returns the job's new token, [`StoreError::Conflict`] when the job moved on
//! (another state or token), or [`StoreError::IllegalTransition`] for a from-state the verb
//! does not take. `verbs_tests.rs` checks every verb against `job.rs`'s transition table.

use super::{Patch, Store, StoreError, Timestamp, Transition};
use crate::job::{JobId, JobState};

/// `last_error_code` of an ambiguous submit parked for an operator (it holds no remote slot
/// and `seedq run` does not wait for it; the store's queries test for this value).
pub const PARKED: &str = "parked";

/// Why a job stopped or waits: its `last_error_code` and `last_error_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastError {
    pub code: String,
    pub message: String,
}

impl LastError {
    /// A failure with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a move does to the job's last error.
#[derive(Clone, Debug)]
pub enum ErrorNote {
    /// Leaves it as it is (the reason it was ambiguous stays visible).
    Keep,
    /// Forgets it (proven harmless).
    Clear,
    /// Records a new one.
    Set(LastError),
}

/// A job handed back to the queue by its holder, with [`Store::requeue`].
#[derive(Clone, Debug)]
pub struct Requeue {
    /// When it is due again.
    pub at: Timestamp,
    /// The attempt count to restore when the attempt the claim counted was not the job's
    /// fault (a 429, a budget, a local resource); `None` keeps the attempt counted.
    pub attempts: Option<i64>,
    pub error: ErrorNote,
}

/// Ark accepted a create ([`Store::mark_submitted`]).
#[derive(Clone, Debug)]
pub struct Accepted {
    pub remote_id: String,
    /// When the create returned (ms).
    pub submitted_at: Timestamp,
    /// When the first status check is due.
    pub first_poll_at: Timestamp,
}

/// A remote task recorded for an ambiguous submit ([`Store::adopt_task`]): found by
/// reconciliation, answered late by the create, or picked by an operator.
#[derive(Clone, Debug)]
pub struct Adopted {
    pub remote_id: String,
    /// The task's status at Ark as last seen (`queued`, `running`, …).
    pub remote_status: String,
    /// When the task was created (ms).
    pub submitted_at: Timestamp,
    /// When the next status check is due.
    pub next_poll_at: Timestamp,
}

/// A finished task's result, as the poller or a callback saw it.
#[derive(Clone, Debug)]
pub struct RemoteResult {
    /// When it was seen finished (ms): the job's `finished_at`, and due for the archiver.
    pub at: Timestamp,
    /// The estimated remote generation time (ms), learned for the next first poll.
    pub gen_ms: i64,
    /// Status checks made, this one included.
    pub poll_count: i64,
    /// Billed tokens, when Ark reported a usage.
    pub usage_tokens: Option<i64>,
    pub video_url: Option<String>,
    /// When `video_url` stops working (ms).
    pub url_expires_at: Option<Timestamp>,
    pub last_frame_url: Option<String>,
    /// The task's descriptive fields (resolution, ratio, seed, …), for the archive's sidecar;
    /// stored as JSON in `result_meta`.
    pub meta: crate::job::ResultMeta,
}

/// What a status check of a `submitted` job found ([`Store::record_polls`]).
#[derive(Clone, Debug)]
pub enum PollOutcome {
    /// Still queued or running at Ark: look again at `next_at`. Stays `submitted`.
    Pending {
        next_at: Timestamp,
        poll_count: i64,
        remote_status: Option<String>,
    },
    /// Finished: `submitted -> succeeded`, with the result.
    Succeeded(RemoteResult),
    /// Failed for good: `submitted -> failed`, or `-> dead` when `dead` (a transient failure
    /// with no retries left). `remote_status` is what Ark said, if it said anything.
    Failed {
        dead: bool,
        remote_status: Option<String>,
        error: LastError,
    },
    /// A transient remote failure with retries left: the task is forgotten (never billed) and
    /// the job goes back to the queue (`submitted -> queued`), due at `at`.
    Retry { at: i64, error: LastError },
    /// `execution_expires_after` passed at Ark: `submitted -> expired`.
    Expired,
    /// Cancelled at Ark (by our DELETE or otherwise): `submitted -> cancelled`; the cancel
    /// request is done.
    Cancelled,
}

impl PollOutcome {
    /// The state the job lands in.
    pub fn to_state(&self) -> JobState {
        match self {
            PollOutcome::Pending { .. } => JobState::Submitted,
            PollOutcome::Succeeded(_) => JobState::Succeeded,
            PollOutcome::Failed { dead: true, .. } => JobState::Dead,
            PollOutcome::Failed { dead: false, .. } => JobState::Failed,
            PollOutcome::Retry { .. } => JobState::Queued,
            PollOutcome::Expired => JobState::Expired,
            PollOutcome::Cancelled => JobState::Cancelled,
        }
    }

    fn patch(self) -> Patch {
        match self {
            PollOutcome::Pending {
                next_at,
                poll_count,
                remote_status,
            } => {
                let p = Patch::new()
                    .set("next_attempt_at", next_at)
                    .set("poll_count", poll_count)
                    .clear("lease_until");
                match remote_status {
                    Some(s) => p.set("remote_status", s),
                    None => p,
                }
            }
            PollOutcome::Succeeded(r) => {
                let mut p = Patch::new()
                    .set("gen_ms", r.gen_ms)
                    .set("remote_status", "succeeded".to_string())
                    .set("finished_at", r.at)
                    .set("next_attempt_at", r.at)
                    .set("poll_count", r.poll_count)
                    .set("result_meta", r.meta.to_json());
                if let Some(u) = r.usage_tokens {
                    p = p.set("usage_tokens", u);
                }
                if let Some(v) = r.video_url {
                    p = p.set("video_url", v);
                }
                if let Some(at) = r.url_expires_at {
                    p = p.set("url_expires_at", at);
                }
                if let Some(f) = r.last_frame_url {
                    p = p.set("last_frame_url", f);
                }
                p
            }
            PollOutcome::Failed {
                remote_status,
                error,
                ..
            } => {
                let p = match remote_status {
                    Some(s) => Patch::new().set("remote_status", s),
                    None => Patch::new(),
                };
                with_error(p, error)
            }
            PollOutcome::Retry { at, error } => with_error(
                Patch::new()
                    .set("remote_status", "failed".to_string())
                    .clear("remote_task_id")
                    .set("next_attempt_at", at),
                error,
            ),
            PollOutcome::Expired => Patch::new()
                .set("remote_status", "expired".to_string())
                .set("last_error_code", "expired".to_string())
                .set(
                    "last_error_message",
                    "execution_expires_after passed on the remote side".to_string(),
                ),
            PollOutcome::Cancelled => Patch::new()
                .set("remote_status", "cancelled".to_string())
                .set("cancel_requested", 0i64),
        }
    }
}

/// One status to record for a `submitted` job held with `token`.
#[derive(Clone, Debug)]
pub struct Polled {
    pub id: JobId,
    pub token: i64,
    pub outcome: PollOutcome,
    /// The event's text; `None` records no event for a job that stays `submitted`.
    pub detail: Option<String>,
}

impl Polled {
    fn transition(self) -> Transition {
        Transition {
            id: self.id,
            from: JobState::Submitted,
            token: self.token,
            to: self.outcome.to_state(),
            patch: self.outcome.patch(),
            detail: self.detail,
        }
    }
}

/// A verified copy in the object store ([`Store::mark_archived`]).
#[derive(Clone, Debug)]
pub struct ArchiveRecord {
    pub key: String,
    pub sha256: String,
    pub size: i64,
    pub archived_at: Timestamp,
    /// The last frame's (sha256, size), when it was stored too.
    pub frame: Option<(String, i64)>,
}

fn with_error(p: Patch, e: LastError) -> Patch {
    p.set("last_error_code", e.code)
        .set("last_error_message", e.message)
}

/// Refuses a from-state the verb does not take (before any write).
fn takes(id: &JobId, from: JobState, allowed: &[JobState], to: JobState) -> Result<(), StoreError> {
    if allowed.contains(&from) {
        Ok(())
    } else {
        Err(StoreError::IllegalTransition {
            id: id.clone(),
            from,
            to,
        })
    }
}

impl Store {
    /// `submitting -> cancelled`: the claimed job had `cancel_requested` (set during an
    /// earlier POST that never reached Ark), so it is cancelled instead of sent.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer `submitting` with `token`.
    pub async fn cancel_before_submit(&self, id: &JobId, token: i64) -> Result<i64, StoreError> {
        self.transition(
            id,
            JobState::Submitting,
            token,
            JobState::Cancelled,
            Patch::new(),
            Some("cancelled before submit".into()),
        )
        .await
    }

    /// `submitting -> submitted`: Ark accepted the create. Records the remote id, ends the
    /// submit lease and forgets earlier errors.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer `submitting` with `token` (the lease
    /// was taken over during the POST).
    pub async fn mark_submitted(
        &self,
        id: &JobId,
        token: i64,
        a: Accepted,
    ) -> Result<i64, StoreError> {
        let detail = format!("accepted as {}", a.remote_id);
        let patch = Patch::new()
            .set("remote_task_id", a.remote_id)
            .set("remote_status", "queued".to_string())
            .set("submitted_at", a.submitted_at)
            .set("next_attempt_at", a.first_poll_at)
            .set("poll_count", 0i64)
            .clear("lease_until")
            .clear("last_error_code")
            .clear("last_error_message");
        self.transition(
            id,
            JobState::Submitting,
            token,
            JobState::Submitted,
            patch,
            Some(detail),
        )
        .await
    }

    /// `submitting | submit_unknown -> queued`: the holder gives the job back, provably
    /// without a remote task (never sent, throttled, waiting on a budget, or reconciliation
    /// proved no create happened). Ends the lease.
    ///
    /// # Errors
    /// [`StoreError::IllegalTransition`] from another state; [`StoreError::Conflict`] when
    /// the job is no longer in `from` with `token`.
    pub async fn requeue(
        &self,
        id: &JobId,
        from: JobState,
        token: i64,
        r: Requeue,
        detail: String,
    ) -> Result<i64, StoreError> {
        takes(
            id,
            from,
            &[JobState::Submitting, JobState::SubmitUnknown],
            JobState::Queued,
        )?;
        let mut patch = Patch::new()
            .set("next_attempt_at", r.at)
            .clear("lease_until");
        if let Some(a) = r.attempts {
            patch = patch.set("attempts", a);
        }
        patch = match r.error {
            ErrorNote::Keep => patch,
            ErrorNote::Clear => patch.clear("last_error_code").clear("last_error_message"),
            ErrorNote::Set(e) => with_error(patch, e),
        };
        self.transition(id, from, token, JobState::Queued, patch, Some(detail))
            .await
    }

    /// `submitting -> submit_unknown`: the create's outcome is unknown (an ambiguous answer,
    /// or its lease ran out mid-POST); reconciliation looks for the task from `at`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer `submitting` with `token`.
    pub async fn mark_unknown(
        &self,
        id: &JobId,
        token: i64,
        at: i64,
        why: LastError,
        detail: String,
    ) -> Result<i64, StoreError> {
        let patch = with_error(
            Patch::new().set("next_attempt_at", at).clear("lease_until"),
            why,
        );
        self.transition(
            id,
            JobState::Submitting,
            token,
            JobState::SubmitUnknown,
            patch,
            Some(detail),
        )
        .await
    }

    /// `submitting -> failed`: Ark rejected the create. Terminal.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer `submitting` with `token`.
    pub async fn mark_failed(
        &self,
        id: &JobId,
        token: i64,
        why: LastError,
        detail: String,
    ) -> Result<i64, StoreError> {
        self.transition(
            id,
            JobState::Submitting,
            token,
            JobState::Failed,
            with_error(Patch::new(), why),
            Some(detail),
        )
        .await
    }

    /// `submitting | submit_unknown -> dead`: attempts exhausted. Terminal. `why` replaces
    /// the last error; without it the last error (the reason of the last attempt) stays.
    ///
    /// # Errors
    /// [`StoreError::IllegalTransition`] from another state; [`StoreError::Conflict`] when
    /// the job is no longer in `from` with `token`.
    pub async fn mark_dead(
        &self,
        id: &JobId,
        from: JobState,
        token: i64,
        why: Option<LastError>,
        detail: String,
    ) -> Result<i64, StoreError> {
        takes(
            id,
            from,
            &[JobState::Submitting, JobState::SubmitUnknown],
            JobState::Dead,
        )?;
        let patch = match why {
            Some(e) => with_error(Patch::new(), e),
            None => Patch::new(),
        };
        self.transition(id, from, token, JobState::Dead, patch, Some(detail))
            .await
    }

    /// `submit_unknown -> submitted`: the ambiguous submit's task is known now. Ends the lease
    /// and forgets the ambiguity.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another path recorded an outcome first.
    pub async fn adopt_task(
        &self,
        id: &JobId,
        token: i64,
        a: Adopted,
        detail: String,
    ) -> Result<i64, StoreError> {
        let patch = Patch::new()
            .set("remote_task_id", a.remote_id)
            .set("remote_status", a.remote_status)
            .set("submitted_at", a.submitted_at)
            .set("next_attempt_at", a.next_poll_at)
            .clear("lease_until")
            .clear("last_error_code")
            .clear("last_error_message");
        self.transition(
            id,
            JobState::SubmitUnknown,
            token,
            JobState::Submitted,
            patch,
            Some(detail),
        )
        .await
    }

    /// `submit_unknown -> submit_unknown` with [`PARKED`]: the outcome cannot be proven; an
    /// operator decides. Looked at again from `until`. An event is recorded when `first`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer `submit_unknown` with `token`.
    pub async fn park(
        &self,
        id: &JobId,
        token: i64,
        until: i64,
        reason: &str,
        first: bool,
    ) -> Result<i64, StoreError> {
        let message = format!("parked: {reason}");
        self.transition(
            id,
            JobState::SubmitUnknown,
            token,
            JobState::SubmitUnknown,
            Patch::new()
                .set("next_attempt_at", until)
                .set("last_error_code", PARKED.to_string())
                .set("last_error_message", message.clone()),
            first.then_some(message),
        )
        .await
    }

    /// `submit_unknown`, unchanged: reconciliation looks again at `at` (no event).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer `submit_unknown` with `token`.
    pub async fn recheck_at(&self, id: &JobId, token: i64, at: i64) -> Result<i64, StoreError> {
        self.update(
            id,
            JobState::SubmitUnknown,
            token,
            Patch::new().set("next_attempt_at", at),
        )
        .await
    }

    /// Records one status of a `submitted` job (see [`PollOutcome`] for the states).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another path (a callback, a poll) recorded it first.
    pub async fn record_poll(&self, p: Polled) -> Result<i64, StoreError> {
        let t = p.transition();
        self.transition(&t.id, t.from, t.token, t.to, t.patch, t.detail)
            .await
    }

    /// [`Store::record_poll`] for a whole batch in one transaction. Each succeeds or
    /// conflicts on its own; the results come back in order.
    ///
    /// # Errors
    /// Database errors (then nothing is applied).
    pub async fn record_polls(
        &self,
        batch: Vec<Polled>,
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        self.transition_many(batch.into_iter().map(Polled::transition).collect())
            .await
    }

    /// `submitted`, unchanged: Ark refused to cancel a running task, which runs to the end.
    /// The cancel request is dropped and the job is due for a poll at `at`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the job is no longer `submitted` with `token`.
    pub async fn cancel_refused(
        &self,
        id: &JobId,
        token: i64,
        at: i64,
        why: &str,
    ) -> Result<i64, StoreError> {
        self.transition(
            id,
            JobState::Submitted,
            token,
            JobState::Submitted,
            Patch::new()
                .set("cancel_requested", 0i64)
                .set("next_attempt_at", at)
                .set("last_error_message", format!("cancel refused: {why}")),
            Some("cancel refused by ark".into()),
        )
        .await
    }

    /// `archiving -> archived`: the video (and its last frame) are safe in the object store.
    /// Terminal.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the archive claim was taken over.
    pub async fn mark_archived(
        &self,
        id: &JobId,
        token: i64,
        rec: ArchiveRecord,
        detail: String,
    ) -> Result<i64, StoreError> {
        let mut patch = Patch::new()
            .set("archive_key", rec.key)
            .set("archive_sha256", rec.sha256)
            .set("archive_size", rec.size)
            .set("archived_at", rec.archived_at)
            .clear("last_error_code")
            .clear("last_error_message");
        if let Some((sha, size)) = rec.frame {
            patch = patch
                .set("archive_frame_sha256", sha)
                .set("archive_frame_size", size);
        }
        self.transition(
            id,
            JobState::Archiving,
            token,
            JobState::Archived,
            patch,
            Some(detail),
        )
        .await
    }

    /// `archiving -> failed`: the result cannot be archived (gone at Ark, refused URL).
    /// Forgets any digest an attempt recorded: a retried job makes a new video, and an old
    /// object under the same key must not pass for it.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the archive claim was taken over.
    pub async fn mark_archive_failed(
        &self,
        id: &JobId,
        token: i64,
        why: LastError,
        detail: String,
    ) -> Result<i64, StoreError> {
        let patch = with_error(Patch::new(), why)
            .clear("archive_key")
            .clear("archive_sha256")
            .clear("archive_size")
            .clear("archive_frame_sha256")
            .clear("archive_frame_size");
        self.transition(
            id,
            JobState::Archiving,
            token,
            JobState::Failed,
            patch,
            Some(detail),
        )
        .await
    }

    /// `archiving -> succeeded`: this archive attempt failed; the job is released (no lease)
    /// and due again at `at`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the archive claim was taken over.
    pub async fn archive_later(
        &self,
        id: &JobId,
        token: i64,
        at: i64,
        why: LastError,
        detail: String,
    ) -> Result<i64, StoreError> {
        let patch = with_error(Patch::new().set("next_attempt_at", at), why)
            .clear("lease_until")
            .clear("lease_owner");
        self.transition(
            id,
            JobState::Archiving,
            token,
            JobState::Succeeded,
            patch,
            Some(detail),
        )
        .await
    }
}
