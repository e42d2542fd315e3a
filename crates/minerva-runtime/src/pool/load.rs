//! Turning model files into a loaded model.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::{PoolConfig, PoolError};
use crate::embedding::{EmbeddingService, EmbeddingServiceConfig};
use crate::llm_worker::{LlmWorker, LlmWorkerConfig};
use crate::memory::resident_bytes;
use crate::{ModelFormat, ModelId};

/// A loaded model.
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

/// A loaded model and what loading it cost.
pub struct ModelLease {
    /// Which model.
    pub id: ModelId,
    /// The model.
    pub model: LoadedModel,
    /// Resident memory the load added (the estimate when other loads ran at the same time).
    pub bytes: u64,
    /// When it finished loading.
    pub loaded_at: SystemTime,
    /// Which load of the model this is (tells a stale lease from a fresh one).
    pub(super) generation: u64,
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

/// Loads a model on the calling (blocking) thread; `bytes` is the RSS the load added.
/// `digest` is the model's SHA-256 when the registry has just checked it.
pub(super) fn load(
    id: &ModelId,
    format: ModelFormat,
    path: &Path,
    config: &PoolConfig,
    generation: u64,
    digest: Option<&str>,
) -> Result<ModelLease, PoolError> {
    let before = resident_bytes();
    let model = match format {
        ModelFormat::Gguf => LoadedModel::Llm(Arc::new(LlmWorker::start(path, worker_config(config), id.as_str())?)),
        ModelFormat::SentenceTransformers => LoadedModel::Embedding(Arc::new(EmbeddingService::load(
            path,
            id.as_str(),
            EmbeddingServiceConfig::default(),
            digest,
        )?)),
    };
    let bytes = resident_bytes().saturating_sub(before);
    tracing::info!(model = %id, bytes, "model loaded");
    Ok(ModelLease {
        id: id.clone(),
        model,
        bytes,
        loaded_at: SystemTime::now(),
        generation,
    })
}
