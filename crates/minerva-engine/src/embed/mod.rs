//! Sentence embeddings from encoder models in the sentence-transformers layout, with
//! pooling and normalization as the model's configuration declares.
//!
//! [`EmbeddingModel`] is what the rest of Minerva programs against; [`load`] picks the
//! backend for a directory and hands back the trait object. The backend today is
//! Minerva's own BERT forward pass ([`bert`]); a second one is a new module here and a
//! line in [`load`]. What every backend shares (the tokenizer, the directory's
//! configuration, input checks, batching) lives here.
//!
//! A batch is padding-free: its sequences' tokens are stacked, and attention and pooling
//! stay within each sequence, so a sentence's vector does not depend on its batch mates.

pub(crate) mod bert;
mod config;
mod tokenizer;

use std::path::Path;
use std::sync::Arc;

use crate::{EngineError, Result};

pub use tokenizer::EncoderTokenizer;

/// The kernels Minerva's encoder runs on this CPU in `dtype` (chosen at run time, in any
/// build), for reports such as `minerva doctor`.
pub fn encoder_kernels(dtype: EmbeddingDtype) -> &'static str {
    bert::kernels_name(dtype)
}

/// Tokens per forward pass of [`EmbeddingModel::embed_tokens`]: enough rows for the
/// matrix products to run at full rate, few enough that the activations stay in cache
/// (about 2 MiB per hidden-size-384 buffer).
pub(crate) const BATCH_TOKENS: usize = 2048;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of the token vectors (padding excluded).
    Mean,
    /// The vector of the first ([CLS]) token.
    Cls,
}

/// Per-call options of [`EmbeddingModel::embed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedOptions {
    /// L2-normalize the vectors; `None` follows the model's configuration.
    pub normalize: Option<bool>,
    /// Refuse inputs longer than the model's maximum instead of truncating them.
    pub forbid_truncation: bool,
}

/// A tokenized input: its ids and whether it was cut to the model's maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInput {
    /// Token ids including the special tokens the model adds.
    pub ids: Vec<u32>,
    /// True when the text was longer than the model accepts and was truncated.
    pub truncated: bool,
}

/// The precision of an encoder's matrix products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingDtype {
    /// f32 throughout: the vectors sentence-transformers computes (cosine ≥ 0.9999).
    #[default]
    F32,
    /// Weights and activations rounded to bf16 for the products, accumulated in f32
    /// (AVX512-BF16): about twice the products' speed, lowest cosine ≥ 0.999.
    Bf16,
    /// Weights quantized to int8 per column at load, activations per row before each
    /// product, accumulated exactly in i32 (VNNI where the CPU has it): the reduced
    /// precision for CPUs without AVX512-BF16.
    Int8,
}

impl std::str::FromStr for EmbeddingDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "int8" | "i8" => Ok(Self::Int8),
            other => Err(format!("unknown embedding dtype {other:?} (f32, bf16 or int8)")),
        }
    }
}

impl std::fmt::Display for EmbeddingDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        })
    }
}

/// Loads the embedding model in `dir` (a sentence-transformers directory: `config.json`,
/// `model.safetensors`, `tokenizer.json`, optionally `modules.json`,
/// `1_Pooling/config.json` and `sentence_bert_config.json`) with the backend for it.
pub fn load(dir: &Path) -> Result<Arc<dyn EmbeddingModel>> {
    load_with(dir, EmbeddingDtype::F32)
}

/// [`load`] with the products in `dtype`; bf16 on a CPU without AVX512-BF16 is an error.
pub fn load_with(dir: &Path, dtype: EmbeddingDtype) -> Result<Arc<dyn EmbeddingModel>> {
    if !dir.is_dir() {
        return Err(EngineError::InvalidEmbeddingModel {
            path: dir.to_owned(),
            reason: "not a model directory (expected config.json, model.safetensors and tokenizer.json)".into(),
        });
    }
    Ok(Arc::new(bert::Bert::load(dir, dtype)?))
}

/// A loaded sentence-embedding model: immutable, shareable across threads.
pub trait EmbeddingModel: Send + Sync {
    /// The model's tokenizer, with its limits.
    fn tokenizer(&self) -> &EncoderTokenizer;

    /// Length of the vectors.
    fn dimensions(&self) -> usize;

    /// The pooling the model uses.
    fn pooling(&self) -> Pooling;

    /// Whether the model normalizes its vectors by default.
    fn normalizes(&self) -> bool;

