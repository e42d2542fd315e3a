//! `POST /api/chat`.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use minerva_engine::chat::{ChatMessage, chat_prompt_tokens};
use minerva_engine::generate::Generation;
use minerva_pool::KeepAlive;
use serde::Deserialize;

use super::ndjson::{self, Piece};
use super::options::{self, Options};
use super::{Clock, durations, merge, model_with_adapter, rfc3339};
use crate::error::ApiError;
use crate::extract::AnyJson;
use crate::routes::generation::{self, Prepared};
use crate::routes::structured;
use crate::routes::tools::{FunctionCallIn, ToolCallIn, ToolFields, ToolSpec, Tools};
use crate::state::AppState;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaChatRequest)]
#[schema(example = json!({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "stream": false, "options": {"num_predict": 8}}))]
pub struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<MessageIn>,
    /// Ollama streams unless told otherwise.
    stream: Option<bool>,
    format: Option<serde_json::Value>,
    #[serde(default)]
    options: Options,
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
    /// Whether a generation that fills the context goes on, dropping its oldest tokens
    /// (Ollama's default), or ends.
    shift: Option<bool>,
    tools: Option<Vec<ToolSpec>>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaMessage)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: String,
    images: Option<Vec<String>>,
    tool_calls: Option<Vec<OllamaCall>>,
    /// Ollama's name of the tool whose result a `tool` message carries.
    tool_name: Option<String>,
}

/// A call as Ollama writes it: arguments as an object, not a string.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
struct OllamaCall {
    function: OllamaFunction,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
struct OllamaFunction {
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

impl MessageIn {
    fn into_message(self, index: usize) -> Result<ChatMessage, ApiError> {
        let param = format!("messages[{index}]");
        if self.images.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(ApiError::invalid(
                format!("{param}.images"),
                "images are not supported: no model of this server reads them",
            ));
        }
        let content = match self.role.as_str() {
            "system" | "user" => self.content,
            "assistant" => {
                let calls: Vec<ToolCallIn> = self
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| ToolCallIn {
                        id: None,
                        function: FunctionCallIn {
                            name: c.function.name,
                            arguments: c.function.arguments.to_string(),
                        },
                    })
                    .collect();
                let past = crate::routes::tools::past_calls(&calls, &mut HashMap::new());
                format!("{}{past}", self.content).trim_end().to_owned()
            }
            "tool" => crate::routes::tools::result_of(self.tool_name.as_deref(), &self.content),
            other => {
                return Err(ApiError::invalid(
                    format!("{param}.role"),
                    format!("unsupported role {other:?}"),
                ));
            }
        };
        // A tool's result reaches the model as a user message saying what it is.
        let role = if self.role == "tool" {
            "user".to_owned()
        } else {
            self.role
        };
        Ok(ChatMessage { role, content })
    }
}

#[utoipa::path(
    post,
    path = "/api/chat",
    tag = "ollama",
    request_body = ChatRequest,
    responses((status = 200, description = "The reply (streamed as NDJSON unless `stream: false`)", content((serde_json::Value = "application/json"), (String = "application/x-ndjson"))))
)]
pub async fn chat(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    AnyJson(req): AnyJson<ChatRequest>,
) -> Result<Response, ApiError> {
    // An alias, a fallback chain or an experiment picks the model (each attempt with the
    // request's copy).
    let name = req.model.clone();
    crate::routing::serve_local(&state, &name, |model| {
        chat_on(state.clone(), scope.clone(), ChatRequest { model, ..req.clone() })
    })
    .await
}

