//! Ollama's API beside OpenAI's, on the same port, for the clients written for it (the
//! `ollama` Python and JS libraries, Open WebUI, Continue, editor plug-ins):
//! `/api/chat` and `/api/generate` (NDJSON streams by default, `stream: false` for one
//! object), `/api/embed` and the older `/api/embeddings`, `/api/tags`, `/api/ps`,
//! `/api/show` and `/api/version`; from the model store `/api/pull`, `/api/delete`,
//! `/api/create` and `/api/copy`.
//!
//! The handlers translate Ollama's shapes to the ones the OpenAI routes use and run the
//! same generation and embedding paths; what differs is only the wire format: Ollama's
//! `options`, nanosecond durations, RFC 3339 times, names with tags (`NAME:latest`) and
//! errors as `{"error": "message"}`.

mod chat;
mod create;
mod embed;
mod generate;
mod models;
mod ndjson;
mod options;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use minerva_store::ModelId;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::AppState;

/// The version of Ollama's API these routes follow (clients gate features on it).
pub const OLLAMA_API_VERSION: &str = "0.12.0";

/// Ollama's routes, to be merged at the root.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/", get(running).head(running))
        .routes(routes!(models::version))
        .routes(routes!(models::tags))
        .routes(routes!(models::ps))
        .routes(routes!(models::show))
        .routes(routes!(chat::chat))
        .routes(routes!(generate::generate))
        .routes(routes!(embed::embed))
        .routes(routes!(embed::embeddings))
        .routes(routes!(crate::routes::pull::pull_ollama))
        .routes(routes!(crate::routes::pull::delete_ollama))
        .routes(routes!(create::create))
        .routes(routes!(create::copy))
}

/// `GET /`: what Ollama answers, so clients that probe for a server find one.
async fn running() -> &'static str {
    "Minerva is running (Ollama-compatible API under /api)"
}

/// Turns the OpenAI-style error body of a failed `/api/...` request into Ollama's
/// `{"error": "message"}` (the status stays), which Ollama's clients read.
pub async fn error_body(req: Request, next: Next) -> Response {
    let ollama = req.uri().path().starts_with("/api/");
    let response = next.run(req).await;
    if !ollama || response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return (
            parts.status,
            axum::Json(serde_json::json!({ "error": "request failed" })),
        )
            .into_response();
    };
    // The message, led by the field it is about when it does not name it itself.
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            let message = v["error"]["message"].as_str()?;
            Some(match v["error"]["param"].as_str() {
                Some(param) if !message.contains(param) => format!("{param}: {message}"),
                _ => message.to_owned(),
            })
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::from_parts(parts, Body::from(body));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    response
}

/// The model an Ollama name means: `NAME`, `NAME:latest` and a model id that itself
/// holds a tag all name a model of the store.
pub fn model_id(state: &AppState, name: &str) -> Result<ModelId, ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid("model", "model is required"));
    }
    state.model_id(name)
}

/// An Ollama name that may name a LoRA adapter too (`NAME+ADAPTER`): the model, and the
/// name [`crate::routes::generation::language_model`] takes.
pub fn model_with_adapter(state: &AppState, name: &str) -> Result<(ModelId, String), ApiError> {
    let (base, adapter) = crate::routing::split_adapter(name);
    let id = model_id(state, base)?;
    let full = crate::routing::with_adapter(&id, adapter);
    Ok((id, full))
}

/// The name a model is listed under: its id with Ollama's default tag.
pub fn ollama_name(id: &ModelId) -> String {
    let id = id.to_string();
    if id.contains(':') { id } else { format!("{id}:latest") }
}

/// A time as RFC 3339, as Ollama writes them.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// Nanoseconds, Ollama's unit for durations.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub use super::timing::Clock;

/// The `total_duration` and `load_duration` of Ollama's replies: since the request
/// started, and what getting its model took.
pub fn durations(clock: &Clock) -> serde_json::Value {
    serde_json::json!({
        "total_duration": nanos(clock.elapsed()),
        "load_duration": nanos(clock.model_wait()),
    })
}

/// Merges the fields of `extra` (an object) into `into` (an object).
pub fn merge(into: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}
