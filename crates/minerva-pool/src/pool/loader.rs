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
use crate::estimate::{Footprint, SessionShape, estimate};
use crate::keep_alive::KeepAlive;
use minerva_engine::embed::EmbeddingDtype;
use minerva_engine::llm::RopeScaling;
use minerva_store::Registry;
use minerva_store::{ModelEntry, ModelFormat, ModelId, ModelSettings, ModelStore};
use minerva_workers::embedding::{EmbeddingService, EmbeddingServiceConfig};
use minerva_workers::memory::resident_bytes;
use minerva_workers::{LlmWorker, LlmWorkerConfig};

/// Sizes and loads models for the pool.
pub trait Loader: Send + Sync + 'static {
    /// A loaded model.
    type Model: Send + Sync + 'static;

    /// What model `id` will hold once loaded under a pool of `budget` bytes (blocking: it
    /// may read the model's files). A loader may shrink what it can (a language model's
    /// KV cache) so that the model fits the budget; the pool refuses a model whose
    /// smallest footprint does not. An unknown model is an error here, before the pool
    /// reserves anything.
    fn footprint(&self, id: &ModelId, budget: u64) -> Result<Footprint, PoolError>;

    /// Loads model `id` (blocking) as `footprint` planned it, and says how many bytes the
    /// load added.
    fn load(&self, id: &ModelId, footprint: &Footprint) -> Result<(Self::Model, u64), PoolError>;

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
    /// What the pool estimated for it before the load, with the session it was sized
    /// for (a tight budget shrinks a language model's KV cache).
    pub estimate: Footprint,
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
    shape: SessionShape,
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

    /// Model `id`'s settings from the registry (defaults without one, or when the
    /// registry cannot be read: a setting never keeps a model from loading).
    fn settings(&self, id: &ModelId) -> ModelSettings {
        let Some(registry) = &self.registry else {
            return ModelSettings::default();
        };
        registry.settings(id).unwrap_or_else(|e| {
            tracing::warn!(model = %id, error = %e, "cannot read the model's settings; using the defaults");
            ModelSettings::default()
        })
    }

    /// The model that drafts for `id` (its `draft_model` setting), when it names a language
    /// model of the store; a draft model that is gone or not a GGUF model is left out with
    /// a warning (the model serves without it).
    fn draft_model(&self, id: &ModelId, settings: &ModelSettings) -> Option<ModelEntry> {
        let name = settings.draft_model.as_deref()?;
        let entry = ModelId::new(name)
            .map_err(|e| e.to_string())
            .and_then(|draft| self.store.resolve(&draft).map_err(|e| e.to_string()))
            .and_then(|entry| match entry.format {
                ModelFormat::Gguf => Ok(entry),
                _ => Err(format!("{name} is not a language model")),
            });
        entry
            .inspect_err(|e| tracing::warn!(model = %id, error = %e, "the model serves without its draft model"))
            .ok()
    }

    /// The worker and session shape for model `id`: the pool's, with the model's own
    /// context size, parallel sequences, KV type and RoPE scaling where its `settings`
    /// give them.
    fn worker_for(&self, id: &ModelId, settings: &ModelSettings) -> (LlmWorkerConfig, SessionShape) {
        let embedding_dtype = settings
            .embedding_dtype
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(self.shape.embedding_dtype);
        let rope =
            RopeScaling::from_setting(settings.rope_scaling.as_deref(), settings.rope_factor).unwrap_or_else(|e| {
                tracing::warn!(model = %id, error = %e, "ignoring the model's RoPE scaling");
                RopeScaling::Model
            });
        let worker = LlmWorkerConfig {
            n_ctx: settings.num_ctx.unwrap_or(self.worker.n_ctx),
            parallel: settings.parallel.unwrap_or(self.worker.parallel),
            draft_max: settings.draft_max.unwrap_or(self.worker.draft_max),
            threads: settings.threads.unwrap_or(self.worker.threads),
            kv_type: settings
                .kv_type
                .as_deref()
                .and_then(|t| t.parse().ok())
                .unwrap_or(self.worker.kv_type),
            batch: settings.batch.unwrap_or(self.worker.batch),
            flash_attention: settings.flash_attention.unwrap_or(self.worker.flash_attention),
            rope,
            ..self.worker
        };
        // The model's flash_attention=false over a server whose KV type is quantized: the
        // model's own setting wins, with the f16 KV cache llama.cpp needs for it (the
        // settings refuse the pair when both are the model's).
        let worker = if !worker.flash_attention && worker.kv_type != minerva_engine::KvType::F16 {
            tracing::warn!(model = %id, "flash attention off: this model's KV cache is f16, not the server's type");
            LlmWorkerConfig {
                kv_type: minerva_engine::KvType::F16,
                ..worker
            }
        } else {
            worker
        };
        let shape = SessionShape {
            cached_tokens: self.shape.cached_tokens,
            embedding_dtype,
            ..session_shape(&worker)
        };
        (worker, shape)
    }
}

impl Loader for ModelLoader {
    type Model = LoadedModel;

