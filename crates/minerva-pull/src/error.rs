//! What can go wrong in a pull, typed.

use std::path::PathBuf;

use minerva_store::{InvalidModelId, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot pull {source_text:?}: {why}")]
    InvalidSource { source_text: String, why: String },
    #[error("offline mode (MINERVA_OFFLINE or --offline) refuses network access; unset it to pull {0}")]
    Offline(String),
    #[error("{url}: not found (HTTP 404)")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("{what}: {why}")]
    Resolve { what: String, why: String },
    #[error("{url}: downloaded file has SHA-256 {actual}, but {expected} was expected; the download was deleted")]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: downloaded {actual} bytes, but {expected} were expected")]
    SizeMismatch { url: String, expected: u64, actual: u64 },
    #[error("{url}: no SHA-256 is known for this file; pass --sha256 HEX to say what it must hash to")]
    NoDigest { url: String },
    #[error(
        "model {id:?} already exists with another file (SHA-256 {have}); remove it first (`minerva rm {id}`) or pull under another --name"
    )]
    Conflict { id: String, have: String },
    #[error(
        "model {id:?} is registered with this digest but its file is missing or changed; remove it first (`minerva rm {id}`) and pull again"
    )]
    Damaged { id: String },
    #[error("{0} (pass --as to choose one)")]
    InvalidId(#[from] InvalidModelId),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl PullError {
    /// Whether the request can succeed later with the same input (a dropped connection,
    /// a server error), as opposed to one that will fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Network { .. } => true,
            Self::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}
