//! A BERT encoder's weights from `model.safetensors`, laid out for the forward pass:
//! every linear layer transposed to `in × out` row-major (the layout the matrix
//! products read fastest), the query, key and value projections fused into one
//! `hidden × 3·hidden` matrix, everything in f32 (f16 and bf16 files are widened).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::kernels::Activation;
use crate::embed::EmbeddingDtype;
use crate::{EngineError, Result};

/// The fields of a BERT `config.json` the encoder reads.
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// `BertForSequenceClassification` marks a cross-encoder.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// sentence-transformers' own settings (a cross-encoder's `activation_fn`).
    #[serde(default)]
    pub sentence_transformers: Option<serde_json::Value>,
}

fn default_type_vocab_size() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// A linear layer: `weight` is `inputs × outputs` row-major (emptied when the layer
/// runs in reduced precision: `packed` holds it then).
pub(super) struct Linear {
    pub weight: Vec<f32>,
    pub packed: Option<Packed>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

/// A layer's matrix in reduced precision, packed for its kernels.
pub(super) enum Packed {
    Bf16(super::bf16::PackedB),
    Int8(super::int8::PackedI8),
}

impl Packed {
    fn bytes(&self) -> usize {
        match self {
            Self::Bf16(p) => p.bytes(),
            Self::Int8(p) => p.bytes(),
        }
    }
}

/// A layer normalization's scale and shift.
pub(super) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// One transformer layer.
pub(super) struct Layer {
    /// Query, key and value fused: `hidden × 3·hidden`, in that order.
    pub qkv: Linear,
    pub attention_out: Linear,
    pub attention_norm: Norm,
    pub up: Linear,
    pub down: Linear,
    pub output_norm: Norm,
}

/// A cross-encoder's head: BERT's pooler (dense + tanh over the [CLS] vector) and the
/// classifier after it.
pub(super) struct ClassifierHead {
    pub pooler: Option<Linear>,
    pub classifier: Linear,
}

/// Everything the forward pass reads.
pub(super) struct Weights {
    pub hidden: usize,
    pub heads: usize,
    pub eps: f32,
    pub activation: Activation,
    pub max_positions: usize,
    pub vocab: usize,
    /// `vocab × hidden`.
    pub word: Vec<f32>,
    /// `max_positions × hidden`.
    pub position: Vec<f32>,
    /// `type_vocab × hidden`: the segment vectors (0 for a single text, 0 and 1 for a
    /// cross-encoder's pair).
    pub token_types: Vec<f32>,
    pub embedding_norm: Norm,
    pub layers: Vec<Layer>,
    pub head: Option<ClassifierHead>,
}

impl Weights {
    /// Reads `model.safetensors` in `dir` against `config`; `classifier` also reads the
    /// cross-encoder head.
    pub(super) fn load(dir: &Path, config: &BertConfig, classifier: bool) -> Result<Self> {
        let path = dir.join("model.safetensors");
        let invalid = |reason: String| EngineError::InvalidEmbeddingModel {
            path: path.clone(),
            reason,
        };
        if let Some(kind) = config.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(invalid(format!(
                "position_embedding_type {kind:?} is not supported (only \"absolute\")"
            )));
        }
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(invalid(format!("hidden_act {other:?} is not supported"))),
        };
        let h = config.hidden_size;
        if config.num_attention_heads == 0 || h % config.num_attention_heads != 0 {
            return Err(invalid(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            )));
        }
        if config.num_hidden_layers == 0 {
            return Err(invalid("num_hidden_layers is 0".into()));
        }
        let bytes = std::fs::read(&path).map_err(|e| invalid(e.to_string()))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(format!("invalid safetensors file: {e}")))?;
        let reader = Reader {
            file: &file,
            prefix: if file.names().iter().any(|n| n.starts_with("bert.")) {
                "bert."
            } else {
                ""
            },
            invalid: &invalid,
        };
        let word = reader.tensor("embeddings.word_embeddings.weight", None)?;
        let vocab = word.1.first().copied().unwrap_or(0);
        reader.check_shape("embeddings.word_embeddings.weight", &word.1, &[vocab, h])?;
        let position = reader.tensor(
            "embeddings.position_embeddings.weight",
            Some(&[config.max_position_embeddings, h]),
        )?;
        let token_types = reader.tensor(
            "embeddings.token_type_embeddings.weight",
            Some(&[config.type_vocab_size, h]),
        )?;
        let embedding_norm = reader.norm("embeddings.LayerNorm", h)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let q = reader.linear(&format!("{p}.attention.self.query"), h, h)?;
                let k = reader.linear(&format!("{p}.attention.self.key"), h, h)?;
                let v = reader.linear(&format!("{p}.attention.self.value"), h, h)?;
                Ok(Layer {
                    qkv: fuse(&[q, k, v]),
                    attention_out: reader.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attention_norm: reader.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                    up: reader.linear(&format!("{p}.intermediate.dense"), h, config.intermediate_size)?,
                    down: reader.linear(&format!("{p}.output.dense"), config.intermediate_size, h)?,
                    output_norm: reader.norm(&format!("{p}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = if classifier {
            let pooler = if reader.has("pooler.dense.weight") {
                Some(reader.linear("pooler.dense", h, h)?)
            } else {
                None
            };
            if !reader.has("classifier.weight") {
                return Err(invalid(
                    "a cross-encoder needs classifier.weight and classifier.bias".into(),
                ));
            }
            let labels = reader.raw("classifier.weight")?.1.first().copied().unwrap_or(0);
            Some(ClassifierHead {
                pooler,
                classifier: reader.linear("classifier", h, labels)?,
            })
        } else {
            None
        };
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            activation,
            max_positions: config.max_position_embeddings,
            vocab,
            word: word.0,
            position: position.0,
            token_types: token_types.0,
            embedding_norm,
            layers,
            head,
        })
    }

    /// Packs the layers' matrices for `dtype`'s kernels: rounded to bf16, or quantized
    /// to int8 per column (the f32 copies are freed); f32 leaves them as they are.
    pub(super) fn pack(&mut self, dtype: EmbeddingDtype) {
        for layer in &mut self.layers {
            for linear in [&mut layer.qkv, &mut layer.attention_out, &mut layer.up, &mut layer.down] {
                let (k, n) = (linear.inputs, linear.outputs);
                linear.packed = match dtype {
                    EmbeddingDtype::F32 => continue,
                    EmbeddingDtype::Bf16 => Some(Packed::Bf16(super::bf16::PackedB::pack(&linear.weight, k, n))),
                    EmbeddingDtype::Int8 => Some(Packed::Int8(super::int8::PackedI8::pack(&linear.weight, k, n))),
                };
                linear.weight = Vec::new();
            }
        }
    }

    /// The bytes the weights take in memory.
    pub(super) fn bytes(&self) -> usize {
        let linear =
            |l: &Linear| l.weight.len() + l.bias.len() + l.packed.as_ref().map_or(0, |p| p.bytes().div_ceil(4));
        let norm = |n: &Norm| n.gamma.len() + n.beta.len();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                linear(&l.qkv)
                    + linear(&l.attention_out)
                    + linear(&l.up)
                    + linear(&l.down)
                    + norm(&l.attention_norm)
                    + norm(&l.output_norm)
            })
            .sum();
        let head = self.head.as_ref().map_or(0, |h| {
            h.pooler.as_ref().map_or(0, |p| linear(p)) + linear(&h.classifier)
        });
        4 * (head
            + self.word.len()
            + self.position.len()
            + self.token_types.len()
            + norm(&self.embedding_norm)
            + layers)
    }
}

