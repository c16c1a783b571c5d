//! The account's read budget: turns on Ark's rate-limited routes (list, GET, DELETE), shared by
//! every worker on this store (migrations/0013_read_budget.sql, docs/limits.md).
//!
//! Each route is a row holding when its next free turn starts. Taking a turn is one
//! conditional upsert: the turn starts at `max(next, now)` and moves `next` one spacing on,
//! unless that start is later than the caller will wait. Turns are therefore spaced at least
//! one spacing apart in the database's order of writes, whichever process takes them, which is
//! what keeps a fleet inside a per-account rate. The clock is the caller's: workers on several
//! hosts must keep their clocks in step (NTP), as the leases already require.

use super::StoreError;

backend_trait! {
    /// Spacing of the reads (polls) a fleet sends to one Ark route.
    trait ReadStore {
        /// Takes the next turn on the read route `route`: turns are `spacing_us` apart across
        /// every process on this store. Returns when the turn starts (unix µs, never before
        /// `now_us`), or `None` when it would start after `latest_us` (nothing is taken then).
        ///
        /// # Errors
        /// SQL errors.
        pub fn take_read_turn(
            &self,
            route: &str,
            now_us: i64,
            spacing_us: i64,
            latest_us: i64,
        ) -> Result<Option<i64>, StoreError>;
    }
}

#[cfg(test)]
mod tests {
    use crate::testpg;

    #[tokio::test]
    async fn turns_are_spaced_and_refused_past_the_callers_patience() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            let t0 = 1_000_000_000;
            // The first turn is now; the next ones one spacing apart.
            assert_eq!(
                s.take_read_turn("list", t0, 100, t0).await.expect("take"),
                Some(t0),
                "{b}"
            );
            assert_eq!(
                s.take_read_turn("list", t0, 100, t0 + 1_000)
                    .await
                    .expect("take"),
                Some(t0 + 100),
                "{b}"
            );
            // Whoever will not wait that long gets nothing, and takes nothing.
            assert_eq!(
                s.take_read_turn("list", t0 + 10, 100, t0 + 150)
                    .await
                    .expect("take"),
                None,
                "{b}"
            );
            assert_eq!(
                s.take_read_turn("list", t0 + 10, 100, t0 + 200)
                    .await
                    .expect("take"),
                Some(t0 + 200),
                "{b}"
            );
            // Another route has a budget of its own; an idle budget starts at `now`.
            assert_eq!(
                s.take_read_turn("get", t0, 5, t0).await.expect("take"),
                Some(t0),
                "{b}"
            );
            assert_eq!(
                s.take_read_turn("list", t0 + 5_000, 100, t0 + 5_000)
                    .await
                    .expect("take"),
                Some(t0 + 5_000),
                "{b}"
            );
        }
    }

    #[tokio::test]
    async fn concurrent_takers_never_share_a_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (b, s) in testpg::both(dir.path()).await {
            let t0 = 2_000_000_000;
            let mut tasks = Vec::new();
            for _ in 0..40 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    s.take_read_turn("get", t0, 50, i64::MAX)
                        .await
                        .expect("take")
                }));
            }
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.expect("join").expect("a turn"));
            }
            got.sort_unstable();
            let want: Vec<i64> = (0..40).map(|i| t0 + 50 * i).collect();
            assert_eq!(got, want, "{b}");
        }
    }
}
