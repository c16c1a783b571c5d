//! Store side of the webhook outbox (migrations/0016_webhooks.sql): rows are added by a
//! trigger in the transaction that ends a job; any worker claims due rows under a short
//! lease, and records each one delivered, retried later or given up. The PostgreSQL bodies
//! are in `pg/webhooks.rs`.

use super::StoreError;

/// One webhook to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDue {
    /// The `webhook-id`: the same on every attempt.
    pub id: String,
    pub job_id: String,
    /// The job's terminal state.
    pub event: String,
    pub created_at: crate::Timestamp,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// An outbox row's delivery state, for tests and `seedq show`-like readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookState {
    pub id: String,
    pub attempts: i64,
    pub delivered_at: Option<crate::Timestamp>,
    pub given_up_at: Option<crate::Timestamp>,
    pub last_error: Option<String>,
}

backend_trait! {
    /// Signed webhook deliveries: claims, attempts and their history.
    trait WebhookStore {
        /// Claims up to `limit` due webhooks for `lease_ms` (another worker skips them until the
        /// lease ends: a crashed sender's rows come back then).
        ///
        /// # Errors
        /// SQL errors.
        pub fn webhook_claim(
            &self,
            now: crate::Timestamp,
            lease: std::time::Duration,
            limit: i64,
        ) -> Result<Vec<WebhookDue>, StoreError>;

        /// Records the outcome of one attempt: delivered (`Ok`), or failed with the reason and
        /// either the time of the next attempt or, with `None`, given up.
        ///
        /// The job's end trigger re-arms a row (due now, a new `created_at`) when the job reaches
        /// another end while the attempt ran: a success deferred until the video is archived,
        /// whose job was archived meanwhile. That re-arming wins over this attempt's next time or
        /// giving up, which are kept only while `created_at` is still the claimed row's (else the
        /// deferring attempt would push an archived job's webhook an hour back).
        ///
        /// # Errors
        /// SQL errors.
        pub fn webhook_attempted(
            &self,
            row: &WebhookDue,
            now: i64,
            outcome: Result<(), (String, Option<i64>)>,
        ) -> Result<(), StoreError>;

        /// The outbox rows of a job.
        ///
        /// # Errors
        /// SQL errors.
        pub fn webhooks_of(&self, job_id: &str) -> Result<Vec<WebhookState>, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use crate::api::{ApiJob, ApiKey};
    use crate::tests_ops::exec;
    use crate::{NewJob, testpg};

    /// Claims up to ten due webhooks at `at` (Unix ms), each for 5 s.
    async fn claim(s: &Store, at: i64) -> Vec<super::WebhookDue> {
        s.webhook_claim(
            crate::Timestamp::from_ms(at),
            std::time::Duration::from_secs(5),
            10,
        )
        .await
        .expect("claim")
    }

    /// The conformance test both backends run: a door job's end adds one outbox row (and
    /// only one), which is claimed once per lease, retried, then delivered.
    async fn an_ended_job_queues_one_webhook(s: Store) {
        let key = ApiKey {
            id: "key_w".into(),
            name: "w".into(),
            hash: "hw".into(),
            max_cost_fen: None,
            rpm: None,
            models: None,
            webhook_url: Some("https://example.com/hook".into()),
            webhook_secret: "whsec_x".into(),
            created_at: crate::Timestamp::EPOCH,
            revoked_at: None,
        };
        s.api_key_create(key).await.expect("key");
        let job = NewJob::plain("{}");
        let id = job.id.to_string();
        let api = ApiJob {
            job_id: id.clone(),
            api_key: Some("key_w".into()),
            door: "ark".into(),
            body_sha256: "h".into(),
            info: "{}".into(),
            webhook_url: None,
            created_at: crate::Timestamp::EPOCH,
            deleted_at: None,
            result_meta: None,
        };
        s.api_enqueue(job, api).await.expect("enqueue");
        // A job made outside the doors queues none.
        let other = NewJob::plain("{}");
        let other_id = other.id.to_string();
        s.enqueue(vec![other]).await.expect("enqueue");
        assert_eq!(
            s.cancel(&other_id).await.expect("cancel"),
            crate::CancelOutcome::Cancelled
        );
        assert_eq!(
            s.cancel(&id).await.expect("cancel"),
            crate::CancelOutcome::Cancelled
        );
        assert!(s.webhooks_of(&other_id).await.expect("read").is_empty());

        let now = crate::now_ms() + 1000;
        let due = claim(&s, now).await;
        assert_eq!(due.len(), 1);
        assert!(
            due[0].id.starts_with(&format!("msg_{id}_cancelled_")),
            "{}",
            due[0].id
        );
        assert_eq!((due[0].event.as_str(), due[0].attempts), ("cancelled", 0));
        assert!(claim(&s, now).await.is_empty(), "leased");
        s.webhook_attempted(&due[0], now, Err(("503".into(), Some(now + 10))))
            .await
            .expect("retry");
        assert!(claim(&s, now).await.is_empty(), "not yet due");
        let again = claim(&s, now + 10).await;
        assert_eq!((again.len(), again[0].attempts), (1, 1));
        s.webhook_attempted(&again[0], now + 20, Ok(()))
            .await
            .expect("done");
        let state = s.webhooks_of(&id).await.expect("read");
        assert_eq!(
            (state.len(), state[0].attempts, state[0].delivered_at),
            (1, 2, Some(crate::Timestamp::from_ms(now + 20)))
        );
        assert!(claim(&s, now + 10_000).await.is_empty());

        // Success: 'succeeded' then 'archived' share one row; a row deferred while the video
        // was archived (here: given up) is due again once the job is archived.
        let door_job = |j: &NewJob| ApiJob {
            job_id: j.id.to_string(),
            api_key: Some("key_w".into()),
            door: "ark".into(),
            body_sha256: "h".into(),
            info: "{}".into(),
            webhook_url: None,
            created_at: crate::Timestamp::EPOCH,
            deleted_at: None,
            result_meta: None,
        };
        let ok = NewJob::plain("{}");
        let ok_id = ok.id.to_string();
        s.api_enqueue(ok.clone(), door_job(&ok))
            .await
            .expect("enqueue");
        let set_job = |id: &str, state: &str, at: i64| {
            format!("UPDATE jobs SET state = '{state}', updated_at = {at} WHERE id = '{id}'")
        };
        let set = |state: &str, at: i64| set_job(&ok_id, state, at);
        exec(&s, &set("succeeded", now + 100)).await;
        let due = claim(&s, now + 100).await;
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, format!("msg_{ok_id}_success"));
        s.webhook_attempted(&due[0], now + 100, Err(("deferred".into(), None)))
            .await
            .expect("defer");
        exec(&s, &set("archiving", now + 150)).await;
        exec(&s, &set("archived", now + 200)).await;
        let due = claim(&s, now + 200).await;
        assert_eq!(
            (due.len(), due[0].id.clone(), due[0].event.as_str()),
            (1, format!("msg_{ok_id}_success"), "succeeded")
        );
        s.webhook_attempted(&due[0], now + 200, Ok(()))
            .await
            .expect("done");
        assert_eq!(s.webhooks_of(&ok_id).await.expect("read").len(), 1);
        // The race: the video is archived while an attempt is deciding to defer the success
        // (it read the job as archiving). The archive's re-arming wins over its hour's wait.
        let raced = NewJob::plain("{}");
        let raced_id = raced.id.to_string();
        s.api_enqueue(raced.clone(), door_job(&raced))
            .await
            .expect("enqueue");
        let set_raced = |state: &str, at: i64| set_job(&raced_id, state, at);
        exec(&s, &set_raced("succeeded", now + 100)).await;
        let due = claim(&s, now + 100).await;
        assert_eq!(due.len(), 1);
        exec(&s, &set_raced("archiving", now + 150)).await;
        exec(&s, &set_raced("archived", now + 200)).await;
        s.webhook_attempted(
            &due[0],
            now + 210,
            Err(("deferred".into(), Some(now + 3_600_000))),
        )
        .await
        .expect("defer");
        let due = claim(&s, now + 210).await;
        assert_eq!(
            due.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            [format!("msg_{raced_id}_success")],
            "due at once, not in an hour"
        );
        s.webhook_attempted(&due[0], now + 220, Err(("deferred".into(), None)))
            .await
            .expect("give up");
        let raced_state = s.webhooks_of(&raced_id).await.expect("read");
        assert_eq!(
            raced_state[0].given_up_at,
            Some(crate::Timestamp::from_ms(now + 220)),
            "an unraced attempt still counts"
        );
        // A job that fails, is retried and fails again gets a webhook each time.
        exec(&s, &set("failed", now + 300)).await;
        exec(&s, &set("queued", now + 400)).await;
        exec(&s, &set("failed", now + 500)).await;
        assert_eq!(s.webhooks_of(&ok_id).await.expect("read").len(), 3);

        // Pruning the job takes its door record and its webhooks with it.
        let far = crate::now_ms() + 60_000;
        s.prune(
            crate::Timestamp::from_ms(far),
            crate::Timestamp::from_ms(far),
            false,
        )
        .await
        .expect("prune");
        assert!(s.webhooks_of(&id).await.expect("read").is_empty());
        assert!(
            s.api_key_usage(crate::Timestamp::EPOCH)
                .await
                .expect("usage")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn an_ended_job_queues_one_webhook_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        an_ended_job_queues_one_webhook(Store::open(&dir.path().join("s.db")).expect("open")).await;
    }

    #[tokio::test]
    async fn an_ended_job_queues_one_webhook_on_postgres() {
        an_ended_job_queues_one_webhook(testpg::pg_store().await).await;
    }
}
