//! Counters of the pool, per model and in total.

use std::collections::BTreeMap;

/// Why a model left memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionReason {
    /// Room was needed for another model.
    Budget,
    /// Its keep-alive ran out.
    Idle,
    /// System memory passed the pressure threshold.
    Pressure,
    /// Someone asked (`DELETE /v1/models/{id}`, `minerva stop`).
    Manual,
    /// Its worker thread died (a bug): the next request loads it again.
    WorkerDied,
}

/// Counters of one model, kept across unloads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelStats {
    /// Whether it is loaded now.
    pub loaded: bool,
    /// Bytes it holds: measured after its last load (estimated while loading).
    pub bytes: u64,
    /// Bytes estimated from its files before its last load.
    pub estimated_bytes: u64,
    /// Growth of the process's resident memory during its last load.
    pub measured_bytes: u64,
    /// Requests in flight on it now.
    pub leases: usize,
    /// Requests that found it loaded.
    pub hits: u64,
    /// Requests that had to wait for a load.
    pub misses: u64,
    /// Times it was loaded.
    pub loads: u64,
    /// Times it left memory, all reasons together.
    pub evictions: u64,
    /// Times it left memory, by reason.
    pub evictions_by_reason: BTreeMap<EvictionReason, u64>,
    /// Loads started by a preload.
    pub preloads: u64,
    /// Preloads that a request then used.
    pub preloads_used: u64,
    /// Preloads that left memory before any request used them.
    pub preloads_wasted: u64,
    /// Duration of its last load in milliseconds.
    pub load_ms: f64,
    /// All its loads together, in milliseconds.
    pub total_load_ms: f64,
    /// Seconds since the Unix epoch of its last use.
    pub last_used: Option<u64>,
    /// Seconds since the Unix epoch when its keep-alive runs out (`None`: in use, or never).
    pub expires_at: Option<u64>,
}

impl ModelStats {
    pub(crate) fn count_eviction(&mut self, reason: EvictionReason, unused_preload: bool) {
        self.loaded = false;
        self.leases = 0;
        self.expires_at = None;
        self.evictions += 1;
        *self.evictions_by_reason.entry(reason).or_default() += 1;
        if unused_preload {
            self.preloads_wasted += 1;
        }
    }
}

/// The pool as a whole.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PoolTotals {
    /// The byte budget now.
    pub budget_bytes: u64,
    /// Bytes held by loaded and loading models.
    pub bytes_in_use: u64,
    /// Models loaded now.
    pub loaded: usize,
    /// Requests that found their model loaded.
    pub hits: u64,
    /// Requests that waited for a load.
    pub misses: u64,
    /// Loads of all models.
    pub loads: u64,
    /// Evictions of all models.
    pub evictions: u64,
    /// Highest `bytes_in_use` seen.
    pub peak_bytes: u64,
    /// Requests waiting for room now.
    pub waiting: usize,
}
