//! A Llama-architecture base model's forward pass in Candle, its weights read from the
//! GGUF file Minerva serves (dequantized to f32), with LoRA factors on chosen matrices as
//! the only trainable tensors.
//!
//! The pass is llama.cpp's graph for `general.architecture = llama` (SmolLM2, Llama,
//! Mistral without sliding windows): RMS norm, attention with grouped KV heads and RoPE on
//! adjacent pairs (the GGUF converter permutes Q and K for it), SwiGLU feed-forward, tied
//! or separate output matrix. The fidelity test checks it against llama.cpp itself.
//!
//! The base matrices go through [`FrozenLinear`], a custom op whose backward pass gives
//! the input's gradient only: Candle's matmul would also compute every frozen weight's
//! gradient, as large a product as the forward one, and throw it away.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Storage, Tensor, Var};
use minerva_engine::llm::lora::{LoraAdapterFile, LoraPair};

use crate::{Result, TrainError};

/// The base's hyper-parameters, from its GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub rope_base: f32,
    pub rms_eps: f64,
    pub n_ctx_train: usize,
}

/// The seven matrices of a layer, by the names llama.cpp gives them.
pub const LINEAR_KINDS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// `x · Wᵀ` for a frozen `W` (`n_out × n_in`, row-major): forward through `gemm`, and a
/// backward pass that returns only the input's gradient `g · W`.
#[derive(Clone)]
struct FrozenLinear {
    weight: Tensor,
    n_in: usize,
    n_out: usize,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-linear: the input is not contiguous".into()))?;
        let x = &storage.as_slice::<f32>()?[start..end];
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&self.n_in) {
            candle_core::bail!("frozen-linear: input {dims:?} for a matrix of {} inputs", self.n_in);
        }
        let rows = x.len() / self.n_in;
        let (weight, _) = self.weight.storage_and_layout();
        let Storage::Cpu(weight) = &*weight else {
            candle_core::bail!("frozen-linear: the weight is not on the CPU")
        };
        let w = weight.as_slice::<f32>()?;
        if w.len() != self.n_in * self.n_out {
            candle_core::bail!("frozen-linear: the weight has {} values", w.len());
        }
        let mut out = vec![0f32; rows * self.n_out];
        let threads = rayon::current_num_threads();
        // SAFETY: `x` is rows × n_in, `w` n_out × n_in and `out` rows × n_out, all dense
        // (checked above); the strides below address exactly those elements.
        unsafe {
            gemm::gemm(
                rows,
                self.n_out,
                self.n_in,
                out.as_mut_ptr(),
                1,
                self.n_out as isize,
                false,
                x.as_ptr(),
                1,
                self.n_in as isize,
                w.as_ptr(),
                self.n_in as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                },
            );
        }
        *dims.last_mut().expect("checked above") = self.n_out;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut dims = grad.dims().to_vec();
        let flat = grad.reshape(((), self.n_out))?.matmul(&self.weight)?;
        *dims.last_mut().expect("a gradient has dimensions") = self.n_in;
        Ok(Some(flat.reshape(dims)?))
    }
}

/// One base matrix and, when adapted, its LoRA factors `A` (`rank × n_in`) and `B`
/// (`n_out × rank`).
struct Linear {
    name: String,
    frozen: FrozenLinear,
    lora: Option<(Var, Var)>,
}

