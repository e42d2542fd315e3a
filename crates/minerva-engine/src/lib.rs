//! Minerva's inference engine: model formats, tokenizers, chat templates, sampling and
//! forward passes.
//!
//! This crate owns everything that touches model weights and tokens. It knows nothing
//! of HTTP, of memory budgets or of which models are loaded: the runtime and server
//! crates build on the small traits here.
//!
//! - [`llm`]: the [`LanguageModel`]/[`Session`] traits and the llama.cpp backend that
//!   implements them for GGUF files (validated first by `minerva_gguf`).
//! - [`generate`], [`sampling`], [`detokenize`], [`chat`]: turning a prompt into text.
//! - [`compute`]: the one compute budget every forward pass of the process runs in.
//! - [`perplexity`]: llama.cpp's perplexity method on top of the same traits.
//! - [`embed`]: BERT-style sentence embeddings through Candle.
//!
//! The engine never spawns threads of its own and never blocks on I/O beyond loading a
//! model file; callers decide where it runs.

pub mod chat;
pub mod compute;
pub mod constraint;
mod cpu_pressure;
pub mod detokenize;
pub mod embed;
mod error;
pub mod generate;
use minerva_gguf as gguf;
pub mod llm;
pub mod perplexity;
pub mod sampling;

pub use error::EngineError;
pub use llm::{KvType, LanguageModel, ModelMetadata, SeqId, Session, SessionParams, TokenId};

/// Result type of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
