//! The language-model interface the rest of Minerva programs against.
//!
//! A [`LanguageModel`] is the loaded weights plus vocabulary: shareable across threads,
//! never mutated. A [`Session`] is the mutable per-context state (the KV cache of one or
//! more sequences) that a single thread drives with [`Session::decode`]. Keeping the two
//! apart is what lets one loaded model serve many sequences.
//!
//! The only backend today is llama.cpp ([`llama::LlamaCppModel`]); nothing outside the
//! engine names a backend type: [`load`] picks the backend for a file and hands back the
//! trait object. A second backend is a new module here and a line in [`load`].

pub mod llama;
pub mod lora;
pub mod quantize;

use std::path::Path;
use std::sync::Arc;

use crate::Result;

/// Loads the language model in `path` (validated first) with the backend for its format.
pub fn load(path: &Path) -> Result<Arc<dyn LanguageModel>> {
    Ok(Arc::new(llama::LlamaCppModel::load(path)?))
}

/// Whether the kernels copy a model's matrices into AMX tile layouts when it loads: on
/// CPUs with AMX-INT8 (and AVX512-VNNI), where llama.cpp's CPU backend was built for them,
/// ggml's AMX buffer type takes every matrix it has kernels for, beside the mapped file.
/// The memory estimate counts that copy.
#[cfg(not(feature = "portable"))]
pub fn amx_repacks() -> bool {
    // SAFETY: both only report how ggml-cpu was compiled (no state, no arguments).
    unsafe { llama_cpp_sys_2::ggml_cpu_has_amx_int8() != 0 && llama_cpp_sys_2::ggml_cpu_has_avx512_vnni() != 0 }
}

/// The portable build's ggml-cpu is a library loaded at start (its functions cannot be
/// linked): the CPU variant it chose reports its features in llama.cpp's system line.
#[cfg(feature = "portable")]
pub fn amx_repacks() -> bool {
    llama::kernel_report()
        .is_ok_and(|k| k.system_info.contains("AMX_INT8 = 1") && k.system_info.contains("AVX512_VNNI = 1"))
}

/// A token id in the model's vocabulary.
pub type TokenId = i32;

/// Identifies one sequence (one conversation's KV state) inside a [`Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u32);

/// What a model declares about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelMetadata {
    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// Quantization of the weights, e.g. `Q4_1`.
    pub quantization: String,
    /// Number of weights.
    pub parameters: u64,
    /// Bytes of tensor data.
    pub weight_bytes: u64,
    /// Vocabulary size (length of a logits row).
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Beginning-of-sequence token, when the model adds one to prompts.
    pub bos_token: Option<TokenId>,
    /// End-of-sequence token.
    pub eos_token: Option<TokenId>,
    /// The model's Jinja chat template, when the file has one.
    pub chat_template: Option<String>,
}

/// The element type of a session's KV cache: `f16` (llama.cpp's default), or `q8_0` /
/// `q4_0`, which hold a long context in about half / a quarter of the memory at a small
/// cost in accuracy (llama.cpp's `--cache-type-k/-v`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    #[default]
    F16,
    Q8_0,
    Q4_0,
}

impl KvType {
    /// Bytes of 32 elements (ggml's block sizes: f16 2 bytes each; q8_0 one f16 scale and
    /// 32 bytes; q4_0 one f16 scale and 16 bytes).
    pub fn bytes_per_32(self) -> u64 {
        match self {
            Self::F16 => 64,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
        }
    }

    /// The name users type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            other => Err(format!("{other:?} is not a KV cache type: use f16, q8_0 or q4_0")),
        }
    }
}

/// How positions are scaled to stretch a model past the context it was trained with
/// (llama.cpp's `--rope-scaling` and `--rope-scale`): a factor of 2 reads a context twice
/// the trained length. `Linear` squeezes every position by the factor; `Yarn` scales the
/// frequencies unevenly (and the attention's temperature), which keeps short-range
/// attention sharper, and is what most long-context releases are tuned for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum RopeScaling {
    /// The model's own (no scaling, or the scaling its file declares).
    #[default]
    Model,
    /// Linear position interpolation by this factor (> 1).
    Linear(f32),
    /// YaRN by this factor (> 1).
    Yarn(f32),
}

impl RopeScaling {
    /// Reads a setting: `none` (the model's own), or `linear` / `yarn` with `factor`.
    pub fn from_setting(kind: Option<&str>, factor: Option<f64>) -> std::result::Result<Self, String> {
        let factor = factor.unwrap_or(1.0) as f32;
        match kind {
            None | Some("none") => Ok(Self::Model),
            Some(_) if !(factor > 1.0 && factor <= 64.0) => {
                Err(format!("rope_factor {factor} must be above 1 and at most 64"))
            }
            Some("linear") => Ok(Self::Linear(factor)),
            Some("yarn") => Ok(Self::Yarn(factor)),
            Some(other) => Err(format!("{other:?} is not a RoPE scaling: use none, linear or yarn")),
        }
    }

