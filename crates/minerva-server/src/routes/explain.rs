//! `POST /v1/explain`: which parts of a prompt a completion rests on, by occlusion. The
//! completion (given, or generated greedily) is scored after the whole prompt and after
//! the prompt with each word (or token) removed; a unit's importance is how much the
//! completion's log-probability drops without it. All the variants are scoring requests
//! of the model's scheduler, batched like any other requests; the completion's own
//! per-token log-probabilities come back beside them.

use axum::Json;
use axum::extract::State;
use minerva_engine::generate::GenerateOptions;
use minerva_engine::sampling::{SampledToken, SamplingParams};
use minerva_engine::{LanguageModel, TokenId};
use minerva_workers::GenerationEvent;
use serde::Deserialize;
use serde_json::json;

use super::generation;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// Most prompt units occluded in one request (each is one scored variant).
const MAX_UNITS: usize = 128;
/// Most completion tokens scored (each variant returns a logits row per token).
const MAX_COMPLETION_TOKENS: usize = 64;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "smollm2-135m-instruct", "prompt": "The capital of France is", "max_tokens": 2}))]
pub struct ExplainRequest {
    model: String,
    prompt: String,
    /// The completion to explain; without it, the greedy one of `max_tokens` tokens.
    completion: Option<String>,
    max_tokens: Option<usize>,
    /// `word` (default): occlude whole words; `token`: one token at a time.
    #[serde(default)]
    granularity: Granularity,
    /// What an occluded word becomes: nothing (the default: the word is removed), or
    /// this text (a placeholder such as ` _` that keeps the sentence's length).
    baseline: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Granularity {
    #[default]
    Word,
    Token,
}

/// A run of prompt tokens occluded together.
struct Unit {
    start: usize,
    end: usize,
    text: String,
}

#[utoipa::path(
    post,
    path = "/v1/explain",
    tag = "minerva",
    request_body = ExplainRequest,
    responses((status = 200, description = "Each prompt unit with how much removing it changes the completion", body = serde_json::Value))
)]
pub async fn explain(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ExplainRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    generation::check_prompt_chars(&state, "prompt", req.prompt.chars().count())?;
    let lease = generation::language_model(&state, &req.model, None).await?;
    let model = lease.model();
    let prompt = model.tokenize(&req.prompt, true, false)?;
    let units = units(model, &prompt, req.granularity);
    if units.is_empty() {
        return Err(ApiError::invalid("prompt", "has no words to occlude"));
    }
    if units.len() > MAX_UNITS {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "has {} {}s; at most {MAX_UNITS} are occluded in one request",
                units.len(),
                if req.granularity == Granularity::Word {
                    "word"
                } else {
                    "token"
                }
            ),
        ));
    }
    let completion: Vec<TokenId> = match &req.completion {
        Some(text) => model.tokenize(text, false, false)?,
        None => {
            let max_tokens = req.max_tokens.unwrap_or(16);
            if max_tokens == 0 || max_tokens > MAX_COMPLETION_TOKENS {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("must be between 1 and {MAX_COMPLETION_TOKENS}"),
                ));
            }
            let options = GenerateOptions {
                max_tokens,
                stop: Vec::new(),
                sampling: SamplingParams::default(),
                constraint: None,
                context_shift: None,
                n_ctx: None,
            };
            wait(&state, lease.submit(prompt.clone(), options)).await?.tokens
        }
    };
    if completion.is_empty() {
        return Err(ApiError::invalid("completion", "is empty: nothing to explain"));
    }
    if completion.len() > MAX_COMPLETION_TOKENS {
        return Err(ApiError::invalid(
            "completion",
            format!(
                "has {} tokens; at most {MAX_COMPLETION_TOKENS} are scored",
                completion.len()
            ),
        ));
    }
    if prompt.len() + completion.len() >= lease.n_ctx() as usize {
        return Err(ApiError::invalid(
            "prompt",
            format!("prompt and completion exceed the context of {}", lease.n_ctx()),
        ));
    }

    let baseline = model.tokenize(req.baseline.as_deref().unwrap_or(""), false, false)?;
    // The whole prompt first, then the prompt with each unit occluded: all queued at once.
    let variant = |skip: Option<&Unit>| -> (Vec<TokenId>, usize) {
        let mut tokens: Vec<TokenId> = match skip {
            None => prompt.clone(),
            Some(u) => [&prompt[..u.start], &baseline[..], &prompt[u.end..]].concat(),
        };
        let from = tokens.len();
        tokens.extend_from_slice(&completion);
        (tokens, from)
    };
    let receivers: Vec<_> = std::iter::once(None)
        .chain(units.iter().map(Some))
        .map(|skip| {
            let (tokens, from) = variant(skip);
            lease.score(tokens, from)
        })
        .collect();
    let mut scores: Vec<Vec<SampledToken>> = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        scores.push(wait(&state, receiver).await?.logprobs);
    }
    let total = |s: &[SampledToken]| s.iter().map(|t| f64::from(t.logprob)).sum::<f64>();
    let baseline = total(&scores[0]);
    let importance: Vec<f64> = scores[1..].iter().map(|s| baseline - total(s)).collect();
    let mut ranked: Vec<usize> = (0..units.len()).collect();
    ranked.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]));
    let mut rank = vec![0; units.len()];
    for (r, &i) in ranked.iter().enumerate() {
        rank[i] = r + 1;
    }
    let prompt_units: Vec<_> = units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            json!({
                "text": u.text,
                "tokens": &prompt[u.start..u.end],
                "importance": importance[i],
                "rank": rank[i],
            })
        })
        .collect();
    let completion_tokens: Vec<_> = scores[0]
        .iter()
        .map(|t| json!({ "token": t.token, "text": piece(model, t.token), "logprob": t.logprob }))
        .collect();
    let text: String = completion.iter().map(|&t| piece(model, t)).collect();
    Ok(Json(json!({
        "object": "explanation",
        "model": req.model,
        "method": "occlusion",
        "granularity": if req.granularity == Granularity::Word { "word" } else { "token" },
        "completion": { "text": text, "logprob": baseline, "tokens": completion_tokens },
        "prompt": prompt_units,
    })))
}

