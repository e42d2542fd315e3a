//! [`EmbeddingService`]: the thread that owns an embedding model, and its handle.
//!
//! Requests are tokenized by their callers (on a blocking thread when large), so the
//! worker's thread only runs forward passes; they arrive over a channel, queued input by
//! input;
//! the worker cuts batches from the queue (see [`super::batcher`]) within the budget the
//! optimizer and the memory strategy allow, runs them, and answers each request when its
//! last input is done. A request whose caller went away is dropped from the queue.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use minerva_engine::EngineError;
use minerva_engine::embed::{EmbeddingModel, Pooling, l2_normalize};
use serde::Serialize;
use tokio::sync::oneshot;

use super::EmbeddingInput;
use super::batcher::{Batch, Batcher};
use super::cache::{CacheKey, Cached, EmbeddingCache, KeyContext};
use super::optimizer::BatchOptimizer;
use super::strategy::{MemoryThresholds, Strategy};
use crate::pressure::{MemorySource, ProcMemory};
use crate::worker_thread::JoinOnDrop;

/// Token budget the optimizer starts from.
const START_BUDGET: usize = 4096;
/// Largest token budget any strategy allows.
const MAX_BUDGET: usize = 16384;
/// Requests with more inputs than this are tokenized on a blocking thread, not on the
/// async caller's.
const INLINE_TOKENIZE: usize = 8;
/// How often the worker reads system memory.
const MEMORY_INTERVAL: Duration = Duration::from_millis(250);

/// How an embedding service runs.
#[derive(Clone)]
pub struct EmbeddingServiceConfig {
    /// Where system memory is read from.
    pub memory: Arc<dyn MemorySource>,
    /// Memory use at which the strategies change.
    pub thresholds: MemoryThresholds,
    /// Most inputs waiting at once; beyond, requests are refused as overloaded.
    pub max_queued_inputs: usize,
    /// Precision of the encoder's products.
    pub dtype: minerva_engine::embed::EmbeddingDtype,
}

impl Default for EmbeddingServiceConfig {
    fn default() -> Self {
        Self {
            memory: Arc::new(ProcMemory::default()),
            thresholds: MemoryThresholds::default(),
            max_queued_inputs: 1 << 16,
            dtype: minerva_engine::embed::EmbeddingDtype::F32,
        }
    }
}

/// Per-request options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedSettings {
    /// L2-normalize the vectors.
    pub normalize: bool,
    /// Refuse inputs longer than the model accepts instead of truncating them.
    pub forbid_truncation: bool,
}

/// The vectors of one request, in input order.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One vector per input.
    pub vectors: Vec<Arc<[f32]>>,
    /// Tokens of each input.
    pub tokens: Vec<u32>,
    /// How many came from the cache.
    pub cached: usize,
}

/// A request after its cache lookup: the vectors found and the inputs still to compute.
#[derive(Debug)]
pub struct Lookup {
    found: Vec<Option<Cached>>,
    missing: Vec<(usize, Option<CacheKey>, EmbeddingInput)>,
    settings: EmbedSettings,
}

impl Lookup {
    /// Inputs the cache did not hold.
    pub fn misses(&self) -> usize {
        self.missing.len()
    }
}

/// Why a request got no vectors.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// An input is invalid (too long with truncation forbidden, empty, unknown token id).
    #[error(transparent)]
    Input(EngineError),
    /// The queue is full.
    #[error("{queued} inputs are already waiting for the embedding model (limit {limit})")]
    Overloaded {
        /// Inputs waiting.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// The forward pass failed.
    #[error("embedding forward pass failed: {0}")]
    Forward(String),
    /// The worker thread is gone.
    #[error("the embedding worker stopped")]
    Stopped,
}

/// Counters of one service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceStats {
    /// Requests answered (from the model, cache hits excluded).
    pub requests: u64,
    /// Inputs embedded.
    pub inputs: u64,
    /// Forward passes.
    pub batches: u64,
    /// Forward passes that served more than one request.
    pub merged_batches: u64,
    /// Tokens of the inputs.
    pub tokens: u64,
    /// Token budget of the next batch.
    pub token_budget: usize,
    /// Strategy of the last batch.
    pub strategy: Option<Strategy>,
    /// Inputs waiting now.
    pub queued_inputs: usize,
    /// Tokens/s of the last batch that filled its budget.
    pub tokens_per_second: Option<f64>,
}

