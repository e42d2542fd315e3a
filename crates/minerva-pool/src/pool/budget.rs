//! The pool's budget on the actor's memory interval: a dynamic budget follows system
//! memory, and under pressure idle models leave, coldest first by policy.

use super::Budget;
use super::actor::Actor;
use super::loader::Loader;
use crate::EvictionReason;

impl<L: Loader> Actor<L> {
    /// Re-reads system memory: follows a dynamic budget, and under pressure unloads idle
    /// models, coldest first by policy, until usage would be back under the threshold.
    pub fn refresh_budget(&mut self) {
        let reading = match self.memory.read() {
            Ok(reading) => reading,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read system memory");
                if let Budget::Fixed(bytes) = self.config.budget {
                    self.state.budget = bytes;
                }
                return;
            }
        };
        let policy = self.config.policy;
        let threshold = self.config.pressure_threshold;
        let mut available = reading.available;
        let used = |available: u64| 1.0 - available.min(reading.total) as f64 / reading.total.max(1) as f64;
        while used(available) > threshold {
            let Some(victim) = self.state.idle_victim(&policy) else {
                break;
            };
            let bytes = self.state.entries.get(&victim).map_or(0, |e| e.bytes);
            tracing::warn!(model = %victim, used = used(available), "memory pressure: unloading an idle model");
            self.to_free.extend(self.state.evict(&victim, EvictionReason::Pressure));
            available += bytes;
        }
        let in_use = self.state.bytes_in_use();
        let freed_bytes = available - reading.available;
        self.state.budget = match self.config.budget {
            Budget::Fixed(bytes) => bytes,
            Budget::Dynamic { strategy, min, max } => {
                // What pressure unloading just freed is not available yet by the reading.
                let reading = minerva_workers::pressure::SystemMemory {
                    available: reading.available + freed_bytes,
                    ..reading
                };
                strategy.budget(reading, in_use, min, max)
            }
        };
        while self.state.bytes_in_use() > self.state.budget {
            let Some(victim) = self.state.idle_victim(&policy) else {
                break;
            };
            self.to_free.extend(self.state.evict(&victim, EvictionReason::Budget));
        }
    }
}
