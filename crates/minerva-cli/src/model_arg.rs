//! Turning a `--model ID|PATH` argument into a loaded model.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use minerva_engine::embed::EmbeddingModel;
use minerva_store::{ModelFormat, ModelId, ModelStore, Registry};

use crate::progress;

/// The models directory: `$MINERVA_HOME/models`, by default `~/.local/share/minerva/models`.
pub fn store(home: Option<PathBuf>) -> ModelStore {
    let home = home.unwrap_or_else(|| {
        let base = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        base.join(".local/share/minerva")
    });
    ModelStore::new(home.join("models"))
}

/// `--registry` (`MINERVA_REGISTRY`), set once by `main`.
static REGISTRY: OnceLock<Option<String>> = OnceLock::new();

/// Uses the registry at `location` (a SQLite file or a `postgres://` URL) instead of the
/// one beside the models directory.
pub fn use_registry(location: Option<String>) {
    let _ = REGISTRY.set(location);
}

/// The registry: `--registry`'s, else the one beside the models directory
/// (`$MINERVA_HOME/registry.sqlite`); with any import interrupted by a crash finished or
/// cleaned up.
pub fn registry(store: &ModelStore) -> Result<Registry> {
    let registry = match REGISTRY.get().and_then(Option::as_deref) {
        Some(location) => Registry::open_location(location)?,
        None => {
            let path = Registry::default_path(store);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            Registry::open(&path)?
        }
    };
    registry.recover_imports(store)?;
    Ok(registry)
}

/// Where a `--model` argument points.
pub struct ModelLocation {
    /// File (GGUF) or directory (sentence-transformers).
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// A short name for messages.
    pub name: String,
}

/// Resolves `arg` as a model id in the store, or else as a path on disk.
pub fn locate(store: &ModelStore, arg: &str) -> Result<ModelLocation> {
    if let Ok(id) = ModelId::new(arg) {
        match store.resolve(&store.canonical(&id)) {
            Ok(entry) => {
                return Ok(ModelLocation {
                    path: entry.path,
                    format: entry.format,
                    name: arg.to_owned(),
                });
            }
            Err(e) if !Path::new(arg).exists() => return Err(e.into()),
            Err(_) => {}
        }
    }
    let path = PathBuf::from(arg);
    let format = if path.is_dir() {
        ModelFormat::SentenceTransformers
    } else if path.exists() {
        ModelFormat::Gguf
    } else {
        bail!("{arg}: no such model id or file");
    };
    Ok(ModelLocation {
        path,
        format,
        name: arg.to_owned(),
    })
}

/// Loads a GGUF language model, with a spinner on a terminal.
pub fn load_llm(store: &ModelStore, arg: &str) -> Result<std::sync::Arc<dyn minerva_engine::LanguageModel>> {
    let location = locate(store, arg)?;
    if location.format != ModelFormat::Gguf {
        bail!(
            "{}: is an embedding model; this command needs a GGUF language model",
            location.name
        );
    }
    let spinner = progress::spinner(format!("loading {}", location.name));
    let model = minerva_engine::llm::load(&location.path).with_context(|| format!("loading {}", location.name));
    spinner.finish_and_clear();
    model
}

/// Loads a sentence-embedding model, with a spinner on a terminal.
pub fn load_embedding(store: &ModelStore, arg: &str) -> Result<std::sync::Arc<dyn EmbeddingModel>> {
    load_embedding_with(store, arg, minerva_engine::embed::EmbeddingDtype::F32)
}

/// [`load_embedding`] with the encoder's products in `dtype`.
pub fn load_embedding_with(
    store: &ModelStore,
    arg: &str,
    dtype: minerva_engine::embed::EmbeddingDtype,
) -> Result<std::sync::Arc<dyn EmbeddingModel>> {
    let location = locate(store, arg)?;
    if location.format != ModelFormat::SentenceTransformers {
        bail!(
            "{}: is a GGUF language model; this command needs an embedding model directory",
            location.name
        );
    }
    let spinner = progress::spinner(format!("loading {}", location.name));
    let model =
        minerva_engine::embed::load_with(&location.path, dtype).with_context(|| format!("loading {}", location.name));
    spinner.finish_and_clear();
    model
}