    /// How many times the trained context the model may read.
    pub fn factor(self) -> f32 {
        match self {
            Self::Model => 1.0,
            Self::Linear(f) | Self::Yarn(f) => f,
        }
    }

    /// The longest context a model trained on `n_ctx_train` tokens is given.
    pub fn context_limit(self, n_ctx_train: u32) -> u32 {
        (f64::from(n_ctx_train.max(1)) * f64::from(self.factor())).min(f64::from(u32::MAX)) as u32
    }
}

/// How a [`Session`] is sized.
#[derive(Debug, Clone, Copy)]
pub struct SessionParams {
    /// Total context (KV cache cells), one pool shared by all sequences.
    pub n_ctx: u32,
    /// Most tokens one [`Session::decode`] call may carry.
    pub n_batch: u32,
    /// Most sequences alive at once.
    pub n_seq_max: u32,
    /// CPU threads for the forward pass.
    pub threads: usize,
    /// Element type of the KV cache (keys and values alike).
    pub kv_type: KvType,
    /// Position scaling past the trained context.
    pub rope: RopeScaling,
    /// Attention through llama.cpp's fused flash-attention kernels (where the backend has
    /// them, as on CPU); off, it multiplies out the scores. A quantized KV cache needs it.
    pub flash_attention: bool,
}

/// Which logits a [`SequenceInput`] wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None: the tokens only extend the KV cache.
    None,
    /// The last token's row: what the next token should be.
    Last,
    /// One row for every token from this index (within the input) on.
    From(usize),
}

/// Tokens to append to one sequence in a [`Session::decode`] call.
#[derive(Debug, Clone, Copy)]
pub struct SequenceInput<'a> {
    /// The sequence the tokens belong to.
    pub seq: SeqId,
    /// Tokens to evaluate, in order.
    pub tokens: &'a [TokenId],
    /// Position of `tokens[0]` in the sequence (the number of tokens already in its KV).
    pub start_pos: u32,
    /// Which logits rows to return.
    pub logits: LogitsWanted,
}

/// A loaded language model: weights and vocabulary, immutable and thread-safe.
pub trait LanguageModel: Send + Sync {
    /// What the model declares about itself.
    fn metadata(&self) -> &ModelMetadata;

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the model declares;
    /// `parse_special` turns special-token text such as `<|im_start|>` into its token.
    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<TokenId>>;

    /// The bytes one token stands for (possibly part of a UTF-8 character).
    /// Control tokens render as their text only when `render_special` is set.
    fn token_bytes(&self, token: TokenId, render_special: bool) -> Vec<u8>;

    /// Whether `token` ends generation (EOS, EOT and their kin).
    fn is_end_of_generation(&self, token: TokenId) -> bool;

    /// Creates fresh per-context state for this model.
    fn new_session(&self, params: SessionParams) -> Result<Box<dyn Session>>;

    /// Loads the LoRA adapter in `path` for this model, after checking that it fits (its
    /// architecture and every target's shape; `base_sha256`, when given, against the
    /// digest the adapter records). A sealed (encrypted) file is opened with `key` into
    /// memory. Its memory is [`lora::AdapterInfo::tensor_bytes`].
    fn load_adapter(
        &self,
        path: &Path,
        base_sha256: Option<&str>,
        key: Option<&minerva_seal::Key>,
    ) -> Result<Arc<dyn Adapter>>;
}

/// A LoRA adapter loaded for one model ([`LanguageModel::load_adapter`]).
pub trait Adapter: Send + Sync {
    /// What its file declares.
    fn info(&self) -> &lora::AdapterInfo;

    /// A number no other adapter loaded by this process has (never 0): what cached KV
    /// computed with it is filed under.
    fn id(&self) -> u64;

    /// The backend's value, for the session that applies it.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// LoRA adapters applied together, each at its scale (times its `alpha / rank`): what a
/// forward pass runs with; empty is the base alone. Kept in the order of the adapters'
/// ids, as llama.cpp sums their updates whatever order they were set in, so two sets of
/// the same adapters are one setting.
#[derive(Clone, Default)]
pub struct AdapterSet(Vec<(Arc<dyn Adapter>, f32)>);

impl AdapterSet {
    /// Adds `adapter` at `scale` (replacing its scale if it is in the set already).
    pub fn push(&mut self, adapter: Arc<dyn Adapter>, scale: f32) {
        match self.0.iter_mut().find(|(a, _)| a.id() == adapter.id()) {
            Some(entry) => entry.1 = scale,
            None => {
                self.0.push((adapter, scale));
                self.0.sort_by_key(|(a, _)| a.id());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The adapters and their scales, in the set's order.
    pub fn iter(&self) -> impl Iterator<Item = &(Arc<dyn Adapter>, f32)> {
        self.0.iter()
    }

    /// Whether `other` applies the same adapters at the same scales.
    pub fn same_as(&self, other: &AdapterSet) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, x), (b, y))| a.id() == b.id() && x.to_bits() == y.to_bits())
    }

