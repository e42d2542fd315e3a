//! `minerva perplexity`: llama.cpp's perplexity method on a text file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use minerva_engine::SessionParams;
use minerva_engine::perplexity::perplexity;
use minerva_store::ModelStore;

use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// Model id in the models directory, or a path to a GGUF file.
    #[arg(long, short)]
    model: String,
    /// Text to score.
    #[arg(long, short)]
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: u32,
    /// CPU threads.
    #[arg(long, short)]
    threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let model = model_arg::load_llm(store, &args.model)?;
    let mut session = model.new_session(SessionParams {
        n_ctx: args.ctx,
        n_batch: args.ctx,
        n_seq_max: 1,
        threads: args.threads.unwrap_or_else(minerva_engine::compute::default_threads),
        kv_type: minerva_engine::KvType::F16,
        rope: minerva_engine::llm::RopeScaling::Model,
        flash_attention: true,
    })?;
    let bar = progress::bar(0, "perplexity");
    let report = perplexity(
        &*model,
        session.as_mut(),
        &text,
        args.ctx as usize,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "PPL = {:.4} +/- {:.5} ({} chunks of {} tokens, {} tokens scored)",
            report.perplexity, report.stderr, report.chunks, args.ctx, report.scored_tokens
        )?;
    }
    Ok(())
}
