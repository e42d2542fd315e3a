//! A loaded language model's worker: one thread that owns the llama.cpp session and runs
//! the model's [`Scheduler`] (continuous batching with a prefix cache). Callers talk to it
//! through channels, never a lock.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use minerva_engine::constraint::Vocabulary;
use minerva_engine::generate::{GenerateOptions, Generation};
use minerva_engine::llm::{Adapter, AdapterSet, RopeScaling};
use minerva_engine::{EngineError, KvType, LanguageModel, SessionParams, TokenId};
use tokio::sync::mpsc as async_mpsc;

use crate::worker_thread::JoinOnDrop;

use crate::draft_model::DraftModel;
use crate::scheduler::{Job, Scheduler, SchedulerCounters, SchedulerLimits, SchedulerStats};

/// Most sequences llama.cpp allows in one context.
const MAX_SEQUENCES: usize = 256;

/// KV cells reserved per parallel sequence.
const CELLS_PER_SEQUENCE: usize = 512;

/// How a language model's worker is set up.
#[derive(Debug, Clone, Copy)]
pub struct LlmWorkerConfig {
    /// Context of one request (prompt plus generated tokens), capped at the model's
    /// training context.
    pub n_ctx: u32,
    /// CPU threads per forward pass.
    pub threads: usize,
    /// Requests generating at once, batched together; more wait in arrival order.
    pub parallel: usize,
    /// Most distinct tokens whose KV the prefix cache keeps; 0 turns it off.
    pub prefix_cache_tokens: usize,
    /// Element type of the session's KV cache.
    pub kv_type: KvType,
    /// Position scaling, which lets `n_ctx` go past the model's training length by its
    /// factor.
    pub rope: RopeScaling,
    /// Longest speculative draft (prompt lookup) per sequence and step; 0 turns
    /// speculative decoding off.
    pub draft_max: usize,
    /// Most tokens one forward pass carries: a long prompt goes in chunks of this size
    /// (llama.cpp's batch and micro-batch alike, since the scheduler never hands it a pass
    /// larger than one micro-batch).
    pub batch: usize,
    /// Attention through llama.cpp's flash-attention kernels (a quantized KV needs it).
    pub flash_attention: bool,
}

impl LlmWorkerConfig {
    /// Default of [`LlmWorkerConfig::draft_max`].
    pub const DEFAULT_DRAFT_MAX: usize = 16;
    /// Default of [`LlmWorkerConfig::batch`] (llama.cpp's default micro-batch).
    pub const DEFAULT_BATCH: usize = 512;
    /// Fewest tokens a pass may carry: the scheduler's small pass takes every decoding
    /// sequence's token and up to 63 more (drafts, short prompts), so the session's batch
    /// is at least the parallel sequences plus this.
    pub const MIN_BATCH: usize = 64;
}

impl LlmWorkerConfig {
    /// The session that serves this configuration: one pool of KV cells big enough for
    /// one request of the full context, or `parallel` typical ones. (The prefix cache
    /// keeps its KV outside the session.)
    pub fn session_params(&self, n_ctx: u32) -> SessionParams {
        let parallel = self.parallel.clamp(1, MAX_SEQUENCES);
        let cells = (parallel * CELLS_PER_SEQUENCE).max(n_ctx as usize);
        let cells = u32::try_from(cells).unwrap_or(u32::MAX);
        // The step's small pass carries every decoding sequence's token (and up to 63 more),
        // so the batch is never below the sequences plus that.
        let batch = self
            .batch
            .clamp(Self::MIN_BATCH, Self::DEFAULT_BATCH)
            .max(parallel + Self::MIN_BATCH);
        let batch = u32::try_from(batch).unwrap_or(u32::MAX);
        SessionParams {
            n_ctx: cells,
            n_batch: cells.min(batch),
            n_seq_max: parallel as u32,
            threads: self.threads,
            kv_type: self.kv_type,
            rope: self.rope,
            flash_attention: self.flash_attention,
        }
    }
}

/// Loaded adapters by file, with the file's size and modification time at load.
type AdapterCache =
    std::collections::HashMap<std::path::PathBuf, ((u64, Option<std::time::SystemTime>), Arc<dyn Adapter>)>;

/// What a generation job reports, in order: text pieces, then one final result.
#[derive(Debug)]
pub enum GenerationEvent {
    /// A piece of final text.
    Text(String),
    /// The generation ended (successfully or not).
    Done(Result<Generation, EngineError>),
}

