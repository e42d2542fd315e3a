//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use minerva_engine::chat::ChatMessage;
use minerva_engine::generate::Generation;
use minerva_pool::KeepAlive;
use serde::Deserialize;

use super::generation::{self, ContextFields, Prepared, SamplingFields, StopSpec, StreamOptions};
use super::stream::{self, StreamPiece};
use super::structured::{self, GrammarFields};
use super::timing;
use super::tools::{self, ToolCallIn, ToolFields, Tools};
use super::truncation::{self, Truncated, Truncation};
use crate::error::ApiError;
use crate::extract::ApiJsonRaw;
use crate::state::AppState;

/// Most choices per request.
const MAX_CHOICES: u32 = 8;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8}))]
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
    #[serde(flatten)]
    tools: ToolFields,
    #[serde(flatten)]
    context: ContextFields,
    /// Ollama's extension: how long the model stays loaded after this request.
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
    /// Minerva's extension: the scale of the LoRA adapter a `BASE+ADAPTER` model names
    /// (its update times `scale · alpha / rank`; 1 by default, 0 is the base).
    #[schema(minimum = -4.0, maximum = 4.0)]
    adapter_scale: Option<f32>,
    /// Minerva's extension: what a conversation longer than the context gets (`error`,
    /// `auto`, `middle`; the server's `--truncation` by default).
    truncation: Option<Truncation>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub(super) struct MessageIn {
    role: String,
    content: Option<Content>,
    /// An assistant's past tool calls.
    tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message's call.
    tool_call_id: Option<String>,
}

/// A message's content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

impl MessageIn {
    /// The message as the template sees it; `calls` maps the ids of earlier tool calls to
    /// their functions' names.
    fn into_message(
        self,
        index: usize,
        calls: &mut std::collections::HashMap<String, String>,
    ) -> Result<ChatMessage, ApiError> {
        let param = format!("messages[{index}]");
        if !matches!(
            self.role.as_str(),
            "system" | "user" | "assistant" | "developer" | "tool"
        ) {
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
        // Templates know system/user/assistant; OpenAI's newer "developer" role is a system
        // message, a tool's result comes back as a user message saying what it is, and an
        // assistant's calls are shown in the format the model was asked to call in.
        let (role, content) = match self.role.as_str() {
            "developer" => ("system".to_owned(), content),
            "tool" => (
                "user".to_owned(),
                tools::result_text(&content, self.tool_call_id.as_deref(), calls),
            ),
            "assistant" if self.tool_calls.is_some() => {
                let past = tools::past_calls(self.tool_calls.as_deref().unwrap_or_default(), calls);
                ("assistant".to_owned(), format!("{content}{past}").trim_end().to_owned())
            }
            _ => (self.role, content),
        };
        Ok(ChatMessage { role, content })
    }
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatRequest,
    responses((status = 200, description = "The completion (with `stream: true`, server-sent chunks ending in `[DONE]`)", content((serde_json::Value = "application/json"), (crate::openapi::SseEvent = "text/event-stream"))))
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    headers: axum::http::HeaderMap,
    ApiJsonRaw(req, raw): ApiJsonRaw<ChatRequest>,
) -> Result<Response, ApiError> {
    // An alias, a fallback chain, an experiment or a remote backend picks what serves
    // (each attempt with the request's copy; a remote one gets the body as it came).
    let name = req.model.clone();
    crate::routing::serve_openai(&state, &headers, raw, &name, "/chat/completions", |model| {
        chat_completions_on(state.clone(), scope.clone(), ChatRequest { model, ..req.clone() })
    })
    .await
}

/// The request on the model it names.
async fn chat_completions_on(
    state: AppState,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    req: ChatRequest,
) -> Result<Response, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    let (n, top_logprobs) = check_request(&req)?;
    let tools = req.tools.tools()?;
    let grammar = match (req.grammar.grammar()?, tools.as_ref().and_then(Tools::grammar)) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required tool call cannot be combined with response_format or grammar",
            ));
        }
        (format, call) => format.or(call),
    };
    let mut messages = chat_messages(req.messages)?;
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

    let mut clock = timing::Clock::start();
    let lease = generation::language_model_scaled(&state, &req.model, req.keep_alive, req.adapter_scale).await?;
    clock.model_ready();
    generation::apply_settings(&lease, req.sampling.given(), &mut options);
    // The model's own system prompt first, so that offering tools does not hide it.
    generation::apply_system(&lease, &mut messages);
    if let Some(tools) = &tools {
        tools.offer(&mut messages);
    }
    if let Some(grammar) = grammar {
        options.constraint = Some(structured::constraint(&lease, grammar).await?);
    }
    // Template, tokenizing and the checks: no await in between.
    let prepare = tracing::info_span!("prepare").entered();
    let template = generation::chat_template(&lease)?;
    let (prompt, truncated) = truncation::fit(
        lease.model(),
        &template,
        messages,
        lease.n_ctx() as usize,
        options.max_tokens,
        req.truncation.unwrap_or(state.config.truncation),
    )?;
    options.context_shift = req.context.shift(&state, lease.model(), &prompt, "n_keep")?;
    let mut prepared = Prepared::new(&state, "chat", lease, prompt, options, clock);
    generation::check_context(&prepared, "messages")?;
    generation::check_sampling(&prepared)?;
    prepared.clock.prepared();
    drop(prepare);
    let slot = state.admission.admit().await?;
    prepared.clock.admitted();
    let clock = prepared.clock;
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    if req.stream && tools.is_none() {
        let mut response = stream_chat(
            prepared,
            slot,
            req.model,
            include_usage,
            top_logprobs.is_some(),
            truncated,
        );
        clock.set_header(&mut response, None);
        return Ok(response);
    }
    let (mut reply, first) =
        complete_choices(&state, &prepared, req.model, n, top_logprobs.is_some(), tools.as_ref()).await?;
    drop(slot);
    reply["timings"] = clock.timings(&first, prepared.prompt.len());
    if let Some(truncated) = truncated {
        reply["truncation"] = serde_json::json!(truncated);
    }
    if req.stream {
        // With tools the reply is known to be a call or text only at its end: it is
        // generated whole, then sent as the chunks a client assembles.
        let mut response = stream_reply(&reply, include_usage);
        clock.set_header(&mut response, Some(&first));
        return Ok(response);
    }
    let mut response = axum::Json(reply).into_response();
    clock.set_header(&mut response, Some(&first));
    Ok(response)
}

