//! `POST /v1/embeddings`.

use axum::extract::State;
use base64::Engine as _;
use minerva_runtime::{AcquireOptions, KeepAlive, LoadedModel};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<usize>,
    /// Minerva extension: fail instead of truncating inputs longer than the model accepts.
    #[serde(default)]
    truncate: Option<bool>,
    /// Ollama's extension: how long the model stays loaded after this request.
    keep_alive: Option<KeepAlive>,
}

/// `input`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

pub async fn embeddings(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let count = match &req.input {
        Input::Text(_) | Input::Tokens(_) => 1,
        Input::Texts(t) => t.len(),
        Input::TokenLists(t) => t.len(),
    };
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
    let chars: usize = match &req.input {
        Input::Text(t) => t.chars().count(),
        Input::Texts(t) => t.iter().map(|s| s.chars().count()).sum(),
        _ => 0,
    };
    if chars > state.config.max_prompt_chars.saturating_mul(16) {
        return Err(ApiError::invalid(
            "input",
            format!("{chars} characters exceed the limit"),
        ));
    }
    let id = state.model_id(&req.model)?;
    let lease = state
        .pool
        .acquire_with(
            &id,
            AcquireOptions {
                keep_alive: req.keep_alive,
            },
        )
        .await?;
    let LoadedModel::Embedding(model) = &lease.model else {
        return Err(ApiError::invalid(
            "model",
            format!("{id} is not an embedding model; use /v1/chat/completions"),
        ));
    };
    if let Some(d) = req.dimensions
        && d != model.dimensions()
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "{id} produces {} dimensions and cannot shorten them",
                model.dimensions()
            ),
        ));
    }
    let slot = state.admission.admit().await?;
    let forbid_truncation = req.truncate == Some(false);
    let work_lease = lease.clone();
    // The slot moves into the blocking task: it is held as long as the CPU work runs,
    // even if the client goes away meanwhile.
    let (vectors, prompt_tokens) = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let LoadedModel::Embedding(model) = &work_lease.model else {
            unreachable!("checked above")
        };
        let inputs: Vec<Vec<u32>> = match req.input {
            Input::Text(t) => vec![model.tokenize(0, &t, forbid_truncation)?.ids],
            Input::Texts(texts) => texts
                .iter()
                .enumerate()
                .map(|(i, t)| model.tokenize(i, t, forbid_truncation).map(|input| input.ids))
                .collect::<Result<_, _>>()?,
            Input::Tokens(ids) => vec![ids],
            Input::TokenLists(lists) => lists,
        };
        let tokens: usize = inputs.iter().map(Vec::len).sum();
        let vectors = model.embed_tokens(&inputs, model.normalizes())?;
        Ok::<_, minerva_engine::EngineError>((vectors, tokens))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("embedding task failed: {e}")))??;
    metrics::counter!("minerva_embedded_inputs_total", "model" => id.to_string()).increment(vectors.len() as u64);
    let data: Vec<_> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match req.encoding_format {
                EncodingFormat::Float => serde_json::json!(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    serde_json::json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            serde_json::json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    })))
}
