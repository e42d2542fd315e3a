//! BERT-family encoders through Minerva's own forward pass, in f32.
//!
//! The pass is shaped for the CPU rather than for a tensor library:
//! - **Padding-free.** The tokens of every sequence in a batch are stacked into one
//!   `tokens × hidden` matrix, so the projections and the feed-forward are a few large
//!   matrix products over real tokens only (no row is padding). Only attention is per
//!   sequence: one small product pair per sequence and head, spread over the threads.
//! - **Fused.** Query, key and value are one product against a fused matrix; a bias and
//!   the activation are one pass; the residual and the output bias are written into the
//!   destination first and the product accumulates onto them, so the layer norm is the
//!   only pass after it.
//! - **One arena.** The activations live in buffers kept between passes and grown only
//!   when a larger batch arrives.
//!
//! The matrix products are the `gemm` crate's (see [`kernels`]); they take most of the
//! time, so the pass runs near the machine's matrix-product rate (`minerva bench embed`
//! measures both).

pub(crate) mod amx;
pub(crate) mod bf16;
pub(crate) mod int8;
pub(crate) mod kernels;
mod weights;

use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;

use self::kernels::{
    SharedMut, View, add, bias_activation, for_rows, gemm_strided, layer_norm, matmul, residual_with_bias, softmax,
};
use self::weights::{BertConfig, Packed, Weights};
use super::config::{SentenceTransformerConfig, read_json};
use super::{EmbeddingDtype, EmbeddingModel, EncoderTokenizer, Pooling};
use crate::{EngineError, Result};

/// A BERT encoder with its tokenizer and pooling.
pub(super) struct Bert {
    weights: Weights,
    dtype: EmbeddingDtype,
    /// A cross-encoder's score activation; `None` for a sentence embedder.
    reranker: Option<ScoreActivation>,
    tokenizer: EncoderTokenizer,
    pooling: Pooling,
    normalize: bool,
    arena: Mutex<Arena>,
}

/// What a cross-encoder applies to its logit (sentence-transformers' `activation_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScoreActivation {
    Sigmoid,
    Identity,
}

impl ScoreActivation {
    /// The activation `config.json` names, or sigmoid (the default for one label).
    fn from_config(config: &BertConfig) -> Self {
        let named = config
            .sentence_transformers
            .as_ref()
            .and_then(|st| st.get("activation_fn"))
            .and_then(|f| f.as_str())
            .unwrap_or("torch.nn.modules.activation.Sigmoid");
        if named.ends_with(".Identity") {
            Self::Identity
        } else {
            Self::Sigmoid
        }
    }

    fn apply(self, logit: f32) -> f32 {
        match self {
            Self::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
            Self::Identity => logit,
        }
    }
}

/// The activations of one pass, kept between passes.
#[derive(Default)]
struct Arena {
    /// Layer input and output, `tokens × hidden`.
    x: Vec<f32>,
    /// Attention block output, `tokens × hidden`.
    y: Vec<f32>,
    /// Fused query/key/value, `tokens × 3·hidden`.
    qkv: Vec<f32>,
    /// Attention context before the output projection, `tokens × hidden`.
    context: Vec<f32>,
    /// Feed-forward inner activations, `tokens × intermediate`.
    inner: Vec<f32>,
    /// A product's left operand rounded to bf16 (bf16 mode).
    rounded: Vec<u16>,
    /// A product's left operand quantized to int8 (int8 mode).
    quantized: int8::Scratch,
}

