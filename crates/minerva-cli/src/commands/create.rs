//! `minerva create NAME -f Modelfile`: a model from an Ollama-style Modelfile: `FROM` a
//! model of the store (tagged: one copy on disk) or a GGUF file (imported), `PARAMETER`,
//! `SYSTEM` and `TEMPLATE` (Jinja) as its settings. The whole file is checked before anything is written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use minerva_store::{ImportOptions, ModelId, ModelStore, Modelfile};

use crate::model_arg;

#[derive(clap::Args)]
pub struct Args {
    /// The new model's name.
    name: ModelId,
    /// The Modelfile (FROM, PARAMETER, SYSTEM, TEMPLATE).
    #[arg(long, short = 'f', default_value = "Modelfile")]
    file: PathBuf,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let modelfile = Modelfile::parse(&text).with_context(|| format!("{}", args.file.display()))?;
    crate::commands::settings::check_template(&modelfile.settings)?;
    let registry = model_arg::registry(store)?;
    let record = match ModelId::new(&modelfile.from)
        .ok()
        .filter(|id| store.resolve(id).is_ok())
    {
        Some(source) => registry.tag(store, &source, &args.name)?,
        None => {
            // A path, relative to the Modelfile as Ollama reads it.
            let base = args.file.parent().unwrap_or(Path::new("."));
            let path = base.join(&modelfile.from);
            if !path.exists() {
                bail!("FROM {}: neither a model in the store nor a file", modelfile.from);
            }
            let options = ImportOptions {
                id: Some(args.name.clone()),
                origin: format!("create from {}", path.display()),
                replace: true,
                ..Default::default()
            };
            registry.import(store, &path, &options, &mut |_, _| {})?
        }
    };
    registry.set_settings(&args.name, &modelfile.settings)?;
    println!("created {} (sha256:{})", args.name, record.sha256);
    for (key, value) in modelfile.settings.pairs() {
        println!("  {key} = {value:?}");
    }
    Ok(())
}
