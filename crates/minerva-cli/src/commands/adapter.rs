//! `minerva adapter …`: the store's LoRA adapters, each `adapters/NAME.gguf` with a row in
//! the registry (its digest, the base's digest, where it came from).
//!
//! - `init BASE --name NAME`: a fresh adapter for a GGUF model of the store, in llama.cpp's
//!   adapter format, recording the base's registered SHA-256 (so that the server refuses
//!   it for any other base). Its B factors are zero, as LoRA training starts: served, it
//!   answers as the base does, at the adapter's cost (what `scripts/bench-adapters.sh`
//!   measures).
//! - `import FILE --name NAME [--base MODEL]`: an adapter file made elsewhere (llama.cpp's
//!   `convert_lora_to_gguf.py`, another Minerva), checked against the base when one is
//!   named or recorded, copied in and registered.
//! - `list`: every adapter with its base and digest; `rm NAME` removes one.

use anyhow::{Context, Result, bail};
use minerva_engine::llm::lora::{self, LoraAdapterFile};
use minerva_store::{ADAPTERS_DIR, ModelFormat, ModelId, ModelStore};

use crate::model_arg;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a fresh (untrained) adapter for a base model into the store's adapters.
    Init(InitArgs),
    /// Copy a GGUF LoRA adapter file into the store and register it.
    Import(ImportArgs),
    /// List the store's adapters, with the models they serve with.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Remove an adapter (its file and its registry entry).
    Rm(RmArgs),
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The adapter file (GGUF, llama.cpp's LoRA format; a file sealed by Minerva opens
    /// with MINERVA_KEY or MINERVA_KEY_FILE).
    file: std::path::PathBuf,
    /// Its name in the store: requests use `BASE+NAME`.
    #[arg(long)]
    name: ModelId,
    /// The base model it was made for: the adapter is checked against it (architecture,
    /// shapes) and the base's digest recorded, when the file records none.
    #[arg(long)]
    base: Option<ModelId>,
    /// Replace an adapter of that name.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print JSON: each adapter's record and the names it serves under.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// The adapter's name.
    name: ModelId,
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
        Command::Import(args) => import(store, args),
        Command::List(args) => list(store, args),
        Command::Rm(args) => rm(store, args),
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
    registry.register_adapter(store, &args.name, Some(&record.sha256), "init")?;
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

fn import(store: &ModelStore, args: ImportArgs) -> Result<()> {
    let registry = model_arg::registry(store)?;
    let key = minerva_seal::Key::from_env()?;
    // Read as the server will: a sealed file through its key, into memory.
    let opened = lora::unseal(&args.file, key.as_ref())?;
    let readable = opened.as_ref().map_or_else(|| args.file.clone(), |m| m.path());
    let info = lora::inspect_adapter(&readable)?;
    let base_sha256 = match &args.base {
        Some(base) => {
            let record = registry.check(store, base)?;
            let entry = store.resolve(base)?;
            if entry.format != ModelFormat::Gguf {
                bail!("{base} is an embedding model; adapters are for GGUF language models");
            }
            let header = minerva_gguf::inspect(&entry.path)?;
            lora::check_fits(&info, &header, Some(&record.sha256))?;
            Some(info.base_sha256.clone().unwrap_or(record.sha256))
        }
        None => info.base_sha256.clone(),
    };
    let record = registry.import_adapter(store, &args.file, &args.name, base_sha256.as_deref(), args.force)?;
    let bases = bases_of(&registry, &record)?;
    println!(
        "adapter {} (rank {}, {} matrices, sha256 {}) imported; {}",
        args.name,
        info.rank,
        info.targets.len(),
        record.sha256,
        match bases.as_slice() {
            [] => "no model of the store is its base".to_owned(),
            names => format!(
                "use it as {}",
                names
                    .iter()
                    .map(|b| format!("{b}+{}", args.name))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        }
    );
    Ok(())
}

fn list(store: &ModelStore, args: ListArgs) -> Result<()> {
    let registry = model_arg::registry(store)?;
    // Files that appeared in the directory are registered on the way.
    for name in store.adapter_names()? {
        if let Err(e) = registry.check_adapter(store, &name) {
            eprintln!("warning: {e}");
        }
    }
    let adapters = registry.adapters()?;
    if args.json {
        let listed = adapters
            .iter()
            .map(|a| {
                let serves: Vec<String> = bases_of(&registry, a)?
                    .iter()
                    .map(|b| format!("{b}+{}", a.name))
                    .collect();
                let mut value = serde_json::to_value(a)?;
                value["serves_as"] = serde_json::json!(serves);
                Ok(value)
            })
            .collect::<Result<Vec<_>>>()?;
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if adapters.is_empty() {
        println!("no adapters (minerva finetune, minerva adapter import)");
        return Ok(());
    }
    println!(
        "{:<24} {:>10}  {:<10} {:<14} SERVES AS",
        "NAME", "SIZE", "ORIGIN", "SHA256"
    );
    for adapter in &adapters {
        let bases = bases_of(&registry, adapter)?;
        let serves = if bases.is_empty() {
            "(its base is not in the store)".to_owned()
        } else {
            bases
                .iter()
                .map(|b| format!("{b}+{}", adapter.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<24} {:>10}  {:<10} {:<14} {serves}",
            adapter.name.as_str(),
            format!("{:.1} MB", adapter.size_bytes as f64 / 1e6),
            adapter.origin,
            &adapter.sha256[..12.min(adapter.sha256.len())],
        );
    }
    Ok(())
}

fn rm(store: &ModelStore, args: RmArgs) -> Result<()> {
    let registry = model_arg::registry(store)?;
    if !registry.remove_adapter(store, &args.name)? {
        bail!("no adapter {} (minerva adapter list)", args.name);
    }
    // The training report beside it goes with it.
    let _ = std::fs::remove_file(store.root().join(ADAPTERS_DIR).join(format!("{}.json", args.name)));
    println!("removed adapter {}", args.name);
    Ok(())
}

/// The models of the store whose digest is the one the adapter was made for.
fn bases_of(registry: &minerva_store::Registry, adapter: &minerva_store::AdapterRecord) -> Result<Vec<ModelId>> {
    let Some(made_for) = &adapter.base_sha256 else {
        return Ok(Vec::new());
    };
    Ok(registry
        .records()?
        .into_iter()
        .filter(|r| r.sha256.eq_ignore_ascii_case(made_for))
        .map(|r| r.id)
        .collect())
}
