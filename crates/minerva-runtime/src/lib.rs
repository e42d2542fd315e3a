//! Minerva's model runtime: which models exist, where their files are, and which are
//! loaded.
//!
//! - [`ModelStore`]: the models directory (ids, paths confined to it, formats).
//! - [`ModelPool`]: loads models on first use (single-flight), hands out `Arc` leases,
//!   unloads on request, and counts hits, misses and loads per model.
//! - [`LlmWorker`]: the thread that owns a language model's session.
//! - [`embedding`]: the embedding pipeline (batching worker, memory strategies, cache).
//!
//! This crate never speaks HTTP (the server's job) and never implements a forward pass
//! (the engine's).

pub mod embedding;
mod hash;
mod llm_worker;
mod memory;
mod model_id;
mod pool;
mod store;

pub use hash::{fingerprint_dir, sha256_file};
pub use llm_worker::{GenerationEvent, LlmWorker};
pub use memory::resident_bytes;
pub use model_id::{InvalidModelId, ModelId};
pub use pool::{LoadedModel, ModelLease, ModelPool, ModelStats, PoolConfig, PoolError};
pub use store::{ModelEntry, ModelFormat, ModelStore, StoreError};
