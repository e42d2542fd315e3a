//! The model registry: every known model with its digest, metadata, integrity status and
//! usage, in a SQLite database beside the models directory or, shared by replicas, in
//! PostgreSQL (`db/`).
//!
//! Each write is one transaction holding the database's single writer slot. Digests are
//! computed without holding the connection, so a long hash never blocks other callers.
//!
//! - [`Registry::check`] runs before every load: it registers a new model, re-hashes one
//!   whose size or modification time changed, and refuses one whose digest no longer
//!   matches ([`RegistryError::HashMismatch`]).
//! - [`Registry::import`] (in `import.rs`) copies a model into the directory and
//!   registers it atomically; [`Registry::remove`] (in `remove.rs`) takes it out the same way.
//! - [`Registry::record_access`] and [`Registry::record_load`] feed the usage counters and
//!   the access log that [`crate::patterns`] analyses.

mod adapters;
mod audit;
mod db;
mod error;
mod import;
mod lineage;
mod metadata;
mod record;
mod remove;
mod schema;
mod settings;
mod versions;

use std::path::{Path, PathBuf};
use std::time::Duration;

use db::{Backend, DbError, Row, Sql, args};

pub use adapters::AdapterRecord;
pub use audit::{AUDIT_RETENTION, AuditEntry};
pub use db::DbError as DatabaseError;
pub use error::RegistryError;
pub use import::{ImportMode, ImportOptions};
pub use lineage::Lineage;
pub use metadata::safetensors_header_summary;
use metadata::{Fingerprint, ModelMetadata};
pub use record::{AccessEvent, AccessKind, ModelRecord, ModelStatus, UnixMillis, now_millis};
pub use settings::{ModelSettings, SETTING_KEYS};
pub use versions::HistoryEntry;

use crate::hash::sha256_model;
use crate::{ModelEntry, ModelFormat, ModelId, ModelStore, StoreError};

/// Access events older than this are pruned.
pub const EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many access events are kept (the newest).
pub const MAX_EVENTS: i64 = 100_000;

/// Progress of a digest: `(bytes done, bytes total)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// The model registry. `Send + Sync`: share it through an `Arc`.
#[derive(Debug)]
pub struct Registry {
    /// The SQLite file, or the PostgreSQL URL without its password.
    location: String,
    db: Backend,
}

const COLUMNS: &str = "id, path, format, architecture, parameter_count, quantization, size_bytes, modified_ns, \
     sha256, mismatch_sha256, added_at, verified_at, status, access_count, last_access, load_count, total_load_ms";

