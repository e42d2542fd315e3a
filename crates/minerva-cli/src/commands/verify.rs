//! `minerva verify [ID]`: re-hash models and compare with their registered SHA-256; exits
//! non-zero when one does not match or is missing.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use minerva_store::{ModelId, ModelStatus, ModelStore};

use crate::commands::models;
use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// The model to verify (default: all).
    id: Option<ModelId>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let bar = progress::bytes(0, "verifying");
    let started = Instant::now();
    let records = registry.verify(store, args.id.as_ref(), &mut |id, done, total| {
        bar.set_message(format!("verifying {id}"));
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let records = records?;
    let seconds = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        let list = records
            .iter()
            .map(|r| models::json(store, r))
            .collect::<Result<Vec<_>>>()?;
        writeln!(out, "{}", serde_json::json!({ "models": list }))?;
    } else {
        for record in &records {
            writeln!(out, "{}", models::line(record))?;
            match record.status {
                ModelStatus::Ok => {}
                ModelStatus::Mismatch => writeln!(
                    out,
                    "  MISMATCH: the file now hashes to {}",
                    record.mismatch_sha256.as_deref().unwrap_or("?")
                )?,
                ModelStatus::Missing => writeln!(out, "  MISSING: {}", store.root().join(&record.path).display())?,
            }
        }
        let hashed = records.iter().filter(|r| r.status != ModelStatus::Missing);
        let megabytes = hashed.map(|r| r.size_bytes).sum::<u64>() as f64 / 1e6;
        writeln!(
            out,
            "hashed {} models ({megabytes:.1} MB) in {seconds:.2} s ({:.0} MB/s)",
            records.len(),
            megabytes / seconds.max(1e-9)
        )?;
    }
    let failed = records.iter().filter(|r| r.status != ModelStatus::Ok).count();
    if failed > 0 {
        bail!(
            "{failed} of {} models failed verification (mismatched or missing)",
            records.len()
        );
    }
    Ok(())
}