/// What is fixed about the model (read by callers without asking the worker).
#[derive(Debug, Clone)]
struct ModelInfo {
    dtype: minerva_engine::embed::EmbeddingDtype,
    dimensions: usize,
    max_tokens: usize,
    pooling: Pooling,
    normalizes: bool,
    fingerprint: [u8; 32],
}

/// What the worker sends back: each input's vector and token count.
type Computed = (Vec<Arc<[f32]>>, Vec<u32>);

struct Job {
    /// Token ids of each input, in the request's order.
    inputs: Vec<Vec<u32>>,
    settings: EmbedSettings,
    reply: oneshot::Sender<Result<Computed, EmbeddingError>>,
}

/// Handle of a model's embedding worker; dropping it stops the worker once its queue is
/// empty.
pub struct EmbeddingService {
    jobs: mpsc::Sender<Job>,
    /// Shared with the worker: callers tokenize with it.
    model: Arc<dyn EmbeddingModel>,
    info: ModelInfo,
    stats: Arc<Mutex<ServiceStats>>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// After `jobs`: the channel closes first, then the thread (which owns the model) is
    /// joined, so the model's memory is free when the service is dropped.
    _thread: JoinOnDrop,
}

impl EmbeddingService {
    /// Whether the worker thread still runs; one that died (a bug) serves nothing more.
    pub fn is_alive(&self) -> bool {
        self._thread.is_running()
    }

    /// Loads the model at `dir` and starts its worker thread. Cached vectors are keyed on
    /// the model's `digest` ([`sha256_model`](minerva_store::sha256_model), as the registry has
    /// it); without one, the files are hashed here.
    pub fn load(
        dir: &Path,
        name: &str,
        config: EmbeddingServiceConfig,
        digest: Option<&str>,
    ) -> Result<Self, EngineError> {
        let model = minerva_engine::embed::load_with(dir, config.dtype)?;
        let invalid = |reason: String| EngineError::InvalidEmbeddingModel {
            path: dir.to_owned(),
            reason,
        };
        let digest = match digest {
            Some(digest) => digest.to_owned(),
            None => minerva_store::sha256_model(dir, &mut |_, _| {})
                .map_err(|e| invalid(format!("reading the model files: {e}")))?,
        };
        let fingerprint = minerva_store::digest_bytes(&digest)
            .ok_or_else(|| invalid(format!("{digest:?} is not a SHA-256 digest")))?;
        Ok(Self::start(model, fingerprint, name, config))
    }

    /// Starts the worker thread for `model` whose files have `fingerprint`.
    pub fn start(
        model: Arc<dyn EmbeddingModel>,
        fingerprint: [u8; 32],
        name: &str,
        config: EmbeddingServiceConfig,
    ) -> Self {
        let info = ModelInfo {
            dtype: model.dtype(),
            dimensions: model.dimensions(),
            max_tokens: model.max_tokens(),
            pooling: model.pooling(),
            normalizes: model.normalizes(),
            fingerprint,
        };
        let (jobs, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(ServiceStats::default()));
        let queued = Arc::new(AtomicUsize::new(0));
        let max_queued = config.max_queued_inputs;
        let worker = Worker {
            optimizer: BatchOptimizer::new(model.max_tokens(), MAX_BUDGET, START_BUDGET),
            model: Arc::clone(&model),
            config,
            batcher: Batcher::default(),
            active: HashMap::new(),
            next_job: 0,
            strategy: None,
            stats: Arc::clone(&stats),
            queued: Arc::clone(&queued),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("embed-{name}"))
            .spawn(move || worker.run(rx));
        let thread = spawned
            .inspect_err(|e| {
                // The handle then answers every request with `Stopped`.
                tracing::error!(error = %e, "could not start the embedding worker");
            })
            .ok();
        Self {
            jobs,
            model,
            info,
            stats,
            queued,
            max_queued,
            _thread: JoinOnDrop::new(thread),
        }
    }

    /// Length of the vectors.
    pub fn dimensions(&self) -> usize {
        self.info.dimensions
    }

    /// Whether the model normalizes its vectors by default.
    pub fn normalizes(&self) -> bool {
        self.info.normalizes
    }