impl Linear {
    fn forward(&self, x: &Tensor, scale: f64) -> Result<Tensor> {
        let y = x.apply_op1(self.frozen.clone())?;
        Ok(match &self.lora {
            Some((a, b)) => (y + (x.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?)?,
            None => y,
        })
    }
}

struct Block {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    /// In [`LINEAR_KINDS`] order.
    linears: Vec<Linear>,
}

/// Token ids of a batch, padded at the end to one length, and what the loss reads.
pub struct Batch {
    /// `batch × len` token ids.
    pub tokens: Tensor,
    /// Rows of the flattened `batch · len` positions whose next token is a target.
    pub positions: Tensor,
    /// The target token of each of those rows.
    pub labels: Tensor,
    /// Target tokens in the batch.
    pub n_targets: usize,
    /// Tokens in the batch, padding excluded.
    pub n_tokens: usize,
}

impl Batch {
    /// A batch of `(tokens, target mask)` examples: `mask[i]` says whether `tokens[i]` is
    /// one the model should learn to produce (predicted from position `i - 1`).
    pub fn new(examples: &[(&[u32], &[bool])]) -> Result<Self> {
        let len = examples.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        if len < 2 {
            return Err(TrainError::Data(
                "a batch needs an example of two tokens or more".into(),
            ));
        }
        let mut tokens = Vec::with_capacity(examples.len() * len);
        let (mut positions, mut labels) = (Vec::new(), Vec::new());
        let mut n_tokens = 0;
        for (row, (ids, mask)) in examples.iter().enumerate() {
            tokens.extend_from_slice(ids);
            tokens.resize((row + 1) * len, 0);
            n_tokens += ids.len();
            for i in 1..ids.len() {
                if mask[i] {
                    positions.push((row * len + i - 1) as u32);
                    labels.push(ids[i]);
                }
            }
        }
        let n_targets = labels.len();
        if n_targets == 0 {
            return Err(TrainError::Data("a batch has no target token".into()));
        }
        Ok(Self {
            tokens: Tensor::from_vec(tokens, (examples.len(), len), &Device::Cpu)?,
            positions: Tensor::from_vec(positions, n_targets, &Device::Cpu)?,
            labels: Tensor::from_vec(labels, n_targets, &Device::Cpu)?,
            n_targets,
            n_tokens,
        })
    }
}

/// The base with its adapters.
pub struct LoraLlama {
    config: Config,
    embedding: Tensor,
    output: FrozenLinear,
    output_norm: Tensor,
    blocks: Vec<Block>,
    /// `n_ctx_train × head_dim/2`.
    cos: Tensor,
    sin: Tensor,
    /// `alpha / rank`.
    scale: f64,
    /// The adapter's metadata and matrices; its factors live in the blocks' `Var`s.
    adapter: LoraAdapterFile,
}

fn metadata<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| TrainError::Base(format!("the GGUF file has no {key}")))
}

