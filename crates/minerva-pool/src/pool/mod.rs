//! The model pool: many models under one memory budget in bytes.
//!
//! - A model is loaded on first use; concurrent requests for a loading model share its
//!   one load (single-flight), and a load runs on a blocking thread, so requests to other
//!   models go on.
//! - Before loading, the pool reserves the model's estimated footprint ([`crate::estimate`]);
//!   after loading it keeps the measured one (RSS delta). When the reservation does not
//!   fit, idle models are evicted in the order of the [`EvictionPolicy`]. A model held by a
//!   [`Lease`] is never evicted: when nothing idle is left, the request waits in a bounded
//!   FIFO queue, and the models chosen to leave for it take no new lease until their last
//!   one ends; or it fails with [`PoolError::Busy`].
//! - When its last lease ends a model's keep-alive starts; the pool sleeps until the
//!   earliest keep-alive runs out (timers, no polling), re-reads system memory on an
//!   interval to follow a dynamic budget, and unloads idle models under memory pressure.
//!
//! One task owns all of this state ([`actor`]); [`ModelPool`] is its handle, and a
//! [`Loader`] does the loading, so the pool's logic runs as well on fake models.

mod actor;
mod budget;
mod lease;
mod loader;
mod policy;
mod state;
mod stats;
mod usage;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

pub use lease::{EmbeddingLease, Lease, LlmLease, TypedLease};
pub use loader::{LoadedModel, Loader, ModelLease, ModelLoader};
pub use policy::EvictionPolicy;
pub use stats::{EvictionReason, ModelStats, PoolTotals};