impl Registry {
    /// Opens (creating if needed) the registry database at `path` and migrates it to the
    /// current schema.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let location = path.display().to_string();
        let opened = db::Sqlite::open(path).map(|(db, found)| (Backend::Sqlite(db), found));
        Self::opened(location, opened)
    }

    /// Connects to the PostgreSQL registry at `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`,
    /// with libpq's options such as `sslmode=require`), creating or migrating its tables.
    /// Replicas sharing it see one set of names, tags, versions, settings and usage.
    pub fn connect(url: &str) -> Result<Self, RegistryError> {
        let location = db::Postgres::location(url);
        let opened = db::Postgres::connect(url).map(|(db, found)| (Backend::Postgres(db), found));
        Self::opened(location, opened)
    }

    /// [`Registry::connect`] for a `postgres://` or `postgresql://` URL, else
    /// [`Registry::open`] of a SQLite file.
    pub fn open_location(location: &str) -> Result<Self, RegistryError> {
        if is_postgres_url(location) {
            Self::connect(location)
        } else {
            Self::open(Path::new(location))
        }
    }

    fn opened(location: String, opened: Result<(Backend, i64), DbError>) -> Result<Self, RegistryError> {
        let (db, found) = opened.map_err(|source| RegistryError::Database {
            location: location.clone(),
            source,
        })?;
        if found > schema::VERSION {
            return Err(RegistryError::NewerSchema {
                location,
                found,
                supported: schema::VERSION,
            });
        }
        Ok(Self { location, db })
    }

    /// Where the registry of `store` lives: `registry.sqlite` beside the models directory
    /// (`$MINERVA_HOME/registry.sqlite`).
    pub fn default_path(store: &ModelStore) -> PathBuf {
        store
            .root()
            .parent()
            .unwrap_or_else(|| store.root())
            .join("registry.sqlite")
    }

    /// The database: its file, or its PostgreSQL URL without the password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether replicas share this registry (PostgreSQL): a model file missing here may be
    /// on another replica's disk, so it is not marked missing for all of them.
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Backend::Postgres(_))
    }

    /// Hashes and records model `id` of `store`; when it is registered already and its
    /// size and modification time are unchanged, returns the record as it is. A changed
    /// file is accepted as the model's new content (use [`Registry::check`] to refuse it
    /// instead).
    pub fn register(&self, store: &ModelStore, id: &ModelId, progress: Progress) -> Result<ModelRecord, RegistryError> {
        let entry = store.resolve(id)?;
        let fingerprint = fingerprint(&entry)?;
        if let Some(record) = self.record(id)?
            && record_fingerprint(&record) == fingerprint
        {
            return Ok(record);
        }
        let metadata = ModelMetadata::read(&entry.path)?;
        let sha256 = digest(&entry.path, progress)?;
        let relative = relative_path(store, &entry);
        self.write(|tx| upsert(tx, id, &relative, &metadata, fingerprint, &sha256, now_millis()))?;
        self.require(id)
    }

    /// Checks model `id` before a load: registers it if it is new, re-hashes it if its
    /// size or modification time changed, and refuses it (marking it `mismatch`) if its
    /// digest differs from the registered one, or (marking it `missing`) if its file is gone.
    pub fn check(&self, store: &ModelStore, id: &ModelId) -> Result<ModelRecord, RegistryError> {
        self.check_with_progress(store, id, &mut |_, _| {})
    }

    /// [`Registry::check`], reporting the progress of any hashing.
    pub fn check_with_progress(
        &self,
        store: &ModelStore,
        id: &ModelId,
        progress: Progress,
    ) -> Result<ModelRecord, RegistryError> {
        let Some(record) = self.record(id)? else {
            return self.register(store, id, progress);
        };
        let Some(entry) = self.resolve_or_mark_missing(store, &record)? else {
            return Err(missing(store, &record));
        };
        let fingerprint = fingerprint(&entry)?;
        if record_fingerprint(&record) == fingerprint {
            match (record.status, &record.mismatch_sha256) {
                (ModelStatus::Ok, _) => return Ok(record),
                (ModelStatus::Mismatch, Some(actual)) => return Err(mismatch(&record, actual.clone())),
                _ => {}
            }
        }
        self.rehash(&record, &entry, fingerprint, progress)
    }

    /// Re-hashes model `id`, or every registered model and every unregistered one in
    /// `store` when `id` is `None`, whatever their modification times, and records the
    /// outcome. `progress(id, done, total)` follows each digest. Returns the records after
    /// the check: their [`ModelRecord::status`] says which passed.
    pub fn verify(
        &self,
        store: &ModelStore,
        id: Option<&ModelId>,
        progress: &mut dyn FnMut(&ModelId, u64, u64),
    ) -> Result<Vec<ModelRecord>, RegistryError> {
        let ids = match id {
            Some(id) => vec![id.clone()],
            None => {
                let mut ids: Vec<ModelId> = self.records()?.into_iter().map(|r| r.id).collect();
                ids.extend(store.list()?.into_iter().map(|m| m.id));
                ids.sort();
                ids.dedup();
                ids
            }
        };
        let mut verified = Vec::with_capacity(ids.len());
        for id in ids {
            let progress = &mut |done, total| progress(&id, done, total);
            let Some(record) = self.record(&id)? else {
                verified.push(self.register(store, &id, progress)?);
                continue;
            };
            if let Some(entry) = self.resolve_or_mark_missing(store, &record)? {
                match self.rehash(&record, &entry, fingerprint(&entry)?, progress) {
                    Ok(_) | Err(RegistryError::HashMismatch { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            verified.push(self.require(&id)?);
        }
        Ok(verified)
    }

    /// Records an access to `id` at `at`: a request counts towards its usage; both kinds
    /// go to the access log, which keeps the last [`EVENT_RETENTION`] and at most
    /// [`MAX_EVENTS`] events.
    pub fn record_access(&self, id: &ModelId, kind: AccessKind, at: UnixMillis) -> Result<(), RegistryError> {
        self.record_accesses(&[(id.clone(), kind, at)])
    }

    /// [`Registry::record_access`] for many accesses in one transaction (the pool's usage
    /// writer batches what arrived while it wrote: one commit, not one per request).
    pub fn record_accesses(&self, accesses: &[(ModelId, AccessKind, UnixMillis)]) -> Result<(), RegistryError> {
        let Some(newest) = accesses.iter().map(|a| a.2).max() else {
            return Ok(());
        };
        let oldest = newest.saturating_sub(EVENT_RETENTION.as_millis() as i64);
        self.write(|tx| {
            for (id, kind, at) in accesses {
                tx.execute(
                    "INSERT INTO access_events (model_id, at, kind) VALUES (?1, ?2, ?3)",
                    args![id.as_str(), *at, kind.as_str()],
                )?;
                if *kind == AccessKind::Request {
                    tx.execute(
                        "UPDATE models SET access_count = access_count + 1,
                             last_access = CASE WHEN last_access IS NULL OR last_access < ?2 THEN ?2 ELSE last_access END
                         WHERE id = ?1",
                        args![id.as_str(), *at],
                    )?;
                }
            }
            tx.execute("DELETE FROM access_events WHERE at < ?1", args![oldest])?;
            tx.execute(
                "DELETE FROM access_events WHERE seq <= (SELECT max(seq) FROM access_events) - ?1",
                args![MAX_EVENTS],
            )?;
            Ok(())
        })
    }

    /// Records that loading `id` took `load_ms` milliseconds.
    pub fn record_load(&self, id: &ModelId, load_ms: u64) -> Result<(), RegistryError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE models SET load_count = load_count + 1, total_load_ms = total_load_ms + ?2 WHERE id = ?1",
                args![id.as_str(), load_ms as i64],
            )?;
            Ok(())
        })
    }

    /// Every registered model, sorted by id.
    pub fn records(&self) -> Result<Vec<ModelRecord>, RegistryError> {
        self.read(|db| {
            db.query(&format!("SELECT {COLUMNS} FROM models ORDER BY id"), &[])?
                .iter()
                .map(read_record)
                .collect()
        })
    }

    /// The record of `id`, if registered.
    pub fn record(&self, id: &ModelId) -> Result<Option<ModelRecord>, RegistryError> {
        self.read(|db| {
            db.query_opt(
                &format!("SELECT {COLUMNS} FROM models WHERE id = ?1"),
                args![id.as_str()],
            )?
            .as_ref()
            .map(read_record)
            .transpose()
        })
    }

    /// Access events at or after `since`, oldest first.
    pub fn events_since(&self, since: UnixMillis) -> Result<Vec<AccessEvent>, RegistryError> {
        self.read(|db| {
            db.query(
                "SELECT model_id, at, kind FROM access_events WHERE at >= ?1 ORDER BY at, seq",
                args![since],
            )?
            .iter()
            .map(|row| {
                Ok(AccessEvent {
                    id: parse_id(row, 0)?,
                    at: row.get(1)?,
                    kind: parse_column(row, 2, AccessKind::parse)?,
                })
            })
            .collect()
        })
    }

    fn require(&self, id: &ModelId) -> Result<ModelRecord, RegistryError> {
        self.record(id)?
            .ok_or_else(|| RegistryError::NotRegistered { id: id.clone() })
    }

    /// Hashes `entry` and records whether it still matches `record`.
    fn rehash(
        &self,
        record: &ModelRecord,
        entry: &ModelEntry,
        fingerprint: Fingerprint,
        progress: Progress,
    ) -> Result<ModelRecord, RegistryError> {
        let actual = digest(&entry.path, progress)?;
        let matches = actual == record.sha256;
        let (status, observed) = if matches {
            (ModelStatus::Ok, None)
        } else {
            (ModelStatus::Mismatch, Some(actual.as_str()))
        };
        self.write(|tx| {
            tx.execute(
                "UPDATE models SET status = ?2, mismatch_sha256 = ?3, size_bytes = ?4, modified_ns = ?5, verified_at = ?6
                 WHERE id = ?1",
                args![
                    record.id.as_str(),
                    status.as_str(),
                    observed,
                    fingerprint.size_bytes as i64,
                    fingerprint.modified_ns,
                    now_millis()
                ],
            )?;
            Ok(())
        })?;
        if !matches {
            tracing::warn!(id = %record.id, expected = %record.sha256, %actual, "model file does not match its registered digest");
            return Err(mismatch(record, actual));
        }
        self.require(&record.id)
    }

    /// Resolves a registered model, marking it `missing` (and returning `None`) when its
    /// file is gone.
    fn resolve_or_mark_missing(
        &self,
        store: &ModelStore,
        record: &ModelRecord,
    ) -> Result<Option<ModelEntry>, RegistryError> {
        match store.resolve(&record.id) {
            Ok(entry) => Ok(Some(entry)),
            Err(StoreError::UnknownModel { .. }) if self.is_shared() => {
                // Another replica may hold the file: this one just does not have it.
                tracing::warn!(id = %record.id, "registered model has no file on this replica");
                Ok(None)
            }
            Err(StoreError::UnknownModel { .. }) => {
                self.write(|tx| {
                    tx.execute(
                        "UPDATE models SET status = 'missing' WHERE id = ?1",
                        args![record.id.as_str()],
                    )?;
                    Ok(())
                })?;
                tracing::warn!(id = %record.id, "registered model file is missing");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `f` in one transaction holding the writer slot.
    fn write<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, RegistryError> {
        self.db.write(f).map_err(|e| self.db_error(e))
    }

    /// Runs `f` on the connection.
    fn read<T>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, RegistryError> {
        self.db.read(f).map_err(|e| self.db_error(e))
    }

    fn db_error(&self, source: DbError) -> RegistryError {
        RegistryError::Database {
            location: self.location.clone(),
            source,
        }
    }
}

/// Whether `location` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

fn upsert(
    tx: &mut dyn Sql,
    id: &ModelId,
    relative: &Path,
    metadata: &ModelMetadata,
    fingerprint: Fingerprint,
    sha256: &str,
    now: UnixMillis,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO models (id, path, format, architecture, parameter_count, quantization, size_bytes, modified_ns,
                             sha256, added_at, verified_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, 'ok')
         ON CONFLICT (id) DO UPDATE SET path = ?2, format = ?3, architecture = ?4, parameter_count = ?5,
             quantization = ?6, size_bytes = ?7, modified_ns = ?8, sha256 = ?9, mismatch_sha256 = NULL,
             verified_at = ?10, status = 'ok'",
        args![
            id.as_str(),
            relative.to_string_lossy(),
            metadata.format.as_str(),
            &metadata.architecture,
            metadata.parameter_count as i64,
            &metadata.quantization,
            fingerprint.size_bytes as i64,
            fingerprint.modified_ns,
            sha256,
            now
        ],
    )?;
    Ok(())
}

fn fingerprint(entry: &ModelEntry) -> Result<Fingerprint, RegistryError> {
    Fingerprint::of(&entry.path).map_err(|source| RegistryError::Io {
        path: entry.path.clone(),
        source,
    })
}

fn record_fingerprint(record: &ModelRecord) -> Fingerprint {
    Fingerprint {
        size_bytes: record.size_bytes,
        modified_ns: record.modified_ns,
    }
}

fn digest(path: &Path, progress: Progress) -> Result<String, RegistryError> {
    sha256_model(path, progress).map_err(|source| RegistryError::Io {
        path: path.to_owned(),
        source,
    })
}

fn relative_path(store: &ModelStore, entry: &ModelEntry) -> PathBuf {
    entry
        .path
        .strip_prefix(store.root())
        .map_or_else(|_| entry.path.clone(), Path::to_path_buf)
}

fn mismatch(record: &ModelRecord, actual: String) -> RegistryError {
    RegistryError::HashMismatch {
        id: record.id.clone(),
        expected: record.sha256.clone(),
        actual,
    }
}

fn missing(store: &ModelStore, record: &ModelRecord) -> RegistryError {
    RegistryError::Missing {
        id: record.id.clone(),
        path: store.root().join(&record.path),
    }
}

fn read_record(row: &Row) -> Result<ModelRecord, DbError> {
    let count = |i| row.get::<i64>(i).map(|v| v.max(0) as u64);
    Ok(ModelRecord {
        id: parse_id(row, 0)?,
        path: PathBuf::from(row.get::<String>(1)?),
        format: parse_column(row, 2, |s| {
            [ModelFormat::Gguf, ModelFormat::SentenceTransformers]
                .into_iter()
                .find(|f| f.as_str() == s)
        })?,
        architecture: row.get(3)?,
        parameter_count: count(4)?,
        quantization: row.get(5)?,
        size_bytes: count(6)?,
        modified_ns: row.get(7)?,
        sha256: row.get(8)?,
        mismatch_sha256: row.get(9)?,
        added_at: row.get(10)?,
        verified_at: row.get(11)?,
        status: parse_column(row, 12, ModelStatus::parse)?,
        access_count: count(13)?,
        last_access: row.get(14)?,
        load_count: count(15)?,
        total_load_ms: count(16)?,
    })
}

fn parse_id(row: &Row, index: usize) -> Result<ModelId, DbError> {
    parse_column(row, index, |s| ModelId::new(s).ok())
}

/// Reads text column `index` through `parse`, failing on a value it does not know.
fn parse_column<T>(row: &Row, index: usize, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, DbError> {
    let text: String = row.get(index)?;
    parse(&text).ok_or_else(|| DbError::Column {
        index,
        reason: format!("unexpected value {text:?}"),
    })
}
