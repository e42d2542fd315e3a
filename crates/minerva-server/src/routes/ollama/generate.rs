//! `POST /api/generate`: a prompt through the model's chat template (or `raw`), with
//! Ollama's `context` (the tokens of an earlier exchange) to continue from. A request
//! without a prompt loads the model (`done_reason: "load"`), or with `keep_alive: 0`
//! unloads it (`"unload"`), as Ollama's clients use it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use minerva_engine::TokenId;
use minerva_engine::chat::{ChatMessage, ChatTemplate, chat_prompt_tokens};
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
use crate::state::AppState;

/// Most tokens of `context` accepted.
const MAX_CONTEXT_TOKENS: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaGenerateRequest)]
#[schema(example = json!({"model": "gemma-3-270m", "prompt": "The capital of France is", "stream": false, "options": {"num_predict": 8}}))]
pub struct GenerateRequest {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    /// Fill-in-the-middle: refused, no model here is trained for it.
    suffix: Option<String>,
    /// A template of Ollama's own (Go template syntax): refused, the model's own applies.
    template: Option<String>,
    /// Send the prompt as it is, without the chat template.
    #[serde(default)]
    raw: bool,
    /// Tokens of an earlier exchange (the `context` of its reply) to continue from.
    #[schema(value_type = Option<Vec<i32>>)]
    context: Option<Vec<TokenId>>,
    stream: Option<bool>,
    format: Option<serde_json::Value>,
    #[serde(default)]
    options: Options,
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
    /// Whether a generation that fills the context goes on, dropping its oldest tokens
    /// (Ollama's default), or ends.
    shift: Option<bool>,
    images: Option<Vec<String>>,
}

#[utoipa::path(
    post,
    path = "/api/generate",
    tag = "ollama",
    request_body = GenerateRequest,
    responses((status = 200, description = "The completion (streamed as NDJSON unless `stream: false`)", content((serde_json::Value = "application/json"), (String = "application/x-ndjson"))))
)]
pub async fn generate(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    AnyJson(req): AnyJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    // An alias, a fallback chain or an experiment picks the model (each attempt with the
    // request's copy).
    let name = req.model.clone();
    crate::routing::serve_local(&state, &name, |model| {
        generate_on(state.clone(), scope.clone(), GenerateRequest { model, ..req.clone() })
    })
    .await
}

/// The request on the model it names.
async fn generate_on(
    state: AppState,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    req: GenerateRequest,
) -> Result<Response, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    check_unsupported(&req)?;
    let mut clock = Clock::start();
    let (id, name) = model_with_adapter(&state, &req.model)?;
    if req.prompt.is_empty() && req.keep_alive == Some(KeepAlive::For(std::time::Duration::ZERO)) {
        // Ollama's way to unload a model: an empty prompt with keep_alive 0.
        state
            .pool
            .store()
            .resolve(&id)
            .map_err(|_| ApiError::ModelNotFound(format!("model {:?} does not exist", req.model)))?;
        state.pool.unload(&id).await;
        return Ok(axum::Json(done_without_text(&req.model, "unload")).into_response());
    }
    let grammar = options::grammar(req.format.as_ref())?;
    let mut options = req.options.generate_options(&state)?;
    generation::check_prompt_chars(&state, "prompt", req.prompt.chars().count())?;
    let lease = generation::language_model(&state, &name, req.keep_alive).await?;
    generation::apply_settings(&lease, req.options.given(), &mut options);
    clock.model_ready();
    if req.prompt.is_empty() {
        // Ollama's way to load a model: an empty prompt.
        return Ok(axum::Json(done_without_text(&req.model, "load")).into_response());
    }
    if let Some(grammar) = grammar {
        options.constraint = Some(structured::constraint(&lease, grammar).await?);
    }
    let context = req.context.unwrap_or_default();
    // The request's system prompt, else the model's own (`minerva config`, a Modelfile).
    let system = req.system.as_deref().or(lease.settings().system.as_deref());
    let template = lease.settings().template.as_deref();
    let prompt = prompt_tokens(lease.model(), template, &req.prompt, system, req.raw, &context)?;
    options.context_shift = req.options.context_shift(&state, req.shift, lease.model(), &prompt)?;
    let mut prepared = Prepared::new(&state, "ollama", lease, prompt, options, clock);
    generation::check_context(&prepared, "prompt")?;
    generation::check_sampling(&prepared)?;
    prepared.clock.prepared();
    let slot = state.admission.admit().await?;
    prepared.clock.admitted();
    let model = req.model;
    if req.stream.unwrap_or(true) {
        let prompt = prepared.prompt.clone();
        return Ok(ndjson::stream(prepared, slot, move |piece| match piece {
            Piece::Text(text) => line(&model, text, false),
            Piece::Finished(g) => last_line(&model, &prompt, g, &clock),
        }));
    }
    let g = generation::complete(&state, &prepared).await?;
    drop(slot);
    let mut reply = last_line(&model, &prepared.prompt, &g, &clock);
    reply["response"] = serde_json::Value::String(g.text);
    Ok(axum::Json(reply).into_response())
}

