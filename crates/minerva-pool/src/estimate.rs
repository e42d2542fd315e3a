//! A model's memory footprint estimated from its files before loading it: what the pool
//! reserves while the model loads. It models the parts a loaded model really keeps
//! resident, as llama.cpp (or Candle) allocates and touches them, so that the reservation
//! is close to the model's measured resident memory (within 10 % for the default models
//! with `minerva serve`'s defaults, `tests/estimate.rs`), slightly above rather than below.
//!
//! A GGUF language model, loaded by the engine (llama.cpp with its defaults: weights
//! memory-mapped and prefetched, f16 KV cache, flash attention on the CPU):
//!
//! - **weights**: the tensor data, mapped from the file and all resident after the load
//!   (`MAP_POPULATE`); plus a second, anonymous copy of the matrices ggml's CPU backend
//!   repacks into its interleaved layouts on this CPU, or on a CPU with AMX into its tile
//!   layouts (their mapped pages stay resident too);
//! - **KV cache**: every cell of the session (`n_ctx`, all sequences together) on every
//!   layer, keys and values in f16; llama.cpp clears the buffer at creation, so all of it is
//!   resident from the start;
//! - **scratch**: the compute buffer as a forward pass of one full micro-batch touches it
//!   (with flash attention: activations proportional to `n_ubatch`, the attention masks of
//!   `n_ctx` x `n_ubatch`, one logits row per sequence), the output buffer (one logits row
//!   per sequence), the vocabulary's tables, and a fixed base.
//!
//! What the estimate leaves out on purpose:
//!
//! - llama.cpp's compute buffer reserves `n_vocab` x `n_ubatch` floats of logits (512 MiB
//!   for Gemma 3's 262k vocabulary) that only a pass asking for every token's logits
//!   (perplexity) writes; serving asks for one row per sequence, and untouched pages take
//!   no memory;
//! - the prefix cache's snapshots are not allocated at the load: they fill lazily, up to
//!   `cached_tokens` tokens of KV in host memory. [`Footprint::prefix_cache`] says how far
//!   they can grow; it is not part of [`Footprint::total`], the reservation.
//!
//! A sentence-transformers model: its weights as the encoder keeps them (f32), the
//! activation arena of its largest pass, and the base.

use std::path::Path;

use crate::keep_alive::KeepAlive;
use minerva_engine::KvType;
use minerva_engine::embed::EmbeddingDtype;
use minerva_gguf::{self as gguf, GgufTensor};

use minerva_store::{ModelEntry, ModelFormat};

/// Resident memory a loaded language model adds besides its named parts: the worker
/// thread, llama.cpp's model and context structures, graph metadata, ggml's per-pass work
/// buffer.
const LLM_BASE: u64 = 12 << 20;

/// Resident memory a loaded embedding model adds besides its weights and its activation
/// arena: the tokenizer, the worker threads, the matrix products' packing buffers, the
/// allocator's slack (all-MiniLM-L6-v2 measures 27 MiB over weights and arena after full
/// passes).
const EMBEDDING_BASE: u64 = 26 << 20;

/// Resident bytes of llama.cpp's vocabulary tables per token (token text, scores and
/// attributes, the text-to-id map, the token-to-piece cache).
const VOCAB_BYTES_PER_TOKEN: u64 = 200;

/// Resident bytes of a BPE merge rule in llama.cpp's rank map.
const VOCAB_BYTES_PER_MERGE: u64 = 64;

/// Largest micro-batch: the engine's `n_ubatch` is `n_batch` capped at this.
const MAX_UBATCH: u64 = 512;

/// What the estimate depends on besides the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SessionShape {
    /// KV cells of the session (all sequences together).
    pub n_ctx: u32,
    /// Tokens whose KV the prefix cache keeps outside the session.
    pub cached_tokens: u32,
    /// Most tokens per forward pass (the micro-batch is this capped at 512, as the
    /// engine sets it).
    pub n_batch: u32,
    /// Most sequences at once.
    pub n_seq_max: u32,
    /// Element type of the KV cache.
    pub kv_type: KvType,
    /// Attention through flash-attention kernels; without them every pass holds its
    /// scores, cells by tokens by heads.
    pub flash_attention: bool,
    /// Precision of an encoder's products (its weights' size in memory).
    pub embedding_dtype: EmbeddingDtype,
}

