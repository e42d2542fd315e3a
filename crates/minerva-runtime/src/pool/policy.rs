//! Which idle model leaves when room is needed.

use crate::ModelId;

/// The eviction policy of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionPolicy {
    /// Least recently used first (the default).
    Lru,
    /// Least frequently used first (uses since it was loaded), then least recent.
    Lfu,
    /// First loaded, first out.
    Fifo,
    /// GreedyDual-Size-Frequency: a model's credit is the pool's inflation floor plus
    /// uses × reload cost (measured load time) / size; the lowest credit leaves and raises
    /// the floor to its credit, so models that are cheap to reload, big, and rarely used go
    /// first, and long-unused ones age out.
    CostAware,
    /// What Ollama and llama-server do: at most `max_models` loaded, least recently used
    /// out, bytes ignored. A baseline for benchmarks, not for serving.
    CountLru {
        /// Most models loaded at once.
        max_models: usize,
    },
}

impl EvictionPolicy {
    /// The policy's name, as configuration and benchmarks spell it.
    pub fn name(&self) -> String {
        match self {
            Self::Lru => "lru".into(),
            Self::Lfu => "lfu".into(),
            Self::Fifo => "fifo".into(),
            Self::CostAware => "cost".into(),
            Self::CountLru { max_models } => format!("count-lru:{max_models}"),
        }
    }

    /// Picks the candidate to evict first.
    pub(crate) fn victim<'a>(&self, candidates: impl Iterator<Item = Candidate<'a>>) -> Option<&'a ModelId> {
        let key = |c: &Candidate<'_>| -> (f64, u64) {
            match self {
                Self::Lru | Self::CountLru { .. } => (c.last_used as f64, 0),
                Self::Lfu => (c.uses as f64, c.last_used),
                Self::Fifo => (c.loaded as f64, 0),
                Self::CostAware => (c.credit, c.last_used),
            }
        };
        candidates
            .min_by(|a, b| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal))
            .map(|c| c.id)
    }

    /// The credit a model gets on a use under [`EvictionPolicy::CostAware`].
    pub(crate) fn credit(floor: f64, uses: u64, load_ms: f64, bytes: u64) -> f64 {
        // Reload cost per MiB; +1 ms so a model that loaded instantly still weighs something.
        let mib = (bytes as f64 / (1 << 20) as f64).max(1.0);
        floor + uses as f64 * (load_ms + 1.0) / mib
    }
}

impl std::str::FromStr for EvictionPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lru" => Ok(Self::Lru),
            "lfu" => Ok(Self::Lfu),
            "fifo" => Ok(Self::Fifo),
            "cost" | "cost-aware" | "gdsf" => Ok(Self::CostAware),
            other => match other.strip_prefix("count-lru:").map(str::parse) {
                Some(Ok(max_models)) if max_models > 0 => Ok(Self::CountLru { max_models }),
                _ => Err(format!(
                    "unknown eviction policy {other:?} (lru, lfu, fifo, cost, count-lru:N)"
                )),
            },
        }
    }
}

/// What a policy sees of an idle, evictable model. Times are ticks of the pool's logical
/// clock (one tick per request), so order is exact and tests need no wall clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub id: &'a ModelId,
    pub loaded: u64,
    pub last_used: u64,
    pub uses: u64,
    pub credit: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> [ModelId; 3] {
        ["a", "b", "c"].map(|s| ModelId::new(s).unwrap())
    }

    fn pick(policy: EvictionPolicy, cands: &[(u64, u64, u64, f64)]) -> String {
        let ids = ids();
        let cands = cands
            .iter()
            .zip(&ids)
            .map(|(&(loaded, last_used, uses, credit), id)| Candidate {
                id,
                loaded,
                last_used,
                uses,
                credit,
            });
        policy.victim(cands).unwrap().to_string()
    }

    #[test]
    fn each_policy_orders_by_its_own_key() {
        // (loaded, last_used, uses, credit)
        let cands = [(1, 9, 5, 3.0), (2, 4, 1, 7.0), (3, 6, 9, 0.5)];
        assert_eq!(pick(EvictionPolicy::Lru, &cands), "b");
        assert_eq!(pick(EvictionPolicy::Lfu, &cands), "b");
        assert_eq!(pick(EvictionPolicy::Fifo, &cands), "a");
        assert_eq!(pick(EvictionPolicy::CostAware, &cands), "c");
        assert_eq!(pick(EvictionPolicy::CountLru { max_models: 2 }, &cands), "b");
    }

    #[test]
    fn cost_aware_credit_favours_costly_small_models() {
        let small_slow = EvictionPolicy::credit(0.0, 1, 900.0, 100 << 20);
        let big_fast = EvictionPolicy::credit(0.0, 1, 200.0, 400 << 20);
        assert!(small_slow > big_fast);
        // More uses, more credit; a higher floor lifts everyone.
        assert!(EvictionPolicy::credit(0.0, 3, 200.0, 400 << 20) > big_fast);
        assert!(EvictionPolicy::credit(10.0, 1, 200.0, 400 << 20) > big_fast);
    }

    #[test]
    fn parses_names() {
        for p in [
            EvictionPolicy::Lru,
            EvictionPolicy::Lfu,
            EvictionPolicy::Fifo,
            EvictionPolicy::CostAware,
            EvictionPolicy::CountLru { max_models: 2 },
        ] {
            assert_eq!(p.name().parse::<EvictionPolicy>().unwrap(), p);
        }
        assert!("random".parse::<EvictionPolicy>().is_err());
        assert!("count-lru:0".parse::<EvictionPolicy>().is_err());
    }
}
