//! `minerva pull SOURCE`: download a model from a Hugging Face-compatible hub, an
//! Ollama-style registry or a URL into the models directory, verified, with a progress
//! bar; `minerva rm NAME`: remove one.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use minerva_pull::{PullEvent, PullOptions};
use minerva_store::{ModelId, ModelStore};

use crate::commands::models;
use crate::{model_arg, progress};

#[derive(clap::Args)]
pub struct Args {
    /// `hf.co/OWNER/REPO[:QUANT]`, `hf.co/OWNER/REPO/FILE.gguf`, `[ollama.com/]NAME[:TAG]`
    /// or an `http(s)://` URL (with --sha256). The hub is `HF_ENDPOINT` (token `HF_TOKEN`),
    /// the registry `MINERVA_OLLAMA_REGISTRY`.
    source: String,
    /// The model's name in the store (default: from the source, e.g. `smollm2:135m`).
    #[arg(long = "as")]
    name: Option<ModelId>,
    /// The SHA-256 the file must have (required for a plain URL; checked for any source).
    #[arg(long)]
    sha256: Option<String>,
    /// Refuse network access (also MINERVA_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Extra trusted CA certificates, PEM (a mirror with its own CA).
    #[arg(long, env = "MINERVA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Print the registered record as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let mut options = PullOptions::from_env();
    options.name = args.name;
    options.sha256 = args.sha256;
    options.offline |= args.offline;
    options.ca_file = args.ca_file;
    let bar = progress::bytes(0, "downloading");
    let spinner = progress::spinner(format!("resolving {}", args.source));
    let started = Instant::now();
    let mut downloaded_bytes = 0;
    let pulled = minerva_pull::pull(store, &registry, &args.source, &options, &mut |event| match event {
        PullEvent::Resolving => {}
        PullEvent::Downloading { name, done, total, .. } => {
            spinner.finish_and_clear();
            bar.set_message(format!("pulling {name}"));
            bar.set_length(total.unwrap_or(done));
            bar.set_position(done);
            downloaded_bytes = done;
        }
        PullEvent::Registering => bar.set_message("verifying"),
    });
    spinner.finish_and_clear();
    bar.finish_and_clear();
    let pulled = pulled?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", models::json(store, &pulled.record)?)?;
        return Ok(());
    }
    let seconds = started.elapsed().as_secs_f64();
    if pulled.downloaded {
        writeln!(
            out,
            "pulled {} as {} in {seconds:.1} s ({:.0} MB/s), SHA-256 verified",
            args.source,
            pulled.record.id,
            downloaded_bytes as f64 / 1e6 / seconds.max(1e-9)
        )?;
    } else {
        writeln!(out, "{} is up to date", pulled.record.id)?;
    }
    writeln!(out, "{}", models::line(&pulled.record))?;
    Ok(())
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Names of the models to remove (`NAME` or `NAME:TAG`).
    #[arg(required = true)]
    names: Vec<ModelId>,
}

pub fn rm(store: &ModelStore, args: RmArgs) -> Result<()> {
    let registry = model_arg::registry(store)?;
    for name in &args.names {
        // `NAME:latest` removes `NAME`, whichever spelling is stored.
        let name = store.canonical(name);
        registry.remove(store, &name)?;
        println!("removed {name}");
    }
    Ok(())
}
