//! The generation loop: prefill a prompt, then sample token by token until EOS, a stop
//! sequence or the token limit, streaming text as it becomes final.

use std::time::Instant;

use crate::constraint::Constraint;
use crate::detokenize::Utf8Stream;
use crate::llm::{LanguageModel, LogitsWanted, SeqId, SequenceInput, Session};
use crate::sampling::{SampledToken, Sampler, SamplingParams};
use crate::{EngineError, Result, TokenId};

/// What to generate after the prompt.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Strings that end the generation; the text is cut just before the first one.
    pub stop: Vec<String>,
    /// How tokens are chosen.
    pub sampling: SamplingParams,
    /// A grammar the output must match (structured outputs), as compiled for the model.
    pub constraint: Option<Constraint>,
    /// What happens when prompt and reply fill the context: `None` ends the generation
    /// (`length`); a [`ContextShift`] makes room and goes on.
    pub context_shift: Option<ContextShift>,
    /// A smaller context for this request than the session gives (Ollama's `num_ctx`).
    pub n_ctx: Option<u32>,
}

impl GenerateOptions {
    /// The context of this request in a session that gives `n_ctx` per request.
    pub fn context(&self, n_ctx: u32) -> u32 {
        self.n_ctx.map_or(n_ctx, |own| own.min(n_ctx))
    }
}

/// Context shift (llama.cpp's `--context-shift`): when a generation fills its context,
/// the first `n_keep` tokens stay, half of the rest (the oldest) is dropped, and the
/// generation goes on with what is left. The model forgets what was dropped; the reply's
/// text is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextShift {
    /// Tokens at the start that are never dropped (the system prompt, say). Capped at half
    /// the context, so that a shift always frees room.
    pub n_keep: usize,
}

impl ContextShift {
    /// For a sequence of `len` tokens in a context of `n_ctx`: how many stay at the start
    /// and how many after them are dropped.
    pub fn plan(self, len: usize, n_ctx: usize) -> (usize, usize) {
        let n_keep = self.n_keep.min(n_ctx / 2).min(len);
        (n_keep, (len - n_keep) / 2)
    }
}

/// Receives generated text as it becomes final, and can stop the generation.
///
/// Any `FnMut(&str)` closure is a sink that never cancels.
pub trait TokenSink {
    /// Called with each piece of final text.
    fn text(&mut self, text: &str);
    /// Checked before the prompt is evaluated and before every generated token; `true`
    /// ends the generation (the client went away).
    fn cancelled(&self) -> bool {
        false
    }
}

impl<F: FnMut(&str)> TokenSink for F {
    fn text(&mut self, text: &str) {
        self(text)
    }
}

/// Why the generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token or a stop sequence.
    Stop,
    /// The token limit or the end of the context was reached.
    Length,
    /// The sink cancelled it.
    Cancelled,
}

/// Wall-clock figures of one generation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Time spent evaluating the prompt.
    pub prompt_ms: f64,
    /// Time spent generating (sampling plus one forward pass per token).
    pub generation_ms: f64,
    /// Prompt tokens evaluated per second.
    pub prompt_tokens_per_second: f64,
    /// Tokens generated per second.
    pub generation_tokens_per_second: f64,
}

/// The result of a generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// Generated token ids (an end-of-generation token is not included).
    pub tokens: Vec<TokenId>,
    /// Generated text, cut before a stop sequence.
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// One entry per generated token with its log probability and alternatives, when
    /// the sampling params ask for them (empty otherwise).
    pub logprobs: Vec<SampledToken>,
    /// Prompt tokens whose KV state was reused from a cached prefix instead of computed.
    pub cached_tokens: usize,
    /// Timings.
    pub timings: Timings,
}

/// What a [`SequenceGenerator`] wants after it has been given logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Evaluate this token (at the next position) and hand back its logits.
    Continue(TokenId),
    /// The generation is over; call [`SequenceGenerator::finish`].
    Finished(FinishReason),
}

/// One generation between forward passes: it samples from the logits it is given, turns
/// tokens into final text for its sink, and says when it is done. It never runs the model,
/// so the single-sequence [`generate`] and a scheduler batching many sequences drive the
/// same logic.
pub struct SequenceGenerator {
    sampler: Sampler,
    constraint: Option<Constraint>,
    /// The logits row with the grammar's mask applied (reused between steps).
    masked: Vec<f32>,
    stream: Utf8Stream,
    stops: StopMatcher,
    max_tokens: usize,
    n_ctx: usize,
    /// The context does not end the generation: the caller shifts it.
    shifts: bool,
    prompt_len: usize,
    tokens: Vec<TokenId>,
    logprobs: Vec<SampledToken>,
    cached_tokens: usize,
    started: Instant,
    first_token_at: Option<Instant>,
    decoded: usize,
}

