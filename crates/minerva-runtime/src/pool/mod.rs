//! The model pool: many models under one memory budget in bytes.
//!
//! - A model is loaded on first use; concurrent requests for a loading model share its
//!   one load (single-flight), and a load runs on a blocking thread without holding the
//!   pool's lock, so requests to other models go on.
//! - Before loading, the pool reserves the model's estimated footprint ([`crate::estimate`]);
//!   after loading it keeps the measured one (RSS delta). When the reservation does not
//!   fit, idle models are evicted in the order of the [`EvictionPolicy`]. A model held by a
//!   [`Lease`] is never evicted: when nothing idle is left, the request waits in a bounded
//!   FIFO queue until a lease ends, or fails with [`PoolError::Busy`].
//! - When its last lease ends a model's keep-alive starts; a background task sleeps until
//!   the earliest keep-alive runs out (timers, no polling), re-reads system memory on an
//!   interval to follow a dynamic budget, and unloads idle models under memory pressure.

mod lease;
mod load;
mod policy;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use minerva_engine::EngineError;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use lease::{EmbeddingLease, Lease, LlmLease, TypedLease};
pub use load::{LoadedModel, ModelLease};
pub use policy::EvictionPolicy;
pub use stats::{EvictionReason, ModelStats, PoolTotals};

use crate::estimate::{EstimateError, SessionShape, estimate};
use crate::keep_alive::KeepAlive;
use crate::pressure::{BudgetStrategy, MemorySource, ProcMemory};
use crate::registry::{AccessKind, Registry, RegistryError, now_millis};
use crate::{ModelEntry, ModelId, ModelStore, StoreError};
use policy::{Candidate, Shortfall};

/// How long a freshly loaded model waits for the requests that asked for it before its
/// keep-alive starts counting.
const LOAD_GRACE: Duration = Duration::from_secs(1);

/// How long a request waiting for room lets requests for loaded models pass (they join
/// the passes of models in memory at little cost); after that they queue behind it, so
/// that it is not starved by a stream of them.
const ROOM_WAIT_PRECEDENCE: Duration = Duration::from_secs(1);

/// How big the pool may grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// A fixed number of bytes (`--memory-budget`).
    Fixed(u64),
    /// Follows system memory: recomputed every `interval`, keeping the strategy's share of
    /// memory free, within `[min, max]`.
    Dynamic {
        /// How much memory to leave to the rest of the system.
        strategy: BudgetStrategy,
        /// Lower bound in bytes.
        min: u64,
        /// Upper bound in bytes.
        max: u64,
    },
}

/// How the pool loads, keeps and evicts models.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// CPU threads per forward pass.
    pub threads: usize,
    /// Context of one generation request (capped at the model's training context).
    pub n_ctx: u32,
    /// Generations each language model runs at once, batched together.
    pub parallel: usize,
    /// Most distinct prompt tokens whose KV each language model keeps for reuse; 0 turns
    /// the prefix cache off.
    pub prefix_cache_tokens: usize,
    /// The byte budget.
    pub budget: Budget,
    /// How often system memory is re-read (dynamic budget, pressure).
    pub budget_interval: Duration,
    /// Fraction of system memory in use above which idle models are unloaded.
    pub pressure_threshold: f64,
    /// Which idle model leaves first.
    pub policy: EvictionPolicy,
    /// How long a model stays after its last request, unless the request says otherwise.
    pub keep_alive: KeepAlive,
    /// Models that never expire and are never evicted for room (only unloaded on request).
    pub pinned: Vec<ModelId>,
    /// Most requests waiting for room at once; beyond it they fail at once.
    pub max_waiting: usize,
    /// Longest wait for room.
    pub wait_timeout: Duration,
}

impl PoolConfig {
    /// Default of [`PoolConfig::parallel`].
    pub const DEFAULT_PARALLEL: usize = 16;
    /// Default of [`PoolConfig::prefix_cache_tokens`].
    pub const DEFAULT_PREFIX_CACHE_TOKENS: usize = 4096;

    /// A pool config with `threads` and `n_ctx`, 16 parallel generations per language
    /// model with a 4096-token prefix cache, the balanced dynamic budget, LRU, five
    /// minutes of keep-alive.
    pub fn new(threads: usize, n_ctx: u32) -> Self {
        Self {
            threads,
            n_ctx,
            parallel: Self::DEFAULT_PARALLEL,
            prefix_cache_tokens: Self::DEFAULT_PREFIX_CACHE_TOKENS,
            budget: Budget::Dynamic {
                strategy: BudgetStrategy::Balanced,
                min: 256 << 20,
                max: u64::MAX,
            },
            budget_interval: Duration::from_secs(5),
            pressure_threshold: 0.8,
            policy: EvictionPolicy::Lru,
            keep_alive: KeepAlive::DEFAULT,
            pinned: Vec::new(),
            max_waiting: 64,
            wait_timeout: Duration::from_secs(60),
        }
    }

