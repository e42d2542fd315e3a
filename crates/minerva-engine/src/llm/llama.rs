//! The llama.cpp backend (through the `llama-cpp-2` crate) for GGUF language models.
//!
//! Every file is validated by [`crate::gguf::inspect`] before llama.cpp sees it, so a
//! corrupt or hostile file becomes a typed error instead of a crash in C++.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams, RopeScalingType};
use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel, RopeType};
use llama_cpp_2::token::LlamaToken;

use super::lora::{self, AdapterInfo};
use super::{
    Adapter, AdapterSet, LanguageModel, LogitsWanted, ModelMetadata, RopeScaling, SeqId, SequenceInput,
    SequenceSnapshot, Session, SessionParams, TokenId,
};
use crate::{EngineError, Result, gguf};

/// llama.cpp's global state: initialised once per process, never torn down.
pub(super) fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own logging goes to `tracing`, filtered like ours.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            #[cfg(feature = "portable")]
            load_cpu_variants()?;
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| EngineError::LlamaLoad {
            path: PathBuf::new(),
            reason: reason.clone(),
        })
}

/// The portable build's kernels: ggml's backend libraries (`libggml-cpu-*.so`, one per
/// CPU generation) beside the executable, or in `MINERVA_BACKENDS_DIR`; ggml scores each
/// CPU variant against this CPU's features and keeps the best.
#[cfg(feature = "portable")]
fn load_cpu_variants() -> std::result::Result<(), String> {
    let dir = match std::env::var_os("MINERVA_BACKENDS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .map_err(|e| format!("finding the executable's directory: {e}"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    llama_cpp_2::llama_backend::load_backends_from_path(&dir);
    // SAFETY: reads ggml's backend registry, filled by the call above.
    if unsafe { llama_cpp_sys_2::ggml_backend_dev_count() } == 0 {
        return Err(format!(
            "no ggml CPU backend library (libggml-cpu-*.so) in {}: the portable build's libraries belong beside the binary",
            dir.display()
        ));
    }
    Ok(())
}

/// What llama.cpp's kernels will run on: its compute devices, and the CPU features the
/// kernels it chose were built for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelReport {
    /// `portable` (CPU variants chosen at run time) or `native` (built for this CPU).
    pub build: &'static str,
    /// Each device: its backend's name and description (`CPU`: the processor).
    pub devices: Vec<(String, String)>,
    /// llama.cpp's system line: `CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | …`.
    pub system_info: String,
}

/// Initialises llama.cpp (loading the portable build's kernels) and reports what it chose.
pub fn kernel_report() -> Result<KernelReport> {
    backend()?;
    let text = |p: *const std::os::raw::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: ggml and llama.cpp return NUL-terminated strings they own for the
            // process's life.
            unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: the backend is initialised; device handles live as long as the process.
    let devices = (0..unsafe { llama_cpp_sys_2::ggml_backend_dev_count() })
        .map(|i| unsafe {
            let dev = llama_cpp_sys_2::ggml_backend_dev_get(i);
            (
                text(llama_cpp_sys_2::ggml_backend_dev_name(dev)),
                text(llama_cpp_sys_2::ggml_backend_dev_description(dev)),
            )
        })
        .collect();
    Ok(KernelReport {
        build: if cfg!(feature = "portable") {
            "portable"
        } else {
            "native"
        },
        devices,
        // SAFETY: as above.
        system_info: text(unsafe { llama_cpp_sys_2::llama_print_system_info() }),
    })
}

/// llama.cpp mutates model state while creating a context, so contexts of one process
/// are created one at a time.
static CONTEXT_CREATION: Mutex<()> = Mutex::new(());

/// A GGUF model loaded through llama.cpp (weights memory-mapped).
pub struct LlamaCppModel {
    model: Arc<LlamaModel>,
    /// The file's header, which adapters are checked against.
    info: gguf::GgufInfo,
    metadata: ModelMetadata,
    /// Whether llama.cpp can move this model's keys to other positions (context shift):
    /// not for position encodings with several positions per token (M-RoPE and its kin),
    /// where it aborts the process instead of failing (`llama_kv_cache::get_can_shift`).
    can_shift: bool,
}