/// The messages of a request as the template sees them.
pub(super) fn chat_messages(messages: Vec<MessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut calls = std::collections::HashMap::new();
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.into_message(i, &mut calls))
        .collect()
}

/// Refuses what this server does not do yet and values out of range; returns the number
/// of choices and the `top_logprobs` asked for (`None`: no logprobs).
fn check_request(req: &ChatRequest) -> Result<(u32, Option<usize>), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "must contain at least one message"));
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
    truncated: Option<Truncated>,
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
    let mut first = chunk(serde_json::json!({"role": "assistant", "content": ""}), None, None);
    if let Some(truncated) = truncated {
        // What the conversation lost goes with the first chunk.
        first["truncation"] = serde_json::json!(truncated);
    }
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

/// A finished `chat.completion` as the chunks of a stream: the role, the content or the
/// tool calls, the finish reason, the usage when asked, `[DONE]`.
fn stream_reply(reply: &serde_json::Value, include_usage: bool) -> Response {
    use axum::response::sse::{Event, Sse};
    let chunk = |index: &serde_json::Value, delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::json!({
            "id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
            "model": reply["model"], "system_fingerprint": null,
            "choices": [{ "index": index, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    };
    let mut events = Vec::new();
    for choice in reply["choices"].as_array().into_iter().flatten() {
        let index = &choice["index"];
        let message = &choice["message"];
        events.push(chunk(
            index,
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        ));
        if let Some(calls) = message["tool_calls"].as_array() {
            let calls: Vec<serde_json::Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call["index"] = serde_json::json!(i);
                    call
                })
                .collect();
            events.push(chunk(
                index,
                serde_json::json!({ "tool_calls": calls }),
                serde_json::Value::Null,
            ));
        } else if let Some(text) = message["content"].as_str() {
            events.push(chunk(
                index,
                serde_json::json!({ "content": text }),
                serde_json::Value::Null,
            ));
        }
        events.push(chunk(index, serde_json::json!({}), choice["finish_reason"].clone()));
    }
    if include_usage {
        let mut last = chunk(&serde_json::json!(0), serde_json::json!({}), serde_json::Value::Null);
        last["choices"] = serde_json::json!([]);
        last["usage"] = reply["usage"].clone();
        events.push(last);
    }
    let events = events
        .into_iter()
        .map(|value| Event::default().data(value.to_string()))
        .chain(std::iter::once(Event::default().data("[DONE]")))
        .map(Ok::<_, std::convert::Infallible>);
    Sse::new(futures_util::stream::iter(events)).into_response()
}

/// `n` choices generated at once, as one `chat.completion`: the worker batches them, and
/// the prompt's KV (all but its last token) is computed once and shared. With tools, a
/// choice whose text is a call of one of them is that call.
async fn complete_choices(
    state: &AppState,
    prepared: &Prepared,
    model: String,
    n: u32,
    want_logprobs: bool,
    tools: Option<&Tools>,
) -> Result<(serde_json::Value, Generation), ApiError> {
    let id = generation::response_id("chatcmpl");
    let runs = (0..n).map(|index| {
        let mut prepared_i = prepared.clone();
        // Distinct choices need distinct random streams; a seed keeps them reproducible.
        prepared_i.options.sampling.seed = prepared.options.sampling.seed.map(|s| s.wrapping_add(u64::from(index)));
        async move { generation::complete(state, &prepared_i).await }
    });
    let generations = futures_util::future::try_join_all(runs).await?;
    let completion_tokens = generations.iter().map(|g| g.tokens.len()).sum();
    // The prompt is counted once, so is its reuse: the first choice's.
    let cached_tokens = generations.first().map_or(0, |g| g.cached_tokens);
    let mut choices = Vec::new();
    for (index, g) in generations.iter().enumerate() {
        let logprobs = want_logprobs.then(|| generation::chat_logprobs(prepared.model(), &g.logprobs));
        let call = tools.and_then(|t| t.parse(&g.text));
        let (message, finish) = match call {
            Some(call) => (
                serde_json::json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [tools::call_json(&call, &tools::call_id(), None)],
                }),
                "tool_calls",
            ),
            None => (
                serde_json::json!({ "role": "assistant", "content": g.text }),
                generation::finish_reason(g.finish_reason),
            ),
        };
        choices.push(serde_json::json!({
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish,
        }));
    }
    let reply = serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": generation::created(),
        "model": model,
        "choices": choices,
        "usage": generation::usage(prepared.prompt.len(), completion_tokens, cached_tokens),
        "system_fingerprint": null,
    });
    let first = generations
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal("no choice was generated".into()))?;
    Ok((reply, first))
}
