//! Speculative decoding with a draft model, for users who bring a pair: a smaller (or more
//! quantized) model that shares the target's vocabulary guesses each greedy sequence's
//! next tokens, and the scheduler verifies the guess in the target's next pass exactly as
//! it verifies a prompt-lookup draft ([`crate::draft`]), so the output is the target's.
//! Prompt lookup only guesses text the sequence already holds; a draft model guesses new
//! text too.
//!
//! The draft model has a session of its own, with the same sequence ids as the target's,
//! and remembers the tokens whose KV it holds for each. Before drafting it catches up
//! with what the target has accepted since (cutting its KV back to the part they share,
//! then reading the tokens after it, all sequences in one pass), then guesses greedily,
//! one token per pass for all drafting sequences together, while its own probability of
//! the guess stays at or above [`P_MIN`] (llama.cpp's `--draft-p-min`): an unsure guess
//! is seldom accepted and costs the target a token's worth of its pass.

use std::path::Path;
use std::sync::Arc;

use minerva_engine::llm::{LogitsWanted, RopeScaling, SequenceInput};
use minerva_engine::{EngineError, KvType, LanguageModel, SeqId, Session, SessionParams, TokenId};

use crate::prefix_cache::common_prefix;

/// Lowest probability the draft model gives its guess for the draft to go on.
const P_MIN: f32 = 0.75;

/// A draft model and its session.
pub(crate) struct DraftModel {
    session: Box<dyn Session>,
    /// Per sequence id: the tokens whose KV the draft session holds, from position 0.
    held: Vec<Vec<TokenId>>,
    /// The model, kept alive as long as its session.
    _model: Arc<dyn LanguageModel>,
}

/// One sequence that wants a draft.
pub(crate) struct Want<'a> {
    pub(crate) seq: SeqId,
    /// The tokens in the target's KV for it.
    pub(crate) kv: &'a [TokenId],
    /// The token the target evaluates next (its draft follows this one).
    pub(crate) next: TokenId,
    /// Most tokens to guess.
    pub(crate) limit: usize,
}

impl DraftModel {
    /// Loads the draft model at `path` for `target`, with a session shaped as the target's
    /// `params` (its KV in f16, which any draft model takes). Refused when the two do not
    /// share a vocabulary: the draft's token ids would mean other text to the target.
    pub(crate) fn load(path: &Path, target: &dyn LanguageModel, params: SessionParams) -> Result<Self, EngineError> {
        let model = minerva_engine::llm::load(path)?;
        same_vocabulary(target, model.as_ref()).map_err(|reason| {
            EngineError::invalid(
                "draft_model",
                format!("{} cannot draft for this model: {reason}", path.display()),
            )
        })?;
        // Its own positions, unscaled: the target's RoPE scaling is for the target's
        // training length.
        let session = model.new_session(SessionParams {
            kv_type: KvType::F16,
            flash_attention: true,
            rope: RopeScaling::Model,
            ..params
        })?;
        Ok(Self {
            session,
            held: vec![Vec::new(); params.n_seq_max as usize],
            _model: model,
        })
    }

