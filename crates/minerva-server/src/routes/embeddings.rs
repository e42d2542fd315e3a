//! `POST /v1/embeddings` and `GET /v1/embeddings/stats`.
//!
//! A request goes to the model's embedding service (its batching worker) through the
//! server's embedding cache: hits are answered at once, misses take an admission slot
//! (as every inference request does), join the worker's queue and are merged with other
//! requests' inputs into batches.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use minerva_pool::{AcquireOptions, KeepAlive, LoadedModel};
use minerva_workers::embedding::{EmbedSettings, Embedded, EmbeddingInput};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::ApiJsonRaw;
use crate::state::AppState;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "all-minilm-l6-v2", "input": ["A cat sits on the mat.", "Un chat est assis."]}))]
pub struct EmbeddingRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<usize>,
    /// Minerva extension: fail instead of truncating inputs longer than the model accepts.
    #[serde(default)]
    truncate: Option<bool>,
    /// Minerva extension: what an input longer than the model reads gets: `truncate`
    /// (the default unless `truncate: false`), `error` (a 400 with its token count), or
    /// `chunk` (overlapping windows embedded and averaged).
    long_input: Option<LongInput>,
    /// Ollama's extension: how long the model stays loaded after this request.
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
}

/// What an input longer than the model reads gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LongInput {
    /// Its beginning is embedded.
    Truncate,
    /// A 400 naming the input and its token count.
    Error,
    /// Overlapping windows (each the most the model reads, a quarter window of overlap)
    /// are embedded and their vectors averaged, weighted by their token counts, then
    /// normalized if the model normalizes.
    Chunk,
}

/// `input`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl Input {
    fn len(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(t) => t.len(),
            Self::TokenLists(t) => t.len(),
        }
    }

    fn chars(&self) -> usize {
        match self {
            Self::Text(t) => t.chars().count(),
            Self::Texts(t) => t.iter().map(|s| s.chars().count()).sum(),
            Self::Tokens(_) | Self::TokenLists(_) => 0,
        }
    }

    fn into_inputs(self) -> Vec<EmbeddingInput> {
        match self {
            Self::Text(t) => vec![EmbeddingInput::Text(t)],
            Self::Texts(texts) => texts.into_iter().map(EmbeddingInput::Text).collect(),
            Self::Tokens(ids) => vec![EmbeddingInput::Tokens(ids)],
            Self::TokenLists(lists) => lists.into_iter().map(EmbeddingInput::Tokens).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Serialize)]
struct EmbeddingResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingData<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingData<'a> {
    object: &'static str,
    index: usize,
    embedding: Vector<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "openai",
    request_body = EmbeddingRequest,
    responses((status = 200, description = "One embedding per input", body = serde_json::Value))
)]
pub async fn embeddings(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    headers: axum::http::HeaderMap,
    ApiJsonRaw(req, raw): ApiJsonRaw<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    // An alias, a fallback chain, an experiment or a remote backend picks what serves
    // (each attempt with the request's copy; a remote one gets the body as it came).
    let name = req.model.clone();
    crate::routing::serve_openai(&state, &headers, raw, &name, "/embeddings", |model| {
        embeddings_on(state.clone(), scope.clone(), EmbeddingRequest { model, ..req.clone() })
    })
    .await
}

/// The request on the model it names.
async fn embeddings_on(
    state: AppState,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    req: EmbeddingRequest,
) -> Result<Response, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    check_input_size(&state, &req.input)?;
    let long_input = match (req.long_input, req.truncate) {
        (Some(LongInput::Truncate), Some(false)) => {
            return Err(ApiError::invalid(
                "long_input",
                "\"truncate\" contradicts truncate: false",
            ));
        }
        (Some(l), _) => l,
        (None, Some(false)) => LongInput::Error,
        (None, _) => LongInput::Truncate,
    };
    let request = EmbedRequest {
        model: &req.model,
        inputs: req.input.into_inputs(),
        long_input,
        dimensions: req.dimensions,
        keep_alive: req.keep_alive,
    };
    let embedded = embed_inputs(&state, request).await?;
    let prompt_tokens: u64 = embedded.tokens.iter().map(|&t| u64::from(t)).sum();
    let data = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: match req.encoding_format {
                EncodingFormat::Float => Vector::Float(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model: &req.model,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
    .into_response())
}

/// What to embed, with what: the fields both embedding APIs (OpenAI's and Ollama's) have.
pub struct EmbedRequest<'a> {
    pub model: &'a str,
    pub inputs: Vec<EmbeddingInput>,
    /// What inputs longer than the model reads get.
    pub long_input: LongInput,
    /// The dimensions asked for (the model's own only).
    pub dimensions: Option<usize>,
    pub keep_alive: Option<KeepAlive>,
}

