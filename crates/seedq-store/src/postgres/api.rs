//! PostgreSQL implementation of the front doors' store methods (the SQLite one is `store/sqlite/api.rs`,
//! with the same semantics line by line).

use crate::api::ApiStore;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::core::{Insert, insert_event, insert_jobs};
use super::{PgStore, job_from_pg};
use crate::api::{
    API_OFFSET, ApiEnqueued, ApiJob, ApiKey, ApiListFilter, ApiRow, KEY_COLUMNS, KEY_USAGE_SQL,
    KeyUsage, RateRow, joined_columns, rate_window, status_case,
};
use crate::job::{JobId, JobState};
use crate::{NewJob, StoreError, now_ms};

fn key_from_pg(r: &Row) -> Result<ApiKey, StoreError> {
    let models: Option<String> = r.try_get(5)?;
    Ok(ApiKey {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        hash: r.try_get(2)?,
        max_cost_fen: r.try_get(3)?,
        rpm: r.try_get(4)?,
        models: models.and_then(|m| serde_json::from_str(&m).ok()),
        webhook_url: r.try_get(6)?,
        webhook_secret: r.try_get(7)?,
        created_at: r.try_get(8)?,
        revoked_at: r.try_get(9)?,
    })
}

fn pair_from_pg(r: &Row) -> Result<ApiRow, StoreError> {
    let job = job_from_pg(r)?;
    let o = API_OFFSET;
    let job_id: Option<String> = r.try_get(o)?;
    let api = match job_id {
        Some(job_id) => Some(ApiJob {
            job_id,
            api_key: r.try_get(o + 1)?,
            door: r.try_get(o + 2)?,
            body_sha256: r.try_get(o + 3)?,
            info: r.try_get(o + 4)?,
            webhook_url: r.try_get(o + 5)?,
            created_at: r.try_get(o + 6)?,
            deleted_at: r.try_get(o + 7)?,
            result_meta: r.try_get(o + 8)?,
        }),
        None => None,
    };
    Ok((job, api))
}

