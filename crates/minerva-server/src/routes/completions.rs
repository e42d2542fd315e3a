//! `POST /v1/completions` (the legacy text-completion API).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use minerva_engine::generate::Generation;
use minerva_engine::{LanguageModel, TokenId};
use minerva_pool::KeepAlive;
use serde::Deserialize;

use super::generation::{self, ContextFields, Prepared, SamplingFields, StopSpec, StreamOptions};
use super::stream::{self, StreamPiece};
use super::structured::{self, GrammarFields};
use super::timing;
use crate::error::ApiError;
use crate::extract::ApiJsonRaw;
use crate::state::AppState;

/// Most prompts in one request.
const MAX_PROMPTS: usize = 16;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "gemma-3-270m", "prompt": "The capital of France is", "max_tokens": 8}))]
pub struct CompletionRequest {
    model: String,
    prompt: PromptSpec,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    stop: Option<StopSpec>,
    max_tokens: Option<i64>,
    #[serde(flatten)]
    sampling: SamplingFields,
    /// Legacy logprobs: how many alternatives per token.
    logprobs: Option<usize>,
    #[serde(default)]
    echo: bool,
    n: Option<u32>,
    #[serde(flatten)]
    grammar: GrammarFields,
    #[serde(flatten)]
    context: ContextFields,
    /// Ollama's extension: how long the model stays loaded after this request.
    #[schema(value_type = Option<crate::openapi::KeepAliveDoc>)]
    keep_alive: Option<KeepAlive>,
    /// Minerva's extension: the scale of the LoRA adapter a `BASE+ADAPTER` model names
    /// (its update times `scale · alpha / rank`; 1 by default, 0 is the base).
    #[schema(minimum = -4.0, maximum = 4.0)]
    adapter_scale: Option<f32>,
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of those.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    #[schema(value_type = Vec<i32>)]
    Tokens(Vec<TokenId>),
    #[schema(value_type = Vec<Vec<i32>>)]
    TokenLists(Vec<Vec<TokenId>>),
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    request_body = CompletionRequest,
    responses((status = 200, description = "The completion (with `stream: true`, server-sent chunks ending in `[DONE]`)", content((serde_json::Value = "application/json"), (crate::openapi::SseEvent = "text/event-stream"))))
)]
pub async fn completions(
    State(state): State<AppState>,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    headers: axum::http::HeaderMap,
    ApiJsonRaw(req, raw): ApiJsonRaw<CompletionRequest>,
) -> Result<Response, ApiError> {
    // An alias, a fallback chain, an experiment or a remote backend picks what serves
    // (each attempt with the request's copy; a remote one gets the body as it came).
    let name = req.model.clone();
    crate::routing::serve_openai(&state, &headers, raw, &name, "/completions", |model| {
        completions_on(state.clone(), scope.clone(), CompletionRequest { model, ..req.clone() })
    })
    .await
}

/// The request on the model it names.
async fn completions_on(
    state: AppState,
    scope: Option<axum::Extension<crate::middleware::Scope>>,
    req: CompletionRequest,
) -> Result<Response, ApiError> {
    crate::middleware::check_keep_alive(scope.as_deref(), &req.keep_alive)?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            "only n = 1 is supported for completions; send several prompts instead",
        ));
    }
    let grammar = req.grammar.grammar()?;
    let mut options = generation::options(
        &state,
        &req.sampling,
        req.max_tokens.or(Some(16)),
        req.stop,
        req.logprobs,
    )?;
    let mut clock = timing::Clock::start();
    let lease = generation::language_model_scaled(&state, &req.model, req.keep_alive, req.adapter_scale).await?;
    clock.model_ready();
    generation::apply_settings(&lease, req.sampling.given(), &mut options);
    if let Some(grammar) = grammar {
        options.constraint = Some(structured::constraint(&lease, grammar).await?);
    }
    // Tokenizing and the checks: no await in between.
    let prepare = tracing::info_span!("prepare").entered();
    let prompts = prompt_tokens(&state, lease.model(), req.prompt)?;
    if req.stream && prompts.len() > 1 {
        return Err(ApiError::invalid("prompt", "streaming supports one prompt per request"));
    }
    let prepared: Vec<Prepared> = prompts
        .into_iter()
        .map(|prompt| {
            let mut options = options.clone();
            options.context_shift = req.context.shift(&state, lease.model(), &prompt, "n_keep")?;
            Ok(Prepared::new(
                &state,
                "completion",
                lease.clone(),
                prompt,
                options,
                clock,
            ))
        })
        .collect::<Result<_, ApiError>>()?;
    for p in &prepared {
        generation::check_context(p, "prompt")?;
        generation::check_sampling(p)?;
    }
    clock.prepared();
    drop(prepare);
    let slot = state.admission.admit().await?;
    clock.admitted();
    let mut prepared = prepared;
    for p in &mut prepared {
        p.clock = clock;
    }
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let Some(prepared) = prepared.into_iter().next() else {
            return Err(ApiError::invalid("prompt", "send one prompt"));
        };
        let mut response = stream_completion(prepared, slot, req.model, req.echo, include_usage);
        clock.set_header(&mut response, None);
        return Ok(response);
    }
    let (mut reply, first) = complete_all(&state, &prepared, req.model, req.echo, req.logprobs.is_some()).await?;
    drop(slot);
    reply["timings"] = clock.timings(&first, prepared[0].prompt.len());
    let mut response = axum::Json(reply).into_response();
    clock.set_header(&mut response, Some(&first));
    Ok(response)
}

