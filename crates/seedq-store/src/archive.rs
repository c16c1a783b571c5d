//! The archiver's queries: claims in deadline order, fenced bookkeeping during a transfer,
//! and the archive counts `seedq stats` prints.
//!
//! The state changes themselves (`archiving → archived | succeeded | failed`) go through
//! [`Store::transition`] like every other stage's. The writes here change no state and do not
//! bump the lease token, so a heartbeat racing a URL refresh cannot fence the holder out; each
//! still requires the holder's token and `archiving`, and zero rows changed is a conflict.

use serde::Serialize;

use super::{Job, StoreError};
use crate::job::JobId;

/// A job claimed for archiving, with the archive columns [`Job`] does not carry.
#[derive(Clone, Debug)]
pub struct ArchiveClaim {
    /// The job, now `archiving` under a fresh lease token.
    pub job: Job,
    /// Archive claims so far, this one included (drives the retry backoff).
    pub attempts: i64,
    /// The last frame's verified (sha256, size), recorded by an earlier attempt.
    pub frame: Option<(String, i64)>,
    /// What the succeeded task said about its output (JSON), for the sidecar.
    pub result_meta: Option<String>,
}

/// Archive counts over all models.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveStats {
    /// Jobs in `archived`.
    pub archived: i64,
    /// Sum of the archived videos' sizes.
    pub archived_bytes: i64,
    /// Succeeded jobs waiting for the archiver (including those backing off).
    pub waiting: i64,
    /// Of those, jobs whose earlier archive attempt failed.
    pub retrying: i64,
    /// Jobs being archived right now (or whose holder died; their lease will run out).
    pub archiving: i64,
    /// Jobs whose remote result was gone before it could be archived.
    pub result_expired: i64,
}

/// The failure code of a job whose result vanished before it was archived.
pub const RESULT_EXPIRED: &str = "result_expired";

