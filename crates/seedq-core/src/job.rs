//! The job domain: identifiers, the state machine and the retry backoff policy.
//!
//! Pure code: no IO, no async. The store enforces these transitions with guarded
//! compare-and-set updates; this module only says which ones are legal.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A job's local identifier: a ULID, so ids sort by creation time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A fresh, time-ordered id, larger than every id this process made before.
    ///
    /// Jobs of equal priority are claimed in id order, so ids must follow creation order:
    /// two jobs created in the same millisecond (a burst through the API door, a bulk file)
    /// with plain `Ulid::new()` got random low bits and were claimed in either order, and a
    /// spend cap that fits one of them could hold the first and pass the second. The
    /// generator increments the previous id within a millisecond instead.
    pub fn generate() -> Self {
        static GENERATOR: std::sync::Mutex<ulid::Generator> =
            std::sync::Mutex::new(ulid::Generator::new());
        let id = GENERATOR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .generate()
            // Only after 2^80 ids in one millisecond; a fresh random id is still unique.
            .unwrap_or_else(|_| ulid::Ulid::new());
        Self(id.to_string().to_ascii_lowercase())
    }

    /// The id as stored and printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A seed in `[0, 2^32 - 1]` derived from the id, sent when the user pinned none.
    ///
    /// It must be stable across retries and restarts, since reconciliation identifies an
    /// ambiguously-submitted task by the seed it echoes back.
    pub fn derived_seed(&self) -> i64 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.0.as_bytes());
        i64::from(u32::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3],
        ]))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for JobId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Where a job is in its life. See `docs/design.md` for the diagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting locally for a submit slot.
    Queued,
    /// The intent to POST is recorded; the POST may be under way.
    Submitting,
    /// The POST's outcome is unknown; reconciliation must find or rule out the task.
    SubmitUnknown,
    /// Ark accepted the task (remote queued or running).
    Submitted,
    /// Ark finished the task; the video waits to be archived.
    Succeeded,
    /// The video is being copied into the object store.
    Archiving,
    /// The video is in the object store. Terminal.
    Archived,
    /// Ark rejected or failed the task, or its result is gone. Terminal.
    Failed,
    /// Cancelled by the user. Terminal.
    Cancelled,
    /// Its deadline passed before it finished. Terminal.
    Expired,
    /// Retries exhausted. Terminal.
    Dead,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 11] = [
        JobState::Queued,
        JobState::Submitting,
        JobState::SubmitUnknown,
        JobState::Submitted,
        JobState::Succeeded,
        JobState::Archiving,
        JobState::Archived,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Expired,
        JobState::Dead,
    ];

    /// The name stored in the database and printed by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Submitting => "submitting",
            JobState::SubmitUnknown => "submit_unknown",
            JobState::Submitted => "submitted",
            JobState::Succeeded => "succeeded",
            JobState::Archiving => "archiving",
            JobState::Archived => "archived",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
            JobState::Dead => "dead",
        }
    }

    /// No transition leaves a terminal state except an explicit `retry`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Archived
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Expired
                | JobState::Dead
        )
    }

    /// States in which Ark may hold (or be about to hold) a task we pay for.
    pub fn is_remote(self) -> bool {
        matches!(
            self,
            JobState::Submitting | JobState::SubmitUnknown | JobState::Submitted
        )
    }

    /// Whether `self -> to` is a legal transition.
    pub fn can_transition(self, to: JobState) -> bool {
        use JobState::*;
        match (self, to) {
            (Queued, Submitting | Cancelled | Expired | Failed) => true,
            // A safe failure (never sent, 429) puts the job back in the queue.
            // `Cancelled`: a job cancelled during a POST that never reached Ark comes back
            // to the queue with `cancel_requested`; its next claim cancels it.
            (Submitting, Submitted | SubmitUnknown | Queued | Failed | Dead | Cancelled) => true,
            // Reconciliation adopts a match, or policy resubmits, parks (stays) or gives up.
            (SubmitUnknown, Submitted | Queued | Failed | Dead | Cancelled) => true,
            // A transient remote failure goes back to the queue for another attempt.
            (Submitted, Succeeded | Failed | Cancelled | Expired | Dead | Queued) => true,
            (Succeeded, Archiving | Failed) => true,
            // A failed upload attempt returns the job to `succeeded` for a later retry.
            (Archiving, Archived | Succeeded | Failed) => true,
            // `seedq retry`: terminal failures go back to the queue.
            (Failed | Dead | Expired | Cancelled, Queued) => true,
            _ => false,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name.
#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?}; expected one of: {list}", list = state_names())]
pub struct UnknownState(pub String);

fn state_names() -> String {
    JobState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// Exponential backoff with full jitter, capped, honouring a server's `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Upper bound for any delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based), with `jitter` in `[0, 1]`.
    ///
    /// Full jitter (`rand(0, min(max, base·2^(attempt-1)))`) spreads retries of many jobs that
    /// failed together. A `Retry-After` from the server is a floor: never retry sooner.
    pub fn delay(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self
            .base
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .max(Duration::from_millis(1));
        let jittered = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }

    /// [`Backoff::delay`] with a random jitter.
    pub fn delay_random(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay(attempt, rand::random::<f64>(), retry_after)
    }
}

/// What a succeeded task said about its output: the request may have left these to defaults,
/// or asked for an `adaptive` ratio. Kept as JSON in the job's `result_meta` column (absent
/// fields left out), and always read and written through this struct.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framespersecond: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
}

impl ResultMeta {
    /// The JSON stored in `result_meta`.
    pub fn to_json(&self) -> String {
        // Strings and integers only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Reads a stored `result_meta`; `None` when absent or unreadable (the sidecar then
    /// falls back to what was asked for, as for jobs recorded before the column existed).
    pub fn from_json(text: Option<&str>) -> Option<Self> {
        serde_json::from_str(text?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    /// Ids made one after another sort in that order, also within one millisecond.
    #[test]
    fn ids_follow_creation_order() {
        let ids: Vec<JobId> = (0..10_000).map(|_| JobId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
    }

    #[test]
    fn happy_path_is_allowed() {
        let path = [
            Queued, Submitting, Submitted, Succeeded, Archiving, Archived,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_transition(w[1]), "{} -> {}", w[0], w[1]);
        }
    }

    #[test]
    fn ambiguous_submit_is_reconciled_not_requeued_blindly() {
        assert!(Submitting.can_transition(SubmitUnknown));
        assert!(SubmitUnknown.can_transition(Submitted));
        // Going straight from submitting to submitting again would be a second POST.
        assert!(!Submitting.can_transition(Submitting));
        assert!(!SubmitUnknown.can_transition(Submitting));
    }

    #[test]
    fn terminal_states_only_leave_by_retry() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                let ok = from.can_transition(to);
                let expected = to == Queued && from != Archived;
                assert_eq!(ok, expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn a_claimed_job_cancelled_during_its_post_can_be_cancelled() {
        // A cancel during the POST: requeued with `cancel_requested`, the next claim cancels it.
        assert!(Submitting.can_transition(Cancelled));
    }

    #[test]
    fn archived_is_final() {
        for to in JobState::ALL {
            assert!(!Archived.can_transition(to));
        }
    }

    #[test]
    fn no_skipping_the_remote_steps() {
        assert!(!Queued.can_transition(Submitted));
        assert!(!Queued.can_transition(Succeeded));
        assert!(!Submitted.can_transition(Archived));
        assert!(!Succeeded.can_transition(Archived));
    }

    #[test]
    fn state_names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().ok(), Some(s));
        }
        let err = "bogus".parse::<JobState>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("bogus") && e.contains("submit_unknown")));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(1, 1.0, None), Duration::from_secs(1));
        assert_eq!(b.delay(2, 1.0, None), Duration::from_secs(2));
        assert_eq!(b.delay(4, 1.0, None), Duration::from_secs(8));
        assert_eq!(b.delay(20, 1.0, None), Duration::from_secs(60));
        assert_eq!(b.delay(u32::MAX, 1.0, None), Duration::from_secs(60));
        assert_eq!(b.delay(3, 0.5, None), Duration::from_secs(2));
        assert_eq!(b.delay(3, 0.0, None), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let ra = Some(Duration::from_secs(30));
        assert_eq!(b.delay(1, 1.0, ra), Duration::from_secs(30));
        assert_eq!(b.delay(10, 1.0, ra), Duration::from_secs(60));
    }

    #[test]
    fn derived_seed_is_stable_and_in_range() {
        let id = JobId::from("01jabcdefghjkmnpqrstvwxyz0".to_string());
        let a = id.derived_seed();
        assert_eq!(a, id.derived_seed());
        assert!((0..=i64::from(u32::MAX)).contains(&a));
        let other = JobId::generate();
        assert!((0..=i64::from(u32::MAX)).contains(&other.derived_seed()));
    }

    #[test]
    fn result_meta_leaves_absent_fields_out_and_reads_older_rows() {
        let m = ResultMeta {
            ratio: Some("16:9".into()),
            seed: Some(7),
            ..ResultMeta::default()
        };
        assert_eq!(m.to_json(), r#"{"ratio":"16:9","seed":7}"#);
        assert_eq!(ResultMeta::from_json(Some(&m.to_json())), Some(m));
        // Unknown keys (a later version's) are ignored; garbage and NULL read as nothing.
        let old = ResultMeta::from_json(Some(r#"{"seed":3,"extra":true}"#)).expect("reads");
        assert_eq!(old.seed, Some(3));
        assert_eq!(ResultMeta::from_json(Some("not json")), None);
        assert_eq!(ResultMeta::from_json(None), None);
    }
}
