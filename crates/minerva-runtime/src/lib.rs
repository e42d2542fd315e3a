//! Minerva's model runtime: which models exist and where their files are.
//!
//! Today this is the models directory ([`ModelStore`]): model ids, paths confined to the
//! directory, formats and file hashes. The memory-budgeted model pool and the SQLite
//! registry build on it. This crate never runs a forward pass (that is the engine's job)
//! and never speaks HTTP (the server's).

mod hash;
mod model_id;
mod store;

pub use hash::sha256_file;
pub use model_id::{InvalidModelId, ModelId};
pub use store::{ModelEntry, ModelFormat, ModelStore, StoreError};