/// The bytes the tensors of the safetensors file at `path` take as f32, from its header.
pub(super) fn f32_bytes(path: &Path) -> Result<u64> {
    use std::io::Read;
    let invalid = |reason: String| EngineError::InvalidEmbeddingModel {
        path: path.to_owned(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| invalid(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(invalid(format!("safetensors header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| invalid(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| invalid(format!("invalid safetensors header: {e}")))?;
    // The file holds every element it declares, so a sum that overflows is a lie.
    header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(_, t)| {
            t.get("shape")?
                .as_array()
                .map(|s| s.iter().filter_map(|d| d.as_u64()).try_fold(1u64, u64::checked_mul))
        })
        .try_fold(0u64, |sum, elements| sum.checked_add(elements?))
        .and_then(|elements| elements.checked_mul(4))
        .ok_or_else(|| invalid("the header declares more elements than any file holds".into()))
}

/// Concatenates the outputs of linear layers with the same inputs.
fn fuse(parts: &[Linear]) -> Linear {
    let inputs = parts[0].inputs;
    let outputs: usize = parts.iter().map(|p| p.outputs).sum();
    let mut weight = Vec::with_capacity(inputs * outputs);
    for row in 0..inputs {
        for p in parts {
            weight.extend_from_slice(&p.weight[row * p.outputs..(row + 1) * p.outputs]);
        }
    }
    Linear {
        weight,
        packed: None,
        bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
        inputs,
        outputs,
    }
}

struct Reader<'a, F: Fn(String) -> EngineError> {
    file: &'a SafeTensors<'a>,
    prefix: &'static str,
    invalid: &'a F,
}

impl<F: Fn(String) -> EngineError> Reader<'_, F> {
    fn full_name(&self, name: &str) -> String {
        let prefixed = format!("{}{name}", self.prefix);
        if self.file.tensor(&prefixed).is_ok() {
            prefixed
        } else {
            name.to_owned()
        }
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(&self.full_name(name)).is_ok()
    }

    /// A tensor's values as f32 and its shape.
    fn raw(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let full = self.full_name(name);
        let view = self
            .file
            .tensor(&full)
            .map_err(|_| (self.invalid)(format!("tensor {full} is missing")))?;
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => return Err((self.invalid)(format!("tensor {full} has unsupported type {other:?}"))),
        };
        Ok((values, view.shape().to_vec()))
    }

    fn check_shape(&self, name: &str, shape: &[usize], expected: &[usize]) -> Result<()> {
        if shape == expected {
            Ok(())
        } else {
            Err((self.invalid)(format!(
                "tensor {name} has shape {shape:?}, config.json implies {expected:?}"
            )))
        }
    }

    fn tensor(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>)> {
        let (values, shape) = self.raw(name)?;
        if let Some(expected) = expected {
            self.check_shape(name, &shape, expected)?;
        }
        Ok((values, shape))
    }

    fn norm(&self, prefix: &str, width: usize) -> Result<Norm> {
        // Old checkpoints name the parameters gamma/beta.
        let pick = |a: &str, b: &str| {
            if self.has(&format!("{prefix}.{a}")) {
                format!("{prefix}.{a}")
            } else {
                format!("{prefix}.{b}")
            }
        };
        Ok(Norm {
            gamma: self.tensor(&pick("weight", "gamma"), Some(&[width]))?.0,
            beta: self.tensor(&pick("bias", "beta"), Some(&[width]))?.0,
        })
    }

    /// A PyTorch `Linear` (weight `outputs × inputs`), transposed to `inputs × outputs`.
    fn linear(&self, prefix: &str, inputs: usize, outputs: usize) -> Result<Linear> {
        let (w, _) = self.tensor(&format!("{prefix}.weight"), Some(&[outputs, inputs]))?;
        let bias = self.tensor(&format!("{prefix}.bias"), Some(&[outputs]))?.0;
        let mut weight = vec![0f32; inputs * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                weight[i * outputs + o] = w[o * inputs + i];
            }
        }
        Ok(Linear {
            weight,
            packed: None,
            bias,
            inputs,
            outputs,
        })
    }
}