/// Refuses what this server cannot do, naming the field.
fn check_unsupported(req: &GenerateRequest) -> Result<(), ApiError> {
    if req.images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid(
            "images",
            "images are not supported: no model of this server reads them",
        ));
    }
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "fill-in-the-middle is not supported"));
    }
    if req.template.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid(
            "template",
            "Ollama's Go templates are not supported; the model's own chat template applies (or send raw: true)",
        ));
    }
    if req.context.as_ref().is_some_and(|c| c.len() > MAX_CONTEXT_TOKENS) {
        return Err(ApiError::invalid(
            "context",
            format!("at most {MAX_CONTEXT_TOKENS} tokens"),
        ));
    }
    Ok(())
}

/// The tokens of a request: `context`, then the prompt through the chat template (the
/// model's settings' `own_template`, else its file's; with `system` before it) or, with
/// `raw` or a model without a template, as it is.
fn prompt_tokens(
    model: &dyn minerva_engine::LanguageModel,
    own_template: Option<&str>,
    prompt: &str,
    system: Option<&str>,
    raw: bool,
    context: &[TokenId],
) -> Result<Vec<TokenId>, ApiError> {
    let n_vocab = model.metadata().n_vocab as TokenId;
    if let Some(bad) = context.iter().find(|&&t| t < 0 || t >= n_vocab) {
        return Err(ApiError::invalid(
            "context",
            format!("token id {bad} is outside the vocabulary of {n_vocab}"),
        ));
    }
    let fresh = context.is_empty();
    // A model without a chat template (a base model) gets the prompt as it is, as Ollama's
    // default template `{{ .Prompt }}` gives it.
    let templated = !raw && (own_template.is_some() || model.metadata().chat_template.is_some());
    let new = if !templated {
        let text = match system.filter(|s| !s.is_empty() && !raw) {
            Some(system) => format!("{system}\n\n{prompt}"),
            None => prompt.to_owned(),
        };
        model.tokenize(&text, fresh, true)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = system.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", prompt));
        let template = ChatTemplate::for_model_with(model, own_template)?;
        let mut tokens = chat_prompt_tokens(model, &template, &messages)?;
        // Continuing a context: the new turn goes on without a second BOS.
        if !fresh
            && model
                .metadata()
                .bos_token
                .is_some_and(|bos| tokens.first() == Some(&bos))
        {
            tokens.remove(0);
        }
        tokens
    };
    Ok(context.iter().copied().chain(new).collect())
}

fn line(model: &str, text: &str, done: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "created_at": rfc3339(std::time::SystemTime::now()),
        "response": text,
        "done": done,
    })
}

/// The last line: the reason, the stats, and the `context` to continue from.
fn last_line(model: &str, prompt: &[TokenId], g: &Generation, clock: &Clock) -> serde_json::Value {
    let mut last = line(model, "", true);
    merge(&mut last, ndjson::stats(prompt.len(), g));
    merge(&mut last, durations(&clock));
    let context: Vec<TokenId> = prompt.iter().chain(&g.tokens).copied().collect();
    last["context"] = serde_json::json!(context);
    last
}

fn done_without_text(model: &str, reason: &str) -> serde_json::Value {
    let mut reply = line(model, "", true);
    reply["done_reason"] = serde_json::Value::String(reason.to_owned());
    reply
}
