//! seedq's domain types, shared by the store and everything above it.
//!
//! - `job`: job ids, the state machine, the backoff policy and what a finished task said about
//!   its output (pure).
//! - `tier`: Ark's service tier (`default`/`flex`) as a type, with its wire strings.
//! - `time`: [`time::Timestamp`], an instant as Unix milliseconds, in and out of both stores.
//! - `tier_sql`: the tier in and out of the store's `service_tier` column (SQLite and
//!   PostgreSQL), here because a trait impl lives with its type or its trait.

pub mod job;
pub mod tier;
mod tier_sql;
pub mod time;
