//! Perplexity by llama.cpp's method, so our figures compare one to one with
//! `llama-perplexity`: the text is tokenized once (with BOS), cut into non-overlapping
//! chunks of `n_ctx` tokens (the first token of each replaced by BOS when the model uses
//! one), and only the second half of every chunk is scored, so each scored token sees at
//! least `n_ctx / 2` tokens of context.

use crate::llm::{LanguageModel, LogitsWanted, SeqId, SequenceInput, Session};
use crate::{EngineError, Result};

/// Perplexity of a text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    /// exp(mean negative log-likelihood) over all scored tokens.
    pub perplexity: f64,
    /// Standard error of the perplexity, computed as llama.cpp does.
    pub stderr: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens scored.
    pub scored_tokens: usize,
    /// Running perplexity after each chunk (llama.cpp prints the same list).
    pub per_chunk: Vec<f64>,
}

/// Computes the perplexity of `text` with chunks of `n_ctx` tokens. `session` must hold at
/// least `n_ctx` tokens for one sequence and accept `n_ctx` tokens per decode.
/// `on_chunk(done, total)` reports progress.
pub fn perplexity(
    model: &dyn LanguageModel,
    session: &mut dyn Session,
    text: &str,
    n_ctx: usize,
    on_chunk: &mut dyn FnMut(usize, usize),
) -> Result<PerplexityReport> {
    if n_ctx < 16 {
        return Err(EngineError::invalid("ctx", "must be at least 16 tokens"));
    }
    let params = session.params();
    if (params.n_ctx as usize) < n_ctx || (params.n_batch as usize) < n_ctx {
        return Err(EngineError::invalid(
            "ctx",
            format!("{n_ctx} exceeds the session's context or batch"),
        ));
    }
    let tokens = model.tokenize(text, true, false)?;
    let chunks = tokens.len() / n_ctx;
    if chunks == 0 {
        return Err(EngineError::invalid(
            "file",
            format!(
                "{} tokens is less than one chunk of {n_ctx}; use a longer text or a smaller ctx",
                tokens.len()
            ),
        ));
    }
    let bos = model.metadata().bos_token;
    let first = n_ctx / 2;
    let seq = SeqId(0);
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(chunks);
    let mut chunk_tokens = vec![0; n_ctx];
    for c in 0..chunks {
        let start = c * n_ctx;
        chunk_tokens.copy_from_slice(&tokens[start..start + n_ctx]);
        if let Some(bos) = bos {
            chunk_tokens[0] = bos;
        }
        session.free_sequence(seq);
        let input = SequenceInput {
            seq,
            tokens: &chunk_tokens,
            start_pos: 0,
            logits: LogitsWanted::From(first),
        };
        let rows = session.decode(&[input])?;
        // Row k holds the prediction for the token after position first + k; the last row
        // predicts past the chunk and is not scored.
        for (k, row) in rows[0].iter().take(n_ctx - 1 - first).enumerate() {
            let target = tokens[start + first + k + 1];
            let lp = log_softmax_at(row, target as usize);
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
        }
        per_chunk.push((nll / count as f64).exp());
        on_chunk(c + 1, chunks);
    }
    session.free_sequence(seq);
    let mean = nll / count as f64;
    let perplexity = mean.exp();
    let variance = nll2 / count as f64 - mean * mean;
    let stderr = if variance > 0.0 && count > 1 {
        (variance / (count - 1) as f64).sqrt() * perplexity
    } else {
        0.0
    };
    Ok(PerplexityReport {
        perplexity,
        stderr,
        chunks,
        scored_tokens: count,
        per_chunk,
    })
}

/// log softmax(row)[target], accumulated in f64 as llama.cpp does.
fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(row[target] - max) - sum.ln()
}