/// The first `len` elements of `buffer`, grown (never shrunk) to hold them.
fn take(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

impl Bert {
    /// Loads the model directory `dir` (checked to be a directory).
    pub(super) fn load(dir: &Path, dtype: EmbeddingDtype) -> Result<Self> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        if dtype == EmbeddingDtype::Bf16 && !bf16::available() {
            return Err(EngineError::invalid(
                "embedding_dtype",
                "bf16 needs a CPU with AVX512-BF16 (this one lacks it); use f32",
            ));
        }
        let cross_encoder = config
            .architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"));
        let mut weights = Weights::load(dir, &config, cross_encoder)?;
        weights.pack(dtype);
        let reranker = match &weights.head {
            Some(head) if head.classifier.outputs != 1 => {
                return Err(EngineError::InvalidEmbeddingModel {
                    path: dir.to_owned(),
                    reason: format!(
                        "a classifier with {} labels is not a reranker (one relevance logit expected)",
                        head.classifier.outputs
                    ),
                });
            }
            Some(_) => Some(ScoreActivation::from_config(&config)),
            None => None,
        };
        let st = SentenceTransformerConfig::read(dir)?;
        let max_tokens = st
            .max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let tokenizer = EncoderTokenizer::load(dir, max_tokens)?;
        if tokenizer.vocab_size() > weights.vocab {
            return Err(EngineError::InvalidEmbeddingModel {
                path: dir.to_owned(),
                reason: format!(
                    "the tokenizer has {} entries, the embedding matrix {} rows",
                    tokenizer.vocab_size(),
                    weights.vocab
                ),
            });
        }
        tracing::info!(
            path = %dir.display(),
            pooling = ?st.pooling,
            normalize = st.normalize,
            max_tokens,
            weights_bytes = weights.bytes(),
            kernels = kernels_name(dtype),
            "loaded embedding model"
        );
        Ok(Self {
            weights,
            dtype,
            reranker,
            tokenizer,
            pooling: st.pooling,
            normalize: st.normalize,
            arena: Mutex::new(Arena::default()),
        })
    }

    /// The last layer's output for every token of `rows` (stacked, in order) into
    /// `arena.x`, and where each row starts in it. `segments` gives each token's segment
    /// (token type); without it every token is in segment 0.
    fn encode(&self, rows: &[&[u32]], segments: Option<&[&[u32]]>, arena: &mut Arena) -> Vec<usize> {
        let w = &self.weights;
        let h = w.hidden;
        let threads = rayon::current_num_threads();
        let mut starts = Vec::with_capacity(rows.len() + 1);
        let mut total = 0;
        for row in rows {
            starts.push(total);
            total += row.len();
        }
        starts.push(total);
        let types = w.token_types.len() / h;
        let tokens: Vec<(u32, usize, usize)> = rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                row.iter().enumerate().map(move |(p, &id)| {
                    let segment = segments.and_then(|s| s[r].get(p)).map_or(0, |&t| t as usize);
                    (id, p, segment.min(types - 1))
                })
            })
            .collect();
        let Arena {
            x,
            y,
            qkv,
            context,
            inner,
            rounded,
            quantized,
        } = arena;
        let int8_kernel = int8::Kernel::detect();
        let mut project = |dst: &mut [f32], a: &[f32], linear: &weights::Linear, accumulate: bool| match &linear.packed
        {
            Some(Packed::Bf16(packed)) => bf16::matmul(dst, a, packed, total, accumulate, rounded),
            Some(Packed::Int8(packed)) => int8::matmul(dst, a, packed, total, accumulate, int8_kernel, quantized),
            None => matmul(
                dst,
                a,
                &linear.weight,
                total,
                linear.inputs,
                linear.outputs,
                accumulate,
                threads,
            ),
        };
        let x = take(x, total * h);
        // Embeddings: word + position + segment, then the embedding layer norm.
        x.par_chunks_mut(h)
            .zip(&tokens)
            .with_min_len(8)
            .for_each(|(row, &(id, pos, segment))| {
                let word = &w.word[id as usize * h..][..h];
                let position = &w.position[pos * h..][..h];
                let token_type = &w.token_types[segment * h..][..h];
                for (((v, a), b), c) in row.iter_mut().zip(word).zip(position).zip(token_type) {
                    *v = a + b + c;
                }
                layer_norm(row, &w.embedding_norm.gamma, &w.embedding_norm.beta, w.eps);
            });
        for layer in &w.layers {
            let q = take(qkv, total * 3 * h);
            project(q, x, &layer.qkv, false);
            for_rows(q, 3 * h, |row| add(row, &layer.qkv.bias));
            let context = take(context, total * h);
            self.attention(q, context, &starts);
            // y = x + b_o + context · W_o, then the attention layer norm.
            let y = take(y, total * h);
            residual_with_bias(y, x, &layer.attention_out.bias, h);
            project(y, context, &layer.attention_out, true);
            let norm = &layer.attention_norm;
            for_rows(y, h, |row| layer_norm(row, &norm.gamma, &norm.beta, w.eps));
            // x = y + b_down + act(y · W_up + b_up) · W_down, then the output layer norm.
            let n_inner = layer.up.outputs;
            let inner = take(inner, total * n_inner);
            project(inner, y, &layer.up, false);
            for_rows(inner, n_inner, |row| bias_activation(row, &layer.up.bias, w.activation));
            residual_with_bias(x, y, &layer.down.bias, h);
            project(x, inner, &layer.down, true);
            let norm = &layer.output_norm;
            for_rows(x, h, |row| layer_norm(row, &norm.gamma, &norm.beta, w.eps));
        }
        starts
    }

    /// Scaled dot-product attention of every sequence (rows `starts[i]..starts[i+1]`),
    /// each head on its own: `context = softmax(Q·Kᵀ/√d)·V`.
    fn attention(&self, qkv: &[f32], context: &mut [f32], starts: &[usize]) {
        let h = self.weights.hidden;
        let heads = self.weights.heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut tasks: Vec<(usize, usize, usize)> = starts
            .windows(2)
            .flat_map(|s| (0..heads).map(move |head| (s[0], s[1] - s[0], head)))
            .collect();
        // Longest first, so the last tasks to run are short ones.
        tasks.sort_by_key(|t| std::cmp::Reverse(t.1));
        assert!(context.len() >= starts.last().copied().unwrap_or(0) * h);
        assert!(qkv.len() >= starts.last().copied().unwrap_or(0) * 3 * h);
        let out = SharedMut(context.as_mut_ptr());
        let qkv_ptr = qkv.as_ptr() as usize;
        tasks
            .par_iter()
            .for_each_init(Vec::new, |scores: &mut Vec<f32>, &(start, len, head)| {
                let out = out;
                let scores = take(scores, len * len);
                let base = qkv_ptr as *const f32;
                // SAFETY: rows start..start+len of qkv (3·h wide) and of context (h wide)
                // exist (asserted above); the head's columns lie inside them; each task
                // writes only its own sequence's rows in its own head's columns.
                unsafe {
                    let row0 = base.add(start * 3 * h + head * d);
                    gemm_strided(
                        len,
                        len,
                        d,
                        scores.as_mut_ptr(),
                        len as isize,
                        false,
                        View {
                            ptr: row0,
                            row_stride: 3 * h as isize,
                            col_stride: 1,
                        },
                        View {
                            ptr: row0.add(h),
                            row_stride: 1,
                            col_stride: 3 * h as isize,
                        },
                        scale,
                        1,
                    );
                    for row in scores.chunks_mut(len) {
                        softmax(row);
                    }
                    gemm_strided(
                        len,
                        d,
                        len,
                        out.0.add(start * h + head * d),
                        h as isize,
                        false,
                        View::dense(scores, len),
                        View {
                            ptr: row0.add(2 * h),
                            row_stride: 3 * h as isize,
                            col_stride: 1,
                        },
                        1.0,
                        1,
                    );
                }
            });
    }
}

