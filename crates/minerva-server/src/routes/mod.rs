//! Route handlers, one module per group.

pub mod chat;
pub mod completions;
pub mod embeddings;
mod generation;
pub mod models;
pub mod ollama;
pub mod pull;
pub mod rerank;
mod stream;
mod structured;
pub mod tokenize;
mod tools;
pub mod truncation;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /health`: 200 once the server accepts requests, with the loaded models.
pub async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let loaded: Vec<_> = state.pool.loaded().iter().map(|l| l.id.to_string()).collect();
    Json(serde_json::json!({ "status": "ok", "loaded_models": loaded, "free_slots": state.admission.available() }))
}

/// `GET /metrics` in Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let totals = state.pool.totals();
    metrics::gauge!("minerva_models_loaded").set(totals.loaded as f64);
    metrics::gauge!("minerva_model_bytes_in_use").set(totals.bytes_in_use as f64);
    metrics::gauge!("minerva_model_budget_bytes").set(totals.budget_bytes as f64);
    metrics::gauge!("minerva_model_waiting_for_memory").set(totals.waiting as f64);
    for (id, s) in state.pool.stats() {
        let model = id.to_string();
        metrics::gauge!("minerva_model_cache_hits", "model" => model.clone()).set(s.hits as f64);
        metrics::gauge!("minerva_model_cache_misses", "model" => model.clone()).set(s.misses as f64);
        metrics::gauge!("minerva_model_loads", "model" => model.clone()).set(s.loads as f64);
        metrics::gauge!("minerva_model_load_seconds_total", "model" => model.clone()).set(s.total_load_ms / 1e3);
        metrics::gauge!("minerva_model_preloads", "model" => model.clone()).set(s.preloads as f64);
        metrics::gauge!("minerva_model_preloads_wasted", "model" => model.clone()).set(s.preloads_wasted as f64);
        metrics::gauge!("minerva_model_bytes", "model" => model.clone()).set(s.bytes as f64);
        for (reason, n) in &s.evictions_by_reason {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            metrics::gauge!("minerva_model_evictions", "model" => model.clone(), "reason" => reason).set(*n as f64);
        }
    }
    // How the models shared the cores: turns run, turns that waited for another model's,
    // and the time they waited.
    let compute = minerva_engine::compute::stats();
    metrics::counter!("minerva_compute_turns_total").absolute(compute.turns);
    metrics::counter!("minerva_compute_contended_turns_total").absolute(compute.contended);
    metrics::gauge!("minerva_compute_wait_seconds_total").set(compute.waited.as_secs_f64());
    let cache = state.embedding_cache.stats();
    metrics::counter!("minerva_embedding_cache_hits_total").absolute(cache.hits);
    metrics::counter!("minerva_embedding_cache_misses_total").absolute(cache.misses);
    metrics::counter!("minerva_embedding_cache_evictions_total").absolute(cache.evictions);
    metrics::counter!("minerva_embedding_cache_expirations_total").absolute(cache.expirations);
    metrics::gauge!("minerva_embedding_cache_bytes").set(cache.bytes as f64);
    metrics::gauge!("minerva_embedding_cache_entries").set(cache.entries as f64);
    for lease in &state.pool.loaded() {
        if let minerva_pool::LoadedModel::Embedding(service) = &lease.model {
            let s = service.stats();
            let model = lease.id.to_string();
            metrics::counter!("minerva_embedding_batches_total", "model" => model.clone()).absolute(s.batches);
            metrics::counter!("minerva_embedding_tokens_total", "model" => model.clone()).absolute(s.tokens);
            metrics::gauge!("minerva_embedding_token_budget", "model" => model).set(s.token_budget as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Unknown routes get an OpenAI-style 404.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

/// Wrong method on a known route.
pub async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        ApiError::invalid("method", "method not allowed on this route"),
    )
}