/// Handle to a language model and its worker thread; the thread ends when the last
/// handle is dropped.
pub struct LlmWorker {
    model: Arc<dyn LanguageModel>,
    /// The model's tokens for the grammar engine, built on the first constrained request.
    vocabulary: std::sync::OnceLock<Result<Vocabulary, String>>,
    jobs: mpsc::Sender<Job>,
    n_ctx: u32,
    stats: Arc<SchedulerCounters>,
    /// The model's own defaults (system prompt, sampling) from the registry.
    settings: minerva_store::ModelSettings,
    /// LoRA adapters loaded for the model, by file (with the size and modification time
    /// they were loaded at).
    adapters: std::sync::Mutex<AdapterCache>,
    /// Why the draft model it was started with was refused.
    draft_error: Option<String>,
    /// After `jobs`: the channel closes first, then the thread is joined.
    _thread: JoinOnDrop,
}

impl LlmWorker {
    /// Starts the worker thread, which loads the model from `path` and creates its
    /// session (a request's context capped at the model's training length, times the
    /// RoPE scaling factor), and waits
    /// until it is ready.
    ///
    /// The worker's forward passes share the process's cores with every other model's
    /// through [`minerva_engine::compute`]: on all of them while no other model computes,
    /// on an even share beside other busy language models.
    pub fn start(path: &Path, config: LlmWorkerConfig, name: &str) -> Result<Self, EngineError> {
        Self::start_with_draft(path, config, name, None)
    }

