//! Which fleet-wide singletons this process leads. The type lives in the
//! stage core because every stage's context carries it and the singleton loops (maintenance,
//! the governor, reconciliation) ask it before each round; `worker::fleet` keeps it current
//! from the store's leases.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::now_ms;

/// Scheduled maintenance (`ops::maintenance`), the TPD roll-over included.
pub const MAINTENANCE: &str = "maintenance";
/// The flex governor (`bulk::governor`).
pub const GOVERNOR: &str = "governor";
/// The reconciliation sweeps: interrupted submits and overdue flex jobs (`worker::reconcile`).
pub const RECONCILE: &str = "reconcile";

/// Which singletons this process leads, and until when by its own clock.
#[derive(Debug, Default)]
pub struct Fleet {
    leads: Mutex<HashMap<&'static str, i64>>,
    /// A leader stops acting this long before its lease runs out, so that an old leader whose
    /// renewals stall has stopped before a successor may start (ms).
    pub(crate) margin_ms: Mutex<i64>,
}

impl Fleet {
    /// Whether this process leads singleton `name` now.
    pub fn leads(&self, name: &str) -> bool {
        let margin = *self.margin_ms.lock().unwrap_or_else(|e| e.into_inner());
        self.leads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|until| *until - margin > now_ms())
    }

    /// Records the outcome of a `try_lead`; returns whether leadership changed.
    pub(crate) fn set(&self, name: &'static str, until: Option<i64>) -> bool {
        let mut leads = self.leads.lock().unwrap_or_else(|e| e.into_inner());
        match until {
            Some(u) => leads.insert(name, u).is_none(),
            None => leads.remove(name).is_some(),
        }
    }

    pub(crate) fn forget_all(&self) {
        self.leads.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
