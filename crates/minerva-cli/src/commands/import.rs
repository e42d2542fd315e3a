//! `minerva import PATH`: copy (or hard-link) a model into the models directory and
//! register it, hashing with a progress bar.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use minerva_store::{ImportMode, ImportOptions, ModelId, ModelStore};

use crate::commands::models;
use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a sentence-transformers directory.
    path: PathBuf,
    /// The model's id (default: the file name without .gguf, or the directory name).
    #[arg(long)]
    id: Option<ModelId>,
    /// Hard-link instead of copying (the file must be on the models directory's filesystem).
    #[arg(long)]
    link: bool,
    /// Print the registered record as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let options = ImportOptions {
        id: args.id,
        mode: if args.link {
            ImportMode::HardLink
        } else {
            ImportMode::Copy
        },
        ..Default::default()
    };
    let bar = progress::bytes(
        0,
        if args.link {
            "linking and hashing"
        } else {
            "copying and hashing"
        },
    );
    let started = Instant::now();
    let record = registry.import(store, &args.path, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let record = record?;
    let seconds = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", models::json(store, &record)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "imported {} into {} in {seconds:.2} s ({:.0} MB/s)",
        args.path.display(),
        store.root().join(&record.path).display(),
        record.size_bytes as f64 / 1e6 / seconds.max(1e-9)
    )?;
    writeln!(out, "{}", models::line(&record))?;
    Ok(())
}
