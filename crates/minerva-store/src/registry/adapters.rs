//! LoRA adapters as entries of the registry: each file `adapters/NAME.gguf` has a row with
//! its SHA-256, its size and modification time (to notice a changed file without hashing
//! it on every load), the digest of the base model it was made for, and where it came from
//! (`finetune`, `init`, `import`, or `found` for a file that appeared in the directory).
//!
//! [`Registry::check_adapter`] runs before an adapter loads, as [`Registry::check`] does
//! for a model: it registers a new file, re-hashes a changed one, and refuses one whose
//! digest no longer matches ([`RegistryError::AdapterMismatch`]).

use std::path::{Path, PathBuf};

use super::db::{DbError, Row, args};
use super::metadata::Fingerprint;
use super::{Registry, RegistryError, UnixMillis, now_millis, parse_id};
use crate::{ADAPTERS_DIR, ModelId, ModelStore, StoreError};

/// A registered adapter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdapterRecord {
    pub name: ModelId,
    pub sha256: String,
    /// The base model's SHA-256 the adapter was made for, when known (a sealed file's is
    /// known only when Minerva wrote or imported it).
    pub base_sha256: Option<String>,
    pub size_bytes: u64,
    pub modified_ns: i64,
    pub added_at: UnixMillis,
    /// `finetune`, `init`, `import` or `found`.
    pub origin: String,
}

const COLUMNS: &str = "name, sha256, base_sha256, size_bytes, modified_ns, added_at, origin";

impl Registry {
    /// Registers (or re-registers) the adapter file `adapters/NAME.gguf`: hashes it and
    /// records `base_sha256`, or, when `None`, the digest the file itself records.
    pub fn register_adapter(
        &self,
        store: &ModelStore,
        name: &ModelId,
        base_sha256: Option<&str>,
        origin: &str,
    ) -> Result<AdapterRecord, RegistryError> {
        let path = store.resolve_adapter(name)?;
        let base = match base_sha256 {
            Some(digest) => Some(digest.to_owned()),
            None => recorded_base(&path),
        };
        let fingerprint = Fingerprint::of(&path).map_err(io(&path))?;
        let sha256 = crate::sha256_file(&path, &mut |_, _| {}).map_err(io(&path))?;
        let record = AdapterRecord {
            name: name.clone(),
            sha256,
            base_sha256: base,
            size_bytes: fingerprint.size_bytes,
            modified_ns: fingerprint.modified_ns,
            added_at: now_millis(),
            origin: origin.to_owned(),
        };
        self.write(|tx| {
            tx.execute(
                "INSERT INTO adapters (name, sha256, base_sha256, size_bytes, modified_ns, added_at, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET sha256 = excluded.sha256,
                     base_sha256 = excluded.base_sha256, size_bytes = excluded.size_bytes,
                     modified_ns = excluded.modified_ns, added_at = excluded.added_at,
                     origin = excluded.origin",
                args![
                    name.as_str(),
                    &record.sha256,
                    &record.base_sha256,
                    record.size_bytes as i64,
                    record.modified_ns,
                    record.added_at,
                    &record.origin
                ],
            )
        })?;
        tracing::info!(adapter = %name, sha256 = %record.sha256, origin, "registered LoRA adapter");
        Ok(record)
    }