impl SequenceGenerator {
    /// Checks `options` and `prompt` against the model and a context of `n_ctx` tokens per
    /// sequence, and starts the clock.
    pub fn new(model: &dyn LanguageModel, prompt: &[TokenId], options: &GenerateOptions, n_ctx: u32) -> Result<Self> {
        options.sampling.validate(model.metadata().n_vocab)?;
        let n_ctx = options.context(n_ctx);
        if options.max_tokens == 0 {
            return Err(EngineError::invalid("max_tokens", "must be at least 1"));
        }
        if prompt.is_empty() {
            return Err(EngineError::invalid(
                "prompt",
                "is empty (the model adds no BOS token to start from)",
            ));
        }
        if prompt.len() >= n_ctx as usize {
            return Err(EngineError::ContextOverflow {
                tokens: prompt.len(),
                n_ctx,
            });
        }
        let mut sampler = Sampler::new(options.sampling.clone());
        sampler.remember(prompt);
        Ok(Self {
            sampler,
            constraint: options.constraint.clone(),
            masked: Vec::new(),
            stream: Utf8Stream::new(),
            stops: StopMatcher::new(options.stop.clone()),
            max_tokens: options.max_tokens,
            n_ctx: n_ctx as usize,
            shifts: options.context_shift.is_some(),
            prompt_len: prompt.len(),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            cached_tokens: 0,
            started: Instant::now(),
            first_token_at: None,
            decoded: 0,
        })
    }

    /// Records how many prompt tokens came from a cached prefix.
    pub fn set_cached_tokens(&mut self, n: usize) {
        self.cached_tokens = n;
    }

    /// Takes the logits after the last evaluated token (the prompt's last, then each token
    /// this returned), samples the next token and hands `sink` the text that became final.
    pub fn accept(&mut self, model: &dyn LanguageModel, logits: &[f32], sink: &mut dyn TokenSink) -> Step {
        let logits = match &mut self.constraint {
            Some(constraint) => {
                self.masked.clear();
                self.masked.extend_from_slice(logits);
                if let Err(e) = constraint.mask(&mut self.masked) {
                    tracing::warn!(error = %e, "the grammar failed; the generation ends here");
                    return Step::Finished(FinishReason::Stop);
                }
                &self.masked[..]
            }
            None => logits,
        };
        let token = self.sampler.sample(logits);
        if self.first_token_at.is_none() {
            self.first_token_at = Some(Instant::now());
        } else {
            self.decoded += 1;
        }
        if model.is_end_of_generation(token) {
            return Step::Finished(FinishReason::Stop);
        }
        self.tokens.push(token);
        self.logprobs.extend(self.sampler.logprobs(logits, token));
        let piece = self.stream.push(&model.token_bytes(token, false));
        if self.stops.push(&piece, sink) {
            return Step::Finished(FinishReason::Stop);
        }
        if let Some(constraint) = &mut self.constraint {
            if let Err(e) = constraint.accept(token) {
                tracing::warn!(error = %e, "the grammar refused a token it allowed; the generation ends here");
                return Step::Finished(FinishReason::Stop);
            }
            if constraint.is_stopped() {
                // The grammar is complete and allows nothing more (not even free text).
                return Step::Finished(FinishReason::Stop);
            }
        }
        let context_full = !self.shifts && self.prompt_len + self.tokens.len() >= self.n_ctx;
        if self.tokens.len() >= self.max_tokens || context_full {
            return Step::Finished(FinishReason::Length);
        }
        Step::Continue(token)
    }

