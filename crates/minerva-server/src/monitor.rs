//! What the server watches, for `/metrics`, the dashboard and `minerva top`:
//!
//! - every Prometheus family described once, with its help text and unit;
//! - each finished generation's figures (time to first token, inter-token latency,
//!   duration, queue time, prompt and generated tokens) as histograms per model, and in
//!   a ring of recent requests that the dashboard lists and takes percentiles from;
//! - the gauges read at scrape time (pool, schedulers, caches): requests running and
//!   waiting and KV-cache usage per model, which the Gateway API inference extension
//!   and llm-d's endpoint picker read to route;
//! - [`snapshot`], one JSON document of all of it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::Matcher;
use serde::Serialize;
use serde_json::{Value, json};

use crate::routes::timing::Stages;
use crate::state::AppState;

/// Requests the ring keeps.
const RECENT: usize = 512;
/// The window percentiles are taken over.
const WINDOW_MS: u64 = 60_000;

/// Seconds buckets (5 ms to 1 min) and token-count buckets (1 to 32 Ki).
pub(crate) const SECONDS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];
pub(crate) const TOKEN_BUCKETS: [f64; 12] = [
    1.0, 4.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 8192.0, 32768.0,
];
/// Inter-token latencies are milliseconds apart: finer buckets (1 ms to 1 s).
pub(crate) const ITL_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0,
];

/// Buckets for the families whose values are not seconds to a minute.
pub(crate) fn bucket_overrides() -> Vec<(Matcher, &'static [f64])> {
    vec![
        (Matcher::Suffix("_tokens".into()), &TOKEN_BUCKETS[..]),
        (
            Matcher::Full("minerva_inter_token_latency_seconds".into()),
            &ITL_BUCKETS[..],
        ),
        (
            Matcher::Full("minerva_experiment_tokens_per_second".into()),
            &[1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0][..],
        ),
    ]
}

