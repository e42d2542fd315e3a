//! Constrained decoding: a grammar that every generated token must keep satisfiable (a
//! JSON schema, any JSON object, a Lark grammar, a regular expression), enforced by a
//! token mask at every step, so that the output always parses. The grammar engine is
//! llguidance, which llama.cpp and vLLM use; the mask is per sequence, so constrained and
//! free sequences share a batch.
//!
//! A [`Vocabulary`] (the model's tokens as llguidance's token trie) is built once per
//! model; a [`Constraint`] is one sequence's grammar state.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::llm::LanguageModel;
use crate::{EngineError, Result, TokenId};

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON schema (`response_format: {"type": "json_schema"}`).
    JsonSchema(serde_json::Value),
    /// A grammar in llguidance's Lark syntax (a raw `grammar` in the request).
    Lark(String),
    /// A regular expression the whole output matches.
    Regex(String),
}

impl Grammar {
    /// The request field a problem with this grammar is reported against.
    fn param(&self) -> &'static str {
        match self {
            Self::JsonObject | Self::JsonSchema(_) => "response_format",
            Self::Lark(_) | Self::Regex(_) => "grammar",
        }
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Self::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Self::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Self::Regex(rx) => TopLevelGrammar::from_regex(rx),
        }
    }
}

/// JSON without free whitespace between tokens (unless the schema says otherwise): a
/// small model given the choice can emit newlines forever.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(object) = schema.as_object_mut() {
        object
            .entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// A model's tokens as the grammar engine sees them; built once per model (it walks the
/// whole vocabulary) and shared by every constrained sequence.
#[derive(Clone)]
pub struct Vocabulary {
    factory: Arc<ParserFactory>,
    n_vocab: usize,
}

/// The token environment llguidance needs: the trie of token bytes, and the model's own
/// tokenizer for text it forces.
struct ModelTokens {
    trie: TokTrie,
    model: Arc<dyn LanguageModel>,
}

impl TokenizerEnv for ModelTokens {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => match self.model.tokenize(text, false, false) {
                Ok(tokens) => tokens.into_iter().filter_map(|t| u32::try_from(t).ok()).collect(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

impl Vocabulary {
    /// The vocabulary of `model`. Control tokens are marked special (llguidance's 0xFF
    /// prefix), so text never matches them; the end-of-sequence token ends a grammar.
    pub fn new(model: Arc<dyn LanguageModel>) -> Result<Self> {
        let meta = model.metadata();
        let n_vocab = meta.n_vocab;
        let eos = meta
            .eos_token
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| EngineError::invalid("response_format", "the model declares no end-of-sequence token"))?;
        let words: Vec<Vec<u8>> = (0..n_vocab)
            .map(|t| {
                let t = t as TokenId;
                let text = model.token_bytes(t, false);
                if text.is_empty() {
                    let special = model.token_bytes(t, true);
                    if special.is_empty() {
                        return Vec::new();
                    }
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend(special);
                    return marked;
                }
                text
            })
            .collect();
        let info = TokRxInfo::new(n_vocab as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: toktrie::TokEnv = Arc::new(ModelTokens { trie, model });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| EngineError::invalid("response_format", e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory: Arc::new(factory),
            n_vocab,
        })
    }
}

/// One sequence's grammar state: which tokens may come next.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    n_vocab: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Compiles `grammar` for `vocabulary`; an invalid or unsupported grammar is an
    /// [`EngineError::InvalidParameter`] naming the request field and llguidance's reason.
    pub fn new(vocabulary: &Vocabulary, grammar: &Grammar) -> Result<Self> {
        let invalid = |e: String| EngineError::invalid(grammar.param(), e);
        let parser = vocabulary
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(e));
        }
        Ok(Self {
            matcher,
            n_vocab: vocabulary.n_vocab,
        })
    }

    /// Sets the logits of every token the grammar does not allow next to −∞. Once the
    /// grammar is complete only the end-of-sequence token stays.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| EngineError::Decode(format!("grammar: {e}")))?;
        for (token, logit) in logits.iter_mut().enumerate().take(self.n_vocab) {
            if !allowed.is_allowed(token as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the grammar past `token` (one the mask allowed).
    pub fn accept(&mut self, token: TokenId) -> Result<()> {
        let token = u32::try_from(token).map_err(|_| EngineError::Decode(format!("token {token} out of range")))?;
        self.matcher
            .consume_token(token)
            .map_err(|e| EngineError::Decode(format!("grammar: {e}")))
    }

    /// Whether the grammar is complete and allows nothing more.
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }
}