    /// A key for what KV computed under the set is filed under: `(0, 0)` for the base,
    /// `(id, scale bits)` for one adapter, and a digest of every `(id, scale)` for several.
    pub fn key(&self) -> (u64, u32) {
        match self.0.as_slice() {
            [] => (0, 0),
            [(a, scale)] => (a.id(), scale.to_bits()),
            several => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                for (a, scale) in several {
                    (a.id(), scale.to_bits()).hash(&mut hasher);
                }
                // The top bit apart from single adapters' ids (a process's counter).
                (hasher.finish() | (1 << 63), several.len() as u32)
            }
        }
    }
}

impl From<Option<(Arc<dyn Adapter>, f32)>> for AdapterSet {
    fn from(adapter: Option<(Arc<dyn Adapter>, f32)>) -> Self {
        let mut set = Self::default();
        if let Some((adapter, scale)) = adapter {
            set.push(adapter, scale);
        }
        set
    }
}

impl std::fmt::Debug for AdapterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(a, scale)| (a.id(), scale)))
            .finish()
    }
}

/// Mutable inference state of one context: the KV cache of its sequences.
pub trait Session: Send {
    /// The parameters the session was created with.
    fn params(&self) -> SessionParams;

    /// Whether the session's passes run on the thread count it was created with, whatever
    /// the cores of the turn they run in: such a session must compute in a turn of every
    /// core ([`crate::compute::exclusive`]), not in a share.
    fn fixed_threads(&self) -> bool {
        false
    }

    /// Evaluates all inputs in one forward pass and returns, per input, the logits rows
    /// it asked for (each row has `n_vocab` entries).
    fn decode(&mut self, inputs: &[SequenceInput<'_>]) -> Result<Vec<Vec<&[f32]>>>;

    /// Forgets a sequence's KV state so its cells can be reused.
    fn free_sequence(&mut self, seq: SeqId);

    /// Makes the first `len` positions of `src` part of `dst` too (`dst` should hold
    /// nothing yet): the shared cells are not recomputed, and in a unified KV cache not
    /// even duplicated. `dst` then continues at position `len`.
    fn copy_sequence(&mut self, src: SeqId, dst: SeqId, len: u32);

    /// Context shift: forgets positions `n_keep .. n_keep + n_discard` of `seq` and moves
    /// the later ones back by `n_discard`, so a generation can go on past the context
    /// (llama.cpp's `--context-shift`). The moved keys are rotated to their new positions;
    /// what they attended to before stays baked into their values.
    fn shift_sequence(&mut self, seq: SeqId, n_keep: u32, n_discard: u32) -> Result<()>;

    /// Forgets every position of `seq` from `len` on (a rejected speculative draft), so
    /// the sequence continues at position `len`.
    fn truncate_sequence(&mut self, seq: SeqId, len: u32) -> Result<()>;

    /// Copies a sequence's KV state out of the session, into host memory.
    fn save_sequence(&self, seq: SeqId) -> Result<SequenceSnapshot>;

    /// Gives `dst` (which should hold nothing yet) the first `len` positions of a saved
    /// sequence, in free cells of the session; `dst` then continues at position `len`.
    fn restore_sequence(&mut self, snapshot: &SequenceSnapshot, dst: SeqId, len: u32) -> Result<()>;

    /// Applies the adapters of `adapters` (none: the base alone) to every following
    /// [`Session::decode`]. A pass runs with one setting for all its sequences, so
    /// sequences with different sets decode in different passes; KV computed under one set
    /// belongs to that set only.
    fn set_adapters(&mut self, adapters: AdapterSet) -> Result<()>;

    /// [`Session::set_adapters`] with one adapter at `scale`, or none.
    fn set_adapter(&mut self, adapter: Option<(Arc<dyn Adapter>, f32)>) -> Result<()> {
        self.set_adapters(adapter.into())
    }
}

/// A sequence's KV state held outside its session (see [`Session::save_sequence`]): it
/// takes no cells, so it costs the forward passes nothing, only host memory.
pub struct SequenceSnapshot(Box<dyn std::any::Any + Send>, usize);

impl SequenceSnapshot {
    /// Wraps a backend's snapshot of `bytes` bytes.
    pub(crate) fn new(state: impl std::any::Any + Send, bytes: usize) -> Self {
        Self(Box::new(state), bytes)
    }

    /// The backend's snapshot, when it is of type `T`.
    pub(crate) fn downcast<T: 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }

    /// Host memory it takes.
    pub fn bytes(&self) -> usize {
        self.1
    }
}

impl std::fmt::Debug for SequenceSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceSnapshot").field("bytes", &self.1).finish()
    }
}
