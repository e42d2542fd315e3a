//! The pool's bookkeeping, owned by its actor: which models are loaded or loading, what
//! each holds, the counters, and the decisions that only read and write this state (room
//! for a model, the idle models that may leave, the models to drain for a waiting request).

use std::collections::{HashMap, HashSet};

use std::sync::Arc;

use tokio::time::Instant;

use tokio::sync::oneshot;

use super::policy::{Candidate, Shortfall};
use super::{Displace, EvictionPolicy, EvictionReason, ModelLease, ModelStats, PoolConfig, PoolTotals, Purpose};
use super::{Lease, PoolError};
use crate::estimate::Footprint;
use crate::keep_alive::KeepAlive;
use minerva_store::ModelId;

/// A request for a model, until it gets its lease or an error.
pub(super) struct Waiter<M> {
    pub id: ModelId,
    pub purpose: Purpose,
    pub keep_alive: KeepAlive,
    /// Models its load must not evict.
    pub protect: Vec<ModelId>,
    pub footprint: Footprint,
    pub deadline: Instant,
    /// Counted already as a hit, a miss or a preload.
    pub counted: bool,
    pub reply: oneshot::Sender<Result<Lease<M>, PoolError>>,
}

/// What the pool's getters read: the state as of the actor's last step.
pub(super) struct Snapshot<M> {
    pub loaded: Vec<Arc<ModelLease<M>>>,
    pub resident: HashSet<ModelId>,
    /// The bytes counted for each loaded model: its load's, plus its adapters'.
    pub counted: HashMap<ModelId, u64>,
    pub stats: Vec<(ModelId, ModelStats)>,
    pub totals: PoolTotals,
}

impl<M> Default for Snapshot<M> {
    fn default() -> Self {
        Self {
            loaded: Vec::new(),
            resident: HashSet::new(),
            counted: HashMap::new(),
            stats: Vec::new(),
            totals: PoolTotals::default(),
        }
    }
}

pub(super) struct State<M> {
    pub entries: HashMap<ModelId, Entry<M>>,
    pub stats: HashMap<ModelId, ModelStats>,
    pub budget: u64,
    /// Logical clock: one tick per acquire.
    pub tick: u64,
    /// GreedyDual's inflation floor.
    pub credit_floor: f64,
    pub generation: u64,
    pub loads_running: usize,
    pub peak_bytes: u64,
    /// Loaded models that take no new lease: the victims chosen for the request at the
    /// head of the queue for room, which leave as soon as their leases end.
    pub draining: HashSet<ModelId>,
}

impl<M> Default for State<M> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            stats: HashMap::new(),
            budget: 0,
            tick: 0,
            credit_floor: 0.0,
            generation: 0,
            loads_running: 0,
            peak_bytes: 0,
            draining: HashSet::new(),
        }
    }
}

pub(super) struct Entry<M> {
    pub phase: Phase<M>,
    /// What the load reserved, and the session it sized.
    pub footprint: Footprint,
    pub generation: u64,
    pub bytes: u64,
    pub leases: usize,
    pub loaded_tick: u64,
    pub last_used_tick: u64,
    pub uses: u64,
    pub load_ms: f64,
    pub credit: f64,
    pub keep_alive: KeepAlive,
    pub idle_deadline: Option<Instant>,
    pub unused_preload: bool,
    pub pinned: bool,
}

pub(super) enum Phase<M> {
    /// Loading; these requests get the model when it is ready.
    Loading(Vec<Waiter<M>>),
    Ready(Arc<ModelLease<M>>),
}

pub(super) enum Room<M> {
    /// The model fits now, after evicting these (to be freed before it loads).
    Made(Vec<Arc<ModelLease<M>>>),
    /// Models in use would have to leave: wait.
    NotNow,
    /// Bigger than the whole budget.
    Never,
}

