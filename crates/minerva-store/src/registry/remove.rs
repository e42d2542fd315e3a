//! Removing a model from the models directory and the registry, crash-safely.
//!
//! A removal of model `ID`, under the same lock as an import of `ID`:
//! 1. renames the model's file or directory to `.remove-ID` (the commit point: from here
//!    on the store no longer lists it, and the removal will complete);
//! 2. deletes the model's row in one transaction;
//! 3. deletes the renamed file.
//!
//! A crash before 1 leaves the model as it was. A crash after it leaves `.remove-ID`,
//! which [`Registry::recover_imports`] finishes (row and file gone) before anything else
//! reads the store. So a listed model always has its file.

use std::path::Path;

use super::db::args;
use super::import::{TempNames, remove_any};
use super::{ModelRecord, Registry, RegistryError};
use crate::{ModelId, ModelStore};

const PREFIX: &str = ".remove-";

impl Registry {
    /// Removes model `id`: its file (or directory) and its record. Returns the record it
    /// had, or `NotRegistered` when neither a record nor a file exists.
    pub fn remove(&self, store: &ModelStore, id: &ModelId) -> Result<Option<ModelRecord>, RegistryError> {
        let root = store.root();
        let names = TempNames::new(root, id);
        let _lock = names
            .lock()
            .map_err(|source| RegistryError::Io {
                path: root.to_owned(),
                source,
            })?
            .ok_or_else(|| RegistryError::ImportInProgress { id: id.clone() })?;
        let record = self.record(id)?;
        let path = match store.resolve(id) {
            Ok(entry) => Some(entry.path),
            Err(_) if record.is_some() => None,
            Err(e) => return Err(e.into()),
        };
        let trash = root.join(format!("{PREFIX}{id}"));
        if let Some(path) = &path {
            remove_any(&trash).map_err(io(&trash))?;
            std::fs::rename(path, &trash).map_err(io(path))?;
            sync_dir(root)?;
        }
        self.finish_removal(root, id)?;
        tracing::info!(%id, "removed model");
        Ok(record)
    }

    /// Finishes removals interrupted by a crash (called by [`Registry::recover_imports`]).
    pub(super) fn recover_removals(&self, store: &ModelStore) -> Result<(), RegistryError> {
        let root = store.root();
        let Ok(entries) = std::fs::read_dir(root) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| ModelId::new(n).ok())
            else {
                continue;
            };
            let Ok(Some(_lock)) = TempNames::new(root, &id).lock() else {
                continue;
            };
            tracing::info!(%id, "finishing an interrupted removal");
            self.finish_removal(root, &id)?;
        }
        Ok(())
    }

    /// Deletes everything of `id`: its rows (record, lineage, settings, history), its
    /// kept versions and the renamed file. Also what recovery runs after a crash.
    fn finish_removal(&self, root: &Path, id: &ModelId) -> Result<(), RegistryError> {
        self.write(|tx| {
            for table in ["lineage", "settings", "history", "models"] {
                tx.execute(&format!("DELETE FROM {table} WHERE id = ?1"), args![id.as_str()])?;
            }
            Ok(())
        })?;
        let versions = super::versions::versions_dir(root, id);
        remove_any(&versions).map_err(io(&versions))?;
        let trash = root.join(format!("{PREFIX}{id}"));
        remove_any(&trash).map_err(io(&trash))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_owned();
    move |source| RegistryError::Io { path, source }
}

fn sync_dir(root: &Path) -> Result<(), RegistryError> {
    std::fs::File::open(root)
        .and_then(|dir| dir.sync_all())
        .map_err(io(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelFormat;
    use crate::registry::metadata::{Fingerprint, ModelMetadata};
    use crate::registry::upsert;

    fn setup() -> (tempfile::TempDir, ModelStore, Registry) {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::new(home.path().join("models"));
        std::fs::create_dir(store.root()).unwrap();
        let registry = Registry::open(&home.path().join("registry.sqlite")).unwrap();
        let file = store.root().join("tiny.gguf");
        std::fs::write(&file, b"GGUF...").unwrap();
        let metadata = ModelMetadata {
            format: ModelFormat::Gguf,
            architecture: "llama".into(),
            parameter_count: 1,
            quantization: "F32".into(),
        };
        let fingerprint = Fingerprint::of(&file).unwrap();
        let id = ModelId::new("tiny").unwrap();
        registry
            .write(|tx| upsert(tx, &id, Path::new("tiny.gguf"), &metadata, fingerprint, "00", 0))
            .unwrap();
        (home, store, registry)
    }

    #[test]
    fn removing_deletes_the_file_and_the_record_and_a_second_removal_is_unknown() {
        let (_home, store, registry) = setup();
        let id = ModelId::new("tiny").unwrap();
        let removed = registry.remove(&store, &id).unwrap().expect("it had a record");
        assert_eq!(removed.id, id);
        assert!(store.list().unwrap().is_empty());
        assert!(registry.record(&id).unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(store.root()).unwrap().count(),
            0,
            "no file left behind"
        );
        assert!(registry.remove(&store, &id).is_err());
    }

    #[test]
    fn a_removal_cut_off_after_its_rename_is_finished_by_recovery() {
        let (_home, store, registry) = setup();
        let id = ModelId::new("tiny").unwrap();
        // What a kill -9 right after step 1 leaves: the renamed file, the row, a kept version.
        std::fs::rename(store.root().join("tiny.gguf"), store.root().join(".remove-tiny")).unwrap();
        let kept = crate::registry::versions::versions_dir(store.root(), &id);
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(kept.join("00.gguf"), b"GGUF").unwrap();
        assert!(
            store.list().unwrap().is_empty(),
            "the store stops listing it at the rename"
        );
        assert!(registry.record(&id).unwrap().is_some());
        registry.recover_imports(&store).unwrap();
        assert!(registry.record(&id).unwrap().is_none());
        assert!(!store.root().join(".remove-tiny").exists());
        assert!(!kept.exists(), "its kept versions go too");
    }
}
