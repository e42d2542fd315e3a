//! `minerva models`: what is in the models directory, with sizes and SHA-256 hashes.

use std::io::Write;

use anyhow::Result;
use minerva_runtime::{ModelStore, sha256_file};

use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let models = store.list()?;
    let total: u64 = models.iter().map(|m| m.size_bytes).sum();
    let bar = progress::bytes(total, "hashing");
    let mut rows = Vec::new();
    for model in &models {
        let base = bar.position();
        let sha256 = sha256_file(&model.weights, &mut |done, _| bar.set_position(base + done))?;
        rows.push((model, sha256));
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(m, sha)| serde_json::json!({ "id": m.id, "format": m.format, "path": m.path, "size_bytes": m.size_bytes, "sha256": sha }))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "models_dir": store.root(), "models": list })
        )?;
        return Ok(());
    }
    writeln!(out, "models in {}", store.root().display())?;
    if rows.is_empty() {
        writeln!(out, "(none: run scripts/fetch-models.sh)")?;
    }
    for (m, sha) in rows {
        let format = m.format.as_str();
        writeln!(
            out,
            "{:<28} {:<22} {:>9.1} MB  sha256:{sha}",
            m.id.as_str(),
            format,
            m.size_bytes as f64 / 1e6
        )?;
    }
    Ok(())
}
