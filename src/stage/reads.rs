//! The fleet's read budget as the Ark client's [`Gate`]: turns on list, GET and DELETE taken
//! from the store (`Store::take_read_turn`), so every worker on one store together keeps the
//! account's documented rates (list 1/s, GET 20/s, DELETE 20/s; docs/ark-api.md §14).
//!
//! Turns are spaced for [`HEADROOM`] of each rate: a call leaves at its turn, but reaches Ark
//! a little later or earlier (scheduling, connection reuse), and the margin absorbs that.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::ark::{Gate, ReadRoute};
use crate::config::ArkConfig;
use crate::store::Store;

/// The share of each documented rate seedq spends.
pub const HEADROOM: f64 = 0.8;

/// Turns from the store, spaced per route.
pub struct StoreGate {
    store: Store,
    list_us: i64,
    get_us: i64,
    delete_us: i64,
}

/// Microseconds between turns for `qps` calls per `window`, at [`HEADROOM`].
pub fn spacing_us(qps: f64, window: Duration) -> i64 {
    let us = window.as_secs_f64() * 1e6 / (qps * HEADROOM).max(1e-9);
    (us.ceil() as i64).max(1)
}

/// Unix microseconds now.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl StoreGate {
    /// The gate for the rates in `[ark]`.
    pub fn new(store: Store, ark: &ArkConfig) -> Self {
        Self {
            store,
            list_us: spacing_us(ark.list_qps, ark.rate_window),
            get_us: spacing_us(ark.get_qps, ark.rate_window),
            delete_us: spacing_us(ark.delete_qps, ark.rate_window),
        }
    }

    /// The spacing of a route's turns (µs).
    pub fn spacing(&self, route: ReadRoute) -> i64 {
        match route {
            ReadRoute::List => self.list_us,
            ReadRoute::Get => self.get_us,
            ReadRoute::Delete => self.delete_us,
        }
    }
}

impl Gate for StoreGate {
    fn turn(&self, route: ReadRoute, patience: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let now = now_us();
            let latest =
                now.saturating_add(i64::try_from(patience.as_micros()).unwrap_or(i64::MAX));
            match self
                .store
                .take_read_turn(route.name(), now, self.spacing(route), latest)
                .await
            {
                Ok(Some(at)) => {
                    let wait = at - now_us();
                    if wait > 0 {
                        tokio::time::sleep(Duration::from_micros(wait.unsigned_abs())).await;
                    }
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    // Without the budget no call may go out: the caller retries later.
                    tracing::warn!(route = route.name(), error = %e, "cannot take a read turn");
                    false
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_keeps_a_fifth_of_each_rate_in_reserve() {
        let s = Duration::from_secs(1);
        assert_eq!(spacing_us(1.0, s), 1_250_000);
        assert_eq!(spacing_us(20.0, s), 62_500);
        // A time-scaled window shrinks the spacing with it.
        assert_eq!(spacing_us(1.0, Duration::from_millis(2)), 2_500);
    }
}