    /// What the footprint estimate of a model loaded by this pool depends on.
    pub fn session_shape(&self) -> SessionShape {
        let params = load::worker_config(self).session_params(self.n_ctx);
        SessionShape {
            n_ctx: params.n_ctx,
            cached_tokens: u32::try_from(self.prefix_cache_tokens).unwrap_or(u32::MAX),
            n_batch: params.n_batch,
            n_seq_max: params.n_seq_max,
        }
    }
}

/// Why the pool could not hand out a model.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The id does not resolve in the models directory.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model's files cannot be sized.
    #[error(transparent)]
    Estimate(#[from] EstimateError),
    /// The model files failed to load.
    #[error(transparent)]
    Load(#[from] EngineError),
    /// The load of the model failed (every request that waited for it gets this).
    #[error("loading {id} failed: {cause}")]
    LoadFailed {
        /// The model.
        id: ModelId,
        /// The load's error.
        cause: Arc<PoolError>,
    },
    /// The model is bigger than the whole budget.
    #[error("{id} needs {needed} bytes but the memory budget is {budget} bytes")]
    TooLarge {
        /// The model.
        id: ModelId,
        /// Its estimated or measured footprint.
        needed: u64,
        /// The budget.
        budget: u64,
    },
    /// Every other model is in use and the queue for room is full or its wait timed out.
    #[error("no memory for {id} now: the other models are in use ({reason}); retry later")]
    Busy {
        /// The model.
        id: ModelId,
        /// Queue full or timed out.
        reason: &'static str,
    },
    /// The registry refused the model (its file no longer matches its digest) or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The loading task died.
    #[error("loading {0} was interrupted")]
    Interrupted(ModelId),
}

/// How a caller uses the model it acquires.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcquireOptions {
    /// The request's keep-alive; the pool's default when `None`.
    pub keep_alive: Option<KeepAlive>,
}

/// Loads models on demand under a memory budget and evicts them by policy.
pub struct ModelPool {
    shared: Arc<Shared>,
    housekeeper: tokio::task::JoinHandle<()>,
}

pub(crate) struct Shared {
    store: ModelStore,
    config: PoolConfig,
    memory: Arc<dyn MemorySource>,
    registry: Option<Arc<Registry>>,
    /// Access and load records for the registry, written by a thread of their own.
    usage_log: Option<std::sync::mpsc::Sender<UsageRecord>>,
    /// Every request's model, for the preloader.
    requests: tokio::sync::broadcast::Sender<ModelId>,
    state: Mutex<State>,
    /// Wakes the housekeeper: a keep-alive deadline changed.
    deadlines_changed: Arc<Notify>,
    /// Wakes requests waiting for room: a lease ended or a model left.
    room_freed: Notify,
    waiting: AtomicUsize,
    /// Requests waiting for room for a model that is not loaded: since when, by ticket.
    room_waiters: Mutex<HashMap<u64, Instant>>,
    next_room_waiter: AtomicU64,
}

/// Which idle models a preload may evict.
#[derive(Debug, Clone)]
pub enum Displace {
    /// Those used fewer times than this.
    UsedLessThan(u64),
    /// These.
    Only(Vec<ModelId>),
}

#[derive(Default)]
struct State {
    entries: HashMap<ModelId, Entry>,
    stats: HashMap<ModelId, ModelStats>,
    budget: u64,
    /// Logical clock: one tick per acquire.
    tick: u64,
    /// GreedyDual's inflation floor.
    credit_floor: f64,
    generation: u64,
    loads_running: usize,
    peak_bytes: u64,
    /// Per model, the weights and KV cache it must hold: a lower bound for a measurement.
    resident_floor: HashMap<ModelId, u64>,
}

struct Entry {
    phase: Phase,
    generation: u64,
    bytes: u64,
    leases: usize,
    loaded_tick: u64,
    last_used_tick: u64,
    uses: u64,
    load_ms: f64,
    credit: f64,
    keep_alive: KeepAlive,
    idle_deadline: Option<Instant>,
    unused_preload: bool,
    pinned: bool,
    /// When the load finished; a model no request has used yet is kept for
    /// [`LOAD_GRACE`] so the requests that waited for it get it before anyone evicts it.
    ready_at: Option<Instant>,
}

enum Phase {
    Loading(watch::Receiver<LoadOutcome>),
    Ready(Arc<ModelLease>),
}

/// How a load ended, as every request waiting for it sees it.
type LoadOutcome = Option<Result<(), Arc<PoolError>>>;

enum Step {
    /// The model's worker died and it was taken out (the caller frees it): load it anew.
    Revive(Option<Arc<ModelLease>>),
    WaitLoad(watch::Receiver<LoadOutcome>),
    /// No room for the model until a lease ends.
    WaitRoom,
    /// The model is loaded, but a request that arrived earlier has waited for room
    /// longer than [`ROOM_WAIT_PRECEDENCE`]: wait behind it, so that it is not starved by
    /// a stream of new requests.
    WaitTurn,
}