/// Gives every family its `# HELP` and `# TYPE` (called once, as the recorder is
/// installed).
pub(crate) fn describe() {
    // Requests.
    describe_counter!(
        "minerva_http_requests_total",
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        "minerva_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration to the response's head (a stream's head comes before its tokens), by route."
    );
    describe_gauge!(
        "minerva_queue_depth",
        "Inference requests waiting for an admission slot."
    );
    describe_histogram!(
        "minerva_time_to_first_token_seconds",
        Unit::Seconds,
        "Time from a generation request's arrival to its first token, per model."
    );
    describe_histogram!(
        "minerva_inter_token_latency_seconds",
        Unit::Seconds,
        "Mean time between a generation's tokens after the first, per request and model."
    );
    describe_histogram!(
        "minerva_request_duration_seconds",
        Unit::Seconds,
        "Time from a generation request's arrival to its last token, per model."
    );
    describe_histogram!(
        "minerva_request_queue_seconds",
        Unit::Seconds,
        "Time a generation request waited for its model (load or room) and an admission slot, per model."
    );
    describe_histogram!(
        "minerva_request_prompt_tokens",
        Unit::Count,
        "Prompt tokens per generation request, per model."
    );
    describe_histogram!(
        "minerva_request_generation_tokens",
        Unit::Count,
        "Generated tokens per request, per model."
    );
    describe_counter!(
        "minerva_prompt_tokens_total",
        "Prompt tokens of finished generations, per model."
    );
    describe_counter!("minerva_generated_tokens_total", "Tokens generated, per model.");
    describe_counter!(
        "minerva_embedding_cache_shared_errors_total",
        "Operations on the shared embedding cache (Redis) that failed or timed out; their lookups counted as misses."
    );
    describe_counter!(
        "minerva_streams_dropped_total",
        "Streamed generations whose client went away before the end (the generation stopped), per model."
    );
    describe_counter!("minerva_embedded_inputs_total", "Inputs embedded, per model.");
    describe_counter!("minerva_reranked_documents_total", "Documents reranked, per model.");
    // Schedulers.
    describe_gauge!(
        "minerva_requests_running",
        "Requests generating now, per model (a batch slot each)."
    );
    describe_gauge!(
        "minerva_requests_waiting",
        "Requests queued in a model's scheduler for a slot or KV cells."
    );
    describe_gauge!(
        "minerva_kv_cache_usage_ratio",
        "Share of a model's KV cache the running requests hold (0 to 1)."
    );
    describe_gauge!(
        "minerva_prefix_cache_hit_ratio",
        "Share of a model's prompt tokens whose KV came from the prefix cache, since it loaded."
    );
    describe_counter!(
        "minerva_prompt_tokens_evaluated_total",
        "Prompt tokens run through a model (those reused from the prefix cache are not)."
    );
    describe_counter!("minerva_context_shifts_total", "Context shifts done, per model.");
    describe_counter!(
        "minerva_draft_tokens_total",
        "Speculative draft tokens evaluated, per model."
    );
    describe_counter!(
        "minerva_draft_accepted_tokens_total",
        "Speculative draft tokens the model chose itself, per model."
    );
    // The pool.
    describe_gauge!("minerva_models_loaded", "Models loaded.");
    describe_gauge!(
        "minerva_model_budget_bytes",
        Unit::Bytes,
        "The memory budget for models."
    );
    describe_gauge!(
        "minerva_model_bytes_in_use",
        Unit::Bytes,
        "Bytes the loaded models and the loads under way hold against the budget."
    );
    describe_gauge!(
        "minerva_model_bytes",
        Unit::Bytes,
        "Bytes of each loaded model against the budget."
    );
    describe_gauge!(
        "minerva_model_waiting_for_memory",
        "Loads waiting for room in the budget."
    );
    describe_counter!(
        "minerva_model_requests_total",
        "Requests that found their model loaded (result=hit) or had to wait for its load (result=miss)."
    );
    describe_counter!("minerva_model_loads_total", "Model loads, per model.");
    describe_gauge!(
        "minerva_model_load_seconds_average",
        Unit::Seconds,
        "Mean duration of a model's loads."
    );
    describe_counter!(
        "minerva_model_preloads_total",
        "Preloads from usage patterns, per model."
    );
    describe_counter!(
        "minerva_model_preloads_wasted_total",
        "Preloads evicted before any request used them, per model."
    );
    describe_counter!("minerva_model_evictions_total", "Model unloads, per model and reason.");
    describe_counter!("minerva_compute_turns_total", "Forward passes run on the shared cores.");
    describe_counter!(
        "minerva_compute_contended_turns_total",
        "Forward passes that waited for another model's."
    );
    describe_counter!(
        "minerva_compute_pressed_turns_total",
        "Forward passes that left a core to other work waiting for one (CPU pressure)."
    );
    describe_gauge!(
        "minerva_compute_wait_seconds",
        Unit::Seconds,
        "Time forward passes have waited for another model's, in all."
    );
    // Embeddings.
    describe_counter!(
        "minerva_embedding_cache_hits_total",
        "Embedding inputs served from the content cache."
    );
    describe_counter!(
        "minerva_embedding_cache_misses_total",
        "Embedding inputs the cache did not hold."
    );
    describe_counter!(
        "minerva_embedding_cache_evictions_total",
        "Embedding cache entries evicted for room."
    );
    describe_counter!(
        "minerva_embedding_cache_expirations_total",
        "Embedding cache entries expired."
    );
    describe_gauge!(
        "minerva_embedding_cache_hit_ratio",
        "Share of embedding inputs served from the content cache."
    );
    describe_gauge!(
        "minerva_embedding_cache_bytes",
        Unit::Bytes,
        "Bytes of vectors in the embedding cache."
    );
    describe_gauge!("minerva_embedding_cache_entries", "Vectors in the embedding cache.");
    describe_counter!("minerva_embedding_batches_total", "Encoder batches run, per model.");
    describe_counter!("minerva_embedding_tokens_total", "Tokens encoded, per model.");
    describe_gauge!(
        "minerva_embedding_token_budget",
        "The adaptive token budget of an encoder batch, per model."
    );
    // Routing and experiments.
    describe_counter!(
        "minerva_route_requests_total",
        "Requests through a route, by the target that served."
    );
    describe_counter!(
        "minerva_route_fallbacks_total",
        "Targets passed over in a route, by reason."
    );
    describe_gauge!(
        "minerva_backend_circuit_open",
        "1 while a remote backend's circuit is open."
    );
    describe_counter!(
        "minerva_backend_requests_total",
        "Requests to a remote backend, by outcome."
    );
    describe_counter!(
        "minerva_experiment_requests_total",
        "Requests served by an experiment's variant."
    );
    describe_counter!(
        "minerva_experiment_errors_total",
        "Failed requests of an experiment's variant."
    );
    describe_histogram!(
        "minerva_experiment_latency_seconds",
        Unit::Seconds,
        "Latency to the last byte, per experiment variant."
    );
    describe_histogram!(
        "minerva_experiment_ttft_seconds",
        Unit::Seconds,
        "Time to first token, per experiment variant."
    );
    describe_histogram!(
        "minerva_experiment_tokens_per_second",
        "Generated tokens per second, per experiment variant."
    );
}

