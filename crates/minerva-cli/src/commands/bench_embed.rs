//! `minerva bench embed`: an embedding model's throughput and single-sentence latency,
//! beside the machine's matrix-product rate on the model's own shapes, so "how far from
//! the limit" is a number; with `--reference`, the vectors' cosine to a reference
//! (sentence-transformers' vectors in the fixture format) as the quality report.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use minerva_engine::embed::{EmbedOptions, cosine_similarity};
use minerva_engine::perplexity::DEFAULT_EVAL_TEXT;
use minerva_store::ModelStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// Embedding model id in the models directory, or a path to its directory.
    #[arg(long, short)]
    model: String,
    /// A JSON array of sentences; by default 1000 sentences of 5–120 words cut from the
    /// GPL-3 text with a fixed seed.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Sentences when generated.
    #[arg(long, default_value_t = 1000)]
    sentences: usize,
    /// Measured runs (the median is reported); at least 3.
    #[arg(long, short, default_value_t = 3)]
    repetitions: usize,
    /// Reference vectors: a JSON file with `sentences: [{text, embedding}]` (the
    /// fixture format of scripts/reference/make-embedding-fixtures.py).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Precision of the encoder's matrix products: f32, bf16 (AVX512-BF16) or int8.
    #[arg(long, default_value = "f32")]
    dtype: minerva_engine::embed::EmbeddingDtype,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Deterministic sentences of 5–120 words from `text`.
fn sentences(text: &str, count: usize, seed: u64) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let len = rng.random_range(5..=120).min(words.len());
            let start = rng.random_range(0..=words.len() - len);
            words[start..start + len].join(" ")
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    if args.repetitions < 3 {
        bail!("--repetitions must be at least 3 so that the median means something");
    }
    let texts = match &args.file {
        Some(file) => {
            let raw = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            serde_json::from_str::<Vec<String>>(&raw)
                .with_context(|| format!("{}: expected a JSON array of strings", file.display()))?
        }
        None => sentences(DEFAULT_EVAL_TEXT, args.sentences, 20_261_205),
    };
    if texts.is_empty() {
        bail!("no sentences to embed");
    }
    let model = model_arg::load_embedding_with(store, &args.model, args.dtype)?;
    let inputs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| model.tokenize(i, t, false).map(|input| input.ids))
        .collect::<Result<Vec<_>, _>>()?;
    let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let tokens: usize = lengths.iter().sum();
    let bar = progress::bar(2 * args.repetitions as u64 + 1, "bench embed");

    // The ceiling: the f32 kernels on the model's shapes, 2048-row activations (the
    // encoder's batch). A bf16 encoder can pass it: its products do twice the work per
    // instruction.
    let shapes = model.matmul_shapes();
    let gemm = minerva_engine::embed::gemm_rate(2048, &shapes, Duration::from_secs(3));
    bar.inc(1);

    let mut throughput = Vec::new();
    let mut encoder_rate = Vec::new();
    let flops = model.flops(&lengths);
    for _ in 0..args.repetitions {
        let started = Instant::now();
        model.embed_tokens(&inputs, model.normalizes())?;
        let seconds = started.elapsed().as_secs_f64();
        throughput.push(texts.len() as f64 / seconds);
        encoder_rate.push(flops / seconds);
        bar.inc(1);
    }
    // Latency: one sentence at a time, tokenization included, over up to 100 sentences.
    let mut latency = Vec::new();
    for _ in 0..args.repetitions {
        let mut each = Vec::new();
        for text in texts.iter().take(100) {
            let started = Instant::now();
            model.embed(&[text], EmbedOptions::default())?;
            each.push(started.elapsed().as_secs_f64() * 1e3);
        }
        latency.push(median(&mut each));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let quality = match &args.reference {
        Some(path) => Some(quality(&*model, path)?),
        None => None,
    };
    let (sps, rate, lat) = (median(&mut throughput), median(&mut encoder_rate), median(&mut latency));
    let share = rate / gemm;
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = serde_json::json!({
            "model": args.model,
            "dtype": args.dtype.to_string(),
            "kernels": model.kernels(),
            "threads": minerva_engine::compute::default_threads(),
            "sentences": texts.len(),
            "tokens": tokens,
            "sentences_per_second_median": sps,
            "latency_ms_median": lat,
            "encoder_gflops": rate / 1e9,
            "gemm_gflops": gemm / 1e9,
            "share_of_gemm": share,
            "cosine": quality.map(|(lowest, mean, n)| serde_json::json!({"lowest": lowest, "mean": mean, "sentences": n})),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "| model | dtype | kernels | sentences/s | latency ms (p50) | encoder GFLOP/s | f32 GEMM GFLOP/s (model shapes) | share of GEMM |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|")?;
        writeln!(
            out,
            "| {} | {} | {} | {sps:.1} | {lat:.2} | {:.1} | {:.1} | {:.0} % |",
            args.model,
            args.dtype,
            model.kernels(),
            rate / 1e9,
            gemm / 1e9,
            share * 100.0
        )?;
        writeln!(
            out,
            "\n{} sentences, {tokens} tokens (mean {:.1}), median of {} runs",
            texts.len(),
            tokens as f64 / texts.len() as f64,
            args.repetitions
        )?;
        if let Some((lowest, mean, n)) = quality {
            writeln!(
                out,
                "cosine to the reference over {n} sentences: lowest {lowest:.6}, mean {mean:.6}"
            )?;
        }
    }
    Ok(())
}

/// Lowest and mean cosine of the model's vectors to the reference file's, and the count.
fn quality(model: &dyn minerva_engine::embed::EmbeddingModel, path: &std::path::Path) -> Result<(f64, f64, usize)> {
    #[derive(serde::Deserialize)]
    struct Reference {
        sentences: Vec<Sentence>,
    }
    #[derive(serde::Deserialize)]
    struct Sentence {
        text: String,
        embedding: Vec<f32>,
    }
    let raw = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let reference: Reference = serde_json::from_str(&raw)
        .with_context(|| format!("{}: expected {{sentences: [{{text, embedding}}]}}", path.display()))?;
    let texts: Vec<&str> = reference.sentences.iter().map(|s| s.text.as_str()).collect();
    let vectors = model.embed(&texts, EmbedOptions::default())?;
    let cosines: Vec<f64> = vectors
        .iter()
        .zip(&reference.sentences)
        .map(|(v, s)| cosine_similarity(v, &s.embedding))
        .collect();
    if cosines.is_empty() {
        bail!("{}: no reference sentences", path.display());
    }
    let lowest = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    Ok((lowest, mean, cosines.len()))
}
