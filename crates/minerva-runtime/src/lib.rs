//! Minerva's model runtime: which models exist, where their files are, and which are
//! loaded under the memory budget.
//!
//! - [`ModelStore`]: the models directory (ids, paths confined to it, formats).
//! - [`ModelPool`]: loads models on first use (single-flight) under a byte budget, evicts
//!   idle ones by [`EvictionPolicy`], hands out [`Lease`]s that keep a model in memory,
//!   unloads idle models when their [`KeepAlive`] runs out or memory runs short.
//! - [`estimate`]: a model's footprint from its files, before loading it.
//! - [`pressure`]: system memory (meminfo, cgroups) and the budget it allows.
//! - [`LlmWorker`]: the thread that owns a language model's session and batches its
//!   generations (continuous batching, prefix KV cache).
//! - [`Registry`]: every known model in SQLite (digest, metadata, integrity, usage),
//!   crash-safe imports.
//! - [`patterns`]: hot/cold models, trends and preload recommendations from the access log.
//! - [`preload`]: the preloader that acts on them (warm start, rate-limited preloads).
//! - [`embedding`]: the embedding pipeline (batching worker, memory strategies, cache).
//!
//! This crate never speaks HTTP (the server's job) and never implements a forward pass
//! (the engine's).

pub mod embedding;
pub mod estimate;
mod hash;
mod keep_alive;
mod llm_worker;
mod memory;
mod model_id;
pub mod patterns;
mod pool;
mod prefix_cache;
pub mod preload;
pub mod pressure;
mod registry;
mod scheduler;
mod store;
mod worker_thread;

pub use hash::{sha256_file, sha256_model};
pub use keep_alive::{InvalidKeepAlive, KeepAlive};
pub use llm_worker::{GenerationEvent, LlmWorker, LlmWorkerConfig};
pub use memory::resident_bytes;
pub use model_id::{InvalidModelId, ModelId};
pub use pool::{
    AcquireOptions, Budget, Displace, EmbeddingLease, EvictionPolicy, EvictionReason, Lease, LlmLease, LoadedModel,
    Loader, ModelLease, ModelLoader, ModelPool, ModelStats, PoolConfig, PoolError, PoolTotals, TypedLease,
};
pub use registry::{
    AccessEvent, AccessKind, EVENT_RETENTION, ImportMode, ImportOptions, MAX_EVENTS, ModelRecord, ModelStatus,
    Progress, Registry, RegistryError, UnixMillis, now_millis,
};
pub use store::{ModelEntry, ModelFormat, ModelStore, StoreError};
