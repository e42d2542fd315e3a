//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use minerva_engine::chat::{ChatMessage, ChatTemplate, chat_prompt_tokens};
use minerva_pool::KeepAlive;
use serde::Deserialize;

use super::generation::{self, Prepared, SamplingFields, StopSpec, StreamOptions};
use super::stream::{self, StreamPiece};
use super::structured::{self, GrammarFields};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// Most choices per request.
const MAX_CHOICES: u32 = 8;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<MessageIn>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    stop: Option<StopSpec>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    grammar: GrammarFields,
    tools: Option<serde_json::Value>,
    /// Ollama's extension: how long the model stays loaded after this request.
    keep_alive: Option<KeepAlive>,
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
}

/// A message's content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

impl MessageIn {
    fn into_message(self, index: usize) -> Result<ChatMessage, ApiError> {
        let param = format!("messages[{index}]");
        if !matches!(self.role.as_str(), "system" | "user" | "assistant" | "developer") {
            return Err(ApiError::invalid(
                format!("{param}.role"),
                format!("unsupported role {:?}", self.role),
            ));
        }
        let content = match self.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("{param}.content"),
                                format!("content parts of type {kind:?} are not supported"),
                            ));
                        }
                    }
                }
                text
            }
        };
        // Templates know system/user/assistant; OpenAI's newer "developer" role is a system message.
        let role = if self.role == "developer" {
            "system".to_owned()
        } else {
            self.role
        };
        Ok(ChatMessage { role, content })
    }
}

pub async fn chat_completions(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    let (n, top_logprobs) = check_request(&req)?;
    let grammar = req.grammar.grammar()?;
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.into_message(i))
        .collect::<Result<Vec<_>, _>>()?;
    generation::check_prompt_chars(
        &state,
        "messages",
        messages.iter().map(|m| m.content.chars().count()).sum(),
    )?;
    let mut options = generation::options(
        &state,
        &req.sampling,
        req.max_completion_tokens.or(req.max_tokens),
        req.stop,
        top_logprobs,
    )?;

    let lease = generation::language_model(&state, &req.model, req.keep_alive).await?;
    if let Some(grammar) = grammar {
        options.constraint = Some(structured::constraint(&lease, grammar).await?);
    }
    let template = ChatTemplate::for_model(lease.model())?;
    let prompt = chat_prompt_tokens(lease.model(), &template, &messages)?;
    let prepared = Prepared { lease, prompt, options };
    generation::check_context(&prepared, "messages")?;
    generation::check_sampling(&prepared)?;
    let slot = state.admission.admit().await?;
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(stream_chat(
            prepared,
            slot,
            req.model,
            include_usage,
            top_logprobs.is_some(),
        ));
    }
    let reply = complete_choices(&state, &prepared, req.model, n, top_logprobs.is_some()).await?;
    drop(slot);
    Ok(axum::Json(reply).into_response())
}

/// Refuses what this server does not do yet and values out of range; returns the number
/// of choices and the `top_logprobs` asked for (`None`: no logprobs).
fn check_request(req: &ChatRequest) -> Result<(u32, Option<usize>), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "must contain at least one message"));
    }
    if req.tools.is_some() {
        return Err(ApiError::invalid("tools", "tool calling is not supported yet"));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::invalid("n", format!("must be between 1 and {MAX_CHOICES}")));
    }
    if n > 1 && req.stream {
        return Err(ApiError::invalid("n", "n > 1 is not supported with stream: true"));
    }
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "requires logprobs: true")),
        (true, top) => Some(top.unwrap_or(0)),
        (false, None) => None,
    };
    Ok((n, top_logprobs))
}

/// The chat's answer as OpenAI `chat.completion.chunk` events.
fn stream_chat(
    prepared: Prepared,
    slot: crate::state::Slot,
    model: String,
    include_usage: bool,
    want_logprobs: bool,
) -> Response {
    let id = generation::response_id("chatcmpl");
    let created = generation::created();
    let lease = prepared.lease.clone();
    let chunk = move |delta: serde_json::Value, finish: Option<&str>, logprobs: Option<serde_json::Value>| {
        serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        })
    };
    let first = chunk(serde_json::json!({"role": "assistant", "content": ""}), None, None);
    let render = move |piece: StreamPiece<'_>| match piece {
        StreamPiece::Text(text) => chunk(serde_json::json!({ "content": text }), None, None),
        StreamPiece::Finished(g) => {
            let logprobs = want_logprobs.then(|| generation::chat_logprobs(lease.model(), &g.logprobs));
            chunk(
                serde_json::json!({}),
                Some(generation::finish_reason(g.finish_reason)),
                logprobs,
            )
        }
    };
    stream::sse(prepared, slot, Some(first), include_usage, render).into_response()
}

/// `n` choices generated one after the other, as one `chat.completion`.
async fn complete_choices(
    state: &AppState,
    prepared: &Prepared,
    model: String,
    n: u32,
    want_logprobs: bool,
) -> Result<serde_json::Value, ApiError> {
    let id = generation::response_id("chatcmpl");
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    // The prompt is counted once, so is its reuse: the first choice's.
    let mut cached_tokens = None;
    for index in 0..n {
        let mut prepared_i = Prepared {
            lease: prepared.lease.clone(),
            prompt: prepared.prompt.clone(),
            options: prepared.options.clone(),
        };
        // Distinct choices need distinct random streams; a seed keeps them reproducible.
        prepared_i.options.sampling.seed = prepared.options.sampling.seed.map(|s| s.wrapping_add(u64::from(index)));
        let g = generation::complete(state, &prepared_i).await?;
        completion_tokens += g.tokens.len();
        cached_tokens.get_or_insert(g.cached_tokens);
        let logprobs = want_logprobs.then(|| generation::chat_logprobs(prepared.model(), &g.logprobs));
        choices.push(serde_json::json!({
            "index": index,
            "message": { "role": "assistant", "content": g.text },
            "logprobs": logprobs,
            "finish_reason": generation::finish_reason(g.finish_reason),
        }));
    }
    Ok(serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": generation::created(),
        "model": model,
        "choices": choices,
        "usage": generation::usage(prepared.prompt.len(), completion_tokens, cached_tokens.unwrap_or(0)),
        "system_fingerprint": null,
    }))
}