    /// One forward pass over `rows` (each checked by [`Self::check_input`]): the pooled,
    /// unnormalized vector of each row, in order. Rows are not padded: each attends to and
    /// pools over its own tokens only. Runs inside [`crate::compute::share_rayon`].
    fn forward_batch(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>>;

    /// Floating-point operations of one forward pass over sequences of these lengths
    /// (matrix products and attention; the element-wise passes are not counted).
    fn flops(&self, lengths: &[usize]) -> f64;

    /// The matrix products of one layer, as `(inputs, outputs)` per token row: what the
    /// machine's matrix-product rate is measured on ([`gemm_rate`]).
    fn matmul_shapes(&self) -> Vec<(usize, usize)>;

    /// The kernels the forward pass runs on this CPU, for logs and reports.
    fn kernels(&self) -> String;

    /// The precision of the products.
    fn dtype(&self) -> EmbeddingDtype {
        EmbeddingDtype::F32
    }

    /// Whether the model is a cross-encoder (a reranker): it scores text pairs through
    /// [`Self::rerank`] and embeds nothing.
    fn is_reranker(&self) -> bool {
        false
    }

    /// The relevance of each document to `query`: the cross-encoder's logit through the
    /// model's activation (sigmoid for one label, as sentence-transformers'
    /// `CrossEncoder.predict`), or the logit itself when `raw`. Documents are scored in
    /// batches; the order of the scores is the documents'.
    fn rerank(&self, query: &str, documents: &[&str], raw: bool) -> Result<Vec<f32>> {
        let _ = (query, documents, raw);
        Err(EngineError::invalid("model", "not a reranker (cross-encoder) model"))
    }

    /// Number of entries in the vocabulary (token ids are below this).
    fn vocab_size(&self) -> usize {
        self.tokenizer().vocab_size()
    }

    /// Most tokens per input (special tokens included).
    fn max_tokens(&self) -> usize {
        self.tokenizer().max_tokens()
    }

    /// Tokenizes `text` as the model sees it, truncating unless `forbid_truncation`.
    /// `index` names the input in errors.
    fn tokenize(&self, index: usize, text: &str, forbid_truncation: bool) -> Result<EmbeddingInput> {
        self.tokenizer().tokenize(index, text, forbid_truncation)
    }

    /// Checks that `ids` can go through [`Self::forward_batch`]: not empty, at most
    /// [`Self::max_tokens`] long, every id inside the vocabulary. `index` names the input
    /// in errors.
    fn check_input(&self, index: usize, ids: &[u32]) -> Result<()> {
        self.tokenizer().check_input(index, ids)
    }

    /// Embeds already tokenized inputs (each at most [`Self::max_tokens`] long).
    fn embed_tokens(&self, inputs: &[Vec<u32>], normalize: bool) -> Result<Vec<Vec<f32>>> {
        for (index, ids) in inputs.iter().enumerate() {
            self.check_input(index, ids)?;
        }
        let mut out = vec![Vec::new(); inputs.len()];
        let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
        for range in token_batches(&lengths, BATCH_TOKENS) {
            let batch: Vec<usize> = range.collect();
            let rows: Vec<&[u32]> = batch.iter().map(|&i| inputs[i].as_slice()).collect();
            for (&i, mut vector) in batch.iter().zip(self.forward_batch(&rows)?) {
                if normalize {
                    l2_normalize(&mut vector);
                }
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// Embeds `texts`, returning one vector per text in the same order.
    fn embed(&self, texts: &[&str], options: EmbedOptions) -> Result<Vec<Vec<f32>>> {
        let inputs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.tokenize(i, t, options.forbid_truncation).map(|input| input.ids))
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokens(&inputs, options.normalize.unwrap_or(self.normalizes()))
    }
}

/// What a loaded encoder holds in memory, in bytes: its weights as the pass keeps them
/// (f32, so an f16 or bf16 file doubles) and the activation arena of its largest pass
/// ([`BATCH_TOKENS`] tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderMemory {
    pub weights: u64,
    pub activations: u64,
}

/// [`EncoderMemory`] of the model directory `dir`, from `config.json` and the
/// safetensors header (the weights are not read).
pub fn memory(dir: &Path, dtype: EmbeddingDtype) -> Result<EncoderMemory> {
    bert::memory(dir, dtype)
}

/// The machine's f32 matrix-product rate in FLOP/s on `shapes` (`(inputs, outputs)`,
/// each multiplied by a `rows`-row activation matrix), with the kernels and threads the
/// encoder uses: the ceiling an encoder's throughput is measured against. Runs the set of
/// products repeatedly for about `duration` and reports the median of the rounds.
pub fn gemm_rate(rows: usize, shapes: &[(usize, usize)], duration: std::time::Duration) -> f64 {
    bert::kernels::gemm_rate(rows, shapes, duration)
}

/// Consecutive runs of items whose `lengths` add up to at most `budget` (an item longer
/// than the budget on its own runs alone), in order: the passes a batch is cut into.
pub(crate) fn token_batches(lengths: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let mut end = start + 1;
        let mut tokens = lengths[start];
        while end < lengths.len() && tokens + lengths[end] <= budget {
            tokens += lengths[end];
            end += 1;
        }
        batches.push(start..end);
        start = end;
    }
    batches
}

/// Scales `vector` to unit L2 length (as sentence-transformers' `Normalize` module does;
/// a zero vector stays zero).
pub fn l2_normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in vector {
        *x /= norm;
    }
}

/// Cosine similarity of two vectors of the same length (in f64, so that near-identical
/// vectors compare finely).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}
