//! The model pool: models are loaded on first use (one load per model however many
//! requests ask at once), shared through `Arc` leases, and unloaded on request.
//!
//! This is the simple pool the HTTP API starts on; the memory-budgeted pool with
//! eviction policies replaces its insides, not its interface.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use minerva_engine::EngineError;
use minerva_engine::embed::EmbeddingModel;
use tokio::sync::OnceCell;

use crate::llm_worker::{LlmWorker, LlmWorkerConfig};
use crate::memory::resident_bytes;
use crate::{ModelFormat, ModelId, ModelStore, StoreError};

/// How loaded models are set up.
#[derive(Debug, Clone, Copy)]
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
}

impl PoolConfig {
    /// Default of [`PoolConfig::parallel`].
    pub const DEFAULT_PARALLEL: usize = 16;
    /// Default of [`PoolConfig::prefix_cache_tokens`].
    pub const DEFAULT_PREFIX_CACHE_TOKENS: usize = 4096;
}

/// A loaded model.
pub enum LoadedModel {
    /// A GGUF language model with its worker.
    Llm(LlmWorker),
    /// A sentence-embedding model.
    Embedding(Box<EmbeddingModel>),
}

/// A loaded model and what loading it cost. Holding the `Arc` keeps it alive even if it
/// is unloaded meanwhile (the lease of an in-flight request).
pub struct ModelLease {
    /// Which model.
    pub id: ModelId,
    /// The model.
    pub model: LoadedModel,
    /// Resident memory the load added.
    pub bytes: u64,
    /// When it finished loading.
    pub loaded_at: SystemTime,
}

/// Why the pool could not hand out a model.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The id does not resolve in the models directory.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model files failed to load.
    #[error(transparent)]
    Load(#[from] EngineError),
    /// The loading task died.
    #[error("loading {0} was interrupted")]
    Interrupted(ModelId),
}

/// Counters of one model, kept across unloads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelStats {
    /// Whether it is loaded now.
    pub loaded: bool,
    /// Resident memory its last load added.
    pub bytes: u64,
    /// Requests that found it loaded.
    pub hits: u64,
    /// Requests that had to wait for a load.
    pub misses: u64,
    /// Times it was unloaded.
    pub evictions: u64,
    /// Loads started by a preload request.
    pub preloads: u64,
    /// Duration of its last load in milliseconds.
    pub load_ms: f64,
    /// Seconds since the Unix epoch of its last use.
    pub last_used: Option<u64>,
}

type Slot = Arc<OnceCell<Arc<ModelLease>>>;

/// Loads models on demand and keeps them until unloaded.
pub struct ModelPool {
    store: ModelStore,
    config: PoolConfig,
    slots: Mutex<HashMap<ModelId, Slot>>,
    stats: Mutex<HashMap<ModelId, ModelStats>>,
}

impl ModelPool {
    /// A pool over `store`.
    pub fn new(store: ModelStore, config: PoolConfig) -> Self {
        Self {
            store,
            config,
            slots: Mutex::default(),
            stats: Mutex::default(),
        }
    }

    /// The models directory.
    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Returns model `id`, loading it first if needed. Concurrent callers share one load.
    pub async fn acquire(&self, id: &ModelId) -> Result<Arc<ModelLease>, PoolError> {
        self.acquire_counted(id, false).await
    }

    /// Loads model `id` without using it (counted as a preload when it was not loaded).
    pub async fn preload(&self, id: &ModelId) -> Result<Arc<ModelLease>, PoolError> {
        self.acquire_counted(id, true).await
    }

    async fn acquire_counted(&self, id: &ModelId, preload: bool) -> Result<Arc<ModelLease>, PoolError> {
        let entry = self.store.resolve(id)?;
        let slot = Arc::clone(self.lock_slots().entry(id.clone()).or_default());
        let was_loaded = slot.initialized();
        self.update_stats(id, |s| {
            match (was_loaded, preload) {
                (true, _) => s.hits += 1,
                (false, false) => s.misses += 1,
                (false, true) => s.preloads += 1,
            }
            s.last_used = unix_now();
        });
        let config = self.config;
        let result = slot
            .get_or_try_init(|| async {
                let task_id = id.clone();
                let started = Instant::now();
                let load = tokio::task::spawn_blocking(move || load(&task_id, entry.format, &entry.path, config));
                let lease = load.await.map_err(|_| PoolError::Interrupted(id.clone()))??;
                let elapsed = started.elapsed();
                self.update_stats(&lease.id, |s| {
                    s.loaded = true;
                    s.bytes = lease.bytes;
                    s.load_ms = duration_ms(elapsed);
                });
                Ok::<_, PoolError>(Arc::new(lease))
            })
            .await
            .cloned();
        if result.is_err() {
            // A failed load leaves nothing registered as loaded.
            let mut slots = self.lock_slots();
            if slots.get(id).is_some_and(|s| Arc::ptr_eq(s, &slot) && !s.initialized()) {
                slots.remove(id);
            }
        }
        result
    }

    /// Unloads model `id`; returns whether it was loaded. Requests holding a lease finish
    /// first: the memory is freed when the last lease is dropped.
    pub fn unload(&self, id: &ModelId) -> bool {
        let removed = self.lock_slots().remove(id);
        let was_loaded = removed.is_some_and(|slot| slot.initialized());
        if was_loaded {
            self.update_stats(id, |s| {
                s.loaded = false;
                s.evictions += 1;
            });
        }
        was_loaded
    }

    /// The models loaded now.
    pub fn loaded(&self) -> Vec<Arc<ModelLease>> {
        let mut leases: Vec<_> = self
            .lock_slots()
            .values()
            .filter_map(|slot| slot.get().cloned())
            .collect();
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        leases
    }

    /// Counters of every model used since start.
    pub fn stats(&self) -> Vec<(ModelId, ModelStats)> {
        let mut stats: Vec<_> = self
            .lock_stats()
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<ModelId, Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, HashMap<ModelId, ModelStats>> {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update_stats(&self, id: &ModelId, update: impl FnOnce(&mut ModelStats)) {
        update(self.lock_stats().entry(id.clone()).or_default());
    }
}

fn load(
    id: &ModelId,
    format: ModelFormat,
    path: &std::path::Path,
    config: PoolConfig,
) -> Result<ModelLease, PoolError> {
    let before = resident_bytes();
    let model = match format {
        ModelFormat::Gguf => {
            let worker = LlmWorkerConfig {
                n_ctx: config.n_ctx,
                threads: config.threads,
                parallel: config.parallel,
                prefix_cache_tokens: config.prefix_cache_tokens,
            };
            LoadedModel::Llm(LlmWorker::start(path, worker, id.as_str())?)
        }
        ModelFormat::SentenceTransformers => LoadedModel::Embedding(Box::new(EmbeddingModel::load(path)?)),
    };
    let bytes = resident_bytes().saturating_sub(before);
    tracing::info!(model = %id, bytes, "model loaded");
    Ok(ModelLease {
        id: id.clone(),
        model,
        bytes,
        loaded_at: SystemTime::now(),
    })
}

fn unix_now() -> Option<u64> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