/// Architectures whose keys llama.cpp cannot shift whatever their RoPE type (per-layer
/// rotary dimensions).
const UNSHIFTABLE: &[&str] = &["step35"];

impl LlamaCppModel {
    /// Validates `path` and loads it.
    pub fn load(path: &Path) -> Result<Self> {
        let info = gguf::inspect(path)?;
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| {
            EngineError::LlamaLoad {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })?;
        let vocab = model.vocab();
        let metadata = ModelMetadata {
            architecture: info.architecture.clone(),
            name: info.name.clone(),
            quantization: info.quantization.clone(),
            parameters: model.n_params(),
            weight_bytes: model.size(),
            n_vocab: usize::try_from(vocab.n_tokens()).unwrap_or(0),
            n_ctx_train: model.n_ctx_train(),
            bos_token: vocab.should_add_bos().then(|| vocab.bos().0),
            eos_token: (vocab.eos().0 >= 0).then(|| vocab.eos().0),
            chat_template: info.chat_template.clone(),
        };
        tracing::info!(path = %path.display(), arch = %metadata.architecture, params = metadata.parameters, "loaded GGUF model");
        let can_shift = !UNSHIFTABLE.contains(&metadata.architecture.as_str())
            && !matches!(
                model.rope_type(),
                Some(RopeType::MRope | RopeType::IMRope | RopeType::Vision)
            );
        Ok(Self {
            model: Arc::new(model),
            info,
            can_shift,
            metadata,
        })
    }
}

impl LanguageModel for LlamaCppModel {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<TokenId>> {
        let tokens = self.model.vocab().tokenize(text.as_bytes(), add_special, parse_special);
        Ok(tokens.into_iter().map(|t| t.0).collect())
    }

    fn token_bytes(&self, token: TokenId, render_special: bool) -> Vec<u8> {
        self.model
            .vocab()
            .token_to_piece(LlamaToken(token), render_special, None)
    }

    fn is_end_of_generation(&self, token: TokenId) -> bool {
        self.model.vocab().is_eog(LlamaToken(token))
    }