    /// Whether the model is a cross-encoder: it reranks ([`Self::rerank`]) and embeds
    /// nothing.
    pub fn is_reranker(&self) -> bool {
        self.model.is_reranker()
    }

    /// Each text as the overlapping windows of token ids the model reads (see
    /// [`minerva_engine::embed::EncoderTokenizer::windows`]), tokenized on a blocking
    /// thread.
    pub async fn windows(&self, texts: Vec<String>) -> Result<Vec<Vec<Vec<u32>>>, EmbeddingError> {
        let model = Arc::clone(&self.model);
        tokio::task::spawn_blocking(move || {
            texts
                .iter()
                .map(|t| model.tokenizer().windows(t))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|_| EmbeddingError::Stopped)?
        .map_err(EmbeddingError::Input)
    }

    /// The relevance of each document to `query` (see
    /// [`EmbeddingModel::rerank`]), computed on a blocking thread; the pass takes its turn
    /// on the cores like every other (`compute::share_rayon`).
    pub async fn rerank(&self, query: String, documents: Vec<String>, raw: bool) -> Result<Vec<f32>, EmbeddingError> {
        let model = Arc::clone(&self.model);
        tokio::task::spawn_blocking(move || {
            let documents: Vec<&str> = documents.iter().map(String::as_str).collect();
            model.rerank(&query, &documents, raw)
        })
        .await
        .map_err(|_| EmbeddingError::Stopped)?
        .map_err(EmbeddingError::Input)
    }

    /// SHA-256 over the model's files.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.info.fingerprint
    }

    /// Counters of this service.
    pub fn stats(&self) -> ServiceStats {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        stats.queued_inputs = self.queued.load(Ordering::Relaxed);
        stats
    }

    /// Embeds `inputs`: hits from `cache` are answered at once, the rest queue for the
    /// worker and are stored in the cache when done. Vectors come back in input order.
    pub async fn embed(
        &self,
        inputs: Vec<EmbeddingInput>,
        settings: EmbedSettings,
        cache: Option<&EmbeddingCache>,
    ) -> Result<Embedded, EmbeddingError> {
        self.compute(self.lookup(inputs, settings, cache).await, cache).await
    }

    /// The first half of [`Self::embed`]: answers what `cache` holds (its own level, then
    /// in one round trip its shared level, if any) and sets the rest aside for
    /// [`Self::compute`] (callers that ration CPU work take their permit in between, only
    /// when [`Lookup::misses`] is not zero: a request the shared level answers whole
    /// takes none).
    pub async fn lookup(
        &self,
        inputs: Vec<EmbeddingInput>,
        settings: EmbedSettings,
        cache: Option<&EmbeddingCache>,
    ) -> Lookup {
        let context = KeyContext {
            fingerprint: &self.info.fingerprint,
            pooling: self.info.pooling,
            normalize: settings.normalize,
            forbid_truncation: settings.forbid_truncation,
            max_tokens: self.info.max_tokens,
            dtype: self.info.dtype,
        };
        let mut found: Vec<Option<Cached>> = vec![None; inputs.len()];
        let mut missing = Vec::new();
        for (index, input) in inputs.into_iter().enumerate() {
            let Some(cache) = cache else {
                missing.push((index, None, input));
                continue;
            };
            let key = CacheKey::new(&context, &input);
            match cache.get(&key) {
                Some(hit) => found[index] = Some(hit),
                None => missing.push((index, Some(key), input)),
            }
        }
        // What this server missed, another may have computed.
        if let Some(cache) = cache
            && cache.has_shared()
            && !missing.is_empty()
        {
            let keys: Vec<CacheKey> = missing.iter().filter_map(|(_, key, _)| *key).collect();
            let mut hits = cache.get_shared(&keys).await.into_iter();
            missing.retain(|(index, _, _)| match hits.next().flatten() {
                Some(hit) => {
                    found[*index] = Some(hit);
                    false
                }
                None => true,
            });
        }
        Lookup {
            found,
            missing,
            settings,
        }
    }

