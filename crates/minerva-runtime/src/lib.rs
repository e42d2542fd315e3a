//! Minerva's model runtime: which models exist, where their files are, and which are
//! loaded.
//!
//! - [`ModelStore`]: the models directory (ids, paths confined to it, formats).
//! - [`ModelPool`]: loads models on first use (single-flight), hands out `Arc` leases,
//!   unloads on request, and counts hits, misses and loads per model.
//! - [`LlmWorker`]: the thread that owns a language model's session.
//! - [`Registry`]: every known model in SQLite (digest, metadata, integrity, usage),
//!   crash-safe imports.
//! - [`patterns`]: hot/cold models, trends and preload recommendations from the access log.
//!
//! This crate never speaks HTTP (the server's job) and never implements a forward pass
//! (the engine's).

mod hash;
mod llm_worker;
mod memory;
mod model_id;
pub mod patterns;
mod pool;
mod registry;
mod store;

pub use hash::{sha256_file, sha256_model};
pub use llm_worker::{GenerationEvent, LlmWorker};
pub use memory::resident_bytes;
pub use model_id::{InvalidModelId, ModelId};
pub use pool::{LoadedModel, ModelLease, ModelPool, ModelStats, PoolConfig, PoolError};
pub use registry::{
    AccessEvent, AccessKind, EVENT_RETENTION, ImportMode, ImportOptions, MAX_EVENTS, ModelRecord, ModelStatus,
    Progress, Registry, RegistryError, UnixMillis, now_millis,
};
pub use store::{ModelEntry, ModelFormat, ModelStore, StoreError};
