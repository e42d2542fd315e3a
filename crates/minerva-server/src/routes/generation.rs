//! What chat and text completions share: sampling fields, stop sequences, running a
//! generation on a model's worker (to completion or as a stream), and logprobs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use minerva_engine::chat::{ChatMessage, ChatTemplate};
use minerva_engine::generate::{ContextShift, FinishReason, GenerateOptions, Generation};
use minerva_engine::sampling::{SampledToken, SamplingParams};
use minerva_engine::{EngineError, LanguageModel, TokenId};
use minerva_pool::{AcquireOptions, KeepAlive, LlmLease};
use minerva_store::{ModelId, RegistryError};
use minerva_workers::GenerationEvent;
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::Instrument;

use super::timing::{Clock, Stages};
use crate::error::ApiError;
use crate::monitor::Monitor;
use crate::state::AppState;

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields common to both completion APIs (OpenAI's, plus llama.cpp's extras).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// OpenAI's `logit_bias`: token id (as a string) to a bias in [-100, 100].
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
}

/// Context fields of chat and completion requests (llama-server's names).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct ContextFields {
    /// Go on past the context by dropping the oldest tokens (the server's
    /// `--context-shift` by default).
    pub context_shift: Option<bool>,
    /// Tokens at the start a context shift keeps: -1 the whole prompt; by default the
    /// BOS token only.
    pub n_keep: Option<i64>,
}

impl ContextFields {
    /// The context shift these fields (or the server's default) ask for, for `prompt`.
    pub fn shift(
        &self,
        state: &AppState,
        model: &dyn LanguageModel,
        prompt: &[TokenId],
        param: &str,
    ) -> Result<Option<ContextShift>, ApiError> {
        if !self.context_shift.unwrap_or(state.config.context_shift) {
            return Ok(None);
        }
        let n_keep = match self.n_keep {
            Some(-1) => prompt.len(),
            Some(n) if n < 0 => return Err(ApiError::invalid(param, "n_keep must be -1 or at least 0")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => {
                let bos = model.metadata().bos_token;
                usize::from(bos.is_some() && prompt.first().copied() == bos)
            }
        };
        Ok(Some(ContextShift { n_keep }))
    }
}

/// Which sampling fields a request gave; the model's settings fill the others.
#[derive(Debug, Clone, Copy)]
pub struct Given {
    pub temperature: bool,
    pub top_p: bool,
    pub top_k: bool,
}

impl SamplingFields {
    /// What this request said about sampling.
    pub fn given(&self) -> Given {
        Given {
            temperature: self.temperature.is_some(),
            top_p: self.top_p.is_some(),
            top_k: self.top_k.is_some(),
        }
    }
}

/// The model's own sampling defaults (`minerva config NAME temperature=…`) where the
/// request gave none.
pub fn apply_settings(lease: &LlmLease, given: Given, options: &mut GenerateOptions) {
    let settings = lease.settings();
    let sampling = &mut options.sampling;
    if let (false, Some(t)) = (given.temperature, settings.temperature) {
        sampling.temperature = t as f32;
    }
    if let (false, Some(p)) = (given.top_p, settings.top_p) {
        sampling.top_p = p as f32;
    }
    if let (false, Some(k)) = (given.top_k, settings.top_k) {
        sampling.top_k = k;
    }
}

/// The model's system prompt (`minerva config NAME system=…`) first, when the chat brings
/// none of its own.
pub fn apply_system(lease: &LlmLease, messages: &mut Vec<ChatMessage>) {
    if let Some(system) = &lease.settings().system
        && !messages.iter().any(|m| m.role == "system")
    {
        messages.insert(0, ChatMessage::new("system", system.clone()));
    }
}

/// The chat template of a leased model: its settings' own (`minerva config NAME
/// template=…`, a Modelfile's TEMPLATE), else the one in its file.
pub fn chat_template(lease: &LlmLease) -> Result<ChatTemplate, ApiError> {
    Ok(ChatTemplate::for_model_with(
        lease.model(),
        lease.settings().template.as_deref(),
    )?)
}

/// A generation ready to run: the model, the prompt tokens and the options (a clone is
/// another run of the same request, one of `n` choices).
#[derive(Clone)]
pub struct Prepared {
    pub lease: LlmLease,
    pub prompt: Vec<TokenId>,
    pub options: GenerateOptions,
    /// The request's stages so far.
    pub clock: Clock,
    /// Which API asked (`chat`, `completion`, `ollama`), for the monitor.
    pub api: &'static str,
    pub monitor: Arc<Monitor>,
}

impl Prepared {
    /// A generation of `prompt` on `lease` for `api`, timed by `clock`.
    pub fn new(
        state: &AppState,
        api: &'static str,
        lease: LlmLease,
        prompt: Vec<TokenId>,
        options: GenerateOptions,
        clock: Clock,
    ) -> Self {
        Self {
            lease,
            prompt,
            options,
            clock,
            api,
            monitor: Arc::clone(&state.monitor),
        }
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.lease.model()
    }