impl LoraLlama {
    /// Reads the base in `path` and attaches `adapter` (its factors start the training;
    /// [`LoraAdapterFile::init`] makes fresh ones).
    pub fn load(path: &Path, adapter: LoraAdapterFile) -> Result<Self> {
        let device = Device::Cpu;
        let mut file = File::open(path).map_err(|e| TrainError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        let content =
            gguf_file::Content::read(&mut file).map_err(|e| TrainError::Base(format!("{}: {e}", path.display())))?;
        let architecture = metadata(&content, "general.architecture")?.to_string()?.clone();
        if architecture != "llama" {
            return Err(TrainError::Base(format!(
                "fine-tuning supports Llama-architecture bases (SmolLM2, Llama, Mistral); this one is {architecture}"
            )));
        }
        if adapter.architecture != architecture {
            return Err(TrainError::Base(format!(
                "the adapter is for {}, the base is {architecture}",
                adapter.architecture
            )));
        }
        for unsupported in ["rope_freqs.weight", "blk.0.attn_q.bias"] {
            if content.tensor_infos.contains_key(unsupported) {
                return Err(TrainError::Base(format!(
                    "the base has {unsupported}, which this trainer's Llama graph does not apply"
                )));
            }
        }
        if content.metadata.contains_key("llama.rope.scaling.type") {
            return Err(TrainError::Base("bases with RoPE scaling are not supported".into()));
        }
        let u = |key: &str| -> Result<usize> { Ok(metadata(&content, key)?.to_u32()? as usize) };
        let n_embd = u("llama.embedding_length")?;
        let n_head = u("llama.attention.head_count")?;
        let config = Config {
            n_layer: u("llama.block_count")?,
            n_embd,
            n_head,
            n_head_kv: u("llama.attention.head_count_kv").unwrap_or(n_head),
            head_dim: u("llama.rope.dimension_count").unwrap_or(n_embd / n_head),
            n_vocab: 0,
            rope_base: metadata(&content, "llama.rope.freq_base")
                .and_then(|v| Ok(v.to_f32()?))
                .unwrap_or(10_000.0),
            rms_eps: f64::from(metadata(&content, "llama.attention.layer_norm_rms_epsilon")?.to_f32()?),
            n_ctx_train: u("llama.context_length")?,
        };
        if config.head_dim * config.n_head != n_embd || !config.n_head.is_multiple_of(config.n_head_kv) {
            return Err(TrainError::Base(format!("unsupported head layout: {config:?}")));
        }
        let mut tensor = |name: &str| -> Result<Tensor> {
            let t = content
                .tensor(&mut file, name, &device)
                .map_err(|e| TrainError::Base(format!("{name}: {e}")))?;
            Ok(t.dequantize(&device)?.to_dtype(DType::F32)?.contiguous()?)
        };
        let frozen = |weight: Tensor| -> Result<FrozenLinear> {
            let (n_out, n_in) = weight.dims2()?;
            Ok(FrozenLinear { weight, n_in, n_out })
        };
        let embedding = tensor("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            tensor("output.weight")?
        } else {
            embedding.clone()
        };
        let output = frozen(output)?;
        let mut config = config;
        config.n_vocab = output.n_out;
        // The factors move into the trainable tensors; `adapter` keeps the metadata only.
        let scale = f64::from(adapter.scale_factor());
        let mut adapter = adapter;
        let mut pairs: std::collections::HashMap<String, &mut LoraPair> =
            adapter.pairs.iter_mut().map(|p| (p.target.clone(), p)).collect();
        let mut blocks = Vec::with_capacity(config.n_layer);
        for layer in 0..config.n_layer {
            let mut linears = Vec::with_capacity(LINEAR_KINDS.len());
            for kind in LINEAR_KINDS {
                let name = format!("blk.{layer}.{kind}.weight");
                let frozen = frozen(tensor(&name)?)?;
                let lora = match pairs.remove(name.as_str()) {
                    Some(pair) => {
                        if (pair.n_in, pair.n_out) != (frozen.n_in, frozen.n_out) {
                            return Err(TrainError::Base(format!(
                                "{name} is {}×{}, the adapter's factors are for {}×{}",
                                frozen.n_out, frozen.n_in, pair.n_out, pair.n_in
                            )));
                        }
                        let rank = pair.rank();
                        Some((
                            Var::from_vec(std::mem::take(&mut pair.a), (rank, pair.n_in), &device)?,
                            Var::from_vec(std::mem::take(&mut pair.b), (pair.n_out, rank), &device)?,
                        ))
                    }
                    None => None,
                };
                linears.push(Linear { name, frozen, lora });
            }
            blocks.push(Block {
                attn_norm: tensor(&format!("blk.{layer}.attn_norm.weight"))?,
                ffn_norm: tensor(&format!("blk.{layer}.ffn_norm.weight"))?,
                linears,
            });
        }
        if let Some(name) = pairs.keys().next() {
            return Err(TrainError::Base(format!(
                "the adapter targets {name}, which the trainer does not adapt"
            )));
        }
        let (cos, sin) = rope_tables(&config)?;
        Ok(Self {
            output_norm: tensor("output_norm.weight")?,
            embedding,
            output,
            blocks,
            cos,
            sin,
            scale,
            adapter,
            config,
        })
    }

    /// The base's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The trainable tensors, `A` then `B` of each adapted matrix, in the base's order.
    pub fn vars(&self) -> Vec<Var> {
        self.blocks
            .iter()
            .flat_map(|b| &b.linears)
            .filter_map(|l| l.lora.as_ref())
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }

    /// The adapter as it stands, in llama.cpp's format (the metadata it was loaded with,
    /// the factors of the trainable tensors).
    pub fn adapter(&self) -> Result<LoraAdapterFile> {
        let mut file = self.adapter.clone();
        let trained: std::collections::HashMap<&str, (&Var, &Var)> = self
            .blocks
            .iter()
            .flat_map(|b| &b.linears)
            .filter_map(|l| l.lora.as_ref().map(|(a, b)| (l.name.as_str(), (a, b))))
            .collect();
        for pair in &mut file.pairs {
            let (a, b) = trained[pair.target.as_str()];
            pair.a = a.as_tensor().flatten_all()?.to_vec1()?;
            pair.b = b.as_tensor().flatten_all()?.to_vec1()?;
        }
        Ok(file)
    }

    /// Final-norm hidden states of every position, `(batch · len) × n_embd`.
    fn hidden(&self, tokens: &Tensor) -> Result<Tensor> {
        let (batch, len) = tokens.dims2()?;
        if len > self.config.n_ctx_train {
            return Err(TrainError::Data(format!(
                "a sequence of {len} tokens is longer than the base's context ({})",
                self.config.n_ctx_train
            )));
        }
        let c = &self.config;
        let rows = batch * len;
        let mut x = self.embedding.index_select(&tokens.flatten_all()?, 0)?;
        let (cos, sin) = (self.cos.narrow(0, 0, len)?, self.sin.narrow(0, 0, len)?);
        let group = c.n_head / c.n_head_kv;
        // Queries of one KV head's group attend together: `group · len` rows against
        // `len` keys, each row's key limit its own position.
        let mask = causal_mask(len, group)?;
        let attention_scale = 1.0 / (c.head_dim as f64).sqrt();
        for block in &self.blocks {
            let [q, k, v, o, gate, up, down] = &block.linears[..] else {
                unreachable!("a block has the seven matrices of LINEAR_KINDS")
            };
            let h = candle_nn::ops::rms_norm_slow(&x, &block.attn_norm, c.rms_eps as f32)?;
            let heads = |t: Tensor, n: usize| -> Result<Tensor> {
                Ok(t.reshape((batch, len, n, c.head_dim))?.transpose(1, 2)?.contiguous()?)
            };
            let q = heads(q.forward(&h, self.scale)?, c.n_head)?;
            let k = heads(k.forward(&h, self.scale)?, c.n_head_kv)?;
            let v = heads(v.forward(&h, self.scale)?, c.n_head_kv)?;
            let q = candle_nn::rotary_emb::rope_i_slow(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i_slow(&k, &cos, &sin)?;
            let q = q.reshape((batch, c.n_head_kv, group * len, c.head_dim))?;
            let scores = (q.matmul(&k.t()?)? * attention_scale)?.broadcast_add(&mask)?;
            let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let attended = weights
                .matmul(&v)?
                .reshape((batch, c.n_head, len, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((rows, c.n_head * c.head_dim))?;
            x = (x + o.forward(&attended, self.scale)?)?;
            let h = candle_nn::ops::rms_norm_slow(&x, &block.ffn_norm, c.rms_eps as f32)?;
            let ff = (gate.forward(&h, self.scale)?.silu()? * up.forward(&h, self.scale)?)?;
            x = (x + down.forward(&ff, self.scale)?)?;
        }
        Ok(candle_nn::ops::rms_norm_slow(&x, &self.output_norm, c.rms_eps as f32)?)
    }

    /// Logits of the given rows of the flattened positions, `rows × n_vocab`.
    fn logits_at(&self, hidden: &Tensor, rows: &Tensor) -> Result<Tensor> {
        Ok(hidden.index_select(rows, 0)?.apply_op1(self.output.clone())?)
    }

    /// Mean cross-entropy of the batch's targets (a scalar tensor to call `backward` on).
    pub fn loss(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.hidden(&batch.tokens)?;
        let logits = self.logits_at(&hidden, &batch.positions)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &batch.labels)?)
    }

    /// The next-token logits after each position of `tokens` (one sequence).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let t = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &Device::Cpu)?;
        let hidden = self.hidden(&t)?;
        let rows = Tensor::arange(0u32, tokens.len() as u32, &Device::Cpu)?;
        Ok(self.logits_at(&hidden, &rows)?.to_vec2()?)
    }
}

/// llama.cpp's RoPE angles (`pos · base^(-2i/d)`) for every trained position.
fn rope_tables(c: &Config) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| c.rope_base.powf(-2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let n = c.n_ctx_train.min(1 << 16);
    let mut angles = Vec::with_capacity(n * half);
    for p in 0..n {
        angles.extend(inv.iter().map(|f| p as f32 * f));
    }
    let angles = Tensor::from_vec(angles, (n, half), &Device::Cpu)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// `(group · len) × len`: 0 where row `r`'s position `r mod len` may see key `j`, −∞ after.
fn causal_mask(len: usize, group: usize) -> Result<Tensor> {
    let mut mask = Vec::with_capacity(group * len * len);
    for _ in 0..group {
        for i in 0..len {
            mask.extend((0..len).map(|j| if j <= i { 0.0f32 } else { f32::NEG_INFINITY }));
        }
    }
    Ok(Tensor::from_vec(mask, (group * len, len), &Device::Cpu)?)
}