/// A model's estimated footprint, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    /// Weights as loaded (mapped file data plus repacked copies).
    pub weights: u64,
    /// KV cache of the session.
    pub kv_cache: u64,
    /// Compute and output buffers, vocabulary tables, base.
    pub scratch: u64,
    /// Most the prefix cache's snapshots can grow to after the load; not in [`Self::total`].
    pub prefix_cache: u64,
    /// The session it was estimated for (a language model's; `None` for an encoder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<SessionShape>,
    /// The precision it was estimated for (an encoder's; `None` for a language model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dtype: Option<EmbeddingDtype>,
    /// How long the model stays after its last request, when its settings say (read
    /// with the rest of its settings when it is sized for a load).
    #[serde(skip)]
    pub keep_alive: Option<KeepAlive>,
    /// Whether its settings pin it (never evicted, as `--pin`).
    #[serde(skip)]
    pub pinned: bool,
}

impl Footprint {
    /// What the model holds once loaded and serving: weights, KV cache and scratch (the
    /// prefix cache, which fills later, is apart).
    pub fn total(&self) -> u64 {
        self.weights.saturating_add(self.kv_cache).saturating_add(self.scratch)
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
        ModelFormat::SentenceTransformers => estimate_sentence_transformers(&entry.path, shape.embedding_dtype),
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
    let n_ff = key("feed_forward_length").unwrap_or(n_embd.saturating_mul(4));
    let n_head = key("attention.head_count").unwrap_or(1).max(1);
    let n_head_kv = key("attention.head_count_kv").unwrap_or(n_head);
    let head_k = key("attention.key_length").unwrap_or(n_embd / n_head);
    let head_v = key("attention.value_length").unwrap_or(n_embd / n_head);
    let array_len = |name: &str| match info.metadata.get(name) {
        Some(gguf::MetadataValue::Array { len, .. }) => Some(*len),
        _ => None,
    };
    let n_vocab = array_len("tokenizer.ggml.tokens").unwrap_or(32_000);
    let n_merges = array_len("tokenizer.ggml.merges").unwrap_or(0);

    // With AMX, ggml's AMX buffer takes the matrices before the repack buffer sees them.
    let amx = minerva_engine::llm::amx_repacks();
    let tied_output = !info.tensors.iter().any(|t| t.name == "output.weight");
    let repacked_bytes = info
        .tensors
        .iter()
        .filter(|t| if amx { amx_copied(t, tied_output) } else { repacked(t) })
        .fold(0u64, |sum, t| sum.saturating_add(t.bytes));
    let weights = info.tensor_bytes.saturating_add(repacked_bytes);

    // KV cells of the whole session: with several sequences they may exceed the training
    // context of one. Sliding-window layers keep every cell too (the engine asks for
    // `swa_full`), so all layers are alike.
    let n_ctx = u64::from(shape.n_ctx);
    // Keys and values in the session's KV type (f16, or q8_0/q4_0 blocks of 32).
    let kv_per_token = product(&[
        n_layer,
        n_head_kv,
        head_k.saturating_add(head_v),
        shape.kv_type.bytes_per_32(),
    ]) / 32;
    let kv_cache = n_ctx.saturating_mul(kv_per_token);

    let n_ubatch = u64::from(shape.n_batch).clamp(1, MAX_UBATCH);
    let n_seq = u64::from(shape.n_seq_max.max(1));
    // Live f32 activations of one layer at the peak of a pass (ggml's allocator reuses the
    // rest): the residual stream and its normalized copy, the queries, the attention output,
    // the feed-forward's gate and up projections.
    let widths = [
        n_embd.saturating_mul(2),
        n_head.saturating_mul(head_k.saturating_add(head_v)),
        n_ff.saturating_mul(2),
    ];
    let activations = product(&[n_ubatch, 4, widths.iter().fold(0u64, |sum, w| sum.saturating_add(*w))]);
    // Flash attention needs no n_ctx x n_ctx scores, only the f16 mask of every cell against
    // every token of the micro-batch, one for the global and one for sliding-window layers.
    let masks = if key("attention.sliding_window").is_some() {
        2
    } else {
        1
    };
    let attention_masks = product(&[masks, n_ctx, n_ubatch, 2]);
    // Without flash attention a pass multiplies out the scores of every head against every
    // cell, in f32, and keeps them beside their softmax.
    let scores = if shape.flash_attention {
        0
    } else {
        product(&[2, n_head, n_ctx, n_ubatch, 4])
    };
    // One logits row per sequence, in the graph's result and in the output buffer.
    let logits = product(&[2, n_seq, n_vocab, 4]);
    let vocabulary = n_vocab
        .saturating_mul(VOCAB_BYTES_PER_TOKEN)
        .saturating_add(n_merges.saturating_mul(VOCAB_BYTES_PER_MERGE));
    let scratch = [activations, attention_masks, scores, logits, vocabulary]
        .iter()
        .fold(LLM_BASE, |sum, part| sum.saturating_add(*part));

    Ok(Footprint {
        weights,
        kv_cache,
        scratch,
        prefix_cache: u64::from(shape.cached_tokens).saturating_mul(kv_per_token),
        shape: Some(shape),
        embedding_dtype: None,
        keep_alive: None,
        pinned: false,
    })
}

/// The product of `factors`, saturating (a hostile header must not overflow it).
fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |p, f| p.saturating_mul(*f))
}