    /// The second half of [`Self::embed`]: computes the inputs `lookup` did not find and
    /// stores them in `cache`.
    pub async fn compute(&self, lookup: Lookup, cache: Option<&EmbeddingCache>) -> Result<Embedded, EmbeddingError> {
        let Lookup {
            mut found,
            missing,
            settings,
        } = lookup;
        let cached = found.len() - missing.len();
        if !missing.is_empty() {
            let (slots, inputs): (Vec<_>, Vec<_>) = missing
                .into_iter()
                .map(|(index, key, input)| ((index, key), (index, input)))
                .unzip();
            let (vectors, tokens) = self.submit(inputs, settings).await?;
            let mut computed_entries = Vec::new();
            for (((index, key), vector), tokens) in slots.into_iter().zip(vectors).zip(tokens) {
                let computed = Cached { vector, tokens };
                if let Some(key) = key {
                    computed_entries.push((key, computed.clone()));
                }
                found[index] = Some(computed);
            }
            if let Some(cache) = cache {
                cache.insert_computed(computed_entries);
            }
        }
        let (vectors, tokens) = found
            .into_iter()
            .map(|c| c.map_or_else(|| (Arc::from(Vec::new()), 0), |c| (c.vector, c.tokens)))
            .unzip();
        Ok(Embedded {
            vectors,
            tokens,
            cached,
        })
    }

    async fn submit(
        &self,
        inputs: Vec<(usize, EmbeddingInput)>,
        settings: EmbedSettings,
    ) -> Result<Computed, EmbeddingError> {
        let count = inputs.len();
        let queued = self.queued.fetch_add(count, Ordering::SeqCst);
        if queued + count > self.max_queued && queued > 0 {
            self.queued.fetch_sub(count, Ordering::SeqCst);
            return Err(EmbeddingError::Overloaded {
                queued,
                limit: self.max_queued,
            });
        }
        let model = Arc::clone(&self.model);
        let forbid = settings.forbid_truncation;
        let tokenize = move || tokenize(&*model, inputs, forbid);
        let tokenized = if count > INLINE_TOKENIZE {
            tokio::task::spawn_blocking(tokenize)
                .await
                .map_err(|_| EmbeddingError::Stopped)
        } else {
            Ok(tokenize())
        };
        let inputs = match tokenized {
            Ok(Ok(inputs)) => inputs,
            Ok(Err(e)) => {
                self.queued.fetch_sub(count, Ordering::SeqCst);
                return Err(EmbeddingError::Input(e));
            }
            Err(e) => {
                self.queued.fetch_sub(count, Ordering::SeqCst);
                return Err(e);
            }
        };
        let (reply, answer) = oneshot::channel();
        let sent = self.jobs.send(Job {
            inputs,
            settings,
            reply,
        });
        if sent.is_err() {
            self.queued.fetch_sub(count, Ordering::SeqCst);
            return Err(EmbeddingError::Stopped);
        }
        answer.await.map_err(|_| EmbeddingError::Stopped)?
    }
}

/// The token ids of each input (`index` names it in errors); an invalid input fails the
/// whole request.
fn tokenize(
    model: &dyn EmbeddingModel,
    inputs: Vec<(usize, EmbeddingInput)>,
    forbid_truncation: bool,
) -> Result<Vec<Vec<u32>>, EngineError> {
    inputs
        .into_iter()
        .map(|(index, input)| match input {
            EmbeddingInput::Text(text) => model.tokenize(index, &text, forbid_truncation).map(|t| t.ids),
            EmbeddingInput::Tokens(ids) => model.check_input(index, &ids).map(|()| ids),
        })
        .collect()
}

/// A request being worked on.
struct Active {
    reply: oneshot::Sender<Result<Computed, EmbeddingError>>,
    vectors: Vec<Option<Arc<[f32]>>>,
    tokens: Vec<u32>,
    remaining: usize,
    normalize: bool,
}

struct Worker {
    model: Arc<dyn EmbeddingModel>,
    config: EmbeddingServiceConfig,
    optimizer: BatchOptimizer,
    batcher: Batcher,
    active: HashMap<u64, Active>,
    next_job: u64,
    strategy: Option<(Strategy, Instant)>,
    stats: Arc<Mutex<ServiceStats>>,
    queued: Arc<AtomicUsize>,
}

