//! BERT-style encoders through Candle (`candle_transformers::models::bert`), in f32.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};

use super::config::{SentenceTransformerConfig, read_json};
use super::{EmbeddingModel, EncoderTokenizer, Pooling};
use crate::{EngineError, Result};

/// A BERT encoder loaded through Candle.
pub(super) struct CandleBert {
    bert: BertModel,
    tokenizer: EncoderTokenizer,
    pooling: Pooling,
    normalize: bool,
    dimensions: usize,
}

impl CandleBert {
    /// Loads the model directory `dir` (checked to be a directory).
    pub(super) fn load(dir: &Path) -> Result<Self> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let weights_path = dir.join("model.safetensors");
        let invalid = |reason: String| EngineError::InvalidEmbeddingModel {
            path: weights_path.clone(),
            reason,
        };
        let weights = std::fs::read(&weights_path).map_err(|e| invalid(e.to_string()))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| invalid(format!("invalid safetensors file: {e}")))?;
        let bert =
            BertModel::load(vb, &config).map_err(|e| invalid(format!("weights do not match config.json: {e}")))?;
        let st = SentenceTransformerConfig::read(dir)?;
        let max_tokens = st
            .max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let tokenizer = EncoderTokenizer::load(dir, max_tokens)?;
        tracing::info!(path = %dir.display(), pooling = ?st.pooling, normalize = st.normalize, max_tokens, "loaded embedding model");
        Ok(Self {
            bert,
            tokenizer,
            pooling: st.pooling,
            normalize: st.normalize,
            dimensions: config.hidden_size,
        })
    }
}

impl EmbeddingModel for CandleBert {
    fn tokenizer(&self) -> &EncoderTokenizer {
        &self.tokenizer
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn pooling(&self) -> Pooling {
        self.pooling
    }

    fn normalizes(&self) -> bool {
        self.normalize
    }

    fn forward_batch(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
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
        // The encoder's pass takes the process's cores like any other model's pass
        // (Candle's kernels run on Rayon's pool of one thread per core).
        crate::compute::exclusive(|| {
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
        })
    }
}
