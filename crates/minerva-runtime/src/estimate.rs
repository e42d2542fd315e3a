//! A model's memory footprint estimated from its files before loading it: weights, the KV
//! cache its session will allocate, and compute scratch. The pool reserves the estimate
//! while a model loads and replaces it with the measured figure afterwards.

use std::path::Path;

use minerva_engine::gguf;

use crate::{ModelEntry, ModelFormat};

/// Fixed allowance for buffers every loaded model allocates (graph, tokenizer, threads).
const BASE_SCRATCH: u64 = 32 << 20;

/// What the estimate depends on besides the files.
#[derive(Debug, Clone, Copy)]
pub struct SessionShape {
    /// KV cells of the session (all sequences together).
    pub n_ctx: u32,
    /// Tokens whose KV the prefix cache keeps outside the session.
    pub cached_tokens: u32,
    /// Most tokens per forward pass.
    pub n_batch: u32,
    /// Most sequences at once.
    pub n_seq_max: u32,
}

/// A model's estimated footprint, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    /// Weights as loaded.
    pub weights: u64,
    /// KV cache.
    pub kv_cache: u64,
    /// Compute buffers.
    pub scratch: u64,
}

impl Footprint {
    /// All parts together.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.scratch
    }
}

/// Failure to read what the estimate needs.
#[derive(Debug, thiserror::Error)]
#[error("cannot estimate the memory of {path}: {reason}")]
pub struct EstimateError {
    path: String,
    reason: String,
}

/// Estimates the footprint of `entry` loaded with sessions of `shape`.
pub fn estimate(entry: &ModelEntry, shape: SessionShape) -> Result<Footprint, EstimateError> {
    match entry.format {
        ModelFormat::Gguf => estimate_gguf(&entry.path, shape),
        ModelFormat::SentenceTransformers => estimate_sentence_transformers(&entry.path),
    }
}

fn estimate_gguf(path: &Path, shape: SessionShape) -> Result<Footprint, EstimateError> {
    let error = |reason: String| EstimateError {
        path: path.display().to_string(),
        reason,
    };
    let info = gguf::inspect(path).map_err(|e| error(e.to_string()))?;
    let arch = &info.architecture;
    let key = |name: &str| info.get_u64(&format!("{arch}.{name}"));
    let n_layer = key("block_count").ok_or_else(|| error(format!("{arch}.block_count missing")))?;
    let n_embd = key("embedding_length").ok_or_else(|| error(format!("{arch}.embedding_length missing")))?;
    let n_head = key("attention.head_count").unwrap_or(1).max(1);
    let n_head_kv = key("attention.head_count_kv").unwrap_or(n_head);
    let head_k = key("attention.key_length").unwrap_or(n_embd / n_head);
    let head_v = key("attention.value_length").unwrap_or(n_embd / n_head);
    // KV cells of the whole session: with several sequences they may exceed the
    // training context of one.
    let n_ctx = u64::from(shape.n_ctx);
    // llama.cpp's default KV type is f16: 2 bytes per element, keys and values; the
    // prefix cache's snapshots hold the same bytes per token.
    let kv_tokens = n_ctx + u64::from(shape.cached_tokens);
    let kv_cache = n_layer * kv_tokens * n_head_kv * (head_k + head_v) * 2;
    let n_vocab = info
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| match v {
            gguf::MetadataValue::Array { len, .. } => Some(*len),
            _ => None,
        })
        .unwrap_or(32_000);
    // Compute buffers as llama.cpp sizes them for one micro-batch (at most 512 tokens):
    // a few activations per token, the attention scores against the whole context, and
    // one logits row per sequence.
    let n_ubatch = u64::from(shape.n_batch).clamp(1, 512);
    let activations = n_ubatch * n_embd * 4 * 8;
    let attention = n_ctx * n_ubatch * n_head * 4;
    let logits = u64::from(shape.n_seq_max.max(1)) * n_vocab * 4;
    let scratch = BASE_SCRATCH + activations + attention + logits;
    Ok(Footprint {
        weights: info.tensor_bytes,
        kv_cache,
        scratch,
    })
}

fn estimate_sentence_transformers(dir: &Path) -> Result<Footprint, EstimateError> {
    let weights = std::fs::metadata(dir.join("model.safetensors"))
        .map_err(|e| EstimateError {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .len();
    Ok(Footprint {
        weights,
        kv_cache: 0,
        scratch: BASE_SCRATCH,
    })
}
