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

use postgres_types::{self as pg, IsNull, Type};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

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
