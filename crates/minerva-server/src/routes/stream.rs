//! Server-sent events for both completion APIs: one loop that forwards a generation's
//! text, its final chunk, optional usage and `[DONE]`, and stops the generation when the
//! client goes away.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use minerva_engine::generate::Generation;
use minerva_workers::GenerationEvent;
use tracing::Instrument;

use super::generation::{self, Prepared};
use crate::state::Slot;

/// What an API turns into one event's JSON.
pub enum StreamPiece<'a> {
    /// A piece of final text.
    Text(&'a str),
    /// The end, with the whole generation (finish reason, logprobs).
    Finished(&'a Generation),
}

/// Streams `prepared` as SSE: `first` (if any), one event per text piece, the finished
/// event, a usage event when asked, then `[DONE]`. The slot and the generation live in
/// the stream's task: when the client disconnects, both are dropped, the worker stops
/// before its next token and the slot is free again.
pub fn sse<R>(
    prepared: Prepared,
    slot: Slot,
    first: Option<serde_json::Value>,
    include_usage: bool,
    render: R,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    R: Fn(StreamPiece<'_>) -> serde_json::Value + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let span = generation::generate_span(&prepared);
    tokio::spawn(async move {
        let _slot = slot;
        let send = |value: serde_json::Value| tx.send(Event::default().data(value.to_string())).is_ok();
        if let Some(first) = first
            && !send(first)
        {
            return;
        }
        forward(&prepared, tx.closed(), |outcome| match outcome {
            Outcome::Text(text) => send(render(StreamPiece::Text(text))),
            Outcome::Finished(g) => {
                // The last chunk carries the whole request's timings, as llama-server's do.
                let mut last = render(StreamPiece::Finished(g));
                last["timings"] = prepared.clock.timings(g, prepared.prompt.len());
                send(last);
                if include_usage {
                    let mut last = render(StreamPiece::Text(""));
                    last["choices"] = serde_json::json!([]);
                    last["usage"] = generation::usage(prepared.prompt.len(), g.tokens.len(), g.cached_tokens);
                    send(last);
                }
                let _ = tx.send(Event::default().data("[DONE]"));
                false
            }
            Outcome::Failed(message) => {
                send(serde_json::json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } }));
                false
            }
        })
        .await;
    }.instrument(span));
    let stream = futures_util::StreamExt::map(tokio_stream::wrappers::UnboundedReceiverStream::new(rx), Ok);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// What a running generation gives a stream.
pub enum Outcome<'a> {
    /// A piece of final text.
    Text(&'a str),
    /// The end, with the whole generation (its tokens are counted in the metrics).
    Finished(&'a Generation),
    /// The generation failed; the first line of why.
    Failed(String),
}

/// Submits `prepared` and hands each of its events to `send` until the generation ends,
/// `send` returns `false` (the client is gone) or `closed` resolves (likewise). Dropping
/// the receiver on return cancels a generation that is still running; a generation the
/// client left is recorded as dropped, with the text it had been sent.
pub async fn forward<S>(prepared: &Prepared, closed: impl std::future::Future<Output = ()>, mut send: S)
where
    S: FnMut(Outcome<'_>) -> bool,
{
    let mut events = prepared.submit();
    // The text sent so far, kept only for the request log.
    let mut sent = prepared.monitor.request_log().map(|_| String::new());
    tokio::pin!(closed);
    loop {
        let event = tokio::select! {
            () = &mut closed => {
                generation::record_dropped(prepared, sent.as_deref());
                return;
            }
            event = events.recv() => event,
        };
        match event {
            None => return,
            Some(GenerationEvent::Text(text)) => {
                if !send(Outcome::Text(&text)) {
                    generation::record_dropped(prepared, sent.as_deref());
                    return;
                }
                if let Some(sent) = &mut sent {
                    sent.push_str(&text);
                }
            }
            Some(GenerationEvent::Done(Ok(g))) => {
                generation::record_tokens(prepared, &g);
                send(Outcome::Finished(&g));
                return;
            }
            Some(GenerationEvent::Done(Err(e))) => {
                send(Outcome::Failed(
                    e.to_string().lines().next().unwrap_or_default().to_owned(),
                ));
                return;
            }
        }
    }
}