impl<M> State<M> {
    pub fn bytes_in_use(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    pub fn ready_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.phase, Phase::Ready(_)))
            .count()
    }

    fn shortfall(&self, needed: u64, config: &PoolConfig) -> Option<Shortfall> {
        Some(match config.policy {
            EvictionPolicy::CountLru { max_models } => {
                Shortfall::Models((self.entries.len() + 1).saturating_sub(max_models))
            }
            _ if needed > self.budget => return None,
            _ => Shortfall::Bytes((self.bytes_in_use() + needed).saturating_sub(self.budget)),
        })
    }

    /// Evicts idle models by policy so that `needed` more bytes fit (or, under a count
    /// policy, one more model). When the idle models together would not make enough room,
    /// none leaves: the request waits for a lease to end.
    pub fn make_room(
        &mut self,
        id: &ModelId,
        needed: u64,
        config: &PoolConfig,
        purpose: &Purpose,
        protect: &[ModelId],
    ) -> Room<M> {
        let Some(shortfall) = self.shortfall(needed, config) else {
            return Room::Never;
        };
        if matches!(shortfall, Shortfall::Models(0) | Shortfall::Bytes(0)) {
            return Room::Made(Vec::new());
        }
        let displace = match purpose {
            Purpose::Request => None,
            Purpose::Preload(displace) => Some(displace),
        };
        let candidates = self.candidates(displace, false, protect);
        let Some(victims) = config.policy.victims(candidates, shortfall, self.credit_floor) else {
            return Room::NotNow;
        };
        let victims: Vec<ModelId> = victims.into_iter().cloned().collect();
        debug_assert!(!victims.contains(id));
        let evicted = victims
            .iter()
            .filter_map(|victim| self.evict(victim, EvictionReason::Budget))
            .collect();
        Room::Made(evicted)
    }

    /// The loaded models, in use or not, that the policy would evict to make room for
    /// `needed` bytes: they take no new lease until they have left. Empty when even all
    /// of them would not make room (pinned models hold it): the request then waits for
    /// its timeout or an unload.
    pub fn choose_drain(&mut self, needed: u64, config: &PoolConfig, protect: &[ModelId]) {
        self.draining.clear();
        let Some(shortfall) = self.shortfall(needed, config) else {
            return;
        };
        let candidates = self.candidates(None, true, protect);
        if let Some(victims) = config.policy.victims(candidates, shortfall, self.credit_floor) {
            let victims: Vec<ModelId> = victims.into_iter().cloned().collect();
            self.draining.extend(victims);
        }
    }

    /// The idle, unpinned, loaded model the policy evicts first.
    pub fn idle_victim(&self, policy: &EvictionPolicy) -> Option<ModelId> {
        policy.victim(self.candidates(None, false, &[]).into_iter()).cloned()
    }

    /// The unpinned, loaded models that may leave (only idle ones unless `in_use`), none of
    /// `protect`; for a preload, only those of `displace`.
    fn candidates(&self, displace: Option<&Displace>, in_use: bool, protect: &[ModelId]) -> Vec<Candidate<'_>> {
        let hotness = |id: &ModelId| self.stats.get(id).map_or(0, |s| s.hits + s.misses);
        self.entries
            .iter()
            .filter(|(_, e)| (in_use || e.leases == 0) && !e.pinned && matches!(e.phase, Phase::Ready(_)))
            .filter(|(id, _)| !protect.contains(id))
            .filter(|(id, _)| match displace {
                None => true,
                Some(Displace::UsedLessThan(max)) => hotness(id) < *max,
                Some(Displace::Only(ids)) => ids.contains(id),
            })
            .map(|(id, e)| Candidate {
                id,
                loaded: e.loaded_tick,
                last_used: e.last_used_tick,
                uses: e.uses,
                credit: e.credit,
                bytes: e.bytes,
            })
            .collect()
    }

    /// Removes model `id`; returns the model when it was loaded (the caller frees it). A
    /// loading model's waiters are the caller's to answer ([`State::take_loading`]).
    pub fn evict(&mut self, id: &ModelId, reason: EvictionReason) -> Option<Arc<ModelLease<M>>> {
        if !matches!(self.entries.get(id)?.phase, Phase::Ready(_)) {
            return None;
        }
        let entry = self.entries.remove(id)?;
        let Phase::Ready(model) = entry.phase else {
            return None;
        };
        self.draining.remove(id);
        if !matches!(reason, EvictionReason::Manual | EvictionReason::WorkerDied) {
            // GreedyDual: the floor rises to the credit of what leaves.
            self.credit_floor = self.credit_floor.max(entry.credit);
        }
        tracing::info!(model = %id, ?reason, bytes = entry.bytes, "model unloaded");
        self.stats
            .entry(id.clone())
            .or_default()
            .count_eviction(reason, entry.unused_preload);
        Some(model)
    }

    /// Removes model `id` while it loads; returns the requests that waited for it.
    pub fn take_loading(&mut self, id: &ModelId) -> Option<Vec<Waiter<M>>> {
        if !matches!(self.entries.get(id)?.phase, Phase::Loading(_)) {
            return None;
        }
        match self.entries.remove(id)?.phase {
            Phase::Loading(waiters) => Some(waiters),
            Phase::Ready(_) => None,
        }
    }

    /// The earliest keep-alive deadline of an idle model.
    pub fn next_idle_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| e.leases == 0)
            .filter_map(|e| e.idle_deadline)
            .min()
    }

    /// What the getters show, with `waiting` requests in the queue for room.
    pub fn snapshot(&self, waiting: usize) -> Snapshot<M> {
        let state = self;
        let mut loaded: Vec<_> = state
            .entries
            .values()
            .filter_map(|e| match &e.phase {
                Phase::Ready(model) => Some(Arc::clone(model)),
                Phase::Loading(_) => None,
            })
            .collect();
        loaded.sort_by(|a, b| a.id.cmp(&b.id));
        let mut stats: Vec<_> = state.stats.iter().map(|(id, s)| (id.clone(), s.clone())).collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        let totals = PoolTotals {
            budget_bytes: state.budget,
            bytes_in_use: state.bytes_in_use(),
            loaded: state.ready_count(),
            hits: state.stats.values().map(|s| s.hits).sum(),
            misses: state.stats.values().map(|s| s.misses).sum(),
            loads: state.stats.values().map(|s| s.loads).sum(),
            evictions: state.stats.values().map(|s| s.evictions).sum(),
            peak_bytes: state.peak_bytes,
            waiting,
        };
        Snapshot {
            loaded,
            resident: state.entries.keys().cloned().collect(),
            counted: state
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.phase, Phase::Ready(_)))
                .map(|(id, e)| (id.clone(), e.bytes))
                .collect(),
            stats,
            totals,
        }
    }
}
