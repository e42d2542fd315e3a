//! What one answer did, read from its body as it passes through: its response id, when
//! its first token arrived, how many tokens it generated and whether it ended in an error.
//! Reads OpenAI's JSON and server-sent-event answers and Ollama's JSON and NDJSON ones,
//! whoever produced them (a model of the store or a remote backend), so that an
//! experiment can compare its variants on what the client saw.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::header;
use axum::response::Response;
use futures_util::Stream;
use serde_json::Value;

/// Largest JSON answer read whole to tally it.
const MAX_JSON_ANSWER: usize = 64 << 20;

/// Reads `response` as it goes to the client and calls `done` once with its tally and
/// when it ended (`None` when the client dropped it before the end): a JSON answer is
/// read whole at once, anything else (a stream) as its pieces pass.
pub async fn watch<F>(response: Response, done: F) -> Result<Response, axum::Error>
where
    F: FnOnce(Tally, Option<Instant>) + Send + 'static,
{
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (parts, body) = response.into_parts();
    if json {
        let bytes = axum::body::to_bytes(body, MAX_JSON_ANSWER).await?;
        let mut tally = Tally::default();
        tally.read_json(&bytes);
        done(tally, Some(Instant::now()));
        return Ok(Response::from_parts(parts, Body::from(bytes)));
    }
    let watched = Watched {
        body: body.into_data_stream(),
        tally: Tally::default(),
        ended: None,
        done: Some(Box::new(done)),
    };
    Ok(Response::from_parts(parts, Body::from_stream(watched)))
}

type Done = Box<dyn FnOnce(Tally, Option<Instant>) + Send>;

/// A body stream that tallies its pieces and reports when it ends or is dropped.
struct Watched {
    body: BodyDataStream,
    tally: Tally,
    ended: Option<Instant>,
    done: Option<Done>,
}

impl Stream for Watched {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = Pin::new(&mut this.body).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(bytes))) => this.tally.read_chunk(bytes, Instant::now()),
            Poll::Ready(Some(Err(_))) => this.tally.failed = true,
            Poll::Ready(None) => {
                let now = Instant::now();
                this.tally.finish(now);
                this.ended = Some(now);
                this.report();
            }
            Poll::Pending => {}
        }
        next
    }
}

impl Watched {
    fn report(&mut self) {
        if let Some(done) = self.done.take() {
            done(std::mem::take(&mut self.tally), self.ended);
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.report();
    }
}

/// The figures of one answer, filled as its bytes pass.
#[derive(Debug, Default)]
pub struct Tally {
    /// The answer's `id` (what a client sends feedback for).
    pub id: Option<String>,
    /// When the first event carrying generated text (or a tool call) arrived.
    pub first_token: Option<Instant>,
    /// Events that carried generated text: one token each in a stream.
    events: u64,
    /// The token count the answer reports itself (`usage.completion_tokens`, Ollama's
    /// `eval_count`), which wins over counted events.
    reported: Option<u64>,
    /// The answer carried an error (an `error` event in a stream, or an error body).
    pub failed: bool,
    /// The unfinished last line of a stream.
    partial: Vec<u8>,
}

impl Tally {
    /// Reads a whole JSON answer.
    pub fn read_json(&mut self, body: &[u8]) {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            self.read_event(&value, None);
        }
    }

    /// Reads one piece of a stream (SSE `data:` lines or NDJSON lines, split anywhere)
    /// that arrived at `now`.
    pub fn read_chunk(&mut self, chunk: &[u8], now: Instant) {
        self.partial.extend_from_slice(chunk);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.read_line(&line, now);
        }
    }

    /// Reads what is left when the stream ends without a final newline.
    pub fn finish(&mut self, now: Instant) {
        let rest = std::mem::take(&mut self.partial);
        self.read_line(&rest, now);
    }

    /// Tokens the answer generated: its own count when it gives one, else the events.
    pub fn tokens(&self) -> Option<u64> {
        self.reported.or((self.events > 0).then_some(self.events))
    }

    fn read_line(&mut self, line: &[u8], now: Instant) {
        let line = line.trim_ascii();
        let line = line.strip_prefix(b"data:").unwrap_or(line).trim_ascii();
        if line.first() != Some(&b'{') {
            return;
        }
        if let Ok(value) = serde_json::from_slice::<Value>(line) {
            self.read_event(&value, Some(now));
        }
    }

    fn read_event(&mut self, value: &Value, now: Option<Instant>) {
        if self.id.is_none()
            && let Some(id) = value.get("id").and_then(Value::as_str)
        {
            self.id = Some(id.to_owned());
        }
        if value.get("error").is_some_and(|e| !e.is_null()) {
            self.failed = true;
        }
        let reported = value
            .pointer("/usage/completion_tokens")
            .or_else(|| value.get("eval_count"))
            .and_then(Value::as_u64);
        if reported.is_some() {
            self.reported = reported;
        }
        if let Some(now) = now
            && carries_text(value)
        {
            self.events += 1;
            self.first_token.get_or_insert(now);
        }
    }
}

/// Whether a stream event carries generated text or a tool call.
fn carries_text(value: &Value) -> bool {
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let openai = value
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|choice| {
            non_empty(choice.pointer("/delta/content"))
                || non_empty(choice.pointer("/delta/reasoning_content"))
                || choice.pointer("/delta/tool_calls").is_some_and(|t| !t.is_null())
                || non_empty(choice.get("text"))
        });
    openai
        || non_empty(value.pointer("/message/content"))
        || value.pointer("/message/tool_calls").is_some_and(|t| !t.is_null())
        || non_empty(value.get("response"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stream_split_mid_line_counts_its_tokens_from_the_first_text_event() {
        let start = Instant::now();
        let stream = concat!(
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let mut tally = Tally::default();
        let (a, b) = stream.as_bytes().split_at(70);
        tally.read_chunk(a, start);
        assert!(tally.first_token.is_none(), "the role event carries no text");
        let later = start + Duration::from_millis(5);
        tally.read_chunk(b, later);
        tally.finish(later);
        assert_eq!(tally.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(tally.first_token, Some(later));
        assert_eq!(tally.tokens(), Some(2));
        assert!(!tally.failed);
    }

    #[test]
    fn a_reported_count_wins_and_errors_and_ollama_lines_are_read() {
        let mut tally = Tally::default();
        tally.read_json(br#"{"id":"cmpl-9","choices":[{"text":"abc"}],"usage":{"completion_tokens":7}}"#);
        assert_eq!((tally.id.as_deref(), tally.tokens()), (Some("cmpl-9"), Some(7)));
        assert!(tally.first_token.is_none(), "a whole answer has no first-token time");

        let mut ollama = Tally::default();
        let now = Instant::now();
        ollama.read_chunk(b"{\"message\":{\"content\":\"Hi\"},\"done\":false}\n", now);
        ollama.read_chunk(b"{\"message\":{\"content\":\"\"},\"done\":true,\"eval_count\":3}", now);
        ollama.finish(now);
        assert_eq!(ollama.tokens(), Some(3));

        let mut failed = Tally::default();
        failed.read_chunk(b"data: {\"error\":{\"message\":\"boom\"}}\n\n", now);
        assert!(failed.failed);
        assert_eq!(failed.tokens(), None);
    }
}
