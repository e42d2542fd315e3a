//! Perplexity by llama.cpp's method, so our figures compare one to one with
//! `llama-perplexity`: the text is tokenized once (with BOS), cut into non-overlapping
//! chunks of `n_ctx` tokens (the first token of each replaced by BOS when the model uses
//! one), and only the second half of every chunk is scored, so each scored token sees at
//! least `n_ctx / 2` tokens of context.

use crate::llm::{LanguageModel, LogitsWanted, SeqId, SequenceInput, Session};
use crate::{EngineError, Result};

/// The text `minerva quantize` scores models on unless told otherwise: the GNU GPL
/// version 3 (verbatim copies are allowed), the text llama.cpp's perplexity fixtures use.
pub const DEFAULT_EVAL_TEXT: &str = include_str!("../tests/fixtures/gpl-3.txt");

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
    let tokens = prepare(model, session, text, n_ctx)?;
    let chunks = tokens.len() / n_ctx;
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

/// Checks that `session` can score chunks of `n_ctx` tokens and tokenizes `text` (with
/// BOS, as llama.cpp does); at least one whole chunk must come out.
fn prepare(model: &dyn LanguageModel, session: &dyn Session, text: &str, n_ctx: usize) -> Result<Vec<i32>> {
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
    if tokens.len() / n_ctx == 0 {
        return Err(EngineError::invalid(
            "file",
            format!(
                "{} tokens is less than one chunk of {n_ctx}; use a longer text or a smaller ctx",
                tokens.len()
            ),
        ));
    }
    Ok(tokens)
}

/// How a quantized model's predictions compare with its source's, by llama.cpp's method
/// (`llama-perplexity --kl-divergence`): the same chunks and scored positions as
/// [`perplexity`], each scored position's full distribution compared.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    /// Perplexity of the source model.
    pub base_perplexity: f64,
    /// Perplexity of the quantized model.
    pub perplexity: f64,
    /// Mean KL divergence KL(source || quantized) per scored position, in nats.
    pub mean_kl_divergence: f64,
    /// Share of scored positions where both models' most likely token is the same.
    pub same_top_token: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Positions scored.
    pub scored_tokens: usize,
}

/// Scores `text` with `base` and `quantized` side by side (chunks of `n_ctx` tokens, the
/// tokens of `base`'s vocabulary, which quantization does not change).
pub fn compare(
    base: (&dyn LanguageModel, &mut dyn Session),
    quantized: (&dyn LanguageModel, &mut dyn Session),
    text: &str,
    n_ctx: usize,
    on_chunk: &mut dyn FnMut(usize, usize),
) -> Result<Comparison> {
    let (base_model, base_session) = base;
    let (quant_model, quant_session) = quantized;
    if base_model.metadata().n_vocab != quant_model.metadata().n_vocab {
        return Err(EngineError::invalid(
            "model",
            "the two models have different vocabularies",
        ));
    }
    let tokens = prepare(base_model, base_session, text, n_ctx)?;
    prepare(quant_model, quant_session, text, n_ctx)?;
    let chunks = tokens.len() / n_ctx;
    let bos = base_model.metadata().bos_token;
    let first = n_ctx / 2;
    let seq = SeqId(0);
    let (mut nll_base, mut nll, mut kl, mut same, mut count) = (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    let mut chunk_tokens = vec![0; n_ctx];
    for c in 0..chunks {
        let start = c * n_ctx;
        chunk_tokens.copy_from_slice(&tokens[start..start + n_ctx]);
        if let Some(bos) = bos {
            chunk_tokens[0] = bos;
        }
        let input = SequenceInput {
            seq,
            tokens: &chunk_tokens,
            start_pos: 0,
            logits: LogitsWanted::From(first),
        };
        base_session.free_sequence(seq);
        quant_session.free_sequence(seq);
        let base_rows = base_session.decode(std::slice::from_ref(&input))?;
        let quant_rows = quant_session.decode(std::slice::from_ref(&input))?;
        let pairs = base_rows[0].iter().zip(quant_rows[0].iter()).take(n_ctx - 1 - first);
        for (k, (p_row, q_row)) in pairs.enumerate() {
            let target = tokens[start + first + k + 1] as usize;
            let (p_lse, q_lse) = (log_sum_exp(p_row), log_sum_exp(q_row));
            nll_base -= f64::from(p_row[target]) - p_lse;
            nll -= f64::from(q_row[target]) - q_lse;
            kl += p_row
                .iter()
                .zip(q_row.iter())
                .map(|(&p, &q)| {
                    let lp = f64::from(p) - p_lse;
                    lp.exp() * (lp - (f64::from(q) - q_lse))
                })
                .sum::<f64>();
            same += usize::from(argmax(p_row) == argmax(q_row));
            count += 1;
        }
        on_chunk(c + 1, chunks);
    }
    base_session.free_sequence(seq);
    quant_session.free_sequence(seq);
    let n = count as f64;
    Ok(Comparison {
        base_perplexity: (nll_base / n).exp(),
        perplexity: (nll / n).exp(),
        mean_kl_divergence: kl / n,
        same_top_token: same as f64 / n,
        chunks,
        scored_tokens: count,
    })
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    f64::from(max) + row.iter().map(|&l| f64::from((l - max).exp())).sum::<f64>().ln()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

/// log softmax(row)[target], accumulated in f64 as llama.cpp does.
fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(row[target] - max) - sum.ln()
}
