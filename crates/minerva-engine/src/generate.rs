//! The generation loop: prefill a prompt, then sample token by token until EOS, a stop
//! sequence or the token limit, streaming text as it becomes final.

use std::time::Instant;

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

/// The result of [`generate`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// Generated token ids (an end-of-generation token is not included).
    pub tokens: Vec<TokenId>,
    /// Generated text, cut before a stop sequence.
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// One entry per generated token with its log probability (and alternatives when asked).
    pub logprobs: Vec<SampledToken>,
    /// Timings.
    pub timings: Timings,
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
    let n_vocab = model.metadata().n_vocab;
    options.sampling.validate(n_vocab)?;
    if options.max_tokens == 0 {
        return Err(EngineError::invalid("max_tokens", "must be at least 1"));
    }
    if prompt.is_empty() {
        return Err(EngineError::invalid(
            "prompt",
            "is empty (the model adds no BOS token to start from)",
        ));
    }
    let params = session.params();
    if prompt.len() >= params.n_ctx as usize {
        return Err(EngineError::ContextOverflow {
            tokens: prompt.len(),
            n_ctx: params.n_ctx,
        });
    }
    session.free_sequence(seq);
    // A request may have waited in the worker's queue; its client may be gone already.
    if sink.cancelled() {
        return Ok(Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::Cancelled,
            logprobs: Vec::new(),
            timings: Timings::default(),
        });
    }

    let started = Instant::now();
    let mut sampler = Sampler::new(options.sampling.clone());
    sampler.remember(prompt);
    let first = prefill(session, seq, prompt)?;
    let mut next = sampler.sample(&first);
    let prompt_done = Instant::now();

    let mut stream = Utf8Stream::new();
    let mut stops = StopMatcher::new(&options.stop);
    let mut tokens = Vec::new();
    let mut logprobs = Vec::new();
    let mut finish_reason = FinishReason::Length;
    let mut pos = prompt.len();
    let mut decoded = 0;
    loop {
        let token = next.token;
        if model.is_end_of_generation(token) {
            finish_reason = FinishReason::Stop;
            break;
        }
        tokens.push(token);
        logprobs.push(next);
        let piece = stream.push(&model.token_bytes(token, false));
        if stops.push(&piece, sink) {
            finish_reason = FinishReason::Stop;
            break;
        }
        if tokens.len() >= options.max_tokens || pos + 1 >= params.n_ctx as usize {
            break;
        }
        if sink.cancelled() {
            finish_reason = FinishReason::Cancelled;
            break;
        }
        let input = SequenceInput {
            seq,
            tokens: &[token],
            start_pos: pos as u32,
            logits: LogitsWanted::Last,
        };
        let rows = session.decode(&[input])?;
        next = sampler.sample(rows[0][0]);
        pos += 1;
        decoded += 1;
    }
    if !stops.stopped() {
        let tail = stream.finish();
        if stops.push(&tail, sink) {
            finish_reason = FinishReason::Stop;
        }
        stops.flush(sink);
    }
    let done = Instant::now();

    let prompt_s = (prompt_done - started).as_secs_f64();
    let generation_s = (done - prompt_done).as_secs_f64();
    let per_second = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(Generation {
        text: stops.into_text(),
        finish_reason,
        timings: Timings {
            prompt_ms: prompt_s * 1e3,
            generation_ms: generation_s * 1e3,
            prompt_tokens_per_second: per_second(prompt.len(), prompt_s),
            generation_tokens_per_second: per_second(decoded, generation_s),
        },
        tokens,
        logprobs,
    })
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
struct StopMatcher<'a> {
    stops: &'a [String],
    /// All final text so far.
    text: String,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
    stopped: bool,
}

impl<'a> StopMatcher<'a> {
    fn new(stops: &'a [String]) -> Self {
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
        let mut matcher = StopMatcher::new(&stops);
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
