//! `minerva models`: what is in the models directory, with sizes, SHA-256 hashes and
//! integrity status from the registry (files are hashed only when new or changed).

use std::io::Write;

use anyhow::Result;
use minerva_store::{ModelId, ModelRecord, ModelStore, RegistryError};

use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let mut ids: Vec<ModelId> = store.list()?.into_iter().map(|m| m.id).collect();
    ids.extend(registry.records()?.into_iter().map(|r| r.id));
    ids.sort();
    ids.dedup();
    let bar = progress::bytes(0, "hashing");
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        bar.set_message(format!("hashing {id}"));
        let checked = registry.check_with_progress(store, &id, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
        let row = match checked {
            Ok(record) => Ok(record),
            // The record says what is wrong.
            Err(RegistryError::HashMismatch { .. } | RegistryError::Missing { .. }) => registry
                .record(&id)?
                .ok_or_else(|| anyhow::anyhow!("{id} vanished from the registry")),
            // A file that is not a usable model is listed with the reason, not fatal.
            Err(e) => Err(e.into()),
        };
        rows.push((id, row));
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if args.json {
        let list = rows
            .iter()
            .map(|(id, row)| match row {
                Ok(record) => json(store, record),
                Err(e) => Ok(serde_json::json!({ "id": id, "status": "invalid", "error": format!("{e:#}") })),
            })
            .collect::<Result<Vec<_>>>()?;
        writeln!(
            out,
            "{}",
            serde_json::json!({ "models_dir": store.root(), "registry": registry.location(), "models": list })
        )?;
        return Ok(());
    }
    writeln!(out, "models in {}", store.root().display())?;
    if rows.is_empty() {
        writeln!(out, "(none: run scripts/fetch-models.sh or `minerva import PATH`)")?;
    }
    for (id, row) in &rows {
        match row {
            Ok(record) => writeln!(out, "{}", line(record))?,
            Err(e) => writeln!(out, "{:<26} invalid: {e:#}", id.as_str())?,
        }
    }
    Ok(())
}

/// A record as JSON, with its path made absolute.
pub fn json(store: &ModelStore, record: &ModelRecord) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(record)?;
    value["path"] = serde_json::json!(store.root().join(&record.path));
    Ok(value)
}

/// A record on one line: id, format, architecture, parameters, quantization, size, status, digest.
pub fn line(r: &ModelRecord) -> String {
    format!(
        "{:<26} {:<21} {:<8} {:>7.1}M {:<8} {:>8.1} MB  {:<8} sha256:{}",
        r.id.as_str(),
        r.format.as_str(),
        r.architecture,
        r.parameter_count as f64 / 1e6,
        r.quantization,
        r.size_bytes as f64 / 1e6,
        r.status.as_str(),
        r.sha256
    )
}
