//! The models directory: every model is `<id>.gguf` (a GGUF file) or `<id>/` (a
//! sentence-transformers directory), and nothing outside the directory is ever opened.

use std::path::{Path, PathBuf};

use crate::ModelId;

/// The files of a sentence-transformers model directory that the engine opens (each
/// optional but the weights, the encoder's config and the tokenizer).
pub const SENTENCE_TRANSFORMERS_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
];

/// The subdirectory of the models directory that holds LoRA adapters, each
/// `adapters/<name>.gguf` (apart from the models, which they are not).
pub const ADAPTERS_DIR: &str = "adapters";

/// How a model is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFormat {
    /// A GGUF language model, run by llama.cpp.
    Gguf,
    /// A sentence-transformers directory (safetensors + tokenizer.json), run by Candle.
    SentenceTransformers,
}

impl ModelFormat {
    /// The format's name, as the API and the CLI print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::SentenceTransformers => "sentence-transformers",
        }
    }
}

/// A model found in the store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelEntry {
    /// Its id.
    pub id: ModelId,
    /// The file (GGUF) or directory (sentence-transformers).
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// The file whose hash identifies the model (the GGUF file or `model.safetensors`).
    pub weights: PathBuf,
    /// Size of `weights` in bytes.
    pub size_bytes: u64,
}

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No model of that id.
    #[error(
        "unknown model {id:?}: no {id}.gguf or {id}/ in {root} (run scripts/fetch-models.sh or `minerva models` to see what is there)"
    )]
    UnknownModel { id: String, root: PathBuf },
    /// No adapter of that name.
    #[error("unknown adapter {name:?}: no {name}.gguf in {dir}")]
    UnknownAdapter { name: String, dir: PathBuf },
    /// The id resolves to something outside the models directory (a symlink leading out).
    #[error("model {id:?} resolves outside the models directory {root}")]
    OutsideStore { id: String, root: PathBuf },
    /// Reading the directory failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The models directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    /// A store rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Finds model `id`, refusing anything that resolves outside the directory.
    pub fn resolve(&self, id: &ModelId) -> Result<ModelEntry, StoreError> {
        let unknown = || StoreError::UnknownModel {
            id: id.to_string(),
            root: self.root.clone(),
        };
        let file = self.root.join(format!("{id}.gguf"));
        let dir = self.root.join(id.as_str());
        let (path, format) = if file.is_file() {
            (file, ModelFormat::Gguf)
        } else if dir.join("model.safetensors").is_file() {
            (dir, ModelFormat::SentenceTransformers)
        } else {
            return Err(unknown());
        };
        let weights = match format {
            ModelFormat::Gguf => path.clone(),
            ModelFormat::SentenceTransformers => path.join("model.safetensors"),
        };
        // Every file the engine will open must resolve inside the directory.
        let opened: &[&str] = match format {
            ModelFormat::Gguf => &[""],
            ModelFormat::SentenceTransformers => SENTENCE_TRANSFORMERS_FILES,
        };
        for file in opened {
            let file = if file.is_empty() { path.clone() } else { path.join(file) };
            if file.exists() {
                self.ensure_inside(id, &file)?;
            }
        }
        let size_bytes = std::fs::metadata(&weights)
            .map_err(|source| StoreError::Io {
                path: weights.clone(),
                source,
            })?
            .len();
        Ok(ModelEntry {
            id: id.clone(),
            path,
            format,
            weights,
            size_bytes,
        })
    }

    /// Every model in the directory, sorted by id. Entries whose names are not valid ids
    /// are skipped.
    /// The id under which `id` is stored, as users type names: `NAME` and `NAME:latest`
    /// are one model (Ollama's convention), whichever spelling the store holds. An id the
    /// store holds under neither spelling comes back as it is.
    pub fn canonical(&self, id: &ModelId) -> ModelId {
        if self.resolve(id).is_ok() {
            return id.clone();
        }
        let other = match id.as_str().strip_suffix(":latest") {
            Some(base) => ModelId::new(base).ok(),
            None if !id.as_str().contains(':') => ModelId::new(&format!("{id}:latest")).ok(),
            None => None,
        };
        other.filter(|o| self.resolve(o).is_ok()).unwrap_or_else(|| id.clone())
    }

    pub fn list(&self) -> Result<Vec<ModelEntry>, StoreError> {
        let io = |source| StoreError::Io {
            path: self.root.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut models = Vec::new();
        for entry in entries {
            let name = entry.map_err(io)?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(id) = ModelId::new(name.strip_suffix(".gguf").unwrap_or(name)) else {
                continue;
            };
            if let Ok(model) = self.resolve(&id) {
                models.push(model);
            }
        }
        models.sort_by(|a, b| a.id.cmp(&b.id));
        models.dedup_by(|a, b| a.id == b.id);
        Ok(models)
    }

    /// The names of the adapter files in `adapters/` (`NAME.gguf`), sorted.
    pub fn adapter_names(&self) -> Result<Vec<ModelId>, StoreError> {
        let dir = self.root.join(ADAPTERS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut names: Vec<ModelId> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                ModelId::new(name.to_str()?.strip_suffix(".gguf")?).ok()
            })
            .filter(|id| self.resolve_adapter(id).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The file of LoRA adapter `name` (`adapters/<name>.gguf`), refusing anything that
    /// resolves outside the models directory.
    pub fn resolve_adapter(&self, name: &ModelId) -> Result<PathBuf, StoreError> {
        let dir = self.root.join(ADAPTERS_DIR);
        let file = dir.join(format!("{name}.gguf"));
        if !file.is_file() {
            return Err(StoreError::UnknownAdapter {
                name: name.to_string(),
                dir,
            });
        }
        self.ensure_inside(name, &file)?;
        Ok(file)
    }

    fn ensure_inside(&self, id: &ModelId, path: &Path) -> Result<(), StoreError> {
        let canonical = |p: &Path| {
            p.canonicalize().map_err(|source| StoreError::Io {
                path: p.to_owned(),
                source,
            })
        };
        if canonical(path)?.starts_with(canonical(&self.root)?) {
            Ok(())
        } else {
            Err(StoreError::OutsideStore {
                id: id.to_string(),
                root: self.root.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ModelId {
        ModelId::new(s).unwrap()
    }

    #[test]
    fn resolves_gguf_files_and_model_directories_and_lists_them() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("tiny.gguf"), b"GGUF....").unwrap();
        std::fs::create_dir(root.path().join("enc")).unwrap();
        std::fs::write(root.path().join("enc/model.safetensors"), b"0123456789").unwrap();
        std::fs::write(root.path().join("notes.txt"), b"x").unwrap();
        let store = ModelStore::new(root.path());
        let tiny = store.resolve(&id("tiny")).unwrap();
        assert_eq!((tiny.format, tiny.size_bytes), (ModelFormat::Gguf, 8));
        let enc = store.resolve(&id("enc")).unwrap();
        assert_eq!((enc.format, enc.size_bytes), (ModelFormat::SentenceTransformers, 10));
        let ids: Vec<String> = store.list().unwrap().into_iter().map(|m| m.id.to_string()).collect();
        assert_eq!(ids, ["enc", "tiny"]);
    }

    #[test]
    fn name_and_name_latest_are_one_model_whichever_is_stored() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("plain.gguf"), b"GGUF").unwrap();
        std::fs::write(root.path().join("tagged:latest.gguf"), b"GGUF").unwrap();
        std::fs::write(root.path().join("other:1b.gguf"), b"GGUF").unwrap();
        let store = ModelStore::new(root.path());
        assert_eq!(store.canonical(&id("plain:latest")), id("plain"));
        assert_eq!(store.canonical(&id("tagged")), id("tagged:latest"));
        assert_eq!(store.canonical(&id("plain")), id("plain"));
        // Only `latest` is implied; an unknown name stays as typed (and fails to resolve).
        assert_eq!(store.canonical(&id("other")), id("other"));
        assert_eq!(store.canonical(&id("nothing")), id("nothing"));
    }

    #[test]
    fn unknown_model_is_an_error_naming_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let err = ModelStore::new(root.path()).resolve(&id("nope")).unwrap_err();
        assert!(matches!(err, StoreError::UnknownModel { .. }));
        assert!(err.to_string().contains(&root.path().display().to_string()));
    }

    #[test]
    fn symlinked_tokenizer_leading_out_of_the_directory_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("tokenizer.json"), b"{}").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("enc")).unwrap();
        std::fs::write(root.path().join("enc/model.safetensors"), b"0").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("tokenizer.json"),
            root.path().join("enc/tokenizer.json"),
        )
        .unwrap();
        let err = ModelStore::new(root.path()).resolve(&id("enc")).unwrap_err();
        assert!(matches!(err, StoreError::OutsideStore { .. }), "{err}");
    }

    #[test]
    fn symlink_leading_out_of_the_directory_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.gguf"), b"GGUF").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.gguf"), root.path().join("escape.gguf")).unwrap();
        let err = ModelStore::new(root.path()).resolve(&id("escape")).unwrap_err();
        assert!(matches!(err, StoreError::OutsideStore { .. }), "{err}");
        assert!(ModelStore::new(root.path()).list().unwrap().is_empty());
    }
}