/// See [`super::memory`].
pub(super) fn memory(dir: &Path, dtype: EmbeddingDtype) -> Result<super::EncoderMemory> {
    let config_path = dir.join("config.json");
    let config: BertConfig = read_json(&config_path)?;
    let mut weights = weights::f32_bytes(&dir.join("model.safetensors"))?;
    let (h, inner, layers, positions) = (
        config.hidden_size as u64,
        config.intermediate_size as u64,
        config.num_hidden_layers as u64,
        config.max_position_embeddings as u64,
    );
    // Sizes a real model has fit easily; a configuration whose sizes overflow is not one.
    let too_large = || EngineError::InvalidEmbeddingModel {
        path: config_path.clone(),
        reason: "the sizes in config.json are too large for any model".into(),
    };
    // The layers' matrices (all but the embedding tables and norms) at 2 bytes in bf16,
    // 1 in int8, when the file holds them (a file without them fails to load anyway).
    let saved_per_value = match dtype {
        EmbeddingDtype::F32 => 0,
        EmbeddingDtype::Bf16 => 2,
        EmbeddingDtype::Int8 => 3,
    };
    if saved_per_value > 0 {
        let matrices = h
            .checked_mul(h)
            .and_then(|hh| hh.checked_mul(4))
            .and_then(|a| h.checked_mul(inner)?.checked_mul(2)?.checked_add(a))
            .and_then(|m| m.checked_mul(layers)?.checked_mul(saved_per_value))
            .ok_or_else(too_large)?;
        weights = weights.saturating_sub(matrices);
    }
    // x, y, context (h each), qkv (3h), inner; bf16 and int8 add the rounded operand; and per
    // thread one sequence's scores.
    let activations = h
        .checked_mul(6)
        .and_then(|x| {
            x.checked_add(inner)?
                .checked_mul(4)?
                .checked_add(h.max(inner).checked_mul(2)?)
        })
        .and_then(|per_token| per_token.checked_mul(super::BATCH_TOKENS as u64))
        .and_then(|a| {
            let scores = positions
                .checked_mul(positions)?
                .checked_mul(4)?
                .checked_mul(rayon::current_num_threads() as u64)?;
            a.checked_add(scores)
        })
        .ok_or_else(too_large)?;
    Ok(super::EncoderMemory { weights, activations })
}

