//! The engine's error type: every failure a caller can see, each saying what failed.

use std::path::PathBuf;

use crate::gguf::GgufError;

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The GGUF file failed validation before it reached llama.cpp.
    #[error(transparent)]
    InvalidGguf(#[from] GgufError),

    /// llama.cpp refused a file that passed our own validation.
    #[error("{path}: llama.cpp could not load the model: {reason}")]
    LlamaLoad { path: PathBuf, reason: String },

    /// The embedding model directory is incomplete or inconsistent.
    #[error("{path}: {reason}")]
    InvalidEmbeddingModel { path: PathBuf, reason: String },

    /// A request parameter is out of range.
    #[error("invalid parameter `{param}`: {reason}")]
    InvalidParameter { param: &'static str, reason: String },

    /// The prompt does not fit in the context window.
    #[error("the prompt has {tokens} tokens but the context holds {n_ctx}; shorten it or raise the context size")]
    ContextOverflow { tokens: usize, n_ctx: u32 },

    /// An embedding input is longer than the model accepts and truncation was forbidden.
    #[error(
        "input {index} has {tokens} tokens, more than the model's maximum of {max}; shorten it or allow truncation"
    )]
    InputTooLong { index: usize, tokens: usize, max: usize },

    /// The model has no chat template, or rendering it failed.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// The forward pass failed.
    #[error("decode failed: {0}")]
    Decode(String),

    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A LoRA adapter file is malformed, or does not fit the base it was given.
    #[error("{path}: {reason}")]
    InvalidAdapter { path: PathBuf, reason: String },

    /// Reading or writing a model file through ggml failed.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl EngineError {
    pub fn invalid(param: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            param,
            reason: reason.into(),
        }
    }
}
