//! Conversations longer than the context (seed 004's context-window optimization): the
//! `truncation` strategy of a chat request, or the server's default.
//!
//! - `error` (OpenAI's behaviour, the default): a 400 saying by how many tokens the prompt
//!   is over.
//! - `auto`: keep the system messages at the start and the most recent turns that fit;
//!   whole turns (a user message and the replies after it) leave from the middle, oldest
//!   first. The reply says what was dropped.
//! - `middle`: cut the middle out of the longest message (a long document pasted into one
//!   message keeps its beginning and its end).
//!
//! The prompt must leave room for the answer: `max_tokens` (up to half the context).

use minerva_engine::chat::{ChatMessage, ChatTemplate, chat_prompt_tokens};
use minerva_engine::{LanguageModel, TokenId};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// How a prompt that does not fit is made to fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    #[default]
    Error,
    Auto,
    Middle,
}

impl std::str::FromStr for Truncation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error" => Ok(Self::Error),
            "auto" => Ok(Self::Auto),
            "middle" => Ok(Self::Middle),
            other => Err(format!("{other:?} is not one of error, auto, middle")),
        }
    }
}

/// What a truncation removed, reported in the reply.
#[derive(Debug, Clone, Serialize)]
pub struct Truncated {
    pub strategy: Truncation,
    /// Whole messages dropped (`auto`).
    pub dropped_messages: usize,
    /// Prompt tokens the conversation lost.
    pub dropped_tokens: usize,
    /// The prompt's tokens before truncation.
    pub original_prompt_tokens: usize,
}

/// The marker left where `middle` cut text out.
const CUT_MARKER: &str = "\n[...]\n";

/// Most rounds of cutting before giving up (each round measures the prompt again).
const MAX_ROUNDS: usize = 8;

/// The conversation's prompt tokens, made to fit `n_ctx` with room for `max_tokens`
/// (at most half the context) by `strategy`.
pub fn fit(
    model: &dyn LanguageModel,
    template: &ChatTemplate,
    mut messages: Vec<ChatMessage>,
    n_ctx: usize,
    max_tokens: usize,
    strategy: Truncation,
) -> Result<(Vec<TokenId>, Option<Truncated>), ApiError> {
    let prompt = chat_prompt_tokens(model, template, &messages)?;
    let original = prompt.len();
    // `error` refuses only a prompt that leaves no room at all (the answer then ends at
    // the context's end); the others also make room for the answer.
    let budget = match strategy {
        Truncation::Error => n_ctx.saturating_sub(1),
        Truncation::Auto | Truncation::Middle => n_ctx.saturating_sub(max_tokens.min(n_ctx / 2)),
    }
    .max(1);
    if original <= budget {
        return Ok((prompt, None));
    }
    let over = |len: usize| {
        ApiError::invalid(
            "messages",
            format!(
                "the conversation has {len} tokens, {} more than fit the model's context of {n_ctx} \
                 with room for {} tokens of answer; shorten it, or send \"truncation\": \"auto\" or \"middle\"",
                len - budget,
                n_ctx - budget
            ),
        )
    };
    let (prompt, dropped_messages) = match strategy {
        Truncation::Error => return Err(over(original)),
        Truncation::Auto => drop_turns(model, template, &mut messages, budget)?,
        Truncation::Middle => (cut_middle(model, template, &mut messages, budget)?, 0),
    };
    if prompt.len() > budget {
        return Err(over(prompt.len()));
    }
    let truncated = Truncated {
        strategy,
        dropped_messages,
        dropped_tokens: original - prompt.len(),
        original_prompt_tokens: original,
    };
    Ok((prompt, Some(truncated)))
}

/// Drops the fewest oldest whole turns after the leading system messages that make the
/// prompt fit (or all but the last message); returns the prompt and how many messages
/// went. Dropping more never makes the prompt longer, so the cut is found by binary
/// search over the turns' starts: a few renders, not one per turn.
fn drop_turns(
    model: &dyn LanguageModel,
    template: &ChatTemplate,
    messages: &mut Vec<ChatMessage>,
    budget: usize,
) -> Result<(Vec<TokenId>, usize), ApiError> {
    let keep_front = messages.iter().take_while(|m| m.role == "system").count();
    // Where a turn may start: a user message after the system ones (a reply is never left
    // without its question); the last message (the one to answer) always stays.
    let last = messages.len().saturating_sub(1).max(keep_front);
    let mut cuts: Vec<usize> = (keep_front + 1..last).filter(|&i| messages[i].role == "user").collect();
    cuts.push(last);
    let render = |from: usize| {
        let kept: Vec<ChatMessage> = messages[..keep_front]
            .iter()
            .chain(&messages[from..])
            .cloned()
            .collect();
        chat_prompt_tokens(model, template, &kept)
    };
    // The first cut whose prompt fits, else the last.
    let (mut lo, mut hi) = (0, cuts.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if render(cuts[mid])?.len() <= budget {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let from = cuts[lo];
    let prompt = render(from)?;
    messages.drain(keep_front..from);
    Ok((prompt, from - keep_front))
}

/// Cuts the middle out of the longest message until the prompt fits.
fn cut_middle(
    model: &dyn LanguageModel,
    template: &ChatTemplate,
    messages: &mut [ChatMessage],
    budget: usize,
) -> Result<Vec<TokenId>, ApiError> {
    let mut prompt = chat_prompt_tokens(model, template, messages)?;
    for _ in 0..MAX_ROUNDS {
        if prompt.len() <= budget {
            break;
        }
        let Some(longest) = messages.iter_mut().max_by_key(|m| m.content.len()) else {
            break;
        };
        let tokens = model.tokenize(&longest.content, false, false)?;
        // The marker costs a few tokens of its own.
        let excess = prompt.len() - budget + 8;
        if excess >= tokens.len() {
            longest.content = CUT_MARKER.trim().to_owned();
        } else {
            let keep = tokens.len() - excess;
            let head = keep / 2;
            let text = |part: &[TokenId]| {
                let bytes: Vec<u8> = part.iter().flat_map(|&t| model.token_bytes(t, false)).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            longest.content = format!(
                "{}{CUT_MARKER}{}",
                text(&tokens[..head]),
                text(&tokens[tokens.len() - (keep - head)..])
            );
        }
        prompt = chat_prompt_tokens(model, template, messages)?;
    }
    Ok(prompt)
}
