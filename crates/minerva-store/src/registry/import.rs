//! Importing a model into the models directory, crash-safely.
//!
//! An import of model `ID`:
//! 1. validates the source (GGUF header, or the directory's config.json and safetensors
//!    header) before writing anything;
//! 2. takes an exclusive lock on `.import-ID.lock` in the models directory, and copies (or
//!    hard-links) the source to `.import-ID.partial`, hashing while copying;
//! 3. commits, in one transaction, the model's row and a `pending_imports` entry naming
//!    the temporary and final names;
//! 4. renames the temporary file into place and deletes the pending entry.
//!
//! A crash before 3 leaves an unlocked temporary file and no row: [`Registry::recover_imports`]
//! deletes it. A crash after 3 leaves the row and a pending entry: recovery finishes the
//! rename. Either way, once recovered, the model has both its row and its file or neither.
//! Names starting with a dot are never model ids, so the store never lists temporary files.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use super::db::args;
use super::metadata::{Fingerprint, ModelMetadata};
use super::{ModelRecord, Progress, Registry, RegistryError, now_millis, upsert};
use crate::hash::{copy_hashed, hard_link_model, sha256_model};
use crate::{ModelId, ModelStore};

const PREFIX: &str = ".import-";
const PARTIAL: &str = ".partial";
const LOCK: &str = ".lock";

/// How the model's bytes get into the models directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImportMode {
    /// Copy them (the source can then be deleted).
    #[default]
    Copy,
    /// Hard-link them (same filesystem only; the source and the model share their bytes).
    HardLink,
}

/// Options of [`Registry::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The model's id; by default the file name without `.gguf`, or the directory name.
    pub id: Option<ModelId>,
    /// Copy or hard-link.
    pub mode: ImportMode,
    /// Where the model came from, for its history (`import PATH`, `pull SOURCE`, …).
    pub origin: String,
    /// Point an existing name at the new file (the old one is kept as a version that
    /// `rollback` can restore); without it an existing name is an error. Files only.
    pub replace: bool,
}