/// The prompts of a request as token ids, each checked: 1 to [`MAX_PROMPTS`] of them, none
/// empty, every id in the vocabulary.
fn prompt_tokens(state: &AppState, model: &dyn LanguageModel, spec: PromptSpec) -> Result<Vec<Vec<TokenId>>, ApiError> {
    let n_vocab = model.metadata().n_vocab as TokenId;
    let prompts: Vec<Vec<TokenId>> = match spec {
        PromptSpec::Text(text) => vec![tokenize(state, model, &text)?],
        PromptSpec::Texts(texts) => texts
            .iter()
            .map(|t| tokenize(state, model, t))
            .collect::<Result<_, _>>()?,
        PromptSpec::Tokens(tokens) => vec![tokens],
        PromptSpec::TokenLists(lists) => lists,
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!("send between 1 and {MAX_PROMPTS} prompts"),
        ));
    }
    for prompt in &prompts {
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "a prompt is empty"));
        }
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t >= n_vocab) {
            return Err(ApiError::invalid(
                "prompt",
                format!("token id {bad} is outside the vocabulary of {n_vocab}"),
            ));
        }
    }
    Ok(prompts)
}

/// One prompt's completion as `text_completion` events.
fn stream_completion(
    prepared: Prepared,
    slot: crate::state::Slot,
    model_name: String,
    echo: bool,
    include_usage: bool,
) -> Response {
    let id = generation::response_id("cmpl");
    let created = generation::created();
    let echo = echo.then(|| detokenize(prepared.model(), &prepared.prompt));
    let chunk = move |text: &str, finish: Option<&str>| {
        serde_json::json!({
            "id": id, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }],
        })
    };
    let first = echo.map(|echo| chunk(&echo, None));
    let render = move |piece: StreamPiece<'_>| match piece {
        StreamPiece::Text(text) => chunk(text, None),
        StreamPiece::Finished(g) => chunk("", Some(generation::finish_reason(g.finish_reason))),
    };
    stream::sse(prepared, slot, first, include_usage, render).into_response()
}

/// Every prompt's completion, one choice each, as one `text_completion`.
async fn complete_all(
    state: &AppState,
    prepared: &[Prepared],
    model_name: String,
    echo: bool,
    want_logprobs: bool,
) -> Result<(serde_json::Value, Generation), ApiError> {
    let id = generation::response_id("cmpl");
    let created = generation::created();
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens, mut cached_tokens) = (0, 0, 0);
    let mut first = None;
    for (index, p) in prepared.iter().enumerate() {
        let g = generation::complete(state, p).await?;
        prompt_tokens += p.prompt.len();
        completion_tokens += g.tokens.len();
        cached_tokens += g.cached_tokens;
        let prefix = if echo {
            detokenize(p.model(), &p.prompt)
        } else {
            String::new()
        };
        let logprobs = want_logprobs.then(|| legacy_logprobs(p, &g, prefix.len()));
        choices.push(serde_json::json!({
            "index": index,
            "text": format!("{prefix}{}", g.text),
            "logprobs": logprobs,
            "finish_reason": generation::finish_reason(g.finish_reason),
        }));
        first.get_or_insert(g);
    }
    let reply = serde_json::json!({
        "id": id, "object": "text_completion", "created": created, "model": model_name,
        "choices": choices,
        "usage": generation::usage(prompt_tokens, completion_tokens, cached_tokens),
    });
    let first = first.ok_or_else(|| ApiError::Internal("no prompt was completed".into()))?;
    Ok((reply, first))
}

fn tokenize(state: &AppState, model: &dyn LanguageModel, text: &str) -> Result<Vec<TokenId>, ApiError> {
    generation::check_prompt_chars(state, "prompt", text.chars().count())?;
    Ok(model.tokenize(text, true, false)?)
}

fn detokenize(model: &dyn LanguageModel, tokens: &[TokenId]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|&t| model.token_bytes(t, false)).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The completions API's logprobs: parallel lists of tokens, their logprobs, the top
/// alternatives as `{token: logprob}` maps, and each token's offset in the text.
fn legacy_logprobs(p: &Prepared, g: &Generation, start: usize) -> serde_json::Value {
    let model = p.model();
    let mut offset = start;
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    for sampled in &g.logprobs {
        let text = generation::token_text(model, sampled.token);
        text_offset.push(offset);
        offset += text.len();
        tokens.push(text);
        token_logprobs.push(sampled.logprob);
        let top: serde_json::Map<String, serde_json::Value> = sampled
            .top
            .iter()
            .map(|&(t, lp)| (generation::token_text(model, t), serde_json::json!(lp)))
            .collect();
        top_logprobs.push(top);
    }
    serde_json::json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset })
}
