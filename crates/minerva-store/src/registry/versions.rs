//! A name's history and the versions it can go back to.
//!
//! Every import (a pull, a quantization, a tag, a rollback) adds a row to `history`: the
//! digest the name now points at, when, and where it came from. When a name is pointed
//! at a new file (`tag` over an existing name, `import` with `replace`), the old file is
//! kept as `.versions/NAME/SHA256.gguf`, a hard link: a version another name still
//! holds costs no space, and `rollback` puts it back. `remove` drops a name's versions.

use std::path::{Path, PathBuf};

use super::db::args;
use super::{ImportMode, ImportOptions, ModelRecord, Registry, RegistryError, UnixMillis};
use crate::{ModelFormat, ModelId, ModelStore};

const VERSIONS: &str = ".versions";

/// One entry of a name's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub sha256: String,
    pub at: UnixMillis,
    pub origin: String,
}

impl Registry {
    /// Every digest model `id` pointed at, oldest first.
    pub fn history(&self, id: &ModelId) -> Result<Vec<HistoryEntry>, RegistryError> {
        self.read(|db| {
            db.query(
                "SELECT sha256, at, origin FROM history WHERE id = ?1 ORDER BY seq",
                args![id.as_str()],
            )?
            .iter()
            .map(|row| {
                Ok(HistoryEntry {
                    sha256: row.get(0)?,
                    at: row.get(1)?,
                    origin: row.get(2)?,
                })
            })
            .collect()
        })
    }

    /// Points `dst` at `src`'s file (a hard link: one copy on disk). An existing `dst`
    /// keeps its old file as a version.
    pub fn tag(&self, store: &ModelStore, src: &ModelId, dst: &ModelId) -> Result<ModelRecord, RegistryError> {
        let source = self.check(store, src)?;
        let entry = store.resolve(src)?;
        if entry.format != ModelFormat::Gguf {
            return Err(RegistryError::InvalidModel {
                path: PathBuf::from(src.as_str()),
                reason: "only GGUF models can be tagged (an embedding directory cannot be hard-linked)".into(),
            });
        }
        let options = ImportOptions {
            id: Some(dst.clone()),
            mode: ImportMode::HardLink,
            origin: format!("tag of {src} ({})", source.sha256),
            replace: true,
        };
        self.import(store, &entry.path, &options, &mut |_, _| {})
    }

    /// Points `id` back at the digest it had before its current one.
    pub fn rollback(&self, store: &ModelStore, id: &ModelId) -> Result<ModelRecord, RegistryError> {
        let current = self
            .record(id)?
            .ok_or_else(|| RegistryError::NotRegistered { id: id.clone() })?;
        let previous = self
            .history(id)?
            .into_iter()
            .rev()
            .find(|h| h.sha256 != current.sha256)
            .ok_or_else(|| RegistryError::InvalidModel {
                path: PathBuf::from(id.as_str()),
                reason: "has no earlier version to roll back to".into(),
            })?;
        let kept = version_path(store, id, &previous.sha256);
        let source = if kept.is_file() {
            kept
        } else {
            // Another name may still hold that digest.
            self.records()?
                .into_iter()
                .find(|r| r.sha256 == previous.sha256)
                .and_then(|r| store.resolve(&r.id).ok())
                .map(|e| e.path)
                .ok_or_else(|| RegistryError::InvalidModel {
                    path: PathBuf::from(id.as_str()),
                    reason: format!("its earlier version {} is no longer on disk", previous.sha256),
                })?
        };
        let options = ImportOptions {
            id: Some(id.clone()),
            mode: ImportMode::HardLink,
            origin: format!("rollback to {}", previous.sha256),
            replace: true,
        };
        self.import(store, &source, &options, &mut |_, _| {})
    }

    /// Keeps model `id`'s current file as version `sha256` (before it is replaced).
    pub(super) fn keep_version(&self, store: &ModelStore, id: &ModelId, sha256: &str) -> Result<(), RegistryError> {
        let Ok(entry) = store.resolve(id) else {
            return Ok(());
        };
        if entry.format != ModelFormat::Gguf {
            return Ok(());
        }
        let kept = version_path(store, id, sha256);
        if kept.exists() {
            return Ok(());
        }
        let dir = kept.parent().expect("a version has a directory");
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::hard_link(&entry.path, &kept))
            .map_err(|source| RegistryError::Io { path: kept, source })
    }
}

/// Where model `id`'s kept versions live in the models directory `root`.
pub(super) fn versions_dir(root: &Path, id: &ModelId) -> PathBuf {
    root.join(VERSIONS).join(id.as_str())
}

fn version_path(store: &ModelStore, id: &ModelId, sha256: &str) -> PathBuf {
    let sha: String = sha256.chars().filter(char::is_ascii_hexdigit).collect();
    versions_dir(store.root(), id).join(format!("{sha}.gguf"))
}
