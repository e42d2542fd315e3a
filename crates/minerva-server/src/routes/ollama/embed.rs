//! `POST /api/embed` (one or many inputs) and the older `POST /api/embeddings` (one
//! prompt), through the same cache and batching worker as `/v1/embeddings`.

use axum::Json;
use axum::extract::State;
use minerva_pool::KeepAlive;
use minerva_workers::embedding::EmbeddingInput;
use serde::Deserialize;

use super::{Clock, durations, merge};
use crate::error::ApiError;
use crate::extract::AnyJson;
use crate::routes::embeddings::{EmbedRequest, LongInput, check_input_counts, embed_inputs};
use crate::state::AppState;

/// `input`: one string or several.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaInput)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "all-minilm-l6-v2", "input": "A cat sits on the mat."}))]
pub struct EmbedBody {
    model: String,
    input: Input,
    /// Ollama truncates inputs longer than the model's context unless told not to.
    truncate: Option<bool>,
    dimensions: Option<usize>,
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsBody {
    model: String,
    prompt: String,
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
}

#[utoipa::path(
    post,
    path = "/api/embed",
    tag = "ollama",
    request_body = EmbedBody,
    responses((status = 200, description = "One embedding per input", body = serde_json::Value))
)]
pub async fn embed(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    AnyJson(req): AnyJson<EmbedBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    let clock = Clock::start();
    let texts = match req.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    check_input_counts(&state, texts.len(), texts.iter().map(|t| t.chars().count()).sum())?;
    let model = super::model_id(&state, &req.model)?;
    let request = EmbedRequest {
        model: model.as_str(),
        inputs: texts.into_iter().map(EmbeddingInput::Text).collect(),
        long_input: if req.truncate == Some(false) {
            LongInput::Error
        } else {
            LongInput::Truncate
        },
        dimensions: req.dimensions,
        keep_alive: req.keep_alive,
    };
    let embedded = embed_inputs(&state, request).await?;
    let tokens: u64 = embedded.tokens.iter().map(|&t| u64::from(t)).sum();
    let embeddings: Vec<&[f32]> = embedded.vectors.iter().map(|v| &v[..]).collect();
    let mut reply = serde_json::json!({
        "model": req.model,
        "embeddings": embeddings,
        "prompt_eval_count": tokens,
    });
    merge(&mut reply, durations(&clock));
    Ok(Json(reply))
}

#[utoipa::path(
    post,
    path = "/api/embeddings",
    tag = "ollama",
    request_body = EmbeddingsBody,
    responses((status = 200, description = "One embedding (the older route)", body = serde_json::Value))
)]
pub async fn embeddings(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    AnyJson(req): AnyJson<EmbeddingsBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    check_input_counts(&state, 1, req.prompt.chars().count())?;
    let model = super::model_id(&state, &req.model)?;
    let request = EmbedRequest {
        model: model.as_str(),
        inputs: vec![EmbeddingInput::Text(req.prompt)],
        long_input: LongInput::Truncate,
        dimensions: None,
        keep_alive: req.keep_alive,
    };
    let embedded = embed_inputs(&state, request).await?;
    let embedding: &[f32] = embedded.vectors.first().map_or(&[], |v| &v[..]);
    Ok(Json(serde_json::json!({ "embedding": embedding })))
}