/// The request on the model it names.
async fn chat_on(
    state: AppState,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    req: ChatRequest,
) -> Result<Response, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    let mut clock = Clock::start();
    let (_, name) = model_with_adapter(&state, &req.model)?;
    let tools = ToolFields {
        // Ollama's clients send `tools: []` when there are none.
        tools: req.tools.filter(|t| !t.is_empty()),
        tool_choice: None,
        parallel_tool_calls: None,
    }
    .tools()?;
    let grammar = options::grammar(req.format.as_ref())?;
    let mut messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.into_message(i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = req.options.generate_options(&state)?;
    let lease = generation::language_model(&state, &name, req.keep_alive).await?;
    generation::apply_settings(&lease, req.options.given(), &mut options);
    clock.model_ready();
    if messages.is_empty() {
        // Ollama's way to load a model: a chat without messages.
        let reply = serde_json::json!({
            "model": req.model, "created_at": rfc3339(std::time::SystemTime::now()),
            "message": { "role": "assistant", "content": "" }, "done_reason": "load", "done": true,
        });
        return Ok(axum::Json(reply).into_response());
    }
    // The model's own system prompt first, so that offering tools does not hide it.
    generation::apply_system(&lease, &mut messages);
    if let Some(tools) = &tools {
        tools.offer(&mut messages);
    }
    generation::check_prompt_chars(
        &state,
        "messages",
        messages.iter().map(|m| m.content.chars().count()).sum(),
    )?;
    if let Some(grammar) = grammar {
        options.constraint = Some(structured::constraint(&lease, grammar).await?);
    }
    let template = generation::chat_template(&lease)?;
    let prompt = chat_prompt_tokens(lease.model(), &template, &messages)?;
    options.context_shift = req.options.context_shift(&state, req.shift, lease.model(), &prompt)?;
    let mut prepared = Prepared::new(&state, "ollama", lease, prompt, options, clock);
    generation::check_context(&prepared, "messages")?;
    generation::check_sampling(&prepared)?;
    prepared.clock.prepared();
    let slot = state.admission.admit().await?;
    prepared.clock.admitted();
    let stream = req.stream.unwrap_or(true);
    let model = req.model;
    if stream && tools.is_none() {
        let prompt_tokens = prepared.prompt.len();
        return Ok(ndjson::stream(prepared, slot, move |piece| match piece {
            Piece::Text(text) => line(&model, serde_json::json!({"role": "assistant", "content": text}), false),
            Piece::Finished(g) => last_line(&model, prompt_tokens, g, &clock),
        }));
    }
    let g = generation::complete(&state, &prepared).await?;
    drop(slot);
    let message = reply_message(&g, tools.as_ref());
    let mut reply = line(&model, message, true);
    merge(&mut reply, ndjson::stats(prepared.prompt.len(), &g));
    merge(&mut reply, durations(&clock));
    if stream {
        // With tools a reply is known to be a call only at its end: it goes out whole.
        return Ok(ndjson::lines(vec![reply]));
    }
    Ok(axum::Json(reply).into_response())
}

/// One line (or the whole reply) of a chat.
fn line(model: &str, message: serde_json::Value, done: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "created_at": rfc3339(std::time::SystemTime::now()),
        "message": message,
        "done": done,
    })
}

/// The last line of a stream: empty content, the reason and the stats.
fn last_line(model: &str, prompt_tokens: usize, g: &Generation, clock: &Clock) -> serde_json::Value {
    let mut last = line(model, serde_json::json!({"role": "assistant", "content": ""}), true);
    merge(&mut last, ndjson::stats(prompt_tokens, g));
    merge(&mut last, durations(&clock));
    last
}

/// The assistant's message: its text, or the tool call it made (Ollama's shape:
/// `tool_calls[i].function.arguments` is an object).
fn reply_message(g: &Generation, tools: Option<&Tools>) -> serde_json::Value {
    match tools.and_then(|t| t.parse(&g.text)) {
        Some(call) => {
            let arguments: serde_json::Value = serde_json::from_str(&call.arguments).unwrap_or_default();
            serde_json::json!({
                "role": "assistant",
                "content": "",
                "tool_calls": [{ "function": { "name": call.name, "arguments": arguments } }],
            })
        }
        None => serde_json::json!({ "role": "assistant", "content": g.text }),
    }
}
