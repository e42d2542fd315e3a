//! Which idle model leaves when room is needed.

use minerva_store::ModelId;

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

    /// The policy's order, first to leave first.
    fn order(&self, a: &Candidate<'_>, b: &Candidate<'_>) -> std::cmp::Ordering {
        let key = |c: &Candidate<'_>| -> (f64, u64) {
            match self {
                Self::Lru | Self::CountLru { .. } => (c.last_used as f64, 0),
                Self::Lfu => (c.uses as f64, c.last_used),
                Self::Fifo => (c.loaded as f64, 0),
                Self::CostAware => (c.credit, c.last_used),
            }
        };
        key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal)
    }

    /// Picks the candidate to evict first.
    pub(crate) fn victim<'a>(&self, candidates: impl Iterator<Item = Candidate<'a>>) -> Option<&'a ModelId> {
        candidates.min_by(|a, b| self.order(a, b)).map(|c| c.id)
    }

    /// Picks the candidates to evict so that `shortfall` is covered, or `None` when even
    /// all of them would not cover it (then none should leave: the request waits).
    ///
    /// The order policies take candidates in their order until the shortfall is covered.
    /// The cost-aware policy picks the set that loses the least: each candidate's loss is
    /// what reloading it would cost by its credit above the pool's `floor` (uses × load
    /// time, less the ageing since its last use), so one big idle model leaves rather than
    /// a small busy one and the big one together.
    pub(crate) fn victims<'a>(
        &self,
        mut candidates: Vec<Candidate<'a>>,
        shortfall: Shortfall,
        floor: f64,
    ) -> Option<Vec<&'a ModelId>> {
        let covers = |chosen: &[Candidate<'_>]| match shortfall {
            Shortfall::Bytes(bytes) => chosen.iter().map(|c| c.bytes).sum::<u64>() >= bytes,
            Shortfall::Models(models) => chosen.len() >= models,
        };
        if !covers(&candidates) {
            return None;
        }
        if let (Self::CostAware, Shortfall::Bytes(bytes)) = (self, shortfall)
            && candidates.len() <= MAX_SET_SEARCH
        {
            return Some(cheapest_set(&candidates, bytes, floor));
        }
        candidates.sort_by(|a, b| self.order(a, b));
        let mut chosen = Vec::new();
        for candidate in candidates {
            if covers(&chosen) {
                break;
            }
            chosen.push(candidate);
        }
        Some(chosen.into_iter().map(|c| c.id).collect())
    }

    /// The credit a model gets on a use under [`EvictionPolicy::CostAware`].
    pub(crate) fn credit(floor: f64, uses: u64, load_ms: f64, bytes: u64) -> f64 {
        // Reload cost per MiB; +1 ms so a model that loaded instantly still weighs something.
        let mib = (bytes as f64 / (1 << 20) as f64).max(1.0);
        floor + uses as f64 * (load_ms + 1.0) / mib
    }
}

/// Up to this many idle models, the cost-aware policy searches every set of victims.
const MAX_SET_SEARCH: usize = 12;

/// The set of `candidates` freeing at least `bytes` whose loss (credit above `floor`,
/// times size) is lowest; among equal losses, the one freeing the fewest bytes.
fn cheapest_set<'a>(candidates: &[Candidate<'a>], bytes: u64, floor: f64) -> Vec<&'a ModelId> {
    let mib = |c: &Candidate<'_>| c.bytes as f64 / (1 << 20) as f64;
    let loss = |c: &Candidate<'_>| (c.credit - floor).max(0.0) * mib(c);
    let mut best: Option<(f64, u64, u32)> = None;
    for set in 1u32..(1 << candidates.len()) {
        let members = || candidates.iter().enumerate().filter(move |(i, _)| set & (1 << i) != 0);
        let freed: u64 = members().map(|(_, c)| c.bytes).sum();
        if freed < bytes {
            continue;
        }
        let lost: f64 = members().map(|(_, c)| loss(c)).sum();
        if best.is_none_or(|(l, f, _)| (lost, freed) < (l, f)) {
            best = Some((lost, freed, set));
        }
    }
    let set = best.map_or(0, |(_, _, set)| set);
    candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| set & (1 << i) != 0)
        .map(|(_, c)| c.id)
        .collect()
}

/// What a load is short of: bytes under a byte budget, or model places under a count cap.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shortfall {
    Bytes(u64),
    Models(usize),
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
    /// What it holds.
    pub bytes: u64,
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
                bytes: 0,
            });
        policy.victim(cands).unwrap().to_string()
    }

    fn candidate(id: &ModelId, last_used: u64, credit: f64, mib: u64) -> Candidate<'_> {
        Candidate {
            id,
            loaded: 0,
            last_used,
            uses: 1,
            credit,
            bytes: mib << 20,
        }
    }

    fn names(victims: Option<Vec<&ModelId>>) -> Vec<String> {
        let mut names: Vec<String> = victims.expect("enough room").iter().map(|id| id.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn order_policies_take_victims_in_order_until_the_shortfall_is_covered() {
        let [a, b, c] = ids();
        // a: small, least recent; b: big; c: most recent.
        let cands = || {
            vec![
                candidate(&a, 1, 5.0, 100),
                candidate(&b, 2, 1.0, 500),
                candidate(&c, 3, 0.5, 300),
            ]
        };
        let lru = EvictionPolicy::Lru;
        assert_eq!(names(lru.victims(cands(), Shortfall::Bytes(50 << 20), 0.0)), ["a"]);
        assert_eq!(
            names(lru.victims(cands(), Shortfall::Bytes(400 << 20), 0.0)),
            ["a", "b"]
        );
        assert_eq!(
            lru.victims(cands(), Shortfall::Bytes(901 << 20), 0.0),
            None,
            "not enough even with all"
        );
        let count = EvictionPolicy::CountLru { max_models: 1 };
        assert_eq!(names(count.victims(cands(), Shortfall::Models(2), 0.0)), ["a", "b"]);
    }

    #[test]
    fn cost_aware_evicts_the_cheapest_set_that_frees_enough() {
        let [a, b, c] = ids();
        // a small model with much credit, a big one with little: needing 400 MiB, the big
        // one alone leaves; LRU would also take the small one first.
        let cands = || {
            vec![
                candidate(&a, 1, 5.0, 100),
                candidate(&b, 2, 0.8, 500),
                candidate(&c, 3, 4.0, 300),
            ]
        };
        let cost = EvictionPolicy::CostAware;
        assert_eq!(names(cost.victims(cands(), Shortfall::Bytes(400 << 20), 0.0)), ["b"]);
        assert_eq!(
            names(EvictionPolicy::Lru.victims(cands(), Shortfall::Bytes(400 << 20), 0.0)),
            ["a", "b"]
        );
        // Needing little, the set losing least: b loses 0.8 × 500, a 5 × 100, c 4 × 300.
        assert_eq!(names(cost.victims(cands(), Shortfall::Bytes(10 << 20), 0.0)), ["b"]);
        // Credit at or under the floor (aged out) loses nothing: the smallest such set goes.
        assert_eq!(names(cost.victims(cands(), Shortfall::Bytes(10 << 20), 4.5)), ["c"]);
        assert_eq!(
            names(cost.victims(cands(), Shortfall::Bytes(700 << 20), 0.0)),
            ["b", "c"]
        );
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
