//! The models on disk, and what Minerva knows of them.
//!
//! - [`ModelId`] and [`ModelStore`]: the models directory (ids that can never name a path,
//!   paths confined to the directory, formats).
//! - [`sha256_model`] and friends: SHA-256 of model files and directories.
//! - [`Registry`]: every known model in SQLite, or in PostgreSQL shared by replicas
//!   (digest, metadata, integrity, usage), crash-safe imports.
//! - [`Modelfile`]: Ollama's recipe for a model made from another (FROM, PARAMETER,
//!   SYSTEM).
//! - [`patterns`]: hot/cold models, trends and preload recommendations from the access log.
//!
//! This crate reads GGUF headers through `minerva-gguf` and never links llama.cpp; it
//! never loads a model, never speaks HTTP. Its one thread is the PostgreSQL registry's
//! connection driver, when that registry is used.

mod hash;
mod model_id;
mod modelfile;
pub mod patterns;
mod registry;
mod store;

pub use hash::{digest_bytes, sha256_file, sha256_model};
pub use model_id::{InvalidModelId, ModelId};
pub use modelfile::{Modelfile, ModelfileError};
pub use registry::{
    AUDIT_RETENTION, AccessEvent, AccessKind, AdapterRecord, AuditEntry, DatabaseError, EVENT_RETENTION, HistoryEntry,
    ImportMode, ImportOptions, Lineage, MAX_EVENTS, ModelRecord, ModelSettings, ModelStatus, Progress, Registry,
    RegistryError, SETTING_KEYS, UnixMillis, is_postgres_url, now_millis, safetensors_header_summary,
};
pub use store::{ADAPTERS_DIR, ModelEntry, ModelFormat, ModelStore, SENTENCE_TRANSFORMERS_FILES, StoreError};