/// Waits for a request's result (bounded by the request timeout).
async fn wait(
    state: &AppState,
    mut events: tokio::sync::mpsc::UnboundedReceiver<GenerationEvent>,
) -> Result<minerva_engine::generate::Generation, ApiError> {
    let timeout = state.config.request_timeout;
    let result = tokio::time::timeout(timeout, async {
        while let Some(event) = events.recv().await {
            if let GenerationEvent::Done(result) = event {
                return result.map_err(ApiError::from);
            }
        }
        Err(ApiError::Internal("the model's worker stopped".into()))
    })
    .await
    .map_err(|_| ApiError::Timeout(timeout.as_secs()))?;
    result
}

fn piece(model: &dyn LanguageModel, token: TokenId) -> String {
    String::from_utf8_lossy(&model.token_bytes(token, false)).into_owned()
}

/// The prompt's units: each token, or each word (a token starting with a space or
/// punctuation starts a new unit). Control tokens (BOS) are never occluded.
fn units(model: &dyn LanguageModel, prompt: &[TokenId], granularity: Granularity) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    for (i, &token) in prompt.iter().enumerate() {
        let text = piece(model, token);
        if text.is_empty() {
            continue; // a control token, rendered as nothing
        }
        let starts_word = text.starts_with(|c: char| c.is_whitespace() || c.is_ascii_punctuation())
            || units.last().is_none_or(|u| u.end != i);
        match units.last_mut() {
            Some(unit) if granularity == Granularity::Word && !starts_word => {
                unit.end = i + 1;
                unit.text.push_str(&text);
            }
            _ => units.push(Unit {
                start: i,
                end: i + 1,
                text,
            }),
        }
    }
    units
}
