//! [`Timestamp`]: an instant as seedq stores and passes it, Unix milliseconds.
//!
//! Every time in the store is a Unix-milliseconds integer column, and every time that crosses a
//! module boundary (a job's row, a store method's cut-off) is a `Timestamp`, so a duration, a
//! count or seconds cannot be passed where an instant is meant. Spans between instants are
//! [`std::time::Duration`]. Serialised as the bare integer, so JSON output and the columns keep
//! their form.

use std::error::Error;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres_types::{self as pg, IsNull, Type};
use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// An instant, in milliseconds since the Unix epoch (UTC).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The instant `ms` milliseconds after the epoch.
    pub const fn from_ms(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn ms(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (Ark's and OpenAI's `created_at`), rounded down.
    pub const fn secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Now, by the system clock (the epoch if the clock is before it).
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

fn span_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(span_ms(d)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(span_ms(d)))
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_i64().map(Timestamp)
    }
}

impl pg::ToSql for Timestamp {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        pg::ToSql::to_sql(&self.0, ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as pg::ToSql>::accepts(ty)
    }

    pg::to_sql_checked!();
}

impl<'a> pg::FromSql<'a> for Timestamp {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Timestamp(<i64 as pg::FromSql>::from_sql(ty, raw)?))
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as pg::FromSql>::accepts(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_spans_are_never_negative() {
        let t = Timestamp::from_ms(10_000);
        assert_eq!((t + Duration::from_secs(2)).ms(), 12_000);
        assert_eq!((t - Duration::from_millis(500)).ms(), 9_500);
        assert_eq!(t.since(Timestamp::from_ms(4_000)), Duration::from_secs(6));
        assert_eq!(Timestamp::from_ms(4_000).since(t), Duration::ZERO);
        assert_eq!(
            (Timestamp::from_ms(i64::MAX) + Duration::MAX).ms(),
            i64::MAX
        );
    }

    #[test]
    fn it_is_the_bare_integer_in_json_and_in_sqlite() {
        let t = Timestamp::from_ms(1_765_000_000_123);
        assert_eq!(serde_json::to_string(&t).expect("json"), "1765000000123");
        let c = rusqlite::Connection::open_in_memory().expect("sqlite");
        let back: Timestamp = c
            .query_row("SELECT ?1 + 0", [t], |r| r.get(0))
            .expect("round trip");
        assert_eq!(back, t);
        let typ: String = c
            .query_row("SELECT typeof(?1)", [t], |r| r.get(0))
            .expect("typeof");
        assert_eq!(typ, "integer");
    }
}
