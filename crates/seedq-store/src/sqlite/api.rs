//! SQLite implementation of [`ApiStore`] (declared in `store/api.rs`; the PostgreSQL
//! implementation is `store/postgres/api.rs`).

use super::SqliteStore;
use super::core::{insert_event, insert_job, job_from_row};
use crate::api::*;
use crate::job::{JobId, JobState};
use crate::{NewJob, StoreError};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let models: Option<String> = r.get(5)?;
    Ok(ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        hash: r.get(2)?,
        max_cost_fen: r.get(3)?,
        rpm: r.get(4)?,
        models: models.and_then(|m| serde_json::from_str(&m).ok()),
        webhook_url: r.get(6)?,
        webhook_secret: r.get(7)?,
        created_at: r.get(8)?,
        revoked_at: r.get(9)?,
    })
}

fn row_pair(r: &Row<'_>) -> rusqlite::Result<ApiRow> {
    let job = job_from_row(r)?;
    let o = API_OFFSET;
    let job_id: Option<String> = r.get(o)?;
    let api = match job_id {
        Some(job_id) => Some(ApiJob {
            job_id,
            api_key: r.get(o + 1)?,
            door: r.get(o + 2)?,
            body_sha256: r.get(o + 3)?,
            info: r.get(o + 4)?,
            webhook_url: r.get(o + 5)?,
            created_at: r.get(o + 6)?,
            deleted_at: r.get(o + 7)?,
            result_meta: r.get(o + 8)?,
        }),
        None => None,
    };
    Ok((job, api))
}

/// The list's `WHERE` clause and its values (SQLite placeholders).
fn list_where(f: &ApiListFilter, args: &mut Vec<Value>) -> String {
    let mut sql = String::from(" WHERE a.deleted_at IS NULL");
    if let Some(k) = &f.key {
        args.push(k.clone().into());
        sql.push_str(&format!(" AND a.api_key = ?{}", args.len()));
    }
    if let Some(d) = &f.door {
        args.push(d.clone().into());
        sql.push_str(&format!(" AND a.door = ?{}", args.len()));
    }
    let mut any = |col: &str, values: &[String], args: &mut Vec<Value>| {
        if values.is_empty() {
            return;
        }
        let marks: Vec<String> = values
            .iter()
            .map(|v| {
                args.push(v.clone().into());
                format!("?{}", args.len())
            })
            .collect();
        sql.push_str(&format!(" AND {col} IN ({})", marks.join(", ")));
    };
    any(&status_case(f.archive_on), &f.statuses, args);
    any("j.id", &f.ids, args);
    if let Some(m) = &f.model {
        args.push(m.clone().into());
        sql.push_str(&format!(" AND j.model = ?{}", args.len()));
    }
    if let Some(t) = &f.service_tier {
        args.push(t.clone().into());
        sql.push_str(&format!(" AND j.service_tier = ?{}", args.len()));
    }
    if let Some(after) = &f.after {
        args.push(after.clone().into());
        let op = if f.ascending { ">" } else { "<" };
        sql.push_str(&format!(" AND j.id {op} ?{}", args.len()));
    }
    sql
}