    /// Queues the generation on the model's worker.
    pub fn submit(&self) -> UnboundedReceiver<GenerationEvent> {
        self.lease
            .submit_with_adapter(self.prompt.clone(), self.options.clone(), self.lease.adapter().clone())
    }
}

/// Loads `model` and checks it generates text.
pub async fn language_model(
    state: &AppState,
    model: &str,
    keep_alive: Option<KeepAlive>,
) -> Result<LlmLease, ApiError> {
    language_model_scaled(state, model, keep_alive, None).await
}

/// The largest `adapter_scale` magnitude a request may ask for.
pub const MAX_ADAPTER_SCALE: f32 = 4.0;

/// [`language_model`] with the adapter, when the model names one, at `adapter_scale`
/// (1 when not given; a scale without an adapter is a 400).
pub async fn language_model_scaled(
    state: &AppState,
    model: &str,
    keep_alive: Option<KeepAlive>,
    adapter_scale: Option<f32>,
) -> Result<LlmLease, ApiError> {
    // `BASE+ADAPTER`: the base model with a LoRA adapter of the store's `adapters/`
    // (`BASE+A+B`: with several).
    let (model, adapter) = crate::routing::split_adapter(model);
    if let Some(scale) = adapter_scale {
        if !scale.is_finite() || scale.abs() > MAX_ADAPTER_SCALE {
            return Err(ApiError::invalid(
                "adapter_scale",
                format!("must be between -{MAX_ADAPTER_SCALE} and {MAX_ADAPTER_SCALE}"),
            ));
        }
        if adapter.is_none() {
            return Err(ApiError::invalid(
                "adapter_scale",
                "applies to a model named BASE+ADAPTER, and this one names no adapter",
            ));
        }
    }
    let id = state.model_id(model)?;
    let lease = state
        .pool
        .acquire_with(
            &id,
            AcquireOptions {
                keep_alive,
                protect: crate::routing::protected(),
            },
        )
        .instrument(tracing::info_span!("acquire_model", model = %id))
        .await?;
    let lease = lease
        .into_llm()
        .map_err(|_| ApiError::invalid("model", format!("{id} is an embedding model; use /v1/embeddings")))?;
    let Some(names) = adapter else {
        return Ok(lease);
    };
    // `BASE+A+B`: several adapters at once, their updates summed (each at the scale).
    let names: Vec<&str> = names.split('+').collect();
    if names.len() > MAX_ADAPTERS {
        return Err(ApiError::invalid(
            "model",
            format!("{} adapters named; at most {MAX_ADAPTERS} apply at once", names.len()),
        ));
    }
    let mut lease = lease;
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(ApiError::invalid("model", format!("adapter {name} is named twice")));
        }
        lease = with_adapter(state, &id, lease, name, adapter_scale.unwrap_or(1.0)).await?;
    }
    Ok(lease)
}

/// The most adapters one request may apply together.
pub const MAX_ADAPTERS: usize = 8;

