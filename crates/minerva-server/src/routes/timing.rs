//! Where a generation request's time went: acquiring the model (its load, or room for
//! it), preparing the prompt (template, tokenizing, grammar), waiting for an admission
//! slot, then the prefill and the decode the worker reports. Answers carry them as
//! llama-server's `timings` object (with the stages before generation added) and as a
//! W3C `server-timing` header, which browsers' developer tools show.

use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::response::Response;
use minerva_engine::generate::Generation;
use serde_json::{Value, json};

/// The header's name.
const SERVER_TIMING: &str = "server-timing";

/// The clock of one request's stages before generation.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: Instant,
    model: Option<Duration>,
    prepare: Option<Duration>,
    queue: Option<Duration>,
    mark: Instant,
}

impl Clock {
    /// Starts the clock as the request starts to acquire its model.
    pub fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            model: None,
            prepare: None,
            queue: None,
            mark: now,
        }
    }

    fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let lap = now - self.mark;
        self.mark = now;
        lap
    }

    /// The model is leased.
    pub fn model_ready(&mut self) {
        self.model = Some(self.lap());
    }

    /// The prompt is ready.
    pub fn prepared(&mut self) {
        self.prepare = Some(self.lap());
    }

    /// An admission slot is held.
    pub fn admitted(&mut self) {
        self.queue = Some(self.lap());
    }

    /// Time since the request started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What acquiring the model took (its load, or room for it).
    pub fn model_wait(&self) -> Duration {
        self.model.unwrap_or_default()
    }

    /// The request's figures once generation `g` of a `prompt_n`-token prompt is done:
    /// the stages before it, prefill and decode, and the time to its first token (all
    /// but the decode after it: the worker times its prefill from the moment it takes the
    /// request, so its own queue counts before the first token).
    pub fn finished(&self, g: &Generation, prompt_n: usize) -> Stages {
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        let total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let generated = g.tokens.len();
        Stages {
            model_ms: ms(self.model),
            prepare_ms: ms(self.prepare),
            queue_ms: ms(self.queue),
            prefill_ms: g.timings.prompt_ms,
            decode_ms: g.timings.generation_ms,
            ttft_ms: (total_ms - g.timings.generation_ms).max(0.0),
            itl_ms: (generated > 1).then(|| g.timings.generation_ms / (generated - 1) as f64),
            total_ms,
            prompt_tokens: prompt_n,
            cached_tokens: g.cached_tokens,
            generated_tokens: generated,
        }
    }

    fn stages(&self) -> [(&'static str, Option<Duration>); 3] {
        [("model", self.model), ("prepare", self.prepare), ("queue", self.queue)]
    }

    /// llama-server's `timings` for generation `g` of a prompt of `prompt_n` tokens, with
    /// the stages before it (milliseconds).
    pub fn timings(&self, g: &Generation, prompt_n: usize) -> Value {
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        json!({
            "model_ms": ms(self.model),
            "prepare_ms": ms(self.prepare),
            "queue_ms": ms(self.queue),
            "cache_n": g.cached_tokens,
            "prompt_n": prompt_n.saturating_sub(g.cached_tokens),
            "prompt_ms": g.timings.prompt_ms,
            "prompt_per_second": g.timings.prompt_tokens_per_second,
            "predicted_n": g.tokens.len(),
            "predicted_ms": g.timings.generation_ms,
            "predicted_per_second": g.timings.generation_tokens_per_second,
            "total_ms": self.started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Sets `server-timing` on `response`: the stages so far, and the prefill and decode
    /// of `g` when the whole answer is known.
    pub fn set_header(&self, response: &mut Response, g: Option<&Generation>) {
        let mut parts: Vec<String> = self
            .stages()
            .iter()
            .filter_map(|(name, d)| d.map(|d| format!("{name};dur={:.3}", d.as_secs_f64() * 1e3)))
            .collect();
        if let Some(g) = g {
            parts.push(format!("prefill;dur={:.3}", g.timings.prompt_ms));
            parts.push(format!("decode;dur={:.3}", g.timings.generation_ms));
        }
        if let Ok(value) = HeaderValue::from_str(&parts.join(", ")) {
            response.headers_mut().insert(SERVER_TIMING, value);
        }
    }
}

/// Where one finished generation's time went (milliseconds) and its token counts.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Stages {
    pub model_ms: f64,
    pub prepare_ms: f64,
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub ttft_ms: f64,
    /// Mean time between generated tokens (none for a single token).
    pub itl_ms: Option<f64>,
    pub total_ms: f64,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
}
