//! PostgreSQL body of the read budget (`store/reads.rs`): the same conditional upsert, so a
//! fleet on one database shares one budget per route.

use super::PgStore;
use crate::StoreError;
use crate::reads::ReadStore;

impl ReadStore for PgStore {
    async fn take_read_turn(
        &self,
        route: &str,
        now_us: i64,
        spacing_us: i64,
        latest_us: i64,
    ) -> Result<Option<i64>, StoreError> {
        let c = self.conn().await?;
        let row = c
    .query_opt(
        "INSERT INTO read_budget (route, next_us) VALUES ($1, $2::BIGINT + $3::BIGINT) \
         ON CONFLICT (route) DO UPDATE SET next_us = GREATEST(read_budget.next_us, $2::BIGINT) + $3::BIGINT \
         WHERE GREATEST(read_budget.next_us, $2::BIGINT) <= $4::BIGINT \
         RETURNING next_us - $3::BIGINT",
        &[&route, &now_us, &spacing_us, &latest_us],
    )
    .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }
}
