//! An encoder's tokenizer (Hugging Face `tokenizer.json`) with the limits of its model:
//! the longest input and the special tokens the model adds around every text.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection};

use super::EmbeddingInput;
use crate::{EngineError, Result};

/// The tokenizer in `path`. The `tokenizers` crate panics on some malformed files instead
/// of returning an error (a `decoder` section that is not an object of a known shape:
/// `expect("Helper")` in its deserializer; found by the `embedding_dir` fuzz target), so
/// the parse runs under `catch_unwind` and such a panic is an invalid model like any other
/// parse error. Its parse touches no state of ours, so nothing is left inconsistent.
fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
    let invalid = |reason: String| EngineError::InvalidEmbeddingModel {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    match std::panic::catch_unwind(|| text.parse::<Tokenizer>()) {
        Ok(parsed) => parsed.map_err(|e| invalid(e.to_string())),
        Err(_) => Err(invalid(
            "malformed tokenizer (the tokenizers crate could not parse it)".into(),
        )),
    }
}

/// The tokenizer every embedding backend shares.
pub struct EncoderTokenizer {
    tokenizer: Tokenizer,
    /// The same tokenizer truncating text pairs longest-first to the maximum, as
    /// cross-encoders are fed.
    pair_tokenizer: Tokenizer,
    max_tokens: usize,
    special_tokens: usize,
}

impl EncoderTokenizer {
    /// Reads `tokenizer.json` from `dir`; inputs may hold up to `max_tokens` tokens,
    /// special tokens included.
    pub(super) fn load(dir: &Path, max_tokens: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = read_tokenizer(&path)?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let special_tokens = tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if max_tokens <= special_tokens {
            return Err(EngineError::InvalidEmbeddingModel {
                path: dir.to_owned(),
                reason: format!("max_seq_length {max_tokens} leaves no room for text"),
            });
        }
        let mut pair_tokenizer = tokenizer.clone();
        pair_tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                strategy: tokenizers::TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(Self {
            tokenizer,
            pair_tokenizer,
            max_tokens,
            special_tokens,
        })
    }

    /// Number of entries in the vocabulary (token ids are below this).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Most tokens per input (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenizes `text`, truncating unless `forbid_truncation`; `index` names the input
    /// in errors.
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

    /// `text` as overlapping windows the model can read, each with its special tokens: one
    /// window when the text fits; otherwise windows of the most text tokens an input
    /// holds, each starting a quarter window before the previous one ended (so every
    /// token is read with some context on both sides).
    pub fn windows(&self, text: &str) -> Result<Vec<Vec<u32>>> {
        let mut encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let room = self.max_tokens - self.special_tokens;
        if encoding.len() > room {
            encoding.truncate(room, room / 4, TruncationDirection::Right);
        }
        let encoding = self
            .tokenizer
            .post_process(encoding, None, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut windows = vec![encoding.get_ids().to_vec()];
        windows.extend(encoding.get_overflowing().iter().map(|e| e.get_ids().to_vec()));
        Ok(windows)
    }

    /// Tokenizes a text pair as a cross-encoder reads it (`[CLS] a [SEP] b [SEP]` for
    /// BERT), the longer text truncated first to fit: the token ids and their segment
    /// (token type) ids.
    pub fn tokenize_pair(&self, a: &str, b: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let encoding = self
            .pair_tokenizer
            .encode((a, b), true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_type_ids().to_vec()))
    }

    /// Checks that `ids` is a valid input: not empty, at most [`Self::max_tokens`] long,
    /// every id inside the vocabulary (one past it would index outside the embedding
    /// table).
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
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::invalid(
                "input",
                format!("input {index}: token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        Ok(())
    }
}