/// `lease` with the store's adapter `name` applied at `scale`, loaded for the model once
/// and checked against it: its architecture, shapes, and the base digest it records
/// against the registry's for the model.
async fn with_adapter(
    state: &AppState,
    id: &ModelId,
    lease: LlmLease,
    name: &str,
    scale: f32,
) -> Result<LlmLease, ApiError> {
    let name = ModelId::new(name).map_err(|e| ApiError::invalid("model", format!("adapter: {e}")))?;
    let path = state
        .pool
        .store()
        .resolve_adapter(&name)
        .map_err(|e| ApiError::ModelNotFound(e.to_string()))?;
    let registry = state.pool.registry().cloned();
    let store = state.pool.store().clone();
    let (id, worker, key, adapter_name) = (id.clone(), lease.clone(), state.config.seal_key.clone(), name.clone());
    // The registry is read only when the adapter loads, not on every request: it checks
    // the file's digest (registering a file that appeared in `adapters/`) and the base the
    // adapter was made for.
    let (adapter, loaded) = tokio::task::spawn_blocking(move || {
        worker.cached_adapter(&path, key.as_ref(), || {
            let Some(registry) = registry else {
                return Ok(None);
            };
            let record = registry.check_adapter(&store, &adapter_name)?;
            let base = registry.record(&id)?.map(|r| r.sha256);
            // An imported file may lack the base digest the registry took from `--base`;
            // every other one records it, and the engine compares that after checking
            // the architecture and shapes (the more telling refusal).
            if record.origin == "import"
                && let (Some(made_for), Some(base)) = (&record.base_sha256, &base)
                && !made_for.eq_ignore_ascii_case(base)
            {
                return Err(AdapterError::Engine(EngineError::InvalidAdapter {
                    path: path.clone(),
                    reason: format!("the adapter was made for the base with SHA-256 {made_for}, not this one ({base})"),
                }));
            }
            Ok(base)
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("loading the adapter: {e}")))?
    .map_err(|e| match e {
        // The reason without the server's paths.
        AdapterError::Engine(EngineError::InvalidAdapter { reason, .. }) => {
            ApiError::invalid("model", format!("adapter {name}: {reason}"))
        }
        AdapterError::Engine(other) => ApiError::from(other),
        AdapterError::Registry(RegistryError::AdapterMissing { name, .. }) => {
            ApiError::ModelNotFound(format!("adapter {name:?} is registered but its file is missing"))
        }
        AdapterError::Registry(e @ RegistryError::AdapterMismatch { .. }) => ApiError::ModelUnavailable(e.to_string()),
        AdapterError::Registry(other) => ApiError::Internal(format!("adapter {name}: {other}")),
    })?;
    if loaded {
        // Its tensors stay in memory as long as the model: the pool counts them.
        lease.lease().charge(adapter.info().tensor_bytes);
    }
    Ok(lease.with_adapter(adapter, scale))
}

/// Why an adapter did not load: the engine refused it, or the registry did.
enum AdapterError {
    Engine(EngineError),
    Registry(RegistryError),
}

impl From<EngineError> for AdapterError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl From<RegistryError> for AdapterError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e)
    }
}