/// `v · W + b` for one vector (a head's small product; W is `inputs × outputs`).
fn linear_vector(layer: &weights::Linear, v: &[f32]) -> Vec<f32> {
    let mut out = layer.bias.clone();
    for (x, row) in v.iter().zip(layer.weight.chunks_exact(layer.outputs)) {
        for (o, w) in out.iter_mut().zip(row) {
            *o = x.mul_add(*w, *o);
        }
    }
    out
}

/// The matrix-product kernels the pass runs on this CPU with `dtype`.
pub(crate) fn kernels_name(dtype: EmbeddingDtype) -> &'static str {
    if dtype == EmbeddingDtype::Bf16 && amx::available() {
        "bf16 amx (tdpbf16ps), f32 accumulation"
    } else if dtype == EmbeddingDtype::Bf16 {
        "bf16 avx512_bf16 (vdpbf16ps), f32 accumulation"
    } else if dtype == EmbeddingDtype::Int8 {
        int8::Kernel::detect().name()
    } else if std::arch::is_x86_feature_detected!("avx512f") {
        "gemm f32 avx512f"
    } else if std::arch::is_x86_feature_detected!("fma") {
        "gemm f32 avx2+fma"
    } else {
        "gemm f32 scalar/sse"
    }
}

impl EmbeddingModel for Bert {
    fn tokenizer(&self) -> &EncoderTokenizer {
        &self.tokenizer
    }

    fn dimensions(&self) -> usize {
        self.weights.hidden
    }

    fn pooling(&self) -> Pooling {
        self.pooling
    }

    fn normalizes(&self) -> bool {
        self.normalize
    }

    fn flops(&self, lengths: &[usize]) -> f64 {
        let w = &self.weights;
        let per_token: usize = self.matmul_shapes().iter().map(|(k, n)| k * n).sum();
        let tokens: usize = lengths.iter().sum();
        let attention: usize = lengths.iter().map(|l| 2 * l * l * w.hidden).sum();
        2.0 * w.layers.len() as f64 * (tokens * per_token + attention) as f64
    }

    fn matmul_shapes(&self) -> Vec<(usize, usize)> {
        let l = &self.weights.layers[0];
        [&l.qkv, &l.attention_out, &l.up, &l.down]
            .iter()
            .map(|m| (m.inputs, m.outputs))
            .collect()
    }