impl Registry {
    /// Imports the GGUF file or sentence-transformers directory `source` into `store` and
    /// registers it; `progress(done, total)` follows the bytes copied and hashed.
    pub fn import(
        &self,
        store: &ModelStore,
        source: &Path,
        options: &ImportOptions,
        progress: Progress,
    ) -> Result<ModelRecord, RegistryError> {
        ModelMetadata::read(source)?;
        let id = match &options.id {
            Some(id) => id.clone(),
            None => default_id(source)?,
        };
        let root = store.root();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::Io { path, source }
        };
        std::fs::create_dir_all(root).map_err(io(root))?;
        let names = TempNames::new(root, &id);
        let _lock = names
            .lock()
            .map_err(io(&names.lock))?
            .ok_or_else(|| RegistryError::ImportInProgress { id: id.clone() })?;
        let final_name = if source.is_dir() {
            id.to_string()
        } else {
            format!("{id}.gguf")
        };
        let exists = store.resolve(&id).is_ok() || root.join(&final_name).exists() || self.record(&id)?.is_some();
        if exists && (!options.replace || source.is_dir()) {
            return Err(RegistryError::AlreadyExists {
                id,
                root: root.to_owned(),
            });
        }
        remove_any(&names.partial).map_err(io(&names.partial))?;
        let staged = stage(source, &names.partial, root, options.mode, progress).and_then(|sha256| {
            // What gets registered is what was written, so validate the copy, not the source.
            let metadata = ModelMetadata::read(&names.partial)?;
            let fingerprint = Fingerprint::of(&names.partial).map_err(io(&names.partial))?;
            Ok((sha256, metadata, fingerprint))
        });
        let (sha256, metadata, fingerprint) = match staged {
            Ok(staged) => staged,
            Err(e) => {
                let _ = remove_any(&names.partial);
                return Err(e);
            }
        };
        let replaced = match self.record(&id)? {
            Some(old) if exists => {
                if old.sha256 == sha256 {
                    let _ = remove_any(&names.partial);
                    return Ok(old);
                }
                self.keep_version(store, &id, &old.sha256)?;
                Some(old)
            }
            _ => None,
        };
        let temp_name = names.partial_name();
        let origin = if options.origin.is_empty() {
            format!("import {}", source.display())
        } else {
            options.origin.clone()
        };
        self.write(|tx| {
            upsert(
                tx,
                &id,
                Path::new(&final_name),
                &metadata,
                fingerprint,
                &sha256,
                now_millis(),
            )?;
            if let Some(old) = &replaced {
                // A model registered before history was kept gets its first entry now, so
                // that rollback can find the file it is being replaced with.
                tx.execute(
                    "INSERT INTO history (id, sha256, at, origin)
                     SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS BIGINT), 'registered before history was kept'
                     WHERE NOT EXISTS (SELECT 1 FROM history WHERE id = ?1)",
                    args![id.as_str(), &old.sha256, old.added_at],
                )?;
                // What it was made from no longer describes the new file.
                tx.execute("DELETE FROM lineage WHERE id = ?1", args![id.as_str()])?;
            }
            tx.execute(
                "INSERT INTO history (id, sha256, at, origin) VALUES (?1, ?2, ?3, ?4)",
                args![id.as_str(), &sha256, now_millis(), &origin],
            )?;
            tx.execute(
                "INSERT INTO pending_imports (id, temp_name, final_name) VALUES (?1, ?2, ?3)",
                args![id.as_str(), &temp_name, &final_name],
            )?;
            Ok(())
        })?;
        self.finish_import(root, &id, &temp_name, &final_name)?;
        tracing::info!(%id, path = %root.join(&final_name).display(), %sha256, "imported model");
        self.require(&id)
    }

    /// Finishes or undoes imports interrupted by a crash: renames committed imports into
    /// place and deletes temporary files of uncommitted ones; finishes interrupted
    /// removals. Imports still running in other processes are left alone. Call it once
    /// after opening the registry.
    pub fn recover_imports(&self, store: &ModelStore) -> Result<(), RegistryError> {
        self.recover_removals(store)?;
        let root = store.root();
        let pending: Vec<(String, String, String)> = self.read(|db| {
            db.query("SELECT id, temp_name, final_name FROM pending_imports", &[])?
                .iter()
                .map(|row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .collect()
        })?;
        for (id, temp_name, final_name) in pending {
            let Ok(id) = ModelId::new(&id) else { continue };
            let names = TempNames::new(root, &id);
            let Ok(Some(_lock)) = names.lock() else { continue };
            if root.join(&temp_name).exists() || root.join(&final_name).exists() {
                self.finish_import(root, &id, &temp_name, &final_name)?;
                tracing::info!(%id, "finished an interrupted import");
            } else if !self.is_shared() {
                // In a shared registry the import may be another replica's, on its own
                // volume: only the replica that holds its files finishes or undoes it.
                self.write(|tx| {
                    tx.execute("DELETE FROM models WHERE id = ?1", args![id.as_str()])?;
                    tx.execute("DELETE FROM pending_imports WHERE id = ?1", args![id.as_str()])
                })?;
            }
        }
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(RegistryError::Io {
                    path: root.to_owned(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.strip_suffix(PARTIAL).or_else(|| n.strip_suffix(LOCK)))
                .and_then(|n| ModelId::new(n).ok())
            else {
                continue;
            };
            let names = TempNames::new(root, &id);
            if let Ok(Some(_lock)) = names.lock() {
                tracing::info!(%id, "removing the temporary files of an interrupted import");
                let _ = remove_any(&names.partial);
            }
        }
        Ok(())
    }

    /// Renames a committed import into place and clears its pending entry.
    fn finish_import(&self, root: &Path, id: &ModelId, temp_name: &str, final_name: &str) -> Result<(), RegistryError> {
        let (temp, target) = (root.join(temp_name), root.join(final_name));
        if temp.exists() {
            std::fs::rename(&temp, &target).map_err(|source| RegistryError::Io { path: target, source })?;
            File::open(root)
                .and_then(|dir| dir.sync_all())
                .map_err(|source| RegistryError::Io {
                    path: root.to_owned(),
                    source,
                })?;
        }
        self.write(|tx| tx.execute("DELETE FROM pending_imports WHERE id = ?1", args![id.as_str()]))?;
        Ok(())
    }
}

/// Copies or links `source` to `partial`, returning its digest.
fn stage(
    source: &Path,
    partial: &Path,
    root: &Path,
    mode: ImportMode,
    progress: Progress,
) -> Result<String, RegistryError> {
    let io = |source| RegistryError::Io {
        path: partial.to_owned(),
        source,
    };
    match mode {
        ImportMode::Copy => copy_hashed(source, partial, progress).map_err(io),
        ImportMode::HardLink => {
            hard_link_model(source, partial).map_err(|e| {
                if e.kind() == std::io::ErrorKind::CrossesDevices {
                    RegistryError::CrossDevice {
                        path: source.to_owned(),
                        root: root.to_owned(),
                    }
                } else {
                    io(e)
                }
            })?;
            sha256_model(partial, progress).map_err(io)
        }
    }
}

/// The id a source gets when none is given.
fn default_id(source: &Path) -> Result<ModelId, RegistryError> {
    let name = source.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = if source.is_dir() {
        name
    } else {
        name.strip_suffix(".gguf").unwrap_or(name)
    };
    Ok(ModelId::new(name)?)
}

/// The temporary file and lock file of an import.
pub(super) struct TempNames {
    partial: PathBuf,
    lock: PathBuf,
    id: ModelId,
}

impl TempNames {
    pub(super) fn new(root: &Path, id: &ModelId) -> Self {
        Self {
            partial: root.join(format!("{PREFIX}{id}{PARTIAL}")),
            lock: root.join(format!("{PREFIX}{id}{LOCK}")),
            id: id.clone(),
        }
    }

    fn partial_name(&self) -> String {
        format!("{PREFIX}{}{PARTIAL}", self.id)
    }

    /// Takes the import's lock, or `None` when another live process holds it.
    pub(super) fn lock(&self) -> std::io::Result<Option<ImportLock>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ImportLock {
                _file: file,
                path: self.lock.clone(),
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// An exclusive lock on an import's lock file, released when dropped or when the process
/// dies (the kernel drops the `flock` with the file).
pub(super) struct ImportLock {
    _file: File,
    path: PathBuf,
}

impl Drop for ImportLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(super) fn remove_any(path: &Path) -> std::io::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelFormat;

    fn setup() -> (tempfile::TempDir, ModelStore, Registry) {
        let home = tempfile::tempdir().unwrap();
        let store = ModelStore::new(home.path().join("models"));
        std::fs::create_dir(store.root()).unwrap();
        let registry = Registry::open(&home.path().join("registry.sqlite")).unwrap();
        (home, store, registry)
    }

    /// The state a crash between the commit and the rename leaves behind.
    fn committed_but_not_renamed(store: &ModelStore, registry: &Registry, id: &ModelId) {
        let names = TempNames::new(store.root(), id);
        std::fs::write(&names.partial, b"GGUF...").unwrap();
        let metadata = ModelMetadata {
            format: ModelFormat::Gguf,
            architecture: "llama".into(),
            parameter_count: 1,
            quantization: "F32".into(),
        };
        let fingerprint = Fingerprint::of(&names.partial).unwrap();
        registry
            .write(|tx| {
                upsert(
                    tx,
                    id,
                    Path::new(&format!("{id}.gguf")),
                    &metadata,
                    fingerprint,
                    "00",
                    0,
                )?;
                tx.execute(
                    "INSERT INTO pending_imports (id, temp_name, final_name) VALUES (?1, ?2, ?3)",
                    args![id.as_str(), names.partial_name(), format!("{id}.gguf")],
                )
            })
            .unwrap();
    }

    fn listing(store: &ModelStore) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn recovery_finishes_a_committed_import_and_removes_an_uncommitted_one() {
        let (_home, store, registry) = setup();
        let committed = ModelId::new("committed").unwrap();
        committed_but_not_renamed(&store, &registry, &committed);
        let uncommitted = TempNames::new(store.root(), &ModelId::new("uncommitted").unwrap());
        std::fs::write(&uncommitted.partial, b"half a mod").unwrap();
        std::fs::write(&uncommitted.lock, b"").unwrap();

        registry.recover_imports(&store).unwrap();
        assert_eq!(listing(&store), ["committed.gguf"]);
        let ids: Vec<ModelId> = registry.records().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, std::slice::from_ref(&committed));
        assert_eq!(std::fs::read(store.root().join("committed.gguf")).unwrap(), b"GGUF...");
        assert!(store.resolve(&committed).is_ok());
    }

    #[test]
    fn recovery_leaves_an_import_that_is_still_running_alone() {
        let (_home, store, registry) = setup();
        let id = ModelId::new("running").unwrap();
        let names = TempNames::new(store.root(), &id);
        let _held = names.lock().unwrap().expect("lock is free");
        std::fs::write(&names.partial, b"copying...").unwrap();
        registry.recover_imports(&store).unwrap();
        assert_eq!(listing(&store), [".import-running.lock", ".import-running.partial"]);
        assert!(
            matches!(TempNames::new(store.root(), &id).lock(), Ok(None)),
            "a second importer of the same id is turned away"
        );
    }
}