    /// Each sequence's guess: up to its `limit` tokens, in the order of `wants`.
    pub(crate) fn draft(&mut self, wants: &[Want<'_>]) -> Result<Vec<Vec<TokenId>>, EngineError> {
        let mut drafts = vec![Vec::new(); wants.len()];
        // The tokens each sequence still has to read: its history (the target's KV, then
        // `next`) after what the draft session holds of it, the last token always (its
        // logits give the first guess).
        let mut pending: Vec<(usize, usize)> = Vec::new(); // (want, first position to read)
        for (i, want) in wants.iter().enumerate() {
            if want.limit == 0 {
                continue;
            }
            let slot = want.seq.0 as usize;
            let history_len = want.kv.len() + 1;
            let held = &self.held[slot];
            let shared = common_prefix(held, want.kv).min(history_len - 1);
            if shared < held.len() {
                if shared == 0 {
                    self.session.free_sequence(want.seq);
                } else {
                    self.session.truncate_sequence(want.seq, shared as u32)?;
                }
                self.held[slot].truncate(shared);
            }
            pending.push((i, shared));
        }
        // Catch up in one pass of at most the batch, so that a long prompt never holds up
        // the step (a sequence with more to read goes on at the next step, and drafts from
        // the step its last token is read); the pass that reads a sequence's last token
        // gives its first guess.
        let n_batch = self.session.params().n_batch as usize;
        let mut guesses: Vec<(usize, TokenId, f32)> = Vec::new();
        if !pending.is_empty() {
            let mut budget = n_batch;
            let mut taken: Vec<(usize, usize, usize)> = Vec::new(); // (pending index, from, to)
            for (p, &(i, from)) in pending.iter().enumerate() {
                if budget == 0 {
                    break;
                }
                let history_len = wants[i].kv.len() + 1;
                let to = history_len.min(from + budget);
                budget -= to - from;
                taken.push((p, from, to));
            }
            let histories: Vec<Vec<TokenId>> = taken
                .iter()
                .map(|&(p, from, to)| {
                    let want = &wants[pending[p].0];
                    (from..to)
                        .map(|at| want.kv.get(at).copied().unwrap_or(want.next))
                        .collect()
                })
                .collect();
            let inputs: Vec<SequenceInput<'_>> = taken
                .iter()
                .zip(&histories)
                .map(|(&(p, from, to), tokens)| {
                    let want = &wants[pending[p].0];
                    SequenceInput {
                        seq: want.seq,
                        tokens,
                        start_pos: from as u32,
                        logits: if to == want.kv.len() + 1 {
                            LogitsWanted::Last
                        } else {
                            LogitsWanted::None
                        },
                    }
                })
                .collect();
            let rows = self.session.decode(&inputs)?;
            for ((&(p, _, _), tokens), row) in taken.iter().zip(&histories).zip(&rows) {
                let i = pending[p].0;
                self.held[wants[i].seq.0 as usize].extend_from_slice(tokens);
                if let Some(logits) = row.first() {
                    let (token, p) = top(logits);
                    guesses.push((i, token, p));
                }
            }
        }
        // Guess on, one token per pass for every sequence whose last guess was sure enough
        // and whose draft is not full.
        loop {
            let mut going = Vec::new();
            for &(i, token, p) in &guesses {
                if p < P_MIN {
                    continue;
                }
                drafts[i].push(token);
                if drafts[i].len() < wants[i].limit {
                    going.push(i);
                }
            }
            if going.is_empty() {
                break;
            }
            let tokens: Vec<[TokenId; 1]> = going.iter().map(|&i| [*drafts[i].last().unwrap_or(&0)]).collect();
            let inputs: Vec<SequenceInput<'_>> = going
                .iter()
                .zip(&tokens)
                .map(|(&i, token)| SequenceInput {
                    seq: wants[i].seq,
                    tokens: token,
                    start_pos: self.held[wants[i].seq.0 as usize].len() as u32,
                    logits: LogitsWanted::Last,
                })
                .collect();
            let rows = self.session.decode(&inputs)?;
            guesses = going
                .iter()
                .zip(&rows)
                .map(|(&i, row)| {
                    let (token, p) = top(row[0]);
                    (i, token, p)
                })
                .collect();
            drop(rows);
            for (&i, token) in going.iter().zip(&tokens) {
                self.held[wants[i].seq.0 as usize].push(token[0]);
            }
        }
        Ok(drafts)
    }

    /// Frees a sequence's KV (the target's sequence ended).
    pub(crate) fn forget(&mut self, seq: SeqId) {
        if let Some(held) = self.held.get_mut(seq.0 as usize)
            && !held.is_empty()
        {
            held.clear();
            self.session.free_sequence(seq);
        }
    }

    /// Whether the draft session's passes cannot follow a share of the cores (see
    /// [`Session::fixed_threads`]).
    pub(crate) fn fixed_threads(&self) -> bool {
        self.session.fixed_threads()
    }

    /// Frees every sequence's KV (after an error, so that the next draft starts afresh).
    pub(crate) fn reset(&mut self) {
        for seq in 0..self.held.len() {
            self.forget(SeqId(seq as u32));
        }
    }
}

/// The most likely token of a logits row and its probability.
fn top(logits: &[f32]) -> (TokenId, f32) {
    let (best, max) =
        logits.iter().copied().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, v)| if v > bv { (i, v) } else { (bi, bv) },
        );
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    (best as TokenId, 1.0 / sum)
}

/// Why `draft` cannot draft for `target`, if it cannot: the vocabularies must have the
/// same size and spell every token alike (as llama.cpp's speculative example requires).
fn same_vocabulary(target: &dyn LanguageModel, draft: &dyn LanguageModel) -> Result<(), String> {
    let (t, d) = (target.metadata().n_vocab, draft.metadata().n_vocab);
    if t != d {
        return Err(format!("its vocabulary has {d} tokens, the model's {t}"));
    }
    if let Some(token) = (0..t as TokenId).find(|&id| target.token_bytes(id, true) != draft.token_bytes(id, true)) {
        return Err(format!(
            "token {token} is {:?} in it and {:?} in the model",
            String::from_utf8_lossy(&draft.token_bytes(token, true)),
            String::from_utf8_lossy(&target.token_bytes(token, true))
        ));
    }
    Ok(())
}