backend_trait! {
    /// The archiver: claims of finished jobs, their leases and the verified digests of what was
    /// stored.
    trait ArchiveStore {
        /// Claims the due job closest to losing its result (earliest `url_expires_at`) into
        /// `archiving`: a `succeeded` job whose `next_attempt_at` has come, or an `archiving` job
        /// whose holder's lease ran out (a crash or a kill mid-transfer).
        ///
        /// # Errors
        /// SQL errors.
        pub fn claim_for_archive(
            &self,
            owner: &str,
            lease: std::time::Duration,
        ) -> Result<Option<ArchiveClaim>, StoreError>;

        /// Pushes the lease of an `archiving` job held with `token` to `lease_ms` from now, while a
        /// long transfer runs. Returns false when the job is no longer ours.
        ///
        /// # Errors
        /// SQL errors.
        pub fn extend_archive_lease(
            &self,
            id: &JobId,
            token: i64,
            lease: std::time::Duration,
        ) -> Result<bool, StoreError>;

        /// Records fresh result URLs (from a new GET of the task) for an `archiving` job.
        ///
        /// # Errors
        /// [`StoreError::Conflict`] when the job is no longer held with `token`.
        pub fn record_archive_urls(
            &self,
            id: &JobId,
            token: i64,
            video_url: String,
            last_frame_url: Option<String>,
            url_expires_at: crate::Timestamp,
        ) -> Result<(), StoreError>;

        /// Records the verified video (key, sha256, size) before its upload completes, so that
        /// after a crash an object found under the key can be checked against it.
        ///
        /// # Errors
        /// [`StoreError::Conflict`] when the job is no longer held with `token`.
        pub fn record_video_digest(
            &self,
            id: &JobId,
            token: i64,
            key: String,
            sha256: String,
            size: i64,
        ) -> Result<(), StoreError>;

        /// Records the verified last frame (sha256, size) before its upload completes.
        ///
        /// # Errors
        /// [`StoreError::Conflict`] when the job is no longer held with `token`.
        pub fn record_frame_digest(
            &self,
            id: &JobId,
            token: i64,
            sha256: String,
            size: i64,
        ) -> Result<(), StoreError>;

        /// The archived last frame's (sha256, size), if the job has one.
        ///
        /// # Errors
        /// SQL errors.
        pub fn frame_digest(&self, id: &str) -> Result<Option<(String, i64)>, StoreError>;

        /// When archive work next comes due: the earliest retry of a `succeeded` job or lease end
        /// of an `archiving` one.
        ///
        /// # Errors
        /// SQL errors.
        pub fn next_archive_due(&self) -> Result<Option<crate::Timestamp>, StoreError>;

        /// Archive counts for `seedq stats`.
        ///
        /// # Errors
        /// SQL errors.
        pub fn archive_stats(&self) -> Result<ArchiveStats, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;
    use crate::tier::Tier;
    use crate::{NewJob, Patch, ResolutionScope};
    use crate::{Store, now_ms};

    fn new_job(id: &JobId) -> NewJob {
        NewJob {
            id: id.clone(),
            ..NewJob::plain("{}")
        }
    }

    /// Walks a job to `succeeded` through the real transitions, with a URL expiring at `exp`.
    async fn succeeded(store: &Store, exp: Option<i64>) -> JobId {
        let id = JobId::generate();
        store.enqueue(vec![new_job(&id)]).await.expect("enqueue");
        let j = store
            .claim_for_submit_tier(
                "m",
                Tier::Default,
                1000,
                ResolutionScope::All,
                1,
                "t",
                crate::tests::LEASE,
            )
            .await
            .expect("claim")
            .pop()
            .expect("a job");
        let remote = format!("cgt-{}", id.as_str());
        let t = store
            .transition(
                &id,
                JobState::Submitting,
                j.lease_token,
                JobState::Submitted,
                Patch::new().set("remote_task_id", remote),
                None,
            )
            .await
            .expect("submitted");
        let mut patch = Patch::new().set("next_attempt_at", 0i64);
        if let Some(e) = exp {
            patch = patch.set("url_expires_at", e);
        }
        store
            .transition(
                &id,
                JobState::Submitted,
                t,
                JobState::Succeeded,
                patch,
                None,
            )
            .await
            .expect("succeeded");
        id
    }

    #[tokio::test]
    async fn claims_come_in_deadline_order_and_lapsed_leases_are_reclaimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, store) in crate::testpg::both(dir.path()).await {
            claims_in_order(name, &store).await;
        }
    }

    async fn claims_in_order(name: &str, store: &Store) {
        let late = succeeded(store, Some(now_ms() + 3_600_000)).await;
        let none = succeeded(store, None).await;
        let soon = succeeded(store, Some(now_ms() + 60_000)).await;

        let order: Vec<JobId> = {
            let mut v = Vec::new();
            while let Some(c) = store
                .claim_for_archive("w", crate::tests::LEASE)
                .await
                .expect("claim")
            {
                assert_eq!(c.job.state, JobState::Archiving);
                assert_eq!(c.attempts, 1);
                v.push(c.job.id);
            }
            v
        };
        assert_eq!(order, vec![soon.clone(), late, none], "{name}");

        // A holder that vanished: its lease lapses and the job is claimed again, fencing it.
        let dead = store
            .job(soon.as_str())
            .await
            .expect("job")
            .expect("exists");
        store
            .update(
                &soon,
                JobState::Archiving,
                dead.lease_token,
                Patch::new().set("lease_until", 0i64),
            )
            .await
            .expect("lapse");
        let again = store
            .claim_for_archive("w2", crate::tests::LEASE)
            .await
            .expect("claim")
            .expect("reclaimed");
        assert_eq!(
            (again.job.id.clone(), again.attempts),
            (soon.clone(), 2),
            "{name}"
        );
        let stale = store
            .record_video_digest(&soon, dead.lease_token, "k".into(), "s".into(), 1)
            .await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{name}: {stale:?}"
        );
        assert!(
            !store
                .extend_archive_lease(&soon, dead.lease_token, std::time::Duration::from_millis(1))
                .await
                .expect("extend"),
            "{name}"
        );
        let t = again.job.lease_token;
        assert!(
            store
                .extend_archive_lease(&soon, t, crate::tests::LEASE)
                .await
                .expect("extend")
        );
        store
            .record_video_digest(&soon, t, "k".into(), "abc".into(), 3)
            .await
            .expect("digest");
        store
            .record_frame_digest(&soon, t, "def".into(), 4)
            .await
            .expect("frame");
        assert_eq!(
            store.frame_digest(soon.as_str()).await.expect("frame"),
            Some(("def".to_string(), 4))
        );
        let events = store.events(soon.as_str()).await.expect("events");
        let details: Vec<_> = events.iter().filter_map(|e| e.detail.as_deref()).collect();
        assert!(
            details.contains(&"lease ran out; claimed again for archive"),
            "{name}: {details:?}"
        );

        // Back to succeeded for a later retry: the recorded frame digest rides along.
        store
            .transition(
                &soon,
                JobState::Archiving,
                t,
                JobState::Succeeded,
                Patch::new().set("next_attempt_at", 0i64),
                None,
            )
            .await
            .expect("retry later");
        let c = store
            .claim_for_archive("w", crate::tests::LEASE)
            .await
            .expect("claim")
            .expect("due");
        assert_eq!(c.frame, Some(("def".to_string(), 4)), "{name}");
        assert_eq!(c.job.archive_sha256.as_deref(), Some("abc"), "{name}");
    }

    #[tokio::test]
    async fn stats_count_archived_bytes_and_expired_results() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, store) in crate::testpg::both(dir.path()).await {
            stats(name, &store).await;
        }
    }

    async fn stats(name: &str, store: &Store) {
        for _ in 0..3 {
            succeeded(store, None).await;
        }
        // Equal deadlines: which job comes first does not matter here.
        for ok in [true, false] {
            let c = store
                .claim_for_archive("w", crate::tests::LEASE)
                .await
                .expect("claim")
                .expect("job");
            let id = c.job.id.clone();
            let (to, patch) = if ok {
                (
                    JobState::Archived,
                    Patch::new().set("archive_size", 1000i64),
                )
            } else {
                (
                    JobState::Failed,
                    Patch::new().set("last_error_code", RESULT_EXPIRED.to_string()),
                )
            };
            store
                .transition(&id, JobState::Archiving, c.job.lease_token, to, patch, None)
                .await
                .expect("finish");
        }
        let s = store.archive_stats().await.expect("stats");
        assert_eq!(
            s,
            ArchiveStats {
                archived: 1,
                archived_bytes: 1000,
                waiting: 1,
                retrying: 0,
                archiving: 0,
                result_expired: 1,
            },
            "{name}"
        );
        assert!(
            store.next_archive_due().await.expect("due").is_some(),
            "{name}"
        );
    }
}
