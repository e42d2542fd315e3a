//! Ollama's streams: one JSON object per line (`application/x-ndjson`), the last one with
//! `"done": true` and the request's counts and durations.

use std::convert::Infallible;
use tracing::Instrument;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use minerva_engine::generate::Generation;

use crate::routes::generation::{self, Prepared};
use crate::routes::stream::{Outcome, forward};
use crate::state::Slot;

/// What a route turns into one line's JSON.
pub enum Piece<'a> {
    /// A piece of final text.
    Text(&'a str),
    /// The end, with the whole generation.
    Finished(&'a Generation),
}

/// Streams `prepared` as NDJSON lines made by `render`. As with the SSE streams, the slot
/// and the generation live in the stream's task: a client that goes away stops the
/// generation before its next token. A failure after the 200 is a last line
/// `{"error": ...}`, as Ollama sends it.
pub fn stream<R>(prepared: Prepared, slot: Slot, render: R) -> Response
where
    R: Fn(Piece<'_>) -> serde_json::Value + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let span = generation::generate_span(&prepared);
    tokio::spawn(
        async move {
            let _slot = slot;
            let send = |value: serde_json::Value| {
                let mut line = value.to_string();
                line.push('\n');
                tx.send(Bytes::from(line)).is_ok()
            };
            forward(&prepared, tx.closed(), |outcome| match outcome {
                Outcome::Text(text) => send(render(Piece::Text(text))),
                Outcome::Finished(g) => send(render(Piece::Finished(g))),
                Outcome::Failed(message) => send(serde_json::json!({ "error": message })),
            })
            .await;
        }
        .instrument(span),
    );
    let lines = futures_util::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        Ok::<_, Infallible>,
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Already-made lines (a reply generated whole, such as a tool call) as an NDJSON stream.
pub fn lines(values: Vec<serde_json::Value>) -> Response {
    let body: String = values.iter().map(|v| format!("{v}\n")).collect();
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// The counts and durations of a finished generation, as Ollama reports them.
pub fn stats(prompt_tokens: usize, g: &Generation) -> serde_json::Value {
    let ms = |v: f64| (v.max(0.0) * 1e6) as u64;
    serde_json::json!({
        "done_reason": generation::finish_reason(g.finish_reason),
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": ms(g.timings.prompt_ms),
        "eval_count": g.tokens.len(),
        "eval_duration": ms(g.timings.generation_ms),
    })
}
