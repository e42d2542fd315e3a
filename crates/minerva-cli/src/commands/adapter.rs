//! `minerva adapter init BASE --name NAME`: a fresh LoRA adapter for a GGUF model of the
//! store, in llama.cpp's adapter format, at `adapters/NAME.gguf`, recording the base's
//! registered SHA-256 (so that the server refuses it for any other base). Its B factors
//! are zero, as LoRA training starts: served, it answers as the base does, at the
//! adapter's cost (what `scripts/bench-adapters.sh` measures).

use anyhow::{Context, Result, bail};
use minerva_engine::llm::lora::LoraAdapterFile;
use minerva_store::{ADAPTERS_DIR, ModelFormat, ModelId, ModelStore};

use crate::model_arg;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a fresh (untrained) adapter for a base model into the store's adapters.
    Init(InitArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// The base model (a GGUF language model in the store).
    base: ModelId,
    /// The adapter's name: requests use `BASE+NAME`.
    #[arg(long)]
    name: ModelId,
    /// Rank of the factors.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA's alpha: updates are scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// The matrices adapted, by the end of their names.
    #[arg(long, value_delimiter = ',', default_value = "attn_q.weight,attn_v.weight")]
    targets: Vec<String>,
    /// Seed of the A factors' random start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace an adapter of that name.
    #[arg(long)]
    force: bool,
}

pub fn run(store: &ModelStore, command: Command) -> Result<()> {
    match command {
        Command::Init(args) => init(store, args),
    }
}

fn init(store: &ModelStore, args: InitArgs) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let record = registry.check(store, &args.base)?;
    let entry = store.resolve(&args.base)?;
    if entry.format != ModelFormat::Gguf {
        bail!(
            "{} is an embedding model; adapters are for GGUF language models",
            args.base
        );
    }
    let dir = store.root().join(ADAPTERS_DIR);
    let out = dir.join(format!("{}.gguf", args.name));
    if out.exists() && !args.force {
        bail!("adapter {} exists ({}); --force replaces it", args.name, out.display());
    }
    let targets: Vec<&str> = args.targets.iter().map(String::as_str).collect();
    let mut adapter = LoraAdapterFile::init(&entry.path, &targets, args.rank, args.alpha, args.seed)?;
    adapter.base_sha256 = Some(record.sha256.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    adapter.write(&out)?;
    println!(
        "adapter {} for {} (rank {}, alpha {}, {} matrices) at {}; use it as {}+{}",
        args.name,
        args.base,
        args.rank,
        args.alpha,
        adapter.pairs.len(),
        out.display(),
        args.base,
        args.name
    );
    Ok(())
}