/// Embeds the inputs of `request` through the cache and the model's batching worker.
pub async fn embed_inputs(state: &AppState, request: EmbedRequest<'_>) -> Result<Embedded, ApiError> {
    let count = request.inputs.len();
    let id = state.model_id(request.model)?;
    let lease = state
        .pool
        .acquire_with(
            &id,
            AcquireOptions {
                keep_alive: request.keep_alive,
                protect: crate::routing::protected(),
            },
        )
        .await?;
    let service = lease.into_embedding().map_err(|_| {
        ApiError::invalid(
            "model",
            format!("{id} is not an embedding model; use /v1/chat/completions"),
        )
    })?;
    if service.is_reranker() {
        return Err(ApiError::invalid(
            "model",
            format!("{id} is a reranker (cross-encoder); use /v1/rerank"),
        ));
    }
    if let Some(d) = request.dimensions
        && d != service.dimensions()
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "{id} produces {} dimensions and cannot shorten them",
                service.dimensions()
            ),
        ));
    }
    // Chunked: each text becomes its windows (token inputs), embedded unnormalized and
    // combined below; `groups` maps each input to its windows.
    let (inputs, groups) = match request.long_input {
        LongInput::Chunk => {
            let (inputs, groups) = windows(&service, request.inputs).await?;
            (inputs, Some(groups))
        }
        _ => (request.inputs, None),
    };
    let settings = EmbedSettings {
        normalize: service.normalizes() && groups.is_none(),
        forbid_truncation: request.long_input == LongInput::Error,
    };
    let cache = Some(state.embedding_cache.as_ref());
    let lookup = service.lookup(inputs, settings, cache).await;
    // Only work for the model takes an admission slot; the slot is held until the
    // vectors are back, and batch mates come from the requests holding slots.
    let _slot = match lookup.misses() {
        0 => None,
        _ => Some(state.admission.admit().await?),
    };
    let embedded = service.compute(lookup, cache).await?;
    metrics::counter!("minerva_embedded_inputs_total", "model" => id.to_string()).increment(count as u64);
    state.monitor.embedded(count);
    Ok(match groups {
        Some(groups) => combine(embedded, &groups, service.normalizes()),
        None => embedded,
    })
}

/// The windows of each text input (token inputs pass as they are), and for each input the
/// range of its windows.
async fn windows(
    service: &minerva_workers::embedding::EmbeddingService,
    inputs: Vec<EmbeddingInput>,
) -> Result<(Vec<EmbeddingInput>, Vec<std::ops::Range<usize>>), ApiError> {
    let texts: Vec<String> = inputs
        .iter()
        .filter_map(|i| match i {
            EmbeddingInput::Text(t) => Some(t.clone()),
            EmbeddingInput::Tokens(_) => None,
        })
        .collect();
    let mut windows = service.windows(texts).await?.into_iter();
    let mut out = Vec::new();
    let mut groups = Vec::with_capacity(inputs.len());
    for input in inputs {
        let start = out.len();
        match input {
            EmbeddingInput::Text(_) => out.extend(
                windows
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(EmbeddingInput::Tokens),
            ),
            tokens => out.push(tokens),
        }
        groups.push(start..out.len());
    }
    Ok((out, groups))
}

/// Each input's vector from its windows': their mean weighted by token counts, then
/// L2-normalized when the model normalizes; its tokens are the windows' sum.
fn combine(embedded: Embedded, groups: &[std::ops::Range<usize>], normalize: bool) -> Embedded {
    let mut vectors = Vec::with_capacity(groups.len());
    let mut tokens = Vec::with_capacity(groups.len());
    for group in groups {
        let total: u32 = embedded.tokens[group.clone()].iter().sum();
        let mut mean = vec![0f32; embedded.vectors.get(group.start).map_or(0, |v| v.len())];
        for i in group.clone() {
            let weight = embedded.tokens[i] as f32 / total.max(1) as f32;
            for (m, v) in mean.iter_mut().zip(embedded.vectors[i].iter()) {
                *m += weight * v;
            }
        }
        if normalize {
            minerva_engine::embed::l2_normalize(&mut mean);
        }
        vectors.push(mean.into());
        tokens.push(total);
    }
    Embedded {
        vectors,
        tokens,
        cached: embedded.cached,
    }
}

/// Refuses an empty input and one beyond the server's limits on inputs and characters.
fn check_input_size(state: &AppState, input: &Input) -> Result<(), ApiError> {
    check_input_counts(state, input.len(), input.chars())
}

/// Refuses `count` inputs of `chars` characters in all when they are none or beyond the
/// server's limits.
pub fn check_input_counts(state: &AppState, count: usize, chars: usize) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::invalid("input", "must not be empty"));
    }
    if count > state.config.max_embedding_inputs {
        return Err(ApiError::invalid(
            "input",
            format!(
                "{count} inputs exceed the limit of {}",
                state.config.max_embedding_inputs
            ),
        ));
    }
    if chars > state.config.max_prompt_chars.saturating_mul(16) {
        return Err(ApiError::invalid(
            "input",
            format!("{chars} characters exceed the limit"),
        ));
    }
    Ok(())
}

/// `GET /v1/embeddings/stats`: the embedding cache and each loaded embedding model's
/// batching counters.
#[utoipa::path(
    get,
    path = "/v1/embeddings/stats",
    tag = "minerva",
    responses((status = 200, description = "The embedding cache and pipeline counters", body = serde_json::Value))
)]
pub async fn stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    let models: serde_json::Map<String, serde_json::Value> = state
        .pool
        .loaded()
        .iter()
        .filter_map(|lease| match &lease.model {
            LoadedModel::Embedding(service) => Some((
                lease.id.to_string(),
                serde_json::to_value(service.stats()).unwrap_or_default(),
            )),
            LoadedModel::Llm(_) => None,
        })
        .collect();
    Json(serde_json::json!({
        "object": "embedding_stats",
        "cache": state.embedding_cache.stats(),
        "models": models,
    }))
}
