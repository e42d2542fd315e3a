//! Minerva's model runtime: which models exist, where their files are, and which are
//! loaded.
//!
//! - [`ModelStore`]: the models directory (ids, paths confined to it, formats).
//! - [`ModelPool`]: loads models on first use (single-flight), hands out `Arc` leases,
//!   unloads on request, and counts hits, misses and loads per model.
//! - [`LlmWorker`]: the thread that owns a language model's session and batches its
//!   generations (continuous batching, prefix KV cache).
//!
//! This crate never speaks HTTP (the server's job) and never implements a forward pass
//! (the engine's).

mod hash;
mod llm_worker;
mod memory;
mod model_id;
mod pool;
mod prefix_cache;
mod scheduler;
mod store;

pub use hash::sha256_file;
pub use llm_worker::{GenerationEvent, LlmWorker, LlmWorkerConfig};
pub use memory::resident_bytes;
pub use model_id::{InvalidModelId, ModelId};
pub use pool::{LoadedModel, ModelLease, ModelPool, ModelStats, PoolConfig, PoolError};
pub use store::{ModelEntry, ModelFormat, ModelStore, StoreError};
