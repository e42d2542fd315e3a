//! Sentence embeddings from BERT-style encoders (safetensors + tokenizer.json) through
//! Candle, with pooling and normalization as the model's sentence-transformers
//! configuration declares.
//!
//! Inputs are sorted by length and batched so padding stays small; padded positions are
//! masked out of attention and pooling, so a sentence's vector does not depend on its
//! batch mates.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Tokenizer, TruncationDirection};

use crate::{EngineError, Result};

/// Sequences per forward pass.
const BATCH_SIZE: usize = 32;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of the token vectors (padding excluded).
    Mean,
    /// The vector of the first ([CLS]) token.
    Cls,
}

/// Per-call options of [`EmbeddingModel::embed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedOptions {
    /// L2-normalize the vectors; `None` follows the model's configuration.
    pub normalize: Option<bool>,
    /// Refuse inputs longer than the model's maximum instead of truncating them.
    pub forbid_truncation: bool,
}

/// A loaded sentence-embedding model.
pub struct EmbeddingModel {
    bert: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_tokens: usize,
    dimensions: usize,
    special_tokens: usize,
}

/// A tokenized input: its ids and whether it was cut to the model's maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInput {
    /// Token ids including the special tokens the model adds.
    pub ids: Vec<u32>,
    /// True when the text was longer than the model accepts and was truncated.
    pub truncated: bool,
}