    fn new_session(&self, params: SessionParams) -> Result<Box<dyn Session>> {
        let backend = backend()?;
        let n_ctx = NonZeroU32::new(params.n_ctx).ok_or_else(|| EngineError::invalid("n_ctx", "must be positive"))?;
        if params.n_batch == 0 || params.n_seq_max == 0 {
            return Err(EngineError::invalid(
                "n_batch",
                "n_batch and n_seq_max must be positive",
            ));
        }
        // llama.cpp refuses a quantized V cache without flash attention (a null context).
        if !params.flash_attention && params.kv_type != super::KvType::F16 {
            return Err(EngineError::invalid(
                "flash_attention",
                "a quantized KV cache (q8_0, q4_0) needs flash attention",
            ));
        }
        let threads = i32::try_from(params.threads.max(1)).unwrap_or(i32::MAX);
        let context_params = LlamaContextParams::default()
            .with_n_ctx(Some(n_ctx))
            .with_n_batch(params.n_batch)
            .with_n_ubatch(params.n_batch.min(512))
            .with_n_seq_max(params.n_seq_max)
            // One pool of cells for all sequences: any sequence may use the whole context,
            // and a shared prefix copied between sequences shares its cells. (Per-stream
            // cells were measured and lost: see ARCHITECTURE.md, the chat request's step 3.)
            .with_kv_unified(true)
            // Sliding-window layers keep every position, so a cached prefix stays whole.
            .with_swa_full(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_type_k(kv_cache_type(params.kv_type))
            .with_type_v(kv_cache_type(params.kv_type))
            .with_flash_attention_policy(if params.flash_attention {
                // On where the backend has the kernels (every CPU build does).
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO
            } else {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
            });
        let context_params = match params.rope {
            RopeScaling::Model => context_params,
            RopeScaling::Linear(factor) => context_params
                .with_rope_scaling_type(RopeScalingType::Linear)
                .with_rope_freq_scale(1.0 / factor),
            // The original context (`yarn_orig_ctx`) defaults to the trained one.
            RopeScaling::Yarn(factor) => context_params
                .with_rope_scaling_type(RopeScalingType::Yarn)
                .with_rope_freq_scale(1.0 / factor),
        };
        let context = {
            let _guard = CONTEXT_CREATION.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.model
                .new_context(backend, context_params)
                .map_err(|e| EngineError::Decode(format!("cannot create a context: {e}")))?
        };
        // SAFETY: the context borrows the model behind `self.model`. The session keeps a
        // clone of that `Arc`, so the model outlives the context; the field order of
        // `LlamaCppSession` drops the context before the `Arc`.
        let context: LlamaContext<'static> = unsafe { std::mem::transmute(context) };
        let raw = raw_context(&context, &self.model);
        Ok(Box::new(LlamaCppSession {
            context,
            raw,
            threads_now: params.threads.max(1),
            batch: LlamaBatch::new(params.n_batch as usize, params.n_seq_max as i32),
            params,
            can_shift: self.can_shift,
            adapters: AdapterSet::default(),
            _model: Arc::clone(&self.model),
        }))
    }

    fn load_adapter(
        &self,
        path: &Path,
        base_sha256: Option<&str>,
        key: Option<&minerva_seal::Key>,
    ) -> Result<Arc<dyn Adapter>> {
        // A sealed adapter is opened with the configured key into memory, and llama.cpp
        // reads it there: its plaintext never reaches a disk.
        let unsealed = lora::unseal(path, key)?;
        let readable = unsealed
            .as_ref()
            .map_or_else(|| path.to_owned(), minerva_seal::MemoryFile::path);
        let mut info = lora::inspect_adapter(&readable)?;
        info.path = path.to_owned();
        lora::check_fits(&info, &self.info, base_sha256)?;
        let cpath = std::ffi::CString::new(readable.as_os_str().as_encoded_bytes()).map_err(|_| {
            EngineError::InvalidAdapter {
                path: path.to_owned(),
                reason: "the path holds a NUL byte".into(),
            }
        })?;
        // SAFETY: `LlamaModel` is `repr(transparent)` over a non-null `llama_model` pointer
        // (llama-cpp-2 wraps `lora_adapter_init` behind `&mut LlamaModel`, which a model
        // shared by its sessions cannot give). llama.cpp registers the adapter with the
        // model while contexts are created one at a time, as here.
        let adapter = unsafe {
            let model = *std::ptr::from_ref::<LlamaModel>(&self.model)
                .cast::<std::ptr::NonNull<llama_cpp_sys_2::llama_model>>();
            let _guard = CONTEXT_CREATION.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            llama_cpp_sys_2::llama_adapter_lora_init(model.as_ptr(), cpath.as_ptr())
        };
        drop(unsealed);
        let adapter = std::ptr::NonNull::new(adapter).ok_or_else(|| EngineError::InvalidAdapter {
            path: path.to_owned(),
            reason: "llama.cpp could not load the adapter (its log says why)".into(),
        })?;
        tracing::info!(path = %path.display(), rank = info.rank, alpha = info.alpha, tensors = info.targets.len(), "loaded LoRA adapter");
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Arc::new(LlamaCppAdapter {
            adapter,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            info,
            _model: Arc::clone(&self.model),
        }))
    }
}

/// A LoRA adapter llama.cpp holds for one model.
struct LlamaCppAdapter {
    adapter: std::ptr::NonNull<llama_cpp_sys_2::llama_adapter_lora>,
    id: u64,
    info: AdapterInfo,
    /// The model the adapter belongs to outlives it.
    _model: Arc<LlamaModel>,
}

// SAFETY: llama.cpp never mutates an adapter after loading it; contexts only read it.
unsafe impl Send for LlamaCppAdapter {}
// SAFETY: as above.
unsafe impl Sync for LlamaCppAdapter {}