use crate::estimate::{EstimateError, Footprint, SessionShape};
use crate::keep_alive::KeepAlive;
use actor::{Actor, Msg};
use minerva_engine::EngineError;
use minerva_store::{AccessKind, Registry, RegistryError, now_millis};
use minerva_store::{ModelId, ModelStore, StoreError};
use minerva_workers::pressure::{BudgetStrategy, MemorySource, ProcMemory};
use state::{Snapshot, Waiter};
use usage::UsageRecord;

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
    /// Element type of every language model's KV cache.
    pub kv_type: minerva_engine::KvType,
    /// Precision of every encoder's products unless its settings say otherwise.
    pub embedding_dtype: minerva_engine::embed::EmbeddingDtype,
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
    /// Longest speculative draft (prompt lookup) per sequence and step of a language
    /// model whose settings give none; 0 turns speculative decoding off.
    pub draft_max: usize,
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
            kv_type: minerva_engine::KvType::F16,
            embedding_dtype: minerva_engine::embed::EmbeddingDtype::F32,
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
            draft_max: minerva_workers::LlmWorkerConfig::DEFAULT_DRAFT_MAX,
        }
    }

    /// What the footprint estimate of a model loaded by this pool depends on.
    pub fn session_shape(&self) -> SessionShape {
        SessionShape {
            cached_tokens: u32::try_from(self.prefix_cache_tokens).unwrap_or(u32::MAX),
            embedding_dtype: self.embedding_dtype,
            ..loader::session_shape(&loader::worker_config(self))
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
#[derive(Debug, Clone, Default)]
pub struct AcquireOptions {
    /// The request's keep-alive; the pool's default when `None`.
    pub keep_alive: Option<KeepAlive>,
    /// Idle models this load must not evict to make room (a fallback never displaces the
    /// models routes serve first).
    pub protect: Vec<ModelId>,
}

/// Loads models on demand under a memory budget and evicts them by policy.
pub struct ModelPool<L: Loader = ModelLoader> {
    loader: Arc<L>,
    config: PoolConfig,
    registry: Option<Arc<Registry>>,
    mailbox: mpsc::UnboundedSender<Msg<L::Model>>,
    snapshot: watch::Receiver<Arc<Snapshot<L::Model>>>,
    requests: broadcast::Sender<ModelId>,
    usage: Option<std::sync::mpsc::Sender<UsageRecord>>,
    /// Each model's estimated footprint and the budget it was sized for.
    footprints: Mutex<HashMap<ModelId, (u64, Footprint)>>,
}

/// Which idle models a preload may evict.
#[derive(Debug, Clone)]
pub enum Displace {
    /// Those used fewer times than this.
    UsedLessThan(u64),
    /// These.
    Only(Vec<ModelId>),
}

/// Why a model is acquired.
pub(crate) enum Purpose {
    Request,
    /// A preload: only the idle models of `displace` may leave for it, and it never waits.
    Preload(Displace),
}

impl ModelPool {
    /// A pool over `store` reading the real system's memory. Must be called inside a
    /// Tokio runtime (it starts the pool's task).
    pub fn new(store: ModelStore, config: PoolConfig) -> Self {
        Self::with_memory_source(store, config, Arc::new(ProcMemory::default()))
    }

    /// A pool reading system memory from `memory` (a simulation in tests).
    pub fn with_memory_source(store: ModelStore, config: PoolConfig, memory: Arc<dyn MemorySource>) -> Self {
        let loader = ModelLoader::new(store, &config, None);
        Self::with_loader(loader, config, memory, None)
    }

    /// A pool that checks every model against `registry` before loading it (a file whose
    /// digest changed is refused) and records accesses and load times there.
    pub fn with_registry(store: ModelStore, config: PoolConfig, registry: Arc<Registry>) -> Self {
        let loader = ModelLoader::new(store, &config, Some(Arc::clone(&registry)));
        Self::with_loader(loader, config, Arc::new(ProcMemory::default()), Some(registry))
    }

    /// The models directory.
    pub fn store(&self) -> &ModelStore {
        self.loader.store()
    }
}

impl<L: Loader> ModelPool<L> {
    /// A pool of the models `loader` loads, reading system memory from `memory`; with a
    /// registry, accesses and load times are recorded there. Must be called inside a
    /// Tokio runtime.
    pub fn with_loader(
        loader: L,
        config: PoolConfig,
        memory: Arc<dyn MemorySource>,
        registry: Option<Arc<Registry>>,
    ) -> Self {
        let (mailbox, inbox) = mpsc::unbounded_channel();
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let requests = broadcast::channel(256).0;
        let usage = registry.as_ref().and_then(|r| usage::spawn_writer(Arc::clone(r)));
        let loader = Arc::new(loader);
        let mut actor = Actor {
            loader: Arc::clone(&loader),
            config: config.clone(),
            memory,
            state: state::State::default(),
            queue: VecDeque::new(),
            mailbox: mailbox.downgrade(),
            snapshot: snapshot_tx,
            requests: requests.clone(),
            usage: usage.clone(),
            outbox: Vec::new(),
            to_free: Vec::new(),
        };
        actor.refresh_budget();
        actor.publish();
        tokio::spawn(actor.run(inbox));
        Self {
            loader,
            config,
            registry,
            mailbox,
            snapshot,
            requests,
            usage,
            footprints: Mutex::default(),
        }
    }

    /// The loader.
    pub fn loader(&self) -> &L {
        &self.loader
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The registry the pool checks models against and records usage in, if any.
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// The model of every request from now on (not preloads), as each one ends (its
    /// lease released): the moment its model is idle and may make way for the next.
    pub fn requests(&self) -> broadcast::Receiver<ModelId> {
        self.requests.subscribe()
    }

    /// Whether model `id` is loaded or loading.
    pub fn is_resident(&self, id: &ModelId) -> bool {
        self.snapshot.borrow().resident.contains(id)
    }

    /// Returns model `id`, loading it first if needed (evicting idle models by policy to
    /// make room, or waiting for room). Concurrent callers share one load.
    pub async fn acquire(&self, id: &ModelId) -> Result<Lease<L::Model>, PoolError> {
        self.acquire_with(id, AcquireOptions::default()).await
    }

    /// [`ModelPool::acquire`] with the request's options.
    pub async fn acquire_with(&self, id: &ModelId, options: AcquireOptions) -> Result<Lease<L::Model>, PoolError> {
        self.acquire_as(id, Purpose::Request, options).await
    }

    /// Loads model `id` without using it, if it fits without evicting a model that is in
    /// use or used more than it; never waits for room. Counted as a preload when it was
    /// not loaded yet.
    pub async fn preload(&self, id: &ModelId) -> Result<Lease<L::Model>, PoolError> {
        let hotness = self
            .snapshot
            .borrow()
            .stats
            .iter()
            .find(|(i, _)| i == id)
            .map_or(0, |(_, s)| s.hits + s.misses);
        self.preload_displacing(id, Displace::UsedLessThan(hotness)).await
    }

    /// Loads model `id` without using it, if it fits once the idle models of `displace`
    /// leave; never waits for room (the preloader: it displaces the models its strategy
    /// ranks below `id`).
    pub async fn preload_displacing(&self, id: &ModelId, displace: Displace) -> Result<Lease<L::Model>, PoolError> {
        self.acquire_as(id, Purpose::Preload(displace), AcquireOptions::default())
            .await
    }

    async fn acquire_as(
        &self,
        id: &ModelId,
        purpose: Purpose,
        options: AcquireOptions,
    ) -> Result<Lease<L::Model>, PoolError> {
        let footprint = self.footprint(id)?;
        if let Some(usage) = &self.usage {
            let kind = match purpose {
                Purpose::Request => AccessKind::Request,
                Purpose::Preload(_) => AccessKind::Preload,
            };
            let _ = usage.send(UsageRecord::Access(id.clone(), kind, now_millis()));
        }
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter {
            id: id.clone(),
            purpose,
            // The request's, else the model's own setting, else the pool's.
            keep_alive: options
                .keep_alive
                .or(footprint.keep_alive)
                .unwrap_or(self.config.keep_alive),
            protect: options.protect,
            footprint,
            deadline: Instant::now() + self.config.wait_timeout,
            counted: false,
            reply,
        };
        self.mailbox
            .send(Msg::Acquire(waiter))
            .map_err(|_| PoolError::Interrupted(id.clone()))?;
        answer.await.map_err(|_| PoolError::Interrupted(id.clone()))?
    }

    /// What a load of model `id` reserves: the estimate from its files for a session that
    /// fits the budget (the measurement after the load replaces it). Computed once per
    /// model and budget.
    fn footprint(&self, id: &ModelId) -> Result<Footprint, PoolError> {
        let budget = self.snapshot.borrow().totals.budget_bytes;
        let known = self
            .footprints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied();
        // A model that is not in memory is sized afresh: its settings may have changed
        // since it was last loaded (they take effect on the next load).
        if let Some((for_budget, footprint)) = known
            && for_budget == budget
            && self.is_resident(id)
        {
            return Ok(footprint);
        }
        let footprint = self.loader.footprint(id, budget)?;
        self.footprints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (budget, footprint));
        Ok(footprint)
    }

    /// Unloads model `id`; returns whether it was loaded. Requests holding a lease finish
    /// first: the memory is freed when the last lease ends. When this call held the last
    /// reference, the memory is freed before it returns.
    pub async fn unload(&self, id: &ModelId) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.mailbox.send(Msg::Unload { id: id.clone(), reply }).is_err() {
            return false;
        }
        match answer.await {
            Ok(Some(model)) => {
                actor::free(model).await;
                true
            }
            _ => false,
        }
    }

    /// Waits until the pool has handled everything sent to it before (the end of a
    /// dropped lease, say), so that the getters show it.
    pub async fn sync(&self) {
        let (reply, answer) = oneshot::channel();
        if self.mailbox.send(Msg::Sync(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    /// The models loaded now, by id.
    pub fn loaded(&self) -> Vec<Arc<ModelLease<L::Model>>> {
        self.snapshot.borrow().loaded.clone()
    }

    /// The bytes the pool counts for a loaded model: its load's (the lease's `bytes`) plus
    /// those of the adapters loaded for it since ([`Lease::charge`]).
    pub fn counted_bytes(&self, id: &ModelId) -> Option<u64> {
        self.snapshot.borrow().counted.get(id).copied()
    }

    /// Counters of every model used since start, by id.
    pub fn stats(&self) -> Vec<(ModelId, ModelStats)> {
        self.snapshot.borrow().stats.clone()
    }

    /// Counters of the whole pool.
    pub fn totals(&self) -> PoolTotals {
        self.snapshot.borrow().totals.clone()
    }
}
