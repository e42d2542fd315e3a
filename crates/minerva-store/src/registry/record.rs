//! What the registry stores: a row per model and a log of accesses.

use std::path::PathBuf;

use crate::{ModelFormat, ModelId};

/// Milliseconds since the Unix epoch, the registry's clock.
pub type UnixMillis = i64;

/// The current time as [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Integrity of a registered model, as of its last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    /// The file has its registered digest.
    Ok,
    /// The file's digest differs from the registered one; loading is refused.
    Mismatch,
    /// The file is gone.
    Missing,
}

impl ModelStatus {
    /// The status as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Mismatch => "mismatch",
            Self::Missing => "missing",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [Self::Ok, Self::Mismatch, Self::Missing]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelRecord {
    /// Its id.
    pub id: ModelId,
    /// File or directory, relative to the models directory.
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// Architecture (`general.architecture` of a GGUF file, `model_type` of a config.json).
    pub architecture: String,
    /// Number of weights.
    pub parameter_count: u64,
    /// Quantization or dtype, e.g. "Q4_K_M" or "F32".
    pub quantization: String,
    /// Bytes on disk (all files of a directory model).
    pub size_bytes: u64,
    /// Modification time seen at the last verification (newest file of a directory), ns since the epoch.
    pub modified_ns: i64,
    /// Registered digest (see [`sha256_model`](crate::sha256_model)).
    pub sha256: String,
    /// Digest found by the check that marked the model [`ModelStatus::Mismatch`].
    pub mismatch_sha256: Option<String>,
    /// When it was registered.
    pub added_at: UnixMillis,
    /// When its digest was last computed.
    pub verified_at: UnixMillis,
    /// Integrity as of the last check.
    pub status: ModelStatus,
    /// Requests served.
    pub access_count: u64,
    /// Time of the last request.
    pub last_access: Option<UnixMillis>,
    /// Times loaded into memory.
    pub load_count: u64,
    /// Milliseconds spent loading, over all loads.
    pub total_load_ms: u64,
}

/// Why a model was touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    /// A client request.
    Request,
    /// A load started by the preloader.
    Preload,
}

impl AccessKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Preload => "preload",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [Self::Request, Self::Preload].into_iter().find(|v| v.as_str() == s)
    }
}

/// One recorded access.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessEvent {
    /// The model.
    pub id: ModelId,
    /// When.
    pub at: UnixMillis,
    /// Why.
    pub kind: AccessKind,
}
