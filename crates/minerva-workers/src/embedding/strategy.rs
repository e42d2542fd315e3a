//! Memory-aware processing strategies: how much work one embedding forward pass may take
//! on, chosen from the share of system memory in use (seed 003's MemoryAwareProcessor).
//!
//! System memory comes from [`crate::pressure::MemorySource`] (the real system, or a
//! simulation in tests), as for the model pool.

use serde::Serialize;

use crate::pressure::SystemMemory;

/// How boldly the worker batches, from most to least memory at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Little memory in use: large batches.
    Aggressive,
    /// Moderate batches.
    Balanced,
    /// Memory is getting scarce: small batches.
    Conservative,
    /// Memory is critical: one input at a time, huge requests processed piece by piece.
    Streaming,
}

/// Memory use (percent of total) at which each strategy takes over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryThresholds {
    /// At or above: [`Strategy::Streaming`].
    pub critical: f64,
    /// At or above: [`Strategy::Conservative`].
    pub high: f64,
    /// At or above: [`Strategy::Balanced`]; below it [`Strategy::Aggressive`].
    pub normal: f64,
}

impl Default for MemoryThresholds {
    /// The design notes' production marks: 85 / 70 / 55 %.
    fn default() -> Self {
        Self {
            critical: 85.0,
            high: 70.0,
            normal: 55.0,
        }
    }
}

/// What one forward pass may hold under a strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most tokens in one forward pass.
    pub max_tokens: usize,
    /// Most inputs in one forward pass.
    pub max_rows: usize,
}

impl Strategy {
    /// The strategy for `reading` (no reading: no pressure).
    pub fn choose(reading: Option<SystemMemory>, thresholds: &MemoryThresholds) -> Self {
        let Some(used) = reading.map(|r| r.used_fraction() * 100.0) else {
            return Self::Aggressive;
        };
        if used >= thresholds.critical {
            Self::Streaming
        } else if used >= thresholds.high {
            Self::Conservative
        } else if used >= thresholds.normal {
            Self::Balanced
        } else {
            Self::Aggressive
        }
    }

    /// Batch bounds of this strategy for a model taking at most `model_max_tokens` per
    /// input (one input of maximal length always fits).
    pub fn limits(self, model_max_tokens: usize) -> BatchLimits {
        let (max_tokens, max_rows) = match self {
            Self::Aggressive => (16384, 256),
            Self::Balanced => (8192, 128),
            Self::Conservative => (2048, 32),
            Self::Streaming => (model_max_tokens, 1),
        };
        BatchLimits {
            max_tokens: max_tokens.max(model_max_tokens),
            max_rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(percent: u64) -> Option<SystemMemory> {
        Some(SystemMemory {
            total: 100,
            available: 100 - percent,
        })
    }

    #[test]
    fn strategy_follows_memory_use_at_the_notes_thresholds() {
        let t = MemoryThresholds::default();
        assert_eq!(Strategy::choose(used(20), &t), Strategy::Aggressive);
        assert_eq!(Strategy::choose(used(54), &t), Strategy::Aggressive);
        assert_eq!(Strategy::choose(used(55), &t), Strategy::Balanced);
        assert_eq!(Strategy::choose(used(70), &t), Strategy::Conservative);
        assert_eq!(Strategy::choose(used(85), &t), Strategy::Streaming);
        assert_eq!(Strategy::choose(used(99), &t), Strategy::Streaming);
        assert_eq!(Strategy::choose(None, &t), Strategy::Aggressive);
    }

    #[test]
    fn tighter_strategies_never_allow_bigger_batches_and_always_fit_one_input() {
        let limits: Vec<_> = [
            Strategy::Aggressive,
            Strategy::Balanced,
            Strategy::Conservative,
            Strategy::Streaming,
        ]
        .map(|s| s.limits(256))
        .to_vec();
        for pair in limits.windows(2) {
            assert!(pair[1].max_tokens <= pair[0].max_tokens && pair[1].max_rows <= pair[0].max_rows);
        }
        assert!(limits.iter().all(|l| l.max_tokens >= 256 && l.max_rows >= 1));
    }
}