impl Worker {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            if self.batcher.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.admit(job);
            }
            self.drop_abandoned();
            let strategy = self.strategy();
            let limits = strategy.limits(self.model.max_tokens());
            let budget = self.optimizer.budget(limits.max_tokens);
            if let Some(batch) = self.batcher.next_batch(budget, limits.max_rows) {
                self.run_batch(batch, strategy, budget);
            }
        }
    }

    /// Queues a request's inputs.
    fn admit(&mut self, job: Job) {
        let count = job.inputs.len();
        let ids = job.inputs;
        let id = self.next_job;
        self.next_job += 1;
        let tokens = ids.iter().map(|i| i.len() as u32).collect();
        for (index, ids) in ids.into_iter().enumerate() {
            self.batcher.push(id, index, ids);
        }
        self.active.insert(
            id,
            Active {
                reply: job.reply,
                vectors: vec![None; count],
                tokens,
                remaining: count,
                normalize: job.settings.normalize,
            },
        );
    }

    /// Forgets requests whose caller stopped waiting.
    fn drop_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .active
            .iter()
            .filter(|(_, a)| a.reply.is_closed())
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            if let Some(active) = self.active.remove(id) {
                self.queued.fetch_sub(active.remaining, Ordering::SeqCst);
            }
        }
        self.batcher.cancel(|job| gone.contains(&job));
        tracing::debug!(requests = gone.len(), "abandoned embedding requests dropped");
    }

    /// The strategy for the current memory use, re-read at most every [`MEMORY_INTERVAL`].
    fn strategy(&mut self) -> Strategy {
        match self.strategy {
            Some((strategy, at)) if at.elapsed() < MEMORY_INTERVAL => strategy,
            previous => {
                let strategy = Strategy::choose(self.config.memory.read().ok(), &self.config.thresholds);
                if previous.is_some_and(|(p, _)| p != strategy) {
                    tracing::info!(?strategy, "embedding strategy changed with memory use");
                }
                self.strategy = Some((strategy, Instant::now()));
                strategy
            }
        }
    }

    fn run_batch(&mut self, batch: Batch, strategy: Strategy, budget: usize) {
        let rows: Vec<&[u32]> = batch.items.iter().map(|p| p.ids.as_slice()).collect();
        let started = Instant::now();
        let result = self.model.forward_batch(&rows);
        let elapsed = started.elapsed();
        let tokens = batch.tokens();
        self.optimizer.record(tokens, elapsed, batch.full);
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.batches += 1;
            let mut jobs: Vec<u64> = batch.items.iter().map(|p| p.job).collect();
            jobs.sort_unstable();
            jobs.dedup();
            if jobs.len() > 1 {
                stats.merged_batches += 1;
            }
            stats.inputs += batch.items.len() as u64;
            stats.tokens += tokens as u64;
            stats.token_budget = self.optimizer.budget(usize::MAX);
            stats.strategy = Some(strategy);
            if batch.full && !elapsed.is_zero() {
                stats.tokens_per_second = Some(tokens as f64 / elapsed.as_secs_f64());
            }
        }
        tracing::trace!(rows = rows.len(), tokens, budget, ?elapsed, "embedding batch");
        match result {
            Ok(vectors) => {
                for (item, mut vector) in batch.items.into_iter().zip(vectors) {
                    let Some(active) = self.active.get_mut(&item.job) else {
                        continue;
                    };
                    if active.normalize {
                        l2_normalize(&mut vector);
                    }
                    active.vectors[item.index] = Some(vector.into());
                    active.remaining -= 1;
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    if active.remaining == 0 {
                        self.finish(item.job);
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut jobs: Vec<u64> = batch.items.iter().map(|p| p.job).collect();
                jobs.sort_unstable();
                jobs.dedup();
                for job in jobs {
                    if let Some(active) = self.active.remove(&job) {
                        self.queued.fetch_sub(active.remaining, Ordering::SeqCst);
                        let _ = active.reply.send(Err(EmbeddingError::Forward(message.clone())));
                    }
                }
                self.batcher.cancel(|job| !self.active.contains_key(&job));
            }
        }
    }

    fn finish(&mut self, job: u64) {
        let Some(active) = self.active.remove(&job) else {
            return;
        };
        let vectors = active.vectors.into_iter().map(Option::unwrap_or_default).collect();
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).requests += 1;
        let _ = active.reply.send(Ok((vectors, active.tokens)));
    }
}