    fn footprint(&self, id: &ModelId, budget: u64) -> Result<Footprint, PoolError> {
        let entry = self.store.resolve(id)?;
        let settings = self.settings(id);
        let (worker, shape) = self.worker_for(id, &settings);
        let keep_alive = settings.keep_alive.as_deref().and_then(|k| {
            KeepAlive::parse(k)
                .inspect_err(|e| tracing::warn!(model = %id, error = %e, "ignoring the model's keep_alive"))
                .ok()
        });
        let draft = self.draft_model(id, &settings);
        let residency = |footprint: Footprint| {
            // A draft model holds its weights and a session shaped as the model's (f16 KV).
            let draft = draft.as_ref().zip(footprint.shape).and_then(|(entry, shape)| {
                let shape = SessionShape {
                    kv_type: minerva_engine::KvType::F16,
                    flash_attention: true,
                    cached_tokens: 0,
                    ..shape
                };
                estimate(entry, shape)
                    .inspect_err(|e| tracing::warn!(model = %id, error = %e, "cannot size the draft model"))
                    .ok()
            });
            Footprint {
                keep_alive,
                pinned: settings.pinned.unwrap_or(false),
                weights: footprint.weights.saturating_add(draft.map_or(0, |d| d.weights)),
                kv_cache: footprint.kv_cache.saturating_add(draft.map_or(0, |d| d.kv_cache)),
                scratch: footprint.scratch.saturating_add(draft.map_or(0, |d| d.scratch)),
                ..footprint
            }
        };
        let full = residency(estimate(&entry, shape)?);
        if full.total() <= budget || entry.format != ModelFormat::Gguf {
            return Ok(full);
        }
        // Too big as configured: the largest smaller session that fits, else the smallest
        // (which the pool then refuses with what it needs).
        let mut smallest = full;
        for worker in smaller_sessions(worker) {
            let shape = SessionShape {
                cached_tokens: self.shape.cached_tokens,
                ..session_shape(&worker)
            };
            smallest = residency(estimate(&entry, shape)?);
            if smallest.total() <= budget {
                tracing::info!(
                    model = %id,
                    budget,
                    configured = full.total(),
                    bytes = smallest.total(),
                    kv_cells = shape.n_ctx,
                    parallel = shape.n_seq_max,
                    "the memory budget shrinks the model's KV cache"
                );
                break;
            }
        }
        Ok(smallest)
    }

    fn load(&self, id: &ModelId, footprint: &Footprint) -> Result<(LoadedModel, u64), PoolError> {
        let entry = self.store.resolve(id)?;
        // Hashes on first sight or when the file changed; refuses a mismatch.
        let digest = match &self.registry {
            Some(registry) => Some(registry.check(&self.store, id)?.sha256),
            None => None,
        };
        let before = resident_bytes();
        let model = match entry.format {
            ModelFormat::Gguf => {
                let settings = self.settings(id);
                let (configured, _) = self.worker_for(id, &settings);
                let worker = match footprint.shape {
                    // The session the estimate planned: as many sequences, requests of at
                    // most as many tokens as it has cells.
                    Some(shape) => LlmWorkerConfig {
                        parallel: shape.n_seq_max as usize,
                        n_ctx: configured.n_ctx.min(shape.n_ctx),
                        ..configured
                    },
                    None => configured,
                };
                let draft = self.draft_model(id, &settings);
                let started = LlmWorker::start_with_draft(
                    &entry.path,
                    worker,
                    id.as_str(),
                    draft.as_ref().map(|d| d.path.as_path()),
                );
                let worker = started?.with_settings(settings);
                LoadedModel::Llm(Arc::new(worker))
            }
            ModelFormat::SentenceTransformers => LoadedModel::Embedding(Arc::new(EmbeddingService::load(
                &entry.path,
                id.as_str(),
                EmbeddingServiceConfig {
                    dtype: footprint.embedding_dtype.unwrap_or_default(),
                    ..EmbeddingServiceConfig::default()
                },
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

/// Smallest context a tight budget shrinks a language model's session to.
const MIN_CELLS: u32 = 512;

/// Sessions smaller than `worker`'s, largest first: the KV cells halved each step down to
/// [`MIN_CELLS`], with as many parallel sequences as keep 512 cells each (at least one),
/// and requests of at most as many tokens as there are cells.
fn smaller_sessions(worker: LlmWorkerConfig) -> Vec<LlmWorkerConfig> {
    let configured = session_shape(&worker).n_ctx;
    let mut sessions = Vec::new();
    let mut cells = configured / 2;
    while cells >= MIN_CELLS {
        sessions.push(LlmWorkerConfig {
            parallel: worker.parallel.min((cells / MIN_CELLS) as usize).max(1),
            n_ctx: worker.n_ctx.min(cells),
            ..worker
        });
        cells /= 2;
    }
    sessions
}

/// The session shape of a worker (without the prefix cache).
pub(super) fn session_shape(worker: &LlmWorkerConfig) -> SessionShape {
    let params = worker.session_params(worker.n_ctx);
    SessionShape {
        n_ctx: params.n_ctx,
        cached_tokens: 0,
        n_batch: params.n_batch,
        n_seq_max: params.n_seq_max,
        kv_type: params.kv_type,
        flash_attention: params.flash_attention,
        embedding_dtype: EmbeddingDtype::F32,
    }
}

/// The worker every language model of the pool gets.
pub(super) fn worker_config(config: &PoolConfig) -> LlmWorkerConfig {
    LlmWorkerConfig {
        n_ctx: config.n_ctx,
        threads: config.threads,
        parallel: config.parallel,
        prefix_cache_tokens: config.prefix_cache_tokens,
        kv_type: config.kv_type,
        rope: RopeScaling::Model,
        draft_max: config.draft_max,
        batch: LlmWorkerConfig::DEFAULT_BATCH,
        flash_attention: true,
    }
}