    /// Checks adapter `name` before it loads: registers an unknown file (`found`),
    /// re-hashes one whose size or modification time changed, and refuses one whose
    /// digest differs from the registered one, or whose file is gone.
    pub fn check_adapter(&self, store: &ModelStore, name: &ModelId) -> Result<AdapterRecord, RegistryError> {
        let record = self.adapter(name)?;
        let path = match store.resolve_adapter(name) {
            Ok(path) => path,
            Err(StoreError::UnknownAdapter { .. }) if record.is_some() => {
                return Err(RegistryError::AdapterMissing {
                    name: name.clone(),
                    path: store.root().join(ADAPTERS_DIR).join(format!("{name}.gguf")),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let Some(record) = record else {
            return self.register_adapter(store, name, None, "found");
        };
        let fingerprint = Fingerprint::of(&path).map_err(io(&path))?;
        if fingerprint.size_bytes == record.size_bytes && fingerprint.modified_ns == record.modified_ns {
            return Ok(record);
        }
        let actual = crate::sha256_file(&path, &mut |_, _| {}).map_err(io(&path))?;
        if actual != record.sha256 {
            return Err(RegistryError::AdapterMismatch {
                name: name.clone(),
                expected: record.sha256,
                actual,
            });
        }
        // Touched but unchanged: remember the new fingerprint.
        self.write(|tx| {
            tx.execute(
                "UPDATE adapters SET size_bytes = ?2, modified_ns = ?3 WHERE name = ?1",
                args![name.as_str(), fingerprint.size_bytes as i64, fingerprint.modified_ns],
            )
        })?;
        Ok(AdapterRecord {
            size_bytes: fingerprint.size_bytes,
            modified_ns: fingerprint.modified_ns,
            ..record
        })
    }

    /// Adapter `name`'s record, if registered.
    pub fn adapter(&self, name: &ModelId) -> Result<Option<AdapterRecord>, RegistryError> {
        self.read(|db| {
            db.query_opt(
                &format!("SELECT {COLUMNS} FROM adapters WHERE name = ?1"),
                args![name.as_str()],
            )?
            .map(|row| read_adapter(&row))
            .transpose()
        })
    }

    /// Every registered adapter, by name.
    pub fn adapters(&self) -> Result<Vec<AdapterRecord>, RegistryError> {
        self.read(|db| {
            db.query(&format!("SELECT {COLUMNS} FROM adapters ORDER BY name"), args![])?
                .iter()
                .map(read_adapter)
                .collect()
        })
    }

    /// Copies the adapter file `source` into the store as `adapters/NAME.gguf` (written
    /// beside it under a temporary name, then renamed) and registers it. An existing
    /// adapter of that name is replaced only with `replace`.
    pub fn import_adapter(
        &self,
        store: &ModelStore,
        source: &Path,
        name: &ModelId,
        base_sha256: Option<&str>,
        replace: bool,
    ) -> Result<AdapterRecord, RegistryError> {
        let dir = store.root().join(ADAPTERS_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let target = dir.join(format!("{name}.gguf"));
        if target.exists() && !replace {
            return Err(RegistryError::AdapterExists { name: name.clone() });
        }
        let temp = dir.join(format!(".{name}.gguf.partial"));
        std::fs::copy(source, &temp).map_err(io(source))?;
        std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io(&temp))?;
        std::fs::rename(&temp, &target).map_err(io(&target))?;
        self.register_adapter(store, name, base_sha256, "import")
    }

    /// Removes adapter `name`: its file, then its record. Returns whether either existed.
    pub fn remove_adapter(&self, store: &ModelStore, name: &ModelId) -> Result<bool, RegistryError> {
        let path = store.root().join(ADAPTERS_DIR).join(format!("{name}.gguf"));
        let had_file = match store.resolve_adapter(name) {
            Ok(path) => {
                std::fs::remove_file(&path).map_err(io(&path))?;
                true
            }
            Err(StoreError::UnknownAdapter { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        let rows = self.write(|tx| tx.execute("DELETE FROM adapters WHERE name = ?1", args![name.as_str()]))?;
        tracing::info!(adapter = %name, path = %path.display(), "removed LoRA adapter");
        Ok(had_file || rows > 0)
    }
}

/// The base digest an unsealed adapter file records, if any.
fn recorded_base(path: &Path) -> Option<String> {
    let info = minerva_gguf::inspect(path).ok()?;
    info.get_str(minerva_gguf::ADAPTER_BASE_DIGEST_KEY).map(str::to_owned)
}

fn read_adapter(row: &Row) -> Result<AdapterRecord, DbError> {
    Ok(AdapterRecord {
        name: parse_id(row, 0)?,
        sha256: row.get(1)?,
        base_sha256: row.get(2)?,
        size_bytes: row.get::<i64>(3)?.max(0) as u64,
        modified_ns: row.get(4)?,
        added_at: row.get(5)?,
        origin: row.get(6)?,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path: PathBuf = path.to_owned();
    move |source| RegistryError::Io { path, source }
}
