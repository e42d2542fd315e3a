//! LoRA fine-tuning on the CPU (`minerva finetune`): a base model from the store, read
//! from its GGUF file and dequantized to f32 ([`model`]), trained through Candle's
//! autograd on chat or prompt/completion JSONL ([`data`]) by the loop in [`train`], with
//! checkpoints a killed run resumes from ([`checkpoint`]); the result is llama.cpp's GGUF
//! adapter format, which the server applies per request.

pub mod checkpoint;
pub mod data;
pub mod model;
pub mod optim;
pub mod privacy;
pub mod train;

use std::path::PathBuf;

/// What can go wrong while preparing or running a training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The training data: unreadable lines, no assistant turn, no target token.
    #[error("training data: {0}")]
    Data(String),
    /// The base model cannot be trained by this graph, or its file is malformed.
    #[error("base model: {0}")]
    Base(String),
    /// An option out of range.
    #[error("{0}")]
    Options(String),
    /// A checkpoint that cannot be read or does not belong to this run.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Engine(#[from] minerva_engine::EngineError),
    /// A sealed checkpoint without its key, or a malformed key.
    #[error(transparent)]
    Sealed(#[from] minerva_seal::SealError),
    #[error("tensor computation: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;