    /// [`LlmWorker::start`] with a draft model for speculative decoding: the model at
    /// `draft`, which must share this model's vocabulary, guesses the next tokens of
    /// greedy requests (up to `draft_max` a step) and this model verifies them in its
    /// next pass (prompt lookup drafts for the requests it does not serve). A draft model
    /// that cannot draft for it (another vocabulary, an unreadable file) never keeps the
    /// model from serving: it serves without one, and [`LlmWorker::draft_model_error`]
    /// says why.
    pub fn start_with_draft(
        path: &Path,
        config: LlmWorkerConfig,
        name: &str,
        draft: Option<&Path>,
    ) -> Result<Self, EngineError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let draft = draft.map(Path::to_owned);
        let (jobs, inbox) = mpsc::channel::<Job>();
        let path = path.to_owned();
        let model_name = name.to_owned();
        let stats = Arc::new(SchedulerCounters::default());
        let counters = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn(move || {
                let loaded = minerva_engine::llm::load(&path).and_then(|model| {
                    let n_ctx = config
                        .n_ctx
                        .min(config.rope.context_limit(model.metadata().n_ctx_train));
                    let session = model.new_session(config.session_params(n_ctx))?;
                    Ok((model, session, n_ctx))
                });
                let (model, session, n_ctx) = match loaded {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let (drafter, draft_error) = match draft
                    .as_deref()
                    .map(|d| DraftModel::load(d, model.as_ref(), session.params()))
                {
                    Some(Ok(drafter)) => (Some(drafter), None),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the model serves without its draft model");
                        (None, Some(e.to_string()))
                    }
                    None => (None, None),
                };
                if ready_tx.send(Ok((Arc::clone(&model), n_ctx, draft_error))).is_err() {
                    return;
                }
                let params = session.params();
                let limits = SchedulerLimits {
                    parallel: params.n_seq_max as usize,
                    n_ctx,
                    kv_cells: params.n_ctx as usize,
                    draft_max: config.draft_max,
                };
                tracing::info!(
                    parallel = limits.parallel,
                    n_ctx,
                    kv_cells = limits.kv_cells,
                    prefix_cache_tokens = config.prefix_cache_tokens,
                    draft_max = config.draft_max,
                    "language model scheduler started"
                );
                Scheduler::new(
                    model,
                    session,
                    limits,
                    config.prefix_cache_tokens,
                    inbox,
                    counters,
                    model_name,
                    drafter,
                )
                .run();
            })
            .map_err(|e| EngineError::Decode(format!("cannot start the model's worker thread: {e}")))?;
        let (model, n_ctx, draft_error) = ready_rx
            .recv()
            .map_err(|_| EngineError::Decode("the model's worker thread died while loading".into()))??;
        Ok(Self {
            model,
            draft_error,
            vocabulary: std::sync::OnceLock::new(),
            jobs,
            n_ctx,
            stats,
            settings: minerva_store::ModelSettings::default(),
            adapters: std::sync::Mutex::default(),
            _thread: JoinOnDrop::new(Some(thread)),
        })
    }

    /// Why the draft model it was started with does not draft, if it does not.
    pub fn draft_model_error(&self) -> Option<&str> {
        self.draft_error.as_deref()
    }

    /// The worker with the model's settings (its defaults for requests that give none).
    pub fn with_settings(mut self, settings: minerva_store::ModelSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The model's settings as they were when it loaded.
    pub fn settings(&self) -> &minerva_store::ModelSettings {
        &self.settings
    }

    /// Whether the worker thread still runs; one that died (a bug) serves nothing more.
    pub fn is_alive(&self) -> bool {
        self._thread.is_running()
    }

    /// The model, for tokenizing and metadata.
    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    /// The model's vocabulary for constrained decoding, built once (it walks every token:
    /// call it off the async threads).
    pub fn vocabulary(&self) -> Result<Vocabulary, EngineError> {
        self.vocabulary
            .get_or_init(|| Vocabulary::new(Arc::clone(&self.model)).map_err(|e| e.to_string()))
            .clone()
            .map_err(|reason| EngineError::invalid("response_format", reason))
    }

    /// What the scheduler has done so far.
    pub fn stats(&self) -> SchedulerStats {
        self.stats.snapshot()
    }

    /// Most tokens (prompt plus generated) one request may use.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Queues a generation; its events arrive on the returned channel. Dropping the
    /// receiver cancels the generation before its next step.
    pub fn submit(
        &self,
        prompt: Vec<TokenId>,
        options: GenerateOptions,
    ) -> async_mpsc::UnboundedReceiver<GenerationEvent> {
        self.submit_with_adapter(prompt, options, AdapterSet::default())
    }

    /// [`Self::submit`] with LoRA adapters (loaded for this worker's model) applied at
    /// their scales: the generation batches with the others of the same set and scales.
    pub fn submit_with_adapter(
        &self,
        prompt: Vec<TokenId>,
        options: GenerateOptions,
        adapter: impl Into<AdapterSet>,
    ) -> async_mpsc::UnboundedReceiver<GenerationEvent> {
        let adapter = adapter.into();
        let (events, receiver) = async_mpsc::unbounded_channel();
        self.send(Job {
            prompt,
            options,
            events,
            score_from: None,
            adapter,
        });
        receiver
    }

    /// The LoRA adapter in `path`, loaded once for this worker's model and kept while the
    /// model is loaded (a file replaced since is loaded again), and whether this call
    /// loaded it (its memory is new: [`Adapter::info`]'s `tensor_bytes`). A load checks the
    /// adapter against the model and, when `base_sha256` gives it (asked only then),
    /// against the base's digest the adapter records; a sealed file is opened with `key`.
    /// `base_sha256` may refuse the load with its own error (the registry's check).
    /// Blocks while it loads: call it off the async threads.
    pub fn cached_adapter<E: From<EngineError>>(
        &self,
        path: &Path,
        key: Option<&minerva_seal::Key>,
        base_sha256: impl FnOnce() -> Result<Option<String>, E>,
    ) -> Result<(Arc<dyn Adapter>, bool), E> {
        let stamp = std::fs::metadata(path)
            .map(|m| (m.len(), m.modified().ok()))
            .map_err(|e| EngineError::InvalidAdapter {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let mut adapters = self.adapters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known, adapter)) = adapters.get(path)
            && *known == stamp
        {
            return Ok((Arc::clone(adapter), false));
        }
        let adapter = self.model.load_adapter(path, base_sha256()?.as_deref(), key)?;
        adapters.insert(path.to_owned(), (stamp, Arc::clone(&adapter)));
        Ok((adapter, true))
    }

    /// Queues a scoring of `tokens`: the log-probability of each token from index `from`
    /// on (at least 1), given the ones before it, batched with the other requests. The
    /// result's `logprobs` hold them in order (nothing is generated).
    pub fn score(&self, tokens: Vec<TokenId>, from: usize) -> async_mpsc::UnboundedReceiver<GenerationEvent> {
        let (events, receiver) = async_mpsc::unbounded_channel();
        if from == 0 || from >= tokens.len() {
            let _ = events.send(GenerationEvent::Done(Err(EngineError::invalid(
                "tokens",
                "scoring needs at least one token before and one from the scored index",
            ))));
            return receiver;
        }
        let options = GenerateOptions {
            max_tokens: 1,
            stop: Vec::new(),
            sampling: minerva_engine::sampling::SamplingParams::default(),
            constraint: None,
            context_shift: None,
            n_ctx: None,
        };
        self.send(Job {
            prompt: tokens,
            options,
            events,
            score_from: Some(from),
            adapter: AdapterSet::default(),
        });
        receiver
    }

    fn send(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            let _ = job.events.send(GenerationEvent::Done(Err(EngineError::Decode(
                "the model's worker has stopped".into(),
            ))));
        }
    }
}
