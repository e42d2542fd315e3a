//! The embedding pipeline of one loaded embedding model (seed 003 made real).
//!
//! - [`EmbeddingService`]: a dedicated thread owns the model; concurrent requests queue
//!   in front of it and are merged into batches cut by a token budget from inputs of
//!   similar length ([`batcher`]); each request gets its vectors back in order.
//! - [`optimizer::BatchOptimizer`]: the token budget hill-climbs on measured throughput.
//! - [`strategy`]: the system's memory use picks how large a batch may be, down to one
//!   input at a time (streaming) when memory is critical.
//! - [`EmbeddingCache`]: vectors by content hash, shared by every model of a server, with
//!   an optional [`shared::SharedLevel`] behind it that servers share (Redis).

pub mod batcher;
mod cache;
pub mod optimizer;
mod service;
pub mod shared;
pub mod strategy;

pub use cache::{CacheConfig, CacheFileError, CacheKey, CacheStats, Cached, EmbeddingCache, KeyContext};
pub use service::{
    EmbedSettings, Embedded, EmbeddingError, EmbeddingService, EmbeddingServiceConfig, Lookup, ServiceStats,
};
pub use strategy::{MemoryThresholds, Strategy};

/// One input of an embeddings request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput {
    /// Text, tokenized by the model.
    Text(String),
    /// Token ids as the model's tokenizer makes them (special tokens included).
    Tokens(Vec<u32>),
}