impl ApiStore for PgStore {
    async fn api_key_create(&self, key: ApiKey) -> Result<(), StoreError> {
        let k: &ApiKey = &key;

        let c = self.conn().await?;
        let models = k
            .models
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_default());
        c.execute(
    &format!(
        "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ),
    &[
        &k.id,
        &k.name,
        &k.hash,
        &k.max_cost_fen,
        &k.rpm,
        &models,
        &k.webhook_url,
        &k.webhook_secret,
        &k.created_at,
        &k.revoked_at,
    ],
)
.await?;
        Ok(())
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let c = self.conn().await?;
        c.query(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"),
            &[],
        )
        .await?
        .iter()
        .map(key_from_pg)
        .collect()
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL"
            ))
            .await?;
        c.query_opt(&st, &[&hash])
            .await?
            .as_ref()
            .map(key_from_pg)
            .transpose()
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let c = self.conn().await?;
        c.query_opt(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(key_from_pg)
        .transpose()
    }

    async fn api_key_revoke(&self, name_or_id: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE api_keys SET revoked_at = $2 \
         WHERE (name = $1 OR id = $1) AND revoked_at IS NULL",
                &[&name_or_id, &now_ms()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn api_enqueue(&self, job: NewJob, api: ApiJob) -> Result<ApiEnqueued, StoreError> {
        let (job, api) = (&job, &api);
        self.retry(|| async move {
    let now = now_ms();
    let mut c = self.conn().await?;
    let tx = c.transaction().await?;
    let row = Insert {
        job,
        next_attempt_at: now,
        deadline_now: true,
        chain: None,
    };
    let inserted = insert_jobs(&tx, &[row], now).await?;
    let out = if inserted.contains(job.id.as_str()) {
        insert_event(
            &tx,
            job.id.as_str(),
            now,
            None,
            JobState::Queued,
            Some("enqueued"),
        )
        .await?;
        tx.execute(
            "INSERT INTO api_jobs (job_id, api_key, door, body_sha256, info, webhook_url, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &job.id.as_str(),
                &api.api_key,
                &api.door,
                &api.body_sha256,
                &api.info,
                &api.webhook_url,
                &now,
            ],
        )
        .await?;
        ApiEnqueued::Created(job.id.clone())
    } else {
        let r = tx
            .query_one(
                "SELECT j.id, a.body_sha256 FROM jobs j LEFT JOIN api_jobs a ON a.job_id = j.id \
                 WHERE j.idempotency_key = $1",
                &[&job.key],
            )
            .await?;
        let id: String = r.try_get(0)?;
        let hash: Option<String> = r.try_get(1)?;
        if hash.as_deref() == Some(api.body_sha256.as_str()) {
            ApiEnqueued::Existing(JobId::from(id))
        } else {
            ApiEnqueued::Conflict(JobId::from(id))
        }
    };
    tx.commit().await?;
    Ok(out)
})
.await
    }

    async fn api_job(&self, id: &str) -> Result<Option<ApiRow>, StoreError> {
        let c = self.conn().await?;
        c.query_opt(
            &format!(
                "SELECT {} FROM jobs j LEFT JOIN api_jobs a ON a.job_id = j.id \
         WHERE j.id = $1 AND a.deleted_at IS NULL",
                joined_columns()
            ),
            &[&id],
        )
        .await?
        .as_ref()
        .map(pair_from_pg)
        .transpose()
    }

    async fn api_list(&self, f: ApiListFilter) -> Result<(i64, Vec<ApiRow>), StoreError> {
        let mut args: Vec<String> = Vec::new();
        let mut sql = String::from(" WHERE a.deleted_at IS NULL");
        let one = |col: &str, v: &str, op: &str, args: &mut Vec<String>, sql: &mut String| {
            args.push(v.to_string());
            sql.push_str(&format!(" AND {col} {op} ${}", args.len()));
        };
        if let Some(k) = &f.key {
            one("a.api_key", k, "=", &mut args, &mut sql);
        }
        if let Some(d) = &f.door {
            one("a.door", d, "=", &mut args, &mut sql);
        }
        let case = status_case(f.archive_on);
        for (col, values) in [(case.as_str(), &f.statuses), ("j.id", &f.ids)] {
            if values.is_empty() {
                continue;
            }
            let marks: Vec<String> = values
                .iter()
                .map(|v| {
                    args.push(v.clone());
                    format!("${}", args.len())
                })
                .collect();
            sql.push_str(&format!(" AND {col} IN ({})", marks.join(", ")));
        }
        if let Some(m) = &f.model {
            one("j.model", m, "=", &mut args, &mut sql);
        }
        if let Some(t) = &f.service_tier {
            one("j.service_tier", t, "=", &mut args, &mut sql);
        }
        if let Some(after) = &f.after {
            let op = if f.ascending { ">" } else { "<" };
            one("j.id", after, op, &mut args, &mut sql);
        }
        let from = format!(" FROM jobs j LEFT JOIN api_jobs a ON a.job_id = j.id{sql}");
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let c = self.conn().await?;
        let total: i64 = c
            .query_one(&format!("SELECT COUNT(*){from}"), &params)
            .await?
            .try_get(0)?;
        let order = if f.ascending { "ASC" } else { "DESC" };
        let rows = c
            .query(
                &format!(
                    "SELECT {}{from} ORDER BY j.id {order} LIMIT {} OFFSET {}",
                    joined_columns(),
                    f.limit.max(0),
                    f.offset.max(0)
                ),
                &params,
            )
            .await?;
        let rows = rows.iter().map(pair_from_pg).collect::<Result<_, _>>()?;
        Ok((total, rows))
    }

    async fn api_delete(&self, id: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let now = now_ms();
        let n = c
            .execute(
                "UPDATE api_jobs SET deleted_at = $2 WHERE job_id = $1 AND deleted_at IS NULL",
                &[&id, &now],
            )
            .await?;
        if n > 0 {
            return Ok(true);
        }
        let n = c
            .execute(
                "INSERT INTO api_jobs (job_id, door, body_sha256, info, created_at, deleted_at) \
         SELECT id, 'ark', '', '{}', $2, $2 FROM jobs WHERE id = $1 \
         ON CONFLICT (job_id) DO NOTHING",
                &[&id, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn api_key_usage(
        &self,
        day_start: crate::Timestamp,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        let c = self.conn().await?;
        // SUM of BIGINTs is NUMERIC in PostgreSQL: cast back.
        let sql = KEY_USAGE_SQL.replace(", 0) FROM", ", 0)::BIGINT FROM");
        c.query(&sql, &[&day_start])
            .await?
            .iter()
            .map(|r| {
                Ok(KeyUsage {
                    key: r.try_get(0)?,
                    jobs: r.try_get(1)?,
                    units_today: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// [`crate::Store::api_rate_take`]: the row is created if missing, then locked
    /// (`FOR UPDATE`) for the read and the write, so concurrent takers on any worker queue on it.
    async fn api_rate_take(
        &self,
        key: &str,
        rpm: i64,
        now: i64,
    ) -> Result<Result<(), i64>, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO api_rate (api_key, window_start, count, prev_count) VALUES ($1, 0, 0, 0) \
     ON CONFLICT (api_key) DO NOTHING",
            &[&key],
        )
        .await?;
        let r = tx
    .query_one(
        "SELECT window_start, count, prev_count FROM api_rate WHERE api_key = $1 FOR UPDATE",
        &[&key],
    )
    .await?;
        let row: RateRow = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        match rate_window(Some(row), now, rpm) {
            Ok((ws, n, prev)) => {
                tx.execute(
                    "UPDATE api_rate SET window_start = $2, count = $3, prev_count = $4 \
             WHERE api_key = $1",
                    &[&key, &ws, &n, &prev],
                )
                .await?;
                tx.commit().await?;
                Ok(Ok(()))
            }
            Err(wait) => {
                tx.commit().await?;
                Ok(Err(wait))
            }
        }
    }

    async fn api_url_secret(&self) -> Result<String, StoreError> {
        let c = self.conn().await?;
        Ok(c.query_one(
            "SELECT value FROM api_settings WHERE name = 'url_secret'",
            &[],
        )
        .await?
        .try_get(0)?)
    }
}