/// Builds the generation options, checking limits.
pub fn options(
    state: &AppState,
    sampling: &SamplingFields,
    max_tokens: Option<i64>,
    stop: Option<StopSpec>,
    top_logprobs: Option<usize>,
) -> Result<GenerateOptions, ApiError> {
    let max_tokens = match max_tokens {
        None => state.config.default_max_tokens.min(state.config.max_tokens),
        Some(n) if n < 1 => return Err(ApiError::invalid("max_tokens", "must be at least 1")),
        Some(n) if n as u64 > state.config.max_tokens as u64 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("{n} exceeds this server's limit of {}", state.config.max_tokens),
            ));
        }
        Some(n) => n as usize,
    };
    let stop = match stop {
        None => Vec::new(),
        Some(StopSpec::One(s)) => vec![s],
        Some(StopSpec::Many(list)) => list,
    };
    if stop.len() > 16 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::invalid(
            "stop",
            "up to 16 non-empty stop sequences of at most 256 bytes",
        ));
    }
    let logit_bias = logit_bias(sampling.logit_bias.as_ref())?;
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        // OpenAI's default temperature is 1.
        temperature: sampling.temperature.unwrap_or(1.0),
        top_p: sampling.top_p.unwrap_or(1.0),
        top_k: sampling.top_k.unwrap_or(0),
        min_p: sampling.min_p.unwrap_or(0.0),
        repeat_penalty: sampling.repeat_penalty.unwrap_or(1.0),
        presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
        frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
        seed: sampling.seed,
        top_logprobs,
        logit_bias,
        ..defaults
    };
    Ok(GenerateOptions {
        max_tokens,
        constraint: None,
        context_shift: None,
        n_ctx: None,
        stop,
        sampling,
    })
}

/// Most entries in `logit_bias`.
const MAX_LOGIT_BIAS: usize = 1024;

/// `logit_bias` as token ids and biases (the range is the engine's check).
fn logit_bias(bias: Option<&std::collections::HashMap<String, f32>>) -> Result<Vec<(TokenId, f32)>, ApiError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("at most {MAX_LOGIT_BIAS} tokens"),
        ));
    }
    let mut biases: Vec<(TokenId, f32)> = bias
        .iter()
        .map(|(token, &value)| {
            token
                .parse::<TokenId>()
                .map(|t| (t, value))
                .map_err(|_| ApiError::invalid("logit_bias", format!("{token:?} is not a token id")))
        })
        .collect::<Result<_, _>>()?;
    biases.sort_by_key(|&(t, _)| t);
    Ok(biases)
}

/// Refuses prompts over the character limit before they are tokenized.
pub fn check_prompt_chars(state: &AppState, param: &str, chars: usize) -> Result<(), ApiError> {
    if chars > state.config.max_prompt_chars {
        return Err(ApiError::invalid(
            param,
            format!(
                "prompt of {chars} characters exceeds the limit of {}",
                state.config.max_prompt_chars
            ),
        ));
    }
    Ok(())
}

/// Refuses prompts that leave no room in the context.
pub fn check_context(prepared: &Prepared, param: &str) -> Result<(), ApiError> {
    let n_ctx = prepared.options.context(prepared.lease.n_ctx()) as usize;
    if prepared.prompt.len() >= n_ctx {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt has {} tokens but the model's context holds {n_ctx}",
                prepared.prompt.len()
            ),
        ));
    }
    Ok(())
}

/// Refuses sampling values the engine would reject, before a slot is taken: a stream
/// sends its 200 before the worker starts, so an error found there would reach the client
/// as an error event inside a successful response instead of a 400.
pub fn check_sampling(prepared: &Prepared) -> Result<(), ApiError> {
    let n_vocab = prepared.model().metadata().n_vocab;
    prepared.options.sampling.validate(n_vocab)?;
    Ok(())
}

/// The span of one generation inside its request's: its figures are recorded on it when
/// it ends ([`record_tokens`]).
pub fn generate_span(prepared: &Prepared) -> tracing::Span {
    tracing::info_span!(
        "generate",
        model = %prepared.lease.lease().id,
        // Integers as i64: exporters take a u64 for a string.
        prompt_tokens = prepared.prompt.len() as i64,
        cached_tokens = tracing::field::Empty,
        generated_tokens = tracing::field::Empty,
        prefill_ms = tracing::field::Empty,
        decode_ms = tracing::field::Empty,
        ttft_ms = tracing::field::Empty,
        dropped = tracing::field::Empty,
    )
}

/// Runs a generation to the end (bounded by the request timeout). Dropping the future
/// (the client went away) drops the receiver, which cancels the generation.
pub async fn complete(state: &AppState, prepared: &Prepared) -> Result<Generation, ApiError> {
    complete_inner(state, prepared)
        .instrument(generate_span(prepared))
        .await
}

