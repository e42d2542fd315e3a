//! What the registry records about a model's content, read cheaply from its headers, and
//! the size and modification time that tell whether its files changed.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use minerva_gguf as gguf;

use super::RegistryError;
use crate::ModelFormat;
use crate::hash::{model_files, modified_ns};

/// Largest safetensors header accepted (real ones are a few KiB to a few MiB).
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// Architecture, size and quantization of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelMetadata {
    pub format: ModelFormat,
    pub architecture: String,
    pub parameter_count: u64,
    pub quantization: String,
}

impl ModelMetadata {
    /// Validates the model at `path` and reads its metadata: a GGUF file through
    /// [`gguf::inspect`], a sentence-transformers directory through its `config.json`
    /// and the header of its `model.safetensors`.
    pub fn read(path: &Path) -> Result<Self, RegistryError> {
        if path.is_dir() {
            return read_sentence_transformers(path);
        }
        let info = gguf::inspect(path)?;
        Ok(Self {
            format: ModelFormat::Gguf,
            architecture: info.architecture,
            parameter_count: info.parameter_count,
            quantization: info.quantization,
        })
    }
}

fn read_sentence_transformers(dir: &Path) -> Result<ModelMetadata, RegistryError> {
    let invalid = |path: &Path, reason: String| RegistryError::InvalidModel {
        path: path.to_owned(),
        reason,
    };
    let config_path = dir.join("config.json");
    let config: serde_json::Value = std::fs::read(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .map_err(|e| {
            invalid(
                &config_path,
                format!("not a sentence-transformers model: config.json: {e}"),
            )
        })?;
    let architecture = config["model_type"]
        .as_str()
        .ok_or_else(|| invalid(&config_path, "config.json has no model_type".into()))?
        .to_owned();
    if !dir.join("tokenizer.json").is_file() {
        return Err(invalid(
            dir,
            "not a sentence-transformers model: no tokenizer.json".into(),
        ));
    }
    let weights = dir.join("model.safetensors");
    let (parameter_count, quantization) = safetensors_summary(&weights)
        .map_err(|reason| invalid(&weights, format!("invalid safetensors file: {reason}")))?;
    Ok(ModelMetadata {
        format: ModelFormat::SentenceTransformers,
        architecture,
        parameter_count,
        quantization,
    })
}

/// Parameter count and dominant dtype (by element count) from a safetensors file's
/// header.
fn safetensors_summary(path: &Path) -> Result<(u64, String), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "shorter than its 8-byte header length".to_owned())?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_SAFETENSORS_HEADER || header_len > file_len - 8 {
        return Err(format!(
            "header length {header_len} is beyond the file ({file_len} bytes)"
        ));
    }
    let mut start = len.to_vec();
    start.resize(8 + header_len as usize, 0);
    file.read_exact(&mut start[8..]).map_err(|e| e.to_string())?;
    safetensors_header_summary(&start, file_len)
}

/// [`safetensors_summary`] of a file of `file_len` bytes that starts with `bytes` (its
/// 8-byte header length and at least the header): the registry's reader, and the
/// fuzzer's entry point.
pub fn safetensors_header_summary(bytes: &[u8], file_len: u64) -> Result<(u64, String), String> {
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than its 8-byte header length")?;
    let len = u64::from_le_bytes(len);
    if len > MAX_SAFETENSORS_HEADER || len > file_len.saturating_sub(8) {
        return Err(format!("header length {len} is beyond the file ({file_len} bytes)"));
    }
    let header = bytes
        .get(8..8 + len as usize)
        .ok_or_else(|| format!("the header's {len} bytes are not all there"))?;
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut elements_by_dtype: HashMap<&str, u64> = HashMap::new();
    for (name, tensor) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        let dtype = tensor["dtype"]
            .as_str()
            .ok_or_else(|| format!("tensor {name} has no dtype"))?;
        let shape = tensor["shape"]
            .as_array()
            .ok_or_else(|| format!("tensor {name} has no shape"))?;
        let elements = shape
            .iter()
            .try_fold(1u64, |n, d| d.as_u64().and_then(|d| n.checked_mul(d)));
        let elements = elements.ok_or_else(|| format!("tensor {name} has an invalid shape"))?;
        let count = elements_by_dtype.entry(dtype).or_default();
        *count = count
            .checked_add(elements)
            .ok_or_else(|| format!("more than 2^64 {dtype} elements"))?;
    }
    let total = elements_by_dtype
        .values()
        .try_fold(0u64, |a, &n| a.checked_add(n))
        .ok_or("more than 2^64 elements")?;
    let dominant = elements_by_dtype
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(dtype, _)| dtype.to_string())
        .ok_or("no tensors")?;
    Ok((total, dominant))
}

/// Size and modification time of a model's files: when both are unchanged, its digest is
/// assumed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// Bytes over all files.
    pub size_bytes: u64,
    /// Newest modification time, ns since the epoch.
    pub modified_ns: i64,
}

impl Fingerprint {
    /// Of the file or directory at `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        if path.is_dir() {
            let files = model_files(path)?;
            return Ok(Self {
                size_bytes: files.iter().map(|f| f.len).sum(),
                modified_ns: files.iter().map(|f| f.modified_ns).max().unwrap_or(0),
            });
        }
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            size_bytes: meta.len(),
            modified_ns: modified_ns(&meta),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_embedding_model_is_a_22m_parameter_f32_bert() {
        let home = std::env::var_os("HOME").expect("HOME is set");
        let dir = Path::new(&home).join(".local/share/minerva/models/all-minilm-l6-v2");
        let meta = ModelMetadata::read(&dir).unwrap();
        assert_eq!(meta.format, ModelFormat::SentenceTransformers);
        assert_eq!(
            (meta.architecture.as_str(), meta.quantization.as_str()),
            ("bert", "F32")
        );
        // all-MiniLM-L6-v2 has 22.7 M weights (90.9 MB of f32).
        assert!(
            (22_000_000..23_000_000).contains(&meta.parameter_count),
            "{}",
            meta.parameter_count
        );
    }

    #[test]
    fn a_directory_without_config_is_not_a_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"junk").unwrap();
        let err = ModelMetadata::read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn element_counts_past_2_64_are_an_error_not_an_overflow() {
        let header =
            br#"{"a":{"dtype":"F32","shape":[9223372036854775808]},"b":{"dtype":"F32","shape":[9223372036854775808]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        let err = safetensors_header_summary(&bytes, bytes.len() as u64).unwrap_err();
        assert!(err.contains("2^64"), "{err}");
        // A header length past the bytes given, or none at all: errors too.
        assert!(safetensors_header_summary(&bytes[..20], 1 << 20).is_err());
        assert!(safetensors_header_summary(&[1, 2], 2).is_err());
    }

    #[test]
    fn a_truncated_safetensors_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), br#"{"model_type": "bert"}"#).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let mut weights = 1000u64.to_le_bytes().to_vec();
        weights.extend_from_slice(b"{\"a\":");
        std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
        let err = ModelMetadata::read(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("model.safetensors: invalid safetensors file"),
            "{err}"
        );
    }
}