/// One finished request, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// When it ended (milliseconds since the epoch).
    pub at_ms: u64,
    pub model: String,
    /// `chat`, `completion`, `ollama`…
    pub api: &'static str,
    #[serde(flatten)]
    pub stages: Stages,
}

/// The server's running figures (one per server, shared by its handlers).
pub struct Monitor {
    /// Off: finished generations are neither recorded nor listed.
    enabled: bool,
    /// Prompts and outputs, when the operator asked for them.
    request_log: Option<crate::request_log::RequestLog>,
    started: Instant,
    recent: Mutex<VecDeque<RequestRecord>>,
    requests: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    embedded_inputs: AtomicU64,
    dropped: AtomicU64,
    /// What `/v1/monitor/events` streams.
    pub feed: crate::live_feed::LiveFeed,
}

impl Monitor {
    /// A monitor that records (`enabled`) or only counts requests, and logs prompts and
    /// outputs to `request_log` when there is one.
    pub fn new(enabled: bool, request_log: Option<crate::request_log::RequestLog>) -> Self {
        Self {
            enabled,
            request_log,
            started: Instant::now(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            embedded_inputs: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            feed: crate::live_feed::LiveFeed::new(std::time::Duration::from_secs(1)),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Monitor {
    /// Counts an answered HTTP request by its status.
    pub fn answered(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match status {
            429 | 503 => self.refused.fetch_add(1, Ordering::Relaxed),
            500.. => self.errors.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Counts embedded inputs.
    pub fn embedded(&self, inputs: usize) {
        self.embedded_inputs.fetch_add(inputs as u64, Ordering::Relaxed);
    }

    /// Counts a stream whose client left before its end.
    pub fn dropped(&self, model: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("minerva_streams_dropped_total", "model" => model.to_owned()).increment(1);
    }

    /// The request log, when one is on.
    pub fn request_log(&self) -> Option<&crate::request_log::RequestLog> {
        self.request_log.as_ref()
    }

    /// Records a finished generation: its histograms, its counters, and the ring.
    pub fn generated(&self, model: &str, api: &'static str, stages: Stages) {
        if !self.enabled {
            return;
        }
        let labels = [("model", model.to_owned())];
        metrics::histogram!("minerva_time_to_first_token_seconds", &labels).record(stages.ttft_ms / 1e3);
        if let Some(itl) = stages.itl_ms {
            metrics::histogram!("minerva_inter_token_latency_seconds", &labels).record(itl / 1e3);
        }
        metrics::histogram!("minerva_request_duration_seconds", &labels).record(stages.total_ms / 1e3);
        metrics::histogram!("minerva_request_queue_seconds", &labels).record((stages.model_ms + stages.queue_ms) / 1e3);
        metrics::histogram!("minerva_request_prompt_tokens", &labels).record(stages.prompt_tokens as f64);
        metrics::histogram!("minerva_request_generation_tokens", &labels).record(stages.generated_tokens as f64);
        metrics::counter!("minerva_prompt_tokens_total", &labels).increment(stages.prompt_tokens as u64);
        metrics::counter!("minerva_generated_tokens_total", &labels).increment(stages.generated_tokens as u64);
        self.prompt_tokens
            .fetch_add(stages.prompt_tokens as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(stages.generated_tokens as u64, Ordering::Relaxed);
        let record = RequestRecord {
            at_ms: now_ms(),
            model: model.to_owned(),
            api,
            stages,
        };
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    fn recent(&self) -> Vec<RequestRecord> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// The `q` quantile (0 to 1) of `values`, by the nearest rank; `None` when empty.
fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// p50, p95 and p99 of one figure of the requests in the window.
fn percentiles(records: &[&RequestRecord], figure: impl Fn(&Stages) -> Option<f64>) -> Value {
    let mut values: Vec<f64> = records.iter().filter_map(|r| figure(&r.stages)).collect();
    json!({
        "p50": quantile(&mut values, 0.5),
        "p95": quantile(&mut values, 0.95),
        "p99": quantile(&mut values, 0.99),
    })
}

/// Sets the gauges and counters that are read from the pool, the schedulers and the
/// caches rather than counted as requests pass (before each scrape and snapshot).
pub fn refresh(state: &AppState) {
    let totals = state.pool.totals();
    metrics::gauge!("minerva_models_loaded").set(totals.loaded as f64);
    metrics::gauge!("minerva_model_bytes_in_use").set(totals.bytes_in_use as f64);
    metrics::gauge!("minerva_model_budget_bytes").set(totals.budget_bytes as f64);
    metrics::gauge!("minerva_model_waiting_for_memory").set(totals.waiting as f64);
    for (id, s) in state.pool.stats() {
        let model = id.to_string();
        metrics::counter!("minerva_model_requests_total", "model" => model.clone(), "result" => "hit").absolute(s.hits);
        metrics::counter!("minerva_model_requests_total", "model" => model.clone(), "result" => "miss")
            .absolute(s.misses);
        metrics::counter!("minerva_model_loads_total", "model" => model.clone()).absolute(s.loads);
        if s.loads > 0 {
            metrics::gauge!("minerva_model_load_seconds_average", "model" => model.clone())
                .set(s.total_load_ms / 1e3 / s.loads as f64);
        }
        metrics::counter!("minerva_model_preloads_total", "model" => model.clone()).absolute(s.preloads);
        metrics::counter!("minerva_model_preloads_wasted_total", "model" => model.clone()).absolute(s.preloads_wasted);
        metrics::gauge!("minerva_model_bytes", "model" => model.clone()).set(s.bytes as f64);
        for (reason, n) in &s.evictions_by_reason {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            metrics::counter!("minerva_model_evictions_total", "model" => model.clone(), "reason" => reason)
                .absolute(*n);
        }
    }
    let compute = minerva_engine::compute::stats();
    metrics::counter!("minerva_compute_turns_total").absolute(compute.turns);
    metrics::counter!("minerva_compute_contended_turns_total").absolute(compute.contended);
    metrics::counter!("minerva_compute_pressed_turns_total").absolute(compute.pressed);
    metrics::gauge!("minerva_compute_wait_seconds").set(compute.waited.as_secs_f64());
    let cache = state.embedding_cache.stats();
    metrics::counter!("minerva_embedding_cache_hits_total").absolute(cache.hits);
    metrics::counter!("minerva_embedding_cache_misses_total").absolute(cache.misses);
    metrics::counter!("minerva_embedding_cache_evictions_total").absolute(cache.evictions);
    metrics::counter!("minerva_embedding_cache_expirations_total").absolute(cache.expirations);
    metrics::gauge!("minerva_embedding_cache_hit_ratio").set(ratio(cache.hits, cache.hits + cache.misses));
    metrics::gauge!("minerva_embedding_cache_bytes").set(cache.bytes as f64);
    metrics::gauge!("minerva_embedding_cache_entries").set(cache.entries as f64);
    for lease in &state.pool.loaded() {
        let model = lease.id.to_string();
        match &lease.model {
            minerva_pool::LoadedModel::Llm(worker) => {
                let s = worker.stats();
                metrics::gauge!("minerva_requests_running", "model" => model.clone()).set(s.running as f64);
                metrics::gauge!("minerva_requests_waiting", "model" => model.clone()).set(s.waiting as f64);
                metrics::gauge!("minerva_kv_cache_usage_ratio", "model" => model.clone()).set(s.kv_usage());
                metrics::gauge!("minerva_prefix_cache_hit_ratio", "model" => model).set(ratio(
                    s.prompt_tokens_cached,
                    s.prompt_tokens_cached + s.prompt_tokens_evaluated,
                ));
            }
            minerva_pool::LoadedModel::Embedding(service) => {
                let s = service.stats();
                metrics::counter!("minerva_embedding_batches_total", "model" => model.clone()).absolute(s.batches);
                metrics::counter!("minerva_embedding_tokens_total", "model" => model.clone()).absolute(s.tokens);
                metrics::gauge!("minerva_embedding_token_budget", "model" => model).set(s.token_budget as f64);
            }
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Everything the dashboard and `minerva top` show, at this moment: memory against the
/// budget and the system, each loaded model with its expiry, leases and load, counters
/// to take rates from, latency percentiles over the last minute, and the last requests.
pub fn snapshot(state: &AppState) -> Value {
    let monitor = &state.monitor;
    let totals = state.pool.totals();
    let stats: std::collections::HashMap<_, _> = state.pool.stats().into_iter().collect();
    let mut loads = 0;
    let mut evictions = 0;
    for s in stats.values() {
        loads += s.loads;
        evictions += s.evictions_by_reason.iter().map(|(_, n)| *n).sum::<u64>();
    }
    let models: Vec<Value> = state
        .pool
        .loaded()
        .iter()
        .map(|lease| {
            let s = stats.get(&lease.id);
            let mut model = json!({
                "id": lease.id,
                "bytes": lease.bytes,
                "loaded_at": lease.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "expires_at": s.and_then(|s| s.expires_at),
                "leases": s.map_or(0, |s| s.leases),
                "requests": s.map_or(0, |s| s.hits + s.misses),
            });
            match &lease.model {
                minerva_pool::LoadedModel::Llm(worker) => {
                    let w = worker.stats();
                    model["kind"] = json!("llm");
                    model["running"] = json!(w.running);
                    model["waiting"] = json!(w.waiting);
                    model["kv_usage"] = json!(w.kv_usage());
                    model["prefix_cache_hit_ratio"] = json!(ratio(
                        w.prompt_tokens_cached,
                        w.prompt_tokens_cached + w.prompt_tokens_evaluated
                    ));
                }
                minerva_pool::LoadedModel::Embedding(service) => {
                    let e = service.stats();
                    model["kind"] = json!("embedding");
                    model["batches"] = json!(e.batches);
                }
            }
            model
        })
        .collect();
    let recent = monitor.recent();
    let now = now_ms();
    let window: Vec<&RequestRecord> = recent
        .iter()
        .filter(|r| now.saturating_sub(r.at_ms) <= WINDOW_MS)
        .collect();
    let cache = state.embedding_cache.stats();
    let system = minerva_workers::pressure::MemorySource::read(&minerva_workers::pressure::ProcMemory::default()).ok();
    json!({
        "object": "monitor",
        "time_ms": now,
        "uptime_s": monitor.started.elapsed().as_secs_f64(),
        "memory": {
            "budget_bytes": totals.budget_bytes,
            "in_use_bytes": totals.bytes_in_use,
            "waiting_loads": totals.waiting,
            "system_total_bytes": system.map(|m| m.total),
            "system_available_bytes": system.map(|m| m.available),
            "process_rss_bytes": minerva_workers::resident_bytes(),
        },
        "models": models,
        "totals": {
            "requests": monitor.requests.load(Ordering::Relaxed),
            "errors": monitor.errors.load(Ordering::Relaxed),
            "refused": monitor.refused.load(Ordering::Relaxed),
            "prompt_tokens": monitor.prompt_tokens.load(Ordering::Relaxed),
            "generated_tokens": monitor.generated_tokens.load(Ordering::Relaxed),
            "embedded_inputs": monitor.embedded_inputs.load(Ordering::Relaxed),
            "dropped_streams": monitor.dropped.load(Ordering::Relaxed),
            "loads": loads,
            "evictions": evictions,
        },
        "queue_depth": state.admission.waiting(),
        "caches": {
            "embedding_hit_ratio": ratio(cache.hits, cache.hits + cache.misses),
            "embedding_entries": cache.entries,
        },
        "latency_ms": {
            "window_s": WINDOW_MS / 1000,
            "requests": window.len(),
            "ttft": percentiles(&window, |s| Some(s.ttft_ms)),
            "itl": percentiles(&window, |s| s.itl_ms),
            "total": percentiles(&window, |s| Some(s.total_ms)),
            "queue": percentiles(&window, |s| Some(s.model_ms + s.queue_ms)),
        },
        "recent": recent.iter().rev().take(20).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let mut values = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut values, 0.5), Some(3.0));
        assert_eq!(quantile(&mut values, 0.95), Some(5.0));
        assert_eq!(quantile(&mut values, 0.0), Some(1.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
