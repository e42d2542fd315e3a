//! `minerva tokenize`: the token ids a model sees for a text.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use minerva_store::{ModelFormat, ModelStore};

use crate::model_arg;

#[derive(clap::Args)]
#[group(id = "input", required = true, args = ["text", "file"])]
pub struct Args {
    /// Model id in the models directory, or a path.
    #[arg(long, short)]
    model: String,
    /// The text.
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    /// Read the text from a file (byte-exact).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Parse special-token text into special tokens (GGUF models).
    #[arg(long)]
    special: bool,
    /// Print JSON (ids and the text of each token).
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(text), _) => text.clone(),
        (None, Some(file)) => std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        (None, None) => unreachable!("clap requires --text or --file"),
    };
    let location = model_arg::locate(store, &args.model)?;
    let (ids, pieces): (Vec<i64>, Vec<String>) = match location.format {
        ModelFormat::Gguf => {
            let model = model_arg::load_llm(store, &args.model)?;
            // Exactly what a completion prompt becomes: BOS as the model declares.
            let ids = model.tokenize(&text, true, args.special)?;
            let pieces = ids
                .iter()
                .map(|&t| String::from_utf8_lossy(&model.token_bytes(t, true)).into_owned())
                .collect();
            (ids.into_iter().map(i64::from).collect(), pieces)
        }
        ModelFormat::SentenceTransformers => {
            let model = model_arg::load_embedding(store, &args.model)?;
            let input = model.tokenize(0, &text, false)?;
            (input.ids.iter().map(|&t| i64::from(t)).collect(), Vec::new())
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "model": args.model, "ids": ids, "pieces": pieces, "count": ids.len() })
        )?;
    } else {
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        writeln!(out, "[{}]", list.join(", "))?;
    }
    Ok(())
}
