//! What the pool loads: the [`Loader`] trait, and [`ModelLoader`], which turns the files
//! of the models directory into running workers.
//!
//! The pool itself never opens a file: it asks its loader what a model will cost
//! ([`Loader::footprint`]) and to load it ([`Loader::load`], on a blocking thread). Tests
//! give it fake models of chosen sizes and load times; `minerva serve` gives it this
//! module's [`ModelLoader`].

use std::sync::Arc;
use std::time::SystemTime;

use super::{PoolConfig, PoolError};
use crate::estimate::{Footprint, estimate};
use minerva_store::Registry;
use minerva_store::{ModelFormat, ModelId, ModelStore};
use minerva_workers::embedding::{EmbeddingService, EmbeddingServiceConfig};
use minerva_workers::memory::resident_bytes;
use minerva_workers::{LlmWorker, LlmWorkerConfig};

/// Sizes and loads models for the pool.
pub trait Loader: Send + Sync + 'static {
    /// A loaded model.
    type Model: Send + Sync + 'static;

    /// What model `id` will hold once loaded (blocking: it may read the model's files). An
    /// unknown model is an error here, before the pool reserves anything.
    fn footprint(&self, id: &ModelId) -> Result<Footprint, PoolError>;

    /// Loads model `id` (blocking) and says how many bytes the load added.
    fn load(&self, id: &ModelId) -> Result<(Self::Model, u64), PoolError>;

    /// Whether a loaded model can still serve (its worker thread runs).
    fn is_alive(&self, model: &Self::Model) -> bool;
}

/// A loaded model of the models directory.
pub enum LoadedModel {
    /// A GGUF language model with its worker.
    Llm(Arc<LlmWorker>),
    /// A sentence-embedding model with its batching worker.
    Embedding(Arc<EmbeddingService>),
}

impl LoadedModel {
    /// Whether its worker thread still runs.
    pub fn is_alive(&self) -> bool {
        match self {
            Self::Llm(worker) => worker.is_alive(),
            Self::Embedding(service) => service.is_alive(),
        }
    }
}

/// A loaded model in the pool, and what loading it cost.
pub struct ModelLease<M = LoadedModel> {
    /// Which model.
    pub id: ModelId,
    /// The model.
    pub model: M,
    /// The bytes the pool counts for it: the measured growth of resident memory, kept
    /// between the weights and KV it must hold and its reservation.
    pub bytes: u64,
    /// When it finished loading.
    pub loaded_at: SystemTime,
    /// Which load of the model this is (tells a stale lease from a fresh one).
    pub(super) generation: u64,
}

/// Loads the models of a models directory: GGUF language models into an [`LlmWorker`],
/// sentence-transformers models into an [`EmbeddingService`]. With a registry, every
/// model is checked against its recorded digest before it loads (a changed file is
/// refused).
pub struct ModelLoader {
    store: ModelStore,
    worker: LlmWorkerConfig,
    registry: Option<Arc<Registry>>,
    shape: crate::estimate::SessionShape,
}

impl ModelLoader {
    /// A loader of `store`'s models with the workers `config` asks for.
    pub fn new(store: ModelStore, config: &PoolConfig, registry: Option<Arc<Registry>>) -> Self {
        Self {
            store,
            worker: worker_config(config),
            registry,
            shape: config.session_shape(),
        }
    }

    /// The models directory.
    pub fn store(&self) -> &ModelStore {
        &self.store
    }
}

impl Loader for ModelLoader {
    type Model = LoadedModel;

    fn footprint(&self, id: &ModelId) -> Result<Footprint, PoolError> {
        let entry = self.store.resolve(id)?;
        Ok(estimate(&entry, self.shape)?)
    }

    fn load(&self, id: &ModelId) -> Result<(LoadedModel, u64), PoolError> {
        let entry = self.store.resolve(id)?;
        // Hashes on first sight or when the file changed; refuses a mismatch.
        let digest = match &self.registry {
            Some(registry) => Some(registry.check(&self.store, id)?.sha256),
            None => None,
        };
        let before = resident_bytes();
        let model = match entry.format {
            ModelFormat::Gguf => LoadedModel::Llm(Arc::new(LlmWorker::start(&entry.path, self.worker, id.as_str())?)),
            ModelFormat::SentenceTransformers => LoadedModel::Embedding(Arc::new(EmbeddingService::load(
                &entry.path,
                id.as_str(),
                EmbeddingServiceConfig::default(),
                digest.as_deref(),
            )?)),
        };
        let bytes = resident_bytes().saturating_sub(before);
        tracing::info!(model = %id, bytes, "model loaded");
        Ok((model, bytes))
    }

    fn is_alive(&self, model: &LoadedModel) -> bool {
        model.is_alive()
    }
}

/// The worker every language model of the pool gets.
pub(super) fn worker_config(config: &PoolConfig) -> LlmWorkerConfig {
    LlmWorkerConfig {
        n_ctx: config.n_ctx,
        threads: config.threads,
        parallel: config.parallel,
        prefix_cache_tokens: config.prefix_cache_tokens,
    }
}
