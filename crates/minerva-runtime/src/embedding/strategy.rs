//! Memory-aware processing strategies: how much work one embedding forward pass may take
//! on, chosen from the share of system memory in use (seed 003's MemoryAwareProcessor).
//!
//! The system-memory reading sits behind [`MemorySource`] so that tests can simulate
//! pressure; [`ProcMeminfo`] reads the real figures from `/proc/meminfo`.

use serde::Serialize;

/// System memory at one moment, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// Physical memory.
    pub total: u64,
    /// Memory the kernel can hand out without swapping (`MemAvailable`).
    pub available: u64,
}

impl MemoryReading {
    /// Share of memory in use, in percent.
    pub fn used_percent(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        100.0 * self.total.saturating_sub(self.available) as f64 / self.total as f64
    }
}

/// Where the embedding worker reads system memory from.
pub trait MemorySource: Send + Sync {
    /// The current reading, or `None` when it cannot be read (the worker then assumes
    /// no pressure).
    fn read(&self) -> Option<MemoryReading>;
}

/// The machine's memory from `/proc/meminfo`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcMeminfo;

impl MemorySource for ProcMeminfo {
    fn read(&self) -> Option<MemoryReading> {
        parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
    }
}

fn parse_meminfo(text: &str) -> Option<MemoryReading> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some(MemoryReading {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

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
    /// Most padded tokens (rows × longest row) in one forward pass.
    pub max_tokens: usize,
    /// Most inputs in one forward pass.
    pub max_rows: usize,
}

impl Strategy {
    /// The strategy for `reading` (no reading: no pressure).
    pub fn choose(reading: Option<MemoryReading>, thresholds: &MemoryThresholds) -> Self {
        let Some(used) = reading.map(|r| r.used_percent()) else {
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

    fn used(percent: u64) -> Option<MemoryReading> {
        Some(MemoryReading {
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

    #[test]
    fn meminfo_is_parsed_in_bytes() {
        let text = "MemTotal:       16384 kB\nMemFree:  100 kB\nMemAvailable:    4096 kB\n";
        let reading = parse_meminfo(text).unwrap();
        assert_eq!(reading.total, 16384 * 1024);
        assert_eq!(reading.available, 4096 * 1024);
        assert_eq!(reading.used_percent(), 75.0);
        assert!(ProcMeminfo.read().is_some_and(|r| r.total > 0));
    }
}
