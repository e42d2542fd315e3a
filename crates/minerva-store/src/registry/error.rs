//! Why a registry operation failed, in words a user can act on.

use std::path::PathBuf;

use crate::{InvalidModelId, ModelId, StoreError};

/// Failures of the [`Registry`](super::Registry).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database could not be opened, migrated, read or written.
    #[error("model registry {location}: {source}")]
    Database {
        /// The SQLite file, or the PostgreSQL URL without its password.
        location: String,
        /// What the database said.
        #[source]
        source: super::DbError,
    },
    /// The database was written by a newer Minerva.
    #[error(
        "model registry {location} has schema version {found}, newer than this Minerva supports ({supported}); upgrade Minerva"
    )]
    NewerSchema {
        /// The database.
        location: String,
        /// Its schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// Reading or writing a model file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The models directory refused the id.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model's file no longer has the digest it was registered with; loading it is refused.
    #[error(
        "model {id:?} does not match its registered SHA-256 (expected {expected}, found {actual}): the file changed or is corrupt; restore it or import it again"
    )]
    HashMismatch {
        /// The model.
        id: ModelId,
        /// The registered digest.
        expected: String,
        /// The digest of the file now.
        actual: String,
    },
    /// A registered model's file is gone.
    #[error("model {id:?} is registered but its file {path} is missing; restore it or import it again")]
    Missing {
        /// The model.
        id: ModelId,
        /// Where its file was.
        path: PathBuf,
    },
    /// The id is not in the registry.
    /// The adapter's file no longer has the digest it was registered with.
    #[error(
        "adapter {name:?} does not match its registered SHA-256 (expected {expected}, found {actual}): the file changed or is corrupt; restore it or import it again"
    )]
    AdapterMismatch {
        name: ModelId,
        expected: String,
        actual: String,
    },
    /// The adapter is registered but its file is gone.
    #[error(
        "adapter {name:?} is registered but its file {path} is missing; restore it, or `minerva adapter rm {name}`"
    )]
    AdapterMissing { name: ModelId, path: PathBuf },
    /// An import would replace an existing adapter.
    #[error("adapter {name:?} exists; choose another name, or replace it (--force)")]
    AdapterExists { name: ModelId },
    #[error("setting {key:?}: {reason}")]
    InvalidSetting { key: String, reason: String },
    #[error("model {id:?} is not registered (`minerva models` lists the models)")]
    NotRegistered {
        /// The id asked for.
        id: ModelId,
    },
    /// A file or directory offered for import is not a model Minerva can run.
    #[error("{path}: {reason}")]
    InvalidModel {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The GGUF validator refused the file.
    #[error(transparent)]
    Gguf(#[from] minerva_gguf::GgufError),
    /// No id was given and the file name is not a valid one.
    #[error("{0} (pass --id to choose one)")]
    InvalidId(#[from] InvalidModelId),
    /// An import would replace an existing model.
    #[error("model {id:?} already exists in {root}; choose another id or remove it first")]
    AlreadyExists {
        /// The id.
        id: ModelId,
        /// The models directory.
        root: PathBuf,
    },
    /// Another process is importing the same id.
    #[error("model {id:?} is being imported by another process; wait for it to finish")]
    ImportInProgress {
        /// The id.
        id: ModelId,
    },
    /// `--link` across filesystems.
    #[error("cannot hard-link {path} into {root}: not on the same filesystem; import without --link to copy it")]
    CrossDevice {
        /// The source.
        path: PathBuf,
        /// The models directory.
        root: PathBuf,
    },
}