/// Whether ggml's CPU backend repacks `tensor` into an interleaved copy on this CPU (the
/// rules of `ggml_repack_get_optimal_repack_type` in ggml-cpu/repack.cpp for the x86-64 and
/// AArch64 extensions it checks). Only matrices multiplied by activations are placed in the
/// repack buffer; the token embeddings are only looked up by row.
fn repacked(tensor: &GgufTensor) -> bool {
    if !(tensor.n_dims == 2 || tensor.n_dims == 3) || tensor.name == "token_embd.weight" {
        return false;
    }
    let rows = tensor.dims[1];
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        match tensor.ggml_type {
            "Q4_0" | "Q4_K" | "IQ4_NL" | "MXFP4" => avx2 && rows.is_multiple_of(8),
            "Q2_K" => avx512 && rows.is_multiple_of(8),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        match tensor.ggml_type {
            "Q4_0" | "IQ4_NL" | "MXFP4" | "Q8_0" | "Q1_0" => dotprod && rows.is_multiple_of(4),
            "Q4_K" | "Q5_K" | "Q6_K" => dotprod && rows.is_multiple_of(8),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = rows;
        false
    }
}

/// Whether ggml's AMX buffer type holds a copy of `tensor` (the rules of its
/// `supports_op` in ggml-cpu/amx/amx.cpp): a matrix multiplied by f32 activations, of a
/// type it has kernels for (or f16), whose rows are a multiple of the type's alignment and
/// whose outputs a multiple of two tiles. The token embeddings are only looked up by row,
/// except when the model ties its output to them: then the output's copy of them is one.
fn amx_copied(tensor: &GgufTensor, tied_output: bool) -> bool {
    if tensor.n_dims != 2 || (tensor.name == "token_embd.weight" && !tied_output) {
        return false;
    }
    let alignment = match tensor.ggml_type {
        "Q4_0" | "Q4_1" | "Q8_0" => 32,
        "Q4_K" | "Q5_K" | "Q6_K" | "IQ4_XS" => 256,
        "F16" => 16,
        _ => return false,
    };
    tensor.dims[0].is_multiple_of(alignment) && tensor.dims[1].is_multiple_of(32)
}

fn estimate_sentence_transformers(dir: &Path, dtype: EmbeddingDtype) -> Result<Footprint, EstimateError> {
    let memory = minerva_engine::embed::memory(dir, dtype).map_err(|e| EstimateError {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Footprint {
        weights: memory.weights,
        kv_cache: 0,
        scratch: EMBEDDING_BASE + memory.activations,
        prefix_cache: 0,
        shape: None,
        embedding_dtype: Some(dtype),
        keep_alive: None,
        pinned: false,
    })
}
