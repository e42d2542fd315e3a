//! `POST /v1/tokenize` and `POST /v1/detokenize` for language models.

use axum::Json;
use axum::extract::State;
use minerva_engine::TokenId;
use minerva_engine::chat::chat_prompt_tokens;
use serde::Deserialize;

use super::generation;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "smollm2-135m-instruct", "prompt": "Hello, world"}))]
pub struct TokenizeRequest {
    model: String,
    #[serde(alias = "content")]
    prompt: Option<String>,
    /// A chat's messages instead of a prompt: the tokens the chat's prompt would have,
    /// rendered through the model's template.
    messages: Option<Vec<super::chat::MessageIn>>,
    #[serde(default = "yes")]
    add_special: bool,
    #[serde(default)]
    parse_special: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "smollm2-135m-instruct", "tokens": [19556, 28, 905]}))]
pub struct DetokenizeRequest {
    model: String,
    #[schema(value_type = Vec<i32>)]
    tokens: Vec<TokenId>,
}

#[utoipa::path(
    post,
    path = "/v1/tokenize",
    tag = "minerva",
    request_body = TokenizeRequest,
    responses((status = 200, description = "The token ids (and pieces)", body = serde_json::Value))
)]
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let lease = generation::language_model(&state, &req.model, None).await?;
    let model = lease.model();
    let tokens = match (req.prompt, req.messages) {
        (Some(prompt), None) => {
            generation::check_prompt_chars(&state, "prompt", prompt.chars().count())?;
            model.tokenize(&prompt, req.add_special, req.parse_special)?
        }
        (None, Some(messages)) => {
            let messages = super::chat::chat_messages(messages)?;
            generation::check_prompt_chars(
                &state,
                "messages",
                messages.iter().map(|m| m.content.chars().count()).sum(),
            )?;
            let template = generation::chat_template(&lease)?;
            chat_prompt_tokens(model, &template, &messages)?
        }
        _ => return Err(ApiError::invalid("prompt", "give either prompt or messages")),
    };
    Ok(Json(
        serde_json::json!({ "model": req.model, "tokens": tokens, "count": tokens.len(), "n_ctx": lease.n_ctx() }),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/detokenize",
    tag = "minerva",
    request_body = DetokenizeRequest,
    responses((status = 200, description = "The text", body = serde_json::Value))
)]
pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let lease = generation::language_model(&state, &req.model, None).await?;
    let model = lease.model();
    let n_vocab = model.metadata().n_vocab as TokenId;
    if let Some(bad) = req.tokens.iter().find(|&&t| t < 0 || t >= n_vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary of {n_vocab}"),
        ));
    }
    let bytes: Vec<u8> = req.tokens.iter().flat_map(|&t| model.token_bytes(t, true)).collect();
    Ok(Json(
        serde_json::json!({ "model": req.model, "content": String::from_utf8_lossy(&bytes) }),
    ))
}
