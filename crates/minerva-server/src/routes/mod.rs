//! Route handlers, one module per group.

pub mod chat;
pub mod completions;
pub mod dashboard;
pub mod embeddings;
pub mod experiments;
pub mod explain;
mod generation;
pub mod models;
pub mod ollama;
pub mod pull;
pub mod rerank;
mod stream;
mod structured;
pub(crate) mod timing;
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
#[utoipa::path(
    get,
    path = "/health",
    tag = "monitoring",
    responses((status = 200, description = "The server is up; its loaded models and free slots", body = serde_json::Value))
)]
pub async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let loaded: Vec<_> = state.pool.loaded().iter().map(|l| l.id.to_string()).collect();
    Json(serde_json::json!({ "status": "ok", "loaded_models": loaded, "free_slots": state.admission.available() }))
}

/// `GET /metrics` in Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "monitoring",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::monitor::refresh(&state);
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