async fn complete_inner(state: &AppState, prepared: &Prepared) -> Result<Generation, ApiError> {
    let mut events = prepared.submit();
    let timeout = state.config.request_timeout;
    let wait = async {
        while let Some(event) = events.recv().await {
            if let GenerationEvent::Done(result) = event {
                return result.map_err(ApiError::from);
            }
        }
        Err(ApiError::Internal("the model's worker stopped".into()))
    };
    let generation = tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| ApiError::Timeout(timeout.as_secs()))??;
    record_tokens(prepared, &generation);
    Ok(generation)
}

/// Records a finished generation: its stages and tokens in the metrics and the monitor.
pub fn record_tokens(prepared: &Prepared, generation: &Generation) {
    let model = prepared.lease.lease().id.to_string();
    let stages = prepared.clock.finished(generation, prepared.prompt.len());
    // The generation's span (the caller runs inside it) gets its figures.
    let span = tracing::Span::current();
    span.record("cached_tokens", stages.cached_tokens as i64);
    span.record("generated_tokens", stages.generated_tokens as i64);
    span.record("prefill_ms", stages.prefill_ms);
    span.record("decode_ms", stages.decode_ms);
    span.record("ttft_ms", stages.ttft_ms);
    log_request(
        prepared,
        &model,
        &generation.text,
        finish_reason(generation.finish_reason),
        Some(&stages),
    );
    prepared.monitor.generated(&model, prepared.api, stages);
}

/// Writes a generation's line to the request log, when one is on: the prompt as the
/// model saw it, the output, why it ended and its stage figures (none for a stream the
/// client left).
fn log_request(prepared: &Prepared, model: &str, output: &str, finish_reason: &str, stages: Option<&Stages>) {
    let Some(log) = prepared.monitor.request_log() else {
        return;
    };
    let prompt: Vec<u8> = prepared
        .prompt
        .iter()
        .flat_map(|&t| prepared.model().token_bytes(t, true))
        .collect();
    let mut line = serde_json::json!({
        "at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "model": model,
        "api": prepared.api,
        "prompt": String::from_utf8_lossy(&prompt),
        "output": output,
        "finish_reason": finish_reason,
    });
    if let Some(stages) = stages {
        line["stages"] = serde_json::json!(stages);
    }
    log.record(line);
}

/// Records a streamed generation whose client went away before its end: counted per
/// model (`minerva_streams_dropped_total`, the monitor's `dropped`) and, with the request
/// log on, logged with the text it had been sent (`sent`) and `finish_reason`
/// `client_disconnected`.
pub fn record_dropped(prepared: &Prepared, sent: Option<&str>) {
    let model = prepared.lease.lease().id.to_string();
    tracing::Span::current().record("dropped", true);
    if let Some(sent) = sent {
        log_request(prepared, &model, sent, "client_disconnected", None);
    }
    prepared.monitor.dropped(&model);
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// `usage` of a response; `cached_tokens` are prompt tokens whose KV came from the
/// prefix cache (OpenAI's `prompt_tokens_details.cached_tokens`).
pub fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached_tokens },
    })
}

/// Seconds since the epoch, for `created`.
pub fn created() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A response id with the given prefix.
pub fn response_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    format!("{prefix}-{nanos:x}")
}

/// The text of a token as the client sees it.
pub fn token_text(model: &dyn LanguageModel, token: TokenId) -> String {
    String::from_utf8_lossy(&model.token_bytes(token, false)).into_owned()
}

/// Chat-style logprobs: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(model: &dyn LanguageModel, tokens: &[SampledToken]) -> serde_json::Value {
    let entry = |token: TokenId, logprob: f32| {
        let bytes = model.token_bytes(token, false);
        serde_json::json!({ "token": String::from_utf8_lossy(&bytes), "logprob": logprob, "bytes": bytes })
    };
    let content: Vec<_> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.token, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|&(tok, lp)| entry(tok, lp)).collect();
            e
        })
        .collect();
    serde_json::json!({ "content": content })
}