    /// Tokens it may still generate.
    pub fn remaining(&self) -> usize {
        self.max_tokens.saturating_sub(self.tokens.len())
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// Ends the generation for `reason`: releases text held back for a stop sequence or an
    /// unfinished character, and returns the result.
    pub fn finish(mut self, mut reason: FinishReason, sink: &mut dyn TokenSink) -> Generation {
        if !self.stops.stopped() {
            let tail = self.stream.finish();
            if self.stops.push(&tail, sink) {
                reason = FinishReason::Stop;
            }
            self.stops.flush(sink);
        }
        let done = Instant::now();
        let prompt_done = self.first_token_at.unwrap_or(done);
        let prompt_s = (prompt_done - self.started).as_secs_f64();
        let generation_s = (done - prompt_done).as_secs_f64();
        let per_second = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let computed = self.prompt_len - self.cached_tokens;
        Generation {
            text: self.stops.into_text(),
            finish_reason: reason,
            cached_tokens: self.cached_tokens,
            timings: Timings {
                prompt_ms: prompt_s * 1e3,
                generation_ms: generation_s * 1e3,
                prompt_tokens_per_second: per_second(computed, prompt_s),
                generation_tokens_per_second: per_second(self.decoded, generation_s),
            },
            tokens: self.tokens,
            logprobs: self.logprobs,
        }
    }
}

/// Generates a continuation of `prompt` in sequence `seq` of `session`, handing `sink`
/// every piece of text as soon as it is final (valid UTF-8, not part of a stop sequence).
/// The sequence's previous KV state is discarded first.
pub fn generate(
    model: &dyn LanguageModel,
    session: &mut dyn Session,
    seq: SeqId,
    prompt: &[TokenId],
    options: &GenerateOptions,
    sink: &mut dyn TokenSink,
) -> Result<Generation> {
    let mut generator = SequenceGenerator::new(model, prompt, options, session.params().n_ctx)?;
    session.free_sequence(seq);
    // A request may have waited in a queue; its client may be gone already.
    if sink.cancelled() {
        return Ok(generator.finish(FinishReason::Cancelled, sink));
    }
    let first = prefill(session, seq, prompt)?;
    let mut step = generator.accept(model, &first, sink);
    let mut pos = prompt.len();
    let n_ctx = options.context(session.params().n_ctx) as usize;
    let reason = loop {
        let token = match step {
            Step::Finished(reason) => break reason,
            Step::Continue(token) => token,
        };
        if sink.cancelled() {
            break FinishReason::Cancelled;
        }
        if let Some(shift) = options.context_shift
            && pos >= n_ctx
        {
            let (n_keep, n_discard) = shift.plan(pos, n_ctx);
            session.shift_sequence(seq, n_keep as u32, n_discard as u32)?;
            pos -= n_discard;
        }
        let input = SequenceInput {
            seq,
            tokens: &[token],
            start_pos: pos as u32,
            logits: LogitsWanted::Last,
        };
        let rows = session.decode(&[input])?;
        step = generator.accept(model, rows[0][0], sink);
        pos += 1;
    };
    Ok(generator.finish(reason, sink))
}

/// Evaluates `prompt` in batch-sized chunks and returns the logits after its last token.
pub fn prefill(session: &mut dyn Session, seq: SeqId, prompt: &[TokenId]) -> Result<Vec<f32>> {
    let n_batch = session.params().n_batch as usize;
    let mut last = Vec::new();
    for (i, chunk) in prompt.chunks(n_batch).enumerate() {
        let is_last = (i + 1) * n_batch >= prompt.len();
        let input = SequenceInput {
            seq,
            tokens: chunk,
            start_pos: (i * n_batch) as u32,
            logits: if is_last {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            },
        };
        let rows = session.decode(&[input])?;
        if is_last {
            last = rows[0][0].to_vec();
        }
    }
    Ok(last)
}

/// Holds back text that may be the start of a stop sequence and cuts at the first match.
struct StopMatcher {
    stops: Vec<String>,
    /// All final text so far.
    text: String,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
    stopped: bool,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds text; returns true when a stop sequence was found (the text is cut before it).
    fn push(&mut self, piece: &str, sink: &mut dyn TokenSink) -> bool {
        if self.stopped {
            return true;
        }
        // A stop sequence may straddle earlier text, so search from where it could start.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut search_from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        self.text.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|at| search_from + at))
            .min();
        if let Some(at) = found {
            self.text.truncate(at);
            self.stopped = true;
            self.flush(sink);
            return true;
        }
        // Release everything except a suffix that could still grow into a stop sequence.
        let held = self
            .stops
            .iter()
            .map(|s| partial_suffix(&self.text, s))
            .max()
            .unwrap_or(0);
        let ready = self.text.len() - held;
        if ready > self.emitted {
            sink.text(&self.text[self.emitted..ready]);
            self.emitted = ready;
        }
        false
    }

    fn flush(&mut self, sink: &mut dyn TokenSink) {
        if self.text.len() > self.emitted {
            sink.text(&self.text[self.emitted..]);
            self.emitted = self.text.len();
        }
    }

    fn into_text(self) -> String {
        self.text
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with (on a char boundary).
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut matcher = StopMatcher::new(stops);
        let mut streamed = Vec::new();
        let mut stopped = false;
        for piece in pieces {
            if matcher.push(piece, &mut |t: &str| streamed.push(t.to_string())) {
                stopped = true;
                break;
            }
        }
        if !stopped {
            matcher.flush(&mut |t: &str| streamed.push(t.to_string()));
        }
        (matcher.into_text(), streamed, stopped)
    }

    #[test]
    fn stop_sequence_split_across_pieces_is_cut_exactly_and_never_streamed() {
        let (text, streamed, stopped) = run(&["\n\nUser:"], &["Hello", " there.\n", "\nUs", "er: hi"]);
        assert!(stopped);
        assert_eq!(text, "Hello there.");
        assert_eq!(streamed.concat(), "Hello there.");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete_a_stop() {
        let (text, streamed, stopped) = run(&["END"], &["abc E", "N", "x"]);
        assert!(!stopped);
        assert_eq!(text, "abc ENx");
        assert_eq!(streamed.concat(), "abc ENx");
        assert_eq!(streamed[0], "abc ");
    }

    #[test]
    fn earliest_of_several_stops_wins_including_multibyte_ones() {
        let (text, _, stopped) = run(&["。", "b"], &["日本語。abc"]);
        assert!(stopped);
        assert_eq!(text, "日本語");
    }
}