enum Purpose {
    Request,
    /// A preload: only the idle models of `displace` may leave for it, and it never waits.
    Preload(Displace),
}

impl ModelPool {
    /// A pool over `store` reading the real system's memory. Must be called inside a
    /// Tokio runtime (it starts the pool's housekeeping task).
    pub fn new(store: ModelStore, config: PoolConfig) -> Self {
        Self::with_memory_source(store, config, Arc::new(ProcMemory::default()))
    }

    /// A pool reading system memory from `memory` (a simulation in tests).
    pub fn with_memory_source(store: ModelStore, config: PoolConfig, memory: Arc<dyn MemorySource>) -> Self {
        Self::build(store, config, memory, None)
    }

    /// A pool that checks every model against `registry` before loading it (a file whose
    /// digest changed is refused) and records accesses and load times there.
    pub fn with_registry(store: ModelStore, config: PoolConfig, registry: Arc<Registry>) -> Self {
        Self::build(store, config, Arc::new(ProcMemory::default()), Some(registry))
    }

    fn build(
        store: ModelStore,
        config: PoolConfig,
        memory: Arc<dyn MemorySource>,
        registry: Option<Arc<Registry>>,
    ) -> Self {
        let deadlines_changed = Arc::new(Notify::new());
        let usage_log = registry.as_ref().map(|r| spawn_usage_writer(Arc::clone(r)));
        let shared = Arc::new(Shared {
            store,
            config,
            memory,
            registry,
            usage_log,
            requests: tokio::sync::broadcast::channel(256).0,
            state: Mutex::default(),
            deadlines_changed: Arc::clone(&deadlines_changed),
            room_freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            room_waiters: Mutex::default(),
            next_room_waiter: AtomicU64::new(0),
        });
        shared.refresh_budget();
        let housekeeper = tokio::spawn(housekeeping(Arc::downgrade(&shared), deadlines_changed));
        Self { shared, housekeeper }
    }

    /// The models directory.
    pub fn store(&self) -> &ModelStore {
        &self.shared.store
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// The registry the pool checks models against and records usage in, if any.
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.shared.registry.as_ref()
    }

    /// The model of every request from now on (not preloads), as each one ends (its
    /// lease released): the moment its model is idle and may make way for the next.
    pub fn requests(&self) -> tokio::sync::broadcast::Receiver<ModelId> {
        self.shared.requests.subscribe()
    }

    /// Whether model `id` is loaded or loading.
    pub fn is_resident(&self, id: &ModelId) -> bool {
        self.shared.lock().entries.contains_key(id)
    }

    /// Returns model `id`, loading it first if needed (evicting idle models by policy to
    /// make room, or waiting for room). Concurrent callers share one load.
    pub async fn acquire(&self, id: &ModelId) -> Result<Lease, PoolError> {
        self.acquire_with(id, AcquireOptions::default()).await
    }

    /// [`ModelPool::acquire`] with the request's options.
    pub async fn acquire_with(&self, id: &ModelId, options: AcquireOptions) -> Result<Lease, PoolError> {
        self.shared.acquire(id, Purpose::Request, options).await
    }

    /// Loads model `id` without using it, if it fits without evicting a model that is in
    /// use or used more than it; never waits for room. Counted as a preload when it was
    /// not loaded yet.
    pub async fn preload(&self, id: &ModelId) -> Result<Lease, PoolError> {
        let hotness = self.shared.lock().stats.get(id).map_or(0, |s| s.hits + s.misses);
        self.preload_displacing(id, Displace::UsedLessThan(hotness)).await
    }

    /// Loads model `id` without using it, if it fits once the idle models of `displace`
    /// leave; never waits for room (the preloader: it displaces the models its strategy
    /// ranks below `id`).
    pub async fn preload_displacing(&self, id: &ModelId, displace: Displace) -> Result<Lease, PoolError> {
        self.shared
            .acquire(id, Purpose::Preload(displace), AcquireOptions::default())
            .await
    }

    /// Unloads model `id`; returns whether it was loaded. Requests holding a lease finish
    /// first: the memory is freed when the last lease ends. When this call held the last
    /// reference, the memory is freed before it returns.
    pub async fn unload(&self, id: &ModelId) -> bool {
        let removed = {
            let mut state = self.shared.lock();
            state.evict(id, EvictionReason::Manual)
        };
        let was_loaded = removed.is_some();
        if let Some(model) = removed {
            free(model).await;
        }
        self.shared.room_freed.notify_waiters();
        self.shared.deadlines_changed.notify_one();
        was_loaded
    }

    /// The models loaded now, by id.
    pub fn loaded(&self) -> Vec<Arc<ModelLease>> {
        let state = self.shared.lock();
        let mut loaded: Vec<_> = state
            .entries
            .values()
            .filter_map(|e| match &e.phase {
                Phase::Ready(model) => Some(Arc::clone(model)),
                Phase::Loading(_) => None,
            })
            .collect();
        loaded.sort_by(|a, b| a.id.cmp(&b.id));
        loaded
    }

