//! What a sentence-transformers directory says beyond the encoder's own `config.json`:
//! the pooling, whether vectors are normalized, the longest input.

use std::path::{Component, Path, PathBuf};

use super::Pooling;
use crate::{EngineError, Result};

/// The parts of a sentence-transformers directory that change the output.
pub(super) struct SentenceTransformerConfig {
    pub(super) pooling: Pooling,
    pub(super) normalize: bool,
    pub(super) max_seq_length: Option<usize>,
}

/// One entry of `modules.json`.
#[derive(serde::Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// `1_Pooling/config.json`.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

/// `sentence_bert_config.json`.
#[derive(serde::Deserialize, Default)]
struct BertSettings {
    max_seq_length: Option<usize>,
}

impl SentenceTransformerConfig {
    /// Reads the configuration of the model directory `dir` (every file optional).
    pub(super) fn read(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        let modules: Vec<Module> = read_optional(&modules_path)?.unwrap_or_default();
        let normalize = modules.iter().any(|m| m.kind.ends_with("models.Normalize"));
        let pooling_dir = pooling_dir(dir, &modules_path, &modules)?;
        let pooling_path = pooling_dir.join("config.json");
        let pooling_config: PoolingConfig = read_optional(&pooling_path)?.unwrap_or_default();
        let settings: BertSettings = read_optional(&dir.join("sentence_bert_config.json"))?.unwrap_or_default();
        Ok(Self {
            pooling: pooling(&pooling_config, &pooling_path)?,
            normalize,
            max_seq_length: settings.max_seq_length,
        })
    }
}

/// The directory of the pooling module, which must stay inside the model directory.
fn pooling_dir(dir: &Path, modules_path: &Path, modules: &[Module]) -> Result<PathBuf> {
    match modules.iter().find(|m| m.kind.ends_with("models.Pooling")) {
        Some(m)
            if Path::new(&m.path)
                .components()
                .all(|c| matches!(c, Component::Normal(_))) =>
        {
            Ok(dir.join(&m.path))
        }
        Some(m) => Err(invalid(
            modules_path,
            format!("module path {:?} leaves the model directory", m.path),
        )),
        None => Ok(dir.join("1_Pooling")),
    }
}

/// The pooling a pooling configuration asks for, when it is one we support.
fn pooling(c: &PoolingConfig, path: &Path) -> Result<Pooling> {
    if c.pooling_mode_max_tokens
        || c.pooling_mode_mean_sqrt_len_tokens
        || c.pooling_mode_weightedmean_tokens
        || c.pooling_mode_lasttoken
    {
        return Err(invalid(path, "only mean and CLS pooling are supported".into()));
    }
    match (c.pooling_mode_cls_token, c.pooling_mode_mean_tokens) {
        (true, true) => Err(invalid(path, "combined CLS + mean pooling is not supported".into())),
        (true, false) => Ok(Pooling::Cls),
        (false, _) => Ok(Pooling::Mean),
    }
}

fn invalid(path: &Path, reason: String) -> EngineError {
    EngineError::InvalidEmbeddingModel {
        path: path.to_owned(),
        reason,
    }
}

/// The JSON file at `path`, `None` when there is none.
fn read_optional<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The JSON file at `path`; a missing or malformed one is an invalid model.
pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("invalid JSON: {e}")))
}
