//! `GET /api/version`, `GET /api/tags` (the models on disk), `GET /api/ps` (the loaded
//! ones) and `POST /api/show` (one model's details, template and metadata).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use minerva_pool::LoadedModel;
use minerva_store::{ModelEntry, ModelFormat, ModelId};
use serde::Deserialize;

use super::{OLLAMA_API_VERSION, model_id, ollama_name, rfc3339};
use crate::error::ApiError;
use crate::extract::AnyJson;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/api/version",
    tag = "ollama",
    responses((status = 200, description = "The Ollama API version followed", body = serde_json::Value))
)]
pub async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": OLLAMA_API_VERSION,
        "server": format!("minerva {}", env!("CARGO_PKG_VERSION")),
    }))
}

/// What Ollama calls a model's details, from the registry (or the GGUF header when the
/// server runs without one), and its digest.
struct Described {
    details: serde_json::Value,
    digest: String,
}

fn describe(state: &AppState, entry: &ModelEntry) -> Described {
    let record = state.pool.registry().and_then(|r| r.record(&entry.id).ok().flatten());
    let (family, parameters, quantization, digest) = match (&record, entry.format) {
        (Some(r), _) => (
            r.architecture.clone(),
            r.parameter_count,
            r.quantization.clone(),
            r.sha256.clone(),
        ),
        (None, ModelFormat::Gguf) => match minerva_gguf::inspect(&entry.path) {
            Ok(info) => (
                info.architecture,
                info.parameter_count,
                info.quantization,
                String::new(),
            ),
            Err(_) => (String::new(), 0, String::new(), String::new()),
        },
        (None, ModelFormat::SentenceTransformers) => ("bert".to_owned(), 0, String::new(), String::new()),
    };
    let details = serde_json::json!({
        "parent_model": "",
        "format": entry.format.as_str(),
        "family": family,
        "families": [family],
        "parameter_size": parameter_size(parameters),
        "quantization_level": quantization,
    });
    Described { details, digest }
}

/// `135M`, `1.2B`: parameters as Ollama prints them.
fn parameter_size(n: u64) -> String {
    match n {
        0 => String::new(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{}M", (n as f64 / 1e6).round()),
        n => format!("{}K", (n as f64 / 1e3).round()),
    }
}

fn modified(entry: &ModelEntry) -> SystemTime {
    std::fs::metadata(&entry.weights)
        .and_then(|m| m.modified())
        .unwrap_or(UNIX_EPOCH)
}

/// `GET /api/tags`: every model of the store.
#[utoipa::path(
    get,
    path = "/api/tags",
    tag = "ollama",
    responses((status = 200, description = "The models on disk", body = serde_json::Value))
)]
pub async fn tags(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let entries = state
        .pool
        .store()
        .list()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let models: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let described = describe(&state, entry);
            let name = ollama_name(&entry.id);
            serde_json::json!({
                "name": name, "model": name,
                "modified_at": rfc3339(modified(entry)),
                "size": entry.size_bytes,
                "digest": described.digest,
                "details": described.details,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "models": models })))
}

/// `GET /api/ps`: the loaded models, their memory and when they unload.
#[utoipa::path(
    get,
    path = "/api/ps",
    tag = "ollama",
    responses((status = 200, description = "The loaded models", body = serde_json::Value))
)]
pub async fn ps(State(state): State<AppState>) -> Json<serde_json::Value> {
    let stats: std::collections::HashMap<ModelId, _> = state.pool.stats().into_iter().collect();
    let models: Vec<serde_json::Value> = state
        .pool
        .loaded()
        .iter()
        .filter_map(|lease| {
            let entry = state.pool.store().resolve(&lease.id).ok()?;
            let described = describe(&state, &entry);
            let name = ollama_name(&lease.id);
            // In use or pinned: Ollama shows a time far ahead; so does this.
            let expires = stats
                .get(&lease.id)
                .and_then(|s| s.expires_at)
                .map_or(SystemTime::now() + Duration::from_secs(10 * 365 * 86_400), |s| {
                    UNIX_EPOCH + Duration::from_secs(s)
                });
            let context_length = match &lease.model {
                LoadedModel::Llm(worker) => Some(worker.n_ctx()),
                LoadedModel::Embedding(_) => None,
            };
            Some(serde_json::json!({
                "name": name, "model": name,
                "size": state.pool.counted_bytes(&lease.id).unwrap_or(lease.bytes),
                "digest": described.digest,
                "details": described.details,
                "expires_at": rfc3339(expires),
                "size_vram": 0,
                "context_length": context_length,
            }))
        })
        .collect();
    Json(serde_json::json!({ "models": models }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaShowRequest)]
#[schema(example = json!({"model": "smollm2-135m-instruct"}))]
pub struct ShowRequest {
    /// `model`, or `name` as older clients send it.
    #[serde(alias = "name")]
    model: String,
}

/// `POST /api/show`: one model's details, capabilities, chat template and metadata.
#[utoipa::path(
    post,
    path = "/api/show",
    tag = "ollama",
    request_body = ShowRequest,
    responses((status = 200, description = "One model's details, template and metadata", body = serde_json::Value))
)]
pub async fn show(
    State(state): State<AppState>,
    AnyJson(req): AnyJson<ShowRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = model_id(&state, &req.model)?;
    let entry = state
        .pool
        .store()
        .resolve(&id)
        .map_err(|_| ApiError::ModelNotFound(format!("model {:?} not found", req.model)))?;
    let described = describe(&state, &entry);
    let (template, model_info, capabilities) = match entry.format {
        ModelFormat::Gguf => {
            let path = entry.path.clone();
            let info = tokio::task::spawn_blocking(move || minerva_gguf::inspect(&path))
                .await
                .map_err(|_| ApiError::Internal("reading the model's header failed".into()))?
                .map_err(|e| ApiError::Internal(format!("reading the model's header failed: {e}")))?;
            let mut model_info = serde_json::Map::new();
            model_info.insert("general.architecture".into(), info.architecture.clone().into());
            model_info.insert("general.parameter_count".into(), info.parameter_count.into());
            if let Some(name) = &info.name {
                model_info.insert("general.name".into(), name.clone().into());
            }
            if let Some(n) = info.context_length {
                model_info.insert(format!("{}.context_length", info.architecture), n.into());
            }
            let template = info.chat_template.clone().unwrap_or_default();
            (template, model_info, vec!["completion", "tools"])
        }
        ModelFormat::SentenceTransformers => (String::new(), serde_json::Map::new(), vec!["embedding"]),
    };
    Ok(Json(serde_json::json!({
        "license": "",
        "modelfile": format!("# Minerva serves this model from its store\nFROM {}\n", entry.id),
        "parameters": "",
        "template": template,
        "details": described.details,
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": rfc3339(modified(&entry)),
        "digest": described.digest,
    })))
}
