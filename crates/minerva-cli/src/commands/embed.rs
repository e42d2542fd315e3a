//! `minerva embed`: sentence vectors from an embedding model.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use minerva_engine::embed::EmbedOptions;
use minerva_store::ModelStore;

use crate::model_arg;

#[derive(clap::Args)]
#[group(id = "input", required = true, args = ["text", "file"])]
pub struct Args {
    /// Model id in the models directory, or a path to a sentence-transformers directory.
    #[arg(long, short)]
    model: String,
    /// A text to embed (repeatable).
    #[arg(long, conflicts_with = "file")]
    text: Vec<String>,
    /// A JSON file holding an array of strings.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Skip the L2 normalization the model's configuration asks for.
    #[arg(long)]
    no_normalize: bool,
    /// Fail on inputs longer than the model's maximum instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Precision of the encoder's matrix products: f32, bf16 (AVX512-BF16) or int8.
    #[arg(long, default_value = "f32")]
    dtype: minerva_engine::embed::EmbeddingDtype,
    /// Print JSON (one vector per input).
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let texts: Vec<String> = match &args.file {
        Some(file) => {
            let raw = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            serde_json::from_str(&raw)
                .with_context(|| format!("{}: expected a JSON array of strings", file.display()))?
        }
        None => args.text.clone(),
    };
    let model = model_arg::load_embedding_with(store, &args.model, args.dtype)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = EmbedOptions {
        normalize: args.no_normalize.then_some(false),
        forbid_truncation: args.no_truncate,
    };
    let vectors = model.embed(&refs, options)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "model": args.model, "dimensions": model.dimensions(), "embeddings": vectors })
        )?;
    } else {
        for (text, vector) in texts.iter().zip(&vectors) {
            let head: Vec<String> = vector.iter().take(4).map(|v| format!("{v:.5}")).collect();
            writeln!(out, "{text:?}: [{}, ...] ({} dims)", head.join(", "), vector.len())?;
        }
    }
    Ok(())
}