    /// Counters of every model used since start, by id.
    pub fn stats(&self) -> Vec<(ModelId, ModelStats)> {
        let state = self.shared.lock();
        let mut stats: Vec<_> = state.stats.iter().map(|(id, s)| (id.clone(), s.clone())).collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats
    }

    /// Counters of the whole pool.
    pub fn totals(&self) -> PoolTotals {
        let state = self.shared.lock();
        PoolTotals {
            budget_bytes: state.budget,
            bytes_in_use: state.bytes_in_use(),
            loaded: state
                .entries
                .values()
                .filter(|e| matches!(e.phase, Phase::Ready(_)))
                .count(),
            hits: state.stats.values().map(|s| s.hits).sum(),
            misses: state.stats.values().map(|s| s.misses).sum(),
            loads: state.stats.values().map(|s| s.loads).sum(),
            evictions: state.stats.values().map(|s| s.evictions).sum(),
            peak_bytes: state.peak_bytes,
            waiting: self.shared.waiting.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ModelPool {
    fn drop(&mut self) {
        self.housekeeper.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn room_waiters_lock(&self) -> MutexGuard<'_, HashMap<u64, Instant>> {
        self.room_waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a request other than `me` has waited for room for longer than
    /// [`ROOM_WAIT_PRECEDENCE`]: requests for loaded models then queue behind it.
    fn someone_waits_for_room(&self, me: Option<&RoomWaiter<'_>>) -> bool {
        self.room_waiters_lock()
            .iter()
            .any(|(ticket, since)| me.is_none_or(|me| me.ticket != *ticket) && since.elapsed() >= ROOM_WAIT_PRECEDENCE)
    }

    async fn acquire(
        self: &Arc<Self>,
        id: &ModelId,
        purpose: Purpose,
        options: AcquireOptions,
    ) -> Result<Lease, PoolError> {
        let entry = self.store.resolve(id)?;
        let kind = match purpose {
            Purpose::Request => AccessKind::Request,
            Purpose::Preload(_) => AccessKind::Preload,
        };
        self.log_usage(UsageRecord::Access(id.clone(), kind, now_millis()));
        let keep_alive = options.keep_alive.unwrap_or(self.config.keep_alive);
        let wait_until = Instant::now() + self.config.wait_timeout;
        let mut counted = false;
        let mut needed = None;
        // Held from the first wait for room until room is made or the request gives up.
        let mut room_waiter: Option<RoomWaiter<'_>> = None;
        // Set once this request has waited for a load of its model: it then takes the
        // model without queueing behind requests that wait for room.
        let mut waited_for_load = false;
        // Set once this request found its model's worker dead and loaded it again.
        let mut revived = false;
        loop {
            if needed.is_none() && !self.lock().entries.contains_key(id) {
                needed = Some(self.footprint(&entry)?);
            }
            let (step, room_freed) = {
                let mut state = self.lock();
                state.tick += 1;
                let tick = state.tick;
                let room_freed = self.room_freed.notified();
                let floor = state.credit_floor;
                let others_wait_for_room = self.someone_waits_for_room(room_waiter.as_ref());
                let step = match state.entries.get_mut(id) {
                    // A model whose worker thread died is taken out and loaded again.
                    Some(e) if matches!(&e.phase, Phase::Ready(m) if !m.model.is_alive()) => {
                        tracing::error!(model = %id, again = revived, "the model's worker thread died; unloading it");
                        Step::Revive(state.evict(id, EvictionReason::WorkerDied))
                    }
                    Some(e) => match &e.phase {
                        Phase::Ready(_)
                            if matches!(purpose, Purpose::Request)
                                && others_wait_for_room
                                && !e.pinned
                                && !waited_for_load =>
                        {
                            Step::WaitTurn
                        }
                        Phase::Ready(model) => {
                            let model = Arc::clone(model);
                            let first_use =
                                matches!(purpose, Purpose::Request) && std::mem::take(&mut e.unused_preload);
                            e.leases += 1;
                            if matches!(purpose, Purpose::Request) {
                                e.uses += 1;
                                e.last_used_tick = tick;
                                e.keep_alive = if e.pinned { KeepAlive::Forever } else { keep_alive };
                                e.idle_deadline = None;
                                e.credit = EvictionPolicy::credit(floor, e.uses, e.load_ms, e.bytes);
                            }
                            let leases = e.leases;
                            let s = state.stats.entry(id.clone()).or_default();
                            if !counted && matches!(purpose, Purpose::Request) {
                                s.hits += 1;
                            }
                            if first_use {
                                s.preloads_used += 1;
                            }
                            s.leases = leases;
                            s.expires_at = None;
                            s.last_used = unix_now();
                            return Ok(Lease::new(model, Arc::clone(self), matches!(purpose, Purpose::Request)));
                        }
                        Phase::Loading(done) => {
                            let done = done.clone();
                            if !counted {
                                counted = true;
                                if matches!(purpose, Purpose::Request) {
                                    state.stats.entry(id.clone()).or_default().misses += 1;
                                }
                            }
                            Step::WaitLoad(done)
                        }
                    },
                    None => {
                        let Some(needed) = needed else { continue };
                        match state.make_room(id, needed, &self.config, &purpose) {
                            Room::Never => {
                                return Err(PoolError::TooLarge {
                                    id: id.clone(),
                                    needed,
                                    budget: state.budget,
                                });
                            }
                            Room::NotNow => Step::WaitRoom,
                            Room::Made(evicted) => {
                                room_waiter = None;
                                if !counted {
                                    counted = true;
                                    let s = state.stats.entry(id.clone()).or_default();
                                    match purpose {
                                        Purpose::Request => s.misses += 1,
                                        Purpose::Preload(_) => s.preloads += 1,
                                    }
                                }
                                let done = self.start_load(&mut state, &entry, needed, &purpose, evicted);
                                Step::WaitLoad(done)
                            }
                        }
                    }
                };
                (step, room_freed)
            };
            match step {
                Step::Revive(dead) => {
                    if let Some(dead) = dead {
                        free(dead).await;
                    }
                    self.room_freed.notify_waiters();
                    if revived {
                        // Loaded again and dead again: not a passing bug, a broken model.
                        return Err(PoolError::Load(EngineError::Decode(
                            "the model's worker thread died again right after loading".into(),
                        )));
                    }
                    revived = true;
                }
                Step::WaitLoad(mut done) => {
                    waited_for_load = true;
                    let outcome = done.wait_for(Option::is_some).await.map(|o| o.clone());
                    match outcome {
                        Ok(Some(Err(cause))) => return Err(PoolError::LoadFailed { id: id.clone(), cause }),
                        Ok(_) => {}
                        Err(_) => return Err(PoolError::Interrupted(id.clone())),
                    }
                }
                Step::WaitRoom | Step::WaitTurn => {
                    if matches!(purpose, Purpose::Preload(_)) {
                        return Err(PoolError::Busy {
                            id: id.clone(),
                            reason: "a preload never waits",
                        });
                    }
                    let _place = WaitingPlace::take(self, id)?;
                    if matches!(step, Step::WaitRoom) && room_waiter.is_none() {
                        room_waiter = Some(RoomWaiter::new(self));
                    }
                    if tokio::time::timeout_at(wait_until, room_freed).await.is_err() {
                        return Err(PoolError::Busy {
                            id: id.clone(),
                            reason: "timed out waiting for a model to become idle",
                        });
                    }
                }
            }
        }
    }

    /// The bytes a load of model `entry` reserves: the estimate from its files, an upper
    /// bound of what it will hold (so a load never takes the pool over its budget); the
    /// measurement after the load shrinks it.
    fn footprint(&self, entry: &ModelEntry) -> Result<u64, PoolError> {
        if let Some(s) = self.lock().stats.get(&entry.id)
            && s.estimated_bytes > 0
        {
            return Ok(s.estimated_bytes);
        }
        let footprint = estimate(entry, self.config.session_shape())?;
        let mut state = self.lock();
        state
            .resident_floor
            .insert(entry.id.clone(), footprint.weights + footprint.kv_cache);
        state.stats.entry(entry.id.clone()).or_default().estimated_bytes = footprint.total();
        Ok(footprint.total())
    }

    /// Registers the load of `entry` and runs it on a blocking thread; the returned
    /// channel says when it is done.
    fn start_load(
        self: &Arc<Self>,
        state: &mut State,
        entry: &ModelEntry,
        needed: u64,
        purpose: &Purpose,
        evicted: Vec<Arc<ModelLease>>,
    ) -> watch::Receiver<LoadOutcome> {
        let (done_tx, done) = watch::channel(None);
        state.generation += 1;
        let generation = state.generation;
        let tick = state.tick;
        state.loads_running += 1;
        let pinned = self.config.pinned.contains(&entry.id);
        state.entries.insert(
            entry.id.clone(),
            Entry {
                phase: Phase::Loading(done.clone()),
                generation,
                bytes: needed,
                leases: 0,
                loaded_tick: tick,
                last_used_tick: tick,
                uses: 0,
                load_ms: 0.0,
                credit: state.credit_floor,
                keep_alive: self.config.keep_alive,
                idle_deadline: None,
                unused_preload: matches!(purpose, Purpose::Preload(_)),
                pinned,
                ready_at: None,
            },
        );
        state.peak_bytes = state.peak_bytes.max(state.bytes_in_use());
        let shared = Arc::clone(self);
        let entry = entry.clone();
        // The load runs in its own task: a request that goes away does not cancel it.
        tokio::spawn(async move {
            for model in evicted {
                free(model).await;
            }
            let started = Instant::now();
            let config = shared.config.clone();
            let task_entry = entry.clone();
            let registry = shared.registry.clone();
            let store = shared.store.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                // Hashes on first sight or when the file changed; refuses a mismatch.
                let digest = match registry {
                    Some(registry) => Some(registry.check(&store, &task_entry.id)?.sha256),
                    None => None,
                };
                load::load(
                    &task_entry.id,
                    task_entry.format,
                    &task_entry.path,
                    &config,
                    generation,
                    digest.as_deref(),
                )
            })
            .await
            .unwrap_or_else(|_| Err(PoolError::Interrupted(entry.id.clone())));
            let outcome = shared.finish_load(&entry.id, generation, loaded, started.elapsed());
            let _ = done_tx.send(Some(outcome));
        });
        done
    }

    /// Records the end of a load: the entry becomes ready with its measured size, or
    /// disappears (a failed load leaves nothing registered and frees its reservation).
    fn finish_load(
        &self,
        id: &ModelId,
        generation: u64,
        loaded: Result<ModelLease, PoolError>,
        elapsed: Duration,
    ) -> Result<(), Arc<PoolError>> {
        let mut state = self.lock();
        let alone = state.loads_running == 1;
        state.loads_running -= 1;
        let current = state.entries.get(id).is_some_and(|e| e.generation == generation);
        let result = match loaded {
            Ok(mut model) if current => {
                let load_ms = elapsed.as_secs_f64() * 1e3;
                let estimated = state.stats.get(id).map_or(0, |s| s.estimated_bytes);
                let measured = model.bytes;
                // The RSS delta is noisy: it under-counts when the allocator hands out
                // memory freed earlier and over-counts when other models allocate at the
                // same time. So it is kept between the weights and KV the model must hold
                // and its reservation, and with other loads running the reservation stays.
                let reserved = state.entries.get(id).map_or(estimated, |e| e.bytes);
                let resident_floor = state.resident_floor.get(id).copied().unwrap_or(0).min(reserved);
                let bytes = if alone {
                    measured.clamp(resident_floor, reserved)
                } else {
                    reserved
                };
                model.bytes = bytes;
                let floor = state.credit_floor;
                let e = state.entries.get_mut(id).expect("checked above");
                e.phase = Phase::Ready(Arc::new(model));
                e.ready_at = Some(Instant::now());
                e.bytes = bytes;
                e.load_ms = load_ms;
                e.credit = EvictionPolicy::credit(floor, 1, load_ms, bytes);
                if e.leases == 0 {
                    // The requests that waited for this load take their leases right
                    // after; the grace keeps a zero keep-alive from unloading it first.
                    e.idle_deadline = e.keep_alive.deadline(Instant::now() + LOAD_GRACE);
                }
                let s = state.stats.entry(id.clone()).or_default();
                s.loaded = true;
                s.bytes = bytes;
                s.measured_bytes = measured;
                s.loads += 1;
                s.load_ms = load_ms;
                s.total_load_ms += load_ms;
                self.log_usage(UsageRecord::Load(id.clone(), load_ms as u64));
                tracing::info!(model = %id, bytes, measured, estimated, load_ms, "model ready");
                Ok(())
            }
            Ok(_) => {
                // Unloaded while it loaded: the model is dropped here, nothing registered.
                Err(Arc::new(PoolError::Interrupted(id.clone())))
            }
            Err(e) => {
                if current {
                    state.entries.remove(id);
                }
                tracing::warn!(model = %id, error = %e, "load failed");
                Err(Arc::new(e))
            }
        };
        state.peak_bytes = state.peak_bytes.max(state.bytes_in_use());
        drop(state);
        self.room_freed.notify_waiters();
        self.deadlines_changed.notify_one();
        result
    }

    fn log_usage(&self, record: UsageRecord) {
        if let Some(log) = &self.usage_log {
            let _ = log.send(record);
        }
    }

    /// A lease ended: when it was the model's last, its keep-alive starts (or, for a
    /// A lease ended; a request's lease ending is announced to [`ModelPool::requests`].
    fn release(&self, model: &Arc<ModelLease>, request: bool) {
        self.end_lease(model);
        if request {
            let _ = self.requests.send(model.id.clone());
        }
    }

    /// keep-alive of zero, it leaves now).
    fn end_lease(&self, model: &Arc<ModelLease>) {
        let mut to_free = None;
        {
            let mut state = self.lock();
            let Some(e) = state.entries.get_mut(&model.id) else {
                return;
            };
            if e.generation != model.generation {
                return;
            }
            e.leases = e.leases.saturating_sub(1);
            let leases = e.leases;
            let mut expires = None;
            if leases == 0 {
                if e.keep_alive == KeepAlive::For(Duration::ZERO) && !e.pinned {
                    to_free = state.evict(&model.id, EvictionReason::Idle);
                } else {
                    e.idle_deadline = e.keep_alive.deadline(Instant::now());
                    expires = e.idle_deadline;
                }
            }
            if let Some(s) = state.stats.get_mut(&model.id) {
                s.leases = leases;
                s.expires_at = expires.and_then(unix_at);
            }
        }
        if let Some(model) = to_free {
            free_in_background(model);
        }
        self.room_freed.notify_waiters();
        self.deadlines_changed.notify_one();
    }

    /// Unloads the idle models whose keep-alive ran out by `now`; returns the earliest
    /// deadline still ahead.
    fn expire_idle(&self, now: Instant) -> Option<Instant> {
        let mut freed = Vec::new();
        let next = {
            let mut state = self.lock();
            let expired: Vec<ModelId> = state
                .entries
                .iter()
                .filter(|(_, e)| e.leases == 0 && e.idle_deadline.is_some_and(|d| d <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(model = %id, "keep-alive ran out");
                freed.extend(state.evict(&id, EvictionReason::Idle));
            }
            state
                .entries
                .values()
                .filter(|e| e.leases == 0)
                .filter_map(|e| e.idle_deadline)
                .min()
        };
        if !freed.is_empty() {
            self.room_freed.notify_waiters();
        }
        freed.into_iter().for_each(free_in_background);
        next
    }

    /// Re-reads system memory: follows a dynamic budget, and under pressure unloads idle
    /// models, coldest first by policy, until usage would be back under the threshold.
    fn refresh_budget(&self) {
        let reading = match self.memory.read() {
            Ok(reading) => reading,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read system memory");
                let mut state = self.lock();
                if let Budget::Fixed(bytes) = self.config.budget {
                    state.budget = bytes;
                }
                return;
            }
        };
        let mut freed = Vec::new();
        {
            let mut state = self.lock();
            let threshold = self.config.pressure_threshold;
            let mut available = reading.available;
            let used = |available: u64| 1.0 - available.min(reading.total) as f64 / reading.total.max(1) as f64;
            while used(available) > threshold {
                let Some(victim) = state.idle_victim(&self.config.policy).cloned() else {
                    break;
                };
                let bytes = state.entries.get(&victim).map_or(0, |e| e.bytes);
                tracing::warn!(model = %victim, used = used(available), "memory pressure: unloading an idle model");
                freed.extend(state.evict(&victim, EvictionReason::Pressure));
                available += bytes;
            }
            let in_use = state.bytes_in_use();
            let freed_bytes = available - reading.available;
            state.budget = match self.config.budget {
                Budget::Fixed(bytes) => bytes,
                Budget::Dynamic { strategy, min, max } => {
                    // What pressure unloading just freed is not available yet by the reading.
                    let reading = crate::pressure::SystemMemory {
                        available: reading.available + freed_bytes,
                        ..reading
                    };
                    strategy.budget(reading, in_use, min, max)
                }
            };
            while state.bytes_in_use() > state.budget {
                let Some(victim) = state.idle_victim(&self.config.policy).cloned() else {
                    break;
                };
                freed.extend(state.evict(&victim, EvictionReason::Budget));
            }
        }
        if !freed.is_empty() {
            self.room_freed.notify_waiters();
        }
        freed.into_iter().for_each(free_in_background);
    }
}

enum Room {
    /// The model fits now, after evicting these (to be freed before it loads).
    Made(Vec<Arc<ModelLease>>),
    /// Models in use would have to leave: wait.
    NotNow,
    /// Bigger than the whole budget.
    Never,
}

impl State {
    fn bytes_in_use(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    fn loaded_count(&self) -> usize {
        self.entries.len()
    }

    /// Evicts idle models by policy so that `needed` more bytes fit (or, under a count
    /// policy, one more model). When the idle models together would not make enough room,
    /// none leaves: the request waits for a lease to end.
    fn make_room(&mut self, id: &ModelId, needed: u64, config: &PoolConfig, purpose: &Purpose) -> Room {
        let shortfall = match config.policy {
            EvictionPolicy::CountLru { max_models } => {
                Shortfall::Models((self.loaded_count() + 1).saturating_sub(max_models))
            }
            _ if needed > self.budget => return Room::Never,
            _ => Shortfall::Bytes((self.bytes_in_use() + needed).saturating_sub(self.budget)),
        };
        if matches!(shortfall, Shortfall::Models(0) | Shortfall::Bytes(0)) {
            return Room::Made(Vec::new());
        }
        let displace = match purpose {
            Purpose::Request => None,
            Purpose::Preload(displace) => Some(displace),
        };
        let candidates = self.idle_candidates(displace);
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

    /// The idle, unpinned, loaded model the policy evicts first.
    fn idle_victim(&self, policy: &EvictionPolicy) -> Option<&ModelId> {
        policy.victim(self.idle_candidates(None).into_iter())
    }

    /// The idle, unpinned, loaded models that may leave; for a preload, only those of
    /// `displace`.
    fn idle_candidates(&self, displace: Option<&Displace>) -> Vec<Candidate<'_>> {
        let hotness = |id: &ModelId| self.stats.get(id).map_or(0, |s| s.hits + s.misses);
        self.entries
            .iter()
            .filter(|(_, e)| e.leases == 0 && !e.pinned && matches!(e.phase, Phase::Ready(_)))
            .filter(|(_, e)| {
                let awaited = e.uses == 0 && !e.unused_preload;
                !(awaited && e.ready_at.is_some_and(|at| at.elapsed() < LOAD_GRACE))
            })
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

    /// Removes model `id`; returns the model when it was loaded (the caller frees it).
    fn evict(&mut self, id: &ModelId, reason: EvictionReason) -> Option<Arc<ModelLease>> {
        let entry = self.entries.remove(id)?;
        let Phase::Ready(model) = entry.phase else {
            // Still loading: the load finds its entry gone and drops the model.
            return None;
        };
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
}

/// Counts a request among those waiting for room while it lives; when it ends, the
/// requests that waited behind it look again.
struct RoomWaiter<'a> {
    shared: &'a Shared,
    ticket: u64,
}

impl<'a> RoomWaiter<'a> {
    fn new(shared: &'a Shared) -> Self {
        let ticket = shared.next_room_waiter.fetch_add(1, Ordering::Relaxed);
        shared.room_waiters_lock().insert(ticket, Instant::now());
        Self { shared, ticket }
    }
}

impl Drop for RoomWaiter<'_> {
    fn drop(&mut self) {
        self.shared.room_waiters_lock().remove(&self.ticket);
        self.shared.room_freed.notify_waiters();
    }
}

/// A place in the bounded queue of requests waiting for room.
struct WaitingPlace<'a> {
    waiting: &'a AtomicUsize,
}

impl<'a> WaitingPlace<'a> {
    fn take(shared: &'a Shared, id: &ModelId) -> Result<Self, PoolError> {
        let max = shared.config.max_waiting;
        shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| PoolError::Busy {
                id: id.clone(),
                reason: "the queue for memory is full",
            })?;
        Ok(Self {
            waiting: &shared.waiting,
        })
    }
}

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the pool tells the registry.
enum UsageRecord {
    Access(ModelId, AccessKind, crate::registry::UnixMillis),
    Load(ModelId, u64),
}

/// A thread that writes usage records to the registry (SQLite writes stay off the async
/// runtime); it ends when the pool is dropped.
fn spawn_usage_writer(registry: Arc<Registry>) -> std::sync::mpsc::Sender<UsageRecord> {
    let (sender, records) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("registry-usage".into())
        .spawn(move || {
            for record in records {
                let written = match &record {
                    UsageRecord::Access(id, kind, at) => registry.record_access(id, *kind, *at),
                    UsageRecord::Load(id, ms) => registry.record_load(id, *ms),
                };
                if let Err(e) = written {
                    tracing::warn!(error = %e, "cannot record model usage");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the usage recorder; usage goes unrecorded");
    }
    sender
}

/// Drops a model on a blocking thread (freeing a model joins threads and unmaps memory)
/// and returns when it is gone — if this was its last reference.
async fn free(model: Arc<ModelLease>) {
    let _ = tokio::task::spawn_blocking(move || drop_model(model)).await;
}

fn free_in_background(model: Arc<ModelLease>) {
    tokio::task::spawn_blocking(move || drop_model(model));
}

fn drop_model(model: Arc<ModelLease>) {
    let last = Arc::into_inner(model);
    let was_last = last.is_some();
    drop(last);
    if was_last {
        // The model is gone: give its memory back to the system.
        crate::memory::return_free_memory();
    }
}

/// The pool's timers: keep-alive deadlines (sleeping until the earliest) and the memory
/// interval. Ends when the pool is dropped.
async fn housekeeping(shared: Weak<Shared>, deadlines_changed: Arc<Notify>) {
    let Some(interval) = shared.upgrade().map(|s| s.config.budget_interval) else {
        return;
    };
    let mut memory_tick = tokio::time::interval(interval);
    memory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    memory_tick.tick().await;
    loop {
        let next_deadline = match shared.upgrade() {
            Some(shared) => shared.expire_idle(Instant::now()),
            None => return,
        };
        let sleep = async {
            match next_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = deadlines_changed.notified() => {}
            () = sleep => {}
            _ = memory_tick.tick() => match shared.upgrade() {
                Some(shared) => shared.refresh_budget(),
                None => return,
            },
        }
    }
}

fn unix_now() -> Option<u64> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The wall-clock second of a Tokio instant; `None` beyond what the clock can name (a
/// client may ask for a keep-alive of billions of years).
fn unix_at(at: Instant) -> Option<u64> {
    let from_now = at.checked_duration_since(Instant::now()).unwrap_or_default();
    SystemTime::now()
        .checked_add(from_now)?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}