impl ApiStore for SqliteStore {
    async fn api_key_create(&self, key: ApiKey) -> Result<(), StoreError> {
        self.call(move |c| {
        let models = key
            .models
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_default());
        c.execute(
            &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                key.id,
                key.name,
                key.hash,
                key.max_cost_fen,
                key.rpm,
                models,
                key.webhook_url,
                key.webhook_secret,
                key.created_at,
                key.revoked_at
            ],
        )?;
        Ok(())
    })
    .await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ))?;
            let rows = st.query_map([], key_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL"
                ),
                [hash],
                key_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"),
                [id],
                key_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn api_key_revoke(&self, name_or_id: &str) -> Result<bool, StoreError> {
        let n = name_or_id.to_string();
        self.call(move |c| {
            let changed = c.execute(
                "UPDATE api_keys SET revoked_at = ?2 \
             WHERE (name = ?1 OR id = ?1) AND revoked_at IS NULL",
                params![n, crate::now_ms()],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn api_enqueue(&self, job: NewJob, api: ApiJob) -> Result<ApiEnqueued, StoreError> {
        self.call(move |c| {
        let now = crate::now_ms();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = if insert_job(&tx, &job, now, now, true, None)? == 1 {
            insert_event(&tx, job.id.as_str(), now, None, JobState::Queued, Some("enqueued"))?;
            tx.execute(
                "INSERT INTO api_jobs (job_id, api_key, door, body_sha256, info, webhook_url, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    job.id.as_str(),
                    api.api_key,
                    api.door,
                    api.body_sha256,
                    api.info,
                    api.webhook_url,
                    now
                ],
            )?;
            ApiEnqueued::Created(job.id)
        } else {
            let (id, hash): (String, Option<String>) = tx.query_row(
                "SELECT j.id, a.body_sha256 FROM jobs j LEFT JOIN api_jobs a ON a.job_id = j.id \
                 WHERE j.idempotency_key = ?1",
                [&job.key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if hash.as_deref() == Some(api.body_sha256.as_str()) {
                ApiEnqueued::Existing(JobId::from(id))
            } else {
                ApiEnqueued::Conflict(JobId::from(id))
            }
        };
        tx.commit()?;
        Ok(out)
    })
    .await
    }

    async fn api_job(&self, id: &str) -> Result<Option<ApiRow>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {} FROM jobs j LEFT JOIN api_jobs a ON a.job_id = j.id \
                 WHERE j.id = ?1 AND a.deleted_at IS NULL",
                    joined_columns()
                ),
                [id],
                row_pair,
            )
            .optional()?)
        })
        .await
    }

    async fn api_list(&self, f: ApiListFilter) -> Result<(i64, Vec<ApiRow>), StoreError> {
        self.call(move |c| {
            let mut args = Vec::new();
            let from = format!(
                " FROM jobs j LEFT JOIN api_jobs a ON a.job_id = j.id{}",
                list_where(&f, &mut args)
            );
            let total: i64 = c.query_row(
                &format!("SELECT COUNT(*){from}"),
                rusqlite::params_from_iter(args.clone()),
                |r| r.get(0),
            )?;
            let order = if f.ascending { "ASC" } else { "DESC" };
            let sql = format!(
                "SELECT {}{from} ORDER BY j.id {order} LIMIT {} OFFSET {}",
                joined_columns(),
                f.limit.max(0),
                f.offset.max(0)
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), row_pair)?;
            Ok((total, rows.collect::<Result<Vec<_>, _>>()?))
        })
        .await
    }

    async fn api_delete(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let now = crate::now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE api_jobs SET deleted_at = ?2 WHERE job_id = ?1 AND deleted_at IS NULL",
                params![id, now],
            )?;
            let n = if n == 0 {
                // A job made outside the doors (seen by the admin token): a door row that
                // only records the deletion.
                tx.execute(
                "INSERT INTO api_jobs (job_id, door, body_sha256, info, created_at, deleted_at) \
                 SELECT id, 'ark', '', '{}', ?2, ?2 FROM jobs WHERE id = ?1 \
                 ON CONFLICT (job_id) DO NOTHING",
                params![id, now],
            )?
            } else {
                n
            };
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn api_key_usage(
        &self,
        day_start: crate::Timestamp,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(KEY_USAGE_SQL)?;
            let rows = st.query_map([day_start], |r| {
                Ok(KeyUsage {
                    key: r.get(0)?,
                    jobs: r.get(1)?,
                    units_today: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn api_rate_take(
        &self,
        key: &str,
        rpm: i64,
        now: i64,
    ) -> Result<Result<(), i64>, StoreError> {
        let key = key.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<RateRow> = tx
                .prepare_cached(
                    "SELECT window_start, count, prev_count FROM api_rate WHERE api_key = ?1",
                )?
                .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            match rate_window(row, now, rpm) {
                Ok((ws, n, prev)) => {
                    tx.prepare_cached(
                        "INSERT INTO api_rate (api_key, window_start, count, prev_count) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (api_key) DO UPDATE SET \
                     window_start = excluded.window_start, count = excluded.count, \
                     prev_count = excluded.prev_count",
                    )?
                    .execute(params![key, ws, n, prev])?;
                    tx.commit()?;
                    Ok(Ok(()))
                }
                Err(wait) => Ok(Err(wait)),
            }
        })
        .await
    }

    async fn api_url_secret(&self) -> Result<String, StoreError> {
        self.call(|c| {
            Ok(c.query_row(
                "SELECT value FROM api_settings WHERE name = 'url_secret'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }
}