impl EmbeddingModel {
    /// Loads a model directory in the sentence-transformers layout: `config.json`,
    /// `model.safetensors`, `tokenizer.json`, and optionally `modules.json`,
    /// `1_Pooling/config.json` and `sentence_bert_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let invalid = |reason: String| EngineError::InvalidEmbeddingModel {
            path: dir.to_owned(),
            reason,
        };
        if !dir.is_dir() {
            return Err(invalid(
                "not a model directory (expected config.json, model.safetensors and tokenizer.json)".into(),
            ));
        }
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let weights_path = dir.join("model.safetensors");
        let weights = std::fs::read(&weights_path).map_err(|e| EngineError::InvalidEmbeddingModel {
            path: weights_path.clone(),
            reason: e.to_string(),
        })?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).map_err(|e| {
            EngineError::InvalidEmbeddingModel {
                path: weights_path.clone(),
                reason: format!("invalid safetensors file: {e}"),
            }
        })?;
        let bert = BertModel::load(vb, &config).map_err(|e| EngineError::InvalidEmbeddingModel {
            path: weights_path.clone(),
            reason: format!("weights do not match config.json: {e}"),
        })?;
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| EngineError::InvalidEmbeddingModel {
            path: tokenizer_path.clone(),
            reason: e.to_string(),
        })?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let special_tokens = tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));

        let st = SentenceTransformerConfig::read(dir)?;
        let max_tokens = st
            .max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        if max_tokens <= special_tokens {
            return Err(invalid(format!("max_seq_length {max_tokens} leaves no room for text")));
        }
        tracing::info!(path = %dir.display(), pooling = ?st.pooling, normalize = st.normalize, max_tokens, "loaded embedding model");
        Ok(Self {
            bert,
            tokenizer,
            pooling: st.pooling,
            normalize: st.normalize,
            max_tokens,
            dimensions: config.hidden_size,
            special_tokens,
        })
    }

    /// Length of the vectors.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Number of entries in the vocabulary (token ids are below this).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Most tokens per input (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The pooling the model uses.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether the model normalizes its vectors by default.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Tokenizes `text` as the model sees it, truncating unless `forbid_truncation`.
    /// `index` names the input in errors.
    pub fn tokenize(&self, index: usize, text: &str, forbid_truncation: bool) -> Result<EmbeddingInput> {
        let mut encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let room = self.max_tokens - self.special_tokens;
        let truncated = encoding.len() > room;
        if truncated {
            if forbid_truncation {
                return Err(EngineError::InputTooLong {
                    index,
                    tokens: encoding.len() + self.special_tokens,
                    max: self.max_tokens,
                });
            }
            encoding.truncate(room, 0, TruncationDirection::Right);
        }
        let encoding = self
            .tokenizer
            .post_process(encoding, None, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(EmbeddingInput {
            ids: encoding.get_ids().to_vec(),
            truncated,
        })
    }

    /// Embeds `texts`, returning one vector per text in the same order.
    pub fn embed(&self, texts: &[&str], options: EmbedOptions) -> Result<Vec<Vec<f32>>> {
        let inputs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.tokenize(i, t, options.forbid_truncation).map(|input| input.ids))
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokens(&inputs, options.normalize.unwrap_or(self.normalize))
    }

    /// Embeds already tokenized inputs (each at most [`Self::max_tokens`] long).
    pub fn embed_tokens(&self, inputs: &[Vec<u32>], normalize: bool) -> Result<Vec<Vec<f32>>> {
        for (index, ids) in inputs.iter().enumerate() {
            self.check_input(index, ids)?;
        }
        // Length-sorted batches keep padding small.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut out = vec![Vec::new(); inputs.len()];
        for batch in order.chunks(BATCH_SIZE) {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| inputs[i].as_slice()).collect();
            for (&i, mut vector) in batch.iter().zip(self.forward_batch(&rows)?) {
                if normalize {
                    l2_normalize(&mut vector);
                }
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// Checks that `ids` can go through [`Self::forward_batch`]: not empty, at most
    /// [`Self::max_tokens`] long, every id inside the vocabulary. `index` names the input
    /// in errors.
    pub fn check_input(&self, index: usize, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(EngineError::invalid("input", format!("input {index} has no tokens")));
        }
        if ids.len() > self.max_tokens {
            return Err(EngineError::InputTooLong {
                index,
                tokens: ids.len(),
                max: self.max_tokens,
            });
        }
        // An id past the vocabulary would index outside the embedding table.
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::invalid(
                "input",
                format!("input {index}: token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        Ok(())
    }

    /// One forward pass over `rows` (each checked by [`Self::check_input`]): the pooled,
    /// unnormalized vector of each row, in order. Rows are padded to the longest; padded
    /// positions are masked out of attention and pooling.
    pub fn forward_batch(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in rows {
            ids.extend_from_slice(row);
            ids.resize(ids.len() + width - row.len(), 0);
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, width - row.len()));
        }
        let shape = (rows.len(), width);
        let ids = Tensor::from_vec(ids, shape, &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &token_types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Scales `vector` to unit L2 length (as sentence-transformers' `Normalize` module does;
/// a zero vector stays zero).
pub fn l2_normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in vector {
        *x /= norm;
    }
}

/// Cosine similarity of two vectors of the same length (in f64, so that near-identical
/// vectors compare finely).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The parts of a sentence-transformers directory that change the output.
struct SentenceTransformerConfig {
    pooling: Pooling,
    normalize: bool,
    max_seq_length: Option<usize>,
}

impl SentenceTransformerConfig {
    fn read(dir: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Module {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            path: String,
        }
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
        #[derive(serde::Deserialize, Default)]
        struct BertSettings {
            max_seq_length: Option<usize>,
        }
        let modules_path = dir.join("modules.json");
        let modules: Vec<Module> = if modules_path.exists() {
            read_json(&modules_path)?
        } else {
            Vec::new()
        };
        let normalize = modules.iter().any(|m| m.kind.ends_with("models.Normalize"));
        let invalid = |path: &Path, reason: String| EngineError::InvalidEmbeddingModel {
            path: path.to_owned(),
            reason,
        };
        let pooling_dir = match modules.iter().find(|m| m.kind.ends_with("models.Pooling")) {
            // A module path must stay inside the model directory.
            Some(m)
                if Path::new(&m.path)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))) =>
            {
                dir.join(&m.path)
            }
            Some(m) => {
                return Err(invalid(
                    &modules_path,
                    format!("module path {:?} leaves the model directory", m.path),
                ));
            }
            None => dir.join("1_Pooling"),
        };
        let pooling_path = pooling_dir.join("config.json");
        let pooling_config: PoolingConfig = if pooling_path.exists() {
            read_json(&pooling_path)?
        } else {
            PoolingConfig::default()
        };
        let c = &pooling_config;
        let pooling = match (c.pooling_mode_cls_token, c.pooling_mode_mean_tokens) {
            _ if c.pooling_mode_max_tokens
                || c.pooling_mode_mean_sqrt_len_tokens
                || c.pooling_mode_weightedmean_tokens
                || c.pooling_mode_lasttoken =>
            {
                return Err(invalid(&pooling_path, "only mean and CLS pooling are supported".into()));
            }
            (true, true) => {
                return Err(invalid(
                    &pooling_path,
                    "combined CLS + mean pooling is not supported".into(),
                ));
            }
            (true, false) => Pooling::Cls,
            (false, _) => Pooling::Mean,
        };
        let settings_path = dir.join("sentence_bert_config.json");
        let settings: BertSettings = if settings_path.exists() {
            read_json(&settings_path)?
        } else {
            BertSettings::default()
        };
        Ok(Self {
            pooling,
            normalize,
            max_seq_length: settings.max_seq_length,
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let invalid = |reason: String| EngineError::InvalidEmbeddingModel {
        path: PathBuf::from(path),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| invalid(format!("invalid JSON: {e}")))
}
