//! [`Tier`] in and out of the `service_tier` TEXT column, on both backends.
//!
//! The column keeps Ark's wire strings (`default`/`flex`, docs/ark-api.md §2), so the schema,
//! the triggers and the SQL that compares with `'flex'` stay as they are. Both migrations hold
//! the column to those two values with a CHECK (migrations/0001_init.sql and
//! migrations/postgres/0001_init.sql), and the triggers copy it into `in_flight_counts`, so any
//! other value read back means the database was edited by hand: reading it is an error naming
//! the value (as an unknown job state is), not a job that silently falls under neither tier's
//! limits.

use std::error::Error;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use tokio_postgres::types::{self as pg, IsNull, Type};

use crate::tier::Tier;

impl ToSql for Tier {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Tier {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl pg::ToSql for Tier {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        pg::ToSql::to_sql(&self.as_str(), ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as pg::ToSql>::accepts(ty)
    }

    pg::to_sql_checked!();
}

impl<'a> pg::FromSql<'a> for Tier {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(<&str as pg::FromSql>::from_sql(ty, raw)?.parse::<Tier>()?)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as pg::FromSql>::accepts(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::Tier;
    use crate::store::{NewJob, testpg};

    /// The error and every source below it, as `{:#}` would print them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            out.push_str(": ");
            out.push_str(&s.to_string());
            next = s.source();
        }
        out
    }

    #[tokio::test]
    async fn tiers_round_trip_through_the_column_and_unknown_text_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, s) in testpg::both(dir.path()).await {
            // Jobs of both tiers come back as the tier they were stored as.
            let mut flex = NewJob::plain(r#"{"model":"m"}"#);
            flex.flex = true;
            let plain = NewJob::plain(r#"{"model":"m"}"#);
            let (fid, pid) = (flex.id.to_string(), plain.id.to_string());
            s.enqueue(vec![flex, plain]).await.expect("enqueue");
            let f = s.job(&fid).await.expect("read").expect("flex job");
            let p = s.job(&pid).await.expect("read").expect("default job");
            assert_eq!(
                (f.service_tier, p.service_tier),
                (Tier::Flex, Tier::Default),
                "{name}"
            );

            // A bound Tier is its wire string; text that is not a tier fails naming the value.
            let (text, bad) = if let Some(pg) = s.pg() {
                let c = pg.conn().await.expect("connection");
                let row = c
                    .query_one("SELECT $1::TEXT, 'turbo'::TEXT", &[&Tier::Flex])
                    .await
                    .expect("select");
                let text: String = row.get(0);
                let bad = row.try_get::<_, Tier>(1).map(|_| ()).map_err(|e| chain(&e));
                (text, bad)
            } else {
                s.call(|c| {
                    let mut st = c.prepare("SELECT ?1, 'turbo'")?;
                    Ok(st.query_row([Tier::Flex], |r| {
                        let text: String = r.get(0)?;
                        let bad = r.get::<_, Tier>(1).map(|_| ()).map_err(|e| chain(&e));
                        Ok((text, bad))
                    })?)
                })
                .await
                .expect("select")
            };
            assert_eq!(text, "flex", "{name}");
            let e = bad.expect_err("turbo is not a tier");
            assert!(
                e.contains("\"turbo\"") && e.contains("default, flex"),
                "{name}: {e}"
            );
        }
    }
}
