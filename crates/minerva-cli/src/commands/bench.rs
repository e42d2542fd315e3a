//! `minerva bench`: prefill and decode speed, measured the way `llama-bench` measures
//! them (pp: one batch of N prompt tokens on an empty cache; tg: N single-token decodes
//! from an empty cache), so the two print comparable figures.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use minerva_engine::llm::{LogitsWanted, SequenceInput};
use minerva_engine::sampling::argmax;
use minerva_engine::{LanguageModel, SeqId, Session, SessionParams, TokenId};
use minerva_store::ModelStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// Model id in the models directory, or a path to a GGUF file.
    #[arg(long, short, required = true)]
    model: Option<String>,
    /// Prompt tokens for the prefill test.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: u32,
    /// Tokens for the decode test.
    #[arg(long, default_value_t = 128)]
    gen_tokens: u32,
    /// Measured runs per test (the median is reported); at least 3.
    #[arg(long, short, default_value_t = 5)]
    repetitions: usize,
    /// CPU threads.
    #[arg(long, short)]
    threads: Option<usize>,
    /// KV cache type: f16, q8_0 or q4_0 (llama-bench's -ctk/-ctv).
    #[arg(long, default_value = "f16")]
    kv_type: minerva_engine::KvType,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.repetitions < 3 {
        eprintln!(
            "note: {} repetition(s): no median to speak of, one run's figure",
            args.repetitions
        );
    }
    if args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--prompt-tokens and --gen-tokens must be positive");
    }
    let threads = args.threads.unwrap_or_else(minerva_engine::compute::default_threads);
    let model_name = args.model.context("--model is required")?;
    let model = model_arg::load_llm(store, &model_name)?;
    let bar = progress::bar(2 * (args.repetitions as u64 + 1), "bench");
    let Speed {
        mut prefill,
        mut decode,
    } = speed(
        &*model,
        &SpeedTest {
            threads,
            kv_type: args.kv_type,
            prompt_tokens: args.prompt_tokens,
            gen_tokens: args.gen_tokens,
            repetitions: args.repetitions,
        },
        &mut || bar.inc(1),
    )?;
    bar.finish_and_clear();

    let meta = model.metadata();
    let (pp, tg) = (median(&mut prefill), median(&mut decode));
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = serde_json::json!({
            "model": model_name,
            "architecture": meta.architecture,
            "quantization": meta.quantization,
            "threads": threads,
            "repetitions": args.repetitions,
            "prefill": { "tokens": args.prompt_tokens, "tokens_per_second_median": pp, "runs": prefill },
            "decode": { "tokens": args.gen_tokens, "tokens_per_second_median": tg, "runs": decode },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "| model | quant | threads | test | tokens/s (median of {}) |",
            args.repetitions
        )?;
        writeln!(out, "|---|---|---|---|---|")?;
        writeln!(
            out,
            "| {} | {} | {threads} | pp{} | {pp:.1} |",
            model_name, meta.quantization, args.prompt_tokens
        )?;
        writeln!(
            out,
            "| {} | {} | {threads} | tg{} | {tg:.1} |",
            model_name, meta.quantization, args.gen_tokens
        )?;
    }
    Ok(())
}

/// What [`speed`] measures.
pub struct SpeedTest {
    pub threads: usize,
    pub kv_type: minerva_engine::KvType,
    pub prompt_tokens: u32,
    pub gen_tokens: u32,
    pub repetitions: usize,
}

/// Tokens per second of each measured run.
pub struct Speed {
    pub prefill: Vec<f64>,
    pub decode: Vec<f64>,
}

impl Speed {
    /// Medians: (prefill, decode) tokens per second.
    pub fn medians(mut self) -> (f64, f64) {
        (median(&mut self.prefill), median(&mut self.decode))
    }
}

/// Prefill and decode speed as `llama-bench` measures them: all prefill runs, then all
/// decode runs, each test after one uncounted warm-up run (so the graph of one shape is
/// not rebuilt between runs), one context per test sized for it alone. `on_run` is called
/// after every run, warm-ups included.
pub fn speed(model: &dyn LanguageModel, test: &SpeedTest, on_run: &mut dyn FnMut()) -> Result<Speed> {
    let session_for = |n_ctx: u32, n_batch: u32| {
        model.new_session(SessionParams {
            n_ctx,
            n_batch,
            n_seq_max: 1,
            threads: test.threads,
            kv_type: test.kv_type,
            rope: minerva_engine::llm::RopeScaling::Model,
            flash_attention: true,
        })
    };
    let n_vocab = model.metadata().n_vocab;
    let mut rng = StdRng::seed_from_u64(42);
    let prompt: Vec<TokenId> = (0..test.prompt_tokens)
        .map(|_| rng.random_range(0..n_vocab) as TokenId)
        .collect();
    let first_token = model.metadata().bos_token.unwrap_or(prompt[0]);
    // Batches of at most 2048 tokens, as llama-bench's default `-b 2048` (and micro-batches
    // of 512, the session's): the buffers are sized for a batch, not for the whole prompt.
    let mut session = session_for(test.prompt_tokens, test.prompt_tokens.min(PREFILL_BATCH))?;
    let mut prefill = Vec::new();
    for run in 0..=test.repetitions {
        let seconds = time_prefill(session.as_mut(), &prompt)?;
        on_run();
        if run > 0 {
            prefill.push(f64::from(test.prompt_tokens) / seconds);
        }
    }
    let mut session = session_for(test.gen_tokens, 1)?;
    let mut decode = Vec::new();
    for run in 0..=test.repetitions {
        let seconds = time_decode(session.as_mut(), first_token, test.gen_tokens)?;
        on_run();
        if run > 0 {
            decode.push(f64::from(test.gen_tokens) / seconds);
        }
    }
    Ok(Speed { prefill, decode })
}

/// Most prompt tokens one prefill batch carries.
const PREFILL_BATCH: u32 = 2048;

/// Seconds to evaluate `prompt` in the session's batches on an empty cache.
fn time_prefill(session: &mut dyn Session, prompt: &[TokenId]) -> Result<f64> {
    session.free_sequence(SeqId(0));
    let started = Instant::now();
    minerva_engine::generate::prefill(session, SeqId(0), prompt)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds to decode `n` tokens one at a time (greedy) on an empty cache.
fn time_decode(session: &mut dyn Session, first: TokenId, n: u32) -> Result<f64> {
    session.free_sequence(SeqId(0));
    let started = Instant::now();
    let mut token = first;
    for pos in 0..n {
        let rows = session.decode(&[SequenceInput {
            seq: SeqId(0),
            tokens: &[token],
            start_pos: pos,
            logits: LogitsWanted::Last,
        }])?;
        token = argmax(rows[0][0]);
    }
    Ok(started.elapsed().as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