impl Adapter for LlamaCppAdapter {
    fn info(&self) -> &AdapterInfo {
        &self.info
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for LlamaCppAdapter {
    fn drop(&mut self) {
        // SAFETY: loaded in `load_adapter`, freed once; every session applying it holds
        // an `Arc` of it, so no context uses it any more.
        unsafe { llama_cpp_sys_2::llama_adapter_lora_free(self.adapter.as_ptr()) };
    }
}

/// The `llama_context` behind `context`: llama-cpp-2 keeps it private, but prints it in
/// its `Debug` form; the address read there is trusted only once llama.cpp confirms it is
/// a context of `model` with the context's size.
fn raw_context(context: &LlamaContext<'static>, model: &LlamaModel) -> Option<RawContext> {
    let printed = format!("{context:?}");
    let hex = printed.split("context: 0x").nth(1)?;
    let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    let address = usize::from_str_radix(&hex, 16).ok()?;
    let raw = std::ptr::NonNull::new(address as *mut llama_cpp_sys_2::llama_context)?;
    // SAFETY: `LlamaModel` is `repr(transparent)` over its non-null `llama_model` pointer.
    let model =
        unsafe { *std::ptr::from_ref::<LlamaModel>(model).cast::<std::ptr::NonNull<llama_cpp_sys_2::llama_model>>() };
    // SAFETY: the address is the one llama-cpp-2 holds for this live context (its Debug
    // form prints that field); both calls only read the context.
    let confirmed = unsafe {
        std::ptr::eq(llama_cpp_sys_2::llama_get_model(raw.as_ptr()), model.as_ptr())
            && llama_cpp_sys_2::llama_n_ctx(raw.as_ptr()) == context.n_ctx()
    };
    if !confirmed {
        tracing::warn!("cannot reach llama.cpp's context: one LoRA adapter per request only");
        return None;
    }
    Some(RawContext(raw))
}

/// The llama.cpp adapter behind `a`.
fn ours(a: &Arc<dyn Adapter>) -> Result<&LlamaCppAdapter> {
    a.as_any()
        .downcast_ref::<LlamaCppAdapter>()
        .ok_or_else(|| EngineError::Decode("the adapter was not loaded by llama.cpp".into()))
}

/// A session's own `llama_context` pointer (see [`raw_context`]).
struct RawContext(std::ptr::NonNull<llama_cpp_sys_2::llama_context>);

// SAFETY: it moves with its session, which owns the context (`LlamaContext` is `Send`
// for the same reason) and is used by one thread at a time.
unsafe impl Send for RawContext {}

impl LlamaCppSession {
    /// [`Session::set_adapters`] through llama-cpp-2's wrapper, which sets one adapter.
    fn set_adapters_wrapped(&mut self, adapters: AdapterSet) -> Result<()> {
        if adapters.len() > 1 {
            return Err(EngineError::Decode(
                "several adapters at once need llama.cpp's context, which could not be reached".into(),
            ));
        }
        // llama-cpp-2's setter takes its own wrapper, a `repr(transparent)` non-null
        // pointer without `Drop`; one is made for the call from the adapter's pointer.
        let wrap = |a: &LlamaCppAdapter| {
            // SAFETY: same size and layout (checked by `transmute`); the wrapper frees nothing.
            unsafe {
                std::mem::transmute::<std::ptr::NonNull<llama_cpp_sys_2::llama_adapter_lora>, LlamaLoraAdapter>(
                    a.adapter,
                )
            }
        };
        match adapters.iter().next() {
            Some((a, scale)) => {
                self.context
                    .lora_adapter_set(&mut wrap(ours(a)?), *scale)
                    .map_err(|e| EngineError::Decode(format!("cannot apply the adapter: {e}")))?;
            }
            None => {
                if let Some((a, _)) = self.adapters.iter().next()
                    && let Ok(current) = ours(a)
                {
                    self.context
                        .lora_adapter_remove(&mut wrap(current))
                        .map_err(|e| EngineError::Decode(format!("cannot remove the adapter: {e}")))?;
                }
            }
        }
        self.adapters = adapters;
        Ok(())
    }
}

/// A llama.cpp context: KV cache for up to `n_seq_max` sequences.
struct LlamaCppSession {
    context: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    params: SessionParams,
    can_shift: bool,
    /// The context's `llama_context`, for the calls llama-cpp-2 does not wrap
    /// (`llama_set_adapters_lora` with several values, `llama_set_n_threads`); `None` if
    /// it could not be found.
    raw: Option<RawContext>,
    /// The threads the context's passes run on now (its share of the cores).
    threads_now: usize,
    /// The adapters the context applies, kept alive while it does.
    adapters: AdapterSet,
    _model: Arc<LlamaModel>,
}

impl Session for LlamaCppSession {
    fn fixed_threads(&self) -> bool {
        // Without its raw context the thread count cannot be set per pass.
        self.raw.is_none()
    }

    fn params(&self) -> SessionParams {
        self.params
    }

    fn decode(&mut self, inputs: &[SequenceInput<'_>]) -> Result<Vec<Vec<&[f32]>>> {
        let total: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        if total == 0 {
            return Ok(inputs.iter().map(|_| Vec::new()).collect());
        }
        if total > self.params.n_batch as usize {
            return Err(EngineError::Decode(format!(
                "{total} tokens exceed the batch capacity of {}",
                self.params.n_batch
            )));
        }
        self.batch.clear();
        // Batch index of every logits row each input asked for.
        let mut rows: Vec<Vec<i32>> = Vec::with_capacity(inputs.len());
        let mut index: i32 = 0;
        for input in inputs {
            if input.seq.0 >= self.params.n_seq_max {
                return Err(EngineError::Decode(format!(
                    "sequence {} is beyond the session's {} sequences",
                    input.seq.0, self.params.n_seq_max
                )));
            }
            let n = input.tokens.len();
            let mut wanted = Vec::new();
            for (i, &token) in input.tokens.iter().enumerate() {
                let logits = match input.logits {
                    LogitsWanted::None => false,
                    LogitsWanted::Last => i + 1 == n,
                    LogitsWanted::From(first) => i >= first,
                };
                let pos = input.start_pos + i as u32;
                self.batch
                    .add(LlamaToken(token), pos as i32, &[input.seq.0 as i32], logits)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
                if logits {
                    wanted.push(index);
                }
                index += 1;
            }
            rows.push(wanted);
        }
        let (context, batch, threads_now) = (&mut self.context, &mut self.batch, &mut self.threads_now);
        let (raw, threads) = (self.raw.as_ref().map(|r| r.0), self.params.threads.max(1));
        let decoded = match raw {
            // The pass runs on its share of the cores (all of them while no other model
            // computes), with as many threads.
            Some(raw) => crate::compute::share(|cores| {
                let wanted = if cores >= crate::compute::cores() {
                    threads
                } else {
                    threads.min(cores)
                };
                if wanted != *threads_now {
                    let n = i32::try_from(wanted).unwrap_or(i32::MAX);
                    // SAFETY: `raw` is this session's live context (checked when it was
                    // found); the call only sets two of its parameters.
                    unsafe { llama_cpp_sys_2::llama_set_n_threads(raw.as_ptr(), n, n) };
                    *threads_now = wanted;
                }
                context.decode(batch)
            }),
            // Its thread count cannot change: it takes every core (`fixed_threads` tells
            // the scheduler to ask for them all).
            None => crate::compute::exclusive(|| context.decode(batch)),
        };
        decoded.map_err(|e| match e {
            llama_cpp_2::DecodeError::NoKvCacheSlot => EngineError::ContextOverflow {
                tokens: total,
                n_ctx: self.params.n_ctx,
            },
            other => EngineError::Decode(other.to_string()),
        })?;
        let context = &self.context;
        Ok(rows
            .into_iter()
            .map(|wanted| wanted.into_iter().map(|i| context.get_logits_ith(i)).collect())
            .collect())
    }

    fn free_sequence(&mut self, seq: SeqId) {
        // Only fails for ids beyond i32, which `decode` never admits.
        let _ = self.context.clear_kv_cache_seq(Some(seq.0), None, None);
    }

    fn copy_sequence(&mut self, src: SeqId, dst: SeqId, len: u32) {
        if len == 0 || src.0 >= self.params.n_seq_max || dst.0 >= self.params.n_seq_max {
            return;
        }
        // Only fails for positions beyond i32, which `decode` never admits.
        let _ = self
            .context
            .copy_kv_cache_seq(src.0 as i32, dst.0 as i32, Some(0), Some(len));
    }

    fn shift_sequence(&mut self, seq: SeqId, n_keep: u32, n_discard: u32) -> Result<()> {
        if n_discard == 0 {
            return Ok(());
        }
        if !self.can_shift {
            return Err(EngineError::Decode(
                "this model's positions cannot be shifted (context shift)".into(),
            ));
        }
        let id = seq.0 as i32;
        let end = n_keep + n_discard;
        let fail = |e: llama_cpp_2::context::kv_cache::KvCacheConversionError| {
            EngineError::Decode(format!("cannot shift sequence {}: {e}", seq.0))
        };
        self.context
            .kv_cache_seq_rm(id, Some(n_keep), Some(end))
            .map_err(fail)?;
        // The keys are re-rotated lazily, on the next decode.
        self.context
            .kv_cache_seq_add(id, Some(end), None, -(n_discard as i32))
            .map_err(fail)?;
        Ok(())
    }

    fn truncate_sequence(&mut self, seq: SeqId, len: u32) -> Result<()> {
        // Fails for caches that cannot drop a tail (recurrent models).
        self.context
            .kv_cache_seq_rm(seq.0 as i32, Some(len), None)
            .map_err(|e| EngineError::Decode(format!("cannot trim sequence {}: {e}", seq.0)))
    }

    fn save_sequence(&self, seq: SeqId) -> Result<SequenceSnapshot> {
        let state = self
            .context
            .state_seq_get(seq.0 as i32, LlamaStateSeqFlags::empty())
            .map_err(|e| EngineError::Decode(format!("cannot save sequence {}: {e}", seq.0)))?;
        let bytes = state.byte_len();
        Ok(SequenceSnapshot::new(state, bytes))
    }

    fn restore_sequence(&mut self, snapshot: &SequenceSnapshot, dst: SeqId, len: u32) -> Result<()> {
        let state = snapshot
            .downcast::<SeqState>()
            .ok_or_else(|| EngineError::Decode("the snapshot is not a llama.cpp sequence state".into()))?;
        // Fails without a run of free cells long enough for the whole snapshot; the
        // sequence is then left empty.
        self.context
            .state_seq_set(state, dst.0 as i32)
            .map_err(|e| EngineError::Decode(format!("cannot restore into sequence {}: {e}", dst.0)))?;
        self.context
            .kv_cache_seq_rm(dst.0 as i32, Some(len), None)
            .map_err(|e| EngineError::Decode(format!("cannot trim sequence {}: {e}", dst.0)))?;
        Ok(())
    }

    fn set_adapters(&mut self, adapters: AdapterSet) -> Result<()> {
        if adapters.same_as(&self.adapters) {
            return Ok(());
        }
        let mut pointers = adapters
            .iter()
            .map(|(a, _)| ours(a).map(|a| a.adapter.as_ptr()))
            .collect::<Result<Vec<_>>>()?;
        let mut scales: Vec<f32> = adapters.iter().map(|(_, scale)| *scale).collect();
        let status = match self.raw {
            // SAFETY: `raw` is this session's context (checked when it was found); the
            // adapters were loaded for its model and are kept alive by `self.adapters`
            // while the context applies them (llama.cpp copies the arrays).
            Some(RawContext(raw)) => unsafe {
                llama_cpp_sys_2::llama_set_adapters_lora(
                    raw.as_ptr(),
                    pointers.as_mut_ptr(),
                    pointers.len(),
                    scales.as_mut_ptr(),
                )
            },
            None => return self.set_adapters_wrapped(adapters),
        };
        if status != 0 {
            return Err(EngineError::Decode(format!(
                "llama.cpp refused the adapters (status {status})"
            )));
        }
        self.adapters = adapters;
        Ok(())
    }
}

/// llama.cpp's name for a KV cache type. (A quantized V cache needs flash attention,
/// which llama.cpp turns on for the CPU by default.)
fn kv_cache_type(kv: super::KvType) -> KvCacheType {
    match kv {
        super::KvType::F16 => KvCacheType::F16,
        super::KvType::Q8_0 => KvCacheType::Q8_0,
        super::KvType::Q4_0 => KvCacheType::Q4_0,
    }
}