    fn kernels(&self) -> String {
        kernels_name(self.dtype).to_owned()
    }

    fn is_reranker(&self) -> bool {
        self.reranker.is_some()
    }

    fn dtype(&self) -> EmbeddingDtype {
        self.dtype
    }

    fn rerank(&self, query: &str, documents: &[&str], raw: bool) -> Result<Vec<f32>> {
        let (Some(activation), Some(head)) = (self.reranker, self.weights.head.as_ref()) else {
            return Err(EngineError::invalid("model", "not a reranker (cross-encoder) model"));
        };
        let pairs = documents
            .iter()
            .map(|d| self.tokenizer.tokenize_pair(query, d))
            .collect::<Result<Vec<_>>>()?;
        let h = self.weights.hidden;
        let mut scores = Vec::with_capacity(pairs.len());
        let lengths: Vec<usize> = pairs.iter().map(|p| p.0.len()).collect();
        for range in super::token_batches(&lengths, super::BATCH_TOKENS) {
            let rows: Vec<&[u32]> = pairs[range.clone()].iter().map(|p| p.0.as_slice()).collect();
            let segments: Vec<&[u32]> = pairs[range.clone()].iter().map(|p| p.1.as_slice()).collect();
            for (index, row) in rows.iter().enumerate() {
                self.check_input(range.start + index, row)?;
            }
            crate::compute::share_rayon(|| {
                let mut arena = self.arena.lock().unwrap_or_else(|p| p.into_inner());
                let starts = self.encode(&rows, Some(&segments), &mut arena);
                for s in starts.windows(2) {
                    // BERT's pooler (dense + tanh over [CLS]), then the classifier.
                    let cls = &arena.x[s[0] * h..][..h];
                    let pooled: Vec<f32> = match &head.pooler {
                        Some(p) => linear_vector(p, cls).into_iter().map(f32::tanh).collect(),
                        None => cls.to_vec(),
                    };
                    let logit = linear_vector(&head.classifier, &pooled)[0];
                    scores.push(if raw { logit } else { activation.apply(logit) });
                }
            });
        }
        Ok(scores)
    }

    fn forward_batch(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if self.reranker.is_some() {
            return Err(EngineError::invalid(
                "model",
                "a reranker (cross-encoder) scores query/document pairs through /v1/rerank; it does not embed",
            ));
        }
        for (index, row) in rows.iter().enumerate() {
            self.check_input(index, row)?;
            if row.len() > self.weights.max_positions {
                return Err(EngineError::InputTooLong {
                    index,
                    tokens: row.len(),
                    max: self.weights.max_positions,
                });
            }
        }
        // Passes of at most BATCH_TOKENS tokens keep the arena (and the memory estimate)
        // bounded whatever batch the caller cuts; the products are at full rate by then.
        let mut out = Vec::with_capacity(rows.len());
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        for range in super::token_batches(&lengths, super::BATCH_TOKENS) {
            out.extend(self.pool_pass(&rows[range]));
        }
        Ok(out)
    }
}

impl Bert {
    /// One pass over `rows` and the pooled vector of each.
    fn pool_pass(&self, rows: &[&[u32]]) -> Vec<Vec<f32>> {
        let h = self.weights.hidden;
        crate::compute::share_rayon(|| {
            let mut arena = self.arena.lock().unwrap_or_else(|p| p.into_inner());
            let starts = self.encode(rows, None, &mut arena);
            let x = &arena.x;
            starts
                .windows(2)
                .map(|s| match self.pooling {
                    Pooling::Cls => x[s[0] * h..][..h].to_vec(),
                    Pooling::Mean => {
                        let mut mean = vec![0f32; h];
                        for row in x[s[0] * h..s[1] * h].chunks_exact(h) {
                            add(&mut mean, row);
                        }
                        let inv = 1.0 / (s[1] - s[0]).max(1) as f32;
                        mean.iter_mut().for_each(|v| *v *= inv);
                        mean
                    }
                })
                .collect()
        })
    }
}
